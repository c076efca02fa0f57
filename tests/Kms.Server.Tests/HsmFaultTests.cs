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
/// adapter's PKCS#11 boundary): failed calls are UNAVAILABLE and keep being answered while the
/// fault is held, no call gets a wrong answer, health goes NOT_SERVING, and once the fault clears
/// one recovery brings the server back to serving and reporting SERVING, without a restart.
/// </summary>
/// <remarks>
/// No assertion here reads a clock. The fault is held until every worker has had calls answered
/// UNAVAILABLE during it, however long that takes: a server that waited for the device would answer
/// nobody, and the hang guard would end the test. How long the answers took against Hsm:CallTimeout,
/// and the recovery backoff, are asserted on the adapter itself (Kms.Hsm.Tests.HsmFaultTests).
/// </remarks>
[Collection(HsmFaultGroup.Name)]
public sealed class HsmFaultTests(ITestOutputHelper output) : IAsyncLifetime
{
    private static readonly TimeSpan CallTimeout = TimeSpan.FromSeconds(1);

    // A liveness guard, not a threshold: far beyond anything the server waits (Hsm:CallTimeout is
    // 1 s here, the recovery's drain 10 s), it turns a wait that never ends into a failure.
    private static readonly TimeSpan HangGuard = TimeSpan.FromSeconds(60);

    // The deadline of every call the test makes: past the hang guard, so a call that waits for the
    // hung device shows as the guard's failure (or as DEADLINE_EXCEEDED, never as an answer).
    private static readonly TimeSpan CallDeadline = 2 * HangGuard;

    private const int Workers = 4;

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
    public Task UnderLoad_DeviceLost_UnavailableWhileDownNeverWrong_NotServing_BackAfterOneRecovery(CKR fault) =>
        RunFaultAsync(fault.ToString(), faults => faults.Fail(fault));

    [Fact]
    public Task UnderLoad_HsmHangs_UnavailableWhileHungNeverWrong_NotServing_BackAfterOneRecovery() =>
        RunFaultAsync("hang", faults => faults.Hang());

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
        List<Task<ServingStatus>> checks;
        int waiting;
        int hung;
        try
        {
            checks = Enumerable.Range(0, 16).Select(_ => CheckAsync(channel)).ToList();

            // Every check has reached the server and waits for an answer (the health publisher's
            // run may wait beside them); the guard only ends a broken run, before the checks' deadline.
            var waited = Stopwatch.StartNew();
            while (hsmCheck.Waiting < checks.Count && waited.Elapsed < HangGuard)
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
        Assert.True(waiting >= checks.Count, $"hang guard: after {HangGuard} only {waiting} of {checks.Count} checks had reached the HSM check");
        Assert.Equal(1, hung);
        Assert.All(answers, a => Assert.Equal(ServingStatus.Serving, a)); // the one probe's answer: its hung call returned once the HSM was back
    }

    private async Task RunFaultAsync(string name, Action<HsmFaultInjector> inject)
    {
        var faults = _server.Services.GetRequiredService<Pkcs11Hsm>().Faults;
        using var channel = _server.CreateChannel();
        var stub = new KeyManagementService.KeyManagementServiceClient(channel);
        var headers = KmsTestServer.Bearer(_server.DeveloperToken);
        var load = new Load();

        // Ciphertexts made before the fault, decrypted again throughout: the answer is the plaintext or UNAVAILABLE.
        var known = new List<(ByteString Plaintext, ByteString Ciphertext)>();
        for (var i = 0; i < Workers; i++)
        {
            var dataKey = await stub.GenerateDataKeyAsync(new GenerateDataKeyRequest { Name = _keyName }, headers);
            known.Add((dataKey.Plaintext, dataKey.Ciphertext));
        }

        using var stop = new CancellationTokenSource();
        var workers = Enumerable.Range(0, Workers).Select(w => Task.Run(() => WorkAsync(stub, headers, _keyName, known[w], load, w, stop.Token))).ToList();
        await load.UntilAsync(Load.Phase.BeforeFault, 3, "served before the fault");

        ServingStatus healthDuringFault;
        int logged;
        inject(faults);
        load.Enter(Load.Phase.DuringFault);
        try
        {
            // Held until each worker has had two calls that began during the fault answered
            // UNAVAILABLE: answered while the fault still holds, so none waited for the device.
            await load.UntilAsync(Load.Phase.DuringFault, 2, "answered UNAVAILABLE during the fault");
            healthDuringFault = await CheckAsync(channel);
            logged = _server.Logs.Events.Count;
        }
        finally
        {
            faults.Clear(); // else stopping the server waits for the hung calls
        }

        load.Enter(Load.Phase.AfterClear);
        var serving = await UntilServingAsync(channel);
        await load.UntilAsync(Load.Phase.AfterClear, 2, "served after the fault cleared");
        await stop.CancelAsync();
        await Task.WhenAll(workers);

        var afterClear = _server.Logs.Events.Skip(logged).ToList();
        var recoveries = afterClear.Count(e => e.Contains("HSM recovered:", StringComparison.Ordinal));
        output.WriteLine($"{name}: {load.Succeeded} ok, {load.Unavailable} UNAVAILABLE; health NOT_SERVING during the fault; " +
            $"after clearing: {recoveries} recovery, SERVING, every worker served");

        Assert.Empty(load.Wrong);
        Assert.Empty(load.OtherStatus);
        Assert.Equal(ServingStatus.NotServing, healthDuringFault);
        Assert.True(serving, "never SERVING after the fault cleared");

        // Back by one recovery (SECURITY.md claims 85, 86: the first one due after the fault clears
        // succeeds), not after a run of failed ones each a backoff apart.
        Assert.Equal(1, recoveries);
    }

    private static async Task WorkAsync(KeyManagementService.KeyManagementServiceClient stub, Metadata headers, string keyName, (ByteString Plaintext, ByteString Ciphertext) known, Load load, int worker, CancellationToken stop)
    {
        while (!stop.IsCancellationRequested)
        {
            await load.RecordAsync(worker, async deadline =>
            {
                var dataKey = await stub.GenerateDataKeyAsync(new GenerateDataKeyRequest { Name = keyName }, headers, deadline);
                var decrypted = await stub.DecryptAsync(new DecryptRequest { Ciphertext = dataKey.Ciphertext }, headers, deadline);
                return decrypted.Plaintext == dataKey.Plaintext ? null : "a fresh data key decrypted to other bytes";
            });
            await load.RecordAsync(worker, async deadline =>
            {
                var decrypted = await stub.DecryptAsync(new DecryptRequest { Ciphertext = known.Ciphertext }, headers, deadline);
                return decrypted.Plaintext == known.Plaintext ? null : "a known ciphertext decrypted to other bytes";
            });
        }
    }

    private static async Task<ServingStatus> CheckAsync(GrpcChannel channel) =>
        (await new global::Grpc.Health.V1.Health.HealthClient(channel).CheckAsync(new HealthCheckRequest(), deadline: DateTime.UtcNow + CallDeadline)).Status;

    private static async Task<bool> UntilServingAsync(GrpcChannel channel)
    {
        var guard = Stopwatch.StartNew();
        while (guard.Elapsed < HangGuard)
        {
            if (await CheckAsync(channel) == ServingStatus.Serving)
            {
                return true;
            }

            await Task.Delay(50);
        }

        return false;
    }

    /// <summary>What the load saw, per worker and phase: answers, and anything but the truth or UNAVAILABLE.</summary>
    private sealed class Load
    {
        private readonly Lock _lock = new();
        private readonly int[,] _counted = new int[3, Workers];
        private int _phase;
        private int _succeeded;
        private int _unavailable;

        public enum Phase
        {
            BeforeFault,
            DuringFault,
            AfterClear,
        }

        public int Succeeded => Volatile.Read(ref _succeeded);

        public int Unavailable => Volatile.Read(ref _unavailable);

        public List<string> Wrong { get; } = [];

        public List<string> OtherStatus { get; } = [];

        public void Enter(Phase phase) => Volatile.Write(ref _phase, (int)phase);

        // Counts, per worker, the calls that began in a phase and ended as that phase expects:
        // served before the fault and after it cleared, UNAVAILABLE during it.
        public async Task RecordAsync(int worker, Func<DateTime, Task<string?>> call)
        {
            var phase = (Phase)Volatile.Read(ref _phase);
            string? wrong = null;
            StatusCode? failed = null;
            try
            {
                wrong = await call(DateTime.UtcNow + CallDeadline);
            }
            catch (RpcException e)
            {
                failed = e.StatusCode;
            }

            lock (_lock)
            {
                if (wrong is not null)
                {
                    Wrong.Add(wrong);
                }
                else if (failed is StatusCode.Unavailable)
                {
                    _unavailable++;
                    if (phase == Phase.DuringFault)
                    {
                        _counted[(int)phase, worker]++;
                    }
                }
                else if (failed is { } status)
                {
                    OtherStatus.Add($"{status} (a call begun {phase})");
                }
                else
                {
                    _succeeded++;
                    if (phase != Phase.DuringFault)
                    {
                        _counted[(int)phase, worker]++;
                    }
                }
            }
        }

        public async Task UntilAsync(Phase phase, int calls, string what)
        {
            var guard = Stopwatch.StartNew();
            while (Enumerable.Range(0, Workers).Any(w => Counted(phase, w) < calls))
            {
                Assert.True(guard.Elapsed < HangGuard, $"hang guard: after {HangGuard} not every worker had {calls} calls {what} ({string.Join(", ", Enumerable.Range(0, Workers).Select(w => Counted(phase, w)))})");
                await Task.Delay(20);
            }
        }

        private int Counted(Phase phase, int worker)
        {
            lock (_lock)
            {
                return _counted[(int)phase, worker];
            }
        }
    }
}
