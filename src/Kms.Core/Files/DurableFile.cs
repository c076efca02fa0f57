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
    /// Appends <paramref name="content"/> to <paramref name="path"/> (a log of records, one a
    /// line), creating it with <paramref name="mode"/> if it does not exist; flushed to disk, and
    /// the directory synced, before this returns. A crash during the append can leave the last
    /// record torn, never an earlier one.
    /// </summary>
    /// <exception cref="IOException">The file cannot be written, or its directory cannot be synced.</exception>
    public static async Task AppendAsync(string path, ReadOnlyMemory<byte> content, UnixFileMode mode, CancellationToken cancellationToken)
    {
        var full = Path.GetFullPath(path);
        var options = new FileStreamOptions { Mode = FileMode.Append, Access = FileAccess.Write, BufferSize = 0, Options = FileOptions.Asynchronous };
        if (!OperatingSystem.IsWindows())
        {
            options.UnixCreateMode = mode;
        }

        var stream = new FileStream(full, options);
        await using (stream.ConfigureAwait(false))
        {
            await stream.WriteAsync(content, cancellationToken).ConfigureAwait(false);
            stream.Flush(flushToDisk: true);
        }

        // The file may be new: its name is the directory's, durable only once the directory is.
        DirectorySync.Flush(Path.GetDirectoryName(full)!);
    }

    /// <summary>
    /// Creates <paramref name="directory"/> and its missing parents, syncing the parent of each
    /// one created: a new directory's name is its parent's, and a file synced into a directory
    /// that a power loss takes away is lost with it.
    /// </summary>
    /// <returns>The directory's full path.</returns>
    /// <exception cref="IOException">The directory cannot be created, or a parent cannot be synced.</exception>
    public static string CreateDirectory(string directory)
    {
        var full = Path.GetFullPath(directory);
        var created = new List<string>();
        for (var missing = full; missing is not null && !Directory.Exists(missing); missing = Path.GetDirectoryName(missing))
        {
            created.Add(missing);
        }

        Directory.CreateDirectory(full);
        foreach (var made in created)
        {
            DirectorySync.Flush(Path.GetDirectoryName(made)!);
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
