using Kms.Core.Errors;

namespace Kms.Core.Quorum;

/// <summary>
/// Verification of the officer chain and of approvals. Pure: it decides from the data it is
/// given, so the server runs it on what the database holds, and anyone can run it on an export.
/// </summary>
public static class OfficerChain
{
    /// <summary>
    /// Verifies a chain (sets in sequence order) against the pinned genesis and returns its head.
    /// The first set must be the pinned genesis; each later set must name its predecessor's
    /// hash and carry an executed CHANGE_OFFICERS request, made for that predecessor, whose
    /// parameters are exactly this set's, approved by at least M distinct officers of the
    /// predecessor with signatures that verify over the request's approval statement and were
    /// signed before the request expired.
    /// </summary>
    /// <param name="chain">The sets, genesis first.</param>
    /// <param name="pinnedGenesis">The genesis pinned outside the database.</param>
    /// <param name="untimedApprovalsThrough">
    /// The newest set whose change may count approvals without a signed time (made before
    /// approvals carried one): a set the verifier vouches for otherwise — its node recorded it as
    /// verified (<see cref="IOfficerHeadRecord"/>) — since such an approval's time is the server's
    /// unsigned record, which a database writer can set. 0: none (only the genesis, which has no
    /// change). The caller also checks that the chain still holds the set it vouches for.
    /// </param>
    /// <exception cref="KmsException">FailedPrecondition naming the first set that does not verify.</exception>
    public static OfficerSet Verify(IReadOnlyList<OfficerSet> chain, OfficerSet pinnedGenesis, long untimedApprovalsThrough = 0)
    {
        ArgumentNullException.ThrowIfNull(chain);
        ArgumentNullException.ThrowIfNull(pinnedGenesis);
        if (chain.Count == 0)
        {
            throw Broken("the database holds no officer set");
        }

        if (chain[0].Sequence != 0 || chain[0].Hash != pinnedGenesis.Hash)
        {
            throw Broken($"the stored genesis officer set (hash {chain[0].Hash}) is not the configured genesis (hash {pinnedGenesis.Hash})");
        }

        for (var i = 1; i < chain.Count; i++)
        {
            var previous = chain[i - 1];
            var set = chain[i];
            if (set.Sequence != i || set.PreviousHash != previous.Hash)
            {
                throw Broken($"officer set {i} does not follow set {i - 1} (sequence {set.Sequence}, previous hash {set.PreviousHash})");
            }

            var change = set.Change;
            if (change is null || change.Operation != QuorumOperation.ChangeOfficers || change.State != QuorumRequestState.Executed)
            {
                throw Broken($"officer set {i} carries no executed CHANGE_OFFICERS request");
            }

            if (change.OfficerSetSequence != previous.Sequence || change.OfficerSetHash != previous.Hash)
            {
                throw Broken($"officer set {i} was approved for another officer set than set {i - 1}");
            }

            if (!change.Parameters.SequenceEqual(set.ChangeParameters()))
            {
                throw Broken($"officer set {i} is not the set its CHANGE_OFFICERS request names");
            }

            // An approval counts only if it was signed before the request expired, by the time it
            // signed; an untimed one only where the caller vouches for the set by other means.
            var untimedCount = i <= untimedApprovalsThrough;
            var inTime = change.WithApprovalsSignedInTime(_ => untimedCount);
            var approvers = ValidApprovers(inTime, previous).Count;
            if (approvers < previous.Threshold)
            {
                var untimed = untimedCount ? 0 : change.Approvals.Count(a => a.SignTime is null);
                throw Broken($"officer set {i} is approved by {approvers} officers of set {i - 1} signed before its request expired at {QuorumRendering.Time(change.ExpireTime)}, which needs {previous.Threshold}"
                    + (untimed == 0 ? "" : $"; {untimed} of its approvals carry no signed time (made before approvals were timed), and count only for an officer set this node recorded as verified before"));
            }
        }

        return chain[^1];
    }

    /// <summary>
    /// The distinct officers of <paramref name="set"/> whose approvals of <paramref name="request"/>
    /// verify over what they sign (<see cref="QuorumApproval.SignedBytes"/>: the timed statement, or
    /// the rendering): counted by key, so two signatures by one key count once. Times are not
    /// judged here.
    /// </summary>
    public static IReadOnlyList<Officer> ValidApprovers(QuorumRequest request, OfficerSet set)
    {
        ArgumentNullException.ThrowIfNull(request);
        ArgumentNullException.ThrowIfNull(set);
        var approvers = new Dictionary<string, Officer>(StringComparer.Ordinal);
        foreach (var approval in request.Approvals)
        {
            if (!approvers.ContainsKey(approval.OfficerFingerprint)
                && set.Find(approval.OfficerFingerprint) is { } officer
                && officer.Verifies(approval.SignedBytes(request), approval.Signature))
            {
                approvers[officer.Fingerprint] = officer;
            }
        }

        return [.. approvers.Values];
    }

    private static KmsException Broken(string reason) =>
        KmsErrors.FailedPrecondition($"quorum operations are refused: the officer chain does not verify back to the configured genesis ({reason})");
}
