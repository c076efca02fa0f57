using System.Diagnostics;
using System.Diagnostics.Metrics;
using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;
using Kms.Client;
using Kms.Core.Keys;
using Kms.Core.Ports;
using Kms.Hsm;
using Kms.Storage;
using Microsoft.Extensions.DependencyInjection;

namespace Kms.Bench;

/// <summary>
/// Many keys, few hot: Decrypt over <c>keys</c> keys (one ciphertext each) with Zipf-distributed
/// access (s = 1), the HSM handle cache at 10,000, against Decrypt over 10 keys in the same run —
/// interleaved rounds. Counts what a cache miss costs (unwraps; object searches on the token must
/// stay at zero) and follows the process's resident memory (client and server together: an upper
/// bound on the server's) through an optional soak.
/// </summary>
internal static class ZipfBench
{
    public static async Task<int> RunAsync(int keyCount, TimeSpan duration, int concurrency, TimeSpan soak, string? outputPath)
    {
        var started = DateTimeOffset.UtcNow;
        var (options, root) = BenchEnvironment.CreateToken();
        var results = new JsonObject
        {
            ["suite"] = "zipf",
            ["started"] = started.ToString("O", CultureInfo.InvariantCulture),
            ["keys"] = keyCount,
            ["concurrency"] = concurrency,
            ["load_average_start"] = PerfSuite.LoadAverage(),
        };
        var counters = new HsmCounters();
        var failed = 0;
        var app = await LoadGenerator.StartServerAsync(options, root, audit: true, "--Hsm:KeyCacheCapacity=10000");
        try
        {
            using var client = LoadGenerator.Connect(app, root);
            var store = (SqlStore)app.Services.GetRequiredService<IKeyStore>();
            var hsm = (Pkcs11Hsm)app.Services.GetRequiredService<IHsm>();
            var context = new Dictionary<string, string> { ["bench"] = "zipf" };

            var setup = Stopwatch.StartNew();
            var ciphertexts = await CreateKeysAsync(client, keyCount, context);
            results["setup_seconds"] = setup.Elapsed.TotalSeconds;

            var (few, many) = await WarmLoadsAsync(client, ciphertexts, context, concurrency, duration);
            var rounds = new JsonArray();
            var ratios = new List<double>();
            Console.WriteLine();
            Console.WriteLine("| round | 10 keys ops/s | p99 ms | Zipf ops/s | p99 ms | Zipf ÷ 10 keys | handle-cache misses per call | unwraps | object searches | metadata hits | metadata misses unconfirmed | metadata forgotten | unwrapped, not cached | RSS MiB |");
            Console.WriteLine("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
            for (var round = 1; round <= 3; round++)
            {
                var a = await LoadLoops.ClosedAsync(concurrency, duration, few);
                var (hitsBefore, missesBefore, searchesBefore) = counters.Read();
                var (metaHitsBefore, metaMissesBefore, unconfirmedBefore, forgottenBefore) = store.MetadataCacheStatistics;
                var notCachedBefore = KeyHandleCache.NotCachedAfterUnwrap;
                var b = await LoadLoops.ClosedAsync(concurrency, duration, many);
                var (hits, misses, searches) = counters.Read();
                var (metaHits, metaMisses, unconfirmed, forgotten) = store.MetadataCacheStatistics;
                var notCached = KeyHandleCache.NotCachedAfterUnwrap - notCachedBefore;
                failed += a.Errors + a.Shed + b.Errors + b.Shed;
                var ratio = b.OpsPerSecond / a.OpsPerSecond;
                ratios.Add(ratio);
                var missRate = (double)(misses - missesBefore) / Math.Max(1, hits - hitsBefore + misses - missesBefore);
                var lookups = Math.Max(1, metaHits - metaHitsBefore + metaMisses - metaMissesBefore);
                var metaHitRate = (double)(metaHits - metaHitsBefore) / lookups;
                var unconfirmedRate = (double)(unconfirmed - unconfirmedBefore) / lookups;
                Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                    $"| {round} | {a.OpsPerSecond:N0} | {a.P99:F2} | {b.OpsPerSecond:N0} | {b.P99:F2} | {ratio:F2} | {missRate:P1} | {misses - missesBefore:N0} | {searches - searchesBefore} | {metaHitRate:P1} | {unconfirmedRate:P1} | {forgotten - forgottenBefore:N0} | {notCached:N0} | {ProcessMemory.RssMiB():F0} |"));
                rounds.Add(new JsonObject
                {
                    ["ten_keys"] = PerfSuite.Json(a),
                    ["zipf"] = PerfSuite.Json(b),
                    ["ratio"] = ratio,
                    ["handle_cache_miss_rate"] = missRate,
                    ["unwraps"] = misses - missesBefore,
                    ["object_searches"] = searches - searchesBefore,
                    ["metadata_cache_hit_rate"] = metaHitRate,
                    ["metadata_cache_unconfirmed_rate"] = unconfirmedRate,
                    ["metadata_cache_forgotten"] = forgotten - forgottenBefore,
                    ["handle_copies_not_cached"] = notCached,
                    ["rss_mib"] = ProcessMemory.RssMiB(),
                });
            }

            ratios.Sort();
            Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"median Zipf ÷ 10 keys: {ratios[1]:F2}"));
            results["rounds"] = rounds;
            results["median_ratio"] = ratios[1];

            // For a profiler: each load alone for a while, announced with the process id (docs/benchmarks.md, "Zipf").
            if (int.TryParse(Environment.GetEnvironmentVariable("KMS_ZIPF_HOLD_SECONDS"), CultureInfo.InvariantCulture, out var hold) && hold > 0)
            {
                foreach (var (name, load) in new[] { ("10 keys", few), ("zipf", many) })
                {
                    Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"hold {name}: pid {Environment.ProcessId} for {hold} s"));
                    var r = await LoadLoops.ClosedAsync(concurrency, TimeSpan.FromSeconds(hold), load);
                    failed += r.Errors + r.Shed;
                    Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"hold {name} done: {r.OpsPerSecond:N0} ops/s, p99 {r.P99:F2} ms"));
                }
            }

            // Soak: the Zipf load for a while, RSS sampled every 10 s, the process settled every 5 minutes.
            if (soak > TimeSpan.Zero)
            {
                var samples = new JsonArray();
                var soakClock = Stopwatch.StartNew();
                var step = TimeSpan.FromSeconds(10);
                Console.WriteLine();
                Console.WriteLine($"soak: {soak.TotalMinutes} min of Zipf Decrypt at c={concurrency}, RSS every 10 s");
                // Settled (full collection, then malloc_trim) at the start, every 5 minutes and at the end,
                // outside the timed windows: growth of what is left after a settle is growth, not a heap
                // that stayed large after a burst.
                var settled = new JsonArray { ProcessMemory.Settle(TimeSpan.Zero) };
                var nextSettle = TimeSpan.FromMinutes(5);
                while (soakClock.Elapsed < soak)
                {
                    if (soakClock.Elapsed >= nextSettle)
                    {
                        settled.Add(ProcessMemory.Settle(soakClock.Elapsed));
                        nextSettle += TimeSpan.FromMinutes(5);
                    }

                    var r = await LoadLoops.ClosedAsync(concurrency, step, many);
                    failed += r.Errors + r.Shed;
                    var rss = ProcessMemory.RssMiB();
                    samples.Add(new JsonObject { ["seconds"] = Math.Round(soakClock.Elapsed.TotalSeconds), ["rss_mib"] = rss, ["ops_per_second"] = r.OpsPerSecond, ["p99_ms"] = r.P99, ["hsm_recycles"] = hsm.Recycles });
                    Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"  {soakClock.Elapsed.TotalSeconds:F0} s: {r.OpsPerSecond:N0} ops/s, p99 {r.P99:F2} ms, RSS {rss:F0} MiB, HSM recycles {hsm.Recycles}"));
                }

                settled.Add(ProcessMemory.Settle(soakClock.Elapsed));
                results["soak"] = samples;
                results["soak_settled"] = settled;
            }
        }
        finally
        {
            await app.StopAsync();
            await app.DisposeAsync();
            Directory.Delete(root, recursive: true);
            counters.Dispose();
        }

        results["failed_calls"] = failed;
        results["load_average_end"] = PerfSuite.LoadAverage();
        outputPath ??= Path.Combine(BenchEnvironment.RepositoryRoot, "bench", "results", $"zipf-{started:yyyyMMdd-HHmmss}.json");
        Directory.CreateDirectory(Path.GetDirectoryName(outputPath)!);
        await File.WriteAllTextAsync(outputPath, results.ToJsonString(new JsonSerializerOptions { WriteIndented = true }));
        Console.WriteLine($"results: {outputPath}");
        return failed > 0 ? 1 : 0;
    }

    /// <summary>
    /// Zipf calls the warm-up serves before anything is measured: enough for the caches to reach their
    /// steady hit rate, not only to fill (<c>KMS_ZIPF_WARM_CALLS</c> overrides it). Simulated
    /// (<c>cache-policy</c>, handle cache of 10,000 over 100,000 keys, from empty): the admission by
    /// frequency hits 78.7 % of lookups 250,000 to 360,000, 79.4 % up to
    /// 700,000, ~80 % after 1,000,000 — it takes longer to settle than the MemoryCache policy before it
    /// (~77.6 % from 150,000 on), so 250,000 calls measured it still settling.
    /// </summary>
    internal static readonly int ZipfWarmUpCalls =
        int.TryParse(Environment.GetEnvironmentVariable("KMS_ZIPF_WARM_CALLS"), out var calls) ? calls : 1_000_000;

    /// <summary>
    /// Decrypt over 10 keys and over all of them (Zipf, s = 1, ranks shuffled over the keys), both
    /// warmed: the 10-key load briefly, the Zipf load in steps of <paramref name="duration"/> until it
    /// has served <see cref="ZipfWarmUpCalls"/> calls (the caches at their steady hit rates).
    /// </summary>
    internal static async Task<(Func<Task> Few, Func<Task> Many)> WarmLoadsAsync(KmsClient client, byte[][] ciphertexts, Dictionary<string, string> context, int concurrency, TimeSpan duration)
    {
        var zipf = new ZipfSampler(ciphertexts.Length, 1.0, seed: 20261130);
        Func<Task> few = async () =>
        {
            using var plaintext = await client.DecryptAsync(ciphertexts[Random.Shared.Next(10)], context);
        };
        Func<Task> many = async () =>
        {
            using var plaintext = await client.DecryptAsync(ciphertexts[zipf.Next()], context);
        };
        await LoadLoops.ClosedAsync(concurrency, TimeSpan.FromSeconds(2), few);
        var clock = Stopwatch.StartNew();
        var (served, failed) = (0, 0);
        while (served < ZipfWarmUpCalls)
        {
            var step = await LoadLoops.ClosedAsync(concurrency, duration, many);
            var ok = step.Calls - step.Errors - step.Shed;
            served += ok;
            failed += step.Errors + step.Shed;
            if (ok == 0)
            {
                throw new InvalidOperationException($"the Zipf warm-up served no call in {duration.TotalSeconds} s ({failed} failed)");
            }
        }

        Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"warmed: {served:N0} Zipf calls served in {clock.Elapsed.TotalSeconds:F0} s, {failed} failed"));
        return (few, many);
    }

    /// <summary>Keys z000000… and one ciphertext each, made through the API (16 at a time; not measured).</summary>
    internal static async Task<byte[][]> CreateKeysAsync(KmsClient client, int keyCount, Dictionary<string, string> context)
    {
        var clock = Stopwatch.StartNew();
        var ciphertexts = new byte[keyCount][];
        var next = -1;
        await Task.WhenAll(Enumerable.Range(0, 16).Select(async _ =>
        {
            int i;
            while ((i = Interlocked.Increment(ref next)) < keyCount)
            {
                var key = await client.CreateKeyAsync("tenants/dev", $"z{i:D6}");
                using var dataKey = await client.GenerateDataKeyAsync(key.Name, context);
                ciphertexts[i] = dataKey.Ciphertext;
                if ((i + 1) % 10_000 == 0)
                {
                    Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"  {i + 1:N0} keys in {clock.Elapsed.TotalSeconds:F0} s"));
                }
            }
        }));
        Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"{keyCount:N0} keys with a ciphertext each, made in {clock.Elapsed.TotalSeconds:F0} s; RSS {ProcessMemory.RssMiB():F0} MiB"));
        return ciphertexts;
    }

    /// <summary>
    /// The metadata cache's policy alone, in memory: <paramref name="lookups"/> Zipf(1) lookups over
    /// <paramref name="keyCount"/> keys against a cache of <paramref name="capacity"/>, a miss adding the
    /// entry as the store does. Printed beside the previous policy (drop a tenth in no particular order)
    /// and the ideal (the <paramref name="capacity"/> most popular keys always cached); then the HSM
    /// handle cache's policy, with a recycle after every <paramref name="recycleAfter"/> copies
    /// destroyed if it is positive. No HSM, no server.
    /// </summary>
    public static int CachePolicy(int keyCount, int capacity, int lookups, int recycleAfter)
    {
        var zipf = new ZipfSampler(keyCount, 1.0, seed: 20261130);
        var names = Enumerable.Range(0, keyCount).Select(i => $"tenants/dev/keys/zipf-{i}").ToArray();
        var sequence = new int[lookups];
        for (var i = 0; i < lookups; i++)
        {
            sequence[i] = zipf.Next();
        }

        var cache = new MetadataCache(capacity);
        cache.Confirm(TimeSpan.FromHours(1));
        var previous = new System.Collections.Concurrent.ConcurrentDictionary<string, string>(); // as the previous MetadataCache
        long ours = 0, theirs = 0;
        var clock = Stopwatch.StartNew();
        foreach (var index in sequence)
        {
            var name = names[index];
            if (cache.TryGet(name, out string _))
            {
                ours++;
            }
            else
            {
                cache.Add(name, name, cache.Generation);
            }
        }

        var elapsed = clock.Elapsed;
        clock.Restart();
        foreach (var index in sequence)
        {
            var name = names[index];
            if (previous.ContainsKey(name))
            {
                theirs++;
                continue;
            }

            if (previous.Count >= capacity)
            {
                foreach (var old in previous.Keys.Take(Math.Max(1, capacity / 10)).ToList())
                {
                    previous.TryRemove(old, out _);
                }
            }

            previous[name] = name;
        }

        var previousElapsed = clock.Elapsed;

        var harmonic = Enumerable.Range(1, keyCount).Sum(k => 1.0 / k);
        var ideal = Enumerable.Range(1, Math.Min(capacity, keyCount)).Sum(k => 1.0 / k) / harmonic;
        Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"Zipf(1) over {keyCount:N0} keys, cache of {capacity:N0}, {lookups:N0} lookups: hit rate {(double)ours / lookups:P1} (frequency sketch; {elapsed.TotalMilliseconds * 1000 / lookups:F2} µs a lookup incl. misses' adds), previous policy {(double)theirs / lookups:P1} ({previousElapsed.TotalMilliseconds * 1000 / lookups:F2} µs), ideal {ideal:P1}"));

        // The HSM handle cache, as the server runs it (W-TinyLFU with clocks, evictions inline),
        // with an unwrap that only counts: a lease taken and released per lookup; with recycles, a new
        // cache after every `recycleAfter` copies destroyed, as the module's re-initialisation makes.
        // (Carrying the frequency sketch over to the new cache was tried here: 0.0-0.9 points fewer
        // hits after 1,000,000 lookups, at every threshold from 50,000 to 500,000; not kept.)
        var ids = Enumerable.Range(0, keyCount).Select(_ => KeyVersionId.NewId()).ToArray();
        var factory = new Net.Pkcs11Interop.HighLevelAPI.Pkcs11InteropFactories().ObjectHandleFactory;
        var filling = Math.Min(lookups, ZipfWarmUpCalls); // as the zipf benchmarks' warm-up: the rate after it is what they measure
        var handles = new KeyHandleCache(1, capacity, TimeSpan.FromMinutes(10));
        long unwraps = 0, destroyed = 0, unwrapsWhileFilling = 0, recycles = 0, sinceRecycle = 0;
        clock.Restart();
        for (var i = 0; i < sequence.Length; i++)
        {
            var index = sequence[i];
            if (i == filling)
            {
                unwrapsWhileFilling = unwraps;
            }

            using (handles.Lease(ids[index], KeyHandleKind.Aes256Gcm, () => factory.Create((ulong)Interlocked.Increment(ref unwraps))))
            {
            }

            handles.DestroyPending(_ => sinceRecycle++);
            if (recycleAfter > 0 && sinceRecycle >= recycleAfter)
            {
                handles.Dispose(); // the module's C_Finalize: every copy gone
                handles = new KeyHandleCache(1 + ++recycles, capacity, TimeSpan.FromMinutes(10));
                destroyed += sinceRecycle;
                sinceRecycle = 0;
            }
        }

        destroyed += sinceRecycle;
        var recycling = recycleAfter > 0 ? $", a recycle every {recycleAfter:N0} destroyed ({recycles:N0})" : "";
        Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"handle cache of {capacity:N0}{recycling}: hit rate {1 - ((double)unwraps / lookups):P1}, after the first {filling:N0} lookups {1 - ((double)(unwraps - unwrapsWhileFilling) / Math.Max(1, lookups - filling)):P1} ({clock.Elapsed.TotalMilliseconds * 1000 / lookups:F2} µs a lookup), {destroyed:N0} destroyed, {handles.Count:N0} cached at the end"));
        handles.Dispose();

        return 0;
    }

    /// <summary>Ranks 0..n-1 drawn with P(k) ∝ 1/(k+1)^s, mapped through a fixed shuffle so the hot keys are spread.</summary>
    internal sealed class ZipfSampler
    {
        private readonly double[] _cdf;
        private readonly int[] _keyOfRank;

        public ZipfSampler(int n, double s, int seed)
        {
            _cdf = new double[n];
            var sum = 0.0;
            for (var k = 0; k < n; k++)
            {
                sum += 1 / Math.Pow(k + 1, s);
                _cdf[k] = sum;
            }

            for (var k = 0; k < n; k++)
            {
                _cdf[k] /= sum;
            }

            _keyOfRank = Enumerable.Range(0, n).ToArray();
            new Random(seed).Shuffle(_keyOfRank);
        }

        public int Next()
        {
            var index = Array.BinarySearch(_cdf, Random.Shared.NextDouble());
            return _keyOfRank[Math.Min(_cdf.Length - 1, index < 0 ? ~index : index)];
        }
    }

    /// <summary>The adapter's own counters, read through a listener on the <c>Kms</c> meter.</summary>
    internal sealed class HsmCounters : IDisposable
    {
        private readonly MeterListener _listener = new();
        private long _hits, _misses, _searches;

        public HsmCounters()
        {
            _listener.InstrumentPublished = (instrument, listener) =>
            {
                if (instrument.Meter.Name == "Kms" && instrument.Name is "hsm_key_cache_hits_total" or "hsm_key_cache_misses_total" or "hsm_object_searches_total")
                {
                    listener.EnableMeasurementEvents(instrument);
                }
            };
            _listener.SetMeasurementEventCallback<long>((instrument, value, _, _) =>
            {
                switch (instrument.Name)
                {
                    case "hsm_key_cache_hits_total":
                        Interlocked.Add(ref _hits, value);
                        break;
                    case "hsm_key_cache_misses_total":
                        Interlocked.Add(ref _misses, value);
                        break;
                    default:
                        Interlocked.Add(ref _searches, value);
                        break;
                }
            });
            _listener.Start();
        }

        public (long Hits, long Misses, long Searches) Read() => (Interlocked.Read(ref _hits), Interlocked.Read(ref _misses), Interlocked.Read(ref _searches));

        public void Dispose() => _listener.Dispose();
    }
}
