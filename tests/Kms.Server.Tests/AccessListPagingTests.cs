using System.Globalization;
using System.Security.Cryptography;
using Grpc.Core;
using Kms.Contracts.V1;
using Kms.Core.Access;
using Kms.Core.Names;
using Kms.Core.Ports;
using Kms.Testing;
using Microsoft.Extensions.DependencyInjection;

namespace Kms.Server.Tests;

/// <summary>
/// ListApiTokens, ListRoleBindings and ListGrants answered everything in one message, though a
/// principal's revoked and expired tokens are never deleted: past the message size limit the call
/// stopped working. They are paged as the other lists are, from the store in a stable order, and
/// with no page_size an old client still gets up to 1000 in the first page.
/// </summary>
public sealed class AccessListPagingTests : IAsyncLifetime
{
    private static readonly DateTimeOffset T0 = new(2020, 3, 1, 12, 0, 0, TimeSpan.Zero);

    private KmsTestServer _server = null!;
    private Kms.Client.KmsClient _admin = null!;
    private IAccessStore _store = null!;
    private long _idBase;

    public async Task InitializeAsync()
    {
        _server = await KmsTestServer.StartAsync();
        _admin = _server.DeploymentAdmin();
        _store = _server.Services.GetRequiredService<IAccessStore>();
    }

    public async Task DisposeAsync()
    {
        _admin.Dispose();
        await _server.DisposeAsync();
    }

    [Fact]
    public async Task ListApiTokens_250RevokedAndLive_PageSize100_ThreePages_EveryTokenOnce_NewestFirst()
    {
        var expected = await SeedTokensAsync("token:many", 250);

        var pages = new List<ListApiTokensResponse>();
        var token = "";
        do
        {
            var page = await _admin.Access.ListApiTokensAsync(new ListApiTokensRequest { Principal = "token:many", PageSize = 100, PageToken = token });
            pages.Add(page);
            token = page.NextPageToken;
        }
        while (token.Length > 0 && pages.Count < 10);

        Assert.Equal([100, 100, 50], pages.Select(p => p.Tokens.Count));
        Assert.Equal(expected, pages.SelectMany(p => p.Tokens).Select(t => t.Id));
        var listed = pages.SelectMany(p => p.Tokens).ToList();
        Assert.Equal(Enumerable.Range(0, 250).Count(i => i % 4 == 0), listed.Count(t => t.RevokeTime is not null));
        Assert.All(listed, t => Assert.Equal("token:many", t.Principal));
    }

    [Fact]
    public async Task ListApiTokens_NoPageSize_TheFirst1000_ThenTheRest()
    {
        var expected = await SeedTokensAsync("token:heaps", 1001);

        // What a client from before paging sends: no page_size, and it reads no next_page_token.
        var first = await _admin.Access.ListApiTokensAsync(new ListApiTokensRequest { Principal = "token:heaps" });
        Assert.Equal(expected.Take(1000), first.Tokens.Select(t => t.Id));
        Assert.NotEmpty(first.NextPageToken);
        var rest = await _admin.Access.ListApiTokensAsync(new ListApiTokensRequest { Principal = "token:heaps", PageToken = first.NextPageToken });
        Assert.Equal([expected[^1]], rest.Tokens.Select(t => t.Id));
        Assert.Empty(rest.NextPageToken);

        // A page size above the largest is the largest.
        Assert.Equal(1000, (await _admin.Access.ListApiTokensAsync(new ListApiTokensRequest { Principal = "token:heaps", PageSize = 5000 })).Tokens.Count);

        // The SDK pages through them all.
        Assert.Equal(expected, await _admin.ListApiTokensAsync("token:heaps").Select(t => t.Id).ToListAsync());
    }

    [Fact]
    public async Task ListApiTokens_ATokenOfOnePrincipalsListing_UsedForAnothers_InvalidArgumentNamingPageToken()
    {
        await SeedTokensAsync("token:first", 3);
        var second = await SeedTokensAsync("token:second", 3);

        var first = await _admin.Access.ListApiTokensAsync(new ListApiTokensRequest { Principal = "token:first", PageSize = 1 });
        Assert.NotEmpty(first.NextPageToken);
        var e = await Assert.ThrowsAsync<RpcException>(async () => await _admin.Access.ListApiTokensAsync(
            new ListApiTokensRequest { Principal = "token:second", PageSize = 1, PageToken = first.NextPageToken }));
        Assert.Equal(StatusCode.InvalidArgument, e.StatusCode);
        Assert.StartsWith("page_token", e.Status.Detail, StringComparison.Ordinal);

        // Its own listing's token goes on from where the page ended.
        var own = await _admin.Access.ListApiTokensAsync(new ListApiTokensRequest { Principal = "token:second", PageSize = 1 });
        var rest = await _admin.Access.ListApiTokensAsync(new ListApiTokensRequest { Principal = "token:second", PageToken = own.NextPageToken });
        Assert.Equal(second, own.Tokens.Concat(rest.Tokens).Select(t => t.Id));
    }

    [Fact]
    public async Task ListRoleBindings_120Bindings_PageSize50_PrincipalThenRoleOrder_EveryOneOnce_TokenBoundToTheTenant()
    {
        await _server.EnsureTenantAsync("bound");
        var tenant = TenantId.Parse("bound");
        var expected = new List<(string, string)>();
        for (var i = 0; i < 60; i++)
        {
            var principal = PrincipalName.Token(string.Create(CultureInfo.InvariantCulture, $"member-{(i * 37) % 60:D3}"));
            foreach (var role in new[] { Role.Auditor, Role.KeyUser })
            {
                await _store.SetRoleBindingAsync(new RoleBinding(principal, role, tenant, T0), default);
                expected.Add((principal.ToString(), Roles.NameOf(role)));
            }
        }

        expected = [.. expected.OrderBy(b => b.Item1, StringComparer.Ordinal).ThenBy(b => b.Item2 == "key-user" ? 0 : 1)];
        var listed = new List<RoleBindingInfo>();
        var counts = new List<int>();
        var token = "";
        do
        {
            var page = await _admin.Access.ListRoleBindingsAsync(new ListRoleBindingsRequest { Tenant = "tenants/bound", PageSize = 50, PageToken = token });
            listed.AddRange(page.Bindings);
            counts.Add(page.Bindings.Count);
            token = page.NextPageToken;
        }
        while (token.Length > 0 && counts.Count < 10);

        Assert.Equal([50, 50, 20], counts);
        Assert.Equal(expected, listed.Select(b => (b.Principal, b.Role)));

        // The whole list in one page when none is asked for; a token of this tenant's listing is
        // refused for the deployment's, and for another tenant's.
        Assert.Equal(120, (await _admin.Access.ListRoleBindingsAsync(new ListRoleBindingsRequest { Tenant = "tenants/bound" })).Bindings.Count);
        var first = await _admin.Access.ListRoleBindingsAsync(new ListRoleBindingsRequest { Tenant = "tenants/bound", PageSize = 1 });
        foreach (var other in new[] { "", "tenants/dev" })
        {
            var e = await Assert.ThrowsAsync<RpcException>(async () => await _admin.Access.ListRoleBindingsAsync(
                new ListRoleBindingsRequest { Tenant = other, PageSize = 1, PageToken = first.NextPageToken }));
            Assert.Equal(StatusCode.InvalidArgument, e.StatusCode);
            Assert.StartsWith("page_token", e.Status.Detail, StringComparison.Ordinal);
        }

        Assert.Equal(expected, await _admin.ListRoleBindingsAsync("tenants/bound", pageSize: 7).Select(b => (b.Principal, b.Role)).ToListAsync());
    }

    [Fact]
    public async Task ListGrants_30ActiveAndRevoked_PageSize7_OldestFirst_EveryActiveOnce_TokenBoundToTheKey()
    {
        using var developer = _server.CreateClient();
        var key = await developer.CreateKeyAsync("tenants/dev", "many-grants");
        var other = await developer.CreateKeyAsync("tenants/dev", "other-grants");
        foreach (var name in new[] { key.Name, other.Name })
        {
            await developer.Raw.SetKeyPolicyAsync(new SetKeyPolicyRequest
            {
                Name = name,
                Entries = { new KeyPolicyEntry { Principal = "token:developer", Operations = { "ENCRYPT", "DECRYPT" } } },
            });
            await developer.Raw.CreateGrantAsync(new CreateGrantRequest { Parent = name, Grant = new KeyGrant { Grantee = "token:developer", Operations = { "DECRYPT" } } });
        }

        var keyName = KeyName.Parse(key.Name, "key");
        var grants = new List<Grant>();
        for (var i = 0; i < 40; i++)
        {
            // Ties in create time (pairs), ids not in insertion order; every fourth revoked.
            var id = ((i * 13) % 40 + 1).ToString("x16", CultureInfo.InvariantCulture);
            var grant = new Grant(id, keyName, PrincipalName.Token("developer"), KeyOperations.Decrypt, new Dictionary<string, string>(), T0.AddMinutes(i / 2));
            await _store.CreateGrantAsync(grant, default);
            if (i % 4 == 0)
            {
                await _store.RevokeGrantAsync(keyName, id, T0.AddDays(1), default);
            }
            else
            {
                grants.Add(grant);
            }
        }

        // The grant made through the API is the newest: last.
        var expected = grants.OrderBy(g => g.CreateTime).ThenBy(g => g.Id, StringComparer.Ordinal).Select(g => g.Name).ToList();
        var listed = new List<string>();
        var counts = new List<int>();
        var token = "";
        do
        {
            var page = await developer.Raw.ListGrantsAsync(new ListGrantsRequest { Parent = key.Name, PageSize = 7, PageToken = token });
            listed.AddRange(page.Grants.Select(g => g.Name));
            counts.Add(page.Grants.Count);
            token = page.NextPageToken;
        }
        while (token.Length > 0 && counts.Count < 10);

        Assert.Equal([7, 7, 7, 7, 3], counts);
        Assert.Equal(expected, listed.Take(30));
        Assert.Equal(31, listed.Distinct().Count());
        Assert.Equal(31, (await developer.Raw.ListGrantsAsync(new ListGrantsRequest { Parent = key.Name })).Grants.Count);
        Assert.Equal(listed, await developer.ListGrantsAsync(key.Name, pageSize: 4).Select(g => g.Name).ToListAsync());

        var first = await developer.Raw.ListGrantsAsync(new ListGrantsRequest { Parent = key.Name, PageSize = 1 });
        var e = await Assert.ThrowsAsync<RpcException>(async () => await developer.Raw.ListGrantsAsync(
            new ListGrantsRequest { Parent = other.Name, PageSize = 1, PageToken = first.NextPageToken }));
        Assert.Equal(StatusCode.InvalidArgument, e.StatusCode);
        Assert.StartsWith("page_token", e.Status.Detail, StringComparison.Ordinal);
    }

    // Registers a token principal of tenant dev and stores `count` tokens for it: create times in
    // threes (ties, ordered by id), ids not in create-time order (2,654,435,761 is prime, so
    // i * it mod count is a permutation), every fourth revoked, some expired. Returns their ids in listing order: newest first, ties by id.
    private async Task<List<string>> SeedTokensAsync(string principal, int count)
    {
        await _admin.Access.CreatePrincipalAsync(new CreatePrincipalRequest { Name = principal, Tenant = "tenants/dev" });
        var name = PrincipalName.Parse(principal, "principal");
        var idBase = _idBase += 1 << 16; // token ids are unique deployment-wide
        var tokens = new List<ApiToken>();
        for (var i = 0; i < count; i++)
        {
            var id = (idBase + (i * 2_654_435_761L % count)).ToString("x16", CultureInfo.InvariantCulture);
            var created = T0.AddMinutes(i / 3);
            var token = new ApiToken(id, name, ApiTokenKind.Service, RandomNumberGenerator.GetBytes(32), created, i % 5 == 0 ? created.AddDays(1) : created.AddDays(3650));
            await _store.CreateApiTokenAsync(token, default);
            if (i % 4 == 0)
            {
                await _store.RevokeApiTokenAsync(id, created.AddHours(1), default);
            }

            tokens.Add(token);
        }

        return [.. tokens.OrderByDescending(t => t.CreateTime).ThenBy(t => t.Id, StringComparer.Ordinal).Select(t => t.Id)];
    }
}
