namespace Kms.Core.Keys;

/// <summary>Lifecycle state of a key or a key version. Stored as its number: never renumber.</summary>
public enum KeyState
{
    /// <summary>Usable.</summary>
    Enabled = 1,

    /// <summary>Not usable; can be enabled again.</summary>
    Disabled = 2,

    /// <summary>Waiting for destruction; can be restored until the waiting period ends.</summary>
    DestroyScheduled = 3,

    /// <summary>Material erased; metadata kept for the audit.</summary>
    Destroyed = 4,
}
