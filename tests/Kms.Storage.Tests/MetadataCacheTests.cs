namespace Kms.Storage.Tests;

/// <summary>The metadata cache's eviction on its own (the store's use of it: <c>SqliteKeyStoreTests.MetadataCache_*</c>).</summary>
public sealed class MetadataCacheTests
{
    [Fact]
    public void Full_KeepsTheKeysAskedForOften_DropsKeysAskedForOnce()
    {
        var cache = new MetadataCache(100);
        cache.Confirm(TimeSpan.FromMinutes(5));
        var hot = Enumerable.Range(0, 10).Select(i => $"tenants/dev/keys/hot-{i}").ToList();
        foreach (var key in hot)
        {
            Assert.False(cache.TryGet(key, out string _));
            cache.Add(key, key, cache.Generation);
        }

        for (var round = 0; round < 20; round++)
        {
            Assert.All(hot, key => Assert.True(cache.TryGet(key, out string _)));
        }

        // A scan of 1,000 keys asked for once each fills the cache ten times over.
        for (var i = 0; i < 1000; i++)
        {
            var key = $"tenants/dev/keys/cold-{i}";
            Assert.False(cache.TryGet(key, out string _));
            cache.Add(key, key, cache.Generation);
            Assert.True(cache.Count <= 100, $"{cache.Count} entries in a cache of 100");
        }

        Assert.All(hot, key => Assert.True(cache.TryGet(key, out string value) && value == key, $"{key} was evicted by keys asked for once"));
    }
}
