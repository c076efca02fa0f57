using System.Data;
using System.Text.Json;
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
public sealed class SqliteKeyStore : IKeyStore
{
    private const int SqliteConstraint = 19;

    private const string KeyColumns = """
        k.tenant, k.key_id, k.purpose, k.state, k.create_time, k.labels,
        p.version, p.version_id, p.algorithm, p.state, p.create_time
        """;

    private const string KeyJoin = """
        FROM keys k
        JOIN key_versions p ON p.tenant = k.tenant AND p.key_id = k.key_id AND p.version = k.primary_version
        """;

    private readonly string _connectionString;
    private readonly string _pragmas;

    private SqliteKeyStore(SqliteOptions options)
    {
        _connectionString = new SqliteConnectionStringBuilder
        {
            DataSource = options.DatabasePath,
            Mode = SqliteOpenMode.ReadWriteCreate,
            Cache = SqliteCacheMode.Private,
            Pooling = true,
            DefaultTimeout = (int)Math.Ceiling(options.BusyTimeout.TotalSeconds),
        }.ToString();
        _pragmas = $"PRAGMA synchronous = FULL; PRAGMA secure_delete = ON; PRAGMA foreign_keys = ON; PRAGMA busy_timeout = {(int)options.BusyTimeout.TotalMilliseconds};";
        DatabasePath = Path.GetFullPath(options.DatabasePath);
    }

    /// <summary>The database file.</summary>
    public string DatabasePath { get; }

    /// <summary>Opens (creating if needed) the database and applies pending migrations.</summary>
    public static async Task<SqliteKeyStore> OpenAsync(SqliteOptions options, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(options);
        var directory = Path.GetDirectoryName(Path.GetFullPath(options.DatabasePath));
        if (directory is not null)
        {
            Directory.CreateDirectory(directory);
        }

        CreateOwnerOnly(options.DatabasePath);

        var store = new SqliteKeyStore(options);
        await using var connection = await store.OpenConnectionAsync(cancellationToken);
        await ExecuteAsync(connection, "PRAGMA journal_mode = WAL;", cancellationToken);
        await store.MigrateAsync(connection, cancellationToken);
        return store;
    }

    /// <inheritdoc />
    public Task CreateKeyAsync(Key key, WrappedKeyMaterial primaryMaterial, RequestRecord? request, CancellationToken cancellationToken) =>
        GuardAsync(async () =>
        {
            await using var connection = await OpenConnectionAsync(cancellationToken);
            await using var transaction = (SqliteTransaction)await connection.BeginTransactionAsync(IsolationLevel.Serializable, cancellationToken);
            if (request is not null)
            {
                await InsertAsync(connection, transaction, """
                    INSERT INTO request_ids (tenant, request_id, operation, fingerprint, resource, create_time)
                    VALUES ($tenant, $request_id, $operation, $fingerprint, $resource, $create_time)
                    """,
                    $"request {request.RequestId}",
                    cancellationToken,
                    ("$tenant", request.Tenant.Value), ("$request_id", request.RequestId), ("$operation", request.Operation),
                    ("$fingerprint", request.Fingerprint), ("$resource", request.Resource), ("$create_time", request.CreateTime.ToUnixTimeMilliseconds()));
            }

            await InsertAsync(connection, transaction, """
                INSERT INTO keys (tenant, key_id, purpose, state, primary_version, create_time, labels)
                VALUES ($tenant, $key_id, $purpose, $state, $primary_version, $create_time, $labels)
                """,
                key.Name.ToString(),
                cancellationToken,
                ("$tenant", key.Name.Tenant.Value), ("$key_id", key.Name.KeyId), ("$purpose", (int)key.Purpose), ("$state", (int)key.State),
                ("$primary_version", key.Primary.Name.Version), ("$create_time", key.CreateTime.ToUnixTimeMilliseconds()),
                ("$labels", JsonSerializer.Serialize(key.Labels.ToDictionary(kv => kv.Key, kv => kv.Value))));

            var version = key.Primary;
            await InsertAsync(connection, transaction, """
                INSERT INTO key_versions (tenant, key_id, version, version_id, algorithm, state, material, create_time)
                VALUES ($tenant, $key_id, $version, $version_id, $algorithm, $state, $material, $create_time)
                """,
                version.Name.ToString(),
                cancellationToken,
                ("$tenant", key.Name.Tenant.Value), ("$key_id", key.Name.KeyId), ("$version", version.Name.Version),
                ("$version_id", version.Id.ToBytes()), ("$algorithm", (int)version.Algorithm), ("$state", (int)version.State),
                ("$material", primaryMaterial.UnsafeArray), ("$create_time", version.CreateTime.ToUnixTimeMilliseconds()));

            await transaction.CommitAsync(cancellationToken);
            return 0;
        });

    /// <inheritdoc />
    public Task<Key?> GetKeyAsync(KeyName name, CancellationToken cancellationToken) =>
        GuardAsync(async () =>
        {
            await using var connection = await OpenConnectionAsync(cancellationToken);
            await using var command = Command(connection, $"SELECT {KeyColumns} {KeyJoin} WHERE k.tenant = $tenant AND k.key_id = $key_id",
                ("$tenant", name.Tenant.Value), ("$key_id", name.KeyId));
            await using var reader = await command.ExecuteReaderAsync(cancellationToken);
            return await reader.ReadAsync(cancellationToken) ? ReadKey(reader) : null;
        });

    /// <inheritdoc />
    public Task<IReadOnlyList<Key>> ListKeysAsync(TenantId tenant, string? afterKeyId, int limit, CancellationToken cancellationToken) =>
        GuardAsync<IReadOnlyList<Key>>(async () =>
        {
            await using var connection = await OpenConnectionAsync(cancellationToken);
            await using var command = Command(connection,
                $"SELECT {KeyColumns} {KeyJoin} WHERE k.tenant = $tenant AND k.key_id > $after ORDER BY k.key_id LIMIT $limit",
                ("$tenant", tenant.Value), ("$after", afterKeyId ?? ""), ("$limit", limit));
            await using var reader = await command.ExecuteReaderAsync(cancellationToken);
            var keys = new List<Key>();
            while (await reader.ReadAsync(cancellationToken))
            {
                keys.Add(ReadKey(reader));
            }

            return keys;
        });

    /// <inheritdoc />
    public Task<KeyVersionMaterial?> GetPrimaryMaterialAsync(KeyName name, CancellationToken cancellationToken) =>
        GuardAsync(async () =>
        {
            await using var connection = await OpenConnectionAsync(cancellationToken);
            await using var command = Command(connection,
                $"SELECT {KeyColumns}, p.material {KeyJoin} WHERE k.tenant = $tenant AND k.key_id = $key_id",
                ("$tenant", name.Tenant.Value), ("$key_id", name.KeyId));
            await using var reader = await command.ExecuteReaderAsync(cancellationToken);
            if (!await reader.ReadAsync(cancellationToken) || reader.IsDBNull(11))
            {
                return null;
            }

            var key = ReadKey(reader);
            return new KeyVersionMaterial(key, key.Primary, new WrappedKeyMaterial((byte[])reader[11]));
        });

    /// <inheritdoc />
    public Task<KeyVersionMaterial?> FindVersionMaterialAsync(TenantId tenant, KeyVersionId id, CancellationToken cancellationToken) =>
        GuardAsync(async () =>
        {
            await using var connection = await OpenConnectionAsync(cancellationToken);
            await using var command = Command(connection, $"""
                SELECT {KeyColumns}, v.version, v.algorithm, v.state, v.create_time, v.material
                {KeyJoin}
                JOIN key_versions v ON v.tenant = k.tenant AND v.key_id = k.key_id
                WHERE v.version_id = $version_id AND v.tenant = $tenant
                """,
                ("$tenant", tenant.Value), ("$version_id", id.ToBytes()));
            await using var reader = await command.ExecuteReaderAsync(cancellationToken);
            if (!await reader.ReadAsync(cancellationToken) || reader.IsDBNull(15))
            {
                return null;
            }

            var key = ReadKey(reader);
            var version = new KeyVersion(
                key.Name.Version(reader.GetInt32(11)),
                id,
                (KeyState)reader.GetInt32(13),
                (KeyAlgorithm)reader.GetInt32(12),
                DateTimeOffset.FromUnixTimeMilliseconds(reader.GetInt64(14)));
            return new KeyVersionMaterial(key, version, new WrappedKeyMaterial((byte[])reader[15]));
        });

    /// <inheritdoc />
    public Task<RequestRecord?> FindRequestAsync(TenantId tenant, string requestId, CancellationToken cancellationToken) =>
        GuardAsync(async () =>
        {
            await using var connection = await OpenConnectionAsync(cancellationToken);
            await using var command = Command(connection,
                "SELECT operation, fingerprint, resource, create_time FROM request_ids WHERE tenant = $tenant AND request_id = $request_id",
                ("$tenant", tenant.Value), ("$request_id", requestId));
            await using var reader = await command.ExecuteReaderAsync(cancellationToken);
            return await reader.ReadAsync(cancellationToken)
                ? new RequestRecord(tenant, requestId, reader.GetString(0), (byte[])reader[1], reader.GetString(2), DateTimeOffset.FromUnixTimeMilliseconds(reader.GetInt64(3)))
                : null;
        });

    /// <inheritdoc />
    public Task<string?> GetSettingAsync(string name, CancellationToken cancellationToken) =>
        GuardAsync(async () =>
        {
            await using var connection = await OpenConnectionAsync(cancellationToken);
            await using var command = Command(connection, "SELECT value FROM settings WHERE name = $name", ("$name", name));
            return await command.ExecuteScalarAsync(cancellationToken) as string;
        });

    /// <inheritdoc />
    public Task<string> SetSettingIfAbsentAsync(string name, string value, CancellationToken cancellationToken) =>
        GuardAsync(async () =>
        {
            await using var connection = await OpenConnectionAsync(cancellationToken);
            await using var transaction = (SqliteTransaction)await connection.BeginTransactionAsync(IsolationLevel.Serializable, cancellationToken);
            await using (var insert = Command(connection, "INSERT INTO settings (name, value) VALUES ($name, $value) ON CONFLICT (name) DO NOTHING", ("$name", name), ("$value", value)))
            {
                insert.Transaction = transaction;
                await insert.ExecuteNonQueryAsync(cancellationToken);
            }

            await using var select = Command(connection, "SELECT value FROM settings WHERE name = $name", ("$name", name));
            select.Transaction = transaction;
            var stored = (string)(await select.ExecuteScalarAsync(cancellationToken))!;
            await transaction.CommitAsync(cancellationToken);
            return stored;
        });

    /// <inheritdoc />
    public Task CheckHealthAsync(CancellationToken cancellationToken) =>
        GuardAsync(async () =>
        {
            await using var connection = await OpenConnectionAsync(cancellationToken);
            await using var command = Command(connection, "SELECT count(*) FROM settings");
            return await command.ExecuteScalarAsync(cancellationToken);
        });

    /// <summary>Reads a pragma on a fresh connection as the store configures it (tests check durability settings with it).</summary>
    internal async Task<string?> ReadPragmaAsync(string pragma, CancellationToken cancellationToken)
    {
        await using var connection = await OpenConnectionAsync(cancellationToken);
        await using var command = Command(connection, $"PRAGMA {pragma}");
        return Convert.ToString(await command.ExecuteScalarAsync(cancellationToken), System.Globalization.CultureInfo.InvariantCulture);
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

    private async Task<SqliteConnection> OpenConnectionAsync(CancellationToken cancellationToken)
    {
        var connection = new SqliteConnection(_connectionString);
        try
        {
            await connection.OpenAsync(cancellationToken);
            await ExecuteAsync(connection, _pragmas, cancellationToken);
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
        var applied = Convert.ToInt32(await current.ExecuteScalarAsync(cancellationToken), System.Globalization.CultureInfo.InvariantCulture);
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

    private static Key ReadKey(SqliteDataReader reader)
    {
        var name = new KeyName(TenantId.Parse(reader.GetString(0)), reader.GetString(1));
        var labels = JsonSerializer.Deserialize<Dictionary<string, string>>(reader.GetString(5)) ?? [];
        var primary = new KeyVersion(
            name.Version(reader.GetInt32(6)),
            KeyVersionId.FromBytes((byte[])reader[7]),
            (KeyState)reader.GetInt32(9),
            (KeyAlgorithm)reader.GetInt32(8),
            DateTimeOffset.FromUnixTimeMilliseconds(reader.GetInt64(10)));
        return new Key(
            name,
            (KeyPurpose)reader.GetInt32(2),
            (KeyState)reader.GetInt32(3),
            primary,
            DateTimeOffset.FromUnixTimeMilliseconds(reader.GetInt64(4)),
            KeyLabels.Create(labels));
    }

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
