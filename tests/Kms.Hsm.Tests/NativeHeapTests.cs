using System.Runtime.InteropServices;

namespace Kms.Hsm.Tests;

/// <summary>
/// A recycle's <c>C_Finalize</c> frees SoftHSM's objects in bulk, and glibc keeps freed memory
/// resident for reuse unless the heap is trimmed (<see cref="NativeHeap"/>).
/// </summary>
public sealed class NativeHeapTests
{
    [Fact]
    public void MemoryFreedInBulk_StaysResident_UntilTrimmed()
    {
        Assert.True(OperatingSystem.IsLinux(), "the server's C heap is glibc's: these tests run on Linux");

        // 64 MiB in small blocks, written so they are resident, then freed — except the last block,
        // which keeps the freed ones below the top of the heap, where free() alone never returns them.
        const int Count = 256 * 1024, Size = 256;
        var blocks = new nint[Count];
        var fill = Enumerable.Repeat((byte)0x5A, Size).ToArray();
        for (var i = 0; i < Count; i++)
        {
            blocks[i] = Marshal.AllocHGlobal(Size); // malloc on Unix
            Marshal.Copy(fill, 0, blocks[i], Size);
        }

        var before = ResidentKiB();
        for (var i = 0; i < Count - 1; i++)
        {
            Marshal.FreeHGlobal(blocks[i]);
        }

        var freed = ResidentKiB();
        Assert.True(NativeHeap.Trim(), "malloc_trim returned nothing");
        var trimmed = ResidentKiB();
        Marshal.FreeHGlobal(blocks[^1]);

        Assert.True(before - freed < 16 * 1024, $"free() alone returned {(before - freed) / 1024} MiB");
        Assert.True(freed - trimmed > 48 * 1024, $"the trim returned {(freed - trimmed) / 1024} MiB of 64 freed (RSS {before / 1024} → {freed / 1024} → {trimmed / 1024} MiB)");
    }

    private static long ResidentKiB() =>
        long.Parse(File.ReadLines("/proc/self/status").First(l => l.StartsWith("VmRSS:", StringComparison.Ordinal)).Split(' ', StringSplitOptions.RemoveEmptyEntries)[1], System.Globalization.CultureInfo.InvariantCulture);
}
