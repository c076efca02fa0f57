using Grpc.Core;

namespace Kms.Client.Failover;

/// <summary>One server address, how calls and health probes reach it, and what the client believes about its health.</summary>
internal sealed class KmsEndpoint(Uri address, CallInvoker calls, CallInvoker probes, IDisposable? connection = null) : IDisposable
{
    /// <summary>The server, e.g. <c>https://kms-a.example:8443</c>.</summary>
    public Uri Address { get; } = address;

    /// <summary>Calls, with the client's credential and interceptors.</summary>
    public CallInvoker Calls { get; } = calls;

    /// <summary>grpc.health.v1 probes, which need no credential.</summary>
    public CallInvoker Probes { get; } = probes;

    /// <summary>Unary attempts on the wire to this endpoint (<see cref="ConcurrencyLimit"/>); changed with interlocked operations only.</summary>
    internal int AttemptsOnTheWire;

    // Health state; read and written under the pool's lock only.
    internal bool IsUp { get; set; } = true;

    internal DateTimeOffset FailedAt { get; set; } = DateTimeOffset.MinValue;

    /// <summary>Until when the endpoint said it is full (a shed answer's pushback): up, but not offered calls before then while another endpoint is free.</summary>
    internal DateTimeOffset FullUntil { get; set; } = DateTimeOffset.MinValue;

    internal DateTimeOffset ProbedAt { get; set; } = DateTimeOffset.MinValue;

    internal bool Probing { get; set; }

    /// <summary>Closes the connection.</summary>
    public void Dispose() => connection?.Dispose();

    /// <summary>The address: safe to log.</summary>
    public override string ToString() => Address.ToString();
}
