namespace Kms.Server.Hosting;

/// <summary>The server's own settings, from the <c>Kms</c> configuration section.</summary>
public sealed class KmsServerOptions
{
    /// <summary>Default listen address: loopback, TLS.</summary>
    public const string DefaultUrl = "https://127.0.0.1:8443";

    /// <summary>
    /// Dev mode: one tenant, everything created under <see cref="DataDir"/> (TLS material,
    /// database), and a domain key generated in the HSM if missing. Never for production.
    /// </summary>
    public bool DevMode { get; set; }

    /// <summary>Where dev mode keeps its state; <c>KMS_DATA_DIR</c> overrides; default <c>.kms</c> under the working directory.</summary>
    public string DataDir { get; set; } = Environment.GetEnvironmentVariable("KMS_DATA_DIR") is { Length: > 0 } dir ? dir : ".kms";

    /// <summary>
    /// The tenant served to loopback callers until the identity issue lands (callers are
    /// not yet authenticated, so there is exactly one tenant).
    /// </summary>
    public string Tenant { get; set; } = "dev";

    /// <summary>PEM certificate chain of the server; default in dev mode: <c>{DataDir}/tls/server.crt</c>.</summary>
    public string? TlsCertificatePath { get; set; }

    /// <summary>PEM private key of the server; default in dev mode: <c>{DataDir}/tls/server.key</c>.</summary>
    public string? TlsKeyPath { get; set; }

    /// <summary>Largest request message in bytes: a batch of 4 MiB of plaintext plus its framing fits.</summary>
    public int MaxRequestBytes { get; set; } = 5 * 1024 * 1024;
}
