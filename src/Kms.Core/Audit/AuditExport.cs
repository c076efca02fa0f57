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

    /// <summary>A checkpoint line.</summary>
    public static string Checkpoint(AuditCheckpoint checkpoint)
    {
        ArgumentNullException.ThrowIfNull(checkpoint);
        return $"{{\"checkpoint\":{checkpoint.Body},\"signature\":\"{Convert.ToBase64String(checkpoint.Signature)}\"}}";
    }
}
