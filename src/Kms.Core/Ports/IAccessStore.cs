using Kms.Core.Access;
using Kms.Core.Names;

namespace Kms.Core.Ports;

/// <summary>
/// Durable access-control state: tenants, principals, API tokens (hashes only), role
/// bindings, key policies and grants. Authentication looks principals and tokens up
/// deployment-wide (a credential names its principal, not a tenant); everything else is
/// read within a tenant.
/// </summary>
public interface IAccessStore
{
    /// <summary>Stores a new tenant.</summary>
    /// <exception cref="Errors.KmsException">AlreadyExists.</exception>
    Task CreateTenantAsync(Tenant tenant, CancellationToken cancellationToken);

    /// <summary>A tenant, or null.</summary>
    Task<Tenant?> GetTenantAsync(TenantId id, CancellationToken cancellationToken);

    /// <summary>Tenants in id order after <paramref name="afterId"/>.</summary>
    Task<IReadOnlyList<Tenant>> ListTenantsAsync(string? afterId, int limit, CancellationToken cancellationToken);

    /// <summary>Replaces a tenant's state and delete time; false if it does not exist.</summary>
    Task<bool> UpdateTenantAsync(Tenant tenant, CancellationToken cancellationToken);

    /// <summary>Stores a new principal, if its tenant (when it has one) is not being deleted when the write takes place.</summary>
    /// <exception cref="Errors.KmsException">AlreadyExists; FailedPrecondition: its tenant is being deleted.</exception>
    Task CreatePrincipalAsync(Principal principal, CancellationToken cancellationToken);

    /// <summary>A principal, or null.</summary>
    Task<Principal?> GetPrincipalAsync(PrincipalName name, CancellationToken cancellationToken);

    /// <summary>
    /// A principal with its tenant's state, in one read (a join), or null: a credential-cache miss
    /// needs both, and with <c>Kms:CredentialCacheTime=0</c> it happens on every call.
    /// </summary>
    Task<PrincipalWithTenantState?> GetPrincipalWithTenantStateAsync(PrincipalName name, CancellationToken cancellationToken);

    /// <summary>Principals of a tenant (null: deployment-level principals), in name order after <paramref name="afterName"/>; deleted ones only when asked.</summary>
    Task<IReadOnlyList<Principal>> ListPrincipalsAsync(TenantId? tenant, string? afterName, int limit, bool includeDeleted, CancellationToken cancellationToken);

    /// <summary>
    /// Offboards a principal in one write: it is marked deleted at <paramref name="deleteTime"/>
    /// (and disabled, which servers that know no deletion also refuse), its active API tokens
    /// are revoked at that time, its role bindings removed, and the active grants naming it
    /// revoked. Other nodes learn it from the change feed (an access change). A principal deleted
    /// already is left as it is (nothing is written).
    /// </summary>
    /// <returns>The principal as it now is, and whether this call deleted it; null if there is no such principal.</returns>
    /// <exception cref="Errors.KmsException">FailedPrecondition: it holds the last deployment-admin binding of a live principal (checked under the write lock).</exception>
    Task<(Principal Principal, bool Deleted)?> DeletePrincipalAsync(PrincipalName name, DateTimeOffset deleteTime, CancellationToken cancellationToken);

    /// <summary>Stores a new API token (its hash), if its principal is not deleted, nor its tenant being deleted, when the write takes place.</summary>
    /// <exception cref="Errors.KmsException">FailedPrecondition: the principal was deleted, or its tenant is being deleted.</exception>
    Task CreateApiTokenAsync(ApiToken token, CancellationToken cancellationToken);

    /// <summary>A token by id, or null.</summary>
    Task<ApiToken?> GetApiTokenAsync(string id, CancellationToken cancellationToken);

    /// <summary>A principal's tokens, newest first.</summary>
    Task<IReadOnlyList<ApiToken>> ListApiTokensAsync(PrincipalName principal, CancellationToken cancellationToken);

    /// <summary>
    /// One page of a principal's tokens (revoked and expired ones too), newest first, ties by id:
    /// at most <paramref name="limit"/> of them, those after <paramref name="after"/> (the last of
    /// the previous page) in that order.
    /// </summary>
    Task<IReadOnlyList<ApiToken>> ListApiTokensAsync(PrincipalName principal, (DateTimeOffset CreateTime, string Id)? after, int limit, CancellationToken cancellationToken);

    /// <summary>Revokes a token; false if it does not exist (revoking twice keeps the first time).</summary>
    Task<bool> RevokeApiTokenAsync(string id, DateTimeOffset revokeTime, CancellationToken cancellationToken);

    /// <summary>
    /// A one-time credential's use: revokes the token, with every other active token of its
    /// principal, in one step; true only for the one call that found it active. Of several
    /// credentials of one holder (the bootstrap credentials of nodes that started together),
    /// at most one is ever used.
    /// </summary>
    Task<bool> ConsumeApiTokenAsync(string id, DateTimeOffset revokeTime, CancellationToken cancellationToken);

    /// <summary>
    /// A Bootstrap call's writes, all in one transaction with the request's audit event: the
    /// credential is consumed as <see cref="ConsumeApiTokenAsync"/> does, the principal created
    /// (if new), the deployment-admin binding made and the session token stored. Either all of it
    /// commits or none: a failure part way neither uses the credential up without registering the
    /// admin (a lockout that only a new quorum request ends) nor registers an admin while the
    /// credential stays usable.
    /// </summary>
    /// <returns>False, with nothing written, when the credential was no longer active (used by another Bootstrap, revoked, or unknown).</returns>
    /// <exception cref="Errors.KmsException">AlreadyExists: the new principal or the session token's id exists; FailedPrecondition: the principal was deleted. Nothing is written.</exception>
    Task<bool> RegisterBootstrapAdminAsync(BootstrapRegistration registration, CancellationToken cancellationToken);

    /// <summary>Grants a role (idempotent), if the principal is not deleted, nor the tenant it is bound in being deleted, when the write takes place.</summary>
    /// <exception cref="Errors.KmsException">FailedPrecondition: the principal was deleted, or the binding's tenant is being deleted.</exception>
    Task SetRoleBindingAsync(RoleBinding binding, CancellationToken cancellationToken);

    /// <summary>Removes a role; false if it was not granted.</summary>
    Task<bool> DeleteRoleBindingAsync(PrincipalName principal, Role role, TenantId? tenant, CancellationToken cancellationToken);

    /// <summary>Every role bound to a principal.</summary>
    Task<IReadOnlyList<RoleBinding>> GetRoleBindingsAsync(PrincipalName principal, CancellationToken cancellationToken);

    /// <summary>Bindings within a tenant (null: deployment-wide bindings).</summary>
    Task<IReadOnlyList<RoleBinding>> ListRoleBindingsAsync(TenantId? tenant, CancellationToken cancellationToken);

    /// <summary>
    /// One page of the bindings within a tenant (null: deployment-wide bindings), in principal
    /// order, then role: at most
    /// <paramref name="limit"/>, those after <paramref name="after"/> (the last of the previous page).
    /// </summary>
    Task<IReadOnlyList<RoleBinding>> ListRoleBindingsAsync(TenantId? tenant, (string Principal, Role Role)? after, int limit, CancellationToken cancellationToken);

    /// <summary>
    /// Replaces a key's policy and marks the key restricted or not. Empty entries (no policy)
    /// also revoke the key's active grants at <paramref name="time"/>, in the same step: a grant
    /// narrows only a restricted key, and none may lie dormant for the next policy to revive.
    /// </summary>
    Task SetKeyPolicyAsync(KeyPolicy policy, DateTimeOffset time, CancellationToken cancellationToken);

    /// <summary>A key's policy (<see cref="KeyPolicy.None"/> when it has none).</summary>
    Task<KeyPolicy> GetKeyPolicyAsync(KeyName key, CancellationToken cancellationToken);

    /// <summary>Stores a grant, if its key is restricted by a policy and neither DESTROY_SCHEDULED nor DESTROYED, its tenant not being deleted and its grantee not deleted when the write takes place.</summary>
    /// <exception cref="Errors.KmsException">FailedPrecondition: the key's policy was lifted, its deletion scheduled or done, its tenant is being deleted, or the grantee was deleted.</exception>
    Task CreateGrantAsync(Grant grant, CancellationToken cancellationToken);

    /// <summary>A key's grants (revoked ones too when asked).</summary>
    Task<IReadOnlyList<Grant>> ListGrantsAsync(KeyName key, bool includeRevoked, CancellationToken cancellationToken);

    /// <summary>
    /// One page of a key's active grants, oldest first, ties by id: at most <paramref name="limit"/>,
    /// those after <paramref name="after"/> (the last of the previous page).
    /// </summary>
    Task<IReadOnlyList<Grant>> ListGrantsAsync(KeyName key, (DateTimeOffset CreateTime, string Id)? after, int limit, CancellationToken cancellationToken);

    /// <summary>Revokes a grant; false if it does not exist or was revoked already.</summary>
    Task<bool> RevokeGrantAsync(KeyName key, string grantId, DateTimeOffset revokeTime, CancellationToken cancellationToken);
}
