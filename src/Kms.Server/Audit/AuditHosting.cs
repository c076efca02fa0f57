using System.Text;
using Kms.Core.Audit;
using Kms.Core.Files;
using Kms.Core.Services;
using Kms.Server.Grpc;
using Kms.Server.Hosting;

namespace Kms.Server.Audit;

/// <summary>The audit settings of the host (<c>Kms:Audit</c>), besides the log's own (<see cref="AuditOptions"/>).</summary>
public sealed class AuditHostOptions
{
    /// <summary>Off only in dev mode, for the benchmark's audit-off baseline; a production start refuses it.</summary>
    public bool Enabled { get; set; } = true;

    /// <summary>Where written events are streamed as JSON lines for a SIEM (the export format), or <c>-</c> for stdout; unset: no stream.</summary>
    public string? StreamPath { get; set; }

    /// <summary>
    /// Start on a database whose audit chain went back behind the newest checkpoint this node
    /// signed (its <c>checkpoints.jsonl</c>) or the audit head it last saw (<c>head.json</c>)
    /// although no re-application of destructions since that reaches it is recorded in it: the
    /// rollback is accepted as it is, and a version destroyed after it is served again. Off by
    /// default (the start is refused, event 1318). The node still signs no checkpoint until that
    /// file is moved aside and the node restarted (<c>checkpoints.jsonl</c>: event 1309;
    /// <c>head.json</c>, kept as it is, also until the chain passes through it again: event 1311),
    /// with the gauge <c>kms_audit_checkpoint_signing_refused</c> at 1 meanwhile: accepting to
    /// serve a rollback is not vouching for the chain that replaced what the node saw.
    /// </summary>
    public bool AcceptRollback { get; set; }

    /// <summary>
    /// The least <see cref="AuditOptions.SummaryBlockEvents"/> a server starts with: below it the
    /// time summary (one row a block) grows toward the log's length, and a time-ranged listing
    /// reads it on every page. Store-level tests use smaller blocks.
    /// </summary>
    public const int MinSummaryBlockEvents = 1_000;

    /// <summary>The greatest <see cref="AuditOptions.SummaryBlockEvents"/> a server starts with: a page's window (<see cref="AuditPages.DefaultScanWindow"/>).</summary>
    public const int MaxSummaryBlockEvents = (int)AuditPages.DefaultScanWindow;
}

/// <summary>
/// Runs the group-commit loop, and ships what must also live outside the database: every
/// checkpoint goes to the log stream (event 1302) and to <c>{DataDir}/audit/checkpoints.jsonl</c>,
/// the signing key's public key to <c>{DataDir}/audit/signing-key.pem</c>, and events to the
/// SIEM stream when configured.
/// </summary>
internal sealed partial class AuditWorker(AuditLog audit, AuditHostOptions options, Microsoft.Extensions.Options.IOptions<KmsServerOptions> server, ILogger<AuditWorker> logger, TimeProvider time) : BackgroundService
{
    private readonly Lock _fileLock = new();

    /// <summary>Loads or creates the audit keys and publishes the public key; before the server serves.</summary>
    public async Task InitializeAsync(CancellationToken cancellationToken)
    {
        await audit.InitializeAsync(cancellationToken);
        // Synced into the data directory when created: the checkpoints and the published key
        // synced into it would otherwise go with it at a power loss.
        var directory = DurableFile.CreateDirectory(Path.Combine(Path.GetFullPath(server.Value.DataDir), "audit"));
        var pem = Path.Combine(directory, "signing-key.pem");
        // Published again at every start: replaced whole, never rewritten in place (a crash
        // in the middle would leave the pinned key's file torn or empty).
        await DurableFile.WriteAsync(pem, Encoding.ASCII.GetBytes(AuditGrpcService.PublicKeyPem(audit.PublicKey)), DurableFile.Public, overwrite: true, cancellationToken);
        LogSigningKey(logger, audit.Fingerprint, pem);

        // Housekeeping retries every second: each kind of failure is logged when it starts, then
        // at most every few minutes with what was not logged, and once when it ends.
        var failures = _failures = new HousekeepingFailureLog(logger, time);
        Observability.KmsMetrics.Track(audit, failures);
        audit.HousekeepingFailed += e => failures.Failed(e, audit.CheckpointRefusedSince is not null);

        // This node's own record of the checkpoints it signed: those another writer's lock kept out
        // of it are appended at the end of each pass (before the pass's failures are closed, so that
        // a failure of that append counts in it).
        var checkpoints = _checkpointsPath = Path.Combine(directory, "checkpoints.jsonl");
        var pending = _pendingCheckpoints = new PendingCheckpoints((lines, lockWait, token) => Append(checkpoints, lines, lockWait, token));
        audit.HousekeepingPassEnded += () =>
        {
            try
            {
                AppendPendingCheckpoints(() => pending.Retry(TimeSpan.Zero, CancellationToken.None));
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException)
            {
                failures.Failed(e, checkpointRefused: false);
            }
        };
        audit.HousekeepingPassEnded += () => failures.PassEnded(audit.CheckpointRefusedSince is not null);
        // Once a row a run each: a retention pass meets the same rows every pass (1332), an
        // append or checkpoint the same head (1331), until someone deletes them.
        var passedOver = new OncePerRow();
        var refused = new OncePerRow();
        audit.RetentionPassedOver += (sequence, reason) =>
        {
            if (passedOver.First(sequence, reason))
            {
                LogRetentionPassedOver(logger, sequence, reason, AuditLog.MaxCheckpointRowsPassedOver);
            }
        };
        // Once a cut: the rows are gone with it, so a later cut never names them again.
        audit.RetentionRowsDeleted += (cut, sequences) =>
            LogRetentionRowsDeleted(logger, sequences.Count, cut, string.Join(", ", sequences.Take(MaxRowsNamed)), sequences.Count > MaxRowsNamed ? $" and {sequences.Count - MaxRowsNamed} more" : "");
        audit.CheckpointRowRefused += (sequence, what) =>
        {
            if (refused.First(sequence, what))
            {
                LogCheckpointRowRefused(logger, sequence, what);
            }
        };
        var appendRefused = new OncePerRow();
        audit.AppendRefused += sequence =>
        {
            if (appendRefused.First(sequence, ""))
            {
                LogAppendRefused(logger, sequence);
            }
        };
        audit.BatchWritten += (size, waited) =>
        {
            Observability.KmsMetrics.AuditBatchSize.Record(size);
            Observability.KmsMetrics.AuditLag.Record(waited.TotalSeconds);
            Observability.KmsMetrics.AuditEventsWritten.Add(size);
        };

        // This node's own record of the checkpoints it signed, outside the database: a chain
        // rewritten there while the server was stopped is not signed now either.
        var own = await audit.RequireOwnRecordAsync(checkpoints, cancellationToken);
        if (own.Skipped > 0)
        {
            LogOwnRecordSkipped(logger, checkpoints, own.Skipped, own.Checkpoint?.Sequence ?? 0);
        }

        if (own.OtherKey)
        {
            LogOwnRecordOtherKey(logger, checkpoints, audit.Fingerprint);
        }
        else if (own.Checkpoint is { } read && !own.PassesThrough)
        {
            await RequireRollbackReappliedAsync(read.Sequence, read.Time, "checkpoint", checkpoints, cancellationToken);
            LogOwnRecordNotPassedThrough(logger, read.Sequence, checkpoints);
        }
        else if (own.Checkpoint is { } taken)
        {
            LogOwnRecordTaken(logger, taken.Sequence, checkpoints);
        }

        // And of the head it last saw, written as it moves and at the stop: a node that signs
        // nothing (held above, or stopped before a checkpoint was due) served events past its
        // checkpoint, destructions among them, which a rollback behind them would bring back.
        var seenPath = Path.Combine(directory, SeenHead.FileName);
        var seen = await audit.ReadOwnHeadAsync(seenPath, cancellationToken);
        if (seen.OtherKey)
        {
            LogOwnRecordOtherKey(logger, seenPath, audit.Fingerprint);
        }
        else if (seen.Head is { } last && !seen.PassesThrough)
        {
            await RequireRollbackReappliedAsync(last.Sequence, seen.Written, "the head this node last saw, event", seenPath, cancellationToken);
        }

        audit.CheckpointWritten += checkpoint =>
        {
            var line = AuditExport.Checkpoint(checkpoint);
            LogCheckpoint(logger, checkpoint.Sequence, checkpoint.HeadHash, line);

            // Another writer's lock is not waited for (it held the pass, the retention cut or the
            // call that signed it 10 s, then the checkpoint never reached the file): the checkpoint
            // waits in memory and goes with the next append (1348, 1349). Any other failure throws,
            // as before, the checkpoint pending all the same.
            AppendPendingCheckpoints(() => pending.Add(checkpoint.Sequence, line));
        };

        if (options.StreamPath is { Length: > 0 } stream)
        {
            // A regular file is read back (its own last line says how far it got); stdout, a FIFO
            // or a device cannot be, and goes on from its position record in the data directory.
            var readBack = stream != "-" && CanReadBack(stream);
            if (readBack)
            {
                try
                {
                    if (LastStreamed(stream, StartReadBackWait, cancellationToken) is { } streamed)
                    {
                        audit.ForwardAfter(streamed);
                    }
                }
                catch (FileLockedException)
                {
                    // Another writer holds the file's lock (another server or kms command on this
                    // path, a SIEM agent's fcntl lock): how far it got is not known. Before, the
                    // stream went on from the chain's head, and the events between the file's last
                    // and the head never reached it. Now nothing is forwarded until the read-back
                    // succeeds, tried again at every housekeeping pass.
                    LogStreamReadBackHeld(logger, stream, StartReadBackWait.TotalSeconds);
                    var held = time.GetTimestamp();
                    audit.StreamReadBack = token => RetryReadBack(stream, held, token);
                }
            }
            else
            {
                await ResumeFromPositionAsync(stream, Path.Combine(directory, AuditStreamPosition.FileName), cancellationToken);

                // Stdout as a FIFO is: a pipe whose reader stopped (64 KiB fill it) held the
                // housekeeping pass in write(2) for good — no checkpoint signed, no retention, no
                // lifecycle, and a stop that never ended. The server's own logs leave stdout for
                // stderr then (KmsServerApp), so that they neither wait on that pipe nor run into a line.
                _fifo = stream == "-" ? AuditStreamFifo.ForStandardOutput() : new AuditStreamFifo(stream);
                if (stream == "-" && AuditStreamFifo.StandardErrorSharesStandardOutput() is { } shared)
                {
                    LogStreamSharesStandardError(logger, shared);
                }
            }

            // Where a stream whose last event the chain no longer holds restarts: read back from
            // the file's end (stdout cannot be: the audit log keeps a few points in memory).
            if (stream != "-")
            {
                audit.StreamHistory = () => StreamedBackwards(stream);
            }

            audit.StreamRestarted += restart =>
            {
                WriteStream(stream, [(AuditExport.Restart(restart), restart.After)]);
                LogStreamRestarted(logger, restart.After.Sequence, restart.Replaced.Sequence, restart.Replaced.Hash);

                // Recorded at once, not at the pass's end: a crash before it left a record naming the
                // replaced event, and the next start wrote a resend line after it into a stream that
                // had gone on from the restart (a line the verifier cannot place). A failure is the
                // housekeeping's; the pass's end writes it again.
                try
                {
                    RecordPosition(clean: false, force: true);
                }
                catch (Exception e) when (e is IOException or UnauthorizedAccessException)
                {
                    failures.Failed(e, checkpointRefused: false);
                }
            };

            audit.EventsWritten += events =>
            {
                WriteStream(stream, [.. events.Select(e => (AuditExport.Event(e), (AuditHead?)new AuditHead(e.Sequence, e.Hash)))]);
            };

            if (_position is not null)
            {
                // Once a pass, when the stream moved (not after every write: a record costs a
                // synced write and a rename); a failure is the housekeeping's, and the record
                // before it stands (behind the stream: a crash then sends more again, nothing less).
                audit.HousekeepingPassEnded += () =>
                {
                    try
                    {
                        RecordPosition(clean: false, force: false);
                    }
                    catch (Exception e) when (e is IOException or UnauthorizedAccessException)
                    {
                        failures.Failed(e, checkpointRefused: false);
                    }
                };
            }
        }
    }

    private HousekeepingFailureLog? _failures;

    // This node's checkpoints.jsonl, and the checkpoints it signed that are not in it yet (another
    // writer's lock kept them out, or a failed append).
    private string _checkpointsPath = "";
    private PendingCheckpoints? _pendingCheckpoints;

    // An append of pending checkpoints to checkpoints.jsonl: another writer's lock begins an episode
    // (1348), an append that gets through ends it (1349). A failure of another kind is thrown.
    private void AppendPendingCheckpoints(Func<PendingCheckpoints.Appended> append)
    {
        try
        {
            if (append() is { Count: > 0 } appended)
            {
                _failures?.CheckpointsFileWritten(_checkpointsPath, appended);
            }
        }
        catch (FileLockedException)
        {
            _failures?.CheckpointsFileLocked(_checkpointsPath, _pendingCheckpoints?.Sequences is [var first, ..] ? first : 0);
        }
    }

    // Where a SIEM stream's position record is kept, and how far the stream was sent (null: the
    // stream is read back from its file, or there is none).
    private StreamPositionState? _position;

    // The SIEM stream's FIFO writer, also for stdout when it is a pipe, a FIFO, a terminal or a
    // socket (null: the stream is a file, or stdout that is a file).
    private AuditStreamFifo? _fifo;

    // Whether the stream's next write begins with a line feed: a stream that cannot be read back,
    // at the first write of a run that did not go on from a clean stop's record. The last run may
    // have been killed in the middle of a line, which no read-back cut off; without it the first
    // line of this run (its resend line) ran on from the torn one, and both were lost to a reader
    // and to kms audit verify. An empty line is skipped by the verifier; a torn line followed by a
    // resend or restart line is too.
    private bool _newLineFirst;

    // Lines to the SIEM stream, each an event's line with its event (a restart line with the event
    // it goes on after): a line a resumed stream still owes goes first (its resend line), in the
    // same write. The position moves only once a line was written: for stdout and a file, when the
    // write returned (flushed to the pipe or, for a file, to disk); for a FIFO, by the lines a
    // reader's pipe took whole (AuditStreamFifo).
    private void WriteStream(string stream, IReadOnlyList<(string Line, AuditHead? Event)> lines)
    {
        var position = _position;
        var owed = position?.Owed;
        var all = new List<(string Line, AuditHead? Event)>(lines.Count + 2);
        if (_newLineFirst)
        {
            all.Add(("", null));
        }

        if (owed is not null)
        {
            all.Add((owed, null));
        }

        all.AddRange(lines);
        if (_fifo is { } fifo)
        {
            try
            {
                fifo.Write(all, line =>
                {
                    if (line.Event is { } reached)
                    {
                        position?.Written(reached);
                    }
                    else if (line.Line.Length == 0)
                    {
                        _newLineFirst = false;
                    }
                    else if (line.Line == owed)
                    {
                        position?.OwedSent();
                    }
                });
            }
            finally
            {
                if (fifo.LineCut)
                {
                    // A line is in the pipe in part: not a clean stop's position until it is whole.
                    position?.WriteFailed();
                }
            }

            return;
        }

        try
        {
            var text = string.Join('\n', all.Select(l => l.Line));
            if (stream == "-")
            {
                Console.Out.Write(text + "\n");
                Console.Out.Flush();
            }
            else
            {
                AppendToStreamFile(stream, text);
            }
        }
        catch
        {
            // Part of it may have been written: not a clean stop's position until a write succeeds.
            position?.WriteFailed();
            throw;
        }

        _newLineFirst = false;
        foreach (var line in all)
        {
            if (line.Event is { } reached)
            {
                position?.Written(reached);
            }
        }
    }

    // A stream that cannot be read back (stdout, a FIFO) goes on after the position recorded at the
    // last run's stop (or as that run went: a crash), if the record is this stream's, of this
    // database's audit key, and the chain passes through it. When the chain does not (the database
    // went back behind it while the node was stopped, or was rewritten there), the stream restarts
    // after the newest of the record's earlier events the chain holds, as under a running node: a
    // stream_restart line at the first pass (1323), then every event after it (event 1330); when
    // retention cut past those not held, after the last event cut, as a running node's (1339). Else
    // (none held or cut, an older record without them, another stream, another key, a damaged record)
    // from the chain's head, as without one (event 1327). The record is then written at once, not
    // clean: a crash from here on may have sent the stream more than the record says.
    private async Task ResumeFromPositionAsync(string stream, string path, CancellationToken cancellationToken)
    {
        var identity = stream == "-" ? "-" : Path.GetFullPath(stream);
        var (record, damaged) = AuditStreamPosition.Read(path);
        string? owed = null;
        string? refused = damaged;
        IReadOnlyList<AuditHead> earlier = [];
        if (record is not null)
        {
            if (record.Stream != identity)
            {
                refused = $"it is the position of another stream ({record.Stream})";
            }
            else if (record.KeyFingerprint != audit.Fingerprint)
            {
                refused = $"it was written under another audit signing key ({record.KeyFingerprint}): another database";
            }
            else if (await audit.ForwardAfterIfHeldAsync(record.Last, record.Earlier, cancellationToken))
            {
                // The record's earlier events are the running node's restart points too: a rollback
                // under it behind the record's event restarts the stream at one of them, not at the chain's start.
                // After a crash the stream may hold events past the record: they come again, after a line that says so.
                owed = record.Clean ? null : AuditExport.Resend(record.Last);
                earlier = record.Earlier;
                LogStreamResumed(logger, identity, record.Last.Sequence, path, record.Clean ? "it was written at a clean stop" : "not written at a stop (a crash): the events after it that the stream already holds come again, after a stream_resend line");
            }
            else if (await audit.RestartAfterHeldAsync(record.Last, record.Earlier, cancellationToken) is { } after)
            {
                // The restart line replaces the record's event, which must be the last the stream
                // holds before it: after a crash the stream may hold more, so a resend line after
                // that event goes first (the verifier then takes it as the last one sent).
                owed = record.Clean ? null : AuditExport.Resend(record.Last);
                earlier = [.. record.Earlier.Where(p => p.Sequence <= after.Sequence)];
                var resend = record.Clean ? "" : " (after a stream_resend line: the record was not written at a stop)";
                if (record.Earlier.Contains(after))
                {
                    LogStreamRestartsAtStart(logger, identity, path, record.Last.Sequence, record.Last.Hash, after.Sequence, resend);
                }
                else
                {
                    // Not one it lists: retention cut past those not held, and the stream restarts
                    // after the last event cut, as a running node's does.
                    LogStreamRestartsAtRetentionCut(logger, identity, path, record.Last.Sequence, record.Last.Hash, after.Sequence, record.Earlier.Count, resend);
                }
            }
            else
            {
                refused = $"the database's audit chain does not hold event {record.Last.Sequence} ({record.Last.Hash}) that it names, "
                    + (record.Earlier.Count == 0
                        ? "and it lists no earlier event the stream was sent (a record written before they were kept)"
                        : $"nor any of the {record.Earlier.Count} earlier events the stream was sent that it lists (back to event {record.Earlier[^1].Sequence})")
                    + ": the database went back behind them, or was rewritten there; no stream_restart line is written";
            }
        }

        if (refused is not null)
        {
            LogStreamPositionNotTaken(logger, path, refused, audit.StreamPosition.Sequence);
        }

        _position = new StreamPositionState(path, identity, audit.Fingerprint, audit.StreamPosition, earlier, owed, time);
        _newLineFirst = !(record is { Clean: true } && refused is null);
        RecordPosition(clean: false, force: true);
    }

    // Writes the stream's position record, if the stream has one and it moved (or force).
    private void RecordPosition(bool clean, bool force)
    {
        if (_position is { } position && position.Next(clean, force) is { } content)
        {
            DurableFile.Write(position.Path, content, DurableFile.OwnerOnly, overwrite: true);
            position.Recorded();
        }
    }

    /// <summary>
    /// Whether <paramref name="path"/> is a stream file that can be read back: a regular file, or
    /// none yet (one is created). A FIFO, a pipe or a terminal cannot (nor one that cannot be
    /// opened, whose writes fail too).
    /// </summary>
    internal static bool CanReadBack(string path)
    {
        if (!File.Exists(path))
        {
            return !Directory.Exists(path);
        }

        try
        {
            // Opened for writing too: open(2) for reading only waits, on a FIFO, for a writer.
            using var file = new FileStream(path, FileMode.Open, FileAccess.ReadWrite, FileShare.ReadWrite, bufferSize: 0);
            return file.CanSeek;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or NotSupportedException)
        {
            return false;
        }
    }

    // The position of a stream that cannot be read back: how far it was sent, and what the record holds.
    private sealed class StreamPositionState
    {
        private readonly Lock _lock = new();
        private readonly string _path;
        private readonly string _stream;
        private readonly string _key;
        private readonly TimeProvider _time;
        private readonly StreamAncestors _ancestors = new(); // events sent, thinned: the record's earlier ones
        private string? _owed;
        private AuditHead _sent;
        private AuditHead? _recorded;
        private bool _recordedClean;
        private bool _writeFailed;
        private AuditHead? _pending; // written by Next, not yet Recorded
        private bool _pendingClean;

        // Starts at the event the stream goes on after, with the events before it the record kept (any order).
        public StreamPositionState(string path, string stream, string key, AuditHead start, IEnumerable<AuditHead> earlier, string? owed, TimeProvider time)
        {
            (_path, _stream, _key, _sent, _owed, _time) = (path, stream, key, start, owed, time);
            foreach (var point in earlier.OrderBy(p => p.Sequence))
            {
                _ancestors.Sent(point);
            }

            _ancestors.Sent(start);
        }

        public string Path => _path;

        /// <summary>The resend line the stream is owed before anything else (null: none).</summary>
        public string? Owed
        {
            get
            {
                lock (_lock)
                {
                    return _owed;
                }
            }
        }

        public void Written(AuditHead reached)
        {
            lock (_lock)
            {
                (_sent, _owed, _writeFailed) = (reached, null, false);
                _ancestors.Sent(reached);
            }
        }

        public void OwedSent()
        {
            lock (_lock)
            {
                _owed = null;
            }
        }

        public void WriteFailed()
        {
            lock (_lock)
            {
                _writeFailed = true;
            }
        }

        // The record to write, or null when it would say what the last one did. Clean only when
        // nothing is owed (a resend line not yet sent: the stream may still hold events past the
        // position) and the last write did not fail part-way.
        public byte[]? Next(bool clean, bool force)
        {
            lock (_lock)
            {
                clean = clean && _owed is null && !_writeFailed;
                if (!force && _recorded == _sent && _recordedClean == clean)
                {
                    return null;
                }

                (_pending, _pendingClean) = (_sent, clean);
                return new AuditStreamPosition(_stream, _key, _sent, clean, _ancestors.Before(_sent)).ToBytes(_time.GetUtcNow());
            }
        }

        public void Recorded()
        {
            lock (_lock)
            {
                (_recorded, _recordedClean) = (_pending, _pendingClean);
            }
        }
    }

    // The chain does not pass through the newest checkpoint this node signed, or the head it last
    // saw: the database went back behind it (a pg_restore of an older dump, a kms.db copied back)
    // or its events were rewritten — the node cannot tell which. Served as it is, a rollback serves
    // every version destroyed since the dump again, so the start is refused unless destructions
    // were re-applied on this chain through it since the node was there (kms backup
    // reapply-destructions, restore: their summary event) or the operator accepts the rollback
    // (Kms:Audit:AcceptRollback, or the files moved aside, which was already the way to accept it
    // for signing). Started on AcceptRollback, the node signs nothing until the file is moved
    // aside (AuditLog.RequireOwnRecordAsync, AuditLog.ReadOwnHeadAsync keep their record).
    private async Task RequireRollbackReappliedAsync(long sequence, DateTimeOffset since, string record, string path, CancellationToken cancellationToken)
    {
        var reapplied = await audit.FindReapplicationAsync(sequence, since, cancellationToken);
        if (reapplied.Covering is not null || options.AcceptRollback)
        {
            return;
        }

        LogRollbackRefused(logger, reapplied.DatabaseHead.Sequence, record, sequence, path);
        throw AuditLog.RollbackNotReapplied(
            reapplied, sequence, record, path, "the node refuses to start", "then start",
            "start with --Kms:Audit:AcceptRollback=true (it then signs no checkpoint until the file is moved aside and it is restarted), "
            + $"or move this node's records aside ({Path.GetDirectoryName(path)}: checkpoints.jsonl.replaced-TIME and {SeenHead.FileName}.replaced-TIME)");
    }

    protected override Task ExecuteAsync(CancellationToken stoppingToken) => audit.RunAsync(stoppingToken);

    public override async Task StopAsync(CancellationToken cancellationToken)
    {
        await base.StopAsync(cancellationToken);

        // Requests have drained by now: write what the refusal windows counted, forward the last
        // events to the SIEM stream (it is otherwise forwarded once a second), and sign the head.
        // The stream is forwarded until it has the head, or for half the time the host gives the
        // steps after the drain (BoundedDrainServer.FinalStepsTime), whichever first: the checkpoint
        // and the head record need the rest. Before, for one ForwardBudget only: a stream far behind
        // was left so until the next start (which forwards the rest from the database).
        // Each step runs whatever the one before it threw (said, 1325). Before, the refusal counts
        // that could not be written (a database that refuses writes, a full disk) skipped the
        // stream's last pass and the final checkpoint, and were logged as 1303, the checkpoint's.
        try
        {
            await audit.FlushRefusalsAsync(cancellationToken);
        }
        catch (Exception e) when (e is not OutOfMemoryException)
        {
            LogStopStepFailed(logger, "refusal counts", e.GetType().Name);
        }

        try
        {
            using var forwardUntil = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
            forwardUntil.CancelAfter(FinalForwardTime);
            await audit.RunFinalHousekeepingAsync(forwardUntil.Token, cancellationToken);
        }
        catch (Exception e) when (e is not OutOfMemoryException)
        {
            LogStopStepFailed(logger, "final housekeeping pass", e.GetType().Name);
        }

        try
        {
            await audit.CheckpointAsync(cancellationToken);
        }
        catch (Kms.Core.Errors.KmsException e) when (e.Code == Kms.Core.Errors.KmsErrorCode.FailedPrecondition && audit.CheckpointRefusedSince is { } since)
        {
            // A node held (on head.json or checkpoints.jsonl: a rollback accepted as it is, or a chain
            // that stopped passing through its record while it ran) signs no checkpoint, the final one
            // neither: the hold, reported since it began (1309/1311–1313, the gauge), not a failure
            // of the stop. Before, its every stop logged 1303 as if the checkpoint had failed.
            LogFinalCheckpointHeld(logger, since);
        }
        catch (Exception e) when (e is not OutOfMemoryException)
        {
            // Whatever failed (the database, the HSM, or this node's checkpoints.jsonl that the
            // signed checkpoint is appended to: a full disk), the head record below is still
            // written. Before, only a KmsException or a cancellation was caught here: an IOException
            // from that append skipped the head record and made the host's stop throw.
            LogFinalCheckpointFailed(logger, e.GetType().Name);
        }

        // Checkpoints another writer's lock kept out of checkpoints.jsonl (or a failed append): one
        // more try, waiting a little for the lock (an appender holds it for one write and one fsync).
        // What is still pending then is said (1350), not kept: the next run does not append it. The
        // next start checks the chain against the newest checkpoint the file holds, and against the
        // head record written below, at the head this node leaves (at or after each of them, unless
        // a SIEM stream is behind the head: then at the last event it was sent).
        if (_pendingCheckpoints is { } pending)
        {
            var reason = nameof(FileLockedException);
            try
            {
                AppendPendingCheckpoints(() => pending.Retry(StopCheckpointsWait, cancellationToken));
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException or OperationCanceledException)
            {
                reason = e.GetType().Name;
            }

            if (pending.Sequences is [var first, ..] left)
            {
                LogCheckpointsPendingAtStop(logger, left.Count, first, left[^1], _checkpointsPath, reason);
            }
        }

        // The SIEM stream's position at the stop, after its last forwarding: clean, so the next
        // start goes on after it with nothing sent twice.
        try
        {
            RecordPosition(clean: true, force: true);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            // The record before it stands (not clean): the next start sends again what the stream
            // may hold past it, after a resend line; never less.
            _failures?.Failed(e, checkpointRefused: false);
        }

        // The head the node leaves the database at: also when no checkpoint could be signed (a
        // held node signs none), it is how far this node served.
        try
        {
            await audit.RecordHeadAtStopAsync(cancellationToken);
        }
        catch (Exception e) when (e is Kms.Core.Errors.KmsException or OperationCanceledException or IOException or UnauthorizedAccessException)
        {
            LogHeadRecordFailed(logger, e.GetType().Name);
        }
    }

    /// <summary>
    /// How long the start's read-back of a SIEM stream file waits for another writer's lock on it: an
    /// appender holds it for one write and one fsync. A holder that keeps it longer is not waited
    /// out (the start would wait with it): the read-back is tried again at every housekeeping pass,
    /// nothing forwarded meanwhile.
    /// </summary>
    internal static readonly TimeSpan StartReadBackWait = TimeSpan.FromSeconds(2);

    // How long a housekeeping pass's read-back waits for the lock: short, the pass has other work.
    private static readonly TimeSpan RetryReadBackWait = TimeSpan.FromMilliseconds(100);

    // The housekeeping pass's read-back of a stream file the start could not read back: false while
    // another writer still holds its lock (nothing is forwarded). Once read, the stream goes on after
    // the last event the file holds, or, a file emptied or removed meanwhile, after the head at start
    // (whose events since then are forwarded, as after any start).
    private bool RetryReadBack(string stream, long held, CancellationToken cancellationToken)
    {
        AuditHead? streamed;
        try
        {
            streamed = LastStreamed(stream, RetryReadBackWait, cancellationToken);
        }
        catch (FileLockedException)
        {
            return false;
        }

        if (streamed is { } last)
        {
            audit.ForwardAfter(last);
        }

        var (waited, after) = (time.GetElapsedTime(held).TotalSeconds, audit.StreamPosition.Sequence);
        LogStreamReadBackTaken(logger, stream, waited, after);
        return true;
    }

    /// <summary>
    /// How long the stop waits for another writer's lock on <c>checkpoints.jsonl</c> to append the
    /// checkpoints it kept out (<see cref="PendingCheckpoints"/>): an appender holds it for one write
    /// and one fsync; a holder that keeps it longer is not waited out (the stop's other steps need
    /// the time), and what is left is said (1350).
    /// </summary>
    internal static readonly TimeSpan StopCheckpointsWait = TimeSpan.FromSeconds(2);

    /// <summary>How long the final housekeeping pass at stop forwards the SIEM stream at most: half the time the host gives the steps after the drain.</summary>
    internal static readonly TimeSpan FinalForwardTime = BoundedDrainServer.FinalStepsTime / 2;

    /// <summary>
    /// The last event in a stream file (its sequence number and hash; or the event a restart line
    /// after it goes on after), after ending it with a whole line as every append does
    /// (<see cref="DurableFile.EndWithWholeLine(FileStream)"/>: a line a crash left half-written cut off, a
    /// whole event that lacks only its line feed kept), so the events forwarded again follow a
    /// whole line and none is forwarded twice; null for a missing or empty file (a new stream
    /// starts at the head).
    /// </summary>
    internal static AuditHead? LastStreamed(string path) => LastStreamed(path, StartReadBackWait, CancellationToken.None);

    /// <summary><see cref="LastStreamed(string)"/>, waiting <paramref name="lockWait"/> for another writer's lock on the file.</summary>
    /// <exception cref="FileLockedException">Another writer held the file's lock for longer than <paramref name="lockWait"/>: how far the stream got is not known.</exception>
    /// <exception cref="OperationCanceledException"><paramref name="cancellationToken"/> was cancelled while the lock was waited for.</exception>
    internal static AuditHead? LastStreamed(string path, TimeSpan lockWait, CancellationToken cancellationToken)
    {
        if (!File.Exists(path))
        {
            return null;
        }

        try
        {
            return ReadBack(path, lockWait, cancellationToken);
        }
        catch (Exception e) when (e is (IOException and not FileLockedException) or NotSupportedException or UnauthorizedAccessException)
        {
            return null; // not readable as a file: start at the head, as before
        }
    }

    private static AuditHead? ReadBack(string path, TimeSpan lockWait, CancellationToken cancellationToken)
    {
        using var file = new FileStream(path, FileMode.Open, FileAccess.ReadWrite, FileShare.Read, bufferSize: 0);

        // Only a regular file with something in it can be read back: a pipe, a FIFO or a
        // terminal (/dev/stdout under a container runtime) is not seekable.
        if (!file.CanSeek || file.Length == 0)
        {
            return null;
        }

        // The appenders' lock, held until the file is closed; more than a MiB without a line feed
        // is not a stream this server wrote: IOException, nothing cut, and the stream starts at the head.
        DurableFile.EndWithWholeLine(file, lockWait, cancellationToken);
        foreach (var point in Backwards(file))
        {
            return point;
        }

        return null;
    }

    /// <summary>
    /// What a stream file holds, newest first: each event line's sequence and hash, and each
    /// restart line's event it goes on after; other lines skipped. Read from the end a block at a
    /// time, as far as it is enumerated; a line longer than <see cref="DurableFile.MaxTornLine"/>
    /// ends it (no line this server writes comes near), and so do more bytes than that of lines
    /// that are none (blank lines, say: a file of nothing else is read as far as that, not to its
    /// start). Empty for a file that is missing or cannot be read back.
    /// </summary>
    internal static IEnumerable<AuditHead> StreamedBackwards(string path)
    {
        FileStream file;
        try
        {
            // Opened for writing too, as the read-back at start is (nothing is written): open(2) for
            // reading only waits, on a FIFO a SIEM agent reads, for a writer, which only this
            // server's own next append would have been — the housekeeping pass, the stop's, hung.
            file = new FileStream(path, FileMode.Open, FileAccess.ReadWrite, FileShare.ReadWrite, bufferSize: 0);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            yield break;
        }

        using (file)
        {
            if (!file.CanSeek)
            {
                yield break;
            }

            foreach (var point in Backwards(file))
            {
                yield return point;
            }
        }
    }

    private static IEnumerable<AuditHead> Backwards(FileStream file)
    {
        const int Block = 64 * 1024;
        var end = file.Length;
        var carry = Array.Empty<byte>(); // the start of the line that ends where the last block began
        long passed = 0; // bytes of whole lines read back since the last point (or the file's end) that are none
        while (end > 0)
        {
            var size = (int)Math.Min(Block, end);
            var block = new byte[size + carry.Length];
            file.Seek(end - size, SeekOrigin.Begin);
            file.ReadExactly(block, 0, size);
            carry.CopyTo(block, size);
            end -= size;
            var stop = block.Length;
            for (var at = Array.LastIndexOf(block, (byte)'\n', stop - 1); at >= 0; at = stop > 0 ? Array.LastIndexOf(block, (byte)'\n', stop - 1) : -1)
            {
                if (PointOf(block.AsMemory(at + 1, stop - at - 1)) is { } point)
                {
                    yield return point;
                    passed = 0;
                }
                else if ((passed += stop - at) > DurableFile.MaxTornLine)
                {
                    // More than a MiB of lines that are no event (blank lines, other text): no
                    // stream this server wrote, which has one on nearly every line. Before, a file of
                    // blank lines was read to its start — at the start, which waited on it, and in a
                    // restart's search, which checks its time only at each point found.
                    yield break;
                }

                stop = at;
            }

            carry = block[..stop];
            if (carry.Length > DurableFile.MaxTornLine)
            {
                yield break;
            }
        }

        if (PointOf(carry) is { } first)
        {
            yield return first;
        }
    }

    // An event line's sequence and hash, or a restart line's event it goes on after; null for anything else.
    private static AuditHead? PointOf(ReadOnlyMemory<byte> line)
    {
        if (line.IsEmpty)
        {
            return null;
        }

        try
        {
            using var document = System.Text.Json.JsonDocument.Parse(line);
            var root = document.RootElement;
            if (root.ValueKind != System.Text.Json.JsonValueKind.Object)
            {
                return null;
            }

            var (point, hash) = root.TryGetProperty("event", out var e) && e.ValueKind == System.Text.Json.JsonValueKind.Object
                ? (e, root.TryGetProperty("hash", out var h) && h.ValueKind == System.Text.Json.JsonValueKind.String ? h.GetString() : null)
                : root.TryGetProperty("stream_restart", out var r) && r.ValueKind == System.Text.Json.JsonValueKind.Object && r.TryGetProperty("after", out var a) && a.ValueKind == System.Text.Json.JsonValueKind.Object
                    ? (a, a.TryGetProperty("hash", out var ah) && ah.ValueKind == System.Text.Json.JsonValueKind.String ? ah.GetString() : null)
                    : (default(System.Text.Json.JsonElement), null);
            return point.ValueKind == System.Text.Json.JsonValueKind.Object && point.TryGetProperty("seq", out var seq) && seq.ValueKind == System.Text.Json.JsonValueKind.Number
                ? new AuditHead(seq.GetInt64(), hash ?? "")
                : null;
        }
        catch (Exception e) when (e is System.Text.Json.JsonException or InvalidOperationException or FormatException)
        {
            return null; // not a line of this format: the one before counts
        }
    }

    /// <summary>
    /// Appends lines to a file of the data directory or the SIEM stream, owner-only (0600) from
    /// its creation and on disk when this returns (<see cref="DurableFile.Append(string, ReadOnlySpan{byte}, UnixFileMode)"/>). A last line a
    /// crash left torn is cut off first, so the next record does not run on from it (event 1305);
    /// an append that fails part-way is taken back, so the page forwarded again at the next pass
    /// does not follow a broken line.
    /// </summary>
    internal void Append(string path, string lines) => Append(path, lines, lockWait: null, CancellationToken.None);

    // Append, waiting lockWait for another writer's lock on the file (zero: tried once; null: DurableFile's 10 s).
    private void Append(string path, string lines, TimeSpan? lockWait, CancellationToken cancellationToken)
    {
        lock (_fileLock)
        {
            var content = Encoding.UTF8.GetBytes(lines + "\n");
            var cut = lockWait is { } wait
                ? DurableFile.Append(path, content, DurableFile.OwnerOnly, wait, cancellationToken)
                : DurableFile.Append(path, content, DurableFile.OwnerOnly);
            if (cut > 0)
            {
                LogTornLineCut(logger, path, cut);
            }
        }
    }

    // An append to the SIEM stream file, from the housekeeping pass: another writer's lock on it is
    // not waited for. Before, it was waited for up to 10 s (AppendLock.Wait) at every pass that had
    // events to forward, holding the pass (its checkpoint, retention) that long each time, and
    // logged as a housekeeping failure (1304). Now the pass's append is not made (nothing written,
    // the stream's position unmoved: the next pass forwards the same events again) and the pass
    // goes on; 1342 once while it lasts, 1343 at the first append that gets through.
    private void AppendToStreamFile(string stream, string text)
    {
        try
        {
            Append(stream, text, TimeSpan.Zero, CancellationToken.None);
        }
        catch (FileLockedException e)
        {
            throw new StreamFileLockedException(stream, e);
        }

        _failures?.StreamFileWritten(stream);
    }

    [LoggerMessage(EventId = 1300, Level = LogLevel.Information, Message = "audit signing key {Fingerprint}; public key in {Path}")]
    private static partial void LogSigningKey(ILogger logger, string fingerprint, string path);

    [LoggerMessage(EventId = 1302, Level = LogLevel.Information, Message = "audit checkpoint {Sequence} {HeadHash}: {Checkpoint:l}")]
    private static partial void LogCheckpoint(ILogger logger, long sequence, string headHash, string checkpoint);

    [LoggerMessage(EventId = 1305, Level = LogLevel.Warning, Message = "the last line of {Path} was torn ({Bytes} bytes without a line end: a crash while it was appended); cut off before appending")]
    private static partial void LogTornLineCut(ILogger logger, string path, long bytes);

    [LoggerMessage(EventId = 1306, Level = LogLevel.Information, Message = "audit checkpoint {Sequence} read from {Path}, this node's record: the chain must pass through it before anything is signed")]
    private static partial void LogOwnRecordTaken(ILogger logger, long sequence, string path);

    [LoggerMessage(EventId = 1307, Level = LogLevel.Warning, Message = "{Path}: its last line is torn ({Lines} line without a line feed that is no whole record: a crash while it was appended); skipped for the one before it (checkpoint {Sequence}; 0: none), and cut off at the next append")]
    private static partial void LogOwnRecordSkipped(ILogger logger, string path, int lines, long sequence);

    [LoggerMessage(EventId = 1308, Level = LogLevel.Warning, Message = "{Path} was written under another audit signing key than this database's ({Fingerprint}): nothing taken from it")]
    private static partial void LogOwnRecordOtherKey(ILogger logger, string path, string fingerprint);

    [LoggerMessage(EventId = 1309, Level = LogLevel.Critical, Message = "the audit chain in the database does not pass through checkpoint {Sequence} that this node signed ({Path}): signed events were removed or rewritten while the server was stopped, or the database was rolled back; no checkpoint is signed. A rollback on purpose (a pg_restore, a kms.db copied back): move that file aside and restart")]
    private static partial void LogOwnRecordNotPassedThrough(ILogger logger, long sequence, string path);

    [LoggerMessage(EventId = 1318, Level = LogLevel.Critical, Message = "start refused: the audit chain in the database (head {Head}) does not pass through {Record:l} {Sequence} of this node's ({Path}), and no re-application of destructions that reaches it is recorded since: a rollback would serve destroyed key versions again. Run kms backup reapply-destructions with the audit logs through it (the node then starts, but while the chain does not pass through the newest checkpoint in checkpoints.jsonl it signs none until that file is moved aside and it is restarted: 1309), or accept the rollback (Kms:Audit:AcceptRollback=true, which signs no checkpoint until the file is moved aside, or move checkpoints.jsonl and head.json aside)")]
    private static partial void LogRollbackRefused(ILogger logger, long head, string record, long sequence, string path);

    [LoggerMessage(EventId = 1331, Level = LogLevel.Warning, Message = "audit checkpoint row {Sequence}: {What:l}; the database was written by someone without the HSM. Compare the database with the checkpoints kept off the host")]
    private static partial void LogCheckpointRowRefused(ILogger logger, long sequence, string what);

    [LoggerMessage(EventId = 1340, Level = LogLevel.Error, Message = "audit events refused (UNAVAILABLE, nothing written, the requests not answered): no event is stored and the chain's head would be checkpoint row {Sequence}, which the audit key did not sign as a checkpoint of that head; the database was written by someone without the HSM. Compare the database with the checkpoints kept off the host, and delete the row to let the log go on from the checkpoint the audit key signed")]
    private static partial void LogAppendRefused(ILogger logger, long sequence);

    // How many sequences one 1344 line names (a writer may have planted far more).
    private const int MaxRowsNamed = 100;

    [LoggerMessage(EventId = 1344, Level = LogLevel.Warning, Message = "audit retention deleted {Count} checkpoint rows below its cut through event {Cut} that the audit key did not sign as checkpoints of the chain, with the events they stood over: {Sequences:l}{More:l}; the database was written by someone without the HSM (rows inserted or edited). Compare the checkpoints kept off the host")]
    private static partial void LogRetentionRowsDeleted(ILogger logger, int count, long cut, string sequences, string more);

    [LoggerMessage(EventId = 1332, Level = LogLevel.Warning, Message = "audit retention passed over checkpoint row {Sequence} as no place to cut: {Reason:l}; the database was written by someone without the HSM (a row inserted or edited, or the event there edited). The cut is made at the newest checkpoint of the chain instead (after {Max} such rows a pass, nowhere); compare the database with the checkpoints kept off the host")]
    private static partial void LogRetentionPassedOver(ILogger logger, long sequence, string reason, int max);

    [LoggerMessage(EventId = 1323, Level = LogLevel.Warning, Message = "the SIEM stream restarts after event {After}: the database's audit chain no longer holds event {Replaced} ({Hash}), the last the stream was sent (the database went back behind it, or was rewritten there); a stream_restart line, then every event after {After}")]
    private static partial void LogStreamRestarted(ILogger logger, long after, long replaced, string hash);

    [LoggerMessage(EventId = 1326, Level = LogLevel.Information, Message = "the SIEM stream {Stream} resumes after event {Sequence}, from its position record {Path}: {How:l}")]
    private static partial void LogStreamResumed(ILogger logger, string stream, long sequence, string path, string how);

    [LoggerMessage(EventId = 1330, Level = LogLevel.Warning, Message = "the SIEM stream {Stream} restarts after event {After}: its position record {Path} names event {Replaced} ({Hash}), which the database's audit chain does not hold (the database went back behind it while the node was stopped, or was rewritten there), and event {After} is the newest of the earlier events it lists that the chain holds; a stream_restart line at the first pass{Resend:l}, then every event after {After}")]
    private static partial void LogStreamRestartsAtStart(ILogger logger, string stream, string path, long replaced, string hash, long after, string resend);

    [LoggerMessage(EventId = 1339, Level = LogLevel.Warning, Message = "the SIEM stream {Stream} restarts after event {After}, the last event audit retention cut: its position record {Path} names event {Replaced} ({Hash}), which the database's audit chain does not hold (the database went back behind it while the node was stopped, or was rewritten there), and of the {Listed} earlier events it lists, those after the cut are not held either and retention cut past the rest; as a running node's stream restarts when none of its events is held, a stream_restart line at the first pass{Resend:l}, then every event the chain retains")]
    private static partial void LogStreamRestartsAtRetentionCut(ILogger logger, string stream, string path, long replaced, string hash, long after, int listed, string resend);

    [LoggerMessage(EventId = 1327, Level = LogLevel.Warning, Message = "the SIEM stream's position record {Path} is not taken: {Reason:l}; the stream begins at the audit chain's head (event {Head}), as without one, so events the last run did not forward are not sent to it")]
    private static partial void LogStreamPositionNotTaken(ILogger logger, string path, string reason, long head);

    [LoggerMessage(EventId = 1336, Level = LogLevel.Warning, Message = "the SIEM stream is on stdout, and stderr, where the server's log lines go, is the same {What:l}: a log line waits there while its reader does not read (the housekeeping pass and requests that log with it), and runs into a stream line the reader took only part of. Give stderr somewhere else (systemd: StandardError= other than StandardOutput=, which it otherwise shares), or stream to a FIFO or a file")]
    private static partial void LogStreamSharesStandardError(ILogger logger, string what);

    [LoggerMessage(EventId = 1337, Level = LogLevel.Warning, Message = "the SIEM stream file {Stream} stayed locked by another writer for {Seconds} s (another server or kms command appending to it, or another process's fcntl lock): how far it got cannot be read back, so nothing is forwarded to it until it can; tried again at every housekeeping pass (1338 when it was read), no event skipped")]
    private static partial void LogStreamReadBackHeld(ILogger logger, string stream, double seconds);

    [LoggerMessage(EventId = 1338, Level = LogLevel.Information, Message = "the SIEM stream file {Stream} was read back, {Seconds:0.#} s after its lock held the start's read-back (1337): it goes on after event {Sequence}")]
    private static partial void LogStreamReadBackTaken(ILogger logger, string stream, double seconds, long sequence);

    [LoggerMessage(EventId = 1303, Level = LogLevel.Warning, Message = "the final audit checkpoint could not be written ({Reason})")]
    private static partial void LogFinalCheckpointFailed(ILogger logger, string reason);

    // The exception's type only, as 1303.
    [LoggerMessage(EventId = 1350, Level = LogLevel.Warning, Message = "{Count} audit checkpoints this node signed, {First} through {Last}, are not in its checkpoint file {Path} at stop ({Reason}: another writer held its lock past the stop's wait, or the append failed); they are in the database and were logged (1302), and no later run appends them. The next start checks the chain against the newest checkpoint the file holds and against the head this stop records in head.json (at or after them, unless a SIEM stream is behind the head: then the last event it was sent); a rollback behind them but not behind those is not refused at start, and only the 1302 lines, kept off the host, show it")]
    private static partial void LogCheckpointsPendingAtStop(ILogger logger, int count, long first, long last, string path, string reason);

    // The exception's type only, as 1303: its message may name a path.
    [LoggerMessage(EventId = 1325, Level = LogLevel.Warning, Message = "the audit's stop step {Step} failed ({Reason}); the steps after it still run")]
    private static partial void LogStopStepFailed(ILogger logger, string step, string reason);

    [LoggerMessage(EventId = 1321, Level = LogLevel.Information, Message = "no final audit checkpoint at stop: this node signs none while it is held, since {Since:o} (the audit chain in the database does not pass through its own record; 1309 or 1311 said which and what to do)")]
    private static partial void LogFinalCheckpointHeld(ILogger logger, DateTimeOffset since);

    // The exception's type only: its message would name the path (and whatever it holds).
    [LoggerMessage(EventId = 1319, Level = LogLevel.Warning, Message = "this node's record of the audit head it last saw could not be written at stop ({Reason}); the one written before it stands")]
    private static partial void LogHeadRecordFailed(ILogger logger, string reason);
}

// Which (row, reason) a warning was logged for this run: the first time true, after that false.
// At most MaxRows remembered: past them (a writer inserting rows without end) it starts over,
// and a row is logged again, rather than the memory growing with the writer's rows.
internal sealed class OncePerRow
{
    internal const int MaxRows = 10_000;

    private readonly HashSet<(long, string)> _seen = [];

    public bool First(long sequence, string reason)
    {
        lock (_seen)
        {
            if (_seen.Count >= MaxRows)
            {
                _seen.Clear();
            }

            return _seen.Add((sequence, reason));
        }
    }
}

/// <summary>
/// An append to the SIEM stream file was not made: another writer holds the file's append lock
/// (<see cref="FileLockedException"/>), and the housekeeping pass does not wait for it. Nothing was
/// written; the stream's position did not move, so the next pass forwards the same events again.
/// Reported once while it lasts (1342, <see cref="HousekeepingFailureLog.StreamFileLocked"/>), not as a
/// housekeeping failure (1304).
/// </summary>
/// <param name="stream">The stream file.</param>
/// <param name="inner">The lock's refusal.</param>
internal sealed class StreamFileLockedException(string stream, FileLockedException inner)
    : IOException($"the SIEM stream file {stream} is locked by another writer: nothing appended, the events are forwarded at a later pass", inner)
{
    /// <summary>The stream file.</summary>
    public string Stream { get; } = stream;
}
