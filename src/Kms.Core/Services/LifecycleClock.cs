using System.Globalization;
using Kms.Core.Ports;

namespace Kms.Core.Services;

/// <summary>
/// The time the lifecycle's irreversible work runs by (destruction of due keys and versions,
/// erasure of expired import jobs, audit retention): the wall clock, believed only as fast as
/// time is seen to pass.
/// </summary>
/// <remarks>
/// <para>A node that boots with its clock a year ahead (a dead RTC battery, a wrong NTP
/// source, a restored VM) would otherwise destroy every DESTROY_SCHEDULED key at its first
/// pass, the waiting period cut to nothing. PostgreSQL deployments also compare the node's
/// clock with the database server's (<c>Storage:Postgres:MaxClockSkew</c>); SQLite has no
/// second clock, so the evidence is the store's own: the trusted time the last pass recorded
/// (the <c>lifecycle_trusted_time</c> setting).</para>
/// <para>Each pass takes the wall clock, but no further than the previous trusted time plus
/// twice the time the monotonic clock saw pass since (catching up by one second per second),
/// or, on a node's first pass, the recorded time plus <see cref="LifecycleOptions.ClockJumpAllowance"/>
/// (the restart's downtime is not known). It never goes back. So a clock that jumped ahead is
/// taken on only at the pace of real time, a jump of a year in a year, long after the alert;
/// downtime longer than the allowance delays destructions by at most as long as it lasted.
/// Destruction is irreversible: a doubtful clock may delay it, never hasten it.</para>
/// <para>The first pass of a deployment (nothing recorded) takes the wall clock.</para>
/// </remarks>
public sealed class LifecycleClock(IKeyStore store, TimeProvider time, LifecycleOptions options)
{
    /// <summary>The setting holding the last trusted time (Unix milliseconds).</summary>
    public const string Setting = "lifecycle_trusted_time";

    private readonly Lock _lock = new();
    private (DateTimeOffset Trusted, long At)? _last;

    /// <summary>How far the wall clock was ahead of the trusted time at the last <see cref="NowAsync"/>.</summary>
    public TimeSpan Lag { get; private set; }

    /// <summary>
    /// The trusted time now, recorded in the store for the next node or restart. Called by the
    /// leader once per pass.
    /// </summary>
    public async Task<DateTimeOffset> NowAsync(CancellationToken cancellationToken)
    {
        var recorded = await store.GetSettingAsync(Setting, cancellationToken) is { } text
            && long.TryParse(text, NumberStyles.Integer, CultureInfo.InvariantCulture, out var millis)
            ? DateTimeOffset.FromUnixTimeMilliseconds(millis)
            : (DateTimeOffset?)null;
        var wall = Clock.Now(time);
        var at = time.GetTimestamp();
        DateTimeOffset trusted;
        lock (_lock)
        {
            // The furthest the clock is believed: this node's own last reading plus twice the
            // time passed; else (first pass here) the recorded one plus the allowance; else
            // (first pass of the deployment) the clock.
            var limit = _last is { } last
                ? last.Trusted + (2 * time.GetElapsedTime(last.At, at))
                : recorded + options.ClockJumpAllowance ?? wall;

            // Never back: not behind what this node or another (PostgreSQL) trusted already.
            var floor = Later(recorded, _last?.Trusted);
            trusted = DateTimeOffset.FromUnixTimeMilliseconds((Later(wall < limit ? wall : limit, floor) ?? wall).ToUnixTimeMilliseconds());
            _last = (trusted, at);
            Lag = wall > trusted ? wall - trusted : TimeSpan.Zero;
        }

        if (recorded is null || trusted > recorded)
        {
            await store.SetSettingAsync(Setting, trusted.ToUnixTimeMilliseconds().ToString(CultureInfo.InvariantCulture), cancellationToken);
        }

        return trusted;
    }

    private static DateTimeOffset? Later(DateTimeOffset? a, DateTimeOffset? b) => a is null ? b : b is null || a > b ? a : b;
}
