using System.Globalization;
using Grpc.Core;
using Grpc.Net.Client;
using Kms.Contracts.V1;
using Kms.Server.Hosting;

namespace Kms.Bench;

/// <summary>
/// How much of a GenerateDataKey's cost is the client SDK's: the same call on the same server,
/// once through <c>KmsClient</c> (failover invoker, retry policy, deadline, the in-flight bound,
/// the returned <c>DataKey</c>) and once through a bare generated stub on a channel built as the
/// bare RPC's (<see cref="BareRpc.Connect"/>), with the bare RPC itself as the third side —
/// alternating in one process, so the machine's noise falls on all three alike. The load
/// generator shares the machine with the server, so the SDK's CPU is CPU the server does not get.
/// </summary>
internal static class SdkShareBench
{
    public static async Task<int> RunAsync(int rounds, TimeSpan duration, int concurrency)
    {
        var (options, root) = BenchEnvironment.CreateToken();
        var app = await LoadGenerator.StartServerAsync(options, root, audit: true);
        var (bareApp, bareAddress) = await BareRpc.StartAsync(root);
        GrpcChannel? bareChannel = null;
        GrpcChannel? stubChannel = null;
        try
        {
            using var client = LoadGenerator.Connect(app, root);
            var context = new Dictionary<string, string> { ["bench"] = "perf", ["table"] = "orders" };
            var key = await client.CreateKeyAsync("tenants/dev", "bench-sdk-share");
            (var bare, bareChannel) = BareRpc.CallAsDeveloper(bareAddress, root);
            var token = File.ReadAllText(Path.Combine(root, "tokens", "developer.token")).Trim();
            (var invoker, stubChannel) = BareRpc.Connect(KmsServerApp.BoundAddresses(app).Single(), root, token);
            var stub = new KeyManagementService.KeyManagementServiceClient(invoker);
            var request = new GenerateDataKeyRequest { Name = key.Name };
            request.EncryptionContext.Add(context);

            async Task Sdk()
            {
                using var dataKey = await client.GenerateDataKeyAsync(key.Name, context);
            }

            async Task Stub()
            {
                var response = await stub.GenerateDataKeyAsync(request);
                if (response.Plaintext.Length != 32)
                {
                    throw new RpcException(new Status(StatusCode.Internal, "no data key"));
                }
            }

            var sides = new (string Name, Func<Task> Call)[] { ("bare RPC", bare), ("stub", Stub), ("SDK", Sdk) };

            // Warm every side: the JIT's last tier (about 15 s of load in all), the caches.
            foreach (var (_, call) in sides)
            {
                await LoadLoops.ClosedAsync(concurrency, TimeSpan.FromSeconds(5), call);
            }

            Console.WriteLine(Invariant($"GenerateDataKey at c={concurrency}, {duration.TotalSeconds:F0} s a side, {rounds} rounds, the order rotating; load average {PerfSuite.LoadAverage()}"));
            Console.WriteLine("| round | bare ops/s | stub ops/s | SDK ops/s | stub ÷ bare | SDK ÷ bare | SDK ÷ stub | µs CPU/call bare / stub / SDK |");
            Console.WriteLine("|---:|---:|---:|---:|---:|---:|---:|---|");
            var ratios = new List<double>();
            for (var round = 1; round <= rounds; round++)
            {
                var results = new (double Ops, double Cpu)[sides.Length];
                for (var k = 0; k < sides.Length; k++)
                {
                    var index = (k + round) % sides.Length;
                    var before = CpuSample.Now();
                    var result = await LoadLoops.ClosedAsync(concurrency, duration, sides[index].Call);
                    var cpu = CpuSample.Now().Since(before);
                    if (result.Errors + result.Shed > 0)
                    {
                        throw new InvalidOperationException(Invariant($"{sides[index].Name}: {result.Errors + result.Shed} calls failed"));
                    }

                    results[index] = (result.OpsPerSecond, cpu.Cores * 1e6 / Math.Max(1, result.OpsPerSecond));
                }

                ratios.Add(results[2].Ops / results[1].Ops);
                Console.WriteLine(Invariant(
                    $"| {round} | {results[0].Ops:N0} | {results[1].Ops:N0} | {results[2].Ops:N0} | {results[1].Ops / results[0].Ops:F2} | {results[2].Ops / results[0].Ops:F2} | {results[2].Ops / results[1].Ops:F2} | {results[0].Cpu:F0} / {results[1].Cpu:F0} / {results[2].Cpu:F0} |"));
            }

            ratios.Sort();
            Console.WriteLine(Invariant($"median SDK ÷ stub: {ratios[ratios.Count / 2]:F2} (range {ratios[0]:F2}-{ratios[^1]:F2}); load average {PerfSuite.LoadAverage()}"));
            return 0;
        }
        finally
        {
            stubChannel?.Dispose();
            bareChannel?.Dispose();
            await bareApp.StopAsync();
            await bareApp.DisposeAsync();
            await app.StopAsync();
            await app.DisposeAsync();
            Directory.Delete(root, recursive: true);
        }
    }

    private static string Invariant(FormattableString text) => text.ToString(CultureInfo.InvariantCulture);
}
