using Google.Protobuf.WellKnownTypes;
using Kms.Client;
using Kms.Contracts.V1;

namespace Kms.Testing;

/// <summary>Principals and tokens for tests, made through the real API as the dev deployment admin.</summary>
public static class AccessSetup
{
    /// <summary>A client authenticated as dev mode's deployment admin.</summary>
    public static KmsClient DeploymentAdmin(this KmsTestServer server) => server.CreateClient(server.DeploymentAdminToken);

    /// <summary>Creates the tenant unless it exists.</summary>
    public static async Task EnsureTenantAsync(this KmsTestServer server, string tenant)
    {
        using var admin = server.DeploymentAdmin();
        var existing = await admin.Access.ListTenantsAsync(new ListTenantsRequest { PageSize = 1000 });
        if (existing.Tenants.All(t => t.Name != $"tenants/{tenant}"))
        {
            await admin.Access.CreateTenantAsync(new CreateTenantRequest { TenantId = tenant });
        }
    }

    /// <summary>
    /// Registers <c>token:{id}</c> in <paramref name="tenant"/> (null: deployment-level) with the
    /// given roles, and returns a session token for it (sessions carry administrative roles too).
    /// </summary>
    public static async Task<string> CreatePrincipalWithTokenAsync(this KmsTestServer server, string id, string? tenant, params string[] roles)
    {
        using var admin = server.DeploymentAdmin();
        var name = $"token:{id}";
        await admin.Access.CreatePrincipalAsync(new CreatePrincipalRequest { Name = name, Tenant = tenant is null ? "" : $"tenants/{tenant}" });
        foreach (var role in roles)
        {
            await admin.Access.SetRoleBindingAsync(new SetRoleBindingRequest { Principal = name, Role = role, Tenant = role is "deployment-admin" or "security-officer" ? "" : $"tenants/{tenant}" });
        }

        var token = await admin.Access.CreateApiTokenAsync(new CreateApiTokenRequest
        {
            Principal = name,
            Kind = "SESSION",
            Lifetime = Duration.FromTimeSpan(TimeSpan.FromHours(12)),
        });
        return token.Secret;
    }
}
