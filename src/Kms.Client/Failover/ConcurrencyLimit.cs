using Grpc.Core;
using Kms.Core;
using Microsoft.Extensions.Logging;

namespace Kms.Client.Failover;

/// <summary>
/// The bound on unary attempts on the wire from one client to each endpoint at once
/// (<see cref="KmsClientOptions.MaxConcurrentCalls"/>). An attempt beyond it is not sent: it counts
/// as an UNAVAILABLE attempt that never left the client, tried at once on another endpoint with room
/// or retried after a backoff. The queue of an overloaded KMS stays bounded where it otherwise
/// forms, in the client's HTTP/2 connections (docs/benchmarks.md, "Overload: the queue is the
/// client's"); per endpoint, so that one that hangs holds only its own places.
/// </summary>
internal sealed class ConcurrencyLimit(int maxCalls, ILogger logger)
{
    private readonly LogThrottle _log = new();
    private long _refused;

    /// <summary>Attempts refused a place since this limit was made.</summary>
    public long Refused => Interlocked.Read(ref _refused);

    /// <summary>Attempts on the wire to <paramref name="endpoint"/> now.</summary>
    public static int OnTheWire(KmsEndpoint endpoint) => Volatile.Read(ref endpoint.AttemptsOnTheWire);

    /// <summary>
    /// Takes a place on <paramref name="endpoint"/> for an attempt; false when all are taken (the
    /// count never passes the bound, even for a moment). Each place taken is given back with <see cref="Exit"/>.
    /// </summary>
    public bool TryEnter(KmsEndpoint endpoint)
    {
        var seen = Volatile.Read(ref endpoint.AttemptsOnTheWire);
        while (seen < maxCalls)
        {
            var was = Interlocked.CompareExchange(ref endpoint.AttemptsOnTheWire, seen + 1, seen);
            if (was == seen)
            {
                return true;
            }

            seen = was;
        }

        return false;
    }

    /// <summary>Gives a place on <paramref name="endpoint"/> back.</summary>
    public static void Exit(KmsEndpoint endpoint) => Interlocked.Decrement(ref endpoint.AttemptsOnTheWire);

    /// <summary>An attempt of <paramref name="method"/> found no place on <paramref name="endpoint"/>: counted, logged at most once a second, and its failure.</summary>
    public RpcException Refuse(string method, KmsEndpoint endpoint)
    {
        Interlocked.Increment(ref _refused);
        ClientMetrics.CallsShed.Add(1, ClientMetrics.ShedByClient);
        if (_log.Count() is > 0 and var count)
        {
            ClientLog.CallsShed(logger, method, count, maxCalls, endpoint.Address);
        }

        return new RpcException(new Status(StatusCode.Unavailable, $"{maxCalls} calls were on the wire from this client to {endpoint.Address} (KmsClientOptions.MaxConcurrentCalls); not sent, retry with backoff"));
    }
}
