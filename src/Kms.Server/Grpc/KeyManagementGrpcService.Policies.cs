using Grpc.Core;
using Kms.Contracts.V1;
using Kms.Core.Access;
using Kms.Core.Errors;
using Kms.Core.Names;

namespace Kms.Server.Grpc;

/// <summary>Key policies, grants and the access review.</summary>
internal sealed partial class KeyManagementGrpcService
{
    public override async Task<SetKeyPolicyResponse> SetKeyPolicy(SetKeyPolicyRequest request, ServerCallContext context)
    {
        var entries = request.Entries.Select((e, i) => new KeyValuePair<string, KeyOperations>(e.Principal, AccessMapping.Operations(e.Operations, $"entries[{i}].operations")));
        var policy = await keyAccess.SetKeyPolicyAsync(CallerResolver.Current(context), KeyName.Parse(request.Name, "name"), entries, context.CancellationToken);
        var response = new SetKeyPolicyResponse();
        response.Entries.AddRange(policy.Entries.OrderBy(e => e.Key, StringComparer.Ordinal).Select(e => AccessMapping.ToProto(e.Key, e.Value)));
        return response;
    }

    public override async Task<GetKeyPolicyResponse> GetKeyPolicy(GetKeyPolicyRequest request, ServerCallContext context)
    {
        var policy = await keyAccess.GetKeyPolicyAsync(CallerResolver.Current(context), KeyName.Parse(request.Name, "name"), context.CancellationToken);
        var response = new GetKeyPolicyResponse();
        response.Entries.AddRange(policy.Entries.OrderBy(e => e.Key, StringComparer.Ordinal).Select(e => AccessMapping.ToProto(e.Key, e.Value)));
        return response;
    }

    public override async Task<CreateGrantResponse> CreateGrant(CreateGrantRequest request, ServerCallContext context)
    {
        if (request.Grant is null)
        {
            throw KmsErrors.InvalidArgument("grant", "is required (grantee, operations)");
        }

        // Sign and Verify carry no encryption context: a grant for them that asks for one could
        // never apply, and is refused rather than stored.
        var operations = AccessMapping.Operations(request.Grant.Operations, "grant.operations");
        if ((operations & (KeyOperations.Sign | KeyOperations.Verify)) != 0 && request.Grant.ContextEquals.Count > 0)
        {
            throw KmsErrors.InvalidArgument("grant.context_equals", "constrains ENCRYPT and DECRYPT only: SIGN and VERIFY carry no encryption context, so such a grant could never apply");
        }

        var grant = await keyAccess.CreateGrantAsync(
            CallerResolver.Current(context),
            KeyName.Parse(request.Parent, "parent"),
            PrincipalName.Parse(request.Grant.Grantee, "grant.grantee"),
            operations,
            request.Grant.ContextEquals,
            context.CancellationToken);
        return new CreateGrantResponse { Grant = AccessMapping.ToProto(grant) };
    }

    public override async Task<ListGrantsResponse> ListGrants(ListGrantsRequest request, ServerCallContext context)
    {
        var caller = CallerResolver.Current(context);
        var key = KeyName.Parse(request.Parent, "parent");
        string?[] filter = [key.ToString()];
        var page = await keyAccess.ListGrantsAsync(caller, key, request.PageSize,
            pageTokens.Open("ListGrants", caller, filter, request.PageToken, "parent"), context.CancellationToken);
        var response = new ListGrantsResponse { NextPageToken = pageTokens.Seal("ListGrants", caller, filter, page.NextPageToken) };
        response.Grants.AddRange(page.Items.Select(AccessMapping.ToProto));
        return response;
    }

    public override async Task<RevokeGrantResponse> RevokeGrant(RevokeGrantRequest request, ServerCallContext context)
    {
        var (key, id) = ParseGrantName(request.Name);
        await keyAccess.RevokeGrantAsync(CallerResolver.Current(context), key, id, context.CancellationToken);
        return new RevokeGrantResponse();
    }

    public override async Task<TestPermissionsResponse> TestPermissions(TestPermissionsRequest request, ServerCallContext context)
    {
        var reports = await keyAccess.TestPermissionsAsync(CallerResolver.Current(context), KeyName.Parse(request.Name, "name"), context.CancellationToken);
        var response = new TestPermissionsResponse();
        response.Principals.AddRange(reports.Select(AccessMapping.ToProto));
        return response;
    }

    private static (KeyName Key, string Id) ParseGrantName(string name)
    {
        var marker = name?.LastIndexOf("/grants/", StringComparison.Ordinal) ?? -1;
        if (marker <= 0 || name![(marker + "/grants/".Length)..] is not { Length: 16 } id || !id.All(char.IsAsciiHexDigitLower))
        {
            throw KmsErrors.InvalidArgument("name", "must have the form tenants/{tenant}/keys/{key}/grants/{grant}");
        }

        return (KeyName.Parse(name[..marker], "name"), id);
    }
}
