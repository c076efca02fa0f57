using System.Text.Json;
using Kms.Core.Keys;
using Kms.Core.Ports;
using Net.Pkcs11Interop.Common;

namespace Kms.Hsm;

/// <summary>
/// What one HSM model honours and how it fails, as data (hsm-config/profiles/*.json), so a
/// vendor quirk is a profile line rather than a special case in code.
/// </summary>
public sealed class HsmProfile
{
    /// <summary>Profile name.</summary>
    public string Name { get; init; } = "";

    /// <summary>Human description of the HSM this profile was measured on.</summary>
    public string Description { get; init; } = "";

    /// <summary>Mechanisms that must be in the token's mechanism list, or the adapter refuses to start.</summary>
    public IReadOnlyList<string> RequiredMechanisms { get; init; } = [];

    /// <summary>Whether <c>CKA_CHECK_VALUE</c> is readable on AES keys (the domain key's KCV).</summary>
    public bool CheckValueAttribute { get; init; }

    /// <summary>Whether <c>CKA_ALLOWED_MECHANISMS</c> is enforced; a profile without it is refused (every template sets it).</summary>
    public bool AllowedMechanismsAttribute { get; init; }

    /// <summary>Whether <c>CKA_UNWRAP_TEMPLATE</c> is enforced; a profile without it is refused (every template sets it).</summary>
    public bool UnwrapTemplateAttribute { get; init; }

    /// <summary>Generate key versions with <c>CKA_WRAP_WITH_TRUSTED</c> (needs a trusted domain key).</summary>
    public bool WrapWithTrusted { get; init; }

    /// <summary>Return values that mean "authentication tag did not verify" on decryption.</summary>
    public IReadOnlyList<string> DecryptionFailureReturnValues { get; init; } = [];

    /// <summary>
    /// Return values of an RSA-OAEP decryption or unwrap that mean "this ciphertext does not
    /// decrypt under this key" (bad padding, wrong length, value out of range): answered as one
    /// opaque DECRYPTION_FAILED (or, for a BYOK import, INVALID_ARGUMENT), never as a fault.
    /// </summary>
    public IReadOnlyList<string> OaepFailureReturnValues { get; init; } = [];

    /// <summary>
    /// Return values of a KWP unwrap of caller-supplied material (a BYOK import) that mean "this
    /// blob does not unwrap" (integrity check, length, a value that is not a key of the type).
    /// </summary>
    public IReadOnlyList<string> KwpUnwrapFailureReturnValues { get; init; } = [];

    /// <summary>Return values that mean "the key is too short or long for the mechanism" (a BYOK import's secret of the wrong size).</summary>
    public IReadOnlyList<string> KeySizeFailureReturnValues { get; init; } = [];

    /// <summary>
    /// Key algorithms (by their API name, <c>KeyAlgorithmSpec.Name</c>) this HSM cannot hold
    /// versions of, each with the measured reason.
    /// </summary>
    public IReadOnlyDictionary<string, string> UnsupportedAlgorithms { get; init; } = new Dictionary<string, string>();

    /// <summary>BYOK import methods (by <see cref="ImportMethods.Name"/>) this HSM cannot serve, each with the measured reason.</summary>
    public IReadOnlyDictionary<string, string> UnsupportedImportMethods { get; init; } = new Dictionary<string, string>();

    /// <summary>
    /// For an HSM library that keeps something of every destroyed session object until
    /// <c>C_Finalize</c> (SoftHSM: about 250 bytes each, measured by <c>bench hsm-churn</c>): after
    /// this many destroyed objects the adapter re-initialises the module at once, between calls,
    /// which gives it all back. 0: never (an HSM that frees what it destroys).
    /// </summary>
    public int RecycleAfterDestroyedObjects { get; init; }

    /// <summary>Free-form measured facts.</summary>
    public IReadOnlyList<string> Notes { get; init; } = [];

    internal IReadOnlySet<CKR> DecryptionFailures => _decryptionFailures ??= DecryptionFailureReturnValues.Select(Enum.Parse<CKR>).ToHashSet();

    internal IReadOnlyList<CKM> RequiredMechanismIds => RequiredMechanisms.Select(Enum.Parse<CKM>).ToList();

    internal IReadOnlySet<CKR> OaepFailures => _oaepFailures ??= OaepFailureReturnValues.Select(Enum.Parse<CKR>).ToHashSet();

    internal IReadOnlySet<CKR> KwpUnwrapFailures => _kwpUnwrapFailures ??= KwpUnwrapFailureReturnValues.Select(Enum.Parse<CKR>).ToHashSet();

    internal IReadOnlySet<CKR> KeySizeFailures => _keySizeFailures ??= KeySizeFailureReturnValues.Select(Enum.Parse<CKR>).ToHashSet();

    private IReadOnlySet<CKR>? _decryptionFailures;
    private IReadOnlySet<CKR>? _keySizeFailures;
    private IReadOnlySet<CKR>? _oaepFailures;
    private IReadOnlySet<CKR>? _kwpUnwrapFailures;

    /// <summary>Why this HSM cannot hold versions of <paramref name="algorithm"/>, or null.</summary>
    public string? UnsupportedReason(KeyAlgorithm algorithm) => UnsupportedAlgorithms.GetValueOrDefault(KeyAlgorithms.Of(algorithm).Name);

    /// <summary>Why this HSM cannot serve imports with <paramref name="method"/>, or null.</summary>
    public string? UnsupportedReason(ImportMethod method) => UnsupportedImportMethods.GetValueOrDefault(ImportMethods.Name(method));

    private static readonly JsonSerializerOptions JsonOptions = new() { PropertyNameCaseInsensitive = true, ReadCommentHandling = JsonCommentHandling.Skip };

    /// <summary>Loads an embedded profile by name, or a profile file by path.</summary>
    public static HsmProfile Load(string nameOrPath)
    {
        string json;
        if (File.Exists(nameOrPath))
        {
            json = File.ReadAllText(nameOrPath);
        }
        else
        {
            using var stream = typeof(HsmProfile).Assembly.GetManifestResourceStream($"Kms.Hsm.Profiles.{nameOrPath}.json")
                ?? throw new HsmConfigurationException($"no HSM profile '{nameOrPath}' (neither an embedded profile nor a file)");
            using var reader = new StreamReader(stream);
            json = reader.ReadToEnd();
        }

        var profile = JsonSerializer.Deserialize<HsmProfile>(json, JsonOptions)
            ?? throw new HsmConfigurationException($"HSM profile '{nameOrPath}' is empty");
        try
        {
            _ = profile.DecryptionFailures;
            _ = profile.RequiredMechanismIds;
            _ = profile.OaepFailures;
            _ = profile.KwpUnwrapFailures;
            _ = profile.KeySizeFailures;
        }
        catch (ArgumentException e)
        {
            throw new HsmConfigurationException($"HSM profile '{nameOrPath}' names an unknown CKR/CKM constant: {e.Message}", e);
        }

        var algorithms = KeyAlgorithms.All.Select(a => a.Name).ToHashSet(StringComparer.Ordinal);
        if (profile.UnsupportedAlgorithms.Keys.FirstOrDefault(name => !algorithms.Contains(name)) is { } unknownAlgorithm)
        {
            throw new HsmConfigurationException($"HSM profile '{nameOrPath}' lists an unknown key algorithm '{unknownAlgorithm}' (known: {string.Join(", ", algorithms)})");
        }

        var methods = ImportMethods.All.Select(ImportMethods.Name).ToHashSet(StringComparer.Ordinal);
        if (profile.UnsupportedImportMethods.Keys.FirstOrDefault(name => !methods.Contains(name)) is { } unknownMethod)
        {
            throw new HsmConfigurationException($"HSM profile '{nameOrPath}' lists an unknown import method '{unknownMethod}' (known: {string.Join(", ", methods)})");
        }

        if (!profile.CheckValueAttribute)
        {
            throw new HsmConfigurationException($"HSM profile '{profile.Name}': the domain key must expose CKA_CHECK_VALUE, it is how the service pins it");
        }

        // DESIGN's domain-key MUSTs: without them the key would be made, and accepted, without the
        // attributes that stop a PIN holder unwrapping a stored blob as a readable key.
        if (!profile.UnwrapTemplateAttribute || !profile.AllowedMechanismsAttribute)
        {
            throw new HsmConfigurationException(
                $"HSM profile '{profile.Name}': the domain key must carry CKA_UNWRAP_TEMPLATE and CKA_ALLOWED_MECHANISMS (unwrapTemplateAttribute and allowedMechanismsAttribute true); an HSM without them cannot protect stored blobs from a PIN holder");
        }

        return profile;
    }
}
