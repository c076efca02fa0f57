using Google.Protobuf.WellKnownTypes;
using Kms.Contracts.V1;

namespace Kms.Client;

// Access management: tenants, principals, API tokens, role bindings (docs/access-control.md).
public sealed partial class KmsClient
{
    /// <summary>Creates a tenant (deployment-admin). Not idempotent: sent again only when an attempt never reached a server, or the server says none of it ran (shed, or refused for a quota with a retry delay).</summary>
    public async Task<TenantInfo> CreateTenantAsync(string tenantId, string? displayName = null, CancellationToken cancellationToken = default) =>
        (await Access.CreateTenantAsync(new CreateTenantRequest { TenantId = tenantId, DisplayName = displayName ?? "" }, Options(cancellationToken)).ConfigureAwait(false)).Tenant;

    /// <summary>A tenant (<c>tenants/{tenant}</c>).</summary>
    public async Task<TenantInfo> GetTenantAsync(string tenantName, CancellationToken cancellationToken = default) =>
        (await Access.GetTenantAsync(new GetTenantRequest { Name = tenantName }, Options(cancellationToken)).ConfigureAwait(false)).Tenant;

    /// <summary>Every tenant, in id order, fetched page by page as the enumeration proceeds (deployment roles).</summary>
    public IAsyncEnumerable<TenantInfo> ListTenantsAsync(int pageSize = 0, CancellationToken cancellationToken = default) =>
        PagesAsync<TenantInfo>(
            async (token, ct) =>
            {
                var page = await Access.ListTenantsAsync(new ListTenantsRequest { PageSize = pageSize, PageToken = token }, Options(ct)).ConfigureAwait(false);
                return (page.Tenants, page.NextPageToken);
            },
            cancellationToken);

    /// <summary>
    /// Offboards a tenant: it becomes DELETING and its keys are scheduled for deletion after
    /// <paramref name="waitingPeriod"/> (7 to 30 days; 30 when null). Deployment-admin.
    /// </summary>
    public async Task<TenantInfo> DeleteTenantAsync(string tenantName, TimeSpan? waitingPeriod = null, CancellationToken cancellationToken = default)
    {
        var request = new DeleteTenantRequest { Name = tenantName };
        if (waitingPeriod is { } waiting)
        {
            request.WaitingPeriod = Duration.FromTimeSpan(waiting);
        }

        return (await Access.DeleteTenantAsync(request, Options(cancellationToken)).ConfigureAwait(false)).Tenant;
    }

    /// <summary>
    /// Stops a tenant's offboarding while its keys' waiting period runs: the tenant is ACTIVE
    /// again. Its keys stay DESTROY_SCHEDULED (the response counts them and gives the earliest
    /// destroy time) until a key manager of the tenant cancels each deletion. An ACTIVE tenant is
    /// answered unchanged, so a repeat is harmless. Deployment-admin.
    /// </summary>
    public async Task<CancelTenantDeletionResponse> CancelTenantDeletionAsync(string tenantName, CancellationToken cancellationToken = default) =>
        await Access.CancelTenantDeletionAsync(new CancelTenantDeletionRequest { Name = tenantName }, Options(cancellationToken)).ConfigureAwait(false);

    /// <summary>
    /// Registers a principal (<c>spiffe:…</c>, <c>cn:…</c>, <c>token:&lt;id&gt;</c> or <c>jwt:&lt;issuer&gt;:&lt;sub&gt;</c>) in
    /// <paramref name="tenantName"/>, or at deployment level when null. Not idempotent: sent
    /// again only when an attempt never reached a server, or the server says none of it ran (shed, or
    /// refused for a quota with a retry delay).
    /// </summary>
    public async Task<PrincipalInfo> CreatePrincipalAsync(string principal, string? tenantName = null, string? displayName = null, CancellationToken cancellationToken = default) =>
        (await Access.CreatePrincipalAsync(
            new CreatePrincipalRequest { Name = principal, Tenant = tenantName ?? "", DisplayName = displayName ?? "" },
            Options(cancellationToken)).ConfigureAwait(false)).Principal;

    /// <summary>A principal, by its typed name.</summary>
    public async Task<PrincipalInfo> GetPrincipalAsync(string principal, CancellationToken cancellationToken = default) =>
        (await Access.GetPrincipalAsync(new GetPrincipalRequest { Name = principal }, Options(cancellationToken)).ConfigureAwait(false)).Principal;

    /// <summary>The principals of a tenant (deployment-level ones when null), fetched page by page as the enumeration proceeds; DELETED ones are left out.</summary>
    public IAsyncEnumerable<PrincipalInfo> ListPrincipalsAsync(string? tenantName = null, int pageSize = 0, CancellationToken cancellationToken = default) =>
        ListPrincipalsAsync(tenantName, pageSize, showDeleted: false, cancellationToken);

    /// <summary>
    /// The principals of a tenant (deployment-level ones when null), fetched page by page as the
    /// enumeration proceeds; DELETED ones too when <paramref name="showDeleted"/>.
    /// </summary>
    public IAsyncEnumerable<PrincipalInfo> ListPrincipalsAsync(string? tenantName, int pageSize, bool showDeleted, CancellationToken cancellationToken = default) =>
        PagesAsync<PrincipalInfo>(
            async (token, ct) =>
            {
                var page = await Access.ListPrincipalsAsync(
                    new ListPrincipalsRequest { Tenant = tenantName ?? "", PageSize = pageSize, PageToken = token, ShowDeleted = showDeleted },
                    Options(ct)).ConfigureAwait(false);
                return (page.Principals, page.NextPageToken);
            },
            cancellationToken);

    /// <summary>
    /// Offboards a principal (deployment-admin): it becomes DELETED, its tokens are revoked, its
    /// role bindings removed and the grants naming it revoked, and it no longer authenticates.
    /// Its name is never registered again. Deleting a deleted principal succeeds, so a failed
    /// attempt is sent again.
    /// </summary>
    public async Task<PrincipalInfo> DeletePrincipalAsync(string principal, CancellationToken cancellationToken = default) =>
        (await Access.DeletePrincipalAsync(new DeletePrincipalRequest { Name = principal }, Options(cancellationToken)).ConfigureAwait(false)).Principal;

    /// <summary>
    /// Issues an API token to a <c>token:</c> principal: <paramref name="kind"/> SERVICE or
    /// SESSION, living <paramref name="lifetime"/> (the kind's default when null). The secret
    /// is in the response only, never again.
    /// </summary>
    /// <remarks>Not idempotent (a repeat would leave a second live token nobody holds), so it is sent again only when an attempt never reached a server, or the server says none of it ran (shed, or refused for a quota with a retry delay).</remarks>
    public async Task<CreateApiTokenResponse> CreateApiTokenAsync(string principal, string kind, TimeSpan? lifetime = null, CancellationToken cancellationToken = default)
    {
        var request = new CreateApiTokenRequest { Principal = principal, Kind = kind };
        if (lifetime is { } life)
        {
            request.Lifetime = Duration.FromTimeSpan(life);
        }

        return await Access.CreateApiTokenAsync(request, Options(cancellationToken)).ConfigureAwait(false);
    }

    /// <summary>
    /// A principal's tokens, revoked and expired ones too, newest first, without their secrets,
    /// fetched page by page as the enumeration proceeds (<paramref name="pageSize"/> 0: the server's
    /// default, 1000).
    /// </summary>
    public IAsyncEnumerable<ApiTokenInfo> ListApiTokensAsync(string principal, int pageSize = 0, CancellationToken cancellationToken = default) =>
        PagesAsync<ApiTokenInfo>(
            async (token, ct) =>
            {
                var page = await Access.ListApiTokensAsync(
                    new ListApiTokensRequest { Principal = principal, PageSize = pageSize, PageToken = token }, Options(ct)).ConfigureAwait(false);
                return (page.Tokens, page.NextPageToken);
            },
            cancellationToken);

    /// <summary>Revokes a token (by its id) at once.</summary>
    public async Task RevokeApiTokenAsync(string tokenId, CancellationToken cancellationToken = default) =>
        await Access.RevokeApiTokenAsync(new RevokeApiTokenRequest { Id = tokenId }, Options(cancellationToken)).ConfigureAwait(false);

    /// <summary>Grants a role: a tenant role in <paramref name="tenantName"/> (the principal's tenant), or a deployment role when null.</summary>
    public async Task<RoleBindingInfo> SetRoleBindingAsync(string principal, string role, string? tenantName = null, CancellationToken cancellationToken = default) =>
        (await Access.SetRoleBindingAsync(
            new SetRoleBindingRequest { Principal = principal, Role = role, Tenant = tenantName ?? "" },
            Options(cancellationToken)).ConfigureAwait(false)).Binding;

    /// <summary>Removes a role.</summary>
    public async Task DeleteRoleBindingAsync(string principal, string role, string? tenantName = null, CancellationToken cancellationToken = default) =>
        await Access.DeleteRoleBindingAsync(
            new DeleteRoleBindingRequest { Principal = principal, Role = role, Tenant = tenantName ?? "" },
            Options(cancellationToken)).ConfigureAwait(false);

    /// <summary>
    /// The role bindings of a tenant (deployment-wide ones when null), for access reviews, in
    /// principal order, fetched page by page as the enumeration proceeds (<paramref name="pageSize"/>
    /// 0: the server's default, 1000).
    /// </summary>
    public IAsyncEnumerable<RoleBindingInfo> ListRoleBindingsAsync(string? tenantName = null, int pageSize = 0, CancellationToken cancellationToken = default) =>
        PagesAsync<RoleBindingInfo>(
            async (token, ct) =>
            {
                var page = await Access.ListRoleBindingsAsync(
                    new ListRoleBindingsRequest { Tenant = tenantName ?? "", PageSize = pageSize, PageToken = token }, Options(ct)).ConfigureAwait(false);
                return (page.Bindings, page.NextPageToken);
            },
            cancellationToken);

    /// <summary>
    /// Registers the first deployment admin, with the one-time bootstrap credential as this
    /// client's token; the call consumes it. Sent again only when an attempt never reached a server, or the server says none of it ran (shed, or refused for a quota with a retry delay).
    /// </summary>
    public async Task<BootstrapResponse> BootstrapAsync(string admin, string? displayName = null, CancellationToken cancellationToken = default) =>
        await Access.BootstrapAsync(new BootstrapRequest { Admin = admin, DisplayName = displayName ?? "" }, Options(cancellationToken)).ConfigureAwait(false);
}
