using Kms.Core.Errors;
using Kms.Core.Names;

namespace Kms.Core.Services;

/// <summary>Who is asking, as established by the transport: their principal and their tenant.</summary>
/// <param name="Principal">Typed principal name (e.g. <c>local:loopback</c>); safe to log.</param>
/// <param name="Tenant">The only tenant whose resources the caller may see.</param>
public sealed record Caller(string Principal, TenantId Tenant)
{
    /// <summary>
    /// Refuses a resource outside the caller's tenant with exactly the answer a missing
    /// resource gets, so that existence does not leak across tenants.
    /// </summary>
    public void EnsureSameTenant(TenantId resourceTenant, string resourceName)
    {
        if (resourceTenant != Tenant)
        {
            throw KmsErrors.NotFound(resourceName);
        }
    }
}
