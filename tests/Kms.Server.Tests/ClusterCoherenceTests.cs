using System.Diagnostics;
using Kms.Core.Ports;
using Kms.Server.Hosting;
using Kms.Server.Security;
using Kms.Testing;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.DependencyInjection.Extensions;
using Microsoft.Extensions.Logging.Abstractions;
using Microsoft.Extensions.Time.Testing;

namespace Kms.Server.Tests;

/// <summary>The change-feed reader's promise to the metadata cache, against the real store's feed.</summary>
public sealed class ClusterCoherenceTests(ServerFixture fixture) : IClassFixture<ServerFixture>
{
    [Fact]
    public async Task SlowFeedRead_VouchesFromWhenTheReadBegan_NotFromItsAnswer()
    {
        // A read whose answer comes 1.5 s late saw the database as it was when it began: a key
        // disabled meanwhile is not in it. Confirmed from the answer, remembered metadata would
        // serve the key as ENABLED for a whole validity (1 s) after that.
        var services = fixture.Server.Services;
        var feed = new SlowFeed(services.GetRequiredService<IChangeFeed>());
        var confirmations = new RecordingCoherence();
        var worker = new ClusterCoherenceWorker(
            feed,
            services.GetRequiredService<CallerAuthentication>(),
            services.GetRequiredService<IHsm>(),
            confirmations,
            new ChangeFeedOptions { PollInterval = TimeSpan.FromMilliseconds(250) },
            NullLogger<ClusterCoherenceWorker>.Instance);
        await worker.PollOnceAsync(default);
        Assert.NotEmpty(confirmations.Until);

        confirmations.Until.Clear();
        feed.Delay = TimeSpan.FromMilliseconds(1500); // the first read (of the head and its row) answered at once
        var started = Stopwatch.GetTimestamp();
        await worker.PollOnceAsync(default);

        var latestAllowed = started + Stopwatch.Frequency; // the poll's start + 1 s (four intervals, at least 1 s)
        Assert.All(confirmations.Until, until => Assert.True(until <= latestAllowed, $"vouched {(until - latestAllowed) * 1000 / Stopwatch.Frequency} ms past the read's start + 1 s"));
    }

    [Fact]
    public async Task AnEvictionThatFails_AfterAnAccessChange_TheAccessChangeIsStillActedOn()
    {
        // Poll 1 sees an access change (a revocation), then a material change whose eviction the
        // HSM refuses: the poll fails, and the revocation was marked seen — it must have been
        // acted on (remembered callers forgotten, metadata invalidated), not skipped for good.
        var services = fixture.Server.Services;
        var material = new string('a', Kms.Core.Keys.KeyVersionId.Length * 2);
        var feed = new ScriptedFeed([new StoreChange(1, StoreChangeKind.Access, "token:revoked", DateTimeOffset.UtcNow), new StoreChange(2, StoreChangeKind.Material, material, DateTimeOffset.UtcNow)]);
        var coherence = new RecordingCoherence();
        using var hsm = new Kms.Testing.Fakes.FakeHsm { EvictFault = new InvalidOperationException("CKR_DEVICE_ERROR") };
        var authentication = services.GetRequiredService<CallerAuthentication>();
        var worker = new ClusterCoherenceWorker(feed, authentication, hsm, coherence, new ChangeFeedOptions(), NullLogger<ClusterCoherenceWorker>.Instance);
        await worker.PollOnceAsync(default);
        var generation = authentication.Generation;
        coherence.Invalidated = 0;

        await Assert.ThrowsAsync<InvalidOperationException>(() => worker.PollOnceAsync(default));

        Assert.True(authentication.Generation > generation, "remembered callers were not forgotten");
        Assert.Equal(1, coherence.Invalidated);
        Assert.Equal(1, worker.Applied); // the eviction is retried at the next poll
        hsm.EvictFault = null;
        await worker.PollOnceAsync(default);
        Assert.Equal(2, worker.Applied);
    }

    [Fact]
    public async Task RowsMissingInTheMiddleOfABatch_RememberedCallersAreForgotten()
    {
        // Row 2, an access change (a revocation), was pruned; rows 1 and 3 are metadata. Only a
        // gap before the first row used to count: this one went unnoticed, and the revoked
        // token stayed remembered.
        var feed = new ChangingFeed();
        var (worker, authentication, hsm) = NewWorker(feed);
        await worker.PollOnceAsync(default);
        feed.Changes = [new StoreChange(1, StoreChangeKind.Metadata, "k", DateTimeOffset.UtcNow), new StoreChange(3, StoreChangeKind.Metadata, "k", DateTimeOffset.UtcNow)];
        var generation = authentication.Generation;

        await worker.PollOnceAsync(default);

        Assert.True(authentication.Generation > generation, "remembered callers were not forgotten");

        // Row 2 may as well have destroyed a version: every unwrapped copy goes.
        Assert.Equal(1, hsm.EvictedAll);
    }

    [Fact]
    public async Task MaterialChange_MetadataForgottenBeforeTheCopyIsEvicted()
    {
        // A request that read the version after the eviction, from metadata still remembered as
        // ENABLED, would unwrap the destroyed version again.
        var feed = new ChangingFeed();
        var (worker, _, hsm) = NewWorker(feed, out var coherence);
        await worker.PollOnceAsync(default);
        var invalidatedAtEviction = -1;
        hsm.BeforeEvict = () => invalidatedAtEviction = coherence.Invalidated;
        feed.Changes = [new StoreChange(1, StoreChangeKind.Material, new string('b', Kms.Core.Keys.KeyVersionId.Length * 2), DateTimeOffset.UtcNow)];
        var before = coherence.Invalidated;

        await worker.PollOnceAsync(default);

        Assert.Single(hsm.Evicted);
        Assert.True(invalidatedAtEviction > before, "the copy was evicted while the version's metadata was still remembered");
        Assert.Equal(0, hsm.EvictedAll); // no row missing: only that version's copy
    }

    [Fact]
    public async Task FirstPoll_AccessChangeBeforeTheHeadItReads_CallersRememberedMeanwhileForgotten()
    {
        // A node serves (and remembers callers) as soon as it listens; its first poll only reads
        // the feed's head, taking every change up to it as seen. A revocation another node
        // committed between this node's first calls and that read was then never acted on: the
        // revoked token stayed remembered for the whole credential cache time.
        var feed = new ChangingFeed { Changes = [new StoreChange(1, StoreChangeKind.Access, "apiTokens/0123456789abcdef", DateTimeOffset.UtcNow)] };
        var (worker, authentication, _) = NewWorker(feed);
        var generation = authentication.Generation;

        await worker.PollOnceAsync(default);

        Assert.True(authentication.Generation > generation, "callers remembered before the first poll were kept across the revocation it took as seen");
    }

    [Theory]
    [InlineData(1)]
    [InlineData(4)]
    public async Task TheFeedGoesBack_AfterAFailover_TheChangesMadeSinceAreNotSkipped(int writtenSince)
    {
        // This node read up to 5; the new primary lost 4 and 5. Its next changes are numbered 4,
        // 5, … again: a node waiting for 6 would skip a revocation among them — whether they are
        // fewer than it lost or already reach past 5 when it next reads.
        var feed = new ChangingFeed();
        var (worker, authentication, hsm) = NewWorker(feed);
        await worker.PollOnceAsync(default);
        feed.Changes = [.. Enumerable.Range(1, 5).Select(i => new StoreChange(i, StoreChangeKind.Metadata, "k", DateTimeOffset.UtcNow))];
        await worker.PollOnceAsync(default);
        Assert.Equal((5, 0), (worker.Applied, hsm.EvictedAll));

        feed.Changes =
        [
            .. feed.Changes.Take(3),
            new StoreChange(4, StoreChangeKind.Access, "token:revoked", DateTimeOffset.UtcNow),
            .. Enumerable.Range(5, writtenSince - 1).Select(i => new StoreChange(i, StoreChangeKind.Metadata, "other", DateTimeOffset.UtcNow)),
        ];
        var generation = authentication.Generation;
        await worker.PollOnceAsync(default);

        Assert.True(authentication.Generation > generation, "the revocation made after the failover was skipped");
        Assert.True(hsm.EvictedAll > 0, "the unwrapped copies were kept across a feed that went back");
        var applied = worker.Applied;
        await worker.PollOnceAsync(default);
        Assert.Equal(applied, worker.Applied); // and the feed is followed normally again
    }

    [Fact]
    public async Task TheFeedGoesBack_AfterTheFirstRead_TheChangesMadeSinceAreNotSkipped()
    {
        // The first read took the head (5) as seen without the row itself, so the next read had
        // nothing to recognise it by: after a failover that lost 4 and 5, the new 5 was taken for
        // the one seen, and the revocation numbered 4 again was skipped for good.
        var feed = new ChangingFeed { Changes = [.. Enumerable.Range(1, 5).Select(i => new StoreChange(i, StoreChangeKind.Metadata, "k", DateTimeOffset.UtcNow))] };
        var (worker, authentication, hsm) = NewWorker(feed);
        await worker.PollOnceAsync(default);

        feed.Changes =
        [
            .. feed.Changes.Take(3),
            new StoreChange(4, StoreChangeKind.Access, "token:revoked", DateTimeOffset.UtcNow),
            new StoreChange(5, StoreChangeKind.Metadata, "other", DateTimeOffset.UtcNow),
            new StoreChange(6, StoreChangeKind.Metadata, "other", DateTimeOffset.UtcNow),
        ];
        var generation = authentication.Generation;
        await worker.PollOnceAsync(default);

        Assert.True(authentication.Generation > generation, "the revocation made after the failover was skipped");
        Assert.True(hsm.EvictedAll > 0, "the unwrapped copies were kept across a feed that went back");
    }

    [Fact]
    public async Task TheServersClockMovedADay_TheFeedIsNotReadOncePerIntervalOfIt()
    {
        // The poll interval bounds, in real time, how late another node's change reaches this one
        // (its validity is measured on the monotonic clock). Paced by the injected TimeProvider,
        // a fake clock moved a day ran a poll per interval of that day inside Advance: 345,600
        // SQLite reads at 250 ms, the minute of CPU the lifecycle tests spent. Five minutes here
        // (the most allowed), so that no poll is due in real time while the test runs: the only
        // one is the first.
        var time = new FakeTimeProvider(new DateTimeOffset(2026, 11, 29, 12, 0, 0, TimeSpan.Zero));
        await using var server = await KmsTestServer.StartAsync(null, null, "dev", services => services.Replace(ServiceDescriptor.Singleton<TimeProvider>(time)), "--Storage:ChangeFeed:PollInterval=00:05:00");
        var worker = await FirstPollDoneAsync(server);

        time.Advance(TimeSpan.FromDays(1));

        Assert.Equal(1, worker.Polls);
    }

    [Fact]
    public async Task DeleteTenant_FailsAfterTheTenantIsDeleting_TheNodeThatRanItForgetsTheTenantsCallersAllTheSame()
    {
        // A DeleteTenant whose later step failed (its keys' scheduling, here by a trigger) has made
        // the tenant DELETING all the same. The node that ran it forgot its remembered callers only
        // on success; on failure they were served until its next feed read. The feed is read at the
        // start only here (five minutes, the most allowed), and the fake clock keeps the credential
        // cache's entries, so only the node's own forgetting can refuse the caller.
        var time = new FakeTimeProvider(new DateTimeOffset(2026, 11, 29, 12, 0, 0, TimeSpan.Zero));
        await using var server = await KmsTestServer.StartAsync(null, null, "dev", services => services.Replace(ServiceDescriptor.Singleton<TimeProvider>(time)), "--Storage:ChangeFeed:PollInterval=00:05:00");
        await FirstPollDoneAsync(server);
        await server.EnsureTenantAsync("leaving");
        using var leaving = server.CreateClient(await server.CreatePrincipalWithTokenAsync("leaving-manager", "leaving", "key-manager", "key-user"));
        await leaving.CreateKeyAsync("tenants/leaving", "a");
        Assert.Equal(16, (await leaving.GenerateRandomAsync(16)).Length); // authenticated, remembered

        await using (var connection = new Microsoft.Data.Sqlite.SqliteConnection($"Data Source={server.DatabasePath}"))
        {
            await connection.OpenAsync();
            await using var trigger = connection.CreateCommand();
            trigger.CommandText = "CREATE TRIGGER injected_key_write_failure BEFORE UPDATE ON keys BEGIN SELECT RAISE(ABORT, 'injected'); END;";
            await trigger.ExecuteNonQueryAsync();
        }

        using var admin = server.DeploymentAdmin();
        await Assert.ThrowsAsync<global::Grpc.Core.RpcException>(async () => await admin.Access.DeleteTenantAsync(new Kms.Contracts.V1.DeleteTenantRequest { Name = "tenants/leaving" }));
        Assert.Equal("DELETING", (await admin.Access.GetTenantAsync(new Kms.Contracts.V1.GetTenantRequest { Name = "tenants/leaving" })).Tenant.State);

        var refused = await Assert.ThrowsAsync<global::Grpc.Core.RpcException>(() => leaving.GenerateRandomAsync(16));
        Assert.Equal(global::Grpc.Core.StatusCode.FailedPrecondition, refused.StatusCode);
        Assert.Contains("tenants/leaving is being deleted", refused.Status.Detail, StringComparison.Ordinal);
    }

    // Waits until the server's first read of the change feed (which forgets every remembered caller) is done.
    private static async Task<ClusterCoherenceWorker> FirstPollDoneAsync(KmsTestServer server)
    {
        var worker = server.Services.GetRequiredService<ClusterCoherenceWorker>();
        var deadline = DateTime.UtcNow.AddSeconds(30);
        while (worker.Completed == 0)
        {
            Assert.True(DateTime.UtcNow < deadline, "the first read of the change feed did not finish within 30 s");
            await Task.Delay(50);
        }

        return worker;
    }

    [Theory]
    [InlineData("00:00:00")]
    [InlineData("-00:00:00.001")]
    [InlineData("00:05:00.001")]
    [InlineData("1.00:00:00")]
    public async Task Build_PollIntervalOutsideZeroToFiveMinutes_RefusedBeforeTouchingTheHsm(string value)
    {
        // The interval is how late another node's disable, destruction or revocation reaches this
        // one while the feed is read (and four of them how long remembered metadata is trusted
        // when it cannot be). Unchecked, a day kept a key disabled elsewhere in use here for a
        // day; zero stopped the host from a background task after it had started serving, and
        // -1 ms (an infinite period) never read the feed again.
        var e = await Assert.ThrowsAsync<InvalidOperationException>(() => KmsServerApp.BuildAsync(
            ["--dev", "--urls=https://127.0.0.1:0", $"--Storage:ChangeFeed:PollInterval={value}", $"--Kms:DataDir={Scratch.NewPath("kms-never-")}"]));
        Assert.Contains("Storage:ChangeFeed:PollInterval", e.Message, StringComparison.Ordinal);
        Assert.Contains("00:05:00", e.Message, StringComparison.Ordinal);
    }

    private (ClusterCoherenceWorker Worker, CallerAuthentication Authentication, Kms.Testing.Fakes.FakeHsm Hsm) NewWorker(IChangeFeed feed) => NewWorker(feed, out _);

    private (ClusterCoherenceWorker Worker, CallerAuthentication Authentication, Kms.Testing.Fakes.FakeHsm Hsm) NewWorker(IChangeFeed feed, out RecordingCoherence coherence)
    {
        var authentication = fixture.Server.Services.GetRequiredService<CallerAuthentication>();
        var hsm = new Kms.Testing.Fakes.FakeHsm();
        coherence = new RecordingCoherence();
        return (new ClusterCoherenceWorker(feed, authentication, hsm, coherence, new ChangeFeedOptions(), NullLogger<ClusterCoherenceWorker>.Instance), authentication, hsm);
    }

    // A feed whose rows a test changes between polls; its head is its last row's number.
    private sealed class ChangingFeed : IChangeFeed
    {
        public IReadOnlyList<StoreChange> Changes { get; set; } = [];

        public Task<IReadOnlyList<StoreChange>> ListChangesAsync(long afterSequence, int limit, CancellationToken cancellationToken) =>
            Task.FromResult<IReadOnlyList<StoreChange>>(Changes.Where(c => c.Sequence > afterSequence).Take(limit).ToList());

        public Task<long> GetChangeHeadAsync(CancellationToken cancellationToken) => Task.FromResult(Changes.Count == 0 ? 0L : Changes[^1].Sequence);

        public Task<int> PruneChangesAsync(DateTimeOffset before, CancellationToken cancellationToken) => Task.FromResult(0);
    }

    private sealed class ScriptedFeed(IReadOnlyList<StoreChange> changes) : IChangeFeed
    {
        public Task<IReadOnlyList<StoreChange>> ListChangesAsync(long afterSequence, int limit, CancellationToken cancellationToken) =>
            Task.FromResult<IReadOnlyList<StoreChange>>(changes.Where(c => c.Sequence > afterSequence).Take(limit).ToList());

        public Task<long> GetChangeHeadAsync(CancellationToken cancellationToken) => Task.FromResult(0L);

        public Task<int> PruneChangesAsync(DateTimeOffset before, CancellationToken cancellationToken) => Task.FromResult(0);
    }

    private sealed class SlowFeed(IChangeFeed inner) : IChangeFeed
    {
        public TimeSpan Delay { get; set; }

        public async Task<IReadOnlyList<StoreChange>> ListChangesAsync(long afterSequence, int limit, CancellationToken cancellationToken)
        {
            var changes = await inner.ListChangesAsync(afterSequence, limit, cancellationToken);
            await Task.Delay(Delay, cancellationToken);
            return changes;
        }

        public Task<long> GetChangeHeadAsync(CancellationToken cancellationToken) => inner.GetChangeHeadAsync(cancellationToken);

        public Task<int> PruneChangesAsync(DateTimeOffset before, CancellationToken cancellationToken) => inner.PruneChangesAsync(before, cancellationToken);
    }

    private sealed class RecordingCoherence : IMetadataCoherence
    {
        public List<long> Until { get; } = [];

        public int Invalidated { get; set; }

        public void InvalidateMetadata() => Invalidated++;

        public void ConfirmCoherent(TimeSpan validFor) => Until.Add(Stopwatch.GetTimestamp() + (long)(validFor.TotalSeconds * Stopwatch.Frequency));
    }
}
