using System.IO.Compression;
using Kms.Server.Grpc;

namespace Kms.Server.Tests;

/// <summary>
/// <see cref="GzipBody"/> against what .NET's GZipStream writes and reads: every whole body is
/// whole; every strict prefix that GZipStream inflates without an error (it does so for a body cut
/// short) is not; bytes after the member, or a second member, are not — over stored, fixed and
/// dynamic blocks and headers with every optional field; of a body in one span and in pieces, by
/// the inflated bytes and by their length and CRC-32 (as the server checks it while inflating).
/// (The CRC-32 itself: GzipCrc32Tests.)
/// </summary>
public sealed class GzipBodyTests
{
    public static TheoryData<string, CompressionLevel> Bodies()
    {
        var data = new TheoryData<string, CompressionLevel>();
        foreach (var kind in new[] { "nothing", "two bytes", "text", "random", "mixed" })
        {
            foreach (var level in new[] { CompressionLevel.NoCompression, CompressionLevel.Fastest, CompressionLevel.Optimal, CompressionLevel.SmallestSize })
            {
                data.Add(kind, level);
            }
        }

        return data;
    }

    [Theory]
    [MemberData(nameof(Bodies))]
    public void IsWhole_WholeBody_Yes_EveryPrefixGZipStreamAccepts_No_BytesAfter_No(string kind, CompressionLevel level)
    {
        var content = Content(kind);
        var body = Gzip(content, level);
        Assert.Equal(content, Inflate(body)!); // the oracle reads it as we think

        Assert.True(Whole(body, content), $"{kind} at {level}: the whole body");
        var accepted = 0;
        foreach (var cut in CutPoints(body.Length))
        {
            // GZipStream writes nothing for nothing: the empty body is the empty message, checked below.
            if (cut == 0 || Inflate(body[..cut]) is not { } partial)
            {
                continue; // refused by zlib already ("does not decompress")
            }

            accepted++;
            Assert.False(Whole(body.AsSpan(0, cut), partial), $"{kind} at {level}, cut to {cut} of {body.Length} bytes");
        }

        // The cuts zlib lets through are the ones this is for: at least every cut inside the trailer.
        Assert.True(body.Length == 0 || accepted >= 8, $"{kind} at {level}: only {accepted} cuts inflated without an error");
        foreach (var after in new byte[][] { [0], [0x1F], new byte[10], [0x1F, 0x8B] })
        {
            byte[] padded = [.. body, .. after];
            if (Inflate(padded) is { } inflated)
            {
                Assert.False(Whole(padded, inflated), $"{kind} at {level}, {after.Length} bytes after");
            }
        }
    }

    [Theory]
    [MemberData(nameof(Bodies))]
    public void IsWhole_TwoMembers_No(string kind, CompressionLevel level)
    {
        var first = Gzip(Content(kind), level);
        var second = Gzip(Content("text"), level);
        byte[] both = [.. first, .. second];
        byte[] content = [.. Content(kind), .. Content("text")];
        Assert.Equal(content, Inflate(both)!); // GZipStream reads both members

        // Unless the first member holds nothing, the last trailer is not the whole message's.
        Assert.Equal(kind == "nothing", Whole(both, content));
    }

    [Fact]
    public void IsWhole_HeaderWithExtraNameAndCommentFields_Yes_CutInTheHeader_No()
    {
        var content = Content("text");
        var plain = Gzip(content, CompressionLevel.Optimal);
        // FEXTRA (3 bytes), FNAME, FCOMMENT, between the fixed header and the deflate data.
        byte[] header = [0x1F, 0x8B, 8, 0x04 | 0x08 | 0x10, .. plain.AsSpan(4, 6), 3, 0, 1, 2, 3, .. "name"u8, 0, .. "a comment"u8, 0];
        byte[] body = [.. header, .. plain.AsSpan(10)];
        Assert.Equal(content, Inflate(body)!);

        Assert.True(Whole(body, content));
        for (var cut = 1; cut < header.Length + 4; cut++)
        {
            if (Inflate(body[..cut]) is { } partial)
            {
                Assert.False(Whole(body.AsSpan(0, cut), partial), $"cut to {cut}");
            }
        }
    }

    [Fact]
    public void IsWhole_Empty_OnlyForTheEmptyMessage()
    {
        Assert.True(Whole([], []));
        Assert.False(Whole([], [1]));
    }

    // Whether the body is whole, asked both ways: of spans, and of the body in pieces (its trailer
    // split) by the inflated length and CRC-32; the two must agree.
    private static bool Whole(ReadOnlySpan<byte> body, ReadOnlySpan<byte> inflated)
    {
        var whole = GzipBody.IsWhole(body, inflated);
        var bytes = body.ToArray();
        Assert.Equal(whole, GzipBody.IsWhole(MessageInflaterTests.Pieces(bytes, bytes.Length / 2, bytes.Length - 5), inflated.Length, GzipCrc32.Compute(inflated)));
        return whole;
    }

    // Every cut of a small body; of a large one, each of the first and last 32 and a spread between.
    private static IEnumerable<int> CutPoints(int length) =>
        length <= 1024
            ? Enumerable.Range(0, length)
            : Enumerable.Range(0, 32).Concat(Enumerable.Range(length - 32, 32)).Concat(Enumerable.Range(0, 64).Select(i => 32 + (int)((long)i * (length - 64) / 64)));

    private static byte[] Content(string kind)
    {
        var random = new Random(kind.Length);
        switch (kind)
        {
            case "nothing":
                return [];
            case "two bytes":
                return [8, 8];
            case "text":
                return System.Text.Encoding.UTF8.GetBytes(string.Concat(Enumerable.Range(0, 3000).Select(i => $"tenants/t{i % 17}/keys/k{i % 101} ")));
            case "random":
                var bytes = new byte[100_000];
                random.NextBytes(bytes);
                return bytes;
            default:
                var mixed = new byte[200_000];
                random.NextBytes(mixed);
                for (var i = 0; i < mixed.Length; i += 1000)
                {
                    mixed.AsSpan(i, Math.Min(500, mixed.Length - i)).Fill((byte)(i % 7));
                }

                return mixed;
        }
    }

    private static byte[] Gzip(byte[] data, CompressionLevel level)
    {
        using var output = new MemoryStream();
        using (var gzip = new GZipStream(output, level))
        {
            gzip.Write(data);
        }

        return output.ToArray();
    }

    // What GZipStream inflates the body to, or null when it refuses it.
    private static byte[]? Inflate(byte[] body)
    {
        try
        {
            using var gzip = new GZipStream(new MemoryStream(body), CompressionMode.Decompress);
            using var output = new MemoryStream();
            gzip.CopyTo(output);
            return output.ToArray();
        }
        catch (InvalidDataException)
        {
            return null;
        }
    }
}
