using Kms.Core.Access;
using Kms.Core.Errors;
using Kms.Core.Names;
using Kms.Core.Ports;

namespace Kms.Core.Services;

/// <summary>New resources go only into tenants that exist and are not being offboarded.</summary>
internal static class TenantGate
{
    /// <exception cref="KmsException">NotFound for a missing tenant; FailedPrecondition for one being deleted.</exception>
    public static async Task EnsureActiveAsync(IAccessStore access, TenantId id, CancellationToken cancellationToken)
    {
        var tenant = await access.GetTenantAsync(id, cancellationToken) ?? throw KmsErrors.NotFound(id.ResourceName);
        if (tenant.State != TenantState.Active)
        {
            throw KmsErrors.TenantDeleting(id.ResourceName);
        }
    }
}
