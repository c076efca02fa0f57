using System.CommandLine.Parsing;
using System.Globalization;

namespace Kms.Cli.Infrastructure;

/// <summary>Durations on the command line: <c>90d</c>, <c>36h</c>, <c>45m</c>, <c>30s</c>.</summary>
internal static class DurationText
{
    /// <summary>A parser for an option of type <see cref="TimeSpan"/>.</summary>
    public static TimeSpan? Parse(ArgumentResult result)
    {
        ArgumentNullException.ThrowIfNull(result);
        var text = result.Tokens.Count == 1 ? result.Tokens[0].Value : "";
        if (TryParse(text, out var value))
        {
            return value;
        }

        result.AddError($"'{text}' is not a duration (a whole number and d, h, m or s, e.g. 90d)");
        return null;
    }

    public static bool TryParse(string text, out TimeSpan value)
    {
        value = default;
        if (text.Length < 2 || !long.TryParse(text.AsSpan(0, text.Length - 1), NumberStyles.None, CultureInfo.InvariantCulture, out var count) || count <= 0 || count > 36_500 * 86_400L)
        {
            return false;
        }

        TimeSpan? parsed = text[^1] switch
        {
            'd' when count <= 36_500 => TimeSpan.FromDays(count),
            'h' when count <= 36_500 * 24 => TimeSpan.FromHours(count),
            'm' when count <= 36_500 * 1440 => TimeSpan.FromMinutes(count),
            's' => TimeSpan.FromSeconds(count),
            _ => null,
        };
        value = parsed ?? default;
        return parsed is not null;
    }

    /// <summary>A duration as the shortest whole unit: <c>90d</c>, <c>36h</c>.</summary>
    public static string Format(TimeSpan value) =>
        value.Ticks % TimeSpan.TicksPerDay == 0 ? $"{value.TotalDays:0}d"
        : value.Ticks % TimeSpan.TicksPerHour == 0 ? $"{value.TotalHours:0}h"
        : value.Ticks % TimeSpan.TicksPerMinute == 0 ? $"{value.TotalMinutes:0}m"
        : $"{value.TotalSeconds:0}s";
}
