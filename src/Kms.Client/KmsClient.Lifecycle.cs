using Google.Protobuf.WellKnownTypes;
using Kms.Client.Failover;
using Kms.Contracts.V1;

namespace Kms.Client;

// Key and version lifecycle: update, versions, enable/disable, scheduled deletion.
public sealed partial class KmsClient
{
    /// <summary>Updates the fields of <c>request.Key</c> named in <c>request.UpdateMask</c> (labels, rotation_period, next_rotation_time, min_decryption_version).</summary>
    public async Task<Key> UpdateKeyAsync(UpdateKeyRequest request, CancellationToken cancellationToken = default) =>
        (await _stub.UpdateKeyAsync(request, Options(cancellationToken)).ConfigureAwait(false)).Key;

    /// <summary>Every version of a key, in version order, fetched page by page as the enumeration proceeds.</summary>
    public IAsyncEnumerable<KeyVersion> ListKeyVersionsAsync(string keyName, int pageSize = 0, CancellationToken cancellationToken = default) =>
        PagesAsync<KeyVersion>(
            async (token, ct) =>
            {
                var page = await _stub.ListKeyVersionsAsync(new ListKeyVersionsRequest { Parent = keyName, PageSize = pageSize, PageToken = token }, Options(ct)).ConfigureAwait(false);
                return (page.KeyVersions, page.NextPageToken);
            },
            cancellationToken);

    /// <summary>One key version (<c>tenants/{t}/keys/{k}/versions/{n}</c>), with its usage.</summary>
    public async Task<KeyVersion> GetKeyVersionAsync(string versionName, CancellationToken cancellationToken = default) =>
        (await _stub.GetKeyVersionAsync(new GetKeyVersionRequest { Name = versionName }, Options(cancellationToken)).ConfigureAwait(false)).KeyVersion;

    /// <summary>Makes an enabled version the primary (the one that encrypts).</summary>
    public async Task<Key> UpdatePrimaryVersionAsync(string keyName, int version, CancellationToken cancellationToken = default) =>
        (await _stub.UpdatePrimaryVersionAsync(new UpdatePrimaryVersionRequest { Name = keyName, Version = version }, Options(cancellationToken)).ConfigureAwait(false)).Key;

    /// <summary>Enables a key (enabling an enabled key changes nothing).</summary>
    public async Task<Key> EnableKeyAsync(string keyName, CancellationToken cancellationToken = default) =>
        (await _stub.EnableKeyAsync(new EnableKeyRequest { Name = keyName }, Options(cancellationToken)).ConfigureAwait(false)).Key;

    /// <summary>Disables a key: no operation may use it until it is enabled again.</summary>
    public async Task<Key> DisableKeyAsync(string keyName, CancellationToken cancellationToken = default) =>
        (await _stub.DisableKeyAsync(new DisableKeyRequest { Name = keyName }, Options(cancellationToken)).ConfigureAwait(false)).Key;

    /// <summary>Enables a key version.</summary>
    public async Task<KeyVersion> EnableKeyVersionAsync(string versionName, CancellationToken cancellationToken = default) =>
        (await _stub.EnableKeyVersionAsync(new EnableKeyVersionRequest { Name = versionName }, Options(cancellationToken)).ConfigureAwait(false)).KeyVersion;

    /// <summary>Disables a key version (not the primary).</summary>
    public async Task<KeyVersion> DisableKeyVersionAsync(string versionName, CancellationToken cancellationToken = default) =>
        (await _stub.DisableKeyVersionAsync(new DisableKeyVersionRequest { Name = versionName }, Options(cancellationToken)).ConfigureAwait(false)).KeyVersion;

    /// <summary>
    /// Schedules a key and all its versions for destruction after <paramref name="waitingPeriod"/>
    /// (7 to 30 days; the server's default, 30 days, when null). A <paramref name="requestId"/>
    /// is generated when none is given, so a retry of this call is applied once.
    /// </summary>
    public async Task<Key> ScheduleKeyDeletionAsync(string keyName, TimeSpan? waitingPeriod = null, string? requestId = null, CancellationToken cancellationToken = default)
    {
        var request = new ScheduleKeyDeletionRequest { Name = keyName, RequestId = requestId ?? RetrySafety.NewRequestId() };
        if (waitingPeriod is { } waiting)
        {
            request.WaitingPeriod = Duration.FromTimeSpan(waiting);
        }

        return (await _stub.ScheduleKeyDeletionAsync(request, Options(cancellationToken)).ConfigureAwait(false)).Key;
    }

    /// <summary>Cancels a scheduled key deletion; the key becomes DISABLED. Applied once per <paramref name="requestId"/> (generated when null).</summary>
    public async Task<Key> CancelKeyDeletionAsync(string keyName, string? requestId = null, CancellationToken cancellationToken = default) =>
        (await _stub.CancelKeyDeletionAsync(
            new CancelKeyDeletionRequest { Name = keyName, RequestId = requestId ?? RetrySafety.NewRequestId() },
            Options(cancellationToken)).ConfigureAwait(false)).Key;

    /// <summary>
    /// Schedules one version (not the primary) for destruction after <paramref name="waitingPeriod"/>
    /// (7 to 30 days; 30 when null). Applied once per <paramref name="requestId"/> (generated when null).
    /// </summary>
    public async Task<KeyVersion> ScheduleKeyVersionDestructionAsync(string versionName, TimeSpan? waitingPeriod = null, string? requestId = null, CancellationToken cancellationToken = default)
    {
        var request = new ScheduleKeyVersionDestructionRequest { Name = versionName, RequestId = requestId ?? RetrySafety.NewRequestId() };
        if (waitingPeriod is { } waiting)
        {
            request.WaitingPeriod = Duration.FromTimeSpan(waiting);
        }

        return (await _stub.ScheduleKeyVersionDestructionAsync(request, Options(cancellationToken)).ConfigureAwait(false)).KeyVersion;
    }

    /// <summary>Cancels a scheduled version destruction; the version becomes DISABLED. Applied once per <paramref name="requestId"/> (generated when null).</summary>
    public async Task<KeyVersion> RestoreKeyVersionAsync(string versionName, string? requestId = null, CancellationToken cancellationToken = default) =>
        (await _stub.RestoreKeyVersionAsync(
            new RestoreKeyVersionRequest { Name = versionName, RequestId = requestId ?? RetrySafety.NewRequestId() },
            Options(cancellationToken)).ConfigureAwait(false)).KeyVersion;
}
