using System.Globalization;
using System.Text;
using System.Text.Json;
using Kms.Core.Audit;
using Kms.Core.Errors;
using Kms.Core.Files;

namespace Kms.Core.Services;

/// <summary>What a node's record of the audit head it last saw says of the database's chain (<see cref="AuditLog.ReadOwnHeadAsync"/>).</summary>
/// <param name="Head">The head recorded; null: none (no file, or one written under another audit key).</param>
/// <param name="Written">When the node wrote the record, by its clock (default when <paramref name="Head"/> is null).</param>
/// <param name="OtherKey">The record names another audit signing key (a database of another deployment, or a fresh one): nothing taken.</param>
/// <param name="PassesThrough">False when the database's chain does not pass through <paramref name="Head"/>: it went back behind what this node saw, or was rewritten there. Unless a re-application of destructions recorded since reaches it, the node then signs no checkpoint until the file is moved aside and the node restarted, or the chain passes through it again.</param>
public sealed record OwnHeadRecord(AuditHead? Head, DateTimeOffset Written, bool OtherKey, bool PassesThrough);

/// <summary>A node's record of the audit head it last saw, as written in its file.</summary>
/// <param name="Head">The event's sequence and hash.</param>
/// <param name="Written">When the node wrote it, by its clock.</param>
/// <param name="KeyFingerprint">The audit signing key of the database it was read from.</param>
public sealed record SeenHead(AuditHead Head, DateTimeOffset Written, string KeyFingerprint)
{
    /// <summary>The file's name in <c>{DataDir}/audit</c>, beside <c>checkpoints.jsonl</c>.</summary>
    public const string FileName = "head.json";

    /// <summary>The file's content: one JSON object and a line feed.</summary>
    public byte[] ToBytes() => Encoding.UTF8.GetBytes(JsonSerializer.Serialize(new Dictionary<string, object>
    {
        ["seq"] = Head.Sequence,
        ["head"] = Head.Hash,
        ["time"] = Written.UtcDateTime.ToString("yyyy-MM-dd'T'HH:mm:ss.fffffff'Z'", CultureInfo.InvariantCulture),
        ["key"] = KeyFingerprint,
    }) + "\n");

    /// <summary>The record a file's content holds, or null when it holds none (not one JSON object with a positive <c>seq</c>, a <c>head</c>, a <c>time</c> and a <c>key</c>).</summary>
    public static SeenHead? Parse(ReadOnlySpan<byte> content)
    {
        try
        {
            using var document = JsonDocument.Parse(content.ToArray());
            var root = document.RootElement;
            var sequence = root.GetProperty("seq").GetInt64();
            var hash = root.GetProperty("head").GetString();
            var written = DateTimeOffset.Parse(root.GetProperty("time").GetString() ?? "", CultureInfo.InvariantCulture, DateTimeStyles.AssumeUniversal);
            var key = root.GetProperty("key").GetString();
            return sequence > 0 && hash is { Length: > 0 } && key is { Length: > 0 } ? new SeenHead(new AuditHead(sequence, hash), written, key) : null;
        }
        catch (Exception e) when (e is JsonException or KeyNotFoundException or InvalidOperationException or FormatException or ArgumentException)
        {
            return null;
        }
    }
}

/// <summary>The node's record of the audit head it last saw: read at start, written by every housekeeping pass that finds the head moved, and at stop.</summary>
public sealed partial class AuditLog
{
    // Where the housekeeping writes the head it sees (set at start by ReadOwnHeadAsync; null: nowhere),
    // and the head written there last (null: none yet, or one the chain did not pass through at start).
    private string? _headRecord;
    private AuditHead? _recordedHead;

    // Since when (UTC ticks; 0: not) the chain has not passed through the recorded head (from the
    // start, on a rollback accepted as it is, or under the running node): no checkpoint is signed
    // meanwhile, and CheckpointRefusedSince says so.
    private long _headRecordRefusedTicks;

    /// <summary>
    /// Reads the node's record of the audit head it last saw (the host's
    /// <c>{DataDir}/audit/head.json</c>: <see cref="SeenHead"/>), says whether the database's chain
    /// passes through it, and from now on writes the head each housekeeping pass sees there (when
    /// it moved) and at <see cref="RecordHeadAtStopAsync"/>. Call after
    /// <see cref="InitializeAsync"/>, before <see cref="RunAsync"/>.
    /// </summary>
    /// <remarks>
    /// The checkpoints in <c>checkpoints.jsonl</c> are as far as this node signed; the head is as
    /// far as it served. A node that signs nothing (held at its own checkpoint, event 1309, or one
    /// whose checkpoint was due after it stopped or crashed) saw events past its last checkpoint —
    /// destructions among them — and a database rolled back behind them would serve those versions
    /// again. The chain passes through the record as through a checkpoint: the event at its
    /// sequence hashes, from its body, to the recorded hash (or the next one's link names it after
    /// a retention cut through it), or it lies in a prefix retention deleted: the chain holds
    /// retention's record of that cut at or before a checkpoint the audit key signed, unbroken to
    /// it (the offline verifier's rule; a prefix deleted without it is no retention's). A record
    /// the chain does not pass through is kept, and no checkpoint is signed
    /// (<see cref="CheckpointRefusedSince"/> set at once), until the file is
    /// moved aside and the node restarted or the chain passes through it again — as for
    /// <c>checkpoints.jsonl</c>, whether the start goes on because the operator accepts the
    /// rollback as it is or not at all — unless a re-application of destructions recorded since
    /// reaches it (<see cref="FindReapplicationAsync"/>): then the next pass records the restored
    /// chain's head. The record is the node's own memory: a database writer
    /// cannot forge it, and it is no proof for anyone else. Written whole (a temporary file synced,
    /// then renamed over it: a crash leaves the old record or the new one), so content that is no
    /// record is damage or an edit, never a crash's doing, and refuses the start.
    /// </remarks>
    /// <exception cref="KmsException">FailedPrecondition: the file cannot be read, or holds no record; the message names the file and the way out.</exception>
    public async Task<OwnHeadRecord> ReadOwnHeadAsync(string path, CancellationToken cancellationToken)
    {
        ArgumentException.ThrowIfNullOrEmpty(path);
        if (Directory.Exists(path))
        {
            throw HeadRecordUnreadable(path, "it is a directory");
        }

        byte[]? content;
        try
        {
            content = File.Exists(path) ? await ReadBoundedAsync(path, cancellationToken) : null;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw HeadRecordUnreadable(path, e.Message);
        }

        _headRecord = path;
        if (content is null)
        {
            return new OwnHeadRecord(null, default, OtherKey: false, PassesThrough: true); // a new data directory, or the file moved aside
        }

        if (SeenHead.Parse(content) is not { } seen)
        {
            throw HeadRecordDamaged(path, "holds no such record (it is written whole, so not a crash's doing: an edit or a damaged disk)");
        }

        if (seen.KeyFingerprint != Fingerprint)
        {
            return new OwnHeadRecord(null, default, OtherKey: true, PassesThrough: true);
        }

        var passes = await ChainHoldsAsync(store, seen.Head, cancellationToken) || await PrunedByRetentionAsync(seen.Head.Sequence, cancellationToken);
        if (!passes && (await FindReapplicationAsync(seen.Head.Sequence, seen.Written, cancellationToken)).Covering is not null)
        {
            // Reached by a re-application of destructions recorded since: the rollback was dealt
            // with, and the next pass records the restored chain's head (docs/deployment.md).
            _recordedHead = null;
        }
        else
        {
            // Not passed through and not reached: the start is refused unless the rollback is
            // accepted as it is (the server's AcceptRollback). Then the record is kept and no
            // checkpoint is signed, as for checkpoints.jsonl, until the file is moved aside and
            // the node restarted, or the chain passes through it again. Before, the record was
            // dropped here and overwritten with the rolled-back chain's head at the first pass,
            // and the node signed checkpoints over that chain as if it had served it.
            _recordedHead = seen.Head;
            if (!passes)
            {
                Interlocked.CompareExchange(ref _headRecordRefusedTicks, time.GetUtcNow().UtcTicks, 0); // the gauge shows it at once
            }
        }

        return new OwnHeadRecord(seen.Head, seen.Written, OtherKey: false, passes);
    }

    /// <summary>
    /// At stop, once the last events were forwarded: writes the head the node leaves the database
    /// at (and the time), if it has a record (<see cref="ReadOwnHeadAsync"/>).
    /// </summary>
    /// <remarks>
    /// A record the chain does not pass through (a node held on it: <see cref="CheckpointRefusedSince"/>)
    /// is kept as it is, on purpose, and the stop completes without writing: that is the hold, not
    /// a failure (it is reported while the node runs, and refuses its next start).
    /// </remarks>
    /// <exception cref="KmsException">The database cannot be read.</exception>
    /// <exception cref="IOException">The record cannot be written.</exception>
    public async Task RecordHeadAtStopAsync(CancellationToken cancellationToken)
    {
        if (_headRecord is null)
        {
            return;
        }

        await _housekeeping.WaitAsync(cancellationToken);
        try
        {
            await RecordHeadAsync(await store.GetAuditHeadAsync(cancellationToken), atStop: true, cancellationToken);
        }
        finally
        {
            _housekeeping.Release();
        }
    }

    // Writes the head seen, unless the record holds it already (at stop, always: its time is the
    // stop's). Only as far as forwarding has reached: a re-application from this node's SIEM stream
    // must reach the head it records. A stream behind the head (more events since the last pass
    // than a pass forwards within its ForwardBudget) records the last event forwarded, never one
    // before the record: before, nothing was recorded while it was behind, so under such a load the
    // record stood still. A failure waits for the next pass, with the old record in place.
    private async Task RecordHeadAsync(AuditHead? seen, bool atStop, CancellationToken cancellationToken)
    {
        if (_headRecord is null || seen is not { Sequence: > 0 } head)
        {
            return;
        }

        // Whenever the head is not the record, or while refused for it, before anything else (a
        // stream that made no headway this pass included): the chain must still pass through it,
        // as at start. At stop a record it does not pass through is kept without a word: the
        // node is held on it, which its housekeeping reported (1311–1313, the gauge). Before, a
        // held node's every stop logged 1319, "could not be written at stop", as if it had failed.
        if ((atStop || head != _recordedHead || Volatile.Read(ref _headRecordRefusedTicks) != 0)
            && !await ChainPassesThroughTheRecordAsync(cancellationToken))
        {
            if (atStop)
            {
                return;
            }

            throw HeldOnTheRecord(head);
        }

        if (EventsWritten is not null && _forwarded >= 0 && _forwarded < head.Sequence)
        {
            if (_forwardedHead is not { } reached || reached.Sequence <= (_recordedHead?.Sequence ?? 0))
            {
                return;
            }

            head = reached;
        }

        if (!atStop && head == _recordedHead)
        {
            return;
        }

        await DurableFile.WriteAsync(_headRecord, new SeenHead(head, time.GetUtcNow(), Fingerprint).ToBytes(), DurableFile.OwnerOnly, overwrite: true, cancellationToken);
        _recordedHead = head;
    }

    // A database that went back behind the recorded head under the running node (a failover to a
    // replica that lost the last commits, a restore under running nodes), or was rewritten there,
    // keeps the record, so the next start is refused until a re-application reaches it (before,
    // the record was overwritten with the new chain's head and the node forgot how far it had
    // served); and meanwhile no checkpoint is signed, as over a chain that does not pass through
    // the last checkpoint (CheckpointRefusedSince: the gauge, the health service, events
    // 1311–1313). Before, the node went on signing checkpoints over the rolled-back chain, its
    // health and gauge said nothing, and only the housekeeping's generic failure (1304) was
    // logged. The refusal ends when the chain passes through the record again.
    private async Task ThrowUnlessTheChainPassesThroughTheRecordAsync(AuditHead head, CancellationToken cancellationToken)
    {
        if (!await ChainPassesThroughTheRecordAsync(cancellationToken))
        {
            throw HeldOnTheRecord(head);
        }
    }

    // Whether the chain passes through the recorded head (none recorded: it does); sets or ends
    // the refusal it makes.
    private async Task<bool> ChainPassesThroughTheRecordAsync(CancellationToken cancellationToken)
    {
        if (_recordedHead is not { } recorded
            || await ChainHoldsAsync(store, recorded, cancellationToken)
            || await PrunedByRetentionAsync(recorded.Sequence, cancellationToken))
        {
            Volatile.Write(ref _headRecordRefusedTicks, 0);
            return true;
        }

        Interlocked.CompareExchange(ref _headRecordRefusedTicks, time.GetUtcNow().UtcTicks, 0);
        return false;
    }

    // Called once the chain was found not to pass through the recorded head (so there is one).
    private KmsException HeldOnTheRecord(AuditHead head) =>
        KmsErrors.FailedPrecondition(
            $"the audit chain in the database (head {head.Sequence}) no longer passes through event {_recordedHead?.Sequence}, the audit head this node recorded ({_headRecord}): "
            + "the database went back behind it (a failover that lost commits, a restore under running nodes) or its events were rewritten; the record is kept, "
            + "so the next start of this node is refused until a re-application of destructions reaches it, and no checkpoint is signed meanwhile "
            + $"(a rollback accepted as it is: move the file aside, {SeenHead.FileName}.replaced-TIME, and restart)");

    /// <summary>
    /// The refusal of a start (the server's) or of a ceremony's record (the CLI's) on a chain that
    /// does not pass through a point of the node's own — <paramref name="record"/>
    /// <paramref name="sequence"/> (<c>checkpoint</c>, or <c>the head this node last saw, event</c>),
    /// read from <paramref name="path"/> — when no re-application recorded since reaches it
    /// (<paramref name="reapplied"/>, <see cref="FindReapplicationAsync"/>): what happened, what a
    /// rollback would serve, and the ways out, in one set of words for both.
    /// </summary>
    /// <param name="reapplied">What the database records of re-applications since the point.</param>
    /// <param name="sequence">The point's sequence.</param>
    /// <param name="record">What the point is, as the message names it before its sequence.</param>
    /// <param name="path">The file it was read from.</param>
    /// <param name="refuses">Who refuses what (<c>the node refuses to start</c>).</param>
    /// <param name="then">What to do once re-applied (<c>then start</c>).</param>
    /// <param name="accept">How to accept the rollback as it is, for whoever refuses.</param>
    public static KmsException RollbackNotReapplied(ReapplicationSince reapplied, long sequence, string record, string path, string refuses, string then, string accept)
    {
        ArgumentNullException.ThrowIfNull(reapplied);
        var last = reapplied.Newest is { } newest
            ? $" (the last one recorded since read the audit logs after sequence {newest.After} through {newest.Through}: they do not reach it)"
            : "";
        var whose = record == "checkpoint" ? $"checkpoint {sequence} that this node signed" : $"{record} {sequence}";
        return KmsErrors.FailedPrecondition(
            $"the audit chain in the database (head {reapplied.DatabaseHead.Sequence}) does not pass through {whose} ({path}): the database was rolled back behind it "
            + $"(a pg_restore of an older dump, a kms.db copied back) or its events rewritten, and no re-application of destructions recorded since re-applied what the audit logs hold through {sequence}{last}; "
            + $"a key version destroyed after the dump would be served again, so {refuses}. Run `kms backup reapply-destructions --audit-log FILE` on the database with the audit exports or SIEM stream "
            + $"that reach sequence {sequence}, {then}; or accept the rollback as it is: {accept}");
    }

    // Whether retention deleted the event at `sequence` (the chain is then taken to pass through
    // it, as through a checkpoint of the node's own): it lies before the oldest event kept and
    // the one after it (whose link would name it: ChainHoldsAsync), and the chain holds
    // retention's record of that cut, covered by a signature — the offline verifier's rule
    // (AuditVerifier: a cut at the export's start counts only so). The record is the first event
    // after the cut that says it cut through the event before the oldest (AuditChain.RecordsRetentionCut,
    // read from its body); covered, it lies at or before a checkpoint the audit key signed, each
    // event from it to that checkpoint hashing, from its body, to the next one's link and the last
    // to the checkpoint's head (a record forged into a signed event breaks that). The checkpoints
    // read at start (checkpoints.jsonl) and the head recorded (head.json) ask this alike. Before,
    // a signed checkpoint past the sequence and an oldest event past the one after it were taken
    // for a cut: a database writer who deleted the prefix without the record (or copied signed
    // checkpoint rows and tail events onto an old dump) had a node held on its record sign a chain
    // that never passed through it. The record carries the audit key's signature of the cut
    // (AuditChain.RetentionCutSigned), here as in the verifier: before, a record a writer chained
    // onto the unsigned tail passed once a node signed past it.
    private async Task<bool> PrunedByRetentionAsync(long sequence, CancellationToken cancellationToken)
    {
        if (await store.ListAuditEventsAsync(new AuditQuery { Limit = 1 }, cancellationToken) is not [var oldest] || oldest.Sequence <= sequence + 1)
        {
            return false;
        }

        var cut = oldest.Sequence - 1;
        for (var after = cut; ;)
        {
            // The principal is the store's indexed filter: only retention's events are read.
            var records = await store.ListAuditEventsAsync(
                new AuditQuery { AfterSequence = after, Principal = AuditChain.RetentionPrincipal, Operation = AuditChain.RetentionOperation, Limit = 100 },
                cancellationToken);
            if (records.Count == 0)
            {
                return false;
            }

            if (records.FirstOrDefault(e => AuditChain.RecordsRetentionCut(e.Entry, cut)) is { } record)
            {
                // Retention's own: the audit key's signature of this cut (the last event deleted and
                // the hash the oldest kept links to). A record without one is of the form written
                // before retention signed them: it counts only if the first checkpoint signed over it
                // is of that time too (no "cuts":"signed"), which no upgraded node signs.
                var signedCut = record.Entry.RetentionCut is not null;
                if (signedCut && !AuditChain.RetentionCutSigned(record.Entry, new AuditHead(cut, oldest.PreviousHash), PublicKey))
                {
                    return false;
                }

                return await SignedCheckpointAtOrAfterAsync(record.Sequence, cancellationToken) is { } signed
                    && (signedCut || AuditChain.SignedBeforeRetentionCutsWere(signed.Body))
                    && await ChainRunsAsync(record, new AuditHead(signed.Sequence, signed.HeadHash), cancellationToken);
            }

            after = records[^1].Sequence;
        }
    }

    // The first checkpoint at or after `sequence` that the audit key signed (rows it did not are passed over).
    private async Task<AuditCheckpoint?> SignedCheckpointAtOrAfterAsync(long sequence, CancellationToken cancellationToken)
    {
        for (var after = sequence - 1; ;)
        {
            var checkpoints = await store.ListAuditCheckpointsAsync(after, 100, cancellationToken);
            if (checkpoints.Count == 0)
            {
                return null;
            }

            foreach (var checkpoint in checkpoints)
            {
                if (SignedHead(checkpoint) is not null)
                {
                    return checkpoint;
                }
            }

            after = checkpoints[^1].Sequence;
        }
    }

    // Whether the chain runs unbroken from `from` to `to` (at or after it): each event hashes, from
    // its body, to the next one's link, and the last to `to`'s hash. Read in pages, the events
    // between them only (a cut is signed right after its record: a few, under load more).
    private async Task<bool> ChainRunsAsync(AuditEvent from, AuditHead to, CancellationToken cancellationToken)
    {
        var hash = AuditChain.HashOf(from.Body);
        for (var at = from.Sequence; at < to.Sequence;)
        {
            var page = await store.ListAuditEventsAsync(new AuditQuery { AfterSequence = at, BeforeSequence = to.Sequence + 1, Limit = 1000 }, cancellationToken);
            if (page.Count == 0)
            {
                return false;
            }

            foreach (var e in page)
            {
                if (e.Sequence != at + 1 || e.PreviousHash != hash)
                {
                    return false;
                }

                hash = AuditChain.HashOf(e.Body);
                at = e.Sequence;
            }
        }

        return hash == to.Hash;
    }

    // The file's content, read only when it is a file of one to MaxRecordLine bytes (a record is
    // about 200), and then at most MaxRecordLine + 1 bytes of it. Before, the whole file was read
    // before its size was looked at: a huge file took the start as long and as much memory as it
    // was big, and a FIFO (or a device, a size of 0) put there held the start in its open or read
    // for as long as something wrote to it. One that is not, or grows past the bound while read,
    // refuses the start, naming the size.
    private static async Task<byte[]> ReadBoundedAsync(string path, CancellationToken cancellationToken)
    {
        var length = new FileInfo(path).Length;
        if (length is 0 or > MaxRecordLine)
        {
            throw HeadRecordDamaged(path, length == 0
                ? "is empty, or no regular file (a FIFO or a device: not opened)"
                : $"is {length} bytes long, more than the {MaxRecordLine / 1024} KiB read of it (a record is about 200 bytes): not one record (not read)");
        }

        using var file = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.ReadWrite | FileShare.Delete, bufferSize: 0, FileOptions.Asynchronous);
        var buffer = new byte[MaxRecordLine + 1];
        var read = 0;
        for (int n; read < buffer.Length && (n = await file.ReadAsync(buffer.AsMemory(read), cancellationToken)) > 0;)
        {
            read += n;
        }

        return read > MaxRecordLine
            ? throw HeadRecordDamaged(path, $"grew past {MaxRecordLine / 1024} KiB while it was read (a record is about 200 bytes): not one record")
            : buffer[..read];
    }

    private static KmsException HeadRecordDamaged(string path, string what) =>
        KmsErrors.FailedPrecondition(
            $"{path}, this node's record of the audit head it last saw, {what}; refusing to start, as the node cannot tell how far it served. "
            + $"Put back the file from a copy kept off the host; or move it aside ({SeenHead.FileName}.replaced-TIME): this node then knows only its checkpoints and the database's");

    private static KmsException HeadRecordUnreadable(string path, string why) =>
        KmsErrors.FailedPrecondition(
            $"{path}, this node's record of the audit head it last saw, cannot be read: {why}; refusing to start. "
            + $"Make it a file the server's user can read and write (it writes it 0600), or, if it is lost, move it aside ({SeenHead.FileName}.replaced-TIME): this node then knows only its checkpoints and the database's");
}
