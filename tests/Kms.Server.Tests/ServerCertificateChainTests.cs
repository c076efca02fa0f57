using System.Diagnostics;
using System.Globalization;
using System.Net;
using System.Net.Security;
using System.Net.Sockets;
using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;
using Kms.Client;
using Kms.Server.Health;
using Kms.Server.Hosting;
using Kms.Testing;

namespace Kms.Server.Tests;

/// <summary>
/// A server certificate issued by an intermediate CA (a corporate PKI): the server sends the
/// chain of <c>Kms:TlsCertificatePath</c> — its certificate, then the intermediates — so that
/// clients trusting only the root connect; a file in another order is refused at start.
/// </summary>
public sealed class ServerCertificateChainTests(ServerCertificateChainTests.ChainServer fixture) : IClassFixture<ServerCertificateChainTests.ChainServer>
{
    [Fact]
    public async Task ChainFile_SdkTrustingOnlyTheRoot_CallsAnRpc()
    {
        using var client = new KmsClient(new KmsClientOptions { Endpoint = fixture.Server.Address, CaCertificatePath = fixture.Pki.RootPath, ApiToken = fixture.Server.DeveloperToken });

        Assert.Equal(8, (await client.GenerateRandomAsync(8)).Length);
    }

    [Fact]
    public async Task ChainFile_ServerSendsItsCertificateThenTheIntermediate()
    {
        var (sent, output) = await SentChainAsync(fixture.Server.Address, fixture.Pki.RootPath);

        Assert.Equal([fixture.Leaf.Thumbprint, fixture.Pki.Intermediate.Thumbprint], sent.Select(c => c.Thumbprint));
        Assert.Contains("Verify return code: 0 (ok)", output, StringComparison.Ordinal);
    }

    [Fact]
    public async Task ChainFile_HealthProbe_ComparesTheServersOwnCertificate_Serving()
    {
        using var output = new StringWriter();
        using var error = new StringWriter();
        var exitCode = await HealthProbe.RunAsync(
            [HealthProbe.Switch, $"--urls=https://127.0.0.1:{fixture.Server.Address.Port}", $"--Kms:TlsCertificatePath={fixture.ChainPath}"], output, error);

        Assert.True(exitCode == 0, error.ToString());
    }

    [Fact]
    public async Task ChainFile_RenewedWithTheRootAtTheEnd_NewChainServedWithoutARestart_RootNotSent()
    {
        using var pki = new ServerPki();
        var directory = Scratch.NewPath("kms-chain-");
        Directory.CreateDirectory(directory);
        var (chainPath, keyPath) = (Path.Combine(directory, "server.crt"), Path.Combine(directory, "server.key"));
        using var firstKey = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        using var first = pki.IssueLeaf(firstKey);
        ServerPki.Write(chainPath, keyPath, firstKey, first, pki.Intermediate);
        await using var server = await KmsTestServer.StartAsync(null, null, "dev", (Action<Microsoft.Extensions.DependencyInjection.IServiceCollection>?)null,
            $"--Kms:TlsCertificatePath={chainPath}", $"--Kms:TlsKeyPath={keyPath}");
        Assert.Equal(first.Thumbprint, await ServedLeafAsync(server.Address));

        using var renewedKey = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        using var renewed = pki.IssueLeaf(renewedKey);
        ServerPki.Write(chainPath, keyPath, renewedKey, renewed, pki.Intermediate, pki.Root);
        var served = first.Thumbprint;
        for (var i = 0; i < 30 && served != renewed.Thumbprint; i++)
        {
            await Task.Delay(200);
            served = await ServedLeafAsync(server.Address);
        }

        // The root ends the file and is not sent: a client must already hold it to trust it.
        var (sent, _) = await SentChainAsync(server.Address, pki.RootPath);
        Assert.Equal([renewed.Thumbprint, pki.Intermediate.Thumbprint], sent.Select(c => c.Thumbprint));
        using var client = new KmsClient(new KmsClientOptions { Endpoint = server.Address, CaCertificatePath = pki.RootPath, ApiToken = server.DeveloperToken });
        Assert.Equal(8, (await client.GenerateRandomAsync(8)).Length);
    }

    [Theory]
    [InlineData("intermediate,leaf", "is the key of certificate 2 (CN=127.0.0.1) of Kms:TlsCertificatePath")]
    [InlineData("leaf,root,intermediate", "certificate 2 (CN=Kms Test Root CA) is not the issuer of certificate 1 (CN=127.0.0.1)")]
    [InlineData("leaf,stranger", "certificate 2 (CN=Somebody Else's CA) is not the issuer of certificate 1 (CN=127.0.0.1)")]
    [InlineData("stranger", "is not a readable private key of the first certificate (CN=Somebody Else's CA)")]
    public async Task ChainFile_NotTheServersCertificateThenItsIssuers_RefusedAtStartWithTheReason(string order, string reason)
    {
        using var pki = new ServerPki();
        using var stranger = new TestPki("Somebody Else's CA");
        using var key = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        using var leaf = pki.IssueLeaf(key);
        var named = new Dictionary<string, X509Certificate2> { ["leaf"] = leaf, ["intermediate"] = pki.Intermediate, ["root"] = pki.Root, ["stranger"] = stranger.Certificate };
        var directory = Scratch.NewPath("kms-chain-");
        Directory.CreateDirectory(directory);
        var (chainPath, keyPath) = (Path.Combine(directory, "server.crt"), Path.Combine(directory, "server.key"));
        ServerPki.Write(chainPath, keyPath, key, [.. order.Split(',').Select(n => named[n])]);

        var e = await Assert.ThrowsAsync<InvalidOperationException>(() => KmsServerApp.BuildAsync(
            ["--dev", "--urls=https://127.0.0.1:0", $"--Kms:TlsCertificatePath={chainPath}", $"--Kms:TlsKeyPath={keyPath}", $"--Kms:DataDir={Scratch.NewPath("kms-never-")}"]));
        Assert.Contains(reason, e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task ServerCertificateWithoutTheServerAuthUsage_RefusedAtStart()
    {
        // Kestrel checks this when it picks the certificate itself; the server now hands the
        // handshake its chain, so it checks at start (and at each reload) instead.
        using var pki = new ServerPki();
        using var key = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        using var leaf = pki.IssueLeaf(key, TestPki.ClientAuth);
        var directory = Scratch.NewPath("kms-chain-");
        Directory.CreateDirectory(directory);
        var (chainPath, keyPath) = (Path.Combine(directory, "server.crt"), Path.Combine(directory, "server.key"));
        ServerPki.Write(chainPath, keyPath, key, leaf, pki.Intermediate);

        var e = await Assert.ThrowsAsync<InvalidOperationException>(() => KmsServerApp.BuildAsync(
            ["--dev", "--urls=https://127.0.0.1:0", $"--Kms:TlsCertificatePath={chainPath}", $"--Kms:TlsKeyPath={keyPath}", $"--Kms:DataDir={Scratch.NewPath("kms-never-")}"]));
        Assert.Contains("extended key usage without serverAuth", e.Message, StringComparison.Ordinal);
    }

    // What the server puts on the wire, as openssl s_client -showcerts prints it.
    private static async Task<(X509Certificate2Collection Sent, string Output)> SentChainAsync(Uri address, string caFile)
    {
        var start = new ProcessStartInfo("openssl") { RedirectStandardOutput = true, RedirectStandardError = true, RedirectStandardInput = true };
        foreach (var argument in new[] { "s_client", "-connect", $"127.0.0.1:{address.Port.ToString(CultureInfo.InvariantCulture)}", "-tls1_3", "-alpn", "h2", "-showcerts", "-CAfile", caFile })
        {
            start.ArgumentList.Add(argument);
        }

        using var process = Process.Start(start) ?? throw new InvalidOperationException("openssl is required by this test (apt-get install -y openssl)");
        process.StandardInput.Close();
        var output = process.StandardOutput.ReadToEndAsync();
        var error = process.StandardError.ReadToEndAsync();
        await process.WaitForExitAsync().WaitAsync(TimeSpan.FromSeconds(30));
        var sent = new X509Certificate2Collection();
        sent.ImportFromPem(await output);
        return (sent, await output + await error);
    }

    private static async Task<string> ServedLeafAsync(Uri address)
    {
        using var tcp = new TcpClient();
        await tcp.ConnectAsync(address.Host, address.Port);
        string? thumbprint = null;
        await using var tls = new SslStream(tcp.GetStream(), false, (_, certificate, _, _) =>
        {
            thumbprint = certificate?.GetCertHashString();
            return thumbprint is not null;
        });
        await tls.AuthenticateAsClientAsync(new SslClientAuthenticationOptions { TargetHost = "127.0.0.1", ApplicationProtocols = [SslApplicationProtocol.Http2] });
        return thumbprint!;
    }

    /// <summary>A server started on a certificate issued by an intermediate CA, with a chain file of the two.</summary>
    public sealed class ChainServer : IAsyncLifetime
    {
        private readonly ECDsa _key = ECDsa.Create(ECCurve.NamedCurves.nistP256);

        public ServerPki Pki { get; } = new();

        public X509Certificate2 Leaf { get; private set; } = null!;

        public string ChainPath { get; private set; } = null!;

        public KmsTestServer Server { get; private set; } = null!;

        public async Task InitializeAsync()
        {
            var directory = Scratch.NewPath("kms-chain-");
            Directory.CreateDirectory(directory);
            ChainPath = Path.Combine(directory, "server.crt");
            var keyPath = Path.Combine(directory, "server.key");
            Leaf = Pki.IssueLeaf(_key);
            ServerPki.Write(ChainPath, keyPath, _key, Leaf, Pki.Intermediate);
            Server = await KmsTestServer.StartAsync(null, null, "dev", (Action<Microsoft.Extensions.DependencyInjection.IServiceCollection>?)null,
                $"--Kms:TlsCertificatePath={ChainPath}", $"--Kms:TlsKeyPath={keyPath}");
        }

        public async Task DisposeAsync()
        {
            await Server.DisposeAsync();
            Leaf.Dispose();
            _key.Dispose();
            Pki.Dispose();
        }
    }

    /// <summary>Root CA → intermediate CA → server certificates for 127.0.0.1, made at run time.</summary>
    public sealed class ServerPki : IDisposable
    {
        private readonly ECDsa _rootKey = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        private readonly ECDsa _intermediateKey = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        private readonly X509Certificate2 _intermediateWithKey;

        public ServerPki()
        {
            var now = DateTimeOffset.UtcNow;
            var root = CaRequest("CN=Kms Test Root CA", _rootKey);
            Root = root.CreateSelfSigned(now.AddDays(-1), now.AddYears(5));
            var intermediate = CaRequest("CN=Kms Test Intermediate CA", _intermediateKey);
            intermediate.CertificateExtensions.Add(X509AuthorityKeyIdentifierExtension.CreateFromCertificate(Root, true, false));
            Intermediate = intermediate.Create(Root, now.AddDays(-1), now.AddYears(2), Serial());
            _intermediateWithKey = Intermediate.CopyWithPrivateKey(_intermediateKey);
            RootPath = Scratch.NewPath("kms-root-", ".crt");
            File.WriteAllText(RootPath, Root.ExportCertificatePem() + "\n");
        }

        public X509Certificate2 Root { get; }

        public X509Certificate2 Intermediate { get; }

        /// <summary>A PEM file holding the root only: what a client trusts.</summary>
        public string RootPath { get; }

        /// <summary>A server certificate for 127.0.0.1 and <paramref name="key"/>, issued by the intermediate.</summary>
        public X509Certificate2 IssueLeaf(ECDsa key, string usage = TestPki.ServerAuth)
        {
            var request = new CertificateRequest("CN=127.0.0.1", key, HashAlgorithmName.SHA256);
            var names = new SubjectAlternativeNameBuilder();
            names.AddIpAddress(IPAddress.Loopback);
            names.AddDnsName("localhost");
            request.CertificateExtensions.Add(names.Build());
            request.CertificateExtensions.Add(new X509BasicConstraintsExtension(false, false, 0, true));
            request.CertificateExtensions.Add(new X509KeyUsageExtension(X509KeyUsageFlags.DigitalSignature, true));
            request.CertificateExtensions.Add(new X509EnhancedKeyUsageExtension([new Oid(usage)], false));
            request.CertificateExtensions.Add(X509AuthorityKeyIdentifierExtension.CreateFromCertificate(Intermediate, true, false));
            var now = DateTimeOffset.UtcNow;
            return request.Create(_intermediateWithKey, now.AddMinutes(-5), now.AddDays(30), Serial());
        }

        /// <summary>Writes the key and the certificates, in the order given, as the server reads them.</summary>
        public static void Write(string chainPath, string keyPath, ECDsa key, params X509Certificate2[] chain)
        {
            File.WriteAllText(keyPath, key.ExportPkcs8PrivateKeyPem());
            File.WriteAllText(chainPath + ".tmp", string.Concat(chain.Select(c => c.ExportCertificatePem() + "\n")));
            File.Move(chainPath + ".tmp", chainPath, overwrite: true);
        }

        public void Dispose()
        {
            _intermediateWithKey.Dispose();
            Intermediate.Dispose();
            Root.Dispose();
            _intermediateKey.Dispose();
            _rootKey.Dispose();
        }

        private static CertificateRequest CaRequest(string subject, ECDsa key)
        {
            var request = new CertificateRequest(subject, key, HashAlgorithmName.SHA256);
            request.CertificateExtensions.Add(new X509BasicConstraintsExtension(true, false, 0, true));
            request.CertificateExtensions.Add(new X509KeyUsageExtension(X509KeyUsageFlags.KeyCertSign | X509KeyUsageFlags.CrlSign, true));
            request.CertificateExtensions.Add(new X509SubjectKeyIdentifierExtension(request.PublicKey, false));
            return request;
        }

        private static byte[] Serial()
        {
            var serial = RandomNumberGenerator.GetBytes(12);
            serial[0] &= 0x7F;
            return serial;
        }
    }
}
