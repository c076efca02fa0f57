namespace Kms.Server.Grpc;

/// <summary>
/// Whether a gzip body (RFC 1952) is whole: one or more members, each a header, deflate data
/// (RFC 1951) up to the end of its final block, and the 8-byte trailer (CRC-32, length), with
/// nothing after the last.
/// </summary>
/// <remarks>
/// .NET's <c>GZipStream</c> inflates a body cut short — in its deflate data, or in the trailer
/// whose CRC-32 and length it would have checked — to the part that arrived, without an error
/// (unless the process-wide <c>System.IO.Compression.UseStrictValidation</c> switch is set before
/// its first use), and ignores bytes after the last member that do not start another. This walks
/// the body's structure without inflating it (Huffman codes decoded bit by bit, as zlib's
/// <c>puff</c> does) to find where each member ends. It runs on a body <c>GZipStream</c> inflated
/// without an error, so the codes it meets were valid for zlib, and a trailer that arrived was
/// checked by zlib: what is left to find out here is only whether everything arrived, and nothing more.
/// </remarks>
internal static class GzipBody
{
    private static readonly byte[] LengthExtraBits = [0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 0];
    private static readonly byte[] DistanceExtraBits = [0, 0, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13, 13];
    private static readonly byte[] CodeLengthOrder = [16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1, 15];
    private static readonly Huffman FixedLengths = FixedLengthCode();
    private static readonly Huffman FixedDistances = new([.. Enumerable.Repeat((byte)5, 30)]);

    /// <summary>What is wrong with <paramref name="body"/> (null: it is whole gzip members, nothing after them, or empty).</summary>
    /// <param name="body">The compressed message, which <c>GZipStream</c> inflated without an error.</param>
    /// <remarks>An empty body is the empty message: <c>GZipStream</c> writes nothing at all for it.</remarks>
    public static GzipProblem? Problem(ReadOnlySpan<byte> body)
    {
        if (body.IsEmpty)
        {
            return null;
        }

        try
        {
            for (var position = Member(body, 0); position < body.Length; position = Member(body, position))
            {
                if (body.Length - position < 2 || body[position] != 0x1F || body[position + 1] != 0x8B)
                {
                    // GZipStream skips what follows a member without starting another.
                    return GzipProblem.BytesAfter;
                }
            }

            return null;
        }
        catch (CutShortException)
        {
            return GzipProblem.CutShort;
        }
        catch (InvalidDataException)
        {
            return GzipProblem.NotGzip;
        }
    }

    // Where the member at position ends.
    private static int Member(ReadOnlySpan<byte> body, int position)
    {
        var bits = new Bits(body, Header(body, position));
        bool final;
        do
        {
            final = bits.Take(1) == 1;
            switch (bits.Take(2))
            {
                case 0:
                    Stored(ref bits);
                    break;
                case 1:
                    Codes(ref bits, FixedLengths, FixedDistances);
                    break;
                case 2:
                    Dynamic(ref bits);
                    break;
                default:
                    throw new InvalidDataException("block type 3");
            }
        }
        while (!final);

        bits.DropToByte();
        bits.Skip(8); // CRC-32 and length
        return bits.Position;
    }

    // Where the deflate data starts: after the 10 bytes, and the optional fields FLG names.
    private static int Header(ReadOnlySpan<byte> body, int position)
    {
        Need(body, position, 10);
        var flags = body[position + 3];
        if (body[position] != 0x1F || body[position + 1] != 0x8B || body[position + 2] != 8 || (flags & 0xE0) != 0)
        {
            throw new InvalidDataException("not a gzip header");
        }

        position += 10;
        if ((flags & 0x04) != 0)
        {
            Need(body, position, 2);
            position += 2 + (body[position] | (body[position + 1] << 8));
        }

        // The file name, then the comment: each ends with a zero byte.
        for (var flag = 0x08; flag <= 0x10; flag <<= 1)
        {
            if ((flags & flag) != 0)
            {
                var end = position < body.Length ? body[position..].IndexOf((byte)0) : -1;
                position = end < 0 ? throw new CutShortException() : position + end + 1;
            }
        }

        if ((flags & 0x02) != 0)
        {
            position += 2;
        }

        Need(body, position, 0);
        return position;
    }

    private static void Need(ReadOnlySpan<byte> body, int position, int count)
    {
        if (body.Length - position < count)
        {
            throw new CutShortException();
        }
    }

    private static void Stored(ref Bits bits)
    {
        bits.DropToByte();
        var length = bits.Take(16);
        if (length != (~bits.Take(16) & 0xFFFF))
        {
            throw new InvalidDataException("stored block length");
        }

        bits.Skip(length);
    }

    private static void Dynamic(ref Bits bits)
    {
        var lengthCount = bits.Take(5) + 257;
        var distanceCount = bits.Take(5) + 1;
        var codeLengthCount = bits.Take(4) + 4;
        Span<byte> codeLengths = stackalloc byte[19];
        for (var i = 0; i < codeLengthCount; i++)
        {
            codeLengths[CodeLengthOrder[i]] = (byte)bits.Take(3);
        }

        var codeLengthCode = new Huffman(codeLengths);
        var lengths = new byte[lengthCount + distanceCount];
        for (var i = 0; i < lengths.Length;)
        {
            var symbol = codeLengthCode.Decode(ref bits);
            if (symbol < 16)
            {
                lengths[i++] = (byte)symbol;
                continue;
            }

            var (repeated, times) = symbol switch
            {
                16 when i > 0 => (lengths[i - 1], 3 + bits.Take(2)),
                17 => ((byte)0, 3 + bits.Take(3)),
                18 => ((byte)0, 11 + bits.Take(7)),
                _ => throw new InvalidDataException("code length repeat"),
            };
            if (i + times > lengths.Length)
            {
                throw new InvalidDataException("code lengths overrun");
            }

            lengths.AsSpan(i, times).Fill(repeated);
            i += times;
        }

        Codes(ref bits, new Huffman(lengths.AsSpan(0, lengthCount)), new Huffman(lengths.AsSpan(lengthCount)));
    }

    // A block's literals and length/distance pairs, up to its end-of-block code.
    private static void Codes(ref Bits bits, Huffman lengths, Huffman distances)
    {
        for (var symbol = lengths.Decode(ref bits); symbol != 256; symbol = lengths.Decode(ref bits))
        {
            if (symbol < 256)
            {
                continue;
            }

            if (symbol - 257 >= LengthExtraBits.Length)
            {
                throw new InvalidDataException("length code");
            }

            bits.Take(LengthExtraBits[symbol - 257]);
            var distance = distances.Decode(ref bits);
            if (distance >= DistanceExtraBits.Length)
            {
                throw new InvalidDataException("distance code");
            }

            bits.Take(DistanceExtraBits[distance]);
        }
    }

    private static Huffman FixedLengthCode()
    {
        var lengths = new byte[288];
        lengths.AsSpan(0, 144).Fill(8);
        lengths.AsSpan(144, 112).Fill(9);
        lengths.AsSpan(256, 24).Fill(7);
        lengths.AsSpan(280, 8).Fill(8);
        return new Huffman(lengths);
    }

    // A canonical Huffman code (RFC 1951 3.2.2): how many codes of each length, and the symbols in code order.
    private sealed class Huffman
    {
        private readonly short[] _count = new short[16];
        private readonly short[] _symbols;

        public Huffman(ReadOnlySpan<byte> lengths)
        {
            foreach (var length in lengths)
            {
                _count[length]++;
            }

            Span<short> offsets = stackalloc short[16];
            for (var length = 1; length < 15; length++)
            {
                offsets[length + 1] = (short)(offsets[length] + _count[length]);
            }

            _symbols = new short[lengths.Length];
            for (short symbol = 0; symbol < lengths.Length; symbol++)
            {
                if (lengths[symbol] != 0)
                {
                    _symbols[offsets[lengths[symbol]]++] = symbol;
                }
            }
        }

        public int Decode(ref Bits bits)
        {
            // code: the bits read so far; first: the first code of this length; index: its symbol's.
            int code = 0, first = 0, index = 0;
            for (var length = 1; length < 16; length++)
            {
                code |= bits.Take(1);
                var count = _count[length];
                if (code - count < first)
                {
                    return _symbols[index + (code - first)];
                }

                index += count;
                first = (first + count) << 1;
                code <<= 1;
            }

            throw new InvalidDataException("no such code");
        }
    }

    // The body read least significant bit first (RFC 1951 3.1.1); at most 7 bits held over.
    private ref struct Bits(ReadOnlySpan<byte> data, int position)
    {
        private readonly ReadOnlySpan<byte> _data = data;
        private uint _held;
        private int _heldCount;

        public int Position { get; private set; } = position;

        public int Take(int count)
        {
            while (_heldCount < count)
            {
                if (Position == _data.Length)
                {
                    throw new CutShortException();
                }

                _held |= (uint)_data[Position++] << _heldCount;
                _heldCount += 8;
            }

            var value = (int)(_held & ((1u << count) - 1));
            _held >>= count;
            _heldCount -= count;
            return value;
        }

        public void DropToByte()
        {
            _held = 0;
            _heldCount = 0;
        }

        public void Skip(int bytes)
        {
            if (_data.Length - Position < bytes)
            {
                throw new CutShortException();
            }

            Position += bytes;
        }
    }

    private sealed class CutShortException : Exception;
}

/// <summary>What <see cref="GzipBody.Problem"/> found.</summary>
internal enum GzipProblem
{
    /// <summary>The body ends before a member's end-of-stream marker or its trailer.</summary>
    CutShort,

    /// <summary>Bytes follow the last member that are no member.</summary>
    BytesAfter,

    /// <summary>Not gzip (zlib refuses it too).</summary>
    NotGzip,
}
