using System.Runtime.InteropServices;
using Microsoft.Win32.SafeHandles;

namespace Kms.Core.Files;

/// <summary>
/// <c>fsync(2)</c> of a directory: what makes a file created or renamed in it survive a power
/// loss. Flushing the file writes its data; the name pointing at it is the directory's, and until
/// the directory is synced the file may be gone after a crash although its writer reported
/// success.
/// </summary>
/// <remarks>
/// <see cref="FileStream"/> cannot open a directory, so the directory is opened read-only with
/// <c>open(2)</c>. On Linux and macOS only; elsewhere (Windows) it does nothing.
/// </remarks>
public static partial class DirectorySync
{
    private const int LinuxOpenReadOnlyCloseOnExec = 0x80000; // O_RDONLY | O_CLOEXEC, the same on x86-64 and arm64
    private const int MacOpenReadOnlyCloseOnExec = 0x1000000; // O_RDONLY | O_CLOEXEC
    private const int Interrupted = 4; // EINTR, on both
    private const int Invalid = 22; // EINVAL, on both

    /// <summary>Syncs <paramref name="directory"/> to disk.</summary>
    /// <exception cref="IOException">The directory cannot be opened or synced; the message names it and the system's reason.</exception>
    public static void Flush(string directory)
    {
        ArgumentException.ThrowIfNullOrEmpty(directory);
        if (!OperatingSystem.IsLinux() && !OperatingSystem.IsMacOS())
        {
            return;
        }

        var flags = OperatingSystem.IsLinux() ? LinuxOpenReadOnlyCloseOnExec : MacOpenReadOnlyCloseOnExec;
        int descriptor;
        int error;
        do
        {
            descriptor = Open(directory, flags);
            error = descriptor < 0 ? Marshal.GetLastPInvokeError() : 0;
        }
        while (descriptor < 0 && error == Interrupted);

        if (descriptor < 0)
        {
            throw new IOException($"cannot open directory {directory} to sync it to disk: {Marshal.GetPInvokeErrorMessage(error)} (errno {error})");
        }

        using var handle = new SafeFileHandle(descriptor, ownsHandle: true);
        do
        {
            error = Fsync(descriptor) == 0 ? 0 : Marshal.GetLastPInvokeError();
        }
        while (error == Interrupted);

        // EINVAL: a file system that cannot sync a directory at all (PostgreSQL's fsync_fname
        // ignores it for the same reason); there is nothing more to do there.
        if (error is not (0 or Invalid))
        {
            throw new IOException($"cannot sync directory {directory} to disk: {Marshal.GetPInvokeErrorMessage(error)} (errno {error})");
        }
    }

    [LibraryImport("libc", EntryPoint = "open", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static partial int Open(string path, int flags);

    [LibraryImport("libc", EntryPoint = "fsync", SetLastError = true)]
    private static partial int Fsync(int descriptor);
}
