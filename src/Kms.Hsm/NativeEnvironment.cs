using System.Runtime.InteropServices;

namespace Kms.Hsm;

/// <summary>
/// Sets process environment variables where native code sees them. On Unix,
/// <see cref="Environment.SetEnvironmentVariable(string, string)"/> changes only .NET's own
/// copy, and a PKCS#11 module reads its configuration with <c>getenv</c>
/// (e.g. SoftHSM's <c>SOFTHSM2_CONF</c>).
/// </summary>
internal static partial class NativeEnvironment
{
    public static void Set(string name, string value)
    {
        Environment.SetEnvironmentVariable(name, value);
        if (!OperatingSystem.IsWindows() && SetEnv(name, value, 1) != 0)
        {
            throw new HsmConfigurationException($"setenv({name}) failed: errno {Marshal.GetLastPInvokeError()}");
        }
    }

    [LibraryImport("libc", EntryPoint = "setenv", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static partial int SetEnv(string name, string value, int overwrite);
}
