using Kms.Cli.Infrastructure;

namespace Kms.Cli.Tests;

/// <summary>
/// What a user meets with a wrong path: one line on stderr naming the path they gave, a non-zero
/// exit, nothing on stdout and no file left behind.
/// </summary>
public sealed partial class FileErrorTests(CliServerFixture fixture) : IClassFixture<CliServerFixture>, IDisposable
{
    private readonly string _directory = CliServerFixture.NewDirectory();

    public void Dispose()
    {
        foreach (var directory in Directory.GetDirectories(_directory))
        {
            File.SetUnixFileMode(directory, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute);
        }

        Directory.Delete(_directory, recursive: true);
    }

    /// <summary>Was "Access to the path '…' is denied." (exit 9), which sent the user to the permissions.</summary>
    [Fact]
    public async Task Encrypt_InIsADirectory_Exits2_SaysItIsADirectory()
    {
        var input = Directory.CreateDirectory(Path.Combine(_directory, "adir")).FullName;

        var result = await RunAsync("encrypt", "--key", "k", "--in", "adir", "--out", "o.kmse");

        Assert.Equal(ExitCodes.Usage, result.ExitCode);
        Assert.Equal($"kms: --in {input} is a directory: give a file's path\n", result.Error);
        AssertNothingWritten(result, "adir");
    }

    /// <summary>Was "Could not find a part of the path '…/nodir/.o.kmse.&lt;hex&gt;.partial'.": a name the user never gave.</summary>
    [Fact]
    public async Task Encrypt_OutInADirectoryThatDoesNotExist_Exits9_NamesThePathGiven()
    {
        await File.WriteAllTextAsync(Path.Combine(_directory, "plain.txt"), "hello\n");
        var key = await CreateKeyAsync();

        var result = await RunAsync("encrypt", "--key", key, "--in", "plain.txt", "--out", "nodir/o.kmse");

        Assert.Equal(ExitCodes.LocalIo, result.ExitCode);
        Assert.Equal($"kms: cannot write --out {_directory}/nodir/o.kmse: the directory {_directory}/nodir does not exist\n", result.Error);
        AssertNothingWritten(result, "plain.txt");
    }

    /// <summary>
    /// A directory the user may not write. The tests run as root, whom permissions do not stop:
    /// the CLI runs as a process without CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH (capsh), so the
    /// kernel refuses it as it would a user. Was "Access to the path '…/ro/.o.kmse.&lt;hex&gt;.partial' is denied.".
    /// </summary>
    [Fact]
    public async Task Encrypt_OutInADirectoryNotWritable_AsAProcessWithoutRootsOverride_Exits9_NamesThePathGiven()
    {
        await File.WriteAllTextAsync(Path.Combine(_directory, "plain.txt"), "hello\n");
        var readOnly = ReadOnlyDirectory();
        var key = await CreateKeyAsync();

        var result = await WithoutFileOverrideAsync("encrypt", "--key", key, "--in", "plain.txt", "--out", "ro/o.kmse");

        Assert.Equal(ExitCodes.LocalIo, result.ExitCode);
        Assert.Equal($"kms: cannot write --out {readOnly}/o.kmse: permission denied in {readOnly}\n", result.Error);
        Assert.Equal("", result.Out);
        Assert.Empty(Directory.GetFileSystemEntries(readOnly));
    }

    /// <summary>An input the user may not read (as above, without root's override): exit 9, the path and what was refused, no stack trace, nothing written. Was .NET's bare "Access to the path '…' is denied.".</summary>
    [Fact]
    public async Task Encrypt_InNotReadable_AsAProcessWithoutRootsOverride_Exits9_SaysItCannotBeRead()
    {
        var input = Path.Combine(_directory, "secret.txt");
        await File.WriteAllTextAsync(input, "hello\n");
        File.SetUnixFileMode(input, UnixFileMode.None);

        var result = await WithoutFileOverrideAsync("encrypt", "--key", "k", "--in", "secret.txt", "--out", "o.kmse");

        Assert.Equal(ExitCodes.LocalIo, result.ExitCode);
        Assert.Equal($"kms: cannot read --in {input}: permission denied\n", result.Error);
        AssertNothingWritten(result, "secret.txt");
    }

    /// <summary>
    /// Every path flag (and path argument) of every command, given a wrong path: one line on
    /// stderr naming the flag and the path, the exit code the conventions give (2: a directory
    /// where a file is read or the reverse, an output that exists, a missing setting file — token,
    /// CA, client certificate or key, secret file; 9: an input not there or not readable, an
    /// output's directory not there or not writable), nothing on stdout, no stack trace, and
    /// nothing written or removed. {dir} is a directory, {file} a file, {pem} an audit public key
    /// (P-256, so an officer's key too), {missing} and {nodir} are not there; {secret} (mode 000),
    /// {closed} (a directory of mode 000) and {ro} (a directory of mode 0555) are refused to a
    /// process without root's override (capsh), which the rows naming them run as.
    /// <see cref="EveryPathFlagOfEveryCommand_HasARowInTheTable"/> keeps the table complete.
    /// </summary>
    [Theory]
    // A directory where a file is read.
    [InlineData(2, "--in {dir} is a directory: give a file's path", "encrypt", "--key", "k", "--in", "{dir}", "--out", "o.kmse")]
    [InlineData(2, "--in {dir} is a directory: give a file's path", "decrypt", "--any-key", "--in", "{dir}", "--out", "o.txt")]
    [InlineData(2, "--public-key {dir} is a directory: give a file's path", "audit", "verify", "{file}", "--public-key", "{dir}")]
    [InlineData(2, "{dir} is a directory: give a file's path", "audit", "verify", "{dir}", "--public-key", "{pem}")]
    [InlineData(2, "--public-key {dir} is a directory: give a file's path", "ceremony", "verify-transcript", "{file}", "--public-key", "{dir}")]
    [InlineData(2, "{dir} is a directory: give a file's path", "ceremony", "verify-transcript", "{dir}", "--public-key", "{pem}")]
    [InlineData(2, "--public-key {dir} is a directory: give a file's path", "backup", "verify", "{file}", "--public-key", "{dir}")]
    [InlineData(2, "--public-key {dir} is a directory: give a file's path", "backup", "fetch", "r", "--out", "b", "--public-key", "{dir}")]
    [InlineData(2, "--public-key {dir} is a directory: give a file's path", "backup", "reapply-destructions", "--data-dir", "{dir}", "--audit-log", "{file}", "--public-key", "{dir}")]
    [InlineData(2, "{dir} is a directory: give a file's path", "attest", "verify", "{dir}", "--public-key", "{pem}")]
    [InlineData(2, "--public-key {dir} is a directory: give a file's path", "attest", "verify", "{file}", "--public-key", "{dir}")]
    [InlineData(2, "--in-list {dir} is a directory: give a file's path", "rewrap", "--key", "k", "--in-list", "{dir}")]
    [InlineData(2, "--checkpoint {dir} is a directory: give a file's path", "rewrap", "--key", "k", "--dir", "{dir}", "--checkpoint", "{dir}")]
    [InlineData(2, "--material {dir} is a directory: give a file's path", "keys", "import", "k", "--material", "{dir}")]
    [InlineData(2, "--key {dir} is a directory: give a file's path", "officer", "approve", "tenants/dev/quorumRequests/r", "--key", "{dir}", "--key-passphrase-file", "{file}", "--yes")]
    [InlineData(2, "--key-passphrase-file {dir} is a directory: give a file's path", "officer", "approve", "tenants/dev/quorumRequests/r", "--key", "{file}", "--key-passphrase-file", "{dir}", "--yes")]
    [InlineData(2, "--officer {dir} is a directory: give a file's path", "ceremony", "create-domain", "--token-label", "none", "--custodian", "a", "--custodian", "b", "--threshold", "2", "--officer", "o={dir}", "--officer-threshold", "1", "--shares-dir", "shares", "--data-dir", "data")]
    [InlineData(2, "--officer {dir} is a directory: give a file's path", "quorum", "change-officers", "--officer", "o={dir}", "--threshold", "1")]
    [InlineData(2, "--module {dir} is a directory: give a file's path", "ceremony", "inspect-token", "--token-label", "none", "--module", "{dir}")]
    [InlineData(2, "--softhsm-conf {dir} is a directory: give a file's path", "ceremony", "inspect-token", "--token-label", "none", "--softhsm-conf", "{dir}")]
    [InlineData(2, "--hsm-profile {dir} is a directory: give a file's path", "ceremony", "inspect-token", "--token-label", "none", "--hsm-profile", "{dir}")]
    [InlineData(2, "--public-key {dir} is a directory: give a file's path", "backup", "restore", "{dir}", "--public-key", "{dir}", "--data-dir", "{dir}", "--without-audit-logs")]
    [InlineData(2, "--audit-log {dir} is a directory: give a file's path", "backup", "restore", "{dir}", "--public-key", "{pem}", "--data-dir", "{dir}", "--audit-log", "{dir}")]
    [InlineData(2, "profile file {dir} is a directory: give a file's path", "keys", "list", "--config", "{dir}")]
    [InlineData(2, "client certificate {dir} (flag --client-cert) is a directory: give a file's path", "keys", "list", "--client-cert", "{dir}", "--client-key", "{pem}")]
    [InlineData(2, "client key {dir} (flag --client-key) is a directory: give a file's path", "keys", "list", "--client-cert", "{pem}", "--client-key", "{dir}")]
    // A file where a directory is read or made.
    [InlineData(2, "--dir {file} is a file: give a directory's path", "rewrap", "--key", "k", "--dir", "{file}")]
    [InlineData(2, "{file} is a file: give a directory's path", "backup", "verify", "{file}", "--public-key", "{pem}")]
    [InlineData(2, "{file} is a file: give a directory's path", "backup", "restore", "{file}", "--public-key", "{pem}", "--data-dir", "{dir}", "--without-audit-logs")]
    [InlineData(2, "--data-dir {file} is a file: give a directory's path", "backup", "restore", "{dir}", "--public-key", "{pem}", "--data-dir", "{file}", "--without-audit-logs")]
    [InlineData(2, "--data-dir {file} is a file: give a directory's path", "ceremony", "create-domain", "--token-label", "none", "--custodian", "a", "--custodian", "b", "--threshold", "2", "--officer", "o={pem}", "--officer-threshold", "1", "--shares-dir", "shares", "--data-dir", "{file}")]
    // An output that exists: a backup is downloaded into a new directory.
    [InlineData(2, "--out {dir} exists: a backup is downloaded into a new directory", "backup", "fetch", "r", "--out", "{dir}", "--public-key", "{pem}")]
    [InlineData(2, "--out {file} exists: a backup is downloaded into a new directory", "backup", "fetch", "r", "--out", "{file}", "--public-key", "{pem}")]
    // Not there.
    [InlineData(9, "--in {missing} does not exist", "encrypt", "--key", "k", "--in", "{missing}", "--out", "o.kmse")]
    [InlineData(9, "--public-key {missing} does not exist", "audit", "verify", "{file}", "--public-key", "{missing}")]
    [InlineData(9, "{missing} does not exist", "audit", "verify", "{missing}", "--public-key", "{pem}")]
    [InlineData(9, "{missing} does not exist", "attest", "verify", "{missing}", "--public-key", "{pem}")]
    [InlineData(9, "{missing} does not exist", "ceremony", "verify-transcript", "{missing}", "--public-key", "{pem}")]
    [InlineData(9, "{missing} does not exist", "backup", "verify", "{missing}", "--public-key", "{pem}")]
    [InlineData(9, "--in-list {missing} does not exist", "rewrap", "--key", "k", "--in-list", "{missing}")]
    [InlineData(9, "--dir {missing} does not exist", "rewrap", "--key", "k", "--dir", "{missing}")]
    [InlineData(9, "--material {missing} does not exist", "keys", "import", "k", "--material", "{missing}")]
    [InlineData(9, "--key {missing} does not exist", "officer", "approve", "tenants/dev/quorumRequests/r", "--key", "{missing}", "--key-passphrase-file", "{file}", "--yes")]
    [InlineData(2, "--key-passphrase-file {missing} does not exist", "officer", "approve", "tenants/dev/quorumRequests/r", "--key", "{file}", "--key-passphrase-file", "{missing}", "--yes")]
    [InlineData(9, "--officer {missing} does not exist", "ceremony", "create-domain", "--token-label", "none", "--custodian", "a", "--custodian", "b", "--threshold", "2", "--officer", "o={missing}", "--officer-threshold", "1", "--shares-dir", "shares", "--data-dir", "data")]
    [InlineData(9, "--officer {missing} does not exist", "quorum", "change-officers", "--officer", "o={missing}", "--threshold", "1")]
    [InlineData(9, "--module {missing} does not exist", "ceremony", "inspect-token", "--token-label", "none", "--module", "{missing}")]
    [InlineData(9, "--softhsm-conf {missing} does not exist", "ceremony", "inspect-token", "--token-label", "none", "--softhsm-conf", "{missing}")]
    [InlineData(9, "--hsm-profile {missing} does not exist", "ceremony", "inspect-token", "--token-label", "none", "--hsm-profile", "{missing}")]
    [InlineData(9, "--audit-log {missing} does not exist", "backup", "restore", "{dir}", "--public-key", "{pem}", "--data-dir", "{dir}", "--audit-log", "{missing}")]
    [InlineData(9, "--audit-log {missing} does not exist", "backup", "reapply-destructions", "--data-dir", "{dir}", "--audit-log", "{missing}")]
    [InlineData(2, "client certificate {missing} (flag --client-cert) does not exist", "keys", "list", "--client-cert", "{missing}", "--client-key", "{pem}")]
    [InlineData(2, "client key {missing} (flag --client-key) does not exist", "keys", "list", "--client-cert", "{pem}", "--client-key", "{missing}")]
    // An output whose directory is not there.
    [InlineData(9, "cannot write --checkpoint {nodir}/cp: the directory {nodir} does not exist", "rewrap", "--key", "k", "--dir", "{dir}", "--checkpoint", "{nodir}/cp")]
    [InlineData(9, "cannot write --out {nodir}/b: the directory {nodir} does not exist", "backup", "fetch", "r", "--out", "{nodir}/b", "--public-key", "{pem}")]
    // Not readable, or not writable (capsh).
    [InlineData(9, "cannot read --in {secret}: permission denied", "encrypt", "--key", "k", "--in", "{secret}", "--out", "o.kmse")]
    [InlineData(9, "cannot read --public-key {secret}: permission denied", "audit", "verify", "{file}", "--public-key", "{secret}")]
    [InlineData(9, "cannot read {secret}: permission denied", "attest", "verify", "{secret}", "--public-key", "{pem}")]
    [InlineData(9, "cannot read --in-list {secret}: permission denied", "rewrap", "--key", "k", "--in-list", "{secret}")]
    [InlineData(9, "cannot read --dir {closed}: permission denied", "rewrap", "--key", "k", "--dir", "{closed}")]
    [InlineData(9, "cannot read --checkpoint {secret}: permission denied", "rewrap", "--key", "k", "--dir", "{dir}", "--checkpoint", "{secret}")]
    [InlineData(9, "cannot write --checkpoint {ro}/cp: permission denied in {ro}", "rewrap", "--key", "k", "--dir", "{dir}", "--checkpoint", "{ro}/cp")]
    [InlineData(9, "cannot write --out {ro}/b: permission denied in {ro}", "backup", "fetch", "r", "--out", "{ro}/b", "--public-key", "{pem}")]
    [InlineData(9, "cannot read --material {secret}: permission denied", "keys", "import", "k", "--material", "{secret}")]
    [InlineData(9, "cannot read --key-passphrase-file {secret}: permission denied", "officer", "approve", "tenants/dev/quorumRequests/r", "--key", "{file}", "--key-passphrase-file", "{secret}", "--yes")]
    [InlineData(9, "cannot read --officer {secret}: permission denied", "ceremony", "create-domain", "--token-label", "none", "--custodian", "a", "--custodian", "b", "--threshold", "2", "--officer", "o={secret}", "--officer-threshold", "1", "--shares-dir", "shares", "--data-dir", "data")]
    [InlineData(9, "cannot read --officer {secret}: permission denied", "quorum", "change-officers", "--officer", "o={secret}", "--threshold", "1")]
    [InlineData(9, "cannot read --module {secret}: permission denied", "ceremony", "inspect-token", "--token-label", "none", "--module", "{secret}")]
    [InlineData(9, "cannot read --softhsm-conf {secret}: permission denied", "ceremony", "inspect-token", "--token-label", "none", "--softhsm-conf", "{secret}")]
    [InlineData(9, "cannot read --hsm-profile {secret}: permission denied", "ceremony", "inspect-token", "--token-label", "none", "--hsm-profile", "{secret}")]
    [InlineData(9, "cannot read client certificate {secret} (flag --client-cert): permission denied", "keys", "list", "--client-cert", "{secret}", "--client-key", "{pem}")]
    [InlineData(9, "cannot read client key {secret} (flag --client-key): permission denied", "keys", "list", "--client-cert", "{pem}", "--client-key", "{secret}")]
    // Checked before anything is made: the data directory, the share directory.
    [InlineData(9, "--module {missing} does not exist", "ceremony", "create-domain", "--token-label", "none", "--custodian", "a", "--custodian", "b", "--threshold", "2", "--officer", "o={pem}", "--officer-threshold", "1", "--shares-dir", "shares", "--data-dir", "data", "--allow-network", "--module", "{missing}")]
    [InlineData(2, "--passphrase-file {missing} does not exist", "ceremony", "create-domain", "--token-label", "none", "--custodian", "a", "--custodian", "b", "--threshold", "2", "--officer", "o={pem}", "--officer-threshold", "1", "--shares-dir", "shares", "--data-dir", "data", "--allow-network", "--passphrase-file", "a={missing}")]
    [InlineData(2, "--passphrase-file {dir} is a directory: give a file's path", "ceremony", "create-domain", "--token-label", "none", "--custodian", "a", "--custodian", "b", "--threshold", "2", "--officer", "o={pem}", "--officer-threshold", "1", "--shares-dir", "shares", "--data-dir", "data", "--allow-network", "--passphrase-file", "a={dir}")]
    [InlineData(9, "--share {missing} does not exist", "ceremony", "restore-domain", "--token-label", "none", "--without-approval", "--data-dir", "{dir}", "--allow-network", "--share", "{missing}")]
    [InlineData(2, "--share {dir} is a directory: give a file's path", "ceremony", "restore-domain", "--token-label", "none", "--without-approval", "--data-dir", "{dir}", "--allow-network", "--share", "{dir}")]
    [InlineData(9, "cannot read --share {secret}: permission denied", "ceremony", "restore-domain", "--token-label", "none", "--without-approval", "--data-dir", "{dir}", "--allow-network", "--share", "{secret}")]
    [InlineData(9, "--genesis {missing} does not exist", "ceremony", "restore-domain", "--token-label", "none", "--share", "{file}", "--genesis", "{missing}", "--approval", "{file}", "--allow-network")]
    [InlineData(2, "--genesis {dir} is a directory: give a file's path", "ceremony", "restore-domain", "--token-label", "none", "--share", "{file}", "--genesis", "{dir}", "--approval", "{file}", "--allow-network")]
    [InlineData(9, "cannot read --genesis {secret}: permission denied", "ceremony", "restore-domain", "--token-label", "none", "--share", "{file}", "--genesis", "{secret}", "--approval", "{file}", "--allow-network")]
    [InlineData(9, "cannot write --out {nodir}/k: the directory {nodir} does not exist", "officer", "keygen", "--out", "{nodir}/k", "--key-passphrase-file", "{file}")]
    [InlineData(9, "cannot write --out {ro}/k: permission denied in {ro}", "officer", "keygen", "--out", "{ro}/k", "--key-passphrase-file", "{file}")]
    [InlineData(2, "token file {dir} (flag --token-file) is a directory: give a file's path", "keys", "list", "--token-file", "{dir}")]
    [InlineData(2, "token file {missing} (flag --token-file) does not exist", "keys", "list", "--token-file", "{missing}")]
    [InlineData(9, "cannot read token file {secret} (flag --token-file): permission denied", "keys", "list", "--token-file", "{secret}")]
    [InlineData(2, "CA file {dir} (flag --ca-file) is a directory: give a file's path", "keys", "list", "--ca-file", "{dir}")]
    [InlineData(2, "CA file {missing} (flag --ca-file) does not exist", "keys", "list", "--ca-file", "{missing}")]
    [InlineData(9, "cannot read CA file {secret} (flag --ca-file): permission denied", "keys", "list", "--ca-file", "{secret}")]
    // An output file (OutputFile.Open), checked before the server is called: a directory, a file there without --force, its directory not there or not writable.
    [InlineData(2, "--out {dir} is a directory: give a file's path", "encrypt", "--key", "k", "--in", "{pem}", "--out", "{dir}")]
    [InlineData(2, "--out {file} exists (pass --force to replace it)", "encrypt", "--key", "k", "--in", "{pem}", "--out", "{file}")]
    [InlineData(9, "cannot write --out {nodir}/o: the directory {nodir} does not exist", "encrypt", "--key", "k", "--in", "{pem}", "--out", "{nodir}/o")]
    [InlineData(9, "cannot write --out {ro}/o: permission denied in {ro}", "encrypt", "--key", "k", "--in", "{pem}", "--out", "{ro}/o")]
    [InlineData(2, "--out {dir} is a directory: give a file's path", "decrypt", "--any-key", "--in", "{pem}", "--out", "{dir}")]
    [InlineData(2, "--out {file} exists (pass --force to replace it)", "decrypt", "--any-key", "--in", "{pem}", "--out", "{file}")]
    [InlineData(9, "cannot write --out {nodir}/o: the directory {nodir} does not exist", "decrypt", "--any-key", "--in", "{pem}", "--out", "{nodir}/o")]
    [InlineData(9, "cannot write --out {ro}/o: permission denied in {ro}", "decrypt", "--any-key", "--in", "{pem}", "--out", "{ro}/o")]
    [InlineData(2, "--out {dir} is a directory: give a file's path", "sign", "k", "--in", "{pem}", "--out", "{dir}")]
    [InlineData(2, "--out {file} exists (pass --force to replace it)", "sign", "k", "--in", "{pem}", "--out", "{file}")]
    [InlineData(9, "cannot write --out {nodir}/o: the directory {nodir} does not exist", "sign", "k", "--in", "{pem}", "--out", "{nodir}/o")]
    [InlineData(9, "cannot write --out {ro}/o: permission denied in {ro}", "sign", "k", "--in", "{pem}", "--out", "{ro}/o")]
    [InlineData(2, "--out {dir} is a directory: give a file's path", "public-key", "k", "--out", "{dir}")]
    [InlineData(2, "--out {file} exists (pass --force to replace it)", "public-key", "k", "--out", "{file}")]
    [InlineData(9, "cannot write --out {nodir}/o: the directory {nodir} does not exist", "public-key", "k", "--out", "{nodir}/o")]
    [InlineData(9, "cannot write --out {ro}/o: permission denied in {ro}", "public-key", "k", "--out", "{ro}/o")]
    [InlineData(2, "--out {dir} is a directory: give a file's path", "attest", "get", "k", "--out", "{dir}")]
    [InlineData(2, "--out {file} exists (pass --force to replace it)", "attest", "get", "k", "--out", "{file}")]
    [InlineData(9, "cannot write --out {nodir}/o: the directory {nodir} does not exist", "attest", "get", "k", "--out", "{nodir}/o")]
    [InlineData(9, "cannot write --out {ro}/o: permission denied in {ro}", "attest", "get", "k", "--out", "{ro}/o")]
    [InlineData(2, "--out {dir} is a directory: give a file's path", "audit", "export", "--out", "{dir}")]
    [InlineData(2, "--out {file} exists (pass --force to replace it)", "audit", "export", "--out", "{file}")]
    [InlineData(9, "cannot write --out {nodir}/o: the directory {nodir} does not exist", "audit", "export", "--out", "{nodir}/o")]
    [InlineData(9, "cannot write --out {ro}/o: permission denied in {ro}", "audit", "export", "--out", "{ro}/o")]
    [InlineData(2, "--out {dir} is a directory: give a file's path", "quorum", "export", "r", "--out", "{dir}")]
    [InlineData(2, "--out {file} exists (pass --force to replace it)", "quorum", "export", "r", "--out", "{file}")]
    [InlineData(9, "cannot write --out {nodir}/o: the directory {nodir} does not exist", "quorum", "export", "r", "--out", "{nodir}/o")]
    [InlineData(9, "cannot write --out {ro}/o: permission denied in {ro}", "quorum", "export", "r", "--out", "{ro}/o")]
    [InlineData(2, "--out {dir} is a directory: give a file's path", "tokens", "create", "token:t", "--kind", "SERVICE", "--out", "{dir}")]
    [InlineData(2, "--out {file} exists (pass --force to replace it)", "tokens", "create", "token:t", "--kind", "SERVICE", "--out", "{file}")]
    [InlineData(9, "cannot write --out {nodir}/o: the directory {nodir} does not exist", "tokens", "create", "token:t", "--kind", "SERVICE", "--out", "{nodir}/o")]
    [InlineData(9, "cannot write --out {ro}/o: permission denied in {ro}", "tokens", "create", "token:t", "--kind", "SERVICE", "--out", "{ro}/o")]
    [InlineData(2, "--plaintext-out {dir} is a directory: give a file's path", "datakey", "--key", "k", "--plaintext-out", "{dir}")]
    [InlineData(2, "--plaintext-out {file} exists (pass --force to replace it)", "datakey", "--key", "k", "--plaintext-out", "{file}")]
    [InlineData(9, "cannot write --plaintext-out {nodir}/o: the directory {nodir} does not exist", "datakey", "--key", "k", "--plaintext-out", "{nodir}/o")]
    [InlineData(9, "cannot write --plaintext-out {ro}/o: permission denied in {ro}", "datakey", "--key", "k", "--plaintext-out", "{ro}/o")]
    [InlineData(2, "--ciphertext-out {dir} is a directory: give a file's path", "datakey", "--key", "k", "--ciphertext-out", "{dir}")]
    [InlineData(2, "--ciphertext-out {file} exists (pass --force to replace it)", "datakey", "--key", "k", "--ciphertext-out", "{file}")]
    [InlineData(9, "cannot write --ciphertext-out {nodir}/o: the directory {nodir} does not exist", "datakey", "--key", "k", "--ciphertext-out", "{nodir}/o")]
    [InlineData(9, "cannot write --ciphertext-out {ro}/o: permission denied in {ro}", "datakey", "--key", "k", "--ciphertext-out", "{ro}/o")]
    [InlineData(2, "--session-token-out {dir} is a directory: give a file's path", "bootstrap", "token:admin", "--credential-file", "{file}", "--session-token-out", "{dir}")]
    [InlineData(2, "--session-token-out {file} exists (pass --force to replace it)", "bootstrap", "token:admin", "--credential-file", "{file}", "--session-token-out", "{file}")]
    [InlineData(9, "cannot write --session-token-out {nodir}/o: the directory {nodir} does not exist", "bootstrap", "token:admin", "--credential-file", "{file}", "--session-token-out", "{nodir}/o")]
    [InlineData(9, "cannot write --session-token-out {ro}/o: permission denied in {ro}", "bootstrap", "token:admin", "--credential-file", "{file}", "--session-token-out", "{ro}/o")]
    [InlineData(2, "--out {file} exists: officer keys are never overwritten", "officer", "keygen", "--out", "{file}", "--key-passphrase-file", "{pem}")]
    [InlineData(2, "--out {dir} is a directory: give a file's path", "officer", "keygen", "--out", "{dir}", "--key-passphrase-file", "{pem}")]
    // An input of sign, verify, mac and verify-mac, opened before the key's algorithm is asked for.
    [InlineData(9, "--in {missing} does not exist", "sign", "k", "--out", "o.sig", "--in", "{missing}")]
    [InlineData(2, "--in {dir} is a directory: give a file's path", "sign", "k", "--out", "o.sig", "--in", "{dir}")]
    [InlineData(9, "cannot read --in {secret}: permission denied", "sign", "k", "--out", "o.sig", "--in", "{secret}")]
    [InlineData(9, "--in {missing} does not exist", "verify", "k", "--signature", "{pem}", "--in", "{missing}")]
    [InlineData(2, "--in {dir} is a directory: give a file's path", "verify", "k", "--signature", "{pem}", "--in", "{dir}")]
    [InlineData(9, "cannot read --in {secret}: permission denied", "verify", "k", "--signature", "{pem}", "--in", "{secret}")]
    [InlineData(9, "--signature {missing} does not exist", "verify", "k", "--in", "{pem}", "--signature", "{missing}")]
    [InlineData(2, "--signature {dir} is a directory: give a file's path", "verify", "k", "--in", "{pem}", "--signature", "{dir}")]
    [InlineData(9, "cannot read --signature {secret}: permission denied", "verify", "k", "--in", "{pem}", "--signature", "{secret}")]
    [InlineData(9, "--in {missing} does not exist", "mac", "k", "--in", "{missing}")]
    [InlineData(2, "--in {dir} is a directory: give a file's path", "mac", "k", "--in", "{dir}")]
    [InlineData(9, "cannot read --in {secret}: permission denied", "mac", "k", "--in", "{secret}")]
    [InlineData(9, "--in {missing} does not exist", "verify-mac", "k", "--mac", "00", "--in", "{missing}")]
    [InlineData(2, "--in {dir} is a directory: give a file's path", "verify-mac", "k", "--mac", "00", "--in", "{dir}")]
    [InlineData(9, "cannot read --in {secret}: permission denied", "verify-mac", "k", "--mac", "00", "--in", "{secret}")]
    // A ceremony's paths, checked before its database, approval or HSM steps.
    [InlineData(9, "--approval {missing} does not exist", "ceremony", "restore-domain", "--token-label", "none", "--share", "{file}", "--allow-network", "--approval", "{missing}")]
    [InlineData(2, "--approval {dir} is a directory: give a file's path", "ceremony", "restore-domain", "--token-label", "none", "--share", "{file}", "--allow-network", "--approval", "{dir}")]
    [InlineData(9, "cannot read --approval {secret}: permission denied", "ceremony", "restore-domain", "--token-label", "none", "--share", "{file}", "--allow-network", "--approval", "{secret}")]
    [InlineData(2, "--data-dir {file} is a file: give a directory's path", "ceremony", "restore-domain", "--token-label", "none", "--share", "{file}", "--allow-network", "--without-approval", "--data-dir", "{file}")]
    [InlineData(9, "--data-dir {missing} does not exist", "ceremony", "rotate-domain", "--token-label", "none", "--restore-token-label", "r", "--allow-network", "--share", "{file}", "--data-dir", "{missing}")]
    [InlineData(2, "--data-dir {file} is a file: give a directory's path", "ceremony", "rotate-domain", "--token-label", "none", "--restore-token-label", "r", "--allow-network", "--share", "{pem}", "--data-dir", "{file}")]
    [InlineData(9, "--share {missing} does not exist", "ceremony", "rotate-domain", "--token-label", "none", "--restore-token-label", "r", "--allow-network", "--data-dir", "{dir}", "--share", "{missing}")]
    [InlineData(2, "--share {dir} is a directory: give a file's path", "ceremony", "rotate-domain", "--token-label", "none", "--restore-token-label", "r", "--allow-network", "--data-dir", "{dir}", "--share", "{dir}")]
    [InlineData(9, "cannot read --share {secret}: permission denied", "ceremony", "rotate-domain", "--token-label", "none", "--restore-token-label", "r", "--allow-network", "--data-dir", "{dir}", "--share", "{secret}")]
    [InlineData(9, "--new-share {missing} does not exist", "ceremony", "rotate-domain", "--token-label", "none", "--restore-token-label", "r", "--allow-network", "--data-dir", "{dir}", "--share", "{file}", "--new-share", "{missing}")]
    [InlineData(2, "--new-share {dir} is a directory: give a file's path", "ceremony", "rotate-domain", "--token-label", "none", "--restore-token-label", "r", "--allow-network", "--data-dir", "{dir}", "--share", "{file}", "--new-share", "{dir}")]
    [InlineData(9, "cannot read --new-share {secret}: permission denied", "ceremony", "rotate-domain", "--token-label", "none", "--restore-token-label", "r", "--allow-network", "--data-dir", "{dir}", "--share", "{file}", "--new-share", "{secret}")]
    [InlineData(9, "--genesis {missing} does not exist", "ceremony", "rotate-domain", "--token-label", "none", "--restore-token-label", "r", "--allow-network", "--data-dir", "{dir}", "--share", "{file}", "--genesis", "{missing}")]
    [InlineData(2, "--genesis {dir} is a directory: give a file's path", "ceremony", "rotate-domain", "--token-label", "none", "--restore-token-label", "r", "--allow-network", "--data-dir", "{dir}", "--share", "{file}", "--genesis", "{dir}")]
    [InlineData(9, "cannot read --genesis {secret}: permission denied", "ceremony", "rotate-domain", "--token-label", "none", "--restore-token-label", "r", "--allow-network", "--data-dir", "{dir}", "--share", "{file}", "--genesis", "{secret}")]
    [InlineData(9, "--approval {missing} does not exist", "ceremony", "rotate-domain", "--token-label", "none", "--restore-token-label", "r", "--allow-network", "--data-dir", "{dir}", "--share", "{file}", "--approval", "{missing}")]
    [InlineData(2, "--approval {dir} is a directory: give a file's path", "ceremony", "rotate-domain", "--token-label", "none", "--restore-token-label", "r", "--allow-network", "--data-dir", "{dir}", "--share", "{file}", "--approval", "{dir}")]
    [InlineData(9, "cannot read --approval {secret}: permission denied", "ceremony", "rotate-domain", "--token-label", "none", "--restore-token-label", "r", "--allow-network", "--data-dir", "{dir}", "--share", "{file}", "--approval", "{secret}")]
    [InlineData(2, "--new-shares-dir {file} is a file: give a directory's path", "ceremony", "rotate-domain", "--token-label", "none", "--restore-token-label", "r", "--allow-network", "--data-dir", "{dir}", "--share", "{pem}", "--new-shares-dir", "{file}")]
    [InlineData(2, "--shares-dir {file} is a file: give a directory's path", "ceremony", "create-domain", "--token-label", "none", "--custodian", "a", "--custodian", "b", "--threshold", "2", "--officer", "o={pem}", "--officer-threshold", "1", "--shares-dir", "{file}", "--data-dir", "data", "--allow-network")]
    [InlineData(9, "cannot read --passphrase-file {secret}: permission denied", "ceremony", "create-domain", "--token-label", "none", "--custodian", "a", "--custodian", "b", "--threshold", "2", "--officer", "o={pem}", "--officer-threshold", "1", "--shares-dir", "shares", "--data-dir", "data", "--allow-network", "--passphrase-file", "a={secret}")]
    public async Task WrongPath_ExitsAsTheConventionsSay_OneLineNamingTheFlagAndThePath(int exitCode, string message, params string[] args)
    {
        await PathsAsync();
        var secret = Path.Combine(_directory, "secret");
        await File.WriteAllTextAsync(secret, "s\n");
        File.SetUnixFileMode(secret, UnixFileMode.None);
        File.SetUnixFileMode(Directory.CreateDirectory(Path.Combine(_directory, "closed")).FullName, UnixFileMode.None);
        File.SetUnixFileMode(Directory.CreateDirectory(Path.Combine(_directory, "ro")).FullName, UnixFileMode.UserRead | UnixFileMode.UserExecute);
        var before = Entries();

        var result = await RunAnyAsync(args);

        Assert.True(result.ExitCode == exitCode, result.ToString());
        // --allow-network and --without-approval warn first.
        Assert.Equal($"kms: {Fill([message])[0]}\n", string.Concat(result.Error.Split('\n').Where(l => l.Length > 0 && !l.StartsWith("kms: warning: ", StringComparison.Ordinal)).Select(l => l + "\n")));
        Assert.Equal("", result.Out);
        Assert.Equal(before, Entries());
    }

    /// <summary>
    /// Each option of each command that takes a path (FILE, DIR, PEM or PATH in its help, or
    /// NAME=PATH pairs) has a row in <see cref="WrongPath_ExitsAsTheConventionsSay_OneLineNamingTheFlagAndThePath"/>,
    /// unless it is one of those below: a flag added without a row fails here.
    /// </summary>
    [Fact]
    public void EveryPathFlagOfEveryCommand_HasARowInTheTable()
    {
        var method = typeof(FileErrorTests).GetMethod(nameof(WrongPath_ExitsAsTheConventionsSay_OneLineNamingTheFlagAndThePath))!;
        var rows = method.GetCustomAttributes(typeof(InlineDataAttribute), false).Cast<InlineDataAttribute>()
            .SelectMany(a => a.GetData(method)).Select(row => ((string)row[1], row.Skip(2).Cast<string>().ToArray())).ToList();
        var root = KmsCli.Build(new CliEnvironment
        {
            Out = TextWriter.Null,
            Error = TextWriter.Null,
            OpenStandardInput = () => Stream.Null,
            OpenStandardOutput = () => Stream.Null,
            GetVariable = _ => null,
            HomeDirectory = Path.GetTempPath(),
        });
        var covered = new HashSet<string>(StringComparer.Ordinal);
        foreach (var (message, args) in rows)
        {
            System.CommandLine.Command command = root;
            var path = "kms";
            foreach (var arg in args)
            {
                if (command.Subcommands.FirstOrDefault(c => c.Name == arg) is not { } sub)
                {
                    break;
                }

                command = sub;
                path += " " + arg;
            }

            // The flag given the path the row's message names (the others are given good paths).
            var named = Placeholder().Matches(message).Select(m => m.Value).ToList();
            var flags = args.SkipLast(1).Where((a, i) => a.StartsWith("--", StringComparison.Ordinal) && named.Any(args[i + 1].Contains)).ToList();
            covered.UnionWith(flags.Select(flag => $"{path} {flag}"));
            // The global options are the root's (recursive): any command's row covers them.
            covered.UnionWith(flags.Select(flag => $"kms {flag}"));
        }

        var missing = new List<string>();
        var pending = new Stack<(System.CommandLine.Command Command, string Path)>([(root, "kms")]);
        while (pending.TryPop(out var entry))
        {
            foreach (var option in entry.Command.Options.Where(TakesAPath))
            {
                var name = $"{entry.Path} {option.Name}";
                if (!covered.Contains(name) && !Exempt.Any(e => name.EndsWith(e, StringComparison.Ordinal)))
                {
                    missing.Add(name);
                }
            }

            foreach (var sub in entry.Command.Subcommands)
            {
                pending.Push((sub, $"{entry.Path} {sub.Name}"));
            }
        }

        Assert.True(missing.Count == 0, "path flags without a row in the table:\n" + string.Join("\n", missing.Order(StringComparer.Ordinal)));
    }

    // Path options the table does not repeat for every command, each for a reason.
    private static readonly string[] Exempt =
    [
        // SecretInput.ReadFile, as --key-passphrase-file's and --passphrase-file's rows show.
        " --pin-file", " --so-pin-file", " --restore-pin-file", " --credential-file", " --postgres-connection-file", " --key-passphrase-file", " --passphrase-file", " --new-passphrase-file",
        // HsmSelection.Options, as inspect-token's and create-domain's rows show.
        " --module", " --softhsm-conf", " --hsm-profile",
    ];

    [System.Text.RegularExpressions.GeneratedRegex(@"\{\w+\}")]
    private static partial System.Text.RegularExpressions.Regex Placeholder();

    private static bool TakesAPath(System.CommandLine.Option option) =>
        !option.Hidden && (option.HelpName is "FILE" or "DIR" or "PEM" or "PATH" or "NAME|PATH"
            || (option.HelpName == "KEY=VALUE" && option.Description is { } d && (d.Contains("=PATH", StringComparison.Ordinal) || d.Contains(".pem:", StringComparison.Ordinal))));

    // Every file and directory under the test's directory, with its size: what a failed command must leave as it was.
    private List<string> Entries() =>
        [.. Directory.EnumerateFileSystemEntries(_directory, "*", new EnumerationOptions { RecurseSubdirectories = true, IgnoreInaccessible = true, AttributesToSkip = 0 })
            .Select(e => File.Exists(e) ? $"{e} {new FileInfo(e).Length}" : e)
            .Order(StringComparer.Ordinal)];

    // Rows naming {secret}, {closed} or {ro} run without root's override; a client certificate is given without the fixture's token (the CLI refuses both).
    private async Task<CliResult> RunAnyAsync(string[] args)
    {
        var variables = args.Contains("--client-cert")
            ? fixture.Variables.Where(v => v.Key != "KMS_TOKEN_FILE").ToDictionary()
            : new Dictionary<string, string>(fixture.Variables);
        return args.Any(a => a.Contains("{secret}", StringComparison.Ordinal) || a.Contains("{closed}", StringComparison.Ordinal) || a.Contains("{ro}", StringComparison.Ordinal))
            ? await CliRun.ProcessInShellAsync(variables, _directory, "exec capsh --drop=cap_dac_override,cap_dac_read_search -- -c 'exec dotnet \"$@\"' bash \"$@\"", Fill(args))
            : args[0] == "ceremony"
                // A ceremony turns core dumps off for its process, hard limit included, which this
                // test host cannot raise again (no CAP_SYS_RESOURCE in a container): in-process, it
                // would take from CeremonyEndToEndTests' ceremony process the limit it shows it set.
                ? await CliRun.ProcessAsync(variables, _directory, Fill(args))
                : await CliRun.InProcessAsync(variables, _directory, null, Fill(args));
    }

    /// <summary>Was exit 9 ("… exists already"), where every other output that exists is a usage error (exit 2); asked before the passphrase, nothing written.</summary>
    [Fact]
    public async Task OfficerKeygen_PublicKeyFileExists_Exits2_NamesIt()
    {
        var (_, _, pem) = await PathsAsync();
        var key = Path.Combine(_directory, "olga.key");
        await File.WriteAllTextAsync(key + ".pub", "an earlier key\n");
        var before = Entries();

        var result = await RunAsync("officer", "keygen", "--out", key, "--key-passphrase-file", pem);

        Assert.True(result.ExitCode == ExitCodes.Usage, result.ToString());
        Assert.Equal($"kms: --out {key}: its public key file {key}.pub exists: officer keys are never overwritten\n", result.Error);
        Assert.Equal(before, Entries());
    }

    /// <summary>
    /// An output on a read-only filesystem (a read-only bind mount: the tests run as root, which
    /// may mount; unmounted in the finally): one line naming the flag, the path and why. Was .NET's
    /// "Read-only file system : '…/.e.&lt;hex&gt;.partial'" (exit 9), naming a temporary file.
    /// </summary>
    [Theory]
    [InlineData("cannot write --out {rofs}/e: {rofs} is on a read-only filesystem", "audit", "export", "--out", "{rofs}/e")]
    [InlineData("cannot write --out {rofs}/k: {rofs} is on a read-only filesystem", "officer", "keygen", "--out", "{rofs}/k", "--key-passphrase-file", "{pem}")]
    [InlineData("cannot write --out {rofs}/b: {rofs} is on a read-only filesystem", "backup", "fetch", "r", "--out", "{rofs}/b", "--public-key", "{pem}")]
    [InlineData("cannot create the directory --shares-dir {rofs}/s: it is on a read-only filesystem", "ceremony", "create-domain", "--token-label", "none", "--custodian", "a", "--custodian", "b", "--threshold", "2",
        "--officer", "o={pem}", "--officer-threshold", "1", "--shares-dir", "{rofs}/s", "--data-dir", "data", "--allow-network")]
    // The share directories exist, on the read-only filesystem: before, nothing was created there to
    // find it, and the run went on to the PIN (create-domain), or to the database (rotate-domain).
    [InlineData("cannot write --shares-dir {rofs}: {rofs} is on a read-only filesystem", "ceremony", "create-domain", "--token-label", "none", "--custodian", "a", "--custodian", "b", "--threshold", "2",
        "--officer", "o={pem}", "--officer-threshold", "1", "--shares-dir", "{rofs}", "--data-dir", "data", "--allow-network")]
    [InlineData("cannot write --new-shares-dir {rofs}: {rofs} is on a read-only filesystem", "ceremony", "rotate-domain", "--token-label", "none", "--restore-token-label", "r", "--share", "{pem}",
        "--new-custodian", "a", "--new-custodian", "b", "--new-threshold", "2", "--new-shares-dir", "{rofs}", "--data-dir", "{dir}", "--allow-network")]
    [InlineData("cannot write --data-dir {rofs}: {rofs} is on a read-only filesystem", "ceremony", "restore-domain", "--token-label", "none", "--share", "{pem}",
        "--data-dir", "{rofs}", "--without-approval", "--allow-network")]
    public async Task OutputOnAReadOnlyFilesystem_Exits9_SaysSo(string message, params string[] args)
    {
        await PathsAsync();
        var rofs = Directory.CreateDirectory(Path.Combine(_directory, "rofs")).FullName;
        await ToolAsync("mount", "--bind", "-o", "ro", rofs, rofs);
        try
        {
            var filled = Fill([.. args.Select(a => a.Replace("{rofs}", rofs, StringComparison.Ordinal))]);
            var result = args[0] == "ceremony"
                ? await CliRun.ProcessAsync(fixture.Variables, _directory, filled)
                : await CliRun.InProcessAsync(fixture.Variables, _directory, null, filled);

            Assert.True(result.ExitCode == ExitCodes.LocalIo, result.ToString());
            // --allow-network warns first.
            Assert.EndsWith($"\nkms: {message.Replace("{rofs}", rofs, StringComparison.Ordinal)}\n", "\n" + result.Error, StringComparison.Ordinal);
            Assert.Equal("", result.Out);
            Assert.Empty(Directory.GetFileSystemEntries(rofs));
        }
        finally
        {
            await ToolAsync("umount", rofs);
        }
    }

    // mount(8), umount(8): the test fails, never skips, where they cannot run.
    private static async Task ToolAsync(string tool, params string[] args)
    {
        var start = new System.Diagnostics.ProcessStartInfo(tool, args) { RedirectStandardError = true };
        using var process = System.Diagnostics.Process.Start(start)!;
        var error = await process.StandardError.ReadToEndAsync();
        await process.WaitForExitAsync();
        Assert.True(process.ExitCode == 0, $"{tool} {string.Join(' ', args)}: {error}");
    }

    /// <summary>A directory the ceremony must create its share files in, under one the user may not write (capsh): was "Access to the path '…' is denied.".</summary>
    [Fact]
    public async Task CreateDomain_DataDirNotWritable_AsAProcessWithoutRootsOverride_Exits9_NamesTheDirectory()
    {
        await PathsAsync();
        var readOnly = ReadOnlyDirectory();

        var result = await WithoutFileOverrideAsync(Fill(CreateDomain(sharesDir: "shares", dataDir: "ro")));

        Assert.True(result.ExitCode == ExitCodes.LocalIo, result.ToString());
        // --allow-network's warning may come first.
        Assert.EndsWith($"\nkms: cannot create the directory {readOnly}/quorum: permission denied\n", "\n" + result.Error, StringComparison.Ordinal);
    }

    /// <summary>
    /// A share directory that exists but takes no file (as a process without root's override:
    /// capsh), refused before any PIN is asked or the HSM touched: exit 9, one line naming the flag
    /// and the directory, nothing written. Before, create-domain went on to ask the token's PIN
    /// (here: "the token's user PIN is needed", exit 2) and with one found the directory only at
    /// the first share file, after the import; rotate-domain after the old key was rebuilt and the
    /// rotation recorded (here: "no database at …").
    /// </summary>
    [Fact]
    public async Task CreateAndRotateDomain_SharesDirNotWritable_AsAProcessWithoutRootsOverride_Exits9_BeforeThePinOrTheDatabase()
    {
        await PathsAsync();
        var readOnly = ReadOnlyDirectory();

        var create = await WithoutFileOverrideAsync(Fill(CreateDomain(sharesDir: "ro", dataDir: "data")));
        var rotate = await WithoutFileOverrideAsync(Fill([
            "ceremony", "rotate-domain", "--token-label", "none", "--restore-token-label", "r", "--share", "{pem}", "--allow-network",
            "--new-custodian", "a", "--new-custodian", "b", "--new-threshold", "2", "--new-shares-dir", "ro", "--data-dir", "{dir}"]));

        foreach (var result in new[] { create, rotate })
        {
            Assert.True(result.ExitCode == ExitCodes.LocalIo, result.ToString());
            var flag = result == create ? "--shares-dir" : "--new-shares-dir";
            // --allow-network's warning may come first.
            Assert.EndsWith($"\nkms: cannot write {flag} {readOnly}: permission denied in {readOnly}\n", "\n" + result.Error, StringComparison.Ordinal);
            Assert.Equal("", result.Out);
        }

        Assert.Empty(Directory.GetFileSystemEntries(readOnly));
    }

    /// <summary>
    /// A share directory holding share files already (an earlier run's): refused in one line
    /// naming them (exit 5, as create-domain always refused them), before any PIN, the database or
    /// the approval, and left as they are. Before, rotate-domain went on (here: "no database at …",
    /// exit 9) and with a database found them only at the first new share written — after the
    /// approval, the PINs and the passphrases, with the old key rebuilt and the rotation recorded;
    /// create-domain refused them without naming them.
    /// </summary>
    [Fact]
    public async Task CreateAndRotateDomain_SharesDirHoldsShareFiles_Exits5_NamingThem_BeforeThePinOrTheDatabase()
    {
        await PathsAsync();
        var shares = Directory.CreateDirectory(Path.Combine(_directory, "earlier")).FullName;
        await File.WriteAllTextAsync(Path.Combine(shares, "share-2-b.json"), "an earlier run's\n");
        await File.WriteAllTextAsync(Path.Combine(shares, "share-1-a.json"), "an earlier run's\n");

        var create = await CliRun.ProcessAsync(fixture.Variables, _directory, Fill(CreateDomain(sharesDir: "earlier", dataDir: "data")));
        var rotate = await CliRun.ProcessAsync(fixture.Variables, _directory, Fill([
            "ceremony", "rotate-domain", "--token-label", "none", "--restore-token-label", "r", "--share", "{pem}", "--allow-network",
            "--new-custodian", "a", "--new-custodian", "b", "--new-threshold", "2", "--new-shares-dir", "earlier", "--data-dir", "{dir}"]));

        Assert.True(create.ExitCode == ExitCodes.Conflict, create.ToString());
        Assert.EndsWith($"\nkms: --shares-dir {shares} holds share files already (share-1-a.json, share-2-b.json): share files are never overwritten; move them away, or give another --shares-dir\n", "\n" + create.Error, StringComparison.Ordinal);
        Assert.True(rotate.ExitCode == ExitCodes.Conflict, rotate.ToString());
        Assert.EndsWith($"\nkms: --new-shares-dir {shares} holds share files already (share-1-a.json, share-2-b.json): share files are never overwritten; "
            + "move them away or give another --new-shares-dir (an interrupted run's new share files resume it: --new-share, docs/ceremony.md)\n", "\n" + rotate.Error, StringComparison.Ordinal);
        foreach (var result in new[] { create, rotate })
        {
            Assert.Equal("", result.Out);
            Assert.DoesNotContain("PIN", result.Error, StringComparison.Ordinal);
        }

        Assert.Equal(["share-1-a.json", "share-2-b.json"], Directory.GetFileSystemEntries(shares).Select(Path.GetFileName).Order(StringComparer.Ordinal));
        Assert.Empty(Directory.GetFileSystemEntries(Path.Combine(_directory, "adir")));
    }

    // {dir} a directory, {file} a file, {pem} an audit public key's PEM; {secret}, {closed} and {ro} (made by the table's test), {missing} and {nodir} never made.
    private async Task<(string Dir, string File, string Pem)> PathsAsync()
    {
        var dir = Directory.CreateDirectory(Path.Combine(_directory, "adir")).FullName;
        var file = Path.Combine(_directory, "afile");
        await File.WriteAllTextAsync(file, "not much\n");
        using var key = System.Security.Cryptography.ECDsa.Create(System.Security.Cryptography.ECCurve.NamedCurves.nistP256);
        await File.WriteAllTextAsync(Path.Combine(_directory, "audit.pem"), key.ExportSubjectPublicKeyInfoPem());
        return (dir, file, Path.Combine(_directory, "audit.pem"));
    }

    // "ro" under the test's directory, which a process without root's override may read but not write.
    private string ReadOnlyDirectory()
    {
        var readOnly = Directory.CreateDirectory(Path.Combine(_directory, "ro")).FullName;
        File.SetUnixFileMode(readOnly, UnixFileMode.UserRead | UnixFileMode.UserExecute);
        return readOnly;
    }

    // create-domain's arguments up to its directories, which never gets as far as a token ("none").
    private static string[] CreateDomain(string sharesDir, string dataDir) =>
    [
        "ceremony", "create-domain", "--token-label", "none", "--custodian", "a", "--custodian", "b", "--threshold", "2",
        "--officer", "o={pem}", "--officer-threshold", "1", "--allow-network", "--shares-dir", sharesDir, "--data-dir", dataDir,
    ];

    private string[] Fill(string[] args) => [.. args.Select(a => a
        .Replace("{dir}", Path.Combine(_directory, "adir"), StringComparison.Ordinal)
        .Replace("{missing}", Path.Combine(_directory, "missing"), StringComparison.Ordinal)
        .Replace("{nodir}", Path.Combine(_directory, "nodir"), StringComparison.Ordinal)
        .Replace("{ro}", Path.Combine(_directory, "ro"), StringComparison.Ordinal)
        .Replace("{file}", Path.Combine(_directory, "afile"), StringComparison.Ordinal)
        .Replace("{pem}", Path.Combine(_directory, "audit.pem"), StringComparison.Ordinal)
        .Replace("{secret}", Path.Combine(_directory, "secret"), StringComparison.Ordinal)
        .Replace("{closed}", Path.Combine(_directory, "closed"), StringComparison.Ordinal))];

    /// <summary>Was "token file … does not exist" for a directory that does.</summary>
    [Fact]
    public async Task TokenFileIsADirectory_Exits2_SaysItIsADirectory()
    {
        var tokens = Directory.CreateDirectory(Path.Combine(_directory, "tokens")).FullName;

        var result = await RunAsync("keys", "list", "--token-file", tokens);

        Assert.Equal(ExitCodes.Usage, result.ExitCode);
        Assert.Equal($"kms: token file {tokens} (flag --token-file) is a directory: give a file's path\n", result.Error);
    }

    /// <summary>Ended in " (Parameter 'options')": a parameter of the library's, not anything the user typed.</summary>
    [Fact]
    public async Task CaFileWithoutACertificate_Exits2_WithoutTheLibrarysParameterName()
    {
        var notPem = Path.Combine(_directory, "ca.txt");
        await File.WriteAllTextAsync(notPem, "not a certificate\n");

        var result = await RunAsync("keys", "list", "--ca-file", notPem);

        Assert.Equal(ExitCodes.Usage, result.ExitCode);
        Assert.Equal($"kms: the configuration does not work: CaCertificatePath {notPem} holds no PEM certificate (-----BEGIN CERTIFICATE-----)\n", result.Error);
    }

    private void AssertNothingWritten(CliResult result, params string[] before)
    {
        Assert.Equal("", result.Out);
        Assert.DoesNotContain("   at ", result.Error, StringComparison.Ordinal);
        Assert.Equal(before, Directory.GetFileSystemEntries(_directory).Select(Path.GetFileName).Order(StringComparer.Ordinal));
    }

    private async Task<string> CreateKeyAsync()
    {
        var key = $"files-{Guid.NewGuid():N}";
        var created = await RunAsync("keys", "create", key);
        Assert.True(created.ExitCode == 0, created.ToString());
        return key;
    }

    // capsh must be installed (libcap2-bin): without it the test fails, it does not skip.
    private Task<CliResult> WithoutFileOverrideAsync(params string[] args) =>
        CliRun.ProcessInShellAsync(fixture.Variables, _directory, "exec capsh --drop=cap_dac_override,cap_dac_read_search -- -c 'exec dotnet \"$@\"' bash \"$@\"", args);

    private Task<CliResult> RunAsync(params string[] args) => CliRun.InProcessAsync(fixture.Variables, _directory, null, args);
}
