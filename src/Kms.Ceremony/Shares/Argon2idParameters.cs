namespace Kms.Ceremony.Shares;

/// <summary>The cost parameters of Argon2id (RFC 9106, version 0x13) that turn a passphrase into a share file's key.</summary>
/// <param name="MemoryKib">Memory m in KiB (1024-byte blocks).</param>
/// <param name="Iterations">Passes t over the memory.</param>
/// <param name="Parallelism">Lanes p.</param>
/// <remarks>
/// The salt is not a parameter: every share file gets its own random one. See
/// docs/share-format.md for the choice of <see cref="Default"/> and its measured cost.
/// </remarks>
public sealed record Argon2idParameters(int MemoryKib, int Iterations, int Parallelism)
{
    /// <summary>RFC 9106's version number, the only one written or read.</summary>
    public const int Version = 0x13;

    /// <summary>Salt length written: 128 bits, RFC 9106's recommendation.</summary>
    public const int SaltLength = 16;

    /// <summary>Longest salt read.</summary>
    public const int MaxSaltLength = 64;

    /// <summary>Length of the derived key: an AES-256 key.</summary>
    public const int KeyLength = 32;

    /// <summary>Upper bound on memory: 4 GiB. A file asking for more is refused before any work.</summary>
    public const int MaxMemoryKib = 4 * 1024 * 1024;

    /// <summary>Upper bound on passes.</summary>
    public const int MaxIterations = 16;

    /// <summary>Upper bound on lanes.</summary>
    public const int MaxParallelism = 16;

    /// <summary>
    /// Upper bound on memory × passes (KiB): 8 GiB of block writes, about a minute here with
    /// BouncyCastle, so a hostile or corrupted file cannot stall a restore for hours.
    /// </summary>
    public const long MaxWorkKib = 8L * 1024 * 1024;

    /// <summary>
    /// The parameters of new share files: RFC 9106 §4's second recommended option, m = 64 MiB,
    /// t = 3, p = 4 (about 1.3 s per derivation on the development host).
    /// </summary>
    public static Argon2idParameters Default { get; } = new(64 * 1024, 3, 4);

    /// <summary>The weakest parameters <see cref="KdfPolicy.Production"/> accepts: m ≥ 64 MiB and t ≥ 3 (any p ≥ 1).</summary>
    public static Argon2idParameters ProductionFloor { get; } = new(64 * 1024, 3, 1);

    /// <summary>The reason these parameters are refused under <paramref name="policy"/>, or null when they are accepted.</summary>
    public string? Check(KdfPolicy policy)
    {
        if (Parallelism is < 1 or > MaxParallelism)
        {
            return $"Argon2id parallelism {Parallelism} is outside 1..{MaxParallelism}";
        }
        if (Iterations is < 1 or > MaxIterations)
        {
            return $"Argon2id iterations {Iterations} is outside 1..{MaxIterations}";
        }
        if (MemoryKib < 8 * Parallelism || MemoryKib > MaxMemoryKib)
        {
            return $"Argon2id memory {MemoryKib} KiB is outside {8 * Parallelism}..{MaxMemoryKib} KiB";
        }
        if ((long)MemoryKib * Iterations > MaxWorkKib)
        {
            return $"Argon2id memory × iterations ({MemoryKib} KiB × {Iterations}) exceeds {MaxWorkKib} KiB";
        }
        if (policy == KdfPolicy.Production && (MemoryKib < ProductionFloor.MemoryKib || Iterations < ProductionFloor.Iterations))
        {
            return $"Argon2id parameters m={MemoryKib} KiB, t={Iterations} are below the floor m={ProductionFloor.MemoryKib} KiB, t={ProductionFloor.Iterations}";
        }
        if (policy is not (KdfPolicy.Production or KdfPolicy.AllowWeakParametersForTests))
        {
            return $"unknown KDF policy {policy}";
        }
        return null;
    }
}
