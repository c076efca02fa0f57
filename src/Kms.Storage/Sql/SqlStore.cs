using System.Data;
using System.Data.Common;
using System.Globalization;
using System.Text.Json;
using Kms.Core.Audit;
using Kms.Core.Crypto;
using Kms.Core.Errors;
using Kms.Core.Keys;
using Kms.Core.Names;
using Kms.Core.Ports;

namespace Kms.Storage;

/// <summary>
/// <see cref="IKeyStore"/>, <see cref="IAccessStore"/>, <see cref="IAuditStore"/> and
/// <see cref="IQuorumStore"/> in SQL, shared by the SQLite (<see cref="Sqlite.SqliteStore"/>)
/// and PostgreSQL (<see cref="Postgres.PostgresStore"/>) backends: one set of statements
/// that both dialects run, and a few hooks where they differ (opening a connection, taking
/// the write lock, erasing destroyed material from the files, constraint errors).
/// </summary>
/// <remarks>
/// Every write runs in one transaction that holds the backend's single write lock (SQLite:
/// <c>BEGIN IMMEDIATE</c>; PostgreSQL: a transaction-scoped advisory lock), so writes are
/// serialised across every connection and every node, and the audit chain has one head.
/// </remarks>
public abstract partial class SqlStore : IKeyStore, IAccessStore, IAuditStore, IMetadataCoherence, IDisposable, IAsyncDisposable
{
    /// <summary>Hot-path metadata entries remembered at most (0 turns remembering off).</summary>
    public const int DefaultMetadataCacheCapacity = 10_000;

    private const string ErasurePendingSetting = "store.erasure_pending";

    // Declared before the fields built from it (static initialisers run in order).
    private static readonly string[] VersionColumnNames =
    [
        "version", "version_id", "algorithm", "state", "create_time", "destroy_time", "destroy_event_time",
        "encrypt_count", "decrypt_count", "last_encrypt_time", "last_decrypt_time",
        "origin", "import_job", "public_key", "create_request", "import_fingerprint",
    ];

    private static readonly int VersionColumnCount = VersionColumnNames.Length;

    private static readonly string PrimaryColumns = VersionColumns("p");

    private static readonly string OtherVersionColumns = VersionColumns("v");

    private static readonly string KeyColumns = """
        k.tenant, k.key_id, k.purpose, k.state, k.create_time, k.labels,
        k.rotation_period_ms, k.next_rotation_time, k.min_decryption_version, k.destroy_time,
        """ + PrimaryColumns + ", k.restricted, k.residency, k.allow_import";

    private static readonly int KeyColumnCount = 10 + VersionColumnCount + 3;

    private const string KeyJoin = """
        FROM keys k
        JOIN key_versions p ON p.tenant = k.tenant AND p.key_id = k.key_id AND p.version = k.primary_version
        """;

    // The hot path's reads (HotReadAsync): a key with its primary version's material, a version by id with its key.
    private static readonly string PrimaryMaterialSql = $"SELECT {KeyColumns}, p.material {KeyJoin} WHERE k.tenant = @tenant AND k.key_id = @key_id";

    private static readonly string VersionMaterialSql = $"""
        SELECT {KeyColumns}, {OtherVersionColumns}, v.material
        {KeyJoin}
        JOIN key_versions v ON v.tenant = k.tenant AND v.key_id = k.key_id
        WHERE v.version_id = @version_id AND v.tenant = @tenant
        """;

    private readonly AuditWriter _auditWriter;
    private MetadataCache _metadata = new(DefaultMetadataCacheCapacity);

    /// <summary>Sets up the audit writer on the backend's dedicated connection.</summary>
    private protected SqlStore()
    {
        _auditWriter = new AuditWriter(this);
    }

    /// <summary>
    /// Most hot-path metadata entries remembered (primary versions, versions by id, aliases);
    /// 0 reads the database on every call. Remembered entries are used only while the change
    /// feed confirms coherence (<see cref="IMetadataCoherence"/>).
    /// </summary>
    public int MetadataCacheCapacity
    {
        get => _metadata.Enabled ? _metadataCapacity : 0;
        set
        {
            _metadataCapacity = value;
            _metadata = new MetadataCache(value);
        }
    }

    private int _metadataCapacity = DefaultMetadataCacheCapacity;

    /// <summary>
    /// Metadata reads answered from memory and from the database since start; of the latter, those read
    /// only because the change feed had not confirmed coherence recently; and how often everything
    /// remembered was forgotten (a write here, or a change read from the feed).
    /// </summary>
    public (long Hits, long Misses, long Unconfirmed, long Invalidations) MetadataCacheStatistics =>
        (Interlocked.Read(ref _metadata.Hits), Interlocked.Read(ref _metadata.Misses), Interlocked.Read(ref _metadata.Unconfirmed), _metadata.Generation);

    /// <inheritdoc />
    public void InvalidateMetadata() => _metadata.Invalidate();

    /// <inheritdoc />
    public void ConfirmCoherent(TimeSpan validFor) => _metadata.Confirm(validFor);

    /// <summary>Where the database is, for messages (a path, or a host and database name; never a password).</summary>
    public abstract string Location { get; }

    /// <summary>The backend's name in messages and metrics: <c>sqlite</c> or <c>postgres</c>.</summary>
    public abstract string Provider { get; }

    /// <summary>
    /// Holds the serving lock (shared) until the store is disposed: what a server does before it
    /// serves. False while an offline maintenance holds it exclusively; the server must not serve then.
    /// </summary>
    public abstract Task<bool> TryHoldServingLockAsync(CancellationToken cancellationToken);

    /// <summary>
    /// Holds the serving lock exclusively until the store is disposed: what an offline maintenance
    /// (a domain-key rotation) does first. False while any server serves the database.
    /// </summary>
    public abstract Task<bool> TryHoldMaintenanceLockAsync(CancellationToken cancellationToken);

    /// <summary>Closes the audit writer's connection; pooled connections are the pool's.</summary>
    public async ValueTask DisposeAsync()
    {
        await DisposeCoreAsync();
        GC.SuppressFinalize(this);
    }

    /// <inheritdoc cref="DisposeAsync" />
    public void Dispose()
    {
        DisposeCoreAsync().AsTask().GetAwaiter().GetResult();
        GC.SuppressFinalize(this);
    }

    /// <summary>What disposing releases; a backend with more (a data source) adds it.</summary>
    private protected virtual ValueTask DisposeCoreAsync() => _auditWriter.DisposeAsync();

    /// <summary>Opens a connection configured for the store; <paramref name="pooled"/> false: one the audit writer keeps.</summary>
    internal abstract Task<DbConnection> OpenConnectionAsync(CancellationToken cancellationToken, bool pooled = true);

    /// <summary>Begins a write transaction holding the store's write lock.</summary>
    private protected abstract Task<DbTransaction> BeginWriteAsync(DbConnection connection, CancellationToken cancellationToken);

    /// <summary>
    /// A value that changes when the transaction writes a row (compared before and after a
    /// request's work to tell whether it changed anything, so the audit event rides along only then).
    /// </summary>
    private protected abstract Task<long> WriteMarkAsync(DbConnection connection, DbTransaction transaction, CancellationToken cancellationToken);

    /// <summary>
    /// Removes erased material from the backend's files (after the erasing commit); false: retry on
    /// a later pass. <paramref name="mark"/> is what <see cref="ErasureMarkSql"/> recorded with the latest erasure.
    /// </summary>
    private protected abstract Task<bool> EraseFromFilesAsync(DbConnection connection, string mark, CancellationToken cancellationToken);

    /// <summary>
    /// The SQL expression (text) recorded as the pending-erasure mark inside the erasing
    /// transaction: different for every erasure, so a completer that erased before a later one
    /// cannot clear the later one's mark.
    /// </summary>
    private protected abstract string ErasureMarkSql { get; }

    /// <summary>The SQL that begins a group commit on the audit writer's connection and takes the write lock.</summary>
    internal abstract string AuditBeginSql { get; }

    /// <summary>
    /// SQL returning a number that changes whenever another connection has committed (SQLite's
    /// <c>data_version</c>), so the audit writer may keep the chain head in memory; null when the
    /// backend has none (the head is then read under the lock on every batch).
    /// </summary>
    internal abstract string? AuditDataVersionSql { get; }

    /// <summary>
    /// Commits a write transaction. Never cancelled, and never under a timeout: a commit
    /// interrupted while it waits (PostgreSQL's synchronous standby) can be committed all the same,
    /// so an acknowledged write must not depend on how the wait ended (PostgresStore).
    /// </summary>
    private protected virtual Task CommitWriteAsync(DbConnection connection, DbTransaction transaction) => transaction.CommitAsync(CancellationToken.None);

    /// <summary>
    /// Runs the audit writer's prepared begin (<see cref="AuditBeginSql"/>), which takes the write
    /// lock: the wait for a lock another session holds ends when <paramref name="cancellationToken"/>
    /// is cancelled (SQLite: waited for in slices, as <see cref="BeginWriteAsync"/> does), so a stop
    /// is not held by a group commit waiting for it.
    /// </summary>
    internal virtual Task BeginAuditAsync(DbCommand begin, CancellationToken cancellationToken) => begin.ExecuteNonQueryAsync(cancellationToken);

    /// <summary>Runs the audit writer's prepared <c>COMMIT</c>, with the same rules as <see cref="CommitWriteAsync"/>.</summary>
    internal virtual Task CommitAuditAsync(DbCommand commit) => commit.ExecuteNonQueryAsync(CancellationToken.None);

    /// <summary>Whether a group commit inserts its events in one statement (worth it when each statement is a network round trip).</summary>
    internal virtual bool MultiRowAuditInsert => false;

    // A request's string PostgreSQL cannot store: a NUL or a byte sequence invalid in the encoding
    // (22021), a character the database's encoding lacks (22P05). Only these of class 22 ("data
    // exception"): the others (a number out of range, a division by zero) come from values of
    // our own making, and stay a fault of the server's, logged, not the caller's.
    private static bool IsUnstorableText(DbException exception) => exception.SqlState is "22021" or "22P05";

    // A constraint violation (a duplicate key, a missing referenced row): SQLite's SQLITE_CONSTRAINT,
    // PostgreSQL's class 23 (integrity constraint violation).
    private static bool IsConstraintViolation(DbException exception) =>
        exception is Microsoft.Data.Sqlite.SqliteException { SqliteErrorCode: 19 } || exception.SqlState?.StartsWith("23", StringComparison.Ordinal) == true;

    /// <inheritdoc />
    public Task CreateKeyAsync(Key key, WrappedKeyMaterial primaryMaterial, RequestRecord? request, CancellationToken cancellationToken) =>
        WriteAsync(async (connection, transaction) =>
        {
            // KeyService checks the tenant before the HSM generates the material (seconds for an RSA
            // pair); a DeleteTenant committing meanwhile is seen here, so no key is created (and
            // answered OK) in a tenant being offboarded, to be left ENABLED until the sweep.
            await RefuseInDeletingTenantAsync(connection, transaction, "@tenant", ("@tenant", key.Name.Tenant.Value), cancellationToken);
            await InsertRequestAsync(connection, transaction, request, cancellationToken);
            await InsertAsync(connection, transaction, """
                INSERT INTO keys (tenant, key_id, purpose, state, primary_version, create_time, labels,
                                  rotation_period_ms, next_rotation_time, min_decryption_version, destroy_time, residency, allow_import)
                VALUES (@tenant, @key_id, @purpose, @state, @primary_version, @create_time, @labels,
                        @rotation_period_ms, @next_rotation_time, @min_decryption_version, @destroy_time, @residency, @allow_import)
                """,
                key.Name.ToString(), cancellationToken,
                [.. KeyParameters(key), ("@residency", (object?)key.Residency ?? DBNull.Value), ("@allow_import", key.AllowImport ? 1 : 0)]);
            await InsertVersionAsync(connection, transaction, key.Name, key.Primary, primaryMaterial, cancellationToken);
            return 0;
        }, cancellationToken);

    /// <inheritdoc />
    public Task<Key?> GetKeyAsync(KeyName name, CancellationToken cancellationToken) =>
        ReadAsync(connection => ReadKeyAsync(connection, null, name, cancellationToken), cancellationToken);

    /// <inheritdoc />
    public Task<IReadOnlyList<Key>> ListKeysAsync(TenantId tenant, string? afterKeyId, int limit, CancellationToken cancellationToken) =>
        ReadAsync<IReadOnlyList<Key>>(async connection =>
        {
            await using var command = Command(connection, $"SELECT {KeyColumns} {KeyJoin} WHERE k.tenant = @tenant AND k.key_id > @after ORDER BY k.key_id LIMIT @limit",
                ("@tenant", tenant.Value), ("@after", afterKeyId ?? ""), ("@limit", limit));
            await using var reader = await command.ExecuteReaderAsync(cancellationToken);
            var keys = new List<Key>();
            while (await reader.ReadAsync(cancellationToken))
            {
                keys.Add(ReadKey(reader));
            }

            return keys;
        }, cancellationToken);

    /// <inheritdoc />
    public Task<IReadOnlyList<KeyVersion>> ListVersionsAsync(KeyName key, int afterVersion, int limit, CancellationToken cancellationToken) =>
        ReadAsync(connection => ReadVersionsAsync(connection, null, key, afterVersion, limit, cancellationToken), cancellationToken);

    /// <inheritdoc />
    public Task<KeyVersion?> GetVersionAsync(KeyVersionName name, CancellationToken cancellationToken) =>
        ReadAsync(async connection => (await ReadVersionsAsync(connection, null, name.Key, name.Version - 1, 1, cancellationToken)) is [var version] && version.Name.Version == name.Version
            ? version
            : null, cancellationToken);

    /// <inheritdoc />
    public Task<KeyWithVersions?> UpdateKeyAsync(KeyName name, Func<KeyWithVersions, KeyChange> decide, CancellationToken cancellationToken) =>
        UpdateKeyAsync(name, decide, static () => [], cancellationToken);

    /// <summary>
    /// <see cref="UpdateKeyAsync(KeyName, Func{KeyWithVersions, KeyChange}, CancellationToken)"/>, appending
    /// <paramref name="events"/> (asked once the decision has run) to the audit chain in the same
    /// transaction when the change writes something: for offline tools, whose writes carry no request's
    /// event, so that a change is never committed without its record (nor a record without its change).
    /// </summary>
    public async Task<KeyWithVersions?> UpdateKeyAsync(KeyName name, Func<KeyWithVersions, KeyChange> decide, Func<IReadOnlyList<AuditEntry>> events, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(decide);
        ArgumentNullException.ThrowIfNull(events);

        // A no-op decision (the lifecycle worker's sweeps decide one for every key already where it
        // should be, every pass) or a missing key writes nothing, so it tells no node to forget anything.
        var (result, erased, _) = await WriteAsync(
            (connection, transaction) => ApplyKeyChangeAsync(connection, transaction, name, decide, ErasureMarkSql, cancellationToken),
            cancellationToken,
            trailingEvents: applied => applied.Changed ? events() : [],
            changed: applied => applied.Changed);
        if (erased)
        {
            await TryCompleteErasureAsync(cancellationToken);
        }

        return result;
    }

    // After a committed erasure: finishing it now is an optimisation. Its failure must not turn
    // the committed change into an error; the pending mark stays and the background pass retries.
    private async Task TryCompleteErasureAsync(CancellationToken cancellationToken)
    {
        try
        {
            await CompleteErasureAsync(cancellationToken);
        }
        catch (KmsException e) when (e.Code == KmsErrorCode.Unavailable)
        {
        }
    }

    /// <inheritdoc />
    public Task<bool> CompleteErasureAsync(CancellationToken cancellationToken) =>
        GuardAsync(async () =>
        {
            await using var connection = await OpenConnectionAsync(cancellationToken);
            string mark;
            await using (var check = Command(connection, "SELECT value FROM settings WHERE name = @name", ("@name", ErasurePendingSetting)))
            {
                if (await check.ExecuteScalarAsync(cancellationToken) is not string pending)
                {
                    return true;
                }

                mark = pending;
            }

            if (!await EraseFromFilesAsync(connection, mark, cancellationToken))
            {
                return false;
            }

            // Cleared only after the erasure, and only if no later erasure replaced the mark meanwhile:
            // a crash in between just repeats a harmless checkpoint or vacuum.
            await using var clear = Command(connection, "DELETE FROM settings WHERE name = @name AND value = @mark", ("@name", ErasurePendingSetting), ("@mark", mark));
            await clear.ExecuteNonQueryAsync(cancellationToken);
            return true;
        }, this);

    /// <inheritdoc />
    public Task<KeyVersionMaterial?> GetPrimaryMaterialAsync(KeyName name, CancellationToken cancellationToken) =>
        _metadata.TryGet(name, out KeyVersionMaterial cached)
            ? Task.FromResult<KeyVersionMaterial?>(cached)
            : RememberAsync(name, ReadPrimaryMaterialAsync(name, _metadata.Generation, cancellationToken));

    private Task<(KeyVersionMaterial? Value, long Generation)> ReadPrimaryMaterialAsync(KeyName name, long generation, CancellationToken cancellationToken) =>
        WithGeneration(generation, HotReadAsync(
            PrimaryMaterialSql,
            reader =>
            {
                var key = ReadKey(reader);
                return new KeyVersionMaterial(key, key.Primary, ReadMaterial(reader, KeyColumnCount));
            },
            cancellationToken, ("@tenant", name.Tenant.Value), ("@key_id", name.KeyId)));

    /// <inheritdoc />
    public Task<KeyVersionMaterial?> FindVersionMaterialAsync(TenantId tenant, KeyVersionId id, CancellationToken cancellationToken) =>
        _metadata.TryGet((tenant, id), out KeyVersionMaterial cached)
            ? Task.FromResult<KeyVersionMaterial?>(cached)
            : RememberAsync((tenant, id), ReadVersionMaterialAsync(tenant, id, _metadata.Generation, cancellationToken));

    private Task<(KeyVersionMaterial? Value, long Generation)> ReadVersionMaterialAsync(TenantId tenant, KeyVersionId id, long generation, CancellationToken cancellationToken) =>
        WithGeneration(generation, HotReadAsync(
            VersionMaterialSql,
            reader =>
            {
                var key = ReadKey(reader);
                return new KeyVersionMaterial(key, ReadVersion(reader, KeyColumnCount, key.Name), ReadMaterial(reader, KeyColumnCount + VersionColumnCount));
            },
            cancellationToken, ("@tenant", tenant.Value), ("@version_id", id.ToBytes())));

    /// <inheritdoc />
    public Task<RequestRecord?> FindRequestAsync(TenantId tenant, string requestId, CancellationToken cancellationToken) =>
        ReadAsync(async connection =>
        {
            await using var command = Command(connection,
                "SELECT operation, fingerprint, resource, create_time FROM request_ids WHERE tenant = @tenant AND request_id = @request_id",
                ("@tenant", tenant.Value), ("@request_id", requestId));
            await using var reader = await command.ExecuteReaderAsync(cancellationToken);
            return await reader.ReadAsync(cancellationToken)
                ? new RequestRecord(tenant, requestId, reader.GetString(0), (byte[])reader[1], reader.GetString(2), DateTimeOffset.FromUnixTimeMilliseconds(reader.GetInt64(3)))
                : null;
        }, cancellationToken);

    /// <inheritdoc />
    public Task CreateAliasAsync(KeyAlias alias, RequestRecord? request, CancellationToken cancellationToken) =>
        WriteAsync(async (connection, transaction) =>
        {
            await EnsureAliasTargetAsync(connection, transaction, alias.Key, cancellationToken);
            await InsertRequestAsync(connection, transaction, request, cancellationToken);
            await InsertAsync(connection, transaction,
                "INSERT INTO aliases (tenant, alias_id, key_id, create_time, update_time) VALUES (@tenant, @alias_id, @key_id, @create_time, @update_time)",
                alias.Name.ToString(), cancellationToken,
                ("@tenant", alias.Name.Tenant.Value), ("@alias_id", alias.Name.AliasId), ("@key_id", alias.Key.KeyId),
                ("@create_time", alias.CreateTime.ToUnixTimeMilliseconds()), ("@update_time", alias.UpdateTime.ToUnixTimeMilliseconds()));
            return 0;
        }, cancellationToken);

    /// <inheritdoc />
    public Task<KeyAlias?> GetAliasAsync(AliasName name, CancellationToken cancellationToken) =>
        _metadata.TryGet(name, out KeyAlias cached)
            ? Task.FromResult<KeyAlias?>(cached)
            : RememberAsync(name, WithGeneration(_metadata.Generation, ReadAsync(connection => ReadAliasAsync(connection, null, name, cancellationToken), cancellationToken)));

    // A read's generation is captured before the database is asked, so a write that commits
    // meanwhile (and moves the generation) keeps the read's answer out of the cache.
    private static async Task<(T? Value, long Generation)> WithGeneration<T>(long generation, Task<T?> read)
        where T : class => (await read, generation);

    private async Task<T?> RememberAsync<T>(object key, Task<(T? Value, long Generation)> read)
        where T : class
    {
        var (value, generation) = await read;
        if (value is not null)
        {
            _metadata.Add(key, value, generation);
        }

        return value;
    }

    /// <inheritdoc />
    public async Task<KeyAlias?> UpdateAliasAsync(AliasName name, KeyName key, DateTimeOffset updateTime, Action<Key?, Key>? check, CancellationToken cancellationToken) =>
        (await WriteAsync<(KeyAlias? Alias, bool Changed)>(async (connection, transaction) =>
        {
            if (await ReadAliasAsync(connection, transaction, name, cancellationToken) is not { } current)
            {
                return (null, false);
            }

            // Already there (a retry whose answer was lost): nothing is written, so nothing is
            // given to the key or its tenant, whatever their state now; neither announced nor forgotten.
            if (current.Key == key)
            {
                return (current, false);
            }

            await RefuseInDeletingTenantAsync(connection, transaction, "@tenant", ("@tenant", key.Tenant.Value), cancellationToken);
            var target = await ReadKeyAsync(connection, transaction, key, cancellationToken) ?? throw KmsErrors.NotFound(key.ToString());
            Kms.Core.Services.KeyTransitions.EnsureAliasTarget(target.Name, target.State);
            check?.Invoke(await ReadKeyAsync(connection, transaction, current.Key, cancellationToken), target);
            await using var update = Command(connection,
                "UPDATE aliases SET key_id = @key_id, update_time = @update_time WHERE tenant = @tenant AND alias_id = @alias_id RETURNING key_id, create_time, update_time",
                ("@key_id", key.KeyId), ("@update_time", updateTime.ToUnixTimeMilliseconds()), ("@tenant", name.Tenant.Value), ("@alias_id", name.AliasId));
            update.Transaction = transaction;
            await using var reader = await update.ExecuteReaderAsync(cancellationToken);
            if (!await reader.ReadAsync(cancellationToken))
            {
                return (null, false);
            }

            return (ReadAlias(reader, name), true);
        }, cancellationToken, changed: result => result.Changed)).Alias;

    /// <inheritdoc />
    public Task<bool> DeleteAliasAsync(AliasName name, RequestRecord? request, CancellationToken cancellationToken) =>
        WriteAsync(async (connection, transaction) =>
        {
            // A retry that ran while the first attempt waited for the lock found no record: it is
            // told the request was recorded meanwhile (and replays), not that the alias is gone.
            if (request is not null)
            {
                await using var recorded = Command(connection, "SELECT count(*) FROM request_ids WHERE tenant = @tenant AND request_id = @request_id",
                    ("@tenant", request.Tenant.Value), ("@request_id", request.RequestId));
                recorded.Transaction = transaction;
                if (Convert.ToInt64(await recorded.ExecuteScalarAsync(cancellationToken), CultureInfo.InvariantCulture) > 0)
                {
                    throw KmsErrors.AlreadyExists($"request {request.RequestId}");
                }
            }

            await using var delete = Command(connection, "DELETE FROM aliases WHERE tenant = @tenant AND alias_id = @alias_id",
                ("@tenant", name.Tenant.Value), ("@alias_id", name.AliasId));
            delete.Transaction = transaction;
            if (await delete.ExecuteNonQueryAsync(cancellationToken) == 0)
            {
                return false;
            }

            await InsertRequestAsync(connection, transaction, request, cancellationToken);
            return true;
        }, cancellationToken, changed: deleted => deleted);

    /// <inheritdoc />
    public Task<IReadOnlyList<KeyAlias>> ListAliasesAsync(TenantId tenant, string? afterAliasId, int limit, CancellationToken cancellationToken) =>
        ReadAsync<IReadOnlyList<KeyAlias>>(async connection =>
        {
            await using var command = Command(connection,
                "SELECT key_id, create_time, update_time, alias_id FROM aliases WHERE tenant = @tenant AND alias_id > @after ORDER BY alias_id LIMIT @limit",
                ("@tenant", tenant.Value), ("@after", afterAliasId ?? ""), ("@limit", limit));
            await using var reader = await command.ExecuteReaderAsync(cancellationToken);
            var aliases = new List<KeyAlias>();
            while (await reader.ReadAsync(cancellationToken))
            {
                aliases.Add(ReadAlias(reader, new AliasName(tenant, reader.GetString(3))));
            }

            return aliases;
        }, cancellationToken);

    /// <inheritdoc />
    public Task<IReadOnlyList<KeyName>> ListKeysDueForRotationAsync(DateTimeOffset now, int limit, IReadOnlyCollection<string> regions, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(regions);

        // Region names are validated ([a-z0-9-]) where they are configured; they are passed as parameters anyway.
        var names = regions.Select((_, i) => $"@region{i}").ToList();
        var resident = names.Count == 0 ? "" : $" OR residency IN ({string.Join(", ", names)})";
        return ReadKeyNamesAsync($"""
            SELECT tenant, key_id FROM keys
            WHERE state = 1 AND next_rotation_time IS NOT NULL AND next_rotation_time <= @now AND (residency IS NULL{resident})
            ORDER BY next_rotation_time LIMIT @limit
            """, now, limit, cancellationToken, [.. regions.Select((region, i) => ($"@region{i}", (object)region))]);
    }

    /// <inheritdoc />
    /// <remarks>
    /// A destruction waiting out its back-off is left out here, in the query, so a hundred of them
    /// do not fill the batch; nor is a key listed for its versions while its own deletion is due.
    /// </remarks>
    public Task<IReadOnlyList<KeyName>> ListKeysDueForDestructionAsync(DateTimeOffset now, int limit, CancellationToken cancellationToken) =>
        ReadKeyNamesAsync("""
            SELECT tenant, key_id FROM keys
            WHERE state = 3 AND destroy_time <= @now AND (destroy_retry_time IS NULL OR destroy_retry_time <= @now)
            UNION
            SELECT v.tenant, v.key_id FROM key_versions v
            WHERE v.state = 3 AND v.destroy_time <= @now AND v.material IS NOT NULL AND (v.destroy_retry_time IS NULL OR v.destroy_retry_time <= @now)
              AND NOT EXISTS (SELECT 1 FROM keys k WHERE k.tenant = v.tenant AND k.key_id = v.key_id AND k.state = 3 AND k.destroy_time <= @now)
            LIMIT @limit
            """, now, limit, cancellationToken);

    /// <inheritdoc />
    public Task<IReadOnlyList<DestructionFailure>> ListDestructionFailuresAsync(CancellationToken cancellationToken) =>
        ReadAsync<IReadOnlyList<DestructionFailure>>(async connection =>
        {
            await using var command = Command(connection, """
                SELECT tenant, key_id, 0, destroy_failures, destroy_failing_since, destroy_retry_time FROM keys
                WHERE destroy_failures IS NOT NULL AND state = 3
                UNION ALL
                SELECT tenant, key_id, version, destroy_failures, destroy_failing_since, destroy_retry_time FROM key_versions
                WHERE destroy_failures IS NOT NULL AND state = 3 AND material IS NOT NULL
                """);
            await using var reader = await command.ExecuteReaderAsync(cancellationToken);
            var failures = new List<DestructionFailure>();
            while (await reader.ReadAsync(cancellationToken))
            {
                var version = reader.GetInt32(2);
                failures.Add(new DestructionFailure(
                    new KeyName(TenantId.Parse(reader.GetString(0)), reader.GetString(1)), version == 0 ? null : version, reader.GetInt32(3),
                    DateTimeOffset.FromUnixTimeMilliseconds(reader.GetInt64(4)), DateTimeOffset.FromUnixTimeMilliseconds(reader.GetInt64(5))));
            }

            return failures;
        }, cancellationToken);

    /// <inheritdoc />
    public Task RecordDestructionFailureAsync(DestructionFailure failure, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(failure);
        var (table, version) = failure.Version is { } number
            ? ("key_versions", " AND version = @version AND material IS NOT NULL")
            : ("keys", "");
        return WriteAsync(async (connection, transaction) =>
        {
            await using var update = Command(connection, $"""
                UPDATE {table} SET destroy_failures = @failures, destroy_failing_since = @since, destroy_retry_time = @retry
                WHERE tenant = @tenant AND key_id = @key_id AND state = 3{version}
                """,
                ("@failures", failure.Failures), ("@since", failure.Since.ToUnixTimeMilliseconds()), ("@retry", failure.RetryTime.ToUnixTimeMilliseconds()),
                ("@tenant", failure.Key.Tenant.Value), ("@key_id", failure.Key.KeyId), ("@version", failure.Version ?? 0));
            update.Transaction = transaction;
            return await update.ExecuteNonQueryAsync(cancellationToken);
        }, cancellationToken, announce: false, bookkeeping: true);
    }

    /// <inheritdoc />
    public Task<long> ReserveEncryptionsAsync(KeyVersionId id, long count, CancellationToken cancellationToken) =>
        WriteAsync(async (connection, transaction) =>
        {
            await using var update = Command(connection,
                "UPDATE key_versions SET encrypt_count = encrypt_count + @count WHERE version_id = @version_id RETURNING encrypt_count",
                ("@count", count), ("@version_id", id.ToBytes()));
            update.Transaction = transaction;
            return await update.ExecuteScalarAsync(cancellationToken) is long total
                ? total
                : throw KmsErrors.Internal($"no key version {id} to count encryptions for");
        }, cancellationToken, announce: false);

    /// <summary>
    /// Raises each version's durable encryption count to the count given for its version id,
    /// where it is lower; a version id this database does not hold is passed over. A restore
    /// carries in the counts of the database it replaces, which counted the encryptions made
    /// after the backup (claim 23's hard bound counts them again). One write.
    /// </summary>
    /// <returns>The versions raised, each with its count before and after.</returns>
    public Task<IReadOnlyList<(KeyVersionName Version, long Before, long After)>> RaiseEncryptCountsAsync(
        IReadOnlyList<(byte[] VersionId, long Count)> counts, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(counts);
        return WriteAsync<IReadOnlyList<(KeyVersionName, long, long)>>(async (connection, transaction) =>
        {
            var raised = new List<(KeyVersionName, long, long)>();
            foreach (var (id, count) in counts)
            {
                await using var read = Command(connection, "SELECT tenant, key_id, version, encrypt_count FROM key_versions WHERE version_id = @version_id", ("@version_id", id));
                read.Transaction = transaction;
                KeyVersionName? name = null;
                long before = 0;
                await using (var reader = await read.ExecuteReaderAsync(cancellationToken))
                {
                    if (await reader.ReadAsync(cancellationToken))
                    {
                        name = new KeyVersionName(new KeyName(TenantId.Parse(reader.GetString(0)), reader.GetString(1)), reader.GetInt32(2));
                        before = reader.GetInt64(3);
                    }
                }

                if (name is null || before >= count)
                {
                    continue;
                }

                await using var update = Command(connection, "UPDATE key_versions SET encrypt_count = @count WHERE version_id = @version_id", ("@count", count), ("@version_id", id));
                update.Transaction = transaction;
                await update.ExecuteNonQueryAsync(cancellationToken);
                raised.Add((name, before, count));
            }

            return raised;
        }, cancellationToken, announce: false);
    }

    private const string RecordUsageSql = """
        UPDATE key_versions SET
            decrypt_count = decrypt_count + @decryptions,
            last_encrypt_time = CASE WHEN @last_encrypt IS NOT NULL AND (last_encrypt_time IS NULL OR last_encrypt_time < @last_encrypt) THEN @last_encrypt ELSE last_encrypt_time END,
            last_decrypt_time = CASE WHEN @last_decrypt IS NOT NULL AND (last_decrypt_time IS NULL OR last_decrypt_time < @last_decrypt) THEN @last_decrypt ELSE last_decrypt_time END
        WHERE version_id = @version_id
        """;

    /// <inheritdoc />
    public Task<bool> RecordUsageAsync(UsageFlush flush, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(flush);
        var node = flush.Node.ToByteArray();
        return WriteAsync(async (connection, transaction) =>
        {
            // Under the write lock: no other write of this node's flushes can come between the
            // check and the record (the node sends one at a time anyway).
            await using (var applied = Command(connection, "SELECT sequence FROM usage_flushes WHERE node = @node", ("@node", node)))
            {
                applied.Transaction = transaction;
                if (await applied.ExecuteScalarAsync(cancellationToken) is long sequence && sequence >= flush.Sequence)
                {
                    return false;
                }
            }

            await WriteUsageDeltasAsync(connection, transaction, flush.Deltas, cancellationToken);

            // The node's last applied flush, and the nodes not heard of for a week forgotten (one
            // row per process that flushed: a restarted node is a new one).
            await using (var record = Command(connection, """
                INSERT INTO usage_flushes (node, sequence, time) VALUES (@node, @sequence, @time)
                ON CONFLICT (node) DO UPDATE SET sequence = excluded.sequence, time = excluded.time
                """, ("@node", node), ("@sequence", flush.Sequence), ("@time", flush.Time.ToUnixTimeMilliseconds())))
            {
                record.Transaction = transaction;
                await record.ExecuteNonQueryAsync(cancellationToken);
            }

            await using var forget = Command(connection, "DELETE FROM usage_flushes WHERE time < @before",
                ("@before", (flush.Time - UsageFlush.Retention).ToUnixTimeMilliseconds()));
            forget.Transaction = transaction;
            await forget.ExecuteNonQueryAsync(cancellationToken);
            return true;
        }, cancellationToken, announce: false);
    }

    private static async Task WriteUsageDeltasAsync(DbConnection connection, DbTransaction transaction, IReadOnlyCollection<UsageDelta> deltas, CancellationToken cancellationToken)
    {
        // A server (PostgreSQL) gets the rows a thousand to a round trip: one trip per row, tens
        // of thousands a flush under traffic spread over many keys, would hold the
        // deployment-wide write lock for seconds per node and pass.
        if (connection.CanCreateBatch)
        {
            foreach (var chunk in deltas.Chunk(1000))
            {
                await using var batch = connection.CreateBatch();
                batch.Transaction = transaction;
                foreach (var delta in chunk)
                {
                    var row = batch.CreateBatchCommand();
                    row.CommandText = RecordUsageSql;
                    foreach (var (name, value) in new[] { ("@decryptions", (object)delta.Decryptions), ("@last_encrypt", Millis(delta.LastEncryptTime)), ("@last_decrypt", Millis(delta.LastDecryptTime)), ("@version_id", delta.Id.ToBytes()) })
                    {
                        var parameter = row.CreateParameter();
                        parameter.ParameterName = name;
                        Bind(parameter, value);
                        row.Parameters.Add(parameter);
                    }

                    batch.BatchCommands.Add(row);
                }

                await batch.ExecuteNonQueryAsync(cancellationToken);
            }

            return;
        }

        // SQLite (in-process): one command for every row, prepared once and bound again per
        // row, so it compiles its SQL once, not once per version.
        await using var update = Command(connection, RecordUsageSql,
            ("@decryptions", 0L), ("@last_encrypt", NullInt64), ("@last_decrypt", NullInt64), ("@version_id", Array.Empty<byte>()));
        update.Transaction = transaction;
        await update.PrepareAsync(cancellationToken);
        var (decryptions, lastEncrypt, lastDecrypt, versionId) = (update.Parameters["@decryptions"], update.Parameters["@last_encrypt"], update.Parameters["@last_decrypt"], update.Parameters["@version_id"]);
        foreach (var delta in deltas)
        {
            Bind(decryptions, delta.Decryptions);
            Bind(lastEncrypt, Millis(delta.LastEncryptTime));
            Bind(lastDecrypt, Millis(delta.LastDecryptTime));
            Bind(versionId, delta.Id.ToBytes());
            await update.ExecuteNonQueryAsync(cancellationToken);
        }
    }

    /// <inheritdoc />
    public Task<string?> GetSettingAsync(string name, CancellationToken cancellationToken) =>
        ReadAsync(async connection =>
        {
            await using var command = Command(connection, "SELECT value FROM settings WHERE name = @name", ("@name", name));
            return await command.ExecuteScalarAsync(cancellationToken) as string;
        }, cancellationToken);

    /// <inheritdoc />
    public Task<string> SetSettingIfAbsentAsync(string name, string value, CancellationToken cancellationToken) =>
        WriteAsync(async (connection, transaction) =>
        {
            await using (var insert = Command(connection, "INSERT INTO settings (name, value) VALUES (@name, @value) ON CONFLICT (name) DO NOTHING", ("@name", name), ("@value", value)))
            {
                insert.Transaction = transaction;
                await insert.ExecuteNonQueryAsync(cancellationToken);
            }

            await using var select = Command(connection, "SELECT value FROM settings WHERE name = @name", ("@name", name));
            select.Transaction = transaction;
            return (string)(await select.ExecuteScalarAsync(cancellationToken))!;
        }, cancellationToken);

    /// <inheritdoc />
    public Task SetSettingAsync(string name, string value, CancellationToken cancellationToken) =>
        WriteAsync((connection, transaction) => UpsertSettingAsync(connection, transaction, name, value, cancellationToken), cancellationToken, announce: false);

    /// <inheritdoc />
    public virtual Task<DateTimeOffset?> GetDatabaseTimeAsync(CancellationToken cancellationToken) => Task.FromResult<DateTimeOffset?>(null);

    /// <inheritdoc />
    public Task CheckHealthAsync(CancellationToken cancellationToken) =>
        ReadAsync(async connection =>
        {
            await using var command = Command(connection, "SELECT count(*) FROM settings");
            return await command.ExecuteScalarAsync(cancellationToken);
        }, cancellationToken);

    private async Task<IReadOnlyList<KeyName>> ReadKeyNamesAsync(string sql, DateTimeOffset now, int limit, CancellationToken cancellationToken, params (string Name, object Value)[] more) =>
        await ReadAsync<IReadOnlyList<KeyName>>(async connection =>
        {
            await using var command = Command(connection, sql, [("@now", now.ToUnixTimeMilliseconds()), ("@limit", limit), .. more]);
            await using var reader = await command.ExecuteReaderAsync(cancellationToken);
            var names = new List<KeyName>();
            while (await reader.ReadAsync(cancellationToken))
            {
                names.Add(new KeyName(TenantId.Parse(reader.GetString(0)), reader.GetString(1)));
            }

            return names;
        }, cancellationToken);

    /// <summary>The backend's forward-only migrations.</summary>
    private protected abstract IReadOnlyList<SchemaMigration> Migrations { get; }

    /// <summary>The statement creating the table that records applied migrations (if absent).</summary>
    private protected abstract string MigrationTableSql { get; }

    /// <summary>
    /// Applies pending migrations under the write lock (nodes starting together take turns).
    /// A database at a newer schema is served only if every migration this code does not know
    /// declared this code's schema compatible (<see cref="SchemaMigration.CompatibleFrom"/>,
    /// recorded in the database as <see cref="SchemaCompatibleFromSetting"/>): that is how
    /// version N keeps serving while N+1 nodes roll out. Otherwise it refuses, never downgrades.
    /// </summary>
    private protected async Task MigrateAsync(CancellationToken cancellationToken, IReadOnlyList<SchemaMigration>? migrations = null)
    {
        // Tests stand in for another build of the server with another list.
        var known = migrations ?? Migrations;
        await using var connection = await OpenConnectionAsync(cancellationToken);
        await using var transaction = await BeginWriteAsync(connection, cancellationToken);
        await ExecuteAsync(connection, MigrationTableSql, cancellationToken, transaction);
        await using var current = Command(connection, "SELECT coalesce(max(version), 0) FROM schema_migrations");
        current.Transaction = transaction;
        var applied = Convert.ToInt32(await current.ExecuteScalarAsync(cancellationToken), CultureInfo.InvariantCulture);
        var latest = known[^1].Version;
        if (applied > latest)
        {
            // Recorded as "schema:floor" by whoever migrated to that schema; anything else is strict.
            var recorded = await SettingInAsync(connection, transaction, SchemaCompatibleFromSetting, cancellationToken);
            var compatibleFrom = recorded?.Split(':') is [var schema, var lowest] && schema == applied.ToString(CultureInfo.InvariantCulture)
                && int.TryParse(lowest, CultureInfo.InvariantCulture, out var value)
                ? value
                : applied;
            if (compatibleFrom > latest)
            {
                throw new InvalidOperationException(
                    $"the {Provider} database {Location} has schema version {applied}, which needs a server of schema {compatibleFrom} or newer; this server is at {latest}: upgrade it");
            }

            await CommitWriteAsync(connection, transaction);
            SchemaVersion = applied;
            return;
        }

        var floor = 0;
        foreach (var migration in known)
        {
            if (migration.Version > applied)
            {
                await ExecuteAsync(connection, migration.Sql, cancellationToken, transaction);
                await using var record = Command(connection, "INSERT INTO schema_migrations (version, applied_time) VALUES (@version, @time)",
                    ("@version", migration.Version), ("@time", DateTimeOffset.UtcNow.ToUnixTimeMilliseconds()));
                record.Transaction = transaction;
                await record.ExecuteNonQueryAsync(cancellationToken);
            }

            floor = Math.Max(floor, migration.CompatibleFrom ?? migration.Version);
        }

        if (latest > applied)
        {
            await UpsertSettingAsync(connection, transaction, SchemaCompatibleFromSetting, string.Create(CultureInfo.InvariantCulture, $"{latest}:{floor}"), cancellationToken);
        }

        await CommitWriteAsync(connection, transaction);
        SchemaVersion = latest;
    }

    /// <summary>The setting holding <c>schema:floor</c>: the database's schema and the lowest server schema that can serve it.</summary>
    public const string SchemaCompatibleFromSetting = "schema.compatible_from";

    /// <summary>The schema version of the database (after migration; newer than this code's during a rolling upgrade).</summary>
    public int SchemaVersion { get; private set; }

    // A key's change inside the caller's transaction: read fresh, decide, write. Returns the key
    // after it, whether material was erased (the caller checkpoints the WAL after the commit), and
    // whether anything was written (not for a missing key or a no-op decision).
    private static async Task<(KeyWithVersions? Result, bool Erased, bool Changed)> ApplyKeyChangeAsync(
        DbConnection connection, DbTransaction transaction, KeyName name, Func<KeyWithVersions, KeyChange> decide, string erasureMark, CancellationToken cancellationToken)
    {
        var erased = false;
        var current = await ReadKeyWithVersionsAsync(connection, transaction, name, cancellationToken);
        if (current is null)
        {
            return (null, false, false);
        }

        var change = decide(current);
        if (change.IsNoOp || (change.OnlyWhileTenantDeleting && !await TenantDeletingAsync(connection, transaction, name.Tenant, cancellationToken)))
        {
            return (current, false, false);
        }

        if (change.RefusedWhileTenantDeleting && await TenantDeletingAsync(connection, transaction, name.Tenant, cancellationToken))
        {
            throw KmsErrors.TenantDeleting(name.Tenant.ResourceName);
        }

        await InsertRequestAsync(connection, transaction, change.Request, cancellationToken);
        if (change.AddedVersion is { } added)
        {
            await RefuseImportedAgainAsync(connection, transaction, added.Version, cancellationToken);
            await InsertVersionAsync(connection, transaction, name, added.Version, added.Material, cancellationToken);
        }

        foreach (var version in change.UpdatedVersions)
        {
            if (version.State == KeyState.Destroyed)
            {
                await RecordChangeAsync(connection, transaction, StoreChangeKind.Material, version.Id.ToString(), cancellationToken);
            }

            if (version.State == KeyState.Destroyed && !erased)
            {
                // Durable with the erasure itself: if the checkpoint below cannot run now,
                // CompleteErasureAsync finishes it on a later pass, even after a restart.
                erased = true;
                await using var pending = Command(connection, $"INSERT INTO settings (name, value) VALUES (@name, {erasureMark}) ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                    ("@name", ErasurePendingSetting));
                pending.Transaction = transaction;
                await pending.ExecuteNonQueryAsync(cancellationToken);
            }

            await using var update = Command(connection, """
                UPDATE key_versions
                SET state = @state, destroy_time = @destroy_time, destroy_event_time = @destroy_event_time,
                    material = CASE WHEN @state = 4 THEN NULL ELSE material END,
                    destroy_failures = NULL, destroy_failing_since = NULL, destroy_retry_time = NULL
                WHERE tenant = @tenant AND key_id = @key_id AND version = @version
                """,
                ("@state", (int)version.State), ("@destroy_time", Millis(version.DestroyTime)), ("@destroy_event_time", Millis(version.DestroyEventTime)),
                ("@tenant", name.Tenant.Value), ("@key_id", name.KeyId), ("@version", version.Name.Version));
            update.Transaction = transaction;
            await update.ExecuteNonQueryAsync(cancellationToken);
        }

        await using (var updateKey = Command(connection, """
            UPDATE keys
            SET state = @state, primary_version = @primary_version, labels = @labels, rotation_period_ms = @rotation_period_ms,
                next_rotation_time = @next_rotation_time, min_decryption_version = @min_decryption_version, destroy_time = @destroy_time,
                destroy_failures = NULL, destroy_failing_since = NULL, destroy_retry_time = NULL
            WHERE tenant = @tenant AND key_id = @key_id
            """, KeyParameters(change.Key)))
        {
            updateKey.Transaction = transaction;
            await updateKey.ExecuteNonQueryAsync(cancellationToken);
        }

        return (await ReadKeyWithVersionsAsync(connection, transaction, name, cancellationToken), erased, true);
    }

    // Whether the tenant is DELETING, read inside the write's transaction (under the write lock).
    private static async Task<bool> TenantDeletingAsync(DbConnection connection, DbTransaction transaction, TenantId tenant, CancellationToken cancellationToken)
    {
        await using var check = Command(connection, "SELECT 1 FROM tenants WHERE id = @id AND state = @deleting",
            ("@id", tenant.Value), ("@deleting", (int)Kms.Core.Access.TenantState.Deleting));
        check.Transaction = transaction;
        return await check.ExecuteScalarAsync(cancellationToken) is not null;
    }

    private static async Task<Key?> ReadKeyAsync(DbConnection connection, DbTransaction? transaction, KeyName name, CancellationToken cancellationToken)
    {
        await using var command = Command(connection, $"SELECT {KeyColumns} {KeyJoin} WHERE k.tenant = @tenant AND k.key_id = @key_id",
            ("@tenant", name.Tenant.Value), ("@key_id", name.KeyId));
        command.Transaction = transaction;
        await using var reader = await command.ExecuteReaderAsync(cancellationToken);
        return await reader.ReadAsync(cancellationToken) ? ReadKey(reader) : null;
    }

    private static async Task<KeyWithVersions?> ReadKeyWithVersionsAsync(DbConnection connection, DbTransaction transaction, KeyName name, CancellationToken cancellationToken)
    {
        var key = await ReadKeyAsync(connection, transaction, name, cancellationToken);
        return key is null ? null : new KeyWithVersions(key, await ReadVersionsAsync(connection, transaction, name, 0, int.MaxValue, cancellationToken));
    }

    private static async Task<IReadOnlyList<KeyVersion>> ReadVersionsAsync(
        DbConnection connection, DbTransaction? transaction, KeyName key, int afterVersion, int limit, CancellationToken cancellationToken)
    {
        await using var command = Command(connection, $"""
            SELECT {OtherVersionColumns} FROM key_versions v
            WHERE v.tenant = @tenant AND v.key_id = @key_id AND v.version > @after
            ORDER BY v.version LIMIT @limit
            """,
            ("@tenant", key.Tenant.Value), ("@key_id", key.KeyId), ("@after", afterVersion), ("@limit", limit));
        command.Transaction = transaction;
        await using var reader = await command.ExecuteReaderAsync(cancellationToken);
        var versions = new List<KeyVersion>();
        while (await reader.ReadAsync(cancellationToken))
        {
            versions.Add(ReadVersion(reader, 0, key));
        }

        return versions;
    }

    private static async Task<KeyAlias?> ReadAliasAsync(DbConnection connection, DbTransaction? transaction, AliasName name, CancellationToken cancellationToken)
    {
        await using var command = Command(connection, "SELECT key_id, create_time, update_time FROM aliases WHERE tenant = @tenant AND alias_id = @alias_id",
            ("@tenant", name.Tenant.Value), ("@alias_id", name.AliasId));
        command.Transaction = transaction;
        await using var reader = await command.ExecuteReaderAsync(cancellationToken);
        return await reader.ReadAsync(cancellationToken) ? ReadAlias(reader, name) : null;
    }

    // An alias's key, read under the write lock: it exists, is not scheduled for deletion nor
    // destroyed, and its tenant is not being deleted (a ScheduleKeyDeletion or DeleteTenant that
    // committed after the service's own checks is seen here).
    private static async Task EnsureAliasTargetAsync(DbConnection connection, DbTransaction transaction, KeyName key, CancellationToken cancellationToken)
    {
        await RefuseInDeletingTenantAsync(connection, transaction, "@tenant", ("@tenant", key.Tenant.Value), cancellationToken);
        await using var state = Command(connection, "SELECT state FROM keys WHERE tenant = @tenant AND key_id = @key_id",
            ("@tenant", key.Tenant.Value), ("@key_id", key.KeyId));
        state.Transaction = transaction;
        var value = await state.ExecuteScalarAsync(cancellationToken) ?? throw KmsErrors.NotFound(key.ToString());
        Kms.Core.Services.KeyTransitions.EnsureAliasTarget(key, (KeyState)Convert.ToInt32(value, CultureInfo.InvariantCulture));
    }

    private static async Task EnsureKeyExistsAsync(DbConnection connection, DbTransaction transaction, KeyName key, CancellationToken cancellationToken)
    {
        await using var exists = Command(connection, "SELECT 1 FROM keys WHERE tenant = @tenant AND key_id = @key_id",
            ("@tenant", key.Tenant.Value), ("@key_id", key.KeyId));
        exists.Transaction = transaction;
        if (await exists.ExecuteScalarAsync(cancellationToken) is null)
        {
            throw KmsErrors.NotFound(key.ToString());
        }
    }

    private static async Task InsertRequestAsync(DbConnection connection, DbTransaction transaction, RequestRecord? request, CancellationToken cancellationToken)
    {
        if (request is null)
        {
            return;
        }

        await InsertAsync(connection, transaction, """
            INSERT INTO request_ids (tenant, request_id, operation, fingerprint, resource, create_time)
            VALUES (@tenant, @request_id, @operation, @fingerprint, @resource, @create_time)
            """,
            $"request {request.RequestId}",
            cancellationToken,
            ("@tenant", request.Tenant.Value), ("@request_id", request.RequestId), ("@operation", request.Operation),
            ("@fingerprint", request.Fingerprint), ("@resource", request.Resource), ("@create_time", request.CreateTime.ToUnixTimeMilliseconds()));
    }

    // A material its import job already imported, into any key: refused under the write lock, in
    // the transaction that would add it (the unique index key_versions_import_material backs it).
    private static async Task RefuseImportedAgainAsync(DbConnection connection, DbTransaction transaction, KeyVersion version, CancellationToken cancellationToken)
    {
        if (version.ImportFingerprint is not { } fingerprint || version.ImportJob is not { } job)
        {
            return;
        }

        await using var check = Command(connection, "SELECT 1 FROM key_versions WHERE import_job = @import_job AND import_fingerprint = @import_fingerprint",
            ("@import_job", job), ("@import_fingerprint", fingerprint));
        check.Transaction = transaction;
        if (await check.ExecuteScalarAsync(cancellationToken) is not null)
        {
            throw KmsErrors.MaterialAlreadyImported(job);
        }
    }

    private static Task InsertVersionAsync(DbConnection connection, DbTransaction transaction, KeyName key, KeyVersion version, WrappedKeyMaterial material, CancellationToken cancellationToken) =>
        InsertAsync(connection, transaction, """
            INSERT INTO key_versions (tenant, key_id, version, version_id, algorithm, state, material, create_time, origin, import_job, public_key, create_request, import_fingerprint)
            VALUES (@tenant, @key_id, @version, @version_id, @algorithm, @state, @material, @create_time, @origin, @import_job, @public_key, @create_request, @import_fingerprint)
            """,
            version.Name.ToString(),
            cancellationToken,
            ("@tenant", key.Tenant.Value), ("@key_id", key.KeyId), ("@version", version.Name.Version),
            ("@version_id", version.Id.ToBytes()), ("@algorithm", (int)version.Algorithm), ("@state", (int)version.State),
            ("@material", material.UnsafeArray), ("@create_time", version.CreateTime.ToUnixTimeMilliseconds()),
            ("@origin", (int)version.Origin), ("@import_job", (object?)version.ImportJob ?? DBNull.Value),
            ("@public_key", (object?)version.PublicKey?.ToArray() ?? DBNull.Value), ("@create_request", (object?)version.CreateRequest ?? DBNull.Value),
            ("@import_fingerprint", (object?)version.ImportFingerprint ?? DBNull.Value));

    private static (string, object)[] KeyParameters(Key key) =>
    [
        ("@tenant", key.Name.Tenant.Value), ("@key_id", key.Name.KeyId), ("@purpose", (int)key.Purpose), ("@state", (int)key.State),
        ("@primary_version", key.Primary.Name.Version), ("@create_time", key.CreateTime.ToUnixTimeMilliseconds()),
        ("@labels", JsonSerializer.Serialize(key.Labels.ToDictionary(kv => kv.Key, kv => kv.Value))),
        ("@rotation_period_ms", key.RotationPeriod is { } period ? (long)period.TotalMilliseconds : DBNull.Value),
        ("@next_rotation_time", Millis(key.NextRotationTime)), ("@min_decryption_version", key.MinDecryptionVersion),
        ("@destroy_time", Millis(key.DestroyTime)),
    ];

    private static string VersionColumns(string table) => string.Join(", ", VersionColumnNames.Select(column => $"{table}.{column}"));

    private static object Millis(DateTimeOffset? time) => time is { } value ? value.ToUnixTimeMilliseconds() : NullInt64;

    private static object Millis(TimeSpan? period) => period is { } value ? (long)value.TotalMilliseconds : NullInt64;

    // A NULL with a type: PostgreSQL cannot infer one for a parameter only tested (@p IS NULL).
    private static readonly object NullInt64 = new TypedNull(DbType.Int64);

    private static readonly object NullText = new TypedNull(DbType.String);

    private sealed record TypedNull(DbType Type);

    private static DateTimeOffset? ReadTime(DbDataReader reader, int column) =>
        reader.IsDBNull(column) ? null : DateTimeOffset.FromUnixTimeMilliseconds(reader.GetInt64(column));

    private static WrappedKeyMaterial? ReadMaterial(DbDataReader reader, int column) =>
        reader.IsDBNull(column) ? null : new WrappedKeyMaterial((byte[])reader[column]);

    private static Key ReadKey(DbDataReader reader)
    {
        var name = new KeyName(TenantId.Parse(reader.GetString(0)), reader.GetString(1));
        var labels = JsonSerializer.Deserialize<Dictionary<string, string>>(reader.GetString(5)) ?? [];
        return new Key(
            name,
            (KeyPurpose)reader.GetInt32(2),
            (KeyState)reader.GetInt32(3),
            ReadVersion(reader, 10, name),
            DateTimeOffset.FromUnixTimeMilliseconds(reader.GetInt64(4)),
            KeyLabels.Create(labels))
        {
            RotationPeriod = reader.IsDBNull(6) ? null : TimeSpan.FromMilliseconds(reader.GetInt64(6)),
            NextRotationTime = ReadTime(reader, 7),
            MinDecryptionVersion = reader.GetInt32(8),
            DestroyTime = ReadTime(reader, 9),
            Restricted = reader.GetInt64(10 + VersionColumnCount) != 0,
            Residency = reader.IsDBNull(11 + VersionColumnCount) ? null : reader.GetString(11 + VersionColumnCount),
            AllowImport = reader.GetInt64(12 + VersionColumnCount) != 0,
        };
    }

    private static KeyVersion ReadVersion(DbDataReader reader, int offset, KeyName key) =>
        new(
            key.Version(reader.GetInt32(offset)),
            KeyVersionId.FromBytes((byte[])reader[offset + 1]),
            (KeyState)reader.GetInt32(offset + 3),
            (KeyAlgorithm)reader.GetInt32(offset + 2),
            DateTimeOffset.FromUnixTimeMilliseconds(reader.GetInt64(offset + 4)))
        {
            DestroyTime = ReadTime(reader, offset + 5),
            DestroyEventTime = ReadTime(reader, offset + 6),
            Usage = new KeyVersionUsage(reader.GetInt64(offset + 7), reader.GetInt64(offset + 8), ReadTime(reader, offset + 9), ReadTime(reader, offset + 10)),
            Origin = (KeyOrigin)reader.GetInt32(offset + 11),
            ImportJob = reader.IsDBNull(offset + 12) ? null : reader.GetString(offset + 12),
            PublicKey = reader.IsDBNull(offset + 13) ? null : new SubjectPublicKey((byte[])reader[offset + 13]),
            CreateRequest = reader.IsDBNull(offset + 14) ? null : reader.GetString(offset + 14),
            ImportFingerprint = reader.IsDBNull(offset + 15) ? null : reader.GetString(offset + 15),
        };

    private static KeyAlias ReadAlias(DbDataReader reader, AliasName name) =>
        new(name, new KeyName(name.Tenant, reader.GetString(0)),
            DateTimeOffset.FromUnixTimeMilliseconds(reader.GetInt64(1)), DateTimeOffset.FromUnixTimeMilliseconds(reader.GetInt64(2)));

    private static async Task InsertAsync(
        DbConnection connection,
        DbTransaction transaction,
        string sql,
        string resource,
        CancellationToken cancellationToken,
        params (string Name, object Value)[] parameters)
    {
        await using var command = Command(connection, sql, parameters);
        command.Transaction = transaction;
        try
        {
            await command.ExecuteNonQueryAsync(cancellationToken);
        }
        catch (DbException e) when (IsConstraintViolation(e))
        {
            throw KmsErrors.AlreadyExists(resource);
        }
    }

    private protected static DbCommand Command(DbConnection connection, string sql, params (string Name, object Value)[] parameters)
    {
        var command = connection.CreateCommand();
        command.CommandText = sql;
        foreach (var (name, value) in parameters)
        {
            var parameter = command.CreateParameter();
            parameter.ParameterName = name;
            Bind(parameter, value);
            command.Parameters.Add(parameter);
        }

        return command;
    }

    /// <summary>
    /// Sets a parameter's value (a <see cref="TypedNull"/> as a NULL of its type): also how a command
    /// run once per row is bound again. A type a <see cref="TypedNull"/> set stays on the parameter,
    /// so bind each parameter with values of that one type.
    /// </summary>
    private protected static void Bind(DbParameter parameter, object value)
    {
        if (value is TypedNull typed)
        {
            parameter.DbType = typed.Type;
            parameter.Value = DBNull.Value;
        }
        else
        {
            parameter.Value = value;
        }
    }

    private protected static async Task ExecuteAsync(DbConnection connection, string sql, CancellationToken cancellationToken, DbTransaction? transaction = null)
    {
        await using var command = connection.CreateCommand();
        command.CommandText = sql;
        command.Transaction = transaction;
        await command.ExecuteNonQueryAsync(cancellationToken);
    }

    /// <summary>
    /// A read on the hot path (a metadata-cache miss): the first row of <paramref name="sql"/>, mapped,
    /// or null. A backend may keep the statement compiled between calls; by default it is a read like any other.
    /// </summary>
    private protected virtual Task<T?> HotReadAsync<T>(string sql, Func<DbDataReader, T> map, CancellationToken cancellationToken, params (string Name, object Value)[] parameters)
        where T : class =>
        ReadAsync<T?>(async connection =>
        {
            await using var command = Command(connection, sql, parameters);
            await using var reader = await command.ExecuteReaderAsync(cancellationToken);
            return await reader.ReadAsync(cancellationToken) ? map(reader) : null;
        }, cancellationToken);

    private protected Task<T> ReadAsync<T>(Func<DbConnection, Task<T>> read, CancellationToken cancellationToken) =>
        GuardAsync(async () =>
        {
            await using var connection = await OpenConnectionAsync(cancellationToken);
            return await read(connection);
        }, this);

    /// <summary>
    /// Called once, by the next write, just before it sends its COMMIT (a test seam: a test cuts the
    /// connection there, or lets the COMMIT through and loses its answer).
    /// </summary>
    internal Action? BeforeNextCommit
    {
        get => _beforeNextCommit;
        set => _beforeNextCommit = value;
    }

    private Action? _beforeNextCommit;

    // One BEGIN IMMEDIATE transaction: committed when the work returns, rolled back when it throws.
    // Events the work itself adds (a quorum execution's) follow the request's own, in the same transaction.
    // Every write that may change what the hot path remembers is announced in the change feed
    // (other nodes and processes forget theirs) and forgets this store's own once it has
    // committed — or failed, which may mean committed. Usage counters and the audit's own
    // bookkeeping change nothing remembered and are not announced. With changed, a write that
    // returns having changed nothing (a no-op decision) is neither announced nor forgotten.
    // Bookkeeping (the lifecycle's record of a failed destruction) never carries the event of the
    // scope it runs in: made under a destruction's scope, it would commit "destroyed" for a failure.
    private Task<T> WriteAsync<T>(Func<DbConnection, DbTransaction, Task<T>> work, CancellationToken cancellationToken, Func<T, IReadOnlyList<AuditEntry>>? trailingEvents = null, bool announce = true, Func<T, bool>? changed = null, bool bookkeeping = false) =>
        GuardAsync(async () =>
        {
            var forget = announce; // a write that failed may have committed
            try
            {
                var (result, announced) = await WriteCoreAsync(work, trailingEvents, announce, changed, bookkeeping, cancellationToken);
                forget = announced;
                return result;
            }
            finally
            {
                if (forget)
                {
                    _metadata.Invalidate();
                }
            }
        }, this);

    // Returns the work's result and whether the write was announced (and so must be forgotten here too).
    private async Task<(T Result, bool Announced)> WriteCoreAsync<T>(Func<DbConnection, DbTransaction, Task<T>> work, Func<T, IReadOnlyList<AuditEntry>>? trailingEvents, bool announce, Func<T, bool>? changed, bool bookkeeping, CancellationToken cancellationToken)
    {
        await using var connection = await OpenConnectionAsync(cancellationToken);
        await using var transaction = await BeginWriteAsync(connection, cancellationToken);

        // A request's first write that changes something carries its audit event (one transaction).
        var scope = bookkeeping ? null : AuditScope.Current;
        var entry = scope?.TakeForWrite();
        var before = entry is null ? 0 : await WriteMarkAsync(connection, transaction, cancellationToken);
        var result = await work(connection, transaction);
        var audited = entry is not null && await WriteMarkAsync(connection, transaction, cancellationToken) > before;
        var announced = announce && (changed?.Invoke(result) ?? true);
        if (announced)
        {
            await RecordChangeAsync(connection, transaction, StoreChangeKind.Metadata, "", cancellationToken);
        }

        IReadOnlyList<AuditEntry> trailing = trailingEvents?.Invoke(result) ?? [];
        if (audited || trailing.Count > 0)
        {
            await AppendAuditInAsync(connection, transaction, audited ? [entry!, .. trailing] : trailing, cancellationToken);
        }

        Interlocked.Exchange(ref _beforeNextCommit, null)?.Invoke();
        await CommitWriteAsync(connection, transaction);
        if (audited)
        {
            scope!.Committed();
        }

        return (result, announced);
    }

    // Database faults (locked too long, disk full, I/O) are retryable UNAVAILABLE; the
    // SQLite message stays in the server log (inner exception), never in the answer.
    // With the store (every call on an open store), its OnDatabaseFault runs first. A string
    // the database cannot store (a NUL: PostgreSQL's 22021) is the request's fault, not the
    // database's: INVALID_ARGUMENT.
    private protected static async Task<T> GuardAsync<T>(Func<Task<T>> operation, SqlStore? store = null)
    {
        try
        {
            return await operation();
        }
        catch (DbException e) when (IsUnstorableText(e))
        {
            throw KmsErrors.RefusedByDatabase(e);
        }
        catch (DbException e)
        {
            store?.OnDatabaseFault(e);
            if (store?.GaveUpWaiting(e) == true)
            {
                // The request has had its timeout: its failure's audit event is not waited for as long again.
                AuditScope.Current?.TimedOut();
                throw KmsErrors.DatabaseGaveUpWaiting(e);
            }

            throw KmsErrors.Unavailable("the database is unavailable; retry shortly", e);
        }
    }

    /// <summary>
    /// Whether a statement failed because it waited out a timeout — for the write lock another
    /// session held, or for the database to answer — rather than being refused at once.
    /// </summary>
    private protected abstract bool GaveUpWaiting(DbException exception);

    /// <summary><see cref="GaveUpWaiting"/>, for the audit writer.</summary>
    internal bool GaveUpWaitingOn(DbException exception) => GaveUpWaiting(exception);

    /// <summary>
    /// Called after a statement failed, once its connection is back in the pool: a backend whose
    /// pooled connections can be left unusable by the fault drops them here.
    /// </summary>
    private protected virtual void OnDatabaseFault(DbException exception)
    {
    }
}
