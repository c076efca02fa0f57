using Kms.Client.Caching;
using Kms.Core.Errors;
using Kms.Core.Names;
using Microsoft.Extensions.Logging;

namespace Kms.Client.Envelope;

/// <summary>Which KMS keys protect an <see cref="EnvelopeEncryptor"/>'s messages, and how.</summary>
public sealed class EnvelopeOptions
{
    /// <summary>
    /// The KMS keys that wrap each message's data key (1 to 16): the first generates it, each
    /// further one wraps the same data key (e.g. one key per site), and any one of them decrypts.
    /// Names are <c>tenants/{t}/keys/{k}</c>; an alias (<c>tenants/{t}/aliases/{a}</c>) may be given
    /// for encryption and is recorded as the key it points to, but is not trusted for decryption:
    /// an encryptor that reads what it writes under an alias names the keys in <see cref="TrustedKeyNames"/>.
    /// </summary>
    public IList<string> KeyNames { get; set; } = [];

    /// <summary>
    /// The keys whose wrapped data keys this encryptor sends to the KMS when decrypting; empty
    /// means the keys (not aliases) among <see cref="KeyNames"/>. A message naming only other keys
    /// is refused without a KMS call. Keys only: an alias here is refused.
    /// </summary>
    /// <remarks>
    /// An alias is not trusted, neither here nor through <see cref="KeyNames"/> — not even as the
    /// key it pointed to when this encryptor wrote under it: whoever may update the alias could
    /// point it at a key of theirs for one write and have messages forged under that key accepted.
    /// When an alias moves to a new key, add the new key here before moving it, and keep the old
    /// one while messages under it are to be read. (Rotating a key's versions changes no name.)
    /// </remarks>
    public IList<string> TrustedKeyNames { get; set; } = [];

    /// <summary>
    /// Decrypt with whichever key a message names, trusting the KMS's authorization alone
    /// ("discovery"). Off by default: a reader should know whose keys it accepts.
    /// </summary>
    public bool TrustAnyKey { get; set; }

    /// <summary>
    /// The suite this encryptor writes: <see cref="EnvelopeSuite.Committing"/> (0x0001, the default)
    /// or <see cref="EnvelopeSuite.CommittingSigned"/> (0x0002: each message signed under the key
    /// pair made with its data key, so a principal allowed only to decrypt cannot write one that
    /// verifies). Reading takes either, unless <see cref="RequireSignedMessages"/>.
    /// </summary>
    /// <remarks>
    /// A signed message costs a signature to write, a verification to read, 96 bytes of footer and
    /// 163 of context, and a P-384 key pair with each data key: without <see cref="DataKeyCache"/>
    /// a key pair and a KMS call per message; with it, the key pair is cached with the data key and
    /// signs every message under it, and is disposed when its entry goes and no stream still holds
    /// it (docs/envelope-format-signed.md, "Caching": the private key then lives as long as the
    /// entry). Its encryption context takes 63 caller entries, not 64. The key
    /// <c>kms-envelope-public-key</c> is reserved in every suite.
    /// </remarks>
    public EnvelopeSuite Suite { get; set; } = EnvelopeSuite.Committing;

    /// <summary>
    /// Refuse unsigned (suite 0x0001) messages when decrypting, before any KMS call: for readers
    /// whose writers all sign, so that whoever can only decrypt cannot hand them a message of their
    /// own under an unsigned suite. Off by default.
    /// </summary>
    /// <remarks>
    /// A signed message's signature is verified at its end: one-shot decryption before it decrypts
    /// anything, a streaming reader after it has released every frame but the last — frames whoever
    /// may decrypt the message can have written (<see cref="EnvelopeDecryptingStream"/>); a reader
    /// that acts on what it streams turns <see cref="StreamSignedMessages"/> off.
    /// </remarks>
    public bool RequireSignedMessages { get; set; }

    /// <summary>
    /// Decrypt signed (suite 0x0002) messages as streams too: <see cref="EnvelopeEncryptor.OpenDecryptingStreamAsync"/>
    /// and <see cref="EnvelopeEncryptor.DecryptAsync(Stream, Stream, IReadOnlyDictionary{string, string}, ReadOnlyMemory{byte}, CancellationToken)"/>.
    /// On by default. Off, each of them refuses a signed message at its header, before any KMS call
    /// and before a byte is released (<see cref="EnvelopeDecryptionException"/> saying so), and the
    /// caller decrypts it in one shot; unsigned messages and one-shot decryption are unaffected.
    /// </summary>
    /// <remarks>
    /// <para>A streaming reader releases every frame of a signed message but the last before it
    /// verifies the signature at the end, and a principal allowed only to decrypt holds the data key,
    /// so it can write frames that verify under the writer's header: what a stream hands out is the
    /// writer's only once it has reached its end. Turn this off where streamed plaintext is acted on
    /// as it arrives (parsed, forwarded, stored in place); one-shot decryption verifies the signature
    /// before it decrypts a frame (docs/envelope-format-signed.md, "Reading, in order"). As AWS
    /// Encryption SDK's streaming "decrypt-unsigned" mode.</para>
    /// <para>With <see cref="RequireSignedMessages"/> also set, no message streams (unsigned ones are
    /// refused as unsigned, signed ones by this): a reader that decrypts in one shot only.</para>
    /// </remarks>
    public bool StreamSignedMessages { get; set; } = true;

    /// <summary>Plaintext bytes per frame (64 B to 4 MiB; default 64 KiB): the memory a streaming reader needs.</summary>
    public int FrameLength { get; set; } = EnvelopeFormat.DefaultFrameLength;

    /// <summary>
    /// Data-key caching; null (the default) makes a KMS call for every message. Caching covers
    /// encryption; decryption only with <see cref="DataKeyCacheOptions.DecryptionMaxAge"/> set.
    /// </summary>
    public DataKeyCacheOptions? DataKeyCache { get; set; }

    /// <summary>
    /// Where the encryptor logs (an encrypting stream disposed without being completed: event
    /// 3007); null: the <see cref="KmsClient"/>'s logger factory when the encryptor is built on
    /// one, else nowhere. Never plaintext, keys or context values.
    /// </summary>
    public ILoggerFactory? LoggerFactory { get; set; }

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

        if (TrustedKeyNames.FirstOrDefault(IsAlias) is { } trustedAlias)
        {
            throw new ArgumentException($"TrustedKeyNames names the alias {KmsErrors.Printable(trustedAlias)}: trust keys (tenants/{{t}}/keys/{{k}}), not aliases, which whoever may update them can point elsewhere", nameof(TrustedKeyNames));
        }

        if (Suite is not EnvelopeSuite.Committing and not EnvelopeSuite.CommittingSigned)
        {
            throw new ArgumentException($"unknown envelope suite {(int)Suite}", nameof(Suite));
        }

        EnvelopeHeader.ValidateFrameLength(FrameLength);
        DataKeyCache?.Validate();
    }

    /// <summary>Whether <paramref name="name"/> is an alias's resource name (<c>tenants/{t}/aliases/{a}</c>).</summary>
    internal static bool IsAlias(string name) => ResourceSegments.Is(name, ResourceSegments.Collection, "aliases");
}
