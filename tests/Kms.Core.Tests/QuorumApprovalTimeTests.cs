using Kms.Core.Errors;
using Kms.Core.Names;
using Kms.Core.Ports;
using Kms.Core.Quorum;
using Kms.Core.Services;
using Kms.Testing;
using Kms.Testing.Fakes;
using Microsoft.Extensions.Time.Testing;

namespace Kms.Core.Tests;

/// <summary>
/// An approval is judged by the time at which the store applies it, under its write lock — not by
/// the time the call began: one that waited for the lock past the request's expiry is refused.
/// </summary>
public sealed class QuorumApprovalTimeTests : IDisposable
{
    private static readonly DateTimeOffset T0 = new(2026, 11, 29, 12, 0, 0, TimeSpan.Zero);
    private readonly TestOfficers _officers = new("alice", "bob", "carol");
    private readonly FakeHsm _hsm = new();

    public void Dispose()
    {
        _officers.Dispose();
        _hsm.Dispose();
    }

    [Fact]
    public async Task Approval_WaitsForTheWriteLockPastTheExpiry_RefusedAsExpired_NothingRecorded()
    {
        var time = new FakeTimeProvider(T0);
        var (store, genesis, request) = await PendingRequestAsync(); // expires at T0 + 1 h

        // The store holds the call at its lock for two hours of the clock before applying it.
        var quorum = new QuorumService(new LockWaitingStore(store, () => time.Advance(TimeSpan.FromHours(2))), store, _hsm, time, new QuorumOptions { Genesis = genesis });
        var e = await Assert.ThrowsAsync<KmsException>(() => _officers.ApproveAsync(quorum, "alice", request, T0));

        Assert.Equal(KmsErrorCode.FailedPrecondition, e.Code);
        Assert.Contains("expired at", e.Message, StringComparison.Ordinal);
        Assert.Empty((await store.GetQuorumRequestAsync(request.Id, default))!.Approvals);
    }

    [Fact]
    public async Task Approval_OnANodeWhoseClockIsBehindTheDatabases_JudgedByTheDatabasesClock_RefusedAsExpired()
    {
        // PostgreSQL: the request expired an hour ago by the database's clock; this node's clock
        // says ten minutes have passed.
        var time = new FakeTimeProvider(T0);
        var (store, genesis, request) = await PendingRequestAsync(); // expires at T0 + 1 h
        var quorum = new QuorumService(store, store, _hsm, time, new QuorumOptions { Genesis = genesis });
        time.Advance(TimeSpan.FromMinutes(10));
        store.DatabaseTime = T0 + TimeSpan.FromHours(2);

        var e = await Assert.ThrowsAsync<KmsException>(() => _officers.ApproveAsync(quorum, "alice", request, T0 + TimeSpan.FromHours(2)));

        Assert.Equal(KmsErrorCode.FailedPrecondition, e.Code);
        Assert.Contains("expired at", e.Message, StringComparison.Ordinal);
        Assert.Empty((await store.GetQuorumRequestAsync(request.Id, default))!.Approvals);
    }

    [Fact]
    public async Task Approval_OnANodeWhoseClockWasSetBack_JudgedByTheTimeTheDeploymentRecordedAsSeen_RefusedAsExpired()
    {
        // SQLite, no database clock: the lifecycle recorded that two hours have passed, and this
        // node's clock was set back (or the VM restored) to ten minutes after the request was made.
        var time = new FakeTimeProvider(T0);
        var (store, genesis, request) = await PendingRequestAsync(); // expires at T0 + 1 h
        var quorum = new QuorumService(store, store, _hsm, time, new QuorumOptions { Genesis = genesis });
        time.Advance(TimeSpan.FromMinutes(10));

        // While the record is within the request's life, an approval counts.
        await RecordSeenAsync(store, T0 + TimeSpan.FromMinutes(30));
        Assert.Equal(1, (await _officers.ApproveAsync(quorum, "alice", request, T0 + TimeSpan.FromMinutes(30))).ValidApprovals);

        await RecordSeenAsync(store, T0 + TimeSpan.FromHours(2));
        var e = await Assert.ThrowsAsync<KmsException>(() => _officers.ApproveAsync(quorum, "bob", request, T0 + TimeSpan.FromHours(2)));

        Assert.Equal(KmsErrorCode.FailedPrecondition, e.Code);
        Assert.Contains("expired at 2026-11-29T13:00:00.000Z (now 2026-11-29T14:00:00.000Z", e.Message, StringComparison.Ordinal);
        Assert.Equal(QuorumRequestState.Pending, (await store.GetQuorumRequestAsync(request.Id, default))!.State);
        Assert.Single((await store.GetQuorumRequestAsync(request.Id, default))!.Approvals);
    }

    [Fact]
    public async Task Request_CreatedOnANodeWhoseClockIsBehind_LivesByTheDatabasesClock()
    {
        // Twenty minutes behind: counted from this node's clock, an hour's request would have
        // lost twenty minutes of its life by every other clock (and by the approval's).
        var time = new FakeTimeProvider(T0);
        var (store, genesis, _) = await PendingRequestAsync();
        store.DatabaseTime = T0 + TimeSpan.FromMinutes(20);
        var quorum = new QuorumService(store, store, _hsm, time, new QuorumOptions { Genesis = genesis });
        var officer = DomainHarness.SecurityOfficer;

        var request = await quorum.CreateAsync(officer, new CreateQuorumRequestCommand(null, QuorumOperation.ExportBackup) { Ttl = TimeSpan.FromHours(1) }, default);

        Assert.Equal(T0 + TimeSpan.FromMinutes(20), request.CreateTime);
        Assert.Equal(T0 + TimeSpan.FromMinutes(80), request.ExpireTime);
    }

    [Fact]
    public async Task Request_CreatedOnANodeWhoseClockWasSetBack_LivesItsTtlFromTheTimeRecordedAsSeen()
    {
        // SQLite, no database clock: the lifecycle recorded two hours seen pass, and this node's
        // clock was then set back two hours. Counted from it, an hour's request would be expired
        // from the start by the time its approvals are judged.
        var (store, genesis, _) = await PendingRequestAsync();
        var seen = T0 + TimeSpan.FromHours(2);
        await RecordSeenAsync(store, seen);
        var clock = new SplitClock(seen);
        clock.Step(-TimeSpan.FromHours(2));
        var quorum = new QuorumService(store, store, _hsm, clock, new QuorumOptions { Genesis = genesis });

        var request = await quorum.CreateAsync(Officer, new CreateQuorumRequestCommand(null, QuorumOperation.ExportBackup) { Ttl = TimeSpan.FromHours(1) }, default);

        Assert.Equal((seen, seen + TimeSpan.FromHours(1)), (request.CreateTime, request.ExpireTime));
        clock.Pass(TimeSpan.FromMinutes(10));
        Assert.Equal(1, (await _officers.ApproveAsync(quorum, "alice", request, seen)).ValidApprovals);
    }

    [Fact]
    public async Task Request_CreatedWhereTheDatabasesClockIsBehindTheRecord_LivesFromTheTimeRecordedAsSeen()
    {
        // PostgreSQL whose server's clock was set back an hour behind what the lifecycle recorded
        // as seen: the request's life starts no earlier than the record.
        var (store, genesis, _) = await PendingRequestAsync();
        var seen = T0 + TimeSpan.FromHours(2);
        await RecordSeenAsync(store, seen);
        store.DatabaseTime = T0 + TimeSpan.FromHours(1);
        var quorum = new QuorumService(store, store, _hsm, new SplitClock(T0), new QuorumOptions { Genesis = genesis });

        var request = await quorum.CreateAsync(Officer, new CreateQuorumRequestCommand(null, QuorumOperation.ExportBackup) { Ttl = TimeSpan.FromHours(1) }, default);

        Assert.Equal((seen, seen + TimeSpan.FromHours(1)), (request.CreateTime, request.ExpireTime));
    }

    private static Caller Officer => DomainHarness.SecurityOfficer;

    // What a lifecycle pass records: the time this deployment has seen pass.
    private static Task RecordSeenAsync(InMemoryStore store, DateTimeOffset seen) =>
        store.SetSettingAsync(LifecycleClock.Setting, seen.ToUnixTimeMilliseconds().ToString(System.Globalization.CultureInfo.InvariantCulture), default);

    // A store with the genesis officers and one pending request, created at T0, expiring at T0 + 1 h.
    private async Task<(InMemoryStore Store, OfficerSet Genesis, QuorumRequest Request)> PendingRequestAsync()
    {
        var store = new InMemoryStore();
        var genesis = OfficerSet.CreateGenesis(_officers.Select("alice", "bob", "carol"), 2);
        await store.AddGenesisOfficerSetAsync(genesis, default);
        var request = TestOfficers.Request(genesis, QuorumOperation.ExportBackup, [], T0) with { DomainKcv = _hsm.DomainKeyCheckValue };
        await store.CreateQuorumRequestAsync(request, default);
        return (store, genesis, request);
    }

    // Forwards everything; runs a step before an update is applied (as waiting for the lock would).
    private sealed class LockWaitingStore(IQuorumStore inner, Action beforeUpdate) : IQuorumStore
    {
        public Task<IReadOnlyList<OfficerSet>> ListOfficerSetsAsync(CancellationToken cancellationToken) => inner.ListOfficerSetsAsync(cancellationToken);

        public Task<bool> AddGenesisOfficerSetAsync(OfficerSet genesis, CancellationToken cancellationToken) => inner.AddGenesisOfficerSetAsync(genesis, cancellationToken);

        public Task CreateQuorumRequestAsync(QuorumRequest request, CancellationToken cancellationToken) => inner.CreateQuorumRequestAsync(request, cancellationToken);

        public Task<QuorumRequest?> GetQuorumRequestAsync(QuorumRequestId id, CancellationToken cancellationToken) => inner.GetQuorumRequestAsync(id, cancellationToken);

        public Task<IReadOnlyList<QuorumRequest>> ListQuorumRequestsAsync(TenantId? tenant, string? afterId, int limit, CancellationToken cancellationToken) =>
            inner.ListQuorumRequestsAsync(tenant, afterId, limit, cancellationToken);

        public Task<QuorumRequest?> UpdateQuorumRequestAsync(QuorumRequestId id, Func<QuorumRequest, OfficerSet?, QuorumChange> decide, CancellationToken cancellationToken)
        {
            beforeUpdate();
            return inner.UpdateQuorumRequestAsync(id, decide, cancellationToken);
        }
    }
}
