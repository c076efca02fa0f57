using Kms.Server.Health;
using Kms.Server.Hosting;

if (args.Contains(HealthProbe.Switch))
{
    return await HealthProbe.RunAsync(args, Console.Out, Console.Error);
}

try
{
    var app = await KmsServerApp.BuildAsync(args);
    await using (app)
    {
        if (!await KmsServerApp.StartUnlessStoppedAsync(app))
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
catch (Exception e) when (e is not OperationCanceledException)
{
    // Start-up refusals are for the operator: one clear line, no stack trace.
    Console.Error.WriteLine($"kms: cannot start: {e.Message}");
    return 2;
}
