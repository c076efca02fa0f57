using System.Security.Cryptography;
using Kms.Core.Errors;
using Kms.Core.Keys;
using Kms.Core.Ports;
using Kms.Testing;
using Microsoft.Extensions.Logging.Abstractions;
using Net.Pkcs11Interop.Common;
using Net.Pkcs11Interop.HighLevelAPI;
using Xunit.Abstractions;

namespace Kms.Hsm.Tests;

/// <summary>
/// Every object on the token after a full workload — each kind of key version generated, used
/// and described, an import job made and four materials imported through it, failures on the
/// way (a wrong tag, a bad import), a cache churn — read back by an independent reader (a raw
/// Pkcs11Interop session of its own, and OpenSC's <c>pkcs11-tool</c> in its own process for the
/// token objects) and held against the attribute set it was designed with, attribute by attribute.
/// </summary>
[Collection(ExternalTokenWriters.Name)]
public sealed class ObjectCensusTests(ITestOutputHelper output)
{
    private static readonly KeyAlgorithm[] Generated =
    [
        KeyAlgorithm.Aes256Gcm, KeyAlgorithm.EcSignP256Sha256, KeyAlgorithm.EcSignP384Sha384,
        KeyAlgorithm.RsaSignPss2048Sha256, KeyAlgorithm.RsaSignPkcs2048Sha256, KeyAlgorithm.RsaDecryptOaep2048Sha1,
        KeyAlgorithm.HmacSha256, KeyAlgorithm.HmacSha384, KeyAlgorithm.HmacSha512,
    ];

    // Every flag a key could carry: the census reads all of them on every object.
    private static readonly CKA[] Flags =
    [
        CKA.CKA_TOKEN, CKA.CKA_PRIVATE, CKA.CKA_SENSITIVE, CKA.CKA_EXTRACTABLE, CKA.CKA_MODIFIABLE, CKA.CKA_COPYABLE,
        CKA.CKA_ENCRYPT, CKA.CKA_DECRYPT, CKA.CKA_WRAP, CKA.CKA_UNWRAP, CKA.CKA_SIGN, CKA.CKA_SIGN_RECOVER,
        CKA.CKA_VERIFY, CKA.CKA_VERIFY_RECOVER, CKA.CKA_DERIVE,
    ];

    [Fact]
    public async Task FullWorkload_EveryObjectOnTheToken_HasExactlyItsDesignedAttributes_NoneLeftOver()
    {
        var token = SoftHsm.CreateToken();
        await using var hsm = Pkcs11Hsm.Open(token.Options(cacheCapacity: 100), NullLogger.Instance);
        var job = await hsm.GenerateImportWrappingKeyAsync(ImportMethod.RsaOaep3072Sha1Aes256, default);
        var jobRef = new KeyMaterialRef(KeyVersionId.NewId(), job.Wrapped);

        var versions = new List<(KeyMaterialRef Key, KeyAlgorithm Algorithm)>();
        foreach (var algorithm in Generated)
        {
            versions.Add((new KeyMaterialRef(KeyVersionId.NewId(), (await hsm.GenerateKeyVersionAsync(algorithm, default)).Wrapped), algorithm));
        }

        // Imported: a secret of each family and a key pair of each (the job's key is unwrapped and cached as ImportUnwrap).
        using var rsa = RSA.Create(2048);
        using var ec = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        var imports = new (KeyAlgorithm Algorithm, byte[] Material, byte[]? PublicKey)[]
        {
            (KeyAlgorithm.Aes256Gcm, RandomNumberGenerator.GetBytes(32), null),
            (KeyAlgorithm.HmacSha256, RandomNumberGenerator.GetBytes(32), null),
            (KeyAlgorithm.RsaSignPss2048Sha256, rsa.ExportPkcs8PrivateKey(), null),
            (KeyAlgorithm.EcSignP256Sha256, ec.ExportPkcs8PrivateKey(), ec.ExportSubjectPublicKeyInfo()),
        };
        foreach (var (algorithm, material, publicKey) in imports)
        {
            var imported = await hsm.ImportKeyVersionAsync(jobRef, ImportMethod.RsaOaep3072Sha1Aes256, algorithm, WrapForImport(job.SubjectPublicKeyInfo!, material), publicKey, default);
            versions.Add((new KeyMaterialRef(KeyVersionId.NewId(), imported.Wrapped), algorithm));
        }

        // Failures on the way: none may leave an object behind.
        var bad = await Assert.ThrowsAsync<KmsException>(async () => await hsm.ImportKeyVersionAsync(
            jobRef, ImportMethod.RsaOaep3072Sha1Aes256, KeyAlgorithm.Aes256Gcm, WrapForImport(job.SubjectPublicKeyInfo!, RandomNumberGenerator.GetBytes(16)), null, default));
        Assert.Equal(KmsErrorCode.InvalidArgument, bad.Code);

        for (var round = 0; round < 2; round++)
        {
            foreach (var (key, algorithm) in versions)
            {
                await UseAsync(hsm, key, algorithm);
            }

            // A cache churn between the rounds: every copy destroyed, then unwrapped again.
            hsm.EvictAllKeys();
        }

        foreach (var (key, algorithm) in versions)
        {
            await UseAsync(hsm, key, algorithm);
        }

        // The job's key is unwrapped again by one more import (a refused one: the material is too short).
        bad = await Assert.ThrowsAsync<KmsException>(async () => await hsm.ImportKeyVersionAsync(
            jobRef, ImportMethod.RsaOaep3072Sha1Aes256, KeyAlgorithm.HmacSha512, WrapForImport(job.SubjectPublicKeyInfo!, RandomNumberGenerator.GetBytes(32)), null, default));
        Assert.Equal(KmsErrorCode.InvalidArgument, bad.Code);
        await hsm.GenerateRandomAsync(1, default); // destroys what the churn queued
        Assert.Equal(0, hsm.Cache.PendingDestroyCount);

        var designed = new Dictionary<string, int>(StringComparer.Ordinal);
        hsm.Module.Call(library =>
        {
            var slot = SlotList.FindToken(library, token.Label, SoftHsm.ModulePath).Slot;
            using var session = slot.OpenSession(SessionType.ReadOnly);
            var all = session.FindAllObjects([]);
            foreach (var handle in all)
            {
                var kind = Census(session, handle);
                designed[kind] = designed.GetValueOrDefault(kind) + 1;
            }

            return 0;
        });
        foreach (var (kind, count) in designed.OrderBy(k => k.Key, StringComparer.Ordinal))
        {
            output.WriteLine($"{count} x {kind}");
        }

        // One copy per version in use, as what it is used as, plus the job key's and the domain key; nothing else.
        var expected = new Dictionary<string, int>(StringComparer.Ordinal)
        {
            ["domain key"] = 1,
            ["AES-GCM copy"] = 2,
            ["HMAC copy CKM_SHA256_HMAC"] = 2,
            ["HMAC copy CKM_SHA384_HMAC"] = 1,
            ["HMAC copy CKM_SHA512_HMAC"] = 1,
            ["EC copy"] = 3,
            ["RSA copy CKA_SIGN CKM_RSA_PKCS_PSS"] = 2,
            ["RSA copy CKA_SIGN CKM_RSA_PKCS"] = 1,
            ["RSA copy CKA_DECRYPT CKM_RSA_PKCS_OAEP"] = 1,
            ["RSA copy CKA_UNWRAP CKM_RSA_PKCS_OAEP"] = 1,
        };
        Assert.Equal(expected.OrderBy(k => k.Key, StringComparer.Ordinal), designed.OrderBy(k => k.Key, StringComparer.Ordinal));
        Assert.Equal(expected.Values.Sum() - 1, hsm.Cache.Count);

        // In another process only the token objects are visible (session objects are the process's own): the domain key alone.
        var listing = SoftHsm.Run("pkcs11-tool", "--module", SoftHsm.ModulePath, "--token-label", token.Label, "--login", "--pin", token.UserPin, "--list-objects");
        output.WriteLine(listing);
        Assert.Equal(1, CountOccurrences(listing, "Secret Key Object"));
        Assert.Equal(0, CountOccurrences(listing, "Private Key Object") + CountOccurrences(listing, "Public Key Object") + CountOccurrences(listing, "Data object"));
        Assert.Contains("label:      kms-domain-key", listing, StringComparison.Ordinal);
        Assert.Contains("Access:     sensitive, always sensitive, never extractable, local", listing, StringComparison.Ordinal);
        Assert.Contains("Usage:      wrap, unwrap", listing, StringComparison.Ordinal);
        Assert.DoesNotContain("encrypt", listing, StringComparison.Ordinal);
        Assert.DoesNotContain("derive", listing, StringComparison.Ordinal);
    }

    private static async Task UseAsync(Pkcs11Hsm hsm, KeyMaterialRef key, KeyAlgorithm algorithm)
    {
        var spec = KeyAlgorithms.Of(algorithm);
        switch (spec.Family)
        {
            case KeyFamily.Aes:
                var sealedBytes = await hsm.EncryptAesGcmAsync(key, new byte[12], [], [1, 2, 3], default);
                sealedBytes[0] ^= 1;
                var wrongTag = await Assert.ThrowsAsync<KmsException>(async () => await hsm.DecryptAesGcmAsync(key, new byte[12], [], sealedBytes, default));
                Assert.Equal(KmsErrorCode.DecryptionFailed, wrongTag.Code);
                break;
            case KeyFamily.Hmac:
                await hsm.ComputeMacAsync(key, algorithm, [1, 2, 3], default);
                break;
            case KeyFamily.Rsa when spec.Purpose is KeyPurpose.AsymmetricDecrypt:
                var garbage = await Assert.ThrowsAsync<KmsException>(async () => await hsm.DecryptRsaOaepAsync(key, algorithm, new byte[256], default));
                Assert.Equal(KmsErrorCode.DecryptionFailed, garbage.Code);
                break;
            default:
                await hsm.SignAsync(key, algorithm, new byte[spec.DigestLength], default);
                break;
        }

        await hsm.DescribeKeyVersionAsync(key, algorithm, default);
    }

    // Names what the object is and asserts that it carries exactly the attributes designed for that.
    private static string Census(ISession session, IObjectHandle handle)
    {
        var head = session.GetAttributeValue(handle, [CKA.CKA_CLASS, CKA.CKA_KEY_TYPE, CKA.CKA_LABEL]);
        var objectClass = (CKO)head[0].GetValueAsUlong();
        var keyType = (CKK)head[1].GetValueAsUlong();
        var label = head[2].GetValueAsString();
        head.DisposeAll();
        var read = session.GetAttributeValue(handle, [.. Flags, CKA.CKA_ALLOWED_MECHANISMS, CKA.CKA_VALUE]);
        var flags = new Dictionary<CKA, bool>();
        for (var i = 0; i < Flags.Length; i++)
        {
            // An attribute the object's class does not have (CKA_WRAP on a private key) reads as absent: false.
            flags[Flags[i]] = !read[i].CannotBeRead && read[i].GetValueAsBool();
        }

        var mechanisms = read[Flags.Length].CannotBeRead ? [] : read[Flags.Length].GetValueAsCkmList();
        var valueHidden = read[Flags.Length + 1].CannotBeRead;
        read.DisposeAll();
        var name = $"object {handle.ObjectId} ({objectClass}, {keyType}, '{label}')";

        Assert.True(objectClass is CKO.CKO_SECRET_KEY or CKO.CKO_PRIVATE_KEY, $"{name}: no other class of object is left on the token");
        Assert.True(valueHidden, $"{name}: its value can be read");
        Assert.True(flags[CKA.CKA_PRIVATE], $"{name} is not CKA_PRIVATE");
        Assert.True(flags[CKA.CKA_SENSITIVE], $"{name} is not sensitive");
        Assert.False(flags[CKA.CKA_EXTRACTABLE], $"{name} is extractable");
        Assert.False(flags[CKA.CKA_MODIFIABLE], $"{name} is modifiable");
        Assert.False(flags[CKA.CKA_COPYABLE], $"{name} is copyable");
        Assert.False(flags[CKA.CKA_DERIVE], $"{name} can derive");
        Assert.False(flags[CKA.CKA_SIGN_RECOVER] || flags[CKA.CKA_VERIFY_RECOVER], $"{name} can sign or verify with recovery");
        Assert.Single(mechanisms);
        var usage = Flags.Where(f => (f is CKA.CKA_ENCRYPT or CKA.CKA_DECRYPT or CKA.CKA_WRAP or CKA.CKA_UNWRAP or CKA.CKA_SIGN or CKA.CKA_VERIFY) && flags[f]).Order().ToList();

        if (flags[CKA.CKA_TOKEN])
        {
            Assert.Equal((CKO.CKO_SECRET_KEY, CKK.CKK_AES, "kms-domain-key"), (objectClass, keyType, label));
            Assert.Equal([CKA.CKA_WRAP, CKA.CKA_UNWRAP], usage);
            Assert.Equal(CKM.CKM_AES_KEY_WRAP_PAD, mechanisms[0]);
            return "domain key";
        }

        switch (objectClass, keyType)
        {
            case (CKO.CKO_SECRET_KEY, CKK.CKK_AES):
                Assert.Equal([CKA.CKA_ENCRYPT, CKA.CKA_DECRYPT], usage);
                Assert.Equal(CKM.CKM_AES_GCM, mechanisms[0]);
                return "AES-GCM copy";
            case (CKO.CKO_SECRET_KEY, CKK.CKK_GENERIC_SECRET):
                Assert.Equal([CKA.CKA_SIGN, CKA.CKA_VERIFY], usage);
                Assert.Contains(mechanisms[0], new[] { CKM.CKM_SHA256_HMAC, CKM.CKM_SHA384_HMAC, CKM.CKM_SHA512_HMAC });
                return $"HMAC copy {mechanisms[0]}";
            case (CKO.CKO_PRIVATE_KEY, CKK.CKK_EC):
                Assert.Equal([CKA.CKA_SIGN], usage);
                Assert.Equal(CKM.CKM_ECDSA, mechanisms[0]);
                return "EC copy";
            case (CKO.CKO_PRIVATE_KEY, CKK.CKK_RSA):
                var one = Assert.Single(usage);
                Assert.Contains((one, mechanisms[0]), new[]
                {
                    (CKA.CKA_SIGN, CKM.CKM_RSA_PKCS_PSS), (CKA.CKA_SIGN, CKM.CKM_RSA_PKCS),
                    (CKA.CKA_DECRYPT, CKM.CKM_RSA_PKCS_OAEP), (CKA.CKA_UNWRAP, CKM.CKM_RSA_PKCS_OAEP),
                });
                return $"RSA copy {one} {mechanisms[0]}";
            default:
                Assert.Fail($"{name}: not an object the adapter makes");
                return "";
        }
    }

    private static byte[] WrapForImport(byte[] jobPublicKey, byte[] material)
    {
        var ephemeral = RandomNumberGenerator.GetBytes(32);
        using var rsa = RSA.Create();
        rsa.ImportSubjectPublicKeyInfo(jobPublicKey, out _);
        return [.. rsa.Encrypt(ephemeral, RSAEncryptionPadding.OaepSHA1), .. AlgorithmFixture.Kwp(ephemeral, material)];
    }

    private static int CountOccurrences(string text, string what)
    {
        var count = 0;
        for (var at = text.IndexOf(what, StringComparison.Ordinal); at >= 0; at = text.IndexOf(what, at + what.Length, StringComparison.Ordinal))
        {
            count++;
        }

        return count;
    }
}
