using Kms.Core.Errors;
using Kms.Core.Services;
using Kms.Testing.Fakes;

namespace Kms.Core.Tests;

public sealed class DomainKeyGuardTests
{
    [Fact]
    public async Task Verify_FirstStart_PinsCheckValue()
    {
        using var hsm = new FakeHsm { DomainKeyCheckValue = "ABC123" };
        var store = new InMemoryStore();
        var pin = await DomainKeyGuard.VerifyAsync(hsm, store, devMode: true, default);

        Assert.True(pin.FirstStart);
        Assert.Equal("ABC123", await store.GetSettingAsync(DomainKeyGuard.CheckValueSetting, default));
    }

    [Fact]
    public async Task Verify_SameDomainKeyAgain_Passes()
    {
        var store = new InMemoryStore();
        using var hsm = new FakeHsm { DomainKeyCheckValue = "ABC123" };
        await DomainKeyGuard.VerifyAsync(hsm, store, devMode: false, default);
        var pin = await DomainKeyGuard.VerifyAsync(hsm, store, devMode: false, default);
        Assert.Equal("ABC123", pin.CheckValue);
    }

    [Fact]
    public async Task Verify_OtherDomainKey_RefusesNamingBothCheckValues()
    {
        var store = new InMemoryStore();
        using var first = new FakeHsm { DomainKeyCheckValue = "ABC123" };
        using var other = new FakeHsm { DomainKeyCheckValue = "DEF456" };
        await DomainKeyGuard.VerifyAsync(first, store, devMode: true, default);

        var e = await Assert.ThrowsAsync<KmsException>(() => DomainKeyGuard.VerifyAsync(other, store, devMode: true, default));
        Assert.Equal(KmsErrorCode.FailedPrecondition, e.Code);
        Assert.Contains("ABC123", e.Message, StringComparison.Ordinal);
        Assert.Contains("DEF456", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Verify_DevDatabaseOutsideDevMode_Refuses()
    {
        var store = new InMemoryStore();
        using var hsm = new FakeHsm();
        await DomainKeyGuard.VerifyAsync(hsm, store, devMode: true, default);

        var e = await Assert.ThrowsAsync<KmsException>(() => DomainKeyGuard.VerifyAsync(hsm, store, devMode: false, default));
        Assert.Contains("dev-mode", e.Message, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData("{\"old_check_value\":\"ABC123\",\"new_check_value\":\"DEF456\",\"last_item\":null,\"rewrapped\":0}", true)]
    [InlineData("{\"old_check_value\":\"ABC123\",\"new_check_value\":\"DEF456\",\"last_item\":\"key_version:00\",\"rewrapped\":1}", false)]
    [InlineData("{}", false)]
    public async Task Verify_RotationRecorded_ServesThePinnedKeyOnlyWhileNoBlobHasMoved(string record, bool serves)
    {
        // A first run stopped before its first blob leaves every blob under the pinned key; once
        // one has moved (or the record cannot be read), nothing serves, not even the pinned key.
        var store = new InMemoryStore();
        using var hsm = new FakeHsm { DomainKeyCheckValue = "ABC123" };
        await DomainKeyGuard.VerifyAsync(hsm, store, devMode: false, default);
        await store.SetSettingIfAbsentAsync(DomainKeyGuard.RotationSetting, record, default);

        if (serves)
        {
            await DomainKeyGuard.VerifyAsync(hsm, store, devMode: false, default);
            return;
        }

        var e = await Assert.ThrowsAsync<KmsException>(() => DomainKeyGuard.VerifyAsync(hsm, store, devMode: false, default));
        Assert.Equal(KmsErrorCode.FailedPrecondition, e.Code);
        Assert.Contains("rotation is in progress", e.Message, StringComparison.Ordinal);
    }
}
