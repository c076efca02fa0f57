using System.Buffers.Binary;
using System.Text;

namespace Kms.Client.Envelope;

/// <summary>
/// The canonical encoding of an encryption context (the KMS's own, docs/ciphertext-format.md):
/// u32 count, then u32-length-prefixed key and value per entry, sorted by key bytes.
/// </summary>
internal static class EnvelopeContext
{
    /// <summary>The empty context, shared: read-only, so no caller handed it can change every later empty context.</summary>
    public static readonly IReadOnlyDictionary<string, string> Empty = new System.Collections.ObjectModel.ReadOnlyDictionary<string, string>(new Dictionary<string, string>(StringComparer.Ordinal));

    /// <summary>
    /// <see cref="EnvelopeEncryptor.AnyContext"/>: an expected context that accepts any, told apart
    /// by reference. Empty as a map, so code that missed the marker requires no context (fails closed).
    /// </summary>
    public static readonly IReadOnlyDictionary<string, string> Any = new AnyContextMarker();

    /// <summary>Validates and encodes a caller's context.</summary>
    /// <exception cref="ArgumentException">A limit is broken, a string is not valid UTF-16, or the context is <see cref="Any"/>.</exception>
    public static byte[] Encode(IReadOnlyDictionary<string, string>? context)
    {
        if (ReferenceEquals(context, Any))
        {
            throw new ArgumentException("EnvelopeEncryptor.AnyContext is an expected context for decryption (it accepts any), not a context to encrypt with", nameof(context));
        }

        if (context is null || context.Count == 0)
        {
            return [0, 0, 0, 0];
        }

        if (context.Count > EnvelopeFormat.MaxContextEntries)
        {
            throw new ArgumentException($"an encryption context has at most {EnvelopeFormat.MaxContextEntries} entries", nameof(context));
        }

        var entries = new List<(byte[] Key, byte[] Value)>(context.Count);
        foreach (var (key, value) in context)
        {
            var keyBytes = ToUtf8(key);
            var valueBytes = ToUtf8(value);
            if (keyBytes.Length is 0 or > EnvelopeFormat.MaxContextKeyBytes)
            {
                throw new ArgumentException($"an encryption-context key must be 1 to {EnvelopeFormat.MaxContextKeyBytes} bytes of UTF-8", nameof(context));
            }

            if (valueBytes.Length > EnvelopeFormat.MaxContextValueBytes)
            {
                throw new ArgumentException($"an encryption-context value must be at most {EnvelopeFormat.MaxContextValueBytes} bytes of UTF-8", nameof(context));
            }

            entries.Add((keyBytes, valueBytes));
        }

        if (entries.Count > EnvelopeFormat.MaxContextEntries)
        {
            // A dictionary that grew while it was read (Count was checked first).
            throw new ArgumentException($"an encryption context has at most {EnvelopeFormat.MaxContextEntries} entries", nameof(context));
        }

        entries.Sort((a, b) => a.Key.AsSpan().SequenceCompareTo(b.Key));
        for (var i = 1; i < entries.Count; i++)
        {
            if (entries[i - 1].Key.AsSpan().SequenceEqual(entries[i].Key))
            {
                throw new ArgumentException("encryption-context keys must be unique", nameof(context));
            }
        }

        var encoded = new byte[4 + entries.Sum(e => 8 + e.Key.Length + e.Value.Length)];
        BinaryPrimitives.WriteUInt32BigEndian(encoded, (uint)entries.Count);
        var offset = 4;
        foreach (var (key, value) in entries)
        {
            offset = WritePrefixed(encoded, offset, key);
            offset = WritePrefixed(encoded, offset, value);
        }

        return encoded;
    }

    /// <summary>
    /// Length of the encoding at the start of <paramref name="data"/>, checking every limit;
    /// or, if more bytes are needed to tell, a length greater than <paramref name="data"/>'s.
    /// </summary>
    public static int Measure(ReadOnlySpan<byte> data)
    {
        if (data.Length < 4)
        {
            return 4;
        }

        var count = BinaryPrimitives.ReadUInt32BigEndian(data);
        if (count > EnvelopeFormat.MaxContextEntries)
        {
            throw EnvelopeDecryptionException.Malformed("too many encryption-context entries");
        }

        var offset = 4;
        for (var i = 0; i < 2 * count; i++)
        {
            if (data.Length < offset + 4)
            {
                return offset + 4;
            }

            var length = BinaryPrimitives.ReadUInt32BigEndian(data[offset..]);
            var limit = i % 2 == 0 ? EnvelopeFormat.MaxContextKeyBytes : EnvelopeFormat.MaxContextValueBytes;
            if (length > limit || (i % 2 == 0 && length == 0))
            {
                throw EnvelopeDecryptionException.Malformed("an encryption-context entry breaks its length limit");
            }

            offset += 4 + (int)length;
        }

        return offset;
    }

    /// <summary>Decodes an encoding already measured, rejecting any non-canonical one.</summary>
    public static IReadOnlyDictionary<string, string> Decode(ReadOnlySpan<byte> encoded)
    {
        var count = (int)BinaryPrimitives.ReadUInt32BigEndian(encoded);
        if (count == 0)
        {
            return Empty;
        }

        var map = new Dictionary<string, string>(count, StringComparer.Ordinal);
        var offset = 4;
        Range previous = default;
        for (var i = 0; i < count; i++)
        {
            var keyStart = offset + 4;
            var key = ReadPrefixed(encoded, ref offset);
            var keyRange = keyStart..(keyStart + key.Length);
            var value = ReadPrefixed(encoded, ref offset);
            if (i > 0 && encoded[previous].SequenceCompareTo(key) >= 0)
            {
                throw EnvelopeDecryptionException.Malformed("encryption-context keys are not sorted and unique");
            }

            previous = keyRange;
            map[FromUtf8(key)] = FromUtf8(value);
        }

        return map;
    }

    private static ReadOnlySpan<byte> ReadPrefixed(ReadOnlySpan<byte> data, ref int offset)
    {
        var length = (int)BinaryPrimitives.ReadUInt32BigEndian(data[offset..]);
        var value = data.Slice(offset + 4, length);
        offset += 4 + length;
        return value;
    }

    private static int WritePrefixed(Span<byte> destination, int offset, byte[] bytes)
    {
        BinaryPrimitives.WriteUInt32BigEndian(destination[offset..], (uint)bytes.Length);
        bytes.CopyTo(destination[(offset + 4)..]);
        return offset + 4 + bytes.Length;
    }

    private static byte[] ToUtf8(string text)
    {
        try
        {
            return EnvelopeFormat.StrictUtf8.GetBytes(text);
        }
        catch (EncoderFallbackException)
        {
            throw new ArgumentException("an encryption-context key or value is not valid UTF-16 text", nameof(text));
        }
    }

    private static string FromUtf8(ReadOnlySpan<byte> bytes)
    {
        try
        {
            return EnvelopeFormat.StrictUtf8.GetString(bytes);
        }
        catch (DecoderFallbackException)
        {
            throw EnvelopeDecryptionException.Malformed("an encryption-context entry is not valid UTF-8");
        }
    }

    private sealed class AnyContextMarker() : System.Collections.ObjectModel.ReadOnlyDictionary<string, string>(new Dictionary<string, string>(StringComparer.Ordinal))
    {
        public override string ToString() => "EnvelopeEncryptor.AnyContext";
    }
}
