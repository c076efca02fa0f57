namespace Kms.Ceremony.Shares;

/// <summary>Which Argon2id parameters a share file may use.</summary>
public enum KdfPolicy
{
    /// <summary>
    /// At least <see cref="Argon2idParameters.ProductionFloor"/> and at most the upper bounds of
    /// <see cref="Argon2idParameters"/>. The default everywhere.
    /// </summary>
    Production = 0,

    /// <summary>
    /// Below the floor allowed (the upper bounds still hold), so tests run in milliseconds. A
    /// share file protected this way is brute-forced cheaply: never use it for a real ceremony.
    /// </summary>
    AllowWeakParametersForTests = 1,
}
