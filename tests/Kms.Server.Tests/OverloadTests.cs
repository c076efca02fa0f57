using System.Diagnostics;
using System.Diagnostics.Metrics;
using Grpc.Core;
using Grpc.Health.V1;
using Kms.Client;
using Kms.Contracts.V1;
using Kms.Core.Services;
using Kms.Server.Hosting;
using Kms.Server.Observability;
using Kms.Server.Overload;
using Kms.Testing;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Options;

namespace Kms.Server.Tests;

[CollectionDefinition(Name, DisableParallelization = true)]
public sealed class ThreadPoolBlockingGroup
{
    // One test blocks this process's thread pool for a moment: run alone.
    public const string Name = "thread pool blocking";
}

/// <summary>
/// Load shedding (docs/benchmarks.md, "Overload"): calls past <c>Kms:MaxConcurrentCalls</c>, and a
/// growing fraction of calls while the thread pool's queue stands above its target — each answered
/// UNAVAILABLE at once, counted, aggregated in the audit, logged at most once a second; health and
/// other public calls are never shed.
/// </summary>
[Collection(ThreadPoolBlockingGroup.Name)]
public sealed class OverloadTests
{
    private static readonly TimeSpan Target = TimeSpan.FromMilliseconds(50);
    private static readonly TimeSpan Window = TimeSpan.FromSeconds(1);

    [Fact]
    public void Detector_WindowsWhoseShortestWaitExceedsTheTarget_RaiseTheFraction_PassingWindowsHalveItToZero()
    {
        var detector = new StandingQueueDetector(Target, Window);
        var now = TimeSpan.Zero;
        Assert.Equal(0, detector.ShedFraction);

        // Five windows in which no wait was short: 0.2 more each, up to everything.
        var expected = new[] { 0.2, 0.4, 0.6, 0.8, 1.0, 1.0 };
        foreach (var fraction in expected)
        {
            detector.Record(TimeSpan.FromMilliseconds(80), now);
            detector.Record(TimeSpan.FromMilliseconds(60), now + TimeSpan.FromMilliseconds(500));
            now += Window;
            detector.Record(TimeSpan.FromMilliseconds(70), now);
            Assert.Equal(fraction, detector.ShedFraction, 9);
        }

        Assert.Equal(TimeSpan.FromMilliseconds(60), detector.LastWindowMinimum);

        // The queue is gone (the first record closes the last standing window): halved each window, then nothing shed.
        for (var i = 0; i < 7; i++)
        {
            now += Window;
            detector.Record(TimeSpan.FromMilliseconds(1), now);
        }

        Assert.Equal(1.0 / 64, detector.ShedFraction, 9);
        now += Window;
        detector.Record(TimeSpan.FromMilliseconds(1), now);
        Assert.Equal(0, detector.ShedFraction);
    }

    [Fact]
    public void Detector_ABurstOrAPauseWithOneShortWaitInTheWindow_ShedsNothing()
    {
        var detector = new StandingQueueDetector(Target, Window);
        for (var second = 0; second < 10; second++)
        {
            var start = TimeSpan.FromSeconds(second);
            detector.Record(TimeSpan.FromMilliseconds(900), start);
            detector.Record(TimeSpan.FromMilliseconds(49), start + TimeSpan.FromMilliseconds(999));
        }

        Assert.Equal(0, detector.ShedFraction);

        // A wait exactly at the target is not above it.
        detector.Record(Target, TimeSpan.FromSeconds(11));
        detector.Record(Target, TimeSpan.FromSeconds(12));
        Assert.Equal(0, detector.ShedFraction);
    }

    [Fact]
    public async Task Server_WhileTheQueueStands_ShedsWithUnavailable_CountedAuditedAndLoggedOnce_HealthServed_ThenServesAgain()
    {
        var detector = new StandingQueueDetector(Target, Window);
        await using var server = await KmsTestServer.StartAsync(null, null, "dev", services => services.AddSingleton(new QueueDelayMonitor(detector)));
        using var developer = NonRetryingDeveloper(server);
        using var officer = server.CreateClient(await server.CreatePrincipalWithTokenAsync("officer", null, "security-officer"));
        await developer.GenerateRandomAsync(8);
        using var shed = new ShedCounter();

        var now = TimeSpan.Zero;
        while (detector.ShedFraction < 1)
        {
            detector.Record(TimeSpan.FromMilliseconds(200), now);
            now += Window;
        }

        const int Calls = 30;
        for (var i = 0; i < Calls; i++)
        {
            var e = await Assert.ThrowsAsync<RpcException>(() => developer.GenerateRandomAsync(8));
            Assert.Equal(StatusCode.Unavailable, e.StatusCode);
            Assert.Equal("the server is overloaded; retry with backoff", e.Status.Detail);
            Assert.Equal("queue_delay", e.Trailers.GetValue("kms-shed"));
        }

        Assert.Equal(Calls, shed.QueueDelay);
        Assert.Equal(0, shed.Capacity);

        // At most once a second is LogThrottle's promise, asserted on a fake clock (LogThrottleTests);
        // here, that the shed calls go through one throttle, not a line per call (30 lines from a
        // working throttle would take 30 calls spread over 30 s: a hang, not a slow machine).
        var logged = server.Logs.Events.Count(e => e.Contains("Reason=\"queue_delay\"", StringComparison.Ordinal));
        Assert.True(logged >= 1, "no shed call was logged");
        Assert.True(logged < Calls, $"{logged} lines for {Calls} shed calls: not throttled");

        // Health is public: never shed.
        using var channel = server.CreateChannel();
        var health = await new global::Grpc.Health.V1.Health.HealthClient(channel).CheckAsync(new HealthCheckRequest());
        Assert.Equal(HealthCheckResponse.Types.ServingStatus.Serving, health.Status);

        // The queue is gone: served again once the fraction has halved to nothing.
        while (detector.ShedFraction > 0)
        {
            detector.Record(TimeSpan.FromMilliseconds(1), now);
            now += Window;
        }

        await developer.GenerateRandomAsync(8);

        // The shed calls are refusals in the audit: aggregated, every one counted, none lost.
        await server.Services.GetRequiredService<AuditLog>().FlushRefusalsAsync(default);
        var events = (await officer.Audit.ListAuditEventsAsync(new ListAuditEventsRequest { Principal = "token:developer", Outcome = "UNAVAILABLE", PageSize = 1000 })).Events;
        Assert.Equal(Calls, events.Sum(e => e.Count));
        Assert.True(events.Count < Calls, $"{events.Count} audit events for {Calls} shed calls: not aggregated");
    }

    [Fact]
    public async Task Server_ShedCalls_SpendNoQuota()
    {
        // A shed answer says nothing of the call was done: its tenant's quota included. (Taken
        // before the shed, ten shed calls would have used up a burst of 3 and the fourth would
        // have been RESOURCE_EXHAUSTED.)
        var detector = new StandingQueueDetector(Target, Window);
        await using var server = await KmsTestServer.StartAsync(null, null, "dev", services => services.AddSingleton(new QueueDelayMonitor(detector)),
            "--Kms:Quotas:Tenants:dev:OperationsPerSecond=0.001", "--Kms:Quotas:Tenants:dev:Burst=3");
        using var developer = NonRetryingDeveloper(server);
        var now = TimeSpan.Zero;
        while (detector.ShedFraction < 1)
        {
            detector.Record(TimeSpan.FromMilliseconds(200), now);
            now += Window;
        }

        for (var i = 0; i < 10; i++)
        {
            Assert.Equal(StatusCode.Unavailable, (await Assert.ThrowsAsync<RpcException>(() => developer.GenerateRandomAsync(8))).StatusCode);
        }

        while (detector.ShedFraction > 0)
        {
            detector.Record(TimeSpan.FromMilliseconds(1), now);
            now += Window;
        }

        for (var i = 0; i < 3; i++)
        {
            Assert.Equal(8, (await developer.GenerateRandomAsync(8)).Length);
        }

        Assert.Equal(StatusCode.ResourceExhausted, (await Assert.ThrowsAsync<RpcException>(() => developer.GenerateRandomAsync(8))).StatusCode);
    }

    [Fact]
    public async Task Server_CallsRefusedForQuota_GiveBackTheirInFlightSlot()
    {
        // A call refused for its tenant's quota has taken an in-flight slot (quotas are taken after
        // it, so shed calls spend none): it must give it back, or a tenant at its quota would fill
        // the server's slots one refusal at a time and every caller would be shed.
        await using var server = await KmsTestServer.StartAsync(null, null, "dev",
            "--Kms:MaxConcurrentCalls=2", "--Kms:Quotas:Tenants:dev:OperationsPerSecond=0.001", "--Kms:Quotas:Tenants:dev:Burst=1");
        using var developer = NonRetryingDeveloper(server);
        Assert.Equal(8, (await developer.GenerateRandomAsync(8)).Length);

        for (var i = 0; i < 5; i++)
        {
            var e = await Assert.ThrowsAsync<RpcException>(() => developer.GenerateRandomAsync(8));
            Assert.True(e.StatusCode == StatusCode.ResourceExhausted, $"refusal {i}: {e.StatusCode} {e.Status.Detail}");
        }
    }

    [Fact]
    public async Task Server_AtMaxConcurrentCalls_ShedsWithUnavailable_HealthServed()
    {
        await using var server = await KmsTestServer.StartAsync(null, null, "dev", "--Kms:MaxConcurrentCalls=0");
        using var developer = NonRetryingDeveloper(server);
        using var shed = new ShedCounter();
        var e = await Assert.ThrowsAsync<RpcException>(() => developer.GenerateRandomAsync(8));
        Assert.Equal(StatusCode.Unavailable, e.StatusCode);
        Assert.Equal("the server is at capacity; retry with backoff", e.Status.Detail);
        Assert.Equal("capacity", e.Trailers.GetValue("kms-shed"));
        Assert.InRange(int.Parse(e.Trailers.GetValue("grpc-retry-pushback-ms")!, System.Globalization.CultureInfo.InvariantCulture), 50, 150);
        Assert.Equal(1, shed.Capacity);
        Assert.Contains(server.Logs.Events, line => line.Contains("Reason=\"capacity\"", StringComparison.Ordinal));

        using var channel = server.CreateChannel();
        Assert.Equal(HealthCheckResponse.Types.ServingStatus.Serving, (await new global::Grpc.Health.V1.Health.HealthClient(channel).CheckAsync(new HealthCheckRequest())).Status);
    }

    [Fact]
    public async Task Server_AtCapacity_SdkSendsEvenAOnceOnlyCreationAgain_EachAttemptShed()
    {
        // The shed answer crosses the interceptors and the wire with its trailers: the SDK sends a
        // CreateTenant (once-only: a lost answer to it is never retried) again, because the server
        // said it did nothing.
        await using var server = await KmsTestServer.StartAsync(null, null, "dev", "--Kms:MaxConcurrentCalls=0");
        using var admin = new KmsClient(new KmsClientOptions
        {
            Endpoint = server.Address,
            CaCertificatePath = server.CaCertificatePath,
            ApiToken = server.DeploymentAdminToken,
            Retry = new KmsRetryOptions { MaxAttempts = 3, BaseBackoff = TimeSpan.FromMilliseconds(10), MaxBackoff = TimeSpan.FromMilliseconds(200) },
        });
        using var shed = new ShedCounter();

        var e = await Assert.ThrowsAsync<RpcException>(() => admin.CreateTenantAsync("acme"));

        Assert.Equal(StatusCode.Unavailable, e.StatusCode);
        Assert.Equal("the server is at capacity; retry with backoff", e.Status.Detail);
        Assert.Equal(3, shed.Capacity);
        Assert.Equal(3, shed.ClientSawShed);
    }

    /// <summary>
    /// The real probe: with this process's thread pool held busy (every thread blocked, work
    /// queued behind them), the monitor starts shedding; once the pool is free, it stops.
    /// </summary>
    [Fact]
    public void Monitor_ThreadPoolHeldBusy_ShedsThenStopsWhenItIsFree()
    {
        var options = Options.Create(new KmsServerOptions { Overload = new OverloadOptions { QueueDelayTarget = TimeSpan.FromMilliseconds(5), Window = TimeSpan.FromMilliseconds(50) } });
        using var monitor = new QueueDelayMonitor(options);
        using var gate = new ManualResetEventSlim();
        var blockers = ThreadPool.ThreadCount + (4 * Environment.ProcessorCount) + 64;
        for (var i = 0; i < blockers; i++)
        {
            ThreadPool.UnsafeQueueUserWorkItem(static g => g.Wait(), gate, preferLocal: false);
        }

        try
        {
            Assert.True(SpinWait.SpinUntil(() => monitor.ShedFraction > 0, TimeSpan.FromSeconds(60)), "hang guard: no shedding within 60 s while the thread pool was held busy");
            Assert.True(monitor.QueueDelay > TimeSpan.FromMilliseconds(5), $"queue delay {monitor.QueueDelay}");
        }
        finally
        {
            gate.Set();
        }

        Assert.True(SpinWait.SpinUntil(() => monitor.ShedFraction == 0, TimeSpan.FromSeconds(60)), "hang guard: still shedding 60 s after the thread pool was freed");
    }

    // A shed call is seen as such, not retried.
    private static KmsClient NonRetryingDeveloper(KmsTestServer server) => new(new KmsClientOptions
    {
        Endpoint = server.Address,
        CaCertificatePath = server.CaCertificatePath,
        ApiToken = server.DeveloperToken,
        Retry = new KmsRetryOptions { MaxAttempts = 1 },
    });

    /// <summary>Counts <c>kms_calls_shed_total</c> by reason while it lives (the meter is process-wide).</summary>
    private sealed class ShedCounter : IDisposable
    {
        private readonly MeterListener _listener = new();
        private int _queueDelay;
        private int _capacity;
        private int _clientSawShed;

        public ShedCounter()
        {
            _listener.InstrumentPublished = (instrument, listener) =>
            {
                if ((instrument.Meter.Name == KmsMetrics.MeterName && instrument.Name == "calls_shed_total")
                    || (instrument.Meter.Name == "Kms.Client" && instrument.Name == "kms.client.calls_shed"))
                {
                    listener.EnableMeasurementEvents(instrument);
                }
            };
            _listener.SetMeasurementEventCallback<long>((instrument, value, tags, _) =>
            {
                foreach (var tag in tags)
                {
                    if (tag.Key == "reason")
                    {
                        _ = (string?)tag.Value == "queue_delay" ? Interlocked.Add(ref _queueDelay, (int)value) : Interlocked.Add(ref _capacity, (int)value);
                    }
                    else if (tag is { Key: "by", Value: "server" })
                    {
                        Interlocked.Add(ref _clientSawShed, (int)value);
                    }
                }
            });
            _listener.Start();
        }

        public int QueueDelay => Volatile.Read(ref _queueDelay);

        public int Capacity => Volatile.Read(ref _capacity);

        /// <summary>Shed answers the SDK counted (<c>kms.client.calls_shed</c>, <c>by=server</c>).</summary>
        public int ClientSawShed => Volatile.Read(ref _clientSawShed);

        public void Dispose() => _listener.Dispose();
    }
}
