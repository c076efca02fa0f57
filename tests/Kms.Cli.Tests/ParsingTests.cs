using System.CommandLine;
using System.Text.Json;
using Kms.Cli.Infrastructure;

namespace Kms.Cli.Tests;

/// <summary>The command line, in-process: usage errors, help, config show, no inline secrets.</summary>
public sealed class ParsingTests : IDisposable
{
    private readonly string _home = CliServerFixture.NewDirectory();
    private readonly Dictionary<string, string> _variables = [];

    public void Dispose() => Directory.Delete(_home, recursive: true);

    [Fact]
    public async Task Help_ListsTheCommandGroups()
    {
        var result = await RunAsync("--help");

        Assert.Equal(ExitCodes.Ok, result.ExitCode);
        foreach (var command in new[] { "keys", "aliases", "encrypt", "decrypt", "datakey", "rewrap", "config" })
        {
            Assert.Contains(command, result.Out, StringComparison.Ordinal);
        }
    }

    [Fact]
    public void Build_EveryCommandHasADescription()
    {
        var root = Root();

        var all = root.Subcommands.SelectMany(c => c.Subcommands.Prepend(c)).ToList();
        Assert.All(all, c => Assert.False(string.IsNullOrWhiteSpace(c.Description), c.Name));
        Assert.Equal(all.Count, all.Select(c => (c.Parents.First() as System.CommandLine.Command)?.Name + " " + c.Name).Distinct().Count());
    }

    [Theory]
    [InlineData]
    [InlineData("keys")]
    [InlineData("keys", "get")]
    [InlineData("keys", "list", "--no-such-flag")]
    [InlineData("keys", "list", "--output", "xml")]
    [InlineData("encrypt", "--in", "a", "--out", "b")]
    [InlineData("encrypt", "--key", "k", "--in", "a", "--out", "b", "--context", "no-equals-sign")]
    [InlineData("encrypt", "--key", "k", "--in", "a", "--out", "b", "--context", "a=1", "--context", "a=2")]
    [InlineData("encrypt", "--key", "dev/k", "--in", "a", "--out", "b", "--context")]
    [InlineData("keys", "create", "dev/k", "--label")]
    [InlineData("keys", "create", "dev/k", "--rotation-period", "soon")]
    [InlineData("encrypt", "--key", "dev/k", "--in", "a", "--out", "b", "--signed=maybe")]
    [InlineData("encrypt", "--key", "dev/k", "--in", "a", "--out", "b", "--require-signed")]
    [InlineData("decrypt", "--any-key", "--in", "a", "--out", "b", "--signed")]
    [InlineData("decrypt", "--any-key", "--in", "a", "--out", "b", "--require-signed=sometimes")]
    public async Task Run_BadCommandLine_IsUsageError(params string[] args)
    {
        var result = await RunAsync(args);

        Assert.Equal(ExitCodes.Usage, result.ExitCode);
        Assert.Equal("", result.Out);
        Assert.StartsWith("kms: ", result.Error, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData("reencrypt", "did you mean ReEncrypt?")]
    [InlineData("BATCHREENCRYPT", "did you mean BatchReEncrypt?")]
    [InlineData("/kms.v1.keymanagementservice/decrypt", "did you mean /kms.v1.KeyManagementService/Decrypt?")]
    [InlineData("createapitoken", "did you mean CreateApiToken?")]
    [InlineData("Decrpyt", "did you mean Decrypt?")]
    [InlineData("GenerateDataKy", "did you mean GenerateDataKey?")]
    [InlineData("lifecycle/Destructoin", "did you mean lifecycle/Destruction?")]
    [InlineData("export_backup", "did you mean EXPORT_BACKUP?")]
    [InlineData("NoSuchOp", "no operation is called that (an operation is a kms.v1 method")]
    [InlineData("KeyManagementService/Decrypt", "no operation is called that")] // the server matches after a '/' only
    public void AuditList_OperationNoEventCanHave_NamesTheCloseMatches(string operation, string told) =>
        Assert.Contains(told, Kms.Cli.Commands.AuditFilterValues.OperationProblem(operation), StringComparison.Ordinal);

    [Theory]
    [InlineData("")]
    [InlineData("ReEncrypt")]
    [InlineData("/kms.v1.KeyManagementService/Decrypt")]
    [InlineData("kms.v1.KeyManagementService/Decrypt")]
    [InlineData("lifecycle/Destruction")]
    [InlineData("Destruction")]
    [InlineData("DESTROY_KEY_VERSION_NOW")]
    [InlineData("quorum/EXPORT_BACKUP")]
    [InlineData("ceremony/rotate-domain/share")]
    [InlineData("backup/Restore")]
    [InlineData("Retention")]
    [InlineData("*")]
    public void AuditList_OperationAnEventCanHave_IsPassedOn(string operation) =>
        Assert.Null(Kms.Cli.Commands.AuditFilterValues.OperationProblem(operation));

    [Fact]
    public void AuditList_EveryOperationTheSourcesWrite_IsOneTheCliPassesOn()
    {
        // The CLI refuses an operation it does not know: one the server or a ceremony starts to
        // write without its name added to AuditFilterValues could never be listed by name. The
        // server's own operations are string literals "family/Name" in src/.
        var own = new System.Text.RegularExpressions.Regex("\"((?:lifecycle|backup|ceremony|audit|quorum)/[A-Za-z][A-Za-z-]*(?:/[a-z]+)?)\"");
        var written = Directory.EnumerateFiles(Kms.Testing.RepositoryPaths.Of("src"), "*.cs", SearchOption.AllDirectories)
            .Where(f => !f.Contains($"{Path.DirectorySeparatorChar}obj{Path.DirectorySeparatorChar}", StringComparison.Ordinal) && Path.GetFileName(f) != "AuditFilterValues.cs")
            .SelectMany(f => own.Matches(File.ReadAllText(f)).Select(m => m.Groups[1].Value))
            .Distinct(StringComparer.Ordinal)
            .ToList();
        Assert.True(written.Count >= 15, $"only {written.Count} operations found in src/: {string.Join(", ", written)}");
        var refused = written.Where(o => Kms.Cli.Commands.AuditFilterValues.OperationProblem(o) is not null).ToList();
        Assert.True(refused.Count == 0, "written by the sources, refused by kms audit list --operation: " + string.Join(", ", refused));
    }

    [Fact]
    public void AuditList_EveryAuditedMethodOfTheServer_IsOneTheCliPassesOn()
    {
        // Every gRPC method the server maps with a rule that is not public is audited under its
        // full name (AuditInterceptor), the reflection service's too: each, whole and by its last
        // part, must be a value kms audit list --operation passes on.
        var rules = File.ReadAllText(Path.Combine(Kms.Testing.RepositoryPaths.Of("src"), "Kms.Server", "Security", "AccessRules.cs"));
        var audited = new System.Text.RegularExpressions.Regex("\\[\"(/[A-Za-z0-9_.]+/[A-Za-z0-9_]+)\"\\] = new AccessRule\\(CallScope\\.(?!Public)")
            .Matches(rules).Select(m => m.Groups[1].Value).ToList();
        Assert.Contains("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo", audited);
        var refused = audited.SelectMany(m => new[] { m, m[(m.LastIndexOf('/') + 1)..] })
            .Where(o => Kms.Cli.Commands.AuditFilterValues.OperationProblem(o) is not null).ToList();
        Assert.True(refused.Count == 0, "audited by the server, refused by kms audit list --operation: " + string.Join(", ", refused));
    }

    [Theory]
    [InlineData("permission_denied", "case included; did you mean PERMISSION_DENIED?")]
    [InlineData("PermissionDenied", "case included; did you mean PERMISSION_DENIED?")]
    [InlineData("ok", "case included; did you mean OK?")]
    [InlineData("UNAVAILABE", "did you mean UNAVAILABLE?")]
    [InlineData("DENIED", "no outcome is called that (an outcome is the gRPC status name the caller got: OK, CANCELLED")]
    public void AuditList_OutcomeNoEventCanHave_NamesTheCloseMatches(string outcome, string told) =>
        Assert.Contains(told, Kms.Cli.Commands.AuditFilterValues.OutcomeProblem(outcome), StringComparison.Ordinal);

    [Theory]
    [InlineData("")]
    [InlineData("OK")]
    [InlineData("PERMISSION_DENIED")]
    [InlineData("STARTED")]
    public void AuditList_OutcomeAnEventCanHave_IsPassedOn(string outcome) =>
        Assert.Null(Kms.Cli.Commands.AuditFilterValues.OutcomeProblem(outcome));

    [Theory]
    [InlineData("keys", "list", "--token", "kms_tok_s3cretvalue")]
    [InlineData("keys", "list", "--token=kms_tok_s3cretvalue")]
    [InlineData("keys", "create", "x", "--pin", "kms_tok_s3cretvalue")]
    [InlineData("--password", "kms_tok_s3cretvalue", "config", "show")]
    [InlineData("ceremony", "init-token", "--token-label", "x", "--so-pin", "s3cretvalue")]
    [InlineData("ceremony", "rotate-domain", "--restore-pin=s3cretvalue")]
    [InlineData("officer", "keygen", "--key-passphrase", "hunter2-s3cretvalue")]
    [InlineData("keys", "list", "--api-token", "kms_tok_s3cretvalue")]
    [InlineData("ceremony", "create-domain", "--so-pin:s3cretvalue")]
    [InlineData("config", "show", "--pin:s3cretvalue")]
    public async Task Run_InlineSecretFlag_IsRefusedWithoutRepeatingTheValue(params string[] args)
    {
        var result = await RunAsync(args);

        Assert.Equal(ExitCodes.Usage, result.ExitCode);
        Assert.Contains("is not an option", result.Error, StringComparison.Ordinal);
        Assert.DoesNotContain("s3cretvalue", result.Error + result.Out, StringComparison.Ordinal);
    }

    [Fact]
    public async Task AnErrorNamingOutsideText_PrintsItsControlAndBidiCharactersEscaped()
    {
        // A file name (or a share file's field) holding an escape sequence that would clear the
        // screen, and a right-to-left override that would turn the rest of the line around.
        var result = await RunAsync("audit", "verify", "/nonexistent/\u001b[2J\u202Eyalp", "--public-key", "/nonexistent/\u001b[8mkey.pem");

        Assert.NotEqual(0, result.ExitCode);
        Assert.DoesNotContain('\u001b', result.Error);
        Assert.DoesNotContain('\u202E', result.Error);
        Assert.Contains("\\u001B", result.Error, StringComparison.Ordinal);
    }

    [Fact]
    public async Task CreateDomain_CustodianNameWithABidiOverride_UsageError_NothingGenerated_TheNameShownEscaped()
    {
        // "alice\u202Eecila" shows as "alicealice": a second alice in the transcript. Refused
        // before the token, the officers or any directory is touched.
        var shares = Path.Combine(_home, "shares");
        var data = Path.Combine(_home, "data");
        var result = await RunAsync("ceremony", "create-domain", "--token-label", "none", "--custodian", "alice", "--custodian", "alice\u202Eecila",
            "--threshold", "2", "--shares-dir", shares, "--data-dir", data, "--officer", "olga=/nonexistent/olga.pub", "--officer-threshold", "1");

        Assert.Equal(ExitCodes.Usage, result.ExitCode);
        Assert.Contains("--custodian: the custodian name must not contain U+202E (a format character: bidirectional, zero-width or invisible): 'alice\\u202Eecila'", result.Error, StringComparison.Ordinal);
        Assert.DoesNotContain('\u202E', result.Error + result.Out);
        Assert.False(Directory.Exists(shares) || Directory.Exists(data));
    }

    [Fact]
    public async Task CreateDomain_OfficerNameWithATrailingSpaceOrTwoInARow_UsageError_NothingGenerated()
    {
        // "olga " and "o  lga" read as "olga" and "o lga" in the text officers sign. Refused before
        // the token or any directory is touched.
        var shares = Path.Combine(_home, "shares");
        var data = Path.Combine(_home, "data");
        using (var key = System.Security.Cryptography.ECDsa.Create(System.Security.Cryptography.ECCurve.NamedCurves.nistP256))
        {
            await File.WriteAllTextAsync(Path.Combine(_home, "olga.pub"), key.ExportSubjectPublicKeyInfoPem());
        }

        using (var key = System.Security.Cryptography.ECDsa.Create(System.Security.Cryptography.ECCurve.NamedCurves.nistP256))
        {
            await File.WriteAllTextAsync(Path.Combine(_home, "bob.pub"), key.ExportSubjectPublicKeyInfoPem());
        }

        foreach (var (name, reads) in new[] { ("olga ", "olga"), ("o  lga", "o lga") })
        {
            var result = await RunAsync("ceremony", "create-domain", "--token-label", "none", "--custodian", "alice", "--custodian", "carol",
                "--threshold", "2", "--shares-dir", shares, "--data-dir", data,
                "--officer", $"{name}={Path.Combine(_home, "olga.pub")}", "--officer", $"bob={Path.Combine(_home, "bob.pub")}", "--officer-threshold", "1");

            Assert.True(result.ExitCode == ExitCodes.Usage, result.ToString());
            Assert.Contains($"the officer name \"{name}\" has a space at its start or end, or two in a row: it would read as \"{reads}\"", result.Error, StringComparison.Ordinal);
            Assert.False(Directory.Exists(shares) || Directory.Exists(data));
        }
    }

    [Fact]
    public void Result_TablesAndLinesOfTextFromOutside_EscapedAsTerminalText()
    {
        // A name from a server or a share file (a principal's common name, a custodian from an
        // older share file) in a table cell or a result line: shown escaped, not turned around
        // or hidden. JSON output is data, written as JSON escapes it.
        string Render(Action<CliOutput> write)
        {
            var output = new StringWriter();
            write(new CliOutput(new CliEnvironment
            {
                Out = output,
                Error = TextWriter.Null,
                OpenStandardInput = () => Stream.Null,
                OpenStandardOutput = () => Stream.Null,
                GetVariable = _ => null,
                HomeDirectory = _home,
            }, OutputFormat.Table));
            return output.ToString();
        }

        var table = Render(o => o.Result(new System.Text.Json.Nodes.JsonObject(), () => CliOutput.Properties([("custodian", "alice\u202Eecila"), ("by", "cn:x\u001b[2J"), ("tagged", "cn:ops\U000E0041\U000E0042 \U0001F511")])));
        var line = Render(o => o.Result(new System.Text.Json.Nodes.JsonObject(), "deleted al\u200Bias\u2028forged"));

        Assert.Contains("alice\\u202Eecila", table, StringComparison.Ordinal);
        Assert.Contains("cn:x\\u001B[2J", table, StringComparison.Ordinal);
        Assert.Contains("cn:ops\\U000E0041\\U000E0042 \U0001F511", table, StringComparison.Ordinal);
        Assert.Equal("deleted al\\u200Bias\\u2028forged" + Environment.NewLine, line);
        Assert.DoesNotContain(table + line, c => c is '\u202E' or '\u001b' or '\u200B' or '\u2028');
    }

    [Theory]
    [InlineData("a\u001b[2Jb", "a\\u001B[2Jb")]
    [InlineData("name\u2028forged: line", "name\\u2028forged: line")]
    [InlineData("ali\u200Bce", "ali\\u200Bce")]
    [InlineData("line one\nline two\tend", "line one\nline two\tend")]
    [InlineData("rewrite\rover", "rewrite\\u000Dover")]
    [InlineData("می\u200Cخواهم", "می\u200Cخواهم")] // a zero-width non-joiner in a Persian word is kept
    public void TerminalText_EscapesWhatCouldForgeOrHideALine(string text, string printed) =>
        Assert.Equal(printed, TerminalText.Of(text));

    [Theory]
    [InlineData("ceremony", "init-token", "--token-label", "x", "--so-pinn", "s3cretvalue")]
    [InlineData("keys", "list", "--tokn", "kms_tok_s3cretvalue")]
    [InlineData("keys", "get", "--so-pinn=s3cretvalue")]
    [InlineData("ceremony", "create-domain", "--so-pinn:s3cretvalue")]
    [InlineData("config", "show", "--tokn=kms_tok_s3cretvalue")]
    public async Task Run_MistypedFlag_ItsValueNotRepeated(params string[] args)
    {
        var result = await RunAsync(args);

        Assert.Equal(ExitCodes.Usage, result.ExitCode);
        Assert.Contains(KmsCli.OptionName(args.Last(a => a.StartsWith("--", StringComparison.Ordinal))), result.Error, StringComparison.Ordinal);
        Assert.DoesNotContain("s3cretvalue", result.Error + result.Out, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData("encrypt", "--signed", "--key", "dev/k", "--in", "a", "--out", "b", "--signed", "--force")]
    [InlineData("encrypt", "--signed=false", "--key", "dev/k", "--in", "a", "--out", "b")]
    [InlineData("decrypt", "--require-signed", "--key", "dev/k", "--in", "a", "--out", "b")]
    [InlineData("decrypt", "--any-key", "--require-signed", "--in", "a", "--out", "b", "--context", "a=1")]
    public void SignedFlags_ParseOnTheirVerbs(params string[] args)
    {
        var root = Root();

        var parsed = root.Parse(args);

        Assert.Empty(parsed.Errors.Select(e => e.Message));
    }

    [Fact]
    public async Task Decrypt_RequireSignedWithoutTrustedKeys_IsStillUsageError()
    {
        var result = await RunAsync("decrypt", "--require-signed", "--in", "a", "--out", "b");

        Assert.Equal(ExitCodes.Usage, result.ExitCode);
        Assert.Contains("--any-key", result.Error, StringComparison.Ordinal);
    }

    [Fact]
    public async Task EncryptAndDecryptHelp_NameTheSignedFlags()
    {
        var encrypt = await RunAsync("encrypt", "--help");
        var decrypt = await RunAsync("decrypt", "--help");

        Assert.Equal(ExitCodes.Ok, encrypt.ExitCode);
        Assert.Contains("--signed", encrypt.Out, StringComparison.Ordinal);
        Assert.Contains("suite 0x0002", encrypt.Out, StringComparison.Ordinal);
        Assert.DoesNotContain("--require-signed", encrypt.Out, StringComparison.Ordinal);
        Assert.Equal(ExitCodes.Ok, decrypt.ExitCode);
        Assert.Contains("--require-signed", decrypt.Out, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Decrypt_WithoutTrustedKeys_IsUsageError()
    {
        var result = await RunAsync("decrypt", "--in", "a", "--out", "b");

        Assert.Equal(ExitCodes.Usage, result.ExitCode);
        Assert.Contains("--any-key", result.Error, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Decrypt_AliasAsTrustedKey_IsUsageError()
    {
        // An alias confers no trust (whoever may update it could point it at a key of theirs),
        // and the file names the key anyway: said up front, not as an untrusted-key failure.
        var result = await RunAsync("decrypt", "--key", "tenants/dev/aliases/current", "--in", "a", "--out", "b");

        Assert.Equal(ExitCodes.Usage, result.ExitCode);
        Assert.Contains("not aliases", result.Error, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Keys_ShortNameWithoutTenant_IsUsageErrorBeforeAnyCall()
    {
        var result = await RunAsync("keys", "get", "orders");

        Assert.Equal(ExitCodes.Usage, result.ExitCode);
        Assert.Contains("needs a tenant", result.Error, StringComparison.Ordinal);
    }

    [Fact]
    public async Task ConfigShow_Json_ShowsEachSettingWithItsSourceAndNoSecret()
    {
        var tokenFile = Path.Combine(_home, "dev.token");
        await File.WriteAllTextAsync(tokenFile, "kms_tok_s3cretvalue\n");
        _variables["KMS_ENDPOINT"] = "https://a:1,https://b:2";
        _variables["KMS_TOKEN_FILE"] = tokenFile;

        var result = await RunAsync("config", "show", "--tenant", "acme", "-o", "json");

        Assert.Equal(ExitCodes.Ok, result.ExitCode);
        using var json = JsonDocument.Parse(result.Out);
        var root = json.RootElement;
        Assert.Equal(["https://a:1/", "https://b:2/"], root.GetProperty("endpoints").GetProperty("value").EnumerateArray().Select(e => e.GetString()));
        Assert.Equal("env KMS_ENDPOINT", root.GetProperty("endpoints").GetProperty("source").GetString());
        Assert.Equal(tokenFile, root.GetProperty("tokenFile").GetProperty("value").GetString());
        Assert.Equal("acme", root.GetProperty("tenant").GetProperty("value").GetString());
        Assert.Equal("flag --tenant", root.GetProperty("tenant").GetProperty("source").GetString());
        Assert.DoesNotContain("s3cretvalue", result.Out + result.Error, StringComparison.Ordinal);
    }

    [Fact]
    public async Task ConfigShow_MissingProfile_IsUsageError()
    {
        var result = await RunAsync("config", "show", "--profile", "prod");

        Assert.Equal(ExitCodes.Usage, result.ExitCode);
        Assert.Contains("prod", result.Error, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Keys_TokenFileMissing_IsUsageErrorNamingIt()
    {
        _variables["KMS_TOKEN_FILE"] = Path.Combine(_home, "missing.token");

        var result = await RunAsync("keys", "list", "--tenant", "dev");

        Assert.Equal(ExitCodes.Usage, result.ExitCode);
        Assert.Contains("missing.token", result.Error, StringComparison.Ordinal);
        Assert.Contains("KMS_TOKEN_FILE", result.Error, StringComparison.Ordinal);
    }

    [Fact]
    public void InlineSecretFlag_AfterDoubleDash_IsAnArgument() =>
        Assert.Null(KmsCli.InlineSecretFlag(["encrypt", "--", "--token"]));

    private Task<CliResult> RunAsync(params string[] args) => CliRun.InProcessAsync(_variables, _home, null, args);

    // The command tree, parsed only: nothing is read or written.
    private RootCommand Root() => KmsCli.Build(new CliEnvironment
    {
        Out = TextWriter.Null,
        Error = TextWriter.Null,
        OpenStandardInput = () => Stream.Null,
        OpenStandardOutput = () => Stream.Null,
        GetVariable = _ => null,
        HomeDirectory = _home,
    });
}
