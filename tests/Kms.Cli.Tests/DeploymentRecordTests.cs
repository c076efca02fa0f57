using System.Security.Cryptography;
using System.Text;
using System.Text.RegularExpressions;
using Kms.Cli.Ceremony;
using Kms.Core.Audit;
using Kms.Core.Backup;
using Kms.Core.Errors;
using Kms.Core.Services;
using Kms.Storage.Sqlite;
using Kms.Testing;
using Microsoft.Data.Sqlite;

namespace Kms.Cli.Tests;

/// <summary>What opening a deployment (every ceremony step does) writes into the data directory (SoftHSM).</summary>
[Collection(TokenWipeGroup.Name)]
public sealed partial class DeploymentRecordTests
{
    // The PIN reaches the HSM adapter as bytes, and the bytes the ceremony handed over are zero
    // once the open returns — whether the token took the PIN or refused it. (The adapter logs in
    // with its own pinned copy, zeroed when the record closes.)
    [Fact]
    public async Task OpenAsync_PinBytes_ZeroWhenItReturns_OpenedOrRefused()
    {
        var production = DomainKeyRotationJobTests.TokenWithDomainKey(RandomNumberGenerator.GetBytes(32));
        var dataDir = Directory.CreateTempSubdirectory("kms-record-").FullName;
        try
        {
            var pin = Encoding.UTF8.GetBytes(production.UserPin);
            await using (var record = await DeploymentRecord.OpenAsync(dataDir, production.Options(devMode: false), pin, default))
            {
                Assert.True(pin.All(b => b == 0), "the PIN bytes are not zero after the record opened");
                await record.AppendAsync("ceremony-pin", "test", "domain/pin", default); // and it logged in with them
            }

            var wrong = Encoding.UTF8.GetBytes(production.UserPin + "-wrong");
            await Assert.ThrowsAsync<Kms.Hsm.HsmConfigurationException>(() => DeploymentRecord.OpenAsync(dataDir, production.Options(devMode: false), wrong, default));
            Assert.True(wrong.All(b => b == 0), "the PIN bytes are not zero after the HSM refused them");
        }
        finally
        {
            SqliteStore.ReleasePooledConnections();
            Directory.Delete(dataDir, recursive: true);
        }
    }

    [Fact]
    public async Task OpenAsync_PublishedAuditKeyExists_ReplacedWholeNeverRewrittenInPlace()
    {
        var production = DomainKeyRotationJobTests.TokenWithDomainKey(RandomNumberGenerator.GetBytes(32));
        var dataDir = Directory.CreateTempSubdirectory("kms-record-").FullName;
        try
        {
            await using (await DeploymentRecord.OpenAsync(dataDir, production.Options(devMode: false), Encoding.UTF8.GetBytes(production.UserPin), default))
            {
            }

            var pem = Path.Combine(dataDir, "audit", "signing-key.pem");
            var published = await File.ReadAllBytesAsync(pem);

            // Every later step publishes the key again. A reader holding the previous file (a
            // copy off the host, say) sees it unchanged: the file was renamed over, not truncated
            // and rewritten, which a crash in the middle would leave torn or empty.
            await File.WriteAllTextAsync(pem, "the previous file\n");
            await using var held = new FileStream(pem, FileMode.Open, FileAccess.Read, FileShare.ReadWrite | FileShare.Delete);
            await using (await DeploymentRecord.OpenAsync(dataDir, production.Options(devMode: false), Encoding.UTF8.GetBytes(production.UserPin), default))
            {
            }

            Assert.Equal("the previous file\n", await new StreamReader(held).ReadToEndAsync());
            Assert.Equal(published, await File.ReadAllBytesAsync(pem));
            Assert.Equal(["signing-key.pem"], Directory.GetFileSystemEntries(Path.Combine(dataDir, "audit")).Select(Path.GetFileName));
        }
        finally
        {
            Directory.Delete(dataDir, recursive: true);
        }
    }

    // The server tests' attack (AuditDatabaseWriterTests): a signed event rewritten, the chain
    // re-hashed after it, the checkpoint rows deleted. The ceremony's checkpoint (and the log's
    // interval one) would have signed it; the data directory's checkpoints.jsonl pins the newest
    // checkpoint signed there, and the ceremony refuses before it records anything. Moved aside
    // (a rollback on purpose), it goes on.
    [Fact]
    public async Task ChainRewrittenAfterACheckpointTheDataDirectoryRecords_CeremonyRefusesToRecordOrSign_FileMovedAside_Signs()
    {
        var production = DomainKeyRotationJobTests.TokenWithDomainKey(RandomNumberGenerator.GetBytes(32));
        var dataDir = Directory.CreateTempSubdirectory("kms-record-").FullName;
        var checkpoints = Path.Combine(dataDir, "audit", "checkpoints.jsonl");
        try
        {
            await using (var record = await DeploymentRecord.OpenAsync(dataDir, production.Options(devMode: false), Encoding.UTF8.GetBytes(production.UserPin), default))
            {
                foreach (var step in new[] { "one", "two", "three" })
                {
                    await record.AppendAsync("ceremony-1", "test", "step/" + step, default);
                }

                Assert.Equal(3, (await record.CheckpointAsync(default))?.Sequence);
            }

            Assert.Contains("\"seq\":3", await File.ReadAllTextAsync(checkpoints), StringComparison.Ordinal);
            var database = Path.Combine(dataDir, "kms.db");
            Sql(database, "UPDATE audit_events SET body = replace(body, '\"resource\":\"step/two\"', '\"resource\":\"step/forged\"') WHERE seq = 2");
            Rechain(database, from: 2);
            Sql(database, "DELETE FROM audit_checkpoints");
            SqliteConnection.ClearAllPools();

            var refused = await Assert.ThrowsAsync<KmsException>(() => DeploymentRecord.OpenAsync(dataDir, production.Options(devMode: false), Encoding.UTF8.GetBytes(production.UserPin), default));
            Assert.Equal(KmsErrorCode.FailedPrecondition, refused.Code);
            Assert.Contains($"does not pass through checkpoint 3 that {checkpoints} records as signed", refused.Message, StringComparison.Ordinal);
            Assert.Contains("move that file aside", refused.Message, StringComparison.Ordinal);
            Assert.Contains("with head.json beside it (head.json.replaced-TIME", refused.Message, StringComparison.Ordinal); // the ceremony recorded head 3 when it closed
            SqliteConnection.ClearAllPools();
            Assert.Equal(("3", "0"), (Scalar(database, "SELECT max(seq) FROM audit_events"), Scalar(database, "SELECT count(*) FROM audit_checkpoints")));

            File.Move(checkpoints, checkpoints + ".replaced-test");
            File.Move(Path.Combine(dataDir, "audit", SeenHead.FileName), Path.Combine(dataDir, "audit", SeenHead.FileName + ".replaced-test"));
            await using (var record = await DeploymentRecord.OpenAsync(dataDir, production.Options(devMode: false), Encoding.UTF8.GetBytes(production.UserPin), default))
            {
                await record.AppendAsync("ceremony-2", "test", "step/four", default);
                Assert.Equal(4, (await record.CheckpointAsync(default))?.Sequence);
            }

            Assert.Contains("\"seq\":4", await File.ReadAllTextAsync(checkpoints), StringComparison.Ordinal);
        }
        finally
        {
            SqliteConnection.ClearAllPools();
            Directory.Delete(dataDir, recursive: true);
        }
    }

    // Retention on the server (another data directory) cut the chain past the newest checkpoint
    // this data directory records: the ceremony is not refused for it — it asks what the server
    // asks at start (AuditLog.RequireOwnRecordAsync: the oldest event past the recorded one,
    // retention's record of the cut under a later signed checkpoint), one code — and a rewrite
    // after the cut still is.
    [Fact]
    public async Task RetentionCutPastTheCheckpointTheDataDirectoryRecords_CeremonySigns_ARewriteAfterTheCutStillRefused()
    {
        var production = DomainKeyRotationJobTests.TokenWithDomainKey(RandomNumberGenerator.GetBytes(32));
        var dataDir = Directory.CreateTempSubdirectory("kms-record-").FullName;
        var database = Path.Combine(dataDir, "kms.db");
        try
        {
            await using (var record = await DeploymentRecord.OpenAsync(dataDir, production.Options(devMode: false), Encoding.UTF8.GetBytes(production.UserPin), default))
            {
                await record.AppendAsync("ceremony-1", "test", "step/one", default);
                Assert.Equal(1, (await record.CheckpointAsync(default))?.Sequence); // the file: 1
            }

            // The server: events 2..6, checkpoint 6, event 7; retention through 6 (its record 8,
            // checkpoint 8), so events 1..6 and checkpoint 1 are gone.
            var options = production.Options(devMode: false);
            options.Pin = production.UserPin;
            options.PinFile = null;
            await using (var store = await DeploymentDatabaseTarget.SqliteIn(dataDir).OpenAsync(default))
            await using (var hsm = Kms.Hsm.Pkcs11Hsm.Open(options, Microsoft.Extensions.Logging.Abstractions.NullLogger.Instance))
            {
                var server = new Kms.Core.Services.AuditLog(store, store, hsm, TimeProvider.System, new AuditOptions());
                await server.InitializeAsync(default);
                await store.AppendAuditAsync([.. Enumerable.Range(2, 5).Select(ServerEvent)], default);
                Assert.Equal(6, (await server.CheckpointAsync(default))?.Sequence);
                await store.AppendAuditAsync([ServerEvent(7)], default);
                Assert.Equal(6, await server.PruneThroughAsync(6, default));
            }

            SqliteConnection.ClearAllPools();
            Assert.Equal(("7", "8"), (Scalar(database, "SELECT min(seq) FROM audit_events"), Scalar(database, "SELECT max(seq) FROM audit_checkpoints")));
            await using (var record = await DeploymentRecord.OpenAsync(dataDir, production.Options(devMode: false), Encoding.UTF8.GetBytes(production.UserPin), default))
            {
                await record.AppendAsync("ceremony-2", "test", "step/two", default);
                Assert.Equal(9, (await record.CheckpointAsync(default))?.Sequence); // the file: 1, 9
            }

            SqliteConnection.ClearAllPools();
            Sql(database, "UPDATE audit_events SET body = replace(body, '\"resource\":\"step/two\"', '\"resource\":\"step/forged\"') WHERE seq = 9");
            Rechain(database, from: 9);
            Sql(database, "DELETE FROM audit_checkpoints WHERE seq > 8");
            var refused = await Assert.ThrowsAsync<KmsException>(() => DeploymentRecord.OpenAsync(dataDir, production.Options(devMode: false), Encoding.UTF8.GetBytes(production.UserPin), default));
            Assert.Contains("does not pass through checkpoint 9 that", refused.Message, StringComparison.Ordinal);
        }
        finally
        {
            SqliteConnection.ClearAllPools();
            Directory.Delete(dataDir, recursive: true);
        }
    }

    // A server on this data directory served events past the ceremony's checkpoint and stopped
    // before its next checkpoint was due: head.json records them, checkpoints.jsonl does not. The
    // database copied back from before them (a rollback, no checkpoint after it to catch it):
    // before, the ceremony passed its checkpoint check, appended its steps and signed the
    // rolled-back chain with the transcript's checkpoint. Now it is refused before any step is
    // appended, as the server's start is, until a re-application recorded since reaches the head.
    [Fact]
    public async Task RolledBackBehindTheHeadTheDataDirectoryLastSaw_NoCheckpointAfterIt_CeremonyRefusesBeforeAnyStep_UntilAReapplicationReachesIt()
    {
        var production = DomainKeyRotationJobTests.TokenWithDomainKey(RandomNumberGenerator.GetBytes(32));
        var dataDir = Directory.CreateTempSubdirectory("kms-record-").FullName;
        var database = Path.Combine(dataDir, "kms.db");
        var dump = database + ".dump";
        var seenHead = Path.Combine(dataDir, "audit", SeenHead.FileName);
        try
        {
            await using (var record = await DeploymentRecord.OpenAsync(dataDir, production.Options(devMode: false), Encoding.UTF8.GetBytes(production.UserPin), default))
            {
                await record.AppendAsync("ceremony-1", "test", "step/one", default);
                Assert.Equal(1, (await record.CheckpointAsync(default))?.Sequence); // checkpoints.jsonl: 1
            }

            // The "dump": the database as it stood.
            SqliteStore.ReleasePooledConnections();
            await SqliteStore.FoldWriteAheadLogAsync(database, CancellationToken.None);
            File.Copy(database, dump);

            // The server: its records read at start, events 2..4 (a destruction among them), stopped
            // before a checkpoint was due: it records the head it leaves, 4.
            await using (var store = await DeploymentDatabaseTarget.SqliteIn(dataDir).OpenAsync(default))
            await using (var hsm = Kms.Hsm.Pkcs11Hsm.Open(PinnedOptions(production), Microsoft.Extensions.Logging.Abstractions.NullLogger.Instance))
            {
                var server = new AuditLog(store, store, hsm, TimeProvider.System, new AuditOptions());
                await server.InitializeAsync(default);
                Assert.True((await server.RequireOwnRecordAsync(Path.Combine(dataDir, "audit", "checkpoints.jsonl"), default)).PassesThrough);
                Assert.True((await server.ReadOwnHeadAsync(seenHead, default)).PassesThrough);
                await store.AppendAuditAsync([ServerEvent(2), ServerEvent(3), ServerEvent(4)], default);
                await server.RecordHeadAtStopAsync(default);
            }

            Assert.Equal(4, SeenHead.Parse(await File.ReadAllBytesAsync(seenHead))!.Head.Sequence);

            // The dump copied back: the checkpoint (1) still passes, the head (4) does not.
            SqliteStore.ReleasePooledConnections();
            foreach (var suffix in new[] { "-wal", "-shm" })
            {
                File.Delete(database + suffix);
            }

            File.Copy(dump, database, overwrite: true);
            var refused = await OpenRefusedAsync(dataDir, production);
            Assert.Equal(KmsErrorCode.FailedPrecondition, refused.Code);
            Assert.Contains($"the audit chain in the database (head 1) does not pass through the head this node last saw, event 4 ({seenHead})", refused.Message, StringComparison.Ordinal);
            Assert.Contains("so the ceremony records nothing and signs no checkpoint", refused.Message, StringComparison.Ordinal);
            Assert.Contains("kms backup reapply-destructions", refused.Message, StringComparison.Ordinal);
            Assert.Contains($"move that file aside ({SeenHead.FileName}.replaced-TIME", refused.Message, StringComparison.Ordinal);
            SqliteConnection.ClearAllPools();
            Assert.Equal(("1", "1"), (Scalar(database, "SELECT max(seq) FROM audit_events"), Scalar(database, "SELECT max(seq) FROM audit_checkpoints")));
            Assert.Equal(4, SeenHead.Parse(await File.ReadAllBytesAsync(seenHead))!.Head.Sequence);

            // A re-application whose logs stop short of 4: still refused, saying how far they went.
            await RecordReapplicationAsync(dataDir, new ReapplySummary(1, 3));
            refused = await OpenRefusedAsync(dataDir, production);
            Assert.Contains("the last one recorded since read the audit logs after sequence 1 through 3: they do not reach it", refused.Message, StringComparison.Ordinal);

            // One that reaches it (event 3 on this chain): the ceremony records, and the head it
            // leaves is recorded at its close.
            await RecordReapplicationAsync(dataDir, new ReapplySummary(1, 4));
            await using (var record = await DeploymentRecord.OpenAsync(dataDir, production.Options(devMode: false), Encoding.UTF8.GetBytes(production.UserPin), default))
            {
                await record.AppendAsync("ceremony-2", "test", "step/two", default);
                Assert.Equal(4, (await record.CheckpointAsync(default))?.Sequence);
            }

            SqliteConnection.ClearAllPools();
            Assert.Equal("step/two", Scalar(database, "SELECT json_extract(body, '$.resource') FROM audit_events WHERE seq = 4"));
            Assert.Equal(new AuditHead(4, Scalar(database, "SELECT hash FROM audit_events WHERE seq = 4")), SeenHead.Parse(await File.ReadAllBytesAsync(seenHead))!.Head);
        }
        finally
        {
            SqliteConnection.ClearAllPools();
            Directory.Delete(dataDir, recursive: true);
        }
    }

    // The ceremony's steps are events this data directory saw: it records the head it leaves in
    // head.json, as a server's stop does (before, the file kept the head the server left, or none).
    // A server started on the data directory after a ceremony passes through it: the ceremony's
    // events are no rollback.
    [Fact]
    public async Task CeremoniesBeforeAndBetweenServerRuns_EachRecordsTheHeadItLeaves_TheServerStartsOnIt()
    {
        var production = DomainKeyRotationJobTests.TokenWithDomainKey(RandomNumberGenerator.GetBytes(32));
        var domainKeyId = production.Options(devMode: false).DomainKeyId!;
        var dataDir = Directory.CreateTempSubdirectory("kms-record-").FullName;
        var database = Path.Combine(dataDir, "kms.db");
        var seenHead = Path.Combine(dataDir, "audit", SeenHead.FileName);
        async Task CeremonyAsync(string id)
        {
            await using (var record = await DeploymentRecord.OpenAsync(dataDir, production.Options(devMode: false), Encoding.UTF8.GetBytes(production.UserPin), default))
            {
                await record.AppendAsync(id, "test", "step/one", default);
                await record.AppendAsync(id, "test", "step/two", default);
                await record.CheckpointAsync(default);
            }

            SqliteStore.ReleasePooledConnections();
            var head = RawSqlite.Scalar(database, "SELECT seq || ' ' || hash FROM audit_events ORDER BY seq DESC LIMIT 1");
            Assert.Equal(RawSqlite.Scalar(database, $"SELECT seq FROM audit_events WHERE json_extract(body, '$.request_id') = '{id}' ORDER BY seq DESC LIMIT 1"), head.Split(' ')[0]);
            var recorded = SeenHead.Parse(await File.ReadAllBytesAsync(seenHead))!.Head;
            Assert.Equal(head, $"{recorded.Sequence} {recorded.Hash}");
        }

        async Task ServeAsync()
        {
            await using var server = await KmsTestServer.StartProductionAsync(production, dataDir, domainKeyId);
            using var developer = server.CreateClient();
            await developer.CreateKeyAsync("tenants/dev", "key-" + Guid.NewGuid().ToString("N")[..8]);
        }

        try
        {
            await CeremonyAsync("ceremony-1");
            await ServeAsync();
            await CeremonyAsync("ceremony-2");
            await ServeAsync();
        }
        finally
        {
            SqliteStore.ReleasePooledConnections();
            Directory.Delete(dataDir, recursive: true);
        }
    }

    // The refusal of opening the deployment; a record opened instead is closed (its loop would
    // go on writing in the data directory) and the test fails saying so.
    private static async Task<KmsException> OpenRefusedAsync(string dataDir, TestToken token)
    {
        try
        {
            await using (await DeploymentRecord.OpenAsync(dataDir, token.Options(devMode: false), Encoding.UTF8.GetBytes(token.UserPin), default))
            {
            }
        }
        catch (KmsException e)
        {
            return e;
        }

        throw new InvalidOperationException($"the ceremony opened the deployment in {dataDir}; a refusal was expected");
    }

    // What `kms backup reapply-destructions` records last (BackupRestore: its summary event).
    private static async Task RecordReapplicationAsync(string dataDir, ReapplySummary summary)
    {
        await using (var store = await DeploymentDatabaseTarget.SqliteIn(dataDir).OpenAsync(default))
        {
            await store.AppendAuditAsync(
                [new AuditEntry
                {
                    Time = DateTimeOffset.UtcNow,
                    RequestId = "reapply-test",
                    Principal = ReapplySummary.Principal,
                    Operation = ReapplySummary.Operation,
                    Resource = summary.Resource,
                    Outcome = "OK",
                }],
                default);
        }

        SqliteConnection.ClearAllPools();
    }

    private static Kms.Hsm.HsmOptions PinnedOptions(TestToken token)
    {
        var options = token.Options(devMode: false);
        options.Pin = token.UserPin;
        options.PinFile = null;
        return options;
    }

    // As whoever holds the database would: every body from `from` on linked to the one before, re-hashed.
    private static void Rechain(string database, long from)
    {
        var previous = Scalar(database, $"SELECT hash FROM audit_events WHERE seq = {from - 1}");
        var last = long.Parse(Scalar(database, "SELECT max(seq) FROM audit_events"), System.Globalization.CultureInfo.InvariantCulture);
        for (var seq = from; seq <= last; seq++)
        {
            var body = PrevPattern().Replace(Scalar(database, $"SELECT body FROM audit_events WHERE seq = {seq}"), $"\"prev\":\"{previous}\"");
            previous = AuditChain.HashOf(body);
            Sql(database, $"UPDATE audit_events SET body = '{body.Replace("'", "''", StringComparison.Ordinal)}', hash = '{previous}' WHERE seq = {seq}");
        }
    }

    private static void Sql(string database, string sql) => RawSqlite.Execute(database, sql);

    private static string Scalar(string database, string sql) => RawSqlite.Scalar(database, sql);

    [GeneratedRegex("\"prev\":\"[0-9a-f]{64}\"")]
    private static partial Regex PrevPattern();

    // An event a server on the data directory appended (not a ceremony step).
    private static AuditEntry ServerEvent(int i) => new()
    {
        Time = DateTimeOffset.UtcNow,
        RequestId = $"server-{i}",
        Principal = "token:app",
        Operation = "test/Server",
        Resource = $"event/{i}",
        Outcome = "OK",
    };
}
