using System.Collections.Concurrent;
using Kms.Client.Rewrap;

namespace Kms.Client.Tests;

/// <summary>Moving a collection of stored blobs onto the primary version, resumably.</summary>
public sealed class BlobRewrapperTests(ClientServerFixture fixture) : IClassFixture<ClientServerFixture>
{
    [Fact]
    public async Task Run_AfterRotation_EveryBlobOnThePrimary_ProgressReported()
    {
        using var client = fixture.Server.CreateClient();
        var (key, store) = await SeedAsync(client, "rewrap-all", 250);
        var rotated = await client.RotateKeyAsync(key);

        var progress = new List<RewrapProgress>();
        var report = await new BlobRewrapper(client, batchSize: 100)
            .RunAsync(Blobs(store), key, (blob, ciphertext, _) => Write(store, blob, ciphertext), progress: new SyncProgress(progress));

        Assert.Equal(250, report.Progress.Rewrapped);
        Assert.Empty(report.Failures);
        Assert.Equal([100L, 200L, 250L], progress.Select(p => p.Rewrapped));
        foreach (var (id, (ciphertext, context)) in store.Take(20))
        {
            using var decrypted = await client.DecryptAsync(ciphertext, context);
            Assert.Equal(rotated.Primary.Name, decrypted.KeyVersion);
            Assert.Equal(id, System.Text.Encoding.UTF8.GetString(decrypted.Plaintext));
        }
    }

    [Fact]
    public async Task Run_SecondTime_SkipsBlobsAlreadyOnThePrimary()
    {
        using var client = fixture.Server.CreateClient();
        var (key, store) = await SeedAsync(client, "rewrap-twice", 30);
        await client.RotateKeyAsync(key);
        var rewrapper = new BlobRewrapper(client, batchSize: 10);
        await rewrapper.RunAsync(Blobs(store), key, (blob, ciphertext, _) => Write(store, blob, ciphertext));

        var writes = 0;
        var again = await rewrapper.RunAsync(Blobs(store), key, (blob, ciphertext, _) =>
        {
            Interlocked.Increment(ref writes);
            return Write(store, blob, ciphertext);
        });

        // The first batch teaches the rewrapper the primary's header; after that, nothing is sent.
        Assert.Equal(10, again.Progress.Rewrapped);
        Assert.Equal(20, again.Progress.AlreadyCurrent);
        Assert.Equal(10, writes);
    }

    [Fact]
    public async Task Run_InterruptedMidway_ResumesAfterTheCheckpoint()
    {
        using var client = fixture.Server.CreateClient();
        var (key, store) = await SeedAsync(client, "rewrap-resume", 120);
        await client.RotateKeyAsync(key);
        var checkpointPath = Path.Combine(Path.GetTempPath(), $"rewrap-{Guid.NewGuid():N}.checkpoint");
        var checkpoint = new FileRewrapCheckpoint(checkpointPath);
        var rewrapper = new BlobRewrapper(client, batchSize: 50);

        // The writer fails on the 70th blob: batch 1 (50) completed and was checkpointed.
        var written = 0;
        await Assert.ThrowsAsync<IOException>(() => rewrapper.RunAsync(Blobs(store), key, (blob, ciphertext, _) =>
        {
            if (Interlocked.Increment(ref written) == 70)
            {
                throw new IOException("disk full");
            }

            return Write(store, blob, ciphertext);
        }, checkpoint));
        Assert.Equal(Id(49), await checkpoint.LoadAsync(default));

        var resumed = await rewrapper.RunAsync(Blobs(store), key, (blob, ciphertext, _) => Write(store, blob, ciphertext), checkpoint);
        Assert.Equal(Id(49), resumed.ResumedAfter);
        Assert.Equal(70, resumed.Progress.Seen);
        Assert.Equal(Id(119), await checkpoint.LoadAsync(default));
        File.Delete(checkpointPath);
    }

    [Fact]
    public async Task Run_UndecryptableBlob_ReportedAndLeftAlone_OthersRewrapped()
    {
        using var client = fixture.Server.CreateClient();
        var (key, store) = await SeedAsync(client, "rewrap-bad", 5);
        await client.RotateKeyAsync(key);
        var (tampered, context) = store[Id(2)];
        tampered = (byte[])tampered.Clone();
        tampered[^1] ^= 1;
        store[Id(2)] = (tampered, context);

        var report = await new BlobRewrapper(client).RunAsync(Blobs(store), key, (blob, ciphertext, _) => Write(store, blob, ciphertext));

        Assert.Equal(4, report.Progress.Rewrapped);
        var failure = Assert.Single(report.Failures);
        Assert.Equal(Id(2), failure.Id);
        Assert.Equal("decryption failed", failure.Message);
        Assert.Same(tampered, store[Id(2)].Ciphertext);
    }

    [Fact]
    public async Task Run_WithAFailure_CheckpointStopsBeforeIt_ResumedRunRetriesIt()
    {
        using var client = fixture.Server.CreateClient();
        var (key, store) = await SeedAsync(client, "rewrap-retry", 6);
        await client.RotateKeyAsync(key);
        var (good, context) = Break(store, Id(2));
        var checkpoint = new FileRewrapCheckpoint(Path.Combine(Path.GetTempPath(), $"rewrap-{Guid.NewGuid():N}.checkpoint"));
        var rewrapper = new BlobRewrapper(client, batchSize: 2);

        var first = await rewrapper.RunAsync(Blobs(store), key, (blob, ciphertext, _) => Write(store, blob, ciphertext), checkpoint);
        Assert.Equal(Id(1), first.Checkpoint);
        Assert.Equal(Id(1), await checkpoint.LoadAsync(default));
        Assert.Equal(5, first.Progress.Rewrapped);

        // The blob is repaired (say the failure was transient): the resumed run retries it and
        // recognises the blobs after it as already current.
        store[Id(2)] = (good, context);
        var second = await rewrapper.RunAsync(Blobs(store), key, (blob, ciphertext, _) => Write(store, blob, ciphertext), checkpoint);
        Assert.Empty(second.Failures);
        Assert.Equal(Id(5), second.Checkpoint);
        Assert.True(second.Progress.AlreadyCurrent >= 2, $"{second.Progress.AlreadyCurrent} recognised as current");
    }

    [Fact]
    public async Task Run_ACurrentBlobAfterAQueuedOneThatFails_CheckpointStillStopsBeforeTheFailure()
    {
        // Blobs written after a rotation sit between old ones: row-3 is already current when the
        // run reaches it, while row-2 waits in the batch and then fails. The checkpoint must not
        // move past row-2 on row-3's account, or the resumed run would never retry row-2.
        using var client = fixture.Server.CreateClient();
        var (key, store) = await SeedAsync(client, "rewrap-interleaved", 6);
        await client.RotateKeyAsync(key);
        var (current, currentContext) = store[Id(3)];
        store[Id(3)] = ((await client.ReEncryptAsync(current, key, currentContext)).Ciphertext.ToByteArray(), currentContext);
        var (good, context) = Break(store, Id(2));
        var checkpoint = new FileRewrapCheckpoint(Path.Combine(Path.GetTempPath(), $"rewrap-{Guid.NewGuid():N}.checkpoint"));
        var rewrapper = new BlobRewrapper(client, batchSize: 2);

        var first = await rewrapper.RunAsync(Blobs(store), key, (blob, ciphertext, _) => Write(store, blob, ciphertext), checkpoint);
        Assert.Equal([Id(2)], first.Failures.Select(f => f.Id));
        Assert.Equal(1, first.Progress.AlreadyCurrent);
        Assert.Equal(Id(1), first.Checkpoint);
        Assert.Equal(Id(1), await checkpoint.LoadAsync(default));

        store[Id(2)] = (good, context);
        var second = await rewrapper.RunAsync(Blobs(store), key, (blob, ciphertext, _) => Write(store, blob, ciphertext), checkpoint);
        Assert.Empty(second.Failures);
        Assert.Equal(4, second.Progress.Seen);
        Assert.Equal(Id(5), second.Checkpoint);
        var moved = (await client.ReEncryptAsync(store[Id(2)].Ciphertext, key, context)).Ciphertext.ToByteArray();
        Assert.Equal(moved.AsSpan(0, 17).ToArray(), store[Id(2)].Ciphertext.AsSpan(0, 17).ToArray());
    }

    [Fact]
    public async Task Run_BlobsOutOfOrder_Refused()
    {
        using var client = fixture.Server.CreateClient();
        var (key, store) = await SeedAsync(client, "rewrap-order", 3);
        var reversed = store.OrderByDescending(kv => kv.Key, StringComparer.Ordinal).Select(kv => new StoredBlob(kv.Key, kv.Value.Ciphertext, kv.Value.Context)).ToAsyncEnumerable();
        await Assert.ThrowsAsync<InvalidOperationException>(() => new BlobRewrapper(client).RunAsync(reversed, key, (_, _, _) => Task.CompletedTask));
    }

    private static string Id(int i) => $"row-{i:0000}";

    // Flips a bit of the stored blob (its item then fails); returns what was stored.
    private static (byte[] Ciphertext, Dictionary<string, string> Context) Break(ConcurrentDictionary<string, (byte[] Ciphertext, Dictionary<string, string> Context)> store, string id)
    {
        var (good, context) = store[id];
        var broken = (byte[])good.Clone();
        broken[^1] ^= 1;
        store[id] = (broken, context);
        return (good, context);
    }

    private static async Task<(string Key, ConcurrentDictionary<string, (byte[] Ciphertext, Dictionary<string, string> Context)> Store)> SeedAsync(KmsClient client, string keyId, int count)
    {
        var key = (await client.CreateKeyAsync("tenants/dev", $"{keyId}-{Guid.NewGuid():N}")).Name;
        var store = new ConcurrentDictionary<string, (byte[], Dictionary<string, string>)>();
        for (var i = 0; i < count; i++)
        {
            var context = new Dictionary<string, string> { ["row"] = Id(i) };
            store[Id(i)] = ((await client.EncryptAsync(key, System.Text.Encoding.UTF8.GetBytes(Id(i)), context)).Ciphertext, context);
        }

        return (key, store);
    }

    private static IAsyncEnumerable<StoredBlob> Blobs(ConcurrentDictionary<string, (byte[] Ciphertext, Dictionary<string, string> Context)> store) =>
        store.OrderBy(kv => kv.Key, StringComparer.Ordinal).Select(kv => new StoredBlob(kv.Key, kv.Value.Ciphertext, kv.Value.Context)).ToAsyncEnumerable();

    private static Task Write(ConcurrentDictionary<string, (byte[] Ciphertext, Dictionary<string, string> Context)> store, StoredBlob blob, byte[] ciphertext)
    {
        store[blob.Id] = (ciphertext, store[blob.Id].Context);
        return Task.CompletedTask;
    }

    private sealed class SyncProgress(List<RewrapProgress> into) : IProgress<RewrapProgress>
    {
        public void Report(RewrapProgress value) => into.Add(value);
    }
}
