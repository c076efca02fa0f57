using Kms.Core.Crypto;
using Kms.Core.Keys;
using Kms.Core.Names;

namespace Kms.Core.Ports;

/// <summary>
/// Durable metadata: keys, versions with their wrapped material, settings. Every query
/// that reads a tenant's data takes the tenant; no query crosses tenants.
/// </summary>
/// <remarks>
/// A completed write is durable (it survives a crash or power loss). Backends pass the
/// shared contract suite in tests/Kms.Storage.Tests.
/// </remarks>
public interface IKeyStore
{
    /// <summary>
    /// Stores a new key with its first version, atomically. With a request id, the id is
    /// recorded in the same transaction, so a retry finds it.
    /// </summary>
    /// <exception cref="Errors.KmsException">AlreadyExists if the key id is taken (or the request id was recorded meanwhile).</exception>
    Task CreateKeyAsync(Key key, WrappedKeyMaterial primaryMaterial, RequestRecord? request, CancellationToken cancellationToken);

    /// <summary>The key, or null.</summary>
    Task<Key?> GetKeyAsync(KeyName name, CancellationToken cancellationToken);

    /// <summary>Keys of a tenant in key-id order, starting after <paramref name="afterKeyId"/>.</summary>
    Task<IReadOnlyList<Key>> ListKeysAsync(TenantId tenant, string? afterKeyId, int limit, CancellationToken cancellationToken);

    /// <summary>The key with its primary version's wrapped material, or null.</summary>
    Task<KeyVersionMaterial?> GetPrimaryMaterialAsync(KeyName name, CancellationToken cancellationToken);

    /// <summary>The version with this id in this tenant, with its key and material, or null.</summary>
    Task<KeyVersionMaterial?> FindVersionMaterialAsync(TenantId tenant, KeyVersionId id, CancellationToken cancellationToken);

    /// <summary>A recorded request id, or null.</summary>
    Task<RequestRecord?> FindRequestAsync(TenantId tenant, string requestId, CancellationToken cancellationToken);

    /// <summary>A deployment-wide setting (e.g. the domain key's check value), or null.</summary>
    Task<string?> GetSettingAsync(string name, CancellationToken cancellationToken);

    /// <summary>Sets a setting only if it is not set yet; returns the value in force afterwards.</summary>
    Task<string> SetSettingIfAbsentAsync(string name, string value, CancellationToken cancellationToken);

    /// <summary>Cheap liveness probe of the backend.</summary>
    Task CheckHealthAsync(CancellationToken cancellationToken);
}

/// <summary>A key, one of its versions, and that version's wrapped material.</summary>
public sealed record KeyVersionMaterial(Key Key, KeyVersion Version, WrappedKeyMaterial Material);

/// <summary>
/// A client request id (idempotency key) as recorded with the mutation it applied.
/// <paramref name="Fingerprint"/> is a hash of the request, so a reuse of the id for another
/// request is recognised.
/// </summary>
public sealed record RequestRecord(TenantId Tenant, string RequestId, string Operation, byte[] Fingerprint, string Resource, DateTimeOffset CreateTime);
