using System.Buffers.Binary;
using Kms.Client.Caching;
using Kms.Client.Envelope;
using Microsoft.Extensions.Time.Testing;

namespace Kms.Client.Tests.Envelope;

/// <summary>
/// Suite 0x0002 with the encryption cache (docs/envelope-format-signed.md, "Caching"): one data key
/// and one key pair per entry, entries never shared across suites, the key pair disposed with its
/// entry but never under a message still being written.
/// </summary>
public sealed class EnvelopeSignedCacheTests
{
    private const string KeyName = "tenants/t/keys/a";

    private static readonly Dictionary<string, string> Context = new() { ["table"] = "orders", ["column"] = "card" };

    private readonly FakeTimeProvider _time = new(new DateTimeOffset(2026, 12, 6, 0, 0, 0, TimeSpan.Zero));
    private readonly FakeKeyProvider _provider = new();

    [Fact]
    public async Task SignedWriter_WithCache_ManyMessagesOneGenerateDataKey_AllVerifyAndDecrypt_OneKeyPair()
    {
        using var writer = Signed(new DataKeyCacheOptions());
        using var reader = new EnvelopeEncryptor(_provider, new EnvelopeOptions { KeyNames = [KeyName], RequireSignedMessages = true });
        var messages = new List<(byte[] Plaintext, byte[] Message)>();
        for (var i = 0; i < 20; i++)
        {
            var plaintext = EnvelopeRoundTripTests.Data(1024 + i);
            messages.Add((plaintext, await writer.EncryptAsync(plaintext, Context)));
        }

        var into = new byte[writer.GetMaxMessageLength(100, Context)];
        var length = await writer.EncryptAsync(new byte[100].AsMemory(), into.AsMemory(), Context);
        messages.Add((new byte[100], into[..length]));
        for (var i = 0; i < 3; i++)
        {
            var plaintext = EnvelopeRoundTripTests.Data(5000 + i);
            var output = new MemoryStream();
            await writer.EncryptAsync(new MemoryStream(plaintext), output, Context);
            messages.Add((plaintext, output.ToArray()));
        }

        Assert.Equal(1, _provider.GenerateCalls);
        Assert.Single(messages.Select(m => PublicKeyOf(m.Message)).Distinct());
        foreach (var (plaintext, message) in messages)
        {
            Assert.Equal(EnvelopeFormat.Suite2, BinaryPrimitives.ReadUInt16BigEndian(message.AsSpan(5)));
            Assert.Equal(plaintext, await reader.DecryptAsync(message, Context));
            var output = new MemoryStream();
            await reader.DecryptAsync(new MemoryStream(message), output, Context);
            Assert.Equal(plaintext, output.ToArray());
        }
    }

    [Fact]
    public async Task SignedWriter_MessageLimit_NewDataKeyAndKeyPairAfterN()
    {
        using var writer = Signed(new DataKeyCacheOptions { MaxMessagesPerKey = 3 });
        var messages = new List<byte[]>();
        for (var i = 0; i < 7; i++)
        {
            messages.Add(await writer.EncryptAsync(new byte[10], Context));
        }

        Assert.Equal(3, _provider.GenerateCalls);
        Assert.Equal(3, messages.Select(PublicKeyOf).Distinct().Count());
        Assert.Equal(messages.Select(PublicKeyOf).Distinct(), messages.Chunk(3).Select(chunk => PublicKeyOf(chunk[0])));
    }

    [Fact]
    public async Task SignedWriter_OlderThanMaxAge_NewDataKeyAndKeyPair_TheOldPairDisposedWithItsEntry()
    {
        using var writer = Signed(new DataKeyCacheOptions { MaxAge = TimeSpan.FromMinutes(5) });
        var first = await writer.EncryptAsync(new byte[10], Context);
        var entry = Assert.Single(writer.Cache!.Entries);
        var pair = entry.SigningKey!;
        Assert.False(pair.IsDisposed);

        _time.Advance(TimeSpan.FromMinutes(5));
        var second = await writer.EncryptAsync(new byte[10], Context);

        Assert.Equal(2, _provider.GenerateCalls);
        Assert.NotEqual(PublicKeyOf(first), PublicKeyOf(second));
        await WaitUntil(() => entry.IsZeroed);
        Assert.True(pair.IsDisposed, "an expired entry's signing key pair outlived it");
        Assert.Equal(new byte[10], await writer.DecryptAsync(first, Context));
    }

    [Fact]
    public async Task EncryptorDisposed_EveryCachedKeyPairDisposed()
    {
        var writer = Signed(new DataKeyCacheOptions());
        await writer.EncryptAsync(new byte[10], Context);
        await writer.EncryptAsync(new byte[10], new Dictionary<string, string> { ["table"] = "other" });
        var pairs = writer.Cache!.Entries.Select(e => e.SigningKey!).ToList();
        Assert.Equal(2, pairs.Count);
        Assert.All(pairs, pair => Assert.False(pair.IsDisposed));

        writer.Dispose();

        Assert.All(pairs, pair => Assert.True(pair.IsDisposed));
    }

    // A streaming writer signs in CompleteAsync: the pair it started with must outlive its entry
    // until then, and go when the stream does.
    [Fact]
    public async Task StreamingWriter_EntryEvictedAndCacheDisposedMidMessage_KeyPairLivesUntilTheStreamIsDone()
    {
        var writer = Signed(new DataKeyCacheOptions { MaxAge = TimeSpan.FromMinutes(5) });
        var plaintext = EnvelopeRoundTripTests.Data(1000);
        var output = new MemoryStream();
        var stream = await writer.OpenEncryptingStreamAsync(output, Context, plaintext.Length);
        var entry = Assert.Single(writer.Cache!.Entries);
        var pair = entry.SigningKey!;
        await stream.WriteAsync(plaintext.AsMemory(0, 500));

        _time.Advance(TimeSpan.FromMinutes(5));
        await writer.EncryptAsync(new byte[10], Context);
        await WaitUntil(() => entry.IsZeroed);
        writer.Dispose();
        Assert.False(pair.IsDisposed, "the key pair was disposed under a message still being written");

        await stream.WriteAsync(plaintext.AsMemory(500));
        await stream.CompleteAsync();
        await stream.DisposeAsync();
        Assert.True(pair.IsDisposed, "the key pair outlived its entry and its last message");

        using var reader = new EnvelopeEncryptor(_provider, new EnvelopeOptions { KeyNames = [KeyName], RequireSignedMessages = true });
        Assert.Equal(plaintext, await reader.DecryptAsync(output.ToArray(), Context));
    }

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public async Task SignedAndUnsignedWriters_OnOneCache_NeverGetEachOthersEntry(bool signedFirst)
    {
        using var signed = Signed(new DataKeyCacheOptions());
        using var unsigned = new EnvelopeEncryptor(_provider, new EnvelopeOptions { KeyNames = [KeyName] }, signed.Cache!);
        var (first, second) = signedFirst ? (signed, unsigned) : (unsigned, signed);

        var a = await first.EncryptAsync(new byte[10], Context);
        var b = await second.EncryptAsync(new byte[10], Context);
        var c = await first.EncryptAsync(new byte[10], Context);
        var d = await second.EncryptAsync(new byte[10], Context);

        // One data key per suite, each reused by its own suite's writer only.
        Assert.Equal(2, _provider.GenerateCalls);
        Assert.Equal(2, signed.Cache!.Entries.Count());
        var (signedMessages, unsignedMessages) = signedFirst ? ([a, c], [b, d]) : (new[] { b, d }, new[] { a, c });
        Assert.All(signedMessages, m => Assert.Equal(EnvelopeFormat.Suite2, Suite(m)));
        Assert.All(unsignedMessages, m => Assert.Equal(EnvelopeFormat.Suite1, Suite(m)));
        Assert.All(unsignedMessages, m => Assert.DoesNotContain(EnvelopeFormat.PublicKeyContextKey, Header(m).Context.Keys));
        Assert.Equal(PublicKeyOf(signedMessages[0]), PublicKeyOf(signedMessages[1]));

        using var strict = new EnvelopeEncryptor(_provider, new EnvelopeOptions { KeyNames = [KeyName], RequireSignedMessages = true });
        using var lenient = new EnvelopeEncryptor(_provider, new EnvelopeOptions { KeyNames = [KeyName] });
        foreach (var message in signedMessages)
        {
            Assert.Equal(new byte[10], await strict.DecryptAsync(message, Context));
        }

        foreach (var message in unsignedMessages)
        {
            Assert.Equal(new byte[10], await lenient.DecryptAsync(message, Context));
        }
    }

    // The public key is bound into the context the KMS generated the data key under: an entry
    // serves one caller context only, and each context gets its own data key and key pair.
    [Fact]
    public async Task SignedWriter_TwoContexts_TwoEntriesAndKeyPairs_EachMessageReadOnlyUnderItsOwn()
    {
        using var writer = Signed(new DataKeyCacheOptions());
        var other = new Dictionary<string, string> { ["table"] = "orders", ["column"] = "name" };
        using var reader = new EnvelopeEncryptor(_provider, new EnvelopeOptions { KeyNames = [KeyName], RequireSignedMessages = true });

        var a = new[] { await writer.EncryptAsync(new byte[10], Context), await writer.EncryptAsync(new byte[11], Context) };
        var b = new[] { await writer.EncryptAsync(new byte[12], other), await writer.EncryptAsync(new byte[13], other) };

        Assert.Equal(2, _provider.GenerateCalls);
        Assert.Equal(2, writer.Cache!.Entries.Count());
        Assert.Equal(PublicKeyOf(a[0]), PublicKeyOf(a[1]));
        Assert.Equal(PublicKeyOf(b[0]), PublicKeyOf(b[1]));
        Assert.NotEqual(PublicKeyOf(a[0]), PublicKeyOf(b[0]));
        Assert.Equal(Context.OrderBy(e => e.Key), Header(a[1]).CallerContext.OrderBy(e => e.Key));
        Assert.Equal(other.OrderBy(e => e.Key), Header(b[1]).CallerContext.OrderBy(e => e.Key));
        Assert.Equal(new byte[11], await reader.DecryptAsync(a[1], Context));
        Assert.Equal(new byte[13], await reader.DecryptAsync(b[1], other));
        await Assert.ThrowsAsync<EnvelopeDecryptionException>(() => reader.DecryptAsync(b[1], Context));
    }

    // One key pair, many writers at once: signing takes the pair's lock, so every footer is a
    // signature of its own message.
    [Fact]
    public async Task SignedWriter_ConcurrentMessagesUnderOneEntry_EverySignatureVerifies()
    {
        using var writer = Signed(new DataKeyCacheOptions());
        using var reader = new EnvelopeEncryptor(_provider, new EnvelopeOptions { KeyNames = [KeyName], RequireSignedMessages = true });
        await writer.EncryptAsync(new byte[1], Context);

        var messages = await Task.WhenAll(Enumerable.Range(0, 64).Select(i => Task.Run(async () =>
        {
            var plaintext = EnvelopeRoundTripTests.Data(100 + i);
            if (i % 2 == 0)
            {
                return (plaintext, await writer.EncryptAsync(plaintext, Context));
            }

            var output = new MemoryStream();
            await writer.EncryptAsync(new MemoryStream(plaintext), output, Context);
            return (plaintext, output.ToArray());
        })));

        Assert.Equal(1, _provider.GenerateCalls);
        Assert.Single(messages.Select(m => PublicKeyOf(m.Item2)).Distinct());
        foreach (var (plaintext, message) in messages)
        {
            Assert.Equal(plaintext, await reader.DecryptAsync(message, Context));
        }
    }

    // A streaming writer whose destination fails — at the header, mid-message, or at the footer —
    // or whose declared length falls short: its handle goes with the stream, never before (the
    // pair outlives the encryptor while the stream holds it) and never leaked (the pair goes
    // once the stream and the entry are gone).
    [Theory]
    [InlineData("header")]
    [InlineData("frame")]
    [InlineData("footer")]
    [InlineData("short")]
    public async Task StreamingWriter_FailsMidMessage_KeyPairReleasedWithTheStream_NeitherLeakedNorEarly(string failure)
    {
        var writer = Signed(new DataKeyCacheOptions(), frameLength: 64);
        await writer.EncryptAsync(new byte[1], Context);
        var pair = Assert.Single(writer.Cache!.Entries).SigningKey!;
        var destination = new FailingDestination(failure switch { "header" => 1, "frame" => 2, "footer" => 4, _ => int.MaxValue });
        var plaintext = EnvelopeRoundTripTests.Data(100);

        EnvelopeEncryptingStream? stream = null;
        var e = await Record.ExceptionAsync(async () =>
        {
            stream = await writer.OpenEncryptingStreamAsync(destination, Context, plaintext.Length);
            await stream.WriteAsync(plaintext.AsMemory(0, failure == "short" ? 99 : 100));
            await stream.CompleteAsync();
        });

        Assert.IsType(failure == "short" ? typeof(InvalidOperationException) : typeof(IOException), e);
        Assert.Equal(failure == "header", stream is null);
        writer.Dispose();
        Assert.Equal(failure == "header", pair.IsDisposed);
        if (stream is not null)
        {
            await stream.DisposeAsync();
        }

        Assert.True(pair.IsDisposed, "the key pair outlived its entry and every stream under it");
    }

    // A caller that stops waiting for the KMS call its entry is made by holds no handle: the
    // entry's pair goes with the entry.
    [Fact]
    public async Task Waiter_CancelledWhileTheEntryIsMade_NoHandleLeaked()
    {
        var writer = Signed(new DataKeyCacheOptions());
        _provider.Gate = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        using var cancellation = new CancellationTokenSource();
        var cancelled = writer.EncryptAsync(new byte[10], Context, cancellationToken: cancellation.Token);
        await WaitUntil(() => _provider.GenerateCalls == 1);

        await cancellation.CancelAsync();
        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => cancelled);
        _provider.Gate.SetResult();
        await writer.EncryptAsync(new byte[10], Context);

        Assert.Equal(1, _provider.GenerateCalls);
        var pair = Assert.Single(writer.Cache!.Entries).SigningKey!;
        writer.Dispose();
        Assert.True(pair.IsDisposed, "a cancelled waiter's handle kept the key pair alive");
    }

    // The destination overload refused an overlapping destination only after it had leased a
    // cached message (or called the KMS): a refused call used one of the entry's messages.
    [Fact]
    public async Task EncryptIntoDestination_OverlapsThePlaintext_RefusedBeforeAnyKmsCallOrLease()
    {
        using var writer = Signed(new DataKeyCacheOptions { MaxMessagesPerKey = 2 });
        var buffer = new byte[4096];

        await Assert.ThrowsAsync<ArgumentException>(() => writer.EncryptAsync(buffer.AsMemory(0, 100), buffer.AsMemory(50), Context));
        Assert.Equal(0, _provider.GenerateCalls);

        // The entry made next still has both its messages.
        await writer.EncryptAsync(new byte[10], Context);
        await writer.EncryptAsync(new byte[10], Context);
        Assert.Equal(1, _provider.GenerateCalls);
    }

    // A destination too small was found only in SealInto, after the cache lease (or the KMS call):
    // a refused call used one of the entry's messages. Short of everything but the wrapped keys'
    // variable part, it is refused first; the exact check stays after the lease.
    [Fact]
    public async Task EncryptIntoDestination_TooSmall_RefusedBeforeAnyKmsCallOrLease()
    {
        using var writer = Signed(new DataKeyCacheOptions { MaxMessagesPerKey = 2 });

        var e = await Assert.ThrowsAsync<ArgumentException>(() => writer.EncryptAsync(new byte[1000].AsMemory(), new byte[1000].AsMemory(), Context));
        Assert.Equal(0, _provider.GenerateCalls);
        Assert.StartsWith("the destination holds 1000 bytes; this message needs at least ", e.Message, StringComparison.Ordinal);

        // The entry made next still has both its messages.
        await writer.EncryptAsync(new byte[10], Context);
        await writer.EncryptAsync(new byte[10], Context);
        Assert.Equal(1, _provider.GenerateCalls);
    }

    // The early check is a lower bound, never more than the message: one byte short of the exact
    // length passes it and is refused by the exact check naming the length; the exact length is
    // written. Both suites, several keys, a context (an alias: EnvelopeKmsTests).
    [Theory]
    [InlineData(EnvelopeSuite.Committing)]
    [InlineData(EnvelopeSuite.CommittingSigned)]
    public async Task EncryptIntoDestination_OneByteShort_RefusedByTheExactCheck_ExactLengthWritten(EnvelopeSuite suite)
    {
        using var writer = new EnvelopeEncryptor(_provider, new EnvelopeOptions { KeyNames = [KeyName, "tenants/t/keys/b"], Suite = suite, FrameLength = 64 });
        var plaintext = EnvelopeRoundTripTests.Data(200);
        var exact = (await writer.EncryptAsync(plaintext, Context)).Length;

        var e = await Assert.ThrowsAsync<ArgumentException>(() => writer.EncryptAsync(plaintext.AsMemory(), new byte[exact - 1].AsMemory(), Context));
        var destination = new byte[exact];
        var written = await writer.EncryptAsync(plaintext.AsMemory(), destination.AsMemory(), Context);

        Assert.Equal($"the destination holds {exact - 1} bytes; this message needs {exact} (Parameter 'destination')", e.Message);
        Assert.Equal(exact, written);
    }

    // If the signer or the encrypting stream cannot be made, the message's handle on the cached
    // key pair (and the cipher) must still be released: a leaked handle keeps the pair alive past
    // its entry and the encryptor.
    [Theory]
    [InlineData("signature", "one-shot")]
    [InlineData("signature", "into")]
    [InlineData("signature", "stream")]
    [InlineData("stream", "stream")]
    public async Task SignerOrStreamConstructorThrows_TheMessagesKeyPairHandleIsReleased(string failing, string api)
    {
        var writer = Signed(new DataKeyCacheOptions());
        await writer.EncryptAsync(new byte[10], Context);
        var pair = Assert.Single(writer.Cache!.Entries).SigningKey!;
        writer.FaultForTests = point =>
        {
            if (point == failing)
            {
                throw new InvalidOperationException("injected");
            }
        };

        var output = new MemoryStream();
        Func<Task> write = api switch
        {
            "one-shot" => () => writer.EncryptAsync(new byte[10], Context),
            "into" => () => writer.EncryptAsync(new byte[10].AsMemory(), new byte[4096].AsMemory(), Context),
            _ => () => writer.OpenEncryptingStreamAsync(output, Context, 10),
        };
        await Assert.ThrowsAsync<InvalidOperationException>(write);
        Assert.Equal(0, output.Length);
        writer.Dispose();

        Assert.True(pair.IsDisposed, "a failed message's handle kept the key pair alive past its entry and the encryptor");
    }

    private EnvelopeEncryptor Signed(DataKeyCacheOptions cache, int frameLength = EnvelopeFormat.DefaultFrameLength)
    {
        cache.TimeProvider = _time;
        return new EnvelopeEncryptor(_provider, new EnvelopeOptions { KeyNames = [KeyName], Suite = EnvelopeSuite.CommittingSigned, DataKeyCache = cache, FrameLength = frameLength });
    }

    private static EnvelopeHeader Header(byte[] message) => EnvelopeHeader.Parse(message.AsSpan(0, EnvelopeHeader.Measure(message)));

    private static ushort Suite(byte[] message) => BinaryPrimitives.ReadUInt16BigEndian(message.AsSpan(5));

    private static string PublicKeyOf(byte[] message) => Header(message).Context[EnvelopeFormat.PublicKeyContextKey];

    private static async Task WaitUntil(Func<bool> condition)
    {
        var deadline = DateTime.UtcNow.AddSeconds(30);
        while (!condition())
        {
            Assert.True(DateTime.UtcNow < deadline, "condition not met within 30 s");
            await Task.Delay(10);
        }
    }

    /// <summary>A destination whose <c>n</c>-th write fails (1: the header; 2: the first frame; a 100-byte message at 64-byte frames writes header, frame, final frame, footer).</summary>
    private sealed class FailingDestination(int failingWrite) : Stream
    {
        private int _writes;

        public override bool CanRead => false;

        public override bool CanSeek => false;

        public override bool CanWrite => true;

        public override long Length => throw new NotSupportedException();

        public override long Position
        {
            get => throw new NotSupportedException();
            set => throw new NotSupportedException();
        }

        public override void Write(byte[] buffer, int offset, int count)
        {
            if (++_writes == failingWrite)
            {
                throw new IOException("the disk is full");
            }
        }

        public override void Flush()
        {
        }

        public override int Read(byte[] buffer, int offset, int count) => throw new NotSupportedException();

        public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();

        public override void SetLength(long value) => throw new NotSupportedException();
    }
}
