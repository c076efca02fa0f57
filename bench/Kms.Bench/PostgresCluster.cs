using System.Diagnostics;
using System.Security.Cryptography;
using System.Text.RegularExpressions;
using Npgsql;

namespace Kms.Bench;

/// <summary>
/// A PostgreSQL cluster for one benchmark run: the one named by <c>KMS_TEST_POSTGRES</c> if set
/// (left running), otherwise a throw-away cluster on loopback from tests/postgres/cluster.sh,
/// stopped and deleted on dispose. Each database it creates is dropped on dispose.
/// </summary>
internal sealed partial class PostgresCluster : IAsyncDisposable
{
    private readonly string _maintenance;
    private readonly string? _ownedDirectory;
    private readonly List<string> _databases = [];

    private PostgresCluster(string maintenance, string? ownedDirectory)
    {
        _maintenance = maintenance;
        _ownedDirectory = ownedDirectory;
    }

    /// <summary>Where the cluster came from, for the report.</summary>
    public string Origin => _ownedDirectory is null ? "KMS_TEST_POSTGRES" : "tests/postgres/cluster.sh (throw-away)";

    public static async Task<PostgresCluster> StartAsync()
    {
        if (Environment.GetEnvironmentVariable("KMS_TEST_POSTGRES") is { Length: > 0 } existing)
        {
            return new PostgresCluster(existing, null);
        }

        var output = await RunScriptAsync("start");
        var exports = Export().Matches(output).ToDictionary(m => m.Groups[1].Value, m => m.Groups[2].Value);
        var connection = exports.GetValueOrDefault("KMS_TEST_POSTGRES");
        var directory = exports.GetValueOrDefault("KMS_TEST_POSTGRES_DIR");
        if (connection is null || directory is null)
        {
            if (directory is not null)
            {
                await RunScriptAsync("stop", directory);
            }

            throw new InvalidOperationException($"tests/postgres/cluster.sh start printed no connection string:\n{output}");
        }

        return new PostgresCluster(connection, directory);
    }

    /// <summary>Creates an empty database and returns its connection string.</summary>
    public async Task<string> CreateDatabaseAsync()
    {
        var name = "kms_bench_" + Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(4));
        await ExecuteAsync($"CREATE DATABASE {name}");
        _databases.Add(name);
        return new NpgsqlConnectionStringBuilder(_maintenance) { Database = name }.ConnectionString;
    }

    public async ValueTask DisposeAsync()
    {
        NpgsqlConnection.ClearAllPools();
        if (_ownedDirectory is not null)
        {
            await RunScriptAsync("stop", _ownedDirectory);
            return;
        }

        foreach (var name in _databases)
        {
            await ExecuteAsync($"DROP DATABASE IF EXISTS {name} WITH (FORCE)");
        }
    }

    private async Task ExecuteAsync(string sql)
    {
        await using var connection = new NpgsqlConnection(new NpgsqlConnectionStringBuilder(_maintenance) { Pooling = false }.ConnectionString);
        await connection.OpenAsync();
        await using var command = new NpgsqlCommand(sql, connection);
        await command.ExecuteNonQueryAsync();
    }

    private static async Task<string> RunScriptAsync(params string[] arguments)
    {
        var start = new ProcessStartInfo("bash") { RedirectStandardOutput = true, RedirectStandardError = true };
        start.ArgumentList.Add(Path.Combine(BenchEnvironment.RepositoryRoot, "tests", "postgres", "cluster.sh"));
        foreach (var argument in arguments)
        {
            start.ArgumentList.Add(argument);
        }

        using var process = Process.Start(start) ?? throw new InvalidOperationException("bash did not start");
        var output = process.StandardOutput.ReadToEndAsync();
        var error = process.StandardError.ReadToEndAsync();
        await process.WaitForExitAsync();
        if (process.ExitCode != 0)
        {
            throw new InvalidOperationException($"tests/postgres/cluster.sh {string.Join(' ', arguments)} failed ({process.ExitCode}): {await error}{await output}");
        }

        return await output;
    }

    [GeneratedRegex("^export (\\w+)='([^']*)'$", RegexOptions.Multiline)]
    private static partial Regex Export();
}
