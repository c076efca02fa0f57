using System.Globalization;
using System.Security.Cryptography;
using System.Text;
using Kms.Client;
using Kms.Hsm;
using Kms.Server.Hosting;
using Kms.Server.Tls;
using Microsoft.AspNetCore.Builder;
using Microsoft.Extensions.DependencyInjection;

namespace Kms.Bench;

/// <summary>
/// One unary workload — GenerateDataKey and Decrypt, alternating, over TLS 1.3 with API-token
/// auth and durable audit, closed loop at one concurrency — against production-mode nodes:
/// (a) one node on SQLite, the same-run baseline; (b) one node on PostgreSQL; (c) two nodes on
/// one PostgreSQL database, the client round-robin over both (<see cref="KmsClientOptions.Endpoints"/>).
/// Every node runs in this process on 127.0.0.1, on its own SoftHSM token holding the same
/// ceremony-imported domain key; the second node of (c) shares the first one's TLS CA.
/// </summary>
internal static class StorageBench
{
    private const string DomainKeyId = "dk-bench";

    /// <summary>The tenant of the service principal <see cref="StartNodesAsync"/> makes.</summary>
    internal const string Tenant = "bench";

    // Decrypt draws from this many ciphertexts, made before the clock starts.
    private const int CiphertextPool = 64;

    private static readonly TimeSpan WarmUp = TimeSpan.FromSeconds(2);

    private static readonly Dictionary<string, string> Context = new() { ["bench"] = "storage" };

    private static readonly string[] Setups = ["(a) 1 node, SQLite", "(b) 1 node, PostgreSQL", "(c) 2 nodes, one PostgreSQL"];

    public static async Task<int> RunAsync(TimeSpan duration, int concurrency, int rounds)
    {
        Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"storage: {Environment.ProcessorCount} cores, load average {LoadAverage()}; concurrency {concurrency}, {WarmUp.TotalSeconds:F0} s warm-up + {duration.TotalSeconds:F0} s per setup, {rounds} round(s)"));

        // With tiered JIT the process reaches its steady state only after about a minute of load
        // on this machine (tier-0 code, then PGO-instrumented, then tier 1, compiled in the
        // background on busy cores): the setup measured first ran at 0.4x of the same setup
        // measured a minute later, which no short warm-up removed. Fully optimised code from
        // the first call makes the rounds comparable (docs/benchmarks.md).
        if (Environment.GetEnvironmentVariable("DOTNET_TieredCompilation") != "0")
        {
            Console.WriteLine("warning: tiered compilation is on; the first round will measure slower than the later ones. Run with DOTNET_TieredCompilation=0.");
        }

        // Every token exists before a server loads the module (SoftHSM reads its tokens once per
        // process); each round gets fresh ones (4: one per single node, two for the pair), and so
        // does the warm-up round.
        var (tokens, config, root) = BenchEnvironment.CreateTokens(4 * (rounds + 1));

        // figures[round][setup]
        var figures = Enumerable.Range(0, rounds).Select(_ => new Figures[Setups.Length]).ToArray();
        var warmUpErrors = 0;
        try
        {
            ImportOneDomainKey(tokens);
            await using var cluster = await PostgresCluster.StartAsync();
            Console.WriteLine($"PostgreSQL: {cluster.Origin}");

            // Round 0 is a short warm-up of every setup (connections, pools, first JIT), not counted.
            for (var round = 0; round <= rounds; round++)
            {
                // Even rounds run the setups in reverse, so a machine whose load drifts during the run
                // does not always favour the same setup.
                int[] order = round % 2 == 1 ? [0, 1, 2] : [2, 1, 0];
                var mine = tokens.Skip(4 * round).Take(4).ToArray();
                var measured = round == 0 ? WarmUp : duration;
                foreach (var setup in order)
                {
                    var f = setup switch
                    {
                        0 => await MeasureAsync(root, config, [mine[0]], [], measured, concurrency),
                        1 => await MeasureAsync(root, config, [mine[1]], await PostgresArgumentsAsync(cluster), measured, concurrency),
                        _ => await MeasureAsync(root, config, [mine[2], mine[3]], await PostgresArgumentsAsync(cluster), measured, concurrency),
                    };
                    Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                        $"round {(round == 0 ? "0 (warm-up, not counted)" : round)}, {Setups[setup]}: {f.OpsPerSecond:N0} ops/s, load average {LoadAverage()}, {ThreadPool.ThreadCount} pool threads"));
                    if (round > 0)
                    {
                        figures[round - 1][setup] = f;
                    }
                    else
                    {
                        warmUpErrors += f.Errors;
                    }
                }
            }
        }
        finally
        {
            Directory.Delete(root, recursive: true);
        }

        Console.WriteLine();
        Console.WriteLine($"load average after: {LoadAverage()}");
        Console.WriteLine("| round | setup | ops/s | p50 ms | p99 ms | ops/s ÷ (a) | p99 ÷ (a) | audit events per commit |");
        Console.WriteLine("|---:|---|---:|---:|---:|---:|---:|---:|");
        for (var round = 0; round < rounds; round++)
        {
            var baseline = figures[round][0];
            for (var setup = 0; setup < Setups.Length; setup++)
            {
                var f = figures[round][setup];
                Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                    $"| {round + 1} | {Setups[setup]} | {f.OpsPerSecond:N0} | {f.P50:F2} | {f.P99:F2} | {f.OpsPerSecond / baseline.OpsPerSecond:F2} | {f.P99 / baseline.P99:F2} | {f.EventsPerCommit:F1} |"));
            }
        }

        // Figures from a run with errors are not figures: fail it.
        var failed = warmUpErrors + figures.SelectMany(r => r).Sum(f => f.Errors);
        if (failed > 0)
        {
            Console.Error.WriteLine($"storage: {failed} calls failed");
            return 1;
        }

        return 0;
    }

    /// <summary>The ceremony's import of one fresh domain key into every token: one deployment.</summary>
    internal static void ImportOneDomainKey(IEnumerable<BenchToken> tokens)
    {
        var domainKey = RandomNumberGenerator.GetBytes(32);
        try
        {
            foreach (var token in tokens)
            {
                using var ceremony = HsmCeremonySession.Open(token.Options, Encoding.UTF8.GetBytes(token.Pin));
                ceremony.ImportDomainKey(domainKey, "kms-domain-key", DomainKeyId);
            }
        }
        finally
        {
            CryptographicOperations.ZeroMemory(domainKey);
        }
    }

    internal static async Task<string[]> PostgresArgumentsAsync(PostgresCluster cluster) =>
        ["--Storage:Provider=postgres", $"--Storage:Postgres:ConnectionString={await cluster.CreateDatabaseAsync()}"];

    private static async Task<Figures> MeasureAsync(string root, string config, BenchToken[] tokens, string[] storage, TimeSpan duration, int concurrency)
    {
        var nodes = new List<WebApplication>();
        try
        {
            var (caCertificate, apiToken) = await StartNodesAsync(nodes, root, config, tokens, storage, [], (_, _) => { });
            long commits = 0, events = 0;
            foreach (var node in nodes)
            {
                node.Services.GetRequiredService<Kms.Core.Services.AuditLog>().BatchWritten += (size, _) =>
                {
                    Interlocked.Increment(ref commits);
                    Interlocked.Add(ref events, size);
                };
            }

            using var client = new KmsClient(new KmsClientOptions
            {
                Endpoints = nodes.Select(n => KmsServerApp.BoundAddresses(n).Single()).ToList(),
                CaCertificatePath = caCertificate,
                ApiToken = apiToken,
            });
            var key = await client.CreateKeyAsync($"tenants/{Tenant}", "storage");
            var ciphertexts = new byte[CiphertextPool][];
            for (var i = 0; i < ciphertexts.Length; i++)
            {
                ciphertexts[i] = (await client.GenerateDataKeyWithoutPlaintextAsync(key.Name, Context)).Ciphertext;
            }

            // Half the calls GenerateDataKey, half Decrypt (of a data key made above).
            long sequence = 0;
            async Task Call()
            {
                var n = Interlocked.Increment(ref sequence);
                if (n % 2 == 0)
                {
                    using var dataKey = await client.GenerateDataKeyAsync(key.Name, Context);
                }
                else
                {
                    using var plaintext = await client.DecryptAsync(ciphertexts[n / 2 % CiphertextPool], Context);
                }
            }

            await LoadGenerator.ClosedLoopAsync(concurrency, WarmUp, Call);
            var (commitsBefore, eventsBefore) = (Interlocked.Read(ref commits), Interlocked.Read(ref events));
            var (opsPerSecond, p50, p99, errors) = await LoadGenerator.ClosedLoopAsync(concurrency, duration, Call);
            var perCommit = (double)(Interlocked.Read(ref events) - eventsBefore) / Math.Max(1, Interlocked.Read(ref commits) - commitsBefore);
            return new Figures(opsPerSecond, p50, p99, perCommit, errors);
        }
        finally
        {
            foreach (var node in nodes)
            {
                await node.StopAsync();
                await node.DisposeAsync();
            }
        }
    }

    /// <summary>
    /// Starts one production-mode node per token into <paramref name="nodes"/> (the caller stops
    /// them, also after a failure here): one deployment, one CA — the client trusts every node
    /// through the first node's ca.crt — bootstrapped on the first. Returns that CA certificate
    /// and the API token of a key-manager/key-user service principal.
    /// </summary>
    internal static async Task<(string CaCertificate, string ApiToken)> StartNodesAsync(
        List<WebApplication> nodes, string root, string config, BenchToken[] tokens, string[] storage, string[] extraArgs, Action<int, IServiceCollection> configureServices)
    {
        var first = Path.Combine(root, "node-" + tokens[0].Options.TokenLabel);
        var caCertificate = Path.Combine(first, "tls", "ca.crt");
        string? apiToken = null;
        foreach (var token in tokens)
        {
            var dataDir = Path.Combine(root, "node-" + token.Options.TokenLabel);
            if (nodes.Count > 0)
            {
                Directory.CreateDirectory(Path.Combine(dataDir, "tls"));
                foreach (var file in Directory.GetFiles(Path.Combine(first, "tls")))
                {
                    File.Copy(file, Path.Combine(dataDir, "tls", Path.GetFileName(file)));
                }
            }

            var index = nodes.Count;
            nodes.Add(await StartNodeAsync(token, dataDir, config, [.. storage, .. extraArgs], services => configureServices(index, services)));

            // Bootstrapped before the next node starts, which then finds an admin and issues no credential of its own.
            apiToken ??= await BootstrapAsync(KmsServerApp.BoundAddresses(nodes[0]).Single(), caCertificate, Path.Combine(first, "bootstrap.token"));
        }

        return (caCertificate, apiToken!);
    }

    /// <summary>A production-mode node (no <c>--dev</c>) on <paramref name="token"/>, on an ephemeral 127.0.0.1 port.</summary>
    private static async Task<WebApplication> StartNodeAsync(BenchToken token, string dataDir, string config, string[] args, Action<IServiceCollection> configureServices)
    {
        var (certificate, tlsKey) = DevCertificates.Ensure(Path.Combine(dataDir, "tls"), TimeProvider.System);
        var app = await KmsServerApp.BuildAsync(
        [
            "--urls=https://127.0.0.1:0",
            $"--Kms:DataDir={dataDir}",
            $"--Kms:TlsCertificatePath={certificate}",
            $"--Kms:TlsKeyPath={tlsKey}",
            $"--Hsm:TokenLabel={token.Options.TokenLabel}",
            $"--Hsm:PinFile={token.Options.PinFile}",
            $"--Hsm:DomainKeyId={DomainKeyId}",
            $"--Hsm:ModuleEnvironment:SOFTHSM2_CONF={config}",

            // The tenant quota (default 5,000 ops/s) would cap the loop; it is still metered.
            "--Kms:Quotas:OperationsPerSecond=10000000", "--Kms:Quotas:Burst=10000000",
            "--Kms:Quotas:PrincipalsWithoutTenant:CallsPerSecond=10000000", "--Kms:Quotas:PrincipalsWithoutTenant:Burst=10000000",
            "--Kms:Quotas:OtherCallsPerSecond=10000000", "--Kms:Quotas:OtherCallsBurst=10000000",
            .. args,
        ], logging => logging.MinimumLevel.Warning(), configureServices);
        await app.StartAsync();
        return app;
    }

    /// <summary>
    /// The deployment's first start: the one-time bootstrap credential makes an admin, which
    /// makes the tenant and a service principal with key-manager and key-user; returns its token.
    /// </summary>
    private static async Task<string> BootstrapAsync(Uri address, string caCertificate, string bootstrapTokenPath)
    {
        string adminToken;
        using (var bootstrap = new KmsClient(new KmsClientOptions { Endpoint = address, CaCertificatePath = caCertificate, ApiTokenPath = bootstrapTokenPath }))
        {
            adminToken = (await bootstrap.BootstrapAsync("token:bench-admin")).SessionToken;
        }

        using var admin = new KmsClient(new KmsClientOptions { Endpoint = address, CaCertificatePath = caCertificate, ApiToken = adminToken });
        await admin.CreateTenantAsync(Tenant);
        await admin.CreatePrincipalAsync("token:bench", $"tenants/{Tenant}");
        await admin.SetRoleBindingAsync("token:bench", "key-manager", $"tenants/{Tenant}");
        await admin.SetRoleBindingAsync("token:bench", "key-user", $"tenants/{Tenant}");
        return (await admin.CreateApiTokenAsync("token:bench", "SERVICE")).Secret;
    }

    private static string LoadAverage() =>
        File.Exists("/proc/loadavg") ? string.Join(' ', File.ReadAllText("/proc/loadavg").Split(' ').Take(3)) : "unknown";

    private sealed record Figures(double OpsPerSecond, double P50, double P99, double EventsPerCommit, int Errors);
}
