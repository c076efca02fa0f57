using System.Net.NetworkInformation;
using Kms.Cli.Ceremony;

namespace Kms.Cli.Tests;

/// <summary>The ceremony's "host is offline" check counts every interface that may carry traffic.</summary>
public sealed class OfflineHostTests
{
    [Theory]
    [InlineData(OperationalStatus.Up, true)]
    [InlineData(OperationalStatus.Unknown, true)] // WireGuard, tun, dummy on Linux: up and routing
    [InlineData(OperationalStatus.Dormant, true)]
    [InlineData(OperationalStatus.Testing, true)]
    [InlineData(OperationalStatus.Down, false)]
    [InlineData(OperationalStatus.NotPresent, false)]
    [InlineData(OperationalStatus.LowerLayerDown, false)]
    public void AnInterfaceCountsAsUp_UnlessItsStateSaysItCannotCarryTraffic(OperationalStatus status, bool up) =>
        Assert.Equal(up, OfflineHost.MayCarryTraffic(status));
}
