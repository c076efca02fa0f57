using System.Text.Json;
using System.Text.Json.Serialization;

namespace Kms.Cli.Infrastructure;

/// <summary>
/// The profile file (<c>~/.config/kms/config.json</c>, or <c>$KMS_CONFIG</c>): named profiles of
/// connection settings. Paths in it are relative to the file's directory.
/// </summary>
/// <remarks>
/// Unknown properties are refused, so a profile cannot carry a token inline (<c>"token"</c>): a
/// token is referenced by file (<c>"tokenFile"</c>), like every other secret of the CLI.
/// </remarks>
internal sealed class ProfileFile
{
    private static readonly JsonSerializerOptions Json = new()
    {
        PropertyNamingPolicy = JsonNamingPolicy.CamelCase,
        UnmappedMemberHandling = JsonUnmappedMemberHandling.Disallow,
        ReadCommentHandling = JsonCommentHandling.Skip,
        AllowTrailingCommas = true,
    };

    /// <summary>The profile used when neither <c>--profile</c> nor <c>KMS_PROFILE</c> names one.</summary>
    public string? DefaultProfile { get; set; }

    /// <summary>The profiles by name.</summary>
    public Dictionary<string, Profile> Profiles { get; set; } = [];

    /// <summary>Reads and checks a profile file.</summary>
    /// <exception cref="CliUsageException">The file is not valid JSON of this shape.</exception>
    public static ProfileFile Load(string path)
    {
        try
        {
            return JsonSerializer.Deserialize<ProfileFile>(LocalPath.Read(path, File.ReadAllText), Json) ?? new ProfileFile();
        }
        catch (JsonException exception)
        {
            throw new CliUsageException($"profile file {path} is not valid: {exception.Message}", exception);
        }
    }

    /// <summary>One profile: where the servers are and how to reach them.</summary>
    internal sealed class Profile
    {
        /// <summary>The servers (https URIs), tried in turn with failover.</summary>
        public List<string>? Endpoints { get; set; }

        /// <summary>PEM of the CA that issued the servers' certificates.</summary>
        public string? CaFile { get; set; }

        /// <summary>File holding the API token.</summary>
        public string? TokenFile { get; set; }

        /// <summary>PEM client certificate, for mTLS.</summary>
        public string? ClientCert { get; set; }

        /// <summary>PEM private key of <see cref="ClientCert"/>.</summary>
        public string? ClientKey { get; set; }

        /// <summary>The tenant of short key names (<c>orders</c> for <c>tenants/{tenant}/keys/orders</c>).</summary>
        public string? Tenant { get; set; }

        /// <summary>Deadline of one call, in seconds, over its retries.</summary>
        public int? TimeoutSeconds { get; set; }
    }
}
