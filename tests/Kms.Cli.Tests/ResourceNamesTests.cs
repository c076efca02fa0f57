using Kms.Cli.Infrastructure;

namespace Kms.Cli.Tests;

public sealed class ResourceNamesTests
{
    [Theory]
    [InlineData("orders", "dev", "tenants/dev/keys/orders")]
    [InlineData("acme/orders", "dev", "tenants/acme/keys/orders")]
    [InlineData("acme/orders", null, "tenants/acme/keys/orders")]
    [InlineData("tenants/acme/keys/orders", null, "tenants/acme/keys/orders")]
    [InlineData("tenants/acme/aliases/current", null, "tenants/acme/aliases/current")]
    public void Key_ShortAndFullNames_Resolve(string input, string? tenant, string expected) =>
        Assert.Equal(expected, ResourceNames.Key(input, tenant));

    [Theory]
    [InlineData("orders", null)]
    [InlineData("a/b/c", "dev")]
    [InlineData("tenants/acme/keys", null)]
    [InlineData("tenants/acme/grants/x", null)]
    [InlineData("", "dev")]
    public void Key_Unresolvable_IsAUsageError(string input, string? tenant) =>
        Assert.Throws<CliUsageException>(() => ResourceNames.Key(input, tenant));

    [Fact]
    public void Alias_ShortName_UsesTheTenant() =>
        Assert.Equal("tenants/dev/aliases/current", ResourceNames.Alias("current", "dev"));

    [Fact]
    public void Alias_KeyName_IsRefused() =>
        Assert.Throws<CliUsageException>(() => ResourceNames.Alias("tenants/dev/keys/orders", null));

    [Fact]
    public void Tenant_ArgumentBeatsConfiguredTenant()
    {
        Assert.Equal("tenants/acme", ResourceNames.Tenant("acme", "dev"));
        Assert.Equal("tenants/dev", ResourceNames.Tenant(null, "dev"));
        Assert.Throws<CliUsageException>(() => ResourceNames.Tenant(null, null));
    }
}
