namespace Kms.Server.Security;

/// <summary>
/// A value loaded from files and loaded again when any of them changes (checked at most
/// once a second), so certificates, CA bundles and CRLs are replaced without a restart.
/// A reload that fails keeps the last good value, is retried at the next check and is
/// reported to <paramref name="failed"/> once per version of the files.
/// </summary>
internal sealed class ReloadingFile<T>(Func<T> load, TimeProvider time, Action<Exception>? failed, params string[] paths)
    where T : class
{
    private readonly Lock _lock = new();
    private T? _value;
    private DateTime[] _stamps = [];
    private DateTime[] _failedStamps = [];
    private DateTimeOffset _nextCheck;

    public T Value
    {
        get
        {
            var now = time.GetUtcNow();
            lock (_lock)
            {
                if (_value is not null && now < _nextCheck)
                {
                    return _value;
                }

                _nextCheck = now.AddSeconds(1);
                var stamps = paths.Select(p => File.Exists(p) ? File.GetLastWriteTimeUtc(p) : DateTime.MinValue).ToArray();
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

                return _value;
            }
        }
    }
}
