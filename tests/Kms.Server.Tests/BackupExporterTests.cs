using Kms.Core.Audit;
using Kms.Core.Backup;
using Kms.Core.Errors;
using Kms.Core.Quorum;
using Kms.Core.Services;
using Kms.Server.Backup;
using Kms.Storage.Sqlite;
using Kms.Testing;
using Kms.Testing.Fakes;
using Microsoft.Extensions.Logging.Abstractions;

namespace Kms.Server.Tests;

/// <summary>
/// What the disk holds under a backup's final name when the export is cut short: a crash (looked
/// at the moment before the manifest is signed, after the snapshot is written) or a failure there.
/// The whole export through gRPC is <see cref="BackupExportTests"/>.
/// </summary>
public sealed class BackupExporterTests : IAsyncLifetime, IDisposable
{
    private readonly string _dataDir = Scratch.NewPath("kms-exporter-");
    private readonly FakeHsm _hsm = new();
    private readonly CancellationTokenSource _stop = new();
    private SqliteStore _store = null!;
    private AuditLog _audit = null!;
    private Task _auditLoop = Task.CompletedTask;

    private string Backups => Path.Combine(_dataDir, "backups");

    public async Task InitializeAsync()
    {
        _store = await SqliteStore.OpenAsync(new SqliteOptions { DatabasePath = Path.Combine(_dataDir, "kms.db") }, default);
        // No checkpoint of its own during the test: the only signature asked for is the manifest's.
        _audit = new AuditLog(_store, _store, _hsm, TimeProvider.System, new AuditOptions { CheckpointInterval = TimeSpan.FromDays(1) });
        await _audit.InitializeAsync(default);
        _auditLoop = _audit.RunAsync(_stop.Token);
    }

    public async Task DisposeAsync()
    {
        await _stop.CancelAsync();
        await _auditLoop;
        await _store.DisposeAsync();
    }

    public void Dispose()
    {
        _stop.Dispose();
        _hsm.Dispose();
    }

    [Fact]
    public async Task ExportAsync_CutShortAfterTheSnapshot_NothingUnderTheFinalName_NothingLeftBeside()
    {
        var exporter = new BackupExporter(_store, _audit, _hsm, TimeProvider.System, Backups, NullLogger.Instance);
        var request = ExecutedExportRequest();
        var final = exporter.DirectoryOf(request.Id);
        string[]? atTheCut = null;
        _hsm.BeforeSignEcdsa = () =>
        {
            // A crash here (the snapshot written, the manifest not yet signed) leaves what is on
            // disk now: under the final name there must be no backup missing its manifest.
            atTheCut = Directory.Exists(final) ? Directory.GetFileSystemEntries(final) : null;
            throw KmsErrors.Unavailable("the HSM is unavailable");
        };

        var e = await Assert.ThrowsAsync<KmsException>(() => exporter.ExportAsync(request, default));

        Assert.Equal(KmsErrorCode.Unavailable, e.Code);
        Assert.Null(atTheCut);
        Assert.False(Directory.Exists(final));
        Assert.Empty(Directory.GetFileSystemEntries(Backups));
    }

    [Fact]
    public async Task ExportAsync_Committed_TheThreeFilesUnderTheFinalName_OwnerOnly_NothingLeftBeside()
    {
        var exporter = new BackupExporter(_store, _audit, _hsm, TimeProvider.System, Backups, NullLogger.Instance);
        var request = ExecutedExportRequest();

        var manifest = await exporter.ExportAsync(request, default);

        var final = exporter.DirectoryOf(request.Id);
        Assert.Equal([final], Directory.GetFileSystemEntries(Backups));
        Assert.Equal(
            [BackupManifest.SnapshotFile, BackupManifest.ManifestFile, BackupManifest.SignatureFile],
            Directory.GetFiles(final).Select(f => Path.GetFileName(f)).Order(StringComparer.Ordinal).ToArray());
        Assert.Equal(request.Name, BackupManifest.Verify(final, _audit.PublicKey).Request);
        Assert.Equal(manifest.SnapshotSha256, BackupManifest.Verify(final, _audit.PublicKey).SnapshotSha256);
        Assert.Equal(UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute, File.GetUnixFileMode(final));
        Assert.All(Directory.GetFiles(final), f => Assert.Equal(UnixFileMode.UserRead | UnixFileMode.UserWrite, File.GetUnixFileMode(f)));
    }

    private QuorumRequest ExecutedExportRequest()
    {
        var now = DateTimeOffset.UtcNow;
        return new QuorumRequest
        {
            Id = QuorumRequestId.NewId(),
            Operation = QuorumOperation.ExportBackup,
            Parameters = [],
            DomainKcv = _hsm.DomainKeyCheckValue,
            OfficerSetSequence = 1,
            OfficerSetHash = new string('0', 64),
            RequestedBy = "token:officer",
            CreateTime = now,
            ExpireTime = now.AddHours(1),
            State = QuorumRequestState.Executed,
            ExecuteTime = now,
        };
    }
}
