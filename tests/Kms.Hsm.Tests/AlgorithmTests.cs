using System.Security.Cryptography;
using System.Text;
using Kms.Core;
using Kms.Core.Errors;
using Kms.Core.Keys;
using Kms.Core.Ports;
using Kms.Testing;
using Org.BouncyCastle.Crypto;
using Org.BouncyCastle.Crypto.Digests;
using Org.BouncyCastle.Crypto.Encodings;
using Org.BouncyCastle.Crypto.Engines;
using Org.BouncyCastle.Crypto.Macs;
using Org.BouncyCastle.Crypto.Parameters;
using Org.BouncyCastle.Crypto.Signers;
using Org.BouncyCastle.Security;
using BigInteger = Org.BouncyCastle.Math.BigInteger;

namespace Kms.Hsm.Tests;

/// <summary>
/// Key versions of every algorithm SoftHSM serves, generated in the HSM and used through the
/// adapter; every signature checked by .NET and by BouncyCastle, every MAC compared with both.
/// </summary>
public sealed class AlgorithmTests(AlgorithmFixture fixture) : IClassFixture<AlgorithmFixture>
{
    private static readonly byte[] Message = Encoding.UTF8.GetBytes("the message a key version signs");

    // Every algorithm the softhsm2 profile supports, RSA at 2048 bits only: SoftHSM takes 3.5-6 s
    // for one 3072- or 4096-bit pair on the 2-core test machine, so those sizes are generated once
    // (below, and the fixture's import job) and otherwise imported.
    public static TheoryData<KeyAlgorithm> GeneratedAlgorithms() =>
    [
        .. KeyAlgorithms.All
            .Where(s => s.Family != KeyFamily.Rsa || s.KeyBits == 2048)
            .Where(s => HsmProfile.Load("softhsm2").UnsupportedReason(s.Algorithm) is null)
            .Select(s => s.Algorithm),
    ];

    [Theory]
    [MemberData(nameof(GeneratedAlgorithms))]
    public async Task GenerateKeyVersion_SupportedAlgorithm_UsableAndVerifiedIndependently(KeyAlgorithm algorithm)
    {
        var spec = KeyAlgorithms.Of(algorithm);
        var before = fixture.Hsm.CountSessionObjects();

        var generated = await fixture.Hsm.GenerateKeyVersionAsync(algorithm, default);

        Assert.Equal(before, fixture.Hsm.CountSessionObjects());
        Assert.Equal(spec.IsAsymmetric, generated.SubjectPublicKeyInfo is not null);
        var key = new KeyMaterialRef(KeyVersionId.NewId(), generated.Wrapped);
        switch (spec.Purpose)
        {
            case KeyPurpose.SignVerify:
                var digest = KeyAlgorithms.Hash(spec.Digest!.Value, Message);
                var signature = await fixture.Hsm.SignAsync(key, algorithm, digest, default);
                AssertVerifies(spec, generated.SubjectPublicKeyInfo!, Message, signature);
                Assert.False(VerifiesWithDotNet(spec, generated.SubjectPublicKeyInfo!, KeyAlgorithms.Hash(spec.Digest!.Value, "another"u8), signature));
                break;
            case KeyPurpose.AsymmetricDecrypt:
                await AssertDecryptsAsync(key, spec, generated.SubjectPublicKeyInfo!);
                break;
            case KeyPurpose.Mac:
                var mac = await fixture.Hsm.ComputeMacAsync(key, algorithm, Message, default);
                Assert.Equal(spec.DigestLength, mac.Length);
                Assert.Equal(mac, await fixture.Hsm.ComputeMacAsync(key, algorithm, Message, default));
                Assert.NotEqual(mac, await fixture.Hsm.ComputeMacAsync(key, algorithm, [.. Message, 0], default));
                break;
            default:
                var sealedBytes = await fixture.Hsm.EncryptAesGcmAsync(key, new byte[12], [], Message, default);
                Assert.Equal(Message, await fixture.Hsm.DecryptAesGcmAsync(key, new byte[12], [], sealedBytes, default));
                break;
        }
    }

    [Fact]
    public async Task GenerateKeyVersion_Rsa4096PssSha512_OnceVerifiedByDotNetAndBouncyCastle()
    {
        var spec = KeyAlgorithms.Of(KeyAlgorithm.RsaSignPss4096Sha512);
        var generated = await fixture.Hsm.GenerateKeyVersionAsync(spec.Algorithm, default);
        var key = new KeyMaterialRef(KeyVersionId.NewId(), generated.Wrapped);

        var signature = await fixture.Hsm.SignAsync(key, spec.Algorithm, SHA512.HashData(Message), default);

        Assert.Equal(512, signature.Length);
        AssertVerifies(spec, generated.SubjectPublicKeyInfo!, Message, signature);
        using var rsa = RSA.Create();
        rsa.ImportSubjectPublicKeyInfo(generated.SubjectPublicKeyInfo, out _);
        Assert.Equal(4096, rsa.KeySize);
        Assert.Equal([1, 0, 1], rsa.ExportParameters(false).Exponent);
    }

    // RSA-4096 and the other sizes' remaining paddings, through a .NET key imported once per algorithm.
    public static TheoryData<KeyAlgorithm> RsaAlgorithms() =>
    [
        .. KeyAlgorithms.All
            .Where(s => s.Family == KeyFamily.Rsa && HsmProfile.Load("softhsm2").UnsupportedReason(s.Algorithm) is null)
            .Select(s => s.Algorithm),
    ];

    [Theory]
    [MemberData(nameof(RsaAlgorithms))]
    public async Task ImportedRsaKey_EverySupportedRsaAlgorithm_MatchesDotNet(KeyAlgorithm algorithm)
    {
        var spec = KeyAlgorithms.Of(algorithm);
        using var rsa = RSA.Create();
        rsa.ImportPkcs8PrivateKey(fixture.RsaPkcs8[spec.KeyBits], out _);
        var (key, publicKey) = await fixture.ImportAsync(algorithm, fixture.RsaPkcs8[spec.KeyBits]);
        Assert.Equal(rsa.ExportSubjectPublicKeyInfo(), publicKey);

        if (spec.Purpose == KeyPurpose.AsymmetricDecrypt)
        {
            await AssertDecryptsAsync(key, spec, publicKey!);
            return;
        }

        var digest = KeyAlgorithms.Hash(spec.Digest!.Value, Message);
        var signature = await fixture.Hsm.SignAsync(key, algorithm, digest, default);
        AssertVerifies(spec, publicKey!, Message, signature);
        if (spec.Padding == RsaPadding.Pkcs1)
        {
            // PKCS#1 v1.5 is deterministic: the HSM's DigestInfo must be the one .NET builds.
            Assert.Equal(rsa.SignHash(digest, KeyAlgorithms.HashName(spec.Digest!.Value), RSASignaturePadding.Pkcs1), signature);
        }
    }

    [Theory]
    [InlineData(DigestAlgorithm.Sha256, "3031300d060960864801650304020105000420")]
    [InlineData(DigestAlgorithm.Sha384, "3041300d060960864801650304020205000430")]
    [InlineData(DigestAlgorithm.Sha512, "3051300d060960864801650304020305000440")]
    public void DigestInfo_IsRfc8017Prefix_FollowedByTheDigest(DigestAlgorithm digest, string prefix)
    {
        var value = RandomNumberGenerator.GetBytes(KeyAlgorithms.DigestLength(digest));
        Assert.Equal([.. Convert.FromHexString(prefix), .. value], Pkcs11Hsm.DigestInfo(digest, value));
    }

    [Theory]
    [InlineData(KeyAlgorithm.HmacSha256)]
    [InlineData(KeyAlgorithm.HmacSha384)]
    [InlineData(KeyAlgorithm.HmacSha512)]
    public async Task ComputeMac_ImportedKnownKey_EqualsDotNetAndBouncyCastle(KeyAlgorithm algorithm)
    {
        var spec = KeyAlgorithms.Of(algorithm);
        var secret = RandomNumberGenerator.GetBytes(spec.SecretLength);
        var (key, _) = await fixture.ImportAsync(algorithm, secret);
        var data = RandomNumberGenerator.GetBytes(1000);

        var mac = await fixture.Hsm.ComputeMacAsync(key, algorithm, data, default);

        var expected = spec.Digest switch
        {
            DigestAlgorithm.Sha256 => HMACSHA256.HashData(secret, data),
            DigestAlgorithm.Sha384 => HMACSHA384.HashData(secret, data),
            _ => HMACSHA512.HashData(secret, data),
        };
        Assert.Equal(expected, mac);
        var hmac = new HMac(BouncyDigest(spec.Digest!.Value));
        hmac.Init(new KeyParameter(secret));
        hmac.BlockUpdate(data, 0, data.Length);
        var bouncy = new byte[hmac.GetMacSize()];
        hmac.DoFinal(bouncy, 0);
        Assert.Equal(bouncy, mac);
    }

    [Fact]
    public async Task ComputeMacMany_EachTheSingleCallsMacAndDotNets_EmptyList_AtTheSizeLimit_LostHandle_WrongKeyAndCancellationAsTheSingleCall()
    {
        var secret = RandomNumberGenerator.GetBytes(32);
        var (key, _) = await fixture.ImportAsync(KeyAlgorithm.HmacSha256, secret);

        // A chunk's worth (BatchGenerateMac sends 100 at a time): lengths 1 to 694, a value at the
        // size limit, and a repeated value.
        var values = Enumerable.Range(1, 98).Select(i => RandomNumberGenerator.GetBytes(i * 7 + (i % 3))).Append(RandomNumberGenerator.GetBytes(Limits.MaxEncryptPlaintextBytes)).ToList();
        values.Add(values[3]);
        var macs = await fixture.Hsm.ComputeMacManyAsync(key, KeyAlgorithm.HmacSha256, values, default);
        Assert.Equal(values.Count, macs.Length);
        for (var i = 0; i < values.Count; i++)
        {
            Assert.Equal(HMACSHA256.HashData(secret, values[i]), macs[i]);
            Assert.Equal(await fixture.Hsm.ComputeMacAsync(key, KeyAlgorithm.HmacSha256, values[i], default), macs[i]);
        }

        var objects = fixture.Hsm.CountSessionObjects();
        Assert.Empty(await fixture.Hsm.ComputeMacManyAsync(key, KeyAlgorithm.HmacSha256, [], default));
        Assert.Equal(objects, fixture.Hsm.CountSessionObjects());

        // The cached copy destroyed behind the adapter's back (a device that lost it): unwrapped
        // again, as the single call does, and the same MACs.
        foreach (var many in new[] { true, false })
        {
            using (var lease = fixture.Hsm.Cache.Lease(key.Id, KeyHandleKind.HmacSha256, () => throw new InvalidOperationException("must be cached")))
            {
                using var raw = fixture.Base.OpenRawSession();
                raw.DestroyObject(lease.Handle);
            }

            var again = many
                ? await fixture.Hsm.ComputeMacManyAsync(key, KeyAlgorithm.HmacSha256, [values[0], values[^2]], default)
                : [await fixture.Hsm.ComputeMacAsync(key, KeyAlgorithm.HmacSha256, values[0], default), await fixture.Hsm.ComputeMacAsync(key, KeyAlgorithm.HmacSha256, values[^2], default)];
            Assert.Equal([macs[0], macs[^2]], again);
        }

        // Another key type's material, material that does not unwrap, an algorithm of another
        // purpose: the single call's error, code and message; nothing left in the HSM.
        var rsa = new KeyMaterialRef(KeyVersionId.NewId(), (await fixture.Hsm.GenerateKeyVersionAsync(KeyAlgorithm.RsaSignPss2048Sha256, default)).Wrapped);
        var garbage = new KeyMaterialRef(KeyVersionId.NewId(), new Core.Crypto.WrappedKeyMaterial(RandomNumberGenerator.GetBytes(40)));
        objects = fixture.Hsm.CountSessionObjects();
        foreach (var (wrong, algorithm) in new[] { (rsa, KeyAlgorithm.HmacSha256), (garbage, KeyAlgorithm.HmacSha256), (key, KeyAlgorithm.Aes256Gcm) })
        {
            var single = await Assert.ThrowsAsync<KmsException>(async () => await fixture.Hsm.ComputeMacAsync(wrong, algorithm, values[0], default));
            var many = await Assert.ThrowsAsync<KmsException>(async () => await fixture.Hsm.ComputeMacManyAsync(wrong, algorithm, [values[0], values[1]], default));
            Assert.Equal((single.Code, single.Message), (many.Code, many.Message));
            Assert.NotEqual(KmsErrorCode.Unavailable, many.Code);
        }

        Assert.Equal(objects, fixture.Hsm.CountSessionObjects());

        // Cancelled before it starts: cancelled, as the single call.
        using var cancelled = new CancellationTokenSource();
        await cancelled.CancelAsync();
        await Assert.ThrowsAnyAsync<OperationCanceledException>(async () => await fixture.Hsm.ComputeMacAsync(key, KeyAlgorithm.HmacSha256, values[0], cancelled.Token));
        await Assert.ThrowsAnyAsync<OperationCanceledException>(async () => await fixture.Hsm.ComputeMacManyAsync(key, KeyAlgorithm.HmacSha256, values, cancelled.Token));
    }

    [WycheproofFact]
    public async Task ComputeMac_WycheproofHmacSha256_FullTagVectorsMatch()
    {
        // Every vector with a 256-bit key and a full 256-bit tag: the key is imported as an
        // HMAC_SHA256 version; valid tags must be equal, modified ones must differ.
        var vectors = Wycheproof.Load("hmac_sha256_test.json");
        var checkedVectors = 0;
        foreach (var group in vectors.GetProperty("testGroups").EnumerateArray()
            .Where(g => g.GetProperty("keySize").GetInt32() == 256 && g.GetProperty("tagSize").GetInt32() == 256))
        {
            foreach (var test in group.GetProperty("tests").EnumerateArray())
            {
                var (key, _) = await fixture.ImportAsync(KeyAlgorithm.HmacSha256, Wycheproof.Hex(test, "key"));
                var mac = await fixture.Hsm.ComputeMacAsync(key, KeyAlgorithm.HmacSha256, Wycheproof.Hex(test, "msg"), default);
                var valid = test.GetProperty("result").GetString() == "valid";
                Assert.True(valid == mac.AsSpan().SequenceEqual(Wycheproof.Hex(test, "tag")), $"tcId {test.GetProperty("tcId")}");
                checkedVectors++;
            }
        }

        Assert.Equal(81, checkedVectors);
    }

    [WycheproofFact]
    public async Task DecryptRsaOaep_WycheproofSha1Vectors_ValidDecryptInvalidFailOpaquely()
    {
        // The vectors' own private key, imported as an RSA_DECRYPT_OAEP_2048_SHA1 version. Vectors
        // with a label are left out: the port decrypts with the empty label only.
        var vectors = Wycheproof.Load("rsa_oaep_2048_sha1_mgf1sha1_test.json");
        var group = vectors.GetProperty("testGroups")[0];
        Assert.Equal("SHA-1", group.GetProperty("sha").GetString());
        var (key, _) = await fixture.ImportAsync(KeyAlgorithm.RsaDecryptOaep2048Sha1, Wycheproof.Hex(group, "privateKeyPkcs8"));
        var (valid, invalid) = (0, 0);
        foreach (var test in group.GetProperty("tests").EnumerateArray().Where(t => t.GetProperty("label").GetString() == ""))
        {
            var ciphertext = Wycheproof.Hex(test, "ct");
            if (test.GetProperty("result").GetString() == "valid")
            {
                Assert.Equal(Wycheproof.Hex(test, "msg"), await fixture.Hsm.DecryptRsaOaepAsync(key, KeyAlgorithm.RsaDecryptOaep2048Sha1, ciphertext, default));
                valid++;
            }
            else
            {
                var e = await Assert.ThrowsAsync<KmsException>(async () => await fixture.Hsm.DecryptRsaOaepAsync(key, KeyAlgorithm.RsaDecryptOaep2048Sha1, ciphertext, default));
                Assert.Equal(KmsErrorCode.DecryptionFailed, e.Code);
                invalid++;
            }
        }

        Assert.Equal((10, 19), (valid, invalid));
    }

    [Fact]
    public async Task DecryptRsaOaep_TamperedOrWrongLength_DecryptionFailed()
    {
        var generated = await fixture.Hsm.GenerateKeyVersionAsync(KeyAlgorithm.RsaDecryptOaep2048Sha1, default);
        var key = new KeyMaterialRef(KeyVersionId.NewId(), generated.Wrapped);
        using var rsa = RSA.Create();
        rsa.ImportSubjectPublicKeyInfo(generated.SubjectPublicKeyInfo, out _);
        var ciphertext = rsa.Encrypt(Message, RSAEncryptionPadding.OaepSHA1);

        foreach (var bad in new[] { Flip(ciphertext, 0), Flip(ciphertext, 100), Flip(ciphertext, 255), ciphertext[1..], [.. ciphertext, 0], new byte[256] })
        {
            var e = await Assert.ThrowsAsync<KmsException>(async () => await fixture.Hsm.DecryptRsaOaepAsync(key, KeyAlgorithm.RsaDecryptOaep2048Sha1, bad, default));
            Assert.Equal(KmsErrorCode.DecryptionFailed, e.Code);
            Assert.Equal(KmsErrors.DecryptionFailedMessage, e.Message);
        }

        Assert.Equal(Message, await fixture.Hsm.DecryptRsaOaepAsync(key, KeyAlgorithm.RsaDecryptOaep2048Sha1, ciphertext, default));
    }

    [Theory]
    [InlineData(KeyAlgorithm.RsaSignPss2048Sha256, 0)]
    [InlineData(KeyAlgorithm.RsaSignPss2048Sha256, 20)]
    [InlineData(KeyAlgorithm.RsaSignPss2048Sha256, 64)]
    [InlineData(KeyAlgorithm.RsaSignPkcs2048Sha256, 33)]
    [InlineData(KeyAlgorithm.RsaSignPkcs4096Sha512, 32)]
    [InlineData(KeyAlgorithm.EcSignP384Sha384, 32)]
    public async Task Sign_WrongDigestLength_InvalidArgumentBeforeTheHsmIsAsked(KeyAlgorithm algorithm, int length)
    {
        // The material is never unwrapped: a blob that is not even a key shows it.
        var key = new KeyMaterialRef(KeyVersionId.NewId(), new Core.Crypto.WrappedKeyMaterial(new byte[40]));

        var e = await Assert.ThrowsAsync<KmsException>(async () => await fixture.Hsm.SignAsync(key, algorithm, new byte[length], default));

        Assert.Equal(KmsErrorCode.InvalidArgument, e.Code);
        Assert.Contains("digest", e.Message, StringComparison.Ordinal);
        Assert.Contains($"not {length}", e.Message, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData(KeyAlgorithm.Ed25519, "CKR_KEY_NOT_WRAPPABLE")]
    [InlineData(KeyAlgorithm.RsaDecryptOaep2048Sha256, "CKR_ARGUMENTS_BAD")]
    [InlineData(KeyAlgorithm.RsaDecryptOaep4096Sha256, "SHA-1 only")]
    public async Task Unsupported_Algorithm_FailedPreconditionNamingTheReason(KeyAlgorithm algorithm, string reason)
    {
        Assert.Contains(reason, fixture.Hsm.UnsupportedReason(algorithm), StringComparison.Ordinal);
        var key = new KeyMaterialRef(KeyVersionId.NewId(), new Core.Crypto.WrappedKeyMaterial(new byte[40]));

        var generate = await Assert.ThrowsAsync<KmsException>(async () => await fixture.Hsm.GenerateKeyVersionAsync(algorithm, default));
        var use = await Assert.ThrowsAsync<KmsException>(async () => await (KeyAlgorithms.Of(algorithm).Purpose == KeyPurpose.SignVerify
            ? fixture.Hsm.SignAsync(key, algorithm, [1], default)
            : fixture.Hsm.DecryptRsaOaepAsync(key, algorithm, new byte[KeyAlgorithms.Of(algorithm).KeyBits / 8], default)));

        foreach (var e in new[] { generate, use })
        {
            Assert.Equal(KmsErrorCode.FailedPrecondition, e.Code);
            Assert.Contains(KeyAlgorithms.Of(algorithm).Name, e.Message, StringComparison.Ordinal);
            Assert.Contains(reason, e.Message, StringComparison.Ordinal);
        }
    }

    [Fact]
    public void Supported_EveryOtherAlgorithmAndTheSha1ImportMethods()
    {
        var unsupported = KeyAlgorithms.All.Where(s => fixture.Hsm.UnsupportedReason(s.Algorithm) is not null).Select(s => s.Name).Order().ToList();
        Assert.Equal(["ED25519", "RSA_DECRYPT_OAEP_2048_SHA256", "RSA_DECRYPT_OAEP_3072_SHA256", "RSA_DECRYPT_OAEP_4096_SHA256"], unsupported);
        Assert.Null(fixture.Hsm.UnsupportedReason(ImportMethod.RsaOaep3072Sha1Aes256));
        Assert.Null(fixture.Hsm.UnsupportedReason(ImportMethod.RsaOaep4096Sha1Aes256));
        Assert.Contains("SHA-1 only", fixture.Hsm.UnsupportedReason(ImportMethod.RsaOaep3072Sha256Aes256), StringComparison.Ordinal);
        Assert.Contains("SHA-1 only", fixture.Hsm.UnsupportedReason(ImportMethod.RsaOaep4096Sha256Aes256), StringComparison.Ordinal);
    }

    [Theory]
    [InlineData(KeyAlgorithm.Aes256Gcm)]
    [InlineData(KeyAlgorithm.HmacSha256)]
    public async Task Sign_AlgorithmOfAnotherPurpose_InvalidArgument(KeyAlgorithm algorithm)
    {
        var key = new KeyMaterialRef(KeyVersionId.NewId(), new Core.Crypto.WrappedKeyMaterial(new byte[40]));
        var e = await Assert.ThrowsAsync<KmsException>(async () => await fixture.Hsm.SignAsync(key, algorithm, new byte[32], default));
        Assert.Equal(KmsErrorCode.InvalidArgument, e.Code);
        Assert.Contains("not SIGN_VERIFY", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task SameVersionId_RsaBlobUsedAsHmac_InternalAndNothingCached()
    {
        var rsa = await fixture.Hsm.GenerateKeyVersionAsync(KeyAlgorithm.RsaSignPss2048Sha256, default);
        var key = new KeyMaterialRef(KeyVersionId.NewId(), rsa.Wrapped);
        var before = fixture.Hsm.CountSessionObjects();

        var e = await Assert.ThrowsAsync<KmsException>(async () => await fixture.Hsm.ComputeMacAsync(key, KeyAlgorithm.HmacSha256, Message, default));

        Assert.Equal(KmsErrorCode.Internal, e.Code);
        Assert.Equal(before, fixture.Hsm.CountSessionObjects());
        Assert.Equal(256, (await fixture.Hsm.SignAsync(key, KeyAlgorithm.RsaSignPss2048Sha256, SHA256.HashData(Message), default)).Length);
    }

    private async Task AssertDecryptsAsync(KeyMaterialRef key, KeyAlgorithmSpec spec, byte[] publicKey)
    {
        using var rsa = RSA.Create();
        rsa.ImportSubjectPublicKeyInfo(publicKey, out _);
        Assert.Equal(spec.KeyBits, rsa.KeySize);
        var secret = RandomNumberGenerator.GetBytes(32);
        Assert.Equal(secret, await fixture.Hsm.DecryptRsaOaepAsync(key, spec.Algorithm, rsa.Encrypt(secret, RSAEncryptionPadding.OaepSHA1), default));

        var oaep = new OaepEncoding(new RsaEngine(), new Sha1Digest());
        oaep.Init(true, PublicKeyFactory.CreateKey(publicKey));
        var fromBouncy = oaep.ProcessBlock(Message, 0, Message.Length);
        Assert.Equal(Message, await fixture.Hsm.DecryptRsaOaepAsync(key, spec.Algorithm, fromBouncy, default));

        var e = await Assert.ThrowsAsync<KmsException>(async () => await fixture.Hsm.DecryptRsaOaepAsync(key, spec.Algorithm, Flip(fromBouncy, 7), default));
        Assert.Equal(KmsErrorCode.DecryptionFailed, e.Code);
    }

    /// <summary>The signature over <paramref name="message"/>'s digest verifies with .NET and with BouncyCastle.</summary>
    internal static void AssertVerifies(KeyAlgorithmSpec spec, byte[] publicKey, byte[] message, byte[] signature)
    {
        var digest = KeyAlgorithms.Hash(spec.Digest!.Value, message);
        Assert.True(VerifiesWithDotNet(spec, publicKey, digest, signature), $"{spec.Name}: .NET does not verify");
        var key = PublicKeyFactory.CreateKey(publicKey);
        if (spec.Family == KeyFamily.Ec)
        {
            var half = signature.Length / 2;
            var ecdsa = new ECDsaSigner();
            ecdsa.Init(false, key);
            Assert.True(ecdsa.VerifySignature(digest, new BigInteger(1, signature[..half]), new BigInteger(1, signature[half..])), $"{spec.Name}: BouncyCastle does not verify");
            return;
        }

        ISigner signer = spec.Padding == RsaPadding.Pss
            ? new PssSigner(new RsaEngine(), BouncyDigest(spec.Digest!.Value), spec.DigestLength)
            : new RsaDigestSigner(BouncyDigest(spec.Digest!.Value));
        signer.Init(false, key);
        signer.BlockUpdate(message, 0, message.Length);
        Assert.True(signer.VerifySignature(signature), $"{spec.Name}: BouncyCastle does not verify");
    }

    private static bool VerifiesWithDotNet(KeyAlgorithmSpec spec, byte[] publicKey, byte[] digest, byte[] signature)
    {
        if (spec.Family == KeyFamily.Ec)
        {
            using var ec = ECDsa.Create();
            ec.ImportSubjectPublicKeyInfo(publicKey, out _);
            return ec.VerifyHash(digest, signature, DSASignatureFormat.IeeeP1363FixedFieldConcatenation);
        }

        using var rsa = RSA.Create();
        rsa.ImportSubjectPublicKeyInfo(publicKey, out _);
        return rsa.VerifyHash(digest, signature, KeyAlgorithms.HashName(spec.Digest!.Value), spec.Padding == RsaPadding.Pss ? RSASignaturePadding.Pss : RSASignaturePadding.Pkcs1);
    }

    internal static IDigest BouncyDigest(DigestAlgorithm digest) => digest switch
    {
        DigestAlgorithm.Sha256 => new Sha256Digest(),
        DigestAlgorithm.Sha384 => new Sha384Digest(),
        DigestAlgorithm.Sha512 => new Sha512Digest(),
        _ => new Sha1Digest(),
    };

    internal static byte[] Flip(byte[] value, int index)
    {
        var copy = (byte[])value.Clone();
        copy[index] ^= 0x01;
        return copy;
    }
}
