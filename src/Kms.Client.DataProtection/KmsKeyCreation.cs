using System.Xml.Linq;
using Microsoft.AspNetCore.DataProtection.KeyManagement;

namespace Kms.Client.DataProtection;

/// <summary>
/// Tells <see cref="KmsXmlEncryptor"/> which Data Protection key it is encrypting the secret of.
/// </summary>
/// <remarks>
/// <see cref="Microsoft.AspNetCore.DataProtection.XmlEncryption.IXmlEncryptor.Encrypt"/> receives
/// only a copy of the secret element (<c>&lt;masterKey&gt;</c>), alone in a document of its own:
/// the <c>&lt;key&gt;</c> with the id and dates is out of its reach. The key manager hands the
/// whole <c>&lt;key&gt;</c> to the key escrow sinks just before, on the same thread
/// (<c>XmlKeyManager.CreateNewKey</c>: escrow, then encrypt, then store), so this sink keeps it
/// for the thread's next <see cref="Take"/>; nothing is written anywhere. The encryptor binds
/// the entry to that key only when the element it is given is one of that key's elements to
/// encrypt, and refuses otherwise.
/// </remarks>
internal sealed class KmsKeyCreation : IKeyEscrowSink
{
    [ThreadStatic]
    private static XElement? t_creating;

    public void Store(Guid keyId, XElement element) => t_creating = element;

    /// <summary>The binding of the key being created on this thread whose secret <paramref name="secret"/> is; null when there is none. Forgets the key either way.</summary>
    public static KeyRingEntryBinding? Take(XElement secret)
    {
        var creating = t_creating;
        t_creating = null;
        if (creating is null || !creating.Descendants(secret.Name).Any(candidate => XNode.DeepEquals(candidate, secret)))
        {
            return null;
        }

        return KeyRingEntryBinding.OfKey(creating);
    }
}
