using Kms.Core.Errors;
using Kms.Core.Keys;
using Kms.Core.Names;
using Kms.Core.Ports;

namespace Kms.Core.Services;

/// <summary>
/// The lifecycle state machine, as pure functions from the current key (with its versions)
/// to a change. Every illegal transition is FAILED_PRECONDITION with a message that names
/// the state and says what to do. Repeating a transition already in effect (enabling an
/// enabled key) changes nothing and succeeds, so retries are harmless.
/// </summary>
/// <remarks>
/// Key:     ENABLED ⇄ DISABLED → DESTROY_SCHEDULED → (waiting period) DESTROYED; cancel → DISABLED.
/// Version: the same; the primary version can be neither disabled nor scheduled for
/// destruction (make another version primary first), and a DESTROYED version has no material.
/// Disabling what is DESTROY_SCHEDULED (a key, a version, a version of such a key) is answered
/// as it is, nothing written, while the waiting period runs: it is at least as disabled already.
/// </remarks>
public static class KeyTransitions
{
    /// <summary>ENABLED → ENABLED, DISABLED → ENABLED.</summary>
    public static KeyChange EnableKey(KeyWithVersions current)
    {
        var key = current.Key;
        EnsureNotDeleted(key, "enabling it");
        return new KeyChange(key with { State = KeyState.Enabled });
    }

    /// <summary>
    /// ENABLED → DISABLED, DISABLED → DISABLED. A key DESTROY_SCHEDULED whose waiting period still
    /// runs at <paramref name="now"/> is answered as it is, nothing written (<see cref="KeyChange.IsNoOp"/>):
    /// it serves nothing and comes back DISABLED if its deletion is cancelled, so it is at least as
    /// disabled already. DisableKey is repeated by the SDK, and a disable whose answer was lost,
    /// retried after the key's deletion was scheduled, must not be told it did not take effect.
    /// Once the period has ended (the deletion took effect), and for a DESTROYED key, refused.
    /// </summary>
    public static KeyChange DisableKey(KeyWithVersions current, DateTimeOffset now)
    {
        var key = current.Key;
        if (key.State == KeyState.DestroyScheduled)
        {
            return !DestructionDue(key, now)
                ? new KeyChange(key) { IsNoOp = true }
                : throw KmsErrors.FailedPrecondition($"key {key.Name} is DESTROY_SCHEDULED and its deletion took effect at {key.DestroyTime:O}; it can no longer be disabled");
        }

        EnsureNotDeleted(key, "disabling it");
        return new KeyChange(key with { State = KeyState.Disabled });
    }

    /// <summary>ENABLED or DISABLED → DESTROY_SCHEDULED at <paramref name="now"/> + <paramref name="waitingPeriod"/>.</summary>
    public static KeyChange ScheduleKeyDeletion(KeyWithVersions current, DateTimeOffset now, TimeSpan waitingPeriod)
    {
        var key = current.Key;
        switch (key.State)
        {
            case KeyState.DestroyScheduled:
                throw KmsErrors.FailedPrecondition($"key {key.Name} is DESTROY_SCHEDULED already (destroy time {key.DestroyTime:O}); cancel the deletion to change it");
            case KeyState.Destroyed:
                throw KmsErrors.FailedPrecondition($"key {key.Name} is DESTROYED");
            default:
                return new KeyChange(key with { State = KeyState.DestroyScheduled, DestroyTime = now + waitingPeriod });
        }
    }

    /// <summary>
    /// DESTROY_SCHEDULED → DISABLED (a restored key must be enabled on purpose), only while
    /// the waiting period runs: once it has ended the deletion has taken effect, whether or
    /// not the background job has erased the material yet.
    /// </summary>
    public static KeyChange CancelKeyDeletion(KeyWithVersions current, DateTimeOffset now)
    {
        var key = current.Key;
        if (key.State != KeyState.DestroyScheduled)
        {
            throw KmsErrors.FailedPrecondition($"key {key.Name} is {StateName(key.State)}; only a key scheduled for deletion can have its deletion cancelled");
        }

        if (key.DestroyTime <= now)
        {
            throw KmsErrors.FailedPrecondition($"the deletion of key {key.Name} took effect at {key.DestroyTime:O}; it can no longer be cancelled");
        }

        return new KeyChange(key with { State = KeyState.Disabled, DestroyTime = null });
    }

    /// <summary>DISABLED → ENABLED (ENABLED stays).</summary>
    public static KeyChange EnableVersion(KeyWithVersions current, int number)
    {
        var (key, version) = Find(current, number);
        EnsureNotDeleted(key, $"enabling version {number}");
        return version.State switch
        {
            KeyState.Enabled or KeyState.Disabled => WithVersion(key, version with { State = KeyState.Enabled }),
            KeyState.DestroyScheduled => throw KmsErrors.FailedPrecondition($"key version {version.Name} is DESTROY_SCHEDULED; restore it before enabling it"),
            _ => throw KmsErrors.FailedPrecondition($"key version {version.Name} is DESTROYED; it can never be used again"),
        };
    }

    /// <summary>
    /// ENABLED → DISABLED (DISABLED stays); not the primary. Answered as it is, nothing written
    /// (<see cref="KeyChange.IsNoOp"/>), while no waiting period involved has ended at <paramref name="now"/>:
    /// a version DESTROY_SCHEDULED (it comes back DISABLED if restored), and a DISABLED or
    /// DESTROY_SCHEDULED version of a key DESTROY_SCHEDULED (its versions keep their states if the
    /// deletion is cancelled) — a disable retried after the destruction or deletion was scheduled,
    /// its first answer lost. Once a period involved has ended, and for anything DESTROYED, refused.
    /// </summary>
    public static KeyChange DisableVersion(KeyWithVersions current, int number, DateTimeOffset now)
    {
        var (key, version) = Find(current, number);
        var keyGoing = key.State == KeyState.DestroyScheduled;
        if (key.State == KeyState.Destroyed)
        {
            EnsureNotDeleted(key, $"disabling version {number}");
        }

        if (keyGoing && DestructionDue(key, now))
        {
            throw KmsErrors.FailedPrecondition($"key {key.Name} is DESTROY_SCHEDULED and its deletion took effect at {key.DestroyTime:O}; version {number} can no longer be disabled");
        }

        if (version.State == KeyState.DestroyScheduled && DestructionDue(version, now))
        {
            throw KmsErrors.FailedPrecondition($"key version {version.Name} is DESTROY_SCHEDULED and its destruction took effect at {version.DestroyTime:O}; it can no longer be disabled");
        }

        if (version.State == KeyState.DestroyScheduled || (keyGoing && version.State == KeyState.Disabled))
        {
            return new KeyChange(key) { IsNoOp = true };
        }

        if (version.State == KeyState.Destroyed)
        {
            // Before the key's own state: cancelling its deletion would not make this version disableable.
            throw KmsErrors.FailedPrecondition($"key version {version.Name} is DESTROYED; only an ENABLED version can be disabled");
        }

        EnsureNotDeleted(key, $"disabling version {number}");
        EnsureNotPrimary(key, version, "disabling it");
        return version.State switch
        {
            KeyState.Enabled or KeyState.Disabled => WithVersion(key, version with { State = KeyState.Disabled }),
            _ => throw KmsErrors.FailedPrecondition($"key version {version.Name} is {StateName(version.State)}; only an ENABLED version can be disabled"),
        };
    }

    /// <summary>ENABLED or DISABLED → DESTROY_SCHEDULED; not the primary.</summary>
    public static KeyChange ScheduleVersionDestruction(KeyWithVersions current, int number, DateTimeOffset now, TimeSpan waitingPeriod)
    {
        var (key, version) = Find(current, number);
        EnsureNotDeleted(key, $"scheduling the destruction of version {number}");
        EnsureNotPrimary(key, version, "scheduling its destruction");
        return version.State switch
        {
            KeyState.Enabled or KeyState.Disabled => WithVersion(key, version with { State = KeyState.DestroyScheduled, DestroyTime = now + waitingPeriod }),
            KeyState.DestroyScheduled => throw KmsErrors.FailedPrecondition($"key version {version.Name} is DESTROY_SCHEDULED already (destroy time {version.DestroyTime:O})"),
            _ => throw KmsErrors.FailedPrecondition($"key version {version.Name} is DESTROYED"),
        };
    }

    /// <summary>DESTROY_SCHEDULED → DISABLED, only while the waiting period runs.</summary>
    public static KeyChange RestoreVersion(KeyWithVersions current, int number, DateTimeOffset now)
    {
        var (key, version) = Find(current, number);
        EnsureNotDeleted(key, $"restoring version {number}");
        if (version.State != KeyState.DestroyScheduled)
        {
            throw KmsErrors.FailedPrecondition($"key version {version.Name} is {StateName(version.State)}; only a version scheduled for destruction can be restored");
        }

        if (version.DestroyTime <= now)
        {
            throw KmsErrors.FailedPrecondition($"the destruction of key version {version.Name} took effect at {version.DestroyTime:O}; it can no longer be restored");
        }

        return WithVersion(key, version with { State = KeyState.Disabled, DestroyTime = null });
    }

    /// <summary>Makes an ENABLED version, at or above the minimum decryption version, the primary.</summary>
    public static KeyChange UpdatePrimary(KeyWithVersions current, int number)
    {
        var (key, version) = Find(current, number);
        EnsureNotDeleted(key, "changing its primary version");
        if (version.State != KeyState.Enabled)
        {
            throw KmsErrors.FailedPrecondition($"key version {version.Name} is {StateName(version.State)}; only an ENABLED version can be primary");
        }

        if (number < key.MinDecryptionVersion)
        {
            throw KmsErrors.FailedPrecondition($"key version {number} is below the minimum decryption version {key.MinDecryptionVersion} of key {key.Name}");
        }

        return new KeyChange(key with { Primary = version });
    }

    /// <summary>Only an ENABLED key can be rotated (checked before its new version is generated, and again when it is added).</summary>
    public static void EnsureRotatable(Key key)
    {
        if (key.State != KeyState.Enabled)
        {
            throw KmsErrors.FailedPrecondition($"key {key.Name} is {StateName(key.State)}; only an ENABLED key can be rotated");
        }
    }

    /// <summary>Adds version n+1 (ENABLED) and makes it the primary.</summary>
    /// <param name="scheduled">A scheduled rotation also moves next_rotation_time one period on.</param>
    public static KeyChange Rotate(KeyWithVersions current, KeyVersionId id, GeneratedKeyMaterial material, DateTimeOffset now, bool scheduled, string? importJob = null)
    {
        var key = current.Key;
        EnsureRotatable(key);

        var number = current.Versions.Count == 0 ? 1 : current.Versions.Max(v => v.Name.Version) + 1;
        var version = NewVersion(key.Name.Version(number), id, key.Primary.Algorithm, material, now, importJob);

        // A scheduled rotation always moves the schedule on (or ends it): left in the past it
        // would make the key due again at every pass.
        var next = !scheduled ? key.NextRotationTime : key.RotationPeriod is { } period ? now + period : null;
        return new KeyChange(key with { Primary = version, NextRotationTime = next })
        {
            AddedVersion = new NewKeyVersion(version, material.Wrapped),
        };
    }

    /// <summary>
    /// A new ENABLED version of <paramref name="algorithm"/> over <paramref name="material"/>:
    /// imported when <paramref name="importJob"/> is given, else generated; created by the
    /// request being served (its audit request id).
    /// </summary>
    public static KeyVersion NewVersion(KeyVersionName name, KeyVersionId id, KeyAlgorithm algorithm, GeneratedKeyMaterial material, DateTimeOffset now, string? importJob = null)
    {
        ArgumentNullException.ThrowIfNull(material);
        return new KeyVersion(name, id, KeyState.Enabled, algorithm, now)
        {
            Origin = importJob is null ? KeyOrigin.Generated : KeyOrigin.Imported,
            ImportJob = importJob,
            ImportFingerprint = importJob is null ? null : material.MaterialFingerprint,
            PublicKey = material.SubjectPublicKeyInfo is { } spki ? new SubjectPublicKey(spki) : null,
            CreateRequest = Audit.AuditScope.Current?.Entry.RequestId,
        };
    }

    /// <summary>
    /// Any state but DESTROYED → DESTROYED at once, for one version that is not the primary:
    /// what a quorum of officers approves (DESTROY_KEY_VERSION_NOW) instead of waiting out the
    /// period. The store erases the material in the same transaction, as for a due destruction.
    /// </summary>
    public static KeyChange DestroyVersionNow(KeyWithVersions current, int number, DateTimeOffset now)
    {
        var (key, version) = Find(current, number);
        if (key.State == KeyState.Destroyed)
        {
            throw KmsErrors.FailedPrecondition($"key {key.Name} is DESTROYED");
        }

        EnsureNotPrimary(key, version, "destroying it");
        if (version.State == KeyState.Destroyed)
        {
            throw KmsErrors.FailedPrecondition($"key version {version.Name} is DESTROYED already");
        }

        return WithVersion(key, version with { State = KeyState.Destroyed, DestroyTime = now, DestroyEventTime = now });
    }

    /// <summary>Whether the key's scheduled deletion has taken effect at <paramref name="now"/>, whether or not its material is erased yet.</summary>
    public static bool DestructionDue(Key key, DateTimeOffset now) => key.State == KeyState.DestroyScheduled && key.DestroyTime <= now;

    /// <summary>Whether the version's scheduled destruction has taken effect at <paramref name="now"/>, whether or not its material is erased yet.</summary>
    public static bool DestructionDue(KeyVersion version, DateTimeOffset now) => version.State == KeyState.DestroyScheduled && version.DestroyTime <= now;

    /// <summary>
    /// Applies due destructions at <paramref name="now"/>: a key whose deletion is due is
    /// DESTROYED with every version; versions whose destruction is due are DESTROYED.
    /// Returns null when nothing is due.
    /// </summary>
    public static KeyChange? DestroyDue(KeyWithVersions current, DateTimeOffset now)
    {
        var key = current.Key;
        var keyDue = DestructionDue(key, now);
        var destroyed = current.Versions
            .Where(v => v.State != KeyState.Destroyed && (keyDue || DestructionDue(v, now)))
            .Select(v => v with { State = KeyState.Destroyed, DestroyEventTime = now, DestroyTime = v.DestroyTime ?? key.DestroyTime })
            .ToList();
        if (!keyDue && destroyed.Count == 0)
        {
            return null;
        }

        var primary = destroyed.FirstOrDefault(v => v.Name.Version == key.Primary.Name.Version) ?? key.Primary;
        var updated = keyDue
            ? key with { State = KeyState.Destroyed, Primary = primary, NextRotationTime = null }
            : key with { Primary = primary };
        return new KeyChange(updated) { UpdatedVersions = destroyed };
    }

    /// <summary>
    /// Destroys version <paramref name="number"/> if its destruction is due (it is
    /// DESTROY_SCHEDULED and its time has come); null otherwise (restored, or not yet due).
    /// </summary>
    public static KeyChange? DestroyDueVersion(KeyWithVersions current, int number, DateTimeOffset now)
    {
        if (current.Version(number) is not { State: KeyState.DestroyScheduled } version || version.DestroyTime > now)
        {
            return null;
        }

        return WithVersion(current.Key, version with { State = KeyState.Destroyed, DestroyEventTime = now });
    }

    /// <summary>
    /// Refuses an alias pointed (created or moved) at a key scheduled for deletion or destroyed:
    /// every call through the alias would fail, and the key is going away (or gone). Asked by the
    /// store inside the alias's write, under its write lock, so a deletion scheduled meanwhile is seen.
    /// </summary>
    public static void EnsureAliasTarget(KeyName key, KeyState state) =>
        RefuseGoing(key, state, "an alias is not pointed at a key scheduled for deletion (cancel the deletion first, or name another key)", "an alias cannot name a destroyed key");

    /// <summary>
    /// Refuses a grant on a key scheduled for deletion or destroyed: it would let someone use a key
    /// that is going away (or gone), and a cancelled deletion brings the key back DISABLED, when a
    /// grant can be made before it serves again (AWS KMS refuses CreateGrant on a key pending
    /// deletion). Asked by the store inside the grant's write, so a deletion scheduled meanwhile is seen.
    /// </summary>
    public static void EnsureGrantable(KeyName key, KeyState state) =>
        RefuseGoing(key, state, "no grant is made on a key scheduled for deletion (cancel the deletion first)", "no grant is made on a destroyed key");

    /// <summary>The state's name as the API spells it.</summary>
    public static string StateName(KeyState state) => state switch
    {
        KeyState.Enabled => "ENABLED",
        KeyState.Disabled => "DISABLED",
        KeyState.DestroyScheduled => "DESTROY_SCHEDULED",
        KeyState.Destroyed => "DESTROYED",
        _ => state.ToString(),
    };

    private static KeyChange WithVersion(Key key, KeyVersion version) =>
        new(version.Name.Version == key.Primary.Name.Version ? key with { Primary = version } : key) { UpdatedVersions = [version] };

    private static (Key Key, KeyVersion Version) Find(KeyWithVersions current, int number) =>
        (current.Key, current.Version(number) ?? throw KmsErrors.NotFound(current.Key.Name.Version(number).ToString()));

    private static void EnsureNotDeleted(Key key, string action)
    {
        switch (key.State)
        {
            case KeyState.DestroyScheduled:
                throw KmsErrors.FailedPrecondition($"key {key.Name} is DESTROY_SCHEDULED; cancel the deletion before {action}");
            case KeyState.Destroyed:
                throw KmsErrors.FailedPrecondition($"key {key.Name} is DESTROYED");
        }
    }

    // A key that is going away (or gone) takes nothing new that names it: refused with its state and why.
    private static void RefuseGoing(KeyName key, KeyState state, string whenScheduled, string whenDestroyed)
    {
        switch (state)
        {
            case KeyState.DestroyScheduled:
                throw KmsErrors.FailedPrecondition($"key {key} is DESTROY_SCHEDULED; {whenScheduled}");
            case KeyState.Destroyed:
                throw KmsErrors.FailedPrecondition($"key {key} is DESTROYED; {whenDestroyed}");
        }
    }

    private static void EnsureNotPrimary(Key key, KeyVersion version, string action)
    {
        if (version.Name.Version == key.Primary.Name.Version)
        {
            throw KmsErrors.FailedPrecondition(
                $"key version {version.Name} is the primary version of key {key.Name}; rotate the key or make another version primary before {action}");
        }
    }
}
