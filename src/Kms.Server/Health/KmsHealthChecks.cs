using Kms.Core.Ports;
using Microsoft.Extensions.Diagnostics.HealthChecks;

namespace Kms.Server.Health;

/// <summary>The HSM answers (one random byte: cheap, and it needs a logged-in session).</summary>
internal sealed class HsmHealthCheck(IHsm hsm) : IHealthCheck
{
    public async Task<HealthCheckResult> CheckHealthAsync(HealthCheckContext context, CancellationToken cancellationToken = default)
    {
        try
        {
            await hsm.GenerateRandomAsync(1, cancellationToken);
            return HealthCheckResult.Healthy();
        }
        catch (Core.Errors.KmsException e)
        {
            return HealthCheckResult.Unhealthy("HSM unavailable", e);
        }
    }
}

/// <summary>The metadata store answers a trivial query.</summary>
internal sealed class StoreHealthCheck(IKeyStore store) : IHealthCheck
{
    public async Task<HealthCheckResult> CheckHealthAsync(HealthCheckContext context, CancellationToken cancellationToken = default)
    {
        try
        {
            await store.CheckHealthAsync(cancellationToken);
            return HealthCheckResult.Healthy();
        }
        catch (Core.Errors.KmsException e)
        {
            return HealthCheckResult.Unhealthy("database unavailable", e);
        }
    }
}
