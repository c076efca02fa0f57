using Kms.Client.Envelope;
using Kms.Client.Tests.Failover;
using Microsoft.Extensions.Logging;

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

    // A declared length is the plaintext's length: completing short of it would make a whole,
    // valid message of part of the plaintext.
    [Fact]
    public async Task EncryptingStream_FewerBytesThanDeclared_CompletionRefused_MessageStaysIncomplete()
    {
        using var encryptor = NewEncryptor(out _);
        var message = new MemoryStream();
        await using (var writer = await encryptor.OpenEncryptingStreamAsync(message, Context, plaintextLength: Frame * 2))
        {
            await writer.WriteAsync(Data(Frame + 5));

            var refused = await Assert.ThrowsAsync<InvalidOperationException>(() => writer.CompleteAsync());
            Assert.Contains($"{Frame + 5} plaintext bytes were written of the {Frame * 2} declared", refused.Message, StringComparison.Ordinal);
            Assert.False(writer.CanWrite);
            Assert.Throws<InvalidOperationException>(writer.Complete);
        }

        await Assert.ThrowsAsync<EnvelopeDecryptionException>(() => encryptor.DecryptAsync(message.ToArray(), Context));
    }

    // A file cut (or replaced by a shorter one) while it is encrypted: the source's Length, taken
    // when encryption started, said more than it then gave.
    [Fact]
    public async Task EncryptStream_SeekableSourceEndingBeforeItsLength_Throws_NoWholeMessageOfPartOfIt()
    {
        using var encryptor = NewEncryptor(out _);
        var source = new ShrunkFileStream(Data((Frame * 3) + 7), deliver: Frame + 3);
        var message = new MemoryStream();

        await Assert.ThrowsAsync<InvalidOperationException>(() => encryptor.EncryptAsync(source, message, Context));

        await Assert.ThrowsAsync<EnvelopeDecryptionException>(() => encryptor.DecryptAsync(message.ToArray(), Context));
        message.Position = 0;
        await Assert.ThrowsAsync<EnvelopeDecryptionException>(() => encryptor.DecryptAsync(message, new MemoryStream(), Context));
    }

    [Fact]
    public async Task EncryptingStream_ExactlyTheDeclaredLength_Completes()
    {
        using var encryptor = NewEncryptor(out _);
        var message = new MemoryStream();
        await using (var writer = await encryptor.OpenEncryptingStreamAsync(message, Context, plaintextLength: Frame * 2))
        {
            await writer.WriteAsync(Data(Frame * 2));
            await writer.CompleteAsync();
        }

        Assert.Equal(Data(Frame * 2), await encryptor.DecryptAsync(message.ToArray(), Context));
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
        await using var reader = await encryptor.OpenDecryptingStreamAsync(source, EnvelopeEncryptor.NoContext);
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

    // Disposing a stream from another thread to abort a read (token.Register(stream.Dispose))
    // while a frame is being read: the stream's dispose zeroes its plaintext buffer, and the read
    // must not then hand out those zeros as the frame's verified plaintext. Made deterministic
    // here: the source disposes the decrypting stream when it is asked for the byte after the
    // final frame — after the frame's tag verified, before its plaintext is copied out.
    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task DecryptingStream_DisposedWhileAReadIsInProgress_ThatReadHandsOutNoZeros(bool useAsync)
    {
        using var encryptor = NewEncryptor(out _);
        var plaintext = Data(10);
        var message = await encryptor.EncryptAsync(plaintext, Context);
        var source = new DisposingAtTheEndStream(message);
        var reading = await encryptor.OpenDecryptingStreamAsync(source, Context);
        source.ToDispose = reading;

        var buffer = new byte[100];
        int read;
        try
        {
            read = useAsync ? await reading.ReadAsync(buffer) : reading.Read(buffer);
        }
        catch (ObjectDisposedException)
        {
            return;
        }

        // A read that returns must return the plaintext itself; the buffer is zeroed when it ends.
        Assert.Equal(plaintext, buffer[..read]);
        var frameBuffer = (byte[])typeof(EnvelopeDecryptingStream).GetField("_plaintext", System.Reflection.BindingFlags.Instance | System.Reflection.BindingFlags.NonPublic)!.GetValue(reading)!;
        Assert.DoesNotContain(frameBuffer, b => b != 0);
        Assert.Throws<ObjectDisposedException>(() => reading.Read(buffer));
    }

    // The encrypting stream's side of the test above: disposed from another thread while a
    // completion seals its final frame. Made deterministic by the stream's test hook, which
    // disposes it right as the final frame is about to be sealed. The completion must neither
    // fail from inside the disposed cipher nor seal a zeroed buffer; it completes the message,
    // and the buffer and key pair are released when it ends.
    [Theory]
    [InlineData(false, false)]
    [InlineData(false, true)]
    [InlineData(true, false)]
    [InlineData(true, true)]
    public async Task EncryptingStream_DisposedWhileCompleting_TheCompletionFinishes_ThenReleases(bool signedMessage, bool useAsync)
    {
        var provider = new FakeKeyProvider();
        using var encryptor = new EnvelopeEncryptor(provider, new EnvelopeOptions { KeyNames = ["tenants/t/keys/a"], FrameLength = Frame, Suite = signedMessage ? EnvelopeSuite.CommittingSigned : EnvelopeSuite.Committing });
        var plaintext = Data(Frame + 10);
        var output = new MemoryStream();
        var writing = await encryptor.OpenEncryptingStreamAsync(output, Context);
        await writing.WriteAsync(plaintext);
        writing.SealingForTests = writing.Dispose;

        if (useAsync)
        {
            await writing.CompleteAsync();
        }
        else
        {
            writing.Complete();
        }

        Assert.Equal(plaintext, await encryptor.DecryptAsync(output.ToArray(), Context));
        var frameBuffer = (byte[])typeof(EnvelopeEncryptingStream).GetField("_plaintext", System.Reflection.BindingFlags.Instance | System.Reflection.BindingFlags.NonPublic)!.GetValue(writing)!;
        Assert.DoesNotContain(frameBuffer, b => b != 0);
        Assert.Throws<ObjectDisposedException>(() => writing.Write(plaintext));
    }

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public async Task DecryptingStream_InterruptedMidFrame_LaterReadsRefused_NotReportedAsAnAlteration(bool cancelled)
    {
        using var encryptor = NewEncryptor(out _);
        var plaintext = Data((Frame * 3) + 5);
        var message = await encryptor.EncryptAsync(plaintext, Context);
        var source = new InterruptingStream(message, message.Length - Frame, cancelled ? new OperationCanceledException() : new IOException("the disk went away"));
        await using var reading = await encryptor.OpenDecryptingStreamAsync(source, Context);

        var buffer = new byte[Frame];
        var exception = await Record.ExceptionAsync(async () =>
        {
            while (await reading.ReadAsync(buffer) > 0)
            {
            }
        });
        Assert.IsType(cancelled ? typeof(OperationCanceledException) : typeof(IOException), exception);

        // Out of step with the message, so refused; but not as "decryption failed", which says altered.
        var later = await Assert.ThrowsAsync<InvalidOperationException>(async () => _ = await reading.ReadAsync(buffer));
        Assert.Contains("interrupted mid-frame", later.Message, StringComparison.Ordinal);
        Assert.Throws<InvalidOperationException>(() => _ = reading.Read(buffer));
    }

    [Fact]
    public async Task DecryptingStream_Altered_LaterReadsStillDecryptionFailed()
    {
        using var encryptor = NewEncryptor(out _);
        var message = await encryptor.EncryptAsync(Data((Frame * 2) + 5), Context);
        message[^(EnvelopeFormat.FinalFramePrefix + 5 + EnvelopeFormat.TagLength + 1)] ^= 1;
        await using var reading = await encryptor.OpenDecryptingStreamAsync(new MemoryStream(message), Context);
        var buffer = new byte[Frame];

        await Assert.ThrowsAsync<EnvelopeDecryptionException>(async () =>
        {
            while (await reading.ReadAsync(buffer) > 0)
            {
            }
        });
        var later = await Assert.ThrowsAsync<EnvelopeDecryptionException>(async () => _ = await reading.ReadAsync(buffer));
        Assert.Equal("envelope decryption failed", later.Message);
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

        await Assert.ThrowsAsync<EnvelopeDecryptionException>(() => encryptor.DecryptAsync(new MemoryStream(message), received, EnvelopeEncryptor.NoContext));

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

        var refused = await Assert.ThrowsAsync<EnvelopeDecryptionException>(() => encryptor.DecryptAsync(message, EnvelopeEncryptor.NoContext));

        Assert.Contains("tenants/t/keys/w", refused.Message, StringComparison.Ordinal);
        Assert.Equal(0, provider.UnwrapCalls);
        using var trusting = new EnvelopeEncryptor(provider, new EnvelopeOptions { KeyNames = ["tenants/t/keys/w"], FrameLength = Frame });
        Assert.Equal(Data(10), await trusting.DecryptAsync(message, EnvelopeEncryptor.NoContext));
    }

    // Someone with UpdateAlias rights points the alias at their own key for one write of the
    // encryptor, then back. Trust used to grow with every key the alias resolved to, for the
    // encryptor's lifetime: messages forged under the attacker's key were then accepted. Now an
    // alias confers no trust: the keys named in TrustedKeyNames (or KeyNames) are all it trusts.
    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task AliasInKeyNames_KeyItPointedToForOneWrite_NeverTrusted(bool trustedKeysNamed)
    {
        const string alias = "tenants/t/aliases/pii";
        var inner = new FakeKeyProvider();
        var aliasing = new AliasingProvider(inner) { Target = "tenants/t/keys/good" };
        using var reader = new EnvelopeEncryptor(aliasing, trustedKeysNamed
            ? new EnvelopeOptions { KeyNames = [alias], TrustedKeyNames = ["tenants/t/keys/good"] }
            : new EnvelopeOptions { KeyNames = [alias] });
        var own = await reader.EncryptAsync(Data(1));
        aliasing.Target = "tenants/t/keys/attacker";
        _ = await reader.EncryptAsync(Data(1));
        aliasing.Target = "tenants/t/keys/good";
        using var attackerWriter = new EnvelopeEncryptor(inner, new EnvelopeOptions { KeyNames = ["tenants/t/keys/attacker"] });
        var forged = await attackerWriter.EncryptAsync("forged"u8.ToArray());
        var unwraps = inner.UnwrapCalls;

        var refused = await Assert.ThrowsAsync<EnvelopeDecryptionException>(() => reader.DecryptAsync(forged, EnvelopeEncryptor.NoContext));

        Assert.Contains("none of the message's keys is trusted", refused.Message, StringComparison.Ordinal);
        Assert.Equal(unwraps, inner.UnwrapCalls);
        if (trustedKeysNamed)
        {
            Assert.Equal(Data(1), await reader.DecryptAsync(own, EnvelopeEncryptor.NoContext));
        }
        else
        {
            // Its own output too, with a message that says what to do.
            var e = await Assert.ThrowsAsync<EnvelopeDecryptionException>(() => reader.DecryptAsync(own, EnvelopeEncryptor.NoContext));
            Assert.Contains($"an alias is not trusted: name the keys to decrypt under in TrustedKeyNames, not {alias}", e.Message, StringComparison.Ordinal);
        }
    }

    [Fact]
    public void TrustedKeyNames_AnAlias_RefusedNamingIt()
    {
        const string alias = "tenants/t/aliases/pii";
        foreach (var options in new[]
        {
            new EnvelopeOptions { KeyNames = [alias], TrustedKeyNames = [alias] },
            new EnvelopeOptions { KeyNames = ["tenants/t/keys/good"], TrustedKeyNames = ["tenants/t/keys/good", alias] },
        })
        {
            var e = Assert.Throws<ArgumentException>(() => new EnvelopeEncryptor(new FakeKeyProvider(), options));
            Assert.Contains(alias, e.Message, StringComparison.Ordinal);
            Assert.Equal("TrustedKeyNames", e.ParamName);
        }

        // A tenant named "aliases" is not an alias.
        using var _ = new EnvelopeEncryptor(new FakeKeyProvider(), new EnvelopeOptions { KeyNames = ["tenants/aliases/keys/k"], TrustedKeyNames = ["tenants/aliases/keys/k"] });
    }

    // The alias moved from key A to key B (a rotation to another key): records under A stay
    // readable by a reader that lists both — whether or not it ever wrote, and after a restart
    // (a new encryptor), which trusting what the alias resolved to never gave.
    [Fact]
    public async Task AliasMovedToAnotherKey_ReaderListingBothKeys_ReadsRecordsUnderEither_FromItsFirstCall()
    {
        const string alias = "tenants/t/aliases/orders";
        var inner = new FakeKeyProvider();
        var aliasing = new AliasingProvider(inner) { Target = "tenants/t/keys/a" };
        var options = new EnvelopeOptions { KeyNames = [alias], TrustedKeyNames = ["tenants/t/keys/a", "tenants/t/keys/b"] };
        byte[] underA, underB;
        using (var writer = new EnvelopeEncryptor(aliasing, options))
        {
            underA = await writer.EncryptAsync(Data(5));
            aliasing.Target = "tenants/t/keys/b";
            underB = await writer.EncryptAsync(Data(6));
        }

        using var restarted = new EnvelopeEncryptor(aliasing, options);

        Assert.Equal(Data(5), await restarted.DecryptAsync(underA, EnvelopeEncryptor.NoContext));
        Assert.Equal(Data(6), await restarted.DecryptAsync(underB, EnvelopeEncryptor.NoContext));
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
        var reader = await encryptor.OpenDecryptingStreamAsync(new MemoryStream(message), EnvelopeEncryptor.NoContext);
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
        await using (var reader = await encryptor.OpenDecryptingStreamAsync(new MemoryStream(message), EnvelopeEncryptor.NoContext))
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
        await Assert.ThrowsAsync<ArgumentNullException>(() => encryptor.DecryptAsync((byte[])null!, EnvelopeEncryptor.NoContext));
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

        await Assert.ThrowsAsync<EnvelopeDecryptionException>(() => encryptor.DecryptAsync(message.ToArray(), EnvelopeEncryptor.NoContext));
        await Assert.ThrowsAsync<EnvelopeDecryptionException>(() => encryptor.DecryptAsync(new MemoryStream(message.ToArray()), new MemoryStream(), EnvelopeEncryptor.NoContext));
    }

    // StreamWriter (GZipStream, CryptoStream…) disposes the stream it wraps: without leaveOpen
    // the encrypting stream is disposed before anyone can complete it, and the message is cut.
    // It must not throw from Dispose, but it says so: a warning (3007) with the byte count only.
    [Fact]
    public async Task EncryptingStream_DisposedByAWrapperWithoutComplete_LogsAWarning_NeverThrows()
    {
        using var logs = new LogSink();
        using var loggerFactory = LoggerFactory.Create(b => b.AddProvider(logs).SetMinimumLevel(LogLevel.Trace));
        using var encryptor = new EnvelopeEncryptor(new FakeKeyProvider(), new EnvelopeOptions { KeyNames = ["tenants/t/keys/a"], FrameLength = Frame, LoggerFactory = loggerFactory });
        var file = new MemoryStream();
        var encrypting = await encryptor.OpenEncryptingStreamAsync(file, Context);
        await using (var writer = new StreamWriter(encrypting))
        {
            await writer.WriteAsync("secret text " + new string('x', 500));
        }

        Assert.Throws<ObjectDisposedException>(() => encrypting.Complete());
        await Assert.ThrowsAsync<EnvelopeDecryptionException>(() => encryptor.DecryptAsync(file.ToArray(), Context));
        var warning = Assert.Single(logs.Events, e => e.EventId == 3007);
        Assert.Equal(LogLevel.Warning, warning.Level);
        Assert.Contains("512 plaintext bytes", warning.Message, StringComparison.Ordinal);
        Assert.Contains("leaveOpen", warning.Message, StringComparison.Ordinal);
        Assert.DoesNotContain("secret", warning.Message, StringComparison.Ordinal);
    }

    // The documented pattern: leaveOpen: true, dispose the wrapper, then complete. No warning;
    // nor for a stream that was completed, or failed, or had nothing written.
    [Fact]
    public async Task EncryptingStream_WrapperWithLeaveOpenThenComplete_Decrypts_NothingLogged()
    {
        using var logs = new LogSink();
        using var loggerFactory = LoggerFactory.Create(b => b.AddProvider(logs).SetMinimumLevel(LogLevel.Trace));
        using var encryptor = new EnvelopeEncryptor(new FakeKeyProvider(), new EnvelopeOptions { KeyNames = ["tenants/t/keys/a"], FrameLength = Frame, LoggerFactory = loggerFactory });
        var file = new MemoryStream();
        await using (var encrypting = await encryptor.OpenEncryptingStreamAsync(file, Context))
        {
            await using (var writer = new StreamWriter(encrypting, leaveOpen: true))
            {
                await writer.WriteAsync(new string('x', 500));
            }

            await encrypting.CompleteAsync();
        }

        await using (var unused = await encryptor.OpenEncryptingStreamAsync(new MemoryStream(), Context))
        {
        }

        Assert.Equal(new string('x', 500), System.Text.Encoding.UTF8.GetString(await encryptor.DecryptAsync(file.ToArray(), Context)));
        Assert.Empty(logs.Events);
    }

    // A caller who decides not to finish (cancelled while reading its source: an exception the
    // stream never sees) says so with Abandon: no warning, and the message stays unreadable. The
    // accidental case above still warns.
    [Fact]
    public async Task EncryptingStream_AbandonedAfterACancellationOutsideIt_NothingLogged_MessageRefused()
    {
        using var logs = new LogSink();
        using var loggerFactory = LoggerFactory.Create(b => b.AddProvider(logs).SetMinimumLevel(LogLevel.Trace));
        using var encryptor = new EnvelopeEncryptor(new FakeKeyProvider(), new EnvelopeOptions { KeyNames = ["tenants/t/keys/a"], FrameLength = Frame, LoggerFactory = loggerFactory });
        var file = new MemoryStream();
        using var cancel = new CancellationTokenSource();
        await using (var encrypting = await encryptor.OpenEncryptingStreamAsync(file, Context))
        {
            try
            {
                await encrypting.WriteAsync(Data(Frame + 10));
                await cancel.CancelAsync();
                cancel.Token.ThrowIfCancellationRequested();
                await encrypting.CompleteAsync();
            }
            catch (OperationCanceledException)
            {
                encrypting.Abandon();
            }
        }

        await Assert.ThrowsAsync<EnvelopeDecryptionException>(() => encryptor.DecryptAsync(file.ToArray(), Context));
        Assert.Empty(logs.Events);
    }

    [Fact]
    public async Task EncryptingStream_Abandoned_RefusesMoreWritesAndCompletion()
    {
        using var encryptor = NewEncryptor(out _);
        await using var encrypting = await encryptor.OpenEncryptingStreamAsync(new MemoryStream());
        await encrypting.WriteAsync(Data(10));

        encrypting.Abandon();
        encrypting.Abandon();

        Assert.False(encrypting.CanWrite);
        Assert.Throws<InvalidOperationException>(() => encrypting.Write(new byte[1]));
        await Assert.ThrowsAsync<InvalidOperationException>(() => encrypting.CompleteAsync());
    }

    // Abandon after a successful completion changes nothing: the message is whole.
    [Fact]
    public async Task EncryptingStream_AbandonAfterComplete_MessageStillDecrypts()
    {
        using var encryptor = NewEncryptor(out _);
        var file = new MemoryStream();
        await using (var encrypting = await encryptor.OpenEncryptingStreamAsync(file))
        {
            await encrypting.WriteAsync(Data(10));
            await encrypting.CompleteAsync();
            encrypting.Abandon();
        }

        Assert.Equal(Data(10), await encryptor.DecryptAsync(file.ToArray(), EnvelopeEncryptor.NoContext));
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

        Assert.Equal(Data(100), await encryptor.DecryptAsync(message, EnvelopeEncryptor.NoContext));
        Assert.Equal(2, provider.UnwrapCalls);
    }

    [Fact]
    public async Task MultiKey_ReaderTrustingOnlyTheSecondKey_NeverAsksForTheFirst()
    {
        using var writer = NewEncryptor(out var provider, ["tenants/t/keys/site-a", "tenants/t/keys/site-b"]);
        var message = await writer.EncryptAsync(Data(100));
        using var reader = new EnvelopeEncryptor(provider, new EnvelopeOptions { KeyNames = ["tenants/t/keys/site-b"], FrameLength = Frame });
        provider.Refused.Add("tenants/t/keys/site-a");

        Assert.Equal(Data(100), await reader.DecryptAsync(message, EnvelopeEncryptor.NoContext));
        Assert.Equal(1, provider.UnwrapCalls);
    }

    [Fact]
    public async Task Decrypt_NoTrustedKey_RefusedWithoutAKmsCall()
    {
        using var writer = NewEncryptor(out var provider, ["tenants/t/keys/other"]);
        var message = await writer.EncryptAsync(Data(3));
        using var reader = new EnvelopeEncryptor(provider, new EnvelopeOptions { KeyNames = ["tenants/t/keys/mine"] });

        var e = await Assert.ThrowsAsync<EnvelopeDecryptionException>(() => reader.DecryptAsync(message, EnvelopeEncryptor.NoContext));

        Assert.Contains("tenants/t/keys/other", e.Message, StringComparison.Ordinal);
        Assert.Equal(0, provider.UnwrapCalls);
    }

    [Fact]
    public async Task Decrypt_AllKeysRefused_NamesTheKmsErrors()
    {
        using var encryptor = NewEncryptor(out var provider);
        var message = await encryptor.EncryptAsync(Data(3));
        provider.Refused.Add("tenants/t/keys/a");

        var e = await Assert.ThrowsAsync<EnvelopeDecryptionException>(() => encryptor.DecryptAsync(message, EnvelopeEncryptor.NoContext));

        Assert.Contains("tenants/t/keys/a: FailedPrecondition", e.Message, StringComparison.Ordinal);
        Assert.IsType<Grpc.Core.RpcException>(e.InnerException);
    }

    [Fact]
    public async Task Encrypt_DataKeysHandedOut_AreZeroedAfterUse()
    {
        using var encryptor = NewEncryptor(out var provider);

        var message = await encryptor.EncryptAsync(Data(100));
        await encryptor.DecryptAsync(message, EnvelopeEncryptor.NoContext);
        var output = new MemoryStream();
        await encryptor.DecryptAsync(new MemoryStream(message), output, EnvelopeEncryptor.NoContext);

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
        var provider = new StaticKeyProvider(Enumerable.Repeat((byte)1, 32).ToArray(), [new WrappedDataKey(name, new byte[77])]);
        using var encryptor = new EnvelopeEncryptor(provider, new EnvelopeOptions { KeyNames = [name] });

        var message = await encryptor.EncryptAsync(new byte[1 << 20]);

        Assert.Equal(1_048_576 + (16 * 20) + 28 + 241, message.Length);
    }

    [Fact]
    public async Task PlaintextLongerThanAMessageHolds_RefusedUpFront_NoOverflowedSizeNoKmsCall()
    {
        using var encryptor = NewEncryptor(out var provider);

        // 2^32 - 3 regular frames and a final frame one byte short of full: the most a message holds.
        var most = (0xFFFFFFFDL * Frame) + Frame - 1;
        Assert.InRange(encryptor.GetMaxMessageLength(most), most, long.MaxValue);
        Assert.Throws<ArgumentOutOfRangeException>(() => encryptor.GetMaxMessageLength(most + 1));
        Assert.Throws<ArgumentOutOfRangeException>(() => encryptor.GetMaxMessageLength(long.MaxValue));
        await Assert.ThrowsAsync<ArgumentOutOfRangeException>(() => encryptor.OpenEncryptingStreamAsync(new MemoryStream(), Context, most + 1));
        Assert.Equal(0, provider.GenerateCalls);
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

/// <summary>Resolves <c>…/aliases/…</c> names to <see cref="Target"/>, as the KMS does for GenerateDataKey and Encrypt.</summary>
internal sealed class AliasingProvider(FakeKeyProvider inner) : IEnvelopeKeyProvider
{
    public string Target { get; set; } = "";

    public Task<GeneratedDataKey> GenerateDataKeyAsync(string keyName, IReadOnlyDictionary<string, string> context, CancellationToken cancellationToken) =>
        inner.GenerateDataKeyAsync(Resolve(keyName), context, cancellationToken);

    public Task<WrappedDataKey> WrapDataKeyAsync(string keyName, ReadOnlyMemory<byte> dataKey, IReadOnlyDictionary<string, string> context, CancellationToken cancellationToken) =>
        inner.WrapDataKeyAsync(Resolve(keyName), dataKey, context, cancellationToken);

    public Task<UnwrappedDataKey> UnwrapDataKeyAsync(WrappedDataKey wrappedKey, IReadOnlyDictionary<string, string> context, CancellationToken cancellationToken) =>
        inner.UnwrapDataKeyAsync(wrappedKey, context, cancellationToken);

    private string Resolve(string keyName) => keyName.Contains("/aliases/", StringComparison.Ordinal) ? Target : keyName;
}

/// <summary>A read-only source over <paramref name="data"/> that cannot seek; each kind decides what a read hands out.</summary>
internal abstract class ReadOnlySource(byte[] data) : Stream
{
    /// <summary>How many bytes the reads have handed out.</summary>
    protected int Delivered { get; private set; }

    /// <summary>All of the source's bytes.</summary>
    protected byte[] Data => data;

    public override bool CanRead => true;

    public override bool CanSeek => false;

    public override bool CanWrite => false;

    public override long Length => throw new NotSupportedException();

    public override long Position
    {
        get => throw new NotSupportedException();
        set => throw new NotSupportedException();
    }

    public override void Flush()
    {
    }

    public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();

    public override void SetLength(long value) => throw new NotSupportedException();

    public override void Write(byte[] buffer, int offset, int count) => throw new NotSupportedException();

    /// <summary>Hands out the next <paramref name="count"/> bytes.</summary>
    protected int Deliver(byte[] buffer, int offset, int count)
    {
        data.AsSpan(Delivered, count).CopyTo(buffer.AsSpan(offset));
        Delivered += count;
        return count;
    }
}

/// <summary>Hands out the data until <paramref name="at"/>, then throws <paramref name="interruption"/> (a cancellation, an I/O error).</summary>
internal sealed class InterruptingStream(byte[] data, int at, Exception interruption) : ReadOnlySource(data)
{
    public override int Read(byte[] buffer, int offset, int count) =>
        Delivered >= at ? throw interruption : Deliver(buffer, offset, Math.Min(count, at - Delivered));
}

/// <summary>A read-only stream that cannot seek and hands out few bytes per read, like a socket.</summary>
internal sealed class NonSeekableStream(byte[] data) : ReadOnlySource(data)
{
    public override int Read(byte[] buffer, int offset, int count) =>
        Deliver(buffer, offset, Math.Min(Math.Min(count, 11), Data.Length - Delivered));
}

/// <summary>A seekable source whose Length says all of <paramref name="data"/> but whose reads end after <paramref name="deliver"/> bytes: a file cut while it is read.</summary>
internal sealed class ShrunkFileStream(byte[] data, int deliver) : ReadOnlySource(data)
{
    public override bool CanSeek => true;

    public override long Length => Data.Length;

    public override long Position
    {
        get => Delivered;
        set => throw new NotSupportedException();
    }

    public override int Read(byte[] buffer, int offset, int count) =>
        Deliver(buffer, offset, Math.Min(count, deliver - Delivered));
}

/// <summary>A message source that disposes <see cref="ToDispose"/> when it is read at its end (the reader's check for trailing bytes).</summary>
internal sealed class DisposingAtTheEndStream(byte[] data) : ReadOnlySource(data)
{
    public Stream? ToDispose { get; set; }

    public override int Read(byte[] buffer, int offset, int count)
    {
        if (Delivered == Data.Length)
        {
            ToDispose?.Dispose();
        }

        return Deliver(buffer, offset, Math.Min(count, Data.Length - Delivered));
    }
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
