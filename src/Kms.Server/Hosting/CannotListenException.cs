using System.Net;
using System.Net.Sockets;
using Microsoft.AspNetCore.Connections;
using Microsoft.AspNetCore.Http;

namespace Kms.Server.Hosting;

/// <summary>
/// A listener of the server cannot bind its address: another process holds the port, or the
/// address is not one of this host's. A refusal to start that Program prints in one line (the
/// setting, the address and so the port); the hosts that see it fail their start do not log it
/// (<see cref="IsRefusalLoggedByProgram"/>), so it is said once and without a stack trace.
/// </summary>
internal sealed class CannotListenException : InvalidOperationException
{
    private CannotListenException(string message, Exception inner)
        : base(message, inner)
    {
    }

    /// <summary>
    /// Kestrel's failure to bind as the refusal of the listener set by <paramref name="setting"/>:
    /// a port in use (an <see cref="IOException"/> around <see cref="AddressInUseException"/>, its
    /// message naming the address), or an address this host does not have (a
    /// <see cref="SocketException"/> of <see cref="SocketError.AddressNotAvailable"/>, which names
    /// none: the one of <paramref name="addresses"/> that cannot be bound is named, or all of them).
    /// Null when <paramref name="failure"/> is something else.
    /// </summary>
    public static CannotListenException? From(Exception failure, string listener, string setting, IReadOnlyCollection<string> addresses) => failure switch
    {
        IOException { InnerException: AddressInUseException } =>
            new CannotListenException($"the {listener} listener ({setting}) cannot listen: {failure.Message.TrimEnd('.')}; another process holds the port", failure),
        SocketException { SocketErrorCode: SocketError.AddressNotAvailable } or IOException { InnerException: SocketException { SocketErrorCode: SocketError.AddressNotAvailable } } =>
            new CannotListenException($"the {listener} listener ({setting}) cannot listen: address not available on this host: {string.Join(", ", NotOnThisHost(addresses))}; give an address of one of its interfaces, or 0.0.0.0 or [::] for all of them", failure),
        _ => null,
    };

    /// <summary>
    /// A log event that carries a listener's refusal: the hosts' "Hosting failed to start" (the
    /// server's, and the metrics listener's own), which would say with a stack trace what Program says.
    /// </summary>
    public static bool IsRefusalLoggedByProgram(Serilog.Events.LogEvent logEvent) => logEvent.Exception is CannotListenException;

    // Kestrel's exception names no address: those of the listener's whose IP address this host
    // cannot bind (a host name is bound on every interface, so only an IP address fails so), or
    // every one when none is found.
    private static IReadOnlyCollection<string> NotOnThisHost(IReadOnlyCollection<string> addresses)
    {
        var missing = addresses.Where(url => !CanBind(url)).ToList();
        return missing.Count > 0 ? missing : addresses;
    }

    private static bool CanBind(string url)
    {
        if (!IPAddress.TryParse(BindingAddress.Parse(url).Host.Trim('[', ']'), out var ip))
        {
            return true;
        }

        try
        {
            using var probe = new Socket(ip.AddressFamily, SocketType.Stream, ProtocolType.Tcp);
            probe.Bind(new IPEndPoint(ip, 0));
            return true;
        }
        catch (SocketException e) when (e.SocketErrorCode == SocketError.AddressNotAvailable)
        {
            return false;
        }
    }
}
