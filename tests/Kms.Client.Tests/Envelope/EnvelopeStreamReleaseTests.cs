using Kms.Client.Caching;
using Kms.Client.Envelope;

namespace Kms.Client.Tests.Envelope;

/// <summary>
/// What a streaming reader hands out of a message that was altered at or after its last regular
/// frame (docs/client.md, "A streamed decryption's output is whole only when the call returns"):
/// the regular frames that verified, then the exception — never the final frame's plaintext
/// unless its tag verified and nothing follows it, and never an end of stream (a read of 0) for a
/// message cut at a frame boundary.
/// </summary>
public sealed class EnvelopeStreamReleaseTests
{
    private const int Frame = 64;
    private const int FinalFrame = EnvelopeFormat.FinalFramePrefix + 5 + EnvelopeFormat.TagLength;

    private static readonly Dictionary<string, string> Context = EnvelopeRoundTripTests.Context;

    public static TheoryData<string> Alterations() =>
        new() { "one byte appended", "final frame repeated", "final frame's tag", "final frame's length", "cut before the final frame", "cut inside the final frame", "cut before the final frame's tag", "final frame from another message under the same data key" };

    [Theory]
    [MemberData(nameof(Alterations))]
    public async Task AlteredAtTheEnd_TheRegularFramesThenTheException_NeverTheFinalFramesPlaintext(string alteration)
    {
        using var encryptor = new EnvelopeEncryptor(new FakeKeyProvider(), new EnvelopeOptions { KeyNames = ["tenants/t/keys/a"], FrameLength = Frame, DataKeyCache = new DataKeyCacheOptions() });
        var plaintext = EnvelopeRoundTripTests.Data((Frame * 2) + 5);
        var message = await encryptor.EncryptAsync(plaintext, Context);
        var other = await encryptor.EncryptAsync(EnvelopeRoundTripTests.Data((Frame * 2) + 5).Reverse().ToArray(), Context);
        Assert.Equal(message.Length, other.Length);
        Assert.Equal(message.AsSpan(EnvelopeFormat.FixedPrefixLength, 100).ToArray(), other.AsSpan(EnvelopeFormat.FixedPrefixLength, 100).ToArray()); // one data key
        byte[] altered = alteration switch
        {
            "one byte appended" => [.. message, 0],
            "final frame repeated" => [.. message, .. message[^FinalFrame..]],
            "final frame's tag" => Flip(message, message.Length - 1),
            "final frame's length" => Flip(message, message.Length - FinalFrame + 11),
            "cut before the final frame" => message[..^FinalFrame],
            "cut inside the final frame" => message[..^(FinalFrame - EnvelopeFormat.FinalFramePrefix - 2)],
            "cut before the final frame's tag" => message[..^EnvelopeFormat.TagLength],
            _ => [.. message[..^FinalFrame], .. other[^FinalFrame..]],
        };

        // DecryptAsync to a destination (CopyToAsync underneath).
        var destination = new MemoryStream();
        await Assert.ThrowsAsync<EnvelopeDecryptionException>(() => encryptor.DecryptAsync(new MemoryStream(altered), destination, Context));
        Assert.Equal(plaintext[..(Frame * 2)], destination.ToArray());

        // Reads, synchronous and asynchronous, of 7 bytes at a time: never a 0 (the end) before the exception.
        foreach (var useAsync in new[] { false, true })
        {
            await using var reader = await encryptor.OpenDecryptingStreamAsync(new MemoryStream(altered), Context);
            var received = new List<byte>();
            var buffer = new byte[7];
            var e = await Record.ExceptionAsync(async () =>
            {
                while (true)
                {
                    var read = useAsync ? await reader.ReadAsync(buffer) : reader.Read(buffer);
                    Assert.NotEqual(0, read);
                    received.AddRange(buffer[..read]);
                }
            });

            Assert.IsType<EnvelopeDecryptionException>(e);
            Assert.Equal("envelope decryption failed", e.Message);
            Assert.Equal(plaintext[..(Frame * 2)], received.ToArray());
        }
    }

    [Fact]
    public async Task Unaltered_TheFinalFrameThenTheEnd()
    {
        using var encryptor = EnvelopeRoundTripTests.NewEncryptor(out _);
        var plaintext = EnvelopeRoundTripTests.Data((Frame * 2) + 5);
        var message = await encryptor.EncryptAsync(plaintext, Context);
        await using var reader = await encryptor.OpenDecryptingStreamAsync(new MemoryStream(message), Context);
        var received = new MemoryStream();

        await reader.CopyToAsync(received);

        Assert.Equal(plaintext, received.ToArray());
        Assert.Equal(0, await reader.ReadAsync(new byte[1]));
    }

    private static byte[] Flip(byte[] message, int offset)
    {
        var copy = message.ToArray();
        copy[offset] ^= 1;
        return copy;
    }
}
