using System.Text.RegularExpressions;
using Kms.Testing;

namespace Kms.Server.Tests;

/// <summary>SECURITY.md backs each claim with tests; a claim must not point at a test that does not exist.</summary>
public sealed partial class SecurityDocTests
{
    [Fact]
    public void EveryTestNamedInSecurityMd_Exists()
    {
        var doc = File.ReadAllText(RepositoryPaths.Of("SECURITY.md"));
        var sources = Directory.EnumerateFiles(RepositoryPaths.Of("tests"), "*.cs", SearchOption.AllDirectories)
            .Where(f => !f.Contains($"{Path.DirectorySeparatorChar}obj{Path.DirectorySeparatorChar}", StringComparison.Ordinal))
            .Select(File.ReadAllText)
            .ToList();
        var cited = TestReference().Matches(doc).Select(m => (Class: m.Groups[1].Value, Method: m.Groups[2].Value)).Distinct().ToList();
        Assert.True(cited.Count > 30, $"only {cited.Count} test references found in SECURITY.md");

        var missing = cited.Where(c =>
                !sources.Any(s => Regex.IsMatch(s, $@"\bclass {c.Class}\b")
                    && (c.Method == "*" || Regex.IsMatch(s, $@"\b{c.Method}\s*\("))))
            .Select(c => $"{c.Class}.{c.Method}")
            .ToList();
        Assert.True(missing.Count == 0, "SECURITY.md names tests that do not exist: " + string.Join(", ", missing));
    }

    [GeneratedRegex(@"`(?:[A-Za-z]+\.)*?([A-Z][A-Za-z0-9]+(?:Tests|Contract))\.([A-Za-z0-9_]+|\*)`")]
    private static partial Regex TestReference();
}
