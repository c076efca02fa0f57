using System.Net.NetworkInformation;
using System.Runtime.InteropServices;

namespace Kms.Cli.Ceremony;

/// <summary>
/// The ceremony host's hygiene: the plaintext domain key exists only in this process, so the
/// process must not be dumpable (no core file, no ptrace by other users' processes) and the
/// host should be offline.
/// </summary>
internal static partial class OfflineHost
{
    private const int RlimitCore = 4;
    private const int PrSetDumpable = 4;

    /// <summary>Network interfaces that are up, other than loopback (names only).</summary>
    public static IReadOnlyList<string> InterfacesUp() =>
        [.. NetworkInterface.GetAllNetworkInterfaces()
            .Where(n => MayCarryTraffic(n.OperationalStatus) && n.NetworkInterfaceType != NetworkInterfaceType.Loopback)
            .Select(n => n.Name)
            .Order(StringComparer.Ordinal)];

    /// <summary>
    /// Whether an interface in this state may carry traffic: all but the states that say it
    /// cannot. Linux reports WireGuard, tun (OpenVPN), dummy and some PPP links as "unknown"
    /// while they are up and routing; counting only "up" let a live VPN pass as offline.
    /// </summary>
    internal static bool MayCarryTraffic(OperationalStatus status) =>
        status is not (OperationalStatus.Down or OperationalStatus.NotPresent or OperationalStatus.LowerLayerDown);

    /// <summary>
    /// Turns core dumps off for this process (RLIMIT_CORE = 0) and makes it non-dumpable
    /// (PR_SET_DUMPABLE = 0: no core file, /proc/self/mem readable only by root, no ptrace
    /// attach by the same user). Linux only; elsewhere the ceremony refuses to run.
    /// </summary>
    /// <exception cref="PlatformNotSupportedException">Not Linux.</exception>
    /// <exception cref="InvalidOperationException">The kernel refused.</exception>
    public static void DisableCoreDumps()
    {
        if (!OperatingSystem.IsLinux())
        {
            throw new PlatformNotSupportedException("the key ceremony runs on Linux only (it must turn core dumps off)");
        }

        var zero = new RLimit { Current = 0, Maximum = 0 };
        if (SetRLimit(RlimitCore, ref zero) != 0)
        {
            throw new InvalidOperationException($"setrlimit(RLIMIT_CORE, 0) failed (errno {Marshal.GetLastPInvokeError()})");
        }

        if (PrCtl(PrSetDumpable, 0, 0, 0, 0) != 0)
        {
            throw new InvalidOperationException($"prctl(PR_SET_DUMPABLE, 0) failed (errno {Marshal.GetLastPInvokeError()})");
        }
    }

    /// <summary>Whether this process is currently dumpable (PR_GET_DUMPABLE), for the transcript.</summary>
    public static bool IsDumpable() => PrCtl(3 /* PR_GET_DUMPABLE */, 0, 0, 0, 0) != 0;

    /// <summary>The process's core-file size limit (soft), for the transcript.</summary>
    /// <exception cref="InvalidOperationException">The kernel refused (a failed read must not pass for a limit of 0).</exception>
    public static ulong CoreLimit()
    {
        if (GetRLimit(RlimitCore, out var limit) != 0)
        {
            throw new InvalidOperationException($"getrlimit(RLIMIT_CORE) failed (errno {Marshal.GetLastPInvokeError()})");
        }
        return limit.Current;
    }

    [StructLayout(LayoutKind.Sequential)]
    private struct RLimit
    {
        public ulong Current;
        public ulong Maximum;
    }

    [LibraryImport("libc", EntryPoint = "setrlimit", SetLastError = true)]
    private static partial int SetRLimit(int resource, ref RLimit limit);

    [LibraryImport("libc", EntryPoint = "getrlimit", SetLastError = true)]
    private static partial int GetRLimit(int resource, out RLimit limit);

    [LibraryImport("libc", EntryPoint = "prctl", SetLastError = true)]
    private static partial int PrCtl(int option, ulong arg2, ulong arg3, ulong arg4, ulong arg5);
}
