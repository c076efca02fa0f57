namespace Kms.Core.Audit;

/// <summary>Audit log settings (<c>Kms:Audit:*</c>).</summary>
public sealed record AuditOptions
{
    /// <summary>Most events written in one group commit.</summary>
    public int MaxBatch { get; init; } = 1024;

    /// <summary>A checkpoint is signed after this many events…</summary>
    public int CheckpointEveryEvents { get; init; } = 10_000;

    /// <summary>…or this long after the last one, whichever comes first (if there are new events).</summary>
    public TimeSpan CheckpointInterval { get; init; } = TimeSpan.FromSeconds(60);

    /// <summary>Refusals of one principal, operation and outcome within this window become one event with a count.</summary>
    public TimeSpan RefusalWindow { get; init; } = TimeSpan.FromSeconds(10);

    /// <summary>Distinct (principal, operation, outcome) refusal windows tracked at once; beyond it refusals share one overflow window.</summary>
    public int MaxRefusalWindows { get; init; } = 10_000;

    /// <summary>Events older than this are pruned (back to a checkpoint, which anchors the rest); null keeps everything.</summary>
    public TimeSpan? Retention { get; init; } = TimeSpan.FromDays(400);

    /// <summary>
    /// Most events one retention pass deletes (in one transaction, under the write lock): a
    /// backlog — a retention period shortened, a leader away for long — is worked off pass by
    /// pass, each cut at a checkpoint and recorded, rather than in one delete that outlasts the
    /// statement timeout, rolls back, and holds every writer meanwhile, pass after pass.
    /// </summary>
    public int MaxPrunedPerPass { get; init; } = 50_000;

    /// <summary>
    /// The events in one block of the log's time summary, which lets a listing with a time range
    /// skip the blocks outside it (<see cref="AuditPages"/>): the audit housekeeping summarises
    /// each block once it is written, at most <see cref="SummaryBlocksPerPass"/> a pass.
    /// </summary>
    public int SummaryBlockEvents { get; init; } = 10_000;

    /// <summary>Most blocks one housekeeping pass summarises (each a read of a block's events along the primary key and one insert): a log written before it existed is caught up over passes.</summary>
    public int SummaryBlocksPerPass { get; init; } = 20;
}
