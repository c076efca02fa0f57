using System.Security.Cryptography;

namespace Kms.Client.Envelope;

/// <summary>
/// AES-256-GCM under one message's derived key: the header tag (IV 0) and the frames (IV =
/// sequence number, AAD = message id ‖ type ‖ sequence number ‖ length).
/// </summary>
internal sealed class FrameCipher : IDisposable
{
    // A header and a row id fit (a one-key header is about 200 bytes); longer AAD is joined on the heap.
    private const int StackAadLimit = 512;

    private readonly Aes256Gcm _gcm;
    private readonly byte[] _messageId;

    private FrameCipher(Aes256Gcm gcm, byte[] messageId)
    {
        _gcm = gcm;
        _messageId = messageId;
    }

    /// <summary>The cipher of a new message, and the commitment its header must carry.</summary>
    public static FrameCipher ForWriting(ReadOnlySpan<byte> dataKey, byte[] messageId, out byte[] commitment)
        => ForWriting(EnvelopeFormat.Suite1, dataKey, messageId, out commitment);

    /// <summary>The cipher of a new message of <paramref name="suite"/>, and the commitment its header must carry.</summary>
    public static FrameCipher ForWriting(ushort suite, ReadOnlySpan<byte> dataKey, byte[] messageId, out byte[] commitment)
    {
        Span<byte> messageKey = stackalloc byte[32];
        commitment = new byte[EnvelopeFormat.CommitmentLength];
        try
        {
            EnvelopeFormat.Derive(suite, dataKey, messageId, messageKey, commitment);
            return new FrameCipher(new Aes256Gcm(messageKey), messageId);
        }
        finally
        {
            CryptographicOperations.ZeroMemory(messageKey);
        }
    }

    /// <summary>
    /// The cipher of a message being read: checks the key commitment (before anything is
    /// decrypted), then the header tag over <paramref name="headerBody"/> and the caller's
    /// <paramref name="associatedData"/>.
    /// </summary>
    /// <exception cref="EnvelopeDecryptionException">The data key does not commit to this header, or the header was altered.</exception>
    public static FrameCipher ForReading(ReadOnlySpan<byte> dataKey, EnvelopeHeader header, ReadOnlySpan<byte> headerBody, ReadOnlySpan<byte> associatedData)
    {
        Span<byte> messageKey = stackalloc byte[32];
        Span<byte> commitment = stackalloc byte[EnvelopeFormat.CommitmentLength];
        FrameCipher? cipher = null;
        try
        {
            EnvelopeFormat.Derive(header.Suite, dataKey, header.MessageId, messageKey, commitment);
            if (!CryptographicOperations.FixedTimeEquals(commitment, header.Commitment))
            {
                throw EnvelopeDecryptionException.DataKeyNotCommitted();
            }

            cipher = new FrameCipher(new Aes256Gcm(messageKey), header.MessageId);
            Span<byte> iv = stackalloc byte[EnvelopeFormat.IvLength];
            EnvelopeFormat.WriteIv(iv, 0);
            var joined = associatedData.IsEmpty ? default : associatedData.Length <= StackAadLimit - headerBody.Length ? stackalloc byte[StackAadLimit] : new byte[checked(headerBody.Length + associatedData.Length)];
            cipher._gcm.Decrypt(iv, [], header.Tag, [], HeaderAad(headerBody, associatedData, joined));
            return cipher;
        }
        catch (AuthenticationTagMismatchException)
        {
            cipher?.Dispose();
            throw EnvelopeDecryptionException.Failed();
        }
        catch
        {
            cipher?.Dispose();
            throw;
        }
        finally
        {
            CryptographicOperations.ZeroMemory(messageKey);
        }
    }

    public void SealHeader(ReadOnlySpan<byte> headerBody, ReadOnlySpan<byte> associatedData, Span<byte> tag)
    {
        Span<byte> iv = stackalloc byte[EnvelopeFormat.IvLength];
        EnvelopeFormat.WriteIv(iv, 0);
        var joined = associatedData.IsEmpty ? default : associatedData.Length <= StackAadLimit - headerBody.Length ? stackalloc byte[StackAadLimit] : new byte[checked(headerBody.Length + associatedData.Length)];
        _gcm.Encrypt(iv, [], [], tag, HeaderAad(headerBody, associatedData, joined));
    }

    public void Seal(byte type, uint sequence, ReadOnlySpan<byte> plaintext, Span<byte> ciphertext, Span<byte> tag)
    {
        Span<byte> iv = stackalloc byte[EnvelopeFormat.IvLength];
        Span<byte> aad = stackalloc byte[EnvelopeFormat.FrameAadLength];
        EnvelopeFormat.WriteIv(iv, sequence);
        EnvelopeFormat.WriteFrameAad(aad, _messageId, type, sequence, plaintext.Length);
        _gcm.Encrypt(iv, plaintext, ciphertext, tag, aad);
    }

    /// <summary>Decrypts one frame into <paramref name="plaintext"/>, which holds nothing unless the tag verified.</summary>
    /// <exception cref="EnvelopeDecryptionException">The frame (or its place in the message) was altered.</exception>
    public void Open(byte type, uint sequence, ReadOnlySpan<byte> ciphertext, ReadOnlySpan<byte> tag, Span<byte> plaintext)
    {
        Span<byte> iv = stackalloc byte[EnvelopeFormat.IvLength];
        Span<byte> aad = stackalloc byte[EnvelopeFormat.FrameAadLength];
        EnvelopeFormat.WriteIv(iv, sequence);
        EnvelopeFormat.WriteFrameAad(aad, _messageId, type, sequence, ciphertext.Length);
        Open(iv, aad, ciphertext, tag, plaintext);
    }

    /// <summary>A cipher over a given message key, for known-answer tests of <see cref="Open(ReadOnlySpan{byte}, ReadOnlySpan{byte}, ReadOnlySpan{byte}, ReadOnlySpan{byte}, Span{byte})"/> on either GCM implementation.</summary>
    internal static FrameCipher ForKnownAnswer(ReadOnlySpan<byte> messageKey, bool native) => new(new Aes256Gcm(messageKey, native), []);

    /// <summary>The GCM decryption every frame goes through: a failed tag is one <see cref="EnvelopeDecryptionException"/>.</summary>
    internal void Open(ReadOnlySpan<byte> iv, ReadOnlySpan<byte> aad, ReadOnlySpan<byte> ciphertext, ReadOnlySpan<byte> tag, Span<byte> plaintext)
    {
        try
        {
            // Either implementation clears the plaintext buffer itself when the tag does not match.
            _gcm.Decrypt(iv, ciphertext, tag, plaintext, aad);
        }
        catch (AuthenticationTagMismatchException)
        {
            throw EnvelopeDecryptionException.Failed();
        }
    }

    public void Dispose() => _gcm.Dispose();

    /// <summary>Header body ‖ associated data, written into <paramref name="joined"/> (the body alone when there is none).</summary>
    private static ReadOnlySpan<byte> HeaderAad(ReadOnlySpan<byte> headerBody, ReadOnlySpan<byte> associatedData, Span<byte> joined)
    {
        if (associatedData.IsEmpty)
        {
            return headerBody;
        }

        headerBody.CopyTo(joined);
        associatedData.CopyTo(joined[headerBody.Length..]);
        return joined[..(headerBody.Length + associatedData.Length)];
    }
}
