using Kms.Core.Names;

namespace Kms.Core.Access;

/// <summary>A tenant: the boundary of every key, alias and role binding.</summary>
public sealed record Tenant(TenantId Id, string DisplayName, TenantState State, DateTimeOffset CreateTime)
{
    /// <summary>When offboarding began (DeleteTenant), if it did.</summary>
    public DateTimeOffset? DeleteTime { get; init; }

    /// <summary>
    /// The waiting period DeleteTenant asked for, recorded with the tenant's DELETING state:
    /// every key of the tenant is scheduled for deletion with it, also one that the call did not
    /// reach (it failed part way) or that escaped it (the lifecycle worker's sweep). Null for a
    /// tenant offboarded before it was recorded (its keys get the default).
    /// </summary>
    public TimeSpan? DeleteWaitingPeriod { get; init; }
}

/// <summary>A tenant's lifecycle.</summary>
public enum TenantState
{
    /// <summary>In use.</summary>
    Active = 1,

    /// <summary>Offboarding: all its keys are scheduled for deletion; nothing new may be created.</summary>
    Deleting = 2,
}

/// <summary>
/// A registered principal: who it is (typed name), which tenant it belongs to (none for
/// deployment-level principals), and whether it may still authenticate.
/// </summary>
public sealed record Principal(PrincipalName Name, TenantId? Tenant, string DisplayName, DateTimeOffset CreateTime)
{
    /// <summary>Disabled principals cannot authenticate. A deleted principal is disabled too.</summary>
    public bool Disabled { get; init; }

    /// <summary>When DeletePrincipal offboarded it, if it did.</summary>
    /// <remarks>
    /// A deleted principal is a tombstone that is kept: it never authenticates again, gets no
    /// token, role or grant, and its name is never registered again, so a key policy that still
    /// names it cannot be inherited by a newcomer of the same name.
    /// </remarks>
    public DateTimeOffset? DeleteTime { get; init; }

    /// <summary>Whether it was deleted.</summary>
    public bool Deleted => DeleteTime is not null;
}

/// <summary>
/// A principal and the state of its tenant, read together in one query (what authenticating a
/// caller needs: a principal of a tenant being deleted is refused).
/// </summary>
/// <param name="Principal">The principal (also a deleted one: a tombstone).</param>
/// <param name="TenantState">Its tenant's state; null when it belongs to no tenant (or the tenant row is missing).</param>
public sealed record PrincipalWithTenantState(Principal Principal, TenantState? TenantState);

/// <summary>A role granted to a principal: within its tenant (tenant roles) or deployment-wide.</summary>
public sealed record RoleBinding(PrincipalName Principal, Role Role, TenantId? Tenant, DateTimeOffset CreateTime);

/// <summary>What an API token is for: how long it may live.</summary>
public enum ApiTokenKind
{
    /// <summary>A service's token: may live long (default 90 days).</summary>
    Service = 1,

    /// <summary>An operator's session: short-lived (default 15 minutes).</summary>
    Session = 2,

    /// <summary>The one-time bootstrap credential: invalid after its first use.</summary>
    Bootstrap = 3,

    /// <summary>
    /// The one-time recovery credential an executed RECOVER_DEPLOYMENT_ADMIN quorum request
    /// issued: like <see cref="Bootstrap"/>, but Bootstrap accepts it while deployment admins exist.
    /// </summary>
    Recovery = 4,
}

/// <summary>
/// An API token as stored: never the secret, only its SHA-256, looked up by id and compared
/// in constant time.
/// </summary>
public sealed record ApiToken(string Id, PrincipalName Principal, ApiTokenKind Kind, byte[] SecretHash, DateTimeOffset CreateTime, DateTimeOffset ExpireTime)
{
    /// <summary>When it was revoked, if it was.</summary>
    public DateTimeOffset? RevokeTime { get; init; }

    /// <summary>Never the hash.</summary>
    public override string ToString() => $"ApiToken({Id}, {Principal}, {Kind}, expires {ExpireTime:O}{(RevokeTime is null ? "" : ", revoked")})";
}

/// <summary>Crypto operations a key policy or grant can allow.</summary>
[Flags]
public enum KeyOperations
{
    /// <summary>Nothing.</summary>
    None = 0,

    /// <summary>Encrypt, GenerateDataKey*, ReEncrypt into this key; GetPublicKey of an ASYMMETRIC_DECRYPT key.</summary>
    Encrypt = 1,

    /// <summary>Decrypt, ReEncrypt out of this key, AsymmetricDecrypt; GetPublicKey of an ASYMMETRIC_DECRYPT key.</summary>
    Decrypt = 2,

    /// <summary>Sign, GenerateMac, BatchGenerateMac.</summary>
    Sign = 4,

    /// <summary>Verify, VerifyMac, GetPublicKey (of an ASYMMETRIC_DECRYPT key too, as before ENCRYPT and DECRYPT did).</summary>
    Verify = 8,
}

/// <summary>
/// A key's policy: when present, only the listed principals may use the key, for the listed
/// operations (their role must still allow the operation: a policy only narrows).
/// </summary>
public sealed record KeyPolicy(KeyName Key, IReadOnlyDictionary<string, KeyOperations> Entries)
{
    /// <summary>No policy: every principal whose role allows it may use the key.</summary>
    public static KeyPolicy None(KeyName key) => new(key, new Dictionary<string, KeyOperations>());

    /// <summary>Whether a policy restricts the key.</summary>
    public bool Restricts => Entries.Count > 0;
}

/// <summary>
/// A grant (AWS KMS's idea): lets a principal use a policy-restricted key for some
/// operations, only when the request's encryption context contains the given pairs.
/// </summary>
public sealed record Grant(string Id, KeyName Key, PrincipalName Grantee, KeyOperations Operations, IReadOnlyDictionary<string, string> ContextEquals, DateTimeOffset CreateTime)
{
    /// <summary>The grant's resource name: <c>tenants/{t}/keys/{k}/grants/{id}</c>.</summary>
    public string Name => $"{Key}/grants/{Id}";

    /// <summary>When it was revoked, if it was.</summary>
    public DateTimeOffset? RevokeTime { get; init; }
}

/// <summary>
/// What one Bootstrap call writes, in one transaction
/// (<see cref="Ports.IAccessStore.RegisterBootstrapAdminAsync"/>): the one-time credential's use,
/// the new deployment admin (its principal when it is new, and its binding) and, for a token
/// principal, its session token.
/// </summary>
/// <param name="CredentialId">The one-time bootstrap or recovery credential the call consumes.</param>
/// <param name="Time">When: the credential's revoke time.</param>
/// <param name="NewPrincipal">The admin's principal to create; null when it exists already.</param>
/// <param name="Binding">The admin's deployment-admin binding.</param>
/// <param name="SessionToken">A token principal's session token (its hash); null for a certificate principal.</param>
public sealed record BootstrapRegistration(string CredentialId, DateTimeOffset Time, Principal? NewPrincipal, RoleBinding Binding, ApiToken? SessionToken);
