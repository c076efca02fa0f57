using System.Net.Sockets;
using System.Runtime.InteropServices;

namespace Kms.Testing;

/// <summary>
/// A connected pair of Unix stream sockets made with <c>socketpair(2)</c>: blocking descriptors, as
/// systemd's journal stream is (a <see cref="Socket"/> of .NET sets <c>O_NONBLOCK</c> on its own).
/// </summary>
internal static partial class UnixSocketPair
{
    private const int Unix = 1; // AF_UNIX
    private const int Stream = 1; // SOCK_STREAM
    private const int CloseOnExec = 0x80000; // SOCK_CLOEXEC
    private const int DuplicateAtLeast = 0; // F_DUPFD: the copy is not close-on-exec

    /// <summary>Both ends, close-on-exec: no child process inherits them unless given one.</summary>
    public static (SafeSocketHandle Reader, int Writer) Create()
    {
        var ends = new int[2];
        if (SocketPair(Unix, Stream | CloseOnExec, 0, ends) != 0)
        {
            throw new IOException($"socketpair failed (errno {Marshal.GetLastPInvokeError()})");
        }

        return (new SafeSocketHandle(ends[0], ownsHandle: true), ends[1]);
    }

    /// <summary>A copy of <paramref name="descriptor"/> that a child process inherits (not close-on-exec), numbered 10 or above.</summary>
    public static int Inheritable(int descriptor)
    {
        var copy = Control(descriptor, DuplicateAtLeast, 10);
        return copy >= 0 ? copy : throw new IOException($"fcntl(F_DUPFD) failed (errno {Marshal.GetLastPInvokeError()})");
    }

    /// <summary>Closes a descriptor of this process.</summary>
    public static void Close(int descriptor) => _ = CloseDescriptor(descriptor);

    [LibraryImport("libc", EntryPoint = "socketpair", SetLastError = true)]
    private static partial int SocketPair(int domain, int type, int protocol, [Out] int[] ends);

    [LibraryImport("libc", EntryPoint = "fcntl", SetLastError = true)]
    private static partial int Control(int descriptor, int command, int argument);

    [LibraryImport("libc", EntryPoint = "close", SetLastError = true)]
    private static partial int CloseDescriptor(int descriptor);
}
