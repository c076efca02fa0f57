using System.Collections.Concurrent;
using System.Net;
using Kms.Core;
using Microsoft.AspNetCore.Connections;

namespace Kms.Server.Overload;

/// <summary>
/// Bounds the connections open at once from one client IP address
/// (<see cref="Hosting.TransportOptions.MaxConnectionsPerClientAddress"/>), from the TCP accept on:
/// one over the bound is closed before its TLS handshake, so a single workload cannot take every
/// connection (or file descriptor) the server has and leave none for the others.
/// </summary>
/// <remarks>
/// Counted per address, not per credential: below the gRPC call nothing is authenticated yet. The
/// whole address is the key (IPv4-mapped IPv6 addresses as their IPv4 address), so a client that
/// owns a block of addresses gets a bound per address; behind a load balancer or NAT every client
/// is the balancer's address, and the bound belongs there (docs/deployment.md).
/// </remarks>
internal sealed partial class ClientAddressConnectionLimit(int limit, ILogger logger)
{
    private readonly ConcurrentDictionary<IPAddress, int> _open = new();
    private readonly LogThrottle _refusedLog = new();

    /// <summary>The connection middleware (before TLS) that applies the bound.</summary>
    public ConnectionDelegate Middleware(ConnectionDelegate next) => async connection =>
    {
        if (limit == 0 || connection.RemoteEndPoint is not IPEndPoint { Address: var remote })
        {
            await next(connection);
            return;
        }

        var address = remote.IsIPv4MappedToIPv6 ? remote.MapToIPv4() : remote;
        if (_open.AddOrUpdate(address, 1, (_, open) => open + 1) > limit)
        {
            Release(address);
            if (_refusedLog.Count() is > 0 and var count)
            {
                LogRefused(logger, address.ToString(), limit, count);
            }

            // Returning without calling on closes the connection: no handshake, nothing read.
            return;
        }

        try
        {
            await next(connection);
        }
        finally
        {
            Release(address);
        }
    };

    /// <summary>Connections counted as open from <paramref name="address"/> (tests).</summary>
    internal int OpenFrom(IPAddress address) => _open.TryGetValue(address, out var open) ? open : 0;

    private void Release(IPAddress address)
    {
        // Decrement, and forget the address at 0 so the table holds only addresses with connections.
        while (true)
        {
            var open = _open[address];
            if (open == 1 ? _open.TryRemove(KeyValuePair.Create(address, 1)) : _open.TryUpdate(address, open - 1, open))
            {
                return;
            }
        }
    }

    [LoggerMessage(EventId = 1170, Level = LogLevel.Warning, Message = "connection from {Address} closed before its TLS handshake: that address already has {Limit} connections open (Kms:Transport:MaxConnectionsPerClientAddress); {Count} such connections since the last such message")]
    private static partial void LogRefused(ILogger logger, string address, int limit, long count);
}
