namespace Kms.Core.Keys;

/// <summary>
/// The algorithm of a key version's material: key type, size and the one way it is used
/// (Google Cloud KMS's idea: an RSA key signs with PSS or with PKCS#1 v1.5, never both).
/// Every version of a key has the key's algorithm. <see cref="KeyAlgorithms"/> describes each.
/// </summary>
public enum KeyAlgorithm
{
    /// <summary>AES-256-GCM: 96-bit IV from the HSM, 128-bit tag.</summary>
    Aes256Gcm = 1,

    /// <summary>ECDSA on P-256 over SHA-256 digests.</summary>
    EcSignP256Sha256 = 2,

    /// <summary>ECDSA on P-384 over SHA-384 digests.</summary>
    EcSignP384Sha384 = 3,

    /// <summary>RSASSA-PSS 2048-bit, SHA-256, MGF1-SHA-256, salt length 32.</summary>
    RsaSignPss2048Sha256 = 4,

    /// <summary>RSASSA-PSS 3072-bit, SHA-256, MGF1-SHA-256, salt length 32.</summary>
    RsaSignPss3072Sha256 = 5,

    /// <summary>RSASSA-PSS 4096-bit, SHA-256, MGF1-SHA-256, salt length 32.</summary>
    RsaSignPss4096Sha256 = 6,

    /// <summary>RSASSA-PSS 4096-bit, SHA-512, MGF1-SHA-512, salt length 64.</summary>
    RsaSignPss4096Sha512 = 7,

    /// <summary>RSASSA-PKCS1-v1_5 2048-bit, SHA-256.</summary>
    RsaSignPkcs2048Sha256 = 8,

    /// <summary>RSASSA-PKCS1-v1_5 3072-bit, SHA-256.</summary>
    RsaSignPkcs3072Sha256 = 9,

    /// <summary>RSASSA-PKCS1-v1_5 4096-bit, SHA-256.</summary>
    RsaSignPkcs4096Sha256 = 10,

    /// <summary>RSASSA-PKCS1-v1_5 4096-bit, SHA-512.</summary>
    RsaSignPkcs4096Sha512 = 11,

    /// <summary>Ed25519 (pure EdDSA over the message), where the HSM can wrap Ed25519 private keys.</summary>
    Ed25519 = 12,

    /// <summary>RSAES-OAEP 2048-bit, SHA-256 and MGF1-SHA-256, empty label.</summary>
    RsaDecryptOaep2048Sha256 = 13,

    /// <summary>RSAES-OAEP 3072-bit, SHA-256 and MGF1-SHA-256, empty label.</summary>
    RsaDecryptOaep3072Sha256 = 14,

    /// <summary>RSAES-OAEP 4096-bit, SHA-256 and MGF1-SHA-256, empty label.</summary>
    RsaDecryptOaep4096Sha256 = 15,

    /// <summary>RSAES-OAEP 2048-bit, SHA-1 and MGF1-SHA-1, empty label.</summary>
    RsaDecryptOaep2048Sha1 = 16,

    /// <summary>RSAES-OAEP 3072-bit, SHA-1 and MGF1-SHA-1, empty label.</summary>
    RsaDecryptOaep3072Sha1 = 17,

    /// <summary>RSAES-OAEP 4096-bit, SHA-1 and MGF1-SHA-1, empty label.</summary>
    RsaDecryptOaep4096Sha1 = 18,

    /// <summary>HMAC-SHA256 with a 256-bit key.</summary>
    HmacSha256 = 19,

    /// <summary>HMAC-SHA384 with a 384-bit key.</summary>
    HmacSha384 = 20,

    /// <summary>HMAC-SHA512 with a 512-bit key.</summary>
    HmacSha512 = 21,
}
