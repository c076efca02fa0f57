using System.Security.Cryptography;

namespace Kms.Client.Envelope;

/// <summary>
/// An envelope message could not be decrypted: not an envelope, an unsupported version or
/// suite, a length over its limit, no trusted wrapped key the KMS would unwrap, another
/// encryption context than expected, or — whatever was altered — "envelope decryption failed".
/// </summary>
/// <remarks>
/// Authentication failures (commitment, header tag, any frame, truncation, reordering,
/// trailing bytes) all carry the same message, so a caller cannot tell which byte was wrong.
/// KMS failures keep the KMS's <see cref="Grpc.Core.RpcException"/> as the inner exception.
/// Never carries key material or plaintext.
/// </remarks>
public sealed class EnvelopeDecryptionException : CryptographicException
{
    internal const string Opaque = "envelope decryption failed";

    /// <summary>Creates the exception.</summary>
    public EnvelopeDecryptionException(string message)
        : base(message)
    {
    }

    /// <summary>Creates the exception with its cause.</summary>
    public EnvelopeDecryptionException(string message, Exception? innerException)
        : base(message, innerException)
    {
    }

    /// <summary>Creates the exception.</summary>
    public EnvelopeDecryptionException()
        : base(Opaque)
    {
    }

    /// <summary>The data key does not commit to the message (the same opaque message: only the SDK tells them apart).</summary>
    internal bool WrongDataKey { get; private init; }

    internal static EnvelopeDecryptionException Failed() => new(Opaque);

    internal static EnvelopeDecryptionException DataKeyNotCommitted() => new(Opaque) { WrongDataKey = true };

    internal static EnvelopeDecryptionException Malformed(string what) => new($"not a valid envelope message: {what}");
}
