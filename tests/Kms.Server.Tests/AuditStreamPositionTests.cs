using System.Diagnostics;
using System.Globalization;
using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using Kms.Client.Audit;
using Kms.Core.Audit;
using Kms.Core.Files;
using Kms.Hsm;
using Kms.Server.Audit;
using Kms.Storage.Sqlite;
using Kms.Testing;

namespace Kms.Server.Tests;

/// <summary>
/// A SIEM stream that cannot be read back (a FIFO a SIEM agent reads, stdout) goes on at a start
/// from its position record (<c>{DataDir}/audit/stream-position.json</c>), not from the chain's
/// head: events committed while the node was stopped, or that a crash kept it from forwarding,
/// reach the reader — after a clean stop each once, after a kill some again, after a resend line.
/// </summary>
public sealed class AuditStreamPositionTests
{
    private const string DomainKeyId = "dk-stream-position";

    // A clean stop, then three events committed by another writer of the database while the node
    // is stopped (nothing forwards them), then a start. Before, the start began the FIFO at the
    // chain's head and the reader never got them: "event 9 is missing (the next one is 12)".
    [Fact]
    public async Task Fifo_EventsCommittedWhileTheNodeWasStopped_ReachTheReaderAfterTheStart_EachOnce()
    {
        var dataDir = Scratch.NewPath("kms-server-");
        var fifo = Scratch.NewPath("kms-siem-", ".fifo");
        MakeFifo(fifo);
        using var reader = FifoReader.Start(fifo);
        string[] args = [$"--Kms:Audit:StreamPath={fifo}"];
        var server = await KmsTestServer.StartAsync(null, dataDir, "dev", args);
        var token = server.Token;
        try
        {
            using var developer = server.CreateClient();
            await developer.CreateKeyAsync("tenants/dev", "before-the-stop");
        }
        finally
        {
            await server.DisposeAsync();
        }

        var database = Path.Combine(dataDir, "kms.db");
        var stopped = Head(database);
        await reader.WaitForEventAsync(stopped);
        var position = AuditStreamPosition.Read(Path.Combine(dataDir, "audit", AuditStreamPosition.FileName)).Position;
        Assert.Equal((Path.GetFullPath(fifo), stopped, true), (position?.Stream, position?.Last.Sequence, position?.Clean));

        await AppendWhileStoppedAsync(database, 3);
        server = await KmsTestServer.StartAsync(token, dataDir, "dev", args);
        try
        {
            using var developer = server.CreateClient();
            await developer.CreateKeyAsync("tenants/dev", "after-the-start");
        }
        finally
        {
            await server.DisposeAsync();
        }

        var head = Head(database);
        await reader.WaitForEventAsync(head);
        var copy = reader.Lines;
        Assert.DoesNotContain(copy, l => l.StartsWith("{\"stream_", StringComparison.Ordinal)); // a clean stop: no resend, no restart
        var sequences = copy.Where(l => l.Length > 0).Select(Sequence).ToList();
        Assert.Equal(Enumerable.Range((int)sequences[0], (int)(head - sequences[0] + 1)).Select(i => (long)i), sequences);
        Assert.Contains(stopped + 3, sequences);
        var result = AuditVerifier.Verify(new StringReader(string.Join('\n', copy) + "\n"), PublicKey(dataDir));
        Assert.True(sequences[0] != 1 || result.Valid, result.Problem);
    }

    // No process reads the FIFO while the node runs and stops; a reader attaches, the node starts
    // again. Before, the node opened the FIFO read-write, its appends went into a pipe only it held
    // and were dropped when it closed it, and the position moved on all the same: the reader never
    // got the first run's events ("Collections differ, Expected [1, 2], Actual [2]"). Now nothing counts as
    // sent that no reader took (O_WRONLY|O_NONBLOCK: ENXIO), and the second run sends them.
    [Fact]
    public async Task Fifo_NoReaderWhileTheNodeRanAndStopped_ItsEventsReachAReaderThatAttachesLater_EachOnce()
    {
        var dataDir = Scratch.NewPath("kms-server-");
        var fifo = Scratch.NewPath("kms-siem-", ".fifo");
        MakeFifo(fifo);
        string[] args = [$"--Kms:Audit:StreamPath={fifo}"];
        var server = await KmsTestServer.StartAsync(null, dataDir, "dev", args);
        var token = server.Token;
        try
        {
            using var developer = server.CreateClient();
            await developer.CreateKeyAsync("tenants/dev", "while-nobody-reads");
        }
        finally
        {
            await server.DisposeAsync();
        }

        var database = Path.Combine(dataDir, "kms.db");
        using var reader = FifoReader.Start(fifo);
        server = await KmsTestServer.StartAsync(token, dataDir, "dev", args);
        try
        {
            using var developer = server.CreateClient();
            await developer.CreateKeyAsync("tenants/dev", "after-a-reader-attached");
        }
        finally
        {
            await server.DisposeAsync();
        }

        var head = Head(database);
        await reader.WaitForEventAsync(head);
        var copy = reader.Lines;
        var sequences = copy.Where(l => l.StartsWith("{\"event\":", StringComparison.Ordinal)).Select(Sequence).ToList();
        Assert.Equal(Enumerable.Range(1, (int)head).Select(i => (long)i), sequences);
        var result = AuditVerifier.Verify(new StringReader(string.Join('\n', copy) + "\n"), PublicKey(dataDir));
        Assert.True(result.Valid, result.Problem);
        var position = AuditStreamPosition.Read(Path.Combine(dataDir, "audit", AuditStreamPosition.FileName)).Position;
        Assert.Equal((head, true), (position?.Last.Sequence, position?.Clean));
    }

    // The real binary on stdout, killed (SIGKILL) idle, three events committed while it is down,
    // started again: its stdout carries every event, those the record lagged behind again after a
    // resend line, and the two runs' stdout together verify. Before, the second run began at the
    // chain's head: "event 9 is missing (the next one is 12)".
    [Fact]
    public async Task Stdout_KilledThenEventsCommittedWhileDown_TheNextRunSendsThem_AfterAResendLine_TheCopyVerifies()
    {
        var (token, dataDir) = ProductionNode("kms-stdout-");
        var database = Path.Combine(dataDir, "kms.db");
        string[] args = ["--Kms:Audit:StreamPath=-"];
        var server = await ServerProcess.StartAsync(dataDir, SoftHsm.ConfigPath, token.Label, token.PinFile, DomainKeyId, args);
        string first;
        try
        {
            var (developer, _) = await server.BootstrapAsync("dev");
            using (var client = server.CreateClient(developer))
            {
                await client.CreateKeyAsync("tenants/dev", "before-the-kill");
            }

            // Idle, every event on stdout: the kill tears no line.
            await server.WaitForOutputAsync(EventPrefix(Head(database)), TimeSpan.FromSeconds(60));
            server.Kill();
            first = server.Output;
        }
        finally
        {
            await server.DisposeAsync();
        }

        var killed = Head(database);
        await AppendWhileStoppedAsync(database, 3);
        var head = killed + 3;
        server = await ServerProcess.StartAsync(dataDir, SoftHsm.ConfigPath, token.Label, token.PinFile, DomainKeyId, args);
        string second;
        try
        {
            await server.WaitForOutputAsync(EventPrefix(head), TimeSpan.FromSeconds(60));
            Assert.Equal(0, await server.TerminateAsync(TimeSpan.FromSeconds(30)));
            second = server.Output;
        }
        finally
        {
            await server.DisposeAsync();
        }

        var copy = StreamLines(first).Concat(StreamLines(second)).ToList();
        Assert.Single(copy, l => l.StartsWith("{\"stream_resend\":", StringComparison.Ordinal));
        var result = AuditVerifier.Verify(new StringReader(string.Join('\n', copy) + "\n"), PublicKey(dataDir));
        Assert.True(result.Valid, result.Problem);
        Assert.Equal(Head(database), result.Events);
        Assert.Null(result.StreamRestarts);
        Assert.Equal(1, result.StreamResends?.Count);
        Directory.Delete(dataDir, recursive: true);
    }

    // The real binary, its stdout a pipe nobody reads (a SIEM agent that stopped): the stream's
    // lines fill it (64 KiB). The housekeeping pass goes on (a checkpoint over the events written
    // after the pipe filled is signed), requests are answered, and once the pipe is read again
    // every event reaches it once, the copy verifying; the stop ends. Before, the pass hung in
    // write(2) on the full pipe, and the server's own log lines (on the same stdout) with it:
    // no checkpoint was signed again, and the stop never ended.
    [Fact]
    public async Task Stdout_APipeNobodyReads_TheHousekeepingGoesOn_RequestsAnswered_AndOnceReadEveryEventArrivesOnce()
    {
        var (token, dataDir) = ProductionNode("kms-stdout-full-");
        var database = Path.Combine(dataDir, "kms.db");
        var checkpoints = Path.Combine(dataDir, "audit", "checkpoints.jsonl");
        string[] args = ["--Kms:Audit:StreamPath=-", "--Kms:Audit:CheckpointInterval=00:00:01"];
        var server = await ServerProcess.StartWithStandardOutputUnreadAsync(dataDir, SoftHsm.ConfigPath, token.Label, token.PinFile, DomainKeyId, args);
        try
        {
            var (developer, _) = await server.BootstrapAsync("dev");
            using (var client = server.CreateClient(developer))
            {
                await client.CreateKeyAsync("tenants/dev", "filled");

                // 600 events of some 500 bytes each: several times what the pipe holds.
                for (var i = 0; i < 600; i++)
                {
                    await AnsweredAsync(client, i);
                }

                var filled = Head(database);
                await WaitForCheckpointAsync(checkpoints, filled, TimeSpan.FromSeconds(60), () => server.Output);

                // A request after it is answered (and its event durable) as any other.
                await AnsweredAsync(client, 600);
            }

            server.ReadStandardOutput();
            await server.WaitForOutputAsync(EventPrefix(Head(database)), TimeSpan.FromSeconds(60));
            Assert.Equal(0, await server.TerminateAsync(TimeSpan.FromSeconds(30)));
        }
        finally
        {
            await server.DisposeAsync();
        }

        var copy = StreamLines(server.Output).ToList();
        Assert.Equal(Enumerable.Range(1, (int)Head(database)).Select(i => (long)i), copy.Select(Sequence));
        var result = AuditVerifier.Verify(new StringReader(string.Join('\n', copy) + "\n"), PublicKey(dataDir));
        Assert.True(result.Valid, result.Problem);
        Directory.Delete(dataDir, recursive: true);
    }

    // The real binary, its stdout a Unix stream socket nobody reads: systemd's StandardOutput=journal
    // (a journal that stopped reading), a container runtime's log socket. The stream's lines fill
    // its buffer; the housekeeping pass goes on (a checkpoint over the events after that is signed,
    // its log line written on stderr), requests are answered, and SIGTERM ends the server while the
    // socket is still full. What the socket took is read then, and a second run (stdout read) sends
    // the rest from the position record: every event once, the copy verifying. Before, stdout that
    // is a socket was written blocking (it cannot be opened again through /proc/self/fd/1): the
    // pass hung in write(2), no checkpoint was signed again, and the stop never ended.
    [Fact]
    public async Task Stdout_ASocketNobodyReads_TheHousekeepingGoesOn_TheStopEnds_AndEveryEventReachesTheStreamOnce()
    {
        var (token, dataDir) = ProductionNode("kms-stdout-socket-");
        var database = Path.Combine(dataDir, "kms.db");
        var checkpoints = Path.Combine(dataDir, "audit", "checkpoints.jsonl");
        string[] args = ["--Kms:Audit:StreamPath=-", "--Kms:Audit:CheckpointInterval=00:00:01"];
        var (server, reader) = await ServerProcess.StartWithStandardOutputOnSocketAsync(dataDir, SoftHsm.ConfigPath, token.Label, token.PinFile, DomainKeyId, args);
        string socketCopy;
        using (reader)
        {
            try
            {
                var (developer, _) = await server.BootstrapAsync("dev");
                using (var client = server.CreateClient(developer))
                {
                    await client.CreateKeyAsync("tenants/dev", "filled");

                    // 600 events of some 500 bytes each: several times what the socket's buffer holds.
                    for (var i = 0; i < 600; i++)
                    {
                        await AnsweredAsync(client, i);
                    }

                    var filled = Head(database);
                    var logged = server.Output.Length;
                    await WaitForCheckpointAsync(checkpoints, filled, TimeSpan.FromSeconds(60), () => server.Output);

                    // Its log line (1302) is written: the logs are on stderr, not on the full socket.
                    await WaitForAsync(() => server.Output[logged..].Contains("\"Id\":1302", StringComparison.Ordinal), TimeSpan.FromSeconds(60), () => $"no checkpoint was logged (1302) after the socket filled; stderr:\n{server.Output}");
                    await AnsweredAsync(client, 600);
                }

                // The socket is still full: the stop's last forwarding does not wait on it.
                Assert.Equal(0, await server.TerminateAsync(TimeSpan.FromSeconds(60)));
                Assert.Contains("the SIEM stream's stdout (a socket) is full", server.Output, StringComparison.Ordinal);
            }
            finally
            {
                await server.DisposeAsync();
            }

            socketCopy = ReadWhatItHolds(reader); // the server has exited: DisposeAsync waited for it
        }

        server = await ServerProcess.StartAsync(dataDir, SoftHsm.ConfigPath, token.Label, token.PinFile, DomainKeyId, args);
        string second;
        try
        {
            await server.WaitForOutputAsync(EventPrefix(Head(database)), TimeSpan.FromSeconds(60));
            Assert.Equal(0, await server.TerminateAsync(TimeSpan.FromSeconds(30)));
            second = server.Output;
        }
        finally
        {
            await server.DisposeAsync();
        }

        // A line of some 500 bytes is one send(2), which a Unix stream socket takes whole or not at
        // all: the first run ends on a whole line, its stop's record is clean, and nothing comes twice.
        var first = StreamLines(socketCopy).ToList();
        Assert.NotEmpty(first);
        var copy = first.Concat(StreamLines(second)).ToList();
        Assert.DoesNotContain(copy, l => l.StartsWith("{\"stream_", StringComparison.Ordinal));
        Assert.Equal(Enumerable.Range(1, (int)Head(database)).Select(i => (long)i), copy.Select(Sequence));
        var result = AuditVerifier.Verify(new StringReader(string.Join('\n', copy) + "\n"), PublicKey(dataDir));
        Assert.True(result.Valid, result.Problem);
        Directory.Delete(dataDir, recursive: true);
    }

    // All the socket holds, read once the server has exited: every send(2) it made is queued at
    // this end by then, so it is read until the queue is empty, not until end of file. End of file
    // needs every copy of the writer closed, and while the server starts a copy of it is inheritable
    // (not close-on-exec): a child process another test starts in that moment keeps one open for
    // as long as it runs (a `sleep 100` started there made the wait for end of file fail:
    // "did not end within 60 s of its exit (79114 bytes read)").
    private static string ReadWhatItHolds(System.Net.Sockets.Socket reader)
    {
        reader.Blocking = false;
        var received = new MemoryStream();
        var buffer = new byte[1 << 16];
        while (true)
        {
            int n;
            try
            {
                n = reader.Receive(buffer);
            }
            catch (System.Net.Sockets.SocketException e) when (e.SocketErrorCode == System.Net.Sockets.SocketError.WouldBlock)
            {
                break; // the queue is empty
            }

            if (n == 0)
            {
                break; // end of file: no writer left
            }

            received.Write(buffer, 0, n);
        }

        return Encoding.UTF8.GetString(received.ToArray());
    }

    private static async Task WaitForAsync(Func<bool> condition, TimeSpan within, Func<string> failure)
    {
        var deadline = DateTime.UtcNow + within;
        while (!condition())
        {
            Assert.True(DateTime.UtcNow < deadline, failure());
            await Task.Delay(100);
        }
    }

    private static async Task AnsweredAsync(Kms.Client.KmsClient client, int request)
    {
        using var within = new CancellationTokenSource(TimeSpan.FromSeconds(60));
        try
        {
            await client.GetKeyAsync("tenants/dev/keys/filled", within.Token);
        }
        catch (Exception e) when (within.IsCancellationRequested)
        {
            Assert.Fail($"request {request} was not answered within 60 s with stdout full ({e.GetType().Name})");
        }
    }

    // Waits until checkpoints.jsonl holds a checkpoint at or after event sequence; names what did not happen.
    private static async Task WaitForCheckpointAsync(string path, long sequence, TimeSpan within, Func<string> stderr)
    {
        var deadline = DateTime.UtcNow + within;
        while (!(File.Exists(path) && File.ReadLines(path).Any(l => AuditExport.ParseCheckpoint(l) is { } c && c.Sequence >= sequence)))
        {
            Assert.True(DateTime.UtcNow < deadline, $"no audit checkpoint at or after event {sequence} was signed within {within.TotalSeconds:0} s of the last of the requests that filled stdout: the housekeeping pass is held; its stderr:\n{stderr()}");
            await Task.Delay(100);
        }
    }

    // A stream file whose append lock another writer (another server or kms command on the path, a
    // SIEM agent's fcntl lock) holds across a start, with events committed while the node was
    // stopped: the start cannot read the file back. Before, it waited 10 s, then began the stream at
    // the chain's head, and the events between the file's last and that head never reached it.
    // Now nothing is forwarded while the lock is held (1337), and once it is released a
    // housekeeping pass reads the file back and goes on after its last event (1338): each event
    // once, the copy verifies.
    [Fact]
    public async Task File_LockedByAnotherWriterAcrossTheStart_EventsCommittedWhileStopped_ReachItOnceReleased_EachOnce()
    {
        var dataDir = Scratch.NewPath("kms-server-");
        var stream = Scratch.NewPath("kms-siem-", ".jsonl");
        string[] args = [$"--Kms:Audit:StreamPath={stream}"];
        var server = await KmsTestServer.StartAsync(null, dataDir, "dev", args);
        var token = server.Token;
        try
        {
            using var developer = server.CreateClient();
            await developer.CreateKeyAsync("tenants/dev", "before-the-stop");
        }
        finally
        {
            await server.DisposeAsync();
        }

        var database = Path.Combine(dataDir, "kms.db");
        var stopped = Head(database);
        Assert.StartsWith(EventPrefix(stopped), File.ReadLines(stream).Last(), StringComparison.Ordinal);
        await AppendWhileStoppedAsync(database, 3);

        string whileHeld;
        using (var holder = new FileStream(stream, FileMode.Open, FileAccess.ReadWrite, FileShare.ReadWrite))
        {
            DurableFile.EndWithWholeLine(holder); // the appenders' lock, held until it is closed
            server = await KmsTestServer.StartAsync(token, dataDir, "dev", args);
            using var developer = server.CreateClient();
            await developer.CreateKeyAsync("tenants/dev", "while-the-file-is-locked");
            whileHeld = File.ReadAllText(stream);
        }

        string logs;
        try
        {
            using var developer = server.CreateClient();
            await developer.CreateKeyAsync("tenants/dev", "after-the-lock-was-released");
            var head = Head(database);
            var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(60);
            while (!File.ReadLines(stream).Any(l => l.StartsWith(EventPrefix(head), StringComparison.Ordinal)))
            {
                Assert.True(DateTime.UtcNow < deadline, $"event {head} did not reach the stream file within 60 s of the lock's release; it holds:\n{File.ReadAllText(stream)}");
                await Task.Delay(100);
            }
        }
        finally
        {
            await server.DisposeAsync();
            logs = server.Logs.AllText;
        }

        var copy = EveryEventOnceInOrder_Verified(stream, database, dataDir);
        Assert.DoesNotContain(copy, l => l.StartsWith("{\"stream_", StringComparison.Ordinal));

        // Nothing was forwarded while the lock was held; the start said why, and the pass that read it back said so.
        Assert.DoesNotContain(EventPrefix(stopped + 1), whileHeld, StringComparison.Ordinal);
        Assert.Contains("Id: 1337", logs, StringComparison.Ordinal);
        Assert.Contains("Id: 1338", logs, StringComparison.Ordinal);
    }

    // A stream file whose append lock another writer (another server or kms command on the path, a
    // SIEM agent's fcntl lock; here a second open file description of the test's, which the
    // server's OFD lock excludes as another process's would) takes while the node runs. Before,
    // every pass with events to forward waited 10 s for the lock (AppendLock.Wait), holding its
    // checkpoint and retention that long, and reported a housekeeping failure (1304). Now the pass's
    // append is not made and the pass goes on: a checkpoint over the events committed while the
    // file is locked is signed meanwhile, nothing reaches the file, 1342 is logged once; released,
    // every event reaches it once (1343), and the copy verifies.
    [Fact]
    public async Task File_LockedByAnotherWriterWhileTheNodeRuns_ThePassGoesOn_EveryEventReachesItOnceAfter()
    {
        var dataDir = Scratch.NewPath("kms-server-");
        var stream = Scratch.NewPath("kms-siem-", ".jsonl");
        var checkpoints = Path.Combine(dataDir, "audit", "checkpoints.jsonl");
        var server = await KmsTestServer.StartAsync(null, dataDir, "dev", $"--Kms:Audit:StreamPath={stream}", "--Kms:Audit:CheckpointInterval=00:00:01");
        var database = Path.Combine(dataDir, "kms.db");
        string logs;
        try
        {
            using var developer = server.CreateClient();
            await developer.CreateKeyAsync("tenants/dev", "before-the-lock");
            await WaitForStreamAsync(stream, Head(database));

            string whileHeld;
            long lockedHead;
            using (var holder = new FileStream(stream, FileMode.Open, FileAccess.ReadWrite, FileShare.ReadWrite))
            {
                DurableFile.EndWithWholeLine(holder); // the appenders' lock, held until it is closed
                var before = File.ReadAllText(stream);
                await developer.CreateKeyAsync("tenants/dev", "while-the-file-is-locked-1");
                await developer.CreateKeyAsync("tenants/dev", "while-the-file-is-locked-2");
                lockedHead = Head(database);

                // The pass goes on while the file is locked: a checkpoint over these events is signed.
                await WaitForCheckpointAsync(checkpoints, lockedHead, TimeSpan.FromSeconds(60), () => server.Logs.AllText);
                whileHeld = File.ReadAllText(stream);
                Assert.Equal(before, whileHeld); // nothing appended past the lock
            }

            await developer.CreateKeyAsync("tenants/dev", "after-the-lock-was-released");
            await WaitForStreamAsync(stream, Head(database));
        }
        finally
        {
            await server.DisposeAsync();
            logs = server.Logs.AllText;
        }

        EveryEventOnceInOrder_Verified(stream, database, dataDir);

        // No pass waited for the lock, nor counted it as a failure; once said while it lasted, and when it ended.
        Assert.DoesNotContain("stayed locked by another writer", logs, StringComparison.Ordinal);
        Assert.DoesNotContain("Id: 1304", logs, StringComparison.Ordinal);
        Assert.Single(server.Logs.Events, l => l.Contains("Id: 1342,", StringComparison.Ordinal));
        Assert.Single(server.Logs.Events, l => l.Contains("Id: 1343,", StringComparison.Ordinal));
    }

    // This node's own checkpoints.jsonl, whose append lock another writer (a kms command on the
    // data directory, a process's fcntl lock; here a second open file description of the test's)
    // holds while the node runs. Before, each checkpoint's append waited 10 s for the lock, then
    // failed: the pass (its retention, the SIEM stream's next page) was held that long, 1304 was
    // logged, and the checkpoint, signed and stored in the database, never reached the file. Now it
    // waits in memory while the pass goes on — the SIEM stream takes the events committed meanwhile,
    // and checkpoints over them are signed — and once released every checkpoint the node signed is
    // in the file, once each, in order (1348 once, 1349 once).
    [Fact]
    public async Task CheckpointsFile_LockedByAnotherWriterWhileTheNodeRuns_ThePassGoesOn_EveryCheckpointReachesItOnceInOrderAfter()
    {
        var dataDir = Scratch.NewPath("kms-server-");
        var stream = Scratch.NewPath("kms-siem-", ".jsonl");
        var checkpoints = Path.Combine(dataDir, "audit", "checkpoints.jsonl");
        var server = await KmsTestServer.StartAsync(null, dataDir, "dev", $"--Kms:Audit:StreamPath={stream}", "--Kms:Audit:CheckpointInterval=00:00:01");
        var database = Path.Combine(dataDir, "kms.db");
        string logs;
        try
        {
            using var developer = server.CreateClient();
            await developer.CreateKeyAsync("tenants/dev", "before-the-lock");
            await WaitForCheckpointAsync(checkpoints, Head(database), TimeSpan.FromSeconds(60), () => server.Logs.AllText);

            using (var holder = new FileStream(checkpoints, FileMode.Open, FileAccess.ReadWrite, FileShare.ReadWrite))
            {
                DurableFile.EndWithWholeLine(holder); // the appenders' lock, held until it is closed
                var before = File.ReadAllText(checkpoints);
                for (var i = 0; i < 3; i++)
                {
                    // The pass goes on: the stream takes the new events, and a checkpoint over them is signed.
                    await developer.CreateKeyAsync("tenants/dev", $"while-the-file-is-locked-{i}");
                    var head = Head(database);
                    await WaitForStreamAsync(stream, head);
                    await WaitForCheckpointRowAsync(database, head, () => server.Logs.AllText);
                }

                Assert.Equal(before, File.ReadAllText(checkpoints)); // nothing appended past the lock
            }

            await developer.CreateKeyAsync("tenants/dev", "after-the-lock-was-released");
            await WaitForCheckpointAsync(checkpoints, Head(database), TimeSpan.FromSeconds(60), () => server.Logs.AllText);
        }
        finally
        {
            await server.DisposeAsync();
            logs = server.Logs.AllText;
        }

        // Every checkpoint the node signed (the database's rows: no retention here), once each, in order.
        var rows = RawSqlite.Scalar(database, "SELECT group_concat(seq, ',') FROM (SELECT seq FROM audit_checkpoints ORDER BY seq)");
        var inFile = File.ReadLines(checkpoints).Select(AuditExport.ParseCheckpoint).Select(c => c!.Sequence);
        Assert.Equal(rows, string.Join(',', inFile));
        Assert.True(rows.Split(',').Length >= 5, rows); // one before, three while locked, one after

        Assert.DoesNotContain("stayed locked by another writer", logs, StringComparison.Ordinal);
        Assert.DoesNotContain("Id: 1304", logs, StringComparison.Ordinal);
        Assert.Single(server.Logs.Events, l => l.Contains("Id: 1348,", StringComparison.Ordinal));
        Assert.Single(server.Logs.Events, l => l.Contains("Id: 1349,", StringComparison.Ordinal));
        Assert.DoesNotContain("Id: 1350", logs, StringComparison.Ordinal);
    }

    // The lock still held at the stop: the stop waits a little for it (StopCheckpointsWait), then
    // says which signed checkpoints are not in the file (1350) and goes on; head.json, written after
    // it, records a head at or after each of them (no SIEM stream behind it here), which the next
    // start checks the chain against.
    [Fact]
    public async Task CheckpointsFile_LockedByAnotherWriterAcrossTheStop_ThePendingCheckpointsAreNamed_HeadJsonCoversThem()
    {
        var dataDir = Scratch.NewPath("kms-server-");
        var checkpoints = Path.Combine(dataDir, "audit", "checkpoints.jsonl");
        var server = await KmsTestServer.StartAsync(null, dataDir, "dev", "--Kms:Audit:CheckpointInterval=00:00:01");
        var database = Path.Combine(dataDir, "kms.db");
        using var developer = server.CreateClient();
        await developer.CreateKeyAsync("tenants/dev", "before-the-lock");
        await WaitForCheckpointAsync(checkpoints, Head(database), TimeSpan.FromSeconds(60), () => server.Logs.AllText);
        string before;
        using (var holder = new FileStream(checkpoints, FileMode.Open, FileAccess.ReadWrite, FileShare.ReadWrite))
        {
            DurableFile.EndWithWholeLine(holder);
            before = File.ReadAllText(checkpoints);
            await developer.CreateKeyAsync("tenants/dev", "while-the-file-is-locked");
            await WaitForCheckpointRowAsync(database, Head(database), () => server.Logs.AllText);
            await server.DisposeAsync();
        }

        var logs = server.Logs.AllText;
        Assert.Equal(before, File.ReadAllText(checkpoints));
        var newestRow = long.Parse(RawSqlite.Scalar(database, "SELECT max(seq) FROM audit_checkpoints"), CultureInfo.InvariantCulture);
        var newestInFile = File.ReadLines(checkpoints).Select(AuditExport.ParseCheckpoint).Max(c => c!.Sequence);
        Assert.True(newestRow > newestInFile, $"{newestRow} {newestInFile}");
        Assert.Single(server.Logs.Events, l => l.Contains("Id: 1350,", StringComparison.Ordinal) && l.Contains($"through {newestRow}, are not in its checkpoint file", StringComparison.Ordinal));
        Assert.DoesNotContain("Id: 1349", logs, StringComparison.Ordinal);
        using var seen = JsonDocument.Parse(File.ReadAllText(Path.Combine(dataDir, "audit", Kms.Core.Services.SeenHead.FileName)));
        Assert.True(seen.RootElement.GetProperty("seq").GetInt64() >= newestRow, seen.RootElement.ToString());
    }

    // Waits until the database holds a checkpoint row at or after event sequence.
    private static async Task WaitForCheckpointRowAsync(string database, long sequence, Func<string> logs)
    {
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(60);
        while (long.Parse(RawSqlite.Scalar(database, "SELECT coalesce(max(seq), 0) FROM audit_checkpoints"), CultureInfo.InvariantCulture) < sequence)
        {
            Assert.True(DateTime.UtcNow < deadline, $"no checkpoint at or after event {sequence} was stored within 60 s; the server's logs:\n{logs()}");
            await Task.Delay(100);
        }
    }

    // Waits until the stream file holds event sequence; names what it holds if it does not within 60 s.
    private static async Task WaitForStreamAsync(string stream, long sequence)
    {
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(60);
        while (!(File.Exists(stream) && File.ReadLines(stream).Any(l => l.StartsWith(EventPrefix(sequence), StringComparison.Ordinal))))
        {
            Assert.True(DateTime.UtcNow < deadline, $"event {sequence} did not reach the stream file within 60 s; it holds:\n{(File.Exists(stream) ? File.ReadAllText(stream) : "(no file)")}");
            await Task.Delay(100);
        }
    }

    [Fact]
    public void Parse_WhatToBytesWrote_AndNothingElse()
    {
        var position = new AuditStreamPosition("-", "sha256:ab", new AuditHead(7, new string('c', 64)), Clean: true, [new AuditHead(6, new string('d', 64)), new AuditHead(4, new string('e', 64))]);
        var read = AuditStreamPosition.Parse(position.ToBytes(DateTimeOffset.UnixEpoch));
        Assert.Equal((position.Stream, position.KeyFingerprint, position.Last, position.Clean), (read?.Stream, read?.KeyFingerprint, read?.Last, read?.Clean));
        Assert.Equal(position.Earlier, read?.Earlier);
        Assert.Null(AuditStreamPosition.Parse("{\"v\":1}"u8));
        Assert.Null(AuditStreamPosition.Parse("not json"u8));

        // A record written before the earlier events were kept is taken, with none.
        var older = AuditStreamPosition.Parse(Encoding.UTF8.GetBytes($"{{\"v\":1,\"stream\":\"-\",\"key\":\"sha256:ab\",\"seq\":7,\"hash\":\"{new string('c', 64)}\",\"clean\":true,\"time\":\"2026-01-01T00:00:00Z\"}}"));
        Assert.Equal((7L, true, 0), (older?.Last.Sequence, older?.Clean, older?.Earlier.Count));

        // Earlier events that ToBytes does not write (not newest first below the record's event,
        // too many, a hash that is no hex) are an edit: no record.
        AuditHead[][] edited =
        [
            [new AuditHead(4, new string('e', 64)), new AuditHead(6, new string('d', 64))],
            [new AuditHead(7, new string('d', 64))],
            [new AuditHead(6, new string('x', 64))],
            [.. Enumerable.Range(0, StreamAncestors.MaxPoints + 1).Select(i => new AuditHead(1000 - i, new string('d', 64)))],
        ];
        foreach (var earlier in edited)
        {
            var last = new AuditHead(earlier.Length > 2 ? 1001 : 7, new string('c', 64));
            Assert.Null(AuditStreamPosition.Parse((position with { Last = last, Earlier = earlier }).ToBytes(DateTimeOffset.UnixEpoch)));
        }
    }

    // The events a stream was sent, thinned as they are sent: the one before the newest, then ones
    // about 2, 4, 8, … back, and the oldest sent, at most 63 whatever the stream's length; past a restart (an event sent
    // that is not after the newest kept), none of the chain the database left.
    [Fact]
    public void StreamAncestors_DenseNearTheNewest_ExponentiallySparserBack_Bounded_NoneOfAReplacedChain()
    {
        var ancestors = new StreamAncestors();
        const long Sent = 100_000;
        for (long seq = 1; seq <= Sent; seq++)
        {
            ancestors.Sent(Point(seq, 'a'));
        }

        var kept = ancestors.Before(Point(Sent, 'a'));
        Assert.InRange(kept.Count, 16, StreamAncestors.MaxPoints);
        Assert.Equal(Sent - 1, kept[0].Sequence);
        Assert.Equal(1, kept[^1].Sequence); // the oldest sent
        for (var i = 1; i < kept.Count - 1; i++)
        {
            // Newest first, and each gap about the distance back to the newest at most.
            Assert.True(kept[i].Sequence < kept[i - 1].Sequence);
            Assert.True(kept[i - 1].Sequence - kept[i].Sequence <= (2 * (Sent - kept[i - 1].Sequence)) + 2, $"{kept[i].Sequence} after {kept[i - 1].Sequence}");
        }

        // Restarted after 60,000 (a rollback): the old chain's points past it go; the new chain's come.
        ancestors.Sent(Point(60_000, 'a'));
        for (long seq = 60_001; seq <= 60_010; seq++)
        {
            ancestors.Sent(Point(seq, 'b'));
        }

        var after = ancestors.Before(Point(60_010, 'b'));
        Assert.DoesNotContain(after, p => p.Sequence > 60_000 && p.Hash[0] == 'a');
        Assert.Equal([60_009, 60_008], after.Take(2).Select(p => p.Sequence));
        Assert.Contains(after, p => p.Sequence <= 60_000);
        Assert.InRange(after.Count, 1, StreamAncestors.MaxPoints);

        static AuditHead Point(long seq, char chain) => new(seq, chain + seq.ToString("x63", CultureInfo.InvariantCulture)[^63..]);
    }

    // A FIFO stream over a rollback while the node was stopped: events through M streamed, the database put back to a copy taken at F < M, the chain going on from F
    // with other events; the next start restarts the stream after the newest event of its record
    // the chain holds (at or before F): a stream_restart line replacing M (event 1330, 1323), then
    // every event of the new chain after it, each once, and the copy verifies as a restart. Before,
    // the record was refused (1327) and the stream began at the chain's head with no restart line:
    // the new chain's events F+1.. never reached the reader, and nothing in the stream said so.
    [Fact]
    public async Task Fifo_DatabaseRolledBackWhileTheNodeWasStopped_TheStreamRestartsAtTheFork_EveryNewEventOnce_TheCopyVerifiesAsARestart()
    {
        var dataDir = Scratch.NewPath("kms-server-");
        var fifo = Scratch.NewPath("kms-siem-", ".fifo");
        MakeFifo(fifo);
        using var reader = FifoReader.Start(fifo);
        string[] args = [$"--Kms:Audit:StreamPath={fifo}"];
        var database = Path.Combine(dataDir, "kms.db");
        var (token, fork, saved, replaced, replacedHash) = await StreamedPastACopyAsync(dataDir, args, reader);
        var recorded = AuditStreamPosition.Read(Path.Combine(dataDir, "audit", AuditStreamPosition.FileName)).Position;
        Assert.True(recorded?.Earlier.Count > 2, $"record: {File.ReadAllText(Path.Combine(dataDir, "audit", AuditStreamPosition.FileName))}");

        // The database put back to the copy (a kms.db copied back); another writer goes on from F.
        CopyDatabase(saved, dataDir);
        Assert.Equal(fork, Head(database));
        await AppendWhileStoppedAsync(database, 2);
        var server = await KmsTestServer.StartAsync(token, dataDir, "dev", [.. args, "--Kms:Audit:AcceptRollback=true"]);
        string logs;
        try
        {
            using var developer = server.CreateClient();
            await developer.CreateKeyAsync("tenants/dev", "after-the-rollback");
        }
        finally
        {
            await server.DisposeAsync();
            logs = server.Logs.AllText;
        }

        var head = Head(database);
        var headHash = RawSqlite.Scalar(database, $"SELECT hash FROM audit_events WHERE seq = {head}");
        await reader.WaitUntilAsync(lines => lines.Any(l => l.StartsWith(EventPrefix(head), StringComparison.Ordinal) && l.Contains(headHash, StringComparison.Ordinal)), $"event {head} of the new chain");
        var copy = reader.Lines;
        var restartLine = Assert.Single(copy, l => l.StartsWith("{\"stream_", StringComparison.Ordinal));
        var restart = AuditStreamRestartOf(restartLine);
        Assert.Equal((replaced, replacedHash), (restart.Replaced.Sequence, restart.Replaced.Hash));
        Assert.InRange(restart.After.Sequence, 1, fork);
        Assert.Contains($"restarts after event {restart.After.Sequence}: its position record", logs, StringComparison.Ordinal); // 1330, at start
        Assert.Contains($"names event {replaced} (\"{replacedHash}\"), which the database's audit chain does not hold", logs, StringComparison.Ordinal);
        Assert.Contains($"the SIEM stream restarts after event {restart.After.Sequence}: the database's audit chain no longer holds event {replaced}", logs, StringComparison.Ordinal); // 1323, at the line
        Assert.DoesNotContain("is not taken", logs, StringComparison.Ordinal); // no 1327

        // Before the line, the first chain through M; after it, every event after F' once, in order.
        var at = copy.IndexOf(restartLine);
        var before = copy.Take(at).Where(l => l.Length > 0).Select(Sequence).ToList();
        var afterLine = copy.Skip(at + 1).Where(l => l.Length > 0).Select(Sequence).ToList();
        Assert.Equal(Enumerable.Range(1, (int)replaced).Select(i => (long)i), before);
        Assert.Equal(Enumerable.Range((int)restart.After.Sequence + 1, (int)(head - restart.After.Sequence)).Select(i => (long)i), afterLine);

        var result = AuditVerifier.Verify(new StringReader(string.Join('\n', copy) + "\n"), PublicKey(dataDir));
        Assert.True(result.Valid, result.Problem);
        Assert.Equal(head, result.Events);
        var restarts = Assert.IsType<AuditStreamRestarts>(result.StreamRestarts);
        Assert.Equal((restart.After.Sequence, replaced), (Assert.Single(restarts.Listed).AfterSequence, restarts.Listed[0].ReplacedSequence));
    }

    // A FIFO stream resumed at start from its position record (at R, listing earlier events), the
    // database then put back behind R under the running node (events after F = R - 2 deleted) and
    // going on with other events: the stream restarts after the newest event the record lists at
    // or before F, the record's events being the running node's restart points. Before, they began
    // with R alone: none held, and the stream restarted after 0, sent the whole chain again
    // ("Expected: AuditHead { Sequence = R - 2 or R - 3, … } Actual: AuditHead { Sequence = 0, … }").
    [Fact]
    public async Task Fifo_ResumedFromItsRecord_RolledBackUnderTheRunningNodeBehindTheRecord_RestartsAtTheRecordsNewestHeldEvent_NotTheChainsStart()
    {
        var dataDir = Scratch.NewPath("kms-server-");
        var fifo = Scratch.NewPath("kms-siem-", ".fifo");
        MakeFifo(fifo);
        using var reader = FifoReader.Start(fifo);
        string[] args = [$"--Kms:Audit:StreamPath={fifo}"];
        var database = Path.Combine(dataDir, "kms.db");
        var server = await KmsTestServer.StartAsync(null, dataDir, "dev", args);
        var token = server.Token;
        try
        {
            using var developer = server.CreateClient();
            for (var i = 0; i < 6; i++)
            {
                await developer.CreateKeyAsync("tenants/dev", $"first-run-{i}");
            }
        }
        finally
        {
            await server.DisposeAsync();
        }

        var record = AuditStreamPosition.Read(Path.Combine(dataDir, "audit", AuditStreamPosition.FileName)).Position;
        Assert.True(record is { Clean: true, Last.Sequence: >= 5 } && record.Earlier.Count > 2, $"record: {File.ReadAllText(Path.Combine(dataDir, "audit", AuditStreamPosition.FileName))}");
        var fork = record.Last.Sequence - 2;
        var expected = record.Earlier.First(p => p.Sequence <= fork);

        server = await KmsTestServer.StartAsync(token, dataDir, "dev", args);
        string logs;
        try
        {
            using var developer = server.CreateClient();
            await developer.CreateKeyAsync("tenants/dev", "second-run");
            var sent = Head(database);
            await reader.WaitForEventAsync(sent);

            // Put back behind the record under the running node (a restore while it runs), then other events.
            RawSqlite.Execute(database, "DELETE FROM audit_events WHERE seq > $s", ("$s", fork));
            RawSqlite.Execute(database, "DELETE FROM audit_checkpoints WHERE seq > $s", ("$s", fork));
            await developer.CreateKeyAsync("tenants/dev", "after-the-rollback");
            await reader.WaitUntilAsync(lines => lines.Any(l => l.StartsWith("{\"stream_restart\"", StringComparison.Ordinal)), "a stream_restart line");
        }
        finally
        {
            await server.DisposeAsync();
            logs = server.Logs.AllText;
        }

        var copy = reader.Lines;
        var restart = AuditStreamRestartOf(Assert.Single(copy, l => l.StartsWith("{\"stream_", StringComparison.Ordinal)));
        Assert.Equal(expected, restart.After);
        Assert.Contains($"the SIEM stream \"{Path.GetFullPath(fifo)}\" resumes after event {record.Last.Sequence}", logs, StringComparison.Ordinal); // 1326: taken
        Assert.Contains($"the SIEM stream restarts after event {expected.Sequence}: the database's audit chain no longer holds event {restart.Replaced.Sequence}", logs, StringComparison.Ordinal); // 1323

        // After the line, every event of the new chain after it, once, in order. Waited for by its hash:
        // the old chain's event of the same sequence was read before the rollback (waiting for the
        // sequence alone returned at once, and under load the new chain's line had not come yet:
        // "Expected [5] Actual []").
        var head = Head(database);
        var headHash = RawSqlite.Scalar(database, $"SELECT hash FROM audit_events WHERE seq = {head}");
        await reader.WaitUntilAsync(lines => lines.Any(l => l.StartsWith(EventPrefix(head), StringComparison.Ordinal) && l.Contains(headHash, StringComparison.Ordinal)), $"event {head} of the new chain");
        copy = reader.Lines;
        var afterLine = copy.Skip(copy.FindIndex(l => l.StartsWith("{\"stream_", StringComparison.Ordinal)) + 1).Where(l => l.Length > 0).Select(Sequence).ToList();
        Assert.Equal(Enumerable.Range((int)expected.Sequence + 1, (int)(head - expected.Sequence)).Select(i => (long)i), afterLine);
    }

    // As the rollback-at-start test above, and retention (here a database writer deleting the
    // events through F + 1, while the node is stopped) cut past every event the record lists that
    // the new chain could hold: the start restarts the stream as a running node's restart does when
    // its search reaches the cut, after the last event cut (F + 1, 1339), a stream_restart line
    // replacing M, then every event retained. Before, the record was not taken (1327) and the
    // stream began at the head, with no restart line: the new chain's events never reached it
    // ("Assert.Single() Failure: The collection did not contain any matching items").
    [Fact]
    public async Task Fifo_RolledBackWhileStopped_RetentionCutPastTheRecordsEventsTheChainHolds_RestartsAfterTheLastEventCut_AsARunningNode()
    {
        var dataDir = Scratch.NewPath("kms-server-");
        var fifo = Scratch.NewPath("kms-siem-", ".fifo");
        MakeFifo(fifo);
        using var reader = FifoReader.Start(fifo);
        string[] args = [$"--Kms:Audit:StreamPath={fifo}"];
        var database = Path.Combine(dataDir, "kms.db");
        var (token, fork, saved, replaced, replacedHash) = await StreamedPastACopyAsync(dataDir, args, reader);

        // The database put back to the copy; another writer goes on from F; the events through F + 1 cut.
        CopyDatabase(saved, dataDir);
        await AppendWhileStoppedAsync(database, 3);
        var cut = new AuditHead(fork + 1, RawSqlite.Scalar(database, $"SELECT hash FROM audit_events WHERE seq = {fork + 1}"));
        RawSqlite.Execute(database, "DELETE FROM audit_events WHERE seq <= $s", ("$s", cut.Sequence));
        var server = await KmsTestServer.StartAsync(token, dataDir, "dev", [.. args, "--Kms:Audit:AcceptRollback=true"]);
        string logs;
        try
        {
            using var developer = server.CreateClient();
            await developer.CreateKeyAsync("tenants/dev", "after-the-cut");
        }
        finally
        {
            await server.DisposeAsync();
            logs = server.Logs.AllText;
        }

        var head = Head(database);
        var headHash = RawSqlite.Scalar(database, $"SELECT hash FROM audit_events WHERE seq = {head}");
        await reader.WaitUntilAsync(lines => lines.Any(l => l.StartsWith(EventPrefix(head), StringComparison.Ordinal) && l.Contains(headHash, StringComparison.Ordinal)), $"event {head} of the new chain");
        var copy = reader.Lines;
        var restartLine = Assert.Single(copy, l => l.StartsWith("{\"stream_", StringComparison.Ordinal));
        Assert.Equal(new StreamRestart(cut, new AuditHead(replaced, replacedHash)), AuditStreamRestartOf(restartLine));
        Assert.Contains($"restarts after event {cut.Sequence}, the last event audit retention cut: its position record", logs, StringComparison.Ordinal); // 1339, at start
        Assert.Contains($"the SIEM stream restarts after event {cut.Sequence}: the database's audit chain no longer holds event {replaced}", logs, StringComparison.Ordinal); // 1323, at the line
        Assert.DoesNotContain("is not taken", logs, StringComparison.Ordinal); // no 1327

        // Before the line, the first chain through M; after it, every event retained, once, in order.
        var at = copy.IndexOf(restartLine);
        Assert.Equal(Enumerable.Range(1, (int)replaced).Select(i => (long)i), copy.Take(at).Where(l => l.Length > 0).Select(Sequence));
        Assert.Equal(Enumerable.Range((int)cut.Sequence + 1, (int)(head - cut.Sequence)).Select(i => (long)i), copy.Skip(at + 1).Where(l => l.Length > 0).Select(Sequence));
    }

    // Two runs of a node streaming to a FIFO: the first writes events through F and stops, a copy of
    // its database is taken (F), the second writes four more through M, all read by the reader. The
    // rollback tests put the copy back and go on from there.
    private static async Task<(TestToken Token, long Fork, string Saved, long Replaced, string ReplacedHash)> StreamedPastACopyAsync(string dataDir, string[] args, FifoReader reader)
    {
        var database = Path.Combine(dataDir, "kms.db");
        var server = await KmsTestServer.StartAsync(null, dataDir, "dev", args);
        var token = server.Token;
        try
        {
            using var developer = server.CreateClient();
            await developer.CreateKeyAsync("tenants/dev", "before-the-fork");
        }
        finally
        {
            await server.DisposeAsync();
        }

        SqliteStore.ReleasePooledConnections();
        var fork = Head(database);
        var saved = Scratch.NewPath("kms-db-copy-");
        CopyDatabase(dataDir, saved);

        server = await KmsTestServer.StartAsync(token, dataDir, "dev", args);
        try
        {
            using var developer = server.CreateClient();
            for (var i = 0; i < 4; i++)
            {
                await developer.CreateKeyAsync("tenants/dev", $"replaced-{i}");
            }
        }
        finally
        {
            await server.DisposeAsync();
        }

        SqliteStore.ReleasePooledConnections();
        var replaced = Head(database);
        var replacedHash = RawSqlite.Scalar(database, $"SELECT hash FROM audit_events WHERE seq = {replaced}");
        await reader.WaitForEventAsync(replaced);
        return (token, fork, saved, replaced, replacedHash);
    }

    private static StreamRestart AuditStreamRestartOf(string line)
    {
        using var document = JsonDocument.Parse(line);
        var restart = document.RootElement.GetProperty("stream_restart");
        return new StreamRestart(PointOf(restart.GetProperty("after")), PointOf(restart.GetProperty("replaced")));

        static AuditHead PointOf(JsonElement point) => new(point.GetProperty("seq").GetInt64(), point.GetProperty("hash").GetString()!);
    }

    // The database's files (kms.db and its WAL, if any), the server stopped: copied whole, those of the target not in the source removed.
    private static void CopyDatabase(string fromDirectory, string toDirectory)
    {
        Directory.CreateDirectory(toDirectory);
        foreach (var name in new[] { "kms.db", "kms.db-wal", "kms.db-shm" })
        {
            var (from, to) = (Path.Combine(fromDirectory, name), Path.Combine(toDirectory, name));
            if (File.Exists(from))
            {
                File.Copy(from, to, overwrite: true);
            }
            else
            {
                File.Delete(to);
            }
        }
    }

    // A token holding a domain key (production mode: the server does not create one) and an empty
    // data directory, for the tests that run the real binary with its stdout taken.
    private static (TestToken Token, string DataDir) ProductionNode(string prefix)
    {
        var token = SoftHsm.CreateToken();
        var domainKey = RandomNumberGenerator.GetBytes(32);
        using (var session = HsmCeremonySession.Open(token.Options(devMode: false), Encoding.UTF8.GetBytes(token.UserPin)))
        {
            session.ImportDomainKey(domainKey, "kms-domain-key", DomainKeyId);
        }

        CryptographicOperations.ZeroMemory(domainKey);
        return (token, Directory.CreateDirectory(Scratch.NewPath(prefix)).FullName);
    }

    private static string EventPrefix(long sequence) => string.Create(CultureInfo.InvariantCulture, $"{{\"event\":{{\"v\":1,\"seq\":{sequence},");

    // The stream's lines among the process's output (its logs are JSON lines too, on the same stdout).
    private static IEnumerable<string> StreamLines(string output) =>
        output.Split('\n').Where(l => l.StartsWith("{\"event\":", StringComparison.Ordinal) || l.StartsWith("{\"stream_", StringComparison.Ordinal));

    private static long Sequence(string line)
    {
        using var document = JsonDocument.Parse(line);
        return document.RootElement.GetProperty("event").GetProperty("seq").GetInt64();
    }

    // The stream file holds every event of the database's chain once, in order, and verifies with the
    // audit key; its lines are returned.
    private static string[] EveryEventOnceInOrder_Verified(string stream, string database, string dataDir)
    {
        var copy = File.ReadAllLines(stream);
        var sequences = copy.Where(l => l.StartsWith("{\"event\":", StringComparison.Ordinal)).Select(Sequence).ToList();
        Assert.Equal(Enumerable.Range(1, (int)Head(database)).Select(i => (long)i), sequences);
        var result = AuditVerifier.Verify(new StringReader(string.Join('\n', copy) + "\n"), PublicKey(dataDir));
        Assert.True(result.Valid, result.Problem);
        return copy;
    }

    private static long Head(string database) =>
        long.Parse(RawSqlite.Scalar(database, "SELECT coalesce(max(seq), 0) FROM audit_events"), CultureInfo.InvariantCulture);

    private static byte[] PublicKey(string dataDir)
    {
        using var key = ECDsa.Create();
        key.ImportFromPem(File.ReadAllText(Path.Combine(dataDir, "audit", "signing-key.pem")));
        return key.ExportSubjectPublicKeyInfo();
    }

    // Another writer of the database (a node that forwards to no stream), the server stopped.
    private static async Task AppendWhileStoppedAsync(string database, int count)
    {
        await using (var store = await SqliteStore.OpenAsync(new SqliteOptions { DatabasePath = database }, default))
        {
            await store.AppendAuditAsync([.. Enumerable.Range(0, count).Select(i => new AuditEntry
            {
                Time = DateTimeOffset.UtcNow,
                RequestId = Guid.NewGuid().ToString("N"),
                Principal = "token:other-node",
                Operation = "test/OtherNode",
                Resource = "event",
                Outcome = "OK",
            })], default);
        }

        SqliteStore.ReleasePooledConnections();
    }

    private static void MakeFifo(string path)
    {
        using var mkfifo = Process.Start("mkfifo", ["-m", "600", path]) ?? throw new InvalidOperationException("mkfifo did not start");
        mkfifo.WaitForExit();
        Assert.Equal(0, mkfifo.ExitCode);
    }

    // A SIEM agent: a process that reads the FIFO for as long as the test runs. It holds the FIFO
    // open for writing too (cat's stdin opened read-write), so the server's closing it between
    // appends is no end of file; what it reads arrives here a line at a time.
    private sealed class FifoReader : IDisposable
    {
        private readonly Process _process;
        private readonly List<string> _lines = [];
        private readonly SemaphoreSlim _arrived = new(0);

        private FifoReader(Process process)
        {
            _process = process;
            process.OutputDataReceived += (_, e) =>
            {
                if (e.Data is { } line)
                {
                    lock (_lines)
                    {
                        _lines.Add(line);
                    }

                    _arrived.Release();
                }
            };
            process.BeginOutputReadLine();
        }

        public List<string> Lines
        {
            get
            {
                lock (_lines)
                {
                    return [.. _lines];
                }
            }
        }

        public static FifoReader Start(string fifo) =>
            new(Process.Start(new ProcessStartInfo("sh", ["-c", "exec cat 0<>\"$1\"", "sh", fifo]) { RedirectStandardOutput = true })
                ?? throw new InvalidOperationException("sh did not start"));

        // Until the event with this sequence was read (a line at a time, each waking this up).
        public Task WaitForEventAsync(long sequence)
        {
            var prefix = EventPrefix(sequence);
            return WaitUntilAsync(lines => lines.Any(l => l.StartsWith(prefix, StringComparison.Ordinal)), $"event {sequence}");
        }

        // Until what was read satisfies the condition (a line at a time, each waking this up).
        public async Task WaitUntilAsync(Func<List<string>, bool> read, string what)
        {
            using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(60));
            while (!read(Lines))
            {
                try
                {
                    await _arrived.WaitAsync(timeout.Token);
                }
                catch (OperationCanceledException)
                {
                    Assert.Fail($"the FIFO's reader did not get {what} within 60 s; it read:\n{string.Join('\n', Lines)}");
                }
            }
        }

        public void Dispose()
        {
            _process.Kill();
            _process.WaitForExit();
            _process.Dispose();
            _arrived.Dispose();
        }
    }
}
