using System.Diagnostics;
using System.Net.Security;
using System.Security.Authentication;
using System.Security.Cryptography.X509Certificates;
using Grpc.Core;
using Grpc.Net.Client;
using Kms.Contracts.V1;
using Kms.Hsm;
using Kms.Server.Hosting;
using Kms.Testing;

namespace Kms.Server.Tests;

/// <summary>TLS 1.3 only, https only.</summary>
public sealed class TransportTests(ServerFixture fixture) : IClassFixture<ServerFixture>
{
    [Fact]
    public async Task Tls12OnlyDotNetClient_HandshakeRefused()
    {
        var handler = new SocketsHttpHandler();
        handler.SslOptions.EnabledSslProtocols = SslProtocols.Tls12;
        handler.SslOptions.CertificateChainPolicy = TrustDevCa();
        using var channel = GrpcChannel.ForAddress(fixture.Server.Address, new GrpcChannelOptions { HttpHandler = handler });
        var e = await Assert.ThrowsAsync<RpcException>(async () =>
            await new KeyManagementService.KeyManagementServiceClient(channel).GenerateRandomAsync(new GenerateRandomRequest { LengthBytes = 1 }));
        AssertHandshakeFailed(e);
    }

    [Fact]
    public async Task OpensslTls12_Refused_Tls13_Accepted()
    {
        var port = fixture.Server.Address.Port.ToString(System.Globalization.CultureInfo.InvariantCulture);
        var tls12 = await OpensslAsync("-connect", $"127.0.0.1:{port}", "-tls1_2");
        Assert.Contains("alert protocol version", tls12, StringComparison.Ordinal);

        var tls13 = await OpensslAsync("-connect", $"127.0.0.1:{port}", "-tls1_3", "-alpn", "h2", "-CAfile", fixture.Server.CaCertificatePath);
        Assert.Contains("TLSv1.3", tls13, StringComparison.Ordinal);
        Assert.Contains("Verify return code: 0 (ok)", tls13, StringComparison.Ordinal);
    }

    [Fact]
    public async Task ClientNotTrustingTheDevCa_Refused()
    {
        using var client = new Kms.Client.KmsClient(new Kms.Client.KmsClientOptions { Endpoint = fixture.Server.Address });
        var e = await Assert.ThrowsAsync<RpcException>(() => client.GenerateRandomAsync(1));
        AssertHandshakeFailed(e);
        Assert.Contains("certificate", e.Status.Detail, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData("http://127.0.0.1:8080")]
    [InlineData("https://127.0.0.1:8443;http://10.0.0.1:8080")]
    [InlineData("127.0.0.1:8443")]
    public void ListenAddresses_NotHttps_RefusedAtStartup(string urls)
    {
        Assert.Throws<InvalidOperationException>(() => ListenAddresses.Validate(urls));
    }

    // Every call but health needs a credential (AuthorizationMatrixTests), so the server may
    // listen beyond loopback; tests themselves only ever bind 127.0.0.1.
    [Theory]
    [InlineData(null)]
    [InlineData("https://127.0.0.1:0")]
    [InlineData("https://localhost:9443")]
    [InlineData("https://[::1]:9443;https://127.0.0.2:9443")]
    [InlineData("https://0.0.0.0:8443")]
    [InlineData("https://kms.example.com:8443")]
    public void ListenAddresses_Https_Accepted(string? urls)
    {
        Assert.NotEmpty(ListenAddresses.Validate(urls));
    }

    [Fact]
    public async Task Build_PlainHttpUrl_RefusesBeforeTouchingTheHsm()
    {
        var e = await Assert.ThrowsAsync<InvalidOperationException>(() => KmsServerApp.BuildAsync(["--dev", "--urls=http://127.0.0.1:0", $"--Kms:DataDir={Scratch.NewPath("kms-never-")}"]));
        Assert.Contains("not https", e.Message, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData("--Kestrel:Endpoints:Plain:Url=http://127.0.0.1:0")]
    [InlineData("--Kestrel:EndpointDefaults:Protocols=Http1AndHttp2")]
    [InlineData("--Kestrel:Certificates:Default:Path=/tmp/other.pem")]
    [InlineData("--kestrel:endpoints:Plain:Url=http://127.0.0.1:0")] // configuration keys have no case (KESTREL__ENDPOINTS__…)
    [InlineData("--KESTREL:ENDPOINTDEFAULTS:PROTOCOLS=Http1AndHttp2")]
    public async Task Build_KestrelEndpointConfiguration_RefusedBeforeTouchingTheHsm(string setting)
    {
        // Kestrel's own section would bind a cleartext or non-TLS-1.3 listener past --urls' checks.
        var e = await Assert.ThrowsAsync<InvalidOperationException>(() => KmsServerApp.BuildAsync(["--dev", "--urls=https://127.0.0.1:0", setting, $"--Kms:DataDir={Scratch.NewPath("kms-never-")}"]));
        Assert.Contains("--urls", e.Message, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData("--Kestrel:Limits:MaxConcurrentConnections=10")]
    [InlineData("--Kestrel:Limits:Http2:MaxStreamsPerConnection=1000")]
    [InlineData("--kestrel:limits:MaxRequestHeadersTotalSize=64")]
    [InlineData("--Kestrel:AddServerHeader=true")]
    public async Task Build_KestrelLimitsOrOtherKestrelSettings_RefusedNamingKmsTransport(string setting)
    {
        // This host never reads Kestrel:Limits (WebApplication binds only Kestrel's endpoints from its
        // section): such a setting, as Microsoft's docs show it, was silently without effect — a
        // server started with Kestrel:Limits:MaxConcurrentConnections=1 took three connections.
        var e = await Assert.ThrowsAsync<InvalidOperationException>(() => KmsServerApp.BuildAsync(["--dev", "--urls=https://127.0.0.1:0", setting, $"--Kms:DataDir={Scratch.NewPath("kms-never-")}"]));
        Assert.Contains("Kms:Transport:", e.Message, StringComparison.Ordinal);
        Assert.Contains("no effect", e.Message, StringComparison.Ordinal);
    }

    // grpc-dotnet reports a failed TLS handshake as INTERNAL "Error starting gRPC call".
    private static void AssertHandshakeFailed(RpcException e)
    {
        Assert.Contains(e.StatusCode, new[] { StatusCode.Internal, StatusCode.Unavailable });
        Assert.Contains("SSL connection could not be established", e.Status.Detail, StringComparison.Ordinal);
    }

    [Fact]
    public async Task HsmDevModeWithoutServerDevMode_DevDomainKeyNotUsed()
    {
        // Hsm:DevMode alone must not let a non-dev server create or use the dev domain key.
        var e = await Assert.ThrowsAsync<HsmConfigurationException>(() => KmsServerApp.BuildAsync(
        [
            "--urls=https://127.0.0.1:0",
            $"--Kms:TlsCertificatePath={Path.Combine(fixture.Server.DataDir, "tls", "server.crt")}",
            $"--Kms:TlsKeyPath={Path.Combine(fixture.Server.DataDir, "tls", "server.key")}",
            $"--Storage:Sqlite:DatabasePath={Kms.Testing.Scratch.NewPath("kms-nodev-", ".db")}",
            $"--Hsm:TokenLabel={fixture.Server.Token.Label}",
            $"--Hsm:PinFile={fixture.Server.Token.PinFile}",
            "--Hsm:DevMode=true",
        ]));
        Assert.Contains("DomainKeyId is required outside dev mode", e.Message, StringComparison.Ordinal);
    }

    private X509ChainPolicy TrustDevCa() => new()
    {
        TrustMode = X509ChainTrustMode.CustomRootTrust,
        RevocationMode = X509RevocationMode.NoCheck,
        CustomTrustStore = { X509Certificate2.CreateFromPem(File.ReadAllText(fixture.Server.CaCertificatePath)) },
    };

    private static async Task<string> OpensslAsync(params string[] arguments)
    {
        var start = new ProcessStartInfo("openssl") { RedirectStandardOutput = true, RedirectStandardError = true, RedirectStandardInput = true };
        start.ArgumentList.Add("s_client");
        foreach (var argument in arguments)
        {
            start.ArgumentList.Add(argument);
        }

        using var process = Process.Start(start) ?? throw new InvalidOperationException("openssl is required by this test (apt-get install -y openssl)");
        process.StandardInput.Close();
        var output = process.StandardOutput.ReadToEndAsync();
        var error = process.StandardError.ReadToEndAsync();
        await process.WaitForExitAsync().WaitAsync(TimeSpan.FromSeconds(30));
        return await output + await error;
    }
}
