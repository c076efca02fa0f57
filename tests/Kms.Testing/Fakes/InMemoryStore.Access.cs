using Kms.Core.Access;
using Kms.Core.Errors;
using Kms.Core.Names;
using Kms.Core.Ports;

namespace Kms.Testing.Fakes;

/// <summary>The access-control half of the in-memory store (same contract suite as SQLite).</summary>
public sealed partial class InMemoryStore
{
    private readonly SortedDictionary<string, Tenant> _tenants = new(StringComparer.Ordinal);
    private readonly SortedDictionary<string, Principal> _principals = new(StringComparer.Ordinal);
    private readonly Dictionary<string, ApiToken> _tokens = [];
    private readonly HashSet<RoleBinding> _bindings = new(new BindingKey());
    private readonly Dictionary<(string Tenant, string KeyId), KeyPolicy> _policies = [];
    private readonly List<Grant> _grants = [];

    public Task CreateTenantAsync(Tenant tenant, CancellationToken cancellationToken)
    {
        lock (_lock)
        {
            if (!_tenants.TryAdd(tenant.Id.Value, tenant))
            {
                throw KmsErrors.AlreadyExists(tenant.Id.ResourceName);
            }
        }

        return Task.CompletedTask;
    }

    public Task<Tenant?> GetTenantAsync(TenantId id, CancellationToken cancellationToken)
    {
        lock (_lock)
        {
            return Task.FromResult(_tenants.GetValueOrDefault(id.Value));
        }
    }

    public Task<IReadOnlyList<Tenant>> ListTenantsAsync(string? afterId, int limit, CancellationToken cancellationToken)
    {
        lock (_lock)
        {
            IReadOnlyList<Tenant> page = _tenants.Values.Where(t => string.CompareOrdinal(t.Id.Value, afterId ?? "") > 0).Take(limit).ToList();
            return Task.FromResult(page);
        }
    }

    public Task<bool> UpdateTenantAsync(Tenant tenant, CancellationToken cancellationToken)
    {
        lock (_lock)
        {
            if (!_tenants.TryGetValue(tenant.Id.Value, out var stored))
            {
                return Task.FromResult(false);
            }

            ThrowIfFailing();
            _tenants[tenant.Id.Value] = stored with { State = tenant.State, DeleteTime = tenant.DeleteTime, DeleteWaitingPeriod = tenant.DeleteWaitingPeriod };
            return Task.FromResult(true);
        }
    }

    public Task CreatePrincipalAsync(Principal principal, CancellationToken cancellationToken)
    {
        lock (_lock)
        {
            RefuseInDeletingTenant(principal.Tenant);
            if (!_principals.TryAdd(principal.Name.ToString(), principal))
            {
                throw KmsErrors.AlreadyExists(principal.Name.ToString());
            }
        }

        return Task.CompletedTask;
    }

    public Task<Principal?> GetPrincipalAsync(PrincipalName name, CancellationToken cancellationToken)
    {
        lock (_lock)
        {
            return Task.FromResult(_principals.GetValueOrDefault(name.ToString()));
        }
    }

    // One read under the lock, as the SQL stores' join.
    public Task<PrincipalWithTenantState?> GetPrincipalWithTenantStateAsync(PrincipalName name, CancellationToken cancellationToken)
    {
        lock (_lock)
        {
            return Task.FromResult(_principals.GetValueOrDefault(name.ToString()) is { } principal
                ? new PrincipalWithTenantState(principal, principal.Tenant is { } tenant ? _tenants.GetValueOrDefault(tenant.Value)?.State : null)
                : null);
        }
    }

    public Task<IReadOnlyList<Principal>> ListPrincipalsAsync(TenantId? tenant, string? afterName, int limit, bool includeDeleted, CancellationToken cancellationToken)
    {
        lock (_lock)
        {
            IReadOnlyList<Principal> page = _principals.Values
                .Where(p => p.Tenant == tenant && string.CompareOrdinal(p.Name.ToString(), afterName ?? "") > 0 && (includeDeleted || !p.Deleted))
                .Take(limit)
                .ToList();
            return Task.FromResult(page);
        }
    }

    public Task<(Principal Principal, bool Deleted)?> DeletePrincipalAsync(PrincipalName name, DateTimeOffset deleteTime, CancellationToken cancellationToken)
    {
        lock (_lock)
        {
            if (!_principals.TryGetValue(name.ToString(), out var principal) || principal.Deleted)
            {
                return Task.FromResult<(Principal, bool)?>(principal is null ? null : (principal, false));
            }

            RefuseLosingTheLastDeploymentAdmin(name);

            principal = _principals[name.ToString()] = principal with { Disabled = true, DeleteTime = deleteTime };
            foreach (var token in _tokens.Values.Where(t => t.Principal == name && t.RevokeTime is null).ToList())
            {
                _tokens[token.Id] = token with { RevokeTime = deleteTime };
            }

            _bindings.RemoveWhere(b => b.Principal == name);
            for (var i = 0; i < _grants.Count; i++)
            {
                if (_grants[i].Grantee == name && _grants[i].RevokeTime is null)
                {
                    _grants[i] = _grants[i] with { RevokeTime = deleteTime };
                }
            }

            return Task.FromResult<(Principal, bool)?>((principal, true));
        }
    }

    private void RefuseDeletedPrincipal(PrincipalName name)
    {
        if (_principals.GetValueOrDefault(name.ToString()) is { Deleted: true })
        {
            throw KmsErrors.PrincipalDeleted(name.ToString());
        }
    }

    public Task CreateApiTokenAsync(ApiToken token, CancellationToken cancellationToken)
    {
        lock (_lock)
        {
            RefuseInDeletingTenant(_principals.GetValueOrDefault(token.Principal.ToString())?.Tenant);
            RefuseDeletedPrincipal(token.Principal);
            if (!_tokens.TryAdd(token.Id, token))
            {
                throw KmsErrors.AlreadyExists($"apiTokens/{token.Id}");
            }
        }

        return Task.CompletedTask;
    }

    public Task<ApiToken?> GetApiTokenAsync(string id, CancellationToken cancellationToken)
    {
        lock (_lock)
        {
            return Task.FromResult(_tokens.GetValueOrDefault(id));
        }
    }

    public Task<IReadOnlyList<ApiToken>> ListApiTokensAsync(PrincipalName principal, CancellationToken cancellationToken)
    {
        lock (_lock)
        {
            IReadOnlyList<ApiToken> tokens = _tokens.Values
                .Where(t => t.Principal == principal)
                .OrderByDescending(t => t.CreateTime)
                .ThenBy(t => t.Id, StringComparer.Ordinal)
                .ToList();
            return Task.FromResult(tokens);
        }
    }

    public Task<IReadOnlyList<ApiToken>> ListApiTokensAsync(PrincipalName principal, (DateTimeOffset CreateTime, string Id)? after, int limit, CancellationToken cancellationToken)
    {
        lock (_lock)
        {
            IReadOnlyList<ApiToken> page = _tokens.Values
                .Where(t => t.Principal == principal
                    && (after is not { } last || t.CreateTime < last.CreateTime || (t.CreateTime == last.CreateTime && string.CompareOrdinal(t.Id, last.Id) > 0)))
                .OrderByDescending(t => t.CreateTime)
                .ThenBy(t => t.Id, StringComparer.Ordinal)
                .Take(limit)
                .ToList();
            return Task.FromResult(page);
        }
    }

    public Task<bool> ConsumeApiTokenAsync(string id, DateTimeOffset revokeTime, CancellationToken cancellationToken)
    {
        lock (_lock)
        {
            if (!_tokens.TryGetValue(id, out var token) || token.RevokeTime is not null)
            {
                return Task.FromResult(false);
            }

            foreach (var sibling in _tokens.Values.Where(t => t.Principal == token.Principal && t.RevokeTime is null).ToList())
            {
                _tokens[sibling.Id] = sibling with { RevokeTime = revokeTime };
            }

            return Task.FromResult(true);
        }
    }

    // Every check before the first change, all under the lock: one step, as the SQL stores' transaction.
    public Task<bool> RegisterBootstrapAdminAsync(BootstrapRegistration registration, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(registration);
        lock (_lock)
        {
            if (!_tokens.TryGetValue(registration.CredentialId, out var credential) || credential.RevokeTime is not null)
            {
                return Task.FromResult(false);
            }

            if (registration.NewPrincipal is { } principal)
            {
                RefuseInDeletingTenant(principal.Tenant);
                if (_principals.ContainsKey(principal.Name.ToString()))
                {
                    throw KmsErrors.AlreadyExists(principal.Name.ToString());
                }
            }

            RefuseInDeletingTenant(registration.Binding.Tenant);
            RefuseDeletedPrincipal(registration.Binding.Principal);
            ThrowIfRoleBindingWritesFail();
            if (registration.SessionToken is { } session && _tokens.ContainsKey(session.Id))
            {
                throw KmsErrors.AlreadyExists($"apiTokens/{session.Id}");
            }

            foreach (var sibling in _tokens.Values.Where(t => t.Principal == credential.Principal && t.RevokeTime is null).ToList())
            {
                _tokens[sibling.Id] = sibling with { RevokeTime = registration.Time };
            }

            if (registration.NewPrincipal is { } created)
            {
                _principals.Add(created.Name.ToString(), created);
            }

            _bindings.Add(registration.Binding);
            if (registration.SessionToken is { } token)
            {
                _tokens.Add(token.Id, token);
            }

            return Task.FromResult(true);
        }
    }

    public Task<bool> RevokeApiTokenAsync(string id, DateTimeOffset revokeTime, CancellationToken cancellationToken)
    {
        lock (_lock)
        {
            if (!_tokens.TryGetValue(id, out var token))
            {
                return Task.FromResult(false);
            }

            _tokens[id] = token with { RevokeTime = token.RevokeTime ?? revokeTime };
            return Task.FromResult(true);
        }
    }

    public Task SetRoleBindingAsync(RoleBinding binding, CancellationToken cancellationToken)
    {
        lock (_lock)
        {
            RefuseInDeletingTenant(binding.Tenant);
            RefuseDeletedPrincipal(binding.Principal);
            ThrowIfRoleBindingWritesFail();
            _bindings.Add(binding);
        }

        return Task.CompletedTask;
    }

    /// <summary>Test hook: while set, every write of a role binding throws it (a store failing part way through a Bootstrap).</summary>
    public Exception? FailRoleBindingWrites { get; set; }

    private void ThrowIfRoleBindingWritesFail()
    {
        if (FailRoleBindingWrites is { } failure)
        {
            throw failure;
        }
    }

    private void RefuseInDeletingTenant(TenantId? tenant)
    {
        if (tenant is { } id && _tenants.TryGetValue(id.Value, out var row) && row.State != TenantState.Active)
        {
            throw KmsErrors.TenantDeleting(id.ResourceName);
        }
    }

    public Task<bool> DeleteRoleBindingAsync(PrincipalName principal, Role role, TenantId? tenant, CancellationToken cancellationToken)
    {
        lock (_lock)
        {
            if (role == Role.DeploymentAdmin && tenant is null)
            {
                RefuseLosingTheLastDeploymentAdmin(principal);
            }

            return Task.FromResult(_bindings.RemoveWhere(b => b.Principal == principal && b.Role == role && b.Tenant == tenant) > 0);
        }
    }

    // As the SQL stores: no removal (of a binding, or of its principal) leaves no enabled principal
    // holding deployment-admin. Called under _lock.
    private void RefuseLosingTheLastDeploymentAdmin(PrincipalName principal)
    {
        var admins = _bindings
            .Where(b => b.Role == Role.DeploymentAdmin && b.Tenant is null && _principals.GetValueOrDefault(b.Principal.ToString()) is { Disabled: false })
            .Select(b => b.Principal)
            .ToList();
        if (admins.Contains(principal) && admins.All(a => a == principal))
        {
            throw KmsErrors.LastDeploymentAdmin(principal.ToString());
        }
    }

    public Task<IReadOnlyList<RoleBinding>> GetRoleBindingsAsync(PrincipalName principal, CancellationToken cancellationToken)
    {
        lock (_lock)
        {
            IReadOnlyList<RoleBinding> bindings = _bindings.Where(b => b.Principal == principal).OrderBy(b => b.Role).ToList();
            return Task.FromResult(bindings);
        }
    }

    public Task<IReadOnlyList<RoleBinding>> ListRoleBindingsAsync(TenantId? tenant, CancellationToken cancellationToken)
    {
        lock (_lock)
        {
            IReadOnlyList<RoleBinding> bindings = _bindings
                .Where(b => b.Tenant == tenant)
                .OrderBy(b => b.Principal.ToString(), StringComparer.Ordinal)
                .ThenBy(b => b.Role)
                .ToList();
            return Task.FromResult(bindings);
        }
    }

    public Task<IReadOnlyList<RoleBinding>> ListRoleBindingsAsync(TenantId? tenant, (string Principal, Role Role)? after, int limit, CancellationToken cancellationToken)
    {
        lock (_lock)
        {
            IReadOnlyList<RoleBinding> page = _bindings
                .Where(b => b.Tenant == tenant
                    && (after is not { } last || string.CompareOrdinal(b.Principal.ToString(), last.Principal) is var order && (order > 0 || (order == 0 && b.Role > last.Role))))
                .OrderBy(b => b.Principal.ToString(), StringComparer.Ordinal)
                .ThenBy(b => b.Role)
                .Take(limit)
                .ToList();
            return Task.FromResult(page);
        }
    }

    public Task SetKeyPolicyAsync(KeyPolicy policy, DateTimeOffset time, CancellationToken cancellationToken)
    {
        lock (_lock)
        {
            var id = (policy.Key.Tenant.Value, policy.Key.KeyId);
            if (!_keys.TryGetValue(id, out var key))
            {
                throw KmsErrors.NotFound(policy.Key.ToString());
            }

            _policies[id] = policy;
            _keys[id] = key with { Restricted = policy.Restricts };
            for (var i = 0; i < _grants.Count && !policy.Restricts; i++)
            {
                if (_grants[i].Key == policy.Key && _grants[i].RevokeTime is null)
                {
                    _grants[i] = _grants[i] with { RevokeTime = time };
                }
            }
        }

        return Task.CompletedTask;
    }

    public Task<KeyPolicy> GetKeyPolicyAsync(KeyName key, CancellationToken cancellationToken)
    {
        lock (_lock)
        {
            return Task.FromResult(_policies.GetValueOrDefault((key.Tenant.Value, key.KeyId)) ?? KeyPolicy.None(key));
        }
    }

    public Task CreateGrantAsync(Grant grant, CancellationToken cancellationToken)
    {
        lock (_lock)
        {
            if (!_keys.TryGetValue(Id(grant.Key), out var key) || !key.Restricted
                || (_tenants.TryGetValue(grant.Key.Tenant.Value, out var tenant) && tenant.State != TenantState.Active))
            {
                throw KmsErrors.FailedPrecondition($"key {grant.Key} has no policy any more, or its tenant is being deleted; no grant was made");
            }

            Kms.Core.Services.KeyTransitions.EnsureGrantable(key.Name, key.State);
            RefuseDeletedPrincipal(grant.Grantee);
            _grants.Add(grant);
        }

        return Task.CompletedTask;
    }

    public Task<IReadOnlyList<Grant>> ListGrantsAsync(KeyName key, bool includeRevoked, CancellationToken cancellationToken)
    {
        lock (_lock)
        {
            IReadOnlyList<Grant> grants = _grants.Where(g => g.Key == key && (includeRevoked || g.RevokeTime is null)).ToList();
            return Task.FromResult(grants);
        }
    }

    public Task<IReadOnlyList<Grant>> ListGrantsAsync(KeyName key, (DateTimeOffset CreateTime, string Id)? after, int limit, CancellationToken cancellationToken)
    {
        lock (_lock)
        {
            IReadOnlyList<Grant> page = _grants
                .Where(g => g.Key == key && g.RevokeTime is null
                    && (after is not { } last || g.CreateTime > last.CreateTime || (g.CreateTime == last.CreateTime && string.CompareOrdinal(g.Id, last.Id) > 0)))
                .OrderBy(g => g.CreateTime)
                .ThenBy(g => g.Id, StringComparer.Ordinal)
                .Take(limit)
                .ToList();
            return Task.FromResult(page);
        }
    }

    public Task<bool> RevokeGrantAsync(KeyName key, string grantId, DateTimeOffset revokeTime, CancellationToken cancellationToken)
    {
        lock (_lock)
        {
            var index = _grants.FindIndex(g => g.Key == key && g.Id == grantId && g.RevokeTime is null);
            if (index < 0)
            {
                return Task.FromResult(false);
            }

            _grants[index] = _grants[index] with { RevokeTime = revokeTime };
            return Task.FromResult(true);
        }
    }

    private sealed class BindingKey : IEqualityComparer<RoleBinding>
    {
        public bool Equals(RoleBinding? x, RoleBinding? y) => x?.Principal == y?.Principal && x?.Role == y?.Role && x?.Tenant == y?.Tenant;

        public int GetHashCode(RoleBinding obj) => HashCode.Combine(obj.Principal, obj.Role, obj.Tenant);
    }
}
