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
/// loopback), at concurrency 1, 4, 16, 64, with durable audit on and then off — and, in the
/// same run, the raw PKCS#11 GCM floor on the same machine, so results are reported as ratios.
/// </summary>
internal static class LoadGenerator
{
    public static async Task<int> RunAsync(TimeSpan duration, int[] concurrencies)
    {
        var (options, root) = BenchEnvironment.CreateToken();
        var rawOpsPerSecond = RawHsm.Measure(options, duration, dataKeyFloor: false);
        Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"raw Pkcs11Interop AES-GCM 32 B, 1 thread: {rawOpsPerSecond:N0} ops/s"));
        var failed = 0;
        try
        {
            // Durable audit on (as served), then off (dev mode only), on the same token and database.
            var on = await RunServerAsync(options, root, audit: true, duration, concurrencies, rawOpsPerSecond);
            var off = await RunServerAsync(options, root, audit: false, duration, concurrencies, rawOpsPerSecond);
            failed = on.Failed + off.Failed;

            Console.WriteLine();
            Console.WriteLine("| concurrency | audit on ops/s | audit off ops/s | on / off | p99 on ms | p99 off ms | events per commit |");
            Console.WriteLine("|---:|---:|---:|---:|---:|---:|---:|");
            foreach (var concurrency in concurrencies)
            {
                var (a, b) = (on.Singles[concurrency], off.Singles[concurrency]);
                Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                    $"| {concurrency} | {a.OpsPerSecond:N0} | {b.OpsPerSecond:N0} | {a.OpsPerSecond / b.OpsPerSecond:F2} | {a.P99:F2} | {b.P99:F2} | {a.EventsPerCommit:F1} |"));
            }

            // Peak throughput over the sweep, each mode at its best concurrency.
            var peakOn = on.Singles.MaxBy(s => s.Value.OpsPerSecond);
            var peakOff = off.Singles.MaxBy(s => s.Value.OpsPerSecond);
            Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"peak: audit on {peakOn.Value.OpsPerSecond:N0} ops/s (c={peakOn.Key}), off {peakOff.Value.OpsPerSecond:N0} ops/s (c={peakOff.Key}), on / off {peakOn.Value.OpsPerSecond / peakOff.Value.OpsPerSecond:F2}"));
        }
        finally
        {
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

    private static async Task<(Dictionary<int, (double OpsPerSecond, double P50, double P99, double EventsPerCommit)> Singles, int Failed)> RunServerAsync(
        HsmOptions options, string root, bool audit, TimeSpan duration, int[] concurrencies, double rawOpsPerSecond)
    {
        var app = await StartServerAsync(options, root, audit);
        var failed = 0;
        var singles = new Dictionary<int, (double, double, double, double)>();
        long commits = 0, events = 0;
        app.Services.GetRequiredService<Kms.Core.Services.AuditLog>().BatchWritten += (size, _) =>
        {
            Interlocked.Increment(ref commits);
            Interlocked.Add(ref events, size);
        };
        try
        {
            using var client = Connect(app, root);
            var key = await client.CreateKeyAsync("tenants/dev", "load-" + (audit ? "audited" : "unaudited"));
            var context = new Dictionary<string, string> { ["bench"] = "load" };

            Console.WriteLine();
            Console.WriteLine($"durable audit {(audit ? "on" : "off")}:");
            Console.WriteLine("| concurrency | GenerateDataKey ops/s | p50 ms | p99 ms | ratio to raw GCM |");
            Console.WriteLine("|---:|---:|---:|---:|---:|");
            foreach (var concurrency in concurrencies)
            {
                await SweepAsync(client, key.Name, context, concurrency, TimeSpan.FromSeconds(1)); // warm-up
                var (commitsBefore, eventsBefore) = (Interlocked.Read(ref commits), Interlocked.Read(ref events));
                var (opsPerSecond, p50, p99, errors) = await SweepAsync(client, key.Name, context, concurrency, duration);
                failed += errors;
                var perCommit = (double)(Interlocked.Read(ref events) - eventsBefore) / Math.Max(1, Interlocked.Read(ref commits) - commitsBefore);
                singles[concurrency] = (opsPerSecond, p50, p99, perCommit);
                Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                    $"| {concurrency} | {opsPerSecond:N0} | {p50:F2} | {p99:F2} | {opsPerSecond / rawOpsPerSecond:F2} |{(errors > 0 ? $" {errors} errors" : "")}"));
            }

            if (audit)
            {
                Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"group commit: {events:N0} events in {commits:N0} commits, {(double)events / Math.Max(1, commits):F1} per commit"));
            }

            if (audit)
            {
                Console.WriteLine();
                Console.WriteLine("| concurrency | BatchGenerateDataKey (100 items): data keys/s | p50 ms per call | p99 ms per call | ratio to raw GCM |");
                Console.WriteLine("|---:|---:|---:|---:|---:|");
                var batch = new BatchGenerateDataKeyRequest();
                batch.Requests.Add(Enumerable.Range(0, 100).Select(_ => new GenerateDataKeyRequest { Name = key.Name }));
                foreach (var concurrency in concurrencies.Where(c => c <= 16))
                {
                    await SweepBatchAsync(client, batch, concurrency, TimeSpan.FromSeconds(1));
                    var (keysPerSecond, p50, p99, errors) = await SweepBatchAsync(client, batch, concurrency, duration);
                    failed += errors;
                    Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                        $"| {concurrency} | {keysPerSecond:N0} | {p50:F2} | {p99:F2} | {keysPerSecond / rawOpsPerSecond:F2} |{(errors > 0 ? $" {errors} errors" : "")}"));
                }
            }
        }
        finally
        {
            await app.StopAsync();
            await app.DisposeAsync();
        }

        return (singles, failed);
    }

    /// <summary>
    /// The real server over TLS 1.3 with API-token auth on loopback (an ephemeral port), on
    /// <paramref name="options"/>' token, with durable audit on or off. The caller stops and disposes it.
    /// </summary>
    internal static async Task<WebApplication> StartServerAsync(HsmOptions options, string root, bool audit, params string[] extra)
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
            $"--Kms:Audit:Enabled={(audit ? "true" : "false")}",
            .. extra,
            .. fromEnvironment,
        ], logging => logging.MinimumLevel.Warning());
        await app.StartAsync();
        return app;
    }

    /// <summary>One client (one HTTP/2 connection pool) to <paramref name="app"/>, as the dev developer token.</summary>
    internal static KmsClient Connect(WebApplication app, string root, int maxAttempts = 5) => new(new KmsClientOptions
    {
        Endpoint = KmsServerApp.BoundAddresses(app).Single(),
        CaCertificatePath = Path.Combine(root, "tls", "ca.crt"),
        ApiTokenPath = Path.Combine(root, "tokens", "developer.token"),
        Retry = new KmsRetryOptions { MaxAttempts = maxAttempts },
    });

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

    private static double Percentile(double[] sorted, double p) => sorted.Length == 0 ? 0 : sorted[(int)Math.Min(sorted.Length - 1, Math.Floor(p * sorted.Length))];
}
