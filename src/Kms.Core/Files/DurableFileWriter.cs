namespace Kms.Core.Files;

/// <summary>
/// A file being written under a temporary name beside its final one (<see cref="DurableFile.Create(string, UnixFileMode, bool)"/>):
/// <see cref="Commit"/> flushes it to disk, renames it into place and syncs the directory;
/// disposing without a commit deletes it, so a failed or interrupted write leaves nothing under
/// the final name and the previous file as it was.
/// </summary>
public sealed class DurableFileWriter : IDisposable, IAsyncDisposable
{
    private readonly string _temporary;
    private readonly bool _overwrite;
    private readonly Action<string> _syncDirectory;
    private bool _committed;

    internal DurableFileWriter(string path, string temporary, FileStream stream, bool overwrite, Action<string> syncDirectory)
    {
        Path = path;
        _temporary = temporary;
        Stream = stream;
        _overwrite = overwrite;
        _syncDirectory = syncDirectory;
    }

    /// <summary>The final path (full).</summary>
    public string Path { get; }

    /// <summary>Where to write: the temporary file, unbuffered.</summary>
    public FileStream Stream { get; }

    /// <summary>Flushes the file to disk, renames it to <see cref="Path"/> and syncs the directory.</summary>
    /// <remarks>
    /// A new file (no overwrite) whose directory cannot be synced is removed again, so that a
    /// caller told of a failure is not left with a file it cannot trust to stay. A replacing one
    /// stays: the previous file is gone once the rename is done.
    /// </remarks>
    /// <exception cref="IOException">The file cannot be flushed or renamed (without overwrite: <see cref="Path"/> appeared meanwhile, <c>"{Path} exists already"</c>: of two writers of one new name, exactly one commits, see <see cref="NoReplaceRename"/>), or the directory cannot be synced.</exception>
    public void Commit()
    {
        ObjectDisposedException.ThrowIf(_committed, this);
        Stream.Flush(flushToDisk: true);
        Stream.Dispose();
        if (_overwrite)
        {
            File.Move(_temporary, Path, overwrite: true);
        }
        else
        {
            // Not File.Move: its check for the name and its rename are two steps, and a writer
            // between them had its file replaced by this one although both were told "written".
            NoReplaceRename.MoveFile(_temporary, Path);
        }

        _committed = true;
        try
        {
            // The rename is durable only once the directory is: until then a power loss can
            // bring back the previous file (or none) after the write said done.
            _syncDirectory(System.IO.Path.GetDirectoryName(Path)!);
        }
        catch (Exception e) when (!_overwrite && e is IOException or UnauthorizedAccessException)
        {
            var left = "it was removed";
            try
            {
                File.Delete(Path);
            }
            catch (Exception cleanup) when (cleanup is IOException or UnauthorizedAccessException)
            {
                left = $"remove it by hand ({cleanup.Message})";
            }

            throw new IOException($"{e.Message}; {Path} is not on disk for certain: {left}", e);
        }
    }

    /// <summary>Flushes what is buffered, then <see cref="Commit"/>.</summary>
    /// <exception cref="IOException">As <see cref="Commit"/>.</exception>
    public async Task CommitAsync(CancellationToken cancellationToken)
    {
        await Stream.FlushAsync(cancellationToken).ConfigureAwait(false);
        Commit();
    }

    /// <summary>Closes the file; without a commit, deletes it.</summary>
    public void Dispose()
    {
        if (_committed)
        {
            return;
        }

        try
        {
            // Throws when what is still unwritten cannot be (a full disk): the file must go all the same.
            Stream.Dispose();
        }
        finally
        {
            DurableFile.TryDelete(_temporary);
        }
    }

    /// <summary>Closes the file; without a commit, deletes it.</summary>
    public async ValueTask DisposeAsync()
    {
        if (_committed)
        {
            return;
        }

        try
        {
            await Stream.DisposeAsync().ConfigureAwait(false);
        }
        finally
        {
            DurableFile.TryDelete(_temporary);
        }
    }
}
