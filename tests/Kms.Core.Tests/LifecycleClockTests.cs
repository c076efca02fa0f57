using Kms.Core.Services;
using Kms.Testing.Fakes;

namespace Kms.Core.Tests;

/// <summary>
/// The lifecycle's trusted time: the wall clock, believed only as fast as the monotonic clock
/// sees time pass. The two clocks are moved separately here, as a stepped system clock moves
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
        Assert.Equal(Start.ToUnixTimeMilliseconds().ToString(System.Globalization.CultureInfo.InvariantCulture), await _store.GetSettingAsync(LifecycleClock.Setting, default));
    }

    [Fact]
    public async Task Running_TimePasses_FollowsTheClock()
    {
        var clock = NewClock();
        await clock.NowAsync(default);
        _time.Pass(TimeSpan.FromSeconds(30));
        Assert.Equal(Start.AddSeconds(30), await clock.NowAsync(default));
        Assert.Equal(TimeSpan.Zero, clock.Lag);
    }

    [Fact]
    public async Task Running_ClockSteppedAYearAhead_BelievedAtOneExtraSecondPerSecond()
    {
        var clock = NewClock();
        await clock.NowAsync(default);
        _time.Step(Year);
        _time.Pass(TimeSpan.FromSeconds(30));
        Assert.Equal(Start.AddSeconds(60), await clock.NowAsync(default));
        Assert.Equal(Year - TimeSpan.FromSeconds(30), clock.Lag);

        // A day of real time later: two days of the jump taken on.
        _time.Pass(TimeSpan.FromDays(1));
        Assert.Equal(Start.AddSeconds(60).AddDays(2), await clock.NowAsync(default));
    }

    [Fact]
    public async Task Restart_ClockAYearAhead_RecordedTimePlusTheAllowance_ThenCatchesUp()
    {
        await NewClock().NowAsync(default);
        _time.Pass(TimeSpan.FromMinutes(5));
        await NewClock().NowAsync(default); // recorded: Start + 5 min

        // Down; boots a year ahead. Its downtime is unknown: an hour of it is believed at once.
        _time.Step(Year);
        var restarted = NewClock();
        Assert.Equal(Start.AddMinutes(5) + _options.ClockJumpAllowance, await restarted.NowAsync(default));
        _time.Pass(TimeSpan.FromHours(2));
        Assert.Equal(Start.AddMinutes(5) + _options.ClockJumpAllowance + TimeSpan.FromHours(4), await restarted.NowAsync(default));

        // Another node (or restart) goes on from what was recorded, never from before it.
        Assert.Equal(Start.AddMinutes(5) + TimeSpan.FromHours(6), await NewClock().NowAsync(default));
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
    public async Task ClockSteppedBack_TrustedTimeStaysUntilTheClockPassesIt()
    {
        var clock = NewClock();
        _time.Pass(TimeSpan.FromHours(1));
        await clock.NowAsync(default);
        _time.Step(-TimeSpan.FromDays(2));
        _time.Pass(TimeSpan.FromMinutes(1));
        Assert.Equal(Start.AddHours(1), await clock.NowAsync(default));
        Assert.Equal(Start.AddHours(1), await NewClock().NowAsync(default));
        _time.Step(TimeSpan.FromDays(2));
        _time.Pass(TimeSpan.FromMinutes(1));
        Assert.Equal(Start.AddHours(1).AddMinutes(2), await clock.NowAsync(default));
    }

    [Fact]
    public async Task UnreadableRecord_TreatedAsNone()
    {
        await _store.SetSettingAsync(LifecycleClock.Setting, "not a time", default);
        Assert.Equal(Start, await NewClock().NowAsync(default));
    }

    private LifecycleClock NewClock() => new(_store, _time, _options);

    /// <summary>A wall clock that can be stepped without the monotonic clock moving, and time that passes on both.</summary>
    private sealed class SplitClock(DateTimeOffset wall) : TimeProvider
    {
        private DateTimeOffset _wall = wall;
        private long _ticks;

        public override long TimestampFrequency => TimeSpan.TicksPerSecond;

        public override DateTimeOffset GetUtcNow() => _wall;

        public override long GetTimestamp() => _ticks;

        public void Step(TimeSpan by) => _wall += by;

        public void Pass(TimeSpan by)
        {
            _wall += by;
            _ticks += by.Ticks;
        }
    }
}
