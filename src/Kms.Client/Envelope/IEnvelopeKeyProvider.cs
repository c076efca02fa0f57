namespace Kms.Client.Envelope;

/// <summary>
/// Where an envelope's data keys come from and go back to: the KMS seam of
/// <see cref="EnvelopeEncryptor"/>. <see cref="KmsEnvelopeKeyProvider"/> is the one to use;
/// tests and other KMS deployments may bring their own.
/// </summary>
/// <remarks>
/// The contract a provider must keep: <see cref="UnwrapDataKeyAsync"/> returns a data key only
/// if a version of the key named in <see cref="WrappedDataKey.KeyName"/> unwrapped it — a
/// message must not be able to name a trusted key while carrying a data key wrapped under
/// another. Returned plaintext arrays belong to the caller, who zeroes them.
/// </remarks>
public interface IEnvelopeKeyProvider
{
    /// <summary>A fresh 32-byte data key and its wrapping under <paramref name="keyName"/>, bound to <paramref name="context"/>.</summary>
    Task<GeneratedDataKey> GenerateDataKeyAsync(string keyName, IReadOnlyDictionary<string, string> context, CancellationToken cancellationToken);

    /// <summary>The same data key wrapped under another key (a multi-key envelope).</summary>
    Task<WrappedDataKey> WrapDataKeyAsync(string keyName, ReadOnlyMemory<byte> dataKey, IReadOnlyDictionary<string, string> context, CancellationToken cancellationToken);

    /// <summary>The data key, if a version of <see cref="WrappedDataKey.KeyName"/> unwraps it under <paramref name="context"/>.</summary>
    Task<byte[]> UnwrapDataKeyAsync(WrappedDataKey wrappedKey, IReadOnlyDictionary<string, string> context, CancellationToken cancellationToken);
}

/// <summary>A data key wrapped under a KMS key: what an envelope header carries per key.</summary>
/// <param name="KeyName">The key that wrapped it: <c>tenants/{t}/keys/{k}</c> (never an alias).</param>
/// <param name="Wrapped">The KMS's ciphertext blob of the data key.</param>
public sealed record WrappedDataKey(string KeyName, byte[] Wrapped);

/// <summary>A data key from the KMS, with its wrapping; dispose to zero the plaintext.</summary>
public sealed class GeneratedDataKey : IDisposable
{
    private readonly byte[] _plaintext;

    /// <summary>Takes ownership of <paramref name="plaintext"/> (zeroed on dispose).</summary>
    public GeneratedDataKey(byte[] plaintext, WrappedDataKey wrapped)
    {
        ArgumentNullException.ThrowIfNull(plaintext);
        ArgumentNullException.ThrowIfNull(wrapped);
        _plaintext = plaintext;
        Wrapped = wrapped;
    }

    /// <summary>The plaintext data key (zeroed after dispose).</summary>
    public ReadOnlyMemory<byte> Plaintext => _plaintext;

    /// <summary>The data key wrapped under the key that generated it.</summary>
    public WrappedDataKey Wrapped { get; }

    /// <summary>Zeroes the plaintext.</summary>
    public void Dispose() => System.Security.Cryptography.CryptographicOperations.ZeroMemory(_plaintext);

    /// <summary>Never the key.</summary>
    public override string ToString() => $"GeneratedDataKey({Wrapped.KeyName}, plaintext ***)";
}
