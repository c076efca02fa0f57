using System.Text.RegularExpressions;

namespace Kms.Server.Hosting;

/// <summary>
/// A configuration value of the wrong kind (<c>--Kms:Transport:MaxConnections=abc</c>) as a start
/// refusal that says what the setting takes: .NET's binder says only "Failed to convert
/// configuration value 'abc' at 'Kms:Transport:MaxConnections' to type 'System.Int32'."
/// </summary>
internal static partial class ConfigurationValues
{
    /// <summary>
    /// The binder's failure to convert a value, explained; null for any other exception. The value
    /// is repeated as .NET's message had it: only values of a type other than text fail to
    /// convert, and no secret setting (a PIN, a connection string) is one.
    /// </summary>
    public static InvalidOperationException? Explain(Exception failure)
    {
        if (failure is not InvalidOperationException { InnerException: not null } || BinderFailure().Match(failure.Message) is not { Success: true } match)
        {
            return null;
        }

        var (value, setting, type) = (match.Groups["value"].Value, match.Groups["setting"].Value, match.Groups["type"].Value);
        var takes = Type.GetType(type) switch
        {
            { } t when Nullable.GetUnderlyingType(t) is { } underlying => Takes(underlying),
            { } t => Takes(t),
            null => $"a value of type {type}",
        };
        return new InvalidOperationException($"{setting} is '{value}', which is not {takes}: set it to one, or remove it for its default", failure);
    }

    private static string Takes(Type type) => type switch
    {
        _ when type == typeof(int) || type == typeof(long) => "a whole number",
        _ when type == typeof(double) => "a number",
        _ when type == typeof(bool) => "true or false",
        _ when type == typeof(TimeSpan) => "a time span ([d.]hh:mm:ss, e.g. 00:00:30 for 30 seconds)",
        { IsEnum: true } => $"one of {string.Join(", ", Enum.GetNames(type))}",
        _ => $"a value of type {type.Name}",
    };

    // Microsoft.Extensions.Configuration.Binder's Error_FailedBinding (it has no exception type of its own).
    [GeneratedRegex(@"\AFailed to convert configuration value '(?<value>.*)' at '(?<setting>[^']+)' to type '(?<type>[^']+)'\.\z", RegexOptions.Singleline)]
    private static partial Regex BinderFailure();
}
