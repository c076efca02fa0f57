using Kms.Core.Keys;
using Kms.Core.Ports;
using Kms.Testing;
using Microsoft.Extensions.Logging.Abstractions;
using Net.Pkcs11Interop.Common;
using Net.Pkcs11Interop.HighLevelAPI;

namespace Kms.Hsm.Tests;

/// <summary>Leasing: an unwrapped copy dies only when evicted and unleased; the cache is bounded.</summary>
public sealed class KeyHandleCacheTests(HsmFixture fixture) : IClassFixture<HsmFixture>
{
    private static readonly Pkcs11InteropFactories Factories = new();

    [Fact]
    public void Lease_EvictedWhileLeased_DestroyedOnlyAfterRelease()
    {
        using var cache = new KeyHandleCache(1, 10, TimeSpan.FromMinutes(5));
        var id = KeyVersionId.NewId();
        var destroyed = new List<ulong>();

        var lease = cache.Lease(id, KeyHandleKind.Aes256Gcm, () => Factories.ObjectHandleFactory.Create(42));
        cache.Invalidate(id);
        cache.DestroyPending(h => destroyed.Add(h.ObjectId));
        Assert.Empty(destroyed);

        lease.Dispose();
        cache.DestroyPending(h => destroyed.Add(h.ObjectId));
        Assert.Equal([42UL], destroyed);
    }

    [Fact]
    public void Lease_ReleasedThenEvicted_DestroyedOnce()
    {
        using var cache = new KeyHandleCache(1, 10, TimeSpan.FromMinutes(5));
        var id = KeyVersionId.NewId();
        var destroyed = new List<ulong>();

        cache.Lease(id, KeyHandleKind.Aes256Gcm, () => Factories.ObjectHandleFactory.Create(7)).Dispose();
        cache.Lease(id, KeyHandleKind.Aes256Gcm, () => throw new InvalidOperationException("must hit the cache")).Dispose();
        cache.Invalidate(id);
        cache.Invalidate(id);
        cache.DestroyPending(h => destroyed.Add(h.ObjectId));
        Assert.Equal([7UL], destroyed);
    }

    [Fact]
    public void Lease_HandleLost_ForgottenAndNeverDestroyed()
    {
        // On an HSM that reuses handle numbers, destroying a lost handle could destroy
        // whatever object (another tenant's key) the number names now.
        using var cache = new KeyHandleCache(1, 10, TimeSpan.FromMinutes(5));
        var id = KeyVersionId.NewId();
        var destroyed = new List<ulong>();

        var lease = cache.Lease(id, KeyHandleKind.Aes256Gcm, () => Factories.ObjectHandleFactory.Create(5));
        lease.Forget();
        lease.Dispose();
        cache.DestroyPending(h => destroyed.Add(h.ObjectId));

        Assert.Empty(destroyed);
        using var fresh = cache.Lease(id, KeyHandleKind.Aes256Gcm, () => Factories.ObjectHandleFactory.Create(6));
        Assert.Equal(6UL, fresh.Handle.ObjectId);
    }

    [Fact]
    public void Lease_AfterEviction_UnwrapsAFreshCopyInsteadOfReusingTheOldHandle()
    {
        using var cache = new KeyHandleCache(1, 10, TimeSpan.FromMinutes(5));
        var id = KeyVersionId.NewId();
        var held = cache.Lease(id, KeyHandleKind.Aes256Gcm, () => Factories.ObjectHandleFactory.Create(1));
        cache.Invalidate(id);

        using var fresh = cache.Lease(id, KeyHandleKind.Aes256Gcm, () => Factories.ObjectHandleFactory.Create(2));
        Assert.Equal(2UL, fresh.Handle.ObjectId);
        held.Dispose();
    }

    [Fact]
    public void Lease_SameIdOtherKind_NeverReturnsTheOtherKindsHandle()
    {
        using var cache = new KeyHandleCache(1, 10, TimeSpan.FromMinutes(5));
        var id = KeyVersionId.NewId();
        using var aes = cache.Lease(id, KeyHandleKind.Aes256Gcm, () => Factories.ObjectHandleFactory.Create(1));
        using var p256 = cache.Lease(id, KeyHandleKind.EcdsaP256, () => Factories.ObjectHandleFactory.Create(2));
        using var p384 = cache.Lease(id, KeyHandleKind.EcdsaP384, () => Factories.ObjectHandleFactory.Create(3));

        Assert.Equal([1UL, 2UL, 3UL], new[] { aes.Handle.ObjectId, p256.Handle.ObjectId, p384.Handle.ObjectId });
        using var again = cache.Lease(id, KeyHandleKind.EcdsaP256, () => throw new InvalidOperationException("must hit the cache"));
        Assert.Equal(2UL, again.Handle.ObjectId);
    }

    [Fact]
    public void Invalidate_EvictsTheCopiesOfEveryKind()
    {
        using var cache = new KeyHandleCache(1, 10, TimeSpan.FromMinutes(5));
        var id = KeyVersionId.NewId();
        var other = KeyVersionId.NewId();
        var destroyed = new List<ulong>();
        cache.Lease(id, KeyHandleKind.Aes256Gcm, () => Factories.ObjectHandleFactory.Create(1)).Dispose();
        cache.Lease(id, KeyHandleKind.EcdsaP256, () => Factories.ObjectHandleFactory.Create(2)).Dispose();
        cache.Lease(other, KeyHandleKind.EcdsaP256, () => Factories.ObjectHandleFactory.Create(3)).Dispose();

        cache.Invalidate(id);
        cache.DestroyPending(h => destroyed.Add(h.ObjectId));

        Assert.Equal([1UL, 2UL], destroyed.Order());
        Assert.Equal(1, cache.Count);
    }

    [Fact]
    public async Task Full_VersionsLeasedAgain_OutliveAStreamOfVersionsLeasedOnce()
    {
        using var cache = new KeyHandleCache(1, 10, TimeSpan.FromMinutes(5));
        var hot = Enumerable.Range(0, 4).Select(_ => KeyVersionId.NewId()).ToList();
        ulong handle = 100;

        // Leased, evicted and leased again: asked for twice recently, so cached at high priority.
        foreach (var id in hot)
        {
            cache.Lease(id, KeyHandleKind.Aes256Gcm, () => Factories.ObjectHandleFactory.Create(handle++)).Dispose();
            cache.Invalidate(id);
            cache.Lease(id, KeyHandleKind.Aes256Gcm, () => Factories.ObjectHandleFactory.Create(handle++)).Dispose();
        }

        // Forty versions leased once each: the cache overflows (compactions run on the thread pool;
        // while one is due, a new entry is refused), more recently used than the hot ones.
        for (var i = 0; i < 40; i++)
        {
            cache.Lease(KeyVersionId.NewId(), KeyHandleKind.Aes256Gcm, () => Factories.ObjectHandleFactory.Create(handle++)).Dispose();
            await Task.Delay(5);
        }

        var deadline = DateTime.UtcNow.AddSeconds(20);
        while (cache.Count > 10 && DateTime.UtcNow < deadline)
        {
            await Task.Delay(10);
        }

        Assert.InRange(cache.Count, 1, 10);
        foreach (var id in hot)
        {
            using var lease = cache.Lease(id, KeyHandleKind.Aes256Gcm, () => throw new InvalidOperationException("a hot version was evicted"));
        }
    }

    [Fact]
    public async Task ManyKeysThroughSmallCache_SessionObjectsStayBounded()
    {
        var token = SoftHsm.CreateToken();
        await using var hsm = Pkcs11Hsm.Open(token.Options(cacheCapacity: 4), NullLogger.Instance);
        var keys = new List<KeyMaterialRef>();
        for (var i = 0; i < 40; i++)
        {
            keys.Add(new KeyMaterialRef(KeyVersionId.NewId(), await hsm.GenerateAes256KeyAsync(default)));
        }

        foreach (var key in keys)
        {
            await hsm.EncryptAesGcmAsync(key, new byte[12], [], [1], default);
        }

        // Eviction callbacks run on the thread pool; the next operations destroy what they queued.
        var deadline = DateTime.UtcNow.AddSeconds(20);
        int live;
        do
        {
            await hsm.GenerateRandomAsync(1, default);
            live = hsm.CountSessionKeyObjects();
        }
        while (live > 4 + 1 && DateTime.UtcNow < deadline && await Delay());

        Assert.InRange(live, 1, 5);
    }

    [Fact]
    public async Task LeasedRealHandle_StaysUsableAfterEviction_ThenIsDestroyed()
    {
        var key = new KeyMaterialRef(KeyVersionId.NewId(), await fixture.Hsm.GenerateAes256KeyAsync(default));
        await fixture.Hsm.EncryptAesGcmAsync(key, new byte[12], [], [1], default);
        var cache = fixture.Hsm.Cache;
        var lease = cache.Lease(key.Id, KeyHandleKind.Aes256Gcm, () => throw new InvalidOperationException("must be cached"));
        cache.Invalidate(key.Id);
        await fixture.Hsm.GenerateRandomAsync(1, default); // drains the destroy queue

        using var session = fixture.OpenRawSession();
        using (var parameters = fixture.Factories.MechanismParamsFactory.CreateCkGcmParams(new byte[12], 96, [], 128))
        using (var gcm = fixture.Factories.MechanismFactory.Create(CKM.CKM_AES_GCM, parameters))
        {
            Assert.Equal(17, session.Encrypt(gcm, lease.Handle, [1]).Length);
        }

        lease.Dispose();
        await fixture.Hsm.GenerateRandomAsync(1, default);
        using (var parameters = fixture.Factories.MechanismParamsFactory.CreateCkGcmParams(new byte[12], 96, [], 128))
        using (var gcm = fixture.Factories.MechanismFactory.Create(CKM.CKM_AES_GCM, parameters))
        {
            var e = Assert.Throws<Pkcs11Exception>(() => session.Encrypt(gcm, lease.Handle, [1]));
            Assert.Contains(e.RV, new[] { CKR.CKR_KEY_HANDLE_INVALID, CKR.CKR_OBJECT_HANDLE_INVALID });
        }
    }

    private static async Task<bool> Delay()
    {
        await Task.Delay(100);
        return true;
    }
}
