using Kms.Cli.Backup;
using Kms.Core.Audit;
using Kms.Core.Services;
using Kms.Storage.Sqlite;
using Kms.Testing;
using Kms.Testing.Fakes;

namespace Kms.Cli.Tests;

/// <summary>
/// What <c>kms backup restore</c> does with the data directory's record of the audit head the
/// node last saw (<c>audit/head.json</c>) against what the server's start makes of it: the
/// restore keeps it only where the restored chain passes through it, and moves it aside
/// otherwise, so it never leaves one that refuses the start.
/// </summary>
public sealed class RestoreHeadRecordTests : IDisposable
{
    private readonly string _directory = Scratch.NewPath("kms-restore-head-");
    private readonly FakeHsm _hsm = new();

    public void Dispose()
    {
        _hsm.Dispose();
        SqliteStore.ReleasePooledConnections();
        Directory.Delete(_directory, recursive: true);
    }

    // The pruned-prefix rule: a head recorded in a prefix the restored database's retention deleted
    // under a later checkpoint the audit key signed. The server passes through it (and overwrites
    // it at its first pass); the restore moves it aside, as it does a checkpoints.jsonl whose
    // newest checkpoint retention deleted. Harmless: a record the server passes through refuses
    // nothing. A head the chain holds is kept by both; one past the chain is moved aside by the
    // restore, and would refuse the server's start.
    [Fact]
    public async Task HeadInAPrefixRetentionDeleted_RestoreMovesItAside_TheServerPassesThroughIt_AHeadTheChainHoldsKept_OnePastItMoved()
    {
        var path = Path.Combine(_directory, "audit", SeenHead.FileName);
        Directory.CreateDirectory(Path.GetDirectoryName(path)!);
        await using var store = await SqliteStore.OpenAsync(new SqliteOptions { DatabasePath = Path.Combine(_directory, "kms.db") }, default);
        var log = new AuditLog(store, store, _hsm, TimeProvider.System, new AuditOptions());
        await log.InitializeAsync(default);
        for (var i = 1; i <= 12; i++)
        {
            await store.AppendAuditAsync([Entry(i)], default);
            if (i == 10)
            {
                Assert.Equal(10L, (await log.CheckpointAsync(default))?.Sequence);
            }
        }

        // Retention through checkpoint 10, under the checkpoint it signs past its record of the cut.
        var recorded = await HeadAtAsync(store, 5);
        Assert.True(await log.PruneThroughAsync(10, default) > 0);
        Assert.Equal(11L, (await store.ListAuditEventsAsync(new AuditQuery { Limit = 1 }, default))[0].Sequence);

        async Task<(bool Restore, bool Server)> DecideAsync(AuditHead head)
        {
            await File.WriteAllBytesAsync(path, new SeenHead(head, DateTimeOffset.UtcNow, log.Fingerprint).ToBytes());
            var server = new AuditLog(store, store, _hsm, TimeProvider.System, new AuditOptions());
            await server.InitializeAsync(default);
            return (await BackupRestore.PassesThroughSeenHeadAsync(store, path, default), (await server.ReadOwnHeadAsync(path, default)).PassesThrough);
        }

        Assert.Equal((false, true), await DecideAsync(recorded));
        Assert.Equal((true, true), await DecideAsync(await HeadAtAsync(store, 12)));
        Assert.Equal((false, false), await DecideAsync(new AuditHead(40, new string('a', 64))));
    }

    private static async Task<AuditHead> HeadAtAsync(SqliteStore store, long sequence)
    {
        var e = (await store.ListAuditEventsAsync(new AuditQuery { AfterSequence = sequence - 1, Limit = 1 }, default))[0];
        Assert.Equal(sequence, e.Sequence);
        return new AuditHead(e.Sequence, AuditChain.HashOf(e.Body));
    }

    private static AuditEntry Entry(int i) => new()
    {
        Time = DateTimeOffset.UtcNow,
        RequestId = $"req-{i}",
        Principal = "token:alice",
        Tenant = "dev",
        Operation = "/kms.v1.KeyManagementService/Decrypt",
        Resource = "tenants/dev/keys/k",
        Outcome = "OK",
    };
}
