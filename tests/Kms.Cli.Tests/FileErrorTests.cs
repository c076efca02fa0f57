using Kms.Cli.Infrastructure;

namespace Kms.Cli.Tests;

/// <summary>
/// What a user meets with a wrong path: one line on stderr naming the path they gave, a non-zero
/// exit, nothing on stdout and no file left behind.
/// </summary>
public sealed class FileErrorTests(CliServerFixture fixture) : IClassFixture<CliServerFixture>, IDisposable
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
        Assert.Equal($"kms: {input} is a directory: give a file's path\n", result.Error);
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
        Assert.Equal($"kms: cannot write {_directory}/nodir/o.kmse: the directory {_directory}/nodir does not exist\n", result.Error);
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
        var readOnly = Directory.CreateDirectory(Path.Combine(_directory, "ro")).FullName;
        File.SetUnixFileMode(readOnly, UnixFileMode.UserRead | UnixFileMode.UserExecute);
        var key = await CreateKeyAsync();

        var result = await WithoutFileOverrideAsync("encrypt", "--key", key, "--in", "plain.txt", "--out", "ro/o.kmse");

        Assert.Equal(ExitCodes.LocalIo, result.ExitCode);
        Assert.Equal($"kms: cannot write {readOnly}/o.kmse: permission denied in {readOnly}\n", result.Error);
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
        Assert.Equal($"kms: cannot read {input}: permission denied\n", result.Error);
        AssertNothingWritten(result, "secret.txt");
    }

    /// <summary>
    /// Commands given a directory where they read a file ({dir}; {file} is a readable file, {pem}
    /// an audit public key). Each said "Access to the path '{dir}' is denied." (exit 9), sending
    /// the user to the permissions of a path that has none wrong.
    /// </summary>
    [Theory]
    [InlineData("audit", "verify", "{file}", "--public-key", "{dir}")]
    [InlineData("audit", "verify", "{dir}", "--public-key", "{pem}")]
    [InlineData("ceremony", "verify-transcript", "{file}", "--public-key", "{dir}")]
    [InlineData("ceremony", "verify-transcript", "{dir}", "--public-key", "{pem}")]
    [InlineData("backup", "verify", "{file}", "--public-key", "{dir}")]
    [InlineData("attest", "verify", "{dir}", "--public-key", "{pem}")]
    [InlineData("rewrap", "--key", "k", "--in-list", "{dir}")]
    [InlineData("keys", "import", "k", "--material", "{dir}")]
    [InlineData("officer", "approve", "tenants/dev/quorumRequests/r", "--key", "{dir}", "--key-passphrase-file", "{file}", "--yes")]
    [InlineData("officer", "approve", "tenants/dev/quorumRequests/r", "--key", "{file}", "--key-passphrase-file", "{dir}", "--yes")]
    [InlineData("keys", "list", "--config", "{dir}")]
    public async Task FileExpected_DirectoryGiven_Exits2_SaysItIsADirectory(params string[] args)
    {
        var (dir, _, _) = await PathsAsync();

        var result = await RunAsync(Fill(args));

        Assert.True(result.ExitCode == ExitCodes.Usage, result.ToString());
        Assert.Equal(args.Contains("--config") ? $"kms: profile file {dir} is a directory: give a file's path\n" : $"kms: {dir} is a directory: give a file's path\n", result.Error);
        Assert.Equal("", result.Out);
    }

    /// <summary>Commands given a file where they read a directory: was "Could not find a part of the path" (rewrap) or a missing manifest (backup verify) for a path that is there.</summary>
    [Theory]
    [InlineData("rewrap", "--key", "k", "--dir", "{file}")]
    [InlineData("backup", "verify", "{file}", "--public-key", "{pem}")]
    [InlineData("backup", "restore", "{file}", "--public-key", "{pem}", "--data-dir", "{dir}", "--without-audit-logs")]
    public async Task DirectoryExpected_FileGiven_Exits2_SaysItIsAFile(params string[] args)
    {
        var (_, file, _) = await PathsAsync();

        var result = await RunAsync(Fill(args));

        Assert.True(result.ExitCode == ExitCodes.Usage, result.ToString());
        Assert.Equal($"kms: {file} is a file: give a directory's path\n", result.Error);
        Assert.Equal("", result.Out);
    }

    /// <summary>
    /// Commands given a path they may not read ({secret}: a file of mode 000; {closed}: a
    /// directory of mode 000), as a process without root's override (capsh). Each said "Access to
    /// the path '…' is denied.", the words it also used for a directory given as a file.
    /// </summary>
    [Theory]
    [InlineData("{secret}", "audit", "verify", "{file}", "--public-key", "{secret}")]
    [InlineData("{secret}", "attest", "verify", "{secret}", "--public-key", "{pem}")]
    [InlineData("{secret}", "rewrap", "--key", "k", "--in-list", "{secret}")]
    [InlineData("{closed}", "rewrap", "--key", "k", "--dir", "{closed}")]
    [InlineData("{secret}", "officer", "approve", "tenants/dev/quorumRequests/r", "--key", "{file}", "--key-passphrase-file", "{secret}", "--yes")]
    public async Task NotReadable_AsAProcessWithoutRootsOverride_Exits9_NamesThePath(string named, params string[] args)
    {
        await PathsAsync();
        var secret = Path.Combine(_directory, "secret");
        await File.WriteAllTextAsync(secret, "s\n");
        File.SetUnixFileMode(secret, UnixFileMode.None);
        var closed = Directory.CreateDirectory(Path.Combine(_directory, "closed")).FullName;
        File.SetUnixFileMode(closed, UnixFileMode.None);

        var result = await WithoutFileOverrideAsync(Fill(args));

        Assert.True(result.ExitCode == ExitCodes.LocalIo, result.ToString());
        Assert.Equal($"kms: cannot read {Fill([named])[0]}: permission denied\n", result.Error);
        Assert.Equal("", result.Out);
    }

    /// <summary>A directory the ceremony must create its share files in, under one the user may not write (capsh): was "Access to the path '…' is denied.".</summary>
    [Fact]
    public async Task CreateDomain_DataDirNotWritable_AsAProcessWithoutRootsOverride_Exits9_NamesTheDirectory()
    {
        await PathsAsync();
        var readOnly = Directory.CreateDirectory(Path.Combine(_directory, "ro")).FullName;
        File.SetUnixFileMode(readOnly, UnixFileMode.UserRead | UnixFileMode.UserExecute);

        var result = await WithoutFileOverrideAsync(Fill([
            "ceremony", "create-domain", "--token-label", "none", "--custodian", "a", "--custodian", "b", "--threshold", "2",
            "--officer", "o={pem}", "--officer-threshold", "1", "--allow-network", "--shares-dir", "shares", "--data-dir", "ro"]));

        Assert.True(result.ExitCode == ExitCodes.LocalIo, result.ToString());
        // --allow-network's warning may come first.
        Assert.EndsWith($"\nkms: cannot create the directory {readOnly}/quorum: permission denied\n", "\n" + result.Error, StringComparison.Ordinal);
    }

    // {dir} a directory, {file} a file, {pem} an audit public key's PEM, {secret} and {closed} (made by the test).
    private async Task<(string Dir, string File, string Pem)> PathsAsync()
    {
        var dir = Directory.CreateDirectory(Path.Combine(_directory, "adir")).FullName;
        var file = Path.Combine(_directory, "afile");
        await File.WriteAllTextAsync(file, "not much\n");
        using var key = System.Security.Cryptography.ECDsa.Create(System.Security.Cryptography.ECCurve.NamedCurves.nistP256);
        await File.WriteAllTextAsync(Path.Combine(_directory, "audit.pem"), key.ExportSubjectPublicKeyInfoPem());
        return (dir, file, Path.Combine(_directory, "audit.pem"));
    }

    private string[] Fill(string[] args) => [.. args.Select(a => a
        .Replace("{dir}", Path.Combine(_directory, "adir"), StringComparison.Ordinal)
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
