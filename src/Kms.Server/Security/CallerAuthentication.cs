using System.Collections.Concurrent;
using System.Security.Cryptography;
using System.Text;
using Grpc.Core;
using Kms.Core.Services;
using Kms.Server.Hosting;
using Microsoft.Extensions.Options;

namespace Kms.Server.Security;

/// <summary>
/// Establishes who is calling, from exactly one credential: a client certificate (mTLS,
/// verified against the configured CA and CRL) or an API token (<c>Authorization: Bearer</c>).
/// A request with both, or with neither, is unauthenticated. Successful authentications are
/// remembered for <see cref="KmsServerOptions.CredentialCacheTime"/> (never past the
/// credential's own expiry), keyed by a hash of the credential; changes made through this
/// node's API forget them at once.
/// </summary>
internal sealed class CallerAuthentication(
    Authenticator authenticator,
    IOptions<KmsServerOptions> options,
    TimeProvider time,
    ClientCertificateValidator? certificates = null)
{
    private const int MaxCachedCallers = 10_000;
    private readonly ConcurrentDictionary<string, (Caller Caller, DateTimeOffset Until)> _cache = new(StringComparer.Ordinal);
    private readonly TimeSpan _cacheTime = options.Value.CredentialCacheTime;
    private long _generation;

    /// <summary>Whether client certificates are accepted (a client CA is configured).</summary>
    public bool MutualTls => certificates is not null;

    /// <summary>The caller, or null when the request carries no valid credential (or two).</summary>
    public async Task<Caller?> AuthenticateAsync(ServerCallContext context)
    {
        var http = context.GetHttpContext();
        var authorization = context.RequestHeaders.GetValue("authorization");
        var certificate = http.Connection.ClientCertificate;
        if (authorization is not null && certificate is not null)
        {
            return null;
        }

        if (authorization is not null)
        {
            const string scheme = "Bearer ";
            if (!authorization.StartsWith(scheme, StringComparison.OrdinalIgnoreCase))
            {
                return null;
            }

            var token = authorization[scheme.Length..].Trim();
            return await CachedAsync("t:" + Hash(Encoding.UTF8.GetBytes(token)), () => authenticator.AuthenticateTokenAsync(token, context.CancellationToken), null);
        }

        if (certificate is not null && certificates is not null)
        {
            return await CachedAsync("c:" + Hash(certificate.RawData), async () =>
            {
                if (!certificates.Validate(certificate) || ClientCertificateValidator.PrincipalOf(certificate) is not { } principal)
                {
                    return null;
                }

                return await authenticator.CallerForAsync(principal, context.CancellationToken);
            }, new DateTimeOffset(certificate.NotAfter.ToUniversalTime()));
        }

        return null;
    }

    /// <summary>Forgets every remembered caller (after a change to tokens, principals or bindings).</summary>
    public void Forget()
    {
        // An authentication already under way read the old state: it must not be remembered.
        Interlocked.Increment(ref _generation);
        _cache.Clear();
    }

    private async Task<Caller?> CachedAsync(string key, Func<Task<Caller?>> authenticate, DateTimeOffset? credentialExpiry)
    {
        var now = time.GetUtcNow();
        if (_cache.TryGetValue(key, out var cached) && now < cached.Until)
        {
            return cached.Caller;
        }

        var generation = Interlocked.Read(ref _generation);
        var caller = await authenticate();
        if (caller is null)
        {
            _cache.TryRemove(key, out _);
            return null;
        }

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

        _cache[key] = (caller, until);
        if (Interlocked.Read(ref _generation) != generation)
        {
            _cache.TryRemove(key, out _);
        }

        return caller;
    }

    private static string Hash(byte[] credential) => Convert.ToHexString(SHA256.HashData(credential));
}
