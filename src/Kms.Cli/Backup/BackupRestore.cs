using System.Globalization;
using Kms.Ceremony;
using Kms.Cli.Infrastructure;
using Kms.Client.Audit;
using Kms.Core.Audit;
using Kms.Core.Backup;
using Kms.Core.Errors;
using Kms.Core.Files;
using Kms.Core.Keys;
using Kms.Core.Names;
using Kms.Core.Ports;
using Kms.Core.Quorum;
using Kms.Core.Services;
using Kms.Storage;
using Kms.Storage.Sqlite;

namespace Kms.Cli.Backup;

/// <summary>What a restore did: the backup it installed, the destructions it re-applied, where the replaced database went.</summary>
/// <param name="Manifest">The verified manifest.</param>
/// <param name="Reapplied">Versions the restore destroyed in the snapshot, each with where the destruction was found.</param>
/// <param name="Skipped">Recorded destructions of keys or versions the snapshot does not hold (made after the backup), and what the audit logs lack: ranges left out (with --allow-gaps), a torn last line not read.</param>
/// <param name="ReplacedDatabase">Where the database that was replaced was kept, or null.</param>
internal sealed record RestoreReport(BackupManifest Manifest, IReadOnlyList<(string Version, string Source)> Reapplied, IReadOnlyList<string> Skipped, string? ReplacedDatabase)
{
    /// <summary>Scheduled destructions and deletions (and disablings) made after the backup, still in force, that the restore made again in the snapshot.</summary>
    public IReadOnlyList<ReappliedScheduling> Rescheduled { get; init; } = [];

    /// <summary>Keys and versions left more restricted than the audit logs' last word on them, and why (<see cref="SchedulingReplay.Kept"/>).</summary>
    public IReadOnlyList<KeptRestriction> Kept { get; init; } = [];

    /// <summary>Tenants deleted after the backup that the restore made DELETING again, each with where the deletion was found.</summary>
    public IReadOnlyList<(string Tenant, string Source)> TenantsDeleting { get; init; } = [];

    /// <summary>Where the node's record of the checkpoints it signed over the replaced chain (<c>audit/checkpoints.jsonl</c>) was moved aside, or null.</summary>
    public string? ReplacedCheckpoints { get; init; }

    /// <summary>Removals of access made after the backup (a token revoked, a principal deleted, a role binding removed, a grant revoked; over a replaced database, a key policy narrowed) that the restore made again: the resource, and where it was found.</summary>
    public IReadOnlyList<(string Resource, string Source)> AccessRemoved { get; init; } = [];

    /// <summary>
    /// Changes made after the backup that the restore does not replay, for the operator to review:
    /// a key policy set (over a replaced database: one its policy there does not narrow), a binding removed whose event does not name it, a primary version changed,
    /// an alias created, moved or deleted, a tenant's deletion cancelled that the backup holds
    /// DELETING; and over a replaced database, each key or version it holds less restricted than
    /// the restored copy, each primary, alias and tenant state that differs.
    /// </summary>
    public IReadOnlyList<string> AccessReview { get; init; } = [];

    /// <summary>Versions whose encryption count the replaced database had higher (encryptions made after the backup): raised to it, with the backup's count and the replaced database's.</summary>
    public IReadOnlyList<(string Version, long Backup, long Replaced)> EncryptCountsCarried { get; init; } = [];

    /// <summary>Quorum requests the backup held PENDING, made VOID (<see cref="QuorumRequestState.Void"/>): each request's name, operation and the approvals it held.</summary>
    public IReadOnlyList<VoidedQuorumRequest> QuorumRequestsVoided { get; init; } = [];
}

/// <summary>A quorum request a restore voided: its name, its operation, how many approvals the restored database held of it.</summary>
internal sealed record VoidedQuorumRequest(string Name, string Operation, int Approvals);

/// <summary>What <c>reapply-destructions</c> did: the destructions and schedulings it re-applied, what it skipped, where in the chain it started.</summary>
/// <param name="Reapplied">Versions destroyed, each with where the destruction was found.</param>
/// <param name="Skipped">Recorded destructions of keys or versions the database does not hold, and what the audit logs lack.</param>
/// <param name="AfterSequence">The audit sequence after which the logs were read.</param>
internal sealed record ReapplyReport(IReadOnlyList<(string Version, string Source)> Reapplied, IReadOnlyList<string> Skipped, long AfterSequence)
{
    /// <summary>Scheduled destructions and deletions (and disablings) still in force that were made again.</summary>
    public IReadOnlyList<ReappliedScheduling> Rescheduled { get; init; } = [];

    /// <summary>Keys and versions left more restricted than the audit logs' last word on them, and why (<see cref="SchedulingReplay.Kept"/>).</summary>
    public IReadOnlyList<KeptRestriction> Kept { get; init; } = [];

    /// <summary>Tenants deleted after the restored database's chain that were made DELETING again, each with where the deletion was found.</summary>
    public IReadOnlyList<(string Tenant, string Source)> TenantsDeleting { get; init; } = [];

    /// <summary>Where the data directory's <c>audit/checkpoints.jsonl</c> was moved aside (its newest checkpoint not on the restored chain), or null.</summary>
    public string? ReplacedCheckpoints { get; init; }

    /// <summary>Removals of access the logs record that were made again (<see cref="RestoreReport.AccessRemoved"/>).</summary>
    public IReadOnlyList<(string Resource, string Source)> AccessRemoved { get; init; } = [];

    /// <summary>Changes of access the logs record that cannot be replayed, for review (<see cref="RestoreReport.AccessReview"/>).</summary>
    public IReadOnlyList<string> AccessReview { get; init; } = [];

    /// <summary>Quorum requests the restored database held PENDING, made VOID (<see cref="RestoreReport.QuorumRequestsVoided"/>).</summary>
    public IReadOnlyList<VoidedQuorumRequest> QuorumRequestsVoided { get; init; } = [];
}

/// <summary>What <c>ReapplyAsync</c> did, for the reports.</summary>
internal sealed record ReapplyOutcome(
    IReadOnlyList<(string Version, string Source)> Reapplied,
    IReadOnlyList<string> Skipped,
    IReadOnlyList<ReappliedScheduling> Rescheduled,
    IReadOnlyList<KeptRestriction> Kept,
    IReadOnlyList<(string Tenant, string Source)> TenantsDeleting)
{
    /// <summary>Removals of access made again.</summary>
    public IReadOnlyList<(string Resource, string Source)> AccessRemoved { get; init; } = [];

    /// <summary>Liftings of a tenant's deletion not replayed (the restored tenant stays DELETING), for review.</summary>
    public IReadOnlyList<string> Review { get; init; } = [];

    /// <summary>Quorum requests made VOID.</summary>
    public IReadOnlyList<VoidedQuorumRequest> QuorumRequestsVoided { get; init; } = [];
}

/// <summary>
/// <c>kms backup restore</c>, offline with the server stopped: verifies the backup, re-applies
/// every destruction recorded after it (from the database being replaced and from audit
/// exports), and only then installs the result as <c>{DataDir}/kms.db</c>.
/// </summary>
/// <remarks>
/// Nothing in the data directory changes until the signature, the snapshot's hash and every
/// audit file have been checked and read: the snapshot is copied to a temporary file beside
/// the target, destructions are applied and erased there, and the file is renamed into place
/// last — so no database that holds a destroyed key's material is ever installed. The HSM is
/// not needed: the restore's audit events are appended to the restored chain unsigned, and the
/// server signs a checkpoint over them at its next start.
/// </remarks>
internal static class BackupRestore
{
    /// <summary>The audit operation recorded for the restore itself.</summary>
    public const string RestoreOperation = "backup/Restore";

    /// <summary>The audit operation recorded for each re-applied destruction.</summary>
    public const string ReapplyOperation = DestructionReplay.ReapplyOperation;

    /// <summary>The audit operation recorded for each quorum request a restore voided (resource: the request).</summary>
    public const string VoidQuorumRequestOperation = "backup/VoidQuorumRequest";

    private const string Principal = ReapplySummary.Principal;

    /// <summary>Tests only: runs after the old database was moved aside, before the restored one moves in.</summary>
    internal static readonly AsyncLocal<Func<Task>?> Installing = new();

    /// <summary>Tests only: runs after the backup verified and the logs were read, before the snapshot is copied.</summary>
    internal static readonly AsyncLocal<Func<Task>?> Copying = new();

    public static async Task<RestoreReport> RunAsync(
        string backupDir, byte[] auditPublicKey, string dataDir, IReadOnlyList<string> auditLogs, bool replace, CancellationToken cancellationToken, bool allowGaps = false, TimeSpan? waitingPeriod = null,
        bool withoutAuditLogs = false)
    {
        // 1. Everything is checked and read before anything is written.
        var manifest = BackupManifest.Verify(backupDir, auditPublicKey);
        dataDir = Path.GetFullPath(dataDir);
        var target = Path.Combine(dataDir, "kms.db");
        var recorded = new List<RecordedDestruction>();
        var schedulings = new List<RecordedScheduling>();
        var tenantDeletions = new List<RecordedTenantDeletion>();
        var exists = File.Exists(target);
        if (exists && !replace)
        {
            throw KmsErrors.FailedPrecondition($"{target} exists; pass --replace to restore over it (it is kept beside as kms.db.replaced-TIME, and its destructions are re-applied)");
        }

        // Held until the restored file is in place: a server still serving the database could
        // destroy a version after its destructions were read, and its files move under it.
        DurableFile.CreateDirectory(dataDir);
        using var maintenance = SqliteStore.TryTakeMaintenanceLock(target)
            ?? throw KmsErrors.FailedPrecondition($"a server is serving {target}; stop it before restoring over it");

        string? observed = null;
        IReadOnlyList<(byte[] VersionId, long Count)> encryptCounts = [];
        SqliteAccessState? replacedAccess = null;
        SqliteKeyUseState? replacedUse = null;
        if (exists)
        {
            // A backup of another deployment (or from before a domain-key rotation) holds material
            // wrapped under another domain key than the one the database pins, which every server
            // start checks the HSM's against (DomainKeyGuard): installed, no server would start on
            // it, and the database it replaced would have to be put back by hand. Refused first.
            var pinned = await SqliteStore.ReadSettingAsync(target, DomainKeyGuard.CheckValueSetting, cancellationToken);
            if (pinned is not null && !string.Equals(pinned, manifest.DomainKcv, StringComparison.OrdinalIgnoreCase))
            {
                throw KmsErrors.FailedPrecondition(
                    $"the backup in {backupDir} was taken under the domain key with check value {manifest.DomainKcv}, but {target} is pinned to the domain key with check value {pinned} (the HSM's, as this deployment's servers verify it at start): "
                    + "a backup of another deployment, or from before a domain-key rotation, whose keys this HSM's domain key cannot unwrap; nothing was restored");
            }

            // What it had removed of access (tokens revoked, principals deleted, bindings removed,
            // grants revoked) and its key policies: compared with the snapshot once it is copied.
            replacedAccess = await SqliteStore.ReadAccessStateAsync(target, cancellationToken);

            // Its keys' states, primaries, aliases and tenants: what it lifted or changed after the
            // backup is not replayed, but listed for review once the copy holds what is restored.
            replacedUse = await SqliteStore.ReadKeyUseStateAsync(target, cancellationToken);

            foreach (var (version, time) in await SqliteStore.ReadDestroyedVersionsAsync(target, cancellationToken))
            {
                recorded.Add(new RecordedDestruction(version.Key, version.Version, time, "the replaced database"));
            }

            // What it had scheduled (with the destroy time it set) or disabled and not yet undone.
            foreach (var (key, version, state, destroyTime) in await SqliteStore.ReadRestrictedAsync(target, cancellationToken))
            {
                schedulings.Add(new RecordedScheduling(key, version, state == KeyState.Disabled, destroyTime ?? manifest.CreateTime, destroyTime, "the replaced database"));
            }

            foreach (var (tenant, deleteTime) in await SqliteStore.ReadDeletingTenantsAsync(target, cancellationToken))
            {
                tenantDeletions.Add(new RecordedTenantDeletion(tenant, deleteTime ?? manifest.CreateTime, ReplacedDatabase));
            }

            observed = await SqliteStore.ReadSettingAsync(target, LifecycleClock.Setting, cancellationToken);

            // The encryptions it counted after the backup: the snapshot's counts are older, and a
            // version would count them again up to its hard bound (claim 23).
            encryptCounts = await SqliteStore.ReadEncryptCountsAsync(target, cancellationToken);
        }

        var gaps = new List<string>();
        var logs = await ReadLogsAsync(auditLogs, auditPublicKey, gaps, cancellationToken);
        RequireCovered(logs, manifest.AuditHead.Sequence, allowGaps, gaps);

        // Without a database to replace, the audit logs are the only record of what happened
        // after the backup: a restore given none that reach past its head (the backup's own
        // backup/Export event is after it) would bring back every key destroyed since, silently.
        // Refused unless the operator says none survive.
        if (!exists && !logs.Any(l => l.Events.Any(e => e.Sequence > manifest.AuditHead.Sequence)))
        {
            if (!withoutAuditLogs)
            {
                throw KmsErrors.FailedPrecondition(
                    $"{target} does not exist and no audit log given reaches past the backup's audit head (sequence {manifest.AuditHead.Sequence.ToString(CultureInfo.InvariantCulture)}): "
                    + "every destruction, scheduling, disabling and tenant deletion made after the backup would come back; give --audit-log with the audit exports or SIEM stream from after the backup, "
                    + "or pass --without-audit-logs if none survive (then run `kms backup reapply-destructions` on the restored database, before a server starts on it, once they are found)");
            }

            gaps.Add($"--without-audit-logs: nothing records what happened after the backup's audit head (sequence {manifest.AuditHead.Sequence.ToString(CultureInfo.InvariantCulture)}); no destruction, scheduling, disabling or tenant deletion made since was re-applied");
        }

        // 2. A private copy, checked again (the file could have changed since it was verified).
        DurableFile.CreateDirectory(dataDir);
        var stamp = DateTimeOffset.UtcNow.ToString("yyyyMMdd'T'HHmmss'Z'", System.Globalization.CultureInfo.InvariantCulture);
        var staging = Unused(Path.Combine(dataDir, $"kms.db.restoring-{stamp}"));
        if (Copying.Value is { } copying)
        {
            await copying();
        }

        // Owner-only from its creation, whatever the backup's mode (a trip off-site may have
        // widened it): the database holds wrapped key material, and SQLite gives its WAL the
        // same mode.
        await using (var snapshot = File.OpenRead(Path.Combine(backupDir, BackupManifest.SnapshotFile)))
        await using (var copy = DurableFile.Create(staging, DurableFile.OwnerOnly, overwrite: false))
        {
            await snapshot.CopyToAsync(copy.Stream, cancellationToken);
            await copy.CommitAsync(cancellationToken);
        }

        ReapplyOutcome outcome;
        IReadOnlyList<(KeyVersionName Version, long Before, long After)> carriedCounts;
        IReadOnlyList<string> accessReview;
        try
        {
            if (BackupManifest.HashFile(staging) != (manifest.SnapshotSha256, manifest.SnapshotSize))
            {
                throw KmsErrors.PermissionDenied($"the snapshot in {backupDir} changed while it was copied; nothing was restored");
            }

            var snapshotPolicies = replacedAccess is null ? null : (await SqliteStore.ReadAccessStateAsync(staging, cancellationToken)).Policies;

            // 3. Re-apply the destructions in the copy; the store erases the material.
            var checkpoints = Path.Combine(dataDir, "audit", "checkpoints.jsonl");
            var checkpointsPassedThrough = true;
            var seenHead = Path.Combine(dataDir, "audit", SeenHead.FileName);
            var seenHeadPassedThrough = true;
            var store = await SqliteStore.OpenAsync(new SqliteOptions { DatabasePath = staging }, cancellationToken);
            await using (store)
            {
                var restored = new AuditEntry
                {
                    Time = DateTimeOffset.UtcNow,
                    RequestId = "restore-" + stamp,
                    Principal = Principal,
                    Operation = RestoreOperation,
                    Resource = manifest.Request,
                    Outcome = "OK",
                    Client = Environment.MachineName,
                };

                // What the logs hold that the snapshot's chain does not, compared hash for hash:
                // every event after its head, and, before it, the events of another chain that
                // used the same numbers (a stream that restarted after a rollback: the chain the
                // lost site went on with). By number alone, those were taken for the snapshot's.
                var lost = (await NotHeldAsync(store, logs, cancellationToken)).Lost;
                bool Reapplied(LoggedEvent e) => lost.Contains((e.Sequence, e.Hash));
                recorded.AddRange(Destructions(logs, Reapplied));
                var (inForce, liftings) = Schedulings(logs, Reapplied);
                schedulings.AddRange(inForce);
                tenantDeletions.AddRange(TenantDeletions(logs, Reapplied));
                var accessRemovals = AccessRemovals(logs, Reapplied);
                accessReview = AccessReviews(logs, Reapplied);
                if (replacedAccess is not null)
                {
                    // The replaced database's removals first: verified, and its times exact.
                    var (removals, review) = await ReplacedAccessAsync(store, replacedAccess, snapshotPolicies!, cancellationToken);
                    accessRemovals = [.. removals, .. accessRemovals];
                    accessReview = [.. review, .. accessReview];
                }

                outcome = await ReapplyAsync(store, new Recorded(recorded, schedulings, liftings, tenantDeletions, accessRemovals), waitingPeriod, restored, staging, cancellationToken);
                accessReview = [.. accessReview, .. outcome.Review];
                if (replacedUse is not null)
                {
                    accessReview = [.. accessReview, .. NotReplayed(replacedUse, await SqliteStore.ReadKeyUseStateAsync(staging, cancellationToken), outcome.Kept)];
                }

                carriedCounts = await store.RaiseEncryptCountsAsync(encryptCounts, cancellationToken);
                await RecordSummaryAsync(store, manifest.AuditHead.Sequence, logs, restored.RequestId, cancellationToken);

                // The time the replaced database had seen pass, if later than the backup's: the
                // lifecycle would otherwise take the backup's age for a clock jump and hold
                // destructions until an operator accepted the clock (docs/deployment.md).
                if (Later(observed, await store.GetSettingAsync(LifecycleClock.Setting, cancellationToken)) is { } carried)
                {
                    await store.SetSettingAsync(LifecycleClock.Setting, carried, cancellationToken);
                }

                // Whether the restored chain passes through the newest checkpoint the node's
                // record holds, as reapply-destructions asks (and the server at start).
                checkpointsPassedThrough = await PassesThroughNewestCheckpointAsync(store, checkpoints, cancellationToken);
                seenHeadPassedThrough = await PassesThroughSeenHeadAsync(store, seenHead, cancellationToken);
            }

            SqliteStore.ReleasePooledConnections();

            // 4. Install, so that DATA-DIR/kms.db is at every moment the old database or the
            // restored one, whole — a crash part way (a kill, a power loss) leaves one of them
            // for the server to start on and for a second restore to re-apply from. Each file is
            // made its whole database first (its write-ahead log folded in: a -wal beside the
            // other file would be replayed into it); the old one is copied aside, and the restored
            // one renamed over it in one rename. Before, the old files were moved aside first,
            // and a crash before the restored one moved in left no kms.db: a server started on
            // an empty database, and a second restore found nothing to re-apply destructions from.
            string? replaced = exists ? Unused(Path.Combine(dataDir, $"kms.db.replaced-{stamp}")) : null;
            await SqliteStore.FoldWriteAheadLogAsync(staging, cancellationToken);
            if (exists)
            {
                await SqliteStore.FoldWriteAheadLogAsync(target, cancellationToken);
            }

            // The node's record of the checkpoints it signed goes aside too when the restored chain
            // does not pass through its newest checkpoint: the server takes that as a checkpoint
            // the chain must pass through (a rollback on purpose, not a rewrite:
            // docs/audit-format.md). A record the restored chain passes through (a backup taken
            // after its newest checkpoint, into a data directory that signed nothing since) stays,
            // and keeps its pin.
            string? checkpointsAside = File.Exists(checkpoints) && !checkpointsPassedThrough ? $"{checkpoints}.replaced-{stamp}" : null;

            // So does its record of the head it last saw (the server refuses to start on a chain
            // that does not pass through it, as through its checkpoint), alike.
            string? seenHeadAside = File.Exists(seenHead) && !seenHeadPassedThrough ? $"{seenHead}.replaced-{stamp}" : null;
            var copied = false;
            var installed = false;
            try
            {
                if (checkpointsAside is not null)
                {
                    File.Move(checkpoints, checkpointsAside);
                }

                if (seenHeadAside is not null)
                {
                    File.Move(seenHead, seenHeadAside);
                }

                if (checkpointsAside is not null || seenHeadAside is not null)
                {
                    DirectorySync.Flush(Path.GetDirectoryName(checkpoints)!);
                }

                if (replaced is not null)
                {
                    await using (var old = new FileStream(target, FileMode.Open, FileAccess.Read, FileShare.Read, 64 * 1024, useAsync: true))
                    await using (var copy = DurableFile.Create(replaced, DurableFile.OwnerOnly, overwrite: false))
                    {
                        copied = true;
                        await old.CopyToAsync(copy.Stream, cancellationToken);
                        await copy.CommitAsync(cancellationToken);
                    }
                }

                if (Installing.Value is { } installing)
                {
                    await installing();
                }

                // One rename: over the old database, or (none before) never over a kms.db that
                // appeared meanwhile, say a server started too early.
                File.Move(staging, target, overwrite: exists);
                installed = true;

                // The rename is durable only once the directory is: until then a power loss can
                // bring back the replaced database after the restore said done. A directory that
                // cannot be synced fails the restore, and the old database is put back.
                DirectorySync.Flush(dataDir);
            }
            catch
            {
                if (installed)
                {
                    if (replaced is not null)
                    {
                        File.Move(replaced, target, overwrite: true);
                    }
                    else
                    {
                        File.Move(target, staging, overwrite: true);
                    }
                }
                else if (copied && replaced is not null)
                {
                    File.Delete(replaced);
                }

                if (checkpointsAside is not null && File.Exists(checkpointsAside))
                {
                    File.Move(checkpointsAside, checkpoints, overwrite: true);
                }

                if (seenHeadAside is not null && File.Exists(seenHeadAside))
                {
                    File.Move(seenHeadAside, seenHead, overwrite: true);
                }

                throw;
            }

            return new RestoreReport(manifest, outcome.Reapplied, [.. gaps, .. outcome.Skipped], replaced)
            {
                Rescheduled = outcome.Rescheduled,
                Kept = outcome.Kept,
                TenantsDeleting = outcome.TenantsDeleting,
                ReplacedCheckpoints = checkpointsAside,
                EncryptCountsCarried = [.. carriedCounts.Select(c => (c.Version.ToString(), c.Before, c.After))],
                AccessRemoved = outcome.AccessRemoved,
                AccessReview = accessReview,
                QuorumRequestsVoided = outcome.QuorumRequestsVoided,
            };
        }
        catch
        {
            SqliteStore.ReleasePooledConnections();
            foreach (var suffix in new[] { "", "-wal", "-shm" })
            {
                File.Delete(staging + suffix);
            }

            throw;
        }
    }

    // The path, or the first of PATH.2, PATH.3, … that does not exist: a restore run again within
    // the second a killed one started in finds that one's files under its names.
    private static string Unused(string path)
    {
        var candidate = path;
        for (var n = 2; File.Exists(candidate); n++)
        {
            candidate = $"{path}.{n.ToString(CultureInfo.InvariantCulture)}";
        }

        return candidate;
    }

    // The later of two recorded observed times (Unix milliseconds); null when the first is not later.
    private static string? Later(string? replaced, string? restored) =>
        long.TryParse(replaced, NumberStyles.Integer, CultureInfo.InvariantCulture, out var a)
        && (!long.TryParse(restored, NumberStyles.Integer, CultureInfo.InvariantCulture, out var b) || a > b)
            ? replaced
            : null;

    /// <summary>
    /// Re-applies destructions recorded in audit exports or SIEM streams after the audit head of
    /// a database restored by other means (a PostgreSQL dump): run it on the restored database
    /// before any node starts on it.
    /// </summary>
    /// <param name="afterSequence">
    /// Destructions after this audit sequence are re-applied; null: where the logs leave the
    /// restored database's chain — the last event they share with it. Not its head: a
    /// <c>ceremony restore-domain</c> or <c>backup restore</c> run on it since appended events
    /// whose sequence numbers the lost site had used too, and a head taken after them would
    /// skip the lost site's destructions at those numbers.
    /// </param>
    /// <param name="auditPublicKey">When given, each audit export is verified against it first (<see cref="ReadLogsAsync"/>).</param>
    /// <param name="allowGaps">Re-apply what the logs hold even where they leave out events after the start, listing the missing ranges among the skipped.</param>
    /// <exception cref="KmsException">FailedPrecondition while a server serves the database or a domain-key rotation runs on it (nothing is read or written).</exception>
    /// <param name="waitingPeriod">The waiting period a re-applied scheduling counts from its event (default <see cref="SchedulingReplay.DefaultWaitingPeriod"/>).</param>
    /// <param name="dataDir">
    /// SQLite: the data directory whose <c>kms.db</c> was restored. Its <c>audit/checkpoints.jsonl</c>
    /// (the node's record of the checkpoints it signed) is moved aside as <c>kms backup restore</c>
    /// does, once the destructions are re-applied, if the restored chain does not pass through its
    /// newest checkpoint: the server would otherwise refuse to sign the restored chain (event 1309).
    /// A file whose newest checkpoint the chain passes through is left in place.
    /// </param>
    public static async Task<ReapplyReport> ReapplyFromLogsAsync(
        SqlStore store, IReadOnlyList<string> auditLogs, long? afterSequence, byte[]? auditPublicKey, CancellationToken cancellationToken, bool allowGaps = false, TimeSpan? waitingPeriod = null,
        string? dataDir = null)
    {
        ArgumentNullException.ThrowIfNull(store);

        // Offline, as restore and rotate-domain (the serving lock, exclusively, until the store is
        // disposed): under a serving node it would write under its feet, and during a domain-key
        // rotation an erased blob the rotation had moved would leave it short of the count it must
        // reach to pin the new key.
        if (!await store.TryHoldMaintenanceLockAsync(cancellationToken))
        {
            throw KmsErrors.FailedPrecondition($"a server is serving this {store.Provider} database (or a domain-key rotation runs on it); stop it before re-applying destructions");
        }

        var gaps = new List<string>();
        var logs = await ReadLogsAsync(auditLogs, auditPublicKey, gaps, cancellationToken);
        Func<LoggedEvent, bool> reapplied;
        long after;
        if (afterSequence is { } given)
        {
            after = given;
            reapplied = e => e.Sequence > given;
        }
        else
        {
            var (lost, shared) = await NotHeldAsync(store, logs, cancellationToken);
            after = shared ?? throw KmsErrors.FailedPrecondition(
                "the audit logs do not meet this database's audit chain (no event of theirs is the database's, and the first does not follow one of its events): "
                + "give --after-sequence, the audit head of the dump that was restored");
            reapplied = e => lost.Contains((e.Sequence, e.Hash));
        }

        RequireCovered(logs, after, allowGaps, gaps);
        var destructions = Destructions(logs, reapplied);
        var (inForce, liftings) = Schedulings(logs, reapplied);
        var outcome = await ReapplyAsync(store, new Recorded(destructions, inForce, liftings, TenantDeletions(logs, reapplied), AccessRemovals(logs, reapplied)), waitingPeriod, null, store.Location, cancellationToken);
        await RecordSummaryAsync(store, after, logs, null, cancellationToken);
        return new ReapplyReport(outcome.Reapplied, [.. gaps, .. outcome.Skipped], after)
        {
            Rescheduled = outcome.Rescheduled,
            Kept = outcome.Kept,
            TenantsDeleting = outcome.TenantsDeleting,
            ReplacedCheckpoints = dataDir is null ? null : await MoveCheckpointsAsideUnlessPassedThroughAsync(store, dataDir, cancellationToken),
            AccessRemoved = outcome.AccessRemoved,
            AccessReview = [.. AccessReviews(logs, reapplied), .. outcome.Review],
            QuorumRequestsVoided = outcome.QuorumRequestsVoided,
        };
    }

    // The one event a finished re-application records, last, even when nothing needed
    // re-applying: the audit range its logs covered (ReapplySummary). A node whose own checkpoint
    // the chain does not pass through starts only if one recorded since reaches it; a run that
    // stops part way records none, and run again records it once finished.
    private static async Task RecordSummaryAsync(SqlStore store, long after, List<(string Log, IReadOnlyList<LoggedEvent> Events)> logs, string? requestId, CancellationToken cancellationToken)
    {
        var through = logs.SelectMany(l => l.Events).Select(e => e.Sequence).Where(s => s > after).DefaultIfEmpty(after).Max();
        var now = DateTimeOffset.UtcNow;
        await store.AppendAuditAsync(
            [new AuditEntry
            {
                Time = now,
                RequestId = requestId ?? "reapply-" + now.ToString("yyyyMMdd'T'HHmmss'Z'", CultureInfo.InvariantCulture),
                Principal = Principal,
                Operation = ReapplySummary.Operation,
                Resource = new ReapplySummary(after, through).Resource,
                Outcome = "OK",
                Client = Environment.MachineName,
            }],
            cancellationToken);
    }

    // The node's record of the checkpoints it signed, moved aside when the database's chain does
    // not pass through its newest checkpoint (as the server checks it: the event there hashed from
    // its body, or the next one's link after a retention cut). A file without a checkpoint line,
    // or whose newest one the chain passes through, stays.
    private static async Task<string?> MoveCheckpointsAsideUnlessPassedThroughAsync(SqlStore store, string dataDir, CancellationToken cancellationToken)
    {
        var path = Path.Combine(dataDir, "audit", "checkpoints.jsonl");
        if (await PassesThroughNewestCheckpointAsync(store, path, cancellationToken))
        {
            return null;
        }

        var aside = $"{path}.replaced-{DateTimeOffset.UtcNow.ToString("yyyyMMdd'T'HHmmss'Z'", CultureInfo.InvariantCulture)}";
        File.Move(path, aside);
        DirectorySync.Flush(Path.GetDirectoryName(path)!);
        return aside;
    }

    // Whether the database's chain passes through the newest checkpoint line of the node's record
    // at path (the server's own test, AuditLog.ChainHoldsAsync): true for no file or no checkpoint
    // line. A checkpoint whose events the database's retention has since deleted counts as not
    // passed through: the file is moved aside (never a false refusal; the pin restarts from the
    // database's signed checkpoints).
    private static async Task<bool> PassesThroughNewestCheckpointAsync(SqlStore store, string path, CancellationToken cancellationToken) =>
        NewestCheckpoint(path) is not { } newest
        || await AuditLog.ChainHoldsAsync(store, new AuditHead(newest.Sequence, newest.HeadHash), cancellationToken);

    // Whether the database's chain passes through the head the node's record at path says it last
    // saw (the event there hashed from its body, or the next one's link after a retention cut):
    // true for no file. One that holds no record of this shape counts as not passed through (the
    // restore moves it aside; the server would refuse to start on it). So does a head in a prefix
    // the restored database's retention deleted, which the server passes through (by retention's
    // signed record of the cut) - as for checkpoints.jsonl, stricter than the server and harmless: such a
    // record refuses nothing on that chain, and the server overwrites it at its first pass, so
    // moving it aside loses nothing (RestoreHeadRecordTests). Whatever it keeps, the server passes.
    internal static async Task<bool> PassesThroughSeenHeadAsync(SqlStore store, string path, CancellationToken cancellationToken)
    {
        if (!File.Exists(path))
        {
            return true;
        }

        return SeenHead.Parse(await File.ReadAllBytesAsync(path, cancellationToken)) is { } seen
            && await AuditLog.ChainHoldsAsync(store, seen.Head, cancellationToken);
    }

    // The newest checkpoint line in the file's last 64 KiB (a line is about 350 bytes), or null.
    private static AuditCheckpoint? NewestCheckpoint(string path)
    {
        if (!File.Exists(path))
        {
            return null;
        }

        using var file = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.ReadWrite);
        var size = (int)Math.Min(file.Length, 64 * 1024);
        var tail = new byte[size];
        file.Seek(-size, SeekOrigin.End);
        file.ReadExactly(tail);
        return System.Text.Encoding.UTF8.GetString(tail).Split('\n').Reverse().Select(AuditExport.ParseCheckpoint).FirstOrDefault(c => c is not null);
    }

    /// <summary>
    /// The events of each audit file. With the pinned <paramref name="auditPublicKey"/>, an
    /// <c>ExportAudit</c> file is verified first (hashes, chain, every checkpoint's signature) and
    /// refused when anything in it was altered. A SIEM stream carries no checkpoints and cannot be
    /// verified; neither can the unsigned tail of an export. Both are still read — a forged
    /// destruction can only destroy more, while a real one left out would bring a destroyed key
    /// back. Where the files leave events out is judged over all of them, after the start
    /// (<see cref="RequireCovered"/>): a stream may restart (after a restore it goes back to the
    /// restored head) or skip a second (on stdout), and another file may hold what it lacks.
    /// A last line a crash left torn (<see cref="DestructionReplay.SplitLines"/>) is not read, and
    /// <paramref name="notes"/> says so: the file ends one event earlier, as if copied a moment
    /// sooner; the event on it is re-applied only if another file holds it.
    /// An event a verified checkpoint covers has its transition marked
    /// <see cref="RecordedTransition.Verified"/>: only such an event lifts a restriction.
    /// </summary>
    private static async Task<List<(string Log, IReadOnlyList<LoggedEvent> Events)>> ReadLogsAsync(IReadOnlyList<string> auditLogs, byte[]? auditPublicKey, List<string> notes, CancellationToken cancellationToken)
    {
        var logs = new List<(string, IReadOnlyList<LoggedEvent>)>();
        foreach (var log in auditLogs)
        {
            var (lines, torn) = DestructionReplay.SplitLines(await File.ReadAllTextAsync(log, cancellationToken));
            if (torn is not null)
            {
                notes.Add($"{log}: its last line is incomplete ({torn.Length} characters without a line end: a crash while it was written, or a copy taken meanwhile) and was not read; a destruction recorded on it is re-applied only if another audit log given holds it");
            }

            long signedThrough = 0;
            if (auditPublicKey is not null && lines.FirstOrDefault(l => l.Length > 0) is { } first && first.Contains("\"kms_audit_export\"", StringComparison.Ordinal))
            {
                var verification = AuditVerifier.Verify(new StringReader(string.Join('\n', lines)), auditPublicKey, partial: true);
                if (!verification.Valid)
                {
                    throw KmsErrors.PermissionDenied($"{log} does not verify against the audit key (first bad sequence {verification.FirstBadSequence?.ToString(CultureInfo.InvariantCulture) ?? "none"}): {verification.Problem}");
                }

                // Its events are taken as signed by sequence number: a stream's restart lines would
                // pass off the replaced chains' events, which share numbers with the signed chain's.
                if (verification.StreamRestarts is { } restarts)
                {
                    throw KmsErrors.PermissionDenied($"{log} holds {restarts.Count} SIEM stream restart line(s): events of chains the database no longer holds are among its lines; give an export (kms audit export), or the part after the last restart line");
                }

                signedThrough = verification.LastSignedSequence;
            }

            IReadOnlyList<LoggedEvent> events;
            try
            {
                events = [.. DestructionReplay.EventsOf(lines, Path.GetFileName(log))
                    .Select(e => e.Sequence > signedThrough ? e : e with
                    {
                        Transition = e.Transition is { } t ? t with { Verified = true } : null,
                        TenantDeletion = e.TenantDeletion is { } d ? d with { Verified = true } : null,
                        AccessRemoval = e.AccessRemoval is { } a ? a with { Verified = true } : null,
                    })];
            }
            catch (Exception e) when (e is FormatException or KmsException or KeyNotFoundException or InvalidOperationException)
            {
                throw KmsErrors.InvalidArgument("audit-log", $"{log} is not an audit export or SIEM stream: {e.Message}");
            }

            logs.Add((log, events));
        }

        return logs;
    }

    /// <summary>
    /// Refused unless the logs together cover without a gap from <paramref name="after"/> + 1 to
    /// their last event — a missing line could be a destruction — unless <paramref name="allowGaps"/>,
    /// which lists each missing range in <paramref name="gaps"/> instead.
    /// </summary>
    private static void RequireCovered(List<(string Log, IReadOnlyList<LoggedEvent> Events)> logs, long after, bool allowGaps, List<string> gaps)
    {
        var expected = after + 1;
        foreach (var sequence in logs.SelectMany(l => l.Events).Select(e => e.Sequence).Where(s => s > after).Distinct().Order())
        {
            if (sequence != expected)
            {
                var missing = $"audit events {expected}–{sequence - 1} (after audit sequence {after}) are in none of the audit logs given";
                if (!allowGaps)
                {
                    throw KmsErrors.InvalidArgument("audit-log", $"{missing}: a destruction, scheduling, disabling or tenant deletion among them would not be re-applied; give the logs that hold them, or pass --allow-gaps to re-apply what they hold");
                }

                gaps.Add($"{missing}: any destruction, scheduling, disabling or tenant deletion among them was not re-applied");
            }

            expected = sequence + 1;
        }
    }

    // The destructions among the events re-applied.
    private static List<RecordedDestruction> Destructions(List<(string Log, IReadOnlyList<LoggedEvent> Events)> logs, Func<LoggedEvent, bool> reapplied) =>
        [.. logs.SelectMany(l => l.Events).Where(e => reapplied(e) && e.Destruction is not null).Select(e => e.Destruction!)];

    /// <summary>
    /// The schedulings and disablings among the events re-applied that are still
    /// in force at their end (<see cref="SchedulingReplay.InForce"/>), the events taken in sequence
    /// order (an event two files hold, once: verified if either file verifies it), and the
    /// liftings that are the logs' last word on their target (<see cref="SchedulingReplay.LastLiftings"/>).
    /// </summary>
    private static (IReadOnlyList<RecordedScheduling> InForce, IReadOnlyList<RecordedTransition> Liftings) Schedulings(List<(string Log, IReadOnlyList<LoggedEvent> Events)> logs, Func<LoggedEvent, bool> reapplied)
    {
        var transitions = logs.SelectMany(l => l.Events)
            .Where(e => reapplied(e) && e.Transition is not null)
            .OrderByDescending(e => e.Transition!.Verified)
            .DistinctBy(e => (e.Sequence, e.Hash))
            .OrderBy(e => e.Sequence)
            .Select(e => e.Transition!)
            .ToList();
        return (SchedulingReplay.InForce(transitions), SchedulingReplay.LastLiftings(transitions));
    }

    // The tenants' deletions the logs record among the events re-applied.
    // Where a restriction read from the database a restore replaces was found (the report's words).
    private const string ReplacedDatabase = "the replaced database";

    // In sequence order (an event two files hold, once: verified if either file verifies it),
    // whatever the order the files were given in: the last word decides whether the tenant is
    // DELETING or was given back.
    private static IReadOnlyList<RecordedTenantDeletion> TenantDeletions(List<(string Log, IReadOnlyList<LoggedEvent> Events)> logs, Func<LoggedEvent, bool> reapplied) =>
        [.. logs.SelectMany(l => l.Events)
            .Where(e => reapplied(e) && e.TenantDeletion is not null)
            .OrderByDescending(e => e.TenantDeletion!.Verified)
            .DistinctBy(e => (e.Sequence, e.Hash))
            .OrderBy(e => e.Sequence)
            .Select(e => e.TenantDeletion!)];

    // The removals of access the logs record among the events re-applied, in sequence order, each once (an
    // event two files hold: verified if either file verifies it; the same removal twice, once).
    private static IReadOnlyList<RecordedAccessRemoval> AccessRemovals(List<(string Log, IReadOnlyList<LoggedEvent> Events)> logs, Func<LoggedEvent, bool> reapplied) =>
        [.. logs.SelectMany(l => l.Events)
            .Where(e => reapplied(e) && e.AccessRemoval is not null)
            .OrderByDescending(e => e.AccessRemoval!.Verified)
            .DistinctBy(e => (e.Sequence, e.Hash))
            .OrderBy(e => e.Sequence)
            .Select(e => e.AccessRemoval!)];

    // The changes of access the logs record among the events re-applied that cannot be replayed, each once.
    private static IReadOnlyList<string> AccessReviews(List<(string Log, IReadOnlyList<LoggedEvent> Events)> logs, Func<LoggedEvent, bool> reapplied) =>
        [.. logs.SelectMany(l => l.Events)
            .Where(e => reapplied(e) && e.AccessReview is not null)
            .DistinctBy(e => (e.Sequence, e.Hash))
            .OrderBy(e => e.Sequence)
            .Select(e => e.AccessReview!)];

    // What ReapplyAsync re-applies: destructions, the schedulings and disablings in force, the
    // liftings to report when not followed, the tenants' deletions, the removals of access.
    private sealed record Recorded(
        IReadOnlyList<RecordedDestruction> Destructions,
        IReadOnlyList<RecordedScheduling> Schedulings,
        IReadOnlyList<RecordedTransition> Liftings,
        IReadOnlyList<RecordedTenantDeletion> TenantDeletions,
        IReadOnlyList<RecordedAccessRemoval> AccessRemovals);

    /// <summary>
    /// The logs' events the database's chain does not hold (same sequence, same hash), and where
    /// the logs leave the chain: the event before the first of them there, the earliest such
    /// (the last event they share with it when it holds them all); null when they do not meet the
    /// chain at all. Events before the oldest one it retains count as held: they cannot be checked.
    /// </summary>
    /// <remarks>
    /// Taken run by run — the events of one log in the order written, a new run wherever the
    /// sequence goes back (a SIEM stream's restart after a rollback: the chain the site went on
    /// with, which reuses numbers of the chain it left). Within a run, one chain: chains that agree
    /// at an event agree at every event before it, so a binary search finds the last the database
    /// holds with a few reads. Before, the logs' events were taken one per sequence number, the
    /// first file's line at a number standing for all: after a rollback, the events of the chain
    /// the site went on with at numbers the database held for the other were taken as held, and
    /// their destructions never re-applied.
    /// </remarks>
    private static async Task<(HashSet<(long Sequence, string Hash)> Lost, long? After)> NotHeldAsync(SqlStore store, List<(string Log, IReadOnlyList<LoggedEvent> Events)> logs, CancellationToken cancellationToken)
    {
        var oldest = await store.ListAuditEventsAsync(new AuditQuery { Limit = 1 }, cancellationToken) is [var first] ? first.Sequence : long.MaxValue;
        var lost = new HashSet<(long, string)>();
        long? forkedAt = null;
        long? sharedThrough = null;
        foreach (var run in logs.SelectMany(l => Runs(l.Events)))
        {
            var events = run.Where(e => e.Sequence >= oldest || oldest == long.MaxValue).ToList();
            if (events.Count == 0)
            {
                continue;
            }

            var shared = -1;
            for (int low = 0, high = events.Count - 1; low <= high;)
            {
                var middle = low + ((high - low) / 2);
                if (await HashAtAsync(store, events[middle].Sequence, cancellationToken) == events[middle].Hash)
                {
                    shared = middle;
                    low = middle + 1;
                }
                else
                {
                    high = middle - 1;
                }
            }

            long? fork = shared >= 0 ? events[shared].Sequence
                : await HashAtAsync(store, events[0].Sequence - 1, cancellationToken) == events[0].PreviousHash ? events[0].Sequence - 1
                : null;
            if (fork is { } met)
            {
                sharedThrough = Math.Max(sharedThrough ?? met, met);
            }

            if (shared == events.Count - 1)
            {
                continue;
            }

            foreach (var e in events.Skip(shared + 1))
            {
                lost.Add((e.Sequence, e.Hash));
            }

            // A run that meets the chain nowhere went on from an event the logs hold on another run.
            var from = fork ?? (events[0].Sequence - 1);
            forkedAt = Math.Min(forkedAt ?? from, from);
        }

        return (lost, sharedThrough is null ? null : forkedAt ?? sharedThrough);
    }

    // The events of one log cut where the sequence goes back (a stream's restart line between them).
    private static IEnumerable<List<LoggedEvent>> Runs(IReadOnlyList<LoggedEvent> events)
    {
        var run = new List<LoggedEvent>();
        foreach (var e in events)
        {
            if (run.Count > 0 && e.Sequence <= run[^1].Sequence)
            {
                yield return run;
                run = [];
            }

            run.Add(e);
        }

        if (run.Count > 0)
        {
            yield return run;
        }
    }

    // The hash of the database's event at a sequence (1 or more; 0: the chain's start), or null.
    private static async Task<string?> HashAtAsync(SqlStore store, long sequence, CancellationToken cancellationToken) =>
        sequence == 0 ? AuditChain.Genesis
        : (await store.ListAuditEventsAsync(new AuditQuery { AfterSequence = sequence - 1, Limit = 1 }, cancellationToken)) is [var found] && found.Sequence == sequence ? found.Hash
        : null;

    // Applies each recorded destruction to the store (which erases the material), then each
    // tenant's deletion, then each scheduling or disabling still in force, then audits what was
    // re-applied (after <paramref name="first"/>, if any) and finishes the erasure. Each key is
    // its own write: a crash part way leaves some re-applied, and running it again re-applies
    // the rest (what is re-applied already is a no-op) — but audits only the rest.
    private static async Task<ReapplyOutcome> ReapplyAsync(
        SqlStore store, Recorded what, TimeSpan? waitingPeriod, AuditEntry? first, string where, CancellationToken cancellationToken)
    {
        // Each change commits with its own audit events, in one transaction (the store's
        // UpdateKeyAsync with events; a tenant's through an audit scope): a run that stops part way
        // (a crash, a full disk) has recorded every change it made, and run again re-applies only
        // what it had not. The restore's own event (first) goes before them all.
        var now = DateTimeOffset.UtcNow;
        var requestId = first?.RequestId ?? "reapply-" + now.ToString("yyyyMMdd'T'HHmmss'Z'", System.Globalization.CultureInfo.InvariantCulture);
        AuditEntry Event(string operation, string resource) => new()
        {
            Time = now,
            RequestId = requestId,
            Principal = Principal,
            Operation = operation,
            Resource = resource,
            Outcome = "OK",
            Client = Environment.MachineName,
        };

        if (first is not null)
        {
            await store.AppendAuditAsync([first], cancellationToken);
        }

        var reapplied = new List<(string, string)>();
        var skipped = new List<string>();
        foreach (var group in what.Destructions.GroupBy(d => d.Key))
        {
            List<(string Version, string Source)> mine = [];
            List<string> notHeld = [];
            var updated = await store.UpdateKeyAsync(
                group.Key,
                current =>
                {
                    mine.Clear();
                    notHeld.Clear();
                    var change = DestructionReplay.Apply(current, group);
                    notHeld.AddRange(group
                        .Where(d => d.Version is { } number && current.Version(number) is null)
                        .Select(d => $"{group.Key}/versions/{d.Version} (not in the restored database: created after it)"));
                    foreach (var version in change.UpdatedVersions)
                    {
                        var source = group.First(d => d.Version == version.Name.Version || d.Version is null).Source;
                        mine.Add((version.Name.ToString(), source));
                    }

                    return change;
                },
                () => [.. mine.Select(r => Event(ReapplyOperation, r.Version))],
                cancellationToken);
            reapplied.AddRange(mine);
            skipped.AddRange(notHeld);
            if (updated is null)
            {
                skipped.Add($"{group.Key} (not in the restored database: created after it)");
            }
        }

        // A tenant deleted after the backup is DELETING again (nothing lifts that), and its keys
        // are scheduled for deletion as DeleteTenant scheduled them: its audit event stands for
        // theirs, so the logs hold no scheduling of each. Such a scheduling never puts off one the
        // snapshot holds (Verified: false).
        var waiting = waitingPeriod ?? SchedulingReplay.DefaultWaitingPeriod;
        var tenantsDeleting = new List<(string, string)>();
        var review = new List<string>();
        var schedulings = what.Schedulings.ToList();
        // Keys whose deletion was cancelled after the backup by a verified CancelKeyDeletion — or
        // then enabled (the server enables no DESTROY_SCHEDULED key, so a verified EnableKey says
        // the key was kept) — the logs' last word on them: a tenant's deletion replayed does not
        // schedule them again when that lifting followed the tenant's last deletion (a DeleteTenant
        // after it scheduled them again: their lifting is then no longer the last word, nor
        // reported as kept).
        var keptByTheirManagers = what.Liftings
            .Where(l => l.Verified && l.Version is null && l.Kind is TransitionKind.CancelDestruction or TransitionKind.Enable)
            .ToDictionary(l => l.Key, l => l.Time);
        var superseded = new HashSet<Kms.Core.Names.KeyName>();
        foreach (var group in what.TenantDeletions.GroupBy(d => d.Tenant))
        {
            // In the logs' order (TenantDeletions: by sequence, whatever the order of the files),
            // the replaced database (the latest state) last.
            var ordered = group.OrderBy(d => d.Source == ReplacedDatabase).ToList();
            var deletions = ordered.Where(d => !d.Cancelled).ToList();
            if (deletions.Count == 0)
            {
                // Only cancellations after the backup: one of a tenant the backup holds DELETING is
                // a lifting, not replayed (as an EnableKey is not) — listed for the operator.
                if (await store.GetTenantAsync(group.Key, cancellationToken) is { State: Kms.Core.Access.TenantState.Deleting })
                {
                    review.Add(TenantKeptDeleting(group.Key, ordered[^1]));
                }

                continue;
            }

            if (await store.GetTenantAsync(group.Key, cancellationToken) is not { } tenant)
            {
                skipped.Add($"{group.Key.ResourceName} (not in the restored database: created after it)");
                continue;
            }

            // CancelTenantDeletion after the last deletion, in the logs' order, gave the tenant
            // back: it stays ACTIVE — unless the replaced database (the latest state) holds it
            // DELETING, or the cancellation is not covered by a signed checkpoint (it lifts nothing
            // then, and is reported). Made DELETING only by a verified deletion after the last
            // verified cancellation. Its keys are scheduled all the same, as the server leaves them
            // after a cancellation; one a key manager cancelled after the last deletion (a verified
            // CancelKeyDeletion) is not scheduled again.
            var lifted = ordered.FindLastIndex(d => d.Cancelled && d.Verified);
            var since = ordered.Skip(lifted + 1).Where(d => !d.Cancelled).ToList();
            var cancelled = since.Count == 0;
            if (ordered[^1] is { Cancelled: true, Verified: false } unverified && !cancelled)
            {
                skipped.Add($"{group.Key.ResourceName}: {unverified.Source} cancelled its deletion after the backup, but that event is not covered by a checkpoint signed with the audit key: not trusted to lift a restriction — run CancelTenantDeletion again if the tenant should stay");
            }

            if (cancelled && tenant.State == Kms.Core.Access.TenantState.Deleting)
            {
                review.Add(TenantKeptDeleting(group.Key, ordered[lifted]));
            }
            else if (cancelled)
            {
                skipped.Add($"{group.Key.ResourceName} not made DELETING: {ordered[lifted].Source} cancelled its deletion after the backup; its keys are scheduled for deletion as the cancellation left them (a key manager cancels each to keep it)");
            }
            else if (tenant.State != Kms.Core.Access.TenantState.Deleting && !since.Any(d => d.Verified))
            {
                skipped.Add($"{group.Key.ResourceName} not made DELETING: its deletion ({since[^1].Source}) is not covered by a checkpoint signed with the audit key; its keys are scheduled for deletion (reversible) — run DeleteTenant again if it should go");
            }
            else if (tenant.State != Kms.Core.Access.TenantState.Deleting)
            {
                var asked = since.Where(d => d.Verified).MinBy(d => d.Time)!;
                using (AuditScope.Enter(new AuditScope(Event(SchedulingReplay.ReapplyTenantDeletionOperation, group.Key.ResourceName), mutating: true)))
                {
                    await store.UpdateTenantAsync(
                        tenant with { State = Kms.Core.Access.TenantState.Deleting, DeleteTime = asked.Time < now ? asked.Time : now, DeleteWaitingPeriod = waiting }, cancellationToken);
                }

                tenantsDeleting.Add((group.Key.ResourceName, since.Last(d => d.Verified).Source));
            }

            // The keys count from the latest deletion (a verified one's, if any: an unverified event
            // puts no destruction off), never earlier than intended; a key manager's cancellation
            // keeps its key only if later than every deletion (an unverified one only adds).
            var counted = deletions.Any(d => d.Verified) ? deletions.Where(d => d.Verified).ToList() : deletions;
            var latest = counted.MaxBy(d => d.Time)!;
            var lastDeletion = deletions.Max(d => d.Time);
            for (string? after = null; ;)
            {
                var page = await store.ListKeysAsync(group.Key, after, 500, cancellationToken);
                foreach (var key in page)
                {
                    if (keptByTheirManagers.TryGetValue(key.Name, out var cancelledAt))
                    {
                        if (cancelledAt >= lastDeletion)
                        {
                            continue;
                        }

                        superseded.Add(key.Name);
                    }

                    schedulings.Add(new RecordedScheduling(key.Name, null, Disable: false, latest.Time, null, latest.Source, Verified: false));
                }

                if (page.Count < 500)
                {
                    break;
                }

                after = page[^1].Name.KeyId;
            }
        }

        // Schedulings after destructions: a version destroyed is not scheduled again. Of a key or
        // version the database does not hold (created after it), or destroyed: nothing to do.
        // A lifting not followed (a restriction the backup holds, or one lifted by an unverified
        // event) is reported.
        var rescheduled = new List<ReappliedScheduling>();
        var kept = new List<KeptRestriction>();
        var liftings = what.Liftings.Where(l => !(l.Version is null && superseded.Contains(l.Key))).ToLookup(l => l.Key);
        var byKey = schedulings.ToLookup(s => s.Key);
        foreach (var name in schedulings.Select(s => s.Key).Concat(what.Liftings.Select(l => l.Key)).Distinct())
        {
            IReadOnlyList<ReappliedScheduling> made = [];
            IReadOnlyList<KeptRestriction> held = [];
            var found = await store.UpdateKeyAsync(
                name,
                current =>
                {
                    (var change, made) = SchedulingReplay.Apply(current, byKey[name], now, waiting);
                    var after = change.IsNoOp ? current : current with
                    {
                        Key = change.Key,
                        Versions = [.. current.Versions.Select(v => change.UpdatedVersions.FirstOrDefault(u => u.Name.Version == v.Name.Version) ?? v)],
                    };
                    held = SchedulingReplay.Kept(after, liftings[name]);
                    return change;
                },
                () => [.. made.Select(r => Event(SchedulingReplay.OperationOf(r), r.Resource))],
                cancellationToken);
            if (found is null && byKey[name].Any())
            {
                skipped.Add($"{name} (its scheduling, disabling or tenant's deletion not re-applied: not in the restored database, created after it)");
            }

            rescheduled.AddRange(made);
            kept.AddRange(held);
        }

        var accessRemoved = await RemoveAccessAgainAsync(store, what.AccessRemovals, now, Event, skipped, cancellationToken);
        var voided = await VoidPendingQuorumRequestsAsync(store, Event, cancellationToken);

        if (!await store.CompleteErasureAsync(cancellationToken))
        {
            throw KmsErrors.Unavailable($"the re-applied destructions could not be erased from {where}'s write-ahead log; nothing was installed");
        }

        return new ReapplyOutcome(reapplied, skipped, rescheduled, kept, tenantsDeleting) { AccessRemoved = accessRemoved, Review = review, QuorumRequestsVoided = voided };
    }

    // Every request the restored database holds PENDING is made VOID, each in its own write with its
    // backup/VoidQuorumRequest event. Approvals collected after the backup may have executed it
    // where the backup was restored over (or at the site lost), and sent again to the restored
    // database they would execute it a second time: a second recovery credential, a second export.
    // Whether it executed cannot be told for sure (the replaced database or the logs may be gone,
    // and the logs may stop short), and an approval's signed time only bounds a replay to minutes,
    // so none stays pending: officers make the request again. Run again, it finds none to void.
    private static async Task<IReadOnlyList<VoidedQuorumRequest>> VoidPendingQuorumRequestsAsync(SqlStore store, Func<string, string, AuditEntry> audit, CancellationToken cancellationToken)
    {
        const int PageSize = 500;
        var voided = new List<VoidedQuorumRequest>();
        for (string? after = null; ;)
        {
            var page = await store.ListQuorumRequestsAsync(null, after, PageSize, cancellationToken);
            foreach (var request in page.Where(r => r.State == QuorumRequestState.Pending))
            {
                var made = false;
                await store.UpdateQuorumRequestAsync(request.Id, (current, _) =>
                {
                    made = current.State == QuorumRequestState.Pending;
                    return made
                        ? new QuorumChange(current with { State = QuorumRequestState.Void }) { ExecutionEvent = audit(VoidQuorumRequestOperation, current.Name) }
                        : new QuorumChange(current) { IsNoOp = true };
                }, cancellationToken);
                if (made)
                {
                    voided.Add(new VoidedQuorumRequest(request.Name, QuorumOperations.NameOf(request.Operation), request.Approvals.Count));
                }
            }

            if (page.Count < PageSize)
            {
                return voided;
            }

            after = page[^1].Id.Value;
        }
    }

    // A tenant the restored database holds DELETING (the backup's own deletion) whose deletion was
    // cancelled after the backup: a restore replays no lifting, so it stays DELETING.
    private static string TenantKeptDeleting(Kms.Core.Names.TenantId tenant, RecordedTenantDeletion cancellation) =>
        $"{tenant.ResourceName}: its deletion was cancelled after the backup ({cancellation.Source}"
        + (cancellation.Verified ? "" : ", an event no checkpoint signed with the audit key covers")
        + "), but the backup holds it DELETING and a restore replays no lifting: it stays DELETING — run CancelTenantDeletion again if it should stay (then CancelKeyDeletion for each key to keep)";

    // What the replaced database holds that the restore leaves otherwise, and does not replay: a
    // key or version less restricted there (enabled, restored or cancelled after the backup: a
    // lifting), a primary, an alias, a tenant's state that differs. Not replayed because each could
    // widen or steer use; a key or version the logs already report as kept is not listed again.
    private static IEnumerable<string> NotReplayed(SqliteKeyUseState replaced, SqliteKeyUseState restored, IReadOnlyList<KeptRestriction> kept)
    {
        static int Rank(KeyState state) => state switch
        {
            KeyState.Enabled => 0,
            KeyState.Disabled => 1,
            KeyState.DestroyScheduled => 2,
            _ => 3,
        };

        var reported = kept.Select(k => k.Resource).ToHashSet(StringComparer.Ordinal);
        foreach (var (name, state) in restored.States.OrderBy(s => s.Key, StringComparer.Ordinal))
        {
            if (state is KeyState.Disabled or KeyState.DestroyScheduled && replaced.States.TryGetValue(name, out var there) && Rank(there) < Rank(state) && !reported.Contains(name))
            {
                yield return $"{name}: {KeyTransitions.StateName(there)} in the replaced database, {KeyTransitions.StateName(state)} here — lifted after the backup, and a restore replays no lifting: lift it again if it should be in use";
            }
        }

        foreach (var (key, primary) in restored.Primaries.OrderBy(p => p.Key, StringComparer.Ordinal))
        {
            if (replaced.Primaries.TryGetValue(key, out var there) && there != primary)
            {
                var held = restored.States.ContainsKey($"{key}/versions/{there.ToString(CultureInfo.InvariantCulture)}") ? "" : ", made after the backup and not in it";
                yield return $"{key}: its primary is version {primary.ToString(CultureInfo.InvariantCulture)} here, {there.ToString(CultureInfo.InvariantCulture)} in the replaced database{held} — set it again (UpdatePrimaryVersion, or RotateKey) if the replaced one is meant";
            }
        }

        foreach (var alias in replaced.Aliases.Keys.Union(restored.Aliases.Keys).Order(StringComparer.Ordinal))
        {
            var there = replaced.Aliases.GetValueOrDefault(alias);
            var here = restored.Aliases.GetValueOrDefault(alias);
            if (there != here)
            {
                yield return $"{alias}: leads to {here ?? "nothing (not in the backup)"} here, to {there ?? "nothing (deleted after the backup)"} in the replaced database — update, create or delete it again if the replaced one is meant";
            }
        }

        foreach (var (tenant, state) in restored.Tenants.OrderBy(t => t.Key, StringComparer.Ordinal))
        {
            if (state == Kms.Core.Access.TenantState.Deleting && replaced.Tenants.GetValueOrDefault(tenant) == Kms.Core.Access.TenantState.Active)
            {
                yield return $"{tenant}: ACTIVE in the replaced database, DELETING here — its deletion was cancelled after the backup, and a restore replays no lifting: run CancelTenantDeletion again if it should stay (then CancelKeyDeletion for each key to keep)";
            }
        }
    }

    // Makes each removal of access again, in the logs' order, each write with its audit event (a
    // no-op writes none: what the restored database holds removed already is left as it is).
    // A principal is deleted (a tombstone: never registered again) only from a verified event, and
    // not when it is the restored database's last deployment admin; otherwise what can be given
    // back is removed — its tokens revoked, its role bindings removed — and the skipped list says so.
    private static async Task<IReadOnlyList<(string Resource, string Source)>> RemoveAccessAgainAsync(
        SqlStore store, IReadOnlyList<RecordedAccessRemoval> removals, DateTimeOffset now, Func<string, string, AuditEntry> audit, List<string> skipped, CancellationToken cancellationToken)
    {
        var removed = new List<(string, string)>();
        foreach (var removal in removals.DistinctBy(r => (r.Kind, r.Resource)))
        {
            var time = removal.Time < now ? removal.Time : now;
            AuditScope Scope(AccessRemovalKind kind, string resource) => new(audit(AccessReplay.ReapplyOperationOf(kind), resource), mutating: true);
            try
            {
                switch (removal.Kind)
                {
                    case AccessRemovalKind.TokenRevocation:
                        {
                            var id = AccessReplay.TokenIdOf(removal.Resource);
                            if (await store.GetApiTokenAsync(id, cancellationToken) is not { } token)
                            {
                                skipped.Add($"{removal.Resource} (its revocation not re-applied: not in the restored database, created after it)");
                            }
                            else if (token.RevokeTime is null)
                            {
                                using (AuditScope.Enter(Scope(removal.Kind, removal.Resource)))
                                {
                                    await store.RevokeApiTokenAsync(id, time, cancellationToken);
                                }

                                removed.Add((removal.Resource, removal.Source));
                            }

                            break;
                        }

                    case AccessRemovalKind.RoleBindingRemoval:
                        {
                            var (principal, role, tenant) = AccessReplay.BindingOf(removal.Resource);
                            if ((await store.GetRoleBindingsAsync(principal, cancellationToken)).Any(b => b.Role == role && b.Tenant == tenant))
                            {
                                using (AuditScope.Enter(Scope(removal.Kind, removal.Resource)))
                                {
                                    await store.DeleteRoleBindingAsync(principal, role, tenant, cancellationToken);
                                }

                                removed.Add((removal.Resource, removal.Source));
                            }

                            break;
                        }

                    case AccessRemovalKind.GrantRevocation:
                        {
                            var (key, grant) = AccessReplay.GrantOf(removal.Resource);
                            bool revoked;
                            using (AuditScope.Enter(Scope(removal.Kind, removal.Resource)))
                            {
                                revoked = await store.RevokeGrantAsync(key, grant, time, cancellationToken);
                            }

                            if (revoked)
                            {
                                removed.Add((removal.Resource, removal.Source));
                            }

                            break;
                        }

                    case AccessRemovalKind.KeyPolicyNarrowing when removal.Policy is { } policy:
                        {
                            // Only ever narrower than what the restored database holds: set, it
                            // takes away and gives nothing (the same policy again writes nothing).
                            var key = KeyName.Parse(removal.Resource, "resource");
                            var current = (await store.GetKeyPolicyAsync(key, cancellationToken)).Entries;
                            if (SamePolicy(policy, current))
                            {
                                break;
                            }

                            if (!RecordedAccessRemoval.Narrows(policy, current))
                            {
                                skipped.Add($"{removal.Resource} ({removal.Source}): its key policy not re-applied, as it is not narrower than the restored one");
                                break;
                            }

                            using (AuditScope.Enter(Scope(removal.Kind, removal.Resource)))
                            {
                                await store.SetKeyPolicyAsync(new Kms.Core.Access.KeyPolicy(key, policy), time, cancellationToken);
                            }

                            removed.Add((removal.Resource, removal.Source));
                            break;
                        }

                    case AccessRemovalKind.KeyPolicyNarrowing:
                        break;

                    default:
                        {
                            var name = AccessReplay.PrincipalOf(removal.Resource);
                            if (await store.GetPrincipalAsync(name, cancellationToken) is not { } principal)
                            {
                                skipped.Add($"{removal.Resource} (its deletion not re-applied: not in the restored database, created after it)");
                                break;
                            }

                            if (principal.Deleted)
                            {
                                break;
                            }

                            string? why = removal.Verified ? null
                                : "its event is not covered by a checkpoint signed with the audit key, and a deletion cannot be undone";
                            if (why is null)
                            {
                                try
                                {
                                    using (AuditScope.Enter(Scope(removal.Kind, removal.Resource)))
                                    {
                                        await store.DeletePrincipalAsync(name, time, cancellationToken);
                                    }

                                    removed.Add((removal.Resource, removal.Source));
                                    break;
                                }
                                catch (KmsException e) when (e.Code == KmsErrorCode.FailedPrecondition)
                                {
                                    why = "it is the last deployment admin the restored database holds (the admin who deleted it came after the backup)";
                                }
                            }

                            // What can be given back: its tokens revoked, its role bindings removed (one
                            // that is the last deployment admin's stays: the store refuses it).
                            foreach (var token in await store.ListApiTokensAsync(name, cancellationToken))
                            {
                                if (token.RevokeTime is null)
                                {
                                    var resource = $"{Kms.Core.Services.AccessService.AuditResourceOf(name, principal.Tenant)}/apiTokens/{token.Id}";
                                    using (AuditScope.Enter(Scope(AccessRemovalKind.TokenRevocation, resource)))
                                    {
                                        await store.RevokeApiTokenAsync(token.Id, time, cancellationToken);
                                    }

                                    removed.Add((resource, removal.Source));
                                }
                            }

                            foreach (var binding in await store.GetRoleBindingsAsync(name, cancellationToken))
                            {
                                var resource = AccessReplay.BindingResource(name, binding.Role, binding.Tenant);
                                try
                                {
                                    using (AuditScope.Enter(Scope(AccessRemovalKind.RoleBindingRemoval, resource)))
                                    {
                                        await store.DeleteRoleBindingAsync(name, binding.Role, binding.Tenant, cancellationToken);
                                    }

                                    removed.Add((resource, removal.Source));
                                }
                                catch (KmsException e) when (e.Code == KmsErrorCode.FailedPrecondition)
                                {
                                    skipped.Add($"{resource} kept: the restored database's last deployment admin binding");
                                }
                            }

                            skipped.Add($"{removal.Resource} not made DELETED ({removal.Source}): {why}; its tokens were revoked and its role bindings removed — delete it (DeletePrincipal) once that is confirmed");
                            break;
                        }
                }
            }
            catch (KmsException e) when (e.Code == KmsErrorCode.InvalidArgument)
            {
                skipped.Add($"{removal.Resource} ({removal.Source}): not re-applied, the resource does not name what was removed: {e.Message}");
            }
        }

        return removed;
    }

    // What the replaced database removed of access that the snapshot still grants: each token it
    // holds revoked, principal deleted, grant revoked (the snapshot's own are no-ops), and each
    // role binding the snapshot holds of a principal the replaced database holds without it (its
    // principals are never removed, only marked deleted: a binding missing there was removed after
    // the backup). And each key whose policy there is narrower than the snapshot's (it restricts the
    // key, and allows each principal no more than the snapshot's does): the incident response that
    // took a principal off a key, or locked an open key down, is made again. A policy there that
    // differs otherwise is listed for review and the snapshot's stays: replayed, it would widen.
    private static async Task<(List<RecordedAccessRemoval> Removals, List<string> Review)> ReplacedAccessAsync(
        SqlStore store, SqliteAccessState replaced, IReadOnlyDictionary<string, IReadOnlyDictionary<string, Kms.Core.Access.KeyOperations>> snapshotPolicies, CancellationToken cancellationToken)
    {
        var removals = new List<RecordedAccessRemoval>();
        var tenantOf = replaced.Principals.ToDictionary(p => p.Name.ToString(), p => p.Tenant, StringComparer.Ordinal);
        foreach (var (name, tenant, deleted) in replaced.Principals.Where(p => p.Deleted is not null))
        {
            removals.Add(new RecordedAccessRemoval(AccessRemovalKind.PrincipalDeletion, Kms.Core.Services.AccessService.AuditResourceOf(name, tenant), deleted!.Value, ReplacedDatabase, Verified: true));
        }

        foreach (var (id, principal, time) in replaced.RevokedTokens)
        {
            var holder = Kms.Core.Access.PrincipalName.ParseExisting(principal, "principal");
            removals.Add(new RecordedAccessRemoval(
                AccessRemovalKind.TokenRevocation, $"{Kms.Core.Services.AccessService.AuditResourceOf(holder, tenantOf.GetValueOrDefault(principal))}/apiTokens/{id}", time, ReplacedDatabase, Verified: true));
        }

        var bound = replaced.Bindings.ToHashSet();
        foreach (var (name, _, _) in replaced.Principals.Where(p => p.Deleted is null))
        {
            foreach (var binding in await store.GetRoleBindingsAsync(name, cancellationToken))
            {
                if (!bound.Contains((name.ToString(), binding.Role, binding.Tenant?.Value ?? "")))
                {
                    removals.Add(new RecordedAccessRemoval(AccessRemovalKind.RoleBindingRemoval, AccessReplay.BindingResource(name, binding.Role, binding.Tenant), DateTimeOffset.UtcNow, ReplacedDatabase, Verified: true));
                }
            }
        }

        removals.AddRange(replaced.RevokedGrants.Select(g => new RecordedAccessRemoval(AccessRemovalKind.GrantRevocation, g.Name, g.Time, ReplacedDatabase, Verified: true)));

        var review = new List<string>();
        foreach (var key in replaced.Policies.Keys.Union(snapshotPolicies.Keys).Order(StringComparer.Ordinal))
        {
            var there = replaced.Policies.GetValueOrDefault(key);
            var here = snapshotPolicies.GetValueOrDefault(key);
            if (SamePolicy(there, here) || await store.GetKeyAsync(KeyName.Parse(key, "key"), cancellationToken) is null)
            {
                continue;
            }

            if (RecordedAccessRemoval.Narrows(there, here))
            {
                removals.Add(new RecordedAccessRemoval(AccessRemovalKind.KeyPolicyNarrowing, key, DateTimeOffset.UtcNow, ReplacedDatabase, Verified: true) { Policy = there });
                continue;
            }

            review.Add($"{key}: its key policy in the replaced database ({PolicyText(there)}) differs from the backup's ({PolicyText(here)}), which the restore installed — set it again if the replaced one is meant");
        }

        return (removals, review);
    }

    private static bool SamePolicy(IReadOnlyDictionary<string, Kms.Core.Access.KeyOperations>? a, IReadOnlyDictionary<string, Kms.Core.Access.KeyOperations>? b) =>
        (a?.Count ?? 0) == (b?.Count ?? 0) && (a is null || a.All(e => b!.TryGetValue(e.Key, out var operations) && operations == e.Value));

    private static string PolicyText(IReadOnlyDictionary<string, Kms.Core.Access.KeyOperations>? policy) =>
        policy is null || policy.Count == 0 ? "none" : string.Join(", ", policy.OrderBy(e => e.Key, StringComparer.Ordinal).Select(e => $"{e.Key} {e.Value.ToString().Replace(", ", "+", StringComparison.Ordinal).ToUpperInvariant()}"));
}
