namespace Kms.Hsm;

/// <summary>How to reach the HSM. Bound from the <c>Hsm</c> configuration section.</summary>
public sealed class HsmOptions
{
    /// <summary>Path of the PKCS#11 module.</summary>
    public string ModulePath { get; set; } = "/usr/lib/softhsm/libsofthsm2.so";

    /// <summary>
    /// Environment variables the module reads at load (e.g. SoftHSM's <c>SOFTHSM2_CONF</c>),
    /// set natively before it is loaded. The module is loaded once per process: every user
    /// of the same module must agree on them.
    /// </summary>
    public Dictionary<string, string> ModuleEnvironment { get; set; } = [];

    /// <summary>Label of the token to use. Slots are chosen by token label, never by number.</summary>
    public string TokenLabel { get; set; } = "kms";

    /// <summary>The user PIN. Prefer <see cref="PinFile"/>; never logged.</summary>
    public string? Pin { get; set; }

    /// <summary>A file whose first line is the user PIN (mode 0600).</summary>
    public string? PinFile { get; set; }

    /// <summary>Name of an embedded HSM profile (e.g. <c>softhsm2</c>) or a path to a profile JSON file.</summary>
    public string Profile { get; set; } = "softhsm2";

    /// <summary>Logged-in sessions kept open; one operation per session at a time.</summary>
    public int SessionPoolSize { get; set; } = Math.Max(2, Environment.ProcessorCount);

    /// <summary>Most key versions kept unwrapped in the HSM as session objects.</summary>
    public int KeyCacheCapacity { get; set; } = 10_000;

    /// <summary>
    /// Overrides the profile's <see cref="HsmProfile.RecycleAfterDestroyedObjects"/>: re-initialise the
    /// module after this many destroyed session objects (0: never). Each evicted key copy is one.
    /// </summary>
    public int? RecycleAfterDestroyedObjects { get; set; }

    /// <summary>
    /// After a recycle, give the memory the module freed back to the system (<c>malloc_trim</c>
    /// on glibc); without it the C heap keeps it resident for reuse. Off only to measure it.
    /// </summary>
    public bool TrimNativeHeapAfterRecycle { get; set; } = true;

    /// <summary>An unwrapped key version unused for this long is evicted.</summary>
    public TimeSpan KeyCacheIdleTimeout { get; set; } = TimeSpan.FromMinutes(15);

    /// <summary><c>CKA_LABEL</c> of the domain key.</summary>
    public string DomainKeyLabel { get; set; } = "kms-domain-key";

    /// <summary>
    /// <c>CKA_ID</c> of the domain key (UTF-8). The ceremony sets it; dev mode uses
    /// <see cref="DevDomainKeyId"/>, which is refused outside dev mode.
    /// </summary>
    public string? DomainKeyId { get; set; }

    /// <summary>Dev mode: create a domain key in the HSM if none exists. Never in production.</summary>
    public bool DevMode { get; set; }

    /// <summary>How long a recovery after a lost device waits before trying again.</summary>
    public TimeSpan RecoveryBackoff { get; set; } = TimeSpan.FromSeconds(1);

    /// <summary>
    /// How long a caller waits for an HSM operation (a session, a recovery in progress, the
    /// native call) before it answers UNAVAILABLE. A native call cannot be cancelled: one still
    /// running at the deadline is abandoned with its session, and the adapter recovers as from a
    /// lost device. Zero or less: calls run on the caller's thread and are waited for however long.
    /// </summary>
    /// <remarks>Generous by default: an RSA key generation in a slow HSM takes seconds.</remarks>
    public TimeSpan CallTimeout { get; set; } = TimeSpan.FromSeconds(10);

    /// <summary>The <see cref="CallTimeout"/> of an RSA key-pair generation, which takes seconds.</summary>
    public TimeSpan KeyGenerationTimeout { get; set; } = TimeSpan.FromMinutes(2);

    /// <summary>
    /// Data residency: the regions whose domain keys this token also holds (<c>Hsm:Regions:eu:DomainKeyId</c>),
    /// each imported by its own ceremony. Only nodes of a region list it.
    /// </summary>
    public Dictionary<string, HsmRegionOptions> Regions { get; set; } = [];

    // The same token and module under a region's domain key (never the dev key, never created).
    internal HsmOptions ForRegion(string region, HsmRegionOptions options) => new()
    {
        ModulePath = ModulePath,
        ModuleEnvironment = ModuleEnvironment,
        TokenLabel = TokenLabel,
        Pin = Pin,
        PinFile = PinFile,
        Profile = Profile,
        SessionPoolSize = SessionPoolSize,
        KeyCacheCapacity = KeyCacheCapacity,
        RecycleAfterDestroyedObjects = RecycleAfterDestroyedObjects,
        TrimNativeHeapAfterRecycle = TrimNativeHeapAfterRecycle,
        KeyCacheIdleTimeout = KeyCacheIdleTimeout,
        DomainKeyLabel = options.DomainKeyLabel ?? $"kms-domain-key-{region}",
        DomainKeyId = options.DomainKeyId ?? throw new HsmConfigurationException($"Hsm:Regions:{region}:DomainKeyId is required (the region's key ceremony sets it)"),
        DevMode = false,
        RecoveryBackoff = RecoveryBackoff,
        CallTimeout = CallTimeout,
        KeyGenerationTimeout = KeyGenerationTimeout,
    };

    /// <summary>The <c>CKA_ID</c> that marks a dev-mode domain key.</summary>
    public const string DevDomainKeyId = "kms-dev-domain-key";

    internal string EffectiveDomainKeyId => DevMode
        ? DevDomainKeyId
        : DomainKeyId ?? throw new HsmConfigurationException("Hsm:DomainKeyId is required outside dev mode (the key ceremony sets it)");
}

/// <summary>The HSM configuration or token is not usable; the message says what to fix.</summary>
/// <remarks>
/// <see cref="ReturnValue"/> and <see cref="Failure"/> say what an operator needs to decide the
/// next step (the CLI's ceremony commands print them); neither ever holds a PIN, key material or
/// a handle's contents.
/// </remarks>
public sealed class HsmConfigurationException(string message, Exception? inner = null) : Exception(message, inner)
{
    /// <summary>The PKCS#11 return value behind the failure (<c>CKR_PIN_INCORRECT</c>), if the HSM gave one.</summary>
    public string? ReturnValue { get; } = Pkcs11Errors.ReturnValueOf(inner);

    /// <summary>What kind of failure this is, as far as it tells what to do next.</summary>
    public HsmFailure Failure { get; init; } = Pkcs11Errors.FailureOf(inner);
}

/// <summary>The kinds of <see cref="HsmConfigurationException"/> an operator acts on differently.</summary>
public enum HsmFailure
{
    /// <summary>Anything else: the message says what.</summary>
    Other = 0,

    /// <summary>The PKCS#11 module could not be loaded (not a PKCS#11 library, missing, or its initialisation failed).</summary>
    ModuleNotLoaded,

    /// <summary>No token (or more than one) carries the label.</summary>
    TokenNotFound,

    /// <summary>The HSM refused the PIN (wrong, expired or locked): never retried, a real HSM locks it.</summary>
    PinRefused,

    /// <summary>The device, its connection or the library's session state failed (<c>CKR_DEVICE_ERROR</c> and the like).</summary>
    DeviceError,

    /// <summary>The token lacks a mechanism the ceremony or the HSM profile needs.</summary>
    MechanismMissing,

    /// <summary>The HSM refused a key template or an attribute (the HSM profile does not fit this HSM).</summary>
    TemplateRefused,

    /// <summary>The token cannot take a new key: write-protected, or no room left on it.</summary>
    TokenNotWritable,

    /// <summary>The token holds a domain key already (a token holds one).</summary>
    DomainKeyPresent,
}

/// <summary>A residency region's domain key on the node's token (configuration <c>Hsm:Regions:{region}</c>).</summary>
public sealed class HsmRegionOptions
{
    /// <summary>CKA_ID of the region's domain key, as its ceremony imported it.</summary>
    public string? DomainKeyId { get; set; }

    /// <summary>CKA_LABEL of the region's domain key; default <c>kms-domain-key-{region}</c>.</summary>
    public string? DomainKeyLabel { get; set; }
}
