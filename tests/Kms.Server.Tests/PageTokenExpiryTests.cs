using Grpc.Core;
using Kms.Contracts.V1;
using Kms.Testing;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Time.Testing;

namespace Kms.Server.Tests;

/// <summary>
/// A page token expires: one older than <c>Kms:PageTokenLifetime</c> (24 hours by default) is
/// refused INVALID_ARGUMENT naming <c>page_token</c> and telling the caller to start from the first
/// page; a token of the layout before (version 1, no issue time) is refused the same way. Before,
/// a token was good forever: one leaked in a log let its holder page on, as its caller, a year on.
/// The server's clock is a fake one, moved by the test.
/// </summary>
public sealed class PageTokenExpiryTests : IAsyncLifetime
{
    private readonly FakeTimeProvider _time = new(new DateTimeOffset(2026, 12, 7, 12, 0, 0, TimeSpan.Zero));
    private KmsTestServer _server = null!;
    private Kms.Client.KmsClient _developer = null!;
    private Kms.Client.KmsClient _officer = null!;

    public async Task InitializeAsync()
    {
        _server = await KmsTestServer.StartAsync(null, null, "dev", services => services.AddSingleton<TimeProvider>(_time));
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
    public async Task ListAuditEventsAndListKeys_ATokenGoodForTheLifetime_RefusedPastIt_StartFromTheFirstPage()
    {
        var key = await _developer.CreateKeyAsync("tenants/dev", "expiring-a");
        await _developer.CreateKeyAsync("tenants/dev", "expiring-b");
        for (var i = 0; i < 3; i++)
        {
            await _developer.EncryptAsync(key.Name, new byte[] { 1 });
        }

        var audit = new ListAuditEventsRequest { Resource = key.Name, PageSize = 1 };
        var keys = new ListKeysRequest { Parent = "tenants/dev", PageSize = 1 };
        var auditToken = (await _officer.Audit.ListAuditEventsAsync(audit)).NextPageToken;
        var keysToken = (await _developer.Raw.ListKeysAsync(keys)).NextPageToken;
        Assert.NotEmpty(auditToken);
        Assert.NotEmpty(keysToken);

        // At the lifetime's end, both still page on (the officer's 12-hour session renewed: the page
        // token is bound to the principal, not to the credential).
        _time.Advance(TimeSpan.FromHours(24));
        await RenewOfficerSessionAsync();
        Assert.Single((await _officer.Audit.ListAuditEventsAsync(new ListAuditEventsRequest(audit) { PageToken = auditToken })).Events);
        Assert.Single((await _developer.Raw.ListKeysAsync(new ListKeysRequest(keys) { PageToken = keysToken })).Keys);

        // A millisecond past it, each is refused, and the caller is told what to do.
        _time.Advance(TimeSpan.FromMilliseconds(1));
        await AssertExpiredAsync(async () => await _officer.Audit.ListAuditEventsAsync(new ListAuditEventsRequest(audit) { PageToken = auditToken }));
        await AssertExpiredAsync(async () => await _developer.Raw.ListKeysAsync(new ListKeysRequest(keys) { PageToken = keysToken }));

        // The first page again gives a token good from now.
        var fresh = (await _officer.Audit.ListAuditEventsAsync(audit)).NextPageToken;
        _time.Advance(TimeSpan.FromHours(23));
        await RenewOfficerSessionAsync();
        Assert.Single((await _officer.Audit.ListAuditEventsAsync(new ListAuditEventsRequest(audit) { PageToken = fresh })).Events);

        static async Task AssertExpiredAsync(Func<Task> call)
        {
            var e = await Assert.ThrowsAsync<RpcException>(call);
            Assert.Equal(StatusCode.InvalidArgument, e.StatusCode);
            Assert.StartsWith("page_token: has expired", e.Status.Detail, StringComparison.Ordinal);
            Assert.Contains("24 h", e.Status.Detail, StringComparison.Ordinal);
            Assert.Contains("start again from the first page", e.Status.Detail, StringComparison.Ordinal);
        }
    }

    private async Task RenewOfficerSessionAsync()
    {
        using var admin = _server.DeploymentAdmin();
        var session = await admin.Access.CreateApiTokenAsync(new CreateApiTokenRequest
        {
            Principal = "token:officer",
            Kind = "SESSION",
            Lifetime = Google.Protobuf.WellKnownTypes.Duration.FromTimeSpan(TimeSpan.FromHours(12)),
        });
        _officer.Dispose();
        _officer = _server.CreateClient(session.Secret);
    }

    [Fact]
    public async Task ListKeys_ATokenOfTheLayoutBefore_NoIssueTime_RefusedThoughItsTagIsGood_StartFromTheFirstPage()
    {
        await _developer.CreateKeyAsync("tenants/dev", "timeless-a");
        await _developer.CreateKeyAsync("tenants/dev", "timeless-b");
        var keys = new ListKeysRequest { Parent = "tenants/dev", PageSize = 1 };
        var issued = System.Buffers.Text.Base64Url.DecodeFromChars((await _developer.Raw.ListKeysAsync(keys)).NextPageToken);

        // Version 1: the version byte, the domain service's token, the tag over "List page token v1|"
        // and the RPC, the caller, the filter and that token, with the deployment's key. The domain
        // service's token is taken from the one issued (after its version byte and issue time).
        var inner = issued.AsSpan(1 + 8, issued.Length - 1 - 8 - 16).ToArray();
        var length = inner.Length.ToString(System.Globalization.CultureInfo.InvariantCulture);
        var input = System.Text.Encoding.UTF8.GetBytes($"List page token v1|8:ListKeys|15:token:developer|3:dev|1:1|11:tenants/dev|{length.Length}:{length}|");
        var tag = _server.Services.GetRequiredService<Kms.Core.Services.AuditLog>().PageTokenTag([.. input, .. inner]);
        var before = System.Buffers.Text.Base64Url.EncodeToString([1, .. inner, .. tag.AsSpan(0, 16)]);

        var e = await Assert.ThrowsAsync<RpcException>(async () => await _developer.Raw.ListKeysAsync(new ListKeysRequest(keys) { PageToken = before }));
        Assert.Equal(StatusCode.InvalidArgument, e.StatusCode);
        Assert.StartsWith("page_token: is of a layout this server no longer accepts", e.Status.Detail, StringComparison.Ordinal);
        Assert.Contains("start again from the first page", e.Status.Detail, StringComparison.Ordinal);
    }

    [Fact]
    public async Task PageTokenLifetime_Configured_TokensExpireAfterIt()
    {
        await using var server = await KmsTestServer.StartAsync(null, null, "dev", services => services.AddSingleton<TimeProvider>(_time), "--Kms:PageTokenLifetime=00:10:00");
        using var developer = server.CreateClient();
        await developer.CreateKeyAsync("tenants/dev", "short-a");
        await developer.CreateKeyAsync("tenants/dev", "short-b");
        var keys = new ListKeysRequest { Parent = "tenants/dev", PageSize = 1 };
        var token = (await developer.Raw.ListKeysAsync(keys)).NextPageToken;

        _time.Advance(TimeSpan.FromMinutes(10));
        Assert.Single((await developer.Raw.ListKeysAsync(new ListKeysRequest(keys) { PageToken = token })).Keys);
        _time.Advance(TimeSpan.FromSeconds(1));
        var e = await Assert.ThrowsAsync<RpcException>(async () => await developer.Raw.ListKeysAsync(new ListKeysRequest(keys) { PageToken = token }));
        Assert.Equal(StatusCode.InvalidArgument, e.StatusCode);
        Assert.StartsWith("page_token: has expired: a page token is good for 10 min", e.Status.Detail, StringComparison.Ordinal);
    }
}
