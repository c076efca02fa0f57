using System.Collections.Concurrent;
using Kms.Core.Caching;
using Kms.Core.Keys;
using Microsoft.Extensions.Caching.Memory;
using Net.Pkcs11Interop.HighLevelAPI;

namespace Kms.Hsm;

/// <summary>
/// Handles of key versions unwrapped into HSM session objects, bounded and leased.
/// </summary>
/// <remarks>
/// A copy is destroyed only when it has been evicted (capacity, idle timeout, replacement,
/// invalidation) <em>and</em> no request holds a lease on it, so an in-flight operation
/// never sees its handle destroyed — and a destroyed handle number, which the HSM may give
/// to the next object it creates (another tenant's key), is never used again. Each cache
/// belongs to one HSM generation; re-initialisation starts a new cache, and handles of an
/// older generation are never destroyed or used (their objects died with their sessions).
/// Destruction needs a session, so evicted handles queue up and are destroyed by the next
/// operation that holds one.
/// <para>An entry is keyed by the key version's id <em>and</em> the kind of object it was
/// unwrapped as (<see cref="KeyHandleKind"/>), so a lease for an ECDSA key can never return a
/// handle unwrapped as an AES key, whatever ids callers pass.</para>
/// <para>When full, <see cref="MemoryCache"/> compacts a tenth, lowest priority first and least
/// recently used within a priority. A copy of a version leased before, recently, is cached at high
/// priority, one seen for the first time at normal (<see cref="FrequencySketch"/>, which remembers
/// versions not cached too): under skewed access a stream of rarely used versions then evicts
/// itself rather than the popular ones (docs/benchmarks.md, "Zipf").</para>
/// </remarks>
internal sealed class KeyHandleCache : IDisposable
{
    private static readonly KeyHandleKind[] Kinds = Enum.GetValues<KeyHandleKind>();

    private readonly MemoryCache _cache;
    private readonly TimeSpan _idleTimeout;
    private readonly ConcurrentQueue<IObjectHandle> _toDestroy = new();
    private readonly FrequencySketch _frequencies;
    private static long _notCached;

    public KeyHandleCache(long generation, int capacity, TimeSpan idleTimeout)
    {
        Generation = generation;
        _idleTimeout = idleTimeout;
        _cache = new MemoryCache(new MemoryCacheOptions { SizeLimit = capacity, CompactionPercentage = 0.1 });
        _frequencies = new FrequencySketch(capacity);
        HsmMetrics.Track(this);
    }

    /// <summary>The HSM generation whose session objects this cache holds.</summary>
    public long Generation { get; }

    /// <summary>Entries currently cached (leased-but-evicted copies not included).</summary>
    public int Count => _cache.Count;

    /// <summary>Copies unwrapped on a miss that were not cached (refused over the size limit, or replaced at once by a concurrent miss), in every cache of the process (benchmarks).</summary>
    public static long NotCachedAfterUnwrap => Interlocked.Read(ref _notCached);

    /// <summary>Handles waiting for destruction.</summary>
    public int PendingDestroyCount => _toDestroy.Count;

    /// <summary>Leases the copy of a key version unwrapped as <paramref name="kind"/>, unwrapping it on a miss.</summary>
    public HandleLease Lease(KeyVersionId id, KeyHandleKind kind, Func<IObjectHandle> unwrap)
    {
        var key = new Key(id, kind);
        var hash = key.GetHashCode();
        _frequencies.Increment(hash);
        if (_cache.TryGetValue(key, out CachedHandle? cached) && cached!.TryLease())
        {
            HsmMetrics.KeyCacheHits.Add(1);
            return new HandleLease(key, cached);
        }

        HsmMetrics.KeyCacheMisses.Add(1);

        // Two concurrent misses unwrap twice; the replaced entry is evicted and destroyed
        // once released, so the only cost is one extra unwrap.
        var fresh = new CachedHandle(unwrap(), this);
        using (var entry = _cache.CreateEntry(key))
        {
            entry.Value = fresh;
            entry.Size = 1;
            entry.Priority = _frequencies.Estimate(hash) >= 2 ? CacheItemPriority.High : CacheItemPriority.Normal;
            entry.SlidingExpiration = _idleTimeout;
            entry.RegisterPostEvictionCallback(static (_, value, _, _) => ((CachedHandle)value!).MarkEvicted());
        }

        // MemoryCache refuses an entry while it is over its size limit, until its background compaction has run.
        if (!_cache.TryGetValue(key, out CachedHandle? stored) || !ReferenceEquals(stored, fresh))
        {
            Interlocked.Increment(ref _notCached);
        }

        return new HandleLease(key, fresh);
    }

    /// <summary>Evicts a key version's copies, of every kind (each destroyed once no lease holds it).</summary>
    /// <remarks>Marks a copy evicted right away rather than waiting for MemoryCache's asynchronous callback.</remarks>
    public void Invalidate(KeyVersionId id)
    {
        foreach (var kind in Kinds)
        {
            var key = new Key(id, kind);
            if (_cache.TryGetValue(key, out CachedHandle? cached))
            {
                _cache.Remove(key);
                cached!.MarkEvicted();
            }
        }
    }

    /// <summary>
    /// Drops a copy the HSM no longer knows (its handle is invalid) without ever destroying
    /// it: on an HSM that reuses handle numbers, that number may already name another object.
    /// </summary>
    private void Forget(Key key, CachedHandle lost)
    {
        lost.MarkDead();
        if (_cache.TryGetValue(key, out CachedHandle? cached) && ReferenceEquals(cached, lost))
        {
            _cache.Remove(key);
        }
    }

    /// <summary>Evicts everything (each copy destroyed once no lease holds it).</summary>
    public void Clear() => _cache.Compact(1.0);

    /// <summary>Destroys queued handles with a session the caller holds.</summary>
    public void DestroyPending(Action<IObjectHandle> destroy)
    {
        while (_toDestroy.TryDequeue(out var handle))
        {
            destroy(handle);
        }
    }

    public void Dispose()
    {
        HsmMetrics.Untrack(this);
        _cache.Dispose();
    }

    private void Enqueue(IObjectHandle handle) => _toDestroy.Enqueue(handle);

    /// <summary>The cache key: one key version may be cached once per kind, never confused across kinds.</summary>
    internal readonly record struct Key(KeyVersionId Id, KeyHandleKind Kind);

    /// <summary>One unwrapped copy and its lease count.</summary>
    internal sealed class CachedHandle(IObjectHandle handle, KeyHandleCache owner)
    {
        public KeyHandleCache Owner => owner;

        private readonly Lock _lock = new();
        private int _leases = 1;
        private bool _evicted;
        private bool _dead;

        public IObjectHandle Handle { get; } = handle;

        public long Generation => owner.Generation;

        public bool TryLease()
        {
            lock (_lock)
            {
                if (_evicted)
                {
                    return false;
                }

                _leases++;
                return true;
            }
        }

        public void Release()
        {
            bool destroy;
            lock (_lock)
            {
                _leases--;
                destroy = _evicted && !_dead && _leases == 0;
            }

            if (destroy)
            {
                owner.Enqueue(Handle);
            }
        }

        public void MarkEvicted()
        {
            bool destroy;
            lock (_lock)
            {
                if (_evicted)
                {
                    return;
                }

                _evicted = true;
                destroy = !_dead && _leases == 0;
            }

            if (destroy)
            {
                owner.Enqueue(Handle);
            }
        }

        /// <summary>Evicted, and never to be destroyed: the handle is no longer ours.</summary>
        public void MarkDead()
        {
            lock (_lock)
            {
                _dead = true;
                _evicted = true;
            }
        }
    }

    /// <summary>A lease on a handle: the copy lives at least until the lease is disposed.</summary>
    internal readonly struct HandleLease(Key key, CachedHandle cached) : IDisposable
    {
        public IObjectHandle Handle => cached.Handle;

        public long Generation => cached.Generation;

        /// <summary>The HSM says this handle is invalid: drop it from the cache, never destroy it.</summary>
        public void Forget() => cached.Owner.Forget(key, cached);

        public void Dispose() => cached.Release();
    }
}

/// <summary>What a key version was unwrapped as: each kind has its own unwrap template and its own cache entries.</summary>
internal enum KeyHandleKind
{
    /// <summary>An AES-256 secret key for GCM.</summary>
    Aes256Gcm,

    /// <summary>A P-256 private key for ECDSA, its curve checked after the unwrap.</summary>
    EcdsaP256,

    /// <summary>A P-384 private key for ECDSA, its curve checked after the unwrap.</summary>
    EcdsaP384,

    /// <summary>An RSA private key for RSASSA-PSS (CKM_RSA_PKCS_PSS only).</summary>
    RsaSignPss,

    /// <summary>An RSA private key for RSASSA-PKCS1-v1_5 (CKM_RSA_PKCS only, over a DigestInfo).</summary>
    RsaSignPkcs1,

    /// <summary>An RSA private key for RSAES-OAEP decryption (CKM_RSA_PKCS_OAEP only).</summary>
    RsaDecryptOaep,

    /// <summary>A BYOK import job's RSA private key: unwrap only, CKM_RSA_PKCS_OAEP only.</summary>
    ImportUnwrap,

    /// <summary>A 32-byte generic secret for CKM_SHA256_HMAC only, its length checked after the unwrap.</summary>
    HmacSha256,

    /// <summary>A 48-byte generic secret for CKM_SHA384_HMAC only.</summary>
    HmacSha384,

    /// <summary>A 64-byte generic secret for CKM_SHA512_HMAC only.</summary>
    HmacSha512,

    /// <summary>An Ed25519 private key for CKM_EDDSA only.</summary>
    Ed25519,
}
