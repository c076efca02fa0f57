using System.Buffers.Binary;
using System.Security.Cryptography;
using System.Text;

namespace Kms.Client.Envelope;

/// <summary>
/// Constants and key derivation of envelope message v1, suites 0x0001 and 0x0002 — byte by byte
/// in docs/envelope-format.md and docs/envelope-format-signed.md. Frozen: a change here is a new
/// version or suite.
/// </summary>
internal static class EnvelopeFormat
{
    public const byte Version1 = 0x01;

    public const ushort Suite1 = 0x0001;

    /// <summary>Suite 0x0001 plus an ECDSA P-384 / SHA-384 signature in a footer (docs/envelope-format-signed.md).</summary>
    public const ushort Suite2 = 0x0002;

    /// <summary>The footer of a suite 0x0002 message: r ‖ s, 48 bytes each (IEEE P1363).</summary>
    public const int SignatureLength = 96;

    /// <summary>The encryption-context key that carries a suite 0x0002 message's public key; reserved in every suite.</summary>
    public const string PublicKeyContextKey = "kms-envelope-public-key";

    public const int MagicLength = 4;

    public const int MessageIdLength = 32;

    public const int DataKeyLength = 32;

    public const int CommitmentLength = 32;

    public const int TagLength = 16;

    public const int IvLength = 12;

    public const int MaxWrappedKeys = 16;

    public const int MaxKeyNameBytes = 512;

    public const int MaxWrappedKeyBytes = 1024;

    public const int MaxContextEntries = 64;

    public const int MaxContextKeyBytes = 256;

    public const int MaxContextValueBytes = 1024;

    public const int MinFrameLength = 64;

    public const int MaxFrameLength = 4 * 1024 * 1024;

    public const int DefaultFrameLength = 64 * 1024;

    /// <summary>Largest sequence number of a regular frame; the final frame may use one more (0xFFFFFFFE).</summary>
    public const uint MaxRegularSequenceNumber = 0xFFFFFFFD;

    public const uint FinalFrameMarker = 0xFFFFFFFF;

    public const byte RegularFrameType = 0x01;

    public const byte FinalFrameType = 0x02;

    /// <summary>u32 sequence number before a regular frame's ciphertext.</summary>
    public const int RegularFramePrefix = 4;

    /// <summary>Marker, sequence number and content length before a final frame's ciphertext.</summary>
    public const int FinalFramePrefix = 12;

    public const int FrameAadLength = MessageIdLength + 1 + 4 + 4;

    /// <summary>magic ‖ version ‖ suite ‖ message id.</summary>
    public const int FixedPrefixLength = MagicLength + 1 + 2 + MessageIdLength;

    /// <summary>Largest context encoding: count plus 64 entries at the largest key and value.</summary>
    public const int MaxContextBytes = 4 + (MaxContextEntries * (8 + MaxContextKeyBytes + MaxContextValueBytes));

    /// <summary>Largest header, including the tag: what a reader buffers at most before the body.</summary>
    public const int MaxHeaderLength = FixedPrefixLength + MaxContextBytes + 1 + (MaxWrappedKeys * (2 + MaxKeyNameBytes + 2 + MaxWrappedKeyBytes)) + 4 + CommitmentLength + TagLength;

    public static ReadOnlySpan<byte> Magic => "KMSE"u8;

    private static ReadOnlySpan<byte> DerivationLabel => "KMSE v1 key and commitment"u8;

    public static readonly UTF8Encoding StrictUtf8 = new(encoderShouldEmitUTF8Identifier: false, throwOnInvalidBytes: true);

    /// <summary>
    /// <c>K</c> and <c>C</c> from the data key and message id: HKDF-SHA512 with salt = message
    /// id, one 64-byte expansion split in two. The caller zeroes <paramref name="messageKey"/>.
    /// </summary>
    public static void Derive(ReadOnlySpan<byte> dataKey, ReadOnlySpan<byte> messageId, Span<byte> messageKey, Span<byte> commitment)
        => Derive(Suite1, dataKey, messageId, messageKey, commitment);

    /// <summary>
    /// As <see cref="Derive(ReadOnlySpan{byte}, ReadOnlySpan{byte}, Span{byte}, Span{byte})"/> for
    /// <paramref name="suite"/>, whose id ends the info string: the same data key and message id
    /// give other keys under another suite.
    /// </summary>
    public static void Derive(ushort suite, ReadOnlySpan<byte> dataKey, ReadOnlySpan<byte> messageId, Span<byte> messageKey, Span<byte> commitment)
    {
        Span<byte> okm = stackalloc byte[64];
        Span<byte> info = stackalloc byte[DerivationLabel.Length + 2];
        try
        {
            DerivationLabel.CopyTo(info);
            BinaryPrimitives.WriteUInt16BigEndian(info[DerivationLabel.Length..], suite);
            HkdfSha512(dataKey, messageId, info, okm);
            okm[..32].CopyTo(messageKey);
            okm[32..].CopyTo(commitment);
        }
        finally
        {
            CryptographicOperations.ZeroMemory(okm);
        }
    }

    /// <summary>
    /// HKDF-SHA512 (RFC 5869) into <paramref name="okm"/>, with the pseudorandom key zeroed;
    /// what <see cref="Derive(ushort, ReadOnlySpan{byte}, ReadOnlySpan{byte}, Span{byte}, Span{byte})"/> uses, run against Wycheproof's vectors and .NET's
    /// <see cref="HKDF"/> by the tests.
    /// </summary>
    /// <remarks>
    /// Built from one-shot SHA-512s rather than <see cref="HKDF"/>: .NET's HMAC sets up an OpenSSL
    /// MAC context on every call, which at a message's sizes costs more than the hashing — two
    /// HMACs per message were a third of a 1 KiB message's time (docs/benchmarks.md, "Envelope").
    /// </remarks>
    /// <exception cref="ArgumentException"><paramref name="okm"/> is empty, longer than 255 × 64 bytes, or overlaps <paramref name="info"/>.</exception>
    internal static void HkdfSha512(ReadOnlySpan<byte> ikm, ReadOnlySpan<byte> salt, ReadOnlySpan<byte> info, Span<byte> okm)
        => HkdfSha512(ikm, salt, info, okm, LibCrypto.Sha512Available);

    /// <summary>As <see cref="HkdfSha512(ReadOnlySpan{byte}, ReadOnlySpan{byte}, ReadOnlySpan{byte}, Span{byte})"/>, with the SHA-512 picked: OpenSSL's directly (<paramref name="native"/>, needs <see cref="LibCrypto.Sha512Available"/>) or .NET's; for tests of both.</summary>
    internal static void HkdfSha512(ReadOnlySpan<byte> ikm, ReadOnlySpan<byte> salt, ReadOnlySpan<byte> info, Span<byte> okm, bool native)
    {
        if (native && !LibCrypto.Sha512Available)
        {
            throw new PlatformNotSupportedException("OpenSSL 3's SHA-512 is not available in this process");
        }

        if (okm.Length is 0 or > 255 * Sha512Length)
        {
            throw new ArgumentException($"HKDF-SHA512 gives 1 to {255 * Sha512Length} bytes", nameof(okm));
        }

        // Each block after the first reads info again: it must not have been overwritten by then.
        if (okm.Overlaps(info))
        {
            throw new ArgumentException("the output must not overlap info", nameof(okm));
        }

        Span<byte> prk = stackalloc byte[Sha512Length];
        Span<byte> block = stackalloc byte[Sha512Length];
        try
        {
            // Extract: HMAC(salt, IKM); an absent salt is a key of zeros, as HMAC pads it anyway.
            HmacSha512(salt, ikm, default, 0, prk, native);

            // Expand: T(i) = HMAC(PRK, T(i−1) ‖ info ‖ i).
            var written = 0;
            for (var counter = 1; written < okm.Length; counter++)
            {
                HmacSha512(prk, counter == 1 ? default : block, info, (byte)counter, block, native);
                var take = Math.Min(Sha512Length, okm.Length - written);
                block[..take].CopyTo(okm[written..]);
                written += take;
            }
        }
        finally
        {
            CryptographicOperations.ZeroMemory(prk);
            CryptographicOperations.ZeroMemory(block);
        }
    }

    private const int Sha512Length = 64;

    private const int Sha512BlockLength = 128;

    /// <summary>HMAC-SHA512 (RFC 2104) of <paramref name="first"/> ‖ <paramref name="second"/> ‖ <paramref name="counter"/> (if not 0); the inputs are read before <paramref name="destination"/> is written, so it may be one of them.</summary>
    private static void HmacSha512(ReadOnlySpan<byte> key, ReadOnlySpan<byte> first, ReadOnlySpan<byte> second, byte counter, Span<byte> destination, bool native)
    {
        if (native)
        {
            HmacSha512Native(key, first, second, counter, destination);
            return;
        }

        var innerLength = Sha512BlockLength + first.Length + second.Length + (counter == 0 ? 0 : 1);
        byte[]? rented = innerLength > 512 ? System.Buffers.ArrayPool<byte>.Shared.Rent(innerLength) : null;
        var inner = (rented is null ? stackalloc byte[512] : rented.AsSpan())[..innerLength];
        Span<byte> outer = stackalloc byte[Sha512BlockLength + Sha512Length];
        try
        {
            // The key, hashed if longer than a block, padded with zeros to one block.
            var padded = outer[..Sha512BlockLength];
            padded.Clear();
            if (key.Length > Sha512BlockLength)
            {
                SHA512.HashData(key, padded);
            }
            else
            {
                key.CopyTo(padded);
            }

            for (var i = 0; i < Sha512BlockLength; i++)
            {
                inner[i] = (byte)(padded[i] ^ 0x36);
                padded[i] ^= 0x5c;
            }

            first.CopyTo(inner[Sha512BlockLength..]);
            second.CopyTo(inner[(Sha512BlockLength + first.Length)..]);
            if (counter != 0)
            {
                inner[^1] = counter;
            }

            SHA512.HashData(inner, outer[Sha512BlockLength..]);
            SHA512.HashData(outer, destination);
        }
        finally
        {
            CryptographicOperations.ZeroMemory(inner);
            CryptographicOperations.ZeroMemory(outer);
            if (rented is not null)
            {
                System.Buffers.ArrayPool<byte>.Shared.Return(rented);
            }
        }
    }

    /// <summary>IV of frame <paramref name="sequence"/> (0 is the header tag).</summary>
    public static void WriteIv(Span<byte> iv, uint sequence)
    {
        iv[..8].Clear();
        BinaryPrimitives.WriteUInt32BigEndian(iv[8..], sequence);
    }

    public static void WriteFrameAad(Span<byte> aad, ReadOnlySpan<byte> messageId, byte type, uint sequence, int contentLength)
    {
        messageId.CopyTo(aad);
        aad[MessageIdLength] = type;
        BinaryPrimitives.WriteUInt32BigEndian(aad[(MessageIdLength + 1)..], sequence);
        BinaryPrimitives.WriteUInt32BigEndian(aad[(MessageIdLength + 5)..], (uint)contentLength);
    }

    /// <summary>Bytes of a whole message for a plaintext of known length.</summary>
    /// <summary>
    /// The longest plaintext one message holds: <see cref="MaxRegularSequenceNumber"/> full regular
    /// frames and a final frame one byte short of full (its sequence number is the last there is).
    /// </summary>
    public static long MaxPlaintextLength(int frameLength) => ((long)MaxRegularSequenceNumber * frameLength) + frameLength - 1;

    public static long MessageLength(int headerLength, long plaintextLength, int frameLength)
    {
        var regular = plaintextLength / frameLength;
        var rest = plaintextLength % frameLength;
        return headerLength + (regular * (RegularFramePrefix + frameLength + TagLength)) + FinalFramePrefix + rest + TagLength;
    }

    /// <summary>
    /// <see cref="HmacSha512(ReadOnlySpan{byte}, ReadOnlySpan{byte}, ReadOnlySpan{byte}, byte, Span{byte}, bool)"/>
    /// on OpenSSL's <c>SHA512_Init/Update/Final</c>: the same bytes, the inputs streamed in rather
    /// than joined, and the hash state on this stack, cleared after use.
    /// </summary>
    private static void HmacSha512Native(ReadOnlySpan<byte> key, ReadOnlySpan<byte> first, ReadOnlySpan<byte> second, byte counter, Span<byte> destination)
    {
        Span<byte> pad = stackalloc byte[Sha512BlockLength];
        Span<byte> innerHash = stackalloc byte[Sha512Length];
        var context = default(LibCrypto.Sha512Context);
        try
        {
            pad.Clear();
            if (key.Length > Sha512BlockLength)
            {
                LibCrypto.Sha512Init(ref context);
                LibCrypto.Sha512Update(ref context, key);
                LibCrypto.Sha512Final(ref context, pad);
            }
            else
            {
                key.CopyTo(pad);
            }

            Xor(pad, 0x36);
            LibCrypto.Sha512Init(ref context);
            LibCrypto.Sha512Update(ref context, pad);
            LibCrypto.Sha512Update(ref context, first);
            LibCrypto.Sha512Update(ref context, second);
            if (counter != 0)
            {
                LibCrypto.Sha512Update(ref context, new ReadOnlySpan<byte>(in counter));
            }

            LibCrypto.Sha512Final(ref context, innerHash);
            Xor(pad, 0x36 ^ 0x5c);
            LibCrypto.Sha512Init(ref context);
            LibCrypto.Sha512Update(ref context, pad);
            LibCrypto.Sha512Update(ref context, innerHash);
            LibCrypto.Sha512Final(ref context, destination);
        }
        finally
        {
            CryptographicOperations.ZeroMemory(pad);
            CryptographicOperations.ZeroMemory(innerHash);
            CryptographicOperations.ZeroMemory(System.Runtime.InteropServices.MemoryMarshal.AsBytes((Span<ulong>)context));
        }

        static void Xor(Span<byte> block, byte value)
        {
            var pattern = 0x0101010101010101UL * value;
            foreach (ref var word in System.Runtime.InteropServices.MemoryMarshal.Cast<byte, ulong>(block))
            {
                word ^= pattern;
            }
        }
    }
}
