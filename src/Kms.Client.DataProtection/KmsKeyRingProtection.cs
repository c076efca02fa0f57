using System.Globalization;
using System.Text;
using Kms.Core;
using Microsoft.AspNetCore.DataProtection;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Options;

namespace Kms.Client.DataProtection;

/// <summary>
/// What <c>ProtectKeysWithKms</c> registered: the KMS key that encrypts new key ring entries,
/// the options, and the client (null: the container's, from <c>AddKmsClient</c>). The
/// encryptor and the decryptor both find it in the container.
/// </summary>
internal sealed class KmsKeyRingProtection(string keyName, KmsDataProtectionOptions options, KmsClient? client)
{
    /// <summary>The value of the context's <c>purpose</c> entry: this use of a KMS key, and no other.</summary>
    internal const string Purpose = "aspnetcore-dataprotection";

    public string KeyName { get; } = keyName;

    /// <summary>The registration in <paramref name="services"/>.</summary>
    /// <exception cref="InvalidOperationException">ProtectKeysWithKms was not called on this container.</exception>
    public static KmsKeyRingProtection From(IServiceProvider services) =>
        services.GetService<KmsKeyRingProtection>()
        ?? throw new InvalidOperationException("the Data Protection key ring names the KMS decryptor, but this container has no ProtectKeysWithKms(...) registration: call services.AddDataProtection().ProtectKeysWithKms(keyName)");

    /// <summary>The client given to ProtectKeysWithKms, else the container's.</summary>
    /// <exception cref="InvalidOperationException">Neither: no client was given and none is registered.</exception>
    public KmsClient Client(IServiceProvider services) =>
        client
        ?? services.GetService<KmsClient>()
        ?? throw new InvalidOperationException("ProtectKeysWithKms(keyName) uses the container's KmsClient, and none is registered: call services.AddKmsClient(...) or pass a KmsClient to ProtectKeysWithKms");

    /// <summary>The encryption context of every key ring entry of this application.</summary>
    /// <exception cref="InvalidOperationException">The application name is longer than a context value may be.</exception>
    public IReadOnlyDictionary<string, string> EncryptionContext(IServiceProvider services)
    {
        var application = options.ApplicationName
            ?? services.GetService<IOptions<DataProtectionOptions>>()?.Value.ApplicationDiscriminator;
        if (string.IsNullOrEmpty(application))
        {
            return new Dictionary<string, string>(StringComparer.Ordinal) { ["purpose"] = Purpose };
        }

        var bytes = Encoding.UTF8.GetByteCount(application);
        if (bytes > Limits.MaxContextValueBytes)
        {
            throw new InvalidOperationException(string.Create(CultureInfo.InvariantCulture, $"the Data Protection application name is {bytes} UTF-8 bytes; an encryption-context value holds at most {Limits.MaxContextValueBytes}: set a shorter one with SetApplicationName(...) or KmsDataProtectionOptions.ApplicationName"));
        }

        return new Dictionary<string, string>(StringComparer.Ordinal) { ["purpose"] = Purpose, ["application"] = application };
    }

    /// <summary>
    /// Runs <paramref name="call"/> on the thread pool and waits for it: Data Protection's XML
    /// encryption interfaces are synchronous. The call never resumes on the caller's
    /// SynchronizationContext, so blocking a UI or legacy ASP.NET thread here cannot deadlock.
    /// </summary>
    public static T RunSynchronously<T>(Func<Task<T>> call) => Task.Run(call).GetAwaiter().GetResult();
}
