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

    /// <summary>
    /// The environment variable that must be <c>1</c> for <see cref="InsecureTestKdf"/> to be
    /// accepted: a flag copied from a test or a drill into a real ceremony is refused, not only
    /// warned about in the middle of its output.
    /// </summary>
    public const string AllowInsecureTestKdfVariable = "KMS_ALLOW_INSECURE_TEST_KDF";

    /// <summary>
    /// Tests only: Argon2id at a cost an attacker brute-forces cheaply; refused unless
    /// <see cref="AllowInsecureTestKdfVariable"/> is <c>1</c>, warned about, and the transcript says so.
    /// </summary>
    public Option<bool> InsecureTestKdf { get; } = new("--insecure-test-kdf")
    {
        Description = "TESTS ONLY: weak Argon2id parameters (share files brute-forced cheaply); needs KMS_ALLOW_INSECURE_TEST_KDF=1",
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
        var weak = context.ParseResult.GetValue(InsecureTestKdf);
        if (weak && context.Environment.GetVariable(AllowInsecureTestKdfVariable) != "1")
        {
            // Before anything is read or generated: a refused run changes nothing.
            throw new CliUsageException(
                $"--insecure-test-kdf protects share files with Argon2id at 64 KiB and one pass, brute-forced cheaply: it is for tests and drills only, and refused unless {AllowInsecureTestKdfVariable}=1 is set in the environment; a real ceremony runs without it");
        }

        OfflineHost.DisableCoreDumps();
        // Read back from the kernel, so the transcript states what is, not what was asked for.
        var coreLimit = OfflineHost.CoreLimit();
        var dumpable = OfflineHost.IsDumpable();
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

        if (weak)
        {
            // Hidden from --help, so said where the operator looks, not only in the transcript.
            context.Output.Warn("--insecure-test-kdf: share files are protected by Argon2id at 64 KiB and one pass, brute-forced cheaply — tests and drills only, never a real share");
        }

        var kdf = weak
            ? new KdfChoice(new Argon2idParameters(64, 1, 1), KdfPolicy.AllowWeakParametersForTests)
            : new KdfChoice(Argon2idParameters.Default, KdfPolicy.Production);
        return new PreparedHost(coreLimit, dumpable, up, kdf);
    }
}

/// <summary>The Argon2id cost of new share files, and the policy for reading them.</summary>
internal sealed record KdfChoice(Argon2idParameters Parameters, KdfPolicy Policy);

/// <summary>The host's state when the ceremony started.</summary>
/// <param name="CoreLimit">The process's core-file size limit (soft), as the kernel reports it after <see cref="OfflineHost.DisableCoreDumps"/>.</param>
/// <param name="Dumpable">PR_GET_DUMPABLE, read back the same way.</param>
/// <param name="InterfacesUp">Network interfaces other than loopback that may carry traffic.</param>
/// <param name="Kdf">The share files' Argon2id cost.</param>
internal sealed record PreparedHost(ulong CoreLimit, bool Dumpable, IReadOnlyList<string> InterfacesUp, KdfChoice Kdf)
{
    /// <summary>The transcript's host-hygiene line: the measured values, in capitals where they are not what the ceremony requires.</summary>
    public string Describe() =>
        (CoreLimit == 0 && !Dumpable ? "core dumps off" : "CORE DUMPS NOT OFF")
        + $" (RLIMIT_CORE={CoreLimit}, {(Dumpable ? "DUMPABLE" : "not dumpable")}); "
        + (InterfacesUp.Count == 0
            ? "no network interface up besides loopback"
            : $"NETWORK INTERFACES UP, forced with --allow-network: {string.Join(", ", InterfacesUp)}");
}
