using Grpc.Core;

namespace Kms.Client;

/// <summary>
/// The <c>Authorization: Bearer</c> header of every call: a token given as it is, or one read from
/// <see cref="KmsClientOptions.ApiTokenPath"/> and read again when the file changes — a projected
/// service-account token (workload identity) that the kubelet replaces before it expires, a
/// <c>kms_</c> token an operator rotates — looked at no more than once a second. A file that
/// cannot be read, or is empty, while it is being replaced leaves the previous token in use.
/// </summary>
internal sealed class BearerToken
{
    private static readonly TimeSpan CheckInterval = TimeSpan.FromSeconds(1);

    private readonly string? _path;
    private readonly TimeProvider _time;
    private readonly Lock _gate = new();
    private Metadata.Entry _entry;
    private DateTime _written;
    private long _checked;

    private BearerToken(string token, string? path, DateTime written, TimeProvider time)
    {
        _entry = Entry(token);
        _path = path;
        _written = written;
        _time = time;
        _checked = time.GetTimestamp();
    }

    /// <summary>The header of <paramref name="options"/>' token, or null when it has none (a client certificate).</summary>
    /// <exception cref="IOException">The token file cannot be read at creation.</exception>
    public static BearerToken? From(KmsClientOptions options, TimeProvider time)
    {
        if (options.ApiToken is { } token)
        {
            return new BearerToken(token, null, default, time);
        }

        if (options.ApiTokenPath is not { } path)
        {
            return null;
        }

        var written = File.GetLastWriteTimeUtc(path);
        return new BearerToken(File.ReadAllText(path).Trim(), path, written, time);
    }

    /// <summary>The header to send now.</summary>
    public Metadata.Entry Current
    {
        get
        {
            if (_path is not null && _time.GetElapsedTime(Volatile.Read(ref _checked)) >= CheckInterval)
            {
                Refresh(_path);
            }

            return Volatile.Read(ref _entry);
        }
    }

    private void Refresh(string path)
    {
        lock (_gate)
        {
            if (_time.GetElapsedTime(_checked) < CheckInterval)
            {
                return;
            }

            Volatile.Write(ref _checked, _time.GetTimestamp());
            try
            {
                var written = File.GetLastWriteTimeUtc(path);
                if (written == _written)
                {
                    return;
                }

                var text = File.ReadAllText(path).Trim();
                if (text.Length > 0)
                {
                    Volatile.Write(ref _entry, Entry(text));
                    _written = written;
                }
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException)
            {
                // Being replaced, or briefly unreadable: the previous token serves until the next look.
            }
        }
    }

    private static Metadata.Entry Entry(string token) => new("authorization", "Bearer " + token);
}
