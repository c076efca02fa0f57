using System.Security.Cryptography;

namespace Kms.Ceremony.Sharing;

/// <summary>
/// Shamir secret sharing over GF(2^8) (AES polynomial 0x11B), byte by byte: each secret byte is
/// the constant term of its own random polynomial of degree threshold − 1, and share x holds
/// every polynomial's value at x.
/// </summary>
/// <remarks>
/// <para>Any <c>threshold</c> shares rebuild the secret; fewer reveal nothing about it (every
/// secret is equally consistent with them), provided the coefficients are uniformly random.</para>
/// <para>Arithmetic is constant time (<see cref="GaloisField"/>); coefficient buffers are zeroed
/// before returning. Shares carry no integrity protection of their own: a wrong share rebuilds a
/// wrong secret silently, which is why the ceremony checks the rebuilt key's check value
/// (<see cref="Shares.DomainKeyRecovery"/>).</para>
/// </remarks>
public static class Shamir
{
    /// <summary>Longest secret, in bytes (the domain key is 32).</summary>
    public const int MaxSecretLength = 64;

    /// <summary>Most shares: one per non-zero element of GF(2^8).</summary>
    public const int MaxShares = 255;

    /// <summary>Smallest threshold: with 1, every share would be the secret itself.</summary>
    public const int MinThreshold = 2;

    /// <summary>Splits <paramref name="secret"/> into <paramref name="count"/> shares, any <paramref name="threshold"/> of which rebuild it.</summary>
    /// <param name="secret">1..64 bytes.</param>
    /// <param name="threshold">M, 2 ≤ M ≤ N.</param>
    /// <param name="count">N, M ≤ N ≤ 255. Shares get the indices 1..N, in that order.</param>
    /// <param name="random">
    /// Source of the coefficients (default: the system CSPRNG). It is asked once for
    /// <c>secret.Length × (threshold − 1)</c> bytes, laid out byte by byte: for secret byte
    /// <c>i</c>, coefficient <c>a_j</c> (of x^j, j = 1..M−1) is at <c>i × (M − 1) + (j − 1)</c>.
    /// Tests pass a fixed source to reproduce vectors; production code passes nothing.
    /// </param>
    /// <returns>The shares; the caller disposes them.</returns>
    /// <exception cref="CeremonyException">A length, threshold or count out of range.</exception>
    public static Share[] Split(ReadOnlySpan<byte> secret, int threshold, int count, RandomNumberGenerator? random = null)
    {
        if (secret.Length is < 1 or > MaxSecretLength)
        {
            throw new CeremonyException(CeremonyError.InvalidArgument, $"a secret to split has 1..{MaxSecretLength} bytes, not {secret.Length}");
        }
        if (count is < MinThreshold or > MaxShares)
        {
            throw new CeremonyException(CeremonyError.InvalidArgument, $"share count {count} is outside {MinThreshold}..{MaxShares}");
        }
        if (threshold < MinThreshold || threshold > count)
        {
            throw new CeremonyException(CeremonyError.InvalidArgument, $"threshold {threshold} is outside {MinThreshold}..{count} (the share count)");
        }

        var degree = threshold - 1;
        var coefficients = new byte[secret.Length * degree];
        var values = new byte[secret.Length];
        var shares = new Share[count];
        try
        {
            if (random is null)
            {
                RandomNumberGenerator.Fill(coefficients);
            }
            else
            {
                random.GetBytes(coefficients);
            }

            for (var x = 1; x <= count; x++)
            {
                for (var i = 0; i < secret.Length; i++)
                {
                    // Horner: ((a_{M−1}·x + a_{M−2})·x + … + a_1)·x + secret_i.
                    var own = coefficients.AsSpan(i * degree, degree);
                    byte y = 0;
                    for (var j = degree - 1; j >= 0; j--)
                    {
                        y = (byte)(GaloisField.Multiply(y, (byte)x) ^ own[j]);
                    }
                    values[i] = (byte)(GaloisField.Multiply(y, (byte)x) ^ secret[i]);
                }
                shares[x - 1] = new Share(x, values);
            }
            return shares;
        }
        catch
        {
            foreach (var share in shares)
            {
                share?.Dispose();
            }
            throw;
        }
        finally
        {
            CryptographicOperations.ZeroMemory(coefficients);
            CryptographicOperations.ZeroMemory(values);
        }
    }

    /// <summary>Rebuilds the secret from <paramref name="shares"/> by Lagrange interpolation at x = 0.</summary>
    /// <param name="shares">At least <paramref name="threshold"/> shares of one split, distinct indices, equal lengths.</param>
    /// <param name="threshold">M, from the shares' metadata: fewer shares are refused rather than silently giving a wrong secret.</param>
    /// <returns>The secret; the caller zeroes it.</returns>
    /// <remarks>
    /// Every share given takes part. Shares of one split all lie on the same polynomials, so more
    /// than M give the same answer as any M; a share from elsewhere gives a wrong answer without
    /// an error — check the result (a key check value) where it matters.
    /// </remarks>
    /// <exception cref="CeremonyException">Fewer than M shares, duplicate indices, unequal lengths, or M out of range.</exception>
    public static byte[] Combine(IReadOnlyList<Share> shares, int threshold)
    {
        ArgumentNullException.ThrowIfNull(shares);
        if (threshold is < MinThreshold or > MaxShares)
        {
            throw new CeremonyException(CeremonyError.InvalidArgument, $"threshold {threshold} is outside {MinThreshold}..{MaxShares}");
        }
        if (shares.Count < threshold)
        {
            throw new CeremonyException(CeremonyError.NotEnoughShares, $"need {threshold} shares, got {shares.Count}");
        }

        var length = shares[0].Length;
        Span<bool> seen = stackalloc bool[MaxShares + 1];
        foreach (var share in shares)
        {
            ArgumentNullException.ThrowIfNull(share, nameof(shares));
            if (seen[share.Index])
            {
                throw new CeremonyException(CeremonyError.Mismatch, $"duplicate share index {share.Index}");
            }
            seen[share.Index] = true;
            if (share.Length != length)
            {
                throw new CeremonyException(CeremonyError.Mismatch, $"share {share.Index} has {share.Length} bytes, share {shares[0].Index} has {length}");
            }
        }

        var secret = new byte[length];
        try
        {
            for (var i = 0; i < shares.Count; i++)
            {
                // Lagrange basis at 0: l_i(0) = Π_{j≠i} x_j / (x_j − x_i); minus is XOR in GF(2^8).
                var xi = (byte)shares[i].Index;
                byte basis = 1;
                for (var j = 0; j < shares.Count; j++)
                {
                    if (j != i)
                    {
                        var xj = (byte)shares[j].Index;
                        basis = GaloisField.Multiply(basis, GaloisField.Multiply(xj, GaloisField.Inverse((byte)(xj ^ xi))));
                    }
                }

                var value = shares[i].Value;
                for (var k = 0; k < length; k++)
                {
                    secret[k] ^= GaloisField.Multiply(value[k], basis);
                }
            }
        }
        catch
        {
            // The sum so far is part of the secret (all of it, but for the shares still to come):
            // a share disposed mid-way must not leave it behind.
            CryptographicOperations.ZeroMemory(secret);
            throw;
        }

        return secret;
    }
}
