using System.Diagnostics.Metrics;

namespace Kms.Client.Tests.Failover;

/// <summary>
/// Counts <c>kms.client.quota_retries</c> measurements made by calls started in the test that created
/// it (on its execution context), while it lives. The meter is process-wide and several test classes
/// wait out quotas at the same time: an async-local mark keeps their measurements apart.
/// </summary>
internal sealed class QuotaRetryCount : IDisposable
{
    private static readonly AsyncLocal<QuotaRetryCount?> Current = new();
    private readonly MeterListener _listener = new();
    private long _count;
    private long _tagged;

    /// <summary>Marks the caller's execution context (a synchronous constructor: the mark stays with the test after it returns).</summary>
    public QuotaRetryCount()
    {
        Current.Value = this;
        _listener.InstrumentPublished = (instrument, listener) =>
        {
            if (instrument.Meter.Name == "Kms.Client" && instrument.Name == "kms.client.quota_retries")
            {
                listener.EnableMeasurementEvents(instrument);
            }
        };
        _listener.SetMeasurementEventCallback<long>((_, value, tags, _) =>
        {
            if (ReferenceEquals(Current.Value, this))
            {
                Interlocked.Add(ref _count, value);
                Interlocked.Add(ref _tagged, tags.Length > 0 ? value : 0);
            }
        });
        _listener.Start();
    }

    public long Value => Interlocked.Read(ref _count);

    /// <summary>Measurements counted that carried a tag (the counter has none: no tenant, key or principal).</summary>
    public long Tagged => Interlocked.Read(ref _tagged);

    public void Dispose()
    {
        _listener.Dispose();
        if (ReferenceEquals(Current.Value, this))
        {
            Current.Value = null;
        }
    }
}
