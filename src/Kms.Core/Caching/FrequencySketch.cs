using System.Numerics;

namespace Kms.Core.Caching;

/// <summary>
/// How often each key was asked for, approximately, for a bounded cache deciding what to keep: a
/// count-min sketch of four rows of counters up to 15, a key's estimate the smallest of its four
/// (never below its true count, until halved); every count halved after forty capacities' worth of
/// increments, so past popularity fades (the frequency half of TinyLFU: Einziger, Friedman and
/// Manes, 2017). It remembers keys that are not cached too, which is what lets a cache tell a
/// popular key from one asked for once. Updates are not atomic: a lost increment costs
/// precision, nothing else.
/// </summary>
public sealed class FrequencySketch
{
    /// <summary>The largest count kept.</summary>
    public const int MaxCount = 15;
    private const int Rows = 4;
    private static readonly uint[] Seeds = [0x9E3779B9, 0x85EBCA6B, 0xC2B2AE35, 0x27D4EB2F];
    private readonly byte[] _counts;
    private readonly int _rowMask;
    private readonly int _rowBits;
    private readonly int _samplePeriod;
    private int _increments;

    /// <summary>A sketch sized for a cache of <paramref name="capacity"/> entries (about 32 bytes per entry).</summary>
    public FrequencySketch(int capacity)
    {
        // Eight counters a row per cached entry: distinct keys beyond the cache share them sparsely.
        var width = (int)BitOperations.RoundUpToPowerOf2((uint)Math.Clamp(capacity * 8L, 1024, 1 << 24));
        _rowBits = BitOperations.Log2((uint)width);
        _rowMask = width - 1;
        _counts = new byte[Rows * width];
        // Forty capacities: a version at the edge of a Zipf(1) top 10,000 of 100,000 is counted a few
        // times a period, enough to tell it from the 90,000 below it (ten: 77.7 % of lookups hit a
        // cache of 10,000 with this sketch, forty: 79.1-80.2 %, ideal 81 %; docs/benchmarks.md).
        _samplePeriod = (int)Math.Min(int.MaxValue, capacity * 40L);
    }

    /// <summary>Counts one request for the key whose hash code is <paramref name="keyHash"/>.</summary>
    public void Increment(int keyHash)
    {
        var hash = (uint)keyHash;
        for (var row = 0; row < Rows; row++)
        {
            ref var count = ref _counts[Index(hash, row)];
            if (count < MaxCount)
            {
                count++;
            }
        }

        if (Interlocked.Increment(ref _increments) >= _samplePeriod)
        {
            Halve();
        }
    }

    /// <summary>How often the key whose hash code is <paramref name="keyHash"/> was asked for recently: 0 to <see cref="MaxCount"/>.</summary>
    public int Estimate(int keyHash)
    {
        var hash = (uint)keyHash;
        var smallest = MaxCount;
        for (var row = 0; row < Rows; row++)
        {
            smallest = Math.Min(smallest, _counts[Index(hash, row)]);
        }

        return smallest;
    }

    private int Index(uint hash, int row) => (row << _rowBits) | (int)((hash * Seeds[row]) >> (32 - _rowBits)) & _rowMask;

    private void Halve()
    {
        // One thread halves; others that cross the period meanwhile find the count reset.
        if (Interlocked.Exchange(ref _increments, 0) < _samplePeriod)
        {
            return;
        }

        for (var i = 0; i < _counts.Length; i++)
        {
            _counts[i] >>= 1;
        }
    }
}
