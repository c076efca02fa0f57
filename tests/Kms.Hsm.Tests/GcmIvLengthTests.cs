using System.Security.Cryptography;
using Kms.Core.Errors;
using Kms.Core.Keys;
using Kms.Core.Ports;
using Net.Pkcs11Interop.Common;
using Net.Pkcs11Interop.HighLevelAPI;

namespace Kms.Hsm.Tests;

/// <summary>
/// AES-GCM goes to the HSM only with a 12-byte IV. SoftHSM takes any length and gives some
/// distinct IVs one keystream and tag; the adapter took any length too (an empty IV sealed).
/// </summary>
public sealed class GcmIvLengthTests(HsmFixture fixture) : IClassFixture<HsmFixture>
{
    [Fact]
    public void SoftHsm_DistinctIvsOfOtherLengths_SameKeystreamAndTag()
    {
        // Why the adapter checks: (empty, 16 zero bytes) and (12 zero bytes, 1,024 zero bytes) collide.
        using var session = fixture.OpenRawSession();
        var a = fixture.Factories.ObjectAttributeFactory;
        var key = Native.With(
        [
            a.Create(CKA.CKA_CLASS, CKO.CKO_SECRET_KEY), a.Create(CKA.CKA_KEY_TYPE, CKK.CKK_AES), a.Create(CKA.CKA_TOKEN, false),
            a.Create(CKA.CKA_PRIVATE, true), a.Create(CKA.CKA_ENCRYPT, true), a.Create(CKA.CKA_VALUE, RandomNumberGenerator.GetBytes(32)),
        ], session.CreateObject);
        try
        {
            byte[] Seal(byte[] iv)
            {
                using var parameters = fixture.Factories.MechanismParamsFactory.CreateCkGcmParams(iv, (ulong)iv.Length * 8, [], 128);
                using var mechanism = fixture.Factories.MechanismFactory.Create(CKM.CKM_AES_GCM, parameters);
                return session.Encrypt(mechanism, key, new byte[16]);
            }

            Assert.Equal(Seal([]), Seal(new byte[16]));
            Assert.Equal(Seal(new byte[12]), Seal(new byte[1024]));
        }
        finally
        {
            session.DestroyObject(key);
        }
    }

    [Theory]
    [InlineData(0)]
    [InlineData(1)]
    [InlineData(11)]
    [InlineData(13)]
    [InlineData(16)]
    [InlineData(1024)]
    public async Task IvNotTwelveBytes_NothingSealed_NothingOpened(int length)
    {
        var key = new KeyMaterialRef(KeyVersionId.NewId(), await fixture.Hsm.GenerateAes256KeyAsync(default));
        var iv = new byte[length];
        var sealedBytes = await fixture.Hsm.EncryptAesGcmAsync(key, new byte[12], [], [1, 2, 3], default);

        var encrypt = await Assert.ThrowsAsync<KmsException>(async () => await fixture.Hsm.EncryptAesGcmAsync(key, iv, [], [1, 2, 3], default));
        Assert.Equal(KmsErrorCode.Internal, encrypt.Code);
        var many = await Assert.ThrowsAsync<KmsException>(async () => await fixture.Hsm.EncryptAesGcmManyAsync(key, [new AesGcmInput(new byte[12], [], [1]), new AesGcmInput(iv, [], [2])], default));
        Assert.Equal(KmsErrorCode.Internal, many.Code);

        // A 16-byte zero IV opens what the empty IV sealed on SoftHSM (and 1,024 zero bytes what 12 did): refused as a wrong IV.
        var decrypt = await Assert.ThrowsAsync<KmsException>(async () => await fixture.Hsm.DecryptAesGcmAsync(key, iv, [], sealedBytes, default));
        Assert.Equal(KmsErrorCode.DecryptionFailed, decrypt.Code);
        var opened = await fixture.Hsm.DecryptAesGcmManyAsync(key, [new AesGcmInput(new byte[12], [], sealedBytes), new AesGcmInput(iv, [], sealedBytes)], default);
        Assert.Equal([1, 2, 3], opened[0]);
        Assert.Null(opened[1]);
    }
}
