using Microsoft.Extensions.Time.Testing;

namespace Kms.Core.Tests;

public sealed class LogThrottleTests
{
    [Fact]
    public void Count_ManyWithinASecond_LoggedOnceThenWithEveryCountSinceAfterTheSecond()
    {
        var time = new FakeTimeProvider();
        var throttle = new LogThrottle(time);

        Assert.Equal(1, throttle.Count()); // the first is logged
        Assert.All(Enumerable.Range(0, 99), _ => Assert.Equal(0, throttle.Count()));

        time.Advance(TimeSpan.FromMilliseconds(999));
        Assert.Equal(0, throttle.Count());

        time.Advance(TimeSpan.FromMilliseconds(1));
        Assert.Equal(99 + 1 + 1, throttle.Count()); // none lost: every one since the last log
        Assert.Equal(0, throttle.Count());
    }

    [Fact]
    public void Count_OncePerSecond_EachLogged()
    {
        var time = new FakeTimeProvider();
        var throttle = new LogThrottle(time);

        for (var i = 0; i < 5; i++)
        {
            Assert.Equal(1, throttle.Count());
            time.Advance(TimeSpan.FromSeconds(1));
        }
    }
}
