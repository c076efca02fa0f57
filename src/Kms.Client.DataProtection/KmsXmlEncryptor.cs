using System.Globalization;
using System.Security.Cryptography;
using System.Text;
using System.Xml;
using System.Xml.Linq;
using Grpc.Core;
using Kms.Core;
using Kms.Core.Errors;
using Microsoft.AspNetCore.DataProtection.XmlEncryption;

namespace Kms.Client.DataProtection;

/// <summary>
/// Encrypts Data Protection key ring entries through the KMS: the serialized key element is
/// sent to KMS Encrypt under the configured key, bound by an encryption context to this use
/// and this application (<see cref="KmsDataProtectionOptions"/>), and stored as the ciphertext
/// (base64) with the key's name for people reading the file. Registered by
/// <c>ProtectKeysWithKms</c>; <see cref="KmsXmlDecryptor"/> reads what it writes.
/// </summary>
/// <remarks>
/// <para>
/// Synchronous, as <see cref="IXmlEncryptor"/> is: the KMS call runs on the thread pool
/// (<c>Task.Run(...).GetAwaiter().GetResult()</c>) and the calling thread waits, so a caller
/// under a SynchronizationContext does not deadlock. Its deadline is the client's
/// <see cref="KmsClientOptions.CallTimeout"/>.
/// </para>
/// <para>
/// The element is serialized (UTF-8) into one pinned buffer that is zeroed once the call
/// returns; an element larger than KMS Encrypt takes (<see cref="Limits.MaxEncryptPlaintextBytes"/>)
/// is refused before any call. What .NET keeps elsewhere — the element's strings, the XML
/// writer's internal buffer, the gRPC request buffers — is not zeroed.
/// </para>
/// </remarks>
public sealed class KmsXmlEncryptor : IXmlEncryptor
{
    private readonly IServiceProvider _services;
    private readonly KmsKeyRingProtection _protection;

    /// <summary>An encryptor using the <c>ProtectKeysWithKms</c> registration in <paramref name="services"/>.</summary>
    /// <exception cref="InvalidOperationException">The container has no such registration.</exception>
    public KmsXmlEncryptor(IServiceProvider services)
    {
        ArgumentNullException.ThrowIfNull(services);
        _services = services;
        _protection = KmsKeyRingProtection.From(services);
    }

    /// <summary>Encrypts <paramref name="plaintextElement"/> through KMS Encrypt.</summary>
    /// <exception cref="InvalidOperationException">The serialized element is larger than KMS Encrypt takes, or no KmsClient is available.</exception>
    /// <exception cref="CryptographicException">The KMS did not encrypt it; the message says the status.</exception>
    public EncryptedXmlInfo Encrypt(XElement plaintextElement)
    {
        ArgumentNullException.ThrowIfNull(plaintextElement);
        var client = _protection.Client(_services);
        var context = _protection.EncryptionContext(_services);
        EncryptedData encrypted;
        using (var plaintext = Serialize(plaintextElement))
        {
            if (plaintext.Overflowed)
            {
                throw new InvalidOperationException(string.Create(CultureInfo.InvariantCulture, $"the Data Protection key element is {plaintext.Length} bytes serialized; KMS Encrypt takes at most {Limits.MaxEncryptPlaintextBytes}"));
            }

            try
            {
                encrypted = KmsKeyRingProtection.RunSynchronously(() => client.EncryptAsync(_protection.KeyName, plaintext.Written, context));
            }
            catch (RpcException e)
            {
                throw new CryptographicException($"KMS Encrypt of a new Data Protection key under {KmsErrors.Printable(_protection.KeyName)} failed: {e.StatusCode}: {e.Status.Detail}", e);
            }
        }

        var element = new XElement(
            KmsEncryptedKeyFormat.Element,
            new XAttribute(KmsEncryptedKeyFormat.VersionAttribute, KmsEncryptedKeyFormat.Version),
            new XAttribute(KmsEncryptedKeyFormat.KeyAttribute, _protection.KeyName),
            new XAttribute(KmsEncryptedKeyFormat.KeyVersionAttribute, encrypted.KeyVersion),
            new XComment(" Encrypted through the KMS; the names above are for reading only: the ciphertext names its key version. "),
            new XElement(KmsEncryptedKeyFormat.Ciphertext, Convert.ToBase64String(encrypted.Ciphertext)));
        return new EncryptedXmlInfo(element, typeof(KmsXmlDecryptor));
    }

    private static SecretBuffer Serialize(XElement element)
    {
        var buffer = new SecretBuffer(Limits.MaxEncryptPlaintextBytes);
        try
        {
            var settings = new XmlWriterSettings { Encoding = new UTF8Encoding(false), OmitXmlDeclaration = true, CloseOutput = false };
            using (var writer = XmlWriter.Create(buffer, settings))
            {
                element.Save(writer);
            }

            return buffer;
        }
        catch
        {
            buffer.Dispose();
            throw;
        }
    }
}
