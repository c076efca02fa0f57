using System.Net.Security;
using System.Runtime.CompilerServices;
using System.Security.Authentication;
using System.Security.Cryptography.X509Certificates;
using Google.Protobuf;
using Grpc.Core;
using Grpc.Core.Interceptors;
using Grpc.Net.Client;
using Kms.Contracts.V1;

namespace Kms.Client;

/// <summary>
/// Typed, async client of kms.v1 over gRPC with TLS 1.3. Thread-safe; create one per
/// process and reuse it (it owns one HTTP/2 connection pool).
/// </summary>
/// <remarks>
/// Failures surface as <see cref="RpcException"/> with the server's status: INVALID_ARGUMENT
/// (a field; for ciphertexts the opaque "decryption failed"), NOT_FOUND, FAILED_PRECONDITION,
/// UNAUTHENTICATED, PERMISSION_DENIED, RESOURCE_EXHAUSTED (a tenant quota: wait for the
/// RetryInfo delay), UNAVAILABLE (retryable). Secrets returned (<see cref="DataKey"/>, <see cref="DecryptedData"/>)
/// are zeroed on dispose.
/// </remarks>
public sealed class KmsClient : IDisposable
{
    private readonly GrpcChannel _channel;
    private readonly KeyManagementService.KeyManagementServiceClient _stub;
    private readonly TimeSpan _timeout;
    private readonly X509Certificate2? _ownedCa;

    /// <summary>Connects to <see cref="KmsClientOptions.Endpoint"/>, trusting the configured CA.</summary>
    public KmsClient(KmsClientOptions options)
    {
        ArgumentNullException.ThrowIfNull(options);
        if (options.Endpoint.Scheme != Uri.UriSchemeHttps)
        {
            throw new ArgumentException("the KMS endpoint must be https", nameof(options));
        }

        var ca = options.CaCertificate;
        if (ca is null && options.CaCertificatePath is { } path)
        {
            ca = _ownedCa = X509Certificate2.CreateFromPem(File.ReadAllText(path));
        }

        var token = options.ApiToken ?? (options.ApiTokenPath is { } tokenPath ? File.ReadAllText(tokenPath).Trim() : null);
        if (token is not null && options.ClientCertificate is not null)
        {
            throw new ArgumentException("use an API token or a client certificate, not both: the server refuses calls that carry both", nameof(options));
        }

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
                CustomTrustStore = { ca },
            };
        }

        var handler = new SocketsHttpHandler
        {
            SslOptions = ssl,
            EnableMultipleHttp2Connections = true,
            PooledConnectionIdleTimeout = TimeSpan.FromMinutes(5),
        };
        _channel = GrpcChannel.ForAddress(options.Endpoint, new GrpcChannelOptions { HttpHandler = handler, DisposeHttpClient = true });
        var invoker = token is null
            ? _channel.CreateCallInvoker()
            : _channel.Intercept(metadata =>
            {
                metadata.Add("authorization", "Bearer " + token);
                return metadata;
            });
        _stub = new KeyManagementService.KeyManagementServiceClient(invoker);
        Access = new AccessManagementService.AccessManagementServiceClient(invoker);
        Audit = new AuditService.AuditServiceClient(invoker);
        _timeout = options.CallTimeout;
    }

    /// <summary>The generated stub, for calls this wrapper does not cover yet.</summary>
    public KeyManagementService.KeyManagementServiceClient Raw => _stub;

    /// <summary>The access-management stub (tenants, principals, tokens, role bindings), with this client's credential.</summary>
    public AccessManagementService.AccessManagementServiceClient Access { get; }

    /// <summary>The audit log (auditors, security officers): list, checkpoint, signing key, export.</summary>
    public AuditService.AuditServiceClient Audit { get; }

    /// <summary>
    /// Writes the audit export (JSON lines) to <paramref name="destination"/>, for
    /// <see cref="Audit.AuditVerifier"/> or the CLI to check offline.
    /// </summary>
    public async Task ExportAuditAsync(TextWriter destination, long fromSequence = 0, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(destination);
        using var call = Audit.ExportAudit(new ExportAuditRequest { FromSequence = fromSequence }, cancellationToken: cancellationToken);
        while (await call.ResponseStream.MoveNext(cancellationToken))
        {
            foreach (var line in call.ResponseStream.Current.Lines)
            {
                await destination.WriteLineAsync(line.AsMemory(), cancellationToken);
            }
        }
    }

    /// <summary>
    /// Creates a key. A <paramref name="requestId"/> is generated when none is given, so a
    /// retry of this call inside the client is applied once.
    /// </summary>
    public async Task<Key> CreateKeyAsync(
        string parent,
        string keyId,
        KeyPurpose purpose = KeyPurpose.EncryptDecrypt,
        IReadOnlyDictionary<string, string>? labels = null,
        string? requestId = null,
        CancellationToken cancellationToken = default)
    {
        var key = new Key { Purpose = purpose };
        AddAll(key.Labels, labels);

        var response = await _stub.CreateKeyAsync(
            new CreateKeyRequest { Parent = parent, KeyId = keyId, Key = key, RequestId = requestId ?? Guid.NewGuid().ToString() },
            Options(cancellationToken)).ConfigureAwait(false);
        return response.Key;
    }

    /// <summary>A key's metadata.</summary>
    public async Task<Key> GetKeyAsync(string name, CancellationToken cancellationToken = default) =>
        (await _stub.GetKeyAsync(new GetKeyRequest { Name = name }, Options(cancellationToken)).ConfigureAwait(false)).Key;

    /// <summary>Every key of a tenant, fetched page by page as the enumeration proceeds.</summary>
    public async IAsyncEnumerable<Key> ListKeysAsync(string parent, int pageSize = 0, [EnumeratorCancellation] CancellationToken cancellationToken = default)
    {
        var token = "";
        do
        {
            var page = await _stub.ListKeysAsync(
                new ListKeysRequest { Parent = parent, PageSize = pageSize, PageToken = token },
                Options(cancellationToken)).ConfigureAwait(false);
            foreach (var key in page.Keys)
            {
                yield return key;
            }

            token = page.NextPageToken;
        }
        while (token.Length > 0);
    }

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
        (await _stub.RotateKeyAsync(new RotateKeyRequest { Name = keyName, RequestId = requestId ?? Guid.NewGuid().ToString() }, Options(cancellationToken)).ConfigureAwait(false)).Key;

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

    /// <summary>Closes the connections.</summary>
    public void Dispose()
    {
        _channel.Dispose();
        _ownedCa?.Dispose();
    }

    private CallOptions Options(CancellationToken cancellationToken) =>
        new(deadline: DateTime.UtcNow + _timeout, cancellationToken: cancellationToken);

    private static void AddAll(Google.Protobuf.Collections.MapField<string, string> target, IReadOnlyDictionary<string, string>? entries)
    {
        foreach (var (key, value) in entries ?? new Dictionary<string, string>())
        {
            target[key] = value;
        }
    }
}
