using System.Security.Cryptography;

namespace Kms.Core.Keys;

/// <summary>
/// The 128-bit random id of a key version, written into every ciphertext blob so that
/// Decrypt finds the version without the caller naming the key.
/// </summary>
/// <remarks>Random rather than sequential so a blob reveals neither the key's name nor how many keys exist.</remarks>
public readonly record struct KeyVersionId
{
    /// <summary>Length of the id in bytes.</summary>
    public const int Length = 16;

    private readonly ulong _high;
    private readonly ulong _low;

    private KeyVersionId(ulong high, ulong low)
    {
        _high = high;
        _low = low;
    }

    /// <summary>A fresh random id.</summary>
    public static KeyVersionId NewId()
    {
        Span<byte> bytes = stackalloc byte[Length];
        RandomNumberGenerator.Fill(bytes);
        return FromBytes(bytes);
    }

    /// <summary>The id whose bytes are <paramref name="bytes"/> (exactly <see cref="Length"/> long).</summary>
    public static KeyVersionId FromBytes(ReadOnlySpan<byte> bytes)
    {
        if (bytes.Length != Length)
        {
            throw new ArgumentException($"a key version id is {Length} bytes", nameof(bytes));
        }

        return new KeyVersionId(
            System.Buffers.Binary.BinaryPrimitives.ReadUInt64BigEndian(bytes),
            System.Buffers.Binary.BinaryPrimitives.ReadUInt64BigEndian(bytes[8..]));
    }

    /// <summary>Writes the id's bytes into <paramref name="destination"/>.</summary>
    public void WriteTo(Span<byte> destination)
    {
        System.Buffers.Binary.BinaryPrimitives.WriteUInt64BigEndian(destination, _high);
        System.Buffers.Binary.BinaryPrimitives.WriteUInt64BigEndian(destination[8..], _low);
    }

    /// <summary>The id's bytes.</summary>
    public byte[] ToBytes()
    {
        var bytes = new byte[Length];
        WriteTo(bytes);
        return bytes;
    }

    /// <inheritdoc />
    public override string ToString() => Convert.ToHexStringLower(ToBytes());
}
