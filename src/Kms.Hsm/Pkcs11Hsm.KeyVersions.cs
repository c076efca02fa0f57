using Kms.Core.Errors;
using Kms.Core.Keys;
using Kms.Core.Ports;

namespace Kms.Hsm;

// Key versions beyond AES-256-GCM: RSA, EC, Ed25519 and HMAC keys, BYOK import, and what the
// HSM reports about an unwrapped copy. Placeholder until the adapter implements them.
public sealed partial class Pkcs11Hsm
{
    /// <inheritdoc />
    public string? UnsupportedReason(KeyAlgorithm algorithm) =>
        algorithm == KeyAlgorithm.Aes256Gcm ? null : "not implemented in the PKCS#11 adapter yet";

    /// <inheritdoc />
    public string? UnsupportedReason(ImportMethod method) => "not implemented in the PKCS#11 adapter yet";

    /// <inheritdoc />
    public async ValueTask<GeneratedKeyMaterial> GenerateKeyVersionAsync(KeyAlgorithm algorithm, CancellationToken cancellationToken) =>
        algorithm == KeyAlgorithm.Aes256Gcm
            ? new GeneratedKeyMaterial(await GenerateAes256KeyAsync(cancellationToken).ConfigureAwait(false), null)
            : throw NotYet();

    /// <inheritdoc />
    public ValueTask<byte[]> SignAsync(KeyMaterialRef key, KeyAlgorithm algorithm, byte[] input, CancellationToken cancellationToken) => throw NotYet();

    /// <inheritdoc />
    public ValueTask<byte[]> DecryptRsaOaepAsync(KeyMaterialRef key, KeyAlgorithm algorithm, byte[] ciphertext, CancellationToken cancellationToken) => throw NotYet();

    /// <inheritdoc />
    public ValueTask<byte[]> ComputeMacAsync(KeyMaterialRef key, KeyAlgorithm algorithm, byte[] data, CancellationToken cancellationToken) => throw NotYet();

    /// <inheritdoc />
    public ValueTask<GeneratedKeyMaterial> GenerateImportWrappingKeyAsync(ImportMethod method, CancellationToken cancellationToken) => throw NotYet();

    /// <inheritdoc />
    public ValueTask<GeneratedKeyMaterial> ImportKeyVersionAsync(
        KeyMaterialRef wrappingKey,
        ImportMethod method,
        KeyAlgorithm algorithm,
        byte[] wrappedKey,
        byte[]? subjectPublicKeyInfo,
        CancellationToken cancellationToken) => throw NotYet();

    /// <inheritdoc />
    public ValueTask<KeyVersionProperties> DescribeKeyVersionAsync(KeyMaterialRef key, KeyAlgorithm algorithm, CancellationToken cancellationToken) => throw NotYet();

    private static KmsException NotYet() => KmsErrors.FailedPrecondition("not implemented in the PKCS#11 adapter yet");
}
