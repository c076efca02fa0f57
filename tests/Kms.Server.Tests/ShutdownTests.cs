using System.Net;
using System.Net.Sockets;
using Kms.Contracts.V1;
using Kms.Server.Hosting;
using Kms.Testing;
using Microsoft.Extensions.DependencyInjection;

namespace Kms.Server.Tests;

/// <summary>
/// A stop (SIGTERM, the host's StopAsync) while a connection holds a call open: the connection
/// drain is bounded (<c>Kms:Transport:ShutdownDrainTimeout</c>), and the steps that come last
/// still run.
/// </summary>
public sealed class ShutdownTests
{
    private const string HealthCheck = "/grpc.health.v1.Health/Check";

    [Fact]
    public async Task AStreamWhoseAnswerCannotBeWritten_StopAbortsItAfterTheDrain_UsageCountsAndAuditWrittenLast()
    {
        var server = await KmsTestServer.StartAsync(null, null, "dev", "--Kms:Transport:ShutdownDrainTimeout=00:00:02", "--Lifecycle:JobInterval=01:00:00");
        var version = await DecryptOnceAsync(server);

        // Anyone who can reach the port: a connection that lets no answer be written (its
        // initial stream window 0) and a call on it, which the server has begun once it answers
        // the PING sent after it (frames are read in order; a PING's answer is not flow-controlled).
        await using var holder = await RawHttp2.ConnectAsync(server.Address, server.CaCertificatePath, preface: false);
        await holder.SendPrefaceAsync([0, 4, 0, 0, 0, 0]);
        await holder.WriteFrameAsync(RawHttp2.Headers, RawHttp2.EndHeaders, 1, RawHttp2.GrpcHeaderBlock(HealthCheck, bearerToken: null, server.Address));
        await holder.WriteFrameAsync(RawHttp2.Data, RawHttp2.EndStream, 1, RawHttp2.GrpcMessageHeader(0));
        await holder.WriteFrameAsync(RawHttp2.Ping, 0, 0, new byte[8]);
        using (var wait = new CancellationTokenSource(TimeSpan.FromSeconds(60)))
        {
            while (await holder.ReadFrameAsync(wait.Token) is { } frame && !(frame.Type == RawHttp2.Ping && (frame.Flags & RawHttp2.Ack) != 0))
            {
                Assert.False(frame.Stream == 1 && (frame.Flags & RawHttp2.EndStream) != 0, "the health call was answered through a window of 0");
            }
        }

        // Before: Kestrel waited the host's whole stop time for that stream, and every step after
        // it ran on a cancelled token — the usage counts unwritten, the final checkpoint not
        // signed — and the host's stop threw TaskCanceledException.
        await server.DisposeAsync();

        Assert.Contains("LogDrainCut", server.Logs.AllText, StringComparison.Ordinal);
        Assert.Contains("Listener=\"gRPC\"", server.Logs.AllText, StringComparison.Ordinal);
        await AssertLastStepsRanAsync(server, version);
    }

    [Fact]
    public async Task AScrapeWhoseHeadersNeverEnd_StopAbortsItWithinTheDrain_UsageCountsAndAuditWrittenLast()
    {
        var server = await KmsTestServer.StartAsync(null, null, "dev", "--Kms:Transport:ShutdownDrainTimeout=00:00:02", "--Lifecycle:JobInterval=01:00:00", "--Kms:MetricsUrl=http://127.0.0.1:0");
        var version = await DecryptOnceAsync(server);

        // Anyone who can reach the metrics port (plain HTTP/1.1, no credential): a request, and in
        // the same write the beginning of a second one whose headers never end. Once the first is
        // answered, the server has read the second's beginning: Kestrel waits its 30 s headers
        // timeout for the rest, also when it stops (an idle connection it closes at once).
        var metrics = server.MetricsUrl!;
        using var holder = new System.Net.Sockets.TcpClient();
        await holder.ConnectAsync(metrics.Host, metrics.Port);
        var stream = holder.GetStream();
        await stream.WriteAsync(System.Text.Encoding.ASCII.GetBytes($"GET /none HTTP/1.1\r\nHost: {metrics.Authority}\r\n\r\nGET /metrics HTTP/1.1\r\nHost: {metrics.Authority}\r\nAccept: "));
        var answer = new System.Text.StringBuilder();
        var buffer = new byte[1024];
        while (!answer.ToString().Contains("\r\n\r\n", StringComparison.Ordinal))
        {
            var read = await stream.ReadAsync(buffer);
            Assert.NotEqual(0, read);
            answer.Append(System.Text.Encoding.ASCII.GetString(buffer, 0, read));
        }

        Assert.StartsWith("HTTP/1.1 404", answer.ToString(), StringComparison.Ordinal);

        // Before: the gRPC listener drained at once, the metrics listener (its own Kestrel, stopped
        // after it) waited for that request until the host's stop time ran out, and every step
        // after it ran on a cancelled token.
        await server.DisposeAsync();

        await AssertLastStepsRanAsync(server, version);
        Assert.Contains("LogDrainCut", server.Logs.AllText, StringComparison.Ordinal);
        Assert.Contains("Listener=\"metrics\"", server.Logs.AllText, StringComparison.Ordinal);
    }

    [Fact]
    public async Task HostStopTime_UnsetOrSetLarger_TheDrainPlus10sOrTheOperators()
    {
        // Unset: the drain and the 10 s of last steps (the default whole stop, 30 s).
        await using (var unset = await KmsTestServer.StartAsync())
        {
            Assert.Equal(TimeSpan.FromSeconds(30), StopTime(unset));
        }

        // Set (the host setting, on the command line or as DOTNET_SHUTDOWNTIMEOUTSECONDS) to more:
        // the operator's, the last steps getting the rest. Before, the drain's 30 s replaced it.
        await using var larger = await KmsTestServer.StartAsync(null, null, "dev", "--shutdownTimeoutSeconds=45");
        Assert.Equal(TimeSpan.FromSeconds(45), StopTime(larger));
    }

    [Fact]
    public async Task HostStopTime_SetShorterThanTheDrainPlus10s_OrNotWholeSeconds_StartRefusedNamingBoth()
    {
        // Before, the server started with the drain's 30 s in place of the operator's 25.
        var (shorter, _) = await KmsTestServer.StartRefusedAsync(SoftHsm.CreateToken(), Scratch.NewPath("kms-server-"), "--shutdownTimeoutSeconds=25");
        Assert.IsType<InvalidOperationException>(shorter);
        Assert.Contains("shutdownTimeoutSeconds, 25 s", shorter.Message, StringComparison.Ordinal);
        Assert.Contains("Kms:Transport:ShutdownDrainTimeout (20 s)", shorter.Message, StringComparison.Ordinal);

        // .NET ignores a value that is not a whole number of seconds; so would the server have.
        var (notSeconds, _) = await KmsTestServer.StartRefusedAsync(SoftHsm.CreateToken(), Scratch.NewPath("kms-server-"), "--shutdownTimeoutSeconds=45s");
        Assert.Contains("shutdownTimeoutSeconds (45s) must be a whole number of seconds", notSeconds.Message, StringComparison.Ordinal);

        // Set in code after the server's own (HostOptions configured later wins): checked all the same.
        var inCode = await Assert.ThrowsAsync<InvalidOperationException>(() => KmsTestServer.StartAsync(
            null, null, "dev", services => services.Configure<Microsoft.Extensions.Hosting.HostOptions>(o => o.ShutdownTimeout = TimeSpan.FromSeconds(5)), "--Kms:Transport:ShutdownDrainTimeout=00:00:02"));
        Assert.Contains("(shutdownTimeoutSeconds, 5 s) is less than Kms:Transport:ShutdownDrainTimeout (2 s)", inCode.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task AStopAskedForWhileTheServerStarts_StartEndsFalse_Logged1320_NoException()
    {
        // A hosted service whose start takes as long as it likes (the listeners bound, a worker's
        // first pass against a slow HSM or database), registered with the server's own.
        var logs = new LogCapture();
        var slow = new SlowStart();
        var app = await KmsServerApp.BuildAsync(
            KmsTestServer.DevArgs(SoftHsm.CreateToken(), Scratch.NewPath("kms-server-"), "dev"),
            logging => logging.WriteTo.Sink(logs),
            services => services.AddHostedService(_ => slow));
        await using (app)
        {
            var start = KmsServerApp.StartUnlessStoppedAsync(app);
            await slow.Entered.Task.WaitAsync(TimeSpan.FromSeconds(60));

            // What the SIGTERM handler (ConsoleLifetime) does. Before, the start threw
            // OperationCanceledException, which Program let escape unhandled.
            app.Lifetime.StopApplication();
            Assert.False(await start.WaitAsync(TimeSpan.FromSeconds(60)));
        }

        Assert.Contains("StoppedWhileStarting", logs.AllText, StringComparison.Ordinal);
    }

    [Fact]
    public async Task ASigtermWhileTheServerOpensItsStore_BuildCancelled_Logged1320_ExitsZero()
    {
        // A PostgreSQL address that accepts connections and never answers: the real server process
        // hangs in the store's open (Npgsql's connect, its timeout set far past the test's length).
        using var silentDatabase = new TcpListener(IPAddress.Loopback, 0);
        silentDatabase.Start();
        var port = ((IPEndPoint)silentDatabase.LocalEndpoint).Port;
        var token = SoftHsm.CreateToken();
        var dataDir = Directory.CreateDirectory(Scratch.NewPath("kms-node-")).FullName;
        await using var server = ServerProcess.Launch(dataDir, SoftHsm.ConfigPath, token.Label, token.PinFile, "dk-never-reached",
            "--Storage:Provider=postgres",
            $"--Storage:Postgres:ConnectionString=Host=127.0.0.1;Port={port};Database=kms;Username=kms",
            "--Storage:Postgres:CommandTimeout=00:10:00");

        // The event waited for: the server's connection to the database, made as its build opens the
        // store, and its first message (8 bytes, the SSL request), whose answer Npgsql then waits
        // for without observing a cancellation token.
        using var connection = await silentDatabase.AcceptTcpClientAsync().WaitAsync(TimeSpan.FromSeconds(120));
        await connection.GetStream().ReadExactlyAsync(new byte[8]).AsTask().WaitAsync(TimeSpan.FromSeconds(120));

        // Before: no handler was set until the host's start, and the runtime's default ended the
        // process at once (exit 143), with no line written and nothing closed. With the handler but
        // the token only passed down, Npgsql went on waiting (for CommandTimeout, 10 minutes here).
        var exitCode = await server.TerminateAsync(TimeSpan.FromSeconds(60));
        Assert.True(exitCode == 0, $"exit code {exitCode}, 0 expected:\n{server.Output}");
        Assert.Contains("StoppedWhileStarting", server.Output, StringComparison.Ordinal);
        Assert.DoesNotContain("cannot start", server.Output, StringComparison.Ordinal);
    }

    [Fact]
    public async Task ASigtermWhileTheStartWaitsForSqlitesWriteLock_BuildCancelled_Logged1320_ExitsZero()
    {
        // A SQLite database another process holds the write lock of (a kms command, sqlite3 at a
        // prompt), the server's busy timeout 10 minutes: its start waits for the lock in its first write.
        var token = SoftHsm.CreateToken();
        var dataDir = Directory.CreateDirectory(Scratch.NewPath("kms-node-")).FullName;
        var database = Path.Combine(dataDir, "kms.db");
        await (await Kms.Storage.Sqlite.SqliteStore.OpenAsync(new Kms.Storage.Sqlite.SqliteOptions { DatabasePath = database }, default)).DisposeAsync();
        Kms.Storage.Sqlite.SqliteStore.ReleasePooledConnections();
        await using var holder = new Microsoft.Data.Sqlite.SqliteConnection($"Data Source={database};Pooling=False");
        await holder.OpenAsync();
        await using (var begin = holder.CreateCommand())
        {
            begin.CommandText = "BEGIN EXCLUSIVE";
            await begin.ExecuteNonQueryAsync();
        }

        await using var server = ServerProcess.Launch(dataDir, SoftHsm.ConfigPath, token.Label, token.PinFile, "dk-never-reached",
            "--Storage:Sqlite:BusyTimeout=00:10:00");

        // Once the server has the database open (its store's first connection), and a moment for it
        // to reach the write (its schema check, a BEGIN IMMEDIATE), where it waits for the lock.
        using (var wait = new CancellationTokenSource(TimeSpan.FromSeconds(120)))
        {
            while (!HasOpen(server.ProcessId, database))
            {
                await Task.Delay(50, wait.Token);
            }
        }

        await Task.Delay(TimeSpan.FromSeconds(2));

        // Before: SQLite's busy handler waited out the 10 minutes (no cancellation ends it), and the
        // stop with it: the process had not exited 60 s after the SIGTERM.
        var exitCode = await server.TerminateAsync(TimeSpan.FromSeconds(60));
        Assert.True(exitCode == 0, $"exit code {exitCode}, 0 expected:\n{server.Output}");
        Assert.Contains("StoppedWhileStarting", server.Output, StringComparison.Ordinal);
        Assert.DoesNotContain("cannot start", server.Output, StringComparison.Ordinal);
    }

    [Fact]
    public async Task AStopWhileTheAuditWriterWaitsForSqlitesWriteLock_TheWaitEnds_TheCallIsNotAcknowledged_Logged1301()
    {
        // Another process holds the SQLite write lock while the node runs (a kms command, sqlite3
        // at a prompt), the busy timeout 10 minutes: the group commit of an Encrypt's event waits
        // for it in its BEGIN IMMEDIATE, the call unanswered (never OK before its event is durable).
        // Before, that wait was one busy wait in SQLite, which no cancellation ends: the stop did
        // not end the commit loop, the call's event was neither written nor given up (no 1301)
        // until the lock was released, and the writer's disposal waited 10 s on it.
        var server = await KmsTestServer.StartAsync(null, null, "dev", "--Storage:Sqlite:BusyTimeout=00:10:00", "--Kms:Transport:ShutdownDrainTimeout=00:00:02", "--Lifecycle:JobInterval=01:00:00");
        await using var holder = new Microsoft.Data.Sqlite.SqliteConnection($"Data Source={server.DatabasePath};Pooling=False");
        using var client = server.CreateClient();
        Task encrypt;
        try
        {
            var key = await client.CreateKeyAsync("tenants/dev", "held");
            await holder.OpenAsync();
            await using (var begin = holder.CreateCommand())
            {
                begin.CommandText = "BEGIN EXCLUSIVE";
                await begin.ExecuteNonQueryAsync();
            }

            encrypt = client.EncryptAsync(key.Name, new byte[] { 1, 2, 3 });

            // A moment for the call's event to reach the group commit's wait for the lock.
            await Task.Delay(TimeSpan.FromSeconds(2));
            Assert.False(encrypt.IsCompleted, "the Encrypt was answered while its event could not be written");
        }
        catch
        {
            await server.DisposeAsync();
            throw;
        }

        // The stop ends (a hang guard, not a bound), and the commit loop's wait with it: the call is
        // not acknowledged, and its event's loss is logged (1301, naming the method).
        await server.DisposeAsync().AsTask().WaitAsync(TimeSpan.FromSeconds(60));
        var answered = await Record.ExceptionAsync(() => encrypt.WaitAsync(TimeSpan.FromSeconds(60)));
        Assert.True(answered is not null and not TimeoutException, $"the Encrypt was answered OK, or not at all: {answered}");
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(60);
        while (!server.Logs.Events.Any(l => l.Contains("Id: 1301,", StringComparison.Ordinal) && l.Contains("Encrypt", StringComparison.Ordinal)))
        {
            Assert.True(DateTime.UtcNow < deadline, $"the Encrypt's event was neither written nor given up (1301) within 60 s of the stop, the write lock still held:\n{server.Logs.AllText}");
            await Task.Delay(100);
        }

        // Nothing acknowledged is missing: the Encrypt's event is not in the chain, and the call was not answered OK.
        await using (var rollback = holder.CreateCommand())
        {
            rollback.CommandText = "ROLLBACK";
            await rollback.ExecuteNonQueryAsync();
        }

        Assert.Equal("0", RawSqlite.Scalar(server.DatabasePath, "SELECT count(*) FROM audit_events WHERE operation LIKE '%Encrypt'"));
    }

    // Whether the process holds the file open (a descriptor of it in /proc/PID/fd).
    private static bool HasOpen(int processId, string path)
    {
        try
        {
            return Directory.EnumerateFileSystemEntries($"/proc/{processId}/fd")
                .Any(fd => new FileInfo(fd).LinkTarget == path);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            return false; // a descriptor closed while it was looked at: look again
        }
    }

    [Fact]
    public async Task TheFinalCheckpointCannotBeAppendedToTheNodesRecord_Logged1303_TheHeadRecordStillWritten_TheStopCompletes()
    {
        var server = await KmsTestServer.StartAsync(null, null, "dev", "--Lifecycle:JobInterval=01:00:00");
        var audit = server.Services.GetRequiredService<Kms.Core.Services.AuditLog>();
        var checkpoints = Path.Combine(server.DataDir, "audit", "checkpoints.jsonl");
        var headRecord = Path.Combine(server.DataDir, "audit", Kms.Core.Services.SeenHead.FileName);
        DateTimeOffset beforeTheStop;
        try
        {
            // The head signed now (the housekeeping then signs no checkpoint for a minute), this node's
            // record of its checkpoints made unwritable (a directory in its place, as a full disk would
            // make the append fail), and events after it, which only the stop's checkpoint signs.
            using (var first = server.CreateClient())
            {
                await first.CreateKeyAsync("tenants/dev", "before-the-last-checkpoint");
            }

            await audit.CheckpointAsync(default);
            File.Delete(checkpoints);
            Directory.CreateDirectory(checkpoints);
            using var client = server.CreateClient();
            await client.CreateKeyAsync("tenants/dev", "after-the-last-checkpoint");

            // Once a housekeeping pass has recorded that head: only the stop writes head.json again.
            using var wait = new CancellationTokenSource(TimeSpan.FromSeconds(60));
            while (!File.Exists(headRecord) || Kms.Core.Services.SeenHead.Parse(await File.ReadAllBytesAsync(headRecord, wait.Token))?.Head.Sequence != AuditHead(server))
            {
                await Task.Delay(50, wait.Token);
            }

            beforeTheStop = DateTimeOffset.UtcNow;
        }
        catch
        {
            await server.DisposeAsync();
            throw;
        }

        // Before: the append's exception was not among those the stop caught (a KmsException or a
        // cancellation): it skipped the head record, and the host's stop threw it.
        await server.DisposeAsync();

        Assert.Contains("Id: 1303", server.Logs.AllText, StringComparison.Ordinal);
        var recorded = Kms.Core.Services.SeenHead.Parse(await File.ReadAllBytesAsync(headRecord))!;
        Assert.True(recorded.Written >= beforeTheStop, $"head.json was last written at {recorded.Written:o}, before the stop ({beforeTheStop:o})");
        Assert.Equal(AuditHead(server), recorded.Head.Sequence);
    }

    private static long AuditHead(KmsTestServer server) =>
        long.Parse(RawSqlite.Scalar(server.DatabasePath, "SELECT MAX(seq) FROM audit_events"), System.Globalization.CultureInfo.InvariantCulture);

    [Fact]
    public async Task ASigtermWhileTheHsmModuleIsLoaded_BuildCancelled_Logged1320_ExitsZero()
    {
        // The PKCS#11 module is a FIFO: the server's load of it (dlopen) opens it, which returns only
        // once a writer opens it too, and then reads it, which waits for bytes that never come — as
        // a module on a mount that does not answer, or a network HSM's C_Initialize that waits for
        // its server, would hold the open (native code, which no cancellation token reaches).
        var token = SoftHsm.CreateToken();
        var dataDir = Directory.CreateDirectory(Scratch.NewPath("kms-node-")).FullName;
        var module = Path.Combine(dataDir, "hanging-module.so");
        MakeFifo(module);
        await using var server = ServerProcess.Launch(dataDir, SoftHsm.ConfigPath, token.Label, token.PinFile, "dk-never-reached", $"--Hsm:ModulePath={module}");

        // The event waited for: this open for writing returns when the server has opened the module.
        await using var writer = await Task.Run(() => new FileStream(module, FileMode.Open, FileAccess.Write, FileShare.ReadWrite)).WaitAsync(TimeSpan.FromSeconds(120));

        // Before: the build waited for the open, which never ended; one SIGTERM did nothing (only a
        // second one, the runtime's default, ended the process, with nothing logged). Now the build
        // ends at the first, the open left to its thread.
        await server.SignalAsync();
        await server.WaitForOutputAsync("StoppedWhileStarting", TimeSpan.FromSeconds(60));

        // The writer stays open until the process has ended (its load of the module still waiting
        // in read): closed before, the failed load was followed by another open of the FIFO, which
        // waited for a writer, and the process's exit waited for that.
        var exitCode = await server.ExitedAsync(TimeSpan.FromSeconds(60));
        Assert.True(exitCode == 0, $"exit code {exitCode}, 0 expected:\n{server.Output}");
        Assert.DoesNotContain("cannot start", server.Output, StringComparison.Ordinal);
    }

    private static void MakeFifo(string path)
    {
        using var mkfifo = System.Diagnostics.Process.Start("mkfifo", ["-m", "600", path]) ?? throw new InvalidOperationException("mkfifo did not start");
        mkfifo.WaitForExit();
        Assert.Equal(0, mkfifo.ExitCode);
    }

    private static TimeSpan StopTime(KmsTestServer server) =>
        server.Services.GetRequiredService<Microsoft.Extensions.Options.IOptions<Microsoft.Extensions.Hosting.HostOptions>>().Value.ShutdownTimeout;

    // No lifecycle pass after the first (at start: --Lifecycle:JobInterval=01:00:00): the
    // decryption is written by the stop alone. The name of the key version it used.
    private static async Task<string> DecryptOnceAsync(KmsTestServer server)
    {
        using var client = server.CreateClient();
        var key = await client.CreateKeyAsync("tenants/dev", "counted");
        var sealedBlob = await client.EncryptAsync(key.Name, new byte[] { 1, 2, 3 });
        using var opened = await client.DecryptAsync(sealedBlob.Ciphertext);
        return opened.KeyVersion;
    }

    // The stop's last steps ran: the final checkpoint signed, the usage counts written (the one
    // decryption counted after a restart).
    private static async Task AssertLastStepsRanAsync(KmsTestServer server, string version)
    {
        var logs = server.Logs.AllText;
        Assert.DoesNotContain("LogFinalCheckpointFailed", logs, StringComparison.Ordinal);
        Assert.DoesNotContain("LogUsageNotFlushedAtStop", logs, StringComparison.Ordinal);

        await using var restarted = await KmsTestServer.StartAsync(server.Token, server.DataDir, "dev");
        using var again = restarted.CreateClient();
        var counted = (await again.Raw.GetKeyVersionAsync(new GetKeyVersionRequest { Name = version })).KeyVersion;
        Assert.Equal(1, counted.Usage.DecryptCount);
    }

    private sealed class SlowStart : Microsoft.Extensions.Hosting.IHostedService
    {
        public TaskCompletionSource Entered { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);

        public async Task StartAsync(CancellationToken cancellationToken)
        {
            Entered.SetResult();
            await Task.Delay(Timeout.Infinite, cancellationToken);
        }

        public Task StopAsync(CancellationToken cancellationToken) => Task.CompletedTask;
    }
}
