namespace Kms.Testing;

/// <summary>What a SQLite database's files hold on disk, read while the database is open.</summary>
public static class DatabaseFiles
{
    /// <summary>Whether <paramref name="needle"/> occurs in the database file or its write-ahead log.</summary>
    public static bool Contain(string databasePath, byte[] needle) =>
        new[] { databasePath, databasePath + "-wal" }
            .Where(File.Exists)
            .Any(path => ReadShared(path).AsSpan().IndexOf(needle) >= 0);

    /// <summary>A file's bytes, read beside whoever has it open (SQLite, a log sink).</summary>
    public static byte[] ReadShared(string path)
    {
        using var stream = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.ReadWrite | FileShare.Delete);
        using var copy = new MemoryStream();
        stream.CopyTo(copy);
        return copy.ToArray();
    }
}
