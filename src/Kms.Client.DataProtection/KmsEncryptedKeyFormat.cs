using System.Xml.Linq;

namespace Kms.Client.DataProtection;

/// <summary>
/// The element that stands in a key file for an encrypted key ring entry:
/// <c>&lt;kmsEncryptedKey version="1" key="…" keyVersion="…"&gt;&lt;ciphertext&gt;base64&lt;/ciphertext&gt;&lt;/kmsEncryptedKey&gt;</c>.
/// The key names are for people reading the file; decryption reads only the ciphertext, whose
/// blob names the key version that encrypted it.
/// </summary>
internal static class KmsEncryptedKeyFormat
{
    public const string Version = "1";

    public static readonly XName Element = "kmsEncryptedKey";

    public static readonly XName VersionAttribute = "version";

    public static readonly XName KeyAttribute = "key";

    public static readonly XName KeyVersionAttribute = "keyVersion";

    public static readonly XName Ciphertext = "ciphertext";
}
