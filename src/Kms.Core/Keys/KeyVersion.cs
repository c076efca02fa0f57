using Kms.Core.Names;

namespace Kms.Core.Keys;

/// <summary>Metadata of one version of a key. Safe to log: it holds no material.</summary>
public sealed record KeyVersion(
    KeyVersionName Name,
    KeyVersionId Id,
    KeyState State,
    KeyAlgorithm Algorithm,
    DateTimeOffset CreateTime)
{
    /// <summary>When a scheduled destruction takes effect; set while DESTROY_SCHEDULED.</summary>
    public DateTimeOffset? DestroyTime { get; init; }

    /// <summary>When the material was erased; set once DESTROYED.</summary>
    public DateTimeOffset? DestroyEventTime { get; init; }

    /// <summary>Usage counters as last persisted (the usage counter adds what is pending).</summary>
    public KeyVersionUsage Usage { get; init; } = KeyVersionUsage.None;

    /// <summary>Whether the material was generated in the HSM or imported (BYOK).</summary>
    public KeyOrigin Origin { get; init; } = KeyOrigin.Generated;

    /// <summary>For an imported version, the import job whose key carried the material.</summary>
    public string? ImportJob { get; init; }

    /// <summary>
    /// For an imported version, the fingerprint of its material
    /// (<see cref="Ports.GeneratedKeyMaterial.MaterialFingerprint"/>): no other version imported
    /// through the same <see cref="ImportJob"/> has it (the store refuses one, in the write that would add it).
    /// </summary>
    public string? ImportFingerprint { get; init; }

    /// <summary>The public key of an asymmetric version (null for AES and HMAC).</summary>
    public SubjectPublicKey? PublicKey { get; init; }

    /// <summary>The id of the request (its audit event's request id) that created the version, when known.</summary>
    public string? CreateRequest { get; init; }
}

/// <summary>Where a key version's material came from.</summary>
public enum KeyOrigin
{
    /// <summary>Generated inside the HSM.</summary>
    Generated = 1,

    /// <summary>Imported by the caller through an import job (BYOK).</summary>
    Imported = 2,
}

/// <summary>How much a version has been used.</summary>
/// <param name="EncryptCount">GCM encryptions counted toward the bounds: durable, conservative (reserved in blocks).</param>
/// <param name="DecryptCount">Decryptions, flushed periodically.</param>
/// <param name="LastEncryptTime">Last encryption, flushed periodically.</param>
/// <param name="LastDecryptTime">Last decryption, flushed periodically.</param>
public sealed record KeyVersionUsage(long EncryptCount, long DecryptCount, DateTimeOffset? LastEncryptTime, DateTimeOffset? LastDecryptTime)
{
    /// <summary>Never used.</summary>
    public static KeyVersionUsage None { get; } = new(0, 0, null, null);
}
