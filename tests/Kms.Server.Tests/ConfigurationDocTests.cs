using System.Globalization;
using System.Reflection;
using System.Text.RegularExpressions;
using Kms.Core.Audit;
using Kms.Core.Services;
using Kms.Hsm;
using Kms.Server.Audit;
using Kms.Server.Hosting;
using Kms.Storage.Postgres;
using Kms.Storage.Sqlite;
using Kms.Testing;

namespace Kms.Server.Tests;

/// <summary>
/// Every configuration key the README and docs/*.md name (<c>Kms:…</c>, <c>Hsm:…</c>,
/// <c>Storage:…</c>, <c>Lifecycle:…</c>, <c>UsageLimits:…</c>, also as <c>Section__Key</c>) is one
/// the server reads, spelled as the options class spells it, and the README's configuration
/// table gives the options' own defaults. A key that is renamed or removed in code, or a
/// default that changes, fails here until the docs follow.
/// </summary>
public sealed partial class ConfigurationDocTests
{
    /// <summary>Configuration sections and the options classes the server binds them to (KmsServerApp).</summary>
    internal static readonly (string Section, Type[] Types)[] Sections =
    [
        ("Kms:Audit", [typeof(AuditHostOptions), typeof(AuditOptions)]),
        ("Kms:Alerts", [typeof(SecurityAlertOptions)]),
        ("Kms", [typeof(KmsServerOptions)]),
        ("Hsm", [typeof(HsmOptions)]),
        ("Storage:Sqlite", [typeof(SqliteOptions)]),
        ("Storage:Postgres", [typeof(PostgresOptions)]),
        ("Storage:ChangeFeed", [typeof(ChangeFeedOptions)]),
        ("Lifecycle", [typeof(LifecycleOptions)]),
        ("UsageLimits", [typeof(UsageLimitOptions)]),
    ];

    [Fact]
    public void EveryDocumentedKey_IsReadByTheServer_WithThatSpelling()
    {
        var readDirectly = KeysReadDirectly();
        var mentions = DocumentFiles()
            .SelectMany(file => Mentions(File.ReadAllText(file)).Select(key => (File: Path.GetFileName(file), Key: key)))
            .Distinct()
            .ToList();
        Assert.True(mentions.Count > 100, $"only {mentions.Count} configuration keys found in the docs");

        var unknown = mentions
            .Where(m => !readDirectly.Contains(m.Key) && Resolve(m.Key) is null)
            .Select(m => $"{m.File}: {m.Key}")
            .ToList();
        Assert.True(unknown.Count == 0, "the docs name configuration keys no options class or configuration read has:\n" + string.Join("\n", unknown));
    }

    [Fact]
    public void ReadmeConfigurationTable_DefaultsAreTheOptionsDefaults()
    {
        var readme = File.ReadAllLines(RepositoryPaths.Of("README.md"));
        var readDirectly = KeysReadDirectly();
        var checkedCount = 0;
        var wrong = new List<string>();
        foreach (var line in readme.Where(l => l.StartsWith("| `", StringComparison.Ordinal)))
        {
            var cells = line.Split('|').Select(c => c.Trim()).ToArray();
            if (cells.Length < 4)
            {
                continue;
            }

            var keys = ReadmeKeys(cells[1]);
            var defaults = cells[2].Split(" / ");
            if (keys.Count == 0 || keys.Count != defaults.Length)
            {
                continue;
            }

            for (var i = 0; i < keys.Count; i++)
            {
                if (keys[i] is { } named && Resolve(named) is null && !readDirectly.Contains(named))
                {
                    wrong.Add($"{named}: no options class or configuration read has it");
                    continue;
                }

                if (keys[i] is not { } key || Resolve(key)?.Property is not { } property || ParseDefault(defaults[i], property.PropertyType) is not { } documented)
                {
                    continue;
                }

                checkedCount++;
                var actual = property.GetValue(Activator.CreateInstance(property.DeclaringType!));
                if (!Equals(Normalise(actual), Normalise(documented)))
                {
                    wrong.Add($"{key}: README says {defaults[i]}, the options say {actual}");
                }
            }
        }

        Assert.True(checkedCount > 25, $"only {checkedCount} defaults of the README's table could be checked");
        Assert.True(wrong.Count == 0, "README configuration defaults differ from the code:\n" + string.Join("\n", wrong));
    }

    /// <summary>README.md and docs/*.md, but not docs/benchmarks.md: a journal that also names settings since taken out.</summary>
    private static IEnumerable<string> DocumentFiles() =>
        Directory.EnumerateFiles(RepositoryPaths.Of("docs"), "*.md")
            .Where(f => Path.GetFileName(f) != "benchmarks.md")
            .Prepend(RepositoryPaths.Of("README.md"))
            .Append(RepositoryPaths.Of("SECURITY.md"));

    /// <summary>Keys as written, <c>Section__Key</c> turned into <c>Section:Key</c>; <c>{A, B}</c> expanded.</summary>
    private static IEnumerable<string> Mentions(string text)
    {
        foreach (Match match in ColonKey().Matches(text))
        {
            foreach (var key in Expand(match.Value))
            {
                yield return key;
            }
        }

        foreach (Match match in EnvironmentKey().Matches(text))
        {
            yield return match.Value.Replace("__", ":", StringComparison.Ordinal);
        }
    }

    private static IEnumerable<string> Expand(string key)
    {
        var brace = key.IndexOf('{', StringComparison.Ordinal);
        var close = brace < 0 ? -1 : key.IndexOf('}', brace);
        if (close < 0 || !key[brace..close].Contains(',', StringComparison.Ordinal))
        {
            return [key];
        }

        return key[(brace + 1)..close].Split(',').SelectMany(part => Expand(key[..brace] + part.Trim() + key[(close + 1)..]));
    }

    /// <summary>
    /// Keys read one by one (<c>configuration["Storage:Provider"]</c>, <c>GetValue("Lifecycle:JobInterval", …)</c>):
    /// a literal in a configuration read in src/Kms.Server.
    /// </summary>
    private static HashSet<string> KeysReadDirectly() =>
        Directory.EnumerateFiles(RepositoryPaths.Of("src", "Kms.Server"), "*.cs", SearchOption.AllDirectories)
            .Where(f => !f.Contains($"{Path.DirectorySeparatorChar}obj{Path.DirectorySeparatorChar}", StringComparison.Ordinal))
            .SelectMany(f => DirectRead().Matches(File.ReadAllText(f)).Select(m => m.Groups[1].Value))
            .ToHashSet(StringComparer.Ordinal);

    /// <summary>
    /// What a key names: null when no options class has it with that exact spelling; else the
    /// property (null for a whole section, or a key under a dictionary's value of type string).
    /// </summary>
    private static Resolution? Resolve(string key)
    {
        var (section, types) = Sections.FirstOrDefault(s => key == s.Section || key.StartsWith(s.Section + ":", StringComparison.Ordinal));
        if (section is null)
        {
            return null;
        }

        var segments = key.Length == section.Length ? [] : key[(section.Length + 1)..].Split(':');
        return types.Select(type => Walk(type, segments)).FirstOrDefault(r => r is not null);
    }

    private static Resolution? Walk(Type type, string[] segments)
    {
        PropertyInfo? last = null;
        var current = type;
        foreach (var segment in segments)
        {
            if (segment == "…")
            {
                return new(last);
            }

            if (current.IsGenericType && current.GetGenericTypeDefinition() == typeof(Dictionary<,>))
            {
                current = current.GetGenericArguments()[1];
                last = null;
                continue;
            }

            if (current.IsGenericType && current.GetGenericTypeDefinition() == typeof(List<>))
            {
                if (segment != "N" && !IsPlaceholder(segment) && !segment.All(char.IsAsciiDigit))
                {
                    return null;
                }

                current = current.GetGenericArguments()[0];
                last = null;
                continue;
            }

            var property = IsPlaceholder(segment) ? null : current.GetProperty(segment, BindingFlags.Public | BindingFlags.Instance);
            if (property?.SetMethod is not { IsPublic: true })
            {
                return null;
            }

            last = property;
            current = Nullable.GetUnderlyingType(property.PropertyType) ?? property.PropertyType;
        }

        return new(last);
    }

    private static bool IsPlaceholder(string segment) => segment.StartsWith('{') && segment.EndsWith('}');

    /// <summary>
    /// The keys of a README table row's first cell: <c>`Kms:Quotas:OperationsPerSecond` / `Burst`</c> is
    /// two keys of one section; an item that is not a key (<c>--urls</c>, <c>KMS_DATA_DIR</c>) is null.
    /// </summary>
    private static List<string?> ReadmeKeys(string cell)
    {
        var items = cell.Split(" / ").Select(i => i.Trim().Trim('`')).ToList();
        var first = items.FirstOrDefault(i => Sections.Any(s => i.StartsWith(s.Section + ":", StringComparison.Ordinal)));
        if (first is null || items.Any(i => i.Contains('`', StringComparison.Ordinal) || i.Contains(", ", StringComparison.Ordinal)))
        {
            return [];
        }

        var section = first[..first.LastIndexOf(':')];
        return items.Select(i =>
                i.Contains(':', StringComparison.Ordinal) ? i
                : BareKey().IsMatch(i) ? $"{section}:{i}"
                : null)
            .ToList();
    }

    /// <summary>A README default as the property's type, or null when it is prose ("cores, at least 2", "dev: …").</summary>
    private static object? ParseDefault(string text, Type type)
    {
        type = Nullable.GetUnderlyingType(type) ?? type;
        text = Parenthetical().Replace(text, "").Trim();
        if (text.StartsWith('`') && text.EndsWith('`') && text.Length > 2 && !text.Contains('{', StringComparison.Ordinal))
        {
            var inner = text[1..^1];
            return type == typeof(string) ? inner
                : type == typeof(bool) && bool.TryParse(inner, out var flag) ? flag
                : null;
        }

        if (Duration().Match(text) is { Success: true } duration && type == typeof(TimeSpan))
        {
            var n = double.Parse(duration.Groups[1].Value, CultureInfo.InvariantCulture);
            return duration.Groups[2].Value switch
            {
                "ms" => TimeSpan.FromMilliseconds(n),
                "s" => TimeSpan.FromSeconds(n),
                "min" or "minutes" => TimeSpan.FromMinutes(n),
                "h" or "hours" => TimeSpan.FromHours(n),
                _ => TimeSpan.FromDays(n),
            };
        }

        if (PowerOfTwo().Match(text) is { Success: true } power && type == typeof(long))
        {
            return 1L << int.Parse(power.Groups[1].Value, CultureInfo.InvariantCulture);
        }

        if (Number().IsMatch(text))
        {
            var n = double.Parse(text.Replace(",", "", StringComparison.Ordinal), CultureInfo.InvariantCulture);
            return type == typeof(TimeSpan) ? (n == 0 ? TimeSpan.Zero : null)
                : type == typeof(int) || type == typeof(long) || type == typeof(double) ? n
                : null;
        }

        return null;
    }

    private static object? Normalise(object? value) => value switch
    {
        int i => (double)i,
        long l => (double)l,
        _ => value,
    };

    private sealed record Resolution(PropertyInfo? Property);

    [GeneratedRegex(@"(?<![A-Za-z0-9_.:-])(?:Kms|Hsm|Storage|Lifecycle|UsageLimits):(?:[A-Za-z0-9_]+|\{[^}\n]*\}|…)(?::(?:[A-Za-z0-9_]+|\{[^}\n]*\}|…))*")]
    private static partial Regex ColonKey();

    [GeneratedRegex(@"(?<![A-Za-z0-9_.])(?:Kms|Hsm|Storage|Lifecycle|UsageLimits)__[A-Za-z0-9_]+")]
    private static partial Regex EnvironmentKey();

    [GeneratedRegex(@"(?:Configuration|configuration)(?:\[|\.GetValue(?:<[^>]+>)?\()""((?:Kms|Hsm|Storage|Lifecycle|UsageLimits):[A-Za-z0-9:]+)""")]
    private static partial Regex DirectRead();

    [GeneratedRegex(@"^[A-Z][A-Za-z0-9]*[a-z][A-Za-z0-9]*$")]
    private static partial Regex BareKey();

    [GeneratedRegex(@"\s*\([^)]*\)")]
    private static partial Regex Parenthetical();

    [GeneratedRegex(@"^(\d+(?:\.\d+)?) (ms|s|min|minutes|h|hours|days?)$")]
    private static partial Regex Duration();

    [GeneratedRegex(@"^2\^(\d+)$")]
    private static partial Regex PowerOfTwo();

    [GeneratedRegex(@"^\d[\d,]*(?:\.\d+)?$")]
    private static partial Regex Number();
}
