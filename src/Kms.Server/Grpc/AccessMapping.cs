using Google.Protobuf.Collections;
using Kms.Contracts.V1;
using Kms.Core.Access;
using Kms.Core.Errors;
using Kms.Core.Names;
using Kms.Core.Services;

namespace Kms.Server.Grpc;

/// <summary>Access-control values between protobuf and Core.</summary>
internal static class AccessMapping
{
    public static TenantInfo ToProto(Tenant tenant) => new()
    {
        Name = tenant.Id.ResourceName,
        DisplayName = tenant.DisplayName,
        State = tenant.State == TenantState.Active ? "ACTIVE" : "DELETING",
        CreateTime = ProtoMapping.ToTimestamp(tenant.CreateTime),
        DeleteTime = ProtoMapping.ToTimestamp(tenant.DeleteTime),
    };

    public static PrincipalInfo ToProto(Principal principal) => new()
    {
        Name = principal.Name.ToString(),
        Tenant = principal.Tenant?.ResourceName ?? "",
        DisplayName = principal.DisplayName,
        CreateTime = ProtoMapping.ToTimestamp(principal.CreateTime),
        State = principal.Deleted ? "DELETED" : "ACTIVE",
        DeleteTime = ProtoMapping.ToTimestamp(principal.DeleteTime),
    };

    public static ApiTokenInfo ToProto(ApiToken token) => new()
    {
        Id = token.Id,
        Principal = token.Principal.ToString(),
        Kind = token.Kind.ToString().ToUpperInvariant(),
        CreateTime = ProtoMapping.ToTimestamp(token.CreateTime),
        ExpireTime = ProtoMapping.ToTimestamp(token.ExpireTime),
        RevokeTime = ProtoMapping.ToTimestamp(token.RevokeTime),
    };

    public static RoleBindingInfo ToProto(RoleBinding binding) => new()
    {
        Principal = binding.Principal.ToString(),
        Role = Roles.NameOf(binding.Role),
        Tenant = binding.Tenant?.ResourceName ?? "",
        CreateTime = ProtoMapping.ToTimestamp(binding.CreateTime),
    };

    public static KeyGrant ToProto(Grant grant)
    {
        var proto = new KeyGrant
        {
            Name = grant.Name,
            Grantee = grant.Grantee.ToString(),
            CreateTime = ProtoMapping.ToTimestamp(grant.CreateTime),
        };
        proto.Operations.AddRange(OperationNames(grant.Operations));
        foreach (var (name, value) in grant.ContextEquals)
        {
            proto.ContextEquals[name] = value;
        }
        return proto;
    }

    public static KeyPolicyEntry ToProto(string principal, KeyOperations operations)
    {
        var entry = new KeyPolicyEntry { Principal = principal };
        entry.Operations.AddRange(OperationNames(operations));
        return entry;
    }

    public static IEnumerable<string> OperationNames(KeyOperations operations)
    {
        if (operations.HasFlag(KeyOperations.Encrypt))
        {
            yield return "ENCRYPT";
        }

        if (operations.HasFlag(KeyOperations.Decrypt))
        {
            yield return "DECRYPT";
        }

        if (operations.HasFlag(KeyOperations.Sign))
        {
            yield return "SIGN";
        }

        if (operations.HasFlag(KeyOperations.Verify))
        {
            yield return "VERIFY";
        }
    }

    public static KeyOperations Operations(RepeatedField<string> names, string field)
    {
        var operations = KeyOperations.None;
        foreach (var name in names)
        {
            operations |= name switch
            {
                "ENCRYPT" => KeyOperations.Encrypt,
                "DECRYPT" => KeyOperations.Decrypt,
                "SIGN" => KeyOperations.Sign,
                "VERIFY" => KeyOperations.Verify,
                _ => throw KmsErrors.InvalidArgument(field, "operations are ENCRYPT, DECRYPT, SIGN or VERIFY"),
            };
        }

        return operations;
    }

    /// <summary>An optional <c>tenants/{tenant}</c>: empty means deployment-wide.</summary>
    public static TenantId? OptionalTenant(string name, string field) =>
        string.IsNullOrEmpty(name) ? null : TenantId.ParseResourceName(name, field);

    public static ApiTokenKind TokenKind(string kind) => kind switch
    {
        "SERVICE" or "" => ApiTokenKind.Service,
        "SESSION" => ApiTokenKind.Session,
        _ => throw KmsErrors.InvalidArgument("kind", "must be SERVICE or SESSION"),
    };

    public static PrincipalPermissions ToProto(KeyPermissionReport report)
    {
        var proto = new PrincipalPermissions { Principal = report.Principal };
        proto.Roles.AddRange(report.Roles.Select(Roles.NameOf).Order(StringComparer.Ordinal));
        proto.Operations.AddRange(OperationNames(report.Operations));
        proto.ConditionalGrants.AddRange(report.ConditionalGrants.Select(ToProto));
        return proto;
    }
}
