using Kms.Core.Names;

namespace Kms.Core.Keys;

/// <summary>Metadata of a key and its primary version. Safe to log: it holds no material.</summary>
public sealed record Key(
    KeyName Name,
    KeyPurpose Purpose,
    KeyState State,
    KeyVersion Primary,
    DateTimeOffset CreateTime,
    KeyLabels Labels)
{
    /// <summary>Scheduled rotation period (at least a day); null: no scheduled rotation.</summary>
    public TimeSpan? RotationPeriod { get; init; }

    /// <summary>When the next scheduled rotation is due; null when none is scheduled.</summary>
    public DateTimeOffset? NextRotationTime { get; init; }

    /// <summary>Versions with a lower number refuse to decrypt. 1: every version may.</summary>
    public int MinDecryptionVersion { get; init; } = 1;

    /// <summary>When a scheduled deletion of the key takes effect; set while DESTROY_SCHEDULED.</summary>
    public DateTimeOffset? DestroyTime { get; init; }

    /// <summary>Whether a key policy restricts who may use the key (then policy and grants are checked).</summary>
    public bool Restricted { get; init; }

    /// <summary>
    /// The residency region whose domain key wraps every version (e.g. <c>eu</c>), fixed at
    /// creation; null: the deployment's domain key, held by every node. Only HSMs of the region
    /// hold its domain key, so no node outside it can use the key (<see cref="Ports.IHsm.ForRegion"/>).
    /// </summary>
    public string? Residency { get; init; }

    /// <summary>
    /// Whether ImportKeyVersion may add versions of material the caller supplies (BYOK), fixed at
    /// creation. Only such a key takes an import: otherwise whoever may import (a key-manager, who
    /// may not decrypt) could make material they know the primary of any key, and read what is
    /// encrypted under it from then on.
    /// </summary>
    public bool AllowImport { get; init; }
}
