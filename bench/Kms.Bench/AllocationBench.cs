using System.Collections.Concurrent;
using System.Diagnostics.Tracing;
using System.Globalization;

namespace Kms.Bench;

/// <summary>
/// <c>alloc [calls] [concurrency]</c>: bytes allocated per call (client and server in this
/// process, <see cref="GC.GetTotalAllocatedBytes(bool)"/>) for the bare RPC, GenerateDataKey and
/// Decrypt, and the types allocated most during each, sampled by the runtime's
/// GCAllocationTick event (one sample per ~100 KB). Unlike throughput, allocation per call does
/// not depend on what else the machine is doing, so it is a before/after figure a noisy machine
/// cannot blur. What the KMS adds is its figure minus the bare RPC's.
/// </summary>
internal static class AllocationBench
{
    public static async Task<int> RunAsync(int calls, int concurrency, bool audit = true)
    {
        var (options, root) = BenchEnvironment.CreateToken();
        var app = await LoadGenerator.StartServerAsync(options, root, audit);
        var (bare, bareAddress) = await BareRpc.StartAsync(root);
        try
        {
            var (bareCall, bareChannel) = BareRpc.CallAsDeveloper(bareAddress, root);
            using var _ = bareChannel;
            using var client = LoadGenerator.Connect(app, root);
            var key = await client.CreateKeyAsync("tenants/dev", "alloc");
            var context = new Dictionary<string, string> { ["bench"] = "perf", ["table"] = "orders" };
            using var sample = await client.GenerateDataKeyAsync(key.Name, context);
            var operations = new (string Name, Func<Task> Call)[]
            {
                ("bare RPC", bareCall),
                ("GenerateDataKey", async () =>
                {
                    using var dataKey = await client.GenerateDataKeyAsync(key.Name, context);
                }),
                ("Decrypt", async () =>
                {
                    using var plaintext = await client.DecryptAsync(sample.Ciphertext, context);
                }),
            };

            Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"{calls} calls each at c={concurrency}, after {calls / 4} warm-up calls; client and server in this process; durable audit {(audit ? "on" : "off (dev mode)")}"));
            double? bareBytes = null;
            foreach (var (name, call) in operations)
            {
                await RunCallsAsync(calls / 4, concurrency, call);
                using var listener = new AllocationListener();
                var before = GC.GetTotalAllocatedBytes(precise: true);
                await RunCallsAsync(calls, concurrency, call);
                var perCall = (GC.GetTotalAllocatedBytes(precise: true) - before) / (double)calls;
                bareBytes ??= perCall;
                Console.WriteLine();
                Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                    $"{name}: {perCall:N0} B/call{(name == "bare RPC" ? "" : $", {perCall - bareBytes.Value:N0} B/call more than the bare RPC")}"));
                foreach (var (type, bytes) in listener.Top(20))
                {
                    Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"  {bytes / (double)calls,8:N0} B/call  {type}"));
                }
            }

            return 0;
        }
        finally
        {
            await bare.StopAsync();
            await bare.DisposeAsync();
            await app.StopAsync();
            await app.DisposeAsync();
            Directory.Delete(root, recursive: true);
        }
    }

    private static async Task RunCallsAsync(int calls, int concurrency, Func<Task> call)
    {
        var remaining = calls;
        await Task.WhenAll(Enumerable.Range(0, concurrency).Select(async _ =>
        {
            while (Interlocked.Decrement(ref remaining) >= 0)
            {
                await call();
            }
        }));
    }

    /// <summary>Sums the runtime's allocation samples (GCAllocationTick_V4) by type name.</summary>
    private sealed class AllocationListener : EventListener
    {
        private readonly ConcurrentDictionary<string, long> _bytes = new();

        public IEnumerable<(string Type, long Bytes)> Top(int count) =>
            _bytes.OrderByDescending(p => p.Value).Take(count).Select(p => (p.Key, p.Value));

        protected override void OnEventSourceCreated(EventSource eventSource)
        {
            if (eventSource.Name == "Microsoft-Windows-DotNETRuntime")
            {
                EnableEvents(eventSource, EventLevel.Verbose, (EventKeywords)0x1); // GC keyword
            }
        }

        protected override void OnEventWritten(EventWrittenEventArgs eventData)
        {
            if (eventData.EventName?.StartsWith("GCAllocationTick", StringComparison.Ordinal) != true || eventData.Payload is null)
            {
                return;
            }

            var names = eventData.PayloadNames!;
            var type = names.IndexOf("TypeName") is var t and >= 0 ? eventData.Payload[t] as string ?? "?" : "?";
            var amount = names.IndexOf("AllocationAmount64") is var a and >= 0 ? Convert.ToInt64(eventData.Payload[a], CultureInfo.InvariantCulture) : 0;
            _bytes.AddOrUpdate(type, amount, (_, sum) => sum + amount);
        }
    }
}
