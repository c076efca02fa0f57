using System.Collections.Concurrent;
using System.Diagnostics.Metrics;
using Kms.Core.Keys;
using Net.Pkcs11Interop.HighLevelAPI;

namespace Kms.Hsm.Tests;

/// <summary>
/// The adapter's instruments on the <c>Kms</c> meter (exported by the server; the names are
/// in docs/observability.md). Other tests use pools and caches at the same time, so counts
/// are checked as "at least".
/// </summary>
public sealed class HsmMetricsTests(HsmFixture fixture) : IClassFixture<HsmFixture>
{
    private static readonly Pkcs11InteropFactories Factories = new();

    [Fact]
    public async Task SessionPool_Lease_CountedInUseUntilReturned_WaitRecorded()
    {
        using var measurements = new Measurements();
        using var session = fixture.OpenRawSession();
        var pool = new SessionPool([session]);
        Assert.Equal(0, pool.InUse);

        var lease = await pool.AcquireAsync(default);
        Assert.Equal(1, pool.InUse);
        measurements.Observe();
        Assert.True(measurements.Last("hsm_sessions_in_use") >= 1);
        Assert.True(measurements.Last("hsm_sessions") >= 1);

        var waiter = pool.AcquireAsync(default).AsTask(); // waits: the only session is leased
        await Task.Delay(50);
        lease.Dispose();
        Assert.True(await Task.WhenAny(waiter, Task.Delay(TimeSpan.FromSeconds(60))) == waiter, "hang guard: the waiter was not woken within 60 s of the release");
        (await waiter).Dispose();
        Assert.Equal(0, pool.InUse);

        Assert.True(measurements.Count("hsm_session_wait_seconds") >= 2);
        Assert.Contains(measurements.All("hsm_session_wait_seconds"), wait => wait >= 0.04);
    }

    [Fact]
    public void KeyHandleCache_MissThenHit_CountedAndSized()
    {
        using var measurements = new Measurements();
        using var cache = new KeyHandleCache(1, 10, TimeSpan.FromMinutes(5));
        var id = KeyVersionId.NewId();

        cache.Lease(id, KeyHandleKind.Aes256Gcm, () => Factories.ObjectHandleFactory.Create(5)).Dispose();
        cache.Lease(id, KeyHandleKind.Aes256Gcm, () => throw new InvalidOperationException("must hit the cache")).Dispose();
        measurements.Observe();

        Assert.True(measurements.Sum("hsm_key_cache_misses_total") >= 1);
        Assert.True(measurements.Sum("hsm_key_cache_hits_total") >= 1);
        Assert.True(measurements.Last("hsm_key_cache_entries") >= 1);
    }

    [Fact]
    public async Task Instruments_CarryNoTags()
    {
        using var measurements = new Measurements();
        using var session = fixture.OpenRawSession();
        (await new SessionPool([session]).AcquireAsync(default)).Dispose();
        using var cache = new KeyHandleCache(1, 10, TimeSpan.FromMinutes(5));
        cache.Lease(KeyVersionId.NewId(), KeyHandleKind.Aes256Gcm, () => Factories.ObjectHandleFactory.Create(6)).Dispose();
        measurements.Observe();

        Assert.Superset(new HashSet<string> { "hsm_session_wait_seconds", "hsm_key_cache_misses_total", "hsm_sessions_in_use", "hsm_sessions", "hsm_key_cache_entries" }, measurements.Names.ToHashSet());
        Assert.Empty(measurements.Tagged);
    }

    /// <summary>Every measurement of the adapter's instruments while it lives.</summary>
    private sealed class Measurements : IDisposable
    {
        private readonly MeterListener _listener = new();
        private readonly ConcurrentQueue<(string Name, double Value)> _values = new();

        public Measurements()
        {
            _listener.InstrumentPublished = (instrument, listener) =>
            {
                if (instrument.Meter.Name == HsmMetrics.MeterName && instrument.Name.StartsWith("hsm_", StringComparison.Ordinal))
                {
                    listener.EnableMeasurementEvents(instrument);
                }
            };
            _listener.SetMeasurementEventCallback<long>((instrument, value, tags, _) => Add(instrument, value, tags));
            _listener.SetMeasurementEventCallback<double>((instrument, value, tags, _) => Add(instrument, value, tags));
            _listener.Start();
        }

        public ConcurrentDictionary<string, int> Tagged { get; } = new();

        public IEnumerable<string> Names => _values.Select(v => v.Name).Distinct();

        /// <summary>Reads the observable gauges now.</summary>
        public void Observe() => _listener.RecordObservableInstruments();

        public IEnumerable<double> All(string name) => _values.Where(v => v.Name == name).Select(v => v.Value);

        public int Count(string name) => All(name).Count();

        public double Sum(string name) => All(name).Sum();

        public double Last(string name) => All(name).Last();

        public void Dispose() => _listener.Dispose();

        private void Add(Instrument instrument, double value, ReadOnlySpan<KeyValuePair<string, object?>> tags)
        {
            _values.Enqueue((instrument.Name, value));
            if (tags.Length > 0)
            {
                Tagged.AddOrUpdate(instrument.Name, 1, (_, n) => n + 1);
            }
        }
    }
}
