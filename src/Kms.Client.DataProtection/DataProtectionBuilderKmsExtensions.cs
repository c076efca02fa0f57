using Kms.Client;
using Kms.Client.DataProtection;
using Microsoft.AspNetCore.DataProtection.KeyManagement;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.DependencyInjection.Extensions;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;
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
    /// <para>
    /// Protects the key ring where it is stored (the repository: a directory, a database, …):
    /// the files hold ciphertexts the KMS decrypts only for callers the key's policy allows,
    /// under this application's encryption context (<see cref="KmsDataProtectionOptions"/>), and
    /// an entry is read only if the key that decrypted it is <paramref name="keyName"/> (the key
    /// it names, for an alias) or one of <see cref="KmsDataProtectionOptions.AdditionalDecryptionKeys"/>.
    /// It does not protect the keys once loaded into the application's memory. Entries
    /// written before this call (unencrypted, or by another encryptor) are left as they are in
    /// the repository, and not read — a key whose secret is not KMS-encrypted could have been
    /// planted by anyone who may write the repository — unless
    /// <see cref="KmsDataProtectionOptions.ReadUnencryptedKeys"/> is set (while moving an existing
    /// key ring to the KMS, until its old keys expire).
    /// </para>
    /// <para>
    /// The application must be named explicitly — <c>SetApplicationName(...)</c>, or
    /// <see cref="KmsDataProtectionOptions.ApplicationName"/> — or Data Protection is refused
    /// (an <see cref="OptionsValidationException"/> naming <c>SetApplicationName</c>, at host
    /// startup or at its first use): the default name, the content root path, is the same for
    /// every application deployed at the same path, which could decrypt each other's key rings.
    /// </para>
    /// </remarks>
    /// <exception cref="ArgumentException">
    /// <paramref name="keyName"/> is empty or neither a key's nor an alias's name; <see cref="KmsDataProtectionOptions.ApplicationName"/>
    /// is set empty; or <see cref="KmsDataProtectionOptions.AdditionalDecryptionKeys"/> lists a name that is not a key's.
    /// </exception>
    public static IDataProtectionBuilder ProtectKeysWithKms(this IDataProtectionBuilder builder, string keyName, Action<KmsDataProtectionOptions>? configure = null) =>
        Register(builder, keyName, configure, null);

    /// <summary>
    /// Like <see cref="ProtectKeysWithKms(IDataProtectionBuilder, string, Action{KmsDataProtectionOptions}?)"/>,
    /// through <paramref name="client"/> rather than the container's client (the caller keeps
    /// it alive as long as the container and disposes it).
    /// </summary>
    /// <exception cref="ArgumentException">
    /// <paramref name="keyName"/> is empty or neither a key's nor an alias's name; <see cref="KmsDataProtectionOptions.ApplicationName"/>
    /// is set empty; or <see cref="KmsDataProtectionOptions.AdditionalDecryptionKeys"/> lists a name that is not a key's.
    /// </exception>
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
        if (options.ApplicationName is { } name && string.IsNullOrWhiteSpace(name))
        {
            throw new ArgumentException("KmsDataProtectionOptions.ApplicationName is empty: name the application, or leave it null and call SetApplicationName(...)", nameof(configure));
        }

        // One registration per container: the decryptor, created by type name, finds it there.
        var protection = new KmsKeyRingProtection(keyName, options, client);
        builder.Services.RemoveAll<KmsKeyRingProtection>();
        builder.Services.AddSingleton(protection);

        // No explicitly named application, no Data Protection: refused at host startup, or at its first use.
        builder.Services.TryAddEnumerable(ServiceDescriptor.Singleton<IValidateOptions<DataProtectionOptions>, KmsApplicationNameValidation>());
        builder.Services.AddOptions<DataProtectionOptions>().ValidateOnStart();

        // As the framework's ProtectKeysWith* do: the encryptor goes into KeyManagementOptions,
        // the decryptor's type into each EncryptedXmlInfo it returns.
        builder.Services.AddSingleton<IConfigureOptions<KeyManagementOptions>>(services =>
            new ConfigureOptions<KeyManagementOptions>(o => o.XmlEncryptor = new KmsXmlEncryptor(services)));

        // Each entry is bound to its key's id and dates: the encryptor learns them from the key
        // manager's escrow call just before it (it is given only the secret), the decryptor from
        // the repository's <key> the entry stands under (it is given only the entry).
        builder.Services.Configure<KeyManagementOptions>(o =>
        {
            if (!o.KeyEscrowSinks.OfType<KmsKeyCreation>().Any())
            {
                o.KeyEscrowSinks.Add(new KmsKeyCreation());
            }
        });
        builder.Services.AddSingleton<IPostConfigureOptions<KeyManagementOptions>>(services => new KmsKeyRingRepositorySetup(
            KmsKeyRingProtection.From(services),
            services.GetService<ILoggerFactory>()?.CreateLogger("Kms.Client.DataProtection") ?? NullLogger.Instance));
        return builder;
    }
}
