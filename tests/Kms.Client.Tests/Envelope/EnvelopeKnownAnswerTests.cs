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
    /// <summary>Both implementations of each primitive: .NET's (false) and OpenSSL's called directly (true; <see cref="LibCrypto"/>) — on this Linux both must run.</summary>
    private static readonly bool[] Implementations = [false, true];

    [WycheproofFact]
    public void HkdfSha512_EveryWycheproofVector()
    {
        var (valid, invalid) = (0, 0);
        foreach (var ((_, test), native) in Wycheproof.Tests("hkdf_sha512_test.json").SelectMany(vector => Implementations.Select(native => (vector, native))))
        {
            var okm = new byte[test.GetProperty("size").GetInt32()];
            var derive = () => EnvelopeFormat.HkdfSha512(Wycheproof.Hex(test, "ikm"), Wycheproof.Hex(test, "salt"), Wycheproof.Hex(test, "info"), okm, native);
            if (test.GetProperty("result").GetString() == "valid")
            {
                derive();
                Assert.True(string.Equals(test.GetProperty("okm").GetString(), Convert.ToHexString(okm), StringComparison.OrdinalIgnoreCase), $"tcId {test.GetProperty("tcId")}, OpenSSL directly: {native}");
                valid++;
            }
            else
            {
                // The only invalid vectors ask for more than 255 blocks of output.
                Assert.Throws<ArgumentException>(derive);
                invalid++;
            }
        }

        Assert.Equal((2 * 80, 2 * 3), (valid, invalid));
    }

    /// <summary>
    /// Our HKDF (built from one-shot SHA-512s) against .NET's <see cref="System.Security.Cryptography.HKDF"/>
    /// at the lengths where an HMAC changes shape: keys of 0, one block and more than one block
    /// (hashed first), messages that cross the stack buffer, outputs of one and several blocks.
    /// </summary>
    [Fact]
    public void HkdfSha512_MatchesDotNetHkdf_AtEveryShapeOfKeyMessageAndOutput()
    {
        var random = new Random(5869);
        var lengths = new[] { 0, 1, 32, 127, 128, 129, 300, 600 };
        var cases = 0;
        foreach (var saltLength in lengths)
        {
            foreach (var ikmLength in new[] { 0, 32, 129, 600 })
            {
                foreach (var ((infoLength, okmLength), native) in new[] { (0, 64), (28, 64), (28, 1), (100, 65), (400, 200), (600, 255 * 64) }.SelectMany(shape => Implementations.Select(native => (shape, native))))
                {
                    var (ikm, salt, info) = (new byte[ikmLength], new byte[saltLength], new byte[infoLength]);
                    random.NextBytes(ikm);
                    random.NextBytes(salt);
                    random.NextBytes(info);
                    var (ours, theirs) = (new byte[okmLength], new byte[okmLength]);
                    EnvelopeFormat.HkdfSha512(ikm, salt, info, ours, native);
                    System.Security.Cryptography.HKDF.DeriveKey(System.Security.Cryptography.HashAlgorithmName.SHA512, ikm, theirs, salt, info);
                    Assert.True(ours.AsSpan().SequenceEqual(theirs), $"salt {saltLength}, ikm {ikmLength}, info {infoLength}, okm {okmLength}, OpenSSL directly: {native}");
                    cases++;
                }
            }
        }

        Assert.Equal(8 * 4 * 6 * 2, cases);
        Assert.Throws<ArgumentException>(() => EnvelopeFormat.HkdfSha512([1], [], [], new byte[(255 * 64) + 1]));
        Assert.Throws<ArgumentException>(() => EnvelopeFormat.HkdfSha512([1], [], [], []));
        var shared = new byte[200];
        Assert.Throws<ArgumentException>(() => EnvelopeFormat.HkdfSha512([1], [], shared.AsSpan(0, 100), shared.AsSpan(50, 128)));
    }

    [WycheproofFact]
    public void FrameGcm_Key256Iv96Tag128_ValidOpensInvalidIsOneDecryptionError()
    {
        var failures = new List<string>();
        var (valid, invalid) = (0, 0);
        foreach (var ((group, test), native) in Wycheproof.Tests("aes_gcm_test.json").SelectMany(vector => Implementations.Select(native => (vector, native))))
        {
            if (group.GetProperty("keySize").GetInt32() != 256 || group.GetProperty("ivSize").GetInt32() != 96 || group.GetProperty("tagSize").GetInt32() != 128)
            {
                continue;
            }

            var id = $"{test.GetProperty("tcId").GetInt32()} (OpenSSL directly: {native})";
            var ciphertext = Wycheproof.Hex(test, "ct");
            var plaintext = new byte[ciphertext.Length];
            using var cipher = FrameCipher.ForKnownAnswer(Wycheproof.Hex(test, "key"), native);
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
