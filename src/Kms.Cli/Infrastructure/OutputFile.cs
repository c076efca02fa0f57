namespace Kms.Cli.Infrastructure;

/// <summary>
/// A command's output file, written under a temporary name in the same directory and renamed
/// into place only by <see cref="CommitAsync"/>: a failed or interrupted command leaves no
/// partial output behind (disposing without committing deletes it). <c>-</c> is standard output,
/// which cannot be taken back. Files are created readable by the owner only (they may hold
/// plaintext or key material), and written unbuffered: no copy of what they hold is left in a
/// buffer this process cannot zero.
/// </summary>
internal sealed class OutputFile : IAsyncDisposable
{
    private const UnixFileMode OwnerOnly = UnixFileMode.UserRead | UnixFileMode.UserWrite;

    private readonly string? _temporary;
    private readonly bool _overwrite;
    private bool _committed;

    private OutputFile(Stream stream, string? path, string? temporary, bool overwrite)
    {
        Stream = stream;
        Path = path;
        _temporary = temporary;
        _overwrite = overwrite;
    }

    /// <summary>Where to write.</summary>
    public Stream Stream { get; }

    /// <summary>The final path; null for standard output.</summary>
    public string? Path { get; }

    /// <summary>Display name: the path, or <c>-</c>.</summary>
    public string Name => Path ?? "-";

    /// <summary>The <c>--force</c> option of a command that writes an output file.</summary>
    public static System.CommandLine.Option<bool> ForceOption() => new("--force") { Description = "replace the output file if it exists" };

    /// <summary>Opens <paramref name="pathOrDash"/> for writing.</summary>
    /// <exception cref="CliUsageException">The file exists and <paramref name="overwrite"/> is false.</exception>
    public static OutputFile Open(CliEnvironment environment, string pathOrDash, bool overwrite)
    {
        ArgumentNullException.ThrowIfNull(environment);
        if (pathOrDash == "-")
        {
            return new OutputFile(environment.OpenStandardOutput(), null, null, overwrite: true);
        }

        var path = environment.FullPath(pathOrDash);
        if (!overwrite && (File.Exists(path) || Directory.Exists(path)))
        {
            throw new CliUsageException($"{path} exists (pass --force to replace it)");
        }

        return Create(path, OwnerOnly, overwrite);
    }

    /// <summary>
    /// Opens a replacement for the existing file <paramref name="path"/> that keeps what the
    /// replaced file was: a symbolic link's target is replaced, not the link, and the new file
    /// gets the old one's permission bits (not its owner: the process's user owns it).
    /// </summary>
    public static OutputFile Replace(string path)
    {
        var target = File.ResolveLinkTarget(path, returnFinalTarget: true)?.FullName ?? path;
        return Create(target, OperatingSystem.IsWindows() ? OwnerOnly : File.GetUnixFileMode(target), overwrite: true);
    }

    private static OutputFile Create(string path, UnixFileMode mode, bool overwrite)
    {
        var directory = System.IO.Path.GetDirectoryName(path)!;
        var temporary = System.IO.Path.Combine(directory, $".{System.IO.Path.GetFileName(path)}.{Guid.NewGuid():N}.partial");
        var options = new FileStreamOptions
        {
            Mode = FileMode.CreateNew,
            Access = FileAccess.Write,
            Share = FileShare.None,
            BufferSize = 0,
            Options = FileOptions.Asynchronous,
        };
        if (!OperatingSystem.IsWindows())
        {
            options.UnixCreateMode = mode;
        }

        var stream = new FileStream(temporary, options);
        if (!OperatingSystem.IsWindows() && (mode & ~OwnerOnly) != 0)
        {
            // The umask may have taken bits the replaced file had.
            File.SetUnixFileMode(stream.SafeFileHandle, mode);
        }

        return new OutputFile(stream, path, temporary, overwrite);
    }

    /// <summary>Flushes the data to disk and renames the file into place.</summary>
    public async Task CommitAsync(CancellationToken cancellationToken)
    {
        await Stream.FlushAsync(cancellationToken);
        if (_temporary is not null)
        {
            ((FileStream)Stream).Flush(flushToDisk: true);
            await Stream.DisposeAsync();
            // Without --force, a file that appeared since the check is not replaced either.
            File.Move(_temporary, Path!, _overwrite);
        }

        _committed = true;
    }

    /// <summary>Closes the file; without a commit, deletes what was written.</summary>
    public async ValueTask DisposeAsync()
    {
        if (_temporary is null)
        {
            await Stream.FlushAsync();
            return;
        }

        try
        {
            // Throws when what is still unwritten cannot be (a full disk): the partial file
            // must go all the same.
            await Stream.DisposeAsync();
        }
        finally
        {
            if (!_committed)
            {
                File.Delete(_temporary);
            }
        }
    }
}
