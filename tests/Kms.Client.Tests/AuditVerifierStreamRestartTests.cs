using System.Security.Cryptography;
using System.Text.Json;
using System.Text.RegularExpressions;
using Kms.Client.Audit;
using Kms.Core.Audit;
using Kms.Core.Services;
using Kms.Testing.Fakes;
using Microsoft.Extensions.Time.Testing;

namespace Kms.Client.Tests;

/// <summary>
/// The verifier on copies of the SIEM stream that hold restart lines (docs/audit-format.md
/// "Export"), written by the server's own AuditLog and AuditExport: a copy of a stream whose
/// database was rolled back under it verifies, every chain in it, and says so — the restarts, and
/// what they replaced; never as a clean copy. A restart line edited, one out of place, one that goes
/// on after an event the copy does not hold, or one inserted to hide a rewrite, is caught.
/// </summary>
public sealed partial class AuditVerifierStreamRestartTests : IDisposable
{
    private readonly FakeHsm _hsm = new();
    private readonly InMemoryStore _store = new();
    private readonly FakeTimeProvider _time = new(new DateTimeOffset(2026, 11, 29, 12, 0, 0, TimeSpan.Zero));

    // The SIEM's copy of the stream, a line each: what the server streamed (events, restart lines),
    // and the checkpoint lines it logs (event 1302), merged in after their events.
    private readonly List<string> _copy = [];
    private byte[] _publicKey = [];

    public void Dispose() => _hsm.Dispose();

    // Events 1-10 streamed, checkpoints over 5 and 8; the database rolled back to 6 under the
    // running node and six new events written: the stream restarts after 6 (its file read back),
    // replacing 10, then the new 7-12. The node signs nothing over the new chain (it does not pass
    // through its checkpoint 8). Before, the copy failed at the restart line: "line 14 is neither
    // an event nor a checkpoint".
    [Fact]
    public async Task RolledBackUnderTheRunningNode_Verifies_TheRestartReported_TheCheckpointOverTheReplacedEventsNoLongerCounts()
    {
        var node = await StartNodeAsync();
        await AppendCheckpointedAsync(node, 5, 3, 2);
        var old = Events();

        _store.RollBackAudit(6);
        await AppendAsync(node, 6);
        var restartLine = _copy.FindIndex(l => l.StartsWith("{\"stream_restart\":", StringComparison.Ordinal));
        Assert.Equal(AuditExport.Restart(new StreamRestart(old[5], old[9])), _copy[restartLine]);

        var result = Verify();
        Assert.True(result.Valid, result.Problem);
        Assert.Equal((12L, 1L, 5L, 7L), (result.Events, result.Checkpoints, result.LastSignedSequence, result.UnsignedTail));
        var restarts = Assert.IsType<AuditStreamRestarts>(result.StreamRestarts);
        Assert.Equal((1L, 4L, 1L), (restarts.Count, restarts.ReplacedEvents, restarts.ReplacedCheckpoints));
        Assert.Equal(new AuditStreamRestart(restartLine + 1, 6, old[5].Hash, 10, old[9].Hash), Assert.Single(restarts.Listed));

        // A checkpoint known from outside is checked against the chain the copy ends with: the old
        // chain's 8 is not in it; the new chain's head is.
        var known = Verify(new KnownCheckpoint(8, old[7].Hash));
        Assert.False(known.Valid);
        Assert.Equal(8, known.FirstBadSequence);
        Assert.Contains("event 8 differs from the known checkpoint", known.Problem, StringComparison.Ordinal);
        var head = await _store.GetAuditHeadAsync(default);
        var extended = Verify(new KnownCheckpoint(head.Sequence, head.Hash));
        Assert.True(extended.Valid, extended.Problem);
        Assert.Equal((12L, 0L), (extended.LastSignedSequence, extended.UnsignedTail));
        Assert.NotNull(extended.StreamRestarts);
    }

    // Rolled back while the node was stopped (a kms.db copied back): the next node reads the
    // stream back and restarts it after 6; it signs the new chain (its database's last checkpoint
    // is 5). On stdout, which cannot be read back, the running node restarts at or before the fork,
    // at the last event of a page it sent that the chain holds: some events come again, unchanged.
    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public async Task RolledBack_FromAFileOrStdout_Verifies_SignedThroughTheNewChain(bool file)
    {
        var node = await StartNodeAsync(file);
        await AppendAsync(node, 4);
        await AppendAsync(node, 1);
        await CheckpointAsync(node);
        await AppendAsync(node, 3);
        await CheckpointAsync(node);
        await AppendAsync(node, 2);

        _store.RollBackAudit(6);
        await _store.AppendAuditAsync([.. Enumerable.Range(0, 6).Select(i => Entry($"new-{i}"))], default);
        if (file)
        {
            node = await StartNodeAsync();
        }

        await node.RunHousekeepingAsync(default);
        if (file)
        {
            await CheckpointAsync(node);
        }

        var result = Verify();
        Assert.True(result.Valid, result.Problem);
        var restarts = Assert.IsType<AuditStreamRestarts>(result.StreamRestarts);
        var after = file ? 6L : 5L; // stdout: the last event of the page it was sent that the chain holds
        Assert.Equal((1L, 10 - after, 1L), (restarts.Count, restarts.ReplacedEvents, restarts.ReplacedCheckpoints));
        Assert.Equal((after, 10L), (Assert.Single(restarts.Listed).AfterSequence, restarts.Listed[0].ReplacedSequence));
        Assert.Equal(file ? (12L, 2L, 12L, 0L) : (12L, 1L, 5L, 7L), (result.Events, result.Checkpoints, result.LastSignedSequence, result.UnsignedTail));
    }

    [Fact]
    public async Task RestartLine_ItsAfterHashEdited_FailsThere_NamingTheLine()
    {
        await RolledBackCopyAsync();
        var line = RestartLineIndex();
        _copy[line] = EditAfterHash(_copy[line]);

        var result = Verify();
        Assert.False(result.Valid);
        Assert.Equal(11, result.FirstBadSequence);
        Assert.Contains($"line {line + 1} restarts the stream after event 6 with hash ", result.Problem, StringComparison.Ordinal);
        Assert.Contains("the line was edited, or is not this stream's", result.Problem, StringComparison.Ordinal);
    }

    [Fact]
    public async Task RestartLine_ItsReplacedEventNotTheLastBeforeIt_OrAfterNotBeforeIt_OrMalformed_Fails()
    {
        await RolledBackCopyAsync();
        var line = RestartLineIndex();
        var original = _copy[line];

        // Moved up one event: what it replaces is not the last event the stream was sent.
        (_copy[line], _copy[line - 1]) = (_copy[line - 1], _copy[line]);
        var moved = Verify();
        Assert.False(moved.Valid);
        Assert.Equal(10, moved.FirstBadSequence);
        Assert.Contains($"line {line} restarts the stream replacing event 10 (", moved.Problem, StringComparison.Ordinal);
        Assert.Contains("but the last event before it is 9", moved.Problem, StringComparison.Ordinal);
        (_copy[line], _copy[line - 1]) = (_copy[line - 1], _copy[line]);

        _copy[line] = original.Replace("\"after\":{\"seq\":6,", "\"after\":{\"seq\":10,", StringComparison.Ordinal);
        Assert.Contains("which is not before the event it replaces (10)", Verify().Problem, StringComparison.Ordinal);

        foreach (var malformed in new[] { original.Replace("}}}", "},\"x\":1}}", StringComparison.Ordinal), original.Replace("\"after\":{\"seq\":6,", "\"after\":{\"seq\":\"6\",", StringComparison.Ordinal), "{\"stream_restart\":{\"after\":{\"seq\":6}}}" })
        {
            _copy[line] = malformed;
            var result = Verify();
            Assert.False(result.Valid, malformed);
            Assert.Equal($"line {line + 1} is a malformed stream restart", result.Problem);
        }
    }

    [Fact]
    public async Task EventRemovedRightAfterARestart_NamesTheGap()
    {
        await RolledBackCopyAsync();
        _copy.RemoveAt(RestartLineIndex() + 1);

        var result = Verify();
        Assert.False(result.Valid);
        Assert.Equal(7, result.FirstBadSequence);
        Assert.Contains("event 7 is missing", result.Problem, StringComparison.Ordinal);
        Assert.Equal(1, result.StreamRestarts?.Count); // the restart before it was verified
    }

    // Whoever holds the SIEM's copy of a clean stream rewrites events 7-12 and puts a restart line
    // before them that goes on after the real event 6 and replaces the real 12, as a rollback would
    // have: the copy verifies — as a restart, with the checkpoint over 10 no longer counting, never as
    // a clean copy; and against the checkpoint over 10 known from outside, it fails.
    [Fact]
    public async Task RestartInsertedIntoACleanCopy_ToHideARewrite_ReportedAsARestart_NotAsCleanCopy_AndTheKnownCheckpointCatchesIt()
    {
        var node = await StartNodeAsync();
        await AppendCheckpointedAsync(node, 5, 5, 2);
        var clean = Verify();
        Assert.True(clean.Valid, clean.Problem);
        Assert.Null(clean.StreamRestarts);
        Assert.Equal((2L, 10L), (clean.Checkpoints, clean.LastSignedSequence));
        var events = Events();

        // Alone, the line leaves the events after it out of sequence.
        var inserted = IndexOfEvent(10);
        _copy.Insert(inserted, AuditExport.Restart(new StreamRestart(events[5], events[8])));
        Assert.Contains("event 7 is missing (the next one is 10)", Verify().Problem, StringComparison.Ordinal);
        _copy.RemoveAt(inserted);

        _copy.Add(AuditExport.Restart(new StreamRestart(events[5], events[11])));

        var previous = events[5].Hash;
        foreach (var e in events.Skip(6))
        {
            var line = _copy[IndexOfEvent(e.Sequence)];
            var body = PrevPattern().Replace(line["{\"event\":".Length..line.LastIndexOf(",\"hash\":", StringComparison.Ordinal)], $"\"prev\":\"{previous}\"")
                .Replace("\"outcome\":\"OK\"", "\"outcome\":\"PERMISSION_DENIED\"", StringComparison.Ordinal);
            previous = AuditChain.HashOf(body);
            _copy.Add(AuditExport.Event(new AuditEvent(e.Sequence, null!, "", previous, body)));
        }

        var hidden = Verify();
        Assert.True(hidden.Valid, hidden.Problem);
        var restarts = Assert.IsType<AuditStreamRestarts>(hidden.StreamRestarts);
        Assert.Equal((1L, 6L, 1L), (restarts.Count, restarts.ReplacedEvents, restarts.ReplacedCheckpoints));
        Assert.Equal((12L, 1L, 5L), (hidden.Events, hidden.Checkpoints, hidden.LastSignedSequence));

        var known = Verify(new KnownCheckpoint(10, events[9].Hash));
        Assert.False(known.Valid);
        Assert.Contains("event 10 differs from the known checkpoint", known.Problem, StringComparison.Ordinal);
    }

    // A copy that starts after an event (an export's anchor, vouched for by its checkpoint): a
    // restart after the anchor goes back to what the copy holds; one after an event before it
    // cannot be checked here, and fails, naming the line. So does one after an event further back
    // than the hashes the verifier keeps.
    [Fact]
    public async Task RestartAfterTheAnchor_Verifies_AfterAnEventBeforeTheCopysStart_Fails()
    {
        var node = await StartNodeAsync();
        await AppendAsync(node, 5);
        await CheckpointAsync(node);
        await AppendAsync(node, 7);
        var events = Events();
        var export = new List<string>();
        await foreach (var line in node.ExportAsync(5, default))
        {
            export.Add(line);
        }

        Assert.Contains("\"anchor\":{\"seq\":5,", export[0], StringComparison.Ordinal);
        export.Add(AuditExport.Restart(new StreamRestart(events[4], events[11])));
        export.AddRange(_copy.Where(l => l.StartsWith("{\"event\":", StringComparison.Ordinal)).Skip(5));
        var anchored = Verify(export, partial: true);
        Assert.True(anchored.Valid, anchored.Problem);
        Assert.Equal((7L, 5L, 5L), (anchored.Events, anchored.AnchorSequence, anchored.LastSignedSequence));
        var restarts = Assert.IsType<AuditStreamRestarts>(anchored.StreamRestarts);
        Assert.Equal((1L, 5L, 7L), (restarts.Count, Assert.Single(restarts.Listed).AfterSequence, restarts.ReplacedEvents));

        var restartLine = export.FindIndex(l => l.StartsWith("{\"stream_restart\":", StringComparison.Ordinal));
        export[restartLine] = AuditExport.Restart(new StreamRestart(events[3], events[11]));
        var before = Verify(export, partial: true);
        Assert.False(before.Valid);
        Assert.Contains($"line {restartLine + 1} restarts the stream after event 4, before this copy's start (it follows event 5)", before.Problem, StringComparison.Ordinal);
    }

    [Fact]
    public void RestartFurtherBackThanTheHashesKept_Fails_NamingTheBound_JustWithinIt_Verifies()
    {
        using var key = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        var publicKey = key.ExportSubjectPublicKeyInfo();

        using var within = new SyntheticAuditExport(key, 70_000, 1_000, restart: (70_000, 70_000 - AuditVerifier.RecentEvents + 1));
        var verified = AuditVerifier.Verify(within, publicKey);
        Assert.True(verified.Valid, verified.Problem);
        var restarts = Assert.IsType<AuditStreamRestarts>(verified.StreamRestarts);
        Assert.Equal((70_000L, 1L, AuditVerifier.RecentEvents - 1L), (verified.Events, restarts.Count, restarts.ReplacedEvents));

        // Checkpoints every 1,000: those over 5,000-70,000 replaced, and signed again over the same events.
        Assert.Equal((70L, 66L, 70_000L), (verified.Checkpoints, restarts.ReplacedCheckpoints, verified.LastSignedSequence));

        using var beyond = new SyntheticAuditExport(key, 70_000, 1_000, restart: (70_000, 70_000 - AuditVerifier.RecentEvents));
        var refused = AuditVerifier.Verify(beyond, publicKey);
        Assert.False(refused.Valid);
        Assert.Contains($"restarts the stream after event {70_000 - AuditVerifier.RecentEvents}, {AuditVerifier.RecentEvents} events back: this verifier keeps the hashes of the last {AuditVerifier.RecentEvents} events only", refused.Problem, StringComparison.Ordinal);
    }

    // A stream copy from the chain's start (no header) whose database went back to its start: the
    // restart goes on after event 0, which every chain holds.
    [Fact]
    public async Task RestartAfterTheChainsStart_WithoutAHeader_Verifies()
    {
        var node = await StartNodeAsync();
        await AppendAsync(node, 3);
        _store.RollBackAudit(0);
        await AppendAsync(node, 2);

        Assert.DoesNotContain(_copy, l => l.Contains("kms_audit_export", StringComparison.Ordinal));
        var result = Verify();
        Assert.True(result.Valid, result.Problem);
        Assert.Equal((2L, 0L, 3L), (result.Events, Assert.Single(result.StreamRestarts!.Listed).AfterSequence, result.StreamRestarts.ReplacedEvents));
    }

    // Ten events, checkpoints over 5 and 8, rolled back to 6 under the running node, six new.
    private async Task RolledBackCopyAsync()
    {
        var node = await StartNodeAsync();
        await AppendCheckpointedAsync(node, 5, 3, 2);
        _store.RollBackAudit(6);
        await AppendAsync(node, 6);
        Assert.True(Verify().Valid);
    }

    // A node streaming into the copy: a file stream, read back from its end (where it left off, and
    // where a restart goes on after), or stdout, which cannot be.
    // Events 1-10 streamed (stdout or a FIFO: not read back), the node killed with its stream's
    // position record at 6 (written once a pass, behind what was sent); the next start goes on
    // after 6: a resend line, 7-10 again, then 11-12. Each event sent again is the one verified
    // before: valid, nothing counted twice. Before, the line was "neither an event nor a
    // checkpoint", and without it the events were "out of order or repeated".
    [Fact]
    public async Task ResentAfterACrash_Verifies_EachEventSentAgainCompared_NotCountedTwice_NoRestart()
    {
        var node = await StartNodeAsync(file: false);
        await AppendAsync(node, 10);
        var events = Events();
        var again = await StartNodeAsync(file: false);
        Assert.True(await again.ForwardAfterIfHeldAsync(events[5], default));
        _copy.Add(AuditExport.Resend(events[5])); // as the host writes it, before the node's first events
        await AppendAsync(again, 2);

        var result = Verify();
        Assert.True(result.Valid, result.Problem);
        Assert.Equal(12L, result.Events);
        Assert.Null(result.StreamRestarts);
        Assert.Equal(new AuditStreamResends(1, 4), result.StreamResends);
        var head = Events()[^1];
        Assert.True(Verify(new KnownCheckpoint(head.Sequence, head.Hash)).Valid);

        // An event sent again that is not the one verified before is an edit, not a resend.
        var edited = new List<string>(_copy);
        var eighth = edited.FindLastIndex(l => l.StartsWith("{\"event\":{\"v\":1,\"seq\":8,", StringComparison.Ordinal));
        edited[eighth] = edited[eighth].Replace("token:alice", "token:mallo", StringComparison.Ordinal);
        Assert.Contains("event 8, sent again after the resend line on line 11, is not the event 8 verified before it", AuditVerifier.Verify(new StringReader(string.Join('\n', edited) + "\n"), _publicKey).Problem, StringComparison.Ordinal);

        // A resend after an event the copy never got is a gap, not a resend.
        var gap = _copy.GetRange(0, IndexOfEvent(5));
        gap.Add(AuditExport.Resend(events[5]));
        Assert.Contains("line 5 resends the stream after event 6, but the copy holds events through 4 only", Verify(gap).Problem, StringComparison.Ordinal);
    }

    // Events 1-10 streamed on stdout or a FIFO (not read back), the node stopped with its position
    // record at 10 and earlier events it lists; the database rolled back to 6 while it was stopped
    // and six other events written. The next start restarts the stream after 6, the newest listed
    // event the chain holds (RestartAfterHeldAsync): a restart line replacing 10, then the new
    // 7-12. After a crash the record lags (at 8, the stream holding 9 and 10): a resend line after
    // 8 goes first, and the restart replaces 8. Both copies verify as a restart. Before, the start
    // began at the chain's head: the new 7-12 never reached the stream, and nothing said so.
    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public async Task RolledBackWhileStopped_StreamNotReadBack_RestartsAfterTheRecordsNewestHeldEvent_Verifies(bool clean)
    {
        var node = await StartNodeAsync(file: false);
        await AppendAsync(node, 10);
        var old = Events();
        var recorded = clean ? old[9] : old[7];
        AuditHead[] earlier = clean ? [old[8], old[7], old[5], old[3], old[0]] : [old[6], old[5], old[3], old[0]];

        _store.RollBackAudit(6);
        await _store.AppendAuditAsync([.. Enumerable.Range(0, 6).Select(i => Entry($"new-{i}"))], default);
        var again = await StartNodeAsync(file: false);
        Assert.False(await again.ForwardAfterIfHeldAsync(recorded, default));
        Assert.Equal(old[5], await again.RestartAfterHeldAsync(recorded, earlier, default));
        if (!clean)
        {
            _copy.Add(AuditExport.Resend(recorded)); // as the host writes it, before the restart line
        }

        await again.RunHousekeepingAsync(default);
        Assert.Equal(AuditExport.Restart(new StreamRestart(old[5], recorded)), _copy[RestartLineIndex()]);
        Assert.Equal(Enumerable.Range(7, 6).Select(i => (long)i), _copy.Skip(RestartLineIndex() + 1).Select(l => PointOf(l)!.Value.Sequence));

        var result = Verify();
        Assert.True(result.Valid, result.Problem);
        var restart = Assert.Single(Assert.IsType<AuditStreamRestarts>(result.StreamRestarts).Listed);
        Assert.Equal((6L, recorded.Sequence), (restart.AfterSequence, restart.ReplacedSequence));
        var head = Events()[^1];
        Assert.True(Verify(new KnownCheckpoint(head.Sequence, head.Hash)).Valid);
    }

    // None of the record's events held (the chain rewritten from its start): nothing changes, and
    // the stream goes on from the chain's head, as before (the host logs 1327).
    [Fact]
    public async Task RestartAfterHeldAsync_NoneOfTheEarlierEventsHeld_NullAndTheStreamGoesOnFromTheHead()
    {
        var node = await StartNodeAsync(file: false);
        await AppendAsync(node, 4);
        var old = Events();
        _store.RollBackAudit(0);
        await _store.AppendAuditAsync([.. Enumerable.Range(0, 3).Select(i => Entry($"new-{i}"))], default);
        var again = await StartNodeAsync(file: false);
        Assert.Null(await again.RestartAfterHeldAsync(old[3], [old[2], old[1], old[0]], default));
        Assert.Equal(Events()[^1], again.StreamPosition);
    }

    // A run killed in the middle of a line on stdout or a FIFO leaves it cut short; the next run
    // starts on a new line (an empty line when nothing was cut) with its resend line. Before, the
    // cut line failed the copy: "line 8 is malformed (JsonReaderException)".
    [Fact]
    public async Task ALineCutShortByAKill_ThenTheNextRunsResendLine_Verifies_ElseMalformed()
    {
        var node = await StartNodeAsync(file: false);
        await AppendAsync(node, 10);
        var events = Events();
        var eighth = IndexOfEvent(8);
        _copy[eighth] = _copy[eighth][..40]; // killed while event 8's line was written: 9 and 10 never sent
        _copy.RemoveRange(eighth + 1, _copy.Count - eighth - 1);
        var again = await StartNodeAsync(file: false);
        Assert.True(await again.ForwardAfterIfHeldAsync(events[5], default));
        _copy.Add(AuditExport.Resend(events[5])); // as the host writes it, on a new line, before the node's first events
        await AppendAsync(again, 2);

        var result = Verify();
        Assert.True(result.Valid, result.Problem);
        Assert.Equal(12L, result.Events);
        Assert.Equal(new AuditStreamResends(1, 1), result.StreamResends);

        // Anything but a resend or restart line after it: the cut line is malformed, as before.
        var noResend = new List<string>(_copy);
        noResend.RemoveAt(eighth + 1);
        Assert.StartsWith($"line {eighth + 1} is malformed (not one whole JSON object", Verify(noResend).Problem, StringComparison.Ordinal);

        // And an empty line alone (a start after a clean stop) is skipped, as always.
        var clean = _copy.GetRange(0, eighth);
        clean.Add("");
        clean.AddRange(_copy.Skip(eighth + 2).SkipWhile(l => !l.StartsWith("{\"event\":{\"v\":1,\"seq\":8,", StringComparison.Ordinal)));
        Assert.True(Verify(clean).Valid, Verify(clean).Problem);
    }

    private async Task<AuditLog> StartNodeAsync(bool file = true)
    {
        var node = new AuditLog(_store, _store, _hsm, _time, new AuditOptions());
        await node.InitializeAsync(default);
        _publicKey = node.PublicKey;
        node.EventsWritten += events => _copy.AddRange(events.Select(AuditExport.Event));
        node.StreamRestarted += restart => _copy.Add(AuditExport.Restart(restart));
        if (file)
        {
            node.StreamHistory = () => [.. Enumerable.Reverse(_copy).Select(PointOf).OfType<AuditHead>()];
            if (Enumerable.Reverse(_copy).Select(PointOf).OfType<AuditHead>().FirstOrDefault() is { Sequence: > 0 } last)
            {
                node.ForwardAfter(last);
            }
        }

        return node;
    }

    private async Task AppendAsync(AuditLog node, int count)
    {
        await _store.AppendAuditAsync([.. Enumerable.Range(0, count).Select(i => Entry($"req-{_copy.Count}-{i}"))], default);
        await node.RunHousekeepingAsync(default);
    }

    // Runs of events with a checkpoint after each run but the last.
    private async Task AppendCheckpointedAsync(AuditLog node, params int[] runs)
    {
        for (var i = 0; i < runs.Length; i++)
        {
            await AppendAsync(node, runs[i]);
            if (i < runs.Length - 1)
            {
                await CheckpointAsync(node);
            }
        }
    }

    private async Task CheckpointAsync(AuditLog node) =>
        _copy.Add(AuditExport.Checkpoint(Assert.IsType<AuditCheckpoint>(await node.CheckpointAsync(default))));

    // The chain the database holds now.
    private List<AuditHead> Events() =>
        [.. _store.ListAuditEventsAsync(new AuditQuery { Limit = 1000 }, default).GetAwaiter().GetResult().Select(e => new AuditHead(e.Sequence, e.Hash))];

    private AuditVerification Verify(KnownCheckpoint? known = null) => Verify(_copy, known);

    private AuditVerification Verify(List<string> lines, KnownCheckpoint? known = null, bool partial = false) =>
        AuditVerifier.Verify(new StringReader(string.Join('\n', lines) + "\n"), _publicKey, known, partial);

    private int RestartLineIndex() => _copy.FindIndex(l => l.StartsWith("{\"stream_restart\":", StringComparison.Ordinal));

    private int IndexOfEvent(long seq) => _copy.FindIndex(l => l.StartsWith($"{{\"event\":{{\"v\":1,\"seq\":{seq},", StringComparison.Ordinal));

    private static string EditAfterHash(string line)
    {
        var at = line.IndexOf("\"hash\":\"", StringComparison.Ordinal) + "\"hash\":\"".Length;
        return string.Concat(line.AsSpan(0, at), line[at] == '0' ? "1" : "0", line.AsSpan(at + 1));
    }

    // An event line's sequence and hash, a restart line's event it goes on after (as the host reads its stream file back).
    private static AuditHead? PointOf(string line)
    {
        using var document = JsonDocument.Parse(line);
        var root = document.RootElement;
        return root.TryGetProperty("event", out var e) ? new AuditHead(e.GetProperty("seq").GetInt64(), root.GetProperty("hash").GetString()!)
            : root.TryGetProperty("stream_restart", out var r) ? new AuditHead(r.GetProperty("after").GetProperty("seq").GetInt64(), r.GetProperty("after").GetProperty("hash").GetString()!)
            : null;
    }

    private AuditEntry Entry(string requestId) => new()
    {
        Time = _time.GetUtcNow(),
        RequestId = requestId,
        Principal = "token:alice",
        Tenant = "dev",
        Operation = "/kms.v1.KeyManagementService/Encrypt",
        Resource = "tenants/dev/keys/k",
        Outcome = "OK",
    };

    [GeneratedRegex("\"prev\":\"[0-9a-f]{64}\"")]
    private static partial Regex PrevPattern();
}
