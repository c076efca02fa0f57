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

    /// <summary>
    /// <c>alloc-gzip [calls]</c>: bytes allocated per call (client and server in this process) for a
    /// BatchEncrypt of 5 MiB less 64 KiB — one item of 64 KiB of text, the rest an unknown field of
    /// zeros — sent uncompressed and gzipped, one call at a time: the difference is what the gzip
    /// path costs both ends (the client's compression, the server's inflation into its frame).
    /// </summary>
    public static async Task<int> RunGzipBatchAsync(int calls)
    {
        var (options, root) = BenchEnvironment.CreateToken();
        var app = await LoadGenerator.StartServerAsync(options, root, audit: false);
        try
        {
            using var client = LoadGenerator.Connect(app, root);
            var key = await client.CreateKeyAsync("tenants/dev", "alloc-gzip");
            var (invoker, channel) = BareRpc.Connect(Kms.Server.Hosting.KmsServerApp.BoundAddresses(app).Single(), root, File.ReadAllText(Path.Combine(root, "tokens", "developer.token")).Trim());
            using var _ = channel;
            var stub = new Kms.Contracts.V1.KeyManagementService.KeyManagementServiceClient(invoker);
            var request = PaddedBatch(key.Name, (5 * 1024 * 1024) - (64 * 1024));
            var gzip = new Grpc.Core.Metadata { { "grpc-internal-encoding-request", "gzip" } };
            Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"{calls} calls each at c=1, after {calls / 4} warm-up calls; a BatchEncrypt of {request.CalculateSize():N0} bytes; client and server in this process; durable audit off (dev mode)"));
            foreach (var (name, headers) in new[] { ("uncompressed", (Grpc.Core.Metadata?)null), ("gzip", gzip) })
            {
                await RunCallsAsync(calls / 4, 1, async () => await stub.BatchEncryptAsync(request, headers));
                using var listener = new AllocationListener();
                var before = GC.GetTotalAllocatedBytes(precise: true);
                await RunCallsAsync(calls, 1, async () => await stub.BatchEncryptAsync(request, headers));
                var perCall = (GC.GetTotalAllocatedBytes(precise: true) - before) / (double)calls;
                Console.WriteLine();
                Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"BatchEncrypt {name}: {perCall:N0} B/call"));
                foreach (var (type, bytes) in listener.Top(10))
                {
                    Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"  {bytes / (double)calls,12:N0} B/call  {type}"));
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

    // One item of 64 KiB of text, and an unknown bytes field (number 1000) of zeros that makes the request `total` bytes.
    private static Kms.Contracts.V1.BatchEncryptRequest PaddedBatch(string keyName, int total)
    {
        var plaintext = new byte[64 * 1024];
        for (var i = 0; i < plaintext.Length; i++)
        {
            plaintext[i] = (byte)"tenants/dev/keys/k "[i % 19];
        }

        var head = Google.Protobuf.MessageExtensions.ToByteArray(new Kms.Contracts.V1.BatchEncryptRequest { Requests = { new Kms.Contracts.V1.EncryptRequest { Name = keyName, Plaintext = Google.Protobuf.ByteString.CopyFrom(plaintext) } } });
        using var stream = new MemoryStream();
        stream.Write(head);
        var output = new Google.Protobuf.CodedOutputStream(stream, leaveOpen: true);
        output.WriteTag(1000, Google.Protobuf.WireFormat.WireType.LengthDelimited);
        output.WriteBytes(Google.Protobuf.ByteString.CopyFrom(new byte[total - head.Length - 6])); // the tag (2 bytes) and a 4-byte length
        output.Flush();
        return Kms.Contracts.V1.BatchEncryptRequest.Parser.ParseFrom(stream.ToArray());
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
