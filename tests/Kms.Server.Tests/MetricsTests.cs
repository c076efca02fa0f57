using System.Globalization;
using System.Net;
using System.Net.Http.Headers;
using System.Security.Cryptography.X509Certificates;
using System.Text.RegularExpressions;
using Google.Protobuf;
using Google.Protobuf.WellKnownTypes;
using Grpc.Core;
using Grpc.Net.Client;
using Kms.Contracts.V1;
using Kms.Server.Hosting;
using Kms.Server.Observability;
using Kms.Server.Security;
using Kms.Testing;

namespace Kms.Server.Tests;

/// <summary>
/// The Prometheus endpoint on a real server: its own plain-HTTP/1.1 listener, the series
/// docs/observability.md lists, and no request data in any of them.
/// </summary>
/// <remarks>
/// The <c>Kms</c> meter is process-wide, so servers of other test classes running alongside
/// add to the same series: counts are checked to grow by at least what this test did.
/// </remarks>
public sealed partial class MetricsTests : IAsyncLifetime
{
    private const string GenerateRandom = "/kms.v1.KeyManagementService/GenerateRandom";
    private const string CreateKey = "/kms.v1.KeyManagementService/CreateKey";
    private const string Encrypt = "/kms.v1.KeyManagementService/Encrypt";

    // Distinctive, so that finding one anywhere in a scrape means it leaked.
    private const string Tenant = "zqmetricstenant";
    private const string KeyId = "zqmetricskey";
    private const string PrincipalId = "zqmetricsprincipal";

    // What a Prometheus scraper speaks: plain HTTP/1.1. No connection is kept: every test has
    // its own server, and a port the system gives out again would meet a dead connection.
    private static readonly HttpClient Http = new(new SocketsHttpHandler { PooledConnectionLifetime = TimeSpan.Zero })
    {
        DefaultRequestVersion = HttpVersion.Version11,
        DefaultVersionPolicy = HttpVersionPolicy.RequestVersionExact,
    };

    private KmsTestServer _server = null!;

    public async Task InitializeAsync() =>
        _server = await KmsTestServer.StartAsync(null, null, "dev", "--Kms:MetricsUrl=http://127.0.0.1:0");

    public async Task DisposeAsync() => await _server.DisposeAsync();

    [Fact]
    public async Task Scrape_AllowedRefusedAndUnauthenticatedCalls_CountedByMethodAndFinalCode()
    {
        var before = await ScrapeAsync();
        using var developer = _server.CreateClient();
        using var keyUser = _server.CreateClient(_server.KeyUserToken);
        using var anonymous = _server.CreateClient(apiToken: null);

        await developer.GenerateRandomAsync(8);
        await developer.GenerateRandomAsync(8);
        var refused = await Assert.ThrowsAsync<RpcException>(() => keyUser.CreateKeyAsync("tenants/dev", "never-created"));
        var unauthenticated = await Assert.ThrowsAsync<RpcException>(() => anonymous.GenerateRandomAsync(8));
        Assert.Equal(StatusCode.PermissionDenied, refused.StatusCode);
        Assert.Equal(StatusCode.Unauthenticated, unauthenticated.StatusCode);

        var after = await ScrapeAsync();
        Assert.Equal("gauge", after.TypeOf("kms_grpc_requests_total")); // prometheus-net 8 exports every .NET counter as a gauge
        Assert.True(after.Value("kms_grpc_requests_total", ("method", GenerateRandom), ("code", "OK")) >= before.Value("kms_grpc_requests_total", ("method", GenerateRandom), ("code", "OK")) + 2);
        Assert.True(after.Value("kms_grpc_requests_total", ("method", CreateKey), ("code", "PermissionDenied")) >= before.Value("kms_grpc_requests_total", ("method", CreateKey), ("code", "PermissionDenied")) + 1);
        Assert.True(after.Value("kms_grpc_requests_total", ("method", GenerateRandom), ("code", "Unauthenticated")) >= before.Value("kms_grpc_requests_total", ("method", GenerateRandom), ("code", "Unauthenticated")) + 1);

        Assert.Equal("histogram", after.TypeOf("kms_grpc_request_duration_seconds"));
        Assert.True(after.Value("kms_grpc_request_duration_seconds_count", ("method", GenerateRandom)) >= before.Value("kms_grpc_request_duration_seconds_count", ("method", GenerateRandom)) + 3);
        Assert.True(after.Value("kms_grpc_request_duration_seconds_sum", ("method", GenerateRandom)) > 0);

        // The buckets the instrument advises, from a tenth of a millisecond to ten seconds.
        var buckets = after.Samples.Where(s => s.Name == "kms_grpc_request_duration_seconds_bucket" && s.Labels["method"] == GenerateRandom).Select(s => s.Labels["le"]).ToList();
        Assert.Equal(["0.0001", "0.00025", "0.0005", "0.001", "0.0025", "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1", "2.5", "5", "10", "+Inf"], buckets);
        Assert.All(after.Samples.Where(s => s.Name.StartsWith("kms_grpc_", StringComparison.Ordinal)), s =>
            Assert.Subset(new HashSet<string> { "method", "code", "le" }, s.Labels.Keys.ToHashSet()));
    }

    [Fact]
    public async Task Scrape_HsmPoolAndKeyCacheSeries_Present()
    {
        using var developer = _server.CreateClient();
        var key = await developer.CreateKeyAsync("tenants/dev", ServerFixture.NewKeyId());
        var before = await ScrapeAsync();

        await developer.EncryptAsync(key.Name, "once"u8.ToArray());
        await developer.EncryptAsync(key.Name, "twice"u8.ToArray());

        // The audit series are recorded when the group commit reports its batch written, which is
        // after it has woken the batch's callers (AuditLog.CommitAsync): a scrape right after the
        // answers can come first. Scraped again until the two events are counted (30-s hang guard).
        var after = await ScrapeUntilAsync(
            s => s.Value("kms_audit_events_written_total") >= before.Value("kms_audit_events_written_total") + 2,
            "the two encryptions' audit events counted in kms_audit_events_written_total");
        Assert.True(after.Value("kms_hsm_key_cache_hits_total") >= before.Value("kms_hsm_key_cache_hits_total") + 1);
        Assert.True(after.Value("kms_hsm_key_cache_misses_total") >= 1);
        Assert.True(after.Value("kms_hsm_key_cache_entries") >= 1);
        Assert.True(after.Value("kms_hsm_sessions") >= 2); // this server's pool has two (KmsTestServer)
        Assert.True(after.Has("kms_hsm_sessions_in_use"));
        Assert.True(after.Value("kms_hsm_session_wait_seconds_count") >= before.Value("kms_hsm_session_wait_seconds_count") + 2);
        Assert.Equal("histogram", after.TypeOf("kms_hsm_session_wait_seconds"));
        Assert.True(after.Value("kms_grpc_requests_total", ("method", Encrypt), ("code", "OK")) >= 2);

        // The encryptions' audit events went through group commit.
        Assert.True(after.Value("kms_audit_events_written_total") >= before.Value("kms_audit_events_written_total") + 2);
        Assert.Equal("histogram", after.TypeOf("kms_audit_batch_size"));
        Assert.True(after.Value("kms_audit_lag_seconds_count") >= 1);

        // The process and runtime collectors come along; other meters in the process do not.
        Assert.True(after.Has("process_cpu_seconds_total"));
        Assert.DoesNotContain(after.Samples, s => s.Name.StartsWith("http_", StringComparison.Ordinal) || s.Name.StartsWith("kestrel_", StringComparison.Ordinal));
    }

    [Fact]
    public async Task Scrape_AfterCallsNamingThem_ContainsNoTenantKeyPrincipalOrToken()
    {
        await _server.EnsureTenantAsync(Tenant);
        var token = await _server.CreatePrincipalWithTokenAsync(PrincipalId, Tenant, "key-manager", "key-user");
        using var tenantClient = _server.CreateClient(token);
        var key = await tenantClient.CreateKeyAsync($"tenants/{Tenant}", KeyId);
        var blob = (await tenantClient.EncryptAsync(key.Name, "zqsecretpayload"u8.ToArray(), new Dictionary<string, string> { ["zqcontextkey"] = "zqcontextvalue" })).Ciphertext;
        using var plaintext = await tenantClient.DecryptAsync(blob, new Dictionary<string, string> { ["zqcontextkey"] = "zqcontextvalue" });

        // Refused and failed calls carry names and credentials too.
        using var developer = _server.CreateClient();
        Assert.Equal(StatusCode.NotFound, (await Assert.ThrowsAsync<RpcException>(() => developer.GetKeyAsync(key.Name))).StatusCode);
        Assert.Equal(StatusCode.NotFound, (await Assert.ThrowsAsync<RpcException>(() => tenantClient.GetKeyAsync($"tenants/{Tenant}/keys/zqmissingkey"))).StatusCode);
        const string forgedToken = "kms_zqforgedtokenid_ZQFORGEDSECRETAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
        using var forged = _server.CreateClient(forgedToken);
        Assert.Equal(StatusCode.Unauthenticated, (await Assert.ThrowsAsync<RpcException>(() => forged.GenerateRandomAsync(8))).StatusCode);

        var text = (await ScrapeAsync()).Text;
        string[] secrets =
        [
            Tenant, KeyId, PrincipalId, "zqmissingkey", "zqcontextkey", "zqcontextvalue", "zqsecretpayload", "zqforged",
            token, token[..12], _server.DeveloperToken, _server.KeyUserToken, _server.DeploymentAdminToken, "tenants/", "token:", "Bearer",
        ];
        Assert.All(secrets, secret => Assert.DoesNotContain(secret, text, StringComparison.OrdinalIgnoreCase));
    }

    [Fact]
    public async Task UnknownMethodPaths_CountedAsUnknown_AddNoMethodLabelValue()
    {
        var before = await ScrapeAsync();
        using var channel = _server.CreateChannel();
        var invoker = channel.CreateCallInvoker();
        foreach (var (service, method) in new[] { ("kms.v1.KeyManagementService", "ZqNoSuchMethod"), ("zq.Probe", "Call"), ("kms.v1.KeyManagementService", "GenerateRandom/zq") })
        {
            var descriptor = new Method<Empty, Empty>(MethodType.Unary, service, method, Marshallers.Create<Empty>(m => m.ToByteArray(), Empty.Parser.ParseFrom), Marshallers.Create<Empty>(m => m.ToByteArray(), Empty.Parser.ParseFrom));
            var e = await Assert.ThrowsAsync<RpcException>(async () => await invoker.AsyncUnaryCall(descriptor, null, new CallOptions(KmsTestServer.Bearer(_server.DeveloperToken)), new Empty()));
            Assert.Equal(StatusCode.Unimplemented, e.StatusCode);
        }

        var scrape = await ScrapeAsync();
        Assert.True(scrape.Value("kms_grpc_requests_total", ("method", "unknown"), ("code", "Unimplemented")) >= before.Value("kms_grpc_requests_total", ("method", "unknown"), ("code", "Unimplemented")) + 3);
        Assert.DoesNotContain("zq", scrape.Text, StringComparison.OrdinalIgnoreCase);
        var methods = scrape.Samples.Where(s => s.Name.StartsWith("kms_grpc_", StringComparison.Ordinal)).Select(s => s.Labels["method"]).ToHashSet();
        Assert.NotEmpty(methods);
        Assert.Subset(AccessRules.ByMethod.Keys.Append(KmsMetrics.UnknownMethod).ToHashSet(), methods);
    }

    [Theory]
    [InlineData("/zq.Probe/Call", "unknown")]
    [InlineData("/kms.v1.KeyManagementService/ZqNoSuchMethod", "unknown")]
    [InlineData("kms.v1.KeyManagementService/Encrypt", "unknown")]
    [InlineData("", "unknown")]
    [InlineData(Encrypt, Encrypt)]
    [InlineData("/grpc.health.v1.Health/Check", "/grpc.health.v1.Health/Check")]
    public void MethodLabel_OnlyServedMethodsKeepTheirName(string method, string label)
    {
        Assert.Equal(label, MetricsInterceptor.MethodLabel(method));
    }

    [Fact]
    public void CodeLabel_NamesEveryStatusCode()
    {
        Assert.Equal("OK", MetricsInterceptor.CodeLabel(StatusCode.OK));
        Assert.Equal("PermissionDenied", MetricsInterceptor.CodeLabel(StatusCode.PermissionDenied));
        Assert.Equal("Unauthenticated", MetricsInterceptor.CodeLabel(StatusCode.Unauthenticated));
        Assert.Equal("Unknown", MetricsInterceptor.CodeLabel((StatusCode)99));
    }

    [Fact]
    public void SecurityAlertKinds_EachHaveAFixedLabel()
    {
        var labels = System.Enum.GetValues<SecurityAlertKind>().Where(k => k != SecurityAlertKind.Unspecified).Select(KmsMetrics.LabelOf).ToList();
        Assert.Equal(labels.Count, labels.Distinct().Count());
        Assert.All(labels, l => Assert.Matches("^[a-z_]+$", l));
        Assert.DoesNotContain("other", labels);
        Assert.Equal("other", KmsMetrics.LabelOf((SecurityAlertKind)99));
    }

    [Fact]
    public async Task MetricsPath_NotServedOnTheGrpcPort_AndGrpcNotServedOnTheMetricsPort()
    {
        Assert.NotEqual(_server.Address.Port, _server.MetricsUrl!.Port);

        // The gRPC port over HTTP/2 (the only protocol it speaks): no such route.
        using var tls = new SocketsHttpHandler();
        tls.SslOptions.CertificateChainPolicy = new X509ChainPolicy
        {
            TrustMode = X509ChainTrustMode.CustomRootTrust,
            RevocationMode = X509RevocationMode.NoCheck,
            CustomTrustStore = { X509Certificate2.CreateFromPem(File.ReadAllText(_server.CaCertificatePath)) },
        };
        using var http2 = new HttpClient(tls) { DefaultRequestVersion = HttpVersion.Version20, DefaultVersionPolicy = HttpVersionPolicy.RequestVersionExact };
        using var onGrpcPort = await http2.GetAsync(new Uri(_server.Address, MetricsEndpoint.Path));
        Assert.Equal(HttpStatusCode.NotFound, onGrpcPort.StatusCode);
        Assert.DoesNotContain("kms_grpc", await onGrpcPort.Content.ReadAsStringAsync(), StringComparison.Ordinal);

        // A gRPC method over the metrics listener: not found, not served.
        using var grpcOnMetricsPort = new HttpRequestMessage(HttpMethod.Post, new Uri(_server.MetricsUrl, GenerateRandom))
        {
            Content = new ByteArrayContent([0, 0, 0, 0, 2, 8, 8]),
        };
        grpcOnMetricsPort.Content.Headers.ContentType = new MediaTypeHeaderValue("application/grpc");
        grpcOnMetricsPort.Headers.Authorization = new AuthenticationHeaderValue("Bearer", _server.DeveloperToken);
        using var grpcResponse = await Http.SendAsync(grpcOnMetricsPort);
        Assert.Equal(HttpStatusCode.NotFound, grpcResponse.StatusCode);
        using var channel = GrpcChannel.ForAddress(new Uri(_server.MetricsUrl, "/"));
        var e = await Assert.ThrowsAsync<RpcException>(async () =>
            await new KeyManagementService.KeyManagementServiceClient(channel).GenerateRandomAsync(new GenerateRandomRequest { LengthBytes = 1 }, KmsTestServer.Bearer(_server.DeveloperToken)));
        Assert.NotEqual(StatusCode.OK, e.StatusCode);

        // Anything but /metrics on the metrics listener.
        using var other = await Http.GetAsync(new Uri(_server.MetricsUrl, "/"));
        Assert.Equal(HttpStatusCode.NotFound, other.StatusCode);
    }

    [Fact]
    public async Task Scrape_IsPlainHttp11_TextFormat()
    {
        Assert.Equal(Uri.UriSchemeHttp, _server.MetricsUrl!.Scheme);
        Assert.True(IPAddress.IsLoopback(IPAddress.Parse(_server.MetricsUrl.Host)));
        Assert.Equal(MetricsEndpoint.Path, _server.MetricsUrl.AbsolutePath);
        using var response = await Http.GetAsync(_server.MetricsUrl);
        response.EnsureSuccessStatusCode();
        Assert.Equal(HttpVersion.Version11, response.Version);
        Assert.Equal("text/plain", response.Content.Headers.ContentType?.MediaType);
    }

    [Theory]
    [InlineData(null, false)]
    [InlineData("", false)]
    [InlineData("http://127.0.0.1:9464", false)]
    [InlineData("http://127.0.0.1:0", false)]
    [InlineData("http://localhost:9464", false)]
    [InlineData("http://[::1]:9464", false)]
    [InlineData("http://0.0.0.0:9464", true)]
    [InlineData("http://10.1.2.3:9464", true)]
    public void MetricsUrl_LoopbackOrExplicitlyAllowed_Accepted(string? url, bool allowNonLoopback)
    {
        Assert.Equal(string.IsNullOrEmpty(url) ? null : url, ListenAddresses.ValidateMetrics(url, allowNonLoopback));
    }

    [Theory]
    [InlineData("https://127.0.0.1:9464", "not an http URL")]
    [InlineData("127.0.0.1:9464", "not an http URL")]
    [InlineData("http://10.1.2.3:9464", "not a loopback address")]
    [InlineData("http://0.0.0.0:9464", "not a loopback address")]
    [InlineData("http://metrics.example.com:9464", "names a host")]
    [InlineData("http://127.0.0.1:9464/metrics", "the path is always /metrics")]
    public void MetricsUrl_NotPlainHttpOnLoopback_Refused(string url, string reason)
    {
        var e = Assert.Throws<InvalidOperationException>(() => ListenAddresses.ValidateMetrics(url, allowNonLoopback: false));
        Assert.Contains(reason, e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Build_NonLoopbackMetricsUrl_RefusesBeforeTouchingTheHsm()
    {
        var e = await Assert.ThrowsAsync<InvalidOperationException>(() => KmsServerApp.BuildAsync(
            ["--dev", "--urls=https://127.0.0.1:0", "--Kms:MetricsUrl=http://192.0.2.1:9464", $"--Kms:DataDir={Scratch.NewPath("kms-never-")}"]));
        Assert.Contains("MetricsAllowNonLoopback", e.Message, StringComparison.Ordinal);
    }

    private async Task<Scrape> ScrapeAsync()
    {
        var text = await Http.GetStringAsync(_server.MetricsUrl);
        return Scrape.Parse(text);
    }

    // A scrape that shows what a background step records; 30 s is a hang guard, not a bound on how fast.
    private async Task<Scrape> ScrapeUntilAsync(Func<Scrape, bool> shows, string what)
    {
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(30);
        while (true)
        {
            var scrape = await ScrapeAsync();
            if (shows(scrape))
            {
                return scrape;
            }

            Assert.True(DateTime.UtcNow < deadline, "hang guard: not within 30 s: " + what);
            await Task.Delay(50);
        }
    }

    /// <summary>One scrape in the Prometheus text format, parsed.</summary>
    private sealed partial record Scrape(string Text, IReadOnlyList<Sample> Samples, IReadOnlyDictionary<string, string> Types)
    {
        public static Scrape Parse(string text)
        {
            var samples = new List<Sample>();
            var types = new Dictionary<string, string>(StringComparer.Ordinal);
            foreach (var line in text.Split('\n', StringSplitOptions.RemoveEmptyEntries))
            {
                if (line.StartsWith("# TYPE ", StringComparison.Ordinal))
                {
                    var parts = line.Split(' ');
                    types[parts[2]] = parts[3];
                    continue;
                }

                if (line.StartsWith('#'))
                {
                    continue;
                }

                var match = SampleLine().Match(line);
                Assert.True(match.Success, $"not a sample line: {line}");
                var labels = LabelPair().Matches(match.Groups["labels"].Value).ToDictionary(m => m.Groups[1].Value, m => m.Groups[2].Value, StringComparer.Ordinal);
                samples.Add(new Sample(match.Groups["name"].Value, labels, double.Parse(match.Groups["value"].Value, CultureInfo.InvariantCulture)));
            }

            return new Scrape(text, samples, types);
        }

        public bool Has(string name) => Samples.Any(s => s.Name == name);

        public string? TypeOf(string name) => Types.GetValueOrDefault(name);

        /// <summary>The sum over the series of a name whose labels include the given ones (0 when there is none).</summary>
        public double Value(string name, params (string Name, string Value)[] labels) =>
            Samples.Where(s => s.Name == name && labels.All(l => s.Labels.GetValueOrDefault(l.Name) == l.Value)).Sum(s => s.Value);

        [GeneratedRegex(@"^(?<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(\{(?<labels>.*)\})? (?<value>\S+)$")]
        private static partial Regex SampleLine();

        [GeneratedRegex("([a-zA-Z_][a-zA-Z0-9_]*)=\"((?:[^\"\\\\]|\\\\.)*)\"")]
        private static partial Regex LabelPair();
    }

    private sealed record Sample(string Name, IReadOnlyDictionary<string, string> Labels, double Value);
}
