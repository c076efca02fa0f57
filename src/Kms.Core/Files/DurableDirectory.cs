using System.Security.Cryptography;

namespace Kms.Core.Files;

/// <summary>
/// A new directory of files that belong together (a downloaded backup: manifest, signature,
/// snapshot), filled under a temporary name beside its final one and renamed into place whole
/// by <see cref="Commit"/>: a failed or interrupted fill leaves nothing under the final name.
/// Disposing without a commit deletes the temporary directory and what it holds.
/// </summary>
/// <remarks>
/// Write the files into <see cref="Staging"/> with <see cref="DurableFile"/>, which syncs each
/// one and the staging directory; the commit then renames the directory and syncs its parent.
/// </remarks>
public sealed class DurableDirectory : IDisposable
{
    private bool _committed;

    private DurableDirectory(string path, string staging)
    {
        Path = path;
        Staging = staging;
    }

    /// <summary>The final path (full).</summary>
    public string Path { get; }

    /// <summary>Where to write the files: the temporary directory (<c>.NAME.RANDOM.partial</c> beside <see cref="Path"/>).</summary>
    public string Staging { get; }

    /// <summary>Creates the temporary directory for <paramref name="path"/>, which must not exist, with <paramref name="mode"/> (and the missing parents, see <see cref="DurableFile.CreateDirectory(string)"/>).</summary>
    /// <exception cref="IOException"><paramref name="path"/> exists, or a directory cannot be created.</exception>
    public static DurableDirectory Create(string path, UnixFileMode mode)
    {
        ArgumentException.ThrowIfNullOrEmpty(path);
        var full = System.IO.Path.GetFullPath(path).TrimEnd(System.IO.Path.DirectorySeparatorChar);
        if (Directory.Exists(full) || File.Exists(full))
        {
            throw new IOException($"{full} exists already");
        }

        var parent = DurableFile.CreateDirectory(System.IO.Path.GetDirectoryName(full)!);
        var staging = System.IO.Path.Combine(parent, $".{System.IO.Path.GetFileName(full)}.{Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(8))}.partial");
        if (OperatingSystem.IsWindows())
        {
            Directory.CreateDirectory(staging);
        }
        else
        {
            Directory.CreateDirectory(staging, mode);
        }

        return new DurableDirectory(full, staging);
    }

    /// <summary>Syncs the temporary directory, renames it to <see cref="Path"/> unless that exists (in one step, <see cref="NoReplaceRename.MoveDirectory"/>) and syncs the parent.</summary>
    /// <exception cref="IOException"><see cref="Path"/> appeared meanwhile (<c>"{Path} exists already"</c>: of two committers of one name, exactly one commits), or a directory cannot be renamed or synced (nothing is left under <see cref="Path"/>).</exception>
    public void Commit()
    {
        ObjectDisposedException.ThrowIf(_committed, this);
        DirectorySync.Flush(Staging);
        // Not Directory.Move: its check for the name and its rename are two steps, and rename(2)
        // replaces an empty directory, so a directory committed (or made) empty in between was
        // replaced by this one, both told "written".
        NoReplaceRename.MoveDirectory(Staging, Path);
        try
        {
            DirectorySync.Flush(System.IO.Path.GetDirectoryName(Path)!);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            // Not reported as written, so not left behind under its final name.
            Directory.Move(Path, Staging);
            throw;
        }

        _committed = true;
    }

    /// <summary>Without a commit, deletes the temporary directory and its files.</summary>
    public void Dispose()
    {
        if (_committed || !Directory.Exists(Staging))
        {
            return;
        }

        try
        {
            Directory.Delete(Staging, recursive: true);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            // The fill failed already; that is the error to report.
        }
    }
}
