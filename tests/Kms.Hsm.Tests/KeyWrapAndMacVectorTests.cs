using Kms.Core.Keys;
using Kms.Testing;
using Net.Pkcs11Interop.Common;
using Net.Pkcs11Interop.HighLevelAPI;

namespace Kms.Hsm.Tests;

/// <summary>
/// Key wrapping and HMAC against vectors from outside: NIST CAVP SP 800-38F (KW and KWP, wrap
/// and unwrap, with the FAIL cases) and RFC 4231 from Debian's python3-cryptography-vectors
/// (installed by ./test.sh), and Wycheproof's aes_wrap_test.json (KMS_WYCHEPROOF_DIR). KWP is
/// what the domain key does to every key version; KW (RFC 3394) is not used by the service
/// and is checked because an HSM profile may one day need it. Every vector runs through
/// SoftHSM with a test-only key-encryption key of the vector's value.
/// </summary>
public sealed class KeyWrapAndMacVectorTests(HsmFixture fixture) : IClassFixture<HsmFixture>
{
    private const string VectorRoot = "/usr/lib/python3/dist-packages/cryptography_vectors";

    [Theory]
    [InlineData(128)]
    [InlineData(192)]
    [InlineData(256)]
    public void NistCavpKwpUnwrap_ValidVectorsGiveThePlaintext_FailVectorsAreRefused(int kekBits)
    {
        var (valid, refused) = RunUnwrapVectors($"KWP_AD_{kekBits}.txt", CKM.CKM_AES_KEY_WRAP_PAD);
        Assert.Equal((400, 100), (valid, refused));
    }

    [Theory]
    [InlineData(128)]
    [InlineData(192)]
    [InlineData(256)]
    public void NistCavpKwUnwrap_ValidVectorsGiveThePlaintext_FailVectorsAreRefused(int kekBits)
    {
        var (valid, refused) = RunUnwrapVectors($"KW_AD_{kekBits}.txt", CKM.CKM_AES_KEY_WRAP);
        Assert.Equal((400, 100), (valid, refused));
    }

    [Theory]
    [InlineData(128)]
    [InlineData(192)]
    [InlineData(256)]
    public void NistCavpKwpWrap_WholeBlockPlaintextsMatch_OthersShowSoftHsmsPaddedLength(int kekBits)
    {
        // SoftHSM 2.6.1 deviates from RFC 5649 when the plaintext is not a multiple of 8 bytes
        // (KnownAnswerTests.Kwp_LengthNotMultipleOf8_SoftHsmRecordsPaddedLength): its output is
        // then the RFC wrap of the plaintext zero-padded to a whole block. Both halves are
        // pinned, so a SoftHSM that starts following the RFC fails here and is noticed.
        var (exact, padded) = (0, 0);
        foreach (var vector in Cavp.Read(Path.Combine(VectorRoot, "keywrap", "kwtestvectors", $"KWP_AE_{kekBits}.txt")))
        {
            var wrapped = Wrap(vector.Key, vector.Plaintext!, CKM.CKM_AES_KEY_WRAP_PAD);
            if (vector.Plaintext!.Length % 8 == 0)
            {
                Assert.Equal(Convert.ToHexString(vector.Ciphertext), Convert.ToHexString(wrapped));
                exact++;
            }
            else
            {
                var zeroPadded = vector.Plaintext.Concat(new byte[8 - (vector.Plaintext.Length % 8)]).ToArray();
                Assert.Equal(Convert.ToHexString(Wrap(vector.Key, zeroPadded, CKM.CKM_AES_KEY_WRAP_PAD)), Convert.ToHexString(wrapped));
                Assert.NotEqual(Convert.ToHexString(vector.Ciphertext), Convert.ToHexString(wrapped));
                padded++;
            }
        }

        Assert.Equal((200, 300), (exact, padded));
    }

    [Theory]
    [InlineData(128)]
    [InlineData(192)]
    [InlineData(256)]
    public void NistCavpKwWrap_AllMatch(int kekBits)
    {
        var count = 0;
        foreach (var vector in Cavp.Read(Path.Combine(VectorRoot, "keywrap", "kwtestvectors", $"KW_AE_{kekBits}.txt")))
        {
            Assert.Equal(Convert.ToHexString(vector.Ciphertext), Convert.ToHexString(Wrap(vector.Key, vector.Plaintext!, CKM.CKM_AES_KEY_WRAP)));
            count++;
        }

        Assert.Equal(500, count);
    }

    [WycheproofFact]
    public void WycheproofAesWrap_ValidUnwrapsAndRewrapsExactly_InvalidIsRefused()
    {
        // "acceptable" vectors (a wrapped key shorter than 16 bytes, which RFC 3394 allows but
        // NIST does not) may go either way; every other expectation must hold.
        var failures = new List<string>();
        var counts = new Dictionary<string, int>();
        foreach (var (_, test) in Wycheproof.Tests("aes_wrap_test.json"))
        {
            var result = test.GetProperty("result").GetString()!;
            counts[result] = counts.GetValueOrDefault(result) + 1;
            var id = test.GetProperty("tcId").GetInt32();
            var (key, msg, ct) = (Wycheproof.Hex(test, "key"), Wycheproof.Hex(test, "msg"), Wycheproof.Hex(test, "ct"));
            var unwrapped = TryUnwrap(key, ct, CKM.CKM_AES_KEY_WRAP);
            switch (result)
            {
                case "valid" when unwrapped is null || !unwrapped.AsSpan().SequenceEqual(msg):
                    failures.Add($"tcId {id}: valid vector did not unwrap to its message");
                    break;
                case "valid" when Convert.ToHexString(Wrap(key, msg, CKM.CKM_AES_KEY_WRAP)) != Convert.ToHexString(ct):
                    failures.Add($"tcId {id}: wrapping the message gave another ciphertext");
                    break;
                case "invalid" when unwrapped is not null:
                    failures.Add($"tcId {id}: invalid vector unwrapped");
                    break;
            }
        }

        Assert.Empty(failures);
        Assert.Equal(36, counts["valid"]);
        Assert.Equal(126, counts["invalid"]);
    }

    [Theory]
    [InlineData("sha256", KeyAlgorithm.HmacSha256, 32)]
    [InlineData("sha384", KeyAlgorithm.HmacSha384, 48)]
    [InlineData("sha512", KeyAlgorithm.HmacSha512, 64)]
    public void Rfc4231Hmac_TheMechanismTheAdapterSignsWith_LongKeysMatch_ShortKeysAreRefused(string digest, KeyAlgorithm algorithm, int digestBytes)
    {
        // The adapter's own choice of mechanism for the algorithm, not a constant written here:
        // a mapping that signed HMAC_SHA384 keys with CKM_SHA256_HMAC passed when the test named
        // CKM_SHA384_HMAC itself.
        var mechanism = Pkcs11Hsm.HmacMechanism(KeyAlgorithms.Of(algorithm));
        // Raw C_Sign, because RFC 4231's keys (4 to 131 bytes) are never the digest length and
        // the adapter refuses HMAC material of any other length (AlgorithmTests covers the
        // adapter with Wycheproof's full-length keys). SoftHSM refuses an HMAC key shorter than
        // the digest (CKR_KEY_SIZE_RANGE at C_SignInit), which the service never creates; RFC
        // 4231's short keys (cases 1-4) pin that refusal, its 131-byte keys (cases 6 and 7) must
        // give the RFC's MAC. Case 5 (truncation) is not in the file.
        using var session = fixture.OpenRawSession();
        var a = fixture.Factories.ObjectAttributeFactory;
        var (matched, refused) = (0, 0);
        foreach (var vector in Cavp.Read(Path.Combine(VectorRoot, "HMAC", $"rfc-4231-{digest}.txt")))
        {
            var key = Native.With(
            [
                a.Create(CKA.CKA_CLASS, CKO.CKO_SECRET_KEY), a.Create(CKA.CKA_KEY_TYPE, CKK.CKK_GENERIC_SECRET), a.Create(CKA.CKA_TOKEN, false),
                a.Create(CKA.CKA_SIGN, true), a.Create(CKA.CKA_VALUE, vector.Key),
            ], session.CreateObject);
            try
            {
                using var hmac = fixture.Factories.MechanismFactory.Create(mechanism);
                if (vector.Key.Length >= digestBytes)
                {
                    Assert.Equal(Convert.ToHexString(vector.Ciphertext), Convert.ToHexString(session.Sign(hmac, key, vector.Plaintext!)));
                    matched++;
                }
                else
                {
                    Assert.Equal(CKR.CKR_KEY_SIZE_RANGE, Assert.Throws<Pkcs11Exception>(() => session.Sign(hmac, key, vector.Plaintext!)).RV);
                    refused++;
                }

            }
            finally
            {
                session.DestroyObject(key);
            }
        }

        Assert.Equal((2, 4), (matched, refused));
    }

    private (int Valid, int Refused) RunUnwrapVectors(string file, CKM mechanism)
    {
        var (valid, refused) = (0, 0);
        foreach (var vector in Cavp.Read(Path.Combine(VectorRoot, "keywrap", "kwtestvectors", file)))
        {
            var unwrapped = TryUnwrap(vector.Key, vector.Ciphertext, mechanism);
            if (vector.Plaintext is null)
            {
                Assert.Null(unwrapped);
                refused++;
            }
            else
            {
                Assert.Equal(Convert.ToHexString(vector.Plaintext), Convert.ToHexString(unwrapped ?? []));
                valid++;
            }
        }

        return (valid, refused);
    }

    private byte[] Wrap(byte[] kekValue, byte[] keyValue, CKM mechanism)
    {
        using var session = fixture.OpenRawSession();
        var a = fixture.Factories.ObjectAttributeFactory;
        var kek = CreateKek(session, kekValue);
        var secret = Native.With(
        [
            a.Create(CKA.CKA_CLASS, CKO.CKO_SECRET_KEY), a.Create(CKA.CKA_KEY_TYPE, CKK.CKK_GENERIC_SECRET), a.Create(CKA.CKA_TOKEN, false),
            a.Create(CKA.CKA_EXTRACTABLE, true), a.Create(CKA.CKA_VALUE, keyValue),
        ], session.CreateObject);
        try
        {
            using var wrap = fixture.Factories.MechanismFactory.Create(mechanism);
            return session.WrapKey(wrap, kek, secret);
        }
        finally
        {
            session.DestroyObject(secret);
            session.DestroyObject(kek);
        }
    }

    /// <summary>The unwrapped value, or null when the HSM refused the ciphertext.</summary>
    private byte[]? TryUnwrap(byte[] kekValue, byte[] wrapped, CKM mechanism)
    {
        using var session = fixture.OpenRawSession();
        var a = fixture.Factories.ObjectAttributeFactory;
        var kek = CreateKek(session, kekValue);
        try
        {
            using var unwrap = fixture.Factories.MechanismFactory.Create(mechanism);
            IObjectHandle key;
            try
            {
                key = Native.With(
                [
                    a.Create(CKA.CKA_CLASS, CKO.CKO_SECRET_KEY), a.Create(CKA.CKA_KEY_TYPE, CKK.CKK_GENERIC_SECRET), a.Create(CKA.CKA_TOKEN, false),
                    a.Create(CKA.CKA_SENSITIVE, false), a.Create(CKA.CKA_EXTRACTABLE, true),
                ], t => session.UnwrapKey(unwrap, kek, wrapped, t));
            }
            catch (Pkcs11Exception e) when (e.RV is CKR.CKR_GENERAL_ERROR or CKR.CKR_WRAPPED_KEY_INVALID or CKR.CKR_WRAPPED_KEY_LEN_RANGE)
            {
                // SoftHSM answers a failed integrity check with CKR_GENERAL_ERROR (the profile's
                // kwpUnwrapFailureReturnValues), a length off the 8-byte grid with _LEN_RANGE.
                return null;
            }

            var read = session.GetAttributeValue(key, [CKA.CKA_VALUE]);
            session.DestroyObject(key);
            var value = read[0].GetValueAsByteArray();
            read.DisposeAll();
            return value;
        }
        finally
        {
            session.DestroyObject(kek);
        }
    }

    private IObjectHandle CreateKek(ISession session, byte[] value)
    {
        var a = fixture.Factories.ObjectAttributeFactory;
        return Native.With(
        [
            a.Create(CKA.CKA_CLASS, CKO.CKO_SECRET_KEY), a.Create(CKA.CKA_KEY_TYPE, CKK.CKK_AES), a.Create(CKA.CKA_TOKEN, false),
            a.Create(CKA.CKA_WRAP, true), a.Create(CKA.CKA_UNWRAP, true), a.Create(CKA.CKA_VALUE, value),
        ], session.CreateObject);
    }

    /// <summary>
    /// A CAVP-style response file: blank-line separated records of <c>NAME = hex</c>, FAIL for
    /// an expected refusal. Key is K or Key; ciphertext C or MD; plaintext P or Msg.
    /// </summary>
    private static class Cavp
    {
        public static IEnumerable<Vector> Read(string path)
        {
            Assert.True(File.Exists(path), $"{path} is missing: install Debian's python3-cryptography-vectors (./test.sh does)");
            var fields = new Dictionary<string, string>(StringComparer.Ordinal);
            var fail = false;
            foreach (var raw in File.ReadLines(path).Append(""))
            {
                var line = raw.Trim();
                if (line == "FAIL")
                {
                    fail = true;
                }
                else if (line.Length > 0 && !line.StartsWith('#') && !line.StartsWith('[') && line.Contains('=', StringComparison.Ordinal))
                {
                    var parts = line.Split('=', 2);
                    fields[parts[0].Trim()] = parts[1].Trim();
                }
                else if (line.Length == 0 && (fields.ContainsKey("K") || fields.ContainsKey("Key")))
                {
                    yield return new Vector(
                        Field(fields, "K", "Key")!,
                        Field(fields, "C", "MD") ?? [],
                        fail ? null : Field(fields, "P", "Msg"));
                    fields.Clear();
                    fail = false;
                }
            }
        }

        private static byte[]? Field(Dictionary<string, string> fields, string name, string alternative) =>
            fields.TryGetValue(name, out var hex) || fields.TryGetValue(alternative, out hex) ? Convert.FromHexString(hex) : null;
    }

    private sealed record Vector(byte[] Key, byte[] Ciphertext, byte[]? Plaintext);
}
