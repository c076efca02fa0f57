using System.Buffers.Binary;

namespace Kms.Client.Tests.Envelope;

/// <summary>
/// A frame's IV and associated data as docs/envelope-format.md writes them, built here from the
/// spec rather than taken from the SDK, for the tests that open its output with another
/// implementation (.NET's AesGcm, BouncyCastle).
/// </summary>
internal static class EnvelopeSpec
{
    /// <summary>The 12-byte IV of frame <paramref name="sequence"/>: eight zero bytes, then the sequence big-endian.</summary>
    public static byte[] Iv(uint sequence)
    {
        var iv = new byte[12];
        BinaryPrimitives.WriteUInt32BigEndian(iv.AsSpan(8), sequence);
        return iv;
    }

    /// <summary>A frame's associated data: message id (32), frame type (1), sequence (4), plaintext length (4), big-endian.</summary>
    public static byte[] FrameAad(byte[] messageId, byte type, uint sequence, int length)
    {
        var aad = new byte[41];
        messageId.CopyTo(aad, 0);
        aad[32] = type;
        BinaryPrimitives.WriteUInt32BigEndian(aad.AsSpan(33), sequence);
        BinaryPrimitives.WriteUInt32BigEndian(aad.AsSpan(37), (uint)length);
        return aad;
    }
}
