using Kms.Core.Crypto;

namespace Kms.Fuzz;

/// <summary>
/// DER ECDSA signatures from outside (officers' approvals, verification requests):
/// <see cref="EcdsaSignature.TryDerToP1363"/> for P-256 and P-384. Contract: false, or a P1363
/// signature whose DER encoding is exactly the input (one accepted encoding per signature).
/// </summary>
internal sealed class SignatureTarget : FuzzTarget
{
    private static readonly int[] FieldSizes = [32, 48];

    public override string Name => "signature";

    public override string Description => "DER ECDSA signature: EcdsaSignature.TryDerToP1363 (refusal: false)";

    public override void Run(byte[] input)
    {
        foreach (var fieldSize in FieldSizes)
        {
            if (EcdsaSignature.TryDerToP1363(input, fieldSize, out var p1363)
                && (p1363.Length != 2 * fieldSize || !EcdsaSignature.P1363ToDer(p1363).AsSpan().SequenceEqual(input)))
            {
                throw new FuzzContractException("an accepted DER signature does not convert back to its bytes");
            }
        }
    }

    public override IEnumerable<(string Name, byte[] Bytes)> Seeds()
    {
        byte[] small = [.. Enumerable.Repeat((byte)0x01, 64)];
        byte[] high = [.. Enumerable.Repeat((byte)0xff, 96)];
        yield return ("p256", EcdsaSignature.P1363ToDer(small));
        yield return ("p384-high-bits", EcdsaSignature.P1363ToDer(high));
    }
}
