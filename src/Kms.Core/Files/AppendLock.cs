using System.Diagnostics;
using System.Runtime.InteropServices;

namespace Kms.Core.Files;

/// <summary>
/// The lock <see cref="DurableFile.Append(string, ReadOnlySpan{byte}, UnixFileMode)"/> holds on a log of records from before it looks at the
/// last line until the file is closed: two writers of one file (two servers given one SIEM stream
/// path, the ceremony CLI and a server on one checkpoints file) take turns, where each would
/// otherwise write at the end it saw — the same offset, one record over the other — or cut the
/// other's line half-written.
/// </summary>
/// <remarks>
/// <para>On Linux an open file description lock (<c>fcntl(F_OFD_SETLK)</c>, a write lock on the
/// whole file): released when the stream is closed, and held by the stream, not the process, so
/// two streams of one process exclude each other too. Not <c>flock(2)</c>, which .NET takes itself:
/// a <see cref="FileStream"/> opened with any <see cref="FileShare"/> but None takes
/// <c>LOCK_SH|LOCK_NB</c> (readers included, <c>File.ReadAllText</c> too), with None
/// <c>LOCK_EX|LOCK_NB</c>; an exclusive flock would make every .NET reader of the file fail while
/// an append is under way, and a reader keeping the file open would hold off the appends.</para>
/// <para>Advisory: only writers that lock are held off (a reader never is). The lock is waited for
/// (an append holds it for one write and one fsync) up to <see cref="Wait"/> (a test's shorter
/// wait is passed in), then the append is refused (<see cref="FileLockedException"/>); a cancellation ends the wait. Where there are no such locks (Linux before 3.15, a file system without locks) the
/// append goes ahead unlocked, as .NET does with its own; elsewhere than Linux there is none.</para>
/// </remarks>
internal static partial class AppendLock
{
    /// <summary>How long an append waits for another writer's lock before it is refused.</summary>
    internal static readonly TimeSpan Wait = TimeSpan.FromSeconds(10);

    private const int OpenFileDescriptionSetLock = 37; // F_OFD_SETLK, the same on x86-64 and arm64
    private const short WriteLock = 1; // F_WRLCK
    private const int Interrupted = 4; // EINTR
    private const int TryAgain = 11; // EAGAIN: held by another
    private const int AccessDenied = 13; // EACCES: held by another (POSIX allows either)
    private const int Invalid = 22; // EINVAL: no OFD locks in this kernel
    private const int NoLocks = 37; // ENOLCK
    private const int NotSupported = 95; // EOPNOTSUPP

    /// <summary>Takes the lock on <paramref name="file"/> (held until it is closed); does nothing for a pipe, a FIFO or off Linux.</summary>
    /// <param name="file">The log, open for writing.</param>
    /// <param name="path">Its path, for the message.</param>
    /// <param name="wait">How long another writer's lock is waited for: <see cref="Wait"/>, or a test's.</param>
    /// <param name="cancellationToken">Ends the wait (the server's stop during its start's read-back of the SIEM stream).</param>
    /// <exception cref="FileLockedException">Another writer held the lock for longer than <paramref name="wait"/>.</exception>
    /// <exception cref="IOException">The lock failed otherwise.</exception>
    /// <exception cref="OperationCanceledException"><paramref name="cancellationToken"/> was cancelled while the lock was waited for.</exception>
    public static void Acquire(FileStream file, string path, TimeSpan wait, CancellationToken cancellationToken = default)
    {
        if (!OperatingSystem.IsLinux() || !file.CanSeek)
        {
            return;
        }

        var waited = Stopwatch.StartNew();
        var pause = 1;
        while (true)
        {
            switch (TryLock(file))
            {
                case 0 or Invalid or NoLocks or NotSupported:
                    return;
                case TryAgain or AccessDenied when waited.Elapsed < wait:
                    // Before, the wait heeded nothing: a stop asked for while a start read the SIEM
                    // stream back waited out the 10 s first.
                    if (cancellationToken.WaitHandle.WaitOne(pause))
                    {
                        cancellationToken.ThrowIfCancellationRequested();
                    }

                    pause = Math.Min(pause * 2, 50);
                    continue;
                case TryAgain or AccessDenied:
                    throw new FileLockedException($"{path} stayed locked by another writer for {wait.TotalSeconds:0.###} s (another server or kms command appending to the same file?); nothing was appended");
                case var error:
                    throw new IOException($"cannot lock {path} to append to it: {Marshal.GetPInvokeErrorMessage(error)} (errno {error})");
            }
        }
    }

    private static int TryLock(FileStream file)
    {
        var whole = new Flock { Type = WriteLock, Whence = 0, Start = 0, Length = 0, Pid = 0 };
        var descriptor = (int)file.SafeFileHandle.DangerousGetHandle();
        int error;
        do
        {
            error = Fcntl(descriptor, OpenFileDescriptionSetLock, ref whole) == 0 ? 0 : Marshal.GetLastPInvokeError();
        }
        while (error == Interrupted);

        return error;
    }

    // struct flock on Linux x86-64 and arm64: two shorts, two 64-bit offsets, a pid (32 bytes with padding).
    [StructLayout(LayoutKind.Sequential)]
    private struct Flock
    {
        public short Type;
        public short Whence;
        public long Start;
        public long Length;
        public int Pid;
    }

    [LibraryImport("libc", EntryPoint = "fcntl", SetLastError = true)]
    private static partial int Fcntl(int descriptor, int command, ref Flock flock);
}

/// <summary>
/// Another writer held a log's append lock (<see cref="AppendLock"/>) for longer than the wait:
/// nothing was written or cut. The file is as it was; trying again later may succeed.
/// </summary>
/// <param name="message">What held it up (the path and the wait).</param>
public sealed class FileLockedException(string message) : IOException(message);
