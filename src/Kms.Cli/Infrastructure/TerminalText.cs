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
        if (!text.Any(Unsafe))
        {
            return text;
        }

        var safe = new StringBuilder(text.Length + 16);
        foreach (var c in text)
        {
            _ = Unsafe(c) ? safe.Append(CultureInfo.InvariantCulture, $"\\u{(int)c:X4}") : safe.Append(c);
        }

        return safe.ToString();
    }

    // Newlines and tabs of our own messages are kept; a carriage return (which rewrites the line
    // it ends) is not.
    private static bool Unsafe(char c) => c is not ('\n' or '\t') && (char.IsControl(c) || DisplayText.HidesOrMovesText(c));
}
