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
}
