namespace Kms.Core.Crypto;

/// <summary>
/// A key version's material as the HSM wrapped it under the domain key (RFC 5649 for AES).
/// Useless without the domain key, but still never logged: it prints as <c>***</c>.
/// </summary>
public sealed class WrappedKeyMaterial
{
    private readonly byte[] _bytes;

    /// <summary>Wraps the bytes the HSM returned (or the store read back).</summary>
    public WrappedKeyMaterial(byte[] bytes)
    {
        ArgumentNullException.ThrowIfNull(bytes);
        if (bytes.Length == 0)
        {
            throw new ArgumentException("wrapped key material is empty", nameof(bytes));
        }

        _bytes = bytes;
    }

    /// <summary>The wrapped bytes (a copy is not made: treat as read-only).</summary>
    public ReadOnlyMemory<byte> Bytes => _bytes;

    /// <summary>The wrapped bytes as an array, for the HSM and store adapters. Do not modify.</summary>
    public byte[] UnsafeArray => _bytes;

    /// <summary>Never the bytes.</summary>
    public override string ToString() => $"*** ({_bytes.Length} bytes wrapped)";
}
