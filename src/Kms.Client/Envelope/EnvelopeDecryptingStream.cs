using System.Buffers.Binary;
using System.Security.Cryptography;

namespace Kms.Client.Envelope;

/// <summary>
/// A read-only stream of an envelope message's plaintext, decrypted frame by frame from the
/// source in constant memory. The header was checked (commitment and tag) when it was opened.
/// </summary>
/// <remarks>
/// <para>A frame's plaintext is readable only after its tag verified. Reaching the end (a read
/// returning 0) means the whole message verified, final frame included, with nothing after
/// it; an <see cref="EnvelopeDecryptionException"/> on any read means the message was altered
/// or cut, and what was read before is not a complete plaintext — discard it.</para>
/// <para>A signed message (suite 0x0002) is verified only at its footer, after its final frame: the
/// final frame and the end wait for the signature, earlier frames do not. A frame's tag shows only
/// that whoever wrote it held the message's data key — as a principal allowed only to decrypt does —
/// so until a read returns 0, what was read may be a body that principal wrote under the writer's
/// header, never signed by the writer. Act on a signed message's plaintext only once the end is
/// reached, or decrypt it in one shot (<see cref="EnvelopeEncryptor.DecryptAsync(ReadOnlyMemory{byte}, IReadOnlyDictionary{string, string}, ReadOnlyMemory{byte}, CancellationToken)"/>
/// verifies the signature before it decrypts a frame). A reader that cannot wait turns
/// <see cref="EnvelopeOptions.StreamSignedMessages"/> off: no signed message is then opened as a stream.</para>
/// <para>The source is not disposed. The plaintext buffer is zeroed on dispose — by a read in
/// progress when it ends, if the stream is disposed from another thread during it (that read
/// returns the frame it verified).</para>
/// </remarks>
public sealed class EnvelopeDecryptingStream : Stream
{
    private readonly Stream _source;
    private readonly FrameCipher _cipher;
    private readonly int _frameLength;
    private readonly byte[] _plaintext;
    private readonly byte[] _frame;
    private int _offset;
    private int _available;
    private uint _sequence = 1;
    private bool _finished;
    private int _busy;
    private bool _failed;

    // The failure was the reading's, not the message's: a cancellation or an I/O error mid-frame.
    private bool _interrupted;
    private volatile bool _disposed;
    private int _released;

    // Suite 0x0002: every byte read so far, hashed; the footer must be its signature.
    private readonly EnvelopeSignature? _signature;

    /// <param name="signature">A signed message's verifier, the header already appended to it; disposed with the stream.</param>
    internal EnvelopeDecryptingStream(Stream source, FrameCipher cipher, int frameLength, IReadOnlyDictionary<string, string> context, EnvelopeSignature? signature = null)
    {
        _source = source;
        _signature = signature;
        _cipher = cipher;
        _frameLength = frameLength;
        EncryptionContext = context;
        _plaintext = GC.AllocateUninitializedArray<byte>(frameLength, pinned: true);
        _frame = GC.AllocateUninitializedArray<byte>(frameLength + EnvelopeFormat.TagLength);
    }

    /// <summary>The message's encryption context (authenticated by the header tag).</summary>
    public IReadOnlyDictionary<string, string> EncryptionContext { get; }

    /// <inheritdoc />
    public override bool CanRead => !_disposed;

    /// <inheritdoc />
    public override bool CanSeek => false;

    /// <inheritdoc />
    public override bool CanWrite => false;

    /// <inheritdoc />
    public override long Length => throw new NotSupportedException();

    /// <inheritdoc />
    public override long Position
    {
        get => throw new NotSupportedException();
        set => throw new NotSupportedException();
    }

    /// <inheritdoc />
    public override int Read(byte[] buffer, int offset, int count) => Read(buffer.AsSpan(offset, count));

    /// <inheritdoc />
    public override int Read(Span<byte> buffer)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        if (buffer.IsEmpty)
        {
            return 0;
        }

        Enter();
        try
        {
            // With useAsync false every read inside is synchronous: the task is already complete.
            if (_offset == _available && !FillAsync(useAsync: false, CancellationToken.None).AsTask().GetAwaiter().GetResult())
            {
                return 0;
            }

            return CopyOut(buffer);
        }
        finally
        {
            Exit();
        }
    }

    /// <inheritdoc />
    public override Task<int> ReadAsync(byte[] buffer, int offset, int count, CancellationToken cancellationToken) =>
        ReadAsync(buffer.AsMemory(offset, count), cancellationToken).AsTask();

    /// <inheritdoc />
    public override async ValueTask<int> ReadAsync(Memory<byte> buffer, CancellationToken cancellationToken = default)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        if (buffer.IsEmpty)
        {
            return 0;
        }

        Enter();
        try
        {
            if (_offset == _available && !await FillAsync(useAsync: true, cancellationToken).ConfigureAwait(false))
            {
                return 0;
            }

            return CopyOut(buffer.Span);
        }
        finally
        {
            Exit();
        }
    }

    /// <summary>
    /// Writes the rest of the plaintext to <paramref name="destination"/> straight from the
    /// stream's own buffer (zeroed on dispose), never through the pooled array the default
    /// <see cref="Stream.CopyTo(Stream, int)"/> returns uncleared.
    /// </summary>
    public override void CopyTo(Stream destination, int bufferSize)
    {
        ValidateCopyToArguments(destination, bufferSize);
        ObjectDisposedException.ThrowIf(_disposed, this);

        // With useAsync false every read and write inside is synchronous: the task is already complete.
        DrainAsync(destination, useAsync: false, CancellationToken.None).AsTask().GetAwaiter().GetResult();
    }

    /// <summary>As <see cref="CopyTo(Stream, int)"/>: from the stream's own buffer, never a pooled one.</summary>
    public override Task CopyToAsync(Stream destination, int bufferSize, CancellationToken cancellationToken)
    {
        ValidateCopyToArguments(destination, bufferSize);
        ObjectDisposedException.ThrowIf(_disposed, this);
        return DrainToAsync(destination, cancellationToken);
    }

    /// <summary>Writes every verified frame's plaintext to <paramref name="destination"/> (no intermediate copy).</summary>
    internal Task DrainToAsync(Stream destination, CancellationToken cancellationToken) =>
        DrainAsync(destination, useAsync: true, cancellationToken).AsTask();

    private async ValueTask DrainAsync(Stream destination, bool useAsync, CancellationToken cancellationToken)
    {
        Enter();
        try
        {
            if (_offset < _available)
            {
                await WriteOutAsync(destination, _offset, useAsync, cancellationToken).ConfigureAwait(false);
            }

            while (await FillAsync(useAsync, cancellationToken).ConfigureAwait(false))
            {
                await WriteOutAsync(destination, 0, useAsync, cancellationToken).ConfigureAwait(false);
            }
        }
        finally
        {
            Exit();
        }
    }

    // One read at a time: two would fill the one frame buffer and run the one GCM context
    // together, and one could hand out a frame whose tag the other has not checked yet.
    private void Enter()
    {
        if (Interlocked.CompareExchange(ref _busy, 1, 0) != 0)
        {
            throw new InvalidOperationException("an envelope stream takes one read at a time");
        }
    }

    // A dispose that came while this read held the stream left the buffer and the cipher to it
    // (the exchange is a full fence: either this sees the dispose, or the dispose sees the stream free).
    private void Exit()
    {
        Interlocked.Exchange(ref _busy, 0);
        if (_disposed && Interlocked.CompareExchange(ref _busy, 1, 0) == 0)
        {
            Release();
        }
    }

    // Writes the verified plaintext from offset to the end of the frame, from the stream's own buffer.
    private async ValueTask WriteOutAsync(Stream destination, int offset, bool useAsync, CancellationToken cancellationToken)
    {
        if (useAsync)
        {
            await destination.WriteAsync(_plaintext.AsMemory(offset, _available - offset), cancellationToken).ConfigureAwait(false);
        }
        else
        {
            destination.Write(_plaintext, offset, _available - offset);
        }

        _offset = _available;
    }

    /// <inheritdoc />
    public override void Flush()
    {
    }

    /// <inheritdoc />
    public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();

    /// <inheritdoc />
    public override void SetLength(long value) => throw new NotSupportedException();

    /// <inheritdoc />
    public override void Write(byte[] buffer, int offset, int count) => throw new NotSupportedException();

    /// <inheritdoc />
    protected override void Dispose(bool disposing)
    {
        if (disposing && !_disposed)
        {
            _disposed = true;
            Interlocked.MemoryBarrier();

            // A read in progress (a dispose from another thread, to abort it) still holds the
            // frame it verified: zeroing it under that read would hand out zeros as its plaintext.
            // The read releases them when it ends.
            if (Interlocked.CompareExchange(ref _busy, 1, 0) == 0)
            {
                Release();
            }
        }

        base.Dispose(disposing);
    }

    private void Release()
    {
        if (Interlocked.Exchange(ref _released, 1) == 0)
        {
            CryptographicOperations.ZeroMemory(_plaintext);
            _cipher.Dispose();
            _signature?.Dispose();
        }
    }

    private int CopyOut(Span<byte> buffer)
    {
        var count = Math.Min(buffer.Length, _available - _offset);
        _plaintext.AsSpan(_offset, count).CopyTo(buffer);
        _offset += count;
        return count;
    }

    /// <summary>Reads and verifies the next frame into the plaintext buffer; false at the verified end.</summary>
    private async ValueTask<bool> FillAsync(bool useAsync, CancellationToken cancellationToken)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        if (_failed)
        {
            // Still refused either way (the stream is out of step with the message), but a
            // cancellation is not reported later as an alteration.
            throw _interrupted
                ? new InvalidOperationException("the decrypting stream was interrupted mid-frame (a cancellation or an I/O error) and cannot go on; read the message again from its beginning")
                : EnvelopeDecryptionException.Failed();
        }

        if (_finished)
        {
            return false;
        }

        try
        {
            _offset = _available = 0;
            await ReadFullyAsync(_frame.AsMemory(0, EnvelopeFormat.RegularFramePrefix), useAsync, cancellationToken).ConfigureAwait(false);
            _signature?.Append(_frame.AsSpan(0, EnvelopeFormat.RegularFramePrefix));
            var marker = BinaryPrimitives.ReadUInt32BigEndian(_frame);
            if (marker != EnvelopeFormat.FinalFrameMarker)
            {
                if (marker != _sequence || _sequence > EnvelopeFormat.MaxRegularSequenceNumber)
                {
                    throw EnvelopeDecryptionException.Failed();
                }

                var frame = _frame.AsMemory(0, _frameLength + EnvelopeFormat.TagLength);
                await ReadFullyAsync(frame, useAsync, cancellationToken).ConfigureAwait(false);
                _signature?.Append(frame.Span);
                _cipher.Open(EnvelopeFormat.RegularFrameType, _sequence, frame.Span[.._frameLength], frame.Span[_frameLength..], _plaintext);
                _sequence++;
                _available = _frameLength;
                return true;
            }

            await ReadFullyAsync(_frame.AsMemory(0, 8), useAsync, cancellationToken).ConfigureAwait(false);
            _signature?.Append(_frame.AsSpan(0, 8));
            var length = BinaryPrimitives.ReadUInt32BigEndian(_frame.AsSpan(4));
            if (BinaryPrimitives.ReadUInt32BigEndian(_frame) != _sequence || length >= (uint)_frameLength)
            {
                throw EnvelopeDecryptionException.Failed();
            }

            var final = _frame.AsMemory(0, (int)length + EnvelopeFormat.TagLength);
            await ReadFullyAsync(final, useAsync, cancellationToken).ConfigureAwait(false);
            _signature?.Append(final.Span);
            _cipher.Open(EnvelopeFormat.FinalFrameType, _sequence, final.Span[..(int)length], final.Span[(int)length..], _plaintext.AsSpan(0, (int)length));

            // A signed message's footer; its check waits for the trailing-byte check below, and
            // the final frame's plaintext for both.
            var footer = _signature is null ? [] : new byte[EnvelopeFormat.SignatureLength];
            await ReadFullyAsync(footer, useAsync, cancellationToken).ConfigureAwait(false);

            // Nothing may follow the final frame (or the footer): check before releasing its
            // plaintext, so a reader that reaches the end has read a whole, unaltered message.
            var trailing = useAsync
                ? await _source.ReadAsync(_frame.AsMemory(0, 1), cancellationToken).ConfigureAwait(false)
                : _source.Read(_frame.AsSpan(0, 1));
            if (trailing != 0 || (_signature is not null && !_signature.Verify(footer)))
            {
                throw EnvelopeDecryptionException.Failed();
            }

            _finished = true;
            _available = (int)length;
            return length > 0;
        }
        catch (Exception e)
        {
            // Altered, cut, or an I/O error or cancellation mid-frame: the stream is out of step
            // with the message either way, and stays failed.
            _failed = true;
            _interrupted = e is OperationCanceledException or IOException;
            _offset = _available = 0;
            CryptographicOperations.ZeroMemory(_plaintext);
            throw;
        }
    }

    private async ValueTask ReadFullyAsync(Memory<byte> buffer, bool useAsync, CancellationToken cancellationToken)
    {
        var total = 0;
        while (total < buffer.Length)
        {
            var read = useAsync
                ? await _source.ReadAsync(buffer[total..], cancellationToken).ConfigureAwait(false)
                : _source.Read(buffer.Span[total..]);
            if (read == 0)
            {
                // Cut short: truncation is an alteration like any other.
                throw EnvelopeDecryptionException.Failed();
            }

            total += read;
        }
    }
}
