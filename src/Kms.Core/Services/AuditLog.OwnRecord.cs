using System.Text;
using Kms.Core.Audit;
using Kms.Core.Backup;
using Kms.Core.Errors;

namespace Kms.Core.Services;

/// <summary>What a start read from the node's own record of the checkpoints it signed (<see cref="AuditLog.RequireOwnRecordAsync"/>).</summary>
/// <param name="Checkpoint">The newest checkpoint in the record that the audit key signed; null: none (no file, an empty one, or one written under another key).</param>
/// <param name="Skipped">1 when the text after the file's last line feed was torn by a crash mid-append (no whole record) and skipped for the line before it; otherwise 0.</param>
/// <param name="OtherKey">The newest whole checkpoint line names another audit signing key (a database of another deployment, or a fresh one): nothing taken.</param>
/// <param name="PassesThrough">False when the database's chain does not pass through <paramref name="Checkpoint"/>: the server signs no checkpoint until the file is moved aside and it is restarted.</param>
public sealed record OwnCheckpointRecord(AuditCheckpoint? Checkpoint, int Skipped, bool OtherKey, bool PassesThrough);

/// <summary>What the database records of re-applied destructions since a point of a node's own: its checkpoint, or the head it last saw (<see cref="AuditLog.FindReapplicationAsync"/>).</summary>
/// <param name="DatabaseHead">The database's audit head.</param>
/// <param name="Covering">A re-application recorded since whose logs reached it; null: none.</param>
/// <param name="Newest">The newest re-application recorded since, covering it or not; null: none.</param>
public sealed record ReapplicationSince(AuditHead DatabaseHead, ReapplySummary? Covering, ReapplySummary? Newest);

/// <summary>The node's own record of the checkpoints it signed, read at start.</summary>
public sealed partial class AuditLog
{
    // No line this server writes comes near it (a checkpoint line is about 350 bytes).
    private const int MaxRecordLine = 64 * 1024;

    // The checkpoint read at start from the node's own record, and where from (named in a refusal).
    private AuditHead? _ownCheckpoint;
    private string? _ownRecord;

    // Set when the database's chain did not pass through it at start: the refusal stands until
    // the record is moved aside and the server restarted, whatever checkpoint rows appear later
    // (another node restarted without such a record could have signed the rewritten chain).
    private bool _heldAtOwnRecord;

    /// <summary>
    /// Reads the newest checkpoint the audit key signed from <paramref name="path"/> (the host's
    /// <c>{DataDir}/audit/checkpoints.jsonl</c>, appended to at every checkpoint this node signed:
    /// its record outside the database) and takes it as a checkpoint the chain must pass through,
    /// as if this process had signed it — so a chain rewritten in the database while the server
    /// was stopped is not signed after a restart either. Call after <see cref="InitializeAsync"/>,
    /// before <see cref="RunAsync"/>.
    /// </summary>
    /// <remarks>
    /// Read from the end. Each append is one write of the line with its line feed, flushed
    /// before it returns (<c>DurableFile.Append</c>), so a crash can leave only the
    /// text after the last line feed torn: unless it is one whole record lacking only its line
    /// feed (<see cref="Files.JsonLines.IsWholeRecord(string)"/>), it is skipped for the line
    /// before it (<see cref="OwnCheckpointRecord.Skipped"/>; the next append cuts it off). A
    /// whole line that is no checkpoint signed by the audit key — not a crash's doing: an edit, a
    /// damaged disk — refuses the start (FailedPrecondition naming the file, the line and the way
    /// out) rather than being passed over for an older checkpoint. A database checkpoint row later
    /// than the one taken (another node's) is taken as before, once the chain is seen to pass
    /// through this one too; one whose events retention has deleted since is covered by
    /// retention's record of the cut under a later signed checkpoint (the offline verifier's
    /// rule; a prefix deleted without it is no retention's). A database restored on purpose (<c>kms backup
    /// restore</c> moves the file aside itself; a <c>pg_restore</c> or a copied <c>kms.db</c>:
    /// move it aside by hand) starts from what the database says.
    /// </remarks>
    /// <exception cref="KmsException">
    /// FailedPrecondition: the file cannot be read (a directory, a FIFO or a device, no permission, an I/O error), or
    /// one of its whole lines from the end back to the checkpoint taken is no checkpoint signed by
    /// the audit key; the message names the file, the line and what to do.
    /// </exception>
    public async Task<OwnCheckpointRecord> RequireOwnRecordAsync(string path, CancellationToken cancellationToken)
    {
        var skipped = 0;
        foreach (var line in ReadNewestFirst(path))
        {
            if (line.Text.Length == 0)
            {
                continue; // after the last line feed: nothing torn; or a blank line
            }

            if (!line.Ended && !Files.JsonLines.IsWholeRecord(line.Text))
            {
                skipped++; // torn by a crash mid-append: the record before it stands
                continue;
            }

            var checkpoint = AuditExport.ParseCheckpoint(line.Text);
            if (checkpoint is not null && checkpoint.KeyFingerprint != Fingerprint && SignedHead(checkpoint) is null)
            {
                return new OwnCheckpointRecord(null, skipped, OtherKey: true, PassesThrough: true);
            }

            if (checkpoint is null || SignedHead(checkpoint) is not { } own)
            {
                throw OwnRecordDamaged(path, line.Start, checkpoint is null
                    ? "is no checkpoint line (not torn by a crash: a line feed follows it)"
                    : $"names checkpoint {checkpoint.Sequence} of this deployment's audit key, but the key did not sign what it says (edited or damaged)");
            }

            var passes = await PassesThroughAsync(own, cancellationToken);
            if (!passes || own.Sequence > _lastCheckpoint.Sequence)
            {
                _lastCheckpoint = own;
            }

            _ownCheckpoint = own;
            _ownRecord = path;
            _heldAtOwnRecord = !passes;
            if (!passes)
            {
                RefuseCheckpoints(); // known now, before a checkpoint is due: the gauge shows it at once
            }

            return new OwnCheckpointRecord(checkpoint, skipped, OtherKey: false, passes);
        }

        return new OwnCheckpointRecord(null, skipped, OtherKey: false, PassesThrough: true);
    }

    /// <summary>
    /// Whether destructions were re-applied on the database's chain through
    /// <paramref name="sequence"/> since <paramref name="since"/>: a point of the node's own the
    /// chain does not pass through (the newest checkpoint it signed, timed when it signed it; the
    /// audit head it last saw, timed when it recorded it). Such is a
    /// <see cref="ReapplySummary.Operation"/> event timed at or after <paramref name="since"/> (the
    /// rollback came after the node was there; one recorded before, in a dump restored again, is
    /// older) whose logs began before <paramref name="sequence"/> and reached it
    /// (<see cref="ReapplySummary.Covers"/>). One query over the (principal, seq) index, newest
    /// first: the restores' own events only.
    /// </summary>
    /// <remarks>
    /// The times are two hosts' clocks (the node's, the re-application's): a clock more than the
    /// time between the node's stop and the re-application behind refuses a start that should not
    /// be (the operator accepts the rollback instead). The event is the database's word.
    /// </remarks>
    public async Task<ReapplicationSince> FindReapplicationAsync(long sequence, DateTimeOffset since, CancellationToken cancellationToken)
    {
        var head = await store.GetAuditHeadAsync(cancellationToken);
        var recorded = await store.ListAuditEventsAsync(
            new AuditQuery { NewestFirst = true, Principal = ReapplySummary.Principal, Operation = ReapplySummary.Operation, StartTime = since, Limit = 100 },
            cancellationToken);
        ReapplySummary? newest = null;
        foreach (var e in recorded)
        {
            if (e.Entry.Operation != ReapplySummary.Operation || ReapplySummary.Parse(e.Entry.Resource) is not { } summary)
            {
                continue;
            }

            newest ??= summary;
            if (summary.Covers(sequence))
            {
                return new ReapplicationSince(head, summary, newest);
            }
        }

        return new ReapplicationSince(head, null, newest);
    }

    // The start's refusal for a record it cannot trust: the file, the line, what is wrong, the way out.
    private static KmsException OwnRecordDamaged(string path, long lineStart, string what) =>
        KmsErrors.FailedPrecondition(
            $"{path}, this node's record of the audit checkpoints it signed: line {LineNumber(path, lineStart)} {what}; refusing to start, as nothing older in it can be taken for the newest checkpoint this node signed. "
            + $"Put back the file from a copy kept off the host, or remove that line if you know what wrote it; or move the file aside ({Path.GetFileName(path)}.replaced-TIME): this node then knows only the checkpoints in the database");

    private static KmsException OwnRecordUnreadable(string path, string why) =>
        KmsErrors.FailedPrecondition(
            $"{path}, this node's record of the audit checkpoints it signed, cannot be read: {why}; refusing to start. "
            + $"Make it a file the server's user can read and write (it creates it 0600), or, if it is lost, move it aside ({Path.GetFileName(path)}.replaced-TIME): this node then knows only the checkpoints in the database");

    // The 1-based number of the line that starts at byte offset: the line feeds before it, plus one.
    private static long LineNumber(string path, long offset)
    {
        try
        {
            using var file = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.ReadWrite | FileShare.Delete, bufferSize: 0);
            var buffer = new byte[64 * 1024];
            long lines = 1;
            for (long read = 0; read < offset;)
            {
                var n = file.Read(buffer, 0, (int)Math.Min(buffer.Length, offset - read));
                if (n == 0)
                {
                    break;
                }

                lines += buffer.AsSpan(0, n).Count((byte)'\n');
                read += n;
            }

            return lines;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            return 0; // read a moment ago; the message still names the file
        }
    }

    // The file's lines, the last first (see LinesNewestFirst), or the start's refusal when it
    // cannot be read at all.
    private static IEnumerable<(string Text, long Start, bool Ended)> ReadNewestFirst(string path)
    {
        if (Directory.Exists(path))
        {
            throw OwnRecordUnreadable(path, "it is a directory");
        }

        // Looked at before it is opened: open(2) for reading waits, on a FIFO, until something
        // writes to it, and a device reads without end. Before, a FIFO there held the start in that
        // open, or (a writer there) failed it with an unexplained NotSupportedException.
        if (Files.FileKind.IsSpecial(path))
        {
            throw OwnRecordUnreadable(path, "it is no regular file (a FIFO, a device or a socket: not opened)");
        }

        using var lines = LinesNewestFirst(path).GetEnumerator();
        while (true)
        {
            try
            {
                if (!lines.MoveNext())
                {
                    yield break;
                }
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException)
            {
                throw OwnRecordUnreadable(path, e.Message);
            }

            yield return lines.Current;
        }
    }

    // Whether the database's chain passes through the node's own checkpoint: as CheckpointAsync
    // checks it, or, when retention has deleted its events since, by retention's signed record
    // of the cut (PrunedByRetentionAsync, the head record's test too).
    private async Task<bool> PassesThroughAsync(AuditHead own, CancellationToken cancellationToken)
    {
        var head = await store.GetAuditHeadAsync(cancellationToken);
        try
        {
            await ThrowUnlessTheChainPassesThroughAsync(own, head, cancellationToken);
            return true;
        }
        catch (KmsException e) when (e.Code == KmsErrorCode.FailedPrecondition)
        {
            // Retention's record of the cut is signed past it, so the database's latest signed
            // checkpoint (adopted at InitializeAsync) lies past it too; kept as the last one.
            return own.Sequence < _lastCheckpoint.Sequence && await PrunedByRetentionAsync(own.Sequence, cancellationToken);
        }
    }

    // The refusal's way out when the checkpoint the chain no longer passes through is the one
    // read from the node's own record.
    private string OwnRecordAdvice(AuditHead last) => _ownRecord is { } record && _ownCheckpoint == last
        ? $". Checkpoint {last.Sequence} was read at start from {record}, this node's record of the checkpoints it signed: if the database was rolled back on purpose "
          + $"(a pg_restore of a dump, a kms.db copied back), move that file aside (as kms backup restore does: {Path.GetFileName(record)}.replaced-TIME) and restart"
        : "";

    // The file's lines, the last first (the text after the last line feed first of all: empty,
    // or a line a crash left torn; Ended false), each with the byte offset it starts at, read
    // backwards in blocks: only as far as the newest good one.
    private static IEnumerable<(string Text, long Start, bool Ended)> LinesNewestFirst(string path)
    {
        if (!File.Exists(path))
        {
            yield break;
        }

        using var file = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.ReadWrite | FileShare.Delete, bufferSize: 0);
        const int Block = 64 * 1024;
        var carry = Array.Empty<byte>(); // the end of a line whose start is further back
        var ended = false; // the first line yielded is the text after the last line feed
        for (var position = file.Length; position > 0;)
        {
            var size = (int)Math.Min(Block, position);
            position -= size;
            var block = new byte[size + carry.Length];
            file.Seek(position, SeekOrigin.Begin);
            file.ReadExactly(block, 0, size);
            carry.CopyTo(block, size);
            var stop = block.Length;
            for (var i = size - 1; i >= 0; i--)
            {
                if (block[i] == (byte)'\n')
                {
                    if (stop - i - 1 > MaxRecordLine)
                    {
                        throw TooLong(position + i + 1);
                    }

                    yield return (Encoding.UTF8.GetString(block, i + 1, stop - i - 1), position + i + 1, ended);
                    ended = true;
                    stop = i;
                }
            }

            carry = block[..stop];
            if (carry.Length > MaxRecordLine)
            {
                throw TooLong(position);
            }
        }

        yield return (Encoding.UTF8.GetString(carry), 0, ended);

        KmsException TooLong(long start) =>
            OwnRecordDamaged(path, start, $"is longer than {MaxRecordLine / 1024} KiB (a checkpoint line is about 350 bytes, and a crash tears at most one): not a file of checkpoint lines");
    }
}
