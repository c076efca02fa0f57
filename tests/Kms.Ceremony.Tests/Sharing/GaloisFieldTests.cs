using Kms.Ceremony.Sharing;

namespace Kms.Ceremony.Tests.Sharing;

public sealed class GaloisFieldTests
{
    [Theory]
    // FIPS-197 §4.2 and §4.2.1: {57}·{83} = {c1}, {57}·{13} = {fe}, {53}·{ca} = {01}; xtime({80}) = {1b}.
    [InlineData(0x57, 0x83, 0xC1)]
    [InlineData(0x57, 0x13, 0xFE)]
    [InlineData(0x53, 0xCA, 0x01)]
    [InlineData(0x80, 0x02, 0x1B)]
    [InlineData(0x57, 0x02, 0xAE)]
    [InlineData(0x57, 0x10, 0x07)]
    [InlineData(0x00, 0xFF, 0x00)]
    [InlineData(0x01, 0xFF, 0xFF)]
    public void Multiply_FipsValues_Match(int a, int b, int product)
    {
        Assert.Equal((byte)product, GaloisField.Multiply((byte)a, (byte)b));
        Assert.Equal((byte)product, GaloisField.Multiply((byte)b, (byte)a));
    }

    [Fact]
    public void Multiply_EveryPair_MatchesLongMultiplicationThenReduction()
    {
        for (var a = 0; a < 256; a++)
        {
            for (var b = 0; b < 256; b++)
            {
                Assert.Equal(Reference(a, b), GaloisField.Multiply((byte)a, (byte)b));
            }
        }
    }

    [Fact]
    public void Inverse_EveryNonZeroElement_MultipliesToOne()
    {
        Assert.Equal(0, GaloisField.Inverse(0));
        for (var a = 1; a < 256; a++)
        {
            Assert.Equal(1, GaloisField.Multiply((byte)a, GaloisField.Inverse((byte)a)));
        }
        Assert.Equal(0xCA, GaloisField.Inverse(0x53));
    }

    // Carry-less product as a 15-bit polynomial, then reduced modulo 0x11B bit by bit: another
    // algorithm than the interleaved shift-and-reduce under test.
    private static byte Reference(int a, int b)
    {
        var product = 0;
        for (var bit = 0; bit < 8; bit++)
        {
            if ((b & (1 << bit)) != 0)
            {
                product ^= a << bit;
            }
        }
        for (var bit = 14; bit >= 8; bit--)
        {
            if ((product & (1 << bit)) != 0)
            {
                product ^= 0x11B << (bit - 8);
            }
        }
        return (byte)product;
    }
}
