using System.Security.Cryptography;

namespace Kms.Core.Files;

/// <summary>
/// Files a user relies on after a crash or a power loss (key files, shares, tokens, the genesis,
/// transcripts, command outputs, downloaded backups): each is written under a temporary name in
/// its own directory, created with its final mode before any byte is written, flushed to disk,
/// renamed into place, and the directory synced.
/// </summary>
/// <remarks>
/// <para>What a crash leaves under the final name is the previous file (or none) or the whole
/// new one, never a torn or empty file; once a write returns, the file and its name are on disk.
/// A write that fails, or is disposed of without <see cref="DurableFileWriter.Commit"/>, deletes
/// its temporary file (<c>.NAME.RANDOM.partial</c>); only a process killed mid-write leaves one
/// behind, beside the final name and never under it.</para>
/// <para>The mode is the one <c>open(2)</c> creates the temporary file with (less the umask);
/// elsewhere than Linux and macOS it is ignored.</para>
/// </remarks>
public static class DurableFile
{
    /// <summary>Readable and writable by the owner only (0600): keys, tokens, shares, plaintext, databases.</summary>
    public const UnixFileMode OwnerOnly = UnixFileMode.UserRead | UnixFileMode.UserWrite;

    /// <summary>Also readable by everyone (0644, less the umask): public keys, the genesis, transcripts.</summary>
    public const UnixFileMode Public = OwnerOnly | UnixFileMode.GroupRead | UnixFileMode.OtherRead;

    /// <summary>
    /// Opens a writer for <paramref name="path"/>: write to <see cref="DurableFileWriter.Stream"/>,
    /// then <see cref="DurableFileWriter.CommitAsync"/>; disposing without a commit leaves nothing.
    /// </summary>
    /// <param name="path">The final path.</param>
    /// <param name="mode">The file's mode (<see cref="OwnerOnly"/> for anything secret).</param>
    /// <param name="overwrite">Whether the commit replaces an existing file; when false an existing file is refused, here and again at the rename, in one step of the file system (two writers of one new name: exactly one commits).</param>
    /// <exception cref="IOException"><paramref name="path"/> exists and <paramref name="overwrite"/> is false, or the temporary file cannot be created.</exception>
    public static DurableFileWriter Create(string path, UnixFileMode mode, bool overwrite) =>
        Create(path, mode, overwrite, DirectorySync.Flush);

    /// <summary><see cref="Create(string, UnixFileMode, bool)"/>, syncing the directory with <paramref name="syncDirectory"/> (a test's stand-in).</summary>
    internal static DurableFileWriter Create(string path, UnixFileMode mode, bool overwrite, Action<string> syncDirectory)
    {
        ArgumentException.ThrowIfNullOrEmpty(path);
        var full = Path.GetFullPath(path);
        if (!overwrite && (File.Exists(full) || Directory.Exists(full)))
        {
            throw new IOException($"{full} exists already");
        }

        var temporary = Path.Combine(Path.GetDirectoryName(full)!, $".{Path.GetFileName(full)}.{Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(8))}.partial");
        var options = new FileStreamOptions
        {
            Mode = FileMode.CreateNew,
            Access = FileAccess.Write,
            Share = FileShare.None,
            // Unbuffered: no copy of what the file holds is left in a buffer this process cannot zero.
            BufferSize = 0,
            Options = FileOptions.Asynchronous,
        };
        if (!OperatingSystem.IsWindows())
        {
            // Given to open(2): the file never exists with a wider mode, not even empty.
            options.UnixCreateMode = mode;
        }

        return new DurableFileWriter(full, temporary, new FileStream(temporary, options), overwrite, syncDirectory);
    }

    /// <summary>Writes <paramref name="content"/> as the whole of <paramref name="path"/> (see <see cref="Create(string, UnixFileMode, bool)"/>).</summary>
    /// <exception cref="IOException">The file exists and <paramref name="overwrite"/> is false, or it cannot be written, renamed or its directory synced.</exception>
    public static async Task WriteAsync(string path, ReadOnlyMemory<byte> content, UnixFileMode mode, bool overwrite, CancellationToken cancellationToken)
    {
        var writer = Create(path, mode, overwrite);
        await using (writer.ConfigureAwait(false))
        {
            await writer.Stream.WriteAsync(content, cancellationToken).ConfigureAwait(false);
            await writer.CommitAsync(cancellationToken).ConfigureAwait(false);
        }
    }

    /// <summary>Writes <paramref name="content"/> as the whole of <paramref name="path"/>, synchronously (see <see cref="Create(string, UnixFileMode, bool)"/>).</summary>
    /// <exception cref="IOException">The file exists and <paramref name="overwrite"/> is false, or it cannot be written, renamed or its directory synced.</exception>
    public static void Write(string path, ReadOnlySpan<byte> content, UnixFileMode mode, bool overwrite)
    {
        using var writer = Create(path, mode, overwrite);
        writer.Stream.Write(content);
        writer.Commit();
    }

    /// <summary>
    /// The longest torn last line <see cref="Append(string, ReadOnlySpan{byte}, UnixFileMode)"/> cuts off (1 MiB, far above any record): a
    /// file ending in more without a line feed is not a log of records, and is refused whole.
    /// </summary>
    public const int MaxTornLine = 1 << 20;

    /// <summary>
    /// Appends <paramref name="content"/>, whole lines, to <paramref name="path"/> (a log of
    /// records, one JSON object a line), creating it with <paramref name="mode"/> if it does not
    /// exist (the mode is given to <c>open(2)</c>: the file is never readable by more, not even
    /// empty); flushed to disk, and the directory synced, before this returns.
    /// </summary>
    /// <remarks>
    /// <para>The content is one write (records and their line feeds together). A crash during an
    /// append can leave its last line torn (no line feed at the end), never an earlier one. The
    /// next append ends the file with a whole line first (<see cref="EndWithWholeLine(FileStream)"/>), so
    /// that its record does not run on from the torn one (which would spoil both): a torn line is
    /// cut off, and a line that lacks only its line feed (one JSON object, whole:
    /// <see cref="JsonLines.IsWholeRecord(ReadOnlySpan{byte})"/>, the rule the readers of these logs
    /// share) gets it. The file
    /// holds whole lines only once this returns, and a reader sees a torn line only at the very
    /// end, only after a crash. An append that fails part-way (a full disk) is taken back. A pipe
    /// or FIFO is written as it is.</para>
    /// <para>Two writers of one file take turns (<see cref="AppendLock"/>, an advisory lock held
    /// from before the last line is looked at until the file is closed): without it each wrote at
    /// the end it saw, the same offset, one record over the other.</para>
    /// </remarks>
    /// <returns>The number of bytes of a torn last line that were cut off; 0 when the file ended with a whole line (or was new).</returns>
    /// <exception cref="ArgumentException"><paramref name="content"/> does not end with a line feed.</exception>
    /// <exception cref="IOException">The file cannot be written, or its directory cannot be synced, or it ends with more than <see cref="MaxTornLine"/> bytes without a line feed (nothing is cut or written), or another writer held it locked for longer than 10 s (nothing is written).</exception>
    public static long Append(string path, ReadOnlySpan<byte> content, UnixFileMode mode) =>
        Append(path, content, mode, AppendLock.Wait);

    /// <summary>
    /// <see cref="Append(string, ReadOnlySpan{byte}, UnixFileMode)"/>, waiting <paramref name="lockWait"/>
    /// for another writer's lock: a test's shorter wait, or <see cref="TimeSpan.Zero"/> for a writer
    /// that must not wait (the server's SIEM stream and its own checkpoints.jsonl, appended to from
    /// its housekeeping pass: it tries again at the next pass).
    /// </summary>
    /// <param name="path">The log.</param>
    /// <param name="content">Whole lines, the last ending with a line feed.</param>
    /// <param name="mode">The permissions a new file is created with.</param>
    /// <param name="lockWait">How long another writer's lock is waited for; zero: tried once.</param>
    /// <param name="cancellationToken">Ends the wait for the lock (the server's stop); nothing is cut or written then.</param>
    /// <returns>The number of bytes of a torn last line that were cut off.</returns>
    /// <exception cref="ArgumentException"><paramref name="content"/> does not end with a line feed.</exception>
    /// <exception cref="FileLockedException">Another writer held the lock for longer than <paramref name="lockWait"/>: nothing was cut or written.</exception>
    /// <exception cref="IOException">The file cannot be written, or its directory cannot be synced.</exception>
    /// <exception cref="OperationCanceledException"><paramref name="cancellationToken"/> was cancelled while the lock was waited for.</exception>
    public static long Append(string path, ReadOnlySpan<byte> content, UnixFileMode mode, TimeSpan lockWait, CancellationToken cancellationToken = default)
    {
        ArgumentException.ThrowIfNullOrEmpty(path);
        if (content.IsEmpty || content[^1] != (byte)'\n')
        {
            throw new ArgumentException("an append is whole lines: it ends with a line feed", nameof(content));
        }

        var full = Path.GetFullPath(path);
        var options = new FileStreamOptions { Mode = FileMode.OpenOrCreate, Access = FileAccess.ReadWrite, Share = FileShare.Read, BufferSize = 0 };
        if (!OperatingSystem.IsWindows())
        {
            options.UnixCreateMode = mode;
        }

        long cut;
        using (var file = new FileStream(full, options))
        {
            cut = EndWithWholeLine(file, lockWait, cancellationToken);
            var before = file.CanSeek ? file.Seek(0, SeekOrigin.End) : 0;
            try
            {
                file.Write(content);
                file.Flush(flushToDisk: true);
            }
            catch (IOException) when (file.CanSeek)
            {
                // Unbuffered, so nothing is left to fail again here.
                file.SetLength(before);
                throw;
            }
        }

        // The file may be new: its name is the directory's, durable only once the directory is.
        DirectorySync.Flush(Path.GetDirectoryName(full)!);
        return cut;
    }

    /// <summary><see cref="Append(string, ReadOnlySpan{byte}, UnixFileMode)"/> (synchronous I/O: records are small).</summary>
    /// <returns>The number of bytes of a torn last line that were cut off.</returns>
    /// <exception cref="ArgumentException"><paramref name="content"/> does not end with a line feed.</exception>
    /// <exception cref="IOException">The file cannot be written, or its directory cannot be synced.</exception>
    public static Task<long> AppendAsync(string path, ReadOnlyMemory<byte> content, UnixFileMode mode, CancellationToken cancellationToken)
    {
        cancellationToken.ThrowIfCancellationRequested();
        return Task.FromResult(Append(path, content.Span, mode));
    }

    /// <summary>
    /// What <see cref="Append(string, ReadOnlySpan{byte}, UnixFileMode)"/> does first, for a reader that writes the log itself next (the SIEM
    /// stream's read-back): takes the appenders' lock on <paramref name="file"/> (held until it is
    /// closed), then cuts off a torn last line, or ends with a line feed a last line that is one
    /// whole JSON object without it. Not synced: the next append is.
    /// </summary>
    /// <param name="file">The log, open for reading and writing; a pipe or FIFO is left as it is.</param>
    /// <returns>The number of bytes cut off; 0 when the file ended with a whole line, or a line feed was all it lacked.</returns>
    /// <exception cref="IOException">More than <see cref="MaxTornLine"/> bytes follow the last line feed: not a log of records; nothing is cut. Or another writer held the lock for longer than a few seconds.</exception>
    public static long EndWithWholeLine(FileStream file) => EndWithWholeLine(file, AppendLock.Wait);

    /// <summary>
    /// <see cref="EndWithWholeLine(FileStream)"/>, waiting <paramref name="lockWait"/> for another
    /// writer's lock, or until <paramref name="cancellationToken"/> is cancelled.
    /// </summary>
    /// <param name="file">The log, open for reading and writing; a pipe or FIFO is left as it is.</param>
    /// <param name="lockWait">How long another writer's lock is waited for.</param>
    /// <param name="cancellationToken">Ends the wait for the lock.</param>
    /// <returns>The number of bytes cut off.</returns>
    /// <exception cref="FileLockedException">Another writer held the lock for longer than <paramref name="lockWait"/>: nothing was cut.</exception>
    /// <exception cref="IOException">More than <see cref="MaxTornLine"/> bytes follow the last line feed; nothing is cut.</exception>
    /// <exception cref="OperationCanceledException"><paramref name="cancellationToken"/> was cancelled while the lock was waited for.</exception>
    public static long EndWithWholeLine(FileStream file, TimeSpan lockWait, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(file);
        AppendLock.Acquire(file, file.Name, lockWait, cancellationToken);
        if (!file.CanSeek || file.Length == 0)
        {
            return 0;
        }

        var length = file.Length;
        file.Seek(-1, SeekOrigin.End);
        if (file.ReadByte() == '\n')
        {
            return 0; // every append but the first after a crash
        }

        var start = StartOfLastLine(file, length);
        var last = new byte[length - start];
        file.Seek(start, SeekOrigin.Begin);
        file.ReadExactly(last);
        if (JsonLines.IsWholeRecord(last))
        {
            // The record is all there (one write holds a record and its line feed, so only a torn
            // write ends exactly between them): keep it, end it.
            file.Seek(0, SeekOrigin.End);
            file.Write("\n"u8);
            return 0;
        }

        file.SetLength(start);
        return length - start;
    }

    /// <summary>Where the last line starts: after the last line feed, or at 0 when there is none.</summary>
    /// <exception cref="IOException">More than <see cref="MaxTornLine"/> bytes follow the last line feed.</exception>
    private static long StartOfLastLine(FileStream file, long length)
    {
        var chunk = new byte[64 * 1024];
        for (var end = length; end > 0 && length - end <= MaxTornLine;)
        {
            var start = Math.Max(0, end - chunk.Length);
            var span = chunk.AsSpan(0, (int)(end - start));
            file.Seek(start, SeekOrigin.Begin);
            file.ReadExactly(span);
            var lineFeed = span.LastIndexOf((byte)'\n');
            if (lineFeed >= 0)
            {
                var whole = start + lineFeed + 1;
                if (length - whole > MaxTornLine)
                {
                    break;
                }

                return whole;
            }

            end = start;
        }

        if (length > MaxTornLine)
        {
            // No crash tears more than one record: whatever this is, it is someone else's.
            throw new IOException($"{file.Name} ends with more than {MaxTornLine} bytes without a line feed: not a log of records (another file?); nothing was cut or appended");
        }

        return 0;
    }

    /// <summary>
    /// Creates <paramref name="directory"/> and its missing parents, syncing the parent of each
    /// one created: a new directory's name is its parent's, and a file synced into a directory
    /// that a power loss takes away is lost with it. Every directory that holds state meant to
    /// outlive a crash is created here (ArchitectureTests holds <c>src/</c> to it).
    /// </summary>
    /// <returns>The directory's full path.</returns>
    /// <exception cref="IOException">The directory cannot be created, or a parent cannot be synced.</exception>
    public static string CreateDirectory(string directory) => CreateDirectory(directory, null, DirectorySync.Flush);

    /// <summary>
    /// <see cref="CreateDirectory(string)"/>, each directory created with <paramref name="mode"/>
    /// (less the umask; given to <c>mkdir(2)</c>, so it is never more open, not even empty); an
    /// existing one keeps its own. Elsewhere than Linux and macOS the mode is ignored.
    /// </summary>
    /// <returns>The directory's full path.</returns>
    /// <exception cref="IOException">The directory cannot be created, or a parent cannot be synced.</exception>
    public static string CreateDirectory(string directory, UnixFileMode mode) => CreateDirectory(directory, mode, DirectorySync.Flush);

    /// <summary><see cref="CreateDirectory(string, UnixFileMode)"/>, syncing with <paramref name="syncDirectory"/> (a test's stand-in).</summary>
    internal static string CreateDirectory(string directory, UnixFileMode? mode, Action<string> syncDirectory)
    {
        ArgumentException.ThrowIfNullOrEmpty(directory);
        var full = Path.GetFullPath(directory);
        var created = new List<string>();
        for (var missing = full; missing is not null && !Directory.Exists(missing); missing = Path.GetDirectoryName(missing))
        {
            created.Add(missing);
        }

        if (mode is { } unixMode && !OperatingSystem.IsWindows())
        {
            Directory.CreateDirectory(full, unixMode);
        }
        else
        {
            Directory.CreateDirectory(full);
        }

        // Deepest first: each sync makes the name of the one below durable; all are done before
        // this returns, so the order matters only for a crash in between, which leaves no caller
        // believing anything.
        foreach (var made in created)
        {
            syncDirectory(Path.GetDirectoryName(made)!);
        }

        return full;
    }

    /// <summary>Deletes <paramref name="path"/> if it can: for clean-up after a failure, whose own error is the one to report.</summary>
    internal static void TryDelete(string path)
    {
        try
        {
            File.Delete(path);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            // The write failed already; that is the error to report.
        }
    }
}
