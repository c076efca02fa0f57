using System.Diagnostics;
using System.Security.Cryptography;
using System.Text.Json.Nodes;
using Grpc.Core;
using Kms.Client;
using Kms.Client.Quorum;
using Kms.Contracts.V1;
using Kms.Core.Quorum;
using Kms.Testing;
using Xunit.Abstractions;

namespace Kms.Cli.Tests;

/// <summary>
/// The disaster-recovery drill with real processes only: a ceremony on token A with 2-of-3
/// shares, a production server process on A, keys and ciphertexts, a quorum-approved backup,
/// then a version destroyed by quorum AFTER the backup. Site A (token and data directory) is
/// lost; the SIEM stream survived off-site. On a fresh token B: <c>kms backup restore</c> (which
/// must re-apply the destruction from the stream), <c>kms ceremony restore-domain</c> with two
/// shares, and a server on B: every ciphertext made before decrypts, except the one under the
/// destroyed version. The recovery's wall time is printed.
/// </summary>
public sealed class DisasterRecoveryDrillTests(ITestOutputHelper output) : IDisposable
{
    private const string DomainId = "dk-dr-drill";
    private readonly string _dir = Directory.CreateTempSubdirectory("kms-dr-").FullName;
    private readonly TestOfficers _officers = new("alice", "bob", "carol");

    public void Dispose()
    {
        _officers.Dispose();
        Directory.Delete(_dir, recursive: true);
    }

    [Fact]
    public async Task DrDrill_FreshToken_BackupAndTwoShares_EveryCiphertextFromBeforeDecrypts_ExceptUnderAVersionDestroyedAfterTheBackup()
    {
        Assert.True(File.Exists(SoftHsm.ModulePath), $"SoftHSM is not installed ({SoftHsm.ModulePath}); ./test.sh installs it");
        Directory.CreateDirectory(P("tokens"));
        await File.WriteAllTextAsync(P("softhsm2.conf"), $"directories.tokendir = {P("tokens")}\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n");
        foreach (var (name, value) in new[] { ("so.pin", "so-" + Guid.NewGuid().ToString("N")), ("user.pin", "user-" + Guid.NewGuid().ToString("N")), ("alice", "alice passphrase 1"), ("bob", "bob passphrase 2"), ("carol", "carol passphrase 3") })
        {
            await File.WriteAllTextAsync(P(name), value + "\n");
            File.SetUnixFileMode(P(name), UnixFileMode.UserRead | UnixFileMode.UserWrite);
        }

        // The officers' public keys the ceremony registers as the genesis.
        foreach (var officer in _officers.Select("alice", "bob", "carol"))
        {
            await File.WriteAllTextAsync(P($"{officer.Name}.pub"), System.Security.Cryptography.PemEncoding.WriteString("PUBLIC KEY", officer.PublicKey.ToArray()) + "\n");
        }

        string[] serverArgs = [$"--Kms:Quorum:GenesisFile={P("genesis.json")}", $"--Kms:Audit:StreamPath={P("offsite/siem.jsonl")}"];
        Directory.CreateDirectory(P("offsite"));
        foreach (var site in new[] { "site-a", "site-b" })
        {
            await Ok(["ceremony", "init-token", .. Hsm(site), "--so-pin-file", P("so.pin")]);
        }

        var created = await Ok(["ceremony", "create-domain", .. Hsm("site-a"), "--custodian", "alice", "--custodian", "bob", "--custodian", "carol", "--threshold", "2",
            "--shares-dir", P("shares"), "--data-dir", P("site-a-data"), "--domain-id", DomainId,
            "--passphrase-file", $"alice={P("alice")}", "--passphrase-file", $"bob={P("bob")}", "--passphrase-file", $"carol={P("carol")}",
            "--officer", $"alice={P("alice.pub")}", "--officer", $"bob={P("bob.pub")}", "--officer", $"carol={P("carol.pub")}", "--officer-threshold", "2",
            "--allow-network", "--insecure-test-kdf", "--output", "json"]);
        var kcv = JsonNode.Parse(created.Out)!["check_value"]!.GetValue<string>();
        // The genesis it wrote, kept off-site as the transcript says: these officers and threshold, and its own hash.
        var genesis = GenesisFile.Read(P("site-a-data/quorum/genesis.json"));
        Assert.Equal(OfficerSet.CreateGenesis(_officers.Select("alice", "bob", "carol"), 2).Officers.Select(o => o.Fingerprint), genesis.Officers.Select(o => o.Fingerprint));
        Assert.Equal(2, genesis.Threshold);
        Assert.Equal(genesis.Hash, JsonNode.Parse(created.Out)!["officer_set_hash"]!.GetValue<string>());
        serverArgs = [.. serverArgs, $"--Kms:Quorum:GenesisSha256={genesis.Hash}"];
        File.Copy(P("site-a-data/quorum/genesis.json"), P("genesis.json"));

        // Site A: keys, ciphertexts, a backup approved by alice and bob, then orders v1 destroyed by quorum.
        var ciphertexts = new List<(string Key, byte[] Plaintext, byte[] Ciphertext)>();
        string backupName;
        await using (var siteA = await ServerProcess.StartAsync(P("site-a-data"), P("softhsm2.conf"), "site-a", P("user.pin"), DomainId, serverArgs))
        {
            var (developerToken, officerToken) = await BootstrapAsync(siteA);
            using var developer = siteA.CreateClient(developerToken);
            using var officer = siteA.CreateClient(officerToken);
            foreach (var id in new[] { "orders", "payroll", "archive" })
            {
                var key = await developer.CreateKeyAsync("tenants/dev", id);
                for (var i = 0; i < 3; i++)
                {
                    var plaintext = System.Text.Encoding.UTF8.GetBytes($"{id} record {i}");
                    ciphertexts.Add((id, plaintext, (await developer.EncryptAsync(key.Name, plaintext)).Ciphertext));
                    await developer.RotateKeyAsync(key.Name);
                }
            }

            var requested = await Ok(Client(siteA, "officer.token"), "backup", "create", "--output", "json");
            backupName = JsonNode.Parse(requested.Out)!["name"]!.GetValue<string>();
            Assert.Contains("EXPORT_BACKUP", JsonNode.Parse(requested.Out)!["rendering"]!.GetValue<string>(), StringComparison.Ordinal);
            Assert.False((await ApproveAsync(officer, "alice", backupName)).Executed);
            Assert.True((await ApproveAsync(officer, "bob", backupName)).Executed);

            // Fetched off the host (here: copied).
            var id2 = backupName["quorumRequests/".Length..];
            CopyDirectory(Path.Combine(siteA.DataDir, "backups", id2), P("offsite/backup"));
            File.Copy(Path.Combine(siteA.DataDir, "audit", "signing-key.pem"), P("offsite/audit-key.pem"));

            var destroy = await developer.RequestDestroyKeyVersionNowAsync("tenants/dev/keys/orders/versions/1");
            await ApproveAsync(officer, "alice", destroy.Name);
            Assert.True((await ApproveAsync(officer, "carol", destroy.Name)).Executed);
            Assert.Equal(StatusCode.FailedPrecondition, (await Assert.ThrowsAsync<RpcException>(() => developer.DecryptAsync(ciphertexts[0].Ciphertext))).StatusCode);
        }

        // Site A is lost: its token and its data directory. The SIEM stream was shipped off-site.
        var siem = await File.ReadAllTextAsync(P("offsite/siem.jsonl"));
        Assert.True(siem.Contains("\"operation\":\"quorum/DESTROY_KEY_VERSION_NOW\"", StringComparison.Ordinal), siem[^Math.Min(siem.Length, 3000)..]);
        Directory.Delete(P("site-a-data"), recursive: true);
        Assert.Equal(0, (await Kms([], ["backup", "verify", P("offsite/backup"), "--public-key", P("offsite/audit-key.pem")])).ExitCode);

        // Refusals first: a tampered snapshot, a tampered manifest, another key — nothing is written.
        await RefusedAsync("kms.db", bytes => bytes[^64] ^= 1);
        await RefusedAsync("manifest.json", bytes =>
        {
            // Another schema version digit (whatever the current one is).
            var digit = bytes.AsSpan().IndexOf("\"schema_version\": "u8) + 18;
            bytes[digit] = bytes[digit] == (byte)'9' ? (byte)'8' : (byte)'9';
        });
        using (var other = ECDsa.Create(ECCurve.NamedCurves.nistP256))
        {
            await File.WriteAllTextAsync(P("other-key.pem"), other.ExportSubjectPublicKeyInfoPem());
        }

        var wrongKey = await Kms([], ["backup", "restore", P("offsite/backup"), "--public-key", P("other-key.pem"), "--data-dir", P("site-b-data")]);
        Assert.True(wrongKey.ExitCode == 4, wrongKey.ToString());
        Assert.Contains("does not verify", wrongKey.Error, StringComparison.Ordinal);
        Assert.False(Directory.Exists(P("site-b-data")) && Directory.GetFiles(P("site-b-data")).Length > 0);

        // Recovery on site B, timed: restore the backup (re-applying the later destruction from the
        // off-site SIEM stream), rebuild the domain key from two shares, start the server.
        var clock = Stopwatch.StartNew();
        var restored = await Ok(["backup", "restore", P("offsite/backup"), "--public-key", P("offsite/audit-key.pem"), "--data-dir", P("site-b-data"),
            "--audit-log", P("offsite/siem.jsonl"), "--output", "json"]);
        var reapplied = JsonNode.Parse(restored.Out)!["reapplied"]!.AsArray();
        Assert.Equal("tenants/dev/keys/orders/versions/1", Assert.Single(reapplied)!["version"]!.GetValue<string>());
        var afterRestore = clock.Elapsed;
        await Ok(["ceremony", "restore-domain", .. Hsm("site-b"), "--share", Share("alice"), "--share", Share("carol"),
            "--passphrase-file", $"alice={P("alice")}", "--passphrase-file", $"carol={P("carol")}", "--check-value", kcv,
            "--data-dir", P("site-b-data"), "--without-approval", "--allow-network", "--insecure-test-kdf"]);
        var afterDomain = clock.Elapsed;
        await using var siteB = await ServerProcess.StartAsync(P("site-b-data"), P("softhsm2.conf"), "site-b", P("user.pin"), DomainId, serverArgs);
        clock.Stop();
        var report = $"DR drill: backup restore {afterRestore.TotalSeconds:0.00} s + restore-domain {(afterDomain - afterRestore).TotalSeconds:0.00} s + server start {(clock.Elapsed - afterDomain).TotalSeconds:0.00} s = {clock.Elapsed.TotalSeconds:0.00} s";
        output.WriteLine(report);
        Console.WriteLine(report);

        using var developerB = siteB.CreateClient((await File.ReadAllTextAsync(P("developer.token"))).Trim());
        foreach (var (key, plaintext, ciphertext) in ciphertexts.Skip(1))
        {
            using var opened = await developerB.DecryptAsync(ciphertext);
            Assert.Equal(plaintext, opened.Plaintext.ToArray());
        }

        var destroyed = await Assert.ThrowsAsync<RpcException>(() => developerB.DecryptAsync(ciphertexts[0].Ciphertext));
        Assert.Equal(StatusCode.FailedPrecondition, destroyed.StatusCode);
        Assert.Contains("DESTROYED", destroyed.Status.Detail, StringComparison.Ordinal);
        var version = await developerB.Raw.GetKeyVersionAsync(new GetKeyVersionRequest { Name = "tenants/dev/keys/orders/versions/1" });
        Assert.Equal(KeyState.Destroyed, version.KeyVersion.State);

        // The restore is in the restored chain.
        using var officerB = siteB.CreateClient((await File.ReadAllTextAsync(P("officer.token"))).Trim());
        var events = await officerB.ListAuditEventsAsync(new ListAuditEventsRequest { Operation = "backup/ReapplyDestruction" }).ToListAsync();
        Assert.Equal("tenants/dev/keys/orders/versions/1", Assert.Single(events).Resource);
    }

    private async Task RefusedAsync(string file, Action<byte[]> tamper)
    {
        CopyDirectory(P("offsite/backup"), P("tampered"));
        var bytes = await File.ReadAllBytesAsync(P("tampered/" + file));
        tamper(bytes);
        await File.WriteAllBytesAsync(P("tampered/" + file), bytes);
        var refused = await Kms([], ["backup", "restore", P("tampered"), "--public-key", P("offsite/audit-key.pem"), "--data-dir", P("site-b-data")]);
        Assert.True(refused.ExitCode == 4, refused.ToString());
        Assert.False(Directory.Exists(P("site-b-data")) && Directory.GetFiles(P("site-b-data")).Length > 0, $"a refused restore ({file}) wrote into the data directory");
        Directory.Delete(P("tampered"), recursive: true);
    }

    // As ServerProcess.BootstrapAsync, plus a deployment-wide security officer.
    private async Task<(string Developer, string Officer)> BootstrapAsync(ServerProcess server)
    {
        var bootstrap = Path.Combine(server.DataDir, "bootstrap.token");
        string adminToken;
        using (var client = server.CreateClient((await File.ReadAllTextAsync(bootstrap)).Trim()))
        {
            adminToken = (await client.BootstrapAsync("token:test-admin")).SessionToken;
        }

        File.Delete(bootstrap);
        using var admin = server.CreateClient(adminToken);
        await admin.CreateTenantAsync("dev");
        await admin.CreatePrincipalAsync("token:developer", "tenants/dev");
        foreach (var role in new[] { "admin", "key-manager", "key-importer", "key-user", "auditor" })
        {
            await admin.SetRoleBindingAsync("token:developer", role, "tenants/dev");
        }

        await admin.CreatePrincipalAsync("token:officer");
        await admin.SetRoleBindingAsync("token:officer", "security-officer");
        var developer = (await admin.CreateApiTokenAsync("token:developer", "SESSION", TimeSpan.FromHours(2))).Secret;
        var officer = (await admin.CreateApiTokenAsync("token:officer", "SESSION", TimeSpan.FromHours(2))).Secret;
        await File.WriteAllTextAsync(P("developer.token"), developer + "\n");
        await File.WriteAllTextAsync(P("officer.token"), officer + "\n");
        return (developer, officer);
    }

    private async Task<ApproveQuorumRequestResponse> ApproveAsync(KmsClient officer, string name, string request)
    {
        using var approver = QuorumApprover.FromKey(ECDsa.Create(_officers.KeyOf(name).ExportParameters(true)));
        return await approver.ApproveAsync(officer, await approver.PrepareAsync(officer, request));
    }

    private static void CopyDirectory(string from, string to)
    {
        Directory.CreateDirectory(to);
        foreach (var file in Directory.GetFiles(from))
        {
            File.Copy(file, Path.Combine(to, Path.GetFileName(file)));
        }
    }

    private string P(string relative) => Path.Combine(_dir, relative);

    private string Share(string custodian) => Directory.GetFiles(P("shares"), $"share-*-{custodian}.json").Single();

    private string[] Hsm(string site) => ["--token-label", site, "--softhsm-conf", P("softhsm2.conf"), "--pin-file", P("user.pin")];

    private Dictionary<string, string> Client(ServerProcess server, string tokenFile) => new()
    {
        ["KMS_ENDPOINT"] = server.Address.ToString(),
        ["KMS_CA_FILE"] = server.CaCertificatePath,
        ["KMS_TOKEN_FILE"] = P(tokenFile),
    };

    private Task<CliResult> Ok(params string[] args) => Ok([], args);

    private async Task<CliResult> Ok(Dictionary<string, string> environment, params string[] args)
    {
        var result = await Kms(environment, args);
        Assert.True(result.ExitCode == 0, result.ToString());
        return result;
    }

    private Task<CliResult> Kms(Dictionary<string, string> environment, string[] args) => CliRun.ProcessAsync(environment, _dir, args);
}
