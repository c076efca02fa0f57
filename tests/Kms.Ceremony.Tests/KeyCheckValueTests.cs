using System.Security.Cryptography;

namespace Kms.Ceremony.Tests;

public sealed class KeyCheckValueTests
{
    [Theory]
    // AES-256 of the zero block: FIPS-197 Appendix C.3's key (openssl enc -aes-256-ecb gives
    // f29000b62a499fd0a9f39a6add2e7780), and the all-zero key (AESAVS: dc95c078a2408989ad48a21492842087).
    [InlineData("000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f", "F29000")]
    [InlineData("0000000000000000000000000000000000000000000000000000000000000000", "DC95C0")]
    public void Aes256_KnownKeys_FirstThreeBytesOfTheZeroBlockEncrypted(string keyHex, string expected)
    {
        Assert.Equal(expected, KeyCheckValue.Aes256(Convert.FromHexString(keyHex)));
    }

    [Fact]
    public void Aes256_RandomKeys_MatchAesEcbOfTheZeroBlock()
    {
        for (var i = 0; i < 20; i++)
        {
            var key = RandomNumberGenerator.GetBytes(32);
            using var aes = Aes.Create();
            aes.Key = key;
            var block = aes.EncryptEcb(new byte[16], PaddingMode.None);

            Assert.Equal(Convert.ToHexString(block, 0, 3), KeyCheckValue.Aes256(key));
        }
    }

    [Theory]
    [InlineData(16)]
    [InlineData(31)]
    [InlineData(0)]
    public void Aes256_NotThirtyTwoBytes_Refused(int length)
    {
        var e = Assert.Throws<CeremonyException>(() => KeyCheckValue.Aes256(new byte[length]));

        Assert.Equal($"an AES-256 key has 32 bytes, not {length}", e.Message);
    }

    [Theory]
    [InlineData("f29000", "F29000")]
    [InlineData("F29000", "F29000")]
    [InlineData("F2900", null)]
    [InlineData("F2900G", null)]
    [InlineData(null, null)]
    public void Normalize_HexOfThreeBytes_UpperCase(string? value, string? expected)
    {
        Assert.Equal(expected, KeyCheckValue.Normalize(value));
    }
}
