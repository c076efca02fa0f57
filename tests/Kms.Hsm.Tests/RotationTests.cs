using System.Security.Cryptography;
using System.Text;
using Kms.Core.Crypto;
using Kms.Core.Keys;
using Kms.Core.Ports;
using Kms.Testing;
using Microsoft.Extensions.Logging.Abstractions;
using Net.Pkcs11Interop.Common;
using Net.Pkcs11Interop.HighLevelAPI;
using Org.BouncyCastle.Crypto.Engines;
using Org.BouncyCastle.Crypto.Parameters;

namespace Kms.Hsm.Tests;

/// <summary>
/// Domain-key rotation inside the HSM: the old key, rebuilt into a dedicated token with the
/// rotation-only template, unwraps each stored blob as an extractable session copy that the new
/// key wraps at once; the new blob opens under the new key elsewhere, and the rotation token is
/// wiped at the end.
/// </summary>
/// <remarks>
/// Runs alone: while one test wiped a token (C_InitToken), another test's slot enumeration
/// got CKR_GENERAL_ERROR from C_GetTokenInfo once.
/// </remarks>
[Collection(ReinitializationGroup.Name)]
public sealed class RotationTests
{
    private const string Label = "kms-domain-key";
    private const string Id = "kms-test-domain-key";

    [Fact]
    public async Task Rewrap_AesAndEcVersions_NewBlobsServeOnATokenHoldingOnlyTheNewKey_AndBouncyCastleAgrees()
    {
        var oldKey = RandomNumberGenerator.GetBytes(32);
        var newKey = RandomNumberGenerator.GetBytes(32);
        var production = TokenWithDomainKey(oldKey);
        var aesId = KeyVersionId.NewId();
        var p256Id = KeyVersionId.NewId();
        var p384Id = KeyVersionId.NewId();
        WrappedKeyMaterial aes;
        GeneratedKeyPair p256;
        GeneratedKeyPair p384;
        byte[] iv;
        byte[] sealedBytes;
        await using (var hsm = Pkcs11Hsm.Open(production.Options(devMode: false), NullLogger.Instance))
        {
            aes = await hsm.GenerateAes256KeyAsync(default);
            p256 = await hsm.GenerateEcKeyPairAsync(EcCurve.P256, default);
            p384 = await hsm.GenerateEcKeyPairAsync(EcCurve.P384, default);
            iv = await hsm.GenerateRandomAsync(12, default);
            sealedBytes = await hsm.EncryptAesGcmAsync(new(aesId, aes), iv, "aad"u8.ToArray(), "before rotation"u8.ToArray(), default);
        }

        var rotation = SoftHsm.CreateToken();
        byte[] newAes;
        byte[] newP256;
        byte[] newP384;
        using (var session = HsmCeremonySession.Open(rotation.Options(devMode: false), Encoding.UTF8.GetBytes(rotation.UserPin)))
        using (var rewrapper = session.LoadRotationKeys(oldKey, newKey))
        {
            Assert.Equal(HsmCeremonySession.AesCheckValue(oldKey), rewrapper.OldCheckValue);
            Assert.Equal(HsmCeremonySession.AesCheckValue(newKey), rewrapper.NewCheckValue);
            newAes = rewrapper.Rewrap(aes.Bytes.Span, WrappedKeyKind.Aes256);
            newP256 = rewrapper.Rewrap(p256.PrivateKey.Bytes.Span, WrappedKeyKind.EcP256PrivateKey);
            newP384 = rewrapper.Rewrap(p384.PrivateKey.Bytes.Span, WrappedKeyKind.EcP384PrivateKey);
            Assert.Equal(0, CountSessionKeys(rotation) - 2);
        }

        // Independently (RFC 5649, BouncyCastle): the same key under the new value as under the old.
        // For P-256 both carry SoftHSM's 5 zero bytes after the 67-byte PKCS#8 (the profile's note).
        Assert.Equal(KwpUnwrap(oldKey, aes.Bytes.ToArray()), KwpUnwrap(newKey, newAes));
        Assert.Equal(KwpUnwrap(oldKey, p256.PrivateKey.Bytes.ToArray()), KwpUnwrap(newKey, newP256));
        Assert.Equal(72, KwpUnwrap(newKey, newP256).Length);
        Assert.Equal(KwpUnwrap(oldKey, p384.PrivateKey.Bytes.ToArray()), KwpUnwrap(newKey, newP384));
        Assert.NotEqual(aes.Bytes.ToArray(), newAes);

        // A server on another token that holds only the new key serves the rewrapped versions.
        var restored = TokenWithDomainKey(newKey);
        await using var server = Pkcs11Hsm.Open(restored.Options(devMode: false), NullLogger.Instance);
        Assert.Equal(HsmCeremonySession.AesCheckValue(newKey), server.DomainKeyCheckValue);
        Assert.Equal("before rotation"u8.ToArray(),
            await server.DecryptAesGcmAsync(new(aesId, new WrappedKeyMaterial(newAes)), iv, "aad"u8.ToArray(), sealedBytes, default));
        foreach (var (id, pair, blob, curve, hash) in new[]
        {
            (p256Id, p256, newP256, EcCurve.P256, HashAlgorithmName.SHA256),
            (p384Id, p384, newP384, EcCurve.P384, HashAlgorithmName.SHA384),
        })
        {
            var digest = curve == EcCurve.P256 ? SHA256.HashData("m"u8) : SHA384.HashData("m"u8);
            var signature = await server.SignEcdsaAsync(new(id, new WrappedKeyMaterial(blob)), curve, digest, default);
            using var verifier = ECDsa.Create();
            verifier.ImportSubjectPublicKeyInfo(pair.SubjectPublicKeyInfo, out _);
            Assert.True(verifier.VerifyHash(digest, signature), $"{curve} signature with the rewrapped key");
        }

        // The old blob does not open there: the rotation moved the key, it did not copy the old DK.
        await Assert.ThrowsAnyAsync<Exception>(async () =>
            await server.DecryptAesGcmAsync(new(KeyVersionId.NewId(), aes), iv, "aad"u8.ToArray(), sealedBytes, default));
    }

    [Fact]
    public void Rewrap_BlobAlreadyUnderNewKeyOrWrongKind_RefusedAndNoCopyLeft()
    {
        var oldKey = RandomNumberGenerator.GetBytes(32);
        var newKey = RandomNumberGenerator.GetBytes(32);
        var rotation = SoftHsm.CreateToken();
        var version = RandomNumberGenerator.GetBytes(32);
        var underOld = KwpWrap(oldKey, version);
        using var session = HsmCeremonySession.Open(rotation.Options(devMode: false), Encoding.UTF8.GetBytes(rotation.UserPin));
        using var rewrapper = session.LoadRotationKeys(oldKey, newKey);
        var underNew = rewrapper.Rewrap(underOld, WrappedKeyKind.Aes256);
        Assert.Equal(version, KwpUnwrap(newKey, underNew));

        // What makes a resumed rotation safe: a blob already moved fails the old key's integrity check.
        var again = Assert.Throws<HsmConfigurationException>(() => rewrapper.Rewrap(underNew, WrappedKeyKind.Aes256));
        Assert.Contains("CKR_GENERAL_ERROR", again.Message, StringComparison.Ordinal);
        Assert.Contains("does not unwrap under the old domain key", again.Message, StringComparison.Ordinal);
        Assert.ThrowsAny<Exception>(() => rewrapper.Rewrap(underOld, WrappedKeyKind.EcP256PrivateKey));
        Assert.Equal(2, CountSessionKeys(rotation));
    }

    [Fact]
    public void LoadRotationKeys_ProductionTokenWithDomainKey_Refused()
    {
        var oldKey = RandomNumberGenerator.GetBytes(32);
        var production = TokenWithDomainKey(oldKey);
        using var session = HsmCeremonySession.Open(production.Options(devMode: false), Encoding.UTF8.GetBytes(production.UserPin));
        var e = Assert.Throws<HsmConfigurationException>(() => session.LoadRotationKeys(oldKey, RandomNumberGenerator.GetBytes(32)));
        Assert.Contains("dedicated, freshly initialised token", e.Message, StringComparison.Ordinal);
        Assert.Equal(0, CountSessionKeys(production));
    }

    [Fact]
    public void SoftHsm_ProductionDomainKey_RefusesTheExtractableUnwrapRotationNeeds()
    {
        // Why rotation needs another template: the production key's copies can never be wrapped again.
        var oldKey = RandomNumberGenerator.GetBytes(32);
        var production = TokenWithDomainKey(oldKey);
        var blob = KwpWrap(oldKey, RandomNumberGenerator.GetBytes(32));
        RawToken.WithSession(production, (session, factories) =>
        {
            var a = factories.ObjectAttributeFactory;
            var dk = session.FindAllObjects([a.Create(CKA.CKA_CLASS, CKO.CKO_SECRET_KEY), a.Create(CKA.CKA_LABEL, Label)]).Single();
            using var kwp = factories.MechanismFactory.Create(CKM.CKM_AES_KEY_WRAP_PAD);
            var refused = Assert.Throws<Pkcs11Exception>(() => session.UnwrapKey(kwp, dk, blob, UnwrapTemplate(a, sensitive: true, extractable: true)));
            Assert.Equal(CKR.CKR_TEMPLATE_INCONSISTENT, refused.RV);
        });
    }

    [Fact]
    public void RotationOldKey_SoftHsmEnforcesItsTemplate_ButAPinHolderCouldExportWhileItExists()
    {
        var oldKey = RandomNumberGenerator.GetBytes(32);
        var rotation = SoftHsm.CreateToken();
        var version = RandomNumberGenerator.GetBytes(32);
        var blob = KwpWrap(oldKey, version);
        using var ceremony = HsmCeremonySession.Open(rotation.Options(devMode: false), Encoding.UTF8.GetBytes(rotation.UserPin));
        using var rewrapper = ceremony.LoadRotationKeys(oldKey, RandomNumberGenerator.GetBytes(32));

        // Another process sees neither key: they are session objects of the ceremony process.
        var listing = SoftHsm.Run("pkcs11-tool", "--module", SoftHsm.ModulePath, "--token-label", rotation.Label,
            "--login", "--pin", rotation.UserPin, "--list-objects");
        Assert.DoesNotContain("Secret Key Object", listing, StringComparison.Ordinal);

        RawToken.WithSession(rotation, (session, factories) =>
        {
            var a = factories.ObjectAttributeFactory;
            var old = FindByLabel(session, a, "kms-rotation-old-domain-key");
            var @new = FindByLabel(session, a, "kms-rotation-new-domain-key");
            var read = session.GetAttributeValue(old, [CKA.CKA_VALUE, CKA.CKA_TOKEN, CKA.CKA_EXTRACTABLE, CKA.CKA_WRAP, CKA.CKA_UNWRAP, CKA.CKA_DECRYPT]);
            Assert.True(read[0].CannotBeRead);
            Assert.Equal([false, false, false, true, false], read.Skip(1).Select(r => r.GetValueAsBool()));
            Assert.Equal(CKR.CKR_ACTION_PROHIBITED,
                Assert.Throws<Pkcs11Exception>(() => session.SetAttributeValue(old, [a.Create(CKA.CKA_DECRYPT, true)])).RV);

            using var kwp = factories.MechanismFactory.Create(CKM.CKM_AES_KEY_WRAP_PAD);
            using var ecb = factories.MechanismFactory.Create(CKM.CKM_AES_ECB);

            // The unwrap template is enforced: not sensitive, or a token object, is refused.
            Assert.Equal(CKR.CKR_TEMPLATE_INCONSISTENT,
                Assert.Throws<Pkcs11Exception>(() => session.UnwrapKey(kwp, old, blob, UnwrapTemplate(a, sensitive: false, extractable: true))).RV);
            var asToken = UnwrapTemplate(a, sensitive: true, extractable: true);
            asToken[2] = a.Create(CKA.CKA_TOKEN, true);
            Assert.Equal(CKR.CKR_TEMPLATE_INCONSISTENT, Assert.Throws<Pkcs11Exception>(() => session.UnwrapKey(kwp, old, blob, asToken)).RV);
            Assert.Equal(CKR.CKR_KEY_FUNCTION_NOT_PERMITTED, Assert.Throws<Pkcs11Exception>(() => session.Decrypt(ecb, old, new byte[16])).RV);

            // The new key only wraps.
            Assert.ThrowsAny<Pkcs11Exception>(() => session.UnwrapKey(kwp, @new, blob, UnwrapTemplate(a, sensitive: true, extractable: false)));

            // The danger that makes the wipe necessary: while the old key exists, a holder of the
            // rotation token's PIN (in the ceremony process) gets an extractable copy and wraps it
            // under a key of their own, whose value they know.
            var copy = session.UnwrapKey(kwp, old, blob, UnwrapTemplate(a, sensitive: true, extractable: true));
            var attackerValue = RandomNumberGenerator.GetBytes(32);
            var attackerKey = session.CreateObject(
            [
                a.Create(CKA.CKA_CLASS, CKO.CKO_SECRET_KEY), a.Create(CKA.CKA_KEY_TYPE, CKK.CKK_AES), a.Create(CKA.CKA_TOKEN, false),
                a.Create(CKA.CKA_VALUE, attackerValue), a.Create(CKA.CKA_WRAP, true),
            ]);
            var exported = session.WrapKey(kwp, attackerKey, copy);
            Assert.Equal(version, KwpUnwrap(attackerValue, exported));
            session.DestroyObject(copy);
            session.DestroyObject(attackerKey);
        });
    }

    [Fact]
    public void WipeToken_AfterRotation_NoObjectNoUserPin_AndNoTokenFileHoldsTheKeys()
    {
        var oldKey = RandomNumberGenerator.GetBytes(32);
        var newKey = RandomNumberGenerator.GetBytes(32);
        var rotation = SoftHsm.CreateToken();
        using (var session = HsmCeremonySession.Open(rotation.Options(devMode: false), Encoding.UTF8.GetBytes(rotation.UserPin)))
        using (var rewrapper = session.LoadRotationKeys(oldKey, newKey))
        {
            rewrapper.Rewrap(KwpWrap(oldKey, RandomNumberGenerator.GetBytes(32)), WrappedKeyKind.Aes256);
        }

        var tokenDirectory = TokenDirectoryOf(rotation);
        var before = Directory.GetFiles(tokenDirectory).Select(Path.GetFileName).Order().ToList();
        HsmTokenSetup.WipeToken(SoftHsm.ModulePath, rotation.Label, rotation.SoPin, SoftHsm.ModuleEnvironment);

        // Measured: the keys were session objects, so the token directory never held an object
        // file for them; after the wipe it holds only SoftHSM's token.object and token.lock.
        Assert.Equal(["generation", "token.lock", "token.object"], before);
        Assert.Equal(["generation", "token.lock", "token.object"], Directory.GetFiles(tokenDirectory).Select(Path.GetFileName).Order().ToList());
        foreach (var file in Directory.GetFiles(tokenDirectory))
        {
            var bytes = File.ReadAllBytes(file);
            Assert.Equal(-1, bytes.AsSpan().IndexOf(oldKey));
            Assert.Equal(-1, bytes.AsSpan().IndexOf(newKey));
        }

        var e = Assert.Throws<HsmConfigurationException>(() => HsmCeremonySession.Open(rotation.Options(devMode: false), Encoding.UTF8.GetBytes(rotation.UserPin)));
        Assert.Contains("CKR_USER_PIN_NOT_INITIALIZED", e.ToString(), StringComparison.Ordinal);
    }

    // rotate-domain checks the rotation token's security-officer PIN before anything moves (the
    // wipe presents it after the point of no return). The check changes nothing (the user still
    // logs in, the token is not wiped), a wrong PIN is refused as a PIN, and while a session of
    // this process is logged in as the user PKCS#11 refuses the officer: the ceremony checks it
    // with none open.
    [Fact]
    public void CheckSecurityOfficerPin_RightPinChangesNothing_WrongPinRefusedAsAPin_NotWhileTheUserIsLoggedIn()
    {
        var token = SoftHsm.CreateToken();
        void Check(string pin) => HsmTokenSetup.CheckSecurityOfficerPin(SoftHsm.ModulePath, token.Label, Encoding.UTF8.GetBytes(pin), SoftHsm.ModuleEnvironment);

        Check(token.SoPin);
        var wrong = Assert.Throws<HsmConfigurationException>(() => Check(token.SoPin + "x"));
        Assert.Equal(HsmFailure.PinRefused, wrong.Failure);
        Assert.Equal("CKR_PIN_INCORRECT", wrong.ReturnValue);
        Assert.Equal($"the HSM refused the security-officer PIN of token '{token.Label}' (CKR_PIN_INCORRECT)", wrong.Message);

        using (var session = HsmCeremonySession.Open(token.Options(devMode: false), Encoding.UTF8.GetBytes(token.UserPin)))
        {
            session.RequireEmptyForRotation();
            var busy = Assert.Throws<HsmConfigurationException>(() => Check(token.SoPin));
            Assert.Equal("CKR_USER_ANOTHER_ALREADY_LOGGED_IN", busy.ReturnValue);
        }

        // The user's session closed, the officer logs in again, and the wipe (as the officer) works.
        Check(token.SoPin);
        HsmTokenSetup.WipeToken(SoftHsm.ModulePath, token.Label, token.SoPin, SoftHsm.ModuleEnvironment);
        Assert.Throws<HsmConfigurationException>(() => HsmCeremonySession.Open(token.Options(devMode: false), Encoding.UTF8.GetBytes(token.UserPin)));
    }

    [Fact]
    public async Task Rewrap_RsaAndHmacVersions_ServeUnderTheNewKey_SameKeyInside()
    {
        var oldKey = RandomNumberGenerator.GetBytes(32);
        var newKey = RandomNumberGenerator.GetBytes(32);
        var production = TokenWithDomainKey(oldKey);
        GeneratedKeyMaterial rsa;
        GeneratedKeyMaterial hmac;
        byte[] mac;
        await using (var hsm = Pkcs11Hsm.Open(production.Options(devMode: false), NullLogger.Instance))
        {
            rsa = await hsm.GenerateKeyVersionAsync(KeyAlgorithm.RsaSignPss2048Sha256, default);
            hmac = await hsm.GenerateKeyVersionAsync(KeyAlgorithm.HmacSha512, default);
            mac = await hsm.ComputeMacAsync(new(KeyVersionId.NewId(), hmac.Wrapped), KeyAlgorithm.HmacSha512, "m"u8.ToArray(), default);
        }

        var rotation = SoftHsm.CreateToken();
        byte[] newRsa;
        byte[] newHmac;
        using (var session = HsmCeremonySession.Open(rotation.Options(devMode: false), Encoding.UTF8.GetBytes(rotation.UserPin)))
        using (var rewrapper = session.LoadRotationKeys(oldKey, newKey))
        {
            newRsa = rewrapper.Rewrap(rsa.Wrapped.Bytes.Span, WrappedKeyKind.RsaPrivateKey);
            newHmac = rewrapper.Rewrap(hmac.Wrapped.Bytes.Span, WrappedKeyKind.GenericSecret);

            // A secret does not pass for an RSA key. The other way round it does: a generic secret
            // is any bytes, so the kind must come from the stored version's algorithm, never guessed.
            Assert.Throws<HsmConfigurationException>(() => rewrapper.Rewrap(hmac.Wrapped.Bytes.Span, WrappedKeyKind.RsaPrivateKey));
            Assert.Equal(2, CountSessionKeys(rotation));
        }

        // Independently (BouncyCastle): the same PKCS#8 and the same secret under the new value.
        Assert.Equal(KwpUnwrap(oldKey, rsa.Wrapped.Bytes.ToArray()), KwpUnwrap(newKey, newRsa));
        Assert.Equal(KwpUnwrap(oldKey, hmac.Wrapped.Bytes.ToArray()), KwpUnwrap(newKey, newHmac));

        await using var server = Pkcs11Hsm.Open(TokenWithDomainKey(newKey).Options(devMode: false), NullLogger.Instance);
        var digest = SHA256.HashData("m"u8);
        var signature = await server.SignAsync(new(KeyVersionId.NewId(), new WrappedKeyMaterial(newRsa)), KeyAlgorithm.RsaSignPss2048Sha256, digest, default);
        using var verifier = RSA.Create();
        verifier.ImportSubjectPublicKeyInfo(rsa.SubjectPublicKeyInfo, out _);
        Assert.True(verifier.VerifyHash(digest, signature, HashAlgorithmName.SHA256, RSASignaturePadding.Pss));
        Assert.Equal(mac, await server.ComputeMacAsync(new(KeyVersionId.NewId(), new WrappedKeyMaterial(newHmac)), KeyAlgorithm.HmacSha512, "m"u8.ToArray(), default));
    }

    private static TestToken TokenWithDomainKey(byte[] value)
    {
        var token = SoftHsm.CreateToken();
        using var ceremony = HsmCeremonySession.Open(token.Options(devMode: false), Encoding.UTF8.GetBytes(token.UserPin));
        ceremony.ImportDomainKey(value, Label, Id);
        return token;
    }

    private static List<IObjectAttribute> UnwrapTemplate(Net.Pkcs11Interop.HighLevelAPI.Factories.IObjectAttributeFactory a, bool sensitive, bool extractable) =>
    [
        a.Create(CKA.CKA_CLASS, CKO.CKO_SECRET_KEY),
        a.Create(CKA.CKA_KEY_TYPE, CKK.CKK_AES),
        a.Create(CKA.CKA_TOKEN, false),
        a.Create(CKA.CKA_SENSITIVE, sensitive),
        a.Create(CKA.CKA_EXTRACTABLE, extractable),
    ];

    private static IObjectHandle FindByLabel(ISession session, Net.Pkcs11Interop.HighLevelAPI.Factories.IObjectAttributeFactory a, string label) =>
        session.FindAllObjects([a.Create(CKA.CKA_CLASS, CKO.CKO_SECRET_KEY), a.Create(CKA.CKA_LABEL, label)]).Single();

    private static int CountSessionKeys(TestToken token)
    {
        var count = 0;
        RawToken.WithSession(token, (session, factories) =>
            count = session.FindAllObjects([factories.ObjectAttributeFactory.Create(CKA.CKA_TOKEN, false)]).Count);
        return count;
    }

    // SoftHSM's file store: one directory per token, its token.object carrying the label.
    private static string TokenDirectoryOf(TestToken token) =>
        Directory.GetDirectories(Path.Combine(Path.GetDirectoryName(SoftHsm.ConfigPath)!, "tokens"))
            .Single(d => File.ReadAllBytes(Path.Combine(d, "token.object")).AsSpan().IndexOf(Encoding.ASCII.GetBytes(token.Label)) >= 0);

    private static byte[] KwpWrap(byte[] kek, byte[] key)
    {
        var engine = new AesWrapPadEngine();
        engine.Init(true, new KeyParameter(kek));
        return engine.Wrap(key, 0, key.Length);
    }

    private static byte[] KwpUnwrap(byte[] kek, byte[] blob)
    {
        var engine = new AesWrapPadEngine();
        engine.Init(false, new KeyParameter(kek));
        return engine.Unwrap(blob, 0, blob.Length);
    }
}
