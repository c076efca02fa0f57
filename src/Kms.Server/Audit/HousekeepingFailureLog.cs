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

    /// <summary>Kinds of failure going on right now (the refusal included).</summary>
    public int FailingKinds
    {
        get
        {
            lock (_lock)
            {
                return _failing.Count;
            }
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
