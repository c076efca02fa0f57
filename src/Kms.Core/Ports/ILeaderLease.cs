namespace Kms.Core.Ports;

/// <summary>
/// Which node runs the deployment's once-only background work (scheduled rotation and
/// destruction, erasure, import-job expiry, tenant offboarding, audit checkpoints and
/// retention). With several nodes on one database, one holds the lease at a time; when it
/// dies, another takes it over. The jobs themselves stay safe to run twice (they decide on
/// fresh state under the store's write lock): the lease keeps them from running N times, it
/// is not what keeps them correct.
/// </summary>
public interface ILeaderLease
{
    /// <summary>
    /// True if this node holds the lease now (taking it if it is free). A node that
    /// <paramref name="standAside"/> (it refuses to sign audit checkpoints, by its own record:
    /// <c>AuditLog.CheckpointRefusedSince</c>) leaves the lease to a node that does not: it gives
    /// it up, and does not take it, while such a node is there to lead; with none, it leads.
    /// </summary>
    /// <remarks>
    /// A node standing aside does not lead beside a node ready to, nor take the lease back at every
    /// check while that node lives: it leads again when its refusal ends and the lease is free,
    /// or when it is the only node left.
    /// </remarks>
    Task<bool> HoldAsync(bool standAside, CancellationToken cancellationToken);
}

/// <summary>The lease of a deployment with one node (SQLite): always held, by a node standing aside too (no other node can lead).</summary>
public sealed class SingleNodeLease : ILeaderLease
{
    /// <inheritdoc />
    public Task<bool> HoldAsync(bool standAside, CancellationToken cancellationToken) => Task.FromResult(true);
}
