using System.Text.Json;
using Kms.Core.Keys;
using Kms.Core.Names;
using Kms.Core.Ports;

namespace Kms.Core.Backup;

/// <summary>
/// A destruction known to have happened, to be re-applied to a restored snapshot: one version
/// (<see cref="Version"/>); the whole key (<see cref="WholeKey"/>: its deletion came due); or,
/// from audit logs written before destructions named their versions, the due destructions of
/// a key as of <see cref="Time"/> (neither).
/// </summary>
/// <param name="Key">The key.</param>
/// <param name="Version">The version number, or null.</param>
/// <param name="Time">When it happened.</param>
/// <param name="Source">Where it was found, for the report (a database, an audit event).</param>
/// <param name="WholeKey">The key was destroyed with every version.</param>
public sealed record RecordedDestruction(KeyName Key, int? Version, DateTimeOffset Time, string Source, bool WholeKey = false);

/// <summary>An event line of an audit export or SIEM stream: its place in the chain and the destruction or lifecycle transition it records, if any.</summary>
/// <param name="Sequence">The event's <c>seq</c>.</param>
/// <param name="PreviousHash">Its <c>prev</c>: the hash of the event before it.</param>
/// <param name="Hash">SHA-256 (hex) of its body's exact bytes, computed here (not the line's <c>hash</c> member).</param>
/// <param name="Destruction">The destruction it records, or null.</param>
/// <param name="Transition">The scheduling, cancellation, disabling or enabling it records (<see cref="SchedulingReplay.TransitionOf"/>), or null.</param>
/// <param name="TenantDeletion">The tenant's deletion (DeleteTenant) it records (<see cref="SchedulingReplay.TenantDeletionOf"/>), or null.</param>
/// <param name="AccessRemoval">The removal of access it records (<see cref="AccessReplay.RemovalOf"/>), or null.</param>
/// <param name="AccessReview">A change of access it records that cannot be replayed, for review (<see cref="AccessReplay.ReviewOf"/>), or null.</param>
public sealed record LoggedEvent(
    long Sequence, string PreviousHash, string Hash, RecordedDestruction? Destruction, RecordedTransition? Transition = null, RecordedTenantDeletion? TenantDeletion = null,
    RecordedAccessRemoval? AccessRemoval = null, string? AccessReview = null);

/// <summary>
/// Re-applies destructions to a restored snapshot, so a restore never brings a destroyed key
/// version back: the version becomes DESTROYED and the store erases its material.
/// </summary>
/// <remarks>
/// Re-applying only ever removes material. A destruction the snapshot already holds is a
/// no-op; one of a key or version the snapshot does not know (created after the backup) is
/// reported and skipped — its material is not in the snapshot to begin with.
/// </remarks>
public static class DestructionReplay
{
    /// <summary>The audit operation of a quorum's immediate destruction (resource: the version).</summary>
    public const string DestroyNowOperation = "quorum/DESTROY_KEY_VERSION_NOW";

    /// <summary>
    /// The audit operation of the lifecycle's destruction of a version whose waiting period
    /// ended (resource: the version; in logs written before versions were named, the key).
    /// </summary>
    public const string LifecycleOperation = "lifecycle/Destruction";

    /// <summary>The audit operation of the lifecycle's destruction of a key whose deletion came due (resource: the key; every version).</summary>
    public const string KeyDestructionOperation = "lifecycle/KeyDestruction";

    /// <summary>
    /// The audit operation of a destruction a restore (or <c>reapply-destructions</c>) re-applied
    /// (resource: the version): in the chain that restore started it is the only record of a
    /// destruction the lost chain made, so a later restore of an older backup re-applies it too.
    /// </summary>
    public const string ReapplyOperation = "backup/ReapplyDestruction";

    /// <summary>
    /// The change that re-applies <paramref name="destructions"/> (all of one key) to
    /// <paramref name="current"/>; <see cref="KeyChange.IsNoOp"/> when the snapshot has them all.
    /// A destroyed primary version makes the key DESTROYED, as a key deletion does.
    /// </summary>
    public static KeyChange Apply(KeyWithVersions current, IEnumerable<RecordedDestruction> destructions)
    {
        ArgumentNullException.ThrowIfNull(current);
        var updated = new Dictionary<int, KeyVersion>();
        foreach (var destruction in destructions.OrderBy(d => d.Time))
        {
            var targets = destruction.Version is { } number
                ? current.Versions.Where(v => v.Name.Version == number)
                : destruction.WholeKey
                ? current.Versions
                : current.Versions.Where(v => Services.KeyTransitions.DestructionDue(v, destruction.Time) || Services.KeyTransitions.DestructionDue(current.Key, destruction.Time));
            foreach (var version in targets)
            {
                if (version.State != KeyState.Destroyed && !updated.ContainsKey(version.Name.Version))
                {
                    updated[version.Name.Version] = version with
                    {
                        State = KeyState.Destroyed,
                        DestroyTime = version.DestroyTime ?? destruction.Time,
                        DestroyEventTime = destruction.Time,
                    };
                }
            }
        }

        if (updated.Count == 0)
        {
            return new KeyChange(current.Key) { IsNoOp = true };
        }

        var key = current.Key;
        if (updated.TryGetValue(key.Primary.Name.Version, out var primary))
        {
            key = key with { State = KeyState.Destroyed, Primary = primary, NextRotationTime = null };
        }

        return new KeyChange(key) { UpdatedVersions = [.. updated.Values.OrderBy(v => v.Name.Version)] };
    }

    /// <summary>
    /// The destructions an audit export or SIEM stream (JSON lines, docs/audit-format.md)
    /// records after sequence <paramref name="afterSequence"/>: successful
    /// <see cref="DestroyNowOperation"/>, <see cref="LifecycleOperation"/>,
    /// <see cref="KeyDestructionOperation"/> and <see cref="ReapplyOperation"/> events. Lines that are not events (the export's
    /// header, checkpoints) are skipped.
    /// </summary>
    /// <exception cref="FormatException">A line that is not JSON.</exception>
    public static IReadOnlyList<RecordedDestruction> FromAuditLines(IEnumerable<string> lines, long afterSequence, string source) =>
        [.. EventsOf(lines, source).Where(e => e.Sequence > afterSequence && e.Destruction is not null).Select(e => e.Destruction!)];

    /// <summary>
    /// The lines of an audit export's or SIEM stream's text, without its last line when that line
    /// is torn: it has no line feed after it and is not one whole JSON object
    /// (<see cref="Files.JsonLines.IsWholeRecord(string)"/>, the rule the server's appends cut by) —
    /// what a crash while the line was appended leaves (the server cuts it at its next append or
    /// start), or a copy taken meanwhile. A last line that is one whole object without its line
    /// feed is kept. A torn line anywhere else
    /// stays in the lines, for <see cref="EventsOf"/> to refuse: only the end of a file can be
    /// torn by a crash.
    /// </summary>
    /// <returns>The lines, and the torn last line (null when there is none).</returns>
    public static (IReadOnlyList<string> Lines, string? TornLastLine) SplitLines(string text)
    {
        ArgumentNullException.ThrowIfNull(text);
        var lines = text.Split('\n').Select(l => l.TrimEnd('\r')).ToList();
        var last = lines[^1];
        lines.RemoveAt(lines.Count - 1); // after the final line feed: empty, or a line without one
        if (last.Length == 0)
        {
            return (lines, null);
        }

        if (Files.JsonLines.IsWholeRecord(last))
        {
            lines.Add(last);
            return (lines, null);
        }

        return (lines, last);
    }

    /// <summary>
    /// Every event of an audit export or SIEM stream, in the file's order, with the destruction
    /// each records (as <see cref="FromAuditLines"/> reads them) and the lifecycle transition. Lines that are not events are skipped.
    /// </summary>
    /// <exception cref="FormatException">A line that is not JSON.</exception>
    public static IReadOnlyList<LoggedEvent> EventsOf(IEnumerable<string> lines, string source)
    {
        ArgumentNullException.ThrowIfNull(lines);
        var found = new List<LoggedEvent>();
        var number = 0;
        foreach (var line in lines)
        {
            number++;
            if (string.IsNullOrWhiteSpace(line))
            {
                continue;
            }

            JsonDocument document;
            try
            {
                document = JsonDocument.Parse(line);
            }
            catch (JsonException e)
            {
                throw new FormatException($"{source} line {number} is not JSON: {e.Message}", e);
            }

            using (document)
            {
                if (!document.RootElement.TryGetProperty("event", out var body) || body.ValueKind != JsonValueKind.Object)
                {
                    continue;
                }

                var seq = body.GetProperty("seq").GetInt64();
                var operation = body.GetProperty("operation").GetString();
                var resource = body.GetProperty("resource").GetString();
                var outcome = body.GetProperty("outcome").GetString();
                var where = $"{source} event {seq}";
                found.Add(new LoggedEvent(
                    seq, body.GetProperty("prev").GetString() ?? "", Audit.AuditChain.HashOf(body.GetRawText()), DestructionOf(body, seq, source), TransitionOf(body, seq, source), TenantDeletionOf(body, seq, source),
                    AccessReplay.RemovalOf(operation, resource, outcome, DateTimeOffset.Parse(body.GetProperty("time").GetString()!, System.Globalization.CultureInfo.InvariantCulture), where),
                    AccessReplay.ReviewOf(operation, resource, outcome, where)));
            }
        }

        return found;
    }

    private static RecordedTransition? TransitionOf(JsonElement body, long seq, string source) =>
        !SchedulingReplay.Records(body.GetProperty("operation").GetString()) ? null : SchedulingReplay.TransitionOf(
            body.GetProperty("operation").GetString(),
            body.GetProperty("resource").GetString(),
            body.GetProperty("outcome").GetString(),
            DateTimeOffset.Parse(body.GetProperty("time").GetString()!, System.Globalization.CultureInfo.InvariantCulture),
            $"{source} event {seq}");

    private static RecordedTenantDeletion? TenantDeletionOf(JsonElement body, long seq, string source) =>
        SchedulingReplay.TenantDeletionOf(
            body.GetProperty("operation").GetString(),
            body.GetProperty("resource").GetString(),
            body.GetProperty("outcome").GetString(),
            DateTimeOffset.Parse(body.GetProperty("time").GetString()!, System.Globalization.CultureInfo.InvariantCulture),
            $"{source} event {seq}");

    private static RecordedDestruction? DestructionOf(JsonElement body, long seq, string source)
    {
        var operation = body.GetProperty("operation").GetString();
        if (body.GetProperty("outcome").GetString() != "OK"
            || operation is not (DestroyNowOperation or LifecycleOperation or KeyDestructionOperation or ReapplyOperation)
            || body.GetProperty("resource").GetString() is not { } resource)
        {
            return null;
        }

        var time = DateTimeOffset.Parse(body.GetProperty("time").GetString()!, System.Globalization.CultureInfo.InvariantCulture);
        var where = $"{source} event {seq} ({operation})";
        if (operation == KeyDestructionOperation)
        {
            return new RecordedDestruction(KeyName.Parse(resource, "resource"), null, time, where, WholeKey: true);
        }

        if (operation is DestroyNowOperation or ReapplyOperation || ResourceSegments.Is(resource, ResourceSegments.KeyCollection, "versions"))
        {
            var version = KeyVersionName.Parse(resource, "resource");
            return new RecordedDestruction(version.Key, version.Version, time, where);
        }

        return new RecordedDestruction(KeyName.Parse(resource, "resource"), null, time, where);
    }
}
