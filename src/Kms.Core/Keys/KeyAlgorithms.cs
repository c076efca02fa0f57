using System.Security.Cryptography;
using Kms.Core.Errors;
using Kms.Core.Ports;

namespace Kms.Core.Keys;

/// <summary>The kind of key material an algorithm uses.</summary>
public enum KeyFamily
{
    /// <summary>An AES secret key.</summary>
    Aes,

    /// <summary>An EC key pair on a NIST curve.</summary>
    Ec,

    /// <summary>An RSA key pair.</summary>
    Rsa,

    /// <summary>An Ed25519 key pair.</summary>
    EdDsa,

    /// <summary>A generic secret for HMAC.</summary>
    Hmac,
}

/// <summary>A hash function an algorithm is bound to.</summary>
public enum DigestAlgorithm
{
    /// <summary>SHA-1: only for RSA-OAEP where the HSM offers nothing better.</summary>
    Sha1,

    /// <summary>SHA-256.</summary>
    Sha256,

    /// <summary>SHA-384.</summary>
    Sha384,

    /// <summary>SHA-512.</summary>
    Sha512,
}

/// <summary>How an RSA key is used.</summary>
public enum RsaPadding
{
    /// <summary>Not RSA.</summary>
    None,

    /// <summary>RSASSA-PSS, salt as long as the digest, MGF1 with the same hash.</summary>
    Pss,

    /// <summary>RSASSA-PKCS1-v1_5.</summary>
    Pkcs1,

    /// <summary>RSAES-OAEP, MGF1 with the same hash, empty label.</summary>
    Oaep,
}

/// <summary>What one <see cref="KeyAlgorithm"/> is.</summary>
/// <param name="Algorithm">The algorithm.</param>
/// <param name="Name">Its API name (<c>EC_SIGN_P256_SHA256</c>), as the proto enum spells it without the prefix.</param>
/// <param name="Purpose">The one purpose it serves.</param>
/// <param name="Family">The kind of key material.</param>
/// <param name="KeyBits">AES and HMAC key length, RSA modulus, EC field size, in bits.</param>
/// <param name="Digest">The hash it signs, MACs or pads with; null for AES-GCM and Ed25519.</param>
/// <param name="Padding">For RSA, how the key is used.</param>
/// <param name="Curve">For EC, the curve.</param>
public sealed record KeyAlgorithmSpec(
    KeyAlgorithm Algorithm,
    string Name,
    KeyPurpose Purpose,
    KeyFamily Family,
    int KeyBits,
    DigestAlgorithm? Digest,
    RsaPadding Padding = RsaPadding.None,
    EcCurve? Curve = null)
{
    /// <summary>Whether versions have a public key (RSA, EC, Ed25519).</summary>
    public bool IsAsymmetric => Family is KeyFamily.Ec or KeyFamily.Rsa or KeyFamily.EdDsa;

    /// <summary>Bytes of a digest of <see cref="Digest"/> (0 when there is none).</summary>
    public int DigestLength => Digest is { } digest ? KeyAlgorithms.DigestLength(digest) : 0;

    /// <summary>Bytes of key material for AES and HMAC.</summary>
    public int SecretLength => Family is KeyFamily.Aes or KeyFamily.Hmac ? KeyBits / 8 : 0;
}

/// <summary>The table of every <see cref="KeyAlgorithm"/>: purpose, family, sizes, hash.</summary>
public static class KeyAlgorithms
{
    private static readonly Dictionary<KeyAlgorithm, KeyAlgorithmSpec> Specs = new KeyAlgorithmSpec[]
    {
        new(KeyAlgorithm.Aes256Gcm, "AES_256_GCM", KeyPurpose.EncryptDecrypt, KeyFamily.Aes, 256, null),
        new(KeyAlgorithm.EcSignP256Sha256, "EC_SIGN_P256_SHA256", KeyPurpose.SignVerify, KeyFamily.Ec, 256, DigestAlgorithm.Sha256, Curve: EcCurve.P256),
        new(KeyAlgorithm.EcSignP384Sha384, "EC_SIGN_P384_SHA384", KeyPurpose.SignVerify, KeyFamily.Ec, 384, DigestAlgorithm.Sha384, Curve: EcCurve.P384),
        new(KeyAlgorithm.RsaSignPss2048Sha256, "RSA_SIGN_PSS_2048_SHA256", KeyPurpose.SignVerify, KeyFamily.Rsa, 2048, DigestAlgorithm.Sha256, RsaPadding.Pss),
        new(KeyAlgorithm.RsaSignPss3072Sha256, "RSA_SIGN_PSS_3072_SHA256", KeyPurpose.SignVerify, KeyFamily.Rsa, 3072, DigestAlgorithm.Sha256, RsaPadding.Pss),
        new(KeyAlgorithm.RsaSignPss4096Sha256, "RSA_SIGN_PSS_4096_SHA256", KeyPurpose.SignVerify, KeyFamily.Rsa, 4096, DigestAlgorithm.Sha256, RsaPadding.Pss),
        new(KeyAlgorithm.RsaSignPss4096Sha512, "RSA_SIGN_PSS_4096_SHA512", KeyPurpose.SignVerify, KeyFamily.Rsa, 4096, DigestAlgorithm.Sha512, RsaPadding.Pss),
        new(KeyAlgorithm.RsaSignPkcs2048Sha256, "RSA_SIGN_PKCS1_2048_SHA256", KeyPurpose.SignVerify, KeyFamily.Rsa, 2048, DigestAlgorithm.Sha256, RsaPadding.Pkcs1),
        new(KeyAlgorithm.RsaSignPkcs3072Sha256, "RSA_SIGN_PKCS1_3072_SHA256", KeyPurpose.SignVerify, KeyFamily.Rsa, 3072, DigestAlgorithm.Sha256, RsaPadding.Pkcs1),
        new(KeyAlgorithm.RsaSignPkcs4096Sha256, "RSA_SIGN_PKCS1_4096_SHA256", KeyPurpose.SignVerify, KeyFamily.Rsa, 4096, DigestAlgorithm.Sha256, RsaPadding.Pkcs1),
        new(KeyAlgorithm.RsaSignPkcs4096Sha512, "RSA_SIGN_PKCS1_4096_SHA512", KeyPurpose.SignVerify, KeyFamily.Rsa, 4096, DigestAlgorithm.Sha512, RsaPadding.Pkcs1),
        new(KeyAlgorithm.Ed25519, "ED25519", KeyPurpose.SignVerify, KeyFamily.EdDsa, 256, null),
        new(KeyAlgorithm.RsaDecryptOaep2048Sha256, "RSA_DECRYPT_OAEP_2048_SHA256", KeyPurpose.AsymmetricDecrypt, KeyFamily.Rsa, 2048, DigestAlgorithm.Sha256, RsaPadding.Oaep),
        new(KeyAlgorithm.RsaDecryptOaep3072Sha256, "RSA_DECRYPT_OAEP_3072_SHA256", KeyPurpose.AsymmetricDecrypt, KeyFamily.Rsa, 3072, DigestAlgorithm.Sha256, RsaPadding.Oaep),
        new(KeyAlgorithm.RsaDecryptOaep4096Sha256, "RSA_DECRYPT_OAEP_4096_SHA256", KeyPurpose.AsymmetricDecrypt, KeyFamily.Rsa, 4096, DigestAlgorithm.Sha256, RsaPadding.Oaep),
        new(KeyAlgorithm.RsaDecryptOaep2048Sha1, "RSA_DECRYPT_OAEP_2048_SHA1", KeyPurpose.AsymmetricDecrypt, KeyFamily.Rsa, 2048, DigestAlgorithm.Sha1, RsaPadding.Oaep),
        new(KeyAlgorithm.RsaDecryptOaep3072Sha1, "RSA_DECRYPT_OAEP_3072_SHA1", KeyPurpose.AsymmetricDecrypt, KeyFamily.Rsa, 3072, DigestAlgorithm.Sha1, RsaPadding.Oaep),
        new(KeyAlgorithm.RsaDecryptOaep4096Sha1, "RSA_DECRYPT_OAEP_4096_SHA1", KeyPurpose.AsymmetricDecrypt, KeyFamily.Rsa, 4096, DigestAlgorithm.Sha1, RsaPadding.Oaep),
        new(KeyAlgorithm.HmacSha256, "HMAC_SHA256", KeyPurpose.Mac, KeyFamily.Hmac, 256, DigestAlgorithm.Sha256),
        new(KeyAlgorithm.HmacSha384, "HMAC_SHA384", KeyPurpose.Mac, KeyFamily.Hmac, 384, DigestAlgorithm.Sha384),
        new(KeyAlgorithm.HmacSha512, "HMAC_SHA512", KeyPurpose.Mac, KeyFamily.Hmac, 512, DigestAlgorithm.Sha512),
    }.ToDictionary(s => s.Algorithm);

    /// <summary>Every algorithm, in enum order.</summary>
    public static IReadOnlyList<KeyAlgorithmSpec> All { get; } = [.. Specs.Values.OrderBy(s => s.Algorithm)];

    /// <summary>The spec of <paramref name="algorithm"/>.</summary>
    /// <exception cref="ArgumentOutOfRangeException">A value the enum does not define.</exception>
    public static KeyAlgorithmSpec Of(KeyAlgorithm algorithm) =>
        Specs.TryGetValue(algorithm, out var spec) ? spec : throw new ArgumentOutOfRangeException(nameof(algorithm), algorithm, "unknown key algorithm");

    /// <summary>
    /// The algorithm a new key of <paramref name="purpose"/> gets when the caller names none:
    /// AES-256-GCM, ECDSA P-256, HMAC-SHA256. Asymmetric decryption has no default: which OAEP
    /// hash is usable depends on the HSM, so the caller must choose.
    /// </summary>
    public static KeyAlgorithm? DefaultFor(KeyPurpose purpose) => purpose switch
    {
        KeyPurpose.EncryptDecrypt => KeyAlgorithm.Aes256Gcm,
        KeyPurpose.SignVerify => KeyAlgorithm.EcSignP256Sha256,
        KeyPurpose.Mac => KeyAlgorithm.HmacSha256,
        _ => null,
    };

    /// <summary>
    /// The algorithm of a new key: the requested one (which must serve the purpose), or the
    /// purpose's default. INVALID_ARGUMENT otherwise.
    /// </summary>
    public static KeyAlgorithm Choose(KeyPurpose purpose, KeyAlgorithm? requested, string field)
    {
        if (requested is null)
        {
            return DefaultFor(purpose) ?? throw KmsErrors.InvalidArgument(field, $"a key of purpose {PurposeName(purpose)} needs an explicit algorithm");
        }

        var spec = Specs.TryGetValue(requested.Value, out var found) ? found : throw KmsErrors.InvalidArgument(field, "unknown algorithm");
        return spec.Purpose == purpose
            ? spec.Algorithm
            : throw KmsErrors.InvalidArgument(field, $"{spec.Name} is a {PurposeName(spec.Purpose)} algorithm, not {PurposeName(purpose)}");
    }

    /// <summary>The purpose's API name (<c>SIGN_VERIFY</c>), for messages.</summary>
    public static string PurposeName(KeyPurpose purpose) => purpose switch
    {
        KeyPurpose.EncryptDecrypt => "ENCRYPT_DECRYPT",
        KeyPurpose.SignVerify => "SIGN_VERIFY",
        KeyPurpose.AsymmetricDecrypt => "ASYMMETRIC_DECRYPT",
        KeyPurpose.Mac => "MAC",
        _ => purpose.ToString(),
    };

    /// <summary>Bytes of a digest.</summary>
    public static int DigestLength(DigestAlgorithm digest) => digest switch
    {
        DigestAlgorithm.Sha1 => 20,
        DigestAlgorithm.Sha256 => 32,
        DigestAlgorithm.Sha384 => 48,
        DigestAlgorithm.Sha512 => 64,
        _ => throw new ArgumentOutOfRangeException(nameof(digest), digest, null),
    };

    /// <summary>The .NET name of a digest.</summary>
    public static HashAlgorithmName HashName(DigestAlgorithm digest) => digest switch
    {
        DigestAlgorithm.Sha1 => HashAlgorithmName.SHA1,
        DigestAlgorithm.Sha256 => HashAlgorithmName.SHA256,
        DigestAlgorithm.Sha384 => HashAlgorithmName.SHA384,
        DigestAlgorithm.Sha512 => HashAlgorithmName.SHA512,
        _ => throw new ArgumentOutOfRangeException(nameof(digest), digest, null),
    };

    /// <summary>Hashes <paramref name="message"/> with <paramref name="digest"/> (a signature's hash: never SHA-1).</summary>
    public static byte[] Hash(DigestAlgorithm digest, ReadOnlySpan<byte> message) => digest switch
    {
        DigestAlgorithm.Sha256 => SHA256.HashData(message),
        DigestAlgorithm.Sha384 => SHA384.HashData(message),
        DigestAlgorithm.Sha512 => SHA512.HashData(message),
        _ => throw new ArgumentOutOfRangeException(nameof(digest), digest, null),
    };
}
