using System.Diagnostics.Metrics;
using Kms.Server.Hosting;
using Microsoft.AspNetCore.Hosting.Server;
using Microsoft.AspNetCore.Hosting.Server.Features;
using Microsoft.AspNetCore.Server.Kestrel.Core;
using Prometheus;
using Serilog;

namespace Kms.Server.Observability;

/// <summary>
/// The Prometheus scrape endpoint: <c>GET /metrics</c>, plain HTTP/1.1, on a listener of its
/// own (<c>Kms:MetricsUrl</c>), never on a gRPC address.
/// </summary>
/// <remarks>
/// <para>The endpoint is a second, minimal Kestrel server in the process, not a route of the
/// gRPC server: the two share no listener and no pipeline, so <c>/metrics</c> cannot be
/// reached on a gRPC port (whatever Host header a client sends — <c>RequireHost</c> would
/// match that header, which the client writes) and no gRPC service can be reached on the
/// metrics port. It also keeps the gRPC listeners exactly as <c>--urls</c> binds them, with
/// their HTTP/2-only, TLS 1.3 defaults, while scrapers get HTTP/1.1.</para>
/// <para>Each server has its own registry, holding only the <c>Kms</c> meter and the process
/// and runtime collectors: other meters in the process (ASP.NET Core's, Kestrel's,
/// HttpClient's) carry routes and addresses and are not exported.</para>
/// </remarks>
internal static class MetricsEndpoint
{
    /// <summary>The scrape path.</summary>
    public const string Path = "/metrics";

    // The exporter drops a series not updated for this long, and a dropped counter restarts
    // from zero. Our series are a fixed, small set, so nothing needs dropping: the longest the
    // exporter accepts (one day) keeps an idle method's counter.
    private static readonly TimeSpan SeriesLifetime = TimeSpan.FromDays(1);

    /// <summary>Adds the metrics server, started and stopped with the gRPC server (its drain at stop within the gRPC server's, <see cref="ShutdownDrain"/>).</summary>
    public static void AddServices(IServiceCollection services, string url, Serilog.ILogger logger)
    {
        services.AddSingleton(provider => new MetricsServer(url, logger, provider.GetRequiredService<ShutdownDrain>()));
        services.AddHostedService(provider => provider.GetRequiredService<MetricsServer>());
    }

    /// <summary>The metrics listener: its own registry, fed by the <c>Kms</c> meter, and its own Kestrel.</summary>
    internal sealed class MetricsServer : IHostedService, IAsyncDisposable
    {
        private readonly CollectorRegistry _registry = Metrics.NewCustomRegistry();
        private readonly IDisposable _adapter;
        private readonly WebApplication _app;

        public MetricsServer(string url, Serilog.ILogger logger, ShutdownDrain drain)
        {
            DotNetStats.Register(_registry);
            _adapter = MeterAdapter.StartListening(new MeterAdapterOptions
            {
                Registry = _registry,

                // The options' factory defaults to the global registry's, and it wins over Registry.
                MetricFactory = Metrics.WithCustomRegistry(_registry),
                InstrumentFilterPredicate = instrument => instrument.Meter.Name == KmsMetrics.MeterName,
                ResolveHistogramBuckets = BucketsOf,
                MetricsExpireAfter = SeriesLifetime,
            });

            // An empty builder: no configuration sources, so nothing (ASPNETCORE_URLS included)
            // adds an address or a behaviour behind this listener's back.
            var builder = WebApplication.CreateEmptyBuilder(new WebApplicationOptions());
            builder.Services.AddSerilog(logger);
            builder.WebHost.UseKestrelCore().ConfigureKestrel(kestrel =>
            {
                kestrel.AddServerHeader = false;
                ListenAddresses.ListenMetrics(kestrel, url, listen => listen.Protocols = HttpProtocols.Http1);
            });

            // Stopped after the gRPC listener and before the audit and the lifecycle's last steps:
            // unbounded, one scraper's request never finished (its headers begun: Kestrel waits
            // 30 s for the rest) held the stop until the host's stop time ran out, and those steps
            // ran on a cancelled token. It drains within the gRPC listener's drain instead.
            BoundedDrainServer.Wrap(builder.Services, "metrics", "Kms:MetricsUrl", url, drain);
            _app = builder.Build();
            _app.UseMetricServer(settings => settings.Registry = _registry, Path);
            _app.Run(context =>
            {
                context.Response.StatusCode = StatusCodes.Status404NotFound;
                return Task.CompletedTask;
            });
        }

        /// <summary>Where the started listener is bound (the real port when 0 was asked for).</summary>
        public Uri? Address =>
            _app.Services.GetRequiredService<IServer>().Features.Get<IServerAddressesFeature>()?.Addresses.Select(a => new Uri(a)).FirstOrDefault();

        public Task StartAsync(CancellationToken cancellationToken) => _app.StartAsync(cancellationToken);

        public Task StopAsync(CancellationToken cancellationToken) => _app.StopAsync(cancellationToken);

        public async ValueTask DisposeAsync()
        {
            _adapter.Dispose();
            await _app.DisposeAsync();
        }

        // prometheus-net 8 ignores instrument advice; every Kms histogram declares its buckets there.
        private static double[] BucketsOf(Instrument instrument) => instrument switch
        {
            Histogram<double> { Advice.HistogramBucketBoundaries: { } buckets } => [.. buckets],
            Histogram<int> { Advice.HistogramBucketBoundaries: { } buckets } => [.. buckets.Select(b => (double)b)],
            Histogram<long> { Advice.HistogramBucketBoundaries: { } buckets } => [.. buckets.Select(b => (double)b)],
            _ => MeterAdapterOptions.DefaultHistogramBuckets,
        };
    }
}
