using System.Net;
using Kms.Server.Hosting;

namespace Kms.Server.Tests;

/// <summary>
/// Header floods (SECURITY.md claim 142): what a request's headers can make the server decode and
/// hold, before any credential is checked. Each request goes out on a connection of its own, from
/// an address of its own (127.0.1.x), so that what one closes says nothing of the next. Kestrel
/// counts a request's decoded names and values (an indexed field each time it is referenced):
/// past <see cref="RequestHeaderLimits.TotalBytes"/> the request is answered 431, past twice that
/// the connection is closed at that field (GOAWAY) — so no request is decoded further.
/// </summary>
public sealed partial class TransportAbuseTests
{
    private const int Closed = -1;
    private static int _headerSource = 10;

    [Fact]
    public async Task HpackBomb_OneTableEntryReferencedThousandsOfTimes_DecodedNoFurtherThanTwiceTheBound_ConnectionClosed_OthersServed()
    {
        // One 4,000-byte value put in the connection's dynamic table, then named by its one-byte
        // index: each reference decodes to 4,006 bytes. A pad field brings the decoded total to the byte wanted.
        var headers = RawHttp2.GrpcHeaders(GenerateRandom, Server.DeveloperToken, Server.Address);
        var bomb = new string('b', 4000);
        byte[] Bomb(int references, int? decodedTotal)
        {
            var block = new MemoryStream();
            headers.ForEach(h => RawHttp2.Literal(block, h.Name, h.Value));
            RawHttp2.LiteralIndexed(block, "x-bomb", bomb);
            for (var i = 0; i < references; i++)
            {
                RawHttp2.Indexed(block, 62);
            }

            if (decodedTotal is { } total)
            {
                var sofar = headers.Sum(h => RawHttp2.DecodedSize(h.Name, h.Value)) + ((1 + references) * RawHttp2.DecodedSize("x-bomb", bomb));
                RawHttp2.Literal(block, "x-pad", new string('p', total - sofar - "x-pad".Length));
            }

            return block.ToArray();
        }

        const int bound = RequestHeaderLimits.TotalBytes;
        var outcomes = new Dictionary<string, int>
        {
            ["at the bound"] = await HeaderOutcomeAsync(Bomb(2, bound)),
            ["one byte past it"] = await HeaderOutcomeAsync(Bomb(2, bound + 1)),
            ["at twice the bound"] = await HeaderOutcomeAsync(Bomb(6, 2 * bound)),
            ["one byte past twice the bound"] = await HeaderOutcomeAsync(Bomb(6, (2 * bound) + 1)),

            // 10,000 references in 10 KB: 40 MB if all were decoded.
            ["10,000 references"] = await HeaderOutcomeAsync(Bomb(10_000, null)),
        };

        Assert.Equal(
            new Dictionary<string, int> { ["at the bound"] = 200, ["one byte past it"] = 431, ["at twice the bound"] = 431, ["one byte past twice the bound"] = Closed, ["10,000 references"] = Closed },
            outcomes);
        Assert.True(await LegitimateCallAsync());
    }

    [Fact]
    public async Task OneHugeHeader_OrAHugeAuthorization_SplitOverContinuationFrames_ClosedAtTheFieldBound_OthersServed()
    {
        // A field longer than RequestHeaderLimits.FieldBytes is refused as its length is read: a
        // megabyte sent in 64 CONTINUATION frames is not buffered. The longest JWT, with its scheme, fits.
        var headers = RawHttp2.GrpcHeaders(GenerateRandom, bearerToken: null, Server.Address);
        byte[] With(string name, int length, string prefix = "")
        {
            var block = new MemoryStream();
            headers.ForEach(h => RawHttp2.Literal(block, h.Name, h.Value));
            RawHttp2.Literal(block, name, prefix + new string('h', length - prefix.Length));
            return block.ToArray();
        }

        Assert.True(RequestHeaderLimits.FieldBytes >= "Bearer ".Length + Kms.Server.Security.JwtValidator.MaxTokenLength);
        const int bound = RequestHeaderLimits.FieldBytes;
        var outcomes = new Dictionary<string, int>
        {
            ["x-huge at the bound"] = await HeaderOutcomeAsync(With("x-huge", bound)),
            ["x-huge one byte past it"] = await HeaderOutcomeAsync(With("x-huge", bound + 1)),
            ["x-huge of a megabyte"] = await HeaderOutcomeAsync(With("x-huge", 1 << 20)),

            // A made-up API token as long as a field may be: checked and refused, UNAUTHENTICATED (16), the connection kept.
            ["authorization at the bound"] = await HeaderOutcomeAsync(With("authorization", bound, "Bearer kms_")),
            ["authorization one byte past it"] = await HeaderOutcomeAsync(With("authorization", bound + 1, "Bearer kms_")),
            ["authorization of a megabyte"] = await HeaderOutcomeAsync(With("authorization", 1 << 20, "Bearer kms_")),
        };

        Assert.Equal(
            new Dictionary<string, int>
            {
                ["x-huge at the bound"] = 16,
                ["x-huge one byte past it"] = Closed,
                ["x-huge of a megabyte"] = Closed,
                ["authorization at the bound"] = 16,
                ["authorization one byte past it"] = Closed,
                ["authorization of a megabyte"] = Closed,
            },
            outcomes);
        Assert.True(await LegitimateCallAsync());
    }

    [Fact]
    public async Task ManyHeaders_PastTheCount_Answered431_PastTwiceIt_ConnectionClosed_OthersServed()
    {
        // Pseudo-header fields count: the seven of a call and as many one-byte fields as wanted.
        var headers = RawHttp2.GrpcHeaders(GenerateRandom, Server.DeveloperToken, Server.Address);
        byte[] Fields(int count, bool sameName)
        {
            var block = new MemoryStream();
            headers.ForEach(h => RawHttp2.Literal(block, h.Name, h.Value));
            for (var i = headers.Count; i < count; i++)
            {
                RawHttp2.Literal(block, sameName ? "x-same" : $"x-{i}", "v");
            }

            return block.ToArray();
        }

        const int bound = RequestHeaderLimits.Count;
        var outcomes = new Dictionary<string, int>
        {
            ["at the bound"] = await HeaderOutcomeAsync(Fields(bound, sameName: false)),
            ["one past it"] = await HeaderOutcomeAsync(Fields(bound + 1, sameName: false)),
            ["one past it, one name"] = await HeaderOutcomeAsync(Fields(bound + 1, sameName: true)),
            ["twice the bound"] = await HeaderOutcomeAsync(Fields(2 * bound, sameName: false)),
            ["one past twice the bound"] = await HeaderOutcomeAsync(Fields((2 * bound) + 1, sameName: false)),
            ["10,000"] = await HeaderOutcomeAsync(Fields(10_000, sameName: true)),
        };

        Assert.Equal(
            new Dictionary<string, int> { ["at the bound"] = 200, ["one past it"] = 431, ["one past it, one name"] = 431, ["twice the bound"] = 431, ["one past twice the bound"] = Closed, ["10,000"] = Closed },
            outcomes);
        Assert.True(await LegitimateCallAsync());
    }

    [Fact]
    public async Task EmptyContinuationFlood_NothingDecodedOrHeld_ClosedAtTheHeadersTimeout_OthersServed()
    {
        // CVE-2024-27316's class: CONTINUATION frames without END_HEADERS, here empty — nothing to
        // decode, no size limit reached. Kestrel reads them until Kms:Transport:RequestHeadersTimeout
        // (5 s here) and closes the connection; meanwhile others are served.
        await using var attacker = await RawHttp2.ConnectAsync(Server.Address, Server.CaCertificatePath, NextHeaderSource());
        var closed = attacker.StartReading();
        await attacker.WriteFrameAsync(RawHttp2.Headers, 0, 1, RawHttp2.GrpcHeaderBlock(GenerateRandom, null, Server.Address));
        var batch = Enumerable.Repeat(RawHttp2.Frame(RawHttp2.Continuation, 0, 1, []), 1000).SelectMany(f => f).ToArray();
        var sent = 0L;
        var served = false;
        try
        {
            while (!closed.IsCompleted && sent < 100_000_000)
            {
                await attacker.WriteRawAsync(batch);
                sent += batch.Length / 9;
                if (!served && sent >= 100_000)
                {
                    served = await LegitimateCallAsync();
                }
            }
        }
        catch (IOException)
        {
            // the server closed the connection under the writes
        }

        Assert.True(await attacker.ClosedByServerAsync(Generously), $"{sent} empty CONTINUATION frames and the connection still open");
        Assert.True(served, "no call was served during the flood");
        Assert.True(await LegitimateCallAsync());
    }

    private static IPAddress NextHeaderSource() => IPAddress.Parse($"127.0.1.{Interlocked.Increment(ref _headerSource)}");

    /// <summary>
    /// Sends a GenerateRandom call whose header block is <paramref name="block"/> (HEADERS, then
    /// CONTINUATION frames of 16 KiB) on a new connection; the HTTP status it was answered (200 if the
    /// call succeeded) or its gRPC status if it failed, or <see cref="Closed"/> when the server closed
    /// the connection with a PROTOCOL_ERROR or COMPRESSION_ERROR GOAWAY instead. A call refused with
    /// a status is followed by a plain call on the same connection, which must be answered.
    /// </summary>
    private async Task<int> HeaderOutcomeAsync(byte[] block)
    {
        await using var connection = await RawHttp2.ConnectAsync(Server.Address, Server.CaCertificatePath, NextHeaderSource());
        var reading = connection.StartReading();
        try
        {
            await SendCallAsync(connection, 1, block);
        }
        catch (IOException)
        {
            // the server closed the connection under the writes
        }

        var answers = await connection.StreamEndsAsync([1], Generously);
        if (!answers.TryGetValue(1, out var text))
        {
            Assert.True(await connection.ClosedByServerAsync(Generously), "neither answered nor closed");
            Assert.True(connection.GoAwayError is 1 or 9, $"closed with GOAWAY {connection.GoAwayError}");
            return Closed;
        }

        var outcome = text.Contains("grpc-status0", StringComparison.Ordinal) ? 200
            : text.Contains("H431", StringComparison.Ordinal) ? 431
            : text.Contains("grpc-status16", StringComparison.Ordinal) ? 16
            : throw new InvalidOperationException($"answered: {text}");
        if (outcome != 200)
        {
            // The connection's HPACK state survived the refusal: the next call on it is answered
            // (its status named by HPACK index, not shown), the connection kept.
            await SendCallAsync(connection, 3, RawHttp2.GrpcHeaderBlock(GenerateRandom, Server.DeveloperToken, Server.Address));
            var next = await connection.StreamEndsAsync([3], Generously);
            Assert.True(next.ContainsKey(3) && !reading.IsCompleted, $"after {outcome}, the next call on the connection was not answered");
        }

        return outcome;
    }

    // GenerateRandomRequest { length_bytes: 8 } is 08 08, after its 5-byte gRPC header.
    private static async Task SendCallAsync(RawHttp2 connection, int stream, byte[] block)
    {
        var chunks = block.Chunk(16384).ToList();
        for (var i = 0; i < chunks.Count; i++)
        {
            await connection.WriteFrameAsync(i == 0 ? RawHttp2.Headers : RawHttp2.Continuation, i == chunks.Count - 1 ? RawHttp2.EndHeaders : (byte)0, stream, chunks[i]);
        }

        await connection.WriteFrameAsync(RawHttp2.Data, RawHttp2.EndStream, stream, new byte[] { 0, 0, 0, 0, 2, 8, 8 });
    }
}
