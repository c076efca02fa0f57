using System.Net.Sockets;
using System.Security.Cryptography.X509Certificates;
using Grpc.Core;
using Grpc.Net.Client;
using Kms.Contracts.V1;
using Kms.Core.Ports;
using Kms.Server.Hosting;
using Kms.Testing;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.DependencyInjection.Extensions;
using Microsoft.Extensions.Time.Testing;

namespace Kms.Server.Tests;

/// <summary>
/// What the server remembers of an authenticated certificate caller (<c>Kms:CredentialCacheTime</c>)
/// never outlives the trust it was accepted under: a client certificate is presented once, at the
/// handshake of a connection that an HTTP/2 client keeps open, and a call on that connection after
/// the CRL revoked it, after its CA left the bundle, after the CRL's nextUpdate, or after its CA
/// certificate expired (before the client's own) is refused
/// (UNAUTHENTICATED) once the files are read again — not a whole cache time later. And the cache
/// time itself is bounded (0 to 5 minutes), refused at start otherwise.
/// </summary>
public sealed class CredentialCacheTests : IAsyncLifetime, IDisposable
{
    // The files are checked at most once a second (ReloadingFile).
    private static readonly TimeSpan FileWatchDelay = TimeSpan.FromSeconds(1);

    // The real time, to the second: certificates are presented by clients on the real clock.
    private static readonly DateTimeOffset Start = DateTimeOffset.FromUnixTimeSeconds(DateTimeOffset.UtcNow.ToUnixTimeSeconds());
    private readonly FakeTimeProvider _time = new(Start);
    private readonly TestPki _pki = new();
    private readonly string _dir = Directory.CreateTempSubdirectory("kms-credential-cache-").FullName;
    private KmsTestServer? _server;
    private int _connections;

    private string CaPath => Path.Combine(_dir, "client-ca.crt");

    private string CrlPath => Path.Combine(_dir, "clients.crl");

    public Task InitializeAsync() => Task.CompletedTask;

    public async Task DisposeAsync()
    {
        if (_server is not null)
        {
            await _server.DisposeAsync();
        }
    }

    public void Dispose()
    {
        _pki.Dispose();
        Directory.Delete(_dir, recursive: true);
    }

    [Fact]
    public async Task CrlReplaced_RevokesTheCertificateOfAnOpenChannel_NextCallOnItUnauthenticated()
    {
        await StartAsync(crl: true);
        using var alice = _pki.Issue("alice");
        using var channel = Channel(alice);
        Assert.Equal(StatusCode.OK, await GenerateRandomAsync(channel));
        Assert.Equal(StatusCode.OK, await GenerateRandomAsync(channel));

        _pki.Revoke(alice);
        _pki.WriteCrl(CrlPath);
        _time.Advance(FileWatchDelay);

        Assert.Equal(StatusCode.Unauthenticated, await GenerateRandomAsync(channel));
        Assert.Equal(1, _connections);

        // Only the revoked certificate: another of the same principal is served.
        using var current = _pki.Issue("alice");
        using var other = Channel(current);
        Assert.Equal(StatusCode.OK, await GenerateRandomAsync(other));
    }

    [Fact]
    public async Task ClientCaRemovedFromTheBundle_OpenChannelOfACertificateItIssued_NextCallOnItUnauthenticated()
    {
        await StartAsync(crl: false);
        using var next = new TestPki("Kms Next Client CA");
        using var fromOld = _pki.Issue("alice");
        using var fromNext = next.Issue("alice");
        using var oldChannel = Channel(fromOld);
        Assert.Equal(StatusCode.OK, await GenerateRandomAsync(oldChannel));

        next.WriteCa(CaPath + ".tmp");
        File.Move(CaPath + ".tmp", CaPath, overwrite: true);
        _time.Advance(FileWatchDelay);

        Assert.Equal(StatusCode.Unauthenticated, await GenerateRandomAsync(oldChannel));
        Assert.Equal(1, _connections);
        using var nextChannel = Channel(fromNext);
        Assert.Equal(StatusCode.OK, await GenerateRandomAsync(nextChannel));
    }

    [Fact]
    public async Task CrlPastItsNextUpdate_WhileTheCallerIsRemembered_NextCallOnTheOpenChannelUnauthenticated()
    {
        await StartAsync(crl: true, crlNextUpdate: Start.AddSeconds(10));
        using var alice = _pki.Issue("alice");
        using var channel = Channel(alice);
        Assert.Equal(StatusCode.OK, await GenerateRandomAsync(channel));

        // No file changed: the CRL the caller was accepted under has expired (fail closed).
        _time.Advance(TimeSpan.FromSeconds(11));

        Assert.Equal(StatusCode.Unauthenticated, await GenerateRandomAsync(channel));
        Assert.Contains("every client certificate is refused until a fresh CRL is installed", _server!.Logs.AllText, StringComparison.Ordinal);
    }

    [Fact]
    public async Task ClientCaExpiresBeforeTheCertificate_WhileTheCallerIsRemembered_NextCallOnTheOpenChannelUnauthenticated()
    {
        // A CA that ends in ten seconds, and a certificate it issued for thirty days (OpenSSL issues
        // one past its CA's end without a word). No file changes, the CRL is fresh for days.
        using var shortLived = new TestPki("Kms Short-Lived Client CA", Start.AddSeconds(10));
        await StartAsync(crl: true, pki: shortLived);
        using var alice = shortLived.Issue("alice", notAfter: Start.AddDays(30));
        using var channel = Channel(alice);
        Assert.Equal(StatusCode.OK, await GenerateRandomAsync(channel));

        _time.Advance(TimeSpan.FromSeconds(11));

        Assert.Equal(StatusCode.Unauthenticated, await GenerateRandomAsync(channel));
        Assert.Equal(1, _connections);
    }

    [Fact]
    public async Task TenantDeleted_ARememberedCertificateCallerOfIt_NextCallOnTheOpenChannelFailedPrecondition()
    {
        await StartAsync(crl: false);
        using var alice = _pki.Issue("alice");
        using var channel = Channel(alice);
        Assert.Equal(StatusCode.OK, await GenerateRandomAsync(channel));

        using (var admin = _server!.DeploymentAdmin())
        {
            await admin.Access.DeleteTenantAsync(new DeleteTenantRequest { Name = "tenants/dev" });
        }

        // The node that deleted forgets at once (the change feed cannot be read here, and the
        // cache time is five minutes).
        Assert.Equal(StatusCode.FailedPrecondition, await GenerateRandomAsync(channel));
        Assert.Equal(1, _connections);
    }

    [Theory]
    [InlineData("00:05:01")]
    [InlineData("01:00:00")]
    [InlineData("-00:00:01")]
    public async Task Build_CredentialCacheTimeOutsideZeroToFiveMinutes_RefusedBeforeTouchingTheHsm(string value)
    {
        var e = await Assert.ThrowsAsync<InvalidOperationException>(() => KmsServerApp.BuildAsync(
            ["--dev", "--urls=https://127.0.0.1:0", $"--Kms:CredentialCacheTime={value}", $"--Kms:DataDir={Scratch.NewPath("kms-never-")}"]));
        Assert.Contains("Kms:CredentialCacheTime", e.Message, StringComparison.Ordinal);
        Assert.Contains("00:05:00", e.Message, StringComparison.Ordinal);
    }

    // The largest cache time allowed, on a fake clock that moves only when the test says, and a
    // change feed that cannot be read: nothing but the client trust files can make the server
    // forget the caller within the test.
    private async Task StartAsync(bool crl, DateTimeOffset? crlNextUpdate = null, TestPki? pki = null)
    {
        pki ??= _pki;
        pki.WriteCa(CaPath);
        string[] args = ["--Kms:CredentialCacheTime=00:05:00", $"--Kms:ClientCaPath={CaPath}"];
        if (crl)
        {
            pki.WriteCrl(CrlPath, crlNextUpdate ?? Start.AddDays(7));
            args = [.. args, $"--Kms:ClientCrlPath={CrlPath}"];
        }

        _server = await KmsTestServer.StartAsync(null, null, "dev", Configure, args);
        using var admin = _server.DeploymentAdmin();
        await admin.Access.CreatePrincipalAsync(new CreatePrincipalRequest { Name = "cn:alice", Tenant = "tenants/dev" });
        await admin.Access.SetRoleBindingAsync(new SetRoleBindingRequest { Principal = "cn:alice", Role = "key-user", Tenant = "tenants/dev" });
    }

    private void Configure(IServiceCollection services)
    {
        services.Replace(ServiceDescriptor.Singleton<TimeProvider>(_time));
        services.Replace(ServiceDescriptor.Singleton<IChangeFeed>(provider => new UnreadableFeed((IChangeFeed)provider.GetRequiredService<IKeyStore>())));
    }

    // One channel, one HTTP/2 connection: the certificate is presented at its one handshake.
    private GrpcChannel Channel(X509Certificate2 certificate)
    {
        var ca = X509Certificate2.CreateFromPem(File.ReadAllText(_server!.CaCertificatePath));
        var handler = new SocketsHttpHandler
        {
            ConnectCallback = async (context, cancellationToken) =>
            {
                Interlocked.Increment(ref _connections);
                var socket = new Socket(SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };
                try
                {
                    await socket.ConnectAsync(context.DnsEndPoint, cancellationToken);
                    return new NetworkStream(socket, ownsSocket: true);
                }
                catch
                {
                    socket.Dispose();
                    throw;
                }
            },
        };
        handler.SslOptions.ClientCertificates = [certificate];
        handler.SslOptions.CertificateChainPolicy = new X509ChainPolicy
        {
            TrustMode = X509ChainTrustMode.CustomRootTrust,
            RevocationMode = X509RevocationMode.NoCheck,
            CustomTrustStore = { ca },
        };
        return GrpcChannel.ForAddress(_server.Address, new GrpcChannelOptions { HttpHandler = handler });
    }

    private static async Task<StatusCode> GenerateRandomAsync(GrpcChannel channel)
    {
        try
        {
            await new KeyManagementService.KeyManagementServiceClient(channel).GenerateRandomAsync(new GenerateRandomRequest { LengthBytes = 8 });
            return StatusCode.OK;
        }
        catch (RpcException e)
        {
            return e.StatusCode;
        }
    }

    /// <summary>A change feed that cannot be read (pruning still works): no poll forgets remembered callers.</summary>
    private sealed class UnreadableFeed(IChangeFeed inner) : IChangeFeed
    {
        public Task<IReadOnlyList<StoreChange>> ListChangesAsync(long afterSequence, int limit, CancellationToken cancellationToken) =>
            throw new IOException("the change feed cannot be read (test)");

        public Task<long> GetChangeHeadAsync(CancellationToken cancellationToken) =>
            throw new IOException("the change feed cannot be read (test)");

        public Task<int> PruneChangesAsync(DateTimeOffset before, CancellationToken cancellationToken) => inner.PruneChangesAsync(before, cancellationToken);
    }
}
