using Kms.Client.Caching;

namespace Kms.Client.Envelope;

/// <summary>Which KMS keys protect an <see cref="EnvelopeEncryptor"/>'s messages, and how.</summary>
public sealed class EnvelopeOptions
{
    /// <summary>
    /// The KMS keys that wrap each message's data key (1 to 16): the first generates it, each
    /// further one wraps the same data key (e.g. one key per site), and any one of them decrypts.
    /// Names are <c>tenants/{t}/keys/{k}</c>; an alias may be given for encryption and is recorded
    /// as the key it points to.
    /// </summary>
    public IList<string> KeyNames { get; set; } = [];

    /// <summary>
    /// The keys whose wrapped data keys this encryptor sends to the KMS when decrypting; empty
    /// means <see cref="KeyNames"/>. A message naming only other keys is refused without a KMS call.
    /// An alias here is trusted as the key it named when this encryptor wrote under it (a message
    /// records the key, not the alias).
    /// </summary>
    public IList<string> TrustedKeyNames { get; set; } = [];

    /// <summary>
    /// Decrypt with whichever key a message names, trusting the KMS's authorization alone
    /// ("discovery"). Off by default: a reader should know whose keys it accepts.
    /// </summary>
    public bool TrustAnyKey { get; set; }

    /// <summary>Plaintext bytes per frame (64 B to 4 MiB; default 64 KiB): the memory a streaming reader needs.</summary>
    public int FrameLength { get; set; } = EnvelopeFormat.DefaultFrameLength;

    /// <summary>Data-key caching; null (the default) makes a KMS call for every message.</summary>
    public DataKeyCacheOptions? DataKeyCache { get; set; }

    internal void Validate()
    {
        if (KeyNames.Count is 0 or > EnvelopeFormat.MaxWrappedKeys)
        {
            throw new ArgumentException($"an envelope encryptor needs 1 to {EnvelopeFormat.MaxWrappedKeys} key names", nameof(KeyNames));
        }

        if (KeyNames.Concat(TrustedKeyNames).Any(string.IsNullOrWhiteSpace) || KeyNames.Distinct(StringComparer.Ordinal).Count() != KeyNames.Count)
        {
            throw new ArgumentException("key names must be non-empty and distinct", nameof(KeyNames));
        }

        EnvelopeHeader.ValidateFrameLength(FrameLength);
        DataKeyCache?.Validate();
    }
}
