using System.IO.Compression;
using Kms.Server.Grpc;

namespace Kms.Server.Tests;

/// <summary>
/// <see cref="GzipBody"/> against what .NET's GZipStream writes: every whole body is whole, every
/// strict prefix is cut short, bytes after the data are refused — over stored, fixed and dynamic
/// blocks, several members, and headers with every optional field.
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
    public void Problem_WholeBody_None_EveryPrefix_CutShort_BytesAfter_Refused(string kind, CompressionLevel level)
    {
        var content = Content(kind);
        var body = Gzip(content, level);
        Assert.Equal(content, Inflate(body)); // the oracle reads it as we think

        Assert.Null(GzipBody.Problem(body));
        // GZipStream writes nothing for nothing: the empty body is the empty message.
        foreach (var cut in CutPoints(body.Length).Where(cut => cut > 0))
        {
            Assert.True(GzipBody.Problem(body.AsSpan(0, cut)) == GzipProblem.CutShort, $"{kind} at {level}, cut to {cut} of {body.Length} bytes: {GzipBody.Problem(body.AsSpan(0, cut))}");
        }

        if (body.Length > 0)
        {
            Assert.Equal(GzipProblem.BytesAfter, GzipBody.Problem([.. body, 0]));
            Assert.Equal(GzipProblem.BytesAfter, GzipBody.Problem([.. body, 0x1F]));
            Assert.Equal(GzipProblem.BytesAfter, GzipBody.Problem([.. body, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]));
        }
    }

    [Theory]
    [MemberData(nameof(Bodies))]
    public void Problem_TwoMembers_Whole_SecondCutShort_CutShort(string kind, CompressionLevel level)
    {
        var first = Gzip(Content(kind), level);
        var second = Gzip(Content("text"), level);
        byte[] both = [.. first, .. second];
        Assert.Equal([.. Content(kind), .. Content("text")], Inflate(both));

        Assert.Null(GzipBody.Problem(both));
        Assert.Equal(GzipProblem.CutShort, GzipBody.Problem(both.AsSpan(0, both.Length - 4)));
        Assert.Equal(GzipProblem.CutShort, GzipBody.Problem(both.AsSpan(0, first.Length + 2)));
    }

    [Fact]
    public void Problem_HeaderWithExtraNameAndCommentFields_Whole_EveryPrefixCutShort()
    {
        var content = Content("text");
        var plain = Gzip(content, CompressionLevel.Optimal);
        // FEXTRA (3 bytes), FNAME, FCOMMENT, between the fixed header and the deflate data.
        byte[] header = [0x1F, 0x8B, 8, 0x04 | 0x08 | 0x10, .. plain.AsSpan(4, 6), 3, 0, 1, 2, 3, .. "name"u8, 0, .. "a comment"u8, 0];
        byte[] body = [.. header, .. plain.AsSpan(10)];
        Assert.Equal(content, Inflate(body));

        Assert.Null(GzipBody.Problem(body));
        for (var cut = 1; cut < header.Length + 4; cut++)
        {
            Assert.Equal(GzipProblem.CutShort, GzipBody.Problem(body.AsSpan(0, cut)));
        }
    }

    [Fact]
    public void Problem_NotGzip_NotGzip()
    {
        Assert.Equal(GzipProblem.NotGzip, GzipBody.Problem(Convert.FromHexString("AABBCCDDEEFF00112233")));
        Assert.Equal(GzipProblem.NotGzip, GzipBody.Problem(Convert.FromHexString("1F8B0700000000000003")));
    }

    // Every cut of a small body; of a large one, each of the first and last 64 and a spread between.
    private static IEnumerable<int> CutPoints(int length) =>
        length <= 4096
            ? Enumerable.Range(0, length)
            : Enumerable.Range(0, 64).Concat(Enumerable.Range(length - 64, 64)).Concat(Enumerable.Range(0, 512).Select(i => 64 + (int)((long)i * (length - 128) / 512)));

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

    private static byte[] Inflate(byte[] body)
    {
        using var gzip = new GZipStream(new MemoryStream(body), CompressionMode.Decompress);
        using var output = new MemoryStream();
        gzip.CopyTo(output);
        return output.ToArray();
    }
}
