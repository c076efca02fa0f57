using System.Globalization;

namespace Kms.Server.Hosting;

/// <summary>
/// The range of each time span and count setting that no check of its own guards, refused at
/// build when out of it: one line naming the setting, its value, its range and what it is for.
/// </summary>
/// <remarks>
/// Each range is what the code that reads the setting makes of it. Out of it, the setting
/// did something other than what it says, unsaid, once the server served: a negative or zero
/// time that .NET or a database reads as "no bound" (a PostgreSQL <c>idle_in_transaction_session_timeout</c>
/// of 0, an Npgsql command timeout of 0, a key generation wait of -5 s), a back-off or a window
/// of nothing (a lost HSM re-initialised by every call, alert buckets of no width), a negative
/// retention that prunes the audit log up to the future, or a usage bound past NIST SP 800-38D's
/// 2^32. A setting that is not given is its default, which is in range; one given twice is read as
/// the configuration resolves it, as the binder reads it. Settings with checks of their own (the
/// transport's, the quotas', the credential cache time, the change feed's interval, the quorum's
/// skew) keep them.
/// </remarks>
internal static class SettingRanges
{
    private const long Unbounded = long.MaxValue;

    // GCM invocations with random 96-bit IVs under one key: NIST SP 800-38D's limit.
    private const long GcmInvocationLimit = 1L << 32;

    private static readonly TimeSpan Hour = TimeSpan.FromHours(1);
    private static readonly TimeSpan Day = TimeSpan.FromDays(1);
    private static readonly TimeSpan Century = TimeSpan.FromDays(36500);

    private static readonly Range[] Ranges =
    [
        // Kms.Hsm (Pkcs11Hsm): a call timeout of zero or less runs the call unbounded on the caller's
        // thread; zero says so, a negative one said so unsaid.
        new TimeRange("Hsm:CallTimeout", TimeSpan.Zero, false, Hour, "how long a caller waits for the HSM before UNAVAILABLE (00:00:00: however long)"),
        new TimeRange("Hsm:KeyGenerationTimeout", TimeSpan.Zero, true, Hour, "how long an RSA key generation may take in the HSM (zero or less was taken as no bound)"),
        new TimeRange("Hsm:RecoveryBackoff", TimeSpan.Zero, true, TimeSpan.FromMinutes(10), "how long a recovery after a lost HSM waits before trying again (zero or less: every call re-initialises the module)"),
        new TimeRange("Hsm:KeyCacheIdleTimeout", TimeSpan.Zero, true, Day, "how long an unwrapped key version stays in the HSM unused"),
        new CountRange("Hsm:SessionPoolSize", 1, Unbounded, "the HSM sessions kept open (less than 1 was taken as 1)"),
        new CountRange("Hsm:KeyCacheCapacity", 0, Unbounded, "the key versions kept unwrapped in the HSM (0: none)"),
        new CountRange("Hsm:RecycleAfterDestroyedObjects", 0, Unbounded, "destroyed session objects before the module is re-initialised (0: never)"),

        // Kms.Storage: Npgsql and PostgreSQL read 0 as no bound.
        new TimeRange("Storage:Sqlite:BusyTimeout", TimeSpan.Zero, true, TimeSpan.FromMinutes(10), "how long a writer waits for the database lock before UNAVAILABLE"),
        new TimeRange("Storage:Postgres:CommandTimeout", TimeSpan.Zero, true, Hour, "how long a statement may run and a connection take to open (0 is no bound to Npgsql)"),
        new TimeRange("Storage:Postgres:IdleInTransactionTimeout", TimeSpan.Zero, true, Hour, "how long a node's session may sit idle holding the deployment's write lock (0 is no bound to PostgreSQL)"),
        new TimeRange("Storage:Postgres:MaxClockSkew", TimeSpan.Zero, true, TimeSpan.FromMinutes(5), "how far this node's clock may be from the database's while it runs scheduled destruction and rotation"),
        new CountRange("Storage:Postgres:MaxPoolSize", 1, Unbounded, "the most pooled connections this node opens"),
        new CountRange("Storage:MetadataCacheCapacity", 0, Unbounded, "key metadata entries remembered (0: read on every call)"),

        // Kms.Server: calls, overload, alerts, audit.
        new CountRange("Kms:MaxConcurrentCalls", 0, Unbounded, "calls served at once (0: every call but health is shed)"),
        new CountRange("Kms:MaxRequestBytes", 1, int.MaxValue, "the largest request message in bytes"),
        new TimeRange("Kms:Overload:QueueDelayTarget", TimeSpan.Zero, false, TimeSpan.FromSeconds(10), "the standing queue delay tolerated before calls are shed (00:00:00: no shedding by delay)"),
        new TimeRange("Kms:Overload:Window", TimeSpan.Zero, true, TimeSpan.FromMinutes(1), "how long the queue delay must stay above its target before calls are shed"),
        new TimeRange("Kms:Alerts:Window", TimeSpan.Zero, true, Day, "the sliding window security alerts count in"),
        new CountRange("Kms:Alerts:Refusals", 1, Unbounded, "refused calls of one subject in a window that raise an alert"),
        new CountRange("Kms:Alerts:DecryptFailures", 1, Unbounded, "failed decryptions of one principal in a window that raise an alert"),
        new CountRange("Kms:Alerts:Volume", 0, Unbounded, "calls of one principal in a window that raise an alert (0: none)"),
        new CountRange("Kms:Audit:MaxBatch", 1, Unbounded, "the most audit events written in one group commit"),
        new CountRange("Kms:Audit:CheckpointEveryEvents", 1, Unbounded, "audit events between signed checkpoints"),
        new TimeRange("Kms:Audit:CheckpointInterval", TimeSpan.Zero, true, Day, "the longest time between signed audit checkpoints"),
        new TimeRange("Kms:Audit:RefusalWindow", TimeSpan.Zero, true, Hour, "the window in which one principal's like refusals become one audit event"),
        new CountRange("Kms:Audit:MaxRefusalWindows", 1, Unbounded, "refusal windows tracked at once"),
        new CountRange("Kms:Audit:MaxPrunedPerPass", 1, Unbounded, "the most audit events one retention pass deletes"),
        new TimeRange("Kms:Audit:Retention", TimeSpan.Zero, true, Century, "how long audit events are kept (a negative one pruned up to a time in the future)"),

        // Kms.Core: the lifecycle and the GCM usage bounds.
        new TimeRange("Lifecycle:JobInterval", TimeSpan.Zero, true, LifecycleWorkerOptions.MaxInterval, $"how often this node runs scheduled rotation, destruction, usage flushes and audit retention (default {LifecycleWorkerOptions.DefaultInterval:c})"),
        new TimeRange("Lifecycle:ClockJumpAllowance", TimeSpan.Zero, false, Day, "how far ahead of the last observed time this node's clock is believed at start"),
        new TimeRange("Lifecycle:DefaultWaitingPeriod", TimeSpan.Zero, true, Century, "the waiting period of a scheduled destruction when none is given"),
        new TimeRange("Lifecycle:MinWaitingPeriod", TimeSpan.Zero, true, Century, "the shortest waiting period a caller may ask for"),
        new TimeRange("Lifecycle:MaxWaitingPeriod", TimeSpan.Zero, true, Century, "the longest waiting period a caller may ask for"),
        new TimeRange("Lifecycle:MinRotationPeriod", TimeSpan.Zero, true, Century, "the shortest scheduled rotation period"),
        new TimeRange("Lifecycle:MaxRotationPeriod", TimeSpan.Zero, true, Century, "the longest scheduled rotation period"),
        new CountRange("UsageLimits:SoftBound", 1, GcmInvocationLimit, "the encryptions under a key version at which the key is rotated (NIST SP 800-38D: at most 2^32)"),
        new CountRange("UsageLimits:HardBound", 1, GcmInvocationLimit, "the encryptions under a key version past which it refuses to encrypt (NIST SP 800-38D: at most 2^32)"),
        new CountRange("UsageLimits:ReservationBlock", 1, int.MaxValue, "encryptions reserved per durable write"),
        new TimeRange("UsageLimits:FlushInterval", TimeSpan.Zero, true, Hour, "how often decrypt counts and last-use times are written"),
    ];

    /// <summary>The settings this checks, for the tests and the docs.</summary>
    public static IEnumerable<string> Settings => Ranges.Select(r => r.Setting);

    /// <summary>Refuses the first setting given out of its range.</summary>
    /// <exception cref="InvalidOperationException">That setting, its value, its range and what it is; or the binder's failure to read a value (<see cref="ConfigurationValues.Explain"/> says it).</exception>
    public static void Check(IConfiguration configuration)
    {
        foreach (var range in Ranges)
        {
            if (!string.IsNullOrEmpty(configuration[range.Setting]) && range.Refusal(configuration) is { } refusal)
            {
                throw new InvalidOperationException(refusal);
            }
        }
    }

    private abstract record Range(string Setting, string What)
    {
        public abstract string? Refusal(IConfiguration configuration);
    }

    private sealed record TimeRange(string Setting, TimeSpan Least, bool MoreThanLeast, TimeSpan Most, string What) : Range(Setting, What)
    {
        public override string? Refusal(IConfiguration configuration)
        {
            var value = configuration.GetValue<TimeSpan>(Setting);
            return value < Least || (MoreThanLeast && value == Least) || value > Most
                ? $"{Setting} ({value:c}) must be {(MoreThanLeast ? "more than" : "at least")} {Least:c} and at most {Most:c}: it is {What}"
                : null;
        }
    }

    private sealed record CountRange(string Setting, long Least, long Most, string What) : Range(Setting, What)
    {
        public override string? Refusal(IConfiguration configuration)
        {
            var value = configuration.GetValue<long>(Setting);
            return value < Least || value > Most
                ? $"{Setting} ({value.ToString(CultureInfo.InvariantCulture)}) must be at least {Least.ToString(CultureInfo.InvariantCulture)}{(Most == Unbounded ? "" : $" and at most {Most.ToString(CultureInfo.InvariantCulture)}")}: it is {What}"
                : null;
        }
    }
}
