using System.Diagnostics;
using Kms.Server.Hosting;
using Kms.Server.Observability;
using Microsoft.Extensions.Options;

namespace Kms.Server.Overload;

/// <summary>
/// Watches how long work waits in the thread pool's queue and decides what fraction of calls to
/// shed. When more calls arrive than two cores can serve, they wait there — in front of every
/// interceptor, where a limit on calls in flight (<see cref="KmsServerOptions.MaxConcurrentCalls"/>)
/// never sees them — so the wait itself is the signal (docs/benchmarks.md, "Overload").
/// </summary>
/// <remarks>
/// A dedicated thread (not a pool thread: it must not wait in the queue it measures) posts one
/// probe at a time to the pool's global queue, the queue Kestrel hands new HTTP/2 streams to, and
/// feeds each probe's wait to a <see cref="StandingQueueDetector"/>. While a probe is still
/// queued, its wait so far is fed too, so a pool that has stopped moving is seen as soon as its
/// wait passes the target. Disabled (nothing shed, no thread) when the target is zero.
/// </remarks>
internal sealed class QueueDelayMonitor : IDisposable
{
    private readonly StandingQueueDetector? _detector;
    private readonly TimeSpan _interval;
    private readonly long _started = Stopwatch.GetTimestamp();
    private long _postedAt;
    private volatile bool _stopped;

    public QueueDelayMonitor(IOptions<KmsServerOptions> options)
    {
        var overload = options.Value.Overload;
        if (overload.QueueDelayTarget <= TimeSpan.Zero)
        {
            return;
        }

        // A window longer than the target: refused at start otherwise (SettingRanges).
        _detector = new StandingQueueDetector(overload.QueueDelayTarget, overload.Window);

        // About 20 probes a window: enough for its minimum to mean something, few enough to cost nothing.
        _interval = TimeSpan.FromMilliseconds(Math.Clamp(overload.Window.TotalMilliseconds / 20, 1, 50));
        new Thread(Probe) { IsBackground = true, Name = "kms-queue-delay-probe" }.Start();
    }

    /// <summary>A monitor without a probe, deciding from what a test feeds <paramref name="detector"/>.</summary>
    internal QueueDelayMonitor(StandingQueueDetector detector) => _detector = detector;

    /// <summary>The fraction of calls shed now (0 to 1).</summary>
    public double ShedFraction => _detector?.ShedFraction ?? 0;

    /// <summary>The shortest queue wait of the last complete window.</summary>
    public TimeSpan QueueDelay => _detector?.LastWindowMinimum ?? TimeSpan.Zero;

    /// <summary>Whether this call is to be shed (at random, at <see cref="ShedFraction"/>).</summary>
    public bool ShouldShed()
    {
        var fraction = ShedFraction;
        return fraction > 0 && (fraction >= 1 || Random.Shared.NextDouble() < fraction);
    }

    public void Dispose() => _stopped = true;

    private void Probe()
    {
        while (!_stopped)
        {
            var now = Stopwatch.GetTimestamp();
            var posted = Interlocked.Read(ref _postedAt);
            if (posted == 0)
            {
                Interlocked.Exchange(ref _postedAt, now);
                ThreadPool.UnsafeQueueUserWorkItem(static monitor => monitor.Arrived(), this, preferLocal: false);
            }
            else
            {
                // Still queued: what it has waited so far is a lower bound of its wait.
                _detector!.Record(Stopwatch.GetElapsedTime(posted, now), Stopwatch.GetElapsedTime(_started, now));
            }

            Thread.Sleep(_interval);
        }
    }

    private void Arrived()
    {
        var now = Stopwatch.GetTimestamp();
        var posted = Interlocked.Exchange(ref _postedAt, 0);
        var waited = Stopwatch.GetElapsedTime(posted, now);
        KmsMetrics.ThreadPoolQueueDelay.Record(waited.TotalSeconds);
        _detector!.Record(waited, Stopwatch.GetElapsedTime(_started, now));
    }
}

/// <summary>
/// CoDel's test for a standing queue (Nichols and Jacobson, "Controlling Queue Delay", 2012): if
/// even the <em>shortest</em> wait seen over a whole window exceeds the target, work arrives faster
/// than it is served; a burst or a GC pause leaves short waits in the same window and passes. Each
/// window that fails raises the fraction of calls shed by <see cref="Increase"/>; each that passes
/// halves it, so shedding stops soon after the queue is gone and rises again if it comes back.
/// </summary>
internal sealed class StandingQueueDetector(TimeSpan target, TimeSpan window)
{
    /// <summary>How much a failed window raises the shed fraction.</summary>
    public const double Increase = 0.2;

    private readonly Lock _lock = new();
    private TimeSpan? _windowStart;
    private TimeSpan _windowMinimum;
    private double _shedFraction;
    private long _lastMinimumTicks;

    /// <summary>The fraction of calls to shed (0 to 1).</summary>
    public double ShedFraction => Volatile.Read(ref _shedFraction);

    /// <summary>The shortest wait of the last complete window.</summary>
    public TimeSpan LastWindowMinimum => TimeSpan.FromTicks(Interlocked.Read(ref _lastMinimumTicks));

    /// <summary>One wait, seen at <paramref name="now"/> (any monotonic clock).</summary>
    public void Record(TimeSpan waited, TimeSpan now)
    {
        lock (_lock)
        {
            if (_windowStart is not { } start)
            {
                (_windowStart, _windowMinimum) = (now, waited);
                return;
            }

            if (now - start < window)
            {
                _windowMinimum = waited < _windowMinimum ? waited : _windowMinimum;
                return;
            }

            var fraction = _windowMinimum > target ? Math.Min(1, _shedFraction + Increase) : _shedFraction / 2;
            Interlocked.Exchange(ref _lastMinimumTicks, _windowMinimum.Ticks);
            Volatile.Write(ref _shedFraction, fraction < 0.01 ? 0 : fraction);
            (_windowStart, _windowMinimum) = (now, waited);
        }
    }
}
