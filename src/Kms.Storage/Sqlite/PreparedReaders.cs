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
/// an idle connection holds no snapshot, so it never holds back a checkpoint. A connection whose
/// read failed is closed, not put back; <see cref="DropAll"/> (after a database fault, and at
/// disposal) closes every idle one and keeps those in use from coming back.
/// </remarks>
internal sealed class PreparedReaders(Func<CancellationToken, Task<DbConnection>> open, int maxIdle) : IDisposable
{
    private readonly ConcurrentBag<Reader> _idle = [];
    private long _epoch;
    private int _disposed;

    /// <summary>Runs <paramref name="sql"/> and maps its first row (null when there is none).</summary>
    public async Task<T?> ReadFirstAsync<T>(string sql, Func<DbDataReader, T> map, CancellationToken cancellationToken, params (string Name, object Value)[] parameters)
        where T : class
    {
        var epoch = Volatile.Read(ref _epoch);
        if (!_idle.TryTake(out var reader))
        {
            reader = new Reader((SqliteConnection)await open(cancellationToken).ConfigureAwait(false), epoch);
        }

        try
        {
            T? result;
            var command = reader.Command(sql, parameters);
            await using (var rows = await command.ExecuteReaderAsync(cancellationToken).ConfigureAwait(false))
            {
                result = await rows.ReadAsync(cancellationToken).ConfigureAwait(false) ? map(rows) : null;
            }

            if (reader.Epoch == Volatile.Read(ref _epoch) && Volatile.Read(ref _disposed) == 0 && _idle.Count < maxIdle)
            {
                _idle.Add(reader);
                reader = null;
            }

            return result;
        }
        finally
        {
            reader?.Dispose();
        }
    }

    /// <summary>Closes every idle connection; those in use are closed when their read ends.</summary>
    public void DropAll()
    {
        Interlocked.Increment(ref _epoch);
        while (_idle.TryTake(out var reader))
        {
            reader.Dispose();
        }
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
