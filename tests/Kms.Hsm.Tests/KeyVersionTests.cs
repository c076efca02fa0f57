using System.Security.Cryptography;
using Kms.Core.Errors;
using Kms.Core.Keys;
using Kms.Core.Ports;
using Net.Pkcs11Interop.Common;
using Net.Pkcs11Interop.HighLevelAPI;

namespace Kms.Hsm.Tests;

/// <summary>Key versions: generated inside, wrapped, used as unextractable session objects.</summary>
public sealed class KeyVersionTests(HsmFixture fixture) : IClassFixture<HsmFixture>
{
    [Fact]
    public async Task GenerateAes256Key_ReturnsKwpBlob_AndLeavesNoCopyBehind()
    {
        var before = CountObjects(token: false);
        var tokenBefore = CountObjects(token: true);

        var wrapped = await fixture.Hsm.GenerateAes256KeyAsync(default);

        Assert.Equal(40, wrapped.Bytes.Length); // RFC 5649: 32-byte key + 8-byte integrity block
        Assert.Equal(before, CountObjects(token: false));
        Assert.Equal(tokenBefore, CountObjects(token: true));
    }

    [Fact]
    public async Task GenerateAes256Key_TwoCalls_DifferentMaterial()
    {
        var a = await fixture.Hsm.GenerateAes256KeyAsync(default);
        var b = await fixture.Hsm.GenerateAes256KeyAsync(default);
        Assert.NotEqual(a.Bytes.ToArray(), b.Bytes.ToArray());
    }

    [Fact]
    public async Task UnwrappedVersion_IsSensitiveUnextractableSessionObject()
    {
        var key = new KeyMaterialRef(KeyVersionId.NewId(), await fixture.Hsm.GenerateAes256KeyAsync(default));
        var before = SessionKeyHandles();
        await fixture.Hsm.EncryptAesGcmAsync(key, new byte[12], [], [1, 2, 3], default);
        using var session = fixture.OpenRawSession();
        var unwrapped = SessionKeyHandles().Except(before).Single();

        var read = session.GetAttributeValue(fixture.Factories.ObjectHandleFactory.Create(unwrapped),
            [CKA.CKA_TOKEN, CKA.CKA_SENSITIVE, CKA.CKA_EXTRACTABLE, CKA.CKA_WRAP, CKA.CKA_UNWRAP, CKA.CKA_SIGN, CKA.CKA_DERIVE, CKA.CKA_MODIFIABLE, CKA.CKA_VALUE, CKA.CKA_ALLOWED_MECHANISMS]);
        Assert.False(read[0].GetValueAsBool());
        Assert.True(read[1].GetValueAsBool());
        Assert.False(read[2].GetValueAsBool());
        Assert.False(read[3].GetValueAsBool());
        Assert.False(read[4].GetValueAsBool());
        Assert.False(read[5].GetValueAsBool());
        Assert.False(read[6].GetValueAsBool());
        Assert.False(read[7].GetValueAsBool());
        Assert.True(read[8].CannotBeRead);
        Assert.Equal([CKM.CKM_AES_GCM], read[9].GetValueAsCkmList());

        using var kwp = fixture.Factories.MechanismFactory.Create(CKM.CKM_AES_KEY_WRAP_PAD);
        var e = Assert.Throws<Pkcs11Exception>(() => session.WrapKey(kwp, fixture.FindDomainKey(session), fixture.Factories.ObjectHandleFactory.Create(unwrapped)));
        Assert.Equal(CKR.CKR_KEY_UNEXTRACTABLE, e.RV);
    }

    [Fact]
    public async Task EncryptAesGcm_KnownKey_MatchesDotNetAesGcm()
    {
        var keyBytes = RandomNumberGenerator.GetBytes(32);
        var key = fixture.ImportKnownKey(keyBytes);
        var iv = RandomNumberGenerator.GetBytes(12);
        var aad = RandomNumberGenerator.GetBytes(45);
        var plaintext = RandomNumberGenerator.GetBytes(1000);

        var fromHsm = await fixture.Hsm.EncryptAesGcmAsync(key, iv, aad, plaintext, default);

        var expected = new byte[plaintext.Length + 16];
        using (var aes = new AesGcm(keyBytes, 16))
        {
            aes.Encrypt(iv, plaintext, expected.AsSpan(0, plaintext.Length), expected.AsSpan(plaintext.Length), aad);
        }

        Assert.Equal(expected, fromHsm);
        Assert.Equal(plaintext, await fixture.Hsm.DecryptAesGcmAsync(key, iv, aad, expected, default));
    }

    [Theory]
    [InlineData(0)]
    [InlineData(5)]
    [InlineData(-1)]
    public async Task DecryptAesGcm_Tampered_DecryptionFailedNotUnavailable(int position)
    {
        var key = new KeyMaterialRef(KeyVersionId.NewId(), await fixture.Hsm.GenerateAes256KeyAsync(default));
        var iv = new byte[12];
        var sealedBytes = await fixture.Hsm.EncryptAesGcmAsync(key, iv, [7], [1, 2, 3, 4, 5, 6], default);
        sealedBytes[position < 0 ? sealedBytes.Length + position : position] ^= 0x80;
        var generation = fixture.Hsm.Generation;

        var e = await Assert.ThrowsAsync<KmsException>(async () => await fixture.Hsm.DecryptAesGcmAsync(key, iv, [7], sealedBytes, default));
        Assert.Equal(KmsErrorCode.DecryptionFailed, e.Code);

        // The session is fine afterwards: no recovery was triggered.
        Assert.Equal(generation, fixture.Hsm.Generation);
        Assert.Equal(22, (await fixture.Hsm.EncryptAesGcmAsync(key, iv, [], [1, 2, 3, 4, 5, 6], default)).Length);
    }

    [Fact]
    public async Task DecryptAesGcm_WrongAad_DecryptionFailed()
    {
        var key = new KeyMaterialRef(KeyVersionId.NewId(), await fixture.Hsm.GenerateAes256KeyAsync(default));
        var sealedBytes = await fixture.Hsm.EncryptAesGcmAsync(key, new byte[12], [1], [9, 9], default);
        var e = await Assert.ThrowsAsync<KmsException>(async () => await fixture.Hsm.DecryptAesGcmAsync(key, new byte[12], [2], sealedBytes, default));
        Assert.Equal(KmsErrorCode.DecryptionFailed, e.Code);
    }

    [Fact]
    public async Task Encrypt_CorruptWrappedMaterial_InternalNotDecryptionFailed()
    {
        var wrapped = (await fixture.Hsm.GenerateAes256KeyAsync(default)).Bytes.ToArray();
        wrapped[3] ^= 1;
        var key = new KeyMaterialRef(KeyVersionId.NewId(), new Kms.Core.Crypto.WrappedKeyMaterial(wrapped));
        var e = await Assert.ThrowsAsync<KmsException>(async () => await fixture.Hsm.EncryptAesGcmAsync(key, new byte[12], [], [1], default));
        Assert.Equal(KmsErrorCode.Internal, e.Code);
    }

    [Fact]
    public async Task GenerateRandom_ReturnsRequestedLengthAndVaries()
    {
        var a = await fixture.Hsm.GenerateRandomAsync(32, default);
        var b = await fixture.Hsm.GenerateRandomAsync(32, default);
        Assert.Equal(32, a.Length);
        Assert.NotEqual(a, b);
    }

    [Fact]
    public async Task ConcurrentUse_ManyKeysManyTasks_AllRoundTrip()
    {
        var keys = new List<KeyMaterialRef>();
        for (var i = 0; i < 8; i++)
        {
            keys.Add(new KeyMaterialRef(KeyVersionId.NewId(), await fixture.Hsm.GenerateAes256KeyAsync(default)));
        }

        await Parallel.ForEachAsync(Enumerable.Range(0, 2000), new ParallelOptions { MaxDegreeOfParallelism = 16 }, async (i, ct) =>
        {
            var key = keys[i % keys.Count];
            var iv = await fixture.Hsm.GenerateRandomAsync(12, ct);
            var plaintext = BitConverter.GetBytes(i);
            var sealedBytes = await fixture.Hsm.EncryptAesGcmAsync(key, iv, [(byte)i], plaintext, ct);
            Assert.Equal(plaintext, await fixture.Hsm.DecryptAesGcmAsync(key, iv, [(byte)i], sealedBytes, ct));
        });
    }

    private int CountObjects(bool token)
    {
        using var session = fixture.OpenRawSession();
        return Native.With(
        [
            fixture.Factories.ObjectAttributeFactory.Create(CKA.CKA_CLASS, CKO.CKO_SECRET_KEY),
            fixture.Factories.ObjectAttributeFactory.Create(CKA.CKA_TOKEN, token),
        ], session.FindAllObjects).Count;
    }

    private HashSet<ulong> SessionKeyHandles()
    {
        using var session = fixture.OpenRawSession();
        return Native.With(
        [
            fixture.Factories.ObjectAttributeFactory.Create(CKA.CKA_CLASS, CKO.CKO_SECRET_KEY),
            fixture.Factories.ObjectAttributeFactory.Create(CKA.CKA_TOKEN, false),
        ], session.FindAllObjects).Select(h => h.ObjectId).ToHashSet();
    }
}
