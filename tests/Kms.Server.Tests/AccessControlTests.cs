using Google.Protobuf;
using Google.Protobuf.WellKnownTypes;
using Google.Rpc;
using Grpc.Core;
using Kms.Contracts.V1;
using Kms.Core.Services;
using Kms.Testing;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Time.Testing;

namespace Kms.Server.Tests;

/// <summary>
/// Identity and access end to end, on a real server with a fake clock: tenant isolation,
/// token expiry and revocation, administrative roles only with sessions, key policies and
/// grants, quotas, and the one-time bootstrap credential.
/// </summary>
public sealed class AccessControlTests : IAsyncLifetime
{
    // Missing, malformed, unknown, wrong-secret, expired and revoked credentials: one answer,
    // which says nothing about the token's state.
    private const string UnauthenticatedMessage = "a valid client certificate or API token is required";

    private readonly FakeTimeProvider _time = new(new DateTimeOffset(2026, 11, 29, 12, 0, 0, TimeSpan.Zero));
    private KmsTestServer _server = null!;
    private Kms.Client.KmsClient _developer = null!;
    private Kms.Client.KmsClient _admin = null!;

    public async Task InitializeAsync()
    {
        _server = await KmsTestServer.StartAsync(null, null, "dev", services => services.AddSingleton<TimeProvider>(_time),
            "--Kms:Quotas:Tenants:slow:OperationsPerSecond=2", "--Kms:Quotas:Tenants:slow:Burst=3");
        _developer = _server.CreateClient();
        _admin = _server.DeploymentAdmin();
        await _server.EnsureTenantAsync("acme");
    }

    public async Task DisposeAsync()
    {
        _developer.Dispose();
        _admin.Dispose();
        await _server.DisposeAsync();
    }

    [Fact]
    public async Task KeyOfAnotherTenant_AnsweredExactlyLikeAMissingKey()
    {
        var key = await _developer.CreateKeyAsync("tenants/dev", "isolated");
        using var acme = _server.CreateClient(await _server.CreatePrincipalWithTokenAsync("acme-manager", "acme", "key-manager", "key-user", "auditor"));

        var existing = await Assert.ThrowsAsync<RpcException>(() => acme.GetKeyAsync(key.Name));
        var missing = await Assert.ThrowsAsync<RpcException>(() => acme.GetKeyAsync("tenants/dev/keys/never-existed"));
        Assert.Equal(StatusCode.NotFound, existing.StatusCode);
        Assert.Equal(missing.StatusCode, existing.StatusCode);
        Assert.Equal(missing.Status.Detail.Replace("never-existed", "isolated", StringComparison.Ordinal), existing.Status.Detail);

        // Even where dev's own key-manager would be refused for lack of a permission, the other
        // tenant gets NOT_FOUND: its request says nothing about dev.
        var encrypt = await Assert.ThrowsAsync<RpcException>(() => acme.EncryptAsync(key.Name, new byte[] { 1 }));
        Assert.Equal(StatusCode.NotFound, encrypt.StatusCode);
        var list = await Assert.ThrowsAsync<RpcException>(async () => await acme.ListKeysAsync("tenants/dev").ToListAsync());
        Assert.Equal(StatusCode.NotFound, list.StatusCode);
    }

    [Fact]
    public async Task BlobMovedToAnotherTenant_DoesNotDecrypt()
    {
        var key = await _developer.CreateKeyAsync("tenants/dev", "moved");
        var blob = (await _developer.EncryptAsync(key.Name, "payroll"u8.ToArray())).Ciphertext;
        using var acme = _server.CreateClient(await _server.CreatePrincipalWithTokenAsync("acme-user", "acme", "key-user"));

        var moved = await Assert.ThrowsAsync<RpcException>(() => acme.DecryptAsync(blob));
        var tampered = blob.ToArray();
        tampered[^1] ^= 1;
        var forged = await Assert.ThrowsAsync<RpcException>(() => _developer.DecryptAsync(tampered));
        Assert.Equal(StatusCode.InvalidArgument, moved.StatusCode);
        Assert.Equal(forged.Status.Detail, moved.Status.Detail);
        Assert.Equal("decryption failed", moved.Status.Detail);
    }

    [Theory]
    [InlineData(null)]
    [InlineData("Bearer ")]
    [InlineData("Bearer not-a-token")]
    [InlineData("Basic dXNlcjpwYXNz")]
    [InlineData("Bearer kms_0123456789abcdef_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA")]
    public async Task BadCredentials_AllUnauthenticated_WithOneMessage(string? authorization)
    {
        AssertTheOneUnauthenticatedAnswer(await CallGenerateRandomAsync(authorization));
    }

    [Fact]
    public async Task WrongSecretForARealTokenId_Unauthenticated()
    {
        var real = _server.KeyUserToken;
        var wrong = real[..^4] + (real[^4..] == "AAAA" ? "BBBB" : "AAAA");
        Assert.Equal(StatusCode.OK, (await CallGenerateRandomAsync("Bearer " + real)).StatusCode);
        AssertTheOneUnauthenticatedAnswer(await CallGenerateRandomAsync("Bearer " + wrong));
    }

    [Fact]
    public async Task SessionToken_ExpiresWithTheClock()
    {
        var response = await CreateTokenAsync("token:expiring", "dev", "SESSION", TimeSpan.FromMinutes(15), "key-user");
        Assert.Equal(StatusCode.OK, (await CallGenerateRandomAsync("Bearer " + response.Secret)).StatusCode);

        _time.Advance(TimeSpan.FromMinutes(14));
        Assert.Equal(StatusCode.OK, (await CallGenerateRandomAsync("Bearer " + response.Secret)).StatusCode);

        // The cached authentication does not outlive the token.
        _time.Advance(TimeSpan.FromMinutes(1));
        AssertTheOneUnauthenticatedAnswer(await CallGenerateRandomAsync("Bearer " + response.Secret));
    }

    [Fact]
    public async Task SessionLifetimeBeyondTwelveHours_Refused_DefaultIsFifteenMinutes()
    {
        await _admin.Access.CreatePrincipalAsync(new CreatePrincipalRequest { Name = "token:operator", Tenant = "tenants/dev" });
        var tooLong = await Assert.ThrowsAsync<RpcException>(async () => await _admin.Access.CreateApiTokenAsync(new CreateApiTokenRequest
        {
            Principal = "token:operator",
            Kind = "SESSION",
            Lifetime = Duration.FromTimeSpan(TimeSpan.FromHours(13)),
        }));
        Assert.Equal(StatusCode.InvalidArgument, tooLong.StatusCode);

        var session = await _admin.Access.CreateApiTokenAsync(new CreateApiTokenRequest { Principal = "token:operator", Kind = "SESSION" });
        Assert.Equal(TimeSpan.FromMinutes(15), session.Token.ExpireTime.ToDateTimeOffset() - session.Token.CreateTime.ToDateTimeOffset());
    }

    [Fact]
    public async Task RevokedToken_RefusedAtOnce_EvenThoughAuthenticationsAreCached()
    {
        var response = await CreateTokenAsync("token:revoked", "dev", "SERVICE", null, "key-user");
        Assert.Equal(StatusCode.OK, (await CallGenerateRandomAsync("Bearer " + response.Secret)).StatusCode);

        await _admin.Access.RevokeApiTokenAsync(new RevokeApiTokenRequest { Id = response.Token.Id });
        AssertTheOneUnauthenticatedAnswer(await CallGenerateRandomAsync("Bearer " + response.Secret));
        var listed = await _admin.Access.ListApiTokensAsync(new ListApiTokensRequest { Principal = "token:revoked" });
        Assert.NotNull(Assert.Single(listed.Tokens).RevokeTime);
    }

    [Fact]
    public async Task RemovedRole_TakesEffectAtOnce()
    {
        var response = await CreateTokenAsync("token:demoted", "dev", "SERVICE", null, "key-user");
        Assert.Equal(StatusCode.OK, (await CallGenerateRandomAsync("Bearer " + response.Secret)).StatusCode);

        await _admin.Access.DeleteRoleBindingAsync(new DeleteRoleBindingRequest { Principal = "token:demoted", Role = "key-user", Tenant = "tenants/dev" });
        var refused = await CallGenerateRandomAsync("Bearer " + response.Secret);
        Assert.Equal(StatusCode.PermissionDenied, refused.StatusCode);
        Assert.Contains("kms.random.generate", refused.Detail, StringComparison.Ordinal);
    }

    [Fact]
    public async Task ServiceTokens_NeverCarryAdministrativeRoles()
    {
        var service = await CreateTokenAsync("token:ci-bot", "dev", "SERVICE", null, "key-user");

        // Issuing a service token to an administrator is refused outright...
        await _admin.Access.SetRoleBindingAsync(new SetRoleBindingRequest { Principal = "token:ci-bot", Role = "admin", Tenant = "tenants/dev" });
        var refused = await Assert.ThrowsAsync<RpcException>(async () => await _admin.Access.CreateApiTokenAsync(new CreateApiTokenRequest { Principal = "token:ci-bot", Kind = "SERVICE" }));
        Assert.Equal(StatusCode.InvalidArgument, refused.StatusCode);

        // ...and a service token issued before the role was bound does not carry it: binding
        // another principal, which the admin role allows, is refused for want of its permission.
        await _admin.Access.CreatePrincipalAsync(new CreatePrincipalRequest { Name = "token:ci-other", Tenant = "tenants/dev" });
        var bindOther = new SetRoleBindingRequest { Principal = "token:ci-other", Role = "key-user", Tenant = "tenants/dev" };
        using var bot = _server.CreateClient(service.Secret);
        var bind = await Assert.ThrowsAsync<RpcException>(async () => await bot.Access.SetRoleBindingAsync(bindOther));
        Assert.Equal(StatusCode.PermissionDenied, bind.StatusCode);
        Assert.Equal("permission kms.bindings.manage is required on tenants/dev; principal token:ci-bot does not have it", bind.Status.Detail);
        Assert.Equal(16, (await bot.GenerateRandomAsync(16)).Length);

        // A session token of the same principal carries the role: the same call succeeds.
        var session = await _admin.Access.CreateApiTokenAsync(new CreateApiTokenRequest { Principal = "token:ci-bot", Kind = "SESSION" });
        using var administrator = _server.CreateClient(session.Secret);
        await administrator.Access.SetRoleBindingAsync(bindOther);
    }

    [Fact]
    public async Task TenantAdmin_CannotGrantDeploymentRoles_OrBindOutsideItsTenant()
    {
        using var tenantAdmin = _server.CreateClient(await _server.CreatePrincipalWithTokenAsync("dev-tenant-admin", "dev", "admin"));
        await _admin.Access.CreatePrincipalAsync(new CreatePrincipalRequest { Name = "token:acme-someone", Tenant = "tenants/acme" });

        var deploymentRole = await Assert.ThrowsAsync<RpcException>(async () => await tenantAdmin.Access.SetRoleBindingAsync(
            new SetRoleBindingRequest { Principal = "token:dev-tenant-admin", Role = "deployment-admin" }));
        Assert.Equal(StatusCode.PermissionDenied, deploymentRole.StatusCode);

        var otherTenant = await Assert.ThrowsAsync<RpcException>(async () => await tenantAdmin.Access.SetRoleBindingAsync(
            new SetRoleBindingRequest { Principal = "token:acme-someone", Role = "key-user", Tenant = "tenants/acme" }));
        Assert.Equal(StatusCode.NotFound, otherTenant.StatusCode);

        // A principal of acme cannot be bound into dev either: to dev's admin it does not exist.
        var foreignPrincipal = await Assert.ThrowsAsync<RpcException>(async () => await tenantAdmin.Access.SetRoleBindingAsync(
            new SetRoleBindingRequest { Principal = "token:acme-someone", Role = "key-user", Tenant = "tenants/dev" }));
        Assert.Equal(StatusCode.NotFound, foreignPrincipal.StatusCode);
        var missing = await Assert.ThrowsAsync<RpcException>(async () => await tenantAdmin.Access.SetRoleBindingAsync(
            new SetRoleBindingRequest { Principal = "token:acme-nobody", Role = "key-user", Tenant = "tenants/dev" }));
        Assert.Equal((StatusCode.NotFound, foreignPrincipal.Status.Detail.Replace("someone", "nobody", StringComparison.Ordinal)), (missing.StatusCode, missing.Status.Detail));

        // Nor can it raise its own roles (separation of duties).
        var self = await Assert.ThrowsAsync<RpcException>(async () => await tenantAdmin.Access.SetRoleBindingAsync(
            new SetRoleBindingRequest { Principal = "token:dev-tenant-admin", Role = "key-user", Tenant = "tenants/dev" }));
        Assert.Equal(StatusCode.PermissionDenied, self.StatusCode);
        var bindings = await _admin.Access.ListRoleBindingsAsync(new ListRoleBindingsRequest { Tenant = "tenants/acme" });
        Assert.DoesNotContain(bindings.Bindings, b => b.Principal == "token:acme-someone");
    }

    [Fact]
    public async Task LiftingAPolicy_EndsItsGrants_SoRestrictingTheKeyAgainRevivesNone()
    {
        // A grant narrows only a restricted key. Were it kept while the key is unrestricted, the
        // next policy would silently bring it back, though nobody granted it under that policy
        // and the access review showed nothing in between.
        var key = await _developer.CreateKeyAsync("tenants/dev", "re-restricted");
        var context = new Dictionary<string, string> { ["rec"] = "42" };
        var blob = (await _developer.EncryptAsync(key.Name, "42"u8.ToArray(), context)).Ciphertext;
        using var reader = _server.CreateClient(await _server.CreatePrincipalWithTokenAsync("dormant-reader", "dev", "key-user"));
        var policy = new SetKeyPolicyRequest { Name = key.Name, Entries = { new KeyPolicyEntry { Principal = "token:developer", Operations = { "ENCRYPT", "DECRYPT" } } } };
        await _developer.Raw.SetKeyPolicyAsync(policy);
        await _developer.Raw.CreateGrantAsync(new CreateGrantRequest
        {
            Parent = key.Name,
            Grant = new KeyGrant { Grantee = "token:dormant-reader", Operations = { "DECRYPT" }, ContextEquals = { ["rec"] = "42" } },
        });

        await _developer.Raw.SetKeyPolicyAsync(new SetKeyPolicyRequest { Name = key.Name });
        Assert.Empty((await _developer.Raw.ListGrantsAsync(new ListGrantsRequest { Parent = key.Name })).Grants);

        await _developer.Raw.SetKeyPolicyAsync(policy);
        var refused = await Assert.ThrowsAsync<RpcException>(() => reader.DecryptAsync(blob, context));
        Assert.Equal((StatusCode.InvalidArgument, "decryption failed"), (refused.StatusCode, refused.Status.Detail));
        var review = await _developer.Raw.TestPermissionsAsync(new TestPermissionsRequest { Name = key.Name });
        Assert.Empty(review.Principals.Single(p => p.Principal == "token:dormant-reader").ConditionalGrants);
    }

    [Fact]
    public async Task Grants_AllowOnlyWithTheMatchingContext_AndStopWhenRevoked()
    {
        var key = await _developer.CreateKeyAsync("tenants/dev", "records");
        var context = new Dictionary<string, string> { ["tenant-record"] = "42" };
        var blob = (await _developer.EncryptAsync(key.Name, "record 42"u8.ToArray(), context)).Ciphertext;
        using var reader = _server.CreateClient(await _server.CreatePrincipalWithTokenAsync("record-reader", "dev", "key-user"));

        // Without a policy every key-user may decrypt; a policy naming only the developer narrows it.
        using (var before = await reader.DecryptAsync(blob, context))
        {
            Assert.Equal("record 42"u8.ToArray(), before.Plaintext.ToArray());
        }

        await _developer.Raw.SetKeyPolicyAsync(new SetKeyPolicyRequest
        {
            Name = key.Name,
            Entries = { new KeyPolicyEntry { Principal = "token:developer", Operations = { "ENCRYPT", "DECRYPT" } } },
        });
        // A key-user the policy names for nothing, holding no grant: its blob is as good as one of
        // no key at all (KeyExistenceTests).
        var narrowed = await Assert.ThrowsAsync<RpcException>(() => reader.DecryptAsync(blob, context));
        Assert.Equal((StatusCode.InvalidArgument, "decryption failed"), (narrowed.StatusCode, narrowed.Status.Detail));

        var grant = (await _developer.Raw.CreateGrantAsync(new CreateGrantRequest
        {
            Parent = key.Name,
            Grant = new KeyGrant { Grantee = "token:record-reader", Operations = { "DECRYPT" }, ContextEquals = { ["tenant-record"] = "42" } },
        })).Grant;

        using (var granted = await reader.DecryptAsync(blob, context))
        {
            Assert.Equal("record 42"u8.ToArray(), granted.Plaintext.ToArray());
        }

        // Another record, no context, or another operation: refused before any decryption, and,
        // since the grant tells the reader the key exists, PERMISSION_DENIED saying why.
        var otherRecord = await Assert.ThrowsAsync<RpcException>(() => reader.DecryptAsync(blob, new Dictionary<string, string> { ["tenant-record"] = "43" }));
        var noContext = await Assert.ThrowsAsync<RpcException>(() => reader.DecryptAsync(blob));
        var encrypt = await Assert.ThrowsAsync<RpcException>(() => reader.EncryptAsync(key.Name, new byte[] { 1 }, context));
        Assert.All(new[] { otherRecord, noContext, encrypt }, e => Assert.Equal(StatusCode.PermissionDenied, e.StatusCode));

        // The access review shows the grant as conditional.
        var review = await _developer.Raw.TestPermissionsAsync(new TestPermissionsRequest { Name = key.Name });
        var readerReport = review.Principals.Single(p => p.Principal == "token:record-reader");
        Assert.Empty(readerReport.Operations);
        Assert.Equal(grant.Name, Assert.Single(readerReport.ConditionalGrants).Name);
        Assert.Equal(["ENCRYPT", "DECRYPT"], review.Principals.Single(p => p.Principal == "token:developer").Operations);

        await _developer.Raw.RevokeGrantAsync(new RevokeGrantRequest { Name = grant.Name });
        Assert.Empty((await _developer.Raw.ListGrantsAsync(new ListGrantsRequest { Parent = key.Name })).Grants);
        var revoked = await Assert.ThrowsAsync<RpcException>(() => reader.DecryptAsync(blob, context));
        Assert.Equal((StatusCode.InvalidArgument, "decryption failed"), (revoked.StatusCode, revoked.Status.Detail));

        // Removing the policy restores access by role.
        await _developer.Raw.SetKeyPolicyAsync(new SetKeyPolicyRequest { Name = key.Name });
        using var after = await reader.DecryptAsync(blob, context);
        Assert.Equal("record 42"u8.ToArray(), after.Plaintext.ToArray());
    }

    [Fact]
    public async Task Grants_ContextConstraint_HeldOnEveryPath_SingleBatchAliasAndBothSidesOfReEncrypt()
    {
        // A grant's context constraint is checked wherever its key is used, not only on the
        // single Encrypt and Decrypt: through an alias, in a batch item, as a ReEncrypt
        // destination (ENCRYPT) and as a ReEncrypt source (DECRYPT), single and batched.
        var open = await _developer.CreateKeyAsync("tenants/dev", "grant-paths-open");
        var granted = await _developer.CreateKeyAsync("tenants/dev", "grant-paths");
        await _developer.Raw.CreateAliasAsync(new CreateAliasRequest { Parent = "tenants/dev", AliasId = "grant-paths-alias", Alias = new Alias { Key = granted.Name } });
        var matching = new Dictionary<string, string> { ["rec"] = "42", ["extra"] = "1" };
        var other = new Dictionary<string, string> { ["rec"] = "43" };
        var grantedBlob = ByteString.CopyFrom((await _developer.EncryptAsync(granted.Name, "42"u8.ToArray(), matching)).Ciphertext);
        var otherBlob = ByteString.CopyFrom((await _developer.EncryptAsync(granted.Name, "43"u8.ToArray(), other)).Ciphertext);
        var openBlob = ByteString.CopyFrom((await _developer.EncryptAsync(open.Name, "open"u8.ToArray())).Ciphertext);
        using var grantee = _server.CreateClient(await _server.CreatePrincipalWithTokenAsync("grant-paths-user", "dev", "key-user"));
        await _developer.Raw.SetKeyPolicyAsync(new SetKeyPolicyRequest
        {
            Name = granted.Name,
            Entries = { new KeyPolicyEntry { Principal = "token:developer", Operations = { "ENCRYPT", "DECRYPT" } } },
        });
        await _developer.Raw.CreateGrantAsync(new CreateGrantRequest
        {
            Parent = granted.Name,
            Grant = new KeyGrant { Grantee = "token:grant-paths-user", Operations = { "ENCRYPT", "DECRYPT" }, ContextEquals = { ["rec"] = "42" } },
        });
        var keys = grantee.Raw;

        foreach (var name in new[] { granted.Name, "tenants/dev/aliases/grant-paths-alias" })
        {
            // Into the key under another context: refused on every encrypting path.
            var intoOther = new[]
            {
                await CodeOf(() => keys.EncryptAsync(new EncryptRequest { Name = name, Plaintext = ByteString.CopyFromUtf8("a"), EncryptionContext = { other } }).ResponseAsync),
                await CodeOf(() => keys.GenerateDataKeyAsync(new GenerateDataKeyRequest { Name = name, EncryptionContext = { other } }).ResponseAsync),
                await CodeOf(() => keys.GenerateDataKeyWithoutPlaintextAsync(new GenerateDataKeyWithoutPlaintextRequest { Name = name, EncryptionContext = { other } }).ResponseAsync),
                await CodeOf(() => keys.ReEncryptAsync(new ReEncryptRequest { Ciphertext = openBlob, DestinationName = name, DestinationEncryptionContext = { other } }).ResponseAsync),
                (StatusCode)(await keys.BatchEncryptAsync(new BatchEncryptRequest { Requests = { new EncryptRequest { Name = name, Plaintext = ByteString.CopyFromUtf8("a"), EncryptionContext = { other } } } })).Results[0].Status.Code,
                (StatusCode)(await keys.BatchGenerateDataKeyAsync(new BatchGenerateDataKeyRequest { Requests = { new GenerateDataKeyRequest { Name = name, EncryptionContext = { other } } } })).Results[0].Status.Code,
                (StatusCode)(await keys.BatchReEncryptAsync(new BatchReEncryptRequest { Requests = { new ReEncryptRequest { Ciphertext = openBlob, DestinationName = name, DestinationEncryptionContext = { other } } } })).Results[0].Status.Code,
            };
            Assert.All(intoOther, code => Assert.Equal(StatusCode.PermissionDenied, code));

            // Under a context that holds the granted pair (and more): served on every one of them.
            var intoMatching = new[]
            {
                await CodeOf(() => keys.EncryptAsync(new EncryptRequest { Name = name, Plaintext = ByteString.CopyFromUtf8("a"), EncryptionContext = { matching } }).ResponseAsync),
                await CodeOf(() => keys.GenerateDataKeyWithoutPlaintextAsync(new GenerateDataKeyWithoutPlaintextRequest { Name = name, EncryptionContext = { matching } }).ResponseAsync),
                await CodeOf(() => keys.ReEncryptAsync(new ReEncryptRequest { Ciphertext = openBlob, DestinationName = name, DestinationEncryptionContext = { matching } }).ResponseAsync),
                (StatusCode)(await keys.BatchReEncryptAsync(new BatchReEncryptRequest { Requests = { new ReEncryptRequest { Ciphertext = openBlob, DestinationName = name, DestinationEncryptionContext = { matching } } } })).Results[0].Status.Code,
            };
            Assert.All(intoMatching, code => Assert.Equal(StatusCode.OK, code));
        }

        // Out of the key: a blob made under another context is refused on every decrypting path
        // (the grant names the caller, so PERMISSION_DENIED), before anything is decrypted.
        var outOfOther = new[]
        {
            await CodeOf(() => keys.DecryptAsync(new DecryptRequest { Ciphertext = otherBlob, EncryptionContext = { other } }).ResponseAsync),
            await CodeOf(() => keys.ReEncryptAsync(new ReEncryptRequest { Ciphertext = otherBlob, SourceEncryptionContext = { other }, DestinationName = open.Name }).ResponseAsync),
            (StatusCode)(await keys.BatchDecryptAsync(new BatchDecryptRequest { Requests = { new DecryptRequest { Ciphertext = otherBlob, EncryptionContext = { other } } } })).Results[0].Status.Code,
            (StatusCode)(await keys.BatchReEncryptAsync(new BatchReEncryptRequest { Requests = { new ReEncryptRequest { Ciphertext = otherBlob, SourceEncryptionContext = { other }, DestinationName = open.Name } } })).Results[0].Status.Code,
        };
        Assert.All(outOfOther, code => Assert.Equal(StatusCode.PermissionDenied, code));

        var outOfMatching = new[]
        {
            await CodeOf(() => keys.DecryptAsync(new DecryptRequest { Ciphertext = grantedBlob, EncryptionContext = { matching } }).ResponseAsync),
            await CodeOf(() => keys.ReEncryptAsync(new ReEncryptRequest { Ciphertext = grantedBlob, SourceEncryptionContext = { matching }, DestinationName = open.Name }).ResponseAsync),
            (StatusCode)(await keys.BatchDecryptAsync(new BatchDecryptRequest { Requests = { new DecryptRequest { Ciphertext = grantedBlob, EncryptionContext = { matching } } } })).Results[0].Status.Code,
            (StatusCode)(await keys.BatchReEncryptAsync(new BatchReEncryptRequest { Requests = { new ReEncryptRequest { Ciphertext = grantedBlob, SourceEncryptionContext = { matching }, DestinationName = open.Name } } })).Results[0].Status.Code,
        };
        Assert.All(outOfMatching, code => Assert.Equal(StatusCode.OK, code));

        static async Task<StatusCode> CodeOf(Func<Task> call)
        {
            try
            {
                await call();
                return StatusCode.OK;
            }
            catch (RpcException e)
            {
                return e.StatusCode;
            }
        }
    }

    [Fact]
    public async Task Quota_ExhaustedWithARetryHint_OtherTenantsUnaffected_RecoversWithTime()
    {
        await _server.EnsureTenantAsync("slow");
        using var slow = _server.CreateClient(await _server.CreatePrincipalWithTokenAsync("slow-user", "slow", "key-user"));
        for (var i = 0; i < 3; i++)
        {
            await slow.GenerateRandomAsync(8);
        }

        var exhausted = await Assert.ThrowsAsync<RpcException>(() => slow.GenerateRandomAsync(8));
        Assert.Equal(StatusCode.ResourceExhausted, exhausted.StatusCode);
        var retry = exhausted.GetRpcStatus()!.GetDetail<RetryInfo>();
        Assert.NotNull(retry);
        Assert.Equal(TimeSpan.FromMilliseconds(500), retry.RetryDelay.ToTimeSpan());

        // Another tenant's quota is its own.
        Assert.Equal(8, (await _developer.GenerateRandomAsync(8)).Length);

        _time.Advance(TimeSpan.FromMilliseconds(500));
        Assert.Equal(8, (await slow.GenerateRandomAsync(8)).Length);
        Assert.Equal(StatusCode.ResourceExhausted, (await Assert.ThrowsAsync<RpcException>(() => slow.GenerateRandomAsync(8))).StatusCode);
    }

    [Fact]
    public async Task Quota_KeyGenerationAndAttestationInTheHsmCountAgainstIt()
    {
        // Creating and rotating keys generate them in the HSM (an RSA-4096 pair holds a session
        // for seconds): unmetered, one tenant's key-manager could starve every tenant's crypto.
        await _server.EnsureTenantAsync("slow");
        using var manager = _server.CreateClient(await _server.CreatePrincipalWithTokenAsync("slow-manager", "slow", "key-manager"));
        var key = await manager.CreateKeyAsync("tenants/slow", "generated");
        await manager.RotateKeyAsync(key.Name);
        await manager.RotateKeyAsync(key.Name);
        var exhausted = await Assert.ThrowsAsync<RpcException>(() => manager.RotateKeyAsync(key.Name));
        Assert.Equal(StatusCode.ResourceExhausted, exhausted.StatusCode);
        using var attested = _server.CreateClient(await _server.CreatePrincipalWithTokenAsync("slow-reader", "slow", "key-manager"));
        Assert.Equal(StatusCode.ResourceExhausted, (await Assert.ThrowsAsync<RpcException>(() => attested.Raw.GetKeyAttestationAsync(new GetKeyAttestationRequest { Name = key.Name }).ResponseAsync)).StatusCode);
    }

    [Fact]
    public async Task Quota_ImportJobsAndImportsInTheHsmCountAgainstIt()
    {
        // An import job is an RSA-3072 pair generated in the HSM, an import an RSA unwrap:
        // unmetered, one tenant's key-importer could starve every tenant's crypto. Burst 3: a key
        // to import into and two jobs spend it; the third job and the import are refused.
        await _server.EnsureTenantAsync("slow");
        using var manager = _server.CreateClient(await _server.CreatePrincipalWithTokenAsync("slow-key-manager", "slow", "key-manager"));
        using var importer = _server.CreateClient(await _server.CreatePrincipalWithTokenAsync("slow-importer", "slow", "key-importer"));
        var key = await manager.CreateKeyAsync("tenants/slow", "imported", new Key { Purpose = KeyPurpose.EncryptDecrypt, AllowImport = true });
        var job = await importer.CreateImportJobAsync("tenants/slow", "job-1", ImportMethod.RsaOaep3072Sha1Aes256);
        await importer.CreateImportJobAsync("tenants/slow", "job-2", ImportMethod.RsaOaep3072Sha1Aes256);

        var jobRefused = await Assert.ThrowsAsync<RpcException>(() => importer.CreateImportJobAsync("tenants/slow", "job-3", ImportMethod.RsaOaep3072Sha1Aes256));
        Assert.Equal(StatusCode.ResourceExhausted, jobRefused.StatusCode);
        Assert.NotNull(jobRefused.GetRpcStatus()!.GetDetail<RetryInfo>());
        var wrapped = Kms.Client.KeyImport.Wrap(job.PublicKeyDer.Span, ImportMethod.RsaOaep3072Sha1Aes256, new byte[32]);
        var importRefused = await Assert.ThrowsAsync<RpcException>(() => importer.ImportKeyVersionAsync(key.Name, job.Name, wrapped));
        Assert.Equal(StatusCode.ResourceExhausted, importRefused.StatusCode);
    }

    [Fact]
    public async Task ImportKeyVersion_ThroughAnAlias_InvalidArgument_NothingImported_TheKeyBehindItNotNamed()
    {
        // A key-importer may not read aliases. Imported through one, the answer (the version
        // added, tenants/T/keys/K/versions/N) told them which key the alias names: an alias is
        // refused as the parent, as AWS and Google Cloud import into a key.
        using var manager = _server.CreateClient(await _server.CreatePrincipalWithTokenAsync("acme-byok-manager", "acme", "key-manager"));
        using var importer = _server.CreateClient(await _server.CreatePrincipalWithTokenAsync("acme-importer", "acme", "key-importer"));
        var key = await manager.CreateKeyAsync("tenants/acme", "byok-7f3a", new Key { Purpose = KeyPurpose.EncryptDecrypt, AllowImport = true });
        var alias = await manager.CreateAliasAsync("tenants/acme", "payments", key.Name);
        Assert.Equal(StatusCode.PermissionDenied, (await Assert.ThrowsAsync<RpcException>(() => importer.GetAliasAsync(alias.Name))).StatusCode);
        var job = await importer.CreateImportJobAsync("tenants/acme", "job-alias", ImportMethod.RsaOaep3072Sha1Aes256);
        var wrapped = Kms.Client.KeyImport.Wrap(job.PublicKeyDer.Span, ImportMethod.RsaOaep3072Sha1Aes256, new byte[32]);

        var refused = await Assert.ThrowsAsync<RpcException>(() => importer.ImportKeyVersionAsync(alias.Name, job.Name, wrapped));

        Assert.Equal(StatusCode.InvalidArgument, refused.StatusCode);
        Assert.Contains("parent: must be a key", refused.Status.Detail, StringComparison.Ordinal);
        Assert.Contains("alias", refused.Status.Detail, StringComparison.Ordinal);
        Assert.DoesNotContain("byok-7f3a", refused.Status.Detail, StringComparison.Ordinal);
        Assert.EndsWith("/versions/1", (await manager.GetKeyAsync(key.Name)).Primary.Name, StringComparison.Ordinal);

        // Into the key itself, the import is taken.
        var imported = await importer.ImportKeyVersionAsync(key.Name, job.Name, wrapped);
        Assert.Equal(key.Name + "/versions/2", imported.Name);
    }

    [Fact]
    public async Task GetKeyAttestation_ThroughAnAlias_WithoutAliasRead_PermissionDenied_TheKeyBehindItNotNamed()
    {
        // A key-importer reads keys (kms.keys.read), not aliases. The statement names the version
        // it attests (tenants/T/keys/K/versions/N): taken through an alias, it told them which key
        // the alias names, as an import through one did (claim 95). An alias is resolved for
        // GetKeyAttestation only for a caller that may read aliases; decided from the request
        // alone, so a missing alias gets the same answer.
        using var manager = _server.CreateClient(await _server.CreatePrincipalWithTokenAsync("acme-attest-manager", "acme", "key-manager"));
        using var importer = _server.CreateClient(await _server.CreatePrincipalWithTokenAsync("acme-attest-importer", "acme", "key-importer"));
        var key = await manager.CreateKeyAsync("tenants/acme", "byok-attest-5c1e", new Key { Purpose = KeyPurpose.EncryptDecrypt, AllowImport = true });
        var alias = await manager.CreateAliasAsync("tenants/acme", "payments-attest", key.Name);

        var existing = await Assert.ThrowsAsync<RpcException>(() => importer.GetKeyAttestationAsync(alias.Name));
        var missing = await Assert.ThrowsAsync<RpcException>(() => importer.GetKeyAttestationAsync("tenants/acme/aliases/no-such-alias"));

        Assert.Equal(StatusCode.PermissionDenied, existing.StatusCode);
        Assert.Contains("kms.aliases.read", existing.Status.Detail, StringComparison.Ordinal);
        Assert.DoesNotContain("byok-attest-5c1e", existing.Status.Detail, StringComparison.Ordinal);
        Assert.Equal((missing.StatusCode, missing.Status.Detail.Replace("no-such-alias", "payments-attest", StringComparison.Ordinal)), (existing.StatusCode, existing.Status.Detail));

        // The key itself it may attest; a caller that may read aliases, through the alias too.
        Assert.Equal(key.Name + "/versions/1", AttestedVersion(await importer.GetKeyAttestationAsync(key.Name)));
        Assert.Equal(key.Name + "/versions/1", AttestedVersion(await manager.GetKeyAttestationAsync(alias.Name)));

        static string AttestedVersion(GetKeyAttestationResponse response) =>
            System.Text.Json.JsonDocument.Parse(response.Statement.Memory).RootElement.GetProperty("keyVersion").GetString()!;
    }

    [Fact]
    public async Task Quota_ABatchOverTheItemLimit_IsRefusedAndCostsOne_NotItsItems()
    {
        // 10,000 empty items fit in 20 KB; charged per item before the handler refused the
        // batch, they drained the tenant's quota for every caller of it.
        await _server.EnsureTenantAsync("slow");
        using var flooder = _server.CreateClient(await _server.CreatePrincipalWithTokenAsync("batch-flooder", "slow", "key-user"));
        using var neighbour = _server.CreateClient(await _server.CreatePrincipalWithTokenAsync("slow-neighbour", "slow", "key-user"));
        var batch = new BatchDecryptRequest();
        batch.Requests.AddRange(Enumerable.Range(0, 10_000).Select(_ => new DecryptRequest()));

        var refused = await Assert.ThrowsAsync<RpcException>(() => flooder.BatchDecryptAsync(batch));
        Assert.Equal(StatusCode.InvalidArgument, refused.StatusCode);

        Assert.Equal(8, (await neighbour.GenerateRandomAsync(8)).Length);
        Assert.Equal(8, (await neighbour.GenerateRandomAsync(8)).Length);
        Assert.Equal(StatusCode.ResourceExhausted, (await Assert.ThrowsAsync<RpcException>(() => neighbour.GenerateRandomAsync(8))).StatusCode);
    }

    [Fact]
    public async Task BearerJwt_NoIssuerConfigured_Unauthenticated()
    {
        // A well-formed, validly signed JWT means nothing to a server that trusts no issuer.
        using var key = System.Security.Cryptography.ECDsa.Create(System.Security.Cryptography.ECCurve.NamedCurves.nistP256);
        using var client = _server.CreateClient(TestJwt.Sign(TestJwt.Claims(DateTimeOffset.UtcNow), key, "ES256"));
        Assert.Equal(StatusCode.Unauthenticated, (await Assert.ThrowsAsync<RpcException>(() => client.GenerateRandomAsync(8))).StatusCode);
    }

    [Fact]
    public async Task BootstrapCredential_WorksOnce_ForBootstrapOnly_AndNotWhileAnAdminExists()
    {
        var access = _server.Services.GetRequiredService<AccessService>();
        Assert.Null(await access.RenewBootstrapTokenAsync(default));

        // No deployment admin left (the API refuses to remove the last one: an edit of the database
        // gets here): now a bootstrap credential can be issued.
        await RemoveEveryDeploymentAdminFromTheDatabaseAsync();
        var bootstrap = await access.RenewBootstrapTokenAsync(default);
        Assert.NotNull(bootstrap);
        using var client = _server.CreateClient(bootstrap);

        var other = await Assert.ThrowsAsync<RpcException>(async () => await client.Access.ListTenantsAsync(new ListTenantsRequest()));
        Assert.Equal(StatusCode.PermissionDenied, other.StatusCode);

        // A workload identity (which never carries an administrative role) is refused, the credential kept.
        var workload = await Assert.ThrowsAsync<RpcException>(async () => await client.Access.BootstrapAsync(new BootstrapRequest { Admin = "jwt:k8s:system:serviceaccount:kms:admin" }));
        Assert.Equal(StatusCode.InvalidArgument, workload.StatusCode);

        var first = await client.Access.BootstrapAsync(new BootstrapRequest { Admin = "token:first-admin", DisplayName = "first admin" });
        Assert.Equal("token:first-admin", first.Admin.Name);
        using var firstAdmin = _server.CreateClient(first.SessionToken);
        Assert.Contains((await firstAdmin.Access.ListTenantsAsync(new ListTenantsRequest())).Tenants, t => t.Name == "tenants/dev");

        var second = await Assert.ThrowsAsync<RpcException>(async () => await client.Access.BootstrapAsync(new BootstrapRequest { Admin = "token:second-admin" }));
        Assert.Equal(StatusCode.Unauthenticated, second.StatusCode);
        Assert.Null(await access.RenewBootstrapTokenAsync(default));
        var admins = await firstAdmin.Access.ListRoleBindingsAsync(new ListRoleBindingsRequest());
        Assert.Equal(["token:first-admin"], admins.Bindings.Where(b => b.Role == "deployment-admin").Select(b => b.Principal));
    }

    [Fact]
    public async Task DeleteRoleBinding_OfTheLastDeploymentAdmin_FailedPrecondition_TheAdminKeepsManaging()
    {
        // Removing its own binding, or another admin removing it: either would leave nobody to
        // manage tenants, principals and bindings.
        var refused = await Assert.ThrowsAsync<RpcException>(async () => await _admin.Access.DeleteRoleBindingAsync(
            new DeleteRoleBindingRequest { Principal = "token:dev-admin", Role = "deployment-admin" }));
        Assert.Equal(StatusCode.FailedPrecondition, refused.StatusCode);
        Assert.Equal("token:dev-admin is the last principal holding deployment-admin; bind deployment-admin to another principal first, then remove it", refused.Status.Detail);
        Assert.Contains((await _admin.Access.ListRoleBindingsAsync(new ListRoleBindingsRequest())).Bindings,
            b => b.Principal == "token:dev-admin" && b.Role == "deployment-admin");
        Assert.Contains((await _admin.Access.ListTenantsAsync(new ListTenantsRequest())).Tenants, t => t.Name == "tenants/dev");

        // With a second admin bound first, the first may go, and the second is then the last.
        await _admin.Access.CreatePrincipalAsync(new CreatePrincipalRequest { Name = "token:next-admin" });
        await _admin.Access.SetRoleBindingAsync(new SetRoleBindingRequest { Principal = "token:next-admin", Role = "deployment-admin" });
        var session = await _admin.Access.CreateApiTokenAsync(new CreateApiTokenRequest { Principal = "token:next-admin", Kind = "SESSION" });
        using var next = _server.CreateClient(session.Secret);
        await next.Access.DeleteRoleBindingAsync(new DeleteRoleBindingRequest { Principal = "token:dev-admin", Role = "deployment-admin" });
        var own = await Assert.ThrowsAsync<RpcException>(async () => await next.Access.DeleteRoleBindingAsync(
            new DeleteRoleBindingRequest { Principal = "token:next-admin", Role = "deployment-admin" }));
        Assert.Equal(StatusCode.FailedPrecondition, own.StatusCode);
        Assert.Equal(["token:next-admin"], (await next.Access.ListRoleBindingsAsync(new ListRoleBindingsRequest())).Bindings
            .Where(b => b.Role == "deployment-admin").Select(b => b.Principal));
    }

    [Fact]
    public async Task PrincipalNamesThatLookLikeAnother_RefusedAtEveryEntry_ARegisteredOneStillListedAndDeleted()
    {
        // "Rene" + U+0301 shows as cn:Ren\u00e9; with a zero-width space, cn:alice: before, each was a
        // principal of its own, with its own roles, grants and audit trail.
        foreach (var name in new[] { "cn:Rene\u0301", "cn:al\u200Bice", "spiffe:spiffe://kms.test/caf\u0065\u0301" })
        {
            await AssertNamed("name", () => _admin.Access.CreatePrincipalAsync(new CreatePrincipalRequest { Name = name, Tenant = "tenants/dev" }).ResponseAsync);
            await AssertNamed("principal", () => _admin.Access.SetRoleBindingAsync(new SetRoleBindingRequest { Principal = name, Role = "key-user", Tenant = "tenants/dev" }).ResponseAsync);
        }

        var key = await _developer.CreateKeyAsync("tenants/dev", "nfc");
        await AssertNamed("grant.grantee", () => _developer.Raw.CreateGrantAsync(new CreateGrantRequest
        {
            Parent = key.Name,
            Grant = new KeyGrant { Grantee = "cn:Rene\u0301", Operations = { "DECRYPT" } },
        }).ResponseAsync);
        Assert.DoesNotContain((await _admin.Access.ListPrincipalsAsync(new ListPrincipalsRequest { Tenant = "tenants/dev", PageSize = 1000 })).Principals,
            p => p.Name.StartsWith("cn:Rene", StringComparison.Ordinal) || p.Name.StartsWith("cn:al", StringComparison.Ordinal));

        // The composed name is a name.
        await _admin.Access.CreatePrincipalAsync(new CreatePrincipalRequest { Name = "cn:Ren\u00e9", Tenant = "tenants/dev" });

        // One registered before the rule is still read, found and deleted.
        await _server.Services.GetRequiredService<Kms.Core.Ports.IAccessStore>().CreatePrincipalAsync(
            new Kms.Core.Access.Principal(Kms.Core.Access.PrincipalName.CommonName("old\u0301"), Kms.Core.Names.TenantId.Parse("dev"), "", _time.GetUtcNow()), default);
        Assert.Contains((await _admin.Access.ListPrincipalsAsync(new ListPrincipalsRequest { Tenant = "tenants/dev", PageSize = 1000 })).Principals, p => p.Name == "cn:old\u0301");
        Assert.Equal("cn:old\u0301", (await _admin.Access.GetPrincipalAsync(new GetPrincipalRequest { Name = "cn:old\u0301" })).Principal.Name);
        await _admin.Access.DeletePrincipalAsync(new DeletePrincipalRequest { Name = "cn:old\u0301" });

        static async Task AssertNamed(string field, Func<Task> call)
        {
            var e = await Assert.ThrowsAsync<RpcException>(call);
            Assert.Equal(StatusCode.InvalidArgument, e.StatusCode);
            Assert.StartsWith(field + ":", e.Status.Detail, StringComparison.Ordinal);
        }
    }

    [Fact]
    public async Task PrincipalNamesOfLettersThatLookLikeOtherScripts_RefusedAtEveryEntry_ARegisteredOneStillListedAndDeleted()
    {
        // cn:p\u0430yments with a Cyrillic "\u0430" prints as cn:payments: before, another principal
        // with its own roles, grants and audit trail.
        const string mixed = "cn:p\u0430yments";
        await AssertNamed("name", () => _admin.Access.CreatePrincipalAsync(new CreatePrincipalRequest { Name = mixed, Tenant = "tenants/dev" }).ResponseAsync);
        await AssertNamed("principal", () => _admin.Access.SetRoleBindingAsync(new SetRoleBindingRequest { Principal = mixed, Role = "key-user", Tenant = "tenants/dev" }).ResponseAsync);
        var key = await _developer.CreateKeyAsync("tenants/dev", "scripts");
        await AssertNamed("grant.grantee", () => _developer.Raw.CreateGrantAsync(new CreateGrantRequest
        {
            Parent = key.Name,
            Grant = new KeyGrant { Grantee = mixed, Operations = { "DECRYPT" } },
        }).ResponseAsync);

        // All-Cyrillic cn:\u0455\u0440\u0430\u0441\u0435 is of one script, but prints as cn:space, registered before it.
        await _admin.Access.CreatePrincipalAsync(new CreatePrincipalRequest { Name = "cn:space", Tenant = "tenants/dev" });
        var alike = await Assert.ThrowsAsync<RpcException>(async () => await _admin.Access.CreatePrincipalAsync(new CreatePrincipalRequest { Name = "cn:\u0455\u0440\u0430\u0441\u0435", Tenant = "tenants/dev" }));
        Assert.Equal(StatusCode.InvalidArgument, alike.StatusCode);
        Assert.StartsWith("name: cn:\u0455\u0440\u0430\u0441\u0435 prints like the principal cn:space of the same tenant", alike.Status.Detail, StringComparison.Ordinal);
        Assert.DoesNotContain((await _admin.Access.ListPrincipalsAsync(new ListPrincipalsRequest { Tenant = "tenants/dev", PageSize = 1000 })).Principals,
            p => p.Name is mixed or "cn:\u0455\u0440\u0430\u0441\u0435");

        // A name of one script is a name: Cyrillic, or Latin with digits and punctuation.
        await _admin.Access.CreatePrincipalAsync(new CreatePrincipalRequest { Name = "cn:\u041E\u043B\u044C\u0433\u0430", Tenant = "tenants/dev" });
        await _admin.Access.CreatePrincipalAsync(new CreatePrincipalRequest { Name = "cn:payments-01.example", Tenant = "tenants/dev" });

        // One registered before the rule is still read, found and deleted.
        await _server.Services.GetRequiredService<Kms.Core.Ports.IAccessStore>().CreatePrincipalAsync(
            new Kms.Core.Access.Principal(Kms.Core.Access.PrincipalName.CommonName("p\u0430yments"), Kms.Core.Names.TenantId.Parse("dev"), "", _time.GetUtcNow()), default);
        Assert.Contains((await _admin.Access.ListPrincipalsAsync(new ListPrincipalsRequest { Tenant = "tenants/dev", PageSize = 1000 })).Principals, p => p.Name == mixed);
        Assert.Equal(mixed, (await _admin.Access.GetPrincipalAsync(new GetPrincipalRequest { Name = mixed })).Principal.Name);
        await _admin.Access.DeletePrincipalAsync(new DeletePrincipalRequest { Name = mixed });

        static async Task AssertNamed(string field, Func<Task> call)
        {
            var e = await Assert.ThrowsAsync<RpcException>(call);
            Assert.Equal(StatusCode.InvalidArgument, e.StatusCode);
            Assert.StartsWith(field + ": a principal name's letters must not mix scripts whose letters look alike", e.Status.Detail, StringComparison.Ordinal);
            Assert.Contains("U+0430 (Cyrillic) stands among Latin letters", e.Status.Detail, StringComparison.Ordinal);
        }
    }

    [Fact]
    public async Task StrayBootstrapCredential_WhileAnAdminExists_GrantsNothing_AndIsRevokedAtTheNextStart()
    {
        // What two nodes starting at once on an empty database leave behind: a second credential,
        // still valid, after the first one made the deployment admin.
        var access = _server.Services.GetRequiredService<AccessService>();
        await RemoveEveryDeploymentAdminFromTheDatabaseAsync();
        var stray = await access.RenewBootstrapTokenAsync(default);
        Assert.NotNull(stray);
        await _server.Services.GetRequiredService<Kms.Core.Ports.IAccessStore>().SetRoleBindingAsync(
            new Kms.Core.Access.RoleBinding(Kms.Core.Access.PrincipalName.Parse("token:dev-admin", "principal"), Kms.Core.Access.Role.DeploymentAdmin, null, _time.GetUtcNow()), default);

        using var client = _server.CreateClient(stray);
        var refused = await Assert.ThrowsAsync<RpcException>(async () => await client.Access.BootstrapAsync(new BootstrapRequest { Admin = "token:second-admin" }));
        Assert.Equal(StatusCode.FailedPrecondition, refused.StatusCode);
        var admins = await _admin.Access.ListRoleBindingsAsync(new ListRoleBindingsRequest());
        Assert.Equal(["token:dev-admin"], admins.Bindings.Where(b => b.Role == "deployment-admin").Select(b => b.Principal));

        // The next start revokes it.
        Assert.Null(await access.RenewBootstrapTokenAsync(default));
        var tokens = await _server.Services.GetRequiredService<Kms.Core.Ports.IAccessStore>().ListApiTokensAsync(Authenticator.BootstrapPrincipal, default);
        Assert.NotEmpty(tokens);
        Assert.All(tokens, t => Assert.NotNull(t.RevokeTime));
    }

    [Fact]
    public async Task DeleteTenant_SchedulesEveryKeyForDeletion_AndRefusesNewKeys()
    {
        await _server.EnsureTenantAsync("leaving");
        using var leaving = _server.CreateClient(await _server.CreatePrincipalWithTokenAsync("leaving-manager", "leaving", "key-manager"));
        var a = await leaving.CreateKeyAsync("tenants/leaving", "a");
        var b = await leaving.CreateKeyAsync("tenants/leaving", "b");

        var deleted = await _admin.Access.DeleteTenantAsync(new DeleteTenantRequest { Name = "tenants/leaving", WaitingPeriod = Duration.FromTimeSpan(TimeSpan.FromDays(7)) });
        Assert.Equal("DELETING", deleted.Tenant.State);
        var keys = _server.Services.GetRequiredService<Kms.Core.Ports.IKeyStore>();
        foreach (var key in new[] { a, b })
        {
            var now = (await keys.GetKeyAsync(Kms.Core.Names.KeyName.Parse(key.Name, "name"), default))!;
            Assert.Equal(Kms.Core.Keys.KeyState.DestroyScheduled, now.State);
            Assert.Equal(_time.GetUtcNow() + TimeSpan.FromDays(7), now.DestroyTime);
        }

        // No key, nor an alias (which would name a key after the tenant is gone), nor a revived key:
        // the tenant's principals are refused whatever they ask (DeletingTenant_… below).
        var create = await Assert.ThrowsAsync<RpcException>(() => leaving.CreateKeyAsync("tenants/leaving", "c"));
        var alias = await Assert.ThrowsAsync<RpcException>(async () => await leaving.Raw.CreateAliasAsync(
            new CreateAliasRequest { Parent = "tenants/leaving", AliasId = "late", Alias = new Alias { Key = a.Name } }));
        var cancel = await Assert.ThrowsAsync<RpcException>(async () => await leaving.Raw.CancelKeyDeletionAsync(new CancelKeyDeletionRequest { Name = a.Name }));

        // Nor does anyone give its principals new roles or credentials.
        var role = await Assert.ThrowsAsync<RpcException>(async () => await _admin.Access.SetRoleBindingAsync(
            new SetRoleBindingRequest { Principal = "token:leaving-manager", Role = "auditor", Tenant = "tenants/leaving" }));
        var token = await Assert.ThrowsAsync<RpcException>(async () => await _admin.Access.CreateApiTokenAsync(
            new CreateApiTokenRequest { Principal = "token:leaving-manager", Kind = "SESSION" }));
        Assert.All(new[] { create, alias, cancel, role, token }, e =>
        {
            Assert.Equal(StatusCode.FailedPrecondition, e.StatusCode);
            Assert.Contains("tenants/leaving is being deleted", e.Status.Detail, StringComparison.Ordinal);
        });
        Assert.Empty(await keys.ListAliasesAsync(Kms.Core.Names.TenantId.Parse("leaving"), null, 10, default));
        Assert.Equal(Kms.Core.Keys.KeyState.DestroyScheduled, (await keys.GetKeyAsync(Kms.Core.Names.KeyName.Parse(a.Name, "name"), default))!.State);
    }

    [Fact]
    public async Task DeletingTenant_EveryCallOfItsPrincipalsRefused_FailedPrecondition_DeploymentPrincipalsStillReadAndFinishIt()
    {
        await _server.EnsureTenantAsync("closing");
        using var manager = _server.CreateClient(await _server.CreatePrincipalWithTokenAsync("closing-manager", "closing", "key-manager", "key-user", "auditor"));
        // A principal whose token has never been used, so nothing of it is remembered.
        using var unused = _server.CreateClient(await _server.CreatePrincipalWithTokenAsync("closing-app", "closing", "key-user"));
        var key = await manager.CreateKeyAsync("tenants/closing", "k");
        var other = await manager.CreateKeyAsync("tenants/closing", "other");
        await manager.Raw.CreateAliasAsync(new CreateAliasRequest { Parent = "tenants/closing", AliasId = "current", Alias = new Alias { Key = key.Name } });
        var blob = (await manager.EncryptAsync(key.Name, "record"u8.ToArray())).Ciphertext;
        Assert.Equal(8, (await manager.GenerateRandomAsync(8)).Length);

        await _admin.Access.DeleteTenantAsync(new DeleteTenantRequest { Name = "tenants/closing" });

        // Mutations that no tenant check refused before (a policy, an alias moved), reads, crypto
        // without a key: one answer, before any permission is looked at.
        var calls = new Func<Task>[]
        {
            async () => await manager.Raw.SetKeyPolicyAsync(new SetKeyPolicyRequest { Name = key.Name, Entries = { new KeyPolicyEntry { Principal = "token:closing-manager", Operations = { "DECRYPT" } } } }),
            async () => await manager.Raw.UpdateAliasAsync(new UpdateAliasRequest { Name = "tenants/closing/aliases/current", Key = other.Name }),
            async () => await manager.Raw.CreateGrantAsync(new CreateGrantRequest { Parent = key.Name, Grant = new KeyGrant { Grantee = "token:closing-app", Operations = { "DECRYPT" } } }),
            () => manager.GetKeyAsync(key.Name),
            async () => await manager.ListKeysAsync("tenants/closing").ToListAsync(),
            () => manager.DecryptAsync(blob),
            () => manager.GenerateRandomAsync(8),
            async () => await manager.Audit.ListAuditEventsAsync(new ListAuditEventsRequest { Tenant = "tenants/closing" }),
            () => unused.GenerateRandomAsync(8),
        };
        foreach (var call in calls)
        {
            var refused = await Assert.ThrowsAsync<RpcException>(call);
            Assert.Equal(StatusCode.FailedPrecondition, refused.StatusCode);
            Assert.Equal("tenants/closing is being deleted; its principals' calls are refused", refused.Status.Detail);
        }

        var keys = _server.Services.GetRequiredService<Kms.Core.Ports.IKeyStore>();
        Assert.Equal(key.Name, (await keys.GetAliasAsync(Kms.Core.Names.AliasName.Parse("tenants/closing/aliases/current", "name"), default))!.Key.ToString());
        Assert.False((await keys.GetKeyAsync(Kms.Core.Names.KeyName.Parse(key.Name, "name"), default))!.Restricted);

        // Deployment principals still read the tenant, resume its deletion, revoke its credentials;
        // other tenants are not touched.
        Assert.Equal("DELETING", (await _admin.Access.GetTenantAsync(new GetTenantRequest { Name = "tenants/closing" })).Tenant.State);
        Assert.Contains((await _admin.Access.ListRoleBindingsAsync(new ListRoleBindingsRequest { Tenant = "tenants/closing" })).Bindings, b => b.Principal == "token:closing-manager");
        Assert.Equal("DELETING", (await _admin.Access.DeleteTenantAsync(new DeleteTenantRequest { Name = "tenants/closing" })).Tenant.State);
        var tokens = await _admin.Access.ListApiTokensAsync(new ListApiTokensRequest { Principal = "token:closing-app" });
        await _admin.Access.RevokeApiTokenAsync(new RevokeApiTokenRequest { Id = tokens.Tokens[0].Id });
        Assert.Equal(8, (await _developer.GenerateRandomAsync(8)).Length);
    }

    [Fact]
    public async Task CancelTenantDeletion_ItsPrincipalsServedAgain_KeysStayScheduledUntilTheirManagersCancelEach()
    {
        await _server.EnsureTenantAsync("regret");
        using var manager = _server.CreateClient(await _server.CreatePrincipalWithTokenAsync("regret-manager", "regret", "key-manager", "key-user"));
        var key = await manager.CreateKeyAsync("tenants/regret", "k");
        var other = await manager.CreateKeyAsync("tenants/regret", "other");
        var blob = (await manager.EncryptAsync(key.Name, "record"u8.ToArray())).Ciphertext;
        await _admin.Access.DeleteTenantAsync(new DeleteTenantRequest { Name = "tenants/regret", WaitingPeriod = Duration.FromTimeSpan(TimeSpan.FromDays(7)) });
        var destroyAt = _time.GetUtcNow() + TimeSpan.FromDays(7);
        Assert.Equal(StatusCode.FailedPrecondition, (await Assert.ThrowsAsync<RpcException>(() => manager.GetKeyAsync(key.Name))).StatusCode);

        // Only a deployment admin may stop it.
        var denied = await Assert.ThrowsAsync<RpcException>(async () => await manager.Access.CancelTenantDeletionAsync(new CancelTenantDeletionRequest { Name = "tenants/regret" }));
        Assert.Equal(StatusCode.FailedPrecondition, denied.StatusCode);
        var cancelled = await _admin.Access.CancelTenantDeletionAsync(new CancelTenantDeletionRequest { Name = "tenants/regret" });

        Assert.Equal(("ACTIVE", (Timestamp?)null), (cancelled.Tenant.State, cancelled.Tenant.DeleteTime));
        Assert.Equal((2, destroyAt), (cancelled.ScheduledKeys, cancelled.EarliestDestroyTime.ToDateTimeOffset()));

        // Its principal is served at once on this node (it was remembered while refused); its keys
        // are still going until the manager cancels each, and the one cancelled decrypts again.
        Assert.Equal(KeyState.DestroyScheduled, (await manager.GetKeyAsync(other.Name)).State);
        await manager.Raw.CancelKeyDeletionAsync(new CancelKeyDeletionRequest { Name = key.Name });
        await manager.Raw.EnableKeyAsync(new EnableKeyRequest { Name = key.Name });
        using (var plaintext = await manager.DecryptAsync(blob))
        {
            Assert.Equal("record"u8.ToArray(), plaintext.Plaintext.ToArray());
        }

        Assert.Equal(KeyState.DestroyScheduled, (await manager.GetKeyAsync(other.Name)).State);
        var again = await _admin.Access.CancelTenantDeletionAsync(new CancelTenantDeletionRequest { Name = "tenants/regret" });
        Assert.Equal(("ACTIVE", 1), (again.Tenant.State, again.ScheduledKeys));
        Assert.Equal(StatusCode.NotFound, (await Assert.ThrowsAsync<RpcException>(async () =>
            await _admin.Access.CancelTenantDeletionAsync(new CancelTenantDeletionRequest { Name = "tenants/never-was" }))).StatusCode);
    }

    [Fact]
    public async Task DevTokens_AreFilesOnlyTheOwnerCanRead()
    {
        foreach (var file in new[] { "developer.token", "key-user.token", "deployment-admin.token" })
        {
            var path = Path.Combine(_server.DataDir, "tokens", file);
            Assert.Equal(UnixFileMode.UserRead | UnixFileMode.UserWrite, File.GetUnixFileMode(path));
            Assert.StartsWith("kms_", File.ReadAllText(path), StringComparison.Ordinal);
        }

        Assert.Equal(UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute, File.GetUnixFileMode(Path.Combine(_server.DataDir, "tokens")));
        Assert.Contains("developer.token", _server.Logs.AllText, StringComparison.Ordinal);
        Assert.DoesNotContain(_server.DeveloperToken, _server.Logs.AllText, StringComparison.Ordinal);
    }

    [Fact]
    public async Task DevMode_ItsTenantDeleted_StillStarts_WithoutNewTokensInIt()
    {
        var server = await KmsTestServer.StartAsync();
        using (var admin = server.CreateClient(server.DeploymentAdminToken))
        {
            await admin.Access.DeleteTenantAsync(new DeleteTenantRequest { Name = "tenants/dev" });
        }

        // A lost developer token would be issued again at the next start: the store refuses a
        // token in a tenant being deleted, which must not stop the server from starting.
        File.Delete(Path.Combine(server.DataDir, "tokens", "developer.token"));
        server = await server.RestartAsync();
        await using (server)
        {
            Assert.False(File.Exists(Path.Combine(server.DataDir, "tokens", "developer.token")));
            Assert.Contains("is being deleted, so its developer and key-user tokens are not issued again", server.Logs.AllText, StringComparison.Ordinal);
            using var admin = server.CreateClient(server.DeploymentAdminToken);
            Assert.Equal("DELETING", (await admin.Access.GetTenantAsync(new GetTenantRequest { Name = "tenants/dev" })).Tenant.State);
        }
    }

    // The state the API no longer reaches: no deployment admin at all (the recovery path of
    // docs/access-control.md, an edit of the database, then a start that issues a bootstrap credential).
    private async Task RemoveEveryDeploymentAdminFromTheDatabaseAsync()
    {
        await using var connection = new Microsoft.Data.Sqlite.SqliteConnection($"Data Source={_server.DatabasePath}");
        await connection.OpenAsync();
        await using var delete = connection.CreateCommand();
        // The statement docs/access-control.md gives, word for word.
        Assert.Equal(4, (int)Kms.Core.Access.Role.DeploymentAdmin);
        delete.CommandText = "DELETE FROM role_bindings WHERE role = 4 AND tenant = ''";
        Assert.Equal(1, await delete.ExecuteNonQueryAsync());
    }

    private async Task<CreateApiTokenResponse> CreateTokenAsync(string principal, string tenant, string kind, TimeSpan? lifetime, params string[] roles)
    {
        await _admin.Access.CreatePrincipalAsync(new CreatePrincipalRequest { Name = principal, Tenant = $"tenants/{tenant}" });
        foreach (var role in roles)
        {
            await _admin.Access.SetRoleBindingAsync(new SetRoleBindingRequest { Principal = principal, Role = role, Tenant = $"tenants/{tenant}" });
        }

        return await _admin.Access.CreateApiTokenAsync(new CreateApiTokenRequest
        {
            Principal = principal,
            Kind = kind,
            Lifetime = lifetime is { } value ? Duration.FromTimeSpan(value) : null,
        });
    }

    private static void AssertTheOneUnauthenticatedAnswer(global::Grpc.Core.Status status)
    {
        Assert.Equal(StatusCode.Unauthenticated, status.StatusCode);
        Assert.Equal(UnauthenticatedMessage, status.Detail);
    }

    private async Task<global::Grpc.Core.Status> CallGenerateRandomAsync(string? authorization)
    {
        using var channel = _server.CreateChannel();
        var headers = authorization is null ? null : new Metadata { { "authorization", authorization } };
        try
        {
            await new KeyManagementService.KeyManagementServiceClient(channel).GenerateRandomAsync(new GenerateRandomRequest { LengthBytes = 8 }, headers);
            return global::Grpc.Core.Status.DefaultSuccess;
        }
        catch (RpcException e)
        {
            return e.Status;
        }
    }
}
