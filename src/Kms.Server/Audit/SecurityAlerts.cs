using Kms.Core.Audit;

namespace Kms.Server.Audit;

/// <summary>Alert thresholds (<c>Kms:Alerts:*</c>): counts within a sliding window per principal (or anonymous client address).</summary>
internal sealed record SecurityAlertOptions
{
    /// <summary>The sliding window.</summary>
    public TimeSpan Window { get; init; } = TimeSpan.FromMinutes(1);

    /// <summary>Refused calls (unauthenticated, permission denied, another tenant's resource) per subject and window.</summary>
    public int Refusals { get; init; } = 20;

    /// <summary>Failed decryptions (Decrypt, ReEncrypt, AsymmetricDecrypt answered INVALID_ARGUMENT, and each such item of BatchDecrypt and BatchReEncrypt) per principal and window.</summary>
    public int DecryptFailures { get; init; } = 10;

    /// <summary>Calls per principal and window (unusual volume), each item of a batch call counted as a call; 0 turns it off.</summary>
    public int Volume { get; init; } = 500_000;
}

/// <summary>An alert: a subject (principal, or <c>anonymous@address</c>) crossed a threshold.</summary>
internal sealed record SecurityAlert(string Kind, string Subject, long Count, TimeSpan Window, DateTimeOffset Time);

/// <summary>
/// Watches every audited call as it is answered (not after the audit write, so an alert is
/// raised within the same second) for bursts of refusals, failed decryptions and unusual
/// volume per principal, with sliding windows of ten buckets. An alert is a structured log
/// event (1401) and a metric; it is raised once per subject, kind and window.
/// </summary>
internal sealed partial class SecurityAlerts(SecurityAlertOptions options, TimeProvider time, ILogger<SecurityAlerts> logger)
{
    private const int Buckets = 10;
    private const int MaxSubjects = 50_000;

    /// <summary>Alerts about single anonymous addresses per window; past it, one about the rest.</summary>
    public const int MaxAnonymousAlertsPerWindow = 20;

    /// <summary>The subject of the one alert that stands for every further anonymous address in a window.</summary>
    public const string MoreAnonymousAddresses = "anonymous@more-addresses";

    // Anonymous callers (one subject per address: anyone can be many) have a table of their own,
    // so a flood from fresh addresses cannot fill the principals' table and hide an
    // authenticated principal's burst under "overflow".
    private readonly Subjects _principals = new();
    private readonly Subjects _anonymous = new();
    private readonly Lock _lock = new();
    private readonly DateTimeOffset _origin = time.GetUtcNow();
    private readonly long _started = time.GetTimestamp();

    /// <summary>Raised with each alert (metrics, tests).</summary>
    public event Action<SecurityAlert>? Raised;

    /// <summary>
    /// Counts one answered call, and <paramref name="itemDecryptFailures"/> failed and
    /// <paramref name="itemRefusals"/> refused items of a batch; a batch of
    /// <paramref name="batchItems"/> items counts that many calls towards the volume.
    /// </summary>
    public void Observe(AuditEntry entry, bool refused, int itemDecryptFailures = 0, int itemRefusals = 0, int batchItems = 0)
    {
        ArgumentNullException.ThrowIfNull(entry);
        var anonymous = entry.Principal == "anonymous";
        var subject = anonymous ? "anonymous@" + AddressGroup(entry.Client) : entry.Principal;

        // Refused by the authorization step, or by a handler (a key policy, a forged approval):
        // a NOT_FOUND only when it is a refusal (another tenant's name; a key whose policy names the
        // caller for nothing, answered as a missing one), never a handler's missing key.
        if (entry.Outcome is "UNAUTHENTICATED" or "PERMISSION_DENIED" || (refused && entry.Outcome == "NOT_FOUND"))
        {
            Count("refusals", subject, anonymous, options.Refusals, 1);
        }

        if (itemRefusals > 0)
        {
            Count("refusals", subject, anonymous, options.Refusals, itemRefusals);
        }

        var failedDecryptions = itemDecryptFailures
            + (entry.Outcome == "INVALID_ARGUMENT" && (entry.Operation.EndsWith("/Decrypt", StringComparison.Ordinal)
                || entry.Operation.EndsWith("/ReEncrypt", StringComparison.Ordinal)
                || entry.Operation.EndsWith("/AsymmetricDecrypt", StringComparison.Ordinal)) ? 1 : 0);
        if (failedDecryptions > 0)
        {
            Count("decrypt-failures", subject, anonymous, options.DecryptFailures, failedDecryptions);
        }

        if (options.Volume > 0)
        {
            // A batch of 1,000 data keys is the work of 1,000 calls; counted as one, a principal
            // could draw a thousand times the threshold unnoticed.
            Count("volume", subject, anonymous, options.Volume, Math.Max(1, batchItems));
        }
    }

    // An IPv6 caller is one /64 (what one host or site is usually given); an IPv4 caller its address.
    private static string AddressGroup(string? peer)
    {
        var address = AuditEntry.AddressOf(peer);
        if (System.Net.IPAddress.TryParse(address.Trim('[', ']'), out var ip)
            && ip.AddressFamily == System.Net.Sockets.AddressFamily.InterNetworkV6 && !ip.IsIPv4MappedToIPv6)
        {
            var bytes = ip.GetAddressBytes();
            Array.Clear(bytes, 8, 8);
            return new System.Net.IPAddress(bytes) + "/64";
        }

        return address;
    }

    private void Count(string kind, string subject, bool anonymous, int threshold, int amount)
    {
        // Windows run on the monotonic clock: a wall clock stepped back would otherwise count
        // slots from the "future" and hold back every recent subject's next alert for as long.
        var now = _origin + time.GetElapsedTime(_started);
        SecurityAlert? alert = null;
        lock (_lock)
        {
            var table = anonymous ? _anonymous : _principals;
            if (!table.Counters.TryGetValue((kind, subject), out var counter))
            {
                if (table.Counters.Count >= MaxSubjects)
                {
                    // Bounded memory: forget subjects quiet for a whole window — at most once a
                    // window, so a stream of new subjects cannot make every call scan the table.
                    if (now - table.LastEviction >= options.Window)
                    {
                        table.LastEviction = now;
                        foreach (var key in table.Counters.Where(c => now - c.Value.LastSeen > options.Window).Select(c => c.Key).ToList())
                        {
                            table.Counters.Remove(key);
                        }
                    }

                    if (table.Counters.Count >= MaxSubjects)
                    {
                        subject = anonymous ? "anonymous@overflow" : "overflow";
                    }
                }

                if (!table.Counters.TryGetValue((kind, subject), out counter))
                {
                    counter = new Counter(options.Window);
                    table.Counters[(kind, subject)] = counter;
                }
            }

            var total = counter.Add(now, amount);
            if (total >= threshold && (counter.LastAlert is not { } last || now - last >= options.Window))
            {
                counter.LastAlert = now;
                alert = new SecurityAlert(kind, subject, total, options.Window, time.GetUtcNow());
                if (anonymous)
                {
                    // Anyone can be many addresses (an IPv6 /48 is 65,536 subjects): a flood of
                    // one alert each would bury the rest. Twenty a window, then one for the others.
                    if (now - table.AlertWindowStart >= options.Window)
                    {
                        table.AlertWindowStart = now;
                        table.AlertsInWindow = 0;
                    }

                    table.AlertsInWindow++;
                    alert = table.AlertsInWindow <= MaxAnonymousAlertsPerWindow ? alert
                        : table.AlertsInWindow == MaxAnonymousAlertsPerWindow + 1 ? alert with { Subject = MoreAnonymousAddresses }
                        : null;
                }
            }
        }

        if (alert is not null)
        {
            LogAlert(logger, alert.Kind, alert.Subject, alert.Count, alert.Window.TotalSeconds);
            Observability.KmsMetrics.RecordSecurityAlert(alert.Kind switch
            {
                "refusals" => Observability.SecurityAlertKind.Refusals,
                "decrypt-failures" => Observability.SecurityAlertKind.DecryptFailures,
                _ => Observability.SecurityAlertKind.Volume,
            });
            Raised?.Invoke(alert);
        }
    }

    [LoggerMessage(EventId = 1401, Level = LogLevel.Warning, Message = "security alert {Kind:l}: {Subject:l} reached {Count} in {WindowSeconds} s")]
    private static partial void LogAlert(ILogger logger, string kind, string subject, long count, double windowSeconds);

    private sealed class Subjects
    {
        public Dictionary<(string Kind, string Subject), Counter> Counters { get; } = [];

        public DateTimeOffset LastEviction { get; set; } = DateTimeOffset.MinValue;

        public DateTimeOffset AlertWindowStart { get; set; } = DateTimeOffset.MinValue;

        public int AlertsInWindow { get; set; }
    }

    // Ten buckets over the window: the count is the sum of the buckets still inside it.
    private sealed class Counter(TimeSpan window)
    {
        private readonly long[] _counts = new long[Buckets];
        private readonly long[] _starts = new long[Buckets];
        private readonly long _bucketTicks = Math.Max(1, window.Ticks / Buckets);

        public DateTimeOffset LastSeen { get; private set; }

        public DateTimeOffset? LastAlert { get; set; }

        public long Add(DateTimeOffset now, int amount)
        {
            LastSeen = now;
            var bucket = now.UtcTicks / _bucketTicks;
            var slot = (int)(bucket % Buckets);
            if (_starts[slot] != bucket)
            {
                _starts[slot] = bucket;
                _counts[slot] = 0;
            }

            _counts[slot] += amount;
            long total = 0;
            for (var i = 0; i < Buckets; i++)
            {
                if (bucket - _starts[i] < Buckets)
                {
                    total += _counts[i];
                }
            }

            return total;
        }
    }
}
