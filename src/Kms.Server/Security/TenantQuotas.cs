using System.Collections.Concurrent;
using Kms.Core.Names;
using Kms.Server.Hosting;
using Microsoft.Extensions.Options;

namespace Kms.Server.Security;

/// <summary>
/// A token bucket per tenant for crypto operations, so one tenant cannot starve another, and
/// another per tenant for its other calls (reads and management), of which each principal of the
/// tenant may spend only a share (<see cref="QuotaOptions.OtherCallsPrincipalShare"/>; of the
/// crypto bucket too where <see cref="QuotaOptions.CryptoPrincipalShare"/> says so).
/// Driven by <see cref="TimeProvider"/> (tests use a fake clock). Per node: a deployment of N
/// nodes admits up to N times the configured rate. A rate is never 0 (refused at start); metering
/// is off only with <c>Kms:Quotas:Enabled=false</c>.
/// </summary>
internal sealed class TenantQuotas
{
    private readonly TimeProvider _time;
    private readonly QuotaOptions _options;
    private readonly ConcurrentDictionary<TenantId, Bucket> _buckets = new();

    // The tenants' calls other than crypto operations, on buckets apart: a flood of reads
    // spends none of the tenant's crypto quota, and crypto spends none of its reads.
    private readonly ConcurrentDictionary<TenantId, Bucket> _otherBuckets = new();

    // Each principal's share of its tenant's other calls, so that one runaway or leaked token
    // cannot spend the whole bucket and hold up the tenant's key managers and auditors. The
    // principals are the tenant's registered ones, but a tenant admin may have many, and a large
    // deployment many tenants: the table is bounded (PrincipalBuckets), and past its bound a new
    // principal spends its tenant's one overflow bucket, of the same share — every call also spends
    // the tenant's bucket, so nothing gets past the tenant's quota.
    private readonly PrincipalBuckets _shares;

    // Each principal's share of its tenant's crypto quota, where one is set (CryptoPrincipalShare
    // below 1; by default none: a tenant's crypto is often one service principal's). The same
    // bounded table, apart: a principal's crypto and its other calls are different buckets.
    private readonly PrincipalBuckets _cryptoShares;

    // The principals of no tenant, each on its own bucket. Registered deployment principals land
    // here, and so does every certificate from the client CA and every workload token of a
    // configured issuer whose principal is not registered (it may call what needs no permission):
    // such a name is the caller's choice (a certificate subject, a JWT sub), so the table is bounded
    // as the shares are, with one overflow bucket for the new names past the bound. It was emptied
    // when full: 10,000 names called once gave every principal, one being refused too, a full bucket.
    private readonly PrincipalBuckets _principals;

    // The group of the principals of no tenant in their table: one overflow bucket for them all.
    private const string NoTenant = "";

    // Looked up ignoring case, as configuration keys are: an override written ACME (an environment
    // variable in capitals) is tenant acme's, not a key no tenant id can ever match.
    private readonly Dictionary<string, TenantQuota> _tenants;

    /// <summary>Meters with the options' quotas on the given clock.</summary>
    public TenantQuotas(IOptions<KmsServerOptions> options, TimeProvider time)
    {
        _options = options.Value.Quotas;
        _tenants = IgnoringCase(_options.Tenants);
        _time = time;
        _shares = new PrincipalBuckets(time, OtherShareLimitOf);
        _cryptoShares = new PrincipalBuckets(time, CryptoShareLimitOf);
        _principals = new PrincipalBuckets(time, _ => (_options.PrincipalsWithoutTenant.CallsPerSecond, _options.PrincipalsWithoutTenant.Burst));
    }

    /// <summary>The most principals of tenants with a share bucket of their own, in each of the two tables (tests lower it).</summary>
    internal int MaxShareBuckets
    {
        get => _shares.Max;
        init => (_shares.Max, _cryptoShares.Max) = (value, value);
    }

    /// <summary>Principals of tenants with a share bucket of their own (tests).</summary>
    internal int ShareBuckets => _shares.Count;

    /// <summary>Principals of tenants with a bucket of their own for their share of its crypto quota (tests).</summary>
    internal int CryptoShareBuckets => _cryptoShares.Count;

    /// <summary>Times the share table's one lock was taken, by principals without a bucket of their own (tests).</summary>
    internal long ShareTableLocks => _shares.GateEntries;

    /// <summary>The most principals of no tenant with a bucket of their own (tests lower it).</summary>
    internal int MaxPrincipalBuckets { get => _principals.Max; init => _principals.Max = value; }

    /// <summary>Principals of no tenant with a bucket of their own (tests).</summary>
    internal int PrincipalBucketCount => _principals.Count;

    /// <summary>
    /// Takes <paramref name="cost"/> operations from the tenant's crypto bucket and, where the
    /// principal may spend only a share of it (<see cref="QuotaOptions.CryptoPrincipalShare"/> below
    /// 1), from the principal's share; false (and how long to wait) if either has too few, and then
    /// neither is spent. <paramref name="byShare"/> says which held the call back, as for
    /// <see cref="TryTakeOther"/>.
    /// </summary>
    public bool TryTake(TenantId tenant, string principal, int cost, out TimeSpan retryAfter, out bool byShare)
    {
        retryAfter = TimeSpan.Zero;
        byShare = false;
        if (!_options.Enabled || cost <= 0)
        {
            return true;
        }

        var own = _tenants.GetValueOrDefault(tenant.Value);
        var limit = CryptoLimitOf(own);
        var tenantBucket = _buckets.GetOrAdd(tenant, _ => new Bucket(limit.Burst, _time.GetTimestamp()));
        var share = own?.CryptoPrincipalShare ?? _options.CryptoPrincipalShare;
        return share >= 1
            ? Take(tenantBucket, cost, limit.Rate, limit.Burst, out retryAfter)
            : TakeShared(_cryptoShares, tenant, principal, ShareOf(limit, share), tenantBucket, limit, cost, out retryAfter, out byShare);
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
        var limit = OtherLimitOf(own);
        var tenantBucket = _otherBuckets.GetOrAdd(tenant, _ => new Bucket(limit.Burst, _time.GetTimestamp()));
        var share = own?.OtherCallsPrincipalShare ?? _options.OtherCallsPrincipalShare;
        return share >= 1
            ? Take(tenantBucket, 1, limit.Rate, limit.Burst, out retryAfter)
            : TakeShared(_shares, tenant, principal, ShareOf(limit, share), tenantBucket, limit, 1, out retryAfter, out byShare);
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
    public string ShareOptionOf(TenantId tenant) =>
        ShareOption(tenant, _tenants.GetValueOrDefault(tenant.Value)?.OtherCallsPrincipalShare is not null, nameof(QuotaOptions.OtherCallsPrincipalShare), OtherOptionOf(tenant));

    /// <summary>The option that sets a principal's share of the tenant's crypto quota, and of what.</summary>
    public string CryptoShareOptionOf(TenantId tenant) =>
        ShareOption(tenant, _tenants.GetValueOrDefault(tenant.Value)?.CryptoPrincipalShare is not null, nameof(QuotaOptions.CryptoPrincipalShare), CryptoOptionOf(tenant));

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
        while (true)
        {
            var bucket = _principals.Of(NoTenant, principal, burst);
            lock (bucket)
            {
                // Dropped from the table between the look-up and this lock (it was full): its calls go to the new one.
                if (bucket.Dropped)
                {
                    continue;
                }

                return Take(bucket, cost, rate, burst, out retryAfter);
            }
        }
    }

    private bool Take(Bucket bucket, int cost, double rate, double burst, out TimeSpan retryAfter)
    {
        retryAfter = TimeSpan.Zero;
        lock (bucket)
        {
            bucket.Refill(_time, _time.GetTimestamp(), rate, burst);

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

    // Takes cost from the principal's share and from the tenant's bucket, or from neither.
    private bool TakeShared(PrincipalBuckets shares, TenantId tenant, string principal, (double Rate, double Burst) shareLimit, Bucket tenantBucket, (double Rate, double Burst) tenantLimit, int cost, out TimeSpan retryAfter, out bool byShare)
    {
        retryAfter = TimeSpan.Zero;
        byShare = false;

        // As in Take: a request larger than a whole bucket passes when that bucket is full.
        var (shareNeeded, tenantNeeded) = (Math.Min(cost, shareLimit.Burst), Math.Min(cost, tenantLimit.Burst));
        while (true)
        {
            var shareBucket = shares.Of(tenant.Value, principal, shareLimit.Burst);

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
                    var now = _time.GetTimestamp();
                    shareBucket.Refill(_time, now, shareLimit.Rate, shareLimit.Burst);
                    tenantBucket.Refill(_time, now, tenantLimit.Rate, tenantLimit.Burst);
                    if (shareBucket.Tokens >= shareNeeded && tenantBucket.Tokens >= tenantNeeded)
                    {
                        shareBucket.Tokens -= cost;
                        tenantBucket.Tokens -= cost;
                        return true;
                    }

                    // Neither is spent: a principal refused for its share spends none of its tenant's quota.
                    var shareWait = shareBucket.Tokens >= shareNeeded ? TimeSpan.Zero : WaitFor(shareBucket, shareNeeded, shareLimit.Rate);
                    var tenantWait = tenantBucket.Tokens >= tenantNeeded ? TimeSpan.Zero : WaitFor(tenantBucket, tenantNeeded, tenantLimit.Rate);
                    byShare = shareWait > tenantWait;
                    retryAfter = byShare ? shareWait : tenantWait;
                    return false;
                }
            }
        }
    }

    private static TimeSpan WaitFor(Bucket bucket, double needed, double rate) =>
        TimeSpan.FromSeconds(Math.Ceiling((needed - bucket.Tokens) / rate * 1000) / 1000);

    // The numbers were checked at start (QuotaOptions.Validate): a rate above 0, a burst of at
    // least 1. What an override leaves unset is the deployment's; its burst, two seconds of its own rate.
    private (double Rate, double Burst) CryptoLimitOf(TenantQuota? own) =>
        Limit(own?.OperationsPerSecond, own?.Burst, _options.OperationsPerSecond, _options.Burst);

    // The bucket of a tenant's other calls, by the same rule.
    private (double Rate, double Burst) OtherLimitOf(TenantQuota? own) =>
        Limit(own?.OtherCallsPerSecond, own?.OtherCallsBurst, _options.OtherCallsPerSecond, _options.OtherCallsBurst);

    // A principal's share of a tenant's bucket: of its rate, and of its burst (at least 1).
    private static (double Rate, double Burst) ShareOf((double Rate, double Burst) limit, double share) =>
        (limit.Rate * share, Math.Max(1, limit.Burst * share));

    // The limits of the share tables' buckets, by group: the tenant's id.
    private (double Rate, double Burst) OtherShareLimitOf(string tenant)
    {
        var own = _tenants.GetValueOrDefault(tenant);
        return ShareOf(OtherLimitOf(own), own?.OtherCallsPrincipalShare ?? _options.OtherCallsPrincipalShare);
    }

    private (double Rate, double Burst) CryptoShareLimitOf(string tenant)
    {
        var own = _tenants.GetValueOrDefault(tenant);
        return ShareOf(CryptoLimitOf(own), own?.CryptoPrincipalShare ?? _options.CryptoPrincipalShare);
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

    // A share's option (the tenant's override where it sets one, else the deployment's), and of what.
    private static string ShareOption(TenantId tenant, bool ownShare, string share, string ofOption)
    {
        var shareOption = ownShare ? $"Kms:Quotas:Tenants:{tenant.Value}:{share}" : $"Kms:Quotas:{share}";
        return $"{shareOption} of {ofOption}";
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

        // Set (under its lock) when a full bucket is dropped from its table.
        public bool Dropped { get; set; }

        // Under its lock.
        public void Refill(TimeProvider time, long now, double rate, double burst)
        {
            Tokens = Math.Min(burst, Tokens + (time.GetElapsedTime(Stamp, now).TotalSeconds * rate));
            Stamp = now;
        }
    }

    // A bucket per principal, in groups (a tenant's principals; the principals of no tenant), the
    // table bounded because a principal's name may be the caller's choice. When it is full, the
    // buckets that have filled up again are dropped (at most once a second, so a full table of
    // principals still spending is not scanned for every new one) — a full bucket is what a new one
    // would be, so dropping it gives nobody a call more, and a principal being refused, whose bucket
    // is not full, keeps it. While the table is still full, a new principal spends its group's one
    // overflow bucket: new names get no calls of their own. A new bucket starts full.
    private sealed class PrincipalBuckets(TimeProvider time, Func<string, (double Rate, double Burst)> limitOf)
    {
        private readonly ConcurrentDictionary<(string Group, string Principal), Bucket> _buckets = new();
        private readonly ConcurrentDictionary<string, Bucket> _overflow = new(StringComparer.Ordinal);
        private readonly Lock _gate = new();

        // Both written under the gate only, read without it too.
        private int _count;
        private long _pruned;

        private long _gateEntries;

        public int Max { get; set; } = 10_000;

        public int Count => Volatile.Read(ref _count);

        // Times the gate was taken (tests).
        public long GateEntries => Interlocked.Read(ref _gateEntries);

        // The principal's bucket, or its group's overflow bucket; a caller locks it and checks
        // Dropped (a bucket dropped after this look-up sends the caller back here).
        public Bucket Of(string group, string principal, double burst)
        {
            if (_buckets.TryGetValue((group, principal), out var bucket))
            {
                return bucket;
            }

            // Full, and pruned less than a second ago: the gate would change nothing (no prune, no
            // room), so the overflow bucket without it — every call of every principal past the
            // bound, of every tenant, once queued on that one lock. A prune running now may be making
            // room: this call spends the overflow bucket, as one a moment earlier would have.
            var now = time.GetTimestamp();
            if (Volatile.Read(ref _count) >= Max && !PruneDue(Volatile.Read(ref _pruned), now))
            {
                // Added by another call since the look-up above, while there was room.
                return _buckets.TryGetValue((group, principal), out bucket) ? bucket : _overflow.GetOrAdd(group, _ => new Bucket(burst, now));
            }

            lock (_gate)
            {
                Interlocked.Increment(ref _gateEntries);
                if (_buckets.TryGetValue((group, principal), out bucket))
                {
                    return bucket;
                }

                now = time.GetTimestamp();
                if (_count >= Max && PruneDue(_pruned, now))
                {
                    Volatile.Write(ref _pruned, now);
                    Prune(now);
                }

                if (_count >= Max)
                {
                    return _overflow.GetOrAdd(group, _ => new Bucket(burst, now));
                }

                bucket = new Bucket(burst, now);
                _buckets[(group, principal)] = bucket;
                Volatile.Write(ref _count, _count + 1);
                return bucket;
            }
        }

        // At most once a second: a full table of principals still spending is not scanned for every new one.
        private bool PruneDue(long pruned, long now) => pruned == 0 || time.GetElapsedTime(pruned, now) >= TimeSpan.FromSeconds(1);

        // Under the gate: drops the buckets that have filled up again — principals that called no
        // more than their rate since they were last full.
        private void Prune(long now)
        {
            foreach (var (key, bucket) in _buckets)
            {
                var (rate, burst) = limitOf(key.Group);
                lock (bucket)
                {
                    bucket.Refill(time, now, rate, burst);
                    if (bucket.Tokens >= burst)
                    {
                        bucket.Dropped = true;
                        _buckets.TryRemove(key, out _);
                        Volatile.Write(ref _count, _count - 1);
                    }
                }
            }
        }
    }
}
