using Kms.Core.Crypto;
using Kms.Core.Keys;
using Kms.Testing;

namespace Kms.Core.Tests;

/// <summary>
/// Verify's signature check (<see cref="SignatureVerifier"/>) against Wycheproof: every valid
/// vector verifies, every invalid one does not ("acceptable" ones may go either way). Wycheproof
/// gives public keys only, so the vectors run through the verification Verify uses rather than
/// through a stored key version.
/// </summary>
public sealed class SignatureVerifierWycheproofTests
{
    [WycheproofFact]
    public void EcdsaP256Sha256_DerSignatures() => Run("ecdsa_secp256r1_sha256_test.json", KeyAlgorithm.EcSignP256Sha256, minimum: 300);

    [WycheproofFact]
    public void EcdsaP384Sha384_DerSignatures() => Run("ecdsa_secp384r1_sha384_test.json", KeyAlgorithm.EcSignP384Sha384, minimum: 300);

    [WycheproofFact]
    public void RsaPss2048Sha256Salt32() => Run("rsa_pss_2048_sha256_mgf1_32_test.json", KeyAlgorithm.RsaSignPss2048Sha256, minimum: 50);

    [WycheproofFact]
    public void RsaPkcs1v15_2048Sha256() => Run("rsa_signature_2048_sha256_test.json", KeyAlgorithm.RsaSignPkcs2048Sha256, minimum: 100);

    private static void Run(string file, KeyAlgorithm algorithm, int minimum)
    {
        var spec = KeyAlgorithms.Of(algorithm);
        var failures = new List<string>();
        var count = 0;
        foreach (var (group, test) in Wycheproof.Tests(file))
        {
            var result = test.GetProperty("result").GetString();
            if (result == "acceptable")
            {
                continue;
            }

            var publicKey = new SubjectPublicKey(Wycheproof.Hex(group, "publicKeyDer"));
            var digest = KeyAlgorithms.Hash(spec.Digest!.Value, Wycheproof.Hex(test, "msg"));
            var verified = SignatureVerifier.Verify(publicKey, spec, digest, Wycheproof.Hex(test, "sig"), p1363: false);
            if (verified != (result == "valid"))
            {
                failures.Add($"tcId {test.GetProperty("tcId")} ({test.GetProperty("comment")}): expected {result}, verified={verified}");
            }

            count++;
        }

        Assert.True(failures.Count == 0, string.Join('\n', failures));
        Assert.True(count >= minimum, $"only {count} vectors ran");
    }
}
