using System.Security.Cryptography;
using Kms.Core.Errors;
using Kms.Core.Keys;
using Kms.Core.Ports;
using Net.Pkcs11Interop.Common;
using Net.Pkcs11Interop.HighLevelAPI;

namespace Kms.Hsm.Tests;

/// <summary>
/// The measurements behind the softhsm2 profile's algorithm entries: what SoftHSM does when the
/// adapter is allowed to try (a profile file without the refusal), and the return values the
/// profile's failure lists name. A SoftHSM upgrade that changes one of them fails here first.
/// </summary>
public sealed class SoftHsmAlgorithmFactsTests(AlgorithmFixture fixture) : IClassFixture<AlgorithmFixture>
{
    [Fact]
    public async Task Ed25519_AllowedByAProfile_GeneratesButTheWrapIsRefused_NothingLeft()
    {
        await using var hsm = AlgorithmFixture.OpenWithProfile(AlgorithmFixture.ProfileAllowing(["ED25519"], []));
        Assert.Null(hsm.UnsupportedReason(KeyAlgorithm.Ed25519));
        var before = hsm.CountSessionObjects();

        var e = await Assert.ThrowsAsync<KmsException>(async () => await hsm.GenerateKeyVersionAsync(KeyAlgorithm.Ed25519, default));

        Assert.Equal(KmsErrorCode.Internal, e.Code);
        Assert.Contains("C_WrapKey returned CKR_KEY_NOT_WRAPPABLE", e.Message, StringComparison.Ordinal);
        Assert.Equal(before, hsm.CountSessionObjects());
    }

    [Fact]
    public async Task OaepSha256_AllowedByAProfile_KeyGenerates_DecryptAndImportGiveArgumentsBad()
    {
        await using var hsm = AlgorithmFixture.OpenWithProfile(
            AlgorithmFixture.ProfileAllowing(["RSA_DECRYPT_OAEP_2048_SHA256"], ["RSA_OAEP_3072_SHA256_AES_256"]));
        var generated = await hsm.GenerateKeyVersionAsync(KeyAlgorithm.RsaDecryptOaep2048Sha256, default);
        using var rsa = RSA.Create();
        rsa.ImportSubjectPublicKeyInfo(generated.SubjectPublicKeyInfo, out _);
        var key = new KeyMaterialRef(KeyVersionId.NewId(), generated.Wrapped);

        var decrypt = await Assert.ThrowsAsync<KmsException>(async () =>
            await hsm.DecryptRsaOaepAsync(key, KeyAlgorithm.RsaDecryptOaep2048Sha256, rsa.Encrypt([1, 2, 3], RSAEncryptionPadding.OaepSHA256), default));
        Assert.Equal(KmsErrorCode.Internal, decrypt.Code);
        Assert.Contains("CKR_ARGUMENTS_BAD", decrypt.Message, StringComparison.Ordinal);

        var job = await hsm.GenerateImportWrappingKeyAsync(ImportMethod.RsaOaep3072Sha256Aes256, default);
        using var jobKey = RSA.Create();
        jobKey.ImportSubjectPublicKeyInfo(job.SubjectPublicKeyInfo, out _);
        var ephemeral = RandomNumberGenerator.GetBytes(32);
        byte[] wrapped = [.. jobKey.Encrypt(ephemeral, RSAEncryptionPadding.OaepSHA256), .. AlgorithmFixture.Kwp(ephemeral, RandomNumberGenerator.GetBytes(32))];
        var import = await Assert.ThrowsAsync<KmsException>(async () =>
            await hsm.ImportKeyVersionAsync(new KeyMaterialRef(KeyVersionId.NewId(), job.Wrapped), ImportMethod.RsaOaep3072Sha256Aes256, KeyAlgorithm.Aes256Gcm, wrapped, null, default));
        Assert.Equal(KmsErrorCode.Internal, import.Code);
        Assert.Contains("CKR_ARGUMENTS_BAD", import.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Profile_UnknownAlgorithmOrImportMethodName_Refused()
    {
        var path = AlgorithmFixture.ProfileAllowing([], []);
        var json = File.ReadAllText(path);
        File.WriteAllText(path, json.Replace("\"ED25519\"", "\"ED448\"", StringComparison.Ordinal));
        var algorithm = Assert.Throws<HsmConfigurationException>(() => HsmProfile.Load(path));
        Assert.Contains("unknown key algorithm 'ED448'", algorithm.Message, StringComparison.Ordinal);

        File.WriteAllText(path, json.Replace("RSA_OAEP_3072_SHA256_AES_256", "RSA_OAEP_2048_SHA256_AES_256", StringComparison.Ordinal));
        var method = Assert.Throws<HsmConfigurationException>(() => HsmProfile.Load(path));
        Assert.Contains("unknown import method 'RSA_OAEP_2048_SHA256_AES_256'", method.Message, StringComparison.Ordinal);

        File.WriteAllText(path, json.Replace("CKR_KEY_SIZE_RANGE", "CKR_KEY_SIZE_WRONG", StringComparison.Ordinal));
        Assert.Throws<HsmConfigurationException>(() => HsmProfile.Load(path));

        // The domain key's MUSTs cannot be switched off by a profile.
        foreach (var flag in new[] { "unwrapTemplateAttribute", "allowedMechanismsAttribute" })
        {
            Assert.Contains($"\"{flag}\": true", json, StringComparison.Ordinal);
            File.WriteAllText(path, json.Replace($"\"{flag}\": true", $"\"{flag}\": false", StringComparison.Ordinal));
            var weak = Assert.Throws<HsmConfigurationException>(() => HsmProfile.Load(path));
            Assert.Contains("CKA_UNWRAP_TEMPLATE and CKA_ALLOWED_MECHANISMS", weak.Message, StringComparison.Ordinal);
        }
    }

    [Fact]
    public void RsaOaep_BadCiphertexts_ReturnValuesAreTheProfilesOaepFailures()
    {
        // Measured: C_Decrypt answers a tampered ciphertext, and one a byte short or long, with
        // CKR_GENERAL_ERROR (never CKR_ENCRYPTED_DATA_INVALID / _LEN_RANGE), so GENERAL_ERROR is
        // in the OAEP failure list; C_UnwrapKey answers the same (never CKR_WRAPPED_KEY_INVALID).
        WithRawRsaKey(RsaUsage.DecryptOaep, (session, key, rsa) =>
        {
            var ciphertext = rsa.Encrypt([1, 2, 3], RSAEncryptionPadding.OaepSHA1);
            var seen = new[]
            {
                DecryptRv(session, key, AlgorithmTests.Flip(ciphertext, 5)),
                DecryptRv(session, key, ciphertext[1..]),
                DecryptRv(session, key, [.. ciphertext, 0]),
            };
            Assert.Equal([CKR.CKR_GENERAL_ERROR, CKR.CKR_GENERAL_ERROR, CKR.CKR_GENERAL_ERROR], seen);
            Assert.All(seen, rv => Assert.True(rv is { } code && fixture.Hsm.Profile.OaepFailures.Contains(code), $"{rv} is not in the profile\'s list"));
        });
        WithRawRsaKey(RsaUsage.UnwrapOaep, (session, key, rsa) =>
        {
            var ciphertext = rsa.Encrypt(new byte[32], RSAEncryptionPadding.OaepSHA1);
            var seen = new[] { UnwrapRv(session, key, AlgorithmTests.Flip(ciphertext, 5)), UnwrapRv(session, key, ciphertext[1..]) };
            Assert.Equal([CKR.CKR_GENERAL_ERROR, CKR.CKR_GENERAL_ERROR], seen);
            Assert.All(seen, rv => Assert.True(rv is { } code && fixture.Hsm.Profile.OaepFailures.Contains(code), $"{rv} is not in the profile\'s list"));
        });
    }

    [Fact]
    public void KwpUnwrap_BadMaterial_ReturnValuesAreTheProfilesKwpFailures()
    {
        // Measured: a KWP block that fails its integrity check gives CKR_GENERAL_ERROR (not
        // CKR_WRAPPED_KEY_INVALID), a length that is not a multiple of 8 CKR_WRAPPED_KEY_LEN_RANGE,
        // and a valid KWP block holding a PKCS#8 of another key type, or no PKCS#8 at all, unwrapped
        // as an RSA key, CKR_FUNCTION_FAILED.
        var templates = new Templates(fixture.Base.Factories.ObjectAttributeFactory, fixture.Hsm.Profile);
        using var session = fixture.Base.OpenRawSession();
        var a = fixture.Base.Factories.ObjectAttributeFactory;
        var kek = RandomNumberGenerator.GetBytes(32);
        var ephemeral = Native.With(
        [
            a.Create(CKA.CKA_CLASS, CKO.CKO_SECRET_KEY), a.Create(CKA.CKA_KEY_TYPE, CKK.CKK_AES), a.Create(CKA.CKA_TOKEN, false),
            a.Create(CKA.CKA_PRIVATE, true), a.Create(CKA.CKA_UNWRAP, true), a.Create(CKA.CKA_VALUE, kek),
        ], session.CreateObject);
        try
        {
            using var ec = ECDsa.Create(ECCurve.NamedCurves.nistP256);
            var good = AlgorithmFixture.Kwp(kek, RandomNumberGenerator.GetBytes(32));
            var seen = new[]
            {
                KwpRv(session, ephemeral, templates, KeyAlgorithm.Aes256Gcm, AlgorithmTests.Flip(good, 3)),
                KwpRv(session, ephemeral, templates, KeyAlgorithm.Aes256Gcm, good[..^1]),
                KwpRv(session, ephemeral, templates, KeyAlgorithm.RsaSignPss2048Sha256, AlgorithmFixture.Kwp(kek, ec.ExportPkcs8PrivateKey())),
                KwpRv(session, ephemeral, templates, KeyAlgorithm.RsaSignPss2048Sha256, good),
            };
            Assert.Equal([CKR.CKR_GENERAL_ERROR, CKR.CKR_WRAPPED_KEY_LEN_RANGE, CKR.CKR_FUNCTION_FAILED, CKR.CKR_FUNCTION_FAILED], seen);
            Assert.All(seen, rv => Assert.True(rv is { } code && fixture.Hsm.Profile.KwpUnwrapFailures.Contains(code), $"{rv} is not in the profile\'s list"));
        }
        finally
        {
            session.DestroyObject(ephemeral);
        }
    }

    [Fact]
    public void UnwrappedSecrets_ValueLenIsZero_AndShortKeysFailOnFirstUse()
    {
        // Measured: C_UnwrapKey leaves CKA_VALUE_LEN = 0 on AES and generic secrets (and refuses it
        // in the template), so the adapter cannot read an imported secret's length; a 31-byte
        // HMAC-SHA256 key gives CKR_KEY_SIZE_RANGE, a 31-byte AES key CKR_MECHANISM_INVALID (GCM).
        // CKA_MODULUS_BITS is not shown on RSA private keys.
        var templates = new Templates(fixture.Base.Factories.ObjectAttributeFactory, fixture.Hsm.Profile);
        using var session = fixture.Base.OpenRawSession();
        var a = fixture.Base.Factories.ObjectAttributeFactory;
        var kek = RandomNumberGenerator.GetBytes(32);
        var unwrapping = Native.With(
        [
            a.Create(CKA.CKA_CLASS, CKO.CKO_SECRET_KEY), a.Create(CKA.CKA_KEY_TYPE, CKK.CKK_AES), a.Create(CKA.CKA_TOKEN, false),
            a.Create(CKA.CKA_PRIVATE, true), a.Create(CKA.CKA_UNWRAP, true), a.Create(CKA.CKA_VALUE, kek),
        ], session.CreateObject);
        using var kwp = fixture.Base.Factories.MechanismFactory.Create(CKM.CKM_AES_KEY_WRAP_PAD);
        var created = new List<IObjectHandle>();
        try
        {
            foreach (var (algorithm, length, expected) in new[]
            {
                (KeyAlgorithm.HmacSha256, 32, (CKR?)null), (KeyAlgorithm.HmacSha256, 31, CKR.CKR_KEY_SIZE_RANGE),
                (KeyAlgorithm.Aes256Gcm, 32, null), (KeyAlgorithm.Aes256Gcm, 31, CKR.CKR_MECHANISM_INVALID),
            })
            {
                var spec = KeyAlgorithms.Of(algorithm);
                using var template = templates.ImportedMaterial(spec, CKM.CKM_SHA256_HMAC);
                var handle = session.UnwrapKey(kwp, unwrapping, AlgorithmFixture.Kwp(kek, RandomNumberGenerator.GetBytes(length)), template.Attributes);
                created.Add(handle);
                Assert.Equal(0UL, session.GetAttributeValue(handle, [CKA.CKA_VALUE_LEN])[0].GetValueAsUlong());
                CKR? rv = null;
                try
                {
                    if (spec.Family == KeyFamily.Aes)
                    {
                        using var gcm = fixture.Base.Factories.MechanismParamsFactory.CreateCkGcmParams(new byte[12], 96, [], 128);
                        using var mechanism = fixture.Base.Factories.MechanismFactory.Create(CKM.CKM_AES_GCM, gcm);
                        session.Encrypt(mechanism, handle, []);
                    }
                    else
                    {
                        using var mechanism = fixture.Base.Factories.MechanismFactory.Create(CKM.CKM_SHA256_HMAC);
                        session.Sign(mechanism, handle, [1]);
                    }
                }
                catch (Pkcs11Exception e)
                {
                    rv = e.RV;
                }

                Assert.Equal(expected, rv);
                Assert.True(rv is null || fixture.Hsm.Profile.KeySizeFailures.Contains(rv.Value));
            }
        }
        finally
        {
            foreach (var handle in created)
            {
                session.DestroyObject(handle);
            }

            session.DestroyObject(unwrapping);
        }

        WithRawRsaKey(RsaUsage.SignPss, (session, key, _) => Assert.True(session.GetAttributeValue(key, [CKA.CKA_MODULUS_BITS])[0].CannotBeRead));
    }

    [Fact]
    public void ImportEphemeralKey_UnwrapTemplateEnforced_NoReadableOrTokenCopyOfTheMaterial()
    {
        // The ephemeral key exists only inside one import call, but while it does, what it can
        // unwrap is confined: SoftHSM enforces its CKA_UNWRAP_TEMPLATE (CKR_TEMPLATE_INCONSISTENT).
        var templates = new Templates(fixture.Base.Factories.ObjectAttributeFactory, fixture.Hsm.Profile);
        var a = fixture.Base.Factories.ObjectAttributeFactory;
        using var session = fixture.Base.OpenRawSession();
        var kek = RandomNumberGenerator.GetBytes(32);
        using var ephemeralTemplate = templates.ImportEphemeralKey();
        ephemeralTemplate.Insert(0, a.Create(CKA.CKA_VALUE, kek));
        var ephemeral = session.CreateObject(ephemeralTemplate.Attributes);
        using var kwp = fixture.Base.Factories.MechanismFactory.Create(CKM.CKM_AES_KEY_WRAP_PAD);
        var block = AlgorithmFixture.Kwp(kek, RandomNumberGenerator.GetBytes(32));
        try
        {
            foreach (var (token, sensitive) in new[] { (false, false), (true, true) })
            {
                var e = Assert.Throws<Pkcs11Exception>(() => Native.With(
                [
                    a.Create(CKA.CKA_CLASS, CKO.CKO_SECRET_KEY), a.Create(CKA.CKA_KEY_TYPE, CKK.CKK_GENERIC_SECRET),
                    a.Create(CKA.CKA_TOKEN, token), a.Create(CKA.CKA_PRIVATE, true), a.Create(CKA.CKA_SENSITIVE, sensitive), a.Create(CKA.CKA_EXTRACTABLE, true),
                ], t => session.UnwrapKey(kwp, ephemeral, block, t)));
                Assert.Equal(CKR.CKR_TEMPLATE_INCONSISTENT, e.RV);
            }

            using var allowed = templates.ImportedMaterial(KeyAlgorithms.Of(KeyAlgorithm.HmacSha256), CKM.CKM_SHA256_HMAC);
            session.DestroyObject(session.UnwrapKey(kwp, ephemeral, block, allowed.Attributes));
        }
        finally
        {
            session.DestroyObject(ephemeral);
        }
    }

    private void WithRawRsaKey(RsaUsage usage, Action<ISession, IObjectHandle, RSA> use)
    {
        var templates = new Templates(fixture.Base.Factories.ObjectAttributeFactory, fixture.Hsm.Profile);
        using var session = fixture.Base.OpenRawSession();
        using var generate = fixture.Base.Factories.MechanismFactory.Create(CKM.CKM_RSA_PKCS_KEY_PAIR_GEN);
        using var publicTemplate = templates.GeneratedRsaPublicKey(2048, usage);
        using var privateTemplate = templates.GeneratedRsaPrivateKey(usage);
        session.GenerateKeyPair(generate, publicTemplate.Attributes, privateTemplate.Attributes, out var publicKey, out var privateKey);
        try
        {
            var read = session.GetAttributeValue(publicKey, [CKA.CKA_MODULUS, CKA.CKA_PUBLIC_EXPONENT]);
            using var rsa = RSA.Create(new RSAParameters { Modulus = read[0].GetValueAsByteArray(), Exponent = read[1].GetValueAsByteArray() });
            use(session, privateKey, rsa);
        }
        finally
        {
            session.DestroyObject(privateKey);
            session.DestroyObject(publicKey);
        }
    }

    private CKR? DecryptRv(ISession session, IObjectHandle key, byte[] ciphertext)
    {
        using var parameters = fixture.Base.Factories.MechanismParamsFactory.CreateCkRsaPkcsOaepParams((ulong)CKM.CKM_SHA_1, (ulong)CKG.CKG_MGF1_SHA1, (ulong)CKZ.CKZ_DATA_SPECIFIED, null);
        using var mechanism = fixture.Base.Factories.MechanismFactory.Create(CKM.CKM_RSA_PKCS_OAEP, parameters);
        try
        {
            session.Decrypt(mechanism, key, ciphertext);
            return null;
        }
        catch (Pkcs11Exception e)
        {
            return e.RV;
        }
    }

    private CKR? UnwrapRv(ISession session, IObjectHandle key, byte[] ciphertext)
    {
        var templates = new Templates(fixture.Base.Factories.ObjectAttributeFactory, fixture.Hsm.Profile);
        using var parameters = fixture.Base.Factories.MechanismParamsFactory.CreateCkRsaPkcsOaepParams((ulong)CKM.CKM_SHA_1, (ulong)CKG.CKG_MGF1_SHA1, (ulong)CKZ.CKZ_DATA_SPECIFIED, null);
        using var mechanism = fixture.Base.Factories.MechanismFactory.Create(CKM.CKM_RSA_PKCS_OAEP, parameters);
        using var template = templates.ImportEphemeralKey();
        try
        {
            session.DestroyObject(session.UnwrapKey(mechanism, key, ciphertext, template.Attributes));
            return null;
        }
        catch (Pkcs11Exception e)
        {
            return e.RV;
        }
    }

    private CKR? KwpRv(ISession session, IObjectHandle kek, Templates templates, KeyAlgorithm algorithm, byte[] wrapped)
    {
        using var kwp = fixture.Base.Factories.MechanismFactory.Create(CKM.CKM_AES_KEY_WRAP_PAD);
        using var template = templates.ImportedMaterial(KeyAlgorithms.Of(algorithm), CKM.CKM_SHA256_HMAC);
        try
        {
            session.DestroyObject(session.UnwrapKey(kwp, kek, wrapped, template.Attributes));
            return null;
        }
        catch (Pkcs11Exception e)
        {
            return e.RV;
        }
    }
}
