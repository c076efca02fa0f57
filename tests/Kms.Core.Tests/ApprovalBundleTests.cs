using System.Text.Json.Nodes;
using Kms.Core.Errors;
using Kms.Core.Quorum;
using Kms.Testing;

namespace Kms.Core.Tests;

/// <summary>
/// The offline verification of an approval bundle, as the ceremony runs it: every refusal the
/// ceremony relies on, on bundles built here (the server's export is tested end to end).
/// </summary>
public sealed class ApprovalBundleTests : IDisposable
{
    private static readonly DateTimeOffset T0 = new(2026, 11, 29, 12, 0, 0, TimeSpan.Zero);
    private const string Kcv = "a1b2c3";
    private readonly TestOfficers _officers = new("alice", "bob", "carol", "dave", "erin");
    private readonly OfficerSet _genesis;

    public ApprovalBundleTests() => _genesis = OfficerSet.CreateGenesis(_officers.Select("alice", "bob", "carol"), 2);

    public void Dispose() => _officers.Dispose();

    [Fact]
    public void Verify_TwoOfThreeSigned_RoundTripsThroughItsJson_AndNamesTheApprovers()
    {
        var bundle = Approved(QuorumOperation.RotateDomainKey, [_genesis], "alice", "bob");

        var verified = ApprovalBundle.Parse(bundle.Serialize()).Verify(_genesis, QuorumOperation.RotateDomainKey, Kcv.ToUpperInvariant(), T0.AddMinutes(5));

        Assert.Equal(bundle.Request.Name, verified.Request.Name);
        Assert.Equal(["alice", "bob"], verified.Approvers.Select(o => o.Name).Order());
        Assert.Equal(_genesis.Hash, verified.OfficerSet.Hash);
        Assert.Equal(QuorumRendering.Render(bundle.Request), QuorumRendering.Render(verified.Request));
    }

    [Fact]
    public void Verify_ChainWithAnOfficerChange_CountsOnlyTheCurrentSet()
    {
        var second = _officers.Change(_genesis, _officers.Select("carol", "dave", "erin"), 2, T0, "alice", "bob");
        var byNew = Approved(QuorumOperation.RestoreDomain, [_genesis, second], "dave", "erin");
        Assert.Equal(2, ApprovalBundle.Parse(byNew.Serialize()).Verify(_genesis, QuorumOperation.RestoreDomain, Kcv, T0).Approvers.Count);

        // The old officers' signatures over a request for the new set count for nothing.
        var byOld = Approved(QuorumOperation.RestoreDomain, [_genesis, second], "alice", "bob");
        AssertRefused(KmsErrorCode.PermissionDenied, "0 distinct officers of set 1", () => byOld.Verify(_genesis, QuorumOperation.RestoreDomain, Kcv, T0));
    }

    [Fact]
    public void Verify_ForgedSignature_Refused()
    {
        var bundle = Approved(QuorumOperation.RotateDomainKey, [_genesis], "alice");
        // bob's fingerprint, dave's signature; and bob's signature over another text.
        var forged = bundle.Request.Approvals.Append(new QuorumApproval(_officers["bob"].Fingerprint, _officers.Sign("dave", bundle.Request, T0), T0) { SignTime = T0 }).ToList();
        AssertRefused(KmsErrorCode.PermissionDenied, "1 distinct officers of set 0", () =>
            (bundle with { Request = bundle.Request with { Approvals = forged } }).Verify(_genesis, QuorumOperation.RotateDomainKey, Kcv, T0));
        var otherText = bundle.Request.Approvals.Append(new QuorumApproval(_officers["bob"].Fingerprint, _officers.Sign("bob", bundle.Request with { DomainKcv = "ffffff" }, T0), T0) { SignTime = T0 }).ToList();
        AssertRefused(KmsErrorCode.PermissionDenied, "1 distinct officers", () =>
            (bundle with { Request = bundle.Request with { Approvals = otherText } }).Verify(_genesis, QuorumOperation.RotateDomainKey, Kcv, T0));
    }

    // An approval without a signed time counts for no operation a ceremony runs, as the server
    // refuses it for them: its only time is the server's unsigned record, which whoever carries or
    // edits the bundle can write. The same signatures timed verify.
    [Theory]
    [InlineData(QuorumOperation.RestoreDomain)]
    [InlineData(QuorumOperation.RotateDomainKey)]
    public void Verify_ApprovalsWithoutASignedTime_FailedPrecondition_TimedOnesVerify(QuorumOperation operation)
    {
        var timed = Approved(operation, [_genesis], "alice", "bob");
        var untimed = timed with
        {
            Request = timed.Request with { Approvals = [timed.Request.Approvals[0], _officers.ApproveUntimed("bob", timed.Request, T0)] },
        };

        var refused = Assert.Throws<KmsException>(() => ApprovalBundle.Parse(untimed.Serialize()).Verify(_genesis, operation, Kcv, T0));

        Assert.Equal(KmsErrorCode.FailedPrecondition, refused.Code);
        Assert.Contains("1 distinct officers of set 0 signed its canonical rendering in time, and it needs 2; 1 more signed it without a signed time", refused.Message, StringComparison.Ordinal);
        Assert.Contains($"({QuorumOperations.NameOf(operation)}) must carry the time it was signed", refused.Message, StringComparison.Ordinal);
        Assert.Equal(2, ApprovalBundle.Parse(timed.Serialize()).Verify(_genesis, operation, Kcv, T0).Approvers.Count);

        // A bundle written before approvals were timed (format v1) is still read, and refused so.
        var v1 = timed with { Request = timed.Request with { Approvals = [.. new[] { "alice", "bob" }.Select(a => _officers.ApproveUntimed(a, timed.Request, T0))] } };
        var old = ApprovalBundle.Parse(v1.Serialize().Replace(ApprovalBundle.Format, ApprovalBundle.UntimedFormat, StringComparison.Ordinal));
        AssertRefused(KmsErrorCode.FailedPrecondition, "0 distinct officers of set 0 signed its canonical rendering in time, and it needs 2; 2 more",
            () => old.Verify(_genesis, operation, Kcv, T0));
    }

    [Fact]
    public void Verify_TooFewSignatures_OrOneOfficerTwice_Refused()
    {
        AssertRefused(KmsErrorCode.PermissionDenied, "1 distinct officers of set 0 signed its canonical rendering in time, and it needs 2",
            () => Approved(QuorumOperation.RotateDomainKey, [_genesis], "alice").Verify(_genesis, QuorumOperation.RotateDomainKey, Kcv, T0));
        AssertRefused(KmsErrorCode.PermissionDenied, "needs 2",
            () => Approved(QuorumOperation.RotateDomainKey, [_genesis], "alice", "alice").Verify(_genesis, QuorumOperation.RotateDomainKey, Kcv, T0));
        AssertRefused(KmsErrorCode.PermissionDenied, "needs 2",
            () => Approved(QuorumOperation.RotateDomainKey, [_genesis], "alice", "dave").Verify(_genesis, QuorumOperation.RotateDomainKey, Kcv, T0));
    }

    [Fact]
    public void Verify_BundleForTheOtherOperation_Refused()
    {
        var restore = Approved(QuorumOperation.RestoreDomain, [_genesis], "alice", "bob");
        AssertRefused(KmsErrorCode.FailedPrecondition, "is for RESTORE_DOMAIN, not ROTATE_DOMAIN_KEY",
            () => restore.Verify(_genesis, QuorumOperation.RotateDomainKey, Kcv, T0));
        var rotate = Approved(QuorumOperation.RotateDomainKey, [_genesis], "alice", "bob");
        AssertRefused(KmsErrorCode.FailedPrecondition, "is for ROTATE_DOMAIN_KEY, not RESTORE_DOMAIN",
            () => rotate.Verify(_genesis, QuorumOperation.RestoreDomain, Kcv, T0));
    }

    [Fact]
    public void Verify_BundleForAnotherDomainKey_Refused()
    {
        var bundle = Approved(QuorumOperation.RotateDomainKey, [_genesis], "alice", "bob");
        AssertRefused(KmsErrorCode.FailedPrecondition, "check value a1b2c3, not this one's 0d0e0f",
            () => bundle.Verify(_genesis, QuorumOperation.RotateDomainKey, "0d0e0f", T0));
    }

    [Fact]
    public void Verify_ChainNotRootedInThePinnedGenesis_Refused()
    {
        // A chain with its own genesis, signed by its own officers: consistent, but not the deployment's.
        var rogue = OfficerSet.CreateGenesis(_officers.Select("dave", "erin"), 2);
        var bundle = Approved(QuorumOperation.RotateDomainKey, [rogue], "dave", "erin");
        AssertRefused(KmsErrorCode.PermissionDenied, "does not verify back to the pinned genesis",
            () => ApprovalBundle.Parse(bundle.Serialize()).Verify(_genesis, QuorumOperation.RotateDomainKey, Kcv, T0));

        // A change appended by officers who took it upon themselves.
        var takeover = _officers.Change(_genesis, _officers.Select("dave", "erin"), 1, T0, "dave", "erin");
        AssertRefused(KmsErrorCode.PermissionDenied, "does not verify back to the pinned genesis",
            () => Approved(QuorumOperation.RotateDomainKey, [_genesis, takeover], "dave").Verify(_genesis, QuorumOperation.RotateDomainKey, Kcv, T0));
    }

    [Fact]
    public void Verify_ExpiredRequest_Refused_ApprovedAfterExpiryOrUsedAfterIt()
    {
        var bundle = Approved(QuorumOperation.RestoreDomain, [_genesis], "alice", "bob");
        AssertRefused(KmsErrorCode.FailedPrecondition, "expired at 2026-11-29T13:00:00.000Z",
            () => bundle.Verify(_genesis, QuorumOperation.RestoreDomain, Kcv, T0.AddHours(1)));

        var late = bundle.Request with
        {
            Approvals = [_officers.Approve("alice", bundle.Request, T0), _officers.Approve("bob", bundle.Request, bundle.Request.ExpireTime)],
        };
        AssertRefused(KmsErrorCode.PermissionDenied, "1 distinct officers of set 0 signed its canonical rendering in time",
            () => (bundle with { Request = late }).Verify(_genesis, QuorumOperation.RestoreDomain, Kcv, T0));
    }

    [Fact]
    public void Verify_RequestForAnOlderOfficerSet_OrNotApproved_Refused()
    {
        var second = _officers.Change(_genesis, _officers.Select("carol", "dave", "erin"), 2, T0, "alice", "bob");
        var stale = Approved(QuorumOperation.RotateDomainKey, [_genesis], "alice", "bob");
        AssertRefused(KmsErrorCode.FailedPrecondition, "made for officer set 0, but the bundle's officer chain leads to set 1",
            () => (stale with { Chain = [_genesis, second] }).Verify(_genesis, QuorumOperation.RotateDomainKey, Kcv, T0));

        var pending = stale with { Request = stale.Request with { State = QuorumRequestState.Pending } };
        AssertRefused(KmsErrorCode.FailedPrecondition, "is not APPROVED", () => pending.Verify(_genesis, QuorumOperation.RotateDomainKey, Kcv, T0));
    }

    [Fact]
    public void Parse_RenderingOrFieldsEdited_NeverTrusted()
    {
        var bundle = Approved(QuorumOperation.RestoreDomain, [_genesis], "alice", "bob");
        var json = JsonNode.Parse(bundle.Serialize())!;

        // A signed field edited: the rendering computed from the fields no longer matches the signatures.
        json["request"]!["parameters"]![0]!["value"] = "kms-attacker";
        AssertRefused(KmsErrorCode.PermissionDenied, "0 distinct officers",
            () => ApprovalBundle.Parse(json.ToJsonString()).Verify(_genesis, QuorumOperation.RestoreDomain, Kcv, T0));

        // An approval's public key swapped for another officer's.
        json = JsonNode.Parse(bundle.Serialize())!;
        json["request"]!["approvals"]![0]!["public_key"] = Convert.ToBase64String(_officers["dave"].PublicKey);
        AssertRefused(KmsErrorCode.InvalidArgument, "does not match its fingerprint", () => ApprovalBundle.Parse(json.ToJsonString()));

        AssertRefused(KmsErrorCode.InvalidArgument, "not an approval bundle", () => ApprovalBundle.Parse("{\"format\":\"kms-quorum-approval-bundle-v2\"}"));
        AssertRefused(KmsErrorCode.InvalidArgument, "not an approval bundle", () => ApprovalBundle.Parse("not json"));
    }

    private ApprovalBundle Approved(QuorumOperation operation, IReadOnlyList<OfficerSet> chain, params string[] approvers)
    {
        var head = chain[^1];
        IReadOnlyList<KeyValuePair<string, string>> parameters = operation == QuorumOperation.RestoreDomain
            ? [KeyValuePair.Create("token-label", "kms-prod-b")]
            : [KeyValuePair.Create("new-custodians", "3"), KeyValuePair.Create("new-threshold", "2")];
        var request = TestOfficers.Request(head, operation, parameters, T0) with { DomainKcv = Kcv };
        request = request with
        {
            Approvals = [.. approvers.Select(a => _officers.Approve(a, request, T0))],
            State = QuorumRequestState.Approved,
            ExecuteTime = T0,
        };
        return new ApprovalBundle(request, chain);
    }

    private static void AssertRefused(KmsErrorCode code, string message, Action verify)
    {
        var refused = Assert.Throws<KmsException>(verify);
        Assert.Equal(code, refused.Code);
        Assert.Contains(message, refused.Message, StringComparison.Ordinal);
    }
}
