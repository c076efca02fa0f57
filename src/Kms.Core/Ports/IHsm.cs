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

    /// <summary>The residency regions whose domain keys this node's HSM holds besides the deployment's (data residency).</summary>
    IReadOnlyCollection<string> Regions => [];

    /// <summary>
    /// The HSM as it works under <paramref name="region"/>'s domain key: material it generates is
    /// wrapped under that key, and material it uses must have been. A node whose HSM does not hold
    /// that region's domain key refuses here, before anything reaches the HSM.
    /// </summary>
    /// <exception cref="Errors.KmsException">FailedPrecondition: this node is not in <paramref name="region"/>.</exception>
    IHsm ForRegion(string region) => throw Errors.KmsErrors.ResidencyElsewhere(region);

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
    /// AES-256-GCM encryption under a key version with an IV of <see cref="CiphertextBlob.IvLength"/>
    /// bytes drawn from the HSM's RNG. An HSM adapter draws and encrypts in one go (one session,
    /// one trip to the HSM's thread) rather than two calls.
    /// </summary>
    async ValueTask<SealedWithIv> EncryptAesGcmWithFreshIvAsync(KeyMaterialRef key, byte[] aad, byte[] plaintext, CancellationToken cancellationToken)
    {
        var iv = await GenerateRandomAsync(CiphertextBlob.IvLength, cancellationToken).ConfigureAwait(false);
        return new SealedWithIv(iv, await EncryptAesGcmAsync(key, iv, aad, plaintext, cancellationToken).ConfigureAwait(false));
    }

    /// <summary>
    /// A fresh data key of <paramref name="length"/> bytes and an IV, both from the HSM's RNG,
    /// and the data key encrypted under a key version with them (AES-256-GCM). An HSM adapter
    /// does the draw and the encryption in one go.
    /// </summary>
    /// <returns>The data key (owned by the caller: zero it after use), the IV and the sealed key.</returns>
    async ValueTask<SealedDataKey> GenerateDataKeyAsync(KeyMaterialRef key, int length, byte[] aad, CancellationToken cancellationToken)
    {
        var random = await GenerateRandomAsync(length + CiphertextBlob.IvLength, cancellationToken).ConfigureAwait(false);
        var dataKey = random[..length];
        try
        {
            var iv = random[length..];
            return new SealedDataKey(dataKey, iv, await EncryptAesGcmAsync(key, iv, aad, dataKey, cancellationToken).ConfigureAwait(false));
        }
        catch
        {
            System.Security.Cryptography.CryptographicOperations.ZeroMemory(dataKey);
            throw;
        }
        finally
        {
            System.Security.Cryptography.CryptographicOperations.ZeroMemory(random);
        }
    }

    /// <summary>
    /// <see cref="EncryptAesGcmAsync"/> for each input under one key version, in order. An HSM
    /// adapter does them in one go (one session, one key handle, one trip to the HSM's thread);
    /// either all are encrypted or the call fails.
    /// </summary>
    /// <returns>For each input, its ciphertext followed by the 16-byte tag.</returns>
    async ValueTask<byte[][]> EncryptAesGcmManyAsync(KeyMaterialRef key, IReadOnlyList<AesGcmInput> inputs, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(inputs);
        var results = new byte[inputs.Count][];
        for (var i = 0; i < inputs.Count; i++)
        {
            results[i] = await EncryptAesGcmAsync(key, inputs[i].Iv, inputs[i].Aad, inputs[i].Data, cancellationToken);
        }

        return results;
    }

    /// <summary>
    /// Drops any unwrapped copy of a key version held in the HSM (the version was destroyed).
    /// A copy in use by a running operation goes when that operation ends.
    /// </summary>
    void EvictKey(KeyVersionId id);

    /// <summary>
    /// Drops every unwrapped copy held in the HSM: a node that cannot tell which versions were
    /// destroyed meanwhile (it missed some of the change feed) unwraps them again as they are used.
    /// </summary>
    void EvictAllKeys();

    /// <summary>AES-256-GCM decryption; a wrong tag, AAD or IV is <see cref="Errors.KmsErrorCode.DecryptionFailed"/>.</summary>
    /// <returns>The plaintext, owned by the caller (zero it after use).</returns>
    ValueTask<byte[]> DecryptAesGcmAsync(KeyMaterialRef key, byte[] iv, byte[] aad, byte[] ciphertextAndTag, CancellationToken cancellationToken);

    /// <summary>
    /// <see cref="DecryptAesGcmAsync"/> for each input (<see cref="AesGcmInput.Data"/> the ciphertext
    /// followed by its tag) under one key version, in order. An HSM adapter does them in one go.
    /// An input that does not decrypt (wrong tag, AAD or IV) is <c>null</c> in the result, its own
    /// failure; any other failure fails the call, with every plaintext of it zeroed.
    /// </summary>
    /// <returns>For each input, its plaintext (owned by the caller: zero it after use) or <c>null</c>.</returns>
    async ValueTask<byte[]?[]> DecryptAesGcmManyAsync(KeyMaterialRef key, IReadOnlyList<AesGcmInput> inputs, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(inputs);
        var results = new byte[]?[inputs.Count];
        try
        {
            for (var i = 0; i < inputs.Count; i++)
            {
                try
                {
                    results[i] = await DecryptAesGcmAsync(key, inputs[i].Iv, inputs[i].Aad, inputs[i].Data, cancellationToken);
                }
                catch (Errors.KmsException e) when (e.Code == Errors.KmsErrorCode.DecryptionFailed)
                {
                    results[i] = null;
                }
            }

            return results;
        }
        catch
        {
            ZeroAll(results);
            throw;
        }
    }

    /// <summary>Zeroes each plaintext of a <see cref="DecryptAesGcmManyAsync"/> result.</summary>
    static void ZeroAll(byte[]?[] plaintexts)
    {
        foreach (var plaintext in plaintexts)
        {
            System.Security.Cryptography.CryptographicOperations.ZeroMemory(plaintext);
        }
    }

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

    /// <summary>
    /// Why this HSM cannot hold key versions of <paramref name="algorithm"/> (its capability
    /// profile says so, e.g. "SoftHSM cannot wrap Ed25519 private keys"), or null when it can.
    /// </summary>
    string? UnsupportedReason(KeyAlgorithm algorithm);

    /// <summary>Why this HSM cannot serve BYOK imports with <paramref name="method"/>, or null when it can.</summary>
    string? UnsupportedReason(ImportMethod method);

    /// <summary>
    /// Generates a key version's material for <paramref name="algorithm"/> inside the HSM (AES,
    /// HMAC secret, RSA/EC/Ed25519 key pair) and returns it wrapped under the domain key, with
    /// the public key for asymmetric algorithms. Every extractable copy made for the wrap is
    /// destroyed before this returns.
    /// </summary>
    /// <exception cref="Errors.KmsException">FailedPrecondition when the profile does not support the algorithm.</exception>
    ValueTask<GeneratedKeyMaterial> GenerateKeyVersionAsync(KeyAlgorithm algorithm, CancellationToken cancellationToken);

    /// <summary>
    /// Signs with an asymmetric key version: <paramref name="input"/> is the digest (of the
    /// algorithm's hash, exactly its length, else InvalidArgument) for ECDSA and RSA, the
    /// message for Ed25519. ECDSA signatures are IEEE P1363 r‖s; RSA ones are the modulus length.
    /// </summary>
    ValueTask<byte[]> SignAsync(KeyMaterialRef key, KeyAlgorithm algorithm, byte[] input, CancellationToken cancellationToken);

    /// <summary>
    /// RSA-OAEP decryption with an ASYMMETRIC_DECRYPT key version (hash and MGF1 of the
    /// algorithm, empty label). Any failure to decrypt is <see cref="Errors.KmsErrorCode.DecryptionFailed"/>.
    /// </summary>
    /// <returns>The plaintext, owned by the caller (zero it after use).</returns>
    ValueTask<byte[]> DecryptRsaOaepAsync(KeyMaterialRef key, KeyAlgorithm algorithm, byte[] ciphertext, CancellationToken cancellationToken);

    /// <summary>HMAC of <paramref name="data"/> with a MAC key version (the algorithm's hash).</summary>
    ValueTask<byte[]> ComputeMacAsync(KeyMaterialRef key, KeyAlgorithm algorithm, byte[] data, CancellationToken cancellationToken);

    /// <summary>
    /// <see cref="ComputeMacAsync"/> for each input under one MAC key version, in order. An HSM
    /// adapter does them in one go (one session, one key handle, one trip to the HSM's thread);
    /// either every MAC is computed or the call fails.
    /// </summary>
    /// <returns>For each input, its MAC.</returns>
    async ValueTask<byte[][]> ComputeMacManyAsync(KeyMaterialRef key, KeyAlgorithm algorithm, IReadOnlyList<byte[]> inputs, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(inputs);
        var results = new byte[inputs.Count][];
        for (var i = 0; i < inputs.Count; i++)
        {
            results[i] = await ComputeMacAsync(key, algorithm, inputs[i], cancellationToken);
        }

        return results;
    }

    /// <summary>
    /// Generates the RSA key pair of a BYOK import job inside the HSM: the private key (unwrap
    /// only, for <paramref name="method"/>) wrapped under the domain key, and the public key
    /// callers wrap their key material for.
    /// </summary>
    ValueTask<GeneratedKeyMaterial> GenerateImportWrappingKeyAsync(ImportMethod method, CancellationToken cancellationToken);

    /// <summary>
    /// Imports caller-supplied key material as a key version of <paramref name="algorithm"/>:
    /// <paramref name="wrappedKey"/> is RSA-OAEP(ephemeral AES-256 key) followed by
    /// AES-KWP (RFC 5649) of the material under that key — raw bytes for AES and HMAC, PKCS#8
    /// for RSA and EC — as <c>CKM_RSA_AES_KEY_WRAP</c> defines it. The material is unwrapped
    /// inside the HSM, checked (type, size, curve; for a key pair, that it signs or decrypts
    /// consistently with its public key) and returned wrapped under the domain key.
    /// </summary>
    /// <param name="subjectPublicKeyInfo">The public key, required for EC (a PKCS#11 private key does not show it), optional for RSA (checked when given).</param>
    /// <exception cref="Errors.KmsException">InvalidArgument when the material does not unwrap, has the wrong type or size, or does not match the public key; nothing is kept.</exception>
    ValueTask<GeneratedKeyMaterial> ImportKeyVersionAsync(
        KeyMaterialRef wrappingKey,
        ImportMethod method,
        KeyAlgorithm algorithm,
        byte[] wrappedKey,
        byte[]? subjectPublicKeyInfo,
        CancellationToken cancellationToken);

    /// <summary>
    /// What the HSM reports about a key version's unwrapped copy (its PKCS#11 attributes, by
    /// name) and, for AES and HMAC versions, the version's check value (<see cref="KeyVersionProperties"/>).
    /// </summary>
    ValueTask<KeyVersionProperties> DescribeKeyVersionAsync(KeyMaterialRef key, KeyAlgorithm algorithm, CancellationToken cancellationToken);
}

/// <summary>
/// How BYOK key material is wrapped for an import job: RSA-OAEP of an ephemeral AES-256 key
/// under the job's RSA key, then AES-KWP of the material under the ephemeral key.
/// </summary>
public enum ImportMethod
{
    /// <summary>RSA-3072, OAEP with SHA-1 and MGF1-SHA-1; AES-256 KWP.</summary>
    RsaOaep3072Sha1Aes256 = 1,

    /// <summary>RSA-4096, OAEP with SHA-1 and MGF1-SHA-1; AES-256 KWP.</summary>
    RsaOaep4096Sha1Aes256 = 2,

    /// <summary>RSA-3072, OAEP with SHA-256 and MGF1-SHA-256; AES-256 KWP.</summary>
    RsaOaep3072Sha256Aes256 = 3,

    /// <summary>RSA-4096, OAEP with SHA-256 and MGF1-SHA-256; AES-256 KWP.</summary>
    RsaOaep4096Sha256Aes256 = 4,
}

/// <summary>New key material: wrapped under the domain key, with the public key (DER SubjectPublicKeyInfo) of a key pair.</summary>
public sealed record GeneratedKeyMaterial(WrappedKeyMaterial Wrapped, byte[]? SubjectPublicKeyInfo)
{
    /// <summary>
    /// For imported material (<see cref="IHsm.ImportKeyVersionAsync"/>), a fingerprint of the
    /// material itself, in lowercase hex: the same however it was wrapped (another OAEP seed,
    /// another ephemeral key) and whichever algorithm it is imported as, and from which the
    /// material cannot be recovered — a secret's: SHA-256 of its HMAC-SHA256 over
    /// <see cref="SecretFingerprintInput"/> (which binds its length and the import job),
    /// computed in the HSM; a key pair's: SHA-256 of its public key's DER SubjectPublicKeyInfo
    /// (uncompressed point, named curve). Null for generated material.
    /// </summary>
    public string? MaterialFingerprint { get; init; }

    /// <summary>The text that starts <see cref="SecretFingerprintInput"/>.</summary>
    public const string ImportFingerprintText = "kms import material fingerprint v2";

    /// <summary>
    /// What an imported secret MACs (HMAC-SHA256, the secret as the key) for its
    /// <see cref="MaterialFingerprint"/>: <see cref="ImportFingerprintText"/>, a zero byte, the
    /// secret's length in bytes (4 bytes, big-endian) and the SHA-256 of the import job's public
    /// key (DER SubjectPublicKeyInfo).
    /// </summary>
    /// <remarks>
    /// The length because HMAC pads a key shorter than its block with zero bytes: without it a key
    /// and the same key followed by zero bytes (a 32-byte AES key, a 48-byte HMAC-SHA384 key ending
    /// in 16 zeros) had one fingerprint. The job because fingerprints are only ever compared within
    /// their job: so the stored value says nothing about the material outside it (the same
    /// material in two jobs, or two deployments, gives two unrelated values).
    /// </remarks>
    public static byte[] SecretFingerprintInput(int secretLength, ReadOnlySpan<byte> importJobPublicKey)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(secretLength);
        var text = System.Text.Encoding.ASCII.GetBytes(ImportFingerprintText);
        var input = new byte[text.Length + 1 + 4 + 32];
        text.CopyTo(input, 0);
        System.Buffers.Binary.BinaryPrimitives.WriteInt32BigEndian(input.AsSpan(text.Length + 1), secretLength);
        System.Security.Cryptography.SHA256.HashData(importJobPublicKey, input.AsSpan(text.Length + 5));
        return input;
    }

    /// <summary>The <see cref="MaterialFingerprint"/> of a key pair: SHA-256 of its public key as given (to be canonical DER).</summary>
    public static string PublicKeyFingerprint(ReadOnlySpan<byte> subjectPublicKeyInfo) =>
        Convert.ToHexStringLower(System.Security.Cryptography.SHA256.HashData(subjectPublicKeyInfo));

    /// <summary>The <see cref="MaterialFingerprint"/> of a secret from its HMAC-SHA256 over <see cref="SecretFingerprintInput"/> (hashed: the MAC itself is not kept).</summary>
    public static string SecretFingerprint(ReadOnlySpan<byte> mac) =>
        Convert.ToHexStringLower(System.Security.Cryptography.SHA256.HashData(mac));
}

/// <summary>
/// What the HSM reports for a key version's unwrapped copy.
/// </summary>
/// <param name="Attributes">PKCS#11 attributes by name (<c>CKA_SENSITIVE</c> → <c>true</c>, <c>CKA_KEY_TYPE</c> → <c>CKK_AES</c>, ...), as the HSM answered.</param>
/// <param name="CheckValue">
/// For AES and HMAC versions, 8 bytes anyone holding the key can recompute (AES: the GCM tag of
/// the empty message under the all-zero IV with AAD <c>kms key check value v1</c>; HMAC: the MAC of
/// that text), so an importer can confirm the version holds their key; null for key pairs.
/// </param>
public sealed record KeyVersionProperties(IReadOnlyDictionary<string, string> Attributes, byte[]? CheckValue)
{
    /// <summary>The text the symmetric check value authenticates.</summary>
    public const string CheckValueText = "kms key check value v1";
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

/// <summary>What <see cref="IHsm.EncryptAesGcmWithFreshIvAsync"/> returns: the IV it drew and the ciphertext followed by the 16-byte tag.</summary>
public sealed record SealedWithIv(byte[] Iv, byte[] CiphertextAndTag);

/// <summary>What <see cref="IHsm.GenerateDataKeyAsync"/> returns: the data key (secret), the IV, and the data key's ciphertext followed by the tag.</summary>
public sealed record SealedDataKey(byte[] DataKey, byte[] Iv, byte[] CiphertextAndTag);

/// <summary>A key version's material by reference: its id (the cache key) and its wrapped bytes.</summary>
public sealed record KeyMaterialRef(KeyVersionId Id, WrappedKeyMaterial Wrapped);

/// <summary>
/// One AES-GCM operation of <see cref="IHsm.EncryptAesGcmManyAsync"/> (<paramref name="Data"/> the
/// plaintext) or <see cref="IHsm.DecryptAesGcmManyAsync"/> (the ciphertext followed by its tag):
/// the arrays are the caller's, not copied.
/// </summary>
public readonly record struct AesGcmInput(byte[] Iv, byte[] Aad, byte[] Data);
