using System.Net.Security;
using System.Net.Sockets;
using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;
using Grpc.Core;
using Kms.Client;
using Kms.Contracts.V1;
using Kms.Testing;

namespace Kms.Server.Tests;

/// <summary>
/// mTLS on the real server: client certificates from the configured CA authenticate their
/// principal (SPIFFE URI SAN, else subject CN); untrusted, expired, revoked (CRL) and
/// non-client certificates are UNAUTHENTICATED; a certificate and a token together are
/// refused; client CA bundle, CRL and server certificate are reloaded without a restart.
/// </summary>
public sealed class MutualTlsTests : IAsyncLifetime, IDisposable
{
    private readonly TestPki _pki = new();
    private readonly string _dir = Directory.CreateTempSubdirectory("kms-mtls-").FullName;
    private KmsTestServer _server = null!;

    private string CrlPath => Path.Combine(_dir, "clients.crl");

    public async Task InitializeAsync()
    {
        _pki.WriteCa(Path.Combine(_dir, "client-ca.crt"));
        _pki.WriteCrl(CrlPath);

        // No credential cache: the CRL reload is visible on the next call.
        _server = await KmsTestServer.StartAsync(null, null, "dev", (Action<Microsoft.Extensions.DependencyInjection.IServiceCollection>?)null,
            $"--Kms:ClientCaPath={Path.Combine(_dir, "client-ca.crt")}", $"--Kms:ClientCrlPath={CrlPath}", "--Kms:CredentialCacheTime=00:00:00");
        using var admin = _server.DeploymentAdmin();
        foreach (var name in new[] { "spiffe:spiffe://kms.test/payments", "cn:alice" })
        {
            await admin.Access.CreatePrincipalAsync(new CreatePrincipalRequest { Name = name, Tenant = "tenants/dev" });
            await admin.Access.SetRoleBindingAsync(new SetRoleBindingRequest { Principal = name, Role = "key-user", Tenant = "tenants/dev" });
        }
    }

    public async Task DisposeAsync() => await _server.DisposeAsync();

    [Theory]
    [InlineData("C=US, O=payments")]
    [InlineData("OU=admin")]
    [InlineData("L=city")]
    [InlineData("CN=alice, CN=bob")]
    public void PrincipalOf_SubjectWithoutExactlyOneCommonName_NoPrincipal(string subject)
    {
        // .NET's "simple name" of a subject without a CN is another attribute (O, OU, L, C …).
        using var key = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        using var certificate = new CertificateRequest(subject, key, HashAlgorithmName.SHA256).CreateSelfSigned(DateTimeOffset.UtcNow.AddMinutes(-1), DateTimeOffset.UtcNow.AddHours(1));
        Assert.Null(Kms.Server.Security.ClientCertificateValidator.PrincipalOf(certificate));
    }

    [Fact]
    public void PrincipalOf_SpiffeIdThatIsNoValidName_NoPrincipal_NotItsCommonName()
    {
        // A SPIFFE ID longer than a principal name may be: no spiffe: principal, and its CN is not
        // taken instead (a certificate meant for a workload never authenticates as cn:alice).
        using var certificate = _pki.Issue("alice", "spiffe://kms.test/" + new string('a', 2100));
        Assert.Null(Kms.Server.Security.ClientCertificateValidator.PrincipalOf(certificate));
    }

    [Fact]
    public void PrincipalOf_OneCommonNameAmongOtherAttributes_ThatName()
    {
        using var key = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        using var certificate = new CertificateRequest("C=US, O=acme, CN=alice", key, HashAlgorithmName.SHA256).CreateSelfSigned(DateTimeOffset.UtcNow.AddMinutes(-1), DateTimeOffset.UtcNow.AddHours(1));
        Assert.Equal(Kms.Core.Access.PrincipalName.CommonName("alice"), Kms.Server.Security.ClientCertificateValidator.PrincipalOf(certificate));
    }

    [Theory]
    [InlineData(0x0C, "alice\nINFO forged log line")] // UTF8String with a newline
    [InlineData(0x0C, "ali\0ce")] // a NUL: PostgreSQL refuses it in the audit chain
    [InlineData(0x1E, "bob\u0007")] // BMPString with a control character (.NET refuses a certificate with a lone surrogate in one)
    [InlineData(0x0C, "")]
    [InlineData(0x0C, "Rene\u0301")] // decomposed: shown as cn:Ren\u00e9, another principal
    [InlineData(0x0C, "al\u200Bice")] // shown as cn:alice
    [InlineData(0x0C, "p\u0430yments")] // a Cyrillic "\u0430" among Latin letters: shown as cn:payments
    [InlineData(0x0C, "\u03A1ayments")] // a Greek capital rho: shown as cn:Payments
    public void PrincipalOf_CommonNameThatIsNoValidName_NoPrincipal(byte stringTag, string commonName)
    {
        // The subject written byte by byte: .NET's builders would refuse or replace these characters.
        var value = stringTag == 0x1E
            ? System.Text.Encoding.BigEndianUnicode.GetBytes(commonName)
            : System.Text.Encoding.UTF8.GetBytes(commonName);
        var writer = new System.Formats.Asn1.AsnWriter(System.Formats.Asn1.AsnEncodingRules.DER);
        using (writer.PushSequence())
        using (writer.PushSetOf())
        using (writer.PushSequence())
        {
            writer.WriteObjectIdentifier("2.5.4.3");
            writer.WriteEncodedValue([stringTag, (byte)value.Length, .. value]);
        }

        using var key = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        using var certificate = new CertificateRequest(new X500DistinguishedName(writer.Encode()), key, HashAlgorithmName.SHA256)
            .CreateSelfSigned(DateTimeOffset.UtcNow.AddMinutes(-1), DateTimeOffset.UtcNow.AddHours(1));
        Assert.Null(Kms.Server.Security.ClientCertificateValidator.PrincipalOf(certificate));
    }

    [Fact]
    public void PrincipalOf_SpiffeIdLongerThanAnyName_NoPrincipal_NotItsCommonName()
    {
        using var key = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        var request = new CertificateRequest("CN=alice", key, HashAlgorithmName.SHA256);
        var san = new SubjectAlternativeNameBuilder();
        san.AddUri(new Uri("spiffe://kms.test/" + new string('a', 2100)));
        request.CertificateExtensions.Add(san.Build());
        using var certificate = request.CreateSelfSigned(DateTimeOffset.UtcNow.AddMinutes(-1), DateTimeOffset.UtcNow.AddHours(1));
        Assert.Null(Kms.Server.Security.ClientCertificateValidator.PrincipalOf(certificate));
    }

    public void Dispose()
    {
        _pki.Dispose();
        Directory.Delete(_dir, recursive: true);
    }

    [Fact]
    public async Task SpiffeCertificate_AuthenticatesItsPrincipal()
    {
        using var certificate = _pki.Issue("payments-pod-7", "spiffe://kms.test/payments");
        Assert.Equal(StatusCode.OK, await GenerateRandomAsync(certificate));

        // The URI SAN wins over the CN: this certificate is not cn:payments-pod-7.
        using var client = Client(certificate);
        var denied = await Assert.ThrowsAsync<RpcException>(() => client.CreateKeyAsync("tenants/dev", "mtls-key"));
        Assert.Equal(StatusCode.PermissionDenied, denied.StatusCode);
        Assert.Contains("spiffe:spiffe://kms.test/payments", denied.Status.Detail, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData("spiffe://kms.test/payments", "spiffe://kms.test/other")]
    [InlineData("spiffe://kms.test/other", "spiffe://kms.test/payments")]
    [InlineData("spiffe://kms.test/payments", "https://kms.test/payments")]
    public async Task CertificateWithASpiffeIdAndAnotherUriSan_NoSvid_Unauthenticated_NoIdentityChosen_Logged(string first, string second)
    {
        // An X.509-SVID holds exactly one URI SAN. Before, the first SPIFFE ID was the principal
        // (with spiffe://kms.test/payments first, the certificate was the registered key-user).
        using var certificate = _pki.Issue("alice", first, moreUris: [second]);
        Assert.Null(Kms.Server.Security.ClientCertificateValidator.PrincipalOf(certificate));

        Assert.Equal(StatusCode.Unauthenticated, await GenerateRandomAsync(certificate));
        var logged = Assert.Single(_server.Logs.Events, e => e.Contains("an X.509-SVID holds exactly one URI SAN", StringComparison.Ordinal));
        Assert.StartsWith("Warning client certificate ", logged, StringComparison.Ordinal);
        Assert.Contains(certificate.SerialNumber, logged, StringComparison.Ordinal);
        Assert.Contains("it carries 2 URI SANs", logged, StringComparison.Ordinal);

        // Its CN is not taken instead (cn:alice is a registered key-user too).
        using var alice = _pki.Issue("alice");
        Assert.Equal(StatusCode.OK, await GenerateRandomAsync(alice));
    }

    [Fact]
    public async Task CommonNameCertificate_AuthenticatesCnPrincipal_NeverATokenPrincipal()
    {
        using var alice = _pki.Issue("alice");
        Assert.Equal(StatusCode.OK, await GenerateRandomAsync(alice));

        // A CN that looks like another kind of principal is still a cn: principal (unregistered: no roles).
        using var impostor = _pki.Issue("token:developer");
        Assert.Equal(StatusCode.PermissionDenied, await GenerateRandomAsync(impostor));
    }

    [Fact]
    public async Task UntrustedCertificate_Unauthenticated()
    {
        using var otherCa = new TestPki("Somebody Else's CA");
        using var certificate = otherCa.Issue("alice", "spiffe://kms.test/payments");
        Assert.Equal(StatusCode.Unauthenticated, await GenerateRandomAsync(certificate));
    }

    [Fact]
    public async Task ExpiredCertificate_Unauthenticated()
    {
        using var certificate = _pki.Issue("alice", notBefore: DateTimeOffset.UtcNow.AddDays(-10), notAfter: DateTimeOffset.UtcNow.AddDays(-1));
        Assert.Equal(StatusCode.Unauthenticated, await GenerateRandomAsync(certificate));
    }

    [Theory]
    [InlineData(TestPki.ServerAuth)]
    [InlineData(null)]
    public async Task CertificateWithoutClientAuthUsage_Unauthenticated(string? usage)
    {
        using var certificate = _pki.Issue("alice", usage: usage);
        Assert.Equal(StatusCode.Unauthenticated, await GenerateRandomAsync(certificate));
    }

    [Fact]
    public async Task RevokedCertificate_RefusedOnceTheCrlIsReplaced_WithoutARestart()
    {
        using var certificate = _pki.Issue("alice");
        Assert.Equal(StatusCode.OK, await GenerateRandomAsync(certificate));

        _pki.Revoke(certificate);
        _pki.WriteCrl(CrlPath);

        // The files are checked at most once a second.
        var status = StatusCode.OK;
        for (var i = 0; i < 30 && status == StatusCode.OK; i++)
        {
            await Task.Delay(200);
            status = await GenerateRandomAsync(certificate);
        }

        Assert.Equal(StatusCode.Unauthenticated, status);
        using var stillGood = _pki.Issue("alice");
        Assert.Equal(StatusCode.OK, await GenerateRandomAsync(stillGood));
    }

    [Fact]
    public async Task ClientCa_Rotated_NewCaTrustedAndOldDropped_WithoutARestart()
    {
        using var next = new TestPki("Kms Next Client CA");
        using var fromNext = next.Issue("alice");
        using var fromOld = _pki.Issue("alice");
        Assert.Equal((StatusCode.OK, StatusCode.Unauthenticated), (await GenerateRandomAsync(fromOld), await GenerateRandomAsync(fromNext)));

        // Overlap: a CRL of each CA, then both CAs in the bundle (a CRL must be signed by a
        // configured CA: the file is replaced once the bundle has the new one).
        ReplaceCaBundle(_pki, next);
        WriteCrls(_pki, next);
        Assert.Equal(StatusCode.OK, await EventuallyAsync(fromNext, StatusCode.OK));
        Assert.Equal(StatusCode.OK, await GenerateRandomAsync(fromOld));

        // The old CA retired: its CRL goes first, then the CA.
        next.WriteCrl(CrlPath);
        ReplaceCaBundle(next);
        Assert.Equal(StatusCode.Unauthenticated, await EventuallyAsync(fromOld, StatusCode.Unauthenticated));
        Assert.Equal(StatusCode.OK, await GenerateRandomAsync(fromNext));
    }

    [Fact]
    public async Task CaWithoutACrlInTheFile_ItsCertificatesRefused_RevocationNeverLapsesForOneCa()
    {
        // Two CAs trusted, the CRL file holding only the new one's: a certificate the old CA
        // revoked must not pass for want of its CRL (neither may any other of that CA's).
        using var next = new TestPki("Kms Next Client CA");
        using var revoked = _pki.Issue("mallory");
        using var fromNext = next.Issue("alice");
        _pki.Revoke(revoked);
        _pki.WriteCrl(CrlPath);
        Assert.Equal(StatusCode.Unauthenticated, await EventuallyAsync(revoked, StatusCode.Unauthenticated));

        ReplaceCaBundle(_pki, next);
        next.WriteCrl(CrlPath);
        Assert.Equal(StatusCode.OK, await EventuallyAsync(fromNext, StatusCode.OK));
        Assert.Equal(StatusCode.Unauthenticated, await GenerateRandomAsync(revoked));
        Assert.Contains("the CRL file holds no CRL of that CA", _server.Logs.AllText, StringComparison.Ordinal);

        WriteCrls(_pki, next);
        Assert.Equal(StatusCode.OK, await EventuallyAsync(fromNext, StatusCode.OK));
        Assert.Equal(StatusCode.Unauthenticated, await GenerateRandomAsync(revoked));
    }

    [Fact]
    public async Task StaleCrl_EveryCertificateRefused_UntilAFreshOneIsInstalled()
    {
        using var alice = _pki.Issue("alice");
        Assert.Equal(StatusCode.OK, await GenerateRandomAsync(alice));

        _pki.WriteCrl(CrlPath, nextUpdate: DateTimeOffset.UtcNow.AddMinutes(-1));
        Assert.Equal(StatusCode.Unauthenticated, await EventuallyAsync(alice, StatusCode.Unauthenticated));
        Assert.Contains("every client certificate is refused until a fresh CRL is installed", _server.Logs.AllText, StringComparison.Ordinal);

        _pki.WriteCrl(CrlPath);
        Assert.Equal(StatusCode.OK, await EventuallyAsync(alice, StatusCode.OK));
    }

    [Fact]
    public async Task BadCrlReplacement_KeepsThePreviousCrl_AndSaysSo()
    {
        using var revoked = _pki.Issue("alice");
        _pki.Revoke(revoked);
        _pki.WriteCrl(CrlPath);
        Assert.Equal(StatusCode.Unauthenticated, await EventuallyAsync(revoked, StatusCode.Unauthenticated));

        // An empty file, then one signed by a CA we do not trust: neither turns revocation off.
        using var stranger = new TestPki("Somebody Else's CA");
        foreach (var replace in new Action[] { () => File.WriteAllText(CrlPath, ""), () => stranger.WriteCrl(CrlPath) })
        {
            replace();
            await Task.Delay(1500);
            Assert.Equal(StatusCode.Unauthenticated, await GenerateRandomAsync(revoked));
        }

        Assert.Contains("could not be reloaded", _server.Logs.AllText, StringComparison.Ordinal);
        using var good = _pki.Issue("alice");
        Assert.Equal(StatusCode.OK, await GenerateRandomAsync(good));
    }

    [Fact]
    public async Task CertificateAndToken_Together_Unauthenticated()
    {
        using var certificate = _pki.Issue("alice");
        using var channel = _server.CreateChannel(certificate);
        var e = await Assert.ThrowsAsync<RpcException>(async () => await new KeyManagementService.KeyManagementServiceClient(channel)
            .GenerateRandomAsync(new GenerateRandomRequest { LengthBytes = 8 }, KmsTestServer.Bearer(_server.KeyUserToken)));
        Assert.Equal(StatusCode.Unauthenticated, e.StatusCode);
        Assert.Throws<ArgumentException>(() => new KmsClient(new KmsClientOptions { Endpoint = _server.Address, ApiToken = _server.KeyUserToken, ClientCertificate = certificate }));
    }

    [Fact]
    public async Task ServerCertificate_ReplacedOnDisk_ServedWithoutARestart()
    {
        var before = await ServerCertificateThumbprintAsync();
        using (var key = ECDsa.Create(ECCurve.NamedCurves.nistP256))
        {
            var request = new CertificateRequest("CN=127.0.0.1", key, HashAlgorithmName.SHA256);
            var san = new SubjectAlternativeNameBuilder();
            san.AddIpAddress(System.Net.IPAddress.Loopback);
            request.CertificateExtensions.Add(san.Build());
            using var renewed = request.CreateSelfSigned(DateTimeOffset.UtcNow.AddMinutes(-5), DateTimeOffset.UtcNow.AddDays(1));
            File.WriteAllText(Path.Combine(_server.DataDir, "tls", "server.key"), key.ExportPkcs8PrivateKeyPem());
            File.WriteAllText(Path.Combine(_server.DataDir, "tls", "server.crt"), renewed.ExportCertificatePem());
        }

        var after = before;
        for (var i = 0; i < 30 && after == before; i++)
        {
            await Task.Delay(200);
            after = await ServerCertificateThumbprintAsync();
        }

        Assert.NotEqual(before, after);
    }

    private KmsClient Client(X509Certificate2 certificate) =>
        new(new KmsClientOptions { Endpoint = _server.Address, CaCertificatePath = _server.CaCertificatePath, ClientCertificate = certificate });

    // One file with a CRL of each CA.
    private void WriteCrls(params TestPki[] cas)
    {
        var text = string.Concat(cas.Select(ca => File.ReadAllText(ca.WriteCrl(CrlPath + "." + Guid.NewGuid().ToString("N")))));
        File.WriteAllText(CrlPath + ".tmp", text);
        File.Move(CrlPath + ".tmp", CrlPath, overwrite: true);
    }

    private void ReplaceCaBundle(params TestPki[] cas)
    {
        var path = Path.Combine(_dir, "client-ca.crt");
        File.WriteAllText(path + ".tmp", string.Concat(cas.Select(ca => ca.Certificate.ExportCertificatePem() + "\n")));
        File.Move(path + ".tmp", path, overwrite: true);
    }

    // The files are checked at most once a second.
    private async Task<StatusCode> EventuallyAsync(X509Certificate2 certificate, StatusCode expected)
    {
        var status = await GenerateRandomAsync(certificate);
        for (var i = 0; i < 30 && status != expected; i++)
        {
            await Task.Delay(200);
            status = await GenerateRandomAsync(certificate);
        }

        return status;
    }

    private async Task<StatusCode> GenerateRandomAsync(X509Certificate2 certificate)
    {
        // A fresh connection per call: the certificate is presented at the handshake.
        using var client = Client(certificate);
        try
        {
            await client.GenerateRandomAsync(8);
            return StatusCode.OK;
        }
        catch (RpcException e)
        {
            return e.StatusCode;
        }
    }

    private async Task<string> ServerCertificateThumbprintAsync()
    {
        using var tcp = new TcpClient();
        await tcp.ConnectAsync(_server.Address.Host, _server.Address.Port);
        string? thumbprint = null;
        await using var tls = new SslStream(tcp.GetStream(), false, (_, certificate, _, _) =>
        {
            // Only the thumbprint matters here (the renewed certificate is self-signed).
            thumbprint = certificate?.GetCertHashString(HashAlgorithmName.SHA256);
            return thumbprint is not null;
        });
        await tls.AuthenticateAsClientAsync(new SslClientAuthenticationOptions
        {
            TargetHost = "127.0.0.1",
            ApplicationProtocols = [SslApplicationProtocol.Http2],
        });
        return thumbprint!;
    }
}
