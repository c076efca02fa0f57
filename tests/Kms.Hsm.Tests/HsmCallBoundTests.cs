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
/// <c>Hsm:CallTimeout</c>: a recovery that ends just inside the first, then a hung call), also
/// when a call meets two re-initialisations in a row.
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

    // A recycle deferred behind a long RSA generation: a new RSA generation does not start on the
    // generation (it would hold the recycle off again) but waits for the recycle — within its
    // waits' Hsm:CallTimeout, like a wait for a recovery, so its bound stays CallTimeout +
    // KeyGenerationTimeout.
    [Fact]
    public async Task RecycleWait_RsaGenerationBehindAPendingRecycle_AnsweredAtCallTimeout()
    {
        var clock = new ArmedClock();
        await using var hsm = Open(clock, sessions: 2);
        hsm.Faults.HangOnly("generate key pair");
        try
        {
            var armed = clock.Armed;
            var first = Start(() => hsm.GenerateKeyVersionAsync(KeyAlgorithm.RsaSignPss2048Sha256, default));
            await clock.WaitForTimerAsync(armed, "the first RSA generation");
            await UntilHungAsync(hsm, 1);
            Assert.True(hsm.TryStartRecycle());
            var guard = Stopwatch.StartNew();
            while (hsm.DeferredRecycles == 0)
            {
                Assert.True(guard.Elapsed < HangGuard, "hang guard: the recycle did not defer behind the RSA generation");
                await Task.Delay(10);
            }

            armed = clock.Armed;
            var second = Start(() => hsm.GenerateKeyVersionAsync(KeyAlgorithm.RsaSignPss2048Sha256, default));
            await clock.WaitForTimerAsync(armed, "the second RSA generation's wait for the recycle");
            Assert.Equal(1, hsm.LongOperationsWaitingForRecycle);

            clock.Advance(CallTimeout - Tick);
            await AssertNotAnsweredAsync(second, "the wait for a pending recycle 1 ms before Hsm:CallTimeout");

            clock.Advance(Tick);
            var e = await UnavailableAsync(second, "the wait for a pending recycle at Hsm:CallTimeout");
            Assert.Equal("the HSM is being re-initialised; retry shortly", e.Message);
            Assert.Equal(1, hsm.Faults.HungCalls); // it never started
            Assert.False(first.IsCompleted);
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

    // Two re-initialisations in a row. A recycle closes the generation a caller is queued on (the
    // caller held back by the test clock after arming its deadline, as in the test above); the
    // caller's lease is then of a closed session, and its native phase waits at the module gate
    // behind a second re-initialisation: one that observed the generation before the recycle (a
    // region recovering from the same device), which waits for the gate behind another user's long
    // native call and then finds the module re-initialised already. Time held at the gate counts
    // against the waits' one Hsm:CallTimeout like any other wait: let through at exactly that
    // Hsm:CallTimeout, the caller starts again on the recycled generation and its hung call is
    // answered at twice Hsm:CallTimeout, not 1 ms before.
    [Fact]
    public async Task WorstCase_TwoReinitialisations_HeldAtTheGateUntilCallTimeout_ThenTheCallHangs_AnsweredAtTwiceCallTimeout()
    {
        var clock = new ArmedClock();
        await using var hsm = Open(clock, sessions: 1);
        try
        {
            var (call, start, armed) = await HeldAtTheGateAfterARecycleAsync(hsm, clock, CallTimeout);
            await clock.WaitForTimerAsync(armed, "the native call started again");
            await UntilHungAsync(hsm, 1); // started again on the recycled generation: its call hangs
            Assert.Equal(1, hsm.StaleRestarts);

            clock.Advance(start + (2 * CallTimeout) - Tick - clock.GetUtcNow());
            await AssertNotAnsweredAsync(call, "the hung call after two re-initialisations 1 ms before twice Hsm:CallTimeout");

            clock.Advance(Tick);
            var e = await UnavailableAsync(call, "the hung call after two re-initialisations at twice Hsm:CallTimeout");
            Assert.Equal("the HSM did not answer in time; retry shortly", e.Message);
        }
        finally
        {
            hsm.Faults.Clear();
        }
    }

    // As above, let through 1 ms later: its waits' Hsm:CallTimeout is spent, and starting again
    // would give it a native bound of its own past twice Hsm:CallTimeout (before: answered at twice
    // Hsm:CallTimeout + 1 ms, and with a longer hold at the gate up to about three times it). It is
    // answered UNAVAILABLE as it is let through, its operation not begun.
    [Fact]
    public async Task WorstCase_TwoReinitialisations_HeldAtTheGatePastCallTimeout_AnsweredAsItIsLetThrough_NotStartedAgain()
    {
        var clock = new ArmedClock();
        await using var hsm = Open(clock, sessions: 1);
        try
        {
            var (call, start, _) = await HeldAtTheGateAfterARecycleAsync(hsm, clock, CallTimeout + Tick);
            var guard = Stopwatch.StartNew();
            while (!call.IsCompleted && hsm.Faults.HungCalls == 0)
            {
                Assert.True(guard.Elapsed < HangGuard, "hang guard: the caller let through the gate neither answered nor started again");
                await Task.Delay(10);
            }

            clock.Advance(start + (2 * CallTimeout) - clock.GetUtcNow());
            var e = await UnavailableAsync(call, "the caller let through the gate past its waits' Hsm:CallTimeout, at twice Hsm:CallTimeout");
            Assert.Equal("the HSM is being re-initialised; retry shortly", e.Message);
            Assert.Equal(0, hsm.Faults.HungCalls);
        }
        finally
        {
            hsm.Faults.Clear();
        }
    }

    // Sets up the two re-initialisations and lets the caller through the module gate `held` after
    // it began (its native phase began 6 s after it, so its own native bound is not reached); the
    // device hangs every "generate random" from then on. Returns the caller, when it began, and the
    // timers armed before it was let through.
    private static async Task<(Task<byte[]> Call, DateTimeOffset Start, int Armed)> HeldAtTheGateAfterARecycleAsync(Pkcs11Hsm hsm, ArmedClock clock, TimeSpan held)
    {
        // t = 0: the only session is held by a hung call (its bound: t = 10 s).
        hsm.Faults.HangOnly("generate random");
        var armed = clock.Armed;
        var holder = Start(() => hsm.GenerateRandomAsync(4, default));
        await clock.WaitForTimerAsync(armed, "the call holding the session");
        await UntilHungAsync(hsm, 1);

        // t = 0: the caller arms its wait for a session and is kept there before it queues.
        var start = clock.GetUtcNow();
        var hold = clock.HoldNextTimer();
        var call = Start(() => hsm.GenerateRandomAsync(4, default));
        await hold.KeptAsync("the wait for a session");

        // t = 6 s: the first re-initialisation, a recycle: it retires the generation, drains it (the
        // held call comes back and is served), closes it and opens the next on a new module generation.
        clock.Advance(TimeSpan.FromSeconds(6));
        var moduleBefore = hsm.Module.Generation;
        Assert.True(hsm.TryStartRecycle());
        hsm.Faults.Clear();
        await holder.WaitAsync(HangGuard);
        var guard = Stopwatch.StartNew();
        while (hsm.Recycles == 0 || hsm.Recycling)
        {
            Assert.True(guard.Elapsed < HangGuard, "hang guard: the recycle did not finish");
            await Task.Delay(10);
        }

        // The second: another user of the module in a long native call, and a re-initialisation
        // (of the generation before the recycle) waiting for the gate behind it — as every native
        // call that comes now does.
        using var inside = new ManualResetEventSlim();
        using var release = new ManualResetEventSlim();
        var longCall = Task.Run(() => hsm.Module.Call(_ =>
        {
            inside.Set();
            release.Wait();
            return 0;
        }));
        Assert.True(inside.Wait(HangGuard), "hang guard: the long native call did not start");
        var second = Task.Run(() => hsm.Module.Reinitialize(moduleBefore));
        while (hsm.Module.WaitingExclusive == 0)
        {
            Assert.True(guard.Elapsed < HangGuard, "hang guard: the second re-initialisation did not wait for the gate");
            await Task.Delay(10);
        }

        // The caller queues on the closed generation, is given a permit and a closed session, and
        // its native phase (bound: t = 16 s) waits at the gate.
        hsm.Faults.HangOnly("generate random");
        armed = clock.Armed;
        hold.Release();
        await clock.WaitForTimerAsync(armed, "the caller's native call");
        clock.Advance(start + held - clock.GetUtcNow());
        await AssertNotAnsweredAsync(call, $"the caller held at the module gate {held} after it began");
        Assert.Equal(0, hsm.StaleRestarts);

        armed = clock.Armed;
        release.Set();
        await Task.WhenAll(longCall, second).WaitAsync(HangGuard);
        Assert.Equal(moduleBefore + 1, hsm.Module.Generation); // the second found it done
        return (call, start, armed);
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
