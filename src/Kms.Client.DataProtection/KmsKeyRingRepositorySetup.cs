using Microsoft.AspNetCore.DataProtection.KeyManagement;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;

namespace Kms.Client.DataProtection;

/// <summary>
/// Wraps the key ring's repository in <see cref="KmsKeyRingRepository"/> once every other
/// configuration has run (<c>PersistKeysTo…</c> may come before or after <c>ProtectKeysWithKms</c>).
/// Without a configured repository (Data Protection's fallback, chosen inside its key manager)
/// there is nothing to wrap, and <see cref="KmsXmlEncryptor"/> refuses to write.
/// </summary>
internal sealed class KmsKeyRingRepositorySetup(KmsKeyRingProtection protection, ILogger logger) : IPostConfigureOptions<KeyManagementOptions>
{
    public void PostConfigure(string? name, KeyManagementOptions options)
    {
        if (options.XmlEncryptor is KmsXmlEncryptor && options.XmlRepository is { } repository and not KmsKeyRingRepository)
        {
            options.XmlRepository = KmsKeyRingRepository.Wrap(repository, protection, logger);
        }
    }
}
