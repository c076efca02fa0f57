using System.CommandLine;

namespace Kms.Cli.Infrastructure;

/// <summary>How results are printed on standard output.</summary>
internal enum OutputFormat
{
    /// <summary>Tables and short lines for people.</summary>
    Table,

    /// <summary>One JSON document per command, for scripts.</summary>
    Json,
}

/// <summary>
/// The options every command takes (recursive on the root command): where the servers are,
/// how to authenticate, how to print. One instance per parsed command line.
/// </summary>
/// <remarks>
/// There is deliberately no option that takes a secret's value (no <c>--token</c>, no
/// <c>--pin</c>): argv is visible to every user of the machine (<c>/proc/PID/cmdline</c>) and
/// lands in shell history. Secrets are files or file descriptors; see <see cref="SecretInput"/>.
/// </remarks>
internal sealed class GlobalOptions
{
    public Option<string[]> Endpoint { get; } = new("--endpoint")
    {
        Description = "KMS server URL; repeat or comma-separate for failover [env KMS_ENDPOINT]",
        Recursive = true,
        HelpName = "URL",
    };

    public Option<string> CaFile { get; } = new("--ca-file")
    {
        Description = "PEM file of the CA that issued the servers' certificates [env KMS_CA_FILE]",
        Recursive = true,
        HelpName = "PATH",
    };

    public Option<string> TokenFile { get; } = new("--token-file")
    {
        Description = "file holding the API token [env KMS_TOKEN_FILE]",
        Recursive = true,
        HelpName = "PATH",
    };

    public Option<string> ClientCert { get; } = new("--client-cert")
    {
        Description = "PEM client certificate for mTLS (with --client-key) [env KMS_CLIENT_CERT]",
        Recursive = true,
        HelpName = "PATH",
    };

    public Option<string> ClientKey { get; } = new("--client-key")
    {
        Description = "PEM private key of --client-cert [env KMS_CLIENT_KEY]",
        Recursive = true,
        HelpName = "PATH",
    };

    public Option<string> Tenant { get; } = new("--tenant")
    {
        Description = "tenant of short key and alias names [env KMS_TENANT]",
        Recursive = true,
        HelpName = "TENANT",
    };

    public Option<string> Profile { get; } = new("--profile")
    {
        Description = "named profile of the profile file [env KMS_PROFILE]",
        Recursive = true,
        HelpName = "NAME",
    };

    public Option<string> Config { get; } = new("--config")
    {
        Description = "profile file (default ~/.config/kms/config.json) [env KMS_CONFIG]",
        Recursive = true,
        HelpName = "PATH",
    };

    public Option<int?> Timeout { get; } = new("--timeout")
    {
        Description = "deadline of each call in seconds, retries included (default 30)",
        Recursive = true,
        HelpName = "SECONDS",
    };

    public Option<OutputFormat> Output { get; } = new("--output", "-o")
    {
        Description = "table (default) or json: one JSON document on stdout",
        Recursive = true,
        HelpName = "table|json",
    };

    public Option<bool> Verbose { get; } = new("--verbose", "-v")
    {
        Description = "on failure, also print the exception and its stack trace",
        Recursive = true,
    };

    /// <summary>Adds every global option to the root command.</summary>
    public void AddTo(RootCommand root)
    {
        foreach (var option in (Option[])[Endpoint, CaFile, TokenFile, ClientCert, ClientKey, Tenant, Profile, Config, Timeout, Output, Verbose])
        {
            root.Options.Add(option);
        }
    }

    /// <summary>The connection flags of a parsed command line.</summary>
    public CliFlags FlagsOf(ParseResult parse) => new()
    {
        Endpoints = parse.GetValue(Endpoint),
        CaFile = parse.GetValue(CaFile),
        TokenFile = parse.GetValue(TokenFile),
        ClientCert = parse.GetValue(ClientCert),
        ClientKey = parse.GetValue(ClientKey),
        Tenant = parse.GetValue(Tenant),
        TimeoutSeconds = parse.GetValue(Timeout),
        Profile = parse.GetValue(Profile),
        ConfigFile = parse.GetValue(Config),
    };
}
