using System.Net;
using System.Net.Http.Headers;
using System.Security.Cryptography.X509Certificates;
using Grpc.Core;
using Kms.Contracts.V1;
using Kms.Server.Grpc;
using Kms.Testing;
using Microsoft.Extensions.DependencyInjection;
using static Kms.Server.Tests.RawGrpcCall;

namespace Kms.Server.Tests;

/// <summary>
/// Requests whose gRPC framing is wrong — the 5-byte header before each message (a compressed
/// flag and a length), sent as raw HTTP/2 over TLS, as no gRPC client would write them: a clear
/// INVALID_ARGUMENT (RESOURCE_EXHAUSTED for a message over the size limit, gRPC's convention),
/// after authentication, counted and audited as a refusal, nothing logged at Error, the server
/// still serving.
/// </summary>
public sealed class GrpcFramingTests(ServerFixture fixture) : IClassFixture<ServerFixture>
{
    private const string GetKey = "/kms.v1.KeyManagementService/GetKey";

    public static TheoryData<string, string, string?, StatusCode, string> Frames() => new()
    {
        // case, body (hex), grpc-encoding, status, in the detail
        { "a frame cut short", "000000000A0A0161", null, StatusCode.InvalidArgument, "cut short" },
        { "a header cut short", "000000", null, StatusCode.InvalidArgument, "cut short" },
        { "no message", "", null, StatusCode.InvalidArgument, "no message" },
        { "two messages", "00000000000000000000", null, StatusCode.InvalidArgument, "more than one message" },
        { "compressed without grpc-encoding", "01000000020801", null, StatusCode.InvalidArgument, "compressed" },
        { "compressed under identity", "01000000020801", "identity", StatusCode.InvalidArgument, "compressed" },
        { "a compressed flag of 2", "0200000000", null, StatusCode.InvalidArgument, "flag" },
        { "gzip that is not gzip", "0100000003AABBCC", "gzip", StatusCode.InvalidArgument, "decompress" },
        // A gzip message cut short, which GZipStream inflated to the part that arrived.
        { "gzip cut short in its deflate data", Hex(Frame(GzippedGetKey()[..^12], compressed: true)), "gzip", StatusCode.InvalidArgument, "not one whole gzip member" },
        { "gzip without its trailer", Hex(Frame(GzippedGetKey()[..^8], compressed: true)), "gzip", StatusCode.InvalidArgument, "not one whole gzip member" },
        { "gzip with half its trailer", Hex(Frame(GzippedGetKey()[..^4], compressed: true)), "gzip", StatusCode.InvalidArgument, "not one whole gzip member" },
        { "gzip header only", Hex(Frame(GzippedGetKey()[..10], compressed: true)), "gzip", StatusCode.InvalidArgument, "not one whole gzip member" },
        { "gzip of two members", Hex(Frame([.. GzippedGetKey(), .. GzippedGetKey()], compressed: true)), "gzip", StatusCode.InvalidArgument, "not one whole gzip member" },
        { "gzip with bytes after it", Hex(Frame([.. GzippedGetKey(), 0, 0], compressed: true)), "gzip", StatusCode.InvalidArgument, "has bytes after it" },
        { "gzip with a wrong CRC", Hex(Frame(Flip(GzippedGetKey(), ^8), compressed: true)), "gzip", StatusCode.InvalidArgument, "decompress" },
        { "gzip with a wrong length", Hex(Frame(Flip(GzippedGetKey(), ^1), compressed: true)), "gzip", StatusCode.InvalidArgument, "decompress" },
        { "over the size limit", "0000600000" + "0A01", null, StatusCode.ResourceExhausted, "65536" },
        { "a length over 2^31", "00FFFFFFFF", null, StatusCode.ResourceExhausted, "65536" },
    };

    [Theory]
    [MemberData(nameof(Frames))]
    public async Task BadFraming_AuthenticatedClearStatus_AnonymousUnauthenticated_NoErrorLogged(string what, string hex, string? encoding, StatusCode expected, string detail)
    {
        var errorsBefore = ErrorCount();

        var (status, message) = await SendAsync(hex, encoding, fixture.Server.DeveloperToken);
        var (anonymous, _) = await SendAsync(hex, encoding, token: null);

        Assert.True(expected == status, $"{what}: {status} \"{message}\"");
        Assert.Contains(detail, message, StringComparison.Ordinal);
        Assert.Equal(StatusCode.Unauthenticated, anonymous);
        Assert.Equal(errorsBefore, ErrorCount());

        // The server still serves a well-formed call.
        Assert.Equal(32, (await fixture.Client.Raw.GenerateRandomAsync(new GenerateRandomRequest { LengthBytes = 32 })).Data.Length);
    }

    [Theory]
    [InlineData("000000000A0A0161", null)]
    [InlineData(null, "gzip")] // a gzip message cut short in its trailer
    public async Task BadFraming_AuditedAsAnAggregatedRefusal(string? hex, string? encoding)
    {
        using var officer = fixture.Server.CreateClient(await fixture.Server.CreatePrincipalWithTokenAsync(ServerFixture.NewKeyId("officer"), null, "security-officer"));
        var before = (await RefusalsAsync(officer, "INVALID_ARGUMENT")).Sum(e => e.Count);
        hex ??= Hex(Frame(GzippedGetKey()[..^4], compressed: true));

        for (var i = 0; i < 3; i++)
        {
            Assert.Equal(StatusCode.InvalidArgument, (await SendAsync(hex, encoding, fixture.Server.DeveloperToken)).Status);
        }

        var events = await RefusalsAsync(officer, "INVALID_ARGUMENT");
        Assert.Equal(before + 3, events.Sum(e => e.Count));
        Assert.All(events, e => Assert.Equal("dev", e.Tenant));
    }

    [Fact]
    public async Task WellFormedFrame_Served()
    {
        var message = Google.Protobuf.MessageExtensions.ToByteArray(new GenerateRandomRequest { LengthBytes = 8 });

        var (status, detail) = await SendAsync(Frame(message, compressed: false), null, fixture.Server.DeveloperToken, "/kms.v1.KeyManagementService/GenerateRandom");

        Assert.True(status == StatusCode.OK, $"{status} \"{detail}\"");
    }

    [Fact]
    public async Task Gzip_ACompressedMessage_Served()
    {
        var message = Google.Protobuf.MessageExtensions.ToByteArray(new GenerateRandomRequest { LengthBytes = 8 });

        var (status, detail) = await SendAsync(Frame(Gzip(message), compressed: true), "gzip", fixture.Server.DeveloperToken, "/kms.v1.KeyManagementService/GenerateRandom");

        Assert.True(status == StatusCode.OK, $"{status} \"{detail}\"");
    }

    [Theory]
    [InlineData((2 * MessageInflater.SegmentBytes) - 5)] // the inflated frame ends exactly on its second segment's end
    [InlineData((3 * MessageInflater.SegmentBytes) + 4097)] // odd, a fourth segment begun
    [InlineData((5 * 1024 * 1024) - 3)] // odd, nearly Kms:MaxRequestBytes: some 320 segments
    public async Task Gzip_AMessageInflatedIntoSeveralSegments_ServedWithItsPlaintexts(int length)
    {
        // The message is inflated into a chain of segments (MessageInflater), a plaintext cut across
        // them wherever it falls; what grpc-dotnet parses from them must be what was sent.
        var key = await fixture.Client.CreateKeyAsync("tenants/dev", ServerFixture.NewKeyId("gz"));
        var random = new Random(length);
        var batch = new BatchEncryptRequest();
        var plaintextBytes = 0;
        while (batch.CalculateSize() + 10_000 + 64 < length && plaintextBytes + 10_000 <= 3 * 1024 * 1024) // their ciphertexts within a batch to decrypt
        {
            var plaintext = new byte[random.Next(5_000, 10_000)];
            random.NextBytes(plaintext);
            plaintextBytes += plaintext.Length;
            batch.Requests.Add(new EncryptRequest { Name = key.Name, Plaintext = Google.Protobuf.ByteString.CopyFrom(plaintext) });
        }

        var (status, detail, response) = await SendForResponseAsync(fixture.Server, Frame(Gzip(Padded(batch, length)), compressed: true), "gzip", fixture.Server.DeveloperToken, "/kms.v1.KeyManagementService/BatchEncrypt");

        Assert.True(status == StatusCode.OK, $"{status} \"{detail}\"");
        var encrypted = BatchEncryptResponse.Parser.ParseFrom(response);
        Assert.Equal(batch.Requests.Count, encrypted.Results.Count);
        var decrypted = await fixture.Client.BatchDecryptAsync(new BatchDecryptRequest { Requests = { encrypted.Results.OrderBy(r => r.Index).Select(r => new DecryptRequest { Ciphertext = r.Response.Ciphertext }) } });
        Assert.Equal(batch.Requests.Select(r => r.Plaintext), decrypted.Results.OrderBy(r => r.Index).Select(r => r.Response.Plaintext));
    }

    [Fact]
    public async Task Gzip_AMessageThatInflatesPastTheLimit_ResourceExhausted_NoErrorLogged()
    {
        // Six thousand bytes on the wire, six mebibytes once inflated: refused while inflating,
        // past the limit, after authentication, with the limit named (grpc-dotnet 2.85 answered
        // RESOURCE_EXHAUSTED "Received message exceeds the maximum configured message size."
        // before authentication).
        var errorsBefore = ErrorCount();
        var bomb = Gzip(new byte[6 * 1024 * 1024]);
        Assert.True(bomb.Length < 64 * 1024);

        var (status, detail) = await SendAsync(Frame(bomb, compressed: true), "gzip", fixture.Server.DeveloperToken, GetKey);
        var (anonymous, _) = await SendAsync(Frame(bomb, compressed: true), "gzip", token: null, GetKey);

        Assert.True(status == StatusCode.ResourceExhausted, $"{status} \"{detail}\"");
        Assert.Contains("decompresses (gzip) to more than 65536 bytes", detail, StringComparison.Ordinal); // GetKey's bound (PerMethodRequestLimitTests)
        Assert.Equal(StatusCode.Unauthenticated, anonymous);
        Assert.Equal(errorsBefore, ErrorCount());
    }

    // A GetKey request for a key that does not exist, gzipped: whole, it is NOT_FOUND.
    private static byte[] GzippedGetKey() =>
        Gzip(Google.Protobuf.MessageExtensions.ToByteArray(new GetKeyRequest { Name = "tenants/dev/keys/no-such-key-anywhere-at-all" }));

    private static byte[] Flip(byte[] bytes, Index at)
    {
        var flipped = (byte[])bytes.Clone();
        flipped[at] ^= 1;
        return flipped;
    }

    private static string Hex(byte[] bytes) => Convert.ToHexString(bytes);

    private int ErrorCount() => fixture.Server.Logs.Events.Count(e => e.StartsWith("Error", StringComparison.Ordinal));

    // The refusals of bodyless GetKey calls by the developer, refusal windows closed first.
    private async Task<List<AuditEventInfo>> RefusalsAsync(Kms.Client.KmsClient officer, string outcome)
    {
        await fixture.Server.Services.GetRequiredService<Kms.Core.Services.AuditLog>().FlushRefusalsAsync(default);
        var request = new ListAuditEventsRequest { Principal = "token:developer", Operation = GetKey, Outcome = outcome, PageSize = 1000 };
        return [.. (await officer.Audit.ListAuditEventsAsync(request)).Events.Where(e => e.Resource.Length == 0)];
    }

    // One gRPC call as raw HTTP/2 over TLS: the status and message, from the trailers or (a
    // trailers-only answer) the headers.
    private Task<(StatusCode Status, string Message)> SendAsync(string hex, string? encoding, string? token, string path = GetKey) =>
        SendAsync(Convert.FromHexString(hex), encoding, token, path);

    private Task<(StatusCode Status, string Message)> SendAsync(byte[] body, string? encoding, string? token, string path) =>
        RawGrpcCall.SendAsync(fixture.Server, body, encoding, token, path);
}
