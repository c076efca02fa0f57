using System.Security.Cryptography;
using Google.Protobuf;
using Grpc.Core;
using Kms.Client.Quorum;
using Kms.Contracts.V1;
using Kms.Core.Quorum;
using Kms.Testing;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.DependencyInjection.Extensions;
using Microsoft.Extensions.Time.Testing;

namespace Kms.Server.Tests;

/// <summary>
/// Quorum approvals through real gRPC: a genesis of alice, bob and carol (2 of 3) pinned by a
/// genesis file, officers approving with the client's QuorumApprover, a fake clock for expiry.
/// </summary>
public sealed class QuorumEndToEndTests : IAsyncLifetime, IDisposable
{
    private readonly FakeTimeProvider _time = new(new DateTimeOffset(2026, 11, 29, 12, 0, 0, TimeSpan.Zero));
    private readonly TestOfficers _officers = new("alice", "bob", "carol", "dave", "erin");
    private readonly string _genesisPath = Path.Combine(Path.GetTempPath(), "kms-genesis-" + Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(6)) + ".json");
    private KmsTestServer _server = null!;
    private Kms.Client.KmsClient _keyManager = null!;
    private Kms.Client.KmsClient _officer = null!;

    public async Task InitializeAsync()
    {
        GenesisFile.Write(_genesisPath, OfficerSet.CreateGenesis(_officers.Select("alice", "bob", "carol"), 2));
        _server = await KmsTestServer.StartAsync(null, null, "dev", UseFakeClock, $"--Kms:Quorum:GenesisFile={_genesisPath}");
        _keyManager = _server.CreateClient();
        _officer = _server.CreateClient(await _server.CreatePrincipalWithTokenAsync("officer", null, "security-officer"));
    }

    public async Task DisposeAsync()
    {
        _keyManager.Dispose();
        _officer.Dispose();
        await _server.DisposeAsync();
        File.Delete(_genesisPath);
    }

    public void Dispose() => _officers.Dispose();

    [Fact]
    public async Task DestroyNow_TwoOfThreeApprove_VersionDestroyedAtOnce_OldCiphertextNoLongerDecrypts_AllAudited()
    {
        var (key, blob) = await RotatedKeyWithOldBlobAsync("shred");
        var request = await _keyManager.RequestDestroyKeyVersionNowAsync($"{key}/versions/1");
        Assert.Equal(Kms.Contracts.V1.QuorumRequestState.Pending, request.State);
        Assert.StartsWith("tenants/dev/quorumRequests/", request.Name, StringComparison.Ordinal);

        var first = await ApproveAsync("alice", request.Name);
        Assert.False(first.Executed);
        Assert.Equal((1, 2), (first.ValidApprovals, first.Threshold));
        using (var stillDecrypts = await _keyManager.DecryptAsync(blob))
        {
            Assert.Equal($"{key}/versions/1", stillDecrypts.KeyVersion);
        }

        var second = await ApproveAsync("carol", request.Name);
        Assert.True(second.Executed);
        Assert.Equal(Kms.Contracts.V1.QuorumRequestState.Executed, second.Request.State);
        Assert.Equal(KeyState.Destroyed, (await _keyManager.Raw.GetKeyVersionAsync(new GetKeyVersionRequest { Name = $"{key}/versions/1" })).KeyVersion.State);
        var refused = await Assert.ThrowsAsync<RpcException>(() => _keyManager.DecryptAsync(blob));
        Assert.Equal(StatusCode.FailedPrecondition, refused.StatusCode);
        Assert.Contains("DESTROYED", refused.Status.Detail, StringComparison.Ordinal);

        // Audited: the request, each approval by officer fingerprint, and the execution under the request's id.
        using var auditor = _server.CreateClient(await _server.CreatePrincipalWithTokenAsync("quorum-auditor", null, "security-officer"));
        var events = await auditor.ListAuditEventsAsync(new ListAuditEventsRequest { Resource = request.Name }).ToListAsync();
        Assert.Contains(events, e => e.Operation == "/kms.v1.QuorumService/CreateQuorumRequest" && e.Outcome == "OK");
        foreach (var officer in new[] { "alice", "carol" })
        {
            Assert.Contains(events, e => e.Operation == "/kms.v1.QuorumService/ApproveQuorumRequest" && e.Resource == $"{request.Name}/approvals/{_officers[officer].Fingerprint}" && e.Outcome == "OK");
        }

        var execution = Assert.Single(await auditor.ListAuditEventsAsync(new ListAuditEventsRequest { Operation = "quorum/DESTROY_KEY_VERSION_NOW" }).ToListAsync());
        Assert.Equal((request.Id, "system:quorum", $"{key}/versions/1"), (execution.RequestId, execution.Principal, execution.Resource));
        Assert.All(events, e => Assert.DoesNotContain(Convert.ToBase64String(_officers.Sign("alice", [1])), e.Resource ?? "", StringComparison.Ordinal));
    }

    [Fact]
    public async Task OneApproval_NotExecuted_SameOfficerTwice_CountedOnce_ThenReusedAfterExecution_Refused()
    {
        var (key, _) = await RotatedKeyWithOldBlobAsync("once");
        var request = await _keyManager.RequestDestroyKeyVersionNowAsync($"{key}/versions/1");
        await ApproveAsync("bob", request.Name);

        // A second signature by the same key (ECDSA signatures differ each time) counts once.
        var again = await Assert.ThrowsAsync<RpcException>(() => _officer.ApproveQuorumRequestAsync(request.Name, _officers["bob"].Fingerprint, _officers.Sign("bob", Rendering(request))));
        Assert.Equal(StatusCode.AlreadyExists, again.StatusCode);
        var pending = await _officer.GetQuorumRequestAsync(request.Name);
        Assert.Equal(Kms.Contracts.V1.QuorumRequestState.Pending, pending.State);
        Assert.Single(pending.Approvals);
        Assert.Equal(KeyState.Enabled, (await _keyManager.Raw.GetKeyVersionAsync(new GetKeyVersionRequest { Name = $"{key}/versions/1" })).KeyVersion.State);

        Assert.True((await ApproveAsync("alice", request.Name)).Executed);
        var reused = await Assert.ThrowsAsync<RpcException>(() => _officer.ApproveQuorumRequestAsync(request.Name, _officers["carol"].Fingerprint, _officers.Sign("carol", Rendering(request))));
        Assert.Equal(StatusCode.FailedPrecondition, reused.StatusCode);
        Assert.Contains("executes once", reused.Status.Detail, StringComparison.Ordinal);
    }

    [Fact]
    public async Task ApprovalThatExecutes_AnswerLost_TheSdkSendsItAgain_AnsweredExecuted_ExecutedOnce()
    {
        // The approval reaches the server and executes the request; its answer is lost on the way
        // back. The SDK sends the same approval again, which must not turn "executed" into an error.
        var (key, _) = await RotatedKeyWithOldBlobAsync("lost-answer");
        var request = await _keyManager.RequestDestroyKeyVersionNowAsync($"{key}/versions/1");
        await ApproveAsync("alice", request.Name);
        var lost = new LostAnswers("ApproveQuorumRequest");
        using var officer = new Kms.Client.KmsClient(new Kms.Client.KmsClientOptions
        {
            Endpoint = _server.Address,
            CaCertificatePath = _server.CaCertificatePath,
            ApiToken = await _server.CreatePrincipalWithTokenAsync("officer-lost-answer", null, "security-officer"),
            Interceptors = { lost },
        });

        var answer = await officer.ApproveQuorumRequestAsync(request.Name, _officers["bob"].Fingerprint, _officers.Sign("bob", Rendering(request)));

        Assert.True(lost.Lost("ApproveQuorumRequest"));
        Assert.Equal((true, 2, 2, Kms.Contracts.V1.QuorumRequestState.Executed), (answer.Executed, answer.ValidApprovals, answer.Threshold, answer.Request.State));
        Assert.Equal(2, answer.Request.Approvals.Count);
        Assert.Equal(KeyState.Destroyed, (await _keyManager.Raw.GetKeyVersionAsync(new GetKeyVersionRequest { Name = $"{key}/versions/1" })).KeyVersion.State);
        using var auditor = _server.CreateClient(await _server.CreatePrincipalWithTokenAsync("lost-answer-auditor", null, "security-officer"));
        Assert.Single(await auditor.ListAuditEventsAsync(new ListAuditEventsRequest { Operation = "quorum/DESTROY_KEY_VERSION_NOW" }).ToListAsync());
    }

    [Fact]
    public async Task ForgedOrMismatchedSignatures_And_UnknownOfficers_PermissionDenied_NothingRecorded()
    {
        var (key, _) = await RotatedKeyWithOldBlobAsync("forged");
        var request = await _keyManager.RequestDestroyKeyVersionNowAsync($"{key}/versions/1");
        var core = QuorumApprover.ToQuorumRequest(request);

        var forged = await Assert.ThrowsAsync<RpcException>(() => _officer.ApproveQuorumRequestAsync(request.Name, _officers["alice"].Fingerprint, _officers.Sign("dave", Rendering(request))));
        Assert.Equal(StatusCode.PermissionDenied, forged.StatusCode);
        Assert.Contains("does not verify over the canonical rendering", forged.Status.Detail, StringComparison.Ordinal);

        // Signed over a rendering with one field changed: another version, a later expiry.
        foreach (var changed in new[]
        {
            core with { Parameters = [KeyValuePair.Create("name", $"{key}/versions/2")] },
            core with { ExpireTime = core.ExpireTime.AddDays(1) },
        })
        {
            var mismatch = await Assert.ThrowsAsync<RpcException>(() => _officer.ApproveQuorumRequestAsync(request.Name, _officers["alice"].Fingerprint, _officers.Sign("alice", changed)));
            Assert.Equal(StatusCode.PermissionDenied, mismatch.StatusCode);
        }

        var unknown = await Assert.ThrowsAsync<RpcException>(() => _officer.ApproveQuorumRequestAsync(request.Name, _officers["dave"].Fingerprint, _officers.Sign("dave", Rendering(request))));
        Assert.Equal(StatusCode.PermissionDenied, unknown.StatusCode);
        Assert.Contains("not in the current officer set", unknown.Status.Detail, StringComparison.Ordinal);

        var garbage = await Assert.ThrowsAsync<RpcException>(() => _officer.ApproveQuorumRequestAsync(request.Name, "not-a-fingerprint", [1, 2, 3]));
        Assert.Equal(StatusCode.InvalidArgument, garbage.StatusCode);
        Assert.Empty((await _officer.GetQuorumRequestAsync(request.Name)).Approvals);
    }

    [Fact]
    public async Task ExpiredRequest_FailedPreconditionNamingTheExpiry()
    {
        var (key, _) = await RotatedKeyWithOldBlobAsync("late");
        var request = await _keyManager.RequestDestroyKeyVersionNowAsync($"{key}/versions/1", TimeSpan.FromHours(1));
        await ApproveAsync("alice", request.Name);
        _time.Advance(TimeSpan.FromHours(1));

        var expired = await Assert.ThrowsAsync<RpcException>(() => _officer.ApproveQuorumRequestAsync(request.Name, _officers["bob"].Fingerprint, _officers.Sign("bob", Rendering(request))));
        Assert.Equal(StatusCode.FailedPrecondition, expired.StatusCode);
        Assert.Contains($"quorum request {request.Name} expired at 2026-11-29T13:00:00.000Z", expired.Status.Detail, StringComparison.Ordinal);
        Assert.Equal(Kms.Contracts.V1.QuorumRequestState.Expired, (await _officer.GetQuorumRequestAsync(request.Name)).State);
        Assert.Equal(KeyState.Enabled, (await _keyManager.Raw.GetKeyVersionAsync(new GetKeyVersionRequest { Name = $"{key}/versions/1" })).KeyVersion.State);
    }

    [Fact]
    public async Task ClockSetBack_TheLastApprovalAfterTheExpiryTheDeploymentRecorded_Refused_NothingDestroyed()
    {
        var (key, blob) = await RotatedKeyWithOldBlobAsync("set-back");
        var request = await _keyManager.RequestDestroyKeyVersionNowAsync($"{key}/versions/1", TimeSpan.FromHours(1));
        await ApproveAsync("alice", request.Name);

        // The lifecycle recorded two hours seen pass; this node's clock was set back (or its VM
        // restored) to where the request began. SQLite has no other clock to hold it to.
        var seen = _time.GetUtcNow().AddHours(2).ToUnixTimeMilliseconds().ToString(System.Globalization.CultureInfo.InvariantCulture);
        await _server.Services.GetRequiredService<Kms.Core.Ports.IKeyStore>().SetSettingAsync(Kms.Core.Services.LifecycleClock.Setting, seen, default);

        var expired = await Assert.ThrowsAsync<RpcException>(() => _officer.ApproveQuorumRequestAsync(request.Name, _officers["bob"].Fingerprint, _officers.Sign("bob", Rendering(request))));
        Assert.Equal(StatusCode.FailedPrecondition, expired.StatusCode);
        Assert.Contains($"quorum request {request.Name} expired at 2026-11-29T13:00:00.000Z", expired.Status.Detail, StringComparison.Ordinal);
        Assert.Equal(KeyState.Enabled, (await _keyManager.Raw.GetKeyVersionAsync(new GetKeyVersionRequest { Name = $"{key}/versions/1" })).KeyVersion.State);
        using var decrypted = await _keyManager.DecryptAsync(blob);
        Assert.Equal($"{key}/versions/1", decrypted.KeyVersion);

        // Shown EXPIRED too, by the node's floor of the recorded time (read at start and once a
        // lifecycle pass on every node), though by its clock the request has an hour left.
        await _server.Services.GetRequiredService<Hosting.LifecycleWorker>().RunOnceAsync(default);
        Assert.Equal(Kms.Contracts.V1.QuorumRequestState.Expired, (await _officer.GetQuorumRequestAsync(request.Name)).State);
    }

    [Fact]
    public async Task OfficerChange_ApprovedByTheOldQuorum_ThenOnlyTheNewOfficersCount_AndTheChainSurvivesARestart()
    {
        var (key, _) = await RotatedKeyWithOldBlobAsync("handover");
        var before = await _keyManager.RequestDestroyKeyVersionNowAsync($"{key}/versions/1");
        var change = await _officer.RequestOfficerChangeAsync(_officers.Select("carol", "dave", "erin").Select(o => (o.Name, o.PublicKey)), 2);
        Assert.Equal("", change.Tenant);
        Assert.Contains(change.Parameters, p => p.Key == "new-officer:" + _officers["dave"].Fingerprint && p.Value == "dave");

        // The new officers cannot approve their own installation.
        var selfApproval = await Assert.ThrowsAsync<RpcException>(() => ApproveAsync("dave", change.Name));
        Assert.Equal(StatusCode.PermissionDenied, selfApproval.StatusCode);
        await ApproveAsync("alice", change.Name);
        Assert.True((await ApproveAsync("bob", change.Name)).Executed);
        var set = await _officer.GetOfficerSetAsync();
        Assert.Equal((1L, 2, 3), (set.Sequence, set.ChainLength, set.Officers.Count));

        // A request made for the old set cannot be finished under the new one.
        var stale = await Assert.ThrowsAsync<RpcException>(() => ApproveAsync("carol", before.Name));
        Assert.Equal(StatusCode.FailedPrecondition, stale.StatusCode);

        var request = await _keyManager.RequestDestroyKeyVersionNowAsync($"{key}/versions/1");
        foreach (var old in new[] { "alice", "bob" })
        {
            Assert.Equal(StatusCode.PermissionDenied, (await Assert.ThrowsAsync<RpcException>(() => ApproveAsync(old, request.Name))).StatusCode);
        }

        await ApproveAsync("dave", request.Name);
        Assert.True((await ApproveAsync("erin", request.Name)).Executed);

        _server = await _server.RestartAsync();
        using var officer = _server.CreateClient(await _server.CreatePrincipalWithTokenAsync("officer-2", null, "security-officer"));
        Assert.Equal(1L, (await officer.GetOfficerSetAsync()).Sequence);
    }

    [Theory]
    [InlineData("DELETE FROM officer_sets WHERE sequence >= 1")]
    [InlineData("DELETE FROM officer_sets")]
    public async Task OfficerChangeRolledBackInTheDatabase_RefusesQuorumOperations(string rollback)
    {
        // carol, removed by a change the quorum approved, must not come back because someone who
        // can write the database deleted the newer set (or restored a backup from before it).
        var change = await _officer.RequestOfficerChangeAsync(_officers.Select("alice", "bob", "dave").Select(o => (o.Name, o.PublicKey)), 2);
        await ApproveAsync("alice", change.Name);
        Assert.True((await ApproveAsync("bob", change.Name)).Executed);

        var refused = await QuorumRefusedAfterWritingTheStoppedDatabaseAsync(rollback);
        Assert.Contains("this node has verified officer set 1", refused, StringComparison.Ordinal);
        Assert.Contains("it was rolled back", refused, StringComparison.Ordinal);
    }

    [Fact]
    public async Task OfficerChange_ToMoreThan32Officers_RefusedNamingTheRequestsField()
    {
        // Counted before any officer's key is imported, and named as the request names it.
        var many = Enumerable.Range(0, OfficerSet.MaxOfficers + 1).Select(i =>
        {
            using var key = System.Security.Cryptography.ECDsa.Create(System.Security.Cryptography.ECCurve.NamedCurves.nistP256);
            return ($"officer-{i}", key.ExportSubjectPublicKeyInfo());
        }).ToList();
        var e = await Assert.ThrowsAsync<RpcException>(() => _officer.RequestOfficerChangeAsync(many, 2));
        Assert.Equal(StatusCode.InvalidArgument, e.StatusCode);
        Assert.StartsWith("change_officers.officers:", e.Status.Detail, StringComparison.Ordinal);
    }

    [Fact]
    public async Task OfficerChange_HeadRecordCannotBeWritten_StillAnsweredExecuted_QuorumRefusedUntilItCan()
    {
        // The change commits before the node records the new head: a record that cannot be
        // written must not turn "executed" into an error (the officers would approve it again).
        var blocker = Path.Combine(_server.DataDir, "quorum", "officer-head.new");
        Directory.CreateDirectory(Path.Combine(blocker, "in-the-way"));
        var change = await _officer.RequestOfficerChangeAsync(_officers.Select("alice", "bob", "dave").Select(o => (o.Name, o.PublicKey)), 2);
        await ApproveAsync("alice", change.Name);
        Assert.True((await ApproveAsync("bob", change.Name)).Executed);

        var refused = await Assert.ThrowsAsync<RpcException>(() => _officer.GetOfficerSetAsync());
        Assert.Equal(StatusCode.FailedPrecondition, refused.StatusCode);
        Assert.Contains("officer head record cannot be written", refused.Status.Detail, StringComparison.Ordinal);
        // Where and why are the operator's, in the server log; the caller learns no path.
        Assert.DoesNotContain(_server.DataDir, refused.Status.Detail, StringComparison.Ordinal);
        Assert.DoesNotContain("quorum", refused.Status.Detail.Replace("quorum operations are refused", "", StringComparison.Ordinal), StringComparison.Ordinal);
        Assert.Contains(_server.Logs.Events, e => e.StartsWith("Error", StringComparison.Ordinal)
            && e.Contains(Path.Combine(_server.DataDir, "quorum", "officer-head"), StringComparison.Ordinal) && e.Contains("cannot be written", StringComparison.Ordinal));
        Directory.Delete(blocker, recursive: true);
        Assert.Equal(1L, (await _officer.GetOfficerSetAsync()).Sequence);
    }

    [Fact]
    public async Task OfficerSetWrittenIntoTheDatabase_RefusesQuorumOperations()
    {
        var intruder = OfficerSet.CreateGenesis(_officers.Select("erin"), 1);
        var refused = await QuorumRefusedAfterWritingTheStoppedDatabaseAsync(
            "INSERT INTO officer_sets (sequence, previous_hash, threshold, officers, hash, change_request) VALUES (1, $previous, 1, $officers, 'x', NULL)",
            ("$previous", OfficerSet.CreateGenesis(_officers.Select("alice", "bob", "carol"), 2).Hash),
            ("$officers", $"[{{\"Name\":\"erin\",\"PublicKey\":\"{Convert.ToBase64String(intruder.Officers[0].PublicKey)}\"}}]"));
        Assert.Contains("does not verify back to the configured genesis", refused, StringComparison.Ordinal);
    }

    // Stops the server, runs one statement on its database (as whoever can write it would),
    // restarts it, and checks that quorum operations are refused while keys still serve:
    // returns the refusal's message.
    private async Task<string> QuorumRefusedAfterWritingTheStoppedDatabaseAsync(string sql, params (string Name, object Value)[] parameters)
    {
        await _server.DisposeAsync();
        RawSqlite.Execute(_server.DatabasePath, sql, parameters);

        _server = await _server.RestartAsync();
        using var officer = _server.CreateClient(await _server.CreatePrincipalWithTokenAsync("officer-after-write", null, "security-officer"));
        var refused = await Assert.ThrowsAsync<RpcException>(() => officer.GetOfficerSetAsync());
        Assert.Equal(StatusCode.FailedPrecondition, refused.StatusCode);
        using var keyManager = _server.CreateClient();
        var key = await keyManager.CreateKeyAsync("tenants/dev", "after-database-write");
        Assert.Equal(StatusCode.FailedPrecondition, (await Assert.ThrowsAsync<RpcException>(() => keyManager.RequestDestroyKeyVersionNowAsync($"{key.Name}/versions/1"))).StatusCode);
        return refused.Status.Detail;
    }

    [Fact]
    public async Task RotateDomainKey_TwoOfThreeApprove_EndsApprovedWithoutExecuting_ThenRefusesApprovals_AndExportsAVerifiableBundle()
    {
        var request = await _officer.RequestDomainKeyRotationAsync(5, 3);
        Assert.Equal(("", Kms.Contracts.V1.QuorumRequestState.Pending), (request.Tenant, request.State));
        Assert.StartsWith("quorumRequests/", request.Name, StringComparison.Ordinal);
        var rendering = QuorumApprover.Render(request);
        Assert.Contains("operation: ROTATE_DOMAIN_KEY\n", rendering, StringComparison.Ordinal);
        Assert.EndsWith("param new-custodians: 5\nparam new-threshold: 3\n", rendering, StringComparison.Ordinal);

        var early = await Assert.ThrowsAsync<RpcException>(() => _officer.ExportQuorumApprovalAsync(request.Name));
        Assert.Equal(StatusCode.FailedPrecondition, early.StatusCode);
        Assert.False((await ApproveAsync("alice", request.Name)).Executed);
        var last = await ApproveAsync("carol", request.Name);
        Assert.False(last.Executed);
        Assert.Equal((2, 2, Kms.Contracts.V1.QuorumRequestState.Approved), (last.ValidApprovals, last.Threshold, last.Request.State));
        Assert.Equal(Kms.Contracts.V1.QuorumRequestState.Approved, (await _officer.GetQuorumRequestAsync(request.Name)).State);

        // Terminal: a third approval is refused, also after the expiry (it stays APPROVED, never EXPIRED).
        var again = await Assert.ThrowsAsync<RpcException>(() => _officer.ApproveQuorumRequestAsync(request.Name, _officers["bob"].Fingerprint, _officers.Sign("bob", Rendering(request))));
        Assert.Equal(StatusCode.FailedPrecondition, again.StatusCode);
        Assert.Contains("was approved at 2026-11-29T12:00:00.000Z; a request is approved once", again.Status.Detail, StringComparison.Ordinal);

        var export = await _officer.ExportQuorumApprovalAsync(request.Name);
        Assert.Equal(Kms.Contracts.V1.QuorumRequestState.Approved, export.Request.State);
        var bundle = ApprovalBundle.Parse(export.Bundle);
        var genesis = GenesisFile.Read(_genesisPath);
        var verified = bundle.Verify(genesis, Kms.Core.Quorum.QuorumOperation.RotateDomainKey, request.DomainKcv, _time.GetUtcNow());
        Assert.Equal(["alice", "carol"], verified.Approvers.Select(o => o.Name).Order());
        Assert.Equal(rendering, QuorumRendering.Render(bundle.Request));
        Assert.Single(bundle.Chain);
        foreach (var officer in new[] { "alice", "carol" })
        {
            Assert.Contains(Convert.ToBase64String(_officers[officer].PublicKey), export.Bundle, StringComparison.Ordinal);
        }

        using var auditor = _server.CreateClient(await _server.CreatePrincipalWithTokenAsync("rotation-auditor", null, "security-officer"));
        var approval = Assert.Single(await auditor.ListAuditEventsAsync(new ListAuditEventsRequest { Operation = "quorum/ROTATE_DOMAIN_KEY" }).ToListAsync());
        Assert.Equal((request.Id, "system:quorum", request.Name, "OK"), (approval.RequestId, approval.Principal, approval.Resource, approval.Outcome));
        var events = await auditor.ListAuditEventsAsync(new ListAuditEventsRequest { Resource = request.Name }).ToListAsync();
        Assert.Contains(events, e => e.Operation == "/kms.v1.QuorumService/ExportQuorumApproval" && e.Resource == request.Name && e.Outcome == "OK");
    }

    [Fact]
    public async Task RestoreDomain_DuplicateOfficer_ForgedSignature_Expiry_Refused_AndOnlyApprovalOnlyRequestsExport()
    {
        var request = await _officer.RequestDomainRestoreAsync("kms-prod-b", TimeSpan.FromHours(1));
        Assert.EndsWith("param token-label: kms-prod-b\n", QuorumApprover.Render(request), StringComparison.Ordinal);
        await ApproveAsync("alice", request.Name);

        var duplicate = await Assert.ThrowsAsync<RpcException>(() => _officers.ApproveAsync(_officer, "alice", request, _time.GetUtcNow()));
        Assert.Equal(StatusCode.AlreadyExists, duplicate.StatusCode);
        var forged = await Assert.ThrowsAsync<RpcException>(() => _officers.ApproveAsync(_officer, "bob", request, _time.GetUtcNow(), signedBy: "dave"));
        Assert.Equal(StatusCode.PermissionDenied, forged.StatusCode);
        var signed = _time.GetUtcNow();
        var evil = QuorumApprover.ToQuorumRequest(request) with { Parameters = [KeyValuePair.Create("token-label", "kms-evil")] };
        var otherText = await Assert.ThrowsAsync<RpcException>(() => _officer.ApproveQuorumRequestAsync(request.Name, _officers["bob"].Fingerprint, _officers.Sign("bob", evil, signed), signed));
        Assert.Equal(StatusCode.PermissionDenied, otherText.StatusCode);

        // Without a signed time (an older CLI's approval, over the plain rendering): refused, as for
        // every operation but DESTROY_KEY_VERSION_NOW, however valid its signature.
        var untimed = await Assert.ThrowsAsync<RpcException>(() => _officer.ApproveQuorumRequestAsync(request.Name, _officers["bob"].Fingerprint, _officers.Sign("bob", Rendering(request))));
        Assert.Equal(StatusCode.FailedPrecondition, untimed.StatusCode);
        Assert.Contains("(RESTORE_DOMAIN) must carry the time it was signed", untimed.Status.Detail, StringComparison.Ordinal);
        Assert.Single((await _officer.GetQuorumRequestAsync(request.Name)).Approvals);

        _time.Advance(TimeSpan.FromHours(1));
        var expired = await Assert.ThrowsAsync<RpcException>(() => _officers.ApproveAsync(_officer, "bob", request, _time.GetUtcNow()));
        Assert.Equal(StatusCode.FailedPrecondition, expired.StatusCode);
        var info = await _officer.GetQuorumRequestAsync(request.Name);
        Assert.Equal(Kms.Contracts.V1.QuorumRequestState.Expired, info.State);
        Assert.Equal(StatusCode.FailedPrecondition, (await Assert.ThrowsAsync<RpcException>(() => _officer.ExportQuorumApprovalAsync(request.Name))).StatusCode);

        var (key, _) = await RotatedKeyWithOldBlobAsync("not-exported");
        var destroy = await _keyManager.RequestDestroyKeyVersionNowAsync($"{key}/versions/1");
        await ApproveAsync("alice", destroy.Name);
        Assert.True((await ApproveAsync("bob", destroy.Name)).Executed);
        var executed = await Assert.ThrowsAsync<RpcException>(() => _officer.ExportQuorumApprovalAsync(destroy.Name));
        Assert.Equal(StatusCode.FailedPrecondition, executed.StatusCode);
        Assert.Contains("only approvals of ROTATE_DOMAIN_KEY and RESTORE_DOMAIN are exported", executed.Status.Detail, StringComparison.Ordinal);
    }

    [Fact]
    public async Task DomainOperations_BadParameters_PrimaryVersion_BadInput_RefusedAtCreation()
    {
        var noLabel = await Assert.ThrowsAsync<RpcException>(() => _officer.CreateQuorumRequestAsync(new CreateQuorumRequestRequest { Operation = Kms.Contracts.V1.QuorumOperation.RestoreDomain }));
        Assert.Equal(StatusCode.InvalidArgument, noLabel.StatusCode);
        Assert.Contains("restore_domain.token_label", noLabel.Status.Detail, StringComparison.Ordinal);
        var badShape = await Assert.ThrowsAsync<RpcException>(() => _officer.RequestDomainKeyRotationAsync(3, 4));
        Assert.Equal(StatusCode.InvalidArgument, badShape.StatusCode);
        Assert.Contains("rotate_domain_key.new_threshold", badShape.Status.Detail, StringComparison.Ordinal);
        var inTenant = await Assert.ThrowsAsync<RpcException>(() => _keyManager.CreateQuorumRequestAsync(new CreateQuorumRequestRequest
        {
            Parent = "tenants/dev",
            Operation = Kms.Contracts.V1.QuorumOperation.RotateDomainKey,
            RotateDomainKey = new RotateDomainKeyParameters { NewCustodians = 3, NewThreshold = 2 },
        }));
        Assert.Equal(StatusCode.InvalidArgument, inTenant.StatusCode);

        var key = await _keyManager.CreateKeyAsync("tenants/dev", "primary-only");
        var primary = await Assert.ThrowsAsync<RpcException>(() => _keyManager.RequestDestroyKeyVersionNowAsync($"{key.Name}/versions/1"));
        Assert.Equal(StatusCode.FailedPrecondition, primary.StatusCode);

        var unspecified = await Assert.ThrowsAsync<RpcException>(() => _keyManager.CreateQuorumRequestAsync(new CreateQuorumRequestRequest { Parent = "tenants/dev" }));
        Assert.Equal(StatusCode.InvalidArgument, unspecified.StatusCode);
        var badKey = await Assert.ThrowsAsync<RpcException>(() => _officer.RequestOfficerChangeAsync([("mallory", new byte[] { 1, 2, 3 })], 1));
        Assert.Equal(StatusCode.InvalidArgument, badKey.StatusCode);
        Assert.Contains("change_officers.officers[0].public_key", badKey.Status.Detail, StringComparison.Ordinal);
        var tooMany = await Assert.ThrowsAsync<RpcException>(() => _officer.RequestOfficerChangeAsync(_officers.Select("dave").Select(o => (o.Name, o.PublicKey)), 2));
        Assert.Equal(StatusCode.InvalidArgument, tooMany.StatusCode);
    }

    [Fact]
    public async Task CreateQuorumRequest_AnotherOperationsParametersOrABadOfficerSet_InvalidArgumentNamingTheRequestField_NothingCreated()
    {
        // Another operation's parameters were dropped without a word (a DESTROY_KEY_VERSION_NOW
        // carrying a restore_domain was created); an officer set's faults named "officers" and
        // "threshold", which are not fields of the request.
        var (key, _) = await RotatedKeyWithOldBlobAsync("other-parameters");
        OfficerInfo Officer(string name) => new() { Name = name, PublicKey = ByteString.CopyFrom(_officers[name].PublicKey) };
        var destroy = new DestroyKeyVersionNowParameters { Name = $"{key}/versions/1" };
        var cases = new (string Field, Kms.Client.KmsClient Caller, CreateQuorumRequestRequest Request)[]
        {
            ("restore_domain", _keyManager, new() { Parent = "tenants/dev", Operation = Kms.Contracts.V1.QuorumOperation.DestroyKeyVersionNow, DestroyKeyVersionNow = destroy, RestoreDomain = new() { TokenLabel = "elsewhere" } }),
            ("change_officers", _officer, new() { Operation = Kms.Contracts.V1.QuorumOperation.ExportBackup, ChangeOfficers = new() { Officers = { Officer("dave") }, Threshold = 1 } }),
            ("rotate_domain_key", _officer, new() { Operation = Kms.Contracts.V1.QuorumOperation.RecoverDeploymentAdmin, RotateDomainKey = new() { NewCustodians = 3, NewThreshold = 2 } }),
            ("destroy_key_version_now", _officer, new() { Operation = Kms.Contracts.V1.QuorumOperation.ChangeOfficers, ChangeOfficers = new() { Officers = { Officer("dave") }, Threshold = 1 }, DestroyKeyVersionNow = destroy }),
            ("change_officers.officers", _officer, new() { Operation = Kms.Contracts.V1.QuorumOperation.ChangeOfficers, ChangeOfficers = new() { Officers = { Officer("dave"), new OfficerInfo(Officer("dave")) { Name = "dave2" } }, Threshold = 1 } }),
            ("change_officers.threshold", _officer, new() { Operation = Kms.Contracts.V1.QuorumOperation.ChangeOfficers, ChangeOfficers = new() { Officers = { Officer("dave") }, Threshold = 2 } }),
            ("change_officers.officers[1].name", _officer, new() { Operation = Kms.Contracts.V1.QuorumOperation.ChangeOfficers, ChangeOfficers = new() { Officers = { Officer("dave"), new OfficerInfo(Officer("erin")) { Name = "erin " } }, Threshold = 1 } }),
        };

        foreach (var (field, caller, request) in cases)
        {
            var e = await Assert.ThrowsAsync<RpcException>(() => caller.CreateQuorumRequestAsync(request));
            Assert.True(e.StatusCode == StatusCode.InvalidArgument && e.Status.Detail.StartsWith(field + ":", StringComparison.Ordinal), $"{field}: {e.Status}");
            Assert.Equal(field, Assert.Single(e.GetRpcStatus()!.GetDetail<Google.Rpc.BadRequest>().FieldViolations).Field);
        }

        Assert.Empty((await _keyManager.Quorum.ListQuorumRequestsAsync(new ListQuorumRequestsRequest { Parent = "tenants/dev" })).Requests);
        Assert.Empty((await _officer.Quorum.ListQuorumRequestsAsync(new ListQuorumRequestsRequest())).Requests);
    }

    [Fact]
    public async Task GetQuorumRequest_EmptyOrMalformedNameFromATenantCaller_InvalidArgumentNamingTheField_DecidedAfterItsOwnTenantsPermission()
    {
        // An empty or malformed name was checked against the deployment: a tenant's key manager
        // (kms.quorum.read on its tenant) got PERMISSION_DENIED "… required on the deployment" for
        // a request it had simply left empty. As for every other named resource, such a name is now
        // checked against the caller's own tenant: INVALID_ARGUMENT naming `name` to a caller that
        // may read its tenant's quorum requests, PERMISSION_DENIED (naming its tenant, not the name)
        // to one that may not; a deployment-wide name stays the deployment's, another tenant's NOT_FOUND.
        using var keyUser = _server.CreateClient(await _server.CreatePrincipalWithTokenAsync("quorum-key-user", "dev", "key-user"));
        async Task<(StatusCode Code, string Detail, string? Field)> AnswerAsync(Kms.Client.KmsClient caller, string name)
        {
            var e = await Assert.ThrowsAsync<RpcException>(async () => await caller.Quorum.GetQuorumRequestAsync(new GetQuorumRequestRequest { Name = name }));
            return (e.StatusCode, e.Status.Detail, e.GetRpcStatus()?.GetDetail<Google.Rpc.BadRequest>()?.FieldViolations.Single().Field);
        }

        foreach (var caller in new[] { _keyManager, _officer })
        {
            foreach (var name in new[] { "", "not-a-quorum-request", "tenants/dev" })
            {
                var (code, detail, field) = await AnswerAsync(caller, name);
                Assert.True((code, field) == (StatusCode.InvalidArgument, "name") && detail.StartsWith("name: ", StringComparison.Ordinal), $"'{name}': {code} {detail}");
            }
        }

        var refused = await AnswerAsync(keyUser, "");
        Assert.Equal((StatusCode.PermissionDenied, "permission kms.quorum.read is required on tenants/dev; principal token:quorum-key-user does not have it", null), refused);
        Assert.Equal(StatusCode.PermissionDenied, (await AnswerAsync(_keyManager, "quorumRequests/0123")).Code);
        Assert.Equal((StatusCode.NotFound, "tenants/other/quorumRequests/0123 not found", null), await AnswerAsync(_keyManager, "tenants/other/quorumRequests/0123"));
    }

    // Kms:Quorum:MaxSignTimeSkew reaches the quorum service (QuorumChainTimeTests: what it does);
    // a margin that says little about when an approval was made, or none, refuses to start.
    [Theory]
    [InlineData("00:00:59")]
    [InlineData("01:00:01")]
    [InlineData("-00:05:00")]
    public async Task MaxSignTimeSkew_OutsideOneMinuteToOneHour_RefusedAtStart(string value)
    {
        var e = await Assert.ThrowsAsync<InvalidOperationException>(() => Kms.Server.Hosting.KmsServerApp.BuildAsync(
            ["--dev", "--urls=https://127.0.0.1:0", $"--Kms:Quorum:MaxSignTimeSkew={value}", $"--Kms:DataDir={Scratch.NewPath("kms-never-")}"]));
        Assert.Contains("Kms:Quorum:MaxSignTimeSkew", e.Message, StringComparison.Ordinal);
        Assert.Contains("must be at least 00:01:00 and at most 01:00:00", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task MaxSignTimeSkew_Configured_ReachesTheQuorumService_DefaultFiveMinutes()
    {
        Assert.Equal(TimeSpan.FromMinutes(5), _server.Services.GetRequiredService<Kms.Core.Services.QuorumOptions>().MaxSignTimeSkew);
        await using var wider = await KmsTestServer.StartAsync(null, null, "dev", $"--Kms:Quorum:GenesisFile={_genesisPath}", "--Kms:Quorum:MaxSignTimeSkew=00:10:00");
        Assert.Equal(TimeSpan.FromMinutes(10), wider.Services.GetRequiredService<Kms.Core.Services.QuorumOptions>().MaxSignTimeSkew);
    }

    [Fact]
    public async Task NoGenesisConfigured_QuorumOperationsRefused_WithAClearMessage()
    {
        await using var plain = await KmsTestServer.StartAsync();
        using var officer = plain.CreateClient(await plain.CreatePrincipalWithTokenAsync("officer", null, "security-officer"));
        var refused = await Assert.ThrowsAsync<RpcException>(() => officer.GetOfficerSetAsync());
        Assert.Equal(StatusCode.FailedPrecondition, refused.StatusCode);
        Assert.Contains("Kms:Quorum:GenesisFile", refused.Status.Detail, StringComparison.Ordinal);
    }

    [Fact]
    public async Task AGenesisWithoutADeploymentValue_TheServerWarnsAtStart_AGenesisOfItsOwnDoesNot()
    {
        // The class's server runs on a genesis with zeros in its "previous" line, as ceremonies
        // wrote them before each deployment's genesis got a random value of its own.
        const string Shared = "has no value of this deployment's own";
        var zeros = GenesisFile.Read(_genesisPath);
        Assert.Equal(OfficerSet.NoPrevious, zeros.PreviousHash);
        Assert.Contains(_server.Logs.Events, e => e.StartsWith("Warning ", StringComparison.Ordinal) && e.Contains(zeros.Hash, StringComparison.Ordinal) && e.Contains(Shared, StringComparison.Ordinal));

        var own = Path.Combine(Path.GetTempPath(), "kms-genesis-" + Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(6)) + ".json");
        GenesisFile.Write(own, OfficerSet.CreateDeploymentGenesis(_officers.Select("alice", "bob", "carol"), 2));
        try
        {
            await using var server = await KmsTestServer.StartAsync(null, null, "dev", $"--Kms:Quorum:GenesisFile={own}");
            Assert.Contains(server.Logs.Events, e => e.Contains("verified back to the genesis", StringComparison.Ordinal));
            Assert.DoesNotContain(server.Logs.Events, e => e.Contains(Shared, StringComparison.Ordinal));
        }
        finally
        {
            File.Delete(own);
        }
    }

    private void UseFakeClock(IServiceCollection services) => services.Replace(ServiceDescriptor.Singleton<TimeProvider>(_time));

    private async Task<(string Key, byte[] Blob)> RotatedKeyWithOldBlobAsync(string id)
    {
        var key = await _keyManager.CreateKeyAsync("tenants/dev", id);
        var blob = (await _keyManager.EncryptAsync(key.Name, "before"u8.ToArray())).Ciphertext;
        await _keyManager.RotateKeyAsync(key.Name);
        return (key.Name, blob);
    }

    // The officer's side as the CLI runs it: fetch, render here, sign that text, submit.
    private async Task<ApproveQuorumRequestResponse> ApproveAsync(string officer, string name)
    {
        using var approver = QuorumApprover.FromKey(ECDsa.Create(_officers.KeyOf(officer).ExportParameters(true)), _time);
        var pending = await approver.PrepareAsync(_officer, name);
        return await approver.ApproveAsync(_officer, pending);
    }

    private static byte[] Rendering(QuorumRequestInfo request) => System.Text.Encoding.UTF8.GetBytes(QuorumApprover.Render(request));
}
