using System.Runtime.InteropServices;
using Google.Protobuf;

namespace Kms.Client;

/// <summary>
/// A data key from GenerateDataKey: the 32-byte plaintext key (use it, never store it) and
/// its ciphertext (store it next to the data; Decrypt returns the key later).
/// </summary>
/// <remarks>
/// Dispose it as soon as the data is encrypted: disposing zeroes the plaintext key in the
/// buffer the response was read into. <see cref="ToString"/> never shows the key.
/// </remarks>
public sealed class DataKey : IDisposable
{
    private readonly ResponseSecret _plaintext;

    internal DataKey(ByteString plaintext, byte[] ciphertext, string keyVersion)
    {
        _plaintext = new ResponseSecret(plaintext);
        Ciphertext = ciphertext;
        KeyVersion = keyVersion;
    }

    /// <summary>The plaintext data key.</summary>
    /// <exception cref="ObjectDisposedException">After dispose.</exception>
    public ReadOnlySpan<byte> Plaintext => _plaintext.Read(this);

    /// <summary>The data key encrypted under the KMS key; safe to store.</summary>
    public byte[] Ciphertext { get; }

    /// <summary>The key version that encrypted it: <c>tenants/{t}/keys/{k}/versions/{n}</c>.</summary>
    public string KeyVersion { get; }

    /// <summary>Zeroes the plaintext key.</summary>
    public void Dispose() => _plaintext.Dispose();

    /// <summary>Never the key.</summary>
    public override string ToString() => $"DataKey({KeyVersion}, plaintext ***)";
}

/// <summary>A plaintext returned by Decrypt, zeroed on dispose.</summary>
public sealed class DecryptedData : IDisposable
{
    private readonly ResponseSecret _plaintext;

    internal DecryptedData(ByteString plaintext, string keyVersion)
    {
        _plaintext = new ResponseSecret(plaintext);
        KeyVersion = keyVersion;
    }

    /// <summary>The plaintext.</summary>
    /// <exception cref="ObjectDisposedException">After dispose.</exception>
    public ReadOnlySpan<byte> Plaintext => _plaintext.Read(this);

    /// <summary>The key version that decrypted it.</summary>
    public string KeyVersion { get; }

    /// <summary>Zeroes the plaintext.</summary>
    public void Dispose() => _plaintext.Dispose();

    /// <summary>Never the plaintext.</summary>
    public override string ToString() => $"DecryptedData({KeyVersion}, plaintext ***)";
}

/// <summary>A secret in a response buffer, readable until disposed, then zeroed.</summary>
internal sealed class ResponseSecret(ByteString bytes) : IDisposable
{
    private ReadOnlyMemory<byte> _memory = bytes.Memory;
    private bool _disposed;

    public ReadOnlySpan<byte> Read(object owner)
    {
        ObjectDisposedException.ThrowIf(_disposed, owner);
        return _memory.Span;
    }

    // A ByteString parsed from the wire owns its array; zeroing it through the read-only
    // view is the only way to erase the secret it holds.
    public void Dispose()
    {
        if (!_disposed)
        {
            _disposed = true;
            MemoryMarshal.AsMemory(_memory).Span.Clear();
            _memory = default;
        }
    }
}

/// <summary>A ciphertext and the key version that made it.</summary>
/// <param name="Ciphertext">The blob; opaque, safe to store.</param>
/// <param name="KeyVersion">The key version: <c>tenants/{t}/keys/{k}/versions/{n}</c>.</param>
public sealed record EncryptedData(byte[] Ciphertext, string KeyVersion);
