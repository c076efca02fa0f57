using System.Text.RegularExpressions;
using Kms.Core.Errors;

namespace Kms.Core.Names;

/// <summary>An alias's resource name: <c>tenants/{tenant}/aliases/{alias}</c>.</summary>
public sealed partial record AliasName(TenantId Tenant, string AliasId)
{
    /// <summary>Parses an alias resource name.</summary>
    /// <exception cref="KmsException">InvalidArgument naming <paramref name="field"/>.</exception>
    public static AliasName Parse(string? name, string field)
    {
        if (string.IsNullOrEmpty(name))
        {
            throw KmsErrors.InvalidArgument(field, "is required (tenants/{tenant}/aliases/{alias})");
        }

        var match = NamePattern().Match(name);
        if (!match.Success || !TenantId.IsValid(match.Groups["tenant"].Value))
        {
            throw KmsErrors.InvalidArgument(field, "must have the form tenants/{tenant}/aliases/{alias}");
        }

        return new AliasName(TenantId.Parse(match.Groups["tenant"].Value, field), match.Groups["alias"].Value);
    }

    /// <summary>Validates an alias id chosen by a caller.</summary>
    public static AliasName Create(TenantId tenant, string? aliasId, string field = "alias_id")
    {
        if (string.IsNullOrEmpty(aliasId))
        {
            throw KmsErrors.InvalidArgument(field, "is required");
        }

        return IdPattern().IsMatch(aliasId)
            ? new AliasName(tenant, aliasId)
            : throw KmsErrors.InvalidArgument(field, "an alias id is 1 to 63 of [a-zA-Z0-9_-]");
    }

    /// <inheritdoc />
    public override string ToString() => $"tenants/{Tenant.Value}/aliases/{AliasId}";

    [GeneratedRegex("^tenants/(?<tenant>[^/]+)/aliases/(?<alias>[a-zA-Z0-9_-]{1,63})\\z", RegexOptions.CultureInvariant)]
    private static partial Regex NamePattern();

    [GeneratedRegex("^[a-zA-Z0-9_-]{1,63}\\z", RegexOptions.CultureInvariant)]
    private static partial Regex IdPattern();
}
