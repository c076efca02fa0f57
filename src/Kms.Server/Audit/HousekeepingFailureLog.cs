using Kms.Core.Errors;

namespace Kms.Server.Audit;

/// <summary>
/// What the audit housekeeping's failures leave in the log, by kind of failure: the first of a
/// kind at once (event 1311 for a refused checkpoint, 1304 for any other failure), then while it
/// goes on at most one reminder per <see cref="ReminderInterval"/> with how many failed retries
/// were not logged (1312), and one line when it stops (1313). Housekeeping retries every second:
/// logged each time, a refusal that stands until an operator acts wrote 86,400 lines a day.
/// </summary>
/// <remarks>
/// A kind is the refusal to sign a checkpoint over a chain that no longer passes through the
/// last known one, or through the audit head the node recorded (it ends when a checkpoint is
/// signed again, or the chain passes through the record again), or else the exception's type and
/// error code (it ends with the first pass that does not report it again).
/// </remarks>
internal sealed partial class HousekeepingFailureLog(ILogger logger, TimeProvider time)
{
    /// <summary>At most one line per kind of failure per this long while it goes on.</summary>
    public static readonly TimeSpan ReminderInterval = TimeSpan.FromMinutes(5);

    /// <summary>The kind of a refused checkpoint.</summary>
    public const string CheckpointRefused = "checkpoint refused";

    private readonly Lock _lock = new();
    private readonly Dictionary<string, Episode> _failing = new(StringComparer.Ordinal);
    private readonly HashSet<string> _seen = new(StringComparer.Ordinal);

    // The SIEM stream file's episode of another writer's lock (1342 when it began, 1343 when an
    // append got through): since when, and how many appends it held off. Null: none going on.
    private (DateTimeOffset Since, long Skipped)? _streamLocked;

    // The node's checkpoints.jsonl's episode of another writer's lock (1348 when it began, 1349 when
    // the pending checkpoints were appended): since when. Null: none going on.
    private DateTimeOffset? _checkpointsLocked;

    /// <summary>Kinds of failure going on right now (the refusal included, and a SIEM stream file or this node's checkpoints.jsonl another writer holds locked).</summary>
    public int FailingKinds
    {
        get
        {
            lock (_lock)
            {
                return _failing.Count + (_streamLocked is null ? 0 : 1) + (_checkpointsLocked is null ? 0 : 1);
            }
        }
    }

    /// <summary>
    /// This node's checkpoints.jsonl is locked by another writer: a signed checkpoint (the first of
    /// those pending: <paramref name="sequence"/>) was not appended and waits in memory
    /// (<see cref="PendingCheckpoints"/>). Logged once when such an episode begins (1348); it ends
    /// when the pending checkpoints are appended (<see cref="CheckpointsFileWritten"/>, 1349). Not a
    /// failure of the kinds above (no 1304 and reminders): each pass tries again.
    /// </summary>
    public void CheckpointsFileLocked(string path, long sequence)
    {
        lock (_lock)
        {
            if (_checkpointsLocked is not null)
            {
                return;
            }

            _checkpointsLocked = time.GetUtcNow();
            LogCheckpointsFileLocked(logger, path, sequence);
        }
    }

    /// <summary>Checkpoints were appended to this node's checkpoints.jsonl: a lock episode going on (1348) ends (1349), naming them.</summary>
    internal void CheckpointsFileWritten(string path, PendingCheckpoints.Appended appended)
    {
        lock (_lock)
        {
            if (_checkpointsLocked is not { } since)
            {
                return;
            }

            _checkpointsLocked = null;
            var seconds = (long)(time.GetUtcNow() - since).TotalSeconds;
            LogCheckpointsFileUnlocked(logger, path, seconds, appended.Count, appended.First, appended.Last, appended.Dropped);
        }
    }

    /// <summary>
    /// An append to the SIEM stream file was not made: another writer holds its lock (the append
    /// does not wait for it). Logged once when such an episode begins (1342); it ends at the
    /// next append that gets through (<see cref="StreamFileWritten"/>, 1343). Not a failure of the
    /// kinds above (no 1304 and reminders): each pass tries again, and nothing is skipped.
    /// </summary>
    public void StreamFileLocked(string stream)
    {
        lock (_lock)
        {
            if (_streamLocked is { } locked)
            {
                _streamLocked = (locked.Since, locked.Skipped + 1);
                return;
            }

            _streamLocked = (time.GetUtcNow(), 1);
            LogStreamFileLocked(logger, stream);
        }
    }

    /// <summary>An append to the SIEM stream file got through: a lock episode going on (1342) ends (1343).</summary>
    public void StreamFileWritten(string stream)
    {
        lock (_lock)
        {
            if (_streamLocked is not { } locked)
            {
                return;
            }

            _streamLocked = null;
            var seconds = (long)(time.GetUtcNow() - locked.Since).TotalSeconds;
            LogStreamFileUnlocked(logger, stream, seconds, locked.Skipped);
        }
    }

    /// <summary>The kind of a failure: <see cref="CheckpointRefused"/>, or its type and error code.</summary>
    public static string KindOf(Exception e, bool checkpointRefused)
    {
        ArgumentNullException.ThrowIfNull(e);
        return e is KmsException k
            ? checkpointRefused && k.Code == KmsErrorCode.FailedPrecondition ? CheckpointRefused : $"{nameof(KmsException)} {k.Code}"
            : e.GetType().Name;
    }

    /// <summary>One failure of a housekeeping pass (several per pass possible).</summary>
    public void Failed(Exception e, bool checkpointRefused)
    {
        if (e is StreamFileLockedException locked)
        {
            StreamFileLocked(locked.Stream);
            return;
        }

        var kind = KindOf(e, checkpointRefused);
        var now = time.GetUtcNow();
        lock (_lock)
        {
            _seen.Add(kind);
            if (!_failing.TryGetValue(kind, out var failing))
            {
                _failing[kind] = new Episode(now);
                if (kind == CheckpointRefused)
                {
                    LogCheckpointRefused(logger, e.Message, (int)ReminderInterval.TotalMinutes);
                }
                else
                {
                    LogHousekeepingFailed(logger, kind, e.Message, (int)ReminderInterval.TotalMinutes);
                }

                return;
            }

            failing.Failures++;
            if (now - failing.LastLogged < ReminderInterval)
            {
                failing.Suppressed++;
                return;
            }

            var minutes = (long)(now - failing.Since).TotalMinutes;
            LogStillFailing(logger, kind, minutes, failing.Suppressed, e.Message);
            failing.LastLogged = now;
            failing.Suppressed = 0;
        }
    }

    /// <summary>A pass ended: a kind it did not report again has stopped (the refusal: when no longer refusing).</summary>
    public void PassEnded(bool checkpointRefused)
    {
        var now = time.GetUtcNow();
        lock (_lock)
        {
            foreach (var (kind, failing) in _failing.ToList())
            {
                if (kind == CheckpointRefused ? checkpointRefused : _seen.Contains(kind))
                {
                    continue;
                }

                _failing.Remove(kind);
                var seconds = (long)(now - failing.Since).TotalSeconds;
                LogRecovered(logger, kind, seconds, failing.Failures + 1);
            }

            _seen.Clear();
        }
    }

    [LoggerMessage(EventId = 1304, Level = LogLevel.Error, Message = "audit housekeeping (refusal counts, SIEM stream, checkpoint) failed ({Kind}: {Reason}); retried every second, logged again every {Minutes} minutes while it goes on (1312) and once when it stops (1313)")]
    private static partial void LogHousekeepingFailed(ILogger logger, string kind, string reason, int minutes);

    [LoggerMessage(EventId = 1311, Level = LogLevel.Error, Message = "audit checkpoints are not signed: {Reason}. Retried every second; logged again every {Minutes} minutes while refused (1312), and once when a checkpoint is signed again (1313); kms_audit_checkpoint_signing_refused is 1 meanwhile")]
    private static partial void LogCheckpointRefused(ILogger logger, string reason, int minutes);

    [LoggerMessage(EventId = 1312, Level = LogLevel.Error, Message = "audit housekeeping still failing ({Kind}) after {Minutes} min; {Suppressed} failed retries not logged since the last line: {Reason}")]
    private static partial void LogStillFailing(ILogger logger, string kind, long minutes, long suppressed, string reason);

    [LoggerMessage(EventId = 1342, Level = LogLevel.Warning, Message = "the SIEM stream file {Stream} is locked by another writer (another server or kms command appending to it, or another process's fcntl lock): nothing is appended to it while it is, and the housekeeping pass goes on without it (checkpoints, retention); each pass tries again without waiting, the events staying in the database meanwhile, none skipped; logged once, and once when an append gets through (1343)")]
    private static partial void LogStreamFileLocked(ILogger logger, string stream);

    [LoggerMessage(EventId = 1343, Level = LogLevel.Information, Message = "the SIEM stream file {Stream} was appended to again, {Seconds} s after another writer's lock first held an append off (1342); {Skipped} appends were not made meanwhile, and the events they held follow, none skipped")]
    private static partial void LogStreamFileUnlocked(ILogger logger, string stream, long seconds, long skipped);

    [LoggerMessage(EventId = 1348, Level = LogLevel.Warning, Message = "this node's checkpoint file {Path} is locked by another writer (a kms command on the data directory, or another process's fcntl lock): audit checkpoint {Sequence}, signed and stored in the database, is not appended to it yet; it and the checkpoints signed after it wait in memory and are appended, in order, once the lock is free (tried at every housekeeping pass, without waiting: the pass goes on). Logged once, and once when they are appended (1349)")]
    private static partial void LogCheckpointsFileLocked(ILogger logger, string path, long sequence);

    [LoggerMessage(EventId = 1349, Level = LogLevel.Information, Message = "this node's checkpoint file {Path} was appended to again, {Seconds} s after another writer's lock first held a checkpoint off (1348): the {Count} checkpoints signed meanwhile, {First} through {Last}, in order ({Dropped} older ones dropped past the pending limit)")]
    private static partial void LogCheckpointsFileUnlocked(ILogger logger, string path, long seconds, int count, long first, long last, long dropped);

    [LoggerMessage(EventId = 1313, Level = LogLevel.Information, Message = "audit housekeeping recovered: {Kind} ended after {Seconds} s and {Failures} failures")]
    private static partial void LogRecovered(ILogger logger, string kind, long seconds, long failures);

    private sealed class Episode(DateTimeOffset since)
    {
        public DateTimeOffset Since { get; } = since;

        public DateTimeOffset LastLogged { get; set; } = since;

        public long Failures { get; set; }

        public long Suppressed { get; set; }
    }
}
