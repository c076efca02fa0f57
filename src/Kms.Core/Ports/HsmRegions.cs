namespace Kms.Core.Ports;

/// <summary>Choosing the HSM for a key's residency.</summary>
public static class HsmRegions
{
    /// <summary>The HSM under <paramref name="region"/>'s domain key, or <paramref name="hsm"/> itself for none.</summary>
    /// <exception cref="Errors.KmsException">FailedPrecondition: this node holds no domain key of the region.</exception>
    public static IHsm For(this IHsm hsm, string? region)
    {
        ArgumentNullException.ThrowIfNull(hsm);
        return region is null ? hsm : hsm.ForRegion(region);
    }
}
