using System.Net;
using System.Net.Sockets;
using Kms.Core.Access;
using Kms.Core.Audit;
using Kms.Core.Errors;
using Kms.Core.Keys;
using Kms.Core.Names;
using Kms.Core.Ports;
using Kms.Core.Services;
using Kms.Storage.Postgres;
using Kms.Testing;
using Microsoft.Extensions.Time.Testing;
using Npgsql;

namespace Kms.Storage.Tests;

/// <summary>
/// Several nodes on one PostgreSQL database, as separate stores (each with its own pools and
/// audit writer): one audit chain, one leader, faults of the database, rolling upgrades.
/// </summary>
public sealed class PostgresClusterTests : IAsyncLifetime
{
    private static readonly TenantId Dev = TenantId.Parse("dev");
    private readonly List<IAsyncDisposable> _opened = [];
    private PostgresTestDatabase _database = null!;

    public async Task InitializeAsync() => _database = await PostgresTestDatabase.CreateAsync();

    public async Task DisposeAsync()
    {
        foreach (var opened in Enumerable.Reverse(_opened))
        {
            await opened.DisposeAsync();
        }

        await _database.DisposeAsync();
    }

    [Fact]
    public async Task TwoNodes_SummarisingTheAuditLogWhileBothAppend_TimeRangedListingsExactOnEither()
    {
        // Both nodes append events whose times go back and forth, and summarise (blocks of 10 and
        // of 7: two releases' settings) at the same time.
        var nodes = new[] { await OpenAsync(), await OpenAsync() };
        var appending = nodes.Select((node, n) => Task.Run(async () =>
        {
            for (var i = 0; i < 30; i++)
            {
                await node.AppendAuditAsync([.. Enumerable.Range(0, 3).Select(k => AuditStoreContract.Entry((i * 53 + k * 17 + n * 29) % 97))], default);
                await node.SummariseAuditBlocksAsync(n == 0 ? 10 : 7, 3, default);
            }
        }));
        await Task.WhenAll(appending);
        await Task.WhenAll(nodes[0].SummariseAuditBlocksAsync(10, 100, default), nodes[1].SummariseAuditBlocksAsync(7, 100, default));

        foreach (var node in nodes)
        {
            foreach (var newest in new[] { false, true })
            {
                var query = new AuditQuery { StartTime = new DateTimeOffset(2026, 11, 29, 12, 0, 40, TimeSpan.Zero), EndTime = new DateTimeOffset(2026, 11, 29, 12, 0, 50, TimeSpan.Zero), NewestFirst = newest, Limit = 4 };
                var all = (await node.ListAuditEventsAsync(query with { Limit = 1000 }, default)).Select(e => e.Sequence).ToList();
                Assert.NotEmpty(all);
                var listed = new List<long>();
                for (var page = await AuditPages.ListAsync(node, query, 9, default); ; page = await AuditPages.ListAsync(node, newest ? query with { BeforeSequence = page.Next!.Value } : query with { AfterSequence = page.Next!.Value }, 9, default))
                {
                    listed.AddRange(page.Events.Select(e => e.Sequence));
                    if (page.Next is null)
                    {
                        break;
                    }
                }

                Assert.Equal(all, listed);
            }
        }
    }

    [Fact]
    public async Task TwoNodes_ConcurrentGroupCommitsAndAuditedMutations_OneGapFreeChain()
    {
        var nodes = new[] { await OpenAsync(), await OpenAsync() };
        var appended = 0;
        var work = nodes.SelectMany((node, n) => Enumerable.Range(0, 2).Select(worker => Task.Run(async () =>
        {
            for (var i = 0; i < 40; i++)
            {
                if (i % 4 == 0)
                {
                    // A mutation carrying its event in its own transaction (the other append path).
                    var scope = new AuditScope(AuditStoreContract.Entry(i), mutating: true);
                    using (AuditScope.Enter(scope))
                    {
                        await node.CreateKeyAsync(KeyStoreContract.NewKey(Dev, $"n{n}-w{worker}-{i}"), KeyStoreContract.Material(), null, default);
                    }

                    Assert.True(scope.Written);
                    Interlocked.Increment(ref appended);
                }
                else
                {
                    var batch = Enumerable.Range(0, 1 + (i % 3)).Select(AuditStoreContract.Entry).ToList();
                    await node.AppendAuditAsync(batch, default);
                    Interlocked.Add(ref appended, batch.Count);
                }
            }
        })));
        await Task.WhenAll(work);

        var events = await ReadAllEventsAsync(nodes[1]);
        Assert.Equal(appended, events.Count);
        for (var i = 0; i < events.Count; i++)
        {
            Assert.Equal(i + 1, events[i].Sequence);
            Assert.Equal(i == 0 ? AuditChain.Genesis : events[i - 1].Hash, events[i].PreviousHash);
            Assert.Equal(AuditChain.HashOf(events[i].Body), events[i].Hash);
        }

        Assert.Equal(new AuditHead(events[^1].Sequence, events[^1].Hash), await nodes[0].GetAuditHeadAsync(default));
    }

    [Fact]
    public async Task ANodeStalledHalfWayThroughAWrite_DoesNotHoldTheOtherNodesWrites_ItsOwnWriteFailsUncommitted()
    {
        // A node froze (or lost the network) inside a write, holding the deployment-wide write
        // lock: PostgreSQL ends its idle transaction, where it would have waited two hours for
        // the dead connection, and the other node's write goes through within its timeout.
        var stalled = await PostgresStore.OpenAsync(new PostgresOptions { ConnectionString = _database.ConnectionString, IdleInTransactionTimeout = TimeSpan.FromSeconds(2) }, null, default);
        _opened.Add(stalled);
        var other = await OpenAsync();
        var key = KeyStoreContract.NewKey(Dev, "stalled");
        await stalled.CreateKeyAsync(key, KeyStoreContract.Material(), null, default);
        using var release = new ManualResetEventSlim();
        var inside = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var write = Task.Run(() => stalled.UpdateKeyAsync(key.Name, current =>
        {
            inside.TrySetResult();
            release.Wait();
            return new KeyChange(current.Key with { State = KeyState.Disabled });
        }, default));
        await inside.Task;

        try
        {
            await other.CreateKeyAsync(KeyStoreContract.NewKey(Dev, "meanwhile"), KeyStoreContract.Material(), null, default);
        }
        finally
        {
            release.Set();
        }

        await Assert.ThrowsAnyAsync<Exception>(() => write);
        Assert.Equal(KeyState.Enabled, (await other.GetKeyAsync(key.Name, default))!.State);
    }

    [Fact]
    public async Task TwoNodes_ConcurrentImportsOfOneMaterialThroughOneJob_IntoTwoKeys_OnlyOneStored()
    {
        // The record of what a job imported is written with the version, under the write lock:
        // two nodes importing one material through one job at once cannot both succeed.
        var nodes = new[] { await OpenAsync(), await OpenAsync() };
        var keys = new[] { KeyStoreContract.NewKey(Dev, "byok-a") with { AllowImport = true }, KeyStoreContract.NewKey(Dev, "byok-b") with { AllowImport = true } };
        foreach (var key in keys)
        {
            await nodes[0].CreateKeyAsync(key, KeyStoreContract.Material(), null, default);
        }

        var fingerprint = Convert.ToHexStringLower(System.Security.Cryptography.RandomNumberGenerator.GetBytes(32));
        for (var round = 0; round < 5; round++)
        {
            var job = $"tenants/dev/importJobs/job-{round}";
            var outcomes = await Task.WhenAll(Enumerable.Range(0, 2).Select(n => Task.Run(async () =>
            {
                try
                {
                    await nodes[n].UpdateKeyAsync(keys[n].Name, current => KeyStoreLifecycleContract.Imported(current, job, fingerprint), default);
                    return "stored";
                }
                catch (KmsException e)
                {
                    return e.Code.ToString();
                }
            })));

            Assert.Equal(["FailedPrecondition", "stored"], outcomes.Order(StringComparer.Ordinal));
        }

        var stored = await Task.WhenAll(keys.Select(key => nodes[1].ListVersionsAsync(key.Name, 0, 10, default)));
        Assert.Equal(5, stored.Sum(versions => versions.Count(v => v.ImportFingerprint == fingerprint)));
    }

    [Fact]
    public async Task Migration4_KeysThatAlreadyHoldAnImportedVersion_KeepTakingImports_OthersDoNot()
    {
        // A database as the release before allow_import left it: two keys, one of which took an import.
        var store = await OpenAsync();
        var plain = KeyStoreContract.NewKey(Dev, "plain");
        var byok = KeyStoreContract.NewKey(Dev, "byok");
        await store.CreateKeyAsync(plain, KeyStoreContract.Material(), null, default);
        await store.CreateKeyAsync(byok with { Primary = byok.Primary with { Origin = KeyOrigin.Imported } }, KeyStoreContract.Material(), null, default);
        await using (var connection = new NpgsqlConnection(_database.ConnectionString))
        {
            await connection.OpenAsync();
            await using var undo = connection.CreateCommand();
            undo.CommandText = "DROP INDEX grants_active; DROP INDEX api_tokens_by_principal; CREATE INDEX api_tokens_by_principal ON api_tokens (principal); DROP INDEX role_bindings_by_tenant; CREATE INDEX role_bindings_by_tenant ON role_bindings (tenant); DROP INDEX keys_destroy_failing; DROP INDEX key_versions_destroy_failing; ALTER TABLE keys DROP COLUMN destroy_failures; ALTER TABLE keys DROP COLUMN destroy_failing_since; ALTER TABLE keys DROP COLUMN destroy_retry_time; ALTER TABLE key_versions DROP COLUMN destroy_failures; ALTER TABLE key_versions DROP COLUMN destroy_failing_since; ALTER TABLE key_versions DROP COLUMN destroy_retry_time; DROP TABLE audit_blocks; DROP TABLE usage_flushes; ALTER TABLE audit_events DROP COLUMN key_versions; ALTER TABLE key_versions DROP COLUMN import_fingerprint; ALTER TABLE quorum_approvals DROP COLUMN sign_time; ALTER TABLE quorum_requests DROP COLUMN executing_node, DROP COLUMN credential_path, DROP COLUMN credential_revoke_time; ALTER TABLE principals DROP COLUMN delete_time; ALTER TABLE tenants DROP COLUMN delete_waiting_ms; ALTER TABLE keys DROP COLUMN allow_import; DELETE FROM schema_migrations WHERE version >= 4";
            await undo.ExecuteNonQueryAsync();
        }

        var migrated = await OpenAsync();

        Assert.False((await migrated.GetKeyAsync(plain.Name, default))!.AllowImport);
        Assert.True((await migrated.GetKeyAsync(byok.Name, default))!.AllowImport);
    }

    [Fact]
    public async Task Migration11_FromAVersion10Database_KeepsTheCounts_FlushesAppliedOnceAfter()
    {
        // A database as release 10 left it: a version that counted decryptions, no usage_flushes.
        var store = await OpenAsync();
        var key = KeyStoreContract.NewKey(Dev, "used");
        await store.CreateKeyAsync(key, KeyStoreContract.Material(), null, default);
        await store.RecordUsageAsync(new UsageFlush(Guid.NewGuid(), 1, key.CreateTime, [new UsageDelta(key.Primary.Id, 5, null, null)]), default);
        await using (var connection = new NpgsqlConnection(_database.ConnectionString))
        {
            await connection.OpenAsync();
            await using var undo = connection.CreateCommand();
            undo.CommandText = "DROP INDEX grants_active; DROP INDEX api_tokens_by_principal; CREATE INDEX api_tokens_by_principal ON api_tokens (principal); DROP INDEX role_bindings_by_tenant; CREATE INDEX role_bindings_by_tenant ON role_bindings (tenant); DROP INDEX keys_destroy_failing; DROP INDEX key_versions_destroy_failing; ALTER TABLE keys DROP COLUMN destroy_failures; ALTER TABLE keys DROP COLUMN destroy_failing_since; ALTER TABLE keys DROP COLUMN destroy_retry_time; ALTER TABLE key_versions DROP COLUMN destroy_failures; ALTER TABLE key_versions DROP COLUMN destroy_failing_since; ALTER TABLE key_versions DROP COLUMN destroy_retry_time; DROP TABLE audit_blocks; DROP TABLE usage_flushes; DELETE FROM schema_migrations WHERE version >= 11";
            await undo.ExecuteNonQueryAsync();
        }

        var migrated = await OpenAsync();
        Assert.Equal(PostgresSchema.Migrations[^1].Version, migrated.SchemaVersion);
        Assert.Equal(0L, await _database.ScalarAsync("SELECT count(*) FROM usage_flushes"));
        var flush = new UsageFlush(Guid.NewGuid(), 1, key.CreateTime, [new UsageDelta(key.Primary.Id, 2, null, null)]);
        Assert.True(await migrated.RecordUsageAsync(flush, default));
        Assert.False(await migrated.RecordUsageAsync(flush, default));
        Assert.Equal(7, (await migrated.GetVersionAsync(key.Primary.Name, default))!.Usage.DecryptCount);
    }

    [Fact]
    public async Task TwoNodes_DatabaseDefaultsToRepeatableRead_ConcurrentGroupCommitsStillSucceed()
    {
        // Under REPEATABLE READ the audit writer's snapshot would be taken before it holds the
        // write lock, and the chain head read after it would be stale: its inserts would collide.
        await using (var connection = new NpgsqlConnection(_database.ConnectionString))
        {
            await connection.OpenAsync();
            await using var alter = connection.CreateCommand();
            alter.CommandText = $"ALTER DATABASE \"{connection.Database}\" SET default_transaction_isolation = 'repeatable read'";
            await alter.ExecuteNonQueryAsync();
        }

        var nodes = new[] { await OpenAsync(), await OpenAsync() };
        var work = nodes.SelectMany(node => Enumerable.Range(0, 2).Select(_ => Task.Run(async () =>
        {
            for (var i = 0; i < 30; i++)
            {
                await node.AppendAuditAsync([AuditStoreContract.Entry(i)], default);
            }
        })));
        await Task.WhenAll(work);

        var events = await ReadAllEventsAsync(nodes[0]);
        Assert.Equal(120, events.Count);
        Assert.Equal(Enumerable.Range(1, 120).Select(i => (long)i), events.Select(e => e.Sequence));
    }

    [Fact]
    public async Task DatabaseTime_IsTheServersClock_WaitingPeriodsStartFromIt()
    {
        var node = await OpenAsync();
        var before = DateTimeOffset.UtcNow;
        var database = await node.GetDatabaseTimeAsync(default);
        Assert.NotNull(database);
        Assert.InRange(database.Value, before.AddSeconds(-5), DateTimeOffset.UtcNow.AddSeconds(5));
    }

    [Fact]
    public async Task Lease_OneHolderAtATime_TakenOverWhenTheHoldersConnectionDies()
    {
        var options = Options();
        var first = Lease(options, TimeProvider.System);
        var second = Lease(options, TimeProvider.System);
        Assert.True(await first.HoldAsync(standAside: false, default));
        Assert.False(await second.HoldAsync(standAside: false, default));
        Assert.True(await first.HoldAsync(standAside: false, default));

        // The leader's node dies: PostgreSQL ends its session, and with it the lock. Waited for
        // (pg_terminate_backend's timeout, 60 s: a hang guard): without one it returns once the
        // backend is signalled, and the lock goes only when the backend has ended (a loaded run
        // found it still held at the next line).
        await PostgresTestDatabase.ExecuteAsync(_database.ConnectionString, $"""
            DO $$
            DECLARE holder int;
            BEGIN
              FOR holder IN SELECT pid FROM pg_locks
                            WHERE locktype = 'advisory' AND granted AND objid = {PostgresLeaderLease.LockKey & 0xFFFF_FFFF}
                              AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) LOOP
                IF NOT pg_terminate_backend(holder, 60000) THEN
                  RAISE EXCEPTION 'hang guard: the leader''s backend had not ended 60 s after it was terminated';
                END IF;
              END LOOP;
            END $$
            """);
        Assert.True(await second.HoldAsync(standAside: false, default));

        // The old leader notices at its next check and does not lead beside the new one.
        Assert.False(await first.HoldAsync(standAside: false, default));
        Assert.False(first.Held);

        await second.DisposeAsync();
        await HeldOnceTheClosedSessionEndedAsync(first, standAside: false, "the first lease was not taken again");
    }

    // A node standing aside (it refuses audit checkpoints) leaves the lease to a node ready to
    // lead, and does not take it back while that node lives: no flapping. Alone, it leads. Before,
    // the lease knew nothing of it: a refusing leader kept it, and no node signed checkpoints.
    [Fact]
    public async Task Lease_HolderStandsAside_LeftToANodeReadyToLead_NotTakenBack_TakenWhenAlone()
    {
        var options = Options();
        var refusing = Lease(options, TimeProvider.System);
        var healthy = Lease(options, TimeProvider.System);

        // Alone, a node standing aside leads (and keeps the lease at its next check).
        Assert.True(await refusing.HoldAsync(standAside: true, default));
        Assert.True(await refusing.HoldAsync(standAside: true, default));

        // A node ready to lead asks: not yet free. The holder, standing aside, gives it up once.
        Assert.False(await healthy.HoldAsync(standAside: false, default));
        Assert.False(await refusing.HoldAsync(standAside: true, default));
        Assert.True(refusing.LeftToAnotherNode);
        Assert.True(await healthy.HoldAsync(standAside: false, default));

        // Not taken back, check after check, while the ready node lives (it is the leader now).
        for (var check = 0; check < 3; check++)
        {
            Assert.False(await refusing.HoldAsync(standAside: true, default));
            Assert.True(await healthy.HoldAsync(standAside: false, default));
        }

        // The refusal ends: the node is ready again, but the lease stays with its holder — which,
        // refusing in turn, leaves it to the node ready again.
        Assert.False(await refusing.HoldAsync(standAside: false, default));
        Assert.False(refusing.LeftToAnotherNode);
        Assert.False(await healthy.HoldAsync(standAside: true, default));
        Assert.True(await refusing.HoldAsync(standAside: false, default));

        // The ready node goes: the one standing aside is alone, and leads.
        await refusing.DisposeAsync();
        await HeldOnceTheClosedSessionEndedAsync(healthy, standAside: true, "the node standing aside, alone, did not lead");
        Assert.False(healthy.LeftToAnotherNode);
    }

    [Fact]
    public async Task Lease_NodeClockMinutesOff_NeverLeads_AndALeaderWhoseClockDriftsStepsDown()
    {
        var options = Options();
        var ahead = new FakeTimeProvider(DateTimeOffset.UtcNow + TimeSpan.FromMinutes(5));
        var skewed = Lease(options, ahead);
        Assert.False(await skewed.HoldAsync(standAside: false, default));
        Assert.True(skewed.ClockRefused);
        Assert.InRange(skewed.LastClockSkew!.Value, TimeSpan.FromMinutes(4), TimeSpan.FromMinutes(6));

        // The lease stayed free: a node with a good clock takes it.
        var drifting = new FakeTimeProvider(DateTimeOffset.UtcNow);
        var leader = Lease(options, drifting);
        Assert.True(await leader.HoldAsync(standAside: false, default));

        drifting.Advance(TimeSpan.FromMinutes(3));
        Assert.False(await leader.HoldAsync(standAside: false, default));
        Assert.True(await Lease(options, TimeProvider.System).HoldAsync(standAside: false, default));
    }

    [Fact]
    public async Task DatabaseUnreachable_Unavailable_NothingPartial_ServesAgainWithoutReopening()
    {
        var builder = new NpgsqlConnectionStringBuilder(_database.ConnectionString);
        await using var proxy = new TcpProxy(new IPEndPoint(IPAddress.Loopback, builder.Port));
        var store = await OpenAsync(new NpgsqlConnectionStringBuilder(_database.ConnectionString) { Port = proxy.Port }.ConnectionString);
        await store.CreateKeyAsync(KeyStoreContract.NewKey(Dev, "before"), KeyStoreContract.Material(), null, default);
        await store.AppendAuditAsync([AuditStoreContract.Entry(1)], default);

        proxy.Cut();
        var create = await Assert.ThrowsAsync<KmsException>(() => store.CreateKeyAsync(KeyStoreContract.NewKey(Dev, "during"), KeyStoreContract.Material(), null, default));
        AssertCleanUnavailable(create, proxy.Port);
        var append = await Assert.ThrowsAsync<KmsException>(() => store.AppendAuditAsync([AuditStoreContract.Entry(2)], default));
        AssertCleanUnavailable(append, proxy.Port);
        AssertCleanUnavailable(await Assert.ThrowsAsync<KmsException>(() => store.GetKeyAsync(KeyName.Create(Dev, "before"), default)), proxy.Port);

        // Where nothing listens, the driver's own message names the address it tried ("Failed to connect to 127.0.0.1:…").
        using var closed = new TcpListener(IPAddress.Loopback, 0);
        closed.Start();
        var closedPort = ((IPEndPoint)closed.LocalEndpoint).Port;
        closed.Stop();
        AssertCleanUnavailable(await Assert.ThrowsAsync<KmsException>(() => PostgresStore.OpenAsync(
            Options(new NpgsqlConnectionStringBuilder(_database.ConnectionString) { Port = closedPort }.ConnectionString), default)), closedPort);

        proxy.Restore();

        // A pooled connection broken by the cut fails once (UNAVAILABLE, which clients retry); then the store serves.
        var key = await RetryAsync(() => store.GetKeyAsync(KeyName.Create(Dev, "before"), default));
        Assert.NotNull(key);
        Assert.Null(await RetryAsync(() => store.GetKeyAsync(KeyName.Create(Dev, "during"), default)));
        await RetryAsync(async () =>
        {
            await store.AppendAuditAsync([AuditStoreContract.Entry(3)], default);
            return 0;
        });
        var events = await ReadAllEventsAsync(store);
        Assert.Equal([1L, 2L], events.Select(e => e.Sequence));
        Assert.Equal(events[0].Hash, events[1].PreviousHash);
    }

    [Fact]
    public async Task UsageFlush_CommitsButItsAnswerIsLost_SentAgain_CountedOnce()
    {
        // PostgreSQL commits the flush; the connection breaks before the store reads the COMMIT's
        // answer, so the flush fails and is sent again. Before, its counts were given back and
        // added a second time.
        var (store, proxy, key, usage) = await UsageBehindAProxyAsync();
        store.BeforeNextCommit = proxy.HoldReplies;
        var flush = usage.FlushAsync(default);
        await WaitForStoredDecryptCountAsync(key, 3);
        proxy.Cut();
        Assert.Equal(KmsErrorCode.Unavailable, (await Assert.ThrowsAsync<KmsException>(() => flush)).Code);

        proxy.Restore();
        Assert.Equal(4, await CountOneMoreAndFlushAsync(store, key, usage));
    }

    [Fact]
    public async Task UsageFlush_ConnectionCutBeforeItsCommit_RolledBack_SentAgain_CountedOnce()
    {
        var (store, proxy, key, usage) = await UsageBehindAProxyAsync();
        store.BeforeNextCommit = proxy.Cut;
        Assert.Equal(KmsErrorCode.Unavailable, (await Assert.ThrowsAsync<KmsException>(() => usage.FlushAsync(default))).Code);
        Assert.Equal(0L, await _database.ScalarAsync("SELECT decrypt_count FROM key_versions WHERE tenant = 'dev' AND key_id = 'used'"));

        proxy.Restore();
        Assert.Equal(4, await CountOneMoreAndFlushAsync(store, key, usage));
    }

    // One more decryption after the fault, flushed once the database answers again: the stored
    // count then holds every use once.
    private static async Task<long> CountOneMoreAndFlushAsync(PostgresStore store, Key key, UsageCounter usage)
    {
        usage.CountDecryption(key.Primary.Id);
        await RetryAsync(async () =>
        {
            await usage.FlushAsync(default);
            return 0;
        });
        return (await store.GetVersionAsync(key.Primary.Name, default))!.Usage.DecryptCount;
    }

    [Fact]
    public async Task Reservation_CommitsButItsAnswerIsLost_TheBlockCountsAsUsed_NeverANumberTwice()
    {
        // Claim 23 under the same fault: a block whose COMMIT answer is lost is in the durable
        // count, unknown to the node; the next reservation skips it, so the count runs ahead of
        // the encryptions (the bound stricter), never behind.
        var (store, proxy, key, _) = await UsageBehindAProxyAsync();
        var usage = new UsageCounter(store, new UsageLimitOptions { SoftBound = 1000, HardBound = 2000, ReservationBlock = 4 }, TimeProvider.System);
        store.BeforeNextCommit = proxy.HoldReplies;
        var take = usage.TakeEncryptionsAsync(key.Primary, 1, default).AsTask();
        var sql = "SELECT encrypt_count FROM key_versions WHERE tenant = 'dev' AND key_id = 'used'";
        for (var attempt = 0; (long)(await _database.ScalarAsync(sql))! != 4; attempt++)
        {
            Assert.True(attempt < 600, "hang guard: the reservation did not commit within 30 s");
            await Task.Delay(50);
        }

        proxy.Cut();
        Assert.Equal(KmsErrorCode.Unavailable, (await Assert.ThrowsAsync<KmsException>(() => take)).Code);
        proxy.Restore();
        await RetryAsync(async () =>
        {
            await usage.TakeEncryptionsAsync(key.Primary, 1, default);
            return 0;
        });

        var stored = (await store.GetVersionAsync(key.Primary.Name, default))!;
        Assert.Equal(8, stored.Usage.EncryptCount);
        Assert.Equal(5, usage.Observe(stored).EncryptCount);
    }

    // A store reached through a proxy, a key, and a usage counter holding 3 decryptions of its primary version.
    private async Task<(PostgresStore Store, TcpProxy Proxy, Key Key, UsageCounter Usage)> UsageBehindAProxyAsync()
    {
        var proxy = new TcpProxy(new IPEndPoint(IPAddress.Loopback, new NpgsqlConnectionStringBuilder(_database.ConnectionString).Port));
        _opened.Add(proxy);
        var store = await OpenAsync(new NpgsqlConnectionStringBuilder(_database.ConnectionString) { Port = proxy.Port }.ConnectionString);
        var key = KeyStoreContract.NewKey(Dev, "used");
        await store.CreateKeyAsync(key, KeyStoreContract.Material(), null, default);
        var usage = new UsageCounter(store, new UsageLimitOptions(), TimeProvider.System);
        for (var i = 0; i < 3; i++)
        {
            usage.CountDecryption(key.Primary.Id);
        }

        return (store, proxy, key, usage);
    }

    // Waits until the database (read directly, not through the proxy) holds the count: the write committed.
    private async Task WaitForStoredDecryptCountAsync(Key key, long count)
    {
        var sql = $"SELECT decrypt_count FROM key_versions WHERE tenant = '{key.Name.Tenant.Value}' AND key_id = '{key.Name.KeyId}'";
        for (var attempt = 0; (long)(await _database.ScalarAsync(sql))! != count; attempt++)
        {
            Assert.True(attempt < 600, $"hang guard: the decrypt count did not reach {count} within 30 s");
            await Task.Delay(50);
        }
    }

    // UNAVAILABLE, and nothing of the database's own message (an address, a port, the driver's words) in the answer.
    private static void AssertCleanUnavailable(KmsException e, int port)
    {
        Assert.Equal(KmsErrorCode.Unavailable, e.Code);
        Assert.DoesNotContain("127.0.0.1", e.Message, StringComparison.Ordinal);
        Assert.DoesNotContain(port.ToString(System.Globalization.CultureInfo.InvariantCulture), e.Message, StringComparison.Ordinal);
        for (var inner = e.InnerException; inner is { Message.Length: > 0 }; inner = inner.InnerException)
        {
            Assert.DoesNotContain(inner.Message, e.Message, StringComparison.Ordinal);
        }
    }

    [Fact]
    public async Task Grant_WhileAnotherNodeLiftsTheKeysPolicy_CheckedUnderTheWriteLock_Refused()
    {
        // Another node lifts the key's policy (revoking its grants) and holds the deployment-wide
        // write lock until it commits; this node's grant, asked meanwhile, waits for the lock. Its
        // check must read the key after the lift: read before the lock, it would find the policy
        // still in place and write the grant after the lift, dormant until a later policy revived it.
        var store = await OpenAsync();
        var key = KeyStoreContract.NewKey(Dev, "racing");
        await store.CreateKeyAsync(key, KeyStoreContract.Material(), null, default);
        await store.SetKeyPolicyAsync(new KeyPolicy(key.Name, new Dictionary<string, KeyOperations> { ["token:owner"] = KeyOperations.Encrypt }), DateTimeOffset.UtcNow, default);

        await using var otherNode = new NpgsqlConnection(new NpgsqlConnectionStringBuilder(_database.ConnectionString) { Pooling = false }.ConnectionString);
        await otherNode.OpenAsync();
        await using var lift = await otherNode.BeginTransactionAsync(System.Data.IsolationLevel.ReadCommitted);
        await using (var lifting = new NpgsqlCommand($"""
            SELECT pg_advisory_xact_lock({PostgresStore.WriteLockKey});
            DELETE FROM key_policies WHERE tenant = 'dev' AND key_id = 'racing';
            UPDATE keys SET restricted = 0 WHERE tenant = 'dev' AND key_id = 'racing';
            UPDATE grants SET revoke_time = 0 WHERE tenant = 'dev' AND key_id = 'racing' AND revoke_time IS NULL;
            """, otherNode, lift))
        {
            await lifting.ExecuteNonQueryAsync();
        }

        var grant = store.CreateGrantAsync(new Grant("00000000000000c1", key.Name, PrincipalName.Token("reader"), KeyOperations.Decrypt, new Dictionary<string, string>(), DateTimeOffset.UtcNow), default);
        for (var attempt = 0; !grant.IsCompleted && (long)(await _database.ScalarAsync($"""
            SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted AND objid = {PostgresStore.WriteLockKey & 0xFFFF_FFFF}
              AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
            """))! == 0; attempt++)
        {
            Assert.True(attempt < 600, "hang guard: the grant did not wait for the write lock within 30 s");
            await Task.Delay(50);
        }

        await lift.CommitAsync();
        Assert.Equal(KmsErrorCode.FailedPrecondition, (await Assert.ThrowsAsync<KmsException>(() => grant)).Code);
        Assert.Empty(await store.ListGrantsAsync(key.Name, includeRevoked: true, default));
    }

    [Fact]
    public async Task SynchronousStandbyAway_ACommitOutlivesItsTimeoutAndToken_OneWhoseWaitIsCancelledIsNotAcknowledged()
    {
        // A cluster of its own: the standby setting is the whole cluster's.
        // Each store is opened after the setting changed: a backend that has not yet taken a
        // reload would commit without waiting (pg_reload_conf only signals).
        await using var cluster = await ThrowAwayPostgres.StartAsync();
        await using (var migrated = await PostgresStore.OpenAsync(new PostgresOptions { ConnectionString = cluster.ConnectionString }, default))
        {
            await migrated.AppendAuditAsync([AuditStoreContract.Entry(1)], default);
        }

        await StandbyAsync(cluster, "ghost");
        var store = await PostgresStore.OpenAsync(new PostgresOptions { ConnectionString = cluster.ConnectionString, CommandTimeout = TimeSpan.FromSeconds(1) }, default);
        _opened.Add(store);

        // The caller gives up and the command timeout (1 s) passes: the COMMIT keeps waiting for
        // the standby, and what it wrote stays invisible, until the standby confirms.
        using (var cancel = new CancellationTokenSource())
        {
            var create = store.CreateKeyAsync(KeyStoreContract.NewKey(Dev, "waiting"), KeyStoreContract.Material(), null, cancel.Token);
            await WaitingForTheStandbyAsync(cluster);
            await cancel.CancelAsync();
            await Task.Delay(TimeSpan.FromSeconds(3));
            Assert.False(create.IsCompleted, $"a write waiting for the standby ended without it: {create.Status} {create.Exception?.InnerException?.Message}");
            await using (var admin = new NpgsqlConnection(cluster.ConnectionString))
            {
                await admin.OpenAsync();
                await using var visible = new NpgsqlCommand("SELECT count(*) FROM keys WHERE key_id = 'waiting'", admin);
                Assert.Equal(0L, await visible.ExecuteScalarAsync());
            }

            await StandbyAsync(cluster, null);
            await create;
        }

        // An administrator cancels the wait (pg_cancel_backend): committed here only, so not acknowledged.
        await StandbyAsync(cluster, "ghost");
        var again = await PostgresStore.OpenAsync(new PostgresOptions { ConnectionString = cluster.ConnectionString }, default);
        _opened.Add(again);
        var append = again.AppendAuditAsync([AuditStoreContract.Entry(2)], default);
        await CancelTheWaitAsync(cluster, await WaitingForTheStandbyAsync(cluster));
        Assert.Equal(KmsErrorCode.Unavailable, (await Assert.ThrowsAsync<KmsException>(() => append)).Code);
        // Also when the connection string asks PostgreSQL to keep its warnings to itself.
        var quiet = await PostgresStore.OpenAsync(new PostgresOptions { ConnectionString = cluster.ConnectionString + ";Options=-c client_min_messages=error" }, default);
        _opened.Add(quiet);
        var mutation = quiet.CreateKeyAsync(KeyStoreContract.NewKey(Dev, "cancelled"), KeyStoreContract.Material(), null, default);
        await CancelTheWaitAsync(cluster, await WaitingForTheStandbyAsync(cluster));
        Assert.Equal(KmsErrorCode.Unavailable, (await Assert.ThrowsAsync<KmsException>(() => mutation)).Code);

        // A node shutting down while a group commit waits for the standby does not wait with it.
        var stopping = await PostgresStore.OpenAsync(new PostgresOptions { ConnectionString = cluster.ConnectionString }, default);
        var inFlight = stopping.AppendAuditAsync([AuditStoreContract.Entry(3)], default);
        await WaitingForTheStandbyAsync(cluster);
        var disposal = stopping.DisposeAsync().AsTask();
        Assert.Same(disposal, await Task.WhenAny(disposal, Task.Delay(TimeSpan.FromSeconds(60))));
        Assert.False(inFlight.IsCompletedSuccessfully, "a batch was acknowledged while its COMMIT still waited");

        await StandbyAsync(cluster, null);
    }

    private static async Task StandbyAsync(ThrowAwayPostgres cluster, string? name)
    {
        await using var admin = new NpgsqlConnection(cluster.ConnectionString);
        await admin.OpenAsync();
        await using var set = new NpgsqlCommand(name is null ? "ALTER SYSTEM RESET synchronous_standby_names" : $"ALTER SYSTEM SET synchronous_standby_names = '{name}'", admin);
        await set.ExecuteNonQueryAsync();
        await using var reload = new NpgsqlCommand("SELECT pg_reload_conf()", admin);
        await reload.ExecuteNonQueryAsync();

        // Reloaded once a new backend sees it.
        for (var attempt = 0; ; attempt++)
        {
            await using var fresh = new NpgsqlConnection(cluster.ConnectionString + ";Pooling=false");
            await fresh.OpenAsync();
            await using var show = new NpgsqlCommand("SHOW synchronous_standby_names", fresh);
            if ((string?)await show.ExecuteScalarAsync() == (name ?? ""))
            {
                return;
            }

            Assert.True(attempt < 600, "the cluster did not take the new standby setting within 30 s");
            await Task.Delay(50);
        }
    }

    private static async Task<int> WaitingForTheStandbyAsync(ThrowAwayPostgres cluster)
    {
        await using var admin = new NpgsqlConnection(cluster.ConnectionString);
        await admin.OpenAsync();
        await using var waiting = new NpgsqlCommand("SELECT pid FROM pg_stat_activity WHERE wait_event = 'SyncRep' LIMIT 1", admin);
        for (var attempt = 0; attempt < 600; attempt++)
        {
            if (await waiting.ExecuteScalarAsync() is int pid)
            {
                return pid;
            }

            await Task.Delay(50);
        }

        throw new TimeoutException("no backend waited for the synchronous standby within 30 s");
    }

    private static async Task CancelTheWaitAsync(ThrowAwayPostgres cluster, int pid)
    {
        await using var admin = new NpgsqlConnection(cluster.ConnectionString);
        await admin.OpenAsync();
        await using var cancel = new NpgsqlCommand($"SELECT pg_cancel_backend({pid})", admin);
        Assert.Equal(true, await cancel.ExecuteScalarAsync());
    }

    [Fact]
    public async Task RollingUpgrade_AdditiveMigration_OldNodesKeepServing_BreakingMigrationRefusesThem()
    {
        var current = PostgresSchema.Migrations;
        var latest = current[^1].Version;
        var additive = new SchemaMigration(latest + 1, "ALTER TABLE keys ADD COLUMN note TEXT;", CompatibleFrom: latest);
        var newer = await OpenAsync(migrations: [.. current, additive]);
        Assert.Equal(latest + 1, newer.SchemaVersion);

        // Version N starts (or keeps running) beside N+1; each sees the other's writes.
        var older = await OpenAsync();
        Assert.Equal(latest + 1, older.SchemaVersion);
        await older.CreateKeyAsync(KeyStoreContract.NewKey(Dev, "by-old"), KeyStoreContract.Material(), null, default);
        await newer.CreateKeyAsync(KeyStoreContract.NewKey(Dev, "by-new"), KeyStoreContract.Material(), null, default);
        Assert.NotNull(await newer.GetKeyAsync(KeyName.Create(Dev, "by-old"), default));
        Assert.NotNull(await older.GetKeyAsync(KeyName.Create(Dev, "by-new"), default));

        // N+2 makes a change N cannot live with: N (and N+1) are refused, with the reason.
        var breaking = new SchemaMigration(latest + 2, "CREATE TABLE needs_new_code (id BIGINT PRIMARY KEY);");
        await OpenAsync(migrations: [.. current, additive, breaking]);
        var refused = await Assert.ThrowsAsync<InvalidOperationException>(() => OpenAsync());
        Assert.Contains($"schema version {latest + 2}", refused.Message, StringComparison.Ordinal);
        Assert.Contains("upgrade", refused.Message, StringComparison.Ordinal);
        await Assert.ThrowsAsync<InvalidOperationException>(() => OpenAsync(migrations: [.. current, additive]));
    }

    [Fact]
    public async Task DestroyedVersion_NoRowVersionInTheTableStillHoldsItsMaterial()
    {
        var store = await OpenAsync();
        var key = KeyStoreContract.NewKey(Dev, "shredded");
        var material = KeyStoreContract.Material();
        await store.CreateKeyAsync(key, material, null, default);
        await store.UpdateKeyAsync(key.Name, current => KeyStoreLifecycleContract.Rotation(current, KeyStoreContract.Material()), default);
        var hex = Convert.ToHexStringLower(material.Bytes.Span);
        Assert.Equal(1L, await TuplesHoldingAsync(hex));

        await store.UpdateKeyAsync(key.Name, current => new KeyChange(current.Key)
        {
            UpdatedVersions = [current.Versions[0] with { State = KeyState.Destroyed, DestroyEventTime = DateTimeOffset.UtcNow }],
        }, default);

        // Neither the live row (material NULL) nor a dead version of it (vacuumed) holds the bytes
        // (the destroy erases at once when no older snapshot exists; else the retried pass does).
        Assert.True(await ErasureCompletesAsync(store));
        Assert.Equal(0L, await TuplesHoldingAsync(hex));
    }

    [Fact]
    public async Task DestroyedVersion_WhileAnOlderSnapshotIsOpen_ErasurePendingUntilItCloses()
    {
        var store = await OpenAsync();
        var key = KeyStoreContract.NewKey(Dev, "seen-by-a-reader");
        var material = KeyStoreContract.Material();
        await store.CreateKeyAsync(key, material, null, default);
        await store.UpdateKeyAsync(key.Name, current => KeyStoreLifecycleContract.Rotation(current, KeyStoreContract.Material()), default);
        var hex = Convert.ToHexStringLower(material.Bytes.Span);

        // A reader (another node, pg_dump) holding a snapshot from before the destruction.
        await using var reader = new NpgsqlConnection(new NpgsqlConnectionStringBuilder(_database.ConnectionString) { Pooling = false }.ConnectionString);
        await reader.OpenAsync();
        await using var snapshot = await reader.BeginTransactionAsync(System.Data.IsolationLevel.RepeatableRead);
        await using (var read = new NpgsqlCommand("SELECT count(*) FROM key_versions", reader, snapshot))
        {
            await read.ExecuteScalarAsync();
        }

        await store.UpdateKeyAsync(key.Name, current => new KeyChange(current.Key)
        {
            UpdatedVersions = [current.Versions[0] with { State = KeyState.Destroyed, DestroyEventTime = DateTimeOffset.UtcNow }],
        }, default);

        // The destroy committed; the old row version cannot go yet, and the store says so (the background pass retries).
        Assert.Null((await store.FindVersionMaterialAsync(Dev, key.Primary.Id, default))!.Material);
        Assert.False(await store.CompleteErasureAsync(default));
        Assert.Equal(1L, await TuplesHoldingAsync(hex));

        await snapshot.CommitAsync();
        Assert.True(await ErasureCompletesAsync(store));
        Assert.Equal(0L, await TuplesHoldingAsync(hex));
    }

    // The erasure waits for every older snapshot in the cluster, and other test classes' backends
    // (other databases of the same cluster) hold snapshots of their own for moments: retried as
    // the background pass retries it, for at most 30 s.
    private static async Task<bool> ErasureCompletesAsync(PostgresStore store)
    {
        var deadline = DateTime.UtcNow.AddSeconds(30);
        while (!await store.CompleteErasureAsync(default))
        {
            if (DateTime.UtcNow > deadline)
            {
                return false;
            }

            await Task.Delay(100);
        }

        return true;
    }

    // Row versions, live or dead, of key_versions whose data contains the bytes (pageinspect).
    private async Task<long> TuplesHoldingAsync(string hex)
    {
        await PostgresTestDatabase.ExecuteAsync(_database.ConnectionString, "CREATE EXTENSION IF NOT EXISTS pageinspect");
        return (long)(await _database.ScalarAsync($"""
            SELECT count(*) FROM generate_series(0, (pg_relation_size('key_versions') / current_setting('block_size')::int) - 1) AS page,
                 LATERAL heap_page_items(get_raw_page('key_versions', page::int)) AS item
            WHERE item.t_data IS NOT NULL AND position(decode('{hex}', 'hex') IN item.t_data) > 0
            """))!;
    }

    [Fact]
    public async Task ServingLock_NodesShareIt_MaintenanceExcludesThem()
    {
        var nodeA = await OpenAsync();
        var nodeB = await OpenAsync();
        var ceremony = await OpenAsync();
        Assert.True(await nodeA.TryHoldServingLockAsync(default));
        Assert.True(await nodeB.TryHoldServingLockAsync(default));
        Assert.False(await ceremony.TryHoldMaintenanceLockAsync(default));

        await nodeA.DisposeAsync();
        Assert.False(await ceremony.TryHoldMaintenanceLockAsync(default));
        await nodeB.DisposeAsync();

        // A session's advisory lock goes when its backend ends, which PostgreSQL does after the
        // client has closed: not necessarily before the next statement of another session (CI once
        // found it still held). Asked again until it is free (30 s: a hang guard).
        var released = System.Diagnostics.Stopwatch.StartNew();
        while (!await ceremony.TryHoldMaintenanceLockAsync(default))
        {
            Assert.True(released.Elapsed < TimeSpan.FromSeconds(30), "the maintenance lock was still refused 30 s after both nodes closed");
            await Task.Delay(50);
        }

        // While the maintenance runs, a node does not start serving.
        Assert.False(await (await OpenAsync()).TryHoldServingLockAsync(default));
    }

    [Fact]
    public async Task UnparsableConnectionString_RefusedWithoutQuotingIt()
    {
        // A ';' inside an unquoted password splits it: Npgsql would quote the second half as a keyword.
        var e = await Assert.ThrowsAsync<ArgumentException>(() => PostgresStore.OpenAsync(
            new PostgresOptions { ConnectionString = "Host=127.0.0.1;Password=first-half;second-half-of-it" }, default));
        Assert.DoesNotContain("half", e.Message, StringComparison.Ordinal);
        Assert.Contains("not valid", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task NodesStartingTogether_MigrateOnce()
    {
        var stores = await Task.WhenAll(Enumerable.Range(0, 4).Select(_ => OpenAsync()));
        Assert.All(stores, s => Assert.Equal(PostgresSchema.Migrations[^1].Version, s.SchemaVersion));
        Assert.Equal((long)PostgresSchema.Migrations.Count, await _database.ScalarAsync("SELECT count(*) FROM schema_migrations"));
    }

    private static async Task<T> RetryAsync<T>(Func<Task<T>> call)
    {
        for (var attempt = 1; ; attempt++)
        {
            try
            {
                return await call();
            }
            catch (KmsException e) when (e.Code == KmsErrorCode.Unavailable && attempt < 5)
            {
                await Task.Delay(100);
            }
        }
    }

    private static async Task<List<AuditEvent>> ReadAllEventsAsync(PostgresStore store)
    {
        var events = new List<AuditEvent>();
        while (true)
        {
            var page = await store.ListAuditEventsAsync(new AuditQuery { AfterSequence = events.Count == 0 ? 0 : events[^1].Sequence, Limit = 500 }, default);
            events.AddRange(page);
            if (page.Count < 500)
            {
                return events;
            }
        }
    }

    private PostgresOptions Options(string? connectionString = null) => new() { ConnectionString = connectionString ?? _database.ConnectionString };

    // A closed lease's locks (the lease's, and its shared ready lock) go when its backend ends,
    // which PostgreSQL does after the client has closed: not necessarily before another session's
    // next statement (as for the serving lock, 0f321b6). Asked again until held (30 s: a hang guard).
    private static async Task HeldOnceTheClosedSessionEndedAsync(PostgresLeaderLease lease, bool standAside, string what)
    {
        var closed = System.Diagnostics.Stopwatch.StartNew();
        while (!await lease.HoldAsync(standAside, default))
        {
            Assert.True(closed.Elapsed < TimeSpan.FromSeconds(30), $"hang guard: {what} 30 s after the holder closed");
            await Task.Delay(50);
        }
    }

    private PostgresLeaderLease Lease(PostgresOptions options, TimeProvider time)
    {
        var lease = new PostgresLeaderLease(options, time);
        _opened.Add(lease);
        return lease;
    }

    [Fact]
    public async Task TwoNodes_KeyLifecycleRaces_NoVersionNumberTwice_OnePrimary_OneScheduledRotationPerPeriod_UsageBoundHeld()
    {
        // Two nodes (their own stores, pools, services and clocks) on one database, with no leader
        // lease: what keeps them right is the store's write lock and the decisions taken under it.
        var limits = new UsageLimitOptions { SoftBound = 300, HardBound = 500, ReservationBlock = 16 };
        using var a = new Kms.Testing.Fakes.DomainHarness(await OpenAsync(), limits);
        using var b = new Kms.Testing.Fakes.DomainHarness(await OpenAsync(), limits);
        var caller = Kms.Testing.Fakes.DomainHarness.Dev;
        var nodes = new[] { a, b };

        // RotateKey racing RotateKey on both nodes: consecutive versions, no number twice, the newest primary.
        var key = await a.CreateKeyAsync("raced");
        await Task.WhenAll(nodes.SelectMany(node => Enumerable.Range(0, 3).Select(_ => Task.Run(async () =>
        {
            for (var i = 0; i < 4; i++)
            {
                await node.Keys.RotateKeyAsync(caller, key.Name, null, default);
            }
        }))));
        var versions = (await b.Keys.ListKeyVersionsAsync(caller, key.Name, 100, null, default)).Items;
        Assert.Equal(Enumerable.Range(1, 25), versions.Select(v => v.Name.Version));
        Assert.Equal(25, versions.Select(v => v.Id).Distinct().Count());
        Assert.All(versions, v => Assert.Equal(KeyState.Enabled, v.State));
        Assert.Equal(25, (await a.Keys.GetKeyAsync(caller, key.Name, default)).Primary.Name.Version);

        // Scheduled rotation due on both nodes at once, each pass run several times: rotated once in the period.
        var scheduled = await a.CreateKeyAsync("scheduled", rotationPeriod: TimeSpan.FromDays(1));
        foreach (var node in nodes)
        {
            node.Time.Advance(TimeSpan.FromDays(1) + TimeSpan.FromMinutes(1));
        }

        var passes = await Task.WhenAll(nodes.SelectMany(node => Enumerable.Range(0, 3).Select(_ => Task.Run(() => node.Keys.RotateDueKeysAsync(node.Time.GetUtcNow(), default)))));
        Assert.Equal(1, passes.Sum());
        var rotatedOnce = await b.Keys.GetKeyAsync(caller, scheduled.Name, default);
        Assert.Equal(2, rotatedOnce.Primary.Name.Version);
        Assert.True(rotatedOnce.NextRotationTime > a.Time.GetUtcNow(), $"next rotation {rotatedOnce.NextRotationTime:O} is due already");

        // Usage: both nodes reserve blocks from one count and encrypt concurrently past the hard
        // bound: together no more than the bound, and the durable count covers every one.
        var worn = await a.CreateKeyAsync("worn");
        var primary = worn.Primary;
        var taken = 0;
        await Task.WhenAll(nodes.SelectMany(node => Enumerable.Range(0, 4).Select(_ => Task.Run(async () =>
        {
            for (var i = 0; i < 100; i++)
            {
                try
                {
                    await node.Usage.TakeEncryptionsAsync(primary, 1 + (i % 3), default);
                    Interlocked.Add(ref taken, 1 + (i % 3));
                }
                catch (KmsException e) when (e.Code == KmsErrorCode.FailedPrecondition)
                {
                }
            }
        }))));
        var stored = (await a.Store.GetVersionAsync(primary.Name, default))!.Usage.EncryptCount;
        Assert.InRange(taken, 1, limits.HardBound);
        Assert.True(stored >= taken, $"durable count {stored} behind the {taken} encryptions taken");

        // Both nodes saw the soft bound and asked for a rotation: one rotation, the second a no-op.
        var rotations = await Task.WhenAll(nodes.Select(node => Task.Run(() => node.Keys.RotateForUsageAsync(worn.Name, default))));
        Assert.Equal(1, rotations.Count(done => done));
        Assert.Equal(2, (await b.Keys.GetKeyAsync(caller, worn.Name, default)).Primary.Name.Version);
    }

    private async Task<PostgresStore> OpenAsync(string? connectionString = null, IReadOnlyList<SchemaMigration>? migrations = null)
    {
        var store = await PostgresStore.OpenAsync(Options(connectionString), migrations, default);
        _opened.Add(store);
        return store;
    }
}
