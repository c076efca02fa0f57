using System.Net;
using System.Net.Http.Headers;
using System.Security.Cryptography.X509Certificates;
using Grpc.AspNetCore.Server;
using Grpc.Core;
using Grpc.Net.Compression;
using Kms.Contracts.V1;
using Kms.Testing;
using Microsoft.Extensions.DependencyInjection;
using static Kms.Server.Tests.RawGrpcCall;

namespace Kms.Server.Tests;

/// <summary>
/// The largest request a method takes is the largest a valid request of it can be (SECURITY.md
/// claim 106): 64 KiB for a method that carries no data (GetKey, List*, GenerateRandom...), 256 KiB
/// for a call of one item of data (Encrypt, Decrypt, Sign...), <c>Kms:MaxRequestBytes</c> (5 MiB) for
/// the batches — before, every method took 5 MiB — refused RESOURCE_EXHAUSTED on the message's header,
/// or while a compressed one is inflated. And a compressed message is inflated only once its caller's
/// credential is checked: a caller without a valid one makes the server inflate at most 4 KiB of it.
/// </summary>
public sealed class PerMethodRequestLimitTests : IAsyncLifetime
{
    private readonly InflatedBytes _inflated = new();
    private KmsTestServer _server = null!;

    public async Task InitializeAsync() =>
        _server = await KmsTestServer.StartAsync(null, null, "dev",
            services => services.Configure<GrpcServiceOptions>(o => o.CompressionProviders = [new CountingGzip(_inflated)]));

    public async Task DisposeAsync() => await _server.DisposeAsync();

    [Fact]
    public async Task SmallMethod_AMessageOverItsBound_ResourceExhaustedOnItsHeader_DataCallsAndBatchesKeepTheirs()
    {
        // GenerateRandom { length_bytes: 8 } padded with an unknown field to 100 KiB: served before (5 MiB for every method).
        var (status, detail) = await SendAsync(Frame(Padded(100 * 1024), compressed: false), null, _server.DeveloperToken, "/kms.v1.KeyManagementService/GenerateRandom");
        Assert.True(status == StatusCode.ResourceExhausted, $"{status} \"{detail}\"");
        Assert.Equal("the request's message is 102400 bytes; this server takes at most 65536 (a request of a method that carries no data)", detail);

        // Within the bound it is served.
        (status, detail) = await SendAsync(Frame(Padded(60 * 1024), compressed: false), null, _server.DeveloperToken, "/kms.v1.KeyManagementService/GenerateRandom");
        Assert.True(status == StatusCode.OK, $"{status} \"{detail}\"");

        // An Encrypt of the largest plaintext with a full encryption context is read (its key does not exist).
        var encrypt = new EncryptRequest { Name = "tenants/dev/keys/no-such-key", Plaintext = Google.Protobuf.ByteString.CopyFrom(new byte[64 * 1024]) };
        for (var i = 0; i < 64; i++)
        {
            encrypt.EncryptionContext.Add(i.ToString("D3", System.Globalization.CultureInfo.InvariantCulture) + new string('k', 253), new string('v', 1024));
        }

        (status, detail) = await SendAsync(Frame(Google.Protobuf.MessageExtensions.ToByteArray(encrypt), compressed: false), null, _server.DeveloperToken, "/kms.v1.KeyManagementService/Encrypt");
        Assert.True(status == StatusCode.NotFound, $"{status} \"{detail}\"");

        // A batch of 1 MiB is read too.
        var batch = new BatchEncryptRequest();
        for (var i = 0; i < 16; i++)
        {
            batch.Requests.Add(new EncryptRequest { Name = "tenants/dev/keys/no-such-key", Plaintext = Google.Protobuf.ByteString.CopyFrom(new byte[64 * 1024]) });
        }

        (status, detail) = await SendAsync(Frame(Google.Protobuf.MessageExtensions.ToByteArray(batch), compressed: false), null, _server.DeveloperToken, "/kms.v1.KeyManagementService/BatchEncrypt");
        Assert.True(status != StatusCode.ResourceExhausted, $"{status} \"{detail}\"");
    }

    [Fact]
    public async Task GzipBomb_WithoutAValidCredential_InflatedNoFurtherThan4KiB_WithOne_NoFurtherThanItsMethodsBound()
    {
        // Three mebibytes of zeros, about three kilobytes gzipped: arriving whole with its headers it
        // was inflated to the end (BatchEncrypt takes 5 MiB) before the call was refused UNAUTHENTICATED.
        var bomb = Gzip(new byte[3 * 1024 * 1024]);
        Assert.True(bomb.Length < 4096);

        var (status, _) = await SendAsync(Frame(bomb, compressed: true), "gzip", ApiTokenOfNobody(), "/kms.v1.KeyManagementService/BatchEncrypt");
        Assert.Equal(StatusCode.Unauthenticated, status);
        // The bound and the one byte that shows the message is longer (before, a whole segment's
        // room, 16 KiB, was inflated in one read before the bound was checked).
        Assert.True(_inflated.Value <= 4096 + 1, $"{_inflated.Value} bytes inflated for a caller without a valid credential");

        // An authenticated caller's bomb to a method of small requests stops at its 64 KiB.
        _inflated.Value = 0;
        (status, var detail) = await SendAsync(Frame(bomb, compressed: true), "gzip", _server.DeveloperToken, "/kms.v1.KeyManagementService/GetKey");
        Assert.True(status == StatusCode.ResourceExhausted, $"{status} \"{detail}\"");
        Assert.Equal("the request's message decompresses (gzip) to more than 65536 bytes, the most this server takes (a request of a method that carries no data)", detail);
        Assert.True(_inflated.Value <= (64 * 1024) + 1, $"{_inflated.Value} bytes inflated for a GetKey");
    }

    private static string ApiTokenOfNobody() => Kms.Core.Access.ApiTokenSecret.Create().Text;

    // GenerateRandomRequest { length_bytes: 8 } and an unknown bytes field (number 1000) that makes it `total` bytes.
    private static byte[] Padded(int total) => RawGrpcCall.Padded(new GenerateRandomRequest { LengthBytes = 8 }, total);

    private Task<(StatusCode Status, string Message)> SendAsync(byte[] body, string? encoding, string? token, string path) =>
        RawGrpcCall.SendAsync(_server, body, encoding, token, path);

    /// <summary>Bytes the server's gzip provider inflated.</summary>
    private sealed class InflatedBytes
    {
        private long _value;

        public long Value
        {
            get => Interlocked.Read(ref _value);
            set => Interlocked.Exchange(ref _value, value);
        }

        public void Add(int count) => Interlocked.Add(ref _value, count);
    }

    /// <summary>gzip, counting what it inflates.</summary>
    private sealed class CountingGzip(InflatedBytes inflated) : ICompressionProvider
    {
        public string EncodingName => "gzip";

        public Stream CreateCompressionStream(Stream stream, System.IO.Compression.CompressionLevel? compressionLevel) =>
            new System.IO.Compression.GZipStream(stream, compressionLevel ?? System.IO.Compression.CompressionLevel.Fastest, leaveOpen: true);

        public Stream CreateDecompressionStream(Stream stream) =>
            new Counting(new System.IO.Compression.GZipStream(stream, System.IO.Compression.CompressionMode.Decompress, leaveOpen: true), inflated);

        private sealed class Counting(Stream inner, InflatedBytes inflated) : Stream
        {
            public override bool CanRead => true;

            public override bool CanSeek => false;

            public override bool CanWrite => false;

            public override long Length => throw new NotSupportedException();

            public override long Position { get => throw new NotSupportedException(); set => throw new NotSupportedException(); }

            public override int Read(byte[] buffer, int offset, int count)
            {
                var read = inner.Read(buffer, offset, count);
                inflated.Add(read);
                return read;
            }

            public override int Read(Span<byte> buffer)
            {
                var read = inner.Read(buffer);
                inflated.Add(read);
                return read;
            }

            public override void Flush()
            {
            }

            public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();

            public override void SetLength(long value) => throw new NotSupportedException();

            public override void Write(byte[] buffer, int offset, int count) => throw new NotSupportedException();

            protected override void Dispose(bool disposing)
            {
                if (disposing)
                {
                    inner.Dispose();
                }

                base.Dispose(disposing);
            }
        }
    }
}
