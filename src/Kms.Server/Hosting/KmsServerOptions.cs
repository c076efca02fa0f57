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

    /// <summary>The tenant dev mode creates on first run (with its tokens under <c>{DataDir}/tokens</c>).</summary>
    public string Tenant { get; set; } = "dev";

    /// <summary>PEM bundle of the CA(s) that issue client certificates; unset: mTLS is off (API tokens only).</summary>
    public string? ClientCaPath { get; set; }

    /// <summary>CRL file (PEM or DER) signed by a client CA; revoked client certificates are refused. Reloaded when it changes.</summary>
    public string? ClientCrlPath { get; set; }

    /// <summary>
    /// Where a production start writes the one-time bootstrap credential while no deployment
    /// admin exists; default <c>{DataDir}/bootstrap.token</c> (mode 0600).
    /// </summary>
    public string? BootstrapTokenPath { get; set; }

    /// <summary>
    /// This node's name, recorded in each quorum request it executes so officers learn which node
    /// holds the output (a recovery credential, a backup); default the host name. 1 to 64 of
    /// <c>[A-Za-z0-9._-]</c>; a start with another is refused, and on PostgreSQL a start with a name
    /// another live node holds (<see cref="Kms.Storage.Postgres.PostgresStore.TryHoldNodeNameAsync"/>).
    /// </summary>
    public string NodeName { get; set; } = Environment.MachineName;

    /// <summary>
    /// How long an authenticated credential is remembered before its token, bindings and certificate
    /// are read again: while a node cannot read the change feed, another node's revocation takes
    /// effect on it at most this late. 0 to <see cref="MaxCredentialCacheTime"/>; a start with more is refused.
    /// </summary>
    public TimeSpan CredentialCacheTime { get; set; } = TimeSpan.FromSeconds(5);

    /// <summary>The largest <see cref="CredentialCacheTime"/> a server starts with: five minutes.</summary>
    public static readonly TimeSpan MaxCredentialCacheTime = TimeSpan.FromMinutes(5);

    /// <summary>
    /// Credential checks that fail, per client IP address per minute (a token bucket of this many,
    /// refilled at this many a minute): an API token's database lookup, a JWT's or a client
    /// certificate's verification that ends in a refusal. Once an address has used them up, a
    /// credential from it that is not already remembered (<see cref="CredentialCacheTime"/>) is
    /// refused RESOURCE_EXHAUSTED, with a retry delay, before it is looked up. Behind a load balancer
    /// or NAT the address is the balancer's: its clients share the bound. 0 switches it off. Default 60.
    /// </summary>
    public int MaxFailedAuthenticationsPerClientAddress { get; set; } = 60;

    /// <summary>Calls served at once; more are shed with UNAVAILABLE (clients retry).</summary>
    public int MaxConcurrentCalls { get; set; } = 512;

    /// <summary>
    /// Calls of one tenant served at once (a caller of no tenant — a deployment principal, an
    /// unregistered certificate or workload — counts as its own); more are shed with UNAVAILABLE
    /// (<c>kms-shed: tenant</c>), so that one tenant's callers cannot hold every one of
    /// <see cref="MaxConcurrentCalls"/> and have every other tenant's calls shed. Unset: half of
    /// <see cref="MaxConcurrentCalls"/>, rounded up. At least 1.
    /// </summary>
    public int? MaxConcurrentCallsPerTenant { get; set; }

    /// <summary>The bound on one tenant's calls in flight: <see cref="MaxConcurrentCallsPerTenant"/>, or half of <see cref="MaxConcurrentCalls"/> rounded up.</summary>
    public int TenantCallBound => MaxConcurrentCallsPerTenant ?? ((MaxConcurrentCalls / 2) + (MaxConcurrentCalls % 2));

    /// <summary>Shedding by queue delay when more calls arrive than the server can serve.</summary>
    public OverloadOptions Overload { get; set; } = new();

    /// <summary>Per-tenant limits on crypto operations.</summary>
    public QuotaOptions Quotas { get; set; } = new();

    /// <summary>Quorum approvals: where the genesis officer set is pinned.</summary>
    public QuorumHostOptions Quorum { get; set; } = new();

    /// <summary>
    /// PEM certificate chain of the server: its own certificate first (the one <see cref="TlsKeyPath"/>
    /// is the key of), then the intermediate CAs, each the issuer of the one before; all are sent,
    /// but a self-signed root at the end. Reloaded on change. Default in dev mode: <c>{DataDir}/tls/server.crt</c>.
    /// </summary>
    public string? TlsCertificatePath { get; set; }

    /// <summary>PEM private key of the server; default in dev mode: <c>{DataDir}/tls/server.key</c>.</summary>
    public string? TlsKeyPath { get; set; }

    /// <summary>
    /// Where Prometheus scrapes <c>/metrics</c>, e.g. <c>http://127.0.0.1:9464</c>: plain HTTP/1.1
    /// on a listener of its own, never on a gRPC address. Unset (the default, dev mode too): no
    /// metrics listener. Loopback only unless <see cref="MetricsAllowNonLoopback"/>.
    /// </summary>
    public string? MetricsUrl { get; set; }

    /// <summary>
    /// Lets <see cref="MetricsUrl"/> be a non-loopback address. The scrape needs no credential
    /// (the series carry no tenant, key or caller), but it does show how the service is used.
    /// </summary>
    public bool MetricsAllowNonLoopback { get; set; }

    /// <summary>Largest request message in bytes: a batch of 4 MiB of plaintext plus its framing fits.</summary>
    public int MaxRequestBytes { get; set; } = 5 * 1024 * 1024;

    /// <summary>
    /// Request bytes held at once for one tenant's calls whose message is still arriving (a caller
    /// of no tenant counts alone): each such message counts by its declared length until its call
    /// ends, and one that would pass this is refused RESOURCE_EXHAUSTED. At least <see cref="MaxRequestBytes"/>. Default 64 MiB.
    /// </summary>
    public long MaxRequestBytesInFlightPerTenant { get; set; } = 64 * 1024 * 1024;

    /// <summary>Workload identity: the JWT issuers whose tokens authenticate callers (docs/access-control.md).</summary>
    public JwtOptions Jwt { get; set; } = new();

    /// <summary>Limits below the gRPC call (connections, TLS, HTTP/2), reachable without a credential.</summary>
    public TransportOptions Transport { get; set; } = new();

    /// <summary>
    /// How long a List RPC's page token is good for after the page that returned it (AIP-158 lets
    /// tokens expire): an older one is refused INVALID_ARGUMENT, and the listing starts again from
    /// the first page. A token leaked (in a log, a URL) lets its holder page on as its caller only
    /// this long. Default 24 hours; at least a second.
    /// </summary>
    public TimeSpan PageTokenLifetime { get; set; } = TimeSpan.FromHours(24);

    // The sequence numbers one ListAuditEvents page examines at most (Kms.Core.Audit.AuditPages).
    // Not configurable: tests lower it to page through empty windows on a small log.
    internal long AuditScanWindow { get; set; } = Kms.Core.Audit.AuditPages.DefaultScanWindow;
}

/// <summary>
/// The limits of the layer below the gRPC call (<c>Kms:Transport</c>): TCP connections, the TLS
/// handshake and HTTP/2. Anyone who can reach the port reaches this layer without a credential
/// (docs/deployment.md, "Transport limits"; SECURITY.md claim 106).
/// </summary>
public sealed class TransportOptions
{
    /// <summary>
    /// Connections open at once from one client IP address, from the TCP accept on (before the TLS
    /// handshake); more are closed at once. 0 switches the bound off (a load balancer or NAT in front
    /// makes every client one address: bound there instead). Default 64.
    /// </summary>
    public int MaxConnectionsPerClientAddress { get; set; } = 64;

    /// <summary>Connections open at once in all (Kestrel's <c>MaxConcurrentConnections</c>, unbounded by default there); more are closed at once. Default 4096.</summary>
    public int MaxConnections { get; set; } = 4096;

    /// <summary>How long a client may take to complete the TLS handshake from the TCP accept; default 10 seconds (Kestrel's).</summary>
    public TimeSpan TlsHandshakeTimeout { get; set; } = TimeSpan.FromSeconds(10);

    /// <summary>How long a connection may stay open with no request in progress; default 130 seconds (Kestrel's).</summary>
    public TimeSpan KeepAliveTimeout { get; set; } = TimeSpan.FromSeconds(130);

    /// <summary>How long a request's headers may take to arrive; default 30 seconds (Kestrel's).</summary>
    public TimeSpan RequestHeadersTimeout { get; set; } = TimeSpan.FromSeconds(30);

    /// <summary>Calls (HTTP/2 streams) open at once on one connection; more are refused with REFUSED_STREAM. Default 100 (Kestrel's).</summary>
    public int MaxStreamsPerConnection { get; set; } = 100;

    /// <summary>
    /// How long a stop waits for open connections to end (calls in progress to be answered) before
    /// it aborts them and goes on to its last steps, which get 10 seconds more; default 20 seconds.
    /// </summary>
    public TimeSpan ShutdownDrainTimeout { get; set; } = TimeSpan.FromSeconds(20);
}

/// <summary>
/// Workload identity (<c>Kms:Jwt</c>): bearer JWTs signed by configured issuers — a Kubernetes
/// cluster's service-account tokens, an Entra workload identity, a CI's OIDC tokens — authenticate
/// the principal <c>jwt:&lt;issuer name&gt;:&lt;sub&gt;</c>. No issuer configured: no JWT is accepted.
/// </summary>
/// <remarks>
/// Keys come from a JSON Web Key Set file per issuer, never from a URL: no network at request time,
/// no request to an address a token names, and an issuer's outage is not the KMS's.
/// </remarks>
public sealed class JwtOptions
{
    /// <summary>The trusted issuers; names and issuer strings unique.</summary>
    public List<JwtIssuerOptions> Issuers { get; set; } = [];

    /// <summary>
    /// Refuses, naming the option, an issuer whose name, issuer, audience or key set file is
    /// missing or invalid, or a name or issuer given twice; reads every key set file once, so that
    /// a start with one that cannot be used is refused. <see cref="JwtIssuerOptions.MaxLifetime"/>
    /// is checked with every other time span (SettingRanges).
    /// </summary>
    /// <exception cref="InvalidOperationException">The first such option, and what it must be.</exception>
    public void Validate()
    {
        for (var i = 0; i < Issuers.Count; i++)
        {
            var issuer = Issuers[i];
            var option = $"Kms:Jwt:Issuers:{i}";
            if (!Core.Access.PrincipalName.IsJwtIssuerName(issuer.Name))
            {
                throw new InvalidOperationException($"{option}:Name must be 1 to 32 of [a-z0-9-] (it is part of the principal name jwt:<name>:<sub>)");
            }

            if (Issuers.Take(i).Any(other => other.Name == issuer.Name))
            {
                throw new InvalidOperationException($"{option}:Name {issuer.Name} is given twice; issuer names are unique");
            }

            if (string.IsNullOrEmpty(issuer.Issuer))
            {
                throw new InvalidOperationException($"{option}:Issuer must be set: the exact iss claim of the issuer's tokens");
            }

            if (Issuers.Take(i).Any(other => string.Equals(other.Issuer, issuer.Issuer, StringComparison.Ordinal)))
            {
                throw new InvalidOperationException($"{option}:Issuer {issuer.Issuer} is configured twice; one issuer has one name, one audience and one key set");
            }

            if (string.IsNullOrEmpty(issuer.Audience))
            {
                throw new InvalidOperationException($"{option}:Audience must be set: the aud a token must hold to be accepted here (a token minted for another service is refused)");
            }

            if (string.IsNullOrEmpty(issuer.JwksPath))
            {
                throw new InvalidOperationException($"{option}:JwksPath must be set: the issuer's JSON Web Key Set file (keys are never fetched from a URL)");
            }

            try
            {
                _ = Security.JsonWebKeySet.Load(issuer.JwksPath);
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException or FormatException)
            {
                throw new InvalidOperationException($"{option}:JwksPath {issuer.JwksPath} cannot be used: {e.Message}", e);
            }
        }
    }
}

/// <summary>One trusted JWT issuer (<c>Kms:Jwt:Issuers:N</c>).</summary>
public sealed class JwtIssuerOptions
{
    /// <summary>The longest <see cref="MaxLifetime"/> a server starts with: seven days.</summary>
    public static readonly TimeSpan LongestMaxLifetime = TimeSpan.FromDays(7);

    /// <summary>Short name, 1 to 32 of <c>[a-z0-9-]</c>, unique: the principal is <c>jwt:&lt;Name&gt;:&lt;sub&gt;</c>.</summary>
    public string? Name { get; set; }

    /// <summary>The issuer's <c>iss</c>, compared exactly (no normalisation of a trailing slash or case).</summary>
    public string? Issuer { get; set; }

    /// <summary>The audience a token must hold in its <c>aud</c> (a string, or an array containing it).</summary>
    public string? Audience { get; set; }

    /// <summary>The issuer's public keys, a JSON Web Key Set file (RFC 7517); read again when it changes.</summary>
    public string? JwksPath { get; set; }

    /// <summary>The longest <c>exp - iat</c> accepted; default 24 hours.</summary>
    public TimeSpan MaxLifetime { get; set; } = TimeSpan.FromHours(24);
}

/// <summary>
/// Per-tenant rate limits on crypto operations (a token bucket per tenant: a batch item
/// costs one). Exceeding one is RESOURCE_EXHAUSTED with a retry delay.
/// </summary>
/// <summary>Quorum approvals (docs/quorum.md).</summary>
public sealed class QuorumHostOptions
{
    /// <summary>The genesis officer set the key ceremony wrote (JSON); unset: quorum operations are refused.</summary>
    public string? GenesisFile { get; set; }

    /// <summary>The genesis set's hash (hex SHA-256, from the ceremony transcript); the file must match it. Required with <see cref="GenesisFile"/> outside dev mode; set without it, the server does not start (in any mode).</summary>
    public string? GenesisSha256 { get; set; }

    /// <summary>
    /// How far an approval's signed time (the officer's clock) may be from this server's trusted
    /// time: 1 minute to 1 hour, 5 minutes by default (<see cref="Kms.Core.Services.QuorumOptions.MaxSignTimeSkew"/>).
    /// </summary>
    public TimeSpan MaxSignTimeSkew { get; set; } = new Kms.Core.Services.QuorumOptions().MaxSignTimeSkew;

    /// <summary>The narrowest <see cref="MaxSignTimeSkew"/> allowed: officers' machines are not expected to keep time closer.</summary>
    public static readonly TimeSpan MinSignTimeSkew = TimeSpan.FromMinutes(1);

    /// <summary>The widest <see cref="MaxSignTimeSkew"/> allowed: a signed time must still say when the approval was made.</summary>
    public static readonly TimeSpan MaxAllowedSignTimeSkew = TimeSpan.FromHours(1);
}

/// <summary>
/// Load shedding by queue delay (<see cref="Kms.Server.Overload.QueueDelayMonitor"/>): when even
/// the shortest wait for a thread over a whole <see cref="Window"/> exceeds
/// <see cref="QueueDelayTarget"/>, a growing fraction of calls is answered UNAVAILABLE at once.
/// Off by default: measured on the 2-core test machine at twice the peak, it served fewer calls
/// and no faster than shedding by calls in flight alone (docs/benchmarks.md, "Overload").
/// </summary>
public sealed class OverloadOptions
{
    /// <summary>The standing queue delay tolerated; zero (the default) turns shedding by delay off.</summary>
    public TimeSpan QueueDelayTarget { get; set; }

    /// <summary>How long the delay must stay above the target (longer than a GC pause or a burst).</summary>
    public TimeSpan Window { get; set; } = TimeSpan.FromMilliseconds(500);
}

/// <summary>Per-tenant quotas.</summary>
/// <remarks>
/// Every number must be above 0 (a burst at least 1), or the server refuses to start
/// (SettingRanges, with every other number): a 0 written to block a tenant once gave it no limit at all. Quotas
/// are switched off only by saying so, with <see cref="Enabled"/> = false.
/// </remarks>
public sealed class QuotaOptions
{
    /// <summary>Whether crypto operations are metered at all (default true); false switches every tenant's quota off.</summary>
    public bool Enabled { get; set; } = true;

    /// <summary>Sustained crypto operations per second per tenant; above 0.</summary>
    public double OperationsPerSecond { get; set; } = 5000;

    /// <summary>Largest burst per tenant (the bucket's size); at least 1.</summary>
    public double Burst { get; set; } = 10000;

    /// <summary>
    /// Sustained calls per second per tenant other than crypto operations — reads and management
    /// (GetKey, ListKeys, an auditor's ListAuditEvents, SetKeyPolicy, …), a stream once when it
    /// starts — on a bucket of the tenant's own, apart from its crypto quota (which CreateKey,
    /// RotateKey, the imports and GetKeyAttestation spend, as HSM work); above 0.
    /// </summary>
    public double OtherCallsPerSecond { get; set; } = 1000;

    /// <summary>Largest burst of a tenant's calls other than crypto operations; at least 1.</summary>
    public double OtherCallsBurst { get; set; } = 2000;

    /// <summary>
    /// The share of its tenant's <see cref="OtherCallsPerSecond"/> and <see cref="OtherCallsBurst"/>
    /// that each principal of the tenant may spend (a burst of at least 1); above 0, at most 1.
    /// Default 0.5.
    /// </summary>
    /// <remarks>
    /// A call spends from the principal's share and from the tenant's bucket, and is refused
    /// RESOURCE_EXHAUSTED if either is empty — a call refused for its share spends none of the
    /// tenant's. So one runaway or leaked token of a tenant cannot spend the whole bucket: the
    /// tenant's other principals keep the rest, enough for its admin to remove the token's role
    /// bindings and its key managers to disable keys. 1 puts every principal on the tenant's bucket
    /// alone. The crypto quota has a share only where <see cref="CryptoPrincipalShare"/> sets one.
    /// </remarks>
    public double OtherCallsPrincipalShare { get; set; } = 0.5;

    /// <summary>
    /// The share of its tenant's <see cref="OperationsPerSecond"/> and <see cref="Burst"/> that each
    /// principal of the tenant may spend (a burst of at least 1); above 0, at most 1. Default 1: each
    /// principal may spend the whole crypto quota.
    /// </summary>
    /// <remarks>
    /// Opt-in, because a tenant's crypto is often one service principal's, which a share would hold
    /// to part of its tenant's quota. Below 1, a crypto call (CreateKey and RotateKey among them)
    /// spends from the principal's share and from the tenant's bucket, and is refused
    /// RESOURCE_EXHAUSTED if either has too few — a call refused for its share spends none of the
    /// tenant's — so one runaway or leaked token cannot spend the whole crypto quota and hold up the
    /// tenant's other services and its key managers' CreateKey and RotateKey.
    /// </remarks>
    public double CryptoPrincipalShare { get; set; } = 1;

    /// <summary>Per-tenant overrides by tenant id.</summary>
    public Dictionary<string, TenantQuota> Tenants { get; set; } = [];

    /// <summary>
    /// Calls per second of each principal of no tenant — deployment admins, security officers, an
    /// unregistered certificate or workload — every call counted (a crypto call by its cost), each
    /// principal on its own bucket: its calls are not a tenant's, so the tenants' quota never
    /// metered them, and a leaked deployment credential could otherwise page the whole audit
    /// (<c>ListAuditEvents</c>, <c>ExportAudit</c>) or the access tables as fast as the node answers.
    /// </summary>
    public PrincipalQuota PrincipalsWithoutTenant { get; set; } = new();
}

/// <summary>The call rate of each principal of no tenant (<see cref="QuotaOptions.PrincipalsWithoutTenant"/>).</summary>
public sealed class PrincipalQuota
{
    /// <summary>Sustained calls per second of one such principal, on one node; above 0. Default 100.</summary>
    public double CallsPerSecond { get; set; } = 100;

    /// <summary>Largest burst of one such principal (the bucket's size); at least 1. Default 200.</summary>
    public double Burst { get; set; } = 200;
}

/// <summary>One tenant's limit; what it leaves unset is the deployment's.</summary>
public sealed class TenantQuota
{
    /// <summary>Sustained crypto operations per second, above 0; unset: <see cref="QuotaOptions.OperationsPerSecond"/>.</summary>
    public double? OperationsPerSecond { get; set; }

    /// <summary>Largest burst; default: two seconds' worth.</summary>
    public double? Burst { get; set; }

    /// <summary>Sustained calls per second other than crypto operations, above 0; unset: <see cref="QuotaOptions.OtherCallsPerSecond"/>.</summary>
    public double? OtherCallsPerSecond { get; set; }

    /// <summary>Largest burst of calls other than crypto operations; default: two seconds' worth.</summary>
    public double? OtherCallsBurst { get; set; }

    /// <summary>
    /// The share of this tenant's calls other than crypto operations that each of its principals may
    /// spend, above 0 and at most 1; unset: <see cref="QuotaOptions.OtherCallsPrincipalShare"/>.
    /// </summary>
    public double? OtherCallsPrincipalShare { get; set; }

    /// <summary>
    /// The share of this tenant's crypto quota that each of its principals may spend, above 0 and at
    /// most 1; unset: <see cref="QuotaOptions.CryptoPrincipalShare"/>.
    /// </summary>
    public double? CryptoPrincipalShare { get; set; }
}
