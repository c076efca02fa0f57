using System.Text.RegularExpressions;
using Kms.Samples.FileEncryption;
using Kms.Samples.RecordEncryption;
using Kms.Testing;

namespace Kms.Client.Tests;

/// <summary>The samples in samples/, run against the real server: they compile and do what they say.</summary>
public sealed partial class SampleTests(ClientServerFixture fixture) : IClassFixture<ClientServerFixture>
{
    [Fact]
    public async Task RecordSample_EncryptsRowsAndRefusesAMovedRow()
    {
        using var client = fixture.Server.CreateClient();
        var key = (await client.CreateKeyAsync("tenants/dev", $"sample-{Guid.NewGuid():N}")).Name;
        var output = new StringWriter();

        Assert.Equal(0, await RecordSample.RunAsync(client, key, output));

        var text = output.ToString();
        Assert.Contains("row 3:", text, StringComparison.Ordinal);
        Assert.Contains("row 1 read as row 2: refused", text, StringComparison.Ordinal);
        Assert.Contains("KMS calls for 3 rows: 1 GenerateDataKey, 3 Decrypt", text, StringComparison.Ordinal);
        Assert.DoesNotContain("078-05-1120", text, StringComparison.Ordinal);

        // The output the README shows is the sample's, but for the sizes (the key's name is stored in each record).
        Assert.Equal(
            ReadmeSampleOutput().Where(l => !l.Contains("round trip", StringComparison.Ordinal)).Select(Sizeless),
            text.Split('\n', StringSplitOptions.RemoveEmptyEntries).Select(Sizeless));
    }

    [Fact]
    public async Task FileSample_RoundTripsAFileUnderTwoKeys()
    {
        using var client = fixture.Server.CreateClient();
        string[] keys = [(await client.CreateKeyAsync("tenants/dev", $"sample-a-{Guid.NewGuid():N}")).Name, (await client.CreateKeyAsync("tenants/dev", $"sample-b-{Guid.NewGuid():N}")).Name];
        var directory = Directory.CreateTempSubdirectory("kms-sample-");
        try
        {
            var path = Path.Combine(directory.FullName, "report.bin");
            var content = new byte[300_000];
            new Random(3).NextBytes(content);
            await File.WriteAllBytesAsync(path, content);
            var output = new StringWriter();

            Assert.Equal(0, await FileSample.RunAsync(client, keys, path, output));

            Assert.Contains("round trip identical", output.ToString(), StringComparison.Ordinal);
            Assert.Equal(
                Sizeless(Assert.Single(ReadmeSampleOutput(), l => l.Contains("round trip", StringComparison.Ordinal)).Replace("big.bin", path, StringComparison.Ordinal)),
                Sizeless(output.ToString().TrimEnd()));
            Assert.Equal(content, await File.ReadAllBytesAsync(path + ".out"));

            // The decrypted copy is the owner's alone (the plaintext of a file whose permissions the sample does not know).
            Assert.Equal(UnixFileMode.UserRead | UnixFileMode.UserWrite, File.GetUnixFileMode(path + ".out"));
            Assert.Equal([path, path + ".kmse", path + ".out"], Directory.GetFiles(directory.FullName).Order(StringComparer.Ordinal));
            Assert.Equal(-1, (await File.ReadAllBytesAsync(path + ".kmse")).AsSpan().IndexOf(content.AsSpan(0, 32)));
        }
        finally
        {
            directory.Delete(recursive: true);
        }
    }

    /// <summary>
    /// The README's <c>dotnet run --project samples/FileEncryption -- big.bin</c> on a fresh clone, where
    /// no big.bin exists: exit 2 with a line saying so, before any client or key is made (it threw a
    /// FileNotFoundException with its stack trace, after creating two keys).
    /// </summary>
    [Fact]
    public async Task FileSample_NoSuchFile_Exits2BeforeMakingAnything()
    {
        Assert.Equal(2, await FileSample.Main([Path.Combine(Path.GetTempPath(), $"kms-no-such-{Guid.NewGuid():N}.bin")]));
    }

    /// <summary>
    /// The samples read the environment variables of the <c>kms</c> CLI (docs/cli.md), so the one
    /// <c>export</c> line the README gives for the CLI points them at the same server. (They read
    /// <c>KMS_CA</c>, not the CLI's <c>KMS_CA_FILE</c>: the README's export left them on <c>.kms/tls/ca.crt</c>.)
    /// </summary>
    [Fact]
    public void Samples_ReadTheEnvironmentVariablesOfTheCli()
    {
        var cliDoc = File.ReadAllText(RepositoryPaths.Of("docs", "cli.md"));
        var read = Directory.EnumerateFiles(RepositoryPaths.Of("samples"), "Program.cs", SearchOption.AllDirectories)
            .SelectMany(f => EnvironmentVariable().Matches(File.ReadAllText(f)).Select(m => (Sample: Path.GetFileName(Path.GetDirectoryName(f)), Name: m.Groups[1].Value)))
            .ToList();

        Assert.Equal(6, read.Count);
        Assert.DoesNotContain(read, r => !cliDoc.Contains($"`{r.Name}`", StringComparison.Ordinal));
    }

    /// <summary>The lines of the README's <c>text</c> block that shows what the samples print.</summary>
    private static string[] ReadmeSampleOutput()
    {
        var readme = File.ReadAllText(RepositoryPaths.Of("README.md"));
        var block = Assert.Single(TextBlock().Matches(readme), m => m.Value.Contains("KMS calls for 3 rows", StringComparison.Ordinal));
        return block.Groups[1].Value.Split('\n', StringSplitOptions.RemoveEmptyEntries);
    }

    private static string Sizeless(string line) => Number().Replace(line.TrimEnd('\r'), "N");

    [GeneratedRegex(@"```text\n(.*?)```", RegexOptions.Singleline)]
    private static partial Regex TextBlock();

    [GeneratedRegex(@"\d+(?= bytes| encrypted)")]
    private static partial Regex Number();

    [GeneratedRegex(@"GetEnvironmentVariable\(""(\w+)""\)")]
    private static partial Regex EnvironmentVariable();
}
