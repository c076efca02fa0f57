using System.Buffers.Binary;
using System.Reflection;
using System.Security.Cryptography;
using Kms.Client.Envelope;

namespace Kms.Client.Tests.Envelope;

/// <summary>
/// The frame counter at its limits (docs/envelope-format.md: regular frames up to 0xFFFFFFFD, the
/// final frame one more, 0xFFFFFFFF a marker and never an IV): reached by setting the counter,
/// since 2³² frames are out of a test's reach. Frames are opened here with .NET's AesGcm from the
/// spec's IV and AAD, not by the SDK's reader.
/// </summary>
public sealed class EnvelopeSequenceLimitTests
{
    private const int Frame = 64;
    private const string KeyName = "tenants/t/keys/a";

    private readonly byte[] _dataKey = RandomNumberGenerator.GetBytes(32);

    [Fact]
    public async Task Writer_LastRegularFrame_ThenTheFinalFrameOneHigher_EachUnderItsOwnIv()
    {
        using var encryptor = NewEncryptor();
        var output = new MemoryStream();
        await using var writer = await encryptor.OpenEncryptingStreamAsync(output);
        var headerLength = (int)output.Length;
        SetField(writer, "_sequence", EnvelopeFormat.MaxRegularSequenceNumber);

        await writer.WriteAsync(Data(Frame + 10));
        await writer.CompleteAsync();

        var message = output.ToArray();
        var (key, id) = MessageKey(message, headerLength);
        var regular = message.AsSpan(headerLength);
        Assert.Equal(0xFFFFFFFDu, BinaryPrimitives.ReadUInt32BigEndian(regular));
        Assert.Equal(Data(Frame), Open(key, id, 0x01, 0xFFFFFFFD, regular.Slice(4, Frame + 16)));

        var final = regular[(4 + Frame + 16)..];
        Assert.Equal(0xFFFFFFFFu, BinaryPrimitives.ReadUInt32BigEndian(final));
        Assert.Equal(0xFFFFFFFEu, BinaryPrimitives.ReadUInt32BigEndian(final[4..]));
        Assert.Equal(10u, BinaryPrimitives.ReadUInt32BigEndian(final[8..]));
        Assert.Equal(12 + 10 + 16, final.Length);
        Assert.Equal(Data(Frame + 10)[Frame..], Open(key, id, 0x02, 0xFFFFFFFE, final[12..]));
    }

    [Fact]
    public async Task Writer_ARegularFramePastTheLimit_Refused_NothingMoreWritten()
    {
        using var encryptor = NewEncryptor();
        var output = new MemoryStream();
        await using var writer = await encryptor.OpenEncryptingStreamAsync(output);
        var headerLength = (int)output.Length;
        SetField(writer, "_sequence", EnvelopeFormat.MaxRegularSequenceNumber);
        await writer.WriteAsync(Data(Frame));

        await Assert.ThrowsAsync<InvalidOperationException>(() => writer.WriteAsync(Data(Frame)).AsTask());

        Assert.False(writer.CanWrite);
        await Assert.ThrowsAsync<InvalidOperationException>(() => writer.CompleteAsync());
        Assert.Equal(headerLength + 4 + Frame + 16, output.Length);
    }

    [Fact]
    public async Task Reader_RegularFrameNumberedPastTheLimit_Refused_FinalFrameThereAccepted()
    {
        using var encryptor = NewEncryptor();
        var header = new MemoryStream();
        await using (var writer = await encryptor.OpenEncryptingStreamAsync(header))
        {
            writer.Abandon();
        }

        var (key, id) = MessageKey(header.ToArray(), (int)header.Length);

        var regular = new byte[4 + Frame + 16];
        BinaryPrimitives.WriteUInt32BigEndian(regular, 0xFFFFFFFE);
        Seal(key, id, 0x01, 0xFFFFFFFE, Data(Frame), regular.AsSpan(4));
        await using (var reading = await OpenAt(encryptor, header.ToArray(), regular, 0xFFFFFFFE))
        {
            Assert.Equal("envelope decryption failed", Assert.Throws<EnvelopeDecryptionException>(() => reading.Read(new byte[Frame])).Message);
        }

        var final = new byte[12 + 5 + 16];
        BinaryPrimitives.WriteUInt32BigEndian(final, 0xFFFFFFFF);
        BinaryPrimitives.WriteUInt32BigEndian(final.AsSpan(4), 0xFFFFFFFE);
        BinaryPrimitives.WriteUInt32BigEndian(final.AsSpan(8), 5);
        Seal(key, id, 0x02, 0xFFFFFFFE, Data(5), final.AsSpan(12));
        await using (var reading = await OpenAt(encryptor, header.ToArray(), final, 0xFFFFFFFE))
        {
            var read = new MemoryStream();
            await reading.CopyToAsync(read);
            Assert.Equal(Data(5), read.ToArray());
        }
    }

    private EnvelopeEncryptor NewEncryptor() =>
        new(new StaticKeyProvider(_dataKey, [new WrappedDataKey(KeyName, [1, 2, 3])]), new EnvelopeOptions { KeyNames = [KeyName], FrameLength = Frame });

    private static async Task<EnvelopeDecryptingStream> OpenAt(EnvelopeEncryptor encryptor, byte[] header, byte[] frames, uint sequence)
    {
        var reading = await encryptor.OpenDecryptingStreamAsync(new MemoryStream([.. header, .. frames]), EnvelopeEncryptor.NoContext);
        SetField(reading, "_sequence", sequence);
        return reading;
    }

    private (byte[] Key, byte[] MessageId) MessageKey(byte[] message, int headerLength)
    {
        var header = EnvelopeHeader.Parse(message.AsSpan(0, headerLength));
        var key = new byte[32];
        EnvelopeFormat.Derive(_dataKey, header.MessageId, key, new byte[32]);
        return (key, header.MessageId);
    }

    private static byte[] Open(byte[] key, byte[] messageId, byte type, uint sequence, ReadOnlySpan<byte> sealedFrame)
    {
        var content = sealedFrame.Length - 16;
        var plaintext = new byte[content];
        using var gcm = new AesGcm(key, 16);
        gcm.Decrypt(EnvelopeSpec.Iv(sequence), sealedFrame[..content], sealedFrame[content..], plaintext, EnvelopeSpec.FrameAad(messageId, type, sequence, content));
        return plaintext;
    }

    private static void Seal(byte[] key, byte[] messageId, byte type, uint sequence, byte[] plaintext, Span<byte> output)
    {
        using var gcm = new AesGcm(key, 16);
        gcm.Encrypt(EnvelopeSpec.Iv(sequence), plaintext, output[..plaintext.Length], output.Slice(plaintext.Length, 16), EnvelopeSpec.FrameAad(messageId, type, sequence, plaintext.Length));
    }

    private static byte[] Data(int size) => Enumerable.Range(0, size).Select(i => (byte)((i * 29) + 3)).ToArray();

    private static void SetField(object target, string name, uint value) =>
        (target.GetType().GetField(name, BindingFlags.Instance | BindingFlags.NonPublic) ?? throw new MissingFieldException(target.GetType().Name, name)).SetValue(target, value);
}
