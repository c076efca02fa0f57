using System.Runtime.InteropServices;

namespace Kms.Server.Hosting;

/// <summary>
/// The process's stop signals (SIGTERM, SIGINT, SIGQUIT) from before <see cref="KmsServerApp.BuildAsync"/>
/// until the host's own handlers are set: a stop asked for while the server is built cancels the
/// build (<see cref="Token"/>), and one asked for after it stops the built application.
/// </summary>
/// <remarks>
/// The host's handlers (Microsoft.Extensions.Hosting's <c>ConsoleLifetime</c>) are registered only
/// when the start begins (<c>WaitForStartAsync</c>): before that the runtime's default applies, and
/// a SIGTERM while the HSM, the store or the audit start checks were opened ended the process at
/// once (exit 143), with no log line and nothing closed. Handled as ConsoleLifetime handles them —
/// the default termination cancelled, a stop asked for instead. Dispose it once the start has run:
/// while both are registered, both handlers act on a signal and ask for the same stop.
/// </remarks>
public sealed class StartupStopSignals : IDisposable
{
    private readonly Lock _gate = new();
    private readonly CancellationTokenSource _stop = new();
    private readonly List<PosixSignalRegistration> _registrations = [];
    private WebApplication? _app;
    private bool _requested;
    private bool _disposed;

    internal StartupStopSignals()
    {
    }

    /// <summary>Cancelled when a stop signal arrives; passed to <see cref="KmsServerApp.BuildAsync"/>.</summary>
    public CancellationToken Token => _stop.Token;

    /// <summary>Whether a stop signal has arrived (still answered once disposed, unlike <see cref="Token"/>).</summary>
    public bool StopRequested
    {
        get
        {
            lock (_gate)
            {
                return _requested;
            }
        }
    }

    /// <summary>Handles SIGTERM, SIGINT and SIGQUIT from now on, until disposed.</summary>
    public static StartupStopSignals Register()
    {
        var signals = new StartupStopSignals();
        try
        {
            foreach (var signal in (PosixSignal[])[PosixSignal.SIGTERM, PosixSignal.SIGINT, PosixSignal.SIGQUIT])
            {
                signals._registrations.Add(PosixSignalRegistration.Create(signal, signals.OnSignal));
            }

            return signals;
        }
        catch
        {
            signals.Dispose();
            throw;
        }
    }

    /// <summary>
    /// The build is over: a stop signal from now on (or one that came after the build's last
    /// check) stops <paramref name="app"/>, whose start then ends as <see cref="KmsServerApp.StartUnlessStoppedAsync"/> says.
    /// </summary>
    public void HandOver(WebApplication app)
    {
        ArgumentNullException.ThrowIfNull(app);
        bool requested;
        lock (_gate)
        {
            _app = app;
            requested = _requested;
        }

        if (requested)
        {
            app.Lifetime.StopApplication();
        }
    }

    /// <summary>Removes the handlers: the runtime's default, or the host's, applies again.</summary>
    public void Dispose()
    {
        lock (_gate)
        {
            if (_disposed)
            {
                return;
            }

            _disposed = true;
            _app = null;
        }

        foreach (var registration in _registrations)
        {
            registration.Dispose();
        }

        _stop.Dispose();
    }

    // Internal for tests.
    internal void OnSignal(PosixSignalContext context)
    {
        WebApplication? app;
        lock (_gate)
        {
            if (_disposed)
            {
                return;
            }

            // A second signal while the build has not yet ended for the first: the runtime's default
            // (the process ends at once). Something the build waits for may not heed the token (a
            // PKCS#11 module's C_Initialize, say), and an operator's second Ctrl+C must still end it.
            if (_requested && _app is null)
            {
                return;
            }

            // As ConsoleLifetime: the process is not ended by the signal but by the stop it asks for.
            context.Cancel = true;
            _requested = true;
            app = _app;

            // The build's awaits end on the thread pool, not on this handler's thread inside the lock.
            _ = _stop.CancelAsync();
        }

        app?.Lifetime.StopApplication();
    }
}
