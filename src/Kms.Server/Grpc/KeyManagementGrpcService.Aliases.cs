using Grpc.Core;
using Kms.Contracts.V1;
using Kms.Core.Errors;
using Kms.Core.Names;

namespace Kms.Server.Grpc;

/// <summary>Aliases.</summary>
internal sealed partial class KeyManagementGrpcService
{
    public override async Task<CreateAliasResponse> CreateAlias(CreateAliasRequest request, ServerCallContext context)
    {
        var caller = CallerResolver.Current(context);
        var parent = TenantId.ParseResourceName(request.Parent, "parent");
        if (request.Alias is null)
        {
            throw KmsErrors.InvalidArgument("alias", "is required (with alias.key)");
        }

        var key = KeyName.Parse(request.Alias.Key, "alias.key");
        var alias = await aliases.CreateAliasAsync(caller, parent, request.AliasId, key, request.RequestId, context.CancellationToken);
        return new CreateAliasResponse { Alias = ProtoMapping.ToProto(alias) };
    }

    public override async Task<GetAliasResponse> GetAlias(GetAliasRequest request, ServerCallContext context) =>
        new() { Alias = ProtoMapping.ToProto(await aliases.GetAliasAsync(CallerResolver.Current(context), AliasName.Parse(request.Name, "name"), context.CancellationToken)) };

    public override async Task<UpdateAliasResponse> UpdateAlias(UpdateAliasRequest request, ServerCallContext context)
    {
        var caller = CallerResolver.Current(context);
        var alias = await aliases.UpdateAliasAsync(caller, AliasName.Parse(request.Name, "name"), KeyName.Parse(request.Key, "key"), context.CancellationToken);
        return new UpdateAliasResponse { Alias = ProtoMapping.ToProto(alias) };
    }

    public override async Task<DeleteAliasResponse> DeleteAlias(DeleteAliasRequest request, ServerCallContext context)
    {
        await aliases.DeleteAliasAsync(CallerResolver.Current(context), AliasName.Parse(request.Name, "name"), request.RequestId, context.CancellationToken);
        return new DeleteAliasResponse();
    }

    public override async Task<ListAliasesResponse> ListAliases(ListAliasesRequest request, ServerCallContext context)
    {
        var caller = CallerResolver.Current(context);
        var parent = TenantId.ParseResourceName(request.Parent, "parent");
        string?[] filter = [parent.ResourceName];
        var page = await aliases.ListAliasesAsync(caller, parent, request.PageSize,
            pageTokens.Open("ListAliases", caller, filter, request.PageToken, "parent"), context.CancellationToken);
        var response = new ListAliasesResponse { NextPageToken = pageTokens.Seal("ListAliases", caller, filter, page.NextPageToken) };
        response.Aliases.AddRange(page.Items.Select(ProtoMapping.ToProto));
        return response;
    }
}
