using Kms.Core.Audit;
using Kms.Core.Errors;
using Kms.Core.Keys;
using Kms.Core.Ports;
using Kms.Core.Quorum;
using Kms.Core.Services;
using Kms.Testing;
using Microsoft.Extensions.Time.Testing;

namespace Kms.Storage.Tests;

/// <summary>What every <see cref="IQuorumStore"/> backend must do: keep the chain and requests as given, approvals once per key, executions atomic.</summary>
public abstract class QuorumStoreContract : AuditStoreContract
{
    private static readonly DateTimeOffset T0 = new(2026, 11, 29, 12, 0, 0, TimeSpan.Zero);

    [Fact]
    public async Task Genesis_StoredOnce_ChainReadBackWithTheSameHashes()
    {
        using var officers = new TestOfficers("alice", "bob", "carol");
        var store = await QuorumAsync();
        var genesis = OfficerSet.CreateGenesis(officers.Select("alice", "bob", "carol"), 2);
        Assert.Empty(await store.ListOfficerSetsAsync(default));

        Assert.True(await store.AddGenesisOfficerSetAsync(genesis, default));
        Assert.False(await store.AddGenesisOfficerSetAsync(OfficerSet.CreateGenesis(officers.Select("alice"), 1), default));

        var chain = await store.ListOfficerSetsAsync(default);
        Assert.Equal([genesis.Hash], chain.Select(s => s.Hash));
        Assert.Same(chain[0], OfficerChain.Verify(chain, genesis));
    }

    [Fact]
    public async Task Requests_CreatedReadListedPerTenant_DuplicateIdRefused()
    {
        using var officers = new TestOfficers("alice");
        var store = await QuorumAsync();
        var genesis = OfficerSet.CreateGenesis(officers.Select("alice"), 1);
        var dev = TestOfficers.Request(genesis, QuorumOperation.DestroyKeyVersionNow, [KeyValuePair.Create("name", "tenants/dev/keys/k/versions/1")], T0, Dev);
        var deployment = TestOfficers.Request(genesis, QuorumOperation.ChangeOfficers, genesis.Successor(officers.Select("alice"), 1).ChangeParameters(), T0)
            with
        { ProposedOfficers = genesis.Successor(officers.Select("alice"), 1) };
        await store.CreateQuorumRequestAsync(dev, default);
        await store.CreateQuorumRequestAsync(deployment, default);

        var read = await store.GetQuorumRequestAsync(dev.Id, default);
        Assert.NotNull(read);
        Assert.Equal(QuorumRendering.Render(dev), QuorumRendering.Render(read));
        Assert.Equal(QuorumRequestState.Pending, read.State);
        Assert.Equal(deployment.ProposedOfficers!.Hash, (await store.GetQuorumRequestAsync(deployment.Id, default))!.ProposedOfficers!.Hash);
        Assert.Equal([dev.Id], (await store.ListQuorumRequestsAsync(Dev, null, 10, default)).Select(r => r.Id));
        Assert.Equal(2, (await store.ListQuorumRequestsAsync(null, null, 10, default)).Count);
        Assert.Null(await store.GetQuorumRequestAsync(QuorumRequestId.NewId(), default));

        var duplicate = await Assert.ThrowsAsync<KmsException>(() => store.CreateQuorumRequestAsync(dev, default));
        Assert.Equal(KmsErrorCode.AlreadyExists, duplicate.Code);
    }

    [Fact]
    public async Task Approvals_OncePerOfficerKey_KeptInArrivalOrder()
    {
        using var officers = new TestOfficers("alice", "bob");
        var store = await QuorumAsync();
        var genesis = OfficerSet.CreateGenesis(officers.Select("alice", "bob"), 2);
        await store.AddGenesisOfficerSetAsync(genesis, default);
        var request = TestOfficers.Request(genesis, QuorumOperation.DestroyKeyVersionNow, [KeyValuePair.Create("name", "tenants/dev/keys/k/versions/1")], T0, Dev);
        await store.CreateQuorumRequestAsync(request, default);

        foreach (var name in new[] { "bob", "alice" })
        {
            // bob's approval signs its time (kept with it), alice's is one from before approvals were timed.
            var approval = name == "bob" ? officers.Approve(name, request, T0.AddMilliseconds(1234)) : officers.ApproveUntimed(name, request, T0);
            await store.UpdateQuorumRequestAsync(request.Id, (current, head) =>
            {
                Assert.Equal(genesis.Hash, head!.Hash);
                return new QuorumChange(current) { AddedApproval = approval };
            }, default);
        }

        var again = officers.Approve("bob", request, T0);
        var duplicate = await Assert.ThrowsAsync<KmsException>(() => store.UpdateQuorumRequestAsync(request.Id, (current, _) => new QuorumChange(current) { AddedApproval = again }, default));
        Assert.Equal(KmsErrorCode.AlreadyExists, duplicate.Code);

        var read = (await store.GetQuorumRequestAsync(request.Id, default))!;
        Assert.Equal([officers["bob"].Fingerprint, officers["alice"].Fingerprint], read.Approvals.Select(a => a.OfficerFingerprint));
        Assert.Equal([T0.AddMilliseconds(1234), null], read.Approvals.Select(a => a.SignTime));
        Assert.Equal(2, OfficerChain.ValidApprovers(read, genesis).Count);
        Assert.Null(await store.UpdateQuorumRequestAsync(QuorumRequestId.NewId(), (current, _) => new QuorumChange(current), default));
    }

    [Fact]
    public async Task Execution_KeyChangeStateAndApprovalCommitTogether_OrNotAtAll()
    {
        using var officers = new TestOfficers("alice");
        var store = await QuorumAsync();
        var keys = (IKeyStore)store;
        var key = NewKey(Dev, "shred");
        await keys.CreateKeyAsync(key, Material(), null, default);
        await keys.UpdateKeyAsync(key.Name, current => KeyTransitions.Rotate(current, KeyVersionId.NewId(), new GeneratedKeyMaterial(Material(), null), T0, scheduled: false), default);
        var genesis = OfficerSet.CreateGenesis(officers.Select("alice"), 1);
        await store.AddGenesisOfficerSetAsync(genesis, default);
        var request = TestOfficers.Request(genesis, QuorumOperation.DestroyKeyVersionNow, [KeyValuePair.Create("name", key.Name.Version(1).ToString())], T0, Dev);
        await store.CreateQuorumRequestAsync(request, default);
        var approval = officers.Approve("alice", request, T0);

        // An effect that fails (the primary cannot be destroyed) takes the approval and the state change with it.
        await Assert.ThrowsAsync<KmsException>(() => store.UpdateQuorumRequestAsync(request.Id, (current, _) => new QuorumChange(current with { State = QuorumRequestState.Executed, ExecuteTime = T0 })
        {
            AddedApproval = approval,
            KeyEffect = new QuorumKeyEffect(key.Name, k => KeyTransitions.DestroyVersionNow(k, 2, T0)),
        }, default));
        var unchanged = (await store.GetQuorumRequestAsync(request.Id, default))!;
        Assert.Equal(QuorumRequestState.Pending, unchanged.State);
        Assert.Empty(unchanged.Approvals);

        var executed = await store.UpdateQuorumRequestAsync(request.Id, (current, _) => new QuorumChange(current with { State = QuorumRequestState.Executed, ExecuteTime = T0 })
        {
            AddedApproval = approval,
            KeyEffect = new QuorumKeyEffect(key.Name, k => KeyTransitions.DestroyVersionNow(k, 1, T0)),
            ExecutionEvent = new AuditEntry { Time = T0, RequestId = request.Id.Value, Principal = "system:quorum", Operation = "quorum/DESTROY_KEY_VERSION_NOW", Resource = key.Name.Version(1).ToString(), Outcome = "OK" },
        }, default);

        Assert.Equal(QuorumRequestState.Executed, executed!.State);
        Assert.Equal(T0, executed.ExecuteTime);
        Assert.Single(executed.Approvals);
        Assert.Equal(KeyState.Destroyed, (await keys.GetVersionAsync(key.Name.Version(1), default))!.State);
        var version1 = (await keys.GetVersionAsync(key.Name.Version(1), default))!;
        Assert.Null((await keys.FindVersionMaterialAsync(Dev, version1.Id, default))!.Material);
        var events = await ((IAuditStore)store).ListAuditEventsAsync(new AuditQuery { Operation = "quorum/DESTROY_KEY_VERSION_NOW" }, default);
        Assert.Equal(request.Id.Value, Assert.Single(events).Entry.RequestId);
    }

    [Fact]
    public async Task AppendedOfficerSet_TakesTheNextSequenceOnce()
    {
        using var officers = new TestOfficers("alice", "bob");
        var store = await QuorumAsync();
        var genesis = OfficerSet.CreateGenesis(officers.Select("alice"), 1);
        await store.AddGenesisOfficerSetAsync(genesis, default);
        var next = officers.Change(genesis, officers.Select("alice", "bob"), 2, T0, "alice");
        await store.CreateQuorumRequestAsync(next.Change! with { State = QuorumRequestState.Pending, ExecuteTime = null, Approvals = [] }, default);

        var executed = await store.UpdateQuorumRequestAsync(next.Change!.Id, (current, _) => new QuorumChange(next.Change!)
        {
            AddedApproval = next.Change!.Approvals[0],
            AppendedOfficerSet = next,
        }, default);
        Assert.Equal(QuorumRequestState.Executed, executed!.State);

        var chain = await store.ListOfficerSetsAsync(default);
        Assert.Equal([genesis.Hash, next.Hash], chain.Select(s => s.Hash));
        Assert.Same(chain[1], OfficerChain.Verify(chain, genesis));

        var again = await Assert.ThrowsAsync<KmsException>(() => store.UpdateQuorumRequestAsync(next.Change!.Id, (current, _) => new QuorumChange(current) { AppendedOfficerSet = next }, default));
        Assert.Equal(KmsErrorCode.AlreadyExists, again.Code);
        Assert.Equal(2, (await store.ListOfficerSetsAsync(default)).Count);
    }

    [Fact]
    public async Task IssuedToken_StoredWithTheExecution_OrNotAtAll()
    {
        using var officers = new TestOfficers("alice");
        var (store, request, token) = await RecoveryRequestAsync(officers);
        var approval = officers.Approve("alice", request, T0);
        var (id, hash, access) = (token.Id, token.SecretHash, (IAccessStore)store);

        // An effect that fails in the same execution takes the token with it.
        await Assert.ThrowsAsync<KmsException>(() => store.UpdateQuorumRequestAsync(request.Id, (current, _) => new QuorumChange(current with { State = QuorumRequestState.Executed, ExecuteTime = T0 })
        {
            AddedApproval = approval,
            IssuedToken = token,
            KeyEffect = new QuorumKeyEffect(NewKey(Dev, "missing").Name, k => throw new InvalidOperationException("never read")),
        }, default));
        Assert.Null(await access.GetApiTokenAsync(id, default));
        Assert.Equal(QuorumRequestState.Pending, (await store.GetQuorumRequestAsync(request.Id, default))!.State);

        var executed = await store.UpdateQuorumRequestAsync(request.Id, (current, _) => new QuorumChange(current with { State = QuorumRequestState.Executed, ExecuteTime = T0 })
        {
            AddedApproval = approval,
            IssuedToken = token,
        }, default);
        Assert.Equal(QuorumRequestState.Executed, executed!.State);
        var stored = (await access.GetApiTokenAsync(id, default))!;
        Assert.Equal((Authenticator.BootstrapPrincipal, Kms.Core.Access.ApiTokenKind.Recovery, T0 + TimeSpan.FromMinutes(15), (DateTimeOffset?)null),
            (stored.Principal, stored.Kind, stored.ExpireTime, stored.RevokeTime));
        Assert.Equal(hash, stored.SecretHash);
    }

    [Fact]
    public async Task ExecutionPlace_StoredWithTheExecution_ARevokedCredentialWithItsRequest()
    {
        using var officers = new TestOfficers("alice");
        var (store, request, token) = await RecoveryRequestAsync(officers);
        var (id, access) = (token.Id, (IAccessStore)store);
        var pending = (await store.GetQuorumRequestAsync(request.Id, default))!;
        Assert.Equal((null, null, (DateTimeOffset?)null), (pending.ExecutingNode, pending.CredentialPath, pending.CredentialRevokeTime));

        await store.UpdateQuorumRequestAsync(request.Id, (current, _) => new QuorumChange(current with
        {
            State = QuorumRequestState.Executed,
            ExecuteTime = T0,
            ExecutingNode = "kms-a",
            CredentialPath = "/var/lib/kms/bootstrap.token",
        })
        {
            AddedApproval = officers.Approve("alice", request, T0),
            IssuedToken = token,
        }, default);
        var executed = (await store.ListQuorumRequestsAsync(null, null, 10, default)).Single();
        Assert.Equal(("kms-a", "/var/lib/kms/bootstrap.token", (DateTimeOffset?)null), (executed.ExecutingNode, executed.CredentialPath, executed.CredentialRevokeTime));

        // The revocation and the request's record of it, together.
        var revoked = await store.UpdateQuorumRequestAsync(request.Id, (current, _) => new QuorumChange(current with { CredentialRevokeTime = T0 + TimeSpan.FromSeconds(1) })
        {
            RevokedTokenId = id,
        }, default);
        Assert.Equal(("kms-a", "/var/lib/kms/bootstrap.token", (DateTimeOffset?)(T0 + TimeSpan.FromSeconds(1))), (revoked!.ExecutingNode, revoked.CredentialPath, revoked.CredentialRevokeTime));
        Assert.Equal(T0 + TimeSpan.FromSeconds(1), (await access.GetApiTokenAsync(id, default))!.RevokeTime);
        Assert.Equal(revoked.CredentialRevokeTime, (await store.GetQuorumRequestAsync(request.Id, default))!.CredentialRevokeTime);
    }

    [Fact]
    public async Task RevokingACredential_ABootstrapUsedItMeanwhile_RefusedWhole_TheRequestNotMarkedRevoked()
    {
        // The executing node's write failed after its rename (a directory sync): the file was read and
        // the credential used before the node revoked it. The request must not say "revoked".
        using var officers = new TestOfficers("alice");
        var (store, request, token) = await ExecutedRecoveryRequestAsync(officers);
        var (id, access) = (token.Id, (IAccessStore)store);
        Assert.True(await access.ConsumeApiTokenAsync(id, T0 + TimeSpan.FromSeconds(1), default));

        var refused = await Assert.ThrowsAsync<KmsException>(() => store.UpdateQuorumRequestAsync(request.Id, (current, _) => new QuorumChange(current with { CredentialRevokeTime = T0 + TimeSpan.FromSeconds(2) })
        {
            RevokedTokenId = id,
            ExecutionEvent = new AuditEntry { Time = T0 + TimeSpan.FromSeconds(2), RequestId = request.Id.Value, Principal = "system:quorum", Operation = QuorumService.RevokeCredentialOperation, Resource = $"token:bootstrap/apiTokens/{id}", Outcome = "OK" },
        }, default));

        Assert.Equal((KmsErrorCode.FailedPrecondition, $"apiTokens/{id} was no longer active (a Bootstrap used it, or it was revoked): nothing was revoked"), (refused.Code, refused.Message));
        Assert.Null((await store.GetQuorumRequestAsync(request.Id, default))!.CredentialRevokeTime);
        Assert.Equal(T0 + TimeSpan.FromSeconds(1), (await access.GetApiTokenAsync(id, default))!.RevokeTime);
        Assert.Empty(await ((IAuditStore)store).ListAuditEventsAsync(new AuditQuery { Operation = QuorumService.RevokeCredentialOperation }, default));
    }

    [Fact]
    public async Task Bootstrap_RoleBindingWriteFails_CredentialStillActive_NoAdminNoEvent_ARetrySucceeds()
    {
        // A store failing part way through a Bootstrap with the recovery credential (injected at the
        // role binding's write: a trigger on the SQL backends) must leave everything as it was. As
        // separate writes, the credential was used up with no admin registered: a lockout that only
        // a new RECOVER_DEPLOYMENT_ADMIN request ended.
        using var officers = new TestOfficers("alice");
        var (store, _, token) = await ExecutedRecoveryRequestAsync(officers);
        var access = (IAccessStore)store;
        var service = new AccessService(access, (IKeyStore)access, new FakeTimeProvider(T0 + TimeSpan.FromMinutes(1)), new LifecycleOptions());
        var caller = new Caller(Authenticator.BootstrapPrincipal.ToString(), null, new HashSet<Kms.Core.Access.Role>()) { BootstrapTokenId = token.Id, BootstrapRecovery = true };
        var admin = Kms.Core.Access.PrincipalName.Token("recovered");
        var events = new AuditQuery { Operation = BootstrapOperation };

        await using (await FailRoleBindingWritesAsync((IKeyStore)store))
        {
            using (AuditScope.Enter(BootstrapScope("req-1")))
            {
                await Assert.ThrowsAsync<KmsException>(() => service.BootstrapAsync(caller, admin, "recovered", default));
            }
        }

        Assert.Null((await access.GetApiTokenAsync(token.Id, default))!.RevokeTime);
        Assert.Null(await access.GetPrincipalAsync(admin, default));
        Assert.Empty(await access.GetRoleBindingsAsync(admin, default));
        Assert.Empty(await access.ListApiTokensAsync(admin, default));
        Assert.Empty(await ((IAuditStore)store).ListAuditEventsAsync(events, default));

        // The retry, with the same credential, registers the admin once.
        (Kms.Core.Access.Principal Admin, string? SessionToken) registered;
        using (AuditScope.Enter(BootstrapScope("req-2")))
        {
            registered = await service.BootstrapAsync(caller, admin, "recovered", default);
        }

        Assert.Equal(admin, registered.Admin.Name);
        Assert.NotNull(registered.SessionToken);
        Assert.Equal(T0 + TimeSpan.FromMinutes(1), (await access.GetApiTokenAsync(token.Id, default))!.RevokeTime);
        Assert.Equal(registered.Admin, await access.GetPrincipalAsync(admin, default));
        Assert.Equal([Kms.Core.Access.Role.DeploymentAdmin], (await access.GetRoleBindingsAsync(admin, default)).Select(b => b.Role));
        Assert.Equal([Kms.Core.Access.ApiTokenKind.Session], (await access.ListApiTokensAsync(admin, default)).Select(t => t.Kind));
        Assert.Equal(AuditCommitsWithTheWrite ? ["req-2"] : [], (await ((IAuditStore)store).ListAuditEventsAsync(events, default)).Select(e => e.Entry.RequestId));
        var again = await Assert.ThrowsAsync<KmsException>(() => service.BootstrapAsync(caller, Kms.Core.Access.PrincipalName.Token("second"), null, default));
        Assert.Equal(KmsErrorCode.Unauthenticated, again.Code);
    }

    [Fact]
    public async Task RegisterBootstrapAdmin_OneStep_AUsedCredentialOrATakenTokenIdWritesNothing()
    {
        using var officers = new TestOfficers("alice");
        var (store, _, token) = await ExecutedRecoveryRequestAsync(officers);
        var access = (IAccessStore)store;
        var admin = Kms.Core.Access.PrincipalName.Token("recovered");
        var at = T0 + TimeSpan.FromMinutes(1);
        var (sessionId, _, sessionHash) = Kms.Core.Access.ApiTokenSecret.Create();
        var registration = new Kms.Core.Access.BootstrapRegistration(token.Id, at, new Kms.Core.Access.Principal(admin, null, "recovered", at),
            new Kms.Core.Access.RoleBinding(admin, Kms.Core.Access.Role.DeploymentAdmin, null, at),
            new Kms.Core.Access.ApiToken(sessionId, admin, Kms.Core.Access.ApiTokenKind.Session, sessionHash, at, at + TimeSpan.FromMinutes(15)));

        // The last write refused (its token id is the credential's own): the credential's use goes with it.
        var taken = await Assert.ThrowsAsync<KmsException>(() => access.RegisterBootstrapAdminAsync(
            registration with { SessionToken = registration.SessionToken! with { Id = token.Id } }, default));
        Assert.Equal(KmsErrorCode.AlreadyExists, taken.Code);
        Assert.Null((await access.GetApiTokenAsync(token.Id, default))!.RevokeTime);
        Assert.Null(await access.GetPrincipalAsync(admin, default));

        Assert.True(await access.RegisterBootstrapAdminAsync(registration, default));
        Assert.Equal(at, (await access.GetApiTokenAsync(token.Id, default))!.RevokeTime);
        Assert.Equal([Kms.Core.Access.Role.DeploymentAdmin], (await access.GetRoleBindingsAsync(admin, default)).Select(b => b.Role));
        Assert.Equal(sessionHash, (await access.GetApiTokenAsync(sessionId, default))!.SecretHash);

        // Used: a second registration (another admin) writes nothing.
        var other = Kms.Core.Access.PrincipalName.Token("second");
        Assert.False(await access.RegisterBootstrapAdminAsync(new Kms.Core.Access.BootstrapRegistration(token.Id, at, new Kms.Core.Access.Principal(other, null, "", at),
            new Kms.Core.Access.RoleBinding(other, Kms.Core.Access.Role.DeploymentAdmin, null, at), null), default));
        Assert.Null(await access.GetPrincipalAsync(other, default));
        Assert.Empty(await access.GetRoleBindingsAsync(other, default));
    }

    /// <summary>Makes every write of a role binding fail until the returned value is disposed.</summary>
    protected abstract Task<IAsyncDisposable> FailRoleBindingWritesAsync(IKeyStore store);

    /// <summary>Whether a request's audit event commits with its first write (the SQL stores), or arrives by other means (the in-memory fake).</summary>
    protected virtual bool AuditCommitsWithTheWrite => true;

    /// <summary>Runs an undo step on dispose.</summary>
    protected sealed class Undo(Func<Task> undo) : IAsyncDisposable
    {
        /// <inheritdoc />
        public async ValueTask DisposeAsync() => await undo();
    }

    private const string BootstrapOperation = "/kms.v1.AccessManagementService/Bootstrap";

    private static AuditScope BootstrapScope(string requestId) => new(
        new AuditEntry { Time = T0, RequestId = requestId, Principal = Authenticator.BootstrapPrincipal.ToString(), Operation = BootstrapOperation, Outcome = "OK" },
        mutating: true);

    private async Task<IQuorumStore> QuorumAsync() => (IQuorumStore)await CreateStoreAsync();

    // A pending RECOVER_DEPLOYMENT_ADMIN request of a one-officer genesis set ("alice"), and the
    // one-time Recovery-kind token its execution would issue.
    // A RECOVER_DEPLOYMENT_ADMIN request approved by alice and executed at T0, its credential issued.
    private async Task<(IQuorumStore Store, QuorumRequest Request, Kms.Core.Access.ApiToken Token)> ExecutedRecoveryRequestAsync(TestOfficers officers)
    {
        var (store, request, token) = await RecoveryRequestAsync(officers);
        await store.UpdateQuorumRequestAsync(request.Id, (current, _) => new QuorumChange(current with { State = QuorumRequestState.Executed, ExecuteTime = T0 })
        {
            AddedApproval = officers.Approve("alice", request, T0),
            IssuedToken = token,
        }, default);
        return (store, request, token);
    }

    private async Task<(IQuorumStore Store, QuorumRequest Request, Kms.Core.Access.ApiToken Token)> RecoveryRequestAsync(TestOfficers officers)
    {
        var store = await QuorumAsync();
        var genesis = OfficerSet.CreateGenesis(officers.Select("alice"), 1);
        await store.AddGenesisOfficerSetAsync(genesis, default);
        var request = TestOfficers.Request(genesis, QuorumOperation.RecoverDeploymentAdmin, QuorumService.RecoveryParameters, T0);
        await store.CreateQuorumRequestAsync(request, default);
        var (id, _, hash) = Kms.Core.Access.ApiTokenSecret.Create();
        return (store, request, new Kms.Core.Access.ApiToken(id, Authenticator.BootstrapPrincipal, Kms.Core.Access.ApiTokenKind.Recovery, hash, T0, T0 + TimeSpan.FromMinutes(15)));
    }
}
