using System.Globalization;

namespace Kms.Core.Backup;

/// <summary>
/// What one finished re-application of destructions (<c>kms backup reapply-destructions</c>,
/// <c>kms backup restore</c>) recorded in the chain it ran on, as its last audit event
/// (<see cref="Operation"/>), even when nothing needed re-applying: the audit range its logs
/// covered, after <see cref="After"/> (where they leave the restored chain) through
/// <see cref="Through"/> (the last event they hold).
/// </summary>
/// <remarks>
/// A node that starts on a chain that does not pass through the newest checkpoint it signed
/// (a rollback: a <c>pg_restore</c>, a <c>kms.db</c> copied back) starts only if such an event,
/// written after that checkpoint, covers its sequence (<see cref="Covers"/>): the destructions
/// made up to it were re-applied. The event is the database's word, like every unsigned event:
/// it stands between an operator and a forgotten step, not between the deployment and whoever
/// writes the database (the node still signs nothing past its own checkpoint).
/// </remarks>
/// <param name="After">The audit sequence after which the logs were read.</param>
/// <param name="Through">The last audit sequence the logs hold (<paramref name="After"/> when they hold nothing after it).</param>
public sealed record ReapplySummary(long After, long Through)
{
    /// <summary>The audit operation of the summary (principal <see cref="Principal"/>; resource <see cref="Resource"/>).</summary>
    public const string Operation = "backup/ReapplyDestructions";

    /// <summary>The principal of every event a restore or re-application records: the summary is found through its index.</summary>
    public const string Principal = "system:restore";

    private const string Prefix = "audit/after/";
    private const string Middle = "/through/";

    /// <summary>The event's resource: <c>audit/after/{After}/through/{Through}</c>.</summary>
    public string Resource => Prefix + After.ToString(CultureInfo.InvariantCulture) + Middle + Through.ToString(CultureInfo.InvariantCulture);

    /// <summary>Whether the logs this re-application read began before <paramref name="sequence"/> and reached it.</summary>
    public bool Covers(long sequence) => After < sequence && sequence <= Through;

    /// <summary>The summary a resource names, or null when it is not one.</summary>
    public static ReapplySummary? Parse(string? resource)
    {
        if (resource is null || !resource.StartsWith(Prefix, StringComparison.Ordinal))
        {
            return null;
        }

        var rest = resource[Prefix.Length..];
        var middle = rest.IndexOf(Middle, StringComparison.Ordinal);
        return middle > 0
            && long.TryParse(rest[..middle], NumberStyles.None, CultureInfo.InvariantCulture, out var after)
            && long.TryParse(rest[(middle + Middle.Length)..], NumberStyles.None, CultureInfo.InvariantCulture, out var through)
            ? new ReapplySummary(after, through)
            : null;
    }
}
