using Kms.Core.Audit;

namespace Kms.Core.Ports;

/// <summary>
/// The audit log: one hash chain of events with gap-free sequence numbers, and signed
/// checkpoints of it. Appends are serialised with every other write of the store, and a
/// write made inside an <see cref="AuditScope"/> that is mutating appends the scope's entry
/// in its own transaction (see <see cref="AuditScope.TakeForWrite"/>).
/// </summary>
public interface IAuditStore
{
    /// <summary>Chains and appends the entries in one durable transaction.</summary>
    /// <exception cref="Errors.KmsException">Unavailable when the store cannot write.</exception>
    Task<IReadOnlyList<AuditEvent>> AppendAuditAsync(IReadOnlyList<AuditEntry> entries, CancellationToken cancellationToken);

    /// <summary>The last event's sequence number and hash (the anchor's after a prune; <see cref="AuditChain.Empty"/> for a new log).</summary>
    Task<AuditHead> GetAuditHeadAsync(CancellationToken cancellationToken);

    /// <summary>Events matching the query, in sequence order (descending when newest first), at most its limit.</summary>
    /// <remarks>
    /// The store reads every event between the query's sequence bounds that its principal filter
    /// (the one indexed) leaves until the limit matched: a sparse filter over unbounded bounds reads
    /// the whole log. A caller's listing goes through <see cref="AuditPages"/>, which bounds them.
    /// </remarks>
    Task<IReadOnlyList<AuditEvent>> ListAuditEventsAsync(AuditQuery query, CancellationToken cancellationToken);

    /// <summary>Stores a signed checkpoint.</summary>
    Task AddAuditCheckpointAsync(AuditCheckpoint checkpoint, CancellationToken cancellationToken);

    /// <summary>Checkpoints with a sequence number above <paramref name="afterSequence"/>, in order.</summary>
    Task<IReadOnlyList<AuditCheckpoint>> ListAuditCheckpointsAsync(long afterSequence, int limit, CancellationToken cancellationToken);

    /// <summary>The newest checkpoint, or null.</summary>
    Task<AuditCheckpoint?> GetLatestAuditCheckpointAsync(CancellationToken cancellationToken);

    /// <summary>The newest checkpoint with a sequence number at or below <paramref name="sequence"/>, or null.</summary>
    Task<AuditCheckpoint?> FindAuditCheckpointAtOrBeforeAsync(long sequence, CancellationToken cancellationToken);

    /// <summary>
    /// Deletes the events up to and including <paramref name="throughSequence"/>, which must
    /// be a checkpoint's sequence (that checkpoint stays, anchoring what remains), and the
    /// checkpoints before it.
    /// </summary>
    /// <returns>How many events were deleted.</returns>
    Task<long> PruneAuditAsync(long throughSequence, CancellationToken cancellationToken);
}
