using Kms.Client.Envelope;

namespace Kms.Client.Tests.Envelope;

/// <summary>Round trips through every API pairing, at the sizes around frame boundaries.</summary>
public sealed class EnvelopeRoundTripTests
{
    private const int Frame = 64;

    public static TheoryData<int> Sizes() => new() { 0, 1, Frame - 1, Frame, Frame + 1, (Frame * 7) + 5, Frame * 8 };

    [Theory]
    [MemberData(nameof(Sizes))]
    public async Task OneShot_EverySize_RoundTrips(int size)
    {
        using var encryptor = NewEncryptor(out _);
        var plaintext = Data(size);

        var message = await encryptor.EncryptAsync(plaintext, Context);

        Assert.Equal(plaintext, await encryptor.DecryptAsync(message, Context));
        // Header: 39 fixed + 36 context + 1 + (2 + 16 name + 2 + 60 wrapped) + 4 + 32 + 16 = 208.
        Assert.Equal(208 + ((size / Frame) * (Frame + 20)) + (size % Frame) + 28, message.Length);
    }

    [Theory]
    [MemberData(nameof(Sizes))]
    public async Task StreamEncrypt_OneShotDecrypt_AndBack(int size)
    {
        using var encryptor = NewEncryptor(out _);
        var plaintext = Data(size);

        var streamed = new MemoryStream();
        await encryptor.EncryptAsync(new NonSeekableStream(plaintext), streamed, Context);
        Assert.Equal(plaintext, await encryptor.DecryptAsync(streamed.ToArray(), Context));

        var oneShot = await encryptor.EncryptAsync(plaintext, Context);
        var output = new MemoryStream();
        await encryptor.DecryptAsync(new NonSeekableStream(oneShot), output, Context);
        Assert.Equal(plaintext, output.ToArray());
    }

    [Theory]
    [MemberData(nameof(Sizes))]
    public async Task Streams_SmallWritesAndSyncReads_RoundTrip(int size)
    {
        using var encryptor = NewEncryptor(out _);
        var plaintext = Data(size);
        var message = new MemoryStream();
        await using (var writer = await encryptor.OpenEncryptingStreamAsync(message, Context))
        {
            for (var offset = 0; offset < size; offset += 7)
            {
                writer.Write(plaintext.AsSpan(offset, Math.Min(7, size - offset)));
            }

            writer.Complete();
        }

        message.Position = 0;
        await using var reader = await encryptor.OpenDecryptingStreamAsync(message, Context);
        var output = new MemoryStream();
        var buffer = new byte[5];
        int read;
        while ((read = reader.Read(buffer, 0, buffer.Length)) > 0)
        {
            output.Write(buffer, 0, read);
        }

        Assert.Equal(plaintext, output.ToArray());
        Assert.Equal(Context, reader.EncryptionContext);
    }

    [Theory]
    [MemberData(nameof(Sizes))]
    public async Task EncryptIntoDestination_SameMessageLayout_AndDecrypts(int size)
    {
        using var encryptor = NewEncryptor(out _);
        var plaintext = Data(size);
        var destination = new byte[encryptor.GetMaxMessageLength(size, Context)];

        var written = await encryptor.EncryptAsync(plaintext, destination.AsMemory(), Context);

        Assert.Equal((await encryptor.EncryptAsync(plaintext, Context)).Length, written);
        Assert.InRange(destination.Length - written, 0, 2 * 1024);
        Assert.Equal(plaintext, await encryptor.DecryptAsync(destination.AsMemory(0, written), Context));
    }

    [Fact]
    public async Task EncryptIntoDestination_TooSmall_RefusedNamingTheSize()
    {
        using var encryptor = NewEncryptor(out _);
        var destination = new byte[100];

        var e = await Assert.ThrowsAsync<ArgumentException>(() => encryptor.EncryptAsync(Data(10), destination.AsMemory()));

        Assert.Contains("needs", e.Message, StringComparison.Ordinal);
        Assert.DoesNotContain(destination, b => b != 0);
    }

    [Fact]
    public async Task EncryptingStream_MoreThanTheDeclaredLength_Refused()
    {
        using var encryptor = NewEncryptor(out _);
        await using var writer = await encryptor.OpenEncryptingStreamAsync(new MemoryStream(), plaintextLength: 10);
        await writer.WriteAsync(new byte[10]);

        await Assert.ThrowsAsync<InvalidOperationException>(() => writer.WriteAsync(new byte[1]).AsTask());
        Assert.False(writer.CanWrite);
    }

    [Fact]
    public async Task EncryptingStream_OverlappingWrites_RefusedNotSealedTwice()
    {
        using var encryptor = NewEncryptor(out _);
        var gate = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var destination = new GatedStream();
        await using var writer = await encryptor.OpenEncryptingStreamAsync(destination);
        destination.Gate = gate.Task;

        var first = writer.WriteAsync(new byte[Frame]).AsTask();
        await Assert.ThrowsAsync<InvalidOperationException>(() => writer.WriteAsync(new byte[Frame]).AsTask());
        gate.SetResult();
        await first;
    }

    [Fact]
    public async Task DecryptingStream_OverlappingReads_Refused_TheFirstStillReadsAVerifiedFrame()
    {
        using var encryptor = NewEncryptor(out _);
        var plaintext = Data((Frame * 2) + 5);
        var source = new GatedStream(await encryptor.EncryptAsync(plaintext));
        await using var reader = await encryptor.OpenDecryptingStreamAsync(source);
        var gate = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        source.Gate = gate.Task;

        var first = reader.ReadAsync(new byte[Frame]).AsTask();
        var second = reader.ReadAsync(new byte[Frame]).AsTask();

        // Refused at once, not queued behind the first read's source (which would wait for the gate).
        Assert.True(second.IsFaulted, "the overlapping read was not refused");
        await Assert.ThrowsAsync<InvalidOperationException>(() => second);
        gate.SetResult();

        Assert.Equal(Frame, await first);
        var rest = new MemoryStream();
        await reader.CopyToAsync(rest);
        Assert.Equal(plaintext[Frame..], rest.ToArray());
    }

    [Fact]
    public async Task DecryptingStream_SecondFramesTagAltered_TheCallerGotTheFirstFrameOnly()
    {
        // Claim 46: a frame's plaintext reaches the caller only after its tag verified.
        using var encryptor = NewEncryptor(out _);
        var plaintext = Data((Frame * 2) + 5);
        var message = await encryptor.EncryptAsync(plaintext);
        var finalFrame = EnvelopeFormat.FinalFramePrefix + 5 + EnvelopeFormat.TagLength;
        message[^(finalFrame + 1)] ^= 1; // the last byte of frame 2's tag
        var received = new MemoryStream();

        await Assert.ThrowsAsync<EnvelopeDecryptionException>(() => encryptor.DecryptAsync(new MemoryStream(message), received));

        Assert.Equal(plaintext[..Frame], received.ToArray());
    }

    [Fact]
    public async Task TrustedKeyNames_AKeyWrittenUnderButNotTrusted_StaysUntrusted_NoKmsCall()
    {
        // Writing under W once must not make messages that name only W readable: anyone who
        // may encrypt under W could otherwise forge what this reader accepts.
        var provider = new FakeKeyProvider();
        using var encryptor = new EnvelopeEncryptor(provider, new EnvelopeOptions
        {
            KeyNames = ["tenants/t/keys/w"],
            TrustedKeyNames = ["tenants/t/keys/r"],
            FrameLength = Frame,
        });
        var message = await encryptor.EncryptAsync(Data(10));

        var refused = await Assert.ThrowsAsync<EnvelopeDecryptionException>(() => encryptor.DecryptAsync(message));

        Assert.Contains("tenants/t/keys/w", refused.Message, StringComparison.Ordinal);
        Assert.Equal(0, provider.UnwrapCalls);
        using var trusting = new EnvelopeEncryptor(provider, new EnvelopeOptions { KeyNames = ["tenants/t/keys/w"], FrameLength = Frame });
        Assert.Equal(Data(10), await trusting.DecryptAsync(message));
    }

    [Fact]
    public async Task EmptyEncryptionContext_HandedOutReadOnly_SoNoCallerChangesTheNextOne()
    {
        using var encryptor = NewEncryptor(out _);
        var context = EnvelopeEncryptor.ReadEncryptionContext(await encryptor.EncryptAsync(Data(10)));

        Assert.Empty(context);
        Assert.False(context is IDictionary<string, string> { IsReadOnly: false }, "the shared empty context is writable");
    }

    [Fact]
    public async Task DecryptingStream_AfterDispose_ObjectDisposed()
    {
        using var encryptor = NewEncryptor(out _);
        var message = await encryptor.EncryptAsync(Data(100));
        var reader = await encryptor.OpenDecryptingStreamAsync(new MemoryStream(message));
        Assert.Equal(10, await reader.ReadAsync(new byte[10]));
        await reader.DisposeAsync();

        Assert.Throws<ObjectDisposedException>(() => reader.Read(new byte[10], 0, 10));
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task DecryptingStream_CopyTo_LeavesNoPlaintextInABufferItDoesNotZero(bool useAsync)
    {
        // Stream.CopyTo's default reads through a pooled array it returns uncleared: the plaintext
        // would stay in ArrayPool.Shared for the next renter. Every buffer the destination is
        // handed must be the stream's own, zeroed on dispose.
        using var encryptor = NewEncryptor(out _);
        var plaintext = Data(1000);
        var message = await encryptor.EncryptAsync(plaintext);
        var destination = new BufferRecordingStream();
        await using (var reader = await encryptor.OpenDecryptingStreamAsync(new MemoryStream(message)))
        {
            if (useAsync)
            {
                await reader.CopyToAsync(destination);
            }
            else
            {
                reader.CopyTo(destination);
            }
        }

        Assert.Equal(plaintext, destination.ToArray());
        Assert.NotEmpty(destination.Buffers);
        Assert.All(destination.Buffers, b => Assert.True(b.All(x => x == 0), "a buffer handed to the destination still holds plaintext"));
    }

    [Fact]
    public async Task ContextDictionaryChangedWhileEncrypting_MessageStillDecryptsUnderTheOriginal()
    {
        var provider = new FakeKeyProvider { Gate = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously) };
        using var encryptor = new EnvelopeEncryptor(provider, new EnvelopeOptions
        {
            KeyNames = ["tenants/t/keys/a", "tenants/t/keys/b"],
            DataKeyCache = new Kms.Client.Caching.DataKeyCacheOptions(),
        });
        var context = new Dictionary<string, string> { ["row"] = "1" };

        var encrypting = encryptor.EncryptAsync(Data(10), context);
        context["row"] = "2";
        provider.Gate.SetResult();
        var message = await encrypting;
        provider.Refused.Add("tenants/t/keys/a");

        Assert.Equal(Data(10), await encryptor.DecryptAsync(message, new Dictionary<string, string> { ["row"] = "1" }));
    }

    [Fact]
    public async Task NullOrOverlappingBuffers_Refused()
    {
        using var encryptor = NewEncryptor(out _);
        var buffer = new byte[4096];

        await Assert.ThrowsAsync<ArgumentNullException>(() => encryptor.EncryptAsync((byte[])null!));
        await Assert.ThrowsAsync<ArgumentNullException>(() => encryptor.DecryptAsync((byte[])null!));
        await Assert.ThrowsAsync<ArgumentException>(() => encryptor.EncryptAsync(buffer.AsMemory(0, 100), buffer.AsMemory(50)));
    }

    [Fact]
    public async Task EncryptingStream_DisposedWithoutComplete_LeavesAMessageEveryReaderRejects()
    {
        using var encryptor = NewEncryptor(out _);
        var message = new MemoryStream();
        await using (var writer = await encryptor.OpenEncryptingStreamAsync(message))
        {
            await writer.WriteAsync(Data(Frame * 3));
        }

        await Assert.ThrowsAsync<EnvelopeDecryptionException>(() => encryptor.DecryptAsync(message.ToArray()));
        await Assert.ThrowsAsync<EnvelopeDecryptionException>(() => encryptor.DecryptAsync(new MemoryStream(message.ToArray()), new MemoryStream()));
    }

    [Fact]
    public async Task EncryptingStream_AfterComplete_RefusesMoreWrites()
    {
        using var encryptor = NewEncryptor(out _);
        await using var writer = await encryptor.OpenEncryptingStreamAsync(new MemoryStream());
        await writer.CompleteAsync();

        Assert.Throws<InvalidOperationException>(() => writer.Write(new byte[1]));
        Assert.False(writer.CanWrite);
    }

    [Fact]
    public async Task EncryptAsync_SamePlaintextTwice_DifferentMessages()
    {
        using var encryptor = NewEncryptor(out _);

        var first = await encryptor.EncryptAsync(Data(10));
        var second = await encryptor.EncryptAsync(Data(10));

        Assert.NotEqual(first, second);
    }

    [Fact]
    public async Task MultiKey_FirstKeyRefused_DecryptsWithTheSecond()
    {
        using var encryptor = NewEncryptor(out var provider, ["tenants/t/keys/site-a", "tenants/t/keys/site-b"]);
        var message = await encryptor.EncryptAsync(Data(100));
        provider.Refused.Add("tenants/t/keys/site-a");

        Assert.Equal(Data(100), await encryptor.DecryptAsync(message));
        Assert.Equal(2, provider.UnwrapCalls);
    }

    [Fact]
    public async Task MultiKey_ReaderTrustingOnlyTheSecondKey_NeverAsksForTheFirst()
    {
        using var writer = NewEncryptor(out var provider, ["tenants/t/keys/site-a", "tenants/t/keys/site-b"]);
        var message = await writer.EncryptAsync(Data(100));
        using var reader = new EnvelopeEncryptor(provider, new EnvelopeOptions { KeyNames = ["tenants/t/keys/site-b"], FrameLength = Frame });
        provider.Refused.Add("tenants/t/keys/site-a");

        Assert.Equal(Data(100), await reader.DecryptAsync(message));
        Assert.Equal(1, provider.UnwrapCalls);
    }

    [Fact]
    public async Task Decrypt_NoTrustedKey_RefusedWithoutAKmsCall()
    {
        using var writer = NewEncryptor(out var provider, ["tenants/t/keys/other"]);
        var message = await writer.EncryptAsync(Data(3));
        using var reader = new EnvelopeEncryptor(provider, new EnvelopeOptions { KeyNames = ["tenants/t/keys/mine"] });

        var e = await Assert.ThrowsAsync<EnvelopeDecryptionException>(() => reader.DecryptAsync(message));

        Assert.Contains("tenants/t/keys/other", e.Message, StringComparison.Ordinal);
        Assert.Equal(0, provider.UnwrapCalls);
    }

    [Fact]
    public async Task Decrypt_AllKeysRefused_NamesTheKmsErrors()
    {
        using var encryptor = NewEncryptor(out var provider);
        var message = await encryptor.EncryptAsync(Data(3));
        provider.Refused.Add("tenants/t/keys/a");

        var e = await Assert.ThrowsAsync<EnvelopeDecryptionException>(() => encryptor.DecryptAsync(message));

        Assert.Contains("tenants/t/keys/a: FailedPrecondition", e.Message, StringComparison.Ordinal);
        Assert.IsType<Grpc.Core.RpcException>(e.InnerException);
    }

    [Fact]
    public async Task Encrypt_DataKeysHandedOut_AreZeroedAfterUse()
    {
        using var encryptor = NewEncryptor(out var provider);

        var message = await encryptor.EncryptAsync(Data(100));
        await encryptor.DecryptAsync(message);
        var output = new MemoryStream();
        await encryptor.DecryptAsync(new MemoryStream(message), output);

        Assert.Equal(3, provider.HandedOut.Count);
        Assert.All(provider.HandedOut, key => Assert.DoesNotContain(key, b => b != 0));
    }

    [Fact]
    public void Options_Invalid_RefusedWithTheLimit()
    {
        var provider = new FakeKeyProvider();
        Assert.Contains("1 to 16", Assert.Throws<ArgumentException>(() => new EnvelopeEncryptor(provider, new EnvelopeOptions())).Message, StringComparison.Ordinal);
        Assert.Throws<ArgumentOutOfRangeException>(() => new EnvelopeEncryptor(provider, new EnvelopeOptions { KeyNames = ["k"], FrameLength = 63 }));
        Assert.Throws<ArgumentOutOfRangeException>(() => new EnvelopeEncryptor(provider, new EnvelopeOptions { KeyNames = ["k"], FrameLength = (4 << 20) + 1 }));
        Assert.Throws<ArgumentException>(() => new EnvelopeEncryptor(provider, new EnvelopeOptions { KeyNames = ["k", "k"] }));
    }

    [Fact]
    public async Task Encrypt_ContextOverTheLimits_ArgumentException()
    {
        using var encryptor = NewEncryptor(out var provider);

        await Assert.ThrowsAsync<ArgumentException>(() => encryptor.EncryptAsync(Data(1), new Dictionary<string, string> { [""] = "x" }));
        await Assert.ThrowsAsync<ArgumentException>(() => encryptor.EncryptAsync(Data(1), new Dictionary<string, string> { ["k"] = new string('v', 1025) }));
        await Assert.ThrowsAsync<ArgumentException>(() => encryptor.EncryptAsync(Data(1), Enumerable.Range(0, 65).ToDictionary(i => $"k{i}", _ => "")));
        await Assert.ThrowsAsync<ArgumentException>(() => encryptor.EncryptAsync(Data(1), new Dictionary<string, string> { ["k"] = "\ud800" }));
        Assert.Equal(0, provider.GenerateCalls);
    }

    [Fact]
    public async Task Overhead_MatchesTheSpecsWorkedExample()
    {
        // docs/envelope-format.md: a 64-byte key name, a 77-byte blob, empty context, 64 KiB
        // frames: 1 MiB becomes 1,048,576 + 16 × 20 + 28 + 241 bytes.
        var name = "tenants/" + new string('t', 49) + "/keys/k";
        Assert.Equal(64, name.Length);
        var provider = new StaticKeyProvider(new byte[32], [new WrappedDataKey(name, new byte[77])]);
        using var encryptor = new EnvelopeEncryptor(provider, new EnvelopeOptions { KeyNames = [name] });

        var message = await encryptor.EncryptAsync(new byte[1 << 20]);

        Assert.Equal(1_048_576 + (16 * 20) + 28 + 241, message.Length);
    }

    internal static readonly Dictionary<string, string> Context = new() { ["table"] = "orders", ["row"] = "42" };

    internal static byte[] Data(int size) => Enumerable.Range(0, size).Select(i => (byte)((i * 13) + 1)).ToArray();

    internal static EnvelopeEncryptor NewEncryptor(out FakeKeyProvider provider, IList<string>? keys = null)
    {
        provider = new FakeKeyProvider();
        return new EnvelopeEncryptor(provider, new EnvelopeOptions { KeyNames = keys ?? ["tenants/t/keys/a"], FrameLength = Frame });
    }
}

/// <summary>
/// A stream whose writes (discarded) and reads (of <paramref name="content"/>, if given) wait for
/// a gate (open until one is set).
/// </summary>
internal sealed class GatedStream(byte[]? content = null) : Stream
{
    private readonly MemoryStream? _inner = content is null ? null : new MemoryStream(content);

    public Task Gate { get; set; } = Task.CompletedTask;

    public override bool CanRead => _inner is not null;

    public override bool CanSeek => false;

    public override bool CanWrite => _inner is null;

    public override long Length => throw new NotSupportedException();

    public override long Position
    {
        get => throw new NotSupportedException();
        set => throw new NotSupportedException();
    }

    public override async ValueTask WriteAsync(ReadOnlyMemory<byte> buffer, CancellationToken cancellationToken = default) => await Gate;

    public override void Write(byte[] buffer, int offset, int count) => Gate.GetAwaiter().GetResult();

    public override async ValueTask<int> ReadAsync(Memory<byte> buffer, CancellationToken cancellationToken = default)
    {
        await Gate;
        return await (_inner ?? throw new NotSupportedException()).ReadAsync(buffer, cancellationToken);
    }

    public override int Read(byte[] buffer, int offset, int count)
    {
        Gate.GetAwaiter().GetResult();
        return (_inner ?? throw new NotSupportedException()).Read(buffer, offset, count);
    }

    public override void Flush()
    {
    }

    public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();

    public override void SetLength(long value) => throw new NotSupportedException();

    protected override void Dispose(bool disposing)
    {
        if (disposing)
        {
            _inner?.Dispose();
        }

        base.Dispose(disposing);
    }
}

/// <summary>A read-only stream that cannot seek and hands out few bytes per read, like a socket.</summary>
internal sealed class NonSeekableStream(byte[] data) : Stream
{
    private int _position;

    public override bool CanRead => true;

    public override bool CanSeek => false;

    public override bool CanWrite => false;

    public override long Length => throw new NotSupportedException();

    public override long Position
    {
        get => throw new NotSupportedException();
        set => throw new NotSupportedException();
    }

    public override int Read(byte[] buffer, int offset, int count)
    {
        var n = Math.Min(Math.Min(count, 11), data.Length - _position);
        data.AsSpan(_position, n).CopyTo(buffer.AsSpan(offset));
        _position += n;
        return n;
    }

    public override void Flush()
    {
    }

    public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();

    public override void SetLength(long value) => throw new NotSupportedException();

    public override void Write(byte[] buffer, int offset, int count) => throw new NotSupportedException();
}

/// <summary>A memory stream that keeps a reference to every array it is asked to write from.</summary>
internal sealed class BufferRecordingStream : MemoryStream
{
    public List<byte[]> Buffers { get; } = [];

    public override void Write(byte[] buffer, int offset, int count)
    {
        Buffers.Add(buffer);
        base.Write(buffer, offset, count);
    }

    public override void Write(ReadOnlySpan<byte> buffer) => Write(buffer.ToArray(), 0, buffer.Length);

    public override Task WriteAsync(byte[] buffer, int offset, int count, CancellationToken cancellationToken)
    {
        Write(buffer, offset, count);
        return Task.CompletedTask;
    }

    public override ValueTask WriteAsync(ReadOnlyMemory<byte> buffer, CancellationToken cancellationToken = default)
    {
        if (System.Runtime.InteropServices.MemoryMarshal.TryGetArray(buffer, out var segment))
        {
            Write(segment.Array!, segment.Offset, segment.Count);
        }
        else
        {
            Write(buffer.ToArray(), 0, buffer.Length);
        }

        return ValueTask.CompletedTask;
    }
}
