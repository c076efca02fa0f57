using System.Text.Json;

using Xunit;

namespace Kms.Testing;

/// <summary>
/// A fact over the Wycheproof vectors in <c>KMS_WYCHEPROOF_DIR</c> (they are not shipped
/// with the project; .ci/run points it at ../shared/vectors/wycheproof). Without it the test
/// is reported skipped, with the reason — never silently passed. With it set to a folder that
/// lacks a file, the test fails.
/// </summary>
public sealed class WycheproofFactAttribute : FactAttribute
{
    public WycheproofFactAttribute()
    {
        if (string.IsNullOrEmpty(Wycheproof.Directory))
        {
            Skip = "KMS_WYCHEPROOF_DIR is not set (point it at ../shared/vectors/wycheproof; .ci/run does)";
        }
    }
}

/// <summary>Reads Wycheproof test files.</summary>
public static class Wycheproof
{
    /// <summary>The vectors' folder, from <c>KMS_WYCHEPROOF_DIR</c>.</summary>
    public static string? Directory => Environment.GetEnvironmentVariable("KMS_WYCHEPROOF_DIR");

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
