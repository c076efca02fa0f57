using System.Text;
using Kms.Core.Audit;
using Kms.Core.Errors;

namespace Kms.Core.Services;

/// <summary>What a start read from the node's own record of the checkpoints it signed (<see cref="AuditLog.RequireOwnRecordAsync"/>).</summary>
/// <param name="Checkpoint">The newest checkpoint in the record that the audit key signed; null: none (no file, an empty one, or one written under another key).</param>
/// <param name="Skipped">Lines after it that are no such checkpoint: a last line torn by a crash, or lines edited.</param>
/// <param name="OtherKey">The newest whole checkpoint line names another audit signing key (a database of another deployment, or a fresh one): nothing taken.</param>
/// <param name="PassesThrough">False when the database's chain does not pass through <paramref name="Checkpoint"/>: the server signs no checkpoint until the file is moved aside and it is restarted.</param>
public sealed record OwnCheckpointRecord(AuditCheckpoint? Checkpoint, int Skipped, bool OtherKey, bool PassesThrough);

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
    /// Read from the end: a torn or edited last line is skipped for the one before it. A database
    /// checkpoint row later than it (another node's) is taken as before, once the chain is seen to
    /// pass through this one too; one whose events retention has deleted since is covered by the
    /// database's later signed checkpoint. A database restored on purpose (<c>kms backup
    /// restore</c> moves the file aside itself; a <c>pg_restore</c> or a copied <c>kms.db</c>:
    /// move it aside by hand) starts from what the database says.
    /// </remarks>
    /// <exception cref="IOException">The file exists but cannot be read.</exception>
    public async Task<OwnCheckpointRecord> RequireOwnRecordAsync(string path, CancellationToken cancellationToken)
    {
        var skipped = 0;
        foreach (var line in LinesNewestFirst(path))
        {
            if (line.Length == 0)
            {
                continue; // after the last line feed: nothing torn
            }

            var checkpoint = AuditExport.ParseCheckpoint(line);
            if (checkpoint is not null && checkpoint.KeyFingerprint != Fingerprint && SignedHead(checkpoint) is null)
            {
                return new OwnCheckpointRecord(null, skipped, OtherKey: true, PassesThrough: true);
            }

            if (checkpoint is null || SignedHead(checkpoint) is not { } own)
            {
                skipped++;
                continue;
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

    // Whether the database's chain passes through the node's own checkpoint: as CheckpointAsync
    // checks it, or, when retention has deleted its events since, under a later checkpoint the
    // database holds (signed: a cut is made only at one).
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
            return own.Sequence < _lastCheckpoint.Sequence
                && await store.ListAuditEventsAsync(new AuditQuery { Limit = 1 }, cancellationToken) is [var oldest]
                && oldest.Sequence > own.Sequence + 1;
        }
    }

    // The refusal's way out when the checkpoint the chain no longer passes through is the one
    // read from the node's own record.
    private string OwnRecordAdvice(AuditHead last) => _ownRecord is { } record && _ownCheckpoint == last
        ? $". Checkpoint {last.Sequence} was read at start from {record}, this node's record of the checkpoints it signed: if the database was rolled back on purpose "
          + $"(a pg_restore of a dump, a kms.db copied back), move that file aside (as kms backup restore does: {Path.GetFileName(record)}.replaced-TIME) and restart"
        : "";

    // The file's lines, the last first (the text after the last line feed first of all: empty,
    // or a line a crash left torn), read backwards in blocks: only as far as the newest good one.
    private static IEnumerable<string> LinesNewestFirst(string path)
    {
        if (!File.Exists(path))
        {
            yield break;
        }

        using var file = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.ReadWrite | FileShare.Delete, bufferSize: 0);
        const int Block = 64 * 1024;
        var carry = Array.Empty<byte>(); // the end of a line whose start is further back
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
                    yield return Encoding.UTF8.GetString(block, i + 1, stop - i - 1);
                    stop = i;
                }
            }

            carry = block[..stop];
            if (carry.Length > MaxRecordLine)
            {
                yield break; // not a file of checkpoint lines
            }
        }

        yield return Encoding.UTF8.GetString(carry);
    }
}
