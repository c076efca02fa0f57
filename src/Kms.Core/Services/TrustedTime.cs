using Kms.Core.Ports;

namespace Kms.Core.Services;

/// <summary>
/// The time by which checks made on every call judge what has ended — an API token's expiry, a
/// client certificate's validity and its CRL's freshness, the EXPIRED state shown for import jobs
/// and quorum requests: the later of this node's clock and a <em>floor</em>, the latest time this
/// deployment has evidence of, kept in memory so that no call reads the store for it.
/// </summary>
/// <remarks>
/// <para>A node whose clock is set back (a wrong NTP source, a VM restored from a snapshot)
/// would otherwise accept a credential that has expired. The evidence is what
/// <see cref="Clock"/>'s <c>LatestAsync</c> weighs per decision: the database server's clock
/// (PostgreSQL's, another machine's) and the observed time the lifecycle recorded
/// (<see cref="LifecycleClock"/>; on SQLite the only second clock). <see cref="RefreshAsync"/>
/// reads both, at start (before the first call is served) and once per lifecycle pass on every
/// node; between reads the floor advances with the monotonic clock. What the record (and
/// <see cref="Observe"/>) raised it to never moves back within a process; the database server's
/// clock counts as last read, each reading replacing the one before: like this node's, that
/// clock can be stepped ahead and put right, and a reading a year ahead must not refuse every
/// token and certificate on every node until each restarts.</para>
/// <para>This node's own clock is not evidence for the floor: a clock stepped a year ahead and put
/// right would otherwise refuse every token until a restart. The recorded time is immune to such
/// a step (it believes a jump ahead only up to <see cref="LifecycleOptions.ClockJumpAllowance"/>
/// at a start). While <see cref="LifecycleOptions.AcceptClock"/> is set the record is not read:
/// the operator has said the clock is right and the record wrong.</para>
/// </remarks>
public sealed class TrustedTime
{
    private readonly IKeyStore _store;
    private readonly TimeProvider _time;
    private readonly bool _readRecord;
    private Evidence? _floor;
    private Evidence? _database;

    /// <summary>Creates the clock, with no floor until <see cref="RefreshAsync"/> or <see cref="Observe"/>.</summary>
    public TrustedTime(IKeyStore store, TimeProvider time, LifecycleOptions options)
    {
        ArgumentNullException.ThrowIfNull(options);
        (_store, _time, _readRecord) = (store, time, !options.AcceptClock);
    }

    /// <summary>The later of this node's clock and the floor: no earlier than any time this deployment has evidence of.</summary>
    public DateTimeOffset GetUtcNow()
    {
        var now = _time.GetUtcNow();
        if (Volatile.Read(ref _floor) is { } floor && floor.Now(_time) is var held && held > now)
        {
            now = held;
        }

        return Volatile.Read(ref _database) is { } database && database.Now(_time) is var read && read > now ? read : now;
    }

    /// <summary>Raises the floor to <paramref name="evidence"/> (a time known to have been reached) if it is later; never lowers it.</summary>
    public void Observe(DateTimeOffset evidence)
    {
        var candidate = new Evidence(evidence, _time.GetTimestamp());
        while (true)
        {
            var current = Volatile.Read(ref _floor);
            if (current is not null && current.Now(_time) >= evidence)
            {
                return;
            }

            if (Interlocked.CompareExchange(ref _floor, candidate, current) == current)
            {
                return;
            }
        }
    }

    /// <summary>
    /// Reads the evidence in the store: the database server's clock (replacing the previous
    /// reading, which may have been of a clock since put right) and the lifecycle's record (which
    /// raises the floor, never lowers it).
    /// </summary>
    public async Task RefreshAsync(CancellationToken cancellationToken)
    {
        if (await _store.GetDatabaseTimeAsync(cancellationToken) is { } database)
        {
            Volatile.Write(ref _database, new Evidence(database, _time.GetTimestamp()));
        }

        if (_readRecord && await LifecycleClock.RecordedAsync(_store, cancellationToken) is { } recorded)
        {
            Observe(recorded);
        }
    }

    // A time reached at monotonic timestamp At: by now, at least that much later.
    private sealed record Evidence(DateTimeOffset Time, long At)
    {
        public DateTimeOffset Now(TimeProvider time) => Time + time.GetElapsedTime(At);
    }
}
