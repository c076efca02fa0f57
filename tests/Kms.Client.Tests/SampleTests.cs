using Kms.Samples.FileEncryption;
using Kms.Samples.RecordEncryption;

namespace Kms.Client.Tests;

/// <summary>The samples in samples/, run against the real server: they compile and do what they say.</summary>
public sealed class SampleTests(ClientServerFixture fixture) : IClassFixture<ClientServerFixture>
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
}
