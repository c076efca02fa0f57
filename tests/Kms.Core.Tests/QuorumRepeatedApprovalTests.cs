using Kms.Core.Access;
using Kms.Core.Audit;
using Kms.Core.Errors;
using Kms.Core.Quorum;
using Kms.Core.Services;
using Kms.Testing;
using Kms.Testing.Fakes;
using Microsoft.Extensions.Time.Testing;

namespace Kms.Core.Tests;

/// <summary>
/// An approval sent again with the same officer key and the same signature bytes (a retry whose
/// first answer was lost) is answered with the request as it is now and counts once; any other
/// second approval by the same officer is refused as before.
/// </summary>
public sealed class QuorumRepeatedApprovalTests : IDisposable
{
    private static readonly DateTimeOffset T0 = new(2026, 11, 29, 12, 0, 0, TimeSpan.Zero);
    private static readonly Caller Officer = DomainHarness.SecurityOfficer;
    private readonly TestOfficers _officers = new("alice", "bob", "carol", "dave");
    private readonly FakeHsm _hsm = new();
    private readonly FakeTimeProvider _time = new(T0);
    private readonly InMemoryStore _store = new();
    private QuorumService _quorum = null!;

    public void Dispose()
    {
        _officers.Dispose();
        _hsm.Dispose();
    }

    [Fact]
    public async Task Approve_SameApprovalAgain_AnsweredWithTheRequestAsItIs_CountedOnce()
    {
        var request = await PendingAsync(QuorumOperation.ExportBackup);
        var signature = Sign("alice", request);

        var first = await ApproveAsync("alice", request, signature);
        var again = await ApproveAsync("alice", request, signature);

        Assert.False(first.Repeated);
        Assert.True(again.Repeated);
        Assert.Equal((1, 2, false, QuorumRequestState.Pending), (again.ValidApprovals, again.Threshold, again.Executed, again.Request.State));
        Assert.Single((await _store.GetQuorumRequestAsync(request.Id, default))!.Approvals);
    }

    [Fact]
    public async Task Approve_SameOfficerWithAnotherSignature_AlreadyExists_CountedOnce()
    {
        // ECDSA signs anew each time: a second signature is a second approval, not a retry.
        var request = await PendingAsync(QuorumOperation.ExportBackup);
        await ApproveAsync("alice", request, Sign("alice", request));

        var e = await Assert.ThrowsAsync<KmsException>(() => ApproveAsync("alice", request, Sign("alice", request)));

        Assert.Equal(KmsErrorCode.AlreadyExists, e.Code);
        var stored = (await _store.GetQuorumRequestAsync(request.Id, default))!;
        Assert.Equal((QuorumRequestState.Pending, 1), (stored.State, stored.Approvals.Count));
    }

    [Fact]
    public async Task Approve_TheApprovalThatExecutedSentAgain_AnsweredExecuted_NothingRunsTwice()
    {
        var request = await PendingAsync(QuorumOperation.ExportBackup);
        var alice = Sign("alice", request);
        var bob = Sign("bob", request);
        await ApproveAsync("alice", request, alice);
        Assert.True((await ApproveAsync("bob", request, bob)).Executed);

        var last = await ApproveAsync("bob", request, bob);
        var earlier = await ApproveAsync("alice", request, alice);

        Assert.Equal((true, true, 2, QuorumRequestState.Executed), (last.Repeated, last.Executed, last.ValidApprovals, last.Request.State));
        Assert.Equal((true, false, 2, QuorumRequestState.Executed), (earlier.Repeated, earlier.Executed, earlier.ValidApprovals, earlier.Request.State));
        Assert.Equal(2, (await _store.GetQuorumRequestAsync(request.Id, default))!.Approvals.Count);
        var events = await _store.ListAuditEventsAsync(new AuditQuery(), default);
        Assert.Single(events, e => e.Entry.Operation == "quorum/EXPORT_BACKUP");

        // A third officer, who did not approve, is still refused: the request executes once.
        var carol = await Assert.ThrowsAsync<KmsException>(() => ApproveAsync("carol", request, Sign("carol", request)));
        Assert.Equal(KmsErrorCode.FailedPrecondition, carol.Code);
    }

    [Fact]
    public async Task Approve_TheApprovalThatChangedTheOfficersSentAgain_AnsweredExecuted_TheChainGrowsOnce()
    {
        // bob leaves with the change his approval executed: his repeat is checked in the set the
        // request was made for, not in the new head.
        await StartAsync();
        var request = await _quorum.CreateAsync(Officer, new CreateQuorumRequestCommand(null, QuorumOperation.ChangeOfficers)
        {
            NewOfficers = _officers.Select("alice", "carol", "dave"),
            NewThreshold = 2,
        }, default);
        // A CHANGE_OFFICERS approval carries the time it was signed (the officer chain judges it by it).
        var now = _time.GetUtcNow();
        var bob = _officers.Sign("bob", request, now);
        await _quorum.ApproveAsync(request.Name, _officers["alice"].Fingerprint, _officers.Sign("alice", request, now), now, default);
        Assert.True((await _quorum.ApproveAsync(request.Name, _officers["bob"].Fingerprint, bob, now, default)).Executed);

        var again = await _quorum.ApproveAsync(request.Name, _officers["bob"].Fingerprint, bob, now, default);

        Assert.Equal((true, true, 2, 2, QuorumRequestState.Executed), (again.Repeated, again.Executed, again.ValidApprovals, again.Threshold, again.Request.State));
        var (head, length) = await _quorum.GetOfficerSetAsync(default);
        Assert.Equal((1L, 2), (head.Sequence, length));
        Assert.Null(head.Find(_officers["bob"].Fingerprint));
    }

    [Fact]
    public async Task Approve_SameApprovalAgainAfterTheRequestExpired_RefusedAsExpired()
    {
        var request = await PendingAsync(QuorumOperation.ExportBackup);
        var signature = Sign("alice", request);
        await ApproveAsync("alice", request, signature);
        _time.Advance(TimeSpan.FromHours(1));

        var e = await Assert.ThrowsAsync<KmsException>(() => ApproveAsync("alice", request, signature));

        Assert.Equal(KmsErrorCode.FailedPrecondition, e.Code);
        Assert.Contains("expired at", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Approve_AnotherOfficersRecordedSignatureUnderOwnKey_PermissionDenied()
    {
        // A repeat is matched by officer key and signature together.
        var request = await PendingAsync(QuorumOperation.ExportBackup);
        var alice = Sign("alice", request);
        await ApproveAsync("alice", request, alice);

        var e = await Assert.ThrowsAsync<KmsException>(() => ApproveAsync("bob", request, alice));

        Assert.Equal(KmsErrorCode.PermissionDenied, e.Code);
        Assert.Single((await _store.GetQuorumRequestAsync(request.Id, default))!.Approvals);
    }

    // As kms approves today: over the approval statement, signed now by the (fake) clock, and sent with that time.
    private byte[] Sign(string officer, QuorumRequest request) => _officers.Sign(officer, request, _time.GetUtcNow());

    private Task<QuorumApprovalResult> ApproveAsync(string officer, QuorumRequest request, byte[] signature) =>
        _quorum.ApproveAsync(request.Name, _officers[officer].Fingerprint, signature, _time.GetUtcNow(), default);

    // alice, bob and carol, 2 of 3; a request made now, living one hour.
    private async Task<QuorumRequest> PendingAsync(QuorumOperation operation)
    {
        await StartAsync();
        return await _quorum.CreateAsync(Officer, new CreateQuorumRequestCommand(null, operation) { Ttl = TimeSpan.FromHours(1) }, default);
    }

    private async Task StartAsync()
    {
        var genesis = OfficerSet.CreateGenesis(_officers.Select("alice", "bob", "carol"), 2);
        _quorum = new QuorumService(_store, _store, _hsm, _time, new QuorumOptions { Genesis = genesis });
        await _quorum.InitializeAsync(default);
    }
}
