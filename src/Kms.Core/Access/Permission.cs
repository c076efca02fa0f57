namespace Kms.Core.Access;

/// <summary>
/// What an RPC needs. Roles are sets of permissions (<see cref="Roles"/>); every RPC needs
/// exactly one (the table in Kms.Server's AccessRules, which the authorization matrix test
/// and docs/access-control.md are checked against).
/// </summary>
public enum Permission
{
    /// <summary>kms.keys.create: CreateKey.</summary>
    KeysCreate,

    /// <summary>kms.keys.read: GetKey, ListKeys, ListKeyVersions, GetKeyVersion, GetImportJob, GetKeyAttestation.</summary>
    KeysRead,

    /// <summary>kms.keys.update: UpdateKey, UpdatePrimaryVersion.</summary>
    KeysUpdate,

    /// <summary>kms.keys.rotate: RotateKey.</summary>
    KeysRotate,

    /// <summary>kms.keys.state: Enable/Disable key and version.</summary>
    KeysChangeState,

    /// <summary>kms.keys.destroy: schedule and cancel deletions and destructions.</summary>
    KeysDestroy,

    /// <summary>kms.aliases.manage: CreateAlias, UpdateAlias, DeleteAlias.</summary>
    AliasesManage,

    /// <summary>kms.aliases.read: GetAlias, ListAliases.</summary>
    AliasesRead,

    /// <summary>kms.crypto.encrypt: Encrypt, GenerateDataKey*, the encrypting half of ReEncrypt, their batches.</summary>
    CryptoEncrypt,

    /// <summary>kms.crypto.decrypt: Decrypt, the decrypting half of ReEncrypt, their batches, AsymmetricDecrypt.</summary>
    CryptoDecrypt,

    /// <summary>kms.crypto.sign: Sign, GenerateMac, BatchGenerateMac.</summary>
    CryptoSign,

    /// <summary>kms.crypto.verify: Verify, VerifyMac, GetPublicKey.</summary>
    CryptoVerify,

    /// <summary>kms.keys.import: CreateImportJob, ImportKeyVersion.</summary>
    KeysImport,

    /// <summary>kms.random.generate: GenerateRandom.</summary>
    RandomGenerate,

    /// <summary>kms.policies.manage: SetKeyPolicy, CreateGrant, RevokeGrant.</summary>
    PoliciesManage,

    /// <summary>kms.policies.read: GetKeyPolicy, ListGrants, TestPermissions.</summary>
    PoliciesRead,

    /// <summary>kms.bindings.manage: SetRoleBinding, DeleteRoleBinding.</summary>
    BindingsManage,

    /// <summary>kms.bindings.read: ListRoleBindings.</summary>
    BindingsRead,

    /// <summary>kms.tenants.manage: CreateTenant, DeleteTenant, CancelTenantDeletion.</summary>
    TenantsManage,

    /// <summary>kms.tenants.read: GetTenant, ListTenants.</summary>
    TenantsRead,

    /// <summary>kms.principals.manage: CreatePrincipal, DeletePrincipal, CreateApiToken, RevokeApiToken.</summary>
    PrincipalsManage,

    /// <summary>kms.principals.read: GetPrincipal, ListPrincipals, ListApiTokens.</summary>
    PrincipalsRead,

    /// <summary>kms.audit.read: ListAuditEvents (a tenant's, or all of them deployment-wide).</summary>
    AuditRead,

    /// <summary>kms.audit.export: ExportAudit, GetAuditCheckpoint (the whole chain, deployment-wide); with kms.quorum.request, DownloadBackup.</summary>
    AuditExport,

    /// <summary>kms.quorum.request: CreateQuorumRequest (the operation may demand its own permission too: kms.keys.destroy for a destroy); with kms.audit.export, DownloadBackup.</summary>
    QuorumRequest,

    /// <summary>kms.quorum.read: GetQuorumRequest, ListQuorumRequests, GetOfficerSet, ExportQuorumApproval.</summary>
    QuorumRead,

    /// <summary>kms.quorum.approve: ApproveQuorumRequest (the officer's signature is the authority; this only says who may submit it).</summary>
    QuorumApprove,
}

/// <summary>The permissions' names as the API and messages spell them.</summary>
public static class Permissions
{
    /// <summary>The dotted name, e.g. <c>kms.keys.create</c>.</summary>
    public static string NameOf(Permission permission) => permission switch
    {
        Permission.KeysCreate => "kms.keys.create",
        Permission.KeysRead => "kms.keys.read",
        Permission.KeysUpdate => "kms.keys.update",
        Permission.KeysRotate => "kms.keys.rotate",
        Permission.KeysChangeState => "kms.keys.state",
        Permission.KeysDestroy => "kms.keys.destroy",
        Permission.AliasesManage => "kms.aliases.manage",
        Permission.AliasesRead => "kms.aliases.read",
        Permission.CryptoEncrypt => "kms.crypto.encrypt",
        Permission.CryptoDecrypt => "kms.crypto.decrypt",
        Permission.CryptoSign => "kms.crypto.sign",
        Permission.CryptoVerify => "kms.crypto.verify",
        Permission.KeysImport => "kms.keys.import",
        Permission.RandomGenerate => "kms.random.generate",
        Permission.PoliciesManage => "kms.policies.manage",
        Permission.PoliciesRead => "kms.policies.read",
        Permission.BindingsManage => "kms.bindings.manage",
        Permission.BindingsRead => "kms.bindings.read",
        Permission.TenantsManage => "kms.tenants.manage",
        Permission.TenantsRead => "kms.tenants.read",
        Permission.PrincipalsManage => "kms.principals.manage",
        Permission.PrincipalsRead => "kms.principals.read",
        Permission.AuditRead => "kms.audit.read",
        Permission.AuditExport => "kms.audit.export",
        Permission.QuorumRequest => "kms.quorum.request",
        Permission.QuorumRead => "kms.quorum.read",
        Permission.QuorumApprove => "kms.quorum.approve",
        _ => permission.ToString(),
    };
}
