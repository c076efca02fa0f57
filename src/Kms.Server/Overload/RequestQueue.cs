using System.Diagnostics.Metrics;
using Kms.Server.Hosting;
using Microsoft.Extensions.Options;

namespace Kms.Server.Overload;

/// <summary>
/// How many calls this server's Kestrel has accepted and queued for a thread but not yet started:
/// the queue in front of every interceptor, where calls beyond what two cores can serve wait their
/// turn (docs/benchmarks.md, "Overload"). Read from Kestrel's own <c>kestrel.queued_requests</c>
/// counter — raised when an HTTP/2 stream's headers are in and it is handed to the thread pool,
/// lowered when a thread picks it up — through a listener on this host's meters only (a process
/// may run several servers).
/// </summary>
/// <remarks>
/// A call that reaches the interceptor finds behind it the calls that arrived while it waited
/// (the pool's global queue is first in, first out). Refusing it while more than
/// <see cref="OverloadOptions.MaxQueuedCalls"/> are behind costs a fraction of serving it, so the
/// queue drains at the speed of refusals until it is short again, and the calls served have waited
/// at most about that many arrivals. Off (no listener) when the limit is zero.
/// </remarks>
internal sealed class RequestQueue : IDisposable
{
    /// <summary>Kestrel's meter, and its counter of queued requests (ASP.NET Core 8 and later).</summary>
    public const string KestrelMeterName = "Microsoft.AspNetCore.Server.Kestrel";

    /// <inheritdoc cref="KestrelMeterName"/>
    public const string QueuedRequestsName = "kestrel.queued_requests";

    private readonly MeterListener? _listener;
    private readonly Func<long>? _fixed;
    private long _queued;
    private long _seen;

    public RequestQueue(IMeterFactory meterFactory, IOptions<KmsServerOptions> options)
    {
        Limit = options.Value.Overload.MaxQueuedCalls;
        if (Limit <= 0)
        {
            return;
        }

        _listener = new MeterListener
        {
            InstrumentPublished = (instrument, listener) =>
            {
                if (instrument.Name == QueuedRequestsName && instrument.Meter.Name == KestrelMeterName && ReferenceEquals(instrument.Meter.Scope, meterFactory))
                {
                    listener.EnableMeasurementEvents(instrument, this);
                }
            },
        };
        _listener.SetMeasurementEventCallback<long>(static (_, value, _, state) => ((RequestQueue)state!).Add(value));
        _listener.Start();
    }

    /// <summary>A queue whose length a test sets.</summary>
    internal RequestQueue(int limit, Func<long> queued) => (Limit, _fixed) = (limit, queued);

    /// <summary>Calls tolerated in the queue; zero: no limit.</summary>
    public int Limit { get; }

    /// <summary>Calls queued now, not yet started.</summary>
    public long Queued => _fixed?.Invoke() ?? Volatile.Read(ref _queued);

    /// <summary>Calls queued since the server started (a test's proof that the counter is Kestrel's).</summary>
    public long Seen => Volatile.Read(ref _seen);

    /// <summary>Whether a call starting now is to be refused: more than <see cref="Limit"/> calls wait behind it.</summary>
    public bool IsOverLimit => Limit > 0 && Queued > Limit;

    public void Dispose() => _listener?.Dispose();

    private void Add(long value)
    {
        Interlocked.Add(ref _queued, value);
        if (value > 0)
        {
            Interlocked.Add(ref _seen, value);
        }
    }
}
