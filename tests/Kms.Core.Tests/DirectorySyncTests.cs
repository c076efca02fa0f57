using Kms.Core.Files;

namespace Kms.Core.Tests;

/// <summary>
/// The directory fsync behind durable files (DurableFile). A test cannot see a power loss: these show that the
/// call reaches the kernel and succeeds on a real directory, and that a failure is reported.
/// </summary>
public sealed class DirectorySyncTests : IDisposable
{
    private readonly string _directory = Directory.CreateTempSubdirectory("kms-core-").FullName;

    public void Dispose() => Directory.Delete(_directory, recursive: true);

    [Fact]
    public void Flush_ExistingDirectory_Succeeds()
    {
        File.WriteAllText(Path.Combine(_directory, "share.json"), "{}");

        DirectorySync.Flush(_directory);
    }

    [Fact]
    public void Flush_MissingDirectory_IOExceptionNamingItAndTheReason()
    {
        Assert.True(OperatingSystem.IsLinux() || OperatingSystem.IsMacOS(), "the directory sync runs on Linux and macOS only");
        var missing = Path.Combine(_directory, "gone");

        var e = Assert.Throws<IOException>(() => DirectorySync.Flush(missing));

        Assert.Equal($"cannot open directory {missing} to sync it to disk: No such file or directory (errno 2)", e.Message);
    }
}
