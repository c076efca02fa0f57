using System.Xml.Linq;
using Microsoft.AspNetCore.DataProtection.Repositories;

namespace Kms.Client.DataProtection;

/// <summary>
/// The key ring's repository as <c>ProtectKeysWithKms</c> reads it: every <c>kmsEncryptedKey</c>
/// inside a <c>&lt;key&gt;</c> element gets a <c>readUnder</c> child stating that key's id and
/// dates (any the repository held is removed first), which <see cref="KmsXmlDecryptor"/> binds
/// into the encryption context. Writes pass through unchanged.
/// </summary>
/// <remarks>
/// <see cref="Microsoft.AspNetCore.DataProtection.XmlEncryption.IXmlDecryptor.Decrypt"/> receives
/// only the entry, detached from its <c>&lt;key&gt;</c>: the key manager reads the repository
/// here, so this is where the entry can be told which key it stands under. Each read also starts
/// a new key ring refresh for <see cref="KmsKeyRingProtection.StartRefresh"/>.
/// </remarks>
internal class KmsKeyRingRepository(IXmlRepository inner, KmsKeyRingProtection protection) : IXmlRepository
{
    public IXmlRepository Inner { get; } = inner;

    /// <summary>Wraps <paramref name="repository"/>, keeping it deletable when it is.</summary>
    public static KmsKeyRingRepository Wrap(IXmlRepository repository, KmsKeyRingProtection protection) =>
        repository is IDeletableXmlRepository deletable ? new Deletable(deletable, protection) : new KmsKeyRingRepository(repository, protection);

    public IReadOnlyCollection<XElement> GetAllElements()
    {
        protection.StartRefresh();
        return [.. Inner.GetAllElements().Select(Mark)];
    }

    public void StoreElement(XElement element, string friendlyName) => Inner.StoreElement(element, friendlyName);

    private static XElement Mark(XElement element)
    {
        if (!element.Descendants(KmsEncryptedKeyFormat.Element).Any())
        {
            return element;
        }

        var marked = new XElement(element);
        var binding = KeyRingEntryBinding.OfKey(marked);
        foreach (var entry in marked.Descendants(KmsEncryptedKeyFormat.Element).ToList())
        {
            entry.Elements(KmsEncryptedKeyFormat.ReadUnder).Remove();
            if (binding is not null)
            {
                entry.Add(new XElement(KmsEncryptedKeyFormat.ReadUnder, binding.AsAttributes()));
            }
        }

        return marked;
    }

    private sealed class Deletable(IDeletableXmlRepository inner, KmsKeyRingProtection protection) : KmsKeyRingRepository(inner, protection), IDeletableXmlRepository
    {
        public bool DeleteElements(Action<IReadOnlyCollection<IDeletableElement>> chooseElements) => inner.DeleteElements(chooseElements);
    }
}
