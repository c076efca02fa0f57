using System.Globalization;
using System.Security.Cryptography;

namespace Kms.Testing;

/// <summary>
/// Scratch paths for data directories, databases and files a test leaves behind: all under one
/// directory per test process, deleted when the process exits (a server's data directory outlives
/// the server object, since tests restart on it). What a process could not delete at its exit (a
/// server still writing, a process killed) is deleted by the next test process that starts.
/// </summary>
public static class Scratch
{
    private const string Prefix = "kms-scratch-";

    private static readonly Lazy<string> Root = new(() =>
    {
        DeleteLeftovers();
        var root = Directory.CreateDirectory(Path.Combine(Path.GetTempPath(), $"{Prefix}{Environment.ProcessId}-{Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(4))}")).FullName;
        AppDomain.CurrentDomain.ProcessExit += (_, _) => DeleteBestEffort(root);
        return root;
    });

    /// <summary>A new path (nothing created there) named <paramref name="prefix"/> + random hex + <paramref name="suffix"/>.</summary>
    public static string NewPath(string prefix, string suffix = "") =>
        Path.Combine(Root.Value, prefix + Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(6)) + suffix);

    // Scratch directories of test processes that no longer run.
    private static void DeleteLeftovers()
    {
        foreach (var directory in Directory.EnumerateDirectories(Path.GetTempPath(), Prefix + "*"))
        {
            var name = Path.GetFileName(directory)[Prefix.Length..];
            var dash = name.IndexOf('-', StringComparison.Ordinal);
            if (dash > 0 && int.TryParse(name[..dash], NumberStyles.None, CultureInfo.InvariantCulture, out var pid) && !Directory.Exists($"/proc/{pid}"))
            {
                DeleteBestEffort(directory);
            }
        }
    }

    // Entry by entry, so one that cannot go (a file still being written) leaves the rest deleted.
    private static void DeleteBestEffort(string root)
    {
        try
        {
            foreach (var entry in Directory.EnumerateFileSystemEntries(root))
            {
                try
                {
                    if (Directory.Exists(entry))
                    {
                        Directory.Delete(entry, recursive: true);
                    }
                    else
                    {
                        File.Delete(entry);
                    }
                }
                catch (Exception e) when (e is IOException or UnauthorizedAccessException)
                {
                    // Left for the next test process to delete.
                }
            }

            Directory.Delete(root, recursive: true);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            // Best effort; the directory is under /tmp.
        }
    }
}
