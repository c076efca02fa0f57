using System.Globalization;
using System.Text;

namespace Kms.Core.Quorum;

/// <summary>
/// The canonical, human-readable text of a quorum request: exactly what an officer reads on
/// their own machine and signs (ECDSA P-256, SHA-256, over its UTF-8 bytes), and exactly what
/// the server recomputes from its stored request to verify the signature. The CLI and the
/// server run this same code (Kms.Client references Kms.Core for it). docs/quorum.md
/// specifies it byte for byte.
/// </summary>
/// <remarks>
/// <para>Lines end with LF, the last one included. The first line is <see cref="FormatTag"/>;
/// then one <c>field: value</c> line per field in a fixed order; then one
/// <c>param key: value</c> line per parameter, sorted by key (ordinal).</para>
/// <para>The text is pure printable ASCII: every character of a value outside U+0020–U+007E,
/// and the backslash, is written as an escape (<c>\\</c>, <c>\u{XXXX}</c>), so no value can
/// start a line of its own, hide text with control or bidirectional characters, or pass a
/// look-alike letter for another. Parameter keys are restricted to <c>[a-z0-9._:-]</c>.</para>
/// </remarks>
public static class QuorumRendering
{
    /// <summary>The first line of every rendering; a new format gets a new tag.</summary>
    public const string FormatTag = "kms quorum approval v1";

    /// <summary>How a deployment-wide request shows its tenant.</summary>
    public const string DeploymentWide = "(deployment)";

    /// <summary>Longest parameter key.</summary>
    public const int MaxParameterKeyLength = 128;

    /// <summary>
    /// The first line of an approval statement (<see cref="Statement"/>): the rendering's lines
    /// under this tag, and a last line <c>signed: time</c> — the officer's time of signing, so
    /// that the time an approval was made is signed too.
    /// </summary>
    public const string TimedFormatTag = "kms quorum approval v2";

    /// <summary>The text an officer reads: the request's fields (what an untimed approval signed).</summary>
    /// <exception cref="ArgumentException">A parameter key outside <c>[a-z0-9._:-]</c>, keys out of order or repeated, or a value that is not valid UTF-16.</exception>
    public static string Render(QuorumRequest request) => Lines(request, FormatTag).ToString();

    /// <summary>
    /// What an officer signs to approve <paramref name="request"/> at <paramref name="signTime"/>:
    /// <see cref="TimedFormatTag"/>, the lines of <see cref="Render"/> after its first, and
    /// <c>signed: yyyy-MM-ddTHH:mm:ss.fffZ</c>. The tag tells it from a rendering, so a signature
    /// over one never verifies as the other.
    /// </summary>
    /// <exception cref="ArgumentException">As for <see cref="Render"/>.</exception>
    public static string Statement(QuorumRequest request, DateTimeOffset signTime) =>
        Lines(request, TimedFormatTag).Append("signed: ").Append(Time(signTime)).Append('\n').ToString();

    /// <summary>The UTF-8 bytes of <see cref="Statement"/>: what a timed approval signs.</summary>
    public static byte[] StatementBytes(QuorumRequest request, DateTimeOffset signTime) => Encoding.UTF8.GetBytes(Statement(request, signTime));

    /// <summary>A time as the rendering shows it: truncated to milliseconds, in UTC.</summary>
    public static DateTimeOffset ToMilliseconds(DateTimeOffset time) => DateTimeOffset.FromUnixTimeMilliseconds(time.ToUnixTimeMilliseconds());

    private static StringBuilder Lines(QuorumRequest request, string tag)
    {
        ArgumentNullException.ThrowIfNull(request);
        var text = new StringBuilder(512);
        text.Append(tag).Append('\n');
        Line(text, "id", request.Id.Value);
        Line(text, "operation", QuorumOperations.NameOf(request.Operation));
        Line(text, "tenant", request.Tenant is { } tenant ? tenant.Value : DeploymentWide);
        Line(text, "domain-kcv", Escape(request.DomainKcv));
        Line(text, "officer-set", string.Create(CultureInfo.InvariantCulture, $"{request.OfficerSetSequence} {Escape(request.OfficerSetHash)}"));
        Line(text, "requested-by", Escape(request.RequestedBy));
        Line(text, "created", Time(request.CreateTime));
        Line(text, "expires", Time(request.ExpireTime));
        string? previous = null;
        foreach (var (key, value) in request.Parameters)
        {
            if (!IsParameterKey(key))
            {
                throw new ArgumentException($"parameter key '{Escape(key)}' is not 1 to {MaxParameterKeyLength} of [a-z0-9._:-] starting with a letter or digit", nameof(request));
            }

            if (previous is not null && string.CompareOrdinal(previous, key) >= 0)
            {
                throw new ArgumentException($"parameters are not sorted by key without repeats ('{previous}' before '{key}')", nameof(request));
            }

            previous = key;
            text.Append("param ").Append(key).Append(": ").Append(Escape(value)).Append('\n');
        }

        return text;
    }

    /// <summary>The UTF-8 bytes of <see cref="Render"/>: what is signed.</summary>
    public static byte[] Bytes(QuorumRequest request) => Encoding.UTF8.GetBytes(Render(request));

    /// <summary>Times as rendered: UTC with milliseconds, <c>2026-11-29T12:00:00.000Z</c>.</summary>
    public static string Time(DateTimeOffset time) => time.UtcDateTime.ToString("yyyy-MM-dd'T'HH:mm:ss.fff'Z'", CultureInfo.InvariantCulture);

    /// <summary>Whether a parameter key is allowed: 1 to 128 of <c>[a-z0-9._:-]</c>, starting with a letter or digit.</summary>
    public static bool IsParameterKey(string? key) =>
        key is { Length: > 0 and <= MaxParameterKeyLength }
        && (char.IsAsciiLetterLower(key[0]) || char.IsAsciiDigit(key[0]))
        && key.All(c => char.IsAsciiLetterLower(c) || char.IsAsciiDigit(c) || c is '.' or '_' or ':' or '-');

    /// <summary>
    /// A value as rendered: printable ASCII (U+0020–U+007E) as is except the backslash
    /// (<c>\\</c>); every other code point as <c>\u{XXXX}</c> (hex, at least four digits).
    /// </summary>
    /// <exception cref="ArgumentException">The value is not valid UTF-16 (a lone surrogate).</exception>
    public static string Escape(string value)
    {
        ArgumentNullException.ThrowIfNull(value);
        if (value.All(c => c is >= ' ' and <= '~' and not '\\'))
        {
            return value;
        }

        var escaped = new StringBuilder(value.Length + 16);
        var index = 0;
        while (index < value.Length)
        {
            if (Rune.DecodeFromUtf16(value.AsSpan(index), out var rune, out var used) != System.Buffers.OperationStatus.Done)
            {
                throw new ArgumentException("a rendered value must be valid UTF-16", nameof(value));
            }

            index += used;
            if (rune.Value == '\\')
            {
                escaped.Append(@"\\");
            }
            else if (rune.Value is >= ' ' and <= '~')
            {
                escaped.Append((char)rune.Value);
            }
            else
            {
                escaped.Append(CultureInfo.InvariantCulture, $"\\u{{{rune.Value:X4}}}");
            }
        }

        return escaped.ToString();
    }

    private static void Line(StringBuilder text, string field, string value) => text.Append(field).Append(": ").Append(value).Append('\n');
}
