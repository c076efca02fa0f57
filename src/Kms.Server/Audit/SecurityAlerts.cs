using Kms.Core.Audit;

namespace Kms.Server.Audit;

/// <summary>Alert thresholds (<c>Kms:Alerts:*</c>): counts within a sliding window per principal (or anonymous client address).</summary>
internal sealed record SecurityAlertOptions
{
    /// <summary>The sliding window.</summary>
    public TimeSpan Window { get; init; } = TimeSpan.FromMinutes(1);

    /// <summary>Refused calls (unauthenticated, permission denied, another tenant's resource) per subject and window.</summary>
    public int Refusals { get; init; } = 20;

    /// <summary>Failed decryptions (Decrypt, ReEncrypt answered INVALID_ARGUMENT) per principal and window.</summary>
    public int DecryptFailures { get; init; } = 10;

    /// <summary>Calls per principal and window (unusual volume); 0 turns it off.</summary>
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
    private readonly Dictionary<(string Kind, string Subject), Counter> _counters = [];
    private readonly Lock _lock = new();
    private DateTimeOffset _lastEviction = DateTimeOffset.MinValue;

    /// <summary>Raised with each alert (metrics, tests).</summary>
    public event Action<SecurityAlert>? Raised;

    /// <summary>Counts one answered call.</summary>
    public void Observe(AuditEntry entry, bool refused)
    {
        ArgumentNullException.ThrowIfNull(entry);
        var subject = entry.Principal == "anonymous" ? "anonymous@" + AuditEntry.AddressOf(entry.Client) : entry.Principal;
        if (refused && entry.Outcome is "UNAUTHENTICATED" or "PERMISSION_DENIED" or "NOT_FOUND")
        {
            Count("refusals", subject, options.Refusals);
        }

        if (entry.Outcome == "INVALID_ARGUMENT" && (entry.Operation.EndsWith("/Decrypt", StringComparison.Ordinal) || entry.Operation.EndsWith("/ReEncrypt", StringComparison.Ordinal)))
        {
            Count("decrypt-failures", subject, options.DecryptFailures);
        }

        if (options.Volume > 0)
        {
            Count("volume", subject, options.Volume);
        }
    }

    private void Count(string kind, string subject, int threshold)
    {
        var now = time.GetUtcNow();
        SecurityAlert? alert = null;
        lock (_lock)
        {
            if (!_counters.TryGetValue((kind, subject), out var counter))
            {
                if (_counters.Count >= MaxSubjects)
                {
                    // Bounded memory: forget subjects quiet for a whole window — at most once a
                    // window, so a stream of new subjects cannot make every call scan the table.
                    if (now - _lastEviction >= options.Window)
                    {
                        _lastEviction = now;
                        foreach (var key in _counters.Where(c => now - c.Value.LastSeen > options.Window).Select(c => c.Key).ToList())
                        {
                            _counters.Remove(key);
                        }
                    }

                    if (_counters.Count >= MaxSubjects)
                    {
                        subject = "overflow";
                    }
                }

                if (!_counters.TryGetValue((kind, subject), out counter))
                {
                    counter = new Counter(options.Window);
                    _counters[(kind, subject)] = counter;
                }
            }

            var total = counter.Add(now);
            if (total >= threshold && (counter.LastAlert is not { } last || now - last >= options.Window))
            {
                counter.LastAlert = now;
                alert = new SecurityAlert(kind, subject, total, options.Window, now);
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

    // Ten buckets over the window: the count is the sum of the buckets still inside it.
    private sealed class Counter(TimeSpan window)
    {
        private readonly long[] _counts = new long[Buckets];
        private readonly long[] _starts = new long[Buckets];
        private readonly long _bucketTicks = Math.Max(1, window.Ticks / Buckets);

        public DateTimeOffset LastSeen { get; private set; }

        public DateTimeOffset? LastAlert { get; set; }

        public long Add(DateTimeOffset now)
        {
            LastSeen = now;
            var bucket = now.UtcTicks / _bucketTicks;
            var slot = (int)(bucket % Buckets);
            if (_starts[slot] != bucket)
            {
                _starts[slot] = bucket;
                _counts[slot] = 0;
            }

            _counts[slot]++;
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
