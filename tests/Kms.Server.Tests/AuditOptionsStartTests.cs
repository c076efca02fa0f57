using Kms.Server.Hosting;
using Kms.Testing;

namespace Kms.Server.Tests;

/// <summary>Audit settings a server refuses to start with, before it touches the HSM or the data directory.</summary>
public sealed class AuditOptionsStartTests
{
    [Theory]
    [InlineData("1")]
    [InlineData("0")]
    [InlineData("999")]
    [InlineData("100001")]
    public async Task Build_ASummaryBlockSizeOutside1000To100000_Refused_NamingTheOptionAndTheRange(string value)
    {
        // Kms:Audit:SummaryBlockEvents=1 made audit_blocks as long as the log, which every
        // time-ranged page reads (no index on its time columns); 0 was taken as 1.
        var dataDir = Scratch.NewPath("kms-never-");
        var e = await Assert.ThrowsAsync<InvalidOperationException>(() => KmsServerApp.BuildAsync(
            ["--dev", "--urls=https://127.0.0.1:0", $"--Kms:Audit:SummaryBlockEvents={value}", $"--Kms:DataDir={dataDir}"]));
        Assert.StartsWith($"Kms:Audit:SummaryBlockEvents ({value}) must be at least 1000 and at most 100000", e.Message, StringComparison.Ordinal);
        Assert.False(Directory.Exists(dataDir));
    }

    [Theory]
    [InlineData("0")]
    [InlineData("-1")]
    public async Task Build_SummaryBlocksPerPassBelowOne_Refused_NamingTheOption(string value)
    {
        // 0 or less was taken as 1, silently.
        var dataDir = Scratch.NewPath("kms-never-");
        var e = await Assert.ThrowsAsync<InvalidOperationException>(() => KmsServerApp.BuildAsync(
            ["--dev", "--urls=https://127.0.0.1:0", $"--Kms:Audit:SummaryBlocksPerPass={value}", $"--Kms:DataDir={dataDir}"]));
        Assert.StartsWith($"Kms:Audit:SummaryBlocksPerPass ({value}) must be at least 1", e.Message, StringComparison.Ordinal);
        Assert.False(Directory.Exists(dataDir));
    }
}
