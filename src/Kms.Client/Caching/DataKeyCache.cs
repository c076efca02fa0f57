using System.Collections.Concurrent;
using System.Security.Cryptography;
using Kms.Client.Envelope;
using Microsoft.Extensions.Caching.Memory;

namespace Kms.Client.Caching;

/// <summary>
/// Data keys kept in memory (Microsoft.Extensions.Caching.Memory) with in-flight coalescing:
/// concurrent misses for one entry make one KMS call and share its answer.
/// </summary>
/// <remarks>
/// Entries are zeroed when they leave the cache (eviction, expiry, limit reached, dispose).
/// A caller never holds an entry's array: <see cref="CachedDataKey.TryLease"/> copies the key
/// under the entry's lock, so eviction can zero it while a message is being written.
/// Every entry is tracked from before it is stored until it is zeroed, outside MemoryCache:
/// MemoryCache neither clears itself on dispose nor tells of a commit it drops after it, and
/// zeroes what it evicts later, on the thread pool. Dispose zeroes every tracked entry before it
/// returns; an add that comes after Dispose began zeroes its own entry and is refused.
/// One cache per encryptor: entries were made with that encryptor's credentials.
/// A signed writer's entry also holds its ECDSA key pair (<see cref="SigningKey"/>): zeroing the
/// entry releases the entry's reference, and the pair is disposed once no message leased from the
/// entry still holds one. Entry keys name the suite, so the two suites never share an entry.
/// </remarks>
internal sealed class DataKeyCache : IDisposable
{

    private const int MaxRounds = 4;

    private static readonly TimeSpan SweepPeriod = TimeSpan.FromSeconds(30);

    private readonly DataKeyCacheOptions _options;
    private readonly MemoryCache _encryption;
    private readonly MemoryCache _decryption;
    private readonly ConcurrentDictionary<string, Task<CachedDataKey>> _inFlight = new(StringComparer.Ordinal);

    // Every entry made and not yet zeroed (a set: the value is unused).
    private readonly ConcurrentDictionary<CachedDataKey, byte> _live = new();
    private readonly ITimer _sweep;
    private long _encryptHits;
    private long _encryptMisses;
    private long _decryptHits;
    private long _decryptMisses;
    private long _coalesced;
    private int _disposed;

    public DataKeyCache(DataKeyCacheOptions options)
    {
        // A copy: changing the caller's options later cannot slip past validation.
        _options = new DataKeyCacheOptions
        {
            MaxAge = options.MaxAge,
            MaxMessagesPerKey = options.MaxMessagesPerKey,
            MaxBytesPerKey = options.MaxBytesPerKey,
            Capacity = options.Capacity,
            DecryptionMaxAge = options.DecryptionMaxAge,
            TimeProvider = options.TimeProvider,
        };
        _options.Validate();
        _encryption = new MemoryCache(new MemoryCacheOptions { SizeLimit = _options.Capacity });
        _decryption = new MemoryCache(new MemoryCacheOptions { SizeLimit = _options.Capacity });

        // MemoryCache expires entries only when it is used: sweep, so an idle process does not
        // keep expired data keys in memory.
        // The timer holds the cache weakly: an encryptor its owner forgot to dispose can still be
        // collected, and then the timer stops itself.
        var sweeper = new Sweeper(new WeakReference<DataKeyCache>(this));
        _sweep = sweeper.Timer = TimeProvider.System.CreateTimer(static state => ((Sweeper)state!).Run(), sweeper, SweepPeriod, SweepPeriod);
    }

    public DataKeyCacheStatistics Statistics => new(
        Interlocked.Read(ref _encryptHits),
        Interlocked.Read(ref _encryptMisses),
        Interlocked.Read(ref _decryptHits),
        Interlocked.Read(ref _decryptMisses),
        Interlocked.Read(ref _coalesced));

    /// <summary>Whether a message of this many bytes may use a cached data key.</summary>
    public bool Accepts(long plaintextBytes) => plaintextBytes >= 0 && plaintextBytes <= _options.MaxBytesPerKey;

    /// <summary>
    /// Materials for one message of <paramref name="plaintextBytes"/> (the caller disposes them):
    /// a copy of a cached data key, its wrappings and context, and for a signed writer a handle to
    /// the entry's key pair; on a miss <paramref name="generate"/> makes them, and the entry takes
    /// them over.
    /// </summary>
    public async Task<EncryptionMaterials> LeaseForEncryptionAsync(
        string cacheKey,
        long plaintextBytes,
        Func<Task<EncryptionMaterials>> generate,
        CancellationToken cancellationToken)
    {
        // A few rounds at most: another round is needed only when callers sharing one KMS call
        // used its data key up first. Past that, this caller takes a data key of its own.
        for (var round = 0; round < MaxRounds; round++)
        {
            ThrowIfDisposed();
            if (_encryption.TryGetValue(cacheKey, out CachedDataKey? cached) && cached is not null)
            {
                if (cached.TryLeaseForEncryption(plaintextBytes, _options.TimeProvider, _options.MaxAge, _options.MaxMessagesPerKey, _options.MaxBytesPerKey) is { } hit)
                {
                    Count(ref _encryptHits, "encrypt", "hit");
                    return hit;
                }

                // Used up or too old. Not removed here (another caller may have replaced it
                // already): the new entry below replaces it, and replacement zeroes it.
            }

            var entry = await Coalesce(encryption: true, cacheKey, async () =>
            {
                using var materials = await generate().ConfigureAwait(false);
                return new CachedDataKey(materials.DataKey, materials.Wrapped, _options.TimeProvider, materials.EncodedContext, materials.TakeSigning());
            }, cancellationToken).ConfigureAwait(false);

            if (entry.TryLeaseForEncryption(plaintextBytes, _options.TimeProvider, _options.MaxAge, _options.MaxMessagesPerKey, _options.MaxBytesPerKey) is { } leased)
            {
                return leased;
            }

            // Others who waited on the same KMS call used it up (message limit): go round again.
        }

        ThrowIfDisposed();
        Count(ref _encryptMisses, "encrypt", "miss");
        return await AwaitOrZeroAsync(generate(), static result => result.Dispose(), cancellationToken).ConfigureAwait(false);
    }

    /// <summary>A copy of a cached unwrapped data key (the caller zeroes it); on a miss <paramref name="unwrap"/> makes one.</summary>
    public async Task<byte[]> LeaseForDecryptionAsync(string cacheKey, Func<CancellationToken, Task<byte[]>> unwrap, CancellationToken cancellationToken)
    {
        if (_options.DecryptionMaxAge == TimeSpan.Zero)
        {
            Count(ref _decryptMisses, "decrypt", "miss");
            return await unwrap(cancellationToken).ConfigureAwait(false);
        }

        for (var round = 0; round < MaxRounds; round++)
        {
            ThrowIfDisposed();
            if (_decryption.TryGetValue(cacheKey, out CachedDataKey? cached) && cached is not null
                && cached.TryLease(0, _options.TimeProvider, _options.DecryptionMaxAge, long.MaxValue, long.MaxValue) is { } hit)
            {
                Count(ref _decryptHits, "decrypt", "hit");
                return hit;
            }

            var entry = await Coalesce(encryption: false, cacheKey, async () =>
            {
                var dataKey = await unwrap(CancellationToken.None).ConfigureAwait(false);
                try
                {
                    return new CachedDataKey(dataKey, [], _options.TimeProvider);
                }
                finally
                {
                    CryptographicOperations.ZeroMemory(dataKey);
                }
            }, cancellationToken).ConfigureAwait(false);

            if (entry.TryLease(0, _options.TimeProvider, _options.DecryptionMaxAge, long.MaxValue, long.MaxValue) is { } leased)
            {
                return leased;
            }
        }

        ThrowIfDisposed();
        Count(ref _decryptMisses, "decrypt", "miss");
        return await AwaitOrZeroAsync(unwrap(CancellationToken.None), static result => CryptographicOperations.ZeroMemory(result), cancellationToken).ConfigureAwait(false);
    }

    /// <summary>
    /// Drops the unwrapped data key cached for <paramref name="cacheKey"/>, if any (zeroed by its
    /// eviction): it did not decrypt a message it should have. Copies leased already are the callers'.
    /// </summary>
    public void ForgetDecryption(string cacheKey)
    {
        try
        {
            _decryption.Remove(cacheKey);
        }
        catch (ObjectDisposedException)
        {
            // Disposed meanwhile: every entry is zeroed already.
        }
    }

    /// <summary>Every entry now cached (for tests of zeroing).</summary>
    internal IEnumerable<CachedDataKey> Entries =>
        _encryption.Keys.Concat(_decryption.Keys)
            .Select(key => _encryption.Get<CachedDataKey>(key) ?? _decryption.Get<CachedDataKey>(key))
            .OfType<CachedDataKey>()
            .ToList();

    /// <summary>
    /// Test seam: called at each step of an add, an eviction and Dispose, with the entry (none for
    /// <see cref="DataKeyCacheStep.Disposing"/>); a test blocks in it to fix an interleaving.
    /// </summary>
    internal Action<DataKeyCacheStep, CachedDataKey?>? StepHook { get; set; }

    /// <summary>
    /// Zeroes every entry now: those cached, those evicted whose callback has not run yet, and
    /// those being added (whose adds are then refused). Adds that come later zero their own.
    /// </summary>
    public void Dispose()
    {
        // Set before the entries are read: pairs with the read in Track (see there).
        Interlocked.Exchange(ref _disposed, 1);
        _sweep.Dispose();

        // Keys is a snapshot taken under all of the dictionary's locks.
        foreach (var entry in _live.Keys)
        {
            Zero(entry);
        }

        StepHook?.Invoke(DataKeyCacheStep.Disposing, null);
        _encryption.Dispose();
        _decryption.Dispose();
    }

    /// <summary>
    /// Awaits the one KMS call in flight for <paramref name="cacheKey"/>, starting it if there is
    /// none, and puts its result in the cache. The call runs without the caller's token (others wait on it); each caller stops
    /// waiting when its own token is cancelled.
    /// </summary>
    private async Task<CachedDataKey> Coalesce(bool encryption, string cacheKey, Func<Task<CachedDataKey>> create, CancellationToken cancellationToken)
    {
        var (cache, maxAge, cacheName) = encryption
            ? (_encryption, _options.MaxAge, "encrypt")
            : (_decryption, _options.DecryptionMaxAge, "decrypt");
        var flightKey = (encryption ? "e" : "d") + cacheKey;
        var mine = new TaskCompletionSource<CachedDataKey>(TaskCreationOptions.RunContinuationsAsynchronously);
        var flight = _inFlight.GetOrAdd(flightKey, mine.Task);
        if (flight != mine.Task)
        {
            Count(ref _coalesced, cacheName, "coalesced");
            return await flight.WaitAsync(cancellationToken).ConfigureAwait(false);
        }

        if (encryption)
        {
            Count(ref _encryptMisses, cacheName, "miss");
        }
        else
        {
            Count(ref _decryptMisses, cacheName, "miss");
        }

        _ = Task.Run(async () =>
        {
            CachedDataKey? entry = null;
            Exception? failure = null;
            try
            {
                entry = await create().ConfigureAwait(false);
                StepHook?.Invoke(DataKeyCacheStep.Created, entry);
                Track(entry);
                if (cache.Count >= _options.Capacity)
                {
                    // A full MemoryCache refuses (and so zeroes) a new entry: make room for at
                    // least one first (Compact removes ⌊count × share⌋ entries).
                    cache.Compact(Math.Min(1.0, Math.Max(0.1, 1.5 / cache.Count)));
                }

                // Committed when disposed; a commit after the cache's disposal is dropped (no
                // callback), but Dispose has zeroed the entry then: it was tracked before.
                using (var cacheEntry = cache.CreateEntry(cacheKey))
                {
                    cacheEntry.Value = entry;
                    cacheEntry.Size = 1;
                    cacheEntry.AbsoluteExpirationRelativeToNow = maxAge;
                    cacheEntry.RegisterPostEvictionCallback(static (_, value, _, state) => ((DataKeyCache)state!).Evicted((CachedDataKey)value!), this);
                    StepHook?.Invoke(DataKeyCacheStep.Inserting, entry);
                }
            }
            catch (Exception exception)
            {
                if (entry is not null)
                {
                    Zero(entry);
                }

                failure = exception;
            }

            // Out of the in-flight table before its waiters are woken: a waiter that calls again
            // at once (the KMS answered honestly this time) must start a call of its own, not be
            // handed this one's failure again.
            _inFlight.TryRemove(new KeyValuePair<string, Task<CachedDataKey>>(flightKey, mine.Task));
            if (failure is null)
            {
                // Zeroed by a Dispose since, the entry leases nothing: its waiters go round again
                // and are refused.
                mine.SetResult(entry!);
            }
            else
            {
                mine.SetException(failure);
            }
        }, CancellationToken.None);
        return await mine.Task.WaitAsync(cancellationToken).ConfigureAwait(false);
    }

    /// <summary>
    /// Tracks a new entry before it is stored; when Dispose has begun, zeroes it instead and throws.
    /// </summary>
    /// <exception cref="ObjectDisposedException">Dispose has begun.</exception>
    private void Track(CachedDataKey entry)
    {
        _live.TryAdd(entry, 0);

        // Dispose sets the flag, then reads the tracked entries; this adds the entry, then reads
        // the flag. With a full fence on both sides (Interlocked.Exchange there), at least one of
        // them sees the other's write: Dispose zeroes the entry, or this does (or both; Dispose
        // of an entry is idempotent). No lock on the cache's paths, and no entry escapes.
        Interlocked.MemoryBarrier();
        if (Volatile.Read(ref _disposed) != 0)
        {
            Zero(entry);
            throw new ObjectDisposedException(nameof(DataKeyCache));
        }
    }

    private void Evicted(CachedDataKey entry)
    {
        StepHook?.Invoke(DataKeyCacheStep.Evicting, entry);
        Zero(entry);
    }

    private void Zero(CachedDataKey entry)
    {
        entry.Dispose();
        _live.TryRemove(entry, out _);
    }

    private void ThrowIfDisposed() => ObjectDisposedException.ThrowIf(Volatile.Read(ref _disposed) != 0, this);

    /// <summary>The task's result; if the caller stops waiting first, the secret result is zeroed when it comes.</summary>
    private static async Task<T> AwaitOrZeroAsync<T>(Task<T> task, Action<T> zero, CancellationToken cancellationToken)
    {
        try
        {
            return await task.WaitAsync(cancellationToken).ConfigureAwait(false);
        }
        catch (OperationCanceledException) when (cancellationToken.IsCancellationRequested)
        {
            _ = task.ContinueWith(
                t => zero(t.Result),
                CancellationToken.None,
                TaskContinuationOptions.OnlyOnRanToCompletion | TaskContinuationOptions.ExecuteSynchronously,
                TaskScheduler.Default);
            throw;
        }
    }

    private sealed class Sweeper(WeakReference<DataKeyCache> cache)
    {
        public ITimer? Timer { get; set; }

        public void Run()
        {
            if (cache.TryGetTarget(out var target))
            {
                target.Sweep();
            }
            else
            {
                Timer?.Dispose();
            }
        }
    }

    private void Sweep()
    {
        try
        {
            _encryption.Compact(0);
            _decryption.Compact(0);
        }
        catch (ObjectDisposedException)
        {
            // Disposed between the timer firing and now.
        }
    }

    private static void Count(ref long counter, string cache, string result)
    {
        Interlocked.Increment(ref counter);
        ClientMetrics.DataKeyCacheLookups.Add(1, new KeyValuePair<string, object?>("cache", cache), new KeyValuePair<string, object?>("result", result));
    }
}

/// <summary>
/// One cached data key: a pinned copy zeroed on dispose — or, when an encryptor is dropped
/// without being disposed, on finalization — with its usage so far; for a signed writer, with the
/// key pair whose public key its context holds.
/// </summary>
/// <remarks>
/// The entry holds one handle to its key pair and releases it on dispose (eviction, expiry,
/// replacement, the cache's dispose); each message leased from it holds another until the message
/// is signed (a streaming writer: until it completes or is disposed). So the pair is disposed when
/// the entry is and no message under it is still being written, never before. An entry dropped
/// undisposed leaves its pair to <see cref="ECDsa"/>'s own finalizer.
/// </remarks>
internal sealed class CachedDataKey : IDisposable
{
    private readonly Lock _lock = new();
    private readonly byte[] _key;
    private readonly SigningKey.Handle? _signing;
    private readonly DateTimeOffset _created;
    private readonly long _createdTimestamp;
    private long _messages;
    private long _bytes;
    private bool _disposed;

    /// <param name="dataKey">The key, copied.</param>
    /// <param name="wrapped">Its wrappings (empty for decryption).</param>
    /// <param name="time">The clocks the entry's age is read on: the wall clock and the monotonic one.</param>
    /// <param name="encodedContext">The context the data key was generated under (encryption; null for decryption).</param>
    /// <param name="signing">A signed writer's key pair, taken over (released on dispose).</param>
    public CachedDataKey(ReadOnlySpan<byte> dataKey, IReadOnlyList<WrappedDataKey> wrapped, TimeProvider time, byte[]? encodedContext = null, SigningKey.Handle? signing = null)
    {
        _key = GC.AllocateUninitializedArray<byte>(dataKey.Length, pinned: true);
        dataKey.CopyTo(_key);
        Wrapped = wrapped;
        EncodedContext = encodedContext;
        _signing = signing;
        SigningKey = signing?.Key;
        _created = time.GetUtcNow();
        _createdTimestamp = time.GetTimestamp();
    }

    // The sweep timer holds the cache weakly, so an encryptor nobody disposes is collected with
    // its entries: their keys are zeroed then (leases are copies: no caller still uses this array).
    ~CachedDataKey() => CryptographicOperations.ZeroMemory(_key);

    public IReadOnlyList<WrappedDataKey> Wrapped { get; }

    /// <summary>The context the data key was generated under, as a header carries it (null for decryption).</summary>
    public byte[]? EncodedContext { get; }

    /// <summary>For tests: the signed writer's key pair (null for suite 0x0001 and decryption).</summary>
    internal SigningKey? SigningKey { get; }

    /// <summary>For tests: the key array itself (to observe its zeroing after this entry is collected).</summary>
    internal byte[] KeyArray => _key;

    /// <summary>For tests: whether the key bytes are zero.</summary>
    internal bool IsZeroed
    {
        get
        {
            lock (_lock)
            {
                return !_key.AsSpan().ContainsAnyExcept((byte)0);
            }
        }
    }

    /// <summary>A copy of the key if the entry is alive, young enough and has room for one more message of <paramref name="bytes"/>.</summary>
    /// <remarks>
    /// Young enough by both clocks: the monotonic one (which a wall clock set back does not
    /// rewind) and the wall clock (which counts time a suspended or snapshot-restored machine
    /// was away, which the monotonic one may not); a wall clock now before the entry's creation
    /// means it was set back, and the entry is too old — a new data key costs one KMS call.
    /// </remarks>
    public byte[]? TryLease(long bytes, TimeProvider time, TimeSpan maxAge, long maxMessages, long maxBytes) =>
        TryLeaseCore(bytes, time, maxAge, maxMessages, maxBytes, out _);

    /// <summary>
    /// Materials for one message of <paramref name="bytes"/> if the entry is alive, young enough and
    /// has room (as <see cref="TryLease"/>): a copy of the
    /// key and, for a signed writer, a new handle to the entry's key pair.
    /// </summary>
    public EncryptionMaterials? TryLeaseForEncryption(long bytes, TimeProvider time, TimeSpan maxAge, long maxMessages, long maxBytes) =>
        TryLeaseCore(bytes, time, maxAge, maxMessages, maxBytes, out var signing) is { } key
            ? new EncryptionMaterials(key, Wrapped, EncodedContext!, signing)
            : null;

    private byte[]? TryLeaseCore(long bytes, TimeProvider time, TimeSpan maxAge, long maxMessages, long maxBytes, out SigningKey.Handle? signing)
    {
        signing = null;
        var wallAge = time.GetUtcNow() - _created;
        var monotonicAge = time.GetElapsedTime(_createdTimestamp);
        lock (_lock)
        {
            if (_disposed || wallAge < TimeSpan.Zero || wallAge >= maxAge || monotonicAge >= maxAge
                || _messages >= maxMessages || bytes > maxBytes - _bytes)
            {
                return null;
            }

            _messages++;
            _bytes += bytes;
            var copy = GC.AllocateUninitializedArray<byte>(_key.Length, pinned: true);
            _key.CopyTo(copy, 0);

            // Under the lock that Dispose takes: the entry's own handle is alive here.
            signing = _signing?.Share();
            return copy;
        }
    }

    public void Dispose()
    {
        lock (_lock)
        {
            _disposed = true;
            CryptographicOperations.ZeroMemory(_key);

            // The key pair goes now unless a message leased from this entry still holds it; then
            // when that message has signed (its handle is the last).
            _signing?.Dispose();
        }

        GC.SuppressFinalize(this);
    }
}

/// <summary>The steps of <see cref="DataKeyCache"/> its test seam can hold a thread at.</summary>
internal enum DataKeyCacheStep
{
    /// <summary>An add has made its entry from the KMS's answer; not yet tracked nor stored.</summary>
    Created,

    /// <summary>An add has tracked its entry and is storing it (made, not yet committed).</summary>
    Inserting,

    /// <summary>An evicted entry's callback is about to zero it.</summary>
    Evicting,

    /// <summary>Dispose has zeroed the entries it found and is about to dispose the memory caches.</summary>
    Disposing,
}
