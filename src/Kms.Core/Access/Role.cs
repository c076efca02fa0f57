using Kms.Core.Errors;

namespace Kms.Core.Access;

/// <summary>
/// Roles. Tenant roles are bound to a principal within its own tenant; deployment roles
/// are deployment-wide. Least privilege: no role holds everything, and the default is deny.
/// </summary>
public enum Role
{
    /// <summary>admin (tenant): role bindings and tenant settings; reads metadata; no key changes, no crypto.</summary>
    Admin,

    /// <summary>key-manager (tenant): creates, rotates, disables, destroys keys (at once only through a quorum request); aliases; key policies and grants. No crypto, no imports.</summary>
    KeyManager,

    /// <summary>key-user (tenant): crypto operations only.</summary>
    KeyUser,

    /// <summary>auditor (tenant): reads metadata, bindings and the audit; no changes, no crypto.</summary>
    Auditor,

    /// <summary>deployment-admin: tenants, principals, tokens, role bindings in any tenant. No key material.</summary>
    DeploymentAdmin,

    /// <summary>security-officer: the key ceremony, quorum requests and submitting officers' approvals; reads tenants and the audit.</summary>
    SecurityOfficer,

    /// <summary>
    /// key-importer (tenant): import jobs and imported key material (BYOK), into keys created
    /// for imports; reads key metadata. Separate from key-manager, who moves aliases: material
    /// someone knows becomes what callers use only if two roles agree.
    /// </summary>
    KeyImporter,
}

/// <summary>What each role may do, and the roles' names.</summary>
public static class Roles
{
    private static readonly Dictionary<Role, HashSet<Permission>> Grants = new()
    {
        [Role.Admin] = [Permission.KeysRead, Permission.AliasesRead, Permission.PoliciesRead, Permission.BindingsManage, Permission.BindingsRead, Permission.TenantsRead],
        [Role.KeyManager] =
        [
            Permission.KeysCreate, Permission.KeysRead, Permission.KeysUpdate, Permission.KeysRotate, Permission.KeysChangeState,
            Permission.KeysDestroy, Permission.AliasesManage, Permission.AliasesRead, Permission.PoliciesManage, Permission.PoliciesRead,
            Permission.QuorumRequest, Permission.QuorumRead,
        ],
        [Role.KeyImporter] = [Permission.KeysImport, Permission.KeysRead],
        [Role.KeyUser] = [Permission.CryptoEncrypt, Permission.CryptoDecrypt, Permission.CryptoSign, Permission.CryptoVerify, Permission.RandomGenerate],
        [Role.Auditor] = [Permission.KeysRead, Permission.AliasesRead, Permission.PoliciesRead, Permission.BindingsRead, Permission.TenantsRead, Permission.AuditRead, Permission.QuorumRead],
        [Role.DeploymentAdmin] =
        [
            Permission.TenantsManage, Permission.TenantsRead, Permission.PrincipalsManage, Permission.PrincipalsRead,
            Permission.BindingsManage, Permission.BindingsRead,
        ],
        [Role.SecurityOfficer] =
        [
            Permission.TenantsRead, Permission.AuditRead, Permission.AuditExport, Permission.QuorumRequest, Permission.QuorumRead, Permission.QuorumApprove,
        ],
    };

    /// <summary>Every role.</summary>
    public static IReadOnlyList<Role> All { get; } = Enum.GetValues<Role>();

    /// <summary>Whether the role is deployment-wide (else it is bound within a tenant).</summary>
    public static bool IsDeploymentRole(Role role) => role is Role.DeploymentAdmin or Role.SecurityOfficer;

    /// <summary>Whether the role administers (bindings, tenants, principals, ceremony): held only with session tokens or certificates.</summary>
    public static bool IsAdministrative(Role role) => role is Role.Admin or Role.DeploymentAdmin or Role.SecurityOfficer;

    /// <summary>The permissions of a role.</summary>
    public static IReadOnlySet<Permission> PermissionsOf(Role role) => Grants[role];

    /// <summary>Whether a role holds a permission.</summary>
    public static bool Allows(Role role, Permission permission) => Grants[role].Contains(permission);

    /// <summary>The role's name as the API spells it (<c>key-manager</c>).</summary>
    public static string NameOf(Role role) => role switch
    {
        Role.Admin => "admin",
        Role.KeyManager => "key-manager",
        Role.KeyUser => "key-user",
        Role.Auditor => "auditor",
        Role.DeploymentAdmin => "deployment-admin",
        Role.SecurityOfficer => "security-officer",
        Role.KeyImporter => "key-importer",
        _ => role.ToString(),
    };

    /// <summary>Parses a role name.</summary>
    /// <exception cref="KmsException">InvalidArgument naming <paramref name="field"/>.</exception>
    public static Role Parse(string? name, string field) =>
        All.FirstOrDefault(r => NameOf(r) == name) is var role && NameOf(role) == name
            ? role
            : throw KmsErrors.InvalidArgument(field, $"unknown role; one of {string.Join(", ", All.Select(NameOf))}");
}
