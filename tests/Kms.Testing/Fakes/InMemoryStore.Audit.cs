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

            var head = ChainableHeadLocked();
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

    private Func<AuditCheckpoint, bool>? _signedCheckpointHead;
    private AuditHead? _verifiedCheckpointHead;

    /// <summary>How many times an append had a checkpoint row checked with the audit key before chaining onto it.</summary>
    public int CheckpointHeadChecks { get; private set; }

    public void RequireSignedCheckpointHead(Func<AuditCheckpoint, bool> signedByTheAuditKey)
    {
        ArgumentNullException.ThrowIfNull(signedByTheAuditKey);
        lock (_lock)
        {
            (_signedCheckpointHead, _verifiedCheckpointHead) = (signedByTheAuditKey, null);
        }
    }

    // As SqlStore.ReadChainableHeadAsync: a head taken from a checkpoint row (no event stored) is
    // chained onto only if the audit key signed that row as a checkpoint of it.
    private AuditHead ChainableHeadLocked()
    {
        var head = HeadLocked();
        if (_audit.Count > 0 || _checkpoints.Count == 0 || _signedCheckpointHead is not { } signed || _verifiedCheckpointHead == head)
        {
            return head;
        }

        CheckpointHeadChecks++;
        if (!signed(_checkpoints[^1]))
        {
            throw Kms.Core.Errors.KmsErrors.AuditHeadNotSigned();
        }

        _verifiedCheckpointHead = head;
        return head;
    }

    public Task<AuditHead> GetAuditHeadAsync(CancellationToken cancellationToken)
    {
        lock (_lock)
        {
            AuditHeadReads++;
            return Task.FromResult(HeadLocked());
        }
    }

    /// <summary>How many times the head was read (<see cref="GetAuditHeadAsync"/>, <see cref="GetAuditHeadSourceAsync"/>), as a database would run statements (tests).</summary>
    public int AuditHeadReads { get; private set; }

    public Task<AuditHeadSource> GetAuditHeadSourceAsync(CancellationToken cancellationToken)
    {
        lock (_lock)
        {
            AuditHeadReads++;
            return Task.FromResult(new AuditHeadSource(HeadLocked(), _audit.Count == 0 && _checkpoints.Count > 0));
        }
    }

    public Task<IReadOnlyList<AuditEvent>> ListAuditEventsAsync(AuditQuery query, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(query);
        Interlocked.Increment(ref _auditReadStatements);
        return Task.FromResult(ListAuditEventsNow(query));
    }

    /// <summary>
    /// How many reads the audit listings (<see cref="ListAuditEventsAsync"/>, <see cref="FindAuditWalkStartAsync"/>,
    /// <see cref="ListAuditPageAsync"/>) were asked for, as a database would run statements (tests).
    /// </summary>
    public long AuditReadStatements => Interlocked.Read(ref _auditReadStatements);

    private long _auditReadStatements;

    /// <summary>
    /// One page: the window from the first candidate past the cursor, its events, and a look past
    /// it, each from the finer reads (as AuditPages pages before the SQL stores did it in one statement).
    /// </summary>
    public Task<AuditPage> ListAuditPageAsync(AuditQuery query, long scanWindow, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(query);
        ArgumentOutOfRangeException.ThrowIfLessThan(scanWindow, 1);
        Interlocked.Increment(ref _auditReadStatements);
        lock (_lock)
        {
            return Task.FromResult(query.NewestFirst ? NewestFirstPage(query, scanWindow) : OldestFirstPage(query, scanWindow));
        }
    }

    private AuditPage OldestFirstPage(AuditQuery query, long window)
    {
        if (FirstCandidateAfter(query, query.AfterSequence) is not { } first)
        {
            return new([], null);
        }

        var through = first > long.MaxValue - window ? long.MaxValue - 1 : first - 1 + window;
        var before = Math.Min(query.BeforeSequence, through + 1);
        var events = ListAuditEventsNow(query with { AfterSequence = first - 1, BeforeSequence = before });
        if (events.Count == query.Limit)
        {
            return new(events, events[^1].Sequence);
        }

        return new(events, before < query.BeforeSequence && FirstCandidateAfter(query, through) is not null ? through : null);
    }

    private AuditPage NewestFirstPage(AuditQuery query, long window)
    {
        if (LastCandidateBefore(query, query.BeforeSequence) is not { } last)
        {
            return new([], null);
        }

        var from = last + 1 - window;
        var after = Math.Max(query.AfterSequence, from - 1);
        var events = ListAuditEventsNow(query with { BeforeSequence = last + 1, AfterSequence = after });
        if (events.Count == query.Limit)
        {
            return new(events, events[^1].Sequence);
        }

        return new(events, after > query.AfterSequence && LastCandidateBefore(query, from) is not null ? from : null);
    }

    // The first event after `after` that the principal filter allows, past the blocks whose time summary rules the range out.
    private long? FirstCandidateAfter(AuditQuery query, long after)
    {
        if (after + 1 >= query.BeforeSequence)
        {
            return null;
        }

        if (query.StartTime is not null || query.EndTime is not null)
        {
            if (FindAuditWalkStartNow(query with { AfterSequence = after, NewestFirst = false }) is not { } start)
            {
                return null;
            }

            after = Math.Max(after, start - 1);
        }

        return ListAuditEventsNow(new AuditQuery { AfterSequence = after, BeforeSequence = query.BeforeSequence, Principal = query.Principal, Limit = 1 }) is [var found] ? found.Sequence : null;
    }

    private long? LastCandidateBefore(AuditQuery query, long before)
    {
        if (before - 1 <= query.AfterSequence)
        {
            return null;
        }

        if (query.StartTime is not null || query.EndTime is not null)
        {
            if (FindAuditWalkStartNow(query with { BeforeSequence = before, NewestFirst = true }) is not { } start)
            {
                return null;
            }

            before = Math.Min(before, start + 1);
        }

        return ListAuditEventsNow(new AuditQuery { NewestFirst = true, BeforeSequence = before, AfterSequence = query.AfterSequence, Principal = query.Principal, Limit = 1 }) is [var found] ? found.Sequence : null;
    }

    private IReadOnlyList<AuditEvent> ListAuditEventsNow(AuditQuery query)
    {
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
            return rows;
        }
    }

    /// <summary>
    /// How many events the listings read (tests): each between a query's sequence bounds until its
    /// limit matched, as the SQL stores' walk along the primary key from a bound (with no principal filter).
    /// </summary>
    public long AuditEventsRead { get; private set; }

    // The resource filter: the name itself or anything under it (a key and its versions).
    private static bool Names(string? name, string filter) => name == filter || (name?.StartsWith(filter + "/", StringComparison.Ordinal) ?? false);

    public Task<AuditCheckpoint?> AddAuditCheckpointAsync(AuditCheckpoint checkpoint, CancellationToken cancellationToken)
    {
        lock (_lock)
        {
            // As the SQL stores: a differing row at the sequence is replaced, and returned.
            var stored = _checkpoints.FindIndex(c => c.Sequence == checkpoint.Sequence);
            if (stored < 0)
            {
                _checkpoints.Add(checkpoint);
                _checkpoints.Sort((a, b) => a.Sequence.CompareTo(b.Sequence));
                return Task.FromResult<AuditCheckpoint?>(null);
            }

            var old = _checkpoints[stored];
            if (old.HeadHash == checkpoint.HeadHash && old.Time.ToUnixTimeMilliseconds() == checkpoint.Time.ToUnixTimeMilliseconds() && old.KeyFingerprint == checkpoint.KeyFingerprint
                && old.Body == checkpoint.Body && old.Signature.AsSpan().SequenceEqual(checkpoint.Signature))
            {
                return Task.FromResult<AuditCheckpoint?>(null);
            }

            _checkpoints[stored] = checkpoint;
            return Task.FromResult<AuditCheckpoint?>(old);
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

    public Task<AuditPruned> PruneAuditAsync(long throughSequence, CancellationToken cancellationToken)
    {
        lock (_lock)
        {
            var anchor = _checkpoints.Single(c => c.Sequence == throughSequence);
            var checkpointRows = _checkpoints.Where(c => c.Sequence < throughSequence).ToList();
            _checkpoints.RemoveAll(c => c.Sequence < throughSequence);
            var removed = _audit.RemoveAll(e => e.Sequence <= throughSequence);
            foreach (var cut in _blocks.Where(b => b.Value.Last <= throughSequence).Select(b => b.Key).ToList())
            {
                _blocks.Remove(cut);
            }

            _anchor = new AuditHead(anchor.Sequence, anchor.HeadHash);
            return Task.FromResult(new AuditPruned(removed, checkpointRows));
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
        Interlocked.Increment(ref _auditReadStatements);
        return Task.FromResult(FindAuditWalkStartNow(query));
    }

    private long? FindAuditWalkStartNow(AuditQuery query)
    {
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
                return first < query.BeforeSequence ? first : null;
            }

            // The last block before the bound that meets the range, the tail's newest event before it, or before the first block.
            List<long> lasts = [.. _blocks.Where(b => b.Key < query.BeforeSequence && Meets(b.Value)).Select(b => b.Value.Last), query.AfterSequence];
            lasts.AddRange(_audit.Where(e => e.Sequence > lastBlock && e.Sequence < query.BeforeSequence).Select(e => e.Sequence).TakeLast(1));
            if (firstBlock is { } g)
            {
                lasts.Add(g - 1);
            }

            var last = Math.Min(lasts.Max(), query.BeforeSequence - 1);
            return last > query.AfterSequence ? last : null;
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
