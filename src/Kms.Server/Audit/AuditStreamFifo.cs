using System.Runtime.InteropServices;
using System.Text;
using Kms.Core.Audit;
using Microsoft.Win32.SafeHandles;

namespace Kms.Server.Audit;

/// <summary>
/// Writes the SIEM stream's lines to a FIFO (a named pipe a SIEM agent reads) so that nothing
/// counts as sent that no reader took: opened for writing only and non-blocking
/// (<c>O_WRONLY|O_NONBLOCK</c>), each time a page is written.
/// </summary>
/// <remarks>
/// <para>Before, the FIFO was opened for reading and writing, so that the open never waited for a
/// reader (a housekeeping pass, and the stop's, would have hung on a missing SIEM agent). But the
/// server was then a reader itself: with no agent attached each append went into a pipe nobody
/// read and was gone when the server closed it, while the stream's position moved on. Opened
/// for writing only and non-blocking, the open does not wait either, and fails at once when no
/// process holds the FIFO open for reading (<c>ENXIO</c>): nothing is written, the position stays,
/// and the next pass tries again.</para>
/// <para>A full pipe (a reader that does not keep up: <c>EAGAIN</c>) is not waited on: the lines
/// written whole count, the rest comes at the next pass. A line the pipe took only part of (a
/// line longer than <c>PIPE_BUF</c>, 4,096 bytes, is not written atomically) is completed before
/// anything else is written to the stream, so a reader never sees two lines run together.</para>
/// <para>The stream on stdout (<c>-</c>) when stdout is a pipe, a FIFO or a terminal (<see
/// cref="ForStandardOutput"/>) is written alike, through <c>/proc/self/fd/1</c> opened the same
/// way: a file description of its own on the same pipe. Setting <c>O_NONBLOCK</c> on descriptor 1
/// itself would change the description it shares with every other writer of that pipe (the
/// process that started the server, and this process's own console output), whose writes would
/// then fail instead of waiting.</para>
/// <para>Stdout that is a socket (systemd's <c>StandardOutput=journal</c>, a container runtime's
/// log socket) cannot be opened again (<c>open(2)</c> of <c>/proc/self/fd/1</c> fails, <c>ENXIO</c>):
/// it is written on descriptor 1 itself with <c>send(2)</c> and <c>MSG_DONTWAIT|MSG_NOSIGNAL</c>, the
/// flags of that one call, so the description shared with other writers stays blocking. A full
/// socket buffer (<c>EAGAIN</c>) is a full pipe's case; a peer that closed it (<c>EPIPE</c>,
/// <c>ECONNRESET</c>) sends nothing more, the position staying.</para>
/// <para>Not thread-safe: the housekeeping pass (one at a time) is its only writer.</para>
/// </remarks>
internal sealed partial class AuditStreamFifo
{
    private readonly string? _path; // opened for each write; null for a socket
    private readonly SafeHandle? _socket; // written with send(2), never opened again; null for a FIFO or a pipe
    private readonly string _name;

    /// <summary>The stream's FIFO at <paramref name="path"/>.</summary>
    /// <param name="path">The FIFO.</param>
    public AuditStreamFifo(string path)
        : this(path, $"FIFO {path}")
    {
    }

    /// <param name="path">The FIFO, or <c>/proc/self/fd/1</c> for stdout.</param>
    /// <param name="name">What messages call it: the FIFO's path, or stdout.</param>
    private AuditStreamFifo(string path, string name) => (_path, _name) = (path, name);

    /// <param name="socket">A connected stream socket (stdout's, descriptor 1; journald's is one), not owned. A datagram
    /// socket is written too, but each send is one datagram: a line longer than the socket takes fails (EMSGSIZE) at every pass.</param>
    /// <param name="name">What messages call it.</param>
    private AuditStreamFifo(SafeHandle socket, string name) => (_socket, _name) = (socket, name);

    /// <summary>A writer to the connected socket <paramref name="socket"/> (not owned: the caller closes it), as for stdout that is a socket.</summary>
    /// <param name="socket">The socket.</param>
    /// <param name="name">What messages call it.</param>
    internal static AuditStreamFifo ForSocket(SafeHandle socket, string name) => new(socket, name);

    // Linux's values, the same on x86-64 and arm64. O_NOCTTY: stdout may be a terminal, never to
    // become the process's controlling one by this open.
    private const int OpenWriteOnlyNonBlockingCloseOnExec = 0x1 | 0x100 | 0x800 | 0x80000; // O_WRONLY | O_NOCTTY | O_NONBLOCK | O_CLOEXEC
    private const int SeekCurrent = 1; // SEEK_CUR
    private const string StandardOutput = "/proc/self/fd/1";
    private const int Interrupted = 4; // EINTR
    private const int WouldBlock = 11; // EAGAIN
    private const int NoReader = 6; // ENXIO
    private const int BrokenPipe = 32; // EPIPE
    private const int ConnectionReset = 104; // ECONNRESET
    private const int NotConnected = 107; // ENOTCONN
    private const int DontWaitNoSignal = 0x40 | 0x4000; // MSG_DONTWAIT | MSG_NOSIGNAL
    private const int SocketLevel = 1; // SOL_SOCKET
    private const int SocketType = 3; // SO_TYPE

    private byte[]? _rest; // what a full pipe left unwritten of the line _cut
    private string? _cut;
    private AuditHead? _cutEvent;

    /// <summary>
    /// A writer for the stream on stdout when stdout can fill up: a socket (written with
    /// <c>send(2)</c>, <c>MSG_DONTWAIT</c>), or a pipe, a FIFO or a terminal (not seekable: opened
    /// again through <c>/proc/self/fd/1</c>); null when it is written as a file is (a regular file
    /// or a device that can be sought, which a stopped reader cannot hold up).
    /// </summary>
    /// <remarks>
    /// Before, a socket was written as a file is, blocking: <c>open(2)</c> of <c>/proc/self/fd/1</c>
    /// fails for it (<c>ENXIO</c>), and a journal or a log collector that stopped reading held the
    /// housekeeping pass and the stop.
    /// </remarks>
    public static AuditStreamFifo? ForStandardOutput()
    {
        if (!OperatingSystem.IsLinux())
        {
            return null;
        }

        var length = sizeof(int);
        if (GetSocketOption(1, SocketLevel, SocketType, out _, ref length) == 0)
        {
            return new AuditStreamFifo(new SafeFileHandle(1, ownsHandle: false), "stdout (a socket)");
        }

        if (Seek(1, 0, SeekCurrent) >= 0)
        {
            return null;
        }

        string? target;
        try
        {
            target = new FileInfo(StandardOutput).LinkTarget; // pipe:[…], socket:[…], or a path
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            return null;
        }

        return target is null ? null : new AuditStreamFifo(StandardOutput, "stdout");
    }

    /// <summary>
    /// What stdout and stderr both are when they are one pipe or one socket (<c>2&gt;&amp;1</c>;
    /// systemd's default <c>StandardError=inherit</c>): "socket" or "pipe"; else null.
    /// </summary>
    public static string? StandardErrorSharesStandardOutput()
    {
        if (!OperatingSystem.IsLinux())
        {
            return null;
        }

        try
        {
            var (output, error) = (new FileInfo(StandardOutput).LinkTarget, new FileInfo("/proc/self/fd/2").LinkTarget);
            return output is null || output != error ? null
                : output.StartsWith("socket:", StringComparison.Ordinal) ? "socket"
                : output.StartsWith("pipe:", StringComparison.Ordinal) ? "pipe"
                : null;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            return null;
        }
    }

    /// <summary>Whether a line was cut short by a full pipe and its rest is still to be written.</summary>
    public bool LineCut => _rest is not null;

    /// <summary>
    /// Writes <paramref name="lines"/> (each without its line feed; an event line with its event),
    /// each whole and in order, after the rest of a line cut short before.
    /// </summary>
    /// <param name="lines">The lines.</param>
    /// <param name="taken">Called with each line the pipe took whole, in order (a line completed from before first).</param>
    /// <exception cref="AuditStreamNotTakenException">No reader, or the pipe filled up: not all of the lines were written; its <see cref="AuditStreamNotTakenException.Reached"/> is the last event written whole.</exception>
    /// <exception cref="IOException">The FIFO cannot be opened or written (it is gone, not writable).</exception>
    public void Write(IReadOnlyList<(string Line, AuditHead? Event)> lines, Action<(string Line, AuditHead? Event)> taken)
    {
        using var opened = _socket is null ? OpenForWriting() : null;
        var file = _socket ?? opened!;
        var skip = 0;
        if (_rest is { } rest)
        {
            var written = WriteSome(file, rest, null);
            if (written < rest.Length)
            {
                _rest = rest[written..];
                throw new AuditStreamNotTakenException(null, Full("the rest of a line it took part of"));
            }

            var (line, cutEvent) = (_cut, _cutEvent);
            (_rest, _cut, _cutEvent) = (null, null, null);
            taken((line!, cutEvent));

            if (lines.Count > 0 && lines[0].Line == line)
            {
                skip = 1; // the line given again is the one just completed
            }
            else if (cutEvent is { } other)
            {
                // The stream now ends with that event, not with the one these lines go on after
                // (the chain moved under it): the position goes there, and the next pass looks again.
                throw new AuditStreamNotTakenException(other, $"the SIEM stream's {_name}: a line cut short by a full pipe was completed, and the stream goes on after it at the next pass");
            }
        }

        AuditHead? whole = null;
        for (var i = skip; i < lines.Count; i++)
        {
            var (line, lineEvent) = lines[i];
            var bytes = Encoding.UTF8.GetBytes(line + "\n");
            var written = WriteSome(file, bytes, whole);
            if (written < bytes.Length)
            {
                if (written > 0)
                {
                    (_rest, _cut, _cutEvent) = (bytes[written..], line, lineEvent);
                }

                throw new AuditStreamNotTakenException(whole, Full(written > 0 ? "part of a line, whose rest goes first at the next pass" : "no further line"));
            }

            whole = lineEvent ?? whole;
            taken((line, lineEvent));
        }
    }

    private SafeFileHandle OpenForWriting()
    {
        var descriptor = Open(_path!, OpenWriteOnlyNonBlockingCloseOnExec, 0);
        if (descriptor < 0)
        {
            var error = Marshal.GetLastPInvokeError();
            throw error == NoReader
                ? new AuditStreamNotTakenException(null, $"no process holds the SIEM stream's {_name} open for reading: nothing is sent to it until one does, and the stream's position stays")
                : new IOException($"cannot open the SIEM stream's {_name} for writing (errno {error})");
        }

        return new SafeFileHandle(descriptor, ownsHandle: true);
    }

    private string Full(string what) =>
        $"the SIEM stream's {_name} is full (its reader does not keep up): it took {what}; the rest is sent at the next pass";

    // Writes as much of content as the pipe takes now: all of it, or less when it is full.
    private int WriteSome(SafeHandle file, byte[] content, AuditHead? whole)
    {
        var done = 0;
        while (done < content.Length)
        {
            var n = _socket is null
                ? (long)Write(file, content.AsSpan(done), content.Length - done)
                : (long)Send(file, content.AsSpan(done), content.Length - done, DontWaitNoSignal);
            if (n >= 0)
            {
                done += (int)n;
                continue;
            }

            var error = Marshal.GetLastPInvokeError();
            if (error == Interrupted)
            {
                continue;
            }

            if (error == WouldBlock)
            {
                return done;
            }

            if (_socket is not null && error is BrokenPipe or ConnectionReset or NotConnected)
            {
                // A socket's peer that closed it does not come back (a restarted journal connects
                // to a new process, not to this socket): the position stays, and a restart of the
                // server with a stdout that is read goes on from it.
                throw new AuditStreamNotTakenException(whole, $"the reader of the SIEM stream's {_name} closed it: nothing more reaches it in this run, and the stream's position stays (the next start goes on from it)");
            }

            throw error == BrokenPipe
                ? new AuditStreamNotTakenException(whole, $"the reader of the SIEM stream's {_name} closed it while it was written: the rest is sent at the next pass")
                : new IOException($"cannot write the SIEM stream's {_name} (errno {error})");
        }

        return done;
    }

    [LibraryImport("libc", EntryPoint = "open", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static partial int Open(string path, int flags, int mode);

    [LibraryImport("libc", EntryPoint = "lseek", SetLastError = true)]
    private static partial long Seek(int descriptor, long offset, int whence);

    [LibraryImport("libc", EntryPoint = "write", SetLastError = true)]
    private static partial nint Write(SafeHandle descriptor, ReadOnlySpan<byte> buffer, nint count);

    [LibraryImport("libc", EntryPoint = "send", SetLastError = true)]
    private static partial nint Send(SafeHandle socket, ReadOnlySpan<byte> buffer, nint count, int flags);

    [LibraryImport("libc", EntryPoint = "getsockopt", SetLastError = true)]
    private static partial int GetSocketOption(int socket, int level, int name, out int value, ref int length);
}
