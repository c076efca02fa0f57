using Kms.Core.Audit;
using Kms.Core.Keys;
using Kms.Core.Names;
using Microsoft.Data.Sqlite;

namespace Kms.Storage.Sqlite;

/// <summary>What a snapshot holds: its schema version and the last audit event in it.</summary>
/// <param name="SchemaVersion">The schema migration the snapshot is at.</param>
/// <param name="AuditHead">The audit chain head inside the snapshot.</param>
public sealed record SqliteSnapshot(int SchemaVersion, AuditHead AuditHead);

public sealed partial class SqliteStore
{
    /// <summary>
    /// Writes a transactionally consistent copy of the database to <paramref name="path"/>
    /// (<c>VACUUM INTO</c>: one read transaction, so every row is as of one commit), owner-only,
    /// and reads back what it holds.
    /// </summary>
    /// <remarks>
    /// The copy is the database: key material in it is wrapped under the domain key, as in the
    /// live file; plaintext keys are never stored, so none can be in it. Destroyed material is
    /// NULL in the live rows and <c>VACUUM</c> writes no free pages, so none of it is copied.
    /// </remarks>
    /// <exception cref="Kms.Core.Errors.KmsException">Unavailable when the database cannot be read or the file written.</exception>
    public Task<SqliteSnapshot> SnapshotAsync(string path, CancellationToken cancellationToken)
    {
        ArgumentException.ThrowIfNullOrEmpty(path);
        var full = Path.GetFullPath(path);
        if (File.Exists(full) && new FileInfo(full).Length > 0)
        {
            throw new IOException($"{full} exists; a snapshot never overwrites a file");
        }

        CreateOwnerOnly(full);
        return GuardAsync(async () =>
        {
            await using (var connection = await OpenConnectionAsync(cancellationToken))
            {
                await using var vacuum = Command(connection, "VACUUM INTO @path", ("@path", full));
                await vacuum.ExecuteNonQueryAsync(cancellationToken);
            }

            // The manifest signed next must not name a snapshot a power loss can take back. SQLite
            // does not promise to sync VACUUM INTO's output (the bundled build does, by strace), so
            // it is synced here whatever the build.
            using (var written = new FileStream(full, FileMode.Open, FileAccess.ReadWrite))
            {
                written.Flush(flushToDisk: true);
            }

            return await ReadSnapshotAsync(full, cancellationToken);
        });
    }

    /// <summary>Reads a snapshot file's schema version and audit head without changing it (read-only, no migration).</summary>
    /// <exception cref="Kms.Core.Errors.KmsException">Unavailable when the file is not a readable database.</exception>
    public static Task<SqliteSnapshot> ReadSnapshotAsync(string path, CancellationToken cancellationToken) =>
        GuardAsync(async () =>
        {
            var builder = new SqliteConnectionStringBuilder { DataSource = path, Mode = SqliteOpenMode.ReadOnly, Pooling = false };
            await using var connection = new SqliteConnection(builder.ToString());
            await connection.OpenAsync(cancellationToken);
            await using var version = Command(connection, "SELECT coalesce(max(version), 0) FROM schema_migrations");
            var schema = Convert.ToInt32(await version.ExecuteScalarAsync(cancellationToken), System.Globalization.CultureInfo.InvariantCulture);
            return new SqliteSnapshot(schema, await ReadHeadAsync(connection, null, cancellationToken));
        });

    /// <summary>
    /// The DESTROYED versions of a database file, read-only (no migration, nothing written):
    /// what a restore re-applies from the database it replaces.
    /// </summary>
    /// <exception cref="Kms.Core.Errors.KmsException">Unavailable when the file is not a readable database.</exception>
    public static Task<IReadOnlyList<(KeyVersionName Version, DateTimeOffset Time)>> ReadDestroyedVersionsAsync(string path, CancellationToken cancellationToken) =>
        GuardAsync<IReadOnlyList<(KeyVersionName, DateTimeOffset)>>(async () =>
        {
            var builder = new SqliteConnectionStringBuilder { DataSource = path, Mode = SqliteOpenMode.ReadOnly, Pooling = false };
            await using var connection = new SqliteConnection(builder.ToString());
            await connection.OpenAsync(cancellationToken);
            await using var command = Command(connection, """
                SELECT tenant, key_id, version, coalesce(destroy_event_time, destroy_time, 0)
                FROM key_versions WHERE state = @destroyed ORDER BY tenant, key_id, version
                """, ("@destroyed", (int)KeyState.Destroyed));
            await using var reader = await command.ExecuteReaderAsync(cancellationToken);
            var destroyed = new List<(KeyVersionName, DateTimeOffset)>();
            while (await reader.ReadAsync(cancellationToken))
            {
                var key = new KeyName(TenantId.Parse(reader.GetString(0)), reader.GetString(1));
                destroyed.Add((new KeyVersionName(key, reader.GetInt32(2)), DateTimeOffset.FromUnixTimeMilliseconds(reader.GetInt64(3))));
            }

            return destroyed;
        });

    /// <summary>
    /// The durable encryption count of every version of a database file, by version id,
    /// read-only: what a restore over it carries into the snapshot where it is higher
    /// (<see cref="SqlStore.RaiseEncryptCountsAsync"/>).
    /// </summary>
    /// <exception cref="Kms.Core.Errors.KmsException">Unavailable when the file is not a readable database.</exception>
    public static Task<IReadOnlyList<(byte[] VersionId, long Count)>> ReadEncryptCountsAsync(string path, CancellationToken cancellationToken) =>
        GuardAsync<IReadOnlyList<(byte[], long)>>(async () =>
        {
            var builder = new SqliteConnectionStringBuilder { DataSource = path, Mode = SqliteOpenMode.ReadOnly, Pooling = false };
            await using var connection = new SqliteConnection(builder.ToString());
            await connection.OpenAsync(cancellationToken);
            await using var command = Command(connection, "SELECT version_id, encrypt_count FROM key_versions WHERE encrypt_count > 0 ORDER BY version_id");
            await using var reader = await command.ExecuteReaderAsync(cancellationToken);
            var counts = new List<(byte[], long)>();
            while (await reader.ReadAsync(cancellationToken))
            {
                counts.Add(((byte[])reader.GetValue(0), reader.GetInt64(1)));
            }

            return counts;
        });

    /// <summary>
    /// The keys and versions of a database file that are DESTROY_SCHEDULED (with their destroy
    /// time) or DISABLED, read-only: what a restore over it schedules or disables again in the
    /// snapshot (<see cref="Kms.Core.Backup.SchedulingReplay"/>). A null version is the key itself.
    /// </summary>
    /// <exception cref="Kms.Core.Errors.KmsException">Unavailable when the file is not a readable database.</exception>
    public static Task<IReadOnlyList<(KeyName Key, int? Version, KeyState State, DateTimeOffset? DestroyTime)>> ReadRestrictedAsync(string path, CancellationToken cancellationToken) =>
        GuardAsync<IReadOnlyList<(KeyName, int?, KeyState, DateTimeOffset?)>>(async () =>
        {
            var builder = new SqliteConnectionStringBuilder { DataSource = path, Mode = SqliteOpenMode.ReadOnly, Pooling = false };
            await using var connection = new SqliteConnection(builder.ToString());
            await connection.OpenAsync(cancellationToken);
            await using var command = Command(connection, """
                SELECT tenant, key_id, NULL, state, destroy_time FROM keys WHERE state IN (@scheduled, @disabled)
                UNION ALL
                SELECT tenant, key_id, version, state, destroy_time FROM key_versions WHERE state IN (@scheduled, @disabled)
                ORDER BY 1, 2, 3
                """, ("@scheduled", (int)KeyState.DestroyScheduled), ("@disabled", (int)KeyState.Disabled));
            await using var reader = await command.ExecuteReaderAsync(cancellationToken);
            var restricted = new List<(KeyName, int?, KeyState, DateTimeOffset?)>();
            while (await reader.ReadAsync(cancellationToken))
            {
                restricted.Add((
                    new KeyName(TenantId.Parse(reader.GetString(0)), reader.GetString(1)),
                    reader.IsDBNull(2) ? null : reader.GetInt32(2),
                    (KeyState)reader.GetInt32(3),
                    reader.IsDBNull(4) ? null : DateTimeOffset.FromUnixTimeMilliseconds(reader.GetInt64(4))));
            }

            return restricted;
        });

    /// <summary>
    /// The DELETING tenants of a database file, with when their deletion was asked for, read-only:
    /// what a restore over it makes DELETING again in the snapshot.
    /// </summary>
    /// <exception cref="Kms.Core.Errors.KmsException">Unavailable when the file is not a readable database.</exception>
    public static Task<IReadOnlyList<(TenantId Tenant, DateTimeOffset? DeleteTime)>> ReadDeletingTenantsAsync(string path, CancellationToken cancellationToken) =>
        GuardAsync<IReadOnlyList<(TenantId, DateTimeOffset?)>>(async () =>
        {
            var builder = new SqliteConnectionStringBuilder { DataSource = path, Mode = SqliteOpenMode.ReadOnly, Pooling = false };
            await using var connection = new SqliteConnection(builder.ToString());
            await connection.OpenAsync(cancellationToken);
            await using var command = Command(connection, "SELECT id, delete_time FROM tenants WHERE state = @deleting ORDER BY id", ("@deleting", (int)Kms.Core.Access.TenantState.Deleting));
            await using var reader = await command.ExecuteReaderAsync(cancellationToken);
            var deleting = new List<(TenantId, DateTimeOffset?)>();
            while (await reader.ReadAsync(cancellationToken))
            {
                deleting.Add((TenantId.Parse(reader.GetString(0)), reader.IsDBNull(1) ? null : DateTimeOffset.FromUnixTimeMilliseconds(reader.GetInt64(1))));
            }

            return deleting;
        });

    /// <summary>A setting of a database file, read-only (no migration, nothing written); null when unset.</summary>
    /// <exception cref="Kms.Core.Errors.KmsException">Unavailable when the file is not a readable database.</exception>
    public static Task<string?> ReadSettingAsync(string path, string name, CancellationToken cancellationToken) =>
        GuardAsync(async () =>
        {
            var builder = new SqliteConnectionStringBuilder { DataSource = path, Mode = SqliteOpenMode.ReadOnly, Pooling = false };
            await using var connection = new SqliteConnection(builder.ToString());
            await connection.OpenAsync(cancellationToken);
            await using var command = Command(connection, "SELECT value FROM settings WHERE name = @name", ("@name", name));
            return await command.ExecuteScalarAsync(cancellationToken) as string;
        });

    /// <summary>
    /// Folds a closed database file's write-ahead log into it (a checkpoint by a connection of its
    /// own, whose close removes the log and its index), so the file alone is the whole database
    /// and can be copied or renamed on its own. No other process may have it open.
    /// </summary>
    /// <exception cref="Kms.Core.Errors.KmsException">Unavailable when the log cannot be folded in (another connection holds it, or the disk fails).</exception>
    public static Task FoldWriteAheadLogAsync(string path, CancellationToken cancellationToken) =>
        GuardAsync(async () =>
        {
            var builder = new SqliteConnectionStringBuilder { DataSource = path, Mode = SqliteOpenMode.ReadWrite, Pooling = false };
            await using (var connection = new SqliteConnection(builder.ToString()))
            {
                await connection.OpenAsync(cancellationToken);
                await using var checkpoint = Command(connection, "PRAGMA wal_checkpoint(TRUNCATE)");
                await using var reader = await checkpoint.ExecuteReaderAsync(cancellationToken);
                if (await reader.ReadAsync(cancellationToken) && reader.GetInt64(0) != 0)
                {
                    throw Core.Errors.KmsErrors.Unavailable($"the write-ahead log of {path} could not be folded into it: another connection is using it");
                }
            }

            // The last connection's close removes both; an empty log or an index left behind
            // (a build that keeps them) holds nothing of the database.
            if (File.Exists(path + "-wal") && new FileInfo(path + "-wal").Length > 0)
            {
                throw Core.Errors.KmsErrors.Unavailable($"the write-ahead log of {path} could not be folded into it: another connection is using it");
            }

            File.Delete(path + "-wal");
            File.Delete(path + "-shm");

            return true;
        });

    /// <summary>
    /// Closes this process's idle pooled connections (of every database), so a file whose store
    /// was disposed can be moved: the last close checkpoints its WAL into it.
    /// </summary>
    public static void ReleasePooledConnections() => SqliteConnection.ClearAllPools();
}
