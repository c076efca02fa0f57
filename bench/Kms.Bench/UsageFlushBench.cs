using System.Diagnostics;
using System.Globalization;
using Kms.Core.Keys;
using Kms.Core.Ports;
using Kms.Storage;
using Kms.Storage.Postgres;
using Kms.Storage.Sqlite;
using Npgsql;

namespace Kms.Bench;

/// <summary>
/// One usage flush of many key versions on SQLite, or on PostgreSQL given a connection string
/// (a throw-away database is created beside its maintenance database): what the lifecycle worker writes every
/// <c>Lifecycle:JobInterval</c> when traffic is spread over many keys (Zipf over 100,000 keys
/// touches tens of thousands of versions in 30 s), and for which the flush holds the write lock.
/// The ids are random (no rows match), so what is timed is the statements, not the rows.
/// </summary>
internal static class UsageFlushBench
{
    public static async Task<int> RunAsync(int versions, int rounds, string? postgres = null)
    {
        if (postgres is not null)
        {
            var name = "kms_usage_flush_" + Guid.NewGuid().ToString("N")[..12];
            await ExecuteAsync(postgres, $"CREATE DATABASE {name}");
            try
            {
                var connection = new NpgsqlConnectionStringBuilder(postgres) { Database = name }.ConnectionString;
                await using var store = await PostgresStore.OpenAsync(new PostgresOptions { ConnectionString = connection }, default);
                await FlushAsync(store, versions, rounds);
            }
            finally
            {
                NpgsqlConnection.ClearAllPools();
                await ExecuteAsync(postgres, $"DROP DATABASE {name} WITH (FORCE)");
            }

            return 0;
        }

        var root = Directory.CreateTempSubdirectory("kms-usage-flush-").FullName;
        try
        {
            await using var store = await SqliteStore.OpenAsync(new SqliteOptions { DatabasePath = Path.Combine(root, "kms.db") }, default);
            await FlushAsync(store, versions, rounds);
            return 0;
        }
        finally
        {
            Microsoft.Data.Sqlite.SqliteConnection.ClearAllPools();
            Directory.Delete(root, recursive: true);
        }
    }

    private static async Task FlushAsync(SqlStore store, int versions, int rounds)
    {
        var now = DateTimeOffset.UtcNow;
        var node = Guid.NewGuid();
        for (var round = 1; round <= rounds; round++)
        {
            var deltas = Enumerable.Range(0, versions).Select(_ => new UsageDelta(KeyVersionId.NewId(), 3, null, now)).ToList();
            var cpu = Process.GetCurrentProcess().TotalProcessorTime;
            var clock = Stopwatch.StartNew();
            await store.RecordUsageAsync(new UsageFlush(node, round, now, deltas), default);
            var elapsed = clock.Elapsed;
            var used = Process.GetCurrentProcess().TotalProcessorTime - cpu;
            Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"round {round}: {versions:N0} versions flushed in {elapsed.TotalMilliseconds:F0} ms ({elapsed.TotalMilliseconds * 1000 / versions:F1} µs a version, {used.TotalMilliseconds * 1000 / versions:F1} µs of CPU)"));
        }
    }

    private static async Task ExecuteAsync(string connectionString, string sql)
    {
        await using var connection = new NpgsqlConnection(connectionString);
        await connection.OpenAsync();
        await using var command = new NpgsqlCommand(sql, connection);
        await command.ExecuteNonQueryAsync();
    }
}
