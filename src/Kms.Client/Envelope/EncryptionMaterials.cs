using System.Security.Cryptography;

namespace Kms.Client.Envelope;

/// <summary>
/// What one message is written with: a data key (a copy the holder zeroes), its wrappings, the
/// context it was generated under, and for suite 0x0002 a handle to the key pair whose public key
/// that context holds. Disposing zeroes the key and releases the handle if it was not taken.
/// </summary>
internal sealed class EncryptionMaterials(byte[] dataKey, IReadOnlyList<WrappedDataKey> wrapped, byte[] encodedContext, SigningKey.Handle? signing) : IDisposable
{
    private SigningKey.Handle? _signing = signing;

    /// <summary>The data key (pinned; zeroed on dispose).</summary>
    public byte[] DataKey { get; } = dataKey;

    public IReadOnlyList<WrappedDataKey> Wrapped { get; } = wrapped;

    /// <summary>The context the KMS bound the data key to, as the header carries it (a signed message's with its public key).</summary>
    public byte[] EncodedContext { get; } = encodedContext;

    /// <summary>For tests and the cache: the signing handle, still held by these materials.</summary>
    public SigningKey.Handle? Signing => _signing;

    /// <summary>The signing handle, now the caller's to release (null for suite 0x0001).</summary>
    public SigningKey.Handle? TakeSigning() => Interlocked.Exchange(ref _signing, null);

    public void Dispose()
    {
        CryptographicOperations.ZeroMemory(DataKey);
        TakeSigning()?.Dispose();
    }
}
