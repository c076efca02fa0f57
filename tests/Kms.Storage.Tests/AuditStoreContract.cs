using Kms.Core.Audit;
using Kms.Core.Ports;

namespace Kms.Storage.Tests;

/// <summary>What every <see cref="IAuditStore"/> backend must do: one gap-free chain, filters, checkpoints, pruning to an anchor.</summary>
public abstract class AuditStoreContract : AccessStoreContract
{
    private static readonly DateTimeOffset T0 = new(2026, 11, 29, 12, 0, 0, TimeSpan.Zero);

    [Fact]
    public async Task Append_ChainsAcrossBatches_WithoutGaps()
    {
        var store = await AuditAsync();
        Assert.Equal(AuditChain.Empty, await store.GetAuditHeadAsync(default));
        var first = await store.AppendAuditAsync([Entry(1), Entry(2)], default);
        var second = await store.AppendAuditAsync([Entry(3)], default);

        Assert.Equal([1L, 2L, 3L], first.Concat(second).Select(e => e.Sequence));
        Assert.Equal(AuditChain.Genesis, first[0].PreviousHash);
        Assert.Equal(first[1].Hash, second[0].PreviousHash);
        Assert.Equal(new AuditHead(3, second[0].Hash), await store.GetAuditHeadAsync(default));

        var all = await store.ListAuditEventsAsync(new AuditQuery(), default);
        Assert.Equal(first.Concat(second).Select(e => (e.Sequence, e.Hash, e.Body)), all.Select(e => (e.Sequence, e.Hash, e.Body)));
        Assert.All(all, e => Assert.Equal(AuditChain.HashOf(e.Body), e.Hash));
        Assert.Equal("req-2", all[1].Entry.RequestId);
    }

    [Fact]
    public async Task List_FiltersCombine_AndPage()
    {
        var store = await AuditAsync();
        await store.AppendAuditAsync(
        [
            Entry(1) with { Principal = "token:alice", Operation = "/kms.v1.KeyManagementService/Decrypt", Resource = "tenants/dev/keys/a/versions/1" },
            Entry(2) with { Principal = "token:bob", Tenant = "acme", Resource = "tenants/acme/keys/a" },
            Entry(3) with { Principal = "token:alice", Outcome = "PERMISSION_DENIED", Resource = "tenants/dev/keys/b" },
            Entry(4) with { Principal = "token:dev-admin", Tenant = null, Resource = "tenants/dev" },
        ], default);

        async Task<long[]> Seqs(AuditQuery q) => (await store.ListAuditEventsAsync(q, default)).Select(e => e.Sequence).ToArray();
        Assert.Equal(new long[] { 1L, 3L }, await Seqs(new AuditQuery { Principal = "token:alice" }));
        Assert.Equal(new long[] { 1L }, await Seqs(new AuditQuery { Resource = "tenants/dev/keys/a" }));
        Assert.Equal(new long[] { 1L }, await Seqs(new AuditQuery { Operation = "Decrypt" }));
        Assert.Equal(new long[] { 3L }, await Seqs(new AuditQuery { Outcome = "PERMISSION_DENIED" }));
        Assert.Equal(new long[] { 1L, 3L, 4L }, await Seqs(new AuditQuery { Tenant = "dev" }));
        Assert.Equal(new long[] { 2L }, await Seqs(new AuditQuery { Tenant = "acme" }));
        Assert.Equal(new long[] { 2L, 3L }, await Seqs(new AuditQuery { StartTime = T0.AddSeconds(2), EndTime = T0.AddSeconds(4) }));
        Assert.Equal(new long[] { 3L, 4L }, await Seqs(new AuditQuery { AfterSequence = 2, Limit = 5 }));
        Assert.Equal(new long[] { 1L }, await Seqs(new AuditQuery { Limit = 1 }));

        // Newest first: descending, the cursor an upper bound, the filters as before.
        Assert.Equal(new long[] { 4L, 3L }, await Seqs(new AuditQuery { NewestFirst = true, Limit = 2 }));
        Assert.Equal(new long[] { 2L, 1L }, await Seqs(new AuditQuery { NewestFirst = true, BeforeSequence = 3, Limit = 5 }));
        Assert.Equal(new long[] { 4L, 3L, 1L }, await Seqs(new AuditQuery { NewestFirst = true, Tenant = "dev" }));
        Assert.Equal(new long[] { 1L }, await Seqs(new AuditQuery { NewestFirst = true, Principal = "token:alice", BeforeSequence = 3 }));
        Assert.Equal(new long[] { 3L, 2L }, await Seqs(new AuditQuery { NewestFirst = true, StartTime = T0.AddSeconds(2), EndTime = T0.AddSeconds(4) }));
        // Both bounds hold in either order (a page's window is the range between them).
        Assert.Equal(new long[] { 4L }, await Seqs(new AuditQuery { NewestFirst = true, AfterSequence = 3, Limit = 5 }));
        Assert.Equal(new long[] { 3L, 2L }, await Seqs(new AuditQuery { NewestFirst = true, AfterSequence = 1, BeforeSequence = 4 }));
        Assert.Equal(new long[] { 2L, 3L }, await Seqs(new AuditQuery { AfterSequence = 1, BeforeSequence = 4 }));
    }

    [Fact]
    public async Task Pages_ASparseFilter_EachPageOneWindow_ShortOrEmptyWithACursor_UntilNoneCanMatch()
    {
        // 30 events, windows of 10: the rare operation at 28, the rare outcome at 3, a principal's one event at 25.
        var store = await AuditAsync();
        await store.AppendAuditAsync(
            [.. Enumerable.Range(1, 30).Select(i => Entry(i) with
            {
                Operation = i == 28 ? "/kms.v1.KeyManagementService/DestroyKeyVersion" : "/kms.v1.KeyManagementService/Encrypt",
                Outcome = i == 3 ? "PERMISSION_DENIED" : "OK",
                Principal = i == 25 ? "token:rare" : "token:alice",
            })],
            default);

        // The page's sequences ("28", "" for none) and its cursor.
        async Task<(string Events, long? Next)> PageAsync(AuditQuery query)
        {
            var page = await AuditPages.ListAsync(store, query, 10, default);
            return (string.Join(',', page.Events.Select(e => e.Sequence)), page.Next);
        }

        // Oldest first: two empty windows, each ending where it stopped, then the event; nothing can follow.
        var rare = new AuditQuery { Operation = "DestroyKeyVersion", Limit = 5 };
        Assert.Equal(("", (long?)10), await PageAsync(rare));
        Assert.Equal(("", (long?)20), await PageAsync(rare with { AfterSequence = 10 }));
        Assert.Equal(("28", (long?)null), await PageAsync(rare with { AfterSequence = 20 }));

        // Newest first, the mirror: the cursor names the sequence to go on before.
        var denied = new AuditQuery { Outcome = "PERMISSION_DENIED", NewestFirst = true, Limit = 5 };
        Assert.Equal(("", (long?)21), await PageAsync(denied));
        Assert.Equal(("", (long?)11), await PageAsync(denied with { BeforeSequence = 21 }));
        Assert.Equal(("3", (long?)null), await PageAsync(denied with { BeforeSequence = 11 }));

        // A page that fills ends at its last event, inside its window.
        Assert.Equal(("1,2", (long?)2), await PageAsync(new AuditQuery { Limit = 2 }));
        Assert.Equal(("30,29", (long?)29), await PageAsync(new AuditQuery { NewestFirst = true, Limit = 2 }));

        // A principal's walk starts at its first event (the principal index) and ends after its last.
        Assert.Equal(("25", (long?)null), await PageAsync(new AuditQuery { Principal = "token:rare" }));
        Assert.Equal(("25", (long?)null), await PageAsync(new AuditQuery { Principal = "token:rare", NewestFirst = true }));
        Assert.Equal(("", (long?)null), await PageAsync(new AuditQuery { Principal = "token:rare", AfterSequence = 25 }));

        // The whole listing, page by page, in either order: every event once.
        foreach (var newest in new[] { false, true })
        {
            var listed = new List<long>();
            var query = new AuditQuery { NewestFirst = newest, Limit = 4, StartTime = T0.AddSeconds(6) };
            for (var page = await AuditPages.ListAsync(store, query, 10, default); ; page = await AuditPages.ListAsync(store, newest ? query with { BeforeSequence = page.Next!.Value } : query with { AfterSequence = page.Next!.Value }, 10, default))
            {
                listed.AddRange(page.Events.Select(e => e.Sequence));
                if (page.Next is null)
                {
                    break;
                }
            }

            Assert.Equal(newest ? Enumerable.Range(6, 25).Reverse().Select(i => (long)i) : Enumerable.Range(6, 25).Select(i => (long)i), listed);
        }
    }

    [Fact]
    public async Task Pages_ATimeRange_OverSummarisedBlocks_ExactlyWhatAFullScanReturns_BothOrders_TimesGoingBackwards_AndAfterAPrune()
    {
        // 200 events whose times wander back and forth across blocks of 10 (several nodes' clocks,
        // a time taken before the batch is ordered): block 5's events are hours older than block 4's.
        var store = await AuditAsync();
        var events = await store.AppendAuditAsync(
            [.. Enumerable.Range(1, 200).Select(i => Entry(i) with { Time = T0.AddSeconds((i * 37 % 101) + ((i - 1) / 10 % 3 == 1 ? -3600 : 0)), Principal = i % 7 == 0 ? "token:bob" : "token:alice" })],
            default);
        Assert.Equal(20, await store.SummariseAuditBlocksAsync(10, 100, default));
        Assert.Equal(0, await store.SummariseAuditBlocksAsync(10, 100, default));
        // An unsummarised tail: a block not yet complete.
        await store.AppendAuditAsync([.. Enumerable.Range(201, 6).Select(i => Entry(i) with { Time = T0.AddSeconds(i % 50) })], default);
        Assert.Equal(0, await store.SummariseAuditBlocksAsync(10, 100, default));

        await AssertListingsAsync();

        // A pruned prefix that ends inside a block (95 of 91..100): the blocks it cuts go, that one stays.
        await store.AddAuditCheckpointAsync(Checkpoint(events[94]), default);
        Assert.Equal(95, (await store.PruneAuditAsync(95, default)).Events);
        await AssertListingsAsync();

        // The tail completes, and the summary goes on from the last block.
        await store.AppendAuditAsync([.. Enumerable.Range(207, 20).Select(i => Entry(i) with { Time = T0.AddSeconds(-7200 + i) })], default);
        Assert.Equal(2, await store.SummariseAuditBlocksAsync(10, 100, default));
        await AssertListingsAsync();

        async Task AssertListingsAsync()
        {
            foreach (var (start, end) in new (int?, int?)[] { (-3600, -3550), (0, 10), (50, 60), (100, 101), (-7200, -7000), (null, -3590), (95, null), (200, 300), (-7100, 100) })
            {
                foreach (var principal in new[] { null, "token:bob" })
                {
                    var query = new AuditQuery { StartTime = start is { } s ? T0.AddSeconds(s) : null, EndTime = end is { } e ? T0.AddSeconds(e) : null, Principal = principal };
                    foreach (var newest in new[] { false, true })
                    {
                        var all = (await store.ListAuditEventsAsync(query with { NewestFirst = newest, Limit = 10_000 }, default)).Select(e => e.Sequence).ToList();
                        foreach (var window in new long[] { 1, 7, 25, 1000 })
                        {
                            var (listed, _) = await ListAllAsync(store, query with { NewestFirst = newest, Limit = 3 }, window);
                            Assert.True(all.SequenceEqual(listed), $"{start}..{end} {principal} newest first {newest}, window {window}: [{string.Join(',', listed)}], a full scan [{string.Join(',', all)}]");
                        }
                    }
                }
            }
        }
    }

    [Fact]
    public async Task Pages_ATimeRange_StartAtTheFirstBlockThatCanHoldIt_OnePage_WhereTheWindowsBeforeItTookMany()
    {
        // 300 events a second apart, summarised in blocks of 10; pages of windows of 10.
        var store = await AuditAsync();
        await store.AppendAuditAsync([.. Enumerable.Range(1, 300).Select(Entry)], default);
        Assert.Equal(30, await store.SummariseAuditBlocksAsync(10, 100, default));

        // Oldest first, "the last minute" of the log: its events in the first page, and the
        // listing ends there (before, 24 empty pages came first).
        var lastMinute = new AuditQuery { StartTime = T0.AddSeconds(241), Limit = 100 };
        var page = await AuditPages.ListAsync(store, lastMinute, 10, default);
        Assert.Equal(Enumerable.Range(241, 10).Select(i => (long)i), page.Events.Select(e => e.Sequence));
        var (events, pages) = await ListAllAsync(store, lastMinute, 10);
        Assert.Equal(Enumerable.Range(241, 60).Select(i => (long)i), events);
        Assert.Equal(6, pages);

        // Newest first with an old end: the first page holds the range's events, and nothing follows.
        var early = new AuditQuery { NewestFirst = true, StartTime = T0.AddSeconds(12), EndTime = T0.AddSeconds(17), Limit = 100 };
        page = await AuditPages.ListAsync(store, early, 10, default);
        Assert.Equal(new long[] { 16, 15, 14, 13, 12 }, page.Events.Select(e => e.Sequence));
        Assert.Null(page.Next);

        // A range no event is in: one empty page ends the listing, in either order.
        var none = new AuditQuery { StartTime = T0.AddSeconds(1000), Limit = 100 };
        Assert.Equal((0, 1), await CountAsync(none));
        Assert.Equal((0, 1), await CountAsync(none with { NewestFirst = true }));

        async Task<(int Events, int Pages)> CountAsync(AuditQuery query) => await ListAllAsync(store, query, 10) is var (listed, count) ? (listed.Count, count) : default;
    }

    [Fact]
    public async Task Pages_ATimeRange_AfterAPruneThatDeletedWholeBlocks_TheFirstPageStartsAtTheFirstBlockThatCanHoldIt_NotAtTheOldestEvent()
    {
        // 300 events a second apart, summarised in blocks of 10; pages of windows of 10. Retention
        // then deletes whole blocks (through 100, a block's end), and cuts into one (through 125):
        // every log with retention has no block below its oldest event.
        var store = await AuditAsync();
        var events = await store.AppendAuditAsync([.. Enumerable.Range(1, 300).Select(Entry)], default);
        Assert.Equal(30, await store.SummariseAuditBlocksAsync(10, 100, default));
        var lastMinute = new AuditQuery { StartTime = T0.AddSeconds(241), Limit = 100 };
        foreach (var through in new[] { 100, 125 })
        {
            await store.AddAuditCheckpointAsync(Checkpoint(events[through - 1]), default);
            Assert.InRange((await store.PruneAuditAsync(through, default)).Events, 1, 100);

            // Oldest first, "the last minute": its events in the first page (not an empty page of
            // the window from the oldest event, 101..110 or 126..135), and six pages in all.
            var page = await AuditPages.ListAsync(store, lastMinute, 10, default);
            Assert.True(Enumerable.Range(241, 10).Select(i => (long)i).SequenceEqual(page.Events.Select(e => e.Sequence)), $"pruned through {through}: the first page [{string.Join(',', page.Events.Select(e => e.Sequence))}], next {page.Next}");
            var (listed, pages) = await ListAllAsync(store, lastMinute, 10);
            Assert.Equal(Enumerable.Range(241, 60).Select(i => (long)i), listed);
            Assert.Equal(6, pages);

            // A range older than every event left: one empty page, in either order.
            var pruned = new AuditQuery { EndTime = T0.AddSeconds(50), Limit = 100 };
            foreach (var newest in new[] { false, true })
            {
                var (none, count) = await ListAllAsync(store, pruned with { NewestFirst = newest }, 10);
                Assert.Equal((0, 1), (none.Count, count));
            }
        }
    }

    [Fact]
    public async Task SummariseAuditBlocks_TheIncompleteTailBlock_NotReadPassAfterPass_OnlyOnceComplete()
    {
        // 25 events, blocks of 10: two complete, the third (21..30) not yet.
        var store = await AuditAsync();
        await store.AppendAuditAsync([.. Enumerable.Range(1, 25).Select(Entry)], default);
        Assert.Equal(2, await store.SummariseAuditBlocksAsync(10, 100, default));
        Assert.Equal(2, BlocksRead(store));

        // The housekeeping's passes meanwhile (every second on the leader) read no block.
        for (var pass = 0; pass < 3; pass++)
        {
            Assert.Equal(0, await store.SummariseAuditBlocksAsync(10, 100, default));
        }

        Assert.Equal(2, BlocksRead(store));

        // Complete, it is read once and summarised.
        await store.AppendAuditAsync([.. Enumerable.Range(26, 5).Select(Entry)], default);
        Assert.Equal(1, await store.SummariseAuditBlocksAsync(10, 100, default));
        Assert.Equal(3, BlocksRead(store));
        Assert.Equal(Enumerable.Range(21, 5).Select(i => (long)i), (await ListAllAsync(store, new AuditQuery { StartTime = T0.AddSeconds(21), EndTime = T0.AddSeconds(26), Limit = 100 }, 10)).Events);

        static long BlocksRead(IAuditStore store) => store switch
        {
            SqlStore sql => sql.AuditBlocksRead,
            Kms.Testing.Fakes.InMemoryStore fake => fake.AuditBlocksRead,
            _ => throw new InvalidOperationException($"{store.GetType()} does not count the blocks it reads"),
        };
    }

    [Fact]
    public async Task RetentionCut_FromTheBlocks_TheFirstEventAtOrAfterTheCutoff_AsAFullScan_TimesGoingBackwards_NoBlocks_ATail_AfterPrunes()
    {
        // Retention's cut (AuditLog.PruneAsync): the first event in sequence order whose time is at
        // or after the cutoff. 200 events ten seconds apart, jittered, and every third block of 10
        // ten minutes behind the one before (several nodes' clocks, a time taken before the batch
        // is ordered): no search on the time column could find it.
        var store = await AuditAsync();
        var events = await store.AppendAuditAsync([.. Enumerable.Range(1, 200).Select(i => Entry(i) with { Time = Time(i) })], default);

        // No blocks at all (a new database, or the summary not yet written).
        await AssertCutsAsync("no blocks");

        // Summarised, then an unsummarised tail (a block not yet complete).
        Assert.Equal(20, await store.SummariseAuditBlocksAsync(10, 100, default));
        await store.AppendAuditAsync([.. Enumerable.Range(201, 6).Select(i => Entry(i) with { Time = Time(i) })], default);
        await AssertCutsAsync("summarised, a tail");

        // A prune ending inside a block (95 of 91..100): that block stays, the ones before go.
        await store.AddAuditCheckpointAsync(Checkpoint(events[94]), default);
        Assert.Equal(95, (await store.PruneAuditAsync(95, default)).Events);
        await AssertCutsAsync("pruned inside a block");

        // A prune ending on a block's last event: the oldest event starts the next block.
        await store.AddAuditCheckpointAsync(Checkpoint(events[119]), default);
        Assert.Equal(25, (await store.PruneAuditAsync(120, default)).Events);
        await AssertCutsAsync("pruned to a block's end");

        // The tail completes and the summary goes on: times going back further still.
        await store.AppendAuditAsync([.. Enumerable.Range(207, 20).Select(i => Entry(i) with { Time = Time(i).AddSeconds(-1200) })], default);
        Assert.Equal(2, await store.SummariseAuditBlocksAsync(10, 100, default));
        await AssertCutsAsync("summary resumed");

        static DateTimeOffset Time(int i) => T0.AddSeconds((i * 10) + (i * 37 % 23) - ((i - 1) / 10 % 3 == 2 ? 600 : 0));

        async Task AssertCutsAsync(string state)
        {
            var all = await store.ListAuditEventsAsync(new AuditQuery { Limit = 10_000 }, default);
            var oldest = all[0].Sequence;
            // Every event's time, a millisecond either side of it, and times before and after them all.
            var cutoffs = all.SelectMany(e => new[] { e.Entry.Time, e.Entry.Time.AddMilliseconds(-1), e.Entry.Time.AddMilliseconds(1) })
                .Concat([T0.AddHours(-1), T0, T0.AddHours(2)])
                .Distinct()
                .Order();
            foreach (var cutoff in cutoffs)
            {
                var expected = all.FirstOrDefault(e => e.Entry.Time >= cutoff)?.Sequence;
                var fullScan = (await store.ListAuditEventsAsync(new AuditQuery { StartTime = cutoff, Limit = 1 }, default)).SingleOrDefault()?.Sequence;
                var fromTheBlocks = (await AuditPages.FirstAtOrAfterAsync(store, cutoff, oldest - 1, default))?.Sequence;
                var fromZero = (await AuditPages.FirstAtOrAfterAsync(store, cutoff, 0, default))?.Sequence;
                Assert.True(fullScan == expected && fromTheBlocks == expected && fromZero == expected, $"{state}, cutoff {cutoff:O}: expected {expected}, the full scan {fullScan}, from the blocks {fromTheBlocks}, from 0 {fromZero}");
            }
        }
    }

    [Fact]
    public async Task SummariseAuditBlocks_TwiceAtOnce_EachBlockOnce_ListingsExact()
    {
        var store = await AuditAsync();
        await store.AppendAuditAsync([.. Enumerable.Range(1, 100).Select(i => Entry(i) with { Time = T0.AddSeconds(100 - i) })], default);

        // Two nodes (here, two calls with another block size) summarising the same stretch at once.
        var both = await Task.WhenAll(store.SummariseAuditBlocksAsync(10, 100, default), store.SummariseAuditBlocksAsync(20, 100, default));
        Assert.InRange(both.Sum(), 5, 10);
        Assert.Equal(0, await store.SummariseAuditBlocksAsync(10, 100, default));

        var query = new AuditQuery { StartTime = T0.AddSeconds(30), EndTime = T0.AddSeconds(41), Limit = 4 };
        Assert.Equal(Enumerable.Range(60, 11).Select(i => (long)i), (await ListAllAsync(store, query, 5)).Events);
        Assert.Equal(Enumerable.Range(60, 11).Reverse().Select(i => (long)i), (await ListAllAsync(store, query with { NewestFirst = true }, 5)).Events);
    }

    [Theory]
    [InlineData(1)]
    [InlineData(2)]
    [InlineData(3)]
    [InlineData(4)]
    public async Task Pages_RandomLogsAndQueries_ExactlyWhatAPlainScanFinds_PrunesAndAppendsBetweenPages(int seed)
    {
        // Property: a time-ranged listing, page by page, lists every event a plain scan of the
        // events finds (by time and principal), once, in order: times that repeat, go back, jump;
        // blocks of several sizes summarised a few at a time, a tail; bounds between milliseconds;
        // between two pages, a prune (cutting into a block, or through whole ones; the page token
        // from before it) and appends. An event pruned before a page reached it may be missing, an
        // event appended meanwhile may be listed; nothing else may differ.
        var random = new Random(seed);
        var store = await AuditAsync();
        var written = new SortedDictionary<long, AuditEvent>();
        var time = T0;
        async Task AppendAsync(int count)
        {
            var entries = new List<AuditEntry>();
            for (var i = 0; i < count; i++)
            {
                // Mostly forward; repeats, steps back, an hour back or forward now and then.
                time = time.AddMilliseconds(random.Next(6) switch { 0 or 1 => 0, 2 => random.Next(1, 3), 3 => -random.Next(1, 4), 4 => random.Next(1000), _ => random.Next(2) == 0 ? -3_600_000 : 3_600_000 });
                entries.Add(Entry(written.Count + i + 1) with { Time = time, Principal = random.Next(3) == 0 ? "token:bob" : "token:alice" });
            }

            foreach (var e in await store.AppendAuditAsync(entries, default))
            {
                written[e.Sequence] = e;
            }
        }

        async Task SummariseAsync() => await store.SummariseAuditBlocksAsync(random.Next(2, 12), random.Next(1, 6), default);

        async Task PruneAsync()
        {
            var left = await store.ListAuditEventsAsync(new AuditQuery { Limit = 10_000 }, default);
            if (left.Count > 20)
            {
                var through = left[random.Next(left.Count / 4)];
                await store.AddAuditCheckpointAsync(Checkpoint(through), default);
                await store.PruneAuditAsync(through.Sequence, default);
            }
        }

        for (var round = 0; round < 6; round++)
        {
            await AppendAsync(random.Next(10, 60));
            await SummariseAsync();
            if (random.Next(3) == 0)
            {
                await PruneAsync();
            }

            for (var q = 0; q < 12; q++)
            {
                var present = await store.ListAuditEventsAsync(new AuditQuery { Limit = 100_000 }, default);
                DateTimeOffset? Bound() => random.Next(4) == 0 || present.Count == 0 ? null
                    : present[random.Next(present.Count)].Entry.Time.AddTicks(random.Next(5) switch { 0 => -10_000, 1 => -5_000, 2 => 0, 3 => 5_000, _ => 10_000 });
                var (start, end) = (Bound(), Bound());
                if (start > end)
                {
                    (start, end) = (end, start);
                }

                var query = new AuditQuery { StartTime = start, EndTime = end, Principal = random.Next(3) == 0 ? "token:bob" : null, NewestFirst = random.Next(2) == 0, Limit = random.Next(1, 6) };
                bool Matches(AuditEvent e) => (start is null || e.Entry.Time >= start) && (end is null || e.Entry.Time < end) && (query.Principal is null || e.Entry.Principal == query.Principal);
                var window = new long[] { 1, 3, 10, 50, 100_000 }[random.Next(5)];

                var before = present.Where(Matches).Select(e => e.Sequence).ToList();
                var listed = new List<long>();
                var pruned = new HashSet<long>();
                for (var page = await AuditPages.ListAsync(store, query, window, default); ;)
                {
                    listed.AddRange(page.Events.Select(e => e.Sequence));
                    if (page.Next is not { } next)
                    {
                        break;
                    }

                    Assert.True(listed.Count < 100_000, "hang guard: the listing never ended");
                    switch (random.Next(8))
                    {
                        case 0:
                            var old = (await store.ListAuditEventsAsync(new AuditQuery { Limit = 100_000 }, default)).Select(e => e.Sequence).ToHashSet();
                            await PruneAsync();
                            old.ExceptWith((await store.ListAuditEventsAsync(new AuditQuery { Limit = 100_000 }, default)).Select(e => e.Sequence));
                            pruned.UnionWith(old);
                            break;
                        case 1:
                            await AppendAsync(random.Next(1, 15));
                            break;
                        case 2:
                            await SummariseAsync();
                            break;
                        default:
                            break;
                    }

                    page = await AuditPages.ListAsync(store, query.NewestFirst ? query with { BeforeSequence = next } : query with { AfterSequence = next }, window, default);
                }

                var what = $"seed {seed}, round {round}, query {q}: {start:O}..{end:O} {query.Principal} newest first {query.NewestFirst} limit {query.Limit} window {window}: listed [{string.Join(',', listed)}], a plain scan before [{string.Join(',', before)}]";
                Assert.True(listed.Distinct().Count() == listed.Count && listed.SequenceEqual(query.NewestFirst ? listed.OrderDescending() : listed.Order()), what);
                Assert.True(listed.All(s => written.TryGetValue(s, out var e) && Matches(e)), what);
                Assert.True(before.All(s => pruned.Contains(s) || listed.Contains(s)), what);
            }
        }
    }

    [Fact]
    public async Task Pages_OneStatementEach_FullShortEmptyAndLast_BothOrders_WithATimeRangeAndAPrincipal()
    {
        // A page was up to three statements (the candidate the window starts at, the window, the
        // candidate past it), and two more each with a time range (the time summary's walk start).
        // 40 events, windows of 10, blocks of 10 summarised and a tail: full pages, short and empty
        // ones, and the last, every filter the walk treats apart.
        var store = await AuditAsync();
        await store.AppendAuditAsync(
            [.. Enumerable.Range(1, 36).Select(i => Entry(i) with
            {
                Operation = i is 8 or 27 ? "/kms.v1.KeyManagementService/DestroyKeyVersion" : "/kms.v1.KeyManagementService/Encrypt",
                Principal = i % 3 == 0 ? "token:bob" : "token:alice",
            })],
            default);
        Assert.Equal(3, await store.SummariseAuditBlocksAsync(10, 100, default));
        var queries = new AuditQuery[]
        {
            new() { Limit = 4 },
            new() { Operation = "DestroyKeyVersion", Limit = 5 },
            new() { Principal = "token:bob", Limit = 3 },
            new() { StartTime = T0.AddSeconds(12), EndTime = T0.AddSeconds(33), Limit = 4 },
            new() { StartTime = T0.AddSeconds(5), Principal = "token:bob", Operation = "DestroyKeyVersion", Limit = 2 },
        };
        foreach (var query in queries.SelectMany(q => new[] { q, q with { NewestFirst = true } }))
        {
            var pages = 0;
            for (var cursor = query; ; pages++)
            {
                var before = Statements(store);
                var page = await AuditPages.ListAsync(store, cursor, 10, default);
                var run = Statements(store) - before;
                Assert.True(run == 1, $"{query}, page {pages + 1} ({page.Events.Count} events, next {page.Next}): {run} statements");
                if (page.Next is not { } next)
                {
                    break;
                }

                cursor = query.NewestFirst ? query with { BeforeSequence = next } : query with { AfterSequence = next };
            }

            Assert.InRange(pages, 1, 20);
        }

        static long Statements(IAuditStore store) => store switch
        {
            SqlStore sql => sql.AuditReadStatements,
            Kms.Testing.Fakes.InMemoryStore fake => fake.AuditReadStatements,
            _ => throw new InvalidOperationException($"{store.GetType()} does not count the statements it runs"),
        };
    }

    // Pages the listing to its end: its events, and how many pages it took.
    private static async Task<(List<long> Events, int Pages)> ListAllAsync(IAuditStore store, AuditQuery query, long window)
    {
        var events = new List<long>();
        var pages = 0;
        for (var page = await AuditPages.ListAsync(store, query, window, default); ; page = await AuditPages.ListAsync(store, query.NewestFirst ? query with { BeforeSequence = page.Next!.Value } : query with { AfterSequence = page.Next!.Value }, window, default))
        {
            pages++;
            events.AddRange(page.Events.Select(e => e.Sequence));
            if (page.Next is null)
            {
                return (events, pages);
            }

            Assert.True(pages < 10_000, "hang guard: the listing never ended");
        }
    }

    [Fact]
    public async Task List_PrefixAndSuffixFilters_ExactAboutCaseAndUnderscore()
    {
        var store = await AuditAsync();
        await store.AppendAuditAsync(
        [
            Entry(1) with { Resource = "tenants/dev/keys/a_b/versions/1" },
            Entry(2) with { Resource = "tenants/dev/keys/aXb/versions/1" },
            Entry(3) with { Resource = "tenants/dev/keys/A/versions/1", Operation = "/kms.v1.KeyManagementService/decrypt" },
            Entry(4) with { Resource = "tenants/dev/keys/a" },
        ], default);

        async Task<long[]> Seqs(AuditQuery q) => (await store.ListAuditEventsAsync(q, default)).Select(e => e.Sequence).ToArray();
        Assert.Equal(new long[] { 1L }, await Seqs(new AuditQuery { Resource = "tenants/dev/keys/a_b" }));
        Assert.Equal(new long[] { 4L }, await Seqs(new AuditQuery { Resource = "tenants/dev/keys/a" }));
        Assert.Equal(new long[] { 3L }, await Seqs(new AuditQuery { Resource = "tenants/dev/keys/A" }));
        Assert.Equal(new long[] { 3L }, await Seqs(new AuditQuery { Operation = "decrypt" }));
        Assert.Empty(await Seqs(new AuditQuery { Operation = "Decrypt" }));
        Assert.Empty(await Seqs(new AuditQuery { Operation = "crypt" }));
    }

    [Fact]
    public async Task List_ResourceFilter_FindsAnEventByAnyKeyVersionItLists_ExactAboutCasePrefixAndUnderscore()
    {
        // A batch's one event names no resource, its items' versions in its list; ReEncrypt's
        // names its source there. Before, the filter read the resource column only.
        var store = await AuditAsync();
        await store.AppendAuditAsync(
        [
            Entry(1) with { Operation = "/kms.v1.KeyManagementService/BatchEncrypt", Resource = null, KeyVersions = ["tenants/dev/keys/a/versions/1", "tenants/dev/keys/b_c/versions/2"] },
            Entry(2) with { Operation = "/kms.v1.KeyManagementService/ReEncrypt", Resource = "tenants/dev/keys/d/versions/1", KeyVersions = ["tenants/dev/keys/a/versions/3"] },
            Entry(3) with { Resource = "tenants/dev/keys/a/versions/1" },
            Entry(4) with { Resource = null, KeyVersions = ["tenants/dev/keys/ab/versions/1", "tenants/dev/keys/A/versions/1", "tenants/dev/keys/bXc/versions/2"], OtherKeyVersions = 3 },
        ], default);

        async Task<long[]> Seqs(string resource) => (await store.ListAuditEventsAsync(new AuditQuery { Resource = resource }, default)).Select(e => e.Sequence).ToArray();
        Assert.Equal(new long[] { 1L, 2L, 3L }, await Seqs("tenants/dev/keys/a"));
        Assert.Equal(new long[] { 1L, 3L }, await Seqs("tenants/dev/keys/a/versions/1"));
        Assert.Equal(new long[] { 2L }, await Seqs("tenants/dev/keys/a/versions/3"));
        Assert.Equal(new long[] { 1L }, await Seqs("tenants/dev/keys/b_c"));
        Assert.Equal(new long[] { 2L }, await Seqs("tenants/dev/keys/d"));
        Assert.Equal(new long[] { 4L }, await Seqs("tenants/dev/keys/A"));
        Assert.Equal(new long[] { 4L }, await Seqs("tenants/dev/keys/ab"));
        Assert.Equal(new long[] { 1L, 2L, 3L, 4L }, await Seqs("tenants/dev"));
        Assert.Empty(await Seqs("tenants/dev/keys/a/versions/10"));
        Assert.Empty(await Seqs("tenants/dev/keys/b"));

        // The list is read back from the body; an event without one has no such member.
        var listed = await store.ListAuditEventsAsync(new AuditQuery(), default);
        Assert.Equal(["tenants/dev/keys/a/versions/1", "tenants/dev/keys/b_c/versions/2"], listed[0].Entry.KeyVersions);
        Assert.Equal((3L, 0L), (listed[3].Entry.OtherKeyVersions, listed[0].Entry.OtherKeyVersions));
        Assert.Null(listed[2].Entry.KeyVersions);
        Assert.DoesNotContain("key_versions", listed[2].Body, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Prune_OnlyBackToACheckpoint_WhichThenAnchorsTheHead()
    {
        var store = await AuditAsync();
        var events = await store.AppendAuditAsync([Entry(1), Entry(2), Entry(3)], default);
        await Assert.ThrowsAnyAsync<Exception>(() => store.PruneAuditAsync(2, default));

        await store.AddAuditCheckpointAsync(Checkpoint(events[0]), default);
        await store.AddAuditCheckpointAsync(Checkpoint(events[2]), default);
        Assert.Equal(3, (await store.PruneAuditAsync(3, default)).Events);

        Assert.Empty(await store.ListAuditEventsAsync(new AuditQuery(), default));
        Assert.Equal(new AuditHead(3, events[2].Hash), await store.GetAuditHeadAsync(default));
        Assert.Equal([3L], (await store.ListAuditCheckpointsAsync(0, 10, default)).Select(c => c.Sequence));
        var next = await store.AppendAuditAsync([Entry(4)], default);
        Assert.Equal((4L, events[2].Hash), (next[0].Sequence, next[0].PreviousHash));
    }

    [Fact]
    public async Task Checkpoints_StoredOnce_LatestFound()
    {
        var store = await AuditAsync();
        Assert.Null(await store.GetLatestAuditCheckpointAsync(default));
        var events = await store.AppendAuditAsync([Entry(1), Entry(2)], default);
        await store.AddAuditCheckpointAsync(Checkpoint(events[0]), default);
        await store.AddAuditCheckpointAsync(Checkpoint(events[1]), default);
        await store.AddAuditCheckpointAsync(Checkpoint(events[1]), default);
        Assert.Equal([1L, 2L], (await store.ListAuditCheckpointsAsync(0, 10, default)).Select(c => c.Sequence));
        var latest = await store.GetLatestAuditCheckpointAsync(default);
        Assert.Equal((2L, events[1].Hash), (latest!.Sequence, latest.HeadHash));
        Assert.Equal([1, 2, 3], latest.Signature);
    }

    [Fact]
    public async Task Head_ComesFromTheEvents_NotFromACheckpointRowInsertedAboveThem()
    {
        // A database writer without the HSM inserts a checkpoint row above the last event. Before,
        // it was the head: the next events chained from it (4 followed "10"), and a checkpoint was
        // signed over a head no event has.
        var store = await AuditAsync();
        var events = await store.AppendAuditAsync([Entry(1), Entry(2), Entry(3)], default);
        var forged = new string('f', 64);
        await store.AddAuditCheckpointAsync(new AuditCheckpoint(10, forged, T0, "sha256:00", AuditChain.CheckpointBody(10, forged, T0, "sha256:00"), [9]), default);

        Assert.Equal(new AuditHead(3, events[2].Hash), await store.GetAuditHeadAsync(default));
        var next = await store.AppendAuditAsync([Entry(4)], default);
        Assert.Equal((4L, events[2].Hash), (next[0].Sequence, next[0].PreviousHash));
        Assert.Equal(new AuditHead(4, next[0].Hash), await store.GetAuditHeadAsync(default));
    }

    [Fact]
    public async Task Head_NoEventStored_ACheckpointRowTheAuditKeyDidNotSign_NothingChainsOntoIt_Unavailable()
    {
        // Retention cut the whole log: the head is the checkpoint row it cut at. A database writer
        // without the HSM inserts another above it. Before, the next events chained onto that
        // row's head (8 followed "7"), and only the checkpoint over them was refused.
        var checkedRows = new List<long>();
        var store = await AuditAsync();
        store.RequireSignedCheckpointHead(row =>
        {
            checkedRows.Add(row.Sequence);
            return row.Signature.AsSpan().SequenceEqual((byte[])[1, 2, 3]); // Checkpoint()'s: "signed by the audit key"
        });
        var events = await store.AppendAuditAsync([Entry(1), Entry(2), Entry(3)], default);
        await store.AddAuditCheckpointAsync(Checkpoint(events[2]), default);
        Assert.Equal(3, (await store.PruneAuditAsync(3, default)).Events);
        var forged = new string('f', 64);
        await store.AddAuditCheckpointAsync(new AuditCheckpoint(7, forged, T0, "sha256:00", AuditChain.CheckpointBody(7, forged, T0, "sha256:00"), [9]), default);

        var refused = await Assert.ThrowsAsync<Kms.Core.Errors.KmsException>(() => store.AppendAuditAsync([Entry(8)], default));
        Assert.Equal(Kms.Core.Errors.KmsErrorCode.Unavailable, refused.Code);
        Assert.Empty(await store.ListAuditEventsAsync(new AuditQuery(), default));
        Assert.Equal([7L], checkedRows);
    }

    [Fact]
    public async Task Head_NoEventStored_TheCheckpointRowTheAuditKeySigned_ChainedOnto_CheckedOnceNotPerAppend()
    {
        var checkedRows = new List<long>();
        var store = await AuditAsync();
        store.RequireSignedCheckpointHead(row =>
        {
            checkedRows.Add(row.Sequence);
            return row.Signature.AsSpan().SequenceEqual((byte[])[1, 2, 3]);
        });
        var events = await store.AppendAuditAsync([Entry(1), Entry(2), Entry(3)], default);
        Assert.Empty(checkedRows); // a head that is an event's is never checked
        await store.AddAuditCheckpointAsync(Checkpoint(events[2]), default);
        Assert.Equal(3, (await store.PruneAuditAsync(3, default)).Events);

        var next = await store.AppendAuditAsync([Entry(4)], default);
        Assert.Equal((4L, events[2].Hash), (next[0].Sequence, next[0].PreviousHash));
        var after = await store.AppendAuditAsync([Entry(5), Entry(6)], default);
        Assert.Equal([5L, 6L], after.Select(e => e.Sequence));
        Assert.Equal([3L], checkedRows);
    }

    [Fact]
    public async Task Checkpoint_ARowStoredAheadAtItsSequence_IsReplacedAndReturned_TheSameRowAgainIsNot()
    {
        // A row inserted at a future sequence kept the genuine checkpoint out (ON CONFLICT DO NOTHING).
        var store = await AuditAsync();
        var first = await store.AppendAuditAsync([Entry(1)], default);
        var forged = new string('f', 64);
        var planted = new AuditCheckpoint(3, forged, T0, "sha256:00", AuditChain.CheckpointBody(3, forged, T0, "sha256:00"), [9]);
        Assert.Null(await store.AddAuditCheckpointAsync(planted, default));
        IReadOnlyList<AuditEvent> events = [.. first, .. await store.AppendAuditAsync([Entry(2), Entry(3)], default)];
        Assert.Equal(3, events[2].Sequence);

        var replaced = await store.AddAuditCheckpointAsync(Checkpoint(events[2]), default);
        Assert.Equal((3L, forged, "09"), (replaced?.Sequence, replaced?.HeadHash, Convert.ToHexString(replaced?.Signature ?? [])));
        var stored = await store.GetLatestAuditCheckpointAsync(default);
        Assert.Equal((3L, events[2].Hash, Checkpoint(events[2]).Body, "010203"), (stored!.Sequence, stored.HeadHash, stored.Body, Convert.ToHexString(stored.Signature)));
        Assert.Null(await store.AddAuditCheckpointAsync(Checkpoint(events[2]), default));
        Assert.Equal([3L], (await store.ListAuditCheckpointsAsync(0, 10, default)).Select(c => c.Sequence));
    }

    [Fact]
    public async Task Prune_ReturnsEveryCheckpointRowItDeleted_AsStored_NoneAtOrAboveTheCut()
    {
        // A cut deleted the checkpoint rows below it without a word: a database writer's among
        // them (AuditLog reports those the audit key did not sign, event 1344). Now each comes back,
        // read by the delete itself, with every column as stored.
        var store = await AuditAsync();
        var events = await store.AppendAuditAsync([.. Enumerable.Range(1, 5).Select(Entry)], default);
        var forged = new string('f', 64);
        AuditCheckpoint Planted(long sequence) => new(sequence, forged, T0.AddSeconds(sequence), "sha256:0" + sequence, AuditChain.CheckpointBody(sequence, forged, T0, "sha256:00"), [9, (byte)(sequence & 0xFF)]);
        foreach (var sequence in new long[] { 2, -3, 0 })
        {
            Assert.Null(await store.AddAuditCheckpointAsync(Planted(sequence), default));
        }

        Assert.Null(await store.AddAuditCheckpointAsync(Checkpoint(events[0]), default));
        Assert.Null(await store.AddAuditCheckpointAsync(Checkpoint(events[2]), default));
        Assert.Null(await store.AddAuditCheckpointAsync(Planted(4), default));

        var pruned = await store.PruneAuditAsync(3, default);
        Assert.Equal(3, pruned.Events);
        Assert.Equal([-3L, 0L, 1L, 2L], pruned.CheckpointRows.Select(c => c.Sequence));
        foreach (var (row, expected) in pruned.CheckpointRows.Zip(new[] { Planted(-3), Planted(0), Checkpoint(events[0]), Planted(2) }))
        {
            Assert.Equal(
                (expected.HeadHash, expected.Time.ToUnixTimeMilliseconds(), expected.KeyFingerprint, expected.Body, Convert.ToHexString(expected.Signature)),
                (row.HeadHash, row.Time.ToUnixTimeMilliseconds(), row.KeyFingerprint, row.Body, Convert.ToHexString(row.Signature)));
        }

        Assert.Equal([3L, 4L], (await store.ListAuditCheckpointsAsync(long.MinValue, 10, default)).Select(c => c.Sequence));
        Assert.Empty((await store.PruneAuditAsync(3, default)).CheckpointRows);
    }

    [Fact]
    public async Task Head_Source_SaysWhetherTheHeadIsAnEventsOrACheckpointRows()
    {
        // AuditLog.CheckpointAsync listed the event at the head to tell; the head's read says so.
        var store = await AuditAsync();
        Assert.Equal(new AuditHeadSource(AuditChain.Empty, false), await store.GetAuditHeadSourceAsync(default));
        var events = await store.AppendAuditAsync([.. Enumerable.Range(1, 3).Select(Entry)], default);
        Assert.Equal(new AuditHeadSource(new AuditHead(3, events[2].Hash), false), await store.GetAuditHeadSourceAsync(default));
        Assert.Null(await store.AddAuditCheckpointAsync(Checkpoint(events[2]), default));
        var forged = new string('f', 64);
        Assert.Null(await store.AddAuditCheckpointAsync(new AuditCheckpoint(9, forged, T0, "sha256:00", AuditChain.CheckpointBody(9, forged, T0, "sha256:00"), [9]), default));
        Assert.Equal(new AuditHeadSource(new AuditHead(3, events[2].Hash), false), await store.GetAuditHeadSourceAsync(default)); // the events', whatever rows lie above

        Assert.Equal(3, (await store.PruneAuditAsync(3, default)).Events);
        Assert.Equal(new AuditHeadSource(new AuditHead(9, forged), true), await store.GetAuditHeadSourceAsync(default));
        Assert.Equal(new AuditHead(9, forged), await store.GetAuditHeadAsync(default));
    }

    protected async Task<IAuditStore> AuditAsync() => (IAuditStore)await CreateStoreAsync();

    public static AuditEntry Entry(int i) => new()
    {
        Time = T0.AddSeconds(i),
        RequestId = $"req-{i}",
        Principal = "token:alice",
        Tenant = "dev",
        Operation = "/kms.v1.KeyManagementService/Encrypt",
        Resource = "tenants/dev/keys/k",
        Outcome = "OK",
    };

    private protected static AuditCheckpoint Checkpoint(AuditEvent e) =>
        new(e.Sequence, e.Hash, T0, "sha256:00", AuditChain.CheckpointBody(e.Sequence, e.Hash, T0, "sha256:00"), [1, 2, 3]);
}
