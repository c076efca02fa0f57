namespace Kms.Client.Rewrap;

/// <summary>Where a rewrap run records the id of the last blob it completed.</summary>
public interface IRewrapCheckpoint
{
    /// <summary>The last completed id, or null to start from the beginning.</summary>
    Task<string?> LoadAsync(CancellationToken cancellationToken);

    /// <summary>Records the last completed id (durably, before returning).</summary>
    Task SaveAsync(string lastCompletedId, CancellationToken cancellationToken);
}

/// <summary>A checkpoint in a file, replaced atomically (write to a temporary file, then rename).</summary>
public sealed class FileRewrapCheckpoint(string path) : IRewrapCheckpoint
{
    /// <inheritdoc />
    public async Task<string?> LoadAsync(CancellationToken cancellationToken) =>
        File.Exists(path) ? (await File.ReadAllTextAsync(path, cancellationToken).ConfigureAwait(false)).TrimEnd('\n') : null;

    /// <inheritdoc />
    public async Task SaveAsync(string lastCompletedId, CancellationToken cancellationToken)
    {
        var temporary = path + ".tmp";
        await using (var stream = new FileStream(temporary, FileMode.Create, FileAccess.Write, FileShare.None, 4096, FileOptions.WriteThrough))
        await using (var writer = new StreamWriter(stream))
        {
            await writer.WriteAsync(lastCompletedId + "\n").ConfigureAwait(false);
            await writer.FlushAsync(cancellationToken).ConfigureAwait(false);
        }

        File.Move(temporary, path, overwrite: true);
    }
}
