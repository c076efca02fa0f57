using System.Globalization;
using System.Security.Cryptography;
using System.Text;
using Kms.Core.Access;
using Kms.Core.Errors;
using Kms.Core.Names;
using Kms.Core.Ports;

namespace Kms.Core.Services;

/// <summary>
/// Tenants, principals, API tokens and role bindings. Callers are authorized by the
/// transport (per RPC, see AccessControl); this service keeps the model consistent: tenant
/// roles only within the principal's own tenant, deployment roles only deployment-wide,
/// token lifetimes bounded by kind.
/// </summary>
public sealed class AccessService(IAccessStore access, IKeyStore keys, TimeProvider time, LifecycleOptions lifecycle)
{
    /// <summary>Longest service token lifetime.</summary>
    public static readonly TimeSpan MaxServiceTokenLifetime = TimeSpan.FromDays(365);

    /// <summary>Default service token lifetime.</summary>
    public static readonly TimeSpan DefaultServiceTokenLifetime = TimeSpan.FromDays(90);

    /// <summary>Default (and longest sensible) operator session: 15 minutes; at most 12 hours.</summary>
    public static readonly TimeSpan DefaultSessionTokenLifetime = TimeSpan.FromMinutes(15);

    /// <summary>Longest operator session token.</summary>
    public static readonly TimeSpan MaxSessionTokenLifetime = TimeSpan.FromHours(12);

    /// <summary>Creates a tenant.</summary>
    public async Task<Tenant> CreateTenantAsync(TenantId id, string? displayName, CancellationToken cancellationToken)
    {
        var tenant = new Tenant(id, ValidateDisplayName(displayName, "display_name"), TenantState.Active, Clock.Now(time));
        Audit.AuditScope.SetResource(id.ResourceName);
        await access.CreateTenantAsync(tenant, cancellationToken);
        return tenant;
    }

    /// <summary>A tenant (NOT_FOUND if missing).</summary>
    public async Task<Tenant> GetTenantAsync(TenantId id, CancellationToken cancellationToken) =>
        await access.GetTenantAsync(id, cancellationToken) ?? throw KmsErrors.NotFound(id.ResourceName);

    /// <summary>One page of tenants.</summary>
    public async Task<Page<Tenant>> ListTenantsAsync(int pageSize, string? pageToken, CancellationToken cancellationToken)
    {
        var size = PageToken.Size(pageSize);
        var rows = await access.ListTenantsAsync(PageToken.Decode("tenants", pageToken), size + 1, cancellationToken);
        var page = rows.Take(size).ToList();
        return new Page<Tenant>(page, rows.Count > size ? PageToken.Encode("tenants", page[^1].Id.Value) : null);
    }

    /// <summary>
    /// Offboards a tenant: it becomes DELETING (nothing new can be created) and every key that
    /// is not already going is scheduled for deletion with the usual waiting period, which
    /// can still be cancelled key by key.
    /// </summary>
    /// <remarks>
    /// The decision commits first, in one write: the DELETING state with the waiting period asked
    /// for. The keys are then scheduled one write each; if that fails part way, the call fails, a
    /// retry resumes it, and the lifecycle worker's sweep schedules what is left with the same
    /// waiting period. A second call for a DELETING tenant resumes the first: it is refused if it
    /// asks for another waiting period, which the keys already scheduled would not get.
    /// </remarks>
    public async Task<Tenant> DeleteTenantAsync(TenantId id, TimeSpan? waitingPeriod, CancellationToken cancellationToken)
    {
        var tenant = await GetTenantAsync(id, cancellationToken);
        if (waitingPeriod is { } asked && (asked < lifecycle.MinWaitingPeriod || asked > lifecycle.MaxWaitingPeriod))
        {
            throw KmsErrors.InvalidArgument("waiting_period", $"must be from {lifecycle.MinWaitingPeriod.TotalDays:0.##} to {lifecycle.MaxWaitingPeriod.TotalDays:0.##} days");
        }

        var now = Clock.Now(time);
        TimeSpan waiting;
        if (tenant.State == TenantState.Deleting)
        {
            waiting = WaitingPeriodOf(tenant);
            if (waitingPeriod is { } other && other != waiting)
            {
                throw KmsErrors.FailedPrecondition(
                    $"tenant {id.ResourceName} is DELETING already, with a waiting period of {waiting.TotalDays:0.##} days; ask again without one, or with the same, to finish it");
            }
        }
        else
        {
            waiting = waitingPeriod ?? lifecycle.DefaultWaitingPeriod;
            tenant = tenant with { State = TenantState.Deleting, DeleteTime = tenant.DeleteTime ?? now, DeleteWaitingPeriod = waiting };
            await access.UpdateTenantAsync(tenant, cancellationToken);
        }

        await ScheduleTenantKeysAsync(id, now, waiting, null, cancellationToken);
        return tenant;
    }

    /// <summary>
    /// Stops a tenant's offboarding while its keys' waiting period runs: the tenant is ACTIVE
    /// again, so its principals' calls are served and its keys may have their deletion cancelled.
    /// Its keys are not touched: each stays DESTROY_SCHEDULED until a key manager of the tenant
    /// cancels its deletion (a key the tenant had scheduled itself before the offboarding cannot
    /// be told from one the offboarding scheduled, and none comes back that nobody asked for).
    /// An ACTIVE tenant is answered as it is, with nothing written.
    /// </summary>
    /// <remarks>
    /// The sweep and DeleteTenant schedule a key only while its tenant is DELETING, checked under
    /// the write lock (<see cref="KeyChange.OnlyWhileTenantDeleting"/>): one that read the tenant
    /// before this committed schedules nothing after it.
    /// </remarks>
    public async Task<TenantDeletionCancelled> CancelTenantDeletionAsync(TenantId id, CancellationToken cancellationToken)
    {
        var tenant = await GetTenantAsync(id, cancellationToken);
        if (tenant.State == TenantState.Deleting)
        {
            tenant = tenant with { State = TenantState.Active, DeleteTime = null, DeleteWaitingPeriod = null };
            await access.UpdateTenantAsync(tenant, cancellationToken);
        }

        var scheduled = 0;
        DateTimeOffset? earliest = null;
        string? after = null;
        while (true)
        {
            var page = await keys.ListKeysAsync(id, after, 500, cancellationToken);
            foreach (var key in page.Where(k => k.State == Keys.KeyState.DestroyScheduled))
            {
                scheduled++;
                earliest = key.DestroyTime is { } at && (earliest is null || at < earliest) ? at : earliest;
            }

            if (page.Count < 500)
            {
                return new TenantDeletionCancelled(tenant, scheduled, earliest);
            }

            after = page[^1].Name.KeyId;
        }
    }

    /// <summary>
    /// The lifecycle worker's sweep: keys of DELETING tenants that are not yet going (one a
    /// DeleteTenant that failed part way did not reach; a CreateKey racing DeleteTenant is refused
    /// in its own write) are scheduled for deletion with the waiting period the tenant's deletion asked for.
    /// </summary>
    /// <returns>How many DELETING tenants were swept.</returns>
    public async Task<int> SweepDeletingTenantsAsync(CancellationToken cancellationToken)
    {
        var swept = 0;
        string? after = null;
        while (true)
        {
            var page = await access.ListTenantsAsync(after, 500, cancellationToken);
            foreach (var tenant in page.Where(t => t.State == TenantState.Deleting))
            {
                await ScheduleTenantKeysAsync(tenant.Id, Clock.Now(time), WaitingPeriodOf(tenant), TenantOffboardingOperation, cancellationToken);
                swept++;
            }

            if (page.Count < 500)
            {
                return swept;
            }

            after = page[^1].Id.Value;
        }
    }

    // A tenant offboarded before the waiting period was recorded gets the default, as it did then.
    private TimeSpan WaitingPeriodOf(Tenant tenant) => tenant.DeleteWaitingPeriod ?? lifecycle.DefaultWaitingPeriod;

    /// <summary>The audit operation of the lifecycle worker's sweep scheduling a DELETING tenant's key for deletion.</summary>
    public const string TenantOffboardingOperation = "lifecycle/TenantOffboarding";

    // Only the keys still ENABLED or DISABLED in the listing are written (the decision checks
    // again under the write lock): the sweep visits every DELETING tenant on every pass, and a
    // tenant offboarded long ago must cost it one read per page, not a write per key. Under the
    // sweep (OPERATION) each key's change is audited as the lifecycle's own, committed with it;
    // under DeleteTenant the call's own event stands for them.
    private async Task ScheduleTenantKeysAsync(TenantId id, DateTimeOffset now, TimeSpan waiting, string? operation, CancellationToken cancellationToken)
    {
        now = await Clock.LatestAsync(now, keys, cancellationToken);
        string? after = null;
        while (true)
        {
            var page = await keys.ListKeysAsync(id, after, 500, cancellationToken);
            foreach (var key in page.Where(k => IsLive(k.State)))
            {
                using (operation is null ? null : Audit.AuditScope.EnterSystem(operation, key.Name.ToString(), time))
                {
                    await keys.UpdateKeyAsync(key.Name, current =>
                        IsLive(current.Key.State)
                            ? KeyTransitions.ScheduleKeyDeletion(current, now, waiting) with { OnlyWhileTenantDeleting = true }
                            : new KeyChange(current.Key) { IsNoOp = true }, cancellationToken);
                }
            }

            if (page.Count < 500)
            {
                return;
            }

            after = page[^1].Name.KeyId;
        }

        static bool IsLive(Keys.KeyState state) => state is Keys.KeyState.Enabled or Keys.KeyState.Disabled;
    }

    /// <summary>Registers a principal; a tenant principal's tenant must exist and be active.</summary>
    public async Task<Principal> CreatePrincipalAsync(PrincipalName name, TenantId? tenant, string? displayName, CancellationToken cancellationToken)
    {
        Audit.AuditScope.SetResource(AuditResourceOf(name, tenant));
        if (name == Authenticator.BootstrapPrincipal)
        {
            throw KmsErrors.InvalidArgument("name", $"{name} is reserved for the bootstrap credential");
        }

        if (tenant is { } id)
        {
            await TenantGate.EnsureActiveAsync(access, id, cancellationToken);
        }

        var principal = new Principal(name, tenant, ValidateDisplayName(displayName, "display_name"), Clock.Now(time));
        await EnsureLooksLikeNoOtherAsync(name, tenant, "name", cancellationToken);
        try
        {
            await access.CreatePrincipalAsync(principal, cancellationToken);
        }
        catch (KmsException e) when (e.Code == KmsErrorCode.AlreadyExists)
        {
            // The tombstone keeps the name: a key policy that still names the deleted principal
            // must not pass to a newcomer registered under it. Said so, not only "already exists".
            if (await access.GetPrincipalAsync(name, cancellationToken) is { Deleted: true })
            {
                throw KmsErrors.PrincipalNameRetired(name.ToString());
            }

            throw;
        }

        return principal;
    }

    /// <summary>A principal (NOT_FOUND if missing).</summary>
    public async Task<Principal> GetPrincipalAsync(PrincipalName name, CancellationToken cancellationToken) =>
        await access.GetPrincipalAsync(name, cancellationToken) ?? throw KmsErrors.NotFound(name.ToString());

    /// <summary>One page of a tenant's principals (null: deployment-level ones); deleted ones only when <paramref name="showDeleted"/>.</summary>
    /// <exception cref="KmsException">NotFound for a tenant that does not exist (as every list of a tenant's resources answers).</exception>
    public async Task<Page<Principal>> ListPrincipalsAsync(TenantId? tenant, int pageSize, string? pageToken, bool showDeleted, CancellationToken cancellationToken)
    {
        var size = PageToken.Size(pageSize);
        if (tenant is { } id)
        {
            await GetTenantAsync(id, cancellationToken);
        }

        // Not the tenant's name alone: ListKeys' tokens are scoped by that. With show_deleted, a
        // scope of its own: a token of one listing used with the other would start that one in
        // the middle, skipping what comes before.
        var scope = (tenant?.ResourceName ?? "deployment") + (showDeleted ? "/principals+deleted" : "/principals");
        var rows = await access.ListPrincipalsAsync(tenant, PageToken.Decode(scope, pageToken), size + 1, showDeleted, cancellationToken);
        var page = rows.Take(size).ToList();
        return new Page<Principal>(page, rows.Count > size ? PageToken.Encode(scope, page[^1].Name.ToString()) : null);
    }

    /// <summary>
    /// Offboards a principal: in one write it becomes DELETED, its API tokens are revoked, its
    /// role bindings removed and the grants naming it revoked, with the call's audit event. It
    /// no longer authenticates (token or certificate). The tombstone is kept: the name is never
    /// registered again, and key policies naming it are left as they are.
    /// </summary>
    /// <remarks>
    /// Deleting a deleted principal succeeds and changes nothing (the first deletion's time
    /// stands), so a retry whose answer was lost learns the state it asked for. A missing
    /// principal is NOT_FOUND. Nobody deletes the principal it calls as (another deployment admin
    /// must, as with one's own roles), and the store refuses, under its write lock, to delete the
    /// last principal holding deployment-admin, so two admins deleting each other at once leave one.
    /// </remarks>
    public async Task<Principal> DeletePrincipalAsync(Caller caller, PrincipalName name, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(caller);
        Audit.AuditScope.SetResource(name.ToString());
        if (caller.Principal == name.ToString())
        {
            throw KmsErrors.PermissionDenied($"{name} cannot delete itself; another deployment admin must");
        }

        var principal = await GetPrincipalAsync(name, cancellationToken);
        Audit.AuditScope.SetResource(AuditResourceOf(name, principal.Tenant));
        if (principal.Deleted)
        {
            return principal;
        }

        var deleted = await access.DeletePrincipalAsync(name, Clock.Now(time), cancellationToken) ?? throw KmsErrors.NotFound(name.ToString());
        return deleted.Principal;
    }

    /// <summary>
    /// Issues an API token to a token principal. The returned text is the only copy of the
    /// secret; the store keeps its SHA-256.
    /// </summary>
    public async Task<(ApiToken Token, string Text)> CreateApiTokenAsync(PrincipalName principal, ApiTokenKind kind, TimeSpan? lifetime, CancellationToken cancellationToken)
    {
        Audit.AuditScope.SetResource(principal.ToString());
        if (principal.Kind != PrincipalKind.Token)
        {
            throw KmsErrors.InvalidArgument("principal", "API tokens are issued to token: principals; certificate principals authenticate with their certificate");
        }

        var registered = await GetPrincipalAsync(principal, cancellationToken);
        Audit.AuditScope.SetResource(AuditResourceOf(principal, registered.Tenant));
        if (registered.Deleted)
        {
            throw KmsErrors.PrincipalDeleted(principal.ToString());
        }

        if (registered.Disabled)
        {
            throw KmsErrors.FailedPrecondition($"principal {principal} is disabled");
        }

        // No new credential for a principal of a tenant being offboarded.
        if (registered.Tenant is { } home)
        {
            await TenantGate.EnsureActiveAsync(access, home, cancellationToken);
        }

        if (kind == ApiTokenKind.Service
            && (await access.GetRoleBindingsAsync(principal, cancellationToken)).FirstOrDefault(b => Roles.IsAdministrative(b.Role)) is { } administrative)
        {
            throw KmsErrors.InvalidArgument("kind", $"{principal} holds {Roles.NameOf(administrative.Role)}: administrative roles get SESSION tokens only");
        }

        var (defaultLifetime, maxLifetime) = kind switch
        {
            ApiTokenKind.Service => (DefaultServiceTokenLifetime, MaxServiceTokenLifetime),
            ApiTokenKind.Session => (DefaultSessionTokenLifetime, MaxSessionTokenLifetime),
            _ => throw KmsErrors.InvalidArgument("kind", "must be SERVICE or SESSION"),
        };
        var ttl = lifetime ?? defaultLifetime;
        if (ttl <= TimeSpan.Zero || ttl > maxLifetime)
        {
            throw KmsErrors.InvalidArgument("lifetime", $"must be positive and at most {maxLifetime.TotalHours:0.##} hours for this kind of token");
        }

        return await IssueAsync(principal, kind, ttl, cancellationToken);
    }

    /// <summary>Revokes a token at once.</summary>
    public async Task RevokeApiTokenAsync(string tokenId, CancellationToken cancellationToken)
    {
        if (await access.GetApiTokenAsync(tokenId, cancellationToken) is { } token)
        {
            var holder = await access.GetPrincipalAsync(token.Principal, cancellationToken);
            Audit.AuditScope.SetResource($"{AuditResourceOf(token.Principal, holder?.Tenant)}/apiTokens/{tokenId}");
        }

        if (!await access.RevokeApiTokenAsync(tokenId, Clock.Now(time), cancellationToken))
        {
            throw KmsErrors.NotFound($"apiTokens/{tokenId}");
        }
    }

    /// <summary>
    /// One page of a principal's tokens (never their secrets), revoked and expired ones too, newest
    /// first; <see cref="Limits.FormerlyUnpagedDefaultPageSize"/> of them when no size is asked.
    /// </summary>
    /// <exception cref="KmsException">
    /// NotFound for a principal never registered (an empty list would say it has no token), except
    /// <c>token:bootstrap</c>, which holds the bootstrap and recovery credentials without being registered.
    /// InvalidArgument naming page_token for a token not issued for this principal's listing.
    /// </exception>
    public async Task<Page<ApiToken>> ListApiTokensAsync(PrincipalName principal, int pageSize, string? pageToken, CancellationToken cancellationToken)
    {
        var size = PageToken.Size(pageSize, Limits.FormerlyUnpagedDefaultPageSize);
        if (principal != Authenticator.BootstrapPrincipal)
        {
            await GetPrincipalAsync(principal, cancellationToken);
        }

        // Scoped by a digest of the principal's name: the name may hold '|', which the token's
        // layout keeps for its own separators, and may be long.
        var scope = "apiTokens/" + Convert.ToHexStringLower(SHA256.HashData(Encoding.UTF8.GetBytes(principal.ToString())))[..32];
        var rows = await access.ListApiTokensAsync(principal, PageToken.DecodeTimeAndId(scope, pageToken), size + 1, cancellationToken);
        var page = rows.Take(size).ToList();
        return new Page<ApiToken>(page, rows.Count > size ? PageToken.EncodeTimeAndId(scope, page[^1].CreateTime, page[^1].Id) : null);
    }

    /// <summary>
    /// Grants a role. A tenant role is bound within the principal's own tenant, which the caller
    /// names; whenever a tenant is named, a principal of another tenant is NOT_FOUND, exactly like
    /// a missing one, whatever the role. A deployment role goes only to a principal of no tenant. Nobody changes their own roles
    /// (separation of duties: an admin cannot make itself a key-user).
    /// </summary>
    public async Task<RoleBinding> SetRoleBindingAsync(Caller caller, PrincipalName name, Role role, TenantId? tenant, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(caller);
        var principal = await access.GetPrincipalAsync(name, cancellationToken);
        // Whatever the role: a principal outside the tenant named is answered like a missing one.
        if (principal is null || (tenant is not null && principal.Tenant != tenant))
        {
            throw KmsErrors.NotFound(name.ToString());
        }

        if (caller.Principal == name.ToString())
        {
            throw KmsErrors.PermissionDenied($"{name} cannot change its own roles; another administrator must (separation of duties)");
        }

        if (principal.Deleted)
        {
            throw KmsErrors.PrincipalDeleted(name.ToString());
        }

        // A workload identity never carries an administrative role (the authenticator drops one):
        // bound, it would grant nothing yet count as an admin — the last deployment admin's guard
        // would let the last one who can act be removed.
        if (name.Kind == PrincipalKind.Jwt && Roles.IsAdministrative(role))
        {
            throw KmsErrors.InvalidArgument("role", $"{Roles.NameOf(role)} is an administrative role, which a jwt: principal (workload identity) never carries; bind it to a certificate or token principal");
        }

        if (Roles.IsDeploymentRole(role))
        {
            if (tenant is not null)
            {
                throw KmsErrors.InvalidArgument("tenant", $"{Roles.NameOf(role)} is a deployment role: bind it without a tenant");
            }

            if (principal.Tenant is not null)
            {
                throw KmsErrors.InvalidArgument("principal", $"{Roles.NameOf(role)} is a deployment role: only principals of no tenant may hold it");
            }
        }
        else if (tenant is null)
        {
            throw KmsErrors.InvalidArgument("tenant", $"{Roles.NameOf(role)} is a tenant role: bind it in the principal's own tenant");
        }

        if (tenant is { } home)
        {
            // No new role in a tenant being offboarded.
            await TenantGate.EnsureActiveAsync(access, home, cancellationToken);
        }

        var binding = new RoleBinding(name, role, tenant, Clock.Now(time));
        await access.SetRoleBindingAsync(binding, cancellationToken);
        return binding;
    }

    /// <summary>Removes a role.</summary>
    /// <remarks>
    /// Removing a binding that is not there succeeds, as revoking a revoked grant or token does: a
    /// retry whose first answer was lost (the SDK sends this call again) is told the state it asked
    /// for, not NOT_FOUND. A principal that is missing, or outside the tenant named, is NOT_FOUND —
    /// the same answer for both, as <see cref="SetRoleBindingAsync"/> gives — and a role that cannot
    /// be bound where it is asked for (a deployment role in a tenant, a tenant role without one) is
    /// INVALID_ARGUMENT. The audit event's resource is the binding: the principal as
    /// <see cref="AuditResourceOf"/> names it, then <c>/roleBindings/ROLE</c>.
    /// </remarks>
    public async Task DeleteRoleBindingAsync(PrincipalName name, Role role, TenantId? tenant, CancellationToken cancellationToken)
    {
        // The event names the binding, not only its tenant: a restore of an older backup re-applies
        // the removal from it (Backup.AccessReplay), which it could not from the tenant alone.
        Audit.AuditScope.SetResource(Backup.AccessReplay.BindingResource(name, role, tenant));
        if (await access.DeleteRoleBindingAsync(name, role, tenant, cancellationToken))
        {
            return;
        }

        var principal = await access.GetPrincipalAsync(name, cancellationToken);
        if (principal is null || principal.Tenant != tenant)
        {
            throw KmsErrors.NotFound($"role binding {Roles.NameOf(role)} of {name}");
        }

        if (Roles.IsDeploymentRole(role) != tenant is null)
        {
            throw KmsErrors.InvalidArgument("tenant", Roles.IsDeploymentRole(role)
                ? $"{Roles.NameOf(role)} is a deployment role: it is bound, and removed, without a tenant"
                : $"{Roles.NameOf(role)} is a tenant role: name the principal's own tenant");
        }
    }

    /// <summary>
    /// One page of the bindings of a tenant (null: deployment-wide), for access reviews, in
    /// principal order then role; <see cref="Limits.FormerlyUnpagedDefaultPageSize"/> of them when
    /// no size is asked.
    /// </summary>
    /// <exception cref="KmsException">
    /// NotFound for a tenant that does not exist (as every list of a tenant's resources answers).
    /// InvalidArgument naming page_token for a token not issued for this tenant's listing.
    /// </exception>
    public async Task<Page<RoleBinding>> ListRoleBindingsAsync(TenantId? tenant, int pageSize, string? pageToken, CancellationToken cancellationToken)
    {
        var size = PageToken.Size(pageSize, Limits.FormerlyUnpagedDefaultPageSize);
        if (tenant is { } id)
        {
            await GetTenantAsync(id, cancellationToken);
        }

        var scope = (tenant?.ResourceName ?? "deployment") + "/roleBindings";
        var rows = await access.ListRoleBindingsAsync(tenant, DecodeBindingCursor(scope, pageToken), size + 1, cancellationToken);
        var page = rows.Take(size).ToList();
        return new Page<RoleBinding>(page, rows.Count > size
            ? PageToken.Encode(scope, string.Create(CultureInfo.InvariantCulture, $"{(int)page[^1].Role}:{page[^1].Principal}"))
            : null);
    }

    // "{role}:{principal}": the role (a number) first, since a principal's name holds ':'.
    private static (string Principal, Role Role)? DecodeBindingCursor(string scope, string? pageToken)
    {
        if (PageToken.Decode(scope, pageToken) is not { } cursor)
        {
            return null;
        }

        var colon = cursor.IndexOf(':', StringComparison.Ordinal);
        if (colon <= 0
            || !int.TryParse(cursor.AsSpan(0, colon), NumberStyles.None, CultureInfo.InvariantCulture, out var role)
            || !Enum.IsDefined((Role)role)
            || colon == cursor.Length - 1)
        {
            throw PageToken.Invalid();
        }

        return (cursor[(colon + 1)..], (Role)role);
    }

    /// <summary>The bootstrap credential's lifetime.</summary>
    public static readonly TimeSpan BootstrapTokenLifetime = TimeSpan.FromDays(7);

    /// <summary>
    /// The recovery credential's lifetime (an executed RECOVER_DEPLOYMENT_ADMIN request issues it):
    /// short, since it is used at once by whoever the officers asked to read the node's file.
    /// </summary>
    public static readonly TimeSpan RecoveryTokenLifetime = TimeSpan.FromMinutes(15);

    /// <summary>
    /// At start-up: revokes any earlier bootstrap credential and, when the deployment has no
    /// deployment admin yet, issues a new one-time one (returned as text, for the server to
    /// write to a 0600 file). Null once a deployment admin exists.
    /// </summary>
    public async Task<string?> RenewBootstrapTokenAsync(CancellationToken cancellationToken)
    {
        // Earlier credentials go either way: once an admin exists none may stay (several nodes
        // starting at once on an empty database each issue one, and only one is used). A recovery
        // credential stays: the officers' quorum issued it for its 15 minutes, and another node
        // restarting meanwhile must not take it away.
        foreach (var earlier in await access.ListApiTokensAsync(Authenticator.BootstrapPrincipal, cancellationToken))
        {
            if (earlier.RevokeTime is null && earlier.Kind != ApiTokenKind.Recovery)
            {
                await access.RevokeApiTokenAsync(earlier.Id, Clock.Now(time), cancellationToken);
            }
        }

        if (await HasDeploymentAdminAsync(cancellationToken))
        {
            return null;
        }

        return (await IssueAsync(Authenticator.BootstrapPrincipal, ApiTokenKind.Bootstrap, BootstrapTokenLifetime, cancellationToken)).Text;
    }

    private async Task<bool> HasDeploymentAdminAsync(CancellationToken cancellationToken) =>
        (await access.ListRoleBindingsAsync(null, cancellationToken)).Any(b => b.Role == Role.DeploymentAdmin);

    /// <summary>
    /// Uses the one-time bootstrap credential: registers the first deployment admin (a
    /// certificate principal, or a token principal that gets a session token) and revokes
    /// the credential in the same transaction (with the session token and the audit event), so a
    /// second use fails and a failed call leaves the credential usable for a retry. A recovery credential (issued by
    /// an executed RECOVER_DEPLOYMENT_ADMIN quorum request) registers one more deployment admin
    /// while others exist; they stay, and the new admin may remove them.
    /// </summary>
    /// <returns>The admin, and a session token when the admin is a token principal.</returns>
    public async Task<(Principal Admin, string? SessionToken)> BootstrapAsync(Caller caller, PrincipalName admin, string? displayName, CancellationToken cancellationToken)
    {
        // Everything that can be refused is checked before the credential is used up.
        ArgumentNullException.ThrowIfNull(caller);
        Audit.AuditScope.SetResource(admin.ToString());
        var name = ValidateDisplayName(displayName, "display_name");
        if (admin == Authenticator.BootstrapPrincipal)
        {
            throw KmsErrors.InvalidArgument("admin", $"{admin} is reserved for the bootstrap credential");
        }

        // A workload identity never carries an administrative role: such an admin could administer
        // nothing, and the one-time credential would be used up on it.
        if (admin.Kind == PrincipalKind.Jwt)
        {
            throw KmsErrors.InvalidArgument("admin", $"{admin} is a workload identity, which never carries deployment-admin; bootstrap a token: or certificate principal");
        }

        var principal = await access.GetPrincipalAsync(admin, cancellationToken);
        if (principal is { Deleted: true })
        {
            throw KmsErrors.PrincipalDeleted(admin.ToString());
        }

        if (principal?.Tenant is { } tenant)
        {
            throw KmsErrors.FailedPrecondition($"{admin} belongs to {tenant.ResourceName}; a deployment admin belongs to no tenant");
        }

        if (!caller.BootstrapRecovery && await HasDeploymentAdminAsync(cancellationToken))
        {
            throw KmsErrors.FailedPrecondition("the deployment has a deployment admin already: bootstrap is over, and this credential grants nothing " +
                "(if every deployment admin's credential is lost, the officers can approve a RECOVER_DEPLOYMENT_ADMIN quorum request)");
        }

        if (caller.BootstrapTokenId is not { } tokenId)
        {
            throw KmsErrors.Unauthenticated();
        }

        if (principal is null)
        {
            await EnsureLooksLikeNoOtherAsync(admin, null, "admin", cancellationToken);
        }

        // One write: the credential's use, the principal, its binding, the session token and the
        // audit event commit together or not at all. As separate writes, a failure after the
        // credential's use left it used with no admin registered (only a new quorum request
        // ended that), and the other order would register an admin with the credential still usable.
        var now = Clock.Now(time);
        var created = principal is null ? new Principal(admin, null, name, now) : null;
        (ApiToken Token, string Text)? session = admin.Kind == PrincipalKind.Token
            ? await NewTokenAsync(admin, ApiTokenKind.Session, DefaultSessionTokenLifetime, cancellationToken)
            : null;
        var registration = new BootstrapRegistration(tokenId, now, created, new RoleBinding(admin, Role.DeploymentAdmin, null, now), session?.Token);
        if (!await access.RegisterBootstrapAdminAsync(registration, cancellationToken))
        {
            throw KmsErrors.Unauthenticated();
        }

        return (principal ?? created!, session?.Text);
    }

    /// <summary>
    /// Bootstrap and dev mode: registers a principal (if new), binds roles and issues a token,
    /// all without a caller. Never reachable through the API.
    /// </summary>
    public async Task<string> ProvisionAsync(PrincipalName name, TenantId? tenant, IEnumerable<Role> roles, ApiTokenKind kind, TimeSpan lifetime, CancellationToken cancellationToken)
    {
        if (await access.GetPrincipalAsync(name, cancellationToken) is null)
        {
            await access.CreatePrincipalAsync(new Principal(name, tenant, "provisioned", Clock.Now(time)), cancellationToken);
        }

        foreach (var role in roles)
        {
            await access.SetRoleBindingAsync(new RoleBinding(name, role, Roles.IsDeploymentRole(role) ? null : tenant, Clock.Now(time)), cancellationToken);
        }

        return (await IssueAsync(name, kind, lifetime, cancellationToken)).Text;
    }

    private async Task<(ApiToken Token, string Text)> IssueAsync(PrincipalName principal, ApiTokenKind kind, TimeSpan lifetime, CancellationToken cancellationToken)
    {
        var (token, text) = await NewTokenAsync(principal, kind, lifetime, cancellationToken);
        await access.CreateApiTokenAsync(token, cancellationToken);
        return (token, text);
    }

    // A new token and its text, not yet stored.
    private async Task<(ApiToken Token, string Text)> NewTokenAsync(PrincipalName principal, ApiTokenKind kind, TimeSpan lifetime, CancellationToken cancellationToken)
    {
        var (id, text, hash) = ApiTokenSecret.Create();
        // Its life counted from the latest time the deployment has evidence of, by which the
        // Authenticator judges its expiry: a token issued on a node whose clock was set back is
        // not expired from the start.
        var now = await Clock.LatestAsync(Clock.Now(time), keys, cancellationToken);
        return (new ApiToken(id, principal, kind, hash, now, now + lifetime), text);
    }

    /// <summary>
    /// Refuses a new principal whose name prints like the name of a principal already registered
    /// in the same tenant (for a deployment principal: among the deployment's), deleted ones
    /// included: the same <see cref="PrincipalName.Skeleton"/>, i.e. the names differ only in
    /// letters of Greek, Cyrillic, Armenian or Cherokee drawn like Latin ones (<c>cn:ѕрасе</c> in
    /// Cyrillic and <c>cn:space</c>), or in which of two such scripts a letter is from. A name
    /// with a mixed-script letter never gets here (<see cref="PrincipalName.Parse"/>). It reads the
    /// tenant's principal names once, a page at a time: a creation is an administrator's call,
    /// rare beside crypto calls, and the store keeps no skeleton to look up.
    /// </summary>
    private async Task EnsureLooksLikeNoOtherAsync(PrincipalName name, TenantId? tenant, string field, CancellationToken cancellationToken)
    {
        if (name.Kind == PrincipalKind.Token)
        {
            // token: names are [a-z0-9-]: a prefix no other kind has, and no letter to mistake.
            return;
        }

        var skeleton = name.Skeleton();
        string? after = null;
        while (true)
        {
            var page = await access.ListPrincipalsAsync(tenant, after, SkeletonPageSize, true, cancellationToken);
            if (page.FirstOrDefault(p => p.Name != name && p.Name.Skeleton() == skeleton) is { } alike)
            {
                throw KmsErrors.InvalidArgument(field,
                    $"{name} prints like the principal {KmsErrors.Printable(alike.Name.ToString())}{(alike.Deleted ? " (deleted)" : "")} of the same {(tenant is null ? "deployment" : "tenant")}: "
                    + "they differ only in letters of Greek, Cyrillic, Armenian or Cherokee drawn like Latin ones; names must tell principals apart");
            }

            if (page.Count < SkeletonPageSize)
            {
                return;
            }

            after = page[^1].Name.ToString();
        }
    }

    private const int SkeletonPageSize = 500;

    /// <summary>
    /// A principal as its audit events name it: under its tenant (<c>tenants/acme/principals/token:ci</c>),
    /// so the tenant's auditors see what deployment principals did to its principals and tokens;
    /// a deployment principal by its name alone.
    /// </summary>
    public static string AuditResourceOf(PrincipalName name, TenantId? tenant) =>
        tenant is { } home ? $"{home.ResourceName}/principals/{name}" : name.ToString();

    // Shown to operators (listings, the CLI): no control character, nor one that hides or moves
    // text (DisplayText: U+202E would show them another name), nor a lone surrogate. By code
    // point, not by UTF-16 unit: the format characters beyond the BMP (the invisible tag
    // characters U+E0001, U+E0020–U+E007F) are two surrogates, neither of them a format character.
    private static string ValidateDisplayName(string? displayName, string field)
    {
        var text = displayName ?? "";
        if (text.Length > 200)
        {
            throw KmsErrors.InvalidArgument(field, "must be at most 200 characters");
        }

        for (var i = 0; i < text.Length;)
        {
            var lone = Rune.DecodeFromUtf16(text.AsSpan(i), out var rune, out var length) != System.Buffers.OperationStatus.Done;
            var codePoint = lone ? text[i] : rune.Value;
            if (lone || Rune.IsControl(rune) || DisplayText.HidesOrMovesText(rune))
            {
                throw KmsErrors.InvalidArgument(field, string.Create(CultureInfo.InvariantCulture,
                    $"holds U+{codePoint:X4}, a control, format (bidirectional, zero-width, tag) or separator character or a lone surrogate: a display name is shown to people as it is"));
            }

            i += length;
        }

        return text;
    }
}

/// <summary>
/// A tenant whose offboarding was stopped, with how many of its keys are still DESTROY_SCHEDULED
/// and the earliest of their destroy times (null when none is).
/// </summary>
public sealed record TenantDeletionCancelled(Tenant Tenant, int ScheduledKeys, DateTimeOffset? EarliestDestroyTime);
