using System.Runtime.InteropServices;

namespace Kms.Cli.Infrastructure;

/// <summary>Whether a file descriptor is a terminal (<c>isatty</c>).</summary>
internal static partial class Terminal
{
    /// <summary>
    /// Whether <paramref name="fd"/> is a terminal. On Unix, <c>isatty(3)</c>; elsewhere only
    /// standard input is known (<see cref="Console.IsInputRedirected"/>), and any other descriptor
    /// counts as no terminal.
    /// </summary>
    public static bool IsTerminal(int fd)
    {
        if (OperatingSystem.IsLinux() || OperatingSystem.IsMacOS() || OperatingSystem.IsFreeBSD())
        {
            return fd >= 0 && IsATty(fd) == 1;
        }

        return fd == 0 && !Console.IsInputRedirected;
    }

    [LibraryImport("libc", EntryPoint = "isatty")]
    private static partial int IsATty(int fd);
}
