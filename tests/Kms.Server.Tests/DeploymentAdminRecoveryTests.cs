using System.Security.Cryptography;
using global::Grpc.Core;
using Kms.Client.Audit;
using Kms.Client.Quorum;
using Kms.Contracts.V1;
using Kms.Core.Access;
using Kms.Core.Quorum;
using Kms.Core.Services;
using Kms.Testing;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Time.Testing;

namespace Kms.Server.Tests;

/// <summary>
/// RECOVER_DEPLOYMENT_ADMIN through real gRPC against SoftHSM (docs/access-control.md, "The last
/// deployment admin stays" → Recovery): when 2 of 3 officers approve, the executing node writes a
/// one-time credential (15 minutes) to its bootstrap-credential file, and Bootstrap with it
/// registers one more deployment admin although deployment admins exist — once.
/// </summary>
public sealed class DeploymentAdminRecoveryTests : IAsyncLifetime, IDisposable
{
    private readonly TestOfficers _officers = new("alice", "bob", "carol");
    private readonly FakeTimeProvider _time = new(new DateTimeOffset(2026, 11, 29, 12, 0, 0, TimeSpan.Zero));
    private readonly string _genesisPath = Path.Combine(Path.GetTempPath(), "kms-genesis-" + Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(6)) + ".json");
    private KmsTestServer _server = null!;
    private Kms.Client.KmsClient _officer = null!;

    private const string NodeName = "kms-node-7";

    private string CredentialPath => Path.Combine(_server.DataDir, "bootstrap.token");

    public async Task InitializeAsync()
    {
        GenesisFile.Write(_genesisPath, OfficerSet.CreateGenesis(_officers.Select("alice", "bob", "carol"), 2));
        _server = await KmsTestServer.StartAsync(null, null, "dev", services => services.AddSingleton<TimeProvider>(_time),
            $"--Kms:Quorum:GenesisFile={_genesisPath}", $"--Kms:NodeName={NodeName}");
        _officer = _server.CreateClient(await _server.CreatePrincipalWithTokenAsync("officer", null, "security-officer"));
    }

    public async Task DisposeAsync()
    {
        _officer.Dispose();
        await _server.DisposeAsync();
        File.Delete(_genesisPath);
    }

    public void Dispose() => _officers.Dispose();

    [Fact]
    public async Task Recover_TwoOfThreeApprove_CredentialWritten_BootstrapRegistersANewAdmin_Once_OldAdminStays_AllAudited()
    {
        var request = await _officer.RequestDeploymentAdminRecoveryAsync();
        Assert.Equal($"quorumRequests/{request.Id}", request.Name);
        var rendering = QuorumApprover.Render(request);
        Assert.Contains("\noperation: RECOVER_DEPLOYMENT_ADMIN\ntenant: (deployment)\n", rendering, StringComparison.Ordinal);
        Assert.EndsWith(
            "param credential: one-time, valid 15 minutes, written to the executing node's bootstrap-credential file (Kms:BootstrapTokenPath)\n" +
            "param grants: one Bootstrap call, registering one new deployment-admin; the existing deployment admins stay\n", rendering, StringComparison.Ordinal);

        // Fewer than M: nothing is issued, and no node is named.
        var first = await ApproveAsync("alice", request.Name);
        Assert.False(first.Executed);
        Assert.Equal(("", ""), (first.Request.ExecutingNode, first.Request.CredentialPath));
        Assert.False(File.Exists(CredentialPath));
        Assert.Empty(await RecoveryTokensAsync());

        // The executing approval's answer, and the request from then on, say which node holds the
        // credential and in which file; the credential itself is in none of them.
        var executing = await ApproveAsync("bob", request.Name);
        Assert.True(executing.Executed);
        Assert.Equal((NodeName, CredentialPath, (Google.Protobuf.WellKnownTypes.Timestamp?)null),
            (executing.Request.ExecutingNode, executing.Request.CredentialPath, executing.Request.CredentialRevokeTime));
        var later = await _officer.GetQuorumRequestAsync(request.Name);
        Assert.Equal((NodeName, CredentialPath), (later.ExecutingNode, later.CredentialPath));
        var listed = Assert.Single((await _officer.Quorum.ListQuorumRequestsAsync(new ListQuorumRequestsRequest())).Requests, r => r.Name == request.Name);
        Assert.Equal((NodeName, CredentialPath), (listed.ExecutingNode, listed.CredentialPath));
        Assert.True(File.Exists(CredentialPath));
        Assert.Equal(UnixFileMode.UserRead | UnixFileMode.UserWrite, File.GetUnixFileMode(CredentialPath));
        var credential = (await File.ReadAllTextAsync(CredentialPath)).Trim();
        var token = Assert.Single(await RecoveryTokensAsync());
        Assert.Equal(_time.GetUtcNow() + TimeSpan.FromMinutes(15), token.ExpireTime);

        // Another node (re)starting meanwhile does not take it away, nor issue a bootstrap credential.
        Assert.Null(await _server.Services.GetRequiredService<AccessService>().RenewBootstrapTokenAsync(default));

        using var recovery = _server.CreateClient(credential);
        var other = await Assert.ThrowsAsync<RpcException>(async () => await recovery.Access.ListTenantsAsync(new ListTenantsRequest()));
        Assert.Equal(StatusCode.PermissionDenied, other.StatusCode);

        var bootstrap = await recovery.BootstrapAsync("token:recovered-admin", "recovered admin");
        Assert.Equal("token:recovered-admin", bootstrap.Admin.Name);
        using var admin = _server.CreateClient(bootstrap.SessionToken);
        Assert.Contains((await admin.Access.ListTenantsAsync(new ListTenantsRequest())).Tenants, t => t.Name == "tenants/dev");
        var admins = (await admin.Access.ListRoleBindingsAsync(new ListRoleBindingsRequest())).Bindings.Where(b => b.Role == "deployment-admin").Select(b => b.Principal);
        Assert.Equal(["token:dev-admin", "token:recovered-admin"], admins.Order(StringComparer.Ordinal));

        // The old admin stays until the new one removes it.
        await admin.Access.DeleteRoleBindingAsync(new DeleteRoleBindingRequest { Principal = "token:dev-admin", Role = "deployment-admin" });
        Assert.Equal(["token:recovered-admin"], (await admin.Access.ListRoleBindingsAsync(new ListRoleBindingsRequest())).Bindings
            .Where(b => b.Role == "deployment-admin").Select(b => b.Principal));

        var replay = await Assert.ThrowsAsync<RpcException>(async () => await recovery.BootstrapAsync("token:second-admin"));
        Assert.Equal(StatusCode.Unauthenticated, replay.StatusCode);
        Assert.DoesNotContain((await admin.Access.ListRoleBindingsAsync(new ListRoleBindingsRequest())).Bindings, b => b.Principal == "token:second-admin");

        // The audit chain: the request, both approvals, the execution (naming the credential's
        // token, never its secret) and the bootstrap, in that order; and the chain verifies.
        var events = await _officer.ListAuditEventsAsync(new ListAuditEventsRequest()).ToListAsync();
        var created = Assert.Single(events, e => e.Operation.EndsWith("/CreateQuorumRequest", StringComparison.Ordinal) && e.Resource == request.Name);
        var approvals = events.Where(e => e.Operation.EndsWith("/ApproveQuorumRequest", StringComparison.Ordinal) && e.Resource.StartsWith(request.Name + "/approvals/", StringComparison.Ordinal)).ToList();
        var executed = Assert.Single(events, e => e.Operation == "quorum/RECOVER_DEPLOYMENT_ADMIN");
        var registered = Assert.Single(events, e => e.Operation.EndsWith("/Bootstrap", StringComparison.Ordinal) && e.Outcome == "OK");
        Assert.Equal(2, approvals.Count);
        Assert.All(approvals, a => Assert.Equal("OK", a.Outcome));
        Assert.Equal(("system:quorum", request.Id, $"token:bootstrap/apiTokens/{token.Id}", "OK"), (executed.Principal, executed.RequestId, executed.Resource, executed.Outcome));
        Assert.Equal(("token:bootstrap", "token:recovered-admin"), (registered.Principal, registered.Resource));
        Assert.True(created.Sequence < approvals[0].Sequence && approvals[0].Sequence < approvals[1].Sequence
            && approvals[1].Sequence < executed.Sequence && executed.Sequence < registered.Sequence);

        Assert.DoesNotContain(credential, executing.ToString(), StringComparison.Ordinal);
        var export = new StringWriter();
        await _officer.ExportAuditAsync(export);
        Assert.DoesNotContain(credential, export.ToString(), StringComparison.Ordinal);
        var verification = AuditVerifier.Verify(new StringReader(export.ToString()), (await _officer.GetAuditSigningKeyAsync()).PublicKeyDer.ToByteArray());
        Assert.True(verification.Valid, verification.Problem);
        Assert.DoesNotContain(_server.Logs.Events, l => l.Contains(credential, StringComparison.Ordinal));
        Assert.Contains(_server.Logs.Events, l => l.Contains(request.Name, StringComparison.Ordinal) && l.Contains(CredentialPath, StringComparison.Ordinal));
    }

    [Fact]
    public async Task Recover_CredentialOlderThan15Minutes_Unauthenticated_NoAdminRegistered()
    {
        var request = await _officer.RequestDeploymentAdminRecoveryAsync();
        await ApproveAsync("alice", request.Name);
        await ApproveAsync("carol", request.Name);
        using var recovery = _server.CreateClient((await File.ReadAllTextAsync(CredentialPath)).Trim());

        _time.Advance(TimeSpan.FromMinutes(15));
        var refused = await Assert.ThrowsAsync<RpcException>(async () => await recovery.BootstrapAsync("token:late-admin"));
        Assert.Equal(StatusCode.Unauthenticated, refused.StatusCode);
        using var admin = _server.DeploymentAdmin();
        Assert.Equal(["token:dev-admin"], (await admin.Access.ListRoleBindingsAsync(new ListRoleBindingsRequest())).Bindings
            .Where(b => b.Role == "deployment-admin").Select(b => b.Principal));
    }

    [Fact]
    public async Task Recover_LastApprovalSentAgain_IssuesNoSecondCredential()
    {
        // The executing approval's answer was lost and the SDK sends it again, byte for byte: the
        // request executed once, and its one credential (the file) is still the one that works.
        var request = await _officer.RequestDeploymentAdminRecoveryAsync();
        await ApproveAsync("alice", request.Name);
        var bob = _officers["bob"];
        var signed = _time.GetUtcNow();
        var signature = _officers.Sign("bob", QuorumApprover.ToQuorumRequest(request), signed);
        var approval = new ApproveQuorumRequestRequest
        {
            Name = request.Name,
            OfficerFingerprint = bob.Fingerprint,
            Signature = Google.Protobuf.ByteString.CopyFrom(signature),
            SignTime = Google.Protobuf.WellKnownTypes.Timestamp.FromDateTimeOffset(signed),
        };
        Assert.True((await _officer.Quorum.ApproveQuorumRequestAsync(approval)).Executed);
        var credential = await File.ReadAllTextAsync(CredentialPath);

        Assert.True((await _officer.Quorum.ApproveQuorumRequestAsync(approval)).Executed);
        Assert.Equal(credential, await File.ReadAllTextAsync(CredentialPath));
        Assert.Single(await RecoveryTokensAsync());
        using var recovery = _server.CreateClient(credential.Trim());
        Assert.Equal("token:recovered-admin", (await recovery.BootstrapAsync("token:recovered-admin")).Admin.Name);
    }

    [Fact]
    public async Task Recover_CredentialFileCannotBeWritten_CredentialRevokedAndAudited_TheAnswerSaysWhereAndToAskAgain()
    {
        // A directory where the file goes: the write fails after the execution committed.
        Directory.CreateDirectory(CredentialPath);
        var request = await _officer.RequestDeploymentAdminRecoveryAsync();
        await ApproveAsync("alice", request.Name);

        var e = await Assert.ThrowsAsync<RpcException>(() => ApproveAsync("bob", request.Name));
        Assert.Equal(StatusCode.FailedPrecondition, e.StatusCode);

        // The credential issued with the execution is revoked, not left to expire: whatever part of
        // a file a failed write left cannot be used. The answer and the request say so.
        var token = Assert.Single(await RecoveryTokensAsync());
        Assert.Equal(_time.GetUtcNow(), token.RevokeTime);
        Assert.Equal(
            $"{request.Name} executed on node {NodeName}, but its recovery credential could not be written to {CredentialPath}: it was revoked, so nothing was recovered; create a new RECOVER_DEPLOYMENT_ADMIN request",
            e.Status.Detail);
        Assert.Contains(_server.Logs.Events, l => l.StartsWith("Error", StringComparison.Ordinal) && l.Contains("could not be written", StringComparison.Ordinal));
        var after = await _officer.GetQuorumRequestAsync(request.Name);
        Assert.Equal((Kms.Contracts.V1.QuorumRequestState.Executed, NodeName, CredentialPath), (after.State, after.ExecutingNode, after.CredentialPath));
        Assert.Equal(_time.GetUtcNow(), after.CredentialRevokeTime.ToDateTimeOffset());

        // Audited: the execution, then the revocation, both naming the token.
        var events = await _officer.ListAuditEventsAsync(new ListAuditEventsRequest()).ToListAsync();
        var executed = Assert.Single(events, x => x.Operation == "quorum/RECOVER_DEPLOYMENT_ADMIN");
        var revoked = Assert.Single(events, x => x.Operation == Kms.Core.Services.QuorumService.RevokeCredentialOperation);
        Assert.Equal(("system:quorum", request.Id, $"token:bootstrap/apiTokens/{token.Id}", "OK"), (revoked.Principal, revoked.RequestId, revoked.Resource, revoked.Outcome));
        Assert.True(executed.Sequence < revoked.Sequence);

        Directory.Delete(CredentialPath);
    }

    [Theory]
    [InlineData("")]
    [InlineData("node a")]
    [InlineData("node/../a")]
    [InlineData("node-a\n")] // a trailing line break: '$' in a pattern accepts one
    public async Task Build_NodeNameNotAName_RefusedBeforeTouchingTheHsm(string value)
    {
        // Shown to officers as where a credential is: a name, not free text.
        var e = await Assert.ThrowsAsync<InvalidOperationException>(() => Kms.Server.Hosting.KmsServerApp.BuildAsync(
            ["--dev", "--urls=https://127.0.0.1:0", $"--Kms:NodeName={value}", $"--Kms:DataDir={Scratch.NewPath("kms-never-")}"]));
        Assert.Contains("Kms:NodeName", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Recover_AskedByADeploymentAdmin_PermissionDenied()
    {
        // Only security officers ask; an admin who still holds a credential needs no recovery.
        using var admin = _server.DeploymentAdmin();
        var refused = await Assert.ThrowsAsync<RpcException>(() => admin.RequestDeploymentAdminRecoveryAsync());
        Assert.Equal(StatusCode.PermissionDenied, refused.StatusCode);
    }

    private async Task<IReadOnlyList<ApiToken>> RecoveryTokensAsync() =>
        (await _server.Services.GetRequiredService<Kms.Core.Ports.IAccessStore>().ListApiTokensAsync(Authenticator.BootstrapPrincipal, default))
            .Where(t => t.Kind == ApiTokenKind.Recovery).ToList();

    private async Task<ApproveQuorumRequestResponse> ApproveAsync(string officer, string name)
    {
        using var approver = QuorumApprover.FromKey(ECDsa.Create(_officers.KeyOf(officer).ExportParameters(true)), _time);
        var pending = await approver.PrepareAsync(_officer, name);
        return await approver.ApproveAsync(_officer, pending);
    }
}
