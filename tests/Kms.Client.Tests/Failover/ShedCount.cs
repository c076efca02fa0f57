using System.Diagnostics.Metrics;

namespace Kms.Client.Tests.Failover;

/// <summary>
/// Counts <c>kms.client.calls_shed</c> measurements with one <c>by</c> tag while it lives. The meter is
/// process-wide: only one test class produces each tag (client: ConcurrencyLimitTests; server:
/// ServerShedTests), and its tests run one at a time.
/// </summary>
internal sealed class ShedCount : IDisposable
{
    private readonly MeterListener _listener = new();
    private long _count;

    public ShedCount(string by)
    {
        _listener.InstrumentPublished = (instrument, listener) =>
        {
            if (instrument.Meter.Name == "Kms.Client" && instrument.Name == "kms.client.calls_shed")
            {
                listener.EnableMeasurementEvents(instrument);
            }
        };
        _listener.SetMeasurementEventCallback<long>((_, value, tags, _) =>
        {
            foreach (var tag in tags)
            {
                if (tag.Key == "by" && (string?)tag.Value == by)
                {
                    Interlocked.Add(ref _count, value);
                }
            }
        });
        _listener.Start();
    }

    public long Value => Interlocked.Read(ref _count);

    public void Dispose() => _listener.Dispose();
}
