using System.Security.Cryptography;
using Kms.Core.Keys;
using Kms.Core.Ports;
using Kms.Testing;
using Microsoft.Extensions.Logging.Abstractions;

namespace Kms.Hsm.Tests;

/// <summary>
/// SoftHSM keeps about 250 bytes of every destroyed session object until <c>C_Finalize</c>
/// (HSM-NOTES, <c>bench hsm-churn</c>), so the adapter re-initialises the module after a number of
/// them (<see cref="HsmProfile.RecycleAfterDestroyedObjects"/>). A recycle must be invisible to
/// callers: no call fails, ciphertexts made before it decrypt after it, the domain key is the same.
/// </summary>
[Collection(ReinitializationGroup.Name)]
public sealed class RecycleTests
{
    [Theory]
    [InlineData(10)] // bounded calls: each native call runs on its own task
    [InlineData(0)] // unbounded: on the caller's thread
    public async Task CopiesChurnPastTheThreshold_ModuleReinitialisedBetweenCalls_NoCallFails(int callTimeoutSeconds)
    {
        var options = SoftHsm.CreateToken().Options(cacheCapacity: 4);
        options.RecycleAfterDestroyedObjects = 40;
        options.CallTimeout = TimeSpan.FromSeconds(callTimeoutSeconds);
        var logger = new ListLogger();
        await using var hsm = Pkcs11Hsm.Open(options, logger);
        var keys = new KeyMaterialRef[24];
        var sealedBefore = new byte[keys.Length][];
        for (var i = 0; i < keys.Length; i++)
        {
            keys[i] = new KeyMaterialRef(KeyVersionId.NewId(), await hsm.GenerateAes256KeyAsync(default));
            sealedBefore[i] = await hsm.EncryptAesGcmAsync(keys[i], new byte[12], [], [(byte)i], default);
        }

        var moduleGeneration = hsm.Module.Generation;
        var checkValue = hsm.DomainKeyCheckValue;

        // Four callers, each asking for keys the cache of 4 cannot all hold: nearly every call
        // unwraps a copy and destroys another (the evicted copy, by a later call holding a
        // session), so the threshold of 40 is crossed again and again while calls are running.
        // They go on until three recycles have happened, or for at most a minute: a round count
        // once ran out on a loaded CI machine with one recycle done, so the bound is time.
        var giveUpAt = DateTime.UtcNow + TimeSpan.FromMinutes(1);
        var rounds = new int[4];
        var workers = Enumerable.Range(0, 4).Select(worker => Task.Run(async () =>
        {
            for (var i = 0; hsm.Recycles < 3 && DateTime.UtcNow < giveUpAt; i++)
            {
                var k = (worker * 7 + i * 5) % keys.Length;
                Assert.Equal([(byte)k], await hsm.DecryptAesGcmAsync(keys[k], new byte[12], [], sealedBefore[k], default));
                var iv = RandomNumberGenerator.GetBytes(12);
                var plaintext = RandomNumberGenerator.GetBytes(1 + i % 40);
                var sealedNow = await hsm.EncryptAesGcmAsync(keys[k], iv, [], plaintext, default);
                Assert.Equal(plaintext, await hsm.DecryptAesGcmAsync(keys[k], iv, [], sealedNow, default));
                rounds[worker] = i + 1;
            }
        })).ToList();
        await Task.WhenAll(workers);
        // A recycle the last calls started: let it finish before counting. 60 s is a hang guard: 200
        // rounds of 50 ms (about 10 s) could run out first on a loaded machine, where the recycle's
        // own task (Task.Run) waits for a pool thread and SoftHSM re-reads the token.
        var finishing = DateTime.UtcNow + TimeSpan.FromSeconds(60);
        while (hsm.Recycling)
        {
            Assert.True(DateTime.UtcNow < finishing, $"hang guard: a recycle still under way 60 s after the calls ended ({hsm.Recycles} done)");
            await Task.Delay(50);
        }

        Assert.True(hsm.Recycles >= 3, $"{hsm.Recycles} recycles after {string.Join("/", rounds)} rounds, module generation {moduleGeneration} -> {hsm.Module.Generation}, {hsm.Module.DestroyedObjects} destroyed since; log: {string.Join(" | ", logger.Messages)}");
        Assert.True(hsm.Module.Generation > moduleGeneration); // (one recycle may have begun during the set-up)
        Assert.Equal(checkValue, hsm.DomainKeyCheckValue);
        Assert.Equal(hsm.Recycles, hsm.HeapTrims); // what C_Finalize freed handed back each time
        Assert.Equal(hsm.Recycles, logger.Messages.Count(m => m.Contains("re-initialised after", StringComparison.Ordinal)));
        Assert.DoesNotContain(logger.Messages, m => m.Contains("lost", StringComparison.Ordinal) || m.Contains("failed", StringComparison.Ordinal));
    }

    [Fact]
    public async Task RecycleBeginsWhileACallHoldsASession_TheCallFinishesOnTheRetiringGeneration()
    {
        // CI once failed the churn test above with "the HSM is being re-initialised": a caller that
        // held a session but had not yet entered the module gate found the generation retired and
        // started again, once per recycle it met, until its attempts ran out. The recycle's drain
        // waits for every lease, so such a caller can finish where it is. Here: call A hangs in the
        // (shared) module gate, an exclusive user queues behind it, so call B, holding the other
        // session, queues at the gate behind that; then a recycle begins.
        var options = SoftHsm.CreateToken().Options(sessions: 2);
        options.RecycleAfterDestroyedObjects = 0; // only this test starts the recycle
        options.CallTimeout = TimeSpan.Zero; // each native call on its caller's thread
        await using var hsm = Pkcs11Hsm.Open(options, NullLogger.Instance);
        var key = new KeyMaterialRef(KeyVersionId.NewId(), await hsm.GenerateAes256KeyAsync(default));
        var sealedBytes = await hsm.EncryptAesGcmAsync(key, new byte[12], [], [1, 2, 3], default);
        var moduleGeneration = hsm.Module.Generation;
        var giveUpAt = DateTime.UtcNow + TimeSpan.FromMinutes(1);

        hsm.Faults.Hang();
        Task<byte[]> first, second;
        Task<int> exclusive;
        try
        {
            first = Task.Run(async () => await hsm.DecryptAesGcmAsync(key, new byte[12], [], sealedBytes, default));
            while (hsm.Faults.HungCalls == 0 && DateTime.UtcNow < giveUpAt)
            {
                await Task.Delay(10);
            }

            exclusive = Task.Run(() => hsm.Module.Exclusive(_ => 0));
            while (hsm.Module.WaitingExclusive == 0 && DateTime.UtcNow < giveUpAt)
            {
                await Task.Delay(10);
            }

            second = Task.Run(async () => await hsm.DecryptAesGcmAsync(key, new byte[12], [], sealedBytes, default));
            while (hsm.SessionsInUse < 2 && DateTime.UtcNow < giveUpAt)
            {
                await Task.Delay(10);
            }

            Assert.Equal(1, hsm.Faults.HungCalls);
            Assert.Equal(2, hsm.SessionsInUse);
            Assert.True(hsm.TryStartRecycle());
            while (!hsm.Retiring && DateTime.UtcNow < giveUpAt)
            {
                await Task.Delay(10);
            }

            Assert.True(hsm.Retiring);
        }
        finally
        {
            hsm.Faults.Clear(); // also when an assertion failed: disposing waits for the hung call
        }

        Assert.Equal([1, 2, 3], await first);
        Assert.Equal([1, 2, 3], await second);
        Assert.Equal(0, await exclusive);
        while (hsm.Recycling && DateTime.UtcNow < giveUpAt)
        {
            await Task.Delay(10);
        }

        Assert.Equal(1, hsm.Recycles);
        Assert.True(hsm.Module.Generation > moduleGeneration);
        Assert.Equal(0, hsm.StaleRestarts); // B ran on the generation it held, not on the next one
        Assert.Equal([1, 2, 3], await hsm.DecryptAesGcmAsync(key, new byte[12], [], sealedBytes, default));
    }

    [Fact]
    public async Task ThresholdZero_NeverRecycles()
    {
        var options = SoftHsm.CreateToken().Options(cacheCapacity: 2);
        options.RecycleAfterDestroyedObjects = 0;
        await using var hsm = Pkcs11Hsm.Open(options, NullLogger.Instance);
        var keys = new KeyMaterialRef[6];
        for (var i = 0; i < keys.Length; i++)
        {
            keys[i] = new KeyMaterialRef(KeyVersionId.NewId(), await hsm.GenerateAes256KeyAsync(default));
        }

        // Evicted copies are destroyed by later calls (MemoryCache reports evictions asynchronously):
        // call until 50 have been, whatever the pace.
        var moduleGeneration = hsm.Module.Generation;
        for (var i = 0; hsm.Module.DestroyedObjects < 56 && i < 20_000; i++)
        {
            _ = await hsm.EncryptAesGcmAsync(keys[i % keys.Length], new byte[12], [], [1], default);
        }

        Assert.Equal(0, hsm.Recycles);
        Assert.Equal(moduleGeneration, hsm.Module.Generation);
        Assert.True(hsm.Module.DestroyedObjects >= 56, $"{hsm.Module.DestroyedObjects} destroyed"); // the churn happened, and nothing gave it back
    }

    [Fact]
    public async Task ModuleReinitialisedByAnotherUser_NextCallStartsAgainAndServes()
    {
        // A region's adapter shares the module: its recovery (or recycle) re-initialises the
        // library under this one, whose sessions died with it. The next call is no failure.
        await using var hsm = Pkcs11Hsm.Open(SoftHsm.CreateToken().Options(), NullLogger.Instance);
        var key = new KeyMaterialRef(KeyVersionId.NewId(), await hsm.GenerateAes256KeyAsync(default));
        var sealedBytes = await hsm.EncryptAesGcmAsync(key, new byte[12], [], [7, 7], default);
        var checkValue = hsm.DomainKeyCheckValue;

        hsm.Module.Reinitialize(hsm.Module.Generation);

        Assert.Equal([7, 7], await hsm.DecryptAesGcmAsync(key, new byte[12], [], sealedBytes, default));
        Assert.Equal(checkValue, hsm.DomainKeyCheckValue);
    }
}
