namespace Kms.Core.Ports;

/// <summary>What a recorded change invalidates on the nodes that did not make it.</summary>
public enum StoreChangeKind
{
    /// <summary>Tenants, tokens or role bindings changed: remembered callers must be forgotten.</summary>
    Access = 1,

    /// <summary>Key material was erased (a version destroyed, an import job expired): its HSM copies must go. The subject is the material id (hex).</summary>
    Material = 2,

    /// <summary>
    /// Keys, versions, aliases, policies, grants or settings may have changed: remembered
    /// metadata must be forgotten (<see cref="IMetadataCoherence"/>). No subject.
    /// </summary>
    Metadata = 3,
}

/// <summary>One change, in commit order.</summary>
public sealed record StoreChange(long Sequence, StoreChangeKind Kind, string Subject, DateTimeOffset Time);

/// <summary>
/// The store's record of changes that other nodes cache the consequences of, written in the
/// transaction of the change itself. Nodes sharing a database poll it (ClusterCoherenceWorker)
/// and drop what it names, so a revocation or a destruction made through one node takes
/// effect on every node within the poll interval.
/// </summary>
public interface IChangeFeed
{
    /// <summary>Changes after <paramref name="afterSequence"/>, in order.</summary>
    Task<IReadOnlyList<StoreChange>> ListChangesAsync(long afterSequence, int limit, CancellationToken cancellationToken);

    /// <summary>The last change's sequence number (0 when there is none).</summary>
    Task<long> GetChangeHeadAsync(CancellationToken cancellationToken);

    /// <summary>Deletes changes recorded before <paramref name="before"/> (no node needs them any more).</summary>
    Task<int> PruneChangesAsync(DateTimeOffset before, CancellationToken cancellationToken);
}
