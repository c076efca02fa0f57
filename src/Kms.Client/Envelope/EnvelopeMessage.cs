using System.Buffers.Binary;
using System.Security.Cryptography;

namespace Kms.Client.Envelope;

/// <summary>One-shot encoding of a whole message in one buffer (no copies beyond the output).</summary>
internal static class EnvelopeMessage
{
    /// <summary>The whole message for <paramref name="plaintext"/>, written once into an array of its exact size.</summary>
    public static byte[] Seal(
        ReadOnlySpan<byte> dataKey,
        byte[] messageId,
        byte[] encodedContext,
        IReadOnlyList<WrappedDataKey> wrappedKeys,
        int frameLength,
        ReadOnlySpan<byte> plaintext,
        ReadOnlySpan<byte> associatedData,
        EnvelopeSignature? signature = null)
    {
        var (cipher, header, length) = Prepare(dataKey, messageId, encodedContext, wrappedKeys, frameLength, plaintext.Length, signature is not null);
        using (cipher)
        {
            if (length > Array.MaxLength)
            {
                throw new ArgumentException("the plaintext is too large for a one-shot message; use the Stream API", nameof(plaintext));
            }

            var message = GC.AllocateUninitializedArray<byte>((int)length);
            Write(cipher, header, plaintext, associatedData, message, signature);
            return message;
        }
    }

    /// <summary>The whole message written into <paramref name="destination"/>; its length.</summary>
    /// <exception cref="ArgumentException"><paramref name="destination"/> is too small (nothing is written).</exception>
    public static int SealInto(
        ReadOnlySpan<byte> dataKey,
        byte[] messageId,
        byte[] encodedContext,
        IReadOnlyList<WrappedDataKey> wrappedKeys,
        int frameLength,
        ReadOnlySpan<byte> plaintext,
        ReadOnlySpan<byte> associatedData,
        Span<byte> destination,
        EnvelopeSignature? signature = null)
    {
        var (cipher, header, length) = Prepare(dataKey, messageId, encodedContext, wrappedKeys, frameLength, plaintext.Length, signature is not null);
        using (cipher)
        {
            if (length > destination.Length)
            {
                throw new ArgumentException($"the destination holds {destination.Length} bytes; this message needs {length}", nameof(destination));
            }

            Write(cipher, header, plaintext, associatedData, destination[..(int)length], signature);
            return (int)length;
        }
    }

    private static (FrameCipher Cipher, EnvelopeHeader Header, long Length) Prepare(
        ReadOnlySpan<byte> dataKey,
        byte[] messageId,
        byte[] encodedContext,
        IReadOnlyList<WrappedDataKey> wrappedKeys,
        int frameLength,
        int plaintextLength,
        bool signed)
    {
        var suite = signed ? EnvelopeFormat.Suite2 : EnvelopeFormat.Suite1;
        var cipher = FrameCipher.ForWriting(suite, dataKey, messageId, out var commitment);
        var header = new EnvelopeHeader(messageId, encodedContext, null, wrappedKeys, frameLength, commitment, suite);
        return (cipher, header, EnvelopeFormat.MessageLength(header.Length, plaintextLength, frameLength) + (signed ? EnvelopeFormat.SignatureLength : 0));
    }

    /// <summary>The message into <paramref name="output"/> (its exact length); signed last, over every byte before the footer.</summary>
    private static void Write(FrameCipher cipher, EnvelopeHeader header, ReadOnlySpan<byte> plaintext, ReadOnlySpan<byte> associatedData, Span<byte> output, EnvelopeSignature? signature)
    {
        var frameLength = header.FrameLength;
        header.WriteBody(output);
        cipher.SealHeader(output[..header.BodyLength], associatedData, output.Slice(header.BodyLength, EnvelopeFormat.TagLength));
        var offset = header.Length;
        uint sequence = 1;
        while (plaintext.Length >= frameLength)
        {
            BinaryPrimitives.WriteUInt32BigEndian(output[offset..], sequence);
            offset += EnvelopeFormat.RegularFramePrefix;
            cipher.Seal(EnvelopeFormat.RegularFrameType, sequence, plaintext[..frameLength], output.Slice(offset, frameLength), output.Slice(offset + frameLength, EnvelopeFormat.TagLength));
            offset += frameLength + EnvelopeFormat.TagLength;
            plaintext = plaintext[frameLength..];
            sequence++;
        }

        WriteFinalPrefix(output[offset..], sequence, plaintext.Length);
        offset += EnvelopeFormat.FinalFramePrefix;
        cipher.Seal(EnvelopeFormat.FinalFrameType, sequence, plaintext, output.Slice(offset, plaintext.Length), output.Slice(offset + plaintext.Length, EnvelopeFormat.TagLength));
        if (signature is not null)
        {
            var signed = offset + plaintext.Length + EnvelopeFormat.TagLength;
            signature.Append(output[..signed]);
            signature.Sign(output.Slice(signed, EnvelopeFormat.SignatureLength));
        }
    }

    public static void WriteFinalPrefix(Span<byte> destination, uint sequence, int contentLength)
    {
        BinaryPrimitives.WriteUInt32BigEndian(destination, EnvelopeFormat.FinalFrameMarker);
        BinaryPrimitives.WriteUInt32BigEndian(destination[4..], sequence);
        BinaryPrimitives.WriteUInt32BigEndian(destination[8..], (uint)contentLength);
    }

    /// <summary>
    /// The plaintext of the frames after the header, or an exception; no plaintext leaves
    /// unless every frame verified and nothing follows the final frame.
    /// </summary>
    public static byte[] Open(FrameCipher cipher, int frameLength, ReadOnlySpan<byte> body)
    {
        // Walk the frame structure first (lengths only), so the output is allocated once at
        // its exact size — never more than the input.
        var regularFrame = EnvelopeFormat.RegularFramePrefix + frameLength + EnvelopeFormat.TagLength;
        var offset = 0;
        uint sequence = 1;
        int finalLength;
        while (true)
        {
            if (body.Length - offset < 4)
            {
                throw EnvelopeDecryptionException.Failed();
            }

            var marker = BinaryPrimitives.ReadUInt32BigEndian(body[offset..]);
            if (marker == EnvelopeFormat.FinalFrameMarker)
            {
                if (body.Length - offset < EnvelopeFormat.FinalFramePrefix
                    || BinaryPrimitives.ReadUInt32BigEndian(body[(offset + 4)..]) != sequence)
                {
                    throw EnvelopeDecryptionException.Failed();
                }

                var declared = BinaryPrimitives.ReadUInt32BigEndian(body[(offset + 8)..]);
                if (declared >= (uint)frameLength || body.Length - offset - EnvelopeFormat.FinalFramePrefix - EnvelopeFormat.TagLength != declared)
                {
                    throw EnvelopeDecryptionException.Failed();
                }

                finalLength = (int)declared;
                break;
            }

            if (marker != sequence || sequence > EnvelopeFormat.MaxRegularSequenceNumber || body.Length - offset < regularFrame)
            {
                throw EnvelopeDecryptionException.Failed();
            }

            offset += regularFrame;
            sequence++;
        }

        var regularFrames = (int)(sequence - 1);
        var plaintext = GC.AllocateUninitializedArray<byte>((regularFrames * frameLength) + finalLength);
        try
        {
            var input = 0;
            for (uint n = 1; n < sequence; n++)
            {
                var ciphertext = body.Slice(input + EnvelopeFormat.RegularFramePrefix, frameLength);
                cipher.Open(EnvelopeFormat.RegularFrameType, n, ciphertext, body.Slice(input + EnvelopeFormat.RegularFramePrefix + frameLength, EnvelopeFormat.TagLength), plaintext.AsSpan((int)(n - 1) * frameLength, frameLength));
                input += regularFrame;
            }

            var last = body.Slice(input + EnvelopeFormat.FinalFramePrefix, finalLength);
            cipher.Open(EnvelopeFormat.FinalFrameType, sequence, last, body.Slice(input + EnvelopeFormat.FinalFramePrefix + finalLength, EnvelopeFormat.TagLength), plaintext.AsSpan(regularFrames * frameLength));
            return plaintext;
        }
        catch
        {
            CryptographicOperations.ZeroMemory(plaintext);
            throw;
        }
    }
}
