using System.Text.Json.Nodes;
using Kms.Core.Quorum;
using Kms.Testing;

namespace Kms.Cli.Tests;

/// <summary>
/// <c>kms ceremony restore-domain</c> into a data directory that holds no database (a new node), as
/// a real process against SoftHSM: the share files name only the key they rebuild, so the key must
/// also be the one a record of the deployment names — the officers' approval, or the transcript's
/// check value given as <c>--check-value</c> — and shares of another deployment are refused with
/// nothing written to the token or the data directory, before any passphrase is read.
/// </summary>
public sealed class RestoreDomainCheckValueTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("kms-restore-kcv-").FullName;
    private readonly string _conf;
    private readonly TestOfficers _officers = new("olga");

    public RestoreDomainCheckValueTests()
    {
        Assert.True(File.Exists(SoftHsm.ModulePath), $"SoftHSM is not installed ({SoftHsm.ModulePath}); ./test.sh installs it");
        Directory.CreateDirectory(P("tokens"));
        _conf = P("softhsm2.conf");
        File.WriteAllText(_conf, $"directories.tokendir = {P("tokens")}\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n");
        foreach (var (name, value) in new[]
        {
            ("so.pin", "so-" + Guid.NewGuid().ToString("N")), ("user.pin", "user-" + Guid.NewGuid().ToString("N")),
            ("alice", "alice passphrase " + Guid.NewGuid().ToString("N")[..8]), ("bob", "bob passphrase " + Guid.NewGuid().ToString("N")[..8]),
        })
        {
            File.WriteAllText(P(name), value + "\n");
            File.SetUnixFileMode(P(name), UnixFileMode.UserRead | UnixFileMode.UserWrite);
        }

        File.WriteAllText(P("olga.pub"), _officers.KeyOf("olga").ExportSubjectPublicKeyInfoPem());
    }

    public void Dispose()
    {
        _officers.Dispose();
        Directory.Delete(_dir, recursive: true);
    }

    // Before, a break-glass restore into an empty data directory compared the rebuilt key with the
    // share files' own check value only: another deployment's shares restored their key, and the
    // new node's database was pinned to it.
    [Fact]
    public async Task RestoreDomain_EmptyDataDirectory_SharesOfAnotherDeployment_RefusedAgainstTheApprovalOrCheckValue_NothingImported()
    {
        foreach (var site in new[] { "site-a", "site-b", "site-c" })
        {
            var init = await Kms("ceremony", "init-token", "--token-label", site, "--softhsm-conf", _conf, "--pin-file", P("user.pin"), "--so-pin-file", P("so.pin"));
            Assert.True(init.ExitCode == 0, init.ToString());
        }

        // Two deployments, A and B, with the same officer and custodians.
        var kcv = new Dictionary<string, string>();
        foreach (var d in new[] { "a", "b" })
        {
            var created = await Kms("ceremony", "create-domain", "--token-label", $"site-{d}", "--softhsm-conf", _conf, "--pin-file", P("user.pin"),
                "--custodian", "alice", "--custodian", "bob", "--threshold", "2", "--domain-id", "dk-prod", "--shares-dir", P($"shares-{d}"), "--data-dir", P($"data-{d}"),
                "--passphrase-file", $"alice={P("alice")}", "--passphrase-file", $"bob={P("bob")}",
                "--officer", $"olga={P("olga.pub")}", "--officer-threshold", "1", "--allow-network", "--insecure-test-kdf", "--output", "json");
            Assert.True(created.ExitCode == 0, created.ToString());
            kcv[d] = JsonNode.Parse(created.Out)!["check_value"]!.GetValue<string>();
        }

        Assert.NotEqual(kcv["a"], kcv["b"]);

        // A's officer approves restoring A's domain key into site-c.
        var genesis = GenesisFile.Read(P("data-a/quorum/genesis.json"));
        var time = DateTimeOffset.FromUnixTimeMilliseconds(DateTimeOffset.UtcNow.AddMinutes(-5).ToUnixTimeMilliseconds());
        var request = TestOfficers.Request(genesis, QuorumOperation.RestoreDomain, [KeyValuePair.Create("token-label", "site-c")], time) with { DomainKcv = kcv["a"] };
        request = request with { Approvals = [_officers.Approve("olga", request, time.AddMinutes(1))], State = QuorumRequestState.Approved, ExecuteTime = time.AddMinutes(1) };
        await File.WriteAllTextAsync(P("restore-a.json"), new ApprovalBundle(request, [genesis]).Serialize());
        string[] approval = ["--approval", P("restore-a.json"), "--genesis", P("data-a/quorum/genesis.json"), "--genesis-sha256", genesis.Hash];

        // Into site-c, onto a new node's empty data directory, from B's shares. Passphrase files only
        // where the run is meant to get past the refusals: without them and with no terminal, a run
        // that asked for a passphrase first would stop at "no passphrase for alice" (exit 2).
        string[] Restore(string shares, bool passphrases, params string[] extra) =>
        [
            "ceremony", "restore-domain", "--token-label", "site-c", "--softhsm-conf", _conf, "--pin-file", P("user.pin"),
            .. Directory.GetFiles(P(shares), "share-*.json").Order(StringComparer.Ordinal).SelectMany(f => new[] { "--share", f }),
            .. passphrases ? (string[])["--passphrase-file", $"alice={P("alice")}", "--passphrase-file", $"bob={P("bob")}"] : [],
            "--data-dir", P("new-node"), .. extra, "--allow-network", "--insecure-test-kdf", "--output", "json",
        ];

        // The break-glass with nothing naming the key: refused (usage), naming the flag.
        var unanchored = await Kms(Restore("shares-b", passphrases: true, "--without-approval"));
        Assert.True(unanchored.ExitCode == 2, $"restored with nothing but the shares to say which key:\n{unanchored}");
        Assert.Contains("nothing here names the domain key this deployment's data is sealed under", unanchored.Error, StringComparison.Ordinal);
        Assert.Contains("Give --check-value HEX", unanchored.Error, StringComparison.Ordinal);
        await AssertNothingImportedAsync();

        var refusals = new[]
        {
            (await Kms(Restore("shares-b", passphrases: false, "--without-approval", "--check-value", kcv["a"])), "--check-value"),
            (await Kms(Restore("shares-b", passphrases: false, [.. approval])), $"the approval of {request.Name}"),
        };
        foreach (var (refused, anchor) in refusals)
        {
            Assert.True(refused.ExitCode == 5, refused.ToString());
            Assert.Contains($"the share files are of the domain key with check value {kcv["b"]}, but {anchor} names {kcv["a"]}", refused.Error, StringComparison.Ordinal);
            Assert.DoesNotContain("passphrase", refused.Error, StringComparison.Ordinal);
            await AssertNothingImportedAsync();
        }

        // A's shares, as A's officer approved: restored, the transcript says what the key was checked against.
        var restored = await Kms(Restore("shares-a", passphrases: true, [.. approval]));
        Assert.True(restored.ExitCode == 0, restored.ToString());
        var result = JsonNode.Parse(restored.Out)!;
        Assert.Equal(kcv["a"], result["check_value"]!.GetValue<string>());
        var transcript = await File.ReadAllTextAsync(result["transcript"]!.GetValue<string>());
        Assert.Contains($"check value required by: the approval of {request.Name}", transcript, StringComparison.Ordinal);
        var verified = await Kms("ceremony", "verify-domain", "--token-label", "site-c", "--softhsm-conf", _conf, "--pin-file", P("user.pin"), "--domain-id", "dk-prod");
        Assert.Equal(kcv["a"], verified.Out.Trim());
    }

    // site-c holds no domain key, and the new node's data directory was not written.
    private async Task AssertNothingImportedAsync()
    {
        var token = await Kms("ceremony", "verify-domain", "--token-label", "site-c", "--softhsm-conf", _conf, "--pin-file", P("user.pin"), "--domain-id", "dk-prod");
        Assert.True(token.ExitCode == 3, $"site-c holds a domain key:\n{token}");
        Assert.False(Directory.Exists(P("new-node")) && Directory.EnumerateFileSystemEntries(P("new-node")).Any(), "the new node's data directory was written");
    }

    private string P(string relative) => Path.Combine(_dir, relative);

    private Task<CliResult> Kms(params string[] args) => CliRun.ProcessAsync(new Dictionary<string, string>(), _dir, args);
}
