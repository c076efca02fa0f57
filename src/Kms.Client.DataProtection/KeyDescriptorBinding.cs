using System.Globalization;
using System.Security.Cryptography;
using System.Text;
using System.Xml.Linq;

namespace Kms.Client.DataProtection;

/// <summary>
/// What a key ring entry of format 3 is bound to in its key's <c>&lt;descriptor&gt;</c>: the
/// <c>deserializerType</c> Data Protection instantiates to read the key (as written), and a
/// SHA-256 digest of the descriptor's settings — the algorithms and every other attribute, element
/// and text in it, with each secret (<c>&lt;masterKey&gt;</c> as the key manager builds it, the
/// <c>&lt;encryptedSecret&gt;</c> standing in for it in the repository) counted as one placeholder
/// at its place. The digest is over a canonical form (names with their namespace, attributes sorted,
/// lengths prefixed; comments, namespace declarations and whitespace-only text left out), so the same
/// descriptor digests the same whatever prefixes, attribute order or indentation the repository kept.
/// </summary>
internal sealed record KeyDescriptorBinding(string DeserializerType, string SettingsDigest)
{
    private static readonly XNamespace DataProtection = "http://schemas.asp.net/2015/03/dataProtection";
    private static readonly XName DescriptorElement = "descriptor";
    private static readonly XName DeserializerTypeAttribute = "deserializerType";
    private static readonly XName EncryptedSecretElement = DataProtection + "encryptedSecret";
    private static readonly XName RequiresEncryptionAttribute = DataProtection + "requiresEncryption";
    private const string DigestPrefix = "sha256:";
    private static readonly System.Buffers.SearchValues<char> LowerHex = System.Buffers.SearchValues.Create("0123456789abcdef");

    /// <summary>The binding of <paramref name="key"/>'s first <c>&lt;descriptor&gt;</c> (the one Data Protection reads); null when it has none, or none with a deserializer type.</summary>
    public static KeyDescriptorBinding? OfKey(XElement key)
    {
        var descriptor = key.Element(DescriptorElement);
        if ((string?)descriptor?.Attribute(DeserializerTypeAttribute) is not { } deserializer)
        {
            return null;
        }

        using var hash = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        Write(hash, descriptor!, outermost: true);
        return new KeyDescriptorBinding(deserializer, DigestPrefix + Convert.ToHexStringLower(hash.GetHashAndReset()));
    }

    /// <summary>The binding stated by <paramref name="element"/>'s attributes (<see cref="KmsEncryptedKeyFormat"/>'s names); null when one is missing or the digest is malformed.</summary>
    public static KeyDescriptorBinding? OfAttributes(XElement element)
    {
        var deserializer = (string?)element.Attribute(KmsEncryptedKeyFormat.DeserializerTypeAttribute);
        var digest = (string?)element.Attribute(KmsEncryptedKeyFormat.DescriptorAttribute);
        if (deserializer is null || digest is null || digest.Length != DigestPrefix.Length + 64 || !digest.StartsWith(DigestPrefix, StringComparison.Ordinal)
            || digest.AsSpan(DigestPrefix.Length).ContainsAnyExcept(LowerHex))
        {
            return null;
        }

        return new KeyDescriptorBinding(deserializer, digest);
    }

    /// <summary>The same binding as attributes, for <see cref="OfAttributes"/> to read back.</summary>
    public IEnumerable<XAttribute> AsAttributes() =>
    [
        new XAttribute(KmsEncryptedKeyFormat.DeserializerTypeAttribute, DeserializerType),
        new XAttribute(KmsEncryptedKeyFormat.DescriptorAttribute, SettingsDigest),
    ];

    /// <summary>The encryption-context entries that bind a ciphertext to this descriptor.</summary>
    public void AddTo(IDictionary<string, string> context)
    {
        context["dataprotection-key-deserializer"] = DeserializerType;
        context["dataprotection-key-descriptor"] = SettingsDigest;
    }

    // E ns name n (ns name value)* children e; T text; S a secret. Every string length-prefixed.
    private static void Write(IncrementalHash hash, XElement element, bool outermost)
    {
        if (element.Name == EncryptedSecretElement || RequiresEncryption(element))
        {
            Token(hash, "S");
            return;
        }

        Token(hash, "E");
        String(hash, element.Name.NamespaceName);
        String(hash, element.Name.LocalName);
        var attributes = element.Attributes()
            .Where(a => !a.IsNamespaceDeclaration && !(outermost && a.Name == DeserializerTypeAttribute))
            .OrderBy(a => a.Name.NamespaceName, StringComparer.Ordinal)
            .ThenBy(a => a.Name.LocalName, StringComparer.Ordinal)
            .ToList();
        String(hash, attributes.Count.ToString(CultureInfo.InvariantCulture));
        foreach (var attribute in attributes)
        {
            String(hash, attribute.Name.NamespaceName);
            String(hash, attribute.Name.LocalName);
            String(hash, attribute.Value);
        }

        foreach (var node in element.Nodes())
        {
            if (node is XElement child)
            {
                Write(hash, child, outermost: false);
            }
            else if (node is XText text && !string.IsNullOrWhiteSpace(text.Value))
            {
                Token(hash, "T");
                String(hash, text.Value);
            }
        }

        Token(hash, "e");
    }

    // As Data Protection marks an element to encrypt: requiresEncryption="true" in its namespace.
    private static bool RequiresEncryption(XElement element) =>
        (string?)element.Attribute(RequiresEncryptionAttribute) is { } value
        && (value.Trim().Equals("true", StringComparison.OrdinalIgnoreCase) || value.Trim() == "1");

    private static void Token(IncrementalHash hash, string token) => hash.AppendData(Encoding.ASCII.GetBytes(token));

    private static void String(IncrementalHash hash, string value)
    {
        var bytes = Encoding.UTF8.GetBytes(value);
        Span<byte> length = stackalloc byte[4];
        System.Buffers.Binary.BinaryPrimitives.WriteInt32BigEndian(length, bytes.Length);
        hash.AppendData(length);
        hash.AppendData(bytes);
    }
}
