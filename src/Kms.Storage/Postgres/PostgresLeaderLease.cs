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
/// <para>A leader cut off from PostgreSQL without its connection being closed (a network partition)
/// keeps the lock until the server notices (TCP keepalive); meanwhile no other node leads —
/// the work waits, it does not run twice.</para>
/// </remarks>
public sealed class PostgresLeaderLease : ILeaderLease, IAsyncDisposable
{
    /// <summary>The advisory lock of the lease (the ASCII of "KMSL").</summary>
    public const long LockKey = 0x4B4D_534C;

    private readonly NpgsqlDataSource _dataSource;
    private readonly SemaphoreSlim _gate = new(1, 1);
    private readonly TimeProvider _time;
    private readonly TimeSpan _maxSkew;
    private NpgsqlConnection? _connection;

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
    public bool Held => _connection is not null;

    /// <summary>This node's clock minus the database server's at the last check (null before one succeeded).</summary>
    public TimeSpan? LastClockSkew { get; private set; }

    /// <summary>Whether the last check found the clocks too far apart to lead.</summary>
    public bool ClockRefused => LastClockSkew is { } skew && skew.Duration() > _maxSkew;

    /// <inheritdoc />
    public async Task<bool> HoldAsync(CancellationToken cancellationToken)
    {
        await _gate.WaitAsync(cancellationToken);
        try
        {
            if (_connection is { } held)
            {
                try
                {
                    if (await ClockAgreesAsync(held, cancellationToken))
                    {
                        return true;
                    }

                    await ReleaseAsync();
                    return false;
                }
                catch (Exception e) when (e is NpgsqlException or InvalidOperationException or TimeoutException)
                {
                    await ReleaseAsync();
                }
            }

            NpgsqlConnection? connection = null;
            try
            {
                connection = await _dataSource.OpenConnectionAsync(cancellationToken);
                if (!await ClockAgreesAsync(connection, cancellationToken))
                {
                    await connection.DisposeAsync();
                    return false;
                }

                await using var take = new NpgsqlCommand($"SELECT pg_try_advisory_lock({LockKey})", connection);
                if (await take.ExecuteScalarAsync(cancellationToken) is true)
                {
                    _connection = connection;
                    return true;
                }
            }
            catch (Exception e) when (e is NpgsqlException or TimeoutException)
            {
                // PostgreSQL unreachable: not the leader until it is back.
            }
            catch
            {
                // Cancelled (or worse) after the lock may have been taken: closing the session releases it.
                if (connection is not null)
                {
                    await connection.DisposeAsync();
                }

                throw;
            }

            if (connection is not null)
            {
                await connection.DisposeAsync();
            }

            return false;
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
            await ReleaseAsync();
            await _dataSource.DisposeAsync();
        }
        finally
        {
            _gate.Release();
        }
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

    private async Task ReleaseAsync()
    {
        if (_connection is { } connection)
        {
            _connection = null;
            await connection.DisposeAsync();
        }
    }
}
