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

    /// <summary>The <c>by</c> tag of an attempt the client did not send (<see cref="KmsClientOptions.MaxConcurrentCalls"/>).</summary>
    public static readonly KeyValuePair<string, object?> ShedByClient = new("by", "client");

    /// <summary>The <c>by</c> tag of an attempt a server answered shed (UNAVAILABLE with <c>kms-shed</c>: full, none of the call ran).</summary>
    public static readonly KeyValuePair<string, object?> ShedByServer = new("by", "server");

    /// <summary>Unary attempts shed, tagged <c>by</c>: <c>client</c> (not sent for want of a place) or <c>server</c> (answered shed).</summary>
    public static readonly Counter<long> CallsShed = Meter.CreateCounter<long>(
        "kms.client.calls_shed",
        unit: "{attempt}",
        description: "Unary attempts shed: by the client (MaxConcurrentCalls attempts were on the wire to the endpoint; not sent) or by the server (it was full; none of the call ran)");

    /// <summary>
    /// Attempts sent again after waiting out the <c>google.rpc.RetryInfo</c> delay of a RESOURCE_EXHAUSTED
    /// (<see cref="KmsRetryOptions.MaxRetryInfoDelay"/>): one per wait that ended and was followed by an
    /// attempt; none for a refusal returned to the caller, nor for a wait the caller cancelled. No tags
    /// (no tenant, key or principal).
    /// </summary>
    public static readonly Counter<long> QuotaRetries = Meter.CreateCounter<long>(
        "kms.client.quota_retries",
        unit: "{attempt}",
        description: "Attempts sent again after waiting out the RetryInfo delay of a RESOURCE_EXHAUSTED (a used-up tenant quota or call rate, or a client address past its failed authentications; none of the refused attempt ran)");
}
