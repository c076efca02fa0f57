using Kms.Testing;
using Net.Pkcs11Interop.Common;
using Net.Pkcs11Interop.HighLevelAPI;

namespace Kms.Hsm.Tests;

/// <summary>A logged-in session on a test token without the adapter: to plant objects before it starts.</summary>
internal static class RawToken
{
    public static void WithSession(TestToken token, Action<ISession, Pkcs11InteropFactories> action)
    {
        var module = Pkcs11Module.Acquire(SoftHsm.ModulePath, SoftHsm.ModuleEnvironment);
        try
        {
            module.Call(library =>
            {
                var slot = SlotList.FindToken(library, token.Label, SoftHsm.ModulePath).Slot;
                using var session = slot.OpenSession(SessionType.ReadWrite);
                try
                {
                    session.Login(CKU.CKU_USER, token.UserPin);
                }
                catch (Pkcs11Exception e) when (e.RV == CKR.CKR_USER_ALREADY_LOGGED_IN)
                {
                    // Login is per process and token.
                }

                action(session, module.Factories);
                return 0;
            });
        }
        finally
        {
            module.Release();
        }
    }
}
