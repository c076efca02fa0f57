using Kms.Client.Envelope;
using Kms.Core.Crypto;

namespace Kms.Fuzz;

/// <summary>
/// Decoding of the canonical encryption-context encoding, as an envelope header carries it
/// (EnvelopeContext.Measure and Decode). Contract: refusal is an
/// <see cref="EnvelopeDecryptionException"/>; whatever decodes is canonical — the client's
/// encoder and the server's (<see cref="EncryptionContext"/>) both give back the very bytes.
/// </summary>
internal sealed class ContextTarget : FuzzTarget
{
    public override string Name => "context";

    public override string Description => "encryption-context encoding: EnvelopeContext.Measure/Decode (refusal: EnvelopeDecryptionException)";

    public override void Run(byte[] input)
    {
        IReadOnlyDictionary<string, string> context;
        int length;
        try
        {
            length = EnvelopeContext.Measure(input);
            if (length > input.Length)
            {
                return;
            }

            context = EnvelopeContext.Decode(input.AsSpan(0, length));
        }
        catch (EnvelopeDecryptionException)
        {
            return;
        }

        var encoded = input.AsSpan(0, length);
        if (!EnvelopeContext.Encode(context).AsSpan().SequenceEqual(encoded))
        {
            throw new FuzzContractException("a decoded context does not encode back to its bytes (the decoder accepted a non-canonical encoding)");
        }

        if (!EncryptionContext.Create(context).Encoded.SequenceEqual(encoded))
        {
            throw new FuzzContractException("the server's encoding of a decoded context differs from the client's");
        }
    }

    public override IEnumerable<(string Name, byte[] Bytes)> Seeds()
    {
        yield return ("empty", EnvelopeContext.Encode(null));
        yield return ("one", EnvelopeContext.Encode(new Dictionary<string, string> { ["table"] = "orders" }));
        yield return ("three", EnvelopeContext.Encode(new Dictionary<string, string> { ["b"] = "", ["a"] = "x", ["ab"] = "c" }));
        yield return ("unicode", EnvelopeContext.Encode(new Dictionary<string, string> { ["é"] = "ü", ["\u10000"] = "😀", ["z"] = "\0" }));
    }
}
