using System.Security.Cryptography;
using Npgsql;

namespace Kms.Testing;

/// <summary>
/// A fresh, empty database (or schema) on the test run's throw-away PostgreSQL cluster (./test.sh starts
/// it and sets <c>KMS_TEST_POSTGRES</c>), dropped on dispose. Without the variable it throws:
/// a test that needs PostgreSQL fails loudly, it never skips.
/// </summary>
public sealed class PostgresTestDatabase : IAsyncDisposable
{
    /// <summary>The environment variable with the cluster's connection string (its maintenance database).</summary>
    public const string Variable = "KMS_TEST_POSTGRES";

    // One database per test process for the schema-per-test stores (CREATE DATABASE costs seconds, CREATE SCHEMA milliseconds).
    private static readonly Lazy<Task<string>> SharedDatabase = new(async () =>
    {
        var name = "kms_s_" + Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(6));
        await ExecuteAsync(ClusterConnectionString, $"CREATE DATABASE {name}");
        return new NpgsqlConnectionStringBuilder(ClusterConnectionString) { Database = name }.ConnectionString;
    });

    private readonly string _dropConnection;
    private readonly string _drop;

    private PostgresTestDatabase(string dropConnection, string drop, string name, string connectionString)
    {
        _dropConnection = dropConnection;
        _drop = drop;
        Name = name;
        ConnectionString = connectionString;
    }

    /// <summary>The database's name.</summary>
    public string Name { get; }

    /// <summary>A connection string for the new database.</summary>
    public string ConnectionString { get; }

    /// <summary>The cluster's maintenance connection string, from <see cref="Variable"/>.</summary>
    public static string ClusterConnectionString =>
        Environment.GetEnvironmentVariable(Variable) is { Length: > 0 } value
            ? value
            : throw new InvalidOperationException(
                $"{Variable} is not set: these tests need PostgreSQL. Run ./test.sh, which installs PostgreSQL and starts a throw-away cluster "
                + "(or start one with tests/postgres/cluster.sh and export what it prints).");

    /// <summary>Creates the database (its own advisory locks, pg_dump-able on its own).</summary>
    public static async Task<PostgresTestDatabase> CreateAsync()
    {
        var admin = ClusterConnectionString;
        var name = "kms_t_" + Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(6));
        await ExecuteAsync(admin, $"CREATE DATABASE {name}");
        return new PostgresTestDatabase(admin, $"DROP DATABASE IF EXISTS {name} WITH (FORCE)", name,
            new NpgsqlConnectionStringBuilder(admin) { Database = name }.ConnectionString);
    }

    /// <summary>
    /// A fresh schema in a database shared by this test process, as the search path of
    /// <see cref="ConnectionString"/>: cheap, for one store's tests. Schemas share the database's
    /// advisory locks, so tests of leases or of several nodes use <see cref="CreateAsync"/>.
    /// </summary>
    public static async Task<PostgresTestDatabase> CreateSchemaAsync()
    {
        var database = await SharedDatabase.Value;
        var name = "kms_t_" + Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(6));
        await ExecuteAsync(database, $"CREATE SCHEMA {name}");
        return new PostgresTestDatabase(database, $"DROP SCHEMA IF EXISTS {name} CASCADE", name,
            new NpgsqlConnectionStringBuilder(database) { SearchPath = name }.ConnectionString);
    }

    /// <summary>Runs one statement on the cluster's maintenance database.</summary>
    public static async Task ExecuteAsync(string connectionString, string sql)
    {
        await using var connection = new NpgsqlConnection(new NpgsqlConnectionStringBuilder(connectionString) { Pooling = false }.ConnectionString);
        await connection.OpenAsync();
        await using var command = new NpgsqlCommand(sql, connection);
        await command.ExecuteNonQueryAsync();
    }

    /// <summary>Runs one query on this database and returns its first column of the first row.</summary>
    public async Task<object?> ScalarAsync(string sql)
    {
        await using var connection = new NpgsqlConnection(new NpgsqlConnectionStringBuilder(ConnectionString) { Pooling = false }.ConnectionString);
        await connection.OpenAsync();
        await using var command = new NpgsqlCommand(sql, connection);
        return await command.ExecuteScalarAsync();
    }

    /// <summary>Drops the database or schema (closing what still uses it).</summary>
    public async ValueTask DisposeAsync()
    {
        NpgsqlConnection.ClearAllPools();
        await ExecuteAsync(_dropConnection, _drop);
    }
}
