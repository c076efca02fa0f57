using Grpc.Health.V1;
using Kms.Hsm;
using Kms.Testing;
using Microsoft.Data.Sqlite;
using Microsoft.Extensions.DependencyInjection;
using ServingStatus = Grpc.Health.V1.HealthCheckResponse.Types.ServingStatus;

namespace Kms.Server.Tests;

/// <summary>
/// <c>grpc.health.v1</c> tells a load balancer the truth: NOT_SERVING while the HSM or the
/// database cannot be reached, SERVING again once they can, without a restart.
/// </summary>
public sealed class HealthTests : IAsyncLifetime
{
    private KmsTestServer _server = null!;

    public async Task InitializeAsync() => _server = await KmsTestServer.StartAsync();

    public async Task DisposeAsync() => await _server.DisposeAsync();

    [Fact]
    public async Task Check_HsmSessionsLost_NotServingThenServingOnceRecovered()
    {
        Assert.Equal(ServingStatus.Serving, await CheckAsync());

        // As a device dropping every session would: the next HSM call fails and faults the pool.
        _server.Services.GetRequiredService<Pkcs11Hsm>().CloseAllSessionsForFaultInjection();

        Assert.Equal(ServingStatus.NotServing, await CheckAsync());
        Assert.Equal(ServingStatus.Serving, await CheckAsync()); // the adapter re-opened its sessions
    }

    [Fact]
    public async Task Check_DatabaseUnreachable_NotServingUntilItIsBack()
    {
        Assert.Equal(ServingStatus.Serving, await CheckAsync());

        // The file is gone and its path cannot be opened (a directory stands there); pooled
        // connections, which would still reach the moved file, are closed first.
        var path = _server.DatabasePath;
        SqliteConnection.ClearAllPools();
        File.Move(path, path + ".away");
        Directory.CreateDirectory(path);
        try
        {
            Assert.Equal(ServingStatus.NotServing, await CheckAsync());
            Assert.Equal(ServingStatus.NotServing, await CheckAsync());
        }
        finally
        {
            Directory.Delete(path);
            File.Move(path + ".away", path);
        }

        Assert.Equal(ServingStatus.Serving, await CheckAsync());
    }

    private async Task<ServingStatus> CheckAsync()
    {
        using var channel = _server.CreateChannel();
        return (await new global::Grpc.Health.V1.Health.HealthClient(channel).CheckAsync(new HealthCheckRequest())).Status;
    }
}
