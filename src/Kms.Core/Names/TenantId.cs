using System.Text.RegularExpressions;
using Kms.Core.Errors;

namespace Kms.Core.Names;

/// <summary>A tenant's id: 1 to 63 of <c>[a-z0-9-]</c>, starting with a letter.</summary>
public readonly partial record struct TenantId
{
    private TenantId(string value) => Value = value;

    /// <summary>The id, e.g. <c>dev</c>.</summary>
    public string Value { get; }

    /// <summary>The tenant's resource name, <c>tenants/{tenant}</c>.</summary>
    public string ResourceName => $"tenants/{Value}";

    /// <summary>Validates an id.</summary>
    /// <exception cref="KmsException">InvalidArgument naming <paramref name="field"/>.</exception>
    public static TenantId Parse(string value, string field = "tenant") =>
        IsValid(value) ? new TenantId(value) : throw KmsErrors.InvalidArgument(field, "a tenant id is 1 to 63 of [a-z0-9-], starting with a letter");

    /// <summary>Parses <c>tenants/{tenant}</c>.</summary>
    public static TenantId ParseResourceName(string name, string field)
    {
        const string Prefix = "tenants/";
        if (string.IsNullOrEmpty(name))
        {
            throw KmsErrors.InvalidArgument(field, "is required (tenants/{tenant})");
        }

        if (!name.StartsWith(Prefix, StringComparison.Ordinal) || !IsValid(name[Prefix.Length..]))
        {
            throw KmsErrors.InvalidArgument(field, "must have the form tenants/{tenant}");
        }

        return new TenantId(name[Prefix.Length..]);
    }

    /// <summary>
    /// The tenant a resource name is in — <c>tenants/{tenant}</c> or anything under it — or null
    /// when the name is not under a valid tenant id.
    /// </summary>
    public static TenantId? OfResourceName(string? name)
    {
        const string Prefix = "tenants/";
        if (name is null || !name.StartsWith(Prefix, StringComparison.Ordinal))
        {
            return null;
        }

        var end = name.IndexOf('/', Prefix.Length);
        return TryParse(end < 0 ? name[Prefix.Length..] : name[Prefix.Length..end], out var tenant) ? tenant : null;
    }

    /// <summary>Validates an id without throwing.</summary>
    public static bool TryParse(string? value, out TenantId tenant)
    {
        tenant = IsValid(value) ? new TenantId(value!) : default;
        return IsValid(value);
    }

    internal static bool IsValid(string? value) => value is not null && Pattern().IsMatch(value);

    /// <inheritdoc />
    public override string ToString() => Value;

    [GeneratedRegex("^[a-z][a-z0-9-]{0,62}\\z", RegexOptions.CultureInvariant)]
    private static partial Regex Pattern();
}
