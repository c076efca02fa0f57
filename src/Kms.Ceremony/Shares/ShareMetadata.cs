namespace Kms.Ceremony.Shares;

/// <summary>What the ceremony says about a share before it is protected: whose it is and which split it belongs to.</summary>
/// <param name="DomainId">The domain key's identifier as the ceremony records it (e.g. its CKA_ID in hex): 1..128 printable ASCII characters, no spaces.</param>
/// <param name="DomainKcv">The domain key's check value as the HSM reported it (CKA_CHECK_VALUE): 6 hex digits.</param>
/// <param name="Custodian">The custodian's name: 1..64 characters, no leading or trailing spaces, none of the characters <see cref="CustodianName.Check"/> refuses (control, format — bidirectional and zero-width —, separators, private-use, unassigned, lone surrogates) and no letters of two scripts that look alike; NFC-normalised when written (where the process has ICU).</param>
/// <param name="Threshold">M, the number of shares that rebuild the key.</param>
/// <param name="Count">N, the number of shares made.</param>
public sealed record ShareMetadata(string DomainId, string DomainKcv, string Custodian, int Threshold, int Count)
{
    /// <summary>Longest domain id.</summary>
    public const int MaxDomainIdLength = 128;

    /// <summary>Longest custodian name.</summary>
    public const int MaxCustodianLength = 64;

    internal static string? CheckDomainId(string? domainId)
    {
        if (string.IsNullOrEmpty(domainId) || domainId.Length > MaxDomainIdLength)
        {
            return $"the domain id must have 1..{MaxDomainIdLength} characters";
        }
        foreach (var c in domainId)
        {
            if (c is < '!' or > '~')
            {
                return "the domain id must be printable ASCII without spaces";
            }
        }
        return null;
    }

    // A name read from a share file: a file written before CustodianName's rule still opens
    // (its share is needed to rebuild the key); every message shows the name escaped.
    internal static string? CheckCustodian(string? custodian)
    {
        if (CheckLength(custodian) is { } problem)
        {
            return problem;
        }
        foreach (var c in custodian!)
        {
            if (char.IsControl(c))
            {
                return "the custodian name must not contain control characters";
            }
        }
        return CheckSpaces(custodian);
    }

    internal static string? CheckLength(string? custodian) =>
        string.IsNullOrEmpty(custodian) || custodian.Length > MaxCustodianLength ? $"the custodian name must have 1..{MaxCustodianLength} characters" : null;

    internal static string? CheckSpaces(string custodian) =>
        char.IsWhiteSpace(custodian[0]) || char.IsWhiteSpace(custodian[^1]) ? "the custodian name must not start or end with a space" : null;

    internal static string? CheckSplit(int threshold, int count)
    {
        if (count is < Sharing.Shamir.MinThreshold or > Sharing.Shamir.MaxShares)
        {
            return $"share count {count} is outside {Sharing.Shamir.MinThreshold}..{Sharing.Shamir.MaxShares}";
        }
        if (threshold < Sharing.Shamir.MinThreshold || threshold > count)
        {
            return $"threshold {threshold} is outside {Sharing.Shamir.MinThreshold}..{count} (the share count)";
        }
        return null;
    }
}
