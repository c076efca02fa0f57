namespace Kms.Storage.Postgres;

/// <summary>Configuration section <c>Storage:Postgres</c>.</summary>
public sealed class PostgresOptions
{
    /// <summary>An Npgsql connection string (host, port, database, username; a password belongs in a file or secret store, not here).</summary>
    public string ConnectionString { get; set; } = "";

    /// <summary>The most pooled connections this node opens.</summary>
    public int MaxPoolSize { get; set; } = 50;

    /// <summary>How long a statement may run, and how long a connection may take to open.</summary>
    public TimeSpan CommandTimeout { get; set; } = TimeSpan.FromSeconds(15);

    /// <summary>
    /// How far this node's clock may be from the database server's before the node stops taking
    /// part in scheduled work (rotation, destruction, retention run only on a leader whose clock
    /// agrees with PostgreSQL's). Schedules are stored as absolute times, so a node minutes ahead
    /// would otherwise destroy or rotate minutes early.
    /// </summary>
    public TimeSpan MaxClockSkew { get; set; } = TimeSpan.FromSeconds(5);

    /// <summary>
    /// How long PostgreSQL lets this node's session sit idle inside a transaction before ending
    /// it (<c>idle_in_transaction_session_timeout</c>). Every write holds the deployment-wide
    /// write lock for its transaction: a node that froze or lost the network half-way through one
    /// would otherwise hold it — and stop every node's writes — until PostgreSQL noticed the dead
    /// connection, two hours later with its defaults. Its own write then fails, uncommitted.
    /// </summary>
    public TimeSpan IdleInTransactionTimeout { get; set; } = TimeSpan.FromSeconds(10);

    /// <summary>
    /// How long a starting node waits for its <c>Kms:NodeName</c> while another session holds it
    /// before it refuses to start: a node that vanished without closing its connection (a host that
    /// lost power) keeps its name until PostgreSQL notices, about 25 s (<see cref="ServerKeepalives"/>);
    /// a node that stopped or was killed lets it go at once. 0 to 5 minutes.
    /// </summary>
    public TimeSpan NodeNameWait { get; set; } = TimeSpan.FromSeconds(30);

    /// <summary>The longest <see cref="NodeNameWait"/> a node starts with.</summary>
    public static readonly TimeSpan MaxNodeNameWait = TimeSpan.FromMinutes(5);

    /// <summary>
    /// The server-side TCP keepalive settings the store's connections and the leader lease ask
    /// for: a node that vanished is noticed after about 10 + 3 × 5 = 25 s, and its transaction
    /// and lease released; PostgreSQL's defaults take over two hours. Not the serving lock, which
    /// nothing checks again once taken (<see cref="PostgresStore"/>).
    /// </summary>
    internal const string ServerKeepalives = "-c tcp_keepalives_idle=10 -c tcp_keepalives_interval=5 -c tcp_keepalives_count=3";

    /// <summary>
    /// Parses <see cref="ConnectionString"/>. A string Npgsql cannot parse is refused without
    /// Npgsql's message, which quotes the offending part — possibly a piece of the password.
    /// </summary>
    /// <exception cref="ArgumentException">The connection string is not valid.</exception>
    public Npgsql.NpgsqlConnectionStringBuilder Parse()
    {
        try
        {
            return new Npgsql.NpgsqlConnectionStringBuilder(ConnectionString);
        }
        catch (ArgumentException)
        {
            throw new ArgumentException("the PostgreSQL connection string is not valid (it is not shown: it may hold a password)", nameof(ConnectionString));
        }
    }
}
