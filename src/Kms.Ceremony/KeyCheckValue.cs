using System.Security.Cryptography;

namespace Kms.Ceremony;

/// <summary>
/// The key check value of an AES key as PKCS#11 defines <c>CKA_CHECK_VALUE</c> for it: the first
/// 3 bytes of the AES-ECB encryption of one all-zero block under the key.
/// </summary>
/// <remarks>
/// Computed in software so the ceremony can cross-check what the HSM reports, and so a rebuilt
/// domain key can be compared with the recorded value before it is imported anywhere. Three
/// bytes identify a key; they do not help find it.
/// </remarks>
public static class KeyCheckValue
{
    /// <summary>Length of a check value in bytes.</summary>
    public const int Length = 3;

    /// <summary>The check value of an AES-256 key, as 6 upper-case hex digits (e.g. <c>1A2B3C</c>).</summary>
    /// <exception cref="CeremonyException">The key is not 32 bytes.</exception>
    public static string Aes256(ReadOnlySpan<byte> key)
    {
        if (key.Length != 32)
        {
            throw new CeremonyException(CeremonyError.InvalidArgument, $"an AES-256 key has 32 bytes, not {key.Length}");
        }
        using var aes = Aes.Create();
        var keyCopy = key.ToArray();
        Span<byte> block = stackalloc byte[16];
        try
        {
            aes.Key = keyCopy;
            block.Clear();
            aes.EncryptEcb(block, block, PaddingMode.None);
            return Convert.ToHexString(block[..Length]);
        }
        finally
        {
            CryptographicOperations.ZeroMemory(keyCopy);
            CryptographicOperations.ZeroMemory(block);
        }
    }

    /// <summary>
    /// <paramref name="value"/> in the canonical form (6 upper-case hex digits), or null when it is
    /// not 3 bytes of hex. Accepts either case, so a value copied from a tool that prints lower case works.
    /// </summary>
    public static string? Normalize(string? value)
    {
        if (value is null || value.Length != 2 * Length)
        {
            return null;
        }
        foreach (var c in value)
        {
            if (!char.IsAsciiHexDigit(c))
            {
                return null;
            }
        }
        return value.ToUpperInvariant();
    }
}
