using System.Text.RegularExpressions;
using Kms.Client.Audit;
using Kms.Core.Audit;
using Kms.Core.Errors;
using Kms.Core.Services;
using Kms.Storage.Sqlite;
using Kms.Testing;
using Kms.Testing.Fakes;
using Microsoft.Data.Sqlite;
using Microsoft.Extensions.Time.Testing;

namespace Kms.Client.Tests;

/// <summary>
/// The audit log attacked by someone who can write the database (a real SQLite file, edited with
/// SQL) and read the exports, but does not hold the HSM: what the offline verifier catches, and
/// what the server refuses to sign or delete on the database's word.
/// </summary>
public sealed partial class AuditDatabaseWriterTests : IAsyncLifetime, IDisposable
{
    private readonly string _directory = Directory.CreateTempSubdirectory("kms-audit-writer-").FullName;
    private readonly FakeHsm _hsm = new();
    private readonly FakeTimeProvider _time = new(new DateTimeOffset(2026, 11, 29, 12, 0, 0, TimeSpan.Zero));
    private SqliteStore _store = null!;
    private AuditLog _log = null!;

    private string DatabasePath => Path.Combine(_directory, "kms.db");

    private string CheckpointsPath => Path.Combine(_directory, "audit", "checkpoints.jsonl");

    private string HeadPath => Path.Combine(_directory, "audit", "head.json");

    public async Task InitializeAsync()
    {
        _store = await SqliteStore.OpenAsync(new SqliteOptions { DatabasePath = DatabasePath }, default);
        _log = await StartAsync(_store, _hsm);
    }

    public async Task DisposeAsync() => await _store.DisposeAsync();

    public void Dispose()
    {
        _hsm.Dispose();
        SqliteConnection.ClearAllPools();
        Directory.Delete(_directory, recursive: true);
    }

    // The columns beside the body only index it: an edit of them changes no byte of the export.
    // An edit of the body (the client address, which has no column) is caught, re-hashed or not.
    [Fact]
    public async Task IndexColumnsEdited_ExportUnchanged_BodyEdited_Detected()
    {
        await BuildAsync();
        var before = await ExportAsync();
        Sql("UPDATE audit_events SET principal = 'token:mallory', tenant = 'other', outcome = 'OK', resource = 'tenants/other/keys/x', time = 0, operation = 'x' WHERE seq = 3");
        Assert.Equal(before, await ExportAsync());
        Assert.True(Verify(before).Valid);

        Sql("UPDATE audit_events SET body = replace(body, '\"client\":\"ipv4:127.0.0.1:5000\"', '\"client\":\"ipv4:10.9.9.9:1\"') WHERE seq = 3");
        AssertFails(await ExportAsync(), 3, "event 3 does not match its hash");

        var body = Scalar("SELECT body FROM audit_events WHERE seq = 3");
        Sql($"UPDATE audit_events SET hash = '{AuditChain.HashOf(body)}' WHERE seq = 3");
        AssertFails(await ExportAsync(), 3, "the chain is broken between events 3 and 4");
    }

    [Fact]
    public async Task SequenceNumbersSwapped_Detected_RepeatedLine_Detected()
    {
        await BuildAsync();
        Sql("UPDATE audit_events SET seq = -3 WHERE seq = 3; UPDATE audit_events SET seq = 3 WHERE seq = 4; UPDATE audit_events SET seq = 4 WHERE seq = -3");
        AssertFails(await ExportAsync(), 3, "event 3 is missing (the next one is 4)");

        // A sequence number cannot be stored twice (its primary key); in an export, a line given twice:
        Sql("UPDATE audit_events SET seq = -3 WHERE seq = 3; UPDATE audit_events SET seq = 3 WHERE seq = 4; UPDATE audit_events SET seq = 4 WHERE seq = -3");
        var lines = await ExportAsync();
        lines.Insert(IndexOfEvent(lines, 5), lines[IndexOfEvent(lines, 4)]);
        AssertFails(lines, 5, "event 4 is out of order or repeated (expected 5)");
    }

    // The documented limitation, and no wider: the last events and the newest checkpoint removed
    // verify (signed to the checkpoint before), and only a checkpoint known from outside shows it.
    [Fact]
    public async Task TailAndNewestCheckpointDeleted_OnlyAKnownCheckpointShowsIt()
    {
        await BuildAsync();
        var known = new KnownCheckpoint(10, Scalar("SELECT head FROM audit_checkpoints WHERE seq = 10"));
        Sql("DELETE FROM audit_events WHERE seq > 7; DELETE FROM audit_checkpoints WHERE seq = 10");
        var lines = await ExportAsync();

        var quiet = Verify(lines);
        Assert.True(quiet.Valid, quiet.Problem);
        Assert.Equal((7L, 5L), (quiet.Events, quiet.LastSignedSequence));
        var caught = Verify(lines, known);
        Assert.False(caught.Valid);
        Assert.Equal(8, caught.FirstBadSequence);
        Assert.Contains("the export ends before the known checkpoint at 10", caught.Problem, StringComparison.Ordinal);
    }

    // Before, the server signed whatever head the database held: signed events removed (or
    // rewritten and re-chained) with the checkpoints that signed them were signed again by the
    // next checkpoint, and the export then verified to its end without a known checkpoint.
    [Fact]
    public async Task SignedEventsRemovedWithTheirCheckpoint_RunningServerRefusesToSignTheChainThatReplacedThem()
    {
        await BuildAsync();
        Assert.NotNull(await _log.CheckpointAsync(default)); // 12, signed by this process
        Sql("DELETE FROM audit_events WHERE seq > 7; DELETE FROM audit_checkpoints WHERE seq > 5");
        await AppendAsync(13, 20); // seq 8..15: other events where 8..12 were

        var refused = await Assert.ThrowsAsync<KmsException>(() => _log.CheckpointAsync(default));
        Assert.Equal(KmsErrorCode.FailedPrecondition, refused.Code);
        Assert.Contains("no longer passes through checkpoint 12", refused.Message, StringComparison.Ordinal);
        Assert.Equal("5", Scalar("SELECT max(seq) FROM audit_checkpoints"));

        // The export still goes out; it verifies only as far as checkpoint 5.
        var result = Verify(await ExportAsync());
        Assert.Equal((15L, 5L), (result.Events, result.LastSignedSequence));
    }

    [Fact]
    public async Task SignedEventRewrittenAndRechained_CheckpointsDeleted_RunningServerRefusesToSignIt_KnownCheckpointCatchesItAfterARestart()
    {
        await BuildAsync();
        var known = new KnownCheckpoint(10, Scalar("SELECT head FROM audit_checkpoints WHERE seq = 10"));
        Sql("UPDATE audit_events SET body = replace(body, '\"principal\":\"token:bob\"', '\"principal\":\"token:carol\"') WHERE seq = 7");
        Rechain(from: 7);
        Sql("DELETE FROM audit_checkpoints WHERE seq > 5");

        // A forged checkpoint row of the rewritten head, read by a housekeeping pass and then
        // deleted again, does not become the head this process takes as signed.
        Sql($"INSERT INTO audit_checkpoints (seq, head, time, key, body, signature) VALUES (12, '{Scalar("SELECT hash FROM audit_events WHERE seq = 12")}', 0, 'k', '{{\"v\":1,\"type\":\"checkpoint\",\"seq\":12}}', x'00')");
        await _log.RunHousekeepingAsync(default);
        Sql("DELETE FROM audit_checkpoints WHERE seq = 12");
        await AppendAsync(13, 13);

        var refused = await Assert.ThrowsAsync<KmsException>(() => _log.CheckpointAsync(default));
        Assert.Contains("no longer passes through checkpoint 10", refused.Message, StringComparison.Ordinal);

        // A restarted server knows only the database: it signs the rewrite (docs/audit-format.md).
        // What still shows it is the checkpoint shipped off the host.
        var restarted = await StartAsync(_store, _hsm);
        Assert.NotNull(await restarted.CheckpointAsync(default));
        var lines = await ExportAsync(restarted);
        Assert.True(Verify(lines).Valid);
        var caught = Verify(lines, known);
        Assert.False(caught.Valid);
        Assert.Contains("event 10 differs from the known checkpoint: the log was rewritten", caught.Problem, StringComparison.Ordinal);
    }

    // Before, a restarted server knew only the database's checkpoints and signed the rewrite
    // (the test above). Its own record, checkpoints.jsonl, holds checkpoint 12: the restarted
    // log refuses as the running one does, names the file and the way out, and the export goes
    // out signed only as far as checkpoint 5. Moved aside (a rollback on purpose), it signs.
    [Fact]
    public async Task SignedEventsRewrittenWhileStopped_RestartedWithItsCheckpointsFile_RefusesToSign_FileMovedAside_Signs()
    {
        RecordCheckpoints(_log);
        await BuildAsync();
        Assert.NotNull(await _log.CheckpointAsync(default)); // 12, in the database and the file
        Sql("UPDATE audit_events SET body = replace(body, '\"principal\":\"token:bob\"', '\"principal\":\"token:carol\"') WHERE seq = 7");
        Rechain(from: 7);
        Sql("DELETE FROM audit_checkpoints WHERE seq > 5");

        var restarted = await StartAsync(_store, _hsm);
        var record = await restarted.RequireOwnRecordAsync(CheckpointsPath, default);
        Assert.Equal((12L, 0, false), (record.Checkpoint?.Sequence, record.Skipped, record.PassesThrough));
        var refused = await Assert.ThrowsAsync<KmsException>(() => restarted.CheckpointAsync(default));
        Assert.Equal(KmsErrorCode.FailedPrecondition, refused.Code);
        Assert.Contains("no longer passes through checkpoint 12", refused.Message, StringComparison.Ordinal);
        Assert.Contains($"read at start from {CheckpointsPath}", refused.Message, StringComparison.Ordinal);
        Assert.Contains("move that file aside", refused.Message, StringComparison.Ordinal);
        await AppendAsync(13, 13);
        await Assert.ThrowsAsync<KmsException>(() => restarted.CheckpointAsync(default));
        await restarted.RunHousekeepingAsync(default); // the interval's checkpoint: refused as well
        Assert.Equal("5", Scalar("SELECT max(seq) FROM audit_checkpoints"));
        var result = Verify(await ExportAsync(restarted));
        Assert.Equal((13L, 5L), (result.Events, result.LastSignedSequence));

        File.Move(CheckpointsPath, CheckpointsPath + ".replaced-test");
        var accepted = await StartAsync(_store, _hsm);
        Assert.Null((await accepted.RequireOwnRecordAsync(CheckpointsPath, default)).Checkpoint);
        Assert.NotNull(await accepted.CheckpointAsync(default));
    }

    // A chain that still passes through the file's checkpoint is signed as before, whether the
    // database's newest checkpoint is older (its rows deleted) or newer (another node's); a
    // torn last line (a crash mid-append) or an edited one is skipped for the one before it.
    [Fact]
    public async Task CheckpointsFile_TornLastLine_TheOneBeforeIsUsed_EditedLineRefusesTheStart_AnotherNodesLaterCheckpoint_Accepted()
    {
        RecordCheckpoints(_log);
        await BuildAsync(); // the file: 5, 10
        var lines = await File.ReadAllLinesAsync(CheckpointsPath);
        await File.AppendAllTextAsync(CheckpointsPath, lines[1][..40]); // torn: no line end
        var restarted = await StartAsync(_store, _hsm);
        var record = await restarted.RequireOwnRecordAsync(CheckpointsPath, default);
        Assert.Equal((10L, 1, true), (record.Checkpoint?.Sequence, record.Skipped, record.PassesThrough));

        // The last line's signature edited: a line feed follows it, so no crash tore it — the
        // start is refused naming the file and the line (before, the checkpoint before it was
        // taken in silence but for a warning). Once that line is gone, 5 is taken; the chain
        // passes through it, so the rewrite after it cannot be told from the file (the tail).
        await File.WriteAllTextAsync(CheckpointsPath, lines[0] + "\n" + lines[1].Replace("\"signature\":\"", "\"signature\":\"AAAA", StringComparison.Ordinal) + "\n");
        Sql("DELETE FROM audit_checkpoints WHERE seq > 5");
        restarted = await StartAsync(_store, _hsm);
        var edited = await Assert.ThrowsAsync<KmsException>(() => restarted.RequireOwnRecordAsync(CheckpointsPath, default));
        Assert.Equal(KmsErrorCode.FailedPrecondition, edited.Code);
        Assert.Contains($"{CheckpointsPath}, this node's record of the audit checkpoints it signed: line 2 names checkpoint 10 of this deployment's audit key, but the key did not sign what it says", edited.Message, StringComparison.Ordinal);
        Assert.Contains("move the file aside (checkpoints.jsonl.replaced-TIME)", edited.Message, StringComparison.Ordinal);
        await File.WriteAllTextAsync(CheckpointsPath, lines[0] + "\n");
        restarted = await StartAsync(_store, _hsm);
        record = await restarted.RequireOwnRecordAsync(CheckpointsPath, default);
        Assert.Equal((5L, 0, true), (record.Checkpoint?.Sequence, record.Skipped, record.PassesThrough));
        Assert.NotNull(await restarted.CheckpointAsync(default)); // 12

        // Another node signed later (its checkpoint in the database, not in this file): accepted.
        await AppendAsync(13, 20);
        Assert.NotNull(await restarted.CheckpointAsync(default)); // 20, not recorded in this file
        var afterOther = await StartAsync(_store, _hsm);
        record = await afterOther.RequireOwnRecordAsync(CheckpointsPath, default);
        Assert.Equal((5L, true), (record.Checkpoint?.Sequence, record.PassesThrough));
        await AppendAsync(21, 21);
        Assert.NotNull(await afterOther.CheckpointAsync(default));
    }

    // What a crash can do to the file, and what it cannot. Each checkpoint is appended as one
    // write of its line and line feed, flushed before the append returns (DurableFile.Append):
    // only the text after the last line feed can be torn. A whole record lacking only its line
    // feed is taken; a torn one is skipped for the line before. Anything else — a path that is
    // no readable file, a whole line that is no checkpoint, a line no checkpoint is as long as —
    // is no crash's doing, and the start is refused naming the file, the line and the way out
    // (before: a directory or a garbage line left the node without a record, a warning at most).
    [Fact]
    public async Task CheckpointsFile_UnreadableOrDamaged_StartRefusedNamingTheFileTheLineAndTheWayOut_TornLastLineIsNot()
    {
        RecordCheckpoints(_log);
        await BuildAsync(); // the file: 5, 10
        var lines = await File.ReadAllLinesAsync(CheckpointsPath);

        await File.WriteAllTextAsync(CheckpointsPath, lines[0] + "\n" + lines[1]); // lacks only its line feed: whole
        var record = await (await StartAsync(_store, _hsm)).RequireOwnRecordAsync(CheckpointsPath, default);
        Assert.Equal((10L, 0), (record.Checkpoint?.Sequence, record.Skipped));
        await File.WriteAllTextAsync(CheckpointsPath, lines[0] + "\n" + lines[1][..^3]); // torn mid-append
        record = await (await StartAsync(_store, _hsm)).RequireOwnRecordAsync(CheckpointsPath, default);
        Assert.Equal((5L, 1), (record.Checkpoint?.Sequence, record.Skipped));

        foreach (var (content, expected) in new[]
        {
            (lines[0] + "\n" + lines[1] + "\n{\"not\":\"a checkpoint\"}\n", "line 3 is no checkpoint line (not torn by a crash: a line feed follows it)"),
            (lines[0] + "\n\0\0\0\n" + lines[1] + "\n", null), // damage before the newest checkpoint is never read
            (lines[0] + "\n" + lines[1] + "\n" + new string('x', 70 * 1024), "line 3 is longer than 64 KiB"),
            (lines[0] + "\n" + lines[1][..^3] + "\n", "line 2 is no checkpoint line"),
        })
        {
            await File.WriteAllTextAsync(CheckpointsPath, content);
            var restarted = await StartAsync(_store, _hsm);
            if (expected is null)
            {
                Assert.Equal(10L, (await restarted.RequireOwnRecordAsync(CheckpointsPath, default)).Checkpoint?.Sequence);
                continue;
            }

            var refused = await Assert.ThrowsAsync<KmsException>(() => restarted.RequireOwnRecordAsync(CheckpointsPath, default));
            Assert.Equal(KmsErrorCode.FailedPrecondition, refused.Code);
            Assert.Contains($"{CheckpointsPath}, this node's record of the audit checkpoints it signed: {expected}", refused.Message, StringComparison.Ordinal);
            Assert.Contains("Put back the file from a copy kept off the host", refused.Message, StringComparison.Ordinal);
        }

        File.Delete(CheckpointsPath);
        Directory.CreateDirectory(CheckpointsPath);
        var unreadable = await Assert.ThrowsAsync<KmsException>(async () => await (await StartAsync(_store, _hsm)).RequireOwnRecordAsync(CheckpointsPath, default));
        Assert.Equal(KmsErrorCode.FailedPrecondition, unreadable.Code);
        Assert.Contains($"{CheckpointsPath}, this node's record of the audit checkpoints it signed, cannot be read: it is a directory; refusing to start. Make it a file the server's user can read and write", unreadable.Message, StringComparison.Ordinal);
    }

    // A node's record of the head it last saw (head.json), written by the housekeeping pass as the
    // head moves whether a checkpoint is due or not: the events after its last checkpoint removed
    // while it was stopped (a rollback to a dump taken after that checkpoint) — the chain no longer
    // passes through the record, which the checkpoint alone could not tell (it still passes
    // through 10) — until a re-application recorded since reaches it. A record that is no record
    // (written whole by a rename: not a crash's doing) refuses the start, naming the way out.
    [Fact]
    public async Task HeadFile_EventsAfterTheLastCheckpointRolledBackWhileStopped_NotPassedThrough_UntilAReapplicationSinceReachesIt()
    {
        await BuildAsync(); // checkpoints 5, 10; head 12
        Directory.CreateDirectory(Path.GetDirectoryName(HeadPath)!);
        var options = new AuditOptions { CheckpointEveryEvents = 1000, CheckpointInterval = TimeSpan.FromDays(1) };
        var node = await StartAsync(_store, _hsm, options);
        var record = await node.ReadOwnHeadAsync(HeadPath, default);
        Assert.Equal((null, true), (record.Head, record.PassesThrough)); // no file yet
        await AppendAsync(13, 15);
        await node.RunHousekeepingAsync(default);
        Assert.Equal("10", Scalar("SELECT max(seq) FROM audit_checkpoints"));
        Assert.Equal(15L, SeenHead.Parse(await File.ReadAllBytesAsync(HeadPath))!.Head.Sequence);
        Assert.True((await (await StartAsync(_store, _hsm, options)).ReadOwnHeadAsync(HeadPath, default)).PassesThrough);

        Sql("DELETE FROM audit_events WHERE seq > 12");
        var restarted = await StartAsync(_store, _hsm, options);
        record = await restarted.ReadOwnHeadAsync(HeadPath, default);
        Assert.Equal((15L, false), (record.Head?.Sequence, record.PassesThrough));
        Assert.Null((await restarted.FindReapplicationAsync(15, record.Written, default)).Covering);

        _time.Advance(TimeSpan.FromSeconds(1));
        await _store.AppendAuditAsync(
            [new AuditEntry { Time = _time.GetUtcNow(), RequestId = "reapply-1", Principal = Kms.Core.Backup.ReapplySummary.Principal, Operation = Kms.Core.Backup.ReapplySummary.Operation, Resource = new Kms.Core.Backup.ReapplySummary(12, 15).Resource, Outcome = "OK" }],
            default);
        Assert.Equal(new Kms.Core.Backup.ReapplySummary(12, 15), (await restarted.FindReapplicationAsync(15, record.Written, default)).Covering);

        // Started on it, the node lets the record go (docs/deployment.md): its first pass records
        // the restored chain's head, and it signs.
        var reapplied = await StartAsync(_store, _hsm, options);
        Assert.False((await reapplied.ReadOwnHeadAsync(HeadPath, default)).PassesThrough);
        Assert.Null(reapplied.CheckpointRefusedSince);
        await reapplied.RunHousekeepingAsync(default);
        Assert.Equal(13L, SeenHead.Parse(await File.ReadAllBytesAsync(HeadPath))!.Head.Sequence);
        Assert.Equal(13L, (await reapplied.CheckpointAsync(default))?.Sequence);

        await File.WriteAllTextAsync(HeadPath, "{\"seq\":");
        var damaged = await Assert.ThrowsAsync<KmsException>(async () => await (await StartAsync(_store, _hsm, options)).ReadOwnHeadAsync(HeadPath, default));
        Assert.Equal(KmsErrorCode.FailedPrecondition, damaged.Code);
        Assert.Contains($"{HeadPath}, this node's record of the audit head it last saw, holds no such record", damaged.Message, StringComparison.Ordinal);
        Assert.Contains("move it aside (head.json.replaced-TIME)", damaged.Message, StringComparison.Ordinal);
    }

    // A node whose SIEM stream is behind the head it sees at a pass — more events since the last
    // pass than a pass forwards within its budget (here each page of 1,000 takes a tenth of it by
    // the clock: ten pages a pass) — records the head as far as the stream reached, so a re-application from its stream still
    // reaches the record and the record keeps moving. Before, it recorded nothing while the stream
    // was behind: under such a load, never, and a rollback behind the events served meanwhile
    // went unnoticed at the next start.
    [Fact]
    public async Task HeadFile_StreamBehindTheHeadAtAPass_RecordedAsFarAsForwarded_ThenTheHead()
    {
        await BuildAsync(); // head 12
        Directory.CreateDirectory(Path.GetDirectoryName(HeadPath)!);
        var options = new AuditOptions { CheckpointEveryEvents = 1_000_000, CheckpointInterval = TimeSpan.FromDays(1) };
        var node = await StartAsync(_store, _hsm, options);
        long streamed = 0;
        node.EventsWritten += events =>
        {
            streamed = events[^1].Sequence;
            _time.Advance(AuditLog.ForwardBudget / 10);
        };
        await node.ReadOwnHeadAsync(HeadPath, default);
        await _store.AppendAuditAsync([.. Enumerable.Range(13, 10_005).Select(Entry)], default); // head 10,017

        await node.RunHousekeepingAsync(default);
        Assert.Equal(10_012L, streamed); // ten pages
        Assert.True(File.Exists(HeadPath), "no head record written while the stream was behind the head");
        Assert.Equal(10_012L, SeenHead.Parse(await File.ReadAllBytesAsync(HeadPath))!.Head.Sequence);
        Assert.True((await (await StartAsync(_store, _hsm, options)).ReadOwnHeadAsync(HeadPath, default)).PassesThrough);

        await node.RunHousekeepingAsync(default);
        Assert.Equal((10_017L, 10_017L), (streamed, SeenHead.Parse(await File.ReadAllBytesAsync(HeadPath))!.Head.Sequence));
    }

    // A node started on the built log (checkpoints 5, 10; head 12) that served events 13 to 15 and
    // recorded head 15 in its head.json; with the options it was started with (no checkpoint due).
    private async Task<(AuditLog Node, AuditOptions Options)> NodeThatRecordedHead15Async()
    {
        await BuildAsync();
        Directory.CreateDirectory(Path.GetDirectoryName(HeadPath)!);
        var options = new AuditOptions { CheckpointEveryEvents = 1000, CheckpointInterval = TimeSpan.FromDays(1) };
        var node = await StartAsync(_store, _hsm, options);
        await node.ReadOwnHeadAsync(HeadPath, default);
        await AppendAsync(13, 15);
        await node.RunHousekeepingAsync(default);
        Assert.Equal(15L, SeenHead.Parse(await File.ReadAllBytesAsync(HeadPath))!.Head.Sequence);
        return (node, options);
    }

    // The database goes back behind the head a running node recorded — a failover to a replica
    // that lost the last commits, a restore under running nodes — and on past it on another chain.
    // The node keeps its record (the chain no longer passes through it), so its next start is
    // refused until a re-application reaches it. Before, the next pass overwrote the record with
    // the new chain's head: the node forgot how far it served, and started.
    [Fact]
    public async Task HeadFile_RolledBackUnderARunningNode_RecordKept_NextStartNotPassedThrough()
    {
        var (node, options) = await NodeThatRecordedHead15Async();

        Sql("DELETE FROM audit_events WHERE seq > 12");
        await node.RunHousekeepingAsync(default);
        await AppendAsync(13, 17); // another chain, past the record
        await node.RunHousekeepingAsync(default);

        Assert.Equal(15L, SeenHead.Parse(await File.ReadAllBytesAsync(HeadPath))!.Head.Sequence);
        var record = await (await StartAsync(_store, _hsm, options)).ReadOwnHeadAsync(HeadPath, default);
        Assert.Equal((15L, false), (record.Head?.Sequence, record.PassesThrough));
    }

    // The database goes back behind the head a running node recorded, and behind nothing it
    // signed (its last checkpoint is older): the node signs no checkpoint over the rolled-back chain
    // and says so as for a chain that does not pass through its checkpoint — CheckpointRefusedSince,
    // which the gauge kms_audit_checkpoint_signing_refused, the health service kms.audit.checkpoints
    // and events 1311-1313 read — until the chain passes through its record again. Before, the
    // pass reported a generic housekeeping failure (1304), the gauge and health said nothing, and
    // the node signed a checkpoint over the other chain.
    [Fact]
    public async Task HeadFile_RolledBackUnderARunningNode_CheckpointsRefused_UntilTheChainPassesThroughTheRecordAgain()
    {
        var (node, _) = await NodeThatRecordedHead15Async();
        Assert.Null(node.CheckpointRefusedSince);
        var failures = new List<Exception>();
        node.HousekeepingFailed += failures.Add;

        Sql("CREATE TABLE lost AS SELECT * FROM audit_events WHERE seq > 12; DELETE FROM audit_events WHERE seq > 12");
        await node.RunHousekeepingAsync(default);
        Assert.NotNull(node.CheckpointRefusedSince);
        Assert.Equal(KmsErrorCode.FailedPrecondition, Assert.IsType<KmsException>(Assert.Single(failures)).Code);

        await AppendAsync(13, 14); // another chain, not yet past the record
        var refused = await Assert.ThrowsAsync<KmsException>(() => node.CheckpointAsync(default));
        Assert.Contains("no longer passes through event 15", refused.Message, StringComparison.Ordinal);
        Assert.Equal(10L, (await _store.GetLatestAuditCheckpointAsync(default))!.Sequence);
        Assert.NotNull(node.CheckpointRefusedSince);

        // The failover undone: the chain passes through the record again.
        Sql("DELETE FROM audit_events WHERE seq > 12; INSERT INTO audit_events SELECT * FROM lost");
        await node.RunHousekeepingAsync(default);
        Assert.Null(node.CheckpointRefusedSince);
        Assert.Equal(15L, (await node.CheckpointAsync(default))?.Sequence);
    }

    // A node whose head record (head.json) the chain does not pass through at start — the events
    // after its last checkpoint rolled back while it was stopped, nothing re-applied since — is
    // refused its start by the host unless the operator accepts the rollback as it is
    // (Kms:Audit:AcceptRollback). Started so, it keeps the record and signs no checkpoint over the
    // chain that replaced what it served, CheckpointRefusedSince set at once (the gauge, 1311), as
    // for checkpoints.jsonl (1309): not on a restart either, only once the file is moved aside.
    // Before, the record was dropped at start and overwritten with the rolled-back chain's head at
    // the first pass, and the node signed that chain, although the 1318 refusal's way out said it
    // would sign nothing until the file was moved aside. A re-application that reaches the record
    // lets it go (HeadFile_EventsAfterTheLastCheckpointRolledBackWhileStopped_…).
    [Fact]
    public async Task HeadFile_RolledBackWhileStopped_StartAcceptedAsItIs_RecordKept_NoCheckpointSigned_UntilTheFileIsMovedAside()
    {
        var (node, options) = await NodeThatRecordedHead15Async();

        // Rolled back to 12 while stopped; started on it as it is, and served on past the record.
        Sql("DELETE FROM audit_events WHERE seq > 12");
        var accepted = await StartAsync(_store, _hsm, options);
        var record = await accepted.ReadOwnHeadAsync(HeadPath, default);
        Assert.Equal((15L, false), (record.Head?.Sequence, record.PassesThrough));
        Assert.NotNull(accepted.CheckpointRefusedSince);
        await AppendAsync(13, 17);
        await accepted.RunHousekeepingAsync(default);
        var refused = await Assert.ThrowsAsync<KmsException>(() => accepted.CheckpointAsync(default));
        Assert.Equal(KmsErrorCode.FailedPrecondition, refused.Code);
        Assert.Contains("no longer passes through event 15", refused.Message, StringComparison.Ordinal);
        Assert.Contains("move the file aside, head.json.replaced-TIME, and restart", refused.Message, StringComparison.Ordinal);

        // Its stop keeps the record as it is, on purpose: no failure (the host logged 1319,
        // "could not be written at stop", at every stop of a held node when this threw).
        await accepted.RecordHeadAtStopAsync(default);
        Assert.Equal(15L, SeenHead.Parse(await File.ReadAllBytesAsync(HeadPath))!.Head.Sequence);
        Assert.NotNull(accepted.CheckpointRefusedSince);
        Assert.Equal(10L, (await _store.GetLatestAuditCheckpointAsync(default))!.Sequence);

        // Restarted on the same terms: held alike.
        var restarted = await StartAsync(_store, _hsm, options);
        Assert.False((await restarted.ReadOwnHeadAsync(HeadPath, default)).PassesThrough);
        Assert.NotNull(restarted.CheckpointRefusedSince);
        await Assert.ThrowsAsync<KmsException>(() => restarted.CheckpointAsync(default));

        // The file moved aside, restarted: the node knows only its checkpoints, and signs.
        File.Move(HeadPath, HeadPath + ".replaced-test");
        var moved = await StartAsync(_store, _hsm, options);
        record = await moved.ReadOwnHeadAsync(HeadPath, default);
        Assert.Equal((null, true), (record.Head, record.PassesThrough));
        Assert.Null(moved.CheckpointRefusedSince);
        Assert.Equal(17L, (await moved.CheckpointAsync(default))?.Sequence);
        await moved.RunHousekeepingAsync(default);
        Assert.Equal(17L, SeenHead.Parse(await File.ReadAllBytesAsync(HeadPath))!.Head.Sequence);
    }

    // A node held on its head record (the chain went back behind event 15 under it); a node
    // without the record signs checkpoints on the new chain past it (20, 22), as it may; then a
    // database writer deletes the events through 20 without retention's record of a cut. That is
    // no retention, and the node stays held, per pass and at a start, as the offline verifier
    // fails the export; nor does a record of the cut forged into an event under checkpoint 22
    // count (the chain from it to the checkpoint is broken). Retention's own cut there
    // (PruneThroughAsync: its record, signed) lets the record go, as the verifier passes it.
    // Before, a signed checkpoint past the record and an oldest event past the one after it were
    // taken for a cut: the refusal lifted at the next pass, a start passed through the record, and
    // the node signed checkpoints over a chain that never passed through what it served.
    [Fact]
    public async Task HeadFile_Held_PrefixDeletedWithoutRetentionsRecord_StillHeldPerPassAndAtStart_RetentionsOwnCutLetsItGo()
    {
        var (node, options) = await NodeThatRecordedHead15Async();
        Sql("DELETE FROM audit_events WHERE seq > 12");
        await node.RunHousekeepingAsync(default);
        Assert.NotNull(node.CheckpointRefusedSince);

        var other = await StartAsync(_store, _hsm); // no head record: it signs the new chain
        await AppendAsync(13, 20);
        Assert.Equal(20L, (await other.CheckpointAsync(default))?.Sequence);
        await AppendAsync(21, 22);
        Assert.Equal(22L, (await other.CheckpointAsync(default))?.Sequence);

        Sql("DELETE FROM audit_events WHERE seq <= 20");
        await node.RunHousekeepingAsync(default);
        Assert.NotNull(node.CheckpointRefusedSince);
        await AppendAsync(23, 23);
        var refused = await Assert.ThrowsAsync<KmsException>(() => node.CheckpointAsync(default));
        Assert.Contains("no longer passes through event 15", refused.Message, StringComparison.Ordinal);
        Assert.False((await (await StartAsync(_store, _hsm, options)).ReadOwnHeadAsync(HeadPath, default)).PassesThrough);
        AssertFails(await ExportAsync(other), 21, "no retention event in the chain records a cut there");

        // Event 21 made a record of the cut through 20 (body, hash and columns): checkpoint 22 does not cover it.
        Sql("CREATE TABLE genuine AS SELECT * FROM audit_events WHERE seq = 21");
        var forged = Scalar("SELECT body FROM audit_events WHERE seq = 21")
            .Replace("\"principal\":\"token:bob\"", "\"principal\":\"system:retention\"", StringComparison.Ordinal)
            .Replace("\"tenant\":\"dev\"", "\"tenant\":null", StringComparison.Ordinal)
            .Replace("\"operation\":\"/kms.v1.KeyManagementService/Decrypt\"", "\"operation\":\"audit/Retention\"", StringComparison.Ordinal)
            .Replace("\"resource\":\"tenants/dev/keys/k\"", "\"resource\":\"through:20\"", StringComparison.Ordinal);
        Sql($"UPDATE audit_events SET body = '{forged.Replace("'", "''", StringComparison.Ordinal)}', hash = '{AuditChain.HashOf(forged)}', "
            + "principal = 'system:retention', tenant = NULL, operation = 'audit/Retention', resource = 'through:20' WHERE seq = 21");
        await node.RunHousekeepingAsync(default);
        Assert.NotNull(node.CheckpointRefusedSince);
        Assert.False((await (await StartAsync(_store, _hsm, options)).ReadOwnHeadAsync(HeadPath, default)).PassesThrough);
        AssertFails(await ExportAsync(other), 21, "the chain is broken between events 21 and 22");
        Sql("DELETE FROM audit_events WHERE seq = 21; INSERT INTO audit_events SELECT * FROM genuine");

        // Retention's cut through 20: its record (24), signed (checkpoint 24); nothing left to delete.
        Assert.Equal(0, await other.PruneThroughAsync(20, default));
        await node.RunHousekeepingAsync(default);
        Assert.Null(node.CheckpointRefusedSince);
        Assert.Equal(24L, SeenHead.Parse(await File.ReadAllBytesAsync(HeadPath))!.Head.Sequence);
        var result = Verify(await ExportAsync(other));
        Assert.True(result.Valid, result.Problem);
    }

    // The same for the checkpoint a start reads from its checkpoints.jsonl (a ceremony's from its
    // data directory's: the same code, RequireOwnRecordAsync). Rolled back behind it while the node
    // was stopped; a node without the file signs the new chain (20); a database writer deletes the
    // events through 20 without retention's record: the restarted node's checkpoint is not passed
    // through, and it signs nothing. Retention's own cut there passes it. Before, a signed
    // checkpoint past it and an oldest event past the one after it passed it: the start took the
    // chain as passing through what the node had signed, and signed it.
    [Fact]
    public async Task CheckpointsFile_RolledBackBehindIt_PrefixDeletedWithoutRetentionsRecord_NotPassedThrough_RetentionsOwnCutPassesIt()
    {
        RecordCheckpoints(_log);
        await BuildAsync(); // the file: 5, 10
        Assert.Equal(12L, (await _log.CheckpointAsync(default))?.Sequence);
        Sql("DELETE FROM audit_events WHERE seq > 10; DELETE FROM audit_checkpoints WHERE seq > 10");

        var other = await StartAsync(_store, _hsm); // no file: it signs the new chain
        await AppendAsync(11, 20);
        Assert.Equal(20L, (await other.CheckpointAsync(default))?.Sequence);
        await AppendAsync(21, 22);
        Sql("DELETE FROM audit_events WHERE seq <= 20");

        var restarted = await StartAsync(_store, _hsm);
        var record = await restarted.RequireOwnRecordAsync(CheckpointsPath, default);
        Assert.Equal((12L, false), (record.Checkpoint?.Sequence, record.PassesThrough));
        Assert.NotNull(restarted.CheckpointRefusedSince);
        await Assert.ThrowsAsync<KmsException>(() => restarted.CheckpointAsync(default));

        // Retention's cut through 20: its record (23), signed (checkpoint 23); nothing left to delete.
        Assert.Equal(0, await other.PruneThroughAsync(20, default));
        var started = await StartAsync(_store, _hsm);
        record = await started.RequireOwnRecordAsync(CheckpointsPath, default);
        Assert.Equal((12L, true), (record.Checkpoint?.Sequence, record.PassesThrough));
        Assert.Null(started.CheckpointRefusedSince);
        await AppendAsync(24, 24);
        Assert.Equal(24L, (await started.CheckpointAsync(default))?.Sequence);
    }

    // Claim 148. A node that signed 12 (its checkpoints.jsonl) stops; another signs 20; a database
    // writer deletes the signed events through 20 and chains retention's record of that cut onto
    // the unsigned tail (23), which the other, healthy node signs past (24) at its housekeeping. The
    // record carries no signature of the audit key for the cut (or a tampered one, one of another
    // cut, one of another deployment's key): no cut. The restarted node is not passed through its
    // checkpoint and signs nothing; the verifier refuses the export. Before, a record a writer
    // chained passed once a node signed past it: the start passed, and the export verified.
    [Theory]
    [InlineData("unsigned")]
    [InlineData("tampered")]
    [InlineData("another cut")]
    [InlineData("another deployment")]
    public async Task CheckpointsFile_SignedPrefixDeleted_RetentionRecordForgedOntoTheUnsignedTail_SignedPastByAHealthyNode_NoCut(string forgery)
    {
        RecordCheckpoints(_log);
        await BuildAsync(); // the file: 5, 10
        Assert.Equal(12L, (await _log.CheckpointAsync(default))?.Sequence);

        var other = await StartAsync(_store, _hsm); // another node, without the file
        await AppendAsync(13, 20);
        Assert.Equal(20L, (await other.CheckpointAsync(default))?.Sequence);
        await AppendAsync(21, 22);
        var head10 = AuditChain.HashOf(Scalar("SELECT body FROM audit_events WHERE seq = 10"));
        var head20 = AuditChain.HashOf(Scalar("SELECT body FROM audit_events WHERE seq = 20"));
        var genuine = await other.SignStatementAsync(AuditChain.RetentionCutKind, AuditChain.RetentionCutStatement(20, head20, other.Fingerprint), default);
        var cut = forgery switch
        {
            "unsigned" => null,
            "tampered" => new AuditRetentionCut(20, head20, [.. genuine.Take(63), (byte)(genuine[63] ^ 1)]),
            "another cut" => new AuditRetentionCut(20, head20, await other.SignStatementAsync(AuditChain.RetentionCutKind, AuditChain.RetentionCutStatement(10, head10, other.Fingerprint), default)),
            _ => new AuditRetentionCut(20, head20, await AnotherDeploymentsCutAsync(20, head20)),
        };

        Sql("DELETE FROM audit_events WHERE seq <= 20");
        await _store.AppendAuditAsync(
        [
            new AuditEntry
            {
                Time = _time.GetUtcNow(),
                RequestId = "forged",
                Principal = AuditChain.RetentionPrincipal,
                Operation = AuditChain.RetentionOperation,
                Resource = AuditChain.RetentionResource(20),
                Outcome = "OK",
                RetentionCut = cut,
            },
        ], default); // 23
        await AppendAsync(24, 24);
        _time.Advance(TimeSpan.FromMinutes(2));
        await other.RunHousekeepingAsync(default);
        Assert.Equal("24", Scalar("SELECT max(seq) FROM audit_checkpoints"));

        var restarted = await StartAsync(_store, _hsm);
        var record = await restarted.RequireOwnRecordAsync(CheckpointsPath, default);
        Assert.Equal((12L, false), (record.Checkpoint?.Sequence, record.PassesThrough));
        Assert.NotNull(restarted.CheckpointRefusedSince);
        await AppendAsync(25, 25);
        await Assert.ThrowsAsync<KmsException>(() => restarted.CheckpointAsync(default));
        AssertFails(await ExportAsync(other), 21, cut is null
            ? "the retention event 23 that records a cut there carries no signature of the cut, while checkpoint 24, the first over it, was signed since records are signed"
            : "the retention event 23 that records a cut there carries no signature of the audit key for that cut");
    }

    // Claim 148, the upgrade. A record written by a release before retention signed its records
    // (no "cut"), whose first checkpoint over it is of that time too (no "cuts":"signed"): still a
    // cut, to a restarted node and to the verifier, so no deployment is locked out by its history.
    // The same record under a checkpoint signed since is none (above).
    [Fact]
    public async Task CheckpointsFile_PrefixCutByARetentionOfTheReleaseBefore_ItsUnsignedRecordUnderACheckpointOfThatTime_StillACut()
    {
        RecordCheckpoints(_log);
        await BuildAsync(); // the file: 5, 10
        Assert.Equal(12L, (await _log.CheckpointAsync(default))?.Sequence);
        var other = await StartAsync(_store, _hsm);
        await AppendAsync(13, 20);
        Assert.Equal(20L, (await other.CheckpointAsync(default))?.Sequence);

        // The older release's retention: its record (21), its checkpoint (21) in the older form, the cut.
        await _store.AppendAuditAsync(
        [
            new AuditEntry
            {
                Time = _time.GetUtcNow(),
                RequestId = "older-release",
                Principal = AuditChain.RetentionPrincipal,
                Operation = AuditChain.RetentionOperation,
                Resource = AuditChain.RetentionResource(20),
                Outcome = "OK",
            },
        ], default);
        var head21 = AuditChain.HashOf(Scalar("SELECT body FROM audit_events WHERE seq = 21"));
        var body = $"{{\"v\":1,\"type\":\"checkpoint\",\"seq\":21,\"head\":\"{head21}\",\"time\":\"{AuditChain.Time(_time.GetUtcNow())}\",\"key\":\"{other.Fingerprint}\"}}";
        Assert.True(AuditChain.SignedBeforeRetentionCutsWere(body));
        var signature = await _hsm.SignEcdsaAsync(await HsmSigningKeyAsync(), Kms.Core.Ports.EcCurve.P256, AuditChain.CheckpointDigest(body), default);
        await _store.AddAuditCheckpointAsync(new AuditCheckpoint(21, head21, _time.GetUtcNow(), other.Fingerprint, body, signature), default);
        Assert.Equal(20, (await _store.PruneAuditAsync(20, default)).Events);
        await AppendAsync(22, 22);
        Assert.Equal(22L, (await other.CheckpointAsync(default))?.Sequence);

        var restarted = await StartAsync(_store, _hsm);
        var record = await restarted.RequireOwnRecordAsync(CheckpointsPath, default);
        Assert.Equal((12L, true), (record.Checkpoint?.Sequence, record.PassesThrough));
        Assert.Null(restarted.CheckpointRefusedSince);
        var result = Verify(await ExportAsync(other));
        Assert.True(result.Valid, result.Problem);
        Assert.Equal(20, result.AnchorSequence);
    }

    // Another deployment's audit key's signature of a cut through `sequence` with hash `head`.
    private async Task<byte[]> AnotherDeploymentsCutAsync(long sequence, string head)
    {
        using var hsm = new FakeHsm();
        await using var store = await SqliteStore.OpenAsync(new SqliteOptions { DatabasePath = Path.Combine(_directory, "another.db") }, default);
        var log = await StartAsync(store, hsm);
        return await log.SignStatementAsync(AuditChain.RetentionCutKind, AuditChain.RetentionCutStatement(sequence, head, log.Fingerprint), default);
    }

    private async Task<Kms.Core.Ports.KeyMaterialRef> HsmSigningKeyAsync()
    {
        using var stored = System.Text.Json.JsonDocument.Parse((await _store.GetSettingAsync("audit.signing-key.v1", default))!);
        var wrapped = Convert.FromBase64String(stored.RootElement.GetProperty("Wrapped").GetString()!);
        return new Kms.Core.Ports.KeyMaterialRef(Kms.Core.Keys.KeyVersionId.NewId(), new Kms.Core.Crypto.WrappedKeyMaterial(wrapped));
    }

    // A node started on a chain rolled back behind the checkpoint in its checkpoints.jsonl (the
    // rollback accepted as it is) is held on it; the rollback undone under it (a failover back),
    // the chain passes through the checkpoint again and the node signs, as a node held on its
    // head record does (HeadFile_RolledBackUnderARunningNode_CheckpointsRefused_…). The hold then
    // ends for good. Before, it stayed set for the rest of the run: each later call signed the
    // same head again, appending a line to checkpoints.jsonl every time (every GetAuditCheckpoint,
    // every export), and another node's later checkpoint was never adopted.
    [Fact]
    public async Task CheckpointsFile_RolledBackWhileStopped_ChainPassesThroughItAgain_HoldEnds_SignedOnceNotAtEveryCall()
    {
        RecordCheckpoints(_log);
        await BuildAsync(); // the file: 5, 10
        Assert.Equal(12L, (await _log.CheckpointAsync(default))?.Sequence);
        Sql("CREATE TABLE lost AS SELECT * FROM audit_events WHERE seq > 10; DELETE FROM audit_events WHERE seq > 10; DELETE FROM audit_checkpoints WHERE seq > 10");

        var restarted = await StartAsync(_store, _hsm);
        RecordCheckpoints(restarted);
        var record = await restarted.RequireOwnRecordAsync(CheckpointsPath, default);
        Assert.Equal((12L, false), (record.Checkpoint?.Sequence, record.PassesThrough));
        Assert.NotNull(restarted.CheckpointRefusedSince);
        await Assert.ThrowsAsync<KmsException>(() => restarted.CheckpointAsync(default));

        Sql("DELETE FROM audit_events WHERE seq > 10; INSERT INTO audit_events SELECT * FROM lost");
        Assert.Equal(12L, (await restarted.CheckpointAsync(default))?.Sequence);
        Assert.Null(restarted.CheckpointRefusedSince);
        var lines = (await File.ReadAllLinesAsync(CheckpointsPath)).Length;

        Assert.Null(await restarted.CheckpointAsync(default));
        Assert.Null(await restarted.CheckpointAsync(default));
        Assert.Equal(lines, (await File.ReadAllLinesAsync(CheckpointsPath)).Length);
        await AppendAsync(13, 14);
        Assert.Equal(14L, (await (await StartAsync(_store, _hsm)).CheckpointAsync(default))?.Sequence); // another node's
        await AppendAsync(15, 15);
        await restarted.RunHousekeepingAsync(default); // adopts 14: nothing due (one event since)
        Assert.Equal(lines, (await File.ReadAllLinesAsync(CheckpointsPath)).Length);
    }

    // A head.json that is no file of a record's size is refused before it is read: a large file
    // by its size, a FIFO (or a device) without being opened — a FIFO's writer here would wait
    // for ever for a reader, and writes 1 MiB once one comes. Before, the whole file was read
    // before its size was looked at: the FIFO was opened and read until its writer stopped (a
    // device such as /dev/zero: until the read failed at 2 GiB), and the start waited for it.
    [Fact]
    public async Task HeadFile_LargeFileOrFifo_StartRefusedByItsSize_WithoutReadingIt()
    {
        await BuildAsync();
        Directory.CreateDirectory(Path.GetDirectoryName(HeadPath)!);
        var record = new SeenHead(new AuditHead(12, Scalar("SELECT hash FROM audit_events WHERE seq = 12")), _time.GetUtcNow(), _log.Fingerprint).ToBytes();
        using (var mkfifo = System.Diagnostics.Process.Start("mkfifo", HeadPath))
        {
            await mkfifo.WaitForExitAsync();
            Assert.Equal(0, mkfifo.ExitCode);
        }

        var opened = false;
        var writer = Task.Run(() =>
        {
            using var fifo = new FileStream(HeadPath, FileMode.Open, FileAccess.Write); // returns once a reader opened it
            Volatile.Write(ref opened, true);
            var spaces = Enumerable.Repeat((byte)' ', 64 * 1024).ToArray();
            try
            {
                for (var i = 0; i < 16; i++)
                {
                    fifo.Write(spaces);
                }

                fifo.Write(record);
            }
            catch (IOException)
            {
                // the reader closed it first
            }
        });
        var fifoRefused = await Assert.ThrowsAsync<KmsException>(async () => await (await StartAsync(_store, _hsm)).ReadOwnHeadAsync(HeadPath, default));
        Assert.False(Volatile.Read(ref opened), "the start opened the FIFO");
        Assert.Contains("is empty, or no regular file (a FIFO or a device: not opened)", fifoRefused.Message, StringComparison.Ordinal);

        // Let the writer go: open it for reading, and close it.
        await using (new FileStream(HeadPath, FileMode.Open, FileAccess.Read))
        {
        }

        await writer;

        File.Delete(HeadPath);
        await File.WriteAllBytesAsync(HeadPath, [.. Enumerable.Repeat((byte)' ', 100_000), .. record]);
        var large = await Assert.ThrowsAsync<KmsException>(async () => await (await StartAsync(_store, _hsm)).ReadOwnHeadAsync(HeadPath, default));
        Assert.Equal(KmsErrorCode.FailedPrecondition, large.Code);
        Assert.Contains($"{HeadPath}, this node's record of the audit head it last saw, is {100_000 + record.Length} bytes long, more than the 64 KiB read of it", large.Message, StringComparison.Ordinal);
        Assert.Contains("move it aside (head.json.replaced-TIME)", large.Message, StringComparison.Ordinal);
    }

    // While the node refuses to sign checkpoints (here: the database went back behind the head it
    // recorded), retention records no cut: a cut is made only under a checkpoint signed after its
    // record, which the refusal stops. Before, every retention pass (the lifecycle's, each
    // interval) chained an audit/Retention event naming a cut it then did not make, and failed.
    [Fact]
    public async Task Retention_WhileCheckpointsAreRefused_RecordsNoCutItCannotSign()
    {
        var options = new AuditOptions { Retention = TimeSpan.FromDays(30), CheckpointEveryEvents = 1000, CheckpointInterval = TimeSpan.FromDays(1000) };
        var node = await StartAsync(_store, _hsm, options);
        await AppendAsync(1, 1);
        Assert.NotNull(await node.CheckpointAsync(default));
        _time.Advance(TimeSpan.FromDays(40)); // event 1 is due for deletion, the rest are recent
        Directory.CreateDirectory(Path.GetDirectoryName(HeadPath)!);
        await node.ReadOwnHeadAsync(HeadPath, default);
        await AppendAsync(2, 12);
        await node.RunHousekeepingAsync(default);
        Assert.Equal(12L, SeenHead.Parse(await File.ReadAllBytesAsync(HeadPath))!.Head.Sequence);

        Sql("DELETE FROM audit_events WHERE seq > 8"); // a failover that lost the last commits
        await node.RunHousekeepingAsync(default);
        Assert.NotNull(node.CheckpointRefusedSince);

        for (var pass = 0; pass < 3; pass++)
        {
            try
            {
                await node.PruneAsync(_time.GetUtcNow(), default);
            }
            catch (KmsException e) when (e.Code == KmsErrorCode.FailedPrecondition)
            {
                // The old source's refusal, after the record was chained.
            }
        }

        Assert.Equal("0", Scalar($"SELECT count(*) FROM audit_events WHERE operation = '{AuditChain.RetentionOperation}'"));
        Assert.Equal("1", Scalar("SELECT min(seq) FROM audit_events"));
    }

    // Events between this node's checkpoint and another node's later one rewritten (a node
    // restarted without its file could have signed the rewrite): refused, whatever the
    // database's newer checkpoint rows say.
    [Fact]
    public async Task CheckpointsFile_ChainRewrittenBeforeItAndSignedByAnotherNode_Refused()
    {
        RecordCheckpoints(_log);
        await BuildAsync(); // the file: 5, 10
        Sql("UPDATE audit_events SET body = replace(body, '\"principal\":\"token:bob\"', '\"principal\":\"token:carol\"') WHERE seq = 9");
        Rechain(from: 9);
        Sql("DELETE FROM audit_checkpoints WHERE seq > 5");
        var other = await StartAsync(_store, _hsm); // without the file
        Assert.NotNull(await other.CheckpointAsync(default)); // 12, over the rewrite

        var restarted = await StartAsync(_store, _hsm);
        var record = await restarted.RequireOwnRecordAsync(CheckpointsPath, default);
        Assert.Equal((10L, false), (record.Checkpoint?.Sequence, record.PassesThrough));
        await AppendAsync(13, 13);
        await restarted.RunHousekeepingAsync(default);
        var refused = await Assert.ThrowsAsync<KmsException>(() => restarted.CheckpointAsync(default));
        Assert.Contains("no longer passes through checkpoint 10", refused.Message, StringComparison.Ordinal);
        Assert.Equal("12", Scalar("SELECT max(seq) FROM audit_checkpoints"));
    }

    // Another deployment's events (the same genesis) spliced in: its checkpoints name its key;
    // without them, this deployment's checkpoints no longer match, and the server signs nothing.
    [Fact]
    public async Task EventsOfAnotherDeploymentSpliced_Detected()
    {
        await BuildAsync();
        using var otherHsm = new FakeHsm();
        var otherPath = Path.Combine(_directory, "other.db");
        await using (var other = await SqliteStore.OpenAsync(new SqliteOptions { DatabasePath = otherPath }, default))
        {
            var otherLog = await StartAsync(other, otherHsm);
            await other.AppendAuditAsync([.. Enumerable.Range(1, 12).Select(i => Entry(i) with { RequestId = $"other-{i}" })], default);
            Assert.NotNull(await otherLog.CheckpointAsync(default));
        }

        Sql($"ATTACH '{otherPath}' AS other; DELETE FROM audit_events; INSERT INTO audit_events SELECT * FROM other.audit_events");
        AssertFails(await ExportAsync(), 1, "differ from what checkpoint 5 signed");

        Sql($"ATTACH '{otherPath}' AS other; DELETE FROM audit_checkpoints; INSERT INTO audit_checkpoints SELECT * FROM other.audit_checkpoints");
        AssertFails(await ExportAsync(), 12, "names another signing key");

        Sql("DELETE FROM audit_checkpoints");
        await Assert.ThrowsAsync<KmsException>(() => _log.CheckpointAsync(default));
        var unsigned = Verify(await ExportAsync());
        Assert.Equal(0L, unsigned.LastSignedSequence); // kms audit verify: exit 7 unless --allow-unsigned
    }

    // A checkpoint replayed later in the export vouches for its own event only; one moved before
    // its event is refused; checkpoints.jsonl's lines are checkpoint lines like these.
    [Fact]
    public async Task CheckpointLineReplayedLater_VouchesForItsEventOnly_MovedBeforeItsEvent_Refused()
    {
        await BuildAsync();
        var lines = await ExportAsync();
        var five = lines.FindIndex(l => l.StartsWith("{\"checkpoint\":{\"v\":1,\"type\":\"checkpoint\",\"seq\":5,", StringComparison.Ordinal));
        var replayed = new List<string>(lines) { lines[five] };
        replayed.RemoveRange(IndexOfEvent(replayed, 11), 2); // events 11 and 12 gone: the tail
        var result = Verify(replayed);
        Assert.True(result.Valid, result.Problem);
        Assert.Equal((10L, 10L), (result.LastSignedSequence, result.Events));

        var moved = new List<string>(lines);
        var ten = moved.FindIndex(l => l.StartsWith("{\"checkpoint\":{\"v\":1,\"type\":\"checkpoint\",\"seq\":10,", StringComparison.Ordinal));
        var line = moved[ten];
        moved.RemoveAt(ten);
        moved.Insert(IndexOfEvent(moved, 10), line);
        AssertFails(moved, 10, "checkpoint 10 comes before its event");
    }

    // Before, the newest checkpoint's time column was believed: one set in the future held off
    // the interval's checkpoints after a restart, so the unsigned tail grew to 10,000 events.
    [Fact]
    public async Task CheckpointTimeColumnSetInTheFuture_IntervalCheckpointsStillSigned()
    {
        await BuildAsync();
        Sql("UPDATE audit_checkpoints SET time = 253402300799000 WHERE seq = 10");
        var restarted = await StartAsync(_store, _hsm);
        _time.Advance(TimeSpan.FromMinutes(2));
        await restarted.RunHousekeepingAsync(default);
        Assert.Equal("12", Scalar("SELECT max(seq) FROM audit_checkpoints"));
    }

    // Before, retention chose what to delete by the time column: events aged there were deleted,
    // recent as they were, under a signed record of the cut that the verifier then accepted.
    [Fact]
    public async Task Retention_TimeColumnAgedByTheWriter_RecentEventsNotDeleted()
    {
        var log = await StartAsync(_store, _hsm, new AuditOptions { Retention = TimeSpan.FromDays(30) });
        await AppendAsync(1, 1);
        Assert.NotNull(await log.CheckpointAsync(default));
        _time.Advance(TimeSpan.FromDays(40)); // event 1 is due for deletion, the rest are recent
        await AppendAsync(2, 12);
        Assert.NotNull(await log.CheckpointAsync(default));
        await AppendAsync(13, 13);
        Sql("UPDATE audit_events SET time = 0");

        var refused = await Assert.ThrowsAsync<KmsException>(() => log.PruneAsync(_time.GetUtcNow(), default));
        Assert.Contains("was edited; nothing deleted", refused.Message, StringComparison.Ordinal);
        Assert.Equal("1", Scalar("SELECT min(seq) FROM audit_events"));

        // Columns as the server wrote them (event 1 old, the rest recent): event 1 goes, as retention should.
        Sql($"UPDATE audit_events SET time = {_time.GetUtcNow().ToUnixTimeMilliseconds()} WHERE seq > 1");
        Assert.Equal(1, await log.PruneAsync(_time.GetUtcNow(), default));
        Assert.Equal("2", Scalar("SELECT min(seq) FROM audit_events"));
    }

    // Retention's walk to its cut starts past the blocks whose time summary says all their events
    // are older (audit_blocks): a writer who ages the summary has it skip recent events, as one who
    // ages the time column does, and is stopped the same way, by the body of the event the cut ends at.
    [Fact]
    public async Task Retention_TimeSummaryAgedByTheWriter_RecentEventsNotDeleted()
    {
        var log = await StartAsync(_store, _hsm, new AuditOptions { Retention = TimeSpan.FromDays(30) });
        await AppendAsync(1, 1);
        Assert.NotNull(await log.CheckpointAsync(default));
        _time.Advance(TimeSpan.FromDays(40)); // event 1 is due for deletion, the rest are recent
        await AppendAsync(2, 12);
        Assert.NotNull(await log.CheckpointAsync(default));
        await AppendAsync(13, 13);
        Assert.Equal(3, await _store.SummariseAuditBlocksAsync(4, 100, default));
        Sql("UPDATE audit_blocks SET min_time = 0, max_time = 0");

        var refused = await Assert.ThrowsAsync<KmsException>(() => log.PruneAsync(_time.GetUtcNow(), default));
        Assert.Contains("was edited; nothing deleted", refused.Message, StringComparison.Ordinal);
        Assert.Equal("1", Scalar("SELECT min(seq) FROM audit_events"));
    }

    // Two nodes on one chain (PostgreSQL): the leader's retention cut the chain past the last
    // checkpoint the other node knew (the one it read at start). That is no rewrite: the other
    // node still signs (GetAuditCheckpoint, an export, its final checkpoint), from the leader's
    // signed checkpoint on. Before, it refused, naming signed events removed.
    [Fact]
    public async Task RetentionByAnotherNode_PastTheCheckpointThisNodeKnew_StillSigned_ARewriteAfterItStillRefused()
    {
        await AppendAsync(1, 5);
        Assert.NotNull(await _log.CheckpointAsync(default)); // 5
        var other = await StartAsync(_store, _hsm); // a node that knows checkpoint 5 and is not the leader
        await AppendAsync(6, 10);
        Assert.NotNull(await _log.CheckpointAsync(default)); // 10
        _time.Advance(TimeSpan.FromDays(40));
        await AppendAsync(11, 11);
        var leader = await StartAsync(_store, _hsm, new AuditOptions { Retention = TimeSpan.FromDays(30) });
        Assert.Equal(10, await leader.PruneAsync(_time.GetUtcNow(), default)); // 1..10 deleted; retention event 12, checkpoint 12
        Assert.Equal("11", Scalar("SELECT min(seq) FROM audit_events"));
        await AppendAsync(13, 14);

        var signed = await other.CheckpointAsync(default);
        Assert.Equal(14, signed?.Sequence);
        var result = Verify(await ExportAsync(other));
        Assert.True(result.Valid, result.Problem);

        // Still a database writer's rewrite of what it now knows as signed is refused.
        await AppendAsync(15, 15);
        Sql("DELETE FROM audit_events WHERE seq > 12; DELETE FROM audit_checkpoints WHERE seq > 12");
        await AppendAsync(16, 18);
        var refused = await Assert.ThrowsAsync<KmsException>(() => other.CheckpointAsync(default));
        Assert.Contains("no longer passes through checkpoint 14", refused.Message, StringComparison.Ordinal);
    }

    // Respellings of a body that a JSON reader takes as equal are other bytes: never verified.
    [Theory]
    [InlineData("\"seq\":3,", "\"\\u0073eq\":3,")]
    [InlineData("\"outcome\":\"OK\"", "\"outcome\":\"\\u004FK\"")]
    [InlineData("\"count\":1,", "\"count\":1.0,")]
    [InlineData("\"count\":1,", "\"count\":1e0,")]
    [InlineData("\"v\":1,", "\"v\":1,\"outcome\":\"PERMISSION_DENIED\",")]
    public async Task BodyRespelled_ReadsTheSameOrDifferently_NeverVerifies(string find, string replacement)
    {
        await BuildAsync();
        var lines = await ExportAsync();
        var i = IndexOfEvent(lines, 3);
        lines[i] = lines[i].Replace(find, replacement, StringComparison.Ordinal);
        Assert.False(Verify(lines).Valid, replacement);
        var body = lines[i]["{\"event\":".Length..lines[i].LastIndexOf(",\"hash\":", StringComparison.Ordinal)];
        lines[i] = "{\"event\":" + body + ",\"hash\":\"" + AuditChain.HashOf(body) + "\"}";
        var rehashed = Verify(lines);
        Assert.False(rehashed.Valid, replacement);
        Assert.Equal(3, rehashed.FirstBadSequence);
    }

    [Fact]
    public async Task HostileInput_ClearRefusal_NeverAnException()
    {
        await BuildAsync();
        var lines = await ExportAsync();
        foreach (var bad in new[]
        {
            new string('[', 100_000) + new string(']', 100_000),
            "{\"kms_audit_export\":1,\"anchor\":{\"seq\":9223372036854775807,\"hash\":\"x\"}}",
            "{\"kms_audit_export\":1,\"anchor\":{\"seq\":\"1\",\"hash\":1}}",
            "{\"event\":{\"seq\":99999999999999999999999},\"hash\":\"x\"}",
            "{\"event\":[],\"hash\":\"x\"}",
            "{\"checkpoint\":5,\"signature\":\"x\"}",
            "{\"checkpoint\":{\"v\":1,\"type\":\"checkpoint\",\"seq\":3,\"key\":\"k\"},\"signature\":\"%%%\"}",
            "\u0000\u0001\uFFFD",
        })
        {
            var result = Verify([lines[0], bad, .. lines.Skip(1)]);
            Assert.False(result.Valid, bad[..Math.Min(bad.Length, 60)]);
            Assert.NotNull(result.Problem);
        }

        var farAnchor = Verify(["{\"kms_audit_export\":1,\"anchor\":{\"seq\":9223372036854775807,\"hash\":\"x\"}}"]);
        Assert.False(farAnchor.Valid);
        Assert.Contains("no signed checkpoint vouches for it", farAnchor.Problem, StringComparison.Ordinal);
    }

    // As the host does (AuditWorker): each checkpoint appended to {DataDir}/audit/checkpoints.jsonl.
    private void RecordCheckpoints(AuditLog log)
    {
        Directory.CreateDirectory(Path.GetDirectoryName(CheckpointsPath)!);
        log.CheckpointWritten += c => Kms.Core.Files.DurableFile.Append(CheckpointsPath, System.Text.Encoding.UTF8.GetBytes(AuditExport.Checkpoint(c) + "\n"), Kms.Core.Files.DurableFile.OwnerOnly);
    }

    private async Task<AuditLog> StartAsync(SqliteStore store, FakeHsm hsm, AuditOptions? options = null)
    {
        var log = new AuditLog(store, store, hsm, _time, options ?? new AuditOptions());
        await log.InitializeAsync(default);
        return log;
    }

    // Twelve events, checkpoints at 5 and 10.
    private async Task BuildAsync()
    {
        for (var i = 1; i <= 12; i++)
        {
            await AppendAsync(i, i);
            if (i % 5 == 0)
            {
                Assert.NotNull(await _log.CheckpointAsync(default));
            }
        }
    }

    private async Task AppendAsync(int from, int to)
    {
        for (var i = from; i <= to; i++)
        {
            _time.Advance(TimeSpan.FromSeconds(1));
            await _store.AppendAuditAsync([Entry(i)], default);
        }
    }

    private AuditEntry Entry(int i) => new()
    {
        Time = _time.GetUtcNow(),
        RequestId = $"req-{i}",
        Principal = i % 2 == 0 ? "token:alice" : "token:bob",
        Tenant = "dev",
        Operation = "/kms.v1.KeyManagementService/Decrypt",
        Resource = "tenants/dev/keys/k",
        Outcome = "OK",
        Client = "ipv4:127.0.0.1:5000",
    };

    private Task<List<string>> ExportAsync() => ExportAsync(_log);

    private static async Task<List<string>> ExportAsync(AuditLog log)
    {
        var lines = new List<string>();
        await foreach (var line in log.ExportAsync(0, default))
        {
            lines.Add(line);
        }

        return lines;
    }

    // As whoever holds the database would: every body from `from` on linked to the one before, re-hashed.
    private void Rechain(long from)
    {
        var previous = Scalar($"SELECT hash FROM audit_events WHERE seq = {from - 1}");
        var last = long.Parse(Scalar("SELECT max(seq) FROM audit_events"), System.Globalization.CultureInfo.InvariantCulture);
        for (var seq = from; seq <= last; seq++)
        {
            var body = PrevPattern().Replace(Scalar($"SELECT body FROM audit_events WHERE seq = {seq}"), $"\"prev\":\"{previous}\"");
            previous = AuditChain.HashOf(body);
            Sql($"UPDATE audit_events SET body = '{body.Replace("'", "''", StringComparison.Ordinal)}', hash = '{previous}' WHERE seq = {seq}");
        }
    }

    private AuditVerification Verify(List<string> lines, KnownCheckpoint? known = null) =>
        AuditVerifier.Verify(new StringReader(string.Join('\n', lines) + "\n"), _log.PublicKey, known);

    private void AssertFails(List<string> lines, long firstBad, string problem)
    {
        var result = Verify(lines);
        Assert.False(result.Valid);
        Assert.True(firstBad == result.FirstBadSequence, $"first bad {result.FirstBadSequence}, expected {firstBad}: {result.Problem}");
        Assert.Contains(problem, result.Problem, StringComparison.Ordinal);
    }

    private static int IndexOfEvent(List<string> lines, long seq) =>
        lines.FindIndex(l => l.StartsWith($"{{\"event\":{{\"v\":1,\"seq\":{seq},", StringComparison.Ordinal));

    private void Sql(string sql) => RawSqlite.Execute(DatabasePath, sql);

    private string Scalar(string sql) => RawSqlite.Scalar(DatabasePath, sql);

    [GeneratedRegex("\"prev\":\"[0-9a-f]{64}\"")]
    private static partial Regex PrevPattern();
}
