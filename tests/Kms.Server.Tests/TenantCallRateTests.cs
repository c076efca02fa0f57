using Google.Rpc;
using Grpc.Core;
using Kms.Contracts.V1;
using Kms.Testing;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.DependencyInjection.Extensions;
using Microsoft.Extensions.Time.Testing;

namespace Kms.Server.Tests;

/// <summary>
/// A tenant's calls other than crypto operations — reads and management, an auditor's
/// ListAuditEvents — have a rate of their own (<c>Kms:Quotas:OtherCallsPerSecond</c>, SECURITY.md
/// claim 144), on a bucket apart from the tenant's crypto quota. Before, only the tenant's crypto was
/// metered: its principals could list keys or page its audit as fast as the node answered. Each
/// principal may spend only a share of that bucket (<c>Kms:Quotas:OtherCallsPrincipalShare</c>), so a
/// runaway token leaves the tenant's other principals the rest.
/// </summary>
public sealed class TenantCallRateTests
{
    [Fact]
    public async Task TenantPastItsRateOfOtherCalls_ReadsRefusedResourceExhausted_CryptoAndOtherTenantsServed_ServedAgainOnceRefilled()
    {
        var time = new FakeTimeProvider(DateTimeOffset.UtcNow);
        await using var server = await KmsTestServer.StartAsync(null, null, "dev",
            services => services.Replace(ServiceDescriptor.Singleton<TimeProvider>(time)),
            "--Kms:Quotas:OtherCallsPerSecond=1", "--Kms:Quotas:OtherCallsBurst=3",
            "--Kms:Quotas:Tenants:roomy:OtherCallsPerSecond=1000",
            "--Kms:Quotas:OtherCallsPrincipalShare=1"); // the tenant's bucket alone, as if one principal made every call
        using (var admin = server.DeploymentAdmin())
        {
            await admin.Access.CreateTenantAsync(new CreateTenantRequest { TenantId = "roomy" });
        }

        var roomyToken = await server.CreatePrincipalWithTokenAsync("roomy-user", "roomy", "key-manager", "key-user", "auditor");
        var devAuditor = KmsTestServer.Bearer(await server.CreatePrincipalWithTokenAsync("dev-auditor", "dev", "auditor"));
        using var channel = server.CreateChannel();
        var keys = new KeyManagementService.KeyManagementServiceClient(channel);
        var audit = new AuditService.AuditServiceClient(channel);
        var developer = KmsTestServer.Bearer(server.DeveloperToken);
        var key = (await keys.CreateKeyAsync(new CreateKeyRequest { Parent = "tenants/dev", KeyId = "rated", Key = new Key { Purpose = KeyPurpose.EncryptDecrypt } }, developer)).Key;
        time.Advance(TimeSpan.FromSeconds(10)); // the setup's calls spent the bucket: full again

        // Three calls of the burst, whatever they are: a key read, a listing, the audit.
        await keys.GetKeyAsync(new GetKeyRequest { Name = key.Name }, developer);
        await keys.ListKeysAsync(new ListKeysRequest { Parent = "tenants/dev" }, developer);
        await audit.ListAuditEventsAsync(new ListAuditEventsRequest { Tenant = "tenants/dev", PageSize = 1 }, developer);

        var refused = await Assert.ThrowsAsync<RpcException>(async () => await keys.GetKeyAsync(new GetKeyRequest { Name = key.Name }, developer));
        Assert.Equal(StatusCode.ResourceExhausted, refused.StatusCode);
        Assert.Equal("the quota of tenants/dev for calls other than crypto operations is used up (Kms:Quotas:OtherCallsPerSecond); retry after 1000 ms", refused.Status.Detail);
        Assert.Equal(TimeSpan.FromSeconds(1), refused.GetRpcStatus()!.GetDetail<RetryInfo>().RetryDelay.ToTimeSpan());
        Assert.Contains(server.Logs.Events, line => line.Contains("Kms:Quotas:OtherCallsPerSecond", StringComparison.Ordinal) && line.Contains("dev", StringComparison.Ordinal));

        // Another principal of the tenant shares its bucket.
        Assert.Equal(StatusCode.ResourceExhausted, (await Assert.ThrowsAsync<RpcException>(async () =>
            await audit.ListAuditEventsAsync(new ListAuditEventsRequest { Tenant = "tenants/dev", PageSize = 1 }, devAuditor))).StatusCode);

        // Crypto spends the crypto quota, not this one; another tenant (with its own override) is served.
        for (var i = 0; i < 5; i++)
        {
            await keys.EncryptAsync(new EncryptRequest { Name = key.Name, Plaintext = Google.Protobuf.ByteString.CopyFrom(1) }, developer);
        }

        var roomy = KmsTestServer.Bearer(roomyToken);
        for (var i = 0; i < 10; i++)
        {
            await keys.ListKeysAsync(new ListKeysRequest { Parent = "tenants/roomy" }, roomy);
        }

        // A second later (the fake clock) dev has one call again, and only one.
        time.Advance(TimeSpan.FromSeconds(1));
        await audit.ListAuditEventsAsync(new ListAuditEventsRequest { Tenant = "tenants/dev", PageSize = 1 }, devAuditor);
        Assert.Equal(StatusCode.ResourceExhausted, (await Assert.ThrowsAsync<RpcException>(async () =>
            await keys.GetKeyAsync(new GetKeyRequest { Name = key.Name }, developer))).StatusCode);
    }

    [Fact]
    public async Task RunawayPrincipal_PastItsShare_RefusedAlone_TheTenantsAdminStillServed_RemovesItsBindings()
    {
        // The tenant's bucket: 1 call a second, 4 at once; each principal half of it (the default).
        var time = new FakeTimeProvider(DateTimeOffset.UtcNow);
        await using var server = await KmsTestServer.StartAsync(null, null, "dev",
            services => services.Replace(ServiceDescriptor.Singleton<TimeProvider>(time)),
            "--Kms:Quotas:OtherCallsPerSecond=1", "--Kms:Quotas:OtherCallsBurst=4");
        var runaway = KmsTestServer.Bearer(await server.CreatePrincipalWithTokenAsync("runaway", "dev", "key-manager"));
        using var channel = server.CreateChannel();
        var keys = new KeyManagementService.KeyManagementServiceClient(channel);
        var access = new AccessManagementService.AccessManagementServiceClient(channel);
        var admin = KmsTestServer.Bearer(server.DeveloperToken); // the tenant's admin and key manager
        time.Advance(TimeSpan.FromSeconds(10)); // every bucket full

        // A runaway client (or a leaked token) lists keys as fast as it can: two calls, then refused
        // for its share, however long it goes on.
        var served = 0;
        RpcException? refused = null;
        for (var i = 0; i < 20; i++)
        {
            try
            {
                await keys.ListKeysAsync(new ListKeysRequest { Parent = "tenants/dev" }, runaway);
                served++;
            }
            catch (RpcException e) when (e.StatusCode == StatusCode.ResourceExhausted)
            {
                refused ??= e;
            }
        }

        // The tenant's admin is still served — a listing, and the call that stops the runaway
        // token: its role bindings removed (a deployment admin may revoke the token itself, on a rate
        // of its own). With the tenant's bucket alone the runaway had taken all four calls.
        await keys.ListKeysAsync(new ListKeysRequest { Parent = "tenants/dev" }, admin);
        await access.DeleteRoleBindingAsync(new DeleteRoleBindingRequest { Principal = "token:runaway", Role = "key-manager", Tenant = "tenants/dev" }, admin);
        Assert.Equal(StatusCode.PermissionDenied, (await Assert.ThrowsAsync<RpcException>(async () =>
            await keys.ListKeysAsync(new ListKeysRequest { Parent = "tenants/dev" }, runaway))).StatusCode);

        Assert.Equal(2, served);
        Assert.NotNull(refused);
        Assert.Equal("token:runaway has used up its share of the quota of tenants/dev for calls other than crypto operations (Kms:Quotas:OtherCallsPrincipalShare of Kms:Quotas:OtherCallsPerSecond); retry after 2000 ms", refused.Status.Detail);
        Assert.Equal(TimeSpan.FromSeconds(2), refused.GetRpcStatus()!.GetDetail<RetryInfo>().RetryDelay.ToTimeSpan());
        Assert.Contains(server.Logs.Events, line => line.Contains("\"token:runaway\" used up its share", StringComparison.Ordinal)
            && line.Contains("(Kms:Quotas:OtherCallsPrincipalShare of Kms:Quotas:OtherCallsPerSecond)", StringComparison.Ordinal));
    }

    [Fact]
    public async Task ShareOfOne_TheBehaviourBefore_RunawaySpendsTheWholeBucket_TheTenantsAdminRefused()
    {
        var time = new FakeTimeProvider(DateTimeOffset.UtcNow);
        await using var server = await KmsTestServer.StartAsync(null, null, "dev",
            services => services.Replace(ServiceDescriptor.Singleton<TimeProvider>(time)),
            "--Kms:Quotas:OtherCallsPerSecond=1", "--Kms:Quotas:OtherCallsBurst=4", "--Kms:Quotas:OtherCallsPrincipalShare=1");
        var runaway = KmsTestServer.Bearer(await server.CreatePrincipalWithTokenAsync("runaway", "dev", "key-manager"));
        using var channel = server.CreateChannel();
        var keys = new KeyManagementService.KeyManagementServiceClient(channel);
        var access = new AccessManagementService.AccessManagementServiceClient(channel);
        var admin = KmsTestServer.Bearer(server.DeveloperToken);
        time.Advance(TimeSpan.FromSeconds(10));

        for (var i = 0; i < 4; i++)
        {
            await keys.ListKeysAsync(new ListKeysRequest { Parent = "tenants/dev" }, runaway);
        }

        var refused = await Assert.ThrowsAsync<RpcException>(async () =>
            await access.DeleteRoleBindingAsync(new DeleteRoleBindingRequest { Principal = "token:runaway", Role = "key-manager", Tenant = "tenants/dev" }, admin));
        Assert.Equal(StatusCode.ResourceExhausted, refused.StatusCode);
        Assert.Equal("the quota of tenants/dev for calls other than crypto operations is used up (Kms:Quotas:OtherCallsPerSecond); retry after 1000 ms", refused.Status.Detail);
    }

    [Fact]
    public async Task CryptoPrincipalShare_RunawayTokenPastItsShare_RefusedAlone_TheTenantsKeyManagerStillCreatesAndRotatesKeys()
    {
        // The crypto quota had no per-principal share: one token could spend all of it, CreateKey's
        // and RotateKey's too. Kms:Quotas:CryptoPrincipalShare (opt-in; 1 by default) gives each
        // principal half of the tenant's 1 operation a second, 4 at once.
        var time = new FakeTimeProvider(DateTimeOffset.UtcNow);
        await using var server = await KmsTestServer.StartAsync(null, null, "dev",
            services => services.Replace(ServiceDescriptor.Singleton<TimeProvider>(time)),
            "--Kms:Quotas:OperationsPerSecond=1", "--Kms:Quotas:Burst=4", "--Kms:Quotas:CryptoPrincipalShare=0.5");
        var runaway = KmsTestServer.Bearer(await server.CreatePrincipalWithTokenAsync("runaway", "dev", "key-user"));
        using var channel = server.CreateChannel();
        var keys = new KeyManagementService.KeyManagementServiceClient(channel);
        var admin = KmsTestServer.Bearer(server.DeveloperToken); // the tenant's admin and key manager
        var key = (await keys.CreateKeyAsync(new CreateKeyRequest { Parent = "tenants/dev", KeyId = "shared", Key = new Key { Purpose = KeyPurpose.EncryptDecrypt } }, admin)).Key;
        time.Advance(TimeSpan.FromSeconds(10)); // every bucket full

        var served = 0;
        RpcException? refused = null;
        for (var i = 0; i < 20; i++)
        {
            try
            {
                await keys.EncryptAsync(new EncryptRequest { Name = key.Name, Plaintext = Google.Protobuf.ByteString.CopyFrom(1) }, runaway);
                served++;
            }
            catch (RpcException e) when (e.StatusCode == StatusCode.ResourceExhausted)
            {
                refused ??= e;
            }
        }

        // The runaway's refusals spent none of the tenant's quota: its key manager creates a key and rotates it.
        await keys.CreateKeyAsync(new CreateKeyRequest { Parent = "tenants/dev", KeyId = "after", Key = new Key { Purpose = KeyPurpose.EncryptDecrypt } }, admin);
        await keys.RotateKeyAsync(new RotateKeyRequest { Name = key.Name }, admin);

        Assert.Equal(2, served);
        Assert.NotNull(refused);
        Assert.Equal("token:runaway has used up its share of the crypto-operation quota of tenants/dev (Kms:Quotas:CryptoPrincipalShare of Kms:Quotas:OperationsPerSecond); retry after 2000 ms", refused.Status.Detail);
        Assert.Equal(TimeSpan.FromSeconds(2), refused.GetRpcStatus()!.GetDetail<RetryInfo>().RetryDelay.ToTimeSpan());
        Assert.Contains(server.Logs.Events, line => line.Contains("\"token:runaway\" used up its share", StringComparison.Ordinal)
            && line.Contains("(Kms:Quotas:CryptoPrincipalShare of Kms:Quotas:OperationsPerSecond)", StringComparison.Ordinal));
    }

    [Fact]
    public async Task TenantWithAnOverride_Refusals_NameTheOverride_CryptoAndOtherCalls()
    {
        // The refusals named the deployment's option even when the tenant's override had limited it.
        var time = new FakeTimeProvider(DateTimeOffset.UtcNow);
        await using var server = await KmsTestServer.StartAsync(null, null, "dev",
            services => services.Replace(ServiceDescriptor.Singleton<TimeProvider>(time)),
            "--Kms:Quotas:Tenants:tight:OperationsPerSecond=1", "--Kms:Quotas:Tenants:tight:Burst=1",
            "--Kms:Quotas:Tenants:tight:OtherCallsPerSecond=1", "--Kms:Quotas:Tenants:tight:OtherCallsPrincipalShare=1");
        using (var deploymentAdmin = server.DeploymentAdmin())
        {
            await deploymentAdmin.Access.CreateTenantAsync(new CreateTenantRequest { TenantId = "tight" });
        }

        var tight = KmsTestServer.Bearer(await server.CreatePrincipalWithTokenAsync("tight-user", "tight", "key-manager", "key-user"));
        using var channel = server.CreateChannel();
        var keys = new KeyManagementService.KeyManagementServiceClient(channel);
        var key = (await keys.CreateKeyAsync(new CreateKeyRequest { Parent = "tenants/tight", KeyId = "k", Key = new Key { Purpose = KeyPurpose.EncryptDecrypt } }, tight)).Key;
        time.Advance(TimeSpan.FromSeconds(10));

        // Crypto: one at once, its override's rate and burst.
        await keys.EncryptAsync(new EncryptRequest { Name = key.Name, Plaintext = Google.Protobuf.ByteString.CopyFrom(1) }, tight);
        var crypto = await Assert.ThrowsAsync<RpcException>(async () =>
            await keys.EncryptAsync(new EncryptRequest { Name = key.Name, Plaintext = Google.Protobuf.ByteString.CopyFrom(1) }, tight));
        Assert.Equal(StatusCode.ResourceExhausted, crypto.StatusCode);
        Assert.Equal("the crypto-operation quota of tenants/tight is used up (Kms:Quotas:Tenants:tight:OperationsPerSecond, Kms:Quotas:Tenants:tight:Burst); retry after 1000 ms", crypto.Status.Detail);

        // Other calls: 1 a second, 2 at once (the override's rate alone brings two seconds of burst).
        await keys.GetKeyAsync(new GetKeyRequest { Name = key.Name }, tight);
        await keys.GetKeyAsync(new GetKeyRequest { Name = key.Name }, tight);
        var other = await Assert.ThrowsAsync<RpcException>(async () => await keys.GetKeyAsync(new GetKeyRequest { Name = key.Name }, tight));
        Assert.Equal(StatusCode.ResourceExhausted, other.StatusCode);
        Assert.Equal("the quota of tenants/tight for calls other than crypto operations is used up (Kms:Quotas:Tenants:tight:OtherCallsPerSecond); retry after 1000 ms", other.Status.Detail);

        Assert.Contains(server.Logs.Events, line => line.Contains("quota of tenant \"tight\" exceeded (Kms:Quotas:Tenants:tight:OperationsPerSecond, Kms:Quotas:Tenants:tight:Burst)", StringComparison.Ordinal));
        Assert.Contains(server.Logs.Events, line => line.Contains("quota of tenant \"tight\" for calls other than crypto operations exceeded (Kms:Quotas:Tenants:tight:OtherCallsPerSecond)", StringComparison.Ordinal));
    }
}
