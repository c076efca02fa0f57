using System.Globalization;
using System.Security.Cryptography;
using System.Text;
using System.Text.Json;

namespace Kms.Core.Audit;

/// <summary>
/// The audit log's canonical form (docs/audit-format.md): each event is a JSON object with
/// fixed field order that carries the hash of the event before it; its hash is SHA-256 of
/// those exact bytes. A checkpoint body names a sequence number and that event's hash and
/// is signed (SHA-256, ECDSA P-256) by the HSM-held audit key.
/// </summary>
/// <remarks>
/// The verifier in Kms.Client is a second, independent implementation of the same document;
/// tests run each against the other's output.
/// </remarks>
public static class AuditChain
{
    /// <summary>Format version written into every body.</summary>
    public const int FormatVersion = 1;

    /// <summary>The "previous hash" of the very first event.</summary>
    public static readonly string Genesis = new('0', 64);

    /// <summary>The operation of the event that records a retention cut.</summary>
    public const string RetentionOperation = "audit/Retention";

    /// <summary>The resource of the event that records a cut through <paramref name="sequence"/>.</summary>
    public static string RetentionResource(long sequence) => $"through:{sequence}";

    /// <summary>The principal of the event that records a retention cut.</summary>
    public const string RetentionPrincipal = "system:retention";

    /// <summary>
    /// Whether <paramref name="entry"/> is retention's record of a cut through
    /// <paramref name="sequence"/>: <see cref="RetentionPrincipal"/>, <see cref="RetentionOperation"/>,
    /// <see cref="RetentionResource"/> of it, outcome <c>OK</c> (as the offline verifier reads it).
    /// Its form only: whether it is retention's is <see cref="RetentionCutSigned"/>.
    /// </summary>
    public static bool RecordsRetentionCut(AuditEntry entry, long sequence)
    {
        ArgumentNullException.ThrowIfNull(entry);
        return entry.Principal == RetentionPrincipal && entry.Operation == RetentionOperation
            && entry.Resource == RetentionResource(sequence) && entry.Outcome == "OK";
    }

    /// <summary>The <see cref="SignedStatement"/> kind of retention's statement of a cut.</summary>
    public const string RetentionCutKind = "audit retention cut";

    /// <summary>
    /// What the audit key signs (as a <see cref="SignedStatement"/> of <see cref="RetentionCutKind"/>)
    /// for a cut that deletes the events through <paramref name="sequence"/>, whose hash is
    /// <paramref name="head"/>, in the chain of the audit key <paramref name="keyFingerprint"/>:
    /// the UTF-8 bytes of <c>{"v":1,"type":"retention-cut","key":"sha256:…","seq":N,"head":"…"}</c>.
    /// </summary>
    /// <remarks>
    /// The hash of the last event deleted names the whole prefix (each event links the one before),
    /// so a signature of one cut is no signature of another cut, of this chain or another's.
    /// </remarks>
    public static byte[] RetentionCutStatement(long sequence, string head, string keyFingerprint) => Write(w =>
    {
        w.WriteNumber("v", FormatVersion);
        w.WriteString("type", "retention-cut");
        w.WriteString("key", keyFingerprint);
        w.WriteNumber("seq", sequence);
        w.WriteString("head", head);
    }).ToArray();

    /// <summary>
    /// Whether <paramref name="entry"/> carries the audit key's signature of a cut through
    /// <paramref name="cut"/> (the last event deleted, by sequence and the hash the first event
    /// kept links to): a record only the HSM can have made, for that cut only.
    /// </summary>
    public static bool RetentionCutSigned(AuditEntry entry, AuditHead cut, ReadOnlySpan<byte> subjectPublicKeyInfo)
    {
        ArgumentNullException.ThrowIfNull(entry);
        return entry.RetentionCut is { } signed && signed.Sequence == cut.Sequence && signed.Head == cut.Hash
            && SignedStatement.Verify(subjectPublicKeyInfo, RetentionCutKind, RetentionCutStatement(cut.Sequence, cut.Hash, Fingerprint(subjectPublicKeyInfo)), signed.Signature);
    }

    /// <summary>
    /// The member every checkpoint body signed since retention signs its records ends with
    /// (<c>"cuts":"signed"</c>): a checkpoint without it was signed before, and only such a
    /// checkpoint, the first over it, lets an unsigned record of a cut count.
    /// </summary>
    public const string SignedCutsMember = "cuts";

    /// <summary>Whether <paramref name="checkpointBody"/> was signed before retention signed its records (it lacks <see cref="SignedCutsMember"/>).</summary>
    public static bool SignedBeforeRetentionCutsWere(string checkpointBody)
    {
        ArgumentNullException.ThrowIfNull(checkpointBody);
        try
        {
            using var document = JsonDocument.Parse(checkpointBody);
            return !(document.RootElement.TryGetProperty(SignedCutsMember, out var cuts) && cuts.ValueKind == JsonValueKind.String && cuts.GetString() == "signed");
        }
        catch (JsonException)
        {
            return false;
        }
    }

    /// <summary>The head of an empty log.</summary>
    public static readonly AuditHead Empty = new(0, Genesis);

    // The buffer and writer of Write, reused by each thread.
    [ThreadStatic]
    private static System.Buffers.ArrayBufferWriter<byte>? t_buffer;

    [ThreadStatic]
    private static Utf8JsonWriter? t_writer;

    /// <summary>Chains <paramref name="entry"/> after <paramref name="head"/>.</summary>
    /// <remarks>
    /// On the path every audited call waits for: the body is written into a buffer reused by
    /// the thread, and hashed from those UTF-8 bytes (no second encoding of the string).
    /// </remarks>
    public static AuditEvent Link(AuditHead head, AuditEntry entry)
    {
        ArgumentNullException.ThrowIfNull(entry);
        var sequence = head.Sequence + 1;
        var utf8 = Write(w => WriteBody(w, sequence, head.Hash, entry));
        Span<byte> digest = stackalloc byte[SHA256.HashSizeInBytes];
        SHA256.HashData(utf8, digest);
        return new AuditEvent(sequence, entry, head.Hash, Convert.ToHexStringLower(digest), Encoding.UTF8.GetString(utf8));
    }

    /// <summary>Hex SHA-256 of a body's UTF-8 bytes.</summary>
    public static string HashOf(string body) => Convert.ToHexStringLower(SHA256.HashData(Encoding.UTF8.GetBytes(body)));

    /// <summary>The canonical body of an event.</summary>
    public static string Body(long sequence, string previousHash, AuditEntry entry)
    {
        ArgumentNullException.ThrowIfNull(entry);
        return Encoding.UTF8.GetString(Write(w => WriteBody(w, sequence, previousHash, entry)));
    }

    /// <summary>The canonical body of a checkpoint.</summary>
    public static string CheckpointBody(long sequence, string headHash, DateTimeOffset time, string keyFingerprint) => Encoding.UTF8.GetString(Write(w =>
    {
        w.WriteNumber("v", FormatVersion);
        w.WriteString("type", "checkpoint");
        w.WriteNumber("seq", sequence);
        w.WriteString("head", headHash);
        w.WriteString("time", Time(time));
        w.WriteString("key", keyFingerprint);
        w.WriteString(SignedCutsMember, "signed");
    }));

    /// <summary>What the audit key signs for a checkpoint: SHA-256 of its body.</summary>
    public static byte[] CheckpointDigest(string body) => SHA256.HashData(Encoding.UTF8.GetBytes(body));

    /// <summary>The fingerprint that names an audit signing key: <c>sha256:</c> and the hex SHA-256 of its DER SubjectPublicKeyInfo.</summary>
    public static string Fingerprint(ReadOnlySpan<byte> subjectPublicKeyInfo) => "sha256:" + Convert.ToHexStringLower(SHA256.HashData(subjectPublicKeyInfo));

    /// <summary>Reads an event back from its stored body (the body, not any column, is the record).</summary>
    public static AuditEvent Parse(string body, string hash)
    {
        using var document = JsonDocument.Parse(body);
        var root = document.RootElement;
        var context = root.GetProperty("context").EnumerateObject().Select(p => KeyValuePair.Create(p.Name, p.Value.GetString()!)).ToList();
        var entry = new AuditEntry
        {
            Time = ParseTime(root.GetProperty("time").GetString()!),
            RequestId = root.GetProperty("request_id").GetString()!,
            Principal = root.GetProperty("principal").GetString()!,
            Tenant = root.GetProperty("tenant").GetString(),
            Operation = root.GetProperty("operation").GetString()!,
            Resource = root.GetProperty("resource").GetString(),
            Outcome = root.GetProperty("outcome").GetString()!,
            Client = root.GetProperty("client").GetString(),
            Count = root.GetProperty("count").GetInt64(),
            LastTime = root.GetProperty("last_time").GetString() is { } last ? ParseTime(last) : null,
            Context = context,
            Resources = root.TryGetProperty("resources", out var resources)
                ? resources.EnumerateObject().Select(p => KeyValuePair.Create(p.Name, p.Value.GetInt64())).ToList()
                : null,
            OtherResources = root.TryGetProperty("other_resources", out var others) ? others.GetInt64() : 0,
            KeyVersions = root.TryGetProperty("key_versions", out var versions)
                ? versions.EnumerateArray().Select(v => v.GetString()!).ToList()
                : null,
            OtherKeyVersions = root.TryGetProperty("other_key_versions", out var otherVersions) ? otherVersions.GetInt64() : 0,
            RetentionCut = root.TryGetProperty("cut", out var cut) ? ParseCut(cut) : null,
        };
        return new AuditEvent(root.GetProperty("seq").GetInt64(), entry, root.GetProperty("prev").GetString()!, hash, body);
    }

    // A malformed signature of a cut is read as one that verifies for no cut (not as none: an
    // unsigned record is the older form, judged otherwise).
    private static AuditRetentionCut ParseCut(JsonElement cut)
    {
        try
        {
            return new AuditRetentionCut(cut.GetProperty("seq").GetInt64(), cut.GetProperty("head").GetString() ?? "", Convert.FromBase64String(cut.GetProperty("signature").GetString() ?? ""));
        }
        catch (Exception e) when (e is KeyNotFoundException or InvalidOperationException or FormatException)
        {
            return new AuditRetentionCut(-1, "", []);
        }
    }

    /// <summary>Times are UTC with milliseconds: <c>2026-11-29T12:00:00.123Z</c>.</summary>
    public static string Time(DateTimeOffset time) => time.UtcDateTime.ToString("yyyy-MM-dd'T'HH:mm:ss.fff'Z'", CultureInfo.InvariantCulture);

    private static DateTimeOffset ParseTime(string text) =>
        DateTimeOffset.ParseExact(text, "yyyy-MM-dd'T'HH:mm:ss.fff'Z'", CultureInfo.InvariantCulture, DateTimeStyles.AssumeUniversal | DateTimeStyles.AdjustToUniversal);

    private static void WriteOptional(Utf8JsonWriter writer, string name, string? value)
    {
        if (value is null)
        {
            writer.WriteNull(name);
        }
        else
        {
            writer.WriteString(name, value);
        }
    }

    private static void WriteBody(Utf8JsonWriter w, long sequence, string previousHash, AuditEntry entry)
    {
        w.WriteNumber("v", FormatVersion);
        w.WriteNumber("seq", sequence);
        w.WriteString("prev", previousHash);
        w.WriteString("time", Time(entry.Time));
        w.WriteString("request_id", entry.RequestId);
        w.WriteString("principal", entry.Principal);
        WriteOptional(w, "tenant", entry.Tenant);
        w.WriteString("operation", entry.Operation);
        WriteOptional(w, "resource", entry.Resource);
        w.WriteString("outcome", entry.Outcome);
        WriteOptional(w, "client", entry.Client);
        w.WriteNumber("count", entry.Count);
        WriteOptional(w, "last_time", entry.LastTime is { } last ? Time(last) : null);
        w.WriteStartObject("context");
        var context = entry.Context;
        if (context.Count == 1)
        {
            w.WriteString(context[0].Key, context[0].Value);
        }
        else if (context.Count > 1)
        {
            foreach (var (key, hash) in context.OrderBy(p => p.Key, StringComparer.Ordinal))
            {
                w.WriteString(key, hash);
            }
        }

        w.WriteEndObject();

        // Aggregated refusals only: two more members, so every other body is as it always was.
        if (entry.Resources is { } resources)
        {
            w.WriteStartObject("resources");
            foreach (var (resource, count) in resources.OrderBy(p => p.Key, StringComparer.Ordinal))
            {
                w.WriteNumber(resource, count);
            }

            w.WriteEndObject();
            w.WriteNumber("other_resources", entry.OtherResources);
        }

        // Calls that used key versions besides their resource (ReEncrypt's source, the batches'
        // items) only: two more members, so every other body is as it always was.
        if (entry.KeyVersions is { } versions)
        {
            w.WriteStartArray("key_versions");
            foreach (var version in versions)
            {
                w.WriteStringValue(version);
            }

            w.WriteEndArray();
            w.WriteNumber("other_key_versions", entry.OtherKeyVersions);
        }

        // Retention's record of a cut only: the audit key's signature of it, so every other body
        // (and every record written before) is as it always was.
        if (entry.RetentionCut is { } cut)
        {
            w.WriteStartObject("cut");
            w.WriteNumber("seq", cut.Sequence);
            w.WriteString("head", cut.Head);
            w.WriteString("signature", Convert.ToBase64String(cut.Signature));
            w.WriteEndObject();
        }
    }

    // The UTF-8 bytes of one JSON object, in a buffer the calling thread reuses: valid until
    // its next call (read or copy them before writing another).
    private static ReadOnlySpan<byte> Write(Action<Utf8JsonWriter> fields)
    {
        var buffer = t_buffer ??= new System.Buffers.ArrayBufferWriter<byte>(1024);
        buffer.ResetWrittenCount();
        var writer = t_writer ??= new Utf8JsonWriter(buffer);
        writer.Reset(buffer);
        writer.WriteStartObject();
        fields(writer);
        writer.WriteEndObject();
        writer.Flush();
        return buffer.WrittenSpan;
    }
}
