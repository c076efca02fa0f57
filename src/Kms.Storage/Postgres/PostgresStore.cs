using System.Buffers.Binary;
using System.Data;
using System.Data.Common;
using System.Security.Cryptography;
using System.Text;
using Kms.Core.Errors;
using Npgsql;

namespace Kms.Storage.Postgres;

/// <summary>
/// The store on PostgreSQL, shared by any number of Kms nodes. Statements are the SQLite
/// backend's (<see cref="SqlStore"/>); what differs is here.
/// </summary>
/// <remarks>
/// <para>Writes: one transaction each that first takes a transaction-scoped advisory lock
/// (<see cref="WriteLockKey"/>), so writes from every node are serialised as SQLite's are on
/// one file — a key's changes read fresh state, and the audit chain gets one gap-free head.
/// The price is one writer at a time across the deployment (docs/deployment.md).</para>
/// <para>Durability is the server's (<c>synchronous_commit</c> on, the default): a commit is
/// acknowledged once its WAL is flushed.</para>
/// <para>Erasure: destroyed material is set to NULL; the old row version stays a dead tuple
/// until <c>VACUUM</c> removes it, so the store vacuums the tables that hold wrapped material
/// after each erasure. What remains elsewhere (WAL segments, replicas, base backups) is the
/// operator's: docs/deployment.md says where and for how long.</para>
/// </remarks>
public sealed class PostgresStore : SqlStore
{
    /// <summary>The advisory lock every write transaction holds (the ASCII of "KMSW").</summary>
    public const long WriteLockKey = 0x4B4D_5357;

    /// <summary>
    /// The advisory lock serving nodes hold shared (session-level, for their life) and an offline
    /// maintenance — the domain-key rotation — holds exclusively: one excludes the other (the ASCII of "KMSS").
    /// </summary>
    public const long ServingLockKey = 0x4B4D_5353;

    private readonly NpgsqlDataSource _pooled;
    private readonly NpgsqlDataSource _unpooled;
    private readonly NpgsqlDataSource _locks;
    private readonly string _nodeNameConnectionString;
    private NpgsqlConnection? _servingLock;
    private string? _servingLockFunction;
    private NpgsqlConnection? _nodeName;
    private string? _nodeNameHeld;

    private PostgresStore(PostgresOptions options)
    {
        var builder = new NpgsqlConnectionStringBuilder(options.Parse().ConnectionString)
        {
            MaxPoolSize = options.MaxPoolSize,
            CommandTimeout = (int)Math.Ceiling(options.CommandTimeout.TotalSeconds),
            Timeout = (int)Math.Ceiling(options.CommandTimeout.TotalSeconds),

            // A COMMIT has no timeout (CommitWriteAsync): a partition must still break its connection.
            TcpKeepAlive = true,
            TcpKeepAliveTime = 30,
            TcpKeepAliveInterval = 10,
        };
        // The standby's WARNING on a cancelled wait is how CommitWriteAsync tells a primary-only
        // commit: a role or connection set to client_min_messages=error would hide it.
        var withoutKeepalives = builder.Options;
        builder.Options = ($"{builder.Options} -c client_min_messages=warning {PostgresOptions.ServerKeepalives}"
            + $" -c idle_in_transaction_session_timeout={(long)options.IdleInTransactionTimeout.TotalMilliseconds}").Trim();
        Location = $"{builder.Host}:{builder.Port}/{builder.Database}";
        _pooled = NpgsqlDataSource.Create(builder.ConnectionString);

        // The audit writer keeps its connection; closing it after a failure must really close it.
        _unpooled = NpgsqlDataSource.Create(new NpgsqlConnectionStringBuilder(builder.ConnectionString) { Pooling = false }.ConnectionString);

        // The serving lock is taken once and never looked at again: with the server's quick
        // keepalives a partition of half a minute would end its session unnoticed, and a
        // rotate-domain could then run beside a node that still serves. Its session keeps
        // PostgreSQL's own (slow) dead-peer detection.
        _locks = NpgsqlDataSource.Create(new NpgsqlConnectionStringBuilder(builder.ConnectionString) { Pooling = false, Options = withoutKeepalives }.ConnectionString);

        // The node name's lock, unlike the serving lock, is let go quickly by a node that vanished
        // (the server's keepalives), so that the node restarted in its place is not refused for hours.
        _nodeNameConnectionString = new NpgsqlConnectionStringBuilder(builder.ConnectionString)
        {
            Pooling = false,
            Options = $"{withoutKeepalives} {PostgresOptions.ServerKeepalives}".Trim(),
        }.ConnectionString;
    }

    /// <inheritdoc />
    public override string Location { get; }

    /// <inheritdoc />
    public override string Provider => "postgres";

    /// <inheritdoc />
    public override Task<DateTimeOffset?> GetDatabaseTimeAsync(CancellationToken cancellationToken) =>
        ReadAsync<DateTimeOffset?>(async connection =>
        {
            await using var now = Command(connection, "SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint");
            return DateTimeOffset.FromUnixTimeMilliseconds((long)(await now.ExecuteScalarAsync(cancellationToken))!);
        }, cancellationToken);

    private protected override IReadOnlyList<SchemaMigration> Migrations => PostgresSchema.Migrations;

    private protected override string MigrationTableSql =>
        "CREATE TABLE IF NOT EXISTS schema_migrations (version BIGINT PRIMARY KEY, applied_time BIGINT NOT NULL);";

    // READ COMMITTED whatever the database's default_transaction_isolation, as every other write
    // here: under REPEATABLE READ the lock statement's snapshot predates the lock, and the chain
    // head read after it would be stale.
    internal override string AuditBeginSql => $"BEGIN ISOLATION LEVEL READ COMMITTED; SELECT pg_advisory_xact_lock({WriteLockKey})";

    // No equivalent of SQLite's data_version, and other nodes append too: the head is read every batch.
    internal override string? AuditDataVersionSql => null;

    private protected override string ContainsSql(string haystack, string needle) => $"strpos({haystack}, {needle}) > 0";

    internal override bool MultiRowAuditInsert => true;

    /// <summary>Connects, applies pending migrations (nodes starting together take turns) and returns the store.</summary>
    /// <exception cref="Kms.Core.Errors.KmsException">Unavailable when PostgreSQL cannot be reached.</exception>
    public static Task<PostgresStore> OpenAsync(PostgresOptions options, CancellationToken cancellationToken) => OpenAsync(options, null, cancellationToken);

    /// <summary>Opens the database as a server whose schema is <paramref name="migrations"/> would (tests of rolling upgrades).</summary>
    internal static async Task<PostgresStore> OpenAsync(PostgresOptions options, IReadOnlyList<SchemaMigration>? migrations, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(options);
        if (string.IsNullOrWhiteSpace(options.ConnectionString))
        {
            throw new ArgumentException("Storage:Postgres:ConnectionString is empty", nameof(options));
        }

        var store = new PostgresStore(options);
        try
        {
            // Npgsql does not observe the token while it waits for the server's answer to its first
            // message (NpgsqlConnector.SetupEncryption, Npgsql 10): a database that accepts
            // connections and never answers would hold a stop for the whole connect timeout
            // (CommandTimeout). The open is abandoned instead; the store is disposed below, and the
            // abandoned connect ends with its timeout or with the process.
            await GuardAsync(async () =>
            {
                await store.MigrateAsync(cancellationToken, migrations);
                return 0;
            }).WaitAsync(cancellationToken);
            return store;
        }
        catch
        {
            await store.DisposeAsync();
            throw;
        }
    }

    internal override async Task<DbConnection> OpenConnectionAsync(CancellationToken cancellationToken, bool pooled = true) =>
        await (pooled ? _pooled : _unpooled).OpenConnectionAsync(cancellationToken);

    // Read committed is enough under the lock: every writer holds it, so each statement sees
    // every write committed before this transaction took it, and none can commit meanwhile.
    private protected override async Task<DbTransaction> BeginWriteAsync(DbConnection connection, CancellationToken cancellationToken)
    {
        var transaction = await connection.BeginTransactionAsync(IsolationLevel.ReadCommitted, cancellationToken);
        try
        {
            await ExecuteAsync(connection, $"SELECT pg_advisory_xact_lock({WriteLockKey})", cancellationToken, transaction);
            return transaction;
        }
        catch
        {
            await transaction.DisposeAsync();
            throw;
        }
    }

    // With synchronous replication a COMMIT waits for the standby. Npgsql's command timeout and
    // a cancelled token both send PostgreSQL a cancel request, and a cancelled wait is no error:
    // COMMIT succeeds with a WARNING, committed here only, and visible at once — a write a
    // failover loses, acknowledged. So the COMMIT is never cancelled and has no timeout (a broken
    // connection still fails it: TCP keepalives), and one whose wait someone else cancelled
    // (pg_cancel_backend, a fast shutdown) is answered UNAVAILABLE, not acknowledged.
    private protected override async Task CommitWriteAsync(DbConnection connection, DbTransaction transaction)
    {
        await using var commit = new NpgsqlCommand("COMMIT", (NpgsqlConnection)connection, (NpgsqlTransaction)transaction);
        await CommitAuditAsync(commit);
    }

    internal override async Task CommitAuditAsync(DbCommand commit)
    {
        var connection = (NpgsqlConnection)commit.Connection!;
        var localOnly = false;
        void OnNotice(object? sender, NpgsqlNoticeEventArgs e) => localOnly |= e.Notice.Routine == "SyncRepWaitForLSN";
        connection.Notice += OnNotice;
        try
        {
            commit.CommandTimeout = 0;
            await commit.ExecuteNonQueryAsync(CancellationToken.None);
        }
        finally
        {
            connection.Notice -= OnNotice;
        }

        if (localOnly)
        {
            throw KmsErrors.Unavailable("the write was not confirmed by the synchronous standby; retry shortly", null);
        }
    }

    // Npgsql's command or connection timeout; a lock_timeout or statement_timeout set on the role
    // or database (55P03, 57014: also a statement an administrator cancelled).
    private protected override bool GaveUpWaiting(DbException exception) =>
        exception is NpgsqlException { InnerException: TimeoutException } or PostgresException { SqlState: "55P03" or "57014" };

    // A transaction gets an id at its first row change (a no-op UPDATE or a conflicting
    // INSERT ... DO NOTHING assigns none); the lock does not assign one.
    private protected override async Task<long> WriteMarkAsync(DbConnection connection, DbTransaction transaction, CancellationToken cancellationToken)
    {
        await using var command = Command(connection, "SELECT coalesce(txid_current_if_assigned(), 0)");
        command.Transaction = transaction;
        return Convert.ToInt64(await command.ExecuteScalarAsync(cancellationToken), System.Globalization.CultureInfo.InvariantCulture);
    }

    // The erasing transaction's id (64-bit, with epoch), recorded with the pending mark.
    private protected override string ErasureMarkSql => "txid_current()::text";

    // Removes the dead row versions that still hold erased material from the tables' pages —
    // possible only once no snapshot that could still see them remains: every backend's xmin,
    // every replication slot's and every prepared transaction's must be newer than the erasing
    // transaction (a node's writer waiting on the write lock, pg_dump, a standby's feedback hold
    // one). Until then: false, and the background pass retries. (VACUUM marks the space free; it
    // does not rewrite the page, so the bytes persist in the data file until the space is reused —
    // docs/deployment.md.)
    private protected override async Task<bool> EraseFromFilesAsync(DbConnection connection, string mark, CancellationToken cancellationToken)
    {
        if (long.TryParse(mark, System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out var erasing))
        {
            await using var horizon = Command(connection, """
                SELECT count(*) FROM (
                    SELECT backend_xmin AS x FROM pg_stat_activity WHERE backend_xmin IS NOT NULL AND pid <> pg_backend_pid()
                    UNION ALL SELECT xmin FROM pg_replication_slots WHERE xmin IS NOT NULL
                    UNION ALL SELECT catalog_xmin FROM pg_replication_slots WHERE catalog_xmin IS NOT NULL
                    UNION ALL SELECT transaction FROM pg_prepared_xacts) AS holders
                WHERE age(x) >= age((@erasing % 4294967296)::text::xid)
                """, ("@erasing", erasing));
            if ((long)(await horizon.ExecuteScalarAsync(cancellationToken))! > 0)
            {
                return false;
            }
        }

        await ExecuteAsync(connection, "VACUUM key_versions, import_jobs, settings", cancellationToken);
        return true;
    }

    /// <summary>
    /// Holds the serving lock (shared) until the store is disposed: what a node does before it
    /// serves. False when a maintenance holds it exclusively; the node must not serve then.
    /// </summary>
    public override Task<bool> TryHoldServingLockAsync(CancellationToken cancellationToken) => TryHoldAsync("pg_try_advisory_lock_shared", cancellationToken);

    /// <summary>
    /// Holds the serving lock exclusively until the store is disposed: what an offline maintenance
    /// does first. False while any node serves the database.
    /// </summary>
    public override Task<bool> TryHoldMaintenanceLockAsync(CancellationToken cancellationToken) => TryHoldAsync("pg_try_advisory_lock", cancellationToken);

    private async Task<bool> TryHoldAsync(string function, CancellationToken cancellationToken)
    {
        if (_servingLock is not null)
        {
            return _servingLockFunction == function
                ? true
                : throw new InvalidOperationException("the store already holds the serving lock in the other mode");
        }

        var connection = await _locks.OpenConnectionAsync(cancellationToken);
        try
        {
            await using var take = new NpgsqlCommand($"SELECT {function}({ServingLockKey})", connection);
            if (await take.ExecuteScalarAsync(cancellationToken) is true)
            {
                _servingLock = connection;
                _servingLockFunction = function;
                return true;
            }
        }
        catch
        {
            await connection.DisposeAsync();
            throw;
        }

        await connection.DisposeAsync();
        return false;
    }

    /// <summary>
    /// Holds <paramref name="nodeName"/> (<c>Kms:NodeName</c>) for this node until the store is disposed,
    /// so that no two live nodes of the deployment share a name: a session-level advisory lock keyed by a
    /// 64-bit hash of the name (<see cref="NodeNameLockKey"/>), on a connection of its own that PostgreSQL
    /// closes — releasing the name — when the process ends or, for a node that vanished without closing
    /// it, once the server's keepalives notice (about 25 s).
    /// </summary>
    /// <returns>Null when this store holds the name; otherwise what PostgreSQL shows of the session that holds it.</returns>
    public async Task<string?> TryHoldNodeNameAsync(string nodeName, CancellationToken cancellationToken)
    {
        ArgumentException.ThrowIfNullOrEmpty(nodeName);
        if (_nodeName is not null)
        {
            return null;
        }

        var key = NodeNameLockKey(nodeName);

        // Named in pg_stat_activity, so an operator (and the refusal below) can tell whose session it is.
        var connection = new NpgsqlConnection(new NpgsqlConnectionStringBuilder(_nodeNameConnectionString) { ApplicationName = $"kms node {nodeName}" }.ConnectionString);
        try
        {
            await connection.OpenAsync(cancellationToken);
            await using (var take = new NpgsqlCommand("SELECT pg_try_advisory_lock(@key)", connection))
            {
                take.Parameters.AddWithValue("key", key);
                if (await take.ExecuteScalarAsync(cancellationToken) is true)
                {
                    _nodeName = connection;
                    _nodeNameHeld = nodeName;
                    return null;
                }
            }

            // pg_locks shows a one-key advisory lock as its high and low 32 bits; pg_stat_activity
            // hides the client of another role's session from a role without pg_read_all_stats.
            await using var holder = new NpgsqlCommand("""
                SELECT l.pid, host(a.client_addr), a.application_name, a.backend_start
                FROM pg_locks l LEFT JOIN pg_stat_activity a ON a.pid = l.pid
                WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
                  AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
                  AND l.classid::text::bigint = @high AND l.objid::text::bigint = @low
                LIMIT 1
                """, connection);
            holder.Parameters.AddWithValue("high", (key >> 32) & 0xFFFF_FFFF);
            holder.Parameters.AddWithValue("low", key & 0xFFFF_FFFF);
            await using var reader = await holder.ExecuteReaderAsync(cancellationToken);
            if (!await reader.ReadAsync(cancellationToken))
            {
                return "a session that has just let it go";
            }

            var described = new StringBuilder("PostgreSQL session ").Append(System.Globalization.CultureInfo.InvariantCulture, $"{reader.GetInt32(0)}");
            if (!reader.IsDBNull(1))
            {
                described.Append(System.Globalization.CultureInfo.InvariantCulture, $" from {reader.GetString(1)}");
            }

            if (!reader.IsDBNull(2) && reader.GetString(2).Length > 0)
            {
                described.Append(System.Globalization.CultureInfo.InvariantCulture, $", '{KmsErrors.Printable(reader.GetString(2))}'");
            }

            if (!reader.IsDBNull(3))
            {
                described.Append(System.Globalization.CultureInfo.InvariantCulture, $", connected since {reader.GetFieldValue<DateTime>(3):yyyy-MM-dd HH:mm:ss} UTC");
            }

            return described.ToString();
        }
        finally
        {
            if (_nodeName != connection)
            {
                await connection.DisposeAsync();
            }
        }
    }

    /// <summary>
    /// Whether this node still holds the name it took (<see cref="TryHoldNodeNameAsync"/>): a session
    /// that ended meanwhile (PostgreSQL restarted, a partition) let the name go, and it is taken again.
    /// </summary>
    /// <returns>Null when held (or no name was taken); otherwise what PostgreSQL shows of the session that holds it now.</returns>
    public async Task<string?> KeepNodeNameAsync(CancellationToken cancellationToken)
    {
        if (_nodeNameHeld is not { } name)
        {
            return null;
        }

        if (_nodeName is { } held)
        {
            try
            {
                await using var alive = new NpgsqlCommand("SELECT 1", held);
                await alive.ExecuteScalarAsync(cancellationToken);
                return null;
            }
            catch (Exception e) when (e is NpgsqlException or InvalidOperationException or TimeoutException or IOException)
            {
                _nodeName = null;
                await held.DisposeAsync();
            }
        }

        return await TryHoldNodeNameAsync(name, cancellationToken);
    }

    /// <summary>The advisory lock that holds a node name: the first 8 bytes of a SHA-256 of the name (one-key locks, apart from the two-key space).</summary>
    internal static long NodeNameLockKey(string nodeName) =>
        BinaryPrimitives.ReadInt64BigEndian(SHA256.HashData(Encoding.UTF8.GetBytes("kms node name\n" + nodeName)));

    private protected override async ValueTask DisposeCoreAsync()
    {
        if (_nodeName is { } name)
        {
            _nodeName = null;
            await name.DisposeAsync();
        }

        if (_servingLock is { } held)
        {
            _servingLock = null;
            await held.DisposeAsync();
        }

        await base.DisposeCoreAsync();
        await _pooled.DisposeAsync();
        await _unpooled.DisposeAsync();
        await _locks.DisposeAsync();
    }
}
