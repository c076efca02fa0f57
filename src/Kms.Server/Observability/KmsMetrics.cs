using System.Diagnostics.Metrics;
using System.Runtime.CompilerServices;

namespace Kms.Server.Observability;

/// <summary>
/// The server's instruments on the <c>Kms</c> meter (the HSM adapter adds its own to the same
/// meter). Exported for Prometheus as <c>kms_</c> + the instrument name; docs/observability.md
/// lists every series.
/// </summary>
/// <remarks>
/// <para>The scrape endpoint needs no credential, so a tag is a fixed, small set of values
/// chosen by the server — a served method's name, a status code, an alert kind — and never
/// request data: no tenant, key, alias, principal, token or peer address. That keeps the
/// number of series bounded whatever clients send, and keeps the endpoint from telling
/// anyone who uses the service for what.</para>
/// <para>Histograms carry their bucket boundaries as <see cref="InstrumentAdvice{T}"/>;
/// the exporter uses them.</para>
/// </remarks>
public static class KmsMetrics
{
    /// <summary>The meter every Kms instrument belongs to.</summary>
    public const string MeterName = "Kms";

    /// <summary>The method tag of a call to anything but a served method (see <see cref="GrpcRequests"/>).</summary>
    public const string UnknownMethod = "unknown";

    // Sub-millisecond (health, cached-key crypto) to seconds (an HSM or database in trouble).
    private static readonly double[] LatencyBuckets =
        [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10];

    private static readonly Meter Meter = new(MeterName);

    /// <summary>
    /// gRPC calls finished, tagged <c>method</c> (full name such as
    /// <c>/kms.v1.KeyManagementService/Encrypt</c>, or <see cref="UnknownMethod"/>) and
    /// <c>code</c> (final status, e.g. <c>OK</c>, <c>PermissionDenied</c>).
    /// </summary>
    /// <remarks>Recorded only by the metrics interceptor, outermost of all, so a call refused by
    /// authentication, authorization, quota or load shedding counts with the status its caller got.</remarks>
    public static readonly Counter<long> GrpcRequests = Meter.CreateCounter<long>(
        "grpc_requests_total",
        unit: "{call}",
        description: "gRPC calls finished, by method and final status code");

    /// <summary>Time from the call reaching the interceptors to its answer, tagged <c>method</c>.</summary>
    public static readonly Histogram<double> GrpcRequestDuration = Meter.CreateHistogram(
        "grpc_request_duration_seconds",
        unit: "s",
        description: "gRPC call latency inside the server, by method",
        tags: null,
        advice: new InstrumentAdvice<double> { HistogramBucketBoundaries = LatencyBuckets });

    /// <summary>Audit events made durable by one group commit. Record without tags.</summary>
    public static readonly Histogram<int> AuditBatchSize = Meter.CreateHistogram(
        "audit_batch_size",
        unit: "{event}",
        description: "Audit events written by one group commit",
        tags: null,
        advice: new InstrumentAdvice<int> { HistogramBucketBoundaries = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096] });

    /// <summary>
    /// Seconds from an audit event being queued to it being durable (the part of a call's
    /// latency the audit log adds). Record without tags.
    /// </summary>
    public static readonly Histogram<double> AuditLag = Meter.CreateHistogram(
        "audit_lag_seconds",
        unit: "s",
        description: "Time from an audit event being queued to it being durable",
        tags: null,
        advice: new InstrumentAdvice<double> { HistogramBucketBoundaries = LatencyBuckets });

    /// <summary>Audit events made durable. Record without tags.</summary>
    public static readonly Counter<long> AuditEventsWritten = Meter.CreateCounter<long>(
        "audit_events_written_total",
        unit: "{event}",
        description: "Audit events made durable");

    // The audit logs of the servers in this process (one in production; held weakly, so a test's
    // stopped servers drop out), each with its housekeeping's failure log.
    private static readonly ConditionalWeakTable<Core.Services.AuditLog, Audit.HousekeepingFailureLog> AuditLogs = [];

    /// <summary>
    /// 1 while the audit log refuses to sign a checkpoint because the database's chain no longer
    /// passes through the last known one (a rewrite, or a rollback whose record was not moved
    /// aside): until an operator acts, events after it stay unsigned. No tags.
    /// </summary>
    public static readonly ObservableGauge<long> AuditCheckpointSigningRefused = Meter.CreateObservableGauge(
        "audit_checkpoint_signing_refused",
        () => SumAudit((log, _) => log.CheckpointRefusedSince is null ? 0 : 1),
        unit: "{log}",
        description: "1 while audit checkpoints are refused: the chain no longer passes through the last known checkpoint");

    /// <summary>Kinds of audit housekeeping failure going on right now (the refusal included). No tags.</summary>
    public static readonly ObservableGauge<long> AuditHousekeepingFailing = Meter.CreateObservableGauge(
        "audit_housekeeping_failing",
        () => SumAudit((_, failures) => failures.FailingKinds),
        unit: "{kind}",
        description: "Kinds of audit housekeeping failure (refusal counts, SIEM stream, checkpoint) going on right now");

    // The key services whose lifecycle runs in this process (one in production; held weakly).
    private static readonly ConditionalWeakTable<Core.Services.KeyService, object> Lifecycles = [];

    /// <summary>
    /// Due destructions (a key's deletion, or one version's) whose last attempt on this node
    /// failed, each waiting out its back-off before the next (<see cref="Core.Services.KeyService.DestroyDueAsync"/>). No tags.
    /// </summary>
    public static readonly ObservableGauge<long> LifecycleDestructionsFailing = Meter.CreateObservableGauge(
        "lifecycle_destructions_failing",
        () =>
        {
            long sum = 0;
            foreach (var (keys, _) in Lifecycles)
            {
                sum += keys.FailingDestructions;
            }

            return sum;
        },
        unit: "{destruction}",
        description: "Due key and key-version destructions whose last attempt failed, waiting to be tried again");

    /// <summary>
    /// How long a probe waited in the thread pool's queue (where calls wait before any interceptor
    /// when the server is overloaded). Record without tags.
    /// </summary>
    public static readonly Histogram<double> ThreadPoolQueueDelay = Meter.CreateHistogram(
        "thread_pool_queue_delay_seconds",
        unit: "s",
        description: "Time a probe waited in the thread pool's queue (the overload signal)",
        tags: null,
        advice: new InstrumentAdvice<double> { HistogramBucketBoundaries = LatencyBuckets });

    /// <summary>Calls shed with UNAVAILABLE, tagged <c>reason</c>: <c>capacity</c> (calls in flight), <c>tenant</c> (the caller's tenant's calls in flight) or <c>queue_delay</c>.</summary>
    public static readonly Counter<long> CallsShed = Meter.CreateCounter<long>(
        "calls_shed_total",
        unit: "{call}",
        description: "Calls shed with UNAVAILABLE, by reason");

    /// <summary>Security alerts raised, tagged <c>kind</c>; only through <see cref="RecordSecurityAlert"/>.</summary>
    private static readonly Counter<long> SecurityAlerts = Meter.CreateCounter<long>(
        "security_alerts_total",
        unit: "{alert}",
        description: "Security alerts raised, by kind");

    /// <summary>Reports <paramref name="audit"/> and its housekeeping's failures in the audit gauges.</summary>
    internal static void Track(Core.Services.AuditLog audit, Audit.HousekeepingFailureLog failures) => AuditLogs.AddOrUpdate(audit, failures);

    /// <summary>Reports <paramref name="keys"/>' failing destructions in <see cref="LifecycleDestructionsFailing"/>.</summary>
    internal static void Track(Core.Services.KeyService keys) => Lifecycles.AddOrUpdate(keys, Lifecycles);

    private static long SumAudit(Func<Core.Services.AuditLog, Audit.HousekeepingFailureLog, int> value)
    {
        long sum = 0;
        foreach (var (audit, failures) in AuditLogs)
        {
            sum += value(audit, failures);
        }

        return sum;
    }

    /// <summary>Counts one security alert (<c>kms_security_alerts_total{kind}</c>).</summary>
    /// <remarks>The kind is an enum so the label's values are a fixed set the server defines: a
    /// principal, tenant or key never becomes one. Say who and what in the audit log.</remarks>
    public static void RecordSecurityAlert(SecurityAlertKind kind) =>
        SecurityAlerts.Add(1, new KeyValuePair<string, object?>("kind", LabelOf(kind)));

    /// <summary>The <c>kind</c> label of an alert kind.</summary>
    public static string LabelOf(SecurityAlertKind kind) => kind switch
    {
        SecurityAlertKind.Refusals => "refusals",
        SecurityAlertKind.DecryptFailures => "decrypt_failures",
        SecurityAlertKind.Volume => "volume",
        _ => "other",
    };
}

/// <summary>What a security alert is about (the <c>kind</c> label of <c>kms_security_alerts_total</c>).</summary>
/// <remarks>Add a member (and its label in <see cref="KmsMetrics.LabelOf"/>) for a new kind of alert.</remarks>
public enum SecurityAlertKind
{
    /// <summary>Not a kind: the default value is never recorded as such.</summary>
    Unspecified = 0,

    /// <summary>Refused calls (unauthenticated, denied, another tenant's) of one principal or address crossed the threshold in a window.</summary>
    Refusals,

    /// <summary>Failed decryptions of one principal crossed the threshold in a window.</summary>
    DecryptFailures,

    /// <summary>One principal's calls crossed the volume threshold in a window.</summary>
    Volume,
}
