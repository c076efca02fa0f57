using System.Globalization;
using System.Xml;
using System.Xml.Linq;

namespace Kms.Client.DataProtection;

/// <summary>
/// What a key ring entry is bound to besides the application: the Data Protection key it is the
/// secret of — its id and its creation, activation and expiration dates, as the enclosing
/// <c>&lt;key&gt;</c> element states them — in a canonical form (the id lower-case <c>D</c>
/// format, each date as its UTC instant, <c>O</c> format), so that the same key reads the same
/// whatever offset or spelling the repository kept.
/// </summary>
internal sealed record KeyRingEntryBinding(string KeyId, string CreationDate, string ActivationDate, string ExpirationDate)
{
    // The framework's own names in a <key> element.
    private static readonly XName KeyElement = "key";
    private static readonly XName IdAttribute = "id";
    private static readonly XName CreationDateElement = "creationDate";
    private static readonly XName ActivationDateElement = "activationDate";
    private static readonly XName ExpirationDateElement = "expirationDate";

    /// <summary>The binding of a <c>&lt;key&gt;</c> element; null when it is not one, or its id or a date is missing or malformed (the framework then skips the key anyway).</summary>
    public static KeyRingEntryBinding? OfKey(XElement key)
    {
        if (key.Name != KeyElement)
        {
            return null;
        }

        return From(
            (string?)key.Attribute(IdAttribute),
            (string?)key.Element(CreationDateElement),
            (string?)key.Element(ActivationDateElement),
            (string?)key.Element(ExpirationDateElement));
    }

    /// <summary>The binding stated by <paramref name="element"/>'s attributes (<see cref="KmsEncryptedKeyFormat"/>'s names); null when one is missing or malformed.</summary>
    public static KeyRingEntryBinding? OfAttributes(XElement element) =>
        From(
            (string?)element.Attribute(KmsEncryptedKeyFormat.KeyIdAttribute),
            (string?)element.Attribute(KmsEncryptedKeyFormat.CreationDateAttribute),
            (string?)element.Attribute(KmsEncryptedKeyFormat.ActivationDateAttribute),
            (string?)element.Attribute(KmsEncryptedKeyFormat.ExpirationDateAttribute));

    /// <summary>The same binding as attributes, for <see cref="OfAttributes"/> to read back.</summary>
    public IEnumerable<XAttribute> AsAttributes() =>
    [
        new XAttribute(KmsEncryptedKeyFormat.KeyIdAttribute, KeyId),
        new XAttribute(KmsEncryptedKeyFormat.CreationDateAttribute, CreationDate),
        new XAttribute(KmsEncryptedKeyFormat.ActivationDateAttribute, ActivationDate),
        new XAttribute(KmsEncryptedKeyFormat.ExpirationDateAttribute, ExpirationDate),
    ];

    /// <summary>The encryption-context entries that bind a ciphertext to this key.</summary>
    public void AddTo(IDictionary<string, string> context)
    {
        context["dataprotection-key-id"] = KeyId;
        context["dataprotection-key-created"] = CreationDate;
        context["dataprotection-key-activated"] = ActivationDate;
        context["dataprotection-key-expires"] = ExpirationDate;
    }

    /// <summary>For messages: the id and dates (canonical, so safe to print).</summary>
    public override string ToString() => $"{KeyId} (created {CreationDate}, active from {ActivationDate} until {ExpirationDate})";

    private static KeyRingEntryBinding? From(string? id, string? created, string? activated, string? expires)
    {
        if (!Guid.TryParse(id, out var keyId) || Date(created) is not { } creation || Date(activated) is not { } activation || Date(expires) is not { } expiration)
        {
            return null;
        }

        return new KeyRingEntryBinding(keyId.ToString("D"), creation, activation, expiration);
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
