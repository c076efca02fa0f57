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
/// read. The page size is not bound: a caller may change it between pages.
/// </summary>
/// <remarks>
/// Layout (base64url): version byte, the domain service's token (ASCII), the first 16 bytes of
/// the tag. The tag's input starts "List page token v1|" and the RPC's name. ListAuditEvents'
/// tokens of before were tagged over input starting "ListAuditEvents v1|" (the filter and the
/// sequence, not the caller), so none of them is a token of this layout.
/// </remarks>
internal sealed class ListPageTokens(AuditLog audit)
{
    private const byte Version = 1;
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

        var body = Encoding.ASCII.GetBytes(inner);
        var token = new byte[1 + body.Length + TagLength];
        token[0] = Version;
        body.CopyTo(token.AsSpan(1));
        Tag(rpc, caller, filter, body).AsSpan(0, TagLength).CopyTo(token.AsSpan(1 + body.Length));
        return Base64Url.EncodeToString(token);
    }

    /// <summary>The domain service's token inside <paramref name="token"/> (null for none: the first page).</summary>
    /// <exception cref="KmsException">InvalidArgument naming page_token for a token not issued by this RPC to this caller with this filter.</exception>
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

        if (bytes.Length < 1 + 1 + TagLength || bytes[0] != Version
            || !CryptographicOperations.FixedTimeEquals(
                bytes.AsSpan(bytes.Length - TagLength),
                Tag(rpc, caller, filter, bytes.AsSpan(1, bytes.Length - 1 - TagLength)).AsSpan(0, TagLength)))
        {
            // Names nothing of the token: it may be another caller's, holding another tenant's names.
            throw KmsErrors.InvalidArgument("page_token",
                $"is not a token that {rpc} returned to this caller for this {filterDescription} (page_size may differ)");
        }

        return Encoding.ASCII.GetString(bytes.AsSpan(1, bytes.Length - 1 - TagLength));
    }

    // The RPC, the caller, every filter field (length-prefixed; absent and empty apart), then the body.
    private byte[] Tag(string rpc, Caller caller, IReadOnlyList<string?> filter, ReadOnlySpan<byte> body)
    {
        var text = new StringBuilder("List page token v1");
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
