using System.Data.Common;
using System.Globalization;
using Kms.Core.Audit;
using Kms.Core.Errors;

namespace Kms.Storage;

/// <summary>
/// The connection that group commits go through: opened once, with its statements
/// (begin and take the store's write lock, the insert, <c>COMMIT</c>) prepared once and kept
/// across batches, and — on SQLite — the chain head kept in memory between commits.
/// </summary>
/// <remarks>
/// The head in memory is used only while no other connection has committed since this
/// one last did: SQLite's <c>PRAGMA data_version</c>, read inside the write transaction (under
/// the database's write lock), changes exactly when another connection — a mutation carrying
/// its own event, a prune, another process — has committed; then the head is read from
/// the database as before. PostgreSQL has no such number, and other nodes append to the same
/// chain, so there the head is read under the lock on every batch. The head and the version are updated only after a
/// <c>COMMIT</c> succeeds; any failure forgets both and closes the connection (which rolls
/// back whatever it had begun), and the next batch opens a new one: a write that failed
/// leaves nothing behind, neither in the file nor in memory. Durability is the store's:
/// a batch is durable when <see cref="AppendAsync"/> returns.
/// </remarks>
internal sealed class AuditWriter(SqlStore store) : IDisposable, IAsyncDisposable
{
    // One batch at a time: a connection is not thread-safe, and the head is this writer's.
    private readonly SemaphoreSlim _gate = new(1, 1);
    private Statements? _statements;
    private AuditHead? _head;
    private long? _dataVersion;
    private bool _disposed;

    // Appends that gave up waiting (for the write lock, or for the database): changed under the
    // gate, read before it.
    private int _gaveUp;

    /// <summary>How many batches found the head in memory.</summary>
    public long HeadsFromMemory { get; private set; }

    /// <summary>How many batches read the head from the database (first batch, another writer in between, after a failure).</summary>
    public long HeadsFromDatabase { get; private set; }

    /// <summary>Chains and inserts <paramref name="entries"/> in one durable transaction.</summary>
    /// <remarks>
    /// An append that waited at the gate while the one before it gave up waiting for the write
    /// lock (or for the database) fails the same way at once, without a wait of its own: it would
    /// wait as long again, for a lock just found held for a whole timeout, and its callers would
    /// have waited two timeouts (a group commit queued behind a refusal summary or a retention
    /// record, which are written from beside the commit loop).
    /// </remarks>
    public async Task<IReadOnlyList<AuditEvent>> AppendAsync(IReadOnlyList<AuditEntry> entries, CancellationToken cancellationToken)
    {
        var gaveUpBefore = Volatile.Read(ref _gaveUp);
        await _gate.WaitAsync(cancellationToken);
        try
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            if (_gaveUp != gaveUpBefore)
            {
                throw KmsErrors.DatabaseGaveUpWaiting();
            }

            var statements = _statements ??= await Statements.PrepareAsync(store, await store.OpenConnectionAsync(cancellationToken, pooled: false), cancellationToken);
            try
            {
                await store.BeginAuditAsync(statements.Begin, cancellationToken);
                var version = statements.DataVersion is null ? (long?)null : Convert.ToInt64(await statements.DataVersion.ExecuteScalarAsync(cancellationToken), CultureInfo.InvariantCulture);
                AuditHead head;
                if (_head is { } known && version is not null && version == _dataVersion)
                {
                    head = known;
                    HeadsFromMemory++;
                }
                else
                {
                    head = await store.ReadChainableHeadAsync(statements.Connection, null, cancellationToken);
                    HeadsFromDatabase++;
                }

                // Across a network (PostgreSQL) one statement per batch, not a round trip per event under the lock.
                var written = store.MultiRowAuditInsert && entries.Count > 1
                    ? await SqlStore.InsertEventRowsAsync(statements.Connection, head, entries, cancellationToken)
                    : await SqlStore.InsertEventsAsync(statements.Insert, head, entries, cancellationToken);
                await store.CommitAuditAsync(statements.Commit);

                // Committed: only now does memory follow the file. Our own commit leaves data_version as it was.
                _head = written.Count == 0 ? head : new AuditHead(written[^1].Sequence, written[^1].Hash);
                _dataVersion = version;
                return written;
            }
            catch
            {
                _head = null;
                _statements = null;
                await statements.DisposeAsync();
                throw;
            }
        }
        catch (DbException e) when (store.GaveUpWaitingOn(e))
        {
            Volatile.Write(ref _gaveUp, _gaveUp + 1);
            throw;
        }
        finally
        {
            _gate.Release();
        }
    }

    /// <summary>
    /// How long disposal waits for a batch in flight. A COMMIT is never cancelled (it may wait
    /// for PostgreSQL's synchronous standby for as long as the standby is away), so a shutdown
    /// does not wait for it without end: past this, the writer is marked closed and the batch's
    /// connection left to its COMMIT (whose caller gets no acknowledgement before it returns).
    /// </summary>
    internal static readonly TimeSpan DisposeWait = TimeSpan.FromSeconds(10);

    public async ValueTask DisposeAsync()
    {
        if (!await _gate.WaitAsync(DisposeWait))
        {
            _disposed = true;
            return;
        }

        try
        {
            Close()?.Dispose();
        }
        finally
        {
            _gate.Release();
        }
    }

    public void Dispose()
    {
        if (!_gate.Wait(DisposeWait))
        {
            _disposed = true;
            return;
        }

        try
        {
            Close()?.Dispose();
        }
        finally
        {
            _gate.Release();
        }
    }

    private Statements? Close()
    {
        _disposed = true;
        _head = null;
        var statements = _statements;
        _statements = null;
        return statements;
    }

    private sealed class Statements(SqlStore store, DbConnection connection) : IDisposable, IAsyncDisposable
    {
        public DbConnection Connection { get; } = connection;

        public DbCommand Begin { get; } = Create(connection, store.AuditBeginSql);

        public DbCommand? DataVersion { get; } = store.AuditDataVersionSql is { } sql ? Create(connection, sql) : null;

        public DbCommand Insert { get; } = SqlStore.InsertEventCommand(connection);

        public DbCommand Commit { get; } = Create(connection, "COMMIT");

        public static async Task<Statements> PrepareAsync(SqlStore store, DbConnection connection, CancellationToken cancellationToken)
        {
            var statements = new Statements(store, connection);
            try
            {
                await statements.Begin.PrepareAsync(cancellationToken);
                if (statements.DataVersion is { } dataVersion)
                {
                    await dataVersion.PrepareAsync(cancellationToken);
                }

                await statements.Insert.PrepareAsync(cancellationToken);
                await statements.Commit.PrepareAsync(cancellationToken);
                return statements;
            }
            catch
            {
                await statements.DisposeAsync();
                throw;
            }
        }

        // Closing the connection rolls back a transaction it left open (it is not pooled).
        public void Dispose()
        {
            foreach (var command in new[] { Begin, DataVersion, Insert, Commit })
            {
                command?.Dispose();
            }

            Connection.Dispose();
        }

        public ValueTask DisposeAsync()
        {
            Dispose();
            return ValueTask.CompletedTask;
        }

        private static DbCommand Create(DbConnection connection, string sql)
        {
            var command = connection.CreateCommand();
            command.CommandText = sql;
            return command;
        }
    }
}
