namespace Kms.Ceremony.Sharing;

/// <summary>
/// GF(2^8) with the AES polynomial x^8 + x^4 + x^3 + x + 1 (0x11B).
/// </summary>
/// <remarks>
/// Constant time: no table is indexed and no branch is taken on an operand, because operands
/// are secret (key bytes, polynomial coefficients). Multiplication is shift-and-add over the
/// eight bits of <c>b</c> with masks; the inverse is <c>a^254</c> by a fixed chain of
/// squarings and multiplications (and maps 0 to 0).
/// </remarks>
internal static class GaloisField
{
    public static byte Multiply(byte a, byte b)
    {
        int x = a;
        int y = b;
        int product = 0;
        for (var bit = 0; bit < 8; bit++)
        {
            product ^= x & -(y & 1);
            y >>= 1;
            // x * X, reduced: when bit 7 was set, x << 1 has bit 8 and 0x11B clears it.
            x = (x << 1) ^ (0x11B & -((x >> 7) & 1));
        }
        return (byte)product;
    }

    public static byte Inverse(byte a)
    {
        // a^254 = a^2 · a^4 · a^8 · a^16 · a^32 · a^64 · a^128 (a^255 = 1 for a ≠ 0).
        var square = a;
        byte result = 1;
        for (var i = 0; i < 7; i++)
        {
            square = Multiply(square, square);
            result = Multiply(result, square);
        }
        return result;
    }
}
