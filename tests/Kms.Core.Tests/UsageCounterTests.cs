using Kms.Core.Crypto;
using Kms.Core.Errors;
using Kms.Core.Services;
using Kms.Testing.Fakes;

namespace Kms.Core.Tests;

/// <summary>GCM usage bounds: durable block reservations, rotation at the soft bound, refusal past the hard bound.</summary>
public sealed class UsageCounterTests : IDisposable
{
    private static readonly Caller Dev = DomainHarness.Dev;
    private readonly InMemoryStore _store = new();
    private readonly DomainHarness _domain;

    public UsageCounterTests() =>
        _domain = new DomainHarness(_store, new UsageLimitOptions { SoftBound = 10, HardBound = 20, ReservationBlock = 4 });

    public void Dispose() => _domain.Dispose();

    [Fact]
    public async Task Encryptions_ReservedInBlocks_NotOneWritePerRequest()
    {
        var key = await _domain.CreateKeyAsync("k");
        for (var i = 0; i < 5; i++)
        {
            await _domain.Crypto.EncryptAsync(Dev, key.Name, [1], EncryptionContext.Empty, default);
        }

        // Two blocks of 4 cover 5 encryptions: the durable count is 8, never less than the truth.
        Assert.Equal(8, (await _store.GetVersionAsync(key.Name.Version(1), default))!.Usage.EncryptCount);
        Assert.Equal(5, (await _domain.Keys.GetKeyVersionAsync(Dev, key.Name.Version(1), default)).Usage.EncryptCount);
    }

    [Fact]
    public async Task SoftBound_QueuesRotation_TheRotationJobRotatesOnce()
    {
        var key = await _domain.CreateKeyAsync("k");
        for (var i = 0; i < 10; i++)
        {
            await _domain.Crypto.EncryptAsync(Dev, key.Name, [1], EncryptionContext.Empty, default);
        }

        Assert.True(_domain.Usage.RotationRequests.TryRead(out var requested));
        Assert.Equal(key.Name, requested);
        Assert.True(await _domain.Keys.RotateForUsageAsync(requested, default));
        Assert.False(await _domain.Keys.RotateForUsageAsync(requested, default));
        Assert.Equal(2, (await _domain.Crypto.EncryptAsync(Dev, key.Name, [1], EncryptionContext.Empty, default)).KeyVersion.Version);
    }

    [Fact]
    public async Task HardBound_VersionRefusesToEncrypt_DecryptStillWorks()
    {
        var key = await _domain.CreateKeyAsync("k");
        byte[] last = [];
        for (var i = 0; i < 20; i++)
        {
            last = (await _domain.Crypto.EncryptAsync(Dev, key.Name, [1], EncryptionContext.Empty, default)).Ciphertext;
        }

        var e = await Assert.ThrowsAsync<KmsException>(() => _domain.Crypto.EncryptAsync(Dev, key.Name, [1], EncryptionContext.Empty, default));
        Assert.Equal(KmsErrorCode.FailedPrecondition, e.Code);
        Assert.Contains("usage limit of 20 encryptions", e.Message, StringComparison.Ordinal);
        Assert.Equal(KmsErrorCode.FailedPrecondition, (await Assert.ThrowsAsync<KmsException>(() => _domain.Crypto.GenerateDataKeyAsync(Dev, key.Name, EncryptionContext.Empty, default))).Code);
        using var decrypted = await _domain.Crypto.DecryptAsync(Dev, last, EncryptionContext.Empty, default);
    }

    [Fact]
    public async Task Count_SurvivesRestart_AndNeverGoesBackwards()
    {
        var key = await _domain.CreateKeyAsync("k");
        for (var i = 0; i < 6; i++)
        {
            await _domain.Crypto.EncryptAsync(Dev, key.Name, [1], EncryptionContext.Empty, default);
        }

        // A restart: a new counter over the same store. The unused rest of the old block is
        // counted as used (8, not 6), so the bound is reached no later than it should be.
        using var restarted = new DomainHarness(_store, _domain.Limits, _domain.Hsm);
        var allowed = 0;
        while (true)
        {
            try
            {
                await restarted.Crypto.EncryptAsync(Dev, key.Name, [1], EncryptionContext.Empty, default);
                allowed++;
            }
            catch (KmsException e) when (e.Code == KmsErrorCode.FailedPrecondition)
            {
                break;
            }
        }

        Assert.Equal(20 - 8, allowed);
        Assert.True((await _store.GetVersionAsync(key.Name.Version(1), default))!.Usage.EncryptCount >= 20);
    }

    [Fact]
    public async Task TwoNodesOnOneStore_ShareTheBound()
    {
        var key = await _domain.CreateKeyAsync("k");
        using var other = new DomainHarness(_store, _domain.Limits, _domain.Hsm);
        var total = 0;
        for (var i = 0; i < 40; i++)
        {
            var node = i % 2 == 0 ? _domain : other;
            try
            {
                await node.Crypto.EncryptAsync(Dev, key.Name, [1], EncryptionContext.Empty, default);
                total++;
            }
            catch (KmsException e) when (e.Code == KmsErrorCode.FailedPrecondition)
            {
            }
        }

        Assert.InRange(total, 1, 20);
    }

    [Fact]
    public async Task DecryptCountsAndLastUse_FlushedAndVisible()
    {
        var key = await _domain.CreateKeyAsync("k");
        var blob = (await _domain.Crypto.EncryptAsync(Dev, key.Name, [1], EncryptionContext.Empty, default)).Ciphertext;
        _domain.Time.Advance(TimeSpan.FromMinutes(5));
        for (var i = 0; i < 3; i++)
        {
            using var _ = await _domain.Crypto.DecryptAsync(Dev, blob, EncryptionContext.Empty, default);
        }

        var live = (await _domain.Keys.GetKeyVersionAsync(Dev, key.Name.Version(1), default)).Usage;
        Assert.Equal(3, live.DecryptCount);
        Assert.Equal(_domain.Time.GetUtcNow(), live.LastDecryptTime);
        Assert.True(live.LastEncryptTime < live.LastDecryptTime);

        Assert.Equal(0, (await _store.GetVersionAsync(key.Name.Version(1), default))!.Usage.DecryptCount);
        await _domain.Usage.FlushAsync(default);
        var stored = (await _store.GetVersionAsync(key.Name.Version(1), default))!.Usage;
        Assert.Equal(3, stored.DecryptCount);
        Assert.Equal(_domain.Time.GetUtcNow(), stored.LastDecryptTime);
        Assert.Equal(3, (await _domain.Keys.GetKeyVersionAsync(Dev, key.Name.Version(1), default)).Usage.DecryptCount);
    }

    [Fact]
    public async Task Flush_StoreFails_CountsKeptForTheNextFlush()
    {
        var key = await _domain.CreateKeyAsync("k");
        var blob = (await _domain.Crypto.EncryptAsync(Dev, key.Name, [1], EncryptionContext.Empty, default)).Ciphertext;
        using (await _domain.Crypto.DecryptAsync(Dev, blob, EncryptionContext.Empty, default))
        {
        }

        _store.FailNextWrite = KmsErrors.Unavailable("injected");
        await Assert.ThrowsAsync<KmsException>(() => _domain.Usage.FlushAsync(default));
        await _domain.Usage.FlushAsync(default);
        Assert.Equal(1, (await _store.GetVersionAsync(key.Name.Version(1), default))!.Usage.DecryptCount);
    }

    [Fact]
    public async Task Flush_CommittedButReportedFailed_SentAgain_CountedOnce_LaterCountsToo()
    {
        // The store applied the flush and the node was told it failed (PostgreSQL's COMMIT answer
        // lost): the same flush is sent again and changes nothing; counts made since come after it.
        var (key, blob) = await EncryptedAsync();
        await DecryptAsync(blob, 3);
        _store.FailAfterNextUsageRecord = KmsErrors.Unavailable("injected after the commit");
        await Assert.ThrowsAsync<KmsException>(() => _domain.Usage.FlushAsync(default));
        Assert.Equal(3, (await _store.GetVersionAsync(key.Name.Version(1), default))!.Usage.DecryptCount);

        await DecryptAsync(blob, 2);
        await _domain.Usage.FlushAsync(default);
        Assert.Equal(5, (await _store.GetVersionAsync(key.Name.Version(1), default))!.Usage.DecryptCount);
        Assert.Equal(5, await LiveDecryptCountAsync(key));
    }

    [Fact]
    public async Task Flush_ReadWhileItsWriteIsPending_DecryptCountNeverGoesBackwards()
    {
        var (key, blob) = await EncryptedAsync();
        await DecryptAsync(blob, 3);
        Assert.Equal(3, await LiveDecryptCountAsync(key));

        // The flush has taken the pending 3 and not committed them yet: the store still says 0.
        var (entered, release) = HoldNextUsageRecord();
        var flush = _domain.Usage.FlushAsync(default);
        await entered.Task;
        Assert.Equal(3, await LiveDecryptCountAsync(key));

        release.SetResult();
        await flush;
        Assert.Equal(3, await LiveDecryptCountAsync(key));
        Assert.Equal(3, (await _store.GetVersionAsync(key.Name.Version(1), default))!.Usage.DecryptCount);
    }

    [Fact]
    public async Task Flush_FailsAfterAReaderSawTheCounts_NothingLostNothingCountedTwice()
    {
        var (key, blob) = await EncryptedAsync();
        await DecryptAsync(blob, 3);
        Assert.Equal(3, await LiveDecryptCountAsync(key));

        var (entered, release) = HoldNextUsageRecord(fail: true);
        var flush = _domain.Usage.FlushAsync(default);
        await entered.Task;
        Assert.Equal(3, await LiveDecryptCountAsync(key));
        release.SetResult();
        await Assert.ThrowsAsync<KmsException>(() => flush);
        Assert.Equal(3, await LiveDecryptCountAsync(key));

        await DecryptAsync(blob, 1);
        await _domain.Usage.FlushAsync(default);
        Assert.Equal(4, (await _store.GetVersionAsync(key.Name.Version(1), default))!.Usage.DecryptCount);
        Assert.Equal(4, await LiveDecryptCountAsync(key));
    }

    [Fact]
    public async Task Reservation_ReadBeforeTheNodeLearnsOfItsNewBlock_EncryptCountNeverGoesBackwards()
    {
        var (key, _) = await EncryptedAsync(count: 4);
        Assert.Equal(4, await LiveEncryptCountAsync(key));

        // The fifth encryption reserves the next block (4 + 4 = 8 durable); a read between that
        // write and the node recording the block sees 8 stored and must not show 8 used.
        var entered = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var release = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        _store.AfterNextReservation = async () =>
        {
            entered.SetResult();
            await release.Task;
        };
        var fifth = _domain.Crypto.EncryptAsync(Dev, key.Name, [1], EncryptionContext.Empty, default);
        await entered.Task;
        Assert.Equal(8, (await _store.GetVersionAsync(key.Name.Version(1), default))!.Usage.EncryptCount);
        var during = await LiveEncryptCountAsync(key);
        Assert.Equal(4, during);

        release.SetResult();
        await fifth;
        Assert.Equal(5, await LiveEncryptCountAsync(key));
    }

    private async Task<(Kms.Core.Keys.Key Key, byte[] Blob)> EncryptedAsync(int count = 1)
    {
        var key = await _domain.CreateKeyAsync("k");
        byte[] blob = [];
        for (var i = 0; i < count; i++)
        {
            blob = (await _domain.Crypto.EncryptAsync(Dev, key.Name, [1], EncryptionContext.Empty, default)).Ciphertext;
        }

        return (key, blob);
    }

    private async Task DecryptAsync(byte[] blob, int times)
    {
        for (var i = 0; i < times; i++)
        {
            using var _ = await _domain.Crypto.DecryptAsync(Dev, blob, EncryptionContext.Empty, default);
        }
    }

    private async Task<long> LiveDecryptCountAsync(Kms.Core.Keys.Key key) =>
        (await _domain.Keys.GetKeyVersionAsync(Dev, key.Name.Version(1), default)).Usage.DecryptCount;

    private async Task<long> LiveEncryptCountAsync(Kms.Core.Keys.Key key) =>
        (await _domain.Keys.GetKeyVersionAsync(Dev, key.Name.Version(1), default)).Usage.EncryptCount;

    // Holds the next usage write until release is set (then fails it, with fail); entered: the flush is in it.
    private (TaskCompletionSource Entered, TaskCompletionSource Release) HoldNextUsageRecord(bool fail = false)
    {
        var entered = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var release = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        _store.BeforeNextUsageRecord = async () =>
        {
            entered.SetResult();
            await release.Task;
            if (fail)
            {
                throw KmsErrors.Unavailable("injected");
            }
        };
        return (entered, release);
    }
}
