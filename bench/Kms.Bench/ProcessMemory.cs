using System.Globalization;
using System.Runtime.InteropServices;
using System.Text.Json.Nodes;

namespace Kms.Bench;

/// <summary>
/// Where this process's memory is, for the soaks. RSS alone cannot tell a leak from a heap that
/// stays large after a burst, so <see cref="Settle"/> first collects everything that can be
/// collected and then splits what is left: the managed heap (live objects), glibc's malloc heap
/// (SoftHSM's objects, SQLite's caches, OpenSSL — in use and held free), the runtime's executable
/// double mapping (JIT code), thread count; and finally asks glibc to give its free memory back
/// (<c>malloc_trim</c>) and reads RSS again. A native leak grows "malloc in use"; allocator
/// retention grows "malloc free" and goes away with the trim.
/// </summary>
internal static partial class ProcessMemory
{
    public static double RssMiB() => StatusKiB("VmRSS:") / 1024;

    /// <summary>Collects, measures, trims, measures again; printed and returned for the result file.</summary>
    public static JsonObject Settle(TimeSpan at)
    {
        for (var i = 0; i < 2; i++)
        {
            GC.Collect(GC.MaxGeneration, GCCollectionMode.Aggressive, blocking: true, compacting: true);
            GC.WaitForPendingFinalizers();
        }

        var info = GC.GetGCMemoryInfo(GCKind.FullBlocking);
        var live = info.HeapSizeBytes / 1048576.0;
        var committed = info.TotalCommittedBytes / 1048576.0;
        // Generations 3 and 4 are the large- and pinned-object heaps (Kestrel's buffer pool lives in the latter).
        var large = info.GenerationInfo[3].SizeAfterBytes / 1048576.0;
        var pinned = info.GenerationInfo[4].SizeAfterBytes / 1048576.0;
        var rss = RssMiB();
        var malloc = MallocInfo();
        // Every arena's free memory above the pad goes back to the system (glibc 2.8+ trims all arenas).
        var released = MallocTrim(0) == 1;
        var rssTrimmed = RssMiB();
        // Resident memory by kind: anonymous (heaps, stacks), file-backed (the runtime's and the
        // libraries' code and data as they are touched: bounded by their sizes), shared (the
        // double mapping of JIT'd code is a memfd).
        var anonymous = StatusKiB("RssAnon:") / 1024;
        var fileBacked = StatusKiB("RssFile:") / 1024;
        var shared = StatusKiB("RssShmem:") / 1024;
        var doubleMapped = DoubleMappedMiB();
        var threads = (int)StatusKiB("Threads:");
        Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"settled at {at.TotalSeconds:F0} s: live managed heap {live:F1} MiB (large objects {large:F1}, pinned {pinned:F1}), GC committed {committed:F1} MiB, RSS {rss:F0} MiB, native (RSS − committed) {rss - committed:F0} MiB; " +
            $"malloc in use {malloc.InUse:F1} MiB, free {malloc.Free:F1} MiB (mmapped {malloc.Mapped:F1}); after malloc_trim ({(released ? "released memory" : "nothing to release")}) RSS {rssTrimmed:F0} MiB (anonymous {anonymous:F0}, file-backed {fileBacked:F0}, shared {shared:F0}), native {rssTrimmed - committed:F0} MiB; JIT double mapping {doubleMapped:F1} MiB; {threads} threads"));
        return new JsonObject
        {
            ["at_seconds"] = at.TotalSeconds,
            ["live_heap_mib"] = live,
            ["large_object_heap_mib"] = large,
            ["pinned_object_heap_mib"] = pinned,
            ["gc_committed_mib"] = committed,
            ["rss_mib"] = rss,
            ["native_mib"] = rss - committed,
            ["malloc_in_use_mib"] = malloc.InUse,
            ["malloc_free_mib"] = malloc.Free,
            ["malloc_mmapped_mib"] = malloc.Mapped,
            ["rss_after_trim_mib"] = rssTrimmed,
            ["native_after_trim_mib"] = rssTrimmed - committed,
            ["rss_anonymous_after_trim_mib"] = anonymous,
            ["rss_file_after_trim_mib"] = fileBacked,
            ["rss_shared_after_trim_mib"] = shared,
            ["jit_double_mapping_rss_mib"] = doubleMapped,
            ["threads"] = threads,
        };
    }

    /// <summary>A field of /proc/PID/status (this process's by default), in KiB for memory fields.</summary>
    public static double StatusKiB(string field, string pid = "self")
    {
        foreach (var line in File.ReadLines($"/proc/{pid}/status"))
        {
            if (line.StartsWith(field, StringComparison.Ordinal))
            {
                return double.Parse(line.Split([' ', '\t'], StringSplitOptions.RemoveEmptyEntries)[1], CultureInfo.InvariantCulture);
            }
        }

        return 0;
    }

    /// <summary>Resident memory of the runtime's executable double mapping (<c>/memfd:doublemapper</c>), where JIT'd code lives.</summary>
    private static double DoubleMappedMiB()
    {
        var total = 0.0;
        var inside = false;
        foreach (var line in File.ReadLines("/proc/self/smaps"))
        {
            // A mapping's header starts with its address range ("7f12…-7f13… r-xp …"); its fields are "Name:   value kB".
            var colon = line.IndexOf(':', StringComparison.Ordinal);
            var dash = line.IndexOf('-', StringComparison.Ordinal);
            if (dash > 0 && (colon < 0 || dash < colon))
            {
                inside = line.Contains("doublemapper", StringComparison.Ordinal);
            }
            else if (inside && line.StartsWith("Rss:", StringComparison.Ordinal))
            {
                total += double.Parse(line.Split(' ', StringSplitOptions.RemoveEmptyEntries)[1], CultureInfo.InvariantCulture);
            }
        }

        return total / 1024;
    }

    public static (double InUse, double Free, double Mapped) MallocInfo()
    {
        var m = MallInfo2();
        const double MiB = 1048576.0;
        // arena: bytes taken from the system with brk/mmap for the arenas; uordblks: in use there;
        // fordblks: free there; hblkhd: large blocks mmapped on their own (always in use).
        return ((m.Uordblks + m.Hblkhd) / MiB, m.Fordblks / MiB, m.Hblkhd / MiB);
    }

    [StructLayout(LayoutKind.Sequential)]
    private struct MallInfo2Result
    {
        public nuint Arena;
        public nuint Ordblks;
        public nuint Smblks;
        public nuint Hblks;
        public nuint Hblkhd;
        public nuint Usmblks;
        public nuint Fsmblks;
        public nuint Uordblks;
        public nuint Fordblks;
        public nuint Keepcost;
    }

    // glibc ≥ 2.33 (Debian 12 has 2.36); sums every arena.
    [LibraryImport("libc", EntryPoint = "mallinfo2")]
    private static partial MallInfo2Result MallInfo2();

    [LibraryImport("libc", EntryPoint = "malloc_trim")]
    private static partial int MallocTrim(nuint pad);
}
