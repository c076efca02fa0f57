using System.Security.Cryptography;
using Kms.Client.Caching;
using Kms.Client.Envelope;

namespace Kms.Client.Tests.Envelope;

/// <summary>
/// Dispose against adds, evictions and leases on other threads: once Dispose returns, no cached
/// data key is left unzeroed, and an add that comes during or after it zeroes its own. Each
/// interleaving is fixed by pausing one side at a step of the cache (its test seam), not raced.
/// </summary>
public sealed class DataKeyCacheDisposeTests
{
    private readonly FakeKeyProvider _provider = new();

    // An add had made its cache entry but not committed it when Dispose ran. MemoryCache drops a
    // commit after its disposal without a word (no eviction callback): before, that entry was
    // zeroed only by its finalizer, and the encrypt it served succeeded as if nothing happened.
    [Fact]
    public async Task Dispose_WhileAnAddIsBeingInserted_ItsKeyIsZeroedBeforeDisposeReturns_TheAddIsRefused()
    {
        var encryptor = NewEncryptor(new DataKeyCacheOptions());
        using var inserting = new Pause(DataKeyCacheStep.Inserting);
        encryptor.Cache!.StepHook = inserting.OnStep;

        var encrypt = encryptor.EncryptAsync(new byte[10]);
        var entry = await inserting.Reached;
        encryptor.Dispose();

        Assert.True(entry.IsZeroed, "a data key being inserted survived Dispose unzeroed");
        inserting.Release();
        await Assert.ThrowsAsync<ObjectDisposedException>(() => encrypt);
        Assert.True(entry.IsZeroed);
        Assert.All(_provider.HandedOut, key => Assert.False(key.AsSpan().ContainsAnyExcept((byte)0)));
    }

    // Dispose had zeroed the entries it found and not yet disposed the MemoryCache when an add
    // (its KMS call made before Dispose began) committed its entry: before, that entry stayed in
    // the disposed cache unzeroed.
    [Fact]
    public async Task Dispose_AnAddCommitsWhileDisposeIsUnderWay_TheAdderZeroesItsKey_AndIsRefused()
    {
        var encryptor = NewEncryptor(new DataKeyCacheOptions());
        using var created = new Pause(DataKeyCacheStep.Created);
        using var disposing = new Pause(DataKeyCacheStep.Disposing);
        encryptor.Cache!.StepHook = (step, entry) =>
        {
            created.OnStep(step, entry);
            disposing.OnStep(step, entry);
        };

        var encrypt = encryptor.EncryptAsync(new byte[10]);
        var entry = await created.Reached;
        // A thread of its own: the paused adder blocks a pool thread, and under a full test run the
        // pool's next thread could come late (CI once timed out here, when Reached waited 10 s).
        var dispose = Task.Factory.StartNew(encryptor.Dispose, CancellationToken.None, TaskCreationOptions.LongRunning, TaskScheduler.Default);
        await disposing.Reached;
        created.Release();
        var failure = await Record.ExceptionAsync(() => encrypt);
        disposing.Release();
        await dispose;

        Assert.True(entry.IsZeroed, "a data key added while Dispose ran survived it unzeroed");
        Assert.IsType<ObjectDisposedException>(failure);
    }

    [Fact]
    public async Task Dispose_BeforeAnAddIsStored_TheAdderZeroesItsKey_AndIsRefused()
    {
        var encryptor = NewEncryptor(new DataKeyCacheOptions());
        using var created = new Pause(DataKeyCacheStep.Created);
        encryptor.Cache!.StepHook = created.OnStep;

        var encrypt = encryptor.EncryptAsync(new byte[10]);
        var entry = await created.Reached;
        encryptor.Dispose();
        created.Release();

        await Assert.ThrowsAsync<ObjectDisposedException>(() => encrypt);
        Assert.True(entry.IsZeroed);
    }

    // An entry replaced (here: its one message used) leaves the MemoryCache at once, but its
    // eviction callback, which zeroes it, runs later on the thread pool. Before, Dispose did not
    // see it: its key outlived Dispose until that callback ran.
    [Fact]
    public async Task Dispose_WhileAReplacedEntryAwaitsItsEvictionCallback_ItsKeyIsZeroedBeforeDisposeReturns()
    {
        var encryptor = NewEncryptor(new DataKeyCacheOptions { MaxMessagesPerKey = 1 });
        using var evicting = new Pause(DataKeyCacheStep.Evicting);
        encryptor.Cache!.StepHook = evicting.OnStep;

        await encryptor.EncryptAsync(new byte[10]);
        await encryptor.EncryptAsync(new byte[10]);
        var replaced = await evicting.Reached;
        var current = Assert.Single(encryptor.Cache.Entries);
        encryptor.Dispose();

        Assert.True(replaced.IsZeroed, "a replaced data key awaiting its eviction callback survived Dispose unzeroed");
        Assert.True(current.IsZeroed);
        evicting.Release();
    }

    // A caller encrypting with a cached key holds a copy: Dispose zeroes the cache's array, never
    // the one in use (which would encrypt under zeros), and the caller zeroes its own when done.
    [Fact]
    public async Task Dispose_WhileALeasedKeyIsInUse_TheLeaseStaysIntact()
    {
        var key = RandomNumberGenerator.GetBytes(32);
        var cache = new DataKeyCache(new DataKeyCacheOptions());
        using var materials = await cache.LeaseForEncryptionAsync(
            "k",
            10,
            () => Task.FromResult(new EncryptionMaterials(key.ToArray(), [], [], null)),
            CancellationToken.None);
        var leased = materials.DataKey;
        var entry = Assert.Single(cache.Entries);

        cache.Dispose();

        Assert.True(entry.IsZeroed);
        Assert.NotSame(entry.KeyArray, leased);
        Assert.Equal(key, leased);
    }

    // Before, a second Dispose read the disposed MemoryCache and threw ObjectDisposedException
    // whenever it still held entries (a `using` after an explicit Dispose, say).
    [Fact]
    public async Task Dispose_Twice_WithKeysCached_SecondIsANoOp()
    {
        var encryptor = NewEncryptor(new DataKeyCacheOptions());
        await encryptor.EncryptAsync(new byte[10]);

        encryptor.Dispose();
        encryptor.Dispose();
    }

    [Fact]
    public async Task Encrypt_AfterDispose_ObjectDisposed_NoKmsCall()
    {
        var encryptor = NewEncryptor(new DataKeyCacheOptions());
        encryptor.Dispose();

        await Assert.ThrowsAsync<ObjectDisposedException>(() => encryptor.EncryptAsync(new byte[10]));
        Assert.Equal(0, _provider.GenerateCalls);
    }

    private EnvelopeEncryptor NewEncryptor(DataKeyCacheOptions cache) =>
        new(_provider, new EnvelopeOptions { KeyNames = ["tenants/t/keys/a"], DataKeyCache = cache });

    /// <summary>Holds the first thread that reaches <paramref name="step"/> there until released.</summary>
    private sealed class Pause(DataKeyCacheStep step) : IDisposable
    {
        private readonly TaskCompletionSource<CachedDataKey?> _reached = new(TaskCreationOptions.RunContinuationsAsynchronously);
        private readonly ManualResetEventSlim _release = new();
        private int _taken;

        /// <summary>The entry the paused thread was at (null for <see cref="DataKeyCacheStep.Disposing"/>).</summary>
        /// <remarks>
        /// 60 s is a hang guard, not a bound on how fast: the step is reached on a thread-pool
        /// thread, and a paused thread holds one, so under a full test run the next may come late
        /// (CI's 10 s once ran out here).
        /// </remarks>
        public Task<CachedDataKey> Reached => ReachedAsync();

        private async Task<CachedDataKey> ReachedAsync()
        {
            try
            {
                return (await _reached.Task.WaitAsync(TimeSpan.FromSeconds(60)))!;
            }
            catch (TimeoutException e)
            {
                throw new TimeoutException($"hang guard: no thread reached the cache's step {step} within 60 s", e);
            }
        }

        public void OnStep(DataKeyCacheStep at, CachedDataKey? entry)
        {
            if (at == step && Interlocked.Exchange(ref _taken, 1) == 0)
            {
                _reached.SetResult(entry);
                _release.Wait();
            }
        }

        public void Release() => _release.Set();

        // Released, never disposed: a thread may still be waking from the wait.
        public void Dispose() => _release.Set();
    }
}
