using Kms.Core.Files;

namespace Kms.Server.Audit;

/// <summary>
/// The checkpoints this node signed that are not yet in its <c>{DataDir}/audit/checkpoints.jsonl</c>,
/// in the order they were signed. Each checkpoint is appended when it is signed, with every one
/// still pending before it in the same append; another writer's lock on the file (a <c>kms</c>
/// command on the data directory, a process's <c>fcntl</c> lock) is tried once, not waited for:
/// while it is held the checkpoints wait here, and go with the next append (the next checkpoint,
/// or the retry at the end of each housekeeping pass), each once and in order.
/// </summary>
/// <remarks>
/// The file is the node's anchor against a rollback of the database (its newest checkpoint is read
/// at the next start), so a signed checkpoint is not dropped for a lock. Before, the append waited
/// up to 10 s for the lock, then failed: the housekeeping pass (the retention cut, a
/// <c>GetAuditCheckpoint</c>) was held that long at every try, and the checkpoint, signed and stored
/// in the database, never reached the file. An append that fails otherwise (a full disk) keeps its
/// checkpoints pending too, and throws as before.
/// </remarks>
/// <param name="append">Appends whole lines to the file, waiting at most the given time for another writer's lock (<see cref="DurableFile.Append(string, ReadOnlySpan{byte}, UnixFileMode, TimeSpan, CancellationToken)"/>).</param>
internal sealed class PendingCheckpoints(Action<string, TimeSpan, CancellationToken> append)
{
    /// <summary>
    /// How many checkpoints wait at most (a lock held for a week at one checkpoint a minute); past
    /// them the oldest is dropped, counted in the next <see cref="Appended"/>: the newest is what the
    /// next start reads, and the memory does not grow with a lock that is never released.
    /// </summary>
    internal const int MaxPending = 10_000;

    private readonly Lock _lock = new();
    private readonly Queue<(long Sequence, string Line)> _pending = new();
    private long _dropped;

    /// <summary>What an append wrote: how many checkpoints, the first and last one's sequence, and how many were dropped before it (<see cref="MaxPending"/>).</summary>
    internal readonly record struct Appended(int Count, long First, long Last, long Dropped);

    /// <summary>The sequences of the checkpoints still pending, oldest first.</summary>
    public IReadOnlyList<long> Sequences
    {
        get
        {
            lock (_lock)
            {
                return [.. _pending.Select(p => p.Sequence)];
            }
        }
    }

    /// <summary>A checkpoint just signed (its export line): appended after every one still pending, the lock tried once.</summary>
    /// <returns>What was appended.</returns>
    /// <exception cref="FileLockedException">Another writer holds the file's lock: nothing written, the checkpoint pending.</exception>
    /// <exception cref="IOException">The append failed otherwise: nothing written, the checkpoint pending.</exception>
    public Appended Add(long sequence, string line)
    {
        lock (_lock)
        {
            if (_pending.Count >= MaxPending)
            {
                _pending.Dequeue();
                _dropped++;
            }

            _pending.Enqueue((sequence, line));
            return Flush(TimeSpan.Zero, CancellationToken.None);
        }
    }

    /// <summary>Appends the checkpoints still pending, if any, waiting at most <paramref name="lockWait"/> for the lock.</summary>
    /// <returns>What was appended (a count of 0: nothing was pending).</returns>
    /// <exception cref="FileLockedException">Another writer held the file's lock for longer: nothing written, all still pending.</exception>
    /// <exception cref="OperationCanceledException"><paramref name="cancellationToken"/> ended the wait: nothing written.</exception>
    /// <exception cref="IOException">The append failed otherwise: nothing written, all still pending.</exception>
    public Appended Retry(TimeSpan lockWait, CancellationToken cancellationToken)
    {
        lock (_lock)
        {
            return Flush(lockWait, cancellationToken);
        }
    }

    private Appended Flush(TimeSpan lockWait, CancellationToken cancellationToken)
    {
        if (_pending.Count == 0)
        {
            return default;
        }

        // One append for all of them: one lock, one write, one fsync; none is written twice (an
        // append that fails part-way is taken back whole).
        append(string.Join('\n', _pending.Select(p => p.Line)), lockWait, cancellationToken);
        var appended = new Appended(_pending.Count, _pending.Peek().Sequence, _pending.Last().Sequence, _dropped);
        _pending.Clear();
        _dropped = 0;
        return appended;
    }
}
