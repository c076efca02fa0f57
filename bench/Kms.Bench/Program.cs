using System.Globalization;
using BenchmarkDotNet.Running;
using Kms.Bench;

// dotnet run -c Release --project bench/Kms.Bench -- micro [BenchmarkDotNet arguments]
// dotnet run -c Release --project bench/Kms.Bench -- load [seconds per step] [concurrencies, comma-separated]
// dotnet run -c Release --project bench/Kms.Bench -- envelope [BenchmarkDotNet arguments]
// dotnet run -c Release --project bench/Kms.Bench -- envelope-stream [MiB]
// dotnet run -c Release --project bench/Kms.Bench -- commit [commits]
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
    case "envelope-stream":
        return await EnvelopeStreamBench.RunAsync(args.Length > 1 ? int.Parse(args[1], CultureInfo.InvariantCulture) : 1024);
    case "commit":
        return await CommitCost.RunAsync(args.Length > 1 ? int.Parse(args[1], CultureInfo.InvariantCulture) : 2000);
    case "load":
        return await LoadGenerator.RunAsync(Seconds(args), Concurrencies(args));
    case "sign":
        return await SignBench.RunAsync(Seconds(args), Concurrencies(args));
    case "storage":
        return await StorageBench.RunAsync(
            Seconds(args),
            args.Length > 2 ? int.Parse(args[2], CultureInfo.InvariantCulture) : 16,
            args.Length > 3 ? int.Parse(args[3], CultureInfo.InvariantCulture) : 2);
    default:
        Console.Error.WriteLine("usage: Kms.Bench micro [BenchmarkDotNet args] | load [seconds] [1,4,16,64] | envelope [BenchmarkDotNet args] | envelope-stream [MiB] | commit [commits] | sign [seconds] [1,4,16,64] | storage [seconds] [16] [2]");
        return 2;
}

static TimeSpan Seconds(string[] args) => TimeSpan.FromSeconds(args.Length > 1 ? int.Parse(args[1], CultureInfo.InvariantCulture) : 5);

static int[] Concurrencies(string[] args) =>
    args.Length > 2 ? args[2].Split(',').Select(c => int.Parse(c, CultureInfo.InvariantCulture)).ToArray() : [1, 4, 16, 64];
