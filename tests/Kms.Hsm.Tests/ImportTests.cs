using System.Security.Cryptography;
using System.Text;
using Kms.Core.Crypto;
using Kms.Core.Errors;
using Kms.Core.Keys;
using Kms.Core.Ports;
using Kms.Testing;
using Net.Pkcs11Interop.Common;

namespace Kms.Hsm.Tests;

/// <summary>
/// BYOK: material wrapped by a client as CKM_RSA_AES_KEY_WRAP defines it (RSA-OAEP of an
/// ephemeral AES-256 key, then KWP), imported inside the HSM, checked, and kept only when right;
/// after every refusal no session object is left. And what the HSM reports about a version.
/// </summary>
public sealed class ImportTests(AlgorithmFixture fixture) : IClassFixture<AlgorithmFixture>
{
    private static readonly byte[] CheckValueText = Encoding.ASCII.GetBytes(KeyVersionProperties.CheckValueText);

    [Fact]
    public async Task Import_Aes_EncryptsLikeDotNetAndCheckValueMatches()
    {
        var secret = RandomNumberGenerator.GetBytes(32);
        var (key, publicKey) = await fixture.ImportAsync(KeyAlgorithm.Aes256Gcm, secret);
        Assert.Null(publicKey);

        var iv = RandomNumberGenerator.GetBytes(12);
        var sealedBytes = await fixture.Hsm.EncryptAesGcmAsync(key, iv, [7], [1, 2, 3], default);
        var plaintext = new byte[3];
        using (var aes = new AesGcm(secret, 16))
        {
            aes.Decrypt(iv, sealedBytes.AsSpan(0, 3), sealedBytes.AsSpan(3), plaintext, [7]);
        }

        Assert.Equal([1, 2, 3], plaintext);
        var described = await fixture.Hsm.DescribeKeyVersionAsync(key, KeyAlgorithm.Aes256Gcm, default);
        Assert.Equal(AesCheckValue(secret), described.CheckValue);
    }

    [Fact]
    public async Task EncryptMany_EachDecryptsWithDotNetUnderItsOwnIvAndAad_LikeOneByOne()
    {
        var secret = RandomNumberGenerator.GetBytes(32);
        var (key, _) = await fixture.ImportAsync(KeyAlgorithm.Aes256Gcm, secret);
        var inputs = Enumerable.Range(0, 5)
            .Select(i => new AesGcmInput(RandomNumberGenerator.GetBytes(12), [(byte)i], RandomNumberGenerator.GetBytes(1 + (i * 7))))
            .ToList();

        var sealedAll = await fixture.Hsm.EncryptAesGcmManyAsync(key, inputs, default);

        Assert.Equal(inputs.Count, sealedAll.Length);
        using var aes = new AesGcm(secret, 16);
        for (var i = 0; i < inputs.Count; i++)
        {
            var (iv, aad, expected) = inputs[i];
            var plaintext = new byte[expected.Length];
            aes.Decrypt(iv, sealedAll[i].AsSpan(0, expected.Length), sealedAll[i].AsSpan(expected.Length), plaintext, aad);
            Assert.Equal(expected, plaintext);
            Assert.Equal(await fixture.Hsm.EncryptAesGcmAsync(key, iv, aad, expected, default), sealedAll[i]);
        }
    }

    /// <summary>
    /// The one-trip forms (IV, or data key and IV, drawn in the same session as the encryption):
    /// what they return decrypts with .NET's AesGcm under the imported key, with their IV and AAD,
    /// to the plaintext given (or the data key returned); each draw is fresh.
    /// </summary>
    [Fact]
    public async Task FreshIvAndDataKey_DecryptWithDotNet_UnderTheDrawnIv_EachDrawFresh()
    {
        var secret = RandomNumberGenerator.GetBytes(32);
        var (key, _) = await fixture.ImportAsync(KeyAlgorithm.Aes256Gcm, secret);
        using var aes = new AesGcm(secret, 16);
        byte[] aad = [4, 2];

        var first = await fixture.Hsm.EncryptAesGcmWithFreshIvAsync(key, aad, [9, 8, 7], default);
        var second = await fixture.Hsm.EncryptAesGcmWithFreshIvAsync(key, aad, [9, 8, 7], default);
        Assert.Equal(CiphertextBlob.IvLength, first.Iv.Length);
        Assert.NotEqual(first.Iv, second.Iv);
        var plaintext = new byte[3];
        aes.Decrypt(first.Iv, first.CiphertextAndTag.AsSpan(0, 3), first.CiphertextAndTag.AsSpan(3), plaintext, aad);
        Assert.Equal([9, 8, 7], plaintext);

        var dataKey = await fixture.Hsm.GenerateDataKeyAsync(key, 32, aad, default);
        var other = await fixture.Hsm.GenerateDataKeyAsync(key, 32, aad, default);
        Assert.Equal(32, dataKey.DataKey.Length);
        Assert.Equal(CiphertextBlob.IvLength, dataKey.Iv.Length);
        Assert.NotEqual(dataKey.DataKey, other.DataKey);
        Assert.NotEqual(dataKey.Iv, other.Iv);
        var opened = new byte[32];
        aes.Decrypt(dataKey.Iv, dataKey.CiphertextAndTag.AsSpan(0, 32), dataKey.CiphertextAndTag.AsSpan(32), opened, aad);
        Assert.Equal(dataKey.DataKey, opened);
        Assert.Throws<AuthenticationTagMismatchException>(() => aes.Decrypt(dataKey.Iv, dataKey.CiphertextAndTag.AsSpan(0, 32), dataKey.CiphertextAndTag.AsSpan(32), opened, [4, 3]));
    }

    /// <summary>
    /// Ciphertexts made by .NET's AesGcm under the imported key, decrypted in one HSM call: the
    /// good ones give their plaintexts, a flipped tag, a wrong AAD and a wrong IV are each null in
    /// their place (the session goes on to the next item), and the plaintexts equal one-by-one calls.
    /// </summary>
    [Fact]
    public async Task DecryptMany_DotNetCiphertexts_BadTagAadOrIvIsNullInItsPlace_TheRestDecrypt()
    {
        var secret = RandomNumberGenerator.GetBytes(32);
        var (key, _) = await fixture.ImportAsync(KeyAlgorithm.Aes256Gcm, secret);
        using var aes = new AesGcm(secret, 16);
        var plaintexts = Enumerable.Range(0, 7).Select(i => RandomNumberGenerator.GetBytes(1 + (i * 9))).ToList();
        var inputs = plaintexts.Select((plaintext, i) =>
        {
            var (iv, aad) = (RandomNumberGenerator.GetBytes(12), new[] { (byte)i });
            var sealedBytes = new byte[plaintext.Length + 16];
            aes.Encrypt(iv, plaintext, sealedBytes.AsSpan(0, plaintext.Length), sealedBytes.AsSpan(plaintext.Length), aad);
            return new AesGcmInput(iv, aad, sealedBytes);
        }).ToList();
        inputs[1].Data[^1] ^= 1;
        inputs[3] = inputs[3] with { Aad = [0xff] };
        inputs[5] = inputs[5] with { Iv = RandomNumberGenerator.GetBytes(12) };

        var opened = await fixture.Hsm.DecryptAesGcmManyAsync(key, inputs, default);

        Assert.Equal(inputs.Count, opened.Length);
        foreach (var bad in new[] { 1, 3, 5 })
        {
            Assert.Null(opened[bad]);
        }

        foreach (var good in new[] { 0, 2, 4, 6 })
        {
            Assert.Equal(plaintexts[good], opened[good]);
            Assert.Equal(opened[good], await fixture.Hsm.DecryptAesGcmAsync(key, inputs[good].Iv, inputs[good].Aad, inputs[good].Data, default));
        }
    }

    [Theory]
    [InlineData(KeyAlgorithm.HmacSha256)]
    [InlineData(KeyAlgorithm.HmacSha512)]
    public async Task Import_Hmac_MacAndCheckValueEqualDotNet(KeyAlgorithm algorithm)
    {
        var spec = KeyAlgorithms.Of(algorithm);
        var secret = RandomNumberGenerator.GetBytes(spec.SecretLength);
        var (key, _) = await fixture.ImportAsync(algorithm, secret);

        var mac = await fixture.Hsm.ComputeMacAsync(key, algorithm, Encoding.UTF8.GetBytes("data"), default);
        var described = await fixture.Hsm.DescribeKeyVersionAsync(key, algorithm, default);

        Assert.Equal(Hmac(spec, secret, Encoding.UTF8.GetBytes("data")), mac);
        Assert.Equal(Hmac(spec, secret, CheckValueText)[..8], described.CheckValue);
    }

    [Theory]
    [InlineData(KeyAlgorithm.EcSignP256Sha256, "nistP256")]
    [InlineData(KeyAlgorithm.EcSignP384Sha384, "nistP384")]
    public async Task Import_EcWithItsPublicKey_SignaturesVerify_OtherPublicKeyRefused(KeyAlgorithm algorithm, string curveName)
    {
        var spec = KeyAlgorithms.Of(algorithm);
        using var ec = ECDsa.Create(ECCurve.CreateFromFriendlyName(curveName));
        using var other = ECDsa.Create(ECCurve.CreateFromFriendlyName(curveName));
        var before = fixture.Hsm.CountSessionObjects();

        var (key, publicKey) = await fixture.ImportAsync(algorithm, ec.ExportPkcs8PrivateKey(), ec.ExportSubjectPublicKeyInfo());
        var digest = KeyAlgorithms.Hash(spec.Digest!.Value, "signed"u8);
        var signature = await fixture.Hsm.SignAsync(key, algorithm, digest, default);
        Assert.True(ec.VerifyHash(digest, signature, DSASignatureFormat.IeeeP1363FixedFieldConcatenation));
        Assert.Equal(ec.ExportSubjectPublicKeyInfo(), publicKey);

        var wrong = await RefusedAsync(algorithm, fixture.WrapForImport(ec.ExportPkcs8PrivateKey()), other.ExportSubjectPublicKeyInfo());
        Assert.Contains("does not verify under the public key", wrong.Message, StringComparison.Ordinal);
        var missing = await RefusedAsync(algorithm, fixture.WrapForImport(ec.ExportPkcs8PrivateKey()), null);
        Assert.Contains("needs its public key", missing.Message, StringComparison.Ordinal);
        using var otherCurve = ECDsa.Create(curveName == "nistP256" ? ECCurve.NamedCurves.nistP384 : ECCurve.NamedCurves.nistP256);
        var curve = await RefusedAsync(algorithm, fixture.WrapForImport(otherCurve.ExportPkcs8PrivateKey()), otherCurve.ExportSubjectPublicKeyInfo());
        Assert.Equal("public_key", curve.Field);
        var curveOfMaterial = await RefusedAsync(algorithm, fixture.WrapForImport(otherCurve.ExportPkcs8PrivateKey()), ec.ExportSubjectPublicKeyInfo());
        Assert.Contains("on another curve", curveOfMaterial.Message, StringComparison.Ordinal);

        await fixture.Hsm.EvictAndDrainAsync(key);
        Assert.Equal(before, fixture.Hsm.CountSessionObjects());
    }

    [Fact]
    public async Task Import_EcPublicKeyEncodedAnotherWay_SamePointStoredAsItsCanonicalSpki_CompressedExplicitOrOtherAlgorithmRefused()
    {
        // The stored public key is what GetPublicKey answers and verification uses; before, it was
        // the caller's bytes. .NET (and OpenSSL, BouncyCastle) take a BIT STRING that declares
        // padding bits (zero, so valid DER) for the same point: stored so, every reader got bytes
        // other than the key's usual DER, and another SHA-256 fingerprint (how the key is named in
        // documents and logs). Now the named-curve, uncompressed SPKI .NET writes is stored.
        ECDsa ec;
        do
        {
            ec = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        }
        while ((ec.ExportParameters(false).Q.Y![^1] & 1) != 0);

        using (ec)
        {
            var canonical = ec.ExportSubjectPublicKeyInfo();
            var padded = (byte[])canonical.Clone();
            Assert.Equal((0x03, 0x42, 0x00, 0x04), (padded[23], padded[24], padded[25], padded[26]));
            padded[25] = 1; // one padding bit (zero) declared: 519 bits, the same 65 bytes
            using (var read = ECDsa.Create())
            {
                read.ImportSubjectPublicKeyInfo(padded, out var length);
                Assert.Equal(padded.Length, length);
            }

            var (key, stored) = await fixture.ImportAsync(KeyAlgorithm.EcSignP256Sha256, ec.ExportPkcs8PrivateKey(), padded);
            Assert.Equal(canonical, stored);
            await fixture.Hsm.EvictAndDrainAsync(key);

            var q = ec.ExportParameters(false).Q;
            byte[] Spki(byte[] point, string algorithm = "1.2.840.10045.2.1")
            {
                var writer = new System.Formats.Asn1.AsnWriter(System.Formats.Asn1.AsnEncodingRules.DER);
                using (writer.PushSequence())
                {
                    using (writer.PushSequence())
                    {
                        writer.WriteObjectIdentifier(algorithm);
                        writer.WriteObjectIdentifier("1.2.840.10045.3.1.7");
                    }

                    writer.WriteBitString(point);
                }

                return writer.Encode();
            }

            var refused = new Dictionary<string, byte[]>
            {
                ["compressed point"] = Spki([(byte)(2 + (q.Y![^1] & 1)), .. q.X!]),
                ["hybrid point"] = Spki([(byte)(6 + (q.Y![^1] & 1)), .. q.X!, .. q.Y!]),
                ["id-ecDH algorithm"] = Spki([0x04, .. q.X!, .. q.Y!], "1.3.132.1.12"),
                ["BER length"] = [0x30, 0x81, .. canonical[1..]],
            };
            using (var explicitCurve = ECDsa.Create(ec.ExportExplicitParameters(false)))
            {
                refused["explicit curve parameters"] = explicitCurve.ExportSubjectPublicKeyInfo();
            }

            foreach (var (name, spki) in refused)
            {
                var e = await RefusedAsync(KeyAlgorithm.EcSignP256Sha256, fixture.WrapForImport(ec.ExportPkcs8PrivateKey()), spki);
                Assert.True(e.Field == "public_key", $"{name}: {e.Field}: {e.Message}");
            }
        }
    }

    [Fact]
    public async Task Import_SameEcMaterialAndPublicKeyEncodings_FakeHsmAndSoftHsm_StoreTheSameSpki_RefuseTheSameNamingPublicKey()
    {
        // Domain tests run on FakeHsm: it must store what SoftHSM's path stores (claim 121). It
        // compared the caller's bytes with its own export, so a padding-bit SPKI SoftHSM stores as
        // the canonical one was refused there.
        using var fake = new Kms.Testing.Fakes.FakeHsm();
        var job = await fake.GenerateImportWrappingKeyAsync(ImportMethod.RsaOaep3072Sha1Aes256, default);
        var fakeJob = new KeyMaterialRef(KeyVersionId.NewId(), job.Wrapped);
        byte[] WrapForFake(byte[] material)
        {
            var ephemeral = RandomNumberGenerator.GetBytes(32);
            using var rsa = RSA.Create();
            rsa.ImportSubjectPublicKeyInfo(job.SubjectPublicKeyInfo!, out _);
            return [.. rsa.Encrypt(ephemeral, RSAEncryptionPadding.OaepSHA1), .. AlgorithmFixture.Kwp(ephemeral, material)];
        }

        async Task<(byte[]? Stored, string? RefusedField)> OnBothAsync(KeyAlgorithm algorithm, byte[] pkcs8, byte[]? spki, string label)
        {
            (byte[]? Stored, string? Field) soft, faked;
            try
            {
                var (key, stored) = await fixture.ImportAsync(algorithm, pkcs8, spki);
                await fixture.Hsm.EvictAndDrainAsync(key);
                soft = (stored, null);
            }
            catch (KmsException e) when (e.Code == KmsErrorCode.InvalidArgument)
            {
                soft = (null, e.Field);
            }

            try
            {
                faked = ((await fake.ImportKeyVersionAsync(fakeJob, ImportMethod.RsaOaep3072Sha1Aes256, algorithm, WrapForFake(pkcs8), spki, default)).SubjectPublicKeyInfo, null);
            }
            catch (KmsException e) when (e.Code == KmsErrorCode.InvalidArgument)
            {
                faked = (null, e.Field);
            }

            Assert.True(soft.Field == faked.Field, $"{label}: SoftHSM refused naming {soft.Field ?? "nothing"}, FakeHsm {faked.Field ?? "nothing"}");
            Assert.True(soft.Stored.AsSpan().SequenceEqual(faked.Stored), $"{label}: SoftHSM and FakeHsm stored other public keys");
            return soft;
        }

        foreach (var curve in new[] { ECCurve.NamedCurves.nistP256, ECCurve.NamedCurves.nistP384 })
        {
            var algorithm = curve.Oid.Value == "1.2.840.10045.3.1.7" ? KeyAlgorithm.EcSignP256Sha256 : KeyAlgorithm.EcSignP384Sha384;
            ECDsa ec;
            do
            {
                ec = ECDsa.Create(curve);
            }
            while ((ec.ExportParameters(false).Q.Y![^1] & 1) != 0);

            using (ec)
            {
                var canonical = ec.ExportSubjectPublicKeyInfo();
                var q = ec.ExportParameters(false).Q;
                var writer = new System.Formats.Asn1.AsnWriter(System.Formats.Asn1.AsnEncodingRules.DER);
                using (writer.PushSequence())
                {
                    using (writer.PushSequence())
                    {
                        writer.WriteObjectIdentifier("1.2.840.10045.2.1");
                        writer.WriteObjectIdentifier(curve.Oid.Value!);
                    }

                    writer.WriteBitString([0x04, .. q.X!, .. q.Y!], unusedBitCount: 1); // a zero padding bit declared
                }

                var padded = writer.Encode();
                Assert.NotEqual(canonical, padded);
                using var other = ECDsa.Create(curve);
                using var explicitCurve = ECDsa.Create(ec.ExportExplicitParameters(false));
                var pkcs8 = ec.ExportPkcs8PrivateKey();

                Assert.Equal(canonical, (await OnBothAsync(algorithm, pkcs8, canonical, $"{algorithm} canonical")).Stored);
                Assert.Equal(canonical, (await OnBothAsync(algorithm, pkcs8, padded, $"{algorithm} padding bit")).Stored);
                foreach (var (label, spki) in new (string, byte[]?)[]
                {
                    ("no public key", null),
                    ("another key", other.ExportSubjectPublicKeyInfo()),
                    ("explicit curve parameters", explicitCurve.ExportSubjectPublicKeyInfo()),
                    ("trailing byte", [.. canonical, 0]),
                    ("compressed point", Spki(curve.Oid.Value!, [(byte)(2 + (q.Y![^1] & 1)), .. q.X!])),
                })
                {
                    Assert.Equal("public_key", (await OnBothAsync(algorithm, pkcs8, spki, $"{algorithm} {label}")).RefusedField);
                }
            }
        }

        static byte[] Spki(string curveOid, byte[] point)
        {
            var writer = new System.Formats.Asn1.AsnWriter(System.Formats.Asn1.AsnEncodingRules.DER);
            using (writer.PushSequence())
            {
                using (writer.PushSequence())
                {
                    writer.WriteObjectIdentifier("1.2.840.10045.2.1");
                    writer.WriteObjectIdentifier(curveOid);
                }

                writer.WriteBitString(point);
            }

            return writer.Encode();
        }
    }

    [Theory]
    [InlineData("1.2.3.4.5")] // no curve at all
    [InlineData("1.3.132.0.10")] // secp256k1: a curve OpenSSL knows
    [InlineData("1.3.36.3.3.2.8.1.1.7")] // brainpoolP256r1
    public async Task Import_EcPublicKeyOnAnUnknownOrOtherCurve_InvalidArgumentNamingPublicKey(string curveOid)
    {
        // Whatever the platform makes of the curve OID (unknown to it, or known but not ours),
        // the caller gets INVALID_ARGUMENT on public_key, never an internal error.
        using var ec = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        var q = ec.ExportParameters(false).Q;
        var spki = new System.Formats.Asn1.AsnWriter(System.Formats.Asn1.AsnEncodingRules.DER);
        using (spki.PushSequence())
        {
            using (spki.PushSequence())
            {
                spki.WriteObjectIdentifier("1.2.840.10045.2.1");
                spki.WriteObjectIdentifier(curveOid);
            }

            spki.WriteBitString([0x04, .. q.X!, .. q.Y!]);
        }

        var e = await RefusedAsync(KeyAlgorithm.EcSignP256Sha256, fixture.WrapForImport(ec.ExportPkcs8PrivateKey()), spki.Encode());
        Assert.Equal("public_key", e.Field);
    }

    [Fact]
    public async Task Import_Rsa_SpkiDerivedAndChecked_WrongSizeOrOtherKeyRefused()
    {
        using var rsa = RSA.Create();
        rsa.ImportPkcs8PrivateKey(fixture.RsaPkcs8[2048], out _);
        using var other = RSA.Create();
        other.ImportPkcs8PrivateKey(fixture.RsaPkcs8[3072], out _);
        var before = fixture.Hsm.CountSessionObjects();

        var (key, publicKey) = await fixture.ImportAsync(KeyAlgorithm.RsaSignPkcs2048Sha256, fixture.RsaPkcs8[2048], rsa.ExportSubjectPublicKeyInfo());
        Assert.Equal(rsa.ExportSubjectPublicKeyInfo(), publicKey);
        var digest = SHA256.HashData("signed"u8);
        Assert.True(rsa.VerifyHash(digest, await fixture.Hsm.SignAsync(key, KeyAlgorithm.RsaSignPkcs2048Sha256, digest, default), HashAlgorithmName.SHA256, RSASignaturePadding.Pkcs1));

        var size = await RefusedAsync(KeyAlgorithm.RsaSignPss2048Sha256, fixture.WrapForImport(fixture.RsaPkcs8[3072]), null);
        Assert.Contains("takes a 2048-bit RSA key, not 3072 bits", size.Message, StringComparison.Ordinal);
        var mismatch = await RefusedAsync(KeyAlgorithm.RsaSignPss3072Sha256, fixture.WrapForImport(fixture.RsaPkcs8[3072]), rsa.ExportSubjectPublicKeyInfo());
        Assert.Contains("does not match the imported RSA private key", mismatch.Message, StringComparison.Ordinal);
        var notRsa = await RefusedAsync(KeyAlgorithm.RsaSignPss2048Sha256, fixture.WrapForImport(RandomNumberGenerator.GetBytes(32)), null);
        Assert.Contains("does not unwrap", notRsa.Message, StringComparison.Ordinal);
        using var ec = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        var ecAsRsa = await Assert.ThrowsAsync<KmsException>(async () => await fixture.Hsm.ImportKeyVersionAsync(fixture.ImportJob, ImportMethod.RsaOaep3072Sha1Aes256, KeyAlgorithm.RsaSignPss2048Sha256, fixture.WrapForImport(ec.ExportPkcs8PrivateKey()), null, default));
        Assert.True(ecAsRsa.Code == KmsErrorCode.InvalidArgument, ecAsRsa.Message);

        await fixture.Hsm.EvictAndDrainAsync(key);
        Assert.Equal(before, fixture.Hsm.CountSessionObjects());
    }

    [Fact]
    public async Task Import_MaterialFingerprint_SameHoweverWrappedAndWhicheverAlgorithm_OtherMaterialOther()
    {
        // What the store refuses a job's second import by (claim 115): the material's, not the blob's.
        var secret = RandomNumberGenerator.GetBytes(32);
        var fingerprints = new List<string?>();
        foreach (var algorithm in new[] { KeyAlgorithm.Aes256Gcm, KeyAlgorithm.HmacSha256, KeyAlgorithm.Aes256Gcm })
        {
            var imported = await fixture.Hsm.ImportKeyVersionAsync(fixture.ImportJob, ImportMethod.RsaOaep3072Sha1Aes256, algorithm, fixture.WrapForImport(secret), null, default);
            fingerprints.Add(imported.MaterialFingerprint);
        }

        // As .NET computes it from the bytes, the length and the job's public key (which binds it to the job).
        var expected = GeneratedKeyMaterial.SecretFingerprint(HMACSHA256.HashData(secret, GeneratedKeyMaterial.SecretFingerprintInput(32, fixture.ImportJobPublicKey)));
        Assert.All(fingerprints, f => Assert.Equal(expected, f));
        var other = await fixture.Hsm.ImportKeyVersionAsync(fixture.ImportJob, ImportMethod.RsaOaep3072Sha1Aes256, KeyAlgorithm.Aes256Gcm, fixture.WrapForImport(RandomNumberGenerator.GetBytes(32)), null, default);
        Assert.NotEqual(expected, other.MaterialFingerprint);

        // The same bytes followed by zeros are another material, though HMAC pads its key with
        // zeros: HMAC-SHA256 under either is one MAC, so the length is in what is MACed.
        byte[] padded = [.. secret, .. new byte[16]];
        Assert.Equal(HMACSHA256.HashData(secret, "x"u8), HMACSHA256.HashData(padded, "x"u8));
        var asHmacSha384 = await fixture.Hsm.ImportKeyVersionAsync(fixture.ImportJob, ImportMethod.RsaOaep3072Sha1Aes256, KeyAlgorithm.HmacSha384, fixture.WrapForImport(padded), null, default);
        Assert.NotEqual(expected, asHmacSha384.MaterialFingerprint);
        Assert.Equal(GeneratedKeyMaterial.SecretFingerprint(HMACSHA256.HashData(padded, GeneratedKeyMaterial.SecretFingerprintInput(48, fixture.ImportJobPublicKey))), asHmacSha384.MaterialFingerprint);

        using var rsa = RSA.Create(2048);
        var asPss = await fixture.Hsm.ImportKeyVersionAsync(fixture.ImportJob, ImportMethod.RsaOaep3072Sha1Aes256, KeyAlgorithm.RsaSignPss2048Sha256, fixture.WrapForImport(rsa.ExportPkcs8PrivateKey()), null, default);
        var asOaep = await fixture.Hsm.ImportKeyVersionAsync(fixture.ImportJob, ImportMethod.RsaOaep3072Sha1Aes256, KeyAlgorithm.RsaDecryptOaep2048Sha1, fixture.WrapForImport(rsa.ExportPkcs8PrivateKey()), null, default);
        Assert.Equal(GeneratedKeyMaterial.PublicKeyFingerprint(rsa.ExportSubjectPublicKeyInfo()), asPss.MaterialFingerprint);
        Assert.Equal(asPss.MaterialFingerprint, asOaep.MaterialFingerprint);

        using var ec = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        var asEc = await fixture.Hsm.ImportKeyVersionAsync(fixture.ImportJob, ImportMethod.RsaOaep3072Sha1Aes256, KeyAlgorithm.EcSignP256Sha256, fixture.WrapForImport(ec.ExportPkcs8PrivateKey()), ec.ExportSubjectPublicKeyInfo(), default);
        Assert.Equal(GeneratedKeyMaterial.PublicKeyFingerprint(ec.ExportSubjectPublicKeyInfo()), asEc.MaterialFingerprint);
    }

    [Fact]
    public async Task Import_RsaWithPublicExponent3_Refused_NothingLeftOnTheToken()
    {
        // .NET cannot generate a key of another exponent; BouncyCastle can.
        var generator = new Org.BouncyCastle.Crypto.Generators.RsaKeyPairGenerator();
        generator.Init(new Org.BouncyCastle.Crypto.Parameters.RsaKeyGenerationParameters(
            Org.BouncyCastle.Math.BigInteger.Three, new Org.BouncyCastle.Security.SecureRandom(), 2048, 80));
        var pair = generator.GenerateKeyPair();
        var pkcs8 = Org.BouncyCastle.Pkcs.PrivateKeyInfoFactory.CreatePrivateKeyInfo(pair.Private).GetEncoded();
        using var rsa = RSA.Create();
        rsa.ImportPkcs8PrivateKey(pkcs8, out _);
        Assert.Equal([3], rsa.ExportParameters(false).Exponent);
        var before = fixture.Hsm.CountSessionObjects();

        var withoutPublicKey = await RefusedAsync(KeyAlgorithm.RsaSignPss2048Sha256, fixture.WrapForImport(pkcs8), null);
        var withPublicKey = await RefusedAsync(KeyAlgorithm.RsaDecryptOaep2048Sha1, fixture.WrapForImport(pkcs8), rsa.ExportSubjectPublicKeyInfo());

        Assert.Contains("takes an RSA key with public exponent 65537", withoutPublicKey.Message, StringComparison.Ordinal);
        Assert.Contains("takes an RSA key with public exponent 65537", withPublicKey.Message, StringComparison.Ordinal);
        Assert.Equal("wrapped_key", withPublicKey.Field);
        Assert.Equal(before, fixture.Hsm.CountSessionObjects());
    }

    [Theory]
    [InlineData(KeyAlgorithm.Aes256Gcm, 16)]
    [InlineData(KeyAlgorithm.Aes256Gcm, 24)]
    [InlineData(KeyAlgorithm.Aes256Gcm, 31)]
    [InlineData(KeyAlgorithm.Aes256Gcm, 33)]
    [InlineData(KeyAlgorithm.HmacSha256, 25)]
    [InlineData(KeyAlgorithm.HmacSha256, 31)]
    [InlineData(KeyAlgorithm.HmacSha256, 48)]
    [InlineData(KeyAlgorithm.HmacSha384, 47)]
    [InlineData(KeyAlgorithm.HmacSha512, 32)]
    [InlineData(KeyAlgorithm.HmacSha512, 63)]
    public async Task Import_SecretOfWrongSize_InvalidArgumentAndNothingKept(KeyAlgorithm algorithm, int length)
    {
        var before = fixture.Hsm.CountSessionObjects();

        var e = await RefusedAsync(algorithm, fixture.WrapForImport(RandomNumberGenerator.GetBytes(length)), null);

        Assert.Contains($"takes a {KeyAlgorithms.Of(algorithm).SecretLength}-byte key", e.Message, StringComparison.Ordinal);
        Assert.Equal(before, fixture.Hsm.CountSessionObjects());
    }

    [Fact]
    public async Task Import_GarbageOrTampered_InvalidArgumentNamingTheProblem_NothingKept()
    {
        var before = fixture.Hsm.CountSessionObjects();
        var good = fixture.WrapForImport(RandomNumberGenerator.GetBytes(32));

        var shortInput = await RefusedAsync(KeyAlgorithm.Aes256Gcm, good[..390], null);
        Assert.Contains("RSA-OAEP block followed by at least 16 bytes", shortInput.Message, StringComparison.Ordinal);
        var garbage = await RefusedAsync(KeyAlgorithm.Aes256Gcm, RandomNumberGenerator.GetBytes(384 + 40), null);
        Assert.Contains("do not RSA-OAEP-decrypt", garbage.Message, StringComparison.Ordinal);
        var oaepTampered = await RefusedAsync(KeyAlgorithm.Aes256Gcm, AlgorithmTests.Flip(good, 10), null);
        Assert.Contains("do not RSA-OAEP-decrypt", oaepTampered.Message, StringComparison.Ordinal);
        var kwpTampered = await RefusedAsync(KeyAlgorithm.Aes256Gcm, AlgorithmTests.Flip(good, 400), null);
        Assert.Contains("does not unwrap (AES-KWP)", kwpTampered.Message, StringComparison.Ordinal);
        var otherEphemeral = await RefusedAsync(KeyAlgorithm.Aes256Gcm, [.. good[..384], .. AlgorithmFixture.Kwp(RandomNumberGenerator.GetBytes(32), RandomNumberGenerator.GetBytes(32))], null);
        Assert.Contains("does not unwrap (AES-KWP)", otherEphemeral.Message, StringComparison.Ordinal);

        Assert.Equal(before, fixture.Hsm.CountSessionObjects());
        foreach (var e in new[] { shortInput, garbage, oaepTampered, kwpTampered, otherEphemeral })
        {
            Assert.Equal("wrapped_key", e.Field);
        }
    }

    [WycheproofFact]
    public async Task Import_WycheproofKwpVectors_ValidUnwrapExactly_InvalidRefused_NothingKept()
    {
        // Every AES-256 KWP vector of Wycheproof, as the KWP half of an import: the vector's key is
        // the ephemeral key (RSA-OAEP-wrapped to the job with .NET), its ciphertext the KWP block.
        // Valid 32-byte messages must import as AES-256 and as HMAC-SHA256 with the exact bytes
        // (the check values say so); every other valid message is the wrong size and every invalid
        // vector must be refused — all INVALID_ARGUMENT, none leaving an object behind.
        var vectors = Wycheproof.Load("aes_kwp_test.json");
        var before = fixture.Hsm.CountSessionObjects();
        var (imported, refused) = (0, 0);
        foreach (var test in vectors.GetProperty("testGroups").EnumerateArray()
            .Where(g => g.GetProperty("keySize").GetInt32() == 256)
            .SelectMany(g => g.GetProperty("tests").EnumerateArray()))
        {
            var id = $"tcId {test.GetProperty("tcId")}";
            var message = Wycheproof.Hex(test, "msg");
            var wrapped = fixture.WrapForImport([], ephemeral: Wycheproof.Hex(test, "key"), kwpOverride: Wycheproof.Hex(test, "ct"));
            var valid = test.GetProperty("result").GetString() == "valid";
            if (valid && message.Length == 32)
            {
                var aes = await fixture.Hsm.ImportKeyVersionAsync(fixture.ImportJob, ImportMethod.RsaOaep3072Sha1Aes256, KeyAlgorithm.Aes256Gcm, wrapped, null, default);
                var aesKey = new KeyMaterialRef(KeyVersionId.NewId(), aes.Wrapped);
                var checkValue = (await fixture.Hsm.DescribeKeyVersionAsync(aesKey, KeyAlgorithm.Aes256Gcm, default)).CheckValue!;
                Assert.True(AesCheckValue(message).AsSpan().SequenceEqual(checkValue), id);
                var hmac = await fixture.Hsm.ImportKeyVersionAsync(fixture.ImportJob, ImportMethod.RsaOaep3072Sha1Aes256, KeyAlgorithm.HmacSha256, wrapped, null, default);
                var hmacKey = new KeyMaterialRef(KeyVersionId.NewId(), hmac.Wrapped);
                var mac = await fixture.Hsm.ComputeMacAsync(hmacKey, KeyAlgorithm.HmacSha256, [(byte)'x'], default);
                Assert.True(HMACSHA256.HashData(message, "x"u8.ToArray()).AsSpan().SequenceEqual(mac), id);
                // The material's fingerprint, as .NET computes it from the bytes, whichever algorithm.
                var fingerprint = GeneratedKeyMaterial.SecretFingerprint(HMACSHA256.HashData(message, GeneratedKeyMaterial.SecretFingerprintInput(32, fixture.ImportJobPublicKey)));
                Assert.True(aes.MaterialFingerprint == fingerprint && hmac.MaterialFingerprint == fingerprint, id);
                await fixture.Hsm.EvictAndDrainAsync(aesKey);
                await fixture.Hsm.EvictAndDrainAsync(hmacKey);
                imported++;
                continue;
            }

            var e = await Assert.ThrowsAsync<KmsException>(async () =>
                await fixture.Hsm.ImportKeyVersionAsync(fixture.ImportJob, ImportMethod.RsaOaep3072Sha1Aes256, KeyAlgorithm.HmacSha256, wrapped, null, default));
            Assert.True(e.Code == KmsErrorCode.InvalidArgument && e.Field == "wrapped_key", $"{id}: {e.Code} {e.Message}");
            if (valid && message.Length >= 16)
            {
                Assert.True(e.Message.Contains("takes a 32-byte key", StringComparison.Ordinal), $"{id}: {e.Message}");
            }
            refused++;
        }

        Assert.Equal((3, 91), (imported, refused));
        Assert.Equal(before, fixture.Hsm.CountSessionObjects());
    }

    [Fact]
    public async Task Import_UnsupportedMethodOrAlgorithm_FailedPrecondition()
    {
        var e = await Assert.ThrowsAsync<KmsException>(async () =>
            await fixture.Hsm.ImportKeyVersionAsync(fixture.ImportJob, ImportMethod.RsaOaep3072Sha256Aes256, KeyAlgorithm.Aes256Gcm, new byte[500], null, default));
        Assert.Equal(KmsErrorCode.FailedPrecondition, e.Code);
        Assert.Contains("RSA_OAEP_3072_SHA256_AES_256", e.Message, StringComparison.Ordinal);
        Assert.Contains("SHA-1 only", e.Message, StringComparison.Ordinal);
        var job = await Assert.ThrowsAsync<KmsException>(async () => await fixture.Hsm.GenerateImportWrappingKeyAsync(ImportMethod.RsaOaep4096Sha256Aes256, default));
        Assert.Equal(KmsErrorCode.FailedPrecondition, job.Code);
        var ed = await Assert.ThrowsAsync<KmsException>(async () =>
            await fixture.Hsm.ImportKeyVersionAsync(fixture.ImportJob, ImportMethod.RsaOaep3072Sha1Aes256, KeyAlgorithm.Ed25519, new byte[500], null, default));
        Assert.Equal(KmsErrorCode.FailedPrecondition, ed.Code);
        Assert.Contains("CKR_KEY_NOT_WRAPPABLE", ed.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void ImportedAndRewrappedMaterial_OnAProfileWithTrustedWrapping_ExtractableOnlyUnderATrustedKey()
    {
        // Between its unwrap and the domain key's wrap, a customer's private key is as exposed
        // as a freshly generated version: it must carry CKA_WRAP_WITH_TRUSTED where the profile
        // can, as the generated ones do. (SoftHSM's profile cannot; its templates go without.)
        var trusted = new HsmProfile { Name = "trusted", AllowedMechanismsAttribute = true, WrapWithTrusted = true };
        foreach (var (profile, expected) in new[] { (trusted, true), (fixture.Hsm.Profile, false) })
        {
            var templates = new Templates(fixture.Base.Factories.ObjectAttributeFactory, profile);
            foreach (var algorithm in new[] { KeyAlgorithm.Aes256Gcm, KeyAlgorithm.HmacSha256, KeyAlgorithm.RsaSignPss2048Sha256, KeyAlgorithm.EcSignP256Sha256, KeyAlgorithm.Ed25519 })
            {
                using var imported = templates.ImportedMaterial(KeyAlgorithms.Of(algorithm), CKM.CKM_SHA256_HMAC);
                Assert.True(expected == imported.Attributes.Any(a => a.Type == (ulong)CKA.CKA_WRAP_WITH_TRUSTED && a.GetValueAsBool()), $"{algorithm} on {profile.Name}");
                Assert.Equal((ulong)CKA.CKA_MODIFIABLE, imported.Attributes[^1].Type);
            }

            foreach (var rewrapped in new[] { templates.RewrappedAesKey(), templates.RewrappedGenericSecret(), templates.RewrappedRsaPrivateKey(), templates.RewrappedEcPrivateKey() })
            {
                using (rewrapped)
                {
                    Assert.Equal(expected, rewrapped.Attributes.Any(a => a.Type == (ulong)CKA.CKA_WRAP_WITH_TRUSTED && a.GetValueAsBool()));
                    Assert.Equal((ulong)CKA.CKA_MODIFIABLE, rewrapped.Attributes[^1].Type);
                }
            }
        }
    }

    [Fact]
    public void ImportJob_UnwrappedAsTheImportUses_UnwrapOnlyOaepOnlySensitive()
    {
        using var session = fixture.Base.OpenRawSession();
        using var kwp = fixture.Base.Factories.MechanismFactory.Create(CKM.CKM_AES_KEY_WRAP_PAD);
        var templates = new Templates(fixture.Base.Factories.ObjectAttributeFactory, fixture.Hsm.Profile);
        using var template = templates.UnwrappedRsaPrivateKey(RsaUsage.UnwrapOaep);
        var handle = session.UnwrapKey(kwp, fixture.Base.FindDomainKey(session), fixture.ImportJob.Wrapped.Bytes.ToArray(), template.Attributes);
        try
        {
            var read = session.GetAttributeValue(handle, [CKA.CKA_UNWRAP, CKA.CKA_DECRYPT, CKA.CKA_SIGN, CKA.CKA_SENSITIVE, CKA.CKA_EXTRACTABLE, CKA.CKA_ALLOWED_MECHANISMS]);
            Assert.True(read[0].GetValueAsBool());
            Assert.False(read[1].GetValueAsBool());
            Assert.False(read[2].GetValueAsBool());
            Assert.True(read[3].GetValueAsBool());
            Assert.False(read[4].GetValueAsBool());
            Assert.Equal([CKM.CKM_RSA_PKCS_OAEP], read[5].GetValueAsCkmList());
        }
        finally
        {
            session.DestroyObject(handle);
        }
    }

    [Theory]
    [InlineData(KeyAlgorithm.Aes256Gcm, "CKK_AES", "CKO_SECRET_KEY", "CKA_VALUE_LEN", "CKM_AES_GCM")]
    [InlineData(KeyAlgorithm.HmacSha384, "CKK_GENERIC_SECRET", "CKO_SECRET_KEY", "CKA_VALUE_LEN", "CKM_SHA384_HMAC")]
    [InlineData(KeyAlgorithm.RsaSignPss2048Sha256, "CKK_RSA", "CKO_PRIVATE_KEY", "CKA_MODULUS_BITS", "CKM_RSA_PKCS_PSS")]
    [InlineData(KeyAlgorithm.EcSignP256Sha256, "CKK_EC", "CKO_PRIVATE_KEY", null, "CKM_ECDSA")]
    public async Task Describe_GeneratedVersion_ReportsSensitiveUnextractableUnwrappedCopy(KeyAlgorithm algorithm, string keyType, string keyClass, string? sizeAttribute, string mechanism)
    {
        var spec = KeyAlgorithms.Of(algorithm);
        var key = new KeyMaterialRef(KeyVersionId.NewId(), (await fixture.Hsm.GenerateKeyVersionAsync(algorithm, default)).Wrapped);

        var described = await fixture.Hsm.DescribeKeyVersionAsync(key, algorithm, default);

        var a = described.Attributes;
        Assert.Equal(keyClass, a["CKA_CLASS"]);
        Assert.Equal(keyType, a["CKA_KEY_TYPE"]);
        Assert.Equal(mechanism, a["CKA_ALLOWED_MECHANISMS"]);
        foreach (var (name, value) in new[]
        {
            ("CKA_TOKEN", "false"), ("CKA_PRIVATE", "true"), ("CKA_SENSITIVE", "true"), ("CKA_EXTRACTABLE", "false"),
            ("CKA_LOCAL", "false"), ("CKA_NEVER_EXTRACTABLE", "false"), ("CKA_ALWAYS_SENSITIVE", "false"),
            ("CKA_MODIFIABLE", "false"), ("CKA_DERIVE", "false"), ("CKA_UNWRAP", "false"),
        })
        {
            Assert.True(a.TryGetValue(name, out var read) && read == value, $"{name} = {read ?? "(absent)"}, expected {value}");
        }

        if (sizeAttribute == "CKA_MODULUS_BITS")
        {
            Assert.Equal("2048", a[sizeAttribute]);
        }
        else if (sizeAttribute is not null)
        {
            // SoftHSM reports CKA_VALUE_LEN = 0 on unwrapped secrets (the profile's note).
            Assert.Equal("0", a[sizeAttribute]);
        }

        Assert.Equal(spec.IsAsymmetric, described.CheckValue is null);
        Assert.Equal(spec.IsAsymmetric ? null : 8, described.CheckValue?.Length);
    }

    private async Task<KmsException> RefusedAsync(KeyAlgorithm algorithm, byte[] wrapped, byte[]? publicKey)
    {
        var e = await Assert.ThrowsAsync<KmsException>(async () =>
            await fixture.Hsm.ImportKeyVersionAsync(fixture.ImportJob, ImportMethod.RsaOaep3072Sha1Aes256, algorithm, wrapped, publicKey, default));
        Assert.True(e.Code == KmsErrorCode.InvalidArgument, $"{e.Code}: {e.Message}");
        return e;
    }

    internal static byte[] AesCheckValue(byte[] key)
    {
        var tag = new byte[16];
        using var aes = new AesGcm(key, 16);
        aes.Encrypt(new byte[12], ReadOnlySpan<byte>.Empty, Span<byte>.Empty, tag, CheckValueText);
        return tag[..8];
    }

    private static byte[] Hmac(KeyAlgorithmSpec spec, byte[] key, byte[] data) => spec.Digest switch
    {
        DigestAlgorithm.Sha256 => HMACSHA256.HashData(key, data),
        DigestAlgorithm.Sha384 => HMACSHA384.HashData(key, data),
        _ => HMACSHA512.HashData(key, data),
    };
}

internal static class HsmTestExtensions
{
    /// <summary>Drops a version's cached copies and lets the next call destroy them, so object counts return to where they were.</summary>
    public static async Task EvictAndDrainAsync(this Pkcs11Hsm hsm, KeyMaterialRef key)
    {
        hsm.EvictKey(key.Id);
        await hsm.GenerateRandomAsync(1, default);
    }
}
