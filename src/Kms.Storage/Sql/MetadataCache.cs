using System.Collections.Concurrent;
using System.Diagnostics;

namespace Kms.Storage;

/// <summary>
/// The hot path's metadata reads remembered between calls: bounded, and forgotten wholesale
/// whenever anything is written (a generation counter, so a read that raced a write is never
/// remembered), and not used at all unless the change feed has confirmed coherence recently.
/// </summary>
/// <remarks>
/// Entries hold what the database holds (key and version state, wrapped material): nothing that
/// is not already in the process's memory for the duration of a call. Forgetting drops the
/// references; destroyed material therefore leaves the cache with the write that destroys it.
/// </remarks>
internal sealed class MetadataCache(int capacity)
{
    private readonly ConcurrentDictionary<object, Entry> _entries = new();
    private long _generation;
    private long _coherentUntil; // Stopwatch timestamp; 0: never confirmed, so never used

    /// <summary>Hits and misses since start (benchmarks, tests).</summary>
    public long Hits;

    /// <inheritdoc cref="Hits" />
    public long Misses;

    /// <summary>The generation a read must capture before it asks the database.</summary>
    public long Generation => Volatile.Read(ref _generation);

    public int Count => _entries.Count;

    public bool Enabled => capacity > 0;

    public bool TryGet<T>(object key, out T value)
        where T : class
    {
        if (capacity > 0
            && Stopwatch.GetTimestamp() < Volatile.Read(ref _coherentUntil)
            && _entries.TryGetValue(key, out var entry)
            && entry.Generation == Volatile.Read(ref _generation))
        {
            Interlocked.Increment(ref Hits);
            value = (T)entry.Value;
            return true;
        }

        Interlocked.Increment(ref Misses);
        value = null!;
        return false;
    }

    /// <summary>Remembers <paramref name="value"/>, read from the database after <paramref name="generation"/> was captured, unless a write came in between.</summary>
    public void Add(object key, object value, long generation)
    {
        if (capacity <= 0 || generation != Volatile.Read(ref _generation))
        {
            return;
        }

        if (_entries.Count >= capacity)
        {
            // Full: drop about a tenth, in no particular order (hot entries come straight back).
            var drop = Math.Max(1, capacity / 10);
            foreach (var old in _entries.Keys)
            {
                _entries.TryRemove(old, out _);
                if (--drop == 0)
                {
                    break;
                }
            }
        }

        _entries[key] = new Entry(value, generation);
    }

    /// <summary>Something was written: nothing remembered before it is used again.</summary>
    public void Invalidate()
    {
        Interlocked.Increment(ref _generation);
        _entries.Clear();
    }

    public void Confirm(TimeSpan validFor)
    {
        var until = Stopwatch.GetTimestamp() + (long)(validFor.TotalSeconds * Stopwatch.Frequency);
        long current;
        do
        {
            current = Volatile.Read(ref _coherentUntil);
            if (current >= until)
            {
                return;
            }
        }
        while (Interlocked.CompareExchange(ref _coherentUntil, until, current) != current);
    }

    private sealed record Entry(object Value, long Generation);
}
