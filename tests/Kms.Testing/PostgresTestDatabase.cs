using System.Security.Cryptography;
using Npgsql;

namespace Kms.Testing;

/// <summary>
/// A fresh, empty database on the test run's throw-away PostgreSQL cluster (./test.sh starts
/// it and sets <c>KMS_TEST_POSTGRES</c>), dropped on dispose. Without the variable it throws:
/// a test that needs PostgreSQL fails loudly, it never skips.
/// </summary>
public sealed class PostgresTestDatabase : IAsyncDisposable
{
    /// <summary>The environment variable with the cluster's connection string (its maintenance database).</summary>
    public const string Variable = "KMS_TEST_POSTGRES";

    private readonly string _admin;

    private PostgresTestDatabase(string admin, string name)
    {
        _admin = admin;
        Name = name;
        ConnectionString = new NpgsqlConnectionStringBuilder(admin) { Database = name }.ConnectionString;
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

    /// <summary>Creates the database.</summary>
    public static async Task<PostgresTestDatabase> CreateAsync()
    {
        var admin = ClusterConnectionString;
        var name = "kms_t_" + Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(6));
        await ExecuteAsync(admin, $"CREATE DATABASE {name}");
        return new PostgresTestDatabase(admin, name);
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

    /// <summary>Drops the database (closing what still uses it).</summary>
    public async ValueTask DisposeAsync()
    {
        NpgsqlConnection.ClearAllPools();
        await ExecuteAsync(_admin, $"DROP DATABASE IF EXISTS {Name} WITH (FORCE)");
    }
}
