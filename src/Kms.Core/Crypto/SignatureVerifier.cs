using System.Security.Cryptography;
using Kms.Core.Keys;

namespace Kms.Core.Crypto;

/// <summary>
/// Verify's check of a signature with a version's public key, in .NET crypto (a public-key
/// operation: nothing secret, no HSM round trip). Anything that does not verify — a wrong
/// signature, a malformed encoding — is false, never an exception.
/// </summary>
public static class SignatureVerifier
{
    /// <summary>Whether <paramref name="signature"/> over <paramref name="digest"/> verifies for an ECDSA or RSA algorithm.</summary>
    /// <param name="p1363">For ECDSA: the signature is r‖s rather than DER.</param>
    /// <exception cref="ArgumentException">Ed25519 or a non-signing algorithm.</exception>
    public static bool Verify(SubjectPublicKey publicKey, KeyAlgorithmSpec spec, byte[] digest, byte[] signature, bool p1363)
    {
        ArgumentNullException.ThrowIfNull(publicKey);
        ArgumentNullException.ThrowIfNull(spec);
        return spec.Family switch
        {
            KeyFamily.Ec => VerifyEcdsa(publicKey, spec, digest, signature, p1363),
            KeyFamily.Rsa when spec.Padding is RsaPadding.Pss or RsaPadding.Pkcs1 => VerifyRsa(publicKey, spec, digest, signature),
            _ => throw new ArgumentException($"{spec.Name} signatures are not verified here", nameof(spec)),
        };
    }

    // A DER signature is converted strictly first: .NET's own DER reader accepts some BER
    // (Wycheproof's "legacy" encodings), and a verifier must not.
    private static bool VerifyEcdsa(SubjectPublicKey publicKey, KeyAlgorithmSpec spec, byte[] digest, byte[] signature, bool p1363)
    {
        var fixedWidth = signature;
        if (!p1363 && !EcdsaSignature.TryDerToP1363(signature, spec.KeyBits / 8, out fixedWidth))
        {
            return false;
        }

        using var ec = ECDsa.Create();
        ec.ImportSubjectPublicKeyInfo(publicKey.Der, out _);
        try
        {
            return ec.VerifyHash(digest, fixedWidth, DSASignatureFormat.IeeeP1363FixedFieldConcatenation);
        }
        catch (CryptographicException)
        {
            return false;
        }
    }

    private static bool VerifyRsa(SubjectPublicKey publicKey, KeyAlgorithmSpec spec, byte[] digest, byte[] signature)
    {
        using var rsa = RSA.Create();
        rsa.ImportSubjectPublicKeyInfo(publicKey.Der, out _);
        try
        {
            return rsa.VerifyHash(digest, signature, KeyAlgorithms.HashName(spec.Digest!.Value), spec.Padding == RsaPadding.Pss ? RSASignaturePadding.Pss : RSASignaturePadding.Pkcs1);
        }
        catch (CryptographicException)
        {
            return false;
        }
    }
}
