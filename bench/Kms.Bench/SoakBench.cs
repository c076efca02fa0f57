using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;

namespace Kms.Bench;

/// <summary>
/// A bounded soak: GenerateDataKey and Decrypt (half each) offered on a schedule at half of the
/// measured peak for a while, in 10-second windows, each reporting throughput, p99 and the
/// process's RSS (client and server together: an upper bound on the server's). Exits 1 on any
/// failed call. Shed calls (UNAVAILABLE) and calls the client could not send are reported, not
/// failed: on a shared machine "half of the peak measured a minute ago" can turn into more than
/// the machine has, and shedding is then the designed answer. Flatness is reported (first and
/// last windows side by side), not asserted.
/// RSS alone cannot tell a leak from server GC keeping a larger heap after a burst, so the soak
/// also settles the process after the first window, every 10 minutes and at the end (between windows, outside
/// any measurement): an aggressive full collection that compacts and returns free memory, after
/// which the managed heap is what is live and RSS less the GC's committed memory is native memory
/// (SoftHSM's objects, SQLite's cache, stacks, code). A leak grows one of the two.
/// </summary>
internal static class SoakBench
{
    public static async Task<int> RunAsync(TimeSpan duration, string? outputPath)
    {
        var started = DateTimeOffset.UtcNow;
        var (options, root) = BenchEnvironment.CreateToken();
        var app = await LoadGenerator.StartServerAsync(options, root, audit: true);
        var windows = new JsonArray();
        var results = new JsonObject();
        var failed = 0;
        try
        {
            using var client = LoadGenerator.Connect(app, root);
            var key = await client.CreateKeyAsync("tenants/dev", "soak");
            var context = new Dictionary<string, string> { ["bench"] = "soak" };
            var ciphertexts = new byte[64][];
            for (var i = 0; i < ciphertexts.Length; i++)
            {
                using var dataKey = await client.GenerateDataKeyAsync(key.Name, context);
                ciphertexts[i] = dataKey.Ciphertext;
            }

            var next = 0;
            Func<Task> mixed = async () =>
            {
                var n = Interlocked.Increment(ref next) & int.MaxValue;
                if (n % 2 == 0)
                {
                    using var dataKey = await client.GenerateDataKeyAsync(key.Name, context);
                }
                else
                {
                    using var plaintext = await client.DecryptAsync(ciphertexts[n % ciphertexts.Length], context);
                }
            };

            // The peak of this mix on this machine now (closed loop, c=64, after a warm-up).
            await LoadLoops.ClosedAsync(64, TimeSpan.FromSeconds(3), mixed);
            var peak = await LoadLoops.ClosedAsync(64, TimeSpan.FromSeconds(5), mixed);
            var rate = peak.OpsPerSecond / 2;
            Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"peak {peak.OpsPerSecond:N0} ops/s; soaking at {rate:N0} ops/s for {duration.TotalSeconds:F0} s in 10 s windows"));
            var settled = new JsonArray();
            Console.WriteLine("| window end s | ops/s | p50 ms | p99 ms | shed | errors | RSS MiB | heap after last GC MiB | process cores | CPU µs per call | machine steal % | threads |");
            Console.WriteLine("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
            var step = TimeSpan.FromSeconds(Math.Min(10, duration.TotalSeconds));
            var elapsed = TimeSpan.Zero;
            var settleEvery = TimeSpan.FromMinutes(10);
            while (elapsed < duration)
            {
                // The first settle follows the first window: before it, the peak measurement's latency
                // buffers (64 × 200,000 doubles) are still on the large-object heap.
                if (elapsed == step || (elapsed > TimeSpan.Zero && elapsed.Ticks % settleEvery.Ticks == 0))
                {
                    settled.Add(ProcessMemory.Settle(elapsed));
                }

                var before = CpuSample.Now();
                var window = await LoadLoops.OpenAsync(rate, step, mixed);
                var cpu = CpuSample.Now().Since(before);
                elapsed += step;
                failed += window.Errors;
                var rss = ProcessMemory.RssMiB();
                var heap = GC.GetGCMemoryInfo().HeapSizeBytes / 1048576.0;
                Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                    $"| {elapsed.TotalSeconds:F0} | {window.OpsPerSecond:N0} | {window.P50:F2} | {window.P99:F2} | {window.Shed} | {window.Errors + window.NotSent} | {rss:F0} | {heap:F0} | {cpu.Cores:F2} | {cpu.Cores * 1e6 / Math.Max(1, window.OpsPerSecond):F0} | {cpu.StealPercent:F1} | {cpu.Threads} |"));
                windows.Add(new JsonObject
                {
                    ["end_seconds"] = elapsed.TotalSeconds,
                    ["result"] = PerfSuite.Json(window),
                    ["rss_mib"] = rss,
                    ["heap_mib"] = heap,
                    ["process_cores"] = cpu.Cores,
                    ["steal_percent"] = cpu.StealPercent,
                    ["threads"] = cpu.Threads,
                });
            }

            settled.Add(ProcessMemory.Settle(elapsed));
            results["settled"] = settled;

            if (windows.Count >= 2)
            {
                var first = windows[0]!;
                var last = windows[^1]!;
                Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                    $"first window: p99 {(double)first["result"]!["p99_ms"]!:F2} ms, RSS {(double)first["rss_mib"]!:F0} MiB; last: p99 {(double)last["result"]!["p99_ms"]!:F2} ms, RSS {(double)last["rss_mib"]!:F0} MiB"));
            }
        }
        finally
        {
            await app.StopAsync();
            await app.DisposeAsync();
            Directory.Delete(root, recursive: true);
        }

        results["suite"] = "soak";
        results["started"] = started.ToString("O", CultureInfo.InvariantCulture);
        results["seconds"] = duration.TotalSeconds;
        results["windows"] = windows;
        results["failed_calls"] = failed;
        results["load_average_end"] = PerfSuite.LoadAverage();
        outputPath ??= Path.Combine(BenchEnvironment.RepositoryRoot, "bench", "results", $"soak-{started:yyyyMMdd-HHmmss}.json");
        Directory.CreateDirectory(Path.GetDirectoryName(outputPath)!);
        await File.WriteAllTextAsync(outputPath, results.ToJsonString(new JsonSerializerOptions { WriteIndented = true }));
        Console.WriteLine($"results: {outputPath}");
        if (failed > 0)
        {
            Console.Error.WriteLine($"soak: {failed} calls failed");
            return 1;
        }

        return 0;
    }
}

/// <summary>
/// The process's CPU and the machine's steal time between two samples: whether a window's latency
/// came from this process doing more per call or from the host taking the cores away (this VM
/// shares its host).
/// </summary>
internal readonly record struct CpuSample(long Timestamp, TimeSpan ProcessCpu, long MachineSteal, long MachineTotal, long VoluntarySwitches, long InvoluntarySwitches)
{
    public static CpuSample Now()
    {
        using var process = System.Diagnostics.Process.GetCurrentProcess();
        // /proc/stat's first line: cpu user nice system idle iowait irq softirq steal guest guest_nice (ticks).
        var fields = File.ReadLines("/proc/stat").First().Split(' ', StringSplitOptions.RemoveEmptyEntries)[1..]
            .Select(f => long.Parse(f, CultureInfo.InvariantCulture)).ToArray();
        var (voluntary, involuntary) = ContextSwitches();
        return new(System.Diagnostics.Stopwatch.GetTimestamp(), process.TotalProcessorTime, fields[7], fields[..8].Sum(), voluntary, involuntary);
    }

    /// <summary>The context switches of every thread of the process, ended ones included (getrusage's ru_nvcsw, ru_nivcsw).</summary>
    public long SwitchesSince(CpuSample before) => VoluntarySwitches + InvoluntarySwitches - before.VoluntarySwitches - before.InvoluntarySwitches;

    private static unsafe (long Voluntary, long Involuntary) ContextSwitches()
    {
        // struct rusage on 64-bit Linux: two timevals (32 bytes), then 14 longs; ru_nvcsw is the 13th, ru_nivcsw the 14th.
        var usage = stackalloc long[18];
        return getrusage(0, usage) == 0 ? (usage[16], usage[17]) : (0, 0);
    }

    [System.Runtime.InteropServices.DllImport("libc", SetLastError = true)]
    private static extern unsafe int getrusage(int who, long* usage);

    public (double Cores, double StealPercent, int Threads) Since(CpuSample before)
    {
        var wall = System.Diagnostics.Stopwatch.GetElapsedTime(before.Timestamp, Timestamp).TotalSeconds;
        var total = MachineTotal - before.MachineTotal;
        using var process = System.Diagnostics.Process.GetCurrentProcess();
        return ((ProcessCpu - before.ProcessCpu).TotalSeconds / wall, total == 0 ? 0 : 100.0 * (MachineSteal - before.MachineSteal) / total, process.Threads.Count);
    }
}
