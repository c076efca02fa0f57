using Kms.Ceremony.Shares;
using Kms.Ceremony.Sharing;

namespace Kms.Ceremony.Tests.Shares;

public sealed class DomainKeyRecoveryTests
{
    private readonly ShareFile[] _files = Ceremony.Split();

    [Theory]
    [InlineData(0, 1, 2)]
    [InlineData(4, 2, 0)]
    [InlineData(1, 3, 4)]
    [InlineData(0, 1, 2, 3, 4)]
    public void Combine_ThresholdOrMoreFiles_RebuildsTheDomainKey(params int[] which)
    {
        var unlocked = which.Select(i => Ceremony.Unlock(Ceremony.Reparse(_files[i].ToBytes()))).ToList();

        var key = DomainKeyRecovery.Combine(unlocked, Ceremony.DomainId, Ceremony.DomainKcv);

        Assert.Equal(Ceremony.DomainKey, key);
    }

    [Fact]
    public void Combine_ThresholdMinusOneFiles_Refused()
    {
        var e = Assert.Throws<CeremonyException>(() => DomainKeyRecovery.Combine([Ceremony.Unlock(_files[0]), Ceremony.Unlock(_files[3])]));

        Assert.Equal(CeremonyError.NotEnoughShares, e.Error);
        Assert.Equal("need 3 shares, got 2", e.Message);
    }

    [Fact]
    public void Combine_ShareOfAnotherDomain_RefusedNamingIt()
    {
        var foreign = Ceremony.Split(domainId: "dk-us-1");

        var e = Assert.Throws<CeremonyException>(() => DomainKeyRecovery.Combine(
            [Ceremony.Unlock(_files[0]), Ceremony.Unlock(foreign[1]), Ceremony.Unlock(_files[2])]));

        Assert.Equal(CeremonyError.Mismatch, e.Error);
        Assert.Equal("share 2 (custodian 'bob') belongs to domain 'dk-us-1', expected 'dk-eu-1'", e.Message);
    }

    [Fact]
    public void Combine_ExpectedDomainDiffers_Refused()
    {
        var e = Assert.Throws<CeremonyException>(() => DomainKeyRecovery.Combine(_files.Take(3).Select(Ceremony.Unlock).ToList(), expectedDomainId: "dk-ap-1"));

        Assert.Equal("share 1 (custodian 'alice') belongs to domain 'dk-eu-1', expected 'dk-ap-1'", e.Message);
    }

    [Fact]
    public void Combine_ExpectedCheckValueDiffers_Refused()
    {
        var e = Assert.Throws<CeremonyException>(() => DomainKeyRecovery.Combine(_files.Take(3).Select(Ceremony.Unlock).ToList(), expectedKcv: "abcdef"));

        Assert.Equal(CeremonyError.Mismatch, e.Error);
        Assert.Equal("share 1 (custodian 'alice') records the domain check value F29000, expected ABCDEF", e.Message);
    }

    [Fact]
    public void Combine_MixedThresholds_Refused()
    {
        var twoOfThree = Ceremony.Split(threshold: 2, count: 3);

        var e = Assert.Throws<CeremonyException>(() => DomainKeyRecovery.Combine(
            [Ceremony.Unlock(_files[0]), Ceremony.Unlock(_files[1]), Ceremony.Unlock(twoOfThree[2])]));

        Assert.Equal(CeremonyError.Mismatch, e.Error);
        Assert.Equal("share 3 (custodian 'carol') is one of a 2-of-3 split, but share 1 (custodian 'alice') is one of a 3-of-5 split", e.Message);
    }

    [Fact]
    public void Combine_SameFileTwice_RefusedAsDuplicateIndex()
    {
        var e = Assert.Throws<CeremonyException>(() => DomainKeyRecovery.Combine(
            [Ceremony.Unlock(_files[1]), Ceremony.Unlock(_files[0]), Ceremony.Unlock(_files[1])]));

        Assert.Equal(CeremonyError.Mismatch, e.Error);
        Assert.StartsWith("duplicate share index 2", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Combine_ShareFromAnotherSplitOfTheSameKey_CaughtByTheCheckValue()
    {
        // Same domain, KCV, M and N: every field agrees, only the polynomial differs.
        var resplit = Ceremony.Split();

        var e = Assert.Throws<CeremonyException>(() => DomainKeyRecovery.Combine(
            [Ceremony.Unlock(_files[0]), Ceremony.Unlock(_files[1]), Ceremony.Unlock(resplit[2])]));

        Assert.Equal(CeremonyError.CheckValueMismatch, e.Error);
        Assert.Matches("^the rebuilt key's check value [0-9A-F]{6} does not match the domain's F29000", e.Message);
    }

    [Fact]
    public void Combine_ShareDamagedBeforeItWasProtected_CaughtByTheCheckValue()
    {
        var shares = Shamir.Split(Ceremony.DomainKey, 3, 5);
        var damagedValue = shares[2].Value.ToArray();
        damagedValue[7] ^= 0x40;
        using var damaged = new Share(3, damagedValue);
        var files = new[] { Ceremony.Protect(shares[0], Ceremony.Metadata("alice")), Ceremony.Protect(shares[1], Ceremony.Metadata("bob")), Ceremony.Protect(damaged, Ceremony.Metadata("carol")) };

        var e = Assert.Throws<CeremonyException>(() => DomainKeyRecovery.Combine(files.Select(Ceremony.Unlock).ToList()));

        Assert.Equal(CeremonyError.CheckValueMismatch, e.Error);
    }

    [Fact]
    public void Combine_ShareNotOfItsFile_Refused()
    {
        using var other = new Share(4, new byte[32]);

        var e = Assert.Throws<CeremonyException>(() => DomainKeyRecovery.Combine(
            [Ceremony.Unlock(_files[0]), Ceremony.Unlock(_files[1]), (_files[2], other)]));

        Assert.Equal("the share given for share 3 (custodian 'carol') has index 4", e.Message);
    }

    [Fact]
    public void Combine_NoShares_Refused()
    {
        var e = Assert.Throws<CeremonyException>(() => DomainKeyRecovery.Combine([]));

        Assert.Equal(CeremonyError.NotEnoughShares, e.Error);
    }
}
