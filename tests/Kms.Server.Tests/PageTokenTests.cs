using Grpc.Core;
using Kms.Contracts.V1;
using Kms.Testing;
using Microsoft.Extensions.DependencyInjection;

namespace Kms.Server.Tests;

/// <summary>
/// Page tokens are bound to the listing they were issued for: ListAuditEvents' to its whole
/// filter, the other List RPCs' to the RPC, the caller and the request's filter (parent,
/// tenant, show_deleted); all are tagged with the deployment's key, so a made-up or changed
/// token is refused. A token used with another listing, by another caller, or forged is
/// INVALID_ARGUMENT naming <c>page_token</c>, not a page from the middle of a listing.
/// </summary>
public sealed class PageTokenTests : IAsyncLifetime
{
    private KmsTestServer _server = null!;
    private Kms.Client.KmsClient _developer = null!;
    private Kms.Client.KmsClient _officer = null!;

    public async Task InitializeAsync()
    {
        _server = await KmsTestServer.StartAsync();
        _developer = _server.CreateClient();
        _officer = _server.CreateClient(await _server.CreatePrincipalWithTokenAsync("officer", null, "security-officer"));
    }

    public async Task DisposeAsync()
    {
        _developer.Dispose();
        _officer.Dispose();
        await _server.DisposeAsync();
    }

    [Fact]
    public async Task ListAuditEvents_ATokenUsedWithAnotherFilter_InvalidArgumentNamingPageToken()
    {
        var key = await _developer.CreateKeyAsync("tenants/dev", "paged");
        for (var i = 0; i < 3; i++)
        {
            await _developer.EncryptAsync(key.Name, new byte[] { 1 });
        }

        var first = await _officer.Audit.ListAuditEventsAsync(new ListAuditEventsRequest { Resource = key.Name, PageSize = 1 });
        Assert.NotEmpty(first.NextPageToken);

        // It was a bare sequence number, accepted with any filter: a page of another listing,
        // starting after that listing's events up to the sequence.
        foreach (var other in new[]
        {
            new ListAuditEventsRequest { Resource = key.Name + "-other" },
            new ListAuditEventsRequest { Resource = key.Name, Operation = "Encrypt" },
            new ListAuditEventsRequest { Resource = key.Name, Outcome = "OK" },
            new ListAuditEventsRequest { Resource = key.Name, Principal = "token:developer" },
            new ListAuditEventsRequest { Resource = key.Name, Tenant = "tenants/dev" },
            new ListAuditEventsRequest { Resource = key.Name, StartTime = Google.Protobuf.WellKnownTypes.Timestamp.FromDateTimeOffset(DateTimeOffset.UnixEpoch) },
            new ListAuditEventsRequest { Resource = key.Name, EndTime = Google.Protobuf.WellKnownTypes.Timestamp.FromDateTimeOffset(DateTimeOffset.UtcNow.AddDays(1)) },
            new ListAuditEventsRequest(),
        })
        {
            other.PageToken = first.NextPageToken;
            var e = await Assert.ThrowsAsync<RpcException>(async () => await _officer.Audit.ListAuditEventsAsync(other));
            Assert.Equal(StatusCode.InvalidArgument, e.StatusCode);
            Assert.StartsWith("page_token", e.Status.Detail, StringComparison.Ordinal);
        }

        // The page size is not bound: the same filter with another page size goes on.
        var next = await _officer.Audit.ListAuditEventsAsync(new ListAuditEventsRequest { Resource = key.Name, PageSize = 2, PageToken = first.NextPageToken });
        Assert.Equal(2, next.Events.Count);
        Assert.True(next.Events[0].Sequence > first.Events[0].Sequence);
    }

    [Fact]
    public async Task ListAuditEvents_NewestFirst_PagesBackwardsThroughTheSameEvents_TokensBoundToTheOrder()
    {
        var key = await _developer.CreateKeyAsync("tenants/dev", "newest");
        for (var i = 0; i < 4; i++)
        {
            await _developer.EncryptAsync(key.Name, new byte[] { 1 });
        }

        var oldest = new List<long>();
        await foreach (var e in _officer.ListAuditEventsAsync(new ListAuditEventsRequest { Resource = key.Name, PageSize = 2 }))
        {
            oldest.Add(e.Sequence);
        }

        // CreateKey and four Encrypts, page by page of two, newest first: the same events reversed.
        var newest = new List<long>();
        var request = new ListAuditEventsRequest { Resource = key.Name, PageSize = 2, NewestFirst = true };
        var first = await _officer.Audit.ListAuditEventsAsync(request);
        newest.AddRange(first.Events.Select(e => e.Sequence));
        var token = first.NextPageToken;
        while (token.Length > 0)
        {
            var page = await _officer.Audit.ListAuditEventsAsync(new ListAuditEventsRequest(request) { PageToken = token });
            newest.AddRange(page.Events.Select(e => e.Sequence));
            token = page.NextPageToken;
        }

        Assert.Equal(5, oldest.Count);
        Assert.Equal(Enumerable.Reverse(oldest), newest);

        // A newest-first token read oldest first would list after its sequence, the events the first
        // page already gave; an oldest-first one read newest first, before it. Both are refused.
        var ascending = await _officer.Audit.ListAuditEventsAsync(new ListAuditEventsRequest { Resource = key.Name, PageSize = 2 });
        foreach (var (order, pageToken) in new[] { (false, first.NextPageToken), (true, ascending.NextPageToken) })
        {
            var e = await Assert.ThrowsAsync<RpcException>(async () => await _officer.Audit.ListAuditEventsAsync(
                new ListAuditEventsRequest { Resource = key.Name, PageSize = 2, NewestFirst = order, PageToken = pageToken }));
            Assert.Equal(StatusCode.InvalidArgument, e.StatusCode);
            Assert.StartsWith("page_token", e.Status.Detail, StringComparison.Ordinal);
        }
    }

    [Theory]
    [InlineData("garbled")]
    [InlineData("17")]
    [InlineData("bare sequence")]
    [InlineData("another sequence")]
    [InlineData("a later sequence")]
    [InlineData("the layout before")]
    [InlineData("tag cut")]
    [InlineData("not base64")]
    [InlineData("one character")]
    [InlineData("sixty thousand characters")]
    [InlineData("version 3")]
    public async Task ListAuditEvents_AGarbledOrMadeUpToken_InvalidArgumentNamingPageToken(string kind)
    {
        var key = await _developer.CreateKeyAsync("tenants/dev", "forged-" + kind.Replace(' ', '-'));
        await _developer.EncryptAsync(key.Name, new byte[] { 1 });
        var first = await _officer.Audit.ListAuditEventsAsync(new ListAuditEventsRequest { Resource = key.Name, PageSize = 1 });
        byte[] Issued() => System.Buffers.Text.Base64Url.DecodeFromChars(first.NextPageToken);
        var token = kind switch
        {
            "garbled" => first.NextPageToken[..^2] + (first.NextPageToken[^2] == 'A' ? "BA" : "AA"),
            "17" => "17",
            "bare sequence" => first.Events[0].Sequence.ToString(System.Globalization.CultureInfo.InvariantCulture),
            "another sequence" => EditedPosition(Issued(), first.Events[0].Sequence - 1),
            "a later sequence" => EditedPosition(Issued(), first.Events[0].Sequence + 1000),
            "the layout before" => Before(first.Events[0].Sequence),
            "not base64" => "!!!!\u00e9\u0000",
            "one character" => "A",
            "sixty thousand characters" => new string('A', 60_000), // a request over 64 KiB is refused before it is read (PerMethodRequestLimitTests)
            "version 3" => Forged(Issued(), b => b[0] = 3),
            _ => System.Buffers.Text.Base64Url.EncodeToString(Issued().AsSpan(0, Issued().Length - 1)),
        };

        var e = await Assert.ThrowsAsync<RpcException>(async () => await _officer.Audit.ListAuditEventsAsync(
            new ListAuditEventsRequest { Resource = key.Name, PageSize = 1, PageToken = token }));
        Assert.Equal(StatusCode.InvalidArgument, e.StatusCode);
        Assert.StartsWith("page_token", e.Status.Detail, StringComparison.Ordinal);

        static string Forged(byte[] issued, Action<byte[]> change)
        {
            var copy = (byte[])issued.Clone();
            change(copy);
            return System.Buffers.Text.Base64Url.EncodeToString(copy);
        }

        // The position (the sequence, in ASCII between the version byte and issue time and the
        // 16-byte tag) set to another, the tag kept.
        static string EditedPosition(byte[] issued, long sequence)
        {
            var body = System.Text.Encoding.ASCII.GetBytes(sequence.ToString(System.Globalization.CultureInfo.InvariantCulture));
            return System.Buffers.Text.Base64Url.EncodeToString([.. issued.AsSpan(0, 1 + 8), .. body, .. issued.AsSpan(issued.Length - 16)]);
        }

        // A token as the server issued it before it was bound to the caller (version 1, the sequence
        // in 8 bytes, the tag over the filter and the sequence alone), tagged with the real key.
        string Before(long sequence)
        {
            var input = System.Text.Encoding.UTF8.GetBytes($"ListAuditEvents v1|-|-|-|-|{key.Name.Length}:{key.Name}|-|-|{sequence.ToString(System.Globalization.CultureInfo.InvariantCulture).Length}:{sequence}");
            var tag = _server.Services.GetRequiredService<Kms.Core.Services.AuditLog>().PageTokenTag(input);
            var token = new byte[1 + 8 + 16];
            token[0] = 1;
            System.Buffers.Binary.BinaryPrimitives.WriteInt64BigEndian(token.AsSpan(1), sequence);
            tag.AsSpan(0, 16).CopyTo(token.AsSpan(9));
            return System.Buffers.Text.Base64Url.EncodeToString(token);
        }
    }

    [Fact]
    public async Task ListAuditEvents_ATokenIssuedToOneCaller_RefusedFromAnother_ThoughTheFilterIsTheSame()
    {
        var key = await _developer.CreateKeyAsync("tenants/dev", "two-readers");
        for (var i = 0; i < 3; i++)
        {
            await _developer.EncryptAsync(key.Name, new byte[] { 1 });
        }

        using var otherOfficer = _server.CreateClient(await _server.CreatePrincipalWithTokenAsync("officer-b", null, "security-officer"));
        await _server.EnsureTenantAsync("acme");
        using var auditor = _server.CreateClient(await _server.CreatePrincipalWithTokenAsync("dev-auditor", "dev", "auditor"));
        using var otherAuditor = _server.CreateClient(await _server.CreatePrincipalWithTokenAsync("dev-auditor-b", "dev", "auditor"));

        // A security officer's token, from another officer; a tenant auditor's, from another
        // auditor of the same tenant, and from an officer allowed the same listing: each filter
        // the same, each caller refused. Before, each went on with the first caller's listing.
        foreach (var (owner, other, request) in new[]
        {
            (_officer, otherOfficer, new ListAuditEventsRequest { Resource = key.Name, PageSize = 1 }),
            (auditor, otherAuditor, new ListAuditEventsRequest { Tenant = "tenants/dev", Resource = key.Name, PageSize = 1 }),
            (auditor, _officer, new ListAuditEventsRequest { Tenant = "tenants/dev", Resource = key.Name, PageSize = 1 }),
        })
        {
            var first = await owner.Audit.ListAuditEventsAsync(request);
            Assert.NotEmpty(first.NextPageToken);
            var taken = request.Clone();
            taken.PageToken = first.NextPageToken;
            var e = await Assert.ThrowsAsync<RpcException>(async () => await other.Audit.ListAuditEventsAsync(taken));
            Assert.Equal(StatusCode.InvalidArgument, e.StatusCode);
            Assert.StartsWith("page_token", e.Status.Detail, StringComparison.Ordinal);
            Assert.DoesNotContain(first.NextPageToken, e.Status.Detail, StringComparison.Ordinal);

            // The owner goes on with it; the other caller with its own.
            Assert.Equal(3, (await owner.Audit.ListAuditEventsAsync(new ListAuditEventsRequest(taken) { PageSize = 1000 })).Events.Count);
            var own = await other.Audit.ListAuditEventsAsync(request);
            Assert.Equal(3, (await other.Audit.ListAuditEventsAsync(new ListAuditEventsRequest(request) { PageSize = 1000, PageToken = own.NextPageToken })).Events.Count);
        }
    }

    [Fact]
    public async Task ListAuditEvents_PagedThroughAFilter_EveryMatchingEventExactlyOnce_AlsoAcrossARestart()
    {
        var key = await _developer.CreateKeyAsync("tenants/dev", "every");
        for (var i = 0; i < 11; i++)
        {
            await _developer.EncryptAsync(key.Name, new byte[] { 1 });
        }

        // Tokens are bound to the caller: the same officer (its token) pages on after the restart.
        var officerToken = await _server.CreatePrincipalWithTokenAsync("officer-2", null, "security-officer");
        _officer.Dispose();
        _officer = _server.CreateClient(officerToken);
        var whole = (await _officer.Audit.ListAuditEventsAsync(new ListAuditEventsRequest { Resource = key.Name, Tenant = "tenants/dev", PageSize = 1000 })).Events.Select(e => e.Sequence).ToList();
        Assert.Equal(12, whole.Count);

        var paged = new List<long>();
        var request = new ListAuditEventsRequest { Resource = key.Name, Tenant = "tenants/dev", PageSize = 5 };
        do
        {
            var page = await _officer.Audit.ListAuditEventsAsync(request);
            paged.AddRange(page.Events.Select(e => e.Sequence));
            request.PageToken = page.NextPageToken;
        }
        while (request.PageToken.Length > 0 && paged.Count < 5);

        // The token's key is the deployment's, not the process's: it still works after a restart.
        _officer.Dispose();
        _server = await _server.RestartAsync();
        _officer = _server.CreateClient(officerToken);
        _developer.Dispose();
        _developer = _server.CreateClient();
        while (request.PageToken.Length > 0)
        {
            var page = await _officer.Audit.ListAuditEventsAsync(request);
            paged.AddRange(page.Events.Select(e => e.Sequence));
            request.PageToken = page.NextPageToken;
        }

        Assert.Equal(whole, paged);
    }

    [Fact]
    public async Task ListPrincipals_ATokenOfTheListingWithDeletedOnesUsedWithout_InvalidArgument()
    {
        using var admin = _server.DeploymentAdmin();
        foreach (var name in new[] { "token:p-a", "token:p-b", "token:p-c" })
        {
            await admin.Access.CreatePrincipalAsync(new CreatePrincipalRequest { Name = name, Tenant = "tenants/dev" });
        }

        await admin.Access.DeletePrincipalAsync(new DeletePrincipalRequest { Name = "token:p-a" });
        var withDeleted = await admin.Access.ListPrincipalsAsync(new ListPrincipalsRequest { Tenant = "tenants/dev", PageSize = 1, ShowDeleted = true });
        Assert.NotEmpty(withDeleted.NextPageToken);

        var e = await Assert.ThrowsAsync<RpcException>(async () => await admin.Access.ListPrincipalsAsync(
            new ListPrincipalsRequest { Tenant = "tenants/dev", PageSize = 1, PageToken = withDeleted.NextPageToken }));
        Assert.Equal(StatusCode.InvalidArgument, e.StatusCode);
        Assert.StartsWith("page_token", e.Status.Detail, StringComparison.Ordinal);

        // With the listing it was issued for, it goes on.
        var next = await admin.Access.ListPrincipalsAsync(new ListPrincipalsRequest { Tenant = "tenants/dev", PageSize = 1, ShowDeleted = true, PageToken = withDeleted.NextPageToken });
        Assert.Single(next.Principals);
    }

    public static TheoryData<string> ListRpcs() => new()
    {
        "ListKeys", "ListKeyVersions", "ListAliases", "ListTenants", "ListPrincipals", "ListQuorumRequests", "ListApiTokens", "ListRoleBindings", "ListGrants",
    };

    // Before, these tokens were the base64 of "v1|<collection>|<last name listed>": whoever
    // wrote one chose where a listing started, and a token issued to one caller was taken from
    // any other caller with the same listing.
    [Theory]
    [MemberData(nameof(ListRpcs))]
    public async Task List_AMadeUpChangedOrGarbledToken_InvalidArgumentNamingPageToken_NothingListed(string rpc)
    {
        var listing = await ListingAsync(rpc);
        string[] bad =
        [
            Legacy(listing.Scope, listing.Cursor), // a token in the old layout, the cursor chosen
            Legacy(listing.Scope, "-5"),
            Legacy(listing.Scope, "99999999999999999999"),
            "garbage!",
            "A",
            new string('A', 20_000), // past ListPageTokens' 16 KiB, under the 64 KiB a List request may be
            "AQ",
        ];
        foreach (var token in bad)
        {
            await AssertRefused(() => listing.List(listing.Owner, token, 1));
        }

        if (listing.Pages)
        {
            var first = await listing.List(listing.Owner, "", 1);
            Assert.NotEmpty(first.Next);
            var issued = System.Buffers.Text.Base64Url.DecodeFromChars(first.Next);
            foreach (var at in new[] { 0, 1, issued.Length / 2, issued.Length - 1 })
            {
                var changed = (byte[])issued.Clone();
                changed[at] ^= 1;
                await AssertRefused(() => listing.List(listing.Owner, System.Buffers.Text.Base64Url.EncodeToString(changed), 1));
            }

            // As issued, it goes on (with another page size too) and every item is listed once.
            var rest = await listing.List(listing.Owner, first.Next, 1000);
            Assert.Equal(listing.Total, first.Count + rest.Count);
            Assert.Empty(rest.Next);
        }
    }

    [Theory]
    [MemberData(nameof(ListRpcs))]
    public async Task List_ATokenIssuedToOneCaller_RefusedFromAnother_ThoughTheListingIsTheSame(string rpc)
    {
        var listing = await ListingAsync(rpc);
        if (!listing.Pages)
        {
            return; // ListQuorumRequests: no requests to page through here (QuorumEndToEndTests page them)
        }

        var first = await listing.List(listing.Owner, "", 1);
        Assert.NotEmpty(first.Next);
        await AssertRefused(() => listing.List(listing.Other, first.Next, 1));

        // The other caller's own token works for it.
        var own = await listing.List(listing.Other, "", 1);
        Assert.Equal(listing.Total - 1, (await listing.List(listing.Other, own.Next, 1000)).Count);
    }

    [Fact]
    public async Task ListKeys_ATokenOfTenantAsListingFromACallerOfTenantB_InvalidArgument_NamingNothingOfTenantA()
    {
        await _server.EnsureTenantAsync("acme");
        using var acme = _server.CreateClient(await _server.CreatePrincipalWithTokenAsync("acme-keys", "acme", "key-manager"));
        for (var i = 0; i < 2; i++)
        {
            await _developer.CreateKeyAsync("tenants/dev", "secret-name-" + i);
            await acme.CreateKeyAsync("tenants/acme", "acme-" + i);
        }

        var dev = await _developer.Raw.ListKeysAsync(new ListKeysRequest { Parent = "tenants/dev", PageSize = 1 });
        foreach (var parent in new[] { "tenants/acme", "tenants/dev" })
        {
            var e = await Assert.ThrowsAsync<RpcException>(async () => await acme.Raw.ListKeysAsync(new ListKeysRequest { Parent = parent, PageSize = 1, PageToken = dev.NextPageToken }));
            Assert.Contains(e.StatusCode, new[] { StatusCode.InvalidArgument, StatusCode.NotFound });
            Assert.DoesNotContain("secret-name", e.Status.Detail, StringComparison.Ordinal);
        }

        // A token of dev's listing, moved to acme's collection: made up, refused.
        await AssertRefused(async () => await acme.Raw.ListKeysAsync(new ListKeysRequest { Parent = "tenants/acme", PageSize = 1, PageToken = Legacy("tenants/acme", "acme-0") }));
    }

    [Fact]
    public async Task ListPrincipals_ATokenOfOneTenantsListing_RefusedForAnotherTenants_AndForTheDeploymentsOwn()
    {
        await _server.EnsureTenantAsync("acme");
        using var admin = _server.DeploymentAdmin();
        foreach (var (name, tenant) in new[] { ("token:pa-1", "tenants/dev"), ("token:pa-2", "tenants/dev"), ("token:pb-1", "tenants/acme"), ("token:pb-2", "tenants/acme") })
        {
            await admin.Access.CreatePrincipalAsync(new CreatePrincipalRequest { Name = name, Tenant = tenant });
        }

        var dev = await admin.Access.ListPrincipalsAsync(new ListPrincipalsRequest { Tenant = "tenants/dev", PageSize = 1 });
        foreach (var tenant in new[] { "tenants/acme", "" })
        {
            await AssertRefused(async () => await admin.Access.ListPrincipalsAsync(new ListPrincipalsRequest { Tenant = tenant, PageSize = 1, PageToken = dev.NextPageToken }));
        }
    }

    [Fact]
    public async Task ListKeys_ATokenStillWorksAfterARestart()
    {
        for (var i = 0; i < 3; i++)
        {
            await _developer.CreateKeyAsync("tenants/dev", "restart-" + i);
        }

        var first = await _developer.Raw.ListKeysAsync(new ListKeysRequest { Parent = "tenants/dev", PageSize = 1 });
        _officer.Dispose();
        _developer.Dispose();
        _server = await _server.RestartAsync();
        _officer = _server.CreateClient(await _server.CreatePrincipalWithTokenAsync("officer-3", null, "security-officer"));
        _developer = _server.CreateClient();
        var rest = await _developer.Raw.ListKeysAsync(new ListKeysRequest { Parent = "tenants/dev", PageToken = first.NextPageToken });
        Assert.Equal(["restart-1", "restart-2"], rest.Keys.Select(k => k.Name.Split('/')[^1]));
    }

    private static string Legacy(string scope, string cursor) =>
        System.Buffers.Text.Base64Url.EncodeToString(System.Text.Encoding.UTF8.GetBytes($"v1|{scope}|{cursor}"));

    private static async Task AssertRefused(Func<Task> list)
    {
        var e = await Assert.ThrowsAsync<RpcException>(list);
        Assert.Equal(StatusCode.InvalidArgument, e.StatusCode);
        Assert.StartsWith("page_token", e.Status.Detail, StringComparison.Ordinal);
    }

    private sealed record ListPage(int Count, string Next);

    // One listing of an RPC with three items (none for ListQuorumRequests), its owner and another
    // caller allowed the same listing; Scope and Cursor make a token in the old layout.
    private sealed record Listing(
        Kms.Client.KmsClient Owner, Kms.Client.KmsClient Other, Func<Kms.Client.KmsClient, string, int, Task<ListPage>> List,
        string Scope, string Cursor, int Total, bool Pages = true);

    private async Task<Listing> ListingAsync(string rpc)
    {
        var admin = _server.DeploymentAdmin();
        switch (rpc)
        {
            case "ListKeys":
                {
                    var other = _server.CreateClient(await _server.CreatePrincipalWithTokenAsync("dev-2", "dev", "key-manager"));
                    for (var i = 0; i < 3; i++)
                    {
                        await _developer.CreateKeyAsync("tenants/dev", "listed-" + i);
                    }

                    return new(_developer, other, async (c, t, n) =>
                    {
                        var r = await c.Raw.ListKeysAsync(new ListKeysRequest { Parent = "tenants/dev", PageSize = n, PageToken = t });
                        return new(r.Keys.Count, r.NextPageToken);
                    }, "tenants/dev", "listed-0", 3);
                }

            case "ListKeyVersions":
                {
                    var other = _server.CreateClient(await _server.CreatePrincipalWithTokenAsync("dev-2", "dev", "key-manager"));
                    var key = await _developer.CreateKeyAsync("tenants/dev", "versions");
                    await _developer.RotateKeyAsync(key.Name);
                    await _developer.RotateKeyAsync(key.Name);
                    return new(_developer, other, async (c, t, n) =>
                    {
                        var r = await c.Raw.ListKeyVersionsAsync(new ListKeyVersionsRequest { Parent = key.Name, PageSize = n, PageToken = t });
                        return new(r.KeyVersions.Count, r.NextPageToken);
                    }, key.Name, "1", 3);
                }

            case "ListAliases":
                {
                    var other = _server.CreateClient(await _server.CreatePrincipalWithTokenAsync("dev-2", "dev", "key-manager"));
                    var key = await _developer.CreateKeyAsync("tenants/dev", "aliased");
                    for (var i = 0; i < 3; i++)
                    {
                        await _developer.CreateAliasAsync("tenants/dev", "alias-" + i, key.Name);
                    }

                    return new(_developer, other, async (c, t, n) =>
                    {
                        var r = await c.Raw.ListAliasesAsync(new ListAliasesRequest { Parent = "tenants/dev", PageSize = n, PageToken = t });
                        return new(r.Aliases.Count, r.NextPageToken);
                    }, "tenants/dev/aliases", "alias-0", 3);
                }

            case "ListTenants":
                {
                    var other = _server.CreateClient(await _server.CreatePrincipalWithTokenAsync("admin-2", null, "deployment-admin"));
                    await _server.EnsureTenantAsync("t-1");
                    await _server.EnsureTenantAsync("t-2");
                    var total = (await admin.Access.ListTenantsAsync(new ListTenantsRequest { PageSize = 1000 })).Tenants.Count;
                    return new(admin, other, async (c, t, n) =>
                    {
                        var r = await c.Access.ListTenantsAsync(new ListTenantsRequest { PageSize = n, PageToken = t });
                        return new(r.Tenants.Count, r.NextPageToken);
                    }, "tenants", "dev", total);
                }

            case "ListPrincipals":
                {
                    var other = _server.CreateClient(await _server.CreatePrincipalWithTokenAsync("admin-2", null, "deployment-admin"));
                    await _server.EnsureTenantAsync("listed");
                    foreach (var name in new[] { "token:l-1", "token:l-2", "token:l-3" })
                    {
                        await admin.Access.CreatePrincipalAsync(new CreatePrincipalRequest { Name = name, Tenant = "tenants/listed" });
                    }

                    return new(admin, other, async (c, t, n) =>
                    {
                        var r = await c.Access.ListPrincipalsAsync(new ListPrincipalsRequest { Tenant = "tenants/listed", PageSize = n, PageToken = t });
                        return new(r.Principals.Count, r.NextPageToken);
                    }, "tenants/listed/principals", "token:l-1", 3);
                }

            case "ListApiTokens":
                {
                    var other = _server.CreateClient(await _server.CreatePrincipalWithTokenAsync("admin-2", null, "deployment-admin"));
                    await admin.Access.CreatePrincipalAsync(new CreatePrincipalRequest { Name = "token:holder", Tenant = "tenants/dev" });
                    for (var i = 0; i < 3; i++)
                    {
                        await admin.Access.CreateApiTokenAsync(new CreateApiTokenRequest { Principal = "token:holder", Kind = "SERVICE" });
                    }

                    return new(admin, other, async (c, t, n) =>
                    {
                        var r = await c.Access.ListApiTokensAsync(new ListApiTokensRequest { Principal = "token:holder", PageSize = n, PageToken = t });
                        return new(r.Tokens.Count, r.NextPageToken);
                    }, "apiTokens", "0:0000000000000000", 3);
                }

            case "ListRoleBindings":
                {
                    var other = _server.CreateClient(await _server.CreatePrincipalWithTokenAsync("admin-2", null, "deployment-admin"));
                    await _server.EnsureTenantAsync("bound");
                    foreach (var name in new[] { "token:b-1", "token:b-2", "token:b-3" })
                    {
                        await admin.Access.CreatePrincipalAsync(new CreatePrincipalRequest { Name = name, Tenant = "tenants/bound" });
                        await admin.Access.SetRoleBindingAsync(new SetRoleBindingRequest { Principal = name, Role = "key-user", Tenant = "tenants/bound" });
                    }

                    return new(admin, other, async (c, t, n) =>
                    {
                        var r = await c.Access.ListRoleBindingsAsync(new ListRoleBindingsRequest { Tenant = "tenants/bound", PageSize = n, PageToken = t });
                        return new(r.Bindings.Count, r.NextPageToken);
                    }, "tenants/bound/roleBindings", "2:token:b-1", 3);
                }

            case "ListGrants":
                {
                    var other = _server.CreateClient(await _server.CreatePrincipalWithTokenAsync("dev-2", "dev", "key-manager"));
                    var key = await _developer.CreateKeyAsync("tenants/dev", "granted");
                    await _developer.Raw.SetKeyPolicyAsync(new SetKeyPolicyRequest
                    {
                        Name = key.Name,
                        Entries = { new KeyPolicyEntry { Principal = "token:developer", Operations = { "ENCRYPT", "DECRYPT" } } },
                    });
                    for (var i = 0; i < 3; i++)
                    {
                        await _developer.Raw.CreateGrantAsync(new CreateGrantRequest
                        {
                            Parent = key.Name,
                            Grant = new KeyGrant { Grantee = "token:dev-2", Operations = { "DECRYPT" }, ContextEquals = { ["record"] = i.ToString(System.Globalization.CultureInfo.InvariantCulture) } },
                        });
                    }

                    return new(_developer, other, async (c, t, n) =>
                    {
                        var r = await c.Raw.ListGrantsAsync(new ListGrantsRequest { Parent = key.Name, PageSize = n, PageToken = t });
                        return new(r.Grants.Count, r.NextPageToken);
                    }, key.Name + "/grants", "0:0000000000000000", 3);
                }

            default:
                return new(_officer, _officer, async (c, t, n) =>
                {
                    var r = await c.Quorum.ListQuorumRequestsAsync(new ListQuorumRequestsRequest { Parent = "tenants/dev", PageSize = n, PageToken = t });
                    return new(r.Requests.Count, r.NextPageToken);
                }, "tenants/dev/quorumRequests", "00000000", 0, Pages: false);
        }
    }
}
