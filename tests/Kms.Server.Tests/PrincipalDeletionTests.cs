using Grpc.Core;
using Kms.Client;
using Kms.Contracts.V1;
using Kms.Testing;

namespace Kms.Server.Tests;

/// <summary>
/// DeletePrincipal end to end, on a real server over SoftHSM with mTLS and the default credential
/// cache (5 s): a deleted principal stops authenticating at once by token and by certificate,
/// keeps nothing (tokens, bindings, grants), is a tombstone whose name is never registered again,
/// and the call is repeatable and audited.
/// </summary>
public sealed class PrincipalDeletionTests : IAsyncLifetime, IDisposable
{
    private const string UnauthenticatedMessage = "a valid client certificate or API token is required";

    private readonly TestPki _pki = new();
    private readonly string _dir = Directory.CreateTempSubdirectory("kms-principal-delete-").FullName;
    private KmsTestServer _server = null!;
    private KmsClient _admin = null!;
    private KmsClient _developer = null!;

    public async Task InitializeAsync()
    {
        _pki.WriteCa(Path.Combine(_dir, "client-ca.crt"));
        _server = await KmsTestServer.StartAsync(null, null, "dev", (Action<Microsoft.Extensions.DependencyInjection.IServiceCollection>?)null,
            $"--Kms:ClientCaPath={Path.Combine(_dir, "client-ca.crt")}");
        _admin = _server.DeploymentAdmin();
        _developer = _server.CreateClient();
    }

    public async Task DisposeAsync()
    {
        _admin.Dispose();
        _developer.Dispose();
        await _server.DisposeAsync();
    }

    public void Dispose()
    {
        _pki.Dispose();
        Directory.Delete(_dir, recursive: true);
    }

    [Fact]
    public async Task DeletePrincipal_TokenAndCertificate_RefusedAtOnce_ThoughRemembered_TokensBindingsGrantsGone_PolicyKept()
    {
        // A token principal and a certificate principal, both key-users with a grant on a restricted key.
        var key = await _developer.CreateKeyAsync("tenants/dev", "offboarding");
        var secret = await _server.CreatePrincipalWithTokenAsync("leaver", "dev", "key-user");
        var service = await _admin.Access.CreateApiTokenAsync(new CreateApiTokenRequest { Principal = "token:leaver", Kind = "SERVICE" });
        await _admin.Access.CreatePrincipalAsync(new CreatePrincipalRequest { Name = "cn:leaver-pod", Tenant = "tenants/dev" });
        await _admin.Access.SetRoleBindingAsync(new SetRoleBindingRequest { Principal = "cn:leaver-pod", Role = "key-user", Tenant = "tenants/dev" });
        var policy = new SetKeyPolicyRequest
        {
            Name = key.Name,
            Entries =
            {
                new KeyPolicyEntry { Principal = "token:developer", Operations = { "ENCRYPT" } },
                new KeyPolicyEntry { Principal = "token:leaver", Operations = { "ENCRYPT" } },
            },
        };
        await _developer.Raw.SetKeyPolicyAsync(policy);
        foreach (var grantee in new[] { "token:leaver", "cn:leaver-pod" })
        {
            await _developer.Raw.CreateGrantAsync(new CreateGrantRequest { Parent = key.Name, Grant = new KeyGrant { Grantee = grantee, Operations = { "DECRYPT" } } });
        }

        // Both work, and are now remembered by the node (the certificate on an open connection).
        using var token = _server.CreateClient(secret);
        using var serviceToken = _server.CreateClient(service.Secret);
        using var certificate = _pki.Issue("leaver-pod");
        using var pod = new KmsClient(new KmsClientOptions { Endpoint = _server.Address, CaCertificatePath = _server.CaCertificatePath, ClientCertificate = certificate });
        Assert.Equal(8, (await token.GenerateRandomAsync(8)).Length);
        Assert.Equal(8, (await serviceToken.GenerateRandomAsync(8)).Length);
        Assert.Equal(8, (await pod.GenerateRandomAsync(8)).Length);

        var deleted = (await _admin.Access.DeletePrincipalAsync(new DeletePrincipalRequest { Name = "token:leaver" })).Principal;
        var deletedPod = await _admin.DeletePrincipalAsync("cn:leaver-pod");

        Assert.Equal(("token:leaver", "tenants/dev", "DELETED"), (deleted.Name, deleted.Tenant, deleted.State));
        Assert.NotNull(deleted.DeleteTime);
        Assert.Equal("DELETED", deletedPod.State);

        // Refused on the very next call, within the credential cache time: one answer for all.
        foreach (var client in new[] { token, serviceToken, pod })
        {
            var refused = await Assert.ThrowsAsync<RpcException>(() => client.GenerateRandomAsync(8));
            Assert.Equal((StatusCode.Unauthenticated, UnauthenticatedMessage), (refused.StatusCode, refused.Status.Detail));
        }

        // A fresh connection with the same (still valid) certificate is refused too: not taken for an unregistered principal.
        using var reconnected = new KmsClient(new KmsClientOptions { Endpoint = _server.Address, CaCertificatePath = _server.CaCertificatePath, ClientCertificate = certificate });
        Assert.Equal(StatusCode.Unauthenticated, (await Assert.ThrowsAsync<RpcException>(() => reconnected.GenerateRandomAsync(8))).StatusCode);

        // Nothing is left: every token revoked, no binding, no grant; the key policy names it still.
        Assert.All((await _admin.Access.ListApiTokensAsync(new ListApiTokensRequest { Principal = "token:leaver" })).Tokens, t => Assert.NotNull(t.RevokeTime));
        Assert.Equal(2, (await _admin.Access.ListApiTokensAsync(new ListApiTokensRequest { Principal = "token:leaver" })).Tokens.Count);
        var bindings = await _admin.Access.ListRoleBindingsAsync(new ListRoleBindingsRequest { Tenant = "tenants/dev" });
        Assert.DoesNotContain(bindings.Bindings, b => b.Principal is "token:leaver" or "cn:leaver-pod");
        Assert.Empty((await _developer.Raw.ListGrantsAsync(new ListGrantsRequest { Parent = key.Name })).Grants);
        Assert.Contains((await _developer.Raw.GetKeyPolicyAsync(new GetKeyPolicyRequest { Name = key.Name })).Entries, e => e.Principal == "token:leaver");

        // Get and List show the state; List hides deleted principals unless asked.
        var got = await _admin.GetPrincipalAsync("token:leaver");
        Assert.Equal(("DELETED", deleted.DeleteTime), (got.State, got.DeleteTime));
        Assert.Equal("ACTIVE", (await _admin.GetPrincipalAsync("token:developer")).State);
        var listed = await _admin.Access.ListPrincipalsAsync(new ListPrincipalsRequest { Tenant = "tenants/dev", PageSize = 1000 });
        Assert.DoesNotContain(listed.Principals, p => p.Name is "token:leaver" or "cn:leaver-pod");
        Assert.All(listed.Principals, p => Assert.Equal("ACTIVE", p.State));
        var all = await _admin.Access.ListPrincipalsAsync(new ListPrincipalsRequest { Tenant = "tenants/dev", PageSize = 1000, ShowDeleted = true });
        Assert.Equal(["cn:leaver-pod", "token:leaver"], all.Principals.Where(p => p.State == "DELETED").Select(p => p.Name));
    }

    [Fact]
    public async Task DeletedPrincipal_NameNeverRegisteredAgain_NothingNewForIt_RepeatSucceeds_MissingNotFound_Audited()
    {
        await _server.EnsureTenantAsync("acme");
        await _server.CreatePrincipalWithTokenAsync("retired", "dev", "key-user");
        var first = await _admin.DeletePrincipalAsync("token:retired");

        // Re-created under its name, in its tenant, another, or none: refused, saying why.
        foreach (var tenant in new[] { "tenants/dev", "tenants/acme", "" })
        {
            var refused = await Assert.ThrowsAsync<RpcException>(() => _admin.Access.CreatePrincipalAsync(new CreatePrincipalRequest { Name = "token:retired", Tenant = tenant }).ResponseAsync);
            Assert.Equal(StatusCode.AlreadyExists, refused.StatusCode);
            Assert.Equal(
                "principal token:retired already exists, deleted: a deleted principal's name is never registered again (key policies may still name it); choose another name",
                refused.Status.Detail);
        }

        // No new token, role or grant for it.
        var key = await _developer.CreateKeyAsync("tenants/dev", "retired-grant");
        await _developer.Raw.SetKeyPolicyAsync(new SetKeyPolicyRequest { Name = key.Name, Entries = { new KeyPolicyEntry { Principal = "token:developer", Operations = { "ENCRYPT" } } } });
        var noToken = await Assert.ThrowsAsync<RpcException>(() => _admin.Access.CreateApiTokenAsync(new CreateApiTokenRequest { Principal = "token:retired", Kind = "SESSION" }).ResponseAsync);
        var noRole = await Assert.ThrowsAsync<RpcException>(() => _admin.Access.SetRoleBindingAsync(new SetRoleBindingRequest { Principal = "token:retired", Role = "auditor", Tenant = "tenants/dev" }).ResponseAsync);
        var noGrant = await Assert.ThrowsAsync<RpcException>(() => _developer.Raw.CreateGrantAsync(new CreateGrantRequest { Parent = key.Name, Grant = new KeyGrant { Grantee = "token:retired", Operations = { "DECRYPT" } } }).ResponseAsync);
        Assert.All(new[] { noToken, noRole, noGrant }, e => Assert.Equal(
            (StatusCode.FailedPrecondition, "principal token:retired was deleted; it gets no new token, role or grant"), (e.StatusCode, e.Status.Detail)));

        // Again: succeeds, the first deletion's time stands. A missing principal is NOT_FOUND.
        var again = await _admin.DeletePrincipalAsync("token:retired");
        Assert.Equal((first.State, first.DeleteTime), (again.State, again.DeleteTime));
        var missing = await Assert.ThrowsAsync<RpcException>(() => _admin.DeletePrincipalAsync("token:never-was"));
        Assert.Equal((StatusCode.NotFound, "token:never-was not found"), (missing.StatusCode, missing.Status.Detail));

        // Nobody deletes itself.
        var self = await Assert.ThrowsAsync<RpcException>(() => _admin.DeletePrincipalAsync("token:dev-admin"));
        Assert.Equal(StatusCode.PermissionDenied, self.StatusCode);
        Assert.Equal("ACTIVE", (await _admin.GetPrincipalAsync("token:dev-admin")).State);

        // Audited under the tenant's name for the principal, so dev's auditors see it: both calls.
        using var officer = _server.CreateClient(await _server.CreatePrincipalWithTokenAsync("deletion-officer", null, "security-officer"));
        var events = (await officer.Audit.ListAuditEventsAsync(new ListAuditEventsRequest { Operation = "DeletePrincipal", PageSize = 100 })).Events
            .Where(e => e.Resource == "tenants/dev/principals/token:retired").ToList();
        Assert.Equal(2, events.Count);
        Assert.All(events, e => Assert.Equal(("token:dev-admin", "OK"), (e.Principal, e.Outcome)));
    }

    [Fact]
    public async Task SetKeyPolicy_NamingADeletedPrincipal_FailedPrecondition_NothingChanged_AuditedAsARefusal()
    {
        var key = await _developer.CreateKeyAsync("tenants/dev", "leaver-policy");
        await _server.CreatePrincipalWithTokenAsync("policy-leaver", "dev", "key-user");
        var before = new SetKeyPolicyRequest
        {
            Name = key.Name,
            Entries =
            {
                new KeyPolicyEntry { Principal = "token:developer", Operations = { "ENCRYPT" } },
                new KeyPolicyEntry { Principal = "token:policy-leaver", Operations = { "DECRYPT" } },
            },
        };
        await _developer.Raw.SetKeyPolicyAsync(before);
        await _admin.DeletePrincipalAsync("token:policy-leaver");

        // The policy read and written back, or the name given anew: refused, nothing changed.
        var anew = new SetKeyPolicyRequest { Name = key.Name, Entries = { new KeyPolicyEntry { Principal = "token:policy-leaver", Operations = { "ENCRYPT" } } } };
        foreach (var request in new[] { before, anew })
        {
            var refused = await Assert.ThrowsAsync<RpcException>(() => _developer.Raw.SetKeyPolicyAsync(request).ResponseAsync);
            var index = request.Entries.Count - 1;
            Assert.Equal(
                (StatusCode.FailedPrecondition, $"entries[{index}].principal: principal token:policy-leaver was deleted; a key policy may not name it (leave its entry out)"),
                (refused.StatusCode, refused.Status.Detail));
            Assert.Equal(before.Entries, (await _developer.Raw.GetKeyPolicyAsync(new GetKeyPolicyRequest { Name = key.Name })).Entries);
        }

        // A name nobody holds is refused as it always was.
        var unknown = await Assert.ThrowsAsync<RpcException>(() => _developer.Raw.SetKeyPolicyAsync(
            new SetKeyPolicyRequest { Name = key.Name, Entries = { new KeyPolicyEntry { Principal = "token:never-was", Operations = { "ENCRYPT" } } } }).ResponseAsync);
        Assert.Equal((StatusCode.InvalidArgument, "entries[0].principal: no principal of tenants/dev is named token:never-was"), (unknown.StatusCode, unknown.Status.Detail));

        // Audited as the other refusals of a mutation are: one event each, with the outcome, and no OK.
        using var officer = _server.CreateClient(await _server.CreatePrincipalWithTokenAsync("policy-officer", null, "security-officer"));
        var events = (await officer.Audit.ListAuditEventsAsync(new ListAuditEventsRequest { Resource = key.Name, Operation = "SetKeyPolicy", PageSize = 100 })).Events;
        Assert.Equal(["OK", "FAILED_PRECONDITION", "FAILED_PRECONDITION", "INVALID_ARGUMENT"], events.Select(e => e.Outcome));
        Assert.All(events, e => Assert.Equal("token:developer", e.Principal));

        // Left out, the policy is set.
        await _developer.Raw.SetKeyPolicyAsync(new SetKeyPolicyRequest { Name = key.Name, Entries = { before.Entries[0] } });
        Assert.Equal([before.Entries[0]], (await _developer.Raw.GetKeyPolicyAsync(new GetKeyPolicyRequest { Name = key.Name })).Entries);
    }

    [Fact]
    public async Task DevMode_ADevPrincipalDeleted_StillStarts_WithoutATokenForIt()
    {
        var server = await KmsTestServer.StartAsync();
        using (var admin = server.DeploymentAdmin())
        {
            await admin.DeletePrincipalAsync("token:dev-app");
        }

        // Its token file now holds a revoked token, which a start issues again: the store refuses
        // a token for a deleted principal, which must not stop the server from starting.
        server = await server.RestartAsync();
        await using (server)
        {
            Assert.Contains("Dev mode: \"token:dev-app\" was deleted, so \"key-user.token\" is not issued again", server.Logs.AllText, StringComparison.Ordinal);
            using var stale = server.CreateClient(server.KeyUserToken);
            Assert.Equal(StatusCode.Unauthenticated, (await Assert.ThrowsAsync<RpcException>(() => stale.GenerateRandomAsync(8))).StatusCode);
            using var developer = server.CreateClient();
            Assert.Equal(8, (await developer.GenerateRandomAsync(8)).Length);
        }
    }
}
