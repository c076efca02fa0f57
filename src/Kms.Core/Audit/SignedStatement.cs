using System.Security.Cryptography;
using System.Text;

namespace Kms.Core.Audit;

/// <summary>
/// A document signed with the audit key outside the chain: a ceremony transcript, a backup
/// manifest. The digest is SHA-256 over <c>"kms signed statement v1" 0x00 kind 0x00 content</c>,
/// so a statement can never be taken for a checkpoint (whose signed body is a JSON object) or
/// for a statement of another kind.
/// </summary>
public static class SignedStatement
{
    /// <summary>The first bytes of every statement digest's input.</summary>
    public const string Prefix = "kms signed statement v1";

    /// <summary>The digest the audit key signs for <paramref name="content"/> of <paramref name="kind"/>.</summary>
    public static byte[] Digest(string kind, ReadOnlySpan<byte> content)
    {
        ArgumentException.ThrowIfNullOrEmpty(kind);
        if (kind.Contains('\0', StringComparison.Ordinal))
        {
            throw new ArgumentException("a statement kind has no NUL", nameof(kind));
        }

        using var hash = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        hash.AppendData(Encoding.UTF8.GetBytes(Prefix + "\0" + kind + "\0"));
        hash.AppendData(content);
        return hash.GetHashAndReset();
    }

    /// <summary>
    /// Whether <paramref name="signature"/> (IEEE P1363 r‖s, as the HSM returns it) is the
    /// audit key's signature of <paramref name="content"/> as a statement of <paramref name="kind"/>.
    /// </summary>
    public static bool Verify(ReadOnlySpan<byte> subjectPublicKeyInfo, string kind, ReadOnlySpan<byte> content, ReadOnlySpan<byte> signature)
    {
        using var key = ECDsa.Create();
        try
        {
            key.ImportSubjectPublicKeyInfo(subjectPublicKeyInfo, out _);
        }
        catch (Exception e) when (e is CryptographicException or PlatformNotSupportedException)
        {
            // A curve OpenSSL does not know is refused with PlatformNotSupportedException.
            return false;
        }

        return key.KeySize == 256 && key.VerifyHash(Digest(kind, content), signature);
    }
}
