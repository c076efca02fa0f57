namespace Kms.Core.Audit;

/// <summary>
/// What one request (or one background action) leaves in the audit log, before it is
/// chained. Never plaintext, data keys, wrapped material, tokens or encryption-context
/// values: context keys only, each with a keyed hash of its value.
/// </summary>
public sealed record AuditEntry
{
    /// <summary>When the request was answered (milliseconds; UTC).</summary>
    public required DateTimeOffset Time { get; init; }

    /// <summary>The request id (the caller's <c>x-request-id</c> if well-formed, else one made up by the server).</summary>
    public required string RequestId { get; init; }

    /// <summary>The typed principal (<c>token:…</c>, <c>cn:…</c>, <c>spiffe:…</c>), <c>anonymous</c>, or <c>system:…</c> for background work.</summary>
    public required string Principal { get; init; }

    /// <summary>The tenant the principal belongs to, or null (deployment principals, anonymous).</summary>
    public string? Tenant { get; init; }

    /// <summary>The operation: the gRPC method name (<c>/kms.v1.KeyManagementService/Encrypt</c>) or a background job's name.</summary>
    public required string Operation { get; init; }

    /// <summary>The resource acted on (key, version, alias, principal, tenant name), if any.</summary>
    public string? Resource { get; init; }

    /// <summary>The outcome: a gRPC status code name (<c>OK</c>, <c>PERMISSION_DENIED</c>, …).</summary>
    public required string Outcome { get; init; }

    /// <summary>The client's address (IP and port as the transport saw it), if any.</summary>
    public string? Client { get; init; }

    /// <summary>How many requests this event stands for: 1, or more for aggregated refusals.</summary>
    public long Count { get; init; } = 1;

    /// <summary>For aggregated refusals: the time of the last one counted.</summary>
    public DateTimeOffset? LastTime { get; init; }

    /// <summary>Encryption-context keys with a keyed hash (HMAC-SHA256, hex) of each value, ordered by key.</summary>
    public IReadOnlyList<KeyValuePair<string, string>> Context { get; init; } = [];

    /// <summary>
    /// For aggregated refusals: the resources the requests counted named, each with how many
    /// named it — the first <see cref="MaxListedResources"/> distinct names that this event's
    /// readers may see, ordered by name (ordinal); null for every other event.
    /// </summary>
    /// <remarks>
    /// <see cref="Resource"/> stays the window's first refusal's (written before as itself), so the
    /// event is found where that one was. Names in another tenant than <see cref="Resource"/>'s
    /// are not listed in an event of a principal without a tenant: that tenant's auditors read
    /// it, and would learn what was asked of another tenant's names (docs/audit-format.md).
    /// </remarks>
    public IReadOnlyList<KeyValuePair<string, long>>? Resources { get; init; }

    /// <summary>For aggregated refusals: how many of the requests counted named a resource not in <see cref="Resources"/>.</summary>
    public long OtherResources { get; init; }

    /// <summary>Most distinct resources an aggregated refusal lists (memory and event size stay bounded whatever a flood names).</summary>
    public const int MaxListedResources = 8;

    /// <summary>
    /// For a call that used key versions besides <see cref="Resource"/> — ReEncrypt's source, every
    /// batch call's items — those versions, distinct, in the order the call first resolved them
    /// (allowed or refused by the key's policy or state, as <see cref="Resource"/> is): at most
    /// <see cref="MaxListedKeyVersions"/>; null for every other event.
    /// </summary>
    public IReadOnlyList<string>? KeyVersions { get; init; }

    /// <summary>How many distinct key versions the call resolved beyond the <see cref="MaxListedKeyVersions"/> listed in <see cref="KeyVersions"/>.</summary>
    public long OtherKeyVersions { get; init; }

    /// <summary>
    /// Most key versions one event lists (a batch of 1,000 ReEncrypt items may name 2,000): about
    /// 20 KB of names at most, so a batch's event stays far below the verifier's line limit.
    /// </summary>
    public const int MaxListedKeyVersions = 128;

    /// <summary>
    /// For retention's record of a cut (<see cref="AuditChain.RetentionOperation"/>) only: the audit
    /// key's signature of the cut (<see cref="AuditChain.RetentionCutStatement"/>); null for every
    /// other event, and for records written before retention signed them.
    /// </summary>
    public AuditRetentionCut? RetentionCut { get; init; }

    /// <summary>The address part of a transport peer (<c>ipv4:10.0.0.7:51234</c> → <c>10.0.0.7</c>): anonymous callers are told apart by it.</summary>
    public static string AddressOf(string? peer)
    {
        if (string.IsNullOrEmpty(peer))
        {
            return "unknown";
        }

        var start = peer.IndexOf(':', StringComparison.Ordinal) + 1;
        var end = peer.LastIndexOf(':');
        return end > start ? peer[start..end] : peer[start..];
    }
}

/// <summary>An entry in the chain: its sequence number, the hash of the event before it, its canonical body and its hash.</summary>
/// <param name="Body">The canonical JSON the hash covers (docs/audit-format.md); stored and exported as is.</param>
public sealed record AuditEvent(long Sequence, AuditEntry Entry, string PreviousHash, string Hash, string Body);

/// <summary>The chain's last event, to link the next one to.</summary>
public readonly record struct AuditHead(long Sequence, string Hash);

/// <summary>
/// The chain's head as the store reads it (<see cref="Ports.IAuditStore.GetAuditHeadSourceAsync"/>),
/// and where it came from: the last event's (the common case), or, where no event is stored, the
/// newest checkpoint row's — a database row only, which the caller checks the audit key signed.
/// </summary>
public readonly record struct AuditHeadSource(AuditHead Head, bool FromCheckpointRow);

/// <summary>
/// What a retention cut (<see cref="Ports.IAuditStore.PruneAuditAsync"/>) deleted: how many events,
/// and every checkpoint row below the cut, as it was stored (they stand over events that no longer
/// exist), so the caller can tell the audit key's checkpoints from rows it did not sign.
/// </summary>
public sealed record AuditPruned(long Events, IReadOnlyList<AuditCheckpoint> CheckpointRows);

/// <summary>
/// The SIEM stream restarted (<see cref="Services.AuditLog.StreamRestarted"/>): the database's chain
/// no longer holds the last event the stream was sent (the database went back behind it, or was
/// rewritten there), so the events after <paramref name="After"/> are sent next, the new chain's
/// among them, whose sequence numbers the stream already holds for other events.
/// </summary>
/// <param name="After">The event the stream goes on after: the newest it holds that the chain still holds (sequence 0: the chain's start; or the event before the oldest one retained).</param>
/// <param name="Replaced">The last event the stream was sent, which the chain no longer holds.</param>
public sealed record StreamRestart(AuditHead After, AuditHead Replaced);

/// <summary>
/// A signed statement "the chain's event <paramref name="Sequence"/> has hash
/// <paramref name="HeadHash"/>", made with the HSM-held audit signing key.
/// </summary>
/// <param name="Body">The canonical JSON that is signed (SHA-256, then ECDSA P-256).</param>
/// <param name="Signature">IEEE P1363 r‖s.</param>
public sealed record AuditCheckpoint(long Sequence, string HeadHash, DateTimeOffset Time, string KeyFingerprint, string Body, byte[] Signature);

/// <summary>Which events to list; every filter is optional, and all given filters must match.</summary>
public sealed record AuditQuery
{
    /// <summary>Only events after this sequence number (in either order: oldest first, the paging cursor).</summary>
    public long AfterSequence { get; init; }

    /// <summary>Newest first: the events in descending sequence.</summary>
    public bool NewestFirst { get; init; }

    /// <summary>Only events before this sequence number (in either order: newest first, the paging cursor); none given, up to the newest.</summary>
    public long BeforeSequence { get; init; } = long.MaxValue;

    /// <summary>At most this many events.</summary>
    public int Limit { get; init; } = 100;

    /// <summary>Events at or after this time.</summary>
    public DateTimeOffset? StartTime { get; init; }

    /// <summary>Events before this time.</summary>
    public DateTimeOffset? EndTime { get; init; }

    /// <summary>Events of this principal.</summary>
    public string? Principal { get; init; }

    /// <summary>Events of principals of this tenant, or about its resources (a tenant auditor's view).</summary>
    public string? Tenant { get; init; }

    /// <summary>Events about this resource or anything under it (a key and its versions).</summary>
    public string? Resource { get; init; }

    /// <summary>Events of this operation (full method name, or its last part, e.g. <c>Decrypt</c>).</summary>
    public string? Operation { get; init; }

    /// <summary>Events with this outcome (status code name).</summary>
    public string? Outcome { get; init; }
}

/// <summary>
/// Thrown by a SIEM stream handler (<see cref="Services.AuditLog.EventsWritten"/>,
/// <see cref="Services.AuditLog.StreamRestarted"/>) whose stream took only part of what it was
/// given, or nothing: a FIFO that no process holds open for reading, or a pipe whose reader does
/// not keep up. The stream's position moves to <see cref="Reached"/>, the last event whose line
/// the stream holds whole (null: it stays where it was), and the rest is given again at the next
/// housekeeping pass; the pass reports the failure like any other.
/// </summary>
/// <param name="reached">The last event the stream took whole, or null.</param>
/// <param name="message">Why the rest was not taken; no event content.</param>
public sealed class AuditStreamNotTakenException(AuditHead? reached, string message) : IOException(message)
{
    /// <summary>The last event the stream took whole (its line and line feed), or null when the position stays.</summary>
    public AuditHead? Reached { get; } = reached;
}

/// <summary>
/// The cut retention's record vouches for: the last event it deleted, by sequence and hash (the hash
/// the first event kept links to), and the audit key's signature of that statement
/// (<see cref="AuditChain.RetentionCutStatement"/>), which only the HSM can make.
/// </summary>
/// <param name="Sequence">The last event the cut deleted.</param>
/// <param name="Head">That event's hash (hex SHA-256 of its body).</param>
/// <param name="Signature">The audit key's signature (IEEE P1363 r‖s) of the statement of the cut.</param>
public sealed record AuditRetentionCut(long Sequence, string Head, byte[] Signature);
