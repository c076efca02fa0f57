using System.Diagnostics;
using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;
using Kms.Client;
using Kms.Core.Ports;
using Kms.Hsm;
using Kms.Server.Hosting;
using Kms.Storage;
using Microsoft.Extensions.DependencyInjection;

namespace Kms.Bench;

/// <summary>
/// The Zipf load with the server in a process of its own (this program, <c>serve</c>), so that
/// what is measured is the server's alone: its resident memory (now and at its peak,
/// <c>VmHWM</c>), settled on request (full collection and <c>malloc_trim</c>, in the server), and
/// its CPU per call — the load generator, its 100,000 ciphertexts and its client are not in it.
/// </summary>
internal static class ZipfSplit
{
    private static readonly Dictionary<string, string> Context = new() { ["bench"] = "zipf" };

    /// <summary>
    /// The server process: a token of its own, the server on it, one line <c>ready ENDPOINT ROOT</c>;
    /// then commands on standard input: <c>settle SECONDS</c> (prints the settle and the HSM's
    /// recycles, then <c>done</c>), <c>exit</c>.
    /// </summary>
    public static async Task<int> ServeAsync(string[] serverArgs)
    {
        var (options, root) = BenchEnvironment.CreateToken();
        using var counters = new ZipfBench.HsmCounters();
        var app = await LoadGenerator.StartServerAsync(options, root, audit: true, serverArgs);
        try
        {
            var hsm = (Pkcs11Hsm)app.Services.GetRequiredService<IHsm>();
            var store = (SqlStore)app.Services.GetRequiredService<IKeyStore>();
            Console.WriteLine($"ready {KmsServerApp.BoundAddresses(app).Single()} {root}");
            string? line;
            while ((line = await Console.In.ReadLineAsync()) is not null && line != "exit")
            {
                if (line.StartsWith("settle ", StringComparison.Ordinal))
                {
                    ProcessMemory.Settle(TimeSpan.FromSeconds(double.Parse(line[7..], CultureInfo.InvariantCulture)));
                    Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"HSM recycles {hsm.Recycles}"));
                    Console.WriteLine("done");
                }
                else if (line == "cache")
                {
                    // Counts so far: handle-cache hits and misses, metadata-cache hits and misses.
                    var (hits, misses, _) = counters.Read();
                    var (metaHits, metaMisses, _, _) = store.MetadataCacheStatistics;
                    Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"cache {hits} {misses} {metaHits} {metaMisses}"));
                }
                else if (line == "stat")
                {
                    // Unsettled: what the GC has committed and what the C heap holds now, no collection.
                    // With the heap the last collection left (live and not yet collected, e.g. dead
                    // objects in generation 2 waiting for a full collection) and the count of those.
                    var malloc = ProcessMemory.MallocInfo();
                    var gc = GC.GetGCMemoryInfo();
                    Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"stat {gc.TotalCommittedBytes / 1048576.0:F0} {malloc.InUse:F0} {malloc.Free:F0} {gc.HeapSizeBytes / 1048576.0:F0} {GC.CollectionCount(2)}"));
                }
            }

            return 0;
        }
        finally
        {
            await app.StopAsync();
            await app.DisposeAsync();
            Directory.Delete(root, recursive: true);
        }
    }

    /// <summary>
    /// <paramref name="keyCount"/> keys made through the API, three interleaved rounds of Decrypt
    /// over 10 keys and over all of them (Zipf, s = 1), then a soak of the Zipf load in 10-s windows:
    /// the server's RSS, peak RSS and cores each window, settled every 5 minutes.
    /// </summary>
    public static async Task<int> RunAsync(int keyCount, TimeSpan duration, int concurrency, TimeSpan soak, string[] serverArgs, string? outputPath)
    {
        var started = DateTimeOffset.UtcNow;
        using var server = await ServerProcess.StartAsync(["--Hsm:KeyCacheCapacity=10000", .. serverArgs]);
        var results = new JsonObject
        {
            ["suite"] = "zipf-split",
            ["started"] = started.ToString("O", CultureInfo.InvariantCulture),
            ["keys"] = keyCount,
            ["concurrency"] = concurrency,
            ["server_args"] = string.Join(' ', serverArgs.Select(a => a.Split('=')[0])),
        };
        var failed = 0;
        using var client = new KmsClient(new KmsClientOptions
        {
            Endpoint = server.Endpoint,
            CaCertificatePath = Path.Combine(server.Root, "tls", "ca.crt"),
            ApiTokenPath = Path.Combine(server.Root, "tokens", "developer.token"),
        });
        Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"server pid {server.Pid}: RSS {server.Status("VmRSS:"):F0} MiB at start"));
        var ciphertexts = await ZipfBench.CreateKeysAsync(client, keyCount, Context);
        Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"server RSS {server.Status("VmRSS:"):F0} MiB, peak {server.TakePeak():F0} MiB while making the keys"));
        results["keys_peak_rss_mib"] = server.RunPeak;

        var (few, many) = await ZipfBench.WarmLoadsAsync(client, ciphertexts, Context, concurrency, duration);
        var warmPeak = server.TakePeak();
        results["warm_peak_rss_mib"] = warmPeak;
        Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"server RSS {server.Status("VmRSS:"):F0} MiB, peak {warmPeak:F0} MiB while warming"));
        Console.WriteLine();
        Console.WriteLine("| round | 10 keys ops/s | server cores | server CPU µs per call | server peak RSS MiB | Zipf ops/s | server cores | server CPU µs per call | server peak RSS MiB | Zipf handle-cache misses | Zipf metadata-cache hits | Zipf ÷ 10 keys |");
        Console.WriteLine("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        var rounds = new JsonArray();
        var ratios = new List<double>();
        for (var round = 1; round <= 3; round++)
        {
            var (a, aCores) = await server.MeasureAsync(() => LoadLoops.ClosedAsync(concurrency, duration, few));
            var aPeak = server.TakePeak();
            var before = await server.CacheCountsAsync();
            var (b, bCores) = await server.MeasureAsync(() => LoadLoops.ClosedAsync(concurrency, duration, many));
            var bPeak = server.TakePeak();
            var after = await server.CacheCountsAsync();
            var handleMisses = (double)(after.Misses - before.Misses) / Math.Max(1, after.Hits - before.Hits + after.Misses - before.Misses);
            var metadataHits = (double)(after.MetadataHits - before.MetadataHits) / Math.Max(1, after.MetadataHits - before.MetadataHits + after.MetadataMisses - before.MetadataMisses);
            failed += a.Errors + a.Shed + b.Errors + b.Shed;
            ratios.Add(b.OpsPerSecond / a.OpsPerSecond);
            Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"| {round} | {a.OpsPerSecond:N0} | {aCores:F2} | {aCores * 1e6 / a.OpsPerSecond:F0} | {aPeak:F0} | {b.OpsPerSecond:N0} | {bCores:F2} | {bCores * 1e6 / b.OpsPerSecond:F0} | {bPeak:F0} | {handleMisses:P1} | {metadataHits:P1} | {ratios[^1]:F2} |"));
            rounds.Add(new JsonObject
            {
                ["ten_keys"] = PerfSuite.Json(a),
                ["ten_keys_server_cores"] = aCores,
                ["ten_keys_server_peak_rss_mib"] = aPeak,
                ["zipf"] = PerfSuite.Json(b),
                ["zipf_server_cores"] = bCores,
                ["zipf_server_peak_rss_mib"] = bPeak,
                ["zipf_handle_cache_miss_rate"] = handleMisses,
                ["zipf_metadata_cache_hit_rate"] = metadataHits,
                ["ratio"] = ratios[^1],
            });
        }

        ratios.Sort();
        Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"median Zipf ÷ 10 keys: {ratios[1]:F2}"));
        results["rounds"] = rounds;
        results["median_ratio"] = ratios[1];

        var samples = new JsonArray();
        var settled = new JsonArray();
        if (soak > TimeSpan.Zero)
        {
            Console.WriteLine();
            Console.WriteLine($"soak: {soak.TotalMinutes} min of Zipf Decrypt at c={concurrency}; the server settled every 5 minutes");
            settled.Add(await server.SettleAsync(TimeSpan.Zero));
            var clock = Stopwatch.StartNew();
            var nextSettle = TimeSpan.FromMinutes(5);
            Console.WriteLine("| s | ops/s | p99 ms | server RSS MiB | server peak RSS MiB in the window | server cores | GC committed MiB | GC heap after the last collection MiB | full collections | malloc in use MiB | malloc free MiB |");
            Console.WriteLine("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
            while (clock.Elapsed < soak)
            {
                if (clock.Elapsed >= nextSettle)
                {
                    settled.Add(await server.SettleAsync(clock.Elapsed));
                    nextSettle += TimeSpan.FromMinutes(5);
                }

                var (r, cores) = await server.MeasureAsync(() => LoadLoops.ClosedAsync(concurrency, TimeSpan.FromSeconds(10), many));
                failed += r.Errors + r.Shed;
                var (rss, peak) = (server.Status("VmRSS:"), server.TakePeak());
                var (committed, inUse, free, heap, fullCollections) = await server.StatAsync();
                Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"| {clock.Elapsed.TotalSeconds:F0} | {r.OpsPerSecond:N0} | {r.P99:F2} | {rss:F0} | {peak:F0} | {cores:F2} | {committed:F0} | {heap:F0} | {fullCollections} | {inUse:F0} | {free:F0} |"));
                samples.Add(new JsonObject { ["seconds"] = Math.Round(clock.Elapsed.TotalSeconds), ["result"] = PerfSuite.Json(r), ["server_rss_mib"] = rss, ["server_peak_rss_mib"] = peak, ["server_cores"] = cores, ["server_gc_committed_mib"] = committed, ["server_gc_heap_mib"] = heap, ["server_gen2_collections"] = fullCollections, ["server_malloc_in_use_mib"] = inUse, ["server_malloc_free_mib"] = free });
            }

            settled.Add(await server.SettleAsync(clock.Elapsed));
        }

        results["soak"] = samples;
        results["settled"] = settled;
        server.TakePeak();
        results["server_peak_rss_mib"] = server.RunPeak;
        results["failed_calls"] = failed;
        Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"server peak RSS over the whole run (the highest VmHWM of its phases): {server.RunPeak:F0} MiB; {failed} failed calls"));
        outputPath ??= Path.Combine(BenchEnvironment.RepositoryRoot, "bench", "results", $"zipf-split-{started:yyyyMMdd-HHmmss}.json");
        Directory.CreateDirectory(Path.GetDirectoryName(outputPath)!);
        await File.WriteAllTextAsync(outputPath, results.ToJsonString(new JsonSerializerOptions { WriteIndented = true }));
        Console.WriteLine($"results: {outputPath}");
        return failed > 0 ? 1 : 0;
    }

    /// <summary>This program run as <c>serve</c>, spoken to over its standard input and output.</summary>
    private sealed class ServerProcess : IDisposable
    {
        private readonly Process _process;

        private ServerProcess(Process process, Uri endpoint, string root) => (_process, Endpoint, Root) = (process, endpoint, root);

        public Uri Endpoint { get; }

        public string Root { get; }

        public int Pid => _process.Id;

        /// <summary>Debian's jemalloc (<c>libjemalloc2</c>), if installed.</summary>
        public static string? Jemalloc() =>
            Directory.Exists("/usr/lib")
                ? Directory.EnumerateDirectories("/usr/lib", "*-linux-gnu").Select(d => Path.Combine(d, "libjemalloc.so.2")).FirstOrDefault(File.Exists)
                : null;

        public static async Task<ServerProcess> StartAsync(string[] serverArgs)
        {
            var start = new ProcessStartInfo(Environment.ProcessPath!) { RedirectStandardInput = true, RedirectStandardOutput = true, UseShellExecute = false };
            if (Path.GetFileNameWithoutExtension(Environment.ProcessPath) == "dotnet")
            {
                start.ArgumentList.Add(typeof(ZipfSplit).Assembly.Location);
            }

            // As ./dev.sh and the container image start the server (README, configuration).
            if (!start.Environment.ContainsKey("MALLOC_ARENA_MAX"))
            {
                start.Environment["MALLOC_ARENA_MAX"] = "2";
            }

            // The C allocator, as ./dev.sh picks it: jemalloc if installed (with its MALLOC_CONF), unless
            // KMS_MALLOC=glibc; KMS_SERVER_PRELOAD names another library to preload into the server alone.
            var preload = Environment.GetEnvironmentVariable("KMS_SERVER_PRELOAD");
            if (string.IsNullOrEmpty(preload) && Environment.GetEnvironmentVariable("KMS_MALLOC") is null or "jemalloc")
            {
                preload = Jemalloc();
            }

            if (!string.IsNullOrEmpty(preload))
            {
                start.Environment["LD_PRELOAD"] = preload;
                if (!start.Environment.ContainsKey("MALLOC_CONF"))
                {
                    start.Environment["MALLOC_CONF"] = "narenas:2,dirty_decay_ms:2000";
                }
            }

            var allocator = string.IsNullOrEmpty(preload)
                ? $"glibc's malloc, MALLOC_ARENA_MAX={start.Environment["MALLOC_ARENA_MAX"]}"
                : $"LD_PRELOAD={preload}, MALLOC_CONF={start.Environment["MALLOC_CONF"]}";
            Console.WriteLine($"server C allocator: {allocator}");

            start.ArgumentList.Add("serve");
            foreach (var arg in serverArgs)
            {
                start.ArgumentList.Add(arg);
            }

            var process = Process.Start(start) ?? throw new InvalidOperationException("the server process did not start");
            try
            {
                var ready = await ReadUntilAsync(process, "ready ");
                var parts = ready.Split(' ');
                return new ServerProcess(process, new Uri(parts[1]), parts[2]);
            }
            catch
            {
                process.Kill();
                process.Dispose();
                throw;
            }
        }

        /// <summary>The highest peak <see cref="TakePeak"/> has returned: the run's peak resident memory.</summary>
        public double RunPeak { get; private set; }

        /// <summary>
        /// The server's peak resident memory (<c>VmHWM</c>) since the last call, in MiB, then resets it
        /// (writing 5 to <c>/proc/PID/clear_refs</c>, Linux ≥ 4.0), so that each phase reports its own peak.
        /// </summary>
        public double TakePeak()
        {
            var peak = Status("VmHWM:");
            RunPeak = Math.Max(RunPeak, peak);
            File.WriteAllText($"/proc/{Pid}/clear_refs", "5");
            return peak;
        }

        /// <summary>A field of /proc/PID/status in MiB (VmRSS: now; VmHWM: the peak so far).</summary>
        public double Status(string field) => ProcessMemory.StatusKiB(field, Pid.ToString(CultureInfo.InvariantCulture)) / 1024;

        /// <summary>Runs <paramref name="load"/> and returns its result with the server's cores over it (user + system time).</summary>
        public async Task<(StepResult Result, double Cores)> MeasureAsync(Func<Task<StepResult>> load)
        {
            var (cpu, wall) = (CpuSeconds(), Stopwatch.GetTimestamp());
            var result = await load();
            return (result, (CpuSeconds() - cpu) / Stopwatch.GetElapsedTime(wall).TotalSeconds);
        }

        /// <summary>The server's cache counts so far: handle-cache hits and misses, metadata-cache hits and misses.</summary>
        public async Task<(long Hits, long Misses, long MetadataHits, long MetadataMisses)> CacheCountsAsync()
        {
            await _process.StandardInput.WriteLineAsync("cache");
            await _process.StandardInput.FlushAsync();
            var fields = (await ReadUntilAsync(_process, "cache ")).Split(' ');
            return (long.Parse(fields[1], CultureInfo.InvariantCulture), long.Parse(fields[2], CultureInfo.InvariantCulture), long.Parse(fields[3], CultureInfo.InvariantCulture), long.Parse(fields[4], CultureInfo.InvariantCulture));
        }

        /// <summary>The server's GC-committed memory, C heap (in use, free) and GC heap after its last collection, in MiB, and its count of generation-2 collections, without settling.</summary>
        public async Task<(double GcCommitted, double MallocInUse, double MallocFree, double GcHeap, int FullCollections)> StatAsync()
        {
            await _process.StandardInput.WriteLineAsync("stat");
            await _process.StandardInput.FlushAsync();
            var fields = (await ReadUntilAsync(_process, "stat ")).Split(' ');
            return (double.Parse(fields[1], CultureInfo.InvariantCulture), double.Parse(fields[2], CultureInfo.InvariantCulture), double.Parse(fields[3], CultureInfo.InvariantCulture), double.Parse(fields[4], CultureInfo.InvariantCulture), int.Parse(fields[5], CultureInfo.InvariantCulture));
        }

        public async Task<JsonObject> SettleAsync(TimeSpan at)
        {
            await _process.StandardInput.WriteLineAsync(string.Create(CultureInfo.InvariantCulture, $"settle {at.TotalSeconds:F0}"));
            await _process.StandardInput.FlushAsync();
            var lines = new JsonArray();
            string line;
            while ((line = await ReadUntilAsync(_process, "")) != "done")
            {
                if (line.StartsWith("settled at", StringComparison.Ordinal) || line.StartsWith("HSM recycles", StringComparison.Ordinal))
                {
                    Console.WriteLine("server: " + line);
                    lines.Add(line);
                }
            }

            return new JsonObject { ["at_seconds"] = at.TotalSeconds, ["lines"] = lines };
        }

        public void Dispose()
        {
            try
            {
                _process.StandardInput.WriteLine("exit");
                _process.StandardInput.Flush();
                if (!_process.WaitForExit(TimeSpan.FromSeconds(30)))
                {
                    _process.Kill();
                }
            }
            catch (IOException)
            {
                // Already gone.
            }

            _process.Dispose();
        }

        private double CpuSeconds()
        {
            _process.Refresh();
            return _process.TotalProcessorTime.TotalSeconds;
        }

        // The server's log lines (JSON) share its standard output: skipped.
        private static async Task<string> ReadUntilAsync(Process process, string prefix)
        {
            while (true)
            {
                var line = await process.StandardOutput.ReadLineAsync() ?? throw new InvalidOperationException("the server process ended");
                if (line.StartsWith(prefix, StringComparison.Ordinal) && !line.StartsWith('{'))
                {
                    return line;
                }
            }
        }
    }
}
