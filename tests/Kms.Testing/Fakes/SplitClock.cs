namespace Kms.Testing.Fakes;

/// <summary>A wall clock that can be stepped without the monotonic clock moving, and time that passes on both.</summary>
public sealed class SplitClock(DateTimeOffset wall) : TimeProvider
{
    private DateTimeOffset _wall = wall;
    private long _ticks;

    /// <inheritdoc/>
    public override long TimestampFrequency => TimeSpan.TicksPerSecond;

    /// <inheritdoc/>
    public override DateTimeOffset GetUtcNow() => _wall;

    /// <inheritdoc/>
    public override long GetTimestamp() => _ticks;

    /// <summary>Steps the wall clock (as NTP or an operator would); the monotonic clock does not move.</summary>
    public void Step(TimeSpan by) => _wall += by;

    /// <summary>Lets time pass: both clocks move.</summary>
    public void Pass(TimeSpan by)
    {
        _wall += by;
        _ticks += by.Ticks;
    }
}
