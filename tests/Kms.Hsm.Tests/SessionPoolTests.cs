namespace Kms.Hsm.Tests;

/// <summary>The pool's accounting when recovery drains it under load.</summary>
public sealed class SessionPoolTests(HsmFixture fixture) : IClassFixture<HsmFixture>
{
    [Fact]
    public async Task Drain_EverySessionBusy_TimesOutWithoutThrowing()
    {
        using var session = fixture.OpenRawSession();
        var pool = new SessionPool([session]);
        var lease = await pool.AcquireAsync(default);

        Assert.False(await pool.DrainAsync(TimeSpan.FromMilliseconds(100), default));

        // The drain's own timeout, long only as a hang guard: every session is free now.
        lease.Dispose();
        Assert.True(await pool.DrainAsync(TimeSpan.FromSeconds(60), default), "hang guard: a pool with every session free did not drain within 60 s");
    }

    [Fact]
    public async Task Drain_NoTimeLeftOrTheStopsTokenCancelled_TakesTheFreeSessions_WaitsForNoBusyOne()
    {
        // A stop whose host's stop time has run out: a pool with no call in flight still drains (its
        // sessions are closed), one with a session held does not wait for it.
        using var session = fixture.OpenRawSession();
        using var stopped = new CancellationTokenSource();
        await stopped.CancelAsync();
        var pool = new SessionPool([session]);
        Assert.True(await pool.DrainAsync(TimeSpan.Zero, default));
        pool.ReleaseDrained();
        Assert.True(await pool.DrainAsync(TimeSpan.FromSeconds(60), stopped.Token));
        pool.ReleaseDrained();

        var lease = await pool.AcquireAsync(default);
        Assert.False(await pool.DrainAsync(TimeSpan.FromSeconds(60), stopped.Token).WaitAsync(TimeSpan.FromSeconds(30)));
        lease.Dispose();
    }

    [Fact]
    public async Task WaiterOnADrainedPool_WakesWhenReleased()
    {
        using var session = fixture.OpenRawSession();
        var pool = new SessionPool([session]);
        var lease = await pool.AcquireAsync(default);
        var drain = pool.DrainAsync(TimeSpan.FromSeconds(60), default); // the drain's own timeout, long only as a hang guard
        var waiter = pool.AcquireAsync(default).AsTask(); // arrives while recovery drains

        lease.Dispose();
        Assert.True(await drain, "hang guard: the drain had not ended 60 s after its session's lease was released");
        Assert.False(waiter.IsCompleted);

        pool.ReleaseDrained();
        Assert.True(await Task.WhenAny(waiter, Task.Delay(TimeSpan.FromSeconds(60))) == waiter, "hang guard: the waiter was not woken within 60 s of the release");
        (await waiter).Dispose();
    }
}
