using Kms.Core.Access;
using Kms.Core.Errors;
using Kms.Core.Names;

namespace Kms.Core.Services;

/// <summary>
/// Who is asking, as established by the transport: their typed principal name, the tenant
/// they belong to (none for deployment-level principals) and the roles bound to them.
/// </summary>
public sealed record Caller(string Principal, TenantId? HomeTenant, IReadOnlySet<Role> Roles)
{
    /// <summary>When the credential stops being valid (a token's expiry); null: no limit of its own.</summary>
    public DateTimeOffset? ValidUntil { get; init; }

    /// <summary>The API token the caller authenticated with, if any (audit, session lookups).</summary>
    public string? TokenId { get; init; }

    /// <summary>
    /// Whether the caller's tenant is being deleted (DELETING): a tenant being offboarded accepts no
    /// new work, so every call of its principals is refused, FAILED_PRECONDITION
    /// (<see cref="KmsErrors.CallerTenantDeleting"/>), before its permissions are looked at.
    /// </summary>
    public bool TenantDeleting { get; init; }

    /// <summary>Set only for the one-time bootstrap credential: the token Bootstrap consumes.</summary>
    public string? BootstrapTokenId { get; init; }

    /// <summary>
    /// The bootstrap credential is a recovery credential (an executed RECOVER_DEPLOYMENT_ADMIN
    /// request issued it): Bootstrap accepts it once although deployment admins exist.
    /// </summary>
    public bool BootstrapRecovery { get; init; }

    /// <summary>The caller's tenant, for operations that name none (Decrypt: the blob names a key version only).</summary>
    /// <exception cref="KmsException">PermissionDenied for a principal that belongs to no tenant.</exception>
    public TenantId Tenant => HomeTenant ?? throw KmsErrors.PermissionDenied($"principal {Principal} belongs to no tenant; it cannot use keys");

    /// <summary>
    /// Refuses a resource outside the caller's tenant with exactly the answer a missing
    /// resource gets, so that existence does not leak across tenants.
    /// </summary>
    public void EnsureSameTenant(TenantId resourceTenant, string resourceName)
    {
        if (resourceTenant != HomeTenant)
        {
            throw KmsErrors.NotFoundInAnotherTenant(resourceName);
        }
    }
}

/// <summary>
/// The authorization rule, in one place: a caller may use a permission on a resource of
/// tenant T if one of its tenant roles allows it and T is its own tenant, or one of its
/// deployment roles allows it. Otherwise: NOT_FOUND when T is another tenant than the
/// caller's (existence does not leak), PERMISSION_DENIED naming the permission when it is its
/// own, the resource is deployment-wide, or the caller belongs to no tenant. Default deny.
/// </summary>
public static class AccessControl
{
    /// <summary>Demands <paramref name="permission"/> on a resource of <paramref name="resourceTenant"/> (null: deployment-wide).</summary>
    /// <exception cref="KmsException">NotFound or PermissionDenied.</exception>
    public static void Demand(Caller caller, Permission permission, TenantId? resourceTenant, string resourceName)
    {
        ArgumentNullException.ThrowIfNull(caller);
        if (Allows(caller, permission, resourceTenant))
        {
            return;
        }

        if (resourceTenant is { } tenant && caller.HomeTenant is { } home && tenant != home)
        {
            throw KmsErrors.NotFound(resourceName);
        }

        throw KmsErrors.PermissionDenied($"permission {Permissions.NameOf(permission)} is required on {KmsErrors.Printable(resourceName)}; principal {caller.Principal} does not have it");
    }

    /// <summary>Whether the caller holds the permission on that tenant's resources.</summary>
    public static bool Allows(Caller caller, Permission permission, TenantId? resourceTenant)
    {
        ArgumentNullException.ThrowIfNull(caller);
        foreach (var role in caller.Roles)
        {
            if (!Roles.Allows(role, permission))
            {
                continue;
            }

            if (Roles.IsDeploymentRole(role) || (resourceTenant is { } tenant && tenant == caller.HomeTenant))
            {
                return true;
            }
        }

        return false;
    }
}
