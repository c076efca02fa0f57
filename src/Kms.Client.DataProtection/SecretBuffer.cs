using System.Security.Cryptography;

namespace Kms.Client.DataProtection;

/// <summary>
/// A write-only stream into one pinned buffer of a fixed capacity, zeroed on dispose: the
/// serialized key element is written here and nowhere else (a growing MemoryStream would leave
/// copies of it behind in the buffers it outgrew). Past the capacity it keeps counting but
/// stores nothing, so the writer above it finishes and the caller refuses by
/// <see cref="Overflowed"/>.
/// </summary>
internal sealed class SecretBuffer(int capacity) : Stream
{
    private readonly byte[] _buffer = GC.AllocateUninitializedArray<byte>(capacity, pinned: true);
    private int _stored;
    private long _length;

    /// <summary>The bytes stored: everything written, unless <see cref="Overflowed"/>.</summary>
    public ReadOnlyMemory<byte> Written => _buffer.AsMemory(0, _stored);

    /// <summary>More was written than the capacity.</summary>
    public bool Overflowed => _length > _buffer.Length;

    /// <summary>Everything written, stored or not.</summary>
    public override long Length => _length;

    public override bool CanRead => false;

    public override bool CanSeek => false;

    public override bool CanWrite => true;

    public override long Position
    {
        get => _length;
        set => throw new NotSupportedException();
    }

    public override void Write(byte[] buffer, int offset, int count) => Write(buffer.AsSpan(offset, count));

    public override void Write(ReadOnlySpan<byte> buffer)
    {
        if (!Overflowed && _length + buffer.Length <= _buffer.Length)
        {
            buffer.CopyTo(_buffer.AsSpan(_stored));
            _stored += buffer.Length;
        }

        _length += buffer.Length;
    }

    public override void Flush()
    {
    }

    public override int Read(byte[] buffer, int offset, int count) => throw new NotSupportedException();

    public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();

    public override void SetLength(long value) => throw new NotSupportedException();

    protected override void Dispose(bool disposing)
    {
        CryptographicOperations.ZeroMemory(_buffer);
        base.Dispose(disposing);
    }
}
