using System.Security.Cryptography;
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
        ArgumentException.ThrowIfNullOrEmpty(securityOfficerPin);
        ArgumentException.ThrowIfNullOrEmpty(userPin);
        var so = Encoding.UTF8.GetBytes(securityOfficerPin);
        var user = Encoding.UTF8.GetBytes(userPin);
        try
        {
            InitializeToken(modulePath, label, so, user, moduleEnvironment);
        }
        finally
        {
            CryptographicOperations.ZeroMemory(so);
            CryptographicOperations.ZeroMemory(user);
        }
    }

    /// <summary>
    /// Initialises a new token labelled <paramref name="label"/> on the first free slot, with the
    /// PINs as UTF-8 bytes (the caller's to zero; no copy of them is left behind).
    /// </summary>
    /// <exception cref="HsmConfigurationException">The label is taken, no slot is free, or the HSM refused.</exception>
    public static void InitializeToken(string modulePath, string label, ReadOnlySpan<byte> securityOfficerPin, ReadOnlySpan<byte> userPin, IReadOnlyDictionary<string, string>? moduleEnvironment = null)
    {
        ArgumentException.ThrowIfNullOrEmpty(label);
        if (securityOfficerPin.IsEmpty || userPin.IsEmpty)
        {
            throw new ArgumentException("a PIN is empty");
        }

        var paddedLabel = PaddedLabel(label);
        // Pkcs11Interop takes byte[]: pinned copies, zeroed below.
        // The module first: a module that cannot be loaded throws before any copy of a PIN exists
        // (a copy made before it was left unzeroed by that throw).
        var module = Pkcs11Module.Acquire(modulePath, moduleEnvironment);
        var so = PinnedCopy(securityOfficerPin);
        var user = PinnedCopy(userPin);
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
                    // The label padded with blanks as PKCS#11 requires; other tools (pkcs11-tool)
                    // compare the blank-padded label.
                    free.InitToken(so, paddedLabel);

                    var slot = SlotList.FindToken(library, label, modulePath).Slot;
                    using var session = slot.OpenSession(SessionType.ReadWrite);
                    session.Login(CKU.CKU_SO, so);
                    session.InitPin(user);
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
            CryptographicOperations.ZeroMemory(so);
            CryptographicOperations.ZeroMemory(user);
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
        ArgumentException.ThrowIfNullOrEmpty(securityOfficerPin);
        var so = Encoding.UTF8.GetBytes(securityOfficerPin);
        try
        {
            WipeToken(modulePath, label, so, moduleEnvironment);
        }
        finally
        {
            CryptographicOperations.ZeroMemory(so);
        }
    }

    /// <summary>
    /// Wipes the token labelled <paramref name="label"/> as <see cref="WipeToken(string, string, string, IReadOnlyDictionary{string, string}?)"/>
    /// does, with the security-officer PIN as UTF-8 bytes (the caller's to zero; no copy of it is left behind).
    /// </summary>
    /// <exception cref="HsmConfigurationException">No such token, a wrong SO PIN, open sessions, or the HSM refused.</exception>
    public static void WipeToken(string modulePath, string label, ReadOnlySpan<byte> securityOfficerPin, IReadOnlyDictionary<string, string>? moduleEnvironment = null)
    {
        ArgumentException.ThrowIfNullOrEmpty(label);
        if (securityOfficerPin.IsEmpty)
        {
            throw new ArgumentException("the security officer PIN is empty", nameof(securityOfficerPin));
        }

        var paddedLabel = PaddedLabel(label);
        var module = Pkcs11Module.Acquire(modulePath, moduleEnvironment); // before the PIN's copy, as above
        var so = PinnedCopy(securityOfficerPin);
        try
        {
            lock (InitLock)
            {
                module.Call(library =>
                {
                    SlotList.FindToken(library, label, modulePath).Slot.InitToken(so, paddedLabel);
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
            CryptographicOperations.ZeroMemory(so);
            module.Release();
        }
    }

    /// <summary>
    /// Checks the security-officer PIN of the token labelled <paramref name="label"/> without
    /// changing anything: a session of its own, <c>C_Login</c> as the SO, <c>C_Logout</c>, closed.
    /// A ceremony that presents the SO PIN late (the wipe at the end of a domain-key rotation) runs
    /// this first, so a mistyped PIN is refused while nothing has moved.
    /// </summary>
    /// <param name="modulePath">The PKCS#11 module.</param>
    /// <param name="label">The token's label.</param>
    /// <param name="securityOfficerPin">The SO PIN as UTF-8 bytes (the caller's to zero; no copy of it is left behind).</param>
    /// <param name="moduleEnvironment">What the module reads at load (SoftHSM's <c>SOFTHSM2_CONF</c>).</param>
    /// <remarks>
    /// PKCS#11 keeps one login state per application and token: the SO cannot log in while a
    /// session of this process is logged in to the token as its user
    /// (<c>CKR_USER_ANOTHER_ALREADY_LOGGED_IN</c>). Call it with no session of this process open on
    /// the token. A refused PIN is never retried (a real HSM counts it towards its lock-out).
    /// </remarks>
    /// <exception cref="HsmConfigurationException">
    /// No such token; the PIN refused (<see cref="HsmFailure.PinRefused"/>); a user session of this
    /// process logged in to the token; or the HSM refused.
    /// </exception>
    public static void CheckSecurityOfficerPin(string modulePath, string label, ReadOnlySpan<byte> securityOfficerPin, IReadOnlyDictionary<string, string>? moduleEnvironment = null)
    {
        ArgumentException.ThrowIfNullOrEmpty(label);
        if (securityOfficerPin.IsEmpty)
        {
            throw new ArgumentException("the security officer PIN is empty", nameof(securityOfficerPin));
        }

        var module = Pkcs11Module.Acquire(modulePath, moduleEnvironment); // before the PIN's copy, as above
        var so = PinnedCopy(securityOfficerPin);
        try
        {
            module.Call(library =>
            {
                using var session = SlotList.FindToken(library, label, modulePath).Slot.OpenSession(SessionType.ReadWrite);
                try
                {
                    session.Login(CKU.CKU_SO, so);
                }
                catch (Pkcs11Exception e) when (Pkcs11Errors.IsPinRefused(e))
                {
                    throw new HsmConfigurationException($"the HSM refused the security-officer PIN of token '{label}' ({e.RV})", e);
                }

                session.Logout();
                return 0;
            });
        }
        catch (Pkcs11Exception e)
        {
            throw new HsmConfigurationException($"checking the security-officer PIN of token '{label}' failed: {e.Method} returned {e.RV}", e);
        }
        finally
        {
            CryptographicOperations.ZeroMemory(so);
            module.Release();
        }
    }

    // CKA_LABEL of a token: 32 bytes of UTF-8, padded with blanks.
    private static byte[] PaddedLabel(string label)
    {
        var padded = new byte[32];
        padded.AsSpan().Fill((byte)' ');
        if (Encoding.UTF8.GetByteCount(label) > padded.Length)
        {
            throw new HsmConfigurationException($"a token label is at most {padded.Length} bytes of UTF-8; '{label}' is longer");
        }

        Encoding.UTF8.GetBytes(label, padded);
        return padded;
    }

    private static byte[] PinnedCopy(ReadOnlySpan<byte> pin)
    {
        var copy = GC.AllocateUninitializedArray<byte>(pin.Length, pinned: true);
        pin.CopyTo(copy);
        return copy;
    }
}
