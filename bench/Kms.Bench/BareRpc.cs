using System.Net.Security;
using System.Security.Authentication;
using System.Security.Cryptography.X509Certificates;
using Google.Protobuf.WellKnownTypes;
using Grpc.Core;
using Grpc.Core.Interceptors;
using Grpc.Net.Client;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Server.Kestrel.Core;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;

namespace Kms.Bench;

/// <summary>
/// The baseline of the gRPC figures: an empty unary RPC (Empty in, Empty out) on the same server
/// stack as the KMS — Kestrel, HTTP/2 only, TLS 1.3 with the same certificate, grpc-dotnet, in
/// the same process — called through a channel built as <c>KmsClient</c> builds its own
/// (SocketsHttpHandler, TLS 1.3, the same CA, a bearer header). What it leaves out is exactly
/// what the KMS adds: authentication, authorization, quotas, audit, metrics, the store and the HSM.
/// </summary>
[BindServiceMethod(typeof(BareRpc), nameof(BindService))]
#pragma warning disable CA1852 // grpc-dotnet binds only virtual handlers declared on the bound type
public class BareRpc
{
    internal static readonly Method<Empty, Empty> EmptyMethod = new(
        MethodType.Unary,
        "kms.bench.Bare",
        "Ping",
        Marshallers.Create(static (Empty _) => [], static _ => new Empty()),
        Marshallers.Create(static (Empty _) => [], static _ => new Empty()));

    private static readonly Task<Empty> Answer = Task.FromResult(new Empty());

    public static void BindService(ServiceBinderBase binder, BareRpc? service) =>
        binder.AddMethod(EmptyMethod, service is null ? null! : service.Ping);

    public virtual Task<Empty> Ping(Empty request, ServerCallContext context) => Answer;

    /// <summary>Starts the bare server on an ephemeral loopback port with the KMS data dir's TLS certificate.</summary>
    internal static async Task<(WebApplication App, Uri Address)> StartAsync(string root)
    {
        var builder = WebApplication.CreateBuilder();
        builder.Logging.ClearProviders();
        var certificate = X509Certificate2.CreateFromPemFile(Path.Combine(root, "tls", "server.crt"), Path.Combine(root, "tls", "server.key"));
        builder.WebHost.UseUrls("https://127.0.0.1:0");
        builder.WebHost.ConfigureKestrel(kestrel =>
        {
            kestrel.AddServerHeader = false;
            kestrel.ConfigureEndpointDefaults(listen => listen.Protocols = HttpProtocols.Http2);
            kestrel.ConfigureHttpsDefaults(https =>
            {
                https.ServerCertificateSelector = (_, _) => certificate;
                https.SslProtocols = SslProtocols.Tls13;
            });
        });
        builder.Services.AddGrpc();
        var app = builder.Build();
        app.MapGrpcService<BareRpc>();
        await app.StartAsync();
        var address = new Uri(app.Urls.Single());
        return (app, address);
    }

    /// <summary>One bare call as the bench's developer (the data dir's token), and the channel to dispose.</summary>
    internal static (Func<Task> Call, GrpcChannel Channel) CallAsDeveloper(Uri address, string root)
    {
        var token = File.ReadAllText(Path.Combine(root, "tokens", "developer.token")).Trim();
        var (invoker, channel) = Connect(address, root, token);
        var empty = new Empty();
        return (async () => await invoker.AsyncUnaryCall(EmptyMethod, null, default, empty), channel);
    }

    /// <summary>A call invoker to <paramref name="address"/> built as KmsClient builds its channels.</summary>
    internal static (CallInvoker Invoker, GrpcChannel Channel) Connect(Uri address, string root, string token)
    {
        var ca = X509Certificate2.CreateFromPem(File.ReadAllText(Path.Combine(root, "tls", "ca.crt")));
        var handler = new SocketsHttpHandler
        {
            SslOptions = new SslClientAuthenticationOptions
            {
                EnabledSslProtocols = SslProtocols.Tls13,
                CertificateChainPolicy = new X509ChainPolicy
                {
                    TrustMode = X509ChainTrustMode.CustomRootTrust,
                    RevocationMode = X509RevocationMode.NoCheck,
                    CustomTrustStore = { ca },
                },
            },
            EnableMultipleHttp2Connections = true,
            PooledConnectionIdleTimeout = TimeSpan.FromMinutes(5),
        };
        var channel = GrpcChannel.ForAddress(address, new GrpcChannelOptions
        {
            HttpClient = new HttpClient(handler) { Timeout = Timeout.InfiniteTimeSpan },
            DisposeHttpClient = true,
        });
        var headers = new Metadata { { "authorization", "Bearer " + token } };
        return (channel.CreateCallInvoker().Intercept(metadata =>
        {
            var copy = new Metadata();
            foreach (var entry in metadata)
            {
                copy.Add(entry);
            }

            foreach (var entry in headers)
            {
                copy.Add(entry);
            }

            return copy;
        }), channel);
    }
}
