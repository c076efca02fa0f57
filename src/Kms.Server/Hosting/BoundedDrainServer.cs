using System.Globalization;
using Microsoft.AspNetCore.Hosting.Server;
using Microsoft.AspNetCore.Hosting.Server.Features;
using Microsoft.AspNetCore.Http.Features;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;

namespace Kms.Server.Hosting;

/// <summary>
/// Kestrel with its connection drain at stop bounded (<c>Kms:Transport:ShutdownDrainTimeout</c>):
/// past it, the connections still open are aborted and the stop goes on to what must happen last —
/// the usage counts written, the refusal windows, the final audit checkpoint and the node's head
/// record (<see cref="FinalStepsTime"/>, the rest of the host's stop time).
/// </summary>
/// <remarks>
/// <para>Kestrel's stop closes connections gracefully and waits, up to the host's whole stop time, for
/// each to end; an HTTP/2 stream whose client never lets its answer be written (a flow-control
/// window of 0, a socket never read) never ends, nor does an HTTP/1.1 request whose headers were
/// begun and never finished (until Kestrel's 30 s headers timeout). So one connection of anyone who
/// can reach a port made every stop take the whole 30 s, and the steps after it ran on a cancelled
/// token: none of them done, and the host's stop threw.</para>
/// <para>Every listener of the process (the gRPC one and the metrics one, which stop one after the
/// other) drains within the same <see cref="ShutdownDrain"/>: the first stop starts its clock, so
/// the drains together take no more than the one timeout.</para>
/// </remarks>
internal sealed partial class BoundedDrainServer(IServer inner, ShutdownDrain drain, string listener, string setting, IReadOnlyList<string> addresses, ILogger<BoundedDrainServer> logger) : IServer
{
    /// <summary>What the host's stop gives the steps after the drain.</summary>
    public static readonly TimeSpan FinalStepsTime = TimeSpan.FromSeconds(10);

    /// <summary>The host setting an operator sets the host's stop time with (.NET's <c>HostOptions</c>).</summary>
    public const string StopTimeSetting = "shutdownTimeoutSeconds";

    public IFeatureCollection Features => inner.Features;

    /// <summary>
    /// Replaces the <see cref="IServer"/> registered (Kestrel) with itself around it, adds the
    /// process's <see cref="ShutdownDrain"/>, and sets the host's stop time: the drain plus
    /// <see cref="FinalStepsTime"/>, unless the operator set one (<see cref="StopTimeSetting"/>),
    /// which is kept if the drain and the final steps fit in it and refuses the start if not.
    /// </summary>
    /// <exception cref="InvalidOperationException"><see cref="StopTimeSetting"/> is not a whole number of seconds.</exception>
    public static void Register(IServiceCollection services, TimeSpan drain, IConfiguration configuration)
    {
        // .NET reads the setting as a whole number of seconds and ignores anything else: refused
        // instead, so that an operator's stop time is not silently the default.
        var configured = configuration[StopTimeSetting];
        if (configured is not null && !int.TryParse(configured, NumberStyles.None, CultureInfo.InvariantCulture, out _))
        {
            throw new InvalidOperationException($"{StopTimeSetting} ({configured}) must be a whole number of seconds: the host's stop time, at least Kms:Transport:ShutdownDrainTimeout + {FinalStepsTime.TotalSeconds:0} s");
        }

        services.AddSingleton(_ => new ShutdownDrain(drain));
        Wrap(services, "gRPC", "--urls");

        // After .NET's own reading of the setting (registered when the builder was made), before
        // any later code's (a test's): what is set last is checked below, whoever set it.
        services.Configure<HostOptions>(host =>
        {
            if (configured is null)
            {
                host.ShutdownTimeout = drain + FinalStepsTime;
            }
        });
        services.PostConfigure<HostOptions>(host =>
        {
            if (host.ShutdownTimeout < drain + FinalStepsTime)
            {
                throw new InvalidOperationException(
                    $"the host's stop time ({StopTimeSetting}, {host.ShutdownTimeout.TotalSeconds:0.###} s) is less than Kms:Transport:ShutdownDrainTimeout ({drain.TotalSeconds:0.###} s) + the {FinalStepsTime.TotalSeconds:0} s a stop's last steps take (the usage counts, the final audit checkpoint, the node's head record): "
                    + $"set {StopTimeSetting} to at least {Math.Ceiling((drain + FinalStepsTime).TotalSeconds):0}, or the drain to at most {StopTimeSetting} - {FinalStepsTime.TotalSeconds:0} s, or leave {StopTimeSetting} unset (the drain + {FinalStepsTime.TotalSeconds:0} s)");
            }
        });
    }

    /// <summary>
    /// Replaces the <see cref="IServer"/> registered in <paramref name="services"/> with itself around
    /// it, draining within the <see cref="ShutdownDrain"/> resolved from <paramref name="services"/>;
    /// a port in use or an address not of this host at its start is refused naming <paramref name="setting"/>
    /// (<see cref="CannotListenException"/>) and the address (its listen URLs, the host's <c>urls</c>).
    /// </summary>
    public static void Wrap(IServiceCollection services, string listener, string setting) =>
        Wrap(services, listener, setting, [], provider => provider.GetRequiredService<ShutdownDrain>());

    /// <summary>
    /// As <see cref="Wrap(IServiceCollection, string, string)"/>, with the drain of another container
    /// (the gRPC host's), for a listener bound to <paramref name="url"/> by Kestrel's <c>Listen</c>
    /// (which its addresses do not hold until it is bound).
    /// </summary>
    public static void Wrap(IServiceCollection services, string listener, string setting, string url, ShutdownDrain drain) =>
        Wrap(services, listener, setting, [url], _ => drain);

    private static void Wrap(IServiceCollection services, string listener, string setting, IReadOnlyList<string> addresses, Func<IServiceProvider, ShutdownDrain> drain)
    {
        var kestrel = services.Last(s => s.ServiceType == typeof(IServer));
        services.Remove(kestrel);
        services.AddSingleton<IServer>(provider => new BoundedDrainServer(
            kestrel.ImplementationFactory?.Invoke(provider) as IServer
                ?? kestrel.ImplementationInstance as IServer
                ?? (IServer)ActivatorUtilities.CreateInstance(provider, kestrel.ImplementationType!),
            drain(provider),
            listener,
            setting,
            addresses,
            provider.GetRequiredService<ILogger<BoundedDrainServer>>()));
    }

    public async Task StartAsync<TContext>(IHttpApplication<TContext> application, CancellationToken cancellationToken)
        where TContext : notnull
    {
        // Taken before the start: Kestrel empties the server's addresses as it binds them.
        var given = Addresses();
        try
        {
            await inner.StartAsync(application, cancellationToken);
        }
        catch (Exception e) when (CannotListenException.From(e, listener, setting, given) is { } refused)
        {
            // Said by Program in one line; the hosts do not log it (CannotListenException).
            throw refused;
        }
    }

    // The addresses the listener was given: its URL (Kms:MetricsUrl, bound by Kestrel's Listen), or
    // the host's urls, which the host has put in the server's addresses before its start.
    private IReadOnlyCollection<string> Addresses() =>
        addresses.Count > 0 ? addresses : Features.Get<IServerAddressesFeature>()?.Addresses.ToList() ?? [];

    public async Task StopAsync(CancellationToken cancellationToken)
    {
        var bound = drain.Begin();
        using var linked = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken, bound);
        await inner.StopAsync(linked.Token);
        if (bound.IsCancellationRequested)
        {
            LogDrainCut(logger, listener, drain.Timeout);
        }
    }

    public void Dispose() => inner.Dispose();

    [LoggerMessage(EventId = 1171, Level = LogLevel.Warning, Message = "stopping: {Listener} connections still open {Drain} after the stop began (Kms:Transport:ShutdownDrainTimeout) were aborted, their calls unanswered")]
    private static partial void LogDrainCut(ILogger logger, string listener, TimeSpan drain);
}

/// <summary>
/// The end of the connection drain at stop, one for the process (<c>Kms:Transport:ShutdownDrainTimeout</c>
/// after the first listener's stop began), so that listeners stopped one after the other do not
/// each take the whole timeout.
/// </summary>
internal sealed class ShutdownDrain(TimeSpan timeout) : IDisposable
{
    // The wall clock's, also where tests give the server a clock of their own to move.
    private readonly CancellationTokenSource _end = new();
    private int _begun;

    /// <summary>How long the drain lasts from its beginning.</summary>
    public TimeSpan Timeout => timeout;

    /// <summary>
    /// Starts the drain's clock on the first call; the token is cancelled when the drain ends. Once
    /// the process's services are disposed (a host stopped again after its disposal), the drain is
    /// over: a token already cancelled, not an <see cref="ObjectDisposedException"/> out of the stop.
    /// </summary>
    public CancellationToken Begin()
    {
        try
        {
            if (Interlocked.Exchange(ref _begun, 1) == 0)
            {
                _end.CancelAfter(timeout);
            }

            return _end.Token;
        }
        catch (ObjectDisposedException)
        {
            return new CancellationToken(canceled: true);
        }
    }

    public void Dispose() => _end.Dispose();
}
