using Kms.Server.Health;
using Kms.Server.Hosting;

if (args.Contains(HealthProbe.Switch))
{
    return await HealthProbe.RunAsync(args, Console.Out, Console.Error);
}

// SIGTERM/SIGINT/SIGQUIT until the host's own handlers are set at its start: a stop asked for
// while the HSM, the store and the audit checks are opened cancels the build (event 1320).
using var stopSignals = StartupStopSignals.Register();
try
{
    var app = await KmsServerApp.BuildAsync(args, cancellationToken: stopSignals.Token);
    await using (app)
    {
        stopSignals.HandOver(app);
        var serving = await KmsServerApp.StartUnlessStoppedAsync(app);
        stopSignals.Dispose(); // the host's handlers (ConsoleLifetime) were set as the start began
        if (!serving)
        {
            return 0; // stopped as asked, before serving (event 1320)
        }

        foreach (var address in KmsServerApp.BoundAddresses(app))
        {
            ServerLog.Listening(app.Logger, address);
        }

        if (KmsServerApp.BoundMetricsUrl(app) is { } metrics)
        {
            ServerLog.MetricsListening(app.Logger, metrics);
        }

        await app.WaitForShutdownAsync();
    }

    return 0;
}
catch (OperationCanceledException) when (stopSignals.StopRequested)
{
    return 0; // stopped as asked while the server was built (event 1320), what it had opened closed
}
catch (Exception e) when (e is not OperationCanceledException)
{
    // Start-up refusals are for the operator: one clear line, no stack trace.
    Console.Error.WriteLine($"kms: cannot start: {e.Message}");
    return 2;
}
