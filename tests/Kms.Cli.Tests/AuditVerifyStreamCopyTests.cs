using System.Security.Cryptography;
using Kms.Cli.Infrastructure;
using Kms.Core.Audit;
using Kms.Core.Services;
using Kms.Testing.Fakes;
using Microsoft.Extensions.Time.Testing;

namespace Kms.Cli.Tests;

/// <summary>
/// <c>kms audit verify</c> on a copy of the SIEM stream whose database was rolled back under it
/// (written by the server's AuditLog and AuditExport): verified, and said so with its own exit
/// code (11) and every restart listed, in text and JSON — never a plain "verified" and exit 0.
/// Offline: no server.
/// </summary>
public sealed class AuditVerifyStreamCopyTests : IDisposable
{
    private readonly string _directory = CliServerFixture.NewDirectory();

    public void Dispose() => Directory.Delete(_directory, recursive: true);

    [Fact]
    public async Task Verify_StreamCopyWithARestart_Exit11_TheRestartListed_InTextAndJson()
    {
        using var hsm = new FakeHsm();
        var store = new InMemoryStore();
        var time = new FakeTimeProvider(new DateTimeOffset(2026, 11, 29, 12, 0, 0, TimeSpan.Zero));
        var log = new AuditLog(store, store, hsm, time, new AuditOptions());
        await log.InitializeAsync(default);
        var copy = new List<string>();
        log.EventsWritten += events => copy.AddRange(events.Select(AuditExport.Event));
        log.StreamRestarted += restart => copy.Add(AuditExport.Restart(restart));
        log.StreamHistory = () => [.. Enumerable.Reverse(copy).Where(l => l.StartsWith("{\"event\":", StringComparison.Ordinal)).Select(Point)];

        await AppendAsync(10);
        var old = await store.ListAuditEventsAsync(new AuditQuery(), default);
        store.RollBackAudit(6);
        await AppendAsync(6);

        var path = Path.Combine(_directory, "siem-copy.jsonl");
        await File.WriteAllLinesAsync(path, copy);
        var pem = Path.Combine(_directory, "signing-key.pem");
        await File.WriteAllTextAsync(pem, PemEncoding.WriteString("PUBLIC KEY", log.PublicKey));
        var next = new AuditLog(store, store, hsm, time, new AuditOptions()); // the checkpoint known from outside: a fresh node's
        await next.InitializeAsync(default);
        var signed = Assert.IsType<AuditCheckpoint>(await next.CheckpointAsync(default));
        var known = $"{signed.Sequence}:{signed.HeadHash}";

        var text = await CliRun.InProcessAsync(new Dictionary<string, string>(), _directory, null, "audit", "verify", path, "--public-key", pem, "--known-checkpoint", known);
        Assert.True(text.ExitCode == ExitCodes.StreamRestarts, text.ToString());
        var said = System.Text.RegularExpressions.Regex.Replace(text.Out, @"\s+", " "); // wrapped to the terminal's width
        Assert.StartsWith("VERIFIED WITH STREAM RESTARTS: 12 events after 0, 0 checkpoints, signed up to event 12, 0 unsigned at the tail; THE STREAM RESTARTED 1 TIME(S)", said, StringComparison.Ordinal);
        Assert.Contains($"line 11: after event 6 ({old[5].Hash}), replacing events 7..10 (event 10: {old[9].Hash})", said, StringComparison.Ordinal);
        Assert.Contains("4 events and 0 checkpoints of the chains replaced were verified and no longer count", said, StringComparison.Ordinal);
        Assert.DoesNotContain("verified: ", text.Out, StringComparison.Ordinal);

        var json = await CliRun.InProcessAsync(new Dictionary<string, string>(), _directory, null, "audit", "verify", path, "--public-key", pem, "--known-checkpoint", known, "-o", "json");
        Assert.True(json.ExitCode == ExitCodes.StreamRestarts, json.ToString());
        using var document = System.Text.Json.JsonDocument.Parse(json.Out);
        Assert.True(document.RootElement.GetProperty("valid").GetBoolean());
        var restarts = document.RootElement.GetProperty("stream_restarts");
        Assert.Equal((1, 4, 0), (restarts.GetProperty("count").GetInt32(), restarts.GetProperty("replaced_events").GetInt32(), restarts.GetProperty("replaced_checkpoints").GetInt32()));
        var restart = Assert.Single(restarts.GetProperty("restarts").EnumerateArray().ToList());
        Assert.Equal((11, 6, old[5].Hash, 10, old[9].Hash), (restart.GetProperty("line").GetInt32(), restart.GetProperty("after_sequence").GetInt32(), restart.GetProperty("after_hash").GetString(), restart.GetProperty("replaced_sequence").GetInt32(), restart.GetProperty("replaced_hash").GetString()));

        async Task AppendAsync(int count)
        {
            await store.AppendAuditAsync([.. Enumerable.Range(0, count).Select(i => new AuditEntry
            {
                Time = time.GetUtcNow(),
                RequestId = $"req-{copy.Count}-{i}",
                Principal = "token:alice",
                Tenant = "dev",
                Operation = "/kms.v1.KeyManagementService/Encrypt",
                Outcome = "OK",
            })], default);
            await log.RunHousekeepingAsync(default);
        }
    }

    private static AuditHead Point(string eventLine)
    {
        using var document = System.Text.Json.JsonDocument.Parse(eventLine);
        return new AuditHead(document.RootElement.GetProperty("event").GetProperty("seq").GetInt64(), document.RootElement.GetProperty("hash").GetString()!);
    }
}
