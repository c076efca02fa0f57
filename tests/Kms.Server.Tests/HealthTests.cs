using System.Net;
using System.Net.Sockets;
using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;
using Grpc.Health.V1;
using Kms.Hsm;
using Kms.Server.Health;
using Kms.Testing;
using Microsoft.Data.Sqlite;
using Microsoft.Extensions.DependencyInjection;
using ServingStatus = Grpc.Health.V1.HealthCheckResponse.Types.ServingStatus;

namespace Kms.Server.Tests;

/// <summary>
/// <c>grpc.health.v1</c> tells a load balancer the truth: NOT_SERVING while the HSM or the
/// database cannot be reached, SERVING again once they can, without a restart.
/// </summary>
public sealed class HealthTests : IAsyncLifetime
{
    private readonly CountingPublisher _published = new();
    private KmsTestServer _server = null!;

    // The counting publisher runs beside the server's own, once per run of the checks.
    public async Task InitializeAsync() => _server = await KmsTestServer.StartAsync(null, null, "dev",
        services => services.AddSingleton<Microsoft.Extensions.Diagnostics.HealthChecks.IHealthCheckPublisher>(_published));

    public async Task DisposeAsync() => await _server.DisposeAsync();

    [Fact]
    public async Task Check_HsmSessionsLost_NotServingThenServingOnceRecovered()
    {
        Assert.Equal(ServingStatus.Serving, await CheckAsync());

        // As a device dropping every session would: the next HSM call fails and faults the pool.
        // That call may be a background one (audit housekeeping, a lifecycle pass) which then
        // recovers before the check runs; the loss is dealt again until the check is the one.
        var seen = ServingStatus.Serving;
        for (var attempt = 0; attempt < 5 && seen == ServingStatus.Serving; attempt++)
        {
            _server.Services.GetRequiredService<Pkcs11Hsm>().CloseAllSessionsForFaultInjection();
            seen = await CheckAsync();
        }

        Assert.Equal(ServingStatus.NotServing, seen);
        Assert.Equal(ServingStatus.Serving, await CheckAsync()); // the adapter re-opened its sessions
    }

    [Fact]
    public async Task HsmCheck_ARegionsAdapterFailing_Unhealthy_NamingTheRegion_HealthyOnceItAnswers()
    {
        // Each residency region has its own sessions and recovery: one that cannot answer takes
        // every call for its keys down, so the node is not serving.
        var token = SoftHsm.CreateToken();
        var options = token.Options();
        using (var ceremony = HsmCeremonySession.Open(token.Options(devMode: false), System.Text.Encoding.UTF8.GetBytes(token.UserPin)))
        {
            ceremony.ImportDomainKey(RandomNumberGenerator.GetBytes(32), "kms-domain-key-eu", "dk-eu");
            options.Regions["eu"] = new HsmRegionOptions { DomainKeyId = "dk-eu" };
        }

        await using var hsm = Pkcs11Hsm.Open(options, Microsoft.Extensions.Logging.Abstractions.NullLogger.Instance);
        var check = new HsmHealthCheck(hsm);
        var context = new Microsoft.Extensions.Diagnostics.HealthChecks.HealthCheckContext();
        Assert.Equal(Microsoft.Extensions.Diagnostics.HealthChecks.HealthStatus.Healthy, (await check.CheckHealthAsync(context)).Status);

        var eu = (Pkcs11Hsm)hsm.ForRegion("eu");
        eu.Faults.Fail(Net.Pkcs11Interop.Common.CKR.CKR_DEVICE_ERROR);
        var failing = await check.CheckHealthAsync(context);
        Assert.Equal(Microsoft.Extensions.Diagnostics.HealthChecks.HealthStatus.Unhealthy, failing.Status);
        Assert.Equal("HSM region eu unavailable", failing.Description);

        eu.Faults.Clear();
        Assert.Equal(Microsoft.Extensions.Diagnostics.HealthChecks.HealthStatus.Healthy, (await check.CheckHealthAsync(context)).Status);
    }

    [Fact]
    public async Task Publisher_LogsAChangeOfWhichChecksFail_OnceEach_NotEveryRunWhoseDescriptionDiffers()
    {
        // The audit check's description names its latest failure's time: a new one every run.
        var capture = new LogCapture();
        using var factory = new Serilog.Extensions.Logging.SerilogLoggerFactory(new Serilog.LoggerConfiguration().WriteTo.Sink(capture).CreateLogger(), dispose: true);
        var publisher = new HealthTransitionPublisher(new Microsoft.Extensions.Logging.Logger<HealthTransitionPublisher>(factory));
        static Microsoft.Extensions.Diagnostics.HealthChecks.HealthReport Report(params (string Name, string? Failure)[] checks) => new(
            checks.ToDictionary(c => c.Name, c => new Microsoft.Extensions.Diagnostics.HealthChecks.HealthReportEntry(
                c.Failure is null ? Microsoft.Extensions.Diagnostics.HealthChecks.HealthStatus.Healthy : Microsoft.Extensions.Diagnostics.HealthChecks.HealthStatus.Unhealthy,
                c.Failure, TimeSpan.Zero, null, null)),
            TimeSpan.Zero);

        await publisher.PublishAsync(Report(("hsm", null), ("audit", null)), default);
        for (var run = 0; run < 5; run++)
        {
            await publisher.PublishAsync(Report(("hsm", null), ("audit", $"3 audit commits in a row failed, the latest at run {run}")), default);
        }

        await publisher.PublishAsync(Report(("hsm", "HSM unavailable"), ("audit", "failing still")), default);
        await publisher.PublishAsync(Report(("hsm", null), ("audit", null)), default);

        var lines = capture.Events.Where(e => e.Contains("health: ", StringComparison.Ordinal)).ToList();
        Assert.Equal(4, lines.Count);
        Assert.Contains("SERVING \"at start\"", lines[0], StringComparison.Ordinal);
        Assert.Contains("audit: 3 audit commits in a row failed, the latest at run 0", lines[1], StringComparison.Ordinal);
        Assert.Contains("hsm: HSM unavailable", lines[2], StringComparison.Ordinal);
        Assert.Contains("SERVING \"again\"", lines[3], StringComparison.Ordinal);
    }

    [Fact]
    public async Task Watch_DatabaseUnreachable_NotServingWithinSeconds_LoggedOnce()
    {
        // A Watch stream moves when the checks run on their own: every second, not every 30 s
        // (the framework's default) — the configured period is what says so, not a stopwatch.
        Assert.Equal(TimeSpan.FromSeconds(1), _server.Services.GetRequiredService<Microsoft.Extensions.Options.IOptions<Microsoft.Extensions.Diagnostics.HealthChecks.HealthCheckPublisherOptions>>().Value.Period);
        using var channel = _server.CreateChannel();
        using var watch = new global::Grpc.Health.V1.Health.HealthClient(channel).Watch(new HealthCheckRequest());
        Assert.True(await watch.ResponseStream.MoveNext(default));
        Assert.Equal(ServingStatus.Serving, watch.ResponseStream.Current.Status);

        await MakeTheDatabaseUnreachableAsync(async () =>
        {
            using var guard = new CancellationTokenSource(TimeSpan.FromSeconds(60));
            bool moved;
            try
            {
                moved = await watch.ResponseStream.MoveNext(guard.Token);
            }
            catch (global::Grpc.Core.RpcException) when (guard.IsCancellationRequested)
            {
                moved = false;
            }
            catch (OperationCanceledException) when (guard.IsCancellationRequested)
            {
                moved = false;
            }

            Assert.True(moved, "hang guard: the Watch stream did not move within 60 s of the database becoming unreachable");
            Assert.Equal(ServingStatus.NotServing, watch.ResponseStream.Current.Status);

            // Three more runs of the checks, all published, while it stays unreachable: each could
            // have logged it again. Counted, not timed: a 3-s pause could see fewer runs on a loaded
            // machine and pass a node that logged every run. (HealthTransitionPublisher answers
            // synchronously, and a run calls its publishers one after the other: once the next run
            // is published here, its run of the one before is over.)
            var seen = _published.Runs;
            var published = System.Diagnostics.Stopwatch.StartNew();
            while (_published.Runs < seen + 4)
            {
                Assert.True(published.Elapsed < TimeSpan.FromSeconds(60), $"hang guard: {_published.Runs - seen} runs of the checks published in 60 s");
                await Task.Delay(50);
            }
        });

        // Once per change of which checks fail (the audit check may join the store's), with the cause.
        var notServing = _server.Logs.Events.Where(e => e.Contains("health: NOT_SERVING", StringComparison.Ordinal)).ToList();
        Assert.InRange(notServing.Count, 1, 2);
        Assert.Contains("store: ", notServing[0], StringComparison.Ordinal);
        Assert.DoesNotContain(_server.Logs.Events, e => e.StartsWith("Error", StringComparison.Ordinal) && e.Contains("Health check", StringComparison.Ordinal));
    }

    [Fact]
    public async Task DatabaseUnreachable_ManyCallsWithAMadeUpToken_UnavailableLoggedAtMostOnceASecond()
    {
        // No credential is needed to reach the database: a well-formed made-up token is looked up.
        var stub = new Kms.Contracts.V1.KeyManagementService.KeyManagementServiceClient(_server.CreateChannel());
        var headers = new global::Grpc.Core.Metadata { { "authorization", "Bearer kms_0123456789abcdef_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA" } };
        await MakeTheDatabaseUnreachableAsync(async () =>
        {
            for (var i = 0; i < 200; i++)
            {
                var e = await Assert.ThrowsAsync<global::Grpc.Core.RpcException>(async () => await stub.GetKeyAsync(new Kms.Contracts.V1.GetKeyRequest { Name = "tenants/dev/keys/x" }, headers));
                Assert.Equal(global::Grpc.Core.StatusCode.Unavailable, e.StatusCode);
            }
        });

        // At most once a second is LogThrottle's promise, asserted on a fake clock (LogThrottleTests);
        // here, that the refusals go through one throttle, not a line per call (200 lines from a
        // working throttle would take 200 calls spread over 200 s: a hang, not a slow machine).
        // The calls after the last line are counted, not yet logged: no sum to compare.
        var counts = _server.Logs.Events
            .Where(e => e.Contains("calls answered UNAVAILABLE since the last such message", StringComparison.Ordinal))
            .Select(e => long.Parse(System.Text.RegularExpressions.Regex.Match(e, " Count=([0-9]+)").Groups[1].Value, System.Globalization.CultureInfo.InvariantCulture))
            .ToList();
        Assert.NotEmpty(counts);
        Assert.True(counts.Count < 200, $"{counts.Count} lines for 200 refusals: not throttled");
    }

    [Fact]
    public async Task DatabaseUnreachable_ALargeMessageWhoseTokenCannotBeChecked_NotWaitedFor_AnsweredUnavailable()
    {
        // While no credential can be checked, a well-formed made-up token is no reason to hold a
        // large message: one announcing 4 MiB, 64 KiB of it sent and never the rest, is answered
        // UNAVAILABLE (retryable) on its header. Before, its body was waited for, as from a caller
        // who had been checked, for as long as Kestrel's data rate let it trickle.
        await MakeTheDatabaseUnreachableAsync(async () =>
        {
            await using var client = await RawHttp2.ConnectAsync(_server.Address, _server.CaCertificatePath);
            _ = client.StartReading();
            await client.WriteFrameAsync(RawHttp2.Headers, RawHttp2.EndHeaders, 1, RawHttp2.GrpcHeaderBlock(
                "/kms.v1.KeyManagementService/GenerateRandom", "kms_0123456789abcdef_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", _server.Address));
            await client.SendDataAsync(1, RawHttp2.GrpcMessageHeader(4 * 1024 * 1024).Concat(new byte[64 * 1024]).ToArray(), TimeSpan.FromSeconds(5));

            var answers = await client.StreamEndsAsync([1], TimeSpan.FromSeconds(30));

            Assert.True(answers.ContainsKey(1), "the call was still waiting for its message");
            Assert.Contains("grpc-status14", answers[1], StringComparison.Ordinal);
        });
    }

    [Fact]
    public async Task Check_DatabaseUnreachable_NotServingUntilItIsBack()
    {
        Assert.Equal(ServingStatus.Serving, await CheckAsync());
        await MakeTheDatabaseUnreachableAsync(async () =>
        {
            Assert.Equal(ServingStatus.NotServing, await CheckAsync());
            Assert.Equal(ServingStatus.NotServing, await CheckAsync());
        });

        Assert.Equal(ServingStatus.Serving, await CheckAsync());
    }

    private async Task MakeTheDatabaseUnreachableAsync(Func<Task> whileUnreachable)
    {

        // The file is gone and its path cannot be opened (a directory stands there); pooled
        // connections, which would still reach the moved file, are closed first.
        // The server's background workers (change feed every 250 ms, audit housekeeping) keep
        // opening connections, and SQLite creates a missing file: an empty kms.db can appear in
        // either gap below, so both steps replace whatever stands at the path.
        var path = _server.DatabasePath;
        SqliteConnection.ClearAllPools();
        File.Move(path, path + ".away");
        for (var attempt = 0; !Directory.Exists(path); attempt++)
        {
            try
            {
                File.Delete(path);
                Directory.CreateDirectory(path);
            }
            catch (IOException) when (attempt < 20)
            {
            }
        }

        SqliteConnection.ClearAllPools();
        try
        {
            await whileUnreachable();
        }
        finally
        {
            Directory.Delete(path);
            File.Move(path + ".away", path, overwrite: true);
            SqliteConnection.ClearAllPools();
        }
    }

    [Fact]
    public async Task HealthProbe_ServerServing_ExitsZero()
    {
        var (exitCode, output, _) = await ProbeAsync($"https://0.0.0.0:{_server.Address.Port}");

        Assert.Equal(0, exitCode);
        Assert.Contains("Serving", output);
    }

    [Fact]
    public async Task HealthProbe_NothingListening_ExitsOne()
    {
        using var listener = new TcpListener(IPAddress.Loopback, 0);
        listener.Start();
        var freePort = ((IPEndPoint)listener.LocalEndpoint).Port;
        listener.Stop();

        var (exitCode, _, error) = await ProbeAsync($"https://127.0.0.1:{freePort}");

        Assert.Equal(1, exitCode);
        Assert.Contains("Unavailable", error);
    }

    [Fact]
    public async Task HealthProbe_ServerPresentsAnotherCertificate_ExitsOne()
    {
        using var key = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        using var other = new CertificateRequest("CN=localhost", key, HashAlgorithmName.SHA256)
            .CreateSelfSigned(DateTimeOffset.UtcNow.AddMinutes(-5), DateTimeOffset.UtcNow.AddDays(1));
        var otherPath = Path.Combine(_server.DataDir, "other.crt");
        await File.WriteAllTextAsync(otherPath, other.ExportCertificatePem());

        var (exitCode, _, _) = await ProbeAsync($"https://127.0.0.1:{_server.Address.Port}", $"--Kms:TlsCertificatePath={otherPath}");

        Assert.Equal(1, exitCode);
    }

    private async Task<(int ExitCode, string Output, string Error)> ProbeAsync(string url, params string[] extraArgs)
    {
        using var output = new StringWriter();
        using var error = new StringWriter();
        var exitCode = await HealthProbe.RunAsync(
            [HealthProbe.Switch, "--dev", $"--Kms:DataDir={_server.DataDir}", $"--urls={url}", .. extraArgs], output, error);
        return (exitCode, output.ToString(), error.ToString());
    }

    [Fact]
    public async Task Check_DatabaseReadsButTheAuditCannotBeWritten_NotServingUntilACommitSucceeds()
    {
        await using var server = await KmsTestServer.StartAsync(null, null, "dev", (Action<IServiceCollection>?)null, "--Storage:Sqlite:BusyTimeout=00:00:01");
        // One attempt per call: each failed call is then one failed commit.
        using var client = new Kms.Client.KmsClient(new Kms.Client.KmsClientOptions
        {
            Endpoint = server.Address,
            CaCertificatePath = server.CaCertificatePath,
            ApiToken = server.DeveloperToken,
            Retry = new Kms.Client.KmsRetryOptions { MaxAttempts = 1 },
        });
        var key = await client.CreateKeyAsync("tenants/dev", "health-audit");
        Assert.Equal(ServingStatus.Serving, await CheckAsync(server));

        // Another process holds the write lock: reads (the store's probe) still work, every
        // audited call is answered UNAVAILABLE.
        await using (var blocker = new SqliteConnection($"Data Source={server.DatabasePath}"))
        {
            await blocker.OpenAsync();
            await using var begin = blocker.CreateCommand();
            begin.CommandText = "BEGIN IMMEDIATE";
            await begin.ExecuteNonQueryAsync();
            // One failed commit (a lock held a moment too long) does not drain the node; three in a row do.
            for (var i = 0; i < AuditWriteHealthCheck.FailuresInARow; i++)
            {
                Assert.Equal(ServingStatus.Serving, await CheckAsync(server));
                var refused = await Assert.ThrowsAsync<global::Grpc.Core.RpcException>(() => client.EncryptAsync(key.Name, new byte[] { 1 }));
                Assert.Equal(global::Grpc.Core.StatusCode.Unavailable, refused.StatusCode);
            }

            // A call whose own write timed out answers without waiting for its event (claim 38's
            // exception): that event's commit fails a busy timeout later. Wait for the third.
            Assert.Equal(ServingStatus.NotServing, await EventuallyAsync(server, ServingStatus.NotServing));
            await using var rollback = blocker.CreateCommand();
            rollback.CommandText = "ROLLBACK";
            await rollback.ExecuteNonQueryAsync();
        }

        // Until a commit succeeds (or the hold passes), the failure stands.
        Assert.Equal(ServingStatus.NotServing, await CheckAsync(server));
        await client.EncryptAsync(key.Name, new byte[] { 2 });
        Assert.Equal(ServingStatus.Serving, await CheckAsync(server));
    }

    // A node that refuses to sign audit checkpoints (the chain in the database no longer passes
    // through the last one it signed) still serves — its answers are right and its events durable,
    // and every node of the database sees the same chain — but its health says so under a service
    // of its own, kms.audit.checkpoints, beside the gauge (before, nothing in health named it).
    [Fact]
    public async Task AuditCheckpointsRefused_NodeStillServing_ItsOwnHealthServiceNotServing_UntilOneIsSignedAgain()
    {
        var audit = _server.Services.GetRequiredService<Kms.Core.Services.AuditLog>();
        await audit.AppendAsync(Entry(), default);
        var signed = await audit.CheckpointAsync(default) ?? throw new InvalidOperationException("nothing to sign");
        Assert.Equal((ServingStatus.Serving, ServingStatus.Serving), (await CheckAsync(), await CheckAsync(AuditSigningHealthCheck.Service)));

        var body = Scalar($"SELECT body FROM audit_events WHERE seq = {signed.Sequence}");
        Sql($"UPDATE audit_events SET body = replace(body, '\"outcome\":\"OK\"', '\"outcome\":\"FORGED\"') WHERE seq = {signed.Sequence}");
        await audit.AppendAsync(Entry(), default);
        await Assert.ThrowsAsync<Kms.Core.Errors.KmsException>(() => audit.CheckpointAsync(default));
        Assert.Equal((ServingStatus.Serving, ServingStatus.NotServing), (await CheckAsync(), await CheckAsync(AuditSigningHealthCheck.Service)));

        Sql($"UPDATE audit_events SET body = '{body.Replace("'", "''", StringComparison.Ordinal)}' WHERE seq = {signed.Sequence}");
        Assert.NotNull(await audit.CheckpointAsync(default));
        Assert.Equal((ServingStatus.Serving, ServingStatus.Serving), (await CheckAsync(), await CheckAsync(AuditSigningHealthCheck.Service)));

        static Kms.Core.Audit.AuditEntry Entry() => new()
        {
            Time = DateTimeOffset.UtcNow,
            RequestId = Guid.NewGuid().ToString("N"),
            Principal = "token:health-test",
            Operation = "test/Health",
            Resource = "health",
            Outcome = "OK",
        };
    }

    private void Sql(string sql) => RawSqlite.Execute(_server.DatabasePath, sql);

    private string Scalar(string sql) => RawSqlite.Scalar(_server.DatabasePath, sql);

    private async Task<ServingStatus> CheckAsync(string service)
    {
        using var channel = _server.CreateChannel();
        return (await new global::Grpc.Health.V1.Health.HealthClient(channel).CheckAsync(new HealthCheckRequest { Service = service })).Status;
    }

    // The status once it is the one expected, or the last seen after 30 s (a bound, not a timing).
    // One channel for every probe: a channel per probe opens a connection each, and dozens of
    // them still closing can meet the server's bound on connections per client address
    // (Kms:MaxConnectionsPerClientAddress, 64) — a CI run saw a probe's TLS handshake cut off.
    private static async Task<ServingStatus> EventuallyAsync(KmsTestServer server, ServingStatus expected)
    {
        using var channel = server.CreateChannel();
        var health = new global::Grpc.Health.V1.Health.HealthClient(channel);
        var until = DateTime.UtcNow.AddSeconds(30);
        var status = (await health.CheckAsync(new HealthCheckRequest())).Status;
        while (status != expected && DateTime.UtcNow < until)
        {
            await Task.Delay(100);
            status = (await health.CheckAsync(new HealthCheckRequest())).Status;
        }

        return status;
    }

    private static async Task<ServingStatus> CheckAsync(KmsTestServer server)
    {
        using var channel = server.CreateChannel();
        return (await new global::Grpc.Health.V1.Health.HealthClient(channel).CheckAsync(new HealthCheckRequest())).Status;
    }

    private async Task<ServingStatus> CheckAsync()
    {
        using var channel = _server.CreateChannel();
        return (await new global::Grpc.Health.V1.Health.HealthClient(channel).CheckAsync(new HealthCheckRequest())).Status;
    }

    // Counts the runs of the checks published (once a second, HealthTransitionPublisher.Period).
    private sealed class CountingPublisher : Microsoft.Extensions.Diagnostics.HealthChecks.IHealthCheckPublisher
    {
        private long _runs;

        public long Runs => Interlocked.Read(ref _runs);

        public Task PublishAsync(Microsoft.Extensions.Diagnostics.HealthChecks.HealthReport report, CancellationToken cancellationToken)
        {
            Interlocked.Increment(ref _runs);
            return Task.CompletedTask;
        }
    }
}
