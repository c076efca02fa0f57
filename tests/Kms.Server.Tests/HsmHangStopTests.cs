using System.Diagnostics;
using Google.Protobuf;
using Grpc.Core;
using Kms.Contracts.V1;
using Kms.Hsm;
using Kms.Testing;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Diagnostics.HealthChecks;
using Microsoft.Extensions.Hosting;
using Xunit.Abstractions;

namespace Kms.Server.Tests;

/// <summary>
/// A server stopped while its HSM hangs: the stop ends within the host's stop time
/// (<c>shutdownTimeoutSeconds</c>), the adapter's drain taking what is left of it inside the host's
/// stop rather than its own 10 s after it, the caller whose call hung answered, and nothing that
/// was acknowledged lost.
/// </summary>
/// <remarks>
/// The server loads a private copy of SoftHSM's library (its own path, its own instance in this
/// process), so the module the stop leaves initialised under the hung calls is this test's alone.
/// Runs alone all the same: it hangs calls inside a module gate (as HsmFaultTests do).
/// </remarks>
[Collection(HsmFaultGroup.Name)]
public sealed class HsmHangStopTests(ITestOutputHelper output)
{
    // A liveness guard, not a threshold: far past the host's stop time and the adapter's 10-s drain.
    private static readonly TimeSpan HangGuard = TimeSpan.FromSeconds(90);

    // What the stop may take beyond the host's stop time: the container's disposal of what is left
    // (the store, the logger), never another wait for the HSM. A bound, not a measurement: before,
    // the adapter's drain came after the host's stop and added up to its whole 10 s.
    private static readonly TimeSpan Slack = TimeSpan.FromSeconds(5);

    [Fact]
    public async Task StopWhileACallHangsInTheHsm_EndsWithinTheHostsStopTime_CallerUnavailable_Logged2012_NothingAcknowledgedLost()
    {
        // The hung call is answered (Hsm:CallTimeout, 8 s) within the connection drain (9 s); the
        // stop's last steps then meet the hung HSM too (the final checkpoint's signature waits for
        // the recovery up to Hsm:CallTimeout), which leaves the adapter's drain little of the host's
        // 19 s: what used the whole drain after the host's stop before.
        var module = Scratch.NewPath("libsofthsm2-", ".so");
        File.Copy(SoftHsm.ModulePath, module);
        string[] settings =
        [
            $"--Hsm:ModulePath={module}",
            "--Hsm:CallTimeout=00:00:08",
            "--Kms:Transport:ShutdownDrainTimeout=00:00:09",
            "--Lifecycle:JobInterval=01:00:00",
        ];
        // No health probe meanwhile (the publisher's first run an hour away): the one call that hangs
        // is the Encrypt, which the test waits for before it stops the server.
        var server = await KmsTestServer.StartAsync(null, null, "dev", services => services.Configure<HealthCheckPublisherOptions>(o => o.Delay = TimeSpan.FromHours(1)), settings);
        var stopTime = server.Services.GetRequiredService<Microsoft.Extensions.Options.IOptions<HostOptions>>().Value.ShutdownTimeout;
        var faults = server.Services.GetRequiredService<Pkcs11Hsm>().Faults;

        // Whether the adapter had stopped (2012: the module left to the calls still inside it) once
        // the host's stop had ended, before the container's disposal.
        var stoppedWithinTheHostsStop = false;
        server.Services.GetRequiredService<IHostApplicationLifetime>().ApplicationStopped.Register(
            () => stoppedWithinTheHostsStop = server.Logs.Events.Any(e => e.Contains("Id: 2012,", StringComparison.Ordinal)));

        using var channel = server.CreateChannel();
        var stub = new KeyManagementService.KeyManagementServiceClient(channel);
        var headers = KmsTestServer.Bearer(server.DeveloperToken);
        using var acknowledging = server.CreateClient();
        string keyName;
        Kms.Client.EncryptedData acknowledged;
        Task<EncryptResponse> hung;
        TimeSpan stopped;
        try
        {
            keyName = (await acknowledging.CreateKeyAsync("tenants/dev", "acknowledged")).Name;
            acknowledged = await acknowledging.EncryptAsync(keyName, new byte[] { 1, 2, 3 });

            faults.Hang();
            hung = stub.EncryptAsync(new EncryptRequest { Name = keyName, Plaintext = ByteString.CopyFrom(4, 5, 6) }, headers, DateTime.UtcNow + 2 * HangGuard).ResponseAsync;
            using (var wait = new CancellationTokenSource(HangGuard))
            {
                while (faults.HungCalls == 0)
                {
                    await Task.Delay(20, wait.Token);
                }
            }

            // The stop (SIGTERM's: the host's stop, then the container's disposal), the call still hung.
            var clock = Stopwatch.StartNew();
            await server.DisposeAsync().AsTask().WaitAsync(HangGuard);
            stopped = clock.Elapsed;
            Assert.True(faults.HungCalls > 0, "the hang was released before the stop ended");
        }
        finally
        {
            faults.Clear();
        }

        output.WriteLine($"host stop time {stopTime.TotalSeconds} s; the stop took {stopped.TotalSeconds:0.0} s");
        Assert.True(stopped <= stopTime + Slack, $"the stop took {stopped.TotalSeconds:0.0} s, past the host's stop time ({stopTime.TotalSeconds} s) + {Slack.TotalSeconds} s");
        Assert.True(stoppedWithinTheHostsStop, "the adapter stopped after the host's stop (the container's disposal), not within it");
        Assert.Contains(server.Logs.Events, e => e.Contains("Id: 2012,", StringComparison.Ordinal) && e.Contains(module, StringComparison.Ordinal));

        // The caller whose call hung was answered, UNAVAILABLE (retryable), not left to the connection's abort.
        var answer = await Assert.ThrowsAsync<RpcException>(() => hung.WaitAsync(HangGuard));
        Assert.True(answer.StatusCode == StatusCode.Unavailable, $"the hung call was answered {answer.StatusCode} ({answer.Status.Detail}), not UNAVAILABLE");

        // Nothing acknowledged is lost: the key and its ciphertext serve after a restart (the module's
        // hung calls returned: the restart finalizes it at its own stop), and the acknowledged calls'
        // events are in the chain.
        await using var restarted = await KmsTestServer.StartAsync(server.Token, server.DataDir, "dev", settings);
        using var client = restarted.CreateClient();
        using (var opened = await client.DecryptAsync(acknowledged.Ciphertext))
        {
            Assert.Equal([1, 2, 3], opened.Plaintext.ToArray());
        }

        Assert.Equal("1", RawSqlite.Scalar(server.DatabasePath, $"SELECT count(*) FROM audit_events WHERE operation LIKE '%CreateKey' AND outcome = 'OK' AND resource = '{keyName}'"));
        Assert.Equal("1", RawSqlite.Scalar(server.DatabasePath, $"SELECT count(*) FROM audit_events WHERE operation LIKE '%Encrypt' AND outcome = 'OK' AND resource LIKE '{keyName}%'"));
    }
}
