using Kms.Core.Errors;
using Kms.Core.Keys;
using Kms.Core.Names;
using Kms.Core.Ports;
using Kms.Core.Services;
using Kms.Testing.Fakes;
using Microsoft.Extensions.Time.Testing;

namespace Kms.Core.Tests;

public sealed class KeyServiceTests : IDisposable
{
    private static readonly Caller Dev = DomainHarness.Dev;
    private static readonly TenantId DevTenant = TenantId.Parse("dev");

    private readonly DomainHarness _domain = new();
    private readonly FakeHsm _hsm;
    private readonly IKeyStore _store;
    private readonly FakeTimeProvider _time;
    private readonly KeyService _service;

    public KeyServiceTests()
    {
        _hsm = _domain.FakeHsm!;
        _store = _domain.Store;
        _time = _domain.Time;
        _service = _domain.Keys;
    }

    public void Dispose() => _domain.Dispose();

    [Fact]
    public async Task RotateKey_DisabledKey_RefusedBeforeTheHsmGeneratesAVersion()
    {
        // An RSA-4096 pair holds an HSM session for seconds: a rotation that cannot happen must not cost one.
        var key = (await Create("disabled")).Key;
        await _service.DisableKeyAsync(Dev, key.Name, default);
        var generated = _hsm.Calls.GetValueOrDefault("generate");

        var e = await Assert.ThrowsAsync<KmsException>(() => _service.RotateKeyAsync(Dev, key.Name, null, default));

        Assert.Equal(KmsErrorCode.FailedPrecondition, e.Code);
        Assert.Equal(generated, _hsm.Calls.GetValueOrDefault("generate"));
    }

    [Fact]
    public async Task CreateKey_New_StoresEnabledKeyWithPrimaryVersion1()
    {
        var result = await Create("orders");

        Assert.False(result.Replayed);
        Assert.Equal("tenants/dev/keys/orders", result.Key.Name.ToString());
        Assert.Equal(KeyState.Enabled, result.Key.State);
        Assert.Equal(1, result.Key.Primary.Name.Version);
        Assert.Equal(_time.GetUtcNow(), result.Key.CreateTime);
        Assert.Equal(result.Key, await _store.GetKeyAsync(result.Key.Name, default));
    }

    [Fact]
    public async Task CreateKey_ExistingId_AlreadyExists()
    {
        await Create("orders");
        var e = await Assert.ThrowsAsync<KmsException>(() => Create("orders"));
        Assert.Equal(KmsErrorCode.AlreadyExists, e.Code);
    }

    [Fact]
    public async Task CreateKey_SameRequestIdSameRequest_ReturnsFirstKeyWithoutNewMaterial()
    {
        var first = await Create("orders", requestId: "req-1");
        var second = await Create("orders", requestId: "req-1");

        Assert.True(second.Replayed);
        Assert.Equal(first.Key, second.Key);
        Assert.Equal(1, _hsm.Calls["generate"]);
    }

    [Fact]
    public async Task CreateKey_SameRequestIdOtherRequest_InvalidArgumentAndNothingCreated()
    {
        await Create("orders", requestId: "req-1");
        var e = await Assert.ThrowsAsync<KmsException>(() => Create("invoices", requestId: "req-1"));

        Assert.Equal("request_id", e.Field);
        Assert.Null(await _store.GetKeyAsync(KeyName.Parse("tenants/dev/keys/invoices", "name"), default));
    }

    [Fact]
    public async Task CreateKey_OtherTenantParent_NotFoundAsIfMissing()
    {
        var command = new CreateKeyCommand(TenantId.Parse("acme"), "orders", KeyPurpose.EncryptDecrypt, KeyLabels.Empty, null);
        var e = await Assert.ThrowsAsync<KmsException>(() => _service.CreateKeyAsync(Dev, command, default));
        Assert.Equal(KmsErrorCode.NotFound, e.Code);
    }

    [Fact]
    public async Task CreateKey_BadRequestId_InvalidArgumentBeforeAnyHsmCall()
    {
        var e = await Assert.ThrowsAsync<KmsException>(() => Create("orders", requestId: "has space"));
        Assert.Equal("request_id", e.Field);
        Assert.False(_hsm.Calls.ContainsKey("generate"));
    }

    [Fact]
    public async Task GetKey_OtherTenant_SameAnswerAsMissing()
    {
        await Create("orders");
        var other = DomainHarness.TenantCaller("token:acme-2", "acme");
        var forbidden = await Assert.ThrowsAsync<KmsException>(() => _service.GetKeyAsync(other, KeyName.Parse("tenants/dev/keys/orders", "name"), default));
        var missing = await Assert.ThrowsAsync<KmsException>(() => _service.GetKeyAsync(other, KeyName.Parse("tenants/dev/keys/nothing", "name"), default));

        Assert.Equal(missing.Code, forbidden.Code);
        Assert.Equal(missing.Message.Replace("nothing", "orders", StringComparison.Ordinal), forbidden.Message);
    }

    [Fact]
    public async Task ListKeys_Pages_VisitEveryKeyOnceInOrder()
    {
        var ids = Enumerable.Range(0, 7).Select(i => $"key-{i:00}").Reverse().ToList();
        foreach (var id in ids)
        {
            await Create(id);
        }

        var seen = new List<string>();
        string? token = null;
        do
        {
            var page = await _service.ListKeysAsync(Dev, DevTenant, 3, token, default);
            Assert.True(page.Items.Count <= 3);
            seen.AddRange(page.Items.Select(k => k.Name.KeyId));
            token = page.NextPageToken;
        }
        while (token is not null);

        Assert.Equal(ids.Order(StringComparer.Ordinal), seen);
    }

    [Fact]
    public async Task ListKeys_TokenOfAnotherParent_InvalidArgument()
    {
        for (var i = 0; i < 3; i++)
        {
            await Create($"k{i}");
        }

        var page = await _service.ListKeysAsync(Dev, DevTenant, 1, null, default);
        var acme = DomainHarness.TenantCaller("token:acme-2", "acme");
        var e = await Assert.ThrowsAsync<KmsException>(() => _service.ListKeysAsync(acme, TenantId.Parse("acme"), 1, page.NextPageToken, default));
        Assert.Equal("page_token", e.Field);
    }

    [Theory]
    [InlineData("not base64 !")]
    [InlineData("djF8ZGV2")]
    public async Task ListKeys_GarbageToken_InvalidArgument(string token)
    {
        var e = await Assert.ThrowsAsync<KmsException>(() => _service.ListKeysAsync(Dev, DevTenant, 1, token, default));
        Assert.Equal("page_token", e.Field);
    }

    [Theory]
    [InlineData("a\0b")] // PostgreSQL refuses NUL in text: an "unavailable" database, before
    [InlineData("a\nb")]
    public async Task ListKeys_ATokenWhoseCursorHoldsAControlCharacter_InvalidArgument(string cursor)
    {
        var e = await Assert.ThrowsAsync<KmsException>(() => _service.ListKeysAsync(Dev, DevTenant, 1, PageToken.Encode(DevTenant.ResourceName, cursor), default));
        Assert.Equal("page_token", e.Field);
    }

    [Fact]
    public void PageToken_ACursorHoldingTheSeparator_RoundTrips_ATokenOfAnotherScopeDoesNot()
    {
        // Principal names may hold '|' ("cn:a|1"): the next page must still be reachable.
        Assert.Equal("cn:a|1", PageToken.Decode("tenants/dev/principals", PageToken.Encode("tenants/dev/principals", "cn:a|1")));
        Assert.Equal("page_token", Assert.Throws<KmsException>(() => PageToken.Decode("tenants/dev", PageToken.Encode("tenants/dev/principals", "cn:a"))).Field);
    }

    [Theory]
    [InlineData("abc")]
    [InlineData("-5")]
    public async Task ListKeyVersions_ATokenWhoseCursorIsNoVersion_InvalidArgument_NotTheFirstPageAgain(string cursor)
    {
        var key = await Create("versions-token");
        var e = await Assert.ThrowsAsync<KmsException>(() => _service.ListKeyVersionsAsync(Dev, key.Key.Name, 1, PageToken.Encode(key.Key.Name.ToString(), cursor), default));
        Assert.Equal("page_token", e.Field);
    }

    [Fact]
    public async Task ListKeys_NegativePageSize_InvalidArgument()
    {
        var e = await Assert.ThrowsAsync<KmsException>(() => _service.ListKeysAsync(Dev, DevTenant, -1, null, default));
        Assert.Equal("page_size", e.Field);
    }

    private Task<CreateKeyResult> Create(string keyId, string? requestId = null) =>
        _service.CreateKeyAsync(Dev, new CreateKeyCommand(DevTenant, keyId, KeyPurpose.EncryptDecrypt, KeyLabels.Empty, requestId), default);
}
