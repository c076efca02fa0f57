using System.Collections.Concurrent;
using System.Threading.Channels;
using Kms.Core.Errors;
using Kms.Core.Keys;
using Kms.Core.Names;
using Kms.Core.Ports;

namespace Kms.Core.Services;

/// <summary>
/// Counts GCM encryptions per key version against the usage bounds, and decryptions and
/// last-use times for operators.
/// </summary>
/// <remarks>
/// <para>Encryptions are reserved in durable blocks (<see cref="UsageLimitOptions.ReservationBlock"/>):
/// one database write per block, not per request. The durable count is the sum of all
/// reservations, so after a crash it can only run ahead of the exact count (by the unused
/// part of a block), never behind: a bound is never exceeded because of a restart. Several
/// nodes reserving from the same database share one durable count.</para>
/// <para>At the soft bound the key is queued for rotation (<see cref="RotationRequests"/>);
/// past the hard bound the version refuses to encrypt (FAILED_PRECONDITION).</para>
/// <para>Decrypt counts and last-use times are kept in memory and written by
/// <see cref="FlushAsync"/> (periodically and at shutdown): they may lag, or lose the last
/// interval in a crash. Each flush carries this node's id and a growing number, and the store
/// applies it once (<see cref="UsageFlush"/>): a flush whose write failed is sent again, the same
/// flush, before any later one, so counts whose write committed though it failed (a connection
/// lost in PostgreSQL's COMMIT, its answer never read) are not counted twice, and those of a write
/// that rolled back are not lost.</para>
/// <para>The counts <see cref="Observe"/> shows on a node never move backwards, though the
/// stored usage it is given may have been read before or after a flush or a reservation in
/// flight committed: it never counts the same use twice (a flush's counts are taken out of the
/// pending ones before it writes; a block being reserved is counted unused), so it may show
/// less than the truth for a moment, and it shows no less than it showed before. A flush whose
/// write failed is not shown until it is sent again and settled, as the store may or may not hold
/// it.</para>
/// </remarks>
[System.Diagnostics.CodeAnalysis.SuppressMessage("Design", "CA1001", Justification = "The flush gate lives as long as the process; it never allocates a wait handle.")]
public sealed class UsageCounter(IKeyStore store, UsageLimitOptions limits, TimeProvider time)
{
    private readonly ConcurrentDictionary<KeyVersionId, VersionCounter> _counters = new();

    // Flushes one at a time, in sequence order, a failed one sent again before the next.
    private readonly SemaphoreSlim _flushGate = new(1, 1);
    private readonly Guid _node = Guid.NewGuid();
    private long _sequence;
    private PendingFlush? _unsettled;
    private readonly Channel<KeyName> _rotations = Channel.CreateBounded<KeyName>(new BoundedChannelOptions(1024)
    {
        FullMode = BoundedChannelFullMode.DropOldest,
        SingleReader = true,
    });

    /// <summary>Keys whose primary version reached the soft bound, for the rotation job.</summary>
    public ChannelReader<KeyName> RotationRequests => _rotations.Reader;

    /// <summary>
    /// Takes <paramref name="count"/> encryptions of <paramref name="version"/> against its
    /// bounds before they happen.
    /// </summary>
    /// <exception cref="KmsException">FailedPrecondition past the hard bound; nothing is counted then.</exception>
    public async ValueTask TakeEncryptionsAsync(KeyVersion version, int count, CancellationToken cancellationToken)
    {
        var counter = _counters.GetOrAdd(version.Id, static _ => new VersionCounter());
        await counter.Gate.WaitAsync(cancellationToken);
        try
        {
            if (counter.Next + count - 1 > limits.HardBound)
            {
                throw KmsErrors.FailedPrecondition(
                    $"key version {version.Name} has reached its usage limit of {limits.HardBound} encryptions; rotate the key (the new primary version encrypts)");
            }

            while (counter.Next + count - 1 > counter.End)
            {
                var block = Math.Max(limits.ReservationBlock, count);
                lock (counter.Sync)
                {
                    counter.Reserving = block;
                }

                long total;
                try
                {
                    total = await store.ReserveEncryptionsAsync(version.Id, block, cancellationToken);
                }
                catch
                {
                    lock (counter.Sync)
                    {
                        counter.Reserving = 0;
                    }

                    throw;
                }

                lock (counter.Sync)
                {
                    if (counter.End < total - block)
                    {
                        // Reservations by other nodes (or before a restart) came in between: skip them.
                        counter.Next = total - block + 1;
                    }

                    counter.End = total;
                    counter.Reserving = 0;
                }

                if (total >= limits.SoftBound)
                {
                    _rotations.Writer.TryWrite(version.Name.Key);
                }

                if (counter.Next + count - 1 > limits.HardBound)
                {
                    throw KmsErrors.FailedPrecondition(
                        $"key version {version.Name} has reached its usage limit of {limits.HardBound} encryptions; rotate the key (the new primary version encrypts)");
                }
            }

            lock (counter.Sync)
            {
                counter.Next += count;
            }

            counter.MarkEncrypted(time.GetUtcNow());
        }
        finally
        {
            counter.Gate.Release();
        }
    }

    /// <summary>Notes a decryption (in memory until the next flush).</summary>
    public void CountDecryption(KeyVersionId id)
    {
        var counter = _counters.GetOrAdd(id, static _ => new VersionCounter());
        Interlocked.Increment(ref counter.PendingDecryptions);
        counter.MarkDecrypted(time.GetUtcNow());
    }

    /// <summary>
    /// The stored usage plus what this node has not written yet, less what it reserved and has
    /// not used; never less than this node showed before.
    /// </summary>
    public KeyVersionUsage Observe(KeyVersion version)
    {
        var stored = version.Usage;
        if (!_counters.TryGetValue(version.Id, out var counter))
        {
            return stored;
        }

        long next, end, reserving;
        lock (counter.Sync)
        {
            (next, end, reserving) = (counter.Next, counter.End, counter.Reserving);
        }

        // The stored count includes this node's whole current block once it is written; take back
        // what the node has not used. A block being reserved may already be in it (written, the
        // node not told yet): taken back too, unused — if the excess was another node's, this
        // shows less for a moment, never more than was used.
        var used = stored.EncryptCount;
        if (end >= next && end <= stored.EncryptCount)
        {
            used -= end - next + 1;
        }

        if (reserving > 0 && stored.EncryptCount > end)
        {
            used -= Math.Min(reserving, stored.EncryptCount - end);
        }

        return stored with
        {
            EncryptCount = VersionCounter.RaiseShown(ref counter.ShownEncryptions, Math.Max(0, used)),
            DecryptCount = VersionCounter.RaiseShown(ref counter.ShownDecryptions, stored.DecryptCount + Interlocked.Read(ref counter.PendingDecryptions)),
            LastEncryptTime = Later(stored.LastEncryptTime, counter.LastEncrypt),
            LastDecryptTime = Later(stored.LastDecryptTime, counter.LastDecrypt),
        };
    }

    /// <summary>
    /// Writes pending decrypt counts and last-use times; first, a flush whose write failed before,
    /// sent again as it was.
    /// </summary>
    public async Task FlushAsync(CancellationToken cancellationToken)
    {
        await _flushGate.WaitAsync(cancellationToken);
        try
        {
            if (_unsettled is { } unsettled)
            {
                await SendAsync(unsettled, cancellationToken);
            }

            var counters = new List<VersionCounter>();
            var deltas = new List<UsageDelta>();
            foreach (var (id, counter) in _counters)
            {
                var decryptions = Interlocked.Exchange(ref counter.PendingDecryptions, 0);
                var lastEncrypt = counter.LastEncrypt;
                var lastDecrypt = counter.LastDecrypt;
                if (decryptions > 0 || lastEncrypt != counter.FlushedEncrypt || lastDecrypt != counter.FlushedDecrypt)
                {
                    counters.Add(counter);
                    deltas.Add(new UsageDelta(id, decryptions, lastEncrypt, lastDecrypt));
                }
            }

            if (deltas.Count > 0)
            {
                await SendAsync(new PendingFlush(new UsageFlush(_node, ++_sequence, time.GetUtcNow(), deltas), counters), cancellationToken);
            }
        }
        finally
        {
            _flushGate.Release();
        }
    }

    // Writes a flush; one that fails stays unsettled, to be sent again as it is: the store may have
    // committed it (then the same flush again changes nothing) or not (then it is applied).
    private async Task SendAsync(PendingFlush pending, CancellationToken cancellationToken)
    {
        _unsettled = pending;
        await store.RecordUsageAsync(pending.Flush, cancellationToken);
        _unsettled = null;
        foreach (var (counter, delta) in pending.Counters.Zip(pending.Flush.Deltas))
        {
            counter.FlushedEncrypt = delta.LastEncryptTime;
            counter.FlushedDecrypt = delta.LastDecryptTime;
        }
    }

    private static DateTimeOffset? Later(DateTimeOffset? a, DateTimeOffset? b) => a is null ? b : b is null ? a : a > b ? a : b;

    // A flush sent, or to be sent again, with the counters its deltas were taken from (in the same order).
    private sealed record PendingFlush(UsageFlush Flush, IReadOnlyList<VersionCounter> Counters);

    [System.Diagnostics.CodeAnalysis.SuppressMessage("Design", "CA1001", Justification = "Counters live as long as the process.")]
    private sealed class VersionCounter
    {
        public readonly SemaphoreSlim Gate = new(1, 1);

        // Guards Next, End and Reserving, written under Gate, so Observe reads them together.
        public readonly Lock Sync = new();
        public long PendingDecryptions;

        // Global ordinals of this node's current reservation: (End - block, End]; Next is the next to use.
        public long Next = 1;
        public long End;

        // The size of a block being reserved (written to the store, or about to be), 0 when none.
        public long Reserving;

        // The highest counts Observe has shown.
        public long ShownEncryptions;
        public long ShownDecryptions;
        public DateTimeOffset? FlushedEncrypt;
        public DateTimeOffset? FlushedDecrypt;

        // Last-use times as UTC ticks (0: never), written and read without tearing.
        private long _lastEncryptTicks;
        private long _lastDecryptTicks;

        public DateTimeOffset? LastEncrypt => FromTicks(Interlocked.Read(ref _lastEncryptTicks));

        public DateTimeOffset? LastDecrypt => FromTicks(Interlocked.Read(ref _lastDecryptTicks));

        public void MarkEncrypted(DateTimeOffset now) => Interlocked.Exchange(ref _lastEncryptTicks, now.UtcTicks);

        public void MarkDecrypted(DateTimeOffset now) => Interlocked.Exchange(ref _lastDecryptTicks, now.UtcTicks);

        // Shows the larger of count and what was shown before, and remembers it.
        public static long RaiseShown(ref long shown, long count)
        {
            var before = Interlocked.Read(ref shown);
            while (count > before)
            {
                var seen = Interlocked.CompareExchange(ref shown, count, before);
                if (seen == before)
                {
                    return count;
                }

                before = seen;
            }

            return before;
        }

        private static DateTimeOffset? FromTicks(long ticks) => ticks == 0 ? null : new DateTimeOffset(ticks, TimeSpan.Zero);
    }
}
