namespace Kms.Storage.Sqlite;

/// <summary>Where the embedded database lives. Bound from the <c>Storage:Sqlite</c> section.</summary>
public sealed class SqliteOptions
{
    /// <summary>Path of the database file; its directory is created if missing.</summary>
    public string DatabasePath { get; set; } = "kms.db";

    /// <summary>How long a writer waits for the database lock before answering UNAVAILABLE.</summary>
    public TimeSpan BusyTimeout { get; set; } = TimeSpan.FromSeconds(5);
}
