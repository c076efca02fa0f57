using System.Diagnostics;
using System.Globalization;
using Grpc.AspNetCore.Server;
using Grpc.Core;
using Grpc.Core.Interceptors;
using Kms.Client;
using Kms.Server.Hosting;
using Microsoft.AspNetCore.Builder;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;

namespace Kms.Bench;

/// <summary>
/// Two production-mode nodes on one PostgreSQL database, each shedding past
/// <c>Kms:MaxConcurrentCalls</c>, and one <see cref="KmsClient"/> (the SDK's defaults: 5 attempts,
/// backoff 100 ms … 2 s, probes every 5 s) over both, offered more calls than the pair serves
/// (closed loop of GenerateDataKey). Measured twice per round, alternating: with the shed answer
/// as the server gives it (UNAVAILABLE + <c>kms-shed</c>: the SDK keeps the node in the rotation),
/// and with the trailers taken off by an outermost interceptor — the answer the SDK got before
/// <c>kms-shed</c>, which took the node out until its next health probe.
/// </summary>
internal static class OverloadPairBench
{
    private static readonly TimeSpan WarmUp = TimeSpan.FromSeconds(3);
    private static readonly string[] Variants = ["trailers hidden (as before)", "kms-shed (now)"];

    public static async Task<int> RunAsync(TimeSpan duration, int concurrency, int maxCallsPerNode, int rounds)
    {
        Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"overload-pair: {Environment.ProcessorCount} cores; 2 nodes with Kms:MaxConcurrentCalls={maxCallsPerNode}, closed loop of GenerateDataKey at {concurrency}, {WarmUp.TotalSeconds:F0} s warm-up + {duration.TotalSeconds:F0} s per measurement, {rounds} round(s)"));
        var (tokens, config, root) = BenchEnvironment.CreateTokens(4 * (rounds + 1));
        var figures = new List<(int Round, int Variant, Figures F)>();
        try
        {
            StorageBench.ImportOneDomainKey(tokens);
            await using var cluster = await PostgresCluster.StartAsync();
            for (var round = 0; round <= rounds; round++)
            {
                int[] order = round % 2 == 1 ? [0, 1] : [1, 0];
                foreach (var variant in order)
                {
                    var mine = tokens.Skip((4 * round) + (2 * variant)).Take(2).ToArray();
                    var f = await MeasureAsync(root, config, mine, await StorageBench.PostgresArgumentsAsync(cluster), variant == 0, round == 0 ? WarmUp : duration, concurrency, maxCallsPerNode);
                    Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                        $"round {(round == 0 ? "0 (warm-up, not counted)" : round)}, {Variants[variant]}: served {f.Served:N0}/s, failed {f.Failed:N0}/s, p50 {f.P50:F1} ms"));
                    if (round > 0)
                    {
                        figures.Add((round, variant, f));
                    }
                }
            }
        }
        finally
        {
            Directory.Delete(root, recursive: true);
        }

        Console.WriteLine();
        Console.WriteLine("| round | shed answer | served /s | served p50 / p99 ms | failed /s (attempts ran out) | served by node 1 / node 2 | shed by the servers | endpoint-down events |");
        Console.WriteLine("|---:|---|---:|---:|---:|---:|---:|---:|");
        foreach (var (round, variant, f) in figures.OrderBy(x => x.Round).ThenBy(x => x.Variant))
        {
            Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"| {round} | {Variants[variant]} | {f.Served:N0} | {f.P50:F1} / {f.P99:F1} | {f.Failed:N0} | {f.ServedByNode[0]:N0} / {f.ServedByNode[1]:N0} | {f.ShedByServers:N0} | {f.EndpointDown} |"));
        }

        return 0;
    }

    private static async Task<Figures> MeasureAsync(string root, string config, BenchToken[] tokens, string[] storage, bool hideShed, TimeSpan duration, int concurrency, int maxCallsPerNode)
    {
        var nodes = new List<WebApplication>();
        var taps = new[] { new NodeTap(hideShed), new NodeTap(hideShed) };
        try
        {
            var (caCertificate, apiToken) = await StorageBench.StartNodesAsync(
                nodes, root, config, tokens, storage, [$"--Kms:MaxConcurrentCalls={maxCallsPerNode}"], (index, services) =>
                {
                    services.AddSingleton(taps[index]);
                    services.Configure<GrpcServiceOptions>(o =>
                    {
                        o.Interceptors.Add<NodeTap>();
                        var tap = o.Interceptors[^1];
                        o.Interceptors.RemoveAt(o.Interceptors.Count - 1);
                        o.Interceptors.Insert(0, tap); // outermost: it sees the answer as it leaves
                    });
                });
            var events = new EventCounter();
            using var loggerFactory = LoggerFactory.Create(b => b.AddProvider(events).SetMinimumLevel(LogLevel.Information));
            using var client = new KmsClient(
                new KmsClientOptions
                {
                    Endpoints = nodes.Select(n => KmsServerApp.BoundAddresses(n).Single()).ToList(),
                    CaCertificatePath = caCertificate,
                    ApiToken = apiToken,
                },
                loggerFactory);
            var key = await client.CreateKeyAsync($"tenants/{StorageBench.Tenant}", "overload");

            await RunLoopAsync(client, key.Name, concurrency, WarmUp);
            var (servedBefore0, servedBefore1) = (taps[0].Served, taps[1].Served);
            var shedBefore = taps[0].Shed + taps[1].Shed;
            var downBefore = events.EndpointDown;
            var (served, failed, p50, p99, seconds) = await RunLoopAsync(client, key.Name, concurrency, duration);
            return new Figures(
                served / seconds,
                failed / seconds,
                p50,
                p99,
                [(taps[0].Served - servedBefore0) / seconds, (taps[1].Served - servedBefore1) / seconds],
                taps[0].Shed + taps[1].Shed - shedBefore,
                events.EndpointDown - downBefore);
        }
        finally
        {
            foreach (var node in nodes)
            {
                await node.StopAsync();
                await node.DisposeAsync();
            }
        }
    }

    // Served calls' latencies only; a call whose attempts ran out is counted apart.
    private static async Task<(long Served, long Failed, double P50, double P99, double Seconds)> RunLoopAsync(KmsClient client, string keyName, int concurrency, TimeSpan duration)
    {
        var latencies = new List<double>[concurrency];
        long failed = 0;
        var stopwatch = Stopwatch.StartNew();
        await Task.WhenAll(Enumerable.Range(0, concurrency).Select(async worker =>
        {
            var mine = latencies[worker] = new List<double>(100_000);
            while (stopwatch.Elapsed < duration)
            {
                var started = Stopwatch.GetTimestamp();
                try
                {
                    using var dataKey = await client.GenerateDataKeyAsync(keyName);
                    mine.Add(Stopwatch.GetElapsedTime(started).TotalMilliseconds);
                }
                catch (RpcException e) when (e.StatusCode == StatusCode.Unavailable)
                {
                    Interlocked.Increment(ref failed);
                }
            }
        }));
        var seconds = stopwatch.Elapsed.TotalSeconds;
        var all = latencies.SelectMany(l => l).Order().ToArray();
        return (all.Length, Interlocked.Read(ref failed), LoadGenerator.Percentile(all, 0.50), LoadGenerator.Percentile(all, 0.99), seconds);
    }

    private sealed record Figures(double Served, double Failed, double P50, double P99, double[] ServedByNode, long ShedByServers, long EndpointDown);

    /// <summary>Outermost on a node: counts its served and shed unary calls, and hides the shed trailers when asked.</summary>
    private sealed class NodeTap(bool hideShed) : Interceptor
    {
        private long _served;
        private long _shed;

        public long Served => Interlocked.Read(ref _served);

        public long Shed => Interlocked.Read(ref _shed);

        public override async Task<TResponse> UnaryServerHandler<TRequest, TResponse>(TRequest request, ServerCallContext context, UnaryServerMethod<TRequest, TResponse> continuation)
        {
            try
            {
                var response = await continuation(request, context);
                Interlocked.Increment(ref _served);
                return response;
            }
            catch (RpcException e) when (e.Trailers.Get("kms-shed") is not null)
            {
                Interlocked.Increment(ref _shed);
                if (hideShed)
                {
                    throw new RpcException(e.Status); // the answer before kms-shed: UNAVAILABLE and its message only
                }

                throw;
            }
        }
    }

    /// <summary>Counts the SDK's "endpoint marked down" events (3001).</summary>
    private sealed class EventCounter : ILoggerProvider
    {
        private long _endpointDown;

        public long EndpointDown => Interlocked.Read(ref _endpointDown);

        public ILogger CreateLogger(string categoryName) => new Counter(this);

        public void Dispose()
        {
        }

        private sealed class Counter(EventCounter owner) : ILogger
        {
            public IDisposable? BeginScope<TState>(TState state)
                where TState : notnull => null;

            public bool IsEnabled(LogLevel logLevel) => logLevel >= LogLevel.Information;

            public void Log<TState>(LogLevel logLevel, EventId eventId, TState state, Exception? exception, Func<TState, Exception?, string> formatter)
            {
                if (eventId.Id == 3001)
                {
                    Interlocked.Increment(ref owner._endpointDown);
                }
            }
        }
    }
}
