using System.Diagnostics;
using System.Security.Cryptography;
using Kms.Hsm;

namespace Kms.Testing;

/// <summary>
/// SoftHSMv2 for tests, created from scratch: one token directory per test process
/// (rendered from hsm-config/softhsm2.conf.template), one fresh token per fixture.
/// Missing SoftHSM is a test failure with instructions, never a skip.
/// </summary>
public static class SoftHsm
{
    public const string ModulePath = "/usr/lib/softhsm/libsofthsm2.so";

    private static readonly Lazy<string> TokenDirectory = new(Initialise);

    /// <summary>What every adapter in the test process must load the module with.</summary>
    public static IReadOnlyDictionary<string, string> ModuleEnvironment { get; private set; } = new Dictionary<string, string>();

    /// <summary>
    /// Creates a new token with random PINs, through PKCS#11 in this process (a token made by
    /// softhsm2-util after the module is loaded would be invisible to it). Fails loudly if
    /// SoftHSM is not installed.
    /// </summary>
    public static TestToken CreateToken(string? label = null)
    {
        var tokens = TokenDirectory.Value;
        label ??= "t-" + Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(6));
        var userPin = Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(8));
        var soPin = Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(8));
        HsmTokenSetup.InitializeToken(ModulePath, label, soPin, userPin, ModuleEnvironment);
        var pinFile = Path.Combine(Path.GetDirectoryName(tokens)!, label + ".pin");
        File.WriteAllText(pinFile, userPin + "\n");
        return new TestToken(label, userPin, soPin, pinFile);
    }

    /// <summary>The SoftHSM configuration every test of this process uses.</summary>
    public static string ConfigPath => Path.Combine(Path.GetDirectoryName(TokenDirectory.Value)!, "softhsm2.conf");

    /// <summary>Runs a tool with SOFTHSM2_CONF set; throws with its output when it fails.</summary>
    public static string Run(string tool, params string[] arguments)
    {
        _ = TokenDirectory.Value;
        var start = new ProcessStartInfo(tool) { RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (var argument in arguments)
        {
            start.ArgumentList.Add(argument);
        }

        start.Environment["SOFTHSM2_CONF"] = ConfigPath;
        using var process = Process.Start(start) ?? throw new InvalidOperationException($"cannot start {tool}");
        var output = process.StandardOutput.ReadToEndAsync();
        var error = process.StandardError.ReadToEndAsync();
        process.WaitForExit();
        if (process.ExitCode != 0)
        {
            throw new InvalidOperationException($"{tool} failed ({process.ExitCode}): {error.Result}{output.Result}");
        }

        return output.Result;
    }

    private static string Initialise()
    {
        if (!File.Exists(ModulePath) || !OnPath("softhsm2-util"))
        {
            throw new InvalidOperationException(
                $"SoftHSMv2 is required by this test and is not installed ({ModulePath}, softhsm2-util). " +
                "Install it with 'apt-get install -y softhsm2' (./test.sh does).");
        }

        var root = Path.Combine(Path.GetTempPath(), $"kms-tests-{Environment.ProcessId}-{Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(4))}");
        var tokens = Path.Combine(root, "tokens");
        Directory.CreateDirectory(tokens);
        var template = File.ReadAllText(RepositoryPaths.Of("hsm-config", "softhsm2.conf.template"));
        File.WriteAllText(Path.Combine(root, "softhsm2.conf"), template.Replace("@TOKEN_DIR@", tokens, StringComparison.Ordinal));

        // Read by SoftHSM (getenv) at C_Initialize: set natively, before any test loads the module.
        ModuleEnvironment = new Dictionary<string, string> { ["SOFTHSM2_CONF"] = Path.Combine(root, "softhsm2.conf") };
        AppDomain.CurrentDomain.ProcessExit += (_, _) =>
        {
            try
            {
                Directory.Delete(root, recursive: true);
            }
            catch (IOException)
            {
                // Best effort; the directory is under /tmp.
            }
        };
        return tokens;
    }

    private static bool OnPath(string tool) =>
        (Environment.GetEnvironmentVariable("PATH") ?? "").Split(':').Any(dir => File.Exists(Path.Combine(dir, tool)));
}

/// <summary>A token created for a test, with its PINs.</summary>
public sealed record TestToken(string Label, string UserPin, string SoPin, string PinFile)
{
    /// <summary>Adapter options for this token.</summary>
    public HsmOptions Options(bool devMode = true, int sessions = 2, int cacheCapacity = 1000) => new()
    {
        ModulePath = SoftHsm.ModulePath,
        TokenLabel = Label,
        PinFile = PinFile,
        ModuleEnvironment = new Dictionary<string, string>(SoftHsm.ModuleEnvironment),
        DevMode = devMode,
        DomainKeyId = devMode ? null : "kms-test-domain-key",
        SessionPoolSize = sessions,
        KeyCacheCapacity = cacheCapacity,
        RecoveryBackoff = TimeSpan.Zero,
    };
}
