using System.Diagnostics;
using System.Globalization;
using Kms.Client;
using Kms.Contracts.V1;
using Kms.Core.Keys;
using Kms.Hsm;
using Kms.Server.Hosting;
using Microsoft.AspNetCore.Builder;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging.Abstractions;

namespace Kms.Bench;

/// <summary>
/// GenerateDataKey through gRPC over TLS 1.3 against the real server (in this process, on
/// loopback), at concurrency 1, 4, 16, 64, with durable audit on and off — two servers side by
/// side, each on a token and database of its own, measured in alternating order at each
/// concurrency after a warm-up long enough for the JIT's last tier — and, in the same run, the
/// raw PKCS#11 GCM floor on the same machine, so results are reported as ratios.
/// </summary>
/// <remarks>
/// Until the fifteenth session the audited sweep ran first, from a cold process with a 1-s
/// warm-up, and the unaudited one after it: the JIT's compiling thread took about a quarter of
/// the process's CPU for the first 15 s of load, so the audited figures (c=1 and 4 most) paid
/// for the warm-up of both.
/// </remarks>
internal static class LoadGenerator
{
    private static readonly TimeSpan WarmUp = TimeSpan.FromSeconds(15);

    public static async Task<int> RunAsync(TimeSpan duration, int[] concurrencies, int rounds)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(rounds, 1);
        var (tokens, _, root) = BenchEnvironment.CreateTokens(2);
        var servers = new List<Server>();
        var failed = 0;
        try
        {
            var rawOpsPerSecond = RawHsm.Measure(tokens[0].Options, duration, dataKeyFloor: false);
            Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"raw Pkcs11Interop AES-GCM 32 B, 1 thread: {rawOpsPerSecond:N0} ops/s"));
            foreach (var (token, audit) in new[] { (tokens[0], true), (tokens[1], false) })
            {
                var dir = Path.Combine(root, token.Options.TokenLabel!);
                Directory.CreateDirectory(dir);
                servers.Add(await Server.StartAsync(token.Options, dir, audit));
            }

            var (on, off) = (servers[0], servers[1]);
            Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"GenerateDataKey, {duration.TotalSeconds} s per measurement, {rounds} round(s) per concurrency (the median round shown; of an even count, the upper one), audit on and off alternating; warm-up at c=16 {WarmUp.TotalSeconds} s on the audited server, {(WarmUp / 3).TotalSeconds} s on the other"));
            await SweepAsync(on, 16, WarmUp);
            await SweepAsync(off, 16, WarmUp / 3);

            Console.WriteLine();
            Console.WriteLine("| concurrency | audit on ops/s | audit off ops/s | on / off | p99 on ms | p99 off ms | events per commit |");
            Console.WriteLine("|---:|---:|---:|---:|---:|---:|---:|");
            var peaks = (On: 0.0, Off: 0.0, OnAt: 0, OffAt: 0);
            var turn = 0;
            foreach (var concurrency in concurrencies)
            {
                var measured = new List<(Step On, Step Off, double EventsPerCommit)>();
                for (var round = 0; round < rounds; round++)
                {
                    // A short warm-up at this concurrency on each, then both measured, the order alternating.
                    await SweepAsync(on, concurrency, TimeSpan.FromSeconds(1));
                    await SweepAsync(off, concurrency, TimeSpan.FromSeconds(1));
                    Step a = default, b = default;
                    var (commitsBefore, eventsBefore) = on.Commits;
                    foreach (var audited in turn++ % 2 == 0 ? new[] { true, false } : [false, true])
                    {
                        var step = await SweepAsync(audited ? on : off, concurrency, duration);
                        failed += step.Errors;
                        (a, b) = audited ? (step, b) : (a, step);
                    }

                    var (commitsAfter, eventsAfter) = on.Commits;
                    measured.Add((a, b, (double)(eventsAfter - eventsBefore) / Math.Max(1, commitsAfter - commitsBefore)));
                }

                // The round whose ratio is the median stands for the concurrency (its own figures, not a mix).
                var median = measured.OrderBy(m => m.On.OpsPerSecond / m.Off.OpsPerSecond).ElementAt(measured.Count / 2);
                var errors = measured.Sum(m => m.On.Errors + m.Off.Errors);
                var range = measured.Count > 1
                    ? string.Create(CultureInfo.InvariantCulture, $" (rounds {string.Join(", ", measured.Select(m => (m.On.OpsPerSecond / m.Off.OpsPerSecond).ToString("F2", CultureInfo.InvariantCulture)))})")
                    : "";
                Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                    $"| {concurrency} | {median.On.OpsPerSecond:N0} | {median.Off.OpsPerSecond:N0} | {median.On.OpsPerSecond / median.Off.OpsPerSecond:F2}{range} | {median.On.P99:F2} | {median.Off.P99:F2} | {median.EventsPerCommit:F1} |{(errors > 0 ? $" {errors} errors in its rounds" : "")}"));
                foreach (var m in measured)
                {
                    peaks = (Math.Max(peaks.On, m.On.OpsPerSecond), Math.Max(peaks.Off, m.Off.OpsPerSecond),
                        m.On.OpsPerSecond >= peaks.On ? concurrency : peaks.OnAt, m.Off.OpsPerSecond >= peaks.Off ? concurrency : peaks.OffAt);
                }
            }

            // Peak throughput over the sweep, each mode at its best measurement.
            Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"peak: audit on {peaks.On:N0} ops/s (c={peaks.OnAt}), off {peaks.Off:N0} ops/s (c={peaks.OffAt}), on / off {peaks.On / peaks.Off:F2}"));
            Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"group commit over the audited run: {on.Commits.Events:N0} events in {on.Commits.Count:N0} commits, {(double)on.Commits.Events / Math.Max(1, on.Commits.Count):F1} per commit"));

            Console.WriteLine();
            Console.WriteLine("| concurrency | BatchGenerateDataKey (100 items), audit on: data keys/s | p50 ms per call | p99 ms per call | ratio to raw GCM |");
            Console.WriteLine("|---:|---:|---:|---:|---:|");
            var batch = new BatchGenerateDataKeyRequest();
            batch.Requests.Add(Enumerable.Range(0, 100).Select(_ => new GenerateDataKeyRequest { Name = on.KeyName }));
            foreach (var concurrency in concurrencies.Where(c => c <= 16))
            {
                await SweepBatchAsync(on.Client, batch, concurrency, TimeSpan.FromSeconds(1));
                var (keysPerSecond, p50, p99, errors) = await SweepBatchAsync(on.Client, batch, concurrency, duration);
                failed += errors;
                Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                    $"| {concurrency} | {keysPerSecond:N0} | {p50:F2} | {p99:F2} | {keysPerSecond / rawOpsPerSecond:F2} |{(errors > 0 ? $" {errors} errors" : "")}"));
            }
        }
        finally
        {
            foreach (var server in servers)
            {
                try
                {
                    await server.DisposeAsync();
                }
                catch (Exception e)
                {
                    Console.Error.WriteLine($"load: stopping a server failed: {e.Message}");
                }
            }

            Directory.Delete(root, recursive: true);
        }

        // Figures from a run with errors are not figures: fail it.
        if (failed > 0)
        {
            Console.Error.WriteLine($"load: {failed} calls failed");
            return 1;
        }

        return 0;
    }

    private static async Task<Step> SweepAsync(Server server, int concurrency, TimeSpan duration)
    {
        var (opsPerSecond, p50, p99, errors) = await SweepAsync(server.Client, server.KeyName, server.Context, concurrency, duration);
        return new Step(opsPerSecond, p50, p99, errors);
    }

    private readonly record struct Step(double OpsPerSecond, double P50, double P99, int Errors);

    /// <summary>A server, its client and key, and (audit on) its group-commit counts.</summary>
    private sealed class Server : IAsyncDisposable
    {
        private long _commits;
        private long _events;

        private Server(WebApplication app, KmsClient client, string keyName)
        {
            App = app;
            Client = client;
            KeyName = keyName;
        }

        public WebApplication App { get; }

        public KmsClient Client { get; }

        public string KeyName { get; }

        public Dictionary<string, string> Context { get; } = new() { ["bench"] = "load" };

        public (long Count, long Events) Commits => (Interlocked.Read(ref _commits), Interlocked.Read(ref _events));

        public static async Task<Server> StartAsync(HsmOptions options, string root, bool audit)
        {
            var app = await StartServerAsync(options, root, audit);
            KmsClient? client = null;
            string keyName;
            try
            {
                client = Connect(app, root);
                keyName = (await client.CreateKeyAsync("tenants/dev", "load-" + (audit ? "audited" : "unaudited"))).Name;
            }
            catch
            {
                client?.Dispose();
                await app.StopAsync();
                await app.DisposeAsync();
                throw;
            }

            var server = new Server(app, client, keyName);
            app.Services.GetRequiredService<Kms.Core.Services.AuditLog>().BatchWritten += (size, _) =>
            {
                Interlocked.Increment(ref server._commits);
                Interlocked.Add(ref server._events, size);
            };
            return server;
        }

        public async ValueTask DisposeAsync()
        {
            Client.Dispose();
            await App.StopAsync();
            await App.DisposeAsync();
        }
    }

    /// <summary>
    /// The real server over TLS 1.3 with API-token auth on loopback (an ephemeral port), on
    /// <paramref name="options"/>' token, with durable audit on or off. The caller stops and disposes it.
    /// </summary>
    internal static async Task<WebApplication> StartServerAsync(HsmOptions options, string root, bool audit, params string[] extra)
    {
        var app = await BuildServerAsync(options, root, audit, extra);
        await app.StartAsync();
        return app;
    }

    /// <summary>As <see cref="StartServerAsync"/>, not yet started (to subscribe to its services first).</summary>
    internal static async Task<WebApplication> BuildServerAsync(HsmOptions options, string root, bool audit, params string[] extra)
    {
        // KMS_BENCH_SERVER_ARGS: extra server arguments for experiments (e.g. --Kms:Audit:Enabled=false), printed so a result says what it measured.
        var fromEnvironment = (Environment.GetEnvironmentVariable("KMS_BENCH_SERVER_ARGS") ?? "").Split(' ', StringSplitOptions.RemoveEmptyEntries);
        if (fromEnvironment.Length > 0)
        {
            // Names only: a value may be a secret (--Hsm:Pin=…).
            Console.WriteLine($"server arguments from KMS_BENCH_SERVER_ARGS: {string.Join(' ', fromEnvironment.Select(a => a.Split('=')[0]))}");
        }

        // The experiment's arguments come last: on a command line the last value of a setting wins, so
        // they override the defaults below (--Kms:Audit:Enabled=false too).
        var app = await KmsServerApp.BuildAsync(
        [
            "--dev", "--urls=https://127.0.0.1:0", $"--Kms:DataDir={root}", $"--Hsm:TokenLabel={options.TokenLabel}",
            options.PinFile is { } pinFile ? $"--Hsm:PinFile={pinFile}" : $"--Hsm:Pin={options.Pin}",
            $"--Hsm:ModuleEnvironment:SOFTHSM2_CONF={options.ModuleEnvironment["SOFTHSM2_CONF"]}",

            // The tenant quota (default 5,000 ops/s) would cap the sweep; it is still metered.
            "--Kms:Quotas:OperationsPerSecond=10000000", "--Kms:Quotas:Burst=10000000",
            "--Kms:Quotas:PrincipalsWithoutTenant:CallsPerSecond=10000000", "--Kms:Quotas:PrincipalsWithoutTenant:Burst=10000000",
            "--Kms:Quotas:OtherCallsPerSecond=10000000", "--Kms:Quotas:OtherCallsBurst=10000000",
            $"--Kms:Audit:Enabled={(audit ? "true" : "false")}",
            .. extra,
            .. fromEnvironment,
        ], logging => logging.MinimumLevel.Warning());
        return app;
    }

    /// <summary>One client (one HTTP/2 connection pool) to <paramref name="app"/>, as the dev developer token.</summary>
    internal static KmsClient Connect(WebApplication app, string root, int maxAttempts = 5, IEnumerable<string>? clientArgs = null)
    {
        var options = new KmsClientOptions
        {
            Endpoint = KmsServerApp.BoundAddresses(app).Single(),
            CaCertificatePath = Path.Combine(root, "tls", "ca.crt"),
            ApiTokenPath = Path.Combine(root, "tokens", "developer.token"),
            Retry = new KmsRetryOptions { MaxAttempts = maxAttempts },
        };

        // ab's "--client:Name=value" arguments: the client's settings on one side of a comparison.
        foreach (var arg in clientArgs ?? [])
        {
            var (name, value) = (arg["--client:".Length..arg.IndexOf('=', StringComparison.Ordinal)], arg[(arg.IndexOf('=', StringComparison.Ordinal) + 1)..]);
            switch (name)
            {
                case nameof(KmsClientOptions.MaxConcurrentCalls):
                    options.MaxConcurrentCalls = int.Parse(value, System.Globalization.CultureInfo.InvariantCulture);
                    break;
                default:
                    throw new ArgumentException($"unknown client setting {arg}");
            }
        }

        return new KmsClient(options);
    }

    private static Task<(double OpsPerSecond, double P50, double P99, int Errors)> SweepAsync(
        KmsClient client, string keyName, Dictionary<string, string> context, int concurrency, TimeSpan duration) =>
        ClosedLoopAsync(concurrency, duration, async () =>
        {
            using var dataKey = await client.GenerateDataKeyAsync(keyName, context);
        });

    /// <summary>
    /// A closed loop: <paramref name="concurrency"/> workers each call <paramref name="call"/>
    /// back to back for <paramref name="duration"/>; every call's latency is kept (failed ones
    /// too) and counted. A call that fails with an RPC error is counted, not thrown.
    /// </summary>
    internal static async Task<(double OpsPerSecond, double P50, double P99, int Errors)> ClosedLoopAsync(
        int concurrency, TimeSpan duration, Func<Task> call)
    {
        var latencies = new List<double>[concurrency];
        var errors = 0;
        var stopwatch = Stopwatch.StartNew();
        var workers = Enumerable.Range(0, concurrency).Select(async worker =>
        {
            var mine = latencies[worker] = new List<double>(100_000);
            while (stopwatch.Elapsed < duration)
            {
                var started = Stopwatch.GetTimestamp();
                try
                {
                    await call();
                }
                catch (Grpc.Core.RpcException)
                {
                    Interlocked.Increment(ref errors);
                }

                mine.Add(Stopwatch.GetElapsedTime(started).TotalMilliseconds);
            }
        }).ToList();
        await Task.WhenAll(workers);
        var elapsed = stopwatch.Elapsed.TotalSeconds;
        var all = latencies.SelectMany(l => l).Order().ToArray();
        return (all.Length / elapsed, Percentile(all, 0.50), Percentile(all, 0.99), errors);
    }

    private static async Task<(double KeysPerSecond, double P50, double P99, int Errors)> SweepBatchAsync(
        KmsClient client, BatchGenerateDataKeyRequest batch, int concurrency, TimeSpan duration)
    {
        var latencies = new List<double>[concurrency];
        var errors = 0;
        var stopwatch = Stopwatch.StartNew();
        await Task.WhenAll(Enumerable.Range(0, concurrency).Select(async worker =>
        {
            var mine = latencies[worker] = new List<double>(10_000);
            while (stopwatch.Elapsed < duration)
            {
                var started = Stopwatch.GetTimestamp();
                var response = await client.Raw.BatchGenerateDataKeyAsync(batch);
                Interlocked.Add(ref errors, response.Results.Count(r => r.Status.Code != 0));
                mine.Add(Stopwatch.GetElapsedTime(started).TotalMilliseconds);
            }
        }));
        var elapsed = stopwatch.Elapsed.TotalSeconds;
        var all = latencies.SelectMany(l => l).Order().ToArray();
        return (all.Length * batch.Requests.Count / elapsed, Percentile(all, 0.50), Percentile(all, 0.99), errors);
    }

    internal static double Percentile(double[] sorted, double p) => sorted.Length == 0 ? 0 : sorted[(int)Math.Min(sorted.Length - 1, Math.Floor(p * sorted.Length))];
}
