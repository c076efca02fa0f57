using System.Runtime.InteropServices;

namespace Kms.Hsm;

/// <summary>
/// Gives memory the C heap holds free back to the system. glibc keeps what is freed in its
/// arenas for reuse; after a recycle's <c>C_Finalize</c> has freed SoftHSM's objects in bulk,
/// that is 100–250 MiB of resident memory nobody uses (docs/benchmarks.md, "Zipf with the
/// server in a process of its own"). <c>malloc_trim(0)</c> returns it. Under jemalloc (what
/// <c>./dev.sh</c> and the container image preload) it trims glibc's own heap, which is then
/// empty: jemalloc returns freed pages by itself after <c>dirty_decay_ms</c>.
/// </summary>
internal static partial class NativeHeap
{
    /// <summary>Trims the C heap; false where there is nothing to call (not glibc) or nothing was returned.</summary>
    public static bool Trim()
    {
        if (!OperatingSystem.IsLinux())
        {
            return false;
        }

        try
        {
            return MallocTrim(0) != 0;
        }
        catch (Exception e) when (e is EntryPointNotFoundException or DllNotFoundException)
        {
            return false; // musl (Alpine) has no malloc_trim
        }
    }

    [LibraryImport("libc", EntryPoint = "malloc_trim")]
    private static partial int MallocTrim(nuint pad);
}
