using Kms.Client.Rewrap;

namespace Kms.Client.Tests;

public sealed class FileRewrapCheckpointTests : IDisposable
{
    private readonly string _directory = Directory.CreateTempSubdirectory("kms-checkpoint-").FullName;

    public void Dispose() => Directory.Delete(_directory, recursive: true);

    [Fact]
    public async Task SaveAsync_Twice_LoadGivesTheLastId_TheFirstFileReplacedWholeNotRewritten()
    {
        var path = Path.Combine(_directory, "rewrap.checkpoint");
        var checkpoint = new FileRewrapCheckpoint(path);
        await checkpoint.SaveAsync("blob-0001", default);
        await using var held = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.ReadWrite | FileShare.Delete);

        await checkpoint.SaveAsync("blob-0002", default);

        Assert.Equal("blob-0002", await checkpoint.LoadAsync(default));
        Assert.Equal("blob-0001\n", await new StreamReader(held).ReadToEndAsync());
        Assert.Equal([path], Directory.GetFileSystemEntries(_directory));
    }

    [Fact]
    public async Task SaveAsync_RenameFails_NothingLeftBeside()
    {
        // The name is taken by a directory, so the rename into place fails (a read-only
        // directory would not do: the tests may run as root).
        var path = Path.Combine(_directory, "rewrap.checkpoint");
        Directory.CreateDirectory(path);
        var checkpoint = new FileRewrapCheckpoint(path);

        await Assert.ThrowsAnyAsync<IOException>(() => checkpoint.SaveAsync("blob-0001", default));

        Assert.Equal([path], Directory.GetFileSystemEntries(_directory));
        Assert.Empty(Directory.GetFileSystemEntries(path));
    }
}
