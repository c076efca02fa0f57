using System.Buffers.Binary;
using System.Text;
using Kms.Core.Errors;

namespace Kms.Core.Crypto;

/// <summary>
/// The caller's encryption context: a string map that is authenticated (not encrypted) with
/// a ciphertext, so a blob used under another context fails to decrypt.
/// </summary>
/// <remarks>
/// Canonical encoding (see docs/ciphertext-format.md): entries sorted by the ordinal order
/// of their keys' UTF-8 bytes; <c>u32be count</c>, then per entry <c>u32be len ‖ key ‖
/// u32be len ‖ value</c>. Length prefixes make it unambiguous ({"a":"bc"} ≠ {"ab":"c"});
/// it is never JSON, whose encodings are not unique.
/// </remarks>
public sealed class EncryptionContext
{
    private static readonly UTF8Encoding StrictUtf8 = new(encoderShouldEmitUTF8Identifier: false, throwOnInvalidBytes: true);

    private readonly byte[] _encoded;

    private EncryptionContext(byte[] encoded, IReadOnlyDictionary<string, string> entries)
    {
        _encoded = encoded;
        Entries = entries;
    }

    /// <summary>The empty context.</summary>
    public static EncryptionContext Empty { get; } = new([0, 0, 0, 0], new Dictionary<string, string>());

    /// <summary>The entries (for grant constraints). Values may be sensitive: never log them.</summary>
    public IReadOnlyDictionary<string, string> Entries { get; }

    /// <summary>Number of entries.</summary>
    public int Count => Entries.Count;

    /// <summary>The canonical encoding.</summary>
    public ReadOnlySpan<byte> Encoded => _encoded;

    /// <summary>Validates and canonically encodes a context from a request.</summary>
    /// <exception cref="KmsException">InvalidArgument naming <paramref name="field"/>.</exception>
    public static EncryptionContext Create(IEnumerable<KeyValuePair<string, string>>? entries, string field = "encryption_context")
    {
        if (entries is null)
        {
            return Empty;
        }

        var encodedEntries = new List<(byte[] Key, byte[] Value)>();
        var map = new Dictionary<string, string>(StringComparer.Ordinal);
        foreach (var (key, value) in entries)
        {
            map[key] = value;
            var keyBytes = Encode(key, field, "key");
            var valueBytes = Encode(value, field, "value");
            if (keyBytes.Length is 0 or > Limits.MaxContextKeyBytes)
            {
                throw KmsErrors.InvalidArgument(field, $"a key must be 1 to {Limits.MaxContextKeyBytes} bytes of UTF-8");
            }

            if (valueBytes.Length > Limits.MaxContextValueBytes)
            {
                throw KmsErrors.InvalidArgument(field, $"a value must be at most {Limits.MaxContextValueBytes} bytes of UTF-8");
            }

            encodedEntries.Add((keyBytes, valueBytes));
            if (encodedEntries.Count > Limits.MaxContextEntries)
            {
                throw KmsErrors.InvalidArgument(field, $"at most {Limits.MaxContextEntries} entries");
            }
        }

        if (encodedEntries.Count == 0)
        {
            return Empty;
        }

        encodedEntries.Sort((a, b) => a.Key.AsSpan().SequenceCompareTo(b.Key));
        for (var i = 1; i < encodedEntries.Count; i++)
        {
            if (encodedEntries[i - 1].Key.AsSpan().SequenceEqual(encodedEntries[i].Key))
            {
                throw KmsErrors.InvalidArgument(field, "keys must be unique");
            }
        }

        var length = 4 + encodedEntries.Sum(e => 8 + e.Key.Length + e.Value.Length);
        var encoded = new byte[length];
        var span = encoded.AsSpan();
        BinaryPrimitives.WriteUInt32BigEndian(span, (uint)encodedEntries.Count);
        var offset = 4;
        foreach (var (key, value) in encodedEntries)
        {
            offset = WritePrefixed(span, offset, key);
            offset = WritePrefixed(span, offset, value);
        }

        return new EncryptionContext(encoded, map);
    }

    /// <summary>Keys only (values may be sensitive): safe to log.</summary>
    public override string ToString() => $"EncryptionContext({Count} entries)";

    private static byte[] Encode(string text, string field, string what)
    {
        try
        {
            return StrictUtf8.GetBytes(text);
        }
        catch (EncoderFallbackException)
        {
            throw KmsErrors.InvalidArgument(field, $"a {what} is not valid UTF-16 text");
        }
    }

    private static int WritePrefixed(Span<byte> destination, int offset, byte[] bytes)
    {
        BinaryPrimitives.WriteUInt32BigEndian(destination[offset..], (uint)bytes.Length);
        bytes.CopyTo(destination[(offset + 4)..]);
        return offset + 4 + bytes.Length;
    }
}
