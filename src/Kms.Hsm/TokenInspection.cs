using Net.Pkcs11Interop.Common;
using Net.Pkcs11Interop.HighLevelAPI;

namespace Kms.Hsm;

/// <summary>What a token is and can do, checked against an HSM profile (<c>hsm-config/profiles</c>).</summary>
/// <param name="Label">The token label.</param>
/// <param name="Manufacturer">The token's manufacturer id.</param>
/// <param name="Model">The token's model.</param>
/// <param name="SerialNumber">The token's serial number.</param>
/// <param name="FirmwareVersion">The token's firmware version.</param>
/// <param name="LibraryDescription">The PKCS#11 library's description and version.</param>
/// <param name="Profile">The profile it was checked against.</param>
/// <param name="Mechanisms">Every mechanism the token lists (CKM names, or hex for vendor ones).</param>
/// <param name="MissingMechanisms">Mechanisms the profile (and the ceremony) need that the token does not list: empty when usable.</param>
/// <param name="UserPinCountLow">The token reports a recent failed user login.</param>
/// <param name="UserPinFinalTry">The next wrong user PIN locks the user PIN.</param>
/// <param name="UserPinLocked">The user PIN is locked.</param>
public sealed record TokenReport(
    string Label,
    string Manufacturer,
    string Model,
    string SerialNumber,
    string FirmwareVersion,
    string LibraryDescription,
    string Profile,
    IReadOnlyList<string> Mechanisms,
    IReadOnlyList<string> MissingMechanisms,
    bool UserPinCountLow,
    bool UserPinFinalTry,
    bool UserPinLocked)
{
    /// <summary>Whether the token has everything the profile and the ceremony need.</summary>
    public bool Usable => MissingMechanisms.Count == 0;
}

/// <summary>Reads a token's identity, flags and mechanisms, without logging in.</summary>
public static class TokenInspection
{
    /// <summary>Mechanisms the ceremony needs besides the profile's: it draws randomness and checks values with AES.</summary>
    public static readonly IReadOnlyList<CKM> CeremonyMechanisms = [CKM.CKM_AES_KEY_WRAP_PAD, CKM.CKM_AES_GCM, CKM.CKM_EC_KEY_PAIR_GEN, CKM.CKM_ECDSA];

    /// <summary>Inspects the token labelled <see cref="HsmOptions.TokenLabel"/>.</summary>
    /// <exception cref="HsmConfigurationException">No such token, or the module refused.</exception>
    public static TokenReport Inspect(HsmOptions options)
    {
        ArgumentNullException.ThrowIfNull(options);
        var profile = HsmProfile.Load(options.Profile);
        var module = Pkcs11Module.Acquire(options.ModulePath, options.ModuleEnvironment);
        try
        {
            return module.Call(library =>
            {
                var found = SlotList.FindToken(library, options.TokenLabel, options.ModulePath);
                var (slot, info) = (found.Slot, found.Info!);
                var libraryInfo = library.GetInfo();
                var mechanisms = slot.GetMechanismList();
                var missing = profile.RequiredMechanismIds.Concat(CeremonyMechanisms).Distinct()
                    .Where(m => !mechanisms.Contains(m)).Select(m => m.ToString()).ToList();
                return new TokenReport(
                    info.Label,
                    info.ManufacturerId,
                    info.Model,
                    info.SerialNumber,
                    info.FirmwareVersion,
                    $"{libraryInfo.LibraryDescription} {libraryInfo.LibraryVersion}",
                    profile.Name,
                    [.. mechanisms.Select(Name).Order(StringComparer.Ordinal)],
                    missing,
                    info.TokenFlags.UserPinCountLow,
                    info.TokenFlags.UserPinFinalTry,
                    info.TokenFlags.UserPinLocked);
            });
        }
        catch (Pkcs11Exception e)
        {
            throw new HsmConfigurationException($"inspecting token '{options.TokenLabel}' failed: {e.Method} returned {e.RV}", e);
        }
        finally
        {
            module.Release();
        }
    }

    private static string Name(CKM mechanism) =>
        Enum.IsDefined(mechanism) ? mechanism.ToString() : $"0x{(ulong)mechanism:X8}";
}
