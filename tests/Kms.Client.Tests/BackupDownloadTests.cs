using Google.Protobuf;
using Grpc.Core;
using Kms.Client.Tests.Failover;
using Kms.Contracts.V1;

namespace Kms.Client.Tests;

/// <summary>
/// <see cref="KmsClient.DownloadBackupAsync"/> against a scripted server: what is on disk while
/// the snapshot streams is what a crash would leave there.
/// </summary>
public sealed class BackupDownloadTests : IDisposable
{
    private const UnixFileMode OwnerOnly = UnixFileMode.UserRead | UnixFileMode.UserWrite;
    private readonly string _directory = Directory.CreateTempSubdirectory("kms-download-").FullName;
    private readonly byte[] _snapshot = [.. Enumerable.Range(0, 100_000).Select(i => (byte)i)];

    public void Dispose() => Directory.Delete(_directory, recursive: true);

    [Fact]
    public async Task DownloadBackupAsync_MidStream_NothingUnderTheFinalName_SnapshotOwnerOnlyFromTheStart()
    {
        var target = Path.Combine(_directory, "backup");
        var endpoint = new ScriptedEndpoint("a") { Stream = ([Manifest(), Chunk(0, 65_536), Chunk(65_536, _snapshot.Length)], null) };
        var seen = new List<string>();
        var modes = new List<UnixFileMode>();
        endpoint.BeforeStreamEnds = () =>
        {
            // Every byte has arrived; the download has not finished: a crash now leaves this.
            seen.AddRange(Directory.EnumerateFileSystemEntries(_directory, "*", SearchOption.AllDirectories).Select(p => Path.GetRelativePath(_directory, p)));
            modes.AddRange(Directory.EnumerateFiles(_directory, "*", SearchOption.AllDirectories).Select(File.GetUnixFileMode));
        };
        using var client = new FakeClient([endpoint]);

        Assert.Equal(_snapshot.Length, await client.Client.DownloadBackupAsync("quorumRequests/backup", target));

        Assert.DoesNotContain(seen, p => p == "backup" || p.StartsWith("backup" + Path.DirectorySeparatorChar, StringComparison.Ordinal));
        Assert.Equal(3, modes.Count); // the manifest, its signature and the snapshot being written
        Assert.All(modes, mode => Assert.Equal(OwnerOnly, mode));

        // Once it returns: the whole backup under the final name, nothing else beside it.
        Assert.Equal(["backup"], Directory.GetFileSystemEntries(_directory).Select(Path.GetFileName));
        Assert.Equal(UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute, File.GetUnixFileMode(target));
        Assert.Equal(_snapshot, await File.ReadAllBytesAsync(Path.Combine(target, "kms.db")));
        Assert.Equal("{\"manifest\":true}"u8.ToArray(), await File.ReadAllBytesAsync(Path.Combine(target, "manifest.json")));
        Assert.Equal("c2lnbmF0dXJl\n"u8.ToArray(), await File.ReadAllBytesAsync(Path.Combine(target, "manifest.json.sig")));
        Assert.All(Directory.GetFiles(target), file => Assert.Equal(OwnerOnly, File.GetUnixFileMode(file)));
    }

    [Fact]
    public async Task DownloadBackupAsync_StreamBreaksMidway_NothingLeftBehind()
    {
        var target = Path.Combine(_directory, "backup");
        var endpoint = new ScriptedEndpoint("a") { Stream = ([Manifest(), Chunk(0, 65_536)], new RpcException(new Status(StatusCode.Internal, "stream reset"))) };
        var seen = new List<string>();
        endpoint.BeforeStreamEnds = () => seen.AddRange(Directory.EnumerateFileSystemEntries(_directory).Select(Path.GetFileName)!);
        using var client = new FakeClient([endpoint]);

        var e = await Assert.ThrowsAsync<RpcException>(() => client.Client.DownloadBackupAsync("quorumRequests/backup", target));

        Assert.Equal(StatusCode.Internal, e.StatusCode);
        Assert.DoesNotContain("backup", seen);
        Assert.NotEmpty(seen);
        Assert.Empty(Directory.GetFileSystemEntries(_directory));
    }

    private DownloadBackupResponse Manifest() => new()
    {
        Manifest = new BackupManifestFiles
        {
            ManifestJson = ByteString.CopyFromUtf8("{\"manifest\":true}"),
            ManifestSignature = ByteString.CopyFromUtf8("c2lnbmF0dXJl\n"),
            SnapshotSize = _snapshot.Length,
        },
    };

    private DownloadBackupResponse Chunk(int from, int to) => new() { SnapshotChunk = ByteString.CopyFrom(_snapshot, from, to - from) };
}
