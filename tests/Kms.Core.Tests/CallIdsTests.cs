using System.Text.RegularExpressions;
using Kms.Core.Audit;

namespace Kms.Core.Tests;

public sealed partial class CallIdsTests
{
    [Fact]
    public void New_ManyFromManyThreads_AllDistinct_AllThirtyTwoLowerHexDigits()
    {
        var ids = new System.Collections.Concurrent.ConcurrentBag<string>();
        Parallel.For(0, 8, _ =>
        {
            for (var i = 0; i < 25_000; i++)
            {
                ids.Add(CallIds.New());
            }
        });

        Assert.Equal(200_000, ids.Count);
        Assert.Equal(200_000, ids.Distinct(StringComparer.Ordinal).Count());
        Assert.All(ids, id => Assert.Matches(Hex32(), id));
    }

    [Fact]
    public void New_ConsecutiveIds_ShareTheProcessPrefix_DifferInTheCount()
    {
        var first = CallIds.New();
        var second = CallIds.New();

        Assert.Equal(first[..16], second[..16]);
        Assert.NotEqual(first[16..], second[16..]);
    }

    [GeneratedRegex("^[0-9a-f]{32}$")]
    private static partial Regex Hex32();
}
