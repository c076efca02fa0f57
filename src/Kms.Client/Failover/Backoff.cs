namespace Kms.Client.Failover;

/// <summary>
/// Exponential backoff with full jitter: the wait before the n-th backoff of a call is drawn
/// uniformly from [0, min(max, base · 2^(n-1))), so clients that failed together do not
/// come back together.
/// </summary>
/// <param name="baseDelay">The ceiling of the first wait.</param>
/// <param name="maxDelay">The largest ceiling.</param>
/// <param name="unitRandom">Uniform in [0, 1); injectable so tests can pin it.</param>
internal sealed class Backoff(TimeSpan baseDelay, TimeSpan maxDelay, Func<double> unitRandom)
{
    // 2^30 times any sensible base is far past any sensible maximum; capping the exponent
    // keeps the arithmetic finite for callers that count very high.
    private const int MaxDoublings = 30;

    /// <summary>The largest ceiling of any wait.</summary>
    public TimeSpan MaxDelay => maxDelay;

    /// <summary>The upper bound of the <paramref name="backoff"/>-th wait (from 1).</summary>
    public TimeSpan Ceiling(int backoff)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(backoff, 1);
        var ticks = baseDelay.Ticks * Math.Pow(2, Math.Min(backoff - 1, MaxDoublings));
        return ticks >= maxDelay.Ticks ? maxDelay : TimeSpan.FromTicks((long)ticks);
    }

    /// <summary>The <paramref name="backoff"/>-th wait (from 1): uniform in [0, <see cref="Ceiling"/>).</summary>
    public TimeSpan Delay(int backoff)
    {
        return TimeSpan.FromTicks((long)(Ceiling(backoff).Ticks * Unit()));
    }

    /// <summary>
    /// The <paramref name="backoff"/>-th wait with half of it certain: uniform in
    /// [<see cref="Ceiling"/>/2, <see cref="Ceiling"/>). For attempts the client itself did not
    /// send, which must never be repeated at once.
    /// </summary>
    public TimeSpan DelayAtLeastHalf(int backoff) => (Ceiling(backoff) / 2) + (Delay(backoff) / 2);

    /// <summary>
    /// A wait of at least <paramref name="asked"/> (a server's RetryInfo delay), with up to a quarter
    /// more of jitter, so that clients refused together do not come back together: uniform in
    /// [asked, 1.25 · asked), never above <paramref name="most"/> (nor below <paramref name="asked"/>).
    /// </summary>
    public TimeSpan AtLeast(TimeSpan asked, TimeSpan most)
    {
        var wait = asked + TimeSpan.FromTicks((long)(asked.Ticks / 4 * Unit()));
        return wait <= most ? wait : (most > asked ? most : asked);
    }

    private double Unit()
    {
        var unit = unitRandom();
        return unit is < 0 or >= 1 || double.IsNaN(unit)
            ? throw new InvalidOperationException($"the random source returned {unit}, outside [0, 1)")
            : unit;
    }
}
