using System.Net;
using System.Net.Security;
using System.Net.Sockets;
using System.Security.Authentication;
using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;

namespace Kms.Client.Tests.Failover;

/// <summary>Endpoints that do not serve, on 127.0.0.1.</summary>
internal static class DeadEndpoints
{
    /// <summary>A loopback port nothing listens on: connections to it are refused.</summary>
    public static Uri Refusing()
    {
        var listener = new TcpListener(IPAddress.Loopback, 0);
        listener.Start();
        var port = ((IPEndPoint)listener.LocalEndpoint).Port;
        listener.Stop();
        return new Uri($"https://127.0.0.1:{port}");
    }
}

/// <summary>
/// A loopback listener that accepts every connection, counts it and hands it to
/// <see cref="ServeAsync"/> (its subclasses: what a dead endpoint does with a connection).
/// </summary>
internal abstract class CountingListener : IDisposable
{
    private readonly TcpListener _listener = new(IPAddress.Loopback, 0);
    private int _connections;

    protected CountingListener()
    {
        _listener.Start();
        Address = new Uri($"https://127.0.0.1:{((IPEndPoint)_listener.LocalEndpoint).Port}");
    }

    public Uri Address { get; }

    public int Connections => Volatile.Read(ref _connections);

    protected CancellationTokenSource Stop { get; } = new();

    public virtual void Dispose()
    {
        Stop.Cancel();
        _listener.Stop();
        Stop.Dispose();
    }

    /// <summary>Starts accepting; a subclass calls it once its own fields are set.</summary>
    protected void Start() => _ = AcceptAsync();

    /// <summary>What the endpoint does with an accepted connection (it owns the socket).</summary>
    protected abstract Task ServeAsync(Socket socket);

    private async Task AcceptAsync()
    {
        try
        {
            while (true)
            {
                var socket = await _listener.AcceptSocketAsync(Stop.Token);
                Interlocked.Increment(ref _connections);
                _ = ServeAsync(socket);
            }
        }
        catch (Exception e) when (e is OperationCanceledException or SocketException or ObjectDisposedException)
        {
            // Stopped.
        }
    }
}

/// <summary>A loopback listener that accepts every connection and closes it at once (so TLS fails), counting them.</summary>
internal sealed class AcceptAndCloseListener : CountingListener
{
    public AcceptAndCloseListener() => Start();

    protected override Task ServeAsync(Socket socket)
    {
        socket.Dispose();
        return Task.CompletedTask;
    }
}

/// <summary>
/// A loopback listener that never accepts and whose backlog is full, so further connection
/// attempts hang (Linux drops their SYNs) until the client's connect timeout.
/// </summary>
internal sealed class BlackHoleListener : IDisposable
{
    private readonly TcpListener _listener = new(IPAddress.Loopback, 0);
    private readonly List<Socket> _fillers = [];

    private BlackHoleListener()
    {
        _listener.Start(1);
        Address = new Uri($"https://127.0.0.1:{Port}");
    }

    public Uri Address { get; }

    private int Port => ((IPEndPoint)_listener.LocalEndpoint).Port;

    public static async Task<BlackHoleListener> StartAsync()
    {
        var hole = new BlackHoleListener();

        // Fill the backlog until a connection attempt no longer completes.
        for (var i = 0; i < 16; i++)
        {
            var filler = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
            hole._fillers.Add(filler);
            var connect = filler.ConnectAsync(IPAddress.Loopback, hole.Port);
            if (await Task.WhenAny(connect, Task.Delay(300)) != connect)
            {
                return hole;
            }
        }

        hole.Dispose();
        throw new InvalidOperationException("the backlog never filled: connection attempts are not held on this system");
    }

    public void Dispose()
    {
        foreach (var filler in _fillers)
        {
            filler.Dispose();
        }

        _listener.Stop();
    }
}

/// <summary>
/// A loopback TLS listener presenting a self-signed certificate no client of the tests trusts:
/// every TLS handshake fails on the client's side. Counts the connections it accepted.
/// </summary>
internal sealed class UntrustedTlsListener : CountingListener
{
    private readonly X509Certificate2 _certificate;

    public UntrustedTlsListener()
    {
        using var key = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        var request = new CertificateRequest("CN=127.0.0.1", key, HashAlgorithmName.SHA256);
        var names = new SubjectAlternativeNameBuilder();
        names.AddIpAddress(IPAddress.Loopback);
        request.CertificateExtensions.Add(names.Build());
        using var selfSigned = request.CreateSelfSigned(DateTimeOffset.UtcNow.AddDays(-1), DateTimeOffset.UtcNow.AddDays(1));
        _certificate = X509CertificateLoader.LoadPkcs12(selfSigned.Export(X509ContentType.Pfx), null);
        Start();
    }

    public override void Dispose()
    {
        base.Dispose();
        _certificate.Dispose();
    }

    protected override async Task ServeAsync(Socket socket)
    {
        using (socket)
        {
            try
            {
                await using var tls = new SslStream(new NetworkStream(socket, ownsSocket: false));
                await tls.AuthenticateAsServerAsync(new SslServerAuthenticationOptions
                {
                    ServerCertificate = _certificate,
                    ApplicationProtocols = [SslApplicationProtocol.Http2],
                    EnabledSslProtocols = SslProtocols.Tls13,
                });
                // Held open until the client, having refused the certificate, closes it.
                await tls.ReadAtLeastAsync(new byte[1], 1, throwOnEndOfStream: false, Stop.Token);
            }
            catch (Exception e) when (e is IOException or AuthenticationException or OperationCanceledException or ObjectDisposedException)
            {
                // The client refused the certificate and closed the connection.
            }
        }
    }
}
