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
/// <para>The cost is one table-driven CRC-32 over the inflated message (at most
/// <c>Kms:MaxRequestBytes</c>), paid before the caller is authenticated like the inflation itself:
/// of the same order as zlib's own inflation, not a multiple of it. (A walk of the deflate blocks,
/// decoding Huffman codes bit by bit, was tried first: ~0.5–1.2 s of CPU for a 4 MiB body that
/// zlib inflates in 20–60 ms — a lever for an unauthenticated caller.)</para>
/// </remarks>
internal static class GzipBody
{
    // The 10-byte header and the 8-byte trailer; the smallest whole member adds two bytes of deflate data.
    private const int HeaderAndTrailer = 18;

    private static readonly uint[] Table = CrcTable();

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
            && BinaryPrimitives.ReadUInt32LittleEndian(body[^8..]) == Crc32(inflated);
    }

    /// <summary>CRC-32 as gzip's trailer has it (ISO-HDLC: reflected polynomial 0xEDB88320, initial and final XOR 0xFFFFFFFF).</summary>
    /// <param name="data">The bytes.</param>
    public static uint Crc32(ReadOnlySpan<byte> data)
    {
        var table = Table;
        var crc = 0xFFFFFFFFu;
        foreach (var b in data)
        {
            crc = table[(byte)(crc ^ b)] ^ (crc >> 8);
        }

        return ~crc;
    }

    private static uint[] CrcTable()
    {
        var table = new uint[256];
        for (var n = 0u; n < 256; n++)
        {
            var c = n;
            for (var k = 0; k < 8; k++)
            {
                c = (c & 1) != 0 ? 0xEDB88320u ^ (c >> 1) : c >> 1;
            }

            table[n] = c;
        }

        return table;
    }
}
