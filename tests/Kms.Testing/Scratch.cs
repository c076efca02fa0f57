using System.Security.Cryptography;

namespace Kms.Testing;

/// <summary>
/// Scratch paths for data directories, databases and files a test leaves behind: all under one
/// directory per test process, deleted when the process exits (a server's data directory outlives
/// the server object, since tests restart on it).
/// </summary>
public static class Scratch
{
    private static readonly Lazy<string> Root = new(() =>
    {
        var root = Directory.CreateDirectory(Path.Combine(Path.GetTempPath(), $"kms-scratch-{Environment.ProcessId}-{Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(4))}")).FullName;
        AppDomain.CurrentDomain.ProcessExit += (_, _) =>
        {
            try
            {
                Directory.Delete(root, recursive: true);
            }
            catch (IOException)
            {
                // Best effort; the directory is under /tmp.
            }
        };
        return root;
    });

    /// <summary>A new path (nothing created there) named <paramref name="prefix"/> + random hex + <paramref name="suffix"/>.</summary>
    public static string NewPath(string prefix, string suffix = "") =>
        Path.Combine(Root.Value, prefix + Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(6)) + suffix);
}
