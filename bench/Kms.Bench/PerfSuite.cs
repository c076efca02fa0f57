using System.Diagnostics;
using System.Globalization;
using System.Security.Cryptography;
using System.Text.Json;
using System.Text.Json.Nodes;
using Google.Protobuf.WellKnownTypes;
using Grpc.Net.Client;
using Kms.Client;
using Kms.Contracts.V1;
using Kms.Hsm;
using Microsoft.AspNetCore.Builder;
using Net.Pkcs11Interop.Common;
using Net.Pkcs11Interop.HighLevelAPI;

namespace Kms.Bench;

/// <summary>
/// The performance issue's figures from one command, each against its baseline in the same run:
/// GenerateDataKey and Decrypt (TLS 1.3, API token, durable audit) against a bare RPC on the same
/// stack; BatchGenerateDataKey against the raw HSM floor (random + GCM per key); open-loop p99 at
/// half of the measured peak; an overload step that must be shed with UNAVAILABLE. Writes a JSON
/// result file (the regression record) besides the tables.
/// </summary>
internal static class PerfSuite
{
    public static async Task<int> RunAsync(TimeSpan duration, int[] concurrencies, string? outputPath)
    {
        var started = DateTimeOffset.UtcNow;
        var (options, root) = BenchEnvironment.CreateToken();
        var results = new JsonObject
        {
            ["suite"] = "perf",
            ["started"] = started.ToString("O", CultureInfo.InvariantCulture),
            ["machine"] = new JsonObject
            {
                ["processors"] = Environment.ProcessorCount,
                ["runtime"] = Environment.Version.ToString(),
                ["load_average"] = LoadAverage(),
            },
            ["seconds_per_step"] = duration.TotalSeconds,
        };
        var failed = 0;
        try
        {
            var rawGcm = RawHsm.Measure(options, duration, dataKeyFloor: false);
            var rawFloor = RawHsm.Measure(options, duration, dataKeyFloor: true);
            Console.WriteLine(Invariant($"baseline: raw PKCS#11 AES-GCM 32 B, 1 thread: {rawGcm:N0} ops/s"));
            Console.WriteLine(Invariant($"baseline: raw HSM data-key floor (C_GenerateRandom 44 B + C_Encrypt GCM 32 B), 1 thread: {rawFloor:N0} keys/s"));
            results["raw_gcm_ops_per_second"] = rawGcm;
            results["raw_data_key_floor_per_second"] = rawFloor;

            var app = await LoadGenerator.StartServerAsync(options, root, audit: true);
            var (bare, bareAddress) = await BareRpc.StartAsync(root);
            try
            {
                var (bareCall, bareChannel) = BareRpc.CallAsDeveloper(bareAddress, root);
                using var _ = bareChannel;
                using var client = LoadGenerator.Connect(app, root);
                var key = await client.CreateKeyAsync("tenants/dev", "perf");
                var context = new Dictionary<string, string> { ["bench"] = "perf", ["table"] = "orders" };
                var ciphertexts = new byte[64][];
                for (var i = 0; i < ciphertexts.Length; i++)
                {
                    using var dataKey = await client.GenerateDataKeyAsync(key.Name, context);
                    ciphertexts[i] = dataKey.Ciphertext;
                }

                Func<Task> generate = async () =>
                {
                    using var dataKey = await client.GenerateDataKeyAsync(key.Name, context);
                };
                var next = 0;
                Func<Task> decrypt = async () =>
                {
                    using var plaintext = await client.DecryptAsync(ciphertexts[(Interlocked.Increment(ref next) & int.MaxValue) % ciphertexts.Length], context);
                };

                // The process warmed first (the JIT's last tier takes about 15 s of load; until then its
                // compiling thread takes a quarter of the CPU, and the first concurrency measured paid for it).
                foreach (var call in new[] { bareCall, generate, decrypt })
                {
                    await LoadLoops.ClosedAsync(16, TimeSpan.FromSeconds(5), call);
                }

                // Interleaved per concurrency (bare, GenerateDataKey, Decrypt), so drift in the
                // machine's load does not favour one of them.
                var sweep = new JsonArray();
                var peaks = new Dictionary<string, (double Ops, int Concurrency)>();
                Console.WriteLine();
                Console.WriteLine("| concurrency | bare RPC ops/s | GenerateDataKey ops/s | ÷ bare | p99 ms | Decrypt ops/s | ÷ bare | p99 ms |");
                Console.WriteLine("|---:|---:|---:|---:|---:|---:|---:|---:|");
                foreach (var concurrency in concurrencies)
                {
                    var step = new Dictionary<string, StepResult>();
                    foreach (var (name, call) in new[] { ("bare", bareCall), ("generate_data_key", generate), ("decrypt", decrypt) })
                    {
                        await LoadLoops.ClosedAsync(concurrency, TimeSpan.FromSeconds(1), call); // warm-up
                        var result = await LoadLoops.ClosedAsync(concurrency, duration, call);
                        failed += result.Errors + result.Shed;
                        step[name] = result;
                        if (!peaks.TryGetValue(name, out var peak) || result.OpsPerSecond > peak.Ops)
                        {
                            peaks[name] = (result.OpsPerSecond, concurrency);
                        }
                    }

                    var (b, g, d) = (step["bare"], step["generate_data_key"], step["decrypt"]);
                    Console.WriteLine(Invariant(
                        $"| {concurrency} | {b.OpsPerSecond:N0} | {g.OpsPerSecond:N0} | {g.OpsPerSecond / b.OpsPerSecond:F2} | {g.P99:F2} | {d.OpsPerSecond:N0} | {d.OpsPerSecond / b.OpsPerSecond:F2} | {d.P99:F2} |{Failures(g, d)}"));
                    sweep.Add(new JsonObject
                    {
                        ["concurrency"] = concurrency,
                        ["bare"] = Json(b),
                        ["generate_data_key"] = Json(g),
                        ["decrypt"] = Json(d),
                    });
                }

                results["closed_loop"] = sweep;
                var peakJson = new JsonObject();
                foreach (var (name, peak) in peaks)
                {
                    peakJson[name] = new JsonObject { ["ops_per_second"] = peak.Ops, ["concurrency"] = peak.Concurrency, ["ratio_to_bare_peak"] = peak.Ops / peaks["bare"].Ops };
                    Console.WriteLine(Invariant($"peak {name}: {peak.Ops:N0} ops/s at c={peak.Concurrency}, {peak.Ops / peaks["bare"].Ops:F2} of the bare RPC's peak"));
                }

                results["peak"] = peakJson;

                // Batches of 100 data keys against the raw HSM floor of the same run.
                var batch = new BatchGenerateDataKeyRequest();
                batch.Requests.Add(Enumerable.Range(0, 100).Select(_ => new GenerateDataKeyRequest { Name = key.Name }));
                var batchJson = new JsonArray();
                Console.WriteLine();
                Console.WriteLine("| concurrency | BatchGenerateDataKey (100) data keys/s | ÷ raw HSM floor | p99 ms per call |");
                Console.WriteLine("|---:|---:|---:|---:|");
                foreach (var concurrency in new[] { 1, 2, 4 })
                {
                    Func<Task> batchCall = async () =>
                    {
                        var response = await client.Raw.BatchGenerateDataKeyAsync(batch);
                        if (response.Results.Any(r => r.Status.Code != 0))
                        {
                            throw new Grpc.Core.RpcException(new Grpc.Core.Status(Grpc.Core.StatusCode.Internal, "a batch item failed"));
                        }
                    };
                    await LoadLoops.ClosedAsync(concurrency, TimeSpan.FromSeconds(1), batchCall, 100);
                    var result = await LoadLoops.ClosedAsync(concurrency, duration, batchCall, 100);
                    failed += result.Errors + result.Shed;
                    Console.WriteLine(Invariant($"| {concurrency} | {result.OpsPerSecond:N0} | {result.OpsPerSecond / rawFloor:F2} | {result.P99:F2} |{Failures(result)}"));
                    batchJson.Add(new JsonObject { ["concurrency"] = concurrency, ["result"] = Json(result), ["ratio_to_raw_floor"] = result.OpsPerSecond / rawFloor });
                }

                results["batch_generate_data_key"] = batchJson;

                // Open loop at half of each operation's peak: latency from when each call was due.
                var openJson = new JsonObject();
                Console.WriteLine();
                Console.WriteLine("| open loop | rate /s | achieved /s | p50 ms | p99 ms | p99.9 ms | max ms | shed | errors | not sent |");
                Console.WriteLine("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
                // The bare RPC at GenerateDataKey's rate first: the latency this machine, stack and
                // load generator give an RPC that does nothing, at the same arrival rate.
                foreach (var (name, call, rateOf) in new[] { ("bare", bareCall, "generate_data_key"), ("generate_data_key", generate, "generate_data_key"), ("decrypt", decrypt, "decrypt") })
                {
                    var rate = peaks[rateOf].Ops / 2;
                    await LoadLoops.OpenAsync(rate, TimeSpan.FromSeconds(1), call);
                    var result = await LoadLoops.OpenAsync(rate, duration, call);
                    failed += result.Errors; // shedding (UNAVAILABLE) is the designed answer when a noisy machine falls behind the schedule
                    Console.WriteLine(Invariant($"| {name} at half of {rateOf}'s peak | {rate:N0} | {result.OpsPerSecond:N0} | {result.P50:F2} | {result.P99:F2} | {result.P999:F2} | {result.Max:F2} | {result.Shed} | {result.Errors} | {result.NotSent} |"));
                    openJson[name] = new JsonObject { ["rate"] = rate, ["result"] = Json(result) };
                }

                // Overload: twice the peak, offered on a schedule. What the server cannot take must
                // come back as UNAVAILABLE (retryable, shed) — not as other errors, not as a queue
                // that grows without bound. Shed calls are expected here and not a failure.
                // The client does not retry here, so every shed call is seen as such.
                {
                    using var once = LoadGenerator.Connect(app, root, maxAttempts: 1);
                    Func<Task> generateOnce = async () =>
                    {
                        using var dataKey = await once.GenerateDataKeyAsync(key.Name, context);
                    };
                    var rate = peaks["generate_data_key"].Ops * 2;
                    var result = await LoadLoops.OpenAsync(rate, TimeSpan.FromSeconds(Math.Min(10, duration.TotalSeconds)), generateOnce, maxOutstanding: 4_000);
                    failed += result.Errors;
                    Console.WriteLine(Invariant($"| generate_data_key at 2x peak (overload) | {rate:N0} | {result.OpsPerSecond:N0} | {result.P50:F2} | {result.P99:F2} | {result.P999:F2} | {result.Max:F2} | {result.Shed} ({result.ShedByClient} by the client) | {result.Errors} | {result.NotSent} |"));
                    openJson["overload_generate_data_key"] = new JsonObject { ["rate"] = rate, ["result"] = Json(result) };
                }

                results["open_loop"] = openJson;
            }
            finally
            {
                await bare.StopAsync();
                await bare.DisposeAsync();
                await app.StopAsync();
                await app.DisposeAsync();
            }
        }
        finally
        {
            Directory.Delete(root, recursive: true);
        }

        results["failed_calls"] = failed;
        results["finished"] = DateTimeOffset.UtcNow.ToString("O", CultureInfo.InvariantCulture);
        outputPath ??= Path.Combine(BenchEnvironment.RepositoryRoot, "bench", "results", $"perf-{started:yyyyMMdd-HHmmss}.json");
        Directory.CreateDirectory(Path.GetDirectoryName(outputPath)!);
        await File.WriteAllTextAsync(outputPath, results.ToJsonString(new JsonSerializerOptions { WriteIndented = true }));
        Console.WriteLine();
        Console.WriteLine($"results: {outputPath}");
        if (failed > 0)
        {
            Console.Error.WriteLine($"perf: {failed} calls failed");
            return 1;
        }

        return 0;
    }

    /// <summary>
    /// A/B of two server configurations in one process, at the same time on the same machine: each
    /// round measures A then B (B then A in odd rounds), so drift in the machine's load favours
    /// neither. Prints B ÷ A per round and the median. Each server has its own token and data dir.
    /// </summary>
    public static async Task<int> CompareAsync(TimeSpan duration, int concurrency, int rounds, string operation, string[] argsA, string[] argsB)
    {
        var (tokens, _, root) = BenchEnvironment.CreateTokens(2);
        var servers = new List<Microsoft.AspNetCore.Builder.WebApplication>();
        var overload = operation == "overload";
        try
        {
            var calls = new List<Func<Task>>();
            var clients = new List<KmsClient>();
            foreach (var (token, args) in new[] { (tokens[0], argsA), (tokens[1], argsB) })
            {
                var dir = Path.Combine(root, token.Options.TokenLabel!);
                Directory.CreateDirectory(dir);
                // "--client:Name=value" sets the client's side (LoadGenerator.Connect); the rest is the server's.
                var clientArgs = args.Where(a => a.StartsWith("--client:", StringComparison.Ordinal)).ToList();
                var app = await LoadGenerator.StartServerAsync(token.Options, dir, audit: true, args.Except(clientArgs).ToArray());
                servers.Add(app);
                // "overload": GenerateDataKey from a client that does not retry, so a shed call is seen.
                var client = LoadGenerator.Connect(app, dir, maxAttempts: overload ? 1 : 5, clientArgs);
                clients.Add(client);
                calls.Add(await OperationAsync(client, overload ? "generate" : operation));
                if (servers.Count == 2 && PrefillAudit > 0)
                {
                    await PrefillAuditAsync(Path.Combine(dir, "kms.db"), PrefillAudit);
                }
            }

            Console.WriteLine($"A: {string.Join(' ', argsA)}");
            Console.WriteLine($"B: {string.Join(' ', argsB)}");
            // A negative concurrency -N is an open loop at N calls/s: then the figures compared are
            // the latency percentiles and the CPU each call costs (client and server, one process),
            // and the ratio is of the p99s; the warm-up is long enough for the JIT's last tier.
            var open = concurrency < 0;
            Console.WriteLine(open
                ? $"{operation} open loop at {-concurrency} calls/s, {duration.TotalSeconds} s per measurement, {rounds} rounds"
                : $"{operation} at c={concurrency}, {duration.TotalSeconds} s per measurement, {rounds} rounds");
            // Warm-up: the JIT's last tier takes about 15 s of load (the code is shared, so the second
            // server needs less); with 2 s the first round measured a process still compiling.
            for (var i = 0; i < calls.Count; i++)
            {
                await LoadLoops.ClosedAsync(open ? 16 : concurrency, TimeSpan.FromSeconds(i == 0 ? 15 : 5), calls[i]);
            }

            if (overload)
            {
                var code = await CompareOverloadAsync(duration, -concurrency, rounds, calls);
                clients.ForEach(c => c.Dispose());
                return code;
            }

            var ratios = new List<double>();
            Console.WriteLine(open
                ? "| round | A p50 ms | A p99 ms | A CPU µs/call | B p50 ms | B p99 ms | B CPU µs/call | B ÷ A (p99) |"
                : "| round | A ops/s | A p99 ms | B ops/s | B p99 ms | B ÷ A |");
            Console.WriteLine(open ? "|---:|---:|---:|---:|---:|---:|---:|---:|" : "|---:|---:|---:|---:|---:|---:|");
            for (var round = 1; round <= rounds; round++)
            {
                var order = round % 2 == 1 ? new[] { 0, 1 } : [1, 0];
                var results = new StepResult[2];
                var cpu = new double[2];
                foreach (var i in order)
                {
                    var before = CpuSample.Now();
                    results[i] = open
                        ? await LoadLoops.OpenAsync(-concurrency, duration, calls[i])
                        : await LoadLoops.ClosedAsync(concurrency, duration, calls[i]);
                    cpu[i] = CpuSample.Now().Since(before).Cores * 1e6 / Math.Max(1, results[i].OpsPerSecond);
                }

                if (open)
                {
                    ratios.Add(results[1].P99 / results[0].P99);
                    Console.WriteLine(Invariant($"| {round} | {results[0].P50:F2} | {results[0].P99:F2} | {cpu[0]:F0} | {results[1].P50:F2} | {results[1].P99:F2} | {cpu[1]:F0} | {ratios[^1]:F2} |{Failures(results)}"));
                }
                else
                {
                    ratios.Add(results[1].OpsPerSecond / results[0].OpsPerSecond);
                    Console.WriteLine(Invariant($"| {round} | {results[0].OpsPerSecond:N0} | {results[0].P99:F2} | {results[1].OpsPerSecond:N0} | {results[1].P99:F2} | {ratios[^1]:F2} |{Failures(results)}"));
                }
            }

            ratios.Sort();
            Console.WriteLine(Invariant($"median B ÷ A: {ratios[ratios.Count / 2]:F2} (range {ratios[0]:F2}-{ratios[^1]:F2}); load average {LoadAverage()}"));
            foreach (var client in clients)
            {
                client.Dispose();
            }

            return 0;
        }
        finally
        {
            foreach (var app in servers)
            {
                await app.StopAsync();
                await app.DisposeAsync();
            }

            Directory.Delete(root, recursive: true);
        }
    }

    // KMS_AB_PREFILL_AUDIT=N: B's audit table holds N more events before the measurement, so
    // the cost of an audited call can be compared against the table's size.
    private static long PrefillAudit =>
        long.TryParse(Environment.GetEnvironmentVariable("KMS_AB_PREFILL_AUDIT"), CultureInfo.InvariantCulture, out var n) ? n : 0;

    /// <summary>
    /// Copies of the last audit event (the sample call's) inserted under negative sequence numbers,
    /// in ascending order, while the server runs idle: the table and its principal index grow as
    /// a long run grows them, and the server's chain head (the highest seq) is unchanged. The
    /// copies do not verify as a chain; this is a measuring set-up, not a data set.
    /// </summary>
    private static async Task PrefillAuditAsync(string databasePath, long events)
    {
        var stopwatch = Stopwatch.StartNew();
        await using var connection = new Microsoft.Data.Sqlite.SqliteConnection($"Data Source={databasePath};Pooling=False");
        await connection.OpenAsync();
        await using (var timeout = connection.CreateCommand())
        {
            timeout.CommandText = "PRAGMA busy_timeout = 60000";
            await timeout.ExecuteNonQueryAsync();
        }

        const long Chunk = 500_000;
        for (var done = 0L; done < events; done += Chunk)
        {
            await using var insert = connection.CreateCommand();
            insert.CommandTimeout = 0;
            insert.CommandText = """
                INSERT INTO audit_events (seq, time, principal, tenant, operation, resource, outcome, body, hash)
                WITH RECURSIVE n(i) AS (SELECT @from UNION ALL SELECT i + 1 FROM n WHERE i < @to)
                SELECT i, e.time, e.principal, e.tenant, e.operation, e.resource, e.outcome, e.body, e.hash
                FROM n, (SELECT * FROM audit_events ORDER BY seq DESC LIMIT 1) e
                """;
            insert.Parameters.AddWithValue("@from", -events + done);
            insert.Parameters.AddWithValue("@to", Math.Min(-events + done + Chunk - 1, -1));
            await insert.ExecuteNonQueryAsync();
        }

        Console.WriteLine(Invariant($"B's audit table: {events:N0} events added in {stopwatch.Elapsed.TotalSeconds:F0} s; kms.db {new FileInfo(databasePath).Length / (1024.0 * 1024):N0} MiB"));
    }

    // A key and the closure that calls the operation on it.
    /// <summary>
    /// <c>ab … overload</c>: both servers offered GenerateDataKey at <paramref name="rate"/> (meant to be
    /// beyond their peak) on a schedule, from clients that do not retry and keep at most 4,000
    /// calls outstanding, as <c>perf</c>'s overload step: calls served per second and their
    /// latency, calls shed. The ratio is of the served calls' p50s.
    /// </summary>
    private static async Task<int> CompareOverloadAsync(TimeSpan duration, int rate, int rounds, List<Func<Task>> calls)
    {
        Console.WriteLine("| round | A served /s | A p50 ms | A p99 ms | A shed (by the client) | A not sent | B served /s | B p50 ms | B p99 ms | B shed (by the client) | B not sent | B ÷ A (p50) |");
        Console.WriteLine("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        var ratios = new List<double>();
        for (var round = 1; round <= rounds; round++)
        {
            var results = new StepResult[2];
            foreach (var i in round % 2 == 1 ? new[] { 0, 1 } : [1, 0])
            {
                results[i] = await LoadLoops.OpenAsync(rate, duration, calls[i], maxOutstanding: 4_000);
                await Task.Delay(TimeSpan.FromSeconds(2)); // the queue left behind drains before the other side's turn
            }

            ratios.Add(results[1].P50 / results[0].P50);
            var (a, b) = (results[0], results[1]);
            Console.WriteLine(Invariant($"| {round} | {a.OpsPerSecond:N0} | {a.P50:F2} | {a.P99:F2} | {a.Shed} ({a.ShedByClient}) | {a.NotSent} | {b.OpsPerSecond:N0} | {b.P50:F2} | {b.P99:F2} | {b.Shed} ({b.ShedByClient}) | {b.NotSent} | {ratios[^1]:F2} |{(a.Errors + b.Errors > 0 ? Invariant($" {a.Errors + b.Errors} errors") : "")}"));
        }

        ratios.Sort();
        Console.WriteLine(Invariant($"median B ÷ A (p50): {ratios[ratios.Count / 2]:F2} (range {ratios[0]:F2}-{ratios[^1]:F2}); load average {LoadAverage()}"));
        return 0;
    }

    internal static async Task<Func<Task>> OperationAsync(KmsClient client, string operation)
    {
        var key = await client.CreateKeyAsync("tenants/dev", "bench-" + operation);
        var context = new Dictionary<string, string> { ["bench"] = "perf", ["table"] = "orders" };
        using var sample = await client.GenerateDataKeyAsync(key.Name, context);
        var ciphertext = sample.Ciphertext;
        if (operation == "batch")
        {
            // BatchGenerateDataKey of 100: the figures are batches (×100 for data keys).
            var batch = new BatchGenerateDataKeyRequest();
            batch.Requests.Add(Enumerable.Range(0, 100).Select(_ => new GenerateDataKeyRequest { Name = key.Name }));
            return async () =>
            {
                var response = await client.Raw.BatchGenerateDataKeyAsync(batch);
                if (response.Results.Any(r => r.Status.Code != 0))
                {
                    throw new Grpc.Core.RpcException(new Grpc.Core.Status(Grpc.Core.StatusCode.Internal, "a batch item failed"));
                }
            };
        }

        if (operation == "batch-reencrypt")
        {
            // BatchReEncrypt of 100 ciphertexts under one key onto a second key: the figures are batches.
            var destination = await client.CreateKeyAsync("tenants/dev", "bench-" + operation + "-destination");
            var made = new BatchGenerateDataKeyRequest();
            made.Requests.Add(Enumerable.Range(0, 100).Select(_ => new GenerateDataKeyRequest { Name = key.Name }));
            var batch = new BatchReEncryptRequest();
            batch.Requests.Add((await client.Raw.BatchGenerateDataKeyAsync(made)).Results.Select(r => new ReEncryptRequest { Ciphertext = r.Response.Ciphertext, DestinationName = destination.Name }));
            return async () =>
            {
                var response = await client.Raw.BatchReEncryptAsync(batch);
                if (response.Results.Any(r => r.Status.Code != 0))
                {
                    throw new Grpc.Core.RpcException(new Grpc.Core.Status(Grpc.Core.StatusCode.Internal, "a batch item failed"));
                }
            };
        }

        if (operation is "mac" or "batch-mac")
        {
            // Blind-index beacons: "mac" one value per call (BlindIndex.ComputeAsync, a GenerateMac),
            // "batch-mac" 100 values per call (ComputeManyAsync, a BatchGenerateMac): the figures are calls.
            var version = (await client.CreateKeyAsync("tenants/dev", "bench-" + operation + "-key", KeyPurpose.Mac)).Primary.Name;
            var index = new BlindIndex(client, version, "users.email", 64);
            var values = Enumerable.Range(0, 100).Select(i => $"user{i}@example.com").ToList();
            return operation == "mac"
                ? async () => await index.ComputeAsync(values[0])
                : async () => await index.ComputeManyAsync(values);
        }

        if (operation == "batch-decrypt")
        {
            // BatchDecrypt of 100 ciphertexts under one key version: the figures are batches.
            var batch = new BatchDecryptRequest();
            var made = new BatchGenerateDataKeyRequest();
            made.Requests.Add(Enumerable.Range(0, 100).Select(_ => new GenerateDataKeyRequest { Name = key.Name }));
            batch.Requests.Add((await client.Raw.BatchGenerateDataKeyAsync(made)).Results.Select(r => new DecryptRequest { Ciphertext = r.Response.Ciphertext }));
            return async () =>
            {
                var response = await client.Raw.BatchDecryptAsync(batch);
                if (response.Results.Any(r => r.Status.Code != 0))
                {
                    throw new Grpc.Core.RpcException(new Grpc.Core.Status(Grpc.Core.StatusCode.Internal, "a batch item failed"));
                }
            };
        }

        return operation.StartsWith("decrypt", StringComparison.Ordinal)
            ? async () =>
            {
                using var plaintext = await client.DecryptAsync(ciphertext, context);
            }
        : async () =>
        {
            using var dataKey = await client.GenerateDataKeyAsync(key.Name, context);
        };
    }

    /// <summary>For profilers: one operation at one concurrency for a while, nothing else (prints the PID to attach to).</summary>
    public static async Task<int> HoldAsync(string operation, int concurrency, TimeSpan duration)
    {
        var (options, root) = BenchEnvironment.CreateToken();
        var app = await LoadGenerator.StartServerAsync(options, root, audit: !operation.EndsWith("-unaudited", StringComparison.Ordinal));
        WebApplication? bareApp = null;
        GrpcChannel? bareChannel = null;
        try
        {
            using var client = LoadGenerator.Connect(app, root);
            var call = await OperationAsync(client, operation == "bare" ? "generate" : operation);
            // "bare": the empty RPC on a second Kestrel of the same settings (the baseline's cost per call).
            if (operation == "bare")
            {
                (bareApp, var address) = await BareRpc.StartAsync(root);
                (call, bareChannel) = BareRpc.CallAsDeveloper(address, root);
            }

            // A negative concurrency -N is an open loop at N calls/s: a moderate rate, for a profile of what a call costs when calls do not share wake-ups and commits.
            Console.WriteLine(concurrency > 0
                ? $"pid {Environment.ProcessId}: {operation} at c={concurrency} for {duration.TotalSeconds} s"
                : $"pid {Environment.ProcessId}: {operation} open loop at {-concurrency} calls/s for {duration.TotalSeconds} s");
            // The figures are of a warm process: the JIT's last tier reached first (about 15 s of
            // load; its compiling thread took a quarter of the process's CPU until then).
            await LoadLoops.ClosedAsync(concurrency > 0 ? concurrency : 16, TimeSpan.FromSeconds(15), call);

            var before = CpuSample.Now();
            var result = concurrency > 0 ? await LoadLoops.ClosedAsync(concurrency, duration, call) : await LoadLoops.OpenAsync(-concurrency, duration, call);
            var after = CpuSample.Now();
            var cpu = after.Since(before);
            Console.WriteLine(Invariant($"{result.OpsPerSecond:N0} ops/s, p50 {result.P50:F2} ms, p99 {result.P99:F2} ms, {result.Errors + result.Shed} failed; process {cpu.Cores:F2} cores, {cpu.Cores * 1e6 / Math.Max(1, result.OpsPerSecond):F0} µs of CPU per call (client and server), {(double)after.SwitchesSince(before) / Math.Max(1, result.Calls):F2} context switches per call, steal {cpu.StealPercent:F1}%"));
            return 0;
        }
        finally
        {
            bareChannel?.Dispose();
            if (bareApp is not null)
            {
                await bareApp.StopAsync();
                await bareApp.DisposeAsync();
            }

            await app.StopAsync();
            await app.DisposeAsync();
            Directory.Delete(root, recursive: true);
        }
    }

    internal static JsonObject Json(StepResult r) => new()
    {
        ["ops_per_second"] = Math.Round(r.OpsPerSecond, 1),
        ["p50_ms"] = Math.Round(r.P50, 3),
        ["p90_ms"] = Math.Round(r.P90, 3),
        ["p99_ms"] = Math.Round(r.P99, 3),
        ["p999_ms"] = Math.Round(r.P999, 3),
        ["max_ms"] = Math.Round(r.Max, 3),
        ["calls"] = r.Calls,
        ["errors"] = r.Errors,
        ["shed"] = r.Shed,
        ["shed_by_client"] = r.ShedByClient,
        ["not_sent"] = r.NotSent,
    };

    internal static string? LoadAverage() =>
        File.Exists("/proc/loadavg") ? string.Join(' ', File.ReadAllText("/proc/loadavg").Split(' ').Take(3)) : null;

    private static string Failures(params StepResult[] results) =>
        results.Sum(r => r.Errors + r.Shed) is var n and > 0 ? Invariant($" {n} failed") : "";

    private static string Invariant(FormattableString text) => text.ToString(CultureInfo.InvariantCulture);
}

/// <summary>Raw Pkcs11Interop calls on one thread, one session, one session-object key: the floors.</summary>
internal static class RawHsm
{
    /// <summary>
    /// GCM encryptions of 32 bytes per second, or (with <paramref name="dataKeyFloor"/>) data
    /// keys per second made the way a data key is made: C_GenerateRandom of 44 bytes (key and
    /// IV), then C_Encrypt (AES-GCM) of the 32-byte key.
    /// </summary>
    public static double Measure(HsmOptions options, TimeSpan duration, bool dataKeyFloor)
    {
        var module = Pkcs11Module.Acquire(options.ModulePath, options.ModuleEnvironment);
        try
        {
            return module.Call(library =>
            {
                var slot = library.GetSlotList(SlotsType.WithTokenPresent).Single(s => s.GetTokenInfo().Label == options.TokenLabel);
                using var session = slot.OpenSession(SessionType.ReadWrite);
                session.Login(CKU.CKU_USER, options.Pin ?? File.ReadAllText(options.PinFile!).Trim());
                var a = module.Factories.ObjectAttributeFactory;
                using var generate = module.Factories.MechanismFactory.Create(CKM.CKM_AES_KEY_GEN);
                List<IObjectAttribute> template = [
                    a.Create(CKA.CKA_CLASS, CKO.CKO_SECRET_KEY), a.Create(CKA.CKA_KEY_TYPE, CKK.CKK_AES), a.Create(CKA.CKA_VALUE_LEN, 32UL),
                    a.Create(CKA.CKA_TOKEN, false), a.Create(CKA.CKA_ENCRYPT, true),
                ];
                var key = session.GenerateKey(generate, template);
                GC.KeepAlive(template); // Pkcs11Interop frees attribute memory in finalizers
                var plaintext = RandomNumberGenerator.GetBytes(32);
                var iv = RandomNumberGenerator.GetBytes(12);
                var count = 0;
                var stopwatch = Stopwatch.StartNew();
                while (stopwatch.Elapsed < duration)
                {
                    if (dataKeyFloor)
                    {
                        var random = session.GenerateRandom(44);
                        iv = random[32..];
                        plaintext = random[..32];
                    }

                    using var parameters = module.Factories.MechanismParamsFactory.CreateCkGcmParams(iv, 96, null, 128);
                    using var mechanism = module.Factories.MechanismFactory.Create(CKM.CKM_AES_GCM, parameters);
                    session.Encrypt(mechanism, key, plaintext);
                    count++;
                }

                var rate = count / stopwatch.Elapsed.TotalSeconds;
                session.DestroyObject(key);
                session.Logout();
                return rate;
            });
        }
        finally
        {
            module.Release();
        }
    }
}
