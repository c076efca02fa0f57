using Grpc.Core;
using Grpc.Health.V1;
using Microsoft.Extensions.Logging;

namespace Kms.Client.Failover;

/// <summary>
/// The endpoints of one client and their health: round-robin over those believed up; one
/// that fails UNAVAILABLE is taken out until a grpc.health.v1 probe finds it SERVING (or a
/// call that had nowhere better to go succeeds on it). One that sheds a call (it is full) stays
/// in, passed over only for its pushback while another endpoint is free.
/// </summary>
/// <remarks>
/// Probing is lazy: whenever an endpoint is picked, every endpoint that is down and was last
/// probed at least a probe interval ago gets one probe in the background. An idle client
/// sends nothing; a busy one probes each dead endpoint once per interval, not once per call.
/// </remarks>
internal sealed class EndpointPool : IDisposable
{
    private readonly KmsEndpoint[] _endpoints;
    private readonly TimeProvider _time;
    private readonly TimeSpan _probeInterval;
    private readonly TimeSpan _probeTimeout;
    private readonly ILogger _logger;
    private readonly Lock _lock = new();
    private readonly CancellationTokenSource _disposed = new();
    private int _next;

    /// <param name="endpoints">At least one.</param>
    /// <param name="time">Clock of failures and probes.</param>
    /// <param name="probeInterval">How often a down endpoint is probed.</param>
    /// <param name="probeTimeout">Deadline of one probe.</param>
    /// <param name="logger">Where endpoint state changes are logged.</param>
    public EndpointPool(IEnumerable<KmsEndpoint> endpoints, TimeProvider time, TimeSpan probeInterval, TimeSpan probeTimeout, ILogger logger)
    {
        _endpoints = [.. endpoints];
        if (_endpoints.Length == 0)
        {
            throw new ArgumentException("at least one endpoint is needed", nameof(endpoints));
        }

        _time = time;
        _probeInterval = probeInterval;
        _probeTimeout = probeTimeout;
        _logger = logger;
    }

    /// <summary>The endpoints, in configuration order.</summary>
    public IReadOnlyList<KmsEndpoint> Endpoints => _endpoints;

    /// <summary>
    /// The endpoint for the next attempt of a call: the next endpoint in round-robin order
    /// that is believed up, not full (<see cref="MarkFull"/>) and that this call has not tried
    /// (then <c>Fresh</c> is true); failing that, of those up and untried but full, the one
    /// whose pushback ends first;
    /// failing that, the least recently failed endpoint, preferring ones this call has not
    /// tried — a call is always tried somewhere, never refused because everything looks down.
    /// </summary>
    /// <param name="tried">Endpoints this call has already tried, or null on its first attempt.</param>
    public (KmsEndpoint Endpoint, bool Fresh) Pick(IReadOnlyCollection<KmsEndpoint>? tried)
    {
        KmsEndpoint? chosen = null;
        var fresh = false;
        List<KmsEndpoint>? probes = null;
        lock (_lock)
        {
            var now = _time.GetUtcNow();
            // Round-robin among the endpoints up and untried, each ranked by when it is free: now,
            // or the end of its pushback. The first free one wins; if all are full, the one free
            // soonest (the first in order on a tie), so that calls spread rather than pile on one.
            var count = _endpoints.Length;
            var best = -1;
            var bestFreeAt = DateTimeOffset.MaxValue;
            for (var i = 0; i < count && bestFreeAt > now; i++)
            {
                var index = (_next + i) % count;
                var candidate = _endpoints[index];
                var freeAt = candidate.FullUntil > now ? candidate.FullUntil : now;
                if (candidate.IsUp && tried?.Contains(candidate) != true && freeAt < bestFreeAt)
                {
                    (best, bestFreeAt) = (index, freeAt);
                }
            }

            if (best >= 0)
            {
                chosen = _endpoints[best];
                fresh = bestFreeAt == now;
                _next = (best + 1) % count;
            }

            chosen ??= LeastRecentlyFailed(tried);

            foreach (var endpoint in _endpoints)
            {
                if (!endpoint.IsUp && !endpoint.Probing && now - endpoint.ProbedAt >= _probeInterval)
                {
                    endpoint.Probing = true;
                    endpoint.ProbedAt = now;
                    (probes ??= []).Add(endpoint);
                }
            }
        }

        foreach (var endpoint in probes ?? [])
        {
            _ = ProbeAsync(endpoint);
        }

        return (chosen, fresh);
    }

    /// <summary>A call on <paramref name="endpoint"/> failed UNAVAILABLE (not a shed answer: <see cref="MarkFull"/>): take it out of the rotation.</summary>
    public void MarkDown(KmsEndpoint endpoint, string method, RpcException failure)
    {
        bool wasUp;
        lock (_lock)
        {
            wasUp = endpoint.IsUp;
            endpoint.IsUp = false;
            var now = _time.GetUtcNow();
            endpoint.FailedAt = now;
            if (wasUp)
            {
                // Its first probe is due one interval from now: probing what just failed is wasted.
                endpoint.ProbedAt = now;
            }
        }

        if (wasUp)
        {
            ClientLog.EndpointDown(_logger, endpoint.Address, method, failure.Status.Detail);
        }
    }

    /// <summary>
    /// <paramref name="endpoint"/> shed a call: it is up but full. It stays in the rotation; for
    /// <paramref name="pushback"/> it is not offered calls while another endpoint is free.
    /// </summary>
    public void MarkFull(KmsEndpoint endpoint, TimeSpan pushback)
    {
        lock (_lock)
        {
            endpoint.FullUntil = _time.GetUtcNow() + pushback;
        }
    }

    /// <summary>The endpoint answered (a call succeeded, or a probe found it SERVING): back into the rotation.</summary>
    public void MarkUp(KmsEndpoint endpoint, string evidence)
    {
        bool wasDown;
        lock (_lock)
        {
            wasDown = !endpoint.IsUp;
            endpoint.IsUp = true;
        }

        if (wasDown)
        {
            ClientLog.EndpointUp(_logger, endpoint.Address, evidence);
        }
    }

    /// <summary>Whether the client currently believes <paramref name="endpoint"/> is up.</summary>
    public bool IsUp(KmsEndpoint endpoint)
    {
        lock (_lock)
        {
            return endpoint.IsUp;
        }
    }

    /// <summary>Stops probing and closes every endpoint's connection.</summary>
    public void Dispose()
    {
        _disposed.Cancel();
        foreach (var endpoint in _endpoints)
        {
            endpoint.Dispose();
        }

        _disposed.Dispose();
    }

    private KmsEndpoint LeastRecentlyFailed(IReadOnlyCollection<KmsEndpoint>? tried)
    {
        var untried = _endpoints.Where(e => tried?.Contains(e) != true).ToList();
        return (untried.Count > 0 ? untried : [.. _endpoints]).MinBy(e => e.FailedAt)!;
    }

    private async Task ProbeAsync(KmsEndpoint endpoint)
    {
        var serving = false;
        try
        {
            var health = new Health.HealthClient(endpoint.Probes);
            var response = await health.CheckAsync(
                new HealthCheckRequest(),
                deadline: (_time.GetUtcNow() + _probeTimeout).UtcDateTime,
                cancellationToken: _disposed.Token).ConfigureAwait(false);
            serving = response.Status == HealthCheckResponse.Types.ServingStatus.Serving;
        }
        catch (Exception e) when (e is RpcException or ObjectDisposedException or OperationCanceledException)
        {
            // Still down (or the client is closing): the next probe is due one interval after this one began.
        }
        finally
        {
            lock (_lock)
            {
                endpoint.Probing = false;
            }
        }

        if (serving)
        {
            MarkUp(endpoint, "health check SERVING");
        }
    }
}
