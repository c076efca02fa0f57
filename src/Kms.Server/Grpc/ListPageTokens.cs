using System.Buffers.Binary;
using System.Buffers.Text;
using System.Globalization;
using System.Security.Cryptography;
using System.Text;
using Kms.Core.Errors;
using Kms.Core.Services;

namespace Kms.Server.Grpc;

/// <summary>
/// Seals the page tokens of the List RPCs: the token the domain service issues (its cursor and
/// the collection it belongs to; for ListAuditEvents, the sequence its page ended at) is wrapped
/// with a tag over the RPC, the caller (principal and tenant), the request's filter and that
/// token, under the deployment's page-token key (<see cref="AuditLog.PageTokenTag"/>: derived
/// from a setting of the database through the
/// HSM's domain key, so every node of the deployment, and a restarted one, accepts a token
/// another issued). A token is accepted only by the RPC that issued it, for the caller it was
/// issued to, with the same filter; a garbled or made-up one is refused before the store is
/// read. The page size is not bound: a caller may change it between pages. A token expires
/// (AIP-158 lets it): one older than <see cref="Hosting.KmsServerOptions.PageTokenLifetime"/>
/// (24 hours unless configured) is refused, so a token leaked in a log does not let its holder page
/// on, as the caller it was issued to, long after.
/// </summary>
/// <remarks>
/// Layout (base64url): version byte (2), the time the token was issued (Unix milliseconds, 8 bytes
/// big-endian), the domain service's token (ASCII), the first 16 bytes of the tag. The tag's input
/// starts "List page token v2|", the RPC's name, the caller, the filter, and covers the time and
/// the token. Version 1 (no time; tagged over "List page token v1|") is refused, though its tag is
/// good: it would never expire. A listing paged across the upgrade starts again from the first
/// page, as it does during a rolling upgrade when a page goes to a node of the other version.
/// ListAuditEvents' tokens from before version 1 were tagged over input starting
/// "ListAuditEvents v1|", so none of them is a token of either layout.
/// </remarks>
internal sealed class ListPageTokens(AuditLog audit, TimeProvider time, Microsoft.Extensions.Options.IOptions<Hosting.KmsServerOptions> options)
{
    private const byte Version = 2;
    private const byte TimelessVersion = 1;
    private const int TimeLength = 8;
    private const int TagLength = 16;

    // Above the longest token the domain services issue (a cursor of 4,096 characters, its
    // collection, base64) in base64 again; anything longer is no token of ours, and is not decoded.
    private const int MaxTokenLength = 16 * 1024;

    /// <summary>The token to return: empty on the last page.</summary>
    /// <param name="rpc">The RPC's name (ListKeys).</param>
    /// <param name="caller">Who the page was listed for.</param>
    /// <param name="filter">The request's fields that choose what is listed (parent, tenant, show_deleted), page_size and page_token aside.</param>
    /// <param name="inner">The domain service's token of the next page, or null on the last.</param>
    public string Seal(string rpc, Caller caller, IReadOnlyList<string?> filter, string? inner)
    {
        if (inner is null)
        {
            return "";
        }

        // The issue time and the domain service's token: the body the tag covers.
        var body = new byte[TimeLength + Encoding.ASCII.GetByteCount(inner)];
        BinaryPrimitives.WriteInt64BigEndian(body, time.GetUtcNow().ToUnixTimeMilliseconds());
        Encoding.ASCII.GetBytes(inner, body.AsSpan(TimeLength));
        var token = new byte[1 + body.Length + TagLength];
        token[0] = Version;
        body.CopyTo(token.AsSpan(1));
        Tag(rpc, caller, filter, body).AsSpan(0, TagLength).CopyTo(token.AsSpan(1 + body.Length));
        return Base64Url.EncodeToString(token);
    }

    /// <summary>The domain service's token inside <paramref name="token"/> (null for none: the first page).</summary>
    /// <exception cref="KmsException">InvalidArgument naming page_token for a token not issued by this RPC to this caller with this filter, or issued longer ago than the tokens' lifetime, or of version 1.</exception>
    public string? Open(string rpc, Caller caller, IReadOnlyList<string?> filter, string token, string filterDescription)
    {
        if (token.Length == 0)
        {
            return null;
        }

        byte[] bytes = [];
        if (token.Length <= MaxTokenLength)
        {
            try
            {
                bytes = Base64Url.DecodeFromChars(token);
            }
            catch (FormatException)
            {
                bytes = [];
            }
        }

        if (bytes.Length > 0 && bytes[0] == TimelessVersion)
        {
            throw KmsErrors.InvalidArgument("page_token",
                "is of a layout this server no longer accepts (it did not expire); start again from the first page, without a page_token");
        }

        if (bytes.Length < 1 + TimeLength + 1 + TagLength || bytes[0] != Version
            || !CryptographicOperations.FixedTimeEquals(
                bytes.AsSpan(bytes.Length - TagLength),
                Tag(rpc, caller, filter, bytes.AsSpan(1, bytes.Length - 1 - TagLength)).AsSpan(0, TagLength)))
        {
            // Names nothing of the token: it may be another caller's, holding another tenant's names.
            throw KmsErrors.InvalidArgument("page_token",
                $"is not a token that {rpc} returned to this caller for this {filterDescription} (page_size may differ)");
        }

        // Checked after the tag: only a token this deployment issued to this caller is told it expired.
        // A time ahead of this node's clock by more than the lifetime (another node's clock far
        // ahead) is as far out of bounds as one behind it.
        var lifetime = options.Value.PageTokenLifetime;
        var issued = BinaryPrimitives.ReadInt64BigEndian(bytes.AsSpan(1, TimeLength));
        var age = TimeSpan.FromMilliseconds(time.GetUtcNow().ToUnixTimeMilliseconds() - (double)issued);
        if (age > lifetime || -age > lifetime)
        {
            throw KmsErrors.InvalidArgument("page_token",
                $"has expired: a page token is good for {Lifetime(lifetime)} after the page that returned it, and this one was issued {Lifetime(age.Duration())} {(age < TimeSpan.Zero ? "ahead of this server's clock" : "ago")}; start again from the first page, without a page_token");
        }

        return Encoding.ASCII.GetString(bytes.AsSpan(1 + TimeLength, bytes.Length - 1 - TimeLength - TagLength));
    }

    // "24 h", "90 min", "45 s": a span as a reader takes it in, rounded down to its largest unit.
    private static string Lifetime(TimeSpan span) => span switch
    {
        { TotalHours: >= 1 } => string.Create(CultureInfo.InvariantCulture, $"{(long)span.TotalHours} h"),
        { TotalMinutes: >= 1 } => string.Create(CultureInfo.InvariantCulture, $"{(long)span.TotalMinutes} min"),
        _ => string.Create(CultureInfo.InvariantCulture, $"{(long)span.TotalSeconds} s"),
    };

    // The RPC, the caller, every filter field (length-prefixed; absent and empty apart), then the body (the issue time and the domain service's token).
    private byte[] Tag(string rpc, Caller caller, IReadOnlyList<string?> filter, ReadOnlySpan<byte> body)
    {
        var text = new StringBuilder("List page token v2");
        Append(text, rpc);
        Append(text, caller.Principal);
        Append(text, caller.HomeTenant?.Value);
        Append(text, filter.Count.ToString(CultureInfo.InvariantCulture));
        foreach (var field in filter)
        {
            Append(text, field);
        }

        Append(text, body.Length.ToString(CultureInfo.InvariantCulture));
        var head = Encoding.UTF8.GetBytes(text.Append('|').ToString());
        var input = new byte[head.Length + body.Length];
        head.CopyTo(input, 0);
        body.CopyTo(input.AsSpan(head.Length));
        return audit.PageTokenTag(input);
    }

    private static void Append(StringBuilder text, string? field) =>
        text.Append('|').Append(field is null ? "-" : field.Length.ToString(CultureInfo.InvariantCulture) + ":" + field);
}
