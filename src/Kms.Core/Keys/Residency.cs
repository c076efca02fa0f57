namespace Kms.Core.Keys;

/// <summary>Residency region names (<see cref="Key.Residency"/>): 1 to 32 of <c>[a-z0-9-]</c>, starting with a letter.</summary>
public static class Residency
{
    /// <summary>Whether <paramref name="region"/> is a well-formed region name.</summary>
    public static bool IsValid(string region) =>
        region is { Length: >= 1 and <= 32 } && char.IsAsciiLetterLower(region[0]) && region.All(c => char.IsAsciiLetterLower(c) || char.IsAsciiDigit(c) || c == '-');
}
