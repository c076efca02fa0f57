using System.Security.Cryptography;

namespace Kms.Core.Crypto;

/// <summary>
/// Secret bytes (a data key, a plaintext) that are zeroed when disposed and print as <c>***</c>.
/// </summary>
/// <remarks>
/// The buffer is owned: whoever disposes it must be the last user. Reading it after
/// dispose throws, so a use-after-zero is a crash, not silent zeros.
/// </remarks>
public sealed class SecretBytes : IDisposable
{
    private byte[]? _bytes;

    /// <summary>Takes ownership of <paramref name="bytes"/>; it will be zeroed on dispose.</summary>
    public SecretBytes(byte[] bytes) => _bytes = bytes;

    /// <summary>The secret bytes.</summary>
    /// <exception cref="ObjectDisposedException">After dispose.</exception>
    public ReadOnlySpan<byte> Span => _bytes ?? throw new ObjectDisposedException(nameof(SecretBytes));

    /// <summary>The owned buffer, for APIs that need an array or memory. Do not keep it beyond this object.</summary>
    /// <exception cref="ObjectDisposedException">After dispose.</exception>
    public byte[] UnsafeArray => _bytes ?? throw new ObjectDisposedException(nameof(SecretBytes));

    /// <summary>Length in bytes.</summary>
    public int Length => Span.Length;

    /// <summary>Zeroes the buffer.</summary>
    public void Dispose()
    {
        var bytes = Interlocked.Exchange(ref _bytes, null);
        if (bytes is not null)
        {
            CryptographicOperations.ZeroMemory(bytes);
        }
    }

    /// <summary>Never the secret.</summary>
    public override string ToString() => "***";
}
