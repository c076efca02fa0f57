using System.IO.Compression;
using BenchmarkDotNet.Attributes;
using Kms.Server.Grpc;

namespace Kms.Bench;

/// <summary>
/// The gzip body check's CRC-32 over a 4 MiB request against zlib inflating the same body (the
/// baseline: the work the server does before the check, also before authentication), and against
/// the byte-at-a-time table loop it replaced, in one run.
/// </summary>
[MemoryDiagnoser]
public class GzipCheckBench
{
    private const int Size = 4 << 20;

    private static readonly uint[] ByteTable = ByteAtATimeTable();

    private byte[] _message = null!;
    private byte[] _body = null!;
    private byte[] _inflated = null!;

    /// <summary>What the message holds: random bytes (deflate stores them), or text-like runs it compresses.</summary>
    [Params("random", "text")]
    public string Content { get; set; } = "random";

    [GlobalSetup]
    public void Setup()
    {
        _message = new byte[Size];
        var random = new Random(42);
        if (Content == "random")
        {
            random.NextBytes(_message);
        }
        else
        {
            var words = Enumerable.Range(0, 64).Select(i => System.Text.Encoding.ASCII.GetBytes($"tenants/t{i % 17}/keys/k{random.Next(1000)} ")).ToArray();
            for (var offset = 0; offset < Size;)
            {
                var word = words[random.Next(words.Length)];
                var n = Math.Min(word.Length, Size - offset);
                word.AsSpan(0, n).CopyTo(_message.AsSpan(offset));
                offset += n;
            }
        }

        using var output = new MemoryStream();
        using (var gzip = new GZipStream(output, CompressionLevel.Optimal, leaveOpen: true))
        {
            gzip.Write(_message);
        }

        _body = output.ToArray();
        _inflated = new byte[Size];
    }

    [Benchmark(Baseline = true, Description = "GZipStream inflation of the 4 MiB body")]
    public int Inflate()
    {
        using var gzip = new GZipStream(new MemoryStream(_body, writable: false), CompressionMode.Decompress);
        var total = 0;
        int read;
        while ((read = gzip.Read(_inflated, total, Size - total)) > 0)
        {
            total += read;
        }

        return total;
    }

    [Benchmark(Description = "old CRC-32: byte at a time, one table")]
    public uint CrcByteAtATime()
    {
        var crc = 0xFFFFFFFFu;
        foreach (var b in _message)
        {
            crc = ByteTable[(byte)(crc ^ b)] ^ (crc >> 8);
        }

        return ~crc;
    }

    [Benchmark(Description = "CRC-32 slice-by-8 (no carry-less multiply)")]
    public uint CrcScalar() => ~GzipCrc32.UpdateScalar(0xFFFFFFFFu, _message);

    [Benchmark(Description = "CRC-32 as the server computes it (PCLMULQDQ folding)")]
    public uint Crc() => GzipCrc32.Compute(_message);

    [Benchmark(Description = "GzipBody.IsWhole (the whole check)")]
    public bool IsWhole() => GzipBody.IsWhole(_body, _message);

    private static uint[] ByteAtATimeTable()
    {
        var table = new uint[256];
        for (var n = 0u; n < 256; n++)
        {
            var c = n;
            for (var k = 0; k < 8; k++)
            {
                c = (c & 1) != 0 ? 0xEDB88320u ^ (c >> 1) : c >> 1;
            }

            table[n] = c;
        }

        return table;
    }
}
