using Kms.Client;
using Kms.Client.DataProtection;
using Microsoft.AspNetCore.DataProtection.KeyManagement;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.DependencyInjection.Extensions;
using Microsoft.Extensions.Options;

namespace Microsoft.AspNetCore.DataProtection;

/// <summary>Protects the Data Protection key ring at rest with a KMS key.</summary>
public static class DataProtectionBuilderKmsExtensions
{
    /// <summary>
    /// Encrypts every new key ring entry through KMS Encrypt under <paramref name="keyName"/>
    /// (a key or an alias: <c>tenants/{t}/keys/{k}</c>), with the <see cref="KmsClient"/>
    /// registered by <c>services.AddKmsClient(...)</c>, and decrypts entries through KMS Decrypt.
    /// </summary>
    /// <remarks>
    /// Protects the key ring where it is stored (the repository: a directory, a database, …):
    /// the files hold ciphertexts the KMS decrypts only for callers the key's policy allows,
    /// under this application's encryption context (<see cref="KmsDataProtectionOptions"/>).
    /// It does not protect the keys once loaded into the application's memory. Entries
    /// written before this call (unencrypted, or by another encryptor) are still read as they are.
    /// </remarks>
    /// <exception cref="ArgumentException"><paramref name="keyName"/> is empty.</exception>
    public static IDataProtectionBuilder ProtectKeysWithKms(this IDataProtectionBuilder builder, string keyName, Action<KmsDataProtectionOptions>? configure = null) =>
        Register(builder, keyName, configure, null);

    /// <summary>
    /// Like <see cref="ProtectKeysWithKms(IDataProtectionBuilder, string, Action{KmsDataProtectionOptions}?)"/>,
    /// through <paramref name="client"/> rather than the container's client (the caller keeps
    /// it alive as long as the container and disposes it).
    /// </summary>
    /// <exception cref="ArgumentException"><paramref name="keyName"/> is empty.</exception>
    public static IDataProtectionBuilder ProtectKeysWithKms(this IDataProtectionBuilder builder, KmsClient client, string keyName, Action<KmsDataProtectionOptions>? configure = null)
    {
        ArgumentNullException.ThrowIfNull(client);
        return Register(builder, keyName, configure, client);
    }

    private static IDataProtectionBuilder Register(IDataProtectionBuilder builder, string keyName, Action<KmsDataProtectionOptions>? configure, KmsClient? client)
    {
        ArgumentNullException.ThrowIfNull(builder);
        ArgumentException.ThrowIfNullOrWhiteSpace(keyName);
        var options = new KmsDataProtectionOptions();
        configure?.Invoke(options);

        // One registration per container: the decryptor, created by type name, finds it there.
        builder.Services.RemoveAll<KmsKeyRingProtection>();
        builder.Services.AddSingleton(new KmsKeyRingProtection(keyName, options, client));

        // As the framework's ProtectKeysWith* do: the encryptor goes into KeyManagementOptions,
        // the decryptor's type into each EncryptedXmlInfo it returns.
        builder.Services.AddSingleton<IConfigureOptions<KeyManagementOptions>>(services =>
            new ConfigureOptions<KeyManagementOptions>(o => o.XmlEncryptor = new KmsXmlEncryptor(services)));
        return builder;
    }
}
