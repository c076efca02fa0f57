using System.Buffers.Binary;
using System.Text;
using Kms.Client.Envelope;
using Org.BouncyCastle.Crypto.Digests;
using Org.BouncyCastle.Crypto.Engines;
using Org.BouncyCastle.Crypto.Generators;
using Org.BouncyCastle.Crypto.Modes;
using Org.BouncyCastle.Crypto.Parameters;

namespace Kms.Client.Tests.Envelope;

/// <summary>
/// Our output decoded by a second implementation written from docs/envelope-format.md:
/// BouncyCastle's HKDF-SHA512 and AES-GCM, a parser of its own.
/// </summary>
public sealed class EnvelopeIndependentCheckTests
{
    [Theory]
    [InlineData(0, 64)]
    [InlineData(63, 64)]
    [InlineData(64, 64)]
    [InlineData(1000, 100)]
    [InlineData(200_000, 65536)]
    public async Task BouncyCastle_DecodesOurMessage(int size, int frameLength)
    {
        var provider = new FakeKeyProvider();
        using var encryptor = new EnvelopeEncryptor(provider, new EnvelopeOptions { KeyNames = ["tenants/t/keys/a", "tenants/t/keys/b"], FrameLength = frameLength });
        var plaintext = Enumerable.Range(0, size).Select(i => (byte)(i * 31)).ToArray();
        var context = new Dictionary<string, string> { ["tenant"] = "t", ["é"] = "accent" };

        var message = await encryptor.EncryptAsync(plaintext, context);
        using var dataKey = await provider.UnwrapDataKeyAsync(ReadFirstWrappedKey(message), context, default);

        Assert.Equal(plaintext, DecodeWithBouncyCastle(message, dataKey.Plaintext.ToArray()));
    }

    // The streaming writer's output, written in uneven pieces, with associated data (bound by the
    // header tag only: header body ‖ associated data is the tag's AAD, docs/envelope-format.md).
    [Theory]
    [InlineData(0, 64, 0)]
    [InlineData(64 * 3, 64, 7)]
    [InlineData(1000, 100, 300)]
    [InlineData(70_000, 65536, 1)]
    public async Task BouncyCastle_DecodesOurStreamedMessage_WithAssociatedData(int size, int frameLength, int associatedLength)
    {
        var provider = new FakeKeyProvider();
        using var encryptor = new EnvelopeEncryptor(provider, new EnvelopeOptions { KeyNames = ["tenants/t/keys/a"], FrameLength = frameLength });
        var plaintext = Enumerable.Range(0, size).Select(i => (byte)(i * 7)).ToArray();
        var associated = Enumerable.Range(0, associatedLength).Select(i => (byte)(i + 1)).ToArray();
        var context = new Dictionary<string, string> { ["file"] = "a.bin" };
        var output = new MemoryStream();
        await using (var writer = await encryptor.OpenEncryptingStreamAsync(output, context, plaintextLength: size, associatedData: associated))
        {
            for (var offset = 0; offset < size; offset += 37)
            {
                await writer.WriteAsync(plaintext.AsMemory(offset, Math.Min(37, size - offset)));
            }

            await writer.CompleteAsync();
        }

        var message = output.ToArray();
        using var dataKey = await provider.UnwrapDataKeyAsync(ReadFirstWrappedKey(message), context, default);

        Assert.Equal(plaintext, DecodeWithBouncyCastle(message, dataKey.Plaintext.ToArray(), associated));
        if (associatedLength > 0)
        {
            Assert.ThrowsAny<Org.BouncyCastle.Crypto.InvalidCipherTextException>(() => DecodeWithBouncyCastle(message, dataKey.Plaintext.ToArray(), []));
        }
    }

    /// <summary>An independent reader of the spec: parse, derive, check commitment and tags, decrypt frames.</summary>
    private static byte[] DecodeWithBouncyCastle(byte[] message, byte[] dataKey, byte[]? associatedData = null)
    {
        Assert.Equal("KMSE"u8.ToArray(), message[..4]);
        Assert.Equal(1, message[4]);
        Assert.Equal(0x0001, BinaryPrimitives.ReadUInt16BigEndian(message.AsSpan(5)));
        var messageId = message[7..39];
        var offset = 39;
        var entries = BinaryPrimitives.ReadUInt32BigEndian(message.AsSpan(offset));
        offset += 4;
        for (var i = 0; i < entries * 2; i++)
        {
            offset += 4 + (int)BinaryPrimitives.ReadUInt32BigEndian(message.AsSpan(offset));
        }

        var wrappedCount = message[offset++];
        for (var i = 0; i < wrappedCount * 2; i++)
        {
            offset += 2 + BinaryPrimitives.ReadUInt16BigEndian(message.AsSpan(offset));
        }

        var frameLength = (int)BinaryPrimitives.ReadUInt32BigEndian(message.AsSpan(offset));
        offset += 4;
        var commitment = message[offset..(offset + 32)];
        offset += 32;
        var headerBody = message[..offset];
        var headerTag = message[offset..(offset + 16)];
        offset += 16;

        var okm = Hkdf(dataKey, messageId, "KMSE v1 key and commitment");
        var key = okm[..32];
        Assert.Equal(okm[32..], commitment);
        Assert.Empty(Gcm(key, EnvelopeSpec.Iv(0), [.. headerBody, .. associatedData ?? []], headerTag));

        var output = new MemoryStream();
        for (uint sequence = 1; ; sequence++)
        {
            var marker = BinaryPrimitives.ReadUInt32BigEndian(message.AsSpan(offset));
            if (marker == 0xFFFFFFFF)
            {
                Assert.Equal(sequence, BinaryPrimitives.ReadUInt32BigEndian(message.AsSpan(offset + 4)));
                var length = (int)BinaryPrimitives.ReadUInt32BigEndian(message.AsSpan(offset + 8));
                Assert.True(length < frameLength);
                var sealedFinal = message[(offset + 12)..(offset + 12 + length + 16)];
                output.Write(Gcm(key, EnvelopeSpec.Iv(sequence), EnvelopeSpec.FrameAad(messageId, 2, sequence, length), sealedFinal));
                Assert.Equal(message.Length, offset + 12 + length + 16);
                return output.ToArray();
            }

            Assert.Equal(sequence, marker);
            var sealedFrame = message[(offset + 4)..(offset + 4 + frameLength + 16)];
            output.Write(Gcm(key, EnvelopeSpec.Iv(sequence), EnvelopeSpec.FrameAad(messageId, 1, sequence, frameLength), sealedFrame));
            offset += 4 + frameLength + 16;
        }
    }

    private static WrappedDataKey ReadFirstWrappedKey(byte[] message)
    {
        var offset = 39;
        var entries = BinaryPrimitives.ReadUInt32BigEndian(message.AsSpan(offset));
        offset += 4;
        for (var i = 0; i < entries * 2; i++)
        {
            offset += 4 + (int)BinaryPrimitives.ReadUInt32BigEndian(message.AsSpan(offset));
        }

        offset++;
        var nameLength = BinaryPrimitives.ReadUInt16BigEndian(message.AsSpan(offset));
        var name = Encoding.UTF8.GetString(message, offset + 2, nameLength);
        offset += 2 + nameLength;
        var wrappedLength = BinaryPrimitives.ReadUInt16BigEndian(message.AsSpan(offset));
        return new WrappedDataKey(name, message[(offset + 2)..(offset + 2 + wrappedLength)]);
    }

    private static byte[] Hkdf(byte[] dataKey, byte[] salt, string label)
    {
        var info = Encoding.ASCII.GetBytes(label).Concat(new byte[] { 0x00, 0x01 }).ToArray();
        var hkdf = new HkdfBytesGenerator(new Sha512Digest());
        hkdf.Init(new HkdfParameters(dataKey, salt, info));
        var output = new byte[64];
        hkdf.GenerateBytes(output, 0, 64);
        return output;
    }

    private static byte[] Gcm(byte[] key, byte[] iv, byte[] aad, byte[] ciphertextAndTag)
    {
        var gcm = new GcmBlockCipher(new AesEngine());
        gcm.Init(false, new AeadParameters(new KeyParameter(key), 128, iv, aad));
        var output = new byte[gcm.GetOutputSize(ciphertextAndTag.Length)];
        var written = gcm.ProcessBytes(ciphertextAndTag, 0, ciphertextAndTag.Length, output, 0);
        gcm.DoFinal(output, written);
        return output;
    }
}
