using System.Buffers;
using System.Buffers.Binary;
using Grpc.Net.Compression;

namespace Kms.Server.Grpc;

/// <summary>
/// Inflates a compressed gRPC request message, within a size limit and counted against its
/// tenant's bytes in flight as it is produced, into an uncompressed frame (the 5-byte header, then
/// the message) held in a chain of fixed-size segments: what the server holds is the inflated
/// length, plus at most one segment.
/// </summary>
/// <remarks>
/// Before, the message was inflated into a <see cref="MemoryStream"/>, whose buffer doubles as it
/// grows: up to twice what was counted held at once, and about three times the message allocated
/// on the way (each smaller buffer copied into the next), plus a copy of the compressed body. Here
/// the compressed body is read where it lies (the request pipe's buffers), each read of the
/// decompression stream goes straight into the free end of the last segment, and a gzip message's
/// CRC-32 is computed as it is inflated (<see cref="GzipBody"/> needs only that and the length).
/// The segments are plain arrays, left to the collector as the memory stream's buffer was (neither
/// is zeroed: the request parsed from them holds the same bytes, unzeroed, until its call ends).
/// grpc-dotnet parses a message of several segments as it does one of Kestrel's pipe.
/// </remarks>
internal static class MessageInflater
{
    /// <summary>The capacity of each segment, and so the most one read of the decompression stream produces before it is counted.</summary>
    public const int SegmentBytes = 16 * 1024;

    private const int HeaderSize = 5;

    /// <summary>How an inflation ended.</summary>
    public enum Outcome
    {
        /// <summary>Inflated whole within the limit and the bound: <see cref="Result.Frame"/> holds it.</summary>
        Inflated,

        /// <summary>It inflates to more than the limit.</summary>
        OverLimit,

        /// <summary>Its next bytes would pass its owner's bound (the reservation refused them).</summary>
        OverBound,

        /// <summary>The compressed bytes do not decompress.</summary>
        NotDecompressible,

        /// <summary>A gzip body that is not one whole member (<see cref="GzipBody"/>).</summary>
        NotWholeGzip,
    }

    /// <summary>How an inflation ended, the bytes inflated and kept before it ended, and the frame when it was <see cref="Outcome.Inflated"/>.</summary>
    /// <param name="Outcome">How it ended.</param>
    /// <param name="InflatedBytes">The message bytes kept (and counted) before it ended: the whole message when inflated.</param>
    /// <param name="Frame">The uncompressed frame (header and message) when inflated; empty otherwise.</param>
    public readonly record struct Result(Outcome Outcome, long InflatedBytes, ReadOnlySequence<byte> Frame);

    /// <summary>
    /// Inflates <paramref name="compressed"/> with <paramref name="provider"/>, at most
    /// <paramref name="limit"/> bytes, each read counted against <paramref name="reservation"/> (when
    /// there is one) before it is kept.
    /// </summary>
    /// <param name="provider">The message's compression.</param>
    /// <param name="compressed">The compressed message (after its frame header).</param>
    /// <param name="limit">The most the message may inflate to.</param>
    /// <param name="reservation">What the inflated bytes are counted against, or null.</param>
    public static Result Inflate(ICompressionProvider provider, ReadOnlySequence<byte> compressed, int limit, Overload.RequestBytesInFlight.Reservation? reservation)
    {
        var gzip = provider.EncodingName == "gzip";
        var first = new Segment { Filled = HeaderSize };
        Segment? previous = null;
        var last = first;
        long inflated = 0;
        var crc = 0xFFFFFFFFu;
        try
        {
            using var decompression = provider.CreateDecompressionStream(new SequenceStream(compressed));
            while (true)
            {
                if (last.Filled == SegmentBytes)
                {
                    (previous, last) = (last, last.Append());
                }

                // No further than the limit and the one byte that shows the message is longer: a
                // segment's room (16 KiB) would inflate past a small limit (4 KiB) before it is checked.
                var room = (int)Math.Min(SegmentBytes - last.Filled, limit - inflated + 1);
                var read = decompression.Read(last.Buffer.AsSpan(last.Filled, room));
                if (read == 0)
                {
                    break;
                }

                if (inflated + read > limit)
                {
                    return new(Outcome.OverLimit, inflated, default);
                }

                if (reservation is not null && !reservation.TryAdd(read))
                {
                    return new(Outcome.OverBound, inflated, default);
                }

                if (gzip)
                {
                    crc = GzipCrc32.Update(crc, last.Buffer.AsSpan(last.Filled, read));
                }

                last.Filled += read;
                inflated += read;
            }
        }
        catch (InvalidDataException)
        {
            return new(Outcome.NotDecompressible, inflated, default);
        }

        // GZipStream inflates a body cut short to what arrived, without an error, and skips bytes after a member.
        if (gzip && !GzipBody.IsWhole(compressed, inflated, ~crc))
        {
            return new(Outcome.NotWholeGzip, inflated, default);
        }

        // A message that ends on a segment's end leaves the next one empty: it is dropped.
        if (last.Filled == 0 && previous is not null)
        {
            previous.Unlink();
            last = previous;
        }

        first.Buffer[0] = 0;
        BinaryPrimitives.WriteUInt32BigEndian(first.Buffer.AsSpan(1), (uint)inflated);
        return new(Outcome.Inflated, inflated, new ReadOnlySequence<byte>(first.Seal(), 0, last, last.Filled));
    }

    // One fixed-size buffer of the chain; its Memory (what the sequence reads) is set to the filled
    // part once the inflation is done.
    private sealed class Segment : ReadOnlySequenceSegment<byte>
    {
        public byte[] Buffer { get; } = new byte[SegmentBytes];

        public int Filled { get; set; }

        public Segment Append()
        {
            var next = new Segment();
            Next = next;
            return next;
        }

        public void Unlink() => Next = null;

        // Sets each segment's Memory and RunningIndex, from this one on; returns this one.
        public Segment Seal()
        {
            long index = 0;
            for (var segment = this; segment is not null; segment = (Segment?)segment.Next)
            {
                segment.Memory = segment.Buffer.AsMemory(0, segment.Filled);
                segment.RunningIndex = index;
                index += segment.Filled;
            }

            return this;
        }
    }

    // The compressed message read where it lies, for the decompression stream: no copy of it.
    private sealed class SequenceStream(ReadOnlySequence<byte> sequence) : Stream
    {
        private ReadOnlySequence<byte> _rest = sequence;

        public override bool CanRead => true;

        public override bool CanSeek => false;

        public override bool CanWrite => false;

        public override long Length => throw new NotSupportedException();

        public override long Position { get => throw new NotSupportedException(); set => throw new NotSupportedException(); }

        public override int Read(byte[] buffer, int offset, int count) => Read(buffer.AsSpan(offset, count));

        public override int Read(Span<byte> buffer)
        {
            var count = (int)Math.Min(buffer.Length, _rest.Length);
            _rest.Slice(0, count).CopyTo(buffer);
            _rest = _rest.Slice(count);
            return count;
        }

        public override void Flush()
        {
        }

        public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();

        public override void SetLength(long value) => throw new NotSupportedException();

        public override void Write(byte[] buffer, int offset, int count) => throw new NotSupportedException();
    }
}
