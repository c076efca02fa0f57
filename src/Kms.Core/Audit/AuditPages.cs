using Kms.Core.Ports;

namespace Kms.Core.Audit;

/// <summary>One page of a listing of audit events.</summary>
/// <param name="Events">The events that matched, at most the query's limit; fewer, even none, when the page's window ran out first.</param>
/// <param name="Next">
/// Where the next page starts: the sequence to go on after (oldest first) or before (newest
/// first). It is the last event's when the page filled, and otherwise the end of the window the
/// page examined, which need not be an event that matched; null when no event past it can match.
/// </param>
public sealed record AuditPage(IReadOnlyList<AuditEvent> Events, long? Next);

/// <summary>
/// Pages of a filtered listing that each read a bounded part of the log, as DynamoDB's filtered
/// Scan and AIP-158 allow: a page examines at most a window of sequence numbers past its cursor,
/// and when the window runs out before the page fills, the page ends there, short or empty, with
/// a cursor to go on from. Only an absent <see cref="AuditPage.Next"/> ends the listing.
/// </summary>
/// <remarks>
/// Without it a filter that matches few events (a rare operation or outcome, a small tenant, a
/// time range far from the cursor) read every event from the cursor to the end of the log for one
/// page. Sequence numbers are gap-free (apart from the pruned prefix), so a window of
/// <c>n</c> sequence numbers is at most <c>n</c> rows, read along the primary key. The walk starts
/// at the first event after the cursor that the principal filter allows, found in the
/// (principal, seq) index (with no principal, the first event: past a pruned prefix), so a
/// principal's listing skips the events of others between its own. Time, tenant, resource,
/// operation and outcome have no index (each is another insert in the commit every audited call
/// waits for), so they filter inside the window. With a time range, the walk also starts past the
/// blocks of the log whose time summary (a zone map, like PostgreSQL's BRIN, written by the audit
/// housekeeping: <see cref="IAuditStore.SummariseAuditBlocksAsync"/>) rules the range out: at the
/// first block that can hold a match (newest first, the last), or the unsummarised tail. Event
/// times are not monotonic in sequence (nodes' clocks differ; a time is taken before the group
/// commit orders the batch), so a block is skipped only when none of its events' times is in the
/// range, never by a search on the time column, which could step over one. The store answers a
/// page in one statement (<see cref="IAuditStore.ListAuditPageAsync"/>): the candidate the window
/// starts at, the window's events, and whether an event past it can match.
/// </remarks>
public static class AuditPages
{
    /// <summary>The sequence numbers one page examines at most: tens of milliseconds of reading.</summary>
    public const long DefaultScanWindow = 100_000;

    /// <summary>One page of the events matching <paramref name="query"/>, from its cursor (<see cref="AuditQuery.AfterSequence"/> oldest first, <see cref="AuditQuery.BeforeSequence"/> newest first).</summary>
    /// <param name="store">The log.</param>
    /// <param name="query">The filters, the order, the cursor and the page size (<see cref="AuditQuery.Limit"/>, at least 1).</param>
    /// <param name="scanWindow">How many sequence numbers the page examines at most (at least 1).</param>
    /// <param name="cancellationToken">Cancels the reads.</param>
    public static Task<AuditPage> ListAsync(IAuditStore store, AuditQuery query, long scanWindow, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(store);
        ArgumentNullException.ThrowIfNull(query);
        ArgumentOutOfRangeException.ThrowIfLessThan(scanWindow, 1);
        ArgumentOutOfRangeException.ThrowIfLessThan(query.Limit, 1);
        return store.ListAuditPageAsync(query, scanWindow, cancellationToken);
    }

    /// <summary>
    /// The first event after <paramref name="afterSequence"/> (in sequence order) whose time column
    /// is at or after <paramref name="time"/>, or null: what a walk of the log from the bound with
    /// that filter finds first — retention's cut (<see cref="Services.AuditLog.PruneAsync"/>), every
    /// event before it older. Event times are not monotonic in sequence, so it is no search on the
    /// time column: the walk starts at the first block whose time summary can hold such an event
    /// (its greatest time at or after <paramref name="time"/>; <see cref="IAuditStore.FindAuditWalkStartAsync"/>),
    /// past the blocks all of whose events are older, or at the unsummarised tail, and reads along
    /// the primary key from there: the answer of the walk from the bound, reading at most a block
    /// and the tail where that walk read every older event.
    /// </summary>
    /// <remarks>
    /// Below the first block (whose predecessors a prune deleted) the walk starts at the first
    /// event past the bound that no block covers, if any (an index lookup): a bound of 0 and the
    /// oldest event's predecessor start it at the same place.
    /// </remarks>
    /// <param name="store">The log.</param>
    /// <param name="time">The least time column the event may have.</param>
    /// <param name="afterSequence">The walk's exclusive lower bound.</param>
    /// <param name="cancellationToken">Cancels the reads.</param>
    public static async Task<AuditEvent?> FirstAtOrAfterAsync(IAuditStore store, DateTimeOffset time, long afterSequence, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(store);
        var query = new AuditQuery { StartTime = time, AfterSequence = afterSequence, Limit = 1 };
        if (await store.FindAuditWalkStartAsync(query, cancellationToken) is not { } start)
        {
            return null;
        }

        return await store.ListAuditEventsAsync(query with { AfterSequence = Math.Max(afterSequence, start - 1) }, cancellationToken) is [var found] ? found : null;
    }
}
