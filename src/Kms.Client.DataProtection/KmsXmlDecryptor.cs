using System.Globalization;
using System.Security.Cryptography;
using System.Xml;
using System.Xml.Linq;
using Grpc.Core;
using Kms.Core;
using Kms.Core.Errors;
using Microsoft.AspNetCore.DataProtection.XmlEncryption;

namespace Kms.Client.DataProtection;

/// <summary>
/// Decrypts the key ring entries <see cref="KmsXmlEncryptor"/> wrote, through KMS Decrypt under
/// this application's encryption context. Data Protection creates it by the type name stored
/// in each key file, through the constructor taking the container; the container must have a
/// <c>ProtectKeysWithKms</c> registration (its client, and its application name for the context).
/// </summary>
/// <remarks>
/// <para>
/// The key names in the element are never used but in error messages (escaped): the KMS finds
/// the key version from the ciphertext itself, and decrypts it only for a caller the key's
/// policy allows, under the same encryption context it was encrypted with. Any refusal —
/// a changed ciphertext, another application's entry, a caller without decrypt rights — is a
/// <see cref="CryptographicException"/> carrying the KMS status (for a ciphertext, the one
/// opaque "decryption failed") and nothing of the ciphertext or the key.
/// </para>
/// <para>
/// Synchronous, as <see cref="IXmlDecryptor"/> is: the KMS call runs on the thread pool
/// (<c>Task.Run(...).GetAwaiter().GetResult()</c>) and the calling thread waits, so a caller
/// under a SynchronizationContext does not deadlock. The plaintext is parsed from a pinned copy
/// that is zeroed afterwards, and the response buffer is zeroed too; the returned element's
/// strings, and the XML reader's internal buffer, are not.
/// </para>
/// </remarks>
public sealed class KmsXmlDecryptor : IXmlDecryptor
{
    private readonly IServiceProvider _services;
    private readonly KmsKeyRingProtection _protection;

    /// <summary>A decryptor using the <c>ProtectKeysWithKms</c> registration in <paramref name="services"/> (Data Protection's activator calls this).</summary>
    /// <exception cref="InvalidOperationException">The container has no such registration.</exception>
    public KmsXmlDecryptor(IServiceProvider services)
    {
        ArgumentNullException.ThrowIfNull(services);
        _services = services;
        _protection = KmsKeyRingProtection.From(services);
    }

    /// <summary>Decrypts a <c>kmsEncryptedKey</c> element through KMS Decrypt.</summary>
    /// <exception cref="CryptographicException">The element is not one this version writes, or the KMS did not decrypt it.</exception>
    /// <exception cref="InvalidOperationException">No KmsClient is available.</exception>
    public XElement Decrypt(XElement encryptedElement)
    {
        ArgumentNullException.ThrowIfNull(encryptedElement);
        var ciphertext = ReadCiphertext(encryptedElement);
        var client = _protection.Client(_services);
        var context = _protection.EncryptionContext(_services);
        DecryptedData decrypted;
        try
        {
            decrypted = KmsKeyRingProtection.RunSynchronously(() => client.DecryptAsync(ciphertext, context));
        }
        catch (RpcException e)
        {
            // The key name is the file's word, untrusted: escaped, and only to help a person.
            var named = KmsErrors.Printable((string?)encryptedElement.Attribute(KmsEncryptedKeyFormat.KeyAttribute));
            throw new CryptographicException($"the KMS did not decrypt a Data Protection key ring entry (the file says it was encrypted under '{named}'): {e.StatusCode}: {e.Status.Detail}", e);
        }

        using (decrypted)
        {
            return Parse(decrypted.Plaintext);
        }
    }

    private static byte[] ReadCiphertext(XElement element)
    {
        if (element.Name != KmsEncryptedKeyFormat.Element)
        {
            throw new CryptographicException($"not a KMS-encrypted Data Protection key: the element is <{KmsErrors.Printable(element.Name.ToString())}>, expected <{KmsEncryptedKeyFormat.Element}>");
        }

        var version = (string?)element.Attribute(KmsEncryptedKeyFormat.VersionAttribute);
        if (version != KmsEncryptedKeyFormat.Version)
        {
            throw new CryptographicException($"a KMS-encrypted Data Protection key of format version '{KmsErrors.Printable(version)}', which this version does not read (it reads {KmsEncryptedKeyFormat.Version})");
        }

        var text = (string?)element.Element(KmsEncryptedKeyFormat.Ciphertext)
            ?? throw new CryptographicException($"a KMS-encrypted Data Protection key without its <{KmsEncryptedKeyFormat.Ciphertext}>");
        byte[] ciphertext;
        try
        {
            ciphertext = Convert.FromBase64String(text);
        }
        catch (FormatException e)
        {
            throw new CryptographicException("a KMS-encrypted Data Protection key whose ciphertext is not base64", e);
        }

        if (ciphertext.Length > Limits.MaxCiphertextBytes)
        {
            throw new CryptographicException(string.Create(CultureInfo.InvariantCulture, $"a KMS-encrypted Data Protection key whose ciphertext is {ciphertext.Length} bytes; KMS Decrypt takes at most {Limits.MaxCiphertextBytes}"));
        }

        return ciphertext;
    }

    private static XElement Parse(ReadOnlySpan<byte> plaintext)
    {
        var copy = GC.AllocateUninitializedArray<byte>(plaintext.Length, pinned: true);
        try
        {
            plaintext.CopyTo(copy);
            var settings = new XmlReaderSettings { DtdProcessing = DtdProcessing.Prohibit, XmlResolver = null };
            using var stream = new MemoryStream(copy, writable: false);
            using var reader = XmlReader.Create(stream, settings);
            return XElement.Load(reader);
        }
        catch (XmlException e)
        {
            // Decrypted under this application's context, yet not a key element: the message
            // says where the XML broke, never what it held (the line and position only).
            throw new CryptographicException(string.Create(CultureInfo.InvariantCulture, $"a Data Protection key ring entry decrypted by the KMS is not an XML element (line {e.LineNumber}, position {e.LinePosition})"));
        }
        finally
        {
            CryptographicOperations.ZeroMemory(copy);
        }
    }
}
