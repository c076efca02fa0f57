using System.Buffers.Binary;
using System.Diagnostics;
using System.Net;
using System.Net.Security;
using System.Net.Sockets;
using System.Security.Cryptography.X509Certificates;
using System.Text;

namespace Kms.Server.Tests;

/// <summary>
/// An HTTP/2 client written by hand over TLS 1.3, as an attacker writes one: frames are sent as
/// given (no flow control, no stream bookkeeping, no HPACK state beyond literals), so that a test
/// can send what no well-behaved client would. <see cref="ConnectTcpAsync"/> can bind the local
/// end to another loopback address (127.0.0.2), so an attacker and a legitimate client differ by
/// address as they would on a network.
/// </summary>
internal sealed class RawHttp2 : IAsyncDisposable
{
    public const byte Data = 0x0, Headers = 0x1, RstStream = 0x3, Settings = 0x4, Ping = 0x6, GoAway = 0x7, WindowUpdate = 0x8, Continuation = 0x9;
    public const byte EndStream = 0x1, EndHeaders = 0x4, Ack = 0x1;

    private static readonly byte[] Preface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"u8.ToArray();
    private readonly Socket _socket;
    private readonly SslStream _ssl;
    private readonly SemaphoreSlim _writeLock = new(1, 1);

    private RawHttp2(Socket socket, SslStream ssl)
    {
        _socket = socket;
        _ssl = ssl;
    }

    /// <summary>A TCP connection to the server, from <paramref name="source"/> (any port) when given.</summary>
    public static async Task<Socket> ConnectTcpAsync(Uri server, IPAddress? source = null)
    {
        var socket = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        try
        {
            if (source is not null)
            {
                socket.Bind(new IPEndPoint(source, 0));
            }

            await socket.ConnectAsync(IPAddress.Parse(server.Host), server.Port).WaitAsync(TimeSpan.FromSeconds(10));
            return socket;
        }
        catch
        {
            socket.Dispose();
            throw;
        }
    }

    /// <summary>TLS 1.3 with ALPN h2, trusting <paramref name="caPath"/>; then the preface and an empty SETTINGS unless told not to.</summary>
    public static async Task<RawHttp2> ConnectAsync(Uri server, string caPath, IPAddress? source = null, bool preface = true)
    {
        var socket = await ConnectTcpAsync(server, source);
        var ssl = new SslStream(new NetworkStream(socket, ownsSocket: false), leaveInnerStreamOpen: false);
        var connection = new RawHttp2(socket, ssl);
        try
        {
            var ca = X509Certificate2.CreateFromPem(await File.ReadAllTextAsync(caPath));
            await ssl.AuthenticateAsClientAsync(new SslClientAuthenticationOptions
            {
                TargetHost = "localhost",
                ApplicationProtocols = [SslApplicationProtocol.Http2],
                EnabledSslProtocols = System.Security.Authentication.SslProtocols.Tls13,
                CertificateChainPolicy = new X509ChainPolicy
                {
                    TrustMode = X509ChainTrustMode.CustomRootTrust,
                    RevocationMode = X509RevocationMode.NoCheck,
                    CustomTrustStore = { ca },
                },
            }).WaitAsync(TimeSpan.FromSeconds(10));
            if (preface)
            {
                await connection.SendPrefaceAsync();
            }

            return connection;
        }
        catch
        {
            await connection.DisposeAsync();
            throw;
        }
    }

    /// <summary>The connection preface and a SETTINGS frame: empty, or these settings (6 bytes each: id, value).</summary>
    public async Task SendPrefaceAsync(byte[]? settings = null)
    {
        await WriteRawAsync(Preface);
        await WriteFrameAsync(Settings, 0, 0, settings ?? []);
    }

    public async Task WriteRawAsync(ReadOnlyMemory<byte> bytes)
    {
        await _writeLock.WaitAsync();
        try
        {
            await _ssl.WriteAsync(bytes);
            await _ssl.FlushAsync();
        }
        finally
        {
            _writeLock.Release();
        }
    }

    public Task WriteFrameAsync(byte type, byte flags, int stream, ReadOnlySpan<byte> payload) => WriteRawAsync(Frame(type, flags, stream, payload));

    /// <summary>One frame's bytes.</summary>
    public static byte[] Frame(byte type, byte flags, int stream, ReadOnlySpan<byte> payload)
    {
        var frame = new byte[9 + payload.Length];
        frame[0] = (byte)(payload.Length >> 16);
        frame[1] = (byte)(payload.Length >> 8);
        frame[2] = (byte)payload.Length;
        frame[3] = type;
        frame[4] = flags;
        BinaryPrimitives.WriteInt32BigEndian(frame.AsSpan(5), stream);
        payload.CopyTo(frame.AsSpan(9));
        return frame;
    }

    /// <summary>The header block of a gRPC call to <paramref name="path"/> (HPACK literals, nothing indexed).</summary>
    public static byte[] GrpcHeaderBlock(string path, string? bearerToken, Uri server)
    {
        var block = new MemoryStream();
        foreach (var (name, value) in GrpcHeaders(path, bearerToken, server))
        {
            Literal(block, name, value);
        }

        return block.ToArray();
    }

    /// <summary>The header fields <see cref="GrpcHeaderBlock"/> encodes, in its order.</summary>
    public static List<(string Name, string Value)> GrpcHeaders(string path, string? bearerToken, Uri server)
    {
        List<(string Name, string Value)> headers =
        [
            (":method", "POST"),
            (":scheme", "https"),
            (":path", path),
            (":authority", $"{server.Host}:{server.Port}"),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
        ];
        if (bearerToken is not null)
        {
            headers.Add(("authorization", "Bearer " + bearerToken));
        }

        return headers;
    }

    /// <summary>A literal header field without indexing, new name (RFC 7541 6.2.2), no Huffman.</summary>
    public static void Literal(Stream block, string name, string value)
    {
        block.WriteByte(0);
        String(block, name);
        String(block, value);
    }

    /// <summary>
    /// A literal header field with incremental indexing, new name (RFC 7541 6.2.1), no Huffman: the
    /// decoder adds it to the connection's dynamic table, where <see cref="Indexed"/> names it.
    /// </summary>
    public static void LiteralIndexed(Stream block, string name, string value)
    {
        block.WriteByte(0x40);
        String(block, name);
        String(block, value);
    }

    /// <summary>An indexed header field (RFC 7541 6.1): one byte for an index below 127 — 62 is the newest dynamic table entry.</summary>
    public static void Indexed(Stream block, int index)
    {
        ArgumentOutOfRangeException.ThrowIfGreaterThan(index, 126);
        block.WriteByte((byte)(0x80 | index));
    }

    /// <summary>
    /// What a decoded field counts towards Kestrel's <c>MaxRequestHeadersTotalSize</c>: its name and
    /// value (Kestrel leaves out RFC 9113's 32 bytes a field), however it was encoded.
    /// </summary>
    public static int DecodedSize(string name, string value) => name.Length + value.Length;

    // A string literal (RFC 7541 5.2), not Huffman-coded: its length as a 7-bit prefix integer, then its bytes.
    private static void String(Stream block, string text)
    {
        var bytes = Encoding.ASCII.GetBytes(text);
        var length = bytes.Length;
        if (length < 127)
        {
            block.WriteByte((byte)length);
        }
        else
        {
            block.WriteByte(127);
            length -= 127;
            while (length >= 128)
            {
                block.WriteByte((byte)(length % 128 + 128));
                length /= 128;
            }

            block.WriteByte((byte)length);
        }

        block.Write(bytes);
    }

    /// <summary>The 5-byte gRPC message header: not compressed, <paramref name="length"/> bytes follow.</summary>
    public static byte[] GrpcMessageHeader(uint length)
    {
        var header = new byte[5];
        BinaryPrimitives.WriteUInt32BigEndian(header.AsSpan(1), length);
        return header;
    }

    private readonly Dictionary<int, long> _streamWindows = [];
    private readonly Dictionary<int, StringBuilder> _streamText = [];
    private readonly HashSet<int> _ended = [];

    /// <summary>
    /// Waits (at most <paramref name="wait"/>) until the server has ended each of <paramref name="streams"/>
    /// (END_STREAM or RST_STREAM; <see cref="StartReading"/> first); the ended ones, each with the
    /// printable text of what the server sent on it (header names and values, unindexed, show).
    /// </summary>
    public async Task<Dictionary<int, string>> StreamEndsAsync(IReadOnlyCollection<int> streams, TimeSpan wait)
    {
        var waited = Stopwatch.StartNew();
        while (true)
        {
            lock (_windowLock)
            {
                if (streams.All(_ended.Contains) || waited.Elapsed > wait || _reader is { IsCompleted: true })
                {
                    return streams.Where(_ended.Contains).ToDictionary(s => s, s => _streamText[s].ToString());
                }
            }

            await Task.Delay(20);
        }
    }
    private uint? _goAwayError;

    /// <summary>
    /// The error code of the server's GOAWAY (RFC 9113, 7: 1 PROTOCOL_ERROR, 9 COMPRESSION_ERROR …),
    /// null before one arrived (<see cref="StartReading"/> first).
    /// </summary>
    public uint? GoAwayError
    {
        get
        {
            lock (_windowLock)
            {
                return _goAwayError;
            }
        }
    }

    private long _connectionWindow = 65535;
    private long _initialStreamWindow = 65535;
    private readonly Lock _windowLock = new();
    private Task<bool>? _reader;

    /// <summary>
    /// Reads every frame from now on in the background, honouring the server's SETTINGS and
    /// WINDOW_UPDATEs for <see cref="SendDataAsync"/>; completes true when the server closes the connection.
    /// </summary>
    public Task<bool> StartReading()
    {
        return _reader ??= Task.Run(async () =>
        {
            while (await ReadFrameAsync(CancellationToken.None) is { } frame)
            {
                lock (_windowLock)
                {
                    if (frame.Stream != 0 && frame.Type is Headers or Continuation or RstStream or Data)
                    {
                        var text = _streamText.TryGetValue(frame.Stream, out var known) ? known : _streamText[frame.Stream] = new StringBuilder();
                        text.Append(Encoding.ASCII.GetString(frame.Payload.Where(b => b is >= 32 and < 127).ToArray()));
                        if (frame.Type == RstStream || (frame.Flags & EndStream) != 0)
                        {
                            _ended.Add(frame.Stream);
                        }
                    }

                    if (frame.Type == GoAway && frame.Payload.Length >= 8)
                    {
                        _goAwayError = BinaryPrimitives.ReadUInt32BigEndian(frame.Payload.AsSpan(4));
                    }

                    if (frame.Type == WindowUpdate)
                    {
                        var increment = BinaryPrimitives.ReadInt32BigEndian(frame.Payload) & int.MaxValue;
                        if (frame.Stream == 0)
                        {
                            _connectionWindow += increment;
                        }
                        else
                        {
                            _streamWindows[frame.Stream] = StreamWindow(frame.Stream) + increment;
                        }
                    }
                    else if (frame.Type == Settings && (frame.Flags & Ack) == 0)
                    {
                        for (var i = 0; i + 6 <= frame.Payload.Length; i += 6)
                        {
                            if (BinaryPrimitives.ReadUInt16BigEndian(frame.Payload.AsSpan(i)) == 4)
                            {
                                // A change applies to the streams already open too (RFC 9113, 6.9.2):
                                // one that sent before the server's SETTINGS arrived keeps its place.
                                var initial = (long)BinaryPrimitives.ReadUInt32BigEndian(frame.Payload.AsSpan(i + 2));
                                foreach (var open in _streamWindows.Keys.ToList())
                                {
                                    _streamWindows[open] += initial - _initialStreamWindow;
                                }

                                _initialStreamWindow = initial;
                            }
                        }
                    }
                }
            }

            return true;
        });
    }

    /// <summary>
    /// Sends <paramref name="bytes"/> on <paramref name="stream"/> as DATA frames of at most 16 KiB,
    /// each when the server's windows allow it (<see cref="StartReading"/> first); false if the
    /// windows stayed shut for <paramref name="stall"/>.
    /// </summary>
    public async Task<bool> SendDataAsync(int stream, ReadOnlyMemory<byte> bytes, TimeSpan stall)
    {
        while (bytes.Length > 0)
        {
            var waited = Stopwatch.StartNew();
            int size;
            while (true)
            {
                lock (_windowLock)
                {
                    size = (int)Math.Min(Math.Min(bytes.Length, 16384), Math.Min(_connectionWindow, StreamWindow(stream)));
                    if (size > 0)
                    {
                        _connectionWindow -= size;
                        _streamWindows[stream] = StreamWindow(stream) - size;
                        break;
                    }
                }

                if (waited.Elapsed > stall || _reader is { IsCompleted: true })
                {
                    return false;
                }

                await Task.Delay(5);
            }

            await WriteFrameAsync(Data, 0, stream, bytes.Span[..size]);
            bytes = bytes[size..];
        }

        return true;
    }

    public string Debug
    {
        get
        {
            lock (_windowLock)
            {
                return $"connection window {_connectionWindow}, initial {_initialStreamWindow}, streams {string.Join(",", _streamWindows)}";
            }
        }
    }

    private long StreamWindow(int stream) => _streamWindows.TryGetValue(stream, out var window) ? window : _initialStreamWindow;

    /// <summary>The next frame, or null once the server closed the connection (or reset it).</summary>
    public async Task<(byte Type, byte Flags, int Stream, byte[] Payload)?> ReadFrameAsync(CancellationToken cancellationToken)
    {
        var header = new byte[9];
        try
        {
            if (!await ReadExactlyAsync(header, cancellationToken))
            {
                return null;
            }

            var length = (header[0] << 16) | (header[1] << 8) | header[2];
            var payload = new byte[length];
            if (!await ReadExactlyAsync(payload, cancellationToken))
            {
                return null;
            }

            return (header[3], header[4], BinaryPrimitives.ReadInt32BigEndian(header.AsSpan(5)) & int.MaxValue, payload);
        }
        catch (IOException)
        {
            return null;
        }
    }

    /// <summary>
    /// Reads (and drops) frames until the server closes the connection: true once it has, false
    /// if it still had not when <paramref name="wait"/> was up (a generous bound, not a measure).
    /// </summary>
    public async Task<bool> ClosedByServerAsync(TimeSpan wait)
    {
        if (_reader is { } reader)
        {
            try
            {
                return await reader.WaitAsync(wait);
            }
            catch (TimeoutException)
            {
                return false;
            }
        }

        using var timeout = new CancellationTokenSource(wait);
        try
        {
            while (await ReadFrameAsync(timeout.Token) is not null)
            {
            }

            return true;
        }
        catch (OperationCanceledException)
        {
            return false;
        }
    }

    /// <summary>Whether the server has closed a TCP connection that never started TLS (reads 0 bytes), within <paramref name="wait"/>.</summary>
    public static async Task<bool> ClosedByServerAsync(Socket socket, TimeSpan wait)
    {
        using var timeout = new CancellationTokenSource(wait);
        var buffer = new byte[256];
        try
        {
            while (await socket.ReceiveAsync(buffer, SocketFlags.None, timeout.Token) > 0)
            {
            }

            return true;
        }
        catch (SocketException)
        {
            return true;
        }
        catch (OperationCanceledException)
        {
            return false;
        }
    }

    public async ValueTask DisposeAsync()
    {
        await _ssl.DisposeAsync();
        _socket.Dispose();
        _writeLock.Dispose();
    }

    private async Task<bool> ReadExactlyAsync(Memory<byte> buffer, CancellationToken cancellationToken)
    {
        var read = 0;
        while (read < buffer.Length)
        {
            var n = await _ssl.ReadAsync(buffer[read..], cancellationToken);
            if (n == 0)
            {
                return false;
            }

            read += n;
        }

        return true;
    }
}
