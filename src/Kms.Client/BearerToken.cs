using System.Text;
using Grpc.Core;

namespace Kms.Client;

/// <summary>
/// The <c>Authorization: Bearer</c> header of every call: a token given as it is, or one read from
/// <see cref="KmsClientOptions.ApiTokenPath"/> and read again when the file changes — a projected
/// service-account token (workload identity) that the kubelet replaces before it expires, a
/// <c>kms_</c> token an operator rotates — looked at no more than once a second. A file that
/// cannot be read, is empty or is larger than <see cref="MaxFileBytes"/> while it is being
/// replaced leaves the previous token in use.
/// </summary>
/// <remarks>
/// Each look reads the file (a few bytes, through every symbolic link) and compares what it holds:
/// no timestamp is trusted. The kubelet renews a projected token by swapping the <c>..data</c> link
/// the path's <c>token -&gt; ..data/token</c> goes through, so the link's own time — what
/// <see cref="File.GetLastWriteTimeUtc(string)"/> reads on Unix — never changes; and a copy or a
/// restore can keep a file's time with another content.
/// </remarks>
internal sealed class BearerToken
{
    /// <summary>The largest token file read: a JWT the server accepts is at most 8 KiB, a <c>kms_</c> token under 100 bytes.</summary>
    internal const int MaxFileBytes = 16 * 1024;

    private static readonly TimeSpan CheckInterval = TimeSpan.FromSeconds(1);

    private readonly string? _path;
    private readonly TimeProvider _time;
    private readonly Lock _gate = new();
    private Metadata.Entry _entry;
    private string _token;
    private long _checked;

    private BearerToken(string token, string? path, TimeProvider time)
    {
        _entry = Entry(token);
        _token = token;
        _path = path;
        _time = time;
        _checked = time.GetTimestamp();
    }

    /// <summary>The header of <paramref name="options"/>' token, or null when it has none (a client certificate).</summary>
    /// <exception cref="IOException">The token file cannot be read at creation, or is larger than <see cref="MaxFileBytes"/>.</exception>
    public static BearerToken? From(KmsClientOptions options, TimeProvider time)
    {
        if (options.ApiToken is { } token)
        {
            return new BearerToken(token, null, time);
        }

        if (options.ApiTokenPath is not { } path)
        {
            return null;
        }

        return new BearerToken(Read(path), path, time);
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
                var text = Read(path);
                if (text.Length > 0 && text != _token)
                {
                    _token = text;
                    Volatile.Write(ref _entry, Entry(text));
                }
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException)
            {
                // Being replaced, briefly unreadable, a directory: the previous token serves until the next look.
            }
        }
    }

    // The file's text, trimmed (a UTF-8 byte order mark too); at most MaxFileBytes are read.
    private static string Read(string path)
    {
        using var file = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.ReadWrite | FileShare.Delete, bufferSize: 1);
        var buffer = new byte[MaxFileBytes + 1];
        var length = file.ReadAtLeast(buffer, buffer.Length, throwOnEndOfStream: false);
        if (length > MaxFileBytes)
        {
            throw new IOException($"the token file {path} is larger than {MaxFileBytes} bytes");
        }

        return Encoding.UTF8.GetString(buffer, 0, length).TrimStart('\uFEFF').Trim();
    }

    private static Metadata.Entry Entry(string token) => new("authorization", "Bearer " + token);
}
