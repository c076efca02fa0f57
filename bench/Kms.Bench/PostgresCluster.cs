using System.Diagnostics;
using System.Runtime.InteropServices;
using System.Security.Cryptography;
using System.Text.RegularExpressions;
using Npgsql;

namespace Kms.Bench;

/// <summary>
/// A PostgreSQL cluster for one benchmark run: the one named by <c>KMS_TEST_POSTGRES</c> if set
/// (left running), otherwise a throw-away cluster on loopback from tests/postgres/cluster.sh,
/// stopped and deleted on dispose — or on SIGINT/SIGTERM, which end the run. Each
/// database it creates in a cluster it did not start is dropped on dispose.
/// </summary>
internal sealed partial class PostgresCluster : IAsyncDisposable
{
    private readonly string _maintenance;
    private readonly string? _ownedDirectory;
    private readonly List<string> _databases = [];

    private readonly List<PosixSignalRegistration> _signals = [];
    private int _stopped;

    private PostgresCluster(string maintenance, string? ownedDirectory)
    {
        _maintenance = maintenance;
        _ownedDirectory = ownedDirectory;
        if (ownedDirectory is not null)
        {
            // A run cut short must not leave a postgres behind. Each running node's host takes
            // SIGINT/SIGTERM to stop only itself (and cancels the exit), and the loop would go on
            // with the next setup: here a signal stops the cluster and ends the run.
            foreach (var signal in new[] { PosixSignal.SIGINT, PosixSignal.SIGTERM })
            {
                _signals.Add(PosixSignalRegistration.Create(signal, context =>
                {
                    StopOwned();
                    Environment.Exit(128 + (context.Signal == PosixSignal.SIGINT ? 2 : 15));
                }));
            }

            AppDomain.CurrentDomain.ProcessExit += (_, _) => StopOwned();
        }
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
        foreach (var signal in _signals)
        {
            signal.Dispose();
        }

        if (_ownedDirectory is not null)
        {
            if (Interlocked.Exchange(ref _stopped, 1) == 0)
            {
                await RunScriptAsync("stop", _ownedDirectory);
            }

            return;
        }

        foreach (var name in _databases)
        {
            await ExecuteAsync($"DROP DATABASE IF EXISTS {name} WITH (FORCE)");
        }
    }

    private void StopOwned()
    {
        if (Interlocked.Exchange(ref _stopped, 1) == 0)
        {
            RunScriptAsync("stop", _ownedDirectory!).GetAwaiter().GetResult();
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
