using System.Buffers.Binary;
using System.Security.Cryptography;
using System.Text;
using Kms.Client.Envelope;
using Org.BouncyCastle.Asn1.X9;
using Org.BouncyCastle.Crypto.Digests;
using Org.BouncyCastle.Crypto.Generators;
using Org.BouncyCastle.Crypto.Parameters;
using Org.BouncyCastle.Crypto.Signers;
using Org.BouncyCastle.Math;

namespace Kms.Client.Tests.Envelope;

/// <summary>Suite 0x0002 (docs/envelope-format-signed.md) against a fake KMS: format, tampering, footer, downgrade.</summary>
public sealed class EnvelopeSignedTests
{
    private const int Frame = 64;

    private static readonly Dictionary<string, string> Context = new() { ["table"] = "orders", ["row"] = "42" };

    [Theory]
    [InlineData(0)]
    [InlineData(Frame - 1)]
    [InlineData(Frame)]
    [InlineData((Frame * 3) + 5)]
    public async Task RoundTrip_OneShotAndStream_BothReadersAndBothWriters(int size)
    {
        using var encryptor = NewSigned(out _);
        var plaintext = EnvelopeRoundTripTests.Data(size);

        var message = await encryptor.EncryptAsync(plaintext, Context);
        var streamed = new MemoryStream();
        await encryptor.EncryptAsync(new MemoryStream(plaintext), streamed, Context);

        foreach (var written in new[] { message, streamed.ToArray() })
        {
            Assert.Equal(EnvelopeFormat.Suite2, BinaryPrimitives.ReadUInt16BigEndian(written.AsSpan(5)));
            Assert.Equal(plaintext, await encryptor.DecryptAsync(written, Context));
            var output = new MemoryStream();
            await encryptor.DecryptAsync(new MemoryStream(written), output, Context);
            Assert.Equal(plaintext, output.ToArray());
        }

        // The caller sees its own context, without the public key the header carries.
        Assert.Equal(Context.OrderBy(e => e.Key), EnvelopeEncryptor.ReadEncryptionContext(message).OrderBy(e => e.Key));
        await using var reading = await encryptor.OpenDecryptingStreamAsync(new MemoryStream(message), Context);
        Assert.DoesNotContain(EnvelopeFormat.PublicKeyContextKey, reading.EncryptionContext.Keys);
    }

    [Fact]
    public async Task GetMaxMessageLength_CoversASignedMessage()
    {
        using var encryptor = NewSigned(out _);
        var message = await encryptor.EncryptAsync(new byte[1000], Context);

        Assert.InRange(message.Length, 1, encryptor.GetMaxMessageLength(1000, Context));
        var destination = new byte[encryptor.GetMaxMessageLength(1000, Context)];
        var written = await encryptor.EncryptAsync(new byte[1000], destination, Context);
        Assert.Equal(new byte[1000], await encryptor.DecryptAsync(destination.AsMemory(0, written), Context));
    }

    [Fact]
    public async Task EveryByteFlipped_Refused_OneShotAndStream()
    {
        using var encryptor = NewSigned(out _);
        var message = await encryptor.EncryptAsync(EnvelopeRoundTripTests.Data(100), Context);

        for (var i = 0; i < message.Length; i++)
        {
            var altered = message.ToArray();
            altered[i] ^= (byte)(1 << (i % 8));
            await Assert.ThrowsAsync<EnvelopeDecryptionException>(() => encryptor.DecryptAsync(altered, EnvelopeEncryptor.AnyContext));
            await Assert.ThrowsAsync<EnvelopeDecryptionException>(() => encryptor.DecryptAsync(new MemoryStream(altered), new MemoryStream(), EnvelopeEncryptor.AnyContext));
        }
    }

    [Fact]
    public async Task FooterRemovedTruncatedOrExtended_Refused_OneShotAndStream()
    {
        using var encryptor = NewSigned(out _);
        var message = await encryptor.EncryptAsync(EnvelopeRoundTripTests.Data(100), Context);
        byte[][] altered =
        [
            message[..^EnvelopeFormat.SignatureLength],
            message[..^1],
            message[..^48],
            [.. message, 0],
            [.. message, .. message[^EnvelopeFormat.SignatureLength..]],
        ];

        foreach (var bad in altered)
        {
            var e = await Assert.ThrowsAsync<EnvelopeDecryptionException>(() => encryptor.DecryptAsync(bad, Context));
            Assert.Equal("envelope decryption failed", e.Message);
            var output = new MemoryStream();
            var streamed = await Assert.ThrowsAsync<EnvelopeDecryptionException>(() => encryptor.DecryptAsync(new MemoryStream(bad), output, Context));
            Assert.Equal("envelope decryption failed", streamed.Message);

            // The final frame's plaintext waits for the footer: 100 bytes are one regular frame and a final one of 36.
            Assert.Equal(Frame, output.Length);
        }
    }

    [Fact]
    public async Task SignatureOfAnotherBody_UnderTheMessagesOwnKey_Refused()
    {
        // Two messages of one key pair, data key, message id and context: each verifies alone;
        // the header and frames of one with the footer of the other do not.
        var provider = new FakeKeyProvider();
        using var signature = EnvelopeSignature.ForWriting();
        var context = new Dictionary<string, string>(Context) { [EnvelopeFormat.PublicKeyContextKey] = signature.EncodedPublicKey };
        using var generated = await provider.GenerateDataKeyAsync("tenants/t/keys/a", context, default);
        var messageId = RandomNumberGenerator.GetBytes(32);
        var encoded = EnvelopeContext.Encode(context);
        var first = EnvelopeMessage.Seal(generated.Plaintext.Span, messageId, encoded, [generated.Wrapped], Frame, "pay alice 10"u8, [], signature);
        var second = EnvelopeMessage.Seal(generated.Plaintext.Span, messageId, encoded, [generated.Wrapped], Frame, "pay mallory 1000"u8, [], signature);
        using var reader = new EnvelopeEncryptor(provider, new EnvelopeOptions { KeyNames = ["tenants/t/keys/a"], RequireSignedMessages = true });
        Assert.Equal("pay alice 10"u8.ToArray(), await reader.DecryptAsync(first, Context));
        Assert.Equal("pay mallory 1000"u8.ToArray(), await reader.DecryptAsync(second, Context));

        byte[] spliced = [.. first[..^EnvelopeFormat.SignatureLength], .. second[^EnvelopeFormat.SignatureLength..]];

        var e = await Assert.ThrowsAsync<EnvelopeDecryptionException>(() => reader.DecryptAsync(spliced, Context));
        Assert.Equal("envelope decryption failed", e.Message);
        await Assert.ThrowsAsync<EnvelopeDecryptionException>(() => reader.DecryptAsync(new MemoryStream(spliced), new MemoryStream(), Context));
    }

    // What the signature does not do for a streaming reader (docs/envelope-format-signed.md,
    // "Reading, in order" 4): whoever holds a message's data key — a principal that may only
    // decrypt — writes a body of its own under the writer's header context and public key, with
    // frames whose tags verify. A streaming reader releases every regular frame of it before the
    // footer fails: plaintext the writer never wrote. Only the final frame and the end wait.
    [Fact]
    public async Task BodyForgedUnderTheWritersPublicKey_StreamingReleasesItsRegularFrames_OneShotNothing()
    {
        using var encryptor = NewSigned(out var provider);
        var original = await encryptor.EncryptAsync(new byte[10], Context);
        var header = EnvelopeHeader.Parse(original.AsSpan(0, EnvelopeHeader.Measure(original)));
        using var dataKey = await provider.UnwrapDataKeyAsync(header.WrappedKeys[0], header.Context, default);
        var forged = Encoding.ASCII.GetBytes(string.Concat(Enumerable.Repeat("pay mallory 1000; ", 10)));
        using var forgersKey = EnvelopeSignature.ForWriting();
        var message = EnvelopeMessage.Seal(dataKey.Plaintext.Span, RandomNumberGenerator.GetBytes(32), header.EncodedContext, header.WrappedKeys, Frame, forged, [], forgersKey);

        var e = await Assert.ThrowsAsync<EnvelopeDecryptionException>(() => encryptor.DecryptAsync(message, Context));
        var output = new MemoryStream();
        var streamed = await Assert.ThrowsAsync<EnvelopeDecryptionException>(() => encryptor.DecryptAsync(new MemoryStream(message), output, Context));

        Assert.Equal("envelope decryption failed", e.Message);
        Assert.Equal("envelope decryption failed", streamed.Message);
        Assert.Equal(forged[..(Frame * 2)], output.ToArray());
    }

    // The way out of the test above: a reader that acts on what it streams refuses to stream a
    // signed message at all, before the KMS call and before a byte — and reads it in one shot.
    [Fact]
    public async Task StreamSignedMessagesOff_SignedMessage_StreamRefusedByName_BeforeAnyKmsCall_OneShotReadsIt()
    {
        using var writer = NewSigned(out var provider);
        using var unsignedWriter = new EnvelopeEncryptor(provider, new EnvelopeOptions { KeyNames = ["tenants/t/keys/a"], FrameLength = Frame });
        using var reader = new EnvelopeEncryptor(provider, new EnvelopeOptions { KeyNames = ["tenants/t/keys/a"], StreamSignedMessages = false });
        var plaintext = EnvelopeRoundTripTests.Data((Frame * 3) + 5);
        var message = await writer.EncryptAsync(plaintext, Context);
        var unwrapsBefore = provider.UnwrapCalls;

        var output = new MemoryStream();
        var streamed = await Assert.ThrowsAsync<EnvelopeDecryptionException>(() => reader.DecryptAsync(new MemoryStream(message), output, Context));
        var opened = await Assert.ThrowsAsync<EnvelopeDecryptionException>(() => reader.OpenDecryptingStreamAsync(new MemoryStream(message), Context));

        Assert.StartsWith("the message is signed (suite 0x0002) and this reader does not stream signed messages", streamed.Message, StringComparison.Ordinal);
        Assert.Contains("one shot", streamed.Message, StringComparison.Ordinal);
        Assert.Contains("StreamSignedMessages", streamed.Message, StringComparison.Ordinal);
        Assert.Equal(streamed.Message, opened.Message);
        Assert.Equal(0, output.Length);
        Assert.Equal(unwrapsBefore, provider.UnwrapCalls);

        // One-shot decryption is unaffected; so is streaming an unsigned message.
        Assert.Equal(plaintext, await reader.DecryptAsync(message, Context));
        var unsignedOutput = new MemoryStream();
        await reader.DecryptAsync(new MemoryStream(await unsignedWriter.EncryptAsync(plaintext, Context)), unsignedOutput, Context);
        Assert.Equal(plaintext, unsignedOutput.ToArray());
    }

    // Both on is allowed: a reader that requires signatures and decrypts in one shot only. No
    // message streams, each refused for its own reason, before any KMS call.
    [Fact]
    public async Task StreamSignedMessagesOff_WithRequireSignedMessages_NoMessageStreams_OneShotReadsSigned()
    {
        using var writer = NewSigned(out var provider);
        using var unsignedWriter = new EnvelopeEncryptor(provider, new EnvelopeOptions { KeyNames = ["tenants/t/keys/a"] });
        using var reader = new EnvelopeEncryptor(provider, new EnvelopeOptions { KeyNames = ["tenants/t/keys/a"], RequireSignedMessages = true, StreamSignedMessages = false });
        var signed = await writer.EncryptAsync(new byte[10], Context);
        var unsigned = await unsignedWriter.EncryptAsync(new byte[10], Context);
        var unwrapsBefore = provider.UnwrapCalls;

        var signedStreamed = await Assert.ThrowsAsync<EnvelopeDecryptionException>(() => reader.DecryptAsync(new MemoryStream(signed), new MemoryStream(), Context));
        var unsignedStreamed = await Assert.ThrowsAsync<EnvelopeDecryptionException>(() => reader.DecryptAsync(new MemoryStream(unsigned), new MemoryStream(), Context));

        Assert.StartsWith("the message is signed (suite 0x0002) and this reader does not stream signed messages", signedStreamed.Message, StringComparison.Ordinal);
        Assert.StartsWith("the message is not signed (suite 0x0001)", unsignedStreamed.Message, StringComparison.Ordinal);
        Assert.Equal(unwrapsBefore, provider.UnwrapCalls);
        Assert.Equal(new byte[10], await reader.DecryptAsync(signed, Context));
    }

    [Fact]
    public async Task RequireSignedMessages_UnsignedMessage_RefusedByName_BeforeAnyKmsCall()
    {
        var provider = new FakeKeyProvider();
        using var writer = new EnvelopeEncryptor(provider, new EnvelopeOptions { KeyNames = ["tenants/t/keys/a"] });
        using var reader = new EnvelopeEncryptor(provider, new EnvelopeOptions { KeyNames = ["tenants/t/keys/a"], RequireSignedMessages = true });
        var message = await writer.EncryptAsync(new byte[10], Context);

        var e = await Assert.ThrowsAsync<EnvelopeDecryptionException>(() => reader.DecryptAsync(message, Context));
        var streamed = await Assert.ThrowsAsync<EnvelopeDecryptionException>(() => reader.DecryptAsync(new MemoryStream(message), new MemoryStream(), Context));

        Assert.StartsWith("the message is not signed (suite 0x0001)", e.Message, StringComparison.Ordinal);
        Assert.Equal(e.Message, streamed.Message);
        Assert.Equal(0, provider.UnwrapCalls);
        Assert.Equal(new byte[10], await writer.DecryptAsync(message, Context));
    }

    [Theory]
    [InlineData(null)]
    [InlineData("")]
    [InlineData("not base64 and not 132 characters")]
    [InlineData("compressed")]
    [InlineData("off the curve")]
    [InlineData("padding bits")]
    public async Task SignedMessage_ContextWithoutAValidPublicKey_OpaqueFailure_BeforeAnyKmsCall(string? publicKey)
    {
        // Written as an honest writer would but for the public key: the header tag and frames
        // verify, so only the check of the key stops it.
        var provider = new FakeKeyProvider();
        using var signature = EnvelopeSignature.ForWriting();
        var context = new Dictionary<string, string>(Context);
        var point = Convert.FromBase64String(signature.EncodedPublicKey);
        if (publicKey is not null)
        {
            context[EnvelopeFormat.PublicKeyContextKey] = publicKey switch
            {
                "compressed" => Convert.ToBase64String([(byte)(2 + (point[^1] & 1)), .. point[1..49]]),
                "off the curve" => Convert.ToBase64String([.. point[..^1], (byte)(point[^1] ^ 1)]),
                "padding bits" => signature.EncodedPublicKey[..^3] + NextBase64(signature.EncodedPublicKey[^3]) + "==",
                _ => publicKey,
            };
        }

        using var generated = await provider.GenerateDataKeyAsync("tenants/t/keys/a", context, default);
        var message = EnvelopeMessage.Seal(generated.Plaintext.Span, RandomNumberGenerator.GetBytes(32), EnvelopeContext.Encode(context), [generated.Wrapped], Frame, "x"u8, [], signature);
        using var reader = new EnvelopeEncryptor(provider, new EnvelopeOptions { KeyNames = ["tenants/t/keys/a"] });
        var unwraps = provider.UnwrapCalls;

        var e = await Assert.ThrowsAsync<EnvelopeDecryptionException>(() => reader.DecryptAsync(message, EnvelopeEncryptor.AnyContext));
        await Assert.ThrowsAsync<EnvelopeDecryptionException>(() => reader.DecryptAsync(new MemoryStream(message), new MemoryStream(), EnvelopeEncryptor.AnyContext));

        Assert.Equal("envelope decryption failed", e.Message);
        Assert.Equal(unwraps, provider.UnwrapCalls);
    }

    [Fact]
    public async Task UnsignedMessageCarryingAPublicKey_Refused_ADowngradeOfASignedMessagesDataKey()
    {
        // Whoever decrypted a signed message's data key writes a 0x0001 message under it, with
        // the same context (so the KMS unwraps it) and no signature.
        using var encryptor = NewSigned(out var provider);
        var original = await encryptor.EncryptAsync(new byte[10], Context);
        var header = EnvelopeHeader.Parse(original.AsSpan(0, EnvelopeHeader.Measure(original)));
        using var dataKey = await provider.UnwrapDataKeyAsync(header.WrappedKeys[0], header.Context, default);
        var downgraded = EnvelopeMessage.Seal(dataKey.Plaintext.Span, RandomNumberGenerator.GetBytes(32), header.EncodedContext, header.WrappedKeys, Frame, "pay mallory"u8, []);
        Assert.Equal(EnvelopeFormat.Suite1, BinaryPrimitives.ReadUInt16BigEndian(downgraded.AsSpan(5)));

        var e = await Assert.ThrowsAsync<EnvelopeDecryptionException>(() => encryptor.DecryptAsync(downgraded, EnvelopeEncryptor.AnyContext));

        Assert.Equal("envelope decryption failed", e.Message);
    }

    [Fact]
    public async Task CallerContextWithTheReservedKey_Refused_InEitherSuite()
    {
        using var signed = NewSigned(out _);
        using var unsigned = EnvelopeRoundTripTests.NewEncryptor(out var provider);
        var context = new Dictionary<string, string> { [EnvelopeFormat.PublicKeyContextKey] = "mine" };

        foreach (var encryptor in new[] { signed, unsigned })
        {
            var e = await Assert.ThrowsAsync<ArgumentException>(() => encryptor.EncryptAsync(new byte[1], context));
            Assert.Contains("kms-envelope-public-key is reserved", e.Message, StringComparison.Ordinal);
            await Assert.ThrowsAsync<ArgumentException>(() => encryptor.OpenEncryptingStreamAsync(new MemoryStream(), context));
        }

        Assert.Equal(0, provider.GenerateCalls);
    }

    [Fact]
    public async Task SignedContext_TakesSixtyThreeCallerEntries()
    {
        using var encryptor = NewSigned(out _);
        var full = Enumerable.Range(0, 63).ToDictionary(i => $"k{i:D2}", i => "v");

        var message = await encryptor.EncryptAsync(new byte[1], full);

        Assert.Equal(new byte[1], await encryptor.DecryptAsync(message, full));
        full["k63"] = "v";
        var e = await Assert.ThrowsAsync<ArgumentException>(() => encryptor.EncryptAsync(new byte[1], full));
        Assert.Contains("at most 63 entries", e.Message, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData(100, false)]
    [InlineData(200, true)]
    public async Task BouncyCastle_VerifiesOurSignature_AndTheSuiteTwoCommitment(int size, bool streamed)
    {
        using var encryptor = NewSigned(out var provider);
        var message = await encryptor.EncryptAsync(EnvelopeRoundTripTests.Data(size), Context);
        if (streamed)
        {
            var output = new MemoryStream();
            await encryptor.EncryptAsync(new MemoryStream(EnvelopeRoundTripTests.Data(size)), output, Context);
            message = output.ToArray();
        }

        Assert.True(VerifyWithBouncyCastle(message));
        var altered = message.ToArray();
        altered[^100] ^= 1;
        Assert.False(VerifyWithBouncyCastle(altered));

        // Suite 0x0002's commitment: HKDF-SHA512, info "KMSE v1 key and commitment" ‖ 00 02.
        var header = EnvelopeHeader.Parse(message.AsSpan(0, EnvelopeHeader.Measure(message)));
        using var dataKey = await provider.UnwrapDataKeyAsync(header.WrappedKeys[0], header.Context, default);
        var hkdf = new HkdfBytesGenerator(new Sha512Digest());
        hkdf.Init(new HkdfParameters(dataKey.Plaintext.ToArray(), header.MessageId, [.. "KMSE v1 key and commitment"u8, 0x00, 0x02]));
        var okm = new byte[64];
        hkdf.GenerateBytes(okm, 0, 64);
        Assert.Equal(okm[32..], header.Commitment);
    }

    /// <summary>An independent verifier from the spec: the public key from the context, ECDSA P-384 / SHA-384 over every byte before the 96-byte footer.</summary>
    private static bool VerifyWithBouncyCastle(byte[] message)
    {
        var curve = ECNamedCurveTable.GetByName("P-384");
        var domain = new ECDomainParameters(curve.Curve, curve.G, curve.N, curve.H);
        var point = curve.Curve.DecodePoint(Convert.FromBase64String(PublicKeyOf(message)));
        var signed = message[..^96];
        var digest = new Sha384Digest();
        digest.BlockUpdate(signed, 0, signed.Length);
        var hash = new byte[48];
        digest.DoFinal(hash, 0);
        var signer = new ECDsaSigner();
        signer.Init(false, new ECPublicKeyParameters(point, domain));
        return signer.VerifySignature(hash, new BigInteger(1, message[^96..^48]), new BigInteger(1, message[^48..]));
    }

    /// <summary>The public key a message's header carries, read with a parser of the test's own.</summary>
    private static string PublicKeyOf(byte[] message)
    {
        var offset = 39;
        var entries = BinaryPrimitives.ReadUInt32BigEndian(message.AsSpan(offset));
        offset += 4;
        for (var i = 0; i < entries; i++)
        {
            var keyLength = (int)BinaryPrimitives.ReadUInt32BigEndian(message.AsSpan(offset));
            var key = Encoding.UTF8.GetString(message, offset + 4, keyLength);
            offset += 4 + keyLength;
            var valueLength = (int)BinaryPrimitives.ReadUInt32BigEndian(message.AsSpan(offset));
            if (key == "kms-envelope-public-key")
            {
                return Encoding.UTF8.GetString(message, offset + 4, valueLength);
            }

            offset += 4 + valueLength;
        }

        throw new InvalidOperationException("no public key in the context");
    }

    private static char NextBase64(char c) => "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"["ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/".IndexOf(c, StringComparison.Ordinal) ^ 1];

    private static EnvelopeEncryptor NewSigned(out FakeKeyProvider provider)
    {
        provider = new FakeKeyProvider();
        return new EnvelopeEncryptor(provider, new EnvelopeOptions { KeyNames = ["tenants/t/keys/a"], FrameLength = Frame, Suite = EnvelopeSuite.CommittingSigned });
    }
}
