using CsCheck;
using Kms.Client.Envelope;
using Kms.Client.Tests.Envelope;

namespace Kms.Client.Tests.Properties;

/// <summary>
/// Envelope messages (docs/envelope-format.md) through the software key provider: random plaintext
/// sizes around the frame boundaries, random frame lengths, contexts and associated data.
/// </summary>
public sealed class EnvelopePropertyTests
{
    private static readonly string[] Pieces = ["a", "b", "ab", "=", "\0", "é", "😀", " "];
    private static readonly Gen<string> Text = Gen.Int[0, Pieces.Length - 1].Array[0, 4].Select(ix => string.Concat(ix.Select(i => Pieces[i])));
    private static readonly Gen<Dictionary<string, string>> Contexts = Gen.Select(Text.Where(k => k.Length > 0), Text).Array[0, 4]
        .Select(entries => entries.DistinctBy(e => e.Item1).ToDictionary(e => e.Item1, e => e.Item2, StringComparer.Ordinal));

    private static readonly Gen<(int FrameLength, byte[] Plaintext, Dictionary<string, string> Context, byte[] AssociatedData)> Messages =
        from frameLength in Gen.Int[EnvelopeFormat.MinFrameLength, 200]
        from frames in Gen.Int[0, 3]
        from rest in Gen.Int[-1, 1]
        from plaintext in Gen.Byte.Array[Math.Max(0, (frames * frameLength) + rest)]
        from context in Contexts
        from associatedData in Gen.Byte.Array[0, 16]
        select (frameLength, plaintext, context, associatedData);

    private readonly FakeKeyProvider _provider = new();

    [Fact]
    public async Task DecryptOfEncrypt_AnySizeFrameContext_ThePlaintext_OneShotAndStreaming()
    {
        await Messages.SampleAsync(async m =>
        {
            using var encryptor = Encryptor(m.FrameLength);

            var message = await encryptor.EncryptAsync(m.Plaintext, m.Context, m.AssociatedData);

            Assert.InRange(message.Length, m.Plaintext.Length + 1, encryptor.GetMaxMessageLength(m.Plaintext.Length, m.Context));
            Assert.Equal(m.Plaintext, await encryptor.DecryptAsync(message, m.Context, m.AssociatedData));
            var streamed = new MemoryStream();
            await encryptor.DecryptAsync(new MemoryStream(message), streamed, m.Context, m.AssociatedData);
            Assert.Equal(m.Plaintext, streamed.ToArray());
            Assert.Equal(m.Context, EnvelopeEncryptor.ReadEncryptionContext(message));
        }, iter: 150);
    }

    [Fact]
    public async Task Decrypt_AnyByteChangedOrCut_Refused()
    {
        var gen = from m in Messages
                  from position in Gen.Int[0, int.MaxValue]
                  from flip in Gen.Byte[1, 255]
                  from cut in Gen.Bool
                  select (m, position, flip, cut);
        await gen.SampleAsync(async g =>
        {
            using var encryptor = Encryptor(g.m.FrameLength);
            var message = await encryptor.EncryptAsync(g.m.Plaintext, g.m.Context, g.m.AssociatedData);
            var position = g.position % message.Length;
            var altered = g.cut ? message[..position] : message.ToArray();
            if (!g.cut)
            {
                altered[position] ^= g.flip;
            }

            await Assert.ThrowsAsync<EnvelopeDecryptionException>(() => encryptor.DecryptAsync(altered, EnvelopeEncryptor.AnyContext, g.m.AssociatedData));
            await Assert.ThrowsAsync<EnvelopeDecryptionException>(() => encryptor.DecryptAsync(new MemoryStream(altered), new MemoryStream(), EnvelopeEncryptor.AnyContext, g.m.AssociatedData));
        }, iter: 150);
    }

    [Fact]
    public void ContextDecodeOfEncode_AnyMap_TheMap_AndTheEncodingIsCanonical()
    {
        Contexts.SelectMany(map => Gen.Shuffle(map.ToArray()).Select(order => (map, order))).Sample((map, order) =>
        {
            var encoded = EnvelopeContext.Encode(map);

            Assert.Equal(encoded.Length, EnvelopeContext.Measure(encoded));
            Assert.Equal(map, EnvelopeContext.Decode(encoded));
            Assert.Equal(encoded, EnvelopeContext.Encode(order.ToDictionary(e => e.Key, e => e.Value, StringComparer.Ordinal)));
        }, iter: 500);
    }

    private EnvelopeEncryptor Encryptor(int frameLength) =>
        new(_provider, new EnvelopeOptions { KeyNames = ["tenants/dev/keys/a", "tenants/dev/keys/b"], FrameLength = frameLength });
}
