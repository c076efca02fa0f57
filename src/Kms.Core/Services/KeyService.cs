using System.Security.Cryptography;
using System.Text;
using Kms.Core.Errors;
using Kms.Core.Keys;
using Kms.Core.Names;
using Kms.Core.Ports;

namespace Kms.Core.Services;

/// <summary>Creates and reads keys. Material is generated in the HSM; only its wrapped form is stored.</summary>
public sealed class KeyService(IHsm hsm, IKeyStore store, TimeProvider time)
{
    private const string CreateKeyOperation = "CreateKey";

    /// <summary>
    /// Creates a key and its version 1 (primary). With a request id, a retry of the same
    /// request returns the key the first call created instead of failing.
    /// </summary>
    /// <exception cref="KmsException">
    /// InvalidArgument (bad id, labels, or a request id reused for another request),
    /// NotFound (parent outside the caller's tenant), AlreadyExists (key id taken).
    /// </exception>
    public async Task<CreateKeyResult> CreateKeyAsync(Caller caller, CreateKeyCommand command, CancellationToken cancellationToken)
    {
        caller.EnsureSameTenant(command.Parent, command.Parent.ResourceName);
        var name = KeyName.Create(command.Parent, command.KeyId);
        var requestId = ValidateRequestId(command.RequestId);
        var fingerprint = Fingerprint(name, command);

        if (requestId is not null && await ReplayAsync(name.Tenant, requestId, fingerprint, cancellationToken) is { } replayed)
        {
            return new CreateKeyResult(replayed, Replayed: true);
        }

        var now = Now();
        var material = await hsm.GenerateAes256KeyAsync(cancellationToken);
        var primary = new KeyVersion(name.Version(1), KeyVersionId.NewId(), KeyState.Enabled, KeyAlgorithm.Aes256Gcm, now);
        var key = new Key(name, command.Purpose, KeyState.Enabled, primary, now, command.Labels);
        var request = requestId is null ? null : new RequestRecord(name.Tenant, requestId, CreateKeyOperation, fingerprint, name.ToString(), now);

        try
        {
            await store.CreateKeyAsync(key, material, request, cancellationToken);
        }
        catch (KmsException e) when (e.Code == KmsErrorCode.AlreadyExists && requestId is not null)
        {
            // A concurrent retry with the same request id may have won the race.
            if (await ReplayAsync(name.Tenant, requestId, fingerprint, cancellationToken) is { } raced)
            {
                return new CreateKeyResult(raced, Replayed: true);
            }

            throw;
        }

        return new CreateKeyResult(key, Replayed: false);
    }

    /// <summary>A key's metadata.</summary>
    /// <exception cref="KmsException">NotFound, also for a key of another tenant.</exception>
    public async Task<Key> GetKeyAsync(Caller caller, KeyName name, CancellationToken cancellationToken)
    {
        caller.EnsureSameTenant(name.Tenant, name.ToString());
        return await store.GetKeyAsync(name, cancellationToken) ?? throw KmsErrors.NotFound(name.ToString());
    }

    /// <summary>One page of a tenant's keys, in key-id order.</summary>
    public async Task<KeyPage> ListKeysAsync(Caller caller, TenantId parent, int pageSize, string? pageToken, CancellationToken cancellationToken)
    {
        caller.EnsureSameTenant(parent, parent.ResourceName);
        if (pageSize < 0)
        {
            throw KmsErrors.InvalidArgument("page_size", "must not be negative");
        }

        var size = pageSize == 0 ? Limits.DefaultPageSize : Math.Min(pageSize, Limits.MaxPageSize);
        var after = PageToken.Decode(parent, pageToken);

        // One extra row tells whether another page follows, without a second query.
        var rows = await store.ListKeysAsync(parent, after, size + 1, cancellationToken);
        var page = rows.Take(size).ToList();
        var next = rows.Count > size ? PageToken.Encode(parent, page[^1].Name.KeyId) : null;
        return new KeyPage(page, next);
    }

    private async Task<Key?> ReplayAsync(TenantId tenant, string requestId, byte[] fingerprint, CancellationToken cancellationToken)
    {
        var recorded = await store.FindRequestAsync(tenant, requestId, cancellationToken);
        if (recorded is null)
        {
            return null;
        }

        if (recorded.Operation != CreateKeyOperation || !CryptographicOperations.FixedTimeEquals(recorded.Fingerprint, fingerprint))
        {
            throw KmsErrors.InvalidArgument("request_id", "was already used for a different request");
        }

        var name = KeyName.Parse(recorded.Resource, "request_id");
        return await store.GetKeyAsync(name, cancellationToken) ?? throw KmsErrors.NotFound(recorded.Resource);
    }

    private static string? ValidateRequestId(string? requestId)
    {
        if (string.IsNullOrEmpty(requestId))
        {
            return null;
        }

        if (requestId.Length > Limits.MaxRequestIdLength || requestId.Any(c => c < 0x21 || c > 0x7e))
        {
            throw KmsErrors.InvalidArgument("request_id", $"must be at most {Limits.MaxRequestIdLength} printable ASCII characters");
        }

        return requestId;
    }

    private static byte[] Fingerprint(KeyName name, CreateKeyCommand command)
    {
        var canonical = new StringBuilder()
            .Append(CreateKeyOperation).Append('\n')
            .Append(name).Append('\n')
            .Append((int)command.Purpose).Append('\n');
        foreach (var (key, value) in command.Labels)
        {
            canonical.Append(key.Length).Append(':').Append(key).Append(value.Length).Append(':').Append(value).Append('\n');
        }

        return SHA256.HashData(Encoding.UTF8.GetBytes(canonical.ToString()));
    }

    // Stored with millisecond precision: truncate now, so what CreateKey returns equals what GetKey reads back.
    private DateTimeOffset Now() => DateTimeOffset.FromUnixTimeMilliseconds(time.GetUtcNow().ToUnixTimeMilliseconds());
}

/// <summary>What CreateKey needs, validated except for the key id (validated with the tenant).</summary>
public sealed record CreateKeyCommand(TenantId Parent, string KeyId, KeyPurpose Purpose, KeyLabels Labels, string? RequestId);

/// <summary>The created key, and whether it was created by an earlier call with the same request id.</summary>
public sealed record CreateKeyResult(Key Key, bool Replayed);

/// <summary>One page of keys and the token of the next page (null on the last).</summary>
public sealed record KeyPage(IReadOnlyList<Key> Keys, string? NextPageToken);
