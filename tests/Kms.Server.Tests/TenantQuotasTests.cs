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

        Assert.True(quotas.TryTake(acme, 2, out _));
        Assert.False(quotas.TryTake(acme, 1, out var retryAfter));
        Assert.True(retryAfter > TimeSpan.Zero);

        // Other tenants keep the default.
        Assert.True(quotas.TryTake(TenantId.Parse("other"), 100, out _));
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
    public async Task Build_AQuotaOfZero_RefusedBeforeTouchingTheHsm_NamingTheOptionAndTheWayToSwitchQuotasOff(string option, string value)
    {
        // 0 used to turn the quota off: an operator writing it to block a tenant gave it no limit.
        var dataDir = Path.Combine(Path.GetTempPath(), $"kms-never-{Guid.NewGuid():N}");
        var e = await Assert.ThrowsAsync<InvalidOperationException>(() => KmsServerApp.BuildAsync(
            ["--dev", "--urls=https://127.0.0.1:0", $"--{option}={value}", $"--Kms:DataDir={dataDir}"]));
        Assert.StartsWith($"{option} is {value}; it must be ", e.Message, StringComparison.Ordinal);
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

        Assert.True(quotas.TryTake(acme, 2, out _));
        Assert.False(quotas.TryTake(acme, 1, out var retryAfter));
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

        Assert.True(quotas.TryTake(acme, 2, out _));
        Assert.False(quotas.TryTake(acme, 1, out var retryAfter));
        Assert.Equal(TimeSpan.FromMilliseconds(100), retryAfter);
        time.Advance(TimeSpan.FromMilliseconds(99));
        Assert.False(quotas.TryTake(acme, 1, out _));
        time.Advance(TimeSpan.FromMilliseconds(1));
        Assert.True(quotas.TryTake(acme, 1, out _));
    }

    [Fact]
    public void QuotasSwitchedOff_ByEnabledFalse_NoTenantIsHeldBack()
    {
        var quotas = Build(new Dictionary<string, string?> { ["Kms:Quotas:Enabled"] = "false", ["Kms:Quotas:Tenants:acme:OperationsPerSecond"] = "1" });

        for (var i = 0; i < 100; i++)
        {
            Assert.True(quotas.TryTake(TenantId.Parse("acme"), 1_000, out _));
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
        Assert.Equal("Kms:Quotas:OtherCallsPerSecond", quotas.OtherOptionOf(TenantId.Parse("other")));
    }

    private static TenantQuotas Build(Dictionary<string, string?> settings)
    {
        var options = new ConfigurationBuilder().AddInMemoryCollection(settings).Build().GetSection("Kms").Get<KmsServerOptions>()!;
        return new TenantQuotas(Options.Create(options), new FakeTimeProvider());
    }
}
