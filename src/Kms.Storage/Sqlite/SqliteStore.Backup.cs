using Kms.Core.Audit;
using Kms.Core.Errors;
using Kms.Core.Keys;
using Kms.Core.Names;
using Microsoft.Data.Sqlite;

namespace Kms.Storage.Sqlite;

/// <summary>What a snapshot holds: its schema version and the last audit event in it.</summary>
/// <param name="SchemaVersion">The schema migration the snapshot is at.</param>
/// <param name="AuditHead">The audit chain's head in the file: its last event's, or, where it holds none, its newest checkpoint row's.</param>
/// <param name="HeadCheckpoint">
/// The checkpoint row <paramref name="AuditHead"/> was taken from, where the file holds no event
/// (retention cut the whole log) — unverified as read: a database writer could have put it there
/// (<see cref="SqliteStore.SnapshotAsync"/> checks it with the audit key); null when the head is an
/// event's, or the log is empty.
/// </param>
public sealed record SqliteSnapshot(int SchemaVersion, AuditHead AuditHead, AuditCheckpoint? HeadCheckpoint = null);

/// <summary>What a database file holds of access (<see cref="SqliteStore.ReadAccessStateAsync"/>).</summary>
/// <param name="Principals">Every principal, with its tenant and when it was deleted (null: it was not).</param>
/// <param name="RevokedTokens">Every revoked API token: its id, its principal, when.</param>
/// <param name="Bindings">Every role binding: principal, role, tenant ('' for a deployment role).</param>
/// <param name="RevokedGrants">Every revoked grant: its name, when.</param>
/// <param name="Policies">Each key's policy entries (principal: operations), by key name; a key without a policy is not there.</param>
public sealed record SqliteAccessState(
    IReadOnlyList<(Kms.Core.Access.PrincipalName Name, TenantId? Tenant, DateTimeOffset? Deleted)> Principals,
    IReadOnlyList<(string Id, string Principal, DateTimeOffset Time)> RevokedTokens,
    IReadOnlyList<(string Principal, Kms.Core.Access.Role Role, string Tenant)> Bindings,
    IReadOnlyList<(string Name, DateTimeOffset Time)> RevokedGrants,
    IReadOnlyDictionary<string, IReadOnlyDictionary<string, Kms.Core.Access.KeyOperations>> Policies);

/// <summary>What a database file holds of how its keys are used (<see cref="SqliteStore.ReadKeyUseStateAsync"/>).</summary>
/// <param name="States">Each key's and version's state, by its name.</param>
/// <param name="Primaries">Each key's primary version number, by key name.</param>
/// <param name="Aliases">Each alias's key name, by alias name.</param>
/// <param name="Tenants">Each tenant's state, by its resource name.</param>
public sealed record SqliteKeyUseState(
    IReadOnlyDictionary<string, KeyState> States,
    IReadOnlyDictionary<string, int> Primaries,
    IReadOnlyDictionary<string, string> Aliases,
    IReadOnlyDictionary<string, Kms.Core.Access.TenantState> Tenants);

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

            var snapshot = await ReadSnapshotAsync(full, cancellationToken);

            // A backup manifest names this head and the audit key signs it: a head taken from a
            // checkpoint row (no event in the copy) only if the key signed that row as a checkpoint
            // of it (RequireSignedCheckpointHead). Before, a database writer's row was the head the
            // signed manifest reported.
            if (snapshot.HeadCheckpoint is { } row && !CheckpointHeadSigned(row))
            {
                throw KmsErrors.AuditHeadNotSigned();
            }

            return snapshot;
        });
    }

    /// <summary>
    /// Reads a snapshot file's schema version and audit head without changing it (read-only, no
    /// migration); where the file holds no event, the checkpoint row the head comes from, for the
    /// caller to check (<see cref="SqliteSnapshot.HeadCheckpoint"/>).
    /// </summary>
    /// <exception cref="Kms.Core.Errors.KmsException">Unavailable when the file is not a readable database.</exception>
    public static Task<SqliteSnapshot> ReadSnapshotAsync(string path, CancellationToken cancellationToken) =>
        GuardAsync(async () =>
        {
            var builder = new SqliteConnectionStringBuilder { DataSource = path, Mode = SqliteOpenMode.ReadOnly, Pooling = false };
            await using var connection = new SqliteConnection(builder.ToString());
            await connection.OpenAsync(cancellationToken);
            await using var version = Command(connection, "SELECT coalesce(max(version), 0) FROM schema_migrations");
            var schema = Convert.ToInt32(await version.ExecuteScalarAsync(cancellationToken), System.Globalization.CultureInfo.InvariantCulture);
            var (head, fromCheckpointRow) = await ReadHeadRowAsync(connection, null, cancellationToken);
            return new SqliteSnapshot(schema, head, fromCheckpointRow ? await ReadCheckpointAtAsync(connection, null, head.Sequence, cancellationToken) : null);
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

    /// <summary>
    /// What a database file holds of access, read-only (no migration, nothing written): what a
    /// restore over it compares with the snapshot to remove again what was removed after the backup.
    /// </summary>
    /// <exception cref="Kms.Core.Errors.KmsException">Unavailable when the file is not a readable database.</exception>
    public static Task<SqliteAccessState> ReadAccessStateAsync(string path, CancellationToken cancellationToken) =>
        GuardAsync(async () =>
        {
            var builder = new SqliteConnectionStringBuilder { DataSource = path, Mode = SqliteOpenMode.ReadOnly, Pooling = false };
            await using var connection = new SqliteConnection(builder.ToString());
            await connection.OpenAsync(cancellationToken);

            async Task<List<T>> RowsAsync<T>(string sql, Func<System.Data.Common.DbDataReader, T> read)
            {
                await using var command = Command(connection, sql);
                await using var reader = await command.ExecuteReaderAsync(cancellationToken);
                var rows = new List<T>();
                while (await reader.ReadAsync(cancellationToken))
                {
                    rows.Add(read(reader));
                }

                return rows;
            }

            static DateTimeOffset Time(System.Data.Common.DbDataReader reader, int column) => DateTimeOffset.FromUnixTimeMilliseconds(reader.GetInt64(column));

            // A database from before principals had a delete_time: a disabled principal is a deleted one.
            var deleteTime = (await RowsAsync("SELECT name FROM pragma_table_info('principals')", r => r.GetString(0))).Contains("delete_time")
                ? "delete_time" : "CASE WHEN disabled = 1 THEN create_time END";
            var principals = await RowsAsync($"SELECT name, tenant, {deleteTime} FROM principals", r =>
                (Name: Kms.Core.Access.PrincipalName.ParseExisting(r.GetString(0), "principal"), Tenant: r.IsDBNull(1) ? (TenantId?)null : TenantId.Parse(r.GetString(1)), Deleted: r.IsDBNull(2) ? (DateTimeOffset?)null : Time(r, 2)));
            var tokens = await RowsAsync("SELECT id, principal, revoke_time FROM api_tokens WHERE revoke_time IS NOT NULL", r => (Id: r.GetString(0), Principal: r.GetString(1), Time: Time(r, 2)));
            var bindings = await RowsAsync("SELECT principal, role, tenant FROM role_bindings", r => (r.GetString(0), (Kms.Core.Access.Role)r.GetInt32(1), r.GetString(2)));
            var grants = await RowsAsync("SELECT tenant, key_id, grant_id, revoke_time FROM grants WHERE revoke_time IS NOT NULL", r => (Name: $"tenants/{r.GetString(0)}/keys/{r.GetString(1)}/grants/{r.GetString(2)}", Time: Time(r, 3)));
            var policies = await RowsAsync("SELECT tenant, key_id, principal, operations FROM key_policies ORDER BY tenant, key_id, principal", r => (Key: $"tenants/{r.GetString(0)}/keys/{r.GetString(1)}", Principal: r.GetString(2), Operations: (Kms.Core.Access.KeyOperations)r.GetInt32(3)));
            return new SqliteAccessState(
                [.. principals.Select(p => (p.Name, p.Tenant, p.Deleted))],
                [.. tokens.Select(t => (t.Id, t.Principal, t.Time))],
                [.. bindings],
                [.. grants.Select(g => (g.Name, g.Time))],
                policies.GroupBy(p => p.Key).ToDictionary(g => g.Key, g => (IReadOnlyDictionary<string, Kms.Core.Access.KeyOperations>)g.ToDictionary(p => p.Principal, p => p.Operations, StringComparer.Ordinal), StringComparer.Ordinal));
        });

    /// <summary>
    /// What a database file holds of how its keys are used — states, primaries, aliases, tenants'
    /// states — read-only (no migration, nothing written): what a restore over it compares with
    /// the restored copy to list what was lifted or changed after the backup and is not replayed.
    /// </summary>
    /// <exception cref="Kms.Core.Errors.KmsException">Unavailable when the file is not a readable database.</exception>
    public static Task<SqliteKeyUseState> ReadKeyUseStateAsync(string path, CancellationToken cancellationToken) =>
        GuardAsync(async () =>
        {
            var builder = new SqliteConnectionStringBuilder { DataSource = path, Mode = SqliteOpenMode.ReadOnly, Pooling = false };
            await using var connection = new SqliteConnection(builder.ToString());
            await connection.OpenAsync(cancellationToken);
            var states = new Dictionary<string, KeyState>(StringComparer.Ordinal);
            var primaries = new Dictionary<string, int>(StringComparer.Ordinal);
            var aliases = new Dictionary<string, string>(StringComparer.Ordinal);
            var tenants = new Dictionary<string, Kms.Core.Access.TenantState>(StringComparer.Ordinal);
            await using (var command = Command(connection, """
                SELECT tenant, key_id, NULL, state, primary_version FROM keys
                UNION ALL
                SELECT tenant, key_id, version, state, NULL FROM key_versions
                """))
            await using (var reader = await command.ExecuteReaderAsync(cancellationToken))
            {
                while (await reader.ReadAsync(cancellationToken))
                {
                    var key = $"tenants/{reader.GetString(0)}/keys/{reader.GetString(1)}";
                    if (reader.IsDBNull(2))
                    {
                        states[key] = (KeyState)reader.GetInt32(3);
                        primaries[key] = reader.GetInt32(4);
                    }
                    else
                    {
                        states[$"{key}/versions/{reader.GetInt32(2).ToString(System.Globalization.CultureInfo.InvariantCulture)}"] = (KeyState)reader.GetInt32(3);
                    }
                }
            }

            await using (var command = Command(connection, "SELECT tenant, alias_id, key_id FROM aliases"))
            await using (var reader = await command.ExecuteReaderAsync(cancellationToken))
            {
                while (await reader.ReadAsync(cancellationToken))
                {
                    aliases[$"tenants/{reader.GetString(0)}/aliases/{reader.GetString(1)}"] = $"tenants/{reader.GetString(0)}/keys/{reader.GetString(2)}";
                }
            }

            await using (var command = Command(connection, "SELECT id, state FROM tenants"))
            await using (var reader = await command.ExecuteReaderAsync(cancellationToken))
            {
                while (await reader.ReadAsync(cancellationToken))
                {
                    tenants[$"tenants/{reader.GetString(0)}"] = (Kms.Core.Access.TenantState)reader.GetInt32(1);
                }
            }

            return new SqliteKeyUseState(states, primaries, aliases, tenants);
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
