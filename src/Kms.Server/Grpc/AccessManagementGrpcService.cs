using Grpc.Core;
using Kms.Contracts.V1;
using Kms.Core.Access;
using Kms.Core.Names;
using Kms.Core.Services;
using Kms.Server.Security;

namespace Kms.Server.Grpc;

/// <summary>
/// kms.v1.AccessManagementService: tenants, principals, API tokens, role bindings and the
/// bootstrap of the first deployment admin. Authorization happened in the
/// <see cref="AuthorizationInterceptor"/>; every change makes this node forget the callers
/// it had authenticated, so it takes effect at once here (and within the credential cache
/// time on other nodes).
/// </summary>
internal sealed class AccessManagementGrpcService(AccessService access, CallerAuthentication authentication, ListPageTokens pageTokens)
    : AccessManagementService.AccessManagementServiceBase
{
    public override async Task<CreateTenantResponse> CreateTenant(CreateTenantRequest request, ServerCallContext context)
    {
        var tenant = await access.CreateTenantAsync(TenantId.Parse(request.TenantId, "tenant_id"), request.DisplayName, context.CancellationToken);
        return new CreateTenantResponse { Tenant = AccessMapping.ToProto(tenant) };
    }

    public override async Task<GetTenantResponse> GetTenant(GetTenantRequest request, ServerCallContext context) =>
        new() { Tenant = AccessMapping.ToProto(await access.GetTenantAsync(TenantId.ParseResourceName(request.Name, "name"), context.CancellationToken)) };

    public override async Task<ListTenantsResponse> ListTenants(ListTenantsRequest request, ServerCallContext context)
    {
        var caller = CallerResolver.Current(context);
        var page = await access.ListTenantsAsync(request.PageSize,
            pageTokens.Open("ListTenants", caller, [], request.PageToken, "listing"), context.CancellationToken);
        var response = new ListTenantsResponse { NextPageToken = pageTokens.Seal("ListTenants", caller, [], page.NextPageToken) };
        response.Tenants.AddRange(page.Items.Select(AccessMapping.ToProto));
        return response;
    }

    public override async Task<DeleteTenantResponse> DeleteTenant(DeleteTenantRequest request, ServerCallContext context)
    {
        var tenant = await ThenForgetAsync(access.DeleteTenantAsync(TenantId.ParseResourceName(request.Name, "name"),
            ProtoMapping.FromProto(request.WaitingPeriod, "waiting_period"), context.CancellationToken));
        return new DeleteTenantResponse { Tenant = AccessMapping.ToProto(tenant) };
    }

    public override async Task<CancelTenantDeletionResponse> CancelTenantDeletion(CancelTenantDeletionRequest request, ServerCallContext context)
    {
        var cancelled = await ThenForgetAsync(access.CancelTenantDeletionAsync(TenantId.ParseResourceName(request.Name, "name"), context.CancellationToken));
        return new CancelTenantDeletionResponse
        {
            Tenant = AccessMapping.ToProto(cancelled.Tenant),
            ScheduledKeys = cancelled.ScheduledKeys,
            EarliestDestroyTime = cancelled.EarliestDestroyTime is { } at ? Google.Protobuf.WellKnownTypes.Timestamp.FromDateTimeOffset(at) : null,
        };
    }

    public override async Task<CreatePrincipalResponse> CreatePrincipal(CreatePrincipalRequest request, ServerCallContext context)
    {
        var principal = await ThenForgetAsync(access.CreatePrincipalAsync(
            PrincipalName.Parse(request.Name, "name"), AccessMapping.OptionalTenant(request.Tenant, "tenant"), request.DisplayName, context.CancellationToken));
        return new CreatePrincipalResponse { Principal = AccessMapping.ToProto(principal) };
    }

    public override async Task<GetPrincipalResponse> GetPrincipal(GetPrincipalRequest request, ServerCallContext context) =>
        new() { Principal = AccessMapping.ToProto(await access.GetPrincipalAsync(PrincipalName.ParseExisting(request.Name, "name"), context.CancellationToken)) };

    public override async Task<ListPrincipalsResponse> ListPrincipals(ListPrincipalsRequest request, ServerCallContext context)
    {
        var caller = CallerResolver.Current(context);
        var tenant = AccessMapping.OptionalTenant(request.Tenant, "tenant");
        string?[] filter = [tenant?.ResourceName, request.ShowDeleted ? "show_deleted" : ""];
        var page = await access.ListPrincipalsAsync(tenant, request.PageSize,
            pageTokens.Open("ListPrincipals", caller, filter, request.PageToken, "tenant and show_deleted"), request.ShowDeleted, context.CancellationToken);
        var response = new ListPrincipalsResponse { NextPageToken = pageTokens.Seal("ListPrincipals", caller, filter, page.NextPageToken) };
        response.Principals.AddRange(page.Items.Select(AccessMapping.ToProto));
        return response;
    }

    public override async Task<DeletePrincipalResponse> DeletePrincipal(DeletePrincipalRequest request, ServerCallContext context)
    {
        var principal = await ThenForgetAsync(access.DeletePrincipalAsync(CallerResolver.Current(context), PrincipalName.ParseExisting(request.Name, "name"), context.CancellationToken));
        return new DeletePrincipalResponse { Principal = AccessMapping.ToProto(principal) };
    }

    public override async Task<CreateApiTokenResponse> CreateApiToken(CreateApiTokenRequest request, ServerCallContext context)
    {
        // Forgets too: a credential refused meanwhile is checked again, and the failures counted per
        // client address are dropped, so the new token is served at once wherever it is used from.
        var (token, text) = await ThenForgetAsync(access.CreateApiTokenAsync(
            PrincipalName.Parse(request.Principal, "principal"), AccessMapping.TokenKind(request.Kind),
            ProtoMapping.FromProto(request.Lifetime, "lifetime"), context.CancellationToken));
        return new CreateApiTokenResponse { Token = AccessMapping.ToProto(token), Secret = text };
    }

    public override async Task<ListApiTokensResponse> ListApiTokens(ListApiTokensRequest request, ServerCallContext context)
    {
        var caller = CallerResolver.Current(context);
        var principal = PrincipalName.ParseExisting(request.Principal, "principal");
        string?[] filter = [principal.ToString()];
        var page = await access.ListApiTokensAsync(principal, request.PageSize,
            pageTokens.Open("ListApiTokens", caller, filter, request.PageToken, "principal"), context.CancellationToken);
        var response = new ListApiTokensResponse { NextPageToken = pageTokens.Seal("ListApiTokens", caller, filter, page.NextPageToken) };
        response.Tokens.AddRange(page.Items.Select(AccessMapping.ToProto));
        return response;
    }

    public override async Task<RevokeApiTokenResponse> RevokeApiToken(RevokeApiTokenRequest request, ServerCallContext context)
    {
        await ThenForgetAsync(access.RevokeApiTokenAsync(ApiTokenSecret.ParseId(request.Id, "id"), context.CancellationToken));
        return new RevokeApiTokenResponse();
    }

    public override async Task<SetRoleBindingResponse> SetRoleBinding(SetRoleBindingRequest request, ServerCallContext context)
    {
        var binding = await ThenForgetAsync(access.SetRoleBindingAsync(
            CallerResolver.Current(context),
            PrincipalName.Parse(request.Principal, "principal"), Roles.Parse(request.Role, "role"),
            AccessMapping.OptionalTenant(request.Tenant, "tenant"), context.CancellationToken));
        return new SetRoleBindingResponse { Binding = AccessMapping.ToProto(binding) };
    }

    public override async Task<DeleteRoleBindingResponse> DeleteRoleBinding(DeleteRoleBindingRequest request, ServerCallContext context)
    {
        await ThenForgetAsync(access.DeleteRoleBindingAsync(
            PrincipalName.ParseExisting(request.Principal, "principal"), Roles.Parse(request.Role, "role"),
            AccessMapping.OptionalTenant(request.Tenant, "tenant"), context.CancellationToken));
        return new DeleteRoleBindingResponse();
    }

    public override async Task<ListRoleBindingsResponse> ListRoleBindings(ListRoleBindingsRequest request, ServerCallContext context)
    {
        var caller = CallerResolver.Current(context);
        var tenant = AccessMapping.OptionalTenant(request.Tenant, "tenant");
        string?[] filter = [tenant?.ResourceName];
        var page = await access.ListRoleBindingsAsync(tenant, request.PageSize,
            pageTokens.Open("ListRoleBindings", caller, filter, request.PageToken, "tenant"), context.CancellationToken);
        var response = new ListRoleBindingsResponse { NextPageToken = pageTokens.Seal("ListRoleBindings", caller, filter, page.NextPageToken) };
        response.Bindings.AddRange(page.Items.Select(AccessMapping.ToProto));
        return response;
    }

    public override async Task<BootstrapResponse> Bootstrap(BootstrapRequest request, ServerCallContext context)
    {
        var (admin, session) = await ThenForgetAsync(access.BootstrapAsync(
            CallerResolver.Current(context), PrincipalName.Parse(request.Admin, "admin"), request.DisplayName, context.CancellationToken));
        return new BootstrapResponse { Admin = AccessMapping.ToProto(admin), SessionToken = session ?? "" };
    }

    // Forgets the callers this node remembers after an access write, whether it answered or threw:
    // a write that failed after its first commit (a DeleteTenant whose keys' scheduling failed, a
    // commit whose acknowledgement was lost) has changed who may call all the same, and this node
    // would otherwise serve the change's callers until its next read of the change feed.
    // (A write refused before it changed anything forgets them too: they are authenticated again.)
    private async Task<T> ThenForgetAsync<T>(Task<T> write)
    {
        try
        {
            return await write;
        }
        finally
        {
            authentication.Forget();
        }
    }

    private Task<bool> ThenForgetAsync(Task write) => ThenForgetAsync(Done(write));

    private static async Task<bool> Done(Task write)
    {
        await write;
        return true;
    }
}
