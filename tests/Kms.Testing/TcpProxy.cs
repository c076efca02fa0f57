using System.Net;
using System.Net.Sockets;

namespace Kms.Testing;

/// <summary>
/// A loopback TCP forwarder that a test can cut and restore, to make a server (PostgreSQL)
/// unreachable without stopping it: <see cref="Cut"/> closes every forwarded connection and
/// refuses new ones until <see cref="Restore"/>.
/// </summary>
public sealed class TcpProxy : IAsyncDisposable
{
    private readonly TcpListener _listener = new(IPAddress.Loopback, 0);
    private readonly IPEndPoint _target;
    private readonly CancellationTokenSource _stop = new();
    private readonly List<TcpClient> _open = [];
    private readonly Lock _lock = new();
    private readonly Task _accepting;
    private volatile bool _cut;
    private volatile bool _holdReplies;

    /// <summary>Listens on a free loopback port and forwards to <paramref name="target"/>.</summary>
    public TcpProxy(IPEndPoint target)
    {
        _target = target;
        _listener.Start();
        _accepting = AcceptAsync();
    }

    /// <summary>The port clients connect to.</summary>
    public int Port => ((IPEndPoint)_listener.LocalEndpoint).Port;

    /// <summary>Drops every connection and refuses new ones.</summary>
    public void Cut()
    {
        _cut = true;
        lock (_lock)
        {
            foreach (var client in _open)
            {
                client.Dispose();
            }

            _open.Clear();
        }
    }

    /// <summary>
    /// From now on drops what the server sends on the open connections (what clients send still
    /// reaches it): a statement sent now is run, and its answer is lost, until <see cref="Cut"/>.
    /// </summary>
    public void HoldReplies() => _holdReplies = true;

    /// <summary>Forwards again.</summary>
    public void Restore()
    {
        _holdReplies = false;
        _cut = false;
    }

    public async ValueTask DisposeAsync()
    {
        await _stop.CancelAsync();
        _listener.Stop();
        Cut();
        try
        {
            await _accepting;
        }
        catch (Exception e) when (e is OperationCanceledException or SocketException or ObjectDisposedException)
        {
        }

        _stop.Dispose();
    }

    private async Task AcceptAsync()
    {
        while (!_stop.IsCancellationRequested)
        {
            var client = await _listener.AcceptTcpClientAsync(_stop.Token);
            if (_cut)
            {
                client.Dispose();
                continue;
            }

            _ = ForwardAsync(client);
        }
    }

    // The server's bytes to the client, dropped while replies are held.
    private async Task RepliesAsync(Stream server, Stream client, CancellationToken cancellationToken)
    {
        var buffer = new byte[81920];
        int read;
        while ((read = await server.ReadAsync(buffer, cancellationToken)) > 0)
        {
            if (!_holdReplies)
            {
                await client.WriteAsync(buffer.AsMemory(0, read), cancellationToken);
            }
        }
    }

    private async Task ForwardAsync(TcpClient client)
    {
        var upstream = new TcpClient();
        try
        {
            await upstream.ConnectAsync(_target, _stop.Token);
            lock (_lock)
            {
                _open.Add(client);
                _open.Add(upstream);
            }

            using var done = CancellationTokenSource.CreateLinkedTokenSource(_stop.Token);
            var a = client.GetStream().CopyToAsync(upstream.GetStream(), done.Token);
            var b = RepliesAsync(upstream.GetStream(), client.GetStream(), done.Token);
            await Task.WhenAny(a, b);
            await done.CancelAsync();
        }
        catch (Exception e) when (e is IOException or SocketException or OperationCanceledException or ObjectDisposedException)
        {
            // A cut, or either side closed.
        }
        finally
        {
            client.Dispose();
            upstream.Dispose();
            lock (_lock)
            {
                _open.Remove(client);
                _open.Remove(upstream);
            }
        }
    }
}
