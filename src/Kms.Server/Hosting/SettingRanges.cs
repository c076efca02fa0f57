using System.Globalization;
using Kms.Core.Services;
using Kms.Server.Audit;

namespace Kms.Server.Hosting;

/// <summary>
/// The range of every time span and number setting the server reads, and the rules between two
/// settings, refused at build when broken: one line naming the setting (or both settings), its
/// value, its range and what it is for. docs/deployment.md ("Setting ranges") is generated from
/// this table.
/// </summary>
/// <remarks>
/// <para>Each range is what the code that reads the setting makes of it. Out of it, the setting
/// did something other than what it says, unsaid, once the server served: a negative or zero
/// time that .NET or a database reads as "no bound" (a PostgreSQL <c>idle_in_transaction_session_timeout</c>
/// of 0, an Npgsql command timeout of 0, a key generation wait of -5 s), a back-off or a window
/// of nothing (a lost HSM re-initialised by every call, alert buckets of no width), a negative
/// retention that prunes the audit log up to the future, a usage bound past NIST SP 800-38D's
/// 2^32, or a quota of 0 that once meant no limit at all. A setting that is not given is its
/// default, which is in range; one given twice is read as the configuration resolves it, as the
/// binder reads it. A setting under a tenant's or an issuer's name (<c>{tenant}</c>, <c>{N}</c>)
/// is checked for each one given.</para>
/// <para>A rule between two settings (<see cref="Rules"/>) holds where one setting alone is in
/// range but the pair makes the code misbehave: each rule says how.</para>
/// </remarks>
internal static class SettingRanges
{
    private const long Unbounded = long.MaxValue;

    // GCM invocations with random 96-bit IVs under one key: NIST SP 800-38D's limit.
    private const long GcmInvocationLimit = 1L << 32;

    private const string QuotaNeverZero = "a quota is never 0: to switch quotas off, set Kms:Quotas:Enabled=false; to stop a tenant's calls, remove its principals' role bindings or delete the tenant";

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
        new CountRange("Hsm:RecycleAfterDestroyedObjects", 0, Unbounded, "destroyed session objects before the module is re-initialised (0: never; unset: the HSM profile's)"),

        // Kms.Storage: Npgsql and PostgreSQL read 0 as no bound.
        new TimeRange("Storage:Sqlite:BusyTimeout", TimeSpan.Zero, true, TimeSpan.FromMinutes(10), "how long a writer waits for the database lock before UNAVAILABLE"),
        new TimeRange("Storage:Postgres:CommandTimeout", TimeSpan.Zero, true, Hour, "how long a statement may run and a connection take to open (0 is no bound to Npgsql)"),
        new TimeRange("Storage:Postgres:IdleInTransactionTimeout", TimeSpan.Zero, true, Hour, "how long a node's session may sit idle holding the deployment's write lock (0 is no bound to PostgreSQL)"),
        new TimeRange("Storage:Postgres:MaxClockSkew", TimeSpan.Zero, true, TimeSpan.FromMinutes(5), "how far this node's clock may be from the database's while it runs scheduled destruction and rotation"),
        new TimeRange("Storage:Postgres:NodeNameWait", TimeSpan.Zero, false, Kms.Storage.Postgres.PostgresOptions.MaxNodeNameWait, "how long a starting node waits for its Kms:NodeName while another live session holds it"),
        new CountRange("Storage:Postgres:MaxPoolSize", 1, Unbounded, "the most pooled connections this node opens"),
        new CountRange("Storage:MetadataCacheCapacity", 0, Unbounded, "key metadata entries remembered (0: read on every call)"),
        new TimeRange("Storage:ChangeFeed:PollInterval", TimeSpan.Zero, true, ChangeFeedOptions.MaxPollInterval, "how late another node's revocation, disable or destruction reaches this one (0 stopped the host once it served; -1 ms never read the feed again)"),

        // Kms.Server: credentials, calls, overload, transport.
        new TimeRange("Kms:CredentialCacheTime", TimeSpan.Zero, false, KmsServerOptions.MaxCredentialCacheTime, "how long an authentication is remembered: while a node cannot read the change feed, another node's revocation takes effect on it only when the cache time has passed"),
        new CountRange("Kms:MaxFailedAuthenticationsPerClientAddress", 0, int.MaxValue, "credential checks that may fail per client address per minute (0: no bound)"),
        new CountRange("Kms:MaxConcurrentCalls", 0, Unbounded, "calls served at once (0: every call but health is shed)"),
        new CountRange("Kms:MaxConcurrentCallsPerTenant", 1, int.MaxValue, "calls of one tenant served at once (unset: half of Kms:MaxConcurrentCalls)"),
        new CountRange("Kms:MaxRequestBytes", 1, int.MaxValue, "the largest request message in bytes"),
        new CountRange("Kms:MaxRequestBytesInFlightPerTenant", 1, Unbounded, "request bytes held at once for one tenant's calls whose message is still arriving"),
        new TimeRange("Kms:PageTokenLifetime", TimeSpan.FromSeconds(1), false, Century, "how long a List RPC's page token is good for (less than a second: a next page finds its token expired)"),
        new TimeRange("Kms:Quorum:MaxSignTimeSkew", QuorumHostOptions.MinSignTimeSkew, false, QuorumHostOptions.MaxAllowedSignTimeSkew, "how far an approval's signed time may be from this server's (wider says less about when it was made; narrower refuses officers whose machines keep ordinary time)"),
        new TimeRange("Kms:Jwt:Issuers:{N}:MaxLifetime", TimeSpan.Zero, true, JwtIssuerOptions.LongestMaxLifetime, "the longest exp - iat of a token of this issuer that is accepted"),
        new TimeRange("Kms:Overload:QueueDelayTarget", TimeSpan.Zero, false, TimeSpan.FromSeconds(10), "the standing queue delay tolerated before calls are shed (00:00:00: no shedding by delay)"),
        new TimeRange("Kms:Overload:Window", TimeSpan.Zero, true, TimeSpan.FromMinutes(1), "how long the queue delay must stay above its target before calls are shed"),
        new CountRange("Kms:Transport:MaxConnectionsPerClientAddress", 0, int.MaxValue, "connections open at once from one client address (0: no bound)"),
        new CountRange("Kms:Transport:MaxConnections", 1, int.MaxValue, "connections open at once in all"),
        new CountRange("Kms:Transport:MaxStreamsPerConnection", 1, int.MaxValue, "calls (HTTP/2 streams) open at once on one connection"),
        new TimeRange("Kms:Transport:TlsHandshakeTimeout", TimeSpan.Zero, true, Hour, "how long a client may take to complete the TLS handshake"),
        new TimeRange("Kms:Transport:KeepAliveTimeout", TimeSpan.Zero, true, Hour, "how long a connection may stay open with no request in progress"),
        new TimeRange("Kms:Transport:RequestHeadersTimeout", TimeSpan.Zero, true, Hour, "how long a request's headers may take to arrive"),
        new TimeRange("Kms:Transport:ShutdownDrainTimeout", TimeSpan.Zero, true, Hour, "how long a stop waits for open connections to end"),

        // Kms.Server: quotas (a rate above 0, a burst of at least 1, a share above 0 and at most 1).
        new NumberRange("Kms:Quotas:OperationsPerSecond", 0, true, double.PositiveInfinity, $"sustained crypto operations per second per tenant; {QuotaNeverZero}"),
        new NumberRange("Kms:Quotas:Burst", 1, false, double.PositiveInfinity, $"the largest burst of crypto operations per tenant; {QuotaNeverZero}"),
        new NumberRange("Kms:Quotas:OtherCallsPerSecond", 0, true, double.PositiveInfinity, $"sustained calls per second per tenant other than crypto operations; {QuotaNeverZero}"),
        new NumberRange("Kms:Quotas:OtherCallsBurst", 1, false, double.PositiveInfinity, $"the largest burst of a tenant's calls other than crypto operations; {QuotaNeverZero}"),
        new NumberRange("Kms:Quotas:OtherCallsPrincipalShare", 0, true, 1, $"the share of its tenant's other calls each principal may spend (1: the whole); {QuotaNeverZero}"),
        new NumberRange("Kms:Quotas:CryptoPrincipalShare", 0, true, 1, $"the share of its tenant's crypto quota each principal may spend (1: the whole); {QuotaNeverZero}"),
        new NumberRange("Kms:Quotas:PrincipalsWithoutTenant:CallsPerSecond", 0, true, double.PositiveInfinity, $"sustained calls per second of each principal of no tenant; {QuotaNeverZero}"),
        new NumberRange("Kms:Quotas:PrincipalsWithoutTenant:Burst", 1, false, double.PositiveInfinity, $"the largest burst of each principal of no tenant; {QuotaNeverZero}"),
        new NumberRange("Kms:Quotas:Tenants:{tenant}:OperationsPerSecond", 0, true, double.PositiveInfinity, $"this tenant's sustained crypto operations per second; {QuotaNeverZero}"),
        new NumberRange("Kms:Quotas:Tenants:{tenant}:Burst", 1, false, double.PositiveInfinity, $"this tenant's largest burst of crypto operations; {QuotaNeverZero}"),
        new NumberRange("Kms:Quotas:Tenants:{tenant}:OtherCallsPerSecond", 0, true, double.PositiveInfinity, $"this tenant's sustained calls per second other than crypto operations; {QuotaNeverZero}"),
        new NumberRange("Kms:Quotas:Tenants:{tenant}:OtherCallsBurst", 1, false, double.PositiveInfinity, $"this tenant's largest burst of calls other than crypto operations; {QuotaNeverZero}"),
        new NumberRange("Kms:Quotas:Tenants:{tenant}:OtherCallsPrincipalShare", 0, true, 1, $"the share of this tenant's other calls each of its principals may spend; {QuotaNeverZero}"),
        new NumberRange("Kms:Quotas:Tenants:{tenant}:CryptoPrincipalShare", 0, true, 1, $"the share of this tenant's crypto quota each of its principals may spend; {QuotaNeverZero}"),

        // Kms.Server: alerts and audit.
        new TimeRange("Kms:Alerts:Window", TimeSpan.Zero, true, Day, "the sliding window security alerts count in"),
        new CountRange("Kms:Alerts:Refusals", 1, int.MaxValue, "refused calls of one subject in a window that raise an alert"),
        new CountRange("Kms:Alerts:DecryptFailures", 1, int.MaxValue, "failed decryptions of one principal in a window that raise an alert"),
        new CountRange("Kms:Alerts:Volume", 0, int.MaxValue, "calls of one principal in a window that raise an alert (0: none)"),
        new CountRange("Kms:Audit:MaxBatch", 1, int.MaxValue, "the most audit events written in one group commit"),
        new CountRange("Kms:Audit:CheckpointEveryEvents", 1, int.MaxValue, "audit events between signed checkpoints"),
        new TimeRange("Kms:Audit:CheckpointInterval", TimeSpan.Zero, true, Day, "the longest time between signed audit checkpoints"),
        new TimeRange("Kms:Audit:RefusalWindow", TimeSpan.Zero, true, Hour, "the window in which one principal's like refusals become one audit event"),
        new CountRange("Kms:Audit:MaxRefusalWindows", 1, int.MaxValue, "refusal windows tracked at once"),
        new CountRange("Kms:Audit:MaxPrunedPerPass", 1, int.MaxValue, "the most audit events one retention pass deletes"),
        new TimeRange("Kms:Audit:Retention", TimeSpan.Zero, true, Century, "how long audit events are kept (a negative one pruned up to a time in the future)"),
        new CountRange("Kms:Audit:SummaryBlockEvents", AuditHostOptions.MinSummaryBlockEvents, AuditHostOptions.MaxSummaryBlockEvents, "the events in one block of the audit log's time summary (fewer makes the summary, which every time-ranged listing reads, as long as the log; more starts those listings' pages a window or more before their events)"),
        new CountRange("Kms:Audit:SummaryBlocksPerPass", 1, int.MaxValue, "the blocks of the audit log's time summary one housekeeping pass writes (0 or less was taken as 1)"),

        // Kms.Core: the lifecycle and the GCM usage bounds.
        new TimeRange("Lifecycle:JobInterval", TimeSpan.Zero, true, LifecycleWorkerOptions.MaxInterval, $"how often this node runs scheduled rotation, destruction, usage flushes and audit retention (default {LifecycleWorkerOptions.DefaultInterval:c})"),
        new TimeRange("Lifecycle:ClockJumpAllowance", TimeSpan.Zero, false, Day, "how far ahead of the last observed time this node's clock is believed at start; keep it longer than Lifecycle:JobInterval (the time is recorded once a pass, so a restart finds it up to an interval old, and a shorter allowance takes an ordinary restart for a clock jump: the lifecycle's destructions and audit retention run behind by the gap) — not refused, since a longer interval with the default allowance was valid before"),
        new TimeRange("Lifecycle:DefaultWaitingPeriod", TimeSpan.Zero, true, Century, "the waiting period of a scheduled destruction when none is given"),
        new TimeRange("Lifecycle:MinWaitingPeriod", TimeSpan.Zero, true, Century, "the shortest waiting period a caller may ask for"),
        new TimeRange("Lifecycle:MaxWaitingPeriod", TimeSpan.Zero, true, Century, "the longest waiting period a caller may ask for"),
        new TimeRange("Lifecycle:MinRotationPeriod", TimeSpan.Zero, true, Century, "the shortest scheduled rotation period"),
        new TimeRange("Lifecycle:MaxRotationPeriod", TimeSpan.Zero, true, Century, "the longest scheduled rotation period"),
        new CountRange("UsageLimits:SoftBound", 1, GcmInvocationLimit, "the encryptions under a key version at which the key is rotated (NIST SP 800-38D: at most 2^32)"),
        new CountRange("UsageLimits:HardBound", 1, GcmInvocationLimit, "the encryptions under a key version past which it refuses to encrypt (NIST SP 800-38D: at most 2^32)"),
        new CountRange("UsageLimits:ReservationBlock", 1, int.MaxValue, "encryptions reserved per durable write"),
    ];

    private static readonly LifecycleOptions Lifecycle = new();
    private static readonly UsageLimitOptions Usage = new();
    private static readonly KmsServerOptions Server = new();

    // Checked once every setting is in its range, in this order: the first broken one refuses.
    private static readonly Rule[] Rules =
    [
        // A message of the largest size arriving in parts counts by its declared length: it could never be held.
        new Rule("Kms:MaxRequestBytesInFlightPerTenant", "at least", "Kms:MaxRequestBytes",
            c => Compare(Count(c, "Kms:MaxRequestBytesInFlightPerTenant", Server.MaxRequestBytesInFlightPerTenant), Count(c, "Kms:MaxRequestBytes", Server.MaxRequestBytes), (a, b) => a >= b),
            "below it, one message of the largest size arriving in parts would always be refused"),

        // QueueDelayMonitor refused the pair when it was first resolved (the first call), not at start.
        new Rule("Kms:Overload:Window", "longer than", "Kms:Overload:QueueDelayTarget",
            c => Time(c, "Kms:Overload:QueueDelayTarget", TimeSpan.Zero) is var target && target <= TimeSpan.Zero
                ? null
                : Compare(Time(c, "Kms:Overload:Window", new OverloadOptions().Window), target, (a, b) => a > b),
            "the queue delay must stay above its target for a whole window (00:00:00 as the target turns shedding by delay off); a window no longer than the target failed every call but health once the server served"),

        // The soft bound is checked as encryptions are reserved, the hard bound refuses them: a soft
        // bound at or past the hard one let a key version reach its hard bound before (or without) the
        // automatic rotation, and the key refused to encrypt until an operator rotated it.
        new Rule("UsageLimits:SoftBound", "less than", "UsageLimits:HardBound",
            c => Compare(Count(c, "UsageLimits:SoftBound", Usage.SoftBound), Count(c, "UsageLimits:HardBound", Usage.HardBound), (a, b) => a < b),
            "a key is rotated at its soft bound so that its primary version never reaches the hard bound, past which it refuses to encrypt"),

        // No waiting period was in range: every scheduled destruction refused.
        new Rule("Lifecycle:MinWaitingPeriod", "at most", "Lifecycle:MaxWaitingPeriod",
            c => Compare(Time(c, "Lifecycle:MinWaitingPeriod", Lifecycle.MinWaitingPeriod), Time(c, "Lifecycle:MaxWaitingPeriod", Lifecycle.MaxWaitingPeriod), (a, b) => a <= b),
            "no waiting period would be in range, and every scheduled destruction would be refused"),

        // Out of the range, a destruction asked for without a waiting period was refused INVALID_ARGUMENT
        // naming waiting_period, which the caller had not set; a tenant's deletion without one scheduled
        // its keys' destruction with it unchecked, sooner than Lifecycle:MinWaitingPeriod allows.
        new Rule("Lifecycle:DefaultWaitingPeriod", "at least", "Lifecycle:MinWaitingPeriod",
            c => Compare(Time(c, "Lifecycle:DefaultWaitingPeriod", Lifecycle.DefaultWaitingPeriod), Time(c, "Lifecycle:MinWaitingPeriod", Lifecycle.MinWaitingPeriod), (a, b) => a >= b),
            "a destruction asked for without a waiting period gets the default, which must be one a caller may ask for"),
        new Rule("Lifecycle:DefaultWaitingPeriod", "at most", "Lifecycle:MaxWaitingPeriod",
            c => Compare(Time(c, "Lifecycle:DefaultWaitingPeriod", Lifecycle.DefaultWaitingPeriod), Time(c, "Lifecycle:MaxWaitingPeriod", Lifecycle.MaxWaitingPeriod), (a, b) => a <= b),
            "a destruction asked for without a waiting period gets the default, which must be one a caller may ask for"),

        // No rotation period was in range: every key's rotation schedule refused.
        new Rule("Lifecycle:MinRotationPeriod", "at most", "Lifecycle:MaxRotationPeriod",
            c => Compare(Time(c, "Lifecycle:MinRotationPeriod", Lifecycle.MinRotationPeriod), Time(c, "Lifecycle:MaxRotationPeriod", Lifecycle.MaxRotationPeriod), (a, b) => a <= b),
            "no rotation period would be in range, and every rotation schedule would be refused"),
    ];

    /// <summary>The settings this checks (a <c>{…}</c> segment stands for any name), for the tests.</summary>
    public static IEnumerable<string> Settings => Ranges.Select(r => r.Setting);

    /// <summary>Each setting's range as the docs show it: the setting, its least, its most and what it is.</summary>
    public static IEnumerable<(string Setting, string Least, string Most, string What)> Table =>
        Ranges.Select(r => (r.Setting, r.LeastText, r.MostText, r.What));

    /// <summary>Each rule between two settings as the docs show it.</summary>
    public static IEnumerable<(string Setting, string Relation, string Other, string Why)> RuleTable =>
        Rules.Select(r => (r.Setting, r.Relation, r.Other, r.Why));

    /// <summary>Refuses the first setting given out of its range, then the first rule between two settings broken.</summary>
    /// <exception cref="InvalidOperationException">
    /// That setting, its value, its range and what it is; that rule's two settings and values and why;
    /// or the binder's failure to read a value (<see cref="ConfigurationValues.Explain"/> says it).
    /// </exception>
    public static void Check(IConfiguration configuration)
    {
        foreach (var range in Ranges)
        {
            foreach (var setting in Expand(configuration, range.Setting))
            {
                if (!string.IsNullOrEmpty(configuration[setting]) && range.Refusal(configuration, setting) is { } refusal)
                {
                    throw new InvalidOperationException(refusal);
                }
            }
        }

        foreach (var rule in Rules)
        {
            if (rule.Holds(configuration) is { } broken)
            {
                throw new InvalidOperationException($"{rule.Setting} ({broken.Value}) must be {rule.Relation} {rule.Other} ({broken.OtherValue}): {rule.Why}");
            }
        }
    }

    // The settings a pattern names in this configuration: each {…} segment stands for each child given there.
    private static IEnumerable<string> Expand(IConfiguration configuration, string pattern)
    {
        var open = pattern.IndexOf('{', StringComparison.Ordinal);
        if (open < 0)
        {
            return [pattern];
        }

        var close = pattern.IndexOf('}', open);
        var parent = pattern[..(open - 1)];
        var rest = pattern[(close + 1)..];
        return configuration.GetSection(parent).GetChildren().SelectMany(child => Expand(configuration, $"{child.Path}{rest}"));
    }

    private static TimeSpan Time(IConfiguration configuration, string setting, TimeSpan fallback) =>
        string.IsNullOrEmpty(configuration[setting]) ? fallback : configuration.GetValue<TimeSpan>(setting);

    private static long Count(IConfiguration configuration, string setting, long fallback) =>
        string.IsNullOrEmpty(configuration[setting]) ? fallback : configuration.GetValue<long>(setting);

    private static (string Value, string OtherValue)? Compare(TimeSpan value, TimeSpan other, Func<TimeSpan, TimeSpan, bool> holds) =>
        holds(value, other) ? null : (value.ToString("c", CultureInfo.InvariantCulture), other.ToString("c", CultureInfo.InvariantCulture));

    private static (string Value, string OtherValue)? Compare(long value, long other, Func<long, long, bool> holds) =>
        holds(value, other) ? null : (value.ToString(CultureInfo.InvariantCulture), other.ToString(CultureInfo.InvariantCulture));

    private static string Text(TimeSpan value) => value.ToString("c", CultureInfo.InvariantCulture);

    private static string Text(double value) => value.ToString(CultureInfo.InvariantCulture);

    private sealed record Rule(string Setting, string Relation, string Other, Func<IConfiguration, (string Value, string OtherValue)?> Holds, string Why);

    private abstract record Range(string Setting, string What)
    {
        public abstract string LeastText { get; }

        public abstract string MostText { get; }

        public abstract string? Refusal(IConfiguration configuration, string setting);

        protected string Says(string setting, string value) =>
            $"{setting} ({value}) must be {LeastText}{(MostText.Length == 0 ? "" : $" and {MostText}")}: it is {What}";
    }

    private sealed record TimeRange(string Setting, TimeSpan Least, bool MoreThanLeast, TimeSpan Most, string What) : Range(Setting, What)
    {
        public override string LeastText => $"{(MoreThanLeast ? "more than" : "at least")} {Text(Least)}";

        public override string MostText => $"at most {Text(Most)}";

        public override string? Refusal(IConfiguration configuration, string setting)
        {
            var value = configuration.GetValue<TimeSpan>(setting);
            return value < Least || (MoreThanLeast && value == Least) || value > Most ? Says(setting, Text(value)) : null;
        }
    }

    private sealed record CountRange(string Setting, long Least, long Most, string What) : Range(Setting, What)
    {
        public override string LeastText => $"at least {Least.ToString(CultureInfo.InvariantCulture)}";

        public override string MostText => Most == Unbounded ? "" : $"at most {Most.ToString(CultureInfo.InvariantCulture)}";

        public override string? Refusal(IConfiguration configuration, string setting)
        {
            var value = configuration.GetValue<long>(setting);
            return value < Least || value > Most ? Says(setting, value.ToString(CultureInfo.InvariantCulture)) : null;
        }
    }

    // A number that need not be whole (the quotas): finite, and NaN never in range.
    private sealed record NumberRange(string Setting, double Least, bool MoreThanLeast, double Most, string What) : Range(Setting, What)
    {
        public override string LeastText => $"{(MoreThanLeast ? "more than" : "at least")} {Text(Least)}";

        public override string MostText => double.IsPositiveInfinity(Most) ? "finite" : $"at most {Text(Most)}";

        public override string? Refusal(IConfiguration configuration, string setting)
        {
            var value = configuration.GetValue<double>(setting);
            var inRange = double.IsFinite(value) && value >= Least && !(MoreThanLeast && value == Least) && value <= Most;
            return inRange ? null : Says(setting, Text(value));
        }
    }
}
