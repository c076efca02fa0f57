using System.Runtime.InteropServices;
using System.Security.Cryptography;

namespace Kms.Client.Envelope;

/// <summary>
/// AES-256-GCM with 96-bit IVs and 128-bit tags under one key: OpenSSL directly where
/// <see cref="LibCrypto.GcmAvailable"/>, .NET's <see cref="AesGcm"/> elsewhere — the same
/// bytes and the same contract either way (a failed tag is an
/// <see cref="AuthenticationTagMismatchException"/> with the plaintext buffer cleared). Like
/// <see cref="AesGcm"/>, one instance serves one caller at a time: a message or a stream.
/// </summary>
internal sealed class Aes256Gcm : IDisposable
{
    private readonly AesGcm? _managed;
    private readonly ContextHandle? _native;

    public Aes256Gcm(ReadOnlySpan<byte> key)
        : this(key, LibCrypto.GcmAvailable)
    {
    }

    /// <summary>For tests: <paramref name="native"/> picks the implementation (true needs <see cref="LibCrypto.GcmAvailable"/>).</summary>
    internal Aes256Gcm(ReadOnlySpan<byte> key, bool native)
    {
        if (key.Length != 32)
        {
            throw new ArgumentException("AES-256-GCM takes a 32-byte key", nameof(key));
        }

        if (native && !LibCrypto.GcmAvailable)
        {
            throw new PlatformNotSupportedException("OpenSSL 3's AES-256-GCM is not available in this process");
        }

        if (native)
        {
            _native = new ContextHandle(LibCrypto.NewGcmContext(key));
        }
        else
        {
            _managed = new AesGcm(key, EnvelopeFormat.TagLength);
        }
    }

    /// <summary>Whether this instance runs on OpenSSL directly.</summary>
    public bool IsNative => _native is not null;

    public void Encrypt(ReadOnlySpan<byte> iv, ReadOnlySpan<byte> plaintext, Span<byte> ciphertext, Span<byte> tag, ReadOnlySpan<byte> associatedData)
    {
        CheckArguments(iv, plaintext, ciphertext, tag);
        if (_managed is not null)
        {
            _managed.Encrypt(iv, plaintext, ciphertext, tag, associatedData);
            return;
        }

        var context = Enter();
        try
        {
            LibCrypto.GcmEncrypt(context, iv, plaintext, ciphertext, tag, associatedData);
        }
        finally
        {
            _native!.DangerousRelease();
        }
    }

    /// <exception cref="AuthenticationTagMismatchException">The tag does not verify; <paramref name="plaintext"/> is cleared.</exception>
    public void Decrypt(ReadOnlySpan<byte> iv, ReadOnlySpan<byte> ciphertext, ReadOnlySpan<byte> tag, Span<byte> plaintext, ReadOnlySpan<byte> associatedData)
    {
        CheckArguments(iv, plaintext, ciphertext, tag);
        if (_managed is not null)
        {
            _managed.Decrypt(iv, ciphertext, tag, plaintext, associatedData);
            return;
        }

        var context = Enter();
        try
        {
            if (!LibCrypto.GcmDecrypt(context, iv, ciphertext, tag, plaintext, associatedData))
            {
                throw new AuthenticationTagMismatchException();
            }
        }
        finally
        {
            _native!.DangerousRelease();
        }
    }

    public void Dispose()
    {
        _managed?.Dispose();
        _native?.Dispose();
    }

    /// <summary>The OpenSSL context, kept alive until the matching <c>DangerousRelease</c>; after <see cref="Dispose"/>, an <see cref="ObjectDisposedException"/>.</summary>
    private nint Enter()
    {
        var added = false;
        _native!.DangerousAddRef(ref added); // throws once disposed; otherwise always adds
        return _native.DangerousGetHandle();
    }

    /// <summary>The sizes this suite uses, and input and output either the same memory or apart (stricter than <see cref="AesGcm"/>, which lets a partial overlap through); for both implementations.</summary>
    private static void CheckArguments(ReadOnlySpan<byte> iv, ReadOnlySpan<byte> plaintext, ReadOnlySpan<byte> ciphertext, ReadOnlySpan<byte> tag)
    {
        if (iv.Length != EnvelopeFormat.IvLength)
        {
            throw new ArgumentException("the IV must be 12 bytes", nameof(iv));
        }

        if (tag.Length != EnvelopeFormat.TagLength)
        {
            throw new ArgumentException("the tag must be 16 bytes", nameof(tag));
        }

        if (plaintext.Length != ciphertext.Length)
        {
            throw new ArgumentException("plaintext and ciphertext must have the same length", nameof(ciphertext));
        }

        if (plaintext.Overlaps(ciphertext, out var offset) && offset != 0)
        {
            throw new ArgumentException("plaintext and ciphertext overlap other than in place", nameof(ciphertext));
        }
    }

    /// <summary>Owns an OpenSSL cipher context; a call in progress keeps it alive past <see cref="Dispose"/>.</summary>
    private sealed class ContextHandle : SafeHandle
    {
        public ContextHandle(nint context)
            : base(0, ownsHandle: true) => SetHandle(context);

        public override bool IsInvalid => handle == 0;

        protected override bool ReleaseHandle()
        {
            LibCrypto.FreeCipherContext(handle);
            return true;
        }
    }
}
