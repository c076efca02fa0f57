using System.Globalization;
using Kms.Core.Errors;

namespace Kms.Core.Names;

/// <summary>A key version's resource name: <c>tenants/{tenant}/keys/{key}/versions/{n}</c>, n from 1.</summary>
public sealed record KeyVersionName(KeyName Key, int Version)
{
    /// <summary>Parses a key version resource name.</summary>
    /// <exception cref="KmsException">InvalidArgument naming <paramref name="field"/>.</exception>
    public static KeyVersionName Parse(string? name, string field)
    {
        const string Marker = "/versions/";
        var at = name?.LastIndexOf(Marker, StringComparison.Ordinal) ?? -1;
        if (string.IsNullOrEmpty(name) || at < 0)
        {
            throw KmsErrors.InvalidArgument(field, "must have the form tenants/{tenant}/keys/{key}/versions/{n}");
        }

        var number = name[(at + Marker.Length)..];
        if (number.Length is 0 or > 9 || number[0] == '0' || !number.All(char.IsAsciiDigit))
        {
            throw KmsErrors.InvalidArgument(field, "the version must be a number from 1, without leading zeros");
        }

        return new KeyVersionName(KeyName.Parse(name[..at], field), int.Parse(number, CultureInfo.InvariantCulture));
    }

    /// <inheritdoc />
    public override string ToString() => $"{Key}/versions/{Version}";
}
