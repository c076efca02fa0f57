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

    [Theory]
    [InlineData(0, 4)]
    [InlineData(2, 4)]
    [InlineData(3, 4)]
    [InlineData(1, 5)]
    [InlineData(4, 5)]
    public void Combine_MoreThanThresholdShares_OneFromAnotherSplit_NamesIt_FileAndCustodian(int bad, int given)
    {
        // Same domain, KCV, M and N: only the polynomial differs. With more than M shares, leaving
        // the wrong one out rebuilds the key, leaving any other out does not: it is named.
        var resplit = Ceremony.Split();
        var shares = Enumerable.Range(0, given)
            .Select(i => Ceremony.Unlock(ShareFile.Parse((i == bad ? resplit : _files)[i].ToBytes(), $"{Ceremony.Custodians[i]}.share", KdfPolicy.AllowWeakParametersForTests)))
            .ToList();

        var e = Assert.Throws<CeremonyException>(() => DomainKeyRecovery.Combine(shares, Ceremony.DomainId, Ceremony.DomainKcv));

        Assert.Equal(CeremonyError.CheckValueMismatch, e.Error);
        var name = Ceremony.Custodians[bad];
        Assert.Matches(
            $"^the rebuilt key's check value [0-9A-F]{{6}} does not match the domain's F29000: share {bad + 1} \\(custodian '{name}', file {name}\\.share\\) does not fit: the other {given - 1} shares rebuild the domain's check value without it; it is damaged or from another split of the key \\(leave it out and run again\\)$",
            e.Message);
    }

    [Fact]
    public void Combine_MoreThanThresholdShares_TwoDamaged_NamesBoth_TheCustodianEscaped()
    {
        // A share damaged before it was protected, and one from another split in an older file whose
        // custodian name holds a bidi override: both named, the name escaped as every message shows it.
        var shares = Shamir.Split(Ceremony.DomainKey, 3, 5);
        var damagedValue = shares[1].Value.ToArray();
        damagedValue[7] ^= 0x40;
        using var damaged = new Share(2, damagedValue);
        var (resplitFile, resplitShare) = Ceremony.Unlock(Ceremony.Split()[3]);
        var bidi = Ceremony.Reparse(ShareFileSpec.Forge(resplitFile.ToBytes(), json => json["custodian"] = "dave\u202Eevad"));
        List<(ShareFile, Share)> given =
        [
            (_files[0], shares[0]), (_files[1], damaged), (_files[2], shares[2]), (bidi, resplitShare), (_files[4], shares[4]),
        ];

        var e = Assert.Throws<CeremonyException>(() => DomainKeyRecovery.Combine(given));

        Assert.DoesNotContain('\u202E', e.Message);
        Assert.EndsWith(
            ": share 2 (custodian 'bob') and share 4 (custodian 'dave\\u202Eevad', file test.share) do not fit: the other 3 shares rebuild the domain's check value without them; they are damaged or from another split of the key (leave them out and run again)",
            e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Combine_ExactlyThresholdShares_OneFromAnotherSplit_SaysWhichCannotBeTold()
    {
        // Any M points lie on some polynomial: with exactly M nothing tells the wrong share from the rest.
        var resplit = Ceremony.Split();

        var e = Assert.Throws<CeremonyException>(() => DomainKeyRecovery.Combine(
            [Ceremony.Unlock(_files[0]), Ceremony.Unlock(resplit[1]), Ceremony.Unlock(_files[2])]));

        Assert.Matches(
            "^the rebuilt key's check value [0-9A-F]{6} does not match the domain's F29000: a share is damaged or from another split of the key; with exactly 3 shares which one cannot be told \\(give a further custodian's share as well to find it\\)$",
            e.Message);
    }

    [Fact]
    public void Combine_MoreThanThresholdShares_TwoSplitsOfTheKeyHalfAndHalf_SaysWhichCannotBeTold()
    {
        // Two shares of each of two splits of the same key (2-of-4): either pair rebuilds the key,
        // so neither pair is named the wrong one.
        var a = Ceremony.Split(threshold: 2, count: 4);
        var b = Ceremony.Split(threshold: 2, count: 4);

        var e = Assert.Throws<CeremonyException>(() => DomainKeyRecovery.Combine(
            [Ceremony.Unlock(a[0]), Ceremony.Unlock(a[1]), Ceremony.Unlock(b[2]), Ceremony.Unlock(b[3])]));

        Assert.Matches(
            "^the rebuilt key's check value [0-9A-F]{6} does not match the domain's F29000: a share is damaged or from another split of the key; which cannot be told: leaving out any of 2 different sets of 2 of the 4 shares rebuilds the domain's check value$",
            e.Message);
    }

    [Fact]
    public void Combine_ManySharesNoneOfOneSplit_GivesUpAfterTheTrialBound_SayingSo()
    {
        // Twenty shares of twenty splits (2-of-20): no leave-out set works, and the search stops.
        var given = Enumerable.Range(1, 20).Select(x =>
        {
            var share = Shamir.Split(Ceremony.DomainKey, 2, 20)[x - 1];
            return (Ceremony.Protect(share, Ceremony.Metadata($"c{x}", 2, 20)), share);
        }).ToList();

        var e = Assert.Throws<CeremonyException>(() => DomainKeyRecovery.Combine(given));

        Assert.EndsWith($": a share is damaged or from another split of the key; which was not found in the {DomainKeyRecovery.MaxTrials} combinations of the 20 shares tried", e.Message, StringComparison.Ordinal);
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

    [Fact]
    public void CheckFiles_ThresholdFilesOfOneSplit_Pass_WithoutAnyPassphrase()
    {
        DomainKeyRecovery.CheckFiles(_files.Take(3).ToList(), Ceremony.DomainId);
        DomainKeyRecovery.CheckFiles(_files);
    }

    /// <summary>What Combine refuses of the files, refused from the public fields alone, before a custodian types a passphrase.</summary>
    [Fact]
    public void CheckFiles_TooFew_AnotherDomain_AnotherSplit_ATwice_Refused_AsCombineRefusesThem()
    {
        var foreign = Ceremony.Split(domainId: "dk-us-1");
        var otherKey = Ceremony.Split(kcv: "ABCDEF");
        var twoOfThree = Ceremony.Split(threshold: 2, count: 3);

        var few = Assert.Throws<CeremonyException>(() => DomainKeyRecovery.CheckFiles([_files[0], _files[3]]));
        Assert.Equal(CeremonyError.NotEnoughShares, few.Error);
        Assert.Equal("need 3 shares, got 2", few.Message);

        var domain = Assert.Throws<CeremonyException>(() => DomainKeyRecovery.CheckFiles([_files[0], foreign[1], _files[2]]));
        Assert.Equal(CeremonyError.Mismatch, domain.Error);
        Assert.Equal("share 2 (custodian 'bob') belongs to domain 'dk-us-1', expected 'dk-eu-1'", domain.Message);

        var expected = Assert.Throws<CeremonyException>(() => DomainKeyRecovery.CheckFiles(_files.Take(3).ToList(), "dk-ap-1"));
        Assert.Equal("share 1 (custodian 'alice') belongs to domain 'dk-eu-1', expected 'dk-ap-1'", expected.Message);

        var kcv = Assert.Throws<CeremonyException>(() => DomainKeyRecovery.CheckFiles([_files[0], otherKey[1], _files[2]]));
        Assert.Equal(CeremonyError.Mismatch, kcv.Error);
        Assert.Equal("share 2 (custodian 'bob') records the domain check value ABCDEF, but share 1 (custodian 'alice') records F29000", kcv.Message);

        var split = Assert.Throws<CeremonyException>(() => DomainKeyRecovery.CheckFiles([_files[0], _files[1], twoOfThree[2]]));
        Assert.Equal("share 3 (custodian 'carol') is one of a 2-of-3 split, but share 1 (custodian 'alice') is one of a 3-of-5 split", split.Message);

        var twice = Assert.Throws<CeremonyException>(() => DomainKeyRecovery.CheckFiles([_files[1], _files[0], _files[1]]));
        Assert.StartsWith("duplicate share index 2", twice.Message, StringComparison.Ordinal);

        Assert.Equal(CeremonyError.NotEnoughShares, Assert.Throws<CeremonyException>(() => DomainKeyRecovery.CheckFiles([])).Error);
    }
}
