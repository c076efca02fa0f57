using System.Buffers.Binary;
using Kms.Client.Envelope;

namespace Kms.Client.Tests.Envelope;

/// <summary>
/// Every length limit of the header and its encryption context (docs/envelope-format.md, "Header")
/// at its bound: the largest value is read and written, one more is refused. Tests elsewhere
/// check only values far past a limit, which a limit off by one still refuses.
/// </summary>
public sealed class EnvelopeLimitTests
{
    [Fact]
    public void Header_EveryLengthAtItsLimit_MeasuredAndParsedBack()
    {
        var context = LargestContext();
        var keys = Enumerable.Range(0, EnvelopeFormat.MaxWrappedKeys)
            .Select(i => new WrappedDataKey(Name(i, EnvelopeFormat.MaxKeyNameBytes), Enumerable.Repeat((byte)i, EnvelopeFormat.MaxWrappedKeyBytes).ToArray()))
            .ToList();
        EnvelopeHeader.ValidateForWriting(keys, EnvelopeFormat.MinFrameLength);
        var header = Write(EnvelopeContext.Encode(context), keys, EnvelopeFormat.MinFrameLength);

        Assert.Equal(EnvelopeFormat.MaxHeaderLength, header.Length);
        Assert.Equal(header.Length, EnvelopeHeader.Measure(header));
        var parsed = EnvelopeHeader.Parse(header);
        Assert.Equal(context, parsed.Context);
        Assert.Equal(keys, parsed.WrappedKeys, (a, b) => a.KeyName == b.KeyName && a.Wrapped.AsSpan().SequenceEqual(b.Wrapped));
        Assert.Equal(EnvelopeFormat.MinFrameLength, parsed.FrameLength);
    }

    [Fact]
    public void Header_LargestFrameLengthAndShortestNames_Measured()
    {
        var keys = new List<WrappedDataKey> { new("k", [1]) };
        EnvelopeHeader.ValidateForWriting(keys, EnvelopeFormat.MaxFrameLength);
        var header = Write(EnvelopeContext.Encode(null), keys, EnvelopeFormat.MaxFrameLength);

        Assert.Equal(header.Length, EnvelopeHeader.Measure(header));
        Assert.Equal(EnvelopeFormat.MaxFrameLength, EnvelopeHeader.Parse(header).FrameLength);
    }

    [Theory]
    [InlineData(EnvelopeFormat.MinFrameLength - 1)]
    [InlineData(EnvelopeFormat.MaxFrameLength + 1)]
    public void Header_FrameLengthOneOutsideItsRange_RefusedByWriterAndReader(int frameLength)
    {
        var keys = new List<WrappedDataKey> { new("k", [1]) };
        Assert.Throws<ArgumentOutOfRangeException>(() => EnvelopeHeader.ValidateForWriting(keys, frameLength));
        var header = Write(EnvelopeContext.Encode(null), keys, frameLength);

        var e = Assert.Throws<EnvelopeDecryptionException>(() => EnvelopeHeader.Measure(header));
        Assert.Contains("frame length", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Header_OneWrappedKeyMoreThanTheLimit_RefusedByWriterAndReader()
    {
        var keys = Enumerable.Range(0, EnvelopeFormat.MaxWrappedKeys + 1).Select(i => new WrappedDataKey(Name(i, 3), [1])).ToList();
        Assert.Throws<ArgumentException>(() => EnvelopeHeader.ValidateForWriting(keys, EnvelopeFormat.MinFrameLength));
        var header = Write(EnvelopeContext.Encode(null), keys, EnvelopeFormat.MinFrameLength);

        var e = Assert.Throws<EnvelopeDecryptionException>(() => EnvelopeHeader.Measure(header));
        Assert.Contains("1 to 16 wrapped data keys", e.Message, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData(EnvelopeFormat.MaxKeyNameBytes + 1, 1)]
    [InlineData(0, 1)]
    [InlineData(1, EnvelopeFormat.MaxWrappedKeyBytes + 1)]
    [InlineData(1, 0)]
    public void Header_KeyNameOrWrappedKeyOneOutsideItsLimit_RefusedByWriterAndReader(int nameBytes, int wrappedBytes)
    {
        var keys = new List<WrappedDataKey> { new(new string('n', nameBytes), new byte[wrappedBytes]) };
        Assert.Throws<ArgumentException>(() => EnvelopeHeader.ValidateForWriting(keys, EnvelopeFormat.MinFrameLength));
        var header = Write(EnvelopeContext.Encode(null), keys, EnvelopeFormat.MinFrameLength);

        var e = Assert.Throws<EnvelopeDecryptionException>(() => EnvelopeHeader.Measure(header));
        Assert.Contains("length limit", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Context_EveryLengthAtItsLimit_EncodedMeasuredAndDecodedBack()
    {
        var context = LargestContext();
        var encoded = EnvelopeContext.Encode(context);

        Assert.Equal(EnvelopeFormat.MaxContextBytes, encoded.Length);
        Assert.Equal(encoded.Length, EnvelopeContext.Measure(encoded));
        Assert.Equal(context, EnvelopeContext.Decode(encoded));
    }

    [Fact]
    public void Context_OneEntryMoreThanTheLimit_RefusedByWriterAndReader()
    {
        var context = Enumerable.Range(0, EnvelopeFormat.MaxContextEntries + 1).ToDictionary(i => $"k{i:D3}", _ => "v", StringComparer.Ordinal);
        Assert.Throws<ArgumentException>(() => EnvelopeContext.Encode(context));
        var encoded = EncodeUnchecked(context.Select(e => (e.Key, e.Value)));

        var e = Assert.Throws<EnvelopeDecryptionException>(() => EnvelopeContext.Measure(encoded));
        Assert.Contains("too many", e.Message, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData(EnvelopeFormat.MaxContextKeyBytes + 1, 0)]
    [InlineData(0, 0)]
    [InlineData(1, EnvelopeFormat.MaxContextValueBytes + 1)]
    public void Context_KeyOrValueOneOutsideItsLimit_RefusedByWriterAndReader(int keyBytes, int valueBytes)
    {
        var key = new string('k', keyBytes);
        var value = new string('v', valueBytes);
        Assert.Throws<ArgumentException>(() => EnvelopeContext.Encode(new Dictionary<string, string> { [key] = value }));
        var encoded = EncodeUnchecked([(key, value)]);

        var e = Assert.Throws<EnvelopeDecryptionException>(() => EnvelopeContext.Measure(encoded));
        Assert.Contains("length limit", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Context_EmptyValue_Accepted()
    {
        var encoded = EnvelopeContext.Encode(new Dictionary<string, string> { ["k"] = "" });
        Assert.Equal(encoded.Length, EnvelopeContext.Measure(encoded));
        Assert.Equal("", EnvelopeContext.Decode(encoded)["k"]);
    }

    // 64 entries, each key 256 bytes (unique by its first three) and each value 1,024 bytes.
    private static Dictionary<string, string> LargestContext() =>
        Enumerable.Range(0, EnvelopeFormat.MaxContextEntries).ToDictionary(
            i => Name(i, EnvelopeFormat.MaxContextKeyBytes),
            i => new string((char)('a' + (i % 26)), EnvelopeFormat.MaxContextValueBytes),
            StringComparer.Ordinal);

    private static string Name(int i, int length) => $"{i:D3}".PadRight(length, 'x');

    private static byte[] Write(byte[] encodedContext, IReadOnlyList<WrappedDataKey> keys, int frameLength)
    {
        var header = new EnvelopeHeader(new byte[EnvelopeFormat.MessageIdLength], encodedContext, null, keys, frameLength, new byte[EnvelopeFormat.CommitmentLength]);
        var bytes = new byte[header.Length];
        header.WriteBody(bytes);
        return bytes;
    }

    // The canonical layout without the writer's checks: what a hostile writer could send.
    private static byte[] EncodeUnchecked(IEnumerable<(string Key, string Value)> entries)
    {
        var list = entries.OrderBy(e => e.Key, StringComparer.Ordinal).ToList();
        var output = new List<byte>();
        var word = new byte[4];
        BinaryPrimitives.WriteUInt32BigEndian(word, (uint)list.Count);
        output.AddRange(word);
        foreach (var (key, value) in list)
        {
            foreach (var text in new[] { key, value })
            {
                var bytes = System.Text.Encoding.UTF8.GetBytes(text);
                BinaryPrimitives.WriteUInt32BigEndian(word, (uint)bytes.Length);
                output.AddRange(word);
                output.AddRange(bytes);
            }
        }

        return [.. output];
    }
}
