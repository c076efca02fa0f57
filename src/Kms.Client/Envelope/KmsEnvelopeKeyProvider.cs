using Grpc.Core;

namespace Kms.Client.Envelope;

/// <summary>Data keys from a Kms server through <see cref="KmsClient"/>: GenerateDataKey, Encrypt, Decrypt.</summary>
/// <remarks>
/// The envelope's encryption context is the KMS encryption context of every wrap and unwrap,
/// so the KMS binds it to the data key, audits its keys and enforces context-constrained grants.
/// Unwrap reports the key of the version the KMS used; the encryptor compares it with the
/// key the message named.
/// </remarks>
public sealed class KmsEnvelopeKeyProvider(KmsClient client) : IEnvelopeKeyProvider
{
    private readonly KmsClient _client = client ?? throw new ArgumentNullException(nameof(client));

    /// <inheritdoc />
    public async Task<GeneratedDataKey> GenerateDataKeyAsync(string keyName, IReadOnlyDictionary<string, string> context, CancellationToken cancellationToken)
    {
        using var dataKey = await _client.GenerateDataKeyAsync(keyName, context, cancellationToken).ConfigureAwait(false);
        if (dataKey.Plaintext.Length != EnvelopeFormat.DataKeyLength)
        {
            throw new InvalidOperationException($"the KMS returned a {dataKey.Plaintext.Length}-byte data key; envelopes need {EnvelopeFormat.DataKeyLength}");
        }

        // The key first: a malformed answer must not leave a copy of the secret behind, unzeroed.
        var wrapped = new WrappedDataKey(KeyOf(dataKey.KeyVersion), dataKey.Ciphertext) { KeyVersion = dataKey.KeyVersion };
        return new GeneratedDataKey(CopySecret(dataKey.Plaintext), wrapped);
    }

    /// <inheritdoc />
    public async Task<WrappedDataKey> WrapDataKeyAsync(string keyName, ReadOnlyMemory<byte> dataKey, IReadOnlyDictionary<string, string> context, CancellationToken cancellationToken)
    {
        var encrypted = await _client.EncryptAsync(keyName, dataKey, context, cancellationToken).ConfigureAwait(false);
        return new WrappedDataKey(KeyOf(encrypted.KeyVersion), encrypted.Ciphertext) { KeyVersion = encrypted.KeyVersion };
    }

    /// <inheritdoc />
    public async Task<UnwrappedDataKey> UnwrapDataKeyAsync(WrappedDataKey wrappedKey, IReadOnlyDictionary<string, string> context, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(wrappedKey);
        using var decrypted = await _client.DecryptAsync(wrappedKey.Wrapped, context, cancellationToken).ConfigureAwait(false);
        var keyName = KeyOf(decrypted.KeyVersion);
        return new UnwrappedDataKey(CopySecret(decrypted.Plaintext), keyName);
    }

    /// <summary><c>tenants/t/keys/k</c> of <c>tenants/t/keys/k/versions/n</c>.</summary>
    internal static string KeyOf(string keyVersion)
    {
        var cut = keyVersion.LastIndexOf("/versions/", StringComparison.Ordinal);
        if (cut <= 0)
        {
            throw new RpcException(new Status(StatusCode.Internal, "the KMS answered without a key version name"));
        }

        return keyVersion[..cut];
    }

    private static byte[] CopySecret(ReadOnlySpan<byte> secret)
    {
        var copy = GC.AllocateUninitializedArray<byte>(secret.Length, pinned: true);
        secret.CopyTo(copy);
        return copy;
    }
}
