using Kms.Contracts.V1;

namespace Kms.Client;

// Key policies, grants and the access review of a key.
public sealed partial class KmsClient
{
    /// <summary>Replaces a key's policy (who, beyond their role, may use it for what); no entries removes it. Returns the entries in force.</summary>
    public async Task<IReadOnlyList<KeyPolicyEntry>> SetKeyPolicyAsync(string keyName, IEnumerable<KeyPolicyEntry> entries, CancellationToken cancellationToken = default) =>
        (await _stub.SetKeyPolicyAsync(new SetKeyPolicyRequest { Name = keyName, Entries = { entries } }, Options(cancellationToken)).ConfigureAwait(false)).Entries;

    /// <summary>A key's policy; empty when it has none.</summary>
    public async Task<IReadOnlyList<KeyPolicyEntry>> GetKeyPolicyAsync(string keyName, CancellationToken cancellationToken = default) =>
        (await _stub.GetKeyPolicyAsync(new GetKeyPolicyRequest { Name = keyName }, Options(cancellationToken)).ConfigureAwait(false)).Entries;

    /// <summary>Lets <c>grant.Grantee</c> use a policy-restricted key for <c>grant.Operations</c> when the context contains <c>grant.ContextEquals</c>.</summary>
    /// <remarks>Not idempotent (a repeat would leave a second grant), so it is sent again only when an attempt never reached a server, or the server says none of it ran (shed, or refused for a quota with a retry delay).</remarks>
    public async Task<KeyGrant> CreateGrantAsync(string keyName, KeyGrant grant, CancellationToken cancellationToken = default) =>
        (await _stub.CreateGrantAsync(new CreateGrantRequest { Parent = keyName, Grant = grant }, Options(cancellationToken)).ConfigureAwait(false)).Grant;

    /// <summary>
    /// A key's active grants, oldest first, fetched page by page as the enumeration proceeds
    /// (<paramref name="pageSize"/> 0: the server's default, 1000).
    /// </summary>
    public IAsyncEnumerable<KeyGrant> ListGrantsAsync(string keyName, int pageSize = 0, CancellationToken cancellationToken = default) =>
        PagesAsync<KeyGrant>(
            async (token, ct) =>
            {
                var page = await _stub.ListGrantsAsync(new ListGrantsRequest { Parent = keyName, PageSize = pageSize, PageToken = token }, Options(ct)).ConfigureAwait(false);
                return (page.Grants, page.NextPageToken);
            },
            cancellationToken);

    /// <summary>Revokes a grant (<c>tenants/{t}/keys/{k}/grants/{id}</c>) at once.</summary>
    /// <remarks>Revoking a revoked grant succeeds, so a call sent again after its answer was lost is answered OK.</remarks>
    public async Task RevokeGrantAsync(string grantName, CancellationToken cancellationToken = default) =>
        await _stub.RevokeGrantAsync(new RevokeGrantRequest { Name = grantName }, Options(cancellationToken)).ConfigureAwait(false);

    /// <summary>Access review: who may do what with a key (roles, policy, grants).</summary>
    public async Task<IReadOnlyList<PrincipalPermissions>> TestPermissionsAsync(string keyName, CancellationToken cancellationToken = default) =>
        (await _stub.TestPermissionsAsync(new TestPermissionsRequest { Name = keyName }, Options(cancellationToken)).ConfigureAwait(false)).Principals;
}
