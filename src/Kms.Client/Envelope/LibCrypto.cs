using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Security.Cryptography;

namespace Kms.Client.Envelope;

/// <summary>
/// The few OpenSSL 3 calls a message's own cryptography needs, made directly: SHA-512 for the
/// per-message HKDF and AES-256-GCM on a cipher fetched once. The same library .NET's own
/// cryptography uses on Linux (<c>libcrypto.so.3</c>), without the set-up .NET repeats on every
/// call.
/// </summary>
/// <remarks>
/// <para>Why: at a 1 KiB message the set-up was most of the work. A SHA-512 one-shot of two
/// blocks through .NET costs ~0.7 µs, the same hash through <c>SHA512_Init/Update/Final</c>
/// ~0.3 µs; a new <see cref="AesGcm"/> with the header tag and one frame ~5.3 µs, the same two
/// operations on a context over a cipher fetched once ~1.5 µs (an empty <see cref="AesGcm.Encrypt(ReadOnlySpan{byte}, ReadOnlySpan{byte}, Span{byte}, Span{byte}, ReadOnlySpan{byte})"/>
/// alone costs 0.6 µs: OpenSSL 3 looks the cipher up again on every initialisation). Measured in
/// docs/benchmarks.md, "Envelope SDK".</para>
/// <para>When used: on Linux, when <c>libcrypto.so.3</c> loads with every export, nothing says
/// FIPS (OpenSSL's default properties, a loaded FIPS provider, the kernel's
/// <c>fips_enabled</c>: the low-level SHA-512 calls bypass OpenSSL's providers, so a FIPS process
/// keeps .NET's path), and a self-test at first use gives the bytes .NET gives. Otherwise — other
/// systems, OpenSSL 1.1, FIPS — every call goes through .NET as before, with the same
/// results. <see cref="Sha512Available"/> and <see cref="GcmAvailable"/> say which.</para>
/// </remarks>
internal static unsafe class LibCrypto
{
    private const int EvpCtrlAeadGetTag = 0x10;
    private const int EvpCtrlAeadSetTag = 0x11;

    private static readonly delegate* unmanaged<Sha512Context*, int> _sha512Init;
    private static readonly delegate* unmanaged<Sha512Context*, byte*, nuint, int> _sha512Update;
    private static readonly delegate* unmanaged<byte*, Sha512Context*, int> _sha512Final;
    private static readonly delegate* unmanaged<nint> _cipherContextNew;
    private static readonly delegate* unmanaged<nint, void> _cipherContextFree;
    private static readonly delegate* unmanaged<nint, nint, byte*, byte*, int, nint, int> _cipherInit;
    private static readonly delegate* unmanaged<nint, byte*, int*, byte*, int, int> _cipherUpdate;
    private static readonly delegate* unmanaged<nint, byte*, int*, int> _cipherFinal;
    private static readonly delegate* unmanaged<nint, int, int, void*, int> _cipherControl;
    private static readonly delegate* unmanaged<void> _clearErrors;
    private static readonly delegate* unmanaged<nuint> _peekError;

    /// <summary>OpenSSL's AES-256-GCM, fetched once for the process and never freed.</summary>
    private static readonly nint _aes256Gcm;

    static LibCrypto()
    {
        try
        {
            if (!OperatingSystem.IsLinux() || !NativeLibrary.TryLoad("libcrypto.so.3", out var library))
            {
                return;
            }

            // Every way OpenSSL or the kernel says FIPS: then nothing here is used (and a missing
            // probe counts as FIPS, since it cannot be ruled out).
            if (!TryExport(library, "EVP_default_properties_is_fips_enabled", out var fipsProperty)
                || !TryExport(library, "OSSL_PROVIDER_available", out var providerAvailable)
                || !TryExport(library, "ERR_clear_error", out var clearErrors))
            {
                return;
            }

            _clearErrors = (delegate* unmanaged<void>)clearErrors;
            if (TryExport(library, "ERR_peek_error", out var peekError))
            {
                _peekError = (delegate* unmanaged<nuint>)peekError;
            }

            int fipsProvider;
            fixed (byte* name = "fips\0"u8)
            {
                fipsProvider = ((delegate* unmanaged<nint, byte*, int>)providerAvailable)(0, name);
            }

            if (FipsRequired(((delegate* unmanaged<nint, int>)fipsProperty)(0) != 0, fipsProvider != 0, ReadKernelFipsFlag()))
            {
                return;
            }

            if (TryExport(library, "SHA512_Init", out var init)
                && TryExport(library, "SHA512_Update", out var update)
                && TryExport(library, "SHA512_Final", out var final))
            {
                _sha512Init = (delegate* unmanaged<Sha512Context*, int>)init;
                _sha512Update = (delegate* unmanaged<Sha512Context*, byte*, nuint, int>)update;
                _sha512Final = (delegate* unmanaged<byte*, Sha512Context*, int>)final;
                Sha512Available = Sha512SelfTest();
            }

            if (TryExport(library, "EVP_CIPHER_fetch", out var fetch)
                && TryExport(library, "EVP_CIPHER_CTX_new", out var contextNew)
                && TryExport(library, "EVP_CIPHER_CTX_free", out var contextFree)
                && TryExport(library, "EVP_CipherInit_ex2", out var cipherInit)
                && TryExport(library, "EVP_CipherUpdate", out var cipherUpdate)
                && TryExport(library, "EVP_CipherFinal_ex", out var cipherFinal)
                && TryExport(library, "EVP_CIPHER_CTX_ctrl", out var control))
            {
                _cipherContextNew = (delegate* unmanaged<nint>)contextNew;
                _cipherContextFree = (delegate* unmanaged<nint, void>)contextFree;
                _cipherInit = (delegate* unmanaged<nint, nint, byte*, byte*, int, nint, int>)cipherInit;
                _cipherUpdate = (delegate* unmanaged<nint, byte*, int*, byte*, int, int>)cipherUpdate;
                _cipherFinal = (delegate* unmanaged<nint, byte*, int*, int>)cipherFinal;
                _cipherControl = (delegate* unmanaged<nint, int, int, void*, int>)control;
                fixed (byte* name = "AES-256-GCM\0"u8)
                {
                    _aes256Gcm = ((delegate* unmanaged<nint, byte*, byte*, nint>)fetch)(0, name, null);
                }

                if (_aes256Gcm == 0)
                {
                    _clearErrors();
                }

                GcmAvailable = _aes256Gcm != 0 && GcmSelfTest();
            }
        }
#pragma warning disable CA1031 // Whatever goes wrong here, the answer is .NET's implementations, never a type that fails to initialise.
        catch (Exception)
#pragma warning restore CA1031
        {
            (Sha512Available, GcmAvailable) = (false, false);
        }
    }

    /// <summary>
    /// Whether FIPS mode rules the direct calls out: OpenSSL's default properties ask for FIPS, the
    /// FIPS provider is loaded, or the kernel says <c>/proc/sys/crypto/fips_enabled</c> = 1.
    /// </summary>
    internal static bool FipsRequired(bool fipsDefaultProperty, bool fipsProviderLoaded, string? kernelFipsFlag)
        => fipsDefaultProperty || fipsProviderLoaded || kernelFipsFlag?.Trim() == "1";

    private static string? ReadKernelFipsFlag()
    {
        try
        {
            return File.Exists("/proc/sys/crypto/fips_enabled") ? File.ReadAllText("/proc/sys/crypto/fips_enabled") : null;
        }
        catch (IOException)
        {
            return null;
        }
        catch (UnauthorizedAccessException)
        {
            return null;
        }
    }

    /// <summary>Whether <see cref="Sha512Init"/> and the rest may be called (false: use <see cref="SHA512"/>).</summary>
    public static bool Sha512Available { get; }

    /// <summary>Whether <see cref="Aes256Gcm"/> runs on OpenSSL directly (false: on <see cref="AesGcm"/>).</summary>
    public static bool GcmAvailable { get; }

    public static void Sha512Init(ref Sha512Context context)
    {
        fixed (Sha512Context* c = &context)
        {
            Check(_sha512Init(c));
        }
    }

    public static void Sha512Update(ref Sha512Context context, ReadOnlySpan<byte> data)
    {
        if (data.IsEmpty)
        {
            return; // the HMAC passes empty pieces (no salt, no previous block): no call for them
        }

        fixed (Sha512Context* c = &context)
        fixed (byte* d = data)
        {
            Check(_sha512Update(c, d, (nuint)data.Length));
        }
    }

    /// <summary>Writes the 64-byte digest into the start of <paramref name="digest"/>.</summary>
    public static void Sha512Final(ref Sha512Context context, Span<byte> digest)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(digest.Length, 64, nameof(digest));
        fixed (Sha512Context* c = &context)
        fixed (byte* d = digest)
        {
            Check(_sha512Final(d, c));
        }
    }

    /// <summary>A new cipher context keyed for AES-256-GCM; its owner frees it with <see cref="FreeCipherContext"/>.</summary>
    public static nint NewGcmContext(ReadOnlySpan<byte> key)
    {
        if (key.Length != 32)
        {
            throw new ArgumentException("AES-256-GCM takes a 32-byte key", nameof(key));
        }

        var context = _cipherContextNew();
        if (context == 0)
        {
            throw new CryptographicException("OpenSSL could not allocate a cipher context");
        }

        fixed (byte* k = key)
        {
            if (_cipherInit(context, _aes256Gcm, k, null, 1, 0) != 1)
            {
                _cipherContextFree(context);
                _clearErrors();
                throw new CryptographicException("OpenSSL refused the AES-256-GCM key");
            }
        }

        return context;
    }

    /// <summary>The first error on this thread's OpenSSL error queue (0: none; null: no <c>ERR_peek_error</c>), for tests that no failure here leaves one behind for .NET's next call.</summary>
    internal static nuint? PeekError() => _peekError == null ? null : _peekError();

    /// <summary>Frees a context from <see cref="NewGcmContext"/>; OpenSSL clears its key schedule.</summary>
    public static void FreeCipherContext(nint context) => _cipherContextFree(context);

    /// <summary>GCM encryption on a keyed context; sizes are checked here, overlaps are the caller's to check.</summary>
    public static void GcmEncrypt(nint context, ReadOnlySpan<byte> iv, ReadOnlySpan<byte> plaintext, Span<byte> ciphertext, Span<byte> tag, ReadOnlySpan<byte> aad)
    {
        CheckSizes(iv, plaintext.Length, ciphertext.Length, tag.Length);
        fixed (byte* n = iv)
        fixed (byte* p = plaintext)
        fixed (byte* c = ciphertext)
        fixed (byte* t = tag)
        fixed (byte* a = aad)
        {
            int written;
            var ok = _cipherInit(context, 0, null, n, 1, 0) == 1
                && (aad.IsEmpty || _cipherUpdate(context, null, &written, a, aad.Length) == 1)
                && (plaintext.IsEmpty || (_cipherUpdate(context, c, &written, p, plaintext.Length) == 1 && written == plaintext.Length))
                && _cipherFinal(context, c + plaintext.Length, &written) == 1 && written == 0
                && _cipherControl(context, EvpCtrlAeadGetTag, tag.Length, t) == 1;
            if (!ok)
            {
                _clearErrors();
                CryptographicOperations.ZeroMemory(ciphertext);
                CryptographicOperations.ZeroMemory(tag);
                throw new CryptographicException("AES-256-GCM encryption failed in OpenSSL");
            }
        }
    }

    /// <summary>
    /// GCM decryption on a keyed context: false (with <paramref name="plaintext"/> cleared) when the
    /// tag does not verify. Sizes are checked here, overlaps are the caller's to check.
    /// </summary>
    public static bool GcmDecrypt(nint context, ReadOnlySpan<byte> iv, ReadOnlySpan<byte> ciphertext, ReadOnlySpan<byte> tag, Span<byte> plaintext, ReadOnlySpan<byte> aad)
    {
        CheckSizes(iv, ciphertext.Length, plaintext.Length, tag.Length);

        // EVP_CIPHER_CTX_ctrl takes the expected tag through a writable pointer: hand it a copy.
        Span<byte> expected = stackalloc byte[16];
        tag.CopyTo(expected);
        fixed (byte* n = iv)
        fixed (byte* c = ciphertext)
        fixed (byte* t = expected)
        fixed (byte* p = plaintext)
        fixed (byte* a = aad)
        {
            int written;
            var ok = _cipherInit(context, 0, null, n, 0, 0) == 1
                && _cipherControl(context, EvpCtrlAeadSetTag, tag.Length, t) == 1
                && (aad.IsEmpty || _cipherUpdate(context, null, &written, a, aad.Length) == 1)
                && (ciphertext.IsEmpty || (_cipherUpdate(context, p, &written, c, ciphertext.Length) == 1 && written == ciphertext.Length))
                && _cipherFinal(context, p + ciphertext.Length, &written) == 1 && written == 0;
            if (!ok)
            {
                _clearErrors();
                CryptographicOperations.ZeroMemory(plaintext);
            }

            return ok;
        }
    }

    /// <summary>OpenSSL reads 12 IV bytes and writes as many output bytes as it reads input, whatever the spans say: the sizes are checked here too, not only by <see cref="Aes256Gcm"/>.</summary>
    private static void CheckSizes(ReadOnlySpan<byte> iv, int inputLength, int outputLength, int tagLength)
    {
        if (iv.Length != 12 || tagLength != 16 || outputLength != inputLength)
        {
            throw new ArgumentException("AES-256-GCM here takes a 12-byte IV, a 16-byte tag, and an output as long as its input");
        }
    }

    private static bool TryExport(nint library, string name, out nint address) => NativeLibrary.TryGetExport(library, name, out address) && address != 0;

    private static void Check(int result)
    {
        if (result != 1)
        {
            throw new CryptographicException("SHA-512 failed in OpenSSL");
        }
    }

    /// <summary>Hashes of 0 to 300 bytes, in one piece and in two, against .NET's.</summary>
    private static bool Sha512SelfTest()
    {
        Span<byte> data = stackalloc byte[300];
        Span<byte> ours = stackalloc byte[64];
        Span<byte> theirs = stackalloc byte[64];
        for (var i = 0; i < data.Length; i++)
        {
            data[i] = (byte)((i * 167) + 13);
        }

        var context = default(Sha512Context);
        foreach (var length in (ReadOnlySpan<int>)[0, 3, 111, 112, 128, 160, 300])
        {
            Sha512Init(ref context);
            Sha512Update(ref context, data[..(length / 3)]);
            Sha512Update(ref context, data[(length / 3)..length]);
            Sha512Final(ref context, ours);
            SHA512.HashData(data[..length], theirs);
            if (!ours.SequenceEqual(theirs))
            {
                return false;
            }
        }

        return true;
    }

    /// <summary>Encryption against .NET's <see cref="AesGcm"/> (empty and non-empty text and AAD, a new IV each time, in place), decryption back, and a changed tag refused.</summary>
    private static bool GcmSelfTest()
    {
        Span<byte> key = stackalloc byte[32];
        Span<byte> iv = stackalloc byte[12];
        Span<byte> data = stackalloc byte[100];
        for (var i = 0; i < data.Length; i++)
        {
            data[i] = (byte)((i * 89) + 7);
        }

        data[..32].CopyTo(key);
        data[40..52].CopyTo(iv);
        Span<byte> ours = stackalloc byte[100];
        Span<byte> theirs = stackalloc byte[100];
        Span<byte> ourTag = stackalloc byte[16];
        Span<byte> theirTag = stackalloc byte[16];
        Span<byte> opened = stackalloc byte[100];
        using var reference = new AesGcm(key, 16);
        var context = NewGcmContext(key);
        try
        {
            foreach (var (textLength, aadLength) in (ReadOnlySpan<(int, int)>)[(0, 0), (0, 41), (17, 0), (100, 33), (64, 5)])
            {
                // A new IV each case: a context that kept an earlier IV would fail here, not reuse it.
                iv[0] = (byte)textLength;
                var text = data[..textLength];
                var aad = data[^aadLength..];
                GcmEncrypt(context, iv, text, ours[..textLength], ourTag, aad);
                reference.Encrypt(iv, text, theirs[..textLength], theirTag, aad);
                if (!ours[..textLength].SequenceEqual(theirs[..textLength]) || !ourTag.SequenceEqual(theirTag)
                    || !GcmDecrypt(context, iv, ours[..textLength], ourTag, opened[..textLength], aad) || !opened[..textLength].SequenceEqual(text))
                {
                    return false;
                }

                ourTag[15] ^= 1;
                if (GcmDecrypt(context, iv, ours[..textLength], ourTag, opened[..textLength], aad))
                {
                    return false;
                }
            }

            // In place, right after a refused tag: the context must carry nothing over.
            data.CopyTo(ours);
            GcmEncrypt(context, iv, ours, ours, ourTag, default);
            reference.Encrypt(iv, data, theirs, theirTag, default);
            return ours.SequenceEqual(theirs) && ourTag.SequenceEqual(theirTag);
        }
        finally
        {
            FreeCipherContext(context);
        }
    }

    /// <summary>Room for OpenSSL's <c>SHA512_CTX</c> (216 bytes on 64-bit systems), 8-byte aligned; cleared by its user after use.</summary>
    [InlineArray(32)]
    internal struct Sha512Context
    {
        private ulong _element;
    }
}
