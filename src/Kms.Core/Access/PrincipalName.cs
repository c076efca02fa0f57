using System.Text.RegularExpressions;
using Kms.Core.Audit;
using Kms.Core.Errors;

namespace Kms.Core.Access;

/// <summary>
/// A principal's name, always carrying its type, so one kind of credential can never stand
/// for another: <c>spiffe:spiffe://trust-domain/path</c> (a certificate's URI SAN),
/// <c>cn:common-name</c> (a certificate without a SPIFFE ID), <c>token:id</c> (API tokens),
/// <c>jwt:issuer-name:subject</c> (a workload identity token of a configured issuer).
/// </summary>
public sealed partial record PrincipalName
{
    private PrincipalName(PrincipalKind kind, string value)
    {
        Kind = kind;
        Value = value;
    }

    /// <summary>Which kind of credential authenticates this principal.</summary>
    public PrincipalKind Kind { get; }

    /// <summary>The name without its type prefix.</summary>
    public string Value { get; }

    /// <summary>A certificate principal named by its SPIFFE ID (URI SAN).</summary>
    public static PrincipalName Spiffe(string uri) => new(PrincipalKind.Spiffe, uri);

    /// <summary>A certificate principal named by its subject common name.</summary>
    public static PrincipalName CommonName(string cn) => new(PrincipalKind.CommonName, cn);

    /// <summary>A principal that authenticates with API tokens.</summary>
    public static PrincipalName Token(string id) => new(PrincipalKind.Token, id);

    /// <summary>
    /// A workload-identity principal: the subject (<c>sub</c>) of a JWT that the configured issuer
    /// named <paramref name="issuer"/> signed, e.g. <c>jwt:k8s:system:serviceaccount:payments:api</c>.
    /// </summary>
    public static PrincipalName Jwt(string issuer, string subject) => new(PrincipalKind.Jwt, $"{issuer}:{subject}");

    /// <summary>Parses <c>spiffe:…</c>, <c>cn:…</c>, <c>token:…</c> or <c>jwt:…</c>.</summary>
    /// <exception cref="KmsException">InvalidArgument naming <paramref name="field"/>.</exception>
    public static PrincipalName Parse(string? name, string field)
    {
        var colon = name?.IndexOf(':', StringComparison.Ordinal) ?? -1;
        if (string.IsNullOrEmpty(name) || colon <= 0)
        {
            throw KmsErrors.InvalidArgument(field, "must be spiffe:<uri>, cn:<common name>, token:<id> or jwt:<issuer>:<subject>");
        }

        var value = name[(colon + 1)..];
        return name[..colon] switch
        {
            "spiffe" when IsValid(PrincipalKind.Spiffe, value) => Spiffe(value),
            "cn" when IsValid(PrincipalKind.CommonName, value) => CommonName(value),
            "token" when IsValid(PrincipalKind.Token, value) => Token(value),
            "jwt" when IsValid(PrincipalKind.Jwt, value) => new PrincipalName(PrincipalKind.Jwt, value),
            _ => throw KmsErrors.InvalidArgument(field, "must be spiffe:spiffe://<…>, cn:<common name> (1 to 256 characters), token:<id> (1 to 63 of [a-z0-9-]) "
                + "or jwt:<issuer>:<subject> (issuer 1 to 32 of [a-z0-9-], subject 1 to 200 characters)"),
        };
    }

    /// <summary>
    /// Whether <paramref name="value"/> is a name of that kind: the same rule for a name a request
    /// gives and for one read from a client certificate. Control characters and lone surrogates are
    /// never part of a name — it goes into logs, errors and the audit chain (PostgreSQL refuses a NUL).
    /// A <c>jwt:</c> subject, which another system's users may partly choose (a CI's branch name),
    /// holds no character that hides or moves text either (<see cref="DisplayText.HidesOrMovesText(System.Text.Rune)"/>).
    /// </summary>
    public static bool IsValid(PrincipalKind kind, string value)
    {
        ArgumentNullException.ThrowIfNull(value);
        return kind switch
        {
            PrincipalKind.Spiffe => value.StartsWith("spiffe://", StringComparison.Ordinal) && value.Length <= 2048 && AuditText.IsClean(value),
            PrincipalKind.CommonName => value.Length is > 0 and <= 256 && AuditText.IsClean(value),
            PrincipalKind.Jwt => JwtIssuer().Match(value) is { Success: true } issuer
                && value.Length - issuer.Length is > 0 and <= MaxJwtSubjectLength && AuditText.IsClean(value)
                && !value.EnumerateRunes().Any(DisplayText.HidesOrMovesText),
            _ => TokenId().IsMatch(value),
        };
    }

    /// <inheritdoc />
    public override string ToString() => Kind switch
    {
        PrincipalKind.Spiffe => $"spiffe:{Value}",
        PrincipalKind.CommonName => $"cn:{Value}",
        PrincipalKind.Jwt => $"jwt:{Value}",
        _ => $"token:{Value}",
    };

    /// <summary>The longest subject (<c>sub</c> claim) a <c>jwt:</c> principal has.</summary>
    public const int MaxJwtSubjectLength = 200;

    /// <summary>Whether <paramref name="name"/> can name a configured JWT issuer: 1 to 32 of <c>[a-z0-9-]</c>.</summary>
    public static bool IsJwtIssuerName(string? name) => name is not null && JwtIssuerName().IsMatch(name);

    // The issuer's name and the colon after it: the subject is everything that follows (it may hold colons).
    [GeneratedRegex("^[a-z0-9-]{1,32}:", RegexOptions.CultureInvariant)]
    private static partial Regex JwtIssuer();

    [GeneratedRegex("^[a-z0-9-]{1,32}\\z", RegexOptions.CultureInvariant)]
    private static partial Regex JwtIssuerName();

    [GeneratedRegex("^[a-z][a-z0-9-]{0,62}\\z", RegexOptions.CultureInvariant)]
    private static partial Regex TokenId();
}

/// <summary>How a principal authenticates.</summary>
public enum PrincipalKind
{
    /// <summary>Client certificate with a SPIFFE ID.</summary>
    Spiffe,

    /// <summary>Client certificate, named by its subject CN.</summary>
    CommonName,

    /// <summary>API token.</summary>
    Token,

    /// <summary>A JWT of a configured issuer (workload identity), named by issuer and subject.</summary>
    Jwt,
}
