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

        Assert.False(await pool.DrainAsync(TimeSpan.FromMilliseconds(100)));

        lease.Dispose();
        Assert.True(await pool.DrainAsync(TimeSpan.FromSeconds(5)));
    }

    [Fact]
    public async Task WaiterOnADrainedPool_WakesWhenReleased()
    {
        using var session = fixture.OpenRawSession();
        var pool = new SessionPool([session]);
        var lease = await pool.AcquireAsync(default);
        var drain = pool.DrainAsync(TimeSpan.FromSeconds(30));
        var waiter = pool.AcquireAsync(default).AsTask(); // arrives while recovery drains

        lease.Dispose();
        Assert.True(await drain.WaitAsync(TimeSpan.FromSeconds(10)));
        Assert.False(waiter.IsCompleted);

        pool.ReleaseDrained();
        (await waiter.WaitAsync(TimeSpan.FromSeconds(10))).Dispose();
    }
}
