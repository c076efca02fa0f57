using System.Buffers;
using System.Globalization;
using System.Text;
using Kms.Shared;

namespace Kms.Ceremony.Shares;

/// <summary>
/// What a new custodian name may hold, and how any custodian name is shown in a message: a name
/// is read by people, in the ceremony transcript and on a terminal, and must not show them
/// another custodian.
/// </summary>
/// <remarks>
/// <para>A new name has no character of the Unicode categories Cc (control), Cf (format: the
/// bidirectional overrides and isolates, zero-width characters — U+202E shows
/// <c>alice\u202Eecila</c> as "alicealice", U+200B hides itself), Cs (a lone surrogate), Co
/// (private use), Cn (unassigned, noncharacters), Zl and Zp (line and paragraph separators).
/// The zero-width joiner and non-joiner are refused too (unlike in <c>DisplayText</c>, which only
/// decides what to escape): between Latin letters they make a second "alice".</para>
/// <para>Names are not checked for NFC: the processes run with InvariantGlobalization, where .NET
/// takes every string as normalised. An "é" typed decomposed is a different name from "é"
/// composed that looks the same; a share is told apart by its index and fingerprint, which the
/// transcript records with the name.</para>
/// <para>A new name's letters come from one of the scripts whose letters look alike — Latin, Greek,
/// Cyrillic, Armenian, Cherokee — not from two ("Оlga" with a Cyrillic "О" prints as "Olga"); and
/// the custodians of one ceremony have names that do not print alike (<see cref="CheckSet"/>).
/// Letters that look alike within one script ("rn" and "m") are not judged.</para>
/// <para>Names in share files written before this rule are still read (their shares are needed
/// to rebuild the key); every message of this library shows a name through
/// <see cref="Printable"/>.</para>
/// </remarks>
public static class CustodianName
{
    /// <summary>Why <paramref name="name"/> cannot be a new custodian's name, naming the offending code point as U+XXXX; null when it can.</summary>
    public static string? Check(string? name)
    {
        if (ShareMetadata.CheckLength(name) is { } problem)
        {
            return problem;
        }

        var text = name.AsSpan();
        for (var i = 0; i < text.Length;)
        {
            if (Refused(text[i..], out var codePoint, out var length) is { } what)
            {
                return $"the custodian name must not contain U+{codePoint:X4} ({what}): '{Printable(name!)}'";
            }

            i += length;
        }

        if (LookAlikeScripts.MixedScriptLetter(name) is { } mixed)
        {
            return $"the custodian name must not mix scripts whose letters look alike ({LookAlikeScripts.ScriptList}): "
                + $"{LookAlikeScripts.CodePoint(mixed.CodePoint)} ({mixed.Script}) stands among {mixed.Among} letters, so '{Printable(name!)}' prints like another name";
        }

        return ShareMetadata.CheckSpaces(name!);
    }

    /// <summary>
    /// Why the custodians of one ceremony cannot have these names, each already passing
    /// <see cref="Check"/>: two of them print alike, differing only in letters of Greek, Cyrillic,
    /// Armenian or Cherokee drawn like Latin ones ("Оlga" with a Cyrillic "О" beside "Olga";
    /// UTS #39's skeleton, for those letters only). Null when they can.
    /// </summary>
    public static string? CheckSet(IReadOnlyList<string> names)
    {
        ArgumentNullException.ThrowIfNull(names);
        var skeletons = names.Select(LookAlikeScripts.Skeleton).ToList();
        for (var i = 1; i < names.Count; i++)
        {
            for (var j = 0; j < i; j++)
            {
                if (skeletons[i] == skeletons[j] && names[i] != names[j])
                {
                    return $"the custodian name '{Printable(names[i])}' prints like '{Printable(names[j])}', another custodian of this ceremony: "
                        + "they differ only in letters of Greek, Cyrillic, Armenian or Cherokee drawn like Latin ones; names must tell custodians apart";
                }
            }
        }

        return null;
    }

    /// <summary>
    /// <paramref name="name"/> made safe to print: every code point a new name may not hold is
    /// written as <c>\uXXXX</c> (<c>\UXXXXXXXX</c> beyond the BMP); an ordinary name is shown as it is.
    /// </summary>
    public static string Printable(string name)
    {
        ArgumentNullException.ThrowIfNull(name);
        var text = name.AsSpan();
        StringBuilder? safe = null;
        for (var i = 0; i < text.Length;)
        {
            var refused = Refused(text[i..], out var codePoint, out var length) is not null;
            if (refused && safe is null)
            {
                safe = new StringBuilder(name.Length + 16).Append(text[..i]);
            }

            if (safe is not null)
            {
                _ = !refused ? safe.Append(text.Slice(i, length))
                    : codePoint <= 0xFFFF ? safe.Append(CultureInfo.InvariantCulture, $"\\u{codePoint:X4}")
                    : safe.Append(CultureInfo.InvariantCulture, $"\\U{codePoint:X8}");
            }

            i += length;
        }

        return safe?.ToString() ?? name;
    }

    // What the code point at the start of text is, if a name may not hold it; its length in chars.
    private static string? Refused(ReadOnlySpan<char> text, out int codePoint, out int length)
    {
        if (Rune.DecodeFromUtf16(text, out var rune, out length) != OperationStatus.Done)
        {
            (codePoint, length) = (text[0], 1);
            return "a lone surrogate, not a character";
        }

        codePoint = rune.Value;
        return Rune.GetUnicodeCategory(rune) switch
        {
            UnicodeCategory.Control => "a control character",
            UnicodeCategory.Format => "a format character: bidirectional, zero-width or invisible",
            UnicodeCategory.Surrogate => "a lone surrogate, not a character",
            UnicodeCategory.PrivateUse => "a private-use character",
            UnicodeCategory.OtherNotAssigned => "an unassigned code point or noncharacter",
            UnicodeCategory.LineSeparator or UnicodeCategory.ParagraphSeparator => "a line or paragraph separator",
            _ => null,
        };
    }
}
