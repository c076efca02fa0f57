namespace Kms.Client.Envelope;

/// <summary>The algorithm suite an <see cref="EnvelopeEncryptor"/> writes (docs/envelope-format.md, docs/envelope-format-signed.md).</summary>
public enum EnvelopeSuite
{
    /// <summary>
    /// 0x0001: key-committing AES-256-GCM, no signature. Whoever can decrypt a message's data key
    /// can write another valid message under it.
    /// </summary>
    Committing = 0x0001,

    /// <summary>
    /// 0x0002: 0x0001 plus an ECDSA P-384 / SHA-384 signature over the whole message, under a key
    /// pair made for the message whose public key the KMS binds to the data key (through the
    /// encryption context). A principal that may only decrypt cannot write a message that verifies.
    /// The signature is checked at the end: a streaming reader releases every frame but the last
    /// before it (<see cref="EnvelopeDecryptingStream"/>); a reader that must not act on such frames
    /// decrypts in one shot, or sets <see cref="EnvelopeOptions.StreamSignedMessages"/> off to have
    /// every streamed signed message refused at its header.
    /// </summary>
    CommittingSigned = 0x0002,
}
