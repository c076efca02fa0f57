using System.Text;
using Kms.Core.Quorum;
using Kms.Storage.Sqlite;
using Kms.Testing;

namespace Kms.Cli.Tests;

/// <summary>
/// A ceremony step that the HSM refuses, run as the operator runs it (the built <c>kms</c> as a
/// process, a SoftHSM token of its own): standard error names the step, the token and the PKCS#11
/// return value or the cause, and says what to do next; the PIN given, the token's real PIN and
/// the custodians' passphrases appear nowhere on standard output or error, raw, hex or base64.
/// </summary>
public sealed class CeremonyHsmFailureTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("kms-ceremony-hsm-").FullName;
    private readonly string _conf;
    private readonly Dictionary<string, string> _secrets = [];

    public CeremonyHsmFailureTests()
    {
        Assert.True(File.Exists(SoftHsm.ModulePath), $"SoftHSM is not installed ({SoftHsm.ModulePath}); ./test.sh installs it");
        Directory.CreateDirectory(Path.Combine(_dir, "tokens"));
        _conf = Path.Combine(_dir, "softhsm2.conf");
        File.WriteAllText(_conf, $"directories.tokendir = {Path.Combine(_dir, "tokens")}\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n");
        foreach (var (name, value) in new[]
        {
            ("so.pin", "so-" + Guid.NewGuid().ToString("N")), ("user.pin", "user-" + Guid.NewGuid().ToString("N")),
            ("wrong.pin", "wrong-" + Guid.NewGuid().ToString("N")),
            ("alice", "alice passphrase " + Guid.NewGuid().ToString("N")[..8]), ("bob", "bob passphrase " + Guid.NewGuid().ToString("N")[..8]),
            ("officer-key", "officer key passphrase " + Guid.NewGuid().ToString("N")[..8]),
        })
        {
            _secrets[name] = value;
            File.WriteAllText(P(name), value + "\n");
            File.SetUnixFileMode(P(name), UnixFileMode.UserRead | UnixFileMode.UserWrite);
        }
    }

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    [Theory]
    [InlineData("wrong PIN")]
    [InlineData("no such token")]
    [InlineData("not a PKCS#11 module")]
    public async Task CreateDomain_HsmRefuses_StderrNamesStepTokenAndCause_WhatToDoNext_NoSecret(string fault)
    {
        var outputs = new List<CliResult>();
        var init = await Kms(outputs, "ceremony", "init-token", "--token-label", "site-a", "--softhsm-conf", _conf, "--pin-file", P("user.pin"), "--so-pin-file", P("so.pin"));
        Assert.True(init.ExitCode == 0, init.ToString());
        var keygen = await Kms(outputs, "officer", "keygen", "--out", P("olga.key"), "--key-passphrase-file", P("officer-key"));
        Assert.True(keygen.ExitCode == 0, keygen.ToString());

        // A file that is not a PKCS#11 library: the module path an operator mistypes.
        await File.WriteAllTextAsync(P("not-a-module.so"), "not a shared library\n");
        var (label, pinFile, module) = fault switch
        {
            "wrong PIN" => ("site-a", P("wrong.pin"), SoftHsm.ModulePath),
            "no such token" => ("site-x", P("user.pin"), SoftHsm.ModulePath),
            _ => ("site-a", P("wrong.pin"), P("not-a-module.so")),
        };
        var failed = await Kms(outputs, "ceremony", "create-domain", "--token-label", label, "--softhsm-conf", _conf, "--pin-file", pinFile, "--module", module,
            "--custodian", "alice", "--custodian", "bob", "--threshold", "2", "--shares-dir", P("shares"), "--data-dir", P("data"),
            "--passphrase-file", $"alice={P("alice")}", "--passphrase-file", $"bob={P("bob")}",
            "--officer", $"olga={P("olga.key.pub")}", "--officer-threshold", "1", "--allow-network", "--insecure-test-kdf");

        Assert.True(failed.ExitCode == 5, failed.ToString());
        Assert.Equal("", failed.Out);
        var lines = failed.Error.Split('\n', StringSplitOptions.RemoveEmptyEntries).Where(l => !l.StartsWith("kms: warning: running with network interfaces up", StringComparison.Ordinal)).ToList();
        switch (fault)
        {
            case "wrong PIN":
                Assert.Equal("kms: error: ceremony create-domain failed at step \"open the token\" (token 'site-a'): CKR_PIN_INCORRECT", lines[^2]);
                Assert.StartsWith("kms: HSM: the HSM refused the user PIN of token 'site-a' (CKR_PIN_INCORRECT) — check the PIN given for that token before trying again", lines[^1], StringComparison.Ordinal);
                break;
            case "no such token":
                Assert.Equal("kms: error: ceremony create-domain failed at step \"inspect the token\" (token 'site-x'): no such token", lines[^2]);
                Assert.StartsWith($"kms: HSM: no token labelled 'site-x' in {SoftHsm.ModulePath} — check --token-label", lines[^1], StringComparison.Ordinal);
                break;
            default:
                Assert.Equal("kms: error: ceremony create-domain failed at step \"inspect the token\" (token 'site-a'): the PKCS#11 module did not load", lines[^2]);
                Assert.StartsWith($"kms: HSM: cannot load the PKCS#11 module {P("not-a-module.so")}: ", lines[^1], StringComparison.Ordinal);
                Assert.Contains(" — --module must name the HSM's PKCS#11 library", lines[^1], StringComparison.Ordinal);
                break;
        }

        Assert.False(Directory.Exists(P("shares")) && Directory.EnumerateFiles(P("shares")).Any(), "share files were written");
        var everything = string.Join("\n", outputs.Select(o => o.Out + o.Error));
        foreach (var (name, secret) in _secrets)
        {
            var bytes = Encoding.UTF8.GetBytes(secret);
            foreach (var form in new[] { secret, Convert.ToHexString(bytes), Convert.ToHexStringLower(bytes), Convert.ToBase64String(bytes) })
            {
                Assert.False(everything.Contains(form, StringComparison.Ordinal), $"the {name} secret leaked ({form})");
            }
        }
    }

    // The token a domain key goes into is checked before any custodian is asked for a passphrase:
    // here no passphrase file is given and there is no terminal, so a command that asked first
    // would fail with "no passphrase for alice" (exit 2) and never reach the token.
    [Fact]
    public async Task RestoreAndCreateDomain_TokenCannotTakeTheKey_RefusedNamingTheToken_BeforeAnyPassphraseIsAsked()
    {
        var outputs = new List<CliResult>();
        foreach (var site in new[] { "site-a", "site-b" })
        {
            var init = await Kms(outputs, "ceremony", "init-token", "--token-label", site, "--softhsm-conf", _conf, "--pin-file", P("user.pin"), "--so-pin-file", P("so.pin"));
            Assert.True(init.ExitCode == 0, init.ToString());
        }

        Assert.Equal(0, (await Kms(outputs, "officer", "keygen", "--out", P("olga.key"), "--key-passphrase-file", P("officer-key"))).ExitCode);
        string[] Create(string site, string id, bool passphrases = true) =>
        [
            "ceremony", "create-domain", "--token-label", site, "--softhsm-conf", _conf, "--pin-file", P("user.pin"),
            "--custodian", "alice", "--custodian", "bob", "--threshold", "2", "--domain-id", id, "--shares-dir", P($"shares-{id}"), "--data-dir", P($"data-{id}"),
            .. passphrases ? (string[])["--passphrase-file", $"alice={P("alice")}", "--passphrase-file", $"bob={P("bob")}"] : [],
            "--officer", $"olga={P("olga.key.pub")}", "--officer-threshold", "1", "--allow-network", "--insecure-test-kdf", "--output", "json",
        ];
        var kcv = new Dictionary<string, string>();
        foreach (var (site, id) in new[] { ("site-a", "dk-a"), ("site-b", "dk-b") })
        {
            var created = await Kms(outputs, Create(site, id));
            Assert.True(created.ExitCode == 0, created.ToString());
            kcv[site] = System.Text.Json.Nodes.JsonNode.Parse(created.Out)!["check_value"]!.GetValue<string>();
        }

        // site-a's shares, restored (break-glass, onto a new node's data directory) into: site-b with a
        // wrong PIN; site-b, which holds another domain key; site-a, which holds this one already.
        string[] Restore(string site, string pinFile) =>
        [
            "ceremony", "restore-domain", "--token-label", site, "--softhsm-conf", _conf, "--pin-file", pinFile,
            .. Directory.GetFiles(P("shares-dk-a"), "share-*.json").Order(StringComparer.Ordinal).SelectMany(f => new[] { "--share", f }),
            "--check-value", kcv["site-a"], "--data-dir", P("new-node"), "--without-approval", "--allow-network", "--insecure-test-kdf",
        ];
        var refusals = new[]
        {
            (await Kms(outputs, Restore("site-b", P("wrong.pin"))), "restore-domain", "open the token", "site-b", "CKR_PIN_INCORRECT",
                "kms: HSM: the HSM refused the user PIN of token 'site-b' (CKR_PIN_INCORRECT) — check the PIN given for that token before trying again"),
            (await Kms(outputs, Restore("site-b", P("user.pin"))), "restore-domain", "check the token", "site-b", "the token holds a domain key already",
                $"kms: HSM: token 'site-b' already holds a domain key (label 'kms-domain-key' or CKA_ID 'dk-a', check value {kcv["site-b"]}), not the one with check value {kcv["site-a"]} — a token holds one domain key: kms ceremony verify-domain shows the one it holds"),
            (await Kms(outputs, Restore("site-a", P("user.pin"))), "restore-domain", "check the token", "site-a", "the token holds a domain key already",
                $"kms: HSM: token 'site-a' already holds this domain key (label 'kms-domain-key' or CKA_ID 'dk-a', check value {kcv["site-a"]}): nothing to import — a token holds one domain key"),
            (await Kms(outputs, Create("site-a", "dk-c", passphrases: false)), "create-domain", "check the token", "site-a", "the token holds a domain key already",
                $"kms: HSM: token 'site-a' already holds a domain key (label 'kms-domain-key' or CKA_ID 'dk-c', check value {kcv["site-a"]}) — a token holds one domain key"),
        };
        foreach (var (result, command, step, token, cause, line) in refusals)
        {
            Assert.True(result.ExitCode == 5, result.ToString());
            Assert.Equal("", result.Out);
            var lines = result.Error.Split('\n', StringSplitOptions.RemoveEmptyEntries)
                .Where(l => !l.StartsWith("kms: warning: running with network interfaces up", StringComparison.Ordinal) && !l.StartsWith("kms: warning: --insecure-test-kdf", StringComparison.Ordinal)).ToList();
            Assert.Equal($"kms: error: ceremony {command} failed at step \"{step}\" (token '{token}'): {cause}", lines[^2]);
            Assert.StartsWith(line, lines[^1], StringComparison.Ordinal);
            Assert.DoesNotContain("passphrase", result.Error, StringComparison.Ordinal);
        }

        // Nothing imported, nothing written: each token holds the key it held.
        foreach (var (site, id) in new[] { ("site-a", "dk-a"), ("site-b", "dk-b") })
        {
            var verified = await Kms(outputs, "ceremony", "verify-domain", "--token-label", site, "--softhsm-conf", _conf, "--pin-file", P("user.pin"), "--domain-id", id);
            Assert.True(verified.ExitCode == 0, verified.ToString());
            Assert.Equal(kcv[site], verified.Out.Trim());
        }

        Assert.False(Directory.Exists(P("new-node")) && Directory.EnumerateFileSystemEntries(P("new-node")).Any(), "the new node's data directory was written");
        Assert.False(Directory.Exists(P("shares-dk-c")) && Directory.EnumerateFiles(P("shares-dk-c")).Any(), "share files were written");
    }

    // The rotation token's security-officer PIN is presented at the wipe, after every blob has
    // moved. It is checked with the other token checks, before any custodian is asked for a
    // passphrase: before, a mistyped one failed the rotation at the wipe, with the new share files
    // written, the database rotated onto the new key and that key in no token.
    [Fact]
    public async Task RotateDomain_WrongSecurityOfficerPin_RefusedBeforeAnyPassphrase_NoShareWritten_DatabaseUnchanged()
    {
        var outputs = new List<CliResult>();
        foreach (var site in new[] { "site-a", "rotation", "site-b" })
        {
            var init = await Kms(outputs, "ceremony", "init-token", "--token-label", site, "--softhsm-conf", _conf, "--pin-file", P("user.pin"), "--so-pin-file", P("so.pin"));
            Assert.True(init.ExitCode == 0, init.ToString());
        }

        using var officers = new TestOfficers("olga");
        await File.WriteAllTextAsync(P("olga.pub"), officers.KeyOf("olga").ExportSubjectPublicKeyInfoPem());
        var created = await Kms(outputs, "ceremony", "create-domain", "--token-label", "site-a", "--softhsm-conf", _conf, "--pin-file", P("user.pin"),
            "--custodian", "alice", "--custodian", "bob", "--threshold", "2", "--domain-id", "dk-a", "--shares-dir", P("shares"), "--data-dir", P("data"),
            "--passphrase-file", $"alice={P("alice")}", "--passphrase-file", $"bob={P("bob")}",
            "--officer", $"olga={P("olga.pub")}", "--officer-threshold", "1", "--allow-network", "--insecure-test-kdf", "--output", "json");
        Assert.True(created.ExitCode == 0, created.ToString());
        var kcv = System.Text.Json.Nodes.JsonNode.Parse(created.Out)!["check_value"]!.GetValue<string>();

        // olga approves the rotation to a new 2-of-2 share set, as kms officer approve would.
        var genesis = GenesisFile.Read(P("data/quorum/genesis.json"));
        var time = DateTimeOffset.FromUnixTimeMilliseconds(DateTimeOffset.UtcNow.AddMinutes(-5).ToUnixTimeMilliseconds());
        var request = TestOfficers.Request(genesis, QuorumOperation.RotateDomainKey, [KeyValuePair.Create("new-custodians", "2"), KeyValuePair.Create("new-threshold", "2")], time) with { DomainKcv = kcv };
        request = request with { Approvals = [officers.Approve("olga", request, time.AddMinutes(1))], State = QuorumRequestState.Approved, ExecuteTime = time.AddMinutes(1) };
        await File.WriteAllTextAsync(P("rotation.json"), new ApprovalBundle(request, [genesis]).Serialize());

        string[] Rotate(string soPinFile, bool passphrases = true) =>
        [
            "ceremony", "rotate-domain", "--token-label", "rotation", "--softhsm-conf", _conf, "--pin-file", P("user.pin"), "--so-pin-file", soPinFile,
            .. Directory.GetFiles(P("shares"), "share-*.json").Order(StringComparer.Ordinal).SelectMany(f => new[] { "--share", f }),
            "--new-custodian", "alice", "--new-custodian", "bob", "--new-threshold", "2", "--new-shares-dir", P("new-shares"),
            .. passphrases
                ? (string[])["--passphrase-file", $"alice={P("alice")}", "--passphrase-file", $"bob={P("bob")}", "--new-passphrase-file", $"alice={P("alice")}", "--new-passphrase-file", $"bob={P("bob")}"]
                : [],
            "--restore-token-label", "site-b", "--restore-pin-file", P("user.pin"), "--data-dir", P("data"), "--approval", P("rotation.json"),
            "--genesis-sha256", genesis.Hash, "--allow-network", "--insecure-test-kdf", "--output", "json",
        ];
        var before = await DatabaseStateAsync();
        Assert.Equal(kcv, before.Pinned);
        Assert.NotEmpty(before.Blobs); // the audit keys, wrapped under the domain key

        // With every passphrase file given (a run that read them would go on to rotate), and with
        // none and no terminal (a run that asked first would stop at "no passphrase for alice", exit 2).
        foreach (var passphrases in new[] { true, false })
        {
            var refused = await Kms(outputs, Rotate(P("wrong.pin"), passphrases));
            Assert.True(refused.ExitCode == 5, refused.ToString());
            Assert.False(Directory.Exists(P("new-shares")) && Directory.EnumerateFiles(P("new-shares")).Any(), $"new share files were written before the security-officer PIN was refused:\n{refused}");
            var after = await DatabaseStateAsync();
            Assert.True(after.Pinned == kcv && !after.RotationRecorded, $"the database was changed (pinned {after.Pinned}, rotation recorded: {after.RotationRecorded}):\n{refused}");
            Assert.Equal(before.Blobs, after.Blobs);
            Assert.Equal("", refused.Out);
            var lines = refused.Error.Split('\n', StringSplitOptions.RemoveEmptyEntries)
                .Where(l => !l.StartsWith("kms: warning: ", StringComparison.Ordinal) && !l.StartsWith("kms: quorum approval verified", StringComparison.Ordinal)).ToList();
            Assert.Equal("kms: error: ceremony rotate-domain failed at step \"check the rotation token's security-officer PIN\" (token 'rotation'): CKR_PIN_INCORRECT", lines[^2]);
            Assert.StartsWith("kms: HSM: the HSM refused the security-officer PIN of token 'rotation' (CKR_PIN_INCORRECT) — check the PIN given for that token before trying again", lines[^1], StringComparison.Ordinal);
            Assert.DoesNotContain("passphrase", refused.Error, StringComparison.Ordinal);
        }

        // The same run with the right PIN rotates: the check logs the officer out again, so the
        // rotation token's user session and, at the end, the wipe (as the officer) still work.
        var rotated = await Kms(outputs, Rotate(P("so.pin")));
        Assert.True(rotated.ExitCode == 0, rotated.ToString());
        var newKcv = System.Text.Json.Nodes.JsonNode.Parse(rotated.Out)!["check_value"]!.GetValue<string>();
        Assert.Equal(newKcv, (await DatabaseStateAsync()).Pinned);
        Assert.Equal(2, Directory.GetFiles(P("new-shares"), "share-*.json").Length);
        Assert.Contains("wiped (C_InitToken)", rotated.Error, StringComparison.Ordinal);

        var everything = string.Join("\n", outputs.Select(o => o.Out + o.Error));
        foreach (var (name, secret) in _secrets)
        {
            Assert.False(everything.Contains(secret, StringComparison.Ordinal), $"the {name} secret leaked");
        }
    }

    private async Task<(string? Pinned, bool RotationRecorded, List<string> Blobs)> DatabaseStateAsync()
    {
        await using var store = await SqliteStore.OpenAsync(new SqliteOptions { DatabasePath = P("data/kms.db") }, default);
        var blobs = (await store.ListWrappedItemsAfterAsync(null, default)).Select(i => $"{i.Name} {i.Kind} {Convert.ToHexString(i.Blob)}").ToList();
        return (await store.GetSettingAsync(global::Kms.Core.Services.DomainKeyGuard.CheckValueSetting, default), await store.GetDomainKeyRotationAsync(default) is not null, blobs);
    }

    private string P(string relative) => Path.Combine(_dir, relative);

    private async Task<CliResult> Kms(List<CliResult> outputs, params string[] args)
    {
        var result = await CliRun.ProcessAsync(new Dictionary<string, string>(), _dir, args);
        outputs.Add(result);
        return result;
    }
}
