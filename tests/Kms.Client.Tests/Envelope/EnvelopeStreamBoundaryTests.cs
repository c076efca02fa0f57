using Kms.Client.Envelope;

namespace Kms.Client.Tests.Envelope;

/// <summary>
/// The decrypting stream against a source that hands out one byte per read, cut at every length:
/// whatever the read path, the caller gets only whole, verified regular frames before the
/// exception, never the final frame's plaintext, and a whole message reads back exactly.
/// </summary>
public sealed class EnvelopeStreamBoundaryTests
{
    private const int Frame = 64;

    public static TheoryData<int, string> SizesAndPaths()
    {
        var data = new TheoryData<int, string>();
        foreach (var size in new[] { 0, 1, Frame - 1, Frame, Frame + 1, Frame * 3 })
        {
            foreach (var path in new[] { "Read(Span)", "ReadAsync(Memory)", "CopyTo", "CopyToAsync", "ReadByte" })
            {
                data.Add(size, path);
            }
        }

        return data;
    }

    [Theory]
    [MemberData(nameof(SizesAndPaths))]
    public async Task OneByteReads_CutAtEveryLength_OnlyWholeVerifiedRegularFramesBeforeTheException(int size, string path)
    {
        using var encryptor = EnvelopeRoundTripTests.NewEncryptor(out _);
        var plaintext = EnvelopeRoundTripTests.Data(size);
        var message = await encryptor.EncryptAsync(plaintext, EnvelopeRoundTripTests.Context);

        Assert.Equal(plaintext, await ReadAllAsync(encryptor, message, path));

        var regularFrames = size / Frame;
        for (var length = 0; length < message.Length; length++)
        {
            var got = new MemoryStream();
            var thrown = await Record.ExceptionAsync(() => ReadAllAsync(encryptor, message[..length], path, got));
            Assert.True(thrown is EnvelopeDecryptionException, $"{path}, cut at {length}: {thrown?.GetType().Name ?? "no exception"}");
            var handed = got.ToArray();
            Assert.True(handed.Length % Frame == 0 && handed.Length <= regularFrames * Frame, $"{path}, cut at {length}: {handed.Length} bytes handed out");
            Assert.Equal(plaintext[..handed.Length], handed);
        }
    }

    private static async Task<byte[]> ReadAllAsync(EnvelopeEncryptor encryptor, byte[] message, string path, MemoryStream? output = null)
    {
        output ??= new MemoryStream();
        await using var reader = await encryptor.OpenDecryptingStreamAsync(new OneByteStream(message), EnvelopeRoundTripTests.Context);
        switch (path)
        {
            case "Read(Span)":
                var buffer = new byte[Frame + 7];
                int read;
                while ((read = reader.Read(buffer.AsSpan())) > 0)
                {
                    output.Write(buffer, 0, read);
                }

                break;
            case "ReadAsync(Memory)":
                var memory = new byte[5];
                while ((read = await reader.ReadAsync(memory.AsMemory())) > 0)
                {
                    output.Write(memory, 0, read);
                }

                break;
            case "CopyTo":
                reader.CopyTo(output);
                break;
            case "CopyToAsync":
                await reader.CopyToAsync(output);
                break;
            default:
                int b;
                while ((b = reader.ReadByte()) >= 0)
                {
                    output.WriteByte((byte)b);
                }

                break;
        }

        return output.ToArray();
    }

    private sealed class OneByteStream(byte[] data) : ReadOnlySource(data)
    {
        public override int Read(byte[] buffer, int offset, int count) =>
            Deliver(buffer, offset, Math.Min(Math.Min(count, 1), Data.Length - Delivered));
    }
}
