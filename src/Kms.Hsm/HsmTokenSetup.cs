using System.Text;
using Net.Pkcs11Interop.Common;

namespace Kms.Hsm;

/// <summary>
/// Initialises a token through PKCS#11 (<c>C_InitToken</c> on a free slot, then
/// <c>C_InitPIN</c> as the security officer): the HSM set-up step of a ceremony, and how
/// tests create tokens inside a process that has already loaded the module (SoftHSM
/// lists only the tokens that existed at <c>C_Initialize</c>, plus the ones created
/// through it).
/// </summary>
public static class HsmTokenSetup
{
    private static readonly Lock InitLock = new();

    /// <summary>Initialises a new token labelled <paramref name="label"/> on the first free slot.</summary>
    /// <exception cref="HsmConfigurationException">The label is taken, no slot is free, or the HSM refused.</exception>
    public static void InitializeToken(string modulePath, string label, string securityOfficerPin, string userPin, IReadOnlyDictionary<string, string>? moduleEnvironment = null)
    {
        ArgumentException.ThrowIfNullOrEmpty(label);
        ArgumentException.ThrowIfNullOrEmpty(securityOfficerPin);
        ArgumentException.ThrowIfNullOrEmpty(userPin);
        var module = Pkcs11Module.Acquire(modulePath, moduleEnvironment);
        try
        {
            // Two initialisations racing for the same free slot would collide: one at a time.
            lock (InitLock)
            {
                module.Call(library =>
                {
                    var tokens = SlotList.ReadTokens(library);
                    if (tokens.Any(t => t.Info?.Label == label))
                    {
                        throw new HsmConfigurationException($"a token labelled '{label}' exists already");
                    }

                    var free = tokens.FirstOrDefault(t => t.Info is { TokenFlags.TokenInitialized: false }).Slot
                        ?? throw new HsmConfigurationException($"no free slot in {modulePath} to initialise token '{label}'");
                    // The string overload pads the label with blanks as PKCS#11 requires; other
                    // tools (pkcs11-tool) compare the blank-padded label.
                    free.InitToken(securityOfficerPin, label);

                    var slot = SlotList.FindToken(library, label, modulePath).Slot;
                    using var session = slot.OpenSession(SessionType.ReadWrite);
                    session.Login(CKU.CKU_SO, Encoding.UTF8.GetBytes(securityOfficerPin));
                    session.InitPin(Encoding.UTF8.GetBytes(userPin));
                    session.Logout();
                    return 0;
                });
            }
        }
        catch (Pkcs11Exception e)
        {
            throw new HsmConfigurationException($"initialising token '{label}' failed: {e.Method} returned {e.RV}", e);
        }
        finally
        {
            module.Release();
        }
    }
    /// <summary>
    /// Wipes the token labelled <paramref name="label"/>: <c>C_InitToken</c> again with its
    /// security-officer PIN, which destroys every object on it and leaves it with no user PIN.
    /// Used at the end of a domain-key rotation (the rotation token held a copy of the old domain
    /// key that can release extractable copies of key versions).
    /// </summary>
    /// <remarks>No session may be open on the token (close the ceremony session first): the HSM
    /// refuses with CKR_SESSION_EXISTS otherwise.</remarks>
    /// <exception cref="HsmConfigurationException">No such token, a wrong SO PIN, open sessions, or the HSM refused.</exception>
    public static void WipeToken(string modulePath, string label, string securityOfficerPin, IReadOnlyDictionary<string, string>? moduleEnvironment = null)
    {
        ArgumentException.ThrowIfNullOrEmpty(label);
        ArgumentException.ThrowIfNullOrEmpty(securityOfficerPin);
        var module = Pkcs11Module.Acquire(modulePath, moduleEnvironment);
        try
        {
            lock (InitLock)
            {
                module.Call(library =>
                {
                    SlotList.FindToken(library, label, modulePath).Slot.InitToken(securityOfficerPin, label);
                    return 0;
                });
            }
        }
        catch (Pkcs11Exception e)
        {
            throw new HsmConfigurationException($"wiping token '{label}' failed: {e.Method} returned {e.RV}", e);
        }
        finally
        {
            module.Release();
        }
    }
}
