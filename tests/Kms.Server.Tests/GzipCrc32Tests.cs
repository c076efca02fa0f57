using System.Buffers.Binary;
using System.IO.Compression;
using System.Runtime.Intrinsics.X86;
using Kms.Server.Grpc;

namespace Kms.Server.Tests;

/// <summary>
/// <see cref="GzipCrc32"/> against zlib's CRC-32, read from the trailers GZipStream writes, and the
/// standard check value: every length up to 10,000 bytes, every alignment and remainder of 16 (the
/// folded blocks) and of 8 (the scalar slices), register carried across chunk boundaries (where the
/// folded part ends and the scalar tail begins), bodies of the server's size. The scalar path, the
/// only one on a CPU without carry-less multiplication, is checked on its own against the same values.
/// </summary>
public sealed class GzipCrc32Tests
{
    [Fact]
    public void FoldingPath_PresentOnX86_SoTheseTestsCheckIt()
    {
        // Compute and Update fold only where the CPU has carry-less multiplication; without it (or with
        // the JIT's intrinsics switched off: DOTNET_EnableHWIntrinsic=0) every test here would check the
        // scalar path twice and the folding not at all, and still pass. Arm has no folding path to check.
        Assert.True(!X86Base.IsSupported || Pclmulqdq.IsSupported, "PCLMULQDQ is not available to the JIT: the folding path of GzipCrc32 is not being tested");
    }

    [Fact]
    public void Compute_StandardCheckValue()
    {
        // CRC-32/ISO-HDLC's check value: the CRC of "123456789"; and of nothing, 0.
        Assert.Equal(0xCBF43926u, GzipCrc32.Compute("123456789"u8));
        Assert.Equal(0xCBF43926u, ~GzipCrc32.UpdateScalar(0xFFFFFFFFu, "123456789"u8));
        Assert.Equal(0u, GzipCrc32.Compute([]));
    }

    [Fact]
    public void Compute_EveryLengthTo10000_AsZlib()
    {
        var content = RandomBytes(10_000, seed: 1);
        for (var length = 0; length <= content.Length; length++)
        {
            var data = content.AsSpan(0, length);
            var expected = ZlibCrc(data);
            Assert.True(expected == GzipCrc32.Compute(data), $"length {length}: zlib {expected:X8}, ours {GzipCrc32.Compute(data):X8}");
            Assert.True(expected == ~GzipCrc32.UpdateScalar(0xFFFFFFFFu, data), $"length {length}, scalar: zlib {expected:X8}, ours {~GzipCrc32.UpdateScalar(0xFFFFFFFFu, data):X8}");
        }
    }

    [Fact]
    public void Compute_EveryAlignmentAndRemainder_AsZlib()
    {
        var buffer = RandomBytes(16 + 1100, seed: 2);
        for (var offset = 0; offset < 16; offset++)
        {
            for (var length = 0; length <= 1100; length++)
            {
                var data = buffer.AsSpan(offset, length);
                var expected = ZlibCrc(data);
                Assert.True(expected == GzipCrc32.Compute(data), $"offset {offset}, length {length}: zlib {expected:X8}, ours {GzipCrc32.Compute(data):X8}");
                Assert.True(expected == ~GzipCrc32.UpdateScalar(0xFFFFFFFFu, data), $"offset {offset}, length {length}, scalar");
            }
        }
    }

    [Theory]
    [InlineData("random")]
    [InlineData("zeros")]
    [InlineData("ones")]
    public void Compute_ServerSizedBodies_AsZlib(string kind)
    {
        var size = 5 << 20;
        var content = kind switch
        {
            "random" => RandomBytes(size, seed: 3),
            "zeros" => new byte[size],
            _ => Enumerable.Repeat((byte)0xFF, size).ToArray(),
        };
        foreach (var length in new[] { 4 << 20, (4 << 20) + 1, (4 << 20) + 15, (4 << 20) + 17, (4 << 20) + 63, size - 1, size })
        {
            var data = content.AsSpan(size - length);
            Assert.True(ZlibCrc(data) == GzipCrc32.Compute(data), $"{kind}, {length} bytes");
            Assert.True(ZlibCrc(data) == ~GzipCrc32.UpdateScalar(0xFFFFFFFFu, data), $"{kind}, {length} bytes, scalar");
        }
    }

    [Fact]
    public void Update_AcrossChunkBoundaries_AsOneCall()
    {
        var content = RandomBytes(70_000, seed: 4);
        var expected = ZlibCrc(content);
        var random = new Random(5);
        var splits = new[] { 0, 1, 7, 8, 15, 16, 17, 63, 64, 65, 127, 128, 129, content.Length - 64, content.Length - 1, content.Length }
            .Concat(Enumerable.Range(0, 50).Select(_ => random.Next(content.Length + 1)));
        foreach (var split in splits)
        {
            var first = content.AsSpan(0, split);
            var second = content.AsSpan(split);
            Assert.True(expected == ~GzipCrc32.Update(GzipCrc32.Update(0xFFFFFFFFu, first), second), $"split at {split}");
            Assert.True(expected == ~GzipCrc32.Update(GzipCrc32.UpdateScalar(0xFFFFFFFFu, first), second), $"split at {split}, scalar then fast");
            Assert.True(expected == ~GzipCrc32.UpdateScalar(GzipCrc32.Update(0xFFFFFFFFu, first), second), $"split at {split}, fast then scalar");
        }

        // Many small chunks of uneven sizes, as a stream would hand them over.
        var register = 0xFFFFFFFFu;
        for (var offset = 0; offset < content.Length;)
        {
            var chunk = Math.Min(random.Next(1, 300), content.Length - offset);
            register = GzipCrc32.Update(register, content.AsSpan(offset, chunk));
            offset += chunk;
        }

        Assert.Equal(expected, ~register);
    }

    private static byte[] RandomBytes(int length, int seed)
    {
        var bytes = new byte[length];
        new Random(seed).NextBytes(bytes);
        return bytes;
    }

    // The CRC-32 zlib writes in the gzip trailer (GZipStream writes nothing at all for nothing).
    private static uint ZlibCrc(ReadOnlySpan<byte> data)
    {
        if (data.IsEmpty)
        {
            return 0;
        }

        using var output = new MemoryStream();
        using (var gzip = new GZipStream(output, CompressionLevel.Fastest, leaveOpen: true))
        {
            gzip.Write(data);
        }

        return BinaryPrimitives.ReadUInt32LittleEndian(output.GetBuffer().AsSpan((int)output.Length - 8, 4));
    }
}
