using Kms.Core.Keys;
using Kms.Core.Names;
using Kms.Core.Services;
using Kms.Testing.Fakes;

namespace Kms.Core.Tests;

/// <summary>
/// Due destructions that keep failing (a store that refuses one key's or one version's write):
/// backed off per destruction on the time provider, the others go on, and they are counted.
/// </summary>
public sealed class DestructionBackoffTests : IDisposable
{
    private static readonly Caller Dev = DomainHarness.Dev;
    private readonly DomainHarness _domain = new();

    public void Dispose() => _domain.Dispose();

    private InMemoryStore Store => (InMemoryStore)_domain.Store;

    [Fact]
    public async Task DestroyDue_OneVersionKeepsFailing_TheKeysOtherVersionsAndOtherKeysDestroyed_ItIsRetriedAfterADoublingBackoff()
    {
        var key = await _domain.CreateKeyAsync("k");
        for (var i = 0; i < 3; i++)
        {
            await _domain.Keys.RotateKeyAsync(Dev, key.Name, null, default);
        }

        foreach (var number in new[] { 1, 2, 3 })
        {
            await _domain.Keys.ScheduleKeyVersionDestructionAsync(Dev, key.Name.Version(number), TimeSpan.FromDays(7), null, default);
        }

        var other = await _domain.CreateKeyAsync("other");
        await _domain.Keys.ScheduleKeyDeletionAsync(Dev, other.Name, TimeSpan.FromDays(7), null, default);
        var bad = key.Name.Version(2);
        var attempts = 0;
        Store.RefuseChange = change =>
        {
            if (!change.UpdatedVersions.Any(v => v.Name == bad))
            {
                return null;
            }

            attempts++;
            return new IOException("disk I/O error (injected)");
        };
        _domain.Time.Advance(TimeSpan.FromDays(7));

        var failed = await Assert.ThrowsAsync<AggregateException>(() => _domain.Keys.DestroyDueAsync(_domain.Time.GetUtcNow(), default));
        var failure = Assert.Single(failed.InnerExceptions);
        Assert.Contains(bad.ToString(), failure.Message, StringComparison.Ordinal);
        Assert.Contains("1 in a row", failure.Message, StringComparison.Ordinal);
        Assert.IsType<IOException>(failure.InnerException);
        Assert.Equal(KeyState.Destroyed, (await _domain.Keys.GetKeyVersionAsync(Dev, key.Name.Version(1), default)).State);
        Assert.Equal(KeyState.Destroyed, (await _domain.Keys.GetKeyVersionAsync(Dev, key.Name.Version(3), default)).State);
        Assert.Equal(KeyState.Destroyed, (await _domain.Keys.GetKeyAsync(Dev, other.Name, default)).State);
        Assert.Equal(KeyState.DestroyScheduled, (await _domain.Keys.GetKeyVersionAsync(Dev, bad, default)).State);
        Assert.Equal(1, _domain.Keys.FailingDestructions);

        // Passes within the back-off leave it alone (and throw nothing: nothing was attempted).
        Assert.Equal(0, await _domain.Keys.DestroyDueAsync(_domain.Time.GetUtcNow(), default));
        _domain.Time.Advance(KeyService.DestructionRetryFirstDelay - TimeSpan.FromSeconds(1));
        Assert.Equal(0, await _domain.Keys.DestroyDueAsync(_domain.Time.GetUtcNow(), default));
        Assert.Equal(1, attempts);

        _domain.Time.Advance(TimeSpan.FromSeconds(1));
        failed = await Assert.ThrowsAsync<AggregateException>(() => _domain.Keys.DestroyDueAsync(_domain.Time.GetUtcNow(), default));
        Assert.Contains("2 in a row", Assert.Single(failed.InnerExceptions).Message, StringComparison.Ordinal);
        Assert.Equal(2, attempts);

        // The second failure doubles the wait.
        _domain.Time.Advance(KeyService.DestructionRetryFirstDelay);
        Assert.Equal(0, await _domain.Keys.DestroyDueAsync(_domain.Time.GetUtcNow(), default));
        Assert.Equal(2, attempts);
        _domain.Time.Advance(KeyService.DestructionRetryFirstDelay);
        await Assert.ThrowsAsync<AggregateException>(() => _domain.Keys.DestroyDueAsync(_domain.Time.GetUtcNow(), default));
        Assert.Equal(3, attempts);

        // Once the store takes it, the next attempt destroys it and the count goes back to 0.
        Store.RefuseChange = null;
        _domain.Time.Advance(KeyService.DestructionRetryDelay(3));
        Assert.Equal(1, await _domain.Keys.DestroyDueAsync(_domain.Time.GetUtcNow(), default));
        Assert.Equal(KeyState.Destroyed, (await _domain.Keys.GetKeyVersionAsync(Dev, bad, default)).State);
        Assert.Equal(0, _domain.Keys.FailingDestructions);
    }

    [Fact]
    public async Task DestroyDue_AHundredKeysWhoseDeletionKeepsFailing_DoNotHoldBackAKeyAfterThem()
    {
        for (var i = 0; i < 100; i++)
        {
            var failing = await _domain.CreateKeyAsync($"bad-{i:000}");
            await _domain.Keys.ScheduleKeyDeletionAsync(Dev, failing.Name, TimeSpan.FromDays(7), null, default);
        }

        var good = await _domain.CreateKeyAsync("good");
        await _domain.Keys.ScheduleKeyDeletionAsync(Dev, good.Name, TimeSpan.FromDays(7), null, default);
        Store.RefuseChange = change => change.Key.Name.KeyId.StartsWith("bad-", StringComparison.Ordinal) ? new IOException("disk I/O error (injected)") : null;
        _domain.Time.Advance(TimeSpan.FromDays(7));

        // The first pass takes the hundred at the head of the due list; the next one passes over them.
        var failed = await Assert.ThrowsAsync<AggregateException>(() => _domain.Keys.DestroyDueAsync(_domain.Time.GetUtcNow(), default));
        Assert.Equal(100, failed.InnerExceptions.Count);
        Assert.Equal(1, await _domain.Keys.DestroyDueAsync(_domain.Time.GetUtcNow(), default));
        Assert.Equal(KeyState.Destroyed, (await _domain.Keys.GetKeyAsync(Dev, good.Name, default)).State);
        Assert.Equal(100, _domain.Keys.FailingDestructions);
    }

    [Fact]
    public async Task DestroyDue_AFailingDestructionAnotherNodeCompleted_ForgottenAtTheNextPass()
    {
        var key = await _domain.CreateKeyAsync("k");
        await _domain.Keys.ScheduleKeyDeletionAsync(Dev, key.Name, TimeSpan.FromDays(7), null, default);
        Store.RefuseChange = _ => new IOException("disk I/O error (injected)");
        _domain.Time.Advance(TimeSpan.FromDays(7));
        await Assert.ThrowsAsync<AggregateException>(() => _domain.Keys.DestroyDueAsync(_domain.Time.GetUtcNow(), default));
        Assert.Equal(1, _domain.Keys.FailingDestructions);

        // Another node (its own service over the same store) takes over once the back-off, which
        // it reads from the store, has passed, and succeeds.
        Store.RefuseChange = null;
        _domain.Time.Advance(KeyService.DestructionRetryFirstDelay);
        var otherNode = new KeyService(_domain.Hsm, _domain.Store, _domain.AccessStore, _domain.Time, _domain.Lifecycle, _domain.Limits, _domain.Usage);
        Assert.Equal(1, await otherNode.DestroyDueAsync(_domain.Time.GetUtcNow(), default));

        Assert.Equal(0, await _domain.Keys.DestroyDueAsync(_domain.Time.GetUtcNow(), default));
        Assert.Equal(0, _domain.Keys.FailingDestructions);
    }

    [Fact]
    public async Task DestroyDue_ARestartOrAnotherNodeTakingOver_GoesOnWithTheBackoffRecordedInTheStore()
    {
        var key = await _domain.CreateKeyAsync("k");
        await _domain.Keys.ScheduleKeyDeletionAsync(Dev, key.Name, TimeSpan.FromDays(7), null, default);
        var attempts = 0;
        Store.RefuseChange = _ =>
        {
            attempts++;
            return new IOException("disk I/O error (injected)");
        };
        _domain.Time.Advance(TimeSpan.FromDays(7));
        await Assert.ThrowsAsync<AggregateException>(() => _domain.Keys.DestroyDueAsync(_domain.Time.GetUtcNow(), default));
        _domain.Time.Advance(KeyService.DestructionRetryFirstDelay);
        await Assert.ThrowsAsync<AggregateException>(() => _domain.Keys.DestroyDueAsync(_domain.Time.GetUtcNow(), default));
        Assert.Equal(2, attempts);

        // The next leader (a new service over the same store: a restart, or another node) within
        // the second back-off (2 min) leaves it alone, and counts it.
        KeyService NextLeader() => new(_domain.Hsm, _domain.Store, _domain.AccessStore, _domain.Time, _domain.Lifecycle, _domain.Limits, _domain.Usage);
        var next = NextLeader();
        Assert.Equal(0, await next.DestroyDueAsync(_domain.Time.GetUtcNow(), default));
        Assert.Equal(1, next.FailingDestructions);
        _domain.Time.Advance(KeyService.DestructionRetryDelay(2) - TimeSpan.FromSeconds(1));
        Assert.Equal(0, await NextLeader().DestroyDueAsync(_domain.Time.GetUtcNow(), default));
        Assert.Equal(2, attempts);

        // Then it tries, and its failure is the third in a row (4 min), since the first.
        _domain.Time.Advance(TimeSpan.FromSeconds(1));
        var failed = await Assert.ThrowsAsync<AggregateException>(() => NextLeader().DestroyDueAsync(_domain.Time.GetUtcNow(), default));
        Assert.Contains("3 in a row", Assert.Single(failed.InnerExceptions).Message, StringComparison.Ordinal);
        Assert.Equal(3, attempts);
        _domain.Time.Advance(KeyService.DestructionRetryDelay(3) - TimeSpan.FromSeconds(1));
        Assert.Equal(0, await NextLeader().DestroyDueAsync(_domain.Time.GetUtcNow(), default));
        Assert.Equal(3, attempts);

        // A destruction that succeeds clears it: nothing failing for any node after.
        Store.RefuseChange = null;
        _domain.Time.Advance(TimeSpan.FromSeconds(1));
        Assert.Equal(1, await NextLeader().DestroyDueAsync(_domain.Time.GetUtcNow(), default));
        Assert.Empty(await _domain.Store.ListDestructionFailuresAsync(default));
        var after = NextLeader();
        Assert.Equal(0, await after.DestroyDueAsync(_domain.Time.GetUtcNow(), default));
        Assert.Equal(0, after.FailingDestructions);
    }

    [Fact]
    public async Task DestroyDue_TheStoreRefusesTheFailuresRecordToo_BackedOffOnThisNode_StopReporting_Zero()
    {
        var key = await _domain.CreateKeyAsync("k");
        await _domain.Keys.ScheduleKeyDeletionAsync(Dev, key.Name, TimeSpan.FromDays(7), null, default);
        var attempts = 0;
        Store.RefuseChange = _ =>
        {
            attempts++;
            Store.FailNextWrite = new IOException("disk full (injected)"); // the record's write, next
            return new IOException("disk I/O error (injected)");
        };
        _domain.Time.Advance(TimeSpan.FromDays(7));
        var failed = await Assert.ThrowsAsync<AggregateException>(() => _domain.Keys.DestroyDueAsync(_domain.Time.GetUtcNow(), default));
        Assert.Contains("on this node only", Assert.Single(failed.InnerExceptions).Message, StringComparison.Ordinal);
        Assert.Empty(await _domain.Store.ListDestructionFailuresAsync(default));
        Assert.Equal(0, await _domain.Keys.DestroyDueAsync(_domain.Time.GetUtcNow(), default));
        Assert.Equal(1, attempts);
        Assert.Equal(1, _domain.Keys.FailingDestructions);

        // Another node took the lease: this one reports nothing.
        _domain.Keys.StopReportingDestructions();
        Assert.Equal(0, _domain.Keys.FailingDestructions);
    }

    [Theory]
    [InlineData(1, 1)]
    [InlineData(2, 2)]
    [InlineData(3, 4)]
    [InlineData(7, 60)]
    [InlineData(100, 60)]
    [InlineData(int.MaxValue, 60)]
    public void DestructionRetryDelay_DoublesFromTheFirst_CappedAtTheMaximum(int failures, int minutes) =>
        Assert.Equal(TimeSpan.FromMinutes(minutes), KeyService.DestructionRetryDelay(failures));
}
