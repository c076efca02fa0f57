using System.Collections.Concurrent;
using System.Diagnostics;
using Kms.Core.Caching;

namespace Kms.Storage;

/// <summary>
/// The hot path's metadata reads remembered between calls: bounded, and forgotten wholesale
/// whenever anything is written (a generation counter, so a read that raced a write is never
/// remembered), and not used at all unless the change feed has confirmed coherence recently.
/// </summary>
/// <remarks>
/// <para>Entries hold what the database holds (key and version state, wrapped material): nothing that
/// is not already in the process's memory for the duration of a call. Forgetting drops the
/// references; destroyed material therefore leaves the cache with the write that destroys it.</para>
/// <para>When full, the tenth of the entries asked for least often is dropped. How often is
/// remembered for every key asked for, cached or not, in a small count-min sketch whose counts
/// are halved every forty capacities' worth of lookups (the frequency half of TinyLFU: Einziger,
/// Friedman and Manes, 2017). Under skewed access — a few keys used all the time and most rarely,
/// as with Zipf-distributed traffic — the popular entries stay, where dropping entries in no
/// particular order throws hot ones out with cold ones (docs/benchmarks.md, "Zipf").</para>
/// </remarks>
internal sealed class MetadataCache
{
    private readonly int _capacity;
    private readonly ConcurrentDictionary<object, Entry> _entries = new();
    private readonly FrequencySketch? _frequencies;
    private readonly Lock _evicting = new();
    private (object Key, int Count)[]? _evictionBuffer; // used under _evicting only
    private int _count;
    private long _generation;
    private long _coherentUntil; // Stopwatch timestamp; 0: never confirmed, so never used

    public MetadataCache(int capacity)
    {
        _capacity = capacity;
        _frequencies = capacity > 0 ? new FrequencySketch(capacity) : null;
    }

    /// <summary>Hits and misses since start (benchmarks, tests).</summary>
    public long Hits;

    /// <inheritdoc cref="Hits" />
    public long Misses;

    /// <summary>Of <see cref="Misses"/>, those only because the change feed had not confirmed coherence recently (benchmarks).</summary>
    public long Unconfirmed;

    /// <summary>The generation a read must capture before it asks the database.</summary>
    public long Generation => Volatile.Read(ref _generation);

    public int Count => _entries.Count;

    public bool Enabled => _capacity > 0;

    public bool TryGet<T>(object key, out T value)
        where T : class
    {
        var hash = key.GetHashCode();
        _frequencies?.Increment(hash);
        if (_capacity > 0)
        {
            if (Stopwatch.GetTimestamp() >= Volatile.Read(ref _coherentUntil))
            {
                Interlocked.Increment(ref Unconfirmed);
            }
            else if (_entries.TryGetValue(key, out var entry) && entry.Generation == Volatile.Read(ref _generation))
            {
                Interlocked.Increment(ref Hits);
                value = (T)entry.Value;
                return true;
            }
        }

        Interlocked.Increment(ref Misses);
        value = null!;
        return false;
    }

    /// <summary>Remembers <paramref name="value"/>, read from the database after <paramref name="generation"/> was captured, unless a write came in between.</summary>
    public void Add(object key, object value, long generation)
    {
        if (_capacity <= 0 || generation != Volatile.Read(ref _generation))
        {
            return;
        }

        // ConcurrentDictionary.Count takes every lock of the table (hundreds once it has grown):
        // the cache keeps its own count.
        if (Volatile.Read(ref _count) >= _capacity)
        {
            Evict();
        }

        var entry = new Entry(value, generation, key.GetHashCode());
        if (_entries.TryAdd(key, entry))
        {
            Interlocked.Increment(ref _count);
        }
        else
        {
            _entries[key] = entry;
        }
    }

    /// <summary>Something was written: nothing remembered before it is used again.</summary>
    public void Invalidate()
    {
        Interlocked.Increment(ref _generation);
        _entries.Clear();
        Volatile.Write(ref _count, 0); // an add racing the clear may be miscounted: the count is a bound to evict by, not an invariant
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

    /// <summary>
    /// Drops about a tenth of the entries, those asked for least often first. One pass at a time;
    /// callers that find one running go on (the cache may hold a few more than its capacity for a moment).
    /// </summary>
    private void Evict()
    {
        if (!_evicting.TryEnter())
        {
            return;
        }

        try
        {
            if (Volatile.Read(ref _count) < _capacity)
            {
                return;
            }

            // One pass reads every entry's count into a buffer and a histogram of counts (0 … 15): the
            // threshold is the smallest count at or below which at least a tenth of the entries lie;
            // below it all go, at it as many as still needed.
            var counts = _evictionBuffer ??= new (object Key, int Count)[_capacity + 64];
            Span<int> histogram = stackalloc int[FrequencySketch.MaxCount + 1];
            var n = 0;
            foreach (var (key, entry) in _entries)
            {
                if (n == counts.Length)
                {
                    break;
                }

                var count = _frequencies!.Estimate(entry.Hash);
                counts[n++] = (key, count);
                histogram[count]++;
            }

            var drop = Math.Max(1, _capacity / 10);
            int threshold = 0, below = 0;
            while (threshold < FrequencySketch.MaxCount && below + histogram[threshold] < drop)
            {
                below += histogram[threshold++];
            }

            var atThreshold = drop - below;
            for (var i = 0; i < n; i++)
            {
                var (key, count) = counts[i];
                if ((count < threshold || (count == threshold && atThreshold-- > 0)) && _entries.TryRemove(key, out _))
                {
                    Interlocked.Decrement(ref _count);
                }
            }

            Array.Clear(counts, 0, n);
        }
        finally
        {
            _evicting.Exit();
        }
    }

    private sealed record Entry(object Value, long Generation, int Hash);
}
