using System.Diagnostics.Metrics;
using System.Runtime.CompilerServices;

namespace Kms.Hsm;

/// <summary>
/// What the adapter knows about its own load, as <see cref="System.Diagnostics.Metrics"/>
/// instruments on the <c>Kms</c> meter. This project exports nothing itself: the server
/// publishes the meter (docs/observability.md lists the exported names).
/// </summary>
/// <remarks>
/// No instrument carries a tag: nothing about a key, a tenant or a caller can become a label.
/// The gauges add up every pool and cache alive in the process (a server has one HSM adapter,
/// so in production that is the adapter's own figure). Pools and caches are held weakly, so
/// one that is never disposed is still not kept alive by its metrics.
/// </remarks>
internal static class HsmMetrics
{
    /// <summary>The meter's name; the same one the server's own instruments use.</summary>
    public const string MeterName = "Kms";

    private static readonly Meter Meter = new(MeterName);

    private static readonly ConditionalWeakTable<SessionPool, object?> Pools = [];
    private static readonly ConditionalWeakTable<KeyHandleCache, object?> Caches = [];

    /// <summary>How long a call waited for a free session (zero when one was free).</summary>
    public static readonly Histogram<double> SessionWait = Meter.CreateHistogram(
        "hsm_session_wait_seconds",
        unit: "s",
        description: "Time an HSM operation waited for a free session of the pool",
        tags: null,
        advice: new InstrumentAdvice<double>
        {
            HistogramBucketBoundaries = [0.00001, 0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
        });

    /// <summary>A key version's unwrapped copy was found in the handle cache.</summary>
    public static readonly Counter<long> KeyCacheHits = Meter.CreateCounter<long>(
        "hsm_key_cache_hits_total",
        unit: "{lookup}",
        description: "Key-version lookups served by an already unwrapped HSM session object");

    /// <summary>A key version had to be unwrapped under the domain key.</summary>
    public static readonly Counter<long> KeyCacheMisses = Meter.CreateCounter<long>(
        "hsm_key_cache_misses_total",
        unit: "{lookup}",
        description: "Key-version lookups that unwrapped the version under the domain key");

    /// <summary>
    /// An object search (<c>C_FindObjectsInit</c> … <c>C_FindObjectsFinal</c>) on the token: only
    /// when the domain key is located (start, recovery). A key-version lookup never searches: a
    /// cache miss is one unwrap of the stored blob.
    /// </summary>
    public static readonly Counter<long> ObjectSearches = Meter.CreateCounter<long>(
        "hsm_object_searches_total",
        unit: "{search}",
        description: "Object searches on the token (locating the domain key at start and after a recovery; never per request)");

    /// <summary>Sessions leased to an operation right now.</summary>
    public static readonly ObservableGauge<long> SessionsInUse = Meter.CreateObservableGauge(
        "hsm_sessions_in_use",
        () => Sum(Pools, pool => pool.InUse),
        unit: "{session}",
        description: "HSM sessions leased to an operation right now");

    /// <summary>Sessions in the pool, busy or not.</summary>
    public static readonly ObservableGauge<long> Sessions = Meter.CreateObservableGauge(
        "hsm_sessions",
        () => Sum(Pools, pool => pool.Size),
        unit: "{session}",
        description: "Logged-in HSM sessions in the pool");

    /// <summary>Key versions cached unwrapped.</summary>
    public static readonly ObservableGauge<long> KeyCacheEntries = Meter.CreateObservableGauge(
        "hsm_key_cache_entries",
        () => Sum(Caches, cache => cache.Count),
        unit: "{entry}",
        description: "Key versions held unwrapped in the HSM as cached session objects");

    public static void Track(SessionPool pool) => Pools.AddOrUpdate(pool, null);

    public static void Untrack(SessionPool pool) => Pools.Remove(pool);

    public static void Track(KeyHandleCache cache) => Caches.AddOrUpdate(cache, null);

    public static void Untrack(KeyHandleCache cache) => Caches.Remove(cache);

    private static long Sum<T>(ConditionalWeakTable<T, object?> table, Func<T, int> value)
        where T : class
    {
        long sum = 0;
        foreach (var (item, _) in table)
        {
            sum += value(item);
        }

        return sum;
    }
}
