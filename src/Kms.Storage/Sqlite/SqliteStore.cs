using System.Data;
using System.Globalization;
using System.Text.Json;
using Kms.Core.Audit;
using Kms.Core.Crypto;
using Kms.Core.Errors;
using Kms.Core.Keys;
using Kms.Core.Names;
using Kms.Core.Ports;
using Microsoft.Data.Sqlite;

namespace Kms.Storage.Sqlite;

/// <summary>
/// <see cref="IKeyStore"/> on one SQLite file: WAL with <c>synchronous=FULL</c> (a
/// committed transaction survives power loss), <c>secure_delete=ON</c> (deleted material
/// is overwritten, not left in free pages), foreign keys on.
/// </summary>
/// <remarks>
/// Writes run in <c>BEGIN IMMEDIATE</c> transactions, so changes of one key are serialised.
/// When a change erases material (a version DESTROYED), the WAL is checkpointed and
/// truncated right after the commit, so the old wrapped bytes are in neither the database
/// file nor its <c>-wal</c>.
/// </remarks>
public sealed partial class SqliteStore : IKeyStore, IAccessStore, IAuditStore, IDisposable, IAsyncDisposable
{
    private const int SqliteConstraint = 19;
    private const string ErasurePendingSetting = "store.erasure_pending";

    // Declared before the fields built from it (static initialisers run in order).
    private static readonly string[] VersionColumnNames =
    [
        "version", "version_id", "algorithm", "state", "create_time", "destroy_time", "destroy_event_time",
        "encrypt_count", "decrypt_count", "last_encrypt_time", "last_decrypt_time",
        "origin", "import_job", "public_key", "create_request",
    ];

    private static readonly int VersionColumnCount = VersionColumnNames.Length;

    private static readonly string PrimaryColumns = VersionColumns("p");

    private static readonly string OtherVersionColumns = VersionColumns("v");

    private static readonly string KeyColumns = """
        k.tenant, k.key_id, k.purpose, k.state, k.create_time, k.labels,
        k.rotation_period_ms, k.next_rotation_time, k.min_decryption_version, k.destroy_time,
        """ + PrimaryColumns + ", k.restricted";

    private static readonly int KeyColumnCount = 10 + VersionColumnCount + 1;

    private const string KeyJoin = """
        FROM keys k
        JOIN key_versions p ON p.tenant = k.tenant AND p.key_id = k.key_id AND p.version = k.primary_version
        """;

    private readonly string _connectionString;
    private readonly string _unpooledConnectionString;
    private readonly string _pragmas;
    private readonly AuditWriter _auditWriter;

    // Physical connections (pooled) that have had the pragmas applied; they keep them.
    private readonly System.Runtime.CompilerServices.ConditionalWeakTable<object, object> _configured = [];

    private SqliteStore(SqliteOptions options)
    {
        _connectionString = new SqliteConnectionStringBuilder
        {
            DataSource = options.DatabasePath,
            Mode = SqliteOpenMode.ReadWriteCreate,
            Cache = SqliteCacheMode.Private,
            Pooling = true,
            DefaultTimeout = (int)Math.Ceiling(options.BusyTimeout.TotalSeconds),
        }.ToString();

        // The audit writer's connection lives as long as the store; closing it (after a failure) must really close it.
        _unpooledConnectionString = new SqliteConnectionStringBuilder(_connectionString) { Pooling = false }.ToString();
        _auditWriter = new AuditWriter(cancellationToken => OpenConnectionAsync(cancellationToken, pooled: false));
        _pragmas = $"PRAGMA synchronous = FULL; PRAGMA secure_delete = ON; PRAGMA foreign_keys = ON; PRAGMA busy_timeout = {(int)options.BusyTimeout.TotalMilliseconds};";
        DatabasePath = Path.GetFullPath(options.DatabasePath);
    }

    /// <summary>The database file.</summary>
    public string DatabasePath { get; }

    /// <summary>Opens (creating if needed) the database and applies pending migrations.</summary>
    public static async Task<SqliteStore> OpenAsync(SqliteOptions options, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(options);
        var directory = Path.GetDirectoryName(Path.GetFullPath(options.DatabasePath));
        if (directory is not null)
        {
            Directory.CreateDirectory(directory);
        }

        CreateOwnerOnly(options.DatabasePath);
        var store = new SqliteStore(options);
        await using var connection = await store.OpenConnectionAsync(cancellationToken);
        await ExecuteAsync(connection, "PRAGMA journal_mode = WAL;", cancellationToken);
        await store.MigrateAsync(connection, cancellationToken);
        return store;
    }

    /// <summary>Closes the audit writer's connection; pooled connections are the pool's.</summary>
    public ValueTask DisposeAsync() => _auditWriter.DisposeAsync();

    /// <inheritdoc cref="DisposeAsync" />
    public void Dispose() => _auditWriter.Dispose();

    /// <inheritdoc />
    public Task CreateKeyAsync(Key key, WrappedKeyMaterial primaryMaterial, RequestRecord? request, CancellationToken cancellationToken) =>
        WriteAsync(async (connection, transaction) =>
        {
            await InsertRequestAsync(connection, transaction, request, cancellationToken);
            await InsertAsync(connection, transaction, """
                INSERT INTO keys (tenant, key_id, purpose, state, primary_version, create_time, labels,
                                  rotation_period_ms, next_rotation_time, min_decryption_version, destroy_time)
                VALUES ($tenant, $key_id, $purpose, $state, $primary_version, $create_time, $labels,
                        $rotation_period_ms, $next_rotation_time, $min_decryption_version, $destroy_time)
                """,
                key.Name.ToString(), cancellationToken, KeyParameters(key));
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
            await using var command = Command(connection, $"SELECT {KeyColumns} {KeyJoin} WHERE k.tenant = $tenant AND k.key_id > $after ORDER BY k.key_id LIMIT $limit",
                ("$tenant", tenant.Value), ("$after", afterKeyId ?? ""), ("$limit", limit));
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
    public async Task<KeyWithVersions?> UpdateKeyAsync(KeyName name, Func<KeyWithVersions, KeyChange> decide, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(decide);
        var (result, erased) = await WriteAsync((connection, transaction) => ApplyKeyChangeAsync(connection, transaction, name, decide, cancellationToken), cancellationToken);
        if (erased)
        {
            await CompleteErasureAsync(cancellationToken);
        }

        return result;
    }

    /// <inheritdoc />
    public Task<bool> CompleteErasureAsync(CancellationToken cancellationToken) =>
        GuardAsync(async () =>
        {
            await using var connection = await OpenConnectionAsync(cancellationToken);
            await using (var check = Command(connection, "SELECT 1 FROM settings WHERE name = $name", ("$name", ErasurePendingSetting)))
            {
                if (await check.ExecuteScalarAsync(cancellationToken) is null)
                {
                    return true;
                }
            }

            if (!await TryCheckpointTruncateAsync(connection, cancellationToken))
            {
                return false;
            }

            // Cleared only after the truncation: a crash in between just repeats a harmless checkpoint.
            await using var clear = Command(connection, "DELETE FROM settings WHERE name = $name", ("$name", ErasurePendingSetting));
            await clear.ExecuteNonQueryAsync(cancellationToken);
            return true;
        });

    /// <inheritdoc />
    public Task<KeyVersionMaterial?> GetPrimaryMaterialAsync(KeyName name, CancellationToken cancellationToken) =>
        ReadAsync(async connection =>
        {
            await using var command = Command(connection,
                $"SELECT {KeyColumns}, p.material {KeyJoin} WHERE k.tenant = $tenant AND k.key_id = $key_id",
                ("$tenant", name.Tenant.Value), ("$key_id", name.KeyId));
            await using var reader = await command.ExecuteReaderAsync(cancellationToken);
            if (!await reader.ReadAsync(cancellationToken))
            {
                return null;
            }

            var key = ReadKey(reader);
            return new KeyVersionMaterial(key, key.Primary, ReadMaterial(reader, KeyColumnCount));
        }, cancellationToken);

    /// <inheritdoc />
    public Task<KeyVersionMaterial?> FindVersionMaterialAsync(TenantId tenant, KeyVersionId id, CancellationToken cancellationToken) =>
        ReadAsync(async connection =>
        {
            await using var command = Command(connection, $"""
                SELECT {KeyColumns}, {OtherVersionColumns}, v.material
                {KeyJoin}
                JOIN key_versions v ON v.tenant = k.tenant AND v.key_id = k.key_id
                WHERE v.version_id = $version_id AND v.tenant = $tenant
                """,
                ("$tenant", tenant.Value), ("$version_id", id.ToBytes()));
            await using var reader = await command.ExecuteReaderAsync(cancellationToken);
            if (!await reader.ReadAsync(cancellationToken))
            {
                return null;
            }

            var key = ReadKey(reader);
            return new KeyVersionMaterial(key, ReadVersion(reader, KeyColumnCount, key.Name), ReadMaterial(reader, KeyColumnCount + VersionColumnCount));
        }, cancellationToken);

    /// <inheritdoc />
    public Task<RequestRecord?> FindRequestAsync(TenantId tenant, string requestId, CancellationToken cancellationToken) =>
        ReadAsync(async connection =>
        {
            await using var command = Command(connection,
                "SELECT operation, fingerprint, resource, create_time FROM request_ids WHERE tenant = $tenant AND request_id = $request_id",
                ("$tenant", tenant.Value), ("$request_id", requestId));
            await using var reader = await command.ExecuteReaderAsync(cancellationToken);
            return await reader.ReadAsync(cancellationToken)
                ? new RequestRecord(tenant, requestId, reader.GetString(0), (byte[])reader[1], reader.GetString(2), DateTimeOffset.FromUnixTimeMilliseconds(reader.GetInt64(3)))
                : null;
        }, cancellationToken);

    /// <inheritdoc />
    public Task CreateAliasAsync(KeyAlias alias, RequestRecord? request, CancellationToken cancellationToken) =>
        WriteAsync(async (connection, transaction) =>
        {
            await EnsureKeyExistsAsync(connection, transaction, alias.Key, cancellationToken);
            await InsertRequestAsync(connection, transaction, request, cancellationToken);
            await InsertAsync(connection, transaction,
                "INSERT INTO aliases (tenant, alias_id, key_id, create_time, update_time) VALUES ($tenant, $alias_id, $key_id, $create_time, $update_time)",
                alias.Name.ToString(), cancellationToken,
                ("$tenant", alias.Name.Tenant.Value), ("$alias_id", alias.Name.AliasId), ("$key_id", alias.Key.KeyId),
                ("$create_time", alias.CreateTime.ToUnixTimeMilliseconds()), ("$update_time", alias.UpdateTime.ToUnixTimeMilliseconds()));
            return 0;
        }, cancellationToken);

    /// <inheritdoc />
    public Task<KeyAlias?> GetAliasAsync(AliasName name, CancellationToken cancellationToken) =>
        ReadAsync(connection => ReadAliasAsync(connection, null, name, cancellationToken), cancellationToken);

    /// <inheritdoc />
    public Task<KeyAlias?> UpdateAliasAsync(AliasName name, KeyName key, DateTimeOffset updateTime, CancellationToken cancellationToken) =>
        WriteAsync<KeyAlias?>(async (connection, transaction) =>
        {
            if (await ReadAliasAsync(connection, transaction, name, cancellationToken) is null)
            {
                return null;
            }

            await EnsureKeyExistsAsync(connection, transaction, key, cancellationToken);
            await using var update = Command(connection,
                "UPDATE aliases SET key_id = $key_id, update_time = $update_time WHERE tenant = $tenant AND alias_id = $alias_id RETURNING key_id, create_time, update_time",
                ("$key_id", key.KeyId), ("$update_time", updateTime.ToUnixTimeMilliseconds()), ("$tenant", name.Tenant.Value), ("$alias_id", name.AliasId));
            update.Transaction = transaction;
            await using var reader = await update.ExecuteReaderAsync(cancellationToken);
            if (!await reader.ReadAsync(cancellationToken))
            {
                return null;
            }

            return ReadAlias(reader, name);
        }, cancellationToken);

    /// <inheritdoc />
    public Task<bool> DeleteAliasAsync(AliasName name, RequestRecord? request, CancellationToken cancellationToken) =>
        WriteAsync(async (connection, transaction) =>
        {
            await using var delete = Command(connection, "DELETE FROM aliases WHERE tenant = $tenant AND alias_id = $alias_id",
                ("$tenant", name.Tenant.Value), ("$alias_id", name.AliasId));
            delete.Transaction = transaction;
            if (await delete.ExecuteNonQueryAsync(cancellationToken) == 0)
            {
                return false;
            }

            await InsertRequestAsync(connection, transaction, request, cancellationToken);
            return true;
        }, cancellationToken);

    /// <inheritdoc />
    public Task<IReadOnlyList<KeyAlias>> ListAliasesAsync(TenantId tenant, string? afterAliasId, int limit, CancellationToken cancellationToken) =>
        ReadAsync<IReadOnlyList<KeyAlias>>(async connection =>
        {
            await using var command = Command(connection,
                "SELECT key_id, create_time, update_time, alias_id FROM aliases WHERE tenant = $tenant AND alias_id > $after ORDER BY alias_id LIMIT $limit",
                ("$tenant", tenant.Value), ("$after", afterAliasId ?? ""), ("$limit", limit));
            await using var reader = await command.ExecuteReaderAsync(cancellationToken);
            var aliases = new List<KeyAlias>();
            while (await reader.ReadAsync(cancellationToken))
            {
                aliases.Add(ReadAlias(reader, new AliasName(tenant, reader.GetString(3))));
            }

            return aliases;
        }, cancellationToken);

    /// <inheritdoc />
    public Task<IReadOnlyList<KeyName>> ListKeysDueForRotationAsync(DateTimeOffset now, int limit, CancellationToken cancellationToken) =>
        ReadKeyNamesAsync("""
            SELECT tenant, key_id FROM keys
            WHERE state = 1 AND next_rotation_time IS NOT NULL AND next_rotation_time <= $now
            ORDER BY next_rotation_time LIMIT $limit
            """, now, limit, cancellationToken);

    /// <inheritdoc />
    public Task<IReadOnlyList<KeyName>> ListKeysDueForDestructionAsync(DateTimeOffset now, int limit, CancellationToken cancellationToken) =>
        ReadKeyNamesAsync("""
            SELECT tenant, key_id FROM keys WHERE state = 3 AND destroy_time <= $now
            UNION
            SELECT tenant, key_id FROM key_versions WHERE state = 3 AND destroy_time <= $now AND material IS NOT NULL
            LIMIT $limit
            """, now, limit, cancellationToken);

    /// <inheritdoc />
    public Task<long> ReserveEncryptionsAsync(KeyVersionId id, long count, CancellationToken cancellationToken) =>
        WriteAsync(async (connection, transaction) =>
        {
            await using var update = Command(connection,
                "UPDATE key_versions SET encrypt_count = encrypt_count + $count WHERE version_id = $version_id RETURNING encrypt_count",
                ("$count", count), ("$version_id", id.ToBytes()));
            update.Transaction = transaction;
            return await update.ExecuteScalarAsync(cancellationToken) is long total
                ? total
                : throw KmsErrors.Internal($"no key version {id} to count encryptions for");
        }, cancellationToken);

    /// <inheritdoc />
    public Task RecordUsageAsync(IReadOnlyCollection<UsageDelta> deltas, CancellationToken cancellationToken) =>
        WriteAsync(async (connection, transaction) =>
        {
            foreach (var delta in deltas)
            {
                await using var update = Command(connection, """
                    UPDATE key_versions SET
                        decrypt_count = decrypt_count + $decryptions,
                        last_encrypt_time = CASE WHEN $last_encrypt IS NOT NULL AND (last_encrypt_time IS NULL OR last_encrypt_time < $last_encrypt) THEN $last_encrypt ELSE last_encrypt_time END,
                        last_decrypt_time = CASE WHEN $last_decrypt IS NOT NULL AND (last_decrypt_time IS NULL OR last_decrypt_time < $last_decrypt) THEN $last_decrypt ELSE last_decrypt_time END
                    WHERE version_id = $version_id
                    """,
                    ("$decryptions", delta.Decryptions), ("$last_encrypt", Millis(delta.LastEncryptTime)), ("$last_decrypt", Millis(delta.LastDecryptTime)),
                    ("$version_id", delta.Id.ToBytes()));
                update.Transaction = transaction;
                await update.ExecuteNonQueryAsync(cancellationToken);
            }

            return 0;
        }, cancellationToken);

    /// <inheritdoc />
    public Task<string?> GetSettingAsync(string name, CancellationToken cancellationToken) =>
        ReadAsync(async connection =>
        {
            await using var command = Command(connection, "SELECT value FROM settings WHERE name = $name", ("$name", name));
            return await command.ExecuteScalarAsync(cancellationToken) as string;
        }, cancellationToken);

    /// <inheritdoc />
    public Task<string> SetSettingIfAbsentAsync(string name, string value, CancellationToken cancellationToken) =>
        WriteAsync(async (connection, transaction) =>
        {
            await using (var insert = Command(connection, "INSERT INTO settings (name, value) VALUES ($name, $value) ON CONFLICT (name) DO NOTHING", ("$name", name), ("$value", value)))
            {
                insert.Transaction = transaction;
                await insert.ExecuteNonQueryAsync(cancellationToken);
            }

            await using var select = Command(connection, "SELECT value FROM settings WHERE name = $name", ("$name", name));
            select.Transaction = transaction;
            return (string)(await select.ExecuteScalarAsync(cancellationToken))!;
        }, cancellationToken);

    /// <inheritdoc />
    public Task CheckHealthAsync(CancellationToken cancellationToken) =>
        ReadAsync(async connection =>
        {
            await using var command = Command(connection, "SELECT count(*) FROM settings");
            return await command.ExecuteScalarAsync(cancellationToken);
        }, cancellationToken);

    /// <summary>Reads a pragma on a fresh connection as the store configures it (tests check durability settings with it).</summary>
    internal async Task<string?> ReadPragmaAsync(string pragma, CancellationToken cancellationToken)
    {
        await using var connection = await OpenConnectionAsync(cancellationToken);
        await using var command = Command(connection, $"PRAGMA {pragma}");
        return Convert.ToString(await command.ExecuteScalarAsync(cancellationToken), CultureInfo.InvariantCulture);
    }

    // Copies the WAL into the database file (where secure_delete has zeroed the erased bytes)
    // and truncates the WAL to zero length, so no old frame still holds erased material.
    // A reader holding an older snapshot prevents it: a few short tries (about a second in
    // all, never the full busy timeout), then the caller retries on a later pass.
    private static async Task<bool> TryCheckpointTruncateAsync(SqliteConnection connection, CancellationToken cancellationToken)
    {
        await ExecuteAsync(connection, "PRAGMA busy_timeout = 100;", cancellationToken);
        for (var attempt = 0; attempt < 8; attempt++)
        {
            await using var command = Command(connection, "PRAGMA wal_checkpoint(TRUNCATE)");
            await using var reader = await command.ExecuteReaderAsync(cancellationToken);

            // Columns: busy (0 when the checkpoint completed), WAL frames, frames checkpointed.
            if (await reader.ReadAsync(cancellationToken) && reader.GetInt64(0) == 0)
            {
                return true;
            }

            await Task.Delay(25, cancellationToken);
        }

        return false;
    }

    // The file holds wrapped key material: readable by the service's user only. SQLite gives
    // its -wal and -shm files the database file's permissions.
    private static void CreateOwnerOnly(string path)
    {
        if (File.Exists(path) || OperatingSystem.IsWindows())
        {
            return;
        }

        using var _ = new FileStream(path, new FileStreamOptions
        {
            Mode = FileMode.CreateNew,
            Access = FileAccess.Write,
            UnixCreateMode = UnixFileMode.UserRead | UnixFileMode.UserWrite,
        });
    }

    private async Task<IReadOnlyList<KeyName>> ReadKeyNamesAsync(string sql, DateTimeOffset now, int limit, CancellationToken cancellationToken) =>
        await ReadAsync<IReadOnlyList<KeyName>>(async connection =>
        {
            await using var command = Command(connection, sql, ("$now", now.ToUnixTimeMilliseconds()), ("$limit", limit));
            await using var reader = await command.ExecuteReaderAsync(cancellationToken);
            var names = new List<KeyName>();
            while (await reader.ReadAsync(cancellationToken))
            {
                names.Add(new KeyName(TenantId.Parse(reader.GetString(0)), reader.GetString(1)));
            }

            return names;
        }, cancellationToken);

    private async Task<SqliteConnection> OpenConnectionAsync(CancellationToken cancellationToken, bool pooled = true)
    {
        var connection = new SqliteConnection(pooled ? _connectionString : _unpooledConnectionString);
        try
        {
            await connection.OpenAsync(cancellationToken);

            // Once per physical connection: a pooled connection keeps its pragmas.
            if (!_configured.TryGetValue(connection.Handle!, out _))
            {
                await ExecuteAsync(connection, _pragmas, cancellationToken);
                _configured.AddOrUpdate(connection.Handle!, this);
            }

            return connection;
        }
        catch
        {
            await connection.DisposeAsync();
            throw;
        }
    }

    private async Task MigrateAsync(SqliteConnection connection, CancellationToken cancellationToken)
    {
        await using var transaction = (SqliteTransaction)await connection.BeginTransactionAsync(IsolationLevel.Serializable, cancellationToken);
        await ExecuteAsync(connection, "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_time INTEGER NOT NULL) STRICT;", cancellationToken, transaction);
        await using var current = Command(connection, "SELECT coalesce(max(version), 0) FROM schema_migrations");
        current.Transaction = transaction;
        var applied = Convert.ToInt32(await current.ExecuteScalarAsync(cancellationToken), CultureInfo.InvariantCulture);
        if (applied > SqliteSchema.LatestVersion)
        {
            throw new InvalidOperationException(
                $"the database {DatabasePath} has schema version {applied}, newer than this server's {SqliteSchema.LatestVersion}; upgrade the server");
        }

        foreach (var (version, sql) in SqliteSchema.Migrations.Where(m => m.Version > applied))
        {
            await ExecuteAsync(connection, sql, cancellationToken, transaction);
            await using var record = Command(connection, "INSERT INTO schema_migrations (version, applied_time) VALUES ($version, $time)",
                ("$version", version), ("$time", DateTimeOffset.UtcNow.ToUnixTimeMilliseconds()));
            record.Transaction = transaction;
            await record.ExecuteNonQueryAsync(cancellationToken);
        }

        await transaction.CommitAsync(cancellationToken);
    }

    // A key's change inside the caller's transaction: read fresh, decide, write. Returns the key
    // after it, and whether material was erased (the caller checkpoints the WAL after the commit).
    private static async Task<(KeyWithVersions? Result, bool Erased)> ApplyKeyChangeAsync(
        SqliteConnection connection, SqliteTransaction transaction, KeyName name, Func<KeyWithVersions, KeyChange> decide, CancellationToken cancellationToken)
    {
        var erased = false;
        var current = await ReadKeyWithVersionsAsync(connection, transaction, name, cancellationToken);
        if (current is null)
        {
            return (null, false);
        }

        var change = decide(current);
        if (change.IsNoOp)
        {
            return (current, false);
        }

        await InsertRequestAsync(connection, transaction, change.Request, cancellationToken);
        if (change.AddedVersion is { } added)
        {
            await InsertVersionAsync(connection, transaction, name, added.Version, added.Material, cancellationToken);
        }

        foreach (var version in change.UpdatedVersions)
        {
            if (version.State == KeyState.Destroyed && !erased)
            {
                // Durable with the erasure itself: if the checkpoint below cannot run now,
                // CompleteErasureAsync finishes it on a later pass, even after a restart.
                erased = true;
                await using var pending = Command(connection, "INSERT INTO settings (name, value) VALUES ($name, '1') ON CONFLICT (name) DO UPDATE SET value = '1'",
                    ("$name", ErasurePendingSetting));
                pending.Transaction = transaction;
                await pending.ExecuteNonQueryAsync(cancellationToken);
            }

            await using var update = Command(connection, """
                UPDATE key_versions
                SET state = $state, destroy_time = $destroy_time, destroy_event_time = $destroy_event_time,
                    material = CASE WHEN $state = 4 THEN NULL ELSE material END
                WHERE tenant = $tenant AND key_id = $key_id AND version = $version
                """,
                ("$state", (int)version.State), ("$destroy_time", Millis(version.DestroyTime)), ("$destroy_event_time", Millis(version.DestroyEventTime)),
                ("$tenant", name.Tenant.Value), ("$key_id", name.KeyId), ("$version", version.Name.Version));
            update.Transaction = transaction;
            await update.ExecuteNonQueryAsync(cancellationToken);
        }

        await using (var updateKey = Command(connection, """
            UPDATE keys
            SET state = $state, primary_version = $primary_version, labels = $labels, rotation_period_ms = $rotation_period_ms,
                next_rotation_time = $next_rotation_time, min_decryption_version = $min_decryption_version, destroy_time = $destroy_time
            WHERE tenant = $tenant AND key_id = $key_id
            """, KeyParameters(change.Key)))
        {
            updateKey.Transaction = transaction;
            await updateKey.ExecuteNonQueryAsync(cancellationToken);
        }

        return (await ReadKeyWithVersionsAsync(connection, transaction, name, cancellationToken), erased);
    }

    private static async Task<Key?> ReadKeyAsync(SqliteConnection connection, SqliteTransaction? transaction, KeyName name, CancellationToken cancellationToken)
    {
        await using var command = Command(connection, $"SELECT {KeyColumns} {KeyJoin} WHERE k.tenant = $tenant AND k.key_id = $key_id",
            ("$tenant", name.Tenant.Value), ("$key_id", name.KeyId));
        command.Transaction = transaction;
        await using var reader = await command.ExecuteReaderAsync(cancellationToken);
        return await reader.ReadAsync(cancellationToken) ? ReadKey(reader) : null;
    }

    private static async Task<KeyWithVersions?> ReadKeyWithVersionsAsync(SqliteConnection connection, SqliteTransaction transaction, KeyName name, CancellationToken cancellationToken)
    {
        var key = await ReadKeyAsync(connection, transaction, name, cancellationToken);
        return key is null ? null : new KeyWithVersions(key, await ReadVersionsAsync(connection, transaction, name, 0, int.MaxValue, cancellationToken));
    }

    private static async Task<IReadOnlyList<KeyVersion>> ReadVersionsAsync(
        SqliteConnection connection, SqliteTransaction? transaction, KeyName key, int afterVersion, int limit, CancellationToken cancellationToken)
    {
        await using var command = Command(connection, $"""
            SELECT {OtherVersionColumns} FROM key_versions v
            WHERE v.tenant = $tenant AND v.key_id = $key_id AND v.version > $after
            ORDER BY v.version LIMIT $limit
            """,
            ("$tenant", key.Tenant.Value), ("$key_id", key.KeyId), ("$after", afterVersion), ("$limit", limit));
        command.Transaction = transaction;
        await using var reader = await command.ExecuteReaderAsync(cancellationToken);
        var versions = new List<KeyVersion>();
        while (await reader.ReadAsync(cancellationToken))
        {
            versions.Add(ReadVersion(reader, 0, key));
        }

        return versions;
    }

    private static async Task<KeyAlias?> ReadAliasAsync(SqliteConnection connection, SqliteTransaction? transaction, AliasName name, CancellationToken cancellationToken)
    {
        await using var command = Command(connection, "SELECT key_id, create_time, update_time FROM aliases WHERE tenant = $tenant AND alias_id = $alias_id",
            ("$tenant", name.Tenant.Value), ("$alias_id", name.AliasId));
        command.Transaction = transaction;
        await using var reader = await command.ExecuteReaderAsync(cancellationToken);
        return await reader.ReadAsync(cancellationToken) ? ReadAlias(reader, name) : null;
    }

    private static async Task EnsureKeyExistsAsync(SqliteConnection connection, SqliteTransaction transaction, KeyName key, CancellationToken cancellationToken)
    {
        await using var exists = Command(connection, "SELECT 1 FROM keys WHERE tenant = $tenant AND key_id = $key_id",
            ("$tenant", key.Tenant.Value), ("$key_id", key.KeyId));
        exists.Transaction = transaction;
        if (await exists.ExecuteScalarAsync(cancellationToken) is null)
        {
            throw KmsErrors.NotFound(key.ToString());
        }
    }

    private static async Task InsertRequestAsync(SqliteConnection connection, SqliteTransaction transaction, RequestRecord? request, CancellationToken cancellationToken)
    {
        if (request is null)
        {
            return;
        }

        await InsertAsync(connection, transaction, """
            INSERT INTO request_ids (tenant, request_id, operation, fingerprint, resource, create_time)
            VALUES ($tenant, $request_id, $operation, $fingerprint, $resource, $create_time)
            """,
            $"request {request.RequestId}",
            cancellationToken,
            ("$tenant", request.Tenant.Value), ("$request_id", request.RequestId), ("$operation", request.Operation),
            ("$fingerprint", request.Fingerprint), ("$resource", request.Resource), ("$create_time", request.CreateTime.ToUnixTimeMilliseconds()));
    }

    private static Task InsertVersionAsync(SqliteConnection connection, SqliteTransaction transaction, KeyName key, KeyVersion version, WrappedKeyMaterial material, CancellationToken cancellationToken) =>
        InsertAsync(connection, transaction, """
            INSERT INTO key_versions (tenant, key_id, version, version_id, algorithm, state, material, create_time, origin, import_job, public_key, create_request)
            VALUES ($tenant, $key_id, $version, $version_id, $algorithm, $state, $material, $create_time, $origin, $import_job, $public_key, $create_request)
            """,
            version.Name.ToString(),
            cancellationToken,
            ("$tenant", key.Tenant.Value), ("$key_id", key.KeyId), ("$version", version.Name.Version),
            ("$version_id", version.Id.ToBytes()), ("$algorithm", (int)version.Algorithm), ("$state", (int)version.State),
            ("$material", material.UnsafeArray), ("$create_time", version.CreateTime.ToUnixTimeMilliseconds()),
            ("$origin", (int)version.Origin), ("$import_job", (object?)version.ImportJob ?? DBNull.Value),
            ("$public_key", (object?)version.PublicKey?.ToArray() ?? DBNull.Value), ("$create_request", (object?)version.CreateRequest ?? DBNull.Value));

    private static (string, object)[] KeyParameters(Key key) =>
    [
        ("$tenant", key.Name.Tenant.Value), ("$key_id", key.Name.KeyId), ("$purpose", (int)key.Purpose), ("$state", (int)key.State),
        ("$primary_version", key.Primary.Name.Version), ("$create_time", key.CreateTime.ToUnixTimeMilliseconds()),
        ("$labels", JsonSerializer.Serialize(key.Labels.ToDictionary(kv => kv.Key, kv => kv.Value))),
        ("$rotation_period_ms", key.RotationPeriod is { } period ? (long)period.TotalMilliseconds : DBNull.Value),
        ("$next_rotation_time", Millis(key.NextRotationTime)), ("$min_decryption_version", key.MinDecryptionVersion),
        ("$destroy_time", Millis(key.DestroyTime)),
    ];

    private static string VersionColumns(string table) => string.Join(", ", VersionColumnNames.Select(column => $"{table}.{column}"));

    private static object Millis(DateTimeOffset? time) => time is { } value ? value.ToUnixTimeMilliseconds() : DBNull.Value;

    private static DateTimeOffset? ReadTime(SqliteDataReader reader, int column) =>
        reader.IsDBNull(column) ? null : DateTimeOffset.FromUnixTimeMilliseconds(reader.GetInt64(column));

    private static WrappedKeyMaterial? ReadMaterial(SqliteDataReader reader, int column) =>
        reader.IsDBNull(column) ? null : new WrappedKeyMaterial((byte[])reader[column]);

    private static Key ReadKey(SqliteDataReader reader)
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
        };
    }

    private static KeyVersion ReadVersion(SqliteDataReader reader, int offset, KeyName key) =>
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
        };

    private static KeyAlias ReadAlias(SqliteDataReader reader, AliasName name) =>
        new(name, new KeyName(name.Tenant, reader.GetString(0)),
            DateTimeOffset.FromUnixTimeMilliseconds(reader.GetInt64(1)), DateTimeOffset.FromUnixTimeMilliseconds(reader.GetInt64(2)));

    private static async Task InsertAsync(
        SqliteConnection connection,
        SqliteTransaction transaction,
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
        catch (SqliteException e) when (e.SqliteErrorCode == SqliteConstraint)
        {
            throw KmsErrors.AlreadyExists(resource);
        }
    }

    private static SqliteCommand Command(SqliteConnection connection, string sql, params (string Name, object Value)[] parameters)
    {
        var command = connection.CreateCommand();
        command.CommandText = sql;
        foreach (var (name, value) in parameters)
        {
            command.Parameters.AddWithValue(name, value);
        }

        return command;
    }

    private static async Task ExecuteAsync(SqliteConnection connection, string sql, CancellationToken cancellationToken, SqliteTransaction? transaction = null)
    {
        await using var command = connection.CreateCommand();
        command.CommandText = sql;
        command.Transaction = transaction;
        await command.ExecuteNonQueryAsync(cancellationToken);
    }

    private Task<T> ReadAsync<T>(Func<SqliteConnection, Task<T>> read, CancellationToken cancellationToken) =>
        GuardAsync(async () =>
        {
            await using var connection = await OpenConnectionAsync(cancellationToken);
            return await read(connection);
        });

    // One BEGIN IMMEDIATE transaction: committed when the work returns, rolled back when it throws.
    // Events the work itself adds (a quorum execution's) follow the request's own, in the same transaction.
    private Task<T> WriteAsync<T>(Func<SqliteConnection, SqliteTransaction, Task<T>> work, CancellationToken cancellationToken, Func<T, IReadOnlyList<AuditEntry>>? trailingEvents = null) =>
        GuardAsync(async () =>
        {
            await using var connection = await OpenConnectionAsync(cancellationToken);
            await using var transaction = (SqliteTransaction)await connection.BeginTransactionAsync(IsolationLevel.Serializable, cancellationToken);

            // A request's first write that changes something carries its audit event (one transaction).
            var scope = AuditScope.Current;
            var entry = scope?.TakeForWrite();
            var before = entry is null ? 0 : await TotalChangesAsync(connection, transaction, cancellationToken);
            var result = await work(connection, transaction);
            var audited = entry is not null && await TotalChangesAsync(connection, transaction, cancellationToken) > before;
            IReadOnlyList<AuditEntry> trailing = trailingEvents?.Invoke(result) ?? [];
            if (audited || trailing.Count > 0)
            {
                await AppendAuditInAsync(connection, transaction, audited ? [entry!, .. trailing] : trailing, cancellationToken);
            }

            await transaction.CommitAsync(cancellationToken);
            if (audited)
            {
                scope!.Committed();
            }

            return result;
        });

    // Database faults (locked too long, disk full, I/O) are retryable UNAVAILABLE; the
    // SQLite message stays in the server log (inner exception), never in the answer.
    private static async Task<T> GuardAsync<T>(Func<Task<T>> operation)
    {
        try
        {
            return await operation();
        }
        catch (SqliteException e)
        {
            throw KmsErrors.Unavailable("the database is unavailable; retry shortly", e);
        }
    }
}
