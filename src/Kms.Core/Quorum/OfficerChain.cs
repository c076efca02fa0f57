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
    /// predecessor with signatures that verify over the request's canonical rendering.
    /// </summary>
    /// <exception cref="KmsException">FailedPrecondition naming the first set that does not verify.</exception>
    public static OfficerSet Verify(IReadOnlyList<OfficerSet> chain, OfficerSet pinnedGenesis)
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

            var approvers = ValidApprovers(change, previous).Count;
            if (approvers < previous.Threshold)
            {
                throw Broken($"officer set {i} is approved by {approvers} officers of set {i - 1}, which needs {previous.Threshold}");
            }
        }

        return chain[^1];
    }

    /// <summary>
    /// The distinct officers of <paramref name="set"/> whose approvals of <paramref name="request"/>
    /// verify over its canonical rendering: counted by key, so two signatures by one key count once.
    /// </summary>
    public static IReadOnlyList<Officer> ValidApprovers(QuorumRequest request, OfficerSet set)
    {
        ArgumentNullException.ThrowIfNull(request);
        ArgumentNullException.ThrowIfNull(set);
        var rendering = QuorumRendering.Bytes(request);
        var approvers = new Dictionary<string, Officer>(StringComparer.Ordinal);
        foreach (var approval in request.Approvals)
        {
            if (!approvers.ContainsKey(approval.OfficerFingerprint)
                && set.Find(approval.OfficerFingerprint) is { } officer
                && officer.Verifies(rendering, approval.Signature))
            {
                approvers[officer.Fingerprint] = officer;
            }
        }

        return [.. approvers.Values];
    }

    private static KmsException Broken(string reason) =>
        KmsErrors.FailedPrecondition($"quorum operations are refused: the officer chain does not verify back to the configured genesis ({reason})");
}
