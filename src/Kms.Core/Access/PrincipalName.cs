using System.Text.RegularExpressions;
using Kms.Core.Audit;
using Kms.Core.Errors;
using Kms.Shared;

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

    /// <summary>
    /// Parses <c>spiffe:…</c>, <c>cn:…</c>, <c>token:…</c> or <c>jwt:…</c>: a name a request gives
    /// a principal (creation, a role binding, a grant, a key policy), under <see cref="IsValid"/>.
    /// </summary>
    /// <exception cref="KmsException">InvalidArgument naming <paramref name="field"/>; for a name in another form than Unicode's NFC, holding a character that hides or moves text, or mixing letters of scripts that look alike, saying so.</exception>
    public static PrincipalName Parse(string? name, string field)
    {
        var parsed = ParseExisting(name, field);
        if (parsed.Kind != PrincipalKind.Token && !IsCanonical(parsed.Value))
        {
            throw KmsErrors.InvalidArgument(field, NotCanonical);
        }

        if (MixedScript(parsed.Kind, parsed.Value) is { } mixed)
        {
            throw KmsErrors.InvalidArgument(field,
                $"a principal name's letters must not mix scripts whose letters look alike ({LookAlikeScripts.ScriptList}): "
                + $"{LookAlikeScripts.CodePoint(mixed.CodePoint)} ({mixed.Script}) stands among {mixed.Among} letters, so the name prints like another");
        }

        return parsed;
    }

    /// <summary>
    /// When the letters of <paramref name="value"/> come from more than one of the scripts that
    /// look alike (Latin, Greek, Cyrillic, Armenian, Cherokee: <c>cn:pаyments</c> with a Cyrillic
    /// "а" prints as <c>cn:payments</c>), the first letter of the minority script; null otherwise.
    /// A <c>jwt:</c> name is judged by its subject (the issuer's name is always Latin), any other by
    /// its whole value: a SPIFFE ID's trust domain and path are ASCII by the SPIFFE standard, a
    /// common name is one name. Digits, punctuation and letters of other scripts count as none.
    /// </summary>
    public static (int CodePoint, string Script, string Among)? MixedScript(PrincipalKind kind, string value)
    {
        ArgumentNullException.ThrowIfNull(value);
        return kind switch
        {
            PrincipalKind.Token => null,
            PrincipalKind.Jwt => LookAlikeScripts.MixedScriptLetter(value.AsSpan(value.IndexOf(':', StringComparison.Ordinal) + 1)),
            _ => LookAlikeScripts.MixedScriptLetter(value),
        };
    }

    /// <summary>
    /// This name with every letter of Greek, Cyrillic, Armenian or Cherokee that is drawn like a
    /// Latin letter replaced by it (UTS #39's skeleton, for those letters only): two principals whose
    /// names have the same skeleton print alike (<c>cn:ѕрасе</c> in Cyrillic and <c>cn:space</c>).
    /// </summary>
    public string Skeleton() => LookAlikeScripts.Skeleton(ToString());

    /// <summary>
    /// Parses the name of a principal that may have been registered before names had to be
    /// canonical (<see cref="IsCanonical"/>): what the store reads back, and the requests that
    /// look one up, delete it, or remove its tokens and bindings. No credential authenticates
    /// such a principal any more; it can still be found and cleaned up.
    /// </summary>
    /// <exception cref="KmsException">InvalidArgument naming <paramref name="field"/>.</exception>
    public static PrincipalName ParseExisting(string? name, string field)
    {
        var colon = name?.IndexOf(':', StringComparison.Ordinal) ?? -1;
        if (string.IsNullOrEmpty(name) || colon <= 0)
        {
            throw KmsErrors.InvalidArgument(field, "must be spiffe:<uri>, cn:<common name>, token:<id> or jwt:<issuer>:<subject>");
        }

        var value = name[(colon + 1)..];
        return name[..colon] switch
        {
            "spiffe" when IsWellFormed(PrincipalKind.Spiffe, value) => Spiffe(value),
            "cn" when IsWellFormed(PrincipalKind.CommonName, value) => CommonName(value),
            "token" when IsWellFormed(PrincipalKind.Token, value) => Token(value),
            "jwt" when IsWellFormed(PrincipalKind.Jwt, value) => new PrincipalName(PrincipalKind.Jwt, value),
            _ => throw KmsErrors.InvalidArgument(field, "must be spiffe:spiffe://<…>, cn:<common name> (1 to 256 characters), token:<id> (1 to 63 of [a-z0-9-]) "
                + "or jwt:<issuer>:<subject> (issuer 1 to 32 of [a-z0-9-], subject 1 to 200 characters)"),
        };
    }

    /// <summary>
    /// Whether <paramref name="value"/> is a name of that kind: the same rule for a name a request
    /// gives (<see cref="Parse"/>) and for one read from a client certificate or a JWT's <c>sub</c>.
    /// Control characters and lone surrogates are never part of a name — it goes into logs, errors
    /// and the audit chain (PostgreSQL refuses a NUL). Nor is anything that would let two names
    /// that look the same be two principals, with their own roles, grants and audit trail
    /// (<see cref="IsCanonical"/>): a character that hides or moves text, or a name in another
    /// form than Unicode's NFC; nor letters of scripts that look alike, mixed (<see cref="MixedScript"/>).
    /// </summary>
    public static bool IsValid(PrincipalKind kind, string value) =>
        IsWellFormed(kind, value) && (kind == PrincipalKind.Token || (IsCanonical(value) && MixedScript(kind, value) is null));

    /// <summary>
    /// Whether <paramref name="value"/> (clean: no control character, no lone surrogate) is the one
    /// way to write what it shows: no character that hides or moves text
    /// (<see cref="DisplayText.HidesOrMovesText(System.Text.Rune)"/>: zero-width characters,
    /// bidirectional controls), and — Unicode's NFC, checked conservatively — no combining mark
    /// (a decomposed "e" + U+0301 looks like the composed "é"), no conjoining Hangul vowel or final
    /// consonant (they compose into syllables), no character that NFC replaces with another
    /// (U+212B ANGSTROM SIGN is "Å", CJK compatibility ideographs, …). The server runs without
    /// ICU (invariant globalization: .NET's normalisation would return its input unchanged), so
    /// the rule is one table of its own, the same on every node; it refuses some names that are
    /// NFC (any with a combining mark, as some scripts write every word).
    /// </summary>
    public static bool IsCanonical(string value)
    {
        ArgumentNullException.ThrowIfNull(value);
        foreach (var rune in value.EnumerateRunes())
        {
            if (rune.Value < 0x80)
            {
                continue;
            }

            if (DisplayText.HidesOrMovesText(rune)
                || System.Text.Rune.GetUnicodeCategory(rune) is System.Globalization.UnicodeCategory.NonSpacingMark
                    or System.Globalization.UnicodeCategory.SpacingCombiningMark or System.Globalization.UnicodeCategory.EnclosingMark
                || NfcReplaces(rune.Value))
            {
                return false;
            }
        }

        return true;
    }

    private const string NotCanonical = "a principal name must be the one way to write what it shows: in Unicode's NFC (composed: \"é\" as U+00E9, not \"e\" and U+0301), "
        + "with no combining mark, no character that NFC replaces (U+212B ANGSTROM SIGN, CJK compatibility ideographs) and no character that hides or moves text (zero-width characters, bidirectional controls)";

    // Characters NFC never leaves as they are, beyond combining marks: conjoining Hangul vowels and
    // final consonants (composed into syllables after a leading consonant), canonical singletons
    // and composition exclusions (Unicode's NFC_Quick_Check=No and Maybe, less the marks).
    private static bool NfcReplaces(int c) =>
        c is (>= 0x1161 and <= 0x1175) or (>= 0x11A8 and <= 0x11C2)
            or 0x0374 or 0x037E or 0x0387
            or (>= 0x0958 and <= 0x095F) or 0x09DC or 0x09DD or 0x09DF or 0x0A33 or 0x0A36 or (>= 0x0A59 and <= 0x0A5B) or 0x0A5E or 0x0B5C or 0x0B5D
            or 0x0F43 or 0x0F4D or 0x0F52 or 0x0F57 or 0x0F5C or 0x0F69 or 0x0F73 or 0x0F75 or 0x0F76 or 0x0F78 or 0x0F81 or 0x0F93 or 0x0F9D or 0x0FA2 or 0x0FA7 or 0x0FAC or 0x0FB9
            or 0x1F71 or 0x1F73 or 0x1F75 or 0x1F77 or 0x1F79 or 0x1F7B or 0x1F7D or 0x1FBB or 0x1FBE or 0x1FC9 or 0x1FCB or 0x1FD3 or 0x1FDB or 0x1FE3 or 0x1FEB or 0x1FEE or 0x1FEF or 0x1FF9 or 0x1FFB or 0x1FFD
            or 0x2000 or 0x2001 or 0x2126 or 0x212A or 0x212B or 0x2329 or 0x232A or 0x2ADC
            or (>= 0xF900 and <= 0xFAFF) or 0xFB1D or 0xFB1F or (>= 0xFB2A and <= 0xFB4E)
            or (>= 0x1D15E and <= 0x1D164) or (>= 0x1D1BB and <= 0x1D1C0) or (>= 0x2F800 and <= 0x2FA1F);

    // The shape of each kind, without IsCanonical: what names registered before it still pass.
    private static bool IsWellFormed(PrincipalKind kind, string value)
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
