using Kms.Cli.Infrastructure;
using Kms.Testing;

namespace Kms.Cli.Tests;

/// <summary>
/// A filesystem that fills up or turns read-only after a ceremony's up-front probe passed: the
/// ceremony's directories are small tmpfs mounts (the tests run as root, which may mount;
/// unmounted in the finally), and the ceremony waits for its PIN on a FIFO while the test fills
/// the mount, or remounts it read-only. The run fails in one line naming what it was writing, the
/// path and why, and what it left; and it leaves nothing a later ceremony could take for its own:
/// no share file, no genesis, no database, no temporary file, and no domain key in the token.
/// </summary>
public sealed class CeremonyFilesystemFaultTests : IAsyncLifetime
{
    private const string DomainId = "dk-fs-test";
    private readonly string _dir = Directory.CreateTempSubdirectory("kms-ceremony-fs-").FullName;
    private string _conf = "";

    public async Task InitializeAsync()
    {
        Assert.True(File.Exists(SoftHsm.ModulePath), $"SoftHSM is not installed ({SoftHsm.ModulePath}); ./test.sh installs it");
        Directory.CreateDirectory(P("tokens"));
        _conf = P("softhsm2.conf");
        await File.WriteAllTextAsync(_conf, $"directories.tokendir = {P("tokens")}\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n");
        foreach (var (name, value) in new[] { ("so.pin", "so-" + Guid.NewGuid().ToString("N")), ("user.pin", "user-" + Guid.NewGuid().ToString("N")), ("alice", "alice passphrase 1234"), ("bob", "bob passphrase 12345"), ("officer-key", "officer key passphrase 1") })
        {
            await File.WriteAllTextAsync(P(name), value + "\n");
            File.SetUnixFileMode(P(name), UnixFileMode.UserRead | UnixFileMode.UserWrite);
        }

        var init = await CliRun.ProcessAsync(new Dictionary<string, string>(), _dir, ["ceremony", "init-token", .. Hsm(), "--pin-file", P("user.pin"), "--so-pin-file", P("so.pin")]);
        Assert.True(init.ExitCode == 0, init.ToString());
        var keygen = await CliRun.ProcessAsync(new Dictionary<string, string>(), _dir, "officer", "keygen", "--out", P("olga.key"), "--key-passphrase-file", P("officer-key"));
        Assert.True(keygen.ExitCode == 0, keygen.ToString());
    }

    public Task DisposeAsync()
    {
        Directory.Delete(_dir, recursive: true);
        return Task.CompletedTask;
    }

    /// <summary>
    /// create-domain, with its shares or its data directory on a tmpfs that fills up (leaving
    /// <paramref name="spare"/> pages: none, or one, which takes the genesis or the first share
    /// file) or turns read-only once the probe has passed. The data directory's cases are the
    /// recording step: before, its failure was .NET's message naming a temporary file ("No space
    /// left on device : '…/quorum/.genesis.json.&lt;hex&gt;.partial'", "Read-only file system : …") or,
    /// from SQLite, exit 1 ("unexpected error: SqliteException: SQLite Error 13: 'database or disk
    /// is full'"), and said nothing of what was left. The shares' cases pin the share files' branch
    /// (one written, the second refused: the first is deleted again).
    /// </summary>
    [Theory]
    [InlineData("data", "full", 0, "cannot write the ceremony's record (the genesis file {data}/quorum/genesis.json): no space left on the filesystem holding {data}" + Undone)]
    [InlineData("data", "full", 1, "cannot write the ceremony's record (the deployment database {data}/kms.db and the audit key in {data}/audit): no space left on the filesystem holding {data}" + Undone)]
    [InlineData("data", "read-only", 0, "cannot write the ceremony's record (the genesis file {data}/quorum/genesis.json): {data} is on a read-only filesystem" + Undone)]
    [InlineData("shares", "full", 1, "cannot write share file {shares}/share-2-custodian-2.json: no space left on the filesystem holding {shares}; the domain key this run imported was destroyed again and the share files written were deleted: nothing was kept, run the command again")]
    [InlineData("shares", "read-only", 0, "cannot write share file {shares}/share-1-custodian-1.json: {shares} is on a read-only filesystem; the domain key this run imported was destroyed again and the share files written were deleted: nothing was kept, run the command again")]
    public async Task CreateDomain_FilesystemFullOrReadOnlyAfterTheProbe_Exits9_OneLineSaysWhatWasLeft_NothingKept(string mounted, string fault, int spare, string message)
    {
        var (shares, data) = (P("shares"), P("data"));
        var mount = Directory.CreateDirectory(P(mounted)).FullName;
        await FilesystemFaults.ToolAsync("mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", mount);
        try
        {
            var result = await FilesystemFaults.WithPinOnAFifoAsync(_dir, P("user.pin"),
                [
                    "ceremony", "create-domain", .. Hsm(), "--custodians", "2", "--threshold", "2", "--domain-id", DomainId,
                    "--shares-dir", shares, "--data-dir", data, "--passphrase-file", $"custodian-1={P("alice")}", "--passphrase-file", $"custodian-2={P("bob")}",
                    "--officer", $"olga={P("olga.key.pub")}", "--officer-threshold", "1", "--allow-network", "--insecure-test-kdf",
                ],
                async () =>
                {
                    if (fault == "full")
                    {
                        await FilesystemFaults.FillAsync(mount, spare);
                    }
                    else
                    {
                        await FilesystemFaults.ToolAsync("mount", "-o", "remount,ro", mount);
                    }
                });

            Assert.True(result.ExitCode == ExitCodes.LocalIo, result.ToString());
            var expected = "\nkms: " + message.Replace("{data}", data, StringComparison.Ordinal).Replace("{shares}", shares, StringComparison.Ordinal) + "\n";
            Assert.True(result.Error.EndsWith(expected, StringComparison.Ordinal), $"expected the end:{expected}{result}");
            Assert.Equal("", result.Out);

            // Nothing under the mount but the test's filler, which another process wrote there
            // during the run and the take-back leaves (before, the data directory's deleted every
            // file that appeared there meanwhile, the filler too): no share, genesis, database,
            // audit key, transcript or temporary file. The other directory, which the run
            // created, it removed again (empty).
            Assert.Equal(fault == "full" ? [Path.Combine(mount, "filler")] : [], Directory.GetFiles(mount, "*", SearchOption.AllDirectories));
            Assert.False(Directory.Exists(mounted == "data" ? shares : data), "the directory this run created is removed");

            // And no domain key in the token: a later create-domain on it starts afresh.
            var verify = await CliRun.ProcessAsync(new Dictionary<string, string>(), _dir, ["ceremony", "verify-domain", .. Hsm(), "--pin-file", P("user.pin"), "--domain-id", DomainId]);
            Assert.True(verify.ExitCode == ExitCodes.NotFound, verify.ToString());
        }
        finally
        {
            await FilesystemFaults.ToolAsync("umount", mount);
        }
    }

    /// <summary>
    /// create-domain whose second share file finds its filesystem full, and whose first cannot be
    /// deleted again (strace makes unlink(2) of that file, and only of it, fail with EACCES): the
    /// line says why the run failed — the share write — and then what it could not take back.
    /// Before, the failed deletion was the error reported ("Access to the path '…' is denied."),
    /// the share write's failure and what was left unsaid. The key is destroyed all the same, and
    /// the directories the run created (the data directory, its quorum/) are removed, being empty.
    /// </summary>
    [Fact]
    public async Task CreateDomain_ShareWriteFails_AndAShareFileCannotBeDeleted_SaysTheWriteFailure_ThenWhatIsLeft()
    {
        var (shares, data) = (Directory.CreateDirectory(P("shares")).FullName, P("data"));
        var first = Path.Combine(shares, "share-1-custodian-1.json");
        await FilesystemFaults.ToolAsync("mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", shares);
        try
        {
            var result = await FilesystemFaults.WithPinOnAFifoAsync(_dir, P("user.pin"), [.. CreateDomainArgs(shares, data)],
                () => FilesystemFaults.FillAsync(shares, 1), FilesystemFaults.FailingUnlink(first));

            Assert.True(result.ExitCode == ExitCodes.LocalIo, result.ToString());
            Assert.EndsWith($"\nkms: cannot write share file {shares}/share-2-custodian-2.json: no space left on the filesystem holding {shares}; "
                + $"this run was taken back except: {first} could not be deleted (permission denied): delete it before running again — then run the command again\n", result.Error, StringComparison.Ordinal);
            Assert.Equal([Path.Combine(shares, "filler"), first], Directory.GetFiles(shares).Order(StringComparer.Ordinal));
            Assert.False(Directory.Exists(data), "the data directory this run created, left empty, is removed");
            var verify = await CliRun.ProcessAsync(new Dictionary<string, string>(), _dir, ["ceremony", "verify-domain", .. Hsm(), "--pin-file", P("user.pin"), "--domain-id", DomainId]);
            Assert.True(verify.ExitCode == ExitCodes.NotFound, verify.ToString());
        }
        finally
        {
            await FilesystemFaults.ToolAsync("umount", shares);
        }
    }

    /// <summary>
    /// restore-domain onto a new node whose data directory (a tmpfs) fills up — wholly, or but for
    /// two pages — or turns read-only once the probe has passed, or (strace) whose new database's
    /// WAL index cannot be extended for an I/O error: the record is refused, by SQLite or the
    /// filesystem, and said in one line as create-domain's — what was being written, the
    /// directory and why — then that the key was taken out of the token again, exit 9. SQLite's
    /// "disk I/O error" (SQLITE_IOERR; on a nearly full filesystem, SQLITE_IOERR_SHMSIZE: the WAL
    /// index not extended) is said by the cause a probe file meets, or as a disk I/O error where
    /// it meets none. Before: exit 1, "unexpected error: SqliteException: SQLite Error 13: 'database
    /// or disk is full'." or "… Error 10: 'disk I/O error'.", and "kms: Read-only file system : '…'",
    /// what was left said on a note above it.
    /// </summary>
    [Theory]
    [InlineData("full", "no space left on the filesystem holding {data}")]
    [InlineData("full2", "no space left on the filesystem holding {data}")]
    [InlineData("read-only", "{data} is on a read-only filesystem")]
    [InlineData("io-error", "disk I/O error writing the database {data}/kms.db (SQLITE_IOERR)")]
    public async Task RestoreDomain_DataDirFullOrReadOnlyAfterTheProbe_Exits9_OneLineSaysTheKeyWasTakenOutAgain(string fault, string cause)
    {
        var created = await CliRun.ProcessAsync(new Dictionary<string, string>(), _dir, [.. CreateDomainArgs(P("shares"), P("made")), "--pin-file", P("user.pin"), "--output", "json"]);
        Assert.True(created.ExitCode == 0, created.ToString());
        var kcv = System.Text.Json.Nodes.JsonNode.Parse(created.Out)!["check_value"]!.GetValue<string>();
        await InitTokenAsync("site-b");
        var data = Directory.CreateDirectory(P("node")).FullName;
        await FilesystemFaults.ToolAsync("mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", data);
        try
        {
            var result = await FilesystemFaults.WithPinOnAFifoAsync(_dir, P("user.pin"),
                [
                    "ceremony", "restore-domain", "--token-label", "site-b", "--softhsm-conf", _conf,
                    "--share", P("shares/share-1-custodian-1.json"), "--share", P("shares/share-2-custodian-2.json"),
                    "--passphrase-file", $"custodian-1={P("alice")}", "--passphrase-file", $"custodian-2={P("bob")}",
                    "--data-dir", data, "--without-approval", "--check-value", kcv, "--allow-network", "--insecure-test-kdf",
                ],
                () => fault == "io-error" ? Task.CompletedTask : Fault(fault, data),
                fault == "io-error" ? FilesystemFaults.Failing(Path.Combine(data, "kms.db-shm"), "pwrite64,write", "EIO") : null);

            Assert.True(result.ExitCode == ExitCodes.LocalIo, result.ToString());
            var line = result.Error.TrimEnd('\n').Split('\n')[^1];
            Assert.Matches(
                "^" + System.Text.RegularExpressions.Regex.Escape($"kms: cannot write the restore's record (the deployment database {data}/kms.db and the audit key in {data}/audit): {cause.Replace("{data}", data, StringComparison.Ordinal)}; "
                    + $"the domain key {DomainId} was taken out of token 'site-b' again: nothing was restored; the audit log may hold this ceremony's (")
                + "[0-9a-f-]{36}" + System.Text.RegularExpressions.Regex.Escape($") first events without its transcript; once {data} takes files again, run the command again") + "$",
                line);
            var verify = await CliRun.ProcessAsync(new Dictionary<string, string>(), _dir, ["ceremony", "verify-domain", "--token-label", "site-b", "--softhsm-conf", _conf, "--pin-file", P("user.pin"), "--domain-id", DomainId]);
            Assert.True(verify.ExitCode == ExitCodes.NotFound, verify.ToString());
        }
        finally
        {
            await FilesystemFaults.ToolAsync("umount", data);
        }
    }

    /// <summary>
    /// rotate-domain whose data directory (a tmpfs; the database stays on the disk it was made on,
    /// kms.db a symbolic link to it) fills up, or turns read-only, while the run waits for its PIN:
    /// every blob moves, the new key goes into its token, and the record — written after the point
    /// of no return — is refused. The line says what was being written, where and why, that the
    /// rotation itself is done (the database pinned to the new key, which the token holds: kept),
    /// and how to record it; exit 9. Before: .NET's "No space left on device : '…/.signing-key.pem.…partial'"
    /// / "Read-only file system : …", with nothing said of the state.
    /// </summary>
    [Theory]
    [InlineData("full", "no space left on the filesystem holding {data}")]
    [InlineData("read-only", "{data} is on a read-only filesystem")]
    public async Task RotateDomain_DataDirFullOrReadOnlyBeforeTheRecord_Exits9_OneLineSaysTheRotationIsDone_AndWhatToDo(string fault, string cause)
    {
        var made = P("made");
        var created = await CliRun.ProcessAsync(new Dictionary<string, string>(), _dir, [.. CreateDomainArgs(P("shares"), made), "--pin-file", P("user.pin"), "--output", "json"]);
        Assert.True(created.ExitCode == 0, created.ToString());
        var oldKcv = System.Text.Json.Nodes.JsonNode.Parse(created.Out)!["check_value"]!.GetValue<string>();

        // A deployment that pins no officers (the genesis file moved away: no server ever copied
        // it into the database), so --without-approval rotates it; its records on the tmpfs.
        File.Delete(Path.Combine(made, "quorum", "genesis.json"));
        await InitTokenAsync("rotation");
        await InitTokenAsync("site-b");
        var data = Directory.CreateDirectory(P("data")).FullName;
        await FilesystemFaults.ToolAsync("mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", data);
        try
        {
            await FilesystemFaults.ToolAsync("cp", "-a", Path.Combine(made, "audit"), data);
            File.CreateSymbolicLink(Path.Combine(data, "kms.db"), Path.Combine(made, "kms.db"));
            var newShares = P("new-shares");
            var result = await FilesystemFaults.WithPinOnAFifoAsync(_dir, P("user.pin"),
                [
                    "ceremony", "rotate-domain", "--token-label", "rotation", "--softhsm-conf", _conf, "--so-pin-file", P("so.pin"),
                    "--share", P("shares/share-1-custodian-1.json"), "--share", P("shares/share-2-custodian-2.json"),
                    "--passphrase-file", $"custodian-1={P("alice")}", "--passphrase-file", $"custodian-2={P("bob")}",
                    "--new-custodian", "alice", "--new-custodian", "bob", "--new-threshold", "2", "--new-shares-dir", newShares,
                    "--new-passphrase-file", $"alice={P("alice")}", "--new-passphrase-file", $"bob={P("bob")}",
                    "--restore-token-label", "site-b", "--restore-pin-file", P("user.pin"),
                    "--data-dir", data, "--without-approval", "--allow-network", "--insecure-test-kdf",
                ],
                () => Fault(fault, data));

            Assert.True(result.ExitCode == ExitCodes.LocalIo, result.ToString());
            await using (var database = await global::Kms.Storage.Sqlite.SqliteStore.OpenAsync(new() { DatabasePath = Path.Combine(made, "kms.db") }, default))
            {
                Assert.Null(await database.GetDomainKeyRotationAsync(default));
                var newKcv = await database.GetSettingAsync(global::Kms.Core.Services.DomainKeyGuard.CheckValueSetting, default);
                Assert.NotEqual(oldKcv, newKcv);
                var line = result.Error.TrimEnd('\n').Split('\n')[^1];
                var newId = System.Text.RegularExpressions.Regex.Match(line, "re-wrapped under domain key (dk-[0-9]{8}-[0-9a-f]{8}) ").Groups[1].Value;
                Assert.Matches(
                    "^" + System.Text.RegularExpressions.Regex.Escape(
                        $"kms: cannot write the rotation's record (the deployment database {data}/kms.db and the audit key in {data}/audit): {cause.Replace("{data}", data, StringComparison.Ordinal)}; "
                        + $"the rotation itself is done: every stored key is re-wrapped under domain key {newId} (check value {newKcv}), the database is pinned to it, "
                        + $"the rotation token 'rotation' was wiped and token 'site-b' holds the new key — keep it and the new share files in {newShares}; "
                        + "only the record is missing (the audit log may hold this ceremony's (")
                    + "[0-9a-f-]{36}"
                    + System.Text.RegularExpressions.Regex.Escape(
                        $") first events, no transcript was signed): once {data} takes files again, record it with kms ceremony restore-domain --without-approval --check-value {newKcv} --data-dir {data} "
                        + $"and M of the new shares into another freshly initialised token (docs/ceremony.md §8); servers start on token 'site-b' with --Hsm:DomainKeyId={newId}") + "$",
                    line);

                // As it says: the new key is in site-b, and the new share files are there.
                var verify = await CliRun.ProcessAsync(new Dictionary<string, string>(), _dir, ["ceremony", "verify-domain", "--token-label", "site-b", "--softhsm-conf", _conf, "--pin-file", P("user.pin"), "--domain-id", newId]);
                Assert.True(verify.ExitCode == 0 && verify.Out.Trim() == newKcv, verify.ToString());
                Assert.Equal(["share-1-alice.json", "share-2-bob.json"], Directory.GetFiles(newShares).Select(Path.GetFileName).Order(StringComparer.Ordinal));

                // And what it says to do next records it: the data directory takes files again,
                // and restore-domain with the new shares into another fresh token signs a transcript.
                if (fault == "full")
                {
                    File.Delete(Path.Combine(data, "filler"));
                }
                else
                {
                    await FilesystemFaults.ToolAsync("mount", "-o", "remount,rw", data);
                }

                await InitTokenAsync("site-c");
                var recorded = await CliRun.ProcessAsync(new Dictionary<string, string>(), _dir,
                [
                    "ceremony", "restore-domain", "--token-label", "site-c", "--softhsm-conf", _conf, "--pin-file", P("user.pin"),
                    "--share", Path.Combine(newShares, "share-1-alice.json"), "--share", Path.Combine(newShares, "share-2-bob.json"),
                    "--passphrase-file", $"alice={P("alice")}", "--passphrase-file", $"bob={P("bob")}",
                    "--without-approval", "--check-value", newKcv, "--data-dir", data, "--allow-network", "--insecure-test-kdf", "--output", "json",
                ]);
                Assert.True(recorded.ExitCode == 0, recorded.ToString());
                Assert.StartsWith(Path.Combine(data, "ceremonies"), System.Text.Json.Nodes.JsonNode.Parse(recorded.Out)!["transcript"]!.GetValue<string>(), StringComparison.Ordinal);
            }
        }
        finally
        {
            await FilesystemFaults.ToolAsync("umount", data);
        }
    }

    private static Task Fault(string fault, string mount) => fault.StartsWith("full", StringComparison.Ordinal)
        ? FilesystemFaults.FillAsync(mount, fault.Length > 4 ? int.Parse(fault[4..], System.Globalization.CultureInfo.InvariantCulture) : 0)
        : FilesystemFaults.ToolAsync("mount", "-o", "remount,ro", mount);

    private async Task InitTokenAsync(string label)
    {
        var init = await CliRun.ProcessAsync(new Dictionary<string, string>(), _dir, ["ceremony", "init-token", "--token-label", label, "--softhsm-conf", _conf, "--pin-file", P("user.pin"), "--so-pin-file", P("so.pin")]);
        Assert.True(init.ExitCode == 0, init.ToString());
    }

    private string[] CreateDomainArgs(string shares, string data) =>
    [
        "ceremony", "create-domain", .. Hsm(), "--custodians", "2", "--threshold", "2", "--domain-id", DomainId,
        "--shares-dir", shares, "--data-dir", data, "--passphrase-file", $"custodian-1={P("alice")}", "--passphrase-file", $"custodian-2={P("bob")}",
        "--officer", $"olga={P("olga.key.pub")}", "--officer-threshold", "1", "--allow-network", "--insecure-test-kdf",
    ];

    private const string Undone = "; the domain key " + DomainId + " this run imported was destroyed again in token 'site-a', and the share files and every file this run wrote in --data-dir were deleted: nothing was kept, run the command again";

    private string P(string relative) => Path.Combine(_dir, relative);

    private string[] Hsm() => ["--token-label", "site-a", "--softhsm-conf", _conf];
}
