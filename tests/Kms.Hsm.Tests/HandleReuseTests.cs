using System.Security.Cryptography;
using Kms.Core.Crypto;
using Kms.Core.Errors;
using Kms.Core.Keys;
using Kms.Core.Ports;
using Kms.Testing;
using Microsoft.Extensions.Logging.Abstractions;
using Net.Pkcs11Interop.Common;
using Net.Pkcs11Interop.HighLevelAPI;

namespace Kms.Hsm.Tests;

/// <summary>
/// SoftHSM numbers sessions and objects from one counter that starts again at every
/// <c>C_Initialize</c>: after a re-initialisation the same sequence of calls gives the same handle
/// numbers to other objects. A handle cached before must never be used after — the test makes
/// another key's copy take the very number a cached copy had, and checks every ciphertext with .NET.
/// </summary>
[Collection(ExternalTokenWriters.Name)] // alone: other tests' sessions and objects would take numbers from the counter
public sealed class HandleReuseTests
{
    [Theory]
    [InlineData(false)] // re-initialised by another user of the module (a region's recovery or recycle)
    [InlineData(true)] // finalised behind every user's back (a crashed client library), then recovered
    public async Task AfterReinitialisation_AnotherKeysCopyHasTheCachedHandleNumber_EachCallStillUsesItsOwnKey(bool finalizedBehindOurBack)
    {
        var token = SoftHsm.CreateToken();
        await using var hsm = Pkcs11Hsm.Open(token.Options(sessions: 2, cacheCapacity: 100), NullLogger.Instance);
        var valueA = RandomNumberGenerator.GetBytes(32);
        var valueB = RandomNumberGenerator.GetBytes(32);
        var keyA = WrapKnown(hsm, token, valueA);
        var keyB = WrapKnown(hsm, token, valueB);

        // Each generation starts from a fresh counter, and runs the same calls up to its first unwrap.
        hsm.Module.Reinitialize(hsm.Module.Generation);
        var iv = RandomNumberGenerator.GetBytes(12);
        var sealedA = await hsm.EncryptAesGcmAsync(keyA, iv, [], [1, 1, 1], default);
        var handleA = Assert.Single(SessionKeyHandles(hsm, token));

        if (finalizedBehindOurBack)
        {
            hsm.Module.FinalizeForFaultInjection();
            var down = await Assert.ThrowsAsync<KmsException>(async () => await hsm.EncryptAesGcmAsync(keyB, iv, [], [2, 2, 2], default));
            Assert.Equal(KmsErrorCode.Unavailable, down.Code);
        }
        else
        {
            hsm.Module.Reinitialize(hsm.Module.Generation);
        }

        var sealedB = await hsm.EncryptAesGcmAsync(keyB, iv, [], [2, 2, 2], default);
        var handleB = Assert.Single(SessionKeyHandles(hsm, token));
        Assert.True(handleA == handleB, $"the test needs B's copy to take A's old number ({handleA}); it got {handleB}");

        // A is asked for again: it must be unwrapped anew, not found at its old number (B's copy now).
        var sealedAgain = await hsm.EncryptAesGcmAsync(keyA, iv, [], [1, 1, 1], default);
        Assert.Equal([1, 1, 1], OpenWith(valueA, iv, sealedA));
        Assert.Equal([2, 2, 2], OpenWith(valueB, iv, sealedB));
        Assert.Equal([1, 1, 1], OpenWith(valueA, iv, sealedAgain));
        Assert.Null(OpenWith(valueB, iv, sealedAgain));
        Assert.Equal([1, 1, 1], await hsm.DecryptAesGcmAsync(keyA, iv, [], sealedA, default));
        var wrongKey = await Assert.ThrowsAsync<KmsException>(async () => await hsm.DecryptAesGcmAsync(keyB, iv, [], sealedA, default));
        Assert.Equal(KmsErrorCode.DecryptionFailed, wrongKey.Code);
    }

    private static byte[]? OpenWith(byte[] key, byte[] iv, byte[] sealedBytes)
    {
        using var gcm = new AesGcm(key, 16);
        var plaintext = new byte[sealedBytes.Length - 16];
        try
        {
            gcm.Decrypt(iv, sealedBytes.AsSpan(0, plaintext.Length), sealedBytes.AsSpan(plaintext.Length), plaintext);
            return plaintext;
        }
        catch (AuthenticationTagMismatchException)
        {
            return null;
        }
    }

    // The adapter's key copies on the token, by handle number, read with a session of the test's own.
    private static List<ulong> SessionKeyHandles(Pkcs11Hsm hsm, TestToken token) =>
        hsm.Module.Call(library =>
        {
            var a = hsm.Module.Factories.ObjectAttributeFactory;
            using var session = SlotList.FindToken(library, token.Label, SoftHsm.ModulePath).Slot.OpenSession(SessionType.ReadOnly);
            return Native.With([a.Create(CKA.CKA_CLASS, CKO.CKO_SECRET_KEY), a.Create(CKA.CKA_TOKEN, false)], session.FindAllObjects)
                .Select(h => h.ObjectId).ToList();
        });

    // A known AES key wrapped under the domain key, through a raw session (as HsmFixture.ImportKnownKey).
    private static KeyMaterialRef WrapKnown(Pkcs11Hsm hsm, TestToken token, byte[] value) =>
        hsm.Module.Call(library =>
        {
            var a = hsm.Module.Factories.ObjectAttributeFactory;
            using var session = SlotList.FindToken(library, token.Label, SoftHsm.ModulePath).Slot.OpenSession(SessionType.ReadWrite);
            var domainKey = Native.With([a.Create(CKA.CKA_CLASS, CKO.CKO_SECRET_KEY), a.Create(CKA.CKA_LABEL, "kms-domain-key")], session.FindAllObjects).Single();
            var handle = Native.With(
            [
                a.Create(CKA.CKA_CLASS, CKO.CKO_SECRET_KEY), a.Create(CKA.CKA_KEY_TYPE, CKK.CKK_AES), a.Create(CKA.CKA_TOKEN, false),
                a.Create(CKA.CKA_PRIVATE, true), a.Create(CKA.CKA_SENSITIVE, true), a.Create(CKA.CKA_EXTRACTABLE, true),
                a.Create(CKA.CKA_ENCRYPT, false), a.Create(CKA.CKA_DECRYPT, false), a.Create(CKA.CKA_VALUE, value),
            ], session.CreateObject);
            try
            {
                using var kwp = hsm.Module.Factories.MechanismFactory.Create(CKM.CKM_AES_KEY_WRAP_PAD);
                return new KeyMaterialRef(KeyVersionId.NewId(), new WrappedKeyMaterial(session.WrapKey(kwp, domainKey, handle)));
            }
            finally
            {
                session.DestroyObject(handle);
            }
        });
}
