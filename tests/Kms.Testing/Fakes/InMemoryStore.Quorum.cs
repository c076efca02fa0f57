using Kms.Core.Audit;
using Kms.Core.Errors;
using Kms.Core.Names;
using Kms.Core.Ports;
using Kms.Core.Quorum;

namespace Kms.Testing.Fakes;

/// <summary>The quorum port in memory: the same contract as SqliteStore's, one lock for atomicity.</summary>
public sealed partial class InMemoryStore : IQuorumStore
{
    private readonly List<OfficerSet> _officerSets = [];
    private readonly SortedDictionary<string, QuorumRequest> _quorumRequests = new(StringComparer.Ordinal);

    public Task<IReadOnlyList<OfficerSet>> ListOfficerSetsAsync(CancellationToken cancellationToken)
    {
        lock (_lock)
        {
            return Task.FromResult<IReadOnlyList<OfficerSet>>([.. _officerSets]);
        }
    }

    public Task<bool> AddGenesisOfficerSetAsync(OfficerSet genesis, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(genesis);
        lock (_lock)
        {
            if (_officerSets.Count > 0)
            {
                return Task.FromResult(false);
            }

            ThrowIfFailing();
            _officerSets.Add(genesis);
            return Task.FromResult(true);
        }
    }

    /// <summary>Test hook: writes a set into the chain as someone with write access to the database could.</summary>
    public void PlantOfficerSet(OfficerSet set)
    {
        lock (_lock)
        {
            _officerSets.Add(set);
        }
    }

    public Task CreateQuorumRequestAsync(QuorumRequest request, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(request);
        lock (_lock)
        {
            ThrowIfFailing();
            if (!_quorumRequests.TryAdd(request.Id.Value, request with { Approvals = [] }))
            {
                throw KmsErrors.AlreadyExists(request.Name);
            }
        }

        return Task.CompletedTask;
    }

    public Task<QuorumRequest?> GetQuorumRequestAsync(QuorumRequestId id, CancellationToken cancellationToken)
    {
        lock (_lock)
        {
            return Task.FromResult(_quorumRequests.GetValueOrDefault(id.Value));
        }
    }

    public Task<IReadOnlyList<QuorumRequest>> ListQuorumRequestsAsync(TenantId? tenant, string? afterId, int limit, CancellationToken cancellationToken)
    {
        lock (_lock)
        {
            IReadOnlyList<QuorumRequest> page = _quorumRequests.Values
                .Where(r => (tenant is null || r.Tenant == tenant) && string.CompareOrdinal(r.Id.Value, afterId ?? "") > 0)
                .Take(limit)
                .ToList();
            return Task.FromResult(page);
        }
    }

    public Task<QuorumRequest?> UpdateQuorumRequestAsync(QuorumRequestId id, Func<QuorumRequest, OfficerSet?, QuorumChange> decide, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(decide);
        AuditEntry? execution;
        QuorumRequest after;
        lock (_lock)
        {
            if (!_quorumRequests.TryGetValue(id.Value, out var current))
            {
                return Task.FromResult<QuorumRequest?>(null);
            }

            var change = decide(current, _officerSets.Count == 0 ? null : _officerSets[^1]);
            if (change.IsNoOp)
            {
                return Task.FromResult<QuorumRequest?>(current);
            }

            ThrowIfFailing();
            if (change.AddedApproval is { } approval && current.Approvals.Any(a => a.OfficerFingerprint == approval.OfficerFingerprint))
            {
                throw KmsErrors.AlreadyExists($"an approval of {current.Name} by {approval.OfficerFingerprint}");
            }

            if (change.AppendedOfficerSet is { } set && set.Sequence != _officerSets.Count)
            {
                throw KmsErrors.AlreadyExists($"officer set {set.Sequence}");
            }

            if (change.IssuedToken is { } issued && _tokens.ContainsKey(issued.Id))
            {
                throw KmsErrors.AlreadyExists($"apiTokens/{issued.Id}");
            }

            if (change.RevokedTokenId is { } toRevoke && (!_tokens.TryGetValue(toRevoke, out var active) || active.RevokeTime is not null))
            {
                throw QuorumChange.TokenNotActive(toRevoke);
            }

            // Every check before the first change: a refused effect leaves nothing behind.
            if (change.KeyEffect is { } effect && UpdateKeyLocked(effect.Key, effect.Decide) is null)
            {
                throw KmsErrors.NotFound(effect.Key.ToString());
            }

            if (change.AppendedOfficerSet is { } appended)
            {
                _officerSets.Add(appended);
            }

            if (change.IssuedToken is { } token)
            {
                _tokens.Add(token.Id, token);
            }

            if (change.RevokedTokenId is { } revoked && _tokens.TryGetValue(revoked, out var held))
            {
                _tokens[revoked] = held with { RevokeTime = change.Request.CredentialRevokeTime ?? change.Request.ExecuteTime };
            }

            after = change.Request with { Approvals = change.AddedApproval is { } added ? [.. current.Approvals, added] : current.Approvals };
            _quorumRequests[id.Value] = after;
            execution = change.ExecutionEvent;
        }

        if (execution is not null)
        {
            AppendAuditNow([execution]);
        }

        return Task.FromResult<QuorumRequest?>(after);
    }
}
