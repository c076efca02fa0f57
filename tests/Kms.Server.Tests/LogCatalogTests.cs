using System.Text.RegularExpressions;
using Kms.Testing;

namespace Kms.Server.Tests;

/// <summary>docs/observability.md catalogs every log event id the code writes; ids are unique.</summary>
public sealed partial class LogCatalogTests
{
    [Fact]
    public void EveryLogEventId_IsUnique_AndInTheCatalog()
    {
        var events = Directory.EnumerateFiles(RepositoryPaths.Of("src"), "*.cs", SearchOption.AllDirectories)
            .Where(f => !f.Contains($"{Path.DirectorySeparatorChar}obj{Path.DirectorySeparatorChar}", StringComparison.Ordinal))
            .SelectMany(f => EventIdPattern().Matches(File.ReadAllText(f)).Select(m => (Id: int.Parse(m.Groups[1].Value, System.Globalization.CultureInfo.InvariantCulture), Level: m.Groups[2].Value, File: Path.GetFileName(f))))
            .ToList();
        Assert.True(events.Count > 20, $"only {events.Count} log events found");
        var duplicates = events.GroupBy(e => e.Id).Where(g => g.Count() > 1).Select(g => $"{g.Key} ({string.Join(", ", g.Select(e => e.File))})").ToList();
        Assert.True(duplicates.Count == 0, "event ids used twice: " + string.Join("; ", duplicates));

        var catalog = File.ReadAllText(RepositoryPaths.Of("docs", "observability.md"));
        var missing = events.Where(e => !catalog.Contains($"\n| {e.Id} | {e.Level} |", StringComparison.Ordinal)).Select(e => $"{e.Id} {e.Level} ({e.File})").ToList();
        Assert.True(missing.Count == 0, "log events missing from the catalog in docs/observability.md, or at another level there: " + string.Join(", ", missing));
    }

    [Fact]
    public void NoLogCallWithoutAnEventId()
    {
        // Serilog's own calls and ILogger's LogWarning(…) extensions carry no catalog id.
        var direct = Directory.EnumerateFiles(RepositoryPaths.Of("src"), "*.cs", SearchOption.AllDirectories)
            .Where(f => !f.Contains($"{Path.DirectorySeparatorChar}obj{Path.DirectorySeparatorChar}", StringComparison.Ordinal))
            .SelectMany(f => DirectCallPattern().Matches(File.ReadAllText(f)).Select(m => $"{Path.GetFileName(f)}: {m.Value}"))
            .ToList();
        Assert.True(direct.Count == 0, "log calls without an event id: " + string.Join("; ", direct));
    }

    [GeneratedRegex(@"EventId = (\d+), Level = LogLevel\.(\w+)")]
    private static partial Regex EventIdPattern();

    [GeneratedRegex(@"\b\w*[lL]og(ger)?\.(Verbose|Debug|Information|Warning|Error|Fatal|LogTrace|LogDebug|LogInformation|LogWarning|LogError|LogCritical)\(")]
    private static partial Regex DirectCallPattern();
}
