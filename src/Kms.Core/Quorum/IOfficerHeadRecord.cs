namespace Kms.Core.Quorum;

/// <summary>The newest officer set a node has verified: its sequence number and hash.</summary>
public sealed record OfficerHead(long Sequence, string Hash)
{
    /// <summary>The record's text: one line, "SEQUENCE HASH".</summary>
    public string Format() => string.Create(System.Globalization.CultureInfo.InvariantCulture, $"{Sequence} {Hash}\n");

    /// <summary>Reads <see cref="Format"/>'s text; null when it is not one.</summary>
    public static OfficerHead? Parse(string text)
    {
        ArgumentNullException.ThrowIfNull(text);
        var parts = text.Trim().Split(' ');
        return parts.Length == 2
            && long.TryParse(parts[0], System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out var sequence)
            && parts[1].Length == 64 && parts[1].All(char.IsAsciiHexDigitLower)
            ? new OfficerHead(sequence, parts[1])
            : null;
    }
}

/// <summary>
/// Where a node keeps the newest officer set it has verified, outside the database (a file in
/// its data directory): a chain in the database that no longer reaches it was rolled back — rows
/// deleted by whoever can write the database, or a backup from before an officer change
/// restored — and would bring back officers the quorum removed.
/// </summary>
public interface IOfficerHeadRecord
{
    /// <summary>Where the record is kept, for messages.</summary>
    string Location { get; }

    /// <summary>The newest head this node has verified, or null before the first.</summary>
    OfficerHead? Read();

    /// <summary>Records <paramref name="head"/> if it is newer than the one recorded.</summary>
    void Advance(OfficerHead head);
}
