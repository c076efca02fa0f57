using Kms.Core.Audit;
using Kms.Core.Names;
using Kms.Core.Quorum;

namespace Kms.Core.Ports;

/// <summary>
/// Durable quorum state: the officer chain and quorum requests with their approvals.
/// Nothing here is trusted by itself: the service verifies the chain against the genesis
/// pinned outside the database, and every approval's signature, before acting.
/// </summary>
/// <remarks>
/// Backends pass the shared contract suite in tests/Kms.Storage.Tests. Like every write of
/// <see cref="IKeyStore"/>, a write inside a mutating <see cref="AuditScope"/> commits the
/// scope's event in its own transaction.
/// </remarks>
public interface IQuorumStore
{
    /// <summary>The officer sets in sequence order (empty before the genesis is stored).</summary>
    Task<IReadOnlyList<OfficerSet>> ListOfficerSetsAsync(CancellationToken cancellationToken);

    /// <summary>Stores the genesis set if the chain is empty; returns false (and changes nothing) if a chain exists.</summary>
    Task<bool> AddGenesisOfficerSetAsync(OfficerSet genesis, CancellationToken cancellationToken);

    /// <summary>Stores a new request (PENDING, no approvals).</summary>
    /// <exception cref="Errors.KmsException">AlreadyExists if the id is taken.</exception>
    Task CreateQuorumRequestAsync(QuorumRequest request, CancellationToken cancellationToken);

    /// <summary>A request with its approvals, or null.</summary>
    Task<QuorumRequest?> GetQuorumRequestAsync(QuorumRequestId id, CancellationToken cancellationToken);

    /// <summary>
    /// Requests in id order after <paramref name="afterId"/>: those of <paramref name="tenant"/>,
    /// or, when it is null, every request (tenant-scoped and deployment-wide).
    /// </summary>
    Task<IReadOnlyList<QuorumRequest>> ListQuorumRequestsAsync(TenantId? tenant, string? afterId, int limit, CancellationToken cancellationToken);

    /// <summary>
    /// Reads the request (with its approvals) and the head of the officer chain, lets
    /// <paramref name="decide"/> compute the change on that fresh state, and applies it — the
    /// approval, the state transition, the operation it triggers (a key change, an appended
    /// officer set, an issued or revoked API token) and the execution's audit event — all in one transaction, serialised with
    /// every other write. If <paramref name="decide"/> throws, nothing changes.
    /// </summary>
    /// <returns>The request after the change; null if it does not exist.</returns>
    /// <exception cref="Errors.KmsException">AlreadyExists if the officer approved already or the officer set's sequence is taken (a concurrent change).</exception>
    Task<QuorumRequest?> UpdateQuorumRequestAsync(QuorumRequestId id, Func<QuorumRequest, OfficerSet?, QuorumChange> decide, CancellationToken cancellationToken);
}

/// <summary>What an update of a quorum request does.</summary>
/// <param name="Request">The request after the change (state, execute time); its approvals are the store's plus <see cref="AddedApproval"/>.</param>
public sealed record QuorumChange(QuorumRequest Request)
{
    /// <summary>An approval to record (one per officer key).</summary>
    public QuorumApproval? AddedApproval { get; init; }

    /// <summary>A key change the execution makes, decided on the key's fresh state in the same transaction.</summary>
    public QuorumKeyEffect? KeyEffect { get; init; }

    /// <summary>An officer set the execution appends to the chain (its sequence must be the head's + 1).</summary>
    public OfficerSet? AppendedOfficerSet { get; init; }

    /// <summary>
    /// An API token the execution issues (RECOVER_DEPLOYMENT_ADMIN: the recovery credential), stored
    /// as <see cref="IAccessStore.CreateApiTokenAsync"/> stores one: only its secret's hash.
    /// </summary>
    public Access.ApiToken? IssuedToken { get; init; }

    /// <summary>
    /// The id of an API token to revoke (as <see cref="IAccessStore.RevokeApiTokenAsync"/> revokes one,
    /// at the request's <see cref="QuorumRequest.CredentialRevokeTime"/>): an executed
    /// RECOVER_DEPLOYMENT_ADMIN's credential that its node could not write. Only an active token is
    /// revoked: one that is revoked already (a Bootstrap used it) refuses the whole change with
    /// <see cref="TokenNotActive"/>, nothing written.
    /// </summary>
    public string? RevokedTokenId { get; init; }

    /// <summary>What a store throws when <see cref="RevokedTokenId"/> is not an active token.</summary>
    /// <param name="tokenId">The token's id.</param>
    public static Errors.KmsException TokenNotActive(string tokenId) =>
        Errors.KmsErrors.FailedPrecondition($"apiTokens/{tokenId} was no longer active (a Bootstrap used it, or it was revoked): nothing was revoked");

    /// <summary>The execution's own audit event (or the revocation's), committed after the calling request's event.</summary>
    public AuditEntry? ExecutionEvent { get; init; }

    /// <summary>Nothing to write.</summary>
    public bool IsNoOp { get; init; }
}

/// <summary>A key change made by an executing quorum request (as <see cref="IKeyStore.UpdateKeyAsync"/> makes it).</summary>
public sealed record QuorumKeyEffect(KeyName Key, Func<KeyWithVersions, KeyChange> Decide);
