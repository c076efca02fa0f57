using Kms.Core.Ports;
using Npgsql;

namespace Kms.Storage.Postgres;

/// <summary>
/// The leader lease on PostgreSQL: a session-level advisory lock (<see cref="LockKey"/>) held on
/// a dedicated connection. Whoever holds the connection's lock is the leader; when its process
/// dies or its connection breaks, PostgreSQL releases the lock and the next node that asks
/// takes it. Each call checks that the connection is still alive, so a leader that lost it
/// stops leading at its next check.
/// </summary>
/// <remarks>
/// <para>Clock guard: every check also compares this node's clock with the database server's
/// (<see cref="PostgresOptions.MaxClockSkew"/>). A node whose clock is off by more does not hold
/// the lease (it gives it up if it had it), so scheduled work never runs on a wrong clock; the
/// skew is reported (<see cref="LastClockSkew"/>) for logs and health.</para>
/// <para>Standing aside: a node able to lead (its clock agrees, and it does not stand aside)
/// holds a shared advisory lock (<see cref="ReadyKey"/>) on the same connection, leader or not,
/// for as long as it stays so. A node that stands aside (it refuses audit checkpoints) gives the
/// lease up, and does not take it, while another node holds that lock; with none, it leads —
/// the lifecycle work goes on — and keeps the lease until such a node is there. So the lease
/// moves once to the node ready to lead and stays there: no taking it back at every check.</para>
/// <para>A leader cut off from PostgreSQL without its connection being closed (a network partition)
/// keeps the lock until the server notices (TCP keepalive); meanwhile no other node leads —
/// the work waits, it does not run twice.</para>
/// </remarks>
public sealed class PostgresLeaderLease : ILeaderLease, IAsyncDisposable
{
    /// <summary>The advisory lock of the lease (the ASCII of "KMSL").</summary>
    public const long LockKey = 0x4B4D_534C;

    /// <summary>The advisory lock, taken shared, of the nodes ready to lead (the ASCII of "KMSR").</summary>
    public const long ReadyKey = 0x4B4D_5352;

    private readonly NpgsqlDataSource _dataSource;
    private readonly SemaphoreSlim _gate = new(1, 1);
    private readonly TimeProvider _time;
    private readonly TimeSpan _maxSkew;

    // The node's lease session (null: none open), and the locks it holds.
    private NpgsqlConnection? _connection;
    private bool _held;
    private bool _ready;

    /// <summary>A lease over its own unpooled connection to the database of <paramref name="options"/>.</summary>
    public PostgresLeaderLease(PostgresOptions options, TimeProvider time)
    {
        ArgumentNullException.ThrowIfNull(options);
        _time = time ?? throw new ArgumentNullException(nameof(time));
        _maxSkew = options.MaxClockSkew;
        var builder = new NpgsqlConnectionStringBuilder(options.Parse().ConnectionString)
        {
            Pooling = false,
            Timeout = (int)Math.Ceiling(options.CommandTimeout.TotalSeconds),
            CommandTimeout = (int)Math.Ceiling(options.CommandTimeout.TotalSeconds),
            KeepAlive = 10,
        };

        // The lease is a session-level lock: PostgreSQL releases it only when it notices that
        // a leader that froze or lost the network is gone — asked to probe, within about 25 s.
        builder.Options = $"{builder.Options} {PostgresOptions.ServerKeepalives}".Trim();
        _dataSource = NpgsqlDataSource.Create(builder.ConnectionString);
    }

    /// <summary>Whether this node held the lease at its last check.</summary>
    public bool Held => _held;

    /// <summary>Whether this node stood aside at its last check and left the lease to a node ready to lead.</summary>
    public bool LeftToAnotherNode { get; private set; }

    /// <summary>This node's clock minus the database server's at the last check (null before one succeeded).</summary>
    public TimeSpan? LastClockSkew { get; private set; }

    /// <summary>Whether the last check found the clocks too far apart to lead.</summary>
    public bool ClockRefused => LastClockSkew is { } skew && skew.Duration() > _maxSkew;

    /// <inheritdoc />
    public async Task<bool> HoldAsync(bool standAside, CancellationToken cancellationToken)
    {
        await _gate.WaitAsync(cancellationToken);
        try
        {
            // A session that was open may have broken since (PostgreSQL restarted, the leader's
            // connection cut): then once more on a new one.
            var wasOpen = _connection is not null;
            try
            {
                return await CheckAsync(standAside, cancellationToken);
            }
            catch (Exception e) when (e is NpgsqlException or InvalidOperationException or TimeoutException)
            {
                await EndSessionAsync();
                if (!wasOpen)
                {
                    return false; // PostgreSQL unreachable: not the leader until it is back
                }
            }

            try
            {
                return await CheckAsync(standAside, cancellationToken);
            }
            catch (Exception e) when (e is NpgsqlException or InvalidOperationException or TimeoutException)
            {
                await EndSessionAsync();
                return false;
            }
        }
        catch
        {
            // Cancelled (or worse) after a lock may have been taken: closing the session releases it.
            await EndSessionAsync();
            throw;
        }
        finally
        {
            _gate.Release();
        }
    }

    /// <summary>Gives the lease up (closing its connection releases the lock).</summary>
    public async ValueTask DisposeAsync()
    {
        await _gate.WaitAsync();
        try
        {
            await EndSessionAsync();
            await _dataSource.DisposeAsync();
        }
        finally
        {
            _gate.Release();
        }
    }

    private async Task<bool> CheckAsync(bool standAside, CancellationToken cancellationToken)
    {
        var session = _connection ??= await _dataSource.OpenConnectionAsync(cancellationToken);
        if (!await ClockAgreesAsync(session, cancellationToken))
        {
            // Neither the leader nor ready to lead: a node standing aside may lead instead.
            await EndSessionAsync();
            return false;
        }

        if (!standAside && !_ready)
        {
            _ready = await ScalarAsync(session, $"SELECT pg_try_advisory_lock_shared({ReadyKey})", cancellationToken);
        }
        else if (standAside && _ready)
        {
            _ready = false;
            await ScalarAsync(session, $"SELECT pg_advisory_unlock_shared({ReadyKey})", cancellationToken);
        }

        LeftToAnotherNode = standAside && await AnotherNodeReadyAsync(session, cancellationToken);
        if (LeftToAnotherNode)
        {
            if (_held)
            {
                _held = false;
                await ScalarAsync(session, $"SELECT pg_advisory_unlock({LockKey})", cancellationToken);
            }

            return false;
        }

        if (!_held)
        {
            _held = await ScalarAsync(session, $"SELECT pg_try_advisory_lock({LockKey})", cancellationToken);
        }

        return _held;
    }

    // Read from pg_locks, not by trying the lock: an exclusive try would refuse, for its moment,
    // a ready node's shared one.
    private static async Task<bool> AnotherNodeReadyAsync(NpgsqlConnection session, CancellationToken cancellationToken) =>
        await ScalarAsync(session, $"""
            SELECT EXISTS (SELECT 1 FROM pg_locks
                WHERE locktype = 'advisory' AND granted AND mode = 'ShareLock' AND pid <> pg_backend_pid()
                  AND classid = {ReadyKey >> 32} AND objid = {ReadyKey & 0xFFFF_FFFF} AND objsubid = 1
                  AND database = (SELECT oid FROM pg_database WHERE datname = current_database()))
            """, cancellationToken);

    private static async Task<bool> ScalarAsync(NpgsqlConnection session, string sql, CancellationToken cancellationToken)
    {
        await using var command = new NpgsqlCommand(sql, session);
        return await command.ExecuteScalarAsync(cancellationToken) is true;
    }

    // The server's clock read between two local readings: the skew is measured against their
    // midpoint, so the round trip does not count as skew.
    private async Task<bool> ClockAgreesAsync(NpgsqlConnection connection, CancellationToken cancellationToken)
    {
        await using var now = new NpgsqlCommand("SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint", connection);
        var before = _time.GetUtcNow();
        var server = DateTimeOffset.FromUnixTimeMilliseconds((long)(await now.ExecuteScalarAsync(cancellationToken))!);
        var after = _time.GetUtcNow();
        LastClockSkew = before + ((after - before) / 2) - server;
        return !ClockRefused;
    }

    // Closing the session releases every lock it held.
    private async Task EndSessionAsync()
    {
        (_held, _ready, LeftToAnotherNode) = (false, false, false);
        if (_connection is { } connection)
        {
            _connection = null;
            await connection.DisposeAsync();
        }
    }
}
