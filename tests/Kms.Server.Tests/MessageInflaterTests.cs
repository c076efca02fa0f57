using System.Buffers;
using System.Buffers.Binary;
using System.IO.Compression;
using Grpc.Net.Compression;
using Kms.Server.Grpc;
using Kms.Server.Overload;

namespace Kms.Server.Tests;

/// <summary>
/// A compressed request message is inflated into fixed-size segments (SECURITY.md claim 133): the
/// server holds the inflated length and at most one segment more — before, a memory stream whose
/// buffer doubled as it grew allocated about three times the message, and could hold twice what was
/// counted — and the frame it hands grpc-dotnet is the uncompressed one, whatever the segments' cut.
/// </summary>
public sealed class MessageInflaterTests
{
    private const int Segment = MessageInflater.SegmentBytes;

    private static readonly GzipCompressionProvider Gzip = new(CompressionLevel.Fastest);

    [Fact]
    public void Inflate_A5MiBMessage_AllocatesItsLengthAndAtMostOneSegmentMore()
    {
        // Odd, not a whole number of segments; text-like, so it arrives in a few hundred KiB.
        var message = Content((5 * 1024 * 1024) - 3);
        var compressed = new ReadOnlySequence<byte>(Compress(message));
        _ = MessageInflater.Inflate(Gzip, new ReadOnlySequence<byte>(Compress([1, 2, 3])), int.MaxValue, null); // JIT, CRC tables, zlib

        var before = GC.GetAllocatedBytesForCurrentThread();
        var result = MessageInflater.Inflate(Gzip, compressed, 5 * 1024 * 1024, null);
        var allocated = GC.GetAllocatedBytesForCurrentThread() - before;

        Assert.Equal(MessageInflater.Outcome.Inflated, result.Outcome);
        Assert.Equal(Framed(message), result.Frame.ToArray());

        // The segments' arrays and objects, the decompression stream and its buffer: a few tens of KiB.
        const int Overhead = 64 * 1024;
        Assert.True(allocated <= message.Length + 5 + Segment + Overhead, $"inflating {message.Length} bytes allocated {allocated} bytes; at most {message.Length + 5 + Segment + Overhead} (the frame, one segment of {Segment} more, {Overhead} of overhead)");
    }

    [Theory]
    [InlineData(0)]
    [InlineData(1)]
    [InlineData(Segment - 5)] // the frame ends exactly on its first segment's end
    [InlineData(Segment - 4)]
    [InlineData((2 * Segment) - 5)] // on its second's
    [InlineData((3 * Segment) + 4097)]
    public void Inflate_AnyLength_TheUncompressedFrame_InWholeSegments_NoneEmpty(int length)
    {
        var message = Content(length);

        // The compressed body comes in Kestrel's pipe in pieces: read where it lies, across them.
        var body = Compress(message);
        var result = MessageInflater.Inflate(Gzip, Pieces(body, body.Length / 3, body.Length - 5), length, null);

        Assert.Equal(MessageInflater.Outcome.Inflated, result.Outcome);
        Assert.Equal(length, result.InflatedBytes);
        Assert.Equal(Framed(message), result.Frame.ToArray());
        var segments = new List<int>();
        foreach (var segment in result.Frame)
        {
            segments.Add(segment.Length);
        }

        Assert.Equal((length + 5 + Segment - 1) / Segment, segments.Count);
        Assert.All(segments.Take(segments.Count - 1), s => Assert.Equal(Segment, s));
        Assert.InRange(segments[^1], 1, Segment);
    }

    [Fact]
    public void Inflate_PastTheLimit_OverLimit_PastTheBound_OverBound_NothingCounted()
    {
        var body = new ReadOnlySequence<byte>(Compress(Content(3 * Segment)));

        Assert.Equal(MessageInflater.Outcome.OverLimit, MessageInflater.Inflate(Gzip, body, (3 * Segment) - 1, null).Outcome);

        var inFlight = new RequestBytesInFlight(2 * Segment);
        using (var reservation = inFlight.Start("t:a"))
        {
            var result = MessageInflater.Inflate(Gzip, body, 3 * Segment, reservation);
            Assert.Equal(MessageInflater.Outcome.OverBound, result.Outcome);
            Assert.Equal(result.InflatedBytes, inFlight.Held("t:a"));
            Assert.True(result.InflatedBytes <= 2 * Segment);
        }

        Assert.Equal(0, inFlight.Held("t:a"));
    }

    [Fact]
    public void Inflate_NotGzip_NotDecompressible_CutShortOrPadded_NotWholeGzip()
    {
        var body = Compress(Content(2 * Segment));

        Assert.Equal(MessageInflater.Outcome.NotDecompressible, MessageInflater.Inflate(Gzip, new ReadOnlySequence<byte>([0xAA, 0xBB, 0xCC]), Segment, null).Outcome);
        Assert.Equal(MessageInflater.Outcome.NotWholeGzip, MessageInflater.Inflate(Gzip, new ReadOnlySequence<byte>(body.AsMemory(0, body.Length - 4)), 4 * Segment, null).Outcome);
        Assert.Equal(MessageInflater.Outcome.NotWholeGzip, MessageInflater.Inflate(Gzip, Pieces([.. body, 0, 0], body.Length - 3), 4 * Segment, null).Outcome);
    }

    /// <summary><paramref name="bytes"/> as a sequence of segments cut at <paramref name="cuts"/> (ascending).</summary>
    internal static ReadOnlySequence<byte> Pieces(byte[] bytes, params int[] cuts)
    {
        var bounds = cuts.Where(c => c > 0 && c < bytes.Length).Distinct().Order().Append(bytes.Length).ToList();
        var first = new Piece(bytes.AsMemory(0, bounds[0]), 0);
        var last = first;
        for (var i = 1; i < bounds.Count; i++)
        {
            last = last.Append(bytes.AsMemory(bounds[i - 1], bounds[i] - bounds[i - 1]));
        }

        return new ReadOnlySequence<byte>(first, 0, last, last.Memory.Length);
    }

    private static byte[] Framed(byte[] message)
    {
        var frame = new byte[5 + message.Length];
        BinaryPrimitives.WriteUInt32BigEndian(frame.AsSpan(1), (uint)message.Length);
        message.CopyTo(frame, 5);
        return frame;
    }

    private static byte[] Compress(byte[] data)
    {
        using var output = new MemoryStream();
        using (var gzip = new GZipStream(output, CompressionLevel.Fastest))
        {
            gzip.Write(data);
        }

        return output.ToArray();
    }

    // Text-like: runs of a repeated name with a random byte now and then.
    private static byte[] Content(int length)
    {
        var random = new Random(length);
        var bytes = new byte[length];
        for (var i = 0; i < length; i++)
        {
            bytes[i] = random.Next(64) == 0 ? (byte)random.Next(256) : (byte)"tenants/dev/keys/k "[i % 19];
        }

        return bytes;
    }

    private sealed class Piece : ReadOnlySequenceSegment<byte>
    {
        public Piece(ReadOnlyMemory<byte> memory, long runningIndex)
        {
            Memory = memory;
            RunningIndex = runningIndex;
        }

        public Piece Append(ReadOnlyMemory<byte> memory)
        {
            var next = new Piece(memory, RunningIndex + Memory.Length);
            Next = next;
            return next;
        }
    }
}
