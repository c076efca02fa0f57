using System.Collections;
using System.Globalization;
using System.Reflection;
using System.Text;
using System.Text.RegularExpressions;
using Kms.Server.Hosting;
using Kms.Testing;
using Microsoft.Extensions.Configuration;

namespace Kms.Server.Tests;

/// <summary>
/// SettingRanges: every time span and number the server binds has a row (the options classes are
/// walked, so a new numeric setting without one fails here), each row holds its setting's default,
/// each rule between two settings is refused naming both, and docs/deployment.md shows the table.
/// </summary>
public sealed partial class SettingRangesTests
{
    // Read one by one with GetValue (a typed read) in src/Kms.Server, with the default the server passes.
    private static readonly Dictionary<string, object> DirectReads = new(StringComparer.Ordinal)
    {
        ["Storage:MetadataCacheCapacity"] = Kms.Storage.SqlStore.DefaultMetadataCacheCapacity,
        ["Lifecycle:JobInterval"] = LifecycleWorkerOptions.DefaultInterval,
    };

    [Fact]
    public void EveryNumericSettingTheServerBinds_HasARow()
    {
        var settings = NumericSettings().Select(s => s.Setting).ToList();
        Assert.True(settings.Count > 60, $"only {settings.Count} numeric settings found: {string.Join(", ", settings)}");
        var rows = SettingRanges.Settings.Select(Shape).ToHashSet(StringComparer.Ordinal);
        var missing = settings.Where(s => !rows.Contains(Shape(s))).ToList();
        Assert.True(missing.Count == 0, "numeric settings without a row in SettingRanges:\n" + string.Join("\n", missing));

        // And no row for a setting nothing binds (a rename left behind).
        var bound = settings.Select(Shape).ToHashSet(StringComparer.Ordinal);
        var stale = SettingRanges.Settings.Where(s => !bound.Contains(Shape(s))).ToList();
        Assert.True(stale.Count == 0, "rows in SettingRanges for settings no options class has:\n" + string.Join("\n", stale));
    }

    // The walk above starts from the sections ConfigurationDocTests lists: every options class
    // src/Kms.Server binds (GetSection("…").Get<T>()) must be among them, and every typed read of a
    // single key among DirectReads, or a new one's numbers would go unwalked.
    [Fact]
    public void EveryBoundSectionAndTypedRead_IsWalked()
    {
        var sources = Directory.EnumerateFiles(RepositoryPaths.Of("src", "Kms.Server"), "*.cs", SearchOption.AllDirectories)
            .Where(f => !f.Contains($"{Path.DirectorySeparatorChar}obj{Path.DirectorySeparatorChar}", StringComparison.Ordinal))
            .Select(File.ReadAllText)
            .ToList();
        var sections = sources.SelectMany(s => SectionBinding().Matches(s)).Select(m => (Section: m.Groups[1].Value, Type: m.Groups[2].Value)).Distinct().ToList();
        Assert.True(sections.Count >= 9, $"only {sections.Count} section bindings found");
        var unwalked = sections
            .Where(b => !ConfigurationDocTests.Sections.Any(s => s.Section == b.Section && s.Types.Any(t => t.Name == b.Type)))
            .Select(b => $"{b.Section} as {b.Type}")
            .ToList();
        Assert.True(unwalked.Count == 0, "sections bound in src/Kms.Server that ConfigurationDocTests.Sections lacks:\n" + string.Join("\n", unwalked));

        var typedReads = sources.SelectMany(s => TypedRead().Matches(s)).Select(m => m.Groups[1].Value).Distinct().ToList();
        Assert.NotEmpty(typedReads);
        Assert.All(typedReads, key => Assert.True(DirectReads.ContainsKey(key), $"{key} is read with GetValue in src/Kms.Server; add it to DirectReads"));
    }

    // Each range holds its setting's default: a start without the setting is never refused by it.
    [Fact]
    public void EachSettingAtItsDefault_NotRefused()
    {
        var checkedCount = 0;
        foreach (var (setting, value) in NumericSettings())
        {
            if (value is null)
            {
                continue; // unset by default (Hsm:RecycleAfterDestroyedObjects: the profile's; a tenant's override: the deployment's)
            }

            var configuration = Configuration((Concrete(setting), Text(value)));
            SettingRanges.Check(configuration);
            checkedCount++;
        }

        Assert.True(checkedCount > 55, $"only {checkedCount} defaults checked");
        SettingRanges.Check(Configuration()); // the rules hold between the defaults
    }

    // Settings under a name (a tenant's override, an issuer) are checked for each one given.
    [Theory]
    [InlineData("Kms:Quotas:Tenants:acme:Burst", "0", "Kms:Quotas:Tenants:acme:Burst (0) must be at least 1 and finite: it is this tenant's largest burst")]
    [InlineData("Kms:Jwt:Issuers:1:MaxLifetime", "00:00:00", "Kms:Jwt:Issuers:1:MaxLifetime (00:00:00) must be more than 00:00:00 and at most 7.00:00:00")]
    [InlineData("Kms:Jwt:Issuers:0:MaxLifetime", "8.00:00:00", "Kms:Jwt:Issuers:0:MaxLifetime (8.00:00:00) must be more than 00:00:00 and at most 7.00:00:00")]
    [InlineData("Kms:Quotas:OperationsPerSecond", "NaN", "Kms:Quotas:OperationsPerSecond (NaN) must be more than 0 and finite")]
    [InlineData("Kms:Transport:KeepAliveTimeout", "00:00:00", "Kms:Transport:KeepAliveTimeout (00:00:00) must be more than 00:00:00 and at most 01:00:00")]
    [InlineData("Storage:Postgres:NodeNameWait", "00:05:01", "Storage:Postgres:NodeNameWait (00:05:01) must be at least 00:00:00 and at most 00:05:00")]
    [InlineData("Kms:PageTokenLifetime", "00:00:00.5000000", "Kms:PageTokenLifetime (00:00:00.5000000) must be at least 00:00:01")]
    public void ASettingOutOfItsRange_RefusedNamingTheSettingItsValueAndItsRange(string setting, string value, string says)
    {
        var other = setting.StartsWith("Kms:Jwt:Issuers:1", StringComparison.Ordinal) ? [("Kms:Jwt:Issuers:0:MaxLifetime", "01:00:00")] : Array.Empty<(string, string)>();
        var refusal = Assert.Throws<InvalidOperationException>(() => SettingRanges.Check(Configuration([.. other, (setting, value)])));
        Assert.StartsWith(says, refusal.Message, StringComparison.Ordinal);
    }

    // Each setting alone in range, the pair not: refused naming both settings and both values.
    // Before, each started and misbehaved once it served (SettingRanges.Rules says how).
    [Theory]
    [MemberData(nameof(BrokenRules))]
    public void TwoSettingsInRange_ThatBreakARule_RefusedNamingBoth(string setting, string value, string says)
    {
        var refusal = Assert.Throws<InvalidOperationException>(() => SettingRanges.Check(Configuration((setting, value))));
        Assert.StartsWith(says, refusal.Message, StringComparison.Ordinal);
    }

    /// <summary>One setting given (the other at its default) that breaks a rule, and the refusal's start.</summary>
    public static TheoryData<string, string, string> BrokenRules => new()
    {
        { "Kms:MaxRequestBytesInFlightPerTenant", "1000", "Kms:MaxRequestBytesInFlightPerTenant (1000) must be at least Kms:MaxRequestBytes (5242880): " },
        { "Kms:Overload:QueueDelayTarget", "00:00:01", "Kms:Overload:Window (00:00:00.5000000) must be longer than Kms:Overload:QueueDelayTarget (00:00:01): " },
        { "UsageLimits:SoftBound", "4294967296", "UsageLimits:SoftBound (4294967296) must be less than UsageLimits:HardBound (2147483648): " },
        { "Lifecycle:MinWaitingPeriod", "60.00:00:00", "Lifecycle:MinWaitingPeriod (60.00:00:00) must be at most Lifecycle:MaxWaitingPeriod (30.00:00:00): " },
        { "Lifecycle:DefaultWaitingPeriod", "1.00:00:00", "Lifecycle:DefaultWaitingPeriod (1.00:00:00) must be at least Lifecycle:MinWaitingPeriod (7.00:00:00): " },
        { "Lifecycle:DefaultWaitingPeriod", "90.00:00:00", "Lifecycle:DefaultWaitingPeriod (90.00:00:00) must be at most Lifecycle:MaxWaitingPeriod (30.00:00:00): " },
        { "Lifecycle:MaxRotationPeriod", "12:00:00", "Lifecycle:MinRotationPeriod (1.00:00:00) must be at most Lifecycle:MaxRotationPeriod (12:00:00): " },
    };

    // The exceptions a rule makes: a target of 0 turns shedding by delay off (any window); pairs
    // moved together pass. Lifecycle:ClockJumpAllowance against Lifecycle:JobInterval is advice in
    // the allowance's row, not a rule: an interval of an hour or a day with the default allowance
    // (an hour) was valid before, and the tests that keep the lifecycle quiet use one.
    [Theory]
    [InlineData("Kms:Overload:QueueDelayTarget", "00:00:00", "Kms:Overload:Window", "00:00:00.0010000")]
    [InlineData("Kms:Overload:QueueDelayTarget", "00:00:01", "Kms:Overload:Window", "00:00:02")]
    [InlineData("UsageLimits:SoftBound", "1000", "UsageLimits:HardBound", "1001")]
    [InlineData("Lifecycle:DefaultWaitingPeriod", "7.00:00:00", "Lifecycle:MinWaitingPeriod", "7.00:00:00")]
    public void TwoSettingsThatKeepTheRule_NotRefused(string setting, string value, string other, string otherValue) =>
        SettingRanges.Check(Configuration((setting, value), (other, otherValue)));

    [Theory]
    [InlineData("01:00:00")]
    [InlineData("1.00:00:00")]
    public void JobIntervalOfAnHourOrADay_WithTheDefaultClockJumpAllowance_NotRefused(string interval) =>
        SettingRanges.Check(Configuration(("Lifecycle:JobInterval", interval)));

    [Fact]
    public void Doc_SettingRangesTables_MatchSettingRanges()
    {
        var path = RepositoryPaths.Of("docs", "deployment.md");
        var text = File.ReadAllText(path);
        var updated = Replace(Replace(text, "setting-ranges", RangesTable()), "setting-rules", RulesTable());
        if (updated != text && Environment.GetEnvironmentVariable("KMS_UPDATE_DOCS") == "1")
        {
            File.WriteAllText(path, updated);
            return;
        }

        Assert.True(updated == text, "docs/deployment.md's setting ranges are out of date with SettingRanges (run the tests once with KMS_UPDATE_DOCS=1)");
    }

    private static string RangesTable()
    {
        var builder = new StringBuilder("| setting | least | most | what it is |\n|---|---|---|---|\n");
        foreach (var (setting, least, most, what) in SettingRanges.Table.OrderBy(r => r.Setting, StringComparer.Ordinal))
        {
            builder.Append(CultureInfo.InvariantCulture, $"| `{setting}` | {least} | {(most.Length == 0 ? "no bound" : most)} | {what} |\n");
        }

        return builder.ToString();
    }

    private static string RulesTable()
    {
        var builder = new StringBuilder("| setting | must be | the other setting | why |\n|---|---|---|---|\n");
        foreach (var (setting, relation, other, why) in SettingRanges.RuleTable)
        {
            builder.Append(CultureInfo.InvariantCulture, $"| `{setting}` | {relation} | `{other}` | {why} |\n");
        }

        return builder.ToString();
    }

    private static string Replace(string text, string name, string generated)
    {
        var start = $"<!-- generated:{name} -->\n";
        const string end = "<!-- /generated -->";
        var from = text.IndexOf(start, StringComparison.Ordinal);
        var to = from < 0 ? -1 : text.IndexOf(end, from, StringComparison.Ordinal);
        Assert.True(from >= 0 && to > from, $"docs/deployment.md lacks the block {start.Trim()} … {end}");
        return string.Concat(text.AsSpan(0, from + start.Length), generated, text.AsSpan(to));
    }

    /// <summary>
    /// Every time span and number the server binds, with its default (null: unset by default): the
    /// public settable properties of the options classes, walked into nested options, a dictionary's
    /// values (<c>{…}</c>) and a list's items (<c>{N}</c>); and the keys read one by one.
    /// </summary>
    private static IEnumerable<(string Setting, object? Default)> NumericSettings()
    {
        foreach (var (section, types) in ConfigurationDocTests.Sections)
        {
            foreach (var type in types)
            {
                foreach (var found in Walk(section, type, Activator.CreateInstance(type, nonPublic: true)))
                {
                    yield return found;
                }
            }
        }

        foreach (var (key, value) in DirectReads)
        {
            yield return (key, value);
        }
    }

    private static IEnumerable<(string Setting, object? Default)> Walk(string path, Type type, object? instance)
    {
        foreach (var property in type.GetProperties(BindingFlags.Public | BindingFlags.Instance).Where(p => p.SetMethod is { IsPublic: true }))
        {
            var setting = $"{path}:{property.Name}";
            var propertyType = Nullable.GetUnderlyingType(property.PropertyType) ?? property.PropertyType;
            var value = instance is null ? null : property.GetValue(instance);
            if (IsNumeric(propertyType))
            {
                yield return (setting, value);
            }
            else if (propertyType.IsGenericType && propertyType.GetGenericTypeDefinition() == typeof(Dictionary<,>))
            {
                foreach (var found in WalkItems($"{setting}:{{name}}", propertyType.GetGenericArguments()[1]))
                {
                    yield return found;
                }
            }
            else if (propertyType.IsGenericType && propertyType.GetGenericTypeDefinition() == typeof(List<>))
            {
                foreach (var found in WalkItems($"{setting}:{{N}}", propertyType.GetGenericArguments()[0]))
                {
                    yield return found;
                }
            }
            else if (propertyType.IsClass && propertyType.Namespace?.StartsWith("Kms.", StringComparison.Ordinal) == true)
            {
                foreach (var found in Walk(setting, propertyType, value))
                {
                    yield return found;
                }
            }
            else if (propertyType != typeof(string) && propertyType != typeof(bool) && !propertyType.IsEnum && typeof(IEnumerable).IsAssignableFrom(propertyType))
            {
                throw new InvalidOperationException($"{setting}: a collection this walk does not know ({propertyType})");
            }
        }
    }

    // An item of a dictionary or list: numeric itself (its default unknown), or an options class whose defaults are a new one's.
    private static IEnumerable<(string Setting, object? Default)> WalkItems(string path, Type item) =>
        IsNumeric(Nullable.GetUnderlyingType(item) ?? item) ? [(path, null)]
        : item == typeof(string) ? []
        : Walk(path, item, Activator.CreateInstance(item));

    private static bool IsNumeric(Type type) =>
        type == typeof(TimeSpan) || type == typeof(int) || type == typeof(long) || type == typeof(double) || type == typeof(float)
        || type == typeof(decimal) || type == typeof(short) || type == typeof(uint) || type == typeof(ulong) || type == typeof(ushort)
        || type == typeof(byte) || type == typeof(sbyte);

    // A {…} segment, whatever it is called.
    private static string Shape(string setting) => Placeholder().Replace(setting, "{}");

    private static string Concrete(string setting) => Placeholder().Replace(setting, "0");

    private static string Text(object value) => value switch
    {
        TimeSpan time => time.ToString("c", CultureInfo.InvariantCulture),
        IFormattable number => number.ToString(null, CultureInfo.InvariantCulture),
        _ => value.ToString()!,
    };

    private static IConfiguration Configuration(params (string Key, string Value)[] settings) =>
        new ConfigurationBuilder().AddInMemoryCollection(settings.Select(s => new KeyValuePair<string, string?>(s.Key, s.Value))).Build();

    [GeneratedRegex(@"\{[^}]*\}")]
    private static partial Regex Placeholder();

    [GeneratedRegex(@"GetSection\(""([A-Za-z:]+)""\)\.Get<([A-Za-z]+)>\(\)")]
    private static partial Regex SectionBinding();

    [GeneratedRegex(@"\.GetValue(?:<[^>]+>)?\(""([A-Za-z:]+)""")]
    private static partial Regex TypedRead();
}
