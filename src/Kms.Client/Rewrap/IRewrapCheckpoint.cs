namespace Kms.Client.Rewrap;

/// <summary>Where a rewrap run records the id of the last blob it completed.</summary>
public interface IRewrapCheckpoint
{
    /// <summary>The last completed id, or null to start from the beginning.</summary>
    Task<string?> LoadAsync(CancellationToken cancellationToken);

    /// <summary>Records the last completed id (durably, before returning).</summary>
    Task SaveAsync(string lastCompletedId, CancellationToken cancellationToken);
}

/// <summary>
/// A checkpoint in a file, replaced whole through <see cref="Kms.Core.Files.DurableFile"/>
/// (a temporary file beside it, flushed to disk, renamed over it, the directory synced): after a
/// crash it holds the last saved id or the one before, never a torn one.
/// </summary>
public sealed class FileRewrapCheckpoint(string path) : IRewrapCheckpoint
{
    /// <inheritdoc />
    public async Task<string?> LoadAsync(CancellationToken cancellationToken) =>
        File.Exists(path) ? (await File.ReadAllTextAsync(path, cancellationToken).ConfigureAwait(false)).TrimEnd('\n') : null;

    /// <inheritdoc />
    public Task SaveAsync(string lastCompletedId, CancellationToken cancellationToken) =>
        Kms.Core.Files.DurableFile.WriteAsync(path, System.Text.Encoding.UTF8.GetBytes(lastCompletedId + "\n"), Kms.Core.Files.DurableFile.Public, overwrite: true, cancellationToken);
}
