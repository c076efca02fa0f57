using Kms.Core.Ports;
using Microsoft.Extensions.Diagnostics.HealthChecks;

namespace Kms.Server.Health;

/// <summary>
/// Concurrent health checks share the one probe in flight instead of each starting their own:
/// health needs no credential, so a flood of checks would otherwise take an HSM session or a
/// database connection each, competing with real calls. A check that arrives when no probe is
/// running starts a fresh one, so its answer is never older than the moment it asked — a
/// failure is reported by the first check after it, as before.
/// </summary>
internal abstract class SingleFlightHealthCheck : IHealthCheck
{
    private readonly Lock _lock = new();

    private Task<HealthCheckResult>? _running;

    private int _waiting;

    /// <summary>Test hook: checks waiting for a probe's answer right now.</summary>
    internal int Waiting => Volatile.Read(ref _waiting);

    public async Task<HealthCheckResult> CheckHealthAsync(HealthCheckContext context, CancellationToken cancellationToken = default)
    {
        Task<HealthCheckResult> probe;
        lock (_lock)
        {
            if (_running is not { IsCompleted: false })
            {
                // Not the caller's token: a caller that gives up must not fail the others
                // sharing the probe. The probe is bounded by the HSM's call timeout and the
                // database's command timeout.
                _running = Task.Run(() => ProbeAsync(CancellationToken.None), CancellationToken.None);
            }

            probe = _running;
        }

        Interlocked.Increment(ref _waiting);
        try
        {
            return await probe.WaitAsync(cancellationToken).ConfigureAwait(false);
        }
        finally
        {
            Interlocked.Decrement(ref _waiting);
        }
    }

    /// <summary>The probe itself.</summary>
    protected abstract Task<HealthCheckResult> ProbeAsync(CancellationToken cancellationToken);
}

/// <summary>
/// The HSM answers (one random byte: cheap, and it needs a logged-in session) — the deployment's
/// adapter and each residency region's, which has sessions and a recovery of its own: a region
/// whose adapter cannot recover answers every call for its keys UNAVAILABLE.
/// </summary>
internal sealed class HsmHealthCheck(IHsm hsm) : SingleFlightHealthCheck
{
    protected override async Task<HealthCheckResult> ProbeAsync(CancellationToken cancellationToken)
    {
        foreach (var (name, adapter) in hsm.Regions.Order(StringComparer.Ordinal).Select(r => ($"HSM region {r}", hsm.ForRegion(r))).Prepend(("HSM", hsm)))
        {
            try
            {
                await adapter.GenerateRandomAsync(1, cancellationToken);
            }
            catch (Core.Errors.KmsException e)
            {
                return HealthCheckResult.Unhealthy($"{name} unavailable", e);
            }
        }

        return HealthCheckResult.Healthy();
    }
}

/// <summary>
/// The audit log can be written: not <see cref="FailuresInARow"/> group commits failed in a row,
/// the latest less than <see cref="Hold"/> ago. A database that still reads but cannot write (a
/// full disk, a standby the connection string reaches after a failover) passes the store's read
/// probe while every audited call is answered UNAVAILABLE. One failed commit (a lock held a
/// moment too long) does not drain a node; and the hold is short and bounded, without a probe
/// write: a node out of the rotation gets no calls, so no commit could clear it — after the
/// hold it is served again, and failing commits take it out again.
/// </summary>
internal sealed class AuditWriteHealthCheck(Core.Services.AuditLog audit, TimeProvider time) : IHealthCheck
{
    /// <summary>How long failing audit commits keep the node NOT_SERVING without a later success.</summary>
    public static readonly TimeSpan Hold = TimeSpan.FromSeconds(10);

    /// <summary>How many group commits must fail in a row.</summary>
    public const int FailuresInARow = 3;

    public Task<HealthCheckResult> CheckHealthAsync(HealthCheckContext context, CancellationToken cancellationToken = default) =>
        Task.FromResult(audit.FailedCommitsInARow >= FailuresInARow && audit.LastCommitFailure is { } failed && time.GetUtcNow() - failed < Hold
            ? HealthCheckResult.Unhealthy($"{audit.FailedCommitsInARow} audit commits in a row failed, the latest at {failed:O}: audited calls are answered UNAVAILABLE")
            : HealthCheckResult.Healthy());
}

/// <summary>
/// The audit log signs checkpoints: Unhealthy while it refuses to, because the database's chain
/// no longer passes through the last checkpoint this node signed or read (events removed or
/// rewritten, or a rollback whose <c>checkpoints.jsonl</c> was not moved aside), or through the
/// audit head this node recorded in <c>head.json</c> (the database went back behind it under the
/// running node: a failover that lost commits, a restore under running nodes). Registered under
/// its own gRPC health service name (<see cref="Service"/>), not in the overall one (<c>""</c>):
/// the node still answers correctly and writes every event durably and chained — only its
/// vouching for the chain stops, which is the defence — and every node of a shared database sees
/// the same chain, so draining them for it would turn one database write into the deployment's
/// outage, until an operator acts (a load balancer cannot route around it). The metric
/// <c>kms_audit_checkpoint_signing_refused</c> and events 1311–1313 say it too.
/// </summary>
internal sealed class AuditSigningHealthCheck(Core.Services.AuditLog audit) : IHealthCheck
{
    /// <summary>The check's name, and the gRPC health service that reports it alone.</summary>
    public const string Service = "kms.audit.checkpoints";

    /// <summary>The tag that keeps a check out of the overall service's status.</summary>
    public const string NotInOverall = "not-in-overall";

    public Task<HealthCheckResult> CheckHealthAsync(HealthCheckContext context, CancellationToken cancellationToken = default) =>
        Task.FromResult(audit.CheckpointRefusedSince is { } since
            ? HealthCheckResult.Unhealthy($"audit checkpoints not signed since {since:O}: the audit chain in the database no longer passes through the last checkpoint this node signed or read, or the audit head it recorded (head.json) (events 1309, 1311; docs/audit-format.md)")
            : HealthCheckResult.Healthy());
}

/// <summary>The metadata store answers a trivial query.</summary>
internal sealed class StoreHealthCheck(IKeyStore store) : SingleFlightHealthCheck
{
    protected override async Task<HealthCheckResult> ProbeAsync(CancellationToken cancellationToken)
    {
        try
        {
            await store.CheckHealthAsync(cancellationToken);
            return HealthCheckResult.Healthy();
        }
        catch (Core.Errors.KmsException e)
        {
            return HealthCheckResult.Unhealthy("database unavailable", e);
        }
    }
}

/// <summary>
/// Runs every second (<see cref="HealthCheckPublisherOptions"/>), which is what moves
/// <c>grpc.health.v1</c>'s <c>Watch</c> streams after their first answer (the framework's default
/// is every 30 s), and logs each change of the overall status, or of which checks fail, once
/// (events 1140 and 1141, with the failing checks' errors). The framework's
/// own per-check error log, one per failing check per run with its stack, is turned off: during
/// an outage it wrote several lines a second, and anyone may call <c>Check</c>.
/// </summary>
internal sealed partial class HealthTransitionPublisher(ILogger<HealthTransitionPublisher> logger) : IHealthCheckPublisher
{
    public static readonly TimeSpan Period = TimeSpan.FromSeconds(1);

    private string? _last;

    public Task PublishAsync(HealthReport report, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(report);

        // Published one run at a time by the framework's timer. A change is the overall status
        // or which checks fail (the HSM back, the database gone: still NOT_SERVING, but another
        // cause); each is logged once, with the failing checks' errors.
        // Which checks fail, by name: a description may change from run to run (the audit
        // check's names its latest failure's time) and must not make every run a change.
        // Checks of a service of their own (AuditSigningHealthCheck) are not the node's status,
        // and log their own changes (1311, 1313).
        var failing = report.Entries.Where(e => e.Value.Status != HealthStatus.Healthy && !e.Value.Tags.Contains(AuditSigningHealthCheck.NotInOverall))
            .OrderBy(e => e.Key, StringComparer.Ordinal).ToList();
        var state = string.Join(",", failing.Select(e => e.Key));
        if (_last != state)
        {
            if (failing.Count == 0)
            {
                LogServing(logger, _last is null ? "at start" : "again");
            }
            else
            {
                LogNotServing(logger, string.Join("; ", failing.Select(e => $"{e.Key}: {e.Value.Description ?? e.Value.Status.ToString()}{(e.Value.Exception is { } x ? $" ({x.Message})" : "")}")));
            }

            _last = state;
        }

        return Task.CompletedTask;
    }

    [LoggerMessage(EventId = 1140, Level = LogLevel.Information, Message = "health: SERVING {When}")]
    private static partial void LogServing(ILogger logger, string when);

    [LoggerMessage(EventId = 1141, Level = LogLevel.Warning, Message = "health: NOT_SERVING ({Failing})")]
    private static partial void LogNotServing(ILogger logger, string failing);
}
