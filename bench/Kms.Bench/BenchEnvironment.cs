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
