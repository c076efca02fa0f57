using Kms.Core.Audit;
using Kms.Core.Ports;

namespace Kms.Testing.Fakes;

/// <summary>
/// The audit port in memory. Unlike SqliteStore it does not attach a mutation's event to
/// the mutation's write (<see cref="AuditScope"/>): every event arrives through the
/// AuditLog's group commit, which is what domain tests need.
/// </summary>
public sealed partial class InMemoryStore : IAuditStore
{
    private readonly List<AuditEvent> _audit = [];
    private readonly List<AuditCheckpoint> _checkpoints = [];

    // The time summary (first sequence, last, least and greatest time), by first sequence, as the SQL stores keep it.
    private readonly SortedList<long, (long Last, DateTimeOffset MinTime, DateTimeOffset MaxTime)> _blocks = [];
    private AuditHead _anchor = AuditChain.Empty;

    /// <summary>When set, audit appends fail as an unreachable database does.</summary>
    public bool AuditUnavailable { get; set; }

    /// <summary>How long each audit commit takes to return (a disk's flush); zero: at once.</summary>
    public TimeSpan AuditCommitLatency { get; set; }

    public Task<IReadOnlyList<AuditEvent>> AppendAuditAsync(IReadOnlyList<AuditEntry> entries, CancellationToken cancellationToken)
    {
        var written = AppendAuditNow(entries);
        return AuditCommitLatency > TimeSpan.Zero ? AfterLatency(written) : Task.FromResult<IReadOnlyList<AuditEvent>>(written);

        async Task<IReadOnlyList<AuditEvent>> AfterLatency(IReadOnlyList<AuditEvent> result)
        {
            await Task.Delay(AuditCommitLatency, CancellationToken.None);
            return result;
        }
    }

    private List<AuditEvent> AppendAuditNow(IReadOnlyList<AuditEntry> entries)
    {
        lock (_lock)
        {
            if (AuditUnavailable)
            {
                throw Kms.Core.Errors.KmsErrors.Unavailable("the database is unavailable; retry shortly");
            }

            var head = HeadLocked();
            var written = new List<AuditEvent>();
            foreach (var entry in entries)
            {
                var linked = AuditChain.Link(head, entry);
                _audit.Add(linked);
                written.Add(linked);
                head = new AuditHead(linked.Sequence, linked.Hash);
            }

            return written;
        }
    }

    public Task<AuditHead> GetAuditHeadAsync(CancellationToken cancellationToken)
    {
        lock (_lock)
        {
            return Task.FromResult(HeadLocked());
        }
    }

    public Task<IReadOnlyList<AuditEvent>> ListAuditEventsAsync(AuditQuery query, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(query);
        lock (_lock)
        {
            var ordered = query.NewestFirst ? _audit.AsEnumerable().Reverse() : _audit;
            IReadOnlyList<AuditEvent> rows = ordered.Where(e => e.Sequence > query.AfterSequence && e.Sequence < query.BeforeSequence)
                .Where(e =>
                {
                    AuditEventsRead++;
                    return (query.StartTime is not { } start || e.Entry.Time >= start)
                        && (query.EndTime is not { } end || e.Entry.Time < end)
                        && (query.Principal is null || e.Entry.Principal == query.Principal)
                        && (query.Tenant is null || e.Entry.Tenant == query.Tenant || (e.Entry.Tenant is null && (e.Entry.Resource == "tenants/" + query.Tenant || (e.Entry.Resource?.StartsWith("tenants/" + query.Tenant + "/", StringComparison.Ordinal) ?? false))))
                        && (query.Resource is null || Names(e.Entry.Resource, query.Resource) || (e.Entry.KeyVersions?.Any(version => Names(version, query.Resource)) ?? false))
                        && (query.Operation is null || e.Entry.Operation == query.Operation || e.Entry.Operation.EndsWith("/" + query.Operation, StringComparison.Ordinal))
                        && (query.Outcome is null || e.Entry.Outcome == query.Outcome);
                })
                .Take(query.Limit)
                .ToList();
            return Task.FromResult(rows);
        }
    }

    /// <summary>
    /// How many events the listings read (tests): each between a query's sequence bounds until its
    /// limit matched, as the SQL stores' walk along the primary key from a bound (with no principal filter).
    /// </summary>
    public long AuditEventsRead { get; private set; }

    // The resource filter: the name itself or anything under it (a key and its versions).
    private static bool Names(string? name, string filter) => name == filter || (name?.StartsWith(filter + "/", StringComparison.Ordinal) ?? false);

    public Task AddAuditCheckpointAsync(AuditCheckpoint checkpoint, CancellationToken cancellationToken)
    {
        lock (_lock)
        {
            if (!_checkpoints.Any(c => c.Sequence == checkpoint.Sequence))
            {
                _checkpoints.Add(checkpoint);
                _checkpoints.Sort((a, b) => a.Sequence.CompareTo(b.Sequence));
            }

            return Task.CompletedTask;
        }
    }

    public Task<IReadOnlyList<AuditCheckpoint>> ListAuditCheckpointsAsync(long afterSequence, int limit, CancellationToken cancellationToken)
    {
        lock (_lock)
        {
            return Task.FromResult<IReadOnlyList<AuditCheckpoint>>(_checkpoints.Where(c => c.Sequence > afterSequence).Take(limit).ToList());
        }
    }

    public Task<AuditCheckpoint?> GetLatestAuditCheckpointAsync(CancellationToken cancellationToken)
    {
        lock (_lock)
        {
            return Task.FromResult(_checkpoints.LastOrDefault());
        }
    }

    public Task<AuditCheckpoint?> FindAuditCheckpointAtOrBeforeAsync(long sequence, CancellationToken cancellationToken)
    {
        lock (_lock)
        {
            return Task.FromResult(_checkpoints.LastOrDefault(c => c.Sequence <= sequence));
        }
    }

    public Task<long> PruneAuditAsync(long throughSequence, CancellationToken cancellationToken)
    {
        lock (_lock)
        {
            var anchor = _checkpoints.Single(c => c.Sequence == throughSequence);
            _checkpoints.RemoveAll(c => c.Sequence < throughSequence);
            var removed = _audit.RemoveAll(e => e.Sequence <= throughSequence);
            foreach (var cut in _blocks.Where(b => b.Value.Last <= throughSequence).Select(b => b.Key).ToList())
            {
                _blocks.Remove(cut);
            }

            _anchor = new AuditHead(anchor.Sequence, anchor.HeadHash);
            return Task.FromResult((long)removed);
        }
    }

    /// <summary>
    /// Rolls the audit chain back to <paramref name="sequence"/> (tests): the events and checkpoints
    /// after it are gone, as after a restore of an older dump or a failover that lost commits.
    /// </summary>
    public void RollBackAudit(long sequence)
    {
        lock (_lock)
        {
            _audit.RemoveAll(e => e.Sequence > sequence);
            _checkpoints.RemoveAll(c => c.Sequence > sequence);
        }
    }

    /// <summary>How often <see cref="FindAuditWalkStartAsync"/> was asked (tests).</summary>
    public int AuditWalkStarts { get; private set; }

    public Task<long?> FindAuditWalkStartAsync(AuditQuery query, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(query);
        lock (_lock)
        {
            AuditWalkStarts++;
            var start = query.StartTime ?? DateTimeOffset.MinValue;
            var end = query.EndTime ?? DateTimeOffset.MaxValue;
            bool Meets((long Last, DateTimeOffset MinTime, DateTimeOffset MaxTime) b) => b.MaxTime >= start && b.MinTime < end;
            var firstBlock = _blocks.Count > 0 ? _blocks.Keys[0] : (long?)null;
            var lastBlock = _blocks.Count > 0 ? _blocks.Values.Max(b => b.Last) : 0;
            if (!query.NewestFirst)
            {
                // The first block past the bound that meets the range, the tail, or the first event past the bound before the first block.
                List<long> firsts = [.. _blocks.Where(b => b.Value.Last > query.AfterSequence && Meets(b.Value)).Select(b => b.Key), lastBlock + 1];
                if (firstBlock is { } f)
                {
                    firsts.AddRange(_audit.Where(e => e.Sequence > query.AfterSequence && e.Sequence < f).Select(e => e.Sequence).Take(1));
                }

                var first = Math.Max(firsts.Min(), query.AfterSequence + 1);
                return Task.FromResult(first < query.BeforeSequence ? first : (long?)null);
            }

            // The last block before the bound that meets the range, the tail's newest event before it, or before the first block.
            List<long> lasts = [.. _blocks.Where(b => b.Key < query.BeforeSequence && Meets(b.Value)).Select(b => b.Value.Last), query.AfterSequence];
            lasts.AddRange(_audit.Where(e => e.Sequence > lastBlock && e.Sequence < query.BeforeSequence).Select(e => e.Sequence).TakeLast(1));
            if (firstBlock is { } g)
            {
                lasts.Add(g - 1);
            }

            var last = Math.Min(lasts.Max(), query.BeforeSequence - 1);
            return Task.FromResult(last > query.AfterSequence ? last : (long?)null);
        }
    }

    /// <summary>How many blocks' events <see cref="SummariseAuditBlocksAsync"/> has read (tests).</summary>
    public long AuditBlocksRead { get; private set; }

    public Task<int> SummariseAuditBlocksAsync(int blockEvents, int maxBlocks, CancellationToken cancellationToken)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(blockEvents, 1);
        lock (_lock)
        {
            var summarised = 0;
            while (summarised < maxBlocks && _audit.Count > 0)
            {
                var first = Math.Max(_blocks.Count > 0 ? _blocks.Values.Max(b => b.Last) + 1 : 0, _audit[0].Sequence);
                var last = first + blockEvents - 1;
                if (_audit[^1].Sequence < last)
                {
                    break;
                }

                AuditBlocksRead++;
                var block = _audit.Where(e => e.Sequence >= first && e.Sequence <= last).ToList();
                _blocks.TryAdd(first, (last, block.Min(e => e.Entry.Time), block.Max(e => e.Entry.Time)));
                summarised++;
            }

            return Task.FromResult(summarised);
        }
    }

    private AuditHead HeadLocked() => _audit.Count > 0 ? new AuditHead(_audit[^1].Sequence, _audit[^1].Hash) : _checkpoints.Count > 0 ? new AuditHead(_checkpoints[^1].Sequence, _checkpoints[^1].HeadHash) : _anchor;
}
