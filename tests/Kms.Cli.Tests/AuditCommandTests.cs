using Kms.Cli.Infrastructure;
using Kms.Testing;

namespace Kms.Cli.Tests;

/// <summary>
/// <c>kms audit export</c> from a real server (a security officer), and <c>kms audit verify</c>
/// offline against the published audit key: an intact export verifies, an edited one names the
/// first bad sequence (exit 7), an export that ends before a known checkpoint is truncated, and one
/// whose last line is torn verifies up to it and says so (exit 10).
/// </summary>
public sealed class AuditCommandTests(CliServerFixture fixture) : IClassFixture<CliServerFixture>, IDisposable
{
    private readonly string _directory = CliServerFixture.NewDirectory();

    public void Dispose() => Directory.Delete(_directory, recursive: true);

    [Fact]
    public async Task Export_ThenVerify_IntactEditedAndTruncated()
    {
        var officer = Path.Combine(_directory, "officer.token");
        await File.WriteAllTextAsync(officer, await fixture.Server.CreatePrincipalWithTokenAsync("audit-cli-officer", null, "security-officer"));
        var variables = fixture.Variables;
        variables["KMS_TOKEN_FILE"] = officer;
        var export = Path.Combine(_directory, "audit.jsonl");
        var exported = await CliRun.InProcessAsync(variables, _directory, null, "audit", "export", "--out", export);
        Assert.True(exported.ExitCode == 0, exported.ToString());
        var key = Path.Combine(fixture.Server.DataDir, "audit", "signing-key.pem");

        var verified = await VerifyAsync(export, "--public-key", key);
        Assert.True(verified.ExitCode == 0, verified.ToString());
        Assert.Contains("verified: ", verified.Out, StringComparison.Ordinal);

        // An existing export is not replaced without --force; to standard output, the export alone.
        Assert.Equal(ExitCodes.Usage, (await CliRun.InProcessAsync(variables, _directory, null, "audit", "export", "--out", export)).ExitCode);
        var piped = await CliRun.InProcessAsync(variables, _directory, null, "audit", "export", "--out", "-");
        Assert.True(piped.ExitCode == 0, piped.ToString());
        Assert.All(System.Text.Encoding.UTF8.GetString(Convert.FromBase64String(piped.Out)).Split('\n', StringSplitOptions.RemoveEmptyEntries), line => System.Text.Json.JsonDocument.Parse(line).Dispose());

        // A copy taken while the next line was being appended (a SIEM stream file): everything
        // before the torn line verifies, and the command says it stopped short, with its own exit
        // code; never "verified".
        var copied = Path.Combine(_directory, "copied-mid-append.jsonl");
        const string Torn = "{\"event\":{\"v\":1,\"seq\"";
        await File.WriteAllTextAsync(copied, await File.ReadAllTextAsync(export) + Torn);
        var torn = await VerifyAsync(copied, "--public-key", key);
        Assert.True(torn.ExitCode == ExitCodes.TornTail, torn.ToString());
        Assert.Contains($"NOT VERIFIED TO ITS END: its last line is torn ({Torn.Length} characters without a line end) and was not read; everything before it verified, up to event ", torn.Out, StringComparison.Ordinal);
        Assert.DoesNotContain("verified: ", torn.Out, StringComparison.Ordinal);

        // An event edited in place (its stated hash kept): named by its sequence.
        var lines = await File.ReadAllLinesAsync(export);
        var index = Array.FindIndex(lines, l => l.StartsWith("{\"event\":", StringComparison.Ordinal) && l.Contains("\"outcome\":\"OK\"", StringComparison.Ordinal));
        var sequence = System.Text.Json.JsonDocument.Parse(lines[index]).RootElement.GetProperty("event").GetProperty("seq").GetInt64();
        var edited = Path.Combine(_directory, "edited.jsonl");
        await File.WriteAllLinesAsync(edited, lines.Select((l, i) => i == index ? l.Replace("\"outcome\":\"OK\"", "\"outcome\":\"PERMISSION_DENIED\"", StringComparison.Ordinal) : l));
        var refused = await VerifyAsync(edited, "--public-key", key);
        Assert.True(refused.ExitCode == ExitCodes.DecryptionFailed, refused.ToString());
        Assert.Contains($"first bad sequence {sequence}: event {sequence} does not match its hash", refused.Error, StringComparison.Ordinal);

        // A checkpoint known from outside, past the export's end: its tail was cut.
        var truncated = await VerifyAsync(export, "--public-key", key, "--known-checkpoint", "999999:" + new string('a', 64));
        Assert.True(truncated.ExitCode == ExitCodes.DecryptionFailed, truncated.ToString());
        Assert.Contains("removed from the tail", truncated.Error, StringComparison.Ordinal);

        // Its checkpoint lines removed, an export still chains: refused as vouched for by nothing,
        // accepted only when asked, and then said so.
        var stripped = Path.Combine(_directory, "stripped.jsonl");
        await File.WriteAllLinesAsync(stripped, lines.Where(l => !l.StartsWith("{\"checkpoint\":", StringComparison.Ordinal)));
        var unsigned = await VerifyAsync(stripped, "--public-key", key);
        Assert.True(unsigned.ExitCode == ExitCodes.DecryptionFailed, unsigned.ToString());
        Assert.Contains("no checkpoint signed by this key vouches for any of its", unsigned.Error, StringComparison.Ordinal);
        var allowed = await VerifyAsync(stripped, "--public-key", key, "--allow-unsigned");
        Assert.True(allowed.ExitCode == 0, allowed.ToString());
        Assert.Contains("NOTHING SIGNED", allowed.Out, StringComparison.Ordinal);

        Assert.Equal(ExitCodes.Usage, (await VerifyAsync(export, "--public-key", key, "--known-checkpoint", "12")).ExitCode);
        Assert.Equal(ExitCodes.Usage, (await VerifyAsync(export, "--public-key", key, "--known-checkpoint", "12:" + new string('g', 64))).ExitCode);
    }

    private Task<CliResult> VerifyAsync(params string[] args) => CliRun.InProcessAsync(new Dictionary<string, string>(), _directory, null, ["audit", "verify", .. args]);
}
