using Kms.Core.Keys;
using Kms.Core.Names;
using Kms.Core.Ports;

namespace Kms.Core.Backup;

/// <summary>What a logged lifecycle transition does to its key or version.</summary>
public enum TransitionKind
{
    /// <summary>ScheduleKeyVersionDestruction, ScheduleKeyDeletion, a DELETING tenant's key scheduled by the lifecycle's sweep (or a restore's re-applied scheduling).</summary>
    ScheduleDestruction,

    /// <summary>RestoreKeyVersion, CancelKeyDeletion: the scheduling ends, and the target is left DISABLED.</summary>
    CancelDestruction,

    /// <summary>DisableKey, DisableKeyVersion (or a restore's re-applied disabling).</summary>
    Disable,

    /// <summary>EnableKey, EnableKeyVersion.</summary>
    Enable,
}

/// <summary>
/// A successful lifecycle transition an audit event records: of a version (<see cref="Version"/>)
/// or of the key itself (null).
/// </summary>
/// <param name="Key">The key.</param>
/// <param name="Version">The version number, or null for the key.</param>
/// <param name="Kind">What it did.</param>
/// <param name="Time">The event's time (when the request arrived).</param>
/// <param name="Source">Where it was found, for the report.</param>
/// <param name="Verified">
/// Its event is covered by a checkpoint signed with the audit key (an export verified against
/// it), or comes from the replaced database: trusted to lift a restriction. An event of a SIEM
/// stream or of an export's unsigned tail is not: anyone can write one.
/// </param>
public sealed record RecordedTransition(KeyName Key, int? Version, TransitionKind Kind, DateTimeOffset Time, string Source, bool Verified = true);

/// <summary>
/// A restriction still in force at the end of what a restore read, to be re-applied to the
/// restored snapshot: a scheduled destruction (of a version, or the key's deletion when
/// <see cref="Version"/> is null) or a disabling.
/// </summary>
/// <param name="Key">The key.</param>
/// <param name="Version">The version number, or null for the key.</param>
/// <param name="Disable">A disabling; otherwise a scheduled destruction or deletion.</param>
/// <param name="Time">When it was made (the event's time).</param>
/// <param name="DestroyTime">The destroy time it set, when known (the replaced database holds it; audit events do not).</param>
/// <param name="Source">Where it was found, for the report.</param>
/// <param name="Verified">Made by a verified event or found in the replaced database (<see cref="RecordedTransition.Verified"/>): trusted to put a destroy time the snapshot holds off.</param>
public sealed record RecordedScheduling(KeyName Key, int? Version, bool Disable, DateTimeOffset Time, DateTimeOffset? DestroyTime, string Source, bool Verified = true);

/// <summary>
/// A key or version a restore left more restricted than the audit logs' last word on it, which
/// lifted a restriction after the backup (an enabling, a RestoreKeyVersion, a CancelKeyDeletion):
/// a restore re-applies restrictions, never their lifting. The operator checks it and lifts it again.
/// </summary>
/// <param name="Resource">The key or version name.</param>
/// <param name="State">Its state after the restore: DISABLED or DESTROY_SCHEDULED.</param>
/// <param name="Reason">Which event lifted it and why that was not replayed.</param>
public sealed record KeptRestriction(string Resource, KeyState State, string Reason);

/// <summary>
/// A tenant's deletion (DeleteTenant, or a restore's re-applied one): the tenant is DELETING, and
/// every key of it is scheduled for deletion — or, <paramref name="Cancelled"/>, its undoing
/// (CancelTenantDeletion): the tenant is ACTIVE again, its keys stay scheduled (as the server
/// leaves them) unless each was cancelled after.
/// </summary>
/// <param name="Tenant">The tenant.</param>
/// <param name="Time">When it was asked for (the event's time).</param>
/// <param name="Source">Where it was found, for the report.</param>
/// <param name="Verified">
/// From the replaced database, or an event a signed checkpoint covers: trusted to make the tenant
/// DELETING (or, a cancellation, ACTIVE again). From an unverified event only a deletion's keys
/// are scheduled (reversible), and a cancellation lifts nothing.
/// </param>
/// <param name="Cancelled">A CancelTenantDeletion, not a deletion.</param>
public sealed record RecordedTenantDeletion(TenantId Tenant, DateTimeOffset Time, string Source, bool Verified = true, bool Cancelled = false);

/// <summary>A restriction a restore re-applied: the key or version, its state now, and where it was found.</summary>
/// <param name="Resource">The key or version name.</param>
/// <param name="State">DESTROY_SCHEDULED or DISABLED.</param>
/// <param name="DestroyTime">The destroy time set (DESTROY_SCHEDULED), or null.</param>
/// <param name="Source">Where the scheduling or disabling was found.</param>
public sealed record ReappliedScheduling(string Resource, KeyState State, DateTimeOffset? DestroyTime, string Source);

/// <summary>
/// Re-applies, to a restored snapshot, the schedulings of destructions and deletions (and the
/// disablings) made after the backup and still in force at the end of the audit logs or in the
/// replaced database: a restore does not silently undo a compromised key's scheduled destruction.
/// </summary>
/// <remarks>
/// Re-applying only ever restricts, and never destroys: a scheduled version becomes
/// DESTROY_SCHEDULED again (the lifecycle destroys it when its time comes; RestoreKeyVersion
/// brings it back before then), never DESTROYED — destructions are
/// <see cref="DestructionReplay"/>'s, from destruction events. Audit events do not record the
/// waiting period asked for, so the destroy time is the later of the event's time plus the
/// longest waiting period the server could have applied (plus <see cref="EventMargin"/>) and the restore's time plus
/// <see cref="MinimumAfterRestore"/>: never earlier than the operator intended, and always
/// reversible for a while after the restore.
/// </remarks>
public static class SchedulingReplay
{
    /// <summary>
    /// The audit operation of a scheduled destruction (resource: the version) or deletion
    /// (resource: the key) a restore re-applied; a later restore from the chain it started
    /// re-applies it again, unless a RestoreKeyVersion or CancelKeyDeletion follows it.
    /// </summary>
    public const string ReapplyOperation = "backup/ReapplyScheduling";

    /// <summary>The audit operation of a disabling a restore re-applied (resource: the key or version).</summary>
    public const string ReapplyDisableOperation = "backup/ReapplyDisable";

    /// <summary>
    /// The audit operation of a tenant's deletion a restore re-applied (resource: the tenant): the
    /// tenant is DELETING again, and a later restore from the chain it started re-applies it too.
    /// </summary>
    public const string ReapplyTenantDeletionOperation = "backup/ReapplyTenantDeletion";

    /// <summary>The audit operation of DeleteTenant (resource: the tenant).</summary>
    public const string DeleteTenantOperation = "/kms.v1.AccessManagementService/DeleteTenant";

    /// <summary>The audit operation of CancelTenantDeletion (resource: the tenant).</summary>
    public const string CancelTenantDeletionOperation = "/kms.v1.AccessManagementService/CancelTenantDeletion";

    /// <summary>
    /// The waiting period a re-applied scheduling counts from its event when the event does not
    /// say: the longest the server allows by default (<c>Lifecycle:MaxWaitingPeriod</c>, 30 days).
    /// </summary>
    public static readonly TimeSpan DefaultWaitingPeriod = TimeSpan.FromDays(30);

    /// <summary>
    /// A re-applied scheduling's destroy time is at least this long after the restore (the
    /// server's default minimum waiting period): time to see it and restore the version.
    /// </summary>
    public static readonly TimeSpan MinimumAfterRestore = TimeSpan.FromDays(7);

    /// <summary>
    /// Added to an event's time: the event records when the request arrived, and the server
    /// counted the waiting period from its own time, later by the handling of the request (and
    /// by more when its clock ran behind the time the deployment had recorded as seen).
    /// </summary>
    public static readonly TimeSpan EventMargin = TimeSpan.FromDays(1);

    private const string Keys = "/kms.v1.KeyManagementService/";

    // Each operation read: what it does, and whether its resource is a version (null: either, by its shape).
    private static readonly Dictionary<string, (TransitionKind Kind, bool? OfVersion)> Operations = new(StringComparer.Ordinal)
    {
        [Keys + "ScheduleKeyVersionDestruction"] = (TransitionKind.ScheduleDestruction, true),
        [Keys + "RestoreKeyVersion"] = (TransitionKind.CancelDestruction, true),
        [Keys + "DisableKeyVersion"] = (TransitionKind.Disable, true),
        [Keys + "EnableKeyVersion"] = (TransitionKind.Enable, true),
        [Keys + "ScheduleKeyDeletion"] = (TransitionKind.ScheduleDestruction, false),
        [Keys + "CancelKeyDeletion"] = (TransitionKind.CancelDestruction, false),
        [Keys + "DisableKey"] = (TransitionKind.Disable, false),
        [Keys + "EnableKey"] = (TransitionKind.Enable, false),
        ["lifecycle/TenantOffboarding"] = (TransitionKind.ScheduleDestruction, false),
        [ReapplyOperation] = (TransitionKind.ScheduleDestruction, null),
        [ReapplyDisableOperation] = (TransitionKind.Disable, null),
    };

    /// <summary>Whether events of <paramref name="operation"/> record a transition <see cref="TransitionOf"/> reads.</summary>
    public static bool Records(string? operation) => operation is not null && Operations.ContainsKey(operation);

    /// <summary>The transition an audit event records, or null (another operation, or not OK).</summary>
    /// <param name="operation">The event's operation.</param>
    /// <param name="resource">Its resource.</param>
    /// <param name="outcome">Its outcome.</param>
    /// <param name="time">Its time.</param>
    /// <param name="source">Where it was found.</param>
    /// <param name="verified">Whether the event is known genuine (<see cref="RecordedTransition.Verified"/>); not unless said.</param>
    public static RecordedTransition? TransitionOf(string? operation, string? resource, string? outcome, DateTimeOffset time, string source, bool verified = false)
    {
        if (outcome != "OK" || resource is null || operation is null || !Operations.TryGetValue(operation, out var transition))
        {
            return null;
        }

        var where = $"{source} ({operation})";
        if (transition.OfVersion ?? ResourceSegments.Is(resource, ResourceSegments.KeyCollection, "versions"))
        {
            var version = KeyVersionName.Parse(resource, "resource");
            return new RecordedTransition(version.Key, version.Version, transition.Kind, time, where, verified);
        }

        return new RecordedTransition(KeyName.Parse(resource, "resource"), null, transition.Kind, time, where, verified);
    }

    /// <summary>The tenant's deletion an audit event records (a successful DeleteTenant, or a re-applied one) or its cancellation (CancelTenantDeletion), or null; not <see cref="RecordedTenantDeletion.Verified"/> until the caller says.</summary>
    /// <param name="operation">The event's operation.</param>
    /// <param name="resource">Its resource (tenants/{id}).</param>
    /// <param name="outcome">Its outcome.</param>
    /// <param name="time">Its time.</param>
    /// <param name="source">Where it was found.</param>
    public static RecordedTenantDeletion? TenantDeletionOf(string? operation, string? resource, string? outcome, DateTimeOffset time, string source) =>
        outcome == "OK" && resource is not null && operation is DeleteTenantOperation or ReapplyTenantDeletionOperation or CancelTenantDeletionOperation
            ? new RecordedTenantDeletion(TenantId.ParseResourceName(resource, "resource"), time, $"{source} ({operation})", Verified: false, Cancelled: operation == CancelTenantDeletionOperation)
            : null;

    /// <summary>
    /// What <paramref name="transitions"/>, taken in the order given (the logs' order), leave in
    /// force at their end: each key's or version's last scheduling not followed by its restore
    /// or cancellation, and each disabling not followed by an enabling — a restored version or
    /// cancelled deletion is left DISABLED, as the server leaves it. A restoration, cancellation
    /// or enabling that is not <see cref="RecordedTransition.Verified"/> lifts nothing: an
    /// unverified log may add restrictions, never take one away.
    /// </summary>
    public static IReadOnlyList<RecordedScheduling> InForce(IEnumerable<RecordedTransition> transitions)
    {
        ArgumentNullException.ThrowIfNull(transitions);
        var scheduled = new Dictionary<(KeyName, int?), RecordedTransition>();
        var disabled = new Dictionary<(KeyName, int?), RecordedTransition>();
        foreach (var transition in transitions)
        {
            var target = (transition.Key, transition.Version);
            if (!transition.Verified && transition.Kind is TransitionKind.CancelDestruction or TransitionKind.Enable)
            {
                continue;
            }

            switch (transition.Kind)
            {
                case TransitionKind.ScheduleDestruction:
                    // A restore or cancellation after it leaves the target DISABLED again.
                    scheduled[target] = transition;
                    disabled.Remove(target);
                    break;
                case TransitionKind.CancelDestruction:
                    scheduled.Remove(target);
                    disabled[target] = transition;
                    break;
                case TransitionKind.Disable:
                    disabled[target] = transition;
                    break;
                case TransitionKind.Enable:
                    disabled.Remove(target);
                    break;
            }
        }

        return
        [
            .. scheduled.Values.Select(t => new RecordedScheduling(t.Key, t.Version, Disable: false, t.Time, null, t.Source, t.Verified)),
            .. disabled.Values.Select(t => new RecordedScheduling(t.Key, t.Version, Disable: true, t.Time, null, t.Source, t.Verified)),
        ];
    }

    /// <summary>
    /// The liftings that are the logs' last word on their key or version (an enabling, a
    /// RestoreKeyVersion, a CancelKeyDeletion not followed by a scheduling or disabling of it),
    /// verified or not: <see cref="Kept"/> reports those a restore did not follow.
    /// </summary>
    public static IReadOnlyList<RecordedTransition> LastLiftings(IEnumerable<RecordedTransition> transitions)
    {
        ArgumentNullException.ThrowIfNull(transitions);
        var last = new Dictionary<(KeyName, int?), RecordedTransition>();
        foreach (var transition in transitions)
        {
            last[(transition.Key, transition.Version)] = transition;
        }

        return [.. last.Values.Where(t => t.Kind is TransitionKind.CancelDestruction or TransitionKind.Enable)];
    }

    /// <summary>
    /// Of <paramref name="liftings"/> (<see cref="LastLiftings"/>, all of one key), those that
    /// <paramref name="restored"/> (the key after the restore re-applied what it re-applies) is
    /// more restricted than: still DISABLED or DESTROY_SCHEDULED after an enabling, still
    /// DESTROY_SCHEDULED after a restoration or cancellation — held so by the backup (a lifting
    /// is never replayed) or by a restriction whose lifting was not verified.
    /// </summary>
    public static IReadOnlyList<KeptRestriction> Kept(KeyWithVersions restored, IEnumerable<RecordedTransition> liftings)
    {
        ArgumentNullException.ThrowIfNull(restored);
        ArgumentNullException.ThrowIfNull(liftings);
        var kept = new List<KeptRestriction>();
        foreach (var lifting in liftings)
        {
            var (resource, state) = lifting.Version is { } number
                ? (restored.Version(number) is { } version ? (version.Name.ToString(), version.State) : (null, KeyState.Destroyed))
                : (restored.Key.Name.ToString(), restored.Key.State);
            var restricted = lifting.Kind == TransitionKind.Enable
                ? state is KeyState.Disabled or KeyState.DestroyScheduled
                : state == KeyState.DestroyScheduled;
            if (resource is null || !restricted)
            {
                continue;
            }

            var lifted = lifting.Kind == TransitionKind.Enable ? "enabled" : "restored from its scheduled destruction";
            kept.Add(new KeptRestriction(resource, state, lifting.Verified
                ? $"{lifting.Source} {lifted} it after the backup; a restore re-applies restrictions, never their lifting: lift it again if it still should be"
                : $"{lifting.Source} {lifted} it after the backup, but that event is not covered by a checkpoint signed with the audit key (a SIEM stream, an export's unsigned tail, or no --public-key): not trusted to lift a restriction"));
        }

        return kept;
    }

    /// <summary>
    /// The change that re-applies <paramref name="schedulings"/> (all of one key) to
    /// <paramref name="current"/> at <paramref name="now"/> (the restore's time), and what it
    /// re-applied. Only an ENABLED or DISABLED key or version changes, or one DESTROY_SCHEDULED
    /// whose scheduling in force intends a later destroy time (restored and scheduled again
    /// after the backup; otherwise it keeps the snapshot's): one DESTROYED stays so, and a version the snapshot does
    /// not hold is skipped. A scheduling wins over a disabling of the same target. A version
    /// that is the snapshot's primary (made so again by losing a later rotation) is scheduled
    /// or disabled all the same: the key then refuses to encrypt until it is rotated.
    /// </summary>
    /// <param name="current">The key in the restored snapshot.</param>
    /// <param name="schedulings">What is in force.</param>
    /// <param name="now">The restore's time.</param>
    /// <param name="waitingPeriod">The waiting period counted from an event that does not record its destroy time.</param>
    public static (KeyChange Change, IReadOnlyList<ReappliedScheduling> Reapplied) Apply(KeyWithVersions current, IEnumerable<RecordedScheduling> schedulings, DateTimeOffset now, TimeSpan waitingPeriod)
    {
        ArgumentNullException.ThrowIfNull(current);
        ArgumentNullException.ThrowIfNull(schedulings);
        var reapplied = new List<ReappliedScheduling>();
        var key = current.Key;
        if (key.State == KeyState.Destroyed)
        {
            return (new KeyChange(key) { IsNoOp = true }, reapplied);
        }

        var all = schedulings.ToList();
        var keyChanged = false;
        var ofKey = all.Where(s => s.Version is null).ToList();
        if (ofKey.Where(s => !s.Disable).ToList() is { Count: > 0 } deletions
            && DestroyTime(deletions, now, waitingPeriod, key.State == KeyState.DestroyScheduled ? key.DestroyTime : null) is { } deletionTime)
        {
            key = key with { State = KeyState.DestroyScheduled, DestroyTime = deletionTime };
            reapplied.Add(new ReappliedScheduling(key.Name.ToString(), KeyState.DestroyScheduled, deletionTime, deletions[^1].Source));
            keyChanged = true;
        }
        else if (key.State == KeyState.Enabled && ofKey.LastOrDefault(s => s.Disable) is { } disabling)
        {
            key = key with { State = KeyState.Disabled };
            reapplied.Add(new ReappliedScheduling(key.Name.ToString(), KeyState.Disabled, null, disabling.Source));
            keyChanged = true;
        }

        var updated = new List<KeyVersion>();
        foreach (var group in all.Where(s => s.Version is not null).GroupBy(s => s.Version!.Value).OrderBy(g => g.Key))
        {
            if (current.Version(group.Key) is not { State: KeyState.Enabled or KeyState.Disabled or KeyState.DestroyScheduled } version)
            {
                continue;
            }

            KeyVersion changed;
            if (group.Where(s => !s.Disable).ToList() is { Count: > 0 } destructions
                && DestroyTime(destructions, now, waitingPeriod, version.State == KeyState.DestroyScheduled ? version.DestroyTime : null) is { } time)
            {
                changed = version with { State = KeyState.DestroyScheduled, DestroyTime = time };
                reapplied.Add(new ReappliedScheduling(version.Name.ToString(), KeyState.DestroyScheduled, time, destructions[^1].Source));
            }
            else if (version.State == KeyState.Enabled && group.Any(s => s.Disable))
            {
                changed = version with { State = KeyState.Disabled };
                reapplied.Add(new ReappliedScheduling(version.Name.ToString(), KeyState.Disabled, null, group.Last().Source));
            }
            else
            {
                continue;
            }

            updated.Add(changed);
            if (changed.Name.Version == key.Primary.Name.Version)
            {
                key = key with { Primary = changed };
            }
        }

        if (!keyChanged && updated.Count == 0)
        {
            return (new KeyChange(key) { IsNoOp = true }, reapplied);
        }

        return (new KeyChange(key) { UpdatedVersions = updated }, reapplied);
    }

    // The recorded destroy time when the replaced database holds it (the latest, if several),
    // else the latest event's time (none later than now: an event cannot come from the future)
    // plus the waiting period plus EventMargin; never before now + the minimum.
    // A target the snapshot holds DESTROY_SCHEDULED already (at scheduledAt) changes only when
    // a verified scheduling intends a later time (restored and scheduled again after the
    // backup); else null: an unverified event does not put a destruction off.
    private static DateTimeOffset? DestroyTime(List<RecordedScheduling> schedulings, DateTimeOffset now, TimeSpan waitingPeriod, DateTimeOffset? scheduledAt)
    {
        if (scheduledAt is not null)
        {
            schedulings = [.. schedulings.Where(s => s.Verified)];
            if (schedulings.Count == 0)
            {
                return null;
            }
        }

        var known = schedulings.Where(s => s.DestroyTime is not null).Select(s => s.DestroyTime!.Value).ToList();
        var latest = schedulings.Max(s => s.Time);
        var intended = known.Count > 0 ? known.Max() : (latest < now ? latest : now) + waitingPeriod + EventMargin;
        if (scheduledAt is { } already && intended <= already)
        {
            return null;
        }

        var floor = now + MinimumAfterRestore;
        return intended > floor ? intended : floor;
    }

    /// <summary>The audit operation recording a re-applied restriction.</summary>
    public static string OperationOf(ReappliedScheduling reapplied) =>
        (reapplied ?? throw new ArgumentNullException(nameof(reapplied))).State == KeyState.Disabled ? ReapplyDisableOperation : ReapplyOperation;
}
