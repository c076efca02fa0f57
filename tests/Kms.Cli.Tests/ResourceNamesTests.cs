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

    [Theory]
    [InlineData("signer/versions/1", "dev", "tenants/dev/keys/signer/versions/1")]
    [InlineData("acme/signer/versions/12", "dev", "tenants/acme/keys/signer/versions/12")]
    [InlineData("tenants/acme/keys/signer/versions/3", null, "tenants/acme/keys/signer/versions/3")]
    [InlineData("signer", "dev", "tenants/dev/keys/signer")]
    [InlineData("tenants/acme/aliases/current", null, "tenants/acme/aliases/current")]
    public void KeyOrVersion_VersionsKeysAndAliases_Resolve(string input, string? tenant, string expected) =>
        Assert.Equal(expected, ResourceNames.KeyOrVersion(input, tenant));

    [Theory]
    [InlineData("signer/versions/one", "dev")]
    [InlineData("signer/versions/", "dev")]
    [InlineData("signer/versions/1", null)]
    [InlineData("tenants/acme/aliases/current/versions/1", null)]
    [InlineData("tenants/acme/keys/signer/versions/1/x", null)]
    public void KeyOrVersion_Unresolvable_IsAUsageError(string input, string? tenant) =>
        Assert.Throws<CliUsageException>(() => ResourceNames.KeyOrVersion(input, tenant));

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
