using System.Globalization;
using BenchmarkDotNet.Running;
using Kms.Bench;

// dotnet run -c Release --project bench/Kms.Bench -- perf [seconds per step] [concurrencies] [result file]   (the performance issue's figures)
// dotnet run -c Release --project bench/Kms.Bench -- zipf [keys] [seconds per step] [concurrency] [soak minutes] [result file]
// dotnet run -c Release --project bench/Kms.Bench -- zipf-split [keys] [seconds per step] [concurrency] [soak minutes] [server args]   (the server in a process of its own: its RSS and CPU alone)
// dotnet run -c Release --project bench/Kms.Bench -- ab [seconds] [concurrency] [rounds] generate|decrypt|batch [server args A] -- [server args B]
// dotnet run -c Release --project bench/Kms.Bench -- soak [seconds] [result file]   (half of peak, 10 s windows: p99 and RSS)
// dotnet run -c Release --project bench/Kms.Bench -- cache-policy [keys] [capacity] [lookups] [recycle after]   (the caches' eviction alone, in memory)
// dotnet run -c Release --project bench/Kms.Bench -- micro [BenchmarkDotNet arguments]
// dotnet run -c Release --project bench/Kms.Bench -- load [seconds per step] [concurrencies, comma-separated]
// dotnet run -c Release --project bench/Kms.Bench -- envelope [BenchmarkDotNet arguments]
// dotnet run -c Release --project bench/Kms.Bench -- envelope-stream [MiB]
// dotnet run -c Release --project bench/Kms.Bench -- envelope-signed [rounds]   (one-shot encrypt+decrypt, suite 0x0001 against 0x0002, Stopwatch)
// dotnet run -c Release --project bench/Kms.Bench -- envelope-signed-cache [rounds]   (1 KiB signed encrypt, data-key cache off against on, Stopwatch)
// dotnet run -c Release --project bench/Kms.Bench -- gzip-check [BenchmarkDotNet arguments]   (the gzip body check's CRC-32 against inflation)
// dotnet run -c Release --project bench/Kms.Bench -- commit [commits]
// dotnet run -c Release --project bench/Kms.Bench -- stream [seconds] [concurrency] [backlog events]   (the SIEM stream file: its lag under load, and how fast it forwards a backlog, SQLite)
// dotnet run -c Release --project bench/Kms.Bench -- audit-page [events]   (one ListAuditEvents page of a sparse filter, unbounded against windowed; time ranges and retention's cut before and after the time summary; SQLite)
// dotnet run -c Release --project bench/Kms.Bench -- audit-summary [events]   (the audit time summary's cost a block of 10,000 events: through the store, and its statement alone with its plan; SQLite)
// dotnet run -c Release --project bench/Kms.Bench -- hsm-churn [calls] [recycle after]   (native memory an unwrapped-then-destroyed copy leaves behind)
// dotnet run -c Release --project bench/Kms.Bench -- sign [seconds per step] [concurrencies, comma-separated]
// DOTNET_TieredCompilation=0 dotnet run -c Release --project bench/Kms.Bench -- storage [seconds per setup] [concurrency] [rounds]
switch (args.FirstOrDefault())
{
    case "micro":
        BenchmarkSwitcher.FromTypes([typeof(MicroBenchmarks)]).Run(args[1..]);
        return 0;
    case "envelope":
        BenchmarkSwitcher.FromTypes([typeof(EnvelopeBenchmarks)]).Run(args[1..]);
        return 0;
    case "gzip-check":
        BenchmarkSwitcher.FromTypes([typeof(GzipCheckBench)]).Run(args[1..]);
        return 0;
    case "envelope-signed":
        return await EnvelopeSignedBench.RunAsync(args.Length > 1 ? int.Parse(args[1], CultureInfo.InvariantCulture) : 5);
    case "envelope-signed-cache":
        return await EnvelopeSignedBench.RunCacheAsync(args.Length > 1 ? int.Parse(args[1], CultureInfo.InvariantCulture) : 5);
    case "envelope-stream":
        return await EnvelopeStreamBench.RunAsync(args.Length > 1 ? int.Parse(args[1], CultureInfo.InvariantCulture) : 1024);
    case "hsm-churn":
        return await HsmChurnBench.RunAsync(
            args.Length > 1 ? int.Parse(args[1], CultureInfo.InvariantCulture) : 200_000,
            args.Length > 2 ? int.Parse(args[2], CultureInfo.InvariantCulture) : 0);
    case "hsm-trips":
        // hsm-trips [rounds] [seconds] [concurrency]
        return await HsmTripsBench.RunAsync(
            args.Length > 1 ? int.Parse(args[1], CultureInfo.InvariantCulture) : 6,
            TimeSpan.FromSeconds(args.Length > 2 ? int.Parse(args[2], CultureInfo.InvariantCulture) : 5),
            args.Length > 3 ? int.Parse(args[3], CultureInfo.InvariantCulture) : 16);
    case "sdk-share":
        // sdk-share [rounds] [seconds] [concurrency]: GenerateDataKey through the SDK vs a bare stub vs the bare RPC
        return await SdkShareBench.RunAsync(
            args.Length > 1 ? int.Parse(args[1], CultureInfo.InvariantCulture) : 4,
            TimeSpan.FromSeconds(args.Length > 2 ? int.Parse(args[2], CultureInfo.InvariantCulture) : 8),
            args.Length > 3 ? int.Parse(args[3], CultureInfo.InvariantCulture) : 64);
    case "audit-page":
        // audit-page [events]: one ListAuditEvents page of a sparse filter, unbounded (before) and windowed (after)
        return await AuditPageBench.RunAsync(args.Length > 1 ? int.Parse(args[1], CultureInfo.InvariantCulture) : 1_000_000);
    case "stream":
        // stream [seconds] [concurrency] [backlog events]: the SIEM stream file under a GenerateDataKey load, then a backlog of the whole log forwarded after a restart (SQLite)
        return await StreamBench.RunAsync(
            TimeSpan.FromSeconds(args.Length > 1 ? int.Parse(args[1], CultureInfo.InvariantCulture) : 15),
            args.Length > 2 ? int.Parse(args[2], CultureInfo.InvariantCulture) : 64,
            args.Length > 3 ? int.Parse(args[3], CultureInfo.InvariantCulture) : 200_000);
    case "audit-summary":
        // audit-summary [events]: the audit time summary's cost a block, through the store and the statement alone, with its plan
        return await AuditPageBench.RunSummaryAsync(args.Length > 1 ? int.Parse(args[1], CultureInfo.InvariantCulture) : 1_000_000);
    case "commit":
        return await CommitCost.RunAsync(args.Length > 1 ? int.Parse(args[1], CultureInfo.InvariantCulture) : 2000);
    case "perf":
        return await PerfSuite.RunAsync(Seconds(args), Concurrencies(args), args.Length > 3 ? args[3] : null);
    case "ab":
        {
            // ab seconds concurrency rounds operation [A args] -- [B args]; overload takes -rate
            var rest = args[5..];
            var split = Array.IndexOf(rest, "--");
            return await PerfSuite.CompareAsync(
                TimeSpan.FromSeconds(int.Parse(args[1], CultureInfo.InvariantCulture)),
                int.Parse(args[2], CultureInfo.InvariantCulture),
                int.Parse(args[3], CultureInfo.InvariantCulture),
                args[4],
                split < 0 ? rest : rest[..split],
                split < 0 ? [] : rest[(split + 1)..]);
        }

    case "zipf":
        // zipf [keys] [seconds per step] [concurrency] [soak minutes] [result file]
        return await ZipfBench.RunAsync(
            args.Length > 1 ? int.Parse(args[1], CultureInfo.InvariantCulture) : 100_000,
            TimeSpan.FromSeconds(args.Length > 2 ? int.Parse(args[2], CultureInfo.InvariantCulture) : 10),
            args.Length > 3 ? int.Parse(args[3], CultureInfo.InvariantCulture) : 16,
            TimeSpan.FromMinutes(args.Length > 4 ? double.Parse(args[4], CultureInfo.InvariantCulture) : 0),
            args.Length > 5 ? args[5] : null);
    case "zipf-split":
        return await ZipfSplit.RunAsync(
            args.Length > 1 ? int.Parse(args[1], CultureInfo.InvariantCulture) : 100_000,
            TimeSpan.FromSeconds(args.Length > 2 ? int.Parse(args[2], CultureInfo.InvariantCulture) : 10),
            args.Length > 3 ? int.Parse(args[3], CultureInfo.InvariantCulture) : 16,
            TimeSpan.FromMinutes(args.Length > 4 ? double.Parse(args[4], CultureInfo.InvariantCulture) : 0),
            args.Length > 5 ? args[5..] : [],
            null);
    case "serve":
        // The server half of zipf-split (spoken to over standard input and output).
        return await ZipfSplit.ServeAsync(args[1..]);
    case "cache-policy":
        // cache-policy [keys] [capacity] [lookups] [recycle after]: the caches' eviction alone, in memory
        return ZipfBench.CachePolicy(
            args.Length > 1 ? int.Parse(args[1], CultureInfo.InvariantCulture) : 100_000,
            args.Length > 2 ? int.Parse(args[2], CultureInfo.InvariantCulture) : 10_000,
            args.Length > 3 ? int.Parse(args[3], CultureInfo.InvariantCulture) : 5_000_000,
            args.Length > 4 ? int.Parse(args[4], CultureInfo.InvariantCulture) : 0);
    case "soak":
        // soak [seconds] [result file]
        return await SoakBench.RunAsync(TimeSpan.FromSeconds(args.Length > 1 ? int.Parse(args[1], CultureInfo.InvariantCulture) : 60), args.Length > 2 ? args[2] : null);
    case "alloc":
        // alloc [calls] [concurrency] [unaudited]
        return await AllocationBench.RunAsync(
            args.Length > 1 ? int.Parse(args[1], CultureInfo.InvariantCulture) : 20_000,
            args.Length > 2 ? int.Parse(args[2], CultureInfo.InvariantCulture) : 16,
            audit: args.Length <= 3 ? true : args[3] == "unaudited" ? false : throw new ArgumentException($"alloc: the fourth argument is 'unaudited' or nothing, not '{args[3]}'"));
    case "alloc-gzip":
        // alloc-gzip [calls]: a 5 MiB BatchEncrypt, uncompressed and gzipped
        return await AllocationBench.RunGzipBatchAsync(args.Length > 1 ? int.Parse(args[1], CultureInfo.InvariantCulture) : 40);
    case "hold":
        return await PerfSuite.HoldAsync(args[1], int.Parse(args[2], CultureInfo.InvariantCulture), TimeSpan.FromSeconds(int.Parse(args[3], CultureInfo.InvariantCulture)));
    case "load":
        // load [seconds] [1,4,16,64] [rounds]
        return await LoadGenerator.RunAsync(Seconds(args), Concurrencies(args), args.Length > 3 ? int.Parse(args[3], CultureInfo.InvariantCulture) : 3);
    case "sign":
        return await SignBench.RunAsync(Seconds(args), Concurrencies(args));
    case "usage-flush":
        // usage-flush [versions] [rounds] [postgres connection string]: one usage flush of many versions on SQLite (or PostgreSQL)
        return await UsageFlushBench.RunAsync(
            args.Length > 1 ? int.Parse(args[1], CultureInfo.InvariantCulture) : 30_000,
            args.Length > 2 ? int.Parse(args[2], CultureInfo.InvariantCulture) : 3,
            args.Length > 3 ? args[3] : null);
    case "storage":
        return await StorageBench.RunAsync(
            Seconds(args),
            args.Length > 2 ? int.Parse(args[2], CultureInfo.InvariantCulture) : 16,
            args.Length > 3 ? int.Parse(args[3], CultureInfo.InvariantCulture) : 2);
    case "overload-pair":
        // overload-pair [seconds] [concurrency] [max calls per node] [rounds]: two shedding nodes, one SDK client
        return await OverloadPairBench.RunAsync(
            Seconds(args),
            args.Length > 2 ? int.Parse(args[2], CultureInfo.InvariantCulture) : 128,
            args.Length > 3 ? int.Parse(args[3], CultureInfo.InvariantCulture) : 32,
            args.Length > 4 ? int.Parse(args[4], CultureInfo.InvariantCulture) : 3);
    default:
        Console.Error.WriteLine("usage: Kms.Bench perf [seconds] [1,4,16,64] [result.json] | soak [seconds] | cache-policy [keys] [capacity] [lookups] [recycle after] | zipf [keys] [seconds] [concurrency] [soak minutes] | ab seconds concurrency|-rate rounds generate|decrypt|batch|batch-decrypt|batch-reencrypt|overload [A args] -- [B args] (--client:MaxConcurrentCalls=N sets that side's client) | hold generate|decrypt|batch|batch-decrypt|batch-reencrypt|mac|batch-mac|bare|generate-unaudited concurrency|-rate seconds | micro [BenchmarkDotNet args] | load [seconds] [1,4,16,64] [rounds] | envelope [BenchmarkDotNet args] | gzip-check [BenchmarkDotNet args] | envelope-stream [MiB] | commit [commits] | stream [seconds] [concurrency] [backlog events] | audit-page [events] | audit-summary [events] | hsm-churn [calls] [recycle after] | sign [seconds] [1,4,16,64] | storage [seconds] [16] [2] | overload-pair [seconds] [128] [32] [3] | usage-flush [versions] [rounds] [postgres connection string]");
        return 2;
}

static TimeSpan Seconds(string[] args) => TimeSpan.FromSeconds(args.Length > 1 ? int.Parse(args[1], CultureInfo.InvariantCulture) : 5);

static int[] Concurrencies(string[] args) =>
    args.Length > 2 ? args[2].Split(',').Select(c => int.Parse(c, CultureInfo.InvariantCulture)).ToArray() : [1, 4, 16, 64];
