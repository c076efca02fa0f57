using System.Collections.Concurrent;
using System.Xml.Linq;
using Microsoft.AspNetCore.DataProtection.Repositories;
using Microsoft.Extensions.Logging;

namespace Kms.Client.DataProtection;

/// <summary>
/// The key ring's repository as <c>ProtectKeysWithKms</c> reads it: every <c>kmsEncryptedKey</c>
/// inside a <c>&lt;key&gt;</c> element gets a <c>readUnder</c> child stating that key's id and
/// dates (any the repository held is removed first), which <see cref="KmsXmlDecryptor"/> binds
/// into the encryption context; a <c>&lt;key&gt;</c> whose secret is not KMS-encrypted
/// (<see cref="KeySecretCheck"/>) is dropped, with a warning naming its id and why (once per key id
/// for this repository: the key manager reads the ring at every refresh, and the key stays dropped), unless
/// <see cref="KmsDataProtectionOptions.ReadUnencryptedKeys"/> is set. Writes pass through unchanged.
/// </summary>
/// <remarks>
/// <see cref="Microsoft.AspNetCore.DataProtection.XmlEncryption.IXmlDecryptor.Decrypt"/> receives
/// only the entry, detached from its <c>&lt;key&gt;</c>: the key manager reads the repository
/// here, so this is where the entry can be told which key it stands under. Each read also starts
/// a new key ring refresh for <see cref="KmsKeyRingProtection.StartRefresh"/>. A dropped key is
/// not in the ring at all: Data Protection neither uses it as the default key nor unprotects
/// with it ("the key … was not found in the key ring"), and it never sees its deserializer type.
/// Deletion (<see cref="IDeletableXmlRepository"/>) still sees every element, dropped keys included.
/// </remarks>
internal class KmsKeyRingRepository(IXmlRepository inner, KmsKeyRingProtection protection, ILogger logger) : IXmlRepository
{
    // The ids of the keys already warned about (3008). Grows only with what the repository holds.
    private readonly ConcurrentDictionary<string, bool> _warnedDropped = new(StringComparer.Ordinal);

    public IXmlRepository Inner { get; } = inner;

    /// <summary>Wraps <paramref name="repository"/>, keeping it deletable when it is.</summary>
    public static KmsKeyRingRepository Wrap(IXmlRepository repository, KmsKeyRingProtection protection, ILogger logger) =>
        repository is IDeletableXmlRepository deletable ? new Deletable(deletable, protection, logger) : new KmsKeyRingRepository(repository, protection, logger);

    public IReadOnlyCollection<XElement> GetAllElements()
    {
        protection.StartRefresh();
        return [.. Inner.GetAllElements().Where(Readable).Select(Mark)];
    }

    public void StoreElement(XElement element, string friendlyName) => Inner.StoreElement(element, friendlyName);

    // A key whose secret someone who may write the repository could know is not read, unless the
    // application reads such keys on purpose (moving to ProtectKeysWithKms).
    private bool Readable(XElement element)
    {
        if (!KeySecretCheck.IsKey(element) || protection.ReadUnencryptedKeys || KeySecretCheck.WhyNotKmsEncrypted(element) is not { } reason)
        {
            return true;
        }

        var keyId = KeySecretCheck.KeyIdOf(element);
        if (_warnedDropped.TryAdd(keyId, true))
        {
            DataProtectionLog.UnencryptedKeyDropped(logger, keyId, reason);
        }

        return false;
    }

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

    private sealed class Deletable(IDeletableXmlRepository inner, KmsKeyRingProtection protection, ILogger logger) : KmsKeyRingRepository(inner, protection, logger), IDeletableXmlRepository
    {
        public bool DeleteElements(Action<IReadOnlyCollection<IDeletableElement>> chooseElements) => inner.DeleteElements(chooseElements);
    }
}
