using System.Buffers;
using System.Buffers.Binary;

namespace Kms.Server.Grpc;

/// <summary>
/// Whether a gzip body (RFC 1952) that <c>GZipStream</c> inflated without an error is one whole
/// member: it ends with the 8-byte trailer — CRC-32 and length (mod 2^32) — of what it inflated to.
/// </summary>
/// <remarks>
/// .NET's <c>GZipStream</c> inflates a body cut short — in its deflate data, or in the trailer
/// whose CRC-32 and length zlib would have checked — to the part that arrived, without an error
/// (unless the process-wide <c>System.IO.Compression.UseStrictValidation</c> switch is set before
/// its first use), and ignores bytes after a member that do not start another. A trailer that
/// arrived was checked by zlib; what is left to find out is whether it arrived, and nothing came
/// after it. Checking the body's last 8 bytes against the inflated message answers both: a cut body
/// ends in deflate data, a padded one in the padding, and either matches the CRC-32 and length of
/// what it inflated to only by a 2^-64 chance (or on purpose, by a sender who could as well have
/// sent that message whole). Several members concatenated end with the last one's trailer, which is
/// not the whole message's: they are refused too (gRPC's gzip compressors write one member).
/// <para>The cost is one CRC-32 over the inflated message (at most <c>Kms:MaxRequestBytes</c>), paid
/// before the caller is authenticated like the inflation itself: <see cref="GzipCrc32"/> folds it
/// with carry-less multiplication, about one copy of the message (0.1–2.5× zlib's inflation; the
/// byte-at-a-time loop it replaced cost 5–33×: docs/benchmarks.md). (A walk of the deflate blocks,
/// decoding Huffman codes bit by bit, was tried first: ~0.5–1.2 s of CPU for a 4 MiB body that
/// zlib inflates in 20–60 ms — a lever for an unauthenticated caller.)</para>
/// </remarks>
internal static class GzipBody
{
    // The 10-byte header and the 8-byte trailer; the smallest whole member adds two bytes of deflate data.
    private const int HeaderAndTrailer = 18;

    /// <summary>
    /// Whether <paramref name="body"/> is one whole gzip member of <paramref name="inflated"/>, or
    /// empty (<c>GZipStream</c> writes nothing at all for an empty message, and inflates nothing to nothing).
    /// </summary>
    /// <param name="body">The compressed message, which <c>GZipStream</c> inflated without an error.</param>
    /// <param name="inflated">What it inflated to.</param>
    public static bool IsWhole(ReadOnlySpan<byte> body, ReadOnlySpan<byte> inflated)
    {
        if (body.IsEmpty)
        {
            return inflated.IsEmpty;
        }

        return body.Length >= HeaderAndTrailer
            && BinaryPrimitives.ReadUInt32LittleEndian(body[^4..]) == unchecked((uint)inflated.Length)
            && BinaryPrimitives.ReadUInt32LittleEndian(body[^8..]) == GzipCrc32.Compute(inflated);
    }

    /// <summary>
    /// <see cref="IsWhole(ReadOnlySpan{byte}, ReadOnlySpan{byte})"/> of a body held in segments, by
    /// the length and CRC-32 of what it inflated to (computed as it was inflated, with
    /// <see cref="GzipCrc32.Update"/>), so the inflated message need not be one span.
    /// </summary>
    /// <param name="body">The compressed message, which <c>GZipStream</c> inflated without an error.</param>
    /// <param name="inflatedLength">The length of what it inflated to.</param>
    /// <param name="inflatedCrc">The CRC-32 of what it inflated to.</param>
    public static bool IsWhole(ReadOnlySequence<byte> body, long inflatedLength, uint inflatedCrc)
    {
        if (body.IsEmpty)
        {
            return inflatedLength == 0;
        }

        if (body.Length < HeaderAndTrailer)
        {
            return false;
        }

        Span<byte> trailer = stackalloc byte[8];
        body.Slice(body.Length - 8).CopyTo(trailer);
        return BinaryPrimitives.ReadUInt32LittleEndian(trailer[4..]) == unchecked((uint)inflatedLength)
            && BinaryPrimitives.ReadUInt32LittleEndian(trailer) == inflatedCrc;
    }
}
