using System.Runtime.InteropServices;
using Kms.Server.Hosting;

namespace Kms.Server.Tests;

/// <summary>The stop signals' handling while the server is built (<see cref="StartupStopSignals"/>).</summary>
public sealed class StartupStopSignalsTests
{
    /// <summary>
    /// The first stop signal during the build cancels the build instead of ending the process; a
    /// second one, the build not yet ended, is left to the runtime's default, so a build stuck in
    /// something that does not heed the token (a PKCS#11 module's C_Initialize) still ends on an
    /// operator's second Ctrl+C or SIGTERM.
    /// </summary>
    [Fact]
    public void FirstSignalCancelsTheBuild_ASecondWhileItBuildsEndsTheProcess()
    {
        using var signals = new StartupStopSignals();

        var first = new PosixSignalContext(PosixSignal.SIGTERM);
        signals.OnSignal(first);
        Assert.True(first.Cancel, "the first signal should be turned into a stop, not end the process");
        Assert.True(signals.Token.IsCancellationRequested);
        Assert.True(signals.StopRequested);

        var second = new PosixSignalContext(PosixSignal.SIGINT);
        signals.OnSignal(second);
        Assert.False(second.Cancel, "a second signal during the build should end the process (the runtime's default)");
    }
}
