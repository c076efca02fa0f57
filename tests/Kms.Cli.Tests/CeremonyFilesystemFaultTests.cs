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
            Assert.EndsWith("\nkms: " + message.Replace("{data}", data, StringComparison.Ordinal).Replace("{shares}", shares, StringComparison.Ordinal) + "\n", result.Error, StringComparison.Ordinal);
            Assert.Equal("", result.Out);

            // Nothing under either directory but the test's filler in the shares' (the data
            // directory's take-back deletes every file that appeared there during the run): no
            // share, genesis, database, audit key, transcript or temporary file.
            Assert.Equal(fault == "full" && mounted == "shares" ? [Path.Combine(mount, "filler")] : [], new[] { shares, data }.SelectMany(d => Directory.GetFiles(d, "*", SearchOption.AllDirectories)));

            // And no domain key in the token: a later create-domain on it starts afresh.
            var verify = await CliRun.ProcessAsync(new Dictionary<string, string>(), _dir, ["ceremony", "verify-domain", .. Hsm(), "--pin-file", P("user.pin"), "--domain-id", DomainId]);
            Assert.True(verify.ExitCode == ExitCodes.NotFound, verify.ToString());
        }
        finally
        {
            await FilesystemFaults.ToolAsync("umount", mount);
        }
    }

    private const string Undone = "; the domain key " + DomainId + " this run imported was destroyed again in token 'site-a', and the share files and every file this run wrote in --data-dir were deleted: nothing was kept, run the command again";

    private string P(string relative) => Path.Combine(_dir, relative);

    private string[] Hsm() => ["--token-label", "site-a", "--softhsm-conf", _conf];
}
