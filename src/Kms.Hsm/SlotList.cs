using Net.Pkcs11Interop.Common;
using Net.Pkcs11Interop.HighLevelAPI;

namespace Kms.Hsm;

/// <summary>
/// <c>C_GetSlotList</c> and the search for a token by label, as an HSM shared with other users
/// needs them.
/// <list type="bullet">
/// <item>Pkcs11Interop asks for the slot count, then the list; a token initialised in between
/// (another thread of this process, e.g. a ceremony or a test creating its token) makes the second
/// call answer CKR_BUFFER_TOO_SMALL. That means "ask again", not a failure.</item>
/// <item><c>C_GetTokenInfo</c> of a slot whose token is being initialised, or whose files are
/// damaged, answers CKR_GENERAL_ERROR on SoftHSM (seen when tests create tokens in parallel;
/// reproduced in SlotListTests by damaging a token's file). Another user's token in that
/// state must not stop this one from being found: the search skips unreadable slots, reads the
/// list again a few times when the label is not among the readable ones, and names the
/// unreadable slots when it gives up.</item>
/// </list>
/// </summary>
internal static class SlotList
{
    private const int Attempts = 10;
    private const int SearchAttempts = 5;

    // One C_GetSlotList at a time in this process. SoftHSM's asks for the count insert a fresh
    // empty slot when every slot holds an initialised token; two at once insert the same slot id
    // and the library aborts the process (SlotManager.cpp: Assertion `result.second' failed —
    // seen in CI when tests created tokens in parallel).
    private static readonly Lock ListLock = new();

    public static List<ISlot> WithTokenPresent(IPkcs11Library library)
    {
        for (var attempt = 1; ; attempt++)
        {
            try
            {
                lock (ListLock)
                {
                    return library.GetSlotList(SlotsType.WithTokenPresent);
                }
            }
            catch (Pkcs11Exception e) when (e.RV == CKR.CKR_BUFFER_TOO_SMALL && attempt < Attempts)
            {
                // The slot list grew between the two calls: read it again.
            }
        }
    }

    /// <summary>Every slot with a token, and its token information or why it could not be read.</summary>
    public static List<SlotToken> ReadTokens(IPkcs11Library library)
    {
        var tokens = new List<SlotToken>();
        foreach (var slot in WithTokenPresent(library))
        {
            try
            {
                tokens.Add(new SlotToken(slot, slot.GetTokenInfo(), null));
            }
            catch (Pkcs11Exception e) when (!Pkcs11Errors.IsDeviceLost(e))
            {
                // A lost device is the caller's to handle (the adapter's recovery re-initialises
                // the module on it); anything else is this one token's trouble.
                tokens.Add(new SlotToken(slot, null, e.RV));
            }
        }

        return tokens;
    }

    /// <summary>
    /// The one slot whose token is labelled <paramref name="label"/>, with its information.
    /// Labels are compared among the slots that can be read; a label also held by an unreadable
    /// slot cannot be seen (refusing whenever any slot is unreadable would let one damaged token
    /// block every user of the HSM).
    /// </summary>
    /// <remarks>Runs inside the module gate: its retries (at most ~300 ms, only while a slot is
    /// unreadable and the label not found) hold other callers of the module that long.</remarks>
    /// <exception cref="HsmConfigurationException">No such token (naming any unreadable slots), or more than one.</exception>
    public static SlotToken FindToken(IPkcs11Library library, string label, string modulePath)
    {
        for (var attempt = 1; ; attempt++)
        {
            var tokens = ReadTokens(library);
            var matches = tokens.Where(t => t.Info?.Label == label).ToList();
            if (matches.Count == 1)
            {
                return matches[0];
            }

            if (matches.Count > 1)
            {
                throw new HsmConfigurationException($"{matches.Count} tokens are labelled '{label}'; labels must be unique") { Failure = HsmFailure.TokenNotFound };
            }

            var unreadable = tokens.Where(t => t.Info is null).ToList();
            if (unreadable.Count == 0 || attempt == SearchAttempts)
            {
                var why = unreadable.Count == 0
                    ? ""
                    : "; slots that could not be read: " + string.Join(", ", unreadable.Select(t => $"{t.Slot.SlotId} ({t.Error})"));
                throw new HsmConfigurationException($"no token labelled '{label}' in {modulePath}{why}") { Failure = HsmFailure.TokenNotFound };
            }

            // The token may be the one being written at this moment: read the list again.
            Thread.Sleep(20 * attempt);
        }
    }
}

/// <summary>A slot with a token: its information, or the PKCS#11 error that reading it returned.</summary>
internal readonly record struct SlotToken(ISlot Slot, ITokenInfo? Info, CKR? Error);
