using System.Buffers.Text;
using System.Globalization;
using System.Text;
using Kms.Core.Errors;

namespace Kms.Core.Services;

/// <summary>Opaque page tokens of List RPCs: bound to the collection (parent) they were issued for.</summary>
internal static class PageToken
{
    // Above the longest name a cursor can be (a SPIFFE principal: 2,048 characters and its prefix).
    private const int MaxCursorLength = 4096;

    public static string Encode(string scope, string last) =>
        Base64Url.EncodeToString(Encoding.UTF8.GetBytes($"v1|{scope}|{last}"));

    public static string? Decode(string scope, string? token)
    {
        if (string.IsNullOrEmpty(token))
        {
            return null;
        }

        string text;
        try
        {
            text = Encoding.UTF8.GetString(Base64Url.DecodeFromChars(token));
        }
        catch (FormatException)
        {
            throw Invalid();
        }

        // The cursor is last and may itself hold '|' (a principal "cn:a|b"). It goes into a
        // query as text: a control character (PostgreSQL refuses NUL) is no cursor we issued.
        var parts = text.Split('|', 3);
        if (parts.Length != 3 || parts[0] != "v1" || parts[1] != scope || parts[2].Length is 0 or > MaxCursorLength || !Audit.AuditText.IsClean(parts[2]))
        {
            throw Invalid();
        }

        return parts[2];
    }

    /// <summary>A cursor of a row ordered by time (Unix milliseconds), then by a 16-hex-digit id: <c>{ms}:{id}</c>.</summary>
    public static string EncodeTimeAndId(string scope, DateTimeOffset time, string id) =>
        Encode(scope, string.Create(CultureInfo.InvariantCulture, $"{time.ToUnixTimeMilliseconds()}:{id}"));

    /// <summary>The cursor of <see cref="EncodeTimeAndId"/> (null for none: the first page).</summary>
    public static (DateTimeOffset Time, string Id)? DecodeTimeAndId(string scope, string? token)
    {
        if (Decode(scope, token) is not { } cursor)
        {
            return null;
        }

        var colon = cursor.IndexOf(':', StringComparison.Ordinal);
        if (colon <= 0
            || !long.TryParse(cursor.AsSpan(0, colon), NumberStyles.None, CultureInfo.InvariantCulture, out var millis)
            || millis > DateTimeOffset.MaxValue.ToUnixTimeMilliseconds()
            || cursor[(colon + 1)..] is not { Length: 16 } id
            || !id.All(char.IsAsciiHexDigitLower))
        {
            throw Invalid();
        }

        return (DateTimeOffset.FromUnixTimeMilliseconds(millis), id);
    }

    /// <summary>The effective page size: <paramref name="defaultSize"/> when 0, capped at the maximum.</summary>
    public static int Size(int pageSize, int defaultSize = Limits.DefaultPageSize)
    {
        if (pageSize < 0)
        {
            throw KmsErrors.InvalidArgument("page_size", "must not be negative");
        }

        return pageSize == 0 ? defaultSize : Math.Min(pageSize, Limits.MaxPageSize);
    }

    public static KmsException Invalid() =>
        KmsErrors.InvalidArgument("page_token", "is not a token returned by a previous List call for this parent");
}
