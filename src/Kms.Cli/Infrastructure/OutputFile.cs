using Kms.Core.Files;

namespace Kms.Cli.Infrastructure;

/// <summary>
/// A command's output file, written through <see cref="DurableFile"/>: under a temporary name in
/// the same directory, flushed to disk, renamed into place and its directory synced only by
/// <see cref="CommitAsync"/>, so a failed or interrupted command leaves no partial output under
/// the name (disposing without committing deletes it) and a committed one survives a power loss.
/// <c>-</c> is standard output, which cannot be taken back. Files are created readable by the
/// owner only (they may hold plaintext or key material), and written unbuffered: no copy of what
/// they hold is left in a buffer this process cannot zero.
/// </summary>
internal sealed class OutputFile : IAsyncDisposable
{
    private readonly DurableFileWriter? _file;

    private OutputFile(Stream stream, string? path, DurableFileWriter? file)
    {
        Stream = stream;
        Path = path;
        _file = file;
    }

    /// <summary>Where to write.</summary>
    public Stream Stream { get; }

    /// <summary>The final path; null for standard output.</summary>
    public string? Path { get; }

    /// <summary>Display name: the path, or <c>-</c>.</summary>
    public string Name => Path ?? "-";

    /// <summary>The <c>--force</c> option of a command that writes an output file.</summary>
    public static System.CommandLine.Option<bool> ForceOption() => new("--force") { Description = "replace the output file if it exists" };

    /// <summary>Opens <paramref name="pathOrDash"/>, given by <paramref name="flag"/> (<c>--out</c>), for writing.</summary>
    /// <remarks>Every refusal names the flag and the path given (not the temporary file's), as <see cref="LocalPath"/>'s do.</remarks>
    /// <exception cref="CliUsageException">A directory is there (which <c>--force</c> does not replace), or a file and <paramref name="overwrite"/> is false.</exception>
    /// <exception cref="CliFailureException">Its directory does not exist, may not be written, or is on a read-only filesystem (exit <see cref="ExitCodes.LocalIo"/>).</exception>
    public static OutputFile Open(CliEnvironment environment, string pathOrDash, bool overwrite, string flag)
    {
        ArgumentNullException.ThrowIfNull(environment);
        if (pathOrDash == "-")
        {
            return new OutputFile(environment.OpenStandardOutput(), null, null);
        }

        var path = environment.FullPath(pathOrDash);

        // --force replaces a file (or a link), never a directory: the rename would fail only at the
        // commit, after the work (a Bootstrap call that used its credential up) was done. Said
        // before "exists", which would send the user to --force.
        if (new DirectoryInfo(path) is { Exists: true, LinkTarget: null })
        {
            throw new CliUsageException($"{flag} {path} is a directory: give a file's path");
        }

        if (!overwrite && (File.Exists(path) || Directory.Exists(path)))
        {
            throw new CliUsageException($"{flag} {path} exists (pass --force to replace it)");
        }

        // Without --force, a file that appeared since the check is not replaced either. The file
        // is created under a temporary name: a failure here names that, so it is said again with
        // the path the user gave.
        var directory = System.IO.Path.GetDirectoryName(path)!;
        try
        {
            var file = DurableFile.Create(path, DurableFile.OwnerOnly, overwrite);
            return new OutputFile(file.Stream, path, file);
        }
        catch (DirectoryNotFoundException exception)
        {
            throw new CliFailureException(ExitCodes.LocalIo, $"cannot write {flag} {path}: the directory {directory} does not exist", exception);
        }
        catch (UnauthorizedAccessException exception)
        {
            throw new CliFailureException(ExitCodes.LocalIo, $"cannot write {flag} {path}: permission denied in {directory}", exception);
        }
        catch (IOException exception) when (LocalPath.IsReadOnlyFileSystem(exception))
        {
            throw LocalPath.ReadOnlyFileSystem($"{flag} {path}", directory, exception);
        }
    }

    /// <summary>
    /// Opens a replacement for the existing file <paramref name="path"/> that keeps what the
    /// replaced file was: a symbolic link's target is replaced, not the link, and the new file
    /// gets the old one's permission bits (not its owner: the process's user owns it).
    /// </summary>
    public static OutputFile Replace(string path)
    {
        var target = File.ResolveLinkTarget(path, returnFinalTarget: true)?.FullName ?? path;
        var mode = OperatingSystem.IsWindows() ? DurableFile.OwnerOnly : File.GetUnixFileMode(target);
        var file = DurableFile.Create(target, mode, overwrite: true);
        if (!OperatingSystem.IsWindows() && (mode & ~DurableFile.OwnerOnly) != 0)
        {
            // The umask may have taken bits the replaced file had; nothing is written yet.
            File.SetUnixFileMode(file.Stream.SafeFileHandle, mode);
        }

        return new OutputFile(file.Stream, target, file);
    }

    /// <summary>Flushes the data to disk, renames the file into place and syncs its directory.</summary>
    public async Task CommitAsync(CancellationToken cancellationToken)
    {
        if (_file is null)
        {
            await Stream.FlushAsync(cancellationToken);
            return;
        }

        await _file.CommitAsync(cancellationToken);
    }

    /// <summary>Closes the file; without a commit, deletes what was written.</summary>
    public async ValueTask DisposeAsync()
    {
        if (_file is null)
        {
            await Stream.FlushAsync();
            return;
        }

        await _file.DisposeAsync();
    }
}
