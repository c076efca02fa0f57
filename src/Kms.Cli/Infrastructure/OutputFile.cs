namespace Kms.Cli.Infrastructure;

/// <summary>
/// A command's output file, written under a temporary name in the same directory and renamed
/// into place only by <see cref="CommitAsync"/>: a failed or interrupted command leaves no
/// partial output behind (disposing without committing deletes it). <c>-</c> is standard output,
/// which cannot be taken back. Files are created readable by the owner only (they may hold
/// plaintext or key material).
/// </summary>
internal sealed class OutputFile : IAsyncDisposable
{
    private readonly string? _temporary;
    private bool _committed;

    private OutputFile(Stream stream, string? path, string? temporary)
    {
        Stream = stream;
        Path = path;
        _temporary = temporary;
    }

    /// <summary>Where to write.</summary>
    public Stream Stream { get; }

    /// <summary>The final path; null for standard output.</summary>
    public string? Path { get; }

    /// <summary>Display name: the path, or <c>-</c>.</summary>
    public string Name => Path ?? "-";

    /// <summary>Opens <paramref name="pathOrDash"/> for writing.</summary>
    /// <exception cref="CliUsageException">The file exists and <paramref name="overwrite"/> is false.</exception>
    public static OutputFile Open(CliEnvironment environment, string pathOrDash, bool overwrite)
    {
        ArgumentNullException.ThrowIfNull(environment);
        if (pathOrDash == "-")
        {
            return new OutputFile(environment.OpenStandardOutput(), null, null);
        }

        var path = environment.FullPath(pathOrDash);
        if (!overwrite && (File.Exists(path) || Directory.Exists(path)))
        {
            throw new CliUsageException($"{path} exists (pass --force to replace it)");
        }

        var directory = System.IO.Path.GetDirectoryName(path)!;
        var temporary = System.IO.Path.Combine(directory, $".{System.IO.Path.GetFileName(path)}.{Guid.NewGuid():N}.partial");
        var options = new FileStreamOptions
        {
            Mode = FileMode.CreateNew,
            Access = FileAccess.Write,
            Share = FileShare.None,
            BufferSize = 81920,
            Options = FileOptions.Asynchronous,
        };
        if (!OperatingSystem.IsWindows())
        {
            options.UnixCreateMode = UnixFileMode.UserRead | UnixFileMode.UserWrite;
        }

        return new OutputFile(new FileStream(temporary, options), path, temporary);
    }

    /// <summary>Flushes the data to disk and renames the file into place.</summary>
    public async Task CommitAsync(CancellationToken cancellationToken)
    {
        await Stream.FlushAsync(cancellationToken);
        if (_temporary is not null)
        {
            ((FileStream)Stream).Flush(flushToDisk: true);
            await Stream.DisposeAsync();
            File.Move(_temporary, Path!, overwrite: true);
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

        await Stream.DisposeAsync();
        if (!_committed)
        {
            File.Delete(_temporary);
        }
    }
}
