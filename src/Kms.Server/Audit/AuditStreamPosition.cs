using System.Globalization;
using System.Text;
using System.Text.Json;
using Kms.Core.Audit;

namespace Kms.Server.Audit;

/// <summary>
/// How far a SIEM stream that cannot be read back (stdout, a FIFO) was sent, kept in
/// <c>{DataDir}/audit/stream-position.json</c>: the next start goes on after it rather than at
/// the chain's head, so the events the last run did not forward reach the stream.
/// </summary>
/// <param name="Stream">The stream it is of: <c>-</c> for stdout, else the full path (another stream does not take it).</param>
/// <param name="KeyFingerprint">The audit signing key of the database it was read from (another database does not take it).</param>
/// <param name="Last">The last event the stream was sent (sequence 0: none, the chain's start).</param>
/// <param name="Clean">
/// Written at a stop, after the stop's last forwarding: the stream holds exactly the events through
/// <paramref name="Last"/>. False while the node runs (it is written once a housekeeping pass, not
/// after every write): the stream may hold events after <paramref name="Last"/>, which a start after
/// a crash sends again, after a <c>stream_resend</c> line (at least once, never a gap).
/// </param>
internal sealed record AuditStreamPosition(string Stream, string KeyFingerprint, AuditHead Last, bool Clean)
{
    /// <summary>The file's name in <c>{DataDir}/audit</c>.</summary>
    public const string FileName = "stream-position.json";

    // A record is about 250 bytes: a file of more is not one (and is not read whole).
    private const int MaxLength = 64 * 1024;

    /// <summary>The file's content: one JSON object and a line feed.</summary>
    public byte[] ToBytes(DateTimeOffset written) => Encoding.UTF8.GetBytes(JsonSerializer.Serialize(new Dictionary<string, object>
    {
        ["v"] = 1,
        ["stream"] = Stream,
        ["key"] = KeyFingerprint,
        ["seq"] = Last.Sequence,
        ["hash"] = Last.Hash,
        ["clean"] = Clean,
        ["time"] = written.UtcDateTime.ToString("yyyy-MM-dd'T'HH:mm:ss.fffffff'Z'", CultureInfo.InvariantCulture),
    }) + "\n");

    /// <summary>
    /// The record in <paramref name="path"/>: null when there is no file; a reason when the file
    /// holds no record (damaged or edited: it is written whole, never torn by a crash).
    /// </summary>
    public static (AuditStreamPosition? Position, string? Damaged) Read(string path)
    {
        byte[] content;
        try
        {
            var info = new FileInfo(path);
            if (!info.Exists)
            {
                return (null, null);
            }

            if (info.Length is 0 or > MaxLength)
            {
                return (null, $"it is {info.Length} bytes long (a record is about 250)");
            }

            content = File.ReadAllBytes(path);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            return (null, $"it cannot be read ({e.GetType().Name})");
        }

        return Parse(content) is { } position ? (position, null) : (null, "it holds no position record");
    }

    /// <summary>The record <paramref name="content"/> holds, or null.</summary>
    public static AuditStreamPosition? Parse(ReadOnlySpan<byte> content)
    {
        try
        {
            using var document = JsonDocument.Parse(content.ToArray());
            var root = document.RootElement;
            var stream = root.GetProperty("stream").GetString();
            var key = root.GetProperty("key").GetString();
            var sequence = root.GetProperty("seq").GetInt64();
            var hash = root.GetProperty("hash").GetString();
            return root.GetProperty("v").GetInt32() == 1 && stream is { Length: > 0 } && key is { Length: > 0 } && sequence >= 0 && hash is { Length: 64 }
                ? new AuditStreamPosition(stream, key, new AuditHead(sequence, hash), root.GetProperty("clean").GetBoolean())
                : null;
        }
        catch (Exception e) when (e is JsonException or KeyNotFoundException or InvalidOperationException or FormatException)
        {
            return null;
        }
    }
}
