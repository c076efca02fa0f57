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

    /// <summary>An input the user may not read (as above, without root's override): exit 9, the path, no stack trace, nothing written. Held already.</summary>
    [Fact]
    public async Task Encrypt_InNotReadable_AsAProcessWithoutRootsOverride_Exits9()
    {
        var input = Path.Combine(_directory, "secret.txt");
        await File.WriteAllTextAsync(input, "hello\n");
        File.SetUnixFileMode(input, UnixFileMode.None);

        var result = await WithoutFileOverrideAsync("encrypt", "--key", "k", "--in", "secret.txt", "--out", "o.kmse");

        Assert.Equal(ExitCodes.LocalIo, result.ExitCode);
        Assert.Equal($"kms: Access to the path '{input}' is denied.\n", result.Error);
        AssertNothingWritten(result, "secret.txt");
    }

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
