namespace Kms.Cli.Infrastructure;

/// <summary>
/// Short names on the command line to resource names: <c>tenants/t/keys/k</c> as it is,
/// <c>t/k</c> to <c>tenants/t/keys/k</c>, and <c>k</c> to a key of the configured tenant
/// (<c>--tenant</c>, <c>KMS_TENANT</c>, the profile's <c>tenant</c>). Aliases likewise.
/// </summary>
internal static class ResourceNames
{
    /// <summary>A key (or, given in full, an alias: <c>tenants/t/aliases/a</c> is accepted wherever a key is).</summary>
    public static string Key(string input, string? tenant) => Resolve(input, tenant, "keys", acceptAlias: true);

    /// <summary>
    /// A key version, or what <see cref="Key"/> takes (a key or an alias: its primary version):
    /// <c>k/versions/n</c>, <c>t/k/versions/n</c> or <c>tenants/t/keys/k/versions/n</c>.
    /// </summary>
    public static string KeyOrVersion(string input, string? tenant)
    {
        ArgumentNullException.ThrowIfNull(input);
        var at = input.LastIndexOf("/versions/", StringComparison.Ordinal);
        if (at < 0)
        {
            return Key(input, tenant);
        }

        var number = input[(at + "/versions/".Length)..];
        if (number.Length is 0 or > 19 || !number.All(char.IsAsciiDigit))
        {
            throw new CliUsageException($"'{input}' is not a key version name (KEY/versions/N, TENANT/KEY/versions/N or tenants/TENANT/keys/KEY/versions/N)");
        }

        return $"{Resolve(input[..at], tenant, "keys", acceptAlias: false)}/versions/{number}";
    }

    /// <summary>An alias: <c>tenants/t/aliases/a</c>, <c>t/a</c> or <c>a</c>.</summary>
    public static string Alias(string input, string? tenant) => Resolve(input, tenant, "aliases", acceptAlias: false);

    /// <summary>A tenant's resource name (<c>tenants/t</c>) from <c>t</c> or <c>tenants/t</c>, else the configured tenant.</summary>
    public static string Tenant(string? input, string? tenant)
    {
        var id = input ?? tenant ?? throw new CliUsageException("no tenant: give one, or --tenant (or KMS_TENANT, or the profile's tenant)");
        id = id.StartsWith("tenants/", StringComparison.Ordinal) ? id["tenants/".Length..] : id;
        return IsId(id) ? $"tenants/{id}" : throw new CliUsageException($"'{input ?? tenant}' is not a tenant id");
    }

    /// <summary>The last segment of a resource name (a key's id, a version's number).</summary>
    public static string Last(string name) => name[(name.LastIndexOf('/') + 1)..];

    private static string Resolve(string input, string? tenant, string collection, bool acceptAlias)
    {
        ArgumentNullException.ThrowIfNull(input);
        if (input.StartsWith("tenants/", StringComparison.Ordinal))
        {
            var parts = input.Split('/');
            var ok = parts.Length == 4 && IsId(parts[1]) && IsId(parts[3])
                && (parts[2] == collection || (acceptAlias && parts[2] == "aliases"));
            return ok ? input : throw new CliUsageException($"'{input}' is not a {Singular(collection)} name (tenants/TENANT/{collection}/ID)");
        }

        var slash = input.Split('/');
        return slash switch
        {
            [var t, var id] when IsId(t) && IsId(id) => $"tenants/{t}/{collection}/{id}",
            [var id] when IsId(id) => tenant is not null
                ? $"tenants/{Tenant(null, tenant)["tenants/".Length..]}/{collection}/{id}"
                : throw new CliUsageException($"'{input}' needs a tenant: TENANT/{input}, or --tenant (or KMS_TENANT, or the profile's tenant)"),
            _ => throw new CliUsageException($"'{input}' is not a {Singular(collection)} name (ID, TENANT/ID or tenants/TENANT/{collection}/ID)"),
        };
    }

    private static string Singular(string collection) => collection == "keys" ? "key" : "alias";

    private static bool IsId(string id) => id.Length is > 0 and <= 63 && id.All(c => char.IsAsciiLetterOrDigit(c) || c is '-' or '_' or '.');
}
