using Kms.Contracts.V1;
using Kms.Testing;

namespace Kms.Client.Tests;

/// <summary>The typed methods added over every RPC, against the real server.</summary>
public sealed class KmsClientTypedMethodsTests(ClientServerFixture fixture) : IClassFixture<ClientServerFixture>
{
    [Fact]
    public async Task LifecycleMethods_KeyThroughItsStates_ServerStateFollows()
    {
        using var client = fixture.Server.CreateClient();
        var key = await client.CreateKeyAsync("tenants/dev", $"typed-{Guid.NewGuid():N}");
        await client.RotateKeyAsync(key.Name);

        var versions = await client.ListKeyVersionsAsync(key.Name, pageSize: 1).ToListAsync();
        Assert.Equal([key.Name + "/versions/1", key.Name + "/versions/2"], versions.Select(v => v.Name));
        Assert.Equal(KeyState.Disabled, (await client.DisableKeyVersionAsync(versions[0].Name)).State);
        Assert.Equal(KeyState.Enabled, (await client.EnableKeyVersionAsync(versions[0].Name)).State);
        Assert.Equal(versions[0].Name, (await client.UpdatePrimaryVersionAsync(key.Name, 1)).Primary.Name);
        Assert.Equal(KeyState.DestroyScheduled, (await client.ScheduleKeyVersionDestructionAsync(versions[1].Name, TimeSpan.FromDays(7))).State);
        Assert.Equal(KeyState.Disabled, (await client.RestoreKeyVersionAsync(versions[1].Name)).State);
        Assert.Equal(KeyState.Disabled, (await client.GetKeyVersionAsync(versions[1].Name)).State);

        var scheduled = await client.ScheduleKeyDeletionAsync(key.Name, TimeSpan.FromDays(7));
        Assert.Equal(KeyState.DestroyScheduled, scheduled.State);
        Assert.Equal(KeyState.Disabled, (await client.CancelKeyDeletionAsync(key.Name)).State);
        Assert.Equal(KeyState.Enabled, (await client.EnableKeyAsync(key.Name)).State);
        Assert.Equal(KeyState.Disabled, (await client.DisableKeyAsync(key.Name)).State);
    }

    [Fact]
    public async Task ScheduleKeyDeletionAsync_SameRequestIdTwice_AppliedOnce()
    {
        using var client = fixture.Server.CreateClient();
        var key = await client.CreateKeyAsync("tenants/dev", $"once-{Guid.NewGuid():N}");
        var id = Guid.NewGuid().ToString();

        var first = await client.ScheduleKeyDeletionAsync(key.Name, TimeSpan.FromDays(7), id);
        var replay = await client.ScheduleKeyDeletionAsync(key.Name, TimeSpan.FromDays(7), id);

        Assert.Equal(first.DestroyTime, replay.DestroyTime);
        Assert.Equal(KeyState.DestroyScheduled, replay.State);
    }

    [Fact]
    public async Task AliasAndPolicyMethods_RoundTrip()
    {
        using var client = fixture.Server.CreateClient();
        var key = await client.CreateKeyAsync("tenants/dev", $"aliased-{Guid.NewGuid():N}");
        var other = await client.CreateKeyAsync("tenants/dev", $"aliased-{Guid.NewGuid():N}");

        var alias = await client.CreateAliasAsync("tenants/dev", $"a-{Guid.NewGuid():N}", key.Name);
        Assert.Equal(key.Name, (await client.GetAliasAsync(alias.Name)).Key);
        Assert.Equal(other.Name, (await client.UpdateAliasAsync(alias.Name, other.Name)).Key);
        Assert.Contains(alias.Name, await client.ListAliasesAsync("tenants/dev", pageSize: 1).Select(a => a.Name).ToListAsync());
        await client.DeleteAliasAsync(alias.Name);
        Assert.DoesNotContain(alias.Name, await client.ListAliasesAsync("tenants/dev").Select(a => a.Name).ToListAsync());

        var entry = new KeyPolicyEntry { Principal = "token:developer", Operations = { "ENCRYPT", "DECRYPT" } };
        Assert.Equal([entry], await client.SetKeyPolicyAsync(key.Name, [entry]));
        Assert.Equal([entry], await client.GetKeyPolicyAsync(key.Name));
        Assert.Contains(await client.TestPermissionsAsync(key.Name), p => p.Principal == "token:developer");
        Assert.Empty(await client.SetKeyPolicyAsync(key.Name, []));
    }

    [Fact]
    public async Task AccessAndAuditMethods_RoundTrip()
    {
        using var admin = fixture.Server.DeploymentAdmin();
        using var developer = fixture.Server.CreateClient();
        var principal = $"token:typed-{Guid.NewGuid():N}"[..24];

        Assert.Contains("tenants/dev", await admin.ListTenantsAsync(pageSize: 1).Select(t => t.Name).ToListAsync());
        Assert.Equal("tenants/dev", (await admin.CreatePrincipalAsync(principal, "tenants/dev")).Tenant);
        Assert.Equal("key-user", (await admin.SetRoleBindingAsync(principal, "key-user", "tenants/dev")).Role);
        var issued = await admin.CreateApiTokenAsync(principal, "SERVICE", TimeSpan.FromDays(1));
        Assert.StartsWith("kms_", issued.Secret, StringComparison.Ordinal);
        Assert.Equal([issued.Token.Id], await admin.ListApiTokensAsync(principal).Select(t => t.Id).ToListAsync());
        await admin.RevokeApiTokenAsync(issued.Token.Id);
        Assert.NotNull((await admin.ListApiTokensAsync(principal).SingleAsync()).RevokeTime);

        // Paged: one token a page, the enumeration fetches the next page as it goes, newest first.
        var second = await admin.CreateApiTokenAsync(principal, "SERVICE", TimeSpan.FromDays(1));
        var listed = await admin.ListApiTokensAsync(principal, pageSize: 1).ToListAsync();
        Assert.Equal(new[] { issued.Token.Id, second.Token.Id }.Order(StringComparer.Ordinal), listed.Select(t => t.Id).Order(StringComparer.Ordinal));
        Assert.Equal(listed.OrderByDescending(t => t.CreateTime).ThenBy(t => t.Id, StringComparer.Ordinal), listed);
        await admin.DeleteRoleBindingAsync(principal, "key-user", "tenants/dev");
        Assert.DoesNotContain(await admin.ListRoleBindingsAsync("tenants/dev").ToListAsync(), b => b.Principal == principal);

        var events = await developer.ListAuditEventsAsync(new ListAuditEventsRequest { Tenant = "tenants/dev", PageSize = 2 }).Take(5).ToListAsync();
        Assert.Equal(5, events.Select(e => e.Sequence).Distinct().Count());
        Assert.StartsWith("sha256:", (await developer.GetAuditSigningKeyAsync()).Fingerprint, StringComparison.Ordinal);
    }
}
