using Kms.Core.Access;
using Kms.Core.Names;

namespace Kms.Core.Backup;

/// <summary>What a logged removal of access took away.</summary>
public enum AccessRemovalKind
{
    /// <summary>RevokeApiToken (resource: the holder's, then <c>/apiTokens/ID</c>).</summary>
    TokenRevocation,

    /// <summary>DeletePrincipal (resource: the principal as <see cref="Services.AccessService.AuditResourceOf"/> names it).</summary>
    PrincipalDeletion,

    /// <summary>DeleteRoleBinding (resource: the principal's, then <c>/roleBindings/ROLE</c>).</summary>
    RoleBindingRemoval,

    /// <summary>RevokeGrant (resource: <c>tenants/T/keys/K/grants/ID</c>).</summary>
    GrantRevocation,

    /// <summary>
    /// A key policy narrowed (resource: the key; <see cref="RecordedAccessRemoval.Policy"/>: the
    /// narrower policy). Read only from a replaced database: the events do not hold policies.
    /// </summary>
    KeyPolicyNarrowing,
}

/// <summary>
/// A removal of access an audit event records — a token revoked, a principal deleted, a role
/// binding removed, a grant revoked — to be made again in a restored snapshot, which still
/// holds what it removed.
/// </summary>
/// <param name="Kind">What it removed.</param>
/// <param name="Resource">Its event's resource (which names what it removed).</param>
/// <param name="Time">The event's time.</param>
/// <param name="Source">Where it was found, for the report.</param>
/// <param name="Verified">
/// Its event is covered by a checkpoint signed with the audit key: trusted to delete a principal,
/// which cannot be undone. From an unverified event only what can be given back is removed (its
/// tokens revoked, its role bindings removed: a new token, a new binding give them back).
/// </param>
public sealed record RecordedAccessRemoval(AccessRemovalKind Kind, string Resource, DateTimeOffset Time, string Source, bool Verified = false)
{
    /// <summary>
    /// <see cref="AccessRemovalKind.KeyPolicyNarrowing"/>: the policy to install (principal: operations),
    /// narrower than the restored one; null for the other kinds.
    /// </summary>
    public IReadOnlyDictionary<string, KeyOperations>? Policy { get; init; }

    /// <summary>
    /// Whether <paramref name="narrower"/> allows nothing that <paramref name="wider"/> does not: it
    /// restricts the key (a key without a policy is open to every principal its roles allow), and
    /// each of its principals is allowed there at least its operations (no policy there allows all).
    /// </summary>
    public static bool Narrows(IReadOnlyDictionary<string, KeyOperations>? narrower, IReadOnlyDictionary<string, KeyOperations>? wider) =>
        narrower is { Count: > 0 }
        && (wider is null || wider.Count == 0 || narrower.All(e => wider.TryGetValue(e.Key, out var allowed) && (e.Value & ~allowed) == 0));
}

/// <summary>
/// Re-applies, to a restored snapshot, the removals of access made after the backup: a restore
/// after an incident must not bring back the token, principal, role or grant revoked during it.
/// </summary>
/// <remarks>
/// Only removals are replayed, never additions: each is safe to repeat (revoking a revoked token,
/// deleting a deleted principal changes nothing) and only ever narrows access. A change the logs
/// cannot replay — a key policy set (events do not hold the policy), a role binding removed by a
/// server that did not yet name the binding in the event — is listed for the operator to review,
/// as is a change that is not replayed because it could widen or steer use (a primary version
/// changed, an alias created, moved or deleted: <see cref="ReviewOf"/>).
/// </remarks>
public static class AccessReplay
{
    /// <summary>The audit operation of a token revocation a restore re-applied (resource as RevokeApiToken's).</summary>
    public const string ReapplyTokenRevocationOperation = "backup/ReapplyTokenRevocation";

    /// <summary>The audit operation of a principal deletion a restore re-applied (resource as DeletePrincipal's).</summary>
    public const string ReapplyPrincipalDeletionOperation = "backup/ReapplyPrincipalDeletion";

    /// <summary>The audit operation of a role binding removal a restore re-applied (resource as DeleteRoleBinding's).</summary>
    public const string ReapplyRoleBindingRemovalOperation = "backup/ReapplyRoleBindingRemoval";

    /// <summary>The audit operation of a grant revocation a restore re-applied (resource: the grant).</summary>
    public const string ReapplyGrantRevocationOperation = "backup/ReapplyGrantRevocation";

    /// <summary>The audit operation of a key policy a restore narrowed again, from the replaced database (resource: the key).</summary>
    public const string ReapplyKeyPolicyOperation = "backup/ReapplyKeyPolicy";

    private const string Access = "/kms.v1.AccessManagementService/";
    private const string Keys = "/kms.v1.KeyManagementService/";
    private const string TokenSegment = "/apiTokens/";
    private const string BindingSegment = "/roleBindings/";
    private const string GrantSegment = "/grants/";
    private const string PrincipalsOfTenant = "/principals/";

    private static readonly Dictionary<string, AccessRemovalKind> Operations = new(StringComparer.Ordinal)
    {
        [Access + "RevokeApiToken"] = AccessRemovalKind.TokenRevocation,
        [Access + "DeletePrincipal"] = AccessRemovalKind.PrincipalDeletion,
        [Access + "DeleteRoleBinding"] = AccessRemovalKind.RoleBindingRemoval,
        [Keys + "RevokeGrant"] = AccessRemovalKind.GrantRevocation,
        [ReapplyTokenRevocationOperation] = AccessRemovalKind.TokenRevocation,
        [ReapplyPrincipalDeletionOperation] = AccessRemovalKind.PrincipalDeletion,
        [ReapplyRoleBindingRemovalOperation] = AccessRemovalKind.RoleBindingRemoval,
        [ReapplyGrantRevocationOperation] = AccessRemovalKind.GrantRevocation,
    };

    /// <summary>The audit operation a restore records for re-applying a removal of <paramref name="kind"/>.</summary>
    public static string ReapplyOperationOf(AccessRemovalKind kind) => kind switch
    {
        AccessRemovalKind.TokenRevocation => ReapplyTokenRevocationOperation,
        AccessRemovalKind.PrincipalDeletion => ReapplyPrincipalDeletionOperation,
        AccessRemovalKind.RoleBindingRemoval => ReapplyRoleBindingRemovalOperation,
        AccessRemovalKind.KeyPolicyNarrowing => ReapplyKeyPolicyOperation,
        _ => ReapplyGrantRevocationOperation,
    };

    /// <summary>
    /// The removal of access a successful audit event records, or null (another operation, not OK,
    /// or a DeleteRoleBinding whose event does not name the binding: <see cref="ReviewOf"/>).
    /// Not <see cref="RecordedAccessRemoval.Verified"/> until the caller says.
    /// </summary>
    /// <param name="operation">The event's operation.</param>
    /// <param name="resource">Its resource.</param>
    /// <param name="outcome">Its outcome.</param>
    /// <param name="time">Its time.</param>
    /// <param name="source">Where it was found.</param>
    public static RecordedAccessRemoval? RemovalOf(string? operation, string? resource, string? outcome, DateTimeOffset time, string source)
    {
        if (outcome != "OK" || string.IsNullOrEmpty(resource) || operation is null || !Operations.TryGetValue(operation, out var kind))
        {
            return null;
        }

        var named = kind switch
        {
            AccessRemovalKind.TokenRevocation => resource.Contains(TokenSegment, StringComparison.Ordinal),
            AccessRemovalKind.RoleBindingRemoval => resource.Contains(BindingSegment, StringComparison.Ordinal),
            AccessRemovalKind.GrantRevocation => resource.Contains(GrantSegment, StringComparison.Ordinal),
            _ => true,
        };
        return named ? new RecordedAccessRemoval(kind, resource, time, $"{source} ({operation})") : null;
    }

    /// <summary>
    /// What a successful audit event changed that a restore does not replay, for the operator to
    /// review after it, or null: a key policy set (SetKeyPolicy: the event names the key, not the
    /// policy, and the restored one is the backup's), a role binding removed whose event names
    /// only its tenant (written before events named the binding), a key's primary changed
    /// (UpdatePrimaryVersion, RotateKey: the restored primary is the backup's), an alias created,
    /// moved or deleted (CreateAlias, UpdateAlias, DeleteAlias: the restored aliases are the
    /// backup's).
    /// </summary>
    /// <param name="operation">The event's operation.</param>
    /// <param name="resource">Its resource.</param>
    /// <param name="outcome">Its outcome.</param>
    /// <param name="source">Where it was found.</param>
    public static string? ReviewOf(string? operation, string? resource, string? outcome, string source)
    {
        if (outcome != "OK")
        {
            return null;
        }

        if (operation is Keys + "SetKeyPolicy" or ReapplyKeyPolicyOperation && !string.IsNullOrEmpty(resource))
        {
            return $"{resource}: its key policy was set after the backup ({source}); the events do not hold policies, so the restored one is the backup's — check it (GetKeyPolicy) and set it again";
        }

        if (operation == Access + "DeleteRoleBinding" && (string.IsNullOrEmpty(resource) || !resource.Contains(BindingSegment, StringComparison.Ordinal)))
        {
            return $"{(string.IsNullOrEmpty(resource) ? "deployment" : resource)}: a role binding was removed after the backup ({source}), by a server whose event does not name it — check the bindings (ListRoleBindings) and remove it again";
        }

        // What a key's callers get besides its state: which version encrypts, where an alias
        // leads. Not replayed (a primary set or an alias moved by a forged event would steer
        // encryptions), and the events name the key or alias, not the version or target.
        return string.IsNullOrEmpty(resource) ? null : operation switch
        {
            Keys + "UpdatePrimaryVersion" => $"{resource}: its primary version was changed after the backup ({source}); the restored primary is the backup's — check it (GetKey) and set it again (UpdatePrimaryVersion)",
            Keys + "RotateKey" => $"{resource}: rotated after the backup ({source}); the versions made since are not in the backup and the restored primary is the backup's — rotate it again if the rotation retired a version",
            Keys + "CreateAlias" => $"{resource}: an alias created after the backup ({source}) is not in the backup — create it again (ListAliases)",
            Keys + "UpdateAlias" => $"{resource}: the alias was pointed at another key after the backup ({source}); the restored alias leads where the backup's did — check it (GetAlias) and update it again",
            Keys + "DeleteAlias" => $"{resource}: the alias was deleted after the backup ({source}); the backup's is back and resolves again — delete it again",
            _ => null,
        };
    }

    /// <summary>The resource a DeleteRoleBinding event names (and a re-applied removal's): the principal's, then <c>/roleBindings/ROLE</c>.</summary>
    /// <param name="principal">The principal.</param>
    /// <param name="role">The role removed.</param>
    /// <param name="tenant">The tenant named (a tenant role: the principal's); null for a deployment role.</param>
    public static string BindingResource(PrincipalName principal, Role role, TenantId? tenant) =>
        $"{Services.AccessService.AuditResourceOf(principal, tenant)}{BindingSegment}{Roles.NameOf(role)}";

    /// <summary>The principal a principal's resource names (<c>tenants/T/principals/NAME</c>, or NAME).</summary>
    /// <exception cref="Errors.KmsException">InvalidArgument: not a principal's name.</exception>
    public static PrincipalName PrincipalOf(string resource)
    {
        ArgumentNullException.ThrowIfNull(resource);
        if (resource.StartsWith("tenants/", StringComparison.Ordinal) && resource.IndexOf(PrincipalsOfTenant, StringComparison.Ordinal) is var at and > 0)
        {
            return PrincipalName.ParseExisting(resource[(at + PrincipalsOfTenant.Length)..], "resource");
        }

        return PrincipalName.ParseExisting(resource, "resource");
    }

    /// <summary>The token id a token revocation's resource names.</summary>
    /// <exception cref="Errors.KmsException">InvalidArgument: not a token's resource.</exception>
    public static string TokenIdOf(string resource)
    {
        ArgumentNullException.ThrowIfNull(resource);
        var at = resource.LastIndexOf(TokenSegment, StringComparison.Ordinal);
        return ApiTokenSecret.ParseId(at < 0 ? null : resource[(at + TokenSegment.Length)..], "resource");
    }

    /// <summary>The binding a role binding removal's resource names: the principal, the role, and the tenant (a tenant role's: the principal's own).</summary>
    /// <exception cref="Errors.KmsException">InvalidArgument: not a binding's resource.</exception>
    public static (PrincipalName Principal, Role Role, TenantId? Tenant) BindingOf(string resource)
    {
        ArgumentNullException.ThrowIfNull(resource);
        var at = resource.LastIndexOf(BindingSegment, StringComparison.Ordinal);
        if (at < 0)
        {
            throw Errors.KmsErrors.InvalidArgument("resource", "not a role binding");
        }

        var holder = resource[..at];
        var role = Roles.Parse(resource[(at + BindingSegment.Length)..], "resource");
        var home = holder.IndexOf(PrincipalsOfTenant, StringComparison.Ordinal);
        TenantId? tenant = Roles.IsDeploymentRole(role) || !holder.StartsWith("tenants/", StringComparison.Ordinal)
            ? null
            : home > 0 ? TenantId.ParseResourceName(holder[..home], "resource") : throw Errors.KmsErrors.InvalidArgument("resource", "not a role binding");
        return (PrincipalOf(holder), role, tenant);
    }

    /// <summary>The key and grant id a grant revocation's resource names (<c>tenants/T/keys/K/grants/ID</c>).</summary>
    /// <exception cref="Errors.KmsException">InvalidArgument: not a grant's name.</exception>
    public static (KeyName Key, string GrantId) GrantOf(string resource)
    {
        ArgumentNullException.ThrowIfNull(resource);
        var at = resource.LastIndexOf(GrantSegment, StringComparison.Ordinal);
        if (at < 0 || at + GrantSegment.Length == resource.Length)
        {
            throw Errors.KmsErrors.InvalidArgument("resource", "not a grant");
        }

        return (KeyName.Parse(resource[..at], "resource"), resource[(at + GrantSegment.Length)..]);
    }
}
