using Grpc.Core;
using Kms.Contracts.V1;
using Kms.Testing;

namespace Kms.Server.Tests;

/// <summary>
/// Page tokens are bound to the listing they were issued for: ListAuditEvents' to its whole
/// filter (and tagged, so a made-up token is refused), ListPrincipals' to its tenant and
/// <c>show_deleted</c>. A token used with another listing is INVALID_ARGUMENT naming
/// <c>page_token</c>, not a page from the middle of that listing.
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

    [Theory]
    [InlineData("garbled")]
    [InlineData("17")]
    [InlineData("bare sequence")]
    [InlineData("another sequence")]
    [InlineData("tag cut")]
    [InlineData("not base64")]
    [InlineData("one character")]
    [InlineData("megabyte")]
    [InlineData("version 2")]
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
            "another sequence" => Forged(Issued(), b => b[8] ^= 1),
            "not base64" => "!!!!\u00e9\u0000",
            "one character" => "A",
            "megabyte" => new string('A', 1 << 20),
            "version 2" => Forged(Issued(), b => b[0] = 2),
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
    }

    [Fact]
    public async Task ListAuditEvents_PagedThroughAFilter_EveryMatchingEventExactlyOnce_AlsoAcrossARestart()
    {
        var key = await _developer.CreateKeyAsync("tenants/dev", "every");
        for (var i = 0; i < 11; i++)
        {
            await _developer.EncryptAsync(key.Name, new byte[] { 1 });
        }

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
        var officerToken = await _server.CreatePrincipalWithTokenAsync("officer-2", null, "security-officer");
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
}
