using System.Text;
using System.Text.Json;

namespace Kms.Core.Files;

/// <summary>
/// The one rule for the last line of a log of records (one JSON object a line: audit exports,
/// SIEM streams, checkpoint files) when no line feed follows it: a whole record, or torn. The
/// writer (<see cref="DurableFile.EndWithWholeLine(FileStream)"/>: ends a whole one, cuts a torn
/// one), the audit verifier (a torn tail) and the restore's reader
/// (<c>DestructionReplay.SplitLines</c>) all ask here, so a line the writer ends is one no reader
/// calls torn, and a line it cuts is one no reader took for a record.
/// </summary>
public static class JsonLines
{
    /// <summary>
    /// Whether <paramref name="line"/>, a last line without its line feed, is one whole record:
    /// one JSON object and nothing else, from its first byte to its closing brace; a carriage
    /// return after it is a line end (as readers of text take it), not part of it. No strict
    /// prefix of an object is one (its root closes only at its last byte), so a torn record never
    /// passes, nor two run together, nor a torn write's zeros after a record, nor JSON that is no
    /// record (a number, an array, padding around an object).
    /// </summary>
    /// <param name="line">The line's bytes (UTF-8), without a line feed.</param>
    public static bool IsWholeRecord(ReadOnlySpan<byte> line)
    {
        if (line is [.. var rest, (byte)'\r'])
        {
            line = rest;
        }

        if (line.Length < 2 || line[0] != '{' || line[^1] != '}')
        {
            return false;
        }

        try
        {
            using var record = JsonDocument.Parse(line.ToArray());
            return record.RootElement.ValueKind == JsonValueKind.Object;
        }
        catch (Exception e) when (e is JsonException or ArgumentException)
        {
            return false;
        }
    }

    /// <summary><see cref="IsWholeRecord(ReadOnlySpan{byte})"/> of a line read as text.</summary>
    /// <param name="line">The line, without its line end.</param>
    public static bool IsWholeRecord(string line)
    {
        ArgumentNullException.ThrowIfNull(line);
        return IsWholeRecord(Encoding.UTF8.GetBytes(line));
    }
}
