using System.Globalization;
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

    [Fact]
    public async Task List_ShowsTheKeyVersionsOfReEncryptAndBatchEvents_InTheTableAndInJson()
    {
        using var developer = fixture.Server.CreateClient();
        var source = await developer.CreateKeyAsync("tenants/dev", "cli-audit-source");
        var destination = await developer.CreateKeyAsync("tenants/dev", "cli-audit-destination");
        var other = await developer.CreateKeyAsync("tenants/dev", "cli-audit-other");
        var ciphertext = (await developer.EncryptAsync(source.Name, new byte[] { 1 })).Ciphertext;
        await developer.ReEncryptAsync(ciphertext, destination.Name);
        var batch = new Kms.Contracts.V1.BatchEncryptRequest();
        batch.Requests.Add(new Kms.Contracts.V1.EncryptRequest { Name = other.Name, Plaintext = Google.Protobuf.ByteString.CopyFrom(1) });
        batch.Requests.Add(new Kms.Contracts.V1.EncryptRequest { Name = source.Name, Plaintext = Google.Protobuf.ByteString.CopyFrom(2) });
        await developer.BatchEncryptAsync(batch);

        var officer = Path.Combine(_directory, "list-officer.token");
        await File.WriteAllTextAsync(officer, await fixture.Server.CreatePrincipalWithTokenAsync("audit-list-officer", null, "security-officer"));
        var variables = fixture.Variables;
        variables["KMS_TOKEN_FILE"] = officer;

        // Under the source key: its creation, the Encrypt, the ReEncrypt (its source) and the batch.
        var json = await CliRun.InProcessAsync(variables, _directory, null, "audit", "list", "--deployment", "--resource", source.Name, "-o", "json");
        Assert.True(json.ExitCode == 0, json.ToString());
        var events = System.Text.Json.JsonDocument.Parse(json.Out).RootElement.GetProperty("events").EnumerateArray().ToList();
        var reEncrypt = events.Single(e => e.GetProperty("operation").GetString()!.EndsWith("/ReEncrypt", StringComparison.Ordinal));
        Assert.Equal(destination.Name + "/versions/1", reEncrypt.GetProperty("resource").GetString());
        Assert.Equal([source.Name + "/versions/1"], reEncrypt.GetProperty("keyVersions").EnumerateArray().Select(v => v.GetString()));
        Assert.Equal("0", reEncrypt.GetProperty("otherKeyVersions").GetString());
        var batched = events.Single(e => e.GetProperty("operation").GetString()!.EndsWith("/BatchEncrypt", StringComparison.Ordinal));
        Assert.Equal([other.Name + "/versions/1", source.Name + "/versions/1"], batched.GetProperty("keyVersions").EnumerateArray().Select(v => v.GetString()));

        var table = await CliRun.InProcessAsync(variables, _directory, null, "audit", "list", "--deployment", "--resource", source.Name, "--operation", "BatchEncrypt");
        Assert.True(table.ExitCode == 0, table.ToString());
        Assert.Contains("key versions", table.Out, StringComparison.Ordinal);
        Assert.Contains("cli-audit-other/versions/1", table.Out, StringComparison.Ordinal);
        Assert.Contains("cli-audit-source/versions/1", table.Out, StringComparison.Ordinal);
    }

    [Fact]
    public async Task List_Newest_GivesTheLatestEventsNewestFirst_KeyTakesAShortName()
    {
        using var developer = fixture.Server.CreateClient();
        var key = await developer.CreateKeyAsync("tenants/dev", "cli-audit-newest");
        for (var i = 0; i < 3; i++)
        {
            await developer.EncryptAsync(key.Name, new byte[] { 1 });
        }

        var officer = Path.Combine(_directory, "newest-officer.token");
        await File.WriteAllTextAsync(officer, await fixture.Server.CreatePrincipalWithTokenAsync("audit-newest-officer", null, "security-officer"));
        var variables = fixture.Variables;
        variables["KMS_TOKEN_FILE"] = officer;

        async Task<long[]> SequencesAsync(params string[] args)
        {
            var result = await CliRun.InProcessAsync(variables, _directory, null, ["audit", "list", "--deployment", .. args, "-o", "json"]);
            Assert.True(result.ExitCode == 0, result.ToString());
            return [.. System.Text.Json.JsonDocument.Parse(result.Out).RootElement.GetProperty("events").EnumerateArray()
                .Select(e => long.Parse(e.GetProperty("sequence").GetString()!, CultureInfo.InvariantCulture))];
        }

        // The key's four events (CreateKey, three Encrypts), by its full name and oldest first; then
        // by its short name (KMS_TENANT's), the newest two, newest first.
        var all = await SequencesAsync("--resource", key.Name);
        Assert.Equal(4, all.Length);
        Assert.Equal(all, await SequencesAsync("--key", "cli-audit-newest"));
        Assert.Equal(all[..2], await SequencesAsync("--key", "dev/cli-audit-newest", "--limit", "2"));
        Assert.Equal([all[3], all[2]], await SequencesAsync("--key", "cli-audit-newest", "--newest", "--limit", "2"));

        var both = await CliRun.InProcessAsync(variables, _directory, null, "audit", "list", "--deployment", "--key", "cli-audit-newest", "--resource", key.Name);
        Assert.Equal(ExitCodes.Usage, both.ExitCode);
        Assert.Contains("--key or --resource", both.Error, StringComparison.Ordinal);
    }

    [Fact]
    public async Task List_ASparseFilter_PagesOnThroughEmptyPages_UntilLimitEvents()
    {
        // A server whose pages examine 10 sequence numbers each: the two events of a rare
        // operation (GetKeyAttestation among GetKeys) are windows apart, so pages in between come back empty with a token. --limit 2
        // means two events, not one page: the command pages on until it has them.
        await using var server = await KmsTestServer.StartAsync(null, null, "dev", KmsTestServer.AuditScanWindow(10));
        var written = await AppendAsync(server, 60, "filler", "token:busy", "GetKeyAttestation", 5, 45);
        var variables = DeveloperVariables(server);

        var result = await CliRun.InProcessAsync(variables, _directory, null, "audit", "list", "--operation", "GetKeyAttestation", "--limit", "2", "-o", "json");
        Assert.True(result.ExitCode == 0, result.ToString());
        var listed = System.Text.Json.JsonDocument.Parse(result.Out).RootElement.GetProperty("events").EnumerateArray()
            .Select(e => long.Parse(e.GetProperty("sequence").GetString()!, CultureInfo.InvariantCulture));
        Assert.Equal([written[5].Sequence, written[45].Sequence], listed);

        var newest = await CliRun.InProcessAsync(variables, _directory, null, "audit", "list", "--operation", "GetKeyAttestation", "--limit", "1", "--newest", "-o", "json");
        Assert.True(newest.ExitCode == 0, newest.ToString());
        Assert.Equal(written[45].Sequence, long.Parse(System.Text.Json.JsonDocument.Parse(newest.Out).RootElement.GetProperty("events")[0].GetProperty("sequence").GetString()!, CultureInfo.InvariantCulture));
    }

    [Fact]
    public async Task List_OperationInAnotherCase_UsageErrorNamingTheMethod_NotAnEmptyListing()
    {
        // The server matches an operation exactly, case included: `--operation createkey` listed
        // nothing, exit 0, as if no key had been created.
        using var developer = fixture.Server.CreateClient();
        await developer.CreateKeyAsync("tenants/dev", "cli-audit-operation-case");

        var exact = await CliRun.InProcessAsync(fixture.Variables, _directory, null, "audit", "list", "--operation", "CreateKey", "--newest", "--limit", "1", "-o", "json");
        Assert.True(exact.ExitCode == 0, exact.ToString());
        Assert.Single(System.Text.Json.JsonDocument.Parse(exact.Out).RootElement.GetProperty("events").EnumerateArray());

        var lower = await CliRun.InProcessAsync(fixture.Variables, _directory, null, "audit", "list", "--operation", "createkey", "--newest", "--limit", "1", "-o", "json");
        Assert.True(lower.ExitCode == ExitCodes.Usage, lower.ToString());
        Assert.Contains("did you mean CreateKey?", lower.Error, StringComparison.Ordinal);
        Assert.Equal("", lower.Out);
    }

    [Fact]
    public async Task List_OperationOrOutcomeNoEventCanHave_UsageErrorNamingCloseMatches_NotAnEmptyListing()
    {
        // A typo in --operation or --outcome listed nothing, exit 0: to an auditor, nobody had
        // made the call, or none had been refused.
        using var developer = fixture.Server.CreateClient();
        await developer.CreateKeyAsync("tenants/dev", "cli-audit-operation-typo");

        var typo = await CliRun.InProcessAsync(fixture.Variables, _directory, null, "audit", "list", "--operation", "CreateKye", "--newest", "--limit", "1", "-o", "json");
        Assert.True(typo.ExitCode == ExitCodes.Usage, typo.ToString());
        Assert.Contains("did you mean CreateKey?", typo.Error, StringComparison.Ordinal);
        Assert.Equal("", typo.Out);

        var none = await CliRun.InProcessAsync(fixture.Variables, _directory, null, "audit", "list", "--operation", "NoSuchOp", "-o", "json");
        Assert.True(none.ExitCode == ExitCodes.Usage, none.ToString());
        Assert.Contains("--operation NoSuchOp would match no event: no operation is called that", none.Error, StringComparison.Ordinal);

        var outcome = await CliRun.InProcessAsync(fixture.Variables, _directory, null, "audit", "list", "--operation", "CreateKey", "--outcome", "ok", "-o", "json");
        Assert.True(outcome.ExitCode == ExitCodes.Usage, outcome.ToString());
        Assert.Contains("did you mean OK?", outcome.Error, StringComparison.Ordinal);

        var exact = await CliRun.InProcessAsync(fixture.Variables, _directory, null, "audit", "list", "--operation", "CreateKey", "--outcome", "OK", "--newest", "--limit", "1", "-o", "json");
        Assert.True(exact.ExitCode == 0, exact.ToString());
        Assert.Single(System.Text.Json.JsonDocument.Parse(exact.Out).RootElement.GetProperty("events").EnumerateArray());
    }

    [Fact]
    public async Task List_OperationThisKmsDoesNotKnow_RefusedNamingAnyOperation_ANearMissAlsoWithItsCloseMatch()
    {
        // An older kms against a newer server (a new or renamed method) could not list that
        // operation at all: the refusal had no way through. It names --any-operation now.
        var nearMiss = await CliRun.InProcessAsync(fixture.Variables, _directory, null, "audit", "list", "--operation", "CreateKye", "-o", "json");
        Assert.True(nearMiss.ExitCode == ExitCodes.Usage, nearMiss.ToString());
        Assert.Contains("did you mean CreateKey?", nearMiss.Error, StringComparison.Ordinal);
        Assert.Contains("--any-operation sends it unchecked", nearMiss.Error, StringComparison.Ordinal);
        Assert.Equal("", nearMiss.Out);

        var unknown = await CliRun.InProcessAsync(fixture.Variables, _directory, null, "audit", "list", "--operation", "RotateEverything", "-o", "json");
        Assert.True(unknown.ExitCode == ExitCodes.Usage, unknown.ToString());
        Assert.Contains("--operation RotateEverything would match no event: no operation is called that", unknown.Error, StringComparison.Ordinal);
        Assert.Contains("for an operation of a server newer than this kms, --any-operation sends it unchecked", unknown.Error, StringComparison.Ordinal);
        Assert.Equal("", unknown.Out);

        var alone = await CliRun.InProcessAsync(fixture.Variables, _directory, null, "audit", "list", "--any-operation", "-o", "json");
        Assert.True(alone.ExitCode == ExitCodes.Usage, alone.ToString());
        Assert.Contains("give --operation too", alone.Error, StringComparison.Ordinal);
    }

    [Fact]
    public async Task List_AnyOperation_SendsTheNameUnchecked_TheServersFilterMatchesIt()
    {
        // Events of a method this kms does not know, as a newer server would write them, among
        // known ones: --any-operation lists them by last part or full name; a name in another
        // case goes through unchecked too, and the server, matching exactly, lists nothing.
        await using var server = await KmsTestServer.StartAsync(null, null, "dev");
        var written = await AppendAsync(server, 6, "newer", "token:newer", "RotateEverything", 1, 4);
        var variables = DeveloperVariables(server);

        async Task<long[]> ListedAsync(string operation)
        {
            var result = await CliRun.InProcessAsync(variables, _directory, null, "audit", "list", "--operation", operation, "--any-operation", "-o", "json");
            Assert.True(result.ExitCode == 0, result.ToString());
            return [.. System.Text.Json.JsonDocument.Parse(result.Out).RootElement.GetProperty("events").EnumerateArray()
                .Select(e => long.Parse(e.GetProperty("sequence").GetString()!, CultureInfo.InvariantCulture))];
        }

        Assert.Equal([written[1].Sequence, written[4].Sequence], await ListedAsync("RotateEverything"));
        Assert.Equal([written[1].Sequence, written[4].Sequence], await ListedAsync("/kms.v1.KeyManagementService/RotateEverything"));
        Assert.Empty(await ListedAsync("rotateeverything"));
    }

    [Fact]
    public async Task List_KeyGivenAnAlias_UsageError_NotTheAliassOwnEventsAsTheKeys()
    {
        // Other commands take an alias's full name for its key; the audit records a crypto call
        // through an alias under the key version it resolved to, so the alias's name would list
        // the alias's own events only (here CreateAlias), not the Encrypt made through it.
        using var developer = fixture.Server.CreateClient();
        var key = await developer.CreateKeyAsync("tenants/dev", "cli-audit-aliased");
        await developer.CreateAliasAsync("tenants/dev", "cli-audit-alias", key.Name);
        await developer.EncryptAsync("tenants/dev/aliases/cli-audit-alias", new byte[] { 1 });

        var officer = Path.Combine(_directory, "alias-officer.token");
        await File.WriteAllTextAsync(officer, await fixture.Server.CreatePrincipalWithTokenAsync("audit-alias-officer", null, "security-officer"));
        var variables = fixture.Variables;
        variables["KMS_TOKEN_FILE"] = officer;

        var aliased = await CliRun.InProcessAsync(variables, _directory, null, "audit", "list", "--deployment", "--key", "tenants/dev/aliases/cli-audit-alias", "-o", "json");
        Assert.True(aliased.ExitCode == ExitCodes.Usage, aliased.ToString());
        Assert.Contains("--key takes a key, not an alias", aliased.Error, StringComparison.Ordinal);
        Assert.Contains("--resource tenants/dev/aliases/cli-audit-alias", aliased.Error, StringComparison.Ordinal);

        // The key's own name finds the Encrypt made through the alias.
        var byKey = await CliRun.InProcessAsync(variables, _directory, null, "audit", "list", "--deployment", "--key", "dev/cli-audit-aliased", "--operation", "Encrypt", "-o", "json");
        Assert.True(byKey.ExitCode == 0, byKey.ToString());
        Assert.Single(System.Text.Json.JsonDocument.Parse(byKey.Out).RootElement.GetProperty("events").EnumerateArray());
    }

    [Fact]
    public void KeyVersions_ListedOneALine_TheUnlistedCounted() =>
        Assert.Equal("tenants/t/keys/k/versions/1\ntenants/t/keys/k/versions/2\n(+3 more)", Kms.Cli.Commands.AuditCommands.KeyVersions(
            new Kms.Contracts.V1.AuditEventInfo { KeyVersions = { "tenants/t/keys/k/versions/1", "tenants/t/keys/k/versions/2" }, OtherKeyVersions = 3 }));

    // Appends count GetKey events of the dev tenant, one a second from the epoch, but for those at
    // the positions given, which are of the KeyManagementService method named rare.
    private static Task<IReadOnlyList<Kms.Core.Audit.AuditEvent>> AppendAsync(KmsTestServer server, int count, string requestIdPrefix, string principal, string rare, params int[] rareAt) =>
        ((Kms.Core.Ports.IAuditStore)server.Services.GetService(typeof(Kms.Core.Ports.IAuditStore))!).AppendAuditAsync(
            [.. Enumerable.Range(0, count).Select(i => new Kms.Core.Audit.AuditEntry
            {
                Time = DateTimeOffset.UnixEpoch.AddSeconds(i),
                RequestId = $"{requestIdPrefix}-{i}",
                Principal = principal,
                Tenant = "dev",
                Operation = "/kms.v1.KeyManagementService/" + (rareAt.Contains(i) ? rare : "GetKey"),
                Outcome = "OK",
            })],
            default);

    // The CLI's environment for the server's developer token in the dev tenant.
    private static Dictionary<string, string> DeveloperVariables(KmsTestServer server) => new()
    {
        ["KMS_ENDPOINT"] = server.Address.ToString(),
        ["KMS_CA_FILE"] = server.CaCertificatePath,
        ["KMS_TOKEN_FILE"] = Path.Combine(server.DataDir, "tokens", "developer.token"),
        ["KMS_TENANT"] = "dev",
    };

    private Task<CliResult> VerifyAsync(params string[] args) => CliRun.InProcessAsync(new Dictionary<string, string>(), _directory, null, ["audit", "verify", .. args]);
}
