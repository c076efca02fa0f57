using System.Diagnostics;
using Google.Protobuf;
using Grpc.Core;
using Grpc.Health.V1;
using Grpc.Net.Client;
using Kms.Contracts.V1;
using Kms.Hsm;
using Kms.Testing;
using Microsoft.Extensions.DependencyInjection;
using Net.Pkcs11Interop.Common;
using Xunit.Abstractions;
using ServingStatus = Grpc.Health.V1.HealthCheckResponse.Types.ServingStatus;

namespace Kms.Server.Tests;

[CollectionDefinition(Name, DisableParallelization = true)]
public sealed class HsmFaultGroup
{
    // A device-lost fault re-initialises the PKCS#11 module, which every server in this process shares: run alone.
    public const string Name = "HSM faults (server)";
}

/// <summary>
/// The server under load while its HSM fails as a lost device does (faults injected at the
/// adapter's PKCS#11 boundary): every failed call is UNAVAILABLE within a bound, no call gets a
/// wrong answer, health goes NOT_SERVING, and once the fault clears the server serves and
/// reports SERVING again within 5 s, without a restart.
/// </summary>
[Collection(HsmFaultGroup.Name)]
public sealed class HsmFaultTests(ITestOutputHelper output) : IAsyncLifetime
{
    private static readonly TimeSpan CallTimeout = TimeSpan.FromSeconds(1);

    // Two bounded HSM waits per RPC (see Pkcs11Hsm.RunBoundedAsync), plus TLS, audit and a loaded 2-core machine.
    private static readonly TimeSpan AnswerBound = 2 * CallTimeout + TimeSpan.FromSeconds(1.5);
    private static readonly TimeSpan RecoveryBound = TimeSpan.FromSeconds(5);

    private KmsTestServer _server = null!;
    private string _keyName = null!;

    public async Task InitializeAsync()
    {
        _server = await KmsTestServer.StartAsync(null, null, "dev", extraArgs: [$"--Hsm:CallTimeout={CallTimeout}"]);
        using var client = _server.CreateClient();
        _keyName = (await client.CreateKeyAsync($"tenants/{_server.Tenant}", ServerFixture.NewKeyId())).Name;
    }

    public async Task DisposeAsync() => await _server.DisposeAsync();

    [Theory]
    [InlineData(CKR.CKR_DEVICE_REMOVED)]
    [InlineData(CKR.CKR_SESSION_HANDLE_INVALID)]
    [InlineData(CKR.CKR_TOKEN_NOT_PRESENT)]
    [InlineData(CKR.CKR_DEVICE_ERROR)]
    public Task UnderLoad_DeviceLost_UnavailableFastNeverWrong_NotServing_BackWithin5s(CKR fault) =>
        RunFaultAsync(fault.ToString(), faults => faults.Fail(fault), TimeSpan.FromSeconds(1.5));

    [Fact]
    public Task UnderLoad_HsmHangs_UnavailableAtTheTimeoutNeverWrong_NotServing_BackWithin5s() =>
        RunFaultAsync("hang", faults => faults.Hang(), TimeSpan.FromSeconds(2.5));

    [Fact]
    public async Task HsmHangs_ManyConcurrentHealthChecks_ShareOneProbe_HoldOneSession()
    {
        // Health needs no credential: were each check its own probe, a flood of them would hold
        // every HSM session while the HSM hangs (or is merely slow), and real calls would wait.
        // A server whose hung probe is not abandoned while the test looks: after Hsm:CallTimeout
        // the next check may rightly start a probe of its own (a recovery, which hangs too once its
        // drain gives up), and how many calls hang would depend on how loaded the machine is.
        await using var server = await KmsTestServer.StartAsync(null, null, "dev", extraArgs: ["--Hsm:CallTimeout=00:05:00"]);
        var faults = server.Services.GetRequiredService<Pkcs11Hsm>().Faults;
        var hsmCheck = server.Services.GetRequiredService<Health.HsmHealthCheck>();
        using var channel = server.CreateChannel();
        faults.Hang();
        List<Task<(ServingStatus Status, TimeSpan Took)>> checks;
        int waiting;
        int hung;
        try
        {
            checks = Enumerable.Range(0, 16).Select(_ => CheckAsync(channel)).ToList();

            // Every check has reached the server and waits for an answer (the health publisher's
            // run may wait beside them); the bound only ends a broken run, before the checks' deadline.
            var waited = Stopwatch.StartNew();
            while (hsmCheck.Waiting < checks.Count && waited.Elapsed < TimeSpan.FromSeconds(10))
            {
                await Task.Delay(20);
            }

            waiting = hsmCheck.Waiting;
            hung = faults.HungCalls;
        }
        finally
        {
            faults.Clear();
        }

        var answers = await Task.WhenAll(checks);
        Assert.True(waiting >= checks.Count, $"only {waiting} of {checks.Count} checks reached the HSM check");
        Assert.Equal(1, hung);
        Assert.All(answers, a => Assert.Equal(ServingStatus.Serving, a.Status)); // the one probe's answer: its hung call returned once the HSM was back
    }

    private async Task RunFaultAsync(string name, Action<HsmFaultInjector> inject, TimeSpan faultFor)
    {
        var faults = _server.Services.GetRequiredService<Pkcs11Hsm>().Faults;
        using var channel = _server.CreateChannel();
        var stub = new KeyManagementService.KeyManagementServiceClient(channel);
        var headers = KmsTestServer.Bearer(_server.DeveloperToken);
        var load = new Load();

        // Ciphertexts made before the fault, decrypted again throughout: the answer is the plaintext or UNAVAILABLE.
        var known = new List<(ByteString Plaintext, ByteString Ciphertext)>();
        for (var i = 0; i < 4; i++)
        {
            var dataKey = await stub.GenerateDataKeyAsync(new GenerateDataKeyRequest { Name = _keyName }, headers);
            known.Add((dataKey.Plaintext, dataKey.Ciphertext));
        }

        using var stop = new CancellationTokenSource();
        var workers = Enumerable.Range(0, 4).Select(w => Task.Run(() => WorkAsync(stub, headers, _keyName, known[w], load, stop.Token))).ToList();
        await load.UntilSucceededAsync(10);

        ServingStatus healthDuringFault;
        TimeSpan healthTook;
        int failedDuringFault;
        inject(faults);
        try
        {
            await Task.Delay(faultFor);
            (healthDuringFault, healthTook) = await CheckAsync(channel);
            failedDuringFault = load.Unavailable;
        }
        finally
        {
            faults.Clear(); // else stopping the server waits for the hung calls
        }

        var cleared = Stopwatch.StartNew();
        load.Cleared = Stopwatch.GetTimestamp();
        var serving = await UntilServingAsync(channel);
        var servingAfter = cleared.Elapsed;
        var succeededAfter = await load.FirstSuccessAfterClearAsync();
        await Task.Delay(300); // a little steady load after recovery
        await stop.CancelAsync();
        await Task.WhenAll(workers);

        output.WriteLine($"{name}: {load.Succeeded} ok, {load.Unavailable} UNAVAILABLE (slowest {load.SlowestFailure.TotalMilliseconds:F0} ms, slowest call {load.Slowest.TotalMilliseconds:F0} ms); " +
            $"health NOT_SERVING answered in {healthTook.TotalMilliseconds:F0} ms; after clearing: a call succeeded in {succeededAfter.TotalMilliseconds:F0} ms, SERVING in {servingAfter.TotalMilliseconds:F0} ms");

        Assert.Empty(load.Wrong);
        Assert.Empty(load.OtherStatus);
        Assert.True(failedDuringFault > 0, "the fault made no call fail");
        Assert.True(load.SlowestFailure < AnswerBound, $"a failed call took {load.SlowestFailure}");
        Assert.True(load.Slowest < AnswerBound, $"a call took {load.Slowest}");
        Assert.Equal(ServingStatus.NotServing, healthDuringFault);
        Assert.True(healthTook < AnswerBound, $"the health check took {healthTook}");
        Assert.True(serving, $"not SERVING {RecoveryBound} after the fault cleared");
        Assert.True(servingAfter < RecoveryBound, $"SERVING only after {servingAfter}");
        Assert.True(succeededAfter < RecoveryBound, $"first call served {succeededAfter} after the fault cleared");
    }

    private static async Task WorkAsync(KeyManagementService.KeyManagementServiceClient stub, Metadata headers, string keyName, (ByteString Plaintext, ByteString Ciphertext) known, Load load, CancellationToken stop)
    {
        while (!stop.IsCancellationRequested)
        {
            await load.TimeAsync(async deadline =>
            {
                var dataKey = await stub.GenerateDataKeyAsync(new GenerateDataKeyRequest { Name = keyName }, headers, deadline);
                var decrypted = await stub.DecryptAsync(new DecryptRequest { Ciphertext = dataKey.Ciphertext }, headers, deadline);
                return decrypted.Plaintext == dataKey.Plaintext ? null : "a fresh data key decrypted to other bytes";
            });
            await load.TimeAsync(async deadline =>
            {
                var decrypted = await stub.DecryptAsync(new DecryptRequest { Ciphertext = known.Ciphertext }, headers, deadline);
                return decrypted.Plaintext == known.Plaintext ? null : "a known ciphertext decrypted to other bytes";
            });
        }
    }

    private static async Task<(ServingStatus Status, TimeSpan Took)> CheckAsync(GrpcChannel channel)
    {
        var started = Stopwatch.StartNew();
        var response = await new global::Grpc.Health.V1.Health.HealthClient(channel).CheckAsync(new HealthCheckRequest(), deadline: DateTime.UtcNow.AddSeconds(15));
        return (response.Status, started.Elapsed);
    }

    private static async Task<bool> UntilServingAsync(GrpcChannel channel)
    {
        var deadline = Stopwatch.StartNew();
        while (deadline.Elapsed < RecoveryBound)
        {
            if ((await CheckAsync(channel)).Status == ServingStatus.Serving)
            {
                return true;
            }

            await Task.Delay(50);
        }

        return false;
    }

    /// <summary>What the load saw: outcomes, the slowest answers, and anything but the truth or UNAVAILABLE.</summary>
    private sealed class Load
    {
        private readonly Lock _lock = new();
        private long _slowestTicks;
        private long _slowestFailureTicks;
        private long _firstSuccessAfterClear;
        private int _succeeded;
        private int _unavailable;

        public long Cleared { get; set; }

        public int Succeeded => Volatile.Read(ref _succeeded);

        public int Unavailable => Volatile.Read(ref _unavailable);

        public TimeSpan Slowest => TimeSpan.FromTicks(Interlocked.Read(ref _slowestTicks));

        public TimeSpan SlowestFailure => TimeSpan.FromTicks(Interlocked.Read(ref _slowestFailureTicks));

        public List<string> Wrong { get; } = [];

        public List<string> OtherStatus { get; } = [];

        public async Task TimeAsync(Func<DateTime, Task<string?>> call)
        {
            var started = Stopwatch.GetTimestamp();
            string? wrong = null;
            StatusCode? failed = null;
            try
            {
                // Far beyond the bound: the server must answer on its own long before this deadline.
                wrong = await call(DateTime.UtcNow.AddSeconds(15));
            }
            catch (RpcException e)
            {
                failed = e.StatusCode;
            }

            var took = Stopwatch.GetElapsedTime(started);
            Max(ref _slowestTicks, took.Ticks);
            lock (_lock)
            {
                if (wrong is not null)
                {
                    Wrong.Add(wrong);
                }
                else if (failed is StatusCode.Unavailable)
                {
                    Interlocked.Increment(ref _unavailable);
                    Max(ref _slowestFailureTicks, took.Ticks);
                }
                else if (failed is { } status)
                {
                    OtherStatus.Add($"{status} after {took}");
                }
                else
                {
                    Interlocked.Increment(ref _succeeded);
                    if (Cleared != 0 && started > Cleared && _firstSuccessAfterClear == 0)
                    {
                        _firstSuccessAfterClear = Stopwatch.GetTimestamp();
                    }
                }
            }
        }

        public async Task UntilSucceededAsync(int calls)
        {
            var deadline = Stopwatch.StartNew();
            while (Succeeded < calls)
            {
                Assert.True(deadline.Elapsed < TimeSpan.FromSeconds(20), "the load never got going");
                await Task.Delay(20);
            }
        }

        public async Task<TimeSpan> FirstSuccessAfterClearAsync()
        {
            var deadline = Stopwatch.StartNew();
            while (Interlocked.Read(ref _firstSuccessAfterClear) == 0 && deadline.Elapsed < RecoveryBound + TimeSpan.FromSeconds(5))
            {
                await Task.Delay(20);
            }

            var first = Interlocked.Read(ref _firstSuccessAfterClear);
            return first == 0 ? TimeSpan.MaxValue : Stopwatch.GetElapsedTime(Cleared, first);
        }

        private static void Max(ref long slot, long value)
        {
            for (var seen = Interlocked.Read(ref slot); value > seen; seen = Interlocked.Read(ref slot))
            {
                if (Interlocked.CompareExchange(ref slot, value, seen) == seen)
                {
                    return;
                }
            }
        }
    }
}
