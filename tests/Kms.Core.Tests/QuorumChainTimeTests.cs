using Kms.Core.Errors;
using Kms.Core.Quorum;
using Kms.Core.Services;
using Kms.Testing;
using Kms.Testing.Fakes;
using Microsoft.Extensions.Time.Testing;

namespace Kms.Core.Tests;

/// <summary>
/// An approval is only as good as the time it was made. Whoever can write the database (or edit an
/// approval bundle) must not assemble an officer change out of approvals made after its request
/// expired — approvals the server refused — nor make a late approval look timely by editing the
/// unsigned time the server recorded.
/// </summary>
public sealed class QuorumChainTimeTests : IDisposable
{
    private static readonly DateTimeOffset T0 = new(2026, 11, 29, 12, 0, 0, TimeSpan.Zero);
    private readonly TestOfficers _officers = new("alice", "bob", "carol", "mallory");
    private static readonly Caller SecurityOfficer = DomainHarness.SecurityOfficer;
    private readonly FakeHsm _hsm = new();

    public void Dispose()
    {
        _officers.Dispose();
        _hsm.Dispose();
    }

    // The officers were asked to let mallory in (alice and mallory, threshold 1). Alice approved in
    // time; the request expired (1 hour); bob signed two hours later, which the server refused as
    // expired. Whoever can write the database kept bob's signature, recorded it as made at +20
    // minutes, marked the request executed and appended the set.
    [Fact]
    public async Task OfficerChange_AssembledInTheDatabaseFromAnUntimedApprovalMadeAfterItsRequestExpired_Refused()
    {
        var (store, genesis, quorum) = await DeploymentAsync();
        var next = genesis.Successor(_officers.Select("alice", "mallory"), 1);
        var request = TestOfficers.Request(genesis, QuorumOperation.ChangeOfficers, next.ChangeParameters(), T0) with { ProposedOfficers = next };
        var forged = request with
        {
            Approvals =
            [
                new QuorumApproval(_officers["alice"].Fingerprint, _officers.Sign("alice", request), T0.AddMinutes(10)),
                new QuorumApproval(_officers["bob"].Fingerprint, _officers.Sign("bob", request), T0.AddMinutes(20)),
            ],
            State = QuorumRequestState.Executed,
            ExecuteTime = T0.AddMinutes(20),
        };
        store.PlantOfficerSet(next.WithChange(forged));

        var refused = await Assert.ThrowsAsync<KmsException>(() => quorum.GetOfficerSetAsync(default));

        Assert.Equal(KmsErrorCode.FailedPrecondition, refused.Code);
        Assert.Contains("officer set 1 is approved by 0 officers of set 0", refused.Message, StringComparison.Ordinal);
    }

    // The same change carried to the offline ceremony in an approval bundle: mallory, alone the
    // threshold of the forged set, approves a domain-key restore.
    [Fact]
    public void ApprovalBundle_WhoseChainHoldsAChangeAssembledFromAnUntimedLateApproval_Refused()
    {
        var genesis = OfficerSet.CreateDeploymentGenesis(_officers.Select("alice", "bob", "carol"), 2);
        var next = genesis.Successor(_officers.Select("alice", "mallory"), 1);
        var change = TestOfficers.Request(genesis, QuorumOperation.ChangeOfficers, next.ChangeParameters(), T0) with { ProposedOfficers = next };
        change = change with
        {
            Approvals =
            [
                new QuorumApproval(_officers["alice"].Fingerprint, _officers.Sign("alice", change), T0.AddMinutes(10)),
                new QuorumApproval(_officers["bob"].Fingerprint, _officers.Sign("bob", change), T0.AddMinutes(20)),
            ],
            State = QuorumRequestState.Executed,
            ExecuteTime = T0.AddMinutes(20),
        };
        var forgedSet = next.WithChange(change);
        var restore = TestOfficers.Request(forgedSet, QuorumOperation.RestoreDomain, [KeyValuePair.Create("token-label", "kms-prod-b")], T0.AddHours(3));
        restore = restore with
        {
            Approvals = [_officers.Approve("mallory", restore, T0.AddHours(3))],
            State = QuorumRequestState.Approved,
            ExecuteTime = T0.AddHours(3),
        };
        var bundle = ApprovalBundle.Parse(new ApprovalBundle(restore, [genesis, forgedSet]).Serialize());

        var refused = Assert.Throws<KmsException>(() => bundle.Verify(genesis, QuorumOperation.RestoreDomain, restore.DomainKcv, T0.AddHours(3).AddMinutes(1)));

        Assert.Equal(KmsErrorCode.PermissionDenied, refused.Code);
        Assert.Contains("officer set 1 is approved by 0 officers of set 0", refused.Message, StringComparison.Ordinal);
    }

    // Today's approvals sign their time: bob's, signed two hours after he was asked (an hour after
    // the expiry), never counts — not with the recorded time edited, and editing the signed time
    // breaks the signature.
    [Fact]
    public async Task OfficerChange_FromATimedApprovalSignedAfterItsRequestExpired_RefusedWhicheverTimeIsEdited()
    {
        var (store, genesis, quorum) = await DeploymentAsync();
        var next = genesis.Successor(_officers.Select("alice", "mallory"), 1);
        var request = TestOfficers.Request(genesis, QuorumOperation.ChangeOfficers, next.ChangeParameters(), T0) with { ProposedOfficers = next };
        var alice = _officers.Approve("alice", request, T0.AddMinutes(10));
        var late = _officers.Approve("bob", request, T0.AddHours(2));

        var recordEdited = late with { ApproveTime = T0.AddMinutes(20) };
        var signedTimeEdited = recordEdited with { SignTime = T0.AddMinutes(20) };
        foreach (var bob in new[] { recordEdited, signedTimeEdited })
        {
            var chain = new[] { genesis, next.WithChange(request with { Approvals = [alice, bob], State = QuorumRequestState.Executed, ExecuteTime = T0.AddMinutes(20) }) };
            var refused = Assert.Throws<KmsException>(() => OfficerChain.Verify(chain, genesis));
            Assert.Contains("officer set 1 is approved by 1 officers of set 0 signed before its request expired at 2026-11-29T13:00:00.000Z, which needs 2", refused.Message, StringComparison.Ordinal);
        }

        // Through the server's verification as well; bob's approval signed in time counts.
        store.PlantOfficerSet(next.WithChange(request with { Approvals = [alice, recordEdited], State = QuorumRequestState.Executed }));
        Assert.Equal(KmsErrorCode.FailedPrecondition, (await Assert.ThrowsAsync<KmsException>(() => quorum.GetOfficerSetAsync(default))).Code);
        var inTime = _officers.Approve("bob", request, T0.AddMinutes(59));
        Assert.Equal(next.Hash, OfficerChain.Verify([genesis, next.WithChange(request with { Approvals = [alice, inTime], State = QuorumRequestState.Executed })], genesis).Hash);
    }

    // Approvals from before approvals were timed: their time is the server's unsigned record, so they
    // count only in sets the node recorded as verified (quorum/officer-head) — those it verified before
    // the upgrade. A node that has recorded none (a new data directory) refuses such a chain, saying
    // why; later changes, timed, chain on top of the vouched-for ones.
    [Fact]
    public async Task OfficerChain_UntimedApprovals_CountOnlyInSetsThisNodeRecordedAsVerified()
    {
        var store = new InMemoryStore();
        var genesis = OfficerSet.CreateDeploymentGenesis(_officers.Select("alice", "bob", "carol"), 2);
        var legacy = Untimed(genesis, _officers.Select("alice", "bob", "carol", "mallory"), 2, "alice", "bob");
        var timed = _officers.Change(legacy, _officers.Select("alice", "bob", "carol"), 2, T0.AddDays(1), "alice", "carol");
        await store.AddGenesisOfficerSetAsync(genesis, default);
        store.PlantOfficerSet(legacy);

        var fresh = Quorum(store, genesis, new MemoryHeadRecord());
        var refused = await Assert.ThrowsAsync<KmsException>(() => fresh.GetOfficerSetAsync(default));
        Assert.Equal(KmsErrorCode.FailedPrecondition, refused.Code);
        Assert.Contains("officer set 1 is approved by 0 officers of set 0", refused.Message, StringComparison.Ordinal);
        Assert.Contains("2 of its approvals carry no signed time", refused.Message, StringComparison.Ordinal);
        Assert.Equal(KmsErrorCode.FailedPrecondition, (await Assert.ThrowsAsync<KmsException>(() => Quorum(store, genesis, null).GetOfficerSetAsync(default))).Code);

        // The node that verified set 1 before the upgrade vouches for it, and verifies timed sets after it.
        var upgraded = new MemoryHeadRecord { Head = new OfficerHead(1, legacy.Hash) };
        Assert.Equal(1, (await Quorum(store, genesis, upgraded).GetOfficerSetAsync(default)).Set.Sequence);
        store.PlantOfficerSet(timed);
        Assert.Equal(2, (await Quorum(store, genesis, upgraded).GetOfficerSetAsync(default)).Set.Sequence);
        Assert.Equal(new OfficerHead(2, timed.Hash), upgraded.Head);

        // A record of set 0 vouches for nothing after it.
        var before = new MemoryHeadRecord { Head = new OfficerHead(0, genesis.Hash) };
        Assert.Equal(KmsErrorCode.FailedPrecondition, (await Assert.ThrowsAsync<KmsException>(() => Quorum(store, genesis, before).GetOfficerSetAsync(default))).Code);
        Assert.Same(timed, OfficerChain.Verify([genesis, legacy, timed], genesis, untimedApprovalsThrough: 1));
        Assert.Throws<KmsException>(() => OfficerChain.Verify([genesis, Untimed(genesis, _officers.Select("alice"), 1, "alice", "bob")], genesis));
    }

    // Kms:Quorum:MaxSignTimeSkew: a deployment whose officers' machines keep looser time widens the
    // margin; a signed time 7 minutes off is refused under the default 5 and taken under 10.
    [Theory]
    [InlineData(null, false)]
    [InlineData(10, true)]
    public async Task Approve_SignedTimeSevenMinutesOff_TakenOnlyUnderAWiderConfiguredSkew(int? skewMinutes, bool taken)
    {
        var store = new InMemoryStore();
        var time = new FakeTimeProvider(T0);
        var genesis = OfficerSet.CreateDeploymentGenesis(_officers.Select("alice", "bob", "carol"), 2);
        var options = skewMinutes is { } minutes ? new QuorumOptions { Genesis = genesis, MaxSignTimeSkew = TimeSpan.FromMinutes(minutes) } : new QuorumOptions { Genesis = genesis };
        var (quorum, change) = await ChangeOfficersAsync(new QuorumService(store, store, _hsm, time, options), 1, "alice", "mallory");
        time.Advance(TimeSpan.FromMinutes(58));
        var signed = T0.AddMinutes(51);

        Task<QuorumApprovalResult> ApproveAsync() => quorum.ApproveAsync(change.Name, _officers["alice"].Fingerprint, _officers.Sign("alice", change, signed), signed, default);
        if (taken)
        {
            Assert.Equal(1, (await ApproveAsync()).ValidApprovals);
        }
        else
        {
            Assert.Contains("more than 5 minutes apart", (await Assert.ThrowsAsync<KmsException>(ApproveAsync)).Message, StringComparison.Ordinal);
            Assert.Empty((await store.GetQuorumRequestAsync(change.Id, default))!.Approvals);
        }
    }

    // The server checks the time an approval says it was signed against its trusted time and the
    // expiry, and takes a CHANGE_OFFICERS approval only with one (as every other operation's but
    // DESTROY_KEY_VERSION_NOW's).
    [Fact]
    public async Task Approve_SignedTime_NearTheTrustedTimeAndBeforeTheExpiry_RequiredForAnOfficerChange()
    {
        var store = new InMemoryStore();
        var time = new FakeTimeProvider(T0);
        var genesis = OfficerSet.CreateDeploymentGenesis(_officers.Select("alice", "bob", "carol"), 2);
        var (quorum, change) = await ChangeOfficersAsync(new QuorumService(store, store, _hsm, time, new QuorumOptions { Genesis = genesis }), 1, "alice", "mallory");

        async Task<KmsException> RefusedAsync(string name, DateTimeOffset? signed) =>
            await Assert.ThrowsAsync<KmsException>(() => quorum.ApproveAsync(change.Name, _officers[name].Fingerprint,
                signed is { } t ? _officers.Sign(name, change, t) : _officers.Sign(name, change), signed, default));

        Assert.Contains("must carry the time it was signed", (await RefusedAsync("alice", null)).Message, StringComparison.Ordinal);
        time.Advance(TimeSpan.FromMinutes(58));
        Assert.Contains("more than 5 minutes apart", (await RefusedAsync("alice", T0.AddMinutes(20))).Message, StringComparison.Ordinal);
        Assert.Contains("this approval was signed at 2026-11-29T13:01:00.000Z", (await RefusedAsync("alice", T0.AddMinutes(61))).Message, StringComparison.Ordinal);
        Assert.Empty((await store.GetQuorumRequestAsync(change.Id, default))!.Approvals);

        // An edited time fails the signature: it covers the time it says.
        var edited = await Assert.ThrowsAsync<KmsException>(() => quorum.ApproveAsync(change.Name, _officers["alice"].Fingerprint, _officers.Sign("alice", change, T0.AddMinutes(57)), T0.AddMinutes(56), default));
        Assert.Equal(KmsErrorCode.PermissionDenied, edited.Code);

        var signed = T0.AddMinutes(57).AddTicks(1234);
        Assert.Equal(1, (await quorum.ApproveAsync(change.Name, _officers["alice"].Fingerprint, _officers.Sign("alice", change, QuorumRendering.ToMilliseconds(signed)), signed, default)).ValidApprovals);
        Assert.Equal(T0.AddMinutes(57), (await store.GetQuorumRequestAsync(change.Id, default))!.Approvals.Single().SignTime);
        Assert.True((await quorum.ApproveAsync(change.Name, _officers["bob"].Fingerprint, _officers.Sign("bob", change, T0.AddMinutes(59)), T0.AddMinutes(59), default)).Executed);

        // A node without a record (a fresh data directory) verifies the timed change.
        Assert.Equal(1, (await Quorum(store, genesis, new MemoryHeadRecord()).GetOfficerSetAsync(default)).Set.Sequence);

        // Nor is an untimed approval of any other operation but DESTROY_KEY_VERSION_NOW (QuorumUntimedApprovalTests).
        var backup = await quorum.CreateAsync(SecurityOfficer, new CreateQuorumRequestCommand(null, QuorumOperation.ExportBackup), default);
        var untimed = await Assert.ThrowsAsync<KmsException>(() => quorum.ApproveAsync(backup.Name, _officers["alice"].Fingerprint, _officers.Sign("alice", backup), default));
        Assert.Contains("(EXPORT_BACKUP) must carry the time it was signed", untimed.Message, StringComparison.Ordinal);
    }

    // The node's record vouches for the untimed approvals of the sets up to it, so it must name
    // only sets the node verified. A database writer's trigger adds, in the transaction that
    // executes an honest officer change, a set after it that untimed approvals install (mallory
    // alone); the node records the set its execution appended, and refuses the one after.
    [Fact]
    public async Task OfficerChange_Executed_RecordsTheSetItAppended_NotASetAddedAfterItInTheDatabase()
    {
        var inner = new InMemoryStore();
        var time = new FakeTimeProvider(T0);
        var genesis = OfficerSet.CreateDeploymentGenesis(_officers.Select("alice", "bob", "carol"), 2);
        var store = new TriggerStore(inner, appended => inner.PlantOfficerSet(Untimed(appended, _officers.Select("mallory"), 1, "alice", "bob")));
        var record = new MemoryHeadRecord();
        var (quorum, change) = await ChangeOfficersAsync(new QuorumService(store, inner, _hsm, time, new QuorumOptions { Genesis = genesis, HeadRecord = record }), 2, "alice", "bob", "carol");
        await quorum.ApproveAsync(change.Name, _officers["alice"].Fingerprint, _officers.Sign("alice", change, T0), T0, default);
        Assert.True((await quorum.ApproveAsync(change.Name, _officers["bob"].Fingerprint, _officers.Sign("bob", change, T0), T0, default)).Executed);
        Assert.Equal(3, (await inner.ListOfficerSetsAsync(default)).Count);

        Assert.Equal(1, record.Head!.Sequence);
        var refused = await Assert.ThrowsAsync<KmsException>(() => quorum.GetOfficerSetAsync(default));
        Assert.Equal(KmsErrorCode.FailedPrecondition, refused.Code);
        Assert.Contains("officer set 2 is approved by 0 officers of set 1", refused.Message, StringComparison.Ordinal);
    }

    // Execution counts an officer change's approvals as the chain verifier will: a timed approval
    // signed after the expiry, put in the database beside an honest one, does not make up the
    // threshold (it would execute a set the chain then refuses, and stop every quorum operation).
    [Fact]
    public async Task OfficerChange_ALateApprovalPlantedInTheDatabase_DoesNotCountTowardsExecution()
    {
        var store = new InMemoryStore();
        var time = new FakeTimeProvider(T0);
        var genesis = OfficerSet.CreateDeploymentGenesis(_officers.Select("alice", "bob", "carol"), 2);
        var (quorum, change) = await ChangeOfficersAsync(new QuorumService(store, store, _hsm, time, new QuorumOptions { Genesis = genesis, HeadRecord = new MemoryHeadRecord() }), 2, "alice", "bob", "mallory");
        var stored = (await store.GetQuorumRequestAsync(change.Id, default))!;
        var late = _officers.Approve("bob", stored, T0.AddHours(2)) with { ApproveTime = T0.AddMinutes(10) };
        await store.UpdateQuorumRequestAsync(change.Id, (request, _) => new Kms.Core.Ports.QuorumChange(request with { Approvals = [.. request.Approvals, late] }) { AddedApproval = late }, default);

        time.Advance(TimeSpan.FromMinutes(30));
        var result = await quorum.ApproveAsync(change.Name, _officers["alice"].Fingerprint, _officers.Sign("alice", change, T0.AddMinutes(30)), T0.AddMinutes(30), default);

        Assert.False(result.Executed);
        Assert.Equal(1, result.ValidApprovals);
        Assert.Single(await store.ListOfficerSetsAsync(default));
        Assert.Equal(0, (await quorum.GetOfficerSetAsync(default)).Set.Sequence);
    }

    /// <summary>A store with a database writer's trigger: after a transaction that appends an officer set, <c>trigger</c> runs with that set.</summary>
    private sealed class TriggerStore(InMemoryStore inner, Action<OfficerSet> trigger) : Kms.Core.Ports.IQuorumStore
    {
        public Task<IReadOnlyList<OfficerSet>> ListOfficerSetsAsync(CancellationToken cancellationToken) => inner.ListOfficerSetsAsync(cancellationToken);

        public Task<bool> AddGenesisOfficerSetAsync(OfficerSet genesis, CancellationToken cancellationToken) => inner.AddGenesisOfficerSetAsync(genesis, cancellationToken);

        public Task CreateQuorumRequestAsync(QuorumRequest request, CancellationToken cancellationToken) => inner.CreateQuorumRequestAsync(request, cancellationToken);

        public Task<QuorumRequest?> GetQuorumRequestAsync(QuorumRequestId id, CancellationToken cancellationToken) => inner.GetQuorumRequestAsync(id, cancellationToken);

        public Task<IReadOnlyList<QuorumRequest>> ListQuorumRequestsAsync(Kms.Core.Names.TenantId? tenant, string? afterId, int limit, CancellationToken cancellationToken) =>
            inner.ListQuorumRequestsAsync(tenant, afterId, limit, cancellationToken);

        public async Task<QuorumRequest?> UpdateQuorumRequestAsync(QuorumRequestId id, Func<QuorumRequest, OfficerSet?, Kms.Core.Ports.QuorumChange> decide, CancellationToken cancellationToken)
        {
            OfficerSet? appended = null;
            var result = await inner.UpdateQuorumRequestAsync(id, (request, head) =>
            {
                var change = decide(request, head);
                appended = change.AppendedOfficerSet;
                return change;
            }, cancellationToken);
            if (appended is not null)
            {
                trigger(appended);
            }

            return result;
        }
    }

    // The bundle's own request: an approval signed after the expiry counts for nothing, whatever time
    // the server is said to have recorded; a chain's untimed change counts where the ceremony's data
    // directory vouches for it.
    [Fact]
    public void ApprovalBundle_ApprovalSignedAfterTheExpiry_NotCounted_UntimedChangeCountsWhereVouchedFor()
    {
        var genesis = OfficerSet.CreateDeploymentGenesis(_officers.Select("alice", "bob", "carol"), 2);
        var restore = TestOfficers.Request(genesis, QuorumOperation.RestoreDomain, [KeyValuePair.Create("token-label", "kms-prod-b")], T0);
        restore = restore with
        {
            Approvals = [_officers.Approve("alice", restore, T0.AddMinutes(5)), _officers.Approve("bob", restore, T0.AddHours(2)) with { ApproveTime = T0.AddMinutes(6) }],
            State = QuorumRequestState.Approved,
            ExecuteTime = T0.AddMinutes(6),
        };
        var bundle = ApprovalBundle.Parse(new ApprovalBundle(restore, [genesis]).Serialize());
        Assert.Contains(ApprovalBundle.Format, new ApprovalBundle(restore, [genesis]).Serialize(), StringComparison.Ordinal);
        Assert.Equal(T0.AddHours(2), bundle.Request.Approvals[1].SignTime);
        var refused = Assert.Throws<KmsException>(() => bundle.Verify(genesis, QuorumOperation.RestoreDomain, restore.DomainKcv, T0.AddMinutes(30)));
        Assert.Contains("1 distinct officers of set 0", refused.Message, StringComparison.Ordinal);

        var legacy = Untimed(genesis, _officers.Select("alice", "bob", "mallory"), 2, "alice", "bob");
        var onLegacy = TestOfficers.Request(legacy, QuorumOperation.RestoreDomain, [KeyValuePair.Create("token-label", "kms-prod-b")], T0.AddDays(1));
        onLegacy = onLegacy with
        {
            Approvals = [_officers.ApproveUntimed("bob", onLegacy, T0.AddDays(1)), _officers.Approve("mallory", onLegacy, T0.AddDays(1))],
            State = QuorumRequestState.Approved,
        };
        var old = ApprovalBundle.Parse(new ApprovalBundle(onLegacy, [genesis, legacy]).Serialize().Replace(ApprovalBundle.Format, ApprovalBundle.UntimedFormat, StringComparison.Ordinal));
        Assert.Throws<KmsException>(() => old.Verify(genesis, QuorumOperation.RestoreDomain, onLegacy.DomainKcv, T0.AddDays(1)));

        // The chain's untimed change is vouched for; the restore's own untimed approval (bob's) is
        // not: an approval of RESTORE_DOMAIN must carry its signed time, vouched-for chain or not.
        var untimed = Assert.Throws<KmsException>(() => old.Verify(genesis, QuorumOperation.RestoreDomain, onLegacy.DomainKcv, T0.AddDays(1), untimedApprovalsThrough: 1));
        Assert.Equal(KmsErrorCode.FailedPrecondition, untimed.Code);
        Assert.Contains("1 more signed it without a signed time", untimed.Message, StringComparison.Ordinal);
        var timed = onLegacy with { Approvals = [_officers.Approve("bob", onLegacy, T0.AddDays(1)), onLegacy.Approvals[1]] };
        var read = ApprovalBundle.Parse(new ApprovalBundle(timed, [genesis, legacy]).Serialize());
        Assert.Throws<KmsException>(() => read.Verify(genesis, QuorumOperation.RestoreDomain, timed.DomainKcv, T0.AddDays(1)));
        Assert.Equal(2, read.Verify(genesis, QuorumOperation.RestoreDomain, timed.DomainKcv, T0.AddDays(1), untimedApprovalsThrough: 1).Approvers.Count);
    }

    // A deployment's quorum service, started, and a CHANGE_OFFICERS request of it (one hour to live).
    private async Task<(QuorumService Quorum, QuorumRequest Change)> ChangeOfficersAsync(QuorumService quorum, int threshold, params string[] newOfficers)
    {
        await quorum.InitializeAsync(default);
        var change = await quorum.CreateAsync(SecurityOfficer, new CreateQuorumRequestCommand(null, QuorumOperation.ChangeOfficers)
        {
            NewOfficers = _officers.Select(newOfficers),
            NewThreshold = threshold,
            Ttl = TimeSpan.FromHours(1),
        }, default);
        return (quorum, change);
    }

    // A set installed by approvals without a signed time, made in time (before approvals were timed).
    private OfficerSet Untimed(OfficerSet set, IReadOnlyList<Officer> officers, int threshold, params string[] approvers)
    {
        var next = set.Successor(officers, threshold);
        var request = TestOfficers.Request(set, QuorumOperation.ChangeOfficers, next.ChangeParameters(), T0) with { ProposedOfficers = next };
        return next.WithChange(request with
        {
            Approvals = [.. approvers.Select(a => _officers.ApproveUntimed(a, request, T0.AddMinutes(10)))],
            State = QuorumRequestState.Executed,
            ExecuteTime = T0.AddMinutes(10),
        });
    }

    private QuorumService Quorum(InMemoryStore store, OfficerSet genesis, IOfficerHeadRecord? record) =>
        new(store, store, _hsm, new FakeTimeProvider(T0.AddDays(2)), new QuorumOptions { Genesis = genesis, HeadRecord = record });

    private async Task<(InMemoryStore Store, OfficerSet Genesis, QuorumService Quorum)> DeploymentAsync()
    {
        var store = new InMemoryStore();
        var genesis = OfficerSet.CreateDeploymentGenesis(_officers.Select("alice", "bob", "carol"), 2);
        var quorum = new QuorumService(store, store, _hsm, new FakeTimeProvider(T0.AddHours(3)), new QuorumOptions { Genesis = genesis, HeadRecord = new MemoryHeadRecord() });
        Assert.Equal(0, (await quorum.InitializeAsync(default))!.Sequence);
        return (store, genesis, quorum);
    }

    /// <summary>A node's record of the newest officer set it verified, in memory.</summary>
    private sealed class MemoryHeadRecord : IOfficerHeadRecord
    {
        public OfficerHead? Head { get; set; }

        public string Location => "memory";

        public OfficerHead? Read() => Head;

        public void Advance(OfficerHead head)
        {
            if (Head is null || head.Sequence > Head.Sequence)
            {
                Head = head;
            }
        }
    }
}
