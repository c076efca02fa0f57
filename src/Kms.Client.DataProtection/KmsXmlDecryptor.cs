using System.Globalization;
using System.Security.Cryptography;
using System.Xml;
using System.Xml.Linq;
using Grpc.Core;
using Kms.Core;
using Kms.Core.Errors;
using Kms.Core.Names;
using Microsoft.AspNetCore.DataProtection.XmlEncryption;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;

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
/// policy allows, under the same encryption context it was encrypted with. The key version its
/// answer names must then belong to the configured key (what its alias names now) or to
/// <see cref="KmsDataProtectionOptions.AdditionalDecryptionKeys"/> (<see cref="KmsDecryptionKeys"/>):
/// an entry another KMS key encrypted under this application's context, which the principal may
/// decrypt with, is refused naming both keys (event 3009). Any KMS refusal —
/// a changed ciphertext, another application's entry, a caller without decrypt rights — is a
/// <see cref="CryptographicException"/> carrying the KMS status (for a ciphertext, the one
/// opaque "decryption failed") and nothing of the ciphertext or the key.
/// </para>
/// <para>
/// An entry of format 3 is decrypted under the context of the Data Protection key it stands
/// under in the repository (its <c>readUnder</c>, added by <see cref="KmsKeyRingRepository"/>),
/// which must be the key it was written for: an entry copied under another key id, whose key's
/// dates were changed, or whose key's descriptor got another deserializer type or other algorithm
/// settings, is refused. An entry of format 2 (written before) is bound likewise but for the
/// descriptor, unless <see cref="KmsDataProtectionOptions.ReadEntriesWithUnboundDescriptor"/> is
/// false; one of format 1 is decrypted under the application's context alone, unless
/// <see cref="KmsDataProtectionOptions.ReadUnboundEntries"/> (or the former) is false.
/// Where the KMS did not answer (unavailable, out of time), the failure is recorded so that
/// <see cref="KmsXmlEncryptor"/> writes no key in its place during this key ring refresh.
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

    /// <summary>Decrypts a <c>kmsEncryptedKey</c> element through KMS Decrypt, under the context of the key it was read under.</summary>
    /// <exception cref="CryptographicException">
    /// The element is not one this version reads; it was written for another Data Protection key
    /// than the one it stands under in the repository, or for other dates; it was read outside
    /// the key ring's repository (no <c>readUnder</c>); it is of version 1 and
    /// <see cref="KmsDataProtectionOptions.ReadUnboundEntries"/> is false; the KMS did not
    /// decrypt it; another KMS key than the configured one (or an additional one) decrypted it;
    /// or the configured alias could not be resolved.
    /// </exception>
    /// <exception cref="InvalidOperationException">No KmsClient is available.</exception>
    public XElement Decrypt(XElement encryptedElement)
    {
        ArgumentNullException.ThrowIfNull(encryptedElement);
        var (ciphertext, binding) = Read(encryptedElement);
        var client = _protection.Client(_services);
        var context = _protection.EncryptionContext(_services, binding);
        DecryptedData decrypted;
        try
        {
            decrypted = KmsKeyRingProtection.RunSynchronously(() => client.DecryptAsync(ciphertext, context));
        }
        catch (RpcException e)
        {
            // The key name is the file's word, untrusted: escaped, and only to help a person.
            var named = KmsErrors.Printable((string?)encryptedElement.Attribute(KmsEncryptedKeyFormat.KeyAttribute));
            var of = Of(binding);
            var failure = new CryptographicException($"the KMS did not decrypt a Data Protection key ring entry ({of}; the file says it was encrypted under '{named}'): {e.StatusCode}: {e.Status.Detail}", e);
            if (KmsKeyRingProtection.IsUnanswered(e.StatusCode))
            {
                _protection.RecordUnanswered(failure);
            }

            throw failure;
        }

        using (decrypted)
        {
            DemandTakenKey(client, context["application"], decrypted.KeyVersion, binding);
            return Parse(decrypted.Plaintext);
        }
    }

    private static string Of(KeyRingEntryBinding? binding) =>
        binding is null ? "format 1, bound to no key" : binding.Descriptor is null ? $"format 2, of key {binding.KeyId}" : $"of key {binding.KeyId}";

    // The KMS decrypts with whichever key version the ciphertext names: an entry another KMS key
    // encrypted under this application's context decrypts as well when the principal may decrypt with
    // that key. Only the configured key's entries (what its alias names) and the additional keys' are read.
    private void DemandTakenKey(KmsClient client, string application, string keyVersion, KeyRingEntryBinding? binding)
    {
        var keys = _protection.DecryptionKeys;
        KeyName decryptedBy;
        try
        {
            decryptedBy = KmsDecryptionKeys.ParseVersion(keyVersion).Key;
        }
        catch (KmsException e)
        {
            throw new CryptographicException($"the KMS decrypted a Data Protection key ring entry ({Of(binding)}) naming '{KmsErrors.Printable(keyVersion)}' as the key version, not a key version name: not read", e);
        }

        if (keys.TakenAsConfigured(decryptedBy))
        {
            return;
        }

        KeyName? target = null;
        if (keys.Configured is KeyReference.ToAlias)
        {
            // A kept resolution may predate a move of the alias: asked again before refusing.
            (target, var kept) = ResolveAlias(client, application, binding, fresh: false);
            if (target == decryptedBy)
            {
                return;
            }

            if (kept)
            {
                (target, _) = ResolveAlias(client, application, binding, fresh: true);
                if (target == decryptedBy)
                {
                    return;
                }
            }
        }

        var taken = keys.Describe(target);
        DataProtectionLog.EntryOfAnotherKmsKeyRefused(Logger(), binding?.KeyId ?? "(format 1, bound to no key)", decryptedBy.ToString(), taken);
        throw new CryptographicException($"a Data Protection key ring entry ({Of(binding)}) was decrypted by KMS key {decryptedBy} (version {keyVersion}), not by {taken}: encrypted under another KMS key, not read. "
            + "Someone with ENCRYPT on that key who may write the repository could have planted it; if the application used that key before (a key switch, an alias moved), list it in KmsDataProtectionOptions.AdditionalDecryptionKeys");
    }

    private (KeyName Key, bool Kept) ResolveAlias(KmsClient client, string application, KeyRingEntryBinding? binding, bool fresh)
    {
        var time = _services.GetService<TimeProvider>() ?? TimeProvider.System;
        try
        {
            return KmsKeyRingProtection.RunSynchronously(() => _protection.DecryptionKeys.AliasTargetAsync(client, time, application, fresh));
        }
        catch (RpcException e)
        {
            var failure = new CryptographicException($"the KMS did not resolve alias {_protection.DecryptionKeys.Configured}, the configured key, to tell whether a Data Protection key ring entry ({Of(binding)}) is of its key: {e.StatusCode}: {e.Status.Detail}", e);
            if (KmsKeyRingProtection.IsUnanswered(e.StatusCode))
            {
                _protection.RecordUnanswered(failure);
            }

            throw failure;
        }
    }

    private ILogger Logger() =>
        _services.GetService<ILoggerFactory>()?.CreateLogger("Kms.Client.DataProtection") ?? NullLogger.Instance;

    // The ciphertext, and the key it is bound to (null: version 1, bound to the application only).
    private (byte[] Ciphertext, KeyRingEntryBinding? Binding) Read(XElement element)
    {
        if (element.Name != KmsEncryptedKeyFormat.Element)
        {
            throw new CryptographicException($"not a KMS-encrypted Data Protection key: the element is <{KmsErrors.Printable(element.Name.ToString())}>, expected <{KmsEncryptedKeyFormat.Element}>");
        }

        var version = (string?)element.Attribute(KmsEncryptedKeyFormat.VersionAttribute);
        if (version == KmsEncryptedKeyFormat.UnboundVersion)
        {
            if (!_protection.ReadUnboundEntries)
            {
                throw new CryptographicException($"a KMS-encrypted Data Protection key of format {KmsEncryptedKeyFormat.UnboundVersion}, bound to no key id or dates, and KmsDataProtectionOptions.ReadUnboundEntries is false");
            }

            if (!_protection.ReadEntriesWithUnboundDescriptor)
            {
                throw new CryptographicException($"a KMS-encrypted Data Protection key of format {KmsEncryptedKeyFormat.UnboundVersion}, bound to no key id, dates or descriptor, and KmsDataProtectionOptions.ReadEntriesWithUnboundDescriptor is false");
            }

            return (ReadCiphertext(element), null);
        }

        var descriptorBound = version == KmsEncryptedKeyFormat.Version;
        if (!descriptorBound && version != KmsEncryptedKeyFormat.DescriptorUnboundVersion)
        {
            throw new CryptographicException($"a KMS-encrypted Data Protection key of format version '{KmsErrors.Printable(version)}', which this version does not read "
                + $"(it reads {KmsEncryptedKeyFormat.UnboundVersion}, {KmsEncryptedKeyFormat.DescriptorUnboundVersion} and {KmsEncryptedKeyFormat.Version})");
        }

        if (!descriptorBound && !_protection.ReadEntriesWithUnboundDescriptor)
        {
            throw new CryptographicException($"a KMS-encrypted Data Protection key of format {KmsEncryptedKeyFormat.DescriptorUnboundVersion}, bound to its key's id and dates but not to its descriptor, and KmsDataProtectionOptions.ReadEntriesWithUnboundDescriptor is false");
        }

        // Where the entry stands (the repository's <key>, told by KmsKeyRingRepository) must be
        // where it was written for (its own attributes); the KMS then checks the latter were the
        // encryptor's, as they are in the ciphertext's context.
        var readUnder = element.Elements(KmsEncryptedKeyFormat.ReadUnder).ToList();
        if (readUnder.Count != 1 || KeyRingEntryBinding.OfAttributes(readUnder[0]) is not { Descriptor: not null } standsUnder)
        {
            throw new CryptographicException("a KMS-encrypted Data Protection key read outside the key ring's repository, or under a <key> without a valid id, dates and descriptor: "
                + "it is bound to the key it stands under, which only the repository that ProtectKeysWithKms wraps can tell");
        }

        var writtenFor = KeyRingEntryBinding.OfAttributes(element);
        if (writtenFor?.WithoutDescriptor() != standsUnder.WithoutDescriptor())
        {
            var written = writtenFor?.ToString() ?? "a key it does not state in full";
            throw new CryptographicException($"a KMS-encrypted Data Protection key ring entry written for key {written} stands under key {standsUnder}: moved or re-dated in the repository, not decrypted");
        }

        if (!descriptorBound)
        {
            return (ReadCiphertext(element), writtenFor);
        }

        // Format 3: the descriptor next to the secret — the type Data Protection instantiates to
        // read the key, and the algorithms it uses the key with — is the one it was written with.
        var standsUnderDescriptor = standsUnder.Descriptor!;
        if (writtenFor!.Descriptor is not { } writtenForDescriptor)
        {
            throw new CryptographicException($"a KMS-encrypted Data Protection key ring entry of format {KmsEncryptedKeyFormat.Version} of key {standsUnder.KeyId} does not state the descriptor it was written for: changed in the repository, not decrypted");
        }

        if (writtenForDescriptor.DeserializerType != standsUnderDescriptor.DeserializerType)
        {
            throw new CryptographicException($"a KMS-encrypted Data Protection key ring entry of key {standsUnder.KeyId} was written for a descriptor read by '{KmsErrors.Printable(writtenForDescriptor.DeserializerType)}' "
                + $"and stands under one read by '{KmsErrors.Printable(standsUnderDescriptor.DeserializerType)}': the descriptor's deserializer type was changed in the repository, not decrypted");
        }

        if (writtenForDescriptor.SettingsDigest != standsUnderDescriptor.SettingsDigest)
        {
            throw new CryptographicException($"a KMS-encrypted Data Protection key ring entry of key {standsUnder.KeyId} was written for descriptor settings {writtenForDescriptor.SettingsDigest} "
                + $"and stands under settings {standsUnderDescriptor.SettingsDigest}: the descriptor's algorithm settings were changed in the repository, not decrypted");
        }

        return (ReadCiphertext(element), standsUnder);
    }

    private static byte[] ReadCiphertext(XElement element)
    {
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
