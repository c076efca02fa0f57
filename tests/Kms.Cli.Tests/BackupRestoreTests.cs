using System.Security.Cryptography;
using Grpc.Core;
using Kms.Cli.Backup;
using Kms.Cli.Infrastructure;
using Kms.Client.Quorum;
using Kms.Contracts.V1;
using Kms.Core.Backup;
using Kms.Core.Errors;
using Kms.Core.Names;
using Kms.Core.Quorum;
using Kms.Core.Services;
using Kms.Storage.Sqlite;
using Kms.Testing;
using Microsoft.Extensions.DependencyInjection;
using KeyState = Kms.Core.Keys.KeyState;

namespace Kms.Cli.Tests;

/// <summary>
/// <c>kms backup restore</c> over an existing data directory (SoftHSM, in-process server): the
/// database being replaced is the record of later destructions; without <c>--replace</c>
/// nothing changes.
/// </summary>
public sealed class BackupRestoreTests : IAsyncLifetime, IDisposable
{
    private readonly TestOfficers _officers = new("alice", "bob", "carol");
    private readonly string _genesisPath = TempPath("kms-genesis-", ".json");
    private KmsTestServer _server = null!;

    public async Task InitializeAsync()
    {
        GenesisFile.Write(_genesisPath, OfficerSet.CreateGenesis(_officers.Select("alice", "bob", "carol"), 2));
        // The lifecycle worker passes once, at the start: a test runs its destruction job itself
        // (KeyService.DestroyDueAsync) and counts what it destroyed. A pass of the worker's own
        // (every 30 s by default) landing between the destructions falling due and that run would
        // leave it fewer to count.
        _server = await KmsTestServer.StartAsync(null, null, "dev", $"--Kms:Quorum:GenesisFile={_genesisPath}", "--Lifecycle:MinWaitingPeriod=00:00:01", "--Lifecycle:JobInterval=01:00:00");
    }

    public async Task DisposeAsync()
    {
        await _server.DisposeAsync();
        File.Delete(_genesisPath);
    }

    public void Dispose() => _officers.Dispose();

    [Fact]
    public async Task Restore_OverTheDatabaseThatDestroyedAVersionAfterTheBackup_ReappliesIt_WithoutReplace_ChangesNothing()
    {
        string backup;
        byte[] doomed;
        byte[] kept;
        KeyName ledger;
        using (var developer = _server.CreateClient())
        using (var officer = _server.CreateClient(await _server.CreatePrincipalWithTokenAsync("officer", null, "security-officer")))
        {
            var key = await developer.CreateKeyAsync("tenants/dev", "ledger");
            doomed = (await developer.EncryptAsync(key.Name, "v1 secret"u8.ToArray())).Ciphertext;
            await developer.RotateKeyAsync(key.Name);
            kept = (await developer.EncryptAsync(key.Name, "v2 secret"u8.ToArray())).Ciphertext;

            backup = Path.Combine(_server.DataDir, "backups", await ExportBackupAsync(officer));
            await DestroyFirstVersionNowAsync(developer, officer, key.Name);
            ledger = KeyName.Parse(key.Name, "key");
        }

        // The backup still holds the material the later destruction erased.
        var doomedMaterial = await SnapshotMaterialAsync(backup, ledger, 1);
        var keptMaterial = await SnapshotMaterialAsync(backup, ledger, 2);

        // Not while a server serves the database: it could destroy a version after the restore
        // read the destructions, and its files would move under it.
        var serving = await Assert.ThrowsAsync<KmsException>(() => BackupRestore.RunAsync(backup, PublishedAuditKey(), _server.DataDir, [], replace: true, CancellationToken.None));
        Assert.Contains("a server is serving", serving.Message, StringComparison.Ordinal);

        await _server.DisposeAsync();
        var database = Path.Combine(_server.DataDir, "kms.db");

        // The time the replaced database has seen pass, later than the backup's: carried over,
        // or the lifecycle would take the backup's age for a clock jump and hold destructions.
        var seen = DateTimeOffset.UtcNow.AddHours(1).ToUnixTimeMilliseconds().ToString(System.Globalization.CultureInfo.InvariantCulture);
        await using (var connection = new Microsoft.Data.Sqlite.SqliteConnection($"Data Source={database};Pooling=False"))
        {
            await connection.OpenAsync();
            await using var command = connection.CreateCommand();
            command.CommandText = "INSERT INTO settings (name, value) VALUES (@name, @value) ON CONFLICT (name) DO UPDATE SET value = excluded.value";
            command.Parameters.AddWithValue("@name", Kms.Core.Services.LifecycleClock.Setting);
            command.Parameters.AddWithValue("@value", seen);
            await command.ExecuteNonQueryAsync();
        }

        var before = await File.ReadAllBytesAsync(database);
        var auditKey = PublishedAuditKey();

        var refused = await Assert.ThrowsAsync<KmsException>(() => BackupRestore.RunAsync(backup, auditKey, _server.DataDir, [], replace: false, CancellationToken.None));
        Assert.Equal(KmsErrorCode.FailedPrecondition, refused.Code);
        Assert.Contains("--replace", refused.Message, StringComparison.Ordinal);
        Assert.Equal(before, await File.ReadAllBytesAsync(database));

        var report = await BackupRestore.RunAsync(backup, auditKey, _server.DataDir, [], replace: true, CancellationToken.None);
        var (version, source) = Assert.Single(report.Reapplied);
        Assert.Equal(("tenants/dev/keys/ledger/versions/1", "the replaced database"), (version, source));
        Assert.True(File.Exists(report.ReplacedDatabase));
        Assert.Contains(await SqliteStore.ReadDestroyedVersionsAsync(database, CancellationToken.None), d => d.Version.ToString() == version);
        Assert.Empty(Directory.GetFiles(_server.DataDir, "kms.db.restoring-*"));
        Assert.Equal(seen, await SqliteStore.ReadSettingAsync(database, Kms.Core.Services.LifecycleClock.Setting, CancellationToken.None));
        Assert.True(DatabaseFiles.Contain(database, keptMaterial), "the scan does not see stored material");
        Assert.False(DatabaseFiles.Contain(database, doomedMaterial), "the re-applied destruction's material is in the installed kms.db or kms.db-wal");

        // The node's record of the checkpoints it signed over the replaced chain went aside with
        // it: the restored server signs the restored chain (else it would refuse, as for a rewrite).
        Assert.NotNull(report.ReplacedCheckpoints);
        Assert.True(File.Exists(report.ReplacedCheckpoints));
        Assert.False(File.Exists(Path.Combine(_server.DataDir, "audit", "checkpoints.jsonl")));

        _server = await _server.RestartAsync();
        using var after = _server.CreateClient();
        using (var opened = await after.DecryptAsync(kept))
        {
            Assert.Equal("v2 secret"u8.ToArray(), opened.Plaintext.ToArray());
        }

        using (var auditor = _server.CreateClient(await _server.CreatePrincipalWithTokenAsync("officer-after-restore", null, "security-officer")))
        {
            Assert.NotNull((await auditor.Audit.GetAuditCheckpointAsync(new GetAuditCheckpointRequest())).Checkpoint);
        }

        var destroyed = await Assert.ThrowsAsync<RpcException>(() => after.DecryptAsync(doomed));
        Assert.Contains("DESTROYED", destroyed.Status.Detail, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Restore_AMoveFailsWhileInstalling_TheOldDatabaseIsBackInPlace_AWideBackupIsInstalledOwnerOnly()
    {
        var (backup, database, before) = await ExportBackupAndStopAsync();
        File.SetUnixFileMode(Path.Combine(backup, "kms.db"), (UnixFileMode)0b110_100_100);

        // The install fails after the old database was copied aside (a full disk, a rename refused).
        BackupRestore.Installing.Value = () => throw new IOException("the rename is refused");
        try
        {
            await Assert.ThrowsAsync<IOException>(() => BackupRestore.RunAsync(backup, PublishedAuditKey(), _server.DataDir, [], replace: true, CancellationToken.None));
        }
        finally
        {
            BackupRestore.Installing.Value = null;
        }

        Assert.Equal(before, await AuditHeadAsync(database));
        Assert.Empty(Directory.GetFiles(_server.DataDir, "kms.db.replaced-*"));
        Assert.Empty(Directory.GetFiles(_server.DataDir, "kms.db.restoring-*"));

        var report = await BackupRestore.RunAsync(backup, PublishedAuditKey(), _server.DataDir, [], replace: true, CancellationToken.None);

        Assert.Equal(UnixFileMode.UserRead | UnixFileMode.UserWrite, File.GetUnixFileMode(database));
        Assert.Equal(UnixFileMode.UserRead | UnixFileMode.UserWrite, File.GetUnixFileMode(report.ReplacedDatabase!));
        Assert.Equal(before, await AuditHeadAsync(report.ReplacedDatabase!));
        Assert.False(File.Exists(database + "-wal") && new FileInfo(database + "-wal").Length > 0);
        _server = await _server.RestartAsync();
    }

    [Fact]
    public async Task Restore_KilledWhileInstalling_TheDataDirectoryHoldsTheOldDatabaseWhole_ASecondRestoreStillReappliesItsDestruction()
    {
        // A kill (or a power loss) is no exception: nothing puts back what had moved. The data
        // directory as it is at that moment must hold a whole database — the old one — so that a
        // server started on it serves the deployment, and a second restore re-applies the
        // destructions the old database records.
        var (backup, key, exportPath) = await BackupThenDestroyFirstVersionAsync("killed");
        await _server.DisposeAsync();
        var database = Path.Combine(_server.DataDir, "kms.db");
        var before = await AuditHeadAsync(database);
        var image = TempPath("kms-killed-");
        BackupRestore.Installing.Value = () =>
        {
            // The directory as a kill here leaves it (no connection is open: files are whole).
            Directory.CreateDirectory(image);
            foreach (var file in Directory.GetFiles(_server.DataDir, "kms.db*").Where(f => !f.EndsWith(".serving", StringComparison.Ordinal)))
            {
                File.Copy(file, Path.Combine(image, Path.GetFileName(file)));
            }

            throw new OperationCanceledException("killed");
        };
        try
        {
            await Assert.ThrowsAsync<OperationCanceledException>(() => BackupRestore.RunAsync(backup, PublishedAuditKey(), _server.DataDir, [], replace: true, CancellationToken.None));
            BackupRestore.Installing.Value = null;

            Assert.True(File.Exists(Path.Combine(image, "kms.db")), "a kill while installing left no kms.db: " + string.Join(", ", Directory.GetFiles(image).Select(Path.GetFileName)));
            Assert.Equal(before, await AuditHeadAsync(Path.Combine(image, "kms.db")));

            foreach (var stale in Directory.GetFiles(image, "kms.db.restoring-*"))
            {
                File.Delete(stale); // what a killed restore leaves beside: not a database to start on
            }

            var again = await BackupRestore.RunAsync(backup, PublishedAuditKey(), image, [], replace: true, CancellationToken.None);
            var (version, source) = Assert.Single(again.Reapplied);
            Assert.Equal(($"{key}/versions/1", "the replaced database"), (version, source));
            Assert.Contains(await SqliteStore.ReadDestroyedVersionsAsync(Path.Combine(image, "kms.db"), CancellationToken.None), d => d.Version.ToString() == version);
        }
        finally
        {
            BackupRestore.Installing.Value = null;
            RemoveAfterRestore(image, exportPath);
            _server = await _server.RestartAsync();
        }
    }

    [Fact]
    public async Task Restore_OverTheReplacedDatabase_EncryptionsItCountedAfterTheBackup_CarriedOver_NotCountedAgainFromTheBackupsFigure()
    {
        // The hard bound (claim 23) holds only while the durable count covers every encryption:
        // the backup's figure is older than the replaced database's by the encryptions made since.
        string backup;
        string name;
        string idle;
        using (var developer = _server.CreateClient())
        using (var officer = _server.CreateClient(await _server.CreatePrincipalWithTokenAsync("officer", null, "security-officer")))
        {
            name = (await developer.CreateKeyAsync("tenants/dev", "busy")).Name;
            idle = (await developer.CreateKeyAsync("tenants/dev", "idle")).Name;
            backup = Path.Combine(_server.DataDir, "backups", await ExportBackupAsync(officer));
            for (var i = 0; i < 3; i++)
            {
                await developer.EncryptAsync(name, "sealed after the backup"u8.ToArray());
            }
        }

        await _server.DisposeAsync();
        var database = Path.Combine(_server.DataDir, "kms.db");
        var counted = await EncryptCountAsync(database, name);
        Assert.True(counted >= 3, $"the replaced database counted {counted}");
        Assert.Equal(0, await EncryptCountAsync(Path.Combine(backup, "kms.db"), name));

        var report = await BackupRestore.RunAsync(backup, PublishedAuditKey(), _server.DataDir, [], replace: true, CancellationToken.None);

        Assert.Equal(counted, await EncryptCountAsync(database, name));
        Assert.Equal(($"{name}/versions/1", 0L, counted), Assert.Single(report.EncryptCountsCarried));
        Assert.Equal(0, await EncryptCountAsync(database, idle));
        _server = await _server.RestartAsync();
    }

    private static async Task<long> EncryptCountAsync(string database, string key)
    {
        await using var connection = new Microsoft.Data.Sqlite.SqliteConnection($"Data Source={database};Mode=ReadOnly;Pooling=False");
        await connection.OpenAsync();
        await using var command = connection.CreateCommand();
        command.CommandText = "SELECT encrypt_count FROM key_versions WHERE tenant = 'dev' AND key_id = @key_id AND version = 1";
        command.Parameters.AddWithValue("@key_id", KeyName.Parse(key, "key").KeyId);
        return (long)(await command.ExecuteScalarAsync())!;
    }

    [Fact]
    public async Task Restore_TheSnapshotChangesAfterItVerified_TheCopyIsHashedAgain_Refused_NothingInstalled()
    {
        var (backup, database, before) = await ExportBackupAndStopAsync();

        // The snapshot is changed on its disk (a shared mount, a removable drive) after the manifest
        // and the snapshot's hash verified, before the restore copies it.
        var snapshot = Path.Combine(backup, "kms.db");
        BackupRestore.Copying.Value = async () =>
        {
            var bytes = await File.ReadAllBytesAsync(snapshot);
            bytes[^100] ^= 1;
            await File.WriteAllBytesAsync(snapshot, bytes);
        };
        try
        {
            var refused = await Assert.ThrowsAsync<KmsException>(() => BackupRestore.RunAsync(backup, PublishedAuditKey(), _server.DataDir, [], replace: true, CancellationToken.None));
            Assert.Equal(KmsErrorCode.PermissionDenied, refused.Code);
            Assert.Contains("changed while it was copied", refused.Message, StringComparison.Ordinal);
        }
        finally
        {
            BackupRestore.Copying.Value = null;
        }

        Assert.Equal(before, await AuditHeadAsync(database));
        Assert.Empty(Directory.GetFiles(_server.DataDir, "kms.db.replaced-*"));
        Assert.Empty(Directory.GetFiles(_server.DataDir, "kms.db.restoring-*"));
        _server = await _server.RestartAsync();
    }

    // A version's wrapped material as the backup's snapshot holds it, read from a copy so the
    // backup itself is not touched.
    private static async Task<byte[]> SnapshotMaterialAsync(string backupDir, KeyName key, int version)
    {
        var copy = TempPath("kms-snapshot-", ".db");
        File.Copy(Path.Combine(backupDir, "kms.db"), copy);
        try
        {
            await using var connection = new Microsoft.Data.Sqlite.SqliteConnection($"Data Source={copy};Pooling=False");
            await connection.OpenAsync();
            await using var command = connection.CreateCommand();
            command.CommandText = "SELECT material FROM key_versions WHERE tenant = @tenant AND key_id = @key_id AND version = @version";
            command.Parameters.AddWithValue("@tenant", key.Tenant.Value);
            command.Parameters.AddWithValue("@key_id", key.KeyId);
            command.Parameters.AddWithValue("@version", version);
            var material = Assert.IsType<byte[]>(await command.ExecuteScalarAsync());
            Assert.True(material.Length >= 32, $"{key}/versions/{version}: {material.Length} bytes of material");
            return material;
        }
        finally
        {
            foreach (var suffix in new[] { "", "-wal", "-shm" })
            {
                File.Delete(copy + suffix);
            }
        }
    }

    // The database's last audit sequence number: which database a file is, whatever its WAL holds.
    // A backup exported by an officer, then the server stopped: the backup, the live database and its audit head.
    private async Task<(string Backup, string Database, long AuditHead)> ExportBackupAndStopAsync()
    {
        string backup;
        using (var officer = _server.CreateClient(await _server.CreatePrincipalWithTokenAsync("officer", null, "security-officer")))
        {
            backup = Path.Combine(_server.DataDir, "backups", await ExportBackupAsync(officer));
        }

        await _server.DisposeAsync();
        var database = Path.Combine(_server.DataDir, "kms.db");
        return (backup, database, await AuditHeadAsync(database));
    }

    private static async Task<long> AuditHeadAsync(string path)
    {
        await using var connection = new Microsoft.Data.Sqlite.SqliteConnection($"Data Source={path};Mode=ReadOnly;Pooling=False");
        await connection.OpenAsync();
        await using var command = connection.CreateCommand();
        command.CommandText = "SELECT max(seq) FROM audit_events";
        return (long)(await command.ExecuteScalarAsync())!;
    }

    [Fact]
    public async Task Restore_FromAVerifiedAuditExport_ReappliesItsDestruction_AnAlteredExportIsRefused_NothingWritten()
    {
        var (backup, _, exportPath) = await BackupThenDestroyFirstVersionAsync("payroll");

        var auditKey = PublishedAuditKey();
        var lines = await File.ReadAllLinesAsync(exportPath);
        var tamperedPath = exportPath + ".tampered";
        var restartedPath = exportPath + ".restarted";
        var victim = Array.FindIndex(lines, l => l.StartsWith("{\"event\"", StringComparison.Ordinal) && l.Contains("\"OK\"", StringComparison.Ordinal));
        lines[victim] = lines[victim].Replace("\"OK\"", "\"PERMISSION_DENIED\"", StringComparison.Ordinal);
        await File.WriteAllLinesAsync(tamperedPath, lines);
        var target = TempPath("kms-restored-");
        try
        {
            var refused = await Assert.ThrowsAsync<KmsException>(() => BackupRestore.RunAsync(backup, auditKey, target, [exportPath, tamperedPath], replace: false, CancellationToken.None));
            Assert.Equal(KmsErrorCode.PermissionDenied, refused.Code);
            Assert.Contains(Path.GetFileName(tamperedPath), refused.Message, StringComparison.Ordinal);
            Assert.Contains("does not verify against the audit key", refused.Message, StringComparison.Ordinal);
            Assert.False(File.Exists(Path.Combine(target, "kms.db")));

            // A SIEM stream's restart line in it (here, its last event again after it): the copy
            // verifies, but its events are taken as signed by number, and a replaced chain's share
            // numbers with the signed one's. Refused too.
            var original = await File.ReadAllLinesAsync(exportPath);
            var events = original.Where(l => l.StartsWith("{\"event\"", StringComparison.Ordinal)).ToList();
            Kms.Core.Audit.AuditHead PointOf(string line)
            {
                using var document = System.Text.Json.JsonDocument.Parse(line);
                return new(document.RootElement.GetProperty("event").GetProperty("seq").GetInt64(), document.RootElement.GetProperty("hash").GetString()!);
            }

            await File.WriteAllLinesAsync(restartedPath, [.. original, Kms.Core.Audit.AuditExport.Restart(new(PointOf(events[^2]), PointOf(events[^1]))), events[^1]]);
            var restartRefused = await Assert.ThrowsAsync<KmsException>(() => BackupRestore.RunAsync(backup, auditKey, target, [restartedPath], replace: false, CancellationToken.None));
            Assert.Equal(KmsErrorCode.PermissionDenied, restartRefused.Code);
            Assert.Contains($"{restartedPath} holds 1 SIEM stream restart line(s)", restartRefused.Message, StringComparison.Ordinal);
            Assert.False(File.Exists(Path.Combine(target, "kms.db")));

            var report = await BackupRestore.RunAsync(backup, auditKey, target, [exportPath], replace: false, CancellationToken.None);
            var (version, source) = Assert.Single(report.Reapplied);
            Assert.Equal("tenants/dev/keys/payroll/versions/1", version);
            Assert.StartsWith(Path.GetFileName(exportPath) + " event ", source, StringComparison.Ordinal);

            // reapply-destructions (a database restored by other means) given the key: the same check.
            await using var restored = await SqliteStore.OpenAsync(new SqliteOptions { DatabasePath = Path.Combine(target, "kms.db") }, default);
            var reapplyRefused = await Assert.ThrowsAsync<KmsException>(() => BackupRestore.ReapplyFromLogsAsync(restored, [tamperedPath], 0, auditKey, CancellationToken.None));
            Assert.Equal(KmsErrorCode.PermissionDenied, reapplyRefused.Code);
            var (reapplied, _, _) = await BackupRestore.ReapplyFromLogsAsync(restored, [exportPath], 0, auditKey, CancellationToken.None);
            Assert.Empty(reapplied); // destroyed by the restore already
        }
        finally
        {
            File.Delete(exportPath);
            File.Delete(tamperedPath);
            File.Delete(restartedPath);
            if (Directory.Exists(target))
            {
                Directory.Delete(target, recursive: true);
            }
        }
    }

    /// <summary>
    /// A data directory on a read-only filesystem (a read-only bind mount: the tests run as root,
    /// which may mount; unmounted in the finally): exit 9, one line naming --data-dir and why,
    /// nothing written. Before, .NET's own message, naming a file of the restore's.
    /// </summary>
    [Fact]
    public async Task Restore_IntoADataDirectoryOnAReadOnlyFilesystem_Exit9_OneLineNamingIt_NothingWritten()
    {
        var (backup, _, _) = await ExportBackupAndStopAsync();
        var target = Directory.CreateDirectory(TempPath("kms-readonly-")).FullName;
        var pem = TempPath("kms-audit-key-", ".pem");
        await File.WriteAllTextAsync(pem, File.ReadAllText(Path.Combine(_server.DataDir, "audit", "signing-key.pem")));
        Tmpfs.Run("mount", "--bind", "-o", "ro", target, target);
        try
        {
            var cli = await CliRun.InProcessAsync(new Dictionary<string, string>(), Path.GetTempPath(), null,
                "backup", "restore", backup, "--public-key", pem, "--data-dir", target, "--without-audit-logs");

            Assert.True(cli.ExitCode == ExitCodes.LocalIo, cli.ToString());
            Assert.Equal($"kms: cannot write --data-dir {target}: {target} is on a read-only filesystem\n", cli.Error);
            Assert.Equal("", cli.Out);
            Assert.Empty(Directory.GetFileSystemEntries(target));
        }
        finally
        {
            Tmpfs.Run("umount", target);
            Directory.Delete(target);
            File.Delete(pem);
            _server = await _server.RestartAsync();
        }
    }

    [Fact]
    public async Task Restore_IntoAnEmptyDataDirectory_NoAuditLogReachingPastTheBackup_RefusedUnlessWithoutAuditLogs_NothingInstalled()
    {
        // A new machine, the old one lost: the audit logs are the only record of the destruction
        // made after the backup. An operator who forgets them (or gives an export older than the
        // backup) must not get the destroyed version back silently.
        var (backup, key, exportPath) = await BackupThenDestroyFirstVersionAsync("forgotten");
        var auditKey = PublishedAuditKey();
        var head = BackupManifest.Verify(backup, auditKey).AuditHead.Sequence;
        var olderExport = exportPath + ".older";
        await File.WriteAllLinesAsync(olderExport, (await File.ReadAllLinesAsync(exportPath))
            .Where(l => l.Length == 0 || !System.Text.Json.JsonDocument.Parse(l).RootElement.TryGetProperty(l.StartsWith("{\"event\"", StringComparison.Ordinal) ? "event" : "checkpoint", out var body)
                || body.GetProperty("seq").GetInt64() <= head));
        var target = TempPath("kms-restored-");
        var pem = TempPath("kms-audit-key-", ".pem");
        await File.WriteAllTextAsync(pem, File.ReadAllText(Path.Combine(_server.DataDir, "audit", "signing-key.pem")));
        try
        {
            foreach (var logs in new[] { Array.Empty<string>(), [olderExport] })
            {
                var refused = await Assert.ThrowsAsync<KmsException>(() => BackupRestore.RunAsync(backup, auditKey, target, logs, replace: false, CancellationToken.None));
                Assert.Equal(KmsErrorCode.FailedPrecondition, refused.Code);
                Assert.Contains("--without-audit-logs", refused.Message, StringComparison.Ordinal);
                Assert.Contains($"audit head (sequence {head})", refused.Message, StringComparison.Ordinal);
                Assert.False(File.Exists(Path.Combine(target, "kms.db")));
            }

            var cli = await CliRun.InProcessAsync(new Dictionary<string, string>(), Path.GetTempPath(), null,
                "backup", "restore", backup, "--public-key", pem, "--data-dir", target);
            Assert.True(cli.ExitCode == 5, cli.ToString());
            Assert.Contains("--without-audit-logs", cli.Error, StringComparison.Ordinal);

            // The export from after the backup: re-applied. Said explicitly instead: installed, and the report says what it lacks.
            var report = await BackupRestore.RunAsync(backup, auditKey, target, [exportPath], replace: false, CancellationToken.None);
            Assert.Equal($"{key}/versions/1", Assert.Single(report.Reapplied).Version);
            SqliteStore.ReleasePooledConnections();
            Directory.Delete(target, recursive: true);
            var blind = await BackupRestore.RunAsync(backup, auditKey, target, [], replace: false, CancellationToken.None, withoutAuditLogs: true);
            Assert.Empty(blind.Reapplied);
            Assert.Contains(blind.Skipped, s => s.StartsWith("--without-audit-logs: nothing records what happened after the backup", StringComparison.Ordinal));
        }
        finally
        {
            RemoveAfterRestore(target, exportPath, olderExport, pem);
        }
    }

    [Fact]
    public async Task ReapplyDestructions_StoppedPartWay_EveryChangeItCommittedHasItsEvent_RunAgainItFinishes()
    {
        // A run that dies between two keys (here the second key's write fails, as a full disk
        // would) must leave no change without its audit event: the events were written after every
        // change, so the first key's destruction stayed unrecorded for good.
        var exportPath = TempPath("kms-export-", ".jsonl");
        var target = TempPath("kms-restored-");
        using var developer = _server.CreateClient();
        using var officer = _server.CreateClient(await _server.CreatePrincipalWithTokenAsync("officer", null, "security-officer"));
        var first = (await developer.CreateKeyAsync("tenants/dev", "stop-a")).Name;
        var second = (await developer.CreateKeyAsync("tenants/dev", "stop-b")).Name;
        await developer.RotateKeyAsync(first);
        await developer.RotateKeyAsync(second);
        var backup = Path.Combine(_server.DataDir, "backups", await ExportBackupAsync(officer));
        await DestroyFirstVersionNowAsync(developer, officer, first);
        await DestroyFirstVersionNowAsync(developer, officer, second);
        await using (var file = File.CreateText(exportPath))
        {
            await officer.ExportAuditAsync(file);
        }

        try
        {
            await BackupRestore.RunAsync(backup, PublishedAuditKey(), target, [], replace: false, CancellationToken.None, withoutAuditLogs: true); // no logs: nothing re-applied
            var database = Path.Combine(target, "kms.db");
            await SqlAsync(database, "CREATE TRIGGER stop_part_way BEFORE UPDATE ON key_versions WHEN NEW.key_id = 'stop-b' BEGIN SELECT RAISE(ABORT, 'stopped part way'); END");
            await using var restored = await SqliteStore.OpenAsync(new SqliteOptions { DatabasePath = database }, default);
            async Task<string[]> RecordedAsync() =>
                [.. (await restored.ListAuditEventsAsync(new Kms.Core.Audit.AuditQuery { AfterSequence = 0, Limit = 10_000 }, default))
                    .Where(e => e.Entry.Operation == BackupRestore.ReapplyOperation).Select(e => e.Entry.Resource!)];
            Task<KeyState> StateAsync(string key) =>
                restored.ListVersionsAsync(KeyName.Parse(key, "key"), 0, 1, default).ContinueWith(t => t.Result[0].State, TaskScheduler.Default);

            await Assert.ThrowsAsync<KmsException>(() => BackupRestore.ReapplyFromLogsAsync(restored, [exportPath], null, PublishedAuditKey(), CancellationToken.None));
            Assert.Equal(KeyState.Destroyed, await StateAsync(first));
            Assert.Equal(KeyState.Enabled, await StateAsync(second));
            Assert.Equal([$"{first}/versions/1"], await RecordedAsync());

            await SqlAsync(database, "DROP TRIGGER stop_part_way");
            var report = await BackupRestore.ReapplyFromLogsAsync(restored, [exportPath], null, PublishedAuditKey(), CancellationToken.None);
            Assert.Equal([$"{second}/versions/1"], report.Reapplied.Select(r => r.Version));
            Assert.Equal(KeyState.Destroyed, await StateAsync(second));
            Assert.Equal([$"{first}/versions/1", $"{second}/versions/1"], await RecordedAsync());
        }
        finally
        {
            RemoveAfterRestore(target, exportPath);
        }
    }

    // A kms.db copied back by hand into a data directory whose checkpoints.jsonl holds a
    // checkpoint signed past it (the server's file here): reapply-destructions moves the file
    // aside as restore does, or the node would refuse to sign the restored chain (event 1309).
    [Fact]
    public async Task ReapplyDestructions_DataDirectoryWhoseCheckpointsFilePinsALaterHead_FileMovedAside_AgainNothingMoved()
    {
        var exportPath = TempPath("kms-export-", ".jsonl");
        var target = TempPath("kms-restored-");
        using var developer = _server.CreateClient();
        using var officer = _server.CreateClient(await _server.CreatePrincipalWithTokenAsync("officer", null, "security-officer"));
        var key = (await developer.CreateKeyAsync("tenants/dev", "pinned")).Name;
        await developer.RotateKeyAsync(key);
        var backup = Path.Combine(_server.DataDir, "backups", await ExportBackupAsync(officer));
        await DestroyFirstVersionNowAsync(developer, officer, key);
        Assert.NotNull(await officer.GetAuditCheckpointAsync()); // signed past the backup, and in the server's checkpoints.jsonl
        await using (var file = File.CreateText(exportPath))
        {
            await officer.ExportAuditAsync(file);
        }

        try
        {
            await BackupRestore.RunAsync(backup, PublishedAuditKey(), target, [], replace: false, CancellationToken.None, withoutAuditLogs: true);
            var checkpoints = Path.Combine(target, "audit", "checkpoints.jsonl");
            Directory.CreateDirectory(Path.GetDirectoryName(checkpoints)!);
            File.Copy(Path.Combine(_server.DataDir, "audit", "checkpoints.jsonl"), checkpoints);
            await using var restored = await SqliteStore.OpenAsync(new SqliteOptions { DatabasePath = Path.Combine(target, "kms.db") }, default);

            var report = await BackupRestore.ReapplyFromLogsAsync(restored, [exportPath], null, PublishedAuditKey(), CancellationToken.None, dataDir: target);
            Assert.Equal([$"{key}/versions/1"], report.Reapplied.Select(r => r.Version));
            Assert.NotNull(report.ReplacedCheckpoints);
            Assert.StartsWith(checkpoints + ".replaced-", report.ReplacedCheckpoints, StringComparison.Ordinal);
            Assert.True(File.Exists(report.ReplacedCheckpoints));
            Assert.False(File.Exists(checkpoints));

            var again = await BackupRestore.ReapplyFromLogsAsync(restored, [exportPath], null, PublishedAuditKey(), CancellationToken.None, dataDir: target);
            Assert.Null(again.ReplacedCheckpoints);
        }
        finally
        {
            RemoveAfterRestore(target, exportPath);
        }
    }

    // A kms.db copied back by hand models a pg_restore of a dump (the same rollback, without the
    // PostgreSQL cluster): the node's checkpoints.jsonl holds a checkpoint signed after the copy.
    // Before, the node started on it and served the version destroyed after the copy again (its
    // ciphertexts decrypted); only signing was refused. Now the start is refused (event 1318)
    // until a reapply-destructions whose logs reach that checkpoint is recorded in the database,
    // or the operator accepts the rollback.
    [Fact]
    public async Task Start_OnADatabaseRolledBackBehindItsCheckpoint_RefusedUntilReapplyDestructionsReachesIt_OrTheRollbackIsAccepted()
    {
        var stream = TempPath("kms-stream-", ".jsonl");
        var exportPath = TempPath("kms-export-", ".jsonl");
        var copy = TempPath("kms-copy-", ".db");
        string[] args = [$"--Kms:Quorum:GenesisFile={_genesisPath}", "--Lifecycle:MinWaitingPeriod=00:00:01", "--Lifecycle:JobInterval=01:00:00", $"--Kms:Audit:StreamPath={stream}"];
        var (token, dataDir) = (_server.Token, _server.DataDir);
        var database = Path.Combine(dataDir, "kms.db");
        var checkpoints = Path.Combine(dataDir, "audit", "checkpoints.jsonl");
        void PutTheCopyBack()
        {
            SqliteStore.ReleasePooledConnections();
            foreach (var suffix in new[] { "-wal", "-shm" })
            {
                File.Delete(database + suffix);
            }

            File.Copy(copy, database, overwrite: true);
        }

        try
        {
            await _server.DisposeAsync();
            _server = await KmsTestServer.StartAsync(token, dataDir, "dev", args);
            string key;
            byte[] doomed;
            using (var developer = _server.CreateClient())
            {
                key = (await developer.CreateKeyAsync("tenants/dev", "rolled-back")).Name;
                doomed = (await developer.EncryptAsync(key, "v1 secret"u8.ToArray())).Ciphertext;
                await developer.RotateKeyAsync(key);
            }

            // The "dump": the database as it stood, whole.
            await _server.DisposeAsync();
            SqliteStore.ReleasePooledConnections();
            await SqliteStore.FoldWriteAheadLogAsync(database, CancellationToken.None);
            File.Copy(database, copy);
            var dumpHead = await AuditHeadAsync(copy);

            // After it: version 1 destroyed, the audit exported, a checkpoint signed at the stop.
            _server = await KmsTestServer.StartAsync(token, dataDir, "dev", args);
            using (var developer = _server.CreateClient())
            using (var officer = _server.CreateClient(await _server.CreatePrincipalWithTokenAsync("officer", null, "security-officer")))
            {
                await DestroyFirstVersionNowAsync(developer, officer, key);
                await using var file = File.CreateText(exportPath);
                await officer.ExportAuditAsync(file);
            }

            await _server.DisposeAsync();
            var signed = Kms.Core.Audit.AuditExport.ParseCheckpoint((await File.ReadAllLinesAsync(checkpoints))[^1])!.Sequence;
            Assert.True(signed > dumpHead, $"checkpoint {signed} after the dump's head {dumpHead}");

            // The dump put back, nothing re-applied: refused, naming both sequence numbers and the ways out.
            PutTheCopyBack();
            var (refusal, logs) = await KmsTestServer.StartRefusedAsync(token, dataDir, args);
            var refused = Assert.IsType<KmsException>(refusal);
            Assert.Equal(KmsErrorCode.FailedPrecondition, refused.Code);
            Assert.Contains($"the audit chain in the database (head {dumpHead}) does not pass through checkpoint {signed} that this node signed ({checkpoints})", refused.Message, StringComparison.Ordinal);
            Assert.Contains("kms backup reapply-destructions", refused.Message, StringComparison.Ordinal);
            Assert.Contains("--Kms:Audit:AcceptRollback=true", refused.Message, StringComparison.Ordinal);
            Assert.Contains("checkpoints.jsonl.replaced-TIME and head.json.replaced-TIME", refused.Message, StringComparison.Ordinal);
            Assert.Contains("Id: 1318", logs.AllText, StringComparison.Ordinal);

            // Re-applied from the export alone: it ends before the checkpoint signed at the stop,
            // so what came between is in no log given. Still refused, saying how far the logs went.
            SqliteStore.ReleasePooledConnections();
            await using (var restored = await SqliteStore.OpenAsync(new SqliteOptions { DatabasePath = database }, default))
            {
                var fromExport = await BackupRestore.ReapplyFromLogsAsync(restored, [exportPath], null, PublishedAuditKey(), CancellationToken.None);
                Assert.Equal([$"{key}/versions/1"], fromExport.Reapplied.Select(r => r.Version));
            }

            SqliteStore.ReleasePooledConnections();
            refused = Assert.IsType<KmsException>((await KmsTestServer.StartRefusedAsync(token, dataDir, args)).Refusal);
            Assert.Contains($"the last one recorded since read the audit logs after sequence {dumpHead} through ", refused.Message, StringComparison.Ordinal);

            // With the SIEM stream, which reaches it (nothing more to re-apply; the summary is
            // recorded all the same): the node starts, and the version stays destroyed.
            SqliteStore.ReleasePooledConnections();
            await using (var restored = await SqliteStore.OpenAsync(new SqliteOptions { DatabasePath = database }, default))
            {
                var fromStream = await BackupRestore.ReapplyFromLogsAsync(restored, [stream], null, null, CancellationToken.None);
                Assert.Empty(fromStream.Reapplied);
            }

            SqliteStore.ReleasePooledConnections();
            _server = await KmsTestServer.StartAsync(token, dataDir, "dev", args);
            using (var developer = _server.CreateClient())
            {
                var destroyed = await Assert.ThrowsAsync<RpcException>(() => developer.DecryptAsync(doomed));
                Assert.Contains("DESTROYED", destroyed.Status.Detail, StringComparison.Ordinal);
            }

            Assert.Contains("does not pass through checkpoint", _server.Logs.AllText, StringComparison.Ordinal); // 1309: signing still waits for the file to go aside

            // The dump put back again (its chain holds no re-application): refused again, until
            // the operator accepts the rollback as it is — then the destroyed version is back.
            await _server.DisposeAsync();
            PutTheCopyBack();
            Assert.IsType<KmsException>((await KmsTestServer.StartRefusedAsync(token, dataDir, args)).Refusal);
            _server = await KmsTestServer.StartAsync(token, dataDir, "dev", [.. args, "--Kms:Audit:AcceptRollback=true"]);
            using (var developer = _server.CreateClient())
            using (var opened = await developer.DecryptAsync(doomed))
            {
                Assert.Equal("v1 secret"u8.ToArray(), opened.Plaintext.ToArray());
            }

            // Moving the files aside accepts it too (as for signing, docs/audit-format.md): both,
            // as the run on AcceptRollback kept head.json (past the dump) as well as checkpoints.jsonl.
            await _server.DisposeAsync();
            File.Move(checkpoints, checkpoints + ".replaced-test");
            var seenHead = Path.Combine(dataDir, "audit", "head.json");
            Assert.Contains("does not pass through the head this node last saw", Assert.IsType<KmsException>((await KmsTestServer.StartRefusedAsync(token, dataDir, args)).Refusal).Message, StringComparison.Ordinal);
            File.Move(seenHead, seenHead + ".replaced-test");
            _server = await KmsTestServer.StartAsync(token, dataDir, "dev", args);
        }
        finally
        {
            File.Delete(stream);
            File.Delete(exportPath);
            File.Delete(copy);
        }
    }

    // A real rollback under a node streaming to a SIEM file: a dump copied back, the node started
    // on it (AcceptRollback) and going on, its stream restarted at the dump's head. The chain it
    // went on with destroys a version at a sequence number that a backup taken before the rollback
    // holds for the chain it left. Restored from that backup with the stream, the destruction must
    // be re-applied: before, the logs' events were compared by number only (the backup's head),
    // the new chain's events up to it taken for the backup's, and the destroyed version came back.
    // reapply-destructions alike (one event kept per number, the first file line's).
    [Fact]
    public async Task Restore_ABackupFromBeforeARollback_TheStreamsLaterChainAtTheBackupsNumbers_ItsDestructionIsReapplied()
    {
        var stream = TempPath("kms-stream-", ".jsonl");
        var dump = TempPath("kms-copy-", ".db");
        var target = TempPath("kms-restored-");
        var bare = TempPath("kms-restored-");
        string[] args = [$"--Kms:Quorum:GenesisFile={_genesisPath}", "--Lifecycle:MinWaitingPeriod=00:00:01", "--Lifecycle:JobInterval=01:00:00", $"--Kms:Audit:StreamPath={stream}", "--Kms:Audit:AcceptRollback=true"];
        var (token, dataDir) = (_server.Token, _server.DataDir);
        var database = Path.Combine(dataDir, "kms.db");
        async Task StopAsync()
        {
            await _server.DisposeAsync();
            SqliteStore.ReleasePooledConnections();
            await SqliteStore.FoldWriteAheadLogAsync(database, CancellationToken.None);
        }

        try
        {
            await _server.DisposeAsync();
            _server = await KmsTestServer.StartAsync(token, dataDir, "dev", args);
            string key;
            string officerToken;
            using (var developer = _server.CreateClient())
            {
                officerToken = await _server.CreatePrincipalWithTokenAsync("officer", null, "security-officer");
                key = (await developer.CreateKeyAsync("tenants/dev", "forked")).Name;
                await developer.RotateKeyAsync(key);
            }

            // The dump.
            await StopAsync();
            File.Copy(database, dump);
            var dumpHead = await AuditHeadAsync(dump);

            // The chain goes on past the dump (requests, each audited), then the backup.
            _server = await KmsTestServer.StartAsync(token, dataDir, "dev", args);
            string backup;
            using (var developer = _server.CreateClient())
            using (var officer = _server.CreateClient(officerToken))
            {
                for (var i = 0; i < 30; i++)
                {
                    await developer.EncryptAsync(key, "filler"u8.ToArray());
                }

                backup = Path.Combine(dataDir, "backups", await ExportBackupAsync(officer));
            }

            await StopAsync();

            // The rollback: the dump put back, the node started on it as it is; version 1 destroyed on the chain it goes on with.
            foreach (var suffix in new[] { "-wal", "-shm" })
            {
                File.Delete(database + suffix);
            }

            File.Copy(dump, database, overwrite: true);
            _server = await KmsTestServer.StartAsync(token, dataDir, "dev", args);
            using (var developer = _server.CreateClient())
            using (var officer = _server.CreateClient(officerToken))
            {
                await DestroyFirstVersionNowAsync(developer, officer, key);
            }

            await StopAsync();

            // The stream: the first chain past the dump, a restart line, the second chain from the dump's head on.
            var lines = await File.ReadAllLinesAsync(stream);
            var restart = Array.FindIndex(lines, l => l.StartsWith("{\"stream_restart\"", StringComparison.Ordinal));
            Assert.True(restart > 0, "the stream restarted");
            var destruction = lines.Skip(restart).Select(l => Kms.Core.Backup.DestructionReplay.EventsOf([l], "line")).Single(e => e.Count == 1 && e[0].Destruction is not null)[0];
            var backupHead = BackupManifest.Verify(backup, PublishedAuditKey()).AuditHead.Sequence;
            Assert.InRange(destruction.Sequence, dumpHead + 1, backupHead); // a number the backup holds for the first chain

            // The backup restored by other means (its snapshot alone), then reapply-destructions with
            // the stream: it leaves the restored chain at the dump's head (where the chain the site
            // went on with forked), not at the backup's, and re-applies the destruction.
            await BackupRestore.RunAsync(backup, PublishedAuditKey(), bare, [], replace: false, CancellationToken.None, withoutAuditLogs: true);
            await using (var restored = await SqliteStore.OpenAsync(new SqliteOptions { DatabasePath = Path.Combine(bare, "kms.db") }, default))
            {
                var reapplied = await BackupRestore.ReapplyFromLogsAsync(restored, [stream], null, null, CancellationToken.None);
                Assert.Equal([$"{key}/versions/1"], reapplied.Reapplied.Select(r => r.Version));
                Assert.Equal(dumpHead, reapplied.AfterSequence);
            }

            // Restored from the backup with the stream: the same.
            var report = await BackupRestore.RunAsync(backup, PublishedAuditKey(), target, [stream], replace: false, CancellationToken.None);

            Assert.Equal([$"{key}/versions/1"], report.Reapplied.Select(r => r.Version));
            await using (var restored = await SqliteStore.OpenAsync(new SqliteOptions { DatabasePath = Path.Combine(target, "kms.db") }, default))
            {
                Assert.Equal(KeyState.Destroyed, (await restored.ListVersionsAsync(KeyName.Parse(key, "key"), 0, 10, default))[0].State);
            }
        }
        finally
        {
            File.Delete(stream);
            File.Delete(dump);
            RemoveAfterRestore(target);
            RemoveAfterRestore(bare);
        }
    }

    // A node started on a re-application alone signs nothing (1309), so its checkpoints.jsonl keeps
    // the checkpoint from before the first rollback, and every later dump of the restored database
    // holds that re-application's event, which still covers the checkpoint and is later than it.
    // Before, such a dump copied back with nothing re-applied let the node start and serve a
    // version destroyed after that dump. Its record of the head it last saw (head.json, written as
    // the head moves and at the stop) is past the dump: refused until a re-application recorded
    // since reaches it.
    [Fact]
    public async Task Start_HeldOnAReapplication_ALaterDumpOfTheRestoredDatabaseCopiedBack_NothingReapplied_Refused_UntilReapplied()
    {
        var stream = TempPath("kms-stream-", ".jsonl");
        var first = TempPath("kms-copy-", ".db");
        var second = TempPath("kms-copy-", ".db");
        string[] args = [$"--Kms:Quorum:GenesisFile={_genesisPath}", "--Lifecycle:MinWaitingPeriod=00:00:01", "--Lifecycle:JobInterval=01:00:00", $"--Kms:Audit:StreamPath={stream}"];
        var (token, dataDir) = (_server.Token, _server.DataDir);
        var database = Path.Combine(dataDir, "kms.db");
        var checkpoints = Path.Combine(dataDir, "audit", "checkpoints.jsonl");
        var seenHead = Path.Combine(dataDir, "audit", "head.json");
        async Task<long> DumpAsync(string copy)
        {
            await _server.DisposeAsync();
            SqliteStore.ReleasePooledConnections();
            await SqliteStore.FoldWriteAheadLogAsync(database, CancellationToken.None);
            File.Copy(database, copy);
            return await AuditHeadAsync(copy);
        }

        void PutBack(string copy)
        {
            SqliteStore.ReleasePooledConnections();
            foreach (var suffix in new[] { "-wal", "-shm" })
            {
                File.Delete(database + suffix);
            }

            File.Copy(copy, database, overwrite: true);
        }

        async Task ReapplyFromTheStreamAsync()
        {
            SqliteStore.ReleasePooledConnections();
            await using (var restored = await SqliteStore.OpenAsync(new SqliteOptions { DatabasePath = database }, default))
            {
                await BackupRestore.ReapplyFromLogsAsync(restored, [stream], null, null, CancellationToken.None);
            }

            SqliteStore.ReleasePooledConnections();
        }

        async Task<(string Key, byte[] Doomed)> KeyWithTwoVersionsAsync(string name)
        {
            using var developer = _server.CreateClient();
            var key = (await developer.CreateKeyAsync("tenants/dev", name)).Name;
            var doomed = (await developer.EncryptAsync(key, "v1 secret"u8.ToArray())).Ciphertext;
            await developer.RotateKeyAsync(key);
            return (key, doomed);
        }

        async Task DestroyAsync(string key)
        {
            using var developer = _server.CreateClient();
            using var officer = _server.CreateClient(await _server.CreatePrincipalWithTokenAsync("officer-" + Guid.NewGuid().ToString("N")[..8], null, "security-officer"));
            await DestroyFirstVersionNowAsync(developer, officer, key);
        }

        try
        {
            // The first rollback: a dump, a destruction and a checkpoint after it, the dump put
            // back and re-applied from the stream: the node starts, held at its checkpoint.
            await _server.DisposeAsync();
            _server = await KmsTestServer.StartAsync(token, dataDir, "dev", args);
            var (key, _) = await KeyWithTwoVersionsAsync("first");
            await DumpAsync(first);
            _server = await KmsTestServer.StartAsync(token, dataDir, "dev", args);
            await DestroyAsync(key);
            await _server.DisposeAsync();
            var signed = Kms.Core.Audit.AuditExport.ParseCheckpoint((await File.ReadAllLinesAsync(checkpoints))[^1])!.Sequence;
            PutBack(first);
            await ReapplyFromTheStreamAsync();
            _server = await KmsTestServer.StartAsync(token, dataDir, "dev", args);
            Assert.Contains($"does not pass through checkpoint {signed}", _server.Logs.AllText, StringComparison.Ordinal); // 1309: held

            // Served on so: a second dump (it holds the re-application's event), a version
            // destroyed after it, the node stopped (it signs nothing: its checkpoint stays).
            var (later, doomed) = await KeyWithTwoVersionsAsync("second");
            var dumpHead = await DumpAsync(second);
            _server = await KmsTestServer.StartAsync(token, dataDir, "dev", args);
            await DestroyAsync(later);
            await _server.DisposeAsync();
            Assert.Equal(signed, Kms.Core.Audit.AuditExport.ParseCheckpoint((await File.ReadAllLinesAsync(checkpoints))[^1])!.Sequence);
            var seen = Kms.Core.Services.SeenHead.Parse(await File.ReadAllBytesAsync(seenHead))!.Head.Sequence;
            Assert.True(seen > dumpHead, $"head {seen} recorded past the second dump's head {dumpHead}");

            // The second dump put back, nothing re-applied: refused, naming the head it saw.
            PutBack(second);
            var (refusal, logs) = await KmsTestServer.StartRefusedAsync(token, dataDir, args);
            var refused = Assert.IsType<KmsException>(refusal);
            Assert.Equal(KmsErrorCode.FailedPrecondition, refused.Code);
            Assert.Contains($"the audit chain in the database (head {dumpHead}) does not pass through the head this node last saw, event {seen} ({seenHead})", refused.Message, StringComparison.Ordinal);
            Assert.Contains("--Kms:Audit:AcceptRollback=true", refused.Message, StringComparison.Ordinal);
            Assert.Contains("checkpoints.jsonl.replaced-TIME and head.json.replaced-TIME", refused.Message, StringComparison.Ordinal);
            Assert.Contains("Id: 1318", logs.AllText, StringComparison.Ordinal);

            // Re-applied from the stream, which reaches it: the node starts, the version stays destroyed.
            await ReapplyFromTheStreamAsync();
            _server = await KmsTestServer.StartAsync(token, dataDir, "dev", args);
            using var client = _server.CreateClient();
            var destroyed = await Assert.ThrowsAsync<RpcException>(() => client.DecryptAsync(doomed));
            Assert.Contains("DESTROYED", destroyed.Status.Detail, StringComparison.Ordinal);
        }
        finally
        {
            File.Delete(stream);
            File.Delete(first);
            File.Delete(second);
        }
    }

    // Restore moves the node's record aside only when the restored chain does not pass through
    // its newest checkpoint, as reapply-destructions does (before: always, so a data directory
    // whose newest checkpoint the backup holds lost its pin and the report said it was replaced).
    [Fact]
    public async Task Restore_IntoADataDirectoryWhoseNewestCheckpointTheBackupHolds_FileKept_OneSignedPastIt_MovedAside()
    {
        var target = TempPath("kms-restored-");
        using var officer = _server.CreateClient(await _server.CreatePrincipalWithTokenAsync("officer", null, "security-officer"));
        Assert.NotNull(await officer.GetAuditCheckpointAsync()); // in the server's checkpoints.jsonl, before the backup
        var early = await File.ReadAllTextAsync(Path.Combine(_server.DataDir, "audit", "checkpoints.jsonl"));
        var backup = Path.Combine(_server.DataDir, "backups", await ExportBackupAsync(officer));
        Assert.NotNull(await officer.GetAuditCheckpointAsync()); // past the backup's head
        var late = await File.ReadAllTextAsync(Path.Combine(_server.DataDir, "audit", "checkpoints.jsonl"));
        var checkpoints = Path.Combine(target, "audit", "checkpoints.jsonl");
        try
        {
            Directory.CreateDirectory(Path.GetDirectoryName(checkpoints)!);
            await File.WriteAllTextAsync(checkpoints, early);
            var report = await BackupRestore.RunAsync(backup, PublishedAuditKey(), target, [], replace: false, CancellationToken.None, withoutAuditLogs: true);
            Assert.Null(report.ReplacedCheckpoints);
            Assert.Equal(early, await File.ReadAllTextAsync(checkpoints));

            Microsoft.Data.Sqlite.SqliteConnection.ClearAllPools();
            await File.WriteAllTextAsync(checkpoints, late);
            report = await BackupRestore.RunAsync(backup, PublishedAuditKey(), target, [], replace: true, CancellationToken.None);
            Assert.StartsWith(checkpoints + ".replaced-", report.ReplacedCheckpoints, StringComparison.Ordinal);
            Assert.Equal(late, await File.ReadAllTextAsync(report.ReplacedCheckpoints!));
            Assert.False(File.Exists(checkpoints));
        }
        finally
        {
            RemoveAfterRestore(target);
        }
    }

    private static async Task SqlAsync(string database, string sql)
    {
        await using var connection = new Microsoft.Data.Sqlite.SqliteConnection($"Data Source={database};Pooling=False");
        await connection.OpenAsync();
        await using var command = connection.CreateCommand();
        command.CommandText = sql;
        await command.ExecuteNonQueryAsync();
    }

    [Fact]
    public async Task ReapplyDestructions_OnADatabaseAServerServes_RefusedBeforeItReadsTheLogs_NothingWritten()
    {
        // Offline only, as restore and rotate-domain: under a serving node it writes under its
        // feet, and while a domain-key rotation runs an erased blob the rotation had moved leaves
        // it short of the count it must reach to pin the new key (the database then serves nowhere).
        var exportPath = TempPath("kms-export-", ".jsonl");
        using (var officer = _server.CreateClient(await _server.CreatePrincipalWithTokenAsync("officer", null, "security-officer")))
        {
            await using var file = File.CreateText(exportPath);
            await officer.ExportAuditAsync(file);
        }

        try
        {
            await using var live = await SqliteStore.OpenAsync(new SqliteOptions { DatabasePath = Path.Combine(_server.DataDir, "kms.db") }, default);
            var head = await live.GetAuditHeadAsync(default);
            var refused = await Assert.ThrowsAsync<KmsException>(() => BackupRestore.ReapplyFromLogsAsync(live, [exportPath, exportPath + ".missing"], 0, PublishedAuditKey(), CancellationToken.None));
            Assert.Equal(KmsErrorCode.FailedPrecondition, refused.Code);
            Assert.Contains("a server is serving", refused.Message, StringComparison.Ordinal);
            Assert.Equal(head, await live.GetAuditHeadAsync(default));
        }
        finally
        {
            File.Delete(exportPath);
        }
    }

    [Fact]
    public async Task Restore_TheSameBackupAgain_FromTheStreamOfTheChainTheFirstRestoreStarted_ReappliesWhatThatRestoreReapplied()
    {
        // The first restore re-applied a destruction made after the backup; the chain it started
        // records it only as backup/ReapplyDestruction (the lost site's own event is not in it).
        // A second disaster, the same backup (backups need a quorum: it may be the newest), and
        // that chain's stream alone: the version must stay destroyed.
        var (backup, key, exportPath) = await BackupThenDestroyFirstVersionAsync("twice");

        var auditKey = PublishedAuditKey();
        var first = TempPath("kms-restored-");
        var second = TempPath("kms-restored-");
        var stream = exportPath + ".stream";
        try
        {
            var report = await BackupRestore.RunAsync(backup, auditKey, first, [exportPath], replace: false, CancellationToken.None);
            Assert.Equal($"{key}/versions/1", Assert.Single(report.Reapplied).Version);

            // The new chain's events after the backup, as its SIEM stream carries them.
            await using (var restored = await SqliteStore.OpenAsync(new SqliteOptions { DatabasePath = Path.Combine(first, "kms.db") }, default))
            {
                var events = await restored.ListAuditEventsAsync(new Kms.Core.Audit.AuditQuery { AfterSequence = report.Manifest.AuditHead.Sequence, Limit = 1000 }, default);
                Assert.Contains(events, e => e.Entry.Operation == BackupRestore.ReapplyOperation);
                await File.WriteAllLinesAsync(stream, events.Select(Kms.Core.Audit.AuditExport.Event));
            }

            SqliteStore.ReleasePooledConnections();
            var again = await BackupRestore.RunAsync(backup, auditKey, second, [stream], replace: false, CancellationToken.None);
            var (version, source) = Assert.Single(again.Reapplied);
            Assert.Equal($"{key}/versions/1", version);
            Assert.Contains(BackupRestore.ReapplyOperation, source, StringComparison.Ordinal);
            Assert.Contains(await SqliteStore.ReadDestroyedVersionsAsync(Path.Combine(second, "kms.db"), CancellationToken.None), d => d.Version.ToString() == version);
        }
        finally
        {
            SqliteStore.ReleasePooledConnections();
            File.Delete(exportPath);
            File.Delete(stream);
            foreach (var directory in new[] { first, second }.Where(Directory.Exists))
            {
                Directory.Delete(directory, recursive: true);
            }
        }
    }

    [Fact]
    public async Task ReapplyDestructions_AfterEventsWereAppendedToTheRestoredChain_FindsTheLostSitesDestructions_AGappedOrLateLogIsRefused()
    {
        // The documented order: restore the dump, run ceremony restore-domain (which appends its
        // events to the restored chain), then reapply-destructions. The lost site had used the
        // same sequence numbers for its own events, a destruction among them.
        var (backup, key, exportPath) = await BackupThenDestroyFirstVersionAsync("forked");

        var auditKey = PublishedAuditKey();
        var target = TempPath("kms-restored-");
        var late = TempPath("kms-restored-");
        var stream = exportPath + ".stream";
        try
        {
            var head = (await BackupRestore.RunAsync(backup, auditKey, target, [], replace: false, CancellationToken.None, withoutAuditLogs: true)).Manifest.AuditHead.Sequence;
            await using var restored = await SqliteStore.OpenAsync(new SqliteOptions { DatabasePath = Path.Combine(target, "kms.db") }, default);
            await restored.AppendAuditAsync(
                [.. Enumerable.Range(0, 20).Select(i => new Kms.Core.Audit.AuditEntry
                {
                    Time = DateTimeOffset.UtcNow, RequestId = $"ceremony-{i}", Principal = "system:ceremony", Operation = "ceremony/restore-domain", Outcome = "OK",
                })],
                default);

            // A SIEM stream with the destruction's line taken out, and one that starts after the backup's head + 1.
            var events = (await File.ReadAllLinesAsync(exportPath)).Where(l => l.StartsWith("{\"event\"", StringComparison.Ordinal)).ToList();
            await File.WriteAllLinesAsync(stream, events.Where(l => Kms.Core.Backup.DestructionReplay.EventsOf([l], "line")[0].Destruction is null));
            var gapped = await Assert.ThrowsAsync<KmsException>(() => BackupRestore.ReapplyFromLogsAsync(restored, [stream], null, auditKey, CancellationToken.None));
            Assert.Equal(KmsErrorCode.InvalidArgument, gapped.Code);
            Assert.Contains("are in none of the audit logs given", gapped.Message, StringComparison.Ordinal);
            Assert.Contains("--allow-gaps", gapped.Message, StringComparison.Ordinal);
            var (withGaps, listed, _) = await BackupRestore.ReapplyFromLogsAsync(restored, [stream], null, auditKey, CancellationToken.None, allowGaps: true);
            Assert.Empty(withGaps);
            Assert.Contains(listed, s => s.StartsWith("audit events ", StringComparison.Ordinal) && s.Contains("not re-applied", StringComparison.Ordinal));
            var stamp = head + 1;
            await File.WriteAllLinesAsync(stream, events.Where(l => Kms.Core.Backup.DestructionReplay.EventsOf([l], "line")[0].Sequence > stamp));
            var notCovered = await Assert.ThrowsAsync<KmsException>(() => BackupRestore.RunAsync(backup, auditKey, late, [stream], replace: false, CancellationToken.None));
            Assert.Contains($"events {stamp}–{stamp} (after audit sequence {head}) are in none of the audit logs", notCovered.Message, StringComparison.Ordinal);
            Assert.False(File.Exists(Path.Combine(late, "kms.db")));

            // A stream that restarted (after an earlier restore it goes back to that restore's
            // head and runs on) holds every event after the backup: taken as it is.
            var restarted = events.Where(l => Kms.Core.Backup.DestructionReplay.EventsOf([l], "line")[0].Sequence <= stamp + 2).Concat(events.Skip(1)).ToList();
            await File.WriteAllLinesAsync(stream + ".restarted", restarted);
            Assert.Single((await BackupRestore.RunAsync(backup, auditKey, late, [stream + ".restarted"], replace: false, CancellationToken.None)).Reapplied);
            File.Delete(stream + ".restarted");

            var (reapplied, _, after) = await BackupRestore.ReapplyFromLogsAsync(restored, [exportPath], null, auditKey, CancellationToken.None);

            Assert.Equal(head, after);
            Assert.Equal($"{key}/versions/1", Assert.Single(reapplied).Version);
            Assert.Equal(KeyState.Destroyed, (await restored.ListVersionsAsync(KeyName.Parse(key, "key"), 0, 10, default))[0].State);

            // Told where to start, the late stream is taken (its destruction is already re-applied).
            Assert.Empty((await BackupRestore.ReapplyFromLogsAsync(restored, [stream], head + 1, auditKey, CancellationToken.None)).Reapplied);
        }
        finally
        {
            File.Delete(exportPath);
            File.Delete(stream);
            foreach (var directory in new[] { target, late }.Where(Directory.Exists))
            {
                Directory.Delete(directory, recursive: true);
            }
        }
    }

    [Fact]
    public async Task Restore_AuditLogsWhoseLastLineACrashTore_ReadUpToIt_TheRestoreSaysSo()
    {
        // A SIEM stream (or a copy of it) taken after a crash in the middle of an append ends in
        // a line without its line feed. It is no reason to refuse the whole file (and with it the
        // destructions it records): read up to it, and say the last line was not read.
        var (backup, _, exportPath) = await BackupThenDestroyFirstVersionAsync("torn");

        var stream = exportPath + ".stream";
        var targets = new List<string>();
        try
        {
            var lines = await File.ReadAllLinesAsync(exportPath);
            var events = lines.Where(l => l.StartsWith("{\"event\"", StringComparison.Ordinal)).ToList();
            await File.WriteAllTextAsync(stream, string.Join("", events.Select(l => l + "\n")) + events[^1][..60]);
            await File.AppendAllTextAsync(exportPath, events[^1][..60]);

            foreach (var log in new[] { stream, exportPath })
            {
                var target = TempPath("kms-restored-");
                targets.Add(target);
                var report = await BackupRestore.RunAsync(backup, PublishedAuditKey(), target, [log], replace: false, CancellationToken.None);

                Assert.Single(report.Reapplied);
                Assert.Contains(report.Skipped, s => s == $"{log}: its last line is incomplete (60 characters without a line end: a crash while it was written, or a copy taken meanwhile) and was not read; a destruction recorded on it is re-applied only if another audit log given holds it");
            }
        }
        finally
        {
            File.Delete(exportPath);
            File.Delete(stream);
            foreach (var target in targets.Where(Directory.Exists))
            {
                Directory.Delete(target, recursive: true);
            }
        }
    }

    [Fact]
    public async Task Restore_FromAnAuditExportAlone_ReappliesScheduledDestructionsAndDeletionsMadeAfterTheBackup()
    {
        // The site is lost: no database to replace, only the backup and the audit export. A
        // version and a whole key destroyed by the lifecycle (the default way keys are
        // destroyed) after the backup must not come back with the snapshot's material.
        string backup;
        string versionKey, deletedKey;
        var exportPath = TempPath("kms-export-", ".jsonl");
        using (var developer = _server.CreateClient())
        using (var officer = _server.CreateClient(await _server.CreatePrincipalWithTokenAsync("officer", null, "security-officer")))
        {
            versionKey = (await developer.CreateKeyAsync("tenants/dev", "rotated")).Name;
            await developer.RotateKeyAsync(versionKey);
            await developer.RotateKeyAsync(versionKey);
            deletedKey = (await developer.CreateKeyAsync("tenants/dev", "deleted")).Name;
            await developer.RotateKeyAsync(deletedKey);
            backup = Path.Combine(_server.DataDir, "backups", await ExportBackupAsync(officer));

            await developer.ScheduleKeyVersionDestructionAsync($"{versionKey}/versions/1", TimeSpan.FromSeconds(1));
            await developer.ScheduleKeyVersionDestructionAsync($"{versionKey}/versions/2", TimeSpan.FromSeconds(1));
            await developer.ScheduleKeyDeletionAsync(deletedKey, TimeSpan.FromSeconds(1));
            await Task.Delay(TimeSpan.FromSeconds(1.2));
            Assert.Equal(4, await _server.Services.GetRequiredService<KeyService>().DestroyDueAsync(DateTimeOffset.UtcNow, CancellationToken.None));
            await using var file = File.CreateText(exportPath);
            await officer.ExportAuditAsync(file);
        }

        // The backup still holds the material of the four versions destroyed after it, and the survivor's.
        var versionKeyName = KeyName.Parse(versionKey, "key");
        var deletedKeyName = KeyName.Parse(deletedKey, "key");
        byte[][] doomedMaterial =
        [
            await SnapshotMaterialAsync(backup, versionKeyName, 1),
            await SnapshotMaterialAsync(backup, versionKeyName, 2),
            await SnapshotMaterialAsync(backup, deletedKeyName, 1),
            await SnapshotMaterialAsync(backup, deletedKeyName, 2),
        ];
        var keptMaterial = await SnapshotMaterialAsync(backup, versionKeyName, 3);

        var target = TempPath("kms-restored-");
        try
        {
            var report = await BackupRestore.RunAsync(backup, PublishedAuditKey(), target, [exportPath], replace: false, CancellationToken.None);
            Assert.Equal(
                [$"{deletedKey}/versions/1", $"{deletedKey}/versions/2", $"{versionKey}/versions/1", $"{versionKey}/versions/2"],
                report.Reapplied.Select(r => r.Version).Order(StringComparer.Ordinal));
            var installed = Path.Combine(target, "kms.db");
            Assert.True(DatabaseFiles.Contain(installed, keptMaterial), "the scan does not see stored material");
            Assert.All(doomedMaterial, material => Assert.False(DatabaseFiles.Contain(installed, material), "a re-applied destruction's material is in the installed kms.db or kms.db-wal"));

            await using var restored = await SqliteStore.OpenAsync(new SqliteOptions { DatabasePath = Path.Combine(target, "kms.db") }, default);
            var versions = await restored.ListVersionsAsync(KeyName.Parse(versionKey, "key"), 0, 10, default);
            Assert.Equal([KeyState.Destroyed, KeyState.Destroyed, KeyState.Enabled], versions.Select(v => v.State));
            Assert.Equal(KeyState.Destroyed, (await restored.GetKeyAsync(KeyName.Parse(deletedKey, "key"), default))!.State);
            Assert.All(await restored.ListVersionsAsync(KeyName.Parse(deletedKey, "key"), 0, 10, default), v => Assert.Equal(KeyState.Destroyed, v.State));
            Assert.Equal(4, (await SqliteStore.ReadDestroyedVersionsAsync(Path.Combine(target, "kms.db"), CancellationToken.None)).Count);
        }
        finally
        {
            File.Delete(exportPath);
            if (Directory.Exists(target))
            {
                Directory.Delete(target, recursive: true);
            }
        }
    }

    [Fact]
    public async Task Fetch_DownloadsTheBackupByteForByte_AndVerifiesIt_RefusesWhatIsNoBackupOrDoesNotVerify()
    {
        var home = CliServerFixture.NewDirectory();
        var officerToken = await _server.CreatePrincipalWithTokenAsync("fetcher", null, "security-officer");
        await File.WriteAllTextAsync(Path.Combine(home, "officer.token"), officerToken + "\n");
        string backupId, destroyName;
        using (var developer = _server.CreateClient())
        using (var officer = _server.CreateClient(officerToken))
        {
            var key = await developer.CreateKeyAsync("tenants/dev", "fetched");
            await developer.RotateKeyAsync(key.Name);
            backupId = await ExportBackupAsync(officer);
            destroyName = await DestroyFirstVersionNowAsync(developer, officer, key.Name);
        }

        var pem = Path.Combine(_server.DataDir, "audit", "signing-key.pem");
        var onServer = Path.Combine(_server.DataDir, "backups", backupId);
        var variables = new Dictionary<string, string>
        {
            ["KMS_ENDPOINT"] = _server.Address.ToString(),
            ["KMS_CA_FILE"] = _server.CaCertificatePath,
            ["KMS_TOKEN_FILE"] = Path.Combine(home, "officer.token"),
        };
        Task<CliResult> Cli(params string[] args) => CliRun.InProcessAsync(variables, home, null, args);

        var fetched = await Cli("backup", "fetch", backupId, "--out", "copy", "--public-key", pem, "--output", "json");
        Assert.True(fetched.ExitCode == 0, fetched.ToString());
        Assert.Contains($"\"request\": \"quorumRequests/{backupId}\"", fetched.Out, StringComparison.Ordinal);
        foreach (var file in new[] { "kms.db", "manifest.json", "manifest.json.sig" })
        {
            Assert.Equal(await File.ReadAllBytesAsync(Path.Combine(onServer, file)), await File.ReadAllBytesAsync(Path.Combine(home, "copy", file)));
            Assert.Equal(UnixFileMode.UserRead | UnixFileMode.UserWrite, File.GetUnixFileMode(Path.Combine(home, "copy", file)));
        }

        // Into a directory that exists: refused, the directory untouched.
        var again = await Cli("backup", "fetch", backupId, "--out", "copy", "--public-key", pem);
        Assert.True(again.ExitCode == 2, again.ToString());
        Assert.Contains("--out", again.Error, StringComparison.Ordinal);
        Assert.Equal(await File.ReadAllBytesAsync(Path.Combine(onServer, "kms.db")), await File.ReadAllBytesAsync(Path.Combine(home, "copy", "kms.db")));

        // Not an EXPORT_BACKUP request; not a security officer; nothing written for either.
        var notBackup = await Cli("backup", "fetch", destroyName, "--out", "not-a-backup", "--public-key", pem);
        Assert.True(notBackup.ExitCode == 5, notBackup.ToString());
        variables["KMS_TOKEN_FILE"] = Path.Combine(_server.DataDir, "tokens", "developer.token");
        Assert.Equal(4, (await Cli("backup", "fetch", backupId, "--out", "developer", "--public-key", pem)).ExitCode);
        variables["KMS_TOKEN_FILE"] = Path.Combine(home, "officer.token");

        // A genuine, older backup put in a newer request's place on the server's disk: its
        // signature holds, but it is not the backup asked for: refused, deleted.
        string laterId;
        using (var officer = _server.CreateClient(officerToken))
        {
            laterId = await ExportBackupAsync(officer);
        }

        foreach (var file in new[] { "kms.db", "manifest.json", "manifest.json.sig" })
        {
            File.Copy(Path.Combine(onServer, file), Path.Combine(_server.DataDir, "backups", laterId, file), overwrite: true);
        }

        var swapped = await Cli("backup", "fetch", laterId, "--out", "swapped", "--public-key", pem);
        Assert.True(swapped.ExitCode == 4, swapped.ToString());
        Assert.Contains($"quorumRequests/{backupId}", swapped.Error, StringComparison.Ordinal);
        Assert.False(Directory.Exists(Path.Combine(home, "swapped")));

        // Altered on the server's disk: downloaded, fails verification, deleted.
        var snapshot = await File.ReadAllBytesAsync(Path.Combine(onServer, "kms.db"));
        snapshot[snapshot.Length / 2] ^= 1;
        await File.WriteAllBytesAsync(Path.Combine(onServer, "kms.db"), snapshot);
        var altered = await Cli("backup", "fetch", backupId, "--out", "altered", "--public-key", pem);
        Assert.Equal(4, altered.ExitCode);
        Assert.False(Directory.Exists(Path.Combine(home, "altered")));

        // Gone from the server's disk (or written on another node): NOT_FOUND.
        Directory.Delete(onServer, recursive: true);
        var gone = await Cli("backup", "fetch", backupId, "--out", "gone", "--public-key", pem);
        Assert.Equal(3, gone.ExitCode);
        Assert.Contains("not on this node", gone.Error, StringComparison.Ordinal);
        Assert.Equal(["copy"], Directory.GetDirectories(home).Select(Path.GetFileName));
    }

    [Fact]
    public async Task Restore_OverTheReplacedDatabase_SchedulingsAndDisablingsMadeAfterTheBackup_AreInForceAgain_Reversible()
    {
        // A compromised key version scheduled for destruction after the backup, a key scheduled
        // for deletion, a key disabled: the restore must not silently undo them.
        var later = await ScheduleAfterTheBackupAsync(exportPath: null);
        await _server.DisposeAsync();
        var database = Path.Combine(_server.DataDir, "kms.db");

        var restoring = DateTimeOffset.UtcNow;
        await BackupRestore.RunAsync(later.Backup, PublishedAuditKey(), _server.DataDir, [], replace: true, CancellationToken.None);
        var restored = DateTimeOffset.UtcNow;
        _server = await _server.RestartAsync();

        // The replaced database holds the destroy times the lost site set: kept, but never sooner
        // than 7 days after the restore (the lapsed one's had passed, unexecuted).
        await AssertInForceAgainAsync(later, restoring, exact: restored);
        Assert.Equal(later.ExpectedEvents, await ReappliedEventsAsync(database));
    }

    [Fact]
    public async Task Restore_FromAnAuditExportAlone_SchedulingsAndDisablingsMadeAfterTheBackup_AreInForceAgain_ReapplyDestructionsToo()
    {
        var exportPath = TempPath("kms-export-", ".jsonl");
        var target = TempPath("kms-restored-");
        try
        {
            var later = await ScheduleAfterTheBackupAsync(exportPath);

            // The site is lost (its token, holding the domain key, is not): only the backup and the export.
            await _server.DisposeAsync();
            var database = Path.Combine(_server.DataDir, "kms.db");
            foreach (var suffix in new[] { "", "-wal", "-shm" })
            {
                File.Delete(database + suffix);
            }

            var restoring = DateTimeOffset.UtcNow;
            var pem = Path.Combine(_server.DataDir, "audit", "signing-key.pem");
            var restore = await CliRun.InProcessAsync(new Dictionary<string, string>(), Path.GetTempPath(), null,
                "backup", "restore", later.Backup, "--public-key", pem, "--data-dir", _server.DataDir, "--audit-log", exportPath, "--output", "json");
            Assert.True(restore.ExitCode == 0, restore.ToString());
            _server = await _server.RestartAsync();

            // The events do not record the waiting period asked for: the event's time plus 30 days
            // (the longest by default) plus a day — never sooner than the lost site's.
            await AssertInForceAgainAsync(later, restoring, exact: null);
            Assert.Equal(later.ExpectedEvents, await ReappliedEventsAsync(database));

            // Printed: each re-applied scheduling, its state and where it was found.
            var printed = System.Text.Json.Nodes.JsonNode.Parse(restore.Out)!["rescheduled"]?.AsArray();
            Assert.NotNull(printed);
            Assert.Equal(
                later.ExpectedEvents.Select(e => (e.Resource, e.Operation == "backup/ReapplyDisable" ? "DISABLED" : "DESTROY_SCHEDULED")).Order(),
                printed.Select(r => (r!["resource"]!.GetValue<string>(), r["state"]!.GetValue<string>())).Order());
            Assert.All(printed, r => Assert.StartsWith(Path.GetFileName(exportPath) + " event ", r!["source"]!.GetValue<string>(), StringComparison.Ordinal));

            // reapply-destructions (a database restored by other means, e.g. pg_restore) does the same.
            await BackupRestore.RunAsync(later.Backup, PublishedAuditKey(), target, [], replace: false, CancellationToken.None, withoutAuditLogs: true);
            await using var dump = await SqliteStore.OpenAsync(new SqliteOptions { DatabasePath = Path.Combine(target, "kms.db") }, default);
            await BackupRestore.ReapplyFromLogsAsync(dump, [exportPath], null, PublishedAuditKey(), CancellationToken.None);
            Assert.Equal(KeyState.DestroyScheduled, (await dump.GetVersionAsync(KeyVersionName.Parse($"{later.Compromised}/versions/1", "v"), default))!.State);
            Assert.Equal(KeyState.Disabled, (await dump.GetVersionAsync(KeyVersionName.Parse($"{later.Compromised}/versions/2", "v"), default))!.State);
            Assert.Equal(KeyState.DestroyScheduled, (await dump.GetKeyAsync(KeyName.Parse(later.Retired, "k"), default))!.State);
            Assert.Equal(KeyState.Disabled, (await dump.GetKeyAsync(KeyName.Parse(later.Suspended, "k"), default))!.State);
            Assert.Equal(KeyState.Enabled, (await dump.GetKeyAsync(KeyName.Parse(later.Resumed, "k"), default))!.State);
        }
        finally
        {
            RemoveAfterRestore(target, exportPath);
        }
    }

    [Fact]
    public async Task Restore_ALiftingIsNotReplayed_NorTrustedFromAnUnverifiedLog_NorAnUnverifiedSchedulingPutsADestructionOff_TheOutputSaysWhatStayedRestricted()
    {
        var exportPath = TempPath("kms-export-", ".jsonl");
        var streamPath = TempPath("kms-stream-", ".jsonl");
        var target = TempPath("kms-restored-");
        try
        {
            string backup, guarded, held, reprieved, doomed;
            DateTimeOffset doomedAt;
            using (var developer = _server.CreateClient())
            using (var officer = _server.CreateClient(await _server.CreatePrincipalWithTokenAsync("officer", null, "security-officer")))
            {
                guarded = (await developer.CreateKeyAsync("tenants/dev", "guarded")).Name;
                held = (await developer.CreateKeyAsync("tenants/dev", "held")).Name;
                await developer.DisableKeyAsync(held);
                reprieved = (await developer.CreateKeyAsync("tenants/dev", "reprieved")).Name;
                await developer.RotateKeyAsync(reprieved);
                await developer.ScheduleKeyVersionDestructionAsync($"{reprieved}/versions/1", TimeSpan.FromDays(8));
                doomed = (await developer.CreateKeyAsync("tenants/dev", "doomed")).Name;
                await developer.RotateKeyAsync(doomed);
                doomedAt = (await developer.ScheduleKeyVersionDestructionAsync($"{doomed}/versions/1", TimeSpan.FromDays(8))).DestroyTime.ToDateTimeOffset();
                backup = Path.Combine(_server.DataDir, "backups", await ExportBackupAsync(officer));

                // After the backup, in the signed export: "guarded" disabled; the restrictions the
                // backup holds lifted ("held" enabled, "reprieved" version 1 restored).
                await developer.DisableKeyAsync(guarded);
                await developer.EnableKeyAsync(held);
                await developer.RestoreKeyVersionAsync($"{reprieved}/versions/1");
                await using var file = File.CreateText(exportPath);
                await officer.ExportAuditAsync(file);
            }

            // A "SIEM stream" continuing the export's chain that nobody signed: it enables
            // "guarded" and schedules "doomed" version 1 again (a month on) — anyone can write one.
            var last = System.Text.Json.Nodes.JsonNode.Parse(File.ReadAllLines(exportPath).Last(l => l.StartsWith("{\"event\"", StringComparison.Ordinal)))!["event"]!;
            var (seq, prev) = (last["seq"]!.GetValue<long>(), Kms.Core.Audit.AuditChain.HashOf(last.ToJsonString()));
            var forged = new List<string>();
            foreach (var (operation, resource) in new[] { ("EnableKey", guarded), ("ScheduleKeyVersionDestruction", $"{doomed}/versions/1") })
            {
                var body = last.DeepClone();
                body["seq"] = ++seq;
                body["prev"] = prev;
                body["operation"] = "/kms.v1.KeyManagementService/" + operation;
                body["resource"] = resource;
                body["outcome"] = "OK";
                body["time"] = Kms.Core.Audit.AuditChain.Time(DateTimeOffset.UtcNow);
                prev = Kms.Core.Audit.AuditChain.HashOf(body.ToJsonString());
                forged.Add(new System.Text.Json.Nodes.JsonObject { ["event"] = body, ["hash"] = prev }.ToJsonString());
            }

            await File.WriteAllLinesAsync(streamPath, forged);
            await _server.DisposeAsync();
            foreach (var suffix in new[] { "", "-wal", "-shm" })
            {
                File.Delete(Path.Combine(_server.DataDir, "kms.db") + suffix);
            }

            var pem = Path.Combine(_server.DataDir, "audit", "signing-key.pem");
            var restore = await CliRun.InProcessAsync(new Dictionary<string, string>(), Path.GetTempPath(), null,
                "backup", "restore", backup, "--public-key", pem, "--data-dir", _server.DataDir, "--audit-log", exportPath, "--audit-log", streamPath, "--output", "json");
            Assert.True(restore.ExitCode == 0, restore.ToString());
            _server = await _server.RestartAsync();
            using var client = _server.CreateClient();

            // The unsigned enabling lifted nothing; the unsigned scheduling did not put the
            // snapshot's destruction off; the signed liftings of what the backup holds are not
            // replayed either (restrictions only, by design).
            Assert.Equal(Kms.Contracts.V1.KeyState.Disabled, (await client.GetKeyAsync(guarded)).State);
            var doomedVersion = await client.GetKeyVersionAsync($"{doomed}/versions/1");
            Assert.Equal((Kms.Contracts.V1.KeyState.DestroyScheduled, doomedAt), (doomedVersion.State, doomedVersion.DestroyTime.ToDateTimeOffset()));
            Assert.Equal(Kms.Contracts.V1.KeyState.Disabled, (await client.GetKeyAsync(held)).State);
            Assert.Equal(Kms.Contracts.V1.KeyState.DestroyScheduled, (await client.GetKeyVersionAsync($"{reprieved}/versions/1")).State);

            // The operator is told which stayed restricted against the logs' last word, and why.
            var kept = System.Text.Json.Nodes.JsonNode.Parse(restore.Out)!["kept"]?.AsArray();
            Assert.NotNull(kept);
            var reasons = kept.ToDictionary(k => k!["resource"]!.GetValue<string>(), k => (k!["state"]!.GetValue<string>(), k["reason"]!.GetValue<string>()));
            Assert.Equal([guarded, held, $"{reprieved}/versions/1"], reasons.Keys.Order(StringComparer.Ordinal));
            Assert.Equal("DISABLED", reasons[guarded].Item1);
            Assert.Contains(Path.GetFileName(streamPath) + " event ", reasons[guarded].Item2, StringComparison.Ordinal);
            Assert.Contains("not covered by a checkpoint signed with the audit key", reasons[guarded].Item2, StringComparison.Ordinal);
            Assert.Equal("DISABLED", reasons[held].Item1);
            Assert.Contains(Path.GetFileName(exportPath) + " event ", reasons[held].Item2, StringComparison.Ordinal);
            Assert.Contains("never their lifting", reasons[held].Item2, StringComparison.Ordinal);
            Assert.Equal("DESTROY_SCHEDULED", reasons[$"{reprieved}/versions/1"].Item1);

            // In text, a row of its own.
            var text = await CliRun.InProcessAsync(new Dictionary<string, string>(), Path.GetTempPath(), null,
                "backup", "restore", backup, "--public-key", pem, "--data-dir", target, "--audit-log", exportPath, "--audit-log", streamPath);
            Assert.True(text.ExitCode == 0, text.ToString());
            // (The table wraps long values: compared without its borders and white space.)
            var flat = string.Concat(text.Out.Where(c => !char.IsWhiteSpace(c) && c != '│'));
            var row = flat[flat.IndexOf("stayedrestricted", StringComparison.Ordinal)..];
            Assert.Contains($"{guarded}DISABLED(", row, StringComparison.Ordinal);
            Assert.Contains($"{held}DISABLED(", row, StringComparison.Ordinal);
            Assert.Contains($"{reprieved}/versions/1DESTROY_SCHEDULED(", row, StringComparison.Ordinal);
        }
        finally
        {
            RemoveAfterRestore(target, exportPath, streamPath);
        }
    }

    [Fact]
    public async Task Restore_ATenantDeletedAfterTheBackup_IsDeletingAgain_ItsKeysScheduled_ReapplyingTwiceChangesNothingMore()
    {
        var exportPath = TempPath("kms-export-", ".jsonl");
        var target = TempPath("kms-restored-");
        try
        {
            string backup, leaving, staying;
            using (var admin = _server.DeploymentAdmin())
            using (var officer = _server.CreateClient(await _server.CreatePrincipalWithTokenAsync("officer", null, "security-officer")))
            {
                await admin.Access.CreateTenantAsync(new CreateTenantRequest { TenantId = "leaving" });
                using (var tenantDeveloper = _server.CreateClient(await _server.CreatePrincipalWithTokenAsync("leaver", "leaving", "key-manager")))
                {
                    leaving = (await tenantDeveloper.CreateKeyAsync("tenants/leaving", "ledger")).Name;
                }

                using (var developer = _server.CreateClient())
                {
                    staying = (await developer.CreateKeyAsync("tenants/dev", "ledger")).Name;
                }

                backup = Path.Combine(_server.DataDir, "backups", await ExportBackupAsync(officer));
                await admin.Access.DeleteTenantAsync(new DeleteTenantRequest { Name = "tenants/leaving" });
                await using var file = File.CreateText(exportPath);
                await officer.ExportAuditAsync(file);
            }

            // Over the replaced database (which holds the tenant DELETING), without logs.
            await _server.DisposeAsync();
            var report = await BackupRestore.RunAsync(backup, PublishedAuditKey(), _server.DataDir, [], replace: true, CancellationToken.None);
            Assert.Equal(("tenants/leaving", "the replaced database"), Assert.Single(report.TenantsDeleting));
            await using (var restored = await SqliteStore.OpenAsync(new SqliteOptions { DatabasePath = Path.Combine(_server.DataDir, "kms.db") }, default))
            {
                Assert.Equal(Kms.Core.Access.TenantState.Deleting, (await restored.GetTenantAsync(TenantId.Parse("leaving"), default))!.State);
                Assert.Equal(KeyState.DestroyScheduled, (await restored.GetKeyAsync(KeyName.Parse(leaving, "k"), default))!.State);
                Assert.Equal(KeyState.Enabled, (await restored.GetKeyAsync(KeyName.Parse(staying, "k"), default))!.State);
                Assert.Equal(Kms.Core.Access.TenantState.Active, (await restored.GetTenantAsync(TenantId.Parse("dev"), default))!.State);
            }

            // reapply-destructions (a dump restored by other means) does the same, once: run again,
            // it finds everything in force and records nothing more.
            await BackupRestore.RunAsync(backup, PublishedAuditKey(), target, [], replace: false, CancellationToken.None, withoutAuditLogs: true);
            await using var dump = await SqliteStore.OpenAsync(new SqliteOptions { DatabasePath = Path.Combine(target, "kms.db") }, default);

            // Without the audit key nothing in the export is verified: the tenant's keys are
            // scheduled (reversible), the tenant is not made DELETING (nothing undoes that).
            var unverified = await BackupRestore.ReapplyFromLogsAsync(dump, [exportPath], null, null, CancellationToken.None);
            Assert.Empty(unverified.TenantsDeleting);
            Assert.Equal([leaving], unverified.Rescheduled.Select(r => r.Resource));
            Assert.Contains(unverified.Skipped, s => s.StartsWith("tenants/leaving not made DELETING: ", StringComparison.Ordinal));
            Assert.Equal(Kms.Core.Access.TenantState.Active, (await dump.GetTenantAsync(TenantId.Parse("leaving"), default))!.State);
            Assert.Equal(KeyState.DestroyScheduled, (await dump.GetKeyAsync(KeyName.Parse(leaving, "k"), default))!.State);

            var once = await BackupRestore.ReapplyFromLogsAsync(dump, [exportPath], null, PublishedAuditKey(), CancellationToken.None);
            Assert.Equal(["tenants/leaving"], once.TenantsDeleting.Select(t => t.Tenant));
            var head = (await dump.ListAuditEventsAsync(new Kms.Core.Audit.AuditQuery { AfterSequence = 0, Limit = 10_000 }, default)).Count;
            var twice = await BackupRestore.ReapplyFromLogsAsync(dump, [exportPath], null, PublishedAuditKey(), CancellationToken.None);
            Assert.Equal((0, 0, 0, 0), (twice.Reapplied.Count, twice.Rescheduled.Count, twice.TenantsDeleting.Count, twice.Kept.Count));
            var recorded = await dump.ListAuditEventsAsync(new Kms.Core.Audit.AuditQuery { AfterSequence = 0, Limit = 10_000 }, default);
            Assert.Equal(head + 1, recorded.Count); // only the run's summary (ReapplySummary)
            Assert.Equal(ReapplySummary.Operation, recorded[^1].Entry.Operation);
            Assert.Equal(Kms.Core.Access.TenantState.Deleting, (await dump.GetTenantAsync(TenantId.Parse("leaving"), default))!.State);
        }
        finally
        {
            RemoveAfterRestore(target, exportPath);
        }
    }

    [Fact]
    public async Task Restore_AccessRemovedAfterTheBackup_TokenRevocationPrincipalDeletionBindingRemovalGrantRevocation_RemovedAgain_APolicySetIsListedForReview()
    {
        var exportPath = TempPath("kms-export-", ".jsonl");
        var target = TempPath("kms-restored-");
        try
        {
            string backup, key, grant;
            var revoked = TokenIdOf(await _server.CreatePrincipalWithTokenAsync("ci", "dev", "key-user"));
            var kept = TokenIdOf(await _server.CreatePrincipalWithTokenAsync("kept", "dev", "key-user"));
            var goneToken = TokenIdOf(await _server.CreatePrincipalWithTokenAsync("gone", "dev", "key-user"));
            await _server.CreatePrincipalWithTokenAsync("demoted", "dev", "key-manager", "key-user");
            using (var admin = _server.DeploymentAdmin())
            using (var developer = _server.CreateClient())
            using (var officer = _server.CreateClient(await _server.CreatePrincipalWithTokenAsync("officer", null, "security-officer")))
            {
                key = (await developer.CreateKeyAsync("tenants/dev", "ledger")).Name;
                await developer.SetKeyPolicyAsync(key, [new KeyPolicyEntry { Principal = "token:kept", Operations = { "ENCRYPT", "DECRYPT" } }, new KeyPolicyEntry { Principal = "token:ci", Operations = { "ENCRYPT" } }]);
                grant = (await developer.CreateGrantAsync(key, new KeyGrant { Grantee = "token:kept", Operations = { "DECRYPT" } })).Name;
                backup = Path.Combine(_server.DataDir, "backups", await ExportBackupAsync(officer));

                // After the backup: the incident response.
                await admin.RevokeApiTokenAsync(revoked);
                await admin.DeletePrincipalAsync("token:gone");
                await admin.DeleteRoleBindingAsync("token:demoted", "key-manager", "tenants/dev");
                await developer.RevokeGrantAsync(grant);
                await developer.SetKeyPolicyAsync(key, [new KeyPolicyEntry { Principal = "token:kept", Operations = { "ENCRYPT" } }]);
                await using var file = File.CreateText(exportPath);
                await officer.ExportAuditAsync(file);
            }

            await _server.DisposeAsync();
            var report = await BackupRestore.RunAsync(backup, PublishedAuditKey(), target, [exportPath], replace: false, CancellationToken.None);
            await using (var restored = await SqliteStore.OpenAsync(new SqliteOptions { DatabasePath = Path.Combine(target, "kms.db") }, default))
            {
                Assert.NotNull((await restored.GetApiTokenAsync(revoked, default))!.RevokeTime);
                Assert.Null((await restored.GetApiTokenAsync(kept, default))!.RevokeTime);
                Assert.NotNull((await restored.GetApiTokenAsync(goneToken, default))!.RevokeTime);
                Assert.True((await restored.GetPrincipalAsync(Kms.Core.Access.PrincipalName.Parse("token:gone", "p"), default))!.Deleted);
                Assert.Equal(
                    [Kms.Core.Access.Role.KeyUser],
                    (await restored.GetRoleBindingsAsync(Kms.Core.Access.PrincipalName.Parse("token:demoted", "p"), default)).Select(b => b.Role));
                Assert.NotNull(Assert.Single(await restored.ListGrantsAsync(KeyName.Parse(key, "k"), includeRevoked: true, default)).RevokeTime);
            }

            Assert.Equal(
                [$"tenants/dev/principals/token:ci/apiTokens/{revoked}", "tenants/dev/principals/token:gone", "tenants/dev/principals/token:demoted/roleBindings/key-manager", grant],
                report.AccessRemoved.Select(r => r.Resource));
            Assert.Contains(report.AccessReview, r => r.StartsWith(key + ": ", StringComparison.Ordinal));

            // Restored again from the logs of the chain the restore started, or re-applied once more:
            // nothing more to remove, nothing more recorded than the run's summary (ReapplySummary).
            var head = await AuditHeadAsync(Path.Combine(target, "kms.db"));
            await using (var dump = await SqliteStore.OpenAsync(new SqliteOptions { DatabasePath = Path.Combine(target, "kms.db") }, default))
            {
                var again = await BackupRestore.ReapplyFromLogsAsync(dump, [exportPath], null, PublishedAuditKey(), CancellationToken.None);
                Assert.Empty(again.AccessRemoved);
            }

            Assert.Equal(head + 1, await AuditHeadAsync(Path.Combine(target, "kms.db")));

            // Without the audit key nothing in the export is verified: the principal is not made
            // DELETED (that cannot be undone), but its token is revoked and its binding removed.
            var unverifiedTarget = TempPath("kms-restored-");
            try
            {
                await BackupRestore.RunAsync(backup, PublishedAuditKey(), unverifiedTarget, [], replace: false, CancellationToken.None, withoutAuditLogs: true);
                await using var dump = await SqliteStore.OpenAsync(new SqliteOptions { DatabasePath = Path.Combine(unverifiedTarget, "kms.db") }, default);
                var unverified = await BackupRestore.ReapplyFromLogsAsync(dump, [exportPath], null, null, CancellationToken.None);
                var gone = Kms.Core.Access.PrincipalName.Parse("token:gone", "p");
                Assert.False((await dump.GetPrincipalAsync(gone, default))!.Deleted);
                Assert.NotNull((await dump.GetApiTokenAsync(goneToken, default))!.RevokeTime);
                Assert.Empty(await dump.GetRoleBindingsAsync(gone, default));
                Assert.NotNull((await dump.GetApiTokenAsync(revoked, default))!.RevokeTime);
                Assert.Contains(unverified.Skipped, s => s.StartsWith("tenants/dev/principals/token:gone not made DELETED ", StringComparison.Ordinal));
            }
            finally
            {
                RemoveAfterRestore(unverifiedTarget);
            }

            // Over the database that removed them, without logs: it is the record — of the key
            // policy too, narrower there than in the backup, so set again rather than listed.
            var over = await BackupRestore.RunAsync(backup, PublishedAuditKey(), _server.DataDir, [], replace: true, CancellationToken.None);
            Assert.Equal(
                [$"tenants/dev/principals/token:ci/apiTokens/{revoked}", "tenants/dev/principals/token:gone", "tenants/dev/principals/token:demoted/roleBindings/key-manager", grant, key],
                over.AccessRemoved.Select(r => r.Resource).OrderBy(r => r.Contains("/apiTokens/", StringComparison.Ordinal) ? 0 : r.Contains("/roleBindings/", StringComparison.Ordinal) ? 2 : r.Contains("/grants/", StringComparison.Ordinal) ? 3 : r == key ? 4 : 1));
            Assert.All(over.AccessRemoved, r => Assert.Equal("the replaced database", r.Source));
            Assert.DoesNotContain(over.AccessReview, r => r.StartsWith(key + ": ", StringComparison.Ordinal));
            await using (var restored = await SqliteStore.OpenAsync(new SqliteOptions { DatabasePath = Path.Combine(_server.DataDir, "kms.db") }, default))
            {
                Assert.NotNull((await restored.GetApiTokenAsync(revoked, default))!.RevokeTime);
                Assert.Null((await restored.GetApiTokenAsync(kept, default))!.RevokeTime);
                Assert.True((await restored.GetPrincipalAsync(Kms.Core.Access.PrincipalName.Parse("token:gone", "p"), default))!.Deleted);
                Assert.Equal(
                    [Kms.Core.Access.Role.KeyUser],
                    (await restored.GetRoleBindingsAsync(Kms.Core.Access.PrincipalName.Parse("token:demoted", "p"), default)).Select(b => b.Role));
                Assert.NotNull(Assert.Single(await restored.ListGrantsAsync(KeyName.Parse(key, "k"), includeRevoked: true, default)).RevokeTime);
                Assert.Equal(
                    [("token:kept", Kms.Core.Access.KeyOperations.Encrypt)],
                    (await restored.GetKeyPolicyAsync(KeyName.Parse(key, "k"), default)).Entries.Select(e => (e.Key, e.Value)));
            }
        }
        finally
        {
            RemoveAfterRestore(target, exportPath);
        }
    }

    [Fact]
    public async Task Restore_OverTheReplacedDatabase_AKeyPolicyNarrowedAfterTheBackup_NarrowedAgainWithItsEvent_AWidenedOneListedForReview()
    {
        string backup, narrowed, lockedDown, widened;
        await _server.CreatePrincipalWithTokenAsync("ci", "dev", "key-user");
        await _server.CreatePrincipalWithTokenAsync("kept", "dev", "key-user");
        using (var developer = _server.CreateClient())
        using (var officer = _server.CreateClient(await _server.CreatePrincipalWithTokenAsync("officer", null, "security-officer")))
        {
            narrowed = (await developer.CreateKeyAsync("tenants/dev", "narrowed")).Name;
            lockedDown = (await developer.CreateKeyAsync("tenants/dev", "locked-down")).Name;
            widened = (await developer.CreateKeyAsync("tenants/dev", "widened")).Name;
            await developer.SetKeyPolicyAsync(narrowed, [new KeyPolicyEntry { Principal = "token:kept", Operations = { "ENCRYPT", "DECRYPT" } }, new KeyPolicyEntry { Principal = "token:ci", Operations = { "ENCRYPT" } }]);
            await developer.SetKeyPolicyAsync(widened, [new KeyPolicyEntry { Principal = "token:kept", Operations = { "ENCRYPT" } }]);
            backup = Path.Combine(_server.DataDir, "backups", await ExportBackupAsync(officer));

            // After the backup: the incident response takes token:ci off one key and locks down
            // another that had no policy; a third key's policy is widened.
            await developer.SetKeyPolicyAsync(narrowed, [new KeyPolicyEntry { Principal = "token:kept", Operations = { "ENCRYPT" } }]);
            await developer.SetKeyPolicyAsync(lockedDown, [new KeyPolicyEntry { Principal = "token:kept", Operations = { "DECRYPT" } }]);
            await developer.SetKeyPolicyAsync(widened, [new KeyPolicyEntry { Principal = "token:kept", Operations = { "ENCRYPT", "DECRYPT" } }, new KeyPolicyEntry { Principal = "token:ci", Operations = { "ENCRYPT" } }]);
        }

        await _server.DisposeAsync();
        var report = await BackupRestore.RunAsync(backup, PublishedAuditKey(), _server.DataDir, [], replace: true, CancellationToken.None);
        await using (var restored = await SqliteStore.OpenAsync(new SqliteOptions { DatabasePath = Path.Combine(_server.DataDir, "kms.db") }, default))
        {
            Assert.Equal(
                [("token:kept", Kms.Core.Access.KeyOperations.Encrypt)],
                (await restored.GetKeyPolicyAsync(KeyName.Parse(narrowed, "k"), default)).Entries.Select(e => (e.Key, e.Value)));
            Assert.Equal(
                [("token:kept", Kms.Core.Access.KeyOperations.Decrypt)],
                (await restored.GetKeyPolicyAsync(KeyName.Parse(lockedDown, "k"), default)).Entries.Select(e => (e.Key, e.Value)));
            Assert.Equal(
                [("token:kept", Kms.Core.Access.KeyOperations.Encrypt)],
                (await restored.GetKeyPolicyAsync(KeyName.Parse(widened, "k"), default)).Entries.Select(e => (e.Key, e.Value)));
            var events = await restored.ListAuditEventsAsync(new Kms.Core.Audit.AuditQuery { AfterSequence = report.Manifest.AuditHead.Sequence, Limit = 1000 }, default);
            Assert.Equal(
                [lockedDown, narrowed],
                events.Where(e => e.Entry.Operation == AccessReplay.ReapplyKeyPolicyOperation).Select(e => e.Entry.Resource).Order(StringComparer.Ordinal));
        }

        Assert.Equal([(lockedDown, "the replaced database"), (narrowed, "the replaced database")], report.AccessRemoved.Select(r => (r.Resource, r.Source)).Order());
        Assert.DoesNotContain(report.AccessReview, r => r.StartsWith(narrowed + ": ", StringComparison.Ordinal) || r.StartsWith(lockedDown + ": ", StringComparison.Ordinal));
        Assert.Contains(report.AccessReview, r => r.StartsWith(widened + ": its key policy in the replaced database (token:ci ENCRYPT, token:kept ENCRYPT+DECRYPT) differs from the backup's (token:kept ENCRYPT)", StringComparison.Ordinal));
    }

    [Fact]
    public async Task Restore_QuorumRequestsPendingInTheBackupAndExecutedAfterIt_AreVoid_TheirSavedApprovalsReplayed_Refused_NoSecondCredentialNorExport()
    {
        string backup, recovery, export;
        var saved = new List<(string Request, string Officer, byte[] Signature, DateTimeOffset? SignTime)>();
        using (var officer = _server.CreateClient(await _server.CreatePrincipalWithTokenAsync("officer", null, "security-officer")))
        {
            // Pending when the backup is taken: a recovery alice approved, an export nobody had yet.
            recovery = (await officer.RequestDeploymentAdminRecoveryAsync()).Name;
            export = (await officer.CreateQuorumRequestAsync(new CreateQuorumRequestRequest { Operation = Kms.Contracts.V1.QuorumOperation.ExportBackup })).Name;
            await ApproveAsync(officer, "alice", recovery);
            backup = Path.Combine(_server.DataDir, "backups", await ExportBackupAsync(officer));

            // After it, both execute: the recovery by bob's approval, the export by alice's and
            // carol's, all timed (replayed within the 5 minutes MaxSignTimeSkew allows; an untimed
            // one, which had no skew check, is refused for both operations now). Each approval is
            // kept as sent.
            foreach (var (request, name) in new[] { (recovery, "bob"), (export, "alice"), (export, "carol") })
            {
                using var approver = QuorumApprover.FromKey(ECDsa.Create(_officers.KeyOf(name).ExportParameters(true)));
                var info = await officer.GetQuorumRequestAsync(request);
                var signed = QuorumRendering.ToMilliseconds(DateTimeOffset.UtcNow);
                var signature = approver.Sign(QuorumRendering.Statement(QuorumApprover.ToQuorumRequest(info), signed));
                await officer.ApproveQuorumRequestAsync(request, approver.Fingerprint, signature, signed);
                saved.Add((request, approver.Fingerprint, signature, signed));
            }

            Assert.Equal(Kms.Contracts.V1.QuorumRequestState.Executed, (await officer.GetQuorumRequestAsync(recovery)).State);

            Assert.Equal(Kms.Contracts.V1.QuorumRequestState.Executed, (await officer.GetQuorumRequestAsync(export)).State);
        }

        await _server.DisposeAsync();
        var report = await BackupRestore.RunAsync(backup, PublishedAuditKey(), _server.DataDir, [], replace: true, CancellationToken.None);
        var backupsBefore = Directory.GetDirectories(Path.Combine(_server.DataDir, "backups")).Length;

        // Both were PENDING in the backup: VOID now, listed, each with its event in the same write.
        Assert.Equal(
            [(export, "EXPORT_BACKUP", 0), (recovery, "RECOVER_DEPLOYMENT_ADMIN", 1)],
            report.QuorumRequestsVoided.Select(v => (v.Name, v.Operation, v.Approvals)).OrderBy(v => v.Operation, StringComparer.Ordinal));
        await using (var restored = await SqliteStore.OpenAsync(new SqliteOptions { DatabasePath = Path.Combine(_server.DataDir, "kms.db") }, default))
        {
            var events = await restored.ListAuditEventsAsync(new Kms.Core.Audit.AuditQuery { AfterSequence = report.Manifest.AuditHead.Sequence, Limit = 1000 }, default);
            Assert.Equal(
                new[] { export, recovery }.Order(StringComparer.Ordinal).Select(r => ("system:restore", r)),
                events.Where(e => e.Entry.Operation == BackupRestore.VoidQuorumRequestOperation).Select(e => (e.Entry.Principal, e.Entry.Resource!)).OrderBy(e => e.Item2, StringComparer.Ordinal));
            Assert.Equal(
                [Kms.Core.Quorum.QuorumRequestState.Void, Kms.Core.Quorum.QuorumRequestState.Void],
                [.. (await restored.ListQuorumRequestsAsync(null, null, 100, default)).Where(r => r.Name == export || r.Name == recovery).Select(r => r.State)]);
        }

        SqliteStore.ReleasePooledConnections();
        _server = await _server.RestartAsync();

        // The officers' saved approvals, sent again to the restored server: none counts.
        var answers = new List<string>();
        using (var officer = _server.CreateClient(await _server.CreatePrincipalWithTokenAsync("officer-after-restore", null, "security-officer")))
        {
            foreach (var (request, fingerprint, signature, signTime) in saved)
            {
                try
                {
                    var answer = await officer.ApproveQuorumRequestAsync(request, fingerprint, signature, signTime);
                    answers.Add($"{request}: {(answer.Executed ? "executed" : "accepted")}");
                }
                catch (RpcException e)
                {
                    answers.Add($"{request}: {e.StatusCode}");
                }
            }
        }

        var recoveryTokens = (await _server.Services.GetRequiredService<Kms.Core.Ports.IAccessStore>().ListApiTokensAsync(Authenticator.BootstrapPrincipal, default))
            .Where(t => t.Kind == Kms.Core.Access.ApiTokenKind.Recovery);
        Assert.Empty(recoveryTokens);
        Assert.Equal(backupsBefore, Directory.GetDirectories(Path.Combine(_server.DataDir, "backups")).Length);
        Assert.Equal([$"{recovery}: FailedPrecondition", $"{export}: FailedPrecondition", $"{export}: FailedPrecondition"], answers);

        // Officers see it VOID; made again, a request executes as any.
        using (var officer = _server.CreateClient(await _server.CreatePrincipalWithTokenAsync("officer-again", null, "security-officer")))
        {
            Assert.Equal(Kms.Contracts.V1.QuorumRequestState.Void, (await officer.GetQuorumRequestAsync(recovery)).State);
            using (var carol = QuorumApprover.FromKey(ECDsa.Create(_officers.KeyOf("carol").ExportParameters(true))))
            {
                await Assert.ThrowsAsync<InvalidOperationException>(() => carol.PrepareAsync(officer, recovery));
            }

            var again = (await officer.RequestDeploymentAdminRecoveryAsync()).Name;
            await ApproveAsync(officer, "alice", again);
            Assert.True((await ApproveAsync(officer, "bob", again)).Executed);
        }
    }

    [Fact]
    public async Task ReapplyDestructions_QuorumRequestsPendingInTheRestoredDatabase_AreVoid_EachWithItsEvent_AnExecutedOneStays_AgainNoneVoided()
    {
        // reapply-destructions voids as restore does (the same ReapplyAsync), on a database restored
        // by other means: deployment-wide and tenant requests alike, an executed one left as it is.
        var exportPath = TempPath("kms-export-", ".jsonl");
        string recovery, destroy, export;
        using (var developer = _server.CreateClient())
        using (var officer = _server.CreateClient(await _server.CreatePrincipalWithTokenAsync("officer", null, "security-officer")))
        {
            var key = (await developer.CreateKeyAsync("tenants/dev", "void-on-reapply")).Name;
            await developer.RotateKeyAsync(key);
            recovery = (await officer.RequestDeploymentAdminRecoveryAsync()).Name;
            await ApproveAsync(officer, "alice", recovery);
            destroy = (await developer.RequestDestroyKeyVersionNowAsync($"{key}/versions/1")).Name;
            export = "quorumRequests/" + await ExportBackupAsync(officer);
            await using var file = File.CreateText(exportPath);
            await officer.ExportAuditAsync(file);
        }

        await _server.DisposeAsync();
        try
        {
            await using var restored = await SqliteStore.OpenAsync(new SqliteOptions { DatabasePath = _server.DatabasePath }, default);
            var head = await AuditHeadAsync(_server.DatabasePath);
            var report = await BackupRestore.ReapplyFromLogsAsync(restored, [exportPath], null, PublishedAuditKey(), CancellationToken.None);

            Assert.Equal(
                [(destroy, "DESTROY_KEY_VERSION_NOW", 0), (recovery, "RECOVER_DEPLOYMENT_ADMIN", 1)],
                report.QuorumRequestsVoided.Select(v => (v.Name, v.Operation, v.Approvals)).OrderBy(v => v.Operation, StringComparer.Ordinal));
            var states = (await restored.ListQuorumRequestsAsync(null, null, 100, default)).ToDictionary(r => r.Name, r => r.State);
            Assert.Equal(
                [Kms.Core.Quorum.QuorumRequestState.Void, Kms.Core.Quorum.QuorumRequestState.Void, Kms.Core.Quorum.QuorumRequestState.Executed],
                [states[recovery], states[destroy], states[export]]);
            var events = await restored.ListAuditEventsAsync(new Kms.Core.Audit.AuditQuery { AfterSequence = head, Limit = 1000 }, default);
            Assert.Equal(
                new[] { recovery, destroy }.Order(StringComparer.Ordinal).Select(r => ("system:restore", r)),
                events.Where(e => e.Entry.Operation == BackupRestore.VoidQuorumRequestOperation).Select(e => (e.Entry.Principal, e.Entry.Resource!)).OrderBy(e => e.Item2, StringComparer.Ordinal));

            var again = await BackupRestore.ReapplyFromLogsAsync(restored, [exportPath], null, PublishedAuditKey(), CancellationToken.None);
            Assert.Empty(again.QuorumRequestsVoided);
        }
        finally
        {
            File.Delete(exportPath);
            SqliteStore.ReleasePooledConnections();
        }
    }

    [Fact]
    public async Task Restore_ABackupOfAnotherDeployment_ItsDomainKeyIsNotTheOneTheDatabasePins_Refused_NothingChanged_BothCheckValuesNamed()
    {
        // Two deployments, each its own SoftHSM token (its own domain key) and data directory. A
        // backup of B restored into A's data directory: installed, A's database would be replaced
        // by one whose material A's domain key cannot unwrap.
        string backupOfB, kcvOfB;
        byte[] auditKeyOfB, kept;
        await using (var other = await KmsTestServer.StartAsync(null, null, "dev", $"--Kms:Quorum:GenesisFile={_genesisPath}"))
        {
            using var officer = other.CreateClient(await other.CreatePrincipalWithTokenAsync("officer", null, "security-officer"));
            backupOfB = Path.Combine(other.DataDir, "backups", await ExportBackupAsync(officer));
            auditKeyOfB = PublicKeyOf(other.DataDir);
            kcvOfB = BackupManifest.Verify(backupOfB, auditKeyOfB).DomainKcv;
        }

        using (var developer = _server.CreateClient())
        {
            kept = (await developer.EncryptAsync((await developer.CreateKeyAsync("tenants/dev", "stays")).Name, "still here"u8.ToArray())).Ciphertext;
        }

        await _server.DisposeAsync();
        var kcvOfA = await SqliteStore.ReadSettingAsync(_server.DatabasePath, DomainKeyGuard.CheckValueSetting, CancellationToken.None);
        Assert.NotNull(kcvOfA);
        Assert.NotEqual(kcvOfA, kcvOfB, StringComparer.OrdinalIgnoreCase);
        var checkpoints = Path.Combine(_server.DataDir, "audit", "checkpoints.jsonl");
        Assert.True(File.Exists(checkpoints));
        var before = await File.ReadAllBytesAsync(_server.DatabasePath);

        var refused = await Assert.ThrowsAsync<KmsException>(() => BackupRestore.RunAsync(backupOfB, auditKeyOfB, _server.DataDir, [], replace: true, CancellationToken.None));

        Assert.Equal(KmsErrorCode.FailedPrecondition, refused.Code);
        Assert.Contains($"check value {kcvOfB}", refused.Message, StringComparison.Ordinal);
        Assert.Contains($"check value {kcvOfA}", refused.Message, StringComparison.Ordinal);
        Assert.Contains("nothing was restored", refused.Message, StringComparison.Ordinal);
        Assert.Equal(before, await File.ReadAllBytesAsync(_server.DatabasePath));
        Assert.Empty(Directory.GetFiles(_server.DataDir, "kms.db.re*"));
        Assert.Empty(Directory.GetFiles(Path.GetDirectoryName(checkpoints)!, "*.replaced-*"));
        Assert.True(File.Exists(checkpoints));

        // A's server starts on its own database and serves what it held.
        _server = await _server.RestartAsync();
        using var after = _server.CreateClient();
        using var opened = await after.DecryptAsync(kept);
        Assert.Equal("still here"u8.ToArray(), opened.Plaintext.ToArray());
    }

    [Fact]
    public async Task Restore_PrimaryAliasesAndLiftingsChangedAfterTheBackup_NotReplayed_ListedForReview_FromTheLogsAndFromTheReplacedDatabase()
    {
        var exportPath = TempPath("kms-export-", ".jsonl");
        var target = TempPath("kms-restored-");
        try
        {
            string backup, lapsed, steered, other, flicker;
            using (var admin = _server.DeploymentAdmin())
            using (var developer = _server.CreateClient())
            using (var officer = _server.CreateClient(await _server.CreatePrincipalWithTokenAsync("officer", null, "security-officer")))
            {
                await admin.Access.CreateTenantAsync(new CreateTenantRequest { TenantId = "paused" });
                await admin.Access.DeleteTenantAsync(new DeleteTenantRequest { Name = "tenants/paused" });
                lapsed = (await developer.CreateKeyAsync("tenants/dev", "lapsed")).Name;
                await developer.DisableKeyAsync(lapsed);
                steered = (await developer.CreateKeyAsync("tenants/dev", "steered")).Name;
                other = (await developer.CreateKeyAsync("tenants/dev", "other")).Name;
                flicker = (await developer.CreateKeyAsync("tenants/dev", "flicker")).Name;
                await developer.CreateAliasAsync("tenants/dev", "front", steered);
                await developer.CreateAliasAsync("tenants/dev", "gone", steered);
                backup = Path.Combine(_server.DataDir, "backups", await ExportBackupAsync(officer));

                // After the backup, each a lifting or a change a restore does not replay.
                await admin.Access.CancelTenantDeletionAsync(new CancelTenantDeletionRequest { Name = "tenants/paused" });
                await developer.EnableKeyAsync(lapsed);
                await developer.RotateKeyAsync(steered);
                await developer.UpdateAliasAsync("tenants/dev/aliases/front", other);
                await developer.CreateAliasAsync("tenants/dev", "late", other);
                await developer.DeleteAliasAsync("tenants/dev/aliases/gone");
                await developer.DisableKeyAsync(flicker);
                await developer.EnableKeyAsync(flicker);
                await using var file = File.CreateText(exportPath);
                await officer.ExportAuditAsync(file);
            }

            await _server.DisposeAsync();

            // From the verified logs: each listed with the event that made it; nothing replayed, and
            // a disabling then an enabling after the backup ends as the enabling left it.
            var report = await BackupRestore.RunAsync(backup, PublishedAuditKey(), target, [exportPath], replace: false, CancellationToken.None);
            string[] fromLogs =
            [
                "tenants/paused: its deletion was cancelled after the backup (",
                $"{steered}: rotated after the backup (",
                "tenants/dev/aliases/front: the alias was pointed at another key after the backup (",
                "tenants/dev/aliases/late: an alias created after the backup (",
                "tenants/dev/aliases/gone: the alias was deleted after the backup (",
            ];
            Assert.Equal(fromLogs.Length, report.AccessReview.Count);
            Assert.All(fromLogs, row => Assert.Contains(report.AccessReview, r => r.StartsWith(row, StringComparison.Ordinal)));
            Assert.Equal([lapsed], report.Kept.Select(k => k.Resource));
            Assert.DoesNotContain(report.Rescheduled, r => r.Resource == flicker);
            await using (var restored = await SqliteStore.OpenAsync(new SqliteOptions { DatabasePath = Path.Combine(target, "kms.db") }, default))
            {
                Assert.Equal(Kms.Core.Access.TenantState.Deleting, (await restored.GetTenantAsync(TenantId.Parse("paused"), default))!.State);
                Assert.Equal(KeyState.Disabled, (await restored.GetKeyAsync(KeyName.Parse(lapsed, "k"), default))!.State);
                Assert.Equal(KeyState.Enabled, (await restored.GetKeyAsync(KeyName.Parse(flicker, "k"), default))!.State);
                Assert.Equal(1, (await restored.GetKeyAsync(KeyName.Parse(steered, "k"), default))!.Primary.Name.Version);
            }

            // Over the replaced database, without logs: what it holds otherwise, with both sides.
            var over = await BackupRestore.RunAsync(backup, PublishedAuditKey(), _server.DataDir, [], replace: true, CancellationToken.None);
            string[] fromDatabase =
            [
                $"{lapsed}: ENABLED in the replaced database, DISABLED here",
                $"{steered}: its primary is version 1 here, 2 in the replaced database, made after the backup and not in it",
                $"tenants/dev/aliases/front: leads to {steered} here, to {other} in the replaced database",
                $"tenants/dev/aliases/gone: leads to {steered} here, to nothing (deleted after the backup) in the replaced database",
                $"tenants/dev/aliases/late: leads to nothing (not in the backup) here, to {other} in the replaced database",
                "tenants/paused: ACTIVE in the replaced database, DELETING here",
            ];
            Assert.Equal(fromDatabase.Length, over.AccessReview.Count);
            Assert.All(fromDatabase, row => Assert.Contains(over.AccessReview, r => r.StartsWith(row, StringComparison.Ordinal)));
            Assert.Empty(over.Rescheduled);
        }
        finally
        {
            RemoveAfterRestore(target, exportPath);
        }
    }

    // The id of an API token (kms_ID_SECRET).
    private static string TokenIdOf(string token) =>
        Kms.Core.Access.ApiTokenSecret.TryParse(token, out var id, out _) ? id : throw new InvalidOperationException("not an API token");

    [Fact]
    public async Task Restore_ATenantDeletedAfterTheBackupThenGivenBack_StaysActive_ItsKeysAsTheCancellationsLeftThem()
    {
        var exportPath = TempPath("kms-export-", ".jsonl");
        var target = TempPath("kms-restored-");
        try
        {
            string backup, kept, left, resumed;
            using (var admin = _server.DeploymentAdmin())
            using (var officer = _server.CreateClient(await _server.CreatePrincipalWithTokenAsync("officer", null, "security-officer")))
            {
                await admin.Access.CreateTenantAsync(new CreateTenantRequest { TenantId = "regret" });
                using var manager = _server.CreateClient(await _server.CreatePrincipalWithTokenAsync("regretter", "regret", "key-manager"));
                kept = (await manager.CreateKeyAsync("tenants/regret", "kept")).Name;
                left = (await manager.CreateKeyAsync("tenants/regret", "left")).Name;
                resumed = (await manager.CreateKeyAsync("tenants/regret", "resumed")).Name;
                backup = Path.Combine(_server.DataDir, "backups", await ExportBackupAsync(officer));

                // Offboarded, given back, and one key kept by its manager; the other left to go.
                await admin.Access.DeleteTenantAsync(new DeleteTenantRequest { Name = "tenants/regret" });
                await admin.Access.CancelTenantDeletionAsync(new CancelTenantDeletionRequest { Name = "tenants/regret" });
                await manager.Raw.CancelKeyDeletionAsync(new CancelKeyDeletionRequest { Name = kept });

                // Kept and put back in use (cancel-deletion, then enable, as the CLI says): the
                // enabling is then the logs' last word on it.
                await manager.Raw.CancelKeyDeletionAsync(new CancelKeyDeletionRequest { Name = resumed });
                await manager.Raw.EnableKeyAsync(new EnableKeyRequest { Name = resumed });
                await using var file = File.CreateText(exportPath);
                await officer.ExportAuditAsync(file);
            }

            await _server.DisposeAsync();
            await BackupRestore.RunAsync(backup, PublishedAuditKey(), target, [], replace: false, CancellationToken.None, withoutAuditLogs: true);
            await using var dump = await SqliteStore.OpenAsync(new SqliteOptions { DatabasePath = Path.Combine(target, "kms.db") }, default);

            var report = await BackupRestore.ReapplyFromLogsAsync(dump, [exportPath], null, PublishedAuditKey(), CancellationToken.None);

            Assert.Empty(report.TenantsDeleting);
            Assert.Contains(report.Skipped, s => s.StartsWith("tenants/regret not made DELETING: ", StringComparison.Ordinal) && s.Contains("CancelTenantDeletion", StringComparison.Ordinal));
            Assert.Equal(Kms.Core.Access.TenantState.Active, (await dump.GetTenantAsync(TenantId.Parse("regret"), default))!.State);
            Assert.Equal(KeyState.DestroyScheduled, (await dump.GetKeyAsync(KeyName.Parse(left, "k"), default))!.State);
            Assert.NotEqual(KeyState.DestroyScheduled, (await dump.GetKeyAsync(KeyName.Parse(kept, "k"), default))!.State);
            Assert.Equal(KeyState.Enabled, (await dump.GetKeyAsync(KeyName.Parse(resumed, "k"), default))!.State);
            Assert.Equal([left], report.Rescheduled.Where(r => r.State == KeyState.DestroyScheduled).Select(r => r.Resource));
            Assert.Empty(report.Kept);
        }
        finally
        {
            RemoveAfterRestore(target, exportPath);
        }
    }

    [Fact]
    public async Task Reapply_ATenantDeletedGivenBackAndDeletedAgain_IsDeleting_EvenFromLogsGivenNewestFirst_TheKeyKeptBetweenScheduledAgain()
    {
        var early = TempPath("kms-export-", ".jsonl");
        var late = TempPath("kms-export-", ".jsonl");
        var target = TempPath("kms-restored-");
        try
        {
            string backup, kept;
            using (var admin = _server.DeploymentAdmin())
            using (var officer = _server.CreateClient(await _server.CreatePrincipalWithTokenAsync("officer", null, "security-officer")))
            {
                await admin.Access.CreateTenantAsync(new CreateTenantRequest { TenantId = "twice" });
                using var manager = _server.CreateClient(await _server.CreatePrincipalWithTokenAsync("waverer", "twice", "key-manager"));
                kept = (await manager.CreateKeyAsync("tenants/twice", "kept")).Name;
                backup = Path.Combine(_server.DataDir, "backups", await ExportBackupAsync(officer));

                // Offboarded, given back, its key kept by its manager (an export then), and
                // offboarded again: the second DeleteTenant scheduled the key kept in between.
                await admin.Access.DeleteTenantAsync(new DeleteTenantRequest { Name = "tenants/twice" });
                await admin.Access.CancelTenantDeletionAsync(new CancelTenantDeletionRequest { Name = "tenants/twice" });
                await manager.Raw.CancelKeyDeletionAsync(new CancelKeyDeletionRequest { Name = kept });
                await using (var file = File.CreateText(early))
                {
                    await officer.ExportAuditAsync(file);
                }

                await admin.Access.DeleteTenantAsync(new DeleteTenantRequest { Name = "tenants/twice" });
                await using (var file = File.CreateText(late))
                {
                    await officer.ExportAuditAsync(file);
                }
            }

            await _server.DisposeAsync();
            await BackupRestore.RunAsync(backup, PublishedAuditKey(), target, [], replace: false, CancellationToken.None, withoutAuditLogs: true);
            await using var dump = await SqliteStore.OpenAsync(new SqliteOptions { DatabasePath = Path.Combine(target, "kms.db") }, default);

            // Both verified; the newest given first: the logs' order is their sequence, not the files'.
            var report = await BackupRestore.ReapplyFromLogsAsync(dump, [late, early], null, PublishedAuditKey(), CancellationToken.None);

            Assert.Equal(["tenants/twice"], report.TenantsDeleting.Select(t => t.Tenant));
            Assert.Equal(Kms.Core.Access.TenantState.Deleting, (await dump.GetTenantAsync(TenantId.Parse("twice"), default))!.State);
            Assert.Equal(KeyState.DestroyScheduled, (await dump.GetKeyAsync(KeyName.Parse(kept, "k"), default))!.State);
            Assert.DoesNotContain(report.Kept, k => k.Resource == kept);
        }
        finally
        {
            RemoveAfterRestore(target, early, late);
        }
    }

    // What happened after the backup, and what a restore must bring back into force.
    private sealed record LaterSchedulings(
        string Backup, string Compromised, byte[] UnderVersion1, byte[] UnderVersion2, DateTimeOffset Version1DestroyTime,
        string Retired, DateTimeOffset RetiredDestroyTime, string Lapsed, string Reprieved, string Suspended, string Resumed)
    {
        // The restored chain's record of them: (operation, resource), ordered.
        public IReadOnlyList<(string Operation, string Resource)> ExpectedEvents =>
        [
            .. new[]
            {
                ("backup/ReapplyScheduling", $"{Compromised}/versions/1"),
                ("backup/ReapplyScheduling", Retired),
                ("backup/ReapplyScheduling", $"{Lapsed}/versions/1"),
                ("backup/ReapplyDisable", $"{Compromised}/versions/2"),
                ("backup/ReapplyDisable", Reprieved),
                ("backup/ReapplyDisable", Suspended),
            }.Order(),
        ];
    }

    // A backup, then: version 1 of "compromised" scheduled for destruction (30 days) and its
    // version 2 scheduled then restored (DISABLED); "retired" scheduled for deletion; version 1
    // of "lapsed" scheduled with a 1-second wait (ended, not carried out: the lifecycle job has
    // not passed); "reprieved" scheduled then cancelled (DISABLED); "suspended" disabled;
    // "resumed" disabled then enabled. The audit is exported to exportPath when given.
    private async Task<LaterSchedulings> ScheduleAfterTheBackupAsync(string? exportPath)
    {
        using var developer = _server.CreateClient();
        using var officer = _server.CreateClient(await _server.CreatePrincipalWithTokenAsync("officer", null, "security-officer"));
        var compromised = (await developer.CreateKeyAsync("tenants/dev", "compromised")).Name;
        var underVersion1 = (await developer.EncryptAsync(compromised, "v1 secret"u8.ToArray())).Ciphertext;
        await developer.RotateKeyAsync(compromised);
        var underVersion2 = (await developer.EncryptAsync(compromised, "v2 secret"u8.ToArray())).Ciphertext;
        await developer.RotateKeyAsync(compromised);
        var retired = (await developer.CreateKeyAsync("tenants/dev", "retired")).Name;
        var lapsed = (await developer.CreateKeyAsync("tenants/dev", "lapsed")).Name;
        await developer.RotateKeyAsync(lapsed);
        var reprieved = (await developer.CreateKeyAsync("tenants/dev", "reprieved")).Name;
        var suspended = (await developer.CreateKeyAsync("tenants/dev", "suspended")).Name;
        var resumed = (await developer.CreateKeyAsync("tenants/dev", "resumed")).Name;
        var backup = Path.Combine(_server.DataDir, "backups", await ExportBackupAsync(officer));

        var version1 = await developer.ScheduleKeyVersionDestructionAsync($"{compromised}/versions/1");
        await developer.ScheduleKeyVersionDestructionAsync($"{compromised}/versions/2");
        await developer.RestoreKeyVersionAsync($"{compromised}/versions/2");
        var retiredKey = await developer.ScheduleKeyDeletionAsync(retired);
        await developer.ScheduleKeyVersionDestructionAsync($"{lapsed}/versions/1", TimeSpan.FromSeconds(1));
        await developer.ScheduleKeyDeletionAsync(reprieved);
        await developer.CancelKeyDeletionAsync(reprieved);
        await developer.DisableKeyAsync(suspended);
        await developer.DisableKeyAsync(resumed);
        await developer.EnableKeyAsync(resumed);
        if (exportPath is not null)
        {
            await using var file = File.CreateText(exportPath);
            await officer.ExportAuditAsync(file);
        }

        return new LaterSchedulings(backup, compromised, underVersion1, underVersion2, version1.DestroyTime.ToDateTimeOffset(),
            retired, retiredKey.DestroyTime.ToDateTimeOffset(), lapsed, reprieved, suspended, resumed);
    }

    // On the restarted server: every scheduling and disabling in force again, as DESTROY_SCHEDULED
    // (not DESTROYED) or DISABLED; the undone ones not; and RestoreKeyVersion / CancelKeyDeletion
    // take a re-applied scheduling back. exact: the restore's end, when the destroy times are the
    // replaced database's (else they are counted from the events).
    private async Task AssertInForceAgainAsync(LaterSchedulings later, DateTimeOffset restoring, DateTimeOffset? exact)
    {
        using var client = _server.CreateClient();
        var version1 = await client.GetKeyVersionAsync($"{later.Compromised}/versions/1");
        Assert.Equal(Kms.Contracts.V1.KeyState.DestroyScheduled, version1.State);
        var retired = await client.GetKeyAsync(later.Retired);
        Assert.Equal(Kms.Contracts.V1.KeyState.DestroyScheduled, retired.State);
        var lapsed = await client.GetKeyVersionAsync($"{later.Lapsed}/versions/1");
        Assert.Equal(Kms.Contracts.V1.KeyState.DestroyScheduled, lapsed.State);
        if (exact is { } restored)
        {
            Assert.Equal(later.Version1DestroyTime, version1.DestroyTime.ToDateTimeOffset());
            Assert.Equal(later.RetiredDestroyTime, retired.DestroyTime.ToDateTimeOffset());
            Assert.InRange(lapsed.DestroyTime.ToDateTimeOffset(), restoring.AddDays(7).AddMilliseconds(-1), restored.AddDays(7));
        }
        else
        {
            Assert.InRange(version1.DestroyTime.ToDateTimeOffset(), later.Version1DestroyTime, later.Version1DestroyTime.AddDays(1));
            Assert.InRange(retired.DestroyTime.ToDateTimeOffset(), later.RetiredDestroyTime, later.RetiredDestroyTime.AddDays(1));
            Assert.True(lapsed.DestroyTime.ToDateTimeOffset() >= restoring.AddDays(7), $"{lapsed.DestroyTime} is sooner than 7 days after the restore");
        }

        Assert.Equal(Kms.Contracts.V1.KeyState.Disabled, (await client.GetKeyVersionAsync($"{later.Compromised}/versions/2")).State);
        Assert.Equal(Kms.Contracts.V1.KeyState.Disabled, (await client.GetKeyAsync(later.Reprieved)).State);
        Assert.Equal(Kms.Contracts.V1.KeyState.Disabled, (await client.GetKeyAsync(later.Suspended)).State);
        Assert.Equal(Kms.Contracts.V1.KeyState.Enabled, (await client.GetKeyAsync(later.Resumed)).State);

        // A DESTROY_SCHEDULED (or DISABLED) version decrypts nothing (docs/lifecycle.md: a version
        // that is not ENABLED is FAILED_PRECONDITION naming its state).
        var scheduled = await Assert.ThrowsAsync<RpcException>(() => client.DecryptAsync(later.UnderVersion1));
        Assert.Equal((StatusCode.FailedPrecondition, true), (scheduled.Status.StatusCode, scheduled.Status.Detail.Contains("DESTROY_SCHEDULED", StringComparison.Ordinal)));
        var disabled = await Assert.ThrowsAsync<RpcException>(() => client.DecryptAsync(later.UnderVersion2));
        Assert.Contains("DISABLED", disabled.Status.Detail, StringComparison.Ordinal);

        // Reversible: restored, enabled, it decrypts again; the deletion can be cancelled.
        Assert.Equal(Kms.Contracts.V1.KeyState.Disabled, (await client.RestoreKeyVersionAsync($"{later.Compromised}/versions/1")).State);
        await client.EnableKeyVersionAsync($"{later.Compromised}/versions/1");
        using (var opened = await client.DecryptAsync(later.UnderVersion1))
        {
            Assert.Equal("v1 secret"u8.ToArray(), opened.Plaintext.ToArray());
        }

        Assert.Equal(Kms.Contracts.V1.KeyState.Disabled, (await client.CancelKeyDeletionAsync(later.Retired)).State);
    }

    // The re-applied schedulings and disablings the database's audit chain records: (operation, resource), ordered.
    private static async Task<IReadOnlyList<(string Operation, string Resource)>> ReappliedEventsAsync(string database)
    {
        await using var connection = new Microsoft.Data.Sqlite.SqliteConnection($"Data Source={database};Mode=ReadOnly;Pooling=False");
        await connection.OpenAsync();
        await using var command = connection.CreateCommand();
        command.CommandText = "SELECT operation, resource FROM audit_events WHERE operation IN ('backup/ReapplyScheduling', 'backup/ReapplyDisable')";
        var found = new List<(string, string)>();
        await using var reader = await command.ExecuteReaderAsync();
        while (await reader.ReadAsync())
        {
            found.Add((reader.GetString(0), reader.GetString(1)));
        }

        return [.. found.Order()];
    }

    // An EXPORT_BACKUP request approved by alice and carol: the backup's id.
    // A key with two versions, a backup, then the key's version 1 destroyed and the audit exported
    // to a new file (the caller deletes it): the backup's directory, the key and the export's path.
    private async Task<(string Backup, string Key, string ExportPath)> BackupThenDestroyFirstVersionAsync(string keyId)
    {
        var exportPath = TempPath("kms-export-", ".jsonl");
        using var developer = _server.CreateClient();
        using var officer = _server.CreateClient(await _server.CreatePrincipalWithTokenAsync("officer", null, "security-officer"));
        var key = (await developer.CreateKeyAsync("tenants/dev", keyId)).Name;
        await developer.RotateKeyAsync(key);
        var backup = Path.Combine(_server.DataDir, "backups", await ExportBackupAsync(officer));
        await DestroyFirstVersionNowAsync(developer, officer, key);
        await using var file = File.CreateText(exportPath);
        await officer.ExportAuditAsync(file);
        return (backup, key, exportPath);
    }

    private async Task<string> ExportBackupAsync(Kms.Client.KmsClient officer)
    {
        var export = await officer.CreateQuorumRequestAsync(new CreateQuorumRequestRequest { Operation = Kms.Contracts.V1.QuorumOperation.ExportBackup });
        await ApproveAsync(officer, "alice", export.Name);
        Assert.True((await ApproveAsync(officer, "carol", export.Name)).Executed);
        return export.Id;
    }

    // Version 1 of the key destroyed at once, approved by bob and carol: the request's name.
    private async Task<string> DestroyFirstVersionNowAsync(Kms.Client.KmsClient developer, Kms.Client.KmsClient officer, string key)
    {
        var destroy = await developer.RequestDestroyKeyVersionNowAsync($"{key}/versions/1");
        await ApproveAsync(officer, "bob", destroy.Name);
        Assert.True((await ApproveAsync(officer, "carol", destroy.Name)).Executed);
        return destroy.Name;
    }

    private byte[] PublishedAuditKey() => PublicKeyOf(_server.DataDir);

    // The audit key a data directory's server published (audit/signing-key.pem), DER.
    private static byte[] PublicKeyOf(string dataDir)
    {
        using var key = ECDsa.Create();
        key.ImportFromPem(File.ReadAllText(Path.Combine(dataDir, "audit", "signing-key.pem")));
        return key.ExportSubjectPublicKeyInfo();
    }

    private async Task<ApproveQuorumRequestResponse> ApproveAsync(Kms.Client.KmsClient officer, string name, string request)
    {
        using var approver = QuorumApprover.FromKey(ECDsa.Create(_officers.KeyOf(name).ExportParameters(true)));
        return await approver.ApproveAsync(officer, await approver.PrepareAsync(officer, request));
    }

    // A fresh path in the temporary directory: PREFIX, 12 random hex digits, EXTENSION.
    private static string TempPath(string prefix, string extension = "") =>
        Path.Combine(Path.GetTempPath(), prefix + Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(6)) + extension);

    // After a restore into TARGET: its files, the pooled connections to its database, the directory.
    private static void RemoveAfterRestore(string target, params string[] files)
    {
        foreach (var file in files)
        {
            File.Delete(file);
        }

        SqliteStore.ReleasePooledConnections();
        if (Directory.Exists(target))
        {
            Directory.Delete(target, recursive: true);
        }
    }
}
