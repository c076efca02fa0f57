using Microsoft.AspNetCore.Hosting.Server;
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
/// Kestrel's stop closes connections gracefully and waits, up to the host's whole stop time, for
/// each to end; an HTTP/2 stream whose client never lets its answer be written (a flow-control
/// window of 0, a socket never read) never ends. So one connection of anyone who can reach the port
/// made every stop take the whole 30 s, and the steps after it ran on a cancelled token: none of
/// them done, and the host's stop threw.
/// </remarks>
internal sealed partial class BoundedDrainServer(IServer inner, TimeSpan drain, ILogger<BoundedDrainServer> logger) : IServer
{
    /// <summary>What the host's stop gives the steps after the drain.</summary>
    public static readonly TimeSpan FinalStepsTime = TimeSpan.FromSeconds(10);

    public IFeatureCollection Features => inner.Features;

    /// <summary>
    /// Replaces the <see cref="IServer"/> registered (Kestrel) with itself around it, and sets the
    /// host's stop time to the drain plus <see cref="FinalStepsTime"/>.
    /// </summary>
    public static void Register(IServiceCollection services, TimeSpan drain)
    {
        var kestrel = services.Last(s => s.ServiceType == typeof(IServer));
        services.Remove(kestrel);
        services.AddSingleton<IServer>(provider => new BoundedDrainServer(
            kestrel.ImplementationFactory?.Invoke(provider) as IServer
                ?? kestrel.ImplementationInstance as IServer
                ?? (IServer)ActivatorUtilities.CreateInstance(provider, kestrel.ImplementationType!),
            drain,
            provider.GetRequiredService<ILogger<BoundedDrainServer>>()));
        services.Configure<HostOptions>(host => host.ShutdownTimeout = drain + FinalStepsTime);
    }

    public Task StartAsync<TContext>(IHttpApplication<TContext> application, CancellationToken cancellationToken)
        where TContext : notnull => inner.StartAsync(application, cancellationToken);

    public async Task StopAsync(CancellationToken cancellationToken)
    {
        // The wall clock's, also where tests give the server a clock of their own to move.
        using var bound = new CancellationTokenSource(drain);
        using var linked = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken, bound.Token);
        await inner.StopAsync(linked.Token);
        if (bound.IsCancellationRequested)
        {
            LogDrainCut(logger, drain);
        }
    }

    public void Dispose() => inner.Dispose();

    [LoggerMessage(EventId = 1171, Level = LogLevel.Warning, Message = "stopping: connections still open after {Drain} (Kms:Transport:ShutdownDrainTimeout) were aborted, their calls unanswered")]
    private static partial void LogDrainCut(ILogger logger, TimeSpan drain);
}
