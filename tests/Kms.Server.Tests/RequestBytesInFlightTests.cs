using System.Buffers.Binary;
using Grpc.AspNetCore.Server;
using Grpc.Core;
using Grpc.Core.Interceptors;
using Kms.Contracts.V1;
using Kms.Server.Hosting;
using Kms.Server.Overload;
using Kms.Testing;
using Microsoft.Extensions.DependencyInjection;

namespace Kms.Server.Tests;

/// <summary>
/// What one tenant's calls can make the server hold while their messages are still arriving is
/// bounded (SECURITY.md claim 133): <c>Kms:MaxRequestBytesInFlightPerTenant</c>, past which a
/// message that has not all arrived is refused RESOURCE_EXHAUSTED instead of being waited for, and
/// a compressed message whose inflation would pass it is refused while it is inflated.
/// </summary>
public sealed class RequestBytesInFlightTests
{
    private const string GenerateRandom = "/kms.v1.KeyManagementService/GenerateRandom";
    private const string BatchEncrypt = "/kms.v1.KeyManagementService/BatchEncrypt";
    private const string BatchDecrypt = "/kms.v1.KeyManagementService/BatchDecrypt";
    private const int InflatedBytes = (5 * 1024 * 1024) - (64 * 1024);
    private const int MessageBytes = 64 * 1024;
    private const int Sent = 32 * 1024;
    private static readonly TimeSpan Generously = TimeSpan.FromSeconds(30);

    [Fact]
    public async Task MessagesStillArriving_OfOneTenant_PastItsBound_Refused_OtherTenantsAndItsLaterCallsServed()
    {
        // Before, each stream of an authenticated caller that sent most of its message and then held
        // back the rest was waited for, its bytes held (Kestrel's minimum data rate is an average
        // since the body began): one low-privilege token, 64 connections × 100 streams × 5 MiB.
        await using var server = await KmsTestServer.StartAsync(null, null, "dev",
            $"--Kms:MaxRequestBytes={MessageBytes}", $"--Kms:MaxRequestBytesInFlightPerTenant={4 * MessageBytes}");
        await server.EnsureTenantAsync("acme");
        var acme = await server.CreatePrincipalWithTokenAsync("acme-user", "acme", "key-user");
        await using var connection = await RawHttp2.ConnectAsync(server.Address, server.CaCertificatePath);
        _ = connection.StartReading();
        var message = Message();
        var dev = RawHttp2.GrpcHeaderBlock(GenerateRandom, server.DeveloperToken, server.Address);

        // Five messages of tenant dev, each half sent: four fit its bound, one does not.
        int[] streams = [1, 3, 5, 7, 9];
        foreach (var stream in streams)
        {
            await connection.WriteFrameAsync(RawHttp2.Headers, RawHttp2.EndHeaders, stream, dev);
            Assert.True(await connection.SendDataAsync(stream, message.AsMemory(0, 5 + Sent), Generously), connection.Debug);
        }

        var refused = await FirstEndedAsync(connection, streams);
        Assert.True(refused.Count == 1, refused.Count == 0
            ? "no message was refused: the server waited for five half-sent messages of one tenant, 4 × 64 KiB allowed"
            : $"{refused.Count} messages refused, one expected");
        var (refusedStream, answer) = refused.Single();
        Assert.Contains("grpc-status8", answer, StringComparison.Ordinal);
        Assert.Contains("Kms:MaxRequestBytesInFlightPerTenant", answer, StringComparison.Ordinal);

        // Another tenant's message is its own tenant's to count: served. (Each check of a status
        // is the first answer on its connection: later ones name their headers by HPACK index.)
        await using (var other = await RawHttp2.ConnectAsync(server.Address, server.CaCertificatePath))
        {
            _ = other.StartReading();
            await other.WriteFrameAsync(RawHttp2.Headers, RawHttp2.EndHeaders, 1, RawHttp2.GrpcHeaderBlock(GenerateRandom, acme, server.Address));
            await SendWholeAsync(other, 1, message);
            Assert.Contains("grpc-status0", Assert.Single((await other.StreamEndsAsync([1], Generously)).Values), StringComparison.Ordinal);
        }

        // The four held ones are served once they arrive, and their bytes given back: dev's next is
        // served too (with the four still counted, it would be past the bound).
        var held = streams.Where(s => s != refusedStream).ToList();
        foreach (var stream in held)
        {
            await SendWholeAsync(connection, stream, message, 5 + Sent);
        }

        var answers = await connection.StreamEndsAsync(held, Generously);
        Assert.Equal(4, answers.Count);
        Assert.All(answers.Values, a => Assert.DoesNotContain("MaxRequestBytesInFlightPerTenant", a, StringComparison.Ordinal));

        await using var after = await RawHttp2.ConnectAsync(server.Address, server.CaCertificatePath);
        _ = after.StartReading();
        await after.WriteFrameAsync(RawHttp2.Headers, RawHttp2.EndHeaders, 1, dev);
        Assert.True(await after.SendDataAsync(1, message.AsMemory(0, 5 + Sent), Generously), after.Debug);
        await SendWholeAsync(after, 1, message, 5 + Sent);
        Assert.Contains("grpc-status0", Assert.Single((await after.StreamEndsAsync([1], Generously)).Values), StringComparison.Ordinal);
    }

    [Fact]
    public async Task GzipMessages_OfOneTenant_InflatedPastItsBound_Refused_OtherTenantsAndItsLaterCallsServed()
    {
        // 5 MiB less 64 KiB of zeros, about 5 KiB gzipped, arrives whole with its headers: before, it
        // was not counted, and each such call of one low-privilege token had the server hold its
        // inflated 5 MiB until the call ended, whatever its tenant's bound (64 MiB: 12 such messages).
        // Kms:MaxConcurrentCallsPerTenant (256 by default) does not bound it: its slot is taken after
        // the message is inflated, and 256 calls hold 1.25 GiB.
        var gate = new HandlerGate();
        await using var server = await KmsTestServer.StartAsync(null, null, "dev", services =>
        {
            services.AddSingleton(gate);
            services.Configure<GrpcServiceOptions>(o => o.Interceptors.Add<HandlerGate>());
        });
        await server.EnsureTenantAsync("acme");
        var acme = await server.CreatePrincipalWithTokenAsync("acme-user", "acme", "key-user");
        var inFlight = server.Services.GetRequiredService<RequestBytesInFlight>();
        var bound = inFlight.PerTenant;
        const int Calls = 16;
        var bomb = RawGrpcCall.Frame(RawGrpcCall.Gzip(RawGrpcCall.Padded(new BatchEncryptRequest { Requests = { new EncryptRequest { Name = "tenants/dev/keys/k" } } }, InflatedBytes)), compressed: true);
        Assert.True(bomb.Length < 16 * 1024);
        Assert.True(Calls * (long)InflatedBytes > bound);

        // Each on a connection of its own; the calls that reach a handler wait there, their messages held.
        var answered = new System.Collections.Concurrent.ConcurrentQueue<(StatusCode Status, string Message)>();
        var calls = Enumerable.Range(0, Calls).Select(async _ =>
        {
            var answer = await RawGrpcCall.SendAsync(server, bomb, "gzip", server.DeveloperToken, BatchEncrypt);
            answered.Enqueue(answer);
            gate.Settled.Release();
            return answer;
        }).ToList();
        try
        {
            for (var settled = 0; settled < Calls; settled++)
            {
                Assert.True(await gate.Settled.WaitAsync(Generously), $"{settled} of {Calls} calls settled (answered, or held in a handler)");
            }

            Assert.True(gate.HeldBytes <= bound, $"{gate.HeldCalls} gzip messages of one tenant held at once, inflated to {gate.HeldBytes} bytes; its bound (Kms:MaxRequestBytesInFlightPerTenant) is {bound}");
            Assert.True(gate.HeldCalls > 0, "no call was served");
            // A refused call's answer can reach its client before the server has given back what it
            // counted for it (a full run under load saw one compressed message, 5,101 bytes, still
            // counted): polled, not read once.
            Assert.True(await UntilAsync(() => inFlight.Held("t:dev") == gate.HeldBytes), $"{inFlight.Held("t:dev")} bytes counted against dev; the held calls hold {gate.HeldBytes}");
            var refused = answered.ToList();
            Assert.Equal(Calls - gate.HeldCalls, refused.Count);
            Assert.All(refused, r =>
            {
                Assert.True(r.Status == StatusCode.ResourceExhausted, $"{r.Status} \"{r.Message}\"");
                Assert.Contains("(Kms:MaxRequestBytesInFlightPerTenant)", r.Message, StringComparison.Ordinal);
            });

            // Another tenant's are its own to count: served while dev's are held (BatchDecrypt is not held).
            var (otherStatus, otherDetail) = await RawGrpcCall.SendAsync(server, RawGrpcCall.Frame(RawGrpcCall.Gzip(RawGrpcCall.Padded(new BatchDecryptRequest(), InflatedBytes)), compressed: true), "gzip", acme, BatchDecrypt);
            Assert.True(otherStatus != StatusCode.ResourceExhausted, $"{otherStatus} \"{otherDetail}\"");
        }
        finally
        {
            // Held calls end before the server stops, whatever failed above.
            gate.Open();
        }

        // Once the held calls end, their bytes are given back, and dev's next is served.
        var answers = await Task.WhenAll(calls);
        Assert.Equal(Calls - gate.HeldCalls, answers.Count(a => a.Status == StatusCode.ResourceExhausted));
        Assert.True(await UntilAsync(() => inFlight.Held("t:dev") == 0), $"{inFlight.Held("t:dev")} bytes still counted against dev after its calls ended");
        var (status, detail) = await RawGrpcCall.SendAsync(server, bomb, "gzip", server.DeveloperToken, BatchEncrypt);
        Assert.True(status != StatusCode.ResourceExhausted, $"{status} \"{detail}\"");
    }

    [Fact]
    public async Task CompressedMessage_WhoseInflationThrows_WhatItCountedGivenBack()
    {
        // A decompression that fails with anything but InvalidDataException (zlib's own
        // ZLibException, an IOException; a provider's): the bytes it had counted against the
        // tenant were never given back, and each such call took that much of its bound for good.
        await using var server = await KmsTestServer.StartAsync(null, null, "dev", services =>
            services.Configure<GrpcServiceOptions>(o => o.CompressionProviders.Add(new FailingCompression())));
        var inFlight = server.Services.GetRequiredService<RequestBytesInFlight>();

        var (status, detail) = await RawGrpcCall.SendAsync(server, RawGrpcCall.Frame(new byte[16], compressed: true), FailingCompression.Name, server.DeveloperToken, BatchEncrypt);
        Assert.True(status != StatusCode.OK, $"{status} \"{detail}\"");
        Assert.True(await UntilAsync(() => inFlight.Held("t:dev") == 0), $"{inFlight.Held("t:dev")} bytes still counted against dev after its call ended");
    }

    [Fact]
    public async Task Build_ABoundBelowTheLargestMessage_Refused_NamingBothOptions()
    {
        var dataDir = Path.Combine(Path.GetTempPath(), $"kms-never-{Guid.NewGuid():N}");
        var e = await Assert.ThrowsAsync<InvalidOperationException>(() => KmsServerApp.BuildAsync(
            ["--dev", "--urls=https://127.0.0.1:0", "--Kms:MaxRequestBytesInFlightPerTenant=1000", $"--Kms:DataDir={dataDir}"]));
        Assert.StartsWith("Kms:MaxRequestBytesInFlightPerTenant (1000) must be at least Kms:MaxRequestBytes (5242880)", e.Message, StringComparison.Ordinal);
        Assert.False(Directory.Exists(dataDir));
    }

    private static async Task SendWholeAsync(RawHttp2 connection, int stream, byte[] message, int from = 0)
    {
        Assert.True(await connection.SendDataAsync(stream, message.AsMemory(from), Generously), connection.Debug);
        await connection.WriteFrameAsync(RawHttp2.Data, RawHttp2.EndStream, stream, []);
    }

    private static async Task<Dictionary<int, string>> FirstEndedAsync(RawHttp2 connection, int[] streams)
    {
        // A hang guard, not a measurement: the refusal is answered at once.
        for (var waited = TimeSpan.Zero; waited < Generously; waited += TimeSpan.FromMilliseconds(20))
        {
            if (await connection.StreamEndsAsync(streams, TimeSpan.Zero) is { Count: > 0 } ended)
            {
                return ended;
            }

            await Task.Delay(20);
        }

        return [];
    }

    // A hang guard, not a measurement: the call's bytes are given back as it ends.
    private static async Task<bool> UntilAsync(Func<bool> condition)
    {
        for (var waited = TimeSpan.Zero; waited < Generously; waited += TimeSpan.FromMilliseconds(20))
        {
            if (condition())
            {
                return true;
            }

            await Task.Delay(20);
        }

        return condition();
    }

    /// <summary>Holds the BatchEncrypt calls that reach a handler until opened, counting them and their messages' bytes.</summary>
    private sealed class HandlerGate : Interceptor
    {
        private readonly TaskCompletionSource _open = new(TaskCreationOptions.RunContinuationsAsynchronously);
        private long _heldBytes;
        private int _heldCalls;

        /// <summary>Released once per call held, and by the test once per call answered.</summary>
        public SemaphoreSlim Settled { get; } = new(0);

        public long HeldBytes => Interlocked.Read(ref _heldBytes);

        public int HeldCalls => Volatile.Read(ref _heldCalls);

        public void Open() => _open.TrySetResult();

        public override async Task<TResponse> UnaryServerHandler<TRequest, TResponse>(TRequest request, ServerCallContext context, UnaryServerMethod<TRequest, TResponse> continuation)
        {
            if (request is BatchEncryptRequest batch && !_open.Task.IsCompleted)
            {
                Interlocked.Add(ref _heldBytes, batch.CalculateSize());
                Interlocked.Increment(ref _heldCalls);
                Settled.Release();
                await _open.Task;
            }

            return await continuation(request, context);
        }
    }

    // GenerateRandomRequest { length_bytes: 8 } padded to MessageBytes with an unknown field
    // (15, length-delimited), framed: a valid request of the largest size allowed.
    private static byte[] Message()
    {
        const int padding = MessageBytes - 6; // 08 08, the tag 7A, a 3-byte length
        var framed = new byte[5 + MessageBytes];
        BinaryPrimitives.WriteUInt32BigEndian(framed.AsSpan(1), MessageBytes);
        byte[] prefix = [0x08, 0x08, 0x7A, (byte)(0x80 | (padding & 0x7F)), (byte)(0x80 | ((padding >> 7) & 0x7F)), (byte)(padding >> 14)];
        prefix.CopyTo(framed, 5);
        return framed;
    }

    /// <summary>A compression whose decompression inflates <see cref="Produced"/> bytes, then fails with an IOException.</summary>
    private sealed class FailingCompression : global::Grpc.Net.Compression.ICompressionProvider
    {
        public const string Name = "fails-midway";
        public const int Produced = 1000;

        public string EncodingName => Name;

        public Stream CreateCompressionStream(Stream stream, System.IO.Compression.CompressionLevel? compressionLevel) => throw new NotSupportedException();

        public Stream CreateDecompressionStream(Stream stream) => new Failing();

        private sealed class Failing : Stream
        {
            private bool _produced;

            public override bool CanRead => true;

            public override bool CanSeek => false;

            public override bool CanWrite => false;

            public override long Length => throw new NotSupportedException();

            public override long Position { get => throw new NotSupportedException(); set => throw new NotSupportedException(); }

            public override int Read(byte[] buffer, int offset, int count)
            {
                if (_produced)
                {
                    throw new IOException("the decompression failed");
                }

                _produced = true;
                return Math.Min(count, Produced);
            }

            public override void Flush()
            {
            }

            public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();

            public override void SetLength(long value) => throw new NotSupportedException();

            public override void Write(byte[] buffer, int offset, int count) => throw new NotSupportedException();
        }
    }
}
