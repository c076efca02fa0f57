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

    /// <summary>
    /// The last event's sequence number and hash, whatever checkpoint rows there are; only when no
    /// event is stored (retention cut the whole log), the newest checkpoint row's, unverified (the
    /// caller checks the audit key signed it); <see cref="AuditChain.Empty"/> for a new log.
    /// </summary>
    Task<AuditHead> GetAuditHeadAsync(CancellationToken cancellationToken);

    /// <summary>
    /// The head as <see cref="GetAuditHeadAsync"/> reads it, in the same one statement, and whether
    /// it came from a checkpoint row (no event stored) rather than the last event: a caller that
    /// must check such a row (a checkpoint signed over the head) needs no second read to tell.
    /// </summary>
    Task<AuditHeadSource> GetAuditHeadSourceAsync(CancellationToken cancellationToken);

    /// <summary>
    /// From now on, an append — a batch of <see cref="AppendAuditAsync"/>, a mutation's own event —
    /// chains onto a head taken from a checkpoint row (no event stored: retention cut the whole log,
    /// or a database writer inserted a row into an empty one) only if
    /// <paramref name="signedByTheAuditKey"/> holds of the row stored at that head's sequence;
    /// else it fails <c>UNAVAILABLE</c> (<see cref="Errors.KmsErrors.AuditHeadNotSigned"/>) and
    /// writes nothing, the mutation included. A head that passed is remembered, so the check runs
    /// once for it, never for a head that is an event's. Called by <c>AuditLog</c> once it holds the
    /// audit key; a store never told (a tool without the HSM) chains as before, unverified.
    /// </summary>
    void RequireSignedCheckpointHead(Func<AuditCheckpoint, bool> signedByTheAuditKey);

    /// <summary>Events matching the query, in sequence order (descending when newest first), at most its limit.</summary>
    /// <remarks>
    /// The store reads every event between the query's sequence bounds that its principal filter
    /// (the one indexed) leaves until the limit matched: a sparse filter over unbounded bounds reads
    /// the whole log. A caller's listing goes through <see cref="AuditPages"/>, which bounds them.
    /// </remarks>
    Task<IReadOnlyList<AuditEvent>> ListAuditEventsAsync(AuditQuery query, CancellationToken cancellationToken);

    /// <summary>
    /// One page of a listing that reads a bounded part of the log (<see cref="AuditPages"/>, which
    /// states what the page holds): from the query's cursor (<see cref="AuditQuery.AfterSequence"/>
    /// oldest first, <see cref="AuditQuery.BeforeSequence"/> newest first), the window of
    /// <paramref name="scanWindow"/> sequence numbers from the first event past the cursor that the
    /// principal filter allows, past the blocks whose time summary rules the query's time range out
    /// (<see cref="FindAuditWalkStartAsync"/>); at most the query's limit of the events in it that match.
    /// </summary>
    /// <remarks>
    /// <see cref="AuditPage.Next"/>: the last event's sequence when the page filled; else the
    /// window's end (oldest first its last sequence, newest first its first) when an event past
    /// it can match by the principal and the time summary; else null. A database answers it in one
    /// statement: each page of a listing is a call, and a call that took three reads took three
    /// round trips and three connections from the pool.
    /// </remarks>
    Task<AuditPage> ListAuditPageAsync(AuditQuery query, long scanWindow, CancellationToken cancellationToken);

    /// <summary>
    /// Where a walk of the log for the query's time range (<see cref="AuditQuery.StartTime"/>,
    /// <see cref="AuditQuery.EndTime"/>) can start, by the time summary of the log's blocks
    /// (<see cref="SummariseAuditBlocksAsync"/>): oldest first, the lowest sequence number between
    /// the query's bounds (<see cref="AuditQuery.AfterSequence"/>, <see cref="AuditQuery.BeforeSequence"/>)
    /// that no summarised block rules out; newest first, the highest. It need not be an event's.
    /// Null when the summaries rule out every sequence number between the bounds.
    /// </summary>
    /// <remarks>
    /// A block is ruled out when the time column of none of its events (its least and greatest
    /// time) is in the range; sequence numbers no block covers (the unsummarised tail) never are.
    /// So no event whose time column is in the range lies between the bound and the answer, and a
    /// walk that starts there misses none that the time filter would return.
    /// </remarks>
    Task<long?> FindAuditWalkStartAsync(AuditQuery query, CancellationToken cancellationToken);

    /// <summary>
    /// Summarises the log's next complete blocks, each of <paramref name="blockEvents"/>
    /// sequence numbers from the one after the last block summarised (or the oldest event), with
    /// the least and greatest time column of its events, at most <paramref name="maxBlocks"/> of
    /// them. A block is complete when its last sequence number is written: sequence numbers are
    /// gap-free and committed in order, so every event of it is. A block already summarised (by
    /// another node, with another block size) is left as it is.
    /// </summary>
    /// <returns>How many blocks this call summarised (one another call stored first is not counted).</returns>
    Task<int> SummariseAuditBlocksAsync(int blockEvents, int maxBlocks, CancellationToken cancellationToken);

    /// <summary>
    /// Stores a signed checkpoint. A row already stored at its sequence that differs from it (a
    /// database writer's, inserted ahead of the chain; or another node's of the same head) is
    /// replaced by it, and returned; null when there was none, or the same.
    /// </summary>
    Task<AuditCheckpoint?> AddAuditCheckpointAsync(AuditCheckpoint checkpoint, CancellationToken cancellationToken);

    /// <summary>Checkpoints with a sequence number above <paramref name="afterSequence"/>, in order.</summary>
    Task<IReadOnlyList<AuditCheckpoint>> ListAuditCheckpointsAsync(long afterSequence, int limit, CancellationToken cancellationToken);

    /// <summary>The newest checkpoint, or null.</summary>
    Task<AuditCheckpoint?> GetLatestAuditCheckpointAsync(CancellationToken cancellationToken);

    /// <summary>The newest checkpoint with a sequence number at or below <paramref name="sequence"/>, or null.</summary>
    Task<AuditCheckpoint?> FindAuditCheckpointAtOrBeforeAsync(long sequence, CancellationToken cancellationToken);

    /// <summary>
    /// Deletes the events up to and including <paramref name="throughSequence"/>, which must
    /// be a checkpoint's sequence (that checkpoint stays, anchoring what remains), and the
    /// checkpoints before it, and the time summaries of blocks that end there or before.
    /// </summary>
    /// <returns>
    /// How many events were deleted, and each checkpoint row deleted, as it was stored, read in the
    /// same transaction as the delete (none deleted unreported): the caller reports those the audit
    /// key did not sign (a database writer's rows) rather than have them vanish silently.
    /// </returns>
    Task<AuditPruned> PruneAuditAsync(long throughSequence, CancellationToken cancellationToken);
}
