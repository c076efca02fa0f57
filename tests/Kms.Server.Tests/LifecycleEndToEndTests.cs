using Google.Protobuf;
using Google.Protobuf.WellKnownTypes;
using Grpc.Core;
using Kms.Contracts.V1;
using Kms.Testing;
using Microsoft.Data.Sqlite;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.DependencyInjection.Extensions;
using Microsoft.Extensions.Time.Testing;

namespace Kms.Server.Tests;

/// <summary>
/// The key lifecycle through real gRPC, on a real server whose clock is a fake: time-driven
/// rotation and destruction happen when the test moves the clock.
/// </summary>
public sealed class LifecycleEndToEndTests : IAsyncLifetime
{
    private readonly FakeTimeProvider _time = new(new DateTimeOffset(2026, 11, 29, 12, 0, 0, TimeSpan.Zero));
    private KmsTestServer _server = null!;
    private Kms.Client.KmsClient _client = null!;

    private KeyManagementService.KeyManagementServiceClient Stub => _client.Raw;

    private static readonly string[] ServerArgs = ["--UsageLimits:SoftBound=8", "--UsageLimits:HardBound=16", "--UsageLimits:ReservationBlock=4"];

    public async Task InitializeAsync()
    {
        _server = await KmsTestServer.StartAsync(null, null, "dev", UseFakeClock, ServerArgs);
        _client = _server.CreateClient();
    }

    public async Task DisposeAsync()
    {
        _client.Dispose();
        await _server.DisposeAsync();
    }

    [Fact]
    public async Task ImportJobExpired_ItsPrivateKeyErased_TheErasureAudited()
    {
        await _client.CreateImportJobAsync("tenants/dev", "expiring", ImportMethod.RsaOaep3072Sha1Aes256);
        var query = new ListAuditEventsRequest { Operation = Kms.Core.Services.KeyService.ImportJobExpiryOperation, PageSize = 10 };
        using (var early = _server.CreateClient(await _server.CreatePrincipalWithTokenAsync("lifecycle-officer-early", null, "security-officer")))
        {
            Assert.Empty((await early.Audit.ListAuditEventsAsync(query)).Events);
        }

        _time.Advance(Kms.Core.Keys.ImportJob.Lifetime + TimeSpan.FromMinutes(1));

        // (A token made before the clock moved has expired by now.)
        using var auditor = _server.CreateClient(await _server.CreatePrincipalWithTokenAsync("lifecycle-officer", null, "security-officer"));
        await WaitUntilAsync(async () => (await auditor.Audit.ListAuditEventsAsync(query)).Events.Count > 0);
        var erasure = Assert.Single((await auditor.Audit.ListAuditEventsAsync(query)).Events);
        Assert.Equal(("system:lifecycle", "OK"), (erasure.Principal, erasure.Outcome));
    }

    [Fact]
    public async Task Rotate_OldBlobsDecrypt_VersionsListed_UsageVisible()
    {
        var key = await _client.CreateKeyAsync("tenants/dev", "rot");
        var old = await _client.EncryptAsync(key.Name, new byte[] { 1 });
        var rotated = (await Stub.RotateKeyAsync(new RotateKeyRequest { Name = key.Name })).Key;
        Assert.Equal($"{key.Name}/versions/2", rotated.Primary.Name);

        using (var decrypted = await _client.DecryptAsync(old.Ciphertext))
        {
            Assert.Equal($"{key.Name}/versions/1", decrypted.KeyVersion);
        }

        var versions = await Stub.ListKeyVersionsAsync(new ListKeyVersionsRequest { Parent = key.Name });
        Assert.Equal(new[] { 1, 2 }.Select(n => $"{key.Name}/versions/{n}"), versions.KeyVersions.Select(v => v.Name));

        var v1 = (await Stub.GetKeyVersionAsync(new GetKeyVersionRequest { Name = $"{key.Name}/versions/1" })).KeyVersion;
        Assert.Equal(1, v1.Usage.EncryptCount);
        Assert.Equal(1, v1.Usage.DecryptCount);
        Assert.NotNull(v1.Usage.LastDecryptTime);
    }

    [Fact]
    public async Task RotateKey_ConcurrentCalls_ConsecutiveVersionsOnePrimary()
    {
        var key = await _client.CreateKeyAsync("tenants/dev", "busy");
        await Task.WhenAll(Enumerable.Range(0, 10).Select(_ => Stub.RotateKeyAsync(new RotateKeyRequest { Name = key.Name }).ResponseAsync));
        var versions = await Stub.ListKeyVersionsAsync(new ListKeyVersionsRequest { Parent = key.Name });
        Assert.Equal(Enumerable.Range(1, 11).Select(n => $"{key.Name}/versions/{n}"), versions.KeyVersions.Select(v => v.Name));
        Assert.Equal($"{key.Name}/versions/11", (await _client.GetKeyAsync(key.Name)).Primary.Name);
    }

    [Fact]
    public async Task RotateKey_RetriedByAliasAfterTheAliasMovedToAnotherKey_FailedPrecondition_TheOtherKeyNotRotated()
    {
        // The SDK sends a RotateKey again, with the request id it filled in, after an UNAVAILABLE
        // whose first attempt may have been applied (RetrySafety); an admin moved the alias between.
        var first = await _client.CreateKeyAsync("tenants/dev", "moved-from");
        var second = await _client.CreateKeyAsync("tenants/dev", "moved-to");
        var alias = await _client.CreateAliasAsync("tenants/dev", "moving", first.Name);
        var request = new RotateKeyRequest { Name = alias.Name, RequestId = "rotate-through-moving-alias" };
        Assert.Equal($"{first.Name}/versions/2", (await Stub.RotateKeyAsync(request)).Key.Primary.Name);
        await _client.UpdateAliasAsync(alias.Name, second.Name);

        var e = await Assert.ThrowsAsync<RpcException>(() => Stub.RotateKeyAsync(request).ResponseAsync);

        Assert.Equal(StatusCode.FailedPrecondition, e.StatusCode);
        Assert.Contains("was used for a RotateKey that rotated another key", e.Status.Detail, StringComparison.Ordinal);
        Assert.DoesNotContain(first.Name, e.Status.Detail, StringComparison.Ordinal);
        Assert.Equal($"{second.Name}/versions/1", (await _client.GetKeyAsync(second.Name)).Primary.Name);
        Assert.Single((await Stub.ListKeyVersionsAsync(new ListKeyVersionsRequest { Parent = second.Name })).KeyVersions);
        Assert.Equal($"{first.Name}/versions/2", (await _client.GetKeyAsync(first.Name)).Primary.Name);
    }

    [Fact]
    public async Task RotateKey_RacingDisableKey_EachVersionAddedByOneAcknowledgedRotation_OneOkEventEach_NoneForARefusedOne()
    {
        // Ten rotations and a DisableKey at once: the rotations decided after the disable commit
        // are refused (FAILED_PRECONDITION), the others add consecutive versions. What happened and
        // what the audit says agree: one OK event per version added, none for a refused rotation.
        var key = await _client.CreateKeyAsync("tenants/dev", "busy-then-disabled");
        var rotations = Enumerable.Range(0, 10).Select(_ => Stub.RotateKeyAsync(new RotateKeyRequest { Name = key.Name }).ResponseAsync).ToList();
        var disable = Stub.DisableKeyAsync(new DisableKeyRequest { Name = key.Name }).ResponseAsync;
        var outcomes = new List<StatusCode>();
        foreach (var rotation in rotations)
        {
            try
            {
                await rotation;
                outcomes.Add(StatusCode.OK);
            }
            catch (RpcException e)
            {
                outcomes.Add(e.StatusCode);
            }
        }

        await disable;

        // And one after the disable was acknowledged: refused, whatever the race above gave.
        var late = await Assert.ThrowsAsync<RpcException>(() => Stub.RotateKeyAsync(new RotateKeyRequest { Name = key.Name }).ResponseAsync);
        Assert.Equal(StatusCode.FailedPrecondition, late.StatusCode);
        Assert.All(outcomes, code => Assert.True(code is StatusCode.OK or StatusCode.FailedPrecondition, code.ToString()));
        var acknowledged = outcomes.Count(code => code == StatusCode.OK);
        var versions = await Stub.ListKeyVersionsAsync(new ListKeyVersionsRequest { Parent = key.Name });
        Assert.Equal(Enumerable.Range(1, acknowledged + 1).Select(n => $"{key.Name}/versions/{n}"), versions.KeyVersions.Select(v => v.Name));
        var primary = (await _client.GetKeyAsync(key.Name)).Primary.Name;
        Assert.Equal($"{key.Name}/versions/{acknowledged + 1}", primary);

        using var auditor = _server.CreateClient(await _server.CreatePrincipalWithTokenAsync("rotation-auditor", null, "security-officer"));
        var events = (await auditor.Audit.ListAuditEventsAsync(new ListAuditEventsRequest { Tenant = "tenants/dev", Resource = key.Name, Operation = "RotateKey", Outcome = "OK", PageSize = 100 })).Events;
        Assert.Equal(acknowledged, events.Count);
        Assert.Equal(acknowledged, events.Select(e => e.RequestId).Distinct().Count());
        Assert.All(events, e => Assert.Equal(1L, e.Count));
    }

    [Fact]
    public async Task Alias_AcceptedByEveryCryptoRpc()
    {
        var key = await _client.CreateKeyAsync("tenants/dev", "aliased");
        var alias = (await Stub.CreateAliasAsync(new CreateAliasRequest { Parent = "tenants/dev", AliasId = "orders", Alias = new Alias { Key = key.Name } })).Alias;
        Assert.Equal("tenants/dev/aliases/orders", alias.Name);

        var encrypted = await _client.EncryptAsync(alias.Name, new byte[] { 5 });
        Assert.StartsWith(key.Name, encrypted.KeyVersion, StringComparison.Ordinal);
        using (var dataKey = await _client.GenerateDataKeyAsync(alias.Name))
        {
            Assert.StartsWith(key.Name, dataKey.KeyVersion, StringComparison.Ordinal);
        }

        Assert.StartsWith(key.Name, (await _client.GenerateDataKeyWithoutPlaintextAsync(alias.Name)).KeyVersion, StringComparison.Ordinal);
        var reEncrypted = await Stub.ReEncryptAsync(new ReEncryptRequest { Ciphertext = ByteString.CopyFrom(encrypted.Ciphertext), DestinationName = alias.Name });
        Assert.StartsWith(key.Name, reEncrypted.KeyVersion, StringComparison.Ordinal);
        Assert.Equal($"{key.Name}/versions/2", (await Stub.RotateKeyAsync(new RotateKeyRequest { Name = alias.Name })).Key.Primary.Name);

        var batch = new BatchGenerateDataKeyRequest();
        batch.Requests.Add(new GenerateDataKeyRequest { Name = alias.Name });
        var batchResult = (await Stub.BatchGenerateDataKeyAsync(batch)).Results.Single();
        Assert.Equal(0, batchResult.Status.Code);
        Assert.StartsWith(key.Name, batchResult.Response.KeyVersion, StringComparison.Ordinal);

        var listed = await Stub.ListAliasesAsync(new ListAliasesRequest { Parent = "tenants/dev" });
        Assert.Contains(listed.Aliases, a => a.Name == alias.Name && a.Key == key.Name);
    }

    [Fact]
    public async Task ReEncrypt_AcrossKeysAndContexts()
    {
        var source = await _client.CreateKeyAsync("tenants/dev", "re-src");
        var destination = await _client.CreateKeyAsync("tenants/dev", "re-dst");
        var blob = await _client.EncryptAsync(source.Name, new byte[] { 1, 2 }, new Dictionary<string, string> { ["a"] = "1" });

        var request = new ReEncryptRequest { Ciphertext = ByteString.CopyFrom(blob.Ciphertext), DestinationName = destination.Name };
        request.SourceEncryptionContext.Add("a", "1");
        request.DestinationEncryptionContext.Add("b", "2");
        var moved = await Stub.ReEncryptAsync(request);
        Assert.Equal($"{source.Name}/versions/1", moved.SourceKeyVersion);
        Assert.Equal($"{destination.Name}/versions/1", moved.KeyVersion);

        using var decrypted = await _client.DecryptAsync(moved.Ciphertext.ToByteArray(), new Dictionary<string, string> { ["b"] = "2" });
        Assert.Equal(new byte[] { 1, 2 }, decrypted.Plaintext.ToArray());

        request.SourceEncryptionContext["a"] = "wrong";
        var e = await Assert.ThrowsAsync<RpcException>(async () => await Stub.ReEncryptAsync(request));
        Assert.Equal("decryption failed", e.Status.Detail);
    }

    [Fact]
    public async Task BatchEncrypt_MixedItems_PerItemStatus()
    {
        var key = await _client.CreateKeyAsync("tenants/dev", "batch");
        var batch = new BatchEncryptRequest();
        batch.Requests.Add(new EncryptRequest { Name = key.Name, Plaintext = ByteString.CopyFrom(1) });
        batch.Requests.Add(new EncryptRequest { Name = "tenants/dev/keys/absent", Plaintext = ByteString.CopyFrom(1) });
        batch.Requests.Add(new EncryptRequest { Name = key.Name });
        batch.Requests.Add(new EncryptRequest { Name = "garbage", Plaintext = ByteString.CopyFrom(1) });

        var results = (await Stub.BatchEncryptAsync(batch)).Results;
        Assert.Equal(0, results[0].Status.Code);
        Assert.Equal((int)StatusCode.NotFound, results[1].Status.Code);
        Assert.Equal((int)StatusCode.InvalidArgument, results[2].Status.Code);
        Assert.Equal("requests[2].plaintext", results[2].Status.Field);
        Assert.Equal("requests[3].name", results[3].Status.Field);
        Assert.Null(results[1].Response);

        var decrypt = new BatchDecryptRequest();
        decrypt.Requests.Add(new DecryptRequest { Ciphertext = results[0].Response.Ciphertext });
        decrypt.Requests.Add(new DecryptRequest { Ciphertext = ByteString.CopyFrom(new byte[60]) });
        var decrypted = (await Stub.BatchDecryptAsync(decrypt)).Results;
        Assert.Equal(new byte[] { 1 }, decrypted[0].Response.Plaintext.ToByteArray());
        Assert.Equal("decryption failed", decrypted[1].Status.Message);
    }

    [Fact]
    public async Task Batch_OverTheItemLimit_InvalidArgumentNamingRequests()
    {
        var batch = new BatchGenerateDataKeyRequest();
        batch.Requests.Add(Enumerable.Range(0, 1001).Select(_ => new GenerateDataKeyRequest { Name = "tenants/dev/keys/x" }));
        var e = await Assert.ThrowsAsync<RpcException>(async () => await Stub.BatchGenerateDataKeyAsync(batch));

        // (Once, in CI, INTERNAL: the server's log then says why.)
        Assert.True(e.StatusCode == StatusCode.InvalidArgument, $"{e.Status}; server log: {string.Join(" | ", _server.Logs.Events.Where(l => l.StartsWith("Error", StringComparison.Ordinal) || l.StartsWith("Warning", StringComparison.Ordinal)))}");
        Assert.StartsWith("requests:", e.Status.Detail, StringComparison.Ordinal);
    }

    // The audit events of system:lifecycle about a key and its versions.
    private async Task<IReadOnlyList<AuditEventInfo>> LifecycleEventsAsync(string key, Kms.Client.KmsClient? reader = null) =>
        (await (reader ?? _client).Audit.ListAuditEventsAsync(new ListAuditEventsRequest { Tenant = "tenants/dev", Resource = key, Principal = "system:lifecycle", PageSize = 100 })).Events;

    [Fact]
    public async Task OffboardingSweep_AKeyThatEscapedDeleteTenant_ScheduledWithTheRecordedWaitingPeriod_Audited()
    {
        // A key DeleteTenant did not reach (created while it ran, or the call failed part way):
        // its tenant DELETING with a 10-day waiting period recorded, the key still ENABLED.
        var key = await _client.CreateKeyAsync("tenants/dev", "escaped");
        // The tenant's own principals are refused once it is DELETING: a security officer reads its
        // audit, and the key is read from the store.
        using var officer = _server.CreateClient(await _server.CreatePrincipalWithTokenAsync("offboarding-officer", null, "security-officer"));
        var keys = _server.Services.GetRequiredService<Kms.Core.Ports.IKeyStore>();
        var name = Kms.Core.Names.KeyName.Parse(key.Name, "name");
        Assert.Equal(1, RawSqlite.Execute(_server.DatabasePath, $"UPDATE tenants SET state = 2, delete_time = {_time.GetUtcNow().ToUnixTimeMilliseconds()}, delete_waiting_ms = {(long)TimeSpan.FromDays(10).TotalMilliseconds} WHERE id = 'dev'"));

        _time.Advance(TimeSpan.FromMinutes(2));
        await WaitUntilAsync(async () => (await keys.GetKeyAsync(name, default))!.State == Kms.Core.Keys.KeyState.DestroyScheduled);
        Assert.Equal(_time.GetUtcNow() + TimeSpan.FromDays(10), (await keys.GetKeyAsync(name, default))!.DestroyTime);

        // Committed with the change, as the lifecycle's own; later passes write nothing more.
        var scheduling = Assert.Single(await LifecycleEventsAsync(key.Name, officer));
        Assert.Equal((Kms.Core.Services.AccessService.TenantOffboardingOperation, key.Name, "OK"), (scheduling.Operation, scheduling.Resource, scheduling.Outcome));
        _time.Advance(TimeSpan.FromMinutes(2));

        // A whole pass after it, awaited (a fixed wait could end before any pass ran, and pass whatever they wrote).
        await Worker.RunOnceAsync(default);
        Assert.Single(await LifecycleEventsAsync(key.Name, officer));
    }

    [Fact]
    public async Task ScheduledDestruction_ClockPassesWaitingPeriod_MaterialShreddedAndStaysDestroyedAfterRestart()
    {
        var key = await _client.CreateKeyAsync("tenants/dev", "doomed");
        var blob = (await _client.EncryptAsync(key.Name, new byte[] { 9 })).Ciphertext;
        await Stub.RotateKeyAsync(new RotateKeyRequest { Name = key.Name });
        var wrapped = ReadWrappedMaterial(key.Name, 1);
        Assert.True(DatabaseFilesContain(wrapped));

        var scheduled = await Stub.ScheduleKeyVersionDestructionAsync(new ScheduleKeyVersionDestructionRequest
        {
            Name = $"{key.Name}/versions/1",
            WaitingPeriod = Duration.FromTimeSpan(TimeSpan.FromDays(7)),
        });
        Assert.Equal(KeyState.DestroyScheduled, scheduled.KeyVersion.State);

        _time.Advance(TimeSpan.FromDays(7) + TimeSpan.FromMinutes(1));
        await WaitUntilAsync(async () => (await Stub.GetKeyVersionAsync(new GetKeyVersionRequest { Name = $"{key.Name}/versions/1" })).KeyVersion.State == KeyState.Destroyed);

        // Committed with the destruction, as the lifecycle's own.
        var destruction = Assert.Single(await LifecycleEventsAsync(key.Name));
        Assert.Equal(("lifecycle/Destruction", $"{key.Name}/versions/1", "OK"), (destruction.Operation, destruction.Resource, destruction.Outcome));

        SqliteConnection.ClearAllPools();
        Assert.False(DatabaseFilesContain(wrapped), "destroyed material still in kms.db or kms.db-wal");

        _client.Dispose();
        _server = await _server.RestartAsync();
        _client = _server.CreateClient();
        var e = await Assert.ThrowsAsync<RpcException>(() => _client.DecryptAsync(blob));
        Assert.Equal(StatusCode.FailedPrecondition, e.StatusCode);
        Assert.Contains("DESTROYED", e.Status.Detail, StringComparison.Ordinal);
    }

    [Fact]
    public async Task ScheduledKeyDeletion_ClockPassesWaitingPeriod_EveryVersionDestroyed_OneEventAsTheLifecycles()
    {
        var key = await _client.CreateKeyAsync("tenants/dev", "deleted-whole");
        await Stub.RotateKeyAsync(new RotateKeyRequest { Name = key.Name });
        await Stub.ScheduleKeyDeletionAsync(new ScheduleKeyDeletionRequest { Name = key.Name, WaitingPeriod = Duration.FromTimeSpan(TimeSpan.FromDays(7)) });

        _time.Advance(TimeSpan.FromDays(7) + TimeSpan.FromMinutes(1));
        await WaitUntilAsync(async () => (await Stub.GetKeyAsync(new GetKeyRequest { Name = key.Name })).Key.State == KeyState.Destroyed);

        // The key and both its versions in one event, committed with the destruction as the
        // lifecycle's own (what DestructionReplay re-applies from an export after a restore).
        var destruction = Assert.Single(await LifecycleEventsAsync(key.Name));
        Assert.Equal(("lifecycle/KeyDestruction", key.Name, "OK"), (destruction.Operation, destruction.Resource, destruction.Outcome));
    }

    [Fact]
    public async Task NodeBootsWithItsClockAYearAhead_ScheduledDeletionWaits_Warned_UntilTheOperatorAcceptsTheClock()
    {
        var key = await _client.CreateKeyAsync("tenants/dev", "clock-victim");
        await _client.ScheduleKeyDeletionAsync(key.Name, TimeSpan.FromDays(7));
        await Worker.RunOnceAsync(default); // records the time seen
        var name = Kms.Core.Names.KeyName.Parse(key.Name, "name");

        // Down; boots with its clock a year ahead (the fake clock moves both of its clocks, but
        // the new process has no reading of its own to measure from).
        await RestartAsync(TimeSpan.FromDays(365));
        await Worker.RunOnceAsync(default);
        Assert.Equal(Kms.Core.Keys.KeyState.DestroyScheduled, (await Store.GetKeyAsync(name, default))!.State);
        Assert.Contains(_server.Logs.Events, e => e.StartsWith("Warning", StringComparison.Ordinal) && e.Contains("ahead of the time this deployment has seen pass", StringComparison.Ordinal));

        // (That time seen running counts as it passes, and no faster, is LifecycleClockTests':
        // moving the fake clock by days here fires every periodic timer of the server once per
        // period, which takes the test a minute.)

        // The operator says the clock is right.
        await RestartAsync(TimeSpan.Zero, "--Lifecycle:AcceptClock=true");
        await Worker.RunOnceAsync(default);
        Assert.Equal(Kms.Core.Keys.KeyState.Destroyed, (await Store.GetKeyAsync(name, default))!.State);
    }

    [Fact]
    public async Task NodeBootsWithItsClockAYearAhead_TheDeletionTheLifecycleHoldsBack_CanStillBeCancelled()
    {
        // By its clock the periods ended long ago; by the time the deployment has seen they run
        // on, and the lifecycle has destroyed nothing: cancel and restore go by that time too.
        var key = await _client.CreateKeyAsync("tenants/dev", "clock-cancelled");
        await _client.ScheduleKeyDeletionAsync(key.Name, TimeSpan.FromDays(7));
        var versioned = await _client.CreateKeyAsync("tenants/dev", "clock-restored");
        await Stub.RotateKeyAsync(new RotateKeyRequest { Name = versioned.Name });
        await Stub.ScheduleKeyVersionDestructionAsync(new ScheduleKeyVersionDestructionRequest
        {
            Name = $"{versioned.Name}/versions/1",
            WaitingPeriod = Duration.FromTimeSpan(TimeSpan.FromDays(7)),
        });
        await Worker.RunOnceAsync(default); // records the time seen

        await RestartAsync(TimeSpan.FromDays(365));
        await Worker.RunOnceAsync(default);

        Assert.Equal(KeyState.Disabled, (await Stub.CancelKeyDeletionAsync(new CancelKeyDeletionRequest { Name = key.Name })).Key.State);
        Assert.Equal(KeyState.Disabled, (await Stub.RestoreKeyVersionAsync(new RestoreKeyVersionRequest { Name = $"{versioned.Name}/versions/1" })).KeyVersion.State);
    }

    [Fact]
    public async Task NodeBootsWithItsClockAYearAhead_ScheduledRotationWaitsForTheTimeSeen_ItsScheduleIsNotMovedAYearOut()
    {
        var created = (await Stub.CreateKeyAsync(new CreateKeyRequest
        {
            Parent = "tenants/dev",
            KeyId = "clock-rotated",
            Key = new Key { Purpose = KeyPurpose.EncryptDecrypt, RotationPeriod = Duration.FromTimeSpan(TimeSpan.FromDays(30)) },
        })).Key;
        await Worker.RunOnceAsync(default); // records the time seen

        // By its clock the rotation is eleven months late; by the time the deployment has seen
        // pass it is not due. Rotated by the clock, its next rotation would be a year and a period
        // out: once the clock was put right, no scheduled rotation for a year.
        await RestartAsync(TimeSpan.FromDays(365));
        await Worker.RunOnceAsync(default);
        var held = await _client.GetKeyAsync(created.Name);
        Assert.EndsWith("/versions/1", held.Primary.Name, StringComparison.Ordinal);
        Assert.Equal(created.NextRotationTime, held.NextRotationTime);

        // The operator says the clock is right: rotated once, the next one a period from now.
        await RestartAsync(TimeSpan.Zero, "--Lifecycle:AcceptClock=true");
        await Worker.RunOnceAsync(default);
        var rotated = await _client.GetKeyAsync(created.Name);
        Assert.EndsWith("/versions/2", rotated.Primary.Name, StringComparison.Ordinal);
        Assert.Equal(_time.GetUtcNow().AddDays(30).ToUnixTimeMilliseconds(), rotated.NextRotationTime.ToDateTimeOffset().ToUnixTimeMilliseconds());
        await Worker.RunOnceAsync(default);
        Assert.EndsWith("/versions/2", (await _client.GetKeyAsync(created.Name)).Primary.Name, StringComparison.Ordinal);
    }

    [Fact]
    public async Task ScheduledRotation_ClockPassesThePeriod_KeyRotated()
    {
        var created = (await Stub.CreateKeyAsync(new CreateKeyRequest
        {
            Parent = "tenants/dev",
            KeyId = "scheduled",
            Key = new Key { Purpose = KeyPurpose.EncryptDecrypt, RotationPeriod = Duration.FromTimeSpan(TimeSpan.FromDays(1)) },
        })).Key;
        Assert.Equal(_time.GetUtcNow().AddDays(1).ToUnixTimeMilliseconds(), created.NextRotationTime.ToDateTimeOffset().ToUnixTimeMilliseconds());

        _time.Advance(TimeSpan.FromDays(1) + TimeSpan.FromMinutes(1));
        await WaitUntilAsync(async () => (await _client.GetKeyAsync(created.Name)).Primary.Name.EndsWith("/versions/2", StringComparison.Ordinal));
        var rotation = Assert.Single(await LifecycleEventsAsync(created.Name));
        Assert.Equal(("lifecycle/ScheduledRotation", created.Name, "OK"), (rotation.Operation, rotation.Resource, rotation.Outcome));
    }

    [Fact]
    public async Task UsageSoftBound_TriggersRotation_WornVersionRotatedAwayAgain_CountSurvivesRestart()
    {
        var key = await _client.CreateKeyAsync("tenants/dev", "busy-key");
        for (var i = 0; i < 8; i++)
        {
            await _client.EncryptAsync(key.Name, new byte[] { 1 });
        }

        // The soft bound (8) queued a rotation; the worker performs it.
        await WaitUntilAsync(async () => (await _client.GetKeyAsync(key.Name)).Primary.Name.EndsWith("/versions/2", StringComparison.Ordinal));
        Assert.EndsWith("/versions/2", (await _client.EncryptAsync(key.Name, new byte[] { 1 })).KeyVersion, StringComparison.Ordinal);

        // Making the worn version primary again lasts only until its next reservation: within
        // one block (4) of encryptions another rotation is queued and done.
        await Stub.UpdatePrimaryVersionAsync(new UpdatePrimaryVersionRequest { Name = key.Name, Version = 1 });
        for (var i = 0; i < 4; i++)
        {
            await _client.EncryptAsync(key.Name, new byte[] { 1 });
        }

        await WaitUntilAsync(async () => (await _client.GetKeyAsync(key.Name)).Primary.Name.EndsWith("/versions/3", StringComparison.Ordinal));

        // Both rotations were the lifecycle's own, audited as such.
        var rotations = await LifecycleEventsAsync(key.Name);
        Assert.Equal(2, rotations.Count);
        Assert.All(rotations, r => Assert.Equal(("lifecycle/UsageRotation", key.Name, "OK"), (r.Operation, r.Resource, r.Outcome)));

        _client.Dispose();
        _server = await _server.RestartAsync();
        _client = _server.CreateClient();
        var v1 = (await Stub.GetKeyVersionAsync(new GetKeyVersionRequest { Name = $"{key.Name}/versions/1" })).KeyVersion;
        Assert.True(v1.Usage.EncryptCount >= 9, $"encrypt count {v1.Usage.EncryptCount} went backwards (durable count is at least 12)");
    }

    [Fact]
    public async Task IllegalTransition_FailedPreconditionNamingTheState()
    {
        var key = await _client.CreateKeyAsync("tenants/dev", "states");
        await Stub.RotateKeyAsync(new RotateKeyRequest { Name = key.Name });
        await Stub.ScheduleKeyVersionDestructionAsync(new ScheduleKeyVersionDestructionRequest { Name = $"{key.Name}/versions/1" });

        var e = await Assert.ThrowsAsync<RpcException>(async () => await Stub.EnableKeyVersionAsync(new EnableKeyVersionRequest { Name = $"{key.Name}/versions/1" }));
        Assert.Equal(StatusCode.FailedPrecondition, e.StatusCode);
        Assert.Equal($"key version {key.Name}/versions/1 is DESTROY_SCHEDULED; restore it before enabling it", e.Status.Detail);

        var primary = await Assert.ThrowsAsync<RpcException>(async () => await Stub.DisableKeyVersionAsync(new DisableKeyVersionRequest { Name = $"{key.Name}/versions/2" }));
        Assert.Contains("is the primary version", primary.Status.Detail, StringComparison.Ordinal);

        await Stub.DisableKeyAsync(new DisableKeyRequest { Name = key.Name });
        var disabled = await Assert.ThrowsAsync<RpcException>(() => _client.EncryptAsync(key.Name, new byte[] { 1 }));
        Assert.Equal(StatusCode.FailedPrecondition, disabled.StatusCode);
        Assert.Equal($"key {key.Name} is DISABLED", disabled.Status.Detail);
    }

    [Fact]
    public async Task DisableRetriedAfterTheDeletionOrDestructionWasScheduled_OkNothingWritten_Audited_RefusedOnceThePeriodEnded()
    {
        // DisableKey and DisableKeyVersion are repeated by the SDK (RetrySafety): a disable whose
        // answer was lost, sent again after the key's deletion (or the version's destruction) was
        // scheduled. What is scheduled is at least as disabled (a cancel or restore brings it back DISABLED).
        var key = await _client.CreateKeyAsync("tenants/dev", "disable-retried");
        await Stub.RotateKeyAsync(new RotateKeyRequest { Name = key.Name });
        var version = $"{key.Name}/versions/1";
        await Stub.DisableKeyVersionAsync(new DisableKeyVersionRequest { Name = version });
        await Stub.DisableKeyAsync(new DisableKeyRequest { Name = key.Name });
        var scheduledVersion = (await Stub.ScheduleKeyVersionDestructionAsync(new ScheduleKeyVersionDestructionRequest
        {
            Name = version,
            WaitingPeriod = Duration.FromTimeSpan(TimeSpan.FromDays(8)),
        })).KeyVersion;
        var scheduled = (await Stub.ScheduleKeyDeletionAsync(new ScheduleKeyDeletionRequest { Name = key.Name, WaitingPeriod = Duration.FromTimeSpan(TimeSpan.FromDays(7)) })).Key;
        var changes = CountChanges();

        var retried = (await Stub.DisableKeyAsync(new DisableKeyRequest { Name = key.Name })).Key;
        var retriedVersion = (await Stub.DisableKeyVersionAsync(new DisableKeyVersionRequest { Name = version })).KeyVersion;
        Assert.Equal((KeyState.DestroyScheduled, scheduled.DestroyTime), (retried.State, retried.DestroyTime));
        Assert.Equal((KeyState.DestroyScheduled, scheduledVersion.DestroyTime), (retriedVersion.State, retriedVersion.DestroyTime));
        Assert.Equal(scheduled, (await Stub.GetKeyAsync(new GetKeyRequest { Name = key.Name })).Key);
        Assert.Equal(changes, CountChanges()); // nothing written: no change announced

        // Enabling is still refused.
        var enable = await Assert.ThrowsAsync<RpcException>(async () => await Stub.EnableKeyAsync(new EnableKeyRequest { Name = key.Name }));
        Assert.Equal(StatusCode.FailedPrecondition, enable.StatusCode);
        var enableVersion = await Assert.ThrowsAsync<RpcException>(async () => await Stub.EnableKeyVersionAsync(new EnableKeyVersionRequest { Name = version }));
        Assert.Equal(StatusCode.FailedPrecondition, enableVersion.StatusCode);

        // One event per call (the key's and its versions'), the retries OK (appended after the call,
        // as for any call that writes nothing).
        var events = (await _client.Audit.ListAuditEventsAsync(new ListAuditEventsRequest { Tenant = "tenants/dev", Resource = key.Name, PageSize = 100 })).Events;
        Assert.Equal(
            [
                "CreateKey OK", "RotateKey OK", "DisableKeyVersion OK", "DisableKey OK", "ScheduleKeyVersionDestruction OK", "ScheduleKeyDeletion OK",
                "DisableKey OK", "DisableKeyVersion OK", "GetKey OK", "EnableKey FAILED_PRECONDITION", "EnableKeyVersion FAILED_PRECONDITION",
            ],
            events.Select(e => $"{e.Operation[(e.Operation.LastIndexOf('/') + 1)..]} {e.Outcome}"));

        // Once the waiting period has ended (destroyed by the lifecycle or not yet), refused.
        _time.Advance(TimeSpan.FromDays(7) + TimeSpan.FromMinutes(1));
        var late = await Assert.ThrowsAsync<RpcException>(async () => await Stub.DisableKeyAsync(new DisableKeyRequest { Name = key.Name }));
        Assert.Equal(StatusCode.FailedPrecondition, late.StatusCode);
        var lateVersion = await Assert.ThrowsAsync<RpcException>(async () => await Stub.DisableKeyVersionAsync(new DisableKeyVersionRequest { Name = version }));
        Assert.Equal(StatusCode.FailedPrecondition, lateVersion.StatusCode);
    }

    private long CountChanges() => long.Parse(RawSqlite.Scalar(_server.DatabasePath, "SELECT count(*) FROM changes"), System.Globalization.CultureInfo.InvariantCulture);

    [Theory]
    [InlineData("waiting_period")]
    [InlineData("rotation_period")]
    [InlineData("update_mask")]
    [InlineData("version_name")]
    public async Task BadLifecycleInput_InvalidArgumentNamingTheField(string what)
    {
        var key = await _client.CreateKeyAsync("tenants/dev", $"bad-{what.Replace('_', '-')}");
        RpcException e = what switch
        {
            "waiting_period" => await Assert.ThrowsAsync<RpcException>(async () => await Stub.ScheduleKeyDeletionAsync(
                new ScheduleKeyDeletionRequest { Name = key.Name, WaitingPeriod = Duration.FromTimeSpan(TimeSpan.FromDays(3)) })),
            "rotation_period" => await Assert.ThrowsAsync<RpcException>(async () => await Stub.UpdateKeyAsync(new UpdateKeyRequest
            {
                Key = new Key { Name = key.Name, RotationPeriod = new Duration { Seconds = -86400 } },
                UpdateMask = new FieldMask { Paths = { "rotation_period" } },
            })),
            "update_mask" => await Assert.ThrowsAsync<RpcException>(async () => await Stub.UpdateKeyAsync(new UpdateKeyRequest
            {
                Key = new Key { Name = key.Name },
                UpdateMask = new FieldMask { Paths = { "purpose" } },
            })),
            _ => await Assert.ThrowsAsync<RpcException>(async () => await Stub.GetKeyVersionAsync(new GetKeyVersionRequest { Name = $"{key.Name}/versions/01" })),
        };
        Assert.Equal(StatusCode.InvalidArgument, e.StatusCode);
        var field = what == "version_name" ? "name" : what == "rotation_period" ? "key.rotation_period" : what;
        Assert.StartsWith(field + ":", e.Status.Detail, StringComparison.Ordinal);
        Assert.Equal(KeyState.Enabled, (await _client.GetKeyAsync(key.Name)).State);
    }

    [Fact]
    public async Task NonNormalizedDuration_InvalidArgumentNotInternal()
    {
        var key = await _client.CreateKeyAsync("tenants/dev", "odd-duration");
        var e = await Assert.ThrowsAsync<RpcException>(async () => await Stub.ScheduleKeyDeletionAsync(
            new ScheduleKeyDeletionRequest { Name = key.Name, WaitingPeriod = new Duration { Seconds = 8 * 86400, Nanos = 1_000_000_000 } }));
        Assert.Equal(StatusCode.InvalidArgument, e.StatusCode);
        Assert.StartsWith("waiting_period:", e.Status.Detail, StringComparison.Ordinal);
    }

    [Fact]
    public async Task GetKeyVersion_Unknown_NotFound()
    {
        var key = await _client.CreateKeyAsync("tenants/dev", "few-versions");
        var e = await Assert.ThrowsAsync<RpcException>(async () => await Stub.GetKeyVersionAsync(new GetKeyVersionRequest { Name = $"{key.Name}/versions/5" }));
        Assert.Equal(StatusCode.NotFound, e.StatusCode);
    }

    private Hosting.LifecycleWorker Worker => _server.Services.GetRequiredService<Hosting.LifecycleWorker>();

    private Kms.Core.Ports.IKeyStore Store => _server.Services.GetRequiredService<Kms.Core.Ports.IKeyStore>();

    // Stops the server, moves the clock while it is down, starts it on the same data.
    private async Task RestartAsync(TimeSpan down, params string[] args)
    {
        _client.Dispose();
        await _server.DisposeAsync();
        _time.Advance(down);
        _server = await KmsTestServer.StartAsync(_server.Token, _server.DataDir, "dev", UseFakeClock, [.. ServerArgs, .. args]);
        _client = _server.CreateClient();
    }

    private void UseFakeClock(IServiceCollection services) => services.Replace(ServiceDescriptor.Singleton<TimeProvider>(_time));

    private byte[] ReadWrappedMaterial(string keyName, int version)
    {
        var keyId = keyName.Split('/')[^1];
        using var connection = new SqliteConnection($"Data Source={_server.DatabasePath};Mode=ReadOnly;Pooling=False");
        connection.Open();
        using var command = connection.CreateCommand();
        command.CommandText = "SELECT material FROM key_versions WHERE tenant = 'dev' AND key_id = $key AND version = $version";
        command.Parameters.AddWithValue("$key", keyId);
        command.Parameters.AddWithValue("$version", version);
        return (byte[])command.ExecuteScalar()!;
    }

    private bool DatabaseFilesContain(byte[] needle) =>
        new[] { _server.DatabasePath, _server.DatabasePath + "-wal" }
            .Where(File.Exists)
            .Any(path =>
            {
                using var stream = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.ReadWrite | FileShare.Delete);
                using var copy = new MemoryStream();
                stream.CopyTo(copy);
                return copy.ToArray().AsSpan().IndexOf(needle) >= 0;
            });

    // Background work runs on the server's own schedule: wait (bounded) for its effect.
    // The clock need not keep moving here (unlike AuditLogTests, whose loop waits with Task.Delay):
    // the lifecycle worker's PeriodicTimer keeps a tick that passed while a pass ran, so a pass that
    // read the time before the test's one jump is followed by another. Moving it would also break
    // the offboarding test's check of the destroy time against the clock.
    private static async Task WaitUntilAsync(Func<Task<bool>> condition)
    {
        var deadline = DateTime.UtcNow.AddSeconds(30);
        while (!await condition())
        {
            Assert.True(DateTime.UtcNow < deadline, "the background job did not act within 30 s");
            await Task.Delay(50);
        }
    }
}
