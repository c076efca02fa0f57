using Kms.Core.Crypto;
using Kms.Core.Errors;
using Kms.Core.Keys;
using Kms.Core.Names;
using Kms.Core.Ports;

namespace Kms.Testing.Fakes;

/// <summary>
/// An in-memory <see cref="IKeyStore"/> for domain tests. It passes the same storage
/// contract suite as the real backends, so tests written against it mean something.
/// </summary>
public sealed class InMemoryKeyStore : IKeyStore
{
    private readonly Lock _lock = new();
    private readonly SortedDictionary<(string Tenant, string KeyId), Key> _keys = new();
    private readonly Dictionary<KeyVersionId, (KeyVersion Version, byte[] Material)> _versions = [];
    private readonly Dictionary<(string Tenant, string RequestId), RequestRecord> _requests = [];
    private readonly Dictionary<string, string> _settings = [];

    public Task CreateKeyAsync(Key key, WrappedKeyMaterial primaryMaterial, RequestRecord? request, CancellationToken cancellationToken)
    {
        lock (_lock)
        {
            if (request is not null && _requests.ContainsKey((request.Tenant.Value, request.RequestId)))
            {
                throw KmsErrors.AlreadyExists($"request {request.RequestId}");
            }

            if (_keys.ContainsKey((key.Name.Tenant.Value, key.Name.KeyId)))
            {
                throw KmsErrors.AlreadyExists(key.Name.ToString());
            }

            if (_versions.ContainsKey(key.Primary.Id))
            {
                throw KmsErrors.AlreadyExists(key.Primary.Name.ToString());
            }

            _keys[(key.Name.Tenant.Value, key.Name.KeyId)] = key;
            _versions[key.Primary.Id] = (key.Primary, primaryMaterial.Bytes.ToArray());
            if (request is not null)
            {
                _requests[(request.Tenant.Value, request.RequestId)] = request;
            }
        }

        return Task.CompletedTask;
    }

    public Task<Key?> GetKeyAsync(KeyName name, CancellationToken cancellationToken)
    {
        lock (_lock)
        {
            return Task.FromResult(_keys.GetValueOrDefault((name.Tenant.Value, name.KeyId)));
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
                .Select(kv => kv.Value)
                .ToList();
            return Task.FromResult(page);
        }
    }

    public Task<KeyVersionMaterial?> GetPrimaryMaterialAsync(KeyName name, CancellationToken cancellationToken)
    {
        lock (_lock)
        {
            if (!_keys.TryGetValue((name.Tenant.Value, name.KeyId), out var key))
            {
                return Task.FromResult<KeyVersionMaterial?>(null);
            }

            var (version, material) = _versions[key.Primary.Id];
            return Task.FromResult<KeyVersionMaterial?>(new KeyVersionMaterial(key, version, new WrappedKeyMaterial(material.ToArray())));
        }
    }

    public Task<KeyVersionMaterial?> FindVersionMaterialAsync(TenantId tenant, KeyVersionId id, CancellationToken cancellationToken)
    {
        lock (_lock)
        {
            if (!_versions.TryGetValue(id, out var found) || found.Version.Name.Key.Tenant != tenant)
            {
                return Task.FromResult<KeyVersionMaterial?>(null);
            }

            var key = _keys[(tenant.Value, found.Version.Name.Key.KeyId)];
            return Task.FromResult<KeyVersionMaterial?>(new KeyVersionMaterial(key, found.Version, new WrappedKeyMaterial(found.Material.ToArray())));
        }
    }

    public Task<RequestRecord?> FindRequestAsync(TenantId tenant, string requestId, CancellationToken cancellationToken)
    {
        lock (_lock)
        {
            return Task.FromResult(_requests.GetValueOrDefault((tenant.Value, requestId)));
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

    public Task CheckHealthAsync(CancellationToken cancellationToken) => Task.CompletedTask;
}
