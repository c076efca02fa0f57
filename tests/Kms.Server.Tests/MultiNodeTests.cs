using System.Diagnostics;
using System.Security.Cryptography;
using System.Text;
using Grpc.Core;
using Kms.Client.Audit;
using Kms.Contracts.V1;
using Kms.Core.Ports;
using Kms.Hsm;
using Kms.Storage.Postgres;
using Kms.Testing;
using Microsoft.Extensions.DependencyInjection;
using Xunit.Abstractions;

namespace Kms.Server.Tests;

/// <summary>
/// Several production-mode nodes on one PostgreSQL database, each with its own SoftHSM token
/// into which the ceremony imported the same domain key: one deployment.
/// </summary>
public sealed class MultiNodeTests(ITestOutputHelper output) : IAsyncLifetime
{
    private const string DomainKeyId = "dk-cluster-test";
    private readonly byte[] _domainKey = RandomNumberGenerator.GetBytes(32);
    private readonly List<KmsTestServer> _nodes = [];
    private PostgresTestDatabase _database = null!;

    public async Task InitializeAsync() => _database = await PostgresTestDatabase.CreateAsync();

    public async Task DisposeAsync()
    {
        foreach (var node in _nodes)
        {
            await node.DisposeAsync();
        }

        CryptographicOperations.ZeroMemory(_domainKey);
        await _database.DisposeAsync();
    }

    [Fact]
    public async Task TwoNodes_ServeOneDeployment_DisableAndRevocationReachTheOtherNode_OneAuditChain()
    {
        var a = await StartNodeAsync();
        var b = await StartNodeAsync();
        using var onA = a.CreateClient();
        using var onB = b.CreateClient(a.DeveloperToken);

        // Created on A, used on B, and the other way round.
        var key = await onA.CreateKeyAsync("tenants/dev", "shared");
        var ciphertext = (await onA.EncryptAsync(key.Name, "sealed on a"u8.ToArray())).Ciphertext;
        using (var opened = await onB.DecryptAsync(ciphertext))
        {
            Assert.Equal("sealed on a", Encoding.UTF8.GetString(opened.Plaintext));
        }

        using (var dataKey = await onB.GenerateDataKeyAsync(key.Name))
        using (var unwrapped = await onA.DecryptAsync(dataKey.Ciphertext))
        {
            Assert.Equal(dataKey.Plaintext.ToArray(), unwrapped.Plaintext.ToArray());
        }

        // Disabled on B: B refuses its very next call; A remembers the key's metadata only while
        // the change feed vouches for it, so it refuses once the feed reaches it (one poll
        // interval, 250 ms) — and from then on.
        await onB.DisableKeyAsync(key.Name);
        Assert.Equal(StatusCode.FailedPrecondition, (await Assert.ThrowsAsync<RpcException>(() => onB.EncryptAsync(key.Name, new byte[] { 1 }))).StatusCode);
        var disabledAfter = Stopwatch.StartNew();
        StatusCode? disabled = null;
        while (disabled is null && disabledAfter.Elapsed < TimeSpan.FromSeconds(60))
        {
            try
            {
                await onA.EncryptAsync(key.Name, new byte[] { 1 });
                await Task.Delay(10);
            }
            catch (RpcException e)
            {
                disabled = e.StatusCode;
            }
        }

        output.WriteLine($"a key disabled on node B was refused by node A after {disabledAfter.ElapsedMilliseconds} ms (poll interval 250 ms)");
        Assert.True(disabled is not null, "hang guard: node A still served a key disabled on node B after 60 s");
        Assert.Equal(StatusCode.FailedPrecondition, disabled);
        Assert.Equal(StatusCode.FailedPrecondition, (await Assert.ThrowsAsync<RpcException>(() => onA.EncryptAsync(key.Name, new byte[] { 1 }))).StatusCode);

        // Revoked on B: A has the caller cached for 5 minutes (Kms:CredentialCacheTime, the most allowed), yet
        // refuses it once the change feed reaches it.
        var other = await onA.CreateKeyAsync("tenants/dev", "other");
        var secret = await a.CreatePrincipalWithTokenAsync("revokee", "dev", "key-user");
        using var revokee = a.CreateClient(secret);
        using var leaver = a.CreateClient(await a.CreatePrincipalWithTokenAsync("leaver", "dev", "key-user"));
        await revokee.EncryptAsync(other.Name, new byte[] { 1 });
        using (var adminOnB = b.CreateClient(a.DeploymentAdminToken))
        {
            await adminOnB.RevokeApiTokenAsync(secret[4..20]);
        }

        var watch = Stopwatch.StartNew();
        StatusCode? refused = null;
        while (refused is null && watch.Elapsed < TimeSpan.FromSeconds(60))
        {
            try
            {
                await revokee.EncryptAsync(other.Name, new byte[] { 1 });
                await Task.Delay(20);
            }
            catch (RpcException e)
            {
                refused = e.StatusCode;
            }
        }

        output.WriteLine($"a token revoked on node B was refused by node A after {watch.ElapsedMilliseconds} ms (poll interval 250 ms, cache time 10 min)");
        Assert.True(refused is not null, "hang guard: node A still served a token revoked on node B after 60 s");
        Assert.Equal(StatusCode.Unauthenticated, refused);

        // A principal deleted on B: A remembers its caller, yet refuses it once the change feed
        // reaches it. The leaver was made before the revocation, which A has applied (it refused
        // the revokee): the access changes of its creation are behind A, so the deletion's own is
        // all that can make A forget it.
        await leaver.EncryptAsync(other.Name, new byte[] { 1 });
        using (var adminOnB = b.CreateClient(a.DeploymentAdminToken))
        {
            Assert.Equal("DELETED", (await adminOnB.DeletePrincipalAsync("token:leaver")).State);
        }

        var deletedAfter = Stopwatch.StartNew();
        StatusCode? gone = null;
        while (gone is null && deletedAfter.Elapsed < TimeSpan.FromSeconds(60))
        {
            try
            {
                await leaver.EncryptAsync(other.Name, new byte[] { 1 });
                await Task.Delay(20);
            }
            catch (RpcException e)
            {
                gone = e.StatusCode;
            }
        }

        output.WriteLine($"a principal deleted on node B was refused by node A after {deletedAfter.ElapsedMilliseconds} ms");
        Assert.True(gone is not null, "hang guard: node A still served a principal deleted on node B after 60 s");
        Assert.Equal(StatusCode.Unauthenticated, gone);

        // Every call on either node is in one chain, which verifies against the published key.
        using var officerOnB = b.CreateClient(await a.CreatePrincipalWithTokenAsync("officer", null, "security-officer"));
        var published = await onB.Audit.GetAuditSigningKeyAsync(new GetAuditSigningKeyRequest());
        var export = new StringWriter();
        await officerOnB.ExportAuditAsync(export);
        var verification = AuditVerifier.Verify(new StringReader(export.ToString()), published.PublicKeyDer.ToByteArray(), partial: true);
        Assert.True(verification.Valid, verification.Problem);
        Assert.True(verification.Events >= 10, $"{verification.Events} events");
    }

    [Fact]
    public async Task ExportAuditOnA_TokenRevokedOnB_TheExportEndsUnauthenticatedOnceTheFeedReachesA()
    {
        var a = await StartNodeAsync();
        var b = await StartNodeAsync();
        await StreamReauthorizationTests.FillAuditAsync(a.Services.GetRequiredService<Kms.Core.Services.AuditLog>());

        var secret = await a.CreatePrincipalWithTokenAsync("exporter", null, "security-officer");
        using var exporter = a.CreateClient(secret);
        using var export = exporter.Audit.ExportAudit(new ExportAuditRequest());
        Assert.True(await export.ResponseStream.MoveNext(default));

        // Revoked on B while A streams; A learns it from the change feed (it forgets its remembered
        // callers), and the export's next message is refused.
        var authentication = a.Services.GetRequiredService<Kms.Server.Security.CallerAuthentication>();
        var generation = authentication.Generation;
        using (var adminOnB = b.CreateClient(a.DeploymentAdminToken))
        {
            await adminOnB.RevokeApiTokenAsync(secret[4..20]);
        }

        var watch = Stopwatch.StartNew();
        while (authentication.Generation == generation && watch.Elapsed < TimeSpan.FromSeconds(60))
        {
            await Task.Delay(20);
        }

        Assert.True(authentication.Generation != generation, "hang guard: node A did not forget its remembered callers within 60 s of the revocation on node B");
        var received = 1;
        var status = StatusCode.OK;
        try
        {
            while (await export.ResponseStream.MoveNext(default))
            {
                received++;
            }
        }
        catch (RpcException e)
        {
            status = e.StatusCode;
        }

        output.WriteLine($"{received} messages arrived before the export, revoked on the other node, ended {status}");
        Assert.Equal(StatusCode.Unauthenticated, status);
        Assert.True(received < 10, $"{received} messages arrived (the whole export is about 19)");
    }

    [Fact]
    public async Task ListAuditEvents_PagedOnANodeAndTheOther_EveryEventOnce_ATokenRefusedFromAnotherCallerOnEither()
    {
        var a = await StartNodeAsync();
        var b = await StartNodeAsync();
        using var developer = a.CreateClient();
        var officerToken = await a.CreatePrincipalWithTokenAsync("officer", null, "security-officer");
        using var officerOnA = a.CreateClient(officerToken);
        using var officerOnB = b.CreateClient(officerToken);
        using var otherOfficerOnB = b.CreateClient(await a.CreatePrincipalWithTokenAsync("officer-b", null, "security-officer"));
        var key = await developer.CreateKeyAsync("tenants/dev", "paged-on-postgres");
        for (var i = 0; i < 6; i++)
        {
            await developer.EncryptAsync(key.Name, new byte[] { 1 });
        }

        var whole = (await officerOnA.Audit.ListAuditEventsAsync(new ListAuditEventsRequest { Resource = key.Name, PageSize = 1000 })).Events.Select(e => e.Sequence).ToList();
        Assert.Equal(7, whole.Count);

        // Pages from A and B in turn, one caller: the deployment's page-token key is every node's.
        var paged = new List<long>();
        var request = new ListAuditEventsRequest { Resource = key.Name, PageSize = 2 };
        var turn = 0;
        do
        {
            var reader = turn++ % 2 == 0 ? officerOnA : officerOnB;
            var page = await reader.Audit.ListAuditEventsAsync(request);
            paged.AddRange(page.Events.Select(e => e.Sequence));
            request.PageToken = page.NextPageToken;
            if (request.PageToken.Length > 0)
            {
                var e = await Assert.ThrowsAsync<RpcException>(async () => await otherOfficerOnB.Audit.ListAuditEventsAsync(request));
                Assert.Equal(StatusCode.InvalidArgument, e.StatusCode);
                Assert.StartsWith("page_token", e.Status.Detail, StringComparison.Ordinal);
            }
        }
        while (request.PageToken.Length > 0);

        Assert.Equal(whole, paged);
    }

    [Fact]
    public async Task LeaderStops_TheOtherNodeTakesOverCheckpoints()
    {
        var a = await StartNodeAsync();
        var b = await StartNodeAsync();
        using var onB = b.CreateClient(a.DeveloperToken);
        using var officerOnB = b.CreateClient(await a.CreatePrincipalWithTokenAsync("officer", null, "security-officer"));
        var key = await onB.CreateKeyAsync("tenants/dev", "checkpointed");

        // A started first and leads: only its housekeeping signs checkpoints and runs the lifecycle jobs.
        var leaseOfA = (PostgresLeaderLease)a.Services.GetRequiredService<ILeaderLease>();
        var leaseOfB = (PostgresLeaderLease)b.Services.GetRequiredService<ILeaderLease>();
        Assert.True(await leaseOfA.HoldAsync(standAside: false, default));
        Assert.False(await leaseOfB.HoldAsync(standAside: false, default));
        await a.DisposeAsync();
        _nodes.Remove(a);
        await onB.EncryptAsync(key.Name, new byte[] { 1 });
        var head = (await officerOnB.Audit.ListAuditEventsAsync(new ListAuditEventsRequest { PageSize = 1000 })).Events.Max(e => e.Sequence);

        var watch = Stopwatch.StartNew();
        long signed = 0;
        // B's housekeeping takes the lease on its next pass (once a second); GetAuditCheckpoint may sign before that.
        while ((signed < head || !leaseOfB.Held) && watch.Elapsed < TimeSpan.FromSeconds(60))
        {
            await Task.Delay(200);
            signed = (await officerOnB.Audit.GetAuditCheckpointAsync(new GetAuditCheckpointRequest())).Checkpoint?.Sequence ?? 0;
        }

        output.WriteLine($"after the leader stopped, the other node signed a checkpoint at {signed} (head {head}) in {watch.ElapsedMilliseconds} ms");
        Assert.True(signed >= head, $"hang guard: after 60 s no checkpoint covers {head} (latest {signed})");
        Assert.True(leaseOfB.Held, "hang guard: node B did not take the lease within 60 s");
    }

    // A node refused to sign checkpoints by its own state (head.json: the database went back
    // behind the head it saw, a rollback it was started to accept as it is) led, as the first to
    // start. Before, it kept the lease: the healthy node that joined never signed a checkpoint in
    // its housekeeping, and the whole deployment's chain went unsigned for one node's record.
    // Now it leaves the lease to a node ready to lead, does not take it back while that node
    // lives, and leads again (lifecycle work) once it is the only node left.
    [Fact]
    public Task LeaderRefusingCheckpoints_AHealthyNodeJoins_TakesTheLeaseAndSigns_TheRefusingNodeLeadsAgainOnlyWhenAlone() =>
        RefusingLeaderStandsAsideAsync(heldBy: Kms.Core.Services.SeenHead.FileName);

    // The same with A held on its other record, checkpoints.jsonl (the chain rolled back behind
    // the newest checkpoint A signed; head.json moved aside, so that the file alone holds it):
    // that refusal is the chain's (CheckpointAsync, known at start from the file), not the head
    // record's, and A, leading alone, tries and is refused at every pass, where the head.json
    // case returns before trying. The stand-aside, and its event 1324, must not depend on which.
    [Fact]
    public Task LeaderRefusingCheckpointsByItsCheckpointsFile_AHealthyNodeJoins_TakesTheLeaseAndSigns_TheRefusingNodeLeadsAgainOnlyWhenAlone() =>
        RefusingLeaderStandsAsideAsync(heldBy: "checkpoints.jsonl");

    // A, held on its record HELDBY (head.json or checkpoints.jsonl; the other moved aside), leads
    // alone; B joins healthy, takes the lease and signs; A stands aside (1324, once), does not take
    // the lease back while B lives, and leads again once alone.
    private async Task RefusingLeaderStandsAsideAsync(string heldBy)
    {
        var first = await StartNodeAsync();
        using (var developer = first.CreateClient())
        {
            await developer.CreateKeyAsync("tenants/dev", "before-the-rollback-1");
            await developer.CreateKeyAsync("tenants/dev", "before-the-rollback-2");
        }

        await first.DisposeAsync();
        _nodes.Remove(first);

        // Rolled back behind the point A recorded at its stop (the head it saw; the newest
        // checkpoint it signed), events and checkpoints alike; its other record moved aside, so
        // that HELDBY alone holds it.
        var seenHead = Path.Combine(first.DataDir, "audit", Kms.Core.Services.SeenHead.FileName);
        var checkpoints = Path.Combine(first.DataDir, "audit", "checkpoints.jsonl");
        var (holding, movedAside) = heldBy == "checkpoints.jsonl" ? (checkpoints, seenHead) : (seenHead, checkpoints);
        var recorded = holding == seenHead
            ? Kms.Core.Services.SeenHead.Parse(await File.ReadAllBytesAsync(seenHead))!.Head.Sequence
            : Kms.Core.Audit.AuditExport.ParseCheckpoint((await File.ReadAllLinesAsync(checkpoints))[^1])!.Sequence;
        await PostgresTestDatabase.ExecuteAsync(_database.ConnectionString, $"""
            DELETE FROM audit_events WHERE seq > {recorded - 2};
            DELETE FROM audit_checkpoints WHERE seq > {recorded - 2};
            """);
        File.Move(movedAside, movedAside + ".replaced-test");

        // A, held on its record, is alone: it leads (the lifecycle work must go on somewhere).
        var a = await RestartNodeAsync(first, "--Kms:Audit:AcceptRollback=true");
        var auditOfA = a.Services.GetRequiredService<Kms.Core.Services.AuditLog>();
        Assert.NotNull(auditOfA.CheckpointRefusedSince);
        var leaseOfA = (PostgresLeaderLease)a.Services.GetRequiredService<ILeaderLease>();
        await PassesUntilAsync(auditOfA, () => leaseOfA.Held, "node A, refusing checkpoints and alone, did not take the lease");

        // B joins, healthy: A leaves it the lease, and B's housekeeping signs the chain's head.
        var b = await StartNodeAsync();
        var auditOfB = b.Services.GetRequiredService<Kms.Core.Services.AuditLog>();
        var leaseOfB = (PostgresLeaderLease)b.Services.GetRequiredService<ILeaderLease>();
        long signedByB = 0;
        auditOfB.CheckpointWritten += checkpoint => Interlocked.Exchange(ref signedByB, checkpoint.Sequence);
        using (var onB = b.CreateClient(a.DeveloperToken))
        {
            await onB.CreateKeyAsync("tenants/dev", "after-the-rollback");
        }

        using var officerOnB = b.CreateClient(await a.CreatePrincipalWithTokenAsync("officer", null, "security-officer"));
        var head = (await officerOnB.Audit.ListAuditEventsAsync(new ListAuditEventsRequest { PageSize = 1000 })).Events.Max(e => e.Sequence);
        await PassesUntilAsync(auditOfA, auditOfB, () => leaseOfB.Held && Interlocked.Read(ref signedByB) >= head,
            $"node B did not take the lease from node A, which refuses checkpoints (held on its {heldBy}), or signed no checkpoint through {head} in its housekeeping");
        Assert.False(leaseOfA.Held);
        Assert.NotNull(auditOfA.CheckpointRefusedSince);

        // A's lifecycle says it left the lease (1324, Information), once for the stretch.
        await LoggedAsync(a, "Id: 1324", $"node A, standing aside (held on its {heldBy}), did not log 1324");

        // No flapping: over further passes of both, B keeps the lease and A does not take it back.
        for (var pass = 0; pass < 3; pass++)
        {
            await PassesUntilAsync(auditOfA, auditOfB, () => true, "no pass");
            Assert.True(leaseOfB.Held, $"node B lost the lease after {pass + 1} passes");
            Assert.False(leaseOfA.Held, $"node A took the lease back after {pass + 1} passes");
        }

        Assert.Single(a.Logs.Events, e => e.Contains("Id: 1324", StringComparison.Ordinal) && e.StartsWith("Information ", StringComparison.Ordinal));

        // B stops: A, still refusing, is alone again and leads.
        await b.DisposeAsync();
        _nodes.Remove(b);
        await PassesUntilAsync(auditOfA, () => leaseOfA.Held, "node A, refusing checkpoints and alone again, did not take the lease");
        Assert.NotNull(auditOfA.CheckpointRefusedSince);
    }

    // Waits for NODE to log an event containing TEXT; fails when none comes in 60 s (a hang guard).
    private static async Task LoggedAsync(KmsTestServer node, string text, string failure)
    {
        var waited = Stopwatch.StartNew();
        while (!node.Logs.Events.Any(e => e.Contains(text, StringComparison.Ordinal)))
        {
            Assert.True(waited.Elapsed < TimeSpan.FromSeconds(60), $"{failure} (hang guard: 60 s)");
            await Task.Delay(50);
        }
    }

    // Waits for housekeeping passes (of each of the logs, in turn: one of every node after the
    // other) until the condition holds; fails after five rounds, or when no pass ends in 60 s.
    private static async Task PassesUntilAsync(Kms.Core.Services.AuditLog log, Func<bool> condition, string failure) =>
        await PassesUntilAsync([log], condition, failure);

    private static async Task PassesUntilAsync(Kms.Core.Services.AuditLog first, Kms.Core.Services.AuditLog second, Func<bool> condition, string failure) =>
        await PassesUntilAsync([first, second], condition, failure);

    private static async Task PassesUntilAsync(Kms.Core.Services.AuditLog[] logs, Func<bool> condition, string failure)
    {
        for (var round = 0; round < 5; round++)
        {
            foreach (var log in logs)
            {
                var ended = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
                void Ended() => ended.TrySetResult();
                log.HousekeepingPassEnded += Ended;
                try
                {
                    await ended.Task.WaitAsync(TimeSpan.FromSeconds(60));
                }
                finally
                {
                    log.HousekeepingPassEnded -= Ended;
                }
            }

            if (condition())
            {
                return;
            }
        }

        Assert.Fail($"{failure} (after five housekeeping passes of each node)");
    }

    [Fact]
    public async Task ThreeNodes_OneKilledUnderLoad_TheClientFailsOverWithoutAFailedCall()
    {
        var a = await StartNodeAsync();
        using var setup = a.CreateClient();
        var key = await setup.CreateKeyAsync("tenants/dev", "failover");

        // B and C are real processes (B is killed with SIGKILL), sharing A's TLS CA and the database.
        var b = await StartProcessNodeAsync(a);
        var c = await StartProcessNodeAsync(a);
        await using var _ = c;
        using var client = new Kms.Client.KmsClient(new Kms.Client.KmsClientOptions
        {
            Endpoints = [a.Address, b.Address, c.Address],
            CaCertificatePath = a.CaCertificatePath,
            ApiToken = a.DeveloperToken,
            HealthCheckInterval = TimeSpan.FromMilliseconds(500),
        });

        long succeeded = 0, failed = 0;
        var failures = new System.Collections.Concurrent.ConcurrentBag<string>();
        using var stop = new CancellationTokenSource();
        var load = Enumerable.Range(0, 8).Select(worker => Task.Run(async () =>
        {
            var plaintext = Encoding.UTF8.GetBytes($"worker {worker}");
            while (!stop.IsCancellationRequested)
            {
                try
                {
                    var sealedData = await client.EncryptAsync(key.Name, plaintext);
                    using var opened = await client.DecryptAsync(sealedData.Ciphertext);
                    Assert.Equal(plaintext, opened.Plaintext.ToArray());
                    Interlocked.Increment(ref succeeded);
                }
                catch (RpcException e)
                {
                    Interlocked.Increment(ref failed);
                    failures.Add($"{e.StatusCode}: {e.Status.Detail}");
                }
            }
        })).ToList();

        // The kill comes once the load is served (each worker some pairs), and the load stops once as
        // many more have succeeded after it — counted, not timed: before, the kill came 2 s into a 6-s
        // load, and on a loaded machine the load could still be starting at the kill, or have no time
        // left after it for the success the test asserts.
        const long pairs = 5 * 8;
        async Task UntilSucceededAsync(long count, string what)
        {
            var guard = Stopwatch.StartNew();
            while (Interlocked.Read(ref succeeded) < count && load.All(l => !l.IsCompleted))
            {
                Assert.True(guard.Elapsed < TimeSpan.FromSeconds(60), $"hang guard: {Interlocked.Read(ref succeeded)} of {count} pairs succeeded {what} after 60 s ({Interlocked.Read(ref failed)} failed)");
                await Task.Delay(20);
            }
        }

        long before;
        try
        {
            await UntilSucceededAsync(pairs, "before the kill");
            before = Interlocked.Read(ref succeeded);
            b.Kill();
            await UntilSucceededAsync(before + pairs, "after the kill");
        }
        finally
        {
            await stop.CancelAsync();
            await Task.WhenAll(load);
        }

        await b.DisposeAsync();

        output.WriteLine($"{succeeded} encrypt+decrypt pairs succeeded ({before} before node B was killed), {failed} failed: {string.Join("; ", failures.Distinct())}");
        Assert.True(succeeded > before, "no call succeeded after the kill");
        Assert.Equal(0, failed);
    }

    [Fact]
    public async Task ExportBackup_OnPostgres_RefusedWhenRequested_NotAfterTheOfficersSigned()
    {
        using var officers = new TestOfficers("alice", "bob");
        var (genesis, quorum) = WriteGenesis(officers);
        try
        {
            var node = await StartNodeAsync(extraArgs: quorum);
            using var officer = node.CreateClient(await node.CreatePrincipalWithTokenAsync("officer", null, "security-officer"));
            var e = await Assert.ThrowsAsync<RpcException>(() => officer.CreateQuorumRequestAsync(
                new CreateQuorumRequestRequest { Operation = Kms.Contracts.V1.QuorumOperation.ExportBackup }));
            Assert.Equal(StatusCode.FailedPrecondition, e.StatusCode);
            Assert.Contains("postgres database is backed up with its own tools", e.Status.Detail, StringComparison.Ordinal);
        }
        finally
        {
            File.Delete(genesis);
        }
    }

    [Fact]
    public async Task RecoverDeploymentAdmin_ExecutedOnA_CredentialOnlyInAsDataDir_TheSharedStoreHonoursItOnB_Once()
    {
        // The credential is a row of the shared store (its hash), so every node accepts it, once;
        // its text is only in the data directory of the node that executed the request.
        using var officers = new TestOfficers("alice", "bob");
        var (genesis, quorum) = WriteGenesis(officers);
        try
        {
            var a = await StartNodeAsync(extraArgs: [.. quorum, "--Kms:NodeName=node-a"]);
            var b = await StartNodeAsync(extraArgs: [.. quorum, "--Kms:NodeName=node-b"]);
            var officerToken = await a.CreatePrincipalWithTokenAsync("officer", null, "security-officer");
            using var officer = a.CreateClient(officerToken);
            var request = await officer.RequestDeploymentAdminRecoveryAsync();
            foreach (var name in new[] { "alice", "bob" })
            {
                using var approver = Kms.Client.Quorum.QuorumApprover.FromKey(ECDsa.Create(officers.KeyOf(name).ExportParameters(true)));
                await approver.ApproveAsync(officer, await approver.PrepareAsync(officer, request.Name));
            }

            Assert.False(File.Exists(Path.Combine(b.DataDir, "bootstrap.token")));
            var credential = (await File.ReadAllTextAsync(Path.Combine(a.DataDir, "bootstrap.token"))).Trim();

            // Every node tells the officers which node holds it, and where.
            using (var officerOnB = b.CreateClient(officerToken))
            {
                var seenOnB = await officerOnB.GetQuorumRequestAsync(request.Name);
                Assert.Equal(("node-a", Path.Combine(a.DataDir, "bootstrap.token")), (seenOnB.ExecutingNode, seenOnB.CredentialPath));
            }

            using (var onB = b.CreateClient(credential))
            {
                Assert.Equal("token:recovered-on-b", (await onB.BootstrapAsync("token:recovered-on-b")).Admin.Name);
            }

            using var onA = a.CreateClient(credential);
            Assert.Equal(StatusCode.Unauthenticated, (await Assert.ThrowsAsync<RpcException>(() => onA.BootstrapAsync("token:recovered-on-a"))).StatusCode);
            using var admin = a.DeploymentAdmin();
            Assert.Equal(["token:recovered-on-b", "token:test-admin"], (await admin.Access.ListRoleBindingsAsync(new ListRoleBindingsRequest())).Bindings
                .Where(x => x.Role == "deployment-admin").Select(x => x.Principal).Order(StringComparer.Ordinal));
        }
        finally
        {
            File.Delete(genesis);
        }
    }

    [Fact]
    public async Task NodeName_HeldByALiveNode_ASecondNodeWithItRefusesToStart_OneStartedAfterTheHolderStoppedOrWasKilledStarts()
    {
        // Nothing checked it: two nodes with one Kms:NodeName (two containers with one host name)
        // both served, and the quorum requests either executed named the same node.
        string[] Named(string name) => [$"--Kms:NodeName={name}", "--Storage:Postgres:NodeNameWait=00:00:01"];
        var a = await StartNodeAsync(extraArgs: Named("kms-shared"));
        var e = await Assert.ThrowsAnyAsync<Exception>(() => StartNodeAsync(extraArgs: Named("kms-shared")));
        Assert.Contains("Kms:NodeName kms-shared is held by another live node of this PostgreSQL database (PostgreSQL session ", e.Message, StringComparison.Ordinal);
        Assert.Contains("'kms node kms-shared'", e.Message, StringComparison.Ordinal);

        // The holder serves on; a node of another name starts beside it.
        using (var client = a.CreateClient())
        {
            await client.GenerateRandomAsync(4);
        }

        var other = await StartNodeAsync(shareTlsWith: a, extraArgs: Named("kms-other"));

        // Stopped: its name is free, for the node restarted in its place. Its session's end is
        // PostgreSQL's to finish after the close (a moment, or longer on a loaded machine): the
        // node waits for it as a restarted one does (NodeNameWait's 30 s), not the 1 s above, which
        // only keeps the refusal short.
        var developer = a.DeveloperToken;
        await a.DisposeAsync();
        _nodes.Remove(a);
        var restarted = await StartNodeAsync(shareTlsWith: other, extraArgs: ["--Kms:NodeName=kms-shared"]);

        // Killed (SIGKILL: no shutdown, its connections reset by the kernel): free too, within the wait.
        var killed = await StartProcessNodeAsync(other, "--Kms:NodeName=kms-killed");
        killed.Kill();
        await killed.DisposeAsync();
        await StartNodeAsync(extraArgs: ["--Kms:NodeName=kms-killed"]);
        using var onRestarted = restarted.CreateClient(developer);
        await onRestarted.GenerateRandomAsync(4);
    }

    [Fact]
    public async Task NodeName_SessionThatHeldItEnded_TakenAgainAtTheNextCheck_OrTheNodeThatTookItMeanwhileIsNamed()
    {
        // PostgreSQL restarted or a partition: the session holding the name ends and lets it go.
        var options = new PostgresOptions { ConnectionString = _database.ConnectionString };
        await using var first = await PostgresStore.OpenAsync(options, default);
        Assert.Null(await first.TryHoldNodeNameAsync("kms-cut", default));
        await EndNodeNameSessionsAsync("kms-cut");

        // Another store takes it meanwhile: the first is told who holds it now.
        await using (var second = await PostgresStore.OpenAsync(options, default))
        {
            Assert.Null(await second.TryHoldNodeNameAsync("kms-cut", default));
            Assert.StartsWith("PostgreSQL session ", await first.KeepNodeNameAsync(default), StringComparison.Ordinal);
        }

        // Once it is free (PostgreSQL ends a closed session's backend a moment after the close), the
        // first takes it again, and keeps it; a third is refused.
        var deadline = DateTime.UtcNow.AddSeconds(30);
        while (await first.KeepNodeNameAsync(default) is { } holder)
        {
            Assert.True(DateTime.UtcNow < deadline, $"hang guard: after 30 s still held by {holder}");
            await Task.Delay(100);
        }

        Assert.Null(await first.KeepNodeNameAsync(default));
        await using var third = await PostgresStore.OpenAsync(options, default);
        Assert.Contains("'kms node kms-cut'", await third.TryHoldNodeNameAsync("kms-cut", default), StringComparison.Ordinal);
    }

    // Ends the session and waits until its backend is gone, with its locks: 60 s is a hang guard.
    // Counted are the backends that ended within it (pg_terminate_backend's false, a backend
    // still there at the timeout, was counted as one before: count() counts every non-null).
    private async Task EndNodeNameSessionsAsync(string nodeName)
    {
        await using var connection = new Npgsql.NpgsqlConnection(_database.ConnectionString);
        await connection.OpenAsync();
        await using var end = new Npgsql.NpgsqlCommand("SELECT count(*) FILTER (WHERE pg_terminate_backend(pid, 60000)) FROM pg_stat_activity WHERE application_name = @name", connection);
        end.Parameters.AddWithValue("name", $"kms node {nodeName}");
        var ended = (long)(await end.ExecuteScalarAsync())!;
        Assert.True(ended == 1, $"{ended} sessions holding node name {nodeName} ended within 60 s of their termination; one expected");
    }

    [Fact]
    public async Task VersionDestroyedThroughA_NodeBRefusesItsBlob_AndNodeBsUnwrappedCopyIsGone()
    {
        // Node B decrypted under version 1: it remembers the version's metadata (ENABLED) and holds
        // the version unwrapped in its own HSM. The version is destroyed through node A, at once
        // (two officers approve DESTROY_KEY_VERSION_NOW). B must stop serving it once the change
        // feed reaches it — refusing the blob as DESTROYED, not decrypting it from what it
        // remembers — and its unwrapped copy must go, while its copy of version 2 stays.
        using var officers = new TestOfficers("alice", "bob");
        var (genesis, quorum) = WriteGenesis(officers);
        try
        {
            var a = await StartNodeAsync(extraArgs: quorum);
            var b = await StartNodeAsync(shareTlsWith: a, extraArgs: quorum);
            using var onA = a.CreateClient();
            using var onB = b.CreateClient(a.DeveloperToken);
            var key = await onA.CreateKeyAsync("tenants/dev", "shredded-now");
            var underV1 = (await onA.EncryptAsync(key.Name, "under version 1"u8.ToArray())).Ciphertext;
            await onA.RotateKeyAsync(key.Name);
            var underV2 = (await onA.EncryptAsync(key.Name, "under version 2"u8.ToArray())).Ciphertext;

            var hsmOfB = b.Services.GetRequiredService<Pkcs11Hsm>();
            var copiesBefore = hsmOfB.CountSessionKeyObjects();
            foreach (var (blob, text) in new[] { (underV1, "under version 1"), (underV2, "under version 2") })
            {
                using var opened = await onB.DecryptAsync(blob);
                Assert.Equal(text, Encoding.UTF8.GetString(opened.Plaintext));
            }

            var (v1, v2) = (await VersionIdAsync(b, key.Name, 1), await VersionIdAsync(b, key.Name, 2));
            Assert.True(HoldsCopy(hsmOfB, v1) && HoldsCopy(hsmOfB, v2), "node B did not cache the versions it decrypted under");
            Assert.Equal(copiesBefore + 2, hsmOfB.CountSessionKeyObjects());

            using var officer = a.CreateClient(await a.CreatePrincipalWithTokenAsync("officer", null, "security-officer"));
            var request = await onA.RequestDestroyKeyVersionNowAsync($"{key.Name}/versions/1");
            var executed = false;
            foreach (var name in new[] { "alice", "bob" })
            {
                using var approver = Kms.Client.Quorum.QuorumApprover.FromKey(ECDsa.Create(officers.KeyOf(name).ExportParameters(true)));
                executed = (await approver.ApproveAsync(officer, await approver.PrepareAsync(officer, request.Name))).Executed;
            }

            Assert.True(executed);
            var onAItself = await Assert.ThrowsAsync<RpcException>(() => onA.DecryptAsync(underV1));
            Assert.Contains("is DESTROYED", onAItself.Status.Detail, StringComparison.Ordinal);

            var refusal = await RefusedOnAsync(onB, underV1, "a version destroyed through node A");
            Assert.Equal(StatusCode.FailedPrecondition, refusal.StatusCode);
            Assert.Contains($"key version {key.Name}/versions/1 is DESTROYED", refusal.Status.Detail, StringComparison.Ordinal);

            // B's copy of version 1 is out of its handle cache, and gone from its HSM once B's next
            // operation that holds a session destroys it; version 2's copy was not touched.
            await CopiesGoneAsync(hsmOfB, [v1], copiesBefore + 1);
            Assert.True(HoldsCopy(hsmOfB, v2), "node B's copy of version 2 was evicted with version 1's");
            using (var stillServed = await onB.DecryptAsync(underV2))
            {
                Assert.Equal($"{key.Name}/versions/2", stillServed.KeyVersion);
            }

            // And it stays refused (not re-unwrapped from a stale read).
            Assert.Equal(StatusCode.FailedPrecondition, (await Assert.ThrowsAsync<RpcException>(() => onB.DecryptAsync(underV1))).StatusCode);
            Assert.False(HoldsCopy(hsmOfB, v1), "node B cached version 1 again");
        }
        finally
        {
            File.Delete(genesis);
        }
    }

    [Fact]
    public async Task KeyDeletedThroughA_TakesEffect_NodeBRefusesEveryVersionsBlob_AndNodeBsUnwrappedCopiesAreGone()
    {
        // The deletion is scheduled through node A with a one-second waiting period, and A's
        // lifecycle pass (A leads, a pass a second) destroys every version. B decrypted under both
        // versions first: once the feed reaches it, it refuses both blobs as DESTROYED, and its
        // unwrapped copies of both are gone.
        string[] shortWait = ["--Lifecycle:MinWaitingPeriod=00:00:01"];
        var a = await StartNodeAsync(extraArgs: shortWait);
        var b = await StartNodeAsync(shareTlsWith: a, extraArgs: shortWait);
        using var onA = a.CreateClient();
        using var onB = b.CreateClient(a.DeveloperToken);
        var key = await onA.CreateKeyAsync("tenants/dev", "deleted-soon");
        var underV1 = (await onA.EncryptAsync(key.Name, new byte[] { 1 })).Ciphertext;
        await onA.RotateKeyAsync(key.Name);
        var underV2 = (await onA.EncryptAsync(key.Name, new byte[] { 2 })).Ciphertext;

        var hsmOfB = b.Services.GetRequiredService<Pkcs11Hsm>();
        var copiesBefore = hsmOfB.CountSessionKeyObjects();
        foreach (var blob in new[] { underV1, underV2 })
        {
            using var _ = await onB.DecryptAsync(blob);
        }

        var versions = new[] { await VersionIdAsync(b, key.Name, 1), await VersionIdAsync(b, key.Name, 2) };
        Assert.All(versions, v => Assert.True(HoldsCopy(hsmOfB, v), "node B did not cache a version it decrypted under"));
        Assert.Equal(copiesBefore + 2, hsmOfB.CountSessionKeyObjects());

        Assert.Equal(KeyState.DestroyScheduled, (await onA.ScheduleKeyDeletionAsync(key.Name, TimeSpan.FromSeconds(1))).State);

        foreach (var blob in new[] { underV1, underV2 })
        {
            var refusal = await RefusedOnAsync(onB, blob, "a key whose deletion took effect through node A", detail: $"key {key.Name} is DESTROYED");
            Assert.Equal(StatusCode.FailedPrecondition, refusal.StatusCode);
        }

        Assert.Equal(KeyState.Destroyed, (await onA.GetKeyAsync(key.Name)).State);
        await CopiesGoneAsync(hsmOfB, versions, copiesBefore);
    }

    // Decrypts the blob on the node until it is refused (with detail containing the text, when
    // given): the change feed brings another node's change within a poll interval (250 ms); 60 s
    // is only a hang guard.
    private async Task<RpcException> RefusedOnAsync(Kms.Client.KmsClient node, byte[] blob, string what, string? detail = null)
    {
        var watch = Stopwatch.StartNew();
        var last = "decrypted";
        while (watch.Elapsed < TimeSpan.FromSeconds(60))
        {
            try
            {
                using var _ = await node.DecryptAsync(blob);
                last = "decrypted";
            }
            catch (RpcException e) when (detail is null || e.Status.Detail.Contains(detail, StringComparison.Ordinal))
            {
                output.WriteLine($"{what} was refused by node B after {watch.ElapsedMilliseconds} ms (poll interval 250 ms): {e.StatusCode} {e.Status.Detail}");
                return e;
            }
            catch (RpcException e) when (e.StatusCode == StatusCode.FailedPrecondition)
            {
                // Refused for the step before (the key scheduled for deletion): not yet the destruction.
                last = e.Status.Detail;
            }

            await Task.Delay(10);
        }

        Assert.Fail($"hang guard: node B did not refuse {what} within 60 s (its last answer: {last})");
        throw new InvalidOperationException("unreachable");
    }

    // Waits (60 s hang guard) until none of the versions is in the node's handle cache and the
    // node's token holds the given number of unwrapped session keys: an evicted copy is destroyed
    // by the next operation that holds a session, so one is run each round.
    private static async Task CopiesGoneAsync(Pkcs11Hsm hsm, Kms.Core.Keys.KeyVersionId[] versions, int expectedCopies)
    {
        var watch = Stopwatch.StartNew();
        while (true)
        {
            await hsm.GenerateRandomAsync(1, default);
            var held = versions.Where(v => HoldsCopy(hsm, v)).ToList();
            var copies = hsm.CountSessionKeyObjects();
            if (held.Count == 0 && copies == expectedCopies)
            {
                return;
            }

            Assert.True(watch.Elapsed < TimeSpan.FromSeconds(60),
                $"hang guard: after 60 s node B still caches {held.Count} of the destroyed versions and holds {copies} unwrapped keys ({expectedCopies} expected)");
            await Task.Delay(20);
        }
    }

    // Whether the HSM's handle cache holds the version's unwrapped copy: a lease whose unwrap
    // throws (a miss) never creates one.
    private static bool HoldsCopy(Pkcs11Hsm hsm, Kms.Core.Keys.KeyVersionId version)
    {
        try
        {
            using var lease = hsm.Cache.Lease(version, KeyHandleKind.Aes256Gcm, () => throw new InvalidOperationException(NotCached));
            return true;
        }
        catch (InvalidOperationException e) when (e.Message == NotCached)
        {
            return false;
        }
    }

    private const string NotCached = "not cached";

    private static async Task<Kms.Core.Keys.KeyVersionId> VersionIdAsync(KmsTestServer node, string key, int version) =>
        (await node.Services.GetRequiredService<IKeyStore>().GetVersionAsync(Kms.Core.Names.KeyVersionName.Parse($"{key}/versions/{version}", "name"), default))!.Id;

    [Fact]
    public async Task NodeWithAnotherDomainKey_RefusesToServeTheDeployment()
    {
        await StartNodeAsync();
        var stranger = RandomNumberGenerator.GetBytes(32);
        var e = await Assert.ThrowsAnyAsync<Exception>(() => StartNodeAsync(stranger));
        Assert.Contains("refusing to serve", e.Message, StringComparison.Ordinal);
    }

    // One CA for the nodes a client spreads its calls over: the other node's TLS files, before this one starts.
    private static void ShareTls(KmsTestServer from, string dataDir)
    {
        var tls = Directory.CreateDirectory(Path.Combine(dataDir, "tls")).FullName;
        foreach (var file in Directory.GetFiles(Path.Combine(from.DataDir, "tls")))
        {
            File.Copy(file, Path.Combine(tls, Path.GetFileName(file)));
        }
    }

    // A node as a child process on its own token (created here, before the process loads SoftHSM).
    private async Task<ServerProcess> StartProcessNodeAsync(KmsTestServer sharingTlsWith, params string[] extraArgs)
    {
        var token = SoftHsm.CreateToken();
        using (var session = HsmCeremonySession.Open(token.Options(devMode: false), Encoding.UTF8.GetBytes(token.UserPin)))
        {
            session.ImportDomainKey(_domainKey, "kms-domain-key", DomainKeyId);
        }

        var dataDir = Directory.CreateDirectory(Scratch.NewPath("kms-node-")).FullName;
        ShareTls(sharingTlsWith, dataDir);

        return await ServerProcess.StartAsync(dataDir, SoftHsm.ConfigPath, token.Label, token.PinFile, DomainKeyId,
            ["--Storage:Provider=postgres", $"--Storage:Postgres:ConnectionString={_database.ConnectionString}", .. extraArgs]);
    }

    [Fact]
    public async Task Residency_KeyOfRegionEu_UsableOnlyOnEuNodes_RefusedElsewhereBeforeTheHsm_SdkRoutesToEu()
    {
        var euKey = RandomNumberGenerator.GetBytes(32);
        var eu = await StartNodeAsync(regionKeys: new() { ["eu"] = euKey });
        var us = await StartNodeAsync(shareTlsWith: eu);
        using var onEu = eu.CreateClient();
        using var onUs = us.CreateClient(eu.DeveloperToken);

        // A node outside the region refuses to create it (nothing generated), naming the region.
        var template = new Key { Purpose = KeyPurpose.EncryptDecrypt, Residency = "eu" };
        var outside = await Assert.ThrowsAsync<RpcException>(() => onUs.CreateKeyAsync("tenants/dev", "eu-records", template));
        Assert.Equal(StatusCode.FailedPrecondition, outside.StatusCode);
        Assert.Contains("residency is eu", outside.Status.Detail, StringComparison.Ordinal);
        Assert.Equal("eu", outside.Trailers.GetValue("kms-residency"));

        var key = await onEu.CreateKeyAsync("tenants/dev", "eu-records", template);
        Assert.Equal("eu", key.Residency);
        Assert.Equal("eu", (await onUs.GetKeyAsync(key.Name)).Residency);
        var ciphertext = (await onEu.EncryptAsync(key.Name, "stays in the eu"u8.ToArray())).Ciphertext;
        var refused = await Assert.ThrowsAsync<RpcException>(() => onUs.DecryptAsync(ciphertext));
        Assert.Equal(StatusCode.FailedPrecondition, refused.StatusCode);
        Assert.Equal(StatusCode.FailedPrecondition, (await Assert.ThrowsAsync<RpcException>(() => onUs.EncryptAsync(key.Name, new byte[] { 1 }))).StatusCode);

        // Not just a check in the code: the US node's HSM cannot unwrap the version at all.
        var stored = await us.Services.GetRequiredService<IKeyStore>().GetPrimaryMaterialAsync(Kms.Core.Names.KeyName.Parse(key.Name, "name"), default);
        var usHsm = us.Services.GetRequiredService<Pkcs11Hsm>();
        await Assert.ThrowsAsync<Kms.Core.Errors.KmsException>(async () =>
            await usHsm.EncryptAesGcmAsync(new KeyMaterialRef(stored!.Version.Id, stored.Material!), new byte[12], [], new byte[] { 1 }, default));

        // Rotation on an EU node keeps new versions in the region.
        await onEu.RotateKeyAsync(key.Name);
        var rotated = (await onEu.EncryptAsync(key.Name, "v2"u8.ToArray())).Ciphertext;
        using (var opened = await onEu.DecryptAsync(rotated))
        {
            Assert.Equal("v2", Encoding.UTF8.GetString(opened.Plaintext));
        }

        // The SDK given both nodes sends the refused call on to the EU node; a key without residency is served by either.
        using var routed = new Kms.Client.KmsClient(new Kms.Client.KmsClientOptions
        {
            Endpoints = [us.Address, eu.Address],
            CaCertificatePath = eu.CaCertificatePath,
            ApiToken = eu.DeveloperToken,
        });
        for (var i = 0; i < 4; i++)
        {
            using var opened = await routed.DecryptAsync(ciphertext);
            Assert.Equal("stays in the eu", Encoding.UTF8.GetString(opened.Plaintext));
        }
    }

    [Fact]
    public async Task RequestNamesWithANulOrACutSurrogatePair_AuditedOnPostgres_NoOtherCallFails()
    {
        var node = await StartNodeAsync();
        using var client = node.CreateClient();
        var key = await client.CreateKeyAsync("tenants/dev", "odd-names");

        // PostgreSQL refuses a NUL in a text column; the second name's 512th character is the
        // first half of a surrogate pair, where the audit cuts a long name.
        var withNul = "tenants/dev/keys/a\0b";
        var cutPair = "tenants/dev/keys/" + new string('a', 511 - 17) + "\U0001F600";
        foreach (var name in new[] { withNul, cutPair })
        {
            var e = await Assert.ThrowsAsync<RpcException>(async () => await client.Raw.GetKeyAsync(new GetKeyRequest { Name = name }));
            Assert.True(e.StatusCode == StatusCode.InvalidArgument, e.Status.ToString());
            await client.EncryptAsync(key.Name, new byte[] { 1 });
        }

        using var auditor = node.CreateClient(await node.CreatePrincipalWithTokenAsync("odd-names-auditor", "dev", "auditor"));
        var events = (await auditor.Audit.ListAuditEventsAsync(new ListAuditEventsRequest { Tenant = "tenants/dev", Operation = "/kms.v1.KeyManagementService/GetKey", PageSize = 100 })).Events;
        Assert.Contains(events, e => e.Resource == "tenants/dev/keys/a?b" && e.Outcome == "INVALID_ARGUMENT");
        Assert.Contains(events, e => e.Resource == cutPair[..511] + "…(truncated)" && e.Outcome == "INVALID_ARGUMENT");
    }

    [Fact]
    public async Task Residency_NodeWithAnotherKeyForTheRegion_RefusesToServe()
    {
        await StartNodeAsync(regionKeys: new() { ["eu"] = RandomNumberGenerator.GetBytes(32) });
        var e = await Assert.ThrowsAnyAsync<Exception>(() => StartNodeAsync(regionKeys: new() { ["eu"] = RandomNumberGenerator.GetBytes(32) }));
        Assert.Contains("region eu", e.Message, StringComparison.Ordinal);
        Assert.Contains("refusing to serve", e.Message, StringComparison.Ordinal);

        // Refused for its check value, before the witness is tried: the answer names both check values.
        Assert.Contains("this database's keys of that region are under check value", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Residency_NodeWithAKeyForTheRegionForgedToTheSameCheckValue_RefusesToServe()
    {
        // 3 bytes of check value are matched by another key in about 2^24 tries: the region's
        // key must also unwrap what was wrapped under the pinned one.
        await StartNodeAsync(regionKeys: new() { ["eu"] = ForgedCheckValue.Real });
        var e = await Assert.ThrowsAnyAsync<Exception>(() => StartNodeAsync(regionKeys: new() { ["eu"] = ForgedCheckValue.Forged }));
        Assert.Contains("region eu has the pinned check value but cannot unwrap", e.Message, StringComparison.Ordinal);
        await StartNodeAsync(regionKeys: new() { ["eu"] = ForgedCheckValue.Real });
    }

    /// <summary>A genesis of alice and bob (2 of 2) written to a scratch file, and the arguments that make a production node serve quorum from it: the file and its pinned hash.</summary>
    private static (string Path, string[] Args) WriteGenesis(TestOfficers officers)
    {
        var path = Scratch.NewPath("kms-genesis-", ".json");
        var genesis = Kms.Core.Quorum.OfficerSet.CreateGenesis(officers.Select("alice", "bob"), 2);
        Kms.Core.Quorum.GenesisFile.Write(path, genesis);
        return (path, [$"--Kms:Quorum:GenesisFile={path}", $"--Kms:Quorum:GenesisSha256={genesis.Hash}"]);
    }

    // A node stopped earlier, started again on its token and data directory.
    private async Task<KmsTestServer> RestartNodeAsync(KmsTestServer stopped, params string[] extraArgs)
    {
        var node = await KmsTestServer.StartProductionAsync(stopped.Token, stopped.DataDir, DomainKeyId, "dev", [.. NodeArgs, .. extraArgs]);
        _nodes.Add(node);
        return node;
    }

    private string[] NodeArgs =>
    [
        "--Storage:Provider=postgres",
        $"--Storage:Postgres:ConnectionString={_database.ConnectionString}",
        "--Kms:CredentialCacheTime=00:05:00",
        "--Kms:Audit:CheckpointInterval=00:00:01",
        "--Lifecycle:JobInterval=00:00:01",
    ];

    private async Task<KmsTestServer> StartNodeAsync(byte[]? domainKey = null, Dictionary<string, byte[]>? regionKeys = null, KmsTestServer? shareTlsWith = null, params string[] extraArgs)
    {
        var token = SoftHsm.CreateToken();
        var regionArgs = new List<string>();
        using (var session = HsmCeremonySession.Open(token.Options(devMode: false), Encoding.UTF8.GetBytes(token.UserPin)))
        {
            session.ImportDomainKey(domainKey ?? _domainKey, "kms-domain-key", DomainKeyId);
            foreach (var (region, key) in regionKeys ?? [])
            {
                session.ImportDomainKey(key, $"kms-domain-key-{region}", $"dk-{region}");
                regionArgs.Add($"--Hsm:Regions:{region}:DomainKeyId=dk-{region}");
            }
        }

        var dataDir = Scratch.NewPath("kms-node-");
        if (shareTlsWith is not null)
        {
            ShareTls(shareTlsWith, dataDir);
        }

        var node = await KmsTestServer.StartProductionAsync(token, dataDir, DomainKeyId, "dev",
        [
            .. NodeArgs,
            .. regionArgs,
            .. extraArgs,
        ]);
        _nodes.Add(node);
        return node;
    }
}
