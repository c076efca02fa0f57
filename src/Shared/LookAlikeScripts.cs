using System.Buffers;
using System.Globalization;
using System.Text;

namespace Kms.Shared;

/// <summary>
/// Letters of other scripts that look like Latin ones (Cyrillic "а" for Latin "a"): a conservative
/// part of Unicode's UTS #39 (security mechanisms), without ICU — the processes run with
/// InvariantGlobalization, and .NET has no script property. Two rules use it: a name's letters come
/// from one of the scripts that are easily confused (<see cref="MixedScriptLetter"/>), and two names
/// of one set do not look alike letter by letter (<see cref="Skeleton"/>).
/// </summary>
/// <remarks>
/// One source file, compiled into Kms.Core (principal names) and Kms.Ceremony (custodian names),
/// which references no other project: the same table for both, and no copy to drift.
/// </remarks>
internal static class LookAlikeScripts
{
    private static readonly string[] Names = ["Latin", "Greek", "Cyrillic", "Armenian", "Cherokee"];

    private const int Latin = 0, Greek = 1, Cyrillic = 2, Armenian = 3, Cherokee = 4;

    // The Script property (Scripts.txt, Unicode 14.0.0, as Perl 5.36's Unicode::UCD reports it) of
    // the five scripts whose letters are most often taken for one another; adjacent ranges merged,
    // sorted by start. Everything else — digits, punctuation, spaces (Common), combining marks
    // (Inherited), and every other script — counts as no script here. Letters a later Unicode version
    // added to these scripts (Latin Extended-G, Cyrillic Extended-D) are outside the table: they
    // count as no script, as unknown letters do.
    private static readonly (int First, int Last, int Script)[] Ranges =
    [
        (0x0041, 0x005A, Latin), (0x0061, 0x007A, Latin), (0x00AA, 0x00AA, Latin), (0x00BA, 0x00BA, Latin),
        (0x00C0, 0x00D6, Latin), (0x00D8, 0x00F6, Latin), (0x00F8, 0x02B8, Latin), (0x02E0, 0x02E4, Latin),
        (0x0370, 0x0373, Greek), (0x0375, 0x0377, Greek), (0x037A, 0x037D, Greek), (0x037F, 0x037F, Greek),
        (0x0384, 0x0384, Greek), (0x0386, 0x0386, Greek), (0x0388, 0x038A, Greek), (0x038C, 0x038C, Greek),
        (0x038E, 0x03A1, Greek), (0x03A3, 0x03E1, Greek), (0x03F0, 0x03FF, Greek),
        (0x0400, 0x0484, Cyrillic), (0x0487, 0x052F, Cyrillic),
        (0x0531, 0x0556, Armenian), (0x0559, 0x058A, Armenian), (0x058D, 0x058F, Armenian),
        (0x13A0, 0x13F5, Cherokee), (0x13F8, 0x13FD, Cherokee),
        (0x1C80, 0x1C88, Cyrillic),
        (0x1D00, 0x1D25, Latin), (0x1D26, 0x1D2A, Greek), (0x1D2B, 0x1D2B, Cyrillic), (0x1D2C, 0x1D5C, Latin),
        (0x1D5D, 0x1D61, Greek), (0x1D62, 0x1D65, Latin), (0x1D66, 0x1D6A, Greek), (0x1D6B, 0x1D77, Latin),
        (0x1D78, 0x1D78, Cyrillic), (0x1D79, 0x1DBE, Latin), (0x1DBF, 0x1DBF, Greek),
        (0x1E00, 0x1EFF, Latin),
        (0x1F00, 0x1F15, Greek), (0x1F18, 0x1F1D, Greek), (0x1F20, 0x1F45, Greek), (0x1F48, 0x1F4D, Greek),
        (0x1F50, 0x1F57, Greek), (0x1F59, 0x1F59, Greek), (0x1F5B, 0x1F5B, Greek), (0x1F5D, 0x1F5D, Greek),
        (0x1F5F, 0x1F7D, Greek), (0x1F80, 0x1FB4, Greek), (0x1FB6, 0x1FC4, Greek), (0x1FC6, 0x1FD3, Greek),
        (0x1FD6, 0x1FDB, Greek), (0x1FDD, 0x1FEF, Greek), (0x1FF2, 0x1FF4, Greek), (0x1FF6, 0x1FFE, Greek),
        (0x2071, 0x2071, Latin), (0x207F, 0x207F, Latin), (0x2090, 0x209C, Latin),
        (0x2126, 0x2126, Greek), (0x212A, 0x212B, Latin), (0x2132, 0x2132, Latin), (0x214E, 0x214E, Latin),
        (0x2160, 0x2188, Latin), (0x2C60, 0x2C7F, Latin), (0x2DE0, 0x2DFF, Cyrillic),
        (0xA640, 0xA69F, Cyrillic), (0xA722, 0xA787, Latin), (0xA78B, 0xA7CA, Latin), (0xA7D0, 0xA7D1, Latin),
        (0xA7D3, 0xA7D3, Latin), (0xA7D5, 0xA7D9, Latin), (0xA7F2, 0xA7FF, Latin),
        (0xAB30, 0xAB5A, Latin), (0xAB5C, 0xAB64, Latin), (0xAB65, 0xAB65, Greek), (0xAB66, 0xAB69, Latin),
        (0xAB70, 0xABBF, Cherokee),
        (0xFB00, 0xFB06, Latin), (0xFB13, 0xFB17, Armenian), (0xFE2E, 0xFE2F, Cyrillic),
        (0xFF21, 0xFF3A, Latin), (0xFF41, 0xFF5A, Latin),
        (0x10140, 0x1018E, Greek), (0x101A0, 0x101A0, Greek),
        (0x10780, 0x10785, Latin), (0x10787, 0x107B0, Latin), (0x107B2, 0x107BA, Latin),
        (0x1D200, 0x1D245, Greek), (0x1DF00, 0x1DF1E, Latin),
    ];

    // Letters of Greek, Cyrillic, Armenian and Cherokee drawn like a Latin letter, and the Latin
    // letter (UTS #39's confusables.txt, the entries whose target is one Latin letter; capitals to
    // capitals, so "Іvan" is "Ivan", not "lvan"), plus the precomposed Cyrillic and Greek letters
    // whose base and accent both look Latin ("ё" is "ë": UTS #39 gets them by decomposing, which
    // needs ICU). Latin letters that look like each other ("rn" and "m", "l" and "I") are not here.
    private static readonly Dictionary<int, string> Latinised = new (int From, string To)[]
    {
        // Greek
        (0x0391, "A"), (0x0392, "B"), (0x0395, "E"), (0x0396, "Z"), (0x0397, "H"), (0x0399, "I"), (0x039A, "K"),
        (0x039C, "M"), (0x039D, "N"), (0x039F, "O"), (0x03A1, "P"), (0x03A4, "T"), (0x03A5, "Y"), (0x03A7, "X"),
        (0x037F, "J"), (0x03F9, "C"), (0x03D2, "Y"),
        (0x03B1, "a"), (0x03B3, "y"), (0x03B9, "i"), (0x03BA, "k"), (0x03BD, "v"), (0x03BF, "o"), (0x03C1, "p"),
        (0x03C3, "o"), (0x03C4, "t"), (0x03C5, "u"), (0x03C7, "x"), (0x03F1, "p"), (0x03F2, "c"), (0x03F3, "j"),
        (0x03AC, "\u00E1"), (0x03AF, "\u00ED"), (0x03CA, "\u00EF"), (0x03CC, "\u00F3"),
        // Cyrillic
        (0x0405, "S"), (0x0406, "I"), (0x0408, "J"), (0x0410, "A"), (0x0412, "B"), (0x0415, "E"), (0x041A, "K"),
        (0x041C, "M"), (0x041D, "H"), (0x041E, "O"), (0x0420, "P"), (0x0421, "C"), (0x0422, "T"), (0x0423, "Y"),
        (0x0425, "X"), (0x042C, "b"), (0x0474, "V"), (0x04AE, "Y"), (0x04C0, "I"), (0x050C, "G"), (0x051A, "Q"), (0x051C, "W"),
        (0x0430, "a"), (0x0433, "r"), (0x0435, "e"), (0x043E, "o"), (0x0440, "p"), (0x0441, "c"), (0x0443, "y"),
        (0x0445, "x"), (0x0448, "w"), (0x0455, "s"), (0x0456, "i"), (0x0458, "j"), (0x0461, "w"), (0x0475, "v"),
        (0x04AF, "y"), (0x04BB, "h"), (0x04BD, "e"), (0x04CF, "l"), (0x0501, "d"), (0x051B, "q"), (0x051D, "w"),
        (0x0400, "\u00C8"), (0x0401, "\u00CB"), (0x0407, "\u00CF"), (0x04D0, "\u0102"), (0x04D2, "\u00C4"), (0x04D6, "\u0114"), (0x04E6, "\u00D6"),
        (0x0450, "\u00E8"), (0x0451, "\u00EB"), (0x0457, "\u00EF"), (0x04D1, "\u0103"), (0x04D3, "\u00E4"), (0x04D7, "\u0115"), (0x04E7, "\u00F6"),
        // Armenian
        (0x054D, "U"), (0x054F, "S"), (0x0555, "O"),
        (0x0561, "w"), (0x0563, "q"), (0x0566, "q"), (0x0570, "h"), (0x0578, "n"), (0x057C, "n"), (0x057D, "u"),
        (0x0581, "g"), (0x0582, "i"), (0x0584, "f"), (0x0585, "o"),
        // Cherokee
        (0x13A0, "D"), (0x13A1, "R"), (0x13A2, "T"), (0x13A9, "Y"), (0x13AA, "A"), (0x13AB, "J"), (0x13AC, "E"),
        (0x13B3, "W"), (0x13B7, "M"), (0x13BB, "H"), (0x13BD, "Y"), (0x13C0, "G"), (0x13C2, "h"), (0x13C3, "Z"),
        (0x13CF, "b"), (0x13D2, "R"), (0x13D4, "W"), (0x13D5, "S"), (0x13D9, "V"), (0x13DA, "S"), (0x13DE, "L"),
        (0x13DF, "C"), (0x13E2, "P"), (0x13E6, "K"), (0x13E7, "d"), (0x13F3, "G"), (0x13F4, "B"),
        (0xAB75, "i"), (0xAB81, "r"), (0xAB83, "w"), (0xAB93, "z"), (0xABA9, "v"), (0xABAA, "s"), (0xABAF, "c"),
    }.ToDictionary(p => p.From, p => p.To);

    /// <summary>The scripts whose letters a name may not mix, as messages name them.</summary>
    public const string ScriptList = "Latin, Greek, Cyrillic, Armenian and Cherokee";

    /// <summary>Which of the five scripts <paramref name="codePoint"/> belongs to (its name), or null for none of them.</summary>
    public static string? ScriptOf(int codePoint) => IndexOf(codePoint) is { } script ? Names[script] : null;

    /// <summary>
    /// When <paramref name="text"/> holds letters of more than one of the five scripts: the first
    /// letter of a minority script (not the one most of its letters are of; on a tie, not the first
    /// letter's), its script and the majority script. Null when its letters are of one script, or
    /// of none of them. A lone surrogate counts as no script.
    /// </summary>
    public static (int CodePoint, string Script, string Among)? MixedScriptLetter(ReadOnlySpan<char> text)
    {
        Span<int> counts = stackalloc int[Names.Length];
        var first = -1;
        var seen = 0;
        foreach (var (_, script) in Letters(text))
        {
            first = first < 0 ? script : first;
            seen += counts[script]++ == 0 ? 1 : 0;
        }

        if (seen < 2)
        {
            return null;
        }

        var majority = first;
        for (var s = 0; s < counts.Length; s++)
        {
            majority = counts[s] > counts[majority] ? s : majority;
        }

        foreach (var (codePoint, script) in Letters(text))
        {
            if (script != majority)
            {
                return (codePoint, Names[script], Names[majority]);
            }
        }

        return null;
    }

    /// <summary>
    /// <paramref name="text"/> with each letter of another script that is drawn like a Latin letter
    /// replaced by that letter: two names with the same skeleton look alike (Cyrillic "ѕрасе" and
    /// Latin "space"). Case is kept; everything else is left as it is.
    /// </summary>
    public static string Skeleton(string text)
    {
        ArgumentNullException.ThrowIfNull(text);
        var skeleton = new StringBuilder(text.Length);
        foreach (var rune in text.EnumerateRunes())
        {
            _ = Latinised.TryGetValue(rune.Value, out var latin) ? skeleton.Append(latin) : skeleton.Append(rune.ToString());
        }

        return skeleton.ToString();
    }

    /// <summary>A code point as messages show it: <c>U+0430</c>.</summary>
    public static string CodePoint(int codePoint) => string.Create(CultureInfo.InvariantCulture, $"U+{codePoint:X4}");

    private static List<(int CodePoint, int Script)> Letters(ReadOnlySpan<char> text)
    {
        var letters = new List<(int, int)>();
        for (var i = 0; i < text.Length;)
        {
            if (Rune.DecodeFromUtf16(text[i..], out var rune, out var length) == OperationStatus.Done && IndexOf(rune.Value) is { } script)
            {
                letters.Add((rune.Value, script));
            }

            i += Math.Max(length, 1);
        }

        return letters;
    }

    private static int? IndexOf(int codePoint)
    {
        int low = 0, high = Ranges.Length - 1;
        while (low <= high)
        {
            var middle = (low + high) / 2;
            var (first, last, script) = Ranges[middle];
            if (codePoint < first)
            {
                high = middle - 1;
            }
            else if (codePoint > last)
            {
                low = middle + 1;
            }
            else
            {
                return script;
            }
        }

        return null;
    }
}
