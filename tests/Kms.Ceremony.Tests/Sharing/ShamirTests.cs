using System.Security.Cryptography;
using Kms.Ceremony.Sharing;

namespace Kms.Ceremony.Tests.Sharing;

public sealed class ShamirTests
{
    private static readonly byte[] DomainKey = Convert.FromHexString("000102030405060708090A0B0C0D0E0F101112131415161718191A1B1C1D1E1F");

    [Theory]
    [InlineData(2, 2)]
    [InlineData(2, 3)]
    [InlineData(3, 5)]
    [InlineData(5, 5)]
    [InlineData(4, 7)]
    public void Combine_EverySubsetOfThresholdOrMoreShares_RebuildsTheSecret(int threshold, int count)
    {
        var shares = Shamir.Split(DomainKey, threshold, count);

        foreach (var subset in Subsets(shares).Where(s => s.Count >= threshold))
        {
            Assert.Equal(DomainKey, Shamir.Combine(subset, threshold));
        }
    }

    [Theory]
    [InlineData(2, 3)]
    [InlineData(3, 5)]
    [InlineData(5, 5)]
    public void Combine_ThresholdMinusOneShares_Refused(int threshold, int count)
    {
        var shares = Shamir.Split(DomainKey, threshold, count);

        foreach (var subset in Subsets(shares).Where(s => s.Count == threshold - 1))
        {
            var e = Assert.Throws<CeremonyException>(() => Shamir.Combine(subset, threshold));
            Assert.Equal(CeremonyError.NotEnoughShares, e.Error);
            Assert.Equal($"need {threshold} shares, got {threshold - 1}", e.Message);
        }
    }

    [Theory]
    [InlineData(3, 5)]
    [InlineData(5, 5)]
    public void Combine_ThresholdMinusOneSharesPassedOffAsEnough_DoesNotGiveTheSecret(int threshold, int count)
    {
        var shares = Shamir.Split(DomainKey, threshold, count);

        foreach (var subset in Subsets(shares).Where(s => s.Count == threshold - 1))
        {
            Assert.NotEqual(DomainKey, Shamir.Combine(subset, threshold - 1));
        }
    }

    [Fact]
    public void Split_TwoOfThreeOneShare_EverySecretEquallyConsistent()
    {
        // Over all 256 coefficients, count the value of share 3 under each secret: one share of a
        // 2-of-N split leaves every secret exactly equally likely, whatever the share shows.
        var counts = new int[256, 256]; // [secret, share byte]
        for (var secret = 0; secret < 256; secret++)
        {
            for (var coefficient = 0; coefficient < 256; coefficient++)
            {
                var shares = Shamir.Split([(byte)secret], 2, 3, new FixedRandom([(byte)coefficient]));
                counts[secret, shares[2].Value[0]]++;
            }
        }
        for (var secret = 0; secret < 256; secret++)
        {
            for (var value = 0; value < 256; value++)
            {
                Assert.Equal(1, counts[secret, value]);
            }
        }
    }

    [Fact]
    public void Split_ThreeOfFiveTwoShares_SameDistributionWhateverTheSecret()
    {
        // Two shares (x = 2 and x = 5) of a 3-of-5 split of one byte. Feed Split every coefficient
        // pair (a1, a2) and count the share pairs (y2, y5) it gives: for M−1 shares to say nothing,
        // their distribution must not depend on the secret, i.e. every pair exactly once per secret.
        // Sixteen secrets spread over the byte (0x00, 0x11, …, 0xFF); all 256 would take 16 times as long.
        var counts = new int[256 * 256]; // [y2 * 256 + y5], for the secret in hand
        for (var secret = 0; secret < 256; secret += 0x11)
        {
            Array.Clear(counts);
            for (var coefficients = 0; coefficients < 256 * 256; coefficients++)
            {
                var shares = Shamir.Split([(byte)secret], 3, 5, new FixedRandom([(byte)(coefficients >> 8), (byte)coefficients]));
                counts[(shares[1].Value[0] << 8) | shares[4].Value[0]]++;
                foreach (var share in shares)
                {
                    share.Dispose();
                }
            }

            var skewed = Array.FindIndex(counts, c => c != 1);
            Assert.True(skewed < 0, $"secret {secret}: shares (y2, y5) = ({skewed >> 8}, {skewed & 0xFF}) came out {(skewed < 0 ? 0 : counts[skewed])} times in 65536, not once");
        }
    }

    [Fact]
    public void Split_AsksTheRandomSourceOnceForAllCoefficients()
    {
        var random = new FixedRandom(new byte[32 * 2]);

        var shares = Shamir.Split(DomainKey, 3, 5, random);

        Assert.Equal(1, random.Calls);
        // Zero coefficients: every share is the secret itself (which is why they must be random).
        Assert.All(shares, s => Assert.Equal(DomainKey, s.Value.ToArray()));
    }

    [Fact]
    public void Split_DefaultRandomSource_TwoSplitsDiffer()
    {
        var first = Shamir.Split(DomainKey, 2, 2);
        var second = Shamir.Split(DomainKey, 2, 2);

        Assert.NotEqual(first[0].Value.ToArray(), second[0].Value.ToArray());
        Assert.Equal([1, 2], first.Select(s => s.Index));
    }

    [Theory]
    [InlineData(0, 2, 3, "a secret to split has 1..64 bytes, not 0")]
    [InlineData(65, 2, 3, "a secret to split has 1..64 bytes, not 65")]
    [InlineData(32, 1, 3, "threshold 1 is outside 2..3 (the share count)")]
    [InlineData(32, 4, 3, "threshold 4 is outside 2..3 (the share count)")]
    [InlineData(32, 2, 256, "share count 256 is outside 2..255")]
    [InlineData(32, 2, 1, "share count 1 is outside 2..255")]
    public void Split_OutOfRange_Refused(int length, int threshold, int count, string message)
    {
        var e = Assert.Throws<CeremonyException>(() => Shamir.Split(new byte[length], threshold, count));

        Assert.Equal(CeremonyError.InvalidArgument, e.Error);
        Assert.Equal(message, e.Message);
    }

    [Fact]
    public void Combine_DuplicateIndex_Refused()
    {
        var shares = Shamir.Split(DomainKey, 2, 3);

        var e = Assert.Throws<CeremonyException>(() => Shamir.Combine([shares[1], new Share(2, shares[1].Value)], 2));

        Assert.Equal(CeremonyError.Mismatch, e.Error);
        Assert.Equal("duplicate share index 2", e.Message);
    }

    [Fact]
    public void Combine_UnequalLengths_Refused()
    {
        var shares = Shamir.Split(DomainKey, 2, 3);

        var e = Assert.Throws<CeremonyException>(() => Shamir.Combine([shares[0], new Share(2, shares[1].Value[..31])], 2));

        Assert.Equal("share 2 has 31 bytes, share 1 has 32", e.Message);
    }

    [Theory]
    [InlineData(0)]
    [InlineData(256)]
    [InlineData(-1)]
    public void Share_IndexOutsideOneTo255_Refused(int index)
    {
        var e = Assert.Throws<CeremonyException>(() => new Share(index, [1]));

        Assert.Equal($"share index {index} is outside 1..255", e.Message);
    }

    [Fact]
    public void Share_Disposed_ValueZeroedAndUnreadable()
    {
        var share = new Share(3, DomainKey);
        var field = typeof(Share).GetField("_value", System.Reflection.BindingFlags.NonPublic | System.Reflection.BindingFlags.Instance)!;
        var buffer = (byte[])field.GetValue(share)!;

        share.Dispose();

        Assert.All(buffer, b => Assert.Equal(0, b));
        Assert.Throws<ObjectDisposedException>(() => share.Value.Length);
        Assert.Equal("share 3 (***)", share.ToString());
    }

    private static IEnumerable<List<Share>> Subsets(Share[] shares)
    {
        for (var mask = 1; mask < 1 << shares.Length; mask++)
        {
            yield return shares.Where((_, i) => (mask & (1 << i)) != 0).ToList();
        }
    }
}
