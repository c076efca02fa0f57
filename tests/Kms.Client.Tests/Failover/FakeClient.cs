using Kms.Client.Failover;
using Microsoft.Extensions.Logging.Abstractions;
using Microsoft.Extensions.Time.Testing;

namespace Kms.Client.Tests.Failover;

/// <summary>A <see cref="KmsClient"/> over scripted endpoints, on a fake clock, with a pinned random source.</summary>
internal sealed class FakeClient : IDisposable
{
    public FakeClient(
        ScriptedEndpoint[] endpoints,
        int maxAttempts = 5,
        double unitRandom = 0,
        TimeSpan? baseBackoff = null,
        TimeSpan? maxBackoff = null,
        TimeSpan? callTimeout = null,
        TimeSpan? healthCheckInterval = null,
        int? maxConcurrentCalls = null,
        Microsoft.Extensions.Logging.ILogger? logger = null,
        TimeSpan? maxRetryInfoDelay = null)
    {
        Endpoints = endpoints;
        var pool = new EndpointPool(
            endpoints.Select(e => new KmsEndpoint(e.Address, e, e)),
            Time,
            healthCheckInterval ?? TimeSpan.FromSeconds(5),
            TimeSpan.FromSeconds(1),
            logger ?? NullLogger.Instance);
        Invoker = new FailoverCallInvoker(
            pool,
            maxAttempts,
            new Backoff(baseBackoff ?? TimeSpan.FromSeconds(1), maxBackoff ?? TimeSpan.FromSeconds(10), () => unitRandom),
            callTimeout ?? TimeSpan.FromSeconds(30),
            Time,
            logger ?? NullLogger.Instance)
        {
            Limit = maxConcurrentCalls is { } max ? new ConcurrencyLimit(max, NullLogger.Instance) : null,
            MaxRetryInfoDelay = maxRetryInfoDelay ?? new KmsRetryOptions().MaxRetryInfoDelay,
        };
        Client = new KmsClient(new KmsClient.Connection(Invoker, null));
    }

    public CountingClock Time { get; } = new(new DateTimeOffset(2030, 1, 1, 0, 0, 0, TimeSpan.Zero));

    public ScriptedEndpoint[] Endpoints { get; }

    public FailoverCallInvoker Invoker { get; }

    public KmsClient Client { get; }

    public bool IsUp(ScriptedEndpoint endpoint) => Invoker.Pool.IsUp(Invoker.Pool.Endpoints.Single(e => e.Address == endpoint.Address));

    public void Dispose() => Client.Dispose();
}

/// <summary>
/// A fake clock that counts the timers set on it. Here only the client's waits before a retry
/// set one (<see cref="FailoverCallInvoker"/>), and a wait is set after the attempt before it
/// reached its endpoint: a test that moves the clock once it has seen an attempt may move it
/// before the wait exists, which then starts later and is never over (a hang). It waits for the
/// wait's timer instead (<see cref="Timers"/>).
/// </summary>
internal sealed class CountingClock(DateTimeOffset start) : FakeTimeProvider(start)
{
    private int _timers;

    /// <summary>Timers set so far.</summary>
    public int Timers => Volatile.Read(ref _timers);

    public override ITimer CreateTimer(TimerCallback callback, object? state, TimeSpan dueTime, TimeSpan period)
    {
        var timer = base.CreateTimer(callback, state, dueTime, period);
        Interlocked.Increment(ref _timers);
        return timer;
    }
}
