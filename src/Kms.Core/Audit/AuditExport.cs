using System.Globalization;
using System.Text;
using System.Text.Json;

namespace Kms.Core.Audit;

/// <summary>
/// The export format (docs/audit-format.md): JSON lines — a header naming the signing key and
/// the anchor (the event the export follows), then each event as <c>{"event":…,"hash":…}</c>
/// with each checkpoint <c>{"checkpoint":…,"signature":…}</c> after the event it covers.
/// The bodies are written byte for byte as stored, so hashes and signatures verify.
/// </summary>
public static class AuditExport
{
    /// <summary>The header line.</summary>
    public static string Header(AuditHead anchor, string fingerprint, byte[] publicKey)
    {
        var buffer = new System.Buffers.ArrayBufferWriter<byte>();
        using (var writer = new Utf8JsonWriter(buffer))
        {
            writer.WriteStartObject();
            writer.WriteNumber("kms_audit_export", AuditChain.FormatVersion);
            writer.WriteString("key", fingerprint);
            writer.WriteString("public_key", Convert.ToBase64String(publicKey));
            writer.WriteStartObject("anchor");
            writer.WriteNumber("seq", anchor.Sequence);
            writer.WriteString("hash", anchor.Hash);
            writer.WriteEndObject();
            writer.WriteEndObject();
        }

        return Encoding.UTF8.GetString(buffer.WrittenSpan);
    }

    /// <summary>An event line.</summary>
    public static string Event(AuditEvent e)
    {
        ArgumentNullException.ThrowIfNull(e);
        return $"{{\"event\":{e.Body},\"hash\":\"{e.Hash}\"}}";
    }

    /// <summary>
    /// A SIEM stream's restart line (<see cref="StreamRestart"/>), before the events that follow
    /// <c>after</c>: <c>{"stream_restart":{"after":{"seq":…,"hash":…},"replaced":{"seq":…,"hash":…}}}</c>.
    /// Not in an export; readers of audit logs skip it as a line that is not an event.
    /// </summary>
    public static string Restart(StreamRestart restart)
    {
        ArgumentNullException.ThrowIfNull(restart);
        return Marker("stream_restart", ("after", restart.After), ("replaced", restart.Replaced));
    }

    /// <summary>
    /// A SIEM stream's resend line, before the events that follow <paramref name="after"/> when the
    /// stream goes on after a crash from its position record (the server's
    /// <c>{DataDir}/audit/stream-position.json</c>), on a stream it cannot read back (stdout, a
    /// FIFO): <c>{"stream_resend":{"after":{"seq":…,"hash":…}}}</c>. The record is written behind
    /// what was sent, so some events after it may come again, each the same event (at least once,
    /// never a gap). Not in an export; readers of audit logs skip it as a line that is not an event.
    /// </summary>
    public static string Resend(AuditHead after) => Marker("stream_resend", ("after", after));

    /// <summary>A stream marker line: <c>{"kind":{"name":{"seq":…,"hash":…},…}}</c>.</summary>
    private static string Marker(string kind, params ReadOnlySpan<(string Name, AuditHead Point)> points)
    {
        var buffer = new System.Buffers.ArrayBufferWriter<byte>();
        using (var writer = new Utf8JsonWriter(buffer))
        {
            writer.WriteStartObject();
            writer.WriteStartObject(kind);
            foreach (var (name, point) in points)
            {
                writer.WriteStartObject(name);
                writer.WriteNumber("seq", point.Sequence);
                writer.WriteString("hash", point.Hash);
                writer.WriteEndObject();
            }

            writer.WriteEndObject();
            writer.WriteEndObject();
        }

        return Encoding.UTF8.GetString(buffer.WrittenSpan);
    }

    /// <summary>A checkpoint line.</summary>
    public static string Checkpoint(AuditCheckpoint checkpoint)
    {
        ArgumentNullException.ThrowIfNull(checkpoint);
        return $"{{\"checkpoint\":{checkpoint.Body},\"signature\":\"{Convert.ToBase64String(checkpoint.Signature)}\"}}";
    }

    /// <summary>
    /// A checkpoint line as <see cref="Checkpoint"/> writes it, read back: the body is the bytes
    /// between the prefix and the signature, as signed. Null for anything else. Its signature is
    /// not checked here.
    /// </summary>
    public static AuditCheckpoint? ParseCheckpoint(string line)
    {
        ArgumentNullException.ThrowIfNull(line);
        const string Prefix = "{\"checkpoint\":";
        const string Signature = ",\"signature\":\"";
        var at = line.LastIndexOf(Signature, StringComparison.Ordinal);
        if (!line.StartsWith(Prefix, StringComparison.Ordinal) || at < Prefix.Length || !line.EndsWith("\"}", StringComparison.Ordinal) || at + Signature.Length > line.Length - 2)
        {
            return null;
        }

        var body = line[Prefix.Length..at];
        try
        {
            using var document = JsonDocument.Parse(body);
            var root = document.RootElement;
            return new AuditCheckpoint(
                root.GetProperty("seq").GetInt64(),
                root.GetProperty("head").GetString() ?? "",
                DateTimeOffset.Parse(root.GetProperty("time").GetString() ?? "", CultureInfo.InvariantCulture, DateTimeStyles.RoundtripKind),
                root.GetProperty("key").GetString() ?? "",
                body,
                Convert.FromBase64String(line[(at + Signature.Length)..^2]));
        }
        catch (Exception e) when (e is JsonException or KeyNotFoundException or InvalidOperationException or FormatException)
        {
            return null;
        }
    }
}
