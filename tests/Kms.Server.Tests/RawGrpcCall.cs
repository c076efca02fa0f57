using System.Net;
using System.Net.Http.Headers;
using System.Security.Cryptography.X509Certificates;
using Grpc.Core;
using Kms.Testing;

namespace Kms.Server.Tests;

/// <summary>
/// One unary gRPC call written by hand over HTTP/2 and TLS, for requests no gRPC client would
/// send: the message's 5-byte frame header and its compression are the caller's.
/// </summary>
internal static class RawGrpcCall
{
    /// <summary>Sends <paramref name="body"/> as the request of <paramref name="path"/>; returns the call's status and message.</summary>
    public static async Task<(StatusCode Status, string Message)> SendAsync(KmsTestServer server, byte[] body, string? encoding, string? token, string path)
    {
        var (status, message, _) = await SendForResponseAsync(server, body, encoding, token, path);
        return (status, message);
    }

    /// <summary>Sends <paramref name="body"/> as the request of <paramref name="path"/>; returns the call's status and message, and its response message (uncompressed; empty when there is none).</summary>
    public static async Task<(StatusCode Status, string Message, byte[] Response)> SendForResponseAsync(KmsTestServer server, byte[] body, string? encoding, string? token, string path)
    {
        using var handler = new SocketsHttpHandler();
        handler.SslOptions.CertificateChainPolicy = new X509ChainPolicy
        {
            TrustMode = X509ChainTrustMode.CustomRootTrust,
            RevocationMode = X509RevocationMode.NoCheck,
            CustomTrustStore = { X509Certificate2.CreateFromPem(File.ReadAllText(server.CaCertificatePath)) },
        };
        using var http = new HttpClient(handler);
        using var request = new HttpRequestMessage(HttpMethod.Post, new Uri(server.Address, path))
        {
            Version = HttpVersion.Version20,
            VersionPolicy = HttpVersionPolicy.RequestVersionExact,
            Content = new ByteArrayContent(body),
        };
        request.Content.Headers.ContentType = new MediaTypeHeaderValue("application/grpc");
        request.Headers.TE.Add(new TransferCodingWithQualityHeaderValue("trailers"));
        if (encoding is not null)
        {
            request.Headers.Add("grpc-encoding", encoding);
        }

        if (token is not null)
        {
            request.Headers.Authorization = new AuthenticationHeaderValue("Bearer", token);
        }

        using var response = await http.SendAsync(request);
        Assert.Equal(HttpStatusCode.OK, response.StatusCode);
        var answer = await response.Content.ReadAsByteArrayAsync();
        var headers = response.TrailingHeaders.Contains("grpc-status") ? response.TrailingHeaders : response.Headers;
        var status = (StatusCode)int.Parse(headers.GetValues("grpc-status").Single(), System.Globalization.CultureInfo.InvariantCulture);
        var message = headers.TryGetValues("grpc-message", out var values) ? Uri.UnescapeDataString(values.Single()) : "";
        if (answer.Length == 0)
        {
            return (status, message, []);
        }

        Assert.Equal(0, answer[0]); // not compressed
        Assert.Equal(answer.Length - 5, (int)System.Buffers.Binary.BinaryPrimitives.ReadUInt32BigEndian(answer.AsSpan(1)));
        return (status, message, answer[5..]);
    }

    /// <summary><paramref name="request"/> and an unknown bytes field (number 1000) that makes it exactly <paramref name="total"/> bytes.</summary>
    public static byte[] Padded(Google.Protobuf.IMessage request, int total)
    {
        var head = Google.Protobuf.MessageExtensions.ToByteArray(request);
        for (var padding = total - head.Length - 8; ; padding++)
        {
            using var stream = new MemoryStream();
            stream.Write(head);
            var output = new Google.Protobuf.CodedOutputStream(stream, leaveOpen: true);
            output.WriteTag(1000, Google.Protobuf.WireFormat.WireType.LengthDelimited);
            output.WriteBytes(Google.Protobuf.ByteString.CopyFrom(new byte[padding]));
            output.Flush();
            if (stream.Length >= total)
            {
                Assert.Equal(total, stream.Length);
                return stream.ToArray();
            }
        }
    }

    /// <summary>One gzip member of <paramref name="data"/>.</summary>
    public static byte[] Gzip(byte[] data)
    {
        using var output = new MemoryStream();
        using (var gzip = new System.IO.Compression.GZipStream(output, System.IO.Compression.CompressionLevel.Optimal))
        {
            gzip.Write(data);
        }

        return output.ToArray();
    }

    /// <summary><paramref name="message"/> behind gRPC's 5-byte header: the compressed flag and the length.</summary>
    public static byte[] Frame(byte[] message, bool compressed)
    {
        var frame = new byte[5 + message.Length];
        frame[0] = compressed ? (byte)1 : (byte)0;
        System.Buffers.Binary.BinaryPrimitives.WriteUInt32BigEndian(frame.AsSpan(1), (uint)message.Length);
        message.CopyTo(frame, 5);
        return frame;
    }
}
