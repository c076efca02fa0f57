using System.Security.Cryptography;
using Kms.Core.Crypto;
using Kms.Core.Errors;
using Kms.Core.Keys;
using Kms.Core.Ports;
using Net.Pkcs11Interop.Common;
using Net.Pkcs11Interop.HighLevelAPI;

namespace Kms.Hsm.Tests;

/// <summary>
/// EC key versions: pairs generated inside, the private half wrapped under the domain key and
/// used as a sign-only, unextractable session object; signatures checked by .NET's ECDsa.
/// </summary>
public sealed class EcKeyTests(HsmFixture fixture) : IClassFixture<HsmFixture>
{
    [Theory]
    [InlineData(EcCurve.P256, "1.2.840.10045.3.1.7", 256)]
    [InlineData(EcCurve.P384, "1.3.132.0.34", 384)]
    public async Task SignEcdsa_GeneratedPair_VerifiesWithDotNetOnlyForTheSignedDigest(EcCurve curve, string oid, int bits)
    {
        var pair = await fixture.Hsm.GenerateEcKeyPairAsync(curve, default);
        var key = new KeyMaterialRef(KeyVersionId.NewId(), pair.PrivateKey);
        var digest = Digest(curve, "the message");
        var otherDigest = Digest(curve, "another message");

        var signature = await fixture.Hsm.SignEcdsaAsync(key, curve, digest, default);

        using var verifier = ECDsa.Create();
        verifier.ImportSubjectPublicKeyInfo(pair.SubjectPublicKeyInfo, out var read);
        Assert.Equal(pair.SubjectPublicKeyInfo.Length, read);
        Assert.Equal(oid, verifier.ExportParameters(false).Curve.Oid.Value);
        Assert.Equal(bits, verifier.KeySize);
        Assert.Equal(2 * bits / 8, signature.Length);
        Assert.True(verifier.VerifyHash(digest, signature, DSASignatureFormat.IeeeP1363FixedFieldConcatenation));
        Assert.False(verifier.VerifyHash(otherDigest, signature, DSASignatureFormat.IeeeP1363FixedFieldConcatenation));

        // Signing is randomised (no deterministic nonces in SoftHSM): a second signature differs and verifies too.
        var again = await fixture.Hsm.SignEcdsaAsync(key, curve, digest, default);
        Assert.NotEqual(signature, again);
        Assert.True(verifier.VerifyHash(digest, again, DSASignatureFormat.IeeeP1363FixedFieldConcatenation));
    }

    [Theory]
    [InlineData(EcCurve.P256)]
    [InlineData(EcCurve.P384)]
    public async Task GenerateEcKeyPair_LeavesNoObjectBehind(EcCurve curve)
    {
        var sessionBefore = CountObjects(token: false);
        var tokenBefore = CountObjects(token: true);

        var a = await fixture.Hsm.GenerateEcKeyPairAsync(curve, default);
        var b = await fixture.Hsm.GenerateEcKeyPairAsync(curve, default);

        Assert.Equal(sessionBefore, CountObjects(token: false));
        Assert.Equal(tokenBefore, CountObjects(token: true));
        Assert.NotEqual(a.SubjectPublicKeyInfo, b.SubjectPublicKeyInfo);
        Assert.NotEqual(a.PrivateKey.Bytes.ToArray(), b.PrivateKey.Bytes.ToArray());
    }

    [Fact]
    public void GenerationTemplates_ReadBack_PrivateSignOnlySensitive_PublicVerifyOnly()
    {
        // The generated halves are destroyed before the adapter returns, so their templates are
        // checked here on a session of our own. SoftHSM defaults both halves to most usages
        // (private: SIGN, DECRYPT, UNWRAP, SIGN_RECOVER; public: VERIFY, ENCRYPT, WRAP, and
        // CKA_PRIVATE=false): every one must be set explicitly.
        var templates = new Templates(fixture.Factories.ObjectAttributeFactory, fixture.Hsm.Profile);
        using var session = fixture.OpenRawSession();
        using var generate = fixture.Factories.MechanismFactory.Create(CKM.CKM_EC_KEY_PAIR_GEN);
        using var publicTemplate = templates.GeneratedEcPublicKey(EcCurveParameters.P384.EcParams);
        using var privateTemplate = templates.GeneratedEcPrivateKey();
        session.GenerateKeyPair(generate, publicTemplate.Attributes, privateTemplate.Attributes, out var publicKey, out var privateKey);
        try
        {
            AssertFlags(session, privateKey,
            [
                (CKA.CKA_TOKEN, false), (CKA.CKA_PRIVATE, true), (CKA.CKA_SENSITIVE, true), (CKA.CKA_EXTRACTABLE, true),
                (CKA.CKA_SIGN, true), (CKA.CKA_SIGN_RECOVER, false), (CKA.CKA_DECRYPT, false), (CKA.CKA_UNWRAP, false),
                (CKA.CKA_DERIVE, false), (CKA.CKA_MODIFIABLE, false), (CKA.CKA_COPYABLE, false), (CKA.CKA_LOCAL, true),
            ]);
            AssertFlags(session, publicKey,
            [
                (CKA.CKA_TOKEN, false), (CKA.CKA_PRIVATE, true), (CKA.CKA_VERIFY, true), (CKA.CKA_VERIFY_RECOVER, false),
                (CKA.CKA_ENCRYPT, false), (CKA.CKA_WRAP, false), (CKA.CKA_DERIVE, false), (CKA.CKA_MODIFIABLE, false),
            ]);
            Assert.Equal([CKM.CKM_ECDSA], session.GetAttributeValue(privateKey, [CKA.CKA_ALLOWED_MECHANISMS])[0].GetValueAsCkmList());
            Assert.True(session.GetAttributeValue(privateKey, [CKA.CKA_VALUE])[0].CannotBeRead);
        }
        finally
        {
            session.DestroyObject(privateKey);
            session.DestroyObject(publicKey);
        }
    }

    [Fact]
    public async Task UnwrappedEcKey_IsSensitiveUnextractableSignOnlySessionObject_CachedAndEvictable()
    {
        var key = new KeyMaterialRef(KeyVersionId.NewId(), (await fixture.Hsm.GenerateEcKeyPairAsync(EcCurve.P256, default)).PrivateKey);
        var before = PrivateKeyHandles();
        await fixture.Hsm.SignEcdsaAsync(key, EcCurve.P256, Digest(EcCurve.P256, "x"), default);
        await fixture.Hsm.SignEcdsaAsync(key, EcCurve.P256, Digest(EcCurve.P256, "y"), default);
        var unwrapped = PrivateKeyHandles().Except(before).Single(); // the second signature used the cached copy

        using var session = fixture.OpenRawSession();
        var handle = fixture.Factories.ObjectHandleFactory.Create(unwrapped);
        AssertFlags(session, handle,
        [
            (CKA.CKA_TOKEN, false), (CKA.CKA_PRIVATE, true), (CKA.CKA_SENSITIVE, true), (CKA.CKA_EXTRACTABLE, false),
            (CKA.CKA_SIGN, true), (CKA.CKA_SIGN_RECOVER, false), (CKA.CKA_DECRYPT, false), (CKA.CKA_UNWRAP, false),
            (CKA.CKA_DERIVE, false), (CKA.CKA_MODIFIABLE, false), (CKA.CKA_COPYABLE, false),
        ]);

        var more = session.GetAttributeValue(handle, [CKA.CKA_KEY_TYPE, CKA.CKA_VALUE, CKA.CKA_ALLOWED_MECHANISMS, CKA.CKA_EC_PARAMS]);
        Assert.Equal((ulong)CKK.CKK_EC, more[0].GetValueAsUlong());
        Assert.True(more[1].CannotBeRead);
        Assert.Equal([CKM.CKM_ECDSA], more[2].GetValueAsCkmList());
        Assert.Equal(Convert.FromHexString("06082A8648CE3D030107"), more[3].GetValueAsByteArray());

        using var kwp = fixture.Factories.MechanismFactory.Create(CKM.CKM_AES_KEY_WRAP_PAD);
        var e = Assert.Throws<Pkcs11Exception>(() => session.WrapKey(kwp, fixture.FindDomainKey(session), handle));
        Assert.Equal(CKR.CKR_KEY_UNEXTRACTABLE, e.RV);
        var flip = Assert.Throws<Pkcs11Exception>(() => Native.With([fixture.Factories.ObjectAttributeFactory.Create(CKA.CKA_EXTRACTABLE, true)], t => session.SetAttributeValue(handle, t)));
        Assert.Equal(CKR.CKR_ACTION_PROHIBITED, flip.RV);

        fixture.Hsm.EvictKey(key.Id);
        await fixture.Hsm.GenerateRandomAsync(1, default); // drains the destroy queue
        Assert.DoesNotContain(unwrapped, PrivateKeyHandles());
    }

    [Theory]
    [InlineData(EcCurve.P256, 0)]
    [InlineData(EcCurve.P256, 20)]
    [InlineData(EcCurve.P256, 48)]
    [InlineData(EcCurve.P384, 32)]
    [InlineData(EcCurve.P384, 64)]
    public async Task SignEcdsa_WrongDigestLength_InvalidArgument(EcCurve curve, int length)
    {
        var key = new KeyMaterialRef(KeyVersionId.NewId(), (await fixture.Hsm.GenerateEcKeyPairAsync(curve, default)).PrivateKey);
        var before = PrivateKeyHandles();

        var e = await Assert.ThrowsAsync<KmsException>(async () => await fixture.Hsm.SignEcdsaAsync(key, curve, new byte[length], default));

        Assert.Equal(KmsErrorCode.InvalidArgument, e.Code);
        Assert.Contains("digest", e.Message, StringComparison.Ordinal);
        Assert.Contains($"not {length}", e.Message, StringComparison.Ordinal);
        Assert.Equal(before, PrivateKeyHandles()); // refused before the HSM was asked to unwrap
    }

    [Fact]
    public async Task SignEcdsa_CurveOtherThanTheKeys_InternalAndCopyDestroyed()
    {
        var key = new KeyMaterialRef(KeyVersionId.NewId(), (await fixture.Hsm.GenerateEcKeyPairAsync(EcCurve.P256, default)).PrivateKey);
        var before = PrivateKeyHandles();

        var e = await Assert.ThrowsAsync<KmsException>(async () => await fixture.Hsm.SignEcdsaAsync(key, EcCurve.P384, Digest(EcCurve.P384, "x"), default));

        Assert.Equal(KmsErrorCode.Internal, e.Code);
        Assert.Contains("not a P-384 private key", e.Message, StringComparison.Ordinal);
        Assert.Equal(before, PrivateKeyHandles());
    }

    [Fact]
    public async Task SignEcdsa_CorruptWrappedMaterial_Internal()
    {
        var wrapped = (await fixture.Hsm.GenerateEcKeyPairAsync(EcCurve.P256, default)).PrivateKey.Bytes.ToArray();
        wrapped[3] ^= 1;
        var key = new KeyMaterialRef(KeyVersionId.NewId(), new WrappedKeyMaterial(wrapped));
        var generation = fixture.Hsm.Generation;

        var e = await Assert.ThrowsAsync<KmsException>(async () => await fixture.Hsm.SignEcdsaAsync(key, EcCurve.P256, Digest(EcCurve.P256, "x"), default));

        Assert.Equal(KmsErrorCode.Internal, e.Code);
        Assert.Equal(generation, fixture.Hsm.Generation);
    }

    [Fact]
    public async Task SameKeyVersionId_AesAndEcCopies_NeverConfused()
    {
        // A caller bug that hands one id to both kinds of operation: each kind has its own
        // cache entry and template, so neither operation is ever given the other's handle.
        var id = KeyVersionId.NewId();
        var aes = new KeyMaterialRef(id, await fixture.Hsm.GenerateAes256KeyAsync(default));
        var ec = new KeyMaterialRef(id, (await fixture.Hsm.GenerateEcKeyPairAsync(EcCurve.P256, default)).PrivateKey);
        var sealedBytes = await fixture.Hsm.EncryptAesGcmAsync(aes, new byte[12], [], [1, 2, 3], default);

        // The AES copy is cached under this id; signing with the AES blob unwraps it as an EC key, which fails.
        var e = await Assert.ThrowsAsync<KmsException>(async () => await fixture.Hsm.SignEcdsaAsync(aes, EcCurve.P256, Digest(EcCurve.P256, "x"), default));
        Assert.Equal(KmsErrorCode.Internal, e.Code);

        // Both kinds cached under one id, each usable for its own purpose.
        Assert.Equal(64, (await fixture.Hsm.SignEcdsaAsync(ec, EcCurve.P256, Digest(EcCurve.P256, "x"), default)).Length);
        Assert.Equal([1, 2, 3], await fixture.Hsm.DecryptAesGcmAsync(aes, new byte[12], [], sealedBytes, default));
        Assert.Equal(64, (await fixture.Hsm.SignEcdsaAsync(ec, EcCurve.P256, Digest(EcCurve.P256, "y"), default)).Length);
    }

    [Fact]
    public async Task ConcurrentSigning_ManyKeysManyTasks_AllVerify()
    {
        var keys = new List<(KeyMaterialRef Key, EcCurve Curve, ECDsa Verifier)>();
        foreach (var curve in new[] { EcCurve.P256, EcCurve.P384, EcCurve.P256, EcCurve.P384 })
        {
            var pair = await fixture.Hsm.GenerateEcKeyPairAsync(curve, default);
            var verifier = ECDsa.Create();
            verifier.ImportSubjectPublicKeyInfo(pair.SubjectPublicKeyInfo, out _);
            keys.Add((new KeyMaterialRef(KeyVersionId.NewId(), pair.PrivateKey), curve, verifier));
        }

        try
        {
            var failures = new System.Collections.Concurrent.ConcurrentBag<int>();
            await Parallel.ForEachAsync(Enumerable.Range(0, 800), new ParallelOptions { MaxDegreeOfParallelism = 8 }, async (i, ct) =>
            {
                var (key, curve, verifier) = keys[i % keys.Count];
                var digest = Digest(curve, i.ToString(System.Globalization.CultureInfo.InvariantCulture));
                var signature = await fixture.Hsm.SignEcdsaAsync(key, curve, digest, ct);
                if (!verifier.VerifyHash(digest, signature, DSASignatureFormat.IeeeP1363FixedFieldConcatenation))
                {
                    failures.Add(i);
                }
            });
            Assert.Empty(failures);
        }
        finally
        {
            foreach (var (_, _, verifier) in keys)
            {
                verifier.Dispose();
            }
        }
    }

    private static void AssertFlags(ISession session, IObjectHandle handle, (CKA Attribute, bool Expected)[] flags)
    {
        var read = session.GetAttributeValue(handle, [.. flags.Select(f => f.Attribute)]);
        for (var i = 0; i < flags.Length; i++)
        {
            Assert.True(flags[i].Expected == read[i].GetValueAsBool(), $"{flags[i].Attribute} should be {flags[i].Expected}");
        }
    }

    internal static byte[] Digest(EcCurve curve, string message)
    {
        var bytes = System.Text.Encoding.UTF8.GetBytes(message);
        return curve == EcCurve.P256 ? SHA256.HashData(bytes) : SHA384.HashData(bytes);
    }

    private int CountObjects(bool token)
    {
        using var session = fixture.OpenRawSession();
        return Native.With([fixture.Factories.ObjectAttributeFactory.Create(CKA.CKA_TOKEN, token)], session.FindAllObjects).Count;
    }

    private HashSet<ulong> PrivateKeyHandles()
    {
        using var session = fixture.OpenRawSession();
        return Native.With(
        [
            fixture.Factories.ObjectAttributeFactory.Create(CKA.CKA_CLASS, CKO.CKO_PRIVATE_KEY),
            fixture.Factories.ObjectAttributeFactory.Create(CKA.CKA_TOKEN, false),
        ], session.FindAllObjects).Select(h => h.ObjectId).ToHashSet();
    }
}
