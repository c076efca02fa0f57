using System.Collections.Concurrent;
using Kms.Core.Caching;
using Kms.Core.Keys;
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
/// <para>The cache never holds more than its capacity: W-TinyLFU (Einziger, Friedman and Manes,
/// 2017) with clocks for its two regions. A miss's copy enters a small window (1% of the
/// capacity); the copy the window gives up for it moves into the main region only if its
/// version was asked for more often, recently, than the main region's candidate for eviction
/// (a <see cref="FrequencySketch"/> that remembers versions not cached too), else it is
/// evicted itself. Each region's candidate is the next entry its clock hand finds not used
/// since the hand last passed it (CLOCK, an approximation of least recently used). Under
/// skewed access a stream of rarely used versions passes through the window without evicting
/// the popular ones, and a new version used in a burst is cached
/// at its first use (docs/benchmarks.md, "The handle cache without MemoryCache"). Eviction
/// happens inline, under one lock; hits take no cache-wide lock.</para>
/// <para>An invalidated version (destroyed, or an import job's expired key) is remembered for
/// <see cref="TombstoneLifetime"/>: a request that read its metadata before the destruction
/// committed may still reach the HSM after the eviction, and the copy it unwraps is then used
/// once and destroyed, never cached again.</para>
/// </remarks>
internal sealed class KeyHandleCache : IDisposable
{
    /// <summary>How long an invalidated version's copies are not cached again: longer than any request holds the metadata it read.</summary>
    public static readonly TimeSpan TombstoneLifetime = TimeSpan.FromMinutes(10);

    /// <summary>At most this many invalidated versions are remembered (the oldest are forgotten first).</summary>
    public const int MaxTombstones = 65_536;

    private static readonly KeyHandleKind[] Kinds = Enum.GetValues<KeyHandleKind>();
    private static long _notCached;

    private readonly ConcurrentDictionary<Key, CachedHandle> _entries = new();
    private readonly Lock _lock = new(); // adds, moves, evictions, sweeps: _slots, the free stacks, the hands, _count
    private readonly CachedHandle?[] _slots; // [0, _windowSize): the window; [_windowSize, capacity): the main region
    private readonly int _windowSize;
    private readonly Stack<int> _freeWindow;
    private readonly Stack<int> _freeMain;
    private readonly long _idleTimeout; // in TimeProvider timestamp units
    private readonly long _tombstoneLifetime; // the same
    private readonly long _sweepInterval;
    private readonly TimeProvider _time;
    private readonly ConcurrentQueue<IObjectHandle> _toDestroy = new();
    private readonly FrequencySketch _frequencies;
    private readonly Dictionary<KeyVersionId, long> _tombstones = []; // id → when it was invalidated; under _lock
    private readonly Queue<(KeyVersionId Id, long Time)> _tombstoneOrder = new(); // under _lock
    private int _windowHand;
    private int _mainHand;
    private int _count;
    private long _nextSweep;

    public KeyHandleCache(long generation, int capacity, TimeSpan idleTimeout, TimeProvider? time = null)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(capacity);
        ArgumentOutOfRangeException.ThrowIfLessThanOrEqual(idleTimeout, TimeSpan.Zero);
        Generation = generation;
        _time = time ?? TimeProvider.System;
        _idleTimeout = (long)(idleTimeout.TotalSeconds * _time.TimestampFrequency);
        _tombstoneLifetime = (long)(TombstoneLifetime.TotalSeconds * _time.TimestampFrequency);
        // Idle copies are looked for by the calls themselves, at most this often (as the MemoryCache this replaced did).
        _sweepInterval = (long)(Math.Clamp(idleTimeout.TotalSeconds / 4, 0.001, 60) * _time.TimestampFrequency);
        _nextSweep = _time.GetTimestamp() + _sweepInterval;
        _slots = new CachedHandle?[capacity];
        _windowSize = capacity == 0 ? 0 : Math.Max(1, capacity / 100);
        _freeWindow = new Stack<int>(Enumerable.Range(0, _windowSize).Reverse());
        _freeMain = new Stack<int>(Enumerable.Range(_windowSize, capacity - _windowSize).Reverse());
        _mainHand = _windowSize;
        _frequencies = new FrequencySketch(Math.Max(capacity, 1));
        HsmMetrics.Track(this);
    }

    /// <summary>The HSM generation whose session objects this cache holds.</summary>
    public long Generation { get; }

    /// <summary>Entries currently cached (leased-but-evicted copies not included).</summary>
    public int Count => Volatile.Read(ref _count);

    /// <summary>Copies unwrapped on a miss that the main region refused when the window gave them up, or that were not cached because a concurrent miss cached its own first, in every cache of the process (benchmarks).</summary>
    public static long NotCachedAfterUnwrap => Interlocked.Read(ref _notCached);

    /// <summary>Handles waiting for destruction.</summary>
    public int PendingDestroyCount => _toDestroy.Count;

    /// <summary>Leases the copy of a key version unwrapped as <paramref name="kind"/>, unwrapping it on a miss.</summary>
    public HandleLease Lease(KeyVersionId id, KeyHandleKind kind, Func<IObjectHandle> unwrap)
    {
        var key = new Key(id, kind);
        var hash = key.GetHashCode();
        _frequencies.Increment(hash);
        var now = _time.GetTimestamp();
        if (now >= Volatile.Read(ref _nextSweep))
        {
            SweepIdle(now);
        }

        if (_entries.TryGetValue(key, out var cached))
        {
            if (now - Volatile.Read(ref cached.LastUsed) > _idleTimeout)
            {
                Remove(cached);
            }
            else if (cached.TryLease())
            {
                cached.Touch(now);
                HsmMetrics.KeyCacheHits.Add(1);
                return new HandleLease(cached);
            }
        }

        HsmMetrics.KeyCacheMisses.Add(1);
        var fresh = new CachedHandle(key, unwrap(), this, now);
        if (!TryAdd(fresh))
        {
            // Leased once, then destroyed.
            fresh.MarkEvicted();
            Interlocked.Increment(ref _notCached);
        }

        return new HandleLease(fresh);
    }

    /// <summary>
    /// Evicts a key version's copies, of every kind (each destroyed once no lease holds it), and
    /// caches none again for <see cref="TombstoneLifetime"/>.
    /// </summary>
    public void Invalidate(KeyVersionId id)
    {
        lock (_lock)
        {
            var now = _time.GetTimestamp();
            while (_tombstoneOrder.TryPeek(out var oldest)
                && (now - oldest.Time > _tombstoneLifetime || _tombstoneOrder.Count >= MaxTombstones))
            {
                _tombstoneOrder.Dequeue();
                if (_tombstones.TryGetValue(oldest.Id, out var time) && time == oldest.Time)
                {
                    _tombstones.Remove(oldest.Id);
                }
            }

            _tombstones[id] = now;
            _tombstoneOrder.Enqueue((id, now));
        }

        foreach (var kind in Kinds)
        {
            if (_entries.TryGetValue(new Key(id, kind), out var cached))
            {
                Remove(cached);
            }
        }
    }

    /// <summary>Evicts everything (each copy destroyed once no lease holds it).</summary>
    public void Clear()
    {
        foreach (var (_, cached) in _entries)
        {
            Remove(cached);
        }
    }

    /// <summary>Destroys queued handles with a session the caller holds.</summary>
    public void DestroyPending(Action<IObjectHandle> destroy)
    {
        while (_toDestroy.TryDequeue(out var handle))
        {
            destroy(handle);
        }
    }

    public void Dispose() => HsmMetrics.Untrack(this);

    /// <summary>
    /// Drops a copy the HSM no longer knows (its handle is invalid) without ever destroying
    /// it: on an HSM that reuses handle numbers, that number may already name another object.
    /// </summary>
    private void Forget(CachedHandle lost)
    {
        // Under the lock, so no concurrent miss finds the dead copy still cached and declines to cache its own.
        lock (_lock)
        {
            lost.MarkDead();
            RemoveLocked(lost);
        }
    }

    private void Enqueue(IObjectHandle handle) => _toDestroy.Enqueue(handle);

    /// <summary>
    /// Caches <paramref name="fresh"/> in the window. A full window first gives up the entry its hand
    /// picks: into the main region if there is room there, or if it was asked for more often than the
    /// entry the main region's hand picks (which is then evicted); otherwise it is evicted itself.
    /// </summary>
    private bool TryAdd(CachedHandle fresh)
    {
        lock (_lock)
        {
            // A concurrent miss on the same version cached its copy first: keep that one.
            if (_slots.Length == 0 || _entries.ContainsKey(fresh.Key))
            {
                return false;
            }

            // An invalidated version, asked for by a request that read its metadata before: used once, not cached.
            if (_tombstones.Count > 0 && _tombstones.TryGetValue(fresh.Key.Id, out var invalidated)
                && _time.GetTimestamp() - invalidated <= _tombstoneLifetime)
            {
                return false;
            }

            if (_freeWindow.Count == 0)
            {
                var candidate = _slots[NextVictim(0, _windowSize, ref _windowHand)]!;
                if (_freeMain.Count > 0)
                {
                    MoveToMain(candidate);
                }
                else if (_slots.Length > _windowSize
                    && _slots[NextVictim(_windowSize, _slots.Length, ref _mainHand)] is { } victim
                    && _frequencies.Estimate(candidate.Key.GetHashCode()) > _frequencies.Estimate(victim.Key.GetHashCode()))
                {
                    RemoveLocked(victim);
                    MoveToMain(candidate);
                    _mainHand = _mainHand + 1 == _slots.Length ? _windowSize : _mainHand + 1; // past the entry just moved in
                }
                else
                {
                    RemoveLocked(candidate);
                    Interlocked.Increment(ref _notCached);
                }
            }

            var slot = _freeWindow.Pop();
            fresh.Slot = slot;
            _slots[slot] = fresh;
            _entries[fresh.Key] = fresh;
            _count++;
            return true;
        }
    }

    /// <summary>Moves a window entry into a free slot of the main region. Under the lock.</summary>
    private void MoveToMain(CachedHandle cached)
    {
        _slots[cached.Slot] = null;
        _freeWindow.Push(cached.Slot);
        var slot = _freeMain.Pop();
        _slots[slot] = cached;
        cached.Slot = slot;
    }

    /// <summary>
    /// The slot of the first entry in [<paramref name="start"/>, <paramref name="end"/>) from the hand on
    /// not used since the hand last passed it (the hand clears use bits as it goes). Under the lock,
    /// with that region full; the hand stays on the slot it returns.
    /// </summary>
    private int NextVictim(int start, int end, ref int hand)
    {
        // Hits set use bits without the lock; after two turns the hand takes what it finds.
        for (var passed = 0; ; passed++)
        {
            if (!_slots[hand]!.ClearUsed() || passed >= 2 * (end - start))
            {
                return hand;
            }

            hand = hand + 1 == end ? start : hand + 1;
        }
    }

    private void Remove(CachedHandle cached)
    {
        lock (_lock)
        {
            RemoveLocked(cached);
        }
    }

    /// <summary>Takes <paramref name="cached"/> out of the cache if it is still in it, and marks it evicted.</summary>
    private void RemoveLocked(CachedHandle cached)
    {
        if (cached.Slot >= 0 && ReferenceEquals(_slots[cached.Slot], cached))
        {
            _slots[cached.Slot] = null;
            (cached.Slot < _windowSize ? _freeWindow : _freeMain).Push(cached.Slot);
            _entries.TryRemove(new KeyValuePair<Key, CachedHandle>(cached.Key, cached));
            _count--;
            cached.Slot = -1;
        }

        cached.MarkEvicted();
    }

    private void SweepIdle(long now)
    {
        if (!_lock.TryEnter())
        {
            return;
        }

        try
        {
            if (now < _nextSweep)
            {
                return;
            }

            Volatile.Write(ref _nextSweep, now + _sweepInterval);
            foreach (var cached in _slots)
            {
                if (cached is not null && now - Volatile.Read(ref cached.LastUsed) > _idleTimeout)
                {
                    RemoveLocked(cached);
                }
            }
        }
        finally
        {
            _lock.Exit();
        }
    }

    /// <summary>The cache key: one key version may be cached once per kind, never confused across kinds.</summary>
    internal readonly record struct Key(KeyVersionId Id, KeyHandleKind Kind);

    /// <summary>One unwrapped copy and its lease count.</summary>
    internal sealed class CachedHandle(Key key, IObjectHandle handle, KeyHandleCache owner, long now)
    {
        /// <summary>When it was last leased (a TimeProvider timestamp). A field, for Volatile's ref: written by hits without the cache's lock.</summary>
        public long LastUsed = now;

        private readonly Lock _lock = new();
        private int _leases = 1;
        private int _used = 1;
        private bool _evicted;
        private bool _dead;

        public Key Key => key;

        public KeyHandleCache Owner => owner;

        /// <summary>Its slot in the clock, -1 when not cached; under the owner's lock.</summary>
        public int Slot { get; set; } = -1;

        public IObjectHandle Handle { get; } = handle;

        public long Generation => owner.Generation;

        public void Touch(long now)
        {
            Volatile.Write(ref LastUsed, now);
            if (Volatile.Read(ref _used) == 0)
            {
                Volatile.Write(ref _used, 1);
            }
        }

        /// <summary>Clears the use bit; whether it was set.</summary>
        public bool ClearUsed() => Interlocked.Exchange(ref _used, 0) != 0;

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
    internal readonly struct HandleLease(CachedHandle cached) : IDisposable
    {
        public IObjectHandle Handle => cached.Handle;

        public long Generation => cached.Generation;

        /// <summary>The HSM says this handle is invalid: drop it from the cache, never destroy it.</summary>
        public void Forget() => cached.Owner.Forget(cached);

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
