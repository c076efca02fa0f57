using System.Security.Cryptography;
using Kms.Core.Access;
using Kms.Core.Errors;
using Kms.Core.Names;
using Kms.Core.Ports;

namespace Kms.Storage.Tests;

/// <summary>What every <see cref="IAccessStore"/> backend must do (run against SQLite and the in-memory fake).</summary>
public abstract class AccessStoreContract : KeyStoreLifecycleContract
{
    private static readonly DateTimeOffset T0 = new(2026, 11, 29, 12, 0, 0, TimeSpan.Zero);

    [Fact]
    public async Task Tenants_CreateGetListUpdate_DuplicateRefused()
    {
        var store = await AccessAsync();
        foreach (var id in new[] { "zeta", "alpha", "mid" })
        {
            await store.CreateTenantAsync(new Tenant(TenantId.Parse(id), $"tenant {id}", TenantState.Active, T0), default);
        }

        var duplicate = await Assert.ThrowsAsync<KmsException>(() => store.CreateTenantAsync(new Tenant(TenantId.Parse("mid"), "", TenantState.Active, T0), default));
        Assert.Equal(KmsErrorCode.AlreadyExists, duplicate.Code);

        Assert.Equal(["alpha", "mid"], (await store.ListTenantsAsync(null, 2, default)).Select(t => t.Id.Value));
        Assert.Equal(["zeta"], (await store.ListTenantsAsync("mid", 2, default)).Select(t => t.Id.Value));

        var deleting = (await store.GetTenantAsync(TenantId.Parse("mid"), default))! with { State = TenantState.Deleting, DeleteTime = T0.AddHours(1), DeleteWaitingPeriod = TimeSpan.FromDays(10) };
        Assert.True(await store.UpdateTenantAsync(deleting, default));
        Assert.Equal(deleting, await store.GetTenantAsync(TenantId.Parse("mid"), default));
        Assert.False(await store.UpdateTenantAsync(deleting with { Id = TenantId.Parse("missing") }, default));
        Assert.Null(await store.GetTenantAsync(TenantId.Parse("missing"), default));
    }

    [Fact]
    public async Task Principals_TypedNamesAreDistinct_ListedPerTenant()
    {
        var store = await AccessAsync();
        var token = new Principal(PrincipalName.Token("alice"), Dev, "Alice's service", T0);
        var cn = new Principal(PrincipalName.CommonName("alice"), Acme, "Alice's certificate", T0);
        var admin = new Principal(PrincipalName.Spiffe("spiffe://kms.test/admin"), null, "", T0);
        foreach (var principal in new[] { token, cn, admin })
        {
            await store.CreatePrincipalAsync(principal, default);
        }

        Assert.Equal(token, await store.GetPrincipalAsync(PrincipalName.Token("alice"), default));
        Assert.Equal(cn, await store.GetPrincipalAsync(PrincipalName.CommonName("alice"), default));
        Assert.Null(await store.GetPrincipalAsync(PrincipalName.Spiffe("spiffe://alice"), default));
        Assert.Equal([token], await store.ListPrincipalsAsync(Dev, null, 10, includeDeleted: false, default));
        Assert.Equal([admin], await store.ListPrincipalsAsync(null, null, 10, includeDeleted: false, default));
        var duplicate = await Assert.ThrowsAsync<KmsException>(() => store.CreatePrincipalAsync(token, default));
        Assert.Equal(KmsErrorCode.AlreadyExists, duplicate.Code);
    }

    [Fact]
    public async Task PrincipalWithTenantState_OneRead_ActiveDeletingNoTenantMissingAndDeleted()
    {
        var store = await AccessAsync();
        var active = TenantId.Parse("standing-active");
        var leaving = TenantId.Parse("standing-leaving");
        await store.CreateTenantAsync(new Tenant(active, "", TenantState.Active, T0), default);
        await store.CreateTenantAsync(new Tenant(leaving, "", TenantState.Active, T0), default);
        var user = new Principal(PrincipalName.Token("standing-user"), active, "", T0);
        var leaver = new Principal(PrincipalName.CommonName("standing-leaver"), leaving, "", T0);
        var admin = new Principal(PrincipalName.Token("standing-admin"), null, "", T0);
        var gone = new Principal(PrincipalName.Token("standing-gone"), active, "", T0);
        foreach (var principal in new[] { user, leaver, admin, gone })
        {
            await store.CreatePrincipalAsync(principal, default);
        }

        await store.UpdateTenantAsync((await store.GetTenantAsync(leaving, default))! with { State = TenantState.Deleting, DeleteTime = T0.AddHours(1) }, default);
        await store.DeletePrincipalAsync(gone.Name, T0.AddHours(2), default);

        Assert.Equal(new PrincipalWithTenantState(user, TenantState.Active), await store.GetPrincipalWithTenantStateAsync(user.Name, default));
        Assert.Equal(new PrincipalWithTenantState(leaver, TenantState.Deleting), await store.GetPrincipalWithTenantStateAsync(leaver.Name, default));
        Assert.Equal(new PrincipalWithTenantState(admin, null), await store.GetPrincipalWithTenantStateAsync(admin.Name, default));
        Assert.Null(await store.GetPrincipalWithTenantStateAsync(PrincipalName.Token("standing-never"), default));
        var tombstone = await store.GetPrincipalWithTenantStateAsync(gone.Name, default);
        Assert.Equal((await store.GetPrincipalAsync(gone.Name, default), TenantState.Active), (tombstone!.Principal, tombstone.TenantState));
        Assert.True(tombstone.Principal.Deleted);
    }

    [Fact]
    public async Task DeletePrincipal_OneWrite_TombstoneKept_TokensRevoked_BindingsRemoved_GrantsRevoked_OthersUntouched()
    {
        var store = await AccessAsync();
        var leaver = PrincipalName.Token("leaver");
        var stayer = PrincipalName.Token("stayer");
        await store.CreatePrincipalAsync(new Principal(leaver, Dev, "leaving", T0), default);
        await store.CreatePrincipalAsync(new Principal(stayer, Dev, "", T0), default);
        var key = NewKey(Dev, "shared");
        await ((IKeyStore)store).CreateKeyAsync(key, Material(), null, default);
        var policy = new KeyPolicy(key.Name, new Dictionary<string, KeyOperations> { ["token:leaver"] = KeyOperations.Encrypt, ["token:stayer"] = KeyOperations.Encrypt });
        await store.SetKeyPolicyAsync(policy, T0, default);
        foreach (var who in new[] { leaver, stayer })
        {
            await store.CreateApiTokenAsync(new ApiToken(who == leaver ? "00000000000000e1" : "00000000000000e2", who, ApiTokenKind.Service, new byte[32], T0, T0.AddDays(90)), default);
            await store.SetRoleBindingAsync(new RoleBinding(who, Role.KeyUser, Dev, T0), default);
            await store.CreateGrantAsync(new Grant(who == leaver ? "00000000000000f1" : "00000000000000f2", key.Name, who, KeyOperations.Decrypt, new Dictionary<string, string>(), T0), default);
        }

        // A token revoked earlier keeps its time.
        await store.CreateApiTokenAsync(new ApiToken("00000000000000e3", leaver, ApiTokenKind.Session, new byte[32], T0, T0.AddHours(1)), default);
        await store.RevokeApiTokenAsync("00000000000000e3", T0.AddMinutes(5), default);
        var head = store is IChangeFeed before ? await before.GetChangeHeadAsync(default) : 0;

        var deleted = await store.DeletePrincipalAsync(leaver, T0.AddDays(1), default);

        var expected = new Principal(leaver, Dev, "leaving", T0) { Disabled = true, DeleteTime = T0.AddDays(1) };
        Assert.Equal((expected, true), deleted);
        Assert.Equal(expected, await store.GetPrincipalAsync(leaver, default));
        Assert.Equal([T0.AddDays(1), T0.AddMinutes(5)], (await store.ListApiTokensAsync(leaver, default)).OrderBy(t => t.Id).Select(t => t.RevokeTime));
        Assert.Empty(await store.GetRoleBindingsAsync(leaver, default));
        Assert.Equal([("00000000000000f1", (DateTimeOffset?)T0.AddDays(1)), ("00000000000000f2", null)],
            (await store.ListGrantsAsync(key.Name, includeRevoked: true, default)).OrderBy(g => g.Id).Select(g => (g.Id, g.RevokeTime)));
        Assert.Equal(policy.Entries.OrderBy(e => e.Key), (await store.GetKeyPolicyAsync(key.Name, default)).Entries.OrderBy(e => e.Key));

        // Only it: the other principal keeps its token, binding and grant.
        Assert.Null((await store.GetApiTokenAsync("00000000000000e2", default))!.RevokeTime);
        Assert.Single(await store.GetRoleBindingsAsync(stayer, default));
        Assert.Null((await store.GetPrincipalAsync(stayer, default))!.DeleteTime);

        // Listed only when asked; the name stays taken.
        Assert.Equal([stayer], (await store.ListPrincipalsAsync(Dev, null, 10, includeDeleted: false, default)).Select(p => p.Name));
        Assert.Equal([leaver, stayer], (await store.ListPrincipalsAsync(Dev, null, 10, includeDeleted: true, default)).Select(p => p.Name));
        Assert.Equal(KmsErrorCode.AlreadyExists, (await Assert.ThrowsAsync<KmsException>(() => store.CreatePrincipalAsync(new Principal(leaver, Dev, "", T0.AddDays(2)), default))).Code);

        // Other nodes are told: one access change names it (the backends with a change feed).
        if (store is IChangeFeed feed)
        {
            Assert.Contains(await feed.ListChangesAsync(head, 100, default), c => c.Kind == StoreChangeKind.Access && c.Subject == "token:leaver");
        }

        // Again: nothing changes (the first time stands), nothing announced; a missing principal is null.
        var again = store is IChangeFeed feedAgain ? await feedAgain.GetChangeHeadAsync(default) : 0;
        Assert.Equal((expected, false), await store.DeletePrincipalAsync(leaver, T0.AddDays(3), default));
        Assert.Equal(expected, await store.GetPrincipalAsync(leaver, default));
        if (store is IChangeFeed unchanged)
        {
            Assert.Equal(again, await unchanged.GetChangeHeadAsync(default));
        }

        Assert.Null(await store.DeletePrincipalAsync(PrincipalName.Token("nobody"), T0, default));
    }

    [Fact]
    public async Task DeletedPrincipal_NoNewTokenBindingOrGrant_RefusedUnderTheWriteLock()
    {
        // The services check the principal before they write; these are the writes of callers
        // that checked it before DeletePrincipal committed.
        var store = await AccessAsync();
        var gone = PrincipalName.Token("gone");
        await store.CreatePrincipalAsync(new Principal(gone, Dev, "", T0), default);
        var key = NewKey(Dev, "late-grant");
        await ((IKeyStore)store).CreateKeyAsync(key, Material(), null, default);
        await store.SetKeyPolicyAsync(new KeyPolicy(key.Name, new Dictionary<string, KeyOperations> { ["token:owner"] = KeyOperations.Encrypt }), T0, default);
        await store.DeletePrincipalAsync(gone, T0.AddHours(1), default);

        await AssertDeletedAsync(() => store.CreateApiTokenAsync(new ApiToken("00000000000000c1", gone, ApiTokenKind.Service, new byte[32], T0.AddHours(2), T0.AddDays(1)), default));
        await AssertDeletedAsync(() => store.SetRoleBindingAsync(new RoleBinding(gone, Role.KeyUser, Dev, T0.AddHours(2)), default));
        await AssertDeletedAsync(() => store.CreateGrantAsync(new Grant("00000000000000c2", key.Name, gone, KeyOperations.Decrypt, new Dictionary<string, string>(), T0.AddHours(2)), default));

        Assert.Empty(await store.ListApiTokensAsync(gone, default));
        Assert.Empty(await store.GetRoleBindingsAsync(gone, default));
        Assert.Empty(await store.ListGrantsAsync(key.Name, includeRevoked: true, default));

        static async Task AssertDeletedAsync(Func<Task> write)
        {
            var refused = await Assert.ThrowsAsync<KmsException>(write);
            Assert.Equal((KmsErrorCode.FailedPrecondition, "principal token:gone was deleted; it gets no new token, role or grant"), (refused.Code, refused.Message));
        }
    }

    [Fact]
    public async Task DeletePrincipal_TheLastDeploymentAdmin_Refused_AnotherAdminMayGo()
    {
        var store = await AccessAsync();
        var first = PrincipalName.Token("first-admin");
        var second = PrincipalName.CommonName("second-admin");
        foreach (var admin in new[] { first, second })
        {
            await store.CreatePrincipalAsync(new Principal(admin, null, "", T0), default);
            await store.SetRoleBindingAsync(new RoleBinding(admin, Role.DeploymentAdmin, null, T0), default);
        }

        Assert.Equal(true, (await store.DeletePrincipalAsync(first, T0.AddHours(1), default))?.Deleted);

        var refused = await Assert.ThrowsAsync<KmsException>(() => store.DeletePrincipalAsync(second, T0.AddHours(2), default));
        Assert.Equal((KmsErrorCode.FailedPrecondition, "cn:second-admin is the last principal holding deployment-admin; bind deployment-admin to another principal first, then remove it"), (refused.Code, refused.Message));
        Assert.Null((await store.GetPrincipalAsync(second, default))!.DeleteTime);
        Assert.Single(await store.GetRoleBindingsAsync(second, default));
    }

    [Fact]
    public async Task ApiTokens_HashStored_RevokeKeepsFirstTime_ConsumeSucceedsOnce()
    {
        var store = await AccessAsync();
        var alice = PrincipalName.Token("alice");
        var hash = RandomNumberGenerator.GetBytes(32);
        var older = new ApiToken("00000000000000aa", alice, ApiTokenKind.Service, hash, T0, T0.AddDays(90));
        var newer = new ApiToken("00000000000000bb", alice, ApiTokenKind.Session, RandomNumberGenerator.GetBytes(32), T0.AddMinutes(1), T0.AddMinutes(16));
        await store.CreateApiTokenAsync(older, default);
        await store.CreateApiTokenAsync(newer, default);

        var read = await store.GetApiTokenAsync(older.Id, default);
        Assert.Equal(hash, read!.SecretHash);
        Assert.Equal((older.Principal, older.Kind, older.ExpireTime), (read.Principal, read.Kind, read.ExpireTime));
        Assert.Equal([newer.Id, older.Id], (await store.ListApiTokensAsync(alice, default)).Select(t => t.Id));

        Assert.True(await store.RevokeApiTokenAsync(older.Id, T0.AddDays(1), default));
        Assert.True(await store.RevokeApiTokenAsync(older.Id, T0.AddDays(2), default));
        Assert.Equal(T0.AddDays(1), (await store.GetApiTokenAsync(older.Id, default))!.RevokeTime);
        Assert.False(await store.RevokeApiTokenAsync("ffffffffffffffff", T0, default));

        Assert.True(await store.ConsumeApiTokenAsync(newer.Id, T0.AddMinutes(2), default));
        Assert.False(await store.ConsumeApiTokenAsync(newer.Id, T0.AddMinutes(3), default));
        Assert.False(await store.ConsumeApiTokenAsync(older.Id, T0.AddMinutes(3), default));
    }

    [Fact]
    public async Task ApiTokens_ConcurrentConsume_ExactlyOneWins()
    {
        var store = await AccessAsync();
        var token = new ApiToken("00000000000000cc", PrincipalName.Token("bootstrap"), ApiTokenKind.Bootstrap, RandomNumberGenerator.GetBytes(32), T0, T0.AddDays(7));
        await store.CreateApiTokenAsync(token, default);
        var results = await Task.WhenAll(Enumerable.Range(0, 16).Select(_ => Task.Run(() => store.ConsumeApiTokenAsync(token.Id, T0.AddMinutes(1), default))));
        Assert.Single(results, won => won);
    }

    [Fact]
    public async Task ApiTokens_ConsumingOneOfTwoActiveCredentials_RevokesBoth_SoConcurrentUsesCannotBothWin()
    {
        // Nodes starting together on an empty database each issue a bootstrap credential; two
        // used at the same instant must not both pass (each would make a deployment admin).
        var store = await AccessAsync();
        var bootstrap = PrincipalName.Token("bootstrap");
        var first = new ApiToken("00000000000000d1", bootstrap, ApiTokenKind.Bootstrap, RandomNumberGenerator.GetBytes(32), T0, T0.AddDays(7));
        var second = new ApiToken("00000000000000d2", bootstrap, ApiTokenKind.Bootstrap, RandomNumberGenerator.GetBytes(32), T0.AddSeconds(1), T0.AddDays(7));
        var other = new ApiToken("00000000000000d3", PrincipalName.Token("alice"), ApiTokenKind.Service, RandomNumberGenerator.GetBytes(32), T0, T0.AddDays(90));
        foreach (var token in new[] { first, second, other })
        {
            await store.CreateApiTokenAsync(token, default);
        }

        var results = await Task.WhenAll(Enumerable.Range(0, 16).Select(i => Task.Run(() => store.ConsumeApiTokenAsync(i % 2 == 0 ? first.Id : second.Id, T0.AddMinutes(1), default))));

        Assert.Single(results, won => won);
        Assert.All(await store.ListApiTokensAsync(bootstrap, default), t => Assert.Equal(T0.AddMinutes(1), t.RevokeTime));
        Assert.Null((await store.GetApiTokenAsync(other.Id, default))!.RevokeTime);
    }

    [Fact]
    public async Task ApiTokens_Paged_NewestFirstTiesById_EachOnce_OtherPrincipalsApart()
    {
        var store = await AccessAsync();
        var alice = PrincipalName.Token("alice");
        var tokens = new List<ApiToken>();
        for (var i = 0; i < 25; i++)
        {
            // Create times in fives (ties), ids in another order than create time, some revoked.
            var id = ((i * 7) % 25 + 1).ToString("x16", System.Globalization.CultureInfo.InvariantCulture);
            var token = new ApiToken(id, alice, ApiTokenKind.Service, RandomNumberGenerator.GetBytes(32), T0.AddMinutes(i / 5), T0.AddDays(90));
            await store.CreateApiTokenAsync(token, default);
            if (i % 3 == 0)
            {
                await store.RevokeApiTokenAsync(id, T0.AddDays(1), default);
            }

            tokens.Add(token);
        }

        await store.CreateApiTokenAsync(new ApiToken("00000000000000ff", PrincipalName.Token("bob"), ApiTokenKind.Service, RandomNumberGenerator.GetBytes(32), T0.AddMinutes(2), T0.AddDays(90)), default);

        var expected = tokens.OrderByDescending(t => t.CreateTime).ThenBy(t => t.Id, StringComparer.Ordinal).Select(t => t.Id).ToList();
        var pages = new List<IReadOnlyList<ApiToken>>();
        (DateTimeOffset, string)? after = null;
        do
        {
            var page = await store.ListApiTokensAsync(alice, after, 10, default);
            pages.Add(page);
            after = page.Count > 0 ? (page[^1].CreateTime, page[^1].Id) : null;
        }
        while (after is not null && pages.Count < 10);

        Assert.Equal([10, 10, 5, 0], pages.Select(p => p.Count));
        Assert.Equal(expected, pages.SelectMany(p => p).Select(t => t.Id));
        Assert.Equal(expected, (await store.ListApiTokensAsync(alice, default)).Select(t => t.Id));
        Assert.Equal(9, pages.SelectMany(p => p).Count(t => t.RevokeTime == T0.AddDays(1)));
        Assert.Equal(["00000000000000ff"], (await store.ListApiTokensAsync(PrincipalName.Token("bob"), null, 10, default)).Select(t => t.Id));
    }

    [Fact]
    public async Task RoleBindings_Paged_PrincipalThenRole_EachOnce_TenantsApart()
    {
        var store = await AccessAsync();
        var expected = new List<(string, Role)>();
        for (var i = 0; i < 12; i++)
        {
            var principal = PrincipalName.Token($"member-{(i * 5) % 12:D2}");
            foreach (var role in new[] { Role.Auditor, Role.KeyUser })
            {
                await store.SetRoleBindingAsync(new RoleBinding(principal, role, Dev, T0), default);
                expected.Add((principal.ToString(), role));
            }
        }

        await store.SetRoleBindingAsync(new RoleBinding(PrincipalName.Token("member-05"), Role.KeyUser, Acme, T0), default);
        await store.SetRoleBindingAsync(new RoleBinding(PrincipalName.Token("member-05"), Role.DeploymentAdmin, null, T0), default);

        expected = [.. expected.OrderBy(b => b.Item1, StringComparer.Ordinal).ThenBy(b => b.Item2)];
        var listed = new List<RoleBinding>();
        (string, Role)? after = null;
        for (var pages = 0; pages < 10; pages++)
        {
            var page = await store.ListRoleBindingsAsync(Dev, after, 5, default);
            listed.AddRange(page);
            if (page.Count < 5)
            {
                break;
            }

            after = (page[^1].Principal.ToString(), page[^1].Role);
        }

        Assert.Equal(expected, listed.Select(b => (b.Principal.ToString(), b.Role)));
        Assert.All(listed, b => Assert.Equal(Dev, b.Tenant));
        Assert.Equal([Role.KeyUser], (await store.ListRoleBindingsAsync(Acme, null, 10, default)).Select(b => b.Role));
        Assert.Equal([Role.DeploymentAdmin], (await store.ListRoleBindingsAsync(null, null, 10, default)).Select(b => b.Role));
    }

    [Fact]
    public async Task RoleBindings_Idempotent_TenantAndDeploymentKeptApart()
    {
        var store = await AccessAsync();
        var alice = PrincipalName.Token("alice");
        await store.SetRoleBindingAsync(new RoleBinding(alice, Role.KeyUser, Dev, T0), default);
        await store.SetRoleBindingAsync(new RoleBinding(alice, Role.KeyUser, Dev, T0.AddHours(1)), default);
        await store.SetRoleBindingAsync(new RoleBinding(alice, Role.Auditor, Dev, T0), default);
        await store.SetRoleBindingAsync(new RoleBinding(alice, Role.DeploymentAdmin, null, T0), default);

        Assert.Equal(3, (await store.GetRoleBindingsAsync(alice, default)).Count);
        Assert.Equal([Role.KeyUser, Role.Auditor], (await store.ListRoleBindingsAsync(Dev, default)).Select(b => b.Role).Order());
        Assert.Equal(T0, (await store.ListRoleBindingsAsync(Dev, default)).Single(b => b.Role == Role.KeyUser).CreateTime);
        Assert.Equal([Role.DeploymentAdmin], (await store.ListRoleBindingsAsync(null, default)).Select(b => b.Role));
        Assert.Empty(await store.ListRoleBindingsAsync(Acme, default));

        Assert.True(await store.DeleteRoleBindingAsync(alice, Role.KeyUser, Dev, default));
        Assert.False(await store.DeleteRoleBindingAsync(alice, Role.KeyUser, Dev, default));
        Assert.False(await store.DeleteRoleBindingAsync(alice, Role.DeploymentAdmin, Dev, default));
        Assert.Equal(2, (await store.GetRoleBindingsAsync(alice, default)).Count);
    }

    [Fact]
    public async Task RoleBindings_TheLastEnabledDeploymentAdmin_CannotBeRemoved_BindingsThatAuthenticateNobodyCanBe()
    {
        var store = await AccessAsync();
        var alice = PrincipalName.Token("alice-admin");
        var bob = PrincipalName.Token("bob-admin");
        var disabled = PrincipalName.Token("disabled-admin");
        var ghost = PrincipalName.Token("ghost-admin");
        await store.CreatePrincipalAsync(new Principal(alice, null, "", T0), default);
        await store.CreatePrincipalAsync(new Principal(disabled, null, "", T0) { Disabled = true }, default);
        foreach (var admin in new[] { alice, disabled, ghost })
        {
            await store.SetRoleBindingAsync(new RoleBinding(admin, Role.DeploymentAdmin, null, T0), default);
        }

        // A disabled principal's binding, or a missing one's, lets nobody in: alice is the last.
        var last = await Assert.ThrowsAsync<KmsException>(() => store.DeleteRoleBindingAsync(alice, Role.DeploymentAdmin, null, default));
        Assert.Equal(KmsErrorCode.FailedPrecondition, last.Code);
        Assert.Equal("token:alice-admin is the last principal holding deployment-admin; bind deployment-admin to another principal first, then remove it", last.Message);
        Assert.True(await store.DeleteRoleBindingAsync(disabled, Role.DeploymentAdmin, null, default));
        Assert.True(await store.DeleteRoleBindingAsync(ghost, Role.DeploymentAdmin, null, default));

        // With a second admin, the first goes; then the second is the last.
        await store.CreatePrincipalAsync(new Principal(bob, null, "", T0), default);
        await store.SetRoleBindingAsync(new RoleBinding(bob, Role.DeploymentAdmin, null, T0), default);
        await store.SetRoleBindingAsync(new RoleBinding(bob, Role.SecurityOfficer, null, T0), default);
        Assert.True(await store.DeleteRoleBindingAsync(alice, Role.DeploymentAdmin, null, default));
        Assert.Equal(KmsErrorCode.FailedPrecondition,
            (await Assert.ThrowsAsync<KmsException>(() => store.DeleteRoleBindingAsync(bob, Role.DeploymentAdmin, null, default))).Code);

        // Only that binding is held back: its holder's other roles, and bindings already gone, are not.
        Assert.True(await store.DeleteRoleBindingAsync(bob, Role.SecurityOfficer, null, default));
        Assert.False(await store.DeleteRoleBindingAsync(alice, Role.DeploymentAdmin, null, default));
        Assert.Equal([bob], (await store.ListRoleBindingsAsync(null, default)).Select(b => b.Principal));
    }

    [Fact]
    public async Task RoleBindings_TwoDeploymentAdminsRemovingEachOtherAtOnce_ExactlyOneRemoved_OneRemains()
    {
        var store = await AccessAsync();
        var admins = new[] { PrincipalName.Token("admin-a"), PrincipalName.Token("admin-b") };
        foreach (var admin in admins)
        {
            await store.CreatePrincipalAsync(new Principal(admin, null, "", T0), default);
        }

        for (var round = 0; round < 10; round++)
        {
            foreach (var admin in admins)
            {
                await store.SetRoleBindingAsync(new RoleBinding(admin, Role.DeploymentAdmin, null, T0), default);
            }

            var outcomes = await Task.WhenAll(admins.Select(admin => Task.Run(async () =>
            {
                try
                {
                    return await store.DeleteRoleBindingAsync(admin, Role.DeploymentAdmin, null, default) ? "removed" : "absent";
                }
                catch (KmsException e) when (e.Code == KmsErrorCode.FailedPrecondition)
                {
                    return "refused";
                }
            })));

            Assert.Equal(["refused", "removed"], outcomes.Order());
            Assert.Single(await store.ListRoleBindingsAsync(null, default), b => b.Role == Role.DeploymentAdmin);
        }
    }

    [Fact]
    public async Task KeyPolicy_MarksTheKeyRestricted_EmptyPolicyLiftsIt()
    {
        var store = await AccessAsync();
        var key = NewKey(Dev, "guarded");
        await ((IKeyStore)store).CreateKeyAsync(key, Material(), null, default);
        Assert.False((await ((IKeyStore)store).GetKeyAsync(key.Name, default))!.Restricted);
        Assert.False((await store.GetKeyPolicyAsync(key.Name, default)).Restricts);

        var entries = new Dictionary<string, KeyOperations> { ["token:alice"] = KeyOperations.Encrypt | KeyOperations.Decrypt, ["cn:bob"] = KeyOperations.Decrypt };
        await store.SetKeyPolicyAsync(new KeyPolicy(key.Name, entries), T0, default);
        Assert.True((await ((IKeyStore)store).GetKeyAsync(key.Name, default))!.Restricted);
        Assert.Equal(entries.OrderBy(e => e.Key), (await store.GetKeyPolicyAsync(key.Name, default)).Entries.OrderBy(e => e.Key));

        // Replacing a policy keeps the key's grants; lifting it revokes them, in the same step.
        await store.CreateGrantAsync(new Grant("00000000000000g1", key.Name, PrincipalName.Token("alice"), KeyOperations.Decrypt, new Dictionary<string, string> { ["r"] = "1" }, T0), default);
        await store.SetKeyPolicyAsync(new KeyPolicy(key.Name, entries), T0.AddMinutes(1), default);
        Assert.Single(await store.ListGrantsAsync(key.Name, includeRevoked: false, default));
        await store.SetKeyPolicyAsync(KeyPolicy.None(key.Name), T0.AddMinutes(2), default);
        Assert.False((await ((IKeyStore)store).GetKeyAsync(key.Name, default))!.Restricted);
        Assert.Empty((await store.GetKeyPolicyAsync(key.Name, default)).Entries);
        Assert.Empty(await store.ListGrantsAsync(key.Name, includeRevoked: false, default));
        Assert.Equal(T0.AddMinutes(2), Assert.Single(await store.ListGrantsAsync(key.Name, includeRevoked: true, default)).RevokeTime);
    }

    [Fact]
    public async Task Grants_Paged_ActiveOnly_OldestFirstTiesById_EachOnce_KeysApart()
    {
        var store = await AccessAsync();
        var key = NewKey(Dev, "paged-grants");
        var other = NewKey(Dev, "other-grants");
        foreach (var k in new[] { key, other })
        {
            await ((IKeyStore)store).CreateKeyAsync(k, Material(), null, default);
            await store.SetKeyPolicyAsync(new KeyPolicy(k.Name, new Dictionary<string, KeyOperations> { ["token:owner"] = KeyOperations.Encrypt }), T0, default);
        }

        await store.CreateGrantAsync(new Grant("00000000000000ff", other.Name, PrincipalName.Token("reader"), KeyOperations.Decrypt, new Dictionary<string, string>(), T0), default);
        var active = new List<Grant>();
        for (var i = 0; i < 20; i++)
        {
            var id = ((i * 7) % 20 + 1).ToString("x16", System.Globalization.CultureInfo.InvariantCulture);
            var grant = new Grant(id, key.Name, PrincipalName.Token("reader"), KeyOperations.Decrypt, new Dictionary<string, string>(), T0.AddMinutes(i / 4));
            await store.CreateGrantAsync(grant, default);
            if (i % 5 == 0)
            {
                await store.RevokeGrantAsync(key.Name, id, T0.AddDays(1), default);
            }
            else
            {
                active.Add(grant);
            }
        }

        var expected = active.OrderBy(g => g.CreateTime).ThenBy(g => g.Id, StringComparer.Ordinal).Select(g => g.Id).ToList();
        var listed = new List<Grant>();
        (DateTimeOffset, string)? after = null;
        for (var pages = 0; pages < 10; pages++)
        {
            var page = await store.ListGrantsAsync(key.Name, after, 3, default);
            listed.AddRange(page);
            if (page.Count < 3)
            {
                break;
            }

            after = (page[^1].CreateTime, page[^1].Id);
        }

        Assert.Equal(expected, listed.Select(g => g.Id));
        Assert.All(listed, g => Assert.Equal((key.Name, (DateTimeOffset?)null), (g.Key, g.RevokeTime)));
        Assert.Equal(["00000000000000ff"], (await store.ListGrantsAsync(other.Name, null, 10, default)).Select(g => g.Id));
    }

    [Fact]
    public async Task Grants_ListedUntilRevoked_RevokedOnce_ScopedToTheirKey()
    {
        var store = await AccessAsync();
        var key = NewKey(Dev, "granted");
        var other = NewKey(Acme, "granted");
        await ((IKeyStore)store).CreateKeyAsync(key, Material(), null, default);
        await ((IKeyStore)store).CreateKeyAsync(other, Material(), null, default);
        await store.SetKeyPolicyAsync(new KeyPolicy(key.Name, new Dictionary<string, KeyOperations> { ["token:owner"] = KeyOperations.Encrypt }), T0, default);
        var grant = new Grant("0123456789abcdef", key.Name, PrincipalName.Token("reader"), KeyOperations.Decrypt, new Dictionary<string, string> { ["record"] = "42" }, T0);
        await store.CreateGrantAsync(grant, default);

        var listed = Assert.Single(await store.ListGrantsAsync(key.Name, includeRevoked: false, default));
        Assert.Equal((grant.Id, grant.Grantee, grant.Operations), (listed.Id, listed.Grantee, listed.Operations));
        Assert.Equal(grant.ContextEquals, listed.ContextEquals);
        Assert.Empty(await store.ListGrantsAsync(other.Name, includeRevoked: true, default));
        Assert.False(await store.RevokeGrantAsync(other.Name, grant.Id, T0, default));

        Assert.True(await store.RevokeGrantAsync(key.Name, grant.Id, T0.AddHours(1), default));
        Assert.False(await store.RevokeGrantAsync(key.Name, grant.Id, T0.AddHours(2), default));
        Assert.Empty(await store.ListGrantsAsync(key.Name, includeRevoked: false, default));
        Assert.Equal(T0.AddHours(1), Assert.Single(await store.ListGrantsAsync(key.Name, includeRevoked: true, default)).RevokeTime);
    }

    [Fact]
    public async Task Grants_OnAKeyWhosePolicyWasLifted_OrInATenantBeingDeleted_Refused_NoneRevivedByTheNextPolicy()
    {
        var store = await AccessAsync();
        var key = NewKey(Dev, "lifted");
        await ((IKeyStore)store).CreateKeyAsync(key, Material(), null, default);
        var policy = new KeyPolicy(key.Name, new Dictionary<string, KeyOperations> { ["token:owner"] = KeyOperations.Encrypt });
        await store.SetKeyPolicyAsync(policy, T0, default);
        await store.SetKeyPolicyAsync(KeyPolicy.None(key.Name), T0.AddMinutes(1), default);

        // A grant whose caller checked the key before the policy was lifted.
        var late = new Grant("00000000000000a1", key.Name, PrincipalName.Token("reader"), KeyOperations.Decrypt, new Dictionary<string, string>(), T0.AddMinutes(2));
        Assert.Equal(KmsErrorCode.FailedPrecondition, (await Assert.ThrowsAsync<KmsException>(() => store.CreateGrantAsync(late, default))).Code);
        await store.SetKeyPolicyAsync(policy, T0.AddMinutes(3), default);
        Assert.Empty(await store.ListGrantsAsync(key.Name, includeRevoked: true, default));

        var tenant = TenantId.Parse("leaving");
        await store.CreateTenantAsync(new Tenant(tenant, "", TenantState.Active, T0), default);
        var theirs = NewKey(tenant, "k");
        await ((IKeyStore)store).CreateKeyAsync(theirs, Material(), null, default);
        await store.SetKeyPolicyAsync(new KeyPolicy(theirs.Name, new Dictionary<string, KeyOperations> { ["token:owner"] = KeyOperations.Encrypt }), T0, default);
        await store.UpdateTenantAsync(new Tenant(tenant, "", TenantState.Deleting, T0) { DeleteTime = T0.AddDays(30) }, default);
        var offboarded = late with { Id = "00000000000000a2", Key = theirs.Name };
        Assert.Equal(KmsErrorCode.FailedPrecondition, (await Assert.ThrowsAsync<KmsException>(() => store.CreateGrantAsync(offboarded, default))).Code);
    }

    [Fact]
    public async Task Grants_OnAKeyScheduledForDeletionOrDestroyed_RefusedUnderTheWriteLock_NothingStored()
    {
        // Writes of callers that read the key before its deletion was scheduled (or took effect).
        var store = await AccessAsync();
        var keys = (IKeyStore)store;
        var policy = new Dictionary<string, KeyOperations> { ["token:owner"] = KeyOperations.Encrypt };
        foreach (var (id, state, said) in new[] { ("going", Kms.Core.Keys.KeyState.DestroyScheduled, "DESTROY_SCHEDULED"), ("gone", Kms.Core.Keys.KeyState.Destroyed, "DESTROYED") })
        {
            var key = NewKey(Dev, id);
            await keys.CreateKeyAsync(key, Material(), null, default);
            await store.SetKeyPolicyAsync(new KeyPolicy(key.Name, policy), T0, default);
            await keys.UpdateKeyAsync(key.Name, current => new KeyChange(current.Key with { State = state, DestroyTime = T0.AddDays(30) }), default);

            var late = new Grant("00000000000000b1", key.Name, PrincipalName.Token("reader"), KeyOperations.Decrypt, new Dictionary<string, string>(), T0.AddMinutes(1));
            var refused = await Assert.ThrowsAsync<KmsException>(() => store.CreateGrantAsync(late, default));

            Assert.Equal(KmsErrorCode.FailedPrecondition, refused.Code);
            Assert.StartsWith($"key {key.Name} is {said};", refused.Message, StringComparison.Ordinal);
            Assert.Empty(await store.ListGrantsAsync(key.Name, includeRevoked: true, default));
        }
    }

    [Fact]
    public async Task KeyChange_OnlyWhileTenantDeleting_AppliedWhileDeleting_ANoOpOnceTheTenantIsActive()
    {
        // The offboarding's scheduling of a key (the sweep, DeleteTenant) after a
        // CancelTenantDeletion committed: checked under the write lock, nothing written.
        var store = await AccessAsync();
        var tenant = TenantId.Parse("returning");
        await store.CreateTenantAsync(new Tenant(tenant, "", TenantState.Active, T0), default);
        var first = NewKey(tenant, "first");
        var second = NewKey(tenant, "second");
        await ((IKeyStore)store).CreateKeyAsync(first, Material(), null, default);
        await ((IKeyStore)store).CreateKeyAsync(second, Material(), null, default);
        KeyChange Disable(KeyWithVersions current) => new(current.Key with { State = Kms.Core.Keys.KeyState.Disabled }) { OnlyWhileTenantDeleting = true };

        var whileActive = await ((IKeyStore)store).UpdateKeyAsync(first.Name, Disable, default);
        Assert.Equal(Kms.Core.Keys.KeyState.Enabled, whileActive!.Key.State);
        Assert.Equal(Kms.Core.Keys.KeyState.Enabled, (await ((IKeyStore)store).GetKeyAsync(first.Name, default))!.State);

        await store.UpdateTenantAsync(new Tenant(tenant, "", TenantState.Deleting, T0) { DeleteTime = T0 }, default);
        Assert.Equal(Kms.Core.Keys.KeyState.Disabled, (await ((IKeyStore)store).UpdateKeyAsync(second.Name, Disable, default))!.Key.State);
        Assert.Equal(Kms.Core.Keys.KeyState.Disabled, (await ((IKeyStore)store).GetKeyAsync(second.Name, default))!.State);
    }

    [Fact]
    public async Task KeyChange_RefusedWhileTenantDeleting_AppliedWhileActive_RefusedNothingWrittenOnceDeleting()
    {
        // A CancelKeyDeletion that checked the tenant before DeleteTenant committed: checked
        // again under the write lock, refused, the key left as it was.
        var store = await AccessAsync();
        var keys = (IKeyStore)store;
        var tenant = TenantId.Parse("leaving");
        await store.CreateTenantAsync(new Tenant(tenant, "", TenantState.Active, T0), default);
        var first = NewKey(tenant, "first");
        var second = NewKey(tenant, "second");
        await keys.CreateKeyAsync(first, Material(), null, default);
        await keys.CreateKeyAsync(second, Material(), null, default);
        KeyChange Disable(KeyWithVersions current) => new(current.Key with { State = Kms.Core.Keys.KeyState.Disabled }) { RefusedWhileTenantDeleting = true };

        Assert.Equal(Kms.Core.Keys.KeyState.Disabled, (await keys.UpdateKeyAsync(first.Name, Disable, default))!.Key.State);

        await store.UpdateTenantAsync(new Tenant(tenant, "", TenantState.Deleting, T0) { DeleteTime = T0 }, default);
        var refused = await Assert.ThrowsAsync<KmsException>(() => keys.UpdateKeyAsync(second.Name, Disable, default));
        Assert.Equal((KmsErrorCode.FailedPrecondition, "tenants/leaving is being deleted; nothing new can be created in it"), (refused.Code, refused.Message));
        Assert.Equal(Kms.Core.Keys.KeyState.Enabled, (await keys.GetKeyAsync(second.Name, default))!.State);
    }

    [Fact]
    public async Task PrincipalsTokensAndRoleBindings_InATenantBeingDeleted_RefusedUnderTheWriteLock_NothingStored()
    {
        // The services check the tenant before they write; these are the writes of callers that
        // checked it before DeleteTenant committed.
        var store = await AccessAsync();
        var tenant = TenantId.Parse("offboarding");
        await store.CreateTenantAsync(new Tenant(tenant, "", TenantState.Active, T0), default);
        var member = PrincipalName.Token("member");
        await store.CreatePrincipalAsync(new Principal(member, tenant, "", T0), default);
        await store.UpdateTenantAsync(new Tenant(tenant, "", TenantState.Deleting, T0) { DeleteTime = T0.AddDays(30) }, default);

        var late = PrincipalName.Token("late");
        await AssertTenantDeletingAsync(() => store.CreatePrincipalAsync(new Principal(late, tenant, "", T0.AddMinutes(1)), default));
        await AssertTenantDeletingAsync(() => store.CreateApiTokenAsync(
            new ApiToken("00000000000000b1", member, ApiTokenKind.Service, new byte[32], T0.AddMinutes(1), T0.AddDays(1)), default));
        await AssertTenantDeletingAsync(() => store.SetRoleBindingAsync(new RoleBinding(member, Role.KeyUser, tenant, T0.AddMinutes(1)), default));

        Assert.Null(await store.GetPrincipalAsync(late, default));
        Assert.Null(await store.GetApiTokenAsync("00000000000000b1", default));
        Assert.Empty(await store.ListApiTokensAsync(member, default));
        Assert.Empty(await store.GetRoleBindingsAsync(member, default));

        // Deployment principals, their tokens and deployment roles have no tenant to be deleted.
        var operator_ = PrincipalName.Token("operator");
        await store.CreatePrincipalAsync(new Principal(operator_, null, "", T0), default);
        await store.CreateApiTokenAsync(new ApiToken("00000000000000b2", operator_, ApiTokenKind.Session, new byte[32], T0, T0.AddHours(1)), default);
        await store.SetRoleBindingAsync(new RoleBinding(operator_, Role.SecurityOfficer, null, T0), default);
        Assert.Single(await store.ListApiTokensAsync(operator_, default));
        Assert.Single(await store.GetRoleBindingsAsync(operator_, default));

        static async Task AssertTenantDeletingAsync(Func<Task> write)
        {
            var refused = await Assert.ThrowsAsync<KmsException>(write);
            Assert.Equal(KmsErrorCode.FailedPrecondition, refused.Code);
            Assert.Equal("tenants/offboarding is being deleted; nothing new can be created in it", refused.Message);
        }
    }

    [Fact]
    public async Task Aliases_InATenantBeingDeleted_RefusedUnderTheWriteLock_NothingStored()
    {
        // AliasService checks the tenant before it writes; these are the writes of callers that
        // checked it before DeleteTenant committed (and before the offboarding scheduled the key).
        var store = await AccessAsync();
        var keys = (IKeyStore)store;
        var tenant = TenantId.Parse("offboarding");
        await store.CreateTenantAsync(new Tenant(tenant, "", TenantState.Active, T0), default);
        var first = NewKey(tenant, "first");
        var second = NewKey(tenant, "second");
        await keys.CreateKeyAsync(first, Material(), null, default);
        await keys.CreateKeyAsync(second, Material(), null, default);
        var alias = AliasName.Create(tenant, "payments");
        await keys.CreateAliasAsync(new Kms.Core.Keys.KeyAlias(alias, first.Name, T0, T0), null, default);
        await store.UpdateTenantAsync(new Tenant(tenant, "", TenantState.Deleting, T0) { DeleteTime = T0.AddDays(30) }, default);

        var late = AliasName.Create(tenant, "late");
        foreach (var write in new Func<Task>[]
        {
            () => keys.CreateAliasAsync(new Kms.Core.Keys.KeyAlias(late, second.Name, T0.AddMinutes(1), T0.AddMinutes(1)), null, default),
            () => keys.UpdateAliasAsync(alias, second.Name, T0.AddMinutes(1), null, default),
        })
        {
            var refused = await Assert.ThrowsAsync<KmsException>(write);
            Assert.Equal((KmsErrorCode.FailedPrecondition, "tenants/offboarding is being deleted; nothing new can be created in it"), (refused.Code, refused.Message));
        }

        Assert.Null(await keys.GetAliasAsync(late, default));
        Assert.Equal((first.Name, T0), ((await keys.GetAliasAsync(alias, default))!.Key, (await keys.GetAliasAsync(alias, default))!.UpdateTime));

        // Onto the key it names already (a retried move): answered as it is, nothing written.
        Assert.Equal((first.Name, T0), ((await keys.UpdateAliasAsync(alias, first.Name, T0.AddMinutes(1), null, default))!.Key, (await keys.GetAliasAsync(alias, default))!.UpdateTime));
        Assert.True(await keys.DeleteAliasAsync(alias, null, default));
    }

    [Fact]
    public async Task Keys_InATenantBeingDeleted_RefusedUnderTheWriteLock_NothingStored()
    {
        // KeyService checks the tenant, then the HSM generates the material (seconds for an RSA
        // pair), then the store writes: this is the write of a CreateKey that passed its check
        // before DeleteTenant committed. Before, it was stored ENABLED and answered OK, and stayed
        // so until the lifecycle worker's next sweep (or for good, if the deletion was cancelled first).
        var store = await AccessAsync();
        var keys = (IKeyStore)store;
        var tenant = TenantId.Parse("offboarding");
        await store.CreateTenantAsync(new Tenant(tenant, "", TenantState.Active, T0), default);
        await store.UpdateTenantAsync(new Tenant(tenant, "", TenantState.Deleting, T0) { DeleteTime = T0.AddDays(30) }, default);
        var late = NewKey(tenant, "late");

        var refused = await Assert.ThrowsAsync<KmsException>(() => keys.CreateKeyAsync(late, Material(), null, default));

        Assert.Equal((KmsErrorCode.FailedPrecondition, "tenants/offboarding is being deleted; nothing new can be created in it"), (refused.Code, refused.Message));
        Assert.Null(await keys.GetKeyAsync(late.Name, default));
        Assert.Empty(await keys.ListKeysAsync(tenant, null, 10, default));

        // Once the deletion is cancelled (ACTIVE again), keys are created as before.
        await store.UpdateTenantAsync(new Tenant(tenant, "", TenantState.Active, T0), default);
        await keys.CreateKeyAsync(late, Material(), null, default);
        Assert.Equal(Kms.Core.Keys.KeyState.Enabled, (await keys.GetKeyAsync(late.Name, default))!.State);
    }

    private async Task<IAccessStore> AccessAsync() => (IAccessStore)await CreateStoreAsync();
}
