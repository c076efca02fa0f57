using System.Text;
using Grpc.Core;
using Kms.Client.Audit;
using Kms.Contracts.V1;
using Kms.Core.Audit;
using Kms.Core.Services;
using Kms.Testing;
using Microsoft.Data.Sqlite;
using Microsoft.Extensions.DependencyInjection;

namespace Kms.Server.Tests;

/// <summary>
/// The audit log on the real server: one event per call (allowed, refused, failed), a
/// mutation and its event in one transaction, no secret anywhere in the log, refusal
/// floods aggregated, no audit no answer, tenant-scoped reading, and an export that the
/// client's independent verifier accepts against the published key.
/// </summary>
public sealed class AuditTests : IAsyncLifetime
{
    private KmsTestServer _server = null!;
    private Kms.Client.KmsClient _developer = null!;
    private Kms.Client.KmsClient _officer = null!;

    public async Task InitializeAsync()
    {
        var stream = Scratch.NewPath("kms-audit-stream-", ".jsonl");
        _server = await KmsTestServer.StartAsync(null, null, "dev", (Action<IServiceCollection>?)null,
            $"--Kms:Audit:StreamPath={stream}", "--Storage:Sqlite:BusyTimeout=00:00:01");
        _developer = _server.CreateClient();
        _officer = _server.CreateClient(await _server.CreatePrincipalWithTokenAsync("officer", null, "security-officer"));
    }

    public async Task DisposeAsync()
    {
        _developer.Dispose();
        _officer.Dispose();
        await _server.DisposeAsync();
    }

    [Fact]
    public async Task EveryCall_OneEvent_WithPrincipalOperationResourceAndOutcome()
    {
        var key = await _developer.CreateKeyAsync("tenants/dev", "audited");
        var blob = (await _developer.EncryptAsync(key.Name, "x"u8.ToArray(), new Dictionary<string, string> { ["order"] = "17" })).Ciphertext;
        using (await _developer.DecryptAsync(blob, new Dictionary<string, string> { ["order"] = "17" }))
        {
        }

        await Assert.ThrowsAsync<RpcException>(() => _developer.GetKeyAsync("tenants/dev/keys/missing"));
        using var keyUser = _server.CreateClient(_server.KeyUserToken);
        await Assert.ThrowsAsync<RpcException>(() => keyUser.CreateKeyAsync("tenants/dev", "not-allowed"));

        var events = await EventsAsync(new ListAuditEventsRequest { Tenant = "tenants/dev", Resource = "tenants/dev/keys/audited" });
        Assert.Equal(
            ["CreateKey OK", "Encrypt OK", "Decrypt OK"],
            events.Select(e => $"{e.Operation[(e.Operation.LastIndexOf('/') + 1)..]} {e.Outcome}"));
        Assert.All(events, e => Assert.Equal(("token:developer", "dev"), (e.Principal, e.Tenant)));
        Assert.Equal("tenants/dev/keys/audited/versions/1", events[2].Resource);
        Assert.Equal(["order"], events[1].ContextHashes.Keys);
        Assert.Equal(events[1].ContextHashes["order"], events[2].ContextHashes["order"]);
        Assert.Matches("^[0-9a-f]{64}$", events[1].ContextHashes["order"]);

        var missing = Assert.Single(await EventsAsync(new ListAuditEventsRequest { Resource = "tenants/dev/keys/missing" }));
        Assert.Equal("NOT_FOUND", missing.Outcome);
        var refused = Assert.Single(await EventsAsync(new ListAuditEventsRequest { Principal = "token:dev-app", Operation = "CreateKey" }));
        Assert.Equal(("PERMISSION_DENIED", "tenants/dev"), (refused.Outcome, refused.Resource));
    }

    [Fact]
    public async Task Mutation_EventCommittedWithIt_NotTwice()
    {
        var key = await _developer.CreateKeyAsync("tenants/dev", "once");
        await _developer.Raw.DisableKeyAsync(new DisableKeyRequest { Name = key.Name });
        var events = await EventsAsync(new ListAuditEventsRequest { Resource = key.Name });
        Assert.Equal(["CreateKey", "DisableKey"], events.Select(e => e.Operation[(e.Operation.LastIndexOf('/') + 1)..]));

        // One CreateKey event in the table (the one its transaction carried), not a second one
        // from the group commit. Atomicity itself: SqliteKeyStoreTests.MutationInAnAuditScope_….
        Assert.Equal("1", RawSqlite.Scalar(_server.DatabasePath, "SELECT count(*) FROM audit_events WHERE resource = $r AND operation LIKE '%/CreateKey'", ("$r", key.Name)));
    }

    private const int TokenSecretStart = 4 + 16 + 1;

    [Fact]
    public async Task Canary_NoSecretInTheAuditTableTheExportTheStreamOrTheLogs()
    {
        var plaintext = Encoding.UTF8.GetBytes("CANARY-PLAINTEXT-5a1f9e");
        var contextValue = "CANARY-CONTEXT-VALUE-c03d";
        var context = new Dictionary<string, string> { ["patient"] = contextValue };
        var key = await _developer.CreateKeyAsync("tenants/dev", "canary");
        var blob = (await _developer.EncryptAsync(key.Name, plaintext, context)).Ciphertext;
        using (await _developer.DecryptAsync(blob, context))
        {
        }

        using var dataKey = await _developer.GenerateDataKeyAsync(key.Name, context);
        var dataKeyBytes = dataKey.Plaintext.ToArray();

        // A blind-index lookup (docs/client.md): the value goes to GenerateMac, inside the MAC input.
        var indexedValue = "CANARY-INDEXED-VALUE-e71b";
        var macVersion = (await _developer.CreateKeyAsync("tenants/dev", "canary-index", KeyPurpose.Mac)).Primary.Name;
        await new Kms.Client.BlindIndex(_developer, macVersion, "patients.email", 32).ComputeAsync(indexedValue);

        await Assert.ThrowsAsync<RpcException>(() => _developer.DecryptAsync(blob, new Dictionary<string, string> { ["patient"] = contextValue + "x" }));
        var issued = await _server.CreatePrincipalWithTokenAsync("canary-bot", "dev", "key-user");
        using (var bot = _server.CreateClient(issued))
        {
            await bot.GenerateRandomAsync(8);
        }

        using var wrong = _server.CreateClient(issued[..^4] + "AAAA");
        await Assert.ThrowsAsync<RpcException>(() => wrong.GenerateRandomAsync(8));
        var export = await ExportAsync();
        await _officer.Audit.GetAuditCheckpointAsync(new GetAuditCheckpointRequest());

        var places = new Dictionary<string, byte[]>
        {
            ["database"] = DatabaseFiles.ReadShared(_server.DatabasePath),
            ["wal"] = File.Exists(_server.DatabasePath + "-wal") ? DatabaseFiles.ReadShared(_server.DatabasePath + "-wal") : [],
            ["export"] = Encoding.UTF8.GetBytes(export),
            ["logs"] = Encoding.UTF8.GetBytes(_server.Logs.AllText),
            ["checkpoints"] = DatabaseFiles.ReadShared(Path.Combine(_server.DataDir, "audit", "checkpoints.jsonl")),
        };
        var secrets = new Dictionary<string, byte[]>
        {
            ["plaintext"] = plaintext,
            ["data key"] = dataKeyBytes,
            ["context value"] = Encoding.UTF8.GetBytes(contextValue),
            ["blind-indexed value"] = Encoding.UTF8.GetBytes(indexedValue),
            ["api token"] = Encoding.UTF8.GetBytes(issued),
            // kms_<16 hex>_<secret>: the secret is base64url and may itself contain '_'.
            ["api token secret"] = Encoding.UTF8.GetBytes(issued[TokenSecretStart..]),
            ["wrong token secret"] = Encoding.UTF8.GetBytes(issued[TokenSecretStart..^4] + "AAAA"),
        };
        Assert.Contains("\"patient\":", export, StringComparison.Ordinal);
        Assert.Contains(export.Split('\n'), line => line.Contains("GenerateMac", StringComparison.Ordinal) && line.Contains(macVersion, StringComparison.Ordinal));
        foreach (var (place, content) in places)
        {
            Assert.NotEmpty(content);
            foreach (var (name, secret) in secrets)
            {
                foreach (var form in Forms(secret))
                {
                    Assert.False(content.AsSpan().IndexOf(form) >= 0, $"{name} found in {place}");
                }
            }
        }
    }

    [Fact]
    public async Task Restart_PublishedKeyExists_ReplacedWholeNeverRewrittenInPlace()
    {
        var pem = Path.Combine(_server.DataDir, "audit", "signing-key.pem");
        var published = await File.ReadAllTextAsync(pem);

        // Every start publishes the key again. A reader holding the previous file (a copy off
        // the host, say) sees it unchanged: it was renamed over, not truncated and rewritten,
        // which a crash in the middle would leave torn or empty.
        await File.WriteAllTextAsync(pem, "the previous file\n");
        await using var held = new FileStream(pem, FileMode.Open, FileAccess.Read, FileShare.ReadWrite | FileShare.Delete);
        _developer.Dispose();
        _officer.Dispose();
        _server = await _server.RestartAsync();
        _developer = _server.CreateClient();
        _officer = _server.CreateClient(await _server.CreatePrincipalWithTokenAsync("officer-after-restart", null, "security-officer"));

        Assert.Equal("the previous file\n", await new StreamReader(held).ReadToEndAsync());
        Assert.Equal(published, await File.ReadAllTextAsync(pem));
        Assert.DoesNotContain(Directory.GetFiles(Path.GetDirectoryName(pem)!), f => Path.GetFileName(f).StartsWith('.'));
    }

    // Before, a restarted server knew only the database's checkpoints: signed events rewritten
    // (and re-chained) while it was stopped, with the checkpoint rows after them deleted, were
    // signed at its next checkpoint. Now it reads its own record, checkpoints.jsonl, at start.
    [Fact]
    public async Task Restart_SignedEventsRewrittenWhileStopped_RefusesToSignOverIt_ExportSignedAsBefore_FileMovedAside_Signs()
    {
        var key = await _developer.CreateKeyAsync("tenants/dev", "rewritten");
        var signed = (await _officer.Audit.GetAuditCheckpointAsync(new GetAuditCheckpointRequest())).Checkpoint.Sequence;
        await _developer.EncryptAsync(key.Name, new byte[] { 1 });
        _developer.Dispose();
        _officer.Dispose();
        await _server.DisposeAsync(); // its final checkpoint goes to the file as well

        // The key's creation rewritten to another principal, every body after it re-chained, and
        // the checkpoint rows from it on deleted: what a database writer without the HSM can do.
        await using (var connection = new SqliteConnection($"Data Source={_server.DatabasePath};Pooling=False"))
        {
            await connection.OpenAsync();
            var created = await ScalarAsync<long>(connection, $"SELECT seq FROM audit_events WHERE resource = '{key.Name}' ORDER BY seq LIMIT 1");
            var previous = await ScalarAsync<string>(connection, $"SELECT hash FROM audit_events WHERE seq = {created - 1}");
            var head = await ScalarAsync<long>(connection, "SELECT max(seq) FROM audit_events");
            for (var seq = created; seq <= head; seq++)
            {
                var body = System.Text.RegularExpressions.Regex.Replace(await ScalarAsync<string>(connection, $"SELECT body FROM audit_events WHERE seq = {seq}"), "\"prev\":\"[0-9a-f]{64}\"", $"\"prev\":\"{previous}\"");
                body = seq == created ? body.Replace("\"principal\":\"token:developer\"", "\"principal\":\"token:mallory\"", StringComparison.Ordinal) : body;
                previous = AuditChain.HashOf(body);
                await using var update = connection.CreateCommand();
                update.CommandText = "UPDATE audit_events SET body = @body, hash = @hash WHERE seq = @seq";
                update.Parameters.AddWithValue("@body", body);
                update.Parameters.AddWithValue("@hash", previous);
                update.Parameters.AddWithValue("@seq", seq);
                await update.ExecuteNonQueryAsync();
            }

            await using var delete = connection.CreateCommand();
            delete.CommandText = $"DELETE FROM audit_checkpoints WHERE seq >= {created}";
            await delete.ExecuteNonQueryAsync();
        }

        // The node cannot tell the rewrite from a rollback, which would serve destroyed versions
        // again: it refuses to start (event 1318) unless the operator accepts it as it is; then,
        // as before, it serves and signs nothing over it.
        var checkpoints = Path.Combine(_server.DataDir, "audit", "checkpoints.jsonl");
        var notStarted = Assert.IsType<Kms.Core.Errors.KmsException>((await KmsTestServer.StartRefusedAsync(_server.Token, _server.DataDir)).Refusal);
        Assert.Contains($"does not pass through checkpoint {Kms.Core.Audit.AuditExport.ParseCheckpoint(File.ReadAllLines(checkpoints)[^1])!.Sequence} that this node signed", notStarted.Message, StringComparison.Ordinal);
        _server = await KmsTestServer.StartAsync(_server.Token, _server.DataDir, "dev", "--Kms:Audit:AcceptRollback=true");
        _developer = _server.CreateClient();
        _officer = _server.CreateClient(await _server.CreatePrincipalWithTokenAsync("officer-after-rewrite", null, "security-officer"));
        var refused = await Assert.ThrowsAsync<RpcException>(() => _officer.Audit.GetAuditCheckpointAsync(new GetAuditCheckpointRequest()).ResponseAsync);
        Assert.Equal(StatusCode.FailedPrecondition, refused.StatusCode);
        Assert.Contains($"read at start from {checkpoints}", refused.Status.Detail, StringComparison.Ordinal);
        Assert.Contains("move that file aside", refused.Status.Detail, StringComparison.Ordinal);
        Assert.Contains("does not pass through checkpoint", _server.Logs.AllText, StringComparison.Ordinal); // event 1309

        var published = (await _developer.Audit.GetAuditSigningKeyAsync(new GetAuditSigningKeyRequest())).PublicKeyDer.ToByteArray();
        var result = AuditVerifier.Verify(new StringReader(await ExportAsync()), published);
        Assert.True(result.LastSignedSequence < signed, $"signed to {result.LastSignedSequence}, the rewrite starts after {signed}");

        // A rollback on purpose (documented): the files moved aside, the restarted server signs.
        // The run on AcceptRollback kept head.json too (the head the node saw before the rewrite,
        // which the chain does not pass through either): checkpoints.jsonl alone moved aside, the
        // start is refused on it. Before, that run overwrote head.json with the rewritten chain's
        // head, and signed it if its checkpoint file had allowed.
        _developer.Dispose();
        _officer.Dispose();
        await _server.DisposeAsync();
        File.Move(checkpoints, checkpoints + ".replaced-test");
        var seenHead = Path.Combine(_server.DataDir, "audit", SeenHead.FileName);
        notStarted = Assert.IsType<Kms.Core.Errors.KmsException>((await KmsTestServer.StartRefusedAsync(_server.Token, _server.DataDir)).Refusal);
        Assert.Contains($"does not pass through the head this node last saw, event {SeenHead.Parse(await File.ReadAllBytesAsync(seenHead))!.Head.Sequence} ({seenHead})", notStarted.Message, StringComparison.Ordinal);
        File.Move(seenHead, seenHead + ".replaced-test");
        _server = await KmsTestServer.StartAsync(_server.Token, _server.DataDir);
        _developer = _server.CreateClient();
        _officer = _server.CreateClient(await _server.CreatePrincipalWithTokenAsync("officer-after-move", null, "security-officer"));
        Assert.NotNull((await _officer.Audit.GetAuditCheckpointAsync(new GetAuditCheckpointRequest())).Checkpoint);
    }

    // At the stop the node records the head it leaves ({DataDir}/audit/head.json), after the final
    // checkpoint. Before, a record that could not be written was logged as 1303, "the final audit
    // checkpoint could not be written" (reason "head record: IOException"), although that
    // checkpoint was signed. Now it is its own warning, 1319, naming the exception's type only.
    [Fact]
    public async Task Stop_TheHeadRecordCannotBeWritten_Logged1319WithTheExceptionsType_Not1303()
    {
        var server = await KmsTestServer.StartAsync();
        var stopped = false;
        try
        {
            using (var developer = server.CreateClient())
            {
                await developer.CreateKeyAsync("tenants/dev", "head-at-stop");
            }

            // A directory where the record is renamed into place (the housekeeping may rename a
            // record there meanwhile: taken out again until the directory stands).
            var seenHead = Path.Combine(server.DataDir, "audit", SeenHead.FileName);
            while (!Directory.Exists(seenHead))
            {
                File.Delete(seenHead);
                try
                {
                    Directory.CreateDirectory(seenHead);
                }
                catch (IOException)
                {
                    // A record renamed into place between the two: again.
                }
            }

            await File.WriteAllTextAsync(Path.Combine(seenHead, "in-the-way"), "not a record\n");
            stopped = true;
            await server.DisposeAsync();

            var logged = server.Logs.Events.Where(e => e.Contains("Id: 1319", StringComparison.Ordinal)).ToList();
            var line = Assert.Single(logged);
            Assert.Matches(@"^Warning this node's record of the audit head it last saw could not be written at stop \(""?\w+Exception""?\); ", line);
            Assert.DoesNotContain(seenHead, line, StringComparison.Ordinal);
            Assert.DoesNotContain("Id: 1303", server.Logs.AllText, StringComparison.Ordinal);
        }
        finally
        {
            if (!stopped)
            {
                await server.DisposeAsync();
            }
        }
    }

    // A node held on its head record (head.json: the database rolled back behind it while the
    // node was stopped, the start accepted as it is) keeps the record on purpose, and its stop
    // says nothing of it: the hold is reported while it runs (1311–1313, the gauge). Before, its
    // every stop logged 1319, "could not be written at stop (KmsException)", as if it had failed,
    // and 1303, "the final audit checkpoint could not be written (KmsException)": one line (1321,
    // Information) now says there is no final checkpoint because the node is held.
    [Fact]
    public async Task Stop_HeldOnItsHeadRecord_RecordKept_No1319Or1303_1321Once()
    {
        var token = SoftHsm.CreateToken();
        var dataDir = Scratch.NewPath("kms-server-");
        var seenHead = Path.Combine(dataDir, "audit", SeenHead.FileName);
        var first = await KmsTestServer.StartAsync(token, dataDir);
        try
        {
            using var developer = first.CreateClient();
            await developer.CreateKeyAsync("tenants/dev", "before-the-rollback-1");
            await developer.CreateKeyAsync("tenants/dev", "before-the-rollback-2");
        }
        finally
        {
            await first.DisposeAsync();
        }

        // Rolled back behind the record while stopped, events and checkpoints alike; the node's
        // checkpoints.jsonl moved aside, so that head.json alone holds it.
        var recorded = SeenHead.Parse(await File.ReadAllBytesAsync(seenHead))!.Head;
        RawSqlite.Execute(first.DatabasePath, "DELETE FROM audit_events WHERE seq > $s", ("$s", recorded.Sequence - 2));
        RawSqlite.Execute(first.DatabasePath, "DELETE FROM audit_checkpoints WHERE seq > $s", ("$s", recorded.Sequence - 2));
        var checkpoints = Path.Combine(dataDir, "audit", "checkpoints.jsonl");
        File.Move(checkpoints, checkpoints + ".replaced-test");

        var held = await KmsTestServer.StartAsync(token, dataDir, "dev", "--Kms:Audit:AcceptRollback=true");
        try
        {
            Assert.NotNull(held.Services.GetRequiredService<AuditLog>().CheckpointRefusedSince);
            using var developer = held.CreateClient();
            await developer.CreateKeyAsync("tenants/dev", "after-the-rollback");
        }
        finally
        {
            await held.DisposeAsync();
        }

        Assert.Equal(recorded, SeenHead.Parse(await File.ReadAllBytesAsync(seenHead))!.Head);
        Assert.DoesNotContain("Id: 1319", held.Logs.AllText, StringComparison.Ordinal);
        Assert.DoesNotContain("Id: 1303", held.Logs.AllText, StringComparison.Ordinal);
        Assert.Single(held.Logs.Events, e => e.Contains("Id: 1321", StringComparison.Ordinal) && e.StartsWith("Information ", StringComparison.Ordinal));
    }

    // Claim 148, on SoftHSM. A node stopped with its head recorded (head.json, checkpoints.jsonl);
    // another node on the chain signs past it; a database writer deletes the signed events through
    // that checkpoint and chains retention's record of the cut onto the unsigned tail, without the
    // audit key's signature of it; the healthy node signs a checkpoint past the record. No cut:
    // the stopped node's records are not passed through (it would be refused its start and held),
    // and the verifier refuses the export. Before, both passed: the record was taken for retention's
    // once a checkpoint covered it.
    [Fact]
    public async Task RetentionRecordForgedOntoTheUnsignedTail_SignedPastByAHealthyNode_NoCut_OnSoftHsm()
    {
        var token = SoftHsm.CreateToken();
        var dataDir = Scratch.NewPath("kms-server-");
        var database = Path.Combine(dataDir, "kms.db");
        var server = await KmsTestServer.StartAsync(token, dataDir);
        try
        {
            using var developer = server.CreateClient();
            await developer.CreateKeyAsync("tenants/dev", "before-the-forgery");
        }
        finally
        {
            await server.DisposeAsync();
        }

        Kms.Storage.Sqlite.SqliteStore.ReleasePooledConnections();
        await using var store = await Kms.Storage.Sqlite.SqliteStore.OpenAsync(new() { DatabasePath = database }, default);
        await using var hsm = Kms.Hsm.Pkcs11Hsm.Open(token.Options(), Microsoft.Extensions.Logging.Abstractions.NullLogger.Instance);
        var other = new AuditLog(store, store, hsm, TimeProvider.System, new AuditOptions());
        await other.InitializeAsync(default);
        await store.AppendAuditAsync([Event("other-node")], default);
        var signed = await other.CheckpointAsync(default);
        Assert.NotNull(signed);

        // The writer: the signed prefix through that checkpoint deleted, a record of the cut forged onto the tail.
        Assert.True((await store.PruneAuditAsync(signed.Sequence, default)).Events > 0);
        await store.AppendAuditAsync([Event("other-node"), Event(AuditChain.RetentionPrincipal) with { Operation = AuditChain.RetentionOperation, Resource = AuditChain.RetentionResource(signed.Sequence) }], default);
        await store.AppendAuditAsync([Event("other-node")], default);
        Assert.NotNull(await other.CheckpointAsync(default)); // the healthy node signs past it

        var restarted = new AuditLog(store, store, hsm, TimeProvider.System, new AuditOptions());
        await restarted.InitializeAsync(default);
        Assert.False((await restarted.RequireOwnRecordAsync(Path.Combine(dataDir, "audit", "checkpoints.jsonl"), default)).PassesThrough);
        Assert.False((await restarted.ReadOwnHeadAsync(Path.Combine(dataDir, "audit", SeenHead.FileName), default)).PassesThrough);

        var export = new StringBuilder();
        await foreach (var line in other.ExportAsync(0, default))
        {
            export.Append(line).Append('\n');
        }

        var verified = AuditVerifier.Verify(new StringReader(export.ToString()), other.PublicKey);
        Assert.False(verified.Valid);
        Assert.Equal(signed.Sequence + 1, verified.FirstBadSequence);
        Assert.Contains("carries no signature of the cut, while checkpoint", verified.Problem, StringComparison.Ordinal);

        static AuditEntry Event(string principal) => new()
        {
            Time = DateTimeOffset.UtcNow,
            RequestId = Guid.NewGuid().ToString("N"),
            Principal = principal,
            Operation = "test/OtherNode",
            Resource = "event",
            Outcome = "OK",
        };
    }

    // Retention's cut, on SoftHSM through the hosted server. A database writer without the HSM
    // inserts a checkpoint row past the newest one the audit key signed, over an event of the
    // chain, its signature bogus. Retention passes over it (event 1332, naming it) and cuts at the
    // signed checkpoint before it, which anchors what remains. Before, the row was the cut: the
    // events through it deleted, under a signed record of that cut.
    [Fact]
    public async Task Retention_ACheckpointRowWithABogusSignature_PassedOver_Logged1332_TheCutAtTheSignedOneBefore_OnSoftHsm()
    {
        var server = await KmsTestServer.StartAsync(null, null, "dev", (Action<IServiceCollection>?)null, "--Kms:Audit:CheckpointInterval=12:00:00");
        try
        {
            var audit = server.Services.GetRequiredService<AuditLog>();
            using var developer = server.CreateClient();
            await developer.CreateKeyAsync("tenants/dev", "before-the-row");
            var signed = await audit.CheckpointAsync(default);
            Assert.NotNull(signed);
            await developer.CreateKeyAsync("tenants/dev", "after-the-checkpoint");

            long row;
            await using (var connection = new SqliteConnection($"Data Source={server.DatabasePath};Pooling=False"))
            {
                await connection.OpenAsync();
                row = await ScalarAsync<long>(connection, "SELECT max(seq) FROM audit_events");
                Assert.True(row > signed.Sequence, $"no event after checkpoint {signed.Sequence}");
                var head = AuditChain.HashOf(await ScalarAsync<string>(connection, $"SELECT body FROM audit_events WHERE seq = {row}"));
                await using var insert = connection.CreateCommand();
                insert.CommandText = "INSERT INTO audit_checkpoints (seq, head, time, key, body, signature) VALUES (@seq, @head, @time, @key, @body, @signature)";
                insert.Parameters.AddWithValue("@seq", row);
                insert.Parameters.AddWithValue("@head", head);
                insert.Parameters.AddWithValue("@time", DateTimeOffset.UtcNow.ToUnixTimeMilliseconds());
                insert.Parameters.AddWithValue("@key", audit.Fingerprint);
                insert.Parameters.AddWithValue("@body", AuditChain.CheckpointBody(row, head, DateTimeOffset.UtcNow, audit.Fingerprint));
                insert.Parameters.AddWithValue("@signature", System.Security.Cryptography.RandomNumberGenerator.GetBytes(64));
                Assert.Equal(1, await insert.ExecuteNonQueryAsync());
            }

            await developer.CreateKeyAsync("tenants/dev", "after-the-row");
            Assert.Equal(signed.Sequence, await audit.PruneAsync(DateTimeOffset.UtcNow + TimeSpan.FromDays(401), default));
            await using (var connection = new SqliteConnection($"Data Source={server.DatabasePath};Pooling=False"))
            {
                await connection.OpenAsync();
                Assert.Equal(signed.Sequence + 1, await ScalarAsync<long>(connection, "SELECT min(seq) FROM audit_events"));
            }

            Assert.Single(server.Logs.Events, e => e.Contains("Id: 1332", StringComparison.Ordinal) && e.Contains($"checkpoint row {row} ", StringComparison.Ordinal)
                && e.Contains("did not sign it as a checkpoint", StringComparison.Ordinal) && e.StartsWith("Warning ", StringComparison.Ordinal));
        }
        finally
        {
            await server.DisposeAsync();
        }
    }

    // Retention's cut deletes the checkpoint rows below it with the events they stood over, a
    // database writer's too (here one inserted with SQL below the signed checkpoint, its signature
    // bogus): the server names it (event 1344, with the cut), once. Before, it went without a word.
    [Fact]
    public async Task Retention_ACheckpointRowWithABogusSignatureBelowTheCut_DeletedWithTheEvents_Logged1344_OnSoftHsm()
    {
        var server = await KmsTestServer.StartAsync(null, null, "dev", (Action<IServiceCollection>?)null, "--Kms:Audit:CheckpointInterval=12:00:00");
        try
        {
            var audit = server.Services.GetRequiredService<AuditLog>();
            using var developer = server.CreateClient();
            await developer.CreateKeyAsync("tenants/dev", "before-the-row");
            await developer.CreateKeyAsync("tenants/dev", "still-before-the-checkpoint");
            var signed = await audit.CheckpointAsync(default);
            Assert.NotNull(signed);
            await developer.CreateKeyAsync("tenants/dev", "after-the-checkpoint");

            var row = signed.Sequence - 1;
            await using (var connection = new SqliteConnection($"Data Source={server.DatabasePath};Pooling=False"))
            {
                await connection.OpenAsync();
                var head = AuditChain.HashOf(await ScalarAsync<string>(connection, $"SELECT body FROM audit_events WHERE seq = {row}"));
                await using var insert = connection.CreateCommand();
                insert.CommandText = "INSERT INTO audit_checkpoints (seq, head, time, key, body, signature) VALUES (@seq, @head, @time, @key, @body, @signature)";
                insert.Parameters.AddWithValue("@seq", row);
                insert.Parameters.AddWithValue("@head", head);
                insert.Parameters.AddWithValue("@time", DateTimeOffset.UtcNow.ToUnixTimeMilliseconds());
                insert.Parameters.AddWithValue("@key", audit.Fingerprint);
                insert.Parameters.AddWithValue("@body", AuditChain.CheckpointBody(row, head, DateTimeOffset.UtcNow, audit.Fingerprint));
                insert.Parameters.AddWithValue("@signature", System.Security.Cryptography.RandomNumberGenerator.GetBytes(64));
                Assert.Equal(1, await insert.ExecuteNonQueryAsync());
            }

            Assert.Equal(signed.Sequence, await audit.PruneAsync(DateTimeOffset.UtcNow + TimeSpan.FromDays(401), default));
            await using (var connection = new SqliteConnection($"Data Source={server.DatabasePath};Pooling=False"))
            {
                await connection.OpenAsync();
                Assert.Equal(0, await ScalarAsync<long>(connection, $"SELECT count(*) FROM audit_checkpoints WHERE seq = {row}"));
            }

            Assert.Single(server.Logs.Events, e => e.Contains("Id: 1344", StringComparison.Ordinal) && e.Contains($"deleted 1 checkpoint rows below its cut through event {signed.Sequence} ", StringComparison.Ordinal)
                && e.Contains($"they stood over: {row};", StringComparison.Ordinal) && e.StartsWith("Warning ", StringComparison.Ordinal));
        }
        finally
        {
            await server.DisposeAsync();
        }
    }

    // On SoftHSM through the hosted server, rows inserted with SQL by a database writer without the
    // HSM. A row retention passes over (1332, bogus signature) is logged once a run, though two
    // passes meet it (before, once each pass). A row one past the last event, bogus signature: the
    // next event chains from the last event, not from it (before, the row was the head: the event
    // took the sequence after it and a checkpoint was signed over a head no event has); the
    // checkpoint this node signs at its sequence replaces it (before, ON CONFLICT DO NOTHING kept
    // the row, the signed checkpoint in no database), logged as 1331.
    [Fact]
    public async Task CheckpointRows_InsertedAheadOfTheChain_NotTheHead_ReplacedBySignedCheckpoint_Logged1331_1332OnceARun_OnSoftHsm()
    {
        var server = await KmsTestServer.StartAsync(null, null, "dev", (Action<IServiceCollection>?)null, "--Kms:Audit:CheckpointInterval=12:00:00");
        try
        {
            var audit = server.Services.GetRequiredService<AuditLog>();
            var store = server.Services.GetRequiredService<Kms.Core.Ports.IAuditStore>();
            using var developer = server.CreateClient();
            await developer.CreateKeyAsync("tenants/dev", "first");
            var signed = await audit.CheckpointAsync(default);
            Assert.NotNull(signed);
            await developer.CreateKeyAsync("tenants/dev", "second");

            long passedOverRow;
            await using (var connection = new SqliteConnection($"Data Source={server.DatabasePath};Pooling=False"))
            {
                await connection.OpenAsync();
                passedOverRow = await ScalarAsync<long>(connection, "SELECT max(seq) FROM audit_events");
                var atRow = AuditChain.HashOf(await ScalarAsync<string>(connection, $"SELECT body FROM audit_events WHERE seq = {passedOverRow}"));
                await InsertRowAsync(connection, passedOverRow, atRow, AuditChain.CheckpointBody(passedOverRow, atRow, DateTimeOffset.UtcNow, audit.Fingerprint));
            }

            // Both passes expire the events through the row, not the record of the first cut (and
            // the checkpoint signed over it) chained after `expired`: the second meets the row again.
            var expired = DateTimeOffset.UtcNow + TimeSpan.FromDays(400); // Kms:Audit:Retention, 400 days: the cutoff is now
            await Task.Delay(TimeSpan.FromMilliseconds(20));
            Assert.Equal(signed.Sequence, await audit.PruneAsync(expired, default));
            Assert.Equal(0, await audit.PruneAsync(expired, default));
            Assert.Single(server.Logs.Events, e => e.Contains("Id: 1332", StringComparison.Ordinal) && e.Contains($"checkpoint row {passedOverRow} ", StringComparison.Ordinal));

            long last;
            string lastHash;
            await using (var connection = new SqliteConnection($"Data Source={server.DatabasePath};Pooling=False"))
            {
                await connection.OpenAsync();
                last = await ScalarAsync<long>(connection, "SELECT max(seq) FROM audit_events");
                lastHash = await ScalarAsync<string>(connection, $"SELECT hash FROM audit_events WHERE seq = {last}");
                var forged = new string('f', 64);
                await InsertRowAsync(connection, last + 1, forged, AuditChain.CheckpointBody(last + 1, forged, DateTimeOffset.UtcNow, audit.Fingerprint));
            }

            Assert.Equal(new AuditHead(last, lastHash), await store.GetAuditHeadAsync(default));
            var next = await store.AppendAuditAsync(
                [new AuditEntry { Time = DateTimeOffset.UtcNow, RequestId = "after-the-row", Principal = "token:writer-test", Operation = "test/Writer", Resource = "event", Outcome = "OK" }],
                default);
            Assert.Equal((last + 1, lastHash), (next[0].Sequence, next[0].PreviousHash));
            var checkpoint = await audit.CheckpointAsync(default);
            Assert.Equal(last + 1, checkpoint?.Sequence);
            await using (var connection = new SqliteConnection($"Data Source={server.DatabasePath};Pooling=False"))
            {
                await connection.OpenAsync();
                Assert.Equal(checkpoint!.Body, await ScalarAsync<string>(connection, $"SELECT body FROM audit_checkpoints WHERE seq = {last + 1}"));
            }

            Assert.Single(server.Logs.Events, e => e.Contains("Id: 1331", StringComparison.Ordinal) && e.Contains($"checkpoint row {last + 1}:", StringComparison.Ordinal)
                && e.Contains("replaced with the signed checkpoint", StringComparison.Ordinal) && e.StartsWith("Warning ", StringComparison.Ordinal));
        }
        finally
        {
            await server.DisposeAsync();
        }
    }

    // A database writer without the HSM: a checkpoint row with a bogus signature.
    private static async Task InsertRowAsync(SqliteConnection connection, long sequence, string head, string body)
    {
        await using var insert = connection.CreateCommand();
        insert.CommandText = "INSERT INTO audit_checkpoints (seq, head, time, key, body, signature) VALUES (@seq, @head, @time, @key, @body, @signature)";
        insert.Parameters.AddWithValue("@seq", sequence);
        insert.Parameters.AddWithValue("@head", head);
        insert.Parameters.AddWithValue("@time", DateTimeOffset.UtcNow.ToUnixTimeMilliseconds());
        insert.Parameters.AddWithValue("@key", body.Split("\"key\":\"")[1].Split('"')[0]);
        insert.Parameters.AddWithValue("@body", body);
        insert.Parameters.AddWithValue("@signature", System.Security.Cryptography.RandomNumberGenerator.GetBytes(64));
        Assert.Equal(1, await insert.ExecuteNonQueryAsync());
    }

    // Retention cut the whole log (here the events deleted under the checkpoint signed at the last
    // of them, as a cut there leaves it): the head is that checkpoint row. A database writer
    // without the HSM inserts another row above it. Before, the next mutation's own event and the
    // group commit's chained onto the writer's head, and only the checkpoint over them was
    // refused (1331). Now no event is written, the requests answer UNAVAILABLE and change nothing
    // (no audit, no answer), 1340 says why, once; with the row deleted, the log goes on from the
    // checkpoint the audit key signed.
    [Fact]
    public async Task NoEventStored_HeadIsACheckpointRowTheAuditKeyDidNotSign_RequestsUnavailable_NothingChanged_Logged1340Once_OnSoftHsm()
    {
        var server = await KmsTestServer.StartAsync(null, null, "dev", (Action<IServiceCollection>?)null, "--Kms:Audit:CheckpointInterval=12:00:00");
        try
        {
            var audit = server.Services.GetRequiredService<AuditLog>();
            var store = server.Services.GetRequiredService<Kms.Core.Ports.IAuditStore>();
            using var developer = server.CreateClient();
            await developer.CreateKeyAsync("tenants/dev", "first");
            var signed = await audit.CheckpointAsync(default);
            Assert.NotNull(signed);
            var planted = signed.Sequence + 5;
            var forged = new string('f', 64);
            await using (var connection = new SqliteConnection($"Data Source={server.DatabasePath};Pooling=False"))
            {
                await connection.OpenAsync();
                await using (var delete = connection.CreateCommand())
                {
                    delete.CommandText = "DELETE FROM audit_events";
                    await delete.ExecuteNonQueryAsync();
                }

                await InsertRowAsync(connection, planted, forged, AuditChain.CheckpointBody(planted, forged, DateTimeOffset.UtcNow, audit.Fingerprint));
            }

            Assert.Equal(new AuditHead(planted, forged), await store.GetAuditHeadAsync(default));

            // A mutation (its event in its own transaction) and a read (the group commit's).
            var mutation = await Assert.ThrowsAsync<RpcException>(() => developer.CreateKeyAsync("tenants/dev", "second"));
            Assert.Equal(StatusCode.Unavailable, mutation.StatusCode);
            var read = await Assert.ThrowsAsync<RpcException>(() => developer.GetKeyAsync("tenants/dev/keys/first"));
            Assert.Equal(StatusCode.Unavailable, read.StatusCode);
            Assert.DoesNotContain(forged, mutation.Status.Detail + read.Status.Detail, StringComparison.Ordinal);
            await using (var connection = new SqliteConnection($"Data Source={server.DatabasePath};Pooling=False"))
            {
                await connection.OpenAsync();
                Assert.Equal(0L, await ScalarAsync<long>(connection, "SELECT count(*) FROM audit_events"));
                Assert.Equal(0L, await ScalarAsync<long>(connection, "SELECT count(*) FROM keys WHERE key_id = 'second'"));
            }

            Assert.Single(server.Logs.Events, e => e.Contains("Id: 1340", StringComparison.Ordinal) && e.Contains($"checkpoint row {planted}, ", StringComparison.Ordinal)
                && e.StartsWith("Error ", StringComparison.Ordinal));

            await using (var connection = new SqliteConnection($"Data Source={server.DatabasePath};Pooling=False"))
            {
                await connection.OpenAsync();
                await using var delete = connection.CreateCommand();
                delete.CommandText = $"DELETE FROM audit_checkpoints WHERE seq = {planted}";
                Assert.Equal(1, await delete.ExecuteNonQueryAsync());
            }

            await developer.CreateKeyAsync("tenants/dev", "second");
            var resumed = await store.ListAuditEventsAsync(new AuditQuery { Limit = 1 }, default);
            Assert.Equal((signed.Sequence + 1, signed.HeadHash), (resumed[0].Sequence, resumed[0].PreviousHash));
        }
        finally
        {
            await server.DisposeAsync();
        }
    }

    // A node stopped with the head it left recorded (head.json; its final checkpoint is there too).
    // Retention run by another node on the chain then deleted events through that head — a cut at
    // the stop's own checkpoint — and, the second time, past it under a later checkpoint the
    // audit key signed. Neither is a rollback (a pruned prefix under a later signed checkpoint):
    // the node starts each time.
    [Fact]
    public async Task Start_RetentionByAnotherNodeCutThroughOrPastTheHeadThisNodeRecordedAtItsStop_Starts()
    {
        var token = SoftHsm.CreateToken();
        var dataDir = Scratch.NewPath("kms-server-");
        var database = Path.Combine(dataDir, "kms.db");
        var seenHead = Path.Combine(dataDir, "audit", SeenHead.FileName);
        async Task<AuditHead> ServeAndStopAsync(string key)
        {
            var server = await KmsTestServer.StartAsync(token, dataDir);
            try
            {
                using var developer = server.CreateClient();
                await developer.CreateKeyAsync("tenants/dev", key);
            }
            finally
            {
                await server.DisposeAsync();
            }

            return SeenHead.Parse(await File.ReadAllBytesAsync(seenHead))!.Head;
        }

        // Another node on the same chain and audit key (the same token), the server stopped.
        async Task OtherNodeAsync(Func<AuditLog, Kms.Storage.Sqlite.SqliteStore, Task> act)
        {
            await using var store = await Kms.Storage.Sqlite.SqliteStore.OpenAsync(new() { DatabasePath = database }, default);
            await using var hsm = Kms.Hsm.Pkcs11Hsm.Open(token.Options(), Microsoft.Extensions.Logging.Abstractions.NullLogger.Instance);
            var other = new AuditLog(store, store, hsm, TimeProvider.System, new AuditOptions());
            await other.InitializeAsync(default);
            await act(other, store);
        }

        var head = await ServeAndStopAsync("first");
        var checkpoints = Path.Combine(dataDir, "audit", "checkpoints.jsonl");
        Assert.Equal(head.Sequence, AuditExport.ParseCheckpoint(File.ReadAllLines(checkpoints)[^1])!.Sequence); // the stop signed its head

        // Cut through the head recorded, at the stop's checkpoint.
        await OtherNodeAsync(async (other, _) => Assert.True(await other.PruneThroughAsync(head.Sequence, default) > 0));
        Kms.Storage.Sqlite.SqliteStore.ReleasePooledConnections();
        Assert.Equal(head.Sequence + 1, long.Parse(RawSqlite.Scalar(database, "SELECT min(seq) FROM audit_events"), System.Globalization.CultureInfo.InvariantCulture));
        head = await ServeAndStopAsync("second");

        // Cut past it, at a later checkpoint of the other node's.
        await OtherNodeAsync(async (other, store) =>
        {
            await store.AppendAuditAsync([OtherNodesEvent()], default);
            var later = await other.CheckpointAsync(default);
            Assert.True(later?.Sequence > head.Sequence, $"checkpoint {later?.Sequence} past the head {head.Sequence}");
            await store.AppendAuditAsync([OtherNodesEvent()], default);
            Assert.True(await other.PruneThroughAsync(later!.Sequence, default) > 0);
        });
        Kms.Storage.Sqlite.SqliteStore.ReleasePooledConnections();
        Assert.True(long.Parse(RawSqlite.Scalar(database, "SELECT min(seq) FROM audit_events"), System.Globalization.CultureInfo.InvariantCulture) > head.Sequence + 1);
        var third = await ServeAndStopAsync("third");
        Assert.True(third.Sequence > head.Sequence);

        static AuditEntry OtherNodesEvent() => new()
        {
            Time = DateTimeOffset.UtcNow,
            RequestId = Guid.NewGuid().ToString("N"),
            Principal = "token:other-node",
            Operation = "test/OtherNode",
            Resource = "event",
            Outcome = "OK",
        };
    }

    private static async Task<T> ScalarAsync<T>(SqliteConnection connection, string sql)
    {
        await using var command = connection.CreateCommand();
        command.CommandText = sql;
        return (T)Convert.ChangeType((await command.ExecuteScalarAsync())!, typeof(T), System.Globalization.CultureInfo.InvariantCulture);
    }

    [Fact]
    public async Task Export_VerifiesOffline_AgainstThePublishedKey_AndATamperedCopyDoesNot()
    {
        var key = await _developer.CreateKeyAsync("tenants/dev", "exported");
        for (var i = 0; i < 5; i++)
        {
            await _developer.EncryptAsync(key.Name, new byte[] { 1, 2, 3 });
        }

        var checkpoint = (await _officer.Audit.GetAuditCheckpointAsync(new GetAuditCheckpointRequest())).Checkpoint;
        var published = await _developer.Audit.GetAuditSigningKeyAsync(new GetAuditSigningKeyRequest());
        Assert.Equal(published.PublicKeyPem, await File.ReadAllTextAsync(Path.Combine(_server.DataDir, "audit", "signing-key.pem")));
        Assert.Contains(checkpoint.Body, _server.Logs.AllText, StringComparison.Ordinal);
        Assert.Contains(checkpoint.Body, await File.ReadAllTextAsync(Path.Combine(_server.DataDir, "audit", "checkpoints.jsonl")), StringComparison.Ordinal);

        var export = await ExportAsync();
        var known = new KnownCheckpoint(checkpoint.Sequence, checkpoint.HeadHash);
        var result = AuditVerifier.Verify(new StringReader(export), published.PublicKeyDer.ToByteArray(), known);
        Assert.True(result.Valid, result.Problem);
        Assert.True(result.Events >= 7 && result.Checkpoints >= 1, $"{result.Events} events, {result.Checkpoints} checkpoints");

        // Someone with the database deletes the key's creation from the chain.
        Assert.Equal(1, RawSqlite.Execute(_server.DatabasePath, "DELETE FROM audit_events WHERE resource = $r AND operation LIKE '%/CreateKey'", ("$r", key.Name)));

        var tampered = AuditVerifier.Verify(new StringReader(await ExportAsync()), published.PublicKeyDer.ToByteArray(), known);
        Assert.False(tampered.Valid);
        Assert.Contains("missing", tampered.Problem, StringComparison.Ordinal);
    }

    [Fact]
    public async Task RefusalFlood_AggregatedIntoFewEvents()
    {
        using var anonymous = _server.CreateClient(apiToken: null);
        for (var i = 0; i < 100; i++)
        {
            await Assert.ThrowsAsync<RpcException>(() => anonymous.GenerateRandomAsync(8));
        }

        // The operational log too, through one throttle with its count: at most one line a second
        // is LogThrottle's promise, asserted on a fake clock (LogThrottleTests); here, not a line
        // per call (100 lines from a working throttle would take calls spread over 100 s).
        var lines = _server.Logs.AllText.Split('\n').Where(l => l.Contains("unauthenticated call from", StringComparison.Ordinal)).ToList();
        Assert.NotEmpty(lines);
        Assert.True(lines.Count < 100, $"{lines.Count} lines for 100 unauthenticated calls: not throttled");

        var audit = _server.Services.GetRequiredService<AuditLog>();
        await audit.FlushRefusalsAsync(default);
        var events = await EventsAsync(new ListAuditEventsRequest { Principal = "anonymous", Outcome = "UNAUTHENTICATED" });

        // The first written at once, the rest counted: one event per 10-s window, however many
        // windows a slow run spans — not an event per call (no bound on the run's length here).
        Assert.True(events.Count >= 2 && events.Count < 100, $"{events.Count} events for 100 refused calls");
        Assert.Equal(100, events.Sum(e => e.Count));
        Assert.Contains(events, e => e.Count > 1);
        Assert.Contains("security alert refusals", _server.Logs.AllText, StringComparison.Ordinal);
    }

    // An anonymous flood probing key names: the summary lists what the counted calls named (the
    // first 8 names of the first one's tenant, each with its count) and counts the rest, through
    // the store and ListAuditEvents; another tenant's name is counted, never shown to dev.
    [Fact]
    public async Task RefusalFlood_OverManyKeyNames_SummaryListsTheNamesWithCounts()
    {
        using var anonymous = _server.CreateClient(apiToken: null);
        string[] names = [.. Enumerable.Range(0, 12).Select(i => $"tenants/dev/keys/probe-{i}"), "tenants/other/keys/x"];
        foreach (var name in names)
        {
            await Assert.ThrowsAsync<RpcException>(() => anonymous.GetKeyAsync(name));
        }

        await _server.Services.GetRequiredService<AuditLog>().FlushRefusalsAsync(default);
        var events = await EventsAsync(new ListAuditEventsRequest { Principal = "anonymous", Operation = "GetKey" });
        var summaries = events.Where(e => e.RequestId == "aggregated").ToList();

        // One summary, or two if a slow run crossed a 10 s window: each accounts for every call it counted.
        Assert.Equal(names.Length, events.Sum(e => e.Count));
        Assert.NotEmpty(summaries);
        Assert.All(summaries, s => Assert.Equal(s.Count, s.Resources.Values.Sum() + s.OtherResources));
        Assert.All(summaries, s => Assert.InRange(s.Resources.Count, 1, 8));
        Assert.Contains(summaries, s => s.Resources.ContainsKey("tenants/dev/keys/probe-1"));
        Assert.DoesNotContain(summaries, s => s.Resources.ContainsKey("tenants/other/keys/x"));
    }

    [Fact]
    public async Task BatchEncrypt_WhoseItemsAKeyPolicyRefuses_RaisesTheRefusalsAlert()
    {
        // The batch's own rule checks only the caller's tenant; a key policy refuses each item.
        // Twenty items refused count as twenty single calls refused would.
        var key = await _developer.CreateKeyAsync("tenants/dev", "batch-refused");
        await _server.CreatePrincipalWithTokenAsync("someone-else", "dev", "key-user");
        await _developer.Raw.SetKeyPolicyAsync(new SetKeyPolicyRequest
        {
            Name = key.Name,
            Entries = { new KeyPolicyEntry { Principal = "token:someone-else", Operations = { "ENCRYPT" } } },
        });
        var request = new BatchEncryptRequest();
        request.Requests.AddRange(Enumerable.Range(0, 20).Select(_ => new EncryptRequest { Name = key.Name, Plaintext = Google.Protobuf.ByteString.CopyFromUtf8("x") }));
        var response = await _developer.BatchEncryptAsync(request);
        Assert.All(response.Results, r => Assert.Equal((int)StatusCode.PermissionDenied, r.Status.Code));
        Assert.Contains("security alert refusals: token:developer reached 20", _server.Logs.AllText, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Encrypt_RefusedByAKeyPolicyAsIfTheKeyWereMissing_AuditedNotFound_RaisesTheRefusalsAlert()
    {
        // A key-user the policy names for nothing gets NOT_FOUND, as for a missing key, and its
        // event says NOT_FOUND; but each such call is a refusal, and twenty raise the alert (a
        // missing key's NOT_FOUND does not count).
        var key = await _developer.CreateKeyAsync("tenants/dev", "concealed");
        using var outsider = _server.CreateClient(await _server.CreatePrincipalWithTokenAsync("policy-outsider", "dev", "key-user"));
        await _developer.Raw.SetKeyPolicyAsync(new SetKeyPolicyRequest
        {
            Name = key.Name,
            Entries = { new KeyPolicyEntry { Principal = "token:developer", Operations = { "ENCRYPT" } } },
        });
        for (var i = 0; i < 19; i++)
        {
            var missing = await Assert.ThrowsAsync<RpcException>(() => outsider.EncryptAsync("tenants/dev/keys/never-was", "x"u8.ToArray()));
            Assert.Equal(StatusCode.NotFound, missing.StatusCode);
        }

        Assert.DoesNotContain("security alert refusals: token:policy-outsider", _server.Logs.AllText, StringComparison.Ordinal);
        for (var i = 0; i < 20; i++)
        {
            var refused = await Assert.ThrowsAsync<RpcException>(() => outsider.EncryptAsync(key.Name, "x"u8.ToArray()));
            Assert.Equal((StatusCode.NotFound, $"{key.Name} not found"), (refused.StatusCode, refused.Status.Detail));
        }

        Assert.Contains("security alert refusals: token:policy-outsider reached 20", _server.Logs.AllText, StringComparison.Ordinal);
        var events = await EventsAsync(new ListAuditEventsRequest { Principal = "token:policy-outsider", Operation = "Encrypt" });
        Assert.Equal(39, events.Count);
        Assert.All(events, e => Assert.Equal("NOT_FOUND", e.Outcome));
    }

    /// <summary>
    /// One event for a BatchGenerateMac, as for the other batches (no resource: its items name
    /// their own; its outcome the call's); its items a key policy refuses count towards the refusals alert as
    /// single calls would, its items count towards the volume; the data is in none of it.
    /// </summary>
    [Fact]
    public async Task BatchGenerateMac_OneEvent_ItemsAKeyPolicyRefuses_RaiseTheRefusalsAlert_DataNowhere()
    {
        var value = "CANARY-BATCH-MAC-VALUE-4d2e";
        var open = await _developer.CreateKeyAsync("tenants/dev", "batch-mac", KeyPurpose.Mac);
        var refused = await _developer.CreateKeyAsync("tenants/dev", "batch-mac-refused", KeyPurpose.Mac);
        await _server.CreatePrincipalWithTokenAsync("someone-else", "dev", "key-user");
        await _developer.Raw.SetKeyPolicyAsync(new SetKeyPolicyRequest
        {
            Name = refused.Name,
            Entries = { new KeyPolicyEntry { Principal = "token:someone-else", Operations = { "SIGN" } } },
        });
        var request = new BatchGenerateMacRequest();
        request.Requests.Add(new GenerateMacRequest { Name = open.Name, Data = Google.Protobuf.ByteString.CopyFromUtf8(value) });
        request.Requests.AddRange(Enumerable.Range(0, 20).Select(_ => new GenerateMacRequest { Name = refused.Name, Data = Google.Protobuf.ByteString.CopyFromUtf8(value) }));

        var response = await _developer.BatchGenerateMacAsync(request);

        Assert.Equal(0, response.Results[0].Status.Code);
        Assert.All(response.Results.Skip(1), r => Assert.Equal((int)StatusCode.PermissionDenied, r.Status.Code));
        Assert.Contains("security alert refusals: token:developer reached 20", _server.Logs.AllText, StringComparison.Ordinal);
        var batch = Assert.Single(await EventsAsync(new ListAuditEventsRequest { Tenant = "tenants/dev", Operation = "BatchGenerateMac" }));
        Assert.Equal(("OK", "", "token:developer"), (batch.Outcome, batch.Resource, batch.Principal));
        var export = await ExportAsync();
        Assert.Contains("BatchGenerateMac", export, StringComparison.Ordinal);
        foreach (var place in new[] { export, _server.Logs.AllText })
        {
            foreach (var form in Forms(Encoding.UTF8.GetBytes(value)))
            {
                Assert.False(Encoding.UTF8.GetBytes(place).AsSpan().IndexOf(form) >= 0, "the MAC'd data was found");
            }
        }
    }

    [Fact]
    public async Task BatchEncrypt_WhoseItemsNameAnotherTenantsKeys_RaisesTheRefusalsAlert()
    {
        // Singly, each is refused by the authorization step (NOT_FOUND, counted); in a batch the
        // answer is the same NOT_FOUND per item, and each counts the same.
        var request = new BatchEncryptRequest();
        request.Requests.AddRange(Enumerable.Range(0, 20).Select(i => new EncryptRequest { Name = $"tenants/elsewhere/keys/probe-{i}", Plaintext = Google.Protobuf.ByteString.CopyFromUtf8("x") }));
        var response = await _developer.BatchEncryptAsync(request);
        Assert.All(response.Results, r => Assert.Equal((int)StatusCode.NotFound, r.Status.Code));
        Assert.Contains("security alert refusals: token:developer reached 20", _server.Logs.AllText, StringComparison.Ordinal);
    }

    [Fact]
    public async Task BatchDecrypt_WhoseItemsFailToDecrypt_RaisesTheFailedDecryptionAlert()
    {
        // One call answered OK, ten items "decryption failed": the alert counts the items.
        var blob = await TamperedCiphertextAsync("batch-oracle");
        var request = new BatchDecryptRequest();
        request.Requests.AddRange(Enumerable.Range(0, 10).Select(_ => new DecryptRequest { Ciphertext = Google.Protobuf.ByteString.CopyFrom(blob) }));
        var response = await _developer.BatchDecryptAsync(request);
        Assert.All(response.Results, r => Assert.Equal("decryption failed", r.Status.Message));
        Assert.Contains("security alert decrypt-failures: token:developer reached 10", _server.Logs.AllText, StringComparison.Ordinal);
    }

    [Fact]
    public async Task BatchGenerateDataKey_VolumeCountsItems_RaisesTheVolumeAlert_SingleItemBatchesDoNot()
    {
        // A volume threshold of 100 calls: five batches of one item each stay far below it, five
        // of twenty items cross it, as a hundred GenerateDataKey calls would.
        await using var server = await KmsTestServer.StartAsync(null, null, "dev", (Action<IServiceCollection>?)null, "--Kms:Alerts:Volume=100");
        using var developer = server.CreateClient();
        var key = await developer.CreateKeyAsync("tenants/dev", "batch-volume");

        async Task BatchesAsync(int items)
        {
            for (var i = 0; i < 5; i++)
            {
                var request = new BatchGenerateDataKeyRequest();
                request.Requests.AddRange(Enumerable.Range(0, items).Select(_ => new GenerateDataKeyRequest { Name = key.Name }));
                var response = await developer.BatchGenerateDataKeyAsync(request);
                Assert.All(response.Results, r => Assert.Equal((int)StatusCode.OK, r.Status.Code));
            }
        }

        await BatchesAsync(items: 1);
        Assert.DoesNotContain("security alert volume", server.Logs.AllText, StringComparison.Ordinal);
        await BatchesAsync(items: 20);
        Assert.Contains("security alert volume: token:developer reached", server.Logs.AllText, StringComparison.Ordinal);
    }

    [Fact]
    public async Task RejectedCallsLogLine_CarriesItsPrincipalAndRequestId_AsTheCatalogSays()
    {
        var blob = await TamperedCiphertextAsync("logged-rejection");
        await Assert.ThrowsAsync<RpcException>(async () => await _developer.DecryptAsync(blob));

        var line = Assert.Single(_server.Logs.Events, e => e.Contains("Decrypt\" rejected", StringComparison.Ordinal));
        Assert.Contains("Principal=\"token:developer\"", line, StringComparison.Ordinal);
        Assert.Contains("RequestId=", line, StringComparison.Ordinal);
    }

    // A ciphertext of a new key with its last byte changed: "decryption failed".
    private async Task<byte[]> TamperedCiphertextAsync(string keyId)
    {
        var key = await _developer.CreateKeyAsync("tenants/dev", keyId);
        var blob = (await _developer.EncryptAsync(key.Name, "x"u8.ToArray())).Ciphertext;
        blob[^1] ^= 1;
        return blob;
    }

    [Fact]
    public async Task AuditStoreUnavailable_NoAnswer_ThenServesAgainWithoutAGap()
    {
        var key = await _developer.CreateKeyAsync("tenants/dev", "no-audit-no-answer");
        await _developer.EncryptAsync(key.Name, new byte[] { 1 });

        await WhileAnotherProcessHoldsTheWriteLockAsync(async () =>
        {
            var e = await Assert.ThrowsAsync<RpcException>(() => _developer.EncryptAsync(key.Name, new byte[] { 2 }));
            Assert.Equal(StatusCode.Unavailable, e.StatusCode);
        });

        await _developer.EncryptAsync(key.Name, new byte[] { 3 });
        var published = await _developer.Audit.GetAuditSigningKeyAsync(new GetAuditSigningKeyRequest());
        var result = AuditVerifier.Verify(new StringReader(await ExportAsync()), published.PublicKeyDer.ToByteArray());
        Assert.True(result.Valid, result.Problem);
        Assert.Equal(2, (await EventsAsync(new ListAuditEventsRequest { Resource = key.Name, Operation = "Encrypt" })).Count);
    }

    // The calls that hand out a secret: the plaintext or data key goes only with its durable
    // event, never ahead of it.
    [Fact]
    public async Task AuditStoreUnavailable_DecryptAndGenerateDataKey_UnavailableWithoutThePlaintext()
    {
        var key = await _developer.CreateKeyAsync("tenants/dev", "no-audit-no-plaintext");
        var blob = (await _developer.EncryptAsync(key.Name, "released with its event"u8.ToArray())).Ciphertext;

        await WhileAnotherProcessHoldsTheWriteLockAsync(async () =>
        {
            var decrypt = await Assert.ThrowsAsync<RpcException>(() => _developer.DecryptAsync(blob));
            Assert.Equal(StatusCode.Unavailable, decrypt.StatusCode);
            var dataKey = await Assert.ThrowsAsync<RpcException>(() => _developer.GenerateDataKeyAsync(key.Name));
            Assert.Equal(StatusCode.Unavailable, dataKey.StatusCode);
        });

        using (var opened = await _developer.DecryptAsync(blob))
        {
            Assert.Equal("released with its event", Encoding.UTF8.GetString(opened.Plaintext));
        }

        Assert.Equal("OK", Assert.Single(await EventsAsync(new ListAuditEventsRequest { Resource = key.Name, Operation = "Decrypt" })).Outcome);
    }

    // Another process holds the database's write lock (past the busy timeout) while `calls` run.
    private async Task WhileAnotherProcessHoldsTheWriteLockAsync(Func<Task> calls)
    {
        await using var blocker = new SqliteConnection($"Data Source={_server.DatabasePath}");
        await blocker.OpenAsync();
        await using var begin = blocker.CreateCommand();
        begin.CommandText = "BEGIN IMMEDIATE";
        await begin.ExecuteNonQueryAsync();
        await calls();
        await using var rollback = blocker.CreateCommand();
        rollback.CommandText = "ROLLBACK";
        await rollback.ExecuteNonQueryAsync();
    }

    [Fact]
    public async Task TenantAuditor_SeesItsTenantOnly_SecurityOfficerSeesAll()
    {
        await _server.EnsureTenantAsync("acme");
        using var acme = _server.CreateClient(await _server.CreatePrincipalWithTokenAsync("acme-manager", "acme", "key-manager"));
        await acme.CreateKeyAsync("tenants/acme", "theirs");
        await _developer.CreateKeyAsync("tenants/dev", "ours");

        // acme probes a name of dev's: its refused call is acme's event, not dev's to read (it
        // would show dev acme's tenant, principal, client address and context hashes).
        var probe = await Assert.ThrowsAsync<RpcException>(() => acme.GetKeyAsync("tenants/dev/keys/ours"));
        Assert.Equal(StatusCode.NotFound, probe.StatusCode);
        using var auditor = _server.CreateClient(await _server.CreatePrincipalWithTokenAsync("dev-auditor", "dev", "auditor"));

        var own = await auditor.Audit.ListAuditEventsAsync(new ListAuditEventsRequest { Tenant = "tenants/dev", PageSize = 1000 });
        Assert.Contains(own.Events, e => e.Resource == "tenants/dev/keys/ours");
        Assert.DoesNotContain(own.Events, e => e.Tenant == "acme" || e.Resource.StartsWith("tenants/acme", StringComparison.Ordinal));
        var other = await Assert.ThrowsAsync<RpcException>(async () => await auditor.Audit.ListAuditEventsAsync(new ListAuditEventsRequest { Tenant = "tenants/acme" }));
        Assert.Equal(StatusCode.NotFound, other.StatusCode);
        var all = await Assert.ThrowsAsync<RpcException>(async () => await auditor.Audit.ListAuditEventsAsync(new ListAuditEventsRequest()));
        Assert.Equal(StatusCode.PermissionDenied, all.StatusCode);

        var everything = await _officer.Audit.ListAuditEventsAsync(new ListAuditEventsRequest { PageSize = 1000 });
        Assert.Contains(everything.Events, e => e.Resource == "tenants/acme/keys/theirs");

        // A security officer finds the probes of dev's keys by resource.
        var probes = await _officer.Audit.ListAuditEventsAsync(new ListAuditEventsRequest { Resource = "tenants/dev/keys/ours", PageSize = 1000 });
        Assert.Contains(probes.Events, e => e.Tenant == "acme" && e.Outcome == "NOT_FOUND");
    }

    [Fact]
    public async Task TenantAuditor_SeesWhatDeploymentAdminsDidToItsPrincipalsAndTokens_NotToAnotherTenants()
    {
        // A deployment admin registers a principal in dev, issues it a token, revokes it: dev's
        // auditors must see a credential appear and go, acme's must not.
        await _server.EnsureTenantAsync("acme");
        await _server.CreatePrincipalWithTokenAsync("acme-newcomer", "acme");
        await _server.CreatePrincipalWithTokenAsync("dev-newcomer", "dev");
        using (var admin = _server.DeploymentAdmin())
        {
            var token = Assert.Single((await admin.Access.ListApiTokensAsync(new ListApiTokensRequest { Principal = "token:dev-newcomer" })).Tokens);
            await admin.Access.RevokeApiTokenAsync(new RevokeApiTokenRequest { Id = token.Id });
        }

        using var auditor = _server.CreateClient(await _server.CreatePrincipalWithTokenAsync("dev-auditor-2", "dev", "auditor"));
        var own = (await auditor.Audit.ListAuditEventsAsync(new ListAuditEventsRequest { Tenant = "tenants/dev", PageSize = 1000 })).Events;

        var principal = "tenants/dev/principals/token:dev-newcomer";
        Assert.Contains(own, e => e.Operation.EndsWith("/CreatePrincipal", StringComparison.Ordinal) && e.Resource == principal && e.Tenant == "");
        Assert.Contains(own, e => e.Operation.EndsWith("/CreateApiToken", StringComparison.Ordinal) && e.Resource == principal);
        Assert.Contains(own, e => e.Operation.EndsWith("/RevokeApiToken", StringComparison.Ordinal) && e.Resource.StartsWith(principal + "/apiTokens/", StringComparison.Ordinal));
        Assert.DoesNotContain(own, e => e.Resource.Contains("acme-newcomer", StringComparison.Ordinal));
    }

    [Fact]
    public async Task TenantAuditor_DeploymentPrincipalsEvents_ClientAddressAndHashWithheld_ItsOwnPrincipalsShown_OfficerSeesAll()
    {
        // A tenant's auditors see what deployment admins did in the tenant, not where they call
        // from; nor the event's hash, from which the address could be found by trying addresses
        // (the body's other members are in the listing), nor that hash as the next event's
        // previous_hash.
        await _server.CreatePrincipalWithTokenAsync("dev-visited", "dev");
        await _developer.CreateKeyAsync("tenants/dev", "redaction");
        using var auditor = _server.CreateClient(await _server.CreatePrincipalWithTokenAsync("dev-auditor-3", "dev", "auditor"));

        var own = (await auditor.Audit.ListAuditEventsAsync(new ListAuditEventsRequest { Tenant = "tenants/dev", PageSize = 1000 })).Events;
        var all = (await _officer.Audit.ListAuditEventsAsync(new ListAuditEventsRequest { Tenant = "tenants/dev", PageSize = 1000 })).Events.ToDictionary(e => e.Sequence);

        var admins = own.Where(e => e.Operation.EndsWith("/CreatePrincipal", StringComparison.Ordinal) && e.Resource == "tenants/dev/principals/token:dev-visited").ToList();
        Assert.NotEmpty(admins);
        foreach (var e in admins)
        {
            Assert.Equal("", e.Tenant);
            Assert.NotEqual("", all[e.Sequence].Client);
            Assert.Equal("", e.Client);
            Assert.Equal("", e.Hash);
        }

        var withheld = own.Where(e => e.Tenant != "dev").Select(e => all[e.Sequence].Hash).ToHashSet();
        Assert.DoesNotContain(own, e => withheld.Contains(e.PreviousHash) || withheld.Contains(e.Hash));
        var created = Assert.Single(own, e => e.Operation.EndsWith("/CreateKey", StringComparison.Ordinal) && e.Resource == "tenants/dev/keys/redaction");
        Assert.Equal("dev", created.Tenant);
        Assert.Equal(all[created.Sequence].Client, created.Client);
        Assert.NotEqual("", created.Client);

        // The officer's listing (and export) is the record as stored: its chain links.
        var officer = all.Values.OrderBy(e => e.Sequence).ToList();
        var linked = officer.Zip(officer.Skip(1)).Where(p => p.Second.Sequence == p.First.Sequence + 1).ToList();
        Assert.NotEmpty(linked);
        Assert.All(linked, p => Assert.Equal(p.First.Hash, p.Second.PreviousHash));
    }

    [Fact]
    public async Task TenantAuditor_NoHashFromWhichAWithheldClientAddressCouldBeTested_NotEvenALaterEventsOfItsOwn()
    {
        // An event's body holds the hash of the one before it. So the hash of the tenant's own
        // event listed after a deployment admin's (whose client and hash are withheld) is a
        // function of the listing and of that withheld address alone, when the event before the
        // admin's is listed with its hash: hashing the listed bodies with a guessed address and
        // comparing tests the guess (a network and a port: few bits).
        await _developer.CreateKeyAsync("tenants/dev", "chain-before");
        await _server.CreatePrincipalWithTokenAsync("dev-chained", "dev");
        await _developer.CreateKeyAsync("tenants/dev", "chain-after");
        using var auditor = _server.CreateClient(await _server.CreatePrincipalWithTokenAsync("dev-auditor-4", "dev", "auditor"));

        var own = (await auditor.Audit.ListAuditEventsAsync(new ListAuditEventsRequest { Tenant = "tenants/dev", PageSize = 1000 })).Events.ToDictionary(e => e.Sequence);
        var all = (await _officer.Audit.ListAuditEventsAsync(new ListAuditEventsRequest { PageSize = 1000 })).Events.ToDictionary(e => e.Sequence);
        Assert.Contains(own.Values, e => e.Client.Length == 0 && all[e.Sequence].Client.Length > 0);

        // Every run of listed events from one shown with its hash to a later one shown with its
        // hash, a withheld address between: the addresses the officer reads are the right guess.
        var testable = new List<string>();
        foreach (var from in own.Values.Where(e => e.Hash.Length > 0))
        {
            var hash = from.Hash;
            var guessed = false;
            for (var sequence = from.Sequence + 1; own.TryGetValue(sequence, out var next); sequence++)
            {
                guessed |= next.Client.Length == 0 && all[sequence].Client.Length > 0;
                hash = AuditChain.HashOf(AuditChain.Body(sequence, hash, EntryOf(next, all[sequence].Client)));
                if (guessed && next.Hash.Length > 0 && next.Hash == hash)
                {
                    testable.Add($"{sequence} (through {from.Sequence})");
                }
            }
        }

        Assert.True(testable.Count == 0, $"a tenant auditor tests a withheld client address against the hash of event {string.Join(", ", testable)}");
        Assert.All(own.Values, e => Assert.Equal(("", ""), (e.Hash, e.PreviousHash)));
    }

    // The event as the listing shows it, with the given client address (guessed where withheld).
    private static AuditEntry EntryOf(AuditEventInfo e, string client) => new()
    {
        Time = e.Time.ToDateTimeOffset(),
        RequestId = e.RequestId,
        Principal = e.Principal,
        Tenant = e.Tenant.Length == 0 ? null : e.Tenant,
        Operation = e.Operation,
        Resource = e.Resource.Length == 0 ? null : e.Resource,
        Outcome = e.Outcome,
        Client = client.Length == 0 ? null : client,
        Count = e.Count,
        LastTime = e.LastTime?.ToDateTimeOffset(),
        Context = [.. e.ContextHashes.OrderBy(p => p.Key, StringComparer.Ordinal)],
        Resources = e.RequestId == "aggregated" ? [.. e.Resources.OrderBy(p => p.Key, StringComparer.Ordinal)] : null,
        OtherResources = e.OtherResources,
    };

    [Fact]
    public async Task Export_WhileTheHsmIsDown_GoesOutUnsignedAtItsEnd_NotRefused()
    {
        // Forensics during an outage need the export most: it signs a checkpoint first when it
        // can, and goes out without one when it cannot.
        var hsm = _server.Services.GetRequiredService<Kms.Hsm.Pkcs11Hsm>();
        hsm.Faults.Fail(Net.Pkcs11Interop.Common.CKR.CKR_DEVICE_ERROR);
        string export;
        try
        {
            export = await ExportAsync();
        }
        finally
        {
            hsm.Faults.Clear();
        }

        Assert.Contains("\"event\":", export, StringComparison.Ordinal);
        Assert.Contains(_server.Logs.Events, e => e.Contains("audit export: no checkpoint could be signed before it", StringComparison.Ordinal));
    }

    [Fact]
    public async Task UpdateAlias_RetriedOntoTheKeyItNamesAfterThatKeysDeletionWasScheduled_OkNothingWritten_AuditedAsAnyCallThatWritesNothing()
    {
        // UpdateAlias is safe to repeat (RetrySafety): a move whose answer was lost, retried
        // once the key's deletion is scheduled, is told OK (the alias did move), not refused.
        var first = await _developer.CreateKeyAsync("tenants/dev", "alias-first");
        var next = await _developer.CreateKeyAsync("tenants/dev", "alias-next");
        var alias = await _developer.CreateAliasAsync("tenants/dev", "alias-retried", first.Name);
        var moved = await _developer.UpdateAliasAsync(alias.Name, next.Name);
        await _developer.ScheduleKeyDeletionAsync(next.Name);

        var retried = await _developer.UpdateAliasAsync(alias.Name, next.Name);
        Assert.Equal((next.Name, moved.UpdateTime), (retried.Key, retried.UpdateTime));
        Assert.Equal(moved.UpdateTime, (await _developer.GetAliasAsync(alias.Name)).UpdateTime);

        // A move onto it from elsewhere is still refused.
        await _developer.UpdateAliasAsync(alias.Name, first.Name);
        var refused = await Assert.ThrowsAsync<RpcException>(() => _developer.UpdateAliasAsync(alias.Name, next.Name));
        Assert.Equal(StatusCode.FailedPrecondition, refused.StatusCode);

        // One event per call, as for any call that writes nothing (appended after it, outcome OK).
        var events = await EventsAsync(new ListAuditEventsRequest { Tenant = "tenants/dev", Resource = alias.Name });
        Assert.Equal(
            ["CreateAlias OK", "UpdateAlias OK", "UpdateAlias OK", "GetAlias OK", "UpdateAlias OK", "UpdateAlias FAILED_PRECONDITION"],
            events.Select(e => $"{e.Operation[(e.Operation.LastIndexOf('/') + 1)..]} {e.Outcome}"));
    }

    [Fact]
    public async Task CryptoThroughAnAlias_AllowedOrRefusedByTheKeysPolicy_AuditedUnderTheVersionItResolvedTo()
    {
        // One rule for every key-addressed crypto call: the event names the version the key or
        // alias resolved to, refused by the key's policy as well as allowed, so a resource filter
        // on the key finds both. Encrypt recorded the alias as named (not found under the key),
        // a refused Decrypt no resource at all, while Sign, GenerateMac and GetPublicKey recorded
        // the version.
        using var prober = _server.CreateClient(await _server.CreatePrincipalWithTokenAsync("alias-prober", "dev", "key-user"));
        var message = "m"u8.ToArray();
        var keys = new Dictionary<string, Key>
        {
            ["aes"] = await _developer.CreateKeyAsync("tenants/dev", "alias-audit-aes"),
            ["ec"] = await _developer.CreateKeyAsync("tenants/dev", "alias-audit-ec", KeyPurpose.SignVerify),
            ["mac"] = await _developer.CreateKeyAsync("tenants/dev", "alias-audit-mac", KeyPurpose.Mac),
        };
        var aliases = new Dictionary<string, string>();
        foreach (var (id, key) in keys)
        {
            aliases[id] = (await _developer.CreateAliasAsync("tenants/dev", "alias-audit-" + id + "-alias", key.Name)).Name;
            var operations = id == "aes" ? new[] { "ENCRYPT", "DECRYPT" } : ["SIGN", "VERIFY"];
            await _developer.SetKeyPolicyAsync(key.Name, [new KeyPolicyEntry { Principal = "token:developer", Operations = { operations } }]);
        }

        var blob = (await _developer.EncryptAsync(aliases["aes"], message)).Ciphertext;
        using (await _developer.DecryptAsync(blob))
        {
        }

        await _developer.SignAsync(aliases["ec"], message);
        await _developer.GetPublicKeyAsync(aliases["ec"]);
        await _developer.GenerateMacAsync(aliases["mac"], message);
        var refused = new Func<Task>[]
        {
            () => prober.EncryptAsync(aliases["aes"], message),
            async () => (await prober.DecryptAsync(blob)).Dispose(),
            () => prober.SignAsync(aliases["ec"], message),
            () => prober.GetPublicKeyAsync(aliases["ec"]),
            () => prober.GenerateMacAsync(aliases["mac"], message),
        };
        foreach (var call in refused)
        {
            await Assert.ThrowsAsync<RpcException>(call);
        }

        var seen = new List<string>();
        foreach (var (id, key) in keys)
        {
            foreach (var e in await EventsAsync(new ListAuditEventsRequest { Tenant = "tenants/dev", Resource = key.Name }))
            {
                var operation = e.Operation[(e.Operation.LastIndexOf('/') + 1)..];
                if (operation is "Encrypt" or "Decrypt" or "Sign" or "GetPublicKey" or "GenerateMac")
                {
                    Assert.True(e.Resource == key.Name + "/versions/1", $"{operation} {e.Principal} {e.Outcome}: {e.Resource}");
                    seen.Add($"{operation} {e.Principal} {e.Outcome}");
                }
            }
        }

        Assert.Equal(
            [
                "Encrypt token:developer OK", "Decrypt token:developer OK", "Encrypt token:alias-prober NOT_FOUND", "Decrypt token:alias-prober INVALID_ARGUMENT",
                "Sign token:developer OK", "GetPublicKey token:developer OK", "Sign token:alias-prober NOT_FOUND", "GetPublicKey token:alias-prober NOT_FOUND",
                "GenerateMac token:developer OK", "GenerateMac token:alias-prober NOT_FOUND",
            ],
            seen);
    }

    [Fact]
    public async Task ReEncrypt_EveryBranch_EventNamesTheSourceAndTheDestinationVersionAsFarAsResolved_KeyFilterFindsBoth()
    {
        // The destination as its resource, the source among its key versions, whichever side is
        // refused. Before, a refused source left the destination's alias as given (not the version
        // it resolves to) and no event named the source at all.
        using var prober = _server.CreateClient(await _server.CreatePrincipalWithTokenAsync("reencrypt-prober", "dev", "key-user"));
        var source = await _developer.CreateKeyAsync("tenants/dev", "reenc-audit-source");
        var refusedSource = await _developer.CreateKeyAsync("tenants/dev", "reenc-audit-source-refused");
        var destination = await _developer.CreateKeyAsync("tenants/dev", "reenc-audit-destination");
        var refusedDestination = await _developer.CreateKeyAsync("tenants/dev", "reenc-audit-destination-refused");
        var destinationAlias = (await _developer.CreateAliasAsync("tenants/dev", "reenc-audit-destination-alias", destination.Name)).Name;
        var refusedAlias = (await _developer.CreateAliasAsync("tenants/dev", "reenc-audit-destination-refused-alias", refusedDestination.Name)).Name;
        var blob = (await _developer.EncryptAsync(source.Name, "m"u8.ToArray())).Ciphertext;
        var refusedBlob = (await _developer.EncryptAsync(refusedSource.Name, "m"u8.ToArray())).Ciphertext;
        foreach (var key in new[] { refusedSource, refusedDestination })
        {
            await _developer.SetKeyPolicyAsync(key.Name, [new KeyPolicyEntry { Principal = "token:developer", Operations = { "ENCRYPT", "DECRYPT" } }]);
        }

        await prober.ReEncryptAsync(blob, destinationAlias);
        Assert.Equal(StatusCode.InvalidArgument, (await Assert.ThrowsAsync<RpcException>(() => prober.ReEncryptAsync(refusedBlob, destinationAlias))).StatusCode);
        Assert.Equal(StatusCode.NotFound, (await Assert.ThrowsAsync<RpcException>(() => prober.ReEncryptAsync(blob, refusedAlias))).StatusCode);
        Assert.Equal(StatusCode.NotFound, (await Assert.ThrowsAsync<RpcException>(() => prober.ReEncryptAsync(blob, "tenants/dev/aliases/reenc-audit-missing"))).StatusCode);

        var events = await EventsAsync(new ListAuditEventsRequest { Principal = "token:reencrypt-prober", Operation = "ReEncrypt" });
        Assert.Equal(
            [
                $"OK {destination.Name}/versions/1 [{source.Name}/versions/1] 0",
                $"INVALID_ARGUMENT {destination.Name}/versions/1 [{refusedSource.Name}/versions/1] 0",
                $"NOT_FOUND {refusedDestination.Name}/versions/1 [{source.Name}/versions/1] 0",
                $"NOT_FOUND tenants/dev/aliases/reenc-audit-missing [{source.Name}/versions/1] 0",
            ],
            events.Select(e => $"{e.Outcome} {e.Resource} [{string.Join(", ", e.KeyVersions)}] {e.OtherKeyVersions}"));

        // The key filter finds each event under both of its keys.
        foreach (var (key, expected) in new[] { (source, new[] { 0, 2, 3 }), (refusedSource, [1]), (destination, [0, 1]), (refusedDestination, [2]) })
        {
            var found = await EventsAsync(new ListAuditEventsRequest { Resource = key.Name, Operation = "ReEncrypt" });
            Assert.Equal(expected.Select(i => events[i].Sequence), found.Select(e => e.Sequence));
        }
    }

    [Fact]
    public async Task BatchCalls_OneEventNamingEveryKeyVersionItsItemsResolved_AllowedOrRefused_FoundByTheKeyFilter()
    {
        // Before, a batch's one event named no key: "who used key K" missed every batch.
        var a = await _developer.CreateKeyAsync("tenants/dev", "batch-audit-a");
        var b = await _developer.CreateKeyAsync("tenants/dev", "batch-audit-b");
        var refused = await _developer.CreateKeyAsync("tenants/dev", "batch-audit-refused");
        var mac = await _developer.CreateKeyAsync("tenants/dev", "batch-audit-mac", KeyPurpose.Mac);
        var alias = (await _developer.CreateAliasAsync("tenants/dev", "batch-audit-b-alias", b.Name)).Name;
        await _server.CreatePrincipalWithTokenAsync("batch-audit-other", "dev", "key-user");
        await _developer.SetKeyPolicyAsync(refused.Name, [new KeyPolicyEntry { Principal = "token:batch-audit-other", Operations = { "ENCRYPT" } }]);
        var x = Google.Protobuf.ByteString.CopyFromUtf8("x");

        var encrypt = new BatchEncryptRequest();
        encrypt.Requests.AddRange(new[] { a.Name, b.Name, a.Name, refused.Name, "tenants/dev/keys/batch-audit-missing" }.Select(name => new EncryptRequest { Name = name, Plaintext = x }));
        var encrypted = await _developer.BatchEncryptAsync(encrypt);
        Assert.Equal(StatusCode.PermissionDenied, (StatusCode)encrypted.Results[3].Status.Code);
        var dataKeys = new BatchGenerateDataKeyRequest();
        dataKeys.Requests.Add(new GenerateDataKeyRequest { Name = alias });
        await _developer.BatchGenerateDataKeyAsync(dataKeys);
        var decrypt = new BatchDecryptRequest();
        decrypt.Requests.AddRange(encrypted.Results.Take(2).Select(r => new DecryptRequest { Ciphertext = r.Response.Ciphertext }));
        await _developer.BatchDecryptAsync(decrypt);
        var reEncrypt = new BatchReEncryptRequest();
        reEncrypt.Requests.Add(new ReEncryptRequest { Ciphertext = encrypted.Results[0].Response.Ciphertext, DestinationName = alias });
        await _developer.BatchReEncryptAsync(reEncrypt);
        var macs = new BatchGenerateMacRequest();
        macs.Requests.Add(new GenerateMacRequest { Name = mac.Name, Data = x });
        await _developer.BatchGenerateMacAsync(macs);

        string V(Key key) => key.Name + "/versions/1";
        var expected = new Dictionary<string, string[]>
        {
            ["BatchEncrypt"] = [V(a), V(b), V(refused)],
            ["BatchGenerateDataKey"] = [V(b)],
            ["BatchDecrypt"] = [V(a), V(b)],
            ["BatchReEncrypt"] = [V(b), V(a)],
            ["BatchGenerateMac"] = [V(mac)],
        };
        var events = new Dictionary<string, AuditEventInfo>();
        foreach (var (operation, versions) in expected)
        {
            var e = Assert.Single(await EventsAsync(new ListAuditEventsRequest { Principal = "token:developer", Operation = operation }), listed => listed.KeyVersions.Contains(versions[0]));
            Assert.Equal(("OK", "", 0L), (e.Outcome, e.Resource, e.OtherKeyVersions));
            Assert.Equal(versions, e.KeyVersions);
            events[operation] = e;
        }

        foreach (var (key, operations) in new[]
        {
            (a.Name, new[] { "BatchEncrypt", "BatchDecrypt", "BatchReEncrypt" }),
            (V(b), ["BatchEncrypt", "BatchGenerateDataKey", "BatchDecrypt", "BatchReEncrypt"]),
            (refused.Name, ["BatchEncrypt"]),
            (mac.Name, ["BatchGenerateMac"]),
        })
        {
            var found = await EventsAsync(new ListAuditEventsRequest { Tenant = "tenants/dev", Resource = key });
            Assert.Equal(operations.Select(o => events[o].Sequence), found.Where(e => e.Operation.Contains("/Batch", StringComparison.Ordinal)).Select(e => e.Sequence));
        }

        // The offline verifier takes the bodies that carry the list as any other.
        var export = await ExportAsync();
        Assert.Contains($"\"key_versions\":[\"{V(a)}\",\"{V(b)}\",\"{V(refused)}\"],\"other_key_versions\":0}}", export, StringComparison.Ordinal);
        var published = await _developer.Audit.GetAuditSigningKeyAsync(new GetAuditSigningKeyRequest());
        var verified = AuditVerifier.Verify(new StringReader(export), published.PublicKeyDer.ToByteArray());
        Assert.True(verified.Valid, verified.Problem);
    }

    private async Task<List<AuditEventInfo>> EventsAsync(ListAuditEventsRequest request)
    {
        request.PageSize = 1000;
        return [.. (await _officer.Audit.ListAuditEventsAsync(request)).Events];
    }

    private async Task<string> ExportAsync()
    {
        var text = new StringWriter();
        await _officer.ExportAuditAsync(text);
        return text.ToString();
    }

    private static IEnumerable<byte[]> Forms(byte[] secret) =>
    [
        secret,
        Encoding.UTF8.GetBytes(Convert.ToHexString(secret)),
        Encoding.UTF8.GetBytes(Convert.ToHexStringLower(secret)),
        Encoding.UTF8.GetBytes(Convert.ToBase64String(secret)),
        Encoding.UTF8.GetBytes(Convert.ToBase64String(secret).TrimEnd('=').Replace('+', '-').Replace('/', '_')),
    ];
}
