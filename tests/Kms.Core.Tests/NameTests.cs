using Kms.Core.Errors;
using Kms.Core.Keys;
using Kms.Core.Names;

namespace Kms.Core.Tests;

public sealed class NameTests
{
    [Theory]
    [InlineData("tenants/aliases/keys/k", "aliases", false)]
    [InlineData("tenants/versions/keys/k", "versions", false)]
    [InlineData("tenants/keys/aliases/a", "keys", true)]
    [InlineData("tenants/versions/aliases/versions", "versions", true)]
    [InlineData("tenants/dev/aliases/keys", "dev", true)]
    public void KeyReferenceParse_TenantsNamedAfterACollection_ByTheSegmentsPlace(string name, string tenant, bool isAlias)
    {
        var reference = KeyReference.Parse(name, "name");

        Assert.Equal(tenant, reference.Tenant.Value);
        Assert.Equal(isAlias, reference is KeyReference.ToAlias);
        Assert.Equal(name, reference.ToString());
    }

    [Theory]
    [InlineData("tenants/versions/keys/k", 4, "versions", false)]
    [InlineData("tenants/versions/keys/k/versions/3", 4, "versions", true)]
    [InlineData("tenants/dev/aliases/a", 2, "aliases", true)]
    [InlineData("tenants/dev/aliasesx/a", 2, "aliases", false)]
    [InlineData("tenants/dev", 2, "keys", false)]
    [InlineData(null, 2, "keys", false)]
    public void ResourceSegmentsIs_ComparesTheWholeSegmentAtItsPlace(string? name, int index, string value, bool expected)
    {
        Assert.Equal(expected, ResourceSegments.Is(name, index, value));
    }

    [Theory]
    [InlineData("tenants/dev/keys/orders", "dev", "orders")]
    [InlineData("tenants/acme-2/keys/A_b-9", "acme-2", "A_b-9")]
    public void KeyNameParse_Valid_Parses(string name, string tenant, string keyId)
    {
        var parsed = KeyName.Parse(name, "name");
        Assert.Equal(tenant, parsed.Tenant.Value);
        Assert.Equal(keyId, parsed.KeyId);
        Assert.Equal(name, parsed.ToString());
    }

    [Theory]
    [InlineData("")]
    [InlineData("orders")]
    [InlineData("tenants/dev/keys/")]
    [InlineData("tenants/dev/keys/a/b")]
    [InlineData("tenants/Dev/keys/orders")]
    [InlineData("tenants//keys/orders")]
    [InlineData("tenants/dev/keys/bad key")]
    [InlineData("tenants/dev/keys/orders/versions/1")]
    [InlineData("/tenants/dev/keys/orders")]
    [InlineData("tenants/dev/keys/ünicode")]
    [InlineData("tenants/dev/keys/orders\n")]
    [InlineData("tenants/dev\n/keys/orders")]
    public void KeyNameParse_Malformed_InvalidArgumentNamingField(string name)
    {
        var e = Assert.Throws<KmsException>(() => KeyName.Parse(name, "name"));
        Assert.Equal(KmsErrorCode.InvalidArgument, e.Code);
        Assert.Equal("name", e.Field);
    }

    [Theory]
    [InlineData("k\n")]
    [InlineData("k\r\n")]
    [InlineData("k ")]
    public void KeyNameCreate_TrailingWhitespaceOrNewline_InvalidArgument(string keyId)
    {
        // .NET's "$" also matches before a final "\n": the patterns must anchor with "\z".
        var e = Assert.Throws<KmsException>(() => KeyName.Create(TenantId.Parse("dev"), keyId));
        Assert.Equal("key_id", e.Field);
    }

    [Fact]
    public void TenantParse_TrailingNewline_InvalidArgument()
    {
        Assert.Throws<KmsException>(() => TenantId.Parse("dev\n"));
        Assert.Throws<KmsException>(() => TenantId.ParseResourceName("tenants/dev\n", "parent"));
    }

    [Fact]
    public void KeyNameCreate_KeyIdTooLong_InvalidArgument()
    {
        var e = Assert.Throws<KmsException>(() => KeyName.Create(TenantId.Parse("dev"), new string('a', 64)));
        Assert.Equal("key_id", e.Field);
    }

    [Theory]
    [InlineData("tenants/dev")]
    [InlineData("tenants/a")]
    public void TenantParseResourceName_Valid_Parses(string name)
    {
        Assert.Equal(name, TenantId.ParseResourceName(name, "parent").ResourceName);
    }

    [Theory]
    [InlineData("")]
    [InlineData("dev")]
    [InlineData("tenants/")]
    [InlineData("tenants/1abc")]
    [InlineData("tenants/dev/keys")]
    public void TenantParseResourceName_Malformed_InvalidArgument(string name)
    {
        Assert.Equal("parent", Assert.Throws<KmsException>(() => TenantId.ParseResourceName(name, "parent")).Field);
    }

    [Fact]
    public void KeyVersionName_Formats()
    {
        Assert.Equal("tenants/dev/keys/k/versions/3", KeyName.Parse("tenants/dev/keys/k", "name").Version(3).ToString());
    }

    [Theory]
    [InlineData("Team", "x")]
    [InlineData("team", "UPPER")]
    [InlineData("1team", "x")]
    [InlineData("team\n", "x")]
    [InlineData("team", "x\n")]
    public void KeyLabels_Invalid_InvalidArgument(string key, string value)
    {
        Assert.Equal(KmsErrorCode.InvalidArgument, Assert.Throws<KmsException>(() => KeyLabels.Create([new(key, value)])).Code);
    }

    [Theory]
    [InlineData("tenants/acme", "acme")]
    [InlineData("tenants/acme/keys/k", "acme")]
    [InlineData("tenants/acme/aliases/a", "acme")]
    [InlineData("tenants/Acme/keys/k", null)]
    [InlineData("tenants/a b/keys/k", null)]
    [InlineData("tenants//keys/k", null)]
    [InlineData("tenants/", null)]
    [InlineData("tenant/acme", null)]
    [InlineData("", null)]
    [InlineData(null, null)]
    public void TenantOfResourceName_OnlyAValidTenantId(string? name, string? tenant)
    {
        Assert.Equal(tenant, TenantId.OfResourceName(name)?.Value);
    }
}
