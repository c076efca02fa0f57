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
/// <para>Not thread-safe: the housekeeping pass (one at a time) is its only writer.</para>
/// </remarks>
/// <param name="path">The FIFO, or <c>/proc/self/fd/1</c> for stdout.</param>
/// <param name="name">What messages call it: the FIFO's path, or stdout.</param>
internal sealed partial class AuditStreamFifo(string path, string name)
{
    /// <summary>The stream's FIFO at <paramref name="path"/>.</summary>
    /// <param name="path">The FIFO.</param>
    public AuditStreamFifo(string path)
        : this(path, $"FIFO {path}")
    {
    }

    // Linux's values, the same on x86-64 and arm64. O_NOCTTY: stdout may be a terminal, never to
    // become the process's controlling one by this open.
    private const int OpenWriteOnlyNonBlockingCloseOnExec = 0x1 | 0x100 | 0x800 | 0x80000; // O_WRONLY | O_NOCTTY | O_NONBLOCK | O_CLOEXEC
    private const int SeekCurrent = 1; // SEEK_CUR
    private const string StandardOutput = "/proc/self/fd/1";
    private const int Interrupted = 4; // EINTR
    private const int WouldBlock = 11; // EAGAIN
    private const int NoReader = 6; // ENXIO
    private const int BrokenPipe = 32; // EPIPE

    private byte[]? _rest; // what a full pipe left unwritten of the line _cut
    private string? _cut;
    private AuditHead? _cutEvent;

    /// <summary>
    /// A writer for the stream on stdout when stdout can fill up and be opened again (a pipe, a
    /// FIFO, a terminal: not seekable, no socket); null when it is written as a file is (a regular
    /// file or a device that can be sought, which a stopped reader cannot hold up) or cannot be
    /// opened again (a socket: <c>open(2)</c> of <c>/proc/self/fd/1</c> fails, <c>ENXIO</c>, as
    /// for a FIFO without a reader; written as before, blocking).
    /// </summary>
    public static AuditStreamFifo? ForStandardOutput()
    {
        if (!OperatingSystem.IsLinux() || Seek(1, 0, SeekCurrent) >= 0)
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

        return target is null || target.StartsWith("socket:", StringComparison.Ordinal) ? null : new AuditStreamFifo(StandardOutput, "stdout");
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
        var descriptor = Open(path, OpenWriteOnlyNonBlockingCloseOnExec, 0);
        if (descriptor < 0)
        {
            var error = Marshal.GetLastPInvokeError();
            throw error == NoReader
                ? new AuditStreamNotTakenException(null, $"no process holds the SIEM stream's {name} open for reading: nothing is sent to it until one does, and the stream's position stays")
                : new IOException($"cannot open the SIEM stream's {name} for writing (errno {error})");
        }

        using var file = new SafeFileHandle(descriptor, ownsHandle: true);
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
                throw new AuditStreamNotTakenException(other, $"the SIEM stream's {name}: a line cut short by a full pipe was completed, and the stream goes on after it at the next pass");
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

    private string Full(string what) =>
        $"the SIEM stream's {name} is full (its reader does not keep up): it took {what}; the rest is sent at the next pass";

    // Writes as much of content as the pipe takes now: all of it, or less when it is full.
    private int WriteSome(SafeFileHandle file, byte[] content, AuditHead? whole)
    {
        var done = 0;
        while (done < content.Length)
        {
            var n = (long)Write(file, content.AsSpan(done), content.Length - done);
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

            throw error == BrokenPipe
                ? new AuditStreamNotTakenException(whole, $"the reader of the SIEM stream's {name} closed it while it was written: the rest is sent at the next pass")
                : new IOException($"cannot write the SIEM stream's {name} (errno {error})");
        }

        return done;
    }

    [LibraryImport("libc", EntryPoint = "open", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static partial int Open(string path, int flags, int mode);

    [LibraryImport("libc", EntryPoint = "lseek", SetLastError = true)]
    private static partial long Seek(int descriptor, long offset, int whence);

    [LibraryImport("libc", EntryPoint = "write", SetLastError = true)]
    private static partial nint Write(SafeFileHandle descriptor, ReadOnlySpan<byte> buffer, nint count);
}
