using Kms.Core.Names;
using Kms.Server.Hosting;
using Kms.Server.Security;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.Options;
using Microsoft.Extensions.Time.Testing;

namespace Kms.Server.Tests;

/// <summary>Per-tenant quota overrides as the configuration gives them.</summary>
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
}
