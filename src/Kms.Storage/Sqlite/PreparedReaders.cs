using System.Collections.Concurrent;
using System.Data.Common;
using Microsoft.Data.Sqlite;

namespace Kms.Storage.Sqlite;

/// <summary>
/// Connections kept open for the hot path's reads, each with its statements compiled once.
/// </summary>
/// <remarks>
/// Microsoft.Data.Sqlite compiles a command's SQL again for every new command, even on a pooled
/// connection (dotnet/efcore#14044); for the indexed join that finds a key version by id the
/// compilation cost more than the lookup (docs/benchmarks.md, "Zipf"). A caller takes an idle
/// connection (or opens one), runs its statement with new parameter values, and puts it back.
/// A statement's reader is disposed before the connection goes back, which resets the statement:
/// an idle connection holds no snapshot, so it never holds back a checkpoint. At most
/// <c>max</c> connections exist; a caller that finds none idle and the bound reached runs its read
/// the ordinary way (<c>fallback</c>: a pooled connection, the statement compiled for it), so a burst
/// never opens and closes connections. A connection whose read failed is closed, not put back;
/// <see cref="DropAll"/> (after a database fault, and at disposal) closes every idle one, and those
/// in use, or opened before it, are closed when they next come back.
/// </remarks>
internal sealed class PreparedReaders(Func<CancellationToken, Task<DbConnection>> open, int max) : IDisposable
{
    private readonly ConcurrentBag<Reader> _idle = [];
    private long _epoch;
    private int _live;
    private int _disposed;

    /// <summary>Runs <paramref name="sql"/> and maps its first row (null when there is none).</summary>
    public async Task<T?> ReadFirstAsync<T>(string sql, Func<DbDataReader, T> map, Func<Task<T?>> fallback, CancellationToken cancellationToken, params (string Name, object Value)[] parameters)
        where T : class
    {
        var reader = await RentAsync(cancellationToken).ConfigureAwait(false);
        if (reader is null)
        {
            return await fallback().ConfigureAwait(false);
        }

        try
        {
            T? result;
            var command = reader.Command(sql, parameters);
            await using (var rows = await command.ExecuteReaderAsync(cancellationToken).ConfigureAwait(false))
            {
                result = await rows.ReadAsync(cancellationToken).ConfigureAwait(false) ? map(rows) : null;
            }

            if (reader.Epoch == Volatile.Read(ref _epoch) && Volatile.Read(ref _disposed) == 0)
            {
                _idle.Add(reader);
                reader = null;
            }

            return result;
        }
        finally
        {
            if (reader is not null)
            {
                Close(reader);
            }
        }
    }

    /// <summary>Closes every idle connection; the others are closed when they come back.</summary>
    public void DropAll()
    {
        Interlocked.Increment(ref _epoch);
        while (_idle.TryTake(out var reader))
        {
            Close(reader);
        }
    }

    // An idle connection of the current epoch; else a new one within the bound; else null.
    private async Task<Reader?> RentAsync(CancellationToken cancellationToken)
    {
        var epoch = Volatile.Read(ref _epoch);
        while (_idle.TryTake(out var idle))
        {
            if (idle.Epoch == epoch)
            {
                return idle;
            }

            Close(idle); // put back by a read that raced DropAll
        }

        if (Interlocked.Increment(ref _live) > max)
        {
            Interlocked.Decrement(ref _live);
            return null;
        }

        try
        {
            return new Reader((SqliteConnection)await open(cancellationToken).ConfigureAwait(false), epoch);
        }
        catch
        {
            Interlocked.Decrement(ref _live);
            throw;
        }
    }

    private void Close(Reader reader)
    {
        reader.Dispose();
        Interlocked.Decrement(ref _live);
    }

    public void Dispose()
    {
        Volatile.Write(ref _disposed, 1);
        DropAll();
    }

    private sealed class Reader(SqliteConnection connection, long epoch) : IDisposable
    {
        private readonly Dictionary<string, SqliteCommand> _commands = new(StringComparer.Ordinal);

        public long Epoch { get; } = epoch;

        // The same SQL always comes with the same parameters in the same order (one call site each).
        public SqliteCommand Command(string sql, (string Name, object Value)[] parameters)
        {
            if (!_commands.TryGetValue(sql, out var command))
            {
                command = connection.CreateCommand();
                command.CommandText = sql;
                foreach (var (name, _) in parameters)
                {
                    command.Parameters.Add(new SqliteParameter { ParameterName = name });
                }

                command.Prepare();
                _commands.Add(sql, command);
            }

            for (var i = 0; i < parameters.Length; i++)
            {
                command.Parameters[i].Value = parameters[i].Value;
            }

            return command;
        }

        public void Dispose()
        {
            foreach (var command in _commands.Values)
            {
                command.Dispose();
            }

            connection.Dispose();
        }
    }
}
