using System.Xml.Linq;

namespace Kms.Client.DataProtection;

/// <summary>
/// The element that stands in a key file for an encrypted key ring entry:
/// <c>&lt;kmsEncryptedKey version="3" key="…" keyVersion="…" keyId="…" creationDate="…" activationDate="…" expirationDate="…" deserializerType="…" descriptor="sha256:…"&gt;&lt;ciphertext&gt;base64&lt;/ciphertext&gt;&lt;/kmsEncryptedKey&gt;</c>.
/// The KMS key names are for people reading the file; decryption sends only the ciphertext, whose
/// blob names the key version that encrypted it. The Data Protection key's id and dates
/// (<see cref="KeyRingEntryBinding"/>) and its descriptor's deserializer type and settings digest
/// (<see cref="KeyDescriptorBinding"/>) are in the encryption context of version 3; version 2
/// (written before) has the id and dates only, version 1 none of them.
/// </summary>
/// <remarks>
/// <see cref="ReadUnder"/> is never written: the repository <see cref="KmsKeyRingRepository"/>
/// wraps adds it as it reads, stating the id and dates of the <c>&lt;key&gt;</c> the entry
/// stands under in the repository, and removes any the repository held.
/// </remarks>
internal static class KmsEncryptedKeyFormat
{
    /// <summary>The version written: bound to the Data Protection key's id and dates and to its descriptor (<see cref="KeyDescriptorBinding"/>).</summary>
    public const string Version = "3";

    /// <summary>The version written before: bound to the key's id and dates, not to its descriptor.</summary>
    public const string DescriptorUnboundVersion = "2";

    /// <summary>The version written before that: bound to the application only.</summary>
    public const string UnboundVersion = "1";

    public static readonly XName Element = "kmsEncryptedKey";

    public static readonly XName VersionAttribute = "version";

    public static readonly XName KeyAttribute = "key";

    public static readonly XName KeyVersionAttribute = "keyVersion";

    public static readonly XName KeyIdAttribute = "keyId";

    public static readonly XName CreationDateAttribute = "creationDate";

    public static readonly XName ActivationDateAttribute = "activationDate";

    public static readonly XName ExpirationDateAttribute = "expirationDate";

    public static readonly XName DeserializerTypeAttribute = "deserializerType";

    public static readonly XName DescriptorAttribute = "descriptor";

    public static readonly XName Ciphertext = "ciphertext";

    public static readonly XName ReadUnder = "readUnder";
}
