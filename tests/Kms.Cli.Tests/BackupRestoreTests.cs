using System.Security.Cryptography;
using Grpc.Core;
using Kms.Cli.Backup;
using Kms.Client.Quorum;
using Kms.Contracts.V1;
using Kms.Core.Errors;
using Kms.Core.Quorum;
using Kms.Storage.Sqlite;
using Kms.Testing;

namespace Kms.Cli.Tests;

/// <summary>
/// <c>kms backup restore</c> over an existing data directory (SoftHSM, in-process server): the
/// database being replaced is the record of later destructions; without <c>--replace</c>
/// nothing changes.
/// </summary>
public sealed class BackupRestoreTests : IAsyncLifetime, IDisposable
{
    private readonly TestOfficers _officers = new("alice", "bob", "carol");
    private readonly string _genesisPath = Path.Combine(Path.GetTempPath(), "kms-genesis-" + Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(6)) + ".json");
    private KmsTestServer _server = null!;

    public async Task InitializeAsync()
    {
        GenesisFile.Write(_genesisPath, OfficerSet.CreateGenesis(_officers.Select("alice", "bob", "carol"), 2));
        _server = await KmsTestServer.StartAsync(null, null, "dev", $"--Kms:Quorum:GenesisFile={_genesisPath}");
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
        using (var developer = _server.CreateClient())
        using (var officer = _server.CreateClient(await _server.CreatePrincipalWithTokenAsync("officer", null, "security-officer")))
        {
            var key = await developer.CreateKeyAsync("tenants/dev", "ledger");
            doomed = (await developer.EncryptAsync(key.Name, "v1 secret"u8.ToArray())).Ciphertext;
            await developer.RotateKeyAsync(key.Name);
            kept = (await developer.EncryptAsync(key.Name, "v2 secret"u8.ToArray())).Ciphertext;

            var export = await officer.CreateQuorumRequestAsync(new CreateQuorumRequestRequest { Operation = Kms.Contracts.V1.QuorumOperation.ExportBackup });
            await ApproveAsync(officer, "alice", export.Name);
            Assert.True((await ApproveAsync(officer, "carol", export.Name)).Executed);
            backup = Path.Combine(_server.DataDir, "backups", export.Id);

            var destroy = await developer.RequestDestroyKeyVersionNowAsync($"{key.Name}/versions/1");
            await ApproveAsync(officer, "bob", destroy.Name);
            Assert.True((await ApproveAsync(officer, "carol", destroy.Name)).Executed);
        }

        await _server.DisposeAsync();
        var database = Path.Combine(_server.DataDir, "kms.db");
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

        _server = await _server.RestartAsync();
        using var after = _server.CreateClient();
        using (var opened = await after.DecryptAsync(kept))
        {
            Assert.Equal("v2 secret"u8.ToArray(), opened.Plaintext.ToArray());
        }

        var destroyed = await Assert.ThrowsAsync<RpcException>(() => after.DecryptAsync(doomed));
        Assert.Contains("DESTROYED", destroyed.Status.Detail, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Restore_FromAVerifiedAuditExport_ReappliesItsDestruction_AnAlteredExportIsRefused_NothingWritten()
    {
        string backup;
        var exportPath = Path.Combine(Path.GetTempPath(), "kms-export-" + Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(6)) + ".jsonl");
        using (var developer = _server.CreateClient())
        using (var officer = _server.CreateClient(await _server.CreatePrincipalWithTokenAsync("officer", null, "security-officer")))
        {
            var key = await developer.CreateKeyAsync("tenants/dev", "payroll");
            await developer.RotateKeyAsync(key.Name);
            var export = await officer.CreateQuorumRequestAsync(new CreateQuorumRequestRequest { Operation = Kms.Contracts.V1.QuorumOperation.ExportBackup });
            await ApproveAsync(officer, "alice", export.Name);
            Assert.True((await ApproveAsync(officer, "carol", export.Name)).Executed);
            backup = Path.Combine(_server.DataDir, "backups", export.Id);

            var destroy = await developer.RequestDestroyKeyVersionNowAsync($"{key.Name}/versions/1");
            await ApproveAsync(officer, "bob", destroy.Name);
            Assert.True((await ApproveAsync(officer, "carol", destroy.Name)).Executed);
            await using var file = File.CreateText(exportPath);
            await officer.ExportAuditAsync(file);
        }

        var auditKey = PublishedAuditKey();
        var lines = await File.ReadAllLinesAsync(exportPath);
        var tamperedPath = exportPath + ".tampered";
        var victim = Array.FindIndex(lines, l => l.StartsWith("{\"event\"", StringComparison.Ordinal) && l.Contains("\"OK\"", StringComparison.Ordinal));
        lines[victim] = lines[victim].Replace("\"OK\"", "\"PERMISSION_DENIED\"", StringComparison.Ordinal);
        await File.WriteAllLinesAsync(tamperedPath, lines);
        var target = Path.Combine(Path.GetTempPath(), "kms-restored-" + Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(6)));
        try
        {
            var refused = await Assert.ThrowsAsync<KmsException>(() => BackupRestore.RunAsync(backup, auditKey, target, [exportPath, tamperedPath], replace: false, CancellationToken.None));
            Assert.Equal(KmsErrorCode.PermissionDenied, refused.Code);
            Assert.Contains(Path.GetFileName(tamperedPath), refused.Message, StringComparison.Ordinal);
            Assert.Contains("does not verify against the audit key", refused.Message, StringComparison.Ordinal);
            Assert.False(File.Exists(Path.Combine(target, "kms.db")));

            var report = await BackupRestore.RunAsync(backup, auditKey, target, [exportPath], replace: false, CancellationToken.None);
            var (version, source) = Assert.Single(report.Reapplied);
            Assert.Equal("tenants/dev/keys/payroll/versions/1", version);
            Assert.StartsWith(Path.GetFileName(exportPath) + " event ", source, StringComparison.Ordinal);
        }
        finally
        {
            File.Delete(exportPath);
            File.Delete(tamperedPath);
            if (Directory.Exists(target))
            {
                Directory.Delete(target, recursive: true);
            }
        }
    }

    private byte[] PublishedAuditKey()
    {
        using var key = ECDsa.Create();
        key.ImportFromPem(File.ReadAllText(Path.Combine(_server.DataDir, "audit", "signing-key.pem")));
        return key.ExportSubjectPublicKeyInfo();
    }

    private async Task<ApproveQuorumRequestResponse> ApproveAsync(Kms.Client.KmsClient officer, string name, string request)
    {
        using var approver = QuorumApprover.FromKey(ECDsa.Create(_officers.KeyOf(name).ExportParameters(true)));
        return await approver.ApproveAsync(officer, await approver.PrepareAsync(officer, request));
    }
}
