using System.Globalization;
using System.Text;

namespace Kms.Core;

/// <summary>
/// Characters of outside text (a caller's resource name, a share file's field) that cannot be
/// shown as they are, beyond control characters: one list for the server's error messages and
/// the CLI's terminal output.
/// </summary>
public static class DisplayText
{
    /// <summary>
    /// Whether <paramref name="c"/> is a format character or a line or paragraph separator: the
    /// bidirectional overrides, isolates and marks (U+202E turns a line around), zero-width
    /// characters (U+200B, U+2060, U+FEFF hide text) and U+2028/U+2029 (a line break to
    /// whatever reads it as one).
    /// </summary>
    /// <remarks>
    /// The zero-width non-joiner and joiner (U+200C, U+200D) are not: ordinary Persian and Indic
    /// names have them, and they neither move nor hide text.
    /// </remarks>
    public static bool HidesOrMovesText(char c) =>
        c is not ('\u200C' or '\u200D') && char.GetUnicodeCategory(c) is
            UnicodeCategory.Format or UnicodeCategory.LineSeparator or UnicodeCategory.ParagraphSeparator;

    /// <summary>
    /// <see cref="HidesOrMovesText(char)"/> for a whole code point, beyond the BMP too: the tag
    /// characters (U+E0001, U+E0020–U+E007F) are invisible format characters written as two
    /// surrogates, which the <see cref="char"/> form sees only as surrogates.
    /// </summary>
    public static bool HidesOrMovesText(Rune rune) =>
        rune.Value is not (0x200C or 0x200D) && Rune.GetUnicodeCategory(rune) is
            UnicodeCategory.Format or UnicodeCategory.LineSeparator or UnicodeCategory.ParagraphSeparator;
}
