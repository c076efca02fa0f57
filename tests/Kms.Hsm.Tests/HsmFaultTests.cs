using System.Diagnostics;
using Kms.Core.Errors;
using Kms.Core.Keys;
using Kms.Core.Ports;
using Kms.Testing;
using Microsoft.Extensions.Logging.Abstractions;
using Net.Pkcs11Interop.Common;
using Xunit.Abstractions;

namespace Kms.Hsm.Tests;

/// <summary>
/// Faults injected at the adapter's PKCS#11 boundary (<see cref="HsmFaultInjector"/>): each
/// device-lost return value and a hang answer UNAVAILABLE within a bound, never a wrong answer,
/// and once the fault clears the adapter re-initialises the real SoftHSM module
/// (C_Finalize/C_Initialize, new sessions, login, a new handle generation) and serves again.
/// </summary>
/// <remarks>Runs alone: re-initialising the module affects every user of it in this process.</remarks>
[Collection(ReinitializationGroup.Name)]
public sealed class HsmFaultTests(ITestOutputHelper output)
{
    private static readonly TimeSpan RecoveryBound = TimeSpan.FromSeconds(5);

    // A hung call is held until the test releases it in its finally, so any answer before that proves
    // the caller did not wait on it; the bounds below add that the answer came within twice the call
    // timeout (SECURITY.md claim 86), with half a timeout of slack for a loaded CI machine's
    // scheduling. The timeouts are 2 s so that slack (1 s) covers the stalls seen there (a 300-ms
    // timeout once answered 530 ms past twice its value) and a caller waiting three timeouts still fails.
    private static readonly TimeSpan HangTimeout = TimeSpan.FromSeconds(2);

    private static TimeSpan Bound(HsmOptions options) => (2 * options.CallTimeout) + (options.CallTimeout / 2);

    [Theory]
    [InlineData(CKR.CKR_DEVICE_REMOVED)]
    [InlineData(CKR.CKR_SESSION_HANDLE_INVALID)]
    [InlineData(CKR.CKR_TOKEN_NOT_PRESENT)]
    [InlineData(CKR.CKR_DEVICE_ERROR)]
    public async Task DeviceLost_UnavailableWhileDown_ThenReinitialisesModuleAndServesWithin5s(CKR fault)
    {
        var options = SoftHsm.CreateToken().Options();
        options.RecoveryBackoff = TimeSpan.FromSeconds(1); // the production default
        await using var hsm = Pkcs11Hsm.Open(options, NullLogger.Instance);
        var key = new KeyMaterialRef(KeyVersionId.NewId(), await hsm.GenerateAes256KeyAsync(default));
        byte[] plaintext = [7, 7, 7];
        var sealedBytes = await hsm.EncryptAesGcmAsync(key, new byte[12], [], plaintext, default);
        var moduleGeneration = hsm.Module.Generation;
        var cache = hsm.Cache;
        Assert.Equal(1, cache.Count);

        hsm.Faults.Fail(fault);

        // The first call meets the fault, later ones a failed recovery or its backoff: all UNAVAILABLE, at once.
        for (var i = 0; i < 5; i++)
        {
            var started = Stopwatch.StartNew();
            var e = await Assert.ThrowsAsync<KmsException>(async () => await hsm.DecryptAesGcmAsync(key, new byte[12], [], sealedBytes, default));
            Assert.Equal(KmsErrorCode.Unavailable, e.Code);
            Assert.True(started.Elapsed < TimeSpan.FromSeconds(1), $"call {i} took {started.Elapsed}");
        }

        // A recovery attempt met the fault while re-opening and re-initialised the real module.
        Assert.True(hsm.Module.Generation > moduleGeneration, "no C_Finalize/C_Initialize happened");

        hsm.Faults.Clear();
        var recovery = Stopwatch.StartNew();
        var decrypted = await UntilServedAsync(() => hsm.DecryptAesGcmAsync(key, new byte[12], [], sealedBytes, default));
        output.WriteLine($"{fault}: served again {recovery.ElapsedMilliseconds} ms after the fault cleared (backoff {options.RecoveryBackoff})");

        Assert.True(recovery.Elapsed < RecoveryBound, $"recovered after {recovery.Elapsed}");
        Assert.Equal(plaintext, decrypted);
        Assert.NotSame(cache, hsm.Cache);
        Assert.True(hsm.Cache.Generation > cache.Generation);
        Assert.Equal(1, hsm.Cache.Count); // unwrapped again into the new generation; the old handles are gone with their sessions
    }

    [Fact]
    public async Task OtherReturnValue_InternalNotUnavailable_NoRecovery()
    {
        await using var hsm = Pkcs11Hsm.Open(SoftHsm.CreateToken().Options(), NullLogger.Instance);
        var generation = hsm.Generation;

        hsm.Faults.Fail(CKR.CKR_FUNCTION_FAILED);
        var e = await Assert.ThrowsAsync<KmsException>(async () => await hsm.GenerateRandomAsync(8, default));
        hsm.Faults.Clear();

        Assert.Equal(KmsErrorCode.Internal, e.Code);
        Assert.Equal(8, (await hsm.GenerateRandomAsync(8, default)).Length);
        Assert.Equal(generation, hsm.Generation);
    }

    [Fact]
    public async Task Hang_CallerAnswersUnavailableAtTheTimeout_SessionAbandoned_RecoversOnceItReturns()
    {
        var options = SoftHsm.CreateToken().Options();
        options.CallTimeout = HangTimeout;
        await using var hsm = Pkcs11Hsm.Open(options, NullLogger.Instance);
        var key = new KeyMaterialRef(KeyVersionId.NewId(), await hsm.GenerateAes256KeyAsync(default));
        var sealedBytes = await hsm.EncryptAesGcmAsync(key, new byte[12], [], [5], default);
        var generation = hsm.Generation;

        hsm.Faults.Hang();
        try
        {
            for (var i = 0; i < 4; i++)
            {
                var started = Stopwatch.StartNew();
                var e = await Assert.ThrowsAsync<KmsException>(async () => await hsm.DecryptAesGcmAsync(key, new byte[12], [], sealedBytes, default));
                Assert.Equal(KmsErrorCode.Unavailable, e.Code);
                Assert.True(started.Elapsed < Bound(options), $"call {i} took {started.Elapsed}");
            }

            Assert.Equal(1, hsm.AbandonedCalls);
        }
        finally
        {
            hsm.Faults.Clear(); // else the adapter's disposal waits for the hung calls
        }

        var recovery = Stopwatch.StartNew();
        Assert.Equal([5], await UntilServedAsync(() => hsm.DecryptAesGcmAsync(key, new byte[12], [], sealedBytes, default)));
        output.WriteLine($"hang: served again {recovery.ElapsedMilliseconds} ms after the fault cleared");

        Assert.True(recovery.Elapsed < RecoveryBound, $"recovered after {recovery.Elapsed}");
        Assert.True(hsm.Generation > generation);
        Assert.Equal(0, hsm.AbandonedCalls);

        // The abandoned decryption finished once released: its plaintext, read by nobody, was zeroed.
        Assert.Equal(1, hsm.ZeroedLateResults);
    }

    [Fact]
    public async Task Hang_ManyConcurrentCallers_AtMostOnePoolOfCallsAbandoned_RestRefusedFast()
    {
        // Both sessions must be taken before the first hung call's bound ends (it faults the generation,
        // and later callers are refused without hanging): 2 s leaves a loaded machine time to schedule
        // the second (at 500 ms a CI run saw only one hang).
        var options = SoftHsm.CreateToken().Options(sessions: 2);
        options.CallTimeout = HangTimeout;
        await using var hsm = Pkcs11Hsm.Open(options, NullLogger.Instance);

        hsm.Faults.Hang();
        try
        {
            var started = Stopwatch.StartNew();
            var calls = Enumerable.Range(0, 8).Select(_ => Task.Run(async () => await hsm.GenerateRandomAsync(4, default))).ToList();
            foreach (var call in calls)
            {
                var e = await Assert.ThrowsAsync<KmsException>(async () => await call);
                Assert.Equal(KmsErrorCode.Unavailable, e.Code);
            }

            Assert.True(started.Elapsed < Bound(options), $"took {started.Elapsed}");
            Assert.Equal(2, hsm.AbandonedCalls);
            Assert.Equal(2, hsm.Faults.HungCalls);

            // At the bound: refused without touching the HSM, so without waiting.
            var refused = Stopwatch.StartNew();
            await Assert.ThrowsAsync<KmsException>(async () => await hsm.GenerateRandomAsync(4, default));
            Assert.True(refused.Elapsed < options.CallTimeout / 2, $"took {refused.Elapsed}"); // a hang would take the whole bound
            Assert.Equal(2, hsm.Faults.HungCalls);
        }
        finally
        {
            hsm.Faults.Clear();
        }

        Assert.Equal(4, (await UntilServedAsync(() => hsm.GenerateRandomAsync(4, default))).Length);
        Assert.Equal(0, hsm.AbandonedCalls);
    }

    [Fact]
    public async Task Hang_LongerThanTheDrain_OldGenerationClosedOnceTheCallReturns_NoKeyCopyLeft()
    {
        // A call hung past the recovery's 10-s drain: the recovery goes on without closing the old
        // generation (closing a session under a running call crashes libraries). Once the call
        // returns, that generation's sessions and unwrapped key copies must go too.
        var options = SoftHsm.CreateToken().Options();
        options.CallTimeout = HangTimeout;
        await using var hsm = Pkcs11Hsm.Open(options, NullLogger.Instance);
        var key = new KeyMaterialRef(KeyVersionId.NewId(), await hsm.GenerateAes256KeyAsync(default));
        var sealedBytes = await hsm.EncryptAesGcmAsync(key, new byte[12], [], [3], default);
        Assert.Equal(1, hsm.CountSessionKeyObjects());

        hsm.Faults.Hang();
        try
        {
            var hung = Stopwatch.StartNew();
            while (hung.Elapsed < TimeSpan.FromSeconds(12))
            {
                var e = await Assert.ThrowsAsync<KmsException>(async () => await hsm.DecryptAesGcmAsync(key, new byte[12], [], sealedBytes, default));
                Assert.Equal(KmsErrorCode.Unavailable, e.Code);
                await Task.Delay(500);
            }
        }
        finally
        {
            hsm.Faults.Clear();
        }

        Assert.Equal([3], await UntilServedAsync(() => hsm.DecryptAesGcmAsync(key, new byte[12], [], sealedBytes, default)));
        var closing = Stopwatch.StartNew();
        while (hsm.CountSessionKeyObjects() > 1 && closing.Elapsed < TimeSpan.FromSeconds(15))
        {
            await Task.Delay(100);
        }

        Assert.Equal(1, hsm.CountSessionKeyObjects()); // the new generation's copy only
    }

    [Fact]
    public async Task Hang_DuringRecovery_CallerStillAnswersWithinTheBound()
    {
        var options = SoftHsm.CreateToken().Options();
        options.CallTimeout = HangTimeout;
        await using var hsm = Pkcs11Hsm.Open(options, NullLogger.Instance);

        // Lost sessions first (recovery is due), then the device hangs: the recovery's C_OpenSession hangs.
        hsm.Faults.Fail(CKR.CKR_SESSION_HANDLE_INVALID);
        await Assert.ThrowsAsync<KmsException>(async () => await hsm.GenerateRandomAsync(1, default));
        hsm.Faults.Hang();
        try
        {
            for (var i = 0; i < 3; i++)
            {
                var started = Stopwatch.StartNew();
                var e = await Assert.ThrowsAsync<KmsException>(async () => await hsm.GenerateRandomAsync(1, default));
                Assert.Equal(KmsErrorCode.Unavailable, e.Code);
                Assert.True(started.Elapsed < Bound(options), $"call {i} took {started.Elapsed}");
            }

            Assert.Equal(1, hsm.Faults.HungCalls); // the one recovery, not one per caller
        }
        finally
        {
            hsm.Faults.Clear();
        }

        var recovery = Stopwatch.StartNew();
        await UntilServedAsync(() => hsm.GenerateRandomAsync(1, default));
        Assert.True(recovery.Elapsed < RecoveryBound, $"recovered after {recovery.Elapsed}");
    }

    [Fact]
    public async Task NoFault_InjectorOff_CallsUnchanged()
    {
        await using var hsm = Pkcs11Hsm.Open(SoftHsm.CreateToken().Options(), NullLogger.Instance);
        var key = new KeyMaterialRef(KeyVersionId.NewId(), await hsm.GenerateAes256KeyAsync(default));
        hsm.Faults.Fail(CKR.CKR_DEVICE_REMOVED);
        hsm.Faults.Clear();
        var generation = hsm.Generation;

        var sealedBytes = await hsm.EncryptAesGcmAsync(key, new byte[12], [], [3], default);

        Assert.Equal([3], await hsm.DecryptAesGcmAsync(key, new byte[12], [], sealedBytes, default));
        Assert.Equal(generation, hsm.Generation);
        Assert.Equal(0, hsm.Faults.HungCalls);
    }

    // Retries as a client would (UNAVAILABLE is retryable) until served or past the bound.
    private static async Task<T> UntilServedAsync<T>(Func<ValueTask<T>> call)
    {
        var deadline = Stopwatch.StartNew();
        while (true)
        {
            try
            {
                return await call();
            }
            catch (KmsException e) when (e.Code == KmsErrorCode.Unavailable && deadline.Elapsed < TimeSpan.FromSeconds(10))
            {
                await Task.Delay(50);
            }
        }
    }
}
