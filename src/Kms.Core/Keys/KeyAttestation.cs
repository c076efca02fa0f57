using System.Globalization;
using System.Text.Json;
using Kms.Core.Audit;

namespace Kms.Core.Keys;

/// <summary>
/// A key provenance statement (docs/attestation.md): what the deployment says about one key
/// version — generated in the HSM or imported, when, by which request, under which domain key,
/// its public key or check value, and the PKCS#11 attributes the HSM reports for its unwrapped
/// copy — as canonical JSON signed by the deployment's audit key (a
/// <see cref="SignedStatement"/> of kind <see cref="Kind"/>).
/// </summary>
/// <remarks>
/// This is an operator-signed statement backed by the audit chain, not a hardware attestation:
/// an unwrapped copy reports <c>CKA_LOCAL=false</c> and <c>CKA_NEVER_EXTRACTABLE=false</c>, so
/// the HSM itself cannot vouch that the key was generated inside it and never left it.
/// </remarks>
public sealed record KeyAttestation
{
    /// <summary>The statement kind the signature is bound to.</summary>
    public const string Kind = "key-attestation";

    /// <summary>The value of <see cref="Format"/>.</summary>
    public const string FormatV1 = "kms-key-attestation-v1";

    /// <summary>What the statement is and is not, written into every statement.</summary>
    public const string Disclaimer =
        "Operator-signed provenance statement backed by the audit chain; not a hardware attestation: the HSM reports LOCAL=false and NEVER_EXTRACTABLE=false for unwrapped copies.";

    /// <summary>Always <see cref="FormatV1"/>.</summary>
    public string Format { get; init; } = FormatV1;

    /// <summary>The key version's resource name.</summary>
    public required string KeyVersion { get; init; }

    /// <summary>The key's purpose (<c>SIGN_VERIFY</c>, ...).</summary>
    public required string Purpose { get; init; }

    /// <summary>The algorithm (<c>EC_SIGN_P256_SHA256</c>, ...).</summary>
    public required string Algorithm { get; init; }

    /// <summary>The version's state when the statement was made.</summary>
    public required string State { get; init; }

    /// <summary><c>GENERATED</c> (in the HSM) or <c>IMPORTED</c>.</summary>
    public required string Origin { get; init; }

    /// <summary>For an imported version, its import job.</summary>
    public string? ImportJob { get; init; }

    /// <summary>When the version was created (ISO 8601, UTC).</summary>
    public required string CreateTime { get; init; }

    /// <summary>The audit request id of the call that created the version (find its event in the chain).</summary>
    public string? CreateRequest { get; init; }

    /// <summary>The check value of the domain key the version is wrapped under.</summary>
    public required string DomainKeyCheckValue { get; init; }

    /// <summary>The public key (base64 DER SubjectPublicKeyInfo) of an asymmetric version.</summary>
    public string? PublicKey { get; init; }

    /// <summary>SHA-256 of <see cref="PublicKey"/>'s DER, hex.</summary>
    public string? PublicKeySha256 { get; init; }

    /// <summary>The check value (hex) of an AES or HMAC version (<see cref="Ports.KeyVersionProperties"/>).</summary>
    public string? CheckValue { get; init; }

    /// <summary>The PKCS#11 attributes the HSM reports for the version's unwrapped copy, by name.</summary>
    public required IReadOnlyDictionary<string, string> HsmAttributes { get; init; }

    /// <summary>When the statement was made (ISO 8601, UTC).</summary>
    public required string IssueTime { get; init; }

    /// <summary>Fingerprint of the audit key that signs it.</summary>
    public required string SigningKeyFingerprint { get; init; }

    /// <summary>Always <see cref="Disclaimer"/>.</summary>
    public string Statement { get; init; } = Disclaimer;

    /// <summary>The canonical bytes that are signed: UTF-8 JSON, properties in declaration order, attributes sorted, no whitespace.</summary>
    public byte[] ToCanonicalJson()
    {
        using var buffer = new MemoryStream();
        // Relaxed escaping (as the approval bundle): base64's '+' and '/' are written as they are, so
        // a verifier in another language that re-serialises meets the same bytes.
        using (var json = new Utf8JsonWriter(buffer, new JsonWriterOptions { Indented = false, Encoder = System.Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping }))
        {
            json.WriteStartObject();
            json.WriteString("format", Format);
            json.WriteString("keyVersion", KeyVersion);
            json.WriteString("purpose", Purpose);
            json.WriteString("algorithm", Algorithm);
            json.WriteString("state", State);
            json.WriteString("origin", Origin);
            WriteOptional(json, "importJob", ImportJob);
            json.WriteString("createTime", CreateTime);
            WriteOptional(json, "createRequest", CreateRequest);
            json.WriteString("domainKeyCheckValue", DomainKeyCheckValue);
            WriteOptional(json, "publicKey", PublicKey);
            WriteOptional(json, "publicKeySha256", PublicKeySha256);
            WriteOptional(json, "checkValue", CheckValue);
            json.WriteStartObject("hsmAttributes");
            foreach (var (name, value) in HsmAttributes.OrderBy(a => a.Key, StringComparer.Ordinal))
            {
                json.WriteString(name, value);
            }

            json.WriteEndObject();
            json.WriteString("issueTime", IssueTime);
            json.WriteString("signingKeyFingerprint", SigningKeyFingerprint);
            json.WriteString("statement", Statement);
            json.WriteEndObject();
        }

        return buffer.ToArray();
    }

    /// <summary>
    /// Checks <paramref name="signature"/> over <paramref name="statement"/> with the deployment's
    /// published audit public key, then parses it. Offline: nothing else is consulted.
    /// </summary>
    /// <returns>The statement, or null when the signature does not verify or the bytes are not a canonical v1 statement.</returns>
    public static KeyAttestation? Verify(ReadOnlySpan<byte> auditPublicKey, ReadOnlySpan<byte> statement, ReadOnlySpan<byte> signature)
    {
        if (!SignedStatement.Verify(auditPublicKey, Kind, statement, signature))
        {
            return null;
        }

        var parsed = TryParse(statement);

        // Only the canonical form verifies: a statement re-serialised differently is refused, so
        // two readers can never see different content under one signature.
        return parsed is not null && parsed.ToCanonicalJson().AsSpan().SequenceEqual(statement) ? parsed : null;
    }

    private static KeyAttestation? TryParse(ReadOnlySpan<byte> statement)
    {
        try
        {
            using var document = JsonDocument.Parse(statement.ToArray());
            var root = document.RootElement;
            if (root.GetProperty("format").GetString() != FormatV1)
            {
                return null;
            }

            return new KeyAttestation
            {
                KeyVersion = Required(root, "keyVersion"),
                Purpose = Required(root, "purpose"),
                Algorithm = Required(root, "algorithm"),
                State = Required(root, "state"),
                Origin = Required(root, "origin"),
                ImportJob = Optional(root, "importJob"),
                CreateTime = Required(root, "createTime"),
                CreateRequest = Optional(root, "createRequest"),
                DomainKeyCheckValue = Required(root, "domainKeyCheckValue"),
                PublicKey = Optional(root, "publicKey"),
                PublicKeySha256 = Optional(root, "publicKeySha256"),
                CheckValue = Optional(root, "checkValue"),
                HsmAttributes = root.GetProperty("hsmAttributes").EnumerateObject().ToDictionary(p => p.Name, p => p.Value.GetString() ?? "", StringComparer.Ordinal),
                IssueTime = Required(root, "issueTime"),
                SigningKeyFingerprint = Required(root, "signingKeyFingerprint"),
                Statement = Required(root, "statement"),
            };
        }
        catch (Exception e) when (e is JsonException or KeyNotFoundException or InvalidOperationException)
        {
            return null;
        }
    }

    /// <summary>A time as statements write it.</summary>
    public static string Time(DateTimeOffset time) => time.UtcDateTime.ToString("yyyy-MM-dd'T'HH:mm:ss.fff'Z'", CultureInfo.InvariantCulture);

    /// <summary>
    /// A human rendering for <c>kms attest verify</c>: the fields as names and values, one row
    /// each (the HSM's attributes one row each, by name), for a two-column table.
    /// </summary>
    public IReadOnlyList<(string Name, string Value)> Describe()
    {
        var rows = new List<(string Name, string Value)>
        {
            ("key version", KeyVersion),
            ("purpose/algorithm", $"{Purpose} {Algorithm}"),
            ("state", State),
            ("origin", $"{Origin}{(ImportJob is null ? "" : $" (import job {ImportJob})")}"),
            ("created", $"{CreateTime} by request {CreateRequest ?? "(unknown)"}"),
            ("domain key KCV", DomainKeyCheckValue),
        };
        if (PublicKeySha256 is not null)
        {
            rows.Add(("public key sha256", PublicKeySha256));
        }

        if (CheckValue is not null)
        {
            rows.Add(("check value", CheckValue));
        }

        rows.AddRange(HsmAttributes.OrderBy(a => a.Key, StringComparer.Ordinal).Select(a => ($"HSM {a.Key}", a.Value)));
        rows.Add(("issued", $"{IssueTime} by audit key {SigningKeyFingerprint}"));
        rows.Add(("statement", Statement));
        return rows;
    }

    private static void WriteOptional(Utf8JsonWriter json, string name, string? value)
    {
        if (value is not null)
        {
            json.WriteString(name, value);
        }
    }

    private static string Required(JsonElement root, string name) =>
        root.GetProperty(name).GetString() ?? throw new InvalidOperationException($"{name} is null");

    private static string? Optional(JsonElement root, string name) =>
        root.TryGetProperty(name, out var value) ? value.GetString() : null;
}
