using Kms.Core.Access;
using Kms.Core.Ports;

namespace Kms.Core.Services;

/// <summary>
/// Turns a credential into a caller: an API token (looked up by id, secret hash compared in
/// constant time, expiry and revocation checked), a certificate principal the transport
/// has already verified, or a workload principal whose JWT the server has verified. Every failure is the same null, so a caller learns nothing that
/// helps guessing.
/// </summary>
/// <remarks>
/// Administrative roles (admin, deployment-admin, security-officer) come only with
/// short-lived session tokens or certificates: a long-lived service token, and a workload
/// identity token, authenticate their principal with the other roles only. Expiry is judged by <see cref="TrustedTime"/>: a node
/// whose clock was set back does not accept a token that has expired by the time this deployment
/// has evidence of.
/// </remarks>
public sealed class Authenticator(IAccessStore access, TrustedTime time)
{
    /// <summary>The bootstrap token's principal.</summary>
    public static readonly PrincipalName BootstrapPrincipal = PrincipalName.Token("bootstrap");

    /// <summary>The caller a bearer token stands for, or null; <see cref="Caller.ValidUntil"/> is the token's expiry.</summary>
    public async Task<Caller?> AuthenticateTokenAsync(string? bearer, CancellationToken cancellationToken)
    {
        if (!ApiTokenSecret.TryParse(bearer, out var id, out var hash))
        {
            return null;
        }

        var token = await access.GetApiTokenAsync(id, cancellationToken);
        if (token is null || !ApiTokenSecret.Matches(hash, token.SecretHash) || token.RevokeTime is not null || token.ExpireTime <= time.GetUtcNow())
        {
            return null;
        }

        if (token.Kind is ApiTokenKind.Bootstrap or ApiTokenKind.Recovery)
        {
            // The one-time credential: no roles; it may call Bootstrap (once) and nothing else.
            return new Caller(BootstrapPrincipal.ToString(), null, new HashSet<Role>())
            {
                BootstrapTokenId = token.Id,
                BootstrapRecovery = token.Kind == ApiTokenKind.Recovery,
                ValidUntil = token.ExpireTime,
            };
        }

        var caller = await CallerForAsync(token.Principal, cancellationToken);
        if (caller is null)
        {
            return null;
        }

        var roles = token.Kind == ApiTokenKind.Service ? WithoutAdministrative(caller.Roles) : caller.Roles;
        return caller with { Roles = roles, ValidUntil = token.ExpireTime, TokenId = token.Id };
    }

    /// <summary>
    /// The caller a verified workload-identity token (a JWT of a configured issuer) stands for: its
    /// principal's registered tenant and roles, without the administrative ones, as for a service
    /// token; <see cref="Caller.ValidUntil"/> is the token's expiry. Null as for <see cref="CallerForAsync"/>.
    /// </summary>
    /// <remarks>
    /// A JWT is a bearer credential that another system mints (a cluster, a cloud tenant, a CI): like a
    /// long-lived service token it never carries admin, deployment-admin or security-officer, whatever is bound.
    /// </remarks>
    public async Task<Caller?> AuthenticateWorkloadAsync(PrincipalName principal, DateTimeOffset expires, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(principal);
        if (principal.Kind != PrincipalKind.Jwt)
        {
            return null;
        }

        var caller = await CallerForAsync(principal, cancellationToken);
        return caller is null ? null : caller with { Roles = WithoutAdministrative(caller.Roles), ValidUntil = expires };
    }

    /// <summary>
    /// The caller a verified certificate principal stands for: its registered tenant and roles (none
    /// if unregistered), and whether that tenant is being deleted (<see cref="Caller.TenantDeleting"/>:
    /// its calls are refused where calls are authorized); null if disabled or deleted.
    /// </summary>
    /// <remarks>
    /// A deleted principal is refused outright (UNAUTHENTICATED), not authenticated without roles
    /// as an unregistered one is: its certificate may still be valid, and nothing may answer it.
    /// </remarks>
    public async Task<Caller?> CallerForAsync(PrincipalName name, CancellationToken cancellationToken)
    {
        // The tenant's state in the same read as the principal (one query on a credential-cache
        // miss, which with no cache is every call), and remembered with it: DeleteTenant forgets
        // remembered callers on its node at once, and on the others at their next read of the change feed.
        var found = await access.GetPrincipalWithTenantStateAsync(name, cancellationToken);
        var principal = found?.Principal;
        if (principal is { Disabled: true } or { Deleted: true })
        {
            return null;
        }

        var deleting = found?.TenantState is { } state && state != TenantState.Active;

        var roles = principal is null
            ? new HashSet<Role>()
            : (await access.GetRoleBindingsAsync(name, cancellationToken))
                .Where(b => Roles.IsDeploymentRole(b.Role) ? b.Tenant is null : b.Tenant == principal.Tenant)
                .Select(b => b.Role)
                .ToHashSet();
        return new Caller(name.ToString(), principal?.Tenant, roles) { TenantDeleting = deleting };
    }

    // The roles a service token or a workload identity carries: never an administrative one.
    private static HashSet<Role> WithoutAdministrative(IReadOnlySet<Role> roles) => roles.Where(r => !Roles.IsAdministrative(r)).ToHashSet();
}
