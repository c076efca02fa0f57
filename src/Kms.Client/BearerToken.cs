using System.Text;
using Grpc.Core;

namespace Kms.Client;

/// <summary>
/// The <c>Authorization: Bearer</c> header of every call: a token given as it is, or one read from
/// <see cref="KmsClientOptions.ApiTokenPath"/> and read again when the file changes — a projected
/// service-account token (workload identity) that the kubelet replaces before it expires, a
/// <c>kms_</c> token an operator rotates — looked at once a second, off the calling path. A file
/// that cannot be read, is empty or is larger than <see cref="MaxFileBytes"/> while it is being
/// replaced leaves the previous token in use.
/// </summary>
/// <remarks>
/// <para>Each look reads the file (a few bytes, through every symbolic link) and compares what it holds:
/// no timestamp is trusted. The kubelet renews a projected token by swapping the <c>..data</c> link
/// the path's <c>token -&gt; ..data/token</c> goes through, so the link's own time — what
/// <see cref="File.GetLastWriteTimeUtc(string)"/> reads on Unix — never changes; and a copy or a
/// restore can keep a file's time with another content.</para>
/// <para>The looks run on a timer, one at a time: each is scheduled a second after the previous one
/// ended. A call only reads the token in hand, so a read that blocks (a stalled network disk, a
/// FIFO nobody writes) stalls no call — before, the first call after each second read the file on
/// its own thread, under a lock every other call then waited on. A read that blocks holds one
/// thread-pool thread until it returns, and no other read starts meanwhile. The timer holds the
/// token weakly: a client never disposed stops it when it is collected.</para>
/// </remarks>
internal sealed class BearerToken : IDisposable
{
    /// <summary>The largest token file read: a JWT the server accepts is at most 8 KiB, a <c>kms_</c> token under 100 bytes.</summary>
    internal const int MaxFileBytes = 16 * 1024;

    private static readonly TimeSpan CheckInterval = TimeSpan.FromSeconds(1);

    private readonly string? _path;
    private readonly ITimer? _timer;
    private Metadata.Entry _entry;
    private string _token;
    private int _disposed;

    private BearerToken(string token, string? path, TimeProvider time)
    {
        _entry = Entry(token);
        _token = token;
        _path = path;
        if (path is not null)
        {
            var look = new Look(new WeakReference<BearerToken>(this));
            _timer = look.Timer = time.CreateTimer(static state => ((Look)state!).Run(), look, CheckInterval, Timeout.InfiniteTimeSpan);
        }
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

    /// <summary>The header to send now: the token in hand, never a file read.</summary>
    public Metadata.Entry Current => Volatile.Read(ref _entry);

    /// <summary>Stops the looks (one in progress finishes, and schedules no other).</summary>
    public void Dispose()
    {
        Volatile.Write(ref _disposed, 1);
        _timer?.Dispose();
    }

    /// <summary>Reads the file once (on the timer's thread); the header changes if it holds another token.</summary>
    private void Refresh()
    {
        try
        {
            var text = Read(_path!);
            if (text.Length > 0 && text != _token)
            {
                _token = text;
                Volatile.Write(ref _entry, Entry(text));
            }
        }
        catch (Exception e) when (e is not OutOfMemoryException)
        {
            // Being replaced, briefly unreadable, a directory (IOException, UnauthorizedAccessException):
            // the previous token serves until the next look. Whatever else a read throws is taken the
            // same way: on the timer's thread an exception would end the process, where before it
            // failed the one call that read.
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

    /// <summary>The timer's state: the token, weakly; one look per firing, the next scheduled when it ends.</summary>
    private sealed class Look(WeakReference<BearerToken> token)
    {
        public ITimer? Timer { get; set; }

        public void Run()
        {
            if (!token.TryGetTarget(out var target) || Volatile.Read(ref target._disposed) != 0)
            {
                Timer?.Dispose();
                return;
            }

            target.Refresh();
            if (Volatile.Read(ref target._disposed) == 0)
            {
                try
                {
                    Timer?.Change(CheckInterval, Timeout.InfiniteTimeSpan);
                }
                catch (ObjectDisposedException)
                {
                    // Disposed with the client meanwhile.
                }
            }
        }
    }
}
