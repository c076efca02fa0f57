using System.CommandLine;
using Kms.Cli.Infrastructure;
using Kms.Storage;
using Kms.Storage.Postgres;
using Kms.Storage.Sqlite;
using Npgsql;

namespace Kms.Cli.Ceremony;

/// <summary>
/// Which database a ceremony records into: the data directory's SQLite file (the default), or
/// the deployment's PostgreSQL database — the server's <c>Storage:Provider</c> and
/// <c>Storage:Postgres:ConnectionStringFile</c>, as <c>--storage-provider</c> and
/// <c>--postgres-connection-file</c>.
/// </summary>
/// <remarks>
/// The connection string is a secret (it may hold the password): it is read from a file or a
/// file descriptor, never from argv, and only its host, port and database are ever printed.
/// </remarks>
internal sealed class DeploymentDatabase
{
    public const string Sqlite = "sqlite";
    public const string Postgres = "postgres";

    public Option<string> Provider { get; } = CreateProvider();

    public SecretOption Connection { get; } = new("postgres-connection", "the deployment's PostgreSQL connection string (Npgsql syntax, as the server's Storage:Postgres:ConnectionStringFile)");

    public void AddTo(Command command)
    {
        command.Options.Add(Provider);
        Connection.AddTo(command);
    }

    /// <summary>The database these flags select for <paramref name="dataDir"/>; the connection string is read here, once.</summary>
    public DeploymentDatabaseTarget Resolve(CliContext ctx, string? dataDir)
    {
        var parse = ctx.ParseResult;
        var provider = parse.GetValue(Provider)!;
        var givesConnection = parse.GetValue(Connection.File) is not null || parse.GetValue(Connection.Fd) is not null;
        if (provider == Sqlite)
        {
            return givesConnection
                ? throw new CliUsageException("--postgres-connection-file/-fd needs --storage-provider postgres")
                : dataDir is null ? new DeploymentDatabaseTarget(null, null) : DeploymentDatabaseTarget.SqliteIn(dataDir);
        }

        if (!givesConnection)
        {
            throw new CliUsageException("--storage-provider postgres needs the connection string: --postgres-connection-file FILE or --postgres-connection-fd N");
        }

        using var secret = SecretInput.Read(ctx, Connection, "PostgreSQL connection string");
        return new DeploymentDatabaseTarget(null, new PostgresOptions { ConnectionString = secret.Reveal().Trim(), MaxPoolSize = 4 });
    }

    /// <summary>The refusal of a command that works on the SQLite file itself (snapshot, restore).</summary>
    public static void RefusePostgres(CliContext ctx, Option<string> provider, string what)
    {
        if (ctx.ParseResult.GetValue(provider) == Postgres)
        {
            throw new CliUsageException(
                $"{what} works on the SQLite file {{data-dir}}/kms.db only; a PostgreSQL deployment database is backed up and restored with PostgreSQL's tools "
                + "(pg_dump -Fc, then pg_restore into a new database) plus the custodian shares (docs/deployment.md, \"Disaster recovery\")");
        }
    }

    private static Option<string> CreateProvider()
    {
        var option = new Option<string>("--storage-provider")
        {
            Description = "the deployment's database, as the server's Storage:Provider: sqlite ({data-dir}/kms.db) or postgres (--postgres-connection-file)",
            HelpName = "sqlite|postgres",
            DefaultValueFactory = _ => Sqlite,
        };
        option.AcceptOnlyFromAmong(Sqlite, Postgres);
        return option;
    }
}

/// <summary>A resolved deployment database: a SQLite file path, or PostgreSQL options (exactly one).</summary>
internal sealed class DeploymentDatabaseTarget(string? sqlitePath, PostgresOptions? postgres)
{
    /// <summary>The SQLite database of a data directory, <c>{dataDir}/kms.db</c>.</summary>
    public static DeploymentDatabaseTarget SqliteIn(string dataDir) => new(Path.Combine(Path.GetFullPath(dataDir), "kms.db"), null);

    /// <summary>The SQLite file, or null for PostgreSQL.</summary>
    public string? SqlitePath => sqlitePath;

    /// <summary>Whether it is the deployment's PostgreSQL database.</summary>
    public bool IsPostgres => postgres is not null;

    /// <summary>Where it is, without any credential: the SQLite path, or PostgreSQL host:port/database.</summary>
    public string Describe()
    {
        if (postgres is null)
        {
            return sqlitePath ?? "none";
        }

        try
        {
            var builder = new NpgsqlConnectionStringBuilder(postgres.ConnectionString);
            return $"postgres {builder.Host}:{builder.Port}/{builder.Database}";
        }
        catch (ArgumentException)
        {
            return "postgres (unparsable connection string)";
        }
    }

    /// <summary>
    /// Opens the database, creating (SQLite) or migrating it on first use. A PostgreSQL database
    /// must exist: the ceremony never creates databases or roles.
    /// </summary>
    public async Task<SqlStore> OpenAsync(CancellationToken ct)
    {
        if (postgres is null)
        {
            var path = sqlitePath ?? throw new CliUsageException("this command needs --data-dir (the SQLite database is {data-dir}/kms.db) or --storage-provider postgres");
            return await SqliteStore.OpenAsync(new SqliteOptions { DatabasePath = path }, ct);
        }

        try
        {
            return await PostgresStore.OpenAsync(postgres, ct);
        }
        catch (Exception e) when (e is NpgsqlException or ArgumentException or Kms.Core.Errors.KmsException)
        {
            // Npgsql's messages name host and database, never the password; a connection string
            // it cannot parse is a usage error.
            throw e is ArgumentException
                ? new CliUsageException($"the PostgreSQL connection string is not valid: {e.Message}")
                : new CliFailureException(ExitCodes.Unavailable, $"cannot open the deployment database ({Describe()}): {e.Message}");
        }
    }

    /// <summary>Opens the database if it exists (SQLite: the file is there; PostgreSQL: always), else null.</summary>
    public async Task<SqlStore?> OpenExistingAsync(CancellationToken ct) =>
        postgres is null && (sqlitePath is null || !File.Exists(sqlitePath)) ? null : await OpenAsync(ct);
}
