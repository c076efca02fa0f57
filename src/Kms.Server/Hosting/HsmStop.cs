using Kms.Hsm;
using Microsoft.Extensions.Hosting;

namespace Kms.Server.Hosting;

/// <summary>
/// Stops the HSM adapter as the host's last stop step, within what is left of the host's stop time
/// (<c>shutdownTimeoutSeconds</c>): registered before every other hosted service, it is stopped
/// after them all — after the gRPC and metrics listeners have stopped taking calls and drained,
/// and after the audit's final checkpoint, which the HSM signs.
/// </summary>
/// <remarks>
/// Before, the container's disposal stopped the adapter, after the host's stop: a stop while the
/// HSM hung waited the adapter's own 10-s drain beyond the host's stop time. The container's
/// disposal now finds the adapter stopped and returns at once. What the stop cannot wait for (a
/// native call that does not return) is left to the module (<see cref="Pkcs11Hsm.StopAsync"/>).
/// </remarks>
internal sealed class HsmStop(Pkcs11Hsm hsm) : IHostedService
{
    public Task StartAsync(CancellationToken cancellationToken) => Task.CompletedTask;

    public Task StopAsync(CancellationToken cancellationToken) => hsm.StopAsync(cancellationToken);
}
