using System.Globalization;
using Kms.Core.Ports;

namespace Kms.Core.Services;

/// <summary>
/// The time the lifecycle's irreversible work runs by (destruction of due keys and versions,
/// erasure of expired import jobs, audit retention): the wall clock, but never further than
/// the time this deployment has seen pass.
/// </summary>
/// <remarks>
/// <para>A node that boots with its clock a year ahead (a dead RTC battery, a wrong NTP
/// source, a restored VM) would otherwise destroy every DESTROY_SCHEDULED key at its first
/// pass. SQLite has no second clock to compare with, so the evidence is the store's own: the
/// <em>observed time</em> the last pass recorded (setting <c>lifecycle_trusted_time</c>).</para>
/// <para>The observed time advances with the monotonic clock while a node runs (and by at most
/// 0.1% more, towards the wall clock: drift and NTP's small corrections). At a node's first
/// pass, the recorded time is moved up to the wall clock only if the gap is no more than
/// <see cref="LifecycleOptions.ClockJumpAllowance"/> (a restart); a larger gap is not believed,
/// whether it is a wrong clock or a long downtime, until an operator says so
/// (<see cref="LifecycleOptions.AcceptClock"/>). The jobs get the earlier of the wall clock and
/// the observed time: a doubtful clock delays them, never hastens them.</para>
/// <para>The first pass of a deployment (nothing recorded) takes the wall clock.</para>
/// </remarks>
public sealed class LifecycleClock
{
    /// <summary>The setting holding the observed time (Unix milliseconds).</summary>
    public const string Setting = "lifecycle_trusted_time";

    // Beyond this a recorded value is not a time this deployment observed (and would overflow).
    private static readonly DateTimeOffset LatestBelievable = new(9000, 1, 1, 0, 0, 0, TimeSpan.Zero);

    private readonly IKeyStore _store;
    private readonly TimeProvider _time;
    private readonly LifecycleOptions _options;
    private readonly Lock _lock = new();
    private (DateTimeOffset Observed, long At)? _last;

    /// <summary>Creates the clock.</summary>
    /// <exception cref="ArgumentOutOfRangeException">The allowance is negative or longer than a day.</exception>
    public LifecycleClock(IKeyStore store, TimeProvider time, LifecycleOptions options)
    {
        ArgumentNullException.ThrowIfNull(options);
        if (options.ClockJumpAllowance < TimeSpan.Zero || options.ClockJumpAllowance > TimeSpan.FromDays(1))
        {
            throw new ArgumentOutOfRangeException(nameof(options), options.ClockJumpAllowance, "Lifecycle:ClockJumpAllowance must be from 0 to 1 day");
        }

        (_store, _time, _options) = (store, time, options);
    }

    /// <summary>How far the wall clock was ahead of the time the jobs got, at the last <see cref="NowAsync"/>.</summary>
    public TimeSpan Lag { get; private set; }

    /// <summary>How far the observed time was ahead of the wall clock (a clock set back, or a record not to be believed), at the last <see cref="NowAsync"/>.</summary>
    public TimeSpan Behind { get; private set; }

    /// <summary>Whether the last <see cref="NowAsync"/> took the wall clock on the operator's word (<see cref="LifecycleOptions.AcceptClock"/>).</summary>
    public bool Accepted { get; private set; }

    /// <summary>
    /// The time the jobs run by now; the observed time is recorded in the store for the next
    /// node or restart. Called by the leader once per pass.
    /// </summary>
    public async Task<DateTimeOffset> NowAsync(CancellationToken cancellationToken)
    {
        var recorded = Parse(await _store.GetSettingAsync(Setting, cancellationToken));
        var wall = Clock.Now(_time);
        var at = _time.GetTimestamp();
        DateTimeOffset observed;
        lock (_lock)
        {
            Accepted = false;
            if (_last is { } last)
            {
                // Running: what the monotonic clock measured, and up to 0.1% more towards the wall clock.
                var elapsed = _time.GetElapsedTime(last.At, at);
                var measured = last.Observed + elapsed;
                var stretched = last.Observed + (elapsed * 1.001);
                observed = Later(measured, Earlier(wall, stretched));
            }
            else if (recorded is null || _options.AcceptClock)
            {
                observed = wall;
                Accepted = recorded is not null;
            }
            else
            {
                // A restart: its downtime is believed up to the allowance, and not at all beyond.
                observed = wall - recorded.Value <= _options.ClockJumpAllowance ? Later(wall, recorded.Value) : recorded.Value;
            }

            // Another node (PostgreSQL) may have recorded more; what anyone observed stands.
            if (recorded is { } other && other > observed && !Accepted)
            {
                observed = other;
            }

            observed = DateTimeOffset.FromUnixTimeMilliseconds(observed.ToUnixTimeMilliseconds());
            _last = (observed, at);
            Lag = wall > observed ? wall - observed : TimeSpan.Zero;
            Behind = observed > wall ? observed - wall : TimeSpan.Zero;
        }

        if (recorded != observed)
        {
            await _store.SetSettingAsync(Setting, observed.ToUnixTimeMilliseconds().ToString(CultureInfo.InvariantCulture), cancellationToken);
        }

        return Earlier(wall, observed);
    }

    /// <summary>
    /// The observed time the last pass recorded, or null (none yet, or a value not to be believed):
    /// what a node whose clock was set back is held to. Reads only; <see cref="NowAsync"/>, which
    /// records, is the lifecycle leader's, once a pass.
    /// </summary>
    public static async Task<DateTimeOffset?> RecordedAsync(IKeyStore store, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(store);
        return Parse(await store.GetSettingAsync(Setting, cancellationToken));
    }

    private static DateTimeOffset? Parse(string? text) =>
        long.TryParse(text, NumberStyles.Integer, CultureInfo.InvariantCulture, out var millis)
        && millis >= 0 && millis <= LatestBelievable.ToUnixTimeMilliseconds()
            ? DateTimeOffset.FromUnixTimeMilliseconds(millis)
            : null;

    private static DateTimeOffset Later(DateTimeOffset a, DateTimeOffset b) => a > b ? a : b;

    private static DateTimeOffset Earlier(DateTimeOffset a, DateTimeOffset b) => a < b ? a : b;
}
