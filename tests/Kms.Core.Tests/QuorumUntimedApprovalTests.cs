using Kms.Core.Errors;
using Kms.Core.Names;
using Kms.Core.Quorum;
using Kms.Core.Services;
using Kms.Testing;
using Kms.Testing.Fakes;
using Microsoft.Extensions.Time.Testing;

namespace Kms.Core.Tests;

/// <summary>
/// An approval without a signed time (<c>kms quorum approval v1</c>, an older CLI's) has no time but
/// the server's unsigned record: kept, it can be sent again at any time in its request's life (up
/// to 7 days), after a restore brought the request back, say. Only DESTROY_KEY_VERSION_NOW, whose
/// late execution is what the officers approved anyway, still takes one; every other operation
/// refuses it, records nothing, and does not count one recorded before.
/// </summary>
public sealed class QuorumUntimedApprovalTests : IDisposable
{
    private static readonly DateTimeOffset T0 = new(2026, 11, 29, 12, 0, 0, TimeSpan.Zero);
    private readonly TestOfficers _officers = new("alice", "bob", "carol");
    private readonly FakeHsm _hsm = new();
    private readonly FakeTimeProvider _time = new(T0);
    private readonly InMemoryStore _store = new();
    private QuorumService _quorum = null!;

    public void Dispose()
    {
        _officers.Dispose();
        _hsm.Dispose();
    }

    public static TheoryData<QuorumOperation> RefusingOperations() =>
        [QuorumOperation.ExportBackup, QuorumOperation.RecoverDeploymentAdmin, QuorumOperation.RestoreDomain, QuorumOperation.RotateDomainKey];

    [Theory]
    [MemberData(nameof(RefusingOperations))]
    public async Task Approve_WithoutASignedTime_AnyOperationButDestroyKeyVersionNow_FailedPrecondition_NothingRecorded(QuorumOperation operation)
    {
        var request = await PendingAsync(operation);

        var e = await Assert.ThrowsAsync<KmsException>(() => _quorum.ApproveAsync(request.Name, _officers["alice"].Fingerprint, _officers.Sign("alice", request), default));

        Assert.Equal(KmsErrorCode.FailedPrecondition, e.Code);
        Assert.Contains($"an approval of {request.Name} ({QuorumOperations.NameOf(operation)}) must carry the time it was signed", e.Message, StringComparison.Ordinal);
        Assert.Contains("approve with a kms CLI or SDK that signs it", e.Message, StringComparison.Ordinal);
        var stored = (await _store.GetQuorumRequestAsync(request.Id, default))!;
        Assert.Equal((QuorumRequestState.Pending, 0), (stored.State, stored.Approvals.Count));

        // The same officer's timed approval is taken.
        Assert.Equal(1, (await _officers.ApproveAsync(_quorum, "alice", request, _time.GetUtcNow())).ValidApprovals);
    }

    [Fact]
    public async Task Approve_WithoutASignedTime_DestroyKeyVersionNow_StillAcceptedAndCounted()
    {
        await StartAsync();
        IReadOnlyList<KeyValuePair<string, string>> parameters = [KeyValuePair.Create("name", "tenants/dev/keys/orders/versions/1")];
        var request = TestOfficers.Request(await HeadAsync(), QuorumOperation.DestroyKeyVersionNow, parameters, T0, TenantId.Parse("dev")) with { DomainKcv = _hsm.DomainKeyCheckValue };
        await _store.CreateQuorumRequestAsync(request, default);

        var result = await _quorum.ApproveAsync(request.Name, _officers["alice"].Fingerprint, _officers.Sign("alice", request), default);

        Assert.Equal((1, 2, false), (result.ValidApprovals, result.Threshold, result.Executed));
        Assert.Null(Assert.Single((await _store.GetQuorumRequestAsync(request.Id, default))!.Approvals).SignTime);
    }

    // At the upgrade a pending request may hold untimed approvals accepted before. Nothing vouches
    // for when they were made, so they stay recorded (and shown) but count for nothing: the request
    // executes only with M timed approvals. Their officers cannot approve it again (an officer
    // approves once): the refusal says why, and to create a new request.
    [Fact]
    public async Task Approve_PendingRequestHoldingAnUntimedApprovalRecordedBeforeTheUpgrade_ItDoesNotCount()
    {
        var request = await PendingAsync(QuorumOperation.ExportBackup);
        var legacy = _officers.ApproveUntimed("alice", request, T0);
        await _store.UpdateQuorumRequestAsync(request.Id, (r, _) => new Kms.Core.Ports.QuorumChange(r with { Approvals = [legacy] }) { AddedApproval = legacy }, default);

        var bob = await _officers.ApproveAsync(_quorum, "bob", request, _time.GetUtcNow());
        Assert.Equal((false, 1), (bob.Executed, bob.ValidApprovals));

        // Sent again (an older CLI's retry): refused as a new untimed approval is, nothing counted.
        var repeat = await Assert.ThrowsAsync<KmsException>(() => _quorum.ApproveAsync(request.Name, _officers["alice"].Fingerprint, legacy.Signature, default));
        Assert.Equal(KmsErrorCode.FailedPrecondition, repeat.Code);
        Assert.Contains("recorded without a signed time and does not count", repeat.Message, StringComparison.Ordinal);
        var again = await Assert.ThrowsAsync<KmsException>(() => _officers.ApproveAsync(_quorum, "alice", request, _time.GetUtcNow()));
        Assert.Equal(KmsErrorCode.AlreadyExists, again.Code);
        Assert.Contains("recorded without a signed time before EXPORT_BACKUP required one: it does not count", again.Message, StringComparison.Ordinal);
        Assert.Equal(QuorumRequestState.Pending, (await _store.GetQuorumRequestAsync(request.Id, default))!.State);

        Assert.True((await _officers.ApproveAsync(_quorum, "carol", request, _time.GetUtcNow())).Executed);
        Assert.Equal(3, (await _store.GetQuorumRequestAsync(request.Id, default))!.Approvals.Count);
    }

    // alice, bob and carol, 2 of 3; a deployment-wide request made now, living one hour.
    private async Task<QuorumRequest> PendingAsync(QuorumOperation operation)
    {
        await StartAsync();
        var command = new CreateQuorumRequestCommand(null, operation) { Ttl = TimeSpan.FromHours(1) };
        command = operation switch
        {
            QuorumOperation.RestoreDomain => command with { TokenLabel = "kms-prod-b" },
            QuorumOperation.RotateDomainKey => command with { NewCustodians = 5, NewShareThreshold = 3 },
            _ => command,
        };
        return await _quorum.CreateAsync(DomainHarness.SecurityOfficer, command, default);
    }

    private async Task<OfficerSet> HeadAsync() => (await _quorum.GetOfficerSetAsync(default)).Set;

    private async Task StartAsync()
    {
        var genesis = OfficerSet.CreateGenesis(_officers.Select("alice", "bob", "carol"), 2);
        _quorum = new QuorumService(_store, _store, _hsm, _time, new QuorumOptions { Genesis = genesis });
        await _quorum.InitializeAsync(default);
    }
}
