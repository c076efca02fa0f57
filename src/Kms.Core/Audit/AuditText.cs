using System.Text;

namespace Kms.Core.Audit;

/// <summary>
/// A string a request supplied (a resource name, a context key), made fit for an audit event
/// before anything has validated it: at most <see cref="MaxLength"/> characters, so a caller
/// (even an unauthenticated one) cannot write megabytes per event; control characters
/// replaced by <c>?</c>, as error messages repeat names; and valid Unicode, lone surrogates
/// replaced by U+FFFD and a pair never cut in two. PostgreSQL refuses a NUL or invalid UTF-8 in a
/// text column: taken as it came, one such name failed its event's whole group commit.
/// </summary>
public static class AuditText
{
    /// <summary>Most characters kept of a request's string.</summary>
    public const int MaxLength = 512;

    /// <summary>What follows a string cut at <see cref="MaxLength"/>.</summary>
    public const string TruncatedMark = "…(truncated)";

    /// <summary><paramref name="text"/> as an audit event records it.</summary>
    public static string? FromRequest(string? text)
    {
        if (text is null)
        {
            return null;
        }

        var cut = text.Length > MaxLength
            ? MaxLength - (char.IsHighSurrogate(text[MaxLength - 1]) && char.IsLowSurrogate(text[MaxLength]) ? 1 : 0)
            : text.Length;
        if (cut == text.Length && IsClean(text))
        {
            return text;
        }

        var builder = new StringBuilder(cut + TruncatedMark.Length);
        for (var i = 0; i < cut; i++)
        {
            var c = text[i];
            if (char.IsHighSurrogate(c) && i + 1 < cut && char.IsLowSurrogate(text[i + 1]))
            {
                builder.Append(c).Append(text[++i]);
            }
            else if (char.IsSurrogate(c))
            {
                builder.Append('\uFFFD');
            }
            else
            {
                builder.Append(char.IsControl(c) ? '?' : c);
            }
        }

        return cut < text.Length ? builder.Append(TruncatedMark).ToString() : builder.ToString();
    }

    /// <summary>Whether <paramref name="text"/> has no control character and no lone surrogate.</summary>
    public static bool IsClean(string text)
    {
        ArgumentNullException.ThrowIfNull(text);
        for (var i = 0; i < text.Length; i++)
        {
            var c = text[i];
            if (char.IsControl(c))
            {
                return false;
            }

            if (char.IsSurrogate(c))
            {
                if (!char.IsHighSurrogate(c) || i + 1 == text.Length || !char.IsLowSurrogate(text[i + 1]))
                {
                    return false;
                }

                i++;
            }
        }

        return true;
    }
}
