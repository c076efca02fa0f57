using System.Security.Cryptography.X509Certificates;

namespace Kms.Client;

/// <summary>Where the KMS is and which CA vouches for it.</summary>
public sealed class KmsClientOptions
{
    /// <summary>The server, e.g. <c>https://127.0.0.1:8443</c>. Only https is accepted.</summary>
    public Uri Endpoint { get; set; } = new("https://127.0.0.1:8443");

    /// <summary>
    /// PEM file of the CA that issued the server's certificate (dev mode: <c>.kms/tls/ca.crt</c>).
    /// When set, only this CA is trusted for the server; when null, the system's trust store is used.
    /// </summary>
    public string? CaCertificatePath { get; set; }

    /// <summary>Like <see cref="CaCertificatePath"/>, already loaded.</summary>
    public X509Certificate2? CaCertificate { get; set; }

    /// <summary>
    /// API token (<c>kms_&lt;id&gt;_&lt;secret&gt;</c>), sent as <c>Authorization: Bearer</c>. Use a
    /// token or a client certificate, not both: the server refuses a call carrying both.
    /// </summary>
    public string? ApiToken { get; set; }

    /// <summary>File holding the API token (dev mode: <c>.kms/tokens/developer.token</c>); read once, when the client is created.</summary>
    public string? ApiTokenPath { get; set; }

    /// <summary>Client certificate with its private key, for mTLS.</summary>
    public X509Certificate2? ClientCertificate { get; set; }

    /// <summary>Deadline of each call.</summary>
    public TimeSpan CallTimeout { get; set; } = TimeSpan.FromSeconds(30);
}
