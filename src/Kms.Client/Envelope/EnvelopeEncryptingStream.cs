using System.Buffers.Binary;
using System.Security.Cryptography;
using Kms.Client.Failover;
using Microsoft.Extensions.Logging;

namespace Kms.Client.Envelope;

/// <summary>
/// A write-only stream that encrypts what is written to it into an envelope message on the
/// destination, one frame at a time, in constant memory (two frame-sized buffers).
/// </summary>
/// <remarks>
/// <para>Call <see cref="CompleteAsync"/> when the plaintext is all written: it writes the final frame
/// and, for a signed message (suite 0x0002), the footer — the signature of every byte before it.
/// Disposing without completing writes nothing more, so a producer that fails half-way leaves
/// a message that every reader rejects as truncated — never one that looks whole.</para>
/// <para>So a wrapper that disposes the stream it wraps — <see cref="StreamWriter"/>,
/// <see cref="System.IO.Compression.GZipStream"/>, <see cref="System.Security.Cryptography.CryptoStream"/> —
/// leaves an unreadable message unless it is given <c>leaveOpen: true</c>: dispose (or flush) the
/// wrapper, then call <see cref="CompleteAsync"/>. Disposing after plaintext was written without
/// completing is logged at Warning (event 3007) to the encryptor's logger; it never throws. Not
/// logged: a stream whose own write or completion failed, and one the caller gave up on with
/// <see cref="Abandon"/> (cancelled, or failed elsewhere — e.g. reading its source).</para>
/// <para>The destination is not disposed. Buffers holding plaintext are zeroed on dispose; a signed
/// message's key pair is released then (a pair shared through the data-key cache is disposed once
/// its entry is gone and no stream holds it). Not for
/// concurrent writers: overlapping writes throw (they would otherwise seal two frames with one
/// sequence number). Disposed from another thread during a write or a completion, the stream lets
/// that call finish (a completion completes the message) and zeroes its buffers and releases its
/// key pair when it ends; later calls throw <see cref="ObjectDisposedException"/>.
/// A failed write to the destination leaves the stream faulted. A stream opened
/// with a plaintext length takes exactly that many bytes: more are refused as they are written,
/// fewer at completion — either leaves the message incomplete.</para>
/// </remarks>
public sealed class EnvelopeEncryptingStream : Stream
{
    private readonly Stream _destination;
    private readonly FrameCipher _cipher;
    private readonly int _frameLength;
    private readonly byte[] _plaintext;
    private readonly byte[] _frame;
    private int _buffered;
    private uint _sequence = 1;
    private readonly long _declaredLength;
    private long _written;
    private int _busy;
    private bool _completed;
    private bool _faulted;
    private volatile bool _abandoned;
    private volatile bool _disposed;
    private int _released;
    private readonly ILogger _logger;

    // Suite 0x0002: what was written so far, hashed; the footer signs it at completion.
    private readonly EnvelopeSignature? _signature;

    /// <param name="signature">A signed message's signer, the header already appended to it; disposed with the stream (which releases its key pair).</param>
    /// <param name="wrappedKeys">What the header carries (copied here: the data-key cache reuses the originals).</param>
    internal EnvelopeEncryptingStream(Stream destination, FrameCipher cipher, int frameLength, long declaredLength, ILogger logger, EnvelopeSignature? signature = null, IReadOnlyList<WrappedDataKey>? wrappedKeys = null)
    {
        WrappedKeys = [.. (wrappedKeys ?? []).Select(k => k with { Wrapped = k.Wrapped.ToArray() })];
        _destination = destination;
        _signature = signature;
        _logger = logger;
        _cipher = cipher;
        _frameLength = frameLength;
        _declaredLength = declaredLength;
        _plaintext = GC.AllocateUninitializedArray<byte>(frameLength, pinned: true);
        _frame = GC.AllocateUninitializedArray<byte>(EnvelopeFormat.FinalFramePrefix + frameLength + EnvelopeFormat.TagLength);
    }

    /// <summary>
    /// The keys that wrapped this message's data key, in the header's order — through an alias,
    /// the key it pointed at — each with the key version the KMS reported
    /// (<see cref="WrappedDataKey.KeyVersion"/>). Copies: changing them changes nothing.
    /// </summary>
    public IReadOnlyList<WrappedDataKey> WrappedKeys { get; }

    /// <inheritdoc />
    public override bool CanRead => false;

    /// <inheritdoc />
    public override bool CanSeek => false;

    /// <inheritdoc />
    public override bool CanWrite => !_completed && !_disposed && !_faulted && !_abandoned;

    /// <inheritdoc />
    public override long Length => throw new NotSupportedException();

    /// <inheritdoc />
    public override long Position
    {
        get => throw new NotSupportedException();
        set => throw new NotSupportedException();
    }

    /// <inheritdoc />
    public override void Write(byte[] buffer, int offset, int count) => Write(buffer.AsSpan(offset, count));

    /// <inheritdoc />
    public override void Write(ReadOnlySpan<byte> buffer)
    {
        Enter(buffer.Length);
        try
        {
            while (!buffer.IsEmpty)
            {
                var take = Math.Min(buffer.Length, _frameLength - _buffered);
                buffer[..take].CopyTo(_plaintext.AsSpan(_buffered));
                _buffered += take;
                buffer = buffer[take..];
                if (_buffered == _frameLength)
                {
                    _destination.Write(_frame, 0, SealRegularFrame());
                }
            }
        }
        catch
        {
            _faulted = true;
            throw;
        }
        finally
        {
            Exit();
        }
    }

    /// <inheritdoc />
    public override Task WriteAsync(byte[] buffer, int offset, int count, CancellationToken cancellationToken) =>
        WriteAsync(buffer.AsMemory(offset, count), cancellationToken).AsTask();

    /// <inheritdoc />
    public override async ValueTask WriteAsync(ReadOnlyMemory<byte> buffer, CancellationToken cancellationToken = default)
    {
        Enter(buffer.Length);
        try
        {
            while (!buffer.IsEmpty)
            {
                var take = Math.Min(buffer.Length, _frameLength - _buffered);
                buffer[..take].CopyTo(_plaintext.AsMemory(_buffered));
                _buffered += take;
                buffer = buffer[take..];
                if (_buffered == _frameLength)
                {
                    await _destination.WriteAsync(_frame.AsMemory(0, SealRegularFrame()), cancellationToken).ConfigureAwait(false);
                }
            }
        }
        catch
        {
            _faulted = true;
            throw;
        }
        finally
        {
            Exit();
        }
    }

    /// <summary>Reads <paramref name="source"/> to its end straight into the frame buffer (no intermediate copy).</summary>
    internal async Task WriteFromAsync(Stream source, CancellationToken cancellationToken)
    {
        Enter(0);
        try
        {
            while (true)
            {
                var read = await source.ReadAsync(_plaintext.AsMemory(_buffered), cancellationToken).ConfigureAwait(false);
                if (read == 0)
                {
                    return;
                }

                CountWritten(read);
                _buffered += read;
                if (_buffered == _frameLength)
                {
                    await _destination.WriteAsync(_frame.AsMemory(0, SealRegularFrame()), cancellationToken).ConfigureAwait(false);
                }
            }
        }
        catch
        {
            _faulted = true;
            throw;
        }
        finally
        {
            Exit();
        }
    }

    /// <summary>Writes the final frame, and a signed message's footer (its signature), and flushes the destination: the message is complete.</summary>
    /// <exception cref="InvalidOperationException">A plaintext length was declared when the stream was opened and fewer bytes were written: nothing is written, and the stream is faulted (the message stays incomplete).</exception>
    public async Task CompleteAsync(CancellationToken cancellationToken = default)
    {
        Enter(0);
        try
        {
            var length = SealFinalFrame();
            var footer = SignFooter();
            _completed = true;
            await _destination.WriteAsync(_frame.AsMemory(0, length), cancellationToken).ConfigureAwait(false);
            await _destination.WriteAsync(footer, cancellationToken).ConfigureAwait(false);
            await _destination.FlushAsync(cancellationToken).ConfigureAwait(false);
        }
        catch
        {
            _faulted = true;
            throw;
        }
        finally
        {
            Exit();
        }
    }

    /// <summary>Writes the final frame, and a signed message's footer (its signature), and flushes the destination: the message is complete.</summary>
    /// <exception cref="InvalidOperationException">A plaintext length was declared when the stream was opened and fewer bytes were written: nothing is written, and the stream is faulted (the message stays incomplete).</exception>
    public void Complete()
    {
        Enter(0);
        try
        {
            var length = SealFinalFrame();
            var footer = SignFooter();
            _completed = true;
            _destination.Write(_frame, 0, length);
            _destination.Write(footer);
            _destination.Flush();
        }
        catch
        {
            _faulted = true;
            throw;
        }
        finally
        {
            Exit();
        }
    }

    /// <summary>
    /// Gives the message up on purpose: nothing more can be written or completed, the message on
    /// the destination stays without its final frame (every reader refuses it), and disposing
    /// the stream logs no warning (event 3007 is for a stream left unfinished by mistake).
    /// </summary>
    /// <remarks>
    /// For a caller that decides not to finish — cancelled, or failed outside this stream (reading
    /// the plaintext's source, say): <c>catch { encrypting.Abandon(); throw; }</c>. Safe to call at
    /// any time, more than once, and from another thread than the writer's; it waits for nothing
    /// (a write in progress finishes, the next one throws). After a successful completion the
    /// message is whole and abandoning it changes nothing.
    /// </remarks>
    public void Abandon() => _abandoned = true;

    /// <summary>Flushes the frames written so far (a partial frame stays buffered until it is full or completed).</summary>
    public override void Flush() => _destination.Flush();

    /// <inheritdoc />
    public override Task FlushAsync(CancellationToken cancellationToken) => _destination.FlushAsync(cancellationToken);

    /// <inheritdoc />
    public override int Read(byte[] buffer, int offset, int count) => throw new NotSupportedException();

    /// <inheritdoc />
    public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();

    /// <inheritdoc />
    public override void SetLength(long value) => throw new NotSupportedException();

    /// <inheritdoc />
    protected override void Dispose(bool disposing)
    {
        if (disposing && !_disposed)
        {
            _disposed = true;
            Interlocked.MemoryBarrier();

            // A write or completion in progress (a dispose from another thread) still seals with the
            // buffer, the cipher and the key pair: releasing them under it would seal zeros or throw
            // from inside the cipher. That call releases them when it ends (as the decrypting stream does).
            if (Interlocked.CompareExchange(ref _busy, 1, 0) == 0)
            {
                Release();
            }
        }

        base.Dispose(disposing);
    }

    private void Release()
    {
        if (Interlocked.Exchange(ref _released, 1) != 0)
        {
            return;
        }

        // Not completed, not failed, not abandoned, and plaintext written: most likely a wrapper
        // that disposed the stream it wraps. Said, not thrown: Dispose runs in finally blocks
        // and unwinding. Decided here, after a completion in progress ended.
        if (!_completed && !_faulted && !_abandoned && _written > 0)
        {
            ClientLog.EncryptingStreamNotCompleted(_logger, _written);
        }

        CryptographicOperations.ZeroMemory(_plaintext);
        _cipher.Dispose();
        _signature?.Dispose();
    }

    private int SealRegularFrame()
    {
        SealingForTests?.Invoke();
        if (_sequence > EnvelopeFormat.MaxRegularSequenceNumber)
        {
            throw new InvalidOperationException("an envelope message holds at most 2^32 - 2 frames; start another message");
        }

        var frame = _frame.AsSpan();
        BinaryPrimitives.WriteUInt32BigEndian(frame, _sequence);
        _cipher.Seal(EnvelopeFormat.RegularFrameType, _sequence, _plaintext, frame.Slice(EnvelopeFormat.RegularFramePrefix, _frameLength), frame.Slice(EnvelopeFormat.RegularFramePrefix + _frameLength, EnvelopeFormat.TagLength));
        _sequence++;
        _buffered = 0;
        _signature?.Append(frame[..(EnvelopeFormat.RegularFramePrefix + _frameLength + EnvelopeFormat.TagLength)]);
        return EnvelopeFormat.RegularFramePrefix + _frameLength + EnvelopeFormat.TagLength;
    }

    private int SealFinalFrame()
    {
        // A declared length is the plaintext's length, not a bound: a message completed short of
        // it would be a whole, valid message of part of the plaintext (a source file cut while it
        // was read). Left incomplete instead, so every reader refuses it.
        if (_declaredLength >= 0 && _written != _declaredLength)
        {
            throw new InvalidOperationException($"{_written} plaintext bytes were written of the {_declaredLength} declared when the stream was opened (by EncryptAsync: the source's length when it started); the message is left incomplete, never completed short");
        }

        SealingForTests?.Invoke();
        var content = _buffered;
        var frame = _frame.AsSpan();
        EnvelopeMessage.WriteFinalPrefix(frame, _sequence, content);
        _cipher.Seal(EnvelopeFormat.FinalFrameType, _sequence, _plaintext.AsSpan(0, content), frame.Slice(EnvelopeFormat.FinalFramePrefix, content), frame.Slice(EnvelopeFormat.FinalFramePrefix + content, EnvelopeFormat.TagLength));
        _buffered = 0;
        _signature?.Append(frame[..(EnvelopeFormat.FinalFramePrefix + content + EnvelopeFormat.TagLength)]);
        return EnvelopeFormat.FinalFramePrefix + content + EnvelopeFormat.TagLength;
    }

    /// <summary>A signed message's footer (the signature of every byte written), or nothing.</summary>
    private byte[] SignFooter()
    {
        if (_signature is null)
        {
            return [];
        }

        var footer = new byte[EnvelopeFormat.SignatureLength];
        _signature.Sign(footer);
        return footer;
    }

    /// <summary>One writer at a time, on a stream that can still be written, within the declared length.</summary>
    private void Enter(int bytes)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        if (Interlocked.CompareExchange(ref _busy, 1, 0) != 0)
        {
            // A dispose that came meanwhile holds the stream for good: say so, not "one at a time".
            ObjectDisposedException.ThrowIf(_disposed, this);
            throw new InvalidOperationException("an envelope stream takes one write at a time");
        }

        try
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            if (_completed)
            {
                throw new InvalidOperationException("the envelope message is complete; nothing more can be written");
            }

            if (_faulted)
            {
                throw new InvalidOperationException("an earlier write failed; the message cannot be completed");
            }

            if (_abandoned)
            {
                throw new InvalidOperationException("the envelope message was abandoned; nothing more can be written");
            }

            CountWritten(bytes);
        }
        catch
        {
            Exit();
            throw;
        }
    }

    // A dispose that came while this call held the stream left the buffer, the cipher and the key
    // pair to it (the exchange is a full fence: either this sees the dispose, or the dispose sees the stream free).
    private void Exit()
    {
        Interlocked.Exchange(ref _busy, 0);
        if (_disposed && Interlocked.CompareExchange(ref _busy, 1, 0) == 0)
        {
            Release();
        }
    }

    /// <summary>For tests: runs as each frame is about to be sealed, inside the write or completion that seals it.</summary>
    internal Action? SealingForTests { get; set; }

    /// <summary>
    /// The data-key cache reserved the declared length for this message: writing more would
    /// encrypt more under one data key than its byte limit allows.
    /// </summary>
    private void CountWritten(int bytes)
    {
        if (_declaredLength >= 0 && _written + bytes > _declaredLength)
        {
            _faulted = true;
            throw new InvalidOperationException($"more plaintext than the {_declaredLength} bytes declared when the stream was opened");
        }

        _written += bytes;
    }
}
