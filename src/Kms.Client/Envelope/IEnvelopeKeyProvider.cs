namespace Kms.Client.Envelope;

/// <summary>
/// Where an envelope's data keys come from and go back to: the KMS seam of
/// <see cref="EnvelopeEncryptor"/>. <see cref="KmsEnvelopeKeyProvider"/> is the one to use;
/// tests and other KMS deployments may bring their own.
/// </summary>
/// <remarks>
/// <see cref="UnwrapDataKeyAsync"/> reports which key the KMS says unwrapped the data key; the
/// encryptor accepts the data key only if that is the key the message named, so a message
/// cannot name a trusted key while carrying a data key wrapped under another — whatever the
/// provider. <see cref="GenerateDataKeyAsync"/> and <see cref="WrapDataKeyAsync"/> must answer with
/// the key they were asked for (for an alias, a key of its tenant); the encryptor refuses any other
/// answer with <see cref="InvalidOperationException"/>. Returned secrets are in types that zero
/// themselves on dispose.
/// </remarks>
public interface IEnvelopeKeyProvider
{
    /// <summary>A fresh 32-byte data key and its wrapping under <paramref name="keyName"/>, bound to <paramref name="context"/>.</summary>
    Task<GeneratedDataKey> GenerateDataKeyAsync(string keyName, IReadOnlyDictionary<string, string> context, CancellationToken cancellationToken);

    /// <summary>The same data key wrapped under another key (a multi-key envelope).</summary>
    Task<WrappedDataKey> WrapDataKeyAsync(string keyName, ReadOnlyMemory<byte> dataKey, IReadOnlyDictionary<string, string> context, CancellationToken cancellationToken);

    /// <summary>The data key unwrapped under <paramref name="context"/>, with the key the KMS reports it used.</summary>
    Task<UnwrappedDataKey> UnwrapDataKeyAsync(WrappedDataKey wrappedKey, IReadOnlyDictionary<string, string> context, CancellationToken cancellationToken);
}

/// <summary>A data key wrapped under a KMS key: what an envelope header carries per key.</summary>
/// <param name="KeyName">The key that wrapped it: <c>tenants/{t}/keys/{k}</c> (never an alias).</param>
/// <param name="Wrapped">The KMS's ciphertext blob of the data key.</param>
public sealed record WrappedDataKey(string KeyName, byte[] Wrapped)
{
    /// <summary>
    /// The key version that wrapped it, as the KMS reported (<c>tenants/{t}/keys/{k}/versions/{n}</c>),
    /// when it was wrapped here; null for one read from a header, which records the key only, or
    /// from a provider that does not say.
    /// </summary>
    public string? KeyVersion { get; init; }
}

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

/// <summary>A data key the KMS unwrapped, and the key it reports using; dispose to zero the plaintext.</summary>
public sealed class UnwrappedDataKey : IDisposable
{
    private readonly byte[] _plaintext;

    /// <summary>Takes ownership of <paramref name="plaintext"/> (zeroed on dispose).</summary>
    /// <param name="plaintext">The data key.</param>
    /// <param name="keyName">The key that unwrapped it as the KMS reports it: <c>tenants/{t}/keys/{k}</c>.</param>
    public UnwrappedDataKey(byte[] plaintext, string keyName)
    {
        ArgumentNullException.ThrowIfNull(plaintext);
        ArgumentNullException.ThrowIfNull(keyName);
        _plaintext = plaintext;
        KeyName = keyName;
    }

    /// <summary>The plaintext data key (zeroed after dispose).</summary>
    public ReadOnlyMemory<byte> Plaintext => _plaintext;

    /// <summary>The key the KMS used.</summary>
    public string KeyName { get; }

    /// <summary>Zeroes the plaintext.</summary>
    public void Dispose() => System.Security.Cryptography.CryptographicOperations.ZeroMemory(_plaintext);

    /// <summary>Never the key.</summary>
    public override string ToString() => $"UnwrappedDataKey({KeyName}, plaintext ***)";
}
