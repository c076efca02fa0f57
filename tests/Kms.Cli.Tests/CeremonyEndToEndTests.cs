using System.Diagnostics;
using System.Text;
using System.Text.Json.Nodes;
using Kms.Testing;

namespace Kms.Cli.Tests;

/// <summary>
/// The key ceremony and disaster recovery with real processes only: the built <c>kms</c> sets up
/// two SoftHSM tokens, creates the domain key with 2-of-3 custodian shares, a production server
/// process serves on site A, and after site A is gone the domain key is rebuilt from two shares
/// into site B's token, where a new server process decrypts what was encrypted before.
/// </summary>
public sealed class CeremonyEndToEndTests : IDisposable
{
    private const string DomainId = "dk-e2e-test";
    private readonly string _dir = Directory.CreateTempSubdirectory("kms-ceremony-").FullName;
    private readonly string _conf;
    private readonly Dictionary<string, string> _secrets = [];

    public CeremonyEndToEndTests()
    {
        Assert.True(File.Exists(SoftHsm.ModulePath), $"SoftHSM is not installed ({SoftHsm.ModulePath}); ./test.sh installs it");
        Directory.CreateDirectory(Path.Combine(_dir, "tokens"));
        _conf = Path.Combine(_dir, "softhsm2.conf");
        File.WriteAllText(_conf, $"directories.tokendir = {Path.Combine(_dir, "tokens")}\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n");
        foreach (var (name, value) in new[]
        {
            ("so.pin", "so-" + Guid.NewGuid().ToString("N")), ("user.pin", "user-" + Guid.NewGuid().ToString("N")),
            ("alice", "alice passphrase " + Guid.NewGuid().ToString("N")[..8]), ("bob", "bob passphrase " + Guid.NewGuid().ToString("N")[..8]),
            ("carol", "carol passphrase " + Guid.NewGuid().ToString("N")[..8]),
            ("officer-key", "officer key passphrase " + Guid.NewGuid().ToString("N")[..8]),
        })
        {
            _secrets[name] = value;
            File.WriteAllText(Path.Combine(_dir, name), value + "\n");
            File.SetUnixFileMode(Path.Combine(_dir, name), UnixFileMode.UserRead | UnixFileMode.UserWrite);
        }
    }

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    [Fact]
    public async Task CreateDomain_ServeOnSiteA_RestoreTwoSharesOnSiteB_DecryptsEverythingFromBefore()
    {
        var outputs = new List<CliResult>();
        foreach (var site in new[] { "site-a", "site-b" })
        {
            var init = await Kms(outputs, ["ceremony", "init-token", .. Hsm(site), "--so-pin-file", P("so.pin"), "--output", "json"]);
            Assert.True(init.ExitCode == 0, init.ToString());
            Assert.True(JsonNode.Parse(init.Out)!["usable"]!.GetValue<bool>());
        }

        foreach (var officer in new[] { "olga", "oscar", "otto" })
        {
            var keygen = await Kms(outputs, "officer", "keygen", "--out", P($"{officer}.key"), "--key-passphrase-file", P("officer-key"));
            Assert.True(keygen.ExitCode == 0, keygen.ToString());
        }

        var created = await Kms(outputs, ["ceremony", "create-domain", .. Hsm("site-a"),
            "--officer", $"olga={P("olga.key.pub")}", "--officer", $"oscar={P("oscar.key.pub")}", "--officer", $"otto={P("otto.key.pub")}", "--officer-threshold", "2",
            "--custodian", "alice", "--custodian", "bob", "--custodian", "carol", "--threshold", "2",
            "--shares-dir", P("shares"), "--data-dir", P("data"), "--domain-id", DomainId,
            "--passphrase-file", $"alice={P("alice")}", "--passphrase-file", $"bob={P("bob")}", "--passphrase-file", $"carol={P("carol")}",
            "--allow-network", "--insecure-test-kdf", "--output", "json"]);
        Assert.True(created.ExitCode == 0, created.ToString());
        var ceremony = JsonNode.Parse(created.Out)!;
        var kcv = ceremony["check_value"]!.GetValue<string>();
        var transcript = ceremony["transcript"]!.GetValue<string>();
        var genesis = ceremony["server_configuration"]!["Kms:Quorum:GenesisFile"]!.GetValue<string>();
        string[] quorumConfig = [$"--Kms:Quorum:GenesisFile={genesis}", $"--Kms:Quorum:GenesisSha256={ceremony["officer_set_hash"]!.GetValue<string>()}"];
        Assert.Equal(3, Directory.GetFiles(P("shares"), "share-*.json").Length);

        // Site A serves; a file and a record are encrypted there.
        var plaintext = Encoding.UTF8.GetBytes(string.Concat(Enumerable.Repeat("order 4711 shipped; ", 20_000)));
        await File.WriteAllBytesAsync(P("orders.csv"), plaintext);
        byte[] record;
        byte[] destroyedRecord;
        var serverOutput = new StringBuilder();
        await using (var siteA = await ServerProcess.StartAsync(P("data"), _conf, "site-a", P("user.pin"), DomainId, quorumConfig))
        {
            var (token, officerToken) = await siteA.BootstrapAsync("dev");
            await File.WriteAllTextAsync(P("developer.token"), token + "\n");
            await File.WriteAllTextAsync(P("officer.token"), officerToken + "\n");
            Assert.Equal(0, (await Kms(outputs, Client(siteA), "keys", "create", "dev/orders")).ExitCode);
            var encrypted = await Kms(outputs, Client(siteA), "encrypt", "--key", "dev/orders", "--in", P("orders.csv"), "--out", P("orders.kmse"), "--context", "table=orders");
            Assert.True(encrypted.ExitCode == 0, encrypted.ToString());
            using var client = siteA.CreateClient(token);
            record = (await client.EncryptAsync("tenants/dev/keys/orders", "card 4111"u8.ToArray())).Ciphertext;

            // A version destroyed at once by 2 of the 3 genesis officers, each signing on "their" machine.
            Assert.Equal(0, (await Kms(outputs, Client(siteA), "keys", "create", "dev/leaked")).ExitCode);
            destroyedRecord = (await client.EncryptAsync("tenants/dev/keys/leaked", "old secret"u8.ToArray())).Ciphertext;
            Assert.Equal(0, (await Kms(outputs, Client(siteA), "keys", "rotate", "dev/leaked")).ExitCode);
            var asked = await Kms(outputs, Client(siteA), "quorum", "destroy-version", "tenants/dev/keys/leaked/versions/1", "--output", "json");
            Assert.True(asked.ExitCode == 0, asked.ToString());
            var request = JsonNode.Parse(asked.Out)!["name"]!.GetValue<string>();
            foreach (var (officer, executes) in new[] { ("olga", false), ("otto", true) })
            {
                var approved = await Kms(outputs, Client(siteA, "officer.token"), "officer", "approve", request, "--key", P($"{officer}.key"), "--key-passphrase-file", P("officer-key"), "--yes", "--output", "json");
                Assert.True(approved.ExitCode == 0, approved.ToString());
                Assert.Equal(executes, JsonNode.Parse(approved.Out)!["executed"]!.GetValue<bool>());
                Assert.Contains("DESTROY_KEY_VERSION_NOW", approved.Error, StringComparison.Ordinal);
            }

            serverOutput.Append(siteA.Output);
        }

        // Site A is lost. Fewer than M shares: refused, nothing imported.
        // Site A is gone, so no server is left to approve on: the disaster-recovery break-glass.
        var tooFew = await Kms(outputs, ["ceremony", "restore-domain", .. Hsm("site-b"), "--share", Share("carol"),
            "--passphrase-file", $"carol={P("carol")}", "--data-dir", P("data"), "--without-approval", "--allow-network", "--insecure-test-kdf"]);
        Assert.Equal(2, tooFew.ExitCode);
        Assert.Contains("need 2 shares", tooFew.Error, StringComparison.Ordinal);
        Assert.Equal(3, (await Kms(outputs, ["ceremony", "verify-domain", .. Hsm("site-b"), "--domain-id", DomainId])).ExitCode);

        var unapproved = await Kms(outputs, ["ceremony", "restore-domain", .. Hsm("site-b"), "--share", Share("alice"), "--share", Share("carol"),
            "--passphrase-file", $"alice={P("alice")}", "--passphrase-file", $"carol={P("carol")}", "--check-value", kcv,
            "--data-dir", P("data"), "--allow-network", "--insecure-test-kdf"]);
        Assert.Equal(5, unapproved.ExitCode);
        Assert.Contains("this deployment has officers", unapproved.Error, StringComparison.Ordinal);
        var restored = await Kms(outputs, ["ceremony", "restore-domain", .. Hsm("site-b"), "--share", Share("alice"), "--share", Share("carol"),
            "--passphrase-file", $"alice={P("alice")}", "--passphrase-file", $"carol={P("carol")}", "--check-value", kcv,
            "--data-dir", P("data"), "--without-approval", "--allow-network", "--insecure-test-kdf", "--output", "json"]);
        Assert.True(restored.ExitCode == 0, restored.ToString());
        Assert.Contains("BREAK GLASS", await File.ReadAllTextAsync(JsonNode.Parse(restored.Out)!["transcript"]!.GetValue<string>()), StringComparison.Ordinal);
        Assert.Equal(kcv, JsonNode.Parse(restored.Out)!["check_value"]!.GetValue<string>());
        var verified = await Kms(outputs, ["ceremony", "verify-domain", .. Hsm("site-b"), "--domain-id", DomainId]);
        Assert.Equal(kcv, verified.Out.Trim());

        await using (var siteB = await ServerProcess.StartAsync(P("data"), _conf, "site-b", P("user.pin"), DomainId, quorumConfig))
        {
            var decrypted = await Kms(outputs, Client(siteB), "decrypt", "--key", "dev/orders", "--in", P("orders.kmse"), "--out", P("orders.out"), "--context", "table=orders");
            Assert.True(decrypted.ExitCode == 0, decrypted.ToString());
            Assert.Equal(plaintext, await File.ReadAllBytesAsync(P("orders.out")));
            using var client = siteB.CreateClient((await File.ReadAllTextAsync(P("developer.token"))).Trim());
            using var opened = await client.DecryptAsync(record);
            Assert.Equal("card 4111"u8.ToArray(), opened.Plaintext.ToArray());
            var gone = await Assert.ThrowsAsync<Grpc.Core.RpcException>(() => client.DecryptAsync(destroyedRecord));
            Assert.Equal(Grpc.Core.StatusCode.FailedPrecondition, gone.StatusCode);
            serverOutput.Append(siteB.Output);
        }

        // Both transcripts verify with the published audit key; an edited copy does not.
        var key = P("data/audit/signing-key.pem");
        Assert.Equal(0, (await Kms(outputs, "ceremony", "verify-transcript", transcript, "--public-key", key)).ExitCode);
        Assert.Equal(0, (await Kms(outputs, "ceremony", "verify-transcript", JsonNode.Parse(restored.Out)!["transcript"]!.GetValue<string>(), "--public-key", key)).ExitCode);
        var text = await File.ReadAllTextAsync(transcript);
        Assert.Contains($"domain key check value: {kcv}", text, StringComparison.Ordinal);
        Assert.Contains("share 2: custodian bob", text, StringComparison.Ordinal);
        Assert.Contains("officer set (genesis): threshold 2 of 3", text, StringComparison.Ordinal);
        File.Copy(transcript + ".sig", P("edited.txt.sig"));
        await File.WriteAllTextAsync(P("edited.txt"), text.Replace("2 of 3", "1 of 3", StringComparison.Ordinal));
        var edited = await Kms(outputs, "ceremony", "verify-transcript", P("edited.txt"), "--public-key", key);
        Assert.Equal(7, edited.ExitCode);

        // Malformed signature files and keys of another kind get a clear refusal, not exit 1 (unexpected).
        foreach (var malformed in new[] { "[]", "{\"kind\":1}", "{\"kind\":\"ceremony-transcript\",\"signature\":\"AA==\",\"key_fingerprint\":7}" })
        {
            await File.WriteAllTextAsync(P("edited.txt.sig"), malformed);
            var refused = await Kms(outputs, "ceremony", "verify-transcript", P("edited.txt"), "--public-key", key);
            Assert.True(refused.ExitCode == 7, $"{malformed}: {refused}");
        }

        using (var rsa = System.Security.Cryptography.RSA.Create(2048))
        {
            await File.WriteAllTextAsync(P("rsa.pem"), rsa.ExportSubjectPublicKeyInfoPem());
        }

        var rsaKey = await Kms(outputs, "ceremony", "verify-transcript", transcript, "--public-key", P("rsa.pem"));
        Assert.True(rsaKey.ExitCode == 2, rsaKey.ToString());
        Assert.Contains("is not the PEM of an ECDSA public key", rsaKey.Error, StringComparison.Ordinal);

        // No PIN or passphrase in any output (the CLI's and the servers' logs), transcript or share file.
        Assert.Contains("audit signing key", serverOutput.ToString(), StringComparison.Ordinal);
        var everything = serverOutput + string.Join("\n", outputs.Select(o => o.Out + o.Error))
            + string.Concat(Directory.GetFiles(P("data/ceremonies")).Select(File.ReadAllText))
            + string.Concat(Directory.GetFiles(P("shares")).Select(File.ReadAllText));
        foreach (var (name, secret) in _secrets)
        {
            Assert.False(everything.Contains(secret, StringComparison.Ordinal), $"the {name} secret leaked");
        }
    }

    [Fact]
    public async Task RotateDomain_TwoOldShares_NewTokenServesEverythingFromBefore_OldSharesRefused()
    {
        var outputs = new List<CliResult>();
        foreach (var site in new[] { "site-a", "rotation", "site-b", "site-c" })
        {
            Assert.Equal(0, (await Kms(outputs, ["ceremony", "init-token", .. Hsm(site), "--so-pin-file", P("so.pin")])).ExitCode);
        }

        Assert.Equal(0, (await Kms(outputs, "officer", "keygen", "--out", P("olga.key"), "--key-passphrase-file", P("officer-key"))).ExitCode);
        var created = await Kms(outputs, ["ceremony", "create-domain", .. Hsm("site-a"),
            "--custodian", "alice", "--custodian", "bob", "--custodian", "carol", "--threshold", "2",
            "--shares-dir", P("shares"), "--data-dir", P("data"), "--domain-id", DomainId,
            "--passphrase-file", $"alice={P("alice")}", "--passphrase-file", $"bob={P("bob")}", "--passphrase-file", $"carol={P("carol")}",
            "--officer", $"olga={P("olga.key.pub")}", "--officer-threshold", "1",
            "--allow-network", "--insecure-test-kdf", "--output", "json"]);
        Assert.True(created.ExitCode == 0, created.ToString());
        var ceremony = JsonNode.Parse(created.Out)!;
        var oldKcv = ceremony["check_value"]!.GetValue<string>();
        string[] quorumConfig = [$"--Kms:Quorum:GenesisFile={ceremony["server_configuration"]!["Kms:Quorum:GenesisFile"]!.GetValue<string>()}", $"--Kms:Quorum:GenesisSha256={ceremony["officer_set_hash"]!.GetValue<string>()}"];

        byte[] record;
        await using (var siteA = await ServerProcess.StartAsync(P("data"), _conf, "site-a", P("user.pin"), DomainId, quorumConfig))
        {
            var (token, officerToken) = await siteA.BootstrapAsync("dev");
            await File.WriteAllTextAsync(P("developer.token"), token + "\n");
            await File.WriteAllTextAsync(P("officer.token"), officerToken + "\n");
            Assert.Equal(0, (await Kms(outputs, Client(siteA), "keys", "create", "dev/orders")).ExitCode);
            using var client = siteA.CreateClient(token);
            record = (await client.EncryptAsync("tenants/dev/keys/orders", "card 4111"u8.ToArray())).Ciphertext;

            // The officers approve the rotation (and, for the refusal below, a restore) while the server runs,
            // and the approvals are exported for the offline ceremony host.
            foreach (var (verb, extra, file) in new[] { ("rotate-domain", new[] { "--new-custodians", "3", "--new-threshold", "2" }, "rotation.approval.json"), ("restore-domain", new[] { "--token-label", "site-b" }, "restore.approval.json") })
            {
                var asked = await Kms(outputs, Client(siteA, "officer.token"), ["quorum", verb, .. extra, "--output", "json"]);
                Assert.True(asked.ExitCode == 0, asked.ToString());
                var name = JsonNode.Parse(asked.Out)!["name"]!.GetValue<string>();
                var approved = await Kms(outputs, Client(siteA, "officer.token"), "officer", "approve", name, "--key", P("olga.key"), "--key-passphrase-file", P("officer-key"), "--yes", "--output", "json");
                Assert.True(approved.ExitCode == 0, approved.ToString());
                Assert.Equal("QUORUM_REQUEST_STATE_APPROVED", JsonNode.Parse(approved.Out)!["state"]!.GetValue<string>());
                var exported = await Kms(outputs, Client(siteA, "officer.token"), "quorum", "export", name, "--out", P(file), "--output", "json");
                Assert.True(exported.ExitCode == 0, exported.ToString());

                // To standard output: the bundle alone, nothing after it.
                var piped = await Kms(outputs, Client(siteA, "officer.token"), "quorum", "export", name, "--out", "-");
                Assert.True(piped.ExitCode == 0, piped.ToString());
                Assert.Equal(await File.ReadAllTextAsync(P(file)), piped.Out);
            }
        }

        var rotationRequest = JsonNode.Parse(await File.ReadAllTextAsync(P("rotation.approval.json")))!["request"]!["name"]!.GetValue<string>();

        // Server stopped. The approval is verified offline before any share is read: none, the restore's,
        // or one for another share set are refused.
        string[] Rotate(string threshold, params string[] approval) =>
        [
            "ceremony", "rotate-domain", .. Hsm("rotation"), "--so-pin-file", P("so.pin"),
            "--share", Share("alice"), "--share", Share("carol"), "--passphrase-file", $"alice={P("alice")}", "--passphrase-file", $"carol={P("carol")}",
            "--new-custodian", "alice", "--new-custodian", "bob", "--new-custodian", "carol", "--new-threshold", threshold, "--new-shares-dir", P("new-shares"),
            "--new-passphrase-file", $"alice={P("alice")}", "--new-passphrase-file", $"bob={P("bob")}", "--new-passphrase-file", $"carol={P("carol")}",
            "--restore-token-label", "site-b", "--restore-pin-file", P("user.pin"),
            "--data-dir", P("data"), .. approval, "--allow-network", "--insecure-test-kdf", "--output", "json",
        ];
        var none = await Kms(outputs, Rotate("2"));
        Assert.Equal(5, none.ExitCode);
        Assert.Contains("this deployment has officers", none.Error, StringComparison.Ordinal);
        Assert.Equal(5, (await Kms(outputs, Rotate("2", "--without-approval"))).ExitCode);
        var otherOperation = await Kms(outputs, Rotate("2", "--approval", P("restore.approval.json")));
        Assert.Equal(5, otherOperation.ExitCode);
        Assert.Contains("is for RESTORE_DOMAIN, not ROTATE_DOMAIN_KEY", otherOperation.Error, StringComparison.Ordinal);
        var otherShape = await Kms(outputs, Rotate("3", "--approval", P("rotation.approval.json")));
        Assert.Equal(5, otherShape.ExitCode);
        Assert.Contains("approves new shares 2 of 3, not 3 of 3", otherShape.Error, StringComparison.Ordinal);
        Assert.False(Directory.Exists(P("new-shares")));

        // A rotation token that is not empty (here the production token, which holds the domain key)
        // is refused before any passphrase is read, any new key is made or any new share is written.
        var occupied = await Kms(outputs, [.. Rotate("2", "--approval", P("rotation.approval.json")).Select(a => a == "rotation" ? "site-a" : a)]);
        Assert.True(occupied.ExitCode == 5, occupied.ToString());
        Assert.Contains("kms: error: ceremony rotate-domain failed at step \"check the rotation token\" (token 'site-a')", occupied.Error, StringComparison.Ordinal);
        Assert.Contains("object(s); a rotation runs on a dedicated, freshly initialised token", occupied.Error, StringComparison.Ordinal);
        Assert.False(Directory.Exists(P("new-shares")));

        // The server recorded the newest officer set it verified; a database whose chain no longer
        // reaches it was rolled back, and the ceremony refuses its approvals too.
        var head = P("data/quorum/officer-head");
        var recordedHead = await File.ReadAllTextAsync(head);
        Assert.StartsWith("0 ", recordedHead, StringComparison.Ordinal);
        await File.WriteAllTextAsync(head, "1 " + new string('a', 64) + "\n");
        var rolledBack = await Kms(outputs, Rotate("2", "--approval", P("rotation.approval.json")));
        Assert.True(rolledBack.ExitCode == 5, rolledBack.ToString());
        Assert.Contains("the deployment's officer chain was rolled back", rolledBack.Error, StringComparison.Ordinal);
        Assert.False(Directory.Exists(P("new-shares")));
        await File.WriteAllTextAsync(head, recordedHead);

        // A rotation record written into the database by hand (it names a check value, here the
        // old key's) does not let share files choose the key: only the first run's MAC under the
        // old key does. Refused before anything moves.
        await using (var database = await global::Kms.Storage.Sqlite.SqliteStore.OpenAsync(new() { DatabasePath = P("data/kms.db") }, default))
        {
            await database.BeginDomainKeyRotationAsync(oldKcv, oldKcv, DateTimeOffset.UtcNow, default);
        }

        string[] forgedResume =
        [
            "ceremony", "rotate-domain", .. Hsm("rotation"), "--so-pin-file", P("so.pin"),
            "--share", Share("alice"), "--share", Share("carol"), "--passphrase-file", $"alice={P("alice")}", "--passphrase-file", $"carol={P("carol")}",
            "--new-share", Share("alice"), "--new-share", Share("bob"), "--new-passphrase-file", $"alice={P("alice")}", "--new-passphrase-file", $"bob={P("bob")}",
            "--restore-token-label", "site-b", "--restore-pin-file", P("user.pin"), "--data-dir", P("data"),
            "--approval", P("rotation.approval.json"), "--allow-network", "--insecure-test-kdf",
        ];
        var forged = await Kms(outputs, forgedResume);
        Assert.True(forged.ExitCode == 5, forged.ToString());
        Assert.Contains("but not the key the rotation chose", forged.Error, StringComparison.Ordinal);

        // New share files in --new-shares-dir already (an earlier run's) are refused with the other
        // paths, naming them, before the database, the approval or any PIN: left as they are.
        Directory.CreateDirectory(P("new-shares"));
        await File.WriteAllTextAsync(P("new-shares/share-1-alice.json"), "in the way");
        var blocked = await Kms(outputs, Rotate("2", "--approval", P("rotation.approval.json")));
        Assert.True(blocked.ExitCode == 5, blocked.ToString());
        Assert.Contains($"kms: --new-shares-dir {P("new-shares")} holds share files already (share-1-alice.json): share files are never overwritten", blocked.Error, StringComparison.Ordinal);
        Assert.Equal("in the way", await File.ReadAllTextAsync(P("new-shares/share-1-alice.json")));
        Directory.Delete(P("new-shares"), recursive: true);

        // A first run that fails before its first blob — its new shares' filesystem fills up after
        // the probe (a tmpfs filled but for one share file's page while the run waits for its PIN) —
        // takes its record back (and replaces the unstarted forged one first), and deletes the new
        // share file it wrote: a server could serve again, and no share of an unused key is kept.
        // Before, the share file written stayed, and the line said nothing of what was left.
        var newShares = Directory.CreateDirectory(P("new-shares")).FullName;
        await FilesystemFaults.ToolAsync("mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", newShares);
        try
        {
            var full = await FilesystemFaults.WithPinOnAFifoAsync(_dir, P("user.pin"), Rotate("2", "--approval", P("rotation.approval.json")), () => FilesystemFaults.FillAsync(newShares, 1));
            Assert.True(full.ExitCode == 9, full.ToString());
            Assert.EndsWith($"\nkms: cannot write share file {newShares}/share-2-bob.json: no space left on the filesystem holding {newShares}; "
                + $"nothing was moved (the database is still under domain key {oldKcv}) and the new share files written were deleted: run the command again\n", full.Error, StringComparison.Ordinal);
            Assert.Equal(["filler"], Directory.GetFileSystemEntries(newShares).Select(Path.GetFileName));
        }
        finally
        {
            await FilesystemFaults.ToolAsync("umount", newShares);
        }

        await using (var database = await global::Kms.Storage.Sqlite.SqliteStore.OpenAsync(new() { DatabasePath = P("data/kms.db") }, default))
        {
            Assert.Null(await database.GetDomainKeyRotationAsync(default));
        }

        Directory.Delete(P("new-shares"), recursive: true);

        // The token the new key goes to is checked before anything moves: a wrong PIN for it
        // leaves no record, no share files and the database under the old key.
        await File.WriteAllTextAsync(P("wrong.pin"), "00000000\n");
        var wrongPinArgs = Rotate("2", "--approval", P("rotation.approval.json"));
        wrongPinArgs[Array.IndexOf(wrongPinArgs, "--restore-pin-file") + 1] = P("wrong.pin");
        var wrongPin = await Kms(outputs, wrongPinArgs);
        Assert.True(wrongPin.ExitCode is not 0, wrongPin.ToString());
        Assert.False(Directory.Exists(P("new-shares")));
        await using (var database = await global::Kms.Storage.Sqlite.SqliteStore.OpenAsync(new() { DatabasePath = P("data/kms.db") }, default))
        {
            Assert.Null(await database.GetDomainKeyRotationAsync(default));
        }

        // Approved: rotate with two of the old shares into a new 2-of-3, site-b gets the new key.
        var rotated = await Kms(outputs, Rotate("2", "--approval", P("rotation.approval.json")));
        Assert.True(rotated.ExitCode == 0, rotated.ToString());
        var rotation = JsonNode.Parse(rotated.Out)!;
        Assert.Equal(rotationRequest, rotation["approval"]!["request"]!.GetValue<string>());
        Assert.Equal("olga", rotation["approval"]!["approved_by"]![0]!["name"]!.GetValue<string>());
        var rotationTranscript = await File.ReadAllTextAsync(rotation["transcript"]!.GetValue<string>());
        Assert.Contains($"quorum approval: request {rotationRequest} (ROTATE_DOMAIN_KEY), domain key {oldKcv}", rotationTranscript, StringComparison.Ordinal);
        Assert.Contains("approved by officer: olga, key ", rotationTranscript, StringComparison.Ordinal);
        Assert.Contains("new share protection: Argon2id m=64 KiB t=1 p=1, AES-256-GCM — WEAK TEST PARAMETERS", rotationTranscript, StringComparison.Ordinal);

        // With no rotation in progress, share files cannot choose the key a "resume" rotates onto
        // (here the old, retired one): refused before any approval or share is read.
        string[] resumeOntoOld =
        [
            "ceremony", "rotate-domain", .. Hsm("rotation"), "--so-pin-file", P("so.pin"),
            "--share", Path.Combine(P("new-shares"), "share-1-alice.json"), "--share", Path.Combine(P("new-shares"), "share-3-carol.json"),
            "--passphrase-file", $"alice={P("alice")}", "--passphrase-file", $"carol={P("carol")}",
            "--new-share", Share("alice"), "--new-share", Share("carol"), "--new-passphrase-file", $"alice={P("alice")}", "--new-passphrase-file", $"carol={P("carol")}",
            "--restore-token-label", "site-c", "--restore-pin-file", P("user.pin"), "--data-dir", P("data"), "--without-approval", "--allow-network", "--insecure-test-kdf",
        ];
        var ontoOld = await Kms(outputs, resumeOntoOld);
        Assert.Equal(5, ontoOld.ExitCode);
        Assert.Contains("no domain-key rotation is in progress on this database", ontoOld.Error, StringComparison.Ordinal);

        // The same approval cannot rotate again: it names the domain key that was rotated away.
        // (Into another --new-shares-dir: the rotation's own share files in new-shares are refused
        // first, with the other paths.)
        var reused = await Kms(outputs, [.. Rotate("2", "--approval", P("rotation.approval.json")).Select(a => a == P("new-shares") ? P("new-shares-again") : a)]);
        Assert.Equal(5, reused.ExitCode);
        Assert.Contains($"was given for the domain key with check value {oldKcv}", reused.Error, StringComparison.Ordinal);
        var newId = rotation["domain_id"]!.GetValue<string>();
        Assert.NotEqual(oldKcv, rotation["check_value"]!.GetValue<string>());
        Assert.Equal(oldKcv, rotation["previous_check_value"]!.GetValue<string>());
        Assert.Equal(3, Directory.GetFiles(P("new-shares"), "share-*.json").Length);
        Assert.Equal(0, (await Kms(outputs, "ceremony", "verify-transcript", rotation["transcript"]!.GetValue<string>(), "--public-key", P("data/audit/signing-key.pem"))).ExitCode);

        await using (var siteB = await ServerProcess.StartAsync(P("data"), _conf, "site-b", P("user.pin"), newId, quorumConfig))
        {
            using var client = siteB.CreateClient((await File.ReadAllTextAsync(P("developer.token"))).Trim());
            using var opened = await client.DecryptAsync(record);
            Assert.Equal("card 4111"u8.ToArray(), opened.Plaintext.ToArray());

            // The ceremony's audit events name the request and the approving officer.
            using var officer = siteB.CreateClient((await File.ReadAllTextAsync(P("officer.token"))).Trim());
            var approvalEvents = await officer.ListAuditEventsAsync(new Kms.Contracts.V1.ListAuditEventsRequest { Operation = "ceremony/rotate-domain/approval" }).ToListAsync();
            Assert.Contains(approvalEvents, e => e.Resource == rotationRequest && e.Principal == "system:ceremony");
            Assert.Contains(approvalEvents, e => e.Resource.StartsWith(rotationRequest + "/approvals/", StringComparison.Ordinal));
        }

        // The old shares still rebuild the old key, but the database no longer accepts it.
        var old = await Kms(outputs, ["ceremony", "restore-domain", .. Hsm("site-c"), "--share", Share("alice"), "--share", Share("bob"),
            "--passphrase-file", $"alice={P("alice")}", "--passphrase-file", $"bob={P("bob")}", "--data-dir", P("data"), "--without-approval", "--allow-network", "--insecure-test-kdf"]);
        Assert.Equal(5, old.ExitCode);
        Assert.Contains("nothing was imported", old.Error, StringComparison.Ordinal);
        Assert.Equal(3, (await Kms(outputs, ["ceremony", "verify-domain", .. Hsm("site-c"), "--domain-id", DomainId])).ExitCode);

        // The rotation token was wiped: its user PIN no longer opens it.
        Assert.NotEqual(0, (await Kms(outputs, ["ceremony", "verify-domain", .. Hsm("rotation"), "--domain-id", newId])).ExitCode);
    }

    [Fact]
    public async Task CreateDomain_NetworkUpWithoutForce_Refused_NothingImported()
    {
        if (System.Net.NetworkInformation.NetworkInterface.GetAllNetworkInterfaces()
            .All(n => n.NetworkInterfaceType == System.Net.NetworkInformation.NetworkInterfaceType.Loopback
                || n.OperationalStatus != System.Net.NetworkInformation.OperationalStatus.Up))
        {
            Assert.Fail("this test needs a network interface up besides loopback (the CI container has one)");
        }

        var outputs = new List<CliResult>();
        Assert.Equal(0, (await Kms(outputs, ["ceremony", "init-token", .. Hsm("site-a"), "--so-pin-file", P("so.pin")])).ExitCode);
        await Kms(outputs, "officer", "keygen", "--out", P("olga.key"), "--key-passphrase-file", P("officer-key"));
        var refused = await Kms(outputs, ["ceremony", "create-domain", .. Hsm("site-a"), "--custodians", "3", "--threshold", "2",
            "--officer", $"olga={P("olga.key.pub")}", "--officer-threshold", "1",
            "--shares-dir", P("shares"), "--data-dir", P("data"), "--passphrase-file", $"custodian-1={P("alice")}", "--insecure-test-kdf"]);

        Assert.Equal(5, refused.ExitCode);
        Assert.Contains("must be offline", refused.Error, StringComparison.Ordinal);
        Assert.False(Directory.Exists(P("shares")) && Directory.GetFiles(P("shares")).Length > 0);
        Assert.Equal(3, (await Kms(outputs, ["ceremony", "verify-domain", .. Hsm("site-a"), "--domain-id", "anything"])).ExitCode);
    }

    // --insecure-test-kdf copied from a test or a drill into a real ceremony used to run it with
    // share files brute-forced cheaply, said only by a warning among its output. Without
    // KMS_ALLOW_INSECURE_TEST_KDF=1 it is refused (usage, exit 2) before anything is generated;
    // restore-domain likewise, which is where weak share files are read.
    [Fact]
    public async Task InsecureTestKdf_WithoutTheVariable_Refused_NothingGenerated()
    {
        var outputs = new List<CliResult>();
        Assert.Equal(0, (await Kms(outputs, ["ceremony", "init-token", .. Hsm("site-a"), "--so-pin-file", P("so.pin")])).ExitCode);
        Assert.Equal(0, (await Kms(outputs, "officer", "keygen", "--out", P("olga.key"), "--key-passphrase-file", P("officer-key"))).ExitCode);
        string[] create =
        [
            "ceremony", "create-domain", .. Hsm("site-a"), "--custodians", "2", "--threshold", "2", "--domain-id", DomainId,
            "--shares-dir", P("shares"), "--data-dir", P("data"), "--passphrase-file", $"custodian-1={P("alice")}", "--passphrase-file", $"custodian-2={P("bob")}",
            "--officer", $"olga={P("olga.key.pub")}", "--officer-threshold", "1", "--allow-network", "--insecure-test-kdf", "--output", "json",
        ];

        foreach (var value in new[] { "0", "", "true", "yes" })
        {
            var refused = await Kms(outputs, new Dictionary<string, string> { [CliRun.AllowInsecureTestKdf] = value }, create);
            Assert.True(refused.ExitCode == 2, refused.ToString());
            Assert.Contains("refused unless KMS_ALLOW_INSECURE_TEST_KDF=1", refused.Error, StringComparison.Ordinal);
        }

        var restore = await Kms(outputs, new Dictionary<string, string> { [CliRun.AllowInsecureTestKdf] = "0" },
            ["ceremony", "restore-domain", .. Hsm("site-a"), "--share", P("shares/none.json"), "--share", P("shares/other.json"), "--data-dir", P("data"), "--without-approval", "--allow-network", "--insecure-test-kdf"]);
        Assert.True(restore.ExitCode == 2, restore.ToString());
        Assert.Contains("refused unless KMS_ALLOW_INSECURE_TEST_KDF=1", restore.Error, StringComparison.Ordinal);

        Assert.False(Directory.Exists(P("shares")) && Directory.EnumerateFileSystemEntries(P("shares")).Any());
        Assert.False(Directory.Exists(P("data")) && Directory.EnumerateFileSystemEntries(P("data")).Any());
        Assert.Equal(3, (await Kms(outputs, ["ceremony", "verify-domain", .. Hsm("site-a"), "--domain-id", DomainId])).ExitCode);

        // With it, the same command line runs (and still warns).
        var allowed = await Kms(outputs, create);
        Assert.True(allowed.ExitCode == 0, allowed.ToString());
        Assert.Contains("kms: warning: --insecure-test-kdf", allowed.Error, StringComparison.Ordinal);
    }

    // "\u041Elga" with a Cyrillic capital O prints as "Olga": a second Olga in the transcript, one
    // share file each. So does an all-Cyrillic "\u0430\u0455\u0440" beside "asp". Refused (usage, exit
    // 2) before the token, a passphrase or any directory is touched, naming the letter or the name.
    [Fact]
    public async Task CreateDomain_CustodianNamesThatPrintLikeAnother_UsageError_TheTokenUntouched_NothingWritten()
    {
        var outputs = new List<CliResult>();
        Assert.Equal(0, (await Kms(outputs, ["ceremony", "init-token", .. Hsm("site-a"), "--so-pin-file", P("so.pin")])).ExitCode);
        Assert.Equal(0, (await Kms(outputs, "officer", "keygen", "--out", P("olga.key"), "--key-passphrase-file", P("officer-key"))).ExitCode);
        foreach (var (names, said) in new[]
        {
            (new[] { "Olga", "\u041Elga" }, "--custodian: the custodian name must not mix scripts whose letters look alike (Latin, Greek, Cyrillic, Armenian and Cherokee): U+041E (Cyrillic) stands among Latin letters"),
            (new[] { "asp", "bob", "\u0430\u0455\u0440" }, "--custodian: the custodian name '\u0430\u0455\u0440' prints like 'asp', another custodian of this ceremony"),
        })
        {
            var refused = await Kms(outputs, ["ceremony", "create-domain", .. Hsm("site-a"), .. names.SelectMany(n => new[] { "--custodian", n }), "--threshold", "2",
                "--domain-id", DomainId, "--shares-dir", P("shares"), "--data-dir", P("data"), "--passphrase-file", $"{names[0]}={P("alice")}",
                "--officer", $"olga={P("olga.key.pub")}", "--officer-threshold", "1", "--allow-network", "--insecure-test-kdf"]);

            Assert.True(refused.ExitCode == 2, refused.ToString());
            Assert.Contains(said, refused.Error, StringComparison.Ordinal);
            Assert.False(Directory.Exists(P("shares")) || Directory.Exists(P("data")));
        }

        // The token holds no domain key: nothing was imported.
        Assert.Equal(3, (await Kms(outputs, ["ceremony", "verify-domain", .. Hsm("site-a"), "--domain-id", DomainId])).ExitCode);
    }

    // Two deployments whose ceremonies named the same officers and threshold used to pin the same
    // genesis hash (the genesis set's text held only those and 64 zeros), so a CHANGE_OFFICERS
    // that deployment A's officers approved for A verified in B's chain too: whoever could write
    // B's database could copy A's new officer set (say, with an officer A added and B never
    // approved) into B, and the server and the offline ceremony would trust it. Each ceremony's
    // genesis is now its own (a random value in its "previous" line).
    [Fact]
    public async Task CreateDomain_TwoDeploymentsWithTheSameOfficers_GenesisOfEachItsOwn_AnOfficerChangeOfOneRefusedByTheOther()
    {
        var outputs = new List<CliResult>();
        Assert.Equal(0, (await Kms(outputs, "officer", "keygen", "--out", P("olga.key"), "--key-passphrase-file", P("officer-key"))).ExitCode);
        Assert.Equal(0, (await Kms(outputs, "officer", "keygen", "--out", P("mallory.key"), "--key-passphrase-file", P("officer-key"))).ExitCode);
        var genesis = new List<global::Kms.Core.Quorum.OfficerSet>();
        foreach (var site in new[] { "site-a", "site-b" })
        {
            Assert.Equal(0, (await Kms(outputs, ["ceremony", "init-token", .. Hsm(site), "--so-pin-file", P("so.pin")])).ExitCode);
            var created = await Kms(outputs, [
                "ceremony", "create-domain", .. Hsm(site), "--custodians", "2", "--threshold", "2", "--domain-id", DomainId,
                "--shares-dir", P($"shares-{site}"), "--data-dir", P($"data-{site}"), "--passphrase-file", $"custodian-1={P("alice")}", "--passphrase-file", $"custodian-2={P("bob")}",
                "--officer", $"olga={P("olga.key.pub")}", "--officer-threshold", "1", "--allow-network", "--insecure-test-kdf", "--output", "json"]);
            Assert.True(created.ExitCode == 0, created.ToString());
            genesis.Add(global::Kms.Core.Quorum.GenesisFile.Read(JsonNode.Parse(created.Out)!["server_configuration"]!["Kms:Quorum:GenesisFile"]!.GetValue<string>()));
        }

        var (a, b) = (genesis[0], genesis[1]);
        Assert.Equal(a.Officers.Single().Fingerprint, b.Officers.Single().Fingerprint);
        Assert.NotEqual(a.Hash, b.Hash);

        // Deployment A's officer adds mallory there, as A's quorum may.
        using var olga = global::Kms.Client.Quorum.OfficerKeys.LoadPrivateKey(P("olga.key"), _secrets["officer-key"]);
        var next = a.Successor([a.Officers.Single(), global::Kms.Core.Quorum.Officer.FromPem("mallory", await File.ReadAllTextAsync(P("mallory.key.pub")))], 1);
        var change = new global::Kms.Core.Quorum.QuorumRequest
        {
            Id = global::Kms.Core.Quorum.QuorumRequestId.NewId(),
            Operation = global::Kms.Core.Quorum.QuorumOperation.ChangeOfficers,
            Parameters = next.ChangeParameters(),
            DomainKcv = "A1B2C3",
            OfficerSetSequence = a.Sequence,
            OfficerSetHash = a.Hash,
            RequestedBy = "token:olga",
            CreateTime = DateTimeOffset.UnixEpoch,
            ExpireTime = DateTimeOffset.UnixEpoch.AddHours(1),
            State = global::Kms.Core.Quorum.QuorumRequestState.Executed,
            ProposedOfficers = next,
        };
        var signed = DateTimeOffset.UnixEpoch.AddMinutes(1);
        var signature = olga.SignData(global::Kms.Core.Quorum.QuorumRendering.StatementBytes(change, signed), System.Security.Cryptography.HashAlgorithmName.SHA256, System.Security.Cryptography.DSASignatureFormat.Rfc3279DerSequence);
        change = change with { Approvals = [new(a.Officers.Single().Fingerprint, signature, signed) { SignTime = signed }] };
        var inA = next.WithChange(change);
        Assert.Same(inA, global::Kms.Core.Quorum.OfficerChain.Verify([a, inA], a));

        // The same rows copied into deployment B's database: refused there.
        var refused = Assert.Throws<global::Kms.Core.Errors.KmsException>(() => global::Kms.Core.Quorum.OfficerChain.Verify([b, inA], b));
        Assert.Contains("does not follow set 0", refused.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task CreateDomain_TokenOrDataDirTaken_RefusedAndTheFirstDomainKeyIsIntact()
    {
        var outputs = new List<CliResult>();
        Assert.Equal(0, (await Kms(outputs, ["ceremony", "init-token", .. Hsm("site-a"), "--so-pin-file", P("so.pin")])).ExitCode);
        Assert.Equal(0, (await Kms(outputs, "officer", "keygen", "--out", P("olga.key"), "--key-passphrase-file", P("officer-key"))).ExitCode);
        string[] Create(string shares, string data, string id) =>
        [
            "ceremony", "create-domain", .. Hsm("site-a"), "--custodians", "2", "--threshold", "2", "--domain-id", id,
            "--shares-dir", P(shares), "--data-dir", P(data), "--passphrase-file", $"custodian-1={P("alice")}", "--passphrase-file", $"custodian-2={P("bob")}",
            "--officer", $"olga={P("olga.key.pub")}", "--officer-threshold", "1", "--allow-network", "--insecure-test-kdf", "--output", "json",
        ];
        // A passphrase the policy refuses (test KDF or not): refused before anything is generated.
        await File.WriteAllTextAsync(P("short"), "too short\n");
        var weak = await Kms(outputs, [.. Create("shares-0", "data-0", DomainId).Select(a => a == $"custodian-2={P("bob")}" ? $"custodian-2={P("short")}" : a)]);
        Assert.Equal(2, weak.ExitCode);
        Assert.Contains("custodian-2", weak.Error, StringComparison.Ordinal);
        Assert.Empty(Directory.GetFiles(P("shares-0")));
        Assert.Equal(3, (await Kms(outputs, ["ceremony", "verify-domain", .. Hsm("site-a"), "--domain-id", DomainId])).ExitCode);

        // A failure after the key was imported and the shares written (here the transcript's
        // directory is a file) takes all of it back, so the same run can be made again: the
        // files it wrote and the directories it made (the shares', quorum/, audit/), not the
        // file that was there before it.
        Directory.CreateDirectory(P("data"));
        await File.WriteAllTextAsync(P("data/ceremonies"), "in the way");
        var late = await Kms(outputs, Create("shares", "data", DomainId));
        Assert.NotEqual(0, late.ExitCode);
        Assert.Equal(3, (await Kms(outputs, ["ceremony", "verify-domain", .. Hsm("site-a"), "--domain-id", DomainId])).ExitCode);
        Assert.False(Directory.Exists(P("shares")), late.ToString());
        Assert.Equal(["ceremonies"], Directory.GetFileSystemEntries(P("data"), "*", SearchOption.AllDirectories).Select(f => Path.GetRelativePath(P("data"), f)));
        File.Delete(P("data/ceremonies"));

        var first = await Kms(outputs, Create("shares", "data", DomainId));
        Assert.True(first.ExitCode == 0, first.ToString());
        Assert.Contains("kms: warning: --insecure-test-kdf: share files are protected by Argon2id at 64 KiB", first.Error, StringComparison.Ordinal);
        var kcv = JsonNode.Parse(first.Out)!["check_value"]!.GetValue<string>();

        // Another domain key on the same token: the HSM step refuses it, and the ceremony's
        // clean-up must not touch the key that was there.
        var second = await Kms(outputs, Create("shares-2", "data-2", "dk-another"));
        Assert.Equal(5, second.ExitCode);
        Assert.Contains("already holds", second.Error, StringComparison.Ordinal);
        Assert.Empty(Directory.GetFiles(P("shares-2")));
        Assert.Equal(kcv, (await Kms(outputs, ["ceremony", "verify-domain", .. Hsm("site-a"), "--domain-id", DomainId])).Out.Trim());

        // A data directory that holds a deployment: refused before anything is generated.
        var reused = await Kms(outputs, Create("shares-3", "data", "dk-third"));
        Assert.Equal(5, reused.ExitCode);
        Assert.Contains("holds a deployment already", reused.Error, StringComparison.Ordinal);
        Assert.False(Directory.Exists(P("shares-3")));
    }

    [Fact]
    public async Task CeremonyProcess_IsNotDumpable_AndPinsNeverInItsArguments()
    {
        // The ceremony's own process: started with its PIN in a file, it turns dumping off before
        // it asks for anything; /proc shows no PIN in its command line, and its transcript records
        // what the kernel says of it (the core limit and PR_GET_DUMPABLE, read back).
        Assert.Equal(0, (await Kms([], ["ceremony", "init-token", .. Hsm("site-a"), "--so-pin-file", P("so.pin")])).ExitCode);
        Assert.Equal(0, (await Kms([], "officer", "keygen", "--out", P("olga.key"), "--key-passphrase-file", P("officer-key"))).ExitCode);
        var fifo = P("pin.fifo");
        using (var mkfifo = Process.Start("mkfifo", [fifo]))
        {
            await mkfifo!.WaitForExitAsync();
        }

        // Started with core dumps allowed, so the limit of 0 seen below is the ceremony's doing.
        var start = new ProcessStartInfo("bash") { RedirectStandardOutput = true, RedirectStandardError = true, Environment = { [CliRun.AllowInsecureTestKdf] = "1" } };
        foreach (var arg in (string[])["-c", "ulimit -c unlimited && exec \"$@\"", "bash", "dotnet", CliRun.KmsDll, "ceremony", "create-domain", .. Hsm("site-a", pinFile: fifo), "--custodians", "2", "--threshold", "2",
            "--shares-dir", P("shares"), "--data-dir", P("data"), "--passphrase-file", $"custodian-1={P("alice")}", "--passphrase-file", $"custodian-2={P("bob")}",
            "--officer", $"olga={P("olga.key.pub")}", "--officer-threshold", "1",
            "--allow-network", "--insecure-test-kdf", "--output", "json"])
        {
            start.ArgumentList.Add(arg);
        }

        using var process = Process.Start(start)!;
        var stderr = process.StandardError.ReadToEndAsync();
        var stdout = process.StandardOutput.ReadToEndAsync();
        // It blocks opening the FIFO for its PIN: look at it then.
        var status = "";
        for (var i = 0; i < 100 && !status.Contains("Name:", StringComparison.Ordinal); i++)
        {
            await Task.Delay(100);
            status = File.Exists($"/proc/{process.Id}/status") ? await File.ReadAllTextAsync($"/proc/{process.Id}/status") : "";
        }

        var deadline = DateTime.UtcNow.AddSeconds(30);
        var dumpable = true;
        while (DateTime.UtcNow < deadline && dumpable)
        {
            // Non-dumpable processes' /proc files belong to root; the limits file shows the core limit.
            Assert.False(process.HasExited, $"the ceremony ended before it opened the PIN's FIFO: exit {(process.HasExited ? process.ExitCode : 0)}\n{(process.HasExited ? await stderr : "")}");
            var limits = await File.ReadAllTextAsync($"/proc/{process.Id}/limits");
            dumpable = !limits.Split('\n').Any(l => l.StartsWith("Max core file size", StringComparison.Ordinal) && l.Contains(" 0 ", StringComparison.Ordinal));
            if (dumpable)
            {
                await Task.Delay(100);
            }
        }

        var commandLine = (await File.ReadAllTextAsync($"/proc/{process.Id}/cmdline")).Replace('\0', ' ');
        await File.WriteAllTextAsync(fifo, _secrets["user.pin"] + "\n");
        await process.WaitForExitAsync();

        Assert.False(dumpable, "the ceremony did not set its core-file limit to 0");
        Assert.DoesNotContain(_secrets["user.pin"], commandLine, StringComparison.Ordinal);
        Assert.True(process.ExitCode == 0, await stderr);
        var transcript = await File.ReadAllTextAsync(JsonNode.Parse(await stdout)!["transcript"]!.GetValue<string>());
        var hygiene = transcript.Split('\n').Single(l => l.StartsWith("host hygiene: ", StringComparison.Ordinal));
        Assert.StartsWith("host hygiene: core dumps off (RLIMIT_CORE=0, not dumpable); ", hygiene, StringComparison.Ordinal);
    }

    private string P(string relative) => Path.Combine(_dir, relative);

    private string Share(string custodian) => Directory.GetFiles(P("shares"), $"share-*-{custodian}.json").Single();

    private string[] Hsm(string site, string? pinFile = null) =>
        ["--token-label", site, "--softhsm-conf", _conf, "--pin-file", pinFile ?? P("user.pin")];

    private Dictionary<string, string> Client(ServerProcess server, string tokenFile = "developer.token") => new()
    {
        ["KMS_ENDPOINT"] = server.Address.ToString(),
        ["KMS_CA_FILE"] = server.CaCertificatePath,
        ["KMS_TOKEN_FILE"] = P(tokenFile),
    };

    private Task<CliResult> Kms(List<CliResult> outputs, params string[] args) => Kms(outputs, [], args);

    private async Task<CliResult> Kms(List<CliResult> outputs, Dictionary<string, string> environment, params string[] args)
    {
        var result = await CliRun.ProcessAsync(environment, _dir, args);
        outputs.Add(result);
        return result;
    }
}
