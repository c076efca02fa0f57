using System.Diagnostics.Metrics;
using Grpc.Core;
using Microsoft.Extensions.Logging;

namespace Kms.Client.Failover;

/// <summary>
/// The bound on unary attempts on the wire from one client at once (<see cref="KmsClientOptions.MaxConcurrentCalls"/>).
/// An attempt beyond it is not sent: it counts as an UNAVAILABLE attempt, retried after a backoff
/// while attempts and the deadline allow. The queue of an overloaded KMS stays bounded where it
/// otherwise forms, in the client's HTTP/2 connections (docs/benchmarks.md, "Overload: the queue
/// is the client's").
/// </summary>
internal sealed class ConcurrencyLimit(int maxCalls, ILogger logger)
{
    private static readonly Meter Meter = new("Kms.Client");
    private static readonly Counter<long> Shed = Meter.CreateCounter<long>(
        "kms.client.calls_shed",
        unit: "{attempt}",
        description: "Unary attempts not sent because MaxConcurrentCalls attempts were on the wire");

    private int _onTheWire;
    private long _shedSinceLog;
    private long _lastLog;

    /// <summary>Attempts on the wire now.</summary>
    public int OnTheWire => Volatile.Read(ref _onTheWire);

    /// <summary>Takes a place for an attempt; false when all are taken. Each place taken is given back with <see cref="Exit"/>.</summary>
    public bool TryEnter()
    {
        if (Interlocked.Increment(ref _onTheWire) <= maxCalls)
        {
            return true;
        }

        Interlocked.Decrement(ref _onTheWire);
        return false;
    }

    /// <summary>Gives a place back.</summary>
    public void Exit() => Interlocked.Decrement(ref _onTheWire);

    /// <summary>An attempt of <paramref name="method"/> found no place: counted, logged at most once a second, and its failure.</summary>
    public RpcException Refuse(string method)
    {
        Shed.Add(1);
        var count = Interlocked.Increment(ref _shedSinceLog);
        var now = Environment.TickCount64;
        var last = Interlocked.Read(ref _lastLog);
        if (now - last >= 1000 && Interlocked.CompareExchange(ref _lastLog, now, last) == last)
        {
            Interlocked.Add(ref _shedSinceLog, -count);
            ClientLog.CallsShed(logger, method, count, maxCalls);
        }

        return new RpcException(new Status(StatusCode.Unavailable, $"{maxCalls} calls to the KMS were on the wire from this client (KmsClientOptions.MaxConcurrentCalls); not sent, retry with backoff"));
    }
}
