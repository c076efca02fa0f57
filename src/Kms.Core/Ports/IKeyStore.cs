using Kms.Core.Crypto;
using Kms.Core.Keys;
using Kms.Core.Names;

namespace Kms.Core.Ports;

/// <summary>
/// Durable metadata: keys, versions with their wrapped material, aliases, usage, settings.
/// Every query made on behalf of a caller takes the caller's tenant; no such query crosses
/// tenants. (The due-work queries of background jobs are system-wide by nature.)
/// </summary>
/// <remarks>
/// A completed write is durable (it survives a crash or power loss). A version whose state
/// is DESTROYED has no material: the store erases it in the same transaction, and once
/// <see cref="CompleteErasureAsync"/> has returned true it is not recoverable from the
/// store's files. Backends pass the shared contract suite in
/// tests/Kms.Storage.Tests.
/// </remarks>
public interface IKeyStore
{
    /// <summary>
    /// Stores a new key with its first version, atomically. With a request id, the id is
    /// recorded in the same transaction, so a retry finds it.
    /// </summary>
    /// <exception cref="Errors.KmsException">AlreadyExists if the key id is taken (or the request id was recorded meanwhile).</exception>
    Task CreateKeyAsync(Key key, WrappedKeyMaterial primaryMaterial, RequestRecord? request, CancellationToken cancellationToken);

    /// <summary>The key, or null.</summary>
    Task<Key?> GetKeyAsync(KeyName name, CancellationToken cancellationToken);

    /// <summary>Keys of a tenant in key-id order, starting after <paramref name="afterKeyId"/>.</summary>
    Task<IReadOnlyList<Key>> ListKeysAsync(TenantId tenant, string? afterKeyId, int limit, CancellationToken cancellationToken);

    /// <summary>Versions of a key in version order, starting after <paramref name="afterVersion"/>.</summary>
    Task<IReadOnlyList<KeyVersion>> ListVersionsAsync(KeyName key, int afterVersion, int limit, CancellationToken cancellationToken);

    /// <summary>One version (metadata and usage, no material), or null.</summary>
    Task<KeyVersion?> GetVersionAsync(KeyVersionName name, CancellationToken cancellationToken);

    /// <summary>
    /// Reads the key with all its versions, lets <paramref name="decide"/> compute the change
    /// on that fresh state, and applies it — all in one transaction, serialised with every
    /// other change of the same key. If <paramref name="decide"/> throws, nothing changes.
    /// </summary>
    /// <remarks>
    /// A version added with an <see cref="KeyVersion.ImportFingerprint"/> is refused when a
    /// version of any key already has that fingerprint from the same <see cref="KeyVersion.ImportJob"/>:
    /// judged in the same transaction as the insert, serialised with every other write, so of two
    /// concurrent imports of one material through one job only one is stored.
    /// </remarks>
    /// <returns>The key and its versions after the change; null if the key does not exist.</returns>
    /// <exception cref="Errors.KmsException">
    /// AlreadyExists if the change's request id was recorded meanwhile; FailedPrecondition (see
    /// <see cref="Errors.KmsErrors.MaterialAlreadyImported"/>) for material its import job already imported.
    /// </exception>
    Task<KeyWithVersions?> UpdateKeyAsync(KeyName name, Func<KeyWithVersions, KeyChange> decide, CancellationToken cancellationToken);

    /// <summary>The key with its primary version's wrapped material, or null.</summary>
    Task<KeyVersionMaterial?> GetPrimaryMaterialAsync(KeyName name, CancellationToken cancellationToken);

    /// <summary>The version with this id in this tenant, with its key and material (none once destroyed), or null.</summary>
    Task<KeyVersionMaterial?> FindVersionMaterialAsync(TenantId tenant, KeyVersionId id, CancellationToken cancellationToken);

    /// <summary>Stores a new import job with its private key wrapped under the domain key.</summary>
    /// <exception cref="Errors.KmsException">AlreadyExists if the job id is taken.</exception>
    Task CreateImportJobAsync(ImportJob job, WrappedKeyMaterial material, CancellationToken cancellationToken);

    /// <summary>An import job and its wrapped private key (null once erased), or null.</summary>
    Task<ImportJobMaterial?> GetImportJobAsync(ImportJobName name, CancellationToken cancellationToken);

    /// <summary>
    /// Erases the wrapped private keys of jobs expired at <paramref name="now"/>, from the store's
    /// files too (as a destroyed version's material); returns the erased keys' material ids.
    /// </summary>
    Task<IReadOnlyList<KeyVersionId>> EraseExpiredImportJobsAsync(DateTimeOffset now, CancellationToken cancellationToken);

    /// <summary>A recorded request id, or null.</summary>
    Task<RequestRecord?> FindRequestAsync(TenantId tenant, string requestId, CancellationToken cancellationToken);

    /// <summary>
    /// Stores a new alias; its key must exist in the same tenant, be neither DESTROY_SCHEDULED nor
    /// DESTROYED, and the tenant must not be being deleted — all judged inside the write, under the
    /// write lock (a ScheduleKeyDeletion or DeleteTenant committed meanwhile is seen): nothing is written otherwise.
    /// </summary>
    /// <exception cref="Errors.KmsException">AlreadyExists (alias id or request id taken); NotFound (the key); FailedPrecondition (the key's state, the tenant being deleted).</exception>
    Task CreateAliasAsync(KeyAlias alias, RequestRecord? request, CancellationToken cancellationToken);

    /// <summary>The alias, or null.</summary>
    Task<KeyAlias?> GetAliasAsync(AliasName name, CancellationToken cancellationToken);

    /// <summary>
    /// Points an alias at another key of its tenant; null if the alias does not exist. The new key,
    /// as for <see cref="CreateAliasAsync"/>, is refused inside the write when it is DESTROY_SCHEDULED or
    /// DESTROYED or its tenant is being deleted (moving an alias away from such a key is not refused).
    /// An alias that names <paramref name="key"/> already is returned as it is, with nothing written
    /// (nor the check asked), whatever the key's or its tenant's state: a retry of a move whose
    /// answer was lost. <paramref name="check"/>, when given, is asked inside the write (under the write lock, on
    /// fresh state) with the key the alias names now (null if it is gone) and the new key, and
    /// refuses the move by throwing: nothing is written then.
    /// </summary>
    /// <exception cref="Errors.KmsException">NotFound (the key); FailedPrecondition (the new key's state, the tenant being deleted); whatever <paramref name="check"/> throws.</exception>
    Task<KeyAlias?> UpdateAliasAsync(AliasName name, KeyName key, DateTimeOffset updateTime, Action<Key?, Key>? check, CancellationToken cancellationToken);

    /// <summary>Deletes an alias (recording the request id with it); false if it did not exist.</summary>
    /// <exception cref="Errors.KmsException">AlreadyExists if the request id was recorded meanwhile.</exception>
    Task<bool> DeleteAliasAsync(AliasName name, RequestRecord? request, CancellationToken cancellationToken);

    /// <summary>Aliases of a tenant in alias-id order, starting after <paramref name="afterAliasId"/>.</summary>
    Task<IReadOnlyList<KeyAlias>> ListAliasesAsync(TenantId tenant, string? afterAliasId, int limit, CancellationToken cancellationToken);

    /// <summary>
    /// Enabled keys whose next scheduled rotation is due at <paramref name="now"/> (background job):
    /// keys without residency, and keys of the residency <paramref name="regions"/> (those this node can rotate).
    /// </summary>
    Task<IReadOnlyList<KeyName>> ListKeysDueForRotationAsync(DateTimeOffset now, int limit, IReadOnlyCollection<string> regions, CancellationToken cancellationToken);

    /// <summary>
    /// Keys with a scheduled deletion or version destruction due at <paramref name="now"/> (background job),
    /// leaving out a destruction whose last attempt failed and whose <see cref="DestructionFailure.RetryTime"/>
    /// is after <paramref name="now"/>: a key is listed for its deletion, or, while its deletion is not due,
    /// for a due version of its own that is not waiting.
    /// </summary>
    Task<IReadOnlyList<KeyName>> ListKeysDueForDestructionAsync(DateTimeOffset now, int limit, CancellationToken cancellationToken);

    /// <summary>
    /// The recorded failures (<see cref="RecordDestructionFailureAsync"/>) of destructions still pending:
    /// keys DESTROY_SCHEDULED, versions DESTROY_SCHEDULED whose material is not erased. The deployment's,
    /// whichever node recorded them.
    /// </summary>
    Task<IReadOnlyList<DestructionFailure>> ListDestructionFailuresAsync(CancellationToken cancellationToken);

    /// <summary>
    /// Records, with the key (its deletion) or the version, that its due destruction failed: how many
    /// times in a row, since when, and when it may be tried again; nothing when it is no longer
    /// DESTROY_SCHEDULED. Its own write, which carries no request's audit event (it changes no key).
    /// Any later change of that key (<see cref="UpdateKeyAsync"/>) clears the key's record, and of
    /// that version its own, in the change's transaction: a destruction that succeeds, a cancelled
    /// or rescheduled one, starts afresh.
    /// </summary>
    Task RecordDestructionFailureAsync(DestructionFailure failure, CancellationToken cancellationToken);

    /// <summary>
    /// Finishes erasing destroyed material from the store's files when an earlier erasure
    /// could not (e.g. a reader held an old snapshot of the database). Cheap when nothing is
    /// pending; the background job calls it on every pass.
    /// </summary>
    /// <returns>True when no erasure is pending any more.</returns>
    Task<bool> CompleteErasureAsync(CancellationToken cancellationToken);

    /// <summary>
    /// Adds <paramref name="count"/> to a version's durable count of GCM encryptions and
    /// returns the new total. Never decreases; callers reserve in blocks.
    /// </summary>
    Task<long> ReserveEncryptionsAsync(KeyVersionId id, long count, CancellationToken cancellationToken);

    /// <summary>
    /// Applies a node's usage flush once: adds its decryption counts and moves last-use times
    /// forward (never backward), and records the flush's sequence number for its node in the same
    /// write. A flush of that node with this sequence number or a later one already applied: nothing
    /// is changed, so a flush sent again after a write whose outcome is unknown (a COMMIT whose
    /// answer was lost) is counted once.
    /// </summary>
    /// <returns>True when applied by this call; false when it had been applied before.</returns>
    Task<bool> RecordUsageAsync(UsageFlush flush, CancellationToken cancellationToken);

    /// <summary>A deployment-wide setting (e.g. the domain key's check value), or null.</summary>
    Task<string?> GetSettingAsync(string name, CancellationToken cancellationToken);

    /// <summary>Sets a setting only if it is not set yet; returns the value in force afterwards.</summary>
    Task<string> SetSettingIfAbsentAsync(string name, string value, CancellationToken cancellationToken);

    /// <summary>Sets a setting, replacing what it held.</summary>
    Task SetSettingAsync(string name, string value, CancellationToken cancellationToken);

    /// <summary>Cheap liveness probe of the backend.</summary>
    Task CheckHealthAsync(CancellationToken cancellationToken);

    /// <summary>
    /// The database server's clock where it is a machine of its own (PostgreSQL), so that times
    /// every node must agree on (a destroy time) do not depend on one node's clock; null where
    /// the database has no clock but this host's (SQLite).
    /// </summary>
    Task<DateTimeOffset?> GetDatabaseTimeAsync(CancellationToken cancellationToken);
}

/// <summary>An import job and its wrapped private key (null once expired and erased).</summary>
public sealed record ImportJobMaterial(ImportJob Job, WrappedKeyMaterial? Material);

/// <summary>A key, one of its versions, and that version's wrapped material (null once DESTROYED).</summary>
public sealed record KeyVersionMaterial(Key Key, KeyVersion Version, WrappedKeyMaterial? Material);

/// <summary>A key and all its versions, in version order.</summary>
public sealed record KeyWithVersions(Key Key, IReadOnlyList<KeyVersion> Versions)
{
    /// <summary>The version numbered <paramref name="version"/>, or null.</summary>
    public KeyVersion? Version(int version) => version >= 1 && version <= Versions.Count && Versions[version - 1].Name.Version == version
        ? Versions[version - 1]
        : Versions.FirstOrDefault(v => v.Name.Version == version);
}

/// <summary>
/// What a change does to a key: its new metadata, versions whose metadata changed (a
/// version set to DESTROYED loses its material), at most one added version, and the
/// request id to record with it.
/// </summary>
public sealed record KeyChange(Key Key)
{
    /// <summary>Versions whose state or destroy times changed, identified by number.</summary>
    public IReadOnlyList<KeyVersion> UpdatedVersions { get; init; } = [];

    /// <summary>A new version with its material (rotation).</summary>
    public NewKeyVersion? AddedVersion { get; init; }

    /// <summary>The caller's request id, recorded in the same transaction.</summary>
    public RequestRecord? Request { get; init; }

    /// <summary>Nothing to write (a background job found nothing to do after all).</summary>
    public bool IsNoOp { get; init; }

    /// <summary>
    /// Write only while the key's tenant is DELETING, checked under the write lock (a tenant's
    /// offboarding scheduling its keys): once a <c>CancelTenantDeletion</c> has committed, the
    /// change is a no-op, so a sweep or a DeleteTenant that read the tenant before the cancel
    /// schedules no key of the tenant it gave back.
    /// </summary>
    public bool OnlyWhileTenantDeleting { get; init; }

    /// <summary>
    /// Refused (FAILED_PRECONDITION, nothing written) while the key's tenant is DELETING, checked
    /// under the write lock: a <c>CancelKeyDeletion</c> that checked the tenant before a
    /// <c>DeleteTenant</c> committed does not bring back a key of the tenant being offboarded.
    /// </summary>
    public bool RefusedWhileTenantDeleting { get; init; }
}

/// <summary>
/// A due destruction whose last attempt failed: a key's deletion (<paramref name="Version"/> null) or
/// one version's, <paramref name="Failures"/> times in a row since <paramref name="Since"/>; the
/// lifecycle leaves it alone until <paramref name="RetryTime"/> (times of the lifecycle's trusted clock).
/// </summary>
public sealed record DestructionFailure(KeyName Key, int? Version, int Failures, DateTimeOffset Since, DateTimeOffset RetryTime)
{
    /// <summary>What the destruction destroys: the key's name, or the version's.</summary>
    public string Resource => Version is { } number ? Key.Version(number).ToString() : Key.ToString();
}

/// <summary>A version to add, with its wrapped material.</summary>
public sealed record NewKeyVersion(KeyVersion Version, WrappedKeyMaterial Material);

/// <summary>Usage to add to a version: counts, and last-use times to move forward.</summary>
public sealed record UsageDelta(KeyVersionId Id, long Decryptions, DateTimeOffset? LastEncryptTime, DateTimeOffset? LastDecryptTime);

/// <summary>
/// One usage flush of a node: the deltas, under the node's id (random, for the process's life) and
/// a number that grows with each flush of that node, and the node's time when it was made.
/// </summary>
/// <remarks>
/// A node sends its flushes in sequence order and sends a flush whose write failed again, the same
/// one, before any later one: the store then applies each once, whether the failed write had
/// committed or not. Stores forget a node's last sequence number <see cref="Retention"/> after its
/// last applied flush, so only a flush sent again after so long could be counted twice.
/// </remarks>
public sealed record UsageFlush(Guid Node, long Sequence, DateTimeOffset Time, IReadOnlyCollection<UsageDelta> Deltas)
{
    /// <summary>How long a store remembers a node's last applied flush after it was made.</summary>
    public static readonly TimeSpan Retention = TimeSpan.FromDays(7);
}

/// <summary>
/// A client request id (idempotency key) as recorded with the mutation it applied.
/// <paramref name="Fingerprint"/> is a hash of the request, so a reuse of the id for another
/// request is recognised.
/// </summary>
public sealed record RequestRecord(TenantId Tenant, string RequestId, string Operation, byte[] Fingerprint, string Resource, DateTimeOffset CreateTime);
