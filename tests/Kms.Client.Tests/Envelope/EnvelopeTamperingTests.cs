using System.Buffers.Binary;
using System.Security.Cryptography;
using Kms.Client.Envelope;

namespace Kms.Client.Tests.Envelope;

/// <summary>
/// Every alteration of a message fails with <see cref="EnvelopeDecryptionException"/> and
/// nothing else, through the one-shot and the streaming reader; garbage never allocates much.
/// </summary>
public sealed class EnvelopeTamperingTests
{
    private const string OpaqueMessage = "envelope decryption failed";
    private const int MessageIdStart = 4 + 1 + 2;
    private const int MessageIdEnd = MessageIdStart + 32;
    private const int CommitmentAndTagLength = 32 + 16;

    private static readonly Dictionary<string, string> Context = EnvelopeRoundTripTests.Context;

    [Fact]
    public async Task EveryBitFlip_AnywhereInAMultiFrameMultiKeyMessage_Fails()
    {
        using var encryptor = EnvelopeRoundTripTests.NewEncryptor(out _, ["tenants/t/keys/a", "tenants/t/keys/b"]);
        var message = await encryptor.EncryptAsync(EnvelopeRoundTripTests.Data((64 * 3) + 10), Context);
        Assert.Equal(EnvelopeRoundTripTests.Data((64 * 3) + 10), await encryptor.DecryptAsync(message, Context));

        // Past the format checks — the message id, the commitment, the header tag and every
        // frame — any flip is the one opaque answer; elsewhere in the header it may name the
        // format problem.
        var header = HeaderLength(message);
        for (var bit = 0; bit < message.Length * 8; bit++)
        {
            var altered = message.ToArray();
            altered[bit / 8] ^= (byte)(1 << (bit % 8));
            var offset = bit / 8;
            var opaque = offset is >= MessageIdStart and < MessageIdEnd || offset >= header - CommitmentAndTagLength;
            await AssertFailsBothWays(encryptor, altered, $"bit {bit}", opaque);
        }
    }

    [Theory]
    [InlineData((64 * 4) + 3)]
    [InlineData(64 * 2)] // two full frames, then an empty final frame
    [InlineData(0)] // a header and an empty final frame
    public async Task Truncation_AtEveryLength_Fails(int size)
    {
        using var encryptor = EnvelopeRoundTripTests.NewEncryptor(out _);
        var message = await encryptor.EncryptAsync(EnvelopeRoundTripTests.Data(size), Context);

        var header = HeaderLength(message);
        for (var length = 0; length < message.Length; length++)
        {
            await AssertFailsBothWays(encryptor, message[..length], $"length {length}", opaque: length >= header);
        }
    }

    [Fact]
    public async Task FramesReorderedDuplicatedDroppedOrAppended_Fail()
    {
        using var encryptor = EnvelopeRoundTripTests.NewEncryptor(out _);
        var message = await encryptor.EncryptAsync(EnvelopeRoundTripTests.Data(64 * 3), Context);
        var frame = 4 + 64 + 16;
        var bodyStart = message.Length - (3 * frame) - 28;
        var header = message[..bodyStart];
        var frames = Enumerable.Range(0, 3).Select(i => message[(bodyStart + (i * frame))..(bodyStart + ((i + 1) * frame))]).ToArray();
        var final = message[^28..];

        Assert.Equal(HeaderLength(message), bodyStart);

        await AssertFailsBothWays(encryptor, [.. header, .. frames[1], .. frames[0], .. frames[2], .. final], "swapped", opaque: true);
        await AssertFailsBothWays(encryptor, [.. header, .. frames[0], .. frames[0], .. frames[1], .. frames[2], .. final], "duplicated", opaque: true);
        await AssertFailsBothWays(encryptor, [.. header, .. frames[0], .. frames[2], .. final], "dropped", opaque: true);
        await AssertFailsBothWays(encryptor, [.. header, .. frames[0], .. frames[1], .. frames[2]], "final dropped", opaque: true);
        await AssertFailsBothWays(encryptor, [.. message, 0], "one byte appended", opaque: true);
        await AssertFailsBothWays(encryptor, [.. message, .. final], "final frame repeated", opaque: true);
    }

    [Fact]
    public async Task FrameSplicedFromAnotherMessageUnderTheSameDataKey_Fails()
    {
        using var encryptor = new EnvelopeEncryptor(new FakeKeyProvider(), new EnvelopeOptions
        {
            KeyNames = ["tenants/t/keys/a"],
            FrameLength = 64,
            DataKeyCache = new Kms.Client.Caching.DataKeyCacheOptions(),
        });
        var first = await encryptor.EncryptAsync(new byte[200], Context);
        var second = await encryptor.EncryptAsync(new byte[200], Context);
        Assert.Equal(1, encryptor.CacheStatistics!.EncryptMisses);

        var spliced = first.ToArray();
        var frameStart = first.Length - (3 * 84) - 28 - 8;
        second.AsSpan(frameStart, 84).CopyTo(spliced.AsSpan(frameStart));

        Assert.True(frameStart >= HeaderLength(first));
        await AssertFailsBothWays(encryptor, spliced, "spliced", opaque: true);
    }

    [Fact]
    public async Task WrongExpectedContext_FailsClearlyBeforeAnyKmsCall()
    {
        using var encryptor = EnvelopeRoundTripTests.NewEncryptor(out var provider);
        var message = await encryptor.EncryptAsync(new byte[10], Context);

        foreach (var expected in new[]
        {
            new Dictionary<string, string> { ["table"] = "orders", ["row"] = "43" },
            new Dictionary<string, string> { ["table"] = "orders" },
            new Dictionary<string, string>(Context) { ["extra"] = "" },
            [],
        })
        {
            var e = await Assert.ThrowsAsync<EnvelopeDecryptionException>(() => encryptor.DecryptAsync(message, expected));
            Assert.Contains("encryption context", e.Message, StringComparison.Ordinal);
        }

        Assert.Equal(0, provider.UnwrapCalls);
    }

    // The context is compared as exact UTF-8 bytes, not Unicode-normalised (docs/client.md): an
    // "é" composed (U+00E9) and decomposed (e, U+0301) are two contexts, in a key as in a value;
    // a reader that normalises differently from the writer is refused, never handed the data.
    [Fact]
    public async Task ExpectedContext_TheSameTextNormalisedOtherwise_Refused()
    {
        using var encryptor = EnvelopeRoundTripTests.NewEncryptor(out var provider);
        var message = await encryptor.EncryptAsync(new byte[10], new Dictionary<string, string> { ["caf\u00E9"] = "r\u00E9sum\u00E9" });

        foreach (var expected in new[]
        {
            new Dictionary<string, string> { ["cafe\u0301"] = "r\u00E9sum\u00E9" },
            new Dictionary<string, string> { ["caf\u00E9"] = "re\u0301sume\u0301" },
        })
        {
            var e = await Assert.ThrowsAsync<EnvelopeDecryptionException>(() => encryptor.DecryptAsync(message, expected));
            Assert.Contains("encryption context", e.Message, StringComparison.Ordinal);
        }

        Assert.Equal(0, provider.UnwrapCalls);
        Assert.Equal(10, (await encryptor.DecryptAsync(message, new Dictionary<string, string> { ["caf\u00E9"] = "r\u00E9sum\u00E9" })).Length);
    }

    // A database writer without KMS access copies the ssn column's ciphertext into the nickname
    // column. The ciphertext's context is valid — its own — so only a reader that says which
    // context it expects can tell. Every decrypt entry point requires it: null is no longer
    // "any context" (it was, and the nickname reader printed the SSN).
    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task CiphertextMovedToAnotherColumn_EveryDecryptEntryPoint_RefusesIt_NullIsNotAnyContext(bool cached)
    {
        var ssnColumn = new Dictionary<string, string> { ["table"] = "customers", ["column"] = "ssn" };
        var nicknameColumn = new Dictionary<string, string> { ["table"] = "customers", ["column"] = "nickname" };
        var provider = new FakeKeyProvider();
        using var encryptor = new EnvelopeEncryptor(provider, new EnvelopeOptions
        {
            KeyNames = ["tenants/t/keys/pii"],
            DataKeyCache = cached ? new Kms.Client.Caching.DataKeyCacheOptions { DecryptionMaxAge = TimeSpan.FromMinutes(1) } : null,
        });
        var ssn = await encryptor.EncryptAsync("078-05-1120"u8.ToArray(), ssnColumn);
        Assert.Equal("078-05-1120"u8.ToArray(), await encryptor.DecryptAsync(ssn, ssnColumn));
        var unwrapsBefore = provider.UnwrapCalls;

        Func<Task>[] readsAsNickname =
        [
            () => encryptor.DecryptAsync(ssn, nicknameColumn),
            () => encryptor.DecryptAsync(ssn.AsMemory(), nicknameColumn),
            () => encryptor.DecryptAsync(new MemoryStream(ssn), new MemoryStream(), nicknameColumn),
            () => encryptor.OpenDecryptingStreamAsync(new MemoryStream(ssn), nicknameColumn),
        ];
        foreach (var read in readsAsNickname)
        {
            var e = await Assert.ThrowsAsync<EnvelopeDecryptionException>(read);
            Assert.Contains("encryption context", e.Message, StringComparison.Ordinal);
        }

        // A reader that forgot the context gets an error, not the plaintext.
        Func<Task>[] readsWithoutContext =
        [
            () => encryptor.DecryptAsync(ssn, null!),
            () => encryptor.DecryptAsync(ssn.AsMemory(), null!),
            () => encryptor.DecryptAsync(new MemoryStream(ssn), new MemoryStream(), null!),
            () => encryptor.OpenDecryptingStreamAsync(new MemoryStream(ssn), null!),
        ];
        foreach (var read in readsWithoutContext)
        {
            var e = await Assert.ThrowsAsync<ArgumentNullException>(read);
            Assert.Equal("expectedContext", e.ParamName);
        }

        Assert.Equal(unwrapsBefore, provider.UnwrapCalls);
    }

    // The reader of context-free records says so with an empty map (as the CLI does with no
    // --context): a record of any other context is refused, not read.
    [Fact]
    public async Task ContextFreeReader_EmptyExpectedContext_RefusesARecordWithAContext()
    {
        using var encryptor = EnvelopeRoundTripTests.NewEncryptor(out var provider);
        var foreign = await encryptor.EncryptAsync("secret of app B"u8.ToArray(), new Dictionary<string, string> { ["app"] = "B" });
        var own = await encryptor.EncryptAsync("mine"u8.ToArray());

        await Assert.ThrowsAsync<EnvelopeDecryptionException>(() => encryptor.DecryptAsync(foreign, new Dictionary<string, string>()));
        await Assert.ThrowsAsync<EnvelopeDecryptionException>(() => encryptor.DecryptAsync(foreign, EnvelopeEncryptor.NoContext));
        Assert.Equal(0, provider.UnwrapCalls);
        Assert.Equal("mine"u8.ToArray(), await encryptor.DecryptAsync(own, EnvelopeEncryptor.NoContext));
    }

    // Discovery is explicit: AnyContext accepts whatever context the message has, and the
    // caller reads the (then authenticated) context from the stream or the message.
    [Fact]
    public async Task AnyContext_AcceptsEveryContext_AndTheContextIsReported()
    {
        using var encryptor = EnvelopeRoundTripTests.NewEncryptor(out _);
        var message = await encryptor.EncryptAsync(EnvelopeRoundTripTests.Data(100), Context);

        Assert.Equal(EnvelopeRoundTripTests.Data(100), await encryptor.DecryptAsync(message, EnvelopeEncryptor.AnyContext));
        Assert.Equal(Context, EnvelopeEncryptor.ReadEncryptionContext(message));
        await using var reader = await encryptor.OpenDecryptingStreamAsync(new MemoryStream(message), EnvelopeEncryptor.AnyContext);
        Assert.Equal(Context, reader.EncryptionContext);
        var plaintext = new MemoryStream();
        await reader.CopyToAsync(plaintext);
        Assert.Equal(EnvelopeRoundTripTests.Data(100), plaintext.ToArray());

        // Not a context: encrypting "with" it is refused, not taken for an empty context.
        await Assert.ThrowsAsync<ArgumentException>(() => encryptor.EncryptAsync(new byte[1], EnvelopeEncryptor.AnyContext));
        await Assert.ThrowsAsync<ArgumentException>(() => encryptor.OpenEncryptingStreamAsync(new MemoryStream(), EnvelopeEncryptor.AnyContext));
    }

    [Fact]
    public async Task AssociatedData_OtherOrMissing_FailsOpaquely()
    {
        using var encryptor = EnvelopeRoundTripTests.NewEncryptor(out _);
        var message = await encryptor.EncryptAsync(new byte[100], Context, "row 17"u8.ToArray());
        Assert.Equal(new byte[100], await encryptor.DecryptAsync(message, Context, "row 17"u8.ToArray()));
        var streamed = new MemoryStream();
        await encryptor.DecryptAsync(new MemoryStream(message), streamed, Context, "row 17"u8.ToArray());
        Assert.Equal(new byte[100], streamed.ToArray());

        foreach (var other in new[] { "row 18"u8.ToArray(), "row 1"u8.ToArray(), [] })
        {
            var e = await Assert.ThrowsAsync<EnvelopeDecryptionException>(() => encryptor.DecryptAsync(message, Context, other));
            Assert.Equal("envelope decryption failed", e.Message);
            await Assert.ThrowsAsync<EnvelopeDecryptionException>(() => encryptor.DecryptAsync(new MemoryStream(message), new MemoryStream(), Context, other));
        }
    }

    [Theory]
    [InlineData(4, 0x02, "unsupported envelope version 2")]
    [InlineData(6, 0x03, "unsupported envelope suite 0x0003")]
    [InlineData(0, (byte)'X', "not an envelope message")]
    public async Task UnknownVersionSuiteOrMagic_RejectedByName(int offset, byte value, string expected)
    {
        using var encryptor = EnvelopeRoundTripTests.NewEncryptor(out var provider);
        var message = await encryptor.EncryptAsync(new byte[10]);
        message[offset] = value;

        var e = await Assert.ThrowsAsync<EnvelopeDecryptionException>(() => encryptor.DecryptAsync(message, EnvelopeEncryptor.NoContext));

        Assert.StartsWith(expected, e.Message, StringComparison.Ordinal);
        Assert.Equal(0, provider.UnwrapCalls);
    }

    [Fact]
    public async Task UnwrapToAnotherDataKey_FailsOpaquely()
    {
        // A provider that answers with another data key than the one the message was written
        // with. (The commitment check itself is shown by the golden vector "commitment of
        // another data key", whose header tag is valid: only the commitment stops it.)
        var provider = new FakeKeyProvider();
        using var writer = new EnvelopeEncryptor(provider, new EnvelopeOptions { KeyNames = ["tenants/t/keys/a"] });
        var message = await writer.EncryptAsync(new byte[100]);
        var other = new StaticKeyProvider(RandomNumberGenerator.GetBytes(32), [ReadWrapped(message)]);
        using var reader = new EnvelopeEncryptor(other, new EnvelopeOptions { KeyNames = ["tenants/t/keys/a"] });

        var e = await Assert.ThrowsAsync<EnvelopeDecryptionException>(() => reader.DecryptAsync(message, EnvelopeEncryptor.NoContext));

        Assert.Equal("envelope decryption failed", e.Message);
    }

    [Fact]
    public async Task ProviderReportingAnotherKey_Refused_WhateverTheProviderChecks()
    {
        var provider = new FakeKeyProvider();
        using var writer = new EnvelopeEncryptor(provider, new EnvelopeOptions { KeyNames = ["tenants/t/keys/a"] });
        var message = await writer.EncryptAsync(new byte[10]);
        using var dataKey = await provider.UnwrapDataKeyAsync(ReadWrapped(message), EnvelopeContext.Empty, default);
        var lying = new StaticKeyProvider(dataKey.Plaintext.ToArray(), [ReadWrapped(message)], reportedKey: "tenants/t/keys/attacker");
        using var reader = new EnvelopeEncryptor(lying, new EnvelopeOptions { KeyNames = ["tenants/t/keys/a"] });

        var e = await Assert.ThrowsAsync<EnvelopeDecryptionException>(() => reader.DecryptAsync(message, EnvelopeEncryptor.NoContext));

        Assert.Contains("envelope decryption failed", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task TrustedKeyRepeatedInAHostileHeader_AskedForOnce()
    {
        var provider = new FakeKeyProvider();
        var wrapped = Enumerable.Range(0, 16).Select(i => new WrappedDataKey("tenants/t/keys/a", RandomNumberGenerator.GetBytes(60))).ToList();
        var hostile = EnvelopeMessage.Seal(RandomNumberGenerator.GetBytes(32), RandomNumberGenerator.GetBytes(32), EnvelopeContext.Encode(null), wrapped, 64, new byte[10], []);
        using var reader = new EnvelopeEncryptor(provider, new EnvelopeOptions { KeyNames = ["tenants/t/keys/a"] });

        await Assert.ThrowsAsync<EnvelopeDecryptionException>(() => reader.DecryptAsync(hostile, EnvelopeEncryptor.NoContext));

        Assert.Equal(1, provider.UnwrapCalls);
    }

    [Fact]
    public async Task UntrustedKeyNamesThatHideOrMoveText_EscapedInTheMessage_AsTheServerEscapesThem()
    {
        // The names come from an unauthenticated header: a right-to-left override, an isolate,
        // zero-width characters or a line separator would show the reader another name.
        string[] names = ["tenants/t/keys/\u202Etxet", "tenants/t/keys/\u2066x\u2069", "tenants/t/keys/a\u200Bb\uFEFF\u2060", "tenants/t/keys/a\u2028b\u0007"];
        var wrapped = names.Select(n => new WrappedDataKey(n, RandomNumberGenerator.GetBytes(60))).ToList();
        var hostile = EnvelopeMessage.Seal(RandomNumberGenerator.GetBytes(32), RandomNumberGenerator.GetBytes(32), EnvelopeContext.Encode(null), wrapped, 64, new byte[10], []);
        using var reader = new EnvelopeEncryptor(new FakeKeyProvider(), new EnvelopeOptions { KeyNames = ["tenants/t/keys/a"] });

        var e = await Assert.ThrowsAsync<EnvelopeDecryptionException>(() => reader.DecryptAsync(hostile, EnvelopeEncryptor.NoContext));

        Assert.Equal($"none of the message's keys is trusted by this encryptor: {string.Join(", ", names.Select(Kms.Core.Errors.KmsErrors.Printable))}", e.Message);
        Assert.Contains(@"tenants/t/keys/\u202Etxet, tenants/t/keys/\u2066x\u2069, tenants/t/keys/a\u200Bb\uFEFF\u2060, tenants/t/keys/a\u2028b?", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task KmsUnreachable_RetryableRpcException_NotAnEnvelopeError()
    {
        using var encryptor = EnvelopeRoundTripTests.NewEncryptor(out var provider, ["tenants/t/keys/a", "tenants/t/keys/b"]);
        var message = await encryptor.EncryptAsync(new byte[10]);
        provider.Refused.Add("tenants/t/keys/a");
        provider.Unreachable.Add("tenants/t/keys/b");

        var e = await Assert.ThrowsAsync<Grpc.Core.RpcException>(() => encryptor.DecryptAsync(message, EnvelopeEncryptor.NoContext));

        Assert.Equal(Grpc.Core.StatusCode.Unavailable, e.StatusCode);
    }

    [Theory]
    [InlineData(Grpc.Core.StatusCode.Internal)]
    [InlineData(Grpc.Core.StatusCode.Unknown)]
    [InlineData(Grpc.Core.StatusCode.DeadlineExceeded)]
    [InlineData(Grpc.Core.StatusCode.ResourceExhausted)]
    [InlineData(Grpc.Core.StatusCode.Aborted)]
    [InlineData(Grpc.Core.StatusCode.Cancelled)]
    public async Task KmsFailingWithoutAVerdict_ItsRpcException_NotAnEnvelopeError(Grpc.Core.StatusCode code)
    {
        // INTERNAL is, among others, how the transport reports a TLS handshake that failed:
        // nothing was asked, so nothing is known about the message.
        using var encryptor = EnvelopeRoundTripTests.NewEncryptor(out var provider, ["tenants/t/keys/a", "tenants/t/keys/b"]);
        var message = await encryptor.EncryptAsync(new byte[10]);
        provider.Refused.Add("tenants/t/keys/a");
        provider.Failing["tenants/t/keys/b"] = code;

        var e = await Assert.ThrowsAsync<Grpc.Core.RpcException>(() => encryptor.DecryptAsync(message, EnvelopeEncryptor.NoContext));

        Assert.Equal(code, e.StatusCode);
    }

    [Theory]
    [InlineData(Grpc.Core.StatusCode.InvalidArgument)]
    [InlineData(Grpc.Core.StatusCode.NotFound)]
    [InlineData(Grpc.Core.StatusCode.FailedPrecondition)]
    [InlineData(Grpc.Core.StatusCode.PermissionDenied)]
    [InlineData(Grpc.Core.StatusCode.Unauthenticated)]
    public async Task KmsVerdictOnEveryKey_EnvelopeDecryptionException_WithTheKmsAnswer(Grpc.Core.StatusCode code)
    {
        using var encryptor = EnvelopeRoundTripTests.NewEncryptor(out var provider, ["tenants/t/keys/a"]);
        var message = await encryptor.EncryptAsync(new byte[10]);
        provider.Failing["tenants/t/keys/a"] = code;

        var e = await Assert.ThrowsAsync<EnvelopeDecryptionException>(() => encryptor.DecryptAsync(message, EnvelopeEncryptor.NoContext));

        Assert.Equal(code, Assert.IsType<Grpc.Core.RpcException>(e.InnerException).StatusCode);
    }

    [Fact]
    public async Task Garbage_OfAnySize_OnlyEnvelopeDecryptionException()
    {
        using var encryptor = EnvelopeRoundTripTests.NewEncryptor(out _);
        var random = new Random(7);
        foreach (var size in new[] { 0, 1, 3, 4, 7, 38, 39, 40, 43, 100, 1000, 70_000 })
        {
            for (var round = 0; round < 20; round++)
            {
                var garbage = new byte[size];
                random.NextBytes(garbage);
                if (size >= 7 && round % 2 == 0)
                {
                    // Past the magic, version and suite, so the length checks are what is exercised.
                    "KMSE"u8.CopyTo(garbage);
                    garbage[4] = 1;
                    garbage[5] = 0;
                    garbage[6] = 1;
                }

                await AssertFailsBothWays(encryptor, garbage, $"garbage {size}/{round}");
            }
        }
    }

    [Fact]
    public async Task HeaderClaimingHugeLengths_RefusedBeforeAllocating()
    {
        using var encryptor = EnvelopeRoundTripTests.NewEncryptor(out _);
        var hostile = new byte[64];
        "KMSE"u8.CopyTo(hostile);
        hostile[4] = 1;
        hostile[6] = 1;
        BinaryPrimitives.WriteUInt32BigEndian(hostile.AsSpan(39), 64);
        BinaryPrimitives.WriteUInt32BigEndian(hostile.AsSpan(43), uint.MaxValue);

        var before = GC.GetAllocatedBytesForCurrentThread();
        var e = Assert.Throws<EnvelopeDecryptionException>(() => encryptor.DecryptAsync(hostile, EnvelopeEncryptor.NoContext).GetAwaiter().GetResult());
        var allocated = GC.GetAllocatedBytesForCurrentThread() - before;

        Assert.Contains("length limit", e.Message, StringComparison.Ordinal);
        Assert.True(allocated < 64 * 1024, $"allocated {allocated} bytes for a 64-byte hostile header");
    }

    [Theory]
    [InlineData((uint)EnvelopeFormat.MaxFrameLength + 1)]
    [InlineData(uint.MaxValue)]
    public async Task HeaderClaimingAFrameLengthOverTheLimit_RefusedBeforeAnyKmsCall(uint frameLength)
    {
        // The frame length is the reader's buffer size: a header claiming more than 4 MiB is
        // refused by the format check, before the data key is unwrapped or a buffer allocated.
        using var encryptor = EnvelopeRoundTripTests.NewEncryptor(out var provider);
        var message = await encryptor.EncryptAsync(EnvelopeRoundTripTests.Data(100), Context);
        var headerLength = EnvelopeHeader.Measure(message);
        BinaryPrimitives.WriteUInt32BigEndian(message.AsSpan(headerLength - EnvelopeFormat.TagLength - EnvelopeFormat.CommitmentLength - 4), frameLength);

        var oneShot = await Assert.ThrowsAsync<EnvelopeDecryptionException>(() => encryptor.DecryptAsync(message, Context));
        var streaming = await Assert.ThrowsAsync<EnvelopeDecryptionException>(() => encryptor.OpenDecryptingStreamAsync(new MemoryStream(message), Context));

        Assert.Contains("frame length", oneShot.Message, StringComparison.Ordinal);
        Assert.Contains("frame length", streaming.Message, StringComparison.Ordinal);
        Assert.Equal(0, provider.UnwrapCalls);
    }

    [Fact]
    public async Task HeaderClaimingAKeyNameOrWrappedKeyOverItsLimit_RefusedBeforeAnyKmsCall()
    {
        // Each length of a wrapped data key is checked against its own limit (which keeps the
        // header within EnvelopeFormat.MaxHeaderLength), not only against the 16-bit field.
        using var encryptor = EnvelopeRoundTripTests.NewEncryptor(out var provider);
        var message = await encryptor.EncryptAsync(EnvelopeRoundTripTests.Data(100), Context);
        var nameLength = EnvelopeFormat.FixedPrefixLength + EnvelopeContext.Measure(message.AsSpan(EnvelopeFormat.FixedPrefixLength)) + 1;
        var wrappedLength = nameLength + 2 + BinaryPrimitives.ReadUInt16BigEndian(message.AsSpan(nameLength));
        foreach (var (offset, claimed) in new[] { (nameLength, EnvelopeFormat.MaxKeyNameBytes + 1), (wrappedLength, EnvelopeFormat.MaxWrappedKeyBytes + 1) })
        {
            var altered = (byte[])message.Clone();
            BinaryPrimitives.WriteUInt16BigEndian(altered.AsSpan(offset), (ushort)claimed);
            var e = await Assert.ThrowsAsync<EnvelopeDecryptionException>(() => encryptor.DecryptAsync(altered, Context));
            Assert.Contains("length limit", e.Message, StringComparison.Ordinal);
        }

        Assert.Equal(0, provider.UnwrapCalls);
    }

    // Opaque: the alteration is past the format checks, so the exception must carry exactly the
    // one message that says nothing about what was wrong.
    private static async Task AssertFailsBothWays(EnvelopeEncryptor encryptor, byte[] message, string what, bool opaque = false)
    {
        await AssertOnlyEnvelopeException(() => encryptor.DecryptAsync(message, Context), what + " (one-shot)", opaque);
        await AssertOnlyEnvelopeException(() => encryptor.DecryptAsync(new MemoryStream(message), new MemoryStream(), Context), what + " (stream)", opaque);
    }

    private static async Task AssertOnlyEnvelopeException(Func<Task> decrypt, string what, bool opaque)
    {
        try
        {
            await decrypt();
        }
        catch (EnvelopeDecryptionException e)
        {
            Assert.True(!opaque || e.Message == OpaqueMessage, $"{what}: \"{e.Message}\" instead of \"{OpaqueMessage}\"");
            return;
        }
        catch (Exception e)
        {
            Assert.Fail($"{what}: {e.GetType().Name} instead of EnvelopeDecryptionException: {e.Message}");
        }

        Assert.Fail($"{what}: decrypted");
    }

    // The header's length, read from its fields (docs/envelope-format.md): magic, version, suite
    // and message id; the context; the wrapped keys; frame length, commitment and header tag.
    private static int HeaderLength(byte[] message)
    {
        var offset = MessageIdEnd;
        var entries = BinaryPrimitives.ReadUInt32BigEndian(message.AsSpan(offset));
        offset += 4;
        for (var i = 0; i < entries * 2; i++)
        {
            offset += 4 + (int)BinaryPrimitives.ReadUInt32BigEndian(message.AsSpan(offset));
        }

        var keys = message[offset];
        offset += 1;
        for (var i = 0; i < keys * 2; i++)
        {
            offset += 2 + BinaryPrimitives.ReadUInt16BigEndian(message.AsSpan(offset));
        }

        return offset + 4 + CommitmentAndTagLength;
    }

    private static WrappedDataKey ReadWrapped(byte[] message)
    {
        var offset = 39 + 4 + 1;
        var nameLength = BinaryPrimitives.ReadUInt16BigEndian(message.AsSpan(offset));
        var name = System.Text.Encoding.UTF8.GetString(message, offset + 2, nameLength);
        offset += 2 + nameLength;
        var wrappedLength = BinaryPrimitives.ReadUInt16BigEndian(message.AsSpan(offset));
        return new WrappedDataKey(name, message[(offset + 2)..(offset + 2 + wrappedLength)]);
    }
}
