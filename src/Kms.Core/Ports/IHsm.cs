using Kms.Core.Crypto;
using Kms.Core.Keys;

namespace Kms.Core.Ports;

/// <summary>
/// The HSM as the domain needs it. Key material is generated inside it, leaves it only
/// wrapped under the domain key, and is used by reference (<see cref="KeyMaterialRef"/>).
/// </summary>
/// <remarks>
/// Implementations map every vendor error to <see cref="Errors.KmsException"/>: a failed
/// authentication tag is <see cref="Errors.KmsErrorCode.DecryptionFailed"/>, a lost device
/// or session is <see cref="Errors.KmsErrorCode.Unavailable"/>. No vendor type crosses
/// this interface.
/// </remarks>
public interface IHsm
{
    /// <summary>The domain key's check value (hex), identifying which domain key this HSM holds.</summary>
    string DomainKeyCheckValue { get; }

    /// <summary>Random bytes from the HSM's RNG.</summary>
    ValueTask<byte[]> GenerateRandomAsync(int length, CancellationToken cancellationToken);

    /// <summary>
    /// Generates an AES-256 key inside the HSM and returns it wrapped under the domain key.
    /// The extractable copy made for the wrap is destroyed before this returns.
    /// </summary>
    ValueTask<WrappedKeyMaterial> GenerateAes256KeyAsync(CancellationToken cancellationToken);

    /// <summary>AES-256-GCM encryption under a key version; returns ciphertext followed by the 16-byte tag.</summary>
    ValueTask<byte[]> EncryptAesGcmAsync(KeyMaterialRef key, byte[] iv, byte[] aad, byte[] plaintext, CancellationToken cancellationToken);

    /// <summary>
    /// Drops any unwrapped copy of a key version held in the HSM (the version was destroyed).
    /// A copy in use by a running operation goes when that operation ends.
    /// </summary>
    void EvictKey(KeyVersionId id);

    /// <summary>AES-256-GCM decryption; a wrong tag, AAD or IV is <see cref="Errors.KmsErrorCode.DecryptionFailed"/>.</summary>
    /// <returns>The plaintext, owned by the caller (zero it after use).</returns>
    ValueTask<byte[]> DecryptAesGcmAsync(KeyMaterialRef key, byte[] iv, byte[] aad, byte[] ciphertextAndTag, CancellationToken cancellationToken);

    /// <summary>
    /// Generates an EC key pair inside the HSM and returns the private key wrapped under the
    /// domain key, with the public key. The HSM's extractable copies are destroyed before
    /// this returns.
    /// </summary>
    ValueTask<GeneratedKeyPair> GenerateEcKeyPairAsync(EcCurve curve, CancellationToken cancellationToken);

    /// <summary>
    /// ECDSA signature (no hashing in the HSM) over <paramref name="digest"/> with a wrapped
    /// EC private key; the unwrapped copy is sensitive, not extractable and sign-only.
    /// </summary>
    /// <returns>The signature as IEEE P1363 r‖s (64 bytes for P-256).</returns>
    ValueTask<byte[]> SignEcdsaAsync(KeyMaterialRef key, EcCurve curve, byte[] digest, CancellationToken cancellationToken);
}

/// <summary>Named curves for EC keys.</summary>
public enum EcCurve
{
    /// <summary>NIST P-256 (secp256r1).</summary>
    P256,

    /// <summary>NIST P-384 (secp384r1).</summary>
    P384,
}

/// <summary>A key pair generated in the HSM: the private key wrapped under the domain key, the public key as DER SubjectPublicKeyInfo.</summary>
public sealed record GeneratedKeyPair(WrappedKeyMaterial PrivateKey, byte[] SubjectPublicKeyInfo);

/// <summary>A key version's material by reference: its id (the cache key) and its wrapped bytes.</summary>
public sealed record KeyMaterialRef(KeyVersionId Id, WrappedKeyMaterial Wrapped);
