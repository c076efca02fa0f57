using System.Security.Cryptography;
using Kms.Ceremony.Sharing;

namespace Kms.Ceremony.Shares;

/// <summary>Rebuilds the domain key from custodians' shares, for <c>restore-domain</c> on a new or replacement HSM.</summary>
public static class DomainKeyRecovery
{
    /// <summary>The domain key is AES-256.</summary>
    public const int DomainKeyLength = 32;

    /// <summary>
    /// Checks, from their public fields alone (nothing is decrypted: no passphrase is needed), that
    /// <paramref name="files"/> can be combined: one domain (<paramref name="expectedDomainId"/> when
    /// given), one check value, one split, no index twice, at least M of them. What
    /// <see cref="Combine"/> would refuse of the files, said before any custodian types a passphrase.
    /// </summary>
    /// <param name="files">The share files, as read.</param>
    /// <param name="expectedDomainId">The domain the operator means to restore, when known.</param>
    /// <exception cref="CeremonyException">Shares of different domains, check values or splits, an index twice, or fewer than M.</exception>
    public static void CheckFiles(IReadOnlyList<ShareFile> files, string? expectedDomainId = null)
    {
        ArgumentNullException.ThrowIfNull(files);
        if (files.Count == 0)
        {
            throw new CeremonyException(CeremonyError.NotEnoughShares, "no shares given");
        }

        var first = files[0];
        var domainId = expectedDomainId ?? first.DomainId;
        var byIndex = new Dictionary<int, ShareFile>();
        foreach (var file in files)
        {
            ArgumentNullException.ThrowIfNull(file, nameof(files));
            var who = file.Describe();
            if (file.DomainId != domainId)
            {
                throw new CeremonyException(CeremonyError.Mismatch, $"{who} belongs to domain '{file.DomainId}', expected '{domainId}'");
            }
            if (file.DomainKcv != first.DomainKcv)
            {
                throw new CeremonyException(CeremonyError.Mismatch, $"{who} records the domain check value {file.DomainKcv}, but {first.Describe()} records {first.DomainKcv}");
            }
            if (file.Threshold != first.Threshold || file.Count != first.Count)
            {
                throw new CeremonyException(
                    CeremonyError.Mismatch,
                    $"{who} is one of a {file.Threshold}-of-{file.Count} split, but {first.Describe()} is one of a {first.Threshold}-of-{first.Count} split");
            }
            if (byIndex.TryGetValue(file.Index, out var other))
            {
                throw new CeremonyException(CeremonyError.Mismatch, $"duplicate share index {file.Index}: {other.Describe()} and {who}");
            }
            byIndex.Add(file.Index, file);
        }
        if (files.Count < first.Threshold)
        {
            throw new CeremonyException(CeremonyError.NotEnoughShares, $"need {first.Threshold} shares, got {files.Count}");
        }
    }

    /// <summary>
    /// Checks that <paramref name="shares"/> belong together, interpolates the key and checks its
    /// check value against the one the share files record.
    /// </summary>
    /// <param name="shares">Each share file with the share <see cref="ShareFile.Unprotect"/> gave for it.</param>
    /// <param name="expectedDomainId">The domain the operator means to restore, when known; every share must be of it.</param>
    /// <param name="expectedKcv">The domain's check value from an independent record (the ceremony transcript, the running service), when known.</param>
    /// <returns>The 32-byte domain key. The caller zeroes it (<see cref="CryptographicOperations.ZeroMemory"/>) as soon as it is imported.</returns>
    /// <remarks>
    /// Refused before any interpolation: shares of different domains, check values, thresholds or
    /// counts; a share whose index is not its file's; duplicate indices; fewer shares than the
    /// threshold; shares of the wrong length. After interpolation the software check value of the
    /// key must equal the recorded one, so a share that decrypted but is wrong (damaged before it
    /// was protected, or made in another split of the same key) is caught before the key is used;
    /// the key is zeroed before that error is thrown. Given more than M shares, the error names the
    /// shares whose leaving out rebuilds the check value; given exactly M, it says which share is
    /// wrong cannot be told (any M points lie on some polynomial).
    /// </remarks>
    /// <exception cref="CeremonyException">The shares do not belong together, are too few, or rebuild a key with another check value.</exception>
    public static byte[] Combine(IReadOnlyList<(ShareFile File, Share Share)> shares, string? expectedDomainId = null, string? expectedKcv = null)
    {
        ArgumentNullException.ThrowIfNull(shares);
        if (shares.Count == 0)
        {
            throw new CeremonyException(CeremonyError.NotEnoughShares, "no shares given");
        }
        string? kcv = null;
        if (expectedKcv is not null)
        {
            kcv = KeyCheckValue.Normalize(expectedKcv)
                ?? throw new CeremonyException(CeremonyError.InvalidArgument, "the expected check value must be 6 hex digits");
        }

        var first = shares[0].File;
        var domainId = expectedDomainId ?? first.DomainId;
        kcv ??= first.DomainKcv;
        var byIndex = new Dictionary<int, ShareFile>();
        foreach (var (file, share) in shares)
        {
            ArgumentNullException.ThrowIfNull(file, nameof(shares));
            ArgumentNullException.ThrowIfNull(share, nameof(shares));
            var who = file.Describe();
            if (file.DomainId != domainId)
            {
                throw new CeremonyException(CeremonyError.Mismatch, $"{who} belongs to domain '{file.DomainId}', expected '{domainId}'");
            }
            if (file.DomainKcv != kcv)
            {
                throw new CeremonyException(CeremonyError.Mismatch, $"{who} records the domain check value {file.DomainKcv}, expected {kcv}");
            }
            if (file.Threshold != first.Threshold || file.Count != first.Count)
            {
                throw new CeremonyException(
                    CeremonyError.Mismatch,
                    $"{who} is one of a {file.Threshold}-of-{file.Count} split, but {first.Describe()} is one of a {first.Threshold}-of-{first.Count} split");
            }
            if (share.Index != file.Index)
            {
                throw new CeremonyException(CeremonyError.Mismatch, $"the share given for {who} has index {share.Index}");
            }
            if (share.Length != DomainKeyLength)
            {
                throw new CeremonyException(CeremonyError.Mismatch, $"{who} has {share.Length} bytes; a domain key share has {DomainKeyLength}");
            }
            if (byIndex.TryGetValue(file.Index, out var other))
            {
                throw new CeremonyException(CeremonyError.Mismatch, $"duplicate share index {file.Index}: {other.Describe()} and {who}");
            }
            byIndex.Add(file.Index, file);
        }
        if (shares.Count < first.Threshold)
        {
            throw new CeremonyException(CeremonyError.NotEnoughShares, $"need {first.Threshold} shares, got {shares.Count}");
        }

        var key = Shamir.Combine(shares.Select(s => s.Share).ToList(), first.Threshold);
        string rebuilt;
        try
        {
            rebuilt = KeyCheckValue.Aes256(key);
        }
        catch
        {
            CryptographicOperations.ZeroMemory(key);
            throw;
        }

        if (rebuilt != kcv)
        {
            CryptographicOperations.ZeroMemory(key);
            var mismatch = $"the rebuilt key's check value {rebuilt} does not match the domain's {kcv}";
            if (shares.Count == first.Threshold)
            {
                // Any M points lie on some polynomial: nothing tells the wrong one from the rest.
                throw new CeremonyException(
                    CeremonyError.CheckValueMismatch,
                    $"{mismatch}: a share is damaged or from another split of the key; with exactly {first.Threshold} shares which one cannot be told (give a further custodian's share as well to find it)");
            }

            throw new CeremonyException(CeremonyError.CheckValueMismatch, $"{mismatch}: {WhichShares(shares, first.Threshold, kcv)}");
        }
        return key;
    }

    /// <summary>Most leave-out sets <see cref="WhichShares"/> tries.</summary>
    internal const int MaxTrials = 1024;

    /// <summary>
    /// Which of more than M shares do not fit: the fewest shares that, left out, let the rest (still
    /// at least M) rebuild a key of the domain's check value, when exactly one set of that size does.
    /// Shares of one split lie on one polynomial, so leaving out exactly the wrong ones rebuilds the
    /// key and leaving any wrong one in does not; only a chance match of the 3-byte check value
    /// (2^-24 per set tried) could point at another set, and a second match makes it say it cannot tell.
    /// </summary>
    private static string WhichShares(IReadOnlyList<(ShareFile File, Share Share)> shares, int threshold, string kcv)
    {
        var trials = 0;
        for (var leftOut = 1; shares.Count - leftOut >= threshold; leftOut++)
        {
            List<int[]> matches = [];
            foreach (var set in Subsets(shares.Count, leftOut))
            {
                if (++trials > MaxTrials)
                {
                    return $"a share is damaged or from another split of the key; which was not found in the {MaxTrials} combinations of the {shares.Count} shares tried";
                }

                var rest = shares.Where((_, i) => !set.Contains(i)).Select(s => s.Share).ToList();
                var key = Shamir.Combine(rest, threshold);
                try
                {
                    if (KeyCheckValue.Aes256(key) == kcv)
                    {
                        matches.Add(set);
                    }
                }
                finally
                {
                    CryptographicOperations.ZeroMemory(key);
                }
            }

            if (matches.Count == 1)
            {
                var wrong = matches[0].Select(i => shares[i].File.Describe()).ToList();
                var them = wrong.Count == 1 ? "it" : "them";
                return $"{string.Join(" and ", wrong)} {(wrong.Count == 1 ? "does" : "do")} not fit: the other {shares.Count - wrong.Count} shares rebuild the domain's check value without {them}; {(wrong.Count == 1 ? "it is" : "they are")} damaged or from another split of the key (leave {them} out and run again)";
            }

            if (matches.Count > 1)
            {
                return $"a share is damaged or from another split of the key; which cannot be told: leaving out any of {matches.Count} different sets of {leftOut} of the {shares.Count} shares rebuilds the domain's check value";
            }
        }

        return $"a share is damaged or from another split of the key; which cannot be told: no {threshold} or more of the {shares.Count} shares given rebuild the domain's check value";
    }

    // Every set of `size` indices of 0..count-1, in lexicographic order.
    private static IEnumerable<int[]> Subsets(int count, int size)
    {
        var set = Enumerable.Range(0, size).ToArray();
        while (true)
        {
            yield return (int[])set.Clone();
            var i = size - 1;
            while (i >= 0 && set[i] == count - size + i)
            {
                i--;
            }

            if (i < 0)
            {
                yield break;
            }

            set[i]++;
            for (var j = i + 1; j < size; j++)
            {
                set[j] = set[j - 1] + 1;
            }
        }
    }
}
