using System.Security.Cryptography;
using Kms.Ceremony.Sharing;

namespace Kms.Ceremony.Shares;

/// <summary>Rebuilds the domain key from custodians' shares, for <c>restore-domain</c> on a new or replacement HSM.</summary>
public static class DomainKeyRecovery
{
    /// <summary>The domain key is AES-256.</summary>
    public const int DomainKeyLength = 32;

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
    /// the key is zeroed before that error is thrown.
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
        var rebuilt = KeyCheckValue.Aes256(key);
        if (rebuilt != kcv)
        {
            CryptographicOperations.ZeroMemory(key);
            throw new CeremonyException(
                CeremonyError.CheckValueMismatch,
                $"the rebuilt key's check value {rebuilt} does not match the domain's {kcv}: a share is damaged or from another split of the key");
        }
        return key;
    }
}
