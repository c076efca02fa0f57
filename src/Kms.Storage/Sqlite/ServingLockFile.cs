using System.Runtime.InteropServices;
using Microsoft.Win32.SafeHandles;

namespace Kms.Storage.Sqlite;

/// <summary>
/// The SQLite deployment's serving lock: <c>flock(2)</c> on <c>{database}.serving</c>, shared by a
/// server for as long as it serves, exclusive for an offline maintenance (a domain-key rotation),
/// so neither starts while the other runs. What PostgreSQL's advisory lock is for its nodes.
/// </summary>
/// <remarks>
/// <c>flock</c>, not <see cref="FileStream.Lock"/>: POSIX record locks never conflict within one
/// process, and a lock is released by closing any descriptor of the file; a <c>flock</c> belongs
/// to its open file description. The file is opened directly (<c>open(2)</c>), because
/// <see cref="FileStream"/> takes a <c>flock</c> of its own on open (shared unless
/// <see cref="FileShare.None"/>), which would fail before this one could answer "held".
/// </remarks>
internal sealed partial class ServingLockFile : IDisposable
{
    // Linux's values, the same on x86-64 and arm64.
    private const int OpenReadOnlyCreateCloseOnExec = 0x40 | 0x80000; // O_RDONLY | O_CREAT | O_CLOEXEC
    // 0644: the file holds nothing, and a server running as another user than the ceremony
    // (root, say) that created it must still open it to take its shared lock.
    private const int OwnerWriteAllRead = 0x1A4;
    private const int LockShared = 1;
    private const int LockExclusive = 2;
    private const int LockNonBlocking = 4;
    private const int WouldBlock = 11; // EWOULDBLOCK
    private const int Interrupted = 4; // EINTR

    private readonly SafeFileHandle _file;

    private ServingLockFile(SafeFileHandle file) => _file = file;

    /// <summary>The lock file of the database at <paramref name="databasePath"/>: <c>{database}.serving</c>.</summary>
    public static string PathFor(string databasePath) => Path.GetFullPath(databasePath) + ".serving";

    /// <summary>
    /// How long a conflicting lock is waited for before the answer is "held". A lock released a
    /// moment ago can still be held: a child process forked by another thread of the releasing
    /// process (a tool it runs) shares the open file description until its <c>exec</c> closes
    /// it (close-on-exec). A lock that is really held — a server serving — is refused after this.
    /// </summary>
    public static readonly TimeSpan ReleaseGrace = TimeSpan.FromSeconds(1);

    /// <summary>Takes the lock, waiting at most <see cref="ReleaseGrace"/>; null when it is held in a conflicting mode.</summary>
    /// <exception cref="IOException">The lock file cannot be opened or locked.</exception>
    public static ServingLockFile? TryTake(string path, bool exclusive)
    {
        var deadline = Environment.TickCount64 + (long)ReleaseGrace.TotalMilliseconds;
        while (true)
        {
            if (TryTakeOnce(path, exclusive) is { } taken)
            {
                return taken;
            }

            if (Environment.TickCount64 >= deadline)
            {
                return null;
            }

            Thread.Sleep(20);
        }
    }

    private static ServingLockFile? TryTakeOnce(string path, bool exclusive)
    {
        var descriptor = Open(path, OpenReadOnlyCreateCloseOnExec, OwnerWriteAllRead);
        if (descriptor < 0)
        {
            throw new IOException($"cannot open the serving lock file {path} (errno {Marshal.GetLastPInvokeError()})");
        }

        var file = new SafeFileHandle(descriptor, ownsHandle: true);

        // Whatever the umask: readable by the other users. (Fails harmlessly on a file another user owns.)
        _ = Fchmod(descriptor, OwnerWriteAllRead);
        int error;
        do
        {
            if (Flock(descriptor, (exclusive ? LockExclusive : LockShared) | LockNonBlocking) == 0)
            {
                return new ServingLockFile(file);
            }

            error = Marshal.GetLastPInvokeError();
        }
        while (error == Interrupted);

        file.Dispose();
        return error == WouldBlock ? null : throw new IOException($"cannot lock the serving lock file {path} (errno {error})");
    }

    /// <summary>Releases the lock (closing the file does).</summary>
    public void Dispose() => _file.Dispose();

    [LibraryImport("libc", EntryPoint = "open", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static partial int Open(string path, int flags, int mode);

    [LibraryImport("libc", EntryPoint = "fchmod", SetLastError = true)]
    private static partial int Fchmod(int descriptor, int mode);

    [LibraryImport("libc", EntryPoint = "flock", SetLastError = true)]
    private static partial int Flock(int descriptor, int operation);
}
