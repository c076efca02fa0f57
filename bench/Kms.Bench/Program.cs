using System.Globalization;
using BenchmarkDotNet.Running;
using Kms.Bench;

// dotnet run -c Release --project bench/Kms.Bench -- micro [BenchmarkDotNet arguments]
// dotnet run -c Release --project bench/Kms.Bench -- load [seconds per step] [concurrencies, comma-separated]
switch (args.FirstOrDefault())
{
    case "micro":
        BenchmarkSwitcher.FromTypes([typeof(MicroBenchmarks)]).Run(args[1..]);
        return 0;
    case "load":
        var seconds = args.Length > 1 ? int.Parse(args[1], CultureInfo.InvariantCulture) : 5;
        var concurrencies = args.Length > 2 ? args[2].Split(',').Select(c => int.Parse(c, CultureInfo.InvariantCulture)).ToArray() : [1, 4, 16, 64];
        return await LoadGenerator.RunAsync(TimeSpan.FromSeconds(seconds), concurrencies);
    default:
        Console.Error.WriteLine("usage: Kms.Bench micro [BenchmarkDotNet args] | load [seconds] [1,4,16,64]");
        return 2;
}
