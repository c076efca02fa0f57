using System.Security.Cryptography;
using Kms.Core.Access;
using Kms.Core.Errors;
using Kms.Core.Keys;
using Kms.Core.Ports;
using Kms.Core.Services;
using Kms.Testing.Fakes;

namespace Kms.Core.Tests;

/// <summary>Sign, Verify, GetPublicKey, AsymmetricDecrypt and the MAC calls over the fake HSM (the real paths run against SoftHSM in the server tests).</summary>
public sealed class SigningServiceTests : IDisposable
{
    private static readonly Caller Dev = DomainHarness.Dev;
    private static readonly byte[] Message = "pay 100 to bob"u8.ToArray();

    private readonly DomainHarness _domain = new();

    private SigningService Signing => _domain.Signing;

    public void Dispose() => _domain.Dispose();

    [Theory]
    [InlineData(KeyAlgorithm.EcSignP256Sha256)]
    [InlineData(KeyAlgorithm.EcSignP384Sha384)]
    [InlineData(KeyAlgorithm.RsaSignPss2048Sha256)]
    [InlineData(KeyAlgorithm.RsaSignPkcs2048Sha256)]
    public async Task Sign_Message_VerifiesWithDotNetAndWithVerify(KeyAlgorithm algorithm)
    {
        var key = await _domain.CreateKeyAsync("signer", algorithm);
        var signature = await Signing.SignAsync(Dev, key.Name.ToString(), new SignInput(Message, null), SignatureFormat.Der, default);

        Assert.Equal(key.Primary.Name, signature.KeyVersion);
        var publicKey = (await Signing.GetPublicKeyAsync(Dev, key.Name.ToString(), default)).PublicKey;
        var spec = KeyAlgorithms.Of(algorithm);
        Assert.True(VerifyWithDotNet(publicKey, spec, Message, signature.Signature));
        Assert.True((await Signing.VerifyAsync(Dev, key.Name.ToString(), new SignInput(Message, null), signature.Signature, SignatureFormat.Der, default)).Valid);

        var tampered = (byte[])Message.Clone();
        tampered[0] ^= 1;
        Assert.False((await Signing.VerifyAsync(Dev, key.Name.ToString(), new SignInput(tampered, null), signature.Signature, SignatureFormat.Der, default)).Valid);
    }

    [Fact]
    public async Task Sign_P1363Format_IsFixedWidthAndVerifiesAsP1363()
    {
        var key = await _domain.CreateKeyAsync("signer", KeyAlgorithm.EcSignP256Sha256);
        var digest = SHA256.HashData(Message);
        var signature = await Signing.SignAsync(Dev, key.Primary.Name.ToString(), new SignInput(null, digest), SignatureFormat.P1363, default);

        Assert.Equal(64, signature.Signature.Length);
        Assert.True((await Signing.VerifyAsync(Dev, key.Name.ToString(), new SignInput(null, digest), signature.Signature, SignatureFormat.P1363, default)).Valid);
        Assert.False((await Signing.VerifyAsync(Dev, key.Name.ToString(), new SignInput(null, digest), signature.Signature, SignatureFormat.Der, default)).Valid);
    }

    [Theory]
    [InlineData(KeyAlgorithm.RsaSignPss2048Sha256)]
    [InlineData(KeyAlgorithm.RsaSignPkcs2048Sha256)]
    public async Task SignOrVerify_P1363OfAnRsaKey_InvalidArgumentNamingSignatureFormat_DerTheDefaultAccepted(KeyAlgorithm algorithm)
    {
        // An RSA signature has one encoding: P1363 asked of it was silently ignored (the caller got
        // the PKCS#1 bytes and no word). DER, the default the SDK and CLI send, still stands for it.
        var key = await _domain.CreateKeyAsync("rsa-signer", algorithm);
        var signs = _domain.FakeHsm!.Calls.GetValueOrDefault("sign-" + algorithm);
        var sign = await Assert.ThrowsAsync<KmsException>(() => Signing.SignAsync(Dev, key.Name.ToString(), new SignInput(Message, null), SignatureFormat.P1363, default));
        Assert.Equal((KmsErrorCode.InvalidArgument, "signature_format"), (sign.Code, sign.Field));
        Assert.Contains("ECDSA", sign.Message, StringComparison.Ordinal);
        Assert.Equal(signs, _domain.FakeHsm.Calls.GetValueOrDefault("sign-" + algorithm));

        var signature = (await Signing.SignAsync(Dev, key.Name.ToString(), new SignInput(Message, null), SignatureFormat.Der, default)).Signature;
        var verify = await Assert.ThrowsAsync<KmsException>(() => Signing.VerifyAsync(Dev, key.Name.ToString(), new SignInput(Message, null), signature, SignatureFormat.P1363, default));
        Assert.Equal((KmsErrorCode.InvalidArgument, "signature_format"), (verify.Code, verify.Field));
        Assert.True((await Signing.VerifyAsync(Dev, key.Name.ToString(), new SignInput(Message, null), signature, SignatureFormat.Der, default)).Valid);
    }

    [Fact]
    public async Task Sign_DigestOfWrongLength_InvalidArgumentBeforeTheHsm()
    {
        var key = await _domain.CreateKeyAsync("signer", KeyAlgorithm.EcSignP256Sha256);
        var e = await Assert.ThrowsAsync<KmsException>(() => Signing.SignAsync(Dev, key.Name.ToString(), new SignInput(null, new byte[48]), SignatureFormat.Der, default));

        Assert.Equal(KmsErrorCode.InvalidArgument, e.Code);
        Assert.Equal("digest", e.Field);
        Assert.Contains("32-byte", e.Message, StringComparison.Ordinal);
        Assert.False(_domain.FakeHsm!.Calls.ContainsKey("sign-" + KeyAlgorithm.EcSignP256Sha256));
    }

    [Fact]
    public async Task Sign_WithAnEncryptionKey_FailedPreconditionNamingBothPurposes()
    {
        var key = await _domain.CreateKeyAsync("aes");
        var e = await Assert.ThrowsAsync<KmsException>(() => Signing.SignAsync(Dev, key.Name.ToString(), new SignInput(Message, null), SignatureFormat.Der, default));

        Assert.Equal(KmsErrorCode.FailedPrecondition, e.Code);
        Assert.Contains("ENCRYPT_DECRYPT", e.Message, StringComparison.Ordinal);
        Assert.Contains("SIGN_VERIFY", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Verify_MalformedSignature_IsFalseNotAnError()
    {
        var key = await _domain.CreateKeyAsync("signer", KeyAlgorithm.EcSignP256Sha256);
        var result = await Signing.VerifyAsync(Dev, key.Name.ToString(), new SignInput(Message, null), [0x30, 0x03, 0x02, 0x01], SignatureFormat.Der, default);

        Assert.False(result.Valid);
    }

    [Fact]
    public async Task Verify_OldVersionAfterRotation_NamedVersionStillVerifies_PrimaryDoesNot()
    {
        var key = await _domain.CreateKeyAsync("signer", KeyAlgorithm.EcSignP256Sha256);
        var signature = (await Signing.SignAsync(Dev, key.Name.ToString(), new SignInput(Message, null), SignatureFormat.Der, default)).Signature;
        var rotated = await _domain.Keys.RotateKeyAsync(Dev, key.Name, null, default);

        Assert.Equal(KeyAlgorithm.EcSignP256Sha256, rotated.Primary.Algorithm);
        Assert.NotEqual(key.Primary.PublicKey, rotated.Primary.PublicKey);
        Assert.True((await Signing.VerifyAsync(Dev, key.Primary.Name.ToString(), new SignInput(Message, null), signature, SignatureFormat.Der, default)).Valid);
        Assert.False((await Signing.VerifyAsync(Dev, key.Name.ToString(), new SignInput(Message, null), signature, SignatureFormat.Der, default)).Valid);
    }

    [Fact]
    public async Task Sign_DisabledVersion_FailedPrecondition()
    {
        var key = await _domain.CreateKeyAsync("signer", KeyAlgorithm.EcSignP256Sha256);
        await _domain.Keys.RotateKeyAsync(Dev, key.Name, null, default);
        await _domain.Keys.DisableKeyVersionAsync(Dev, key.Primary.Name, default);

        var e = await Assert.ThrowsAsync<KmsException>(() => Signing.SignAsync(Dev, key.Primary.Name.ToString(), new SignInput(Message, null), SignatureFormat.Der, default));
        Assert.Equal(KmsErrorCode.FailedPrecondition, e.Code);
        Assert.Contains("DISABLED", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task BatchGenerateMac_OneHsmCallPerKeyVersionAndHundredItems_EachMacItsSingleCalls()
    {
        var first = await _domain.CreateKeyAsync("mac-a", KeyAlgorithm.HmacSha256);
        var second = await _domain.CreateKeyAsync("mac-b", KeyAlgorithm.HmacSha512);
        var items = Enumerable.Range(0, 251).Select(i => new BatchMacItem(i == 250 ? second.Primary.Name.ToString() : first.Name.ToString(), [(byte)i, 7])).ToList();
        _domain.FakeHsm!.Calls.Clear();

        var results = await Signing.BatchGenerateMacAsync(Dev, items, default);

        // 250 items under one version: three calls (100, 100, 50); the other version's one: one call.
        Assert.Equal((4, 251), (_domain.FakeHsm.Calls["mac-many"], _domain.FakeHsm.Calls["mac"]));
        for (var i = 0; i < items.Count; i++)
        {
            var single = await Signing.GenerateMacAsync(Dev, items[i].Name!, items[i].Data!, default);
            Assert.Equal((single.KeyVersion, Convert.ToHexString(single.Mac)), (results[i].Value!.KeyVersion, Convert.ToHexString(results[i].Value!.Mac)));
        }
    }

    [Fact]
    public async Task BatchGenerateMac_HsmAnswersOneShort_EveryItemOfThatCallAnInternalError()
    {
        var key = await _domain.CreateKeyAsync("mac", KeyAlgorithm.HmacSha256);
        _domain.FakeHsm!.ManyAnswersOneShort = true;

        var results = await Signing.BatchGenerateMacAsync(Dev, Enumerable.Range(0, 3).Select(i => new BatchMacItem(key.Name.ToString(), [(byte)i])).ToList(), default);

        Assert.All(results, result => Assert.Equal(KmsErrorCode.Internal, result.Error!.Code));
    }

    [Fact]
    public async Task BatchGenerateMac_ItemsThatFailTheirChecks_NeverReachTheHsm()
    {
        var key = await _domain.CreateKeyAsync("mac", KeyAlgorithm.HmacSha256);
        _domain.FakeHsm!.Calls.Clear();

        var results = await Signing.BatchGenerateMacAsync(Dev, [new BatchMacItem("tenants/dev/keys/missing", [1]), new BatchMacItem(key.Name.ToString(), new byte[SigningService.MaxMessageBytes + 1])], default);

        Assert.Equal([KmsErrorCode.NotFound, KmsErrorCode.InvalidArgument], results.Select(r => r.Error!.Code));
        Assert.False(_domain.FakeHsm.Calls.ContainsKey("mac-many"));
    }

    [Fact]
    public async Task Mac_GenerateThenVerify_OneBitChangeInMacOrDataFails()
    {
        var key = await _domain.CreateKeyAsync("mac", KeyAlgorithm.HmacSha256);
        var mac = (await Signing.GenerateMacAsync(Dev, key.Name.ToString(), Message, default)).Mac;

        Assert.Equal(32, mac.Length);
        Assert.True((await Signing.VerifyMacAsync(Dev, key.Name.ToString(), Message, mac, default)).Valid);
        for (var bit = 0; bit < 8; bit++)
        {
            var flipped = (byte[])mac.Clone();
            flipped[^1] ^= (byte)(1 << bit);
            Assert.False((await Signing.VerifyMacAsync(Dev, key.Name.ToString(), Message, flipped, default)).Valid);
        }

        var data = (byte[])Message.Clone();
        data[3] ^= 0x80;
        Assert.False((await Signing.VerifyMacAsync(Dev, key.Name.ToString(), data, mac, default)).Valid);

        // Truncated to any length, or extended: never valid (a 1-byte prefix accepted would let a
        // caller with VERIFY alone find a MAC byte by byte).
        for (var length = 1; length < mac.Length; length++)
        {
            Assert.False((await Signing.VerifyMacAsync(Dev, key.Name.ToString(), Message, mac[..length], default)).Valid);
        }

        Assert.False((await Signing.VerifyMacAsync(Dev, key.Name.ToString(), Message, [.. mac, 0], default)).Valid);
    }

    [Fact]
    public async Task AsymmetricDecrypt_DotNetCiphertext_Decrypts_TamperedIsOpaqueFailure()
    {
        var key = await _domain.CreateKeyAsync("rsa", KeyAlgorithm.RsaDecryptOaep2048Sha256);
        using var rsa = RSA.Create();
        rsa.ImportSubjectPublicKeyInfo((await Signing.GetPublicKeyAsync(Dev, key.Name.ToString(), default)).PublicKey.Der, out _);
        var ciphertext = rsa.Encrypt(Message, RSAEncryptionPadding.OaepSHA256);

        using (var result = await Signing.AsymmetricDecryptAsync(Dev, key.Name.ToString(), ciphertext, default))
        {
            Assert.Equal(Message, result.Plaintext.Span.ToArray());
        }

        ciphertext[10] ^= 1;
        var e = await Assert.ThrowsAsync<KmsException>(() => Signing.AsymmetricDecryptAsync(Dev, key.Name.ToString(), ciphertext, default));
        Assert.Equal(KmsErrorCode.DecryptionFailed, e.Code);
        var wrongLength = await Assert.ThrowsAsync<KmsException>(() => Signing.AsymmetricDecryptAsync(Dev, key.Name.ToString(), ciphertext[1..], default));
        Assert.Equal(KmsErrorCode.DecryptionFailed, wrongLength.Code);
    }

    [Fact]
    public async Task AsymmetricDecrypt_VersionBelowTheMinimumDecryptionVersion_FailedPrecondition_AgainOnceLowered()
    {
        var key = await _domain.CreateKeyAsync("rsa", KeyAlgorithm.RsaDecryptOaep2048Sha256);
        using var rsa = RSA.Create();
        rsa.ImportSubjectPublicKeyInfo((await Signing.GetPublicKeyAsync(Dev, key.Name.ToString(), default)).PublicKey.Der, out _);
        var ciphertext = rsa.Encrypt(Message, RSAEncryptionPadding.OaepSHA256);
        await _domain.Keys.RotateKeyAsync(Dev, key.Name, null, default);
        await _domain.Keys.UpdateKeyAsync(Dev, key.Name, new KeyUpdate { MinDecryptionVersion = 2 }, default);

        var e = await Assert.ThrowsAsync<KmsException>(() => Signing.AsymmetricDecryptAsync(Dev, key.Primary.Name.ToString(), ciphertext, default));
        Assert.Equal(KmsErrorCode.FailedPrecondition, e.Code);
        Assert.Contains("below the minimum decryption version 2", e.Message, StringComparison.Ordinal);
        Assert.False(_domain.FakeHsm!.Calls.ContainsKey("asymmetric-decrypt"));

        await _domain.Keys.UpdateKeyAsync(Dev, key.Name, new KeyUpdate { MinDecryptionVersion = 1 }, default);
        using var result = await Signing.AsymmetricDecryptAsync(Dev, key.Primary.Name.ToString(), ciphertext, default);
        Assert.Equal(Message, result.Plaintext.Span.ToArray());
    }

    [Fact]
    public async Task CreateKey_AlgorithmOfAnotherPurpose_InvalidArgument_NothingCreated()
    {
        var command = new CreateKeyCommand(Dev.Tenant, "mixed", KeyPurpose.Mac, KeyLabels.Empty, null) { Algorithm = KeyAlgorithm.EcSignP256Sha256 };
        var e = await Assert.ThrowsAsync<KmsException>(() => _domain.Keys.CreateKeyAsync(Dev, command, default));

        Assert.Equal(KmsErrorCode.InvalidArgument, e.Code);
        Assert.Empty((await _domain.Keys.ListKeysAsync(Dev, Dev.Tenant, 10, null, default)).Items);
    }

    [Fact]
    public async Task CreateKey_AlgorithmTheHsmProfileRefuses_FailedPreconditionWithTheProfileReason()
    {
        var command = new CreateKeyCommand(Dev.Tenant, "ed", KeyPurpose.SignVerify, KeyLabels.Empty, null) { Algorithm = KeyAlgorithm.Ed25519 };
        var e = await Assert.ThrowsAsync<KmsException>(() => _domain.Keys.CreateKeyAsync(Dev, command, default));

        Assert.Equal(KmsErrorCode.FailedPrecondition, e.Code);
        Assert.Contains("cannot wrap Ed25519", e.Message, StringComparison.Ordinal);
        Assert.False(_domain.FakeHsm!.Calls.ContainsKey("generate"));
    }

    [Fact]
    public void Choose_DefaultsPerPurpose_AsymmetricDecryptNeedsAnAlgorithm()
    {
        Assert.Equal(KeyAlgorithm.Aes256Gcm, KeyAlgorithms.Choose(KeyPurpose.EncryptDecrypt, null, "f"));
        Assert.Equal(KeyAlgorithm.EcSignP256Sha256, KeyAlgorithms.Choose(KeyPurpose.SignVerify, null, "f"));
        Assert.Equal(KeyAlgorithm.HmacSha256, KeyAlgorithms.Choose(KeyPurpose.Mac, null, "f"));
        Assert.Equal(KmsErrorCode.InvalidArgument, Assert.Throws<KmsException>(() => KeyAlgorithms.Choose(KeyPurpose.AsymmetricDecrypt, null, "f")).Code);
    }

    [Fact]
    public async Task Sign_InATenantNamedVersions_ByKeyName()
    {
        await _domain.Access.CreateTenantAsync(Kms.Core.Names.TenantId.Parse("versions"), "", default);
        var caller = DomainHarness.TenantCaller("token:v", "versions");
        var key = await _domain.CreateKeyAsync("signer", KeyAlgorithm.EcSignP256Sha256, caller);

        var signature = await Signing.SignAsync(caller, key.Name.ToString(), new SignInput(Message, null), SignatureFormat.Der, default);

        Assert.Equal(key.Name.Version(1).ToString(), signature.KeyVersion.ToString());
    }

    [Fact]
    public async Task PolicyAllowingOnlyVerify_RefusesSign()
    {
        var key = await _domain.CreateKeyAsync("signer", KeyAlgorithm.EcSignP256Sha256);
        var signature = (await Signing.SignAsync(Dev, key.Name.ToString(), new SignInput(Message, null), SignatureFormat.Der, default)).Signature;
        await _domain.Access.CreatePrincipalAsync(Kms.Core.Access.PrincipalName.Token("dev"), Dev.Tenant, null, default);
        await _domain.KeyAccess.SetKeyPolicyAsync(Dev, key.Name, [new(Dev.Principal, KeyOperations.Verify)], default);

        var e = await Assert.ThrowsAsync<KmsException>(() => Signing.SignAsync(Dev, key.Name.ToString(), new SignInput(Message, null), SignatureFormat.Der, default));
        Assert.Equal(KmsErrorCode.PermissionDenied, e.Code);
        Assert.True((await Signing.VerifyAsync(Dev, key.Name.ToString(), new SignInput(Message, null), signature, SignatureFormat.Der, default)).Valid);
    }

    [Fact]
    public async Task GetPublicKey_OfADecryptionKey_AllowedByEncryptDecryptOrVerify_OfASigningKeyByVerifyOnly()
    {
        // Before, GetPublicKey asked for VERIFY whatever the key: the party that encrypts to an
        // RSA decryption key, named for ENCRYPT, was refused its public key.
        var rsa = await _domain.CreateKeyAsync("rsa", KeyAlgorithm.RsaDecryptOaep2048Sha256);
        var signer = await _domain.CreateKeyAsync("signer", KeyAlgorithm.EcSignP256Sha256);
        Caller User(string name) => DomainHarness.TenantCaller("token:" + name, "dev", Role.KeyUser);
        foreach (var name in new[] { "encryptor", "decryptor", "legacy", "signer" })
        {
            await _domain.Access.CreatePrincipalAsync(Kms.Core.Access.PrincipalName.Token(name), Dev.Tenant, null, default);
        }

        await _domain.KeyAccess.SetKeyPolicyAsync(Dev, rsa.Name, [new("token:encryptor", KeyOperations.Encrypt), new("token:decryptor", KeyOperations.Decrypt), new("token:legacy", KeyOperations.Verify)], default);
        await _domain.KeyAccess.SetKeyPolicyAsync(Dev, signer.Name, [new("token:signer", KeyOperations.Sign), new("token:legacy", KeyOperations.Verify)], default);

        foreach (var name in new[] { "encryptor", "decryptor", "legacy" })
        {
            var result = await Signing.GetPublicKeyAsync(User(name), rsa.Name.ToString(), default);
            Assert.Equal(rsa.Name.Version(1).ToString(), result.KeyVersion.ToString());
        }

        await Signing.GetPublicKeyAsync(User("legacy"), signer.Name.ToString(), default);

        // SIGN alone does not read a signing key's public key; the refusal names the operation.
        var signOnly = await Assert.ThrowsAsync<KmsException>(() => Signing.GetPublicKeyAsync(User("signer"), signer.Name.ToString(), default));
        Assert.Equal(KmsErrorCode.PermissionDenied, signOnly.Code);
        Assert.Contains("to verify (", signOnly.Message, StringComparison.Ordinal);

        // A caller the decryption key's policy does not name, but that reads the tenant's keys, is
        // told which operations would have done.
        var reader = DomainHarness.TenantCaller("token:outsider", "dev", Role.KeyUser, Role.Auditor);
        var denied = await Assert.ThrowsAsync<KmsException>(() => Signing.GetPublicKeyAsync(reader, rsa.Name.ToString(), default));
        Assert.Equal(KmsErrorCode.PermissionDenied, denied.Code);
        Assert.Contains("to encrypt, decrypt or verify (", denied.Message, StringComparison.Ordinal);

        // AsymmetricDecrypt still takes DECRYPT: ENCRYPT reads the public key, and no more.
        using var encryptor = RSA.Create();
        encryptor.ImportSubjectPublicKeyInfo((await Signing.GetPublicKeyAsync(User("encryptor"), rsa.Name.ToString(), default)).PublicKey.Der, out _);
        var ciphertext = encryptor.Encrypt(Message, RSAEncryptionPadding.OaepSHA256);
        var noDecrypt = await Assert.ThrowsAsync<KmsException>(() => Signing.AsymmetricDecryptAsync(User("encryptor"), rsa.Name.ToString(), ciphertext, default));
        Assert.Equal(KmsErrorCode.PermissionDenied, noDecrypt.Code);
        using (var plaintext = await Signing.AsymmetricDecryptAsync(User("decryptor"), rsa.Name.ToString(), ciphertext, default))
        {
            Assert.Equal(Message, plaintext.Plaintext.Span.ToArray());
        }
    }

    private static bool VerifyWithDotNet(SubjectPublicKey publicKey, KeyAlgorithmSpec spec, byte[] message, byte[] signature)
    {
        var hash = KeyAlgorithms.HashName(spec.Digest!.Value);
        if (spec.Family == KeyFamily.Ec)
        {
            using var ec = ECDsa.Create();
            ec.ImportSubjectPublicKeyInfo(publicKey.Der, out _);
            return ec.VerifyData(message, signature, hash, DSASignatureFormat.Rfc3279DerSequence);
        }

        using var rsa = RSA.Create();
        rsa.ImportSubjectPublicKeyInfo(publicKey.Der, out _);
        return rsa.VerifyData(message, signature, hash, spec.Padding == RsaPadding.Pss ? RSASignaturePadding.Pss : RSASignaturePadding.Pkcs1);
    }
}
