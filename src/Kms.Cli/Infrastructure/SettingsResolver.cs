namespace Kms.Cli.Infrastructure;

/// <summary>
/// Resolves the effective configuration: flags &gt; environment &gt; profile file &gt; defaults,
/// setting by setting. Pure (the environment and file system come in through
/// <see cref="CliEnvironment"/>), so the precedence is unit-tested.
/// </summary>
/// <remarks>
/// Environment: <c>KMS_ENDPOINT</c> (comma-separated for failover), <c>KMS_CA_FILE</c>,
/// <c>KMS_TOKEN_FILE</c>, <c>KMS_CLIENT_CERT</c>, <c>KMS_CLIENT_KEY</c>, <c>KMS_TENANT</c>,
/// <c>KMS_PROFILE</c>, <c>KMS_CONFIG</c>. The token is always a file path: there is no variable
/// or flag that carries a token's value.
/// </remarks>
internal static class SettingsResolver
{
    public const string EndpointVariable = "KMS_ENDPOINT";
    public const string CaFileVariable = "KMS_CA_FILE";
    public const string TokenFileVariable = "KMS_TOKEN_FILE";
    public const string ClientCertVariable = "KMS_CLIENT_CERT";
    public const string ClientKeyVariable = "KMS_CLIENT_KEY";
    public const string TenantVariable = "KMS_TENANT";
    public const string ProfileVariable = "KMS_PROFILE";
    public const string ConfigVariable = "KMS_CONFIG";

    /// <summary>The profile file looked for when neither <c>--config</c> nor <c>KMS_CONFIG</c> names one.</summary>
    public static string DefaultConfigPath(CliEnvironment environment) =>
        Path.Combine(
            environment.GetVariable("XDG_CONFIG_HOME") is { Length: > 0 } xdg ? xdg : Path.Combine(environment.HomeDirectory, ".config"),
            "kms",
            "config.json");

    /// <exception cref="CliUsageException">A named profile or profile file is missing, or a value is malformed.</exception>
    public static CliSettings Resolve(CliFlags flags, CliEnvironment environment)
    {
        var (configFile, explicitConfig) = flags.ConfigFile is { } flagConfig
            ? (environment.FullPath(flagConfig), true)
            : environment.GetVariable(ConfigVariable) is { Length: > 0 } envConfig
                ? (environment.FullPath(envConfig), true)
                : (DefaultConfigPath(environment), false);

        ProfileFile? file = null;
        if (File.Exists(configFile))
        {
            file = ProfileFile.Load(configFile);
        }
        else if (explicitConfig)
        {
            throw new CliUsageException(Directory.Exists(configFile)
                ? $"profile file {configFile} is a directory: give a file's path"
                : $"profile file {configFile} does not exist");
        }
        else
        {
            configFile = null;
        }

        var profileName = flags.Profile
            ?? (environment.GetVariable(ProfileVariable) is { Length: > 0 } envProfile ? envProfile : null);
        ProfileFile.Profile? profile = null;
        if (profileName is not null)
        {
            if (file is null || !file.Profiles.TryGetValue(profileName, out profile))
            {
                throw new CliUsageException(file is null
                    ? $"profile '{profileName}' asked for, but there is no profile file ({DefaultConfigPath(environment)}, or set {ConfigVariable})"
                    : $"profile '{profileName}' is not in {configFile} (it has: {string.Join(", ", file.Profiles.Keys.Order(StringComparer.Ordinal))})");
            }
        }
        else if (file?.DefaultProfile is { } defaultName)
        {
            profileName = defaultName;
            profile = file.Profiles.GetValueOrDefault(defaultName)
                ?? throw new CliUsageException($"the default profile '{defaultName}' of {configFile} is not defined in it");
        }

        var profileSource = $"profile {profileName}";
        var profileDirectory = configFile is null ? environment.WorkingDirectory : Path.GetDirectoryName(configFile)!;
        string? ProfilePath(string? path) => path is null ? null : Path.GetFullPath(environment.ExpandHome(path), profileDirectory);

        return new CliSettings
        {
            Endpoints = ResolveEndpoints(flags, environment, profile, profileSource),
            CaFile = PathSetting(flags.CaFile, "--ca-file", CaFileVariable, ProfilePath(profile?.CaFile), environment, profileSource),
            TokenFile = PathSetting(flags.TokenFile, "--token-file", TokenFileVariable, ProfilePath(profile?.TokenFile), environment, profileSource),
            ClientCert = PathSetting(flags.ClientCert, "--client-cert", ClientCertVariable, ProfilePath(profile?.ClientCert), environment, profileSource),
            ClientKey = PathSetting(flags.ClientKey, "--client-key", ClientKeyVariable, ProfilePath(profile?.ClientKey), environment, profileSource),
            Tenant = flags.Tenant is { } tenant ? new(tenant, "flag --tenant")
                : environment.GetVariable(TenantVariable) is { Length: > 0 } envTenant ? new(envTenant, $"env {TenantVariable}")
                : profile?.Tenant is { } profileTenant ? new(profileTenant, profileSource)
                : new(null, "default"),
            Timeout = flags.TimeoutSeconds is { } seconds ? new(Seconds(seconds, "--timeout"), "flag --timeout")
                : profile?.TimeoutSeconds is { } profileSeconds ? new(Seconds(profileSeconds, $"{profileSource}: timeoutSeconds"), profileSource)
                : new(CliSettings.DefaultTimeout, "default"),
            ConfigFile = configFile,
            Profile = profile is null ? null : profileName,
        };
    }

    /// <summary>Endpoints from one flag value or variable: comma-separated, <c>https://</c> assumed when no scheme is given.</summary>
    /// <exception cref="CliUsageException">An entry is not an https URI.</exception>
    public static IReadOnlyList<Uri> ParseEndpoints(IEnumerable<string> values, string source)
    {
        var endpoints = new List<Uri>();
        foreach (var entry in values.SelectMany(v => v.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries)))
        {
            var text = entry.Contains("://", StringComparison.Ordinal) ? entry : "https://" + entry;
            if (!Uri.TryCreate(text, UriKind.Absolute, out var uri) || uri.Scheme != Uri.UriSchemeHttps)
            {
                throw new CliUsageException($"{source}: '{entry}' is not an https endpoint (e.g. https://kms.example:8443)");
            }

            if (!endpoints.Contains(uri))
            {
                endpoints.Add(uri);
            }
        }

        return endpoints.Count > 0 ? endpoints : throw new CliUsageException($"{source}: no endpoint given");
    }

    private static Setting<IReadOnlyList<Uri>> ResolveEndpoints(CliFlags flags, CliEnvironment environment, ProfileFile.Profile? profile, string profileSource)
    {
        if (flags.Endpoints is { Count: > 0 } fromFlags)
        {
            return new(ParseEndpoints(fromFlags, "--endpoint"), "flag --endpoint");
        }

        if (environment.GetVariable(EndpointVariable) is { Length: > 0 } fromEnvironment)
        {
            return new(ParseEndpoints([fromEnvironment], EndpointVariable), $"env {EndpointVariable}");
        }

        if (profile?.Endpoints is { Count: > 0 } fromProfile)
        {
            return new(ParseEndpoints(fromProfile, profileSource), profileSource);
        }

        return new([CliSettings.DefaultEndpoint], "default");
    }

    private static Setting<string?> PathSetting(string? flag, string flagName, string variable, string? fromProfile, CliEnvironment environment, string profileSource) =>
        flag is not null ? new(environment.FullPath(flag), $"flag {flagName}")
        : environment.GetVariable(variable) is { Length: > 0 } fromEnvironment ? new(environment.FullPath(fromEnvironment), $"env {variable}")
        : fromProfile is not null ? new(fromProfile, profileSource)
        : new(null, "default");

    private static TimeSpan Seconds(int seconds, string what) =>
        seconds is >= 1 and <= 86_400 ? TimeSpan.FromSeconds(seconds) : throw new CliUsageException($"{what}: {seconds} is not between 1 and 86400 seconds");
}
