using System.Xml.Linq;
using Kms.Core.Errors;

namespace Kms.Client.DataProtection;

/// <summary>
/// Whether a <c>&lt;key&gt;</c> element of the key ring has its secret encrypted through the KMS,
/// as <see cref="KmsXmlEncryptor"/> writes it — the only way a key of this application's ring comes
/// to be once <c>ProtectKeysWithKms</c> is in use. A key in plain text (a <c>&lt;masterKey&gt;</c>
/// and no <c>&lt;encryptedSecret&gt;</c>, as Data Protection writes keys without an encryptor), or
/// one whose secret another decryptor reads (<c>NullXmlDecryptor</c> reads it in plain text too),
/// has a secret anyone who could write the repository may know: it was planted, or it dates from
/// before <c>ProtectKeysWithKms</c>.
/// </summary>
/// <remarks>
/// Looks where Data Protection looks: the one element inside the key's first <c>&lt;descriptor&gt;</c>,
/// which the key manager decrypts (every <c>&lt;encryptedSecret&gt;</c> in it, by the
/// <c>decryptorType</c> each names) before handing it to the descriptor's deserializer. It must hold
/// at least one <c>&lt;encryptedSecret&gt;</c>, each naming <see cref="KmsXmlDecryptor"/>, and no
/// secret outside them — no <c>&lt;masterKey&gt;</c> (the built-in deserializers read the first one,
/// so one put before the encrypted secret would be used in its place) and no element marked
/// <c>requiresEncryption</c>. Whether the KMS then decrypts the entry is <see cref="KmsXmlDecryptor"/>'s
/// affair; other elements (<c>&lt;revocation&gt;</c>) are not keys.
/// </remarks>
internal static class KeySecretCheck
{
    private static readonly XNamespace DataProtection = "http://schemas.asp.net/2015/03/dataProtection";
    private static readonly XName KeyElement = "key";
    private static readonly XName IdAttribute = "id";
    private static readonly XName DescriptorElement = "descriptor";
    private static readonly XName EncryptedSecretElement = DataProtection + "encryptedSecret";
    private static readonly XName DecryptorTypeAttribute = "decryptorType";
    private static readonly XName RequiresEncryptionAttribute = DataProtection + "requiresEncryption";
    private static readonly XName MasterKeyElement = "masterKey";

    /// <summary>Whether <paramref name="element"/> is a key (rather than a revocation or anything else).</summary>
    public static bool IsKey(XElement element) => element.Name == KeyElement;

    /// <summary>The key's id as the repository states it, for messages: its canonical form, or the text escaped when it is no id.</summary>
    public static string KeyIdOf(XElement key) =>
        Guid.TryParse((string?)key.Attribute(IdAttribute), out var id) ? id.ToString("D") : $"'{KmsErrors.Printable((string?)key.Attribute(IdAttribute))}' (not a key id)";

    /// <summary>Why the secret of <paramref name="key"/> is not KMS-encrypted; null: it is. Never says anything of the secret.</summary>
    public static string? WhyNotKmsEncrypted(XElement key)
    {
        var descriptor = key.Element(DescriptorElement);
        if (descriptor is null)
        {
            return "it has no <descriptor>";
        }

        var inner = descriptor.Elements().ToList();
        if (inner.Count != 1)
        {
            return $"its <descriptor> holds {inner.Count} elements where Data Protection reads one";
        }

        var secrets = inner[0].DescendantsAndSelf(EncryptedSecretElement).ToList();
        if (secrets.Count == 0)
        {
            return "its secret is in plain text (no <encryptedSecret>): written without ProtectKeysWithKms, before it was turned on or by someone who could write the repository";
        }

        foreach (var secret in secrets)
        {
            var decryptor = (string?)secret.Attribute(DecryptorTypeAttribute);
            if (!IsKmsDecryptor(decryptor))
            {
                return $"its secret is read by the decryptor '{KmsErrors.Printable(decryptor)}', not by {typeof(KmsXmlDecryptor).FullName}";
            }
        }

        var outside = inner[0].DescendantsAndSelf().Where(e => !e.AncestorsAndSelf(EncryptedSecretElement).Any()).ToList();
        if (outside.Any(e => e.Name == MasterKeyElement))
        {
            return "it holds a <masterKey> in plain text next to its encrypted secret";
        }

        if (outside.Any(e => e.Attribute(RequiresEncryptionAttribute) is not null))
        {
            return "it holds an element marked requiresEncryption in plain text next to its encrypted secret";
        }

        return null;
    }

    // As Data Protection writes it (the type's assembly-qualified name), whatever the assembly's
    // version: the type's full name, then its assembly's simple name.
    private static bool IsKmsDecryptor(string? decryptorType)
    {
        if (decryptorType is null)
        {
            return false;
        }

        var parts = decryptorType.Split(',');
        return parts.Length >= 2
            && parts[0].Trim() == typeof(KmsXmlDecryptor).FullName
            && parts[1].Trim() == typeof(KmsXmlDecryptor).Assembly.GetName().Name;
    }
}
