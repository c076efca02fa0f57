using Net.Pkcs11Interop.Common;
using Net.Pkcs11Interop.HighLevelAPI;

namespace Kms.Hsm;

/// <summary>
/// <c>C_GetSlotList</c> as PKCS#11 says to call it: Pkcs11Interop asks for the count, then the
/// list, and a token initialised in between (another thread of this process, e.g. a ceremony or a
/// test creating its token) makes the second call answer CKR_BUFFER_TOO_SMALL. That means "ask
/// again", not a failure.
/// </summary>
internal static class SlotList
{
    private const int Attempts = 10;

    public static List<ISlot> WithTokenPresent(IPkcs11Library library)
    {
        for (var attempt = 1; ; attempt++)
        {
            try
            {
                return library.GetSlotList(SlotsType.WithTokenPresent);
            }
            catch (Pkcs11Exception e) when (e.RV == CKR.CKR_BUFFER_TOO_SMALL && attempt < Attempts)
            {
                // The slot list grew between the two calls: read it again.
            }
        }
    }
}
