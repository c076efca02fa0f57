using System.Security.Cryptography;
using Grpc.Net.Client;
using Kms.Client;
using Kms.Server.Hosting;
using Microsoft.AspNetCore.Builder;
using Microsoft.Extensions.DependencyInjection;

namespace Kms.Testing;

/// <summary>
/// The real server, in this process: dev mode, a fresh SoftHSM token, a SQLite file and TLS
/// material in a temporary data directory, listening on a random loopback port.
/// </summary>
public sealed class KmsTestServer : IAsyncDisposable
{
    private readonly WebApplication _app;

    private readonly Action<IServiceCollection>? _configureServices;
    private readonly string[] _extraArgs;

    private KmsTestServer(WebApplication app, TestToken token, string dataDir, string tenant, LogCapture logs, Action<IServiceCollection>? configureServices, string[] extraArgs)
    {
        _app = app;
        _configureServices = configureServices;
        _extraArgs = extraArgs;
        Token = token;
        DataDir = dataDir;
        Tenant = tenant;
        Logs = logs;
        Address = KmsServerApp.BoundAddresses(app).Single();
        MetricsUrl = KmsServerApp.BoundMetricsUrl(app);
    }

    public TestToken Token { get; }

    public string DataDir { get; }

    public string Tenant { get; }

    public LogCapture Logs { get; }

    public Uri Address { get; }

    /// <summary>Where metrics are scraped (<c>http://127.0.0.1:{port}/metrics</c>; start with <c>--Kms:MetricsUrl=http://127.0.0.1:0</c>), or null.</summary>
    public Uri? MetricsUrl { get; }

    public string CaCertificatePath => Path.Combine(DataDir, "tls", "ca.crt");

    public string DatabasePath => Path.Combine(DataDir, "kms.db");

    public IServiceProvider Services => _app.Services;

    /// <summary>Starts a server; pass a token and data directory to start on existing state.</summary>
    public static Task<KmsTestServer> StartAsync(TestToken? token = null, string? dataDir = null, string tenant = "dev", params string[] extraArgs) =>
        StartAsync(token, dataDir, tenant, null, extraArgs);

    /// <summary>
    /// Services for <see cref="StartAsync(TestToken?, string?, string, Action{IServiceCollection}?, string[])"/>
    /// that make each ListAuditEvents page examine at most <paramref name="window"/> sequence
    /// numbers (the server's own is 100,000): a small log then pages through empty windows.
    /// </summary>
    public static Action<IServiceCollection> AuditScanWindow(long window) =>
        services => services.PostConfigure<KmsServerOptions>(options => options.AuditScanWindow = window);

    /// <summary>Starts a server with replaced services (e.g. a fake <see cref="TimeProvider"/>).</summary>
    public static async Task<KmsTestServer> StartAsync(TestToken? token, string? dataDir, string tenant, Action<IServiceCollection>? configureServices, params string[] extraArgs)
    {
        token ??= SoftHsm.CreateToken();
        dataDir ??= Scratch.NewPath("kms-server-");
        var logs = new LogCapture();
        var app = await KmsServerApp.BuildAsync(DevArgs(token, dataDir, tenant, extraArgs), logging => logging.WriteTo.Sink(logs), configureServices);
        await app.StartAsync();
        return new KmsTestServer(app, token, dataDir, tenant, logs, configureServices, extraArgs);
    }

    /// <summary>
    /// Starts a dev-mode server as <see cref="StartAsync(TestToken?, string?, string, string[])"/>
    /// does, where the start is expected to be refused: the refusal (what <c>kms: cannot start:</c>
    /// prints), and what was logged until then. Fails the test if the server starts.
    /// </summary>
    public static async Task<(Exception Refusal, LogCapture Logs)> StartRefusedAsync(TestToken token, string dataDir, params string[] extraArgs)
    {
        var logs = new LogCapture();
        try
        {
            var app = await KmsServerApp.BuildAsync(DevArgs(token, dataDir, "dev", extraArgs), logging => logging.WriteTo.Sink(logs), null);
            await app.DisposeAsync();
        }
        catch (Exception e) when (e is not OperationCanceledException)
        {
            return (e, logs);
        }

        throw new InvalidOperationException($"the server started on {dataDir}; a refusal was expected");
    }

    /// <summary>The arguments <see cref="StartAsync(TestToken?, string?, string, string[])"/> builds a dev-mode server with, for a test that builds and starts one itself.</summary>
    public static string[] DevArgs(TestToken token, string dataDir, string tenant, params string[] extraArgs) =>
        [
            "--dev",
            "--urls=https://127.0.0.1:0",
            $"--Kms:DataDir={dataDir}",
            $"--Kms:Tenant={tenant}",
            $"--Hsm:TokenLabel={token.Label}",
            $"--Hsm:PinFile={token.PinFile}",
            "--Hsm:SessionPoolSize=2",
            .. SoftHsm.ModuleEnvironment.Select(kv => $"--Hsm:ModuleEnvironment:{kv.Key}={kv.Value}"),

            // Distinct per data directory (so per node, and the same when a node restarts on it): nodes
            // sharing a PostgreSQL database may not share a name. A test's own --Kms:NodeName comes later and wins.
            $"--Kms:NodeName={Path.GetFileName(Path.TrimEndingDirectorySeparator(dataDir))}",
            .. extraArgs,
        ];

    /// <summary>
    /// Starts a production-mode server (no <c>--dev</c>) on a token whose domain key a key
    /// ceremony imported with CKA_ID <paramref name="domainKeyId"/>. TLS material comes from
    /// the dev CA generator (under <c>{dataDir}/tls</c>, so <see cref="CaCertificatePath"/> holds);
    /// on first start the one-time bootstrap credential is used to create a deployment admin, the
    /// tenant and a developer (every tenant role), whose tokens go to <c>{dataDir}/tokens</c> as in
    /// dev mode, so <see cref="DeveloperToken"/> and <see cref="DeploymentAdminToken"/> work alike.
    /// </summary>
    public static async Task<KmsTestServer> StartProductionAsync(TestToken token, string dataDir, string domainKeyId, string tenant = "dev", params string[] extraArgs)
    {
        var logs = new LogCapture();
        var app = await KmsServerApp.BuildAsync(ProductionArgs(token, dataDir, domainKeyId, extraArgs), logging => logging.WriteTo.Sink(logs), null);
        await app.StartAsync();
        var server = new KmsTestServer(app, token, dataDir, tenant, logs, null, extraArgs);
        var bootstrap = Path.Combine(dataDir, "bootstrap.token");
        if (File.Exists(bootstrap))
        {
            await server.BootstrapAsync((await File.ReadAllTextAsync(bootstrap)).Trim());
            File.Delete(bootstrap); // used up, as an operator would do
        }

        return server;
    }

    /// <summary>
    /// Starts a production-mode server as <see cref="StartProductionAsync"/> does, where the start
    /// is expected to be refused: the refusal (what <c>kms: cannot start:</c> prints), and what was
    /// logged until then. Fails the test if the server starts.
    /// </summary>
    public static async Task<(Exception Refusal, LogCapture Logs)> StartProductionRefusedAsync(TestToken token, string dataDir, string domainKeyId, params string[] extraArgs)
    {
        var logs = new LogCapture();
        try
        {
            var app = await KmsServerApp.BuildAsync(ProductionArgs(token, dataDir, domainKeyId, extraArgs), logging => logging.WriteTo.Sink(logs), null);
            await app.DisposeAsync();
        }
        catch (Exception e) when (e is not OperationCanceledException)
        {
            return (e, logs);
        }

        throw new InvalidOperationException($"the server started on {dataDir}; a refusal was expected");
    }

    private static string[] ProductionArgs(TestToken token, string dataDir, string domainKeyId, string[] extraArgs)
    {
        var (certificate, key) = Kms.Server.Tls.DevCertificates.Ensure(Path.Combine(dataDir, "tls"), TimeProvider.System);
        return
        [
            "--urls=https://127.0.0.1:0",
            $"--Kms:DataDir={dataDir}",
            $"--Kms:TlsCertificatePath={certificate}",
            $"--Kms:TlsKeyPath={key}",
            $"--Hsm:TokenLabel={token.Label}",
            $"--Hsm:PinFile={token.PinFile}",
            $"--Hsm:DomainKeyId={domainKeyId}",
            "--Hsm:SessionPoolSize=2",
            .. SoftHsm.ModuleEnvironment.Select(kv => $"--Hsm:ModuleEnvironment:{kv.Key}={kv.Value}"),

            // Distinct per data directory (so per node, and the same when a node restarts on it): nodes
            // sharing a PostgreSQL database may not share a name. A test's own --Kms:NodeName comes later and wins.
            $"--Kms:NodeName={Path.GetFileName(Path.TrimEndingDirectorySeparator(dataDir))}",
            .. extraArgs,
        ];
    }

    private async Task BootstrapAsync(string bootstrapToken)
    {
        var tokens = Directory.CreateDirectory(Path.Combine(DataDir, "tokens")).FullName;
        using (var bootstrap = CreateClient(bootstrapToken))
        {
            var admin = await bootstrap.BootstrapAsync("token:test-admin");
            await File.WriteAllTextAsync(Path.Combine(tokens, "deployment-admin.token"), admin.SessionToken + "\n");
        }

        await this.EnsureTenantAsync(Tenant);
        var developer = await this.CreatePrincipalWithTokenAsync("developer", Tenant, "admin", "key-manager", "key-importer", "key-user", "auditor");
        await File.WriteAllTextAsync(Path.Combine(tokens, "developer.token"), developer + "\n");
    }

    /// <summary>Stops this server and starts a new one on the same token and data directory.</summary>
    public async Task<KmsTestServer> RestartAsync(string? tenant = null)
    {
        await DisposeAsync();
        return await StartAsync(Token, DataDir, tenant ?? Tenant, _configureServices, _extraArgs);
    }

    /// <summary>
    /// Waits until this node has read the change feed past every write made before the call: a
    /// read that began after it is over. Each read that finds an access change forgets every
    /// remembered caller (and failed credential), so a test that counts lookups waits here after
    /// its writes, or the node's own writes, read back a moment later, forget at a random point.
    /// </summary>
    public async Task WaitForChangeFeedReadAsync()
    {
        var worker = _app.Services.GetRequiredService<ClusterCoherenceWorker>();

        // A read under way now may have begun before the last write: the one after it began later.
        var target = worker.Completed + 2;
        var deadline = DateTime.UtcNow.AddSeconds(30);
        while (worker.Completed < target)
        {
            if (DateTime.UtcNow > deadline)
            {
                throw new TimeoutException($"the change feed was not read within 30 s (reads completed: {worker.Completed}, waiting for {target})");
            }

            await Task.Delay(20);
        }
    }

    /// <summary>Dev mode's token with every tenant role in the dev tenant.</summary>
    public string DeveloperToken => ReadToken("developer.token");

    /// <summary>Dev mode's key-user service token.</summary>
    public string KeyUserToken => ReadToken("key-user.token");

    /// <summary>Dev mode's deployment-admin session token.</summary>
    public string DeploymentAdminToken => ReadToken("deployment-admin.token");

    /// <summary>A typed client that trusts this server's dev CA, authenticated as the dev developer (every tenant role in dev).</summary>
    public KmsClient CreateClient() => CreateClient(DeveloperToken);

    /// <summary>A typed client with the given API token (null: no credential).</summary>
    public KmsClient CreateClient(string? apiToken) =>
        new(new KmsClientOptions { Endpoint = Address, CaCertificatePath = CaCertificatePath, ApiToken = apiToken });

    /// <summary>Call options carrying a bearer token.</summary>
    public static Grpc.Core.Metadata Bearer(string token) => new() { { "authorization", "Bearer " + token } };

    private string ReadToken(string file) => File.ReadAllText(Path.Combine(DataDir, "tokens", file)).Trim();

    /// <summary>A channel without credentials, for other services (health, reflection) and raw calls.</summary>
    public GrpcChannel CreateChannel() => CreateChannel(null);

    /// <summary>A channel that presents <paramref name="clientCertificate"/> in the TLS handshake (null: none).</summary>
    public GrpcChannel CreateChannel(System.Security.Cryptography.X509Certificates.X509Certificate2? clientCertificate)
    {
        var ca = System.Security.Cryptography.X509Certificates.X509Certificate2.CreateFromPem(File.ReadAllText(CaCertificatePath));
        var handler = new SocketsHttpHandler();
        if (clientCertificate is not null)
        {
            handler.SslOptions.ClientCertificates = [clientCertificate];
        }

        handler.SslOptions.CertificateChainPolicy = new System.Security.Cryptography.X509Certificates.X509ChainPolicy
        {
            TrustMode = System.Security.Cryptography.X509Certificates.X509ChainTrustMode.CustomRootTrust,
            RevocationMode = System.Security.Cryptography.X509Certificates.X509RevocationMode.NoCheck,
            CustomTrustStore = { ca },
        };
        return GrpcChannel.ForAddress(Address, new GrpcChannelOptions { HttpHandler = handler });
    }

    public async ValueTask DisposeAsync()
    {
        await _app.StopAsync();
        await _app.DisposeAsync();
    }
}
