using System.Text.Json;

using Xunit;

namespace Kms.Testing;

/// <summary>
/// A fact over the Wycheproof vectors (not shipped with the project: read from
/// <c>KMS_WYCHEPROOF_DIR</c>, else <c>../shared/vectors/wycheproof</c> beside the repository,
/// which .ci/run uses). Where neither exists the test is reported skipped with the reason —
/// never silently passed; a vector file missing from the folder fails the test.
/// </summary>
public sealed class WycheproofFactAttribute : FactAttribute
{
    public WycheproofFactAttribute()
    {
        if (string.IsNullOrEmpty(Wycheproof.Directory))
        {
            Skip = "no Wycheproof vectors: set KMS_WYCHEPROOF_DIR or put them in ../shared/vectors/wycheproof";
        }
    }
}

/// <summary>Reads Wycheproof test files.</summary>
public static class Wycheproof
{
    /// <summary>The vectors' folder: <c>KMS_WYCHEPROOF_DIR</c>, else <c>../shared/vectors/wycheproof</c> beside the repository; null when neither is set or present.</summary>
    public static string? Directory =>
        Environment.GetEnvironmentVariable("KMS_WYCHEPROOF_DIR") is { Length: > 0 } set ? set
        : Path.GetFullPath(Path.Combine(RepositoryPaths.Root, "..", "shared", "vectors", "wycheproof")) is var beside && System.IO.Directory.Exists(beside) ? beside
        : null;

    /// <summary>A whole vector file; a missing file fails the test.</summary>
    public static JsonElement Load(string file)
    {
        var path = Path.Combine(Directory ?? throw new InvalidOperationException("no Wycheproof vectors (KMS_WYCHEPROOF_DIR)"), file);
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
        var path = Path.Combine(Directory ?? throw new InvalidOperationException("KMS_WYCHEPROOF_DIR is not set"), file);
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
