using System.Data;
using System.Data.Common;
using System.Globalization;
using System.Text;
using Kms.Core.Audit;
using Kms.Core.Errors;

namespace Kms.Storage;

/// <summary>The audit chain and its checkpoints (<see cref="Kms.Core.Ports.IAuditStore"/>).</summary>
public abstract partial class SqlStore
{
    private const string EventColumns = "seq, body, hash";

    // In the insert's column order.
    // Typed, so a statement prepared once serves every batch on either backend.
    private static readonly (string Name, DbType Type)[] EventParameters =
    [
        ("@seq", DbType.Int64), ("@time", DbType.Int64), ("@principal", DbType.String), ("@tenant", DbType.String), ("@operation", DbType.String),
        ("@resource", DbType.String), ("@outcome", DbType.String), ("@body", DbType.String), ("@hash", DbType.String),
        ("@key_versions", DbType.String),
    ];

    private const string InsertEventColumns = "seq, time, principal, tenant, operation, resource, outcome, body, hash, key_versions";

    /// <summary>
    /// The index column of an event's key versions (<see cref="AuditEntry.KeyVersions"/>): each
    /// between spaces (<c> v1 v2 </c>, no name holds one), so the resource filter finds a version,
    /// or a key by its versions, with one substring match; null when the event lists none.
    /// </summary>
    internal static string? KeyVersionsColumn(AuditEntry entry) =>
        entry.KeyVersions is { Count: > 0 } versions ? " " + string.Join(' ', versions) + " " : null;

    /// <summary>SQL true when <paramref name="needle"/> occurs in <paramref name="haystack"/> (null when the haystack is), case-sensitively.</summary>
    private protected abstract string ContainsSql(string haystack, string needle);

    /// <inheritdoc />
    /// <remarks>Through the store's own audit writer connection (<see cref="AuditWriter"/>), never carrying an <see cref="AuditScope"/>'s entry.</remarks>
    public Task<IReadOnlyList<AuditEvent>> AppendAuditAsync(IReadOnlyList<AuditEntry> entries, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(entries);
        return GuardAsync(() => _auditWriter.AppendAsync(entries, cancellationToken), this);
    }

    /// <summary>How the audit writer found the chain head for its batches: in memory, or read from the database (tests).</summary>
    internal (long FromMemory, long FromDatabase) AuditHeadReads => (_auditWriter.HeadsFromMemory, _auditWriter.HeadsFromDatabase);

    /// <inheritdoc />
    public Task<AuditHead> GetAuditHeadAsync(CancellationToken cancellationToken) =>
        ReadAsync(connection => ReadHeadAsync(connection, null, cancellationToken), cancellationToken);

    /// <inheritdoc />
    public Task<AuditHeadSource> GetAuditHeadSourceAsync(CancellationToken cancellationToken) =>
        ReadAsync(async connection =>
        {
            var (head, fromCheckpointRow) = await ReadHeadRowAsync(connection, null, cancellationToken);
            return new AuditHeadSource(head, fromCheckpointRow);
        }, cancellationToken);

    /// <inheritdoc />
    public Task<IReadOnlyList<AuditEvent>> ListAuditEventsAsync(AuditQuery query, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(query);
        var (sql, parameters) = ListAuditEventsSql(query);
        Interlocked.Increment(ref _auditReadStatements);
        return ReadListAsync(sql, ReadEvent, cancellationToken, parameters);
    }

    /// <summary>How many statements the audit listings (<see cref="ListAuditEventsAsync"/>, <see cref="FindAuditWalkStartAsync"/>, <see cref="ListAuditPageAsync"/>) have run (tests).</summary>
    internal long AuditReadStatements => Interlocked.Read(ref _auditReadStatements);

    private long _auditReadStatements;

    /// <summary>The statement <see cref="ListAuditEventsAsync"/> runs and its parameters (tests read its plan).</summary>
    internal (string Sql, (string Name, object Value)[] Parameters) ListAuditEventsSql(AuditQuery query)
    {
        // Both bounds in either order: a page's window (AuditPages) is a range of the primary key.
        var sql = new StringBuilder($"SELECT {EventColumns} FROM audit_events WHERE seq > @after AND seq < @before");
        var parameters = new List<(string, object)> { ("@after", query.AfterSequence), ("@before", query.BeforeSequence), ("@limit", query.Limit) };
        AppendFilters(sql, parameters, query);
        sql.Append(query.NewestFirst ? " ORDER BY seq DESC LIMIT @limit" : " ORDER BY seq LIMIT @limit");
        return (sql.ToString(), [.. parameters]);
    }

    // The query's filters but its sequence bounds, each " AND" a condition, its parameter added.
    private void AppendFilters(StringBuilder sql, List<(string, object)> parameters, AuditQuery query)
    {
        void Filter(string condition, string name, object? value)
        {
            if (value is not null)
            {
                sql.Append(" AND ").Append(condition);
                parameters.Add((name, value));
            }
        }

        Filter("time >= @start", "@start", CeilingMilliseconds(query.StartTime));
        Filter("time < @end", "@end", CeilingMilliseconds(query.EndTime));
        Filter("principal = @principal", "@principal", query.Principal);
        // Prefix and suffix matches by substr, not LIKE: LIKE ignores case on SQLite and not on
        // PostgreSQL, and '_' (allowed in ids) is one of its wildcards on both.
        // A tenant's events: its principals', and deployment principals' naming its resources.
        // Not another tenant's principals' (a refused probe of a name here): those would show
        // this tenant who they are, where they call from and their context hashes.
        Filter("(tenant = @tenant OR (tenant IS NULL AND (resource = 'tenants/' || @tenant OR substr(resource, 1, length(@tenant) + 9) = 'tenants/' || @tenant || '/')))", "@tenant", query.Tenant);
        // The resource, or one of the key versions a batch (or ReEncrypt's source) used.
        Filter(
            $"(resource = @resource OR substr(resource, 1, length(@resource) + 1) = @resource || '/' OR {ContainsSql("key_versions", "' ' || @resource || ' '")} OR {ContainsSql("key_versions", "' ' || @resource || '/'")})",
            "@resource",
            query.Resource);
        Filter("(operation = @operation OR (length(operation) > length(@operation) AND substr(operation, length(operation) - length(@operation)) = '/' || @operation))",
            "@operation", query.Operation);
        Filter("outcome = @outcome", "@outcome", query.Outcome);
    }

    /// <inheritdoc />
    /// <remarks>
    /// One statement, where the page was three reads (and two more with a time range): the first
    /// (last) candidate past the cursor, the page of its window, and the candidate past the window
    /// that tells whether a short page ends the listing. Each is a scalar subquery of a row that
    /// comes back with the page's events (<see cref="ListAuditPageSql"/>).
    /// </remarks>
    public Task<AuditPage> ListAuditPageAsync(AuditQuery query, long scanWindow, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(query);
        ArgumentOutOfRangeException.ThrowIfLessThan(scanWindow, 1);
        ArgumentOutOfRangeException.ThrowIfLessThan(query.Limit, 1);
        var (sql, parameters) = ListAuditPageSql(query, scanWindow);
        Interlocked.Increment(ref _auditReadStatements);
        return ReadAsync(async connection =>
        {
            await using var command = Command(connection, sql, parameters);
            await using var reader = await command.ExecuteReaderAsync(cancellationToken);
            var events = new List<AuditEvent>();
            (long? Candidate, long? End, bool More) window = (null, null, false);
            while (await reader.ReadAsync(cancellationToken))
            {
                if (reader.IsDBNull(0))
                {
                    window = (reader.IsDBNull(3) ? null : reader.GetInt64(3), reader.IsDBNull(4) ? null : reader.GetInt64(4), !reader.IsDBNull(5));
                }
                else
                {
                    events.Add(ReadEvent(reader));
                }
            }

            // The union's branches come back in no promised order: the page's own, by sequence.
            events.Sort((a, b) => query.NewestFirst ? b.Sequence.CompareTo(a.Sequence) : a.Sequence.CompareTo(b.Sequence));
            if (window.Candidate is null)
            {
                return new AuditPage([], null);
            }

            return events.Count == query.Limit
                ? new AuditPage(events, events[^1].Sequence)
                : new AuditPage(events, window.More ? window.End : null);
        }, cancellationToken);
    }

    /// <summary>
    /// The statement <see cref="ListAuditPageAsync"/> runs and its parameters (tests read its plan).
    /// Its rows: one whose first column is null, with the candidate the window starts at (null: no
    /// event past the cursor can match), where the window ends (oldest first its last sequence,
    /// newest first its first: the next page's cursor when this one is short), and a candidate past
    /// the window (null: none, the listing ends); then the page's events (seq, body, hash).
    /// </summary>
    internal (string Sql, (string Name, object Value)[] Parameters) ListAuditPageSql(AuditQuery query, long scanWindow)
    {
        var parameters = new List<(string, object)>
        {
            ("@after", query.AfterSequence), ("@before", query.BeforeSequence), ("@limit", query.Limit), ("@window", scanWindow),
            ("@last_first", long.MaxValue - scanWindow), ("@block_start", CeilingMilliseconds(query.StartTime) ?? long.MinValue), ("@block_end", CeilingMilliseconds(query.EndTime) ?? long.MaxValue),
        };
        var filters = new StringBuilder();
        AppendFilters(filters, parameters, query);
        var timed = query.StartTime is not null || query.EndTime is not null;
        var principal = query.Principal is null ? "" : " AND principal = @principal";
        string sql;
        if (!query.NewestFirst)
        {
            // The first candidate past a bound: the first event past it that the principal index
            // allows, from the first sequence the time summary leaves (FindAuditWalkStartAsync).
            string First(string after) =>
                $"(SELECT seq FROM audit_events WHERE seq >= {(timed ? OldestWalkStartSql(after) : after + " + 1")} AND seq < @before{principal} ORDER BY seq LIMIT 1)";
            // The window: from the candidate, @window sequences (through the greatest a long holds).
            sql = $"""
                WITH f AS (SELECT {First("@after")} AS s),
                w AS (SELECT s AS candidate, CASE WHEN s > @last_first THEN {long.MaxValue - 1} ELSE s - 1 + @window END AS through FROM f)
                SELECT CAST(NULL AS BIGINT), CAST(NULL AS TEXT), CAST(NULL AS TEXT), candidate, through, {First("(SELECT through FROM w)")} FROM w
                UNION ALL SELECT * FROM (
                    SELECT {EventColumns}, CAST(NULL AS BIGINT) AS c, CAST(NULL AS BIGINT) AS e, CAST(NULL AS BIGINT) AS m FROM audit_events
                    WHERE seq >= (SELECT candidate FROM w) AND seq <= (SELECT CASE WHEN through < @before - 1 THEN through ELSE @before - 1 END FROM w){filters}
                    ORDER BY seq LIMIT @limit) p
                """;
        }
        else
        {
            string Last(string before) =>
                $"(SELECT seq FROM audit_events WHERE seq <= {(timed ? NewestWalkStartSql(before) : before + " - 1")} AND seq > @after{principal} ORDER BY seq DESC LIMIT 1)";
            // The window: down from the candidate, @window sequences (sequences start at 1: no overflow).
            sql = $"""
                WITH f AS (SELECT {Last("@before")} AS s),
                w AS (SELECT s AS candidate, s + 1 - @window AS low FROM f)
                SELECT CAST(NULL AS BIGINT), CAST(NULL AS TEXT), CAST(NULL AS TEXT), candidate, low, {Last("(SELECT low FROM w)")} FROM w
                UNION ALL SELECT * FROM (
                    SELECT {EventColumns}, CAST(NULL AS BIGINT) AS c, CAST(NULL AS BIGINT) AS e, CAST(NULL AS BIGINT) AS m FROM audit_events
                    WHERE seq >= (SELECT CASE WHEN low > @after THEN low ELSE @after + 1 END FROM w) AND seq <= (SELECT candidate FROM w){filters}
                    ORDER BY seq DESC LIMIT @limit) p
                """;
        }

        return (sql, [.. parameters]);
    }

    // The first sequence past the exclusive bound `after` that the time summary leaves for the
    // range of @block_start and @block_end: FindAuditWalkStartAsync's statement, as an expression.
    private static string OldestWalkStartSql(string after) => $"""
        (SELECT max(s) FROM (SELECT {after} + 1 AS s UNION ALL SELECT min(s) FROM (
            SELECT min(first_seq) AS s FROM audit_blocks WHERE last_seq > {after} AND max_time >= @block_start AND min_time < @block_end
            UNION ALL SELECT coalesce(max(last_seq), 0) + 1 FROM audit_blocks
            UNION ALL SELECT (SELECT seq FROM audit_events WHERE seq > {after} AND seq < (SELECT min(first_seq) FROM audit_blocks) ORDER BY seq LIMIT 1)) c) m)
        """;

    // The mirror: the last sequence before the exclusive bound `before` that the summary leaves.
    private static string NewestWalkStartSql(string before) => $"""
        (SELECT min(s) FROM (SELECT {before} - 1 AS s UNION ALL SELECT max(s) FROM (
            SELECT max(last_seq) AS s FROM audit_blocks WHERE first_seq < {before} AND max_time >= @block_start AND min_time < @block_end
            UNION ALL SELECT max(seq) FROM audit_events WHERE seq < {before} AND seq > (SELECT coalesce(max(last_seq), 0) FROM audit_blocks)
            UNION ALL SELECT min(first_seq) - 1 FROM audit_blocks) c) m)
        """;

    // A bound of the time column (whole milliseconds, as every event's time is) that compares as
    // the bound itself: rounded up, so time >= it and time < it hold exactly when the event's time
    // is at or after, or before, the bound. Rounded down (ToUnixTimeMilliseconds), a bound between
    // milliseconds (a client's timestamp with its nanos, retention's cutoff) listed the events of
    // the millisecond before the start, and left out those of the millisecond before the end.
    private static long? CeilingMilliseconds(DateTimeOffset? time) =>
        time is not { } bound ? null
        : bound.ToUnixTimeMilliseconds() is var floor && DateTimeOffset.FromUnixTimeMilliseconds(floor) < bound ? floor + 1 : floor;

    /// <inheritdoc />
    /// <remarks>
    /// One statement: the first (last) block past the bound whose time range meets the query's,
    /// the tail past the last block (newest first, its newest event before the bound), and the
    /// stretch before the first block: oldest first, its first event past the bound, if any (an
    /// index lookup; after a prune that deleted whole blocks there is none, and a page starts at
    /// the first block that can hold the range, not at the oldest event). Every event between the
    /// first block and the last lies in a block (each is summarised from the one after the
    /// greatest block summarised, or the oldest event), and a block's row is the least and greatest
    /// time column of the events in it, which are immutable once it is complete.
    /// </remarks>
    public Task<long?> FindAuditWalkStartAsync(AuditQuery query, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(query);
        Interlocked.Increment(ref _auditReadStatements);
        (string, object)[] parameters =
        [
            ("@after", query.AfterSequence), ("@before", query.BeforeSequence),
            ("@start", CeilingMilliseconds(query.StartTime) ?? long.MinValue), ("@end", CeilingMilliseconds(query.EndTime) ?? long.MaxValue),
        ];
        return ReadAsync<long?>(async connection =>
        {
            if (!query.NewestFirst)
            {
                await using var oldest = Command(connection, """
                    SELECT min(s) FROM (
                        SELECT min(first_seq) AS s FROM audit_blocks WHERE last_seq > @after AND max_time >= @start AND min_time < @end
                        UNION ALL SELECT coalesce(max(last_seq), 0) + 1 FROM audit_blocks
                        UNION ALL SELECT (SELECT seq FROM audit_events WHERE seq > @after AND seq < (SELECT min(first_seq) FROM audit_blocks) ORDER BY seq LIMIT 1)) c
                    """, parameters);
                var first = Math.Max(Convert.ToInt64(await oldest.ExecuteScalarAsync(cancellationToken), CultureInfo.InvariantCulture), query.AfterSequence + 1);
                return first < query.BeforeSequence ? first : null;
            }

            await using var newest = Command(connection, """
                SELECT max(s) FROM (
                    SELECT max(last_seq) AS s FROM audit_blocks WHERE first_seq < @before AND max_time >= @start AND min_time < @end
                    UNION ALL SELECT max(seq) FROM audit_events WHERE seq < @before AND seq > (SELECT coalesce(max(last_seq), 0) FROM audit_blocks)
                    UNION ALL SELECT min(first_seq) - 1 FROM audit_blocks) c
                """, parameters);
            var last = await newest.ExecuteScalarAsync(cancellationToken) is { } found and not DBNull
                ? Math.Min(Convert.ToInt64(found, CultureInfo.InvariantCulture), query.BeforeSequence - 1)
                : query.AfterSequence;
            return last > query.AfterSequence ? last : null;
        }, cancellationToken);
    }

    /// <summary>How many blocks' events <see cref="SummariseAuditBlocksAsync"/> has read (tests).</summary>
    internal long AuditBlocksRead => Interlocked.Read(ref _auditBlocksRead);

    private long _auditBlocksRead;

    /// <inheritdoc />
    /// <remarks>
    /// The blocks' events are read outside the write lock (they are immutable once the block's
    /// last is committed), each block a statement along the primary key; the blocks read are
    /// inserted in one write transaction (one commit a pass, whatever the backlog), each from just
    /// after the last block written by then. Another node's blocks, written meanwhile from the
    /// same point with another size, end inside these or after them: those are written from
    /// their end, or not at all, so every event from the first block to the last lies in one, and
    /// each block still bounds the times of the events in it.
    /// </remarks>
    public async Task<int> SummariseAuditBlocksAsync(int blockEvents, int maxBlocks, CancellationToken cancellationToken)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(blockEvents, 1);
        var blocks = await ReadAsync(async connection =>
        {
            var read = new List<(long First, long Last, long MinTime, long MaxTime)>();
            long first;
            long newest;
            await using (var next = Command(connection, "SELECT (SELECT max(last_seq) FROM audit_blocks), (SELECT min(seq) FROM audit_events), (SELECT max(seq) FROM audit_events)"))
            await using (var reader = await next.ExecuteReaderAsync(cancellationToken))
            {
                if (!await reader.ReadAsync(cancellationToken) || reader.IsDBNull(1))
                {
                    return read;
                }

                // After the last block; after a prune past it, from the oldest event.
                first = Math.Max(reader.IsDBNull(0) ? 0 : reader.GetInt64(0) + 1, reader.GetInt64(1));
                newest = reader.GetInt64(2);
            }

            await using var summary = Command(connection, "SELECT max(seq), min(time), max(time) FROM audit_events WHERE seq >= @first AND seq <= @last", ("@first", 0L), ("@last", 0L));
            // Only a block whose last sequence number is written (every one before it is: they are
            // gap-free and committed in order) is read: the tail block is incomplete on almost
            // every pass, and reading it found that out after up to a block of rows.
            while (read.Count < maxBlocks && first - 1 + blockEvents <= newest)
            {
                var last = first - 1 + blockEvents;
                summary.Parameters[0].Value = first;
                summary.Parameters[1].Value = last;
                Interlocked.Increment(ref _auditBlocksRead);
                await using var rows = await summary.ExecuteReaderAsync(cancellationToken);
                if (!await rows.ReadAsync(cancellationToken) || rows.IsDBNull(0) || rows.GetInt64(0) != last)
                {
                    break; // gone meanwhile (a prune)
                }

                read.Add((first, last, rows.GetInt64(1), rows.GetInt64(2)));
                first = last + 1;
            }

            return read;
        }, cancellationToken);
        if (blocks.Count == 0)
        {
            return 0;
        }

        return await WriteAsync(
            async (connection, transaction) =>
            {
                // Where the blocks end now, under the write lock: another node's pass (another
                // block size, the lease moving) may have written blocks since these were read. A
                // block that ends there or before is covered already; one that starts at or before
                // it is written from just after it (its times still bound those of its events
                // there). Before, a block that met one already written at its first sequence was
                // dropped whole and the next written: when the other's ended inside it (10 of 15),
                // the rest of it lay in no block, and every time-ranged walk stepped over it.
                long? covered;
                await using (var end = Command(connection, "SELECT max(last_seq) FROM audit_blocks"))
                {
                    end.Transaction = transaction;
                    covered = await end.ExecuteScalarAsync(cancellationToken) is { } value and not DBNull ? Convert.ToInt64(value, CultureInfo.InvariantCulture) : null;
                }

                var inserted = 0;
                foreach (var read in blocks)
                {
                    if (read.Last <= covered)
                    {
                        continue;
                    }

                    var block = covered is { } through && read.First <= through ? read with { First = through + 1 } : read;
                    covered = block.Last;
                    inserted += await ExecuteInAsync(
                        connection,
                        transaction,
                        "INSERT INTO audit_blocks (first_seq, last_seq, min_time, max_time) VALUES (@first, @last, @min, @max) ON CONFLICT (first_seq) DO NOTHING",
                        cancellationToken,
                        ("@first", block.First),
                        ("@last", block.Last),
                        ("@min", block.MinTime),
                        ("@max", block.MaxTime)) ? 1 : 0;
                }

                return inserted;
            },
            cancellationToken,
            announce: false);
    }

    /// <inheritdoc />
    /// <remarks>
    /// In one write transaction: the row stored at the checkpoint's sequence is read, and replaced
    /// when any column differs. Before, <c>ON CONFLICT (seq) DO NOTHING</c> kept whatever was there:
    /// a row a database writer inserted at a future sequence kept the genuine checkpoint out of the
    /// database for good.
    /// </remarks>
    public Task<AuditCheckpoint?> AddAuditCheckpointAsync(AuditCheckpoint checkpoint, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(checkpoint);
        (string, object)[] values =
        [
            ("@seq", checkpoint.Sequence),
            ("@head", checkpoint.HeadHash),
            ("@time", checkpoint.Time.ToUnixTimeMilliseconds()),
            ("@key", checkpoint.KeyFingerprint),
            ("@body", checkpoint.Body),
            ("@signature", checkpoint.Signature),
        ];
        return WriteAsync(
            async (connection, transaction) =>
            {
                var stored = await ReadCheckpointAtAsync(connection, transaction, checkpoint.Sequence, cancellationToken);
                if (stored is null)
                {
                    await ExecuteInAsync(connection, transaction, "INSERT INTO audit_checkpoints (seq, head, time, key, body, signature) VALUES (@seq, @head, @time, @key, @body, @signature)", cancellationToken, values);
                    return null;
                }

                if (SameCheckpoint(stored, checkpoint))
                {
                    return null;
                }

                await ExecuteInAsync(connection, transaction, "UPDATE audit_checkpoints SET head = @head, time = @time, key = @key, body = @body, signature = @signature WHERE seq = @seq", cancellationToken, values);
                return stored;
            },
            cancellationToken,
            announce: false);
    }

    // Column for column (the time as stored: whole milliseconds).
    internal static bool SameCheckpoint(AuditCheckpoint a, AuditCheckpoint b) =>
        a.Sequence == b.Sequence && a.HeadHash == b.HeadHash && a.Time.ToUnixTimeMilliseconds() == b.Time.ToUnixTimeMilliseconds()
        && a.KeyFingerprint == b.KeyFingerprint && a.Body == b.Body && a.Signature.AsSpan().SequenceEqual(b.Signature);

    /// <inheritdoc />
    public Task<IReadOnlyList<AuditCheckpoint>> ListAuditCheckpointsAsync(long afterSequence, int limit, CancellationToken cancellationToken) =>
        ReadListAsync("SELECT seq, head, time, key, body, signature FROM audit_checkpoints WHERE seq > @after ORDER BY seq LIMIT @limit", ReadCheckpoint, cancellationToken, ("@after", afterSequence), ("@limit", limit));

    /// <inheritdoc />
    public async Task<AuditCheckpoint?> GetLatestAuditCheckpointAsync(CancellationToken cancellationToken)
    {
        var rows = await ReadListAsync("SELECT seq, head, time, key, body, signature FROM audit_checkpoints ORDER BY seq DESC LIMIT 1", ReadCheckpoint, cancellationToken);
        return rows.Count == 0 ? null : rows[0];
    }

    /// <inheritdoc />
    public async Task<AuditCheckpoint?> FindAuditCheckpointAtOrBeforeAsync(long sequence, CancellationToken cancellationToken)
    {
        var rows = await ReadListAsync("SELECT seq, head, time, key, body, signature FROM audit_checkpoints WHERE seq <= @seq ORDER BY seq DESC LIMIT 1", ReadCheckpoint, cancellationToken, ("@seq", sequence));
        return rows.Count == 0 ? null : rows[0];
    }

    /// <inheritdoc />
    public Task<AuditPruned> PruneAuditAsync(long throughSequence, CancellationToken cancellationToken) =>
        WriteAsync(async (connection, transaction) =>
        {
            await using (var anchor = Command(connection, "SELECT count(*) FROM audit_checkpoints WHERE seq = @seq", ("@seq", throughSequence)))
            {
                anchor.Transaction = transaction;
                if ((long)(await anchor.ExecuteScalarAsync(cancellationToken))! == 0)
                {
                    throw new InvalidOperationException($"audit events are pruned only back to a checkpoint; there is none at {throughSequence}");
                }
            }

            // Every row below the cut goes, the audit key's checkpoints and rows it did not sign
            // alike (they stand over events deleted here), and each comes back to the caller, which
            // reports those it did not sign: read by the delete itself, so none goes unreported.
            var checkpointRows = new List<AuditCheckpoint>();
            await using (var checkpoints = Command(connection, "DELETE FROM audit_checkpoints WHERE seq < @seq RETURNING seq, head, time, key, body, signature", ("@seq", throughSequence)))
            {
                checkpoints.Transaction = transaction;
                await using var reader = await checkpoints.ExecuteReaderAsync(cancellationToken);
                while (await reader.ReadAsync(cancellationToken))
                {
                    checkpointRows.Add(ReadCheckpoint(reader));
                }
            }

            checkpointRows.Sort((a, b) => a.Sequence.CompareTo(b.Sequence));

            // A block the cut ends inside stays: its times still bound those of its remaining events.
            await using (var blocks = Command(connection, "DELETE FROM audit_blocks WHERE last_seq <= @seq", ("@seq", throughSequence)))
            {
                blocks.Transaction = transaction;
                await blocks.ExecuteNonQueryAsync(cancellationToken);
            }

            await using var events = Command(connection, "DELETE FROM audit_events WHERE seq <= @seq", ("@seq", throughSequence));
            events.Transaction = transaction;
            return new AuditPruned(await events.ExecuteNonQueryAsync(cancellationToken), checkpointRows);
        }, cancellationToken, announce: false);

    // Inside a write transaction: SQLite has one writer at a time, so the head read here is
    // the head the new events follow, whichever path (group commit, a mutation) writes.
    private async Task<IReadOnlyList<AuditEvent>> AppendAuditInAsync(DbConnection connection, DbTransaction transaction, IReadOnlyList<AuditEntry> entries, CancellationToken cancellationToken)
    {
        var head = await ReadChainableHeadAsync(connection, transaction, cancellationToken);
        await using var insert = InsertEventCommand(connection);
        insert.Transaction = transaction;
        return await InsertEventsAsync(insert, head, entries, cancellationToken);
    }

    internal static DbCommand InsertEventCommand(DbConnection connection)
    {
        var insert = Command(
            connection,
            $"INSERT INTO audit_events ({InsertEventColumns}) VALUES (@seq, @time, @principal, @tenant, @operation, @resource, @outcome, @body, @hash, @key_versions)");
        foreach (var (name, type) in EventParameters)
        {
            var parameter = insert.CreateParameter();
            parameter.ParameterName = name;
            parameter.DbType = type;
            parameter.Value = DBNull.Value;
            insert.Parameters.Add(parameter);
        }

        return insert;
    }

    // Chains the entries after the head and inserts them in multi-row statements (at most 500 rows each).
    internal static async Task<IReadOnlyList<AuditEvent>> InsertEventRowsAsync(DbConnection connection, AuditHead head, IReadOnlyList<AuditEntry> entries, CancellationToken cancellationToken)
    {
        var written = new List<AuditEvent>(entries.Count);
        foreach (var chunk in entries.Chunk(500))
        {
            await using var insert = connection.CreateCommand();
            var sql = new StringBuilder($"INSERT INTO audit_events ({InsertEventColumns}) VALUES ");
            for (var i = 0; i < chunk.Length; i++)
            {
                var entry = chunk[i];
                var linked = AuditChain.Link(head, entry);
                sql.Append(i == 0 ? "(" : ", (");
                object?[] values = [linked.Sequence, entry.Time.ToUnixTimeMilliseconds(), entry.Principal, entry.Tenant, entry.Operation, entry.Resource, entry.Outcome, linked.Body, linked.Hash, KeyVersionsColumn(entry)];
                for (var column = 0; column < values.Length; column++)
                {
                    var parameter = insert.CreateParameter();
                    parameter.ParameterName = string.Create(CultureInfo.InvariantCulture, $"@e{i}_{column}");
                    parameter.DbType = EventParameters[column].Type;
                    parameter.Value = values[column] ?? DBNull.Value;
                    insert.Parameters.Add(parameter);
                    sql.Append(column == 0 ? "" : ", ").Append(parameter.ParameterName);
                }

                sql.Append(')');
                written.Add(linked);
                head = new AuditHead(linked.Sequence, linked.Hash);
            }

            insert.CommandText = sql.ToString();
            await insert.ExecuteNonQueryAsync(cancellationToken);
        }

        return written;
    }

    // Chains the entries after the head and inserts them with the (reused) command.
    internal static async Task<IReadOnlyList<AuditEvent>> InsertEventsAsync(DbCommand insert, AuditHead head, IReadOnlyList<AuditEntry> entries, CancellationToken cancellationToken)
    {
        var written = new List<AuditEvent>(entries.Count);
        var p = insert.Parameters;
        foreach (var entry in entries)
        {
            var linked = AuditChain.Link(head, entry);
            p[0].Value = linked.Sequence;
            p[1].Value = entry.Time.ToUnixTimeMilliseconds();
            p[2].Value = entry.Principal;
            p[3].Value = (object?)entry.Tenant ?? DBNull.Value;
            p[4].Value = entry.Operation;
            p[5].Value = (object?)entry.Resource ?? DBNull.Value;
            p[6].Value = entry.Outcome;
            p[7].Value = linked.Body;
            p[8].Value = linked.Hash;
            p[9].Value = (object?)KeyVersionsColumn(entry) ?? DBNull.Value;
            await insert.ExecuteNonQueryAsync(cancellationToken);
            written.Add(linked);
            head = new AuditHead(linked.Sequence, linked.Hash);
        }

        return written;
    }

    // The last event's sequence and hash: the head comes from the events. Only where no event is
    // stored (a new log, or one retention cut whole) from the newest checkpoint row, a candidate
    // the store cannot verify on its own (ReadChainableHeadAsync has the audit key's check; AuditLog
    // checks it before it signs over it). Before, a checkpoint row above the last event was the
    // head: a database writer without the HSM inserted one, new events chained from it and the
    // server signed a checkpoint over a head no event has.
    internal static async Task<AuditHead> ReadHeadAsync(DbConnection connection, DbTransaction? transaction, CancellationToken cancellationToken) =>
        (await ReadHeadRowAsync(connection, transaction, cancellationToken)).Head;

    // The head, and whether it came from a checkpoint row (no event stored) rather than an event.
    internal static async Task<(AuditHead Head, bool FromCheckpointRow)> ReadHeadRowAsync(DbConnection connection, DbTransaction? transaction, CancellationToken cancellationToken)
    {
        await using var command = Command(connection, """
            SELECT seq, hash, k FROM (
                SELECT seq, hash, 0 AS k FROM (SELECT seq, hash FROM audit_events ORDER BY seq DESC LIMIT 1) e
                UNION ALL
                SELECT seq, head, 1 AS k FROM (SELECT seq, head FROM audit_checkpoints ORDER BY seq DESC LIMIT 1) c) h
            ORDER BY k LIMIT 1
            """);
        command.Transaction = transaction;
        await using var reader = await command.ExecuteReaderAsync(cancellationToken);
        return await reader.ReadAsync(cancellationToken)
            ? (new AuditHead(reader.GetInt64(0), reader.GetString(1)), Convert.ToInt64(reader.GetValue(2), CultureInfo.InvariantCulture) == 1)
            : (AuditChain.Empty, false);
    }

    /// <inheritdoc />
    public void RequireSignedCheckpointHead(Func<AuditCheckpoint, bool> signedByTheAuditKey)
    {
        ArgumentNullException.ThrowIfNull(signedByTheAuditKey);
        lock (_checkpointHeadLock)
        {
            (_signedCheckpointHead, _verifiedCheckpointHead) = (signedByTheAuditKey, null);
        }
    }

    private readonly Lock _checkpointHeadLock = new();
    private Func<AuditCheckpoint, bool>? _signedCheckpointHead;
    private AuditHead? _verifiedCheckpointHead;

    /// <summary>How many times an append had a checkpoint row checked with the audit key before chaining onto it (tests).</summary>
    internal long CheckpointHeadChecks => Interlocked.Read(ref _checkpointHeadChecks);

    private long _checkpointHeadChecks;

    // The head new events chain onto, in the write transaction of the append (the group commit's,
    // a mutation's own event): an event's, read as ReadHeadAsync reads it, at no extra cost. Where
    // no event is stored and the head comes from the newest checkpoint row, that row must be one
    // the audit key signed as a checkpoint of that head (RequireSignedCheckpointHead; once a head
    // passed, it is remembered and not checked again): else UNAVAILABLE, and the transaction rolls
    // back, the mutation with it. Before, events chained onto whatever row a database writer
    // without the HSM had put there, and only the next checkpoint over them was refused.
    internal async Task<AuditHead> ReadChainableHeadAsync(DbConnection connection, DbTransaction? transaction, CancellationToken cancellationToken)
    {
        var (head, fromCheckpointRow) = await ReadHeadRowAsync(connection, transaction, cancellationToken);
        if (!fromCheckpointRow)
        {
            return head;
        }

        Func<AuditCheckpoint, bool>? signed;
        lock (_checkpointHeadLock)
        {
            if (_verifiedCheckpointHead == head)
            {
                return head;
            }

            signed = _signedCheckpointHead;
        }

        if (signed is null)
        {
            // No audit key known to this store (a tool without the HSM): unverified, as before.
            return head;
        }

        Interlocked.Increment(ref _checkpointHeadChecks);
        var row = await ReadCheckpointAtAsync(connection, transaction, head.Sequence, cancellationToken);
        if (row is null || row.HeadHash != head.Hash || !signed(row))
        {
            throw KmsErrors.AuditHeadNotSigned();
        }

        lock (_checkpointHeadLock)
        {
            if (_signedCheckpointHead == signed)
            {
                _verifiedCheckpointHead = head;
            }
        }

        return head;
    }

    // Whether the audit key signed this row as a checkpoint of its head, by the check
    // RequireSignedCheckpointHead installed; true when none was (a store without the audit key).
    private protected bool CheckpointHeadSigned(AuditCheckpoint row)
    {
        Func<AuditCheckpoint, bool>? signed;
        lock (_checkpointHeadLock)
        {
            signed = _signedCheckpointHead;
        }

        return signed is null || signed(row);
    }

    internal static async Task<AuditCheckpoint?> ReadCheckpointAtAsync(DbConnection connection, DbTransaction? transaction, long sequence, CancellationToken cancellationToken)
    {
        await using var read = Command(connection, "SELECT seq, head, time, key, body, signature FROM audit_checkpoints WHERE seq = @seq", ("@seq", sequence));
        read.Transaction = transaction;
        await using var reader = await read.ExecuteReaderAsync(cancellationToken);
        return await reader.ReadAsync(cancellationToken) ? ReadCheckpoint(reader) : null;
    }

    private static AuditEvent ReadEvent(DbDataReader reader) => AuditChain.Parse(reader.GetString(1), reader.GetString(2));

    private static AuditCheckpoint ReadCheckpoint(DbDataReader reader) => new(
        reader.GetInt64(0), reader.GetString(1), DateTimeOffset.FromUnixTimeMilliseconds(reader.GetInt64(2)), reader.GetString(3), reader.GetString(4), (byte[])reader[5]);
}
