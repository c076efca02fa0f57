using System.Buffers.Text;
using System.Text;
using Kms.Core.Errors;
using Kms.Core.Names;

namespace Kms.Core.Services;

/// <summary>Opaque page tokens of List RPCs: bound to the parent they were issued for.</summary>
internal static class PageToken
{
    public static string Encode(TenantId tenant, string lastKeyId) =>
        Base64Url.EncodeToString(Encoding.UTF8.GetBytes($"v1|{tenant.Value}|{lastKeyId}"));

    public static string? Decode(TenantId tenant, string? token)
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

        var parts = text.Split('|');
        if (parts.Length != 3 || parts[0] != "v1" || parts[1] != tenant.Value || parts[2].Length == 0)
        {
            throw Invalid();
        }

        return parts[2];
    }

    private static KmsException Invalid() =>
        KmsErrors.InvalidArgument("page_token", "is not a token returned by a previous List call for this parent");
}
