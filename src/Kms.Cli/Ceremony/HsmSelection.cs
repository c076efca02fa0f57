using System.CommandLine;
using Kms.Cli.Infrastructure;
using Kms.Hsm;

namespace Kms.Cli.Ceremony;

/// <summary>
/// The options that say which HSM token a ceremony command works on: PKCS#11 module, its
/// environment (SoftHSM's configuration file), token label, HSM profile, domain key label,
/// and the user PIN (file, descriptor or prompt — never argv).
/// </summary>
internal sealed class HsmSelection
{
    public Option<string> Module { get; } = new("--module")
    {
        Description = "the HSM's PKCS#11 module",
        HelpName = "PATH",
        DefaultValueFactory = _ => new HsmOptions().ModulePath,
    };

    public Option<string> TokenLabel { get; } = new("--token-label")
    {
        Description = "the token, by label (never by slot number)",
        HelpName = "LABEL",
        Required = true,
    };

    public Option<string?> SoftHsmConf { get; } = new("--softhsm-conf")
    {
        Description = "SoftHSM only: its configuration file (sets SOFTHSM2_CONF for the module)",
        HelpName = "PATH",
    };

    public Option<Dictionary<string, string>> ModuleEnvironment { get; } = ContextOption.Create("--module-env", "an environment variable the module reads at load (repeatable)");

    public Option<string> Profile { get; } = new("--hsm-profile")
    {
        Description = "HSM profile: a name under hsm-config/profiles, or a path to one (with a / or ending .json)",
        HelpName = "NAME|PATH",
        DefaultValueFactory = _ => "softhsm2",
    };

    public Option<string> DomainKeyLabel { get; } = new("--domain-key-label")
    {
        Description = "CKA_LABEL of the domain key",
        HelpName = "LABEL",
        DefaultValueFactory = _ => new HsmOptions().DomainKeyLabel,
    };

    public SecretOption Pin { get; } = new("pin", "the token's user PIN");

    /// <summary>Adds the options (and the PIN's, when <paramref name="withPin"/>) to <paramref name="command"/>.</summary>
    public void AddTo(Command command, bool withPin = true)
    {
        command.Options.Add(Module);
        command.Options.Add(TokenLabel);
        command.Options.Add(SoftHsmConf);
        command.Options.Add(ModuleEnvironment);
        command.Options.Add(Profile);
        command.Options.Add(DomainKeyLabel);
        if (withPin)
        {
            Pin.AddTo(command);
        }
    }

    /// <summary>
    /// The adapter options these flags select; <paramref name="domainKeyId"/> outside dev mode. The
    /// files named (the module, SoftHSM's configuration, an HSM profile given by path) are checked
    /// here, before a ceremony writes or asks for anything: the module loader and SoftHSM would
    /// say only that the module did not load, or nothing at all.
    /// </summary>
    /// <exception cref="CliUsageException">A directory is given for one of the files.</exception>
    /// <exception cref="CliFailureException">One of the files is not there or may not be read (exit <see cref="ExitCodes.LocalIo"/>).</exception>
    public HsmOptions Options(CliContext ctx, string? domainKeyId = null)
    {
        var parse = ctx.ParseResult;
        var environment = new Dictionary<string, string>(parse.GetValue(ModuleEnvironment)!, StringComparer.Ordinal);
        if (parse.GetValue(SoftHsmConf) is { Length: > 0 } conf)
        {
            environment["SOFTHSM2_CONF"] = LocalPath.Readable(ctx.Environment, conf, "--softhsm-conf");
        }

        // A bare name (libsofthsm2.so) is the loader's to find on its search path; a profile's
        // name is one of the embedded profiles. With a slash (or .json) they are files.
        var module = parse.GetValue(Module)!;
        var profile = parse.GetValue(Profile)!;
        return new HsmOptions
        {
            ModulePath = module.Contains('/', StringComparison.Ordinal) ? LocalPath.Readable(ctx.Environment, module, "--module") : module,
            ModuleEnvironment = environment,
            TokenLabel = parse.GetValue(TokenLabel)!,
            Profile = profile.Contains('/', StringComparison.Ordinal) || profile.EndsWith(".json", StringComparison.OrdinalIgnoreCase) ? LocalPath.Readable(ctx.Environment, profile, "--hsm-profile") : profile,
            DomainKeyLabel = parse.GetValue(DomainKeyLabel)!,
            DomainKeyId = domainKeyId,
            SessionPoolSize = 2,
        };
    }
}
