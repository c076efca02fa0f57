using System.Globalization;
using System.Security.Cryptography;
using System.Text;
using Grpc.Core;
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
    private readonly List<CryptographicException> _unanswered = [];

    /// <summary>The value of the context's <c>purpose</c> entry: this use of a KMS key, and no other.</summary>
    internal const string Purpose = "aspnetcore-dataprotection";

    /// <summary>What a container that never named the application is told, at startup (under a host) or at the first use of Data Protection.</summary>
    internal const string UnnamedMessage =
        "ProtectKeysWithKms binds the key ring to this application's name, and none was set: call SetApplicationName(\"...\") on the Data Protection builder, "
        + "or set KmsDataProtectionOptions.ApplicationName: ProtectKeysWithKms(keyName, o => o.ApplicationName = \"...\"). Data Protection's default name (under a host, the content root path, "
        + "the same /app in every container) is shared by other applications, which could then decrypt this one's key ring";

    public string KeyName { get; } = keyName;

    /// <summary>The KMS keys whose entries are read: the configured key (what its alias names) and <see cref="KmsDataProtectionOptions.AdditionalDecryptionKeys"/>.</summary>
    /// <exception cref="ArgumentException">(At construction.) A name is not a key's, or the configured one not an alias's either.</exception>
    public KmsDecryptionKeys DecryptionKeys { get; } = KmsDecryptionKeys.Of(keyName, options.AdditionalDecryptionKeys);

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

    /// <summary>
    /// The application name bound into the context: <see cref="KmsDataProtectionOptions.ApplicationName"/>,
    /// else Data Protection's application discriminator if it was set explicitly; null when neither was.
    /// </summary>
    /// <remarks>
    /// Data Protection gives <see cref="DataProtectionOptions.ApplicationDiscriminator"/> its
    /// default from the container's <c>IApplicationDiscriminator</c> (what
    /// <see cref="DataProtectionUtilityExtensions.GetApplicationUniqueIdentifier"/> returns: under
    /// a host, the content root path), and <c>SetApplicationName</c> overwrites it afterwards. A
    /// discriminator equal to that default (but for a trailing path separator) is taken as not
    /// set, even when someone set it to that value: it is the name every application at that
    /// content root gets.
    /// </remarks>
    public string? ApplicationName(DataProtectionOptions dataProtection, IServiceProvider services)
    {
        if (options.ApplicationName is { } named)
        {
            return named;
        }

        var configured = dataProtection.ApplicationDiscriminator;
        if (string.IsNullOrWhiteSpace(configured) || string.Equals(AsPath(configured), AsPath(services.GetApplicationUniqueIdentifier()), StringComparison.Ordinal))
        {
            return null;
        }

        return configured;
    }

    // Data Protection has both trimmed and added the content root's trailing separator across
    // versions (10 adds it): "/app" and "/app/" are the same default.
    private static string? AsPath(string? discriminator) =>
        discriminator?.Trim().TrimEnd(Path.DirectorySeparatorChar, Path.AltDirectorySeparatorChar);

    /// <summary>Why this container's application name cannot be bound into the context; null: it can.</summary>
    public string? NameProblem(DataProtectionOptions dataProtection, IServiceProvider services)
    {
        var application = ApplicationName(dataProtection, services);
        if (application is null)
        {
            return UnnamedMessage;
        }

        var bytes = Encoding.UTF8.GetByteCount(application);
        return bytes > Limits.MaxContextValueBytes
            ? string.Create(CultureInfo.InvariantCulture, $"the Data Protection application name is {bytes} UTF-8 bytes; an encryption-context value holds at most {Limits.MaxContextValueBytes}: set a shorter one with SetApplicationName(...) or KmsDataProtectionOptions.ApplicationName")
            : null;
    }

    /// <summary>
    /// The encryption context of a key ring entry of this application: bound to the Data
    /// Protection key <paramref name="binding"/> (format version 3 when it states the descriptor,
    /// 2 when not), or, null, to the application only (version 1, as entries were written before).
    /// </summary>
    /// <exception cref="InvalidOperationException">The application was not named explicitly, or its name is longer than a context value may be.</exception>
    /// <exception cref="OptionsValidationException">The same, found by the options validation ProtectKeysWithKms registers.</exception>
    public IReadOnlyDictionary<string, string> EncryptionContext(IServiceProvider services, KeyRingEntryBinding? binding)
    {
        var dataProtection = services.GetService<IOptions<DataProtectionOptions>>()?.Value ?? new DataProtectionOptions();
        var problem = NameProblem(dataProtection, services);
        if (problem is not null)
        {
            throw new InvalidOperationException(problem);
        }

        var context = new Dictionary<string, string>(StringComparer.Ordinal) { ["purpose"] = Purpose, ["application"] = ApplicationName(dataProtection, services)! };
        binding?.AddTo(context);
        return context;
    }

    /// <summary>Whether existing entries are read in format version 1 (<see cref="KmsDataProtectionOptions.ReadUnboundEntries"/>).</summary>
    public bool ReadUnboundEntries => options.ReadUnboundEntries;

    /// <summary>Whether existing entries are read in format version 2 (and 1) (<see cref="KmsDataProtectionOptions.ReadEntriesWithUnboundDescriptor"/>).</summary>
    public bool ReadEntriesWithUnboundDescriptor => options.ReadEntriesWithUnboundDescriptor;

    /// <summary>Whether keys whose secret is not KMS-encrypted are read (<see cref="KmsDataProtectionOptions.ReadUnencryptedKeys"/>).</summary>
    public bool ReadUnencryptedKeys => options.ReadUnencryptedKeys;

    /// <summary>
    /// A key ring refresh begins (the key manager reads the repository): forget the entries the
    /// KMS could not answer for during the previous one.
    /// </summary>
    public void StartRefresh()
    {
        lock (_unanswered)
        {
            _unanswered.Clear();
        }
    }

    /// <summary>
    /// The KMS did not answer for an existing entry (unavailable, out of time, overloaded —
    /// anything but a refusal of the entry or of the caller): until the next refresh,
    /// <see cref="KmsXmlEncryptor"/> writes no new key, which would stand in for one that is
    /// only unreachable.
    /// </summary>
    public void RecordUnanswered(CryptographicException failure)
    {
        lock (_unanswered)
        {
            _unanswered.Add(failure);
        }
    }

    /// <summary>What <see cref="RecordUnanswered"/> recorded since the refresh began (the decryptor's exceptions, naming the key and the status); empty: nothing.</summary>
    public IReadOnlyList<CryptographicException> Unanswered()
    {
        lock (_unanswered)
        {
            return [.. _unanswered];
        }
    }

    /// <summary>
    /// A status that says the KMS did not answer, rather than refused: the entry may well be
    /// readable a moment later. Refusals (<c>InvalidArgument</c> for the ciphertext,
    /// <c>FailedPrecondition</c> for a disabled key, <c>PermissionDenied</c>, …) are final for
    /// that entry, and Data Protection replaces such a key as it always did.
    /// </summary>
    public static bool IsUnanswered(StatusCode status) =>
        status is StatusCode.Unavailable or StatusCode.DeadlineExceeded or StatusCode.ResourceExhausted or StatusCode.Aborted
            or StatusCode.Cancelled or StatusCode.Internal or StatusCode.Unknown;

    /// <summary>
    /// Runs <paramref name="call"/> on the thread pool and waits for it: Data Protection's XML
    /// encryption interfaces are synchronous. The call never resumes on the caller's
    /// SynchronizationContext, so blocking a UI or legacy ASP.NET thread here cannot deadlock.
    /// </summary>
    public static T RunSynchronously<T>(Func<Task<T>> call) => Task.Run(call).GetAwaiter().GetResult();
}
