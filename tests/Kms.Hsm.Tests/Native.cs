using Net.Pkcs11Interop.HighLevelAPI;

namespace Kms.Hsm.Tests;

/// <summary>
/// Passes a template to a PKCS#11 call and keeps it alive until the call returns, then frees
/// it. Pkcs11Interop frees attribute memory in finalizers; an inline template can be
/// collected mid-call in a Release build (see GcPressureTests).
/// </summary>
internal static class Native
{
    public static T With<T>(List<IObjectAttribute> template, Func<List<IObjectAttribute>, T> call)
    {
        try
        {
            return call(template);
        }
        finally
        {
            foreach (var attribute in template)
            {
                attribute.Dispose();
            }
        }
    }

    public static void With(List<IObjectAttribute> template, Action<List<IObjectAttribute>> call) =>
        With(template, t =>
        {
            call(t);
            return 0;
        });
}
