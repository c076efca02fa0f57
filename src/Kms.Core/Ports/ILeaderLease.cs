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
    /// <summary>True if this node holds the lease now (taking it if it is free).</summary>
    Task<bool> HoldAsync(CancellationToken cancellationToken);
}

/// <summary>The lease of a deployment with one node (SQLite): always held.</summary>
public sealed class SingleNodeLease : ILeaderLease
{
    /// <inheritdoc />
    public Task<bool> HoldAsync(CancellationToken cancellationToken) => Task.FromResult(true);
}
