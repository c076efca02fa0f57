namespace Kms.Core.Services;

/// <summary>Bounds of the key lifecycle, checked up front. Bound from the <c>Lifecycle</c> section.</summary>
public sealed class LifecycleOptions
{
    /// <summary>Waiting period of a scheduled deletion or destruction when none is given.</summary>
    public TimeSpan DefaultWaitingPeriod { get; set; } = TimeSpan.FromDays(30);

    /// <summary>Shortest waiting period a caller may ask for.</summary>
    public TimeSpan MinWaitingPeriod { get; set; } = TimeSpan.FromDays(7);

    /// <summary>Longest waiting period a caller may ask for.</summary>
    public TimeSpan MaxWaitingPeriod { get; set; } = TimeSpan.FromDays(30);

    /// <summary>Shortest scheduled rotation period.</summary>
    public TimeSpan MinRotationPeriod { get; set; } = TimeSpan.FromDays(1);

    /// <summary>Longest scheduled rotation period (100 years).</summary>
    public TimeSpan MaxRotationPeriod { get; set; } = TimeSpan.FromDays(36500);

    /// <summary>
    /// How far ahead of the last recorded observed time a node's clock is believed when it
    /// starts (a restart's downtime); a larger gap is not believed at all for the lifecycle's
    /// irreversible work until <see cref="AcceptClock"/> (<see cref="LifecycleClock"/>). 0 to 1 day.
    /// </summary>
    public TimeSpan ClockJumpAllowance { get; set; } = TimeSpan.FromHours(1);

    /// <summary>
    /// The operator's word that this node's clock is right: its first lifecycle pass takes the
    /// clock as the observed time, whatever the gap (after a downtime longer than
    /// <see cref="ClockJumpAllowance"/>, or a restore of an old backup). Set it for one start,
    /// then remove it: left on, every start believes the clock.
    /// </summary>
    public bool AcceptClock { get; set; }
}

/// <summary>
/// GCM usage bounds per key version (NIST SP 800-38D allows 2^32 invocations with random
/// 96-bit IVs; these stay far below). Bound from the <c>UsageLimits</c> section.
/// </summary>
public sealed class UsageLimitOptions
{
    /// <summary>At this many encryptions the key is rotated automatically. Default 2^30.</summary>
    public long SoftBound { get; set; } = 1L << 30;

    /// <summary>Past this many encryptions the version refuses to encrypt. Default 2^31.</summary>
    public long HardBound { get; set; } = 1L << 31;

    /// <summary>Encryptions reserved per durable write: one database write per this many encryptions.</summary>
    public int ReservationBlock { get; set; } = 4096;
}
