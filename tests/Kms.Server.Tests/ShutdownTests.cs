using Kms.Contracts.V1;
using Kms.Testing;

namespace Kms.Server.Tests;

/// <summary>
/// A stop (SIGTERM, the host's StopAsync) while a connection holds a call open: the connection
/// drain is bounded (<c>Kms:Transport:ShutdownDrainTimeout</c>), and the steps that come last
/// still run.
/// </summary>
public sealed class ShutdownTests
{
    private const string HealthCheck = "/grpc.health.v1.Health/Check";

    [Fact]
    public async Task AStreamWhoseAnswerCannotBeWritten_StopAbortsItAfterTheDrain_UsageCountsAndAuditWrittenLast()
    {
        // No lifecycle pass after the first (at start): the decryption below is written by the stop alone.
        var server = await KmsTestServer.StartAsync(null, null, "dev", "--Kms:Transport:ShutdownDrainTimeout=00:00:02", "--Lifecycle:JobInterval=01:00:00");
        string version;
        using (var client = server.CreateClient())
        {
            var key = await client.CreateKeyAsync("tenants/dev", "counted");
            var sealedBlob = await client.EncryptAsync(key.Name, new byte[] { 1, 2, 3 });
            using var opened = await client.DecryptAsync(sealedBlob.Ciphertext);
            version = opened.KeyVersion;
        }

        // Anyone who can reach the port: a connection that lets no answer be written (its
        // initial stream window 0) and a call on it, which the server has begun once it answers
        // the PING sent after it (frames are read in order; a PING's answer is not flow-controlled).
        await using var holder = await RawHttp2.ConnectAsync(server.Address, server.CaCertificatePath, preface: false);
        await holder.SendPrefaceAsync([0, 4, 0, 0, 0, 0]);
        await holder.WriteFrameAsync(RawHttp2.Headers, RawHttp2.EndHeaders, 1, RawHttp2.GrpcHeaderBlock(HealthCheck, bearerToken: null, server.Address));
        await holder.WriteFrameAsync(RawHttp2.Data, RawHttp2.EndStream, 1, RawHttp2.GrpcMessageHeader(0));
        await holder.WriteFrameAsync(RawHttp2.Ping, 0, 0, new byte[8]);
        using (var wait = new CancellationTokenSource(TimeSpan.FromSeconds(60)))
        {
            while (await holder.ReadFrameAsync(wait.Token) is { } frame && !(frame.Type == RawHttp2.Ping && (frame.Flags & RawHttp2.Ack) != 0))
            {
                Assert.False(frame.Stream == 1 && (frame.Flags & RawHttp2.EndStream) != 0, "the health call was answered through a window of 0");
            }
        }

        // Before: Kestrel waited the host's whole stop time for that stream, and every step after
        // it ran on a cancelled token — the usage counts unwritten, the final checkpoint not
        // signed — and the host's stop threw TaskCanceledException.
        await server.DisposeAsync();

        var logs = server.Logs.AllText;
        Assert.Contains("LogDrainCut", logs, StringComparison.Ordinal);
        Assert.DoesNotContain("LogFinalCheckpointFailed", logs, StringComparison.Ordinal);
        Assert.DoesNotContain("LogUsageNotFlushedAtStop", logs, StringComparison.Ordinal);

        await using var restarted = await KmsTestServer.StartAsync(server.Token, server.DataDir, "dev");
        using var again = restarted.CreateClient();
        var counted = (await again.Raw.GetKeyVersionAsync(new GetKeyVersionRequest { Name = version })).KeyVersion;
        Assert.Equal(1, counted.Usage.DecryptCount);
    }
}
