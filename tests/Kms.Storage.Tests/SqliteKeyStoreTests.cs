using System.Security.Cryptography;
using Kms.Core.Access;
using Kms.Core.Crypto;
using Kms.Core.Keys;
using Kms.Core.Names;
using Kms.Core.Ports;
using Kms.Storage.Sqlite;
using Kms.Testing;
using Microsoft.Data.Sqlite;

namespace Kms.Storage.Tests;

public sealed class SqliteKeyStoreTests : QuorumStoreContract, IDisposable
{
    private readonly string _directory = Path.Combine(Path.GetTempPath(), "kms-sqlite-" + Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(6)));

    private string DatabasePath => Path.Combine(_directory, "kms.db");

    protected override async Task<IKeyStore> CreateStoreAsync() => await OpenAsync();

    // The backup manifest the audit key signs names the snapshot's audit head. Where the copy
    // holds no event (retention cut the whole log) that head is its newest checkpoint row: only one
    // the audit key signed as a checkpoint of it is reported; a database writer's row planted above
    // refuses the snapshot UNAVAILABLE (before, its head went into the signed manifest).
    [Fact]
    public async Task Snapshot_NoEventStored_HeadFromACheckpointRowTheAuditKeyDidNotSign_Refused_ASignedOneReported()
    {
        var store = await OpenAsync();
        store.RequireSignedCheckpointHead(row => row.Signature.AsSpan().SequenceEqual((byte[])[1, 2, 3]));
        var events = await store.AppendAuditAsync([Entry(1), Entry(2), Entry(3)], default);
        await store.AddAuditCheckpointAsync(Checkpoint(events[2]), default);
        Assert.Equal(3, (await store.PruneAuditAsync(3, default)).Events);

        var signed = await store.SnapshotAsync(Path.Combine(_directory, "signed.db"), default);
        Assert.Equal((new Kms.Core.Audit.AuditHead(3, events[2].Hash), 3L), (signed.AuditHead, signed.HeadCheckpoint?.Sequence));

        var forged = new string('f', 64);
        var time = DateTimeOffset.UnixEpoch;
        await store.AddAuditCheckpointAsync(new Kms.Core.Audit.AuditCheckpoint(7, forged, time, "sha256:00", Kms.Core.Audit.AuditChain.CheckpointBody(7, forged, time, "sha256:00"), [9]), default);
        var refused = await Assert.ThrowsAsync<Kms.Core.Errors.KmsException>(() => store.SnapshotAsync(Path.Combine(_directory, "planted.db"), default));
        Assert.Equal(Kms.Core.Errors.KmsErrorCode.Unavailable, refused.Code);

        // Read back without the audit key, the file says where its head came from.
        var read = await SqliteStore.ReadSnapshotAsync(Path.Combine(_directory, "planted.db"), default);
        Assert.Equal((7L, 7L), (read.AuditHead.Sequence, read.HeadCheckpoint?.Sequence));
    }

    // A trigger, as a disk or constraint fault would: the store's own statement fails inside its transaction.
    protected override async Task<IAsyncDisposable> FailRoleBindingWritesAsync(IKeyStore store)
    {
        await ExecuteAsync("CREATE TRIGGER fail_role_bindings BEFORE INSERT ON role_bindings BEGIN SELECT RAISE(ABORT, 'injected: role binding write refused'); END");
        return new Undo(() => ExecuteAsync("DROP TRIGGER fail_role_bindings"));
    }

    public void Dispose()
    {
        SqliteConnection.ClearAllPools();
        Directory.Delete(_directory, recursive: true);
    }

    [Fact]
    public void MaintenanceLock_ReleasedAMomentAfterTheAsk_Taken_OneKeptHeld_Refused()
    {
        // As when the releasing process's child holds the lock's description until its exec.
        Directory.CreateDirectory(_directory);
        var first = SqliteStore.TryTakeMaintenanceLock(DatabasePath);
        Assert.NotNull(first);
        var releaser = new Thread(() =>
        {
            Thread.Sleep(200);
            first.Dispose();
        });
        releaser.Start();
        using (var second = SqliteStore.TryTakeMaintenanceLock(DatabasePath))
        {
            Assert.NotNull(second);
            releaser.Join();

            // Held for good: refused once the grace has passed.
            Assert.Null(SqliteStore.TryTakeMaintenanceLock(DatabasePath));
        }
    }

    [Fact]
    public async Task Open_ConnectionsUseWalFullSyncAndSecureDelete()
    {
        var store = await OpenAsync();

        // Twice: the pragmas run once per physical connection, and a pooled one keeps them.
        for (var i = 0; i < 2; i++)
        {
            Assert.Equal("wal", await store.ReadPragmaAsync("journal_mode", default));
            Assert.Equal("2", await store.ReadPragmaAsync("synchronous", default));
            Assert.Equal("1", await store.ReadPragmaAsync("secure_delete", default));
            Assert.Equal("1", await store.ReadPragmaAsync("foreign_keys", default));
            Assert.Equal("5000", await store.ReadPragmaAsync("busy_timeout", default));
        }
    }

    [Fact]
    public async Task Open_DatabaseFileIsOwnerOnly()
    {
        await OpenAsync();
        Assert.Equal(UnixFileMode.UserRead | UnixFileMode.UserWrite, File.GetUnixFileMode(DatabasePath));
    }

    [Fact]
    public async Task MutationInAnAuditScope_CommitsItsEventInTheSameTransaction_OnlyIfItChangedSomething()
    {
        var store = await OpenAsync();
        var scope = new Kms.Core.Audit.AuditScope(Entry(1) with { Operation = "/kms.v1.KeyManagementService/CreateKey", Outcome = "UNKNOWN" }, mutating: true);
        using (Kms.Core.Audit.AuditScope.Enter(scope))
        {
            // A write that fails (the key exists) rolls back its event with it.
            await store.CreateKeyAsync(NewKey(Dev, "audited"), Material(), null, default);
            Assert.True(scope.Written);
            await Assert.ThrowsAsync<Kms.Core.Errors.KmsException>(() => store.CreateKeyAsync(NewKey(Dev, "audited"), Material(), null, default));
        }

        var events = await store.ListAuditEventsAsync(new Kms.Core.Audit.AuditQuery(), default);
        Assert.Equal(("OK", "/kms.v1.KeyManagementService/CreateKey"), (Assert.Single(events).Entry.Outcome, events[0].Entry.Operation));

        var failing = new Kms.Core.Audit.AuditScope(Entry(2), mutating: true);
        using (Kms.Core.Audit.AuditScope.Enter(failing))
        {
            await Assert.ThrowsAsync<Kms.Core.Errors.KmsException>(() => store.CreateKeyAsync(NewKey(Dev, "audited"), Material(), null, default));

            // A write that changes nothing (no such tenant row) carries no event either.
            Assert.False(await store.UpdateTenantAsync(new Kms.Core.Access.Tenant(Kms.Core.Names.TenantId.Parse("nowhere"), "", Kms.Core.Access.TenantState.Active, DateTimeOffset.UnixEpoch), default));
            Assert.False(failing.Written);
        }

        var reader = new Kms.Core.Audit.AuditScope(Entry(3), mutating: false);
        using (Kms.Core.Audit.AuditScope.Enter(reader))
        {
            await store.CreateKeyAsync(NewKey(Dev, "by-a-reader"), Material(), null, default);
            Assert.False(reader.Written);
        }

        Assert.Single(await store.ListAuditEventsAsync(new Kms.Core.Audit.AuditQuery(), default));
    }

    [Fact]
    public async Task MutationInAnAuditScope_ItsEventCannotBeWritten_TheMutationIsNotCommittedEither()
    {
        var store = await OpenAsync();
        await using (var connection = new SqliteConnection($"Data Source={DatabasePath};Pooling=False"))
        {
            await connection.OpenAsync();
            await using var refuse = connection.CreateCommand();
            refuse.CommandText = "CREATE TRIGGER refuse_audit BEFORE INSERT ON audit_events BEGIN SELECT RAISE(ABORT, 'no audit event'); END";
            await refuse.ExecuteNonQueryAsync();
        }

        var scope = new Kms.Core.Audit.AuditScope(Entry(1) with { Operation = "/kms.v1.KeyManagementService/CreateKey", Outcome = "UNKNOWN" }, mutating: true);
        using (Kms.Core.Audit.AuditScope.Enter(scope))
        {
            await Assert.ThrowsAsync<Kms.Core.Errors.KmsException>(() => store.CreateKeyAsync(NewKey(Dev, "unaudited"), Material(), null, default));
        }

        // One transaction: the key went with its event (a key committed before its event was written would be here).
        await using (var connection = new SqliteConnection($"Data Source={DatabasePath};Pooling=False"))
        {
            await connection.OpenAsync();
            await using var count = connection.CreateCommand();
            count.CommandText = "SELECT (SELECT count(*) FROM keys) + (SELECT count(*) FROM key_versions) + (SELECT count(*) FROM audit_events)";
            Assert.Equal(0L, (long)(await count.ExecuteScalarAsync())!);
        }
    }

    [Fact]
    public async Task Reopen_AfterPoolsCleared_KeepsCommittedKeys()
    {
        var store = await OpenAsync();
        var key = NewKey(Dev, "durable");
        await store.CreateKeyAsync(key, Material(), null, default);
        SqliteConnection.ClearAllPools();

        var reopened = await OpenAsync();
        Assert.Equal(key.Primary.Id, (await reopened.GetKeyAsync(key.Name, default))!.Primary.Id);
    }

    [Fact]
    public async Task Open_Twice_MigrationsAppliedOnce()
    {
        await OpenAsync();
        await OpenAsync();
        await using var connection = new SqliteConnection($"Data Source={DatabasePath}");
        await connection.OpenAsync();
        await using var command = connection.CreateCommand();
        command.CommandText = "SELECT count(*) FROM schema_migrations";
        Assert.Equal((long)SqliteSchema.LatestVersion, await command.ExecuteScalarAsync());
    }

    [Fact]
    public async Task Open_SchemaNewerThanCode_Refused()
    {
        await OpenAsync();
        await using (var connection = new SqliteConnection($"Data Source={DatabasePath}"))
        {
            await connection.OpenAsync();
            await using var command = connection.CreateCommand();
            command.CommandText = "INSERT INTO schema_migrations (version, applied_time) VALUES (999, 0)";
            await command.ExecuteNonQueryAsync();
        }

        SqliteConnection.ClearAllPools();
        var e = await Assert.ThrowsAsync<InvalidOperationException>(() => OpenAsync());
        Assert.Contains("newer", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Store_DatabaseLockedByAnotherWriter_UnavailableNotCrash()
    {
        await using var store = await SqliteStore.OpenAsync(new SqliteOptions { DatabasePath = DatabasePath, BusyTimeout = TimeSpan.FromMilliseconds(200) }, default);
        await using var blocker = new SqliteConnection($"Data Source={DatabasePath};Pooling=False");
        await blocker.OpenAsync();
        await using var transaction = blocker.BeginTransaction(deferred: false);

        var e = await Assert.ThrowsAsync<Kms.Core.Errors.KmsException>(() => store.CreateKeyAsync(NewKey(Dev, "blocked"), Material(), null, default));
        Assert.Equal(Kms.Core.Errors.KmsErrorCode.Unavailable, e.Code);
        Assert.DoesNotContain("SQLite", e.Message, StringComparison.OrdinalIgnoreCase);
    }

    [Fact]
    public async Task Store_DiskFull_UnavailableNotCrash_NoPathNorSqliteMessage()
    {
        // A real full disk (a tmpfs; root, as in CI). The server's answer cannot show this: the
        // failed call's own audit event fails too, and its UNAVAILABLE would mask an unmapped error.
        Directory.CreateDirectory(_directory);
        Tmpfs.Mount(_directory, "4m");
        try
        {
            var store = await OpenAsync();
            await store.CreateKeyAsync(NewKey(Dev, "before"), Material(), null, default);
            Tmpfs.Fill(Path.Combine(_directory, "filler"));

            Kms.Core.Errors.KmsException? refused = null;
            for (var i = 0; i < 500 && refused is null; i++)
            {
                try
                {
                    await store.CreateKeyAsync(NewKey(Dev, $"full-{i}"), new WrappedKeyMaterial(RandomNumberGenerator.GetBytes(4000)), null, default);
                }
                catch (Kms.Core.Errors.KmsException e)
                {
                    refused = e;
                }
            }

            Assert.NotNull(refused);
            Assert.Equal(Kms.Core.Errors.KmsErrorCode.Unavailable, refused.Code);
            Assert.DoesNotContain("SQLite", refused.Message, StringComparison.OrdinalIgnoreCase);
            Assert.DoesNotContain(_directory, refused.Message, StringComparison.Ordinal);
        }
        finally
        {
            Tmpfs.Unmount(_directory);
        }
    }

    [Fact]
    public async Task DestroyedMaterial_NotInTheDatabaseFileNorItsWal()
    {
        var store = await OpenAsync();
        var key = NewKey(Dev, "shred");
        var material = new WrappedKeyMaterial(RandomNumberGenerator.GetBytes(40));
        await store.CreateKeyAsync(key, material, null, default);
        await store.UpdateKeyAsync(key.Name, current => Rotation(current, Material()), default);

        // Before: the wrapped bytes are on disk (so the scan can find them).
        Assert.True(DatabaseFiles.Contain(DatabasePath, material.Bytes.ToArray()), "the scan does not see stored material");

        await store.UpdateKeyAsync(key.Name, current => new KeyChange(current.Key)
        {
            UpdatedVersions = [current.Versions[0] with { State = KeyState.Destroyed, DestroyEventTime = key.CreateTime }],
        }, default);
        SqliteConnection.ClearAllPools();

        Assert.False(DatabaseFiles.Contain(DatabasePath, material.Bytes.ToArray()), "destroyed material is still in kms.db or kms.db-wal");
        Assert.True(new FileInfo(DatabasePath + "-wal") is { Exists: false } or { Length: 0 });
    }

    [Fact]
    public async Task ExpiredImportJob_ErasedFromTheDatabaseAndItsWal()
    {
        var store = await OpenAsync();
        var material = new WrappedKeyMaterial(RandomNumberGenerator.GetBytes(48));
        var created = DateTimeOffset.FromUnixTimeMilliseconds(1_800_000_000_000);
        var job = new ImportJob(
            ImportJobName.Parse("tenants/dev/importJobs/old", "name"),
            Kms.Core.Ports.ImportMethod.RsaOaep3072Sha1Aes256,
            KeyVersionId.NewId(),
            new SubjectPublicKey(RandomNumberGenerator.GetBytes(64)),
            created,
            created + ImportJob.Lifetime);
        await store.CreateImportJobAsync(job, material, default);
        Assert.Empty(await store.EraseExpiredImportJobsAsync(created, default));
        Assert.True(DatabaseFiles.Contain(DatabasePath, material.Bytes.ToArray()), "the scan does not see stored material");

        Assert.Equal([job.MaterialId], await store.EraseExpiredImportJobsAsync(job.ExpireTime, default));
        SqliteConnection.ClearAllPools();

        Assert.Null((await store.GetImportJobAsync(job.Name, default))!.Material);
        Assert.False(DatabaseFiles.Contain(DatabasePath, material.Bytes.ToArray()), "an expired job's private key is still in kms.db or kms.db-wal");
    }

    [Fact]
    public async Task DestroyedMaterial_ReaderHoldsOldSnapshot_ErasurePendingThenCompletedOnALaterPass()
    {
        var store = await OpenAsync();
        var key = NewKey(Dev, "held");
        var material = new WrappedKeyMaterial(RandomNumberGenerator.GetBytes(40));
        await store.CreateKeyAsync(key, material, null, default);
        await store.UpdateKeyAsync(key.Name, current => Rotation(current, Material()), default);

        // A reader in the middle of a transaction keeps the old snapshot (and its WAL frames) alive.
        await using (var reader = await HoldSnapshotAsync())
        {
            await store.UpdateKeyAsync(key.Name, current => new KeyChange(current.Key)
            {
                UpdatedVersions = [current.Versions[0] with { State = KeyState.Destroyed, DestroyEventTime = key.CreateTime }],
            }, default);

            Assert.False(await store.CompleteErasureAsync(default));
            Assert.True(DatabaseFiles.Contain(DatabasePath, material.Bytes.ToArray()), "the scan cannot see the pending material");
        }

        Assert.True(await store.CompleteErasureAsync(default));

        // The erasure's short busy timeout does not stay on the pooled connection it used.
        await using (var pooled = await store.OpenConnectionAsync(default))
        await using (var timeout = pooled.CreateCommand())
        {
            timeout.CommandText = "PRAGMA busy_timeout";
            Assert.Equal(5000L, (long)(await timeout.ExecuteScalarAsync())!);
        }

        SqliteConnection.ClearAllPools();
        Assert.False(DatabaseFiles.Contain(DatabasePath, material.Bytes.ToArray()), "material still on disk after the erasure completed");
        Assert.True(await store.CompleteErasureAsync(default));
    }

    [Fact]
    public async Task ErasureMark_EachErasureRecordsItsOwn_SoAnEarlierCompleterCannotClearALaterOne()
    {
        var store = await OpenAsync();
        var key = NewKey(Dev, "marked");
        await store.CreateKeyAsync(key, Material(), null, default);
        await store.UpdateKeyAsync(key.Name, current => Rotation(current, Material()), default);
        await store.UpdateKeyAsync(key.Name, current => Rotation(current, Material()), default);

        // A reader holding its snapshot keeps each erasure pending, so each mark can be read.
        await using var reader = await HoldSnapshotAsync();

        var marks = new List<string>();
        for (var version = 0; version < 2; version++)
        {
            var destroyed = version;
            await store.UpdateKeyAsync(key.Name, current => new KeyChange(current.Key)
            {
                UpdatedVersions = [current.Versions[destroyed] with { State = KeyState.Destroyed, DestroyEventTime = key.CreateTime }],
            }, default);
            Assert.False(await store.CompleteErasureAsync(default));
            await using var connection = await store.OpenConnectionAsync(default);
            await using var mark = connection.CreateCommand();
            mark.CommandText = "SELECT value FROM settings WHERE name = 'store.erasure_pending'";
            marks.Add((string)(await mark.ExecuteScalarAsync())!);
        }

        Assert.NotEqual(marks[0], marks[1]);
    }

    /// <summary>A connection in the middle of a read transaction: it keeps its snapshot (and the WAL frames it reads) alive until disposed.</summary>
    private async Task<SqliteConnection> HoldSnapshotAsync()
    {
        var reader = new SqliteConnection($"Data Source={DatabasePath};Pooling=False");
        await reader.OpenAsync();
        var transaction = reader.BeginTransaction(deferred: true);
        await using var read = reader.CreateCommand();
        read.Transaction = transaction;
        read.CommandText = "SELECT count(*) FROM key_versions";
        await read.ExecuteScalarAsync();
        return reader;
    }

    [Fact]
    public async Task AppendAudit_HeadKeptInMemory_UntilAnotherConnectionCommits()
    {
        await using var store = await OpenAsync();
        var first = await store.AppendAuditAsync([Entry(1), Entry(2)], default);
        var second = await store.AppendAuditAsync([Entry(3)], default);
        Assert.Equal((1L, 1L), store.AuditHeadReads);

        // A mutation commits its own event on another connection: the writer must see it.
        var scope = new Kms.Core.Audit.AuditScope(Entry(4) with { Operation = "/kms.v1.KeyManagementService/CreateKey" }, mutating: true);
        using (Kms.Core.Audit.AuditScope.Enter(scope))
        {
            await store.CreateKeyAsync(NewKey(Dev, "between"), Material(), null, default);
        }

        var mutation = Assert.Single(await store.ListAuditEventsAsync(new Kms.Core.Audit.AuditQuery { AfterSequence = 3 }, default));
        var third = await store.AppendAuditAsync([Entry(5)], default);
        Assert.Equal((4L, second[0].Hash), (mutation.Sequence, mutation.PreviousHash));
        Assert.Equal((5L, mutation.Hash), (third[0].Sequence, third[0].PreviousHash));
        Assert.Equal((1L, 2L), store.AuditHeadReads);
        Assert.Equal(first[1].Hash, second[0].PreviousHash);
    }

    [Fact]
    public async Task AppendAudit_DatabaseLockedByAnotherWriter_UnavailableThenAppendsAgainWithoutAGap()
    {
        await using var store = await SqliteStore.OpenAsync(new SqliteOptions { DatabasePath = DatabasePath, BusyTimeout = TimeSpan.FromMilliseconds(200) }, default);
        var before = await store.AppendAuditAsync([Entry(1)], default);
        await using (var blocker = new SqliteConnection($"Data Source={DatabasePath};Pooling=False"))
        {
            await blocker.OpenAsync();
            await using var transaction = blocker.BeginTransaction(deferred: false);
            var e = await Assert.ThrowsAsync<Kms.Core.Errors.KmsException>(() => store.AppendAuditAsync([Entry(2)], default));
            Assert.Equal(Kms.Core.Errors.KmsErrorCode.Unavailable, e.Code);
        }

        // The writer's connection was closed with the failure; a new one serves the next batch.
        var after = await store.AppendAuditAsync([Entry(3)], default);
        Assert.Equal((2L, before[0].Hash), (after[0].Sequence, after[0].PreviousHash));
        Assert.Equal(["req-1", "req-3"], (await store.ListAuditEventsAsync(new Kms.Core.Audit.AuditQuery(), default)).Select(x => x.Entry.RequestId));
    }

    [Fact]
    public async Task AppendAudit_WaitingBehindAnAppendThatGaveUpOnTheLock_FailsAtOnce_NoWaitOfItsOwn()
    {
        // Two appends at once (a group commit, and a refusal summary written from beside the loop)
        // while another connection holds the write lock: one waits for it at the writer's gate.
        // (Both are started long before the first can give up: the busy timeout is 2 s.)
        await using var store = await SqliteStore.OpenAsync(new SqliteOptions { DatabasePath = DatabasePath, BusyTimeout = TimeSpan.FromSeconds(2) }, default);
        await store.AppendAuditAsync([Entry(1)], default);
        await using var blocker = new SqliteConnection($"Data Source={DatabasePath};Pooling=False");
        await blocker.OpenAsync();
        var transaction = blocker.BeginTransaction(deferred: false);
        Task<IReadOnlyList<Kms.Core.Audit.AuditEvent>>[] appends = [Task.Run(() => store.AppendAuditAsync([Entry(2)], default)), Task.Run(() => store.AppendAuditAsync([Entry(3)], default))];

        // The first to end waited out the busy timeout. The lock is released right then: the
        // other, had it gone on to wait for the lock itself (a second busy timeout for its
        // callers), would now get it and be written. It fails as the first did, without trying.
        var first = await Task.WhenAny(appends).WaitAsync(TimeSpan.FromSeconds(60)); // a hang guard, not a bound
        var gaveUp = await Assert.ThrowsAsync<Kms.Core.Errors.KmsException>(() => first);
        await transaction.CommitAsync();
        var other = await Assert.ThrowsAsync<Kms.Core.Errors.KmsException>(() => appends.Single(a => a != first));
        Assert.All([gaveUp, other], e => Assert.True(e.Code == Kms.Core.Errors.KmsErrorCode.Unavailable && e.GaveUpWaiting, $"{e.Code}: {e.Message}"));

        // The next append tries the lock again: written, no gap.
        await store.AppendAuditAsync([Entry(4)], default);
        Assert.Equal(["req-1", "req-4"], (await store.ListAuditEventsAsync(new Kms.Core.Audit.AuditQuery(), default)).Select(x => x.Entry.RequestId));
    }

    [Fact]
    public async Task AppendAudit_WaitingForTheWriteLockAnotherConnectionHolds_ACancellationEndsTheWait_NothingWritten()
    {
        // The group commit's BEGIN IMMEDIATE while another connection (another process: a kms
        // command, sqlite3 at a prompt) holds the write lock, the busy timeout 10 minutes; the
        // commit loop's token is cancelled (the server's stop). Before, the prepared BEGIN was one
        // wait in SQLite's busy handler, which no cancellation ends: the append waited out the
        // busy timeout (the hang guard's 60 s here), and the stop with it.
        await using var store = await SqliteStore.OpenAsync(new SqliteOptions { DatabasePath = DatabasePath, BusyTimeout = TimeSpan.FromMinutes(10) }, default);
        var before = await store.AppendAuditAsync([Entry(1)], default);
        await using var blocker = new SqliteConnection($"Data Source={DatabasePath};Pooling=False");
        await blocker.OpenAsync();
        var transaction = blocker.BeginTransaction(deferred: false);
        var atTheLock = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        store.BeforeWriteLock = () => atTheLock.TrySetResult();
        using var stop = new CancellationTokenSource();
        var append = Task.Run(() => store.AppendAuditAsync([Entry(2)], stop.Token));
        await atTheLock.Task.WaitAsync(TimeSpan.FromSeconds(60)); // a hang guard, not a bound
        store.BeforeWriteLock = null;

        // Into its wait (a token cancelled before the BEGIN is run ends it whatever the wait is).
        await Task.Delay(TimeSpan.FromSeconds(2));
        await stop.CancelAsync();
        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => append.WaitAsync(TimeSpan.FromSeconds(60)));

        // Nothing of it written; the writer's next batch takes the lock once it is free, no gap.
        await transaction.CommitAsync();
        var after = await store.AppendAuditAsync([Entry(3)], default);
        Assert.Equal((2L, before[0].Hash), (after[0].Sequence, after[0].PreviousHash));
        Assert.Equal(["req-1", "req-3"], (await store.ListAuditEventsAsync(new Kms.Core.Audit.AuditQuery(), default)).Select(x => x.Entry.RequestId));
    }

    [Fact]
    public async Task AppendAudit_BatchFailsHalfway_NothingWritten_HeadInMemoryNotAdvanced()
    {
        await using var store = await OpenAsync();
        await ExecuteAsync("CREATE TRIGGER refuse_boom BEFORE INSERT ON audit_events WHEN NEW.principal = 'token:boom' BEGIN SELECT RAISE(ABORT, 'boom'); END;");
        var first = await store.AppendAuditAsync([Entry(1)], default);

        // The second entry of the batch is refused after the first was inserted: the whole batch rolls back.
        await Assert.ThrowsAsync<Kms.Core.Errors.KmsException>(() => store.AppendAuditAsync([Entry(2), Entry(3) with { Principal = "token:boom" }], default));
        var next = await store.AppendAuditAsync([Entry(4)], default);

        Assert.Equal((2L, first[0].Hash), (next[0].Sequence, next[0].PreviousHash));
        var all = await store.ListAuditEventsAsync(new Kms.Core.Audit.AuditQuery(), default);
        Assert.Equal(["req-1", "req-4"], all.Select(e => e.Entry.RequestId));
        Assert.Equal(all[0].Hash, all[1].PreviousHash);
    }

    [Fact]
    public async Task AppendAudit_AfterDispose_Refused()
    {
        var store = await OpenAsync();
        await store.AppendAuditAsync([Entry(1)], default);
        await store.DisposeAsync();
        await Assert.ThrowsAsync<ObjectDisposedException>(() => store.AppendAuditAsync([Entry(2)], default));
    }

    [Fact]
    public async Task Migration5_FromAVersion4Database_DropsTwoAuditIndexes_KeepsEventsAndThePrincipalIndex()
    {
        // A database as the previous release left it: migrations 1-4 and one audit event.
        Directory.CreateDirectory(_directory);
        await using (var old = new SqliteConnection($"Data Source={DatabasePath};Pooling=False"))
        {
            await old.OpenAsync();
            await using var command = old.CreateCommand();
            command.CommandText = "PRAGMA journal_mode = WAL; CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, applied_time INTEGER NOT NULL) STRICT;"
                + string.Concat(SqliteSchema.Migrations.Where(m => m.Version <= 4).Select(m => m.Sql + $"\nINSERT INTO schema_migrations VALUES ({m.Version}, 0);\n"))
                + "INSERT INTO audit_events (seq, time, principal, tenant, operation, resource, outcome, body, hash) VALUES (1, 0, 'token:alice', 'dev', 'op', 'tenants/dev', 'OK', '{}', 'h');";
            await command.ExecuteNonQueryAsync();
        }

        Assert.Equal(["audit_events_by_principal", "audit_events_by_resource", "audit_events_by_time"], await AuditIndexesAsync());
        await using var store = await OpenAsync();

        Assert.Equal(["audit_events_by_principal"], await AuditIndexesAsync());
        Assert.Equal(1L, await ScalarAsync("SELECT count(*) FROM audit_events"));
        Assert.Equal((long)SqliteSchema.LatestVersion, await ScalarAsync("SELECT max(version) FROM schema_migrations"));
    }

    [Fact]
    public async Task Migration6_FromAVersion5Database_AddsEmptyQuorumTables_KeepsKeys()
    {
        Directory.CreateDirectory(_directory);
        await using (var old = new SqliteConnection($"Data Source={DatabasePath};Pooling=False"))
        {
            await old.OpenAsync();
            await using var command = old.CreateCommand();
            command.CommandText = "PRAGMA journal_mode = WAL; CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, applied_time INTEGER NOT NULL) STRICT;"
                + string.Concat(SqliteSchema.Migrations.Where(m => m.Version <= 5).Select(m => m.Sql + $"\nINSERT INTO schema_migrations VALUES ({m.Version}, 0);\n"))
                + "INSERT INTO settings (name, value) VALUES ('domain_key.check_value', 'abc123');";
            await command.ExecuteNonQueryAsync();
        }

        await using var store = await OpenAsync();

        Assert.Equal((long)SqliteSchema.LatestVersion, await ScalarAsync("SELECT max(version) FROM schema_migrations"));
        Assert.Equal("abc123", await store.GetSettingAsync("domain_key.check_value", default));
        Assert.Empty(await store.ListOfficerSetsAsync(default));
        Assert.Empty(await store.ListQuorumRequestsAsync(null, null, 10, default));
        Assert.Equal(0L, await ScalarAsync("SELECT count(*) FROM quorum_approvals"));
    }

    [Fact]
    public async Task Migration10_KeysThatAlreadyHoldAnImportedVersion_KeepTakingImports_OthersDoNot()
    {
        // A database as release 9 left it (without the columns of migrations 10 to 16): two keys, one of which took an import.
        await using (var store = await OpenAsync())
        {
            var plain = KeyStoreContract.NewKey(KeyStoreContract.Dev, "plain");
            var byok = KeyStoreContract.NewKey(KeyStoreContract.Dev, "byok");
            await store.CreateKeyAsync(plain, new WrappedKeyMaterial(new byte[40]), null, default);
            await store.CreateKeyAsync(byok with { Primary = byok.Primary with { Origin = KeyOrigin.Imported } }, new WrappedKeyMaterial(new byte[40]), null, default);
        }

        SqliteConnection.ClearAllPools();
        await using (var old = new SqliteConnection($"Data Source={DatabasePath};Pooling=False"))
        {
            await old.OpenAsync();
            await using var command = old.CreateCommand();
            command.CommandText = "DROP INDEX grants_active; DROP INDEX api_tokens_by_principal; CREATE INDEX api_tokens_by_principal ON api_tokens (principal); DROP INDEX role_bindings_by_tenant; CREATE INDEX role_bindings_by_tenant ON role_bindings (tenant); DROP INDEX keys_destroy_failing; DROP INDEX key_versions_destroy_failing; ALTER TABLE keys DROP COLUMN destroy_failures; ALTER TABLE keys DROP COLUMN destroy_failing_since; ALTER TABLE keys DROP COLUMN destroy_retry_time; ALTER TABLE key_versions DROP COLUMN destroy_failures; ALTER TABLE key_versions DROP COLUMN destroy_failing_since; ALTER TABLE key_versions DROP COLUMN destroy_retry_time; DROP TABLE audit_blocks; DROP TABLE usage_flushes; ALTER TABLE audit_events DROP COLUMN key_versions; DROP INDEX key_versions_import_material; ALTER TABLE key_versions DROP COLUMN import_fingerprint; ALTER TABLE quorum_approvals DROP COLUMN sign_time; ALTER TABLE quorum_requests DROP COLUMN executing_node; ALTER TABLE quorum_requests DROP COLUMN credential_path; ALTER TABLE quorum_requests DROP COLUMN credential_revoke_time; ALTER TABLE principals DROP COLUMN delete_time; ALTER TABLE tenants DROP COLUMN delete_waiting_ms; ALTER TABLE keys DROP COLUMN allow_import; DELETE FROM schema_migrations WHERE version >= 10;";
            await command.ExecuteNonQueryAsync();
        }

        await using var migrated = await OpenAsync();
        Assert.False((await migrated.GetKeyAsync(KeyName.Create(KeyStoreContract.Dev, "plain"), default))!.AllowImport);
        Assert.True((await migrated.GetKeyAsync(KeyName.Create(KeyStoreContract.Dev, "byok"), default))!.AllowImport);
    }

    [Fact]
    public async Task Migration17_FromAVersion16Database_KeepsTheCounts_FlushesAppliedOnceAfter()
    {
        // A database as release 16 left it: a version that counted decryptions, no usage_flushes.
        var key = KeyStoreContract.NewKey(KeyStoreContract.Dev, "used");
        await using (var store = await OpenAsync())
        {
            await store.CreateKeyAsync(key, new WrappedKeyMaterial(new byte[40]), null, default);
            await store.RecordUsageAsync(new UsageFlush(Guid.NewGuid(), 1, key.CreateTime, [new UsageDelta(key.Primary.Id, 5, null, null)]), default);
        }

        SqliteConnection.ClearAllPools();
        await using (var old = new SqliteConnection($"Data Source={DatabasePath};Pooling=False"))
        {
            await old.OpenAsync();
            await using var command = old.CreateCommand();
            command.CommandText = "DROP INDEX grants_active; DROP INDEX api_tokens_by_principal; CREATE INDEX api_tokens_by_principal ON api_tokens (principal); DROP INDEX role_bindings_by_tenant; CREATE INDEX role_bindings_by_tenant ON role_bindings (tenant); DROP INDEX keys_destroy_failing; DROP INDEX key_versions_destroy_failing; ALTER TABLE keys DROP COLUMN destroy_failures; ALTER TABLE keys DROP COLUMN destroy_failing_since; ALTER TABLE keys DROP COLUMN destroy_retry_time; ALTER TABLE key_versions DROP COLUMN destroy_failures; ALTER TABLE key_versions DROP COLUMN destroy_failing_since; ALTER TABLE key_versions DROP COLUMN destroy_retry_time; DROP TABLE audit_blocks; DROP TABLE usage_flushes; DELETE FROM schema_migrations WHERE version >= 17;";
            await command.ExecuteNonQueryAsync();
        }

        await using var migrated = await OpenAsync();
        Assert.Equal((long)SqliteSchema.LatestVersion, await ScalarAsync("SELECT max(version) FROM schema_migrations"));
        Assert.Equal(0L, await ScalarAsync("SELECT count(*) FROM usage_flushes"));
        var flush = new UsageFlush(Guid.NewGuid(), 1, key.CreateTime, [new UsageDelta(key.Primary.Id, 2, null, null)]);
        Assert.True(await migrated.RecordUsageAsync(flush, default));
        Assert.False(await migrated.RecordUsageAsync(flush, default));
        Assert.Equal(7, (await migrated.GetVersionAsync(key.Primary.Name, default))!.Usage.DecryptCount);
    }

    [Fact]
    public async Task ListAuditEvents_Plans_PrincipalByItsIndex_EverythingElseBySequence()
    {
        await using var store = await OpenAsync();
        await store.AppendAuditAsync([Entry(1)], default);
        const string Select = "EXPLAIN QUERY PLAN SELECT seq, body, hash FROM audit_events WHERE seq > 0";
        Assert.Contains("audit_events_by_principal", await PlanAsync($"{Select} AND principal = 'token:alice' ORDER BY seq LIMIT 10"), StringComparison.Ordinal);
        foreach (var filter in new[] { "time >= 1 AND time < 2", "(resource = 'r' OR resource LIKE 'r' || '/%')", "outcome = 'OK'" })
        {
            var plan = await PlanAsync($"{Select} AND {filter} ORDER BY seq LIMIT 10");
            Assert.Contains("PRIMARY KEY", plan, StringComparison.Ordinal);
            Assert.DoesNotContain("TEMP B-TREE", plan, StringComparison.Ordinal);
        }
    }

    [Fact]
    public async Task ListApiTokensRoleBindingsGrants_TheStatementsRun_FirstPageAndLater_WalkAnIndex_NeverSort()
    {
        // A page starts where the last ended in an index's order: no sort of every token of the
        // principal (revoked ones are never deleted), binding of the tenant or grant of the key.
        await using var store = await OpenAsync();
        foreach (var (sql, index, parameters) in new (string, string, (string, object)[])[]
        {
            (SqlStore.ListApiTokensPageSql, "api_tokens_by_principal", [("@principal", "token:a"), ("@after_time", long.MaxValue), ("@after_id", ""), ("@limit", 101)]),
            (SqlStore.ListApiTokensPageSql, "api_tokens_by_principal", [("@principal", "token:a"), ("@after_time", 5L), ("@after_id", "00000000000000aa"), ("@limit", 101)]),
            (SqlStore.ListRoleBindingsPageSql, "role_bindings_by_tenant", [("@tenant", "dev"), ("@after_principal", ""), ("@after_role", -1), ("@limit", 101)]),
            (SqlStore.ListRoleBindingsPageSql, "role_bindings_by_tenant", [("@tenant", "dev"), ("@after_principal", "token:a"), ("@after_role", 2), ("@limit", 101)]),
            (SqlStore.ListGrantsPageSql, "grants_active", [("@tenant", "dev"), ("@key_id", "k"), ("@after_time", long.MinValue), ("@after_id", ""), ("@limit", 101)]),
            (SqlStore.ListGrantsPageSql, "grants_active", [("@tenant", "dev"), ("@key_id", "k"), ("@after_time", 5L), ("@after_id", "00000000000000aa"), ("@limit", 101)]),
        })
        {
            var plan = await PlanAsync("EXPLAIN QUERY PLAN " + sql, parameters);
            Assert.True(plan.Contains(index, StringComparison.Ordinal) && !plan.Contains("TEMP B-TREE", StringComparison.Ordinal), plan);
        }
    }

    [Fact]
    public async Task ListAuditEvents_TheStatementRun_BothOrders_EveryFilter_WalksAnIndexInItsOrder_NeverSorts()
    {
        // The statement the store runs, parameters bound: a page oldest or newest first walks the
        // primary key (or the principal index) in the order asked and stops at the limit, never
        // reading the whole table into a sort (one page of a large audit would cost its size).
        await using var store = await OpenAsync();
        await store.AppendAuditAsync([Entry(1)], default);
        var filters = new (Kms.Core.Audit.AuditQuery Query, string Index)[]
        {
            (new Kms.Core.Audit.AuditQuery(), "PRIMARY KEY"),
            (new Kms.Core.Audit.AuditQuery { Tenant = "dev" }, "PRIMARY KEY"),
            (new Kms.Core.Audit.AuditQuery { StartTime = DateTimeOffset.UnixEpoch, EndTime = DateTimeOffset.UnixEpoch.AddDays(1) }, "PRIMARY KEY"),
            (new Kms.Core.Audit.AuditQuery { Resource = "tenants/dev/keys/k" }, "PRIMARY KEY"),
            (new Kms.Core.Audit.AuditQuery { Operation = "Decrypt", Outcome = "OK" }, "PRIMARY KEY"),
            (new Kms.Core.Audit.AuditQuery { Principal = "token:alice" }, "audit_events_by_principal"),
            (new Kms.Core.Audit.AuditQuery { Principal = "token:alice", Tenant = "dev", Resource = "tenants/dev/keys/k" }, "audit_events_by_principal"),
        };
        foreach (var (query, index) in filters)
        {
            foreach (var ordered in new[] { query with { AfterSequence = 5 }, query with { NewestFirst = true, BeforeSequence = 5 } })
            {
                var (sql, parameters) = store.ListAuditEventsSql(ordered);
                var plan = await PlanAsync("EXPLAIN QUERY PLAN " + sql, parameters);
                Assert.True(plan.Contains(index, StringComparison.Ordinal) && !plan.Contains("TEMP B-TREE", StringComparison.Ordinal), $"{ordered}: {plan}");
            }

            // A page's window (AuditPages): both ends are bounds of the search, in either order, so
            // the rows read are at most the window's, whatever the filters leave.
            foreach (var window in new[] { query with { AfterSequence = 5, BeforeSequence = 100_006 }, query with { NewestFirst = true, AfterSequence = 5, BeforeSequence = 100_006 } })
            {
                var (sql, parameters) = store.ListAuditEventsSql(window);
                var plan = await PlanAsync("EXPLAIN QUERY PLAN " + sql, parameters);
                Assert.True(plan.Contains(index, StringComparison.Ordinal) && System.Text.RegularExpressions.Regex.IsMatch(plan, @"(rowid|seq)>\? AND (rowid|seq)<\?") && !plan.Contains("TEMP B-TREE", StringComparison.Ordinal), $"{window}: {plan}");
            }
        }
    }

    [Fact]
    public async Task ListAuditPage_TheStatementRun_BothOrders_EveryFilter_WalksTheWindowInItsOrder_NeverSorts()
    {
        // The page's one statement, parameters bound: its events walk the primary key (or the
        // principal index) between the window's two ends and stop at the limit; no sort reads the
        // window (or the log) first, with or without a time range.
        await using var store = await OpenAsync();
        await store.AppendAuditAsync([Entry(1)], default);
        var filters = new (Kms.Core.Audit.AuditQuery Query, string Index)[]
        {
            (new Kms.Core.Audit.AuditQuery(), "PRIMARY KEY"),
            (new Kms.Core.Audit.AuditQuery { Tenant = "dev" }, "PRIMARY KEY"),
            (new Kms.Core.Audit.AuditQuery { StartTime = DateTimeOffset.UnixEpoch, EndTime = DateTimeOffset.UnixEpoch.AddDays(1) }, "PRIMARY KEY"),
            (new Kms.Core.Audit.AuditQuery { Operation = "Decrypt", Outcome = "OK", Resource = "tenants/dev/keys/k" }, "PRIMARY KEY"),
            (new Kms.Core.Audit.AuditQuery { Principal = "token:alice" }, "audit_events_by_principal"),
            (new Kms.Core.Audit.AuditQuery { Principal = "token:alice", StartTime = DateTimeOffset.UnixEpoch }, "audit_events_by_principal"),
        };
        foreach (var (query, index) in filters)
        {
            foreach (var ordered in new[] { query with { AfterSequence = 5 }, query with { NewestFirst = true, BeforeSequence = 5 } })
            {
                var (sql, parameters) = store.ListAuditPageSql(ordered, 100_000);
                var plan = await PlanAsync("EXPLAIN QUERY PLAN " + sql, parameters);
                Assert.True(plan.Contains(index, StringComparison.Ordinal) && !plan.Contains("TEMP B-TREE", StringComparison.Ordinal) && !plan.Contains("SCAN audit_events", StringComparison.Ordinal), $"{ordered}: {plan}");
            }
        }
    }

    private async Task<List<string>> AuditIndexesAsync()
    {
        await using var connection = new SqliteConnection($"Data Source={DatabasePath};Pooling=False");
        await connection.OpenAsync();
        await using var command = connection.CreateCommand();
        command.CommandText = "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'audit_events' AND sql IS NOT NULL ORDER BY name";
        await using var reader = await command.ExecuteReaderAsync();
        var names = new List<string>();
        while (await reader.ReadAsync())
        {
            names.Add(reader.GetString(0));
        }

        return names;
    }

    private async Task<string> PlanAsync(string sql, params (string Name, object Value)[] parameters)
    {
        await using var connection = new SqliteConnection($"Data Source={DatabasePath};Pooling=False");
        await connection.OpenAsync();
        await using var command = connection.CreateCommand();
        command.CommandText = sql;
        foreach (var (name, value) in parameters)
        {
            command.Parameters.AddWithValue(name, value);
        }

        await using var reader = await command.ExecuteReaderAsync();
        var plan = new List<string>();
        while (await reader.ReadAsync())
        {
            plan.Add(reader.GetString(3));
        }

        return string.Join("; ", plan);
    }

    private async Task<object?> ScalarAsync(string sql)
    {
        await using var connection = new SqliteConnection($"Data Source={DatabasePath};Pooling=False");
        await connection.OpenAsync();
        await using var command = connection.CreateCommand();
        command.CommandText = sql;
        return await command.ExecuteScalarAsync();
    }

    private async Task ExecuteAsync(string sql)
    {
        await using var connection = new SqliteConnection($"Data Source={DatabasePath};Pooling=False");
        await connection.OpenAsync();
        await using var command = connection.CreateCommand();
        command.CommandText = sql;
        await command.ExecuteNonQueryAsync();
    }

    [Fact]
    public async Task MetadataCache_NotConfirmed_EveryReadAsksTheDatabase()
    {
        var node = await OpenAsync();
        var other = await OpenAsync();
        await node.CreateKeyAsync(NewKey(Dev, "k"), Material(), null, default);
        Assert.Equal(KeyState.Enabled, (await node.GetPrimaryMaterialAsync(new KeyName(Dev, "k"), default))!.Key.State);

        // Nobody vouches for coherence (no change-feed reader): another writer's change is seen at once.
        await DisableAsync(other, "k");
        Assert.Equal(KeyState.Disabled, (await node.GetPrimaryMaterialAsync(new KeyName(Dev, "k"), default))!.Key.State);
        Assert.Equal(0, node.MetadataCacheStatistics.Hits);
    }

    [Fact]
    public async Task MetadataCache_Confirmed_ServesRepeatedReads_ForgetsAtOnceOnItsOwnWrite()
    {
        var (node, name, first) = await OpenWithCachedKeyAsync();
        var version = first!.Version.Id;
        Assert.Same(first, await node.GetPrimaryMaterialAsync(name, default));
        Assert.Same(await node.FindVersionMaterialAsync(Dev, version, default), await node.FindVersionMaterialAsync(Dev, version, default));
        Assert.True(node.MetadataCacheStatistics.Hits >= 2);

        // Tenant-scoped: the same version id asked for in another tenant is not found, cached or not.
        Assert.Null(await node.FindVersionMaterialAsync(Acme, version, default));

        await DisableAsync(node, "k");
        Assert.Equal(KeyState.Disabled, (await node.GetPrimaryMaterialAsync(name, default))!.Key.State);
        Assert.Equal(KeyState.Disabled, (await node.FindVersionMaterialAsync(Dev, version, default))!.Key.State);
    }

    [Fact]
    public async Task MetadataCache_LifecyclePassWithNothingDue_ForgetsNothing()
    {
        // What the lifecycle worker asks the store every pass (30 s), with nothing due: none of it
        // is a change, so none of it may empty the cache (it did: the import-job expiry wrote, and
        // every write forgets, so a Zipf load's hit rate fell back every 30 s).
        var (node, name, first) = await OpenWithCachedKeyAsync();
        var invalidations = node.MetadataCacheStatistics.Invalidations;

        Assert.Empty(await node.EraseExpiredImportJobsAsync(DateTimeOffset.UtcNow, default));
        Assert.True(await node.CompleteErasureAsync(default));
        await node.PruneChangesAsync(DateTimeOffset.UtcNow.AddHours(-1), default);
        await node.RecordUsageAsync(new UsageFlush(Guid.NewGuid(), 1, DateTimeOffset.UtcNow, [new UsageDelta(first!.Version.Id, 1, null, DateTimeOffset.UtcNow)]), default);

        Assert.Equal(invalidations, node.MetadataCacheStatistics.Invalidations);
        Assert.Same(first, await node.GetPrimaryMaterialAsync(name, default));
    }

    [Fact]
    public async Task MetadataCache_NoOpKeyUpdate_AnnouncesNothing_ForgetsNothing()
    {
        // The offboarding sweep decides a no-op for every key of a DELETING tenant already scheduled,
        // every pass: that must neither tell every node to forget (a change row) nor forget here.
        var (node, name, first) = await OpenWithCachedKeyAsync();
        var (invalidations, head) = (node.MetadataCacheStatistics.Invalidations, await node.GetChangeHeadAsync(default));

        Assert.NotNull(await node.UpdateKeyAsync(name, current => new KeyChange(current.Key) { IsNoOp = true }, default));
        Assert.Null(await node.UpdateKeyAsync(new KeyName(Dev, "missing"), current => new KeyChange(current.Key with { State = KeyState.Disabled }), default));

        Assert.Equal(invalidations, node.MetadataCacheStatistics.Invalidations);
        Assert.Equal(head, await node.GetChangeHeadAsync(default));
        Assert.Same(first, await node.GetPrimaryMaterialAsync(name, default));

        // A real change still does both.
        await DisableAsync(node, "k");
        Assert.True(await node.GetChangeHeadAsync(default) > head);
        Assert.Equal(KeyState.Disabled, (await node.GetPrimaryMaterialAsync(name, default))!.Key.State);
    }

    [Fact]
    public async Task MetadataCache_AnotherWritersChange_AnnouncedInTheFeed_ForgottenWhenTheFeedIsApplied()
    {
        var node = await OpenAsync();
        var other = await OpenAsync();
        node.ConfirmCoherent(TimeSpan.FromMinutes(1));
        await node.CreateKeyAsync(NewKey(Dev, "k"), Material(), null, default);
        var name = new KeyName(Dev, "k");
        await node.GetPrimaryMaterialAsync(name, default);
        var seen = await node.GetChangeHeadAsync(default);

        await DisableAsync(other, "k");

        // Until this node applies the feed it still answers from memory (the documented window) ...
        Assert.Equal(KeyState.Enabled, (await node.GetPrimaryMaterialAsync(name, default))!.Key.State);

        // ... and the other writer announced its write, so the feed reader makes it forget.
        var changes = await node.ListChangesAsync(seen, 100, default);
        Assert.Contains(changes, c => c.Kind == StoreChangeKind.Metadata);
        node.InvalidateMetadata();
        Assert.Equal(KeyState.Disabled, (await node.GetPrimaryMaterialAsync(name, default))!.Key.State);
    }

    [Fact]
    public async Task Grant_WhileAnotherConnectionLiftsTheKeysPolicy_CheckedUnderTheWriteLock_Refused()
    {
        // One node, two concurrent calls: another connection lifts the key's policy (revoking its
        // grants) inside BEGIN IMMEDIATE and holds the write lock until it commits; a grant asked
        // meanwhile reaches the lock (the store's seam says so) and only then is the lift
        // committed. Read before the lock, its check would have found the policy still in place
        // and the grant would be written after the lift, dormant until a later policy revived it.
        // The busy timeout is long, so the grant waits for the lock, however slow the machine.
        await using var store = await SqliteStore.OpenAsync(new SqliteOptions { DatabasePath = DatabasePath, BusyTimeout = TimeSpan.FromMinutes(1) }, default);
        var key = NewKey(Dev, "racing");
        await store.CreateKeyAsync(key, Material(), null, default);
        await store.SetKeyPolicyAsync(new KeyPolicy(key.Name, new Dictionary<string, KeyOperations> { ["token:owner"] = KeyOperations.Encrypt }), DateTimeOffset.UtcNow, default);

        await using var otherConnection = new SqliteConnection(new SqliteConnectionStringBuilder { DataSource = DatabasePath, Pooling = false }.ConnectionString);
        await otherConnection.OpenAsync();
        await using (var lifting = otherConnection.CreateCommand())
        {
            lifting.CommandText = """
                BEGIN IMMEDIATE;
                DELETE FROM key_policies WHERE tenant = 'dev' AND key_id = 'racing';
                UPDATE keys SET restricted = 0 WHERE tenant = 'dev' AND key_id = 'racing';
                UPDATE grants SET revoke_time = 0 WHERE tenant = 'dev' AND key_id = 'racing' AND revoke_time IS NULL;
                """;
            await lifting.ExecuteNonQueryAsync();
        }

        var atTheLock = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        store.BeforeWriteLock = () => atTheLock.TrySetResult();
        var grant = Task.Run(() => store.CreateGrantAsync(new Grant("00000000000000c1", key.Name, PrincipalName.Token("reader"), KeyOperations.Decrypt, new Dictionary<string, string>(), DateTimeOffset.UtcNow), default));
        await atTheLock.Task.WaitAsync(TimeSpan.FromSeconds(30)); // a hang guard, not a bound
        store.BeforeWriteLock = null;

        await using (var commit = otherConnection.CreateCommand())
        {
            commit.CommandText = "COMMIT";
            await commit.ExecuteNonQueryAsync();
        }

        Assert.Equal(Kms.Core.Errors.KmsErrorCode.FailedPrecondition, (await Assert.ThrowsAsync<Kms.Core.Errors.KmsException>(() => grant)).Code);
        Assert.Empty(await store.ListGrantsAsync(key.Name, includeRevoked: true, default));
    }

    [Fact]
    public async Task SummariseAuditBlocks_TwoNodesWithOtherBlockSizes_TheLaterWriteIsClipped_NoEventOutsideEveryBlock()
    {
        // 30 events: 11..15 of this minute, the rest an hour old. Node B (blocks of 15) reads the
        // log, and before it writes, node A (blocks of 10, one a pass: the lease moving between
        // them) summarises 1..10. B's 1..15 then starts where A's block does: before, it was
        // dropped whole (ON CONFLICT) and 16..30 written, so 11..15 lay in no block, and the walk of
        // every time-ranged listing and of retention's cut stepped over them, for good.
        var t0 = DateTimeOffset.UtcNow;
        await using var store = await OpenAsync();
        await store.AppendAuditAsync([.. Enumerable.Range(1, 30).Select(i => Entry(i) with { Time = t0.AddSeconds(i is >= 11 and <= 15 ? 0 : -3600) })], default);
        store.BeforeWriteLock = () =>
        {
            store.BeforeWriteLock = null;
            store.SummariseAuditBlocksAsync(10, 1, default).GetAwaiter().GetResult();
        };
        var written = await Task.Run(() => store.SummariseAuditBlocksAsync(15, 2, default));

        var recent = new Kms.Core.Audit.AuditQuery { StartTime = t0.AddMinutes(-1), Limit = 100 };
        var scan = (await store.ListAuditEventsAsync(recent, default)).Select(e => e.Sequence).ToList();
        Assert.Equal([11L, 12L, 13L, 14L, 15L], scan);
        foreach (var newest in new[] { false, true })
        {
            var page = await Kms.Core.Audit.AuditPages.ListAsync(store, recent with { NewestFirst = newest }, 1000, default);
            Assert.True(page.Events.Count == 5, $"newest first {newest}: [{string.Join(',', page.Events.Select(e => e.Sequence))}], a full scan [11..15]");
        }

        Assert.Equal(11L, (await Kms.Core.Audit.AuditPages.FirstAtOrAfterAsync(store, t0.AddMinutes(-1), 0, default))?.Sequence);
        Assert.Equal(2, written); // 11..15 (B's block, from where A's ends) and 16..30
    }

    [Fact]
    public async Task UpdateAlias_MovedOffAnImportKeyThroughAnotherNode_NotMovedOntoOneByTheAliasThisNodeRemembers()
    {
        // This node remembers the alias on an allow_import key; through another node it is moved
        // onto an ordinary key. Within the change feed's interval, a move here onto an
        // allow_import key is the move claim 95 refuses (an ordinary key's alias onto one that
        // takes imported material): judged on what this node remembered, it was let through.
        var node = await OpenAsync();
        var other = await OpenAsync();
        node.ConfirmCoherent(TimeSpan.FromMinutes(1));
        foreach (var key in new[] { NewKey(Dev, "ordinary"), NewKey(Dev, "byok") with { AllowImport = true }, NewKey(Dev, "byok-2") with { AllowImport = true } })
        {
            await node.CreateKeyAsync(key, Material(), null, default);
        }

        var alias = AliasName.Create(Dev, "payments");
        var now = DateTimeOffset.UtcNow;
        await node.CreateAliasAsync(new KeyAlias(alias, new KeyName(Dev, "byok"), now, now), null, default);
        Assert.Equal("byok", (await node.GetAliasAsync(alias, default))!.Key.KeyId);
        var caller = Kms.Testing.Fakes.DomainHarness.Dev;
        await new Kms.Core.Services.AliasService(other, other, TimeProvider.System).UpdateAliasAsync(caller, alias, new KeyName(Dev, "ordinary"), default);
        Assert.Equal("byok", (await node.GetAliasAsync(alias, default))!.Key.KeyId); // the documented window

        var refused = await Assert.ThrowsAsync<Kms.Core.Errors.KmsException>(() =>
            new Kms.Core.Services.AliasService(node, node, TimeProvider.System).UpdateAliasAsync(caller, alias, new KeyName(Dev, "byok-2"), default));
        Assert.Equal(Kms.Core.Errors.KmsErrorCode.FailedPrecondition, refused.Code);
        Assert.Contains("tenants/dev/keys/ordinary was not", refused.Message, StringComparison.Ordinal);
        Assert.Equal("ordinary", (await other.GetAliasAsync(alias, default))!.Key.KeyId);
    }

    [Fact]
    public async Task Alias_OntoAKeyScheduledForDeletionThroughAnotherNode_RefusedThoughThisNodeRemembersItEnabled()
    {
        // This node remembers the key ENABLED; through another node its deletion is scheduled.
        // Within the change feed's interval, an alias created or moved onto it here is judged in
        // the write, on the key as it is then.
        var node = await OpenAsync();
        var other = await OpenAsync();
        node.ConfirmCoherent(TimeSpan.FromMinutes(1));
        var now = DateTimeOffset.UtcNow;
        await node.CreateTenantAsync(new Kms.Core.Access.Tenant(Dev, "", Kms.Core.Access.TenantState.Active, now), default);
        await node.CreateKeyAsync(NewKey(Dev, "live"), Material(), null, default);
        await node.CreateKeyAsync(NewKey(Dev, "going"), Material(), null, default);
        var going = new KeyName(Dev, "going");
        var alias = AliasName.Create(Dev, "payments");
        await node.CreateAliasAsync(new KeyAlias(alias, new KeyName(Dev, "live"), now, now), null, default);
        Assert.Equal(KeyState.Enabled, (await node.GetPrimaryMaterialAsync(going, default))!.Key.State);
        var caller = Kms.Testing.Fakes.DomainHarness.Dev;
        await other.UpdateKeyAsync(going, current => new KeyChange(current.Key with { State = KeyState.DestroyScheduled, DestroyTime = now.AddDays(7) }), default);
        Assert.Equal(KeyState.Enabled, (await node.GetPrimaryMaterialAsync(going, default))!.Key.State); // the documented window

        var aliases = new Kms.Core.Services.AliasService(node, node, TimeProvider.System);
        foreach (var call in new Func<Task>[]
        {
            () => aliases.CreateAliasAsync(caller, Dev, "late", going, null, default),
            () => aliases.UpdateAliasAsync(caller, alias, going, default),
        })
        {
            var refused = await Assert.ThrowsAsync<Kms.Core.Errors.KmsException>(call);
            Assert.Equal(Kms.Core.Errors.KmsErrorCode.FailedPrecondition, refused.Code);
            Assert.StartsWith("key tenants/dev/keys/going is DESTROY_SCHEDULED;", refused.Message, StringComparison.Ordinal);
        }

        Assert.Null(await other.GetAliasAsync(AliasName.Create(Dev, "late"), default));
        Assert.Equal("live", (await other.GetAliasAsync(alias, default))!.Key.KeyId);
    }

    [Fact]
    public async Task MetadataCache_ConfirmationLapses_ReadsTheDatabaseAgain()
    {
        var node = await OpenAsync();
        var other = await OpenAsync();
        await node.CreateKeyAsync(NewKey(Dev, "k"), Material(), null, default);
        var name = new KeyName(Dev, "k");
        node.ConfirmCoherent(TimeSpan.FromMilliseconds(200));
        await node.GetPrimaryMaterialAsync(name, default);
        await DisableAsync(other, "k");

        // The feed reader stopped confirming (the feed cannot be read): past the window, no memory is trusted.
        await Task.Delay(400);
        Assert.Equal(KeyState.Disabled, (await node.GetPrimaryMaterialAsync(name, default))!.Key.State);
    }

    [Fact]
    public async Task MetadataCache_CapacityZero_NeverRemembers()
    {
        var node = await OpenAsync();
        node.MetadataCacheCapacity = 0;
        node.ConfirmCoherent(TimeSpan.FromMinutes(1));
        await node.CreateKeyAsync(NewKey(Dev, "k"), Material(), null, default);
        await node.GetPrimaryMaterialAsync(new KeyName(Dev, "k"), default);
        await node.GetPrimaryMaterialAsync(new KeyName(Dev, "k"), default);
        Assert.Equal(0, node.MetadataCacheStatistics.Hits);
    }

    [Fact]
    public async Task HotReads_ManyConcurrentCallers_EachGetsItsOwnRow_AndIdleReadersHoldBackNoCheckpoint()
    {
        // Every read goes to the database, on the store's kept-open connections with compiled statements.
        var node = await OpenAsync();
        node.MetadataCacheCapacity = 0;
        var keys = new List<(KeyName Name, KeyVersionId Version, byte[] Material)>();
        for (var i = 0; i < 20; i++)
        {
            var name = new KeyName(Dev, $"k{i}");
            var material = Material();
            await node.CreateKeyAsync(NewKey(Dev, name.KeyId), material, null, default);
            keys.Add((name, (await node.GetPrimaryMaterialAsync(name, default))!.Version.Id, material.Bytes.ToArray()));
        }

        // Parameters of one caller never reach another's statement.
        await Task.WhenAll(Enumerable.Range(0, 400).Select(i => Task.Run(async () =>
        {
            var (name, version, material) = keys[i % keys.Count];
            var byId = await node.FindVersionMaterialAsync(Dev, version, default);
            Assert.Equal(name, byId!.Key.Name);
            Assert.Equal(material, byId.Material!.Bytes.ToArray());
            Assert.Equal(version, (await node.GetPrimaryMaterialAsync(name, default))!.Version.Id);
            Assert.Null(await node.FindVersionMaterialAsync(Acme, version, default));
        })));

        // A statement is reset when its read ends: no idle connection keeps a snapshot open, so a
        // truncating checkpoint (what erasure runs after a destroy) completes.
        await using var connection = new SqliteConnection($"Data Source={DatabasePath};Pooling=False");
        await connection.OpenAsync();
        await using var checkpoint = connection.CreateCommand();
        checkpoint.CommandText = "PRAGMA wal_checkpoint(TRUNCATE)";
        await using var reader = await checkpoint.ExecuteReaderAsync();
        Assert.True(await reader.ReadAsync());
        Assert.Equal(0, reader.GetInt64(0));
    }

    private static Task<KeyWithVersions?> DisableAsync(SqliteStore store, string keyId) =>
        store.UpdateKeyAsync(new KeyName(Dev, keyId), current => new KeyChange(current.Key with { State = KeyState.Disabled }), default);

    private Task<SqliteStore> OpenAsync() => SqliteStore.OpenAsync(new SqliteOptions { DatabasePath = DatabasePath }, default);

    /// <summary>A store whose metadata cache is trusted (coherence confirmed), holding key "k" read once.</summary>
    private async Task<(SqliteStore Node, KeyName Name, KeyVersionMaterial? First)> OpenWithCachedKeyAsync()
    {
        var node = await OpenAsync();
        node.ConfirmCoherent(TimeSpan.FromMinutes(1));
        await node.CreateKeyAsync(NewKey(Dev, "k"), Material(), null, default);
        var name = new KeyName(Dev, "k");
        return (node, name, await node.GetPrimaryMaterialAsync(name, default));
    }
}

public sealed class InMemoryKeyStoreTests : QuorumStoreContract
{
    protected override bool AuditCommitsWithTheWrite => false;

    protected override Task<IKeyStore> CreateStoreAsync() => Task.FromResult<IKeyStore>(new Kms.Testing.Fakes.InMemoryStore());

    protected override Task<IAsyncDisposable> FailRoleBindingWritesAsync(IKeyStore store)
    {
        var memory = (Kms.Testing.Fakes.InMemoryStore)store;
        memory.FailRoleBindingWrites = Kms.Core.Errors.KmsErrors.Unavailable("injected: role binding write refused");
        return Task.FromResult<IAsyncDisposable>(new Undo(() =>
        {
            memory.FailRoleBindingWrites = null;
            return Task.CompletedTask;
        }));
    }
}
