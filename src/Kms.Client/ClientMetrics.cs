using System.Diagnostics.Metrics;

namespace Kms.Client;

/// <summary>
/// The client library's one meter, <c>Kms.Client</c> (an application collects it with a
/// <see cref="MeterListener"/> or OpenTelemetry's <c>AddMeter("Kms.Client")</c>), and its
/// instruments (docs/observability.md).
/// </summary>
internal static class ClientMetrics
{
    /// <summary>The meter's name.</summary>
    public const string MeterName = "Kms.Client";

    private static readonly Meter Meter = new(MeterName);

    /// <summary>Data-key cache lookups, tagged <c>cache</c> and <c>result</c>.</summary>
    public static readonly Counter<long> DataKeyCacheLookups = Meter.CreateCounter<long>(
        "kms.client.data_key_cache.lookups",
        description: "Data-key cache lookups by cache (encrypt, decrypt) and result (hit, miss, coalesced)");

    /// <summary>Unary attempts not sent for want of a place (<see cref="KmsClientOptions.MaxConcurrentCalls"/>).</summary>
    public static readonly Counter<long> CallsShed = Meter.CreateCounter<long>(
        "kms.client.calls_shed",
        unit: "{attempt}",
        description: "Unary attempts not sent because MaxConcurrentCalls attempts were on the wire to the endpoint");
}
