using System.Diagnostics;
using System.Globalization;
using System.Security.Cryptography;
using Kms.Core.Audit;
using Kms.Storage;
using Kms.Storage.Sqlite;
using Microsoft.Data.Sqlite;

namespace Kms.Bench;

/// <summary>
/// One ListAuditEvents page of a sparse filter on a large SQLite log, without a server: the
/// store's statement unbounded (as every page ran before <see cref="AuditPages"/>: from the
/// cursor to the end of the log) against one bounded page, and the whole bounded listing.
/// The log is <c>events</c> GenerateDataKey-shaped events of tenant <c>dev</c>, one of them (near
/// the end) of operation <c>DestroyKeyVersion</c>; one of tenant <c>small</c> there too. Then
/// time ranges (events a millisecond apart), and retention's cut at four cutoffs, before and after
/// the log's time summary is written.
/// </summary>
internal static class AuditPageBench
{
    public static async Task<int> RunAsync(int events)
    {
        var root = Path.Combine(Path.GetTempPath(), "kms-audit-page-" + Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(4)));
        try
        {
            var path = Path.Combine(root, "kms.db");
            var t0 = DateTimeOffset.UtcNow.AddDays(-1);
            await FillAsync(path, events, t0);
            DateTimeOffset Time(int i) => t0.AddMilliseconds(i); // the i-th event's (from 0)
            await using var store = await SqliteStore.OpenAsync(new SqliteOptions { DatabasePath = path }, default);

            // The sparse filters, then the time ranges twice: before the log is summarised (the walk
            // as it was: no block to skip) and after (blocks of 10,000, as the audit housekeeping writes them).
            Console.WriteLine("| filter | unbounded page (before) ms | bounded page (after) ms | events / token of the first bounded page | whole bounded listing: pages, ms |");
            Console.WriteLine("|---|---:|---:|---|---:|");
            (string, AuditQuery)[] sparse =
            [
                ("operation DestroyKeyVersion (1 event, near the end)", new AuditQuery { Operation = "DestroyKeyVersion" }),
                ("tenant small (1 event, near the end)", new AuditQuery { Tenant = "small" }),
                ("outcome PERMISSION_DENIED (none)", new AuditQuery { Outcome = "PERMISSION_DENIED" }),
                ("operation DestroyKeyVersion, newest first", new AuditQuery { Operation = "DestroyKeyVersion", NewestFirst = true }),
            ];
            (string, AuditQuery)[] ranges =
            [
                ("the last 1,000 ms of the log (1,000 events), oldest first", new AuditQuery { StartTime = Time(events - 1000) }),
                ("1,000 ms in the middle, oldest first", new AuditQuery { StartTime = Time(events / 2), EndTime = Time((events / 2) + 1000) }),
                ("the first 1,000 ms of the log, newest first", new AuditQuery { EndTime = Time(1000), NewestFirst = true }),
            ];
            await MeasureAsync(store, sparse, "");
            await MeasureDenseAsync(store, t0);
            await MeasureAsync(store, ranges, ", not summarised");
            (string, DateTimeOffset)[] cutoffs =
            [
                ("10% of the log older", Time(events / 10)),
                ("50% older", Time(events / 2)),
                ("90% older", Time(events / 10 * 9)),
                ("all but the last 1,000 older", Time(events - 1000)),
            ];
            await MeasureCutsAsync(store, cutoffs, ", not summarised");
            var summarising = Stopwatch.StartNew();
            var blocks = 0;
            for (int written; (written = await store.SummariseAuditBlocksAsync(new AuditOptions().SummaryBlockEvents, 100, default)) > 0;)
            {
                blocks += written;
            }

            await MeasureAsync(store, ranges, ", summarised");
            await MeasureCutsAsync(store, cutoffs, ", summarised");
            Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"{blocks:N0} blocks summarised in {summarising.Elapsed.TotalSeconds:F1} s"));
        }
        finally
        {
            SqliteConnection.ClearAllPools();
            Directory.Delete(root, recursive: true);
        }

        return 0;
    }

    /// <summary>
    /// How long the audit housekeeping's summary takes a block of 10,000 events on a log of
    /// <paramref name="events"/> (as <see cref="RunAsync"/> fills it): each call of
    /// <see cref="SqlStore.SummariseAuditBlocksAsync"/> for one block timed, then the block's
    /// statement alone on a connection of its own, with its plan, at the start, middle and end.
    /// </summary>
    public static async Task<int> RunSummaryAsync(int events)
    {
        var root = Path.Combine(Path.GetTempPath(), "kms-audit-summary-" + Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(4)));
        try
        {
            var path = Path.Combine(root, "kms.db");
            await FillAsync(path, events, DateTimeOffset.UtcNow.AddDays(-1));
            var blockEvents = new AuditOptions().SummaryBlockEvents;
            await using (var store = await SqliteStore.OpenAsync(new SqliteOptions { DatabasePath = path }, default))
            {
                var times = new List<double>();
                var whole = Stopwatch.StartNew();
                while (true)
                {
                    var started = Stopwatch.GetTimestamp();
                    if (await store.SummariseAuditBlocksAsync(blockEvents, 1, default) == 0)
                    {
                        break;
                    }

                    times.Add(Stopwatch.GetElapsedTime(started).TotalMilliseconds);
                }

                var sorted = times.Order().ToArray();
                Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                    $"{times.Count:N0} blocks of {blockEvents:N0} summarised through the store in {whole.Elapsed.TotalSeconds:F2} s: a block (a call) median {sorted[sorted.Length / 2]:F1} ms, min {sorted[0]:F1}, max {sorted[^1]:F1}; the first five {string.Join(", ", times.Take(5).Select(t => t.ToString("F1", CultureInfo.InvariantCulture)))}"));
                var idle = Stopwatch.GetTimestamp();
                await store.SummariseAuditBlocksAsync(blockEvents, 20, default);
                Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"a pass with nothing complete to summarise: {Stopwatch.GetElapsedTime(idle).TotalMilliseconds:F1} ms"));

                // Again, the whole log in one call, as audit-page summarises it (up to 100 blocks a call).
                await using (var clear = new SqliteConnection($"Data Source={path};Pooling=False"))
                {
                    await clear.OpenAsync();
                    await using var delete = clear.CreateCommand();
                    delete.CommandText = "DELETE FROM audit_blocks";
                    await delete.ExecuteNonQueryAsync();
                }

                var oneCall = Stopwatch.StartNew();
                var all = await store.SummariseAuditBlocksAsync(blockEvents, 100, default);
                Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"{all:N0} blocks in one call of up to 100: {oneCall.Elapsed.TotalSeconds:F2} s"));
            }

            await using var connection = new SqliteConnection($"Data Source={path};Pooling=False;Mode=ReadOnly");
            await connection.OpenAsync();
            const string Block = "SELECT max(seq), min(time), max(time) FROM audit_events WHERE seq >= @first AND seq <= @last";
            await using (var plan = connection.CreateCommand())
            {
                plan.CommandText = "EXPLAIN QUERY PLAN " + Block;
                plan.Parameters.AddWithValue("@first", 1L);
                plan.Parameters.AddWithValue("@last", (long)blockEvents);
                await using var reader = await plan.ExecuteReaderAsync();
                while (await reader.ReadAsync())
                {
                    Console.WriteLine("plan: " + reader.GetString(3));
                }
            }

            await using (var size = connection.CreateCommand())
            {
                size.CommandText = "SELECT avg(length(body)) FROM audit_events WHERE seq <= 1000";
                var body = Convert.ToDouble(await size.ExecuteScalarAsync(), CultureInfo.InvariantCulture);
                Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"average body: {body:F0} bytes"));
            }

            foreach (var first in new long[] { 1, (events / 2 / blockEvents * blockEvents) + 1, ((events / blockEvents) - 1) * blockEvents + 1 })
            {
                await using var command = connection.CreateCommand();
                command.CommandText = Block;
                command.Parameters.AddWithValue("@first", first);
                command.Parameters.AddWithValue("@last", first + blockEvents - 1);
                var statement = await MedianAsync(() => command.ExecuteScalarAsync());
                Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"the statement alone, block from {first:N0}: median of 5 {statement:F1} ms"));
            }
        }
        finally
        {
            SqliteConnection.ClearAllPools();
            Directory.Delete(root, recursive: true);
        }

        return 0;
    }

    // A new database at `path` whose log is `events` events a millisecond apart from t0, written in one transaction.
    private static async Task FillAsync(string path, int events, DateTimeOffset t0)
    {
        await (await SqliteStore.OpenAsync(new SqliteOptions { DatabasePath = path }, default)).DisposeAsync();
        var filling = Stopwatch.StartNew();
        await using (var connection = new SqliteConnection($"Data Source={path};Pooling=False"))
        {
            await connection.OpenAsync();
            await using var transaction = await connection.BeginTransactionAsync();
            var head = AuditChain.Empty;
            foreach (var chunk in Enumerable.Range(0, events).Chunk(10_000))
            {
                var written = await SqlStore.InsertEventRowsAsync(connection, head, [.. chunk.Select(i => Entry(i, events, t0))], default);
                head = new AuditHead(written[^1].Sequence, written[^1].Hash);
            }

            await transaction.CommitAsync();
        }

        Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"{events:N0} events written in {filling.Elapsed.TotalSeconds:F1} s"));
    }

    private static async Task MeasureAsync(SqliteStore store, (string Label, AuditQuery Query)[] filters, string suffix)
    {
        foreach (var (label, query) in filters)
        {
            await store.ListAuditEventsAsync(query, default); // warm: the page cache holds the table for both
            var unbounded = await MedianAsync(() => store.ListAuditEventsAsync(query, default));
            AuditPage? first = null;
            var bounded = await MedianAsync(async () => first = await AuditPages.ListAsync(store, query, AuditPages.DefaultScanWindow, default));
            var whole = Stopwatch.StartNew();
            var pages = 0;
            for (var page = first!; ; pages++)
            {
                if (page.Next is not { } next)
                {
                    break;
                }

                page = await AuditPages.ListAsync(store, query.NewestFirst ? query with { BeforeSequence = next } : query with { AfterSequence = next }, AuditPages.DefaultScanWindow, default);
            }

            Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"| {label}{suffix} | {unbounded:F1} | {bounded:F1} | {first!.Events.Count} / {first.Next?.ToString(CultureInfo.InvariantCulture) ?? "none"} | {pages + 1}, {whole.Elapsed.TotalMilliseconds + bounded:F0} |"));
        }
    }

    // Filters most events match (no filter, the tenant's, the principal's, a time range): every page fills, so a
    // page's cost is its statements, not its window. 200 pages of 100 in a row, each from the
    // last one's cursor, as a client pages; the median of 5 such runs, per page.
    private static async Task MeasureDenseAsync(SqliteStore store, DateTimeOffset t0)
    {
        Console.WriteLine("| dense filter, pages of 100 | µs per page (median of 5 runs of 200 pages) |");
        Console.WriteLine("|---|---:|");
        (string, AuditQuery)[] dense =
        [
            ("none, oldest first", new AuditQuery { Limit = 100 }),
            ("none, newest first", new AuditQuery { Limit = 100, NewestFirst = true }),
            ("tenant dev, oldest first", new AuditQuery { Limit = 100, Tenant = "dev" }),
            ("principal token:developer, oldest first", new AuditQuery { Limit = 100, Principal = "token:developer" }),
            ("a time range holding the whole log, oldest first (not summarised)", new AuditQuery { Limit = 100, StartTime = t0 }),
        ];
        foreach (var (label, query) in dense)
        {
            var run = await MedianAsync(async () =>
            {
                var page = await AuditPages.ListAsync(store, query, AuditPages.DefaultScanWindow, default);
                for (var i = 1; i < 200; i++)
                {
                    page = await AuditPages.ListAsync(store, query.NewestFirst ? query with { BeforeSequence = page.Next!.Value } : query with { AfterSequence = page.Next!.Value }, AuditPages.DefaultScanWindow, default);
                }
            });
            Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"| {label} | {run * 1000 / 200:F0} |"));
        }
    }

    // Retention's cut (AuditLog.PruneAsync): the first event at or after the cutoff, by the query
    // it ran before (a walk from the oldest event) and from the time summary's first block that
    // can hold it (the same walk where nothing is summarised).
    private static async Task MeasureCutsAsync(SqliteStore store, (string Label, DateTimeOffset Cutoff)[] cutoffs, string suffix)
    {
        Console.WriteLine("| retention cutoff | full-scan query (before) ms | from the blocks (after) ms | cut at |");
        Console.WriteLine("|---|---:|---:|---|");
        foreach (var (label, cutoff) in cutoffs)
        {
            IReadOnlyList<AuditEvent> scanned = [];
            AuditEvent? found = null;
            var before = await MedianAsync(async () => scanned = await store.ListAuditEventsAsync(new AuditQuery { StartTime = cutoff, Limit = 1 }, default));
            var after = await MedianAsync(async () => found = await AuditPages.FirstAtOrAfterAsync(store, cutoff, 0, default));
            var cut = scanned.Count == 1 && found?.Sequence == scanned[0].Sequence
                ? found.Sequence.ToString(CultureInfo.InvariantCulture)
                : throw new InvalidOperationException($"{label}: the cuts differ ({(scanned.Count == 1 ? scanned[0].Sequence : null)}, {found?.Sequence})");
            Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"| {label}{suffix} | {before:F1} | {after:F1} | {cut} |"));
        }
    }

    private static async Task<double> MedianAsync(Func<Task> run)
    {
        var times = new double[5];
        for (var i = 0; i < times.Length; i++)
        {
            var started = Stopwatch.GetTimestamp();
            await run();
            times[i] = Stopwatch.GetElapsedTime(started).TotalMilliseconds;
        }

        Array.Sort(times);
        return times[times.Length / 2];
    }

    // Shaped like a GenerateDataKey call's event (one context key); one DestroyKeyVersion and one
    // event of another tenant near the end.
    private static AuditEntry Entry(int i, int events, DateTimeOffset t0) => new()
    {
        Time = t0.AddMilliseconds(i),
        RequestId = i.ToString("x32", CultureInfo.InvariantCulture),
        Principal = i == events - 1000 ? "token:small" : "token:developer",
        Tenant = i == events - 1000 ? "small" : "dev",
        Operation = i == events - 100 ? "/kms.v1.KeyManagementService/DestroyKeyVersion" : "/kms.v1.KeyManagementService/GenerateDataKey",
        Resource = i == events - 1000 ? "tenants/small/keys/k" : "tenants/dev/keys/load-audited",
        Outcome = "OK",
        Client = "ipv4:127.0.0.1:45678",
        Context = [KeyValuePair.Create("bench", new string('c', 64))],
    };
}
