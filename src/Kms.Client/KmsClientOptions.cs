using System.Security.Cryptography.X509Certificates;
using Grpc.Core.Interceptors;

namespace Kms.Client;

/// <summary>Where the KMS is, which CA vouches for it, how the client authenticates, and how it rides out failures.</summary>
/// <remarks>
/// Bindable from configuration (<c>services.AddKmsClient(configuration.GetSection("Kms"))</c>):
/// <c>Endpoints:0</c>, <c>Endpoints:1</c>, <c>CaCertificatePath</c>, <c>ApiTokenPath</c>,
/// <c>CallTimeout</c> (<c>00:00:30</c>), <c>Retry:MaxAttempts</c> and the rest. Certificates
/// and interceptors are objects: set them in code.
/// </remarks>
public sealed class KmsClientOptions
{
    /// <summary>The server used when neither <see cref="Endpoint"/> nor <see cref="Endpoints"/> is set (dev mode's address).</summary>
    public static readonly Uri DefaultEndpoint = new("https://127.0.0.1:8443");

    /// <summary>Longest <see cref="CallTimeout"/> accepted.</summary>
    public static readonly TimeSpan MaxCallTimeout = TimeSpan.FromDays(1);

    /// <summary>
    /// One server, e.g. <c>https://127.0.0.1:8443</c>: shorthand for <see cref="Endpoints"/>
    /// with a single entry. Set one or the other. Only https is accepted.
    /// </summary>
    public Uri? Endpoint { get; set; }

    /// <summary>
    /// The servers (e.g. one per site), each an absolute https URI. Calls go round-robin to
    /// those believed healthy; one that fails UNAVAILABLE is skipped until a health check
    /// finds it serving again. Neither this nor <see cref="Endpoint"/> set:
    /// <see cref="DefaultEndpoint"/>.
    /// </summary>
    public IList<Uri> Endpoints { get; set; } = [];

    /// <summary>
    /// PEM file of the CA that issued the servers' certificates (dev mode: <c>.kms/tls/ca.crt</c>).
    /// When set, only the certificates in it are trusted for the servers — all of them: during a
    /// CA rotation, the old CA and the new one; when null, the system's trust store is used.
    /// Read once, at creation; a file without a certificate is refused.
    /// </summary>
    public string? CaCertificatePath { get; set; }

    /// <summary>Like <see cref="CaCertificatePath"/>, already loaded.</summary>
    public X509Certificate2? CaCertificate { get; set; }

    /// <summary>
    /// API token (<c>kms_&lt;id&gt;_&lt;secret&gt;</c>), sent as <c>Authorization: Bearer</c>. Use a
    /// token or a client certificate, not both: the server refuses a call carrying both.
    /// </summary>
    public string? ApiToken { get; set; }

    /// <summary>
    /// File holding the API token (dev mode: <c>.kms/tokens/developer.token</c>) or a workload's JWT
    /// (a projected service-account token): read when the client is created, and read again a second
    /// after each read ends, on a timer — never by a call, so a read that blocks delays no call — its
    /// content compared (through symbolic links: a kubelet's <c>..data</c> swap, a copy that keeps the
    /// file's time), so a token the platform rotates is picked up without a new client. A file being
    /// replaced (unreadable, empty, a directory, over 16 KiB) leaves the previous token in use.
    /// </summary>
    public string? ApiTokenPath { get; set; }

    /// <summary>Client certificate with its private key, for mTLS.</summary>
    public X509Certificate2? ClientCertificate { get; set; }

    /// <summary>
    /// Deadline of a unary call that was given none, over all its attempts (retries wait only
    /// while the next attempt can still start before it). Streaming calls get no default
    /// deadline. At most <see cref="MaxCallTimeout"/>.
    /// </summary>
    public TimeSpan CallTimeout { get; set; } = TimeSpan.FromSeconds(30);

    /// <summary>How calls that failed UNAVAILABLE, or RESOURCE_EXHAUSTED with a retry delay, are sent again.</summary>
    public KmsRetryOptions Retry { get; set; } = new();

    /// <summary>Most <see cref="MaxConcurrentCalls"/> accepted.</summary>
    public const int MostConcurrentCalls = 65_536;

    /// <summary>
    /// Unary calls this client has on the wire to each endpoint at once. An attempt beyond it is
    /// not sent: like an attempt that failed UNAVAILABLE it goes at once to another endpoint with
    /// room, or is retried after a backoff (<see cref="Retry"/>; at least half its ceiling, never at
    /// once), without taking the endpoint out; the call fails UNAVAILABLE when its attempts or its
    /// deadline run out (<c>kms.client.calls_shed</c> counts the attempts not sent). Per endpoint,
    /// so that one which accepts calls and never answers holds only its own places. Without this
    /// bound an application that makes calls faster than the KMS answers them queues them in its
    /// HTTP/2 connections without limit:
    /// measured at twice a server's peak, 4,000 calls outstanding halved what the server served and
    /// made each wait 0.5–0.7 s (docs/benchmarks.md, "Overload: the queue is the client's"). 1 to
    /// <see cref="MostConcurrentCalls"/>; streaming calls are not counted.
    /// </summary>
    public int MaxConcurrentCalls { get; set; } = 512;

    /// <summary>
    /// How often an endpoint taken out after a failure is probed (grpc.health.v1 Check, no
    /// credential) to bring it back. Probes are sent only while the client is making calls.
    /// </summary>
    public TimeSpan HealthCheckInterval { get; set; } = TimeSpan.FromSeconds(5);

    /// <summary>
    /// Interceptors run on every attempt of every call (a retried call passes them once per
    /// attempt), the first outermost; e.g. for tracing. They run before the API token is
    /// added, so they never see it. Health probes do not pass them.
    /// </summary>
    /// <remarks>
    /// <b>An interceptor sees every request and response message in clear, secrets included</b>:
    /// the plaintext of <c>Encrypt</c> requests and <c>Decrypt</c> responses, and plaintext data
    /// keys — <c>GenerateDataKey</c> responses, and the <c>Encrypt</c> requests with which an
    /// <see cref="Envelope.EnvelopeEncryptor"/> wraps one data key under each further key of a
    /// multi-key envelope (and <c>Decrypt</c> responses when it unwraps). Such a key decrypts
    /// every message it protects (with a data-key cache, many). An interceptor must not log,
    /// record or export message bodies (trace attributes included), nor keep them; it should
    /// read only the method name, status, timing and metadata it needs.
    /// </remarks>
    public IList<Interceptor> Interceptors { get; } = [];

    /// <summary>The endpoints to use, checked.</summary>
    /// <exception cref="ArgumentException">A setting is out of range or two settings contradict each other; the message says which.</exception>
    internal IReadOnlyList<Uri> Validate(string paramName)
    {
        var listed = Endpoints ?? [];

        // Checked before any message shows an endpoint: a user name or password in the URI is
        // never sent (gRPC ignores it), and every later message and log line would show it.
        if (listed.Append(Endpoint).Any(e => e is { IsAbsoluteUri: true, UserInfo.Length: > 0 }))
        {
            throw Invalid("a KMS endpoint carries a user name or password in its URI, which the client never sends: give the credential with ApiToken, ApiTokenPath or ClientCertificate", paramName);
        }

        if (Endpoint is { } single && listed.Count > 0 && !(listed.Count == 1 && listed[0] == single))
        {
            throw Invalid($"set Endpoint or Endpoints, not both (Endpoint {single}; Endpoints {string.Join(", ", listed)})", paramName);
        }

        IReadOnlyList<Uri> endpoints = listed.Count > 0 ? [.. listed] : [Endpoint ?? DefaultEndpoint];
        for (var i = 0; i < endpoints.Count; i++)
        {
            var endpoint = endpoints[i] ?? throw Invalid($"endpoint {i} is null", paramName);
            if (!endpoint.IsAbsoluteUri || endpoint.Scheme != Uri.UriSchemeHttps)
            {
                throw Invalid($"the KMS endpoint must be an absolute https URI: '{endpoint}' is not", paramName);
            }

            if (endpoints.Take(i).Any(earlier => earlier == endpoint))
            {
                throw Invalid($"the KMS endpoint {endpoint} is listed twice", paramName);
            }
        }

        if (CallTimeout <= TimeSpan.Zero || CallTimeout > MaxCallTimeout)
        {
            throw Invalid($"CallTimeout must be positive and at most {MaxCallTimeout}; it is {CallTimeout}", paramName);
        }

        if (MaxConcurrentCalls is < 1 or > MostConcurrentCalls)
        {
            throw Invalid($"MaxConcurrentCalls must be between 1 and {MostConcurrentCalls}; it is {MaxConcurrentCalls}", paramName);
        }

        if (HealthCheckInterval <= TimeSpan.Zero)
        {
            throw Invalid($"HealthCheckInterval must be positive; it is {HealthCheckInterval}", paramName);
        }

        (Retry ?? throw Invalid("Retry must not be null", paramName)).Validate(paramName);

        if ((ApiToken is not null || ApiTokenPath is not null) && ClientCertificate is not null)
        {
            throw Invalid("use an API token or a client certificate, not both: the server refuses calls that carry both", paramName);
        }

        return endpoints;
    }

    internal static ArgumentException Invalid(string message, string paramName) => new(message, paramName);
}
