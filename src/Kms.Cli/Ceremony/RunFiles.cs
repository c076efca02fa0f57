namespace Kms.Cli.Ceremony;

/// <summary>
/// What one ceremony run puts on disk, so that a run that fails takes back exactly that and
/// nothing else: each file it is about to write where nothing was (<see cref="WillWrite"/>),
/// each file it wrote (<see cref="Wrote"/>), each directory it is about to create
/// (<see cref="WillCreateDirectory"/>). A file another process writes meanwhile, even in a
/// directory this run created, is not this run's: it stays, and so does its directory.
/// </summary>
internal sealed class RunFiles
{
    private readonly List<string> _files = [];
    private readonly List<string> _directories = [];

    /// <summary>A file this run is about to write at <paramref name="path"/>: its own to take back, unless something is there already.</summary>
    public void WillWrite(string path)
    {
        var full = Path.GetFullPath(path);
        if (!File.Exists(full) && !Directory.Exists(full))
        {
            Wrote(full);
        }
    }

    /// <summary>A file this run wrote (it was not there before: a write that never replaces one).</summary>
    public void Wrote(string path)
    {
        var full = Path.GetFullPath(path);
        if (!_files.Contains(full, StringComparer.Ordinal))
        {
            _files.Add(full);
        }
    }

    /// <summary>The directory <paramref name="path"/>, which this run is about to create: it and each missing parent are its own.</summary>
    public void WillCreateDirectory(string path)
    {
        for (var missing = Path.GetFullPath(path); missing is not null && !Directory.Exists(missing); missing = Path.GetDirectoryName(missing))
        {
            if (!_directories.Contains(missing, StringComparer.Ordinal))
            {
                _directories.Add(missing);
            }
        }
    }

    /// <summary>
    /// Deletes the files this run wrote that are there, then removes the directories it created
    /// that are empty (deepest first; one holding anything else is left as it is, and an empty one
    /// left behind stops nothing). What could not be deleted is returned, each as what to do about it.
    /// </summary>
    public List<string> TakeBack()
    {
        List<string> left = [];
        foreach (var file in Enumerable.Reverse(_files))
        {
            try
            {
                File.Delete(file);
            }
            catch (DirectoryNotFoundException)
            {
                // Never written: its directory was not made either.
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException)
            {
                left.Add($"{file} could not be deleted ({Cause(e)}): delete it before running again");
            }
        }

        foreach (var directory in _directories.OrderByDescending(d => d.Length))
        {
            try
            {
                // Not recursive: a directory holding anything (someone else's file) is refused whole.
                Directory.Delete(directory, recursive: false);
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException)
            {
                // Not empty, or not removable: it holds nothing of this run's.
            }
        }

        return left;
    }

    private static string Cause(Exception e) => e switch
    {
        UnauthorizedAccessException => "permission denied",
        IOException io when Infrastructure.LocalPath.IsReadOnlyFileSystem(io) => "read-only filesystem",
        _ => e.GetType().Name,
    };
}
