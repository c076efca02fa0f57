using System.Diagnostics;
using System.Globalization;
using Kms.Core.Keys;
using Kms.Core.Ports;
using Kms.Storage.Sqlite;

namespace Kms.Bench;

/// <summary>
/// One usage flush of many key versions on SQLite: what the lifecycle worker writes every
/// <c>Lifecycle:JobInterval</c> when traffic is spread over many keys (Zipf over 100,000 keys
/// touches tens of thousands of versions in 30 s), and for which the flush holds the write lock.
/// The ids are random (no rows match), so what is timed is the statements, not the rows.
/// </summary>
internal static class UsageFlushBench
{
    public static async Task<int> RunAsync(int versions, int rounds)
    {
        var root = Directory.CreateTempSubdirectory("kms-usage-flush-").FullName;
        try
        {
            await using var store = await SqliteStore.OpenAsync(new SqliteOptions { DatabasePath = Path.Combine(root, "kms.db") }, default);
            var now = DateTimeOffset.UtcNow;
            for (var round = 1; round <= rounds; round++)
            {
                var deltas = Enumerable.Range(0, versions).Select(_ => new UsageDelta(KeyVersionId.NewId(), 3, null, now)).ToList();
                var cpu = Process.GetCurrentProcess().TotalProcessorTime;
                var clock = Stopwatch.StartNew();
                await store.RecordUsageAsync(deltas, default);
                var elapsed = clock.Elapsed;
                var used = Process.GetCurrentProcess().TotalProcessorTime - cpu;
                Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                    $"round {round}: {versions:N0} versions flushed in {elapsed.TotalMilliseconds:F0} ms ({elapsed.TotalMilliseconds * 1000 / versions:F1} µs a version, {used.TotalMilliseconds * 1000 / versions:F1} µs of CPU)"));
            }

            return 0;
        }
        finally
        {
            Microsoft.Data.Sqlite.SqliteConnection.ClearAllPools();
            Directory.Delete(root, recursive: true);
        }
    }
}
