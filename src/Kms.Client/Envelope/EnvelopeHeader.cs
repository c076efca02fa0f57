using System.Buffers.Binary;
using System.Text;

namespace Kms.Client.Envelope;

/// <summary>The header of an envelope message (docs/envelope-format.md, "Header").</summary>
internal sealed class EnvelopeHeader
{
    private IReadOnlyDictionary<string, string>? _context;

    /// <param name="context"><paramref name="encodedContext"/> decoded, or null to decode it when first asked (a writer needs only the encoding).</param>
    /// <param name="suite">0x0001, or 0x0002 (signed: the context then carries the public key).</param>
    public EnvelopeHeader(byte[] messageId, byte[] encodedContext, IReadOnlyDictionary<string, string>? context, IReadOnlyList<WrappedDataKey> wrappedKeys, int frameLength, byte[] commitment, ushort suite = EnvelopeFormat.Suite1)
    {
        Suite = suite;
        MessageId = messageId;
        EncodedContext = encodedContext;
        _context = context;
        WrappedKeys = wrappedKeys;
        FrameLength = frameLength;
        Commitment = commitment;
        BodyLength = EnvelopeFormat.FixedPrefixLength + encodedContext.Length + 1
            + wrappedKeys.Sum(k => 4 + EnvelopeFormat.StrictUtf8.GetByteCount(k.KeyName) + k.Wrapped.Length)
            + 4 + EnvelopeFormat.CommitmentLength;
    }

    public ushort Suite { get; }

    /// <summary>Whether the message ends in a signature (suite 0x0002).</summary>
    public bool Signed => Suite == EnvelopeFormat.Suite2;

    public byte[] MessageId { get; }

    public byte[] EncodedContext { get; }

    public IReadOnlyDictionary<string, string> Context => _context ??= EnvelopeContext.Decode(EncodedContext);

    /// <summary>
    /// The context the writer's caller gave: <see cref="Context"/> without the public key a signed
    /// message carries (what a reader expects and is shown).
    /// </summary>
    public IReadOnlyDictionary<string, string> CallerContext => Signed
        ? new System.Collections.ObjectModel.ReadOnlyDictionary<string, string>(Context.Where(e => e.Key != EnvelopeFormat.PublicKeyContextKey).ToDictionary(StringComparer.Ordinal))
        : Context;

    public IReadOnlyList<WrappedDataKey> WrappedKeys { get; }

    public int FrameLength { get; }

    public byte[] Commitment { get; }

    /// <summary>The header tag (set when parsed; written by the encryptor after the body).</summary>
    public byte[] Tag { get; private init; } = [];

    /// <summary>Bytes from the magic through the commitment: the header tag's AAD.</summary>
    public int BodyLength { get; }

    /// <summary>The whole header, tag included.</summary>
    public int Length => BodyLength + EnvelopeFormat.TagLength;

    /// <summary>Checks the limits a writer must keep (a reader checks them in <see cref="Measure"/>).</summary>
    public static void ValidateForWriting(IReadOnlyList<WrappedDataKey> wrappedKeys, int frameLength)
    {
        if (wrappedKeys.Count is 0 or > EnvelopeFormat.MaxWrappedKeys)
        {
            throw new ArgumentException($"an envelope carries 1 to {EnvelopeFormat.MaxWrappedKeys} wrapped data keys");
        }

        foreach (var key in wrappedKeys)
        {
            if (StrictByteCount(key.KeyName) is 0 or > EnvelopeFormat.MaxKeyNameBytes || key.Wrapped.Length is 0 or > EnvelopeFormat.MaxWrappedKeyBytes)
            {
                throw new ArgumentException($"a wrapped data key needs a key name of 1 to {EnvelopeFormat.MaxKeyNameBytes} bytes and 1 to {EnvelopeFormat.MaxWrappedKeyBytes} bytes of wrapped key");
            }
        }

        ValidateFrameLength(frameLength);
    }

    public static void ValidateFrameLength(int frameLength)
    {
        if (frameLength is < EnvelopeFormat.MinFrameLength or > EnvelopeFormat.MaxFrameLength)
        {
            throw new ArgumentOutOfRangeException(nameof(frameLength), frameLength, $"the frame length must be {EnvelopeFormat.MinFrameLength} to {EnvelopeFormat.MaxFrameLength} bytes");
        }
    }

    public void WriteBody(Span<byte> destination)
    {
        EnvelopeFormat.Magic.CopyTo(destination);
        destination[4] = EnvelopeFormat.Version1;
        BinaryPrimitives.WriteUInt16BigEndian(destination[5..], Suite);
        MessageId.CopyTo(destination[7..]);
        var offset = EnvelopeFormat.FixedPrefixLength;
        EncodedContext.CopyTo(destination[offset..]);
        offset += EncodedContext.Length;
        destination[offset++] = (byte)WrappedKeys.Count;
        foreach (var key in WrappedKeys)
        {
            var nameLength = EnvelopeFormat.StrictUtf8.GetBytes(key.KeyName, destination[(offset + 2)..]);
            BinaryPrimitives.WriteUInt16BigEndian(destination[offset..], (ushort)nameLength);
            offset += 2 + nameLength;
            BinaryPrimitives.WriteUInt16BigEndian(destination[offset..], (ushort)key.Wrapped.Length);
            key.Wrapped.CopyTo(destination[(offset + 2)..]);
            offset += 2 + key.Wrapped.Length;
        }

        BinaryPrimitives.WriteUInt32BigEndian(destination[offset..], (uint)FrameLength);
        Commitment.CopyTo(destination[(offset + 4)..]);
    }

    /// <summary>
    /// Length of the header (tag included) at the start of <paramref name="data"/>, checking
    /// magic, version, suite and every length limit as soon as its bytes are there; or, when
    /// more bytes are needed to tell, a number greater than <paramref name="data"/>'s length.
    /// Never more than <see cref="EnvelopeFormat.MaxHeaderLength"/>.
    /// </summary>
    /// <exception cref="EnvelopeDecryptionException">Not an envelope, or a limit is broken.</exception>
    public static int Measure(ReadOnlySpan<byte> data)
    {
        if (data.Length < EnvelopeFormat.FixedPrefixLength)
        {
            CheckPrefix(data);
            return EnvelopeFormat.FixedPrefixLength;
        }

        CheckPrefix(data);
        var offset = EnvelopeFormat.FixedPrefixLength;
        var context = EnvelopeContext.Measure(data[offset..]);
        if (offset + context > data.Length)
        {
            return offset + context;
        }

        offset += context;
        if (data.Length < offset + 1)
        {
            return offset + 1;
        }

        var count = data[offset++];
        if (count is 0 or > EnvelopeFormat.MaxWrappedKeys)
        {
            throw EnvelopeDecryptionException.Malformed($"an envelope carries 1 to {EnvelopeFormat.MaxWrappedKeys} wrapped data keys");
        }

        for (var i = 0; i < 2 * count; i++)
        {
            if (data.Length < offset + 2)
            {
                return offset + 2;
            }

            var length = BinaryPrimitives.ReadUInt16BigEndian(data[offset..]);
            var limit = i % 2 == 0 ? EnvelopeFormat.MaxKeyNameBytes : EnvelopeFormat.MaxWrappedKeyBytes;
            if (length is 0 || length > limit)
            {
                throw EnvelopeDecryptionException.Malformed("a wrapped data key breaks its length limit");
            }

            offset += 2 + length;
        }

        if (data.Length < offset + 4)
        {
            return offset + 4;
        }

        var frameLength = BinaryPrimitives.ReadUInt32BigEndian(data[offset..]);
        if (frameLength is < EnvelopeFormat.MinFrameLength or > EnvelopeFormat.MaxFrameLength)
        {
            throw EnvelopeDecryptionException.Malformed("the frame length is out of range");
        }

        return offset + 4 + EnvelopeFormat.CommitmentLength + EnvelopeFormat.TagLength;
    }

    /// <summary>Decodes a header whose length <see cref="Measure"/> returned.</summary>
    public static EnvelopeHeader Parse(ReadOnlySpan<byte> header)
    {
        var offset = EnvelopeFormat.FixedPrefixLength;
        var messageId = header[7..offset].ToArray();
        var contextLength = EnvelopeContext.Measure(header[offset..]);
        var encodedContext = header.Slice(offset, contextLength).ToArray();
        var context = EnvelopeContext.Decode(encodedContext);
        offset += contextLength;
        var count = header[offset++];
        var keys = new WrappedDataKey[count];
        for (var i = 0; i < count; i++)
        {
            var nameLength = BinaryPrimitives.ReadUInt16BigEndian(header[offset..]);
            string name;
            try
            {
                name = EnvelopeFormat.StrictUtf8.GetString(header.Slice(offset + 2, nameLength));
            }
            catch (DecoderFallbackException)
            {
                throw EnvelopeDecryptionException.Malformed("a key name is not valid UTF-8");
            }

            offset += 2 + nameLength;
            var wrappedLength = BinaryPrimitives.ReadUInt16BigEndian(header[offset..]);
            keys[i] = new WrappedDataKey(name, header.Slice(offset + 2, wrappedLength).ToArray());
            offset += 2 + wrappedLength;
        }

        var frameLength = (int)BinaryPrimitives.ReadUInt32BigEndian(header[offset..]);
        offset += 4;
        var commitment = header.Slice(offset, EnvelopeFormat.CommitmentLength).ToArray();
        offset += EnvelopeFormat.CommitmentLength;
        return new EnvelopeHeader(messageId, encodedContext, context, keys, frameLength, commitment, BinaryPrimitives.ReadUInt16BigEndian(header[5..]))
        {
            Tag = header.Slice(offset, EnvelopeFormat.TagLength).ToArray(),
        };
    }

    private static int StrictByteCount(string name)
    {
        try
        {
            return EnvelopeFormat.StrictUtf8.GetByteCount(name);
        }
        catch (EncoderFallbackException)
        {
            return 0;
        }
    }

    private static void CheckPrefix(ReadOnlySpan<byte> data)
    {
        var magic = data[..Math.Min(data.Length, EnvelopeFormat.MagicLength)];
        if (!EnvelopeFormat.Magic.StartsWith(magic))
        {
            throw new EnvelopeDecryptionException("not an envelope message (it does not start with KMSE)");
        }

        if (data.Length > 4 && data[4] != EnvelopeFormat.Version1)
        {
            throw new EnvelopeDecryptionException($"unsupported envelope version {data[4]}");
        }

        if (data.Length >= 7 && BinaryPrimitives.ReadUInt16BigEndian(data[5..]) is var suite && suite is not EnvelopeFormat.Suite1 and not EnvelopeFormat.Suite2)
        {
            throw new EnvelopeDecryptionException($"unsupported envelope suite 0x{suite:X4}");
        }
    }
}
