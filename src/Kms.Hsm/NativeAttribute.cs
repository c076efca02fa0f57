using System.Reflection;
using System.Runtime.InteropServices;
using Net.Pkcs11Interop.HighLevelAPI;

namespace Kms.Hsm;

/// <summary>
/// Zeroes the native copy Pkcs11Interop makes of an attribute's value (it frees that memory
/// without zeroing it). Used for the one secret value the service ever hands to the HSM in a
/// template: the ceremony's domain key.
/// </summary>
internal static class NativeAttribute
{
    private static long _zeroed;

    /// <summary>Native values <see cref="Zero"/> has zeroed (for the test that pins the ceremony's import to it).</summary>
    internal static long ZeroedValues => Interlocked.Read(ref _zeroed);

    /// <summary>Zeroes <paramref name="attribute"/>'s native value; dispose it afterwards.</summary>
    /// <exception cref="HsmConfigurationException">This Pkcs11Interop build stores values differently (a test pins the supported one).</exception>
    public static void Zero(IObjectAttribute attribute)
    {
        var field = attribute.GetType().GetField("_ckAttribute", BindingFlags.NonPublic | BindingFlags.Instance)
            ?? throw new HsmConfigurationException($"cannot zero a {attribute.GetType().FullName}: unknown Pkcs11Interop layout");
        var native = field.GetValue(attribute)!;
        var pointer = (IntPtr)native.GetType().GetField("value")!.GetValue(native)!;
        var length = Convert.ToInt64(native.GetType().GetField("valueLen")!.GetValue(native)!, System.Globalization.CultureInfo.InvariantCulture);
        if (pointer != IntPtr.Zero && length > 0)
        {
            Marshal.Copy(new byte[length], 0, pointer, (int)length);
            Interlocked.Increment(ref _zeroed);
        }
    }

    /// <summary>The native value bytes of <paramref name="attribute"/> (for the test that pins <see cref="Zero"/>).</summary>
    internal static byte[] Read(IObjectAttribute attribute)
    {
        var native = attribute.GetType().GetField("_ckAttribute", BindingFlags.NonPublic | BindingFlags.Instance)!.GetValue(attribute)!;
        var pointer = (IntPtr)native.GetType().GetField("value")!.GetValue(native)!;
        var length = Convert.ToInt32(native.GetType().GetField("valueLen")!.GetValue(native)!, System.Globalization.CultureInfo.InvariantCulture);
        var copy = new byte[length];
        Marshal.Copy(pointer, copy, 0, length);
        return copy;
    }
}
