using CsCheck;
using Kms.Ceremony.Sharing;

namespace Kms.Ceremony.Tests.Properties;

/// <summary>Shamir sharing over GF(2^8): any M of N shares rebuild the secret, for random M, N, secrets and subsets.</summary>
public sealed class ShamirPropertyTests
{
    private static readonly Gen<(byte[] Secret, int Threshold, int Count, int[] Order, int Taken)> Splits =
        from secret in Gen.Byte.Array[1, Shamir.MaxSecretLength]
        from threshold in Gen.Int[Shamir.MinThreshold, 8]
        from count in Gen.Int[threshold, 12]
        from order in Gen.Shuffle(Enumerable.Range(0, count).ToArray())
        from taken in Gen.Int[threshold, count]
        select (secret, threshold, count, order, taken);

    [Fact]
    public void Combine_AnyMOrMoreOfTheNShares_TheSecret()
    {
        Splits.Sample((secret, threshold, count, order, taken) =>
        {
            var shares = Shamir.Split(secret, threshold, count);
            try
            {
                Assert.Equal(Enumerable.Range(1, count), shares.Select(s => s.Index));
                Assert.All(shares, s => Assert.Equal(secret.Length, s.Length));

                Assert.Equal(secret, Shamir.Combine([.. order.Take(taken).Select(i => shares[i])], threshold));
            }
            finally
            {
                foreach (var share in shares)
                {
                    share.Dispose();
                }
            }
        }, iter: 300);
    }

    [Fact]
    public void Combine_FewerThanMShares_TreatedAsMOfASmallerSplit_NotTheSecret()
    {
        // M-1 shares claimed to be a complete (M-1)-threshold set: the interpolation gives another
        // value (for 16-byte secrets, a collision has probability 2^-128).
        Splits.Where(s => s.Threshold > Shamir.MinThreshold && s.Secret.Length >= 16).Sample((secret, threshold, count, order, _) =>
        {
            var shares = Shamir.Split(secret, threshold, count);
            try
            {
                Assert.NotEqual(secret, Shamir.Combine([.. order.Take(threshold - 1).Select(i => shares[i])], threshold - 1));
            }
            finally
            {
                foreach (var share in shares)
                {
                    share.Dispose();
                }
            }
        }, iter: 200);
    }
}
