using System.Diagnostics;
using Microsoft.Data.Sqlite;

namespace Kms.Testing;

/// <summary>
/// A real full or read-only file system for the database fault tests: a small tmpfs, mounted
/// with <c>mount(8)</c>. The tests run as root, as ./test.sh does in CI; where mounting is not
/// permitted they fail loudly, naming why.
/// </summary>
public static class Tmpfs
{
    /// <summary>Mounts a tmpfs of <paramref name="size"/> (e.g. "16m") on <paramref name="directory"/>, which must exist.</summary>
    public static void Mount(string directory, string size) =>
        Run("mount", "-t", "tmpfs", "-o", $"size={size},mode=0700", "tmpfs", directory);

    /// <summary>Unmounts, after closing the connections SQLite opened through the mount (retried while it is busy).</summary>
    public static void Unmount(string directory)
    {
        for (var attempt = 1; ; attempt++)
        {
            SqliteConnection.ClearAllPools();
            try
            {
                Run("umount", directory);
                return;
            }
            catch (InvalidOperationException) when (attempt < 20)
            {
                Thread.Sleep(100);
            }
        }
    }

    /// <summary>Writes <paramref name="path"/> until the file system has no block left.</summary>
    public static void Fill(string path)
    {
        var block = new byte[64 * 1024];
        using var stream = new FileStream(path, FileMode.CreateNew, FileAccess.Write, FileShare.None, 0);
        try
        {
            while (true)
            {
                stream.Write(block);
            }
        }
        catch (IOException)
        {
            // ENOSPC: full. Smaller writes take what is left of the last block.
            try
            {
                while (true)
                {
                    stream.Write(block.AsSpan(0, 512));
                }
            }
            catch (IOException)
            {
            }
        }
    }

    /// <summary>Runs a mount tool; a non-zero exit throws <see cref="InvalidOperationException"/> with its error output.</summary>
    public static void Run(string tool, params string[] arguments)
    {
        var start = new ProcessStartInfo(tool) { RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (var argument in arguments)
        {
            start.ArgumentList.Add(argument);
        }

        using var process = Process.Start(start) ?? throw new InvalidOperationException($"cannot start {tool}");
        var error = process.StandardError.ReadToEndAsync();
        process.StandardOutput.ReadToEnd();
        process.WaitForExit();
        if (process.ExitCode != 0)
        {
            throw new InvalidOperationException(
                $"{tool} {string.Join(' ', arguments)} failed ({process.ExitCode}): {error.Result} — these tests mount a tmpfs and need root (CAP_SYS_ADMIN), as ./test.sh runs in CI");
        }
    }
}
