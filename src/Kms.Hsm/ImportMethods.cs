using Kms.Core.Keys;
using Kms.Core.Ports;

namespace Kms.Hsm;

/// <summary>What each BYOK <see cref="ImportMethod"/> is: the job key's modulus and the OAEP hash.</summary>
public static class ImportMethods
{
    /// <summary>Every import method, in enum order.</summary>
    public static IReadOnlyList<ImportMethod> All { get; } = Enum.GetValues<ImportMethod>();

    /// <summary>The method's name in HSM profiles (<c>RSA_OAEP_3072_SHA1_AES_256</c>).</summary>
    public static string Name(ImportMethod method) => method switch
    {
        ImportMethod.RsaOaep3072Sha1Aes256 => "RSA_OAEP_3072_SHA1_AES_256",
        ImportMethod.RsaOaep4096Sha1Aes256 => "RSA_OAEP_4096_SHA1_AES_256",
        ImportMethod.RsaOaep3072Sha256Aes256 => "RSA_OAEP_3072_SHA256_AES_256",
        ImportMethod.RsaOaep4096Sha256Aes256 => "RSA_OAEP_4096_SHA256_AES_256",
        _ => throw new ArgumentOutOfRangeException(nameof(method), method, "unknown import method"),
    };

    /// <summary>Bits of the import job's RSA modulus.</summary>
    public static int ModulusBits(ImportMethod method) => method switch
    {
        ImportMethod.RsaOaep3072Sha1Aes256 or ImportMethod.RsaOaep3072Sha256Aes256 => 3072,
        ImportMethod.RsaOaep4096Sha1Aes256 or ImportMethod.RsaOaep4096Sha256Aes256 => 4096,
        _ => throw new ArgumentOutOfRangeException(nameof(method), method, "unknown import method"),
    };

    /// <summary>The OAEP hash (and MGF1 hash) of the method.</summary>
    public static DigestAlgorithm OaepDigest(ImportMethod method) => method switch
    {
        ImportMethod.RsaOaep3072Sha1Aes256 or ImportMethod.RsaOaep4096Sha1Aes256 => DigestAlgorithm.Sha1,
        ImportMethod.RsaOaep3072Sha256Aes256 or ImportMethod.RsaOaep4096Sha256Aes256 => DigestAlgorithm.Sha256,
        _ => throw new ArgumentOutOfRangeException(nameof(method), method, "unknown import method"),
    };
}
