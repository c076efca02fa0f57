namespace Kms.Ceremony;

/// <summary>What went wrong in a ceremony operation, for a caller that maps failures to exit codes.</summary>
public enum CeremonyError
{
    /// <summary>Not used: every exception names its kind.</summary>
    Unspecified = 0,

    /// <summary>An argument out of range: a threshold, a share count, a passphrase that fails the policy.</summary>
    InvalidArgument = 1,

    /// <summary>A share file that is not intact: unreadable, cut short, checksum or fingerprint mismatch.</summary>
    Corrupted = 2,

    /// <summary>A share file of a format version this code does not read.</summary>
    UnsupportedVersion = 3,

    /// <summary>The share did not decrypt: the passphrase is wrong, or the file was altered and its checksum recomputed.</summary>
    WrongPassphrase = 4,

    /// <summary>Shares that do not belong together: other domain, other check value, other threshold or count, duplicate index.</summary>
    Mismatch = 5,

    /// <summary>Fewer shares than the threshold.</summary>
    NotEnoughShares = 6,

    /// <summary>The rebuilt key's check value is not the domain's.</summary>
    CheckValueMismatch = 7,

    /// <summary>A share file that cannot be written or read from disk.</summary>
    Io = 8,

    /// <summary>Argon2id parameters outside the bounds: too weak for production, or so costly they would stall a restore.</summary>
    KdfParametersRefused = 9,
}

/// <summary>The one exception type of <c>Kms.Ceremony</c>.</summary>
/// <remarks>
/// The message is meant for the officer running the ceremony: it names the file, the custodian,
/// the share index and the numbers involved, and never carries a passphrase, share bytes or key
/// bytes. <see cref="Error"/> says which kind of failure it is.
/// </remarks>
public sealed class CeremonyException : Exception
{
    internal CeremonyException(CeremonyError error, string message, Exception? inner = null)
        : base(message, inner)
    {
        Error = error;
    }

    /// <summary>The kind of failure.</summary>
    public CeremonyError Error { get; }
}
