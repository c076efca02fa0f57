using Kms.Client.Envelope;
using Kms.Testing;

namespace Kms.Client.Tests.Envelope;

/// <summary>
/// The envelope's two primitives against Wycheproof (KMS_WYCHEPROOF_DIR): the HKDF-SHA512
/// every message key and commitment come from, and the GCM decryption every frame goes
/// through, with its one error for a bad tag.
/// </summary>
public sealed class EnvelopeKnownAnswerTests
{
    [WycheproofFact]
    public void HkdfSha512_EveryWycheproofVector()
    {
        var (valid, invalid) = (0, 0);
        foreach (var (_, test) in Wycheproof.Tests("hkdf_sha512_test.json"))
        {
            var okm = new byte[test.GetProperty("size").GetInt32()];
            var derive = () => EnvelopeFormat.HkdfSha512(Wycheproof.Hex(test, "ikm"), Wycheproof.Hex(test, "salt"), Wycheproof.Hex(test, "info"), okm);
            if (test.GetProperty("result").GetString() == "valid")
            {
                derive();
                Assert.Equal(test.GetProperty("okm").GetString(), Convert.ToHexString(okm), ignoreCase: true);
                valid++;
            }
            else
            {
                // The only invalid vectors ask for more than 255 blocks of output.
                Assert.Throws<ArgumentException>(derive);
                invalid++;
            }
        }

        Assert.Equal((80, 3), (valid, invalid));
    }

    [WycheproofFact]
    public void FrameGcm_Key256Iv96Tag128_ValidOpensInvalidIsOneDecryptionError()
    {
        var failures = new List<string>();
        var (valid, invalid) = (0, 0);
        foreach (var (group, test) in Wycheproof.Tests("aes_gcm_test.json"))
        {
            if (group.GetProperty("keySize").GetInt32() != 256 || group.GetProperty("ivSize").GetInt32() != 96 || group.GetProperty("tagSize").GetInt32() != 128)
            {
                continue;
            }

            var id = test.GetProperty("tcId").GetInt32();
            var ciphertext = Wycheproof.Hex(test, "ct");
            var plaintext = new byte[ciphertext.Length];
            using var cipher = FrameCipher.ForKnownAnswer(Wycheproof.Hex(test, "key"));
            try
            {
                cipher.Open(Wycheproof.Hex(test, "iv"), Wycheproof.Hex(test, "aad"), ciphertext, Wycheproof.Hex(test, "tag"), plaintext);
                if (test.GetProperty("result").GetString() != "valid" || !plaintext.AsSpan().SequenceEqual(Wycheproof.Hex(test, "msg")))
                {
                    failures.Add($"tcId {id}: opened");
                }

                valid++;
            }
            catch (EnvelopeDecryptionException)
            {
                if (test.GetProperty("result").GetString() == "valid")
                {
                    failures.Add($"tcId {id}: valid vector refused");
                }

                if (plaintext.Any(b => b != 0))
                {
                    failures.Add($"tcId {id}: refused but left plaintext behind");
                }

                invalid++;
            }
        }

        Assert.Empty(failures);
        Assert.True(valid > 20 && invalid > 20, $"{valid} valid and {invalid} invalid vectors matched the filter");
    }
}
