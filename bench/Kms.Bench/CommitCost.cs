using System.Diagnostics;
using System.Globalization;
using System.Security.Cryptography;
using Kms.Core.Audit;
using Kms.Storage.Sqlite;
using Microsoft.Data.Sqlite;

namespace Kms.Bench;

/// <summary>
/// What one durable audit commit costs on this machine's disk, without a server: events
/// appended through <see cref="SqliteStore"/> (its audit writer; WAL, <c>synchronous=FULL</c>,
/// the store's only setting) one commit after another — and the same insert on a raw
/// connection with <c>synchronous=OFF</c> (no flush: what is left is CPU). The difference is
/// the flush that an audited call waits for when it has no one to share a commit with.
/// </summary>
internal static class CommitCost
{
    public static async Task<int> RunAsync(int commits)
    {
        var root = Path.Combine(Path.GetTempPath(), "kms-commit-" + Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(4)));
        try
        {
            Console.WriteLine("| commit | median ms | p90 ms | p99 ms | commits/s |");
            Console.WriteLine("|---|---:|---:|---:|---:|");
            await using (var store = await SqliteStore.OpenAsync(new SqliteOptions { DatabasePath = Path.Combine(root, "full.db") }, default))
            {
                foreach (var size in new[] { 1, 16 })
                {
                    var batch = Enumerable.Range(0, size).Select(_ => Entry()).ToArray();
                    await store.AppendAuditAsync(batch, default); // warm-up: connection, statements
                    Report($"{size} event{(size == 1 ? "" : "s")}, synchronous=FULL (SqliteStore)", await TimeAsync(commits, () => store.AppendAuditAsync(batch, default)));
                }
            }

            // The same schema (the store's migrations) and rows, without the flush.
            var off = Path.Combine(root, "off.db");
            await (await SqliteStore.OpenAsync(new SqliteOptions { DatabasePath = off }, default)).DisposeAsync();
            await using var connection = new SqliteConnection($"Data Source={off};Pooling=False");
            await connection.OpenAsync();
            await using (var pragma = connection.CreateCommand())
            {
                pragma.CommandText = "PRAGMA synchronous = OFF;";
                await pragma.ExecuteNonQueryAsync();
            }

            var head = AuditChain.Empty;
            var entry = Entry();
            Report("1 event, synchronous=OFF (raw connection, no flush)", await TimeAsync(commits, async () =>
            {
                var linked = AuditChain.Link(head, entry);
                await using var command = connection.CreateCommand();
                command.CommandText = """
                    BEGIN IMMEDIATE;
                    INSERT INTO audit_events (seq, time, principal, tenant, operation, resource, outcome, body, hash)
                    VALUES ($seq, 0, 'token:bench', 'dev', 'op', 'tenants/dev/keys/k', 'OK', $body, $hash);
                    COMMIT;
                    """;
                command.Parameters.AddWithValue("$seq", linked.Sequence);
                command.Parameters.AddWithValue("$body", linked.Body);
                command.Parameters.AddWithValue("$hash", linked.Hash);
                await command.ExecuteNonQueryAsync();
                head = new AuditHead(linked.Sequence, linked.Hash);
            }));
        }
        finally
        {
            SqliteConnection.ClearAllPools();
            Directory.Delete(root, recursive: true);
        }

        return 0;
    }

    private static async Task<double[]> TimeAsync(int commits, Func<Task> commit)
    {
        var times = new double[commits];
        for (var i = 0; i < commits; i++)
        {
            var started = Stopwatch.GetTimestamp();
            await commit();
            times[i] = Stopwatch.GetElapsedTime(started).TotalMilliseconds;
        }

        Array.Sort(times);
        return times;
    }

    private static void Report(string label, double[] sorted)
    {
        double At(double p) => sorted[(int)Math.Min(sorted.Length - 1, Math.Floor(p * sorted.Length))];
        Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"| {label} | {At(0.5):F3} | {At(0.9):F3} | {At(0.99):F3} | {sorted.Length / sorted.Sum() * 1000:N0} |"));
    }

    // Shaped like a GenerateDataKey call's event (one context key).
    private static AuditEntry Entry() => new()
    {
        Time = DateTimeOffset.UtcNow,
        RequestId = Guid.NewGuid().ToString("N"),
        Principal = "token:developer",
        Tenant = "dev",
        Operation = "/kms.v1.KeyManagementService/GenerateDataKey",
        Resource = "tenants/dev/keys/load-audited",
        Outcome = "OK",
        Client = "ipv4:127.0.0.1:45678",
        Context = [KeyValuePair.Create("bench", new string('c', 64))],
    };
}
