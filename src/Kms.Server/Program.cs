using Kms.Server.Hosting;
using Serilog;

try
{
    var app = await KmsServerApp.BuildAsync(args);
    await using (app)
    {
        await app.StartAsync();
        foreach (var address in KmsServerApp.BoundAddresses(app))
        {
            Log.Information("Kms listening on {Address} (TLS 1.3, gRPC)", address);
        }

        await app.WaitForShutdownAsync();
    }

    return 0;
}
catch (Exception e) when (e is not OperationCanceledException)
{
    // Start-up refusals are for the operator: one clear line; the details go to the log.
    Log.Debug(e, "Start-up failed");
    Console.Error.WriteLine($"kms: cannot start: {e.Message}");
    return 2;
}
finally
{
    await Log.CloseAndFlushAsync();
}
