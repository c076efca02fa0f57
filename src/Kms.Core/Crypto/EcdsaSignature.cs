using System.Formats.Asn1;
using System.Numerics;

namespace Kms.Core.Crypto;

/// <summary>
/// ECDSA signature encodings: IEEE P1363 (r‖s, fixed width, what PKCS#11 returns) and DER
/// (<c>SEQUENCE { INTEGER r, INTEGER s }</c>, RFC 3279, what X.509, JWS-less tooling and
/// OpenSSL expect).
/// </summary>
public static class EcdsaSignature
{
    /// <summary>The DER encoding of a P1363 signature.</summary>
    /// <exception cref="ArgumentException">An odd or empty length.</exception>
    public static byte[] P1363ToDer(ReadOnlySpan<byte> p1363)
    {
        if (p1363.IsEmpty || p1363.Length % 2 != 0)
        {
            throw new ArgumentException("a P1363 signature is r||s of equal lengths", nameof(p1363));
        }

        var half = p1363.Length / 2;
        var writer = new AsnWriter(AsnEncodingRules.DER);
        using (writer.PushSequence())
        {
            writer.WriteInteger(new BigInteger(p1363[..half], isUnsigned: true, isBigEndian: true));
            writer.WriteInteger(new BigInteger(p1363[half..], isUnsigned: true, isBigEndian: true));
        }

        return writer.Encode();
    }

    /// <summary>
    /// The P1363 form of a strictly DER-encoded signature for a curve whose field elements are
    /// <paramref name="fieldSize"/> bytes: exactly one SEQUENCE of two positive, minimally encoded
    /// INTEGERs that fit the field, nothing after it. Anything else (BER, negative or oversized
    /// integers, trailing bytes) is refused, so one signature has exactly one accepted encoding.
    /// </summary>
    public static bool TryDerToP1363(ReadOnlySpan<byte> der, int fieldSize, out byte[] p1363)
    {
        p1363 = [];
        try
        {
            var reader = new AsnReader(der.ToArray(), AsnEncodingRules.DER);
            var sequence = reader.ReadSequence();
            var r = sequence.ReadInteger();
            var s = sequence.ReadInteger();
            if (reader.HasData || sequence.HasData || r.Sign <= 0 || s.Sign <= 0
                || r.GetByteCount(isUnsigned: true) > fieldSize || s.GetByteCount(isUnsigned: true) > fieldSize)
            {
                return false;
            }

            var output = new byte[2 * fieldSize];
            r.TryWriteBytes(output.AsSpan(fieldSize - r.GetByteCount(isUnsigned: true), r.GetByteCount(isUnsigned: true)), out _, isUnsigned: true, isBigEndian: true);
            s.TryWriteBytes(output.AsSpan((2 * fieldSize) - s.GetByteCount(isUnsigned: true)), out _, isUnsigned: true, isBigEndian: true);

            // DER has one encoding per value: what does not re-encode to the same bytes was not DER.
            if (!P1363ToDer(output).AsSpan().SequenceEqual(der))
            {
                return false;
            }

            p1363 = output;
            return true;
        }
        catch (AsnContentException)
        {
            return false;
        }
    }
}
