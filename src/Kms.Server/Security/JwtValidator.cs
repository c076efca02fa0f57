using System.Text;
using System.Text.Json;
using Kms.Core;
using Kms.Core.Access;
using Kms.Server.Hosting;

namespace Kms.Server.Security;

/// <summary>
/// Verifies workload identity tokens — compact JWS JWTs of the configured issuers — with the keys
/// of each issuer's key set file (<see cref="JsonWebKeySet"/>, read again when it changes) and
/// nothing fetched: no URL a token or a key set names is ever followed.
/// </summary>
/// <remarks>
/// <para>A token is accepted only if all of this holds: at most <see cref="MaxTokenLength"/>
/// characters, three base64url parts; a header and claims that are JSON objects with no member twice and no name or string that is no text (an escaped unpaired surrogate); an
/// <c>alg</c> of ES256, ES384, RS256 or PS256 (never <c>none</c> or an HMAC: a public key is no
/// secret), no <c>crit</c>, and no <c>jwk</c>, <c>jku</c> or <c>x5u</c> (a token does not say
/// which key to trust); claims whose <c>iss</c> is
/// exactly a configured issuer's; a key of that issuer chosen by <c>kid</c> (or the set's only key
/// when the token names none) whose type, curve and own <c>alg</c> fit the header's <c>alg</c>; a
/// valid signature by it; then <c>aud</c> holding the issuer's audience, <c>exp</c> after now,
/// <c>nbf</c> (if any) and <c>iat</c> not after now (each with <see cref="ClockSkew"/>), <c>exp - iat</c>
/// at most the issuer's <c>MaxLifetime</c>, and a <c>sub</c> of 1 to 200 characters without control
/// characters.</para>
/// <para>Every refusal is the same to the caller (no identity); only its <see cref="JwtRefusal"/>
/// category is logged, never the token or a claim. Each load of any key set file is a new
/// <see cref="TrustVersion"/>: a caller remembered under the keys in force before is verified again.</para>
/// </remarks>
internal sealed partial class JwtValidator
{
    /// <summary>The longest token read (characters): larger is refused before anything is decoded.</summary>
    public const int MaxTokenLength = 8 * 1024;

    /// <summary>How far the issuer's clock and ours may disagree.</summary>
    public static readonly TimeSpan ClockSkew = TimeSpan.FromSeconds(60);

    private static readonly string[] Algorithms = ["ES256", "ES384", "RS256", "PS256"];
    private static readonly string[] RefusedHeaders = ["crit", "jwk", "jku", "x5u"];
    private readonly Issuer[] _issuers;
    private readonly ILogger _logger;

    // One throttle per refusal and issuer (issuers are few and configured; the index past the last
    // issuer is "no issuer known yet"): a misconfigured audience or a stale key set shows up at
    // Information once a second with its count, not as one line per call.
    private readonly LogThrottle[,] _refusalLogs;
    private long _loads;
    private long _verifications;

    /// <summary>How many tokens were verified (calls of Validate; tests count the ones the cache spared).</summary>
    internal long Verifications => Interlocked.Read(ref _verifications);

    /// <summary>Reads every issuer's key set once (a file that cannot be used throws here: the start is refused).</summary>
    public JwtValidator(IEnumerable<JwtIssuerOptions> issuers, TimeProvider time, ILogger logger)
    {
        ArgumentNullException.ThrowIfNull(time);
        _logger = logger;
        _issuers = issuers.Select(options => new Issuer(
            options.Name!,
            options.Issuer!,
            options.Audience!,
            options.MaxLifetime,
            new ReloadingFile<LoadedKeys>(
                () => new LoadedKeys(JsonWebKeySet.Load(options.JwksPath!), Interlocked.Increment(ref _loads)),
                time,
                e => LogKeySetNotReloaded(logger, options.Name!, e.Message),
                options.JwksPath!))).ToArray();
        foreach (var issuer in _issuers)
        {
            _ = issuer.Keys.Value;
        }

        _refusalLogs = new LogThrottle[Enum.GetValues<JwtRefusal>().Length, _issuers.Length + 1];
        for (var reason = 0; reason < _refusalLogs.GetLength(0); reason++)
        {
            for (var issuer = 0; issuer < _refusalLogs.GetLength(1); issuer++)
            {
                _refusalLogs[reason, issuer] = new LogThrottle(time);
            }
        }
    }

    /// <summary>
    /// The version of the key sets in force: another number once any file has been read again (each
    /// is looked at, at most once a second, when this is read). Takes no lock between looks.
    /// </summary>
    public long TrustVersion
    {
        get
        {
            // Each load takes a number larger than any before, so the sum grows with every load.
            var sum = 0L;
            foreach (var issuer in _issuers)
            {
                sum += issuer.Keys.Value.Version;
            }

            return sum;
        }
    }

    /// <summary>Whether <paramref name="bearer"/> has the shape of a JWS (three dot-separated parts); says nothing of its validity.</summary>
    public static bool LooksLikeJwt(ReadOnlySpan<char> bearer) => bearer.Count('.') == 2;

    /// <summary>The identity a token proves now, or null (and why, in <paramref name="refusal"/>: a category, never its content).</summary>
    public JwtIdentity? Validate(string token, DateTimeOffset now, out JwtRefusal refusal) => Validate(token, now, out refusal, out _);

    /// <summary>The identity a token proves now, or null (and why, in <paramref name="refusal"/>: a category, never its content).</summary>
    /// <param name="token">The compact JWS.</param>
    /// <param name="now">The time it is judged at.</param>
    /// <param name="refusal">Why it was refused (<see cref="JwtRefusal.None"/> if it was not).</param>
    /// <param name="validFrom">
    /// For a token refused only because it is not yet valid (<see cref="JwtRefusal.NotYetValid"/>, its
    /// signature verified): the first time it would pass that check; otherwise null.
    /// </param>
    public JwtIdentity? Validate(string token, DateTimeOffset now, out JwtRefusal refusal, out DateTimeOffset? validFrom)
    {
        Interlocked.Increment(ref _verifications);
        var identity = Check(token, now, out refusal, out var issuer, out validFrom);
        if (identity is null)
        {
            var index = issuer is null ? _issuers.Length : Array.IndexOf(_issuers, issuer);
            if (_refusalLogs[(int)refusal, index].Count() is > 0 and var count)
            {
                LogRefused(_logger, refusal, issuer?.Name ?? "(not known)", count);
            }
        }

        return identity;
    }

    private JwtIdentity? Check(string token, DateTimeOffset now, out JwtRefusal refusal, out Issuer? issuer, out DateTimeOffset? validFrom)
    {
        refusal = JwtRefusal.Malformed;
        issuer = null;
        validFrom = null;
        if (token.Length > MaxTokenLength)
        {
            return null;
        }

        var first = token.IndexOf('.', StringComparison.Ordinal);
        var second = first < 0 ? -1 : token.IndexOf('.', first + 1);
        if (first <= 0 || second <= first + 1 || second == token.Length - 1 || token.IndexOf('.', second + 1) >= 0)
        {
            return null;
        }

        if (!JsonWebKey.TryDecode(token.AsSpan(0, first), out var headerBytes)
            || !JsonWebKey.TryDecode(token.AsSpan(first + 1, second - first - 1), out var claimBytes)
            || !JsonWebKey.TryDecode(token.AsSpan(second + 1), out var signature))
        {
            return null;
        }

        using var header = ParseObject(headerBytes);
        using var claims = ParseObject(claimBytes);
        if (header is null || claims is null)
        {
            refusal = JwtRefusal.DuplicateOrMalformedJson;
            return null;
        }

        refusal = JwtRefusal.Header;
        if (RefusedHeaders.Any(name => header.RootElement.TryGetProperty(name, out _)))
        {
            return null;
        }

        refusal = JwtRefusal.Algorithm;
        if (String(header.RootElement, "alg") is not { } alg || !Algorithms.Contains(alg))
        {
            return null;
        }

        refusal = JwtRefusal.UnknownIssuer;
        var iss = String(claims.RootElement, "iss");
        issuer = _issuers.FirstOrDefault(i => string.Equals(i.Iss, iss, StringComparison.Ordinal));
        if (issuer is null)
        {
            return null;
        }

        // The token names a key of its issuer's set, or the set has just one.
        refusal = JwtRefusal.UnknownKey;
        var keys = issuer.Keys.Value.Set.Keys;
        JsonWebKey? key;
        if (header.RootElement.TryGetProperty("kid", out var kidElement))
        {
            var kid = kidElement.ValueKind == JsonValueKind.String ? kidElement.GetString() : null;
            key = kid is null ? null : keys.FirstOrDefault(k => k.Kid == kid);
        }
        else
        {
            key = keys.Count == 1 ? keys[0] : null;
        }

        if (key is null)
        {
            return null;
        }

        refusal = JwtRefusal.Algorithm;
        if (!key.Allows(alg))
        {
            return null;
        }

        refusal = JwtRefusal.Signature;
        if (!key.Verifies(alg, Encoding.ASCII.GetBytes(token, 0, second), signature))
        {
            return null;
        }

        return CheckClaims(issuer, claims.RootElement, now, out refusal, out validFrom);
    }

    private static JwtIdentity? CheckClaims(Issuer issuer, JsonElement claims, DateTimeOffset now, out JwtRefusal refusal, out DateTimeOffset? validFrom)
    {
        validFrom = null;
        refusal = JwtRefusal.Audience;
        if (!claims.TryGetProperty("aud", out var aud) || !HoldsAudience(aud, issuer.Audience))
        {
            return null;
        }

        refusal = JwtRefusal.Claims;
        if (Time(claims, "exp") is not { } exp || Time(claims, "iat") is not { } iat
            || (claims.TryGetProperty("nbf", out _) && Time(claims, "nbf") is null))
        {
            return null;
        }

        // now - skew, not exp + skew: an exp at the last second a date can hold has no date a minute after it.
        refusal = JwtRefusal.Expired;
        if (now - ClockSkew >= exp)
        {
            return null;
        }

        // Not yet valid: refused at the end, and only then with the time the refusal lapses — a token
        // that fails a check below as well is refused for good (before, its nbf was given all the same).
        var notBefore = Time(claims, "nbf") is { } nbf && nbf > iat ? nbf : iat;
        DateTimeOffset? notYetValidUntil = notBefore > now + ClockSkew ? notBefore - ClockSkew : null;

        refusal = JwtRefusal.Lifetime;
        if (exp - iat > issuer.MaxLifetime)
        {
            return null;
        }

        refusal = JwtRefusal.Subject;
        if (String(claims, "sub") is not { } sub || !PrincipalName.IsValid(PrincipalKind.Jwt, $"{issuer.Name}:{sub}"))
        {
            return null;
        }

        if (notYetValidUntil is not null)
        {
            refusal = JwtRefusal.NotYetValid;
            validFrom = notYetValidUntil;
            return null;
        }

        refusal = JwtRefusal.None;
        return new JwtIdentity(PrincipalName.Jwt(issuer.Name, sub), exp);
    }

    private static bool HoldsAudience(JsonElement aud, string audience) => aud.ValueKind switch
    {
        JsonValueKind.String => aud.GetString() == audience,
        JsonValueKind.Array => aud.EnumerateArray().All(a => a.ValueKind == JsonValueKind.String) && aud.EnumerateArray().Any(a => a.GetString() == audience),
        _ => false,
    };

    // A NumericDate (RFC 7519: seconds since the epoch, possibly fractional) within what a date can be.
    private static DateTimeOffset? Time(JsonElement claims, string name)
    {
        if (!claims.TryGetProperty(name, out var value) || value.ValueKind != JsonValueKind.Number || !value.TryGetDouble(out var seconds)
            || !double.IsFinite(seconds) || seconds < 0 || seconds > 253_402_300_799)
        {
            return null;
        }

        return DateTimeOffset.FromUnixTimeMilliseconds((long)(seconds * 1000));
    }

    private static string? String(JsonElement element, string name) =>
        element.TryGetProperty(name, out var value) && value.ValueKind == JsonValueKind.String ? value.GetString() : null;

    // A JSON object parsed strictly (JsonWebKeySet.ParseStrict), or null.
    private static JsonDocument? ParseObject(byte[] json)
    {
        JsonDocument document;
        try
        {
            document = JsonWebKeySet.ParseStrict(json);
        }
        catch (JsonException)
        {
            return null;
        }

        if (document.RootElement.ValueKind == JsonValueKind.Object)
        {
            return document;
        }

        document.Dispose();
        return null;
    }

    [LoggerMessage(EventId = 1114, Level = LogLevel.Information, Message = "bearer JWT refused ({Reason}, issuer {Issuer}); {Count} such refusals since the last such message")]
    private static partial void LogRefused(ILogger logger, JwtRefusal reason, string issuer, long count);

    [LoggerMessage(EventId = 1115, Level = LogLevel.Warning, Message = "JWT key set of issuer {Issuer} could not be reloaded ({Reason}); still using the previous keys")]
    private static partial void LogKeySetNotReloaded(ILogger logger, string issuer, string reason);

    private sealed record LoadedKeys(JsonWebKeySet Set, long Version);

    private sealed record Issuer(string Name, string Iss, string Audience, TimeSpan MaxLifetime, ReloadingFile<LoadedKeys> Keys);
}

/// <summary>What a valid workload identity token proves.</summary>
/// <param name="Principal">Its principal, <c>jwt:&lt;issuer name&gt;:&lt;sub&gt;</c>.</param>
/// <param name="Expires">Its <c>exp</c>: nothing may remember it longer.</param>
internal readonly record struct JwtIdentity(PrincipalName Principal, DateTimeOffset Expires);

/// <summary>Why a token was refused: what is logged, never shown to the caller.</summary>
internal enum JwtRefusal
{
    /// <summary>Not refused.</summary>
    None,

    /// <summary>Too long, not three base64url parts.</summary>
    Malformed,

    /// <summary>Header or claims are not one JSON object, a member is given twice, or a name or string is no text (an unpaired surrogate).</summary>
    DuplicateOrMalformedJson,

    /// <summary>A header this server never follows or does not understand: <c>crit</c>, <c>jwk</c>, <c>jku</c>, <c>x5u</c>.</summary>
    Header,

    /// <summary>An <c>alg</c> outside the allow-list, or one the chosen key is not for.</summary>
    Algorithm,

    /// <summary>An <c>iss</c> that is no configured issuer's.</summary>
    UnknownIssuer,

    /// <summary>No key of the issuer matches the <c>kid</c> (or the token names none and the set has several).</summary>
    UnknownKey,

    /// <summary>The signature does not verify.</summary>
    Signature,

    /// <summary>The issuer's audience is not in <c>aud</c>.</summary>
    Audience,

    /// <summary><c>exp</c> or <c>iat</c> missing, or a time that is no NumericDate.</summary>
    Claims,

    /// <summary>Past <c>exp</c>.</summary>
    Expired,

    /// <summary><c>nbf</c> or <c>iat</c> in the future.</summary>
    NotYetValid,

    /// <summary><c>exp - iat</c> longer than the issuer's <c>MaxLifetime</c>.</summary>
    Lifetime,

    /// <summary><c>sub</c> missing, empty, too long or with control characters.</summary>
    Subject,
}
