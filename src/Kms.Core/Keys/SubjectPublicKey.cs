using System.Security.Cryptography;

namespace Kms.Core.Keys;

/// <summary>
/// A public key as DER SubjectPublicKeyInfo (RFC 5280), compared by value. Public by nature:
/// safe to log, return and store in plaintext.
/// </summary>
public sealed class SubjectPublicKey : IEquatable<SubjectPublicKey>
{
    private readonly byte[] _der;

    /// <summary>Wraps DER bytes (copied).</summary>
    public SubjectPublicKey(ReadOnlySpan<byte> der)
    {
        if (der.IsEmpty)
        {
            throw new ArgumentException("a public key is not empty", nameof(der));
        }

        _der = der.ToArray();
    }

    /// <summary>The DER SubjectPublicKeyInfo.</summary>
    public ReadOnlySpan<byte> Der => _der;

    /// <summary>The DER bytes as a new array.</summary>
    public byte[] ToArray() => (byte[])_der.Clone();

    /// <summary>PEM (<c>-----BEGIN PUBLIC KEY-----</c>), LF line ends, ending with a newline.</summary>
    public string ToPem() => PemEncoding.WriteString("PUBLIC KEY", _der) + "\n";

    /// <summary>SHA-256 of the DER, lowercase hex: how documents and logs name the key.</summary>
    public string Fingerprint => Convert.ToHexStringLower(SHA256.HashData(_der));

    /// <inheritdoc />
    public bool Equals(SubjectPublicKey? other) => other is not null && _der.AsSpan().SequenceEqual(other._der);

    /// <inheritdoc />
    public override bool Equals(object? obj) => Equals(obj as SubjectPublicKey);

    /// <inheritdoc />
    public override int GetHashCode() => BitConverter.ToInt32(SHA256.HashData(_der));

    /// <inheritdoc />
    public override string ToString() => $"public key sha256:{Fingerprint}";
}
