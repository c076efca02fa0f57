using System.Collections.Concurrent;
using System.Net;
using System.Security.Cryptography;
using System.Text;
using Grpc.Core;
using Kms.Core;
using Kms.Core.Services;
using Kms.Server.Hosting;
using Microsoft.Extensions.Options;

namespace Kms.Server.Security;

/// <summary>
/// Establishes who is calling, from exactly one credential: a client certificate (mTLS,
/// verified against the configured CA and CRL), an API token (<c>Authorization: Bearer kms_…</c>)
/// or, where JWT issuers are configured, a workload identity token (<c>Authorization: Bearer</c>
/// with a compact JWS, verified by <see cref="JwtValidator"/>).
/// A request with both, or with neither, is unauthenticated. Successful authentications are
/// remembered for <see cref="KmsServerOptions.CredentialCacheTime"/> (never past the
/// credential's own expiry), keyed by a hash of the credential; changes made through this
/// node's API forget them at once. A certificate caller is remembered only under the client CA
/// bundle and CRL it was checked against, and never past the CRL's nextUpdate: a call on a
/// connection whose certificate the reloaded files revoke (or whose CA they drop) is checked again
/// and refused, although the connection's handshake — the only time the client presents its
/// certificate — was long ago. A workload identity caller likewise is remembered only under the key
/// sets it was verified with, and never past its token's <c>exp</c>. Time is <see cref="TrustedTime"/>'s, as for the credentials
/// themselves: a clock set back neither revives an expired credential nor stretches a cache entry.
/// An entry's age is counted on the monotonic clock as well: a clock that ran ahead while a caller
/// was remembered and was then put right would otherwise keep the entry until the wall clock came
/// back to where it had been — and while the node cannot read the change feed, the cache time is
/// how late another node's revocation reaches it.
/// </summary>
internal sealed class CallerAuthentication(
    Authenticator authenticator,
    IOptions<KmsServerOptions> options,
    TrustedTime time,
    TimeProvider clock,
    ClientCertificateValidator? certificates = null,
    JwtValidator? workloads = null,
    FailedAuthenticationLimit? failures = null,
    ILogger<CallerAuthentication>? logger = null)
{
    private const int MaxCachedCallers = 10_000;

    // The credentials found not valid, by the same key (a hash, never the credential), for as long as
    // accepted ones are remembered and under the same trust material: a client that keeps sending a
    // revoked or mistyped token costs one lookup per cache time, not one per call. Bounded as the
    // accepted ones are; forgotten with them (an access write on this node, the change feed on the others).
    // Until: when a refusal lapses by itself — a credential refused only as not yet valid (a JWT's nbf, the
    // notBefore of a certificate or of a CA of its chain) is checked again once it may be, as an accepted one
    // is once it may no longer be; one refused for another reason as well is remembered for the cache time.
    private readonly ConcurrentDictionary<string, (long Since, long TrustVersion, DateTimeOffset Until)> _failed = new(StringComparer.Ordinal);
    private readonly LogThrottle _refusedLog = new(clock);
    // TrustVersion: the client trust material a certificate caller was accepted under, the key sets a workload
    // identity was verified with (0 for an API token);
    // Since: when its authentication began, a monotonic timestamp (clock.GetTimestamp).
    private readonly ConcurrentDictionary<string, (Caller Caller, DateTimeOffset Until, long Since, long TrustVersion)> _cache = new(StringComparer.Ordinal);
    private readonly TimeSpan _cacheTime = options.Value.CredentialCacheTime;
    private long _generation;

    /// <summary>Whether client certificates are accepted (a client CA is configured).</summary>
    public bool MutualTls => certificates is not null;

    // What GrpcFramingCheck leaves on a call it found without a valid credential before reading the
    // body, for the first check of the same call (the interceptor's): a refusal is taken as it is (no
    // second lookup of a credential that is not valid). A caller it accepted leaves nothing and is
    // authenticated again (a cache hit), because the message may have taken long to arrive and a
    // revocation made meanwhile must refuse the call. A request feature, not HttpContext.Items: looking
    // for one allocates nothing, where the items table is created on every call that asks it.
    private sealed class EarlyRefusal
    {
        public static readonly EarlyRefusal Instance = new();
    }

    /// <summary>The caller, or null when the request carries no valid credential (or two).</summary>
    /// <remarks>
    /// The first check of a call takes the refusal <see cref="AuthenticateBeforeBodyAsync"/> found
    /// for it, if it found one; a caller it accepted is authenticated again, as every later check
    /// (a stream checked again) is: the credential as it is now, not as it was before the message
    /// arrived (a token revoked while the message was being sent refuses the call).
    /// </remarks>
    public ValueTask<Caller?> AuthenticateAsync(ServerCallContext context)
    {
        var http = context.GetHttpContext();
        if (http.Features.Get<EarlyRefusal>() is not null)
        {
            http.Features.Set<EarlyRefusal>(null);
            return ValueTask.FromResult<Caller?>(null);
        }

        return AuthenticateAsync(http, context.CancellationToken);
    }

    /// <summary>
    /// Authenticates a call from its headers before the rest of its message is waited for (only when
    /// it did not arrive whole), so that the server holds no more than a small message of a request
    /// without a valid credential; a refusal is kept for
    /// the call's own check (<see cref="AuthenticateAsync(ServerCallContext)"/>), which authenticates
    /// an accepted caller again once the message has arrived.
    /// </summary>
    public async ValueTask<Caller?> AuthenticateBeforeBodyAsync(HttpContext http)
    {
        var caller = await AuthenticateAsync(http, http.RequestAborted);
        if (caller is null)
        {
            // Only a refusal is kept (an accepted caller is checked again anyway).
            http.Features.Set(EarlyRefusal.Instance);
        }
        else
        {
            AcceptedBeforeBody?.Invoke(caller);
        }

        return caller;
    }

    /// <summary>
    /// Raised with each caller <see cref="AuthenticateBeforeBodyAsync"/> accepts, before the rest of
    /// its call's message is waited for (tests: a credential revoked after it and before the message
    /// has arrived must refuse the call).
    /// </summary>
    internal event Action<Caller>? AcceptedBeforeBody;

    private ValueTask<Caller?> AuthenticateAsync(HttpContext http, CancellationToken cancellationToken)
    {
        // Straight from the request's headers: ServerCallContext.RequestHeaders would copy them all.
        var authorizations = http.Request.Headers.Authorization;
        var certificate = http.Connection.ClientCertificate;
        if (authorizations.Count > 1 || (authorizations.Count == 1 && certificate is not null))
        {
            return ValueTask.FromResult<Caller?>(null);
        }

        if (authorizations.Count == 1)
        {
            const string scheme = "Bearer ";
            var authorization = authorizations[0] ?? "";
            if (!authorization.StartsWith(scheme, StringComparison.OrdinalIgnoreCase))
            {
                return ValueTask.FromResult<Caller?>(null);
            }

            var bearer = authorization.AsSpan(scheme.Length).Trim();
            if (bearer.StartsWith("kms_", StringComparison.Ordinal))
            {
                var key = CacheKey('t', bearer);
                return TryCached(key, 0, out var known)
                    ? ValueTask.FromResult(known)
                    : new ValueTask<Caller?>(TokenAsync(key, bearer.ToString(), Charge(http), cancellationToken));
            }

            // A workload identity token, only where issuers are configured; anything else is no credential.
            if (workloads is not null && JwtValidator.LooksLikeJwt(bearer))
            {
                var key = CacheKey('j', bearer);
                return TryCached(key, workloads.TrustVersion, out var known)
                    ? ValueTask.FromResult(known)
                    : new ValueTask<Caller?>(WorkloadAsync(key, workloads, bearer.ToString(), Charge(http), cancellationToken));
            }

            return ValueTask.FromResult<Caller?>(null);
        }

        if (certificate is not null && certificates is not null)
        {
            var key = CacheKey('c', certificate.RawData);
            return TryCached(key, certificates.TrustVersion, out var known)
                ? ValueTask.FromResult(known)
                : new ValueTask<Caller?>(CertificateAsync(key, certificates, certificate, Charge(http), cancellationToken));
        }

        return ValueTask.FromResult<Caller?>(null);
    }

    // The cache misses, apart: their closures are allocated only when they run.
    private Task<Caller?> TokenAsync(string key, string token, IPAddress? charged, CancellationToken cancellationToken) =>
        RememberAsync(key, 0, charged, async () => (await authenticator.AuthenticateTokenAsync(token, cancellationToken), null, 0));

    // Remembered under the key sets it was verified with, and never past its exp.
    private Task<Caller?> WorkloadAsync(string key, JwtValidator validator, string token, IPAddress? charged, CancellationToken cancellationToken) =>
        RememberAsync(key, validator.TrustVersion, charged, async () =>
        {
            var trustVersion = validator.TrustVersion;
            if (validator.Validate(token, time.GetUtcNow(), out _, out var validFrom) is not { } identity)
            {
                return (null, validFrom, 0);
            }

            return (await authenticator.AuthenticateWorkloadAsync(identity.Principal, identity.Expires, cancellationToken), identity.Expires, trustVersion);
        });

    private Task<Caller?> CertificateAsync(string key, ClientCertificateValidator validator, System.Security.Cryptography.X509Certificates.X509Certificate2 certificate, IPAddress? charged, CancellationToken cancellationToken) =>
        RememberAsync(key, validator.TrustVersion, charged, async () =>
        {
            if (validator.Accept(certificate, out var validFrom) is not { } accepted || ClientCertificateValidator.PrincipalOf(certificate) is not { } principal)
            {
                return (null, validFrom, 0);
            }

            return (await authenticator.CallerForAsync(principal, cancellationToken), accepted.Until, accepted.TrustVersion);
        });

    /// <summary>The workload identity verifier, if issuers are configured (tests count its verifications).</summary>
    internal JwtValidator? Workloads => workloads;

    /// <summary>The client certificate verifier, if a client CA is configured (tests count its verifications).</summary>
    internal ClientCertificateValidator? Certificates => certificates;

    /// <summary>How many times remembered callers were forgotten (tests).</summary>
    internal long Generation => Interlocked.Read(ref _generation);

    /// <summary>Forgets every remembered caller (after a change to tokens, principals or bindings).</summary>
    public void Forget()
    {
        // An authentication already under way read the old state: it must not be remembered.
        Interlocked.Increment(ref _generation);
        _cache.Clear();
        _failed.Clear();
        failures?.Reset();
    }

    // Whether the credential is answered from the cache: accepted (caller) or found not valid (null).
    private bool TryCached(string key, long trustVersion, out Caller? caller)
    {
        caller = _cache.TryGetValue(key, out var cached) && cached.TrustVersion == trustVersion && time.GetUtcNow() < cached.Until
            && clock.GetElapsedTime(cached.Since) < _cacheTime
            ? cached.Caller
            : null;
        return caller is not null
            || (_failed.TryGetValue(key, out var failed) && failed.TrustVersion == trustVersion && clock.GetElapsedTime(failed.Since) < _cacheTime
                && time.GetUtcNow() < failed.Until);
    }

    // Before a credential is looked up or verified: one of its client address's failures is taken
    // (given back if it is accepted); an address that has none left is refused here, before any lookup.
    // RESOURCE_EXHAUSTED, not UNAUTHENTICATED: the credential was not checked, and a client told its
    // credential is not valid drops a good one (or pages someone); told to wait, it retries.
    private IPAddress? Charge(HttpContext http)
    {
        if (failures is null || http.Connection.RemoteIpAddress is not { } address)
        {
            return null;
        }

        if (failures.TryTake(address, out var charged, out var retryAfter))
        {
            return charged;
        }

        if (logger is not null && _refusedLog.Count() is > 0 and var count)
        {
            ServerLog.FailedAuthenticationsBounded(logger, charged.ToString(), failures.PerMinute, count);
        }

        var status = new Google.Rpc.Status
        {
            Code = (int)Google.Rpc.Code.ResourceExhausted,
            Message = $"too many credentials from this client address failed authentication (Kms:MaxFailedAuthenticationsPerClientAddress: {failures.PerMinute} a minute); this one was not checked: retry after {retryAfter.TotalMilliseconds:0} ms",
            Details = { Google.Protobuf.WellKnownTypes.Any.Pack(new Google.Rpc.RetryInfo { RetryDelay = Google.Protobuf.WellKnownTypes.Duration.FromTimeSpan(retryAfter) }) },
        };
        throw status.ToRpcException();
    }

    // credentialExpiry: when the credential's acceptance lapses by itself (the earliest notAfter of a certificate's chain,
    // its CRL's nextUpdate) — or, for one refused, when the refusal does (not yet valid until then); trustVersion: the
    // client trust material it was accepted under.
    // checkedUnder: the trust version the credential is checked under (a refusal is remembered under it);
    // charged: the client address a failure was taken from (given back unless the credential is refused).
    private async Task<Caller?> RememberAsync(string key, long checkedUnder, IPAddress? charged, Func<Task<(Caller? Caller, DateTimeOffset? CredentialExpiry, long TrustVersion)>> authenticate)
    {
        var now = time.GetUtcNow();
        var since = clock.GetTimestamp();
        var generation = Interlocked.Read(ref _generation);
        Caller? caller;
        DateTimeOffset? credentialExpiry;
        long trustVersion;
        try
        {
            (caller, credentialExpiry, trustVersion) = await authenticate();
        }
        catch
        {
            // Not judged (the database unreachable): not a failure of the credential.
            if (charged is not null)
            {
                failures!.Accepted(charged);
            }

            throw;
        }

        if (caller is null)
        {
            _cache.TryRemove(key, out _);
            if (_failed.Count >= MaxCachedCallers)
            {
                _failed.Clear();
            }

            _failed[key] = (since, checkedUnder, credentialExpiry ?? DateTimeOffset.MaxValue);
            if (Interlocked.Read(ref _generation) != generation)
            {
                _failed.TryRemove(key, out _);
            }

            return null;
        }

        if (charged is not null)
        {
            failures!.Accepted(charged);
        }

        _failed.TryRemove(key, out _);

        var until = now + _cacheTime;
        foreach (var limit in new[] { caller.ValidUntil, credentialExpiry })
        {
            if (limit is { } value && value < until)
            {
                until = value;
            }
        }

        if (_cache.Count >= MaxCachedCallers)
        {
            _cache.Clear();
        }

        _cache[key] = (caller, until, since, trustVersion);
        if (Interlocked.Read(ref _generation) != generation)
        {
            _cache.TryRemove(key, out _);
        }

        return caller;
    }

    // The cache key of a credential: its kind and the hex SHA-256 of its bytes (the credential
    // itself is never kept), one string allocated.
    private static string CacheKey(char kind, ReadOnlySpan<char> token)
    {
        var length = Encoding.UTF8.GetByteCount(token);
        var utf8 = length <= 1024 ? stackalloc byte[length] : new byte[length];
        Encoding.UTF8.GetBytes(token, utf8);
        return CacheKey(kind, utf8);
    }

    private static string CacheKey(char kind, ReadOnlySpan<byte> credential)
    {
        Span<byte> digest = stackalloc byte[SHA256.HashSizeInBytes];
        SHA256.HashData(credential, digest);
        Span<char> key = stackalloc char[2 + (2 * SHA256.HashSizeInBytes)];
        key[0] = kind;
        key[1] = ':';
        Convert.TryToHexString(digest, key[2..], out _);
        return new string(key);
    }
}
