using System.Net;
using Kms.Server.Overload;
using Microsoft.AspNetCore.Connections;
using Microsoft.Extensions.Logging.Abstractions;

namespace Kms.Server.Tests;

/// <summary>
/// The per-address connection count (SECURITY.md claim 106) given back on every way a connection
/// ends — normally, refused over the bound, or by an exception of the layers under it — and an
/// IPv4 client counted as one address whether it arrives as IPv4 or IPv4-mapped IPv6.
/// </summary>
public sealed class ClientAddressConnectionLimitTests
{
    private static readonly IPAddress Client = IPAddress.Parse("192.0.2.7");

    [Fact]
    public async Task ConnectionThatThrows_GivesItsPlaceBack_AddressForgotten()
    {
        var limit = new ClientAddressConnectionLimit(2, NullLogger.Instance);
        var middleware = limit.Middleware(_ => throw new IOException("the handshake failed"));

        for (var i = 0; i < 5; i++)
        {
            await Assert.ThrowsAsync<IOException>(() => middleware(Connection(Client)));
        }

        Assert.Equal(0, limit.OpenFrom(Client));
    }

    [Fact]
    public async Task OverTheBound_Refused_WithoutTakingAPlace_IPv4MappedCountedAsIPv4()
    {
        var limit = new ClientAddressConnectionLimit(2, NullLogger.Instance);
        var release = new TaskCompletionSource();
        var served = 0;
        var middleware = limit.Middleware(async _ =>
        {
            Interlocked.Increment(ref served);
            await release.Task;
        });

        var first = middleware(Connection(Client));
        var second = middleware(Connection(Client.MapToIPv6()));
        Assert.Equal(2, limit.OpenFrom(Client));

        // The third, from the same client as IPv4 or mapped, is closed at once and counts nothing.
        await middleware(Connection(Client.MapToIPv6()));
        await middleware(Connection(Client));
        Assert.Equal(2, limit.OpenFrom(Client));
        Assert.Equal(2, served);

        // Another address is served meanwhile.
        var other = middleware(Connection(IPAddress.Parse("2001:db8::1")));
        Assert.Equal(3, served);

        release.SetResult();
        await Task.WhenAll(first, second, other);
        Assert.Equal(0, limit.OpenFrom(Client));
        Assert.Equal(0, limit.OpenFrom(IPAddress.Parse("2001:db8::1")));
    }

    private static DefaultConnectionContext Connection(IPAddress address) =>
        new() { RemoteEndPoint = new IPEndPoint(address, 40000) };
}
