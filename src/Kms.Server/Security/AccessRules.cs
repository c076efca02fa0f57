using Google.Protobuf;
using Kms.Contracts.V1;
using Kms.Core;
using Kms.Core.Access;

namespace Kms.Server.Security;

/// <summary>Who may call an RPC at all.</summary>
internal enum CallScope
{
    /// <summary>Anyone, without credentials (health).</summary>
    Public,

    /// <summary>Any authenticated caller, no permission needed (server reflection).</summary>
    Authenticated,

    /// <summary>Only the one-time bootstrap credential.</summary>
    Bootstrap,

    /// <summary>An authenticated caller holding every permission of <see cref="AccessRule.Requirements"/>.</summary>
    Permission,
}

/// <summary>Where a permission is demanded: on the tenant a request field names, on the caller's own tenant, or deployment-wide.</summary>
internal enum TargetKind
{
    /// <summary>The tenant of a resource name in the request (<c>tenants/{t}/…</c>).</summary>
    Resource,

    /// <summary>As <see cref="Resource"/>, but an empty field means deployment-wide (ListPrincipals, role bindings).</summary>
    ResourceOrDeployment,

    /// <summary>The caller's own tenant (Decrypt names no key; batch items are checked one by one).</summary>
    CallerTenant,

    /// <summary>Deployment-wide (tenants, principals, tokens).</summary>
    Deployment,

    /// <summary>
    /// The tenant of a name <c>tenants/{t}/…</c>; <c>quorumRequests/{id}</c> is deployment-wide; an empty
    /// or malformed name is checked against the caller's own tenant (deployment-wide for a deployment
    /// principal), as for <see cref="Resource"/>, so that a caller allowed there gets the handler's INVALID_ARGUMENT.
    /// </summary>
    TenantNameOrDeployment,
}

/// <summary>One permission an RPC needs, and on what.</summary>
internal sealed record Requirement(Permission Permission, TargetKind Target, Func<IMessage, string>? Field = null);

/// <summary>An RPC's rule: scope, the permissions it needs, and what it costs against the tenant's crypto quota (0: not metered).</summary>
internal sealed record AccessRule(CallScope Scope, IReadOnlyList<Requirement> Requirements, Func<IMessage, int>? QuotaCost = null);

/// <summary>
/// The authorization table: every RPC the server serves, what it needs. The
/// AuthorizationInterceptor refuses any method not listed here (default deny); the
/// authorization matrix test and docs/access-control.md are checked against it.
/// </summary>
internal static class AccessRules
{
    private const string Keys = "/kms.v1.KeyManagementService/";
    private const string Access = "/kms.v1.AccessManagementService/";
    private const string Audit = "/kms.v1.AuditService/";
    private const string Quorum = "/kms.v1.QuorumService/";

    /// <summary>Rules by full method name (<c>/package.Service/Method</c>).</summary>
    public static IReadOnlyDictionary<string, AccessRule> ByMethod { get; } = new Dictionary<string, AccessRule>(StringComparer.Ordinal)
    {
        // Keys and versions.
        // Creating and rotating generate a key in the HSM (an RSA pair takes seconds): metered, as crypto is.
        [Keys + "CreateKey"] = Metered(On<CreateKeyRequest>(Permission.KeysCreate, r => r.Parent)),
        [Keys + "GetKey"] = On<GetKeyRequest>(Permission.KeysRead, r => r.Name),
        [Keys + "ListKeys"] = On<ListKeysRequest>(Permission.KeysRead, r => r.Parent),
        [Keys + "UpdateKey"] = On<UpdateKeyRequest>(Permission.KeysUpdate, r => r.Key?.Name ?? ""),
        [Keys + "RotateKey"] = Metered(On<RotateKeyRequest>(Permission.KeysRotate, r => r.Name)),
        [Keys + "ListKeyVersions"] = On<ListKeyVersionsRequest>(Permission.KeysRead, r => r.Parent),
        [Keys + "GetKeyVersion"] = On<GetKeyVersionRequest>(Permission.KeysRead, r => r.Name),
        [Keys + "UpdatePrimaryVersion"] = On<UpdatePrimaryVersionRequest>(Permission.KeysUpdate, r => r.Name),
        [Keys + "EnableKey"] = On<EnableKeyRequest>(Permission.KeysChangeState, r => r.Name),
        [Keys + "DisableKey"] = On<DisableKeyRequest>(Permission.KeysChangeState, r => r.Name),
        [Keys + "EnableKeyVersion"] = On<EnableKeyVersionRequest>(Permission.KeysChangeState, r => r.Name),
        [Keys + "DisableKeyVersion"] = On<DisableKeyVersionRequest>(Permission.KeysChangeState, r => r.Name),
        [Keys + "ScheduleKeyDeletion"] = On<ScheduleKeyDeletionRequest>(Permission.KeysDestroy, r => r.Name),
        [Keys + "CancelKeyDeletion"] = On<CancelKeyDeletionRequest>(Permission.KeysDestroy, r => r.Name),
        [Keys + "ScheduleKeyVersionDestruction"] = On<ScheduleKeyVersionDestructionRequest>(Permission.KeysDestroy, r => r.Name),
        [Keys + "RestoreKeyVersion"] = On<RestoreKeyVersionRequest>(Permission.KeysDestroy, r => r.Name),

        // BYOK import and provenance statements.
        // Each job is an RSA key pair generated in the HSM (seconds on SoftHSM), an import an RSA
        // unwrap, an attestation an HSM operation and a signature: counted against the quota.
        [Keys + "CreateImportJob"] = Metered(On<CreateImportJobRequest>(Permission.KeysImport, r => r.Parent)),
        [Keys + "GetImportJob"] = On<GetImportJobRequest>(Permission.KeysRead, r => r.Name),
        [Keys + "ImportKeyVersion"] = Metered(On<ImportKeyVersionRequest>(Permission.KeysImport, r => r.Parent)),
        [Keys + "GetKeyAttestation"] = Metered(On<GetKeyAttestationRequest>(Permission.KeysRead, r => r.Name)),

        // Aliases.
        [Keys + "CreateAlias"] = On<CreateAliasRequest>(Permission.AliasesManage, r => r.Parent),
        [Keys + "GetAlias"] = On<GetAliasRequest>(Permission.AliasesRead, r => r.Name),
        [Keys + "UpdateAlias"] = On<UpdateAliasRequest>(Permission.AliasesManage, r => r.Name),
        [Keys + "DeleteAlias"] = On<DeleteAliasRequest>(Permission.AliasesManage, r => r.Name),
        [Keys + "ListAliases"] = On<ListAliasesRequest>(Permission.AliasesRead, r => r.Parent),

        // Crypto: metered against the tenant's quota.
        [Keys + "Sign"] = Metered(On<SignRequest>(Permission.CryptoSign, r => r.Name)),
        [Keys + "Verify"] = Metered(On<VerifyRequest>(Permission.CryptoVerify, r => r.Name)),
        [Keys + "GetPublicKey"] = On<GetPublicKeyRequest>(Permission.CryptoVerify, r => r.Name),
        [Keys + "AsymmetricDecrypt"] = Metered(On<AsymmetricDecryptRequest>(Permission.CryptoDecrypt, r => r.Name)),
        [Keys + "GenerateMac"] = Metered(On<GenerateMacRequest>(Permission.CryptoSign, r => r.Name)),
        [Keys + "VerifyMac"] = Metered(On<VerifyMacRequest>(Permission.CryptoVerify, r => r.Name)),
        [Keys + "Encrypt"] = Metered(On<EncryptRequest>(Permission.CryptoEncrypt, r => r.Name)),
        [Keys + "Decrypt"] = Metered(Own(Permission.CryptoDecrypt)),
        [Keys + "GenerateDataKey"] = Metered(On<GenerateDataKeyRequest>(Permission.CryptoEncrypt, r => r.Name)),
        [Keys + "GenerateDataKeyWithoutPlaintext"] = Metered(On<GenerateDataKeyWithoutPlaintextRequest>(Permission.CryptoEncrypt, r => r.Name)),
        // The destination first: a destination in another tenant is NOT_FOUND whatever the roles.
        [Keys + "ReEncrypt"] = Metered(new AccessRule(CallScope.Permission,
        [
            new Requirement(Permission.CryptoEncrypt, TargetKind.Resource, r => ((ReEncryptRequest)r).DestinationName),
            new Requirement(Permission.CryptoDecrypt, TargetKind.CallerTenant),
        ])),
        [Keys + "GenerateRandom"] = Metered(Own(Permission.RandomGenerate)),
        [Keys + "BatchEncrypt"] = Metered(Own(Permission.CryptoEncrypt), r => ((BatchEncryptRequest)r).Requests.Count),
        [Keys + "BatchDecrypt"] = Metered(Own(Permission.CryptoDecrypt), r => ((BatchDecryptRequest)r).Requests.Count),
        [Keys + "BatchReEncrypt"] = Metered(Own(Permission.CryptoDecrypt, Permission.CryptoEncrypt), r => ((BatchReEncryptRequest)r).Requests.Count),
        [Keys + "BatchGenerateDataKey"] = Metered(Own(Permission.CryptoEncrypt), r => ((BatchGenerateDataKeyRequest)r).Requests.Count),
        [Keys + "BatchGenerateMac"] = Metered(Own(Permission.CryptoSign), r => ((BatchGenerateMacRequest)r).Requests.Count),

        // Key policies and grants.
        [Keys + "SetKeyPolicy"] = On<SetKeyPolicyRequest>(Permission.PoliciesManage, r => r.Name),
        [Keys + "GetKeyPolicy"] = On<GetKeyPolicyRequest>(Permission.PoliciesRead, r => r.Name),
        [Keys + "CreateGrant"] = On<CreateGrantRequest>(Permission.PoliciesManage, r => r.Parent),
        [Keys + "ListGrants"] = On<ListGrantsRequest>(Permission.PoliciesRead, r => r.Parent),
        [Keys + "RevokeGrant"] = On<RevokeGrantRequest>(Permission.PoliciesManage, r => r.Name),
        // The review lists the tenant's role bindings too, so it needs both reads.
        [Keys + "TestPermissions"] = new AccessRule(CallScope.Permission,
        [
            new Requirement(Permission.PoliciesRead, TargetKind.Resource, r => ((TestPermissionsRequest)r).Name),
            new Requirement(Permission.BindingsRead, TargetKind.Resource, r => ((TestPermissionsRequest)r).Name),
        ]),

        // Tenants, principals, tokens, bindings.
        [Access + "CreateTenant"] = Deployment(Permission.TenantsManage),
        [Access + "GetTenant"] = On<GetTenantRequest>(Permission.TenantsRead, r => r.Name),
        [Access + "ListTenants"] = Deployment(Permission.TenantsRead),
        [Access + "DeleteTenant"] = On<DeleteTenantRequest>(Permission.TenantsManage, r => r.Name),
        [Access + "CancelTenantDeletion"] = On<CancelTenantDeletionRequest>(Permission.TenantsManage, r => r.Name),
        [Access + "CreatePrincipal"] = Deployment(Permission.PrincipalsManage),
        [Access + "GetPrincipal"] = Deployment(Permission.PrincipalsRead),
        [Access + "ListPrincipals"] = OnOrDeployment<ListPrincipalsRequest>(Permission.PrincipalsRead, r => r.Tenant),
        [Access + "DeletePrincipal"] = Deployment(Permission.PrincipalsManage),
        [Access + "CreateApiToken"] = Deployment(Permission.PrincipalsManage),
        [Access + "ListApiTokens"] = Deployment(Permission.PrincipalsRead),
        [Access + "RevokeApiToken"] = Deployment(Permission.PrincipalsManage),
        [Access + "SetRoleBinding"] = OnOrDeployment<SetRoleBindingRequest>(Permission.BindingsManage, r => r.Tenant),
        [Access + "DeleteRoleBinding"] = OnOrDeployment<DeleteRoleBindingRequest>(Permission.BindingsManage, r => r.Tenant),
        [Access + "ListRoleBindings"] = OnOrDeployment<ListRoleBindingsRequest>(Permission.BindingsRead, r => r.Tenant),
        [Access + "Bootstrap"] = new AccessRule(CallScope.Bootstrap, []),

        // Audit: a tenant's auditors read its events; security officers read and export the whole chain.
        [Audit + "ListAuditEvents"] = OnOrDeployment<ListAuditEventsRequest>(Permission.AuditRead, r => r.Tenant),
        [Audit + "GetAuditCheckpoint"] = Deployment(Permission.AuditExport),
        [Audit + "ExportAudit"] = Deployment(Permission.AuditExport),
        [Audit + "GetAuditSigningKey"] = new AccessRule(CallScope.Authenticated, []),

        // Quorum: who may create a request, read it, submit an officer's signed approval. The
        // signature is the authority; the operation may demand more (kms.keys.destroy for a destroy).
        [Quorum + "CreateQuorumRequest"] = OnOrDeployment<CreateQuorumRequestRequest>(Permission.QuorumRequest, r => r.Parent),
        [Quorum + "GetQuorumRequest"] = new AccessRule(CallScope.Permission,
            [new Requirement(Permission.QuorumRead, TargetKind.TenantNameOrDeployment, r => ((GetQuorumRequestRequest)r).Name)]),
        [Quorum + "ListQuorumRequests"] = OnOrDeployment<ListQuorumRequestsRequest>(Permission.QuorumRead, r => r.Parent),
        [Quorum + "ApproveQuorumRequest"] = new AccessRule(CallScope.Permission,
            [new Requirement(Permission.QuorumApprove, TargetKind.Deployment, r => ((ApproveQuorumRequestRequest)r).Name)]),
        [Quorum + "GetOfficerSet"] = Deployment(Permission.QuorumRead),
        [Quorum + "ExportQuorumApproval"] = Deployment(Permission.QuorumRead),

        // A backup is the whole database (wrapped keys, principals, the audit chain): whoever may
        // ask for one deployment-wide and export the audit chain may download it.
        [Quorum + "DownloadBackup"] = new AccessRule(CallScope.Permission,
        [
            new Requirement(Permission.QuorumRequest, TargetKind.Deployment),
            new Requirement(Permission.AuditExport, TargetKind.Deployment),
        ]),

        // Infrastructure.
        ["/grpc.health.v1.Health/Check"] = new AccessRule(CallScope.Public, []),
        ["/grpc.health.v1.Health/Watch"] = new AccessRule(CallScope.Public, []),
        ["/grpc.health.v1.Health/List"] = new AccessRule(CallScope.Public, []),
        ["/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"] = new AccessRule(CallScope.Authenticated, []),
        ["/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"] = new AccessRule(CallScope.Authenticated, []),
    };

    /// <summary>
    /// Whether a call changes state: its audit event is committed with its first write
    /// (<see cref="Kms.Core.Audit.AuditScope"/>). Crypto, reads and the audit itself do not.
    /// </summary>
    public static bool IsMutating(AccessRule rule)
    {
        ArgumentNullException.ThrowIfNull(rule);
        return rule.Scope == CallScope.Bootstrap || rule.Requirements.Any(r => r.Permission is Permission.KeysCreate or Permission.KeysUpdate
            or Permission.KeysRotate or Permission.KeysImport or Permission.KeysChangeState or Permission.KeysDestroy or Permission.AliasesManage or Permission.PoliciesManage
            or Permission.BindingsManage or Permission.TenantsManage or Permission.PrincipalsManage or Permission.QuorumRequest or Permission.QuorumApprove);
    }

    /// <summary>The resource a request names (for its audit event), if its rule reads one.</summary>
    public static string? ResourceOf(AccessRule rule, object? request)
    {
        ArgumentNullException.ThrowIfNull(rule);
        return request is IMessage message && rule.Requirements.FirstOrDefault(r => r.Field is not null) is { } requirement
            && requirement.Field!(message) is { Length: > 0 } name
            ? name
            : null;
    }

    private static AccessRule On<TRequest>(Permission permission, Func<TRequest, string> field)
        where TRequest : IMessage =>
        new(CallScope.Permission, [new Requirement(permission, TargetKind.Resource, r => field((TRequest)r))]);

    private static AccessRule OnOrDeployment<TRequest>(Permission permission, Func<TRequest, string> field)
        where TRequest : IMessage =>
        new(CallScope.Permission, [new Requirement(permission, TargetKind.ResourceOrDeployment, r => field((TRequest)r))]);

    private static AccessRule Own(params Permission[] permissions) =>
        new(CallScope.Permission, permissions.Select(p => new Requirement(p, TargetKind.CallerTenant)).ToList());

    private static AccessRule Deployment(Permission permission) =>
        new(CallScope.Permission, [new Requirement(permission, TargetKind.Deployment)]);

    // A batch costs its items, but only a batch the handler will serve: one over the item limit
    // (refused INVALID_ARGUMENT) costs 1 like any refused call — charged its raw count, one
    // request of millions of empty items would drain the tenant's quota for everyone.
    private static AccessRule Metered(AccessRule rule, Func<IMessage, int>? cost = null) =>
        rule with { QuotaCost = cost is null ? _ => 1 : r => cost(r) is var items and > 0 and <= Limits.MaxBatchItems ? items : 1 };
}
