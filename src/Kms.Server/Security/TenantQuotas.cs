using System.Collections.Concurrent;
using Kms.Core.Names;
using Kms.Server.Hosting;
using Microsoft.Extensions.Options;

namespace Kms.Server.Security;

/// <summary>
/// A token bucket per tenant for crypto operations, so one tenant cannot starve another, and
/// another per tenant for its other calls (reads and management), of which each principal of the
/// tenant may spend only a share (<see cref="QuotaOptions.OtherCallsPrincipalShare"/>).
/// Driven by <see cref="TimeProvider"/> (tests use a fake clock). Per node: a deployment of N
/// nodes admits up to N times the configured rate. A rate is never 0 (refused at start); metering
/// is off only with <c>Kms:Quotas:Enabled=false</c>.
/// </summary>
internal sealed class TenantQuotas(IOptions<KmsServerOptions> options, TimeProvider time)
{
    private readonly QuotaOptions _options = options.Value.Quotas;
    private readonly ConcurrentDictionary<TenantId, Bucket> _buckets = new();

    // The tenants' calls other than crypto operations, on buckets apart: a flood of reads
    // spends none of the tenant's crypto quota, and crypto spends none of its reads.
    private readonly ConcurrentDictionary<TenantId, Bucket> _otherBuckets = new();

    // Each principal's share of its tenant's other calls, so that one runaway or leaked token
    // cannot spend the whole bucket and hold up the tenant's key managers and auditors. The
    // principals are the tenant's registered ones, but a tenant admin may have many, and a large
    // deployment many tenants: the table is bounded as the failed authentications per address are
    // (FailedAuthenticationLimit). When it is full, the buckets that have filled up again are
    // dropped (at most once a second) — a full bucket is what a new one would be, so dropping it
    // gives nobody a call more — and while it is still full a new principal spends its tenant's
    // one overflow bucket, of the same share: new names get no bucket of their own, and every
    // call also spends the tenant's bucket, so nothing gets past the tenant's quota.
    private readonly ConcurrentDictionary<(TenantId Tenant, string Principal), Bucket> _shares = new();
    private readonly ConcurrentDictionary<TenantId, Bucket> _shareOverflow = new();
    private readonly Lock _sharesGate = new();
    private long _sharesPruned;

    // The principals of no tenant, each on its own bucket. Only registered deployment principals
    // and the certificate or workload principals that authenticate reach here, but an unregistered
    // one's name is the caller's choice (a certificate subject, a JWT sub): the table is bounded,
    // and emptied when full (each bucket starts full again, as a restart would leave it).
    private const int MaxPrincipalBuckets = 10_000;
    private readonly ConcurrentDictionary<string, Bucket> _principals = new(StringComparer.Ordinal);

    // Looked up ignoring case, as configuration keys are: an override written ACME (an environment
    // variable in capitals) is tenant acme's, not a key no tenant id can ever match.
    private readonly Dictionary<string, TenantQuota> _tenants = IgnoringCase(options.Value.Quotas.Tenants);

    /// <summary>The most principals of tenants with a share bucket of their own (tests lower it).</summary>
    internal int MaxShareBuckets { get; init; } = 10_000;

    /// <summary>Principals of tenants with a share bucket of their own (tests).</summary>
    internal int ShareBuckets => _shares.Count;

    /// <summary>Takes <paramref name="cost"/> operations from the tenant's bucket; false (and how long to wait) if it has too few.</summary>
    public bool TryTake(TenantId tenant, int cost, out TimeSpan retryAfter)
    {
        retryAfter = TimeSpan.Zero;
        if (!_options.Enabled || cost <= 0)
        {
            return true;
        }

        var (rate, burst) = LimitOf(tenant);
        return Take(_buckets.GetOrAdd(tenant, _ => new Bucket(burst, time.GetTimestamp())), cost, rate, burst, out retryAfter);
    }

    /// <summary>
    /// Takes one call from the tenant's bucket of calls other than crypto operations
    /// (<see cref="QuotaOptions.OtherCallsPerSecond"/>) and from the principal's share of it
    /// (<see cref="QuotaOptions.OtherCallsPrincipalShare"/>); false (and how long to wait) if either
    /// is empty, and then neither is spent. <paramref name="byShare"/> says which held the call
    /// back: the principal's share (true) or the tenant's bucket — when both are empty, the one
    /// with the longer wait.
    /// </summary>
    public bool TryTakeOther(TenantId tenant, string principal, out TimeSpan retryAfter, out bool byShare)
    {
        retryAfter = TimeSpan.Zero;
        byShare = false;
        if (!_options.Enabled)
        {
            return true;
        }

        var own = _tenants.GetValueOrDefault(tenant.Value);
        var (rate, burst) = Limit(own?.OtherCallsPerSecond, own?.OtherCallsBurst, _options.OtherCallsPerSecond, _options.OtherCallsBurst);
        var tenantBucket = _otherBuckets.GetOrAdd(tenant, _ => new Bucket(burst, time.GetTimestamp()));
        var share = own?.OtherCallsPrincipalShare ?? _options.OtherCallsPrincipalShare;
        if (share >= 1)
        {
            return Take(tenantBucket, 1, rate, burst, out retryAfter);
        }

        var (shareRate, shareBurst) = (rate * share, Math.Max(1, burst * share));
        while (true)
        {
            var shareBucket = ShareOf(tenant, principal, shareBurst);

            // Always the principal's bucket, then the tenant's: the one order, so no deadlock.
            lock (shareBucket)
            {
                // Dropped from the table between the look-up and this lock: its calls go to the new one.
                if (shareBucket.Dropped)
                {
                    continue;
                }

                lock (tenantBucket)
                {
                    var now = time.GetTimestamp();
                    Refill(shareBucket, now, shareRate, shareBurst);
                    Refill(tenantBucket, now, rate, burst);
                    if (shareBucket.Tokens >= 1 && tenantBucket.Tokens >= 1)
                    {
                        shareBucket.Tokens--;
                        tenantBucket.Tokens--;
                        return true;
                    }

                    // Neither is spent: a principal refused for its share spends none of its tenant's calls.
                    var shareWait = shareBucket.Tokens >= 1 ? TimeSpan.Zero : WaitFor(shareBucket, 1, shareRate);
                    var tenantWait = tenantBucket.Tokens >= 1 ? TimeSpan.Zero : WaitFor(tenantBucket, 1, rate);
                    byShare = shareWait > tenantWait;
                    retryAfter = byShare ? shareWait : tenantWait;
                    return false;
                }
            }
        }
    }

    /// <summary>
    /// The options that set the tenant's crypto quota, as a refusal names them: the tenant's
    /// override (<c>Kms:Quotas:Tenants:{id}:…</c>) where one is set, else the deployment's.
    /// </summary>
    public string CryptoOptionOf(TenantId tenant)
    {
        var own = _tenants.GetValueOrDefault(tenant.Value);
        return OptionOf(tenant, own?.OperationsPerSecond is not null, own?.Burst is not null, nameof(QuotaOptions.OperationsPerSecond), nameof(QuotaOptions.Burst));
    }

    /// <summary>The options that set the tenant's bucket of other calls, as <see cref="CryptoOptionOf"/>.</summary>
    public string OtherOptionOf(TenantId tenant)
    {
        var own = _tenants.GetValueOrDefault(tenant.Value);
        return OptionOf(tenant, own?.OtherCallsPerSecond is not null, own?.OtherCallsBurst is not null, nameof(QuotaOptions.OtherCallsPerSecond), nameof(QuotaOptions.OtherCallsBurst));
    }

    /// <summary>The option that sets a principal's share of the tenant's other calls, and of what.</summary>
    public string ShareOptionOf(TenantId tenant)
    {
        var own = _tenants.GetValueOrDefault(tenant.Value);
        var share = own?.OtherCallsPrincipalShare is null
            ? $"Kms:Quotas:{nameof(QuotaOptions.OtherCallsPrincipalShare)}"
            : $"Kms:Quotas:Tenants:{tenant.Value}:{nameof(TenantQuota.OtherCallsPrincipalShare)}";
        return $"{share} of {OtherOptionOf(tenant)}";
    }

    /// <summary>
    /// Takes <paramref name="cost"/> calls from the bucket of a principal of no tenant
    /// (<see cref="QuotaOptions.PrincipalsWithoutTenant"/>); false (and how long to wait) if it has too few.
    /// </summary>
    public bool TryTakePrincipal(string principal, int cost, out TimeSpan retryAfter)
    {
        retryAfter = TimeSpan.Zero;
        if (!_options.Enabled || cost <= 0)
        {
            return true;
        }

        var (rate, burst) = (_options.PrincipalsWithoutTenant.CallsPerSecond, _options.PrincipalsWithoutTenant.Burst);
        if (_principals.Count >= MaxPrincipalBuckets && !_principals.ContainsKey(principal))
        {
            _principals.Clear();
        }

        return Take(_principals.GetOrAdd(principal, _ => new Bucket(burst, time.GetTimestamp())), cost, rate, burst, out retryAfter);
    }

    private bool Take(Bucket bucket, int cost, double rate, double burst, out TimeSpan retryAfter)
    {
        retryAfter = TimeSpan.Zero;
        lock (bucket)
        {
            Refill(bucket, time.GetTimestamp(), rate, burst);

            // A request larger than the whole bucket may still pass when the bucket is full,
            // otherwise a big batch could never be served.
            var needed = Math.Min(cost, burst);
            if (bucket.Tokens >= needed)
            {
                bucket.Tokens -= cost;
                return true;
            }

            retryAfter = WaitFor(bucket, needed, rate);
            return false;
        }
    }

    private void Refill(Bucket bucket, long now, double rate, double burst)
    {
        bucket.Tokens = Math.Min(burst, bucket.Tokens + (time.GetElapsedTime(bucket.Stamp, now).TotalSeconds * rate));
        bucket.Stamp = now;
    }

    private static TimeSpan WaitFor(Bucket bucket, double needed, double rate) =>
        TimeSpan.FromSeconds(Math.Ceiling((needed - bucket.Tokens) / rate * 1000) / 1000);

    // The principal's own bucket; when the table is full even of buckets still being spent, the
    // tenant's overflow bucket. A new bucket starts full.
    private Bucket ShareOf(TenantId tenant, string principal, double burst)
    {
        if (_shares.TryGetValue((tenant, principal), out var bucket))
        {
            return bucket;
        }

        lock (_sharesGate)
        {
            if (_shares.TryGetValue((tenant, principal), out bucket))
            {
                return bucket;
            }

            var now = time.GetTimestamp();

            // At most once a second: a full table of active principals is not scanned for every new one.
            if (_shares.Count >= MaxShareBuckets && (_sharesPruned == 0 || time.GetElapsedTime(_sharesPruned, now) >= TimeSpan.FromSeconds(1)))
            {
                _sharesPruned = now;
                PruneShares(now);
            }

            if (_shares.Count >= MaxShareBuckets)
            {
                return _shareOverflow.GetOrAdd(tenant, _ => new Bucket(burst, now));
            }

            bucket = new Bucket(burst, now);
            _shares[(tenant, principal)] = bucket;
            return bucket;
        }
    }

    // Drops the share buckets that have filled up again: principals that called no more than
    // their share's rate since they were last full.
    private void PruneShares(long now)
    {
        foreach (var (key, bucket) in _shares)
        {
            var own = _tenants.GetValueOrDefault(key.Tenant.Value);
            var (rate, burst) = Limit(own?.OtherCallsPerSecond, own?.OtherCallsBurst, _options.OtherCallsPerSecond, _options.OtherCallsBurst);
            var share = own?.OtherCallsPrincipalShare ?? _options.OtherCallsPrincipalShare;
            lock (bucket)
            {
                Refill(bucket, now, rate * share, Math.Max(1, burst * share));
                if (bucket.Tokens >= Math.Max(1, burst * share))
                {
                    bucket.Dropped = true;
                    _shares.TryRemove(key, out _);
                }
            }
        }
    }

    // The numbers were checked at start (QuotaOptions.Validate): a rate above 0, a burst of at
    // least 1. What an override leaves unset is the deployment's; its burst, two seconds of its own rate.
    private (double Rate, double Burst) LimitOf(TenantId tenant)
    {
        var own = _tenants.GetValueOrDefault(tenant.Value);
        return Limit(own?.OperationsPerSecond, own?.Burst, _options.OperationsPerSecond, _options.Burst);
    }

    // One rule for both buckets: what an override leaves unset is the deployment's, except that a
    // rate given alone brings a burst of two seconds of it.
    private static (double Rate, double Burst) Limit(double? ownRate, double? ownBurst, double rate, double burst) =>
        (ownRate ?? rate, ownBurst ?? (ownRate is { } own ? Math.Max(1, own * 2) : burst));

    // The rate's option where it is set (the override's, else the deployment's), and the override's
    // burst when it sets one: the options an operator changes to change what refused the call.
    private static string OptionOf(TenantId tenant, bool ownRate, bool ownBurst, string rate, string burst)
    {
        var rateOption = ownRate ? $"Kms:Quotas:Tenants:{tenant.Value}:{rate}" : $"Kms:Quotas:{rate}";
        return ownBurst ? $"{rateOption}, Kms:Quotas:Tenants:{tenant.Value}:{burst}" : rateOption;
    }

    // Configuration merges keys that differ only in case; of options built in code, the last stands.
    private static Dictionary<string, TenantQuota> IgnoringCase(Dictionary<string, TenantQuota> tenants)
    {
        var result = new Dictionary<string, TenantQuota>(StringComparer.OrdinalIgnoreCase);
        foreach (var (tenant, quota) in tenants)
        {
            result[tenant] = quota;
        }

        return result;
    }

    private sealed class Bucket(double tokens, long stamp)
    {
        public double Tokens { get; set; } = tokens;

        public long Stamp { get; set; } = stamp;

        // Set (under its lock) when a full share bucket is dropped from the table.
        public bool Dropped { get; set; }
    }
}
