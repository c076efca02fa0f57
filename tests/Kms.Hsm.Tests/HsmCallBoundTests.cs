using System.Diagnostics;
using Kms.Core.Errors;
using Kms.Core.Keys;
using Kms.Core.Ports;
using Kms.Testing;
using Net.Pkcs11Interop.Common;

namespace Kms.Hsm.Tests;

/// <summary>
/// The HSM call bound to the millisecond, on a fake clock (<see cref="ArmedClock"/>) against the
/// real SoftHSM: with the device hung, a caller is not answered when the clock stands 1 ms short of
/// its bound and is answered, with the documented UNAVAILABLE, once the clock reaches it — for the
/// native call (<c>Hsm:CallTimeout</c>; RSA generation: <c>Hsm:KeyGenerationTimeout</c>), the wait for
/// a free session, the wait for a recovery in progress, and the worst case of both (twice
/// <c>Hsm:CallTimeout</c>: a recovery that ends just inside the first, then a hung call).
/// </summary>
/// <remarks>
/// No assertion reads a real clock. Before moving the fake one, each test waits until the caller
/// has armed its deadline on it (so the clock cannot pass a deadline not yet set). The "is
/// answered" side waits behind a 60-s real-time hang guard; the "not answered" side looks 100 ms
/// after moving the clock (the fake clock's timers fire on the thread that moves it, so an early
/// answer is already on its way: a slow machine could hide one, never fail a correct bound).
/// </remarks>
[Collection(ReinitializationGroup.Name)]
public sealed class HsmCallBoundTests
{
    private static readonly TimeSpan CallTimeout = TimeSpan.FromSeconds(10);
    private static readonly TimeSpan KeyGenerationTimeout = TimeSpan.FromSeconds(60);
    private static readonly TimeSpan Tick = TimeSpan.FromMilliseconds(1);
    private static readonly TimeSpan HangGuard = TimeSpan.FromSeconds(60);

    [Fact]
    public async Task HungNativeCall_NotAnsweredAtCallTimeoutLessOneMs_AnsweredUnavailableAtCallTimeout()
    {
        var clock = new ArmedClock();
        await using var hsm = Open(clock);
        hsm.Faults.Hang();
        try
        {
            var armed = clock.Armed;
            var call = Start(() => hsm.GenerateRandomAsync(4, default));
            await clock.WaitForTimerAsync(armed, "the native call");
            await UntilHungAsync(hsm, 1);

            clock.Advance(CallTimeout - Tick);
            await AssertNotAnsweredAsync(call, "the hung call 1 ms before Hsm:CallTimeout");

            clock.Advance(Tick);
            var e = await UnavailableAsync(call, "the hung call at Hsm:CallTimeout");
            Assert.Equal("the HSM did not answer in time; retry shortly", e.Message);
            Assert.Equal(1, hsm.AbandonedCalls);
        }
        finally
        {
            hsm.Faults.Clear();
        }
    }

    [Theory]
    [InlineData(KeyAlgorithm.EcSignP256Sha256)]
    [InlineData(KeyAlgorithm.HmacSha256)]
    public async Task HungSignOrMac_NotAnsweredAtCallTimeoutLessOneMs_AnsweredUnavailableAtCallTimeout(KeyAlgorithm algorithm)
    {
        // Every operation on a key version has the bound, not only the AES ones the tests above use.
        var clock = new ArmedClock();
        await using var hsm = Open(clock);
        var key = new KeyMaterialRef(KeyVersionId.NewId(), (await hsm.GenerateKeyVersionAsync(algorithm, default)).Wrapped);
        hsm.Faults.Hang();
        try
        {
            var armed = clock.Armed;
            var call = algorithm == KeyAlgorithm.HmacSha256
                ? Start(() => hsm.ComputeMacAsync(key, algorithm, [1, 2, 3], default))
                : Start(() => hsm.SignAsync(key, algorithm, new byte[32], default));
            await clock.WaitForTimerAsync(armed, $"the native call ({algorithm})");
            await UntilHungAsync(hsm, 1);

            clock.Advance(CallTimeout - Tick);
            await AssertNotAnsweredAsync(call, $"the hung {algorithm} call 1 ms before Hsm:CallTimeout");

            clock.Advance(Tick);
            var e = await UnavailableAsync(call, $"the hung {algorithm} call at Hsm:CallTimeout");
            Assert.Equal("the HSM did not answer in time; retry shortly", e.Message);
            Assert.Equal(1, hsm.AbandonedCalls);
        }
        finally
        {
            hsm.Faults.Clear();
        }
    }

    [Fact]
    public async Task SessionWait_AllSessionsHeldByAHungRsaGeneration_AnsweredAtCallTimeout_TheGenerationAtKeyGenerationTimeout()
    {
        var clock = new ArmedClock();
        await using var hsm = Open(clock, sessions: 1);
        hsm.Faults.Hang();
        try
        {
            // The only session is held by an RSA generation, bounded by Hsm:KeyGenerationTimeout (60 s).
            var armed = clock.Armed;
            var generation = Start(() => hsm.GenerateKeyVersionAsync(KeyAlgorithm.RsaSignPss2048Sha256, default));
            await clock.WaitForTimerAsync(armed, "the RSA generation");
            await UntilHungAsync(hsm, 1);

            // A second caller waits for a session, at most Hsm:CallTimeout.
            armed = clock.Armed;
            var waiter = Start(() => hsm.GenerateRandomAsync(4, default));
            await clock.WaitForTimerAsync(armed, "the wait for a session");

            clock.Advance(CallTimeout - Tick);
            await AssertNotAnsweredAsync(waiter, "the wait for a session 1 ms before Hsm:CallTimeout");

            clock.Advance(Tick);
            var e = await UnavailableAsync(waiter, "the wait for a session at Hsm:CallTimeout");
            Assert.Equal("no HSM session became free in time; retry shortly", e.Message);

            // The generation, still hung, has its own bound.
            Assert.False(generation.IsCompleted, "the RSA generation answered at Hsm:CallTimeout, not at Hsm:KeyGenerationTimeout");
            clock.Advance(KeyGenerationTimeout - CallTimeout - Tick);
            await AssertNotAnsweredAsync(generation, "the hung RSA generation 1 ms before Hsm:KeyGenerationTimeout");

            clock.Advance(Tick);
            e = await UnavailableAsync(generation, "the hung RSA generation at Hsm:KeyGenerationTimeout");
            Assert.Equal("the HSM did not answer in time; retry shortly", e.Message);
        }
        finally
        {
            hsm.Faults.Clear();
        }
    }

    [Fact]
    public async Task RecoveryWait_RecoveryHung_AnsweredAtCallTimeout()
    {
        var clock = new ArmedClock();
        await using var hsm = Open(clock);
        await StartRecoveryThatHangsAsync(hsm);
        try
        {
            var armed = clock.Armed;
            var call = Start(() => hsm.GenerateRandomAsync(4, default));
            await clock.WaitForTimerAsync(armed, "the wait for the recovery");
            await UntilHungAsync(hsm, 1); // the recovery's C_OpenSession

            clock.Advance(CallTimeout - Tick);
            await AssertNotAnsweredAsync(call, "the wait for a hung recovery 1 ms before Hsm:CallTimeout");

            clock.Advance(Tick);
            var e = await UnavailableAsync(call, "the wait for a hung recovery at Hsm:CallTimeout");
            Assert.Equal("the HSM is recovering; retry shortly", e.Message);
        }
        finally
        {
            hsm.Faults.Clear();
        }
    }

    [Fact]
    public async Task WorstCase_RecoveryEndsJustInsideCallTimeout_ThenTheCallHangs_AnsweredWithinTwiceCallTimeout()
    {
        var clock = new ArmedClock();
        await using var hsm = Open(clock);
        await StartRecoveryThatHangsAsync(hsm);
        try
        {
            var armed = clock.Armed;
            var call = Start(() => hsm.GenerateRandomAsync(4, default));
            await clock.WaitForTimerAsync(armed, "the wait for the recovery");
            await UntilHungAsync(hsm, 1);

            // The recovery goes on 1 ms before the caller would stop waiting for it; the caller's
            // native call then hangs, with a bound of its own.
            clock.Advance(CallTimeout - Tick);
            armed = clock.Armed;
            hsm.Faults.HangOnly("generate random");
            await clock.WaitForTimerAsync(armed, "the native call after the recovery");
            await UntilHungAsync(hsm, 1);
            Assert.False(call.IsCompleted, "the caller answered before its native call's bound");

            clock.Advance(CallTimeout - Tick);
            await AssertNotAnsweredAsync(call, "the hung call 1 ms before the end of its own Hsm:CallTimeout");

            clock.Advance(Tick); // 2 x Hsm:CallTimeout - 1 ms since the call began
            var e = await UnavailableAsync(call, "the hung call at Hsm:CallTimeout after the recovery");
            Assert.Equal("the HSM did not answer in time; retry shortly", e.Message);
            Assert.True(clock.GetUtcNow() - clock.Start < 2 * CallTimeout);
        }
        finally
        {
            hsm.Faults.Clear();
        }
    }

    // A caller queued for a session of a generation that a recovery then closed (its lease comes
    // after the drain) has not begun its operation: it starts again on the recovered generation,
    // within what is left of its own Hsm:CallTimeout — neither answered at once (its wait cut
    // short while a healthy generation is there), nor given a fresh Hsm:CallTimeout.
    [Fact]
    public async Task SessionWait_RecoveryClosesTheGenerationItWaitsOn_StartsAgainOnTheRecovered_StillAnsweredAtItsOwnCallTimeout()
    {
        var clock = new ArmedClock();
        await using var hsm = Open(clock, sessions: 1);
        hsm.Faults.HangOnly("generate random");
        try
        {
            // t = 0: the only session is held by a hung call.
            var armed = clock.Armed;
            var hung = Start(() => hsm.GenerateRandomAsync(4, default));
            await clock.WaitForTimerAsync(armed, "the hung call");
            await UntilHungAsync(hsm, 1);

            // t = 6 s: the caller arms its wait for a session (bound: t = 16 s), and is kept there
            // before it queues, so that it queues only once the recovery has closed the generation.
            clock.Advance(TimeSpan.FromSeconds(6));
            var waitStart = clock.GetUtcNow();
            var hold = clock.HoldNextTimer();
            var waiter = Start(() => hsm.GenerateRandomAsync(4, default));
            await hold.KeptAsync("the wait for a session");

            // t = 10 s: the hung call is abandoned (the generation faulted); the device comes back,
            // the next call recovers (drains and closes the old generation, opens a new one) and is served.
            clock.Advance(TimeSpan.FromSeconds(4));
            await UnavailableAsync(hung, "the hung call at Hsm:CallTimeout");
            var generation = hsm.Generation;
            hsm.Faults.Clear();
            var returned = Stopwatch.StartNew();
            while (hsm.AbandonedCalls != 0)
            {
                Assert.True(returned.Elapsed < HangGuard, "hang guard: the abandoned call did not return");
                await Task.Delay(10);
            }

            await Start(() => hsm.GenerateRandomAsync(4, default)).WaitAsync(HangGuard);
            Assert.NotEqual(generation, hsm.Generation);

            // The new generation's only session is held by another hung call (its bound: t = 20 s).
            hsm.Faults.HangOnly("generate random");
            armed = clock.Armed;
            var holder = Start(() => hsm.GenerateRandomAsync(4, default));
            await clock.WaitForTimerAsync(armed, "the call holding the new generation's session");
            await UntilHungAsync(hsm, 1);

            // The caller queues on the closed generation, is given a permit and a closed session,
            // and starts again on the new one.
            hold.Release();
            var guard = Stopwatch.StartNew();
            while (hsm.StaleRestarts == 0 && !waiter.IsCompleted)
            {
                Assert.True(guard.Elapsed < HangGuard, "hang guard: the waiter neither started again nor was answered");
                await Task.Delay(10);
            }

            Assert.False(waiter.IsCompleted, $"the wait for a session was answered when the recovery closed its generation, {clock.GetUtcNow() - waitStart} after it began: {waiter.Exception?.InnerException?.Message ?? "served"}");

            clock.Advance(waitStart + CallTimeout - Tick - clock.GetUtcNow());
            await AssertNotAnsweredAsync(waiter, "the wait for a session 1 ms before its own Hsm:CallTimeout");

            clock.Advance(Tick);
            var e = await UnavailableAsync(waiter, "the wait for a session at its own Hsm:CallTimeout (not one from its start again)");
            Assert.Equal("no HSM session became free in time; retry shortly", e.Message);
            Assert.False(holder.IsCompleted);
        }
        finally
        {
            hsm.Faults.Clear();
        }
    }

    private static Pkcs11Hsm Open(ArmedClock clock, int sessions = 2)
    {
        var options = SoftHsm.CreateToken().Options(sessions: sessions);
        options.CallTimeout = CallTimeout;
        options.KeyGenerationTimeout = KeyGenerationTimeout;
        return Pkcs11Hsm.Open(options, new ListLogger(), clock);
    }

    // Lost sessions (a recovery is due), then a hang: the next caller's recovery hangs in C_OpenSession.
    private static async Task StartRecoveryThatHangsAsync(Pkcs11Hsm hsm)
    {
        hsm.Faults.Fail(CKR.CKR_SESSION_HANDLE_INVALID);
        await Assert.ThrowsAsync<KmsException>(async () => await hsm.GenerateRandomAsync(1, default));
        hsm.Faults.Hang();
    }

    private static Task<T> Start<T>(Func<ValueTask<T>> call) => Task.Run(async () => await call());

    private static async Task UntilHungAsync(Pkcs11Hsm hsm, int calls)
    {
        var guard = Stopwatch.StartNew();
        while (hsm.Faults.HungCalls != calls)
        {
            Assert.True(guard.Elapsed < HangGuard, $"hang guard: {hsm.Faults.HungCalls} calls hung after {HangGuard}, {calls} expected");
            await Task.Delay(10);
        }
    }

    private static async Task AssertNotAnsweredAsync(Task call, string what)
    {
        await Task.Delay(100);
        Assert.False(call.IsCompleted, $"{what} was answered: {call.Exception?.InnerException?.Message ?? "served"}");
    }

    private static async Task<KmsException> UnavailableAsync(Task call, string what)
    {
        if (await Task.WhenAny(call, Task.Delay(HangGuard)) != call)
        {
            Assert.Fail($"hang guard: {what} had not been answered {HangGuard} after its bound passed");
        }

        var e = await Assert.ThrowsAsync<KmsException>(() => call);
        Assert.True(e.Code == KmsErrorCode.Unavailable, $"{what}: {e.Code}: {e.Message}");
        return e;
    }
}
