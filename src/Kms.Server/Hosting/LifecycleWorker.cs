using Kms.Core.Ports;
using Kms.Core.Services;

namespace Kms.Server.Hosting;

/// <summary>
/// The lifecycle's background work, on a timer driven by <see cref="TimeProvider"/> (so tests
/// control it): scheduled rotations, destructions whose waiting period ended, usage flushes,
/// keys of offboarded tenants a DeleteTenant that failed part way did not reach; and rotations
/// of keys whose primary version reached the soft GCM usage bound.
/// </summary>
/// <remarks>
/// With several nodes (PostgreSQL) the deployment-wide jobs run on the node holding the
/// <see cref="ILeaderLease"/>; every node flushes its own usage counts and rotates keys its own
/// encryptions wore out. A node that refuses audit checkpoints stands aside for the jobs as well
/// (one lease; a node with another that signs leaves it everything), and runs them when alone.
/// </remarks>
internal sealed partial class LifecycleWorker(
    KeyService keys,
    AccessService access,
    AuditLog audit,
    UsageCounter usage,
    LifecycleClock clock,
    TrustedTime trustedTime,
    TimeProvider time,
    LifecycleWorkerOptions options,
    ILeaderLease lease,
    IChangeFeed changes,
    IKeyStore store,
    ILogger<LifecycleWorker> logger) : BackgroundService
{
    private long? _clockReported;
    private bool _leaseLeftReported;

    /// <summary>
    /// One pass: usage flush and the floor of <see cref="TrustedTime"/> (on every node: the time
    /// the leader recorded, PostgreSQL's clock); then, on the leader, due destructions, pending
    /// erasure, import-job expiry, offboarding sweep, due rotations, audit retention — each on
    /// its own, so one failing job (or key) does not hold the others back.
    /// Failures are logged and retried at the next pass.
    /// </summary>
    public async Task RunOnceAsync(CancellationToken cancellationToken)
    {
        await RunJobAsync("usage flush", async () =>
        {
            await usage.FlushAsync(cancellationToken);
            return 0;
        });
        await RunJobAsync("trusted time floor", async () =>
        {
            await trustedTime.RefreshAsync(cancellationToken);
            return 0;
        });
        await RunJobAsync("node name", async () =>
        {
            // Taken at start (KmsServerApp); a session lost since let it go: taken again, or said who has it.
            if (store is Kms.Storage.Postgres.PostgresStore postgres && await postgres.KeepNodeNameAsync(cancellationToken) is { } holder)
            {
                LogNodeNameTaken(logger, holder);
            }

            return 0;
        });
        // One lease for all the deployment-wide work: a node that refuses audit checkpoints (its
        // own record) leaves the lifecycle jobs too to a node ready to lead, and retention, which
        // it would not run (AuditLog.PruneAsync); alone, it runs them.
        var refusedSince = audit.CheckpointRefusedSince;
        var held = await lease.HoldAsync(standAside: refusedSince is not null, cancellationToken);
        var left = lease is Kms.Storage.Postgres.PostgresLeaderLease { LeftToAnotherNode: true };
        if (left && !_leaseLeftReported && refusedSince is { } since)
        {
            LogLeaseLeft(logger, since);
        }

        _leaseLeftReported = left;
        if (!held)
        {
            // The leader reports the deployment's failing destructions (recorded in the store): a
            // node that lost the lease, or never held it, reports 0, so that a sum over the nodes
            // counts each once.
            keys.StopReportingDestructions();
            if (lease is Kms.Storage.Postgres.PostgresLeaderLease { ClockRefused: true, LastClockSkew: { } skew })
            {
                LogClockRefused(logger, skew.TotalMilliseconds);
            }

            return;
        }

        // The irreversible jobs run by the trusted time (LifecycleClock); without one, not at all.
        // So does scheduled rotation: by a clock a year ahead it would put every key's next
        // rotation a year out.
        var trusted = await TrustedTimeAsync(cancellationToken);
        var destroyed = trusted is { } now ? await RunJobAsync("destruction", () => keys.DestroyDueAsync(now, cancellationToken)) : 0;
        await RunJobAsync("erasure", async () =>
        {
            await keys.CompleteErasureAsync(cancellationToken);
            return 0;
        });
        if (trusted is { } expiry)
        {
            await RunJobAsync("import job expiry", () => keys.EraseExpiredImportJobsAsync(expiry, cancellationToken));
        }

        await RunJobAsync("tenant offboarding", () => access.SweepDeletingTenantsAsync(cancellationToken));
        var rotated = trusted is { } rotateBy ? await RunJobAsync("scheduled rotation", () => keys.RotateDueKeysAsync(rotateBy, cancellationToken)) : 0;
        if (trusted is { } retention)
        {
            await RunJobAsync("audit retention", async () => (int)await audit.PruneAsync(retention, cancellationToken));
        }

        await RunJobAsync("change feed retention", () => changes.PruneChangesAsync(time.GetUtcNow() - TimeSpan.FromHours(1), cancellationToken));
        if (rotated > 0 || destroyed > 0)
        {
            LogPass(logger, rotated, destroyed);
        }
    }

    private async Task<DateTimeOffset?> TrustedTimeAsync(CancellationToken cancellationToken)
    {
        DateTimeOffset trusted;
        try
        {
            trusted = await clock.NowAsync(cancellationToken);
        }
        catch (Exception e) when (e is not OperationCanceledException)
        {
            LogJobFailed(logger, "trusted time", e);
            return null;
        }

        if (clock.Accepted)
        {
            LogClockAccepted(logger, trusted);
        }

        // Said when first seen and again every hour while it lasts; and when it ends.
        var ahead = clock.Lag > TimeSpan.FromMinutes(1);
        var behind = clock.Behind > options.Interval + TimeSpan.FromMinutes(1);
        var now = time.GetTimestamp();
        var due = _clockReported is not { } last || time.GetElapsedTime(last, now) >= TimeSpan.FromHours(1);
        if (ahead && due)
        {
            LogClockAhead(logger, (long)clock.Lag.TotalSeconds, trusted);
        }
        else if (behind && due)
        {
            LogClockBehind(logger, (long)clock.Behind.TotalSeconds);
        }
        else if (!ahead && !behind && _clockReported is not null)
        {
            LogClockCaughtUp(logger, trusted);
            _clockReported = null;
        }

        if ((ahead || behind) && due)
        {
            _clockReported = now;
        }

        return trusted;
    }

    private async Task<int> RunJobAsync(string job, Func<Task<int>> run)
    {
        try
        {
            return await run();
        }
        catch (Exception e) when (e is not OperationCanceledException)
        {
            LogJobFailed(logger, job, e);
            return 0;
        }
    }

    public override async Task StopAsync(CancellationToken cancellationToken)
    {
        await base.StopAsync(cancellationToken);

        // The stop's last steps have the host's stop time left after the connection drain
        // (BoundedDrainServer); a database that does not answer within it is logged, not thrown:
        // the host's stop would throw, and the steps after this one not run.
        try
        {
            await usage.FlushAsync(cancellationToken);
        }
        catch (OperationCanceledException e)
        {
            LogUsageNotFlushedAtStop(logger, e.GetType().Name);
        }
        catch (Exception e) when (e is not OperationCanceledException)
        {
            LogUsageNotFlushedAtStop(logger, e.GetType().Name);
        }
    }

    protected override async Task ExecuteAsync(CancellationToken stoppingToken)
    {
        Observability.KmsMetrics.Track(keys);
        var rotations = ConsumeUsageRotationsAsync(stoppingToken);
        using var timer = new PeriodicTimer(options.Interval, time);
        try
        {
            do
            {
                await RunOnceAsync(stoppingToken);
            }
            while (await timer.WaitForNextTickAsync(stoppingToken));
        }
        catch (OperationCanceledException) when (stoppingToken.IsCancellationRequested)
        {
            // Shutting down.
        }

        await rotations;
    }

    private async Task ConsumeUsageRotationsAsync(CancellationToken stoppingToken)
    {
        try
        {
            await foreach (var key in usage.RotationRequests.ReadAllAsync(stoppingToken))
            {
                try
                {
                    if (await keys.RotateForUsageAsync(key, stoppingToken))
                    {
                        LogUsageRotation(logger, key.ToString());
                    }
                }
                catch (Exception e) when (e is not OperationCanceledException)
                {
                    LogPassFailed(logger, e);
                }
            }
        }
        catch (OperationCanceledException) when (stoppingToken.IsCancellationRequested)
        {
            // Shutting down.
        }
    }

    [LoggerMessage(EventId = 1201, Level = LogLevel.Information, Message = "Lifecycle pass: {Rotated} keys rotated on schedule, {Destroyed} key versions destroyed")]
    private static partial void LogPass(ILogger logger, int rotated, int destroyed);

    [LoggerMessage(EventId = 1202, Level = LogLevel.Warning, Message = "Key {Key} rotated: its primary version reached the soft GCM usage bound")]
    private static partial void LogUsageRotation(ILogger logger, string key);

    [LoggerMessage(EventId = 1203, Level = LogLevel.Error, Message = "Lifecycle work failed; retrying at the next pass")]
    private static partial void LogPassFailed(ILogger logger, Exception exception);

    [LoggerMessage(EventId = 1206, Level = LogLevel.Warning, Message = "This node's clock is {SkewMs} ms off the database server's: it does not run scheduled rotation, destruction or retention (Storage:Postgres:MaxClockSkew)")]
    private static partial void LogClockRefused(ILogger logger, double skewMs);

    [LoggerMessage(EventId = 1207, Level = LogLevel.Warning, Message = "This node's clock is {AheadSeconds} s ahead of the time this deployment has seen pass ({Trusted:O}): destructions, import-job erasure, audit retention and scheduled rotations wait. If the clock is wrong, correct it; if it is right (a downtime longer than Lifecycle:ClockJumpAllowance, a restored backup), start the node once with Lifecycle:AcceptClock=true")]
    private static partial void LogClockAhead(ILogger logger, long aheadSeconds, DateTimeOffset trusted);

    [LoggerMessage(EventId = 1208, Level = LogLevel.Information, Message = "This node's clock agrees again with the time this deployment has seen pass ({Trusted:O})")]
    private static partial void LogClockCaughtUp(ILogger logger, DateTimeOffset trusted);

    [LoggerMessage(EventId = 1209, Level = LogLevel.Warning, Message = "This node's clock is {BehindSeconds} s behind the time this deployment recorded as seen: the clock was set back, or the record is wrong; the lifecycle runs by the clock until it passes the record (Lifecycle:AcceptClock=true at a start replaces the record)")]
    private static partial void LogClockBehind(ILogger logger, long behindSeconds);

    [LoggerMessage(EventId = 1212, Level = LogLevel.Warning, Message = "Lifecycle:AcceptClock: this node's clock {Trusted:O} is taken as the time seen; remove the setting, or every start believes the clock")]
    private static partial void LogClockAccepted(ILogger logger, DateTimeOffset trusted);

    [LoggerMessage(EventId = 1213, Level = LogLevel.Warning, Message = "This node's Kms:NodeName is held by another node now ({Holder}): this node's session that held it ended (PostgreSQL restarted, a partition) and a node with the same name started meanwhile; the quorum requests either executes name the same node. Give one of them another Kms:NodeName and restart it")]
    private static partial void LogNodeNameTaken(ILogger logger, string holder);

    [LoggerMessage(EventId = 1214, Level = LogLevel.Warning, Message = "stopping: the key-usage counts since the last lifecycle pass could not be written ({Reason}); the decryptions and last-use times this node served since are not counted")]
    private static partial void LogUsageNotFlushedAtStop(ILogger logger, string reason);

    [LoggerMessage(EventId = 1324, Level = LogLevel.Information, Message = "This node refuses to sign audit checkpoints (since {Since:O}): it leaves the leader lease, and with it checkpoints, audit retention and the lifecycle jobs, to a node that signs them; it leads again once its refusal ends and the lease is free, or when no such node is left")]
    private static partial void LogLeaseLeft(ILogger logger, DateTimeOffset since);

    [LoggerMessage(EventId = 1204, Level = LogLevel.Error, Message = "Lifecycle job {Job} failed; retrying at the next pass")]
    private static partial void LogJobFailed(ILogger logger, string job, Exception exception);
}

/// <summary>How often the lifecycle worker runs (<c>Lifecycle:JobInterval</c>).</summary>
internal sealed record LifecycleWorkerOptions(TimeSpan Interval)
{
    /// <summary>The interval without the setting.</summary>
    public static readonly TimeSpan DefaultInterval = TimeSpan.FromSeconds(30);

    /// <summary>The longest interval taken: a day (the timer's own bound is some 49 days).</summary>
    public static readonly TimeSpan MaxInterval = TimeSpan.FromDays(1);
}
