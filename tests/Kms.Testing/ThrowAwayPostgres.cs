using System.Diagnostics;
using Npgsql;

namespace Kms.Testing;

/// <summary>A PostgreSQL cluster of a test's own (tests/postgres/cluster.sh), which it may crash or reconfigure.</summary>
public sealed class ThrowAwayPostgres : IAsyncDisposable
{
    private readonly string _directory;

    private ThrowAwayPostgres(string connectionString, string directory)
    {
        ConnectionString = connectionString;
        _directory = directory;
        Port = new NpgsqlConnectionStringBuilder(connectionString).Port.ToString(System.Globalization.CultureInfo.InvariantCulture);
    }

    /// <summary>The cluster's superuser connection string.</summary>
    public string ConnectionString { get; }

    /// <summary>Its TCP port on 127.0.0.1.</summary>
    public string Port { get; }

    /// <summary>Creates and starts a new cluster.</summary>
    public static Task<ThrowAwayPostgres> StartAsync()
    {
        var exports = Script("start");
        string Value(string name) => exports.Split('\n').Select(l => l.Trim()).Single(l => l.StartsWith($"export {name}=", StringComparison.Ordinal))
            .Split('=', 2)[1].Trim('\'');
        return Task.FromResult(new ThrowAwayPostgres(Value("KMS_TEST_POSTGRES"), Value("KMS_TEST_POSTGRES_DIR")));
    }

    /// <summary>Stops it at once (a crash).</summary>
    public void Halt() => Script("halt", _directory);

    /// <summary>Starts it again, on the same port.</summary>
    public void Resume() => Script("resume", _directory);

    /// <summary>Stops it and deletes its files.</summary>
    public ValueTask DisposeAsync()
    {
        NpgsqlConnection.ClearAllPools();
        Script("stop", _directory);
        return ValueTask.CompletedTask;
    }

    private static string Script(params string[] arguments)
    {
        var start = new ProcessStartInfo(RepositoryPaths.Of("tests", "postgres", "cluster.sh")) { RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (var argument in arguments)
        {
            start.ArgumentList.Add(argument);
        }

        using var process = Process.Start(start) ?? throw new InvalidOperationException("cannot run tests/postgres/cluster.sh");
        var error = process.StandardError.ReadToEndAsync();
        var output = process.StandardOutput.ReadToEnd();
        process.WaitForExit();
        return process.ExitCode == 0
            ? output
            : throw new InvalidOperationException($"tests/postgres/cluster.sh {arguments[0]} failed ({process.ExitCode}): {error.Result} (PostgreSQL is required: apt-get install postgresql)");
    }
}
