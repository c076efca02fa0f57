using System.Net.Security;
using System.Runtime.CompilerServices;
using System.Security.Authentication;
using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;
using Google.Protobuf;
using Grpc.Core;
using Grpc.Core.Interceptors;
using Grpc.Net.Client;
using Kms.Client.Failover;
using Kms.Contracts.V1;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;

namespace Kms.Client;

/// <summary>
/// Typed, async client of kms.v1 over gRPC with TLS 1.3, spread over one or more endpoints
/// with failover. Thread-safe; create one per process and reuse it (it owns one HTTP/2
/// connection pool per endpoint), or register it with
/// <c>services.AddKmsClient(...)</c>.
/// </summary>
/// <remarks>
/// <para>
/// Failures surface as <see cref="RpcException"/> with the server's status: INVALID_ARGUMENT
/// (a field; for ciphertexts the opaque "decryption failed"), NOT_FOUND, FAILED_PRECONDITION,
/// UNAUTHENTICATED, PERMISSION_DENIED, RESOURCE_EXHAUSTED (a quota or rate, when the client did
/// not wait out its RetryInfo delay, below), UNAVAILABLE (every endpoint tried failed, or had
/// <see cref="KmsClientOptions.MaxConcurrentCalls"/> calls on the wire), DEADLINE_EXCEEDED. Secrets
/// returned (<see cref="DataKey"/>, <see cref="DecryptedData"/>) are zeroed on dispose.
/// </para>
/// <para>
/// Every call — the typed methods, <see cref="Raw"/>, <see cref="Access"/> and
/// <see cref="Audit"/> alike — gets <see cref="KmsClientOptions.CallTimeout"/> as its
/// deadline unless it brings one (unary calls), and goes to the next endpoint believed
/// healthy, round-robin. UNAVAILABLE is retried, because it says the call
/// was not carried out: the server answers it when it did nothing (HSM or database down,
/// load shed), the transport when no connection could be made (refused, or not made within
/// the connect timeout: half of CallTimeout, at most 5 s) or it broke. A broken
/// connection may have lost the answer to a call the server did carry out, so after one
/// the client sends a call again only if a repeat is harmless: reads and cryptographic
/// operations; mutations that set a state (enable, disable, update, revoke); and mutations
/// with a <c>request_id</c>, which the server applies once per id — the client fills an
/// empty id once per call (the typed methods generate it before the first attempt), so every
/// attempt carries the same one. Other creations (CreateGrant, CreateApiToken, CreateTenant,
/// CreatePrincipal, Bootstrap) are sent again only when the first attempt never reached a
/// server, or when the server says none of it ran: it shed it (UNAVAILABLE with a <c>kms-shed</c>
/// trailer: it was full), or refused it for a quota (below). A RESOURCE_EXHAUSTED with a <c>google.rpc.RetryInfo</c> delay (a used-up
/// quota or call rate, a client address past its failed authentications: nothing of the call ran)
/// is retried too, if the delay is at most <see cref="KmsRetryOptions.MaxRetryInfoDelay"/> — any unary
/// call, a once-only creation included, and a stream whose repeat is harmless: after that delay and up
/// to a quarter more, on the same endpoint, which stays in the rotation. Everything else — DEADLINE_EXCEEDED (the server may still be
/// working on it), RESOURCE_EXHAUSTED without RetryInfo, CANCELLED, errors about the request — is
/// returned at once. Retries stop at <see cref="KmsRetryOptions.MaxAttempts"/>, and before
/// any wait that would outlast the deadline (the last failure is returned then).
/// A server-streaming call (ExportAudit) is retried only until its first message arrives.
/// </para>
/// <para>
/// An endpoint that fails UNAVAILABLE is skipped by later calls until a grpc.health.v1
/// probe (every <see cref="KmsClientOptions.HealthCheckInterval"/>, while the client is in
/// use) finds it SERVING — unless the answer was a shed one: a full endpoint stays in the
/// rotation, passed over only for the server's pushback while another endpoint is free.
/// When every endpoint is down the client still tries one, the
/// least recently failed, rather than failing without trying.
/// </para>
/// <para>
/// At most <see cref="KmsClientOptions.MaxConcurrentCalls"/> unary attempts are on the wire to
/// each endpoint. An attempt that finds no place is not sent: it goes at once to another endpoint
/// with room, or is retried after a backoff, and the endpoint is not taken out.
/// </para>
/// </remarks>
public sealed partial class KmsClient : IDisposable
{
    // Half of CallTimeout, so that an endpoint that swallows connection attempts is
    // given up in time to try another; never more than this.
    private static readonly TimeSpan MaxConnectTimeout = TimeSpan.FromSeconds(5);

    private readonly FailoverCallInvoker _invoker;
    private readonly KeyManagementService.KeyManagementServiceClient _stub;
    private readonly X509Certificate2Collection? _ownedCas;
    private readonly BearerToken? _token;

    /// <summary>Connects to the configured endpoints, trusting the configured CA.</summary>
    /// <exception cref="ArgumentException">An option is invalid; the message says which.</exception>
    public KmsClient(KmsClientOptions options)
        : this(options, null)
    {
    }

    /// <summary>Connects to the configured endpoints, logging failovers to <paramref name="loggerFactory"/>.</summary>
    /// <exception cref="ArgumentException">An option is invalid; the message says which.</exception>
    public KmsClient(KmsClientOptions options, ILoggerFactory? loggerFactory)
        : this(Connect(options, loggerFactory, TimeProvider.System, Random.Shared.NextDouble))
    {
    }

    internal KmsClient(Connection connection)
    {
        _invoker = connection.Invoker;
        _ownedCas = connection.OwnedCas;
        _token = connection.Token;
        LoggerFactory = connection.LoggerFactory;
        _stub = new KeyManagementService.KeyManagementServiceClient(_invoker);
        Access = new AccessManagementService.AccessManagementServiceClient(_invoker);
        Audit = new AuditService.AuditServiceClient(_invoker);
        Quorum = new QuorumService.QuorumServiceClient(_invoker);
    }

    /// <summary>The key-management stub, for calls the typed methods do not cover; with this client's credential, deadline and failover.</summary>
    public KeyManagementService.KeyManagementServiceClient Raw => _stub;

    /// <summary>The access-management stub (tenants, principals, tokens, role bindings), with this client's credential, deadline and failover.</summary>
    public AccessManagementService.AccessManagementServiceClient Access { get; }

    /// <summary>The audit log (auditors, security officers): list, checkpoint, signing key, export.</summary>
    public AuditService.AuditServiceClient Audit { get; }

    /// <summary>Quorum requests and officers' approvals (<see cref="Kms.Client.Quorum.QuorumApprover"/> renders and signs them).</summary>
    public QuorumService.QuorumServiceClient Quorum { get; }

    /// <summary>Where this client logs (null: nowhere); an <see cref="Envelope.EnvelopeEncryptor"/> built on it logs there too.</summary>
    internal ILoggerFactory? LoggerFactory { get; }

    /// <summary>The endpoints and their believed health (for tests).</summary>
    internal EndpointPool Endpoints => _invoker.Pool;

    /// <summary>
    /// Creates a key. A <paramref name="requestId"/> is generated when none is given, so a
    /// retry of this call inside the client is applied once.
    /// </summary>
    public Task<Key> CreateKeyAsync(
        string parent,
        string keyId,
        KeyPurpose purpose = KeyPurpose.EncryptDecrypt,
        IReadOnlyDictionary<string, string>? labels = null,
        string? requestId = null,
        CancellationToken cancellationToken = default) =>
        CreateKeyAsync(parent, keyId, purpose, KeyAlgorithm.Unspecified, labels, requestId, cancellationToken);

    /// <summary>
    /// Creates a key whose versions have <paramref name="algorithm"/> (which must serve
    /// <paramref name="purpose"/>; unspecified: the purpose's default).
    /// </summary>
    public Task<Key> CreateKeyAsync(
        string parent,
        string keyId,
        KeyPurpose purpose,
        KeyAlgorithm algorithm,
        IReadOnlyDictionary<string, string>? labels = null,
        string? requestId = null,
        CancellationToken cancellationToken = default)
    {
        var key = new Key { Purpose = purpose, Algorithm = algorithm };
        AddAll(key.Labels, labels);
        return CreateKeyAsync(parent, keyId, key, requestId, cancellationToken);
    }

    /// <summary>
    /// Creates a key from a template carrying every settable field (purpose, algorithm, labels,
    /// rotation schedule, residency region, allow_import).
    /// </summary>
    public async Task<Key> CreateKeyAsync(string parent, string keyId, Key key, string? requestId = null, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(key);
        var response = await _stub.CreateKeyAsync(
            new CreateKeyRequest { Parent = parent, KeyId = keyId, Key = key, RequestId = requestId ?? RetrySafety.NewRequestId() },
            Options(cancellationToken)).ConfigureAwait(false);
        return response.Key;
    }

    /// <summary>A key's metadata.</summary>
    public async Task<Key> GetKeyAsync(string name, CancellationToken cancellationToken = default) =>
        (await _stub.GetKeyAsync(new GetKeyRequest { Name = name }, Options(cancellationToken)).ConfigureAwait(false)).Key;

    /// <summary>Every key of a tenant, fetched page by page as the enumeration proceeds.</summary>
    public IAsyncEnumerable<Key> ListKeysAsync(string parent, int pageSize = 0, CancellationToken cancellationToken = default) =>
        PagesAsync<Key>(
            async (token, ct) =>
            {
                var page = await _stub.ListKeysAsync(new ListKeysRequest { Parent = parent, PageSize = pageSize, PageToken = token }, Options(ct)).ConfigureAwait(false);
                return (page.Keys, page.NextPageToken);
            },
            cancellationToken);

    /// <summary>Encrypts up to 64 KiB under the key's primary version.</summary>
    public async Task<EncryptedData> EncryptAsync(
        string keyName,
        ReadOnlyMemory<byte> plaintext,
        IReadOnlyDictionary<string, string>? encryptionContext = null,
        CancellationToken cancellationToken = default)
    {
        var request = new EncryptRequest { Name = keyName, Plaintext = UnsafeByteOperations.UnsafeWrap(plaintext) };
        AddAll(request.EncryptionContext, encryptionContext);
        var response = await _stub.EncryptAsync(request, Options(cancellationToken)).ConfigureAwait(false);
        return new EncryptedData(response.Ciphertext.ToByteArray(), response.KeyVersion);
    }

    /// <summary>Decrypts a ciphertext from Encrypt or GenerateDataKey; dispose the result to zero the plaintext.</summary>
    public async Task<DecryptedData> DecryptAsync(
        ReadOnlyMemory<byte> ciphertext,
        IReadOnlyDictionary<string, string>? encryptionContext = null,
        CancellationToken cancellationToken = default)
    {
        var request = new DecryptRequest { Ciphertext = UnsafeByteOperations.UnsafeWrap(ciphertext) };
        AddAll(request.EncryptionContext, encryptionContext);
        var response = await _stub.DecryptAsync(request, Options(cancellationToken)).ConfigureAwait(false);
        return new DecryptedData(response.Plaintext, response.KeyVersion);
    }

    /// <summary>A fresh data key; dispose it to zero the plaintext.</summary>
    public async Task<DataKey> GenerateDataKeyAsync(
        string keyName,
        IReadOnlyDictionary<string, string>? encryptionContext = null,
        CancellationToken cancellationToken = default)
    {
        var request = new GenerateDataKeyRequest { Name = keyName };
        AddAll(request.EncryptionContext, encryptionContext);
        var response = await _stub.GenerateDataKeyAsync(request, Options(cancellationToken)).ConfigureAwait(false);
        return new DataKey(response.Plaintext, response.Ciphertext.ToByteArray(), response.KeyVersion);
    }

    /// <summary>A fresh data key, encrypted only (for a component that will decrypt it later).</summary>
    public async Task<EncryptedData> GenerateDataKeyWithoutPlaintextAsync(
        string keyName,
        IReadOnlyDictionary<string, string>? encryptionContext = null,
        CancellationToken cancellationToken = default)
    {
        var request = new GenerateDataKeyWithoutPlaintextRequest { Name = keyName };
        AddAll(request.EncryptionContext, encryptionContext);
        var response = await _stub.GenerateDataKeyWithoutPlaintextAsync(request, Options(cancellationToken)).ConfigureAwait(false);
        return new EncryptedData(response.Ciphertext.ToByteArray(), response.KeyVersion);
    }

    /// <summary>Creates a new primary version of a key (older versions still decrypt).</summary>
    public async Task<Key> RotateKeyAsync(string keyName, string? requestId = null, CancellationToken cancellationToken = default) =>
        (await _stub.RotateKeyAsync(new RotateKeyRequest { Name = keyName, RequestId = requestId ?? RetrySafety.NewRequestId() }, Options(cancellationToken)).ConfigureAwait(false)).Key;

    /// <summary>Moves a ciphertext under the destination key's primary version (and a new context) without exposing its plaintext.</summary>
    public async Task<ReEncryptResponse> ReEncryptAsync(
        ReadOnlyMemory<byte> ciphertext,
        string destinationKeyName,
        IReadOnlyDictionary<string, string>? sourceEncryptionContext = null,
        IReadOnlyDictionary<string, string>? destinationEncryptionContext = null,
        CancellationToken cancellationToken = default)
    {
        var request = new ReEncryptRequest { Ciphertext = UnsafeByteOperations.UnsafeWrap(ciphertext), DestinationName = destinationKeyName };
        AddAll(request.SourceEncryptionContext, sourceEncryptionContext);
        AddAll(request.DestinationEncryptionContext, destinationEncryptionContext ?? sourceEncryptionContext);
        return await _stub.ReEncryptAsync(request, Options(cancellationToken)).ConfigureAwait(false);
    }

    /// <summary>Random bytes from the HSM (1 to 1024).</summary>
    public async Task<byte[]> GenerateRandomAsync(int length, CancellationToken cancellationToken = default) =>
        (await _stub.GenerateRandomAsync(new GenerateRandomRequest { LengthBytes = length }, Options(cancellationToken)).ConfigureAwait(false)).Data.ToByteArray();

    /// <summary>Closes the connections, and stops reading the token file.</summary>
    public void Dispose()
    {
        _token?.Dispose();
        _invoker.Dispose();
        DisposeAll(_ownedCas);
    }

    /// <summary>The channels and failover machinery behind a client, the CA certificates it loaded and the token file it reads (disposed with it).</summary>
    internal readonly record struct Connection(FailoverCallInvoker Invoker, X509Certificate2Collection? OwnedCas, ILoggerFactory? LoggerFactory = null, BearerToken? Token = null);

    /// <summary>Validates the options and opens one channel per endpoint.</summary>
    internal static Connection Connect(KmsClientOptions options, ILoggerFactory? loggerFactory, TimeProvider time, Func<double> unitRandom)
    {
        ArgumentNullException.ThrowIfNull(options);
        var addresses = options.Validate(nameof(options));

        X509Certificate2Collection? ownedCas = null;
        BearerToken? token = null;
        try
        {
            X509Certificate2Collection? ca = options.CaCertificate is { } given ? [given] : null;
            if (ca is null && options.CaCertificatePath is { } path)
            {
                ca = ownedCas = LoadCaBundle(path, nameof(options));
            }

            token = BearerToken.From(options, time);
            var logger = loggerFactory?.CreateLogger<KmsClient>() ?? (ILogger)NullLogger.Instance;
            var probeTimeout = options.HealthCheckInterval < options.CallTimeout ? options.HealthCheckInterval : options.CallTimeout;
            var pool = new EndpointPool(addresses.Select(a => Open(a, options, ca, token)), time, options.HealthCheckInterval, probeTimeout, logger);
            var retry = options.Retry;
            var invoker = new FailoverCallInvoker(pool, retry.MaxAttempts, new Backoff(retry.BaseBackoff, retry.MaxBackoff, unitRandom), options.CallTimeout, time, logger)
            {
                Limit = new ConcurrencyLimit(options.MaxConcurrentCalls, logger),
                MaxRetryInfoDelay = retry.MaxRetryInfoDelay,
            };
            return new Connection(invoker, ownedCas, loggerFactory, token);
        }
        catch
        {
            token?.Dispose();
            DisposeAll(ownedCas);
            throw;
        }
    }

    /// <summary>
    /// Every certificate of a PEM file: a CA rotation's old and new CA, or an intermediate and
    /// its root, are all trusted (reading only the first would drop the rest without a word).
    /// </summary>
    /// <exception cref="ArgumentException">The file holds no certificate, or a malformed one.</exception>
    internal static X509Certificate2Collection LoadCaBundle(string path, string paramName)
    {
        var bundle = new X509Certificate2Collection();
        try
        {
            bundle.ImportFromPemFile(path);
        }
        catch (CryptographicException e)
        {
            DisposeAll(bundle);
            throw new ArgumentException($"CaCertificatePath {path}: a certificate in it cannot be read ({e.Message})", paramName, e);
        }

        if (bundle.Count == 0)
        {
            throw KmsClientOptions.Invalid($"CaCertificatePath {path} holds no PEM certificate (-----BEGIN CERTIFICATE-----)", paramName);
        }

        return bundle;
    }

    private static void DisposeAll(X509Certificate2Collection? certificates)
    {
        foreach (var certificate in certificates ?? [])
        {
            certificate.Dispose();
        }
    }

    private static KmsEndpoint Open(Uri address, KmsClientOptions options, X509Certificate2Collection? ca, BearerToken? token)
    {
        var ssl = new SslClientAuthenticationOptions { EnabledSslProtocols = SslProtocols.Tls13 };
        if (options.ClientCertificate is { } clientCertificate)
        {
            ssl.ClientCertificates = [clientCertificate];
        }

        if (ca is not null)
        {
            ssl.CertificateChainPolicy = new X509ChainPolicy
            {
                TrustMode = X509ChainTrustMode.CustomRootTrust,
                RevocationMode = X509RevocationMode.NoCheck,
            };
            ssl.CertificateChainPolicy.CustomTrustStore.AddRange(ca);
        }

        var halfDeadline = options.CallTimeout / 2;
        var handler = new SocketsHttpHandler
        {
            SslOptions = ssl,
            EnableMultipleHttp2Connections = true,
            PooledConnectionIdleTimeout = TimeSpan.FromMinutes(5),
            ConnectTimeout = halfDeadline < MaxConnectTimeout ? (halfDeadline > TimeSpan.Zero ? halfDeadline : TimeSpan.FromTicks(1)) : MaxConnectTimeout,
        };

        // An HttpClient, not a handler: given a handler, the channel runs its own subchannel
        // that reconnects to a dead address in the background, forever. Here the failover
        // layer decides when an endpoint is tried, so connections are made only for calls
        // and health probes.
        var channel = GrpcChannel.ForAddress(address, new GrpcChannelOptions
        {
            HttpClient = new HttpClient(handler) { Timeout = Timeout.InfiniteTimeSpan },
            DisposeHttpClient = true,
        });
        var probes = channel.CreateCallInvoker();
        var calls = token is null ? probes : probes.Intercept(metadata => WithBearer(metadata, token.Current));
        return new KmsEndpoint(address, calls.Intercept([.. options.Interceptors]), probes, channel);
    }

    // A copy: the interceptor is handed the caller's own headers, and every attempt of a
    // retried call passes here again.
    // The header entry is made once per token (its key normalised, its value built), shared by the endpoints.
    private static Metadata WithBearer(Metadata headers, Metadata.Entry bearer)
    {
        var copy = new Metadata();
        foreach (var entry in headers)
        {
            copy.Add(entry);
        }

        copy.Add(bearer);
        return copy;
    }

    // The deadline comes from the invoker: every stub shares it.
    private static CallOptions Options(CancellationToken cancellationToken) => new(cancellationToken: cancellationToken);

    private static async IAsyncEnumerable<T> PagesAsync<T>(
        Func<string, CancellationToken, Task<(IEnumerable<T> Items, string NextPageToken)>> fetch,
        [EnumeratorCancellation] CancellationToken cancellationToken)
    {
        var token = "";
        do
        {
            var (items, next) = await fetch(token, cancellationToken).ConfigureAwait(false);
            foreach (var item in items)
            {
                yield return item;
            }

            token = next;
        }
        while (token.Length > 0);
    }

    private static void AddAll(Google.Protobuf.Collections.MapField<string, string> target, IReadOnlyDictionary<string, string>? entries)
    {
        foreach (var (key, value) in entries ?? new Dictionary<string, string>())
        {
            target[key] = value;
        }
    }
}
