using System.Security.Cryptography;
using Kms.Core.Crypto;
using Kms.Core.Errors;
using Kms.Core.Keys;
using Kms.Core.Ports;
using Kms.Testing;
using Microsoft.Extensions.Logging.Abstractions;

namespace Kms.Hsm.Tests;

/// <summary>
/// The pool under callers that give up and calls that fail: no session is lost, and no session
/// goes back to the pool with an operation still open on it.
/// </summary>
[Collection(ReinitializationGroup.Name)] // injected hangs hold the module gate
public sealed class SessionPoolAbuseTests
{
    [Fact]
    public async Task CallersCancelledWhileEverySessionIsBusy_NoSessionLost_EveryOneServesAgain()
    {
        var options = SoftHsm.CreateToken().Options(sessions: 2);
        options.CallTimeout = TimeSpan.FromMinutes(5); // a hang guard only: the hung calls are released, not timed out
        await using var hsm = Pkcs11Hsm.Open(options, NullLogger.Instance);
        var key = new KeyMaterialRef(KeyVersionId.NewId(), await hsm.GenerateAes256KeyAsync(default));
        var generation = hsm.Generation;

        // A hang left in place by a failed assertion would hold the module gate for the rest of the
        // process: every later exclusive hold, and every call behind it, would wait on it.
        try
        {
            for (var round = 0; round < 2; round++)
            {
                // Both sessions held by calls the HSM does not answer.
                hsm.Faults.HangOnly("generate random");
                var held = Enumerable.Range(0, 2).Select(_ => hsm.GenerateRandomAsync(8, default).AsTask()).ToArray();
                await EventuallyAsync(() => hsm.Faults.HungCalls == 2, "both sessions held");

                // Callers queued for a session give up (their tokens cancelled), some before, some while they wait.
                using var cancelled = new CancellationTokenSource();
                cancelled.Cancel();
                using var later = new CancellationTokenSource();
                var waiting = Enumerable.Range(0, 20)
                    .Select(i => hsm.EncryptAesGcmAsync(key, new byte[12], [], [1], i % 2 == 0 ? cancelled.Token : later.Token).AsTask())
                    .ToArray();
                await later.CancelAsync();
                foreach (var call in waiting)
                {
                    await Assert.ThrowsAnyAsync<OperationCanceledException>(() => call);
                }

                hsm.Faults.Clear();
                foreach (var call in held)
                {
                    Assert.Equal(8, (await call).Length);
                }

                Assert.Equal(0, hsm.SessionsInUse);
            }

            // Still both sessions: two hung calls take them again, and nothing recovered on the way.
            hsm.Faults.HangOnly("generate random");
            var again = Enumerable.Range(0, 2).Select(_ => hsm.GenerateRandomAsync(8, default).AsTask()).ToArray();
            await EventuallyAsync(() => hsm.Faults.HungCalls == 2, "both sessions held again");
            hsm.Faults.Clear();
            await Task.WhenAll(again);
            Assert.Equal(generation, hsm.Generation);
        }
        finally
        {
            hsm.Faults.Clear();
        }
    }

    [Fact]
    public async Task OneSession_EveryKindOfFailedOperation_LeavesNothingOpenOnIt_TheNextCallServes()
    {
        // One session: whatever a failure leaves on it, the next call meets.
        await using var hsm = Pkcs11Hsm.Open(SoftHsm.CreateToken().Options(sessions: 1), NullLogger.Instance);
        var aes = new KeyMaterialRef(KeyVersionId.NewId(), await hsm.GenerateAes256KeyAsync(default));
        var oaep = new KeyMaterialRef(KeyVersionId.NewId(), (await hsm.GenerateKeyVersionAsync(KeyAlgorithm.RsaDecryptOaep2048Sha1, default)).Wrapped);
        var job = await hsm.GenerateImportWrappingKeyAsync(ImportMethod.RsaOaep3072Sha1Aes256, default);
        var jobRef = new KeyMaterialRef(KeyVersionId.NewId(), job.Wrapped);
        var generation = hsm.Generation;
        var sealedBytes = await hsm.EncryptAesGcmAsync(aes, new byte[12], [], [9, 9], default);

        var failures = new (string What, Func<Task> Call)[]
        {
            ("GCM: wrong tag", () => hsm.DecryptAesGcmAsync(aes, new byte[12], [], [.. sealedBytes[..^1], (byte)(sealedBytes[^1] ^ 1)], default).AsTask()),
            ("GCM: shorter than a tag", () => hsm.DecryptAesGcmAsync(aes, new byte[12], [], [1, 2, 3], default).AsTask()),
            ("ECDSA: the stored material is an RSA key", () => hsm.SignAsync(oaep, KeyAlgorithm.EcSignP256Sha256, new byte[32], default).AsTask()),
            ("OAEP: garbage", () => hsm.DecryptRsaOaepAsync(oaep, KeyAlgorithm.RsaDecryptOaep2048Sha1, RandomNumberGenerator.GetBytes(256), default).AsTask()),
            ("OAEP: modulus-sized all ones", () => hsm.DecryptRsaOaepAsync(oaep, KeyAlgorithm.RsaDecryptOaep2048Sha1, Enumerable.Repeat((byte)0xFF, 256).ToArray(), default).AsTask()),
            ("import: OAEP block garbage", () => hsm.ImportKeyVersionAsync(jobRef, ImportMethod.RsaOaep3072Sha1Aes256, KeyAlgorithm.Aes256Gcm, RandomNumberGenerator.GetBytes(384 + 40), null, default).AsTask()),
            ("stored material: not a KWP blob", () => hsm.EncryptAesGcmAsync(new KeyMaterialRef(KeyVersionId.NewId(), new WrappedKeyMaterial(RandomNumberGenerator.GetBytes(40))), new byte[12], [], [1], default).AsTask()),
        };
        foreach (var (what, call) in failures)
        {
            var e = await Record.ExceptionAsync(call);
            Assert.True(e is not null, $"{what}: no exception");
            var refused = Assert.IsType<KmsException>(e, exactMatch: false);
            Assert.True(refused.Code is not KmsErrorCode.Unavailable, $"{what}: {refused.Code} {refused.Message}");

            // The same session, straight after: an operation of each kind starts on it.
            Assert.Equal([9, 9], await hsm.DecryptAesGcmAsync(aes, new byte[12], [], sealedBytes, default));
            Assert.Equal(16, (await hsm.GenerateRandomAsync(16, default)).Length);
        }

        Assert.Equal(generation, hsm.Generation);
        Assert.Equal(0, hsm.SessionsInUse);
    }

    private static async Task EventuallyAsync(Func<bool> condition, string what)
    {
        for (var i = 0; i < 6000 && !condition(); i++)
        {
            await Task.Delay(10);
        }

        Assert.True(condition(), $"hang guard: not {what} within a minute");
    }
}
