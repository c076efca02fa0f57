using System.Security.Cryptography;
using System.Text;
using global::Grpc.Core;
using Kms.Client.Quorum;
using Kms.Contracts.V1;
using Kms.Core.Audit;
using Kms.Core.Backup;
using Kms.Core.Errors;
using Kms.Core.Quorum;
using Kms.Testing;
using Microsoft.Extensions.DependencyInjection;

namespace Kms.Server.Tests;

/// <summary>
/// EXPORT_BACKUP through real gRPC against SoftHSM: the request executes when 2 of 3 officers
/// approve, and the server writes a consistent snapshot, its manifest and the manifest's
/// signature by the audit key; tampering with any file, or another key, is refused.
/// </summary>
public sealed class BackupExportTests : IAsyncLifetime, IDisposable
{
    private readonly TestOfficers _officers = new("alice", "bob", "carol");
    private readonly string _genesisPath = Path.Combine(Path.GetTempPath(), "kms-genesis-" + Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(6)) + ".json");
    private KmsTestServer _server = null!;
    private Kms.Client.KmsClient _keyManager = null!;
    private Kms.Client.KmsClient _officer = null!;

    public async Task InitializeAsync()
    {
        GenesisFile.Write(_genesisPath, OfficerSet.CreateGenesis(_officers.Select("alice", "bob", "carol"), 2));
        _server = await KmsTestServer.StartAsync(null, null, "dev", $"--Kms:Quorum:GenesisFile={_genesisPath}");
        _keyManager = _server.CreateClient();
        _officer = _server.CreateClient(await _server.CreatePrincipalWithTokenAsync("officer", null, "security-officer"));
    }

    public async Task DisposeAsync()
    {
        _keyManager.Dispose();
        _officer.Dispose();
        await _server.DisposeAsync();
        File.Delete(_genesisPath);
    }

    public void Dispose() => _officers.Dispose();

    [Fact]
    public async Task ExportBackup_TwoOfThreeApprove_SignedSnapshotWritten_VerifiesWithPublishedKey_AndIsAudited()
    {
        var key = await _keyManager.CreateKeyAsync("tenants/dev", "backed-up");
        var plaintext = Encoding.UTF8.GetBytes("plaintext that must not be in a backup");
        await _keyManager.EncryptAsync(key.Name, plaintext);

        // Claim 62 — never a plaintext key: a data key handed out, and material imported (BYOK)
        // whose value the test knows, are in the backup only wrapped, if at all.
        using var dataKey = await _keyManager.GenerateDataKeyAsync(key.Name);
        var handedOut = dataKey.Plaintext.ToArray();
        var byok = await _keyManager.CreateKeyAsync("tenants/dev", "byok-backed-up", new Key { Purpose = KeyPurpose.EncryptDecrypt, AllowImport = true });
        var job = await _keyManager.CreateImportJobAsync("tenants/dev", "backed-up-job", ImportMethod.RsaOaep3072Sha1Aes256);
        var material = RandomNumberGenerator.GetBytes(32);
        await _keyManager.ImportKeyVersionAsync(byok.Name, job.Name, Kms.Client.KeyImport.Wrap(job.PublicKeyDer.Span, job.ImportMethod, material));

        // Nor a credential or a caller's secret: an API token in use (its secret is kept as a
        // SHA-256 only), a context value, a value MACed for a blind index.
        var contextValue = "CANARY-BACKUP-CONTEXT-81c2";
        await _keyManager.EncryptAsync(key.Name, plaintext, new Dictionary<string, string> { ["patient"] = contextValue });
        var indexedValue = "CANARY-BACKUP-INDEXED-4f0a";
        var macVersion = (await _keyManager.CreateKeyAsync("tenants/dev", "backed-up-index", KeyPurpose.Mac)).Primary.Name;
        await new Kms.Client.BlindIndex(_keyManager, macVersion, "patients.email", 32).ComputeAsync(indexedValue);
        var token = await _server.CreatePrincipalWithTokenAsync("backed-up-bot", "dev", "key-user");
        using (var bot = _server.CreateClient(token))
        {
            await bot.GenerateRandomAsync(8);
        }

        var tokenSecret = token[(4 + 16 + 1)..];
        var canaries = new Dictionary<string, byte[]>
        {
            ["api token"] = Encoding.ASCII.GetBytes(token),
            ["api token secret"] = Encoding.ASCII.GetBytes(tokenSecret),
            ["api token secret, raw"] = System.Buffers.Text.Base64Url.DecodeFromChars(tokenSecret),
            ["context value"] = Encoding.UTF8.GetBytes(contextValue),
            ["blind-indexed value"] = Encoding.UTF8.GetBytes(indexedValue),
            ["data key"] = handedOut,
            ["imported material"] = material,
        };

        var request = await _officer.CreateQuorumRequestAsync(new CreateQuorumRequestRequest { Operation = Kms.Contracts.V1.QuorumOperation.ExportBackup });
        Assert.False((await ApproveAsync("alice", request.Name)).Executed);
        var directory = Path.Combine(_server.DataDir, "backups", request.Id);
        Assert.False(Directory.Exists(directory));
        Assert.True((await ApproveAsync("bob", request.Name)).Executed);

        var manifest = BackupManifest.Verify(directory, PublishedAuditKey());
        Assert.Equal(request.Name, manifest.Request);
        Assert.True(manifest.AuditHead.Sequence > 0);

        // The signed manifest names what the snapshot is: its last audit event (a restore re-applies
        // what the logs record after it) and the domain key its material is wrapped under.
        Assert.Equal(await LastAuditEventAsync(Path.Combine(directory, BackupManifest.SnapshotFile)), manifest.AuditHead);
        Assert.Equal(_server.Services.GetRequiredService<Kms.Core.Ports.IHsm>().DomainKeyCheckValue, manifest.DomainKcv);
        var snapshot = await File.ReadAllBytesAsync(Path.Combine(directory, BackupManifest.SnapshotFile));
        Assert.Equal(-1, snapshot.AsSpan().IndexOf(plaintext));
        Assert.Equal(-1, snapshot.AsSpan().IndexOf(handedOut));
        Assert.Equal(-1, snapshot.AsSpan().IndexOf(Encoding.ASCII.GetBytes(Convert.ToBase64String(handedOut))));
        Assert.Equal(-1, snapshot.AsSpan().IndexOf(Encoding.ASCII.GetBytes(Convert.ToHexStringLower(handedOut))));
        Assert.Equal(-1, snapshot.AsSpan().IndexOf(material));
        Assert.Equal(-1, snapshot.AsSpan().IndexOf(Encoding.ASCII.GetBytes(Convert.ToBase64String(material))));
        Assert.Equal(-1, snapshot.AsSpan().IndexOf(Encoding.ASCII.GetBytes(Convert.ToHexStringLower(material))));

        foreach (var file in Directory.GetFiles(directory))
        {
            var content = await File.ReadAllBytesAsync(file);
            foreach (var (name, secret) in canaries)
            {
                foreach (var form in new[] { secret, Encoding.ASCII.GetBytes(Convert.ToHexStringLower(secret)), Encoding.ASCII.GetBytes(Convert.ToHexString(secret)),
                    Encoding.ASCII.GetBytes(Convert.ToBase64String(secret)), Encoding.ASCII.GetBytes(System.Buffers.Text.Base64Url.EncodeToString(secret)) })
                {
                    Assert.False(content.AsSpan().IndexOf(form) >= 0, $"{name} found in {Path.GetFileName(file)}");
                }
            }
        }

        // Claim 115: what the job imported is in the snapshot with the version (a restore keeps refusing it).
        Assert.Matches("^[0-9a-f]{64}$", await ImportFingerprintAsync(Path.Combine(directory, BackupManifest.SnapshotFile)));
        Assert.Equal(await ImportFingerprintAsync(_server.DatabasePath), await ImportFingerprintAsync(Path.Combine(directory, BackupManifest.SnapshotFile)));

        using var auditor = _server.CreateClient(await _server.CreatePrincipalWithTokenAsync("auditor", null, "security-officer"));
        var events = await auditor.ListAuditEventsAsync(new ListAuditEventsRequest { Resource = "backups/" + request.Id }).ToListAsync();
        Assert.Contains(events, e => e.Operation == "quorum/EXPORT_BACKUP" && e.Outcome == "OK");
        Assert.Contains(events, e => e.Operation == "backup/Export" && e.Outcome == "OK" && e.Sequence > manifest.AuditHead.Sequence);
        if (!OperatingSystem.IsWindows())
        {
            Assert.Equal(UnixFileMode.UserRead | UnixFileMode.UserWrite, File.GetUnixFileMode(Path.Combine(directory, BackupManifest.SnapshotFile)));
        }
    }

    private static async Task<string?> ImportFingerprintAsync(string database)
    {
        await using var connection = new Microsoft.Data.Sqlite.SqliteConnection($"Data Source={database};Mode=ReadOnly;Pooling=False");
        await connection.OpenAsync();
        await using var command = connection.CreateCommand();
        command.CommandText = "SELECT import_fingerprint FROM key_versions WHERE tenant = 'dev' AND key_id = 'byok-backed-up' AND version = 2";
        return await command.ExecuteScalarAsync() as string;
    }

    [Fact]
    public async Task Verify_TamperedSnapshotOrManifest_OrAnotherKey_PermissionDenied()
    {
        var request = await _officer.CreateQuorumRequestAsync(new CreateQuorumRequestRequest { Operation = Kms.Contracts.V1.QuorumOperation.ExportBackup });
        await ApproveAsync("alice", request.Name);
        await ApproveAsync("carol", request.Name);
        var original = Path.Combine(_server.DataDir, "backups", request.Id);
        var key = PublishedAuditKey();

        var snapshot = Copy(original);
        var db = Path.Combine(snapshot, BackupManifest.SnapshotFile);
        var bytes = await File.ReadAllBytesAsync(db);
        bytes[^100] ^= 1;
        await File.WriteAllBytesAsync(db, bytes);
        Assert.Contains("is not the snapshot the signed manifest names", Refused(snapshot, key), StringComparison.Ordinal);

        var manifest = Copy(original);
        var json = Path.Combine(manifest, BackupManifest.ManifestFile);
        await File.WriteAllTextAsync(json, (await File.ReadAllTextAsync(json)).Replace("\"schema_version\": ", "\"schema_version\": 1", StringComparison.Ordinal));
        Assert.Contains("does not verify", Refused(manifest, key), StringComparison.Ordinal);

        using var other = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        Assert.Contains("does not verify", Refused(original, other.ExportSubjectPublicKeyInfo()), StringComparison.Ordinal);
        BackupManifest.Verify(original, key);
    }

    [Fact]
    public async Task ExportBackup_LastApproverCancels_ExecutedRequestStillGetsItsBackup()
    {
        // The last approval (carol's) is cancelled after a while, until one lands and executes the
        // request though its call went away: its backup must still be written (the export used to
        // run under that call's cancellation and stop half-way). The wait is doubled from 1 ms while
        // the approval comes too early to land, then bisected between the longest that was too early
        // and the shortest that answered before its cancel, whose export ran with the call open.
        var (tooEarly, tooLate) = (0.0, double.PositiveInfinity);
        var tries = new List<string>();
        for (var afterMs = 1.0; tries.Count < 40; afterMs = double.IsPositiveInfinity(tooLate) ? afterMs * 2 : (tooEarly + tooLate) / 2)
        {
            var request = await _officer.CreateQuorumRequestAsync(new CreateQuorumRequestRequest { Operation = Kms.Contracts.V1.QuorumOperation.ExportBackup });
            await ApproveAsync("alice", request.Name);
            using var carol = QuorumApprover.FromKey(ECDsa.Create(_officers.KeyOf("carol").ExportParameters(true)));
            using var bob = QuorumApprover.FromKey(ECDsa.Create(_officers.KeyOf("bob").ExportParameters(true)));
            var carols = await carol.PrepareAsync(_officer, request.Name);
            var bobs = await bob.PrepareAsync(_officer, request.Name);
            using (var cancel = new CancellationTokenSource(TimeSpan.FromMilliseconds(afterMs)))
            {
                try
                {
                    await carol.ApproveAsync(_officer, carols, cancel.Token);
                    tooLate = Math.Min(tooLate, afterMs);
                    tries.Add($"{afterMs:0.##} ms: answered");
                    continue;
                }
                catch (Exception e) when (e is OperationCanceledException or RpcException { StatusCode: StatusCode.Cancelled or StatusCode.DeadlineExceeded })
                {
                    // Gone before the answer: the approval may have landed, may be landing, or may never land.
                }
            }

            // Bob's approval settles which, without a wait: the store takes the two one at a time,
            // and the later one is refused once the request has executed. Bob's executing it means
            // carol's had not landed (nor will, now).
            try
            {
                await bob.ApproveAsync(_officer, bobs);
                tooEarly = Math.Max(tooEarly, afterMs);
                tries.Add($"{afterMs:0.##} ms: cancelled before it landed");
                continue;
            }
            catch (RpcException e) when (e.StatusCode == StatusCode.FailedPrecondition && e.Status.Detail.Contains("was executed", StringComparison.Ordinal))
            {
            }

            var executed = await _officer.GetQuorumRequestAsync(request.Name);
            Assert.Equal(carol.Fingerprint, executed.Approvals[^1].OfficerFingerprint);

            // Written in the background once executed, and audited either way (backup/Export, after
            // the files): its event is the end of the export. 60 s is a hang guard.
            var events = new List<AuditEventInfo>();
            var deadline = DateTime.UtcNow.AddSeconds(60);
            while (events.Count == 0 && DateTime.UtcNow < deadline)
            {
                await Task.Delay(50);
                events = await _officer.ListAuditEventsAsync(new ListAuditEventsRequest { Resource = "backups/" + request.Id })
                    .Where(e => e.Operation == Kms.Server.Backup.BackupExporter.Operation).ToListAsync();
            }

            Assert.Equal("OK", Assert.Single(events).Outcome);
            Assert.Equal(request.Name, BackupManifest.Verify(Path.Combine(_server.DataDir, "backups", request.Id), PublishedAuditKey()).Request);
            return;
        }

        Assert.Fail("no cancelled approval executed its request, so the case was never exercised: " + string.Join("; ", tries));
    }

    [Theory]
    [InlineData("a file")]
    [InlineData("no permission")]
    public async Task ExportBackup_DiskRefusesTheBackup_FailedPreconditionSaysItExecuted_NotSentAgain(string refusal)
    {
        // The export's first write fails: a file where the backups directory goes (an I/O
        // error), or a directory that refuses it (a permission error; root is refused by sysfs).
        var backups = Path.Combine(_server.DataDir, "backups");
        if (Directory.Exists(backups))
        {
            Directory.Delete(backups);
        }

        if (refusal == "a file")
        {
            await File.WriteAllTextAsync(backups, "not a directory");
        }
        else
        {
            File.CreateSymbolicLink(backups, "/sys/kernel");
        }

        var request = await _officer.CreateQuorumRequestAsync(new CreateQuorumRequestRequest { Operation = Kms.Contracts.V1.QuorumOperation.ExportBackup });
        await ApproveAsync("alice", request.Name);

        var e = await Assert.ThrowsAsync<RpcException>(() => ApproveAsync("bob", request.Name));
        Assert.True(e.StatusCode == StatusCode.FailedPrecondition, e.Status.ToString());
        Assert.StartsWith($"{request.Name} executed, but its backup could not be written", e.Status.Detail, StringComparison.Ordinal);

        // The path and the OS error are the operator's, in the server log (1150); not the caller's.
        Assert.DoesNotContain(_server.DataDir, e.Status.Detail, StringComparison.Ordinal);
        Assert.DoesNotContain('/', e.Status.Detail.Replace(request.Name, "", StringComparison.Ordinal));
        Assert.Contains(_server.Logs.Events, l => l.StartsWith("Error", StringComparison.Ordinal) && l.Contains("could not be \"written\"", StringComparison.Ordinal));
        Assert.Equal(Kms.Contracts.V1.QuorumRequestState.Executed, (await _officer.GetQuorumRequestAsync(request.Name)).State);
        File.Delete(backups); // the file, or the link (never what it points at)
    }

    private static string Refused(string directory, byte[] key)
    {
        var refused = Assert.Throws<KmsException>(() => BackupManifest.Verify(directory, key));
        Assert.Equal(KmsErrorCode.PermissionDenied, refused.Code);
        return refused.Message;
    }

    // The last audit event inside a snapshot, read from a copy so the backup is not touched.
    private static async Task<AuditHead> LastAuditEventAsync(string snapshot)
    {
        var copy = Path.Combine(Directory.CreateTempSubdirectory("kms-snapshot-").FullName, "kms.db");
        File.Copy(snapshot, copy);
        await using var connection = new Microsoft.Data.Sqlite.SqliteConnection($"Data Source={copy};Mode=ReadOnly;Pooling=False");
        await connection.OpenAsync();
        await using var command = connection.CreateCommand();
        command.CommandText = "SELECT seq, hash FROM audit_events ORDER BY seq DESC LIMIT 1";
        await using var reader = await command.ExecuteReaderAsync();
        Assert.True(await reader.ReadAsync());
        return new AuditHead(reader.GetInt64(0), reader.GetString(1));
    }

    private static string Copy(string directory)
    {
        var copy = Directory.CreateTempSubdirectory("kms-backup-copy-").FullName;
        foreach (var file in Directory.GetFiles(directory))
        {
            File.Copy(file, Path.Combine(copy, Path.GetFileName(file)));
        }

        return copy;
    }

    private byte[] PublishedAuditKey()
    {
        using var key = ECDsa.Create();
        key.ImportFromPem(File.ReadAllText(Path.Combine(_server.DataDir, "audit", "signing-key.pem")));
        return key.ExportSubjectPublicKeyInfo();
    }

    private async Task<ApproveQuorumRequestResponse> ApproveAsync(string officer, string name)
    {
        using var approver = QuorumApprover.FromKey(ECDsa.Create(_officers.KeyOf(officer).ExportParameters(true)));
        var pending = await approver.PrepareAsync(_officer, name);
        return await approver.ApproveAsync(_officer, pending);
    }
}
