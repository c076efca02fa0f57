using System.Diagnostics;
using System.Globalization;
using Kms.Core.Audit;
using Kms.Core.Services;
using Kms.Storage.Sqlite;
using Microsoft.AspNetCore.Builder;
using Microsoft.Data.Sqlite;
using Microsoft.Extensions.DependencyInjection;

namespace Kms.Bench;

/// <summary>
/// The SIEM stream file (<c>Kms:Audit:StreamPath</c>) on SQLite, in two steps. Under load: a
/// closed loop of GenerateDataKey against a node with the stream on, then how far the stream is
/// behind the audit head when the load stops, and how long it takes to catch up. A backlog: the
/// node stopped, <c>backlog</c> events appended to its database, and restarted with the stream file
/// saying it holds nothing (one line naming sequence 0), so the whole log is forwarded again from
/// the first event: events forwarded a second, timed from the first page, with no load.
/// </summary>
internal static class StreamBench
{
    public static async Task<int> RunAsync(TimeSpan duration, int concurrency, int backlog)
    {
        var (options, root) = BenchEnvironment.CreateToken();
        var stream = Path.Combine(root, "siem.jsonl");
        try
        {
            long head;
            {
                var app = await LoadGenerator.BuildServerAsync(options, root, audit: true, $"--Kms:Audit:StreamPath={stream}");
                var audit = app.Services.GetRequiredService<AuditLog>();
                long written = 0, forwarded = 0;
                audit.BatchWritten += (size, _) => Interlocked.Add(ref written, size);
                audit.EventsWritten += events => Volatile.Write(ref forwarded, events[^1].Sequence);
                await app.StartAsync();
                try
                {
                    using var client = LoadGenerator.Connect(app, root);
                    var call = await PerfSuite.OperationAsync(client, "generate");
                    await LoadLoops.ClosedAsync(concurrency, TimeSpan.FromSeconds(5), call); // warm-up
                    var (writtenBefore, forwardedBefore) = (Interlocked.Read(ref written), Volatile.Read(ref forwarded));
                    var result = await LoadLoops.ClosedAsync(concurrency, duration, call);
                    var (writtenAfter, forwardedAfter) = (Interlocked.Read(ref written), Volatile.Read(ref forwarded));
                    var headAtEnd = (await app.Services.GetRequiredService<Kms.Core.Ports.IAuditStore>().GetAuditHeadAsync(default)).Sequence;
                    var behind = Stopwatch.StartNew();
                    while (Volatile.Read(ref forwarded) < headAtEnd)
                    {
                        await Task.Delay(10);
                    }

                    Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                        $"under load: GenerateDataKey c={concurrency} for {duration.TotalSeconds} s: {result.OpsPerSecond:N0} ops/s, {(writtenAfter - writtenBefore) / duration.TotalSeconds:N0} audit events written/s, {(forwardedAfter - forwardedBefore) / duration.TotalSeconds:N0} forwarded/s; at the end the stream was {headAtEnd - forwardedAfter:N0} events behind the head, caught up {behind.Elapsed.TotalMilliseconds:N0} ms later"));
                    head = Volatile.Read(ref forwarded);
                }
                finally
                {
                    await app.StopAsync();
                    await app.DisposeAsync();
                }
            }

            // A backlog: events appended to the database while the node is stopped (as by other
            // nodes, or an outage of the stream), and the stream "holding nothing": the restarted
            // node forwards the whole log again.
            await using (var store = await SqliteStore.OpenAsync(new SqliteOptions { DatabasePath = Path.Combine(root, "kms.db") }, default))
            {
                for (var appended = 0; appended < backlog; appended += 1000)
                {
                    await store.AppendAuditAsync([.. Enumerable.Range(appended, 1000).Select(Entry)], default);
                }

                head = (await store.GetAuditHeadAsync(default)).Sequence;
            }

            SqliteConnection.ClearAllPools();
            File.WriteAllText(stream, "{\"event\":{\"seq\":0}}\n");
            {
                var app = await LoadGenerator.BuildServerAsync(options, root, audit: true, $"--Kms:Audit:StreamPath={stream}");
                var audit = app.Services.GetRequiredService<AuditLog>();
                long forwarded = 0, firstPage = 0, pages = 0, firstPageCpu = 0;
                var passes = 0;
                audit.EventsWritten += events =>
                {
                    if (Interlocked.Increment(ref pages) == 1)
                    {
                        Volatile.Write(ref firstPageCpu, Process.GetCurrentProcess().TotalProcessorTime.Ticks);
                        Volatile.Write(ref firstPage, Stopwatch.GetTimestamp());
                    }

                    Volatile.Write(ref forwarded, events[^1].Sequence);
                };
                audit.HousekeepingPassEnded += () => Interlocked.Increment(ref passes);
                await app.StartAsync();
                try
                {
                    while (Volatile.Read(ref forwarded) < head)
                    {
                        await Task.Delay(10);
                    }

                    // From the first page handed to the stream to the head: the forwarding alone, not the start.
                    // The process's CPU over it too (no load runs then: the forwarding, the passes'
                    // other work, the GC and the runtime), per event forwarded.
                    var seconds = Stopwatch.GetElapsedTime(Volatile.Read(ref firstPage)).TotalSeconds;
                    var cpu = TimeSpan.FromTicks(Process.GetCurrentProcess().TotalProcessorTime.Ticks - Volatile.Read(ref firstPageCpu));
                    Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                        $"backlog: {head:N0} events forwarded in {seconds:F2} s, {head / seconds:N0} events/s, CPU {cpu.TotalSeconds:F2} s ({cpu.TotalMicroseconds / head:F1} µs an event, {cpu.TotalSeconds / seconds:F2} cores), in {Volatile.Read(ref passes)} housekeeping passes; stream file {new FileInfo(stream).Length / 1048576.0:F0} MiB; load average {File.ReadAllText("/proc/loadavg").Split(' ')[0]}"));
                }
                finally
                {
                    await app.StopAsync();
                    await app.DisposeAsync();
                }
            }
        }
        finally
        {
            Directory.Delete(root, recursive: true);
        }

        return 0;
    }

    // A GenerateDataKey's event, as the server writes one.
    private static AuditEntry Entry(int i) => new()
    {
        Time = DateTimeOffset.UtcNow,
        RequestId = "bench-" + i.ToString(CultureInfo.InvariantCulture),
        Principal = "token:developer",
        Tenant = "dev",
        Operation = "/kms.v1.KeyManagementService/GenerateDataKey",
        Resource = "tenants/dev/keys/bench-generate/versions/1",
        Outcome = "OK",
        Client = "127.0.0.1",
    };
}
