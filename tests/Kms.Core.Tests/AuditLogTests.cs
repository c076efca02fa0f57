using System.Security.Cryptography;
using Kms.Core.Audit;
using Kms.Core.Errors;
using Kms.Core.Ports;
using Kms.Core.Services;
using Kms.Testing.Fakes;
using Microsoft.Extensions.Time.Testing;

namespace Kms.Core.Tests;

/// <summary>The audit log's write path: group commit, no audit no answer, refusal aggregation, checkpoints, retention, context hashing.</summary>
public sealed class AuditLogTests : IAsyncLifetime, IDisposable
{
    private readonly FakeHsm _hsm = new();
    private readonly InMemoryStore _store = new();
    private readonly FakeTimeProvider _time = new(new DateTimeOffset(2026, 11, 29, 12, 0, 0, TimeSpan.Zero));
    private readonly CancellationTokenSource _stop = new();
    private AuditLog _log = null!;
    private Task _loop = Task.CompletedTask;

    public async Task InitializeAsync()
    {
        _log = new AuditLog(_store, _store, _hsm, _time, new AuditOptions { CheckpointEveryEvents = 50, CheckpointInterval = TimeSpan.FromMinutes(1), RefusalWindow = TimeSpan.FromSeconds(10), Retention = TimeSpan.FromDays(30) });
        await _log.InitializeAsync(default);
        _loop = Task.Run(() => _log.RunAsync(_stop.Token));
    }

    public async Task DisposeAsync()
    {
        await _stop.CancelAsync();
        await _loop.WaitAsync(HangGuard.Time).ContinueWith(_ => { }, TaskScheduler.Default);
    }

    public void Dispose()
    {
        _hsm.Dispose();
        _stop.Dispose();
    }

    [Fact]
    public async Task ConcurrentAppends_AllDurableWhenTheyReturn_InFewerCommitsThanEvents()
    {
        // A commit that takes as long as a disk's flush: grouping is then what the loop must do,
        // not a matter of how fast this machine schedules the 200 callers.
        _store.AuditCommitLatency = TimeSpan.FromMilliseconds(5);
        var batches = new List<int>();
        _log.BatchWritten += (size, _) => { lock (batches) { batches.Add(size); } };
        await Task.WhenAll(Enumerable.Range(0, 200).Select(i => Task.Run(() => _log.AppendAsync(Entry($"req-{i}"), default))));

        var written = await _store.ListAuditEventsAsync(new AuditQuery { Limit = 1000 }, default);
        Assert.Equal(200, written.Count);
        Assert.Equal(Enumerable.Range(0, 200).Select(i => $"req-{i}").Order(), written.Select(e => e.Entry.RequestId).Order());

        // BatchWritten is raised after the callers are released: wait for the last report.
        var deadline = HangGuard.Deadline();
        while (DateTime.UtcNow < deadline && Batches().Sum() < 200)
        {
            await Task.Delay(10);
        }

        Assert.True(Batches().Sum() >= 200, $"hang guard: {Batches().Sum()} of 200 events reported written after {HangGuard.Time.TotalSeconds} s");
        Assert.Equal(200, Batches().Sum());
        Assert.True(Batches().Length < 200, $"{Batches().Length} commits for 200 events: no grouping");
        int[] Batches()
        {
            lock (batches)
            {
                return [.. batches];
            }
        }
    }

    [Fact]
    public async Task CallsArrivingWhileABatchIsWritten_WaitForIt_ThenShareTheNextBatch()
    {
        var gated = new GatedAuditStore(_store);
        var log = new AuditLog(gated, _store, _hsm, _time, new AuditOptions());
        await log.InitializeAsync(default);
        using var stop = new CancellationTokenSource();
        var loop = Task.Run(() => log.RunAsync(stop.Token));
        var sizes = new List<int>();
        log.BatchWritten += (size, _) => { lock (sizes) { sizes.Add(size); } };
        int[] Sizes()
        {
            lock (sizes)
            {
                return [.. sizes];
            }
        }

        // The first call's batch is held at the store; calls arriving meanwhile wait for it.
        var first = log.AppendAsync(Entry("first"), default);
        await gated.Entered.Task.GuardAsync("the first batch reaching the store");
        var second = log.AppendAsync(Entry("second"), default);
        var third = log.AppendAsync(Entry("third"), default);
        await Task.Delay(50);
        Assert.False(first.IsCompleted || second.IsCompleted || third.IsCompleted, "a call returned before its event was durable");

        gated.Release.SetResult();
        await Task.WhenAll(first, second, third).GuardAsync("the three appends answered once the batch was released");

        // BatchWritten is raised after the callers are released: wait for the second report.
        var deadline = HangGuard.Deadline();
        while (DateTime.UtcNow < deadline && Sizes().Sum() < 3)
        {
            await Task.Delay(10);
        }

        Assert.True(Sizes().Sum() >= 3, $"hang guard: {Sizes().Sum()} of 3 events reported written after {HangGuard.Time.TotalSeconds} s");
        Assert.Equal([1, 2], Sizes());
        Assert.Equal(["first", "second", "third"], (await _store.ListAuditEventsAsync(new AuditQuery(), default)).Select(e => e.Entry.RequestId));
        await stop.CancelAsync();
        await loop.WaitAsync(HangGuard.Time).ContinueWith(_ => { }, TaskScheduler.Default);
    }

    [Fact]
    public async Task BatchThatGaveUpWaitingForTheLock_FailsTheEventsQueuedBehindIt_WithoutASecondWait_LaterEventsTryAgain()
    {
        // The first batch waits at the store (another session holds the write lock) and gives up:
        // the store's timeout. A call whose event was queued meanwhile has waited part of that
        // timeout; another batch would wait a whole one again for the same lock.
        var gated = new GatedAuditStore(_store) { ReleasedWith = KmsErrors.DatabaseGaveUpWaiting() };
        var log = new AuditLog(gated, _store, _hsm, _time, new AuditOptions());
        await log.InitializeAsync(default);
        using var stop = new CancellationTokenSource();
        var loop = Task.Run(() => log.RunAsync(stop.Token));

        var first = log.AppendAsync(Entry("first"), default);
        await gated.Entered.Task.GuardAsync("the first batch reaching the store");
        var behind = log.AppendAsync(Entry("behind"), default);
        gated.Release.SetResult();

        // Both UNAVAILABLE, and the store was asked once: the event behind did not wait for the
        // lock itself. (Before: it went to the store in a batch of its own — the lock's second wait.)
        foreach (var append in new[] { first, behind })
        {
            var e = await Assert.ThrowsAsync<KmsException>(() => append.GuardAsync("an append answered after the batch gave up"));
            Assert.Equal(KmsErrorCode.Unavailable, e.Code);
        }

        Assert.Equal(1, gated.Appends);

        // The events failed behind it count as a failed commit of their own for the health check
        // (three in a row drain the node): otherwise calls failing this way never reached three.
        Assert.Equal(2, log.FailedCommitsInARow);

        // An event queued after the failure tries the lock again (here free): written.
        await log.AppendAsync(Entry("after"), default).GuardAsync("an append after the failure");
        Assert.Equal(2, gated.Appends);
        Assert.Equal(0, log.FailedCommitsInARow);
        Assert.Equal(["after"], (await _store.ListAuditEventsAsync(new AuditQuery(), default)).Select(e => e.Entry.RequestId));
        await stop.CancelAsync();
        await loop.WaitAsync(HangGuard.Time).ContinueWith(_ => { }, TaskScheduler.Default);
    }

    [Fact]
    public async Task AfterTheLoopStops_AppendsRefusedUnavailable()
    {
        await _stop.CancelAsync();
        await _loop.WaitAsync(HangGuard.Time).ContinueWith(_ => { }, TaskScheduler.Default);
        var e = await Assert.ThrowsAsync<KmsException>(() => _log.AppendAsync(Entry("late"), default));
        Assert.Equal(KmsErrorCode.Unavailable, e.Code);
    }

    [Fact]
    public async Task StoreDown_AppendFailsUnavailable_ThenRecoversWithoutAGap()
    {
        await _log.AppendAsync(Entry("before"), default);
        _store.AuditUnavailable = true;
        var e = await Assert.ThrowsAsync<KmsException>(() => _log.AppendAsync(Entry("while-down"), default));
        Assert.Equal(KmsErrorCode.Unavailable, e.Code);

        _store.AuditUnavailable = false;
        await _log.AppendAsync(Entry("after"), default);
        var events = await _store.ListAuditEventsAsync(new AuditQuery(), default);
        Assert.Equal(["before", "after"], events.Select(x => x.Entry.RequestId));
        Assert.Equal([1L, 2L], events.Select(x => x.Sequence));
        Assert.Equal(events[0].Hash, events[1].PreviousHash);
    }

    [Fact]
    public async Task HealthState_IsUpToDate_WhenTheAppendReturns()
    {
        // The loop used to wake a batch's callers before clearing the failures a successful commit
        // ended (and before counting the events failed behind a batch that gave up): a caller that
        // read the health state at once could find the old failures. Many rounds, as the window is
        // a moment; with a 1 ms pause between the old wake-up and the clearing, round 0 failed.
        for (var round = 0; round < 100; round++)
        {
            _store.AuditUnavailable = true;
            await Assert.ThrowsAsync<KmsException>(() => _log.AppendAsync(Entry($"down-{round}"), default));
            Assert.Equal(1, _log.FailedCommitsInARow);
            Assert.NotNull(_log.LastCommitFailure);

            _store.AuditUnavailable = false;
            await _log.AppendAsync(Entry($"up-{round}"), default);
            Assert.Equal(0, _log.FailedCommitsInARow);
            Assert.Null(_log.LastCommitFailure);
        }
    }

    [Fact]
    public async Task FlushRefusals_WhileAHousekeepingPassWritesAClosedWindow_ReturnsOnlyOnceThatIsWritten()
    {
        // The housekeeping pass takes the windows that closed, then writes their summary; a flush
        // called meanwhile (a test's, before it counts the events) found no window left and
        // returned at once, before the pass's summary was written: the count came up short.
        var gated = new GatedAuditStore(_store, gates: entries => entries.Any(e => e.RequestId == "aggregated"));
        var log = new AuditLog(gated, _store, _hsm, _time, new AuditOptions { RefusalWindow = TimeSpan.FromSeconds(10) });
        await log.InitializeAsync(default);
        using var stop = new CancellationTokenSource();
        var loop = Task.Run(() => log.RunAsync(stop.Token));
        for (var i = 0; i < 3; i++)
        {
            await log.RefusedAsync(Entry($"r{i}") with { Outcome = "PERMISSION_DENIED" }, default).GuardAsync("a refusal written or counted");
        }

        _time.Advance(TimeSpan.FromSeconds(11));
        _ = log.RunHousekeepingAsync(default);
        await gated.Entered.Task.GuardAsync("the closed window's summary reaching the store");

        var flush = log.FlushRefusalsAsync(default);
        Assert.False(flush.IsCompleted, "the flush returned while the summary of a window it was asked to write was still being written");
        gated.Release.SetResult();
        await flush.GuardAsync("the flush, once the summary was written");
        var summary = (await _store.ListAuditEventsAsync(new AuditQuery(), default)).Single(e => e.Entry.RequestId == "aggregated");
        Assert.Equal(2, summary.Entry.Count);
        await stop.CancelAsync();
        await loop.WaitAsync(HangGuard.Time).ContinueWith(_ => { }, TaskScheduler.Default);
    }

    [Fact]
    public async Task RefusalFlood_FirstWrittenAtOnce_RestCountedInOneEventPerWindow()
    {
        for (var i = 0; i < 1000; i++)
        {
            await _log.RefusedAsync(Entry($"r{i}") with { Principal = "anonymous", Outcome = "UNAUTHENTICATED" }, default);
        }

        await _log.RefusedAsync(Entry("other") with { Principal = "token:bob", Outcome = "PERMISSION_DENIED" }, default);
        Assert.Equal(2, (await _store.ListAuditEventsAsync(new AuditQuery(), default)).Count);

        _time.Advance(TimeSpan.FromSeconds(11));
        await _log.RunHousekeepingAsync(default);
        var events = await _store.ListAuditEventsAsync(new AuditQuery(), default);
        Assert.Equal(3, events.Count);
        var summary = events[2].Entry;
        Assert.Equal(("anonymous", "UNAUTHENTICATED", 999L, "aggregated"), (summary.Principal, summary.Outcome, summary.Count, summary.RequestId));

        // A new window starts with a written event again.
        await _log.RefusedAsync(Entry("later") with { Principal = "anonymous", Outcome = "UNAUTHENTICATED" }, default);
        Assert.Equal(4, (await _store.ListAuditEventsAsync(new AuditQuery(), default)).Count);
    }

    // The summary used to carry only the first refusal's resource: a flood probing 50 key names
    // read as 99 refusals of k0, which none of them named. Now it lists the first 8 distinct names
    // the counted refusals named (k9, named 48 times, among them), each with its count, and how
    // many named another (41; the one naming nothing is in neither); the chained body holds it
    // and reads back the same.
    [Fact]
    public async Task RefusalFlood_OverManyResources_SummaryListsTheFirstEightWithCounts_AndCountsTheRest()
    {
        await _log.RefusedAsync(Entry("first") with { Outcome = "PERMISSION_DENIED", Resource = "tenants/dev/keys/k0" }, default);
        for (var i = 1; i < 50; i++)
        {
            await _log.RefusedAsync(Entry($"r{i}") with { Outcome = "PERMISSION_DENIED", Resource = $"tenants/dev/keys/k{i}" }, default);
            await _log.RefusedAsync(Entry($"again{i}") with { Outcome = "PERMISSION_DENIED", Resource = i <= 2 ? "tenants/dev/keys/k1" : "tenants/dev/keys/k9" }, default);
        }

        await _log.RefusedAsync(Entry("unnamed") with { Outcome = "PERMISSION_DENIED" }, default);
        await _log.FlushRefusalsAsync(default);

        var summary = (await _store.ListAuditEventsAsync(new AuditQuery(), default)).Single(e => e.Entry.RequestId == "aggregated");
        Assert.Equal(99, summary.Entry.Count);
        Assert.Equal("tenants/dev/keys/k0", summary.Entry.Resource);
        Assert.Equal(
            ["tenants/dev/keys/k1=3", "tenants/dev/keys/k2=1", "tenants/dev/keys/k3=1", "tenants/dev/keys/k4=1", "tenants/dev/keys/k5=1", "tenants/dev/keys/k6=1", "tenants/dev/keys/k7=1", "tenants/dev/keys/k9=48"],
            summary.Entry.Resources!.Select(r => $"{r.Key}={r.Value}"));
        Assert.Equal(99 - 57 - 1, summary.Entry.OtherResources);
        Assert.EndsWith(
            ",\"context\":{},\"resources\":{\"tenants/dev/keys/k1\":3,\"tenants/dev/keys/k2\":1,\"tenants/dev/keys/k3\":1,\"tenants/dev/keys/k4\":1,\"tenants/dev/keys/k5\":1,\"tenants/dev/keys/k6\":1,\"tenants/dev/keys/k7\":1,\"tenants/dev/keys/k9\":48},\"other_resources\":41}",
            summary.Body, StringComparison.Ordinal);
        var parsed = AuditChain.Parse(summary.Body, summary.Hash);
        Assert.Equal(summary.Entry.Resources, parsed.Entry.Resources);
        Assert.Equal(summary.Body, AuditChain.Body(summary.Sequence, summary.PreviousHash, parsed.Entry));
        Assert.Equal(summary.Hash, AuditChain.HashOf(summary.Body));

        // An event that is no summary keeps its body as it always was.
        var first = (await _store.ListAuditEventsAsync(new AuditQuery(), default))[0];
        Assert.EndsWith(",\"context\":{}}", first.Body, StringComparison.Ordinal);
        Assert.Null(AuditChain.Parse(first.Body, first.Hash).Entry.Resources);
    }

    // A principal without a tenant: its summary is read by the auditors of the tenant its first
    // resource is in, so names in other tenants are counted, never listed there.
    [Fact]
    public async Task RefusalFlood_DeploymentPrincipal_ListsOnlyTheFirstResourcesTenant()
    {
        var probe = Entry("p") with { Principal = "cn:ops", Tenant = null, Outcome = "PERMISSION_DENIED" };
        foreach (var resource in new[] { "tenants/b/keys/x", "tenants/b/keys/y", "tenants/c/keys/secret-project", "tenants/bb/keys/z", "tenants/b", "principals/root" })
        {
            await _log.RefusedAsync(probe with { Resource = resource }, default);
        }

        await _log.FlushRefusalsAsync(default);

        var summary = (await _store.ListAuditEventsAsync(new AuditQuery(), default)).Single(e => e.Entry.RequestId == "aggregated");
        Assert.Equal(["tenants/b=1", "tenants/b/keys/y=1"], summary.Entry.Resources!.Select(r => $"{r.Key}={r.Value}"));
        Assert.Equal(3, summary.Entry.OtherResources);
        Assert.DoesNotContain("secret-project", summary.Body, StringComparison.Ordinal);
    }

    [Fact]
    public async Task RefusalWindowClosedByTheLoopItself_WrittenWithoutStallingTheGroupCommit()
    {
        await _log.RefusedAsync(Entry("first") with { Principal = "token:eve", Outcome = "PERMISSION_DENIED" }, default);
        await _log.RefusedAsync(Entry("second") with { Principal = "token:eve", Outcome = "PERMISSION_DENIED" }, default);
        _time.Advance(TimeSpan.FromSeconds(11));

        // The loop's own housekeeping (once a second) closes the window; appends must keep flowing.
        // The clock keeps moving while we wait: a pass that read the time before the jump above
        // sets its next one-second wait after it, and only a later tick wakes it.
        var deadline = HangGuard.Deadline();
        while ((await _store.ListAuditEventsAsync(new AuditQuery { Principal = "token:eve" }, default)).Count < 2 && DateTime.UtcNow < deadline)
        {
            await Task.Delay(100);
            _time.Advance(TimeSpan.FromSeconds(1));
        }

        Assert.True((await _store.ListAuditEventsAsync(new AuditQuery { Principal = "token:eve" }, default)).Count >= 2, $"hang guard: the loop's housekeeping had not closed the window after {HangGuard.Time.TotalSeconds} s of ticks");
        await _log.AppendAsync(Entry("after"), default).GuardAsync("an append after the window closed");
        var eve = await _store.ListAuditEventsAsync(new AuditQuery { Principal = "token:eve" }, default);
        Assert.Equal([1L, 1L], eve.Select(e => e.Entry.Count));
    }

    [Fact]
    public async Task HousekeepingStalled_GroupCommitGoesOn()
    {
        // A checkpoint's signature and write (a slow HSM, a slow disk) must not hold the calls
        // waiting for their events: housekeeping runs beside the commit loop, not in it.
        var gated = new GatedAuditStore(_store, gateCheckpoints: true);
        var log = new AuditLog(gated, _store, _hsm, _time, new AuditOptions { CheckpointEveryEvents = 5 });
        await log.InitializeAsync(default);
        using var stop = new CancellationTokenSource();
        var loop = Task.Run(() => log.RunAsync(stop.Token));
        for (var i = 0; i < 5; i++)
        {
            await log.AppendAsync(Entry($"before-{i}"), default);
        }

        // Ticks until the pass starts (one in flight while the clock moved waits for the next).
        var entering = HangGuard.Deadline();
        while (!gated.Entered.Task.IsCompleted && DateTime.UtcNow < entering)
        {
            _time.Advance(TimeSpan.FromSeconds(1));
            await Task.WhenAny(gated.Entered.Task, Task.Delay(100));
        }

        Assert.True(gated.Entered.Task.IsCompleted, $"hang guard: no housekeeping pass reached the checkpoint write in {HangGuard.Time.TotalSeconds} s of ticks");

        // The pass is stuck in the checkpoint's write; appends are answered all the same.
        await Task.WhenAll(Enumerable.Range(0, 20).Select(i => log.AppendAsync(Entry($"during-{i}"), default))).GuardAsync("20 appends while the checkpoint write is held");
        Assert.Empty(await _store.ListAuditCheckpointsAsync(0, 10, default));

        gated.Release.SetResult();
        var deadline = HangGuard.Deadline();
        while ((await _store.ListAuditCheckpointsAsync(0, 10, default)).Count == 0 && DateTime.UtcNow < deadline)
        {
            await Task.Delay(20);
        }

        Assert.True((await _store.ListAuditCheckpointsAsync(0, 10, default)).Count > 0, $"hang guard: no checkpoint {HangGuard.Time.TotalSeconds} s after its write was released");
        Assert.True((await _store.ListAuditCheckpointsAsync(0, 10, default)).Single().Sequence >= 5);
        Assert.Equal(25, (await _store.GetAuditHeadAsync(default)).Sequence);
        await stop.CancelAsync();
        await loop.GuardAsync("the commit loop stopping");
    }

    [Fact]
    public async Task RefusalFlood_MoreDistinctPrincipalsThanWindows_RestShareOneOverflowWindow_NoneUncounted()
    {
        // 100 principals refused once each, with room for 4 windows: the first 4 open their own;
        // the 5th opens the one overflow window (and, as the first of a window, is written as
        // itself); the other 95 are only counted in it. Memory holds 5 windows, the log 6 events.
        const int windows = 4;
        var log = new AuditLog(_store, _store, _hsm, _time, new AuditOptions { MaxRefusalWindows = windows, RefusalWindow = TimeSpan.FromSeconds(10) });
        await log.InitializeAsync(default);
        using var stop = new CancellationTokenSource();
        var loop = Task.Run(() => log.RunAsync(stop.Token));
        for (var i = 0; i < 100; i++)
        {
            await log.RefusedAsync(Entry($"r{i}") with { Principal = $"token:p{i}", Outcome = "PERMISSION_DENIED" }, default);
        }

        await log.FlushRefusalsAsync(default);
        var events = (await _store.ListAuditEventsAsync(new AuditQuery { Limit = 1000 }, default)).Select(e => e.Entry).ToList();
        Assert.Equal(windows + 2, events.Count);
        Assert.Equal(Enumerable.Range(0, windows + 1).Select(i => $"token:p{i}"), events.Take(windows + 1).Select(e => e.Principal));
        var overflow = Assert.Single(events, e => e.Principal == "overflow");
        Assert.Equal(("*", "*", "aggregated", 100L - (windows + 1)), (overflow.Operation, overflow.Outcome, overflow.RequestId, overflow.Count));
        Assert.Equal(100, events.Sum(e => e.Count));
        await stop.CancelAsync();
        await loop.GuardAsync("the commit loop stopping");
    }

    [Fact]
    public async Task AnonymousRefusals_CountedPerAddress()
    {
        foreach (var client in new[] { "ipv4:10.0.0.1:1000", "ipv4:10.0.0.1:1001", "ipv4:10.0.0.2:1000" })
        {
            await _log.RefusedAsync(Entry("r") with { Principal = "anonymous", Outcome = "UNAUTHENTICATED", Client = client }, default);
        }

        await _log.FlushRefusalsAsync(default);
        var events = await _store.ListAuditEventsAsync(new AuditQuery { Principal = "anonymous" }, default);
        // Each address opens its own window (its first refusal written at once); the second
        // refusal from 10.0.0.1 is that window's count.
        Assert.Equal(
            ["ipv4:10.0.0.1:1000 1 req", "ipv4:10.0.0.2:1000 1 req", "ipv4:10.0.0.1:1000 1 aggregated"],
            events.Select(e => $"{e.Entry.Client} {e.Entry.Count} {(e.Entry.RequestId == "aggregated" ? "aggregated" : "req")}"));
    }

    [Fact]
    public async Task StreamThatCannotBeWritten_CheckpointsStillSigned_AndTheEventsForwardedOnceItCan()
    {
        var failures = new List<Exception>();
        _log.HousekeepingFailed += e => { lock (failures) { failures.Add(e); } };
        var full = true;
        var forwarded = new List<long>();
        _log.EventsWritten += events =>
        {
            if (full)
            {
                throw new IOException("No space left on device");
            }

            forwarded.AddRange(events.Select(e => e.Sequence));
        };
        for (var i = 0; i < 50; i++)
        {
            await _log.AppendAsync(Entry($"req-{i}"), default);
        }

        await _log.RunHousekeepingAsync(default);
        Assert.Equal(50, Assert.Single(await _store.ListAuditCheckpointsAsync(0, 10, default)).Sequence);
        lock (failures)
        {
            // The loop's own first pass may have met the full disk too (it runs beside the appends).
            Assert.NotEmpty(failures);
            Assert.All(failures, f => Assert.IsType<IOException>(f));
        }

        full = false;
        await _log.RunHousekeepingAsync(default);
        Assert.Equal(Enumerable.Range(1, 50).Select(i => (long)i), forwarded);
    }

    // A load past ~10,000 audited calls a second: more events between two passes than ten pages.
    // Before, a pass forwarded at most ten pages of 1,000, and the stream fell behind for as long as
    // such a load lasted; now a pass forwards until the stream has the head (or its budget, by
    // the clock, is spent: this clock does not move).
    [Fact]
    public async Task Stream_MoreThanTenThousandEventsBetweenTwoPasses_AllForwardedByTheNextPass()
    {
        var store = new InMemoryStore();
        var log = new AuditLog(store, store, _hsm, _time, new AuditOptions());
        await log.InitializeAsync(default);
        var forwarded = new List<long>();
        log.EventsWritten += events => forwarded.AddRange(events.Select(e => e.Sequence));
        await store.AppendAuditAsync([.. Enumerable.Range(0, 25_005).Select(i => Entry($"e-{i}"))], default);

        await log.RunHousekeepingAsync(default);

        Assert.Equal(25_005, forwarded.Count);
        Assert.Equal(Enumerable.Range(1, 25_005).Select(i => (long)i), forwarded);
    }

    // A stream 100,000 events behind (resumed after an outage), under a load that goes on, through
    // the housekeeping loop itself. Each page forwarded takes 100 ms by this clock, which moves only
    // so: a pass stops forwarding at its budget, and the next follows at once (before, the loop
    // waited a second between passes, which this clock never ends: the hang guard fails) — while
    // refusal windows close and checkpoints are signed on schedule on the way, not held up.
    [Fact]
    public async Task Stream_OneHundredThousandBehind_CatchesUpPassAfterPass_RefusalSummariesAndCheckpointsOnSchedule()
    {
        const long Backlog = 100_000;
        var time = new FakeTimeProvider(_time.GetUtcNow());
        var store = new InMemoryStore();
        var interval = TimeSpan.FromSeconds(1);
        var page = TimeSpan.FromMilliseconds(100);
        var log = new AuditLog(store, store, _hsm, time, new AuditOptions { CheckpointEveryEvents = 1_000_000, CheckpointInterval = interval, RefusalWindow = TimeSpan.FromSeconds(2) });
        await log.InitializeAsync(default);
        await store.AppendAuditAsync([.. Enumerable.Range(0, (int)Backlog).Select(i => Entry($"e-{i}"))], default);

        long reached = 0;
        var caughtUp = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var checkpointsWhileBehind = new List<DateTimeOffset>();
        var summaryWhileBehind = false;
        log.EventsWritten += events =>
        {
            Volatile.Write(ref reached, events[^1].Sequence);
            if (events[^1].Sequence >= Backlog)
            {
                caughtUp.TrySetResult();
                return;
            }

            // Forwarding takes time, and the load goes on meanwhile (so a checkpoint is due again).
            time.Advance(page);
            store.AppendAuditAsync([Entry("during")], default).GetAwaiter().GetResult();
        };
        log.CheckpointWritten += checkpoint =>
        {
            if (Volatile.Read(ref reached) < Backlog)
            {
                checkpointsWhileBehind.Add(checkpoint.Time);
            }
        };
        log.HousekeepingPassEnded += () =>
        {
            if (Volatile.Read(ref reached) < Backlog && !summaryWhileBehind)
            {
                summaryWhileBehind = store.ListAuditEventsAsync(new AuditQuery { AfterSequence = Backlog }, default).GetAwaiter().GetResult().Any(e => e.Entry.RequestId == "aggregated");
            }
        };

        // A refusal window: its first refusal is written (by the commit loop), the second counted.
        var refused = Entry("refused") with { Outcome = "PERMISSION_DENIED" };
        var first = log.RefusedAsync(refused, default);
        await log.RefusedAsync(refused, default);
        var started = time.GetUtcNow();

        using var stop = new CancellationTokenSource();
        var loop = Task.Run(() => log.RunAsync(stop.Token));
        try
        {
            await caughtUp.Task.GuardAsync("the stream catching up with 100,000 events, the clock moved only by forwarding");
            await first.GuardAsync("the first refusal written");
        }
        finally
        {
            await stop.CancelAsync();
            await loop.WaitAsync(HangGuard.Time).ContinueWith(_ => { }, TaskScheduler.Default);
        }

        Assert.True(summaryWhileBehind, "the refusal window that closed while the stream was behind was not written until it caught up");

        // 100 pages of 100 ms: ten seconds behind. A checkpoint is due a second after the last; a
        // pass reaches it after at most its forwarding budget and the page that passed it.
        Assert.True(checkpointsWhileBehind.Count >= 5, $"{checkpointsWhileBehind.Count} checkpoints signed in the 10 s the stream was behind");
        var bound = interval + AuditLog.ForwardBudget + page;
        var gaps = checkpointsWhileBehind.Prepend(started).Zip(checkpointsWhileBehind, (a, b) => b - a).ToList();
        Assert.All(gaps, gap => Assert.True(gap <= bound, $"a checkpoint {gap.TotalSeconds} s after the one before, while the stream was behind (bound {bound.TotalSeconds} s)"));
    }

    [Fact]
    public async Task AfterARestart_EventsTheStreamDidNotHave_AreForwarded_NotSkipped()
    {
        // The previous process committed events 1-5; its stream holds 1-3 (it crashed before
        // forwarding the rest).
        for (var i = 0; i < 5; i++)
        {
            await _log.AppendAsync(Entry($"req-{i}"), default);
        }

        var chain = await _store.ListAuditEventsAsync(new AuditQuery(), default);
        Assert.Equal([4L, 5L], await ForwardedAfterARestartAsync(new AuditHead(3, chain[2].Hash)));

        // A stream ahead of the chain, whose last event the chain does not hold (a database restored
        // from an older backup), and nothing else known of it: it restarts at the chain's start.
        // Before, it went on from the head, and skipped what the restored chain wrote after it.
        Assert.Equal([1L, 2L, 3L, 4L, 5L], await ForwardedAfterARestartAsync(new AuditHead(900, "ab")));

        // A new process on the same store, told what its stream holds: what its first pass forwards.
        async Task<List<long>> ForwardedAfterARestartAsync(AuditHead streamHolds)
        {
            var restarted = new AuditLog(_store, _store, _hsm, _time, new AuditOptions());
            await restarted.InitializeAsync(default);
            var forwarded = new List<long>();
            restarted.EventsWritten += events => forwarded.AddRange(events.Select(e => e.Sequence));
            restarted.ForwardAfter(streamHolds);
            await restarted.RunHousekeepingAsync(default);
            return forwarded;
        }
    }

    // A database rolled back under the running node (a failover to a standby that lacked the last
    // commits): the new chain's events 7-12 take numbers the stream holds for the old chain's 7-10.
    // Before, the stream's position was the bare number 10: it went on after it, and the SIEM never
    // received the new 7-10. Now the page starts at the stream's last event, whose hash the chain
    // no longer has: the stream restarts after event 6, the newest it holds that the chain holds
    // (its history: a file read back, here the list), with a restart mark first. The stream's
    // lines, as the host writes them, verify offline: the restart reported, not a clean copy.
    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public async Task Stream_DatabaseRolledBackUnderTheRunningNode_EveryEventOfTheNewChainForwarded_AfterARestartMark(bool history)
    {
        var store = new InMemoryStore();
        var log = new AuditLog(store, store, _hsm, _time, new AuditOptions());
        await log.InitializeAsync(default);
        var stream = new List<object>();
        var lines = new List<string>();
        log.EventsWritten += events => stream.AddRange(events.Select(e => (object)new AuditHead(e.Sequence, e.Hash)));
        log.EventsWritten += events => lines.AddRange(events.Select(AuditExport.Event));
        log.StreamRestarted += restart => stream.Add(restart);
        log.StreamRestarted += restart => lines.Add(AuditExport.Restart(restart));
        if (history)
        {
            log.StreamHistory = () => stream.OfType<AuditHead>().Reverse().ToList();
        }

        await store.AppendAuditAsync([.. Enumerable.Range(0, 4).Select(i => Entry($"old-{i}"))], default);
        await log.RunHousekeepingAsync(default);
        await store.AppendAuditAsync([.. Enumerable.Range(4, 6).Select(i => Entry($"old-{i}"))], default);
        await log.RunHousekeepingAsync(default);
        var old = (await store.ListAuditEventsAsync(new AuditQuery(), default)).Select(e => new AuditHead(e.Sequence, e.Hash)).ToList();
        Assert.Equal(old.Cast<object>(), stream);

        store.RollBackAudit(6);
        await store.AppendAuditAsync([.. Enumerable.Range(0, 6).Select(i => Entry($"new-{i}"))], default);
        await log.RunHousekeepingAsync(default);

        var chain = (await store.ListAuditEventsAsync(new AuditQuery(), default)).Select(e => new AuditHead(e.Sequence, e.Hash)).ToList();
        var restart = Assert.IsType<StreamRestart>(stream[10]);
        Assert.Equal(old[9], restart.Replaced);

        // With the stream's history, exactly at the fork; without (stdout), at the last event of a
        // page it was sent that the chain holds (here the first page's, event 4): some again.
        var after = history ? 6 : 4;
        Assert.Equal(chain[after - 1], restart.After);
        Assert.Equal(chain.Skip(after).Cast<object>(), stream.Skip(11));

        // And the stream goes on from the new chain's head.
        await store.AppendAuditAsync([Entry("later")], default);
        await log.RunHousekeepingAsync(default);
        Assert.Equal(13, Assert.IsType<AuditHead>(stream[^1]).Sequence);
        Assert.Single(stream.OfType<StreamRestart>());

        // The SIEM's copy, with the checkpoint over the new chain known from outside (here the
        // store's: the node does not sign a chain that does not pass through its last checkpoint,
        // and it signed none; a fresh checkpoint stands in for the next node's).
        var next = new AuditLog(store, store, _hsm, _time, new AuditOptions());
        await next.InitializeAsync(default);
        var signed = Assert.IsType<AuditCheckpoint>(await next.CheckpointAsync(default));
        var copy = new StringReader(string.Join('\n', lines) + "\n");
        var verified = Kms.Client.Audit.AuditVerifier.Verify(copy, log.PublicKey, new Kms.Client.Audit.KnownCheckpoint(signed.Sequence, signed.HeadHash));
        Assert.True(verified.Valid, verified.Problem);
        Assert.Equal((13L, 13L, 0L), (verified.Events, verified.LastSignedSequence, verified.UnsignedTail));
        var restarts = Assert.IsType<Kms.Client.Audit.AuditStreamRestarts>(verified.StreamRestarts);
        Assert.Equal((1L, 10L - after), (restarts.Count, restarts.ReplacedEvents));
        Assert.Equal(new Kms.Client.Audit.AuditStreamRestart(11, after, chain[after - 1].Hash, 10, old[9].Hash), Assert.Single(restarts.Listed));
    }

    // Rolled back while the node was stopped, and the re-application of destructions (or another
    // node) wrote past the stream's last event before this start: before, the stream went on after
    // its bare sequence number (10, below the head), and never sent the new chain's 7-10.
    [Fact]
    public async Task Stream_RolledBackWhileStopped_TheNewChainPassedTheStreamsNumber_ItsEventsForwardedFromTheFork()
    {
        var store = new InMemoryStore();
        await store.AppendAuditAsync([.. Enumerable.Range(0, 10).Select(i => Entry($"old-{i}"))], default);
        var streamed = (await store.ListAuditEventsAsync(new AuditQuery(), default)).Select(e => new AuditHead(e.Sequence, e.Hash)).ToList();
        store.RollBackAudit(6);
        await store.AppendAuditAsync([.. Enumerable.Range(0, 6).Select(i => Entry($"new-{i}"))], default);

        var log = new AuditLog(store, store, _hsm, _time, new AuditOptions());
        await log.InitializeAsync(default);
        var forwarded = new List<AuditHead>();
        var restarts = new List<StreamRestart>();
        log.EventsWritten += events => forwarded.AddRange(events.Select(e => new AuditHead(e.Sequence, e.Hash)));
        log.StreamRestarted += restarts.Add;
        log.StreamHistory = () => Enumerable.Reverse(streamed);
        log.ForwardAfter(streamed[^1]);
        await log.RunHousekeepingAsync(default);

        var chain = (await store.ListAuditEventsAsync(new AuditQuery(), default)).Select(e => new AuditHead(e.Sequence, e.Hash)).ToList();
        Assert.Equal(chain.Skip(6), forwarded);
        Assert.Equal(new StreamRestart(streamed[5], streamed[9]), Assert.Single(restarts));
    }

    // A stream that cannot be read back (stdout, a FIFO) resumed at start from its position record
    // (at 10, listing 9, 8, 6, 4 and 1), then sent 11 and 12; the database goes back to 7 under the
    // running node and the chain goes on with other events. The restart goes after 6, the newest
    // listed event the chain holds: the record's events are the running node's restart points.
    // Before, they began with 10 alone: none held, and the stream restarted after 0 — the whole
    // chain again.
    [Fact]
    public async Task Stream_ResumedFromItsPositionRecord_RolledBackUnderTheRunningNodeBehindIt_RestartsAtTheRecordsNewestHeldEvent()
    {
        var store = new InMemoryStore();
        await store.AppendAuditAsync([.. Enumerable.Range(0, 10).Select(i => Entry($"old-{i}"))], default);
        var log = new AuditLog(store, store, _hsm, _time, new AuditOptions());
        await log.InitializeAsync(default);
        var forwarded = new List<AuditHead>();
        var restarts = new List<StreamRestart>();
        log.EventsWritten += events => forwarded.AddRange(events.Select(e => new AuditHead(e.Sequence, e.Hash)));
        log.StreamRestarted += restarts.Add;
        var streamed = await ChainAsync(store);
        Assert.True(await log.ForwardAfterIfHeldAsync(streamed[9], [streamed[8], streamed[7], streamed[5], streamed[3], streamed[0]], default));
        await store.AppendAuditAsync([Entry("old-10"), Entry("old-11")], default);
        await log.RunHousekeepingAsync(default);
        var sent = await ChainAsync(store);
        Assert.Equal(sent.Skip(10), forwarded);

        store.RollBackAudit(7);
        await store.AppendAuditAsync([.. Enumerable.Range(0, 3).Select(i => Entry($"new-{i}"))], default);
        forwarded.Clear();
        await log.RunHousekeepingAsync(default);

        Assert.Equal(new StreamRestart(streamed[5], sent[11]), Assert.Single(restarts));
        Assert.Equal((await ChainAsync(store)).Skip(6), forwarded);
    }

    // Retention cut past the events a position record lists that the chain could still hold: the
    // record at 10 (listing 9, 8, 6, 4 and 1), the database rolled back to 6 while the node was
    // stopped, the chain gone on with other events, and retention cut through 7. None listed is
    // held (8 and 9 are other events now; 6 and older are cut): the start restarts the stream as
    // a running node does over the same chain, after the last event cut (7), a restart line then
    // every event retained. Before, RestartAfterHeldAsync returned null and the stream began at the
    // head (1327): the new chain's 8-11 never reached it.
    [Fact]
    public async Task Stream_RestartAtStart_RetentionCutPastEveryListedEventNotHeld_RestartsAfterTheLastEventCut_AsARunningNode()
    {
        // A running node over the same stream and chain: it sent 1-4 and 5-10 (pages: its points 4 and 10).
        var running = new InMemoryStore();
        var node = new AuditLog(running, running, _hsm, _time, new AuditOptions());
        await node.InitializeAsync(default);
        var runningRestarts = new List<StreamRestart>();
        node.EventsWritten += _ => { };
        node.StreamRestarted += runningRestarts.Add;
        await running.AppendAuditAsync([.. Enumerable.Range(0, 4).Select(i => Entry($"old-{i}"))], default);
        await node.RunHousekeepingAsync(default);
        await running.AppendAuditAsync([.. Enumerable.Range(4, 6).Select(i => Entry($"old-{i}"))], default);
        await node.RunHousekeepingAsync(default);

        var stopped = new InMemoryStore();
        await stopped.AppendAuditAsync([.. Enumerable.Range(0, 10).Select(i => Entry($"old-{i}"))], default);
        var streamed = await ChainAsync(stopped);
        foreach (var store in new[] { running, stopped })
        {
            store.RollBackAudit(6);
            await store.AppendAuditAsync([Entry("new-0")], default);
            var cutter = new AuditLog(store, store, _hsm, _time, new AuditOptions { Retention = TimeSpan.FromDays(30) });
            await cutter.InitializeAsync(default);
            Assert.Equal(7, (await cutter.CheckpointAsync(default))?.Sequence);
            _time.Advance(TimeSpan.FromDays(31));
            await store.AppendAuditAsync([.. Enumerable.Range(1, 4).Select(i => Entry($"new-{i}"))], default);
            Assert.Equal(7, await cutter.PruneAsync(_time.GetUtcNow(), default));
        }

        // The two chains' new events differ (their times): each restart is after its own chain's 7.
        await node.RunHousekeepingAsync(default);
        Assert.Equal(new StreamRestart(await CutAsync(running), streamed[9]), Assert.Single(runningRestarts));
        var cut = await CutAsync(stopped);

        var log = new AuditLog(stopped, stopped, _hsm, _time, new AuditOptions());
        await log.InitializeAsync(default);
        var forwarded = new List<AuditHead>();
        var restarts = new List<StreamRestart>();
        log.EventsWritten += events => forwarded.AddRange(events.Select(e => new AuditHead(e.Sequence, e.Hash)));
        log.StreamRestarted += restarts.Add;
        Assert.False(await log.ForwardAfterIfHeldAsync(streamed[9], default));
        Assert.Equal(cut, await log.RestartAfterHeldAsync(streamed[9], [streamed[8], streamed[7], streamed[5], streamed[3], streamed[0]], default));
        await log.RunHousekeepingAsync(default);

        Assert.Equal(new StreamRestart(cut, streamed[9]), Assert.Single(restarts));
        Assert.Equal(await ChainAsync(stopped), forwarded);
        Assert.Equal(Enumerable.Range(8, 5).Select(i => (long)i), forwarded.Select(p => p.Sequence)); // 8-11, and retention's record of the cut

        // The last event cut: the one the oldest retained (8) links to.
        static async Task<AuditHead> CutAsync(InMemoryStore store) =>
            (await store.ListAuditEventsAsync(new AuditQuery { Limit = 1 }, default)) is [{ Sequence: 8 } oldest]
                ? new AuditHead(7, oldest.PreviousHash)
                : throw new InvalidOperationException("retention did not cut through 7");
    }

    private static async Task<List<AuditHead>> ChainAsync(InMemoryStore store) =>
        [.. (await store.ListAuditEventsAsync(new AuditQuery(), default)).Select(e => new AuditHead(e.Sequence, e.Hash))];

    // The final pass at stop: a stream far behind is forwarded until it has the head, not for one
    // ForwardBudget (each page here takes 100 ms by the clock, so a budget is five pages); and
    // it stops between pages once told to (the stop's time running out), the rest left to the next
    // start, which forwards it from the database.
    [Fact]
    public async Task Stream_FinalPass_ForwardsUntilTheStreamHasTheHead_NotOneBudget_OrUntilToldToStop()
    {
        var time = new FakeTimeProvider(_time.GetUtcNow());
        var store = new InMemoryStore();
        await store.AppendAuditAsync([.. Enumerable.Range(0, 20_000).Select(i => Entry($"e-{i}"))], default);
        var log = new AuditLog(store, store, _hsm, time, new AuditOptions());
        await log.InitializeAsync(default);
        log.ForwardAfter(AuditChain.Empty);
        long reached = 0;
        using var stopForwarding = new CancellationTokenSource();
        log.EventsWritten += events =>
        {
            reached = events[^1].Sequence;
            time.Advance(TimeSpan.FromMilliseconds(100));
            if (reached == 35_000)
            {
                stopForwarding.Cancel();
            }
        };

        await log.RunHousekeepingAsync(default);
        Assert.Equal(5_000, reached); // an ordinary pass: its budget

        using (var never = new CancellationTokenSource())
        {
            await log.RunFinalHousekeepingAsync(never.Token, default);
        }

        Assert.Equal(20_000, reached);

        await store.AppendAuditAsync([.. Enumerable.Range(0, 20_000).Select(i => Entry($"more-{i}"))], default);
        await log.RunFinalHousekeepingAsync(stopForwarding.Token, default);
        Assert.Equal(35_000, reached);

        // The next start forwards the rest, after the stream's last event.
        var next = new AuditLog(store, store, _hsm, time, new AuditOptions());
        await next.InitializeAsync(default);
        var rest = new List<long>();
        next.EventsWritten += events => rest.AddRange(events.Select(e => e.Sequence));
        var last = Assert.Single(await store.ListAuditEventsAsync(new AuditQuery { AfterSequence = 34_999, Limit = 1 }, default));
        next.ForwardAfter(new AuditHead(last.Sequence, last.Hash));
        await next.RunHousekeepingAsync(default);
        Assert.Equal(Enumerable.Range(35_001, 5_000).Select(i => (long)i), rest);
    }

    // A stream file far longer than the chain rolled back under it (a restore of an old dump): the
    // search for where it restarts reads it back line by line from its end, each line above the
    // chain's head passed over without a look at the database. Before, nothing stopped that read
    // (a stream of GBs: minutes, past the host's stop time) — not the stop's forwarding time, not
    // the host's token; the final checkpoint and the head record were then never written.
    [Fact]
    public async Task Stream_FinalPass_TheRestartsSearchOfALongStream_EndsWhenToldToStop_NoRestartMarked()
    {
        var store = new InMemoryStore();
        await store.AppendAuditAsync([.. Enumerable.Range(0, 10).Select(i => Entry($"old-{i}"))], default);
        var log = new AuditLog(store, store, _hsm, _time, new AuditOptions());
        await log.InitializeAsync(default);
        var restarts = new List<StreamRestart>();
        log.StreamRestarted += restarts.Add;
        log.EventsWritten += _ => { };
        store.RollBackAudit(3);

        const int Held = 1_000_000;
        var read = 0;
        using var stopForwarding = new CancellationTokenSource();
        IEnumerable<AuditHead> History()
        {
            for (var sequence = 10L + Held; sequence > 10; sequence--)
            {
                if (++read == 100)
                {
                    stopForwarding.Cancel();
                }

                yield return new AuditHead(sequence, "old");
            }
        }

        log.StreamHistory = History;
        await log.RunFinalHousekeepingAsync(stopForwarding.Token, default);

        Assert.InRange(read, 100, 101);
        Assert.Empty(restarts);

        // The next pass restarts the stream (here, holding none of the chain's events: at its start).
        log.StreamHistory = () => [];
        await log.RunHousekeepingAsync(default);
        Assert.Equal(AuditChain.Empty, Assert.Single(restarts).After);
    }

    // The stream's promise, over random runs: appends (some past a page), rollbacks under the
    // running node or while it is stopped, restarts of the node, a stream that cannot be written
    // for a while. The stream, read as its restart lines say (after a restart line, the events go
    // on after its event, which the stream must hold with that hash), must hold the database's
    // chain, every event of it, once caught up; and an event comes again only after a restart line.
    // With history false, a stream that cannot be read back (stdout): no restarts of the node, as
    // a new process starts that stream at the head.
    [Theory]
    [InlineData(true, 1)]
    [InlineData(true, 2)]
    [InlineData(true, 3)]
    [InlineData(false, 4)]
    [InlineData(false, 5)]
    public async Task Stream_AnyRunOfRollbacksAndRestarts_TheStreamReadByItsRestartLines_HoldsTheChain(bool history, int seed)
    {
        var random = new Random(seed);
        var store = new InMemoryStore();
        var stream = new List<object>(); // AuditHead (an event line) or StreamRestart (a restart line)
        var failing = false;
        var log = await StartAsync();
        for (var step = 0; step < 60; step++)
        {
            var head = (await store.GetAuditHeadAsync(default)).Sequence;
            switch (random.Next(6))
            {
                case 0 or 1:
                    await store.AppendAuditAsync([.. Enumerable.Range(0, random.Next(1, random.Next(2) == 0 ? 30 : 1500)).Select(i => Entry($"{step}-{i}"))], default);
                    break;
                case 2:
                    store.RollBackAudit(random.NextInt64(0, head + 1));
                    break;
                case 3 when history:
                    log = await StartAsync();
                    break;
                case 4:
                    failing = random.Next(3) == 0;
                    break;
                default:
                    break;
            }

            await log.RunHousekeepingAsync(default);
            if (!failing)
            {
                var chain = (await store.ListAuditEventsAsync(new AuditQuery { Limit = int.MaxValue }, default)).Select(e => new AuditHead(e.Sequence, e.Hash)).ToList();
                Assert.Equal(chain, Replay(stream));
            }
        }

        Assert.Contains(stream, line => line is StreamRestart); // the runs do roll back under the stream

        async Task<AuditLog> StartAsync()
        {
            var started = new AuditLog(store, store, _hsm, _time, new AuditOptions());
            await started.InitializeAsync(default);
            started.EventsWritten += events =>
            {
                if (failing)
                {
                    throw new IOException("the stream cannot be written");
                }

                stream.AddRange(events.Select(e => (object)new AuditHead(e.Sequence, e.Hash)));
            };
            started.StreamRestarted += restart =>
            {
                if (failing)
                {
                    throw new IOException("the stream cannot be written");
                }

                stream.Add(restart);
            };
            if (history)
            {
                started.StreamHistory = () => Enumerable.Reverse(stream).Select(Point).ToList();
                if (stream.Count > 0)
                {
                    started.ForwardAfter(Point(stream[^1]));
                }
            }

            return started;
        }

        static AuditHead Point(object line) => line is StreamRestart restart ? restart.After : (AuditHead)line;

        // The chain the stream says the database holds: each event the next after the one before;
        // a restart line goes back to its event, which the stream holds with its hash.
        static List<AuditHead> Replay(List<object> lines)
        {
            var view = new List<AuditHead>();
            foreach (var line in lines)
            {
                if (line is StreamRestart restart)
                {
                    Assert.True(restart.After.Sequence == 0 || view.Contains(restart.After), $"a restart after {restart.After}, which the stream does not hold");
                    view.RemoveRange((int)restart.After.Sequence, view.Count - (int)restart.After.Sequence);
                }
                else
                {
                    var e = (AuditHead)line;
                    Assert.Equal(view.Count + 1, e.Sequence); // none skipped, none again without a restart line
                    view.Add(e);
                }
            }

            return view;
        }
    }

    // The same long search in an ordinary pass: before, nothing but the host's stop bounded it, and
    // the pass's checkpoint, head record, summaries and refusal windows waited behind it — minutes
    // over a stream of GBs, no checkpoint signed meanwhile. Each line read here costs a millisecond
    // of the fake clock: a pass searches for what is left of ForwardBudget, signs its due
    // checkpoint, and the next pass goes on where it stopped (the history enumerated once).
    [Fact]
    public async Task Stream_TheRestartsSearchOfALongStream_ResumedPassByPass_CheckpointsSignedMeanwhile()
    {
        var store = new InMemoryStore();
        var old = await store.AppendAuditAsync([.. Enumerable.Range(0, 10).Select(i => Entry($"old-{i}"))], default);
        var log = new AuditLog(store, store, _hsm, _time, new AuditOptions { CheckpointEveryEvents = 5 });
        await log.InitializeAsync(default);
        var restarts = new List<StreamRestart>();
        log.StreamRestarted += restarts.Add;
        log.EventsWritten += _ => { };
        var signed = new List<long>();
        log.CheckpointWritten += c => signed.Add(c.Sequence);
        store.RollBackAudit(3);
        await store.AppendAuditAsync([.. Enumerable.Range(0, 5).Select(i => Entry($"new-{i}"))], default);

        const int Held = 20_000;
        var (read, histories, signedAtTheEnd) = (0, 0, -1);
        IEnumerable<AuditHead> History()
        {
            histories++;
            for (var sequence = 10L + Held; sequence > 10; sequence--)
            {
                read++;
                _time.Advance(TimeSpan.FromMilliseconds(1));
                yield return new AuditHead(sequence, "old");
            }

            signedAtTheEnd = signed.Count;
            yield return new AuditHead(3, old[2].Hash);
        }

        log.StreamHistory = History;
        var passes = 0;
        while (restarts.Count == 0 && passes++ < Held)
        {
            await log.RunHousekeepingAsync(default);
            if (passes == 1)
            {
                Assert.Equal([8L], signed); // the first pass signed the new chain's head, the search under way
            }

            await store.AppendAuditAsync([.. Enumerable.Range(0, 5).Select(i => Entry($"more-{passes}-{i}"))], default);
        }

        var restart = Assert.Single(restarts);
        Assert.Equal(new AuditHead(3, old[2].Hash), restart.After);
        Assert.Equal(1, histories);
        Assert.Equal(Held, read);
        Assert.True(signedAtTheEnd > 1, $"checkpoints signed while the search ran: {signedAtTheEnd}");
    }

    [Fact]
    public async Task Checkpoints_AfterNEvents_OrAfterTheInterval_SignedByTheAuditKey()
    {
        for (var i = 0; i < 50; i++)
        {
            await _log.AppendAsync(Entry($"req-{i}"), default);
        }

        await _log.RunHousekeepingAsync(default);
        var first = Assert.Single(await _store.ListAuditCheckpointsAsync(0, 10, default));
        Assert.Equal(50, first.Sequence);

        await _log.AppendAsync(Entry("one more"), default);
        await _log.RunHousekeepingAsync(default);
        Assert.Single(await _store.ListAuditCheckpointsAsync(0, 10, default));
        _time.Advance(TimeSpan.FromMinutes(1));
        await _log.RunHousekeepingAsync(default);
        var second = (await _store.ListAuditCheckpointsAsync(0, 10, default))[^1];
        Assert.Equal(51, second.Sequence);

        using var key = ECDsa.Create();
        key.ImportSubjectPublicKeyInfo(_log.PublicKey, out _);
        Assert.True(key.VerifyHash(AuditChain.CheckpointDigest(second.Body), second.Signature));
        Assert.Equal(AuditChain.Fingerprint(_log.PublicKey), second.KeyFingerprint);
        Assert.Contains($"\"head\":\"{(await _store.GetAuditHeadAsync(default)).Hash}\"", second.Body, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Housekeeping_SummarisesTheCompleteBlocks_PassByPass_SoATimeRangedListingStartsAtItsBlock()
    {
        // 45 events a minute apart: four complete blocks of 10 and a tail; three blocks a pass.
        var store = new InMemoryStore();
        var log = new AuditLog(store, store, _hsm, _time, new AuditOptions { CheckpointEveryEvents = 1000, SummaryBlockEvents = 10, SummaryBlocksPerPass = 3 });
        await log.InitializeAsync(default);
        var written = await store.AppendAuditAsync([.. Enumerable.Range(0, 45).Select(i => Entry($"e-{i}") with { Time = _time.GetUtcNow().AddMinutes(i) })], default);
        var target = written[25];
        var query = new AuditQuery { StartTime = target.Entry.Time, EndTime = target.Entry.Time.AddMinutes(1) };

        // Unsummarised, the walk starts at the log's first event: windows of 10 reach the event on the third page.
        Assert.Empty((await AuditPages.ListAsync(store, query, 10, default)).Events);

        await log.RunHousekeepingAsync(default);
        Assert.Equal([target.Sequence], (await AuditPages.ListAsync(store, query, 10, default)).Events.Select(e => e.Sequence));

        // The fourth block on the next pass; the tail waits until it is complete.
        await log.RunHousekeepingAsync(default);
        Assert.Equal(0, await store.SummariseAuditBlocksAsync(10, 100, default));
        Assert.Equal([written[44].Sequence], (await AuditPages.ListAsync(store, query with { StartTime = written[44].Entry.Time, EndTime = null, NewestFirst = true }, 10, default)).Events.Select(e => e.Sequence));
    }

    [Fact]
    public async Task Retention_PrunesBackToTheNewestCheckpointOlderThanThePeriod()
    {
        for (var i = 0; i < 120; i++)
        {
            await _log.AppendAsync(Entry($"old-{i}"), default);
            if (i % 50 == 49)
            {
                await _log.CheckpointAsync(default);
            }

            _time.Advance(TimeSpan.FromHours(1));
        }

        // Events 1..120, an hour apart. Now the first 60 are past the retention period: the
        // prune goes back to the newest checkpoint among them (the loop may have signed more
        // than the two made here), never further.
        _time.Advance(TimeSpan.FromDays(30) - TimeSpan.FromHours(60));
        var anchor = (await _store.ListAuditCheckpointsAsync(0, 100, default)).Last(c => c.Sequence <= 60).Sequence;
        Assert.InRange(anchor, 50, 60);
        Assert.Equal(anchor, await _log.PruneAsync(_time.GetUtcNow(), default));
        var remaining = await _store.ListAuditEventsAsync(new AuditQuery { Limit = 1000 }, default);
        Assert.Equal(anchor + 1, remaining[0].Sequence);
        Assert.Equal(anchor, (await _store.ListAuditCheckpointsAsync(0, 100, default))[0].Sequence);
        Assert.Equal(0, await _log.PruneAsync(_time.GetUtcNow(), default));
    }

    [Fact]
    public async Task Retention_OverASummarisedLog_TheCutsWalkStartsAtTheFirstBlockThatCanHoldIt_NotAtTheOldestEvent_SameCut()
    {
        // 300 events a minute apart, every third block of 10 three hours behind the one before it
        // (times are not monotonic in sequence); checkpoints after the 200th and the 300th; the
        // log summarised.
        var store = new InMemoryStore();
        var log = new AuditLog(store, store, _hsm, _time, new AuditOptions { CheckpointEveryEvents = 1000, CheckpointInterval = TimeSpan.FromDays(365), Retention = TimeSpan.FromDays(30), SummaryBlockEvents = 10 });
        await log.InitializeAsync(default);
        var t0 = _time.GetUtcNow();
        foreach (var part in new[] { Enumerable.Range(0, 200), Enumerable.Range(200, 100) })
        {
            await store.AppendAuditAsync([.. part.Select(i => Entry($"e-{i}") with { Time = t0.AddMinutes(i - (i / 10 % 3 == 1 ? 180 : 0)) })], default);
            await log.CheckpointAsync(default);
        }

        Assert.Equal(30, await store.SummariseAuditBlocksAsync(10, 100, default));

        // The cutoff is event 246's time: every event before it is older, and so are blocks
        // 251..260 and 281..290 after it. The cut goes back to the checkpoint at 200, as a walk
        // from the oldest event finds; that walk read 246 events, this one starts at block 241..250.
        _time.Advance(TimeSpan.FromDays(30) + TimeSpan.FromMinutes(245));
        var read = store.AuditEventsRead;
        Assert.Equal(200, await log.PruneAsync(_time.GetUtcNow(), default));
        Assert.InRange(store.AuditEventsRead - read, 1, 20);
        Assert.Equal(201, (await store.ListAuditEventsAsync(new AuditQuery { Limit = 1 }, default))[0].Sequence);
    }

    [Fact]
    public async Task Retention_ABacklog_IsWorkedOffPassByPass_EachCutAtACheckpoint_TheChainVerifiesInBetween()
    {
        // A retention period shortened, or a leader away for long: deleting the whole backlog in
        // one transaction outlasted the statement timeout and rolled back, pass after pass.
        var store = new InMemoryStore();
        await using var running = await RunningLogAsync(store, new AuditOptions { CheckpointEveryEvents = 1000, CheckpointInterval = TimeSpan.FromMinutes(1), Retention = TimeSpan.FromDays(30), MaxPrunedPerPass = 60 });
        var log = running.Log;
        for (var i = 0; i < 200; i++)
        {
            await log.AppendAsync(Entry($"old-{i}"), default);
            if (i % 20 == 19)
            {
                await log.CheckpointAsync(default);
            }
        }

        _time.Advance(TimeSpan.FromDays(31));
        var cuts = new List<long>();
        for (long pruned; (pruned = await log.PruneAsync(_time.GetUtcNow(), default)) > 0;)
        {
            var first = (await store.ListAuditEventsAsync(new AuditQuery { Limit = 1 }, default))[0].Sequence;
            cuts.Add(first - 1);
            var export = new StringWriter();
            await foreach (var line in log.ExportAsync(0, default))
            {
                await export.WriteLineAsync(line);
            }

            var verified = Kms.Client.Audit.AuditVerifier.Verify(new StringReader(export.ToString()), log.PublicKey);
            Assert.True(verified.Valid, $"after a cut at {cuts[^1]}: {verified.Problem}");
        }

        Assert.True(cuts.Count > 2, $"cuts at {string.Join(", ", cuts)}");
        Assert.All(cuts.Zip(cuts.Skip(1)), pair => Assert.InRange(pair.Second - pair.First, 1, 60 + 2));
    }

    [Fact]
    public async Task Retention_CheckpointsFurtherApartThanThePerPassBound_OneCheckpointsWorthAPass()
    {
        // None signed while the HSM was away, or CheckpointEveryEvents above MaxPrunedPerPass:
        // the first checkpoint after the oldest event, not the newest, so a pass stays bounded.
        var store = new InMemoryStore();
        await using var running = await RunningLogAsync(store, new AuditOptions { CheckpointEveryEvents = 1000, CheckpointInterval = TimeSpan.FromHours(1), Retention = TimeSpan.FromDays(30), MaxPrunedPerPass = 60 });
        var log = running.Log;
        for (var i = 0; i < 300; i++)
        {
            await log.AppendAsync(Entry($"sparse-{i}"), default);
            if (i % 100 == 99)
            {
                await log.CheckpointAsync(default);
            }
        }

        _time.Advance(TimeSpan.FromDays(31));
        var pruned = await log.PruneAsync(_time.GetUtcNow(), default);

        Assert.InRange(pruned, 90, 110);
    }

    [Fact]
    public async Task Retention_TheFirstCheckpointAfterTheExpiredEventsCoversEventsInsideThePeriod_NothingPruned()
    {
        // Events past the period with no checkpoint among them, and the first checkpoint after
        // them also covering events still inside the period: no pass may cut there (it would
        // delete events the period keeps), so nothing goes until a checkpoint fits.
        var store = new InMemoryStore();
        await using var running = await RunningLogAsync(store, new AuditOptions { CheckpointEveryEvents = 1000, CheckpointInterval = TimeSpan.FromDays(365), Retention = TimeSpan.FromDays(30), MaxPrunedPerPass = 60 });
        var log = running.Log;
        for (var i = 0; i < 30; i++)
        {
            await log.AppendAsync(Entry($"expired-{i}"), default);
        }

        _time.Advance(TimeSpan.FromDays(10));
        for (var i = 0; i < 30; i++)
        {
            await log.AppendAsync(Entry($"kept-{i}"), default);
        }

        await log.CheckpointAsync(default);
        _time.Advance(TimeSpan.FromDays(21));

        Assert.Equal(0, await log.PruneAsync(_time.GetUtcNow(), default));
        var remaining = await store.ListAuditEventsAsync(new AuditQuery { Limit = 1000 }, default);
        Assert.Contains(remaining, e => e.Entry.RequestId == "expired-0");
        Assert.Contains(remaining, e => e.Entry.RequestId == "kept-0");
    }

    // Defect: retention cut at the newest checkpoint row within its bound, whatever it was. A
    // database writer without the HSM inserts rows: one with a bogus signature (70), one the audit
    // key signed over another head than the chain's event there (60), one a statement of another
    // type the key signed over its bare SHA-256 (50). Each is passed over and reported; the cut is
    // at 40, the newest checkpoint of the chain among the expired events. A cut asked at one of
    // them records nothing and deletes nothing. Before, the pass cut at 70: the events through it
    // deleted although no checkpoint of the chain is there.
    [Fact]
    public async Task Retention_CheckpointRowsTheAuditKeyDidNotSignAsCheckpointsOfTheChain_PassedOverAndReported_TheCutAtTheNewestThatIs()
    {
        var (store, log) = await ExpiredEventsWithCheckpointsAt40And100Async();
        var events = await store.ListAuditEventsAsync(new AuditQuery { Limit = 1000 }, default);
        string HashOf(long sequence) => AuditChain.HashOf(events.Single(e => e.Sequence == sequence).Body);
        var bogus = RandomNumberGenerator.GetBytes(64);
        await store.AddAuditCheckpointAsync(Row(70, HashOf(70), log.Fingerprint, bogus), default);
        await store.AddAuditCheckpointAsync(await SignedRawAsync(store, Row(60, new string('a', 64), log.Fingerprint, [])), default);
        await store.AddAuditCheckpointAsync(await SignedRawAsync(store, Row(50, HashOf(50), log.Fingerprint, [], type: "retention-cut")), default);
        var passedOver = new List<(long Sequence, string Reason)>();
        log.RetentionPassedOver += (sequence, reason) => passedOver.Add((sequence, reason));

        var refused = await Assert.ThrowsAsync<KmsException>(() => log.PruneThroughAsync(70, default));
        Assert.Equal(KmsErrorCode.FailedPrecondition, refused.Code);
        Assert.Contains("no checkpoint the audit key signed over event 70", refused.Message, StringComparison.Ordinal);
        Assert.Equal(100, (await store.GetAuditHeadAsync(default)).Sequence); // no record of a cut chained
        Assert.Equal(1, (await store.ListAuditEventsAsync(new AuditQuery { Limit = 1 }, default))[0].Sequence);

        Assert.Equal(40, await log.PruneAsync(_time.GetUtcNow(), default));
        Assert.Equal(41, (await store.ListAuditEventsAsync(new AuditQuery { Limit = 1 }, default))[0].Sequence);
        Assert.Equal([70L, 60L, 50L], passedOver.Select(p => p.Sequence));
        Assert.Contains("did not sign it as a checkpoint", passedOver[0].Reason, StringComparison.Ordinal);
        Assert.Contains("over another head than the hash of the chain's event 60", passedOver[1].Reason, StringComparison.Ordinal);
        Assert.Contains("did not sign it as a checkpoint", passedOver[2].Reason, StringComparison.Ordinal);
    }

    // Defect: SignedHead (every reader of a checkpoint: the start, another node's adopted, the
    // checkpoints.jsonl record, retention's cut, GetAuditCheckpoint) did not check the body's
    // "type". A statement of another type that the audit key signed over the bare SHA-256 of its
    // body (none is today: other statements are domain-separated) is no checkpoint: not as a row
    // (the newest signed checkpoint is 40's; retention does not cut at it), not as a line of
    // checkpoints.jsonl (the start is refused, naming the line). Before, it counted as checkpoint 50.
    [Fact]
    public async Task SignedHead_AStatementOfAnotherTypeSignedByTheAuditKey_IsRefusedAsACheckpoint()
    {
        var (store, log) = await ExpiredEventsWithCheckpointsAt40And100Async();
        var at50 = (await store.ListAuditEventsAsync(new AuditQuery { AfterSequence = 49, Limit = 1 }, default))[0];
        var statement = await SignedRawAsync(store, Row(50, AuditChain.HashOf(at50.Body), log.Fingerprint, [], type: "retention-cut"));
        using (var key = ECDsa.Create())
        {
            key.ImportSubjectPublicKeyInfo(log.PublicKey, out _);
            Assert.True(key.VerifyHash(AuditChain.CheckpointDigest(statement.Body), statement.Signature)); // the audit key's signature, valid
        }

        var file = Kms.Testing.Scratch.NewPath("kms-audit-", ".jsonl");
        await File.WriteAllTextAsync(file, Kms.Core.Audit.AuditExport.Checkpoint(statement) + "\n");
        var damaged = await Assert.ThrowsAsync<KmsException>(() => log.RequireOwnRecordAsync(file, default));
        Assert.Equal(KmsErrorCode.FailedPrecondition, damaged.Code);
        Assert.Contains("did not sign what it says", damaged.Message, StringComparison.Ordinal);

        await store.AddAuditCheckpointAsync(statement, default);
        Assert.Equal(40, await log.PruneAsync(_time.GetUtcNow(), default));

        // As the newest row (GetAuditCheckpoint's answer when nothing is new to sign, the start's
        // and another node's checkpoint): passed over for the newest checkpoint below it.
        await store.AddAuditCheckpointAsync(await SignedRawAsync(store, Row(500, AuditChain.HashOf(at50.Body), log.Fingerprint, [], type: "retention-cut")), default);
        Assert.Equal(101L, (await log.LatestSignedCheckpointAsync(default))?.Sequence); // the one retention signed over its record
    }

    // Defect: the store kept a row already stored at a checkpoint's sequence (ON CONFLICT DO
    // NOTHING). A database writer without the HSM inserts one at a future sequence (50, bogus
    // signature); once the chain reaches it, the checkpoint this node signs there replaces it and
    // the row is reported (event 1331). Before, the writer's row stayed: the newest signed checkpoint
    // stayed 40, this node's signed checkpoint 50 was in no database.
    [Fact]
    public async Task Checkpoint_ARowInsertedAheadAtItsSequence_ReplacedWithTheSignedCheckpoint_Reported()
    {
        var (store, log, refused) = await CheckpointSignedAt40Async();
        await store.AddAuditCheckpointAsync(Row(50, new string('f', 64), log.Fingerprint, RandomNumberGenerator.GetBytes(64)), default);
        Assert.Equal(40, (await store.GetAuditHeadAsync(default)).Sequence); // the events' head, not the row's

        await store.AppendAuditAsync([.. Enumerable.Range(41, 10).Select(i => Entry($"e-{i}"))], default);
        var signed = await log.CheckpointAsync(default);
        Assert.Equal(50, signed?.Sequence);
        var stored = await log.LatestSignedCheckpointAsync(default);
        Assert.Equal((50L, signed!.HeadHash, signed.Body), (stored?.Sequence, stored?.HeadHash, stored?.Body));
        Assert.Equal([50L], refused.Select(r => r.Sequence));
        Assert.Contains("it was replaced with the signed checkpoint", refused[0].What, StringComparison.Ordinal);
    }

    // Defect: where no event is stored (retention cut the whole log), the head is the newest
    // checkpoint row's. A database writer without the HSM inserts one above the genuine anchor
    // (60, bogus signature): no checkpoint is signed over it (UNAVAILABLE, reported: 1331).
    // Before, the node signed checkpoint 60 over a head no event has.
    [Fact]
    public async Task Checkpoint_OverAHeadThatIsAnUnsignedCheckpointRow_NoEventStored_Refused_Reported()
    {
        var (store, log, refused) = await CheckpointSignedAt40Async();
        Assert.Equal(40, (await store.PruneAuditAsync(40, default)).Events); // the whole log (as an older release's retention left it)
        Assert.Null(await log.CheckpointAsync(default)); // the signed anchor: nothing new

        await store.AddAuditCheckpointAsync(Row(60, new string('f', 64), log.Fingerprint, RandomNumberGenerator.GetBytes(64)), default);
        Assert.Equal(60, (await store.GetAuditHeadAsync(default)).Sequence);
        var e = await Assert.ThrowsAsync<KmsException>(() => log.CheckpointAsync(default));
        Assert.Equal(KmsErrorCode.Unavailable, e.Code);
        Assert.Contains("the chain's head 60 is no event's", e.Message, StringComparison.Ordinal);
        Assert.Equal([60L], refused.Select(r => r.Sequence));
        Assert.Equal(40L, (await log.LatestSignedCheckpointAsync(default))?.Sequence);
    }

    // Defect: a retention pass that passed over MaxCheckpointRowsPassedOver rows (event 1332) cut
    // nothing, and the next pass started again at the same bound: a database writer without the
    // HSM who inserted 100 rows just below it (here 150, at 151..300, bogus signatures, above the
    // checkpoint signed at 150) stopped retention for good. Now the next pass goes on where the
    // last stopped, finds checkpoint 150 and cuts there; the writer's rows below the cut (41..149,
    // never looked at) go with the events they stood over, and are reported (event 1344), not
    // deleted without a word. Those above the cut stay (the events they name are still held).
    [Fact]
    public async Task Retention_MoreRowsTheAuditKeyDidNotSignThanAPassLooksAt_TheNextPassGoesOn_CutsAtTheCheckpoint_RowsBelowReportedDeleted()
    {
        var store = new InMemoryStore();
        var log = new AuditLog(store, store, _hsm, _time, new AuditOptions { CheckpointEveryEvents = 1000, CheckpointInterval = TimeSpan.FromDays(365), Retention = TimeSpan.FromDays(30) });
        await log.InitializeAsync(default);
        var t0 = _time.GetUtcNow();
        await store.AppendAuditAsync([.. Enumerable.Range(1, 40).Select(i => Entry($"e-{i}") with { Time = t0 })], default);
        Assert.Equal(40, (await log.CheckpointAsync(default))?.Sequence);
        await store.AppendAuditAsync([.. Enumerable.Range(41, 110).Select(i => Entry($"e-{i}") with { Time = t0 })], default);
        Assert.Equal(150, (await log.CheckpointAsync(default))?.Sequence);
        await store.AppendAuditAsync([.. Enumerable.Range(151, 150).Select(i => Entry($"e-{i}") with { Time = t0 })], default);
        await store.AppendAuditAsync([.. Enumerable.Range(301, 20).Select(i => Entry($"e-{i}") with { Time = t0.AddDays(20) })], default);
        Assert.Equal(320, (await log.CheckpointAsync(default))?.Sequence);
        var events = await store.ListAuditEventsAsync(new AuditQuery { Limit = 1000 }, default);
        foreach (var sequence in Enumerable.Range(41, 260).Where(i => i != 150))
        {
            await store.AddAuditCheckpointAsync(Row(sequence, AuditChain.HashOf(events[sequence - 1].Body), log.Fingerprint, RandomNumberGenerator.GetBytes(64)), default);
        }

        _time.Advance(TimeSpan.FromDays(31));
        var passedOver = new List<long>();
        log.RetentionPassedOver += (sequence, _) => passedOver.Add(sequence);
        var deleted = new List<(long Cut, IReadOnlyList<long> Rows)>();
        log.RetentionRowsDeleted += (cut, rows) => deleted.Add((cut, rows));

        Assert.Equal(0, await log.PruneAsync(_time.GetUtcNow(), default)); // 300..201: the pass's hundred
        Assert.Equal(Enumerable.Range(201, 100).Reverse().Select(i => (long)i), passedOver);
        Assert.Equal(150, await log.PruneAsync(_time.GetUtcNow(), default)); // 200..151, then 150
        Assert.Equal(Enumerable.Range(151, 150).Reverse().Select(i => (long)i), passedOver); // none looked at twice
        Assert.Equal(151, (await store.ListAuditEventsAsync(new AuditQuery { Limit = 1 }, default))[0].Sequence);
        var (cut, rows) = Assert.Single(deleted);
        Assert.Equal(150, cut);
        Assert.Equal(Enumerable.Range(41, 109).Select(i => (long)i), rows); // not 40: the audit key's
        Assert.Equal(150, (await store.ListAuditCheckpointsAsync(long.MinValue, 1, default))[0].Sequence);
    }

    // Rows a pass passed over as no place to cut that lie below the cut it made (the first
    // checkpoint of the chain past the per-pass bound, none within it) go with the events: each is
    // reported (event 1344), the one the audit key signed over another head among them.
    [Fact]
    public async Task Retention_RowsPassedOverBelowTheCut_DeletedWithTheEvents_EachReported()
    {
        var (store, log) = await ExpiredEventsWithCheckpointsAt40And100Async();
        var events = await store.ListAuditEventsAsync(new AuditQuery { Limit = 1000 }, default);
        await store.AddAuditCheckpointAsync(Row(30, AuditChain.HashOf(events[29].Body), log.Fingerprint, RandomNumberGenerator.GetBytes(64)), default);
        await store.AddAuditCheckpointAsync(await SignedRawAsync(store, Row(20, new string('a', 64), log.Fingerprint, [])), default);
        var options = new AuditOptions { CheckpointEveryEvents = 1000, CheckpointInterval = TimeSpan.FromDays(365), Retention = TimeSpan.FromDays(30), MaxPrunedPerPass = 35 };
        var bounded = new AuditLog(store, store, _hsm, _time, options);
        await bounded.InitializeAsync(default);
        var passedOver = new List<long>();
        bounded.RetentionPassedOver += (sequence, _) => passedOver.Add(sequence);
        var deleted = new List<(long Cut, IReadOnlyList<long> Rows)>();
        bounded.RetentionRowsDeleted += (cut, rows) => deleted.Add((cut, rows));

        Assert.Equal(40, await bounded.PruneAsync(_time.GetUtcNow(), default));
        Assert.Equal([30L, 20L], passedOver);
        var (cut, rows) = Assert.Single(deleted);
        Assert.Equal(40, cut);
        Assert.Equal([20L, 30L], rows);
    }

    // Defect: every checkpoint listed the event at the head's sequence to learn whether the head
    // was an event's (ThrowUnlessTheHeadIsAnEventOrSignedAsync), though the store's head read
    // already says so (AuditHeadSource). Now a checkpoint over an event's head reads the head once
    // and lists one event (the chain still passes through the last checkpoint); before, two.
    [Fact]
    public async Task Checkpoint_OverAnEventsHead_NoReadBeyondTheHeadAndTheChainCheck()
    {
        var (store, log, _) = await CheckpointSignedAt40Async();
        await store.AppendAuditAsync([.. Enumerable.Range(41, 10).Select(i => Entry($"e-{i}"))], default);

        var (listings, heads) = (store.AuditReadStatements, store.AuditHeadReads);
        Assert.Equal(50, (await log.CheckpointAsync(default))?.Sequence);
        Assert.Equal((1L, 1), (store.AuditReadStatements - listings, store.AuditHeadReads - heads));
    }

    // Events 1..40 and the checkpoint this node signed at 40 (no other checkpoint for a year), with
    // the rows the log refuses (1331) collected.
    private async Task<(InMemoryStore Store, AuditLog Log, List<(long Sequence, string What)> Refused)> CheckpointSignedAt40Async()
    {
        var store = new InMemoryStore();
        var log = new AuditLog(store, store, _hsm, _time, new AuditOptions { CheckpointEveryEvents = 1000, CheckpointInterval = TimeSpan.FromDays(365) });
        await log.InitializeAsync(default);
        var refused = new List<(long Sequence, string What)>();
        log.CheckpointRowRefused += (sequence, what) => refused.Add((sequence, what));
        await store.AppendAuditAsync([.. Enumerable.Range(1, 40).Select(i => Entry($"e-{i}"))], default);
        Assert.Equal(40, (await log.CheckpointAsync(default))?.Sequence);
        return (store, log, refused);
    }

    // A log whose events 1..80 are past the retention period and 81..100 are not, checkpoints
    // signed at 40 and 100: the cut's limit is 80, the per-pass bound far above it.
    private async Task<(InMemoryStore Store, AuditLog Log)> ExpiredEventsWithCheckpointsAt40And100Async()
    {
        var store = new InMemoryStore();
        var log = new AuditLog(store, store, _hsm, _time, new AuditOptions { CheckpointEveryEvents = 1000, CheckpointInterval = TimeSpan.FromDays(365), Retention = TimeSpan.FromDays(30) });
        await log.InitializeAsync(default);
        var t0 = _time.GetUtcNow();
        await store.AppendAuditAsync([.. Enumerable.Range(1, 40).Select(i => Entry($"e-{i}") with { Time = t0 })], default);
        Assert.Equal(40, (await log.CheckpointAsync(default))?.Sequence);
        await store.AppendAuditAsync([.. Enumerable.Range(41, 40).Select(i => Entry($"e-{i}") with { Time = t0 })], default);
        await store.AppendAuditAsync([.. Enumerable.Range(81, 20).Select(i => Entry($"e-{i}") with { Time = t0.AddDays(20) })], default);
        Assert.Equal(100, (await log.CheckpointAsync(default))?.Sequence);
        _time.Advance(TimeSpan.FromDays(31));
        return (store, log);
    }

    private static AuditCheckpoint Row(long sequence, string head, string fingerprint, byte[] signature, string type = "checkpoint")
    {
        var time = new DateTimeOffset(2026, 11, 29, 12, 0, 0, TimeSpan.Zero);
        var body = AuditChain.CheckpointBody(sequence, head, time, fingerprint).Replace("\"type\":\"checkpoint\"", $"\"type\":\"{type}\"", StringComparison.Ordinal);
        return new AuditCheckpoint(sequence, head, time, fingerprint, body, signature);
    }

    // The row with the audit key's signature of the bare SHA-256 of its body (what a checkpoint's is).
    private async Task<AuditCheckpoint> SignedRawAsync(InMemoryStore store, AuditCheckpoint row)
    {
        using var stored = System.Text.Json.JsonDocument.Parse((await store.GetSettingAsync("audit.signing-key.v1", default))!);
        var wrapped = Convert.FromBase64String(stored.RootElement.GetProperty("Wrapped").GetString()!);
        var key = new KeyMaterialRef(Kms.Core.Keys.KeyVersionId.NewId(), new Kms.Core.Crypto.WrappedKeyMaterial(wrapped));
        return row with { Signature = await _hsm.SignEcdsaAsync(key, EcCurve.P256, AuditChain.CheckpointDigest(row.Body), default) };
    }

    private async Task<RunningLog> RunningLogAsync(InMemoryStore store, AuditOptions options)
    {
        var log = new AuditLog(store, store, _hsm, _time, options);
        await log.InitializeAsync(default);
        var stop = new CancellationTokenSource();
        return new RunningLog(log, stop, Task.Run(() => log.RunAsync(stop.Token)));
    }

    // An audit log of its own with its group-commit loop running, stopped when disposed.
    private sealed record RunningLog(AuditLog Log, CancellationTokenSource Stop, Task Loop) : IAsyncDisposable
    {
        public async ValueTask DisposeAsync()
        {
            await Stop.CancelAsync();
            await Loop.WaitAsync(HangGuard.Time).ContinueWith(_ => { }, TaskScheduler.Default);
            Stop.Dispose();
        }
    }

    [Fact]
    public async Task SignStatement_VerifiesWithThePublishedKey_OnlyForItsKindAndContent()
    {
        var transcript = "kms ceremony transcript\ndomain KCV: 1A2B3C\n"u8.ToArray();
        var signature = await _log.SignStatementAsync("ceremony-transcript", transcript, default);

        Assert.True(SignedStatement.Verify(_log.PublicKey, "ceremony-transcript", transcript, signature));
        Assert.False(SignedStatement.Verify(_log.PublicKey, "backup-manifest", transcript, signature));
        var edited = transcript.ToArray();
        edited[^3] ^= 1;
        Assert.False(SignedStatement.Verify(_log.PublicKey, "ceremony-transcript", edited, signature));
        using var other = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        Assert.False(SignedStatement.Verify(other.ExportSubjectPublicKeyInfo(), "ceremony-transcript", transcript, signature));
    }

    [Fact]
    public async Task PublicKeySwappedInTheDatabase_StartRefused()
    {
        var stored = System.Text.Json.JsonDocument.Parse((await _store.GetSettingAsync("audit.signing-key.v1", default))!).RootElement;
        using var forger = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        var tampered = new InMemoryStore();
        await tampered.SetSettingIfAbsentAsync("audit.signing-key.v1", System.Text.Json.JsonSerializer.Serialize(new
        {
            Wrapped = stored.GetProperty("Wrapped").GetString(),
            PublicKey = Convert.ToBase64String(forger.ExportSubjectPublicKeyInfo()),
        }), default);

        var e = await Assert.ThrowsAsync<KmsException>(() => new AuditLog(tampered, tampered, _hsm, _time, new AuditOptions()).InitializeAsync(default));
        Assert.Equal(KmsErrorCode.FailedPrecondition, e.Code);
    }

    // The page-token key is derived from the context-hash key: it must not be the hash of any
    // context value, which a caller who may encrypt can have audited and an auditor can read.
    [Fact]
    public void PageTokenKey_IsNoEncryptionContextValuesHash()
    {
        var data = "ListAuditEvents v1|-|17"u8.ToArray();
        foreach (var value in new[] { "kms audit page token v1", "kms audit page token v2", "" })
        {
            var leaked = Convert.FromHexString(_log.HashContextValue(value));
            Assert.NotEqual(Convert.ToHexStringLower(HMACSHA256.HashData(leaked, data)), Convert.ToHexStringLower(_log.PageTokenTag(data)));
        }
    }

    [Fact]
    public async Task KeysAreStableAcrossRestarts_ContextHashKeyed()
    {
        var again = new AuditLog(_store, _store, _hsm, _time, new AuditOptions());
        await again.InitializeAsync(default);
        Assert.Equal(_log.Fingerprint, again.Fingerprint);
        Assert.Equal(_log.HashContextValue("42"), again.HashContextValue("42"));
        Assert.NotEqual(_log.HashContextValue("42"), _log.HashContextValue("43"));
        Assert.NotEqual(Convert.ToHexStringLower(SHA256.HashData("42"u8)), _log.HashContextValue("42"));
        Assert.Equal(1, _hsm.Calls["generate-ec"]);

        // Another deployment (another domain key and database) hashes the same value differently.
        using var otherHsm = new FakeHsm();
        var other = new AuditLog(new InMemoryStore(), new InMemoryStore(), otherHsm, _time, new AuditOptions());
        await other.InitializeAsync(default);
        Assert.NotEqual(_log.HashContextValue("42"), other.HashContextValue("42"));
    }

    [Fact]
    public async Task ContextHashKey_IsTheHsmsOutputUnderTheStoredContextKey_NotAFunctionOfTheDatabase()
    {
        // The database holds the context key only wrapped under the domain key; the HMAC key is
        // what the HSM computes with it (AES-GCM of 32 zero bytes under a fixed IV and label).
        // A key derived from the stored blob itself (a hash of it) is just as stable and just as
        // distinct per deployment, but whoever reads the database could hash context values.
        var stored = Convert.FromBase64String(await _store.GetSettingAsync("audit.context-key.v1", default) ?? throw new InvalidOperationException("no context key stored"));
        var prf = await _hsm.EncryptAesGcmAsync(
            new KeyMaterialRef(Kms.Core.Keys.KeyVersionId.NewId(), new Kms.Core.Crypto.WrappedKeyMaterial(stored)),
            new byte[12],
            "kms audit context hmac v1"u8.ToArray(),
            new byte[32],
            default);

        Assert.Equal(Convert.ToHexStringLower(HMACSHA256.HashData(prf.AsSpan(0, 32), "42"u8)), _log.HashContextValue("42"));
    }

    private AuditEntry Entry(string requestId) => new()
    {
        Time = _time.GetUtcNow(),
        RequestId = requestId,
        Principal = "token:alice",
        Tenant = "dev",
        Operation = "/kms.v1.KeyManagementService/Encrypt",
        Outcome = "OK",
    };

    // The audit port of an InMemoryStore whose appends (or, with gateCheckpoints, checkpoint
    // writes; with gates, only the appends it picks) wait until released.
    private sealed class GatedAuditStore(InMemoryStore inner, bool gateCheckpoints = false, Func<IReadOnlyList<AuditEntry>, bool>? gates = null) : IAuditStore
    {
        public TaskCompletionSource Entered { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);

        private int _appends;

        public TaskCompletionSource Release { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);

        // What the first append throws once released (null: it is written).
        public Exception? ReleasedWith { get; init; }

        public int Appends => Volatile.Read(ref _appends);

        public async Task<IReadOnlyList<AuditEvent>> AppendAuditAsync(IReadOnlyList<AuditEntry> entries, CancellationToken cancellationToken)
        {
            var append = Interlocked.Increment(ref _appends);
            if (!gateCheckpoints && (gates is null || gates(entries)))
            {
                Entered.TrySetResult();
                await Release.Task;
                if (append == 1 && ReleasedWith is { } failure)
                {
                    throw failure;
                }
            }

            return await inner.AppendAuditAsync(entries, cancellationToken);
        }

        public Task<AuditHead> GetAuditHeadAsync(CancellationToken cancellationToken) => inner.GetAuditHeadAsync(cancellationToken);

        public Task<AuditHeadSource> GetAuditHeadSourceAsync(CancellationToken cancellationToken) => inner.GetAuditHeadSourceAsync(cancellationToken);

        public void RequireSignedCheckpointHead(Func<AuditCheckpoint, bool> signedByTheAuditKey) => inner.RequireSignedCheckpointHead(signedByTheAuditKey);

        public Task<IReadOnlyList<AuditEvent>> ListAuditEventsAsync(AuditQuery query, CancellationToken cancellationToken) => inner.ListAuditEventsAsync(query, cancellationToken);

        public Task<AuditPage> ListAuditPageAsync(AuditQuery query, long scanWindow, CancellationToken cancellationToken) => inner.ListAuditPageAsync(query, scanWindow, cancellationToken);

        public async Task<AuditCheckpoint?> AddAuditCheckpointAsync(AuditCheckpoint checkpoint, CancellationToken cancellationToken)
        {
            if (gateCheckpoints)
            {
                Entered.TrySetResult();
                await Release.Task;
            }

            return await inner.AddAuditCheckpointAsync(checkpoint, cancellationToken);
        }

        public Task<IReadOnlyList<AuditCheckpoint>> ListAuditCheckpointsAsync(long afterSequence, int limit, CancellationToken cancellationToken) => inner.ListAuditCheckpointsAsync(afterSequence, limit, cancellationToken);

        public Task<AuditCheckpoint?> GetLatestAuditCheckpointAsync(CancellationToken cancellationToken) => inner.GetLatestAuditCheckpointAsync(cancellationToken);

        public Task<AuditCheckpoint?> FindAuditCheckpointAtOrBeforeAsync(long sequence, CancellationToken cancellationToken) => inner.FindAuditCheckpointAtOrBeforeAsync(sequence, cancellationToken);

        public Task<AuditPruned> PruneAuditAsync(long throughSequence, CancellationToken cancellationToken) => inner.PruneAuditAsync(throughSequence, cancellationToken);

        public Task<long?> FindAuditWalkStartAsync(AuditQuery query, CancellationToken cancellationToken) => inner.FindAuditWalkStartAsync(query, cancellationToken);

        public Task<int> SummariseAuditBlocksAsync(int blockEvents, int maxBlocks, CancellationToken cancellationToken) => inner.SummariseAuditBlocksAsync(blockEvents, maxBlocks, cancellationToken);
    }
}
