using System.Data;
using System.Data.Common;
using System.Globalization;
using Kms.Core.Files;
using Microsoft.Data.Sqlite;

namespace Kms.Storage.Sqlite;

/// <summary>
/// The store on one SQLite file (the embedded default): WAL with <c>synchronous=FULL</c> (a
/// committed transaction survives power loss), <c>secure_delete=ON</c> (deleted material
/// is overwritten, not left in free pages), foreign keys on.
/// </summary>
/// <remarks>
/// Writes run in <c>BEGIN IMMEDIATE</c> transactions, so changes of one key are serialised.
/// When a change erases material (a version DESTROYED), the WAL is checkpointed and
/// truncated right after the commit, so the old wrapped bytes are in neither the database
/// file nor its <c>-wal</c>.
/// </remarks>
public sealed partial class SqliteStore : SqlStore
{
    private readonly string _connectionString;
    private readonly string _unpooledConnectionString;
    private readonly string _pragmas;
    private readonly int _busyTimeoutMilliseconds;

    // Hot-path reads on connections of their own, statements compiled once (PreparedReaders).
    private const int MaxReaders = 8;
    private readonly PreparedReaders _readers;

    // The serving lock (ServingLockFile), once taken; released when the store is disposed.
    private readonly Lock _servingLockGate = new();
    private ServingLockFile? _servingLock;
    private bool _servingLockExclusive;

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
        _busyTimeoutMilliseconds = (int)options.BusyTimeout.TotalMilliseconds;
        _pragmas = $"PRAGMA synchronous = FULL; PRAGMA secure_delete = ON; PRAGMA foreign_keys = ON; PRAGMA busy_timeout = {_busyTimeoutMilliseconds};";
        DatabasePath = Path.GetFullPath(options.DatabasePath);
        _readers = new PreparedReaders(cancellationToken => OpenConnectionAsync(cancellationToken, pooled: false), MaxReaders);
    }

    /// <summary>The database file.</summary>
    public string DatabasePath { get; }

    /// <inheritdoc />
    public override string Location => DatabasePath;

    /// <inheritdoc />
    public override string Provider => "sqlite";

    private protected override IReadOnlyList<SchemaMigration> Migrations => SqliteSchema.Migrations;

    /// <inheritdoc />
    private protected override string ErasureMarkSql => "hex(randomblob(16))";

    private protected override string MigrationTableSql =>
        "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_time INTEGER NOT NULL) STRICT;";

    internal override string AuditBeginSql => "BEGIN IMMEDIATE";

    private protected override string ContainsSql(string haystack, string needle) => $"instr({haystack}, {needle}) > 0";

    internal override string? AuditDataVersionSql => "PRAGMA data_version";

    /// <summary>Opens (creating if needed) the database and applies pending migrations.</summary>
    public static Task<SqliteStore> OpenAsync(SqliteOptions options, CancellationToken cancellationToken) => OpenAsync(options, null, cancellationToken);

    /// <summary>Opens the database as a server whose schema is <paramref name="migrations"/> would (tests of rolling upgrades).</summary>
    internal static async Task<SqliteStore> OpenAsync(SqliteOptions options, IReadOnlyList<SchemaMigration>? migrations, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(options);
        var directory = Path.GetDirectoryName(Path.GetFullPath(options.DatabasePath));
        if (directory is not null)
        {
            // Synced into its parent when created: the database synced into it would otherwise go
            // with it at a power loss.
            DurableFile.CreateDirectory(directory);
        }

        if (CreateOwnerOnly(options.DatabasePath) && directory is not null)
        {
            // SQLite syncs the directory for the journal and WAL files it creates, never for the
            // main database file, which it did not create here anyway: the new name is made
            // durable before anything is committed to the file under it.
            DirectorySync.Flush(directory);
        }
        var store = new SqliteStore(options);
        await using (var connection = await store.OpenConnectionAsync(cancellationToken))
        {
            await ExecuteAsync(connection, "PRAGMA journal_mode = WAL;", cancellationToken);
        }

        await store.MigrateAsync(cancellationToken, migrations);
        return store;
    }

    /// <summary>Reads a pragma on a fresh connection as the store configures it (tests check durability settings with it).</summary>
    internal async Task<string?> ReadPragmaAsync(string pragma, CancellationToken cancellationToken)
    {
        await using var connection = await OpenConnectionAsync(cancellationToken);
        await using var command = Command(connection, $"PRAGMA {pragma}");
        return Convert.ToString(await command.ExecuteScalarAsync(cancellationToken), CultureInfo.InvariantCulture);
    }

    internal override async Task<DbConnection> OpenConnectionAsync(CancellationToken cancellationToken, bool pooled = true)
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

    // A connection SQLite opened while the file could not be written (a read-only mount, a
    // permission) was opened read-only and stays so for life; one that hit an I/O error may be
    // unusable. The pool would keep handing them out after the file is writable again, so
    // every write would keep failing: the pooled connections are closed, and the next request
    // opens fresh ones. SQLITE_READONLY, SQLITE_IOERR, SQLITE_CANTOPEN (primary codes).
    private protected override void OnDatabaseFault(DbException exception)
    {
        if (exception is SqliteException { SqliteErrorCode: 8 or 10 or 14 })
        {
            using var any = new SqliteConnection(_connectionString);
            SqliteConnection.ClearPool(any);
            _readers.DropAll();
        }
    }

    // SQLITE_BUSY, SQLITE_LOCKED: another connection held the lock past the busy timeout.
    private protected override bool GaveUpWaiting(DbException exception) => exception is SqliteException { SqliteErrorCode: 5 or 6 };

    private protected override Task<T?> HotReadAsync<T>(string sql, Func<DbDataReader, T> map, CancellationToken cancellationToken, params (string Name, object Value)[] parameters)
        where T : class =>
        GuardAsync(() => _readers.ReadFirstAsync(sql, map, () => base.HotReadAsync(sql, map, cancellationToken, parameters), cancellationToken, parameters), this);

    /// <summary>
    /// The maintenance lock of the database at <paramref name="databasePath"/> (which need not
    /// exist), for an offline tool that replaces its files (a restore); null while a server
    /// serves it. Dispose to release.
    /// </summary>
    public static IDisposable? TryTakeMaintenanceLock(string databasePath) =>
        ServingLockFile.TryTake(ServingLockFile.PathFor(databasePath), exclusive: true);

    /// <inheritdoc />
    public override Task<bool> TryHoldServingLockAsync(CancellationToken cancellationToken) => Task.FromResult(TryHold(exclusive: false));

    /// <inheritdoc />
    public override Task<bool> TryHoldMaintenanceLockAsync(CancellationToken cancellationToken) => Task.FromResult(TryHold(exclusive: true));

    private bool TryHold(bool exclusive)
    {
        lock (_servingLockGate)
        {
            if (_servingLock is not null)
            {
                return _servingLockExclusive == exclusive
                    ? true
                    : throw new InvalidOperationException("the store already holds the serving lock in the other mode");
            }

            _servingLock = ServingLockFile.TryTake(ServingLockFile.PathFor(DatabasePath), exclusive);
            _servingLockExclusive = exclusive;
            return _servingLock is not null;
        }
    }

    private protected override ValueTask DisposeCoreAsync()
    {
        _readers.Dispose();
        _servingLock?.Dispose();
        return base.DisposeCoreAsync();
    }

    /// <summary>
    /// Called by a write just before it takes the write lock, the audit writer's group commit
    /// included (a test seam: a test holding the lock from another connection learns that a write
    /// got this far, so whatever it read before is read).
    /// </summary>
    internal Action? BeforeWriteLock { get; set; }

    /// <summary>The longest one wait for the write lock lasts in SQLite before the caller's token is looked at again.</summary>
    internal const int WriteLockSliceMilliseconds = 1000;

    // Serializable is BEGIN IMMEDIATE: the database's one write lock, taken at the start.
    private protected override Task<DbTransaction> BeginWriteAsync(DbConnection connection, CancellationToken cancellationToken) =>
        WaitForWriteLockAsync((SqliteConnection)connection, () => connection.BeginTransactionAsync(IsolationLevel.Serializable, cancellationToken).AsTask(), cancellationToken);

    // The audit writer's prepared BEGIN IMMEDIATE, through the same wait. Before, it was one
    // ExecuteNonQuery: one wait of the whole busy timeout in SQLite's busy handler, which no
    // cancellation ends. A stop asked for while the group commit waited for the lock another
    // process holds (Storage:Sqlite:BusyTimeout, up to 10 min) was held by it: the commit loop did
    // not end, the writer's gate stayed taken (the stop's refusal counts and disposal waited on it),
    // and the queued calls were left unanswered until the process ended.
    // The command's own timeout (Microsoft.Data.Sqlite's retries, taken from the connection's when
    // it was created) is a slice's too, as the connection's is for BeginWriteAsync.
    internal override async Task BeginAuditAsync(DbCommand begin, CancellationToken cancellationToken)
    {
        var commandTimeout = begin.CommandTimeout;
        begin.CommandTimeout = 1;
        try
        {
            await WaitForWriteLockAsync((SqliteConnection)begin.Connection!, () => begin.ExecuteNonQueryAsync(cancellationToken), cancellationToken);
        }
        finally
        {
            begin.CommandTimeout = commandTimeout;
        }
    }

    // Takes the write lock with begin (a BEGIN IMMEDIATE). The lock another connection holds
    // (another process: a kms command, sqlite3 at a prompt, a backup tool) is waited for up to the
    // busy timeout in slices of at most a second, the caller's token looked at between them.
    // Before, it was one wait in SQLite's busy handler, which no cancellation ends
    // (Microsoft.Data.Sqlite's async calls run synchronously, and sqlite3_interrupt does not end a
    // busy wait): a stop asked for while the start waited for the lock (Storage:Sqlite:BusyTimeout,
    // up to 10 min) waited it out first.
    private async Task<T> WaitForWriteLockAsync<T>(SqliteConnection sqlite, Func<Task<T>> begin, CancellationToken cancellationToken)
    {
        BeforeWriteLock?.Invoke();
        var started = System.Diagnostics.Stopwatch.GetTimestamp(); // no object per write
        var commandTimeout = sqlite.DefaultTimeout;
        while (true)
        {
            cancellationToken.ThrowIfCancellationRequested();
            try
            {
                // SQLite's own wait for one whole slice, which Microsoft.Data.Sqlite's retry loop
                // (a timeout of 1 s, its least) does not repeat. Before, the last slice was what was
                // left of the busy timeout: SQLite gave up before Microsoft.Data.Sqlite's second
                // was over, which ran it again, so the wait overran the busy timeout by up to a
                // second and a half (a group commit's: 3.1 s for 2 s, past the deadline of a call
                // queued behind it that DatabaseFaultTests gives one and a half busy timeouts). A
                // busy timeout is now waited for in whole seconds (2 s: two slices, 2.5 s: three).
                SQLitePCL.raw.sqlite3_busy_timeout(sqlite.Handle, WriteLockSliceMilliseconds);
                sqlite.DefaultTimeout = 1;
                return await begin();
            }
            catch (SqliteException e) when (e.SqliteErrorCode is 5 or 6 && System.Diagnostics.Stopwatch.GetElapsedTime(started).TotalMilliseconds < _busyTimeoutMilliseconds)
            {
                // Held still: the next slice, unless the caller has stopped waiting meanwhile.
            }
            finally
            {
                SQLitePCL.raw.sqlite3_busy_timeout(sqlite.Handle, _busyTimeoutMilliseconds);
                sqlite.DefaultTimeout = commandTimeout;
            }
        }
    }

    private protected override async Task<long> WriteMarkAsync(DbConnection connection, DbTransaction transaction, CancellationToken cancellationToken)
    {
        await using var command = Command(connection, "SELECT total_changes()");
        command.Transaction = transaction;
        return (long)(await command.ExecuteScalarAsync(cancellationToken))!;
    }

    // Copies the WAL into the database file (where secure_delete has zeroed the erased bytes)
    // and truncates the WAL to zero length, so no old frame still holds erased material.
    // A reader holding an older snapshot prevents it: a few short tries (about a second in
    // all, never the full busy timeout), then the caller retries on a later pass.
    private protected override async Task<bool> EraseFromFilesAsync(DbConnection connection, string mark, CancellationToken cancellationToken)
    {
        // The connection goes back to the pool: its configured busy timeout is restored after.
        await ExecuteAsync(connection, "PRAGMA busy_timeout = 100;", cancellationToken);
        try
        {
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
        finally
        {
            await ExecuteAsync(connection, $"PRAGMA busy_timeout = {_busyTimeoutMilliseconds};", CancellationToken.None);
        }
    }

    // The file holds wrapped key material: readable by the service's user only. SQLite gives
    // its -wal and -shm files the database file's permissions. True when it created the file.
    private static bool CreateOwnerOnly(string path)
    {
        if (File.Exists(path) || OperatingSystem.IsWindows())
        {
            return false;
        }

        using var _ = new FileStream(path, new FileStreamOptions
        {
            Mode = FileMode.CreateNew,
            Access = FileAccess.Write,
            UnixCreateMode = UnixFileMode.UserRead | UnixFileMode.UserWrite,
        });
        return true;
    }
}
