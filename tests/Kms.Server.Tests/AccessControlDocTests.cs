using System.Text;
using Kms.Core.Access;
using Kms.Server.Security;
using Kms.Testing;

namespace Kms.Server.Tests;

/// <summary>
/// docs/access-control.md shows the roles and the per-RPC rules generated from the tables the
/// server enforces (Roles, AccessRules) — and the authorization matrix checks those tables
/// against independent expectations. KMS_UPDATE_DOCS=1 rewrites the generated blocks.
/// </summary>
public sealed class AccessControlDocTests
{
    [Fact]
    public void Doc_GeneratedTables_MatchTheEnforcedRules()
    {
        var path = RepositoryPaths.Of("docs", "access-control.md");
        var text = File.ReadAllText(path);
        var updated = Replace(Replace(text, "roles", RolesTable()), "rpcs", RpcTable());
        if (updated != text && Environment.GetEnvironmentVariable("KMS_UPDATE_DOCS") == "1")
        {
            File.WriteAllText(path, updated);
            return;
        }

        Assert.True(updated == text, "docs/access-control.md is out of date with Roles/AccessRules (run the tests once with KMS_UPDATE_DOCS=1)");
    }

    [Fact]
    public void MatrixRows_AgreeWithTheRuleTable()
    {
        foreach (var row in AuthorizationMatrixTests.Rows.Where(r => r.Target is not (MatrixTarget.Public or MatrixTarget.Authenticated)))
        {
            var allowed = AllowedRoles(AccessRules.ByMethod["/" + row.Method]).Select(Roles.NameOf).Order(StringComparer.Ordinal);
            Assert.Equal(row.Allowed.Order(StringComparer.Ordinal), allowed);
        }
    }

    // Roles holding every permission of the rule; a tenant role never passes a deployment-wide requirement.
    private static IEnumerable<Role> AllowedRoles(AccessRule rule) =>
        Roles.All.Where(role => rule.Scope == CallScope.Permission
            && rule.Requirements.All(r => Roles.Allows(role, r.Permission) && (Roles.IsDeploymentRole(role) || r.Target != TargetKind.Deployment)));

    private static string RolesTable()
    {
        var builder = new StringBuilder("| role | scope | permissions |\n|---|---|---|\n");
        foreach (var role in Roles.All)
        {
            var permissions = string.Join(", ", Roles.PermissionsOf(role).Select(p => $"`{Permissions.NameOf(p)}`").Order(StringComparer.Ordinal));
            builder.Append(CultureInvariant($"| `{Roles.NameOf(role)}` | {(Roles.IsDeploymentRole(role) ? "deployment" : "tenant")} | {permissions} |\n"));
        }

        return builder.ToString();
    }

    private static string RpcTable()
    {
        var builder = new StringBuilder("| RPC | needs | on | roles that may call it | metered |\n|---|---|---|---|---|\n");
        foreach (var (method, rule) in AccessRules.ByMethod.OrderBy(r => r.Key, StringComparer.Ordinal))
        {
            var needs = rule.Scope switch
            {
                CallScope.Public => "nothing (no credential)",
                CallScope.Authenticated => "any credential",
                CallScope.Bootstrap => "the bootstrap credential",
                _ => string.Join(" + ", rule.Requirements.Select(r => $"`{Permissions.NameOf(r.Permission)}`")),
            };
            var on = rule.Scope != CallScope.Permission ? "" : string.Join(" + ", rule.Requirements.Select(r => r.Target switch
            {
                TargetKind.Resource => "named resource's tenant",
                TargetKind.ResourceOrDeployment => "named tenant, or deployment",
                TargetKind.CallerTenant => "caller's tenant",
                TargetKind.TenantNameOrDeployment => "named resource's tenant, or deployment (`quorumRequests/…`)",
                _ => "deployment",
            }).Distinct());
            var roles = string.Join(", ", AllowedRoles(rule).Select(r => $"`{Roles.NameOf(r)}`"));
            builder.Append(CultureInvariant($"| `{method.TrimStart('/')}` | {needs} | {on} | {roles} | {(rule.QuotaCost is null ? "" : "yes")} |\n"));
        }

        return builder.ToString();
    }

    private static string CultureInvariant(FormattableString s) => FormattableString.Invariant(s);

    private static string Replace(string text, string name, string generated)
    {
        var start = $"<!-- generated:{name} -->\n";
        const string end = "<!-- /generated -->";
        var from = text.IndexOf(start, StringComparison.Ordinal);
        var to = from < 0 ? -1 : text.IndexOf(end, from, StringComparison.Ordinal);
        Assert.True(from >= 0 && to > from, $"docs/access-control.md lacks the block {start.Trim()} … {end}");
        return string.Concat(text.AsSpan(0, from + start.Length), generated, text.AsSpan(to));
    }
}
