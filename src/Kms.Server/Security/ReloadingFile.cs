namespace Kms.Server.Security;

/// <summary>
/// A value loaded from files and loaded again when any of them changes (checked at most
/// once a second — a second of the monotonic clock, so a wall clock set back does not stop the
/// checks — through symbolic links), so certificates, CA bundles and CRLs are replaced without a restart.
/// A reload that fails keeps the last good value, is retried at the next check and is
/// reported to <paramref name="failed"/> once per version of the files.
/// </summary>
internal sealed class ReloadingFile<T>(Func<T> load, TimeProvider time, Action<Exception>? failed, params string[] paths)
    where T : class
{
    private readonly Lock _lock = new();
    private volatile T? _value;
    private string[] _stamps = [];
    private string[] _failedStamps = [];

    // When the files are next looked at (a monotonic timestamp, TimeProvider.GetTimestamp); read
    // without the lock. Not the wall clock: one set back an hour (it had run ahead, and NTP put it
    // right) would stop the checks for that hour — a CRL that revokes a certificate, a key set
    // without a withdrawn key, not read until the clock came back to where it had been.
    private long _nextCheck;

    /// <summary>
    /// The value of the files as last read. Read on every call (a client's trust material is
    /// looked at per call): between checks it takes no lock; a check and a load are made under one.
    /// </summary>
    public T Value
    {
        get
        {
            var now = time.GetTimestamp();
            var value = _value;
            if (value is not null && now < Volatile.Read(ref _nextCheck))
            {
                return value;
            }

            lock (_lock)
            {
                if (_value is not null && now < Volatile.Read(ref _nextCheck))
                {
                    return _value;
                }

                try
                {
                    var stamps = paths.Select(Stamp).ToArray();
                    if (_value is null || !stamps.SequenceEqual(_stamps))
                    {
                        try
                        {
                            _value = load();
                            _stamps = stamps;
                        }
                        catch (Exception e) when (_value is not null)
                        {
                            // Half-written files during a rotation, or a bad replacement: keep
                            // serving the previous value, and say so once.
                            if (!stamps.SequenceEqual(_failedStamps))
                            {
                                _failedStamps = stamps;
                                failed?.Invoke(e);
                            }
                        }
                    }
                }
                finally
                {
                    // After the load: a caller that comes meanwhile waits for it, and gets the new value.
                    Volatile.Write(ref _nextCheck, now + time.TimestampFrequency);
                }

                return _value;
            }
        }
    }

    // What identifies a version of the file: its real path (every symbolic link on the way
    // resolved), time and size. A link's own time never changes when what it points at does — a
    // Kubernetes secret's tls.crt -> ..data/tls.crt, renewed by swapping ..data — and
    // File.GetLastWriteTimeUtc reads the link's.
    private static string Stamp(string path)
    {
        try
        {
            var target = new FileInfo(RealPath(path, 0));
            return target.Exists ? $"{target.FullName}|{target.LastWriteTimeUtc.Ticks}|{target.Length}" : "";
        }
        catch (IOException)
        {
            return ""; // a link being replaced: the load decides, and a failure keeps the last value
        }
    }

    // ".." is collapsed by text first (Path.GetFullPath), as .NET does when it opens the file:
    // the stamp is of the file the loader reads, even where the kernel would go elsewhere.
    private static string RealPath(string path, int depth)
    {
        var full = Path.GetFullPath(path);
        var resolved = Path.GetPathRoot(full)!;
        foreach (var part in full[resolved.Length..].Split(Path.DirectorySeparatorChar, StringSplitOptions.RemoveEmptyEntries))
        {
            resolved = Path.Combine(resolved, part);
            if (new FileInfo(resolved).LinkTarget is { } target)
            {
                if (depth >= 40)
                {
                    throw new IOException($"too many levels of symbolic links: {path}");
                }

                resolved = RealPath(Path.Combine(Path.GetDirectoryName(resolved)!, target), depth + 1);
            }
        }

        return resolved;
    }
}
