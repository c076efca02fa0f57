using System.CommandLine;
using System.CommandLine.Parsing;
using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;
using Kms.Client;

namespace Kms.Cli.Infrastructure;

/// <summary>
/// One invocation of a command: its parsed command line, the resolved configuration, the
/// output, and a <see cref="KmsClient"/> made on first use. Disposed when the command ends.
/// </summary>
internal sealed class CliContext : IDisposable
{
    private readonly GlobalOptions _globals;
    private CliSettings? _settings;
    private KmsClient? _client;
    private X509Certificate2? _clientCertificate;
    private StandardErrorLog? _log;
    private (string Name, string? TokenLabel)? _step;

    public CliContext(ParseResult parse, CliEnvironment environment, GlobalOptions globals)
    {
        ArgumentNullException.ThrowIfNull(parse);
        ArgumentNullException.ThrowIfNull(globals);
        ParseResult = parse;
        Environment = environment;
        _globals = globals;
        Output = new CliOutput(environment, parse.GetValue(globals.Output));
        Verbose = parse.GetValue(globals.Verbose);
    }

    public ParseResult ParseResult { get; }

    public CliEnvironment Environment { get; }

    public CliOutput Output { get; }

    /// <summary><c>--verbose</c>: failures print the exception with its stack trace.</summary>
    public bool Verbose { get; }

    /// <summary>
    /// The command's own log on standard error (<see cref="StandardErrorLog"/>): the ceremony's HSM
    /// adapter writes its warnings there, and a failed step is named there.
    /// </summary>
    public StandardErrorLog Log => _log ??= new StandardErrorLog(Environment.Error, Verbose, failover: false);

    /// <summary>
    /// Says which step of a ceremony command runs from now on (<c>"open the token"</c>, <c>"import
    /// the domain key"</c>), on which token: if the command fails before the next step begins, the
    /// failure is preceded by one line that names the step, the token and the PKCS#11 return value
    /// (<see cref="ReportFailedStep"/>). Names and labels only: never a PIN or key material.
    /// </summary>
    public void Step(string name, string? tokenLabel = null) => _step = (name, tokenLabel);

    /// <summary>
    /// Writes the step <paramref name="failure"/> ended, if a ceremony command named one:
    /// <c>kms: error: ceremony create-domain failed at step "open the token" (token 'a'): CKR_PIN_INCORRECT</c>.
    /// What to do next is in the failure's own line (<see cref="ErrorReport"/>).
    /// </summary>
    public void ReportFailedStep(Exception failure)
    {
        ArgumentNullException.ThrowIfNull(failure);
        if (_step is not { } step)
        {
            return;
        }

        var cause = failure switch
        {
            Kms.Hsm.HsmConfigurationException { ReturnValue: { } returnValue } => ": " + returnValue,
            Kms.Hsm.HsmConfigurationException { Failure: Kms.Hsm.HsmFailure.TokenNotFound } => ": no such token",
            Kms.Hsm.HsmConfigurationException { Failure: Kms.Hsm.HsmFailure.ModuleNotLoaded } => ": the PKCS#11 module did not load",
            Kms.Hsm.HsmConfigurationException { Failure: Kms.Hsm.HsmFailure.TokenNotWritable } => ": the token cannot take the key",
            Kms.Hsm.HsmConfigurationException { Failure: Kms.Hsm.HsmFailure.DomainKeyPresent } => ": the token holds a domain key already",
            _ => "",
        };
        var token = step.TokenLabel is null ? "" : $" (token '{step.TokenLabel}')";
        Log.Write(Microsoft.Extensions.Logging.LogLevel.Error, $"{CommandPath()} failed at step \"{step.Name}\"{token}{cause}");
    }

    // "ceremony create-domain": the command as typed, without the root's name.
    private string CommandPath()
    {
        var names = new List<string>();
        for (var result = ParseResult.CommandResult; result.Parent is CommandResult parent; result = parent)
        {
            names.Insert(0, result.Command.Name);
        }

        return string.Join(' ', names);
    }

    /// <summary>The effective configuration (flags &gt; environment &gt; profile &gt; defaults), resolved on first use.</summary>
    /// <exception cref="CliUsageException">The configuration is inconsistent (no such profile, malformed endpoint).</exception>
    public CliSettings Settings => _settings ??= SettingsResolver.Resolve(_globals.FlagsOf(ParseResult), Environment);

    /// <summary>The configured tenant, or null.</summary>
    public string? Tenant => Settings.Tenant.Value;

    /// <summary>The client, connected per <see cref="Settings"/> on first use.</summary>
    /// <exception cref="CliUsageException">A configured file is missing or unusable, or two settings contradict each other.</exception>
    public KmsClient Client => _client ??= CreateClient();

    /// <summary>The settings <see cref="Client"/> was made with, once it was; null while it was not (then no call used them).</summary>
    public CliSettings? ConfiguredClientSettings => _client is null ? null : _settings;

    /// <summary>A key name from the command line (see <see cref="ResourceNames"/>).</summary>
    public string KeyName(string input) => ResourceNames.Key(input, Tenant);

    /// <summary>A key version, key or alias name from the command line (see <see cref="ResourceNames.KeyOrVersion"/>).</summary>
    public string KeyOrVersionName(string input) => ResourceNames.KeyOrVersion(input, Tenant);

    /// <summary>An alias name from the command line.</summary>
    public string AliasName(string input) => ResourceNames.Alias(input, Tenant);

    /// <summary>A tenant's resource name from an optional argument, else the configured tenant.</summary>
    public string TenantName(string? input) => ResourceNames.Tenant(input, Tenant);

    /// <summary>The client options for <see cref="Settings"/>; the caller owns the client certificate, if any.</summary>
    public static KmsClientOptions ClientOptions(CliSettings settings, out X509Certificate2? clientCertificate)
    {
        ArgumentNullException.ThrowIfNull(settings);
        clientCertificate = null;
        var options = new KmsClientOptions
        {
            Endpoints = [.. settings.Endpoints.Value],
            CaCertificatePath = RequireFile(settings.CaFile, "CA file"),
            ApiTokenPath = RequireFile(settings.TokenFile, "token file"),
            CallTimeout = settings.Timeout.Value,
        };

        var certificate = RequireFile(settings.ClientCert, "client certificate");
        var key = RequireFile(settings.ClientKey, "client key");
        if ((certificate is null) != (key is null))
        {
            throw new CliUsageException("mTLS needs both --client-cert and --client-key (or KMS_CLIENT_CERT and KMS_CLIENT_KEY)");
        }

        if (certificate is not null && options.ApiTokenPath is not null)
        {
            throw new CliUsageException($"use a token ({settings.TokenFile.Source}) or a client certificate ({settings.ClientCert.Source}), not both: the server refuses calls that carry both");
        }

        if (certificate is not null)
        {
            try
            {
                // Read here, not by the certificate loader: its "Access to the path … is denied." named neither the setting nor which of the two files.
                clientCertificate = X509Certificate2.CreateFromPem(ReadSetting(settings.ClientCert, "client certificate"), ReadSetting(settings.ClientKey, "client key"));
            }
            catch (CryptographicException exception)
            {
                throw new CliUsageException($"cannot load the client certificate {certificate} with key {key}: {exception.Message}", exception);
            }

            options.ClientCertificate = clientCertificate;
        }

        return options;
    }

    /// <summary>
    /// A client for <see cref="Settings"/>' endpoints and CA that authenticates with
    /// <paramref name="apiToken"/> alone (a one-time credential), not with the configured token file
    /// or client certificate; the caller disposes it.
    /// </summary>
    /// <exception cref="CliUsageException">The CA file is missing, or the configuration does not work.</exception>
    public KmsClient CreateClientWithToken(string apiToken) => Connect(new KmsClientOptions
    {
        Endpoints = [.. Settings.Endpoints.Value],
        CaCertificatePath = RequireFile(Settings.CaFile, "CA file"),
        ApiToken = apiToken,
        CallTimeout = Settings.Timeout.Value,
    });

    public void Dispose()
    {
        _client?.Dispose();
        _clientCertificate?.Dispose();
    }

    private KmsClient CreateClient() => Connect(ClientOptions(Settings, out _clientCertificate));

    private KmsClient Connect(KmsClientOptions options)
    {
        try
        {
            // The SDK's warnings (a failover, an incomplete envelope stream) on standard error.
            return new KmsClient(options, new StandardErrorLog(Environment.Error, Verbose, failover: options.Endpoints.Count > 1));
        }
        catch (ArgumentException exception)
        {
            // A CA file that holds no readable certificate is one too (KmsClient.LoadCaBundle).
            throw new CliUsageException($"the configuration does not work: {ErrorReport.WithoutParameterName(exception)}", exception);
        }
        catch (UnauthorizedAccessException exception)
        {
            // The client reads the CA file, then the token file; .NET's "Access to the path … is
            // denied." named neither setting. The CA file (a certificate) is opened again to tell
            // which; the token file is not (it may be a pipe).
            var (what, setting) = CanOpen(options.CaCertificatePath) ? ("token file", Settings.TokenFile) : ("CA file", Settings.CaFile);
            throw LocalPath.NotReadable($"{what} {setting.Value} ({setting.Source})", exception);
        }
    }

    private static bool CanOpen(string? path)
    {
        try
        {
            if (path is not null)
            {
                File.OpenHandle(path).Dispose();
            }

            return true;
        }
        catch (UnauthorizedAccessException)
        {
            return false;
        }
    }

    // The text of a setting's file (RequireFile checked that it is one), named by the setting as RequireFile names it.
    private static string ReadSetting(Setting<string?> setting, string what)
    {
        try
        {
            return File.ReadAllText(setting.Value!);
        }
        catch (UnauthorizedAccessException exception)
        {
            throw LocalPath.NotReadable($"{what} {setting.Value} ({setting.Source})", exception);
        }
    }

    private static string? RequireFile(Setting<string?> setting, string what) =>
        setting.Value is null || File.Exists(setting.Value)
            ? setting.Value
            : throw new CliUsageException(Directory.Exists(setting.Value)
                ? $"{what} {setting.Value} ({setting.Source}) is a directory: give a file's path"
                : $"{what} {setting.Value} ({setting.Source}) does not exist");
}
