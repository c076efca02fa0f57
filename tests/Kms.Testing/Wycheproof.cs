using System.Text.Json;

using Xunit;

namespace Kms.Testing;

/// <summary>
/// A fact over the Wycheproof vectors (not shipped with the project: read from
/// <c>KMS_WYCHEPROOF_DIR</c>, else <c>../shared/vectors/wycheproof</c> beside the repository,
/// where ./test.sh and .ci/run look for them). Where neither exists the test fails, naming where it
/// looked; only <c>KMS_WYCHEPROOF_DIR=none</c>, said on purpose, has it reported skipped with that reason.
/// </summary>
public sealed class WycheproofFactAttribute : FactAttribute
{
    public WycheproofFactAttribute()
    {
        if (Wycheproof.RunWithout)
        {
            Skip = "KMS_WYCHEPROOF_DIR=none: run without the Wycheproof vectors";
        }
    }
}

/// <summary>Reads Wycheproof test files.</summary>
public static class Wycheproof
{
    private static string? Setting => Environment.GetEnvironmentVariable("KMS_WYCHEPROOF_DIR") is { Length: > 0 } set ? set : null;

    private static string Beside => Path.GetFullPath(Path.Combine(RepositoryPaths.Root, "..", "shared", "vectors", "wycheproof"));

    /// <summary>Whether the run was told to do without the vectors (<c>KMS_WYCHEPROOF_DIR=none</c>).</summary>
    public static bool RunWithout => string.Equals(Setting, "none", StringComparison.Ordinal);

    /// <summary>The vectors' folder: <c>KMS_WYCHEPROOF_DIR</c>, else <c>../shared/vectors/wycheproof</c> beside the repository; a test fails when it is not there.</summary>
    public static string Directory =>
        Setting is { } set && !RunWithout ? (System.IO.Directory.Exists(set) ? set : throw Missing($"KMS_WYCHEPROOF_DIR={set} is not a folder"))
        : System.IO.Directory.Exists(Beside) ? Beside
        : throw Missing($"KMS_WYCHEPROOF_DIR is not set and {Beside} does not exist");

    private static InvalidOperationException Missing(string why) => new(
        $"this test needs the Wycheproof vectors (C2SP/wycheproof testvectors_v1): {why}. " +
        "Put them in ../shared/vectors/wycheproof beside the repository or point KMS_WYCHEPROOF_DIR at them; " +
        "KMS_WYCHEPROOF_DIR=none reports the tests that need them as skipped instead");

    /// <summary>A whole vector file; a missing file fails the test.</summary>
    public static JsonElement Load(string file)
    {
        var path = Path.Combine(Directory, file);
        if (!File.Exists(path))
        {
            throw new InvalidOperationException($"Wycheproof vectors are required by this test and are missing: {path}");
        }

        using var document = JsonDocument.Parse(File.ReadAllText(path));
        return document.RootElement.Clone();
    }

    /// <summary>Every test of <paramref name="file"/> with its group.</summary>
    public static IEnumerable<(JsonElement Group, JsonElement Test)> Tests(string file)
    {
        var path = Path.Combine(Directory, file);
        using var document = JsonDocument.Parse(File.ReadAllText(path));
        foreach (var group in document.RootElement.GetProperty("testGroups").EnumerateArray())
        {
            foreach (var test in group.GetProperty("tests").EnumerateArray())
            {
                yield return (group.Clone(), test.Clone());
            }
        }
    }

    /// <summary>A hex field of a test.</summary>
    public static byte[] Hex(JsonElement element, string name) => Convert.FromHexString(element.GetProperty(name).GetString()!);
}
