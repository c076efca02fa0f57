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
/// device-lost return value and a hang answer UNAVAILABLE without waiting for the device, never a
/// wrong answer, and once the fault clears the adapter re-initialises the real SoftHSM module
/// (C_Finalize/C_Initialize, new sessions, login, a new handle generation) and serves again.
/// </summary>
/// <remarks>
/// Runs alone: re-initialising the module affects every user of it in this process. No assertion
/// here reads a clock: a hung call is held until the test releases it, so an answer that comes
/// while the hang is still held (the injector still counts it) did not wait for it; which bound
/// answered is read from the adapter's log (the timeout it logged) and its messages; recovery is
/// counted in recoveries, not in seconds.
/// </remarks>
[Collection(ReinitializationGroup.Name)]
public sealed class HsmFaultTests(ITestOutputHelper output)
{
    // Hsm:CallTimeout of the hang tests. It only paces the tests (calls 2-4 of a hang each wait
    // it out); nothing asserts how long anything took.
    private static readonly TimeSpan HangTimeout = TimeSpan.FromSeconds(2);

    // A liveness guard, not a threshold: far beyond anything the adapter waits (the timeouts here
    // are 2 s, the recovery's drain 10 s), it turns a caller that waits for the hung HSM into a
    // failure instead of a test run that never ends.
    private static readonly TimeSpan HangGuard = TimeSpan.FromSeconds(60);

    [Theory]
    [InlineData(CKR.CKR_DEVICE_REMOVED)]
    [InlineData(CKR.CKR_SESSION_HANDLE_INVALID)]
    [InlineData(CKR.CKR_TOKEN_NOT_PRESENT)]
    [InlineData(CKR.CKR_DEVICE_ERROR)]
    [InlineData(CKR.CKR_DEVICE_MEMORY)] // the HSM's object memory full: the recovery closes the sessions, which frees every copy
    [InlineData(CKR.CKR_HOST_MEMORY)] // the library's memory full (SoftHSM's objects live there): likewise; before, INTERNAL
    public async Task DeviceLost_UnavailableWhileDown_ThenReinitialisesModuleAndServesAtTheFirstCallAfterTheBackoff(CKR fault)
    {
        var options = SoftHsm.CreateToken().Options();
        options.RecoveryBackoff = TimeSpan.FromSeconds(1); // the production default
        options.CallTimeout = TimeSpan.FromMinutes(10); // any wait for a timeout meets the hang guard first
        var logger = new ListLogger();
        await using var hsm = Pkcs11Hsm.Open(options, logger);
        var key = new KeyMaterialRef(KeyVersionId.NewId(), await hsm.GenerateAes256KeyAsync(default));
        byte[] plaintext = [7, 7, 7];
        var sealedBytes = await hsm.EncryptAesGcmAsync(key, new byte[12], [], plaintext, default);
        var moduleGeneration = hsm.Module.Generation;
        var cache = hsm.Cache;
        Assert.Equal(1, cache.Count);

        hsm.Faults.Fail(fault);

        // The first call meets the fault, later ones a failed recovery or its backoff: all UNAVAILABLE,
        // answered by the fault itself, never by a timeout (which is what "at once" rests on: nothing
        // in a lost device's path waits for anything).
        for (var i = 0; i < 5; i++)
        {
            var e = await UnavailableAsync(() => hsm.DecryptAesGcmAsync(key, new byte[12], [], sealedBytes, default), $"call {i}");
            Assert.Equal("the HSM is unavailable; retry shortly", e.Message);
        }

        Assert.Equal(0, hsm.AbandonedCalls);
        Assert.DoesNotContain(logger.Messages, m => m.Contains("did not return within", StringComparison.Ordinal));

        // A recovery attempt met the fault while re-opening and re-initialised the real module.
        Assert.True(hsm.Module.Generation > moduleGeneration, "no C_Finalize/C_Initialize happened");

        // SECURITY.md claim 85's "within 5 s" rests on this: the next recovery is due one
        // Hsm:RecoveryBackoff after the last failed one, and the first call once it is due recovers
        // and is served (no second attempt, no wait of its own). Waiting longer than the backoff
        // cannot make this fail; a recovery that is not attempted, or fails, does.
        hsm.Faults.Clear();
        var logged = logger.Messages.Count;
        await Task.Delay(options.RecoveryBackoff + TimeSpan.FromMilliseconds(100));
        var decrypted = await ServedAsync(() => hsm.DecryptAesGcmAsync(key, new byte[12], [], sealedBytes, default), "the first call after the backoff");

        output.WriteLine(string.Join('\n', logger.Messages));
        Assert.Equal(plaintext, decrypted);
        AssertOneRecovery(logger, logged);
        Assert.NotSame(cache, hsm.Cache);
        Assert.True(hsm.Cache.Generation > cache.Generation);
        Assert.Equal(1, hsm.Cache.Count); // unwrapped again into the new generation; the old handles are gone with their sessions
    }

    [Fact]
    public async Task DeviceLost_CallsWithinTheBackoff_AttemptNoRecovery_TheFirstCallOnceItPassesRecovers()
    {
        // On a fake clock that stands still, every call after the first failed recovery falls within
        // Hsm:RecoveryBackoff: it is answered UNAVAILABLE without re-initialising the module again.
        // Without the backoff each call re-ran C_Finalize/C_Initialize against the lost device.
        var time = new Microsoft.Extensions.Time.Testing.FakeTimeProvider(new DateTimeOffset(2026, 12, 2, 0, 0, 0, TimeSpan.Zero));
        var options = SoftHsm.CreateToken().Options();
        options.RecoveryBackoff = TimeSpan.FromSeconds(1);
        var logger = new ListLogger();
        await using var hsm = Pkcs11Hsm.Open(options, logger, time);
        var key = new KeyMaterialRef(KeyVersionId.NewId(), await hsm.GenerateAes256KeyAsync(default));
        var sealedBytes = await hsm.EncryptAesGcmAsync(key, new byte[12], [], [7], default);

        hsm.Faults.Fail(CKR.CKR_DEVICE_REMOVED);
        var logged = logger.Messages.Count;
        for (var i = 0; i < 6; i++)
        {
            await UnavailableAsync(() => hsm.DecryptAesGcmAsync(key, new byte[12], [], sealedBytes, default), $"call {i}");
        }

        var failed = logger.Messages.Skip(logged).Count(m => m.StartsWith("HSM recovery failed", StringComparison.Ordinal));
        Assert.True(failed == 1, $"{failed} recovery attempts within one backoff:\n{string.Join('\n', logger.Messages.Skip(logged))}");

        hsm.Faults.Clear();
        await UnavailableAsync(() => hsm.DecryptAesGcmAsync(key, new byte[12], [], sealedBytes, default), "a call within the backoff after the fault cleared");
        time.Advance(options.RecoveryBackoff);
        logged = logger.Messages.Count;
        Assert.Equal([7], await hsm.DecryptAesGcmAsync(key, new byte[12], [], sealedBytes, default));
        AssertOneRecovery(logger, logged);
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
        var logger = new ListLogger();
        await using var hsm = Pkcs11Hsm.Open(options, logger);
        var key = new KeyMaterialRef(KeyVersionId.NewId(), await hsm.GenerateAes256KeyAsync(default));
        var sealedBytes = await hsm.EncryptAesGcmAsync(key, new byte[12], [], [5], default);
        var generation = hsm.Generation;

        hsm.Faults.Hang();
        int logged;
        try
        {
            // The first call hangs and is abandoned at Hsm:CallTimeout; the others wait at most as
            // long for the recovery it started (whose drain waits for the hung call). Each answers
            // while the hang is still held: none waited for the device.
            var first = await UnavailableAsync(() => hsm.DecryptAesGcmAsync(key, new byte[12], [], sealedBytes, default), "call 0");
            Assert.Equal("the HSM did not answer in time; retry shortly", first.Message);
            Assert.Equal(1, hsm.Faults.HungCalls);
            for (var i = 1; i < 4; i++)
            {
                var e = await UnavailableAsync(() => hsm.DecryptAesGcmAsync(key, new byte[12], [], sealedBytes, default), $"call {i}");
                Assert.Equal("the HSM is recovering; retry shortly", e.Message);
                Assert.True(hsm.Faults.HungCalls >= 1, $"call {i} answered after the hang was released");
            }

            Assert.Equal(1, hsm.AbandonedCalls);

            // The bound that answered is the configured one (SECURITY.md claim 86: within Hsm:CallTimeout).
            var timedOut = Assert.Single(logger.Messages, m => m.Contains("did not return within", StringComparison.Ordinal));
            Assert.Contains($"did not return within {options.CallTimeout};", timedOut, StringComparison.Ordinal);
            logged = logger.Messages.Count;
        }
        finally
        {
            hsm.Faults.Clear(); // else the adapter's disposal waits for the hung calls
        }

        Assert.Equal([5], await UntilServedAsync(() => hsm.DecryptAesGcmAsync(key, new byte[12], [], sealedBytes, default)));

        // The recovery the hang started finished once the hung call returned: one recovery, no failed one.
        AssertOneRecovery(logger, logged);
        Assert.True(hsm.Generation > generation);
        Assert.Equal(0, hsm.AbandonedCalls);

        // The abandoned decryption finished once released: its plaintext, read by nobody, was zeroed.
        Assert.Equal(1, hsm.ZeroedLateResults);
    }

    [Fact]
    public async Task Hang_ManyConcurrentCallers_AtMostOnePoolOfCallsAbandoned_RestRefusedWithoutWaiting()
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
            var calls = Enumerable.Range(0, 8).Select(_ => Task.Run(async () => await hsm.GenerateRandomAsync(4, default))).ToList();
            for (var i = 0; i < calls.Count; i++)
            {
                await UnavailableAsync(() => new ValueTask<byte[]>(calls[i]), $"concurrent call {i}");
            }

            Assert.Equal(2, hsm.AbandonedCalls);
            Assert.Equal(2, hsm.Faults.HungCalls);

            // A pool's worth abandoned: refused before anything is awaited (the call has completed when
            // it returns to its caller), so without touching the HSM or waiting for a recovery.
            var refused = hsm.GenerateRandomAsync(4, default).AsTask();
            Assert.True(refused.IsCompleted, "a call past the abandoned-call limit did not answer at once");
            var e = await Assert.ThrowsAsync<KmsException>(async () => await refused);
            Assert.Equal((KmsErrorCode.Unavailable, "the HSM is not answering; retry shortly"), (e.Code, e.Message));
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
        var logger = new ListLogger();
        await using var hsm = Pkcs11Hsm.Open(options, logger);
        var key = new KeyMaterialRef(KeyVersionId.NewId(), await hsm.GenerateAes256KeyAsync(default));
        var sealedBytes = await hsm.EncryptAesGcmAsync(key, new byte[12], [], [3], default);
        Assert.Equal(1, hsm.CountSessionKeyObjects());

        hsm.Faults.Hang();
        try
        {
            // Held until the recovery has given up draining (it logs so), however long that takes.
            var guard = Stopwatch.StartNew();
            while (!logger.Messages.Any(m => m.Contains("Sessions still busy after", StringComparison.Ordinal)))
            {
                Assert.True(guard.Elapsed < HangGuard, $"hang guard: the recovery's drain had not given up after {HangGuard}");
                await UnavailableAsync(() => hsm.DecryptAesGcmAsync(key, new byte[12], [], sealedBytes, default), "a call during the hang");
                await Task.Delay(500);
            }
        }
        finally
        {
            hsm.Faults.Clear();
        }

        Assert.Equal([3], await UntilServedAsync(() => hsm.DecryptAesGcmAsync(key, new byte[12], [], sealedBytes, default)));
        var closing = Stopwatch.StartNew();
        while (hsm.CountSessionKeyObjects() > 1)
        {
            Assert.True(closing.Elapsed < HangGuard, $"hang guard: {hsm.CountSessionKeyObjects()} key copies still in sessions {HangGuard} after the hung call returned");
            await Task.Delay(100);
        }

        Assert.Equal(1, hsm.CountSessionKeyObjects()); // the new generation's copy only
    }

    [Fact]
    public async Task Hang_DuringRecovery_CallerAnswersAtTheTimeout_OneRecoveryHangsNotOnePerCaller()
    {
        var options = SoftHsm.CreateToken().Options();
        options.CallTimeout = HangTimeout;
        var logger = new ListLogger();
        await using var hsm = Pkcs11Hsm.Open(options, logger);

        // Lost sessions first (recovery is due), then the device hangs: the recovery's C_OpenSession hangs.
        hsm.Faults.Fail(CKR.CKR_SESSION_HANDLE_INVALID);
        await Assert.ThrowsAsync<KmsException>(async () => await hsm.GenerateRandomAsync(1, default));
        hsm.Faults.Hang();
        int logged;
        try
        {
            // Each caller stops waiting for the hung recovery after Hsm:CallTimeout, while it still hangs.
            for (var i = 0; i < 3; i++)
            {
                var e = await UnavailableAsync(() => hsm.GenerateRandomAsync(1, default), $"call {i}");
                Assert.Equal("the HSM is recovering; retry shortly", e.Message);
            }

            var hung = hsm.Faults.HungCalls;
            Assert.True(hung == 1, $"{hung} calls hung in the HSM: the one recovery's, not one per caller, expected");
            logged = logger.Messages.Count;
        }
        finally
        {
            hsm.Faults.Clear();
        }

        await UntilServedAsync(() => hsm.GenerateRandomAsync(1, default));
        AssertOneRecovery(logger, logged); // the hung recovery itself finished once released
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

    /// <summary>
    /// A data key drawn and sealed in one trip (GenerateDataKey) by a call abandoned at the bound is
    /// zeroed when the call comes back with nobody waiting for it, like a late plaintext.
    /// </summary>
    [Fact]
    public async Task Hang_AbandonedDataKey_ZeroedWhenTheCallReturns()
    {
        var options = SoftHsm.CreateToken().Options();
        options.CallTimeout = HangTimeout;
        await using var hsm = Pkcs11Hsm.Open(options, NullLogger.Instance);
        var key = new KeyMaterialRef(KeyVersionId.NewId(), await hsm.GenerateAes256KeyAsync(default));
        _ = await hsm.GenerateDataKeyAsync(key, 32, [], default);

        hsm.Faults.Hang();
        try
        {
            await UnavailableAsync(() => hsm.GenerateDataKeyAsync(key, 32, [], default), "the data key");
            Assert.Equal(1, hsm.AbandonedCalls);
        }
        finally
        {
            hsm.Faults.Clear();
        }

        Assert.Equal(32, (await UntilServedAsync(() => hsm.GenerateDataKeyAsync(key, 32, [], default))).DataKey.Length);
        Assert.Equal(0, hsm.AbandonedCalls);
        Assert.Equal(1, hsm.ZeroedLateResults);
    }

    // The call's UNAVAILABLE, or a failure naming the call if it is still waiting at the hang guard.
    // Started on the thread pool: a call that blocks its caller's thread on the hung device (rather
    // than returning a task that waits) must meet the guard too.
    private static async Task<KmsException> UnavailableAsync<T>(Func<ValueTask<T>> call, string what)
    {
        var task = Task.Run(async () => await call());
        if (await Task.WhenAny(task, Task.Delay(HangGuard)) != task)
        {
            Assert.Fail($"hang guard: {what} had not answered after {HangGuard}: it waited for the hung HSM");
        }

        var e = await Assert.ThrowsAsync<KmsException>(() => task);
        Assert.True(e.Code == KmsErrorCode.Unavailable, $"{what}: {e.Code}: {e.Message}");
        return e;
    }

    private static async Task<T> ServedAsync<T>(Func<ValueTask<T>> call, string what)
    {
        var task = Task.Run(async () => await call());
        if (await Task.WhenAny(task, Task.Delay(HangGuard)) != task)
        {
            Assert.Fail($"hang guard: {what} had not answered after {HangGuard}");
        }

        try
        {
            return await task;
        }
        catch (KmsException e)
        {
            throw new Xunit.Sdk.XunitException($"{what} was not served: {e.Code}: {e.Message}");
        }
    }

    // Recoveries logged after the first `since` messages: exactly one, and no failed one (each
    // failure costs a backoff); the messages are in the failure.
    private static void AssertOneRecovery(ListLogger logger, int since)
    {
        var messages = logger.Messages.Skip(since).ToList();
        var recovered = messages.Count(m => m.StartsWith("HSM recovered", StringComparison.Ordinal));
        var failed = messages.Count(m => m.StartsWith("HSM recovery failed", StringComparison.Ordinal));
        Assert.True((recovered, failed) == (1, 0), $"{recovered} recoveries and {failed} failed ones after the fault cleared:\n{string.Join('\n', messages)}");
    }

    // Retries as a client would (UNAVAILABLE is retryable) until served; only the hang guard ends it.
    private static async Task<T> UntilServedAsync<T>(Func<ValueTask<T>> call)
    {
        var guard = Stopwatch.StartNew();
        while (true)
        {
            try
            {
                return await call();
            }
            catch (KmsException e) when (e.Code == KmsErrorCode.Unavailable)
            {
                Assert.True(guard.Elapsed < HangGuard, $"hang guard: still UNAVAILABLE {HangGuard} after the fault cleared ({e.Message})");
                await Task.Delay(50);
            }
        }
    }
}
