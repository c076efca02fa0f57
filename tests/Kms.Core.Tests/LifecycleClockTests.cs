using Kms.Core.Services;
using Kms.Testing.Fakes;

namespace Kms.Core.Tests;

/// <summary>
/// The lifecycle's trusted time: the wall clock, but never further than the time the deployment
/// has seen pass (the monotonic clock while it runs, a restart's gap up to the allowance). The two clocks are moved separately here, as a stepped system clock moves
/// one and not the other.
/// </summary>
public sealed class LifecycleClockTests
{
    private static readonly DateTimeOffset Start = new(2026, 12, 1, 12, 0, 0, TimeSpan.Zero);
    private static readonly TimeSpan Year = TimeSpan.FromDays(365);
    private readonly InMemoryStore _store = new();
    private readonly SplitClock _time = new(Start);
    private readonly LifecycleOptions _options = new();

    [Fact]
    public async Task FirstPassOfTheDeployment_TakesTheClock_AndRecordsIt()
    {
        Assert.Equal(Start, await NewClock().NowAsync(default));
        Assert.Equal(Millis(Start), await _store.GetSettingAsync(LifecycleClock.Setting, default));
    }

    [Fact]
    public async Task Running_TimePasses_FollowsTheClock()
    {
        var clock = NewClock();
        await clock.NowAsync(default);
        _time.Pass(TimeSpan.FromSeconds(30));
        Assert.Equal(Start.AddSeconds(30), await clock.NowAsync(default));
        Assert.Equal((TimeSpan.Zero, TimeSpan.Zero), (clock.Lag, clock.Behind));
    }

    [Fact]
    public async Task Running_ClockSteppedAYearAhead_OnlyTheTimeSeenPassing_PlusAtMostATenthOfAPercent()
    {
        var clock = NewClock();
        await clock.NowAsync(default);
        _time.Step(Year);
        _time.Pass(TimeSpan.FromDays(1));
        Assert.InRange(await clock.NowAsync(default), Start.AddDays(1), Start.AddDays(1) + TimeSpan.FromSeconds(86.4));
        Assert.True(clock.Lag > Year - TimeSpan.FromMinutes(2));

        // No catch-up: seven more days seen are seven days, a waiting period is not shortened.
        for (var i = 0; i < 7; i++)
        {
            _time.Pass(TimeSpan.FromDays(1));
            await clock.NowAsync(default);
        }

        Assert.InRange(await clock.NowAsync(default), Start.AddDays(8), Start.AddDays(8) + TimeSpan.FromMinutes(12));
    }

    [Fact]
    public async Task Restart_ClockAYearAhead_NotBelieved_NorOnRepeatedRestarts()
    {
        await NewClock().NowAsync(default);
        _time.Pass(TimeSpan.FromMinutes(5));
        await NewClock().NowAsync(default); // a restart within the allowance: recorded Start + 5 min

        // Down; boots a year ahead. More than the allowance: none of it is believed.
        _time.Step(Year);
        Assert.Equal(Start.AddMinutes(5), await NewClock().NowAsync(default));

        // A crash loop earns nothing either: each start is five minutes seen, no more.
        for (var i = 0; i < 12; i++)
        {
            var restarted = NewClock();
            await restarted.NowAsync(default);
            _time.Pass(TimeSpan.FromMinutes(5));
            await restarted.NowAsync(default);
        }

        Assert.InRange(await NewClock().NowAsync(default), Start.AddMinutes(65), Start.AddMinutes(66));
    }

    [Fact]
    public async Task Restart_WithinTheAllowance_TakesTheClock()
    {
        await NewClock().NowAsync(default);
        _time.Step(TimeSpan.FromMinutes(40));
        var restarted = NewClock();
        Assert.Equal(Start.AddMinutes(40), await restarted.NowAsync(default));
        Assert.Equal(TimeSpan.Zero, restarted.Lag);
    }

    [Fact]
    public async Task Restart_AfterADowntimeLongerThanTheAllowance_WaitsForTheOperator_AcceptClockTakesIt()
    {
        await NewClock().NowAsync(default);
        _time.Step(TimeSpan.FromDays(3));
        var waiting = NewClock();
        Assert.Equal(Start, await waiting.NowAsync(default));
        Assert.Equal(TimeSpan.FromDays(3), waiting.Lag);

        var accepted = new LifecycleClock(_store, _time, new LifecycleOptions { AcceptClock = true });
        Assert.Equal(Start.AddDays(3), await accepted.NowAsync(default));
        Assert.True(accepted.Accepted);
        Assert.Equal(Start.AddDays(3), await NewClock().NowAsync(default)); // recorded
    }

    [Fact]
    public async Task ClockSteppedBack_JobsGoByTheClock_TheTimeSeenGoesOn_AndIsThereWhenTheClockIsPutRight()
    {
        var clock = NewClock();
        await clock.NowAsync(default);
        _time.Step(-TimeSpan.FromDays(2));
        _time.Pass(TimeSpan.FromHours(1));
        Assert.Equal(Start.AddHours(1).AddDays(-2), await clock.NowAsync(default));
        Assert.Equal(TimeSpan.FromDays(2), clock.Behind);

        // NTP puts it right: nothing stalls.
        _time.Step(TimeSpan.FromDays(2));
        _time.Pass(TimeSpan.FromHours(1));
        Assert.Equal(Start.AddHours(2), await clock.NowAsync(default));
        Assert.Equal((TimeSpan.Zero, TimeSpan.Zero), (clock.Lag, clock.Behind));
    }

    [Fact]
    public async Task LeaderAgainAfterAMonth_TheClusterClockJumpedAYear_OnlyTheMonthIsBelieved()
    {
        var a = NewClock();
        await a.NowAsync(default);
        _time.Pass(TimeSpan.FromDays(30)); // followers do not ask; another node led
        _time.Step(Year);
        Assert.InRange(await a.NowAsync(default), Start.AddDays(30), Start.AddDays(30) + TimeSpan.FromHours(1));
    }

    [Theory]
    [InlineData("not a time")]
    [InlineData("9223372036854775807")]
    [InlineData("-5")]
    public async Task UnbelievableRecord_TreatedAsNone_NoFailure(string record)
    {
        await _store.SetSettingAsync(LifecycleClock.Setting, record, default);
        Assert.Equal(Start, await NewClock().NowAsync(default));
        Assert.Equal(Millis(Start), await _store.GetSettingAsync(LifecycleClock.Setting, default));
    }

    [Fact]
    public async Task RecordFarAhead_JobsGoByTheClock_Reported_AcceptClockReplacesIt()
    {
        var future = new DateTimeOffset(8999, 1, 1, 0, 0, 0, TimeSpan.Zero);
        await _store.SetSettingAsync(LifecycleClock.Setting, Millis(future), default);
        var clock = NewClock();
        Assert.Equal(Start, await clock.NowAsync(default));
        Assert.Equal(future - Start, clock.Behind);

        Assert.Equal(Start, await new LifecycleClock(_store, _time, new LifecycleOptions { AcceptClock = true }).NowAsync(default));
        Assert.Equal(Millis(Start), await _store.GetSettingAsync(LifecycleClock.Setting, default));
    }

    [Fact]
    public void Allowance_OutOfRange_Refused()
    {
        Assert.Throws<ArgumentOutOfRangeException>(() => new LifecycleClock(_store, _time, new LifecycleOptions { ClockJumpAllowance = TimeSpan.FromDays(2) }));
        Assert.Throws<ArgumentOutOfRangeException>(() => new LifecycleClock(_store, _time, new LifecycleOptions { ClockJumpAllowance = -TimeSpan.FromSeconds(1) }));
    }

    private static string Millis(DateTimeOffset time) => time.ToUnixTimeMilliseconds().ToString(System.Globalization.CultureInfo.InvariantCulture);

    private LifecycleClock NewClock() => new(_store, _time, _options);
}
