using Kms.Core.Names;
using Kms.Server.Hosting;
using Kms.Server.Security;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.Options;
using Microsoft.Extensions.Time.Testing;

namespace Kms.Server.Tests;

/// <summary>Per-tenant quota overrides as the configuration gives them, and the numbers a start refuses.</summary>
public sealed class TenantQuotasTests
{
    [Theory]
    [InlineData("Kms:Quotas:Tenants:acme:OperationsPerSecond", "Kms:Quotas:Tenants:acme:Burst")]
    [InlineData("KMS:QUOTAS:TENANTS:ACME:OPERATIONSPERSECOND", "KMS:QUOTAS:TENANTS:ACME:BURST")]
    [InlineData("Kms:Quotas:Tenants:Acme:OperationsPerSecond", "Kms:Quotas:Tenants:Acme:Burst")]
    public void TenantOverride_AppliesWhateverTheCaseOfItsConfigurationKey(string rateKey, string burstKey)
    {
        // Configuration keys are case-insensitive (an environment variable is often written in
        // capitals), tenant ids are lower case: an override spelt ACME was bound, then never
        // found for tenant acme, which silently kept the default quota (5,000 a second) instead of
        // the one meant to hold it back.
        var configuration = new ConfigurationBuilder()
            .AddInMemoryCollection(new Dictionary<string, string?> { [rateKey] = "1", [burstKey] = "2" })
            .Build();
        var options = configuration.GetSection("Kms").Get<KmsServerOptions>()!;
        var quotas = new TenantQuotas(Options.Create(options), new FakeTimeProvider());
        var acme = TenantId.Parse("acme");

        Assert.True(quotas.TryTake(acme, "token:app", 2, out _, out _));
        Assert.False(quotas.TryTake(acme, "token:app", 1, out var retryAfter, out _));
        Assert.True(retryAfter > TimeSpan.Zero);

        // Other tenants keep the default.
        Assert.True(quotas.TryTake(TenantId.Parse("other"), "token:app", 100, out _, out _));
    }

    [Theory]
    [InlineData("Kms:Quotas:OperationsPerSecond", "0")]
    [InlineData("Kms:Quotas:OperationsPerSecond", "-5")]
    [InlineData("Kms:Quotas:Burst", "0")]
    [InlineData("Kms:Quotas:Tenants:acme:OperationsPerSecond", "0")]
    [InlineData("Kms:Quotas:Tenants:acme:Burst", "0.5")]
    [InlineData("Kms:Quotas:PrincipalsWithoutTenant:CallsPerSecond", "0")]
    [InlineData("Kms:Quotas:PrincipalsWithoutTenant:Burst", "0.5")]
    [InlineData("Kms:Quotas:OtherCallsPerSecond", "0")]
    [InlineData("Kms:Quotas:OtherCallsBurst", "0.5")]
    [InlineData("Kms:Quotas:Tenants:acme:OtherCallsPerSecond", "0")]
    [InlineData("Kms:Quotas:Tenants:acme:OtherCallsBurst", "0")]
    [InlineData("Kms:Quotas:OtherCallsPrincipalShare", "0")]
    [InlineData("Kms:Quotas:OtherCallsPrincipalShare", "1.5")]
    [InlineData("Kms:Quotas:Tenants:acme:OtherCallsPrincipalShare", "-0.5")]
    [InlineData("Kms:Quotas:Tenants:acme:OtherCallsPrincipalShare", "2")]
    [InlineData("Kms:Quotas:CryptoPrincipalShare", "0")]
    [InlineData("Kms:Quotas:CryptoPrincipalShare", "1.5")]
    [InlineData("Kms:Quotas:Tenants:acme:CryptoPrincipalShare", "-0.5")]
    [InlineData("Kms:Quotas:Tenants:acme:CryptoPrincipalShare", "2")]
    public async Task Build_AQuotaOfZero_RefusedBeforeTouchingTheHsm_NamingTheOptionAndTheWayToSwitchQuotasOff(string option, string value)
    {
        // 0 used to turn the quota off: an operator writing it to block a tenant gave it no limit.
        var dataDir = Path.Combine(Path.GetTempPath(), $"kms-never-{Guid.NewGuid():N}");
        var e = await Assert.ThrowsAsync<InvalidOperationException>(() => KmsServerApp.BuildAsync(
            ["--dev", "--urls=https://127.0.0.1:0", $"--{option}={value}", $"--Kms:DataDir={dataDir}"]));
        Assert.StartsWith($"{option} ({value}) must be ", e.Message, StringComparison.Ordinal);
        Assert.Contains("to switch quotas off, set Kms:Quotas:Enabled=false", e.Message, StringComparison.Ordinal);
        Assert.False(Directory.Exists(dataDir));
    }

    [Fact]
    public void TenantOverride_OfTheBurstAlone_KeepsTheDeploymentsRate_NotNoLimit()
    {
        // The override's rate was 0 when left out, and 0 meant no quota: a burst of 2 let acme
        // through without any limit.
        var quotas = Build(new Dictionary<string, string?> { ["Kms:Quotas:Tenants:acme:Burst"] = "2" });
        var acme = TenantId.Parse("acme");

        Assert.True(quotas.TryTake(acme, "token:app", 2, out _, out _));
        Assert.False(quotas.TryTake(acme, "token:app", 1, out var retryAfter, out _));
        Assert.Equal(TimeSpan.FromMilliseconds(1), retryAfter); // the deployment's 5,000 a second
    }

    [Fact]
    public void TenantOverride_OfTheBurstAlone_RefillsAtTheDeploymentsRate()
    {
        // At the default 5,000 a second any rate above 1,000 gives the same 1 ms retry hint: with
        // a deployment rate of 10 a second, a burst-only override refills one token in 100 ms of
        // the (fake) clock, not sooner.
        var time = new FakeTimeProvider();
        var options = new ConfigurationBuilder()
            .AddInMemoryCollection(new Dictionary<string, string?> { ["Kms:Quotas:OperationsPerSecond"] = "10", ["Kms:Quotas:Tenants:acme:Burst"] = "2" })
            .Build().GetSection("Kms").Get<KmsServerOptions>()!;
        var quotas = new TenantQuotas(Options.Create(options), time);
        var acme = TenantId.Parse("acme");

        Assert.True(quotas.TryTake(acme, "token:app", 2, out _, out _));
        Assert.False(quotas.TryTake(acme, "token:app", 1, out var retryAfter, out _));
        Assert.Equal(TimeSpan.FromMilliseconds(100), retryAfter);
        time.Advance(TimeSpan.FromMilliseconds(99));
        Assert.False(quotas.TryTake(acme, "token:app", 1, out _, out _));
        time.Advance(TimeSpan.FromMilliseconds(1));
        Assert.True(quotas.TryTake(acme, "token:app", 1, out _, out _));
    }

    [Fact]
    public void QuotasSwitchedOff_ByEnabledFalse_NoTenantIsHeldBack()
    {
        var quotas = Build(new Dictionary<string, string?> { ["Kms:Quotas:Enabled"] = "false", ["Kms:Quotas:Tenants:acme:OperationsPerSecond"] = "1" });

        for (var i = 0; i < 100; i++)
        {
            Assert.True(quotas.TryTake(TenantId.Parse("acme"), "token:app", 1_000, out _, out _));
        }
    }

    [Fact]
    public void PrincipalsWithoutTenant_EachOnItsOwnBucket_SwitchedOffWithTheQuotas()
    {
        var quotas = Build(new Dictionary<string, string?> { ["Kms:Quotas:PrincipalsWithoutTenant:CallsPerSecond"] = "1", ["Kms:Quotas:PrincipalsWithoutTenant:Burst"] = "2" });
        Assert.True(quotas.TryTakePrincipal("token:officer", 2, out _));
        Assert.False(quotas.TryTakePrincipal("token:officer", 1, out var retryAfter));
        Assert.Equal(TimeSpan.FromSeconds(1), retryAfter);
        Assert.True(quotas.TryTakePrincipal("token:admin", 2, out _));

        var off = Build(new Dictionary<string, string?> { ["Kms:Quotas:Enabled"] = "false", ["Kms:Quotas:PrincipalsWithoutTenant:CallsPerSecond"] = "1", ["Kms:Quotas:PrincipalsWithoutTenant:Burst"] = "1" });
        for (var i = 0; i < 100; i++)
        {
            Assert.True(off.TryTakePrincipal("token:officer", 1, out _));
        }
    }

    [Fact]
    public void PrincipalsWithoutTenant_TableFull_APrincipalBeingRefusedKeepsItsBucket_NewNamesShareOneOverflowBucket()
    {
        // An unregistered certificate of the client CA or a workload token of a configured issuer is
        // a principal of no tenant, named as its holder chose. The table was emptied when full: as
        // many names as it holds, each calling once, gave every principal a full bucket again — one
        // being refused right now too. 1 call a second, 2 at once; a table of 3 principals.
        var time = new FakeTimeProvider();
        var options = new ConfigurationBuilder().AddInMemoryCollection(new Dictionary<string, string?>
        {
            ["Kms:Quotas:PrincipalsWithoutTenant:CallsPerSecond"] = "1",
            ["Kms:Quotas:PrincipalsWithoutTenant:Burst"] = "2",
        }).Build().GetSection("Kms").Get<KmsServerOptions>()!;
        var quotas = new TenantQuotas(Options.Create(options), time) { MaxPrincipalBuckets = 3 };

        Assert.True(quotas.TryTakePrincipal("cert:runaway", 2, out _));
        Assert.False(quotas.TryTakePrincipal("cert:runaway", 1, out _));
        foreach (var name in new[] { "cert:a", "cert:b", "cert:c" })
        {
            Assert.True(quotas.TryTakePrincipal(name, 1, out _));
        }

        // The runaway is still refused, for as long as before.
        Assert.False(quotas.TryTakePrincipal("cert:runaway", 1, out var wait));
        Assert.Equal(TimeSpan.FromSeconds(1), wait);
        Assert.Equal(3, quotas.PrincipalBucketCount);

        // cert:c, past the bound, spent the one overflow bucket (2 at once), and every new name
        // spends the same one: one call more between them, then refused.
        Assert.True(quotas.TryTakePrincipal("cert:d", 1, out _));
        Assert.False(quotas.TryTakePrincipal("cert:e", 1, out _));
        Assert.Equal(3, quotas.PrincipalBucketCount);

        // A second later cert:a and cert:b have filled up again and are dropped for the next new
        // name; the runaway, one call back of two, keeps its bucket: one call, not a full burst.
        time.Advance(TimeSpan.FromSeconds(1));
        Assert.True(quotas.TryTakePrincipal("cert:f", 1, out _));
        Assert.Equal(2, quotas.PrincipalBucketCount);
        Assert.True(quotas.TryTakePrincipal("cert:runaway", 1, out _));
        Assert.False(quotas.TryTakePrincipal("cert:runaway", 1, out _));
    }

    [Fact]
    public void OtherCalls_EachPrincipalSpendsAtMostItsShare_ARefusalSpendsNoneOfTheTenants()
    {
        // A tenant of 1 call a second, 4 at once; each principal half of it (the default share).
        var quotas = Build(new Dictionary<string, string?> { ["Kms:Quotas:OtherCallsPerSecond"] = "1", ["Kms:Quotas:OtherCallsBurst"] = "4" });
        var acme = TenantId.Parse("acme");

        Assert.True(quotas.TryTakeOther(acme, "token:runaway", out _, out _));
        Assert.True(quotas.TryTakeOther(acme, "token:runaway", out _, out _));
        for (var i = 0; i < 100; i++)
        {
            Assert.False(quotas.TryTakeOther(acme, "token:runaway", out var wait, out var byShare));
            Assert.True(byShare);
            Assert.Equal(TimeSpan.FromSeconds(2), wait); // its half: one call every two seconds
        }

        // The runaway's hundred refusals spent none of the tenant's calls: two are left, for the others.
        Assert.True(quotas.TryTakeOther(acme, "token:admin", out _, out _));
        Assert.True(quotas.TryTakeOther(acme, "token:auditor", out _, out _));

        // Now the tenant's bucket is empty: a principal with its share intact is refused by the tenant's.
        Assert.False(quotas.TryTakeOther(acme, "token:other", out var tenantWait, out var bySharePastTenant));
        Assert.False(bySharePastTenant);
        Assert.Equal(TimeSpan.FromSeconds(1), tenantWait);

        Assert.Equal("Kms:Quotas:OtherCallsPrincipalShare of Kms:Quotas:OtherCallsPerSecond", quotas.ShareOptionOf(acme));
    }

    [Fact]
    public void OtherCalls_ShareOfOne_EveryPrincipalOnTheTenantsBucketAlone()
    {
        // 1 is the behaviour before the share: one principal may spend the tenant's whole bucket.
        var quotas = Build(new Dictionary<string, string?> { ["Kms:Quotas:OtherCallsPerSecond"] = "1", ["Kms:Quotas:OtherCallsBurst"] = "4", ["Kms:Quotas:OtherCallsPrincipalShare"] = "1" });
        var acme = TenantId.Parse("acme");
        for (var i = 0; i < 4; i++)
        {
            Assert.True(quotas.TryTakeOther(acme, "token:runaway", out _, out _));
        }

        Assert.False(quotas.TryTakeOther(acme, "token:admin", out _, out var byShare));
        Assert.False(byShare);
        Assert.Equal(0, quotas.ShareBuckets);
    }

    [Fact]
    public void ShareBuckets_Bounded_FullOnesDropped_NewPrincipalsPastTheBoundShareOneOverflowBucket()
    {
        var time = new FakeTimeProvider();
        var quotas = ShareTableOfThree(time);
        var acme = TenantId.Parse("acme");

        foreach (var principal in new[] { "token:a", "token:b", "token:c" })
        {
            SpendsItsShare(principal);
        }

        Assert.Equal(3, quotas.ShareBuckets);

        // The table is full of buckets being spent: a new principal spends the tenant's overflow
        // bucket (a share too), and so does the next — new names get no calls of their own.
        SpendsItsShare("token:d");
        Assert.False(quotas.TryTakeOther(acme, "token:e", out _, out var byShare));
        Assert.True(byShare);
        Assert.Equal(3, quotas.ShareBuckets);

        // Another tenant's principals past the bound have an overflow bucket of their own.
        Assert.True(quotas.TryTakeOther(TenantId.Parse("other"), "token:f", out _, out _));

        // A second later every bucket is full again: the first new principal drops them all.
        time.Advance(TimeSpan.FromSeconds(1));
        SpendsItsShare("token:g");
        Assert.Equal(1, quotas.ShareBuckets);

        // A principal whose bucket was dropped starts on a full one, as it would have had anyway.
        SpendsItsShare("token:a");
        Assert.Equal(2, quotas.ShareBuckets);

        void SpendsItsShare(string principal)
        {
            Assert.True(quotas.TryTakeOther(acme, principal, out _, out _));
            Assert.True(quotas.TryTakeOther(acme, principal, out _, out _));
            Assert.False(quotas.TryTakeOther(acme, principal, out var wait, out var refusedByShare));
            Assert.True(refusedByShare);
            Assert.Equal(TimeSpan.FromMilliseconds(500), wait);
        }
    }

    [Fact]
    public void ShareBuckets_TableFull_NewPrincipalsReachTheOverflowBucketWithoutTheTablesLock_UntilThePruneIsDue()
    {
        // Once the table was full, every call of a principal without a bucket took the table's one
        // lock (process-wide, every tenant's) to reach its tenant's overflow bucket, though nothing
        // under it could change until the next prune, a second later.
        var time = new FakeTimeProvider();
        var quotas = ShareTableOfThree(time);
        var acme = TenantId.Parse("acme");
        foreach (var principal in new[] { "token:a", "token:b", "token:c" })
        {
            Assert.True(quotas.TryTakeOther(acme, principal, out _, out _));
            Assert.True(quotas.TryTakeOther(acme, principal, out _, out _));
        }

        // The first new name past the bound prunes under the lock (nothing to drop: every bucket
        // is being spent); the next hundred, in the same second, reach the overflow bucket without it.
        var locks = quotas.ShareTableLocks;
        Assert.True(quotas.TryTakeOther(acme, "token:new", out _, out _));
        Assert.Equal(locks + 1, quotas.ShareTableLocks);
        for (var i = 0; i < 100; i++)
        {
            quotas.TryTakeOther(acme, $"token:new{i}", out _, out _);
        }

        Assert.Equal(locks + 1, quotas.ShareTableLocks);
        Assert.Equal(3, quotas.ShareBuckets);

        // A second later the prune is due: the next new name takes the lock, drops the buckets that
        // have filled up again, and gets one of its own.
        time.Advance(TimeSpan.FromSeconds(1));
        Assert.True(quotas.TryTakeOther(acme, "token:late", out _, out _));
        Assert.Equal(locks + 2, quotas.ShareTableLocks);
        Assert.Equal(1, quotas.ShareBuckets);
    }

    [Fact]
    public void Crypto_ByDefault_NoPrincipalsShare_OnePrincipalSpendsTheTenantsWholeQuota()
    {
        // The default (Kms:Quotas:CryptoPrincipalShare 1) is the behaviour before the option: a
        // tenant's crypto is often one service principal's.
        var quotas = Build(new Dictionary<string, string?> { ["Kms:Quotas:OperationsPerSecond"] = "1", ["Kms:Quotas:Burst"] = "4" });
        var acme = TenantId.Parse("acme");
        for (var i = 0; i < 4; i++)
        {
            Assert.True(quotas.TryTake(acme, "token:service", 1, out _, out _));
        }

        Assert.False(quotas.TryTake(acme, "token:admin", 1, out var wait, out var byShare));
        Assert.False(byShare);
        Assert.Equal(TimeSpan.FromSeconds(1), wait);
        Assert.Equal(0, quotas.CryptoShareBuckets);
    }

    [Fact]
    public void Crypto_PrincipalShareSet_EachPrincipalSpendsAtMostItsShare_ARefusalSpendsNoneOfTheTenants()
    {
        // 1 crypto operation a second, 4 at once; each principal half of it. One token could spend it all.
        var quotas = Build(new Dictionary<string, string?> { ["Kms:Quotas:OperationsPerSecond"] = "1", ["Kms:Quotas:Burst"] = "4", ["Kms:Quotas:CryptoPrincipalShare"] = "0.5" });
        var acme = TenantId.Parse("acme");

        Assert.True(quotas.TryTake(acme, "token:runaway", 1, out _, out _));
        Assert.True(quotas.TryTake(acme, "token:runaway", 1, out _, out _));
        for (var i = 0; i < 100; i++)
        {
            Assert.False(quotas.TryTake(acme, "token:runaway", 1, out var wait, out var byShare));
            Assert.True(byShare);
            Assert.Equal(TimeSpan.FromSeconds(2), wait);
        }

        // Its refusals spent none of the tenant's quota: the key manager still creates and rotates keys.
        Assert.True(quotas.TryTake(acme, "token:admin", 1, out _, out _));
        Assert.True(quotas.TryTake(acme, "token:admin", 1, out _, out _));
        Assert.False(quotas.TryTake(acme, "token:other", 1, out var tenantWait, out var bySharePastTenant));
        Assert.False(bySharePastTenant);
        Assert.Equal(TimeSpan.FromSeconds(1), tenantWait);
        Assert.Equal(3, quotas.CryptoShareBuckets);

        // The calls other than crypto are a table apart: the runaway's share of them is whole.
        Assert.True(quotas.TryTakeOther(acme, "token:runaway", out _, out _));
        Assert.Equal("Kms:Quotas:CryptoPrincipalShare of Kms:Quotas:OperationsPerSecond", quotas.CryptoShareOptionOf(acme));
    }

    [Fact]
    public void Crypto_PrincipalShareOfOneTenant_TheOthersKeepTheDeploymentsNone_TheRefusalNamesTheOverride()
    {
        var quotas = Build(new Dictionary<string, string?>
        {
            ["Kms:Quotas:OperationsPerSecond"] = "1",
            ["Kms:Quotas:Burst"] = "4",
            ["Kms:Quotas:Tenants:ACME:CryptoPrincipalShare"] = "0.25",
        });
        var acme = TenantId.Parse("acme");
        var other = TenantId.Parse("other");

        // A quarter of acme's 1 a second and burst of 4: one operation at once. A batch larger than
        // that passes while the share is full (as a batch larger than the tenant's burst does),
        // and leaves the principal in debt: 3 operations at a quarter a second.
        Assert.True(quotas.TryTake(acme, "token:service", 3, out _, out _));
        Assert.False(quotas.TryTake(acme, "token:service", 1, out var wait, out var byShare));
        Assert.True(byShare);
        Assert.Equal(TimeSpan.FromSeconds(12), wait);
        Assert.True(quotas.TryTake(acme, "token:admin", 1, out _, out _));
        for (var i = 0; i < 4; i++)
        {
            Assert.True(quotas.TryTake(other, "token:service", 1, out _, out _));
        }

        Assert.Equal("Kms:Quotas:Tenants:acme:CryptoPrincipalShare of Kms:Quotas:OperationsPerSecond", quotas.CryptoShareOptionOf(acme));
        Assert.Equal("Kms:Quotas:CryptoPrincipalShare of Kms:Quotas:OperationsPerSecond", quotas.CryptoShareOptionOf(other));
    }

    [Theory]
    [InlineData(null, null, "Kms:Quotas:OtherCallsPerSecond")]
    [InlineData("5", null, "Kms:Quotas:Tenants:acme:OtherCallsPerSecond")]
    [InlineData(null, "5", "Kms:Quotas:OtherCallsPerSecond, Kms:Quotas:Tenants:acme:OtherCallsBurst")]
    [InlineData("5", "10", "Kms:Quotas:Tenants:acme:OtherCallsPerSecond, Kms:Quotas:Tenants:acme:OtherCallsBurst")]
    public void RefusalOptions_NameTheTenantsOverrideWhereOneIsSet(string? rate, string? burst, string expected)
    {
        // A refusal once named Kms:Quotas:OtherCallsPerSecond even when the tenant's override was what limited it.
        var quotas = Build(new Dictionary<string, string?>
        {
            ["Kms:Quotas:Tenants:acme:OtherCallsPerSecond"] = rate,
            ["Kms:Quotas:Tenants:acme:OtherCallsBurst"] = burst,
            ["Kms:Quotas:Tenants:acme:OperationsPerSecond"] = rate,
            ["Kms:Quotas:Tenants:acme:Burst"] = burst,
        });
        var acme = TenantId.Parse("acme");

        Assert.Equal(expected, quotas.OtherOptionOf(acme));
        Assert.Equal(expected.Replace("OtherCallsPerSecond", "OperationsPerSecond", StringComparison.Ordinal).Replace("OtherCallsBurst", "Burst", StringComparison.Ordinal), quotas.CryptoOptionOf(acme));
        Assert.Equal($"Kms:Quotas:OtherCallsPrincipalShare of {expected}", quotas.ShareOptionOf(acme));
        Assert.Equal("Kms:Quotas:OtherCallsPerSecond", quotas.OtherOptionOf(TenantId.Parse("other")));

        var shared = Build(new Dictionary<string, string?> { ["Kms:Quotas:Tenants:ACME:OtherCallsPrincipalShare"] = "0.25" });
        Assert.Equal("Kms:Quotas:Tenants:acme:OtherCallsPrincipalShare of Kms:Quotas:OtherCallsPerSecond", shared.ShareOptionOf(acme));
    }

    private static TenantQuotas Build(Dictionary<string, string?> settings)
    {
        var options = new ConfigurationBuilder().AddInMemoryCollection(settings).Build().GetSection("Kms").Get<KmsServerOptions>()!;
        return new TenantQuotas(Options.Create(options), new FakeTimeProvider());
    }

    // Tenant acme: 100 calls a second, 100 at once; each principal 0.02 of it, 2 a second and 2
    // at once. A table of 3 principals.
    private static TenantQuotas ShareTableOfThree(FakeTimeProvider time)
    {
        var options = new ConfigurationBuilder().AddInMemoryCollection(new Dictionary<string, string?>
        {
            ["Kms:Quotas:OtherCallsPerSecond"] = "100",
            ["Kms:Quotas:OtherCallsBurst"] = "100",
            ["Kms:Quotas:OtherCallsPrincipalShare"] = "0.02",
        }).Build().GetSection("Kms").Get<KmsServerOptions>()!;
        return new TenantQuotas(Options.Create(options), time) { MaxShareBuckets = 3 };
    }
}
