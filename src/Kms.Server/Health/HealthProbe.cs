using System.Security.Cryptography.X509Certificates;
using Grpc.Core;
using Grpc.Health.V1;
using Grpc.Net.Client;
using Kms.Server.Hosting;
using Microsoft.AspNetCore.Http;

namespace Kms.Server.Health;

/// <summary>
/// <c>Kms.Server --health-probe</c>: asks the server on this host for the <c>grpc.health.v1</c>
/// status of the whole service and exits 0 when it is <c>SERVING</c>, 1 otherwise. It is the
/// container image's HEALTHCHECK: the ASP.NET runtime image has no curl, wget or grpc_health_probe.
/// </summary>
/// <remarks>
/// <para>It reads the configuration sources the server does (<c>appsettings.json</c> in the
/// working directory, <c>ASPNETCORE_</c>-prefixed and plain environment variables, the command
/// line) and calls the first listen address, a wildcard host (<c>0.0.0.0</c>,
/// <c>[::]</c>, <c>*</c>, <c>+</c>) replaced by loopback. It opens neither the HSM nor the
/// database, and sends no credential (health needs none).</para>
/// <para>The server is trusted only if it presents exactly the certificate it is configured to
/// serve, the first of <c>Kms:TlsCertificatePath</c> (or of dev mode's <c>{DataDir}/tls/server.crt</c>;
/// the server refuses a file whose first certificate is not that of its key, and the
/// intermediates after it are not compared), whatever names that certificate carries: the probe
/// dials its own host by address, which a production certificate need not name.</para>
/// </remarks>
internal static class HealthProbe
{
    /// <summary>The command-line switch that runs the probe instead of the server.</summary>
    public const string Switch = "--health-probe";

    private static readonly TimeSpan Deadline = TimeSpan.FromSeconds(5);

    /// <summary>Runs the probe; returns the process exit code (0 serving, 1 anything else).</summary>
    public static async Task<int> RunAsync(string[] args, TextWriter output, TextWriter error)
    {
        // The sources WebApplication.CreateBuilder reads, without building a host: a probe runs
        // every 30 s, and WebApplication.CreateBuilder alone costs about a second of CPU.
        var configuration = new ConfigurationBuilder()
            .SetBasePath(Directory.GetCurrentDirectory())
            .AddJsonFile("appsettings.json", optional: true)
            .AddEnvironmentVariables("ASPNETCORE_")
            .AddEnvironmentVariables()
            .AddCommandLine(args.Where(a => a is not "--dev" and not Switch).ToArray())
            .Build();
        var options = configuration.GetSection("Kms").Get<KmsServerOptions>() ?? new KmsServerOptions();
        options.DevMode |= args.Contains("--dev");

        try
        {
            var address = ProbeAddress(ListenAddresses.Validate(configuration["urls"])[0]);
            // CreateFromPem reads the first certificate of the file: the server's own.
            using var expected = X509Certificate2.CreateFromPem(File.ReadAllText(CertificatePath(options)));
            using var handler = new SocketsHttpHandler();
            handler.SslOptions.RemoteCertificateValidationCallback = (_, presented, _, _) =>
                presented is not null && presented.GetRawCertData().AsSpan().SequenceEqual(expected.RawDataMemory.Span);
            using var channel = GrpcChannel.ForAddress(address, new GrpcChannelOptions { HttpHandler = handler });
            var response = await new global::Grpc.Health.V1.Health.HealthClient(channel)
                .CheckAsync(new HealthCheckRequest(), deadline: DateTime.UtcNow + Deadline);
            await output.WriteLineAsync($"kms: health probe: {address}: {response.Status}");
            return response.Status == HealthCheckResponse.Types.ServingStatus.Serving ? 0 : 1;
        }
        catch (RpcException e)
        {
            await error.WriteLineAsync($"kms: health probe: {e.StatusCode}: {e.Status.Detail}");
            return 1;
        }
        catch (Exception e) when (e is InvalidOperationException or IOException or UnauthorizedAccessException or System.Security.Cryptography.CryptographicException)
        {
            await error.WriteLineAsync($"kms: health probe: {e.Message}");
            return 1;
        }
    }

    private static Uri ProbeAddress(string url)
    {
        var address = BindingAddress.Parse(url);
        var host = address.Host switch
        {
            "0.0.0.0" or "*" or "+" => "127.0.0.1",
            "[::]" => "[::1]",
            var named => named,
        };
        if (address.Port == 0)
        {
            throw new InvalidOperationException($"listen address '{url}' has port 0: the probe cannot know which port the server chose");
        }

        return new Uri($"https://{host}:{address.Port}");
    }

    private static string CertificatePath(KmsServerOptions options) =>
        options.TlsCertificatePath is { Length: > 0 } path ? path
        : options.DevMode ? Path.Combine(options.DataDir, "tls", "server.crt")
        : throw new InvalidOperationException("set Kms:TlsCertificatePath (the certificate the server serves), or probe a dev-mode server with --dev");
}
