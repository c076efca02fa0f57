using Microsoft.AspNetCore.Connections;

namespace Kms.Server.Hosting;

/// <summary>
/// A listener of the server cannot bind its address: another process holds the port. A refusal
/// to start that Program prints in one line (the setting, the address and so the port); the hosts
/// that see it fail their start do not log it (<see cref="IsRefusalLoggedByProgram"/>), so it is
/// said once and without a stack trace.
/// </summary>
internal sealed class PortInUseException : InvalidOperationException
{
    private PortInUseException(string message, Exception inner)
        : base(message, inner)
    {
    }

    /// <summary>
    /// Kestrel's failure to bind (an <see cref="IOException"/> around <see cref="AddressInUseException"/>,
    /// its message naming the address) as the refusal of the listener set by <paramref name="setting"/>;
    /// null when <paramref name="failure"/> is something else.
    /// </summary>
    public static PortInUseException? From(Exception failure, string listener, string setting) =>
        failure is IOException { InnerException: AddressInUseException }
            ? new PortInUseException($"the {listener} listener ({setting}) cannot listen: {failure.Message.TrimEnd('.')}; another process holds the port", failure)
            : null;

    /// <summary>
    /// A log event that carries a port in use: the hosts' "Hosting failed to start" (the server's,
    /// and the metrics listener's own), which would say with a stack trace what Program says.
    /// </summary>
    public static bool IsRefusalLoggedByProgram(Serilog.Events.LogEvent logEvent) => logEvent.Exception is PortInUseException;
}
