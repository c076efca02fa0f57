using Kms.Ceremony;

namespace Kms.Cli.Infrastructure;

/// <summary>
/// A record file the ceremony reports as written (a transcript and its signature, the genesis
/// file, the published audit key, the shipped checkpoints), written as share files are: its data
/// flushed to disk, then its directory synced (<see cref="DirectorySync"/>), so that after a
/// power loss the file is there, its name included, once the command said so.
/// </summary>
internal static class DurableFile
{
    /// <summary>Creates or replaces <paramref name="path"/> with <paramref name="content"/> (mode 0644 less the umask, as <see cref="File.WriteAllBytesAsync(string, byte[], CancellationToken)"/>).</summary>
    /// <exception cref="IOException">The file cannot be written, or its directory cannot be synced.</exception>
    public static Task WriteAsync(string path, ReadOnlyMemory<byte> content, CancellationToken cancellationToken) =>
        WriteAsync(path, content, FileMode.Create, cancellationToken);

    /// <summary>Appends <paramref name="content"/> to <paramref name="path"/>, creating it if it does not exist.</summary>
    /// <exception cref="IOException">The file cannot be written, or its directory cannot be synced.</exception>
    public static Task AppendAsync(string path, ReadOnlyMemory<byte> content, CancellationToken cancellationToken) =>
        WriteAsync(path, content, FileMode.Append, cancellationToken);

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

    private static async Task WriteAsync(string path, ReadOnlyMemory<byte> content, FileMode mode, CancellationToken cancellationToken)
    {
        var full = Path.GetFullPath(path);
        var options = new FileStreamOptions { Mode = mode, Access = FileAccess.Write, Options = FileOptions.Asynchronous };
        await using (var stream = new FileStream(full, options))
        {
            await stream.WriteAsync(content, cancellationToken);
            await stream.FlushAsync(cancellationToken);
            stream.Flush(flushToDisk: true);
        }

        // The file may be new: its name is the directory's, durable only once the directory is.
        DirectorySync.Flush(Path.GetDirectoryName(full) ?? full);
    }
}
