using System.Globalization;
using System.Security.Cryptography;
using System.Text;
using System.Xml;
using System.Xml.Linq;
using Grpc.Core;
using Kms.Core;
using Kms.Core.Errors;
using Microsoft.AspNetCore.DataProtection.KeyManagement;
using Microsoft.AspNetCore.DataProtection.XmlEncryption;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Options;

namespace Kms.Client.DataProtection;

/// <summary>
/// Encrypts Data Protection key ring entries through the KMS: the serialized key element is
/// sent to KMS Encrypt under the configured key, bound by an encryption context to this use
/// and this application (<see cref="KmsDataProtectionOptions"/>) and to the Data Protection key's
/// id, dates and descriptor (learnt from <see cref="KmsKeyCreation"/>), read back through KMS Decrypt (a key
/// this principal could not decrypt is never written), and stored as the ciphertext
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

    /// <summary>Encrypts <paramref name="plaintextElement"/> through KMS Encrypt, bound to the Data Protection key being created.</summary>
    /// <exception cref="InvalidOperationException">
    /// The serialized element is larger than KMS Encrypt takes; no KmsClient is available; the key
    /// ring's repository was not configured (<c>PersistKeysTo…</c>); or the element is not the secret
    /// of a key Data Protection's key manager is creating on this thread.
    /// </exception>
    /// <exception cref="CryptographicException">
    /// The KMS did not encrypt it, or would not decrypt what it encrypted (the principal may
    /// encrypt but not decrypt); or, during this key ring refresh, the KMS did not answer for an
    /// existing entry. The message says the status; no key is written.
    /// </exception>
    public EncryptedXmlInfo Encrypt(XElement plaintextElement)
    {
        ArgumentNullException.ThrowIfNull(plaintextElement);
        var client = _protection.Client(_services);
        using var plaintext = Serialize(plaintextElement);
        if (plaintext.Overflowed)
        {
            throw new InvalidOperationException(string.Create(CultureInfo.InvariantCulture, $"the Data Protection key element is {plaintext.Length} bytes serialized; KMS Encrypt takes at most {Limits.MaxEncryptPlaintextBytes}"));
        }

        // Taken first, so that a refused call leaves no key behind for the next one.
        var binding = KmsKeyCreation.Take(plaintextElement);
        if (_services.GetService<IOptions<KeyManagementOptions>>()?.Value.XmlRepository is not KmsKeyRingRepository)
        {
            throw new InvalidOperationException("ProtectKeysWithKms binds each key ring entry to its key's id and dates, checked as the key ring is read from its repository, and no repository was configured: "
                + "call PersistKeysToFileSystem(...) (or another PersistKeysTo...) on the Data Protection builder");
        }

        if (binding is null)
        {
            throw new InvalidOperationException("KmsXmlEncryptor encrypts only the secret of a key that Data Protection's key manager is creating (it binds the entry to that key's id and dates): "
                + "this element is not one");
        }

        if (Encoding.UTF8.GetByteCount(binding.Descriptor!.DeserializerType) is var typeBytes && typeBytes > Limits.MaxContextValueBytes)
        {
            throw new InvalidOperationException(string.Create(CultureInfo.InvariantCulture, $"the Data Protection key {binding.KeyId}'s descriptor deserializer type is {typeBytes} UTF-8 bytes; an encryption-context value holds at most {Limits.MaxContextValueBytes}"));
        }

        var unanswered = _protection.Unanswered();
        if (unanswered.Count > 0)
        {
            throw new CryptographicException(
                $"not writing the new Data Protection key {binding.KeyId}: during this key ring refresh the KMS did not answer for existing keys, which a new key would stand in for at every refresh until it answers "
                + $"(Data Protection tries again at its next refresh): {string.Join("; ", unanswered.Select(e => e.Message))}",
                unanswered[0]);
        }

        var context = _protection.EncryptionContext(_services, binding);
        EncryptedData encrypted;
        try
        {
            encrypted = KmsKeyRingProtection.RunSynchronously(() => client.EncryptAsync(_protection.KeyName, plaintext.Written, context));
        }
        catch (RpcException e)
        {
            throw new CryptographicException($"KMS Encrypt of a new Data Protection key under {KmsErrors.Printable(_protection.KeyName)} failed: {e.StatusCode}: {e.Status.Detail} (the key {binding.KeyId} is not written)", e);
        }

        ReadBack(client, encrypted, context, plaintext.Written.Span, binding);
        var element = new XElement(
            KmsEncryptedKeyFormat.Element,
            new XAttribute(KmsEncryptedKeyFormat.VersionAttribute, KmsEncryptedKeyFormat.Version),
            new XAttribute(KmsEncryptedKeyFormat.KeyAttribute, _protection.KeyName),
            new XAttribute(KmsEncryptedKeyFormat.KeyVersionAttribute, encrypted.KeyVersion),
            binding.AsAttributes(),
            new XComment(" Encrypted through the KMS, bound to this key's id, dates and descriptor; the KMS key names above are for reading only: the ciphertext names its key version. "),
            new XElement(KmsEncryptedKeyFormat.Ciphertext, Convert.ToBase64String(encrypted.Ciphertext)));
        return new EncryptedXmlInfo(element, typeof(KmsXmlDecryptor));
    }

    // A key this principal cannot decrypt would be unreadable at the next key ring refresh, which
    // would then write another one, and so on at every refresh: refused before it is stored.
    private void ReadBack(KmsClient client, EncryptedData encrypted, IReadOnlyDictionary<string, string> context, ReadOnlySpan<byte> plaintext, KeyRingEntryBinding binding)
    {
        DecryptedData decrypted;
        try
        {
            decrypted = KmsKeyRingProtection.RunSynchronously(() => client.DecryptAsync(encrypted.Ciphertext, context));
        }
        catch (RpcException e)
        {
            throw new CryptographicException($"not writing the new Data Protection key {binding.KeyId}: KMS Encrypt under {KmsErrors.Printable(_protection.KeyName)} succeeded, but KMS Decrypt of the result failed: {e.StatusCode}: {e.Status.Detail}. "
                + "A key this application cannot decrypt would be unreadable at the next key ring refresh, which would write another one; give the application's principal DECRYPT on the key", e);
        }

        using (decrypted)
        {
            if (!CryptographicOperations.FixedTimeEquals(decrypted.Plaintext, plaintext))
            {
                throw new CryptographicException($"not writing the new Data Protection key {binding.KeyId}: KMS Decrypt of what KMS Encrypt returned under {KmsErrors.Printable(_protection.KeyName)} gave other bytes");
            }
        }
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
