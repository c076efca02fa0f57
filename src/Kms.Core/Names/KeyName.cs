using System.Text.RegularExpressions;
using Kms.Core.Errors;

namespace Kms.Core.Names;

/// <summary>A key's resource name: <c>tenants/{tenant}/keys/{key}</c>.</summary>
public sealed partial record KeyName(TenantId Tenant, string KeyId)
{
    /// <summary>Parses a key resource name.</summary>
    /// <exception cref="KmsException">InvalidArgument naming <paramref name="field"/>.</exception>
    public static KeyName Parse(string? name, string field)
    {
        if (string.IsNullOrEmpty(name))
        {
            throw KmsErrors.InvalidArgument(field, "is required (tenants/{tenant}/keys/{key})");
        }

        var match = NamePattern().Match(name);
        if (!match.Success || !TenantId.IsValid(match.Groups["tenant"].Value))
        {
            throw KmsErrors.InvalidArgument(field, "must have the form tenants/{tenant}/keys/{key}");
        }

        return new KeyName(TenantId.Parse(match.Groups["tenant"].Value, field), match.Groups["key"].Value);
    }

    /// <summary>Validates a key id chosen by a caller.</summary>
    /// <exception cref="KmsException">InvalidArgument naming <paramref name="field"/>.</exception>
    public static KeyName Create(TenantId tenant, string? keyId, string field = "key_id")
    {
        if (string.IsNullOrEmpty(keyId))
        {
            throw KmsErrors.InvalidArgument(field, "is required");
        }

        if (!KeyIdPattern().IsMatch(keyId))
        {
            throw KmsErrors.InvalidArgument(field, "a key id is 1 to 63 of [a-zA-Z0-9_-]");
        }

        return new KeyName(tenant, keyId);
    }

    /// <summary>The name of version <paramref name="version"/> of this key.</summary>
    public KeyVersionName Version(int version) => new(this, version);

    /// <inheritdoc />
    public override string ToString() => $"tenants/{Tenant.Value}/keys/{KeyId}";

    [GeneratedRegex("^tenants/(?<tenant>[^/]+)/keys/(?<key>[a-zA-Z0-9_-]{1,63})\\z", RegexOptions.CultureInvariant)]
    private static partial Regex NamePattern();

    [GeneratedRegex("^[a-zA-Z0-9_-]{1,63}\\z", RegexOptions.CultureInvariant)]
    private static partial Regex KeyIdPattern();
}
