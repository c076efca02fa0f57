using Kms.Client.Failover;

namespace Kms.Client.Tests.Failover;

public sealed class BackoffTests
{
    private static readonly TimeSpan Base = TimeSpan.FromMilliseconds(100);
    private static readonly TimeSpan Max = TimeSpan.FromSeconds(1);

    [Theory]
    [InlineData(1, 100)]
    [InlineData(2, 200)]
    [InlineData(3, 400)]
    [InlineData(4, 800)]
    [InlineData(5, 1000)]
    [InlineData(64, 1000)]
    [InlineData(int.MaxValue, 1000)]
    public void Ceiling_NthBackoff_DoublesFromBaseUpToMax(int backoff, int expectedMilliseconds)
    {
        Assert.Equal(TimeSpan.FromMilliseconds(expectedMilliseconds), new Backoff(Base, Max, () => 0).Ceiling(backoff));
    }

    [Theory]
    [InlineData(0.0, 3, 200)]
    [InlineData(0.5, 3, 300)]
    [InlineData(0.0, 1, 50)]
    [InlineData(0.5, 9, 750)]
    public void DelayAtLeastHalf_PinnedRandom_HalfTheCeilingPlusHalfThatFraction(double unit, int backoff, int expectedMilliseconds)
    {
        Assert.Equal(TimeSpan.FromMilliseconds(expectedMilliseconds), new Backoff(Base, Max, () => unit).DelayAtLeastHalf(backoff));
    }

    [Theory]
    [InlineData(0.0, 3, 0)]
    [InlineData(0.5, 3, 200)]
    [InlineData(0.25, 1, 25)]
    [InlineData(0.5, 9, 500)]
    public void Delay_PinnedRandom_IsThatFractionOfTheCeiling(double unit, int backoff, int expectedMilliseconds)
    {
        Assert.Equal(TimeSpan.FromMilliseconds(expectedMilliseconds), new Backoff(Base, Max, () => unit).Delay(backoff));
    }

    [Fact]
    public void Delay_RandomJustBelowOne_StaysBelowTheCeiling()
    {
        var backoff = new Backoff(Base, Max, () => Math.BitDecrement(1.0));
        Assert.InRange(backoff.Delay(2), TimeSpan.FromMilliseconds(199), TimeSpan.FromMilliseconds(200) - TimeSpan.FromTicks(1));
    }

    [Fact]
    public void Delay_SystemRandom_SpreadsOverTheWholeRange()
    {
        var backoff = new Backoff(Base, Max, Random.Shared.NextDouble);
        var delays = Enumerable.Range(0, 2000).Select(_ => backoff.Delay(4)).ToList();

        Assert.All(delays, d => Assert.InRange(d, TimeSpan.Zero, TimeSpan.FromMilliseconds(800) - TimeSpan.FromTicks(1)));
        Assert.Contains(delays, d => d < TimeSpan.FromMilliseconds(100));
        Assert.Contains(delays, d => d > TimeSpan.FromMilliseconds(700));
    }

    [Theory]
    [InlineData(1.0)]
    [InlineData(-0.1)]
    [InlineData(double.NaN)]
    public void Delay_RandomOutsideUnitInterval_Refused(double unit)
    {
        Assert.Throws<InvalidOperationException>(() => new Backoff(Base, Max, () => unit).Delay(1));
    }
}
