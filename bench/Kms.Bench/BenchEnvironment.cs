using System.Security.Cryptography;
using Kms.Hsm;

namespace Kms.Bench;

/// <summary>A SoftHSM token directory and token made from scratch for one benchmark process.</summary>
internal static class BenchEnvironment
{
    public const string ModulePath = "/usr/lib/softhsm/libsofthsm2.so";

    public static string RepositoryRoot { get; } = FindRoot();

    public static (HsmOptions Options, string Root) CreateToken()
    {
        var root = Path.Combine(Path.GetTempPath(), "kms-bench-" + Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(4)));
        var tokens = Path.Combine(root, "tokens");
        Directory.CreateDirectory(tokens);
        var config = Path.Combine(root, "softhsm2.conf");
        File.WriteAllText(config, File.ReadAllText(Path.Combine(RepositoryRoot, "hsm-config", "softhsm2.conf.template")).Replace("@TOKEN_DIR@", tokens, StringComparison.Ordinal));
        var environment = new Dictionary<string, string> { ["SOFTHSM2_CONF"] = config };
        var pin = Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(8));
        HsmTokenSetup.InitializeToken(ModulePath, "bench", pin + "-so", pin, environment);
        return (new HsmOptions
        {
            ModulePath = ModulePath,
            ModuleEnvironment = environment,
            TokenLabel = "bench",
            Pin = pin,
            DevMode = true,
        }, root);
    }

    /// <summary>
    /// <paramref name="count"/> tokens in one SoftHSM configuration, each with its PIN in a file
    /// (as production mode reads it). SoftHSM reads its configuration once per process, so every
    /// token a run uses comes from one call.
    /// </summary>
    public static (IReadOnlyList<BenchToken> Tokens, string ConfigPath, string Root) CreateTokens(int count)
    {
        var root = Path.Combine(Path.GetTempPath(), "kms-bench-" + Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(4)));
        var tokens = Path.Combine(root, "tokens");
        Directory.CreateDirectory(tokens);
        var config = Path.Combine(root, "softhsm2.conf");
        File.WriteAllText(config, File.ReadAllText(Path.Combine(RepositoryRoot, "hsm-config", "softhsm2.conf.template")).Replace("@TOKEN_DIR@", tokens, StringComparison.Ordinal));
        var environment = new Dictionary<string, string> { ["SOFTHSM2_CONF"] = config };
        var created = new List<BenchToken>();
        for (var i = 0; i < count; i++)
        {
            var label = $"bench-{i}";
            var pin = Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(8));
            HsmTokenSetup.InitializeToken(ModulePath, label, pin + "-so", pin, environment);
            var pinFile = Path.Combine(root, label + ".pin");
            File.WriteAllText(pinFile, pin + "\n");
            created.Add(new BenchToken(new HsmOptions { ModulePath = ModulePath, ModuleEnvironment = environment, TokenLabel = label, PinFile = pinFile }, pin));
        }

        return (created, config, root);
    }

    private static string FindRoot()
    {
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
        {
            if (File.Exists(Path.Combine(dir.FullName, "Kms.sln")))
            {
                return dir.FullName;
            }
        }

        // BenchmarkDotNet runs benchmarks from a generated project under bin/: fall back to the working directory.
        return Directory.GetCurrentDirectory();
    }
}

/// <summary>A token made for a benchmark run: its adapter options (production mode, PIN in a file) and the PIN.</summary>
internal sealed record BenchToken(HsmOptions Options, string Pin)
{
    /// <summary>The label only: the PIN never reaches a log or the console.</summary>
    public override string ToString() => Options.TokenLabel ?? "";
}
