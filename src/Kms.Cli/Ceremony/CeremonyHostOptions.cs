using System.CommandLine;
using Kms.Ceremony.Shares;
using Kms.Cli.Infrastructure;

namespace Kms.Cli.Ceremony;

/// <summary>
/// What every ceremony that handles the plaintext domain key does first: turn core dumps off,
/// and refuse to run while a network interface is up (unless forced, which the transcript
/// records); and the share files' Argon2id cost.
/// </summary>
internal sealed class CeremonyHostOptions
{
    private CeremonyHostOptions()
    {
    }

    public Option<bool> AllowNetwork { get; } = new("--allow-network")
    {
        Description = "run although a network interface other than loopback is up (recorded in the transcript)",
    };

    /// <summary>Tests only: Argon2id at a cost an attacker brute-forces cheaply; the transcript says so.</summary>
    public Option<bool> InsecureTestKdf { get; } = new("--insecure-test-kdf")
    {
        Description = "TESTS ONLY: weak Argon2id parameters (share files brute-forced cheaply)",
        Hidden = true,
    };

    public static CeremonyHostOptions Create() => new();

    public void AddTo(Command command)
    {
        command.Options.Add(AllowNetwork);
        command.Options.Add(InsecureTestKdf);
    }

    /// <summary>Makes the process non-dumpable and checks the network; the returned facts go into the transcript.</summary>
    public PreparedHost Prepare(CliContext context)
    {
        OfflineHost.DisableCoreDumps();
        var up = OfflineHost.InterfacesUp();
        if (up.Count > 0 && !context.ParseResult.GetValue(AllowNetwork))
        {
            throw new CliFailureException(ExitCodes.Conflict,
                $"network interfaces are up ({string.Join(", ", up)}): the ceremony host must be offline; take them down, or pass --allow-network (recorded in the transcript)");
        }

        if (up.Count > 0)
        {
            context.Output.Warn($"running with network interfaces up ({string.Join(", ", up)}) because of --allow-network");
        }

        var kdf = context.ParseResult.GetValue(InsecureTestKdf)
            ? new KdfChoice(new Argon2idParameters(64, 1, 1), KdfPolicy.AllowWeakParametersForTests)
            : new KdfChoice(Argon2idParameters.Default, KdfPolicy.Production);
        return new PreparedHost(up, kdf);
    }
}

/// <summary>The Argon2id cost of new share files, and the policy for reading them.</summary>
internal sealed record KdfChoice(Argon2idParameters Parameters, KdfPolicy Policy);

/// <summary>The host's state when the ceremony started.</summary>
internal sealed record PreparedHost(IReadOnlyList<string> InterfacesUp, KdfChoice Kdf)
{
    public string Describe() =>
        "core dumps off (RLIMIT_CORE=0, not dumpable); " + (InterfacesUp.Count == 0
            ? "no network interface up besides loopback"
            : $"NETWORK INTERFACES UP, forced with --allow-network: {string.Join(", ", InterfacesUp)}");
}
