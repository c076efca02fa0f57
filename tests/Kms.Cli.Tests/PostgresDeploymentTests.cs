using System.Diagnostics;
using System.Text;
using System.Text.Json.Nodes;
using Kms.Cli.Commands;
using Kms.Client.Audit;
using Kms.Contracts.V1;
using Kms.Core.Quorum;
using Kms.Testing;
using Npgsql;
using Xunit.Abstractions;

namespace Kms.Cli.Tests;

/// <summary>
/// The ceremony on a PostgreSQL deployment, with real processes only: <c>kms ceremony
/// create-domain --storage-provider postgres</c> records the pinned domain key, the audit key and
/// the ceremony's events into the database, and a production node serves from it; then the
/// disaster-recovery drill from a <c>pg_dump -Fc</c> and two of three custodian shares.
/// </summary>
public sealed class PostgresDeploymentTests(ITestOutputHelper output) : IAsyncLifetime, IDisposable
{
    private const string DomainId = "dk-pg-drill";
    private const string PgBin = "/usr/lib/postgresql/15/bin";
    private readonly string _dir = Directory.CreateTempSubdirectory("kms-pg-dr-").FullName;
    private readonly TestOfficers _officers = new("olga", "oscar");
    private PostgresTestDatabase _siteA = null!;
    private PostgresTestDatabase? _restored;
    private PostgresTestDatabase? _restoredAgain;

    public async Task InitializeAsync() => _siteA = await PostgresTestDatabase.CreateAsync();

    public async Task DisposeAsync()
    {
        await _siteA.DisposeAsync();
        if (_restored is not null)
        {
            await _restored.DisposeAsync();
        }

        if (_restoredAgain is not null)
        {
            await _restoredAgain.DisposeAsync();
        }

        Directory.Delete(_dir, recursive: true);
    }

    public void Dispose() => _officers.Dispose();

    [Fact]
    public async Task DrDrill_PgDumpRestoredIntoANewDatabase_TwoSharesIntoANewToken_OldCiphertextsDecrypt_AuditChainVerifies()
    {
        Assert.True(File.Exists(SoftHsm.ModulePath), $"SoftHSM is not installed ({SoftHsm.ModulePath}); ./test.sh installs it");
        Assert.True(File.Exists(Path.Combine(PgBin, "pg_dump")), $"PostgreSQL client tools are not installed in {PgBin}");
        await SetUpTokensAsync();

        // A password the trust-authenticated test cluster ignores, to show it is never printed or recorded.
        const string Password = "never-shown-7f3a";
        await WriteSecretAsync("site-a.conn", _siteA.ConnectionString + $";Password={Password}");

        // The ceremony on site A's token records into site A's PostgreSQL database, not into a kms.db.
        var created = await Ok(["ceremony", "create-domain", .. Hsm("site-a"), "--custodian", "alice", "--custodian", "bob", "--custodian", "carol", "--threshold", "2",
            "--shares-dir", P("shares"), "--data-dir", P("ceremony-a"), "--domain-id", DomainId,
            "--passphrase-file", $"alice={P("alice")}", "--passphrase-file", $"bob={P("bob")}", "--passphrase-file", $"carol={P("carol")}",
            "--officer", $"olga={P("olga.pub")}", "--officer", $"oscar={P("oscar.pub")}", "--officer-threshold", "2",
            "--storage-provider", "postgres", "--postgres-connection-file", P("site-a.conn"),
            "--allow-network", "--insecure-test-kdf", "--output", "json"]);
        var ceremony = JsonNode.Parse(created.Out)!;
        var kcv = ceremony["check_value"]!.GetValue<string>();
        Assert.Equal("postgres", ceremony["server_configuration"]!["Storage:Provider"]!.GetValue<string>());
        Assert.False(File.Exists(P("ceremony-a/kms.db")), "the ceremony wrote a SQLite database beside the PostgreSQL one");
        Assert.Equal(kcv, await _siteA.ScalarAsync("SELECT value FROM settings WHERE name = 'domain_key.check_value'"));
        var transcript = await File.ReadAllTextAsync(ceremony["transcript"]!.GetValue<string>());
        Assert.Contains($"postgres 127.0.0.1:{new NpgsqlConnectionStringBuilder(_siteA.ConnectionString).Port}/{_siteA.Name}", transcript, StringComparison.Ordinal);
        Assert.DoesNotContain(Password, transcript, StringComparison.Ordinal);
        Assert.DoesNotContain(Password, created.Out + created.Error, StringComparison.Ordinal);
        var again = await Kms(["ceremony", "create-domain", .. Hsm("site-a"), "--custodians", "3", "--threshold", "2", "--shares-dir", P("shares-again"), "--data-dir", P("ceremony-again"),
            "--officer", $"olga={P("olga.pub")}", "--officer", $"oscar={P("oscar.pub")}", "--officer-threshold", "2", "--storage-provider", "postgres", "--postgres-connection-file", P("site-a.conn"), "--allow-network", "--insecure-test-kdf"]);
        Assert.True(again.ExitCode == 5, again.ToString());
        Assert.Contains($"pinned to domain key {kcv}", again.Error, StringComparison.Ordinal);
        var pinnedAuditKey = CeremonyCommands.PublicKeyFromPem(await File.ReadAllTextAsync(P("ceremony-a/audit/signing-key.pem")));
        string[] quorum = [$"--Kms:Quorum:GenesisFile={P("ceremony-a/quorum/genesis.json")}", $"--Kms:Quorum:GenesisSha256={ceremony["officer_set_hash"]!.GetValue<string>()}"];
        Directory.CreateDirectory(P("offsite"));
        string[] siem = [$"--Kms:Audit:StreamPath={P("offsite/siem.jsonl")}"];

        // A production node on site A serves from that database (its data directory holds no database).
        var ciphertexts = new List<(byte[] Plaintext, byte[] Ciphertext)>();
        string developerToken;
        string officerToken;
        await using (var siteA = await ServerProcess.StartAsync(P("node-a"), P("softhsm2.conf"), "site-a", P("user.pin"), DomainId, [.. Postgres("site-a.conn"), .. quorum, .. siem]))
        {
            (developerToken, officerToken) = await siteA.BootstrapAsync("dev");
            using var developer = siteA.CreateClient(developerToken);
            foreach (var id in new[] { "orders", "payroll" })
            {
                var key = await developer.CreateKeyAsync("tenants/dev", id);
                for (var i = 0; i < 2; i++)
                {
                    var plaintext = Encoding.UTF8.GetBytes($"{id} record {i}");
                    ciphertexts.Add((plaintext, (await developer.EncryptAsync(key.Name, plaintext)).Ciphertext));
                    await developer.RotateKeyAsync(key.Name);
                }
            }

            using var officer = siteA.CreateClient(officerToken);
            var recorded = await officer.ListAuditEventsAsync(new ListAuditEventsRequest { Operation = "ceremony/create-domain" }).ToListAsync();
            Assert.Equal($"domain/{DomainId}/kcv/{kcv}", Assert.Single(recorded).Resource);
            Assert.False(File.Exists(P("node-a/kms.db")));
        }

        // The off-site copy: a custom-format dump. Then site A is lost: its database, token and directories.
        var clock = Stopwatch.StartNew();
        var port = new NpgsqlConnectionStringBuilder(_siteA.ConnectionString).Port.ToString(System.Globalization.CultureInfo.InvariantCulture);
        await RunAsync("pg_dump", "-Fc", "-h", "127.0.0.1", "-p", port, "-U", "postgres", "-f", P("offsite.dump"), _siteA.Name);
        var afterDump = clock.Elapsed;
        clock.Stop();

        // After the dump, officers destroy a version on site A; only the SIEM stream (shipped off-site) knows.
        await using (var siteA = await ServerProcess.StartAsync(P("node-a"), P("softhsm2.conf"), "site-a", P("user.pin"), DomainId, [.. Postgres("site-a.conn"), .. quorum, .. siem]))
        {
            using var developer = siteA.CreateClient(developerToken);
            using var officer = siteA.CreateClient(officerToken);
            var destroy = await developer.RequestDestroyKeyVersionNowAsync("tenants/dev/keys/orders/versions/1");
            await ApproveAsync(officer, "olga", destroy.Name);
            Assert.True((await ApproveAsync(officer, "oscar", destroy.Name)).Executed);
        }

        clock.Start();
        await _siteA.DisposeAsync();
        _siteA = await PostgresTestDatabase.CreateAsync(); // an empty stand-in, so DisposeAsync has something to drop
        Directory.Delete(P("node-a"), recursive: true);
        Directory.Delete(P("ceremony-a/ceremonies"), recursive: true);

        // Site B: the dump into a NEW database, the domain key from two shares into a NEW token, a node on both.
        _restored = await PostgresTestDatabase.CreateAsync();
        await RunAsync("pg_restore", "--exit-on-error", "--no-owner", "-h", "127.0.0.1", "-p", port, "-U", "postgres", "-d", _restored.Name, P("offsite.dump"));
        var afterRestore = clock.Elapsed;
        await WriteSecretAsync("site-b.conn", _restored.ConnectionString);
        var domain = await Ok(["ceremony", "restore-domain", .. Hsm("site-b"), "--share", Share("alice"), "--share", Share("carol"),
            "--passphrase-file", $"alice={P("alice")}", "--passphrase-file", $"carol={P("carol")}", "--check-value", kcv,
            "--storage-provider", "postgres", "--postgres-connection-file", P("site-b.conn"), "--data-dir", P("ceremony-b"),
            "--genesis", P("ceremony-a/quorum/genesis.json"), "--without-approval", "--allow-network", "--insecure-test-kdf", "--output", "json"]);
        Assert.Contains("BREAK GLASS", await File.ReadAllTextAsync(JsonNode.Parse(domain.Out)!["transcript"]!.GetValue<string>()), StringComparison.Ordinal);
        var afterDomain = clock.Elapsed;

        // Before any node starts on it: the destruction made after the dump, from the SIEM stream, again.
        var reapplied = JsonNode.Parse((await Ok(["backup", "reapply-destructions", "--storage-provider", "postgres", "--postgres-connection-file", P("site-b.conn"),
            "--audit-log", P("offsite/siem.jsonl"), "--output", "json"])).Out)!;
        Assert.Equal("tenants/dev/keys/orders/versions/1", Assert.Single(reapplied["reapplied"]!.AsArray())!["version"]!.GetValue<string>());
        Assert.Equal(DBNull.Value, await _restored.ScalarAsync("SELECT material FROM key_versions WHERE key_id = 'orders' AND version = 1"));
        await using var siteB = await ServerProcess.StartAsync(P("node-b"), P("softhsm2.conf"), "site-b", P("user.pin"), DomainId, [.. Postgres("site-b.conn"), .. quorum]);
        clock.Stop();
        var report = $"PostgreSQL DR drill: pg_dump {afterDump.TotalSeconds:0.00} s, pg_restore {(afterRestore - afterDump).TotalSeconds:0.00} s, "
            + $"restore-domain {(afterDomain - afterRestore).TotalSeconds:0.00} s, reapply-destructions and server start {(clock.Elapsed - afterDomain).TotalSeconds:0.00} s";
        output.WriteLine(report);

        // Tokens, keys and ciphertexts of site A work on site B — except under the version destroyed after the dump.
        using var developerB = siteB.CreateClient(developerToken);
        var underDestroyed = await Assert.ThrowsAsync<Grpc.Core.RpcException>(() => developerB.DecryptAsync(ciphertexts[0].Ciphertext));
        Assert.Contains("DESTROYED", underDestroyed.Status.Detail, StringComparison.Ordinal);
        foreach (var (plaintext, ciphertext) in ciphertexts.Skip(1))
        {
            using var opened = await developerB.DecryptAsync(ciphertext);
            Assert.Equal(plaintext, opened.Plaintext.ToArray());
        }

        // One chain from the first ceremony through the restore, signed by the key the first transcript pinned.
        using var officerB = siteB.CreateClient(officerToken);
        var restoredEvents = await officerB.ListAuditEventsAsync(new ListAuditEventsRequest { Operation = "ceremony/restore-domain" }).ToListAsync();
        Assert.Equal($"domain/{DomainId}/kcv/{kcv}/token/site-b", Assert.Single(restoredEvents).Resource);
        var export = new StringWriter();
        await officerB.ExportAuditAsync(export);
        var verification = AuditVerifier.Verify(new StringReader(export.ToString()), pinnedAuditKey);
        Assert.True(verification.Valid, verification.Problem);
        Assert.Contains("\"operation\":\"ceremony/create-domain\"", export.ToString(), StringComparison.Ordinal);

        // The re-applied destruction recorded on PostgreSQL too, once, in the chain that verified.
        var reapplyEvents = await officerB.ListAuditEventsAsync(new ListAuditEventsRequest { Operation = global::Kms.Cli.Backup.BackupRestore.ReapplyOperation }).ToListAsync();
        Assert.Equal("tenants/dev/keys/orders/versions/1", Assert.Single(reapplyEvents).Resource);
    }

    /// <summary>
    /// <c>rotate-domain</c> on a PostgreSQL deployment, killed (SIGKILL) once it has re-wrapped its first
    /// blobs, then resumed with two of the new share files: every key, of two blob kinds, serves under
    /// the new domain key only, the resumed run moved exactly the rest, and the audit chain verifies.
    /// </summary>
    [Fact]
    public async Task RotateDomain_KilledMidway_ResumedWithNewShares_EverythingServesUnderTheNewKeyOnly()
    {
        // Enough blobs (one per AES key version) that the kill lands while rows are being moved.
        const int AesKeys = 300;
        Assert.True(File.Exists(SoftHsm.ModulePath), $"SoftHSM is not installed ({SoftHsm.ModulePath}); ./test.sh installs it");
        await SetUpTokensAsync();
        await Ok(["ceremony", "init-token", .. Hsm("rotation"), "--so-pin-file", P("so.pin")]);
        await WriteSecretAsync("site-a.conn", _siteA.ConnectionString);
        var created = JsonNode.Parse((await Ok(["ceremony", "create-domain", .. Hsm("site-a"), "--custodian", "alice", "--custodian", "bob", "--custodian", "carol", "--threshold", "2",
            "--shares-dir", P("shares"), "--data-dir", P("ceremony-a"), "--domain-id", DomainId,
            "--passphrase-file", $"alice={P("alice")}", "--passphrase-file", $"bob={P("bob")}", "--passphrase-file", $"carol={P("carol")}",
            "--officer", $"olga={P("olga.pub")}", "--officer", $"oscar={P("oscar.pub")}", "--officer-threshold", "2",
            "--storage-provider", "postgres", "--postgres-connection-file", P("site-a.conn"),
            "--allow-network", "--insecure-test-kdf", "--output", "json"])).Out)!;
        var oldKcv = created["check_value"]!.GetValue<string>();
        string[] quorum = [$"--Kms:Quorum:GenesisFile={P("ceremony-a/quorum/genesis.json")}", $"--Kms:Quorum:GenesisSha256={created["officer_set_hash"]!.GetValue<string>()}"];

        var records = new (byte[] Plaintext, byte[] Ciphertext)[AesKeys];
        byte[] signerPublicKey;
        string developerToken;
        string officerToken;
        string rotationRequest;
        await using (var siteA = await ServerProcess.StartAsync(P("node-a"), P("softhsm2.conf"), "site-a", P("user.pin"), DomainId, [.. Postgres("site-a.conn"), .. quorum]))
        {
            (developerToken, officerToken) = await siteA.BootstrapAsync("dev");
            using var developer = siteA.CreateClient(developerToken);
            await Parallel.ForEachAsync(Enumerable.Range(0, AesKeys), new ParallelOptions { MaxDegreeOfParallelism = 8 }, async (i, ct) =>
            {
                var key = await developer.CreateKeyAsync("tenants/dev", $"k{i:D4}", cancellationToken: ct);
                var plaintext = Encoding.UTF8.GetBytes($"record {i}");
                records[i] = (plaintext, (await developer.EncryptAsync(key.Name, plaintext, cancellationToken: ct)).Ciphertext);
            });
            var signer = await developer.CreateKeyAsync("tenants/dev", "signer", KeyPurpose.SignVerify, KeyAlgorithm.EcSignP256Sha256);
            signerPublicKey = (await developer.GetPublicKeyAsync(signer.Name)).Der.ToByteArray();

            // Both officers approve the rotation to a new 2-of-3 while the server runs; the bundle goes to the ceremony host.
            using var officer = siteA.CreateClient(officerToken);
            rotationRequest = (await officer.RequestDomainKeyRotationAsync(3, 2)).Name;
            await ApproveAsync(officer, "olga", rotationRequest);
            Assert.Equal(global::Kms.Contracts.V1.QuorumRequestState.Approved, (await ApproveAsync(officer, "oscar", rotationRequest)).Request.State);
            await File.WriteAllTextAsync(P("rotation.approval.json"), (await officer.ExportQuorumApprovalAsync(rotationRequest)).Bundle);
        }

        string[] rotate =
        [
            "ceremony", "rotate-domain", .. Hsm("rotation"), "--so-pin-file", P("so.pin"),
            "--share", Share("alice"), "--share", Share("carol"), "--passphrase-file", $"alice={P("alice")}", "--passphrase-file", $"carol={P("carol")}",
            "--restore-token-label", "site-b", "--restore-pin-file", P("user.pin"), "--data-dir", P("ceremony-a"),
            "--storage-provider", "postgres", "--postgres-connection-file", P("site-a.conn"),
            "--approval", P("rotation.approval.json"), "--allow-network", "--insecure-test-kdf", "--output", "json",
        ];
        string[] firstRun =
        [
            .. rotate, "--new-custodian", "alice", "--new-custodian", "bob", "--new-custodian", "carol", "--new-threshold", "2", "--new-shares-dir", P("new-shares"),
            "--new-passphrase-file", $"alice={P("alice")}", "--new-passphrase-file", $"bob={P("bob")}", "--new-passphrase-file", $"carol={P("carol")}",
        ];

        // The first run is killed as a crash would stop it, once the rotation record shows moved blobs
        // (polled on one open connection, as fast as it answers: the rows move at hundreds a second).
        // A key version halfway along the run's order (by version id) is held locked meanwhile: the
        // run waits at it, so the kill lands midway however late this test gets round to it (a loaded
        // CI machine can stall it for longer than the whole run takes, which then found no rotation
        // record to look at). The row is chosen in a subquery: FOR UPDATE on the OFFSET query itself
        // would lock every row it skipped too, the first one included.
        await using var holder = new NpgsqlConnection(_siteA.ConnectionString);
        await holder.OpenAsync();
        await using var hold = await holder.BeginTransactionAsync();
        await using (var lockHalfway = new NpgsqlCommand(
            $"SELECT version_id FROM key_versions WHERE version_id = (SELECT version_id FROM key_versions ORDER BY version_id OFFSET {AesKeys / 2} LIMIT 1) FOR UPDATE", holder, hold))
        {
            Assert.NotNull(await lockHalfway.ExecuteScalarAsync());
        }

        await using (var watch = new NpgsqlConnection(_siteA.ConnectionString))
        using (var process = CliRun.Start(new Dictionary<string, string>(), _dir, firstRun))
        {
            var stdout = process.StandardOutput.ReadToEndAsync();
            var stderr = process.StandardError.ReadToEndAsync();
            await watch.OpenAsync();
            await using var poll = new NpgsqlCommand("SELECT value FROM settings WHERE name = 'domain_key.rotation'", watch);
            var waited = Stopwatch.StartNew();
            while (await poll.ExecuteScalarAsync() is not string json || JsonNode.Parse(json)!["rewrapped"]!.GetValue<long>() == 0)
            {
                if (process.HasExited)
                {
                    Assert.Fail($"rotate-domain ended (exit {process.ExitCode}) before it could be killed midway:\n{await stdout}\n{await stderr}");
                }

                Assert.True(waited.Elapsed < TimeSpan.FromMinutes(2), "hang guard: rotate-domain had moved no blob after 2 minutes (stuck, not slow: it moves hundreds a second)");
            }

            process.Kill();
            await process.WaitForExitAsync();
        }

        await hold.RollbackAsync();

        var interrupted = (await RotationRecordAsync())!;
        var movedBeforeKill = interrupted["rewrapped"]!.GetValue<long>();
        output.WriteLine($"killed after {movedBeforeKill} of at least {AesKeys + 1} blobs");
        Assert.InRange(movedBeforeKill, 1, AesKeys / 2);
        Assert.Equal(oldKcv, interrupted["old_check_value"]!.GetValue<string>());
        Assert.Equal(oldKcv, await _siteA.ScalarAsync("SELECT value FROM settings WHERE name = 'domain_key.check_value'"));
        Assert.Equal(3, Directory.GetFiles(P("new-shares"), "share-*.json").Length);

        // Another first run is refused: the rotation in progress is resumed with its own new shares.
        // Into the directory holding them, up front (before the database is read), naming them; into
        // another, once the database shows the rotation in progress.
        var again = await Kms(firstRun);
        Assert.True(again.ExitCode == 5, again.ToString());
        Assert.Contains("holds share files already (share-1-alice.json, share-2-bob.json, share-3-carol.json)", again.Error, StringComparison.Ordinal);
        Assert.Contains("--new-share", again.Error, StringComparison.Ordinal);
        string[] firstRunElsewhere = [.. firstRun[..^7], P("new-shares-elsewhere"), .. firstRun[^6..]];
        Assert.Equal(P("new-shares"), firstRun[^7]);
        var elsewhere = await Kms(firstRunElsewhere);
        Assert.True(elsewhere.ExitCode == 2, elsewhere.ToString());
        Assert.Contains("resume it with --new-share", elsewhere.Error, StringComparison.Ordinal);
        Assert.Empty(Directory.Exists(P("new-shares-elsewhere")) ? Directory.GetFiles(P("new-shares-elsewhere")) : []);

        // Resumed with two of the three new shares.
        var resumed = JsonNode.Parse((await Ok([.. rotate, "--new-share", NewShare("alice"), "--new-share", NewShare("bob"),
            "--new-passphrase-file", $"alice={P("alice")}", "--new-passphrase-file", $"bob={P("bob")}"])).Out)!;
        var newKcv = resumed["check_value"]!.GetValue<string>();
        Assert.Equal(interrupted["new_check_value"]!.GetValue<string>(), newKcv);
        Assert.Equal(movedBeforeKill, resumed["resumed_after"]!.GetValue<long>());
        Assert.True(resumed["rewrapped"]!.GetValue<long>() > 0, resumed.ToJsonString());
        Assert.True(resumed["rewrapped"]!.GetValue<long>() + movedBeforeKill >= AesKeys + 1, resumed.ToJsonString());
        Assert.Null(await RotationRecordAsync());
        Assert.Equal(newKcv, await _siteA.ScalarAsync("SELECT value FROM settings WHERE name = 'domain_key.check_value'"));
        var transcript = resumed["transcript"]!.GetValue<string>();
        var resumedTranscript = await File.ReadAllTextAsync(transcript);
        Assert.Contains($"by this run, {movedBeforeKill} by an earlier interrupted run", resumedTranscript, StringComparison.Ordinal);

        // The killed run signed nothing: the resumed run's transcript names the new shares that hold the key.
        Assert.Contains("new share 1: custodian alice, file share-1-alice.json, fingerprint ", resumedTranscript, StringComparison.Ordinal);
        Assert.Contains("new share 2: custodian bob, file share-2-bob.json, fingerprint ", resumedTranscript, StringComparison.Ordinal);
        await Ok(["ceremony", "verify-transcript", transcript, "--public-key", P("ceremony-a/audit/signing-key.pem")]);

        // Site B's token holds only the new domain key: every record decrypts, the signing key still signs.
        var newId = resumed["domain_id"]!.GetValue<string>();
        await using var siteB = await ServerProcess.StartAsync(P("node-b"), P("softhsm2.conf"), "site-b", P("user.pin"), newId, [.. Postgres("site-a.conn"), .. quorum]);
        using var developerB = siteB.CreateClient(developerToken);
        foreach (var (plaintext, ciphertext) in records)
        {
            using var opened = await developerB.DecryptAsync(ciphertext);
            Assert.Equal(plaintext, opened.Plaintext.ToArray());
        }

        var message = "after the rotation"u8.ToArray();
        var signature = (await developerB.SignAsync("tenants/dev/keys/signer", message)).Signature.ToByteArray();
        using (var verifier = System.Security.Cryptography.ECDsa.Create())
        {
            verifier.ImportSubjectPublicKeyInfo(signerPublicKey, out _);
            Assert.True(verifier.VerifyData(message, signature, System.Security.Cryptography.HashAlgorithmName.SHA256, System.Security.Cryptography.DSASignatureFormat.Rfc3279DerSequence));
        }

        // One audit chain, still signed by the key the first transcript pinned, records the rotation and its approval.
        using var officerB = siteB.CreateClient(officerToken);
        var export = new StringWriter();
        await officerB.ExportAuditAsync(export);
        var verification = AuditVerifier.Verify(new StringReader(export.ToString()), CeremonyCommands.PublicKeyFromPem(await File.ReadAllTextAsync(P("ceremony-a/audit/signing-key.pem"))));
        Assert.True(verification.Valid, verification.Problem);
        var rotated = await officerB.ListAuditEventsAsync(new ListAuditEventsRequest { Operation = "ceremony/rotate-domain" }).ToListAsync();
        Assert.Equal($"domain/{newId}/kcv/{newKcv}/previous/{oldKcv}", Assert.Single(rotated).Resource);
        var approvals = await officerB.ListAuditEventsAsync(new ListAuditEventsRequest { Operation = "ceremony/rotate-domain/approval" }).ToListAsync();
        Assert.Contains(approvals, e => e.Resource == rotationRequest);
    }

    /// <summary>
    /// Two nodes on one PostgreSQL database, each with a checkpoint in its <c>checkpoints.jsonl</c>
    /// past a <c>pg_dump</c>; a version destroyed after the dump; the dump restored with
    /// <c>pg_restore</c> into a new database the nodes are pointed at (the rollback). Each node
    /// refuses to start (event 1318) until <c>kms backup reapply-destructions</c> runs with the
    /// nodes' SIEM streams; then both start, and the version stays destroyed on both. Then a later
    /// dump of the restored database (holding the re-application's summary), a version destroyed
    /// after it, that dump restored with nothing re-applied: each node refuses to start again, on
    /// the head it last saw (<c>head.json</c>), until the streams are re-applied.
    /// </summary>
    [Fact]
    public async Task Rollback_TwoNodesSignedPastThePgDump_EachRefusesToStart_UntilReapplyDestructions_ThenBothStart_TheDestroyedVersionStaysDestroyed()
    {
        Assert.True(File.Exists(SoftHsm.ModulePath), $"SoftHSM is not installed ({SoftHsm.ModulePath}); ./test.sh installs it");
        Assert.True(File.Exists(Path.Combine(PgBin, "pg_dump")), $"PostgreSQL client tools are not installed in {PgBin}");
        const string ClusterKeyId = "dk-pg-rollback";
        var domainKey = System.Security.Cryptography.RandomNumberGenerator.GetBytes(32);
        var genesis = OfficerSet.CreateGenesis(_officers.Select("olga", "oscar"), 2);
        GenesisFile.Write(P("genesis.json"), genesis);
        var tokens = new TestToken[2];
        for (var i = 0; i < tokens.Length; i++)
        {
            tokens[i] = SoftHsm.CreateToken();
            using var session = global::Kms.Hsm.HsmCeremonySession.Open(tokens[i].Options(devMode: false), Encoding.UTF8.GetBytes(tokens[i].UserPin));
            session.ImportDomainKey(domainKey, "kms-domain-key", ClusterKeyId);
        }

        System.Security.Cryptography.CryptographicOperations.ZeroMemory(domainKey);
        string[] nodeDirs = [P("node-1"), P("node-2")];
        string[] streams = [P("siem-1.jsonl"), P("siem-2.jsonl")];
        string[] Args(int node, PostgresTestDatabase database) =>
        [
            "--Storage:Provider=postgres", $"--Storage:Postgres:ConnectionString={database.ConnectionString}",
            $"--Kms:Quorum:GenesisFile={P("genesis.json")}", $"--Kms:Quorum:GenesisSha256={genesis.Hash}", $"--Kms:Audit:StreamPath={streams[node]}",
        ];
        Task<KmsTestServer> StartAsync(int node, PostgresTestDatabase database) => KmsTestServer.StartProductionAsync(tokens[node], nodeDirs[node], ClusterKeyId, "dev", Args(node, database));
        var nodes = new List<KmsTestServer>();
        async Task StopAsync()
        {
            foreach (var node in Enumerable.Reverse(nodes))
            {
                await node.DisposeAsync();
            }

            nodes.Clear();
        }

        try
        {
            // Both nodes serve site A's database: a key with a second version, a ciphertext under the first.
            nodes.Add(await StartAsync(0, _siteA));
            nodes.Add(await StartAsync(1, _siteA));
            var developerToken = nodes[0].DeveloperToken;
            var officerToken = await nodes[0].CreatePrincipalWithTokenAsync("officer", null, "security-officer");
            string key;
            byte[] doomed;
            using (var onFirst = nodes[0].CreateClient(developerToken))
            {
                key = (await onFirst.CreateKeyAsync("tenants/dev", "rolled-back")).Name;
                doomed = (await onFirst.EncryptAsync(key, "under version 1"u8.ToArray())).Ciphertext;
                await onFirst.RotateKeyAsync(key);
            }

            using (var onSecond = nodes[1].CreateClient(developerToken))
            using (var opened = await onSecond.DecryptAsync(doomed))
            {
                Assert.Equal("under version 1"u8.ToArray(), opened.Plaintext.ToArray());
            }

            // The dump, with the nodes stopped.
            await StopAsync();
            var dumpHead = (long)(await _siteA.ScalarAsync("SELECT max(seq) FROM audit_events"))!;
            var port = new NpgsqlConnectionStringBuilder(_siteA.ConnectionString).Port.ToString(System.Globalization.CultureInfo.InvariantCulture);
            await RunAsync("pg_dump", "-Fc", "-h", "127.0.0.1", "-p", port, "-U", "postgres", "-f", P("rollback.dump"), _siteA.Name);

            // After it: version 1 destroyed at once through node 1; each node then signs a checkpoint of its own.
            nodes.Add(await StartAsync(0, _siteA));
            nodes.Add(await StartAsync(1, _siteA));
            using (var developer = nodes[0].CreateClient(developerToken))
            using (var officer = nodes[0].CreateClient(officerToken))
            {
                var destroy = await developer.RequestDestroyKeyVersionNowAsync($"{key}/versions/1");
                await ApproveAsync(officer, "olga", destroy.Name);
                Assert.True((await ApproveAsync(officer, "oscar", destroy.Name)).Executed);
            }

            foreach (var node in nodes)
            {
                using var developer = node.CreateClient(developerToken);
                using var officer = node.CreateClient(officerToken);
                await developer.GetKeyAsync(key); // an event of this node's, so the head is past every checkpoint signed so far
                Assert.NotNull(await officer.GetAuditCheckpointAsync());
            }

            await StopAsync();
            var signed = new long[2];
            for (var i = 0; i < signed.Length; i++)
            {
                signed[i] = global::Kms.Core.Audit.AuditExport.ParseCheckpoint((await File.ReadAllLinesAsync(Path.Combine(nodeDirs[i], "audit", "checkpoints.jsonl")))[^1])!.Sequence;
                Assert.True(signed[i] > dumpHead, $"node {i + 1}'s newest checkpoint {signed[i]} is not past the dump's head {dumpHead}");
            }

            // The rollback: the dump restored into a new database, the nodes pointed at it.
            _restored = await PostgresTestDatabase.CreateAsync();
            await RunAsync("pg_restore", "--exit-on-error", "--no-owner", "-h", "127.0.0.1", "-p", port, "-U", "postgres", "-d", _restored.Name, P("rollback.dump"));
            Assert.Equal(dumpHead, (long)(await _restored.ScalarAsync("SELECT max(seq) FROM audit_events"))!);
            for (var i = 0; i < nodeDirs.Length; i++)
            {
                var (refusal, logs) = await KmsTestServer.StartProductionRefusedAsync(tokens[i], nodeDirs[i], ClusterKeyId, Args(i, _restored));
                var refused = Assert.IsType<global::Kms.Core.Errors.KmsException>(refusal);
                Assert.Equal(global::Kms.Core.Errors.KmsErrorCode.FailedPrecondition, refused.Code);
                Assert.Contains($"the audit chain in the database (head {dumpHead}) does not pass through checkpoint {signed[i]} that this node signed", refused.Message, StringComparison.Ordinal);
                Assert.Contains("Id: 1318", logs.AllText, StringComparison.Ordinal);
            }

            // Re-applied from the nodes' SIEM streams, which reach both checkpoints.
            await WriteSecretAsync("restored.conn", _restored.ConnectionString);
            var reapplied = JsonNode.Parse((await Ok(["backup", "reapply-destructions", "--storage-provider", "postgres", "--postgres-connection-file", P("restored.conn"),
                "--audit-log", streams[0], "--audit-log", streams[1], "--output", "json"])).Out)!;
            Assert.Equal($"{key}/versions/1", Assert.Single(reapplied["reapplied"]!.AsArray())!["version"]!.GetValue<string>());
            Assert.Equal(DBNull.Value, await _restored.ScalarAsync("SELECT material FROM key_versions WHERE key_id = 'rolled-back' AND version = 1"));

            // Both nodes start; neither serves the destroyed version, and neither signs the restored chain yet (1309).
            nodes.Add(await StartAsync(0, _restored));
            nodes.Add(await StartAsync(1, _restored));
            foreach (var node in nodes)
            {
                using var developer = node.CreateClient(developerToken);
                var destroyed = await Assert.ThrowsAsync<Grpc.Core.RpcException>(() => developer.DecryptAsync(doomed));
                Assert.Equal(Grpc.Core.StatusCode.FailedPrecondition, destroyed.StatusCode);
                Assert.Contains($"key version {key}/versions/1 is DESTROYED", destroyed.Status.Detail, StringComparison.Ordinal);
                Assert.Contains("Id: 1309", node.Logs.AllText, StringComparison.Ordinal);
                Assert.DoesNotContain("Id: 1318", node.Logs.AllText, StringComparison.Ordinal);
            }

            // A later dump D2 of the restored database: it holds the re-application's summary,
            // which covers both nodes' checkpoints and is later than them (held, 1309, they sign
            // nothing more, so those stay their newest). A version destroyed after D2, the nodes
            // stopped (each records the head it leaves, past D2), D2 restored into a new database
            // and nothing re-applied: each node refuses to start, naming the head it last saw.
            string later;
            byte[] doomedLater;
            using (var developer = nodes[0].CreateClient(developerToken))
            {
                later = (await developer.CreateKeyAsync("tenants/dev", "rolled-back-again")).Name;
                doomedLater = (await developer.EncryptAsync(later, "under version 1, again"u8.ToArray())).Ciphertext;
                await developer.RotateKeyAsync(later);
            }

            await StopAsync();
            var secondDumpHead = (long)(await _restored.ScalarAsync("SELECT max(seq) FROM audit_events"))!;
            await RunAsync("pg_dump", "-Fc", "-h", "127.0.0.1", "-p", port, "-U", "postgres", "-f", P("rollback-2.dump"), _restored.Name);
            nodes.Add(await StartAsync(0, _restored));
            nodes.Add(await StartAsync(1, _restored));
            using (var developer = nodes[1].CreateClient(developerToken))
            using (var officer = nodes[1].CreateClient(officerToken))
            {
                var destroy = await developer.RequestDestroyKeyVersionNowAsync($"{later}/versions/1");
                await ApproveAsync(officer, "olga", destroy.Name);
                Assert.True((await ApproveAsync(officer, "oscar", destroy.Name)).Executed);
            }

            await StopAsync();
            var seen = new long[2];
            for (var i = 0; i < seen.Length; i++)
            {
                Assert.Equal(signed[i], global::Kms.Core.Audit.AuditExport.ParseCheckpoint((await File.ReadAllLinesAsync(Path.Combine(nodeDirs[i], "audit", "checkpoints.jsonl")))[^1])!.Sequence);
                seen[i] = global::Kms.Core.Services.SeenHead.Parse(await File.ReadAllBytesAsync(Path.Combine(nodeDirs[i], "audit", "head.json")))!.Head.Sequence;
                Assert.True(seen[i] > secondDumpHead, $"node {i + 1} recorded head {seen[i]}, not past the second dump's head {secondDumpHead}");
            }

            _restoredAgain = await PostgresTestDatabase.CreateAsync();
            await RunAsync("pg_restore", "--exit-on-error", "--no-owner", "-h", "127.0.0.1", "-p", port, "-U", "postgres", "-d", _restoredAgain.Name, P("rollback-2.dump"));
            for (var i = 0; i < nodeDirs.Length; i++)
            {
                var (refusal, logs) = await KmsTestServer.StartProductionRefusedAsync(tokens[i], nodeDirs[i], ClusterKeyId, Args(i, _restoredAgain));
                var refused = Assert.IsType<global::Kms.Core.Errors.KmsException>(refusal);
                Assert.Equal(global::Kms.Core.Errors.KmsErrorCode.FailedPrecondition, refused.Code);
                Assert.Contains($"the audit chain in the database (head {secondDumpHead}) does not pass through the head this node last saw, event {seen[i]}", refused.Message, StringComparison.Ordinal);
                Assert.Contains("Id: 1318", logs.AllText, StringComparison.Ordinal);
            }

            // Re-applied from the streams, which reach both heads: both start, the version stays destroyed.
            await WriteSecretAsync("restored-again.conn", _restoredAgain.ConnectionString);
            var again = JsonNode.Parse((await Ok(["backup", "reapply-destructions", "--storage-provider", "postgres", "--postgres-connection-file", P("restored-again.conn"),
                "--audit-log", streams[0], "--audit-log", streams[1], "--output", "json"])).Out)!;
            Assert.Contains($"{later}/versions/1", again["reapplied"]!.AsArray().Select(r => r!["version"]!.GetValue<string>()));
            nodes.Add(await StartAsync(0, _restoredAgain));
            nodes.Add(await StartAsync(1, _restoredAgain));
            foreach (var node in nodes)
            {
                using var developer = node.CreateClient(developerToken);
                var destroyed = await Assert.ThrowsAsync<Grpc.Core.RpcException>(() => developer.DecryptAsync(doomedLater));
                Assert.Contains($"key version {later}/versions/1 is DESTROYED", destroyed.Status.Detail, StringComparison.Ordinal);
            }
        }
        finally
        {
            await StopAsync();
        }
    }

    [Fact]
    public async Task Refusals_BackupRestoreOnPostgres_ConnectionInArgvOrMissing_ExitUsage_UnreachableDatabase_ExitUnavailable()
    {
        await WriteSecretAsync("site-a.conn", _siteA.ConnectionString);
        var backup = await Kms(["backup", "restore", P("backup"), "--public-key", P("key.pem"), "--data-dir", P("data"), "--storage-provider", "postgres"]);
        Assert.True(backup.ExitCode == 2, backup.ToString());
        Assert.Contains("pg_dump", backup.Error, StringComparison.Ordinal);

        var noConnection = await Kms(["ceremony", "restore-domain", "--token-label", "none", "--share", P("share.json"), "--data-dir", P("data"),
            "--storage-provider", "postgres", "--without-approval", "--allow-network"]);
        Assert.True(noConnection.ExitCode == 2, noConnection.ToString());
        Assert.Contains("--postgres-connection-file", noConnection.Error, StringComparison.Ordinal);

        var inline = await Kms(["ceremony", "restore-domain", "--token-label", "none", "--share", P("share.json"), "--data-dir", P("data"),
            "--storage-provider", "postgres", "--postgres-connection", _siteA.ConnectionString, "--without-approval", "--allow-network"]);
        Assert.True(inline.ExitCode == 2, inline.ToString());
        Assert.Contains("--postgres-connection-file", inline.Error, StringComparison.Ordinal);
        Assert.DoesNotContain(_siteA.Name, inline.Error, StringComparison.Ordinal);

        await WriteSecretAsync("closed.conn", "Host=127.0.0.1;Port=1;Username=postgres;Database=nowhere;Password=hunter2-secret");
        var unreachable = await Kms(["ceremony", "restore-domain", "--token-label", "none", "--share", P("share.json"), "--data-dir", P("data"),
            "--storage-provider", "postgres", "--postgres-connection-file", P("closed.conn"), "--without-approval", "--allow-network"]);
        Assert.True(unreachable.ExitCode == 6, unreachable.ToString());
        Assert.Contains("127.0.0.1:1/nowhere", unreachable.Error, StringComparison.Ordinal);
        Assert.DoesNotContain("hunter2", unreachable.Error + unreachable.Out, StringComparison.Ordinal);

        var other = await Kms(["ceremony", "restore-domain", "--token-label", "none", "--share", P("share.json"), "--data-dir", P("data"),
            "--storage-provider", "mysql", "--without-approval", "--allow-network"]);
        Assert.True(other.ExitCode == 2, other.ToString());
    }

    private async Task<ApproveQuorumRequestResponse> ApproveAsync(global::Kms.Client.KmsClient officer, string name, string request)
    {
        using var approver = global::Kms.Client.Quorum.QuorumApprover.FromKey(System.Security.Cryptography.ECDsa.Create(_officers.KeyOf(name).ExportParameters(true)));
        return await approver.ApproveAsync(officer, await approver.PrepareAsync(officer, request));
    }

    private async Task SetUpTokensAsync()
    {
        Directory.CreateDirectory(P("tokens"));
        await File.WriteAllTextAsync(P("softhsm2.conf"), $"directories.tokendir = {P("tokens")}\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n");
        foreach (var (name, value) in new[] { ("so.pin", "so-" + Guid.NewGuid().ToString("N")), ("user.pin", "user-" + Guid.NewGuid().ToString("N")), ("alice", "alice passphrase 1"), ("bob", "bob passphrase 2"), ("carol", "carol passphrase 3") })
        {
            await WriteSecretAsync(name, value);
        }

        foreach (var officer in OfficerSet.CreateGenesis(_officers.Select("olga", "oscar"), 2).Officers)
        {
            await File.WriteAllTextAsync(P($"{officer.Name}.pub"), System.Security.Cryptography.PemEncoding.WriteString("PUBLIC KEY", officer.PublicKey.ToArray()) + "\n");
        }

        foreach (var site in new[] { "site-a", "site-b" })
        {
            await Ok(["ceremony", "init-token", .. Hsm(site), "--so-pin-file", P("so.pin")]);
        }
    }

    private async Task WriteSecretAsync(string name, string value)
    {
        await File.WriteAllTextAsync(P(name), value + "\n");
        File.SetUnixFileMode(P(name), UnixFileMode.UserRead | UnixFileMode.UserWrite);
    }

    private static async Task RunAsync(string tool, params string[] args)
    {
        var start = new ProcessStartInfo(Path.Combine(PgBin, tool)) { RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (var arg in args)
        {
            start.ArgumentList.Add(arg);
        }

        using var process = Process.Start(start) ?? throw new InvalidOperationException($"{tool} did not start");
        var stdout = process.StandardOutput.ReadToEndAsync();
        var stderr = process.StandardError.ReadToEndAsync();
        await process.WaitForExitAsync().WaitAsync(TimeSpan.FromMinutes(2));
        Assert.True(process.ExitCode == 0, $"{tool} exited with {process.ExitCode}:\n{await stdout}\n{await stderr}");
    }

    private string[] Postgres(string connectionFile) => ["--Storage:Provider=postgres", $"--Storage:Postgres:ConnectionStringFile={P(connectionFile)}"];

    private string P(string relative) => Path.Combine(_dir, relative);

    private string Share(string custodian) => Directory.GetFiles(P("shares"), $"share-*-{custodian}.json").Single();

    private string NewShare(string custodian) => Directory.GetFiles(P("new-shares"), $"share-*-{custodian}.json").Single();

    private async Task<JsonNode?> RotationRecordAsync() =>
        await _siteA.ScalarAsync("SELECT value FROM settings WHERE name = 'domain_key.rotation'") is string json ? JsonNode.Parse(json) : null;

    private string[] Hsm(string site) => ["--token-label", site, "--softhsm-conf", P("softhsm2.conf"), "--pin-file", P("user.pin")];

    private async Task<CliResult> Ok(params string[] args)
    {
        var result = await Kms(args);
        Assert.True(result.ExitCode == 0, result.ToString());
        return result;
    }

    private Task<CliResult> Kms(string[] args) => CliRun.ProcessAsync(new Dictionary<string, string>(), _dir, args);
}
