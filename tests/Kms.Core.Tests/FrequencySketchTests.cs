using Kms.Core.Caching;

namespace Kms.Core.Tests;

/// <summary>The frequency sketch the server's caches decide evictions with.</summary>
public sealed class FrequencySketchTests
{
    private static readonly int Seven = "seven".GetHashCode();
    private static readonly int Many = "many".GetHashCode();

    [Fact]
    public void EstimatesAtLeastTheTrueCount_UpToFifteen_AndHalvesAfterFortyCapacitiesOfLookups()
    {
        var sketch = new FrequencySketch(capacity: 100);
        for (var i = 0; i < 7; i++)
        {
            sketch.Increment(Seven);
        }

        for (var i = 0; i < 40; i++)
        {
            sketch.Increment(Many);
        }

        Assert.InRange(sketch.Estimate(Seven), 7, FrequencySketch.MaxCount);
        Assert.Equal(FrequencySketch.MaxCount, sketch.Estimate(Many));

        // 47 increments so far; the 4,000th (forty capacities) halves every count.
        for (var i = 0; i < 4000 - 47; i++)
        {
            sketch.Increment($"other-{i}".GetHashCode());
        }

        Assert.InRange(sketch.Estimate(Many), 7, 8);
        Assert.InRange(sketch.Estimate(Seven), 3, 7);
    }
}
