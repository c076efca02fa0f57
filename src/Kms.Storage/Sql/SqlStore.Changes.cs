using System.Data.Common;
using Kms.Core.Ports;

namespace Kms.Storage;

/// <summary>The change feed (<see cref="IChangeFeed"/>): rows written with the changes they announce.</summary>
public abstract partial class SqlStore : IChangeFeed
{
    /// <inheritdoc />
    public Task<IReadOnlyList<StoreChange>> ListChangesAsync(long afterSequence, int limit, CancellationToken cancellationToken) =>
        ReadListAsync("SELECT seq, kind, subject, time FROM changes WHERE seq > @after ORDER BY seq LIMIT @limit",
            reader => new StoreChange(reader.GetInt64(0), (StoreChangeKind)reader.GetInt32(1), reader.GetString(2), DateTimeOffset.FromUnixTimeMilliseconds(reader.GetInt64(3))),
            cancellationToken, ("@after", afterSequence), ("@limit", limit));

    /// <inheritdoc />
    public Task<long> GetChangeHeadAsync(CancellationToken cancellationToken) =>
        ReadAsync(async connection =>
        {
            await using var command = Command(connection, "SELECT coalesce(max(seq), 0) FROM changes");
            return Convert.ToInt64(await command.ExecuteScalarAsync(cancellationToken), System.Globalization.CultureInfo.InvariantCulture);
        }, cancellationToken);

    /// <inheritdoc />
    public Task<int> PruneChangesAsync(DateTimeOffset before, CancellationToken cancellationToken) =>
        WriteAsync(async (connection, transaction) =>
        {
            // The newest row stays, so the sequence never goes back (max + 1 would reuse numbers).
            await using var delete = Command(connection, "DELETE FROM changes WHERE time < @before AND seq < (SELECT max(seq) FROM changes)",
                ("@before", before.ToUnixTimeMilliseconds()));
            delete.Transaction = transaction;
            return await delete.ExecuteNonQueryAsync(cancellationToken);
        }, cancellationToken, announce: false);

    // Inside the change's own transaction, under the write lock: sequence numbers follow commit order,
    // and so do times — a node whose clock is behind writes the newest row's time, so pruning by
    // time (the leader's clock) only ever removes the oldest rows, never one in the middle. Both
    // read the newest row by its key; nothing scans the table.
    private static async Task RecordChangeAsync(DbConnection connection, DbTransaction transaction, StoreChangeKind kind, string subject, CancellationToken cancellationToken)
    {
        await using var insert = Command(connection, """
            INSERT INTO changes (seq, kind, subject, time)
            SELECT coalesce(max(seq), 0) + 1, @kind, @subject,
                   CASE WHEN coalesce((SELECT time FROM changes ORDER BY seq DESC LIMIT 1), 0) > @time
                        THEN (SELECT time FROM changes ORDER BY seq DESC LIMIT 1) ELSE @time END
            FROM changes
            """,
            ("@kind", (int)kind), ("@subject", subject), ("@time", DateTimeOffset.UtcNow.ToUnixTimeMilliseconds()));
        insert.Transaction = transaction;
        await insert.ExecuteNonQueryAsync(cancellationToken);
    }

    // An access change (tenant state, token revocation, role binding) that also tells the other nodes, if it changed a row;
    // one that changed none (a token unknown or already consumed) is not announced: a refused call writes nothing.
    private Task<bool> ExecuteAccessWriteAsync(string sql, string subject, CancellationToken cancellationToken, params (string Name, object Value)[] parameters) =>
        WriteAsync(async (connection, transaction) =>
        {
            if (!await ExecuteInAsync(connection, transaction, sql, cancellationToken, parameters))
            {
                return false;
            }

            await RecordChangeAsync(connection, transaction, StoreChangeKind.Access, subject, cancellationToken);
            return true;
        }, cancellationToken, changed: applied => applied);
}
