using Kms.Cli.Infrastructure;

namespace Kms.Cli.Tests;

/// <summary>Configuration precedence: flags &gt; environment &gt; profile file &gt; defaults.</summary>
public sealed class SettingsResolverTests : IDisposable
{
    private readonly string _home = CliServerFixture.NewDirectory();
    private readonly Dictionary<string, string> _variables = [];

    public void Dispose() => Directory.Delete(_home, recursive: true);

    [Fact]
    public void Resolve_NothingConfigured_UsesDefaults()
    {
        var settings = Resolve(new CliFlags());

        Assert.Equal([new Uri("https://127.0.0.1:8443")], settings.Endpoints.Value);
        Assert.Equal("default", settings.Endpoints.Source);
        Assert.Null(settings.TokenFile.Value);
        Assert.Null(settings.ConfigFile);
        Assert.Equal(TimeSpan.FromSeconds(30), settings.Timeout.Value);
    }

    [Fact]
    public void Resolve_FlagEnvironmentAndProfile_FlagWins()
    {
        WriteProfile("""{ "defaultProfile": "dev", "profiles": { "dev": { "endpoints": ["https://profile:1"], "tokenFile": "p.token", "tenant": "p" } } }""");
        _variables["KMS_ENDPOINT"] = "https://env:2";
        _variables["KMS_TOKEN_FILE"] = "/env.token";
        _variables["KMS_TENANT"] = "e";

        var settings = Resolve(new CliFlags { Endpoints = ["https://flag:3"], TokenFile = "/flag.token", Tenant = "f" });

        Assert.Equal([new Uri("https://flag:3")], settings.Endpoints.Value);
        Assert.Equal("/flag.token", settings.TokenFile.Value);
        Assert.Equal("flag --token-file", settings.TokenFile.Source);
        Assert.Equal("f", settings.Tenant.Value);
    }

    [Fact]
    public void Resolve_EnvironmentAndProfile_EnvironmentWins()
    {
        WriteProfile("""{ "defaultProfile": "dev", "profiles": { "dev": { "endpoints": ["https://profile:1"], "tokenFile": "p.token" } } }""");
        _variables["KMS_ENDPOINT"] = "https://a:1, b:2";
        _variables["KMS_TOKEN_FILE"] = "/env.token";

        var settings = Resolve(new CliFlags());

        Assert.Equal([new Uri("https://a:1"), new Uri("https://b:2")], settings.Endpoints.Value);
        Assert.Equal("env KMS_ENDPOINT", settings.Endpoints.Source);
        Assert.Equal("/env.token", settings.TokenFile.Value);
    }

    [Fact]
    public void Resolve_ProfileOnly_ProfileWinsOverDefaultsWithPathsRelativeToTheFile()
    {
        var file = WriteProfile("""{ "defaultProfile": "dev", "profiles": { "dev": { "endpoints": ["https://profile:1"], "tokenFile": "tokens/dev.token", "caFile": "~/ca.crt", "timeoutSeconds": 5 } } }""");

        var settings = Resolve(new CliFlags());

        Assert.Equal(file, settings.ConfigFile);
        Assert.Equal("dev", settings.Profile);
        Assert.Equal([new Uri("https://profile:1")], settings.Endpoints.Value);
        Assert.Equal("profile dev", settings.Endpoints.Source);
        Assert.Equal(Path.Combine(Path.GetDirectoryName(file)!, "tokens", "dev.token"), settings.TokenFile.Value);
        Assert.Equal(Path.Combine(_home, "ca.crt"), settings.CaFile.Value);
        Assert.Equal(TimeSpan.FromSeconds(5), settings.Timeout.Value);
    }

    [Fact]
    public void Resolve_ProfileNamedByFlag_BeatsEnvironmentAndDefaultProfile()
    {
        WriteProfile("""{ "defaultProfile": "a", "profiles": { "a": { "tenant": "ta" }, "b": { "tenant": "tb" }, "c": { "tenant": "tc" } } }""");
        _variables["KMS_PROFILE"] = "b";

        Assert.Equal("tb", Resolve(new CliFlags()).Tenant.Value);
        Assert.Equal("tc", Resolve(new CliFlags { Profile = "c" }).Tenant.Value);
    }

    [Fact]
    public void Resolve_KmsConfigVariable_ReadsThatFile()
    {
        var other = Path.Combine(_home, "elsewhere.json");
        File.WriteAllText(other, """{ "profiles": { "x": { "tenant": "from-elsewhere" } } }""");
        _variables["KMS_CONFIG"] = other;

        var settings = Resolve(new CliFlags { Profile = "x" });

        Assert.Equal("from-elsewhere", settings.Tenant.Value);
        Assert.Equal(other, settings.ConfigFile);
    }

    [Fact]
    public void Resolve_UnknownProfile_IsAUsageErrorNamingTheProfiles()
    {
        WriteProfile("""{ "profiles": { "dev": {}, "prod": {} } }""");

        var error = Assert.Throws<CliUsageException>(() => Resolve(new CliFlags { Profile = "staging" }));

        Assert.Contains("staging", error.Message, StringComparison.Ordinal);
        Assert.Contains("dev, prod", error.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Resolve_ProfileWithAnInlineToken_IsRefused()
    {
        WriteProfile("""{ "profiles": { "dev": { "token": "kms_abc_secret" } } }""");

        var error = Assert.Throws<CliUsageException>(() => Resolve(new CliFlags { Profile = "dev" }));

        Assert.Contains("token", error.Message, StringComparison.Ordinal);
        Assert.DoesNotContain("kms_abc_secret", error.Message, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData("http://plain:80")]
    [InlineData("https://")]
    [InlineData(",")]
    public void ParseEndpoints_NotHttps_IsAUsageError(string value) =>
        Assert.Throws<CliUsageException>(() => SettingsResolver.ParseEndpoints([value], "--endpoint"));

    [Fact]
    public void ParseEndpoints_HostAndPort_AssumesHttps() =>
        Assert.Equal([new Uri("https://kms.example:8443")], SettingsResolver.ParseEndpoints(["kms.example:8443"], "--endpoint"));

    private string WriteProfile(string json)
    {
        var path = Path.Combine(_home, ".config", "kms", "config.json");
        Directory.CreateDirectory(Path.GetDirectoryName(path)!);
        File.WriteAllText(path, json);
        return path;
    }

    private CliSettings Resolve(CliFlags flags) => SettingsResolver.Resolve(flags, new CliEnvironment
    {
        Out = TextWriter.Null,
        Error = TextWriter.Null,
        OpenStandardInput = () => Stream.Null,
        OpenStandardOutput = () => Stream.Null,
        GetVariable = name => _variables.GetValueOrDefault(name),
        HomeDirectory = _home,
        WorkingDirectory = _home,
    });
}
