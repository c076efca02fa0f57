using System.Globalization;
using System.Text;
using Kms.Core;

namespace Kms.Cli.Infrastructure;

/// <summary>
/// Text from outside (a share file's fields, a server's message, a file name) made safe to print
/// on a terminal or into a transcript: control characters (escape sequences can clear the
/// screen and write a fake line), bidirectional and zero-width format characters (U+202E turns
/// a line around) and line or paragraph separators become <c>\uXXXX</c>.
/// </summary>
internal static class TerminalText
{
    public static string Of(string text)
    {
        ArgumentNullException.ThrowIfNull(text);
        if (!text.Any(c => char.IsSurrogate(c) || Unsafe(c)))
        {
            return text;
        }

        // By code point: a format character beyond the BMP (the invisible tag characters U+E0001,
        // U+E0020–U+E007F) is two surrogates, neither of them unsafe as a char.
        var safe = new StringBuilder(text.Length + 16);
        for (var i = 0; i < text.Length;)
        {
            if (Rune.DecodeFromUtf16(text.AsSpan(i), out var rune, out var length) != System.Buffers.OperationStatus.Done)
            {
                safe.Append(CultureInfo.InvariantCulture, $"\\u{(int)text[i]:X4}"); // a lone surrogate
            }
            else if (rune.IsBmp)
            {
                _ = Unsafe((char)rune.Value) ? safe.Append(CultureInfo.InvariantCulture, $"\\u{rune.Value:X4}") : safe.Append((char)rune.Value);
            }
            else
            {
                _ = DisplayText.HidesOrMovesText(rune) ? safe.Append(CultureInfo.InvariantCulture, $"\\U{rune.Value:X8}") : safe.Append(text, i, length);
            }

            i += length;
        }

        return safe.ToString();
    }

    // Newlines and tabs of our own messages are kept; a carriage return (which rewrites the line
    // it ends) is not.
    private static bool Unsafe(char c) => c is not ('\n' or '\t') && (char.IsControl(c) || DisplayText.HidesOrMovesText(c));
}
