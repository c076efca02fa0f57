using Microsoft.Data.Sqlite;

namespace Kms.Testing;

/// <summary>
/// SQL run on a SQLite database file directly, beside whatever has it open (no pooling, so
/// nothing of the test's stays open after the call): what a test does to the database behind
/// the server's or the tool's back.
/// </summary>
public static class RawSqlite
{
    /// <summary>Runs <paramref name="sql"/> (statements, no result) with these parameters; the number of rows it changed.</summary>
    public static int Execute(string databasePath, string sql, params (string Name, object Value)[] parameters)
    {
        using var connection = Open(databasePath);
        using var command = Command(connection, sql, parameters);
        return command.ExecuteNonQuery();
    }

    /// <summary>The first column of the first row <paramref name="sql"/> returns, as invariant text ("" for none or NULL).</summary>
    public static string Scalar(string databasePath, string sql, params (string Name, object Value)[] parameters)
    {
        using var connection = Open(databasePath);
        using var command = Command(connection, sql, parameters);
        return Convert.ToString(command.ExecuteScalar(), System.Globalization.CultureInfo.InvariantCulture) ?? "";
    }

    private static SqliteConnection Open(string databasePath)
    {
        var connection = new SqliteConnection($"Data Source={databasePath};Pooling=False");
        connection.Open();
        return connection;
    }

    private static SqliteCommand Command(SqliteConnection connection, string sql, (string Name, object Value)[] parameters)
    {
        var command = connection.CreateCommand();
        command.CommandText = sql;
        foreach (var (name, value) in parameters)
        {
            command.Parameters.AddWithValue(name, value);
        }

        return command;
    }
}
