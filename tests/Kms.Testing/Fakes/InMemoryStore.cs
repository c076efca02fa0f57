using Kms.Core.Crypto;
using Kms.Core.Errors;
using Kms.Core.Keys;
using Kms.Core.Names;
using Kms.Core.Ports;
using Kms.Core.Services;

namespace Kms.Testing.Fakes;

/// <summary>
/// An in-memory <see cref="IKeyStore"/> for domain tests. It passes the same storage
/// contract suite as the real backends, so tests written against it mean something.
/// </summary>
public sealed partial class InMemoryStore : IKeyStore, IAccessStore
{
    private readonly Lock _lock = new();
    private readonly SortedDictionary<(string Tenant, string KeyId), Key> _keys = new();
    private readonly Dictionary<(string Tenant, string KeyId), List<KeyVersion>> _versions = [];
    private readonly Dictionary<KeyVersionId, byte[]?> _material = [];
    private readonly Dictionary<(string Tenant, string RequestId), RequestRecord> _requests = [];
    private readonly SortedDictionary<(string Tenant, string AliasId), KeyAlias> _aliases = new();
    private readonly Dictionary<string, string> _settings = [];
    private readonly Dictionary<Guid, (long Sequence, DateTimeOffset Time)> _usageFlushes = [];

    // Failed destructions' back-off, by key and version (0: the key's deletion), as the SQL stores keep it with the row.
    private readonly Dictionary<(string Tenant, string KeyId, int Version), DestructionFailure> _destructionFailures = [];

    /// <summary>Test hook: thrown by the next write (a store failing after the HSM did its part).</summary>
    public Exception? FailNextWrite { get; set; }

    private Action? _beforeNextKeyUpdate;
    private Func<Task>? _beforeNextUsageRecord;
    private Exception? _afterNextUsageRecord;
    private Func<Task>? _afterNextReservation;

    public Task CreateKeyAsync(Key key, WrappedKeyMaterial primaryMaterial, RequestRecord? request, CancellationToken cancellationToken)
    {
        lock (_lock)
        {
            ThrowIfFailing();
            RefuseInDeletingTenant(key.Name.Tenant);
            EnsureRequestFree(request);
            if (_keys.ContainsKey(Id(key.Name)))
            {
                throw KmsErrors.AlreadyExists(key.Name.ToString());
            }

            if (_material.ContainsKey(key.Primary.Id))
            {
                throw KmsErrors.AlreadyExists(key.Primary.Name.ToString());
            }

            _keys[Id(key.Name)] = key;
            _versions[Id(key.Name)] = [key.Primary];
            _material[key.Primary.Id] = primaryMaterial.Bytes.ToArray();
            Record(request);
        }

        return Task.CompletedTask;
    }

    public Task<Key?> GetKeyAsync(KeyName name, CancellationToken cancellationToken)
    {
        lock (_lock)
        {
            return Task.FromResult(_keys.TryGetValue(Id(name), out var key) ? Fresh(key) : null);
        }
    }

    public Task<IReadOnlyList<Key>> ListKeysAsync(TenantId tenant, string? afterKeyId, int limit, CancellationToken cancellationToken)
    {
        lock (_lock)
        {
            IReadOnlyList<Key> page = _keys
                .Where(kv => kv.Key.Tenant == tenant.Value && string.CompareOrdinal(kv.Key.KeyId, afterKeyId ?? "") > 0)
                .OrderBy(kv => kv.Key.KeyId, StringComparer.Ordinal)
                .Take(limit)
                .Select(kv => Fresh(kv.Value))
                .ToList();
            return Task.FromResult(page);
        }
    }

    public Task<IReadOnlyList<KeyVersion>> ListVersionsAsync(KeyName key, int afterVersion, int limit, CancellationToken cancellationToken)
    {
        lock (_lock)
        {
            IReadOnlyList<KeyVersion> page = _versions.TryGetValue(Id(key), out var versions)
                ? versions.Where(v => v.Name.Version > afterVersion).Take(limit).ToList()
                : [];
            return Task.FromResult(page);
        }
    }

    public Task<KeyVersion?> GetVersionAsync(KeyVersionName name, CancellationToken cancellationToken)
    {
        lock (_lock)
        {
            return Task.FromResult(_versions.TryGetValue(Id(name.Key), out var versions) ? versions.FirstOrDefault(v => v.Name.Version == name.Version) : null);
        }
    }

    /// <summary>Runs once before the next key update takes the lock (as a wait for the write lock would).</summary>
    public Action? BeforeNextKeyUpdate
    {
        get => _beforeNextKeyUpdate;
        set => _beforeNextKeyUpdate = value;
    }

    /// <summary>
    /// Awaited once by the next <see cref="RecordUsageAsync"/> before it writes (a flush held
    /// between taking its counts and committing them); throwing fails the write, nothing recorded.
    /// </summary>
    public Func<Task>? BeforeNextUsageRecord
    {
        get => _beforeNextUsageRecord;
        set => _beforeNextUsageRecord = value;
    }

    /// <summary>
    /// Thrown once by the next <see cref="RecordUsageAsync"/> after it applied its flush: a write
    /// that committed though the writer was told it failed (a COMMIT whose answer was lost).
    /// </summary>
    public Exception? FailAfterNextUsageRecord
    {
        get => _afterNextUsageRecord;
        set => _afterNextUsageRecord = value;
    }

    /// <summary>
    /// Awaited once by the next <see cref="ReserveEncryptionsAsync"/> after its reservation is
    /// written and before it returns (the reservation committed, the caller not told yet).
    /// </summary>
    public Func<Task>? AfterNextReservation
    {
        get => _afterNextReservation;
        set => _afterNextReservation = value;
    }

    /// <summary>
    /// Asked with every key change about to be written (after it was decided, before anything is
    /// applied): an exception returned is thrown and nothing is written — a store that keeps
    /// refusing one key's or one version's write, as long as it is set.
    /// </summary>
    public Func<KeyChange, Exception?>? RefuseChange { get; set; }

    public Task<KeyWithVersions?> UpdateKeyAsync(KeyName name, Func<KeyWithVersions, KeyChange> decide, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(decide);
        Interlocked.Exchange(ref _beforeNextKeyUpdate, null)?.Invoke();
        lock (_lock)
        {
            return Task.FromResult(UpdateKeyLocked(name, decide));
        }
    }

    private KeyWithVersions? UpdateKeyLocked(KeyName name, Func<KeyWithVersions, KeyChange> decide)
    {
        if (!_keys.TryGetValue(Id(name), out var key))
        {
            return null;
        }

        var current = new KeyWithVersions(Fresh(key), _versions[Id(name)].ToList());
        var change = decide(current);
        if (change.IsNoOp || (change.OnlyWhileTenantDeleting && _tenants.GetValueOrDefault(name.Tenant.Value)?.State != Kms.Core.Access.TenantState.Deleting))
        {
            return current;
        }

        if (change.RefusedWhileTenantDeleting && _tenants.GetValueOrDefault(name.Tenant.Value)?.State == Kms.Core.Access.TenantState.Deleting)
        {
            throw KmsErrors.TenantDeleting(name.Tenant.ResourceName);
        }

        ThrowIfFailing();
        if (RefuseChange?.Invoke(change) is { } refused)
        {
            throw refused;
        }

        EnsureRequestFree(change.Request);
        var versions = _versions[Id(name)];
        if (change.AddedVersion is { } added)
        {
            if (versions.Any(v => v.Name.Version == added.Version.Name.Version) || _material.ContainsKey(added.Version.Id))
            {
                throw KmsErrors.AlreadyExists(added.Version.Name.ToString());
            }

            // As the SQL stores: a material its import job already imported, into any key.
            if (added.Version is { ImportFingerprint: { } fingerprint, ImportJob: { } job }
                && _versions.Values.Any(all => all.Any(v => v.ImportJob == job && v.ImportFingerprint == fingerprint)))
            {
                throw KmsErrors.MaterialAlreadyImported(job);
            }

            versions.Add(added.Version);
            _material[added.Version.Id] = added.Material.Bytes.ToArray();
        }

        // As the SQL stores: a change of the key clears its deletion's failure record, of a version its own.
        _destructionFailures.Remove((name.Tenant.Value, name.KeyId, 0));
        foreach (var updated in change.UpdatedVersions)
        {
            _destructionFailures.Remove((name.Tenant.Value, name.KeyId, updated.Name.Version));
            var index = versions.FindIndex(v => v.Name.Version == updated.Name.Version);
            versions[index] = versions[index] with { State = updated.State, DestroyTime = updated.DestroyTime, DestroyEventTime = updated.DestroyEventTime };
            if (updated.State == KeyState.Destroyed)
            {
                _material[updated.Id] = null;
            }
        }

        _keys[Id(name)] = change.Key with { Restricted = key.Restricted };
        Record(change.Request);
        return new KeyWithVersions(Fresh(change.Key), versions.ToList());
    }

    public Task<KeyVersionMaterial?> GetPrimaryMaterialAsync(KeyName name, CancellationToken cancellationToken)
    {
        lock (_lock)
        {
            if (!_keys.TryGetValue(Id(name), out var key))
            {
                return Task.FromResult<KeyVersionMaterial?>(null);
            }

            var fresh = Fresh(key);
            return Task.FromResult<KeyVersionMaterial?>(new KeyVersionMaterial(fresh, fresh.Primary, Material(fresh.Primary.Id)));
        }
    }

    public Task<KeyVersionMaterial?> FindVersionMaterialAsync(TenantId tenant, KeyVersionId id, CancellationToken cancellationToken)
    {
        lock (_lock)
        {
            foreach (var ((keyTenant, keyId), versions) in _versions)
            {
                if (keyTenant == tenant.Value && versions.FirstOrDefault(v => v.Id == id) is { } version)
                {
                    return Task.FromResult<KeyVersionMaterial?>(new KeyVersionMaterial(Fresh(_keys[(keyTenant, keyId)]), version, Material(id)));
                }
            }

            return Task.FromResult<KeyVersionMaterial?>(null);
        }
    }

    /// <summary>
    /// How many of the next request-id lookups find nothing: a retry whose lookup ran while the
    /// first attempt still waited for the write lock.
    /// </summary>
    public int MissNextRequestLookups { get; set; }

    public Task<RequestRecord?> FindRequestAsync(TenantId tenant, string requestId, CancellationToken cancellationToken)
    {
        lock (_lock)
        {
            if (MissNextRequestLookups > 0)
            {
                MissNextRequestLookups--;
                return Task.FromResult<RequestRecord?>(null);
            }

            return Task.FromResult(_requests.GetValueOrDefault((tenant.Value, requestId)));
        }
    }

    public Task CreateAliasAsync(KeyAlias alias, RequestRecord? request, CancellationToken cancellationToken)
    {
        lock (_lock)
        {
            ThrowIfFailing();
            RefuseInDeletingTenant(alias.Key.Tenant);
            if (!_keys.TryGetValue(Id(alias.Key), out var target))
            {
                throw KmsErrors.NotFound(alias.Key.ToString());
            }

            KeyTransitions.EnsureAliasTarget(target.Name, target.State);

            EnsureRequestFree(request);
            if (!_aliases.TryAdd((alias.Name.Tenant.Value, alias.Name.AliasId), alias))
            {
                throw KmsErrors.AlreadyExists(alias.Name.ToString());
            }

            Record(request);
        }

        return Task.CompletedTask;
    }

    public Task<KeyAlias?> GetAliasAsync(AliasName name, CancellationToken cancellationToken)
    {
        lock (_lock)
        {
            return Task.FromResult(_aliases.GetValueOrDefault((name.Tenant.Value, name.AliasId)));
        }
    }

    public Task<KeyAlias?> UpdateAliasAsync(AliasName name, KeyName key, DateTimeOffset updateTime, Action<Key?, Key>? check, CancellationToken cancellationToken)
    {
        lock (_lock)
        {
            if (!_aliases.TryGetValue((name.Tenant.Value, name.AliasId), out var alias))
            {
                return Task.FromResult<KeyAlias?>(null);
            }

            // Already there: nothing is written, whatever the key's or the tenant's state now.
            if (alias.Key == key)
            {
                return Task.FromResult<KeyAlias?>(alias);
            }

            RefuseInDeletingTenant(key.Tenant);
            if (!_keys.TryGetValue(Id(key), out var target))
            {
                throw KmsErrors.NotFound(key.ToString());
            }

            KeyTransitions.EnsureAliasTarget(target.Name, target.State);
            check?.Invoke(_keys.TryGetValue(Id(alias.Key), out var current) ? Fresh(current) : null, Fresh(target));

            var updated = alias with { Key = key, UpdateTime = updateTime };
            _aliases[(name.Tenant.Value, name.AliasId)] = updated;
            return Task.FromResult<KeyAlias?>(updated);
        }
    }

    public Task<bool> DeleteAliasAsync(AliasName name, RequestRecord? request, CancellationToken cancellationToken)
    {
        lock (_lock)
        {
            EnsureRequestFree(request);
            if (!_aliases.Remove((name.Tenant.Value, name.AliasId)))
            {
                return Task.FromResult(false);
            }

            Record(request);
            return Task.FromResult(true);
        }
    }

    public Task<bool> CompleteErasureAsync(CancellationToken cancellationToken) => Task.FromResult(true);

    public Task<IReadOnlyList<KeyAlias>> ListAliasesAsync(TenantId tenant, string? afterAliasId, int limit, CancellationToken cancellationToken)
    {
        lock (_lock)
        {
            IReadOnlyList<KeyAlias> page = _aliases
                .Where(kv => kv.Key.Tenant == tenant.Value && string.CompareOrdinal(kv.Key.AliasId, afterAliasId ?? "") > 0)
                .OrderBy(kv => kv.Key.AliasId, StringComparer.Ordinal)
                .Take(limit)
                .Select(kv => kv.Value)
                .ToList();
            return Task.FromResult(page);
        }
    }

    public Task<IReadOnlyList<KeyName>> ListKeysDueForRotationAsync(DateTimeOffset now, int limit, IReadOnlyCollection<string> regions, CancellationToken cancellationToken)
    {
        lock (_lock)
        {
            IReadOnlyList<KeyName> due = _keys.Values
                .Where(k => k.State == KeyState.Enabled && k.NextRotationTime is { } next && next <= now && (k.Residency is null || regions.Contains(k.Residency)))
                .OrderBy(k => k.NextRotationTime)
                .Take(limit)
                .Select(k => k.Name)
                .ToList();
            return Task.FromResult(due);
        }
    }

    public Task<IReadOnlyList<KeyName>> ListKeysDueForDestructionAsync(DateTimeOffset now, int limit, CancellationToken cancellationToken)
    {
        lock (_lock)
        {
            // As the SQL stores: a destruction waiting out its back-off is left out, and a key whose
            // deletion is due is listed for it alone.
            bool Waiting(KeyName key, int version) =>
                _destructionFailures.TryGetValue((key.Tenant.Value, key.KeyId, version), out var failed) && failed.RetryTime > now;
            IReadOnlyList<KeyName> due = _keys.Values
                .Where(k => k.State == KeyState.DestroyScheduled && k.DestroyTime <= now
                    ? !Waiting(k.Name, 0)
                    : _versions[Id(k.Name)].Any(v => v.State == KeyState.DestroyScheduled && v.DestroyTime <= now && Material(v.Id) is not null && !Waiting(k.Name, v.Name.Version)))
                .Take(limit)
                .Select(k => k.Name)
                .ToList();
            return Task.FromResult(due);
        }
    }

    public Task<IReadOnlyList<DestructionFailure>> ListDestructionFailuresAsync(CancellationToken cancellationToken)
    {
        lock (_lock)
        {
            IReadOnlyList<DestructionFailure> failures = _destructionFailures.Values.Where(Pending).ToList();
            return Task.FromResult(failures);
        }
    }

    public Task RecordDestructionFailureAsync(DestructionFailure failure, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(failure);
        lock (_lock)
        {
            ThrowIfFailing();
            if (Pending(failure))
            {
                _destructionFailures[(failure.Key.Tenant.Value, failure.Key.KeyId, failure.Version ?? 0)] = failure;
            }

            return Task.CompletedTask;
        }
    }

    // Under _lock: whether a failed destruction is still to be done (DESTROY_SCHEDULED, material not erased).
    private bool Pending(DestructionFailure failure)
    {
        if (!_keys.TryGetValue(Id(failure.Key), out var key))
        {
            return false;
        }

        if (failure.Version is not { } number)
        {
            return key.State == KeyState.DestroyScheduled;
        }

        return _versions[Id(failure.Key)].Find(v => v.Name.Version == number) is { State: KeyState.DestroyScheduled } version && Material(version.Id) is not null;
    }

    public async Task<long> ReserveEncryptionsAsync(KeyVersionId id, long count, CancellationToken cancellationToken)
    {
        long total;
        lock (_lock)
        {
            ThrowIfFailing();
            var (versions, index) = Locate(id);
            var version = versions[index];
            versions[index] = version with { Usage = version.Usage with { EncryptCount = version.Usage.EncryptCount + count } };
            total = versions[index].Usage.EncryptCount;
        }

        if (Interlocked.Exchange(ref _afterNextReservation, null) is { } hold)
        {
            await hold();
        }

        return total;
    }

    public async Task<bool> RecordUsageAsync(UsageFlush flush, CancellationToken cancellationToken)
    {
        if (Interlocked.Exchange(ref _beforeNextUsageRecord, null) is { } hold)
        {
            await hold();
        }

        lock (_lock)
        {
            ThrowIfFailing();
            if (_usageFlushes.TryGetValue(flush.Node, out var applied) && applied.Sequence >= flush.Sequence)
            {
                return false;
            }

            foreach (var delta in flush.Deltas)
            {
                var (versions, index) = Locate(delta.Id);
                var usage = versions[index].Usage;
                versions[index] = versions[index] with
                {
                    Usage = usage with
                    {
                        DecryptCount = usage.DecryptCount + delta.Decryptions,
                        LastEncryptTime = Later(usage.LastEncryptTime, delta.LastEncryptTime),
                        LastDecryptTime = Later(usage.LastDecryptTime, delta.LastDecryptTime),
                    },
                };
            }

            _usageFlushes[flush.Node] = (flush.Sequence, flush.Time);
            foreach (var (node, _) in _usageFlushes.Where(n => n.Value.Time < flush.Time - UsageFlush.Retention).ToList())
            {
                _usageFlushes.Remove(node);
            }

            if (Interlocked.Exchange(ref _afterNextUsageRecord, null) is { } fail)
            {
                throw fail;
            }

            return true;
        }
    }

    public Task<string?> GetSettingAsync(string name, CancellationToken cancellationToken)
    {
        lock (_lock)
        {
            return Task.FromResult(_settings.GetValueOrDefault(name));
        }
    }

    public Task<string> SetSettingIfAbsentAsync(string name, string value, CancellationToken cancellationToken)
    {
        lock (_lock)
        {
            _settings.TryAdd(name, value);
            return Task.FromResult(_settings[name]);
        }
    }

    public Task SetSettingAsync(string name, string value, CancellationToken cancellationToken)
    {
        lock (_lock)
        {
            _settings[name] = value;
            return Task.CompletedTask;
        }
    }

    public Task CheckHealthAsync(CancellationToken cancellationToken) => Task.CompletedTask;

    /// <summary>What <see cref="GetDatabaseTimeAsync"/> answers: null (a database without a clock of its own), or a database server's time.</summary>
    public DateTimeOffset? DatabaseTime { get; set; }

    public Task<DateTimeOffset?> GetDatabaseTimeAsync(CancellationToken cancellationToken) => Task.FromResult(DatabaseTime);

    private static (string, string) Id(KeyName name) => (name.Tenant.Value, name.KeyId);

    // The primary as stored among the versions (its state and usage), as a real store's join returns it.
    private Key Fresh(Key key) => key with { Primary = _versions[Id(key.Name)].First(v => v.Name.Version == key.Primary.Name.Version) };

    private WrappedKeyMaterial? Material(KeyVersionId id) => _material.TryGetValue(id, out var bytes) && bytes is not null ? new WrappedKeyMaterial(bytes.ToArray()) : null;

    private (List<KeyVersion> Versions, int Index) Locate(KeyVersionId id)
    {
        foreach (var versions in _versions.Values)
        {
            var index = versions.FindIndex(v => v.Id == id);
            if (index >= 0)
            {
                return (versions, index);
            }
        }

        throw KmsErrors.Internal($"no key version {id}");
    }

    private void EnsureRequestFree(RequestRecord? request)
    {
        if (request is not null && _requests.ContainsKey((request.Tenant.Value, request.RequestId)))
        {
            throw KmsErrors.AlreadyExists($"request {request.RequestId}");
        }
    }

    private void Record(RequestRecord? request)
    {
        if (request is not null)
        {
            _requests[(request.Tenant.Value, request.RequestId)] = request;
        }
    }

    private void ThrowIfFailing()
    {
        if (FailNextWrite is { } failure)
        {
            FailNextWrite = null;
            throw failure;
        }
    }

    private static DateTimeOffset? Later(DateTimeOffset? a, DateTimeOffset? b) => a is null ? b : b is null ? a : a > b ? a : b;
}
