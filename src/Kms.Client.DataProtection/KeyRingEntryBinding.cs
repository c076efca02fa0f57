using System.Globalization;
using System.Xml;
using System.Xml.Linq;

namespace Kms.Client.DataProtection;

/// <summary>
/// What a key ring entry is bound to besides the application: the Data Protection key it is the
/// secret of — its id and its creation, activation and expiration dates, as the enclosing
/// <c>&lt;key&gt;</c> element states them — in a canonical form (the id lower-case <c>D</c>
/// format, each date as its UTC instant, <c>O</c> format), so that the same key reads the same
/// whatever offset or spelling the repository kept — and, from format 3 on, its descriptor
/// (<see cref="KeyDescriptorBinding"/>; null: not stated, as in format 2).
/// </summary>
internal sealed record KeyRingEntryBinding(string KeyId, string CreationDate, string ActivationDate, string ExpirationDate, KeyDescriptorBinding? Descriptor)
{
    // The framework's own names in a <key> element.
    private static readonly XName KeyElement = "key";
    private static readonly XName IdAttribute = "id";
    private static readonly XName CreationDateElement = "creationDate";
    private static readonly XName ActivationDateElement = "activationDate";
    private static readonly XName ExpirationDateElement = "expirationDate";

    /// <summary>
    /// The binding of a <c>&lt;key&gt;</c> element, its descriptor included; null when it is not one,
    /// or its id, a date or its descriptor's deserializer type is missing or malformed (the framework
    /// then cannot use the key anyway).
    /// </summary>
    public static KeyRingEntryBinding? OfKey(XElement key)
    {
        if (key.Name != KeyElement || KeyDescriptorBinding.OfKey(key) is not { } descriptor)
        {
            return null;
        }

        return From(
            (string?)key.Attribute(IdAttribute),
            (string?)key.Element(CreationDateElement),
            (string?)key.Element(ActivationDateElement),
            (string?)key.Element(ExpirationDateElement),
            descriptor);
    }

    /// <summary>
    /// The binding stated by <paramref name="element"/>'s attributes (<see cref="KmsEncryptedKeyFormat"/>'s
    /// names); null when the id or a date is missing or malformed. Its <see cref="Descriptor"/> is null
    /// when the descriptor's attributes are missing or malformed.
    /// </summary>
    public static KeyRingEntryBinding? OfAttributes(XElement element) =>
        From(
            (string?)element.Attribute(KmsEncryptedKeyFormat.KeyIdAttribute),
            (string?)element.Attribute(KmsEncryptedKeyFormat.CreationDateAttribute),
            (string?)element.Attribute(KmsEncryptedKeyFormat.ActivationDateAttribute),
            (string?)element.Attribute(KmsEncryptedKeyFormat.ExpirationDateAttribute),
            KeyDescriptorBinding.OfAttributes(element));

    /// <summary>The same binding without its descriptor: what a format 2 entry states.</summary>
    public KeyRingEntryBinding WithoutDescriptor() => this with { Descriptor = null };

    /// <summary>The same binding as attributes, for <see cref="OfAttributes"/> to read back.</summary>
    public IEnumerable<XAttribute> AsAttributes() =>
    [
        new XAttribute(KmsEncryptedKeyFormat.KeyIdAttribute, KeyId),
        new XAttribute(KmsEncryptedKeyFormat.CreationDateAttribute, CreationDate),
        new XAttribute(KmsEncryptedKeyFormat.ActivationDateAttribute, ActivationDate),
        new XAttribute(KmsEncryptedKeyFormat.ExpirationDateAttribute, ExpirationDate),
        .. Descriptor?.AsAttributes() ?? [],
    ];

    /// <summary>The encryption-context entries that bind a ciphertext to this key (and to its descriptor, when stated).</summary>
    public void AddTo(IDictionary<string, string> context)
    {
        context["dataprotection-key-id"] = KeyId;
        context["dataprotection-key-created"] = CreationDate;
        context["dataprotection-key-activated"] = ActivationDate;
        context["dataprotection-key-expires"] = ExpirationDate;
        Descriptor?.AddTo(context);
    }

    /// <summary>For messages: the id and dates (canonical, so safe to print); not the descriptor.</summary>
    public override string ToString() => $"{KeyId} (created {CreationDate}, active from {ActivationDate} until {ExpirationDate})";

    private static KeyRingEntryBinding? From(string? id, string? created, string? activated, string? expires, KeyDescriptorBinding? descriptor)
    {
        if (!Guid.TryParse(id, out var keyId) || Date(created) is not { } creation || Date(activated) is not { } activation || Date(expires) is not { } expiration)
        {
            return null;
        }

        return new KeyRingEntryBinding(keyId.ToString("D"), creation, activation, expiration, descriptor);
    }

    // As the framework reads a date ((DateTimeOffset)element: XmlConvert), as an instant.
    private static string? Date(string? text)
    {
        if (text is null)
        {
            return null;
        }

        try
        {
            return XmlConvert.ToDateTimeOffset(text).UtcDateTime.ToString("O", CultureInfo.InvariantCulture);
        }
        catch (FormatException)
        {
            return null;
        }
    }

}
