using System.Text.Json;
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

    /// <summary>Whether <c>CKA_ALLOWED_MECHANISMS</c> is enforced.</summary>
    public bool AllowedMechanismsAttribute { get; init; }

    /// <summary>Whether <c>CKA_UNWRAP_TEMPLATE</c> is enforced.</summary>
    public bool UnwrapTemplateAttribute { get; init; }

    /// <summary>Generate key versions with <c>CKA_WRAP_WITH_TRUSTED</c> (needs a trusted domain key).</summary>
    public bool WrapWithTrusted { get; init; }

    /// <summary>Return values that mean "authentication tag did not verify" on decryption.</summary>
    public IReadOnlyList<string> DecryptionFailureReturnValues { get; init; } = [];

    /// <summary>Free-form measured facts.</summary>
    public IReadOnlyList<string> Notes { get; init; } = [];

    internal IReadOnlySet<CKR> DecryptionFailures => _decryptionFailures ??= DecryptionFailureReturnValues.Select(Enum.Parse<CKR>).ToHashSet();

    internal IReadOnlyList<CKM> RequiredMechanismIds => RequiredMechanisms.Select(Enum.Parse<CKM>).ToList();

    private IReadOnlySet<CKR>? _decryptionFailures;

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
        }
        catch (ArgumentException e)
        {
            throw new HsmConfigurationException($"HSM profile '{nameOrPath}' names an unknown CKR/CKM constant: {e.Message}", e);
        }

        if (!profile.CheckValueAttribute)
        {
            throw new HsmConfigurationException($"HSM profile '{profile.Name}': the domain key must expose CKA_CHECK_VALUE, it is how the service pins it");
        }

        return profile;
    }
}
