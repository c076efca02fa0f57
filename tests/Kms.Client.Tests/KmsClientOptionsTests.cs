namespace Kms.Client.Tests;

public sealed class KmsClientOptionsTests
{
    public static TheoryData<string, Action<KmsClientOptions>> Invalid() => new()
    {
        { "must be an absolute https URI", o => o.Endpoint = new Uri("http://127.0.0.1:8443") },
        { "must be an absolute https URI", o => o.Endpoints = [new Uri("https://a:1"), new Uri("http://b:1")] },
        { "must be an absolute https URI", o => o.Endpoints = [new Uri("/relative", UriKind.Relative)] },
        { "is listed twice", o => o.Endpoints = [new Uri("https://a:1"), new Uri("https://a:1")] },
        { "set Endpoint or Endpoints, not both", o => (o.Endpoint, o.Endpoints) = (new Uri("https://a:1"), [new Uri("https://b:1")]) },
        { "CallTimeout must be positive", o => o.CallTimeout = TimeSpan.Zero },
        { "CallTimeout must be positive and at most", o => o.CallTimeout = TimeSpan.FromDays(2) },
        { "HealthCheckInterval must be positive", o => o.HealthCheckInterval = TimeSpan.FromSeconds(-1) },
        { "MaxConcurrentCalls must be between 1 and 65536; it is 0", o => o.MaxConcurrentCalls = 0 },
        { "MaxConcurrentCalls must be between 1 and 65536; it is 65537", o => o.MaxConcurrentCalls = 65_537 },
        { "Retry.MaxAttempts must be from 1 to 10; it is 0", o => o.Retry.MaxAttempts = 0 },
        { "Retry.MaxAttempts must be from 1 to 10; it is 11", o => o.Retry.MaxAttempts = 11 },
        { "Retry.BaseBackoff must be positive", o => o.Retry.BaseBackoff = TimeSpan.Zero },
        { "must be at least Retry.BaseBackoff", o => o.Retry.MaxBackoff = TimeSpan.FromMilliseconds(1) },
        { "Retry.MaxRetryInfoDelay must be from zero to 00:05:00; it is -00:00:00.0010000", o => o.Retry.MaxRetryInfoDelay = TimeSpan.FromMilliseconds(-1) },
        { "Retry.MaxRetryInfoDelay must be from zero to 00:05:00; it is 00:05:01", o => o.Retry.MaxRetryInfoDelay = TimeSpan.FromSeconds(301) },
        { "use an API token or a client certificate, not both", o => (o.ApiToken, o.ClientCertificate) = ("kms_x_y", CreateCertificate()) },
    };

    [Theory]
    [MemberData(nameof(Invalid))]
    public void Constructor_InvalidOption_ArgumentExceptionSayingWhich(string message, Action<KmsClientOptions> spoil)
    {
        var options = new KmsClientOptions();
        spoil(options);

        var e = Assert.Throws<ArgumentException>(() => new KmsClient(options));

        Assert.Contains(message, e.Message, StringComparison.Ordinal);
        Assert.Equal("options", e.ParamName);
    }

    [Theory]
    [InlineData("https://svc:s3cret-pass@kms.example:8443")]
    [InlineData("http://svc:s3cret-pass@kms.example:8443")]
    public void Constructor_EndpointWithAPasswordInItsUri_Refused_WithoutShowingIt(string endpoint)
    {
        // Before, the URI (and its password) was echoed by the "not https" message, and an accepted
        // one by every log line naming the endpoint; gRPC never sends it.
        foreach (var spoil in new Action<KmsClientOptions>[]
        {
            o => o.Endpoint = new Uri(endpoint),
            o => o.Endpoints = [new Uri("https://a:1"), new Uri(endpoint)],
            o => (o.Endpoint, o.Endpoints) = (new Uri("https://a:1"), [new Uri(endpoint)]),
        })
        {
            var options = new KmsClientOptions();
            spoil(options);

            var e = Assert.Throws<ArgumentException>(() => new KmsClient(options));

            Assert.Contains("user name or password in its URI", e.Message, StringComparison.Ordinal);
            Assert.DoesNotContain("s3cret", e.Message, StringComparison.Ordinal);
        }
    }

    [Fact]
    public void Constructor_NoEndpointConfigured_UsesTheDevEndpoint()
    {
        using var client = new KmsClient(new KmsClientOptions());
        Assert.Equal([KmsClientOptions.DefaultEndpoint], client.Endpoints.Endpoints.Select(e => e.Address));
    }

    [Fact]
    public void Constructor_EndpointShorthand_IsTheOnlyEndpoint()
    {
        using var client = new KmsClient(new KmsClientOptions { Endpoint = new Uri("https://kms.example:9443") });
        Assert.Equal([new Uri("https://kms.example:9443")], client.Endpoints.Endpoints.Select(e => e.Address));
    }

    [Fact]
    public void Constructor_SeveralEndpoints_KeptInOrder()
    {
        Uri[] endpoints = [new("https://site-a.example:8443"), new("https://site-b.example:8443")];
        using var client = new KmsClient(new KmsClientOptions { Endpoints = endpoints });
        Assert.Equal(endpoints, client.Endpoints.Endpoints.Select(e => e.Address));
    }

    [Theory]
    [InlineData("")]
    [InlineData("-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE\n-----END PUBLIC KEY-----\n")]
    public void Constructor_CaCertificatePathWithoutACertificate_ArgumentExceptionNamingIt(string content)
    {
        var path = Path.Combine(Path.GetTempPath(), $"kms-ca-{Guid.NewGuid():N}.pem");
        File.WriteAllText(path, content);
        try
        {
            var e = Assert.Throws<ArgumentException>(() => new KmsClient(new KmsClientOptions { CaCertificatePath = path }));

            Assert.Contains($"CaCertificatePath {path} holds no PEM certificate", e.Message, StringComparison.Ordinal);
            Assert.Equal("options", e.ParamName);
        }
        finally
        {
            File.Delete(path);
        }
    }

    private static System.Security.Cryptography.X509Certificates.X509Certificate2 CreateCertificate()
    {
        using var key = System.Security.Cryptography.ECDsa.Create();
        var request = new System.Security.Cryptography.X509Certificates.CertificateRequest("CN=client", key, System.Security.Cryptography.HashAlgorithmName.SHA256);
        return request.CreateSelfSigned(DateTimeOffset.UtcNow, DateTimeOffset.UtcNow.AddDays(1));
    }
}
