using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using Kms.Cli.Infrastructure;
using Kms.Core.Audit;
using Kms.Core.Files;

namespace Kms.Cli.Ceremony;

/// <summary>
/// A ceremony transcript: plain UTF-8 text, one <c>name: value</c> line per fact (who, what,
/// when, on which HSM, check values, share fingerprints, officers, audit key), meant to be
/// printed and filed. It is signed with the deployment's audit key as a
/// <see cref="SignedStatement"/> of kind <see cref="Kind"/>; the signature sits beside it in
/// <c>FILE.sig</c> (JSON: kind, key fingerprint, base64 P1363 signature).
/// </summary>
internal sealed class Transcript
{
    /// <summary>The statement kind transcripts are signed as.</summary>
    public const string Kind = "ceremony-transcript";

    /// <summary>The first line of every transcript.</summary>
    public const string Header = "KMS KEY CEREMONY TRANSCRIPT (kms-transcript-v1)";

    private readonly List<(string Name, string Value)> _lines = [];

    /// <summary>A transcript's opening lines: which ceremony, its id, when, where, who, and the host's state.</summary>
    public static Transcript Begin(string ceremony, string ceremonyId, DateTimeOffset started, PreparedHost host) =>
        new Transcript()
            .Add("ceremony", ceremony)
            .Add("ceremony id", ceremonyId)
            .Add("started", started.ToString("O", System.Globalization.CultureInfo.InvariantCulture))
            .Add("host", Environment.MachineName)
            .Add("operator (OS user)", Environment.UserName)
            .Add("host hygiene", host.Describe());

    /// <summary>
    /// Adds one line; control, bidirectional and zero-width characters and line separators in a
    /// value are escaped, so a value (a custodian's name from a share file) cannot forge a line or
    /// make the one the witnesses sign read otherwise than it is.
    /// </summary>
    public Transcript Add(string name, string value)
    {
        _lines.Add((name, Infrastructure.TerminalText.Of(value).Replace("\n", "\\u000A", StringComparison.Ordinal).Replace("\t", "\\u0009", StringComparison.Ordinal)));
        return this;
    }

    /// <summary>The transcript's bytes.</summary>
    public byte[] ToBytes()
    {
        var text = new StringBuilder(Header).Append('\n');
        foreach (var (name, value) in _lines)
        {
            text.Append(name).Append(": ").Append(value).Append('\n');
        }

        return Encoding.UTF8.GetBytes(text.ToString());
    }

    /// <summary>
    /// Writes the transcript and its signature file (mode 0644: it holds nothing secret), each
    /// flushed to disk with its directory synced before this returns.
    /// </summary>
    public static async Task WriteAsync(string path, byte[] content, string keyFingerprint, byte[] signature, CancellationToken cancellationToken)
    {
        await DurableFile.WriteAsync(path, content, DurableFile.Public, overwrite: false, cancellationToken);
        var sig = new JsonObject
        {
            ["format"] = SignedStatement.Prefix,
            ["kind"] = Kind,
            ["key_fingerprint"] = keyFingerprint,
            ["signature"] = Convert.ToBase64String(signature),
        };
        await DurableFile.WriteAsync(path + ".sig", Encoding.UTF8.GetBytes(sig.ToJsonString(new JsonSerializerOptions { WriteIndented = true }) + "\n"), DurableFile.Public, overwrite: false, cancellationToken);
    }

    /// <summary>
    /// Checks <paramref name="path"/> against <c>path.sig</c> with the audit key whose public key
    /// is <paramref name="subjectPublicKeyInfo"/>; returns a reason when it does not verify.
    /// </summary>
    public static string? Verify(string path, byte[] subjectPublicKeyInfo)
    {
        var content = File.ReadAllBytes(path);
        if (!File.Exists(path + ".sig"))
        {
            return $"no signature file {path}.sig";
        }

        JsonNode? sig;
        try
        {
            sig = JsonNode.Parse(File.ReadAllText(path + ".sig"));
        }
        catch (JsonException)
        {
            return $"{path}.sig is not JSON";
        }

        // A member of another JSON type (a number, an array) is malformed too, never an exception.
        if (sig is not JsonObject fields || StringOf(fields["kind"]) != Kind || StringOf(fields["signature"]) is not { } text)
        {
            return $"{path}.sig is not a transcript signature";
        }

        byte[] signature;
        try
        {
            signature = Convert.FromBase64String(text);
        }
        catch (FormatException)
        {
            return $"{path}.sig carries no valid base64 signature";
        }

        var fingerprint = AuditChain.Fingerprint(subjectPublicKeyInfo);
        if (fields["key_fingerprint"] is { } namedNode && StringOf(namedNode) is var named && named != fingerprint)
        {
            return $"the transcript was signed by audit key {named}, not by {fingerprint}";
        }

        return SignedStatement.Verify(subjectPublicKeyInfo, Kind, content, signature)
            ? null
            : "the signature does not verify: the transcript was changed, or signed by another key";
    }

    private static string? StringOf(JsonNode? node) =>
        node is JsonValue value && value.TryGetValue<string>(out var text) ? text : null;
}
