using System.Security.Cryptography;
using Kms.Core.Crypto;
using Kms.Core.Errors;
using Kms.Core.Keys;
using Kms.Core.Names;
using Kms.Core.Ports;

namespace Kms.Storage.Tests;

/// <summary>
/// What every <see cref="IKeyStore"/> backend must do. A backend's test class derives from
/// this and supplies a fresh, empty store.
/// </summary>
public abstract class KeyStoreContract
{
    protected static readonly TenantId Dev = TenantId.Parse("dev");
    protected static readonly TenantId Acme = TenantId.Parse("acme");

    protected abstract Task<IKeyStore> CreateStoreAsync();

    [Fact]
    public async Task CreateKey_ThenGet_ReturnsSameKey()
    {
        var store = await CreateStoreAsync();
        var key = NewKey(Dev, "orders", ("team", "payments"));
        await store.CreateKeyAsync(key, Material(), null, default);

        var read = await store.GetKeyAsync(key.Name, default);
        Assert.NotNull(read);
        Assert.Equal(key.Name, read.Name);
        Assert.Equal(key.Primary, read.Primary);
        Assert.Equal(key.CreateTime, read.CreateTime);
        Assert.True(key.Labels.SetEquals(read.Labels));
        Assert.False(read.AllowImport);

        var byok = NewKey(Dev, "byok") with { AllowImport = true };
        await store.CreateKeyAsync(byok, Material(), null, default);
        Assert.True((await store.GetKeyAsync(byok.Name, default))!.AllowImport);
        Assert.True(Assert.Single(await store.ListKeysAsync(Dev, "b", 10, default), k => k.Name == byok.Name).AllowImport);
    }

    [Fact]
    public async Task GetKey_Missing_Null()
    {
        var store = await CreateStoreAsync();
        Assert.Null(await store.GetKeyAsync(KeyName.Create(Dev, "nothing"), default));
    }

    [Fact]
    public async Task CreateKey_TakenId_AlreadyExistsAndFirstKeptIntact()
    {
        var store = await CreateStoreAsync();
        var first = NewKey(Dev, "orders");
        var firstMaterial = Material();
        await store.CreateKeyAsync(first, firstMaterial, null, default);

        var e = await Assert.ThrowsAsync<KmsException>(() => store.CreateKeyAsync(NewKey(Dev, "orders"), Material(), null, default));
        Assert.Equal(KmsErrorCode.AlreadyExists, e.Code);
        var kept = await store.GetPrimaryMaterialAsync(first.Name, default);
        Assert.Equal(first.Primary.Id, kept!.Version.Id);
        Assert.Equal(firstMaterial.Bytes.ToArray(), kept.Material!.Bytes.ToArray());
    }

    [Fact]
    public async Task CreateKey_SameIdInTwoTenants_Independent()
    {
        var store = await CreateStoreAsync();
        var dev = NewKey(Dev, "orders");
        var acme = NewKey(Acme, "orders");
        await store.CreateKeyAsync(dev, Material(), null, default);
        await store.CreateKeyAsync(acme, Material(), null, default);

        Assert.Equal(dev.Primary.Id, (await store.GetKeyAsync(dev.Name, default))!.Primary.Id);
        Assert.Equal(acme.Primary.Id, (await store.GetKeyAsync(acme.Name, default))!.Primary.Id);
    }

    [Fact]
    public async Task FindVersionMaterial_OwnTenant_ReturnsKeyVersionAndMaterial()
    {
        var store = await CreateStoreAsync();
        var key = NewKey(Dev, "orders");
        var material = Material();
        await store.CreateKeyAsync(key, material, null, default);

        var found = await store.FindVersionMaterialAsync(Dev, key.Primary.Id, default);
        Assert.NotNull(found);
        Assert.Equal(key.Name, found.Key.Name);
        Assert.Equal(key.Primary, found.Version);
        Assert.Equal(material.Bytes.ToArray(), found.Material!.Bytes.ToArray());
    }

    [Fact]
    public async Task FindVersionMaterial_OtherTenant_Null()
    {
        var store = await CreateStoreAsync();
        var key = NewKey(Dev, "orders");
        await store.CreateKeyAsync(key, Material(), null, default);

        Assert.Null(await store.FindVersionMaterialAsync(Acme, key.Primary.Id, default));
        Assert.Null(await store.FindVersionMaterialAsync(Dev, KeyVersionId.NewId(), default));
    }

    [Fact]
    public async Task GetPrimaryMaterial_ReturnsPrimaryAndItsMaterial()
    {
        var store = await CreateStoreAsync();
        var key = NewKey(Dev, "orders");
        var material = Material();
        await store.CreateKeyAsync(key, material, null, default);

        var primary = await store.GetPrimaryMaterialAsync(key.Name, default);
        Assert.Equal(key.Primary, primary!.Version);
        Assert.Equal(material.Bytes.ToArray(), primary.Material!.Bytes.ToArray());
        Assert.Null(await store.GetPrimaryMaterialAsync(KeyName.Create(Acme, "orders"), default));
    }

    [Fact]
    public async Task ListKeys_OrderedByIdAfterCursor_OnlyThisTenant()
    {
        var store = await CreateStoreAsync();
        foreach (var id in new[] { "c", "a", "b", "B", "a-1" })
        {
            await store.CreateKeyAsync(NewKey(Dev, id), Material(), null, default);
        }

        await store.CreateKeyAsync(NewKey(Acme, "aa"), Material(), null, default);

        var all = await store.ListKeysAsync(Dev, null, 100, default);
        Assert.Equal(["B", "a", "a-1", "b", "c"], all.Select(k => k.Name.KeyId));
        var after = await store.ListKeysAsync(Dev, "a", 2, default);
        Assert.Equal(["a-1", "b"], after.Select(k => k.Name.KeyId));
    }

    [Fact]
    public async Task CreateKey_WithRequest_RecordsItAtomically()
    {
        var store = await CreateStoreAsync();
        var key = NewKey(Dev, "orders");
        var request = new RequestRecord(Dev, "req-1", "CreateKey", RandomNumberGenerator.GetBytes(32), key.Name.ToString(), key.CreateTime);
        await store.CreateKeyAsync(key, Material(), request, default);

        var found = await store.FindRequestAsync(Dev, "req-1", default);
        Assert.Equal(request.Fingerprint, found!.Fingerprint);
        Assert.Equal(request.Resource, found.Resource);
        Assert.Null(await store.FindRequestAsync(Acme, "req-1", default));
    }

    [Fact]
    public async Task CreateKey_RequestIdTaken_AlreadyExistsAndNoKeyStored()
    {
        var store = await CreateStoreAsync();
        var first = NewKey(Dev, "orders");
        await store.CreateKeyAsync(first, Material(), new RequestRecord(Dev, "req-1", "CreateKey", [1], first.Name.ToString(), first.CreateTime), default);

        var second = NewKey(Dev, "invoices");
        var e = await Assert.ThrowsAsync<KmsException>(() =>
            store.CreateKeyAsync(second, Material(), new RequestRecord(Dev, "req-1", "CreateKey", [2], second.Name.ToString(), second.CreateTime), default));
        Assert.Equal(KmsErrorCode.AlreadyExists, e.Code);
        Assert.Null(await store.GetKeyAsync(second.Name, default));
    }

    [Fact]
    public async Task CreateKey_KeyIdTaken_RequestNotRecorded()
    {
        var store = await CreateStoreAsync();
        await store.CreateKeyAsync(NewKey(Dev, "orders"), Material(), null, default);
        var again = NewKey(Dev, "orders");

        await Assert.ThrowsAsync<KmsException>(() =>
            store.CreateKeyAsync(again, Material(), new RequestRecord(Dev, "req-2", "CreateKey", [1], again.Name.ToString(), again.CreateTime), default));
        Assert.Null(await store.FindRequestAsync(Dev, "req-2", default));
    }

    [Fact]
    public async Task SetSettingIfAbsent_KeepsFirstValue()
    {
        var store = await CreateStoreAsync();
        Assert.Null(await store.GetSettingAsync("s", default));
        Assert.Equal("one", await store.SetSettingIfAbsentAsync("s", "one", default));
        Assert.Equal("one", await store.SetSettingIfAbsentAsync("s", "two", default));
        Assert.Equal("one", await store.GetSettingAsync("s", default));
    }

    [Fact]
    public async Task SetSetting_ReplacesTheValue_LeavesOthers()
    {
        var store = await CreateStoreAsync();
        await store.SetSettingAsync("s", "one", default);
        await store.SetSettingIfAbsentAsync("other", "kept", default);
        await store.SetSettingAsync("s", "two", default);
        Assert.Equal(("two", "kept"), (await store.GetSettingAsync("s", default), await store.GetSettingAsync("other", default)));
    }

    [Fact]
    public async Task CreateKey_Concurrent_AllStored()
    {
        var store = await CreateStoreAsync();
        await Task.WhenAll(Enumerable.Range(0, 40).Select(i => store.CreateKeyAsync(NewKey(Dev, $"k{i:00}"), Material(), null, default)));
        Assert.Equal(40, (await store.ListKeysAsync(Dev, null, 100, default)).Count);
    }

    public static Key NewKey(TenantId tenant, string keyId, params (string Key, string Value)[] labels)
    {
        var name = KeyName.Create(tenant, keyId);
        var now = DateTimeOffset.FromUnixTimeMilliseconds(DateTimeOffset.UtcNow.ToUnixTimeMilliseconds());
        var primary = new KeyVersion(name.Version(1), KeyVersionId.NewId(), KeyState.Enabled, KeyAlgorithm.Aes256Gcm, now);
        return new Key(name, KeyPurpose.EncryptDecrypt, KeyState.Enabled, primary, now,
            KeyLabels.Create(labels.Select(l => new KeyValuePair<string, string>(l.Key, l.Value))));
    }

    public static WrappedKeyMaterial Material() => new(RandomNumberGenerator.GetBytes(40));
}
