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
/// <param name="Earlier">
/// Events the stream was sent before <paramref name="Last"/>, newest first, thinned
/// (<see cref="StreamAncestors"/>: dense near it, exponentially sparser further back, at most
/// <see cref="StreamAncestors.MaxPoints"/>): where the stream restarts when a start finds the chain
/// no longer holds <paramref name="Last"/> (the database went back behind it while the node was
/// stopped). Empty in a record written before they were kept (member <c>earlier</c> absent): a
/// start on such a record whose event the chain does not hold begins at the chain's head, as before.
/// </param>
internal sealed record AuditStreamPosition(string Stream, string KeyFingerprint, AuditHead Last, bool Clean, IReadOnlyList<AuditHead> Earlier)
{
    /// <summary>The file's name in <c>{DataDir}/audit</c>.</summary>
    public const string FileName = "stream-position.json";

    // A record is about 6 KB with its earlier events: a file of more is not one (and is not read whole).
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
        ["earlier"] = Earlier.Select(p => new Dictionary<string, object> { ["seq"] = p.Sequence, ["hash"] = p.Hash }).ToList(),
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
                && ParseEarlier(root, sequence) is { } earlier
                ? new AuditStreamPosition(stream, key, new AuditHead(sequence, hash), root.GetProperty("clean").GetBoolean(), earlier)
                : null;
        }
        catch (Exception e) when (e is JsonException or KeyNotFoundException or InvalidOperationException or FormatException)
        {
            return null;
        }
    }

    // The earlier events: absent (an older record) is none; anything but what ToBytes writes — more
    // than MaxPoints, not newest first below the record's event, a hash that is no SHA-256 hex —
    // is no record (an edit), null.
    private static List<AuditHead>? ParseEarlier(JsonElement root, long last)
    {
        if (!root.TryGetProperty("earlier", out var list))
        {
            return [];
        }

        if (list.ValueKind != JsonValueKind.Array || list.GetArrayLength() > StreamAncestors.MaxPoints)
        {
            return null;
        }

        var earlier = new List<AuditHead>();
        foreach (var item in list.EnumerateArray())
        {
            var sequence = item.GetProperty("seq").GetInt64();
            var hash = item.GetProperty("hash").GetString();
            if (sequence <= 0 || sequence >= (earlier.Count > 0 ? earlier[^1].Sequence : last) || hash is not { Length: 64 } || !hash.All(char.IsAsciiHexDigit))
            {
                return null;
            }

            earlier.Add(new AuditHead(sequence, hash));
        }

        return earlier;
    }
}

/// <summary>
/// The events a stream that cannot be read back was sent, thinned as they are sent: for each
/// level k below <see cref="Levels"/>, the two newest events sent whose sequence is a multiple of
/// 2^k — so the event before the newest, and ones about 2, 4, 8, … events back — and the oldest
/// event sent (<see cref="MaxPoints"/> at most, whatever the stream's length). Kept in the
/// stream's position record (<see cref="AuditStreamPosition.Earlier"/>): a start whose chain no
/// longer holds the record's event restarts the stream after the newest of them the chain holds.
/// </summary>
/// <remarks>
/// An event sent that is not after the newest kept (a restart line's event, or events sent again
/// after a resend line) drops every point at or after it first: past a restart, those are of the
/// chain the database left; sent again, they come back as they are sent. Not thread-safe: the
/// caller locks.
/// </remarks>
internal sealed class StreamAncestors
{
    /// <summary>How many levels are kept (multiples of 2^0 to 2^30).</summary>
    public const int Levels = 31;

    /// <summary>How many points a record lists at most: two a level, and the oldest sent.</summary>
    public const int MaxPoints = (2 * Levels) + 1;

    private readonly AuditHead?[] _newest = new AuditHead?[Levels];
    private readonly AuditHead?[] _before = new AuditHead?[Levels];
    private AuditHead? _first; // the oldest event sent: a restart as far back as that still finds one

    /// <summary>Records that the stream was sent <paramref name="point"/> (sequence 0, the chain's start: nothing).</summary>
    public void Sent(AuditHead point)
    {
        if (point.Sequence <= 0)
        {
            return;
        }

        for (var k = 0; k < Levels; k++)
        {
            if (_before[k] is { } b && b.Sequence >= point.Sequence)
            {
                _before[k] = null;
            }

            if (_newest[k] is { } n && n.Sequence >= point.Sequence)
            {
                (_newest[k], _before[k]) = (_before[k], null);
            }
        }

        if (_first is not { } first || first.Sequence >= point.Sequence)
        {
            _first = point;
        }

        var levels = Math.Min(Levels - 1, System.Numerics.BitOperations.TrailingZeroCount(point.Sequence));
        for (var k = 0; k <= levels; k++)
        {
            (_before[k], _newest[k]) = (_newest[k], point);
        }
    }

    /// <summary>The points kept before <paramref name="last"/> (the stream's position), newest first, each once.</summary>
    public IReadOnlyList<AuditHead> Before(AuditHead last) =>
        [.. _newest.Concat(_before).Append(_first).OfType<AuditHead>().Where(p => p.Sequence < last.Sequence).DistinctBy(p => p.Sequence).OrderByDescending(p => p.Sequence)];
}
