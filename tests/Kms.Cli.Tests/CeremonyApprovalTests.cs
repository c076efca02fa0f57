using Kms.Core.Ports;
using Kms.Core.Quorum;
using Kms.Storage.Sqlite;
using Kms.Testing;

namespace Kms.Cli.Tests;

/// <summary>
/// <c>kms ceremony restore-domain --approval</c> as a real process: the approval bundle is verified
/// offline against the pinned genesis before any share is opened — the share files named here are
/// read (their public fields, checked with the other paths before the approval) but never opened:
/// no passphrase is given, so every refusal below happened before any custodian was asked, and
/// the one bundle that verifies gets as far as the token's PIN.
/// </summary>
public sealed class CeremonyApprovalTests : IDisposable
{
    private const string Kcv = "a1b2c3";

    // What a restore whose approval verified meets next (no PIN is given): it got past the approval.
    private const string PastTheApproval = "the token's user PIN is needed";
    private readonly string _dir = Directory.CreateTempSubdirectory("kms-approval-").FullName;
    private readonly TestOfficers _officers = new("alice", "bob", "carol", "dave", "erin", "o  lga ");
    private readonly OfficerSet _genesis;

    private readonly string[] _shares;

    public CeremonyApprovalTests()
    {
        _genesis = OfficerSet.CreateGenesis(_officers.Select("alice", "bob", "carol"), 2);
        GenesisFile.Write(P("genesis.json"), _genesis);
        _shares = TestShares.Write(P("shares"), "dk-approval", Kcv, 2, "alice", "bob");
    }

    public void Dispose()
    {
        _officers.Dispose();
        Directory.Delete(_dir, recursive: true);
    }

    [Fact]
    public async Task RestoreDomain_ApprovedBundle_VerifiedBeforeAnyShareIsRead()
    {
        await WriteAsync("ok.json", Bundle(QuorumOperation.RestoreDomain, "alice", "carol"));
        var result = await RestoreAsync("--approval", P("ok.json"));
        Assert.Contains("quorum approval verified", result.Error, StringComparison.Ordinal);
        Assert.Contains("2 of threshold 2", result.Error, StringComparison.Ordinal);
        Assert.Contains(PastTheApproval, result.Error, StringComparison.Ordinal);
    }

    /// <summary>
    /// Every --share is checked with the other usage checks, before the approval is read: there,
    /// readable, a share file, of one domain (--domain-id's) and split, at least M. The bundle here
    /// is short of a signature: before, each of these was refused for that (exit 7, "1 distinct
    /// officers … it needs 2"), and the share file's problem came up only on a second run, once
    /// the approval was right (after the token, on a run with a PIN).
    /// </summary>
    [Fact]
    public async Task RestoreDomain_ShareMissingMalformedOfAnotherDomainOrTooFew_RefusedInOneLineNamingIt_BeforeTheApproval()
    {
        await WriteAsync("few.json", Bundle(QuorumOperation.RestoreDomain, "alice"));
        await File.WriteAllTextAsync(P("not-a-share.json"), "{\"format\": \"kms-share-v1\"}\n");
        var foreign = TestShares.Write(P("foreign"), "dk-elsewhere", Kcv, 2, "alice", "bob");
        var threeOfThree = TestShares.Write(P("three"), "dk-approval", Kcv, 3, "alice", "bob", "carol");

        (int ExitCode, string Line, string[] Shares)[] cases =
        [
            (9, $"kms: --share {P("missing.json")} does not exist", [_shares[0], P("missing.json")]),
            (2, $"kms: --share {P("shares")} is a directory: give a file's path", [P("shares"), _shares[1]]),
            (5, $"kms: --share: share file {P("not-a-share.json")} is corrupted", [_shares[0], P("not-a-share.json")]),
            (5, $"kms: --share: share 2 (custodian 'bob', file {foreign[1]}) belongs to domain 'dk-elsewhere', expected 'dk-approval'", [_shares[0], foreign[1]]),
            (5, $"kms: --share: share 1 (custodian 'alice', file {threeOfThree[0]}) is one of a 3-of-3 split", [_shares[1], threeOfThree[0]]),
            (2, "kms: --share: need 2 shares, got 1", [_shares[0]]),
        ];
        foreach (var (exitCode, line, shares) in cases)
        {
            var result = await CliRun.ProcessAsync(new Dictionary<string, string>(), _dir,
            [
                "ceremony", "restore-domain", "--token-label", "kms-prod-b", .. shares.SelectMany(s => new[] { "--share", s }), "--insecure-test-kdf",
                "--approval", P("few.json"), "--genesis", P("genesis.json"), "--genesis-sha256", _genesis.Hash, "--allow-network",
            ]);

            Assert.True(result.ExitCode == exitCode, $"{line}: {result}");
            var last = result.Error.TrimEnd('\n').Split('\n')[^1];
            Assert.StartsWith(line, last, StringComparison.Ordinal);
            Assert.DoesNotContain("distinct officers", result.Error, StringComparison.Ordinal);
            Assert.DoesNotContain("quorum approval", result.Error, StringComparison.Ordinal);
        }

        // --domain-id names the domain every share must be of.
        var other = await RestoreAsync("--approval", P("few.json"), "--domain-id", "dk-other");
        Assert.True(other.ExitCode == 5, other.ToString());
        Assert.Contains($"kms: --share: share 1 (custodian 'alice', file {_shares[0]}) belongs to domain 'dk-approval', expected 'dk-other'", other.Error, StringComparison.Ordinal);
    }

    [Fact]
    public async Task RestoreDomain_ForgedOrTooFewSignatures_RefusedAsUnverified()
    {
        var bundle = Bundle(QuorumOperation.RestoreDomain, "alice");
        var forged = bundle with
        {
            Request = bundle.Request with { Approvals = [.. bundle.Request.Approvals, _officers.Approve("dave", bundle.Request, bundle.Request.Approvals[0].ApproveTime) with { OfficerFingerprint = _officers["bob"].Fingerprint }] },
        };
        await WriteAsync("forged.json", forged);
        await WriteAsync("few.json", bundle);

        foreach (var file in new[] { "forged.json", "few.json" })
        {
            var result = await RestoreAsync("--approval", P(file));
            Assert.True(result.ExitCode == 7, result.ToString());
            Assert.Contains("1 distinct officers of set 0 signed its canonical rendering in time, and it needs 2", result.Error, StringComparison.Ordinal);
        }
    }

    [Fact]
    public async Task RestoreDomain_RotationBundle_OtherDomainKey_OtherToken_Expired_RefusedAsNotThisCeremony()
    {
        await WriteAsync("rotation.json", Bundle(QuorumOperation.RotateDomainKey, "alice", "bob"));
        await WriteAsync("ok.json", Bundle(QuorumOperation.RestoreDomain, "alice", "bob"));
        await WriteAsync("expired.json", Bundle(QuorumOperation.RestoreDomain, "alice", "bob", created: DateTimeOffset.UtcNow.AddHours(-2)));

        await AssertRefusedAsync(5, "is for ROTATE_DOMAIN_KEY, not RESTORE_DOMAIN", "--approval", P("rotation.json"));
        await AssertRefusedAsync(5, "check value a1b2c3, not this one's 0d0e0f", ["--approval", P("ok.json")], checkValue: "0d0e0f");
        await AssertRefusedAsync(5, "it restores into token 'kms-prod-b', not 'kms-elsewhere'", ["--approval", P("ok.json")], token: "kms-elsewhere");
        await AssertRefusedAsync(5, "expired at", "--approval", P("expired.json"));
    }

    [Fact]
    public async Task RestoreDomain_ChainNotRootedInThePinnedGenesis_Refused()
    {
        // Officers who made a genesis of their own sign a consistent bundle: not the deployment's.
        var rogue = OfficerSet.CreateGenesis(_officers.Select("dave", "erin"), 1);
        await WriteAsync("rogue.json", Bundle(QuorumOperation.RestoreDomain, [rogue], ["dave"]));
        await AssertRefusedAsync(7, "does not verify back to the pinned genesis", "--approval", P("rogue.json"));

        // The rogue genesis passed as --genesis is refused by the hash from the transcript.
        GenesisFile.Write(P("rogue-genesis.json"), rogue);
        await AssertRefusedAsync(7, $"not the pinned {_genesis.Hash}",
            ["--approval", P("rogue.json"), "--genesis-sha256", _genesis.Hash], genesis: P("rogue-genesis.json"));
    }

    [Fact]
    public async Task RestoreDomain_GenesisWrittenBeforeTheNameRule_AnOfficerNameWithSpaces_StillVerifies()
    {
        // New officer names may no longer have spaces at an end or two in a row; a deployment whose
        // genesis already holds one keeps working: its approvals verify on the ceremony host.
        var spaced = OfficerSet.CreateGenesis(_officers.Select("o  lga ", "bob"), 2);
        GenesisFile.Write(P("spaced-genesis.json"), spaced);
        await WriteAsync("spaced.json", Bundle(QuorumOperation.RestoreDomain, [spaced], ["o  lga ", "bob"]));
        var result = await RestoreAsync(["--approval", P("spaced.json"), "--genesis-sha256", spaced.Hash], P("spaced-genesis.json"), Kcv, "kms-prod-b");
        Assert.True(result.Error.Contains("quorum approval verified", StringComparison.Ordinal), result.ToString());
        Assert.Contains("2 of threshold 2", result.Error, StringComparison.Ordinal);
        Assert.Contains(PastTheApproval, result.Error, StringComparison.Ordinal);
    }

    [Fact]
    public async Task RestoreDomain_FreshHost_SwappedGenesisWithAMatchingBundle_RefusedWithoutThePinnedHash()
    {
        // Someone who can write the files a fresh ceremony host reads swaps in a genesis of their
        // own and a bundle its officers signed. Nothing on the host holds the deployment's genesis:
        // before, the bundle verified and the transcript said "quorum approval verified" by them.
        var rogue = OfficerSet.CreateGenesis(_officers.Select("dave", "erin"), 1);
        GenesisFile.Write(P("rogue-genesis.json"), rogue);
        await WriteAsync("rogue.json", Bundle(QuorumOperation.RestoreDomain, [rogue], ["dave"]));
        await AssertRefusedAsync(2, "no deployment database holds the genesis, so nothing here vouches for the genesis file", ["--approval", P("rogue.json")], genesis: P("rogue-genesis.json"), pinned: false);
        await AssertRefusedAsync(2, "give --genesis-sha256 HEX", ["--approval", P("rogue.json")], genesis: P("rogue-genesis.json"), pinned: false);

        // The same from a data directory without a database: its quorum/genesis.json is not vouched for either.
        Directory.CreateDirectory(P("fresh/quorum"));
        GenesisFile.Write(P("fresh/quorum/genesis.json"), rogue);
        await AssertRefusedAsync(2, "give --genesis-sha256 HEX", ["--approval", P("rogue.json"), "--data-dir", P("fresh")], genesis: null);
        Assert.False(File.Exists(P("fresh/kms.db")));

        // With the deployment's hash the swapped file is refused; the real one verifies.
        await AssertRefusedAsync(7, $"not the pinned {_genesis.Hash}", ["--approval", P("rogue.json"), "--data-dir", P("fresh"), "--genesis-sha256", _genesis.Hash], genesis: null);
        await WriteAsync("ok.json", Bundle(QuorumOperation.RestoreDomain, "alice", "bob"));
        var result = await RestoreAsync("--approval", P("ok.json"));
        Assert.True(result.Error.Contains("quorum approval verified", StringComparison.Ordinal), result.ToString());
        Assert.Contains($"genesis {_genesis.Hash} (pinned by --genesis-sha256)", result.Error, StringComparison.Ordinal);

        // Where the deployment's database holds the genesis, it is the pin, as before: no flag needed.
        var time = DateTimeOffset.FromUnixTimeMilliseconds(DateTimeOffset.UtcNow.AddMinutes(-30).ToUnixTimeMilliseconds());
        var current = _officers.Change(_genesis, _officers.Select("carol", "dave", "erin"), 2, time, "alice", "bob");
        await StoreChainAsync(P("data"), _genesis, current);
        await WriteAsync("current.json", Bundle(QuorumOperation.RestoreDomain, [_genesis, current], ["carol", "dave"]));
        var withDatabase = await RestoreAsync(["--approval", P("current.json"), "--data-dir", P("data")], P("genesis.json"), Kcv, "kms-prod-b", pinned: false);
        Assert.True(withDatabase.Error.Contains("quorum approval verified", StringComparison.Ordinal), withDatabase.ToString());
        Assert.Contains($"genesis {_genesis.Hash} (the deployment database's)", withDatabase.Error, StringComparison.Ordinal);
        await AssertRefusedAsync(7, "is not the genesis the deployment's database holds", ["--approval", P("rogue.json"), "--data-dir", P("data")], genesis: P("rogue-genesis.json"), pinned: false);
    }

    [Fact]
    public async Task RestoreDomain_DatabaseHoldsANewerSet_ForkedOrOlderChainRefused_TheDatabasesAccepted()
    {
        // The database holds set 1 = {carol, dave, erin}: alice and bob have left. They still hold
        // their keys, and as two of the genesis's three they can sign a successor of their own
        // offline — a chain that verifies from the genesis on, but is not the deployment's.
        var time = DateTimeOffset.FromUnixTimeMilliseconds(DateTimeOffset.UtcNow.AddMinutes(-30).ToUnixTimeMilliseconds());
        var current = _officers.Change(_genesis, _officers.Select("carol", "dave", "erin"), 2, time, "alice", "bob");
        await StoreChainAsync(P("data"), _genesis, current);
        var fork = _officers.Change(_genesis, _officers.Select("alice", "bob"), 2, time, "alice", "bob");

        await WriteAsync("fork.json", Bundle(QuorumOperation.RestoreDomain, [_genesis, fork], ["alice", "bob"]));
        await AssertRefusedAsync(7, $"is not the deployment database's: its officer set 1 has hash {fork.Hash}, the database's {current.Hash}",
            "--approval", P("fork.json"), "--data-dir", P("data"));

        await WriteAsync("old.json", Bundle(QuorumOperation.RestoreDomain, "alice", "bob"));
        await AssertRefusedAsync(5, "was made for officer set 0, but the deployment's database holds officer set 1", "--approval", P("old.json"), "--data-dir", P("data"));

        await WriteAsync("current.json", Bundle(QuorumOperation.RestoreDomain, [_genesis, current], ["carol", "dave"]));
        var result = await RestoreAsync("--approval", P("current.json"), "--data-dir", P("data"));
        Assert.Contains("quorum approval verified", result.Error, StringComparison.Ordinal);
        Assert.Contains(PastTheApproval, result.Error, StringComparison.Ordinal);
    }

    [Fact]
    public async Task RestoreDomain_FreshHostWithACopiedOfficerHead_VouchesForTheBundlesUntimedSets_RefusesAnOlderOrForkedChain()
    {
        // Set 1 was installed by approvals made before they carried a signed time. A fresh host has
        // no database; docs/quorum.md says to copy quorum/officer-head from a node that verified the
        // chain. Before, the record was checked against the (absent) database chain and every
        // approval, and the break-glass too, was refused as "rolled back".
        var time = DateTimeOffset.FromUnixTimeMilliseconds(DateTimeOffset.UtcNow.AddMinutes(-30).ToUnixTimeMilliseconds());
        var current = UntimedChange(_genesis, _officers.Select("carol", "dave", "erin"), 2, time, "alice", "bob");
        var fork = UntimedChange(_genesis, _officers.Select("alice", "bob"), 2, time, "alice", "bob");
        Directory.CreateDirectory(P("fresh/quorum"));
        await File.WriteAllTextAsync(P("fresh/quorum/officer-head"), new OfficerHead(1, current.Hash).Format());
        await WriteAsync("current.json", Bundle(QuorumOperation.RestoreDomain, [_genesis, current], ["carol", "dave"]));
        await WriteAsync("fork.json", Bundle(QuorumOperation.RestoreDomain, [_genesis, fork], ["alice", "bob"]));
        await WriteAsync("old.json", Bundle(QuorumOperation.RestoreDomain, "alice", "bob"));

        var result = await RestoreAsync("--approval", P("current.json"), "--data-dir", P("fresh"));
        Assert.True(result.Error.Contains("quorum approval verified", StringComparison.Ordinal), result.ToString());
        Assert.Contains(PastTheApproval, result.Error, StringComparison.Ordinal);

        // The record vouches only for the set it names: not for a fork of it, nor does an approval
        // made for an older set than it outvote the officers it names.
        await AssertRefusedAsync(7, $"officer set 1 has hash {fork.Hash}, but the server of", "--approval", P("fork.json"), "--data-dir", P("fresh"));
        await AssertRefusedAsync(5, "was made for officer set 0, but the server of", "--approval", P("old.json"), "--data-dir", P("fresh"));

        // Without the record, the untimed set is not vouched for.
        File.Delete(P("fresh/quorum/officer-head"));
        await AssertRefusedAsync(7, "carry no signed time", "--approval", P("current.json"), "--data-dir", P("fresh"));
    }

    [Fact]
    public async Task RestoreDomain_NoApproval_NoGenesis_OrBothFlags_Refused()
    {
        await WriteAsync("ok.json", Bundle(QuorumOperation.RestoreDomain, "alice", "bob"));
        await AssertRefusedAsync(5, "no officer approval given", [], genesis: null);
        await AssertRefusedAsync(5, "this deployment has officers", []);
        await AssertRefusedAsync(2, "--approval needs the genesis officer file", ["--approval", P("ok.json")], genesis: null);
        await AssertRefusedAsync(2, "not both", "--approval", P("ok.json"), "--without-approval");
        await AssertRefusedAsync(2, "--genesis-sha256 needs the genesis officer file", ["--approval", P("ok.json"), "--genesis-sha256", _genesis.Hash], genesis: null);

        // The break-glass is allowed because it is recorded: not without a data directory to record it in.
        await AssertRefusedAsync(2, "--without-approval is the break-glass and is recorded: give --data-dir", ["--without-approval"], genesis: null);
    }

    private ApprovalBundle Bundle(QuorumOperation operation, params string[] approvers) => Bundle(operation, [_genesis], approvers);

    private ApprovalBundle Bundle(QuorumOperation operation, IReadOnlyList<OfficerSet> chain, string[] approvers, DateTimeOffset? created = null)
    {
        IReadOnlyList<KeyValuePair<string, string>> parameters = operation == QuorumOperation.RestoreDomain
            ? [KeyValuePair.Create("token-label", "kms-prod-b")]
            : [KeyValuePair.Create("new-custodians", "3"), KeyValuePair.Create("new-threshold", "2")];
        var time = created ?? DateTimeOffset.UtcNow.AddMinutes(-5);
        time = DateTimeOffset.FromUnixTimeMilliseconds(time.ToUnixTimeMilliseconds());
        var request = TestOfficers.Request(chain[^1], operation, parameters, time) with { DomainKcv = Kcv };
        request = request with
        {
            Approvals = [.. approvers.Select(a => _officers.Approve(a, request, time.AddMinutes(1)))],
            State = QuorumRequestState.Approved,
            ExecuteTime = time.AddMinutes(1),
        };
        return new ApprovalBundle(request, chain);
    }

    private ApprovalBundle Bundle(QuorumOperation operation, string a, string b, DateTimeOffset created) => Bundle(operation, [_genesis], [a, b], created);

    // The deployment's database holding genesis → next, stored as the server stores an executed
    // CHANGE_OFFICERS: the request, its approvals one by one, the set appended with the last.
    private static async Task StoreChainAsync(string dataDir, OfficerSet genesis, OfficerSet next)
    {
        Directory.CreateDirectory(dataDir);
        await using var store = await SqliteStore.OpenAsync(new SqliteOptions { DatabasePath = Path.Combine(dataDir, "kms.db") }, default);
        await store.AddGenesisOfficerSetAsync(genesis, default);
        var change = next.Change!;
        await store.CreateQuorumRequestAsync(change with { State = QuorumRequestState.Pending, ExecuteTime = null, Approvals = [] }, default);
        for (var i = 0; i < change.Approvals.Count; i++)
        {
            var approval = change.Approvals[i];
            var last = i == change.Approvals.Count - 1;
            await store.UpdateQuorumRequestAsync(change.Id, (pending, _) => last
                ? new QuorumChange(change) { AddedApproval = approval, AppendedOfficerSet = next }
                : new QuorumChange(pending) { AddedApproval = approval }, default);
        }

        Assert.Equal([genesis.Hash, next.Hash], (await store.ListOfficerSetsAsync(default)).Select(s => s.Hash));
    }

    // The successor of set, installed by a CHANGE_OFFICERS whose approvals carry no signed time (made before approvals were timed).
    private OfficerSet UntimedChange(OfficerSet set, IReadOnlyList<Officer> officers, int threshold, DateTimeOffset time, params string[] approvers)
    {
        var next = set.Successor(officers, threshold);
        var request = TestOfficers.Request(set, QuorumOperation.ChangeOfficers, next.ChangeParameters(), time) with { ProposedOfficers = next };
        request = request with
        {
            Approvals = [.. approvers.Select(a => _officers.ApproveUntimed(a, request, time))],
            State = QuorumRequestState.Executed,
            ExecuteTime = time,
        };
        return next.WithChange(request);
    }

    private Task WriteAsync(string name, ApprovalBundle bundle) => File.WriteAllTextAsync(P(name), bundle.Serialize());

    private Task AssertRefusedAsync(int exitCode, string message, params string[] extra) => AssertRefusedAsync(exitCode, message, extra, P("genesis.json"));

    private async Task AssertRefusedAsync(int exitCode, string message, string[] extra, string? genesis = "", string checkValue = Kcv, string token = "kms-prod-b", bool pinned = true)
    {
        var result = await RestoreAsync(extra, genesis == "" ? P("genesis.json") : genesis, checkValue, token, pinned);
        Assert.True(result.ExitCode == exitCode, result.ToString());
        Assert.Contains(message, result.Error, StringComparison.Ordinal);
        Assert.DoesNotContain(PastTheApproval, result.Error, StringComparison.Ordinal);
    }

    private Task<CliResult> RestoreAsync(params string[] extra) => RestoreAsync(extra, P("genesis.json"), Kcv, "kms-prod-b");

    // A given genesis file comes with the deployment's pinned hash (the create-domain transcript's)
    // unless the test gives one of its own or none (pinned: false).
    private Task<CliResult> RestoreAsync(string[] extra, string? genesis, string checkValue, string token, bool pinned = true) =>
        CliRun.ProcessAsync(new Dictionary<string, string>(), _dir,
        [
            "ceremony", "restore-domain", "--token-label", token, "--share", _shares[0], "--share", _shares[1], "--insecure-test-kdf", "--check-value", checkValue,
            .. genesis is null ? Array.Empty<string>() : ["--genesis", genesis],
            .. genesis is null || !pinned || extra.Contains("--genesis-sha256") ? Array.Empty<string>() : ["--genesis-sha256", _genesis.Hash],
            .. extra, "--allow-network",
        ]);

    private string P(string relative) => Path.Combine(_dir, relative);
}
