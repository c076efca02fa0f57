using System.Buffers.Binary;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace Kms.Server.Grpc;

/// <summary>
/// CRC-32 as gzip's trailer has it (CRC-32/ISO-HDLC: reflected polynomial 0xEDB88320, initial and
/// final XOR 0xFFFFFFFF), fast enough that checking a gzip request body costs a small fraction of
/// inflating it.
/// </summary>
/// <remarks>
/// Whole 16-byte blocks of an input of at least 64 bytes are folded with carry-less multiplication
/// where the CPU has it (x86 PCLMULQDQ: Gopal et al., "Fast CRC Computation for Generic Polynomials
/// Using PCLMULQDQ Instruction", Intel 2009, with the bit-reflected constants and Barrett reduction
/// that zlib's SIMD variants use); the rest — and everything on a CPU without it — goes through an
/// eight-table slice-by-8 loop. Both work on the running register (pre-inverted), so one can carry
/// on where the other stopped. The byte-at-a-time loop this replaced cost 5–33× zlib's inflation of
/// the same body, paid before the caller is authenticated (docs/benchmarks.md).
/// </remarks>
internal static class GzipCrc32
{
    // The folding needs four 16-byte lanes to start with.
    private const int FoldMinimum = 64;

    // Slice-by-8: table k maps a byte to its CRC contribution k bytes further on; table 0 is the classic one.
    private static readonly uint[][] Tables = SliceTables();

    /// <summary>The CRC-32 of <paramref name="data"/>.</summary>
    /// <param name="data">The bytes.</param>
    public static uint Compute(ReadOnlySpan<byte> data) => ~Update(0xFFFFFFFFu, data);

    /// <summary>
    /// Carries the CRC register (pre-inverted: start with 0xFFFFFFFF, invert at the end) on over
    /// <paramref name="data"/>, on the fastest path the CPU has.
    /// </summary>
    /// <param name="register">The register after the bytes before <paramref name="data"/>.</param>
    /// <param name="data">The next bytes.</param>
    public static uint Update(uint register, ReadOnlySpan<byte> data)
    {
        if (Pclmulqdq.IsSupported && data.Length >= FoldMinimum)
        {
            var blocks = data.Length & ~15;
            register = Fold(register, data[..blocks]);
            data = data[blocks..];
        }

        return UpdateScalar(register, data);
    }

    /// <summary><see cref="Update"/> without carry-less multiplication: the path of a CPU that lacks it.</summary>
    /// <param name="register">The register after the bytes before <paramref name="data"/>.</param>
    /// <param name="data">The next bytes.</param>
    public static uint UpdateScalar(uint register, ReadOnlySpan<byte> data)
    {
        var tables = Tables;
        uint[] t0 = tables[0], t1 = tables[1], t2 = tables[2], t3 = tables[3], t4 = tables[4], t5 = tables[5], t6 = tables[6], t7 = tables[7];
        var crc = register;
        while (data.Length >= 8)
        {
            var low = BinaryPrimitives.ReadUInt32LittleEndian(data) ^ crc;
            var high = BinaryPrimitives.ReadUInt32LittleEndian(data[4..]);
            crc = t7[(byte)low] ^ t6[(byte)(low >> 8)] ^ t5[(byte)(low >> 16)] ^ t4[low >> 24]
                ^ t3[(byte)high] ^ t2[(byte)(high >> 8)] ^ t1[(byte)(high >> 16)] ^ t0[high >> 24];
            data = data[8..];
        }

        foreach (var b in data)
        {
            crc = t0[(byte)(crc ^ b)] ^ (crc >> 8);
        }

        return crc;
    }

    // data.Length is at least 64 and a multiple of 16. Four lanes of 16 bytes are folded forward 64
    // bytes at a time (x^(512±64) mod P), then into one lane (x^(128±64) mod P), then that lane
    // takes the remaining blocks; 128 bits are reduced to 64, then by Barrett reduction to 32.
    private static uint Fold(uint register, ReadOnlySpan<byte> data)
    {
        var k1k2 = Vector128.Create(0x0154442bd4UL, 0x01c6e41596UL);
        var k3k4 = Vector128.Create(0x01751997d0UL, 0x00ccaa009eUL);
        var k5k0 = Vector128.Create(0x0163cd6124UL, 0UL);
        var poly = Vector128.Create(0x01db710641UL, 0x01f7011641UL); // P' and the Barrett constant
        var low32 = Vector128.Create(~0u, 0u, ~0u, 0u).AsUInt64();

        var x1 = Load(data, 0) ^ Vector128.CreateScalar((ulong)register);
        var x2 = Load(data, 16);
        var x3 = Load(data, 32);
        var x4 = Load(data, 48);
        var offset = FoldMinimum;
        for (; data.Length - offset >= FoldMinimum; offset += FoldMinimum)
        {
            x1 = FoldInto(x1, k1k2, Load(data, offset));
            x2 = FoldInto(x2, k1k2, Load(data, offset + 16));
            x3 = FoldInto(x3, k1k2, Load(data, offset + 32));
            x4 = FoldInto(x4, k1k2, Load(data, offset + 48));
        }

        x1 = FoldInto(x1, k3k4, x2);
        x1 = FoldInto(x1, k3k4, x3);
        x1 = FoldInto(x1, k3k4, x4);
        for (; offset < data.Length; offset += 16)
        {
            x1 = FoldInto(x1, k3k4, Load(data, offset));
        }

        // 128 bits to 64.
        x1 = Sse2.ShiftRightLogical128BitLane(x1, 8) ^ Pclmulqdq.CarrylessMultiply(x1, k3k4, 0x10);
        x1 = Pclmulqdq.CarrylessMultiply(x1 & low32, k5k0, 0x00) ^ Sse2.ShiftRightLogical128BitLane(x1, 4);

        // Barrett reduction to 32.
        var t = Pclmulqdq.CarrylessMultiply(x1 & low32, poly, 0x10) & low32;
        x1 ^= Pclmulqdq.CarrylessMultiply(t, poly, 0x00);
        return x1.AsUInt32().GetElement(1);
    }

    // The lane moved 128 bits further on (its halves times x^(n+64) and x^n mod P), plus the next block.
    private static Vector128<ulong> FoldInto(Vector128<ulong> lane, Vector128<ulong> constants, Vector128<ulong> next) =>
        Pclmulqdq.CarrylessMultiply(lane, constants, 0x00) ^ Pclmulqdq.CarrylessMultiply(lane, constants, 0x11) ^ next;

    private static Vector128<ulong> Load(ReadOnlySpan<byte> data, int offset) => Vector128.Create(data.Slice(offset, 16)).AsUInt64();

    private static uint[][] SliceTables()
    {
        var tables = new uint[8][];
        tables[0] = new uint[256];
        for (var n = 0u; n < 256; n++)
        {
            var c = n;
            for (var k = 0; k < 8; k++)
            {
                c = (c & 1) != 0 ? 0xEDB88320u ^ (c >> 1) : c >> 1;
            }

            tables[0][n] = c;
        }

        for (var k = 1; k < 8; k++)
        {
            tables[k] = new uint[256];
            for (var n = 0; n < 256; n++)
            {
                var previous = tables[k - 1][n];
                tables[k][n] = tables[0][(byte)previous] ^ (previous >> 8);
            }
        }

        return tables;
    }
}
