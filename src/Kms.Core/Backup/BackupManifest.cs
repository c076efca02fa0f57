using System.Security.Cryptography;
using System.Text.Json;
using Kms.Core.Audit;
using Kms.Core.Errors;

namespace Kms.Core.Backup;

/// <summary>
/// What a backup directory's <c>manifest.json</c> says: which request made it, when, and the
/// snapshot's SHA-256 and size, the audit head inside it, the domain key and the audit key.
/// Signed with the audit key as a <see cref="SignedStatement"/> of kind <see cref="StatementKind"/>
/// (<c>manifest.json.sig</c>, base64 of IEEE P1363 r‖s).
/// </summary>
/// <remarks>
/// A restore verifies the signature over the exact bytes of <c>manifest.json</c> and then the
/// snapshot's hash and size against it, before it changes anything. A manifest of another
/// format tag is refused, never guessed at.
/// </remarks>
public sealed record BackupManifest
{
    /// <summary>The format tag, the manifest's first member.</summary>
    public const string Format = "kms-backup-v1";

    /// <summary>The <see cref="SignedStatement"/> kind the audit key signs the manifest as.</summary>
    public const string StatementKind = "backup-manifest";

    /// <summary>The snapshot's file name in a backup directory.</summary>
    public const string SnapshotFile = "kms.db";

    /// <summary>The manifest's file name.</summary>
    public const string ManifestFile = "manifest.json";

    /// <summary>The signature's file name.</summary>
    public const string SignatureFile = "manifest.json.sig";

    /// <summary>The EXPORT_BACKUP quorum request that made the backup (<c>quorumRequests/{id}</c>).</summary>
    public required string Request { get; init; }

    /// <summary>When the snapshot was taken.</summary>
    public required DateTimeOffset CreateTime { get; init; }

    /// <summary>The snapshot's schema version.</summary>
    public required int SchemaVersion { get; init; }

    /// <summary>SHA-256 of the snapshot file, lower-case hex.</summary>
    public required string SnapshotSha256 { get; init; }

    /// <summary>The snapshot file's size in bytes.</summary>
    public required long SnapshotSize { get; init; }

    /// <summary>The last audit event inside the snapshot: everything after it happened after the backup.</summary>
    public required AuditHead AuditHead { get; init; }

    /// <summary>The check value of the domain key the snapshot's material is wrapped under.</summary>
    public required string DomainKcv { get; init; }

    /// <summary>The audit signing key's fingerprint (<see cref="AuditChain.Fingerprint"/>).</summary>
    public required string AuditKey { get; init; }

    /// <summary>The manifest as written: UTF-8 JSON, members in a fixed order, indented.</summary>
    public byte[] ToJson()
    {
        using var buffer = new MemoryStream();
        using (var writer = new Utf8JsonWriter(buffer, new JsonWriterOptions { Indented = true }))
        {
            writer.WriteStartObject();
            writer.WriteString("format", Format);
            writer.WriteString("request", Request);
            writer.WriteString("create_time", AuditChain.Time(CreateTime));
            writer.WriteNumber("schema_version", SchemaVersion);
            writer.WriteStartObject("snapshot");
            writer.WriteString("file", SnapshotFile);
            writer.WriteString("sha256", SnapshotSha256);
            writer.WriteNumber("size", SnapshotSize);
            writer.WriteEndObject();
            writer.WriteStartObject("audit_head");
            writer.WriteNumber("seq", AuditHead.Sequence);
            writer.WriteString("hash", AuditHead.Hash);
            writer.WriteEndObject();
            writer.WriteString("domain_kcv", DomainKcv);
            writer.WriteString("audit_key", AuditKey);
            writer.WriteEndObject();
        }

        buffer.WriteByte((byte)'\n');
        return buffer.ToArray();
    }

    /// <summary>Parses a manifest (after its signature verified).</summary>
    /// <exception cref="KmsException">InvalidArgument: not a manifest of <see cref="Format"/>.</exception>
    public static BackupManifest Parse(ReadOnlySpan<byte> json)
    {
        try
        {
            using var document = JsonDocument.Parse(json.ToArray());
            var root = document.RootElement;
            if (root.GetProperty("format").GetString() != Format)
            {
                throw KmsErrors.InvalidArgument("manifest", $"unknown backup format {root.GetProperty("format")}; this version reads {Format}");
            }

            var snapshot = root.GetProperty("snapshot");
            var head = root.GetProperty("audit_head");
            return new BackupManifest
            {
                Request = root.GetProperty("request").GetString()!,
                CreateTime = DateTimeOffset.Parse(root.GetProperty("create_time").GetString()!, System.Globalization.CultureInfo.InvariantCulture),
                SchemaVersion = root.GetProperty("schema_version").GetInt32(),
                SnapshotSha256 = snapshot.GetProperty("sha256").GetString()!,
                SnapshotSize = snapshot.GetProperty("size").GetInt64(),
                AuditHead = new AuditHead(head.GetProperty("seq").GetInt64(), head.GetProperty("hash").GetString()!),
                DomainKcv = root.GetProperty("domain_kcv").GetString()!,
                AuditKey = root.GetProperty("audit_key").GetString()!,
            };
        }
        catch (Exception e) when (e is JsonException or KeyNotFoundException or InvalidOperationException or FormatException)
        {
            throw KmsErrors.InvalidArgument("manifest", "is not a backup manifest: " + e.Message);
        }
    }

    /// <summary>
    /// Verifies a backup directory: the manifest's signature by the audit key
    /// <paramref name="auditPublicKey"/> (DER SubjectPublicKeyInfo), then the snapshot's size and
    /// SHA-256. Reads only.
    /// </summary>
    /// <exception cref="KmsException">PermissionDenied (signature, wrong key, hash or size mismatch), InvalidArgument (missing or unreadable files).</exception>
    public static BackupManifest Verify(string directory, ReadOnlySpan<byte> auditPublicKey)
    {
        byte[] json;
        byte[] signature;
        try
        {
            json = File.ReadAllBytes(Path.Combine(directory, ManifestFile));
            signature = Convert.FromBase64String(File.ReadAllText(Path.Combine(directory, SignatureFile)).Trim());
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or FormatException)
        {
            throw KmsErrors.InvalidArgument("backup", $"{directory} is not a readable backup directory: {e.Message}");
        }

        if (!SignedStatement.Verify(auditPublicKey, StatementKind, json, signature))
        {
            throw KmsErrors.PermissionDenied(
                $"the signature of {Path.Combine(directory, ManifestFile)} does not verify with audit key {AuditChain.Fingerprint(auditPublicKey)}: the manifest was changed or another key signed it");
        }

        var manifest = Parse(json);
        if (manifest.AuditKey != AuditChain.Fingerprint(auditPublicKey))
        {
            throw KmsErrors.PermissionDenied($"the manifest names audit key {manifest.AuditKey}, not {AuditChain.Fingerprint(auditPublicKey)}");
        }

        var snapshot = Path.Combine(directory, SnapshotFile);
        var (hash, size) = HashFile(snapshot);
        if (size != manifest.SnapshotSize || hash != manifest.SnapshotSha256)
        {
            throw KmsErrors.PermissionDenied(
                $"{snapshot} is not the snapshot the signed manifest names (SHA-256 {hash}, {size} bytes; the manifest says {manifest.SnapshotSha256}, {manifest.SnapshotSize} bytes)");
        }

        return manifest;
    }

    /// <summary>SHA-256 (lower-case hex) and size of a file.</summary>
    public static (string Sha256, long Size) HashFile(string path)
    {
        try
        {
            using var stream = File.OpenRead(path);
            return (Convert.ToHexStringLower(SHA256.HashData(stream)), stream.Length);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw KmsErrors.InvalidArgument("backup", $"{path} cannot be read: {e.Message}");
        }
    }
}
