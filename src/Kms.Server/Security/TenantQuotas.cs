using System.Collections.Concurrent;
using Kms.Core.Names;
using Kms.Server.Hosting;
using Microsoft.Extensions.Options;

namespace Kms.Server.Security;

/// <summary>
/// A token bucket per tenant for crypto operations, so one tenant cannot starve another, and
/// another per tenant for its other calls (reads and management).
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

    // The principals of no tenant, each on its own bucket. Only registered deployment principals
    // and the certificate or workload principals that authenticate reach here, but an unregistered
    // one's name is the caller's choice (a certificate subject, a JWT sub): the table is bounded,
    // and emptied when full (each bucket starts full again, as a restart would leave it).
    private const int MaxPrincipalBuckets = 10_000;
    private readonly ConcurrentDictionary<string, Bucket> _principals = new(StringComparer.Ordinal);

    // Looked up ignoring case, as configuration keys are: an override written ACME (an environment
    // variable in capitals) is tenant acme's, not a key no tenant id can ever match.
    private readonly Dictionary<string, TenantQuota> _tenants = IgnoringCase(options.Value.Quotas.Tenants);

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
    /// (<see cref="QuotaOptions.OtherCallsPerSecond"/>); false (and how long to wait) if it is empty.
    /// </summary>
    public bool TryTakeOther(TenantId tenant, out TimeSpan retryAfter)
    {
        retryAfter = TimeSpan.Zero;
        if (!_options.Enabled)
        {
            return true;
        }

        var (rate, burst) = OtherLimitOf(tenant);
        return Take(_otherBuckets.GetOrAdd(tenant, _ => new Bucket(burst, time.GetTimestamp())), 1, rate, burst, out retryAfter);
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
            var now = time.GetTimestamp();
            bucket.Tokens = Math.Min(burst, bucket.Tokens + (time.GetElapsedTime(bucket.Stamp, now).TotalSeconds * rate));
            bucket.Stamp = now;

            // A request larger than the whole bucket may still pass when the bucket is full,
            // otherwise a big batch could never be served.
            var needed = Math.Min(cost, burst);
            if (bucket.Tokens >= needed)
            {
                bucket.Tokens -= cost;
                return true;
            }

            retryAfter = TimeSpan.FromSeconds(Math.Ceiling((needed - bucket.Tokens) / rate * 1000) / 1000);
            return false;
        }
    }

    // The numbers were checked at start (QuotaOptions.Validate): a rate above 0, a burst of at
    // least 1. What an override leaves unset is the deployment's; its burst, two seconds of its own rate.
    private (double Rate, double Burst) LimitOf(TenantId tenant)
    {
        var own = _tenants.GetValueOrDefault(tenant.Value);
        return Limit(own?.OperationsPerSecond, own?.Burst, _options.OperationsPerSecond, _options.Burst);
    }

    private (double Rate, double Burst) OtherLimitOf(TenantId tenant)
    {
        var own = _tenants.GetValueOrDefault(tenant.Value);
        return Limit(own?.OtherCallsPerSecond, own?.OtherCallsBurst, _options.OtherCallsPerSecond, _options.OtherCallsBurst);
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
    }
}
