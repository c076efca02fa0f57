using System.Buffers.Text;
using System.Security.Cryptography;
using System.Text;
using System.Text.RegularExpressions;

namespace Kms.Core.Access;

/// <summary>
/// The API token format: <c>kms_&lt;id&gt;_&lt;secret&gt;</c>, with a 16-character id (the
/// lookup key) and 256 random bits of secret (base64url). The secret is shown once, at
/// creation; the store keeps only its SHA-256 — a fast hash is enough for 256 random bits,
/// and a slow password KDF would cap request throughput.
/// </summary>
public static partial class ApiTokenSecret
{
    /// <summary>A new token: its id, the full text to hand to the caller (once), and the hash to store.</summary>
    public static (string Id, string Text, byte[] Hash) Create()
    {
        var id = Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(8));
        var secret = RandomNumberGenerator.GetBytes(32);
        try
        {
            return (id, $"kms_{id}_{Base64Url.EncodeToString(secret)}", SHA256.HashData(secret));
        }
        finally
        {
            CryptographicOperations.ZeroMemory(secret);
        }
    }

    /// <summary>Splits a presented token into its id and the hash of its secret; false if it is not one of ours.</summary>
    public static bool TryParse(string? text, out string id, out byte[] hash)
    {
        id = "";
        hash = [];
        if (text is null || text.Length > 128)
        {
            return false;
        }

        var match = Format().Match(text);
        if (!match.Success)
        {
            return false;
        }

        byte[] secret;
        try
        {
            secret = Base64Url.DecodeFromChars(match.Groups["secret"].Value);
        }
        catch (FormatException)
        {
            return false;
        }

        if (secret.Length != 32)
        {
            return false;
        }

        id = match.Groups["id"].Value;
        hash = SHA256.HashData(secret);
        CryptographicOperations.ZeroMemory(secret);
        return true;
    }

    /// <summary>Validates a token id (16 lowercase hex digits).</summary>
    /// <exception cref="Errors.KmsException">InvalidArgument naming <paramref name="field"/>.</exception>
    public static string ParseId(string? id, string field) =>
        id is { Length: 16 } && id.All(char.IsAsciiHexDigitLower) ? id : throw Errors.KmsErrors.InvalidArgument(field, "a token id is 16 lowercase hex digits (the part after kms_)");

    /// <summary>Constant-time comparison of the presented secret's hash with the stored one.</summary>
    public static bool Matches(byte[] presentedHash, byte[] storedHash) => CryptographicOperations.FixedTimeEquals(presentedHash, storedHash);

    [GeneratedRegex("^kms_(?<id>[0-9a-f]{16})_(?<secret>[A-Za-z0-9_-]{43})\\z", RegexOptions.CultureInvariant)]
    private static partial Regex Format();

    /// <summary>Never the secret: for logs.</summary>
    public static string Describe(string id) => new StringBuilder("kms_").Append(id).Append("_***").ToString();
}
