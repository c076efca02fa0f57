using Kms.Core.Crypto;
using Kms.Core.Errors;
using Kms.Core.Keys;
using Kms.Core.Names;
using Kms.Core.Ports;
using Kms.Core.Services;
using Kms.Testing.Fakes;

namespace Kms.Core.Tests;

/// <summary>Rotation, versions, states and time-driven jobs through the services, with a fake clock.</summary>
public sealed class LifecycleServiceTests : IDisposable
{
    private static readonly Caller Dev = DomainHarness.Dev;
    private readonly DomainHarness _domain = new();

    public void Dispose() => _domain.Dispose();

    [Fact]
    public async Task RotateKey_OldCiphertextsStillDecrypt_NewOnesUseTheNewPrimary()
    {
        var key = await _domain.CreateKeyAsync("k");
        var old = await _domain.Crypto.EncryptAsync(Dev, key.Name, [1, 2, 3], EncryptionContext.Empty, default);

        var rotated = await _domain.Keys.RotateKeyAsync(Dev, key.Name, null, default);
        var fresh = await _domain.Crypto.EncryptAsync(Dev, key.Name, [4, 5, 6], EncryptionContext.Empty, default);

        Assert.Equal(2, rotated.Primary.Name.Version);
        Assert.Equal(2, fresh.KeyVersion.Version);
        using var decryptedOld = await _domain.Crypto.DecryptAsync(Dev, old.Ciphertext, EncryptionContext.Empty, default);
        Assert.Equal([1, 2, 3], decryptedOld.Plaintext.Span.ToArray());
        Assert.Equal(1, decryptedOld.KeyVersion.Version);
    }

    [Fact]
    public async Task RotateKey_SameRequestIdTwice_OneNewVersion()
    {
        var key = await _domain.CreateKeyAsync("k");
        await _domain.Keys.RotateKeyAsync(Dev, key.Name, "rotate-1", default);
        var replay = await _domain.Keys.RotateKeyAsync(Dev, key.Name, "rotate-1", default);

        Assert.Equal(2, replay.Primary.Name.Version);
        Assert.Equal(2, (await _domain.Keys.ListKeyVersionsAsync(Dev, key.Name, 0, null, default)).Items.Count);
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task RotateKey_RetriedByAliasAfterTheAliasMovedToAnotherKey_FailedPrecondition_TheOtherKeyNotRotated(bool retryLookedBeforeTheFirstCommitted)
    {
        // A client rotates "current" (naming a), the answer is lost, an admin moves "current" to b,
        // the client retries with the same request id. With the retry's lookup missing the record
        // (it ran while the first attempt waited for the write lock), the store's write refuses the
        // duplicate id instead.
        var a = await _domain.CreateKeyAsync("a");
        var b = await _domain.CreateKeyAsync("b");
        var alias = await _domain.Aliases.CreateAliasAsync(Dev, Dev.Tenant, "current", a.Name, null, default);
        var viaAlias = KeyReference.Parse(alias.Name.ToString(), "name");
        Assert.Equal(2, (await _domain.Keys.RotateKeyAsync(Dev, viaAlias, "rotate-1", default)).Primary.Name.Version);
        Assert.Equal(2, (await _domain.Keys.RotateKeyAsync(Dev, viaAlias, "rotate-1", default)).Primary.Name.Version);
        await _domain.Aliases.UpdateAliasAsync(Dev, alias.Name, b.Name, default);
        ((InMemoryStore)_domain.Store).MissNextRequestLookups = retryLookedBeforeTheFirstCommitted ? 1 : 0;

        var e = await Assert.ThrowsAsync<KmsException>(() => _domain.Keys.RotateKeyAsync(Dev, viaAlias, "rotate-1", default));

        Assert.Equal(KmsErrorCode.FailedPrecondition, e.Code);
        Assert.Contains("request_id rotate-1 was used for a RotateKey that rotated another key", e.Message, StringComparison.Ordinal);
        Assert.Contains("tenants/dev/aliases/current", e.Message, StringComparison.Ordinal);
        Assert.DoesNotContain("keys/a", e.Message, StringComparison.Ordinal);
        Assert.Equal(1, (await _domain.Keys.GetKeyAsync(Dev, b.Name, default)).Primary.Name.Version);
        Assert.Single((await _domain.Keys.ListKeyVersionsAsync(Dev, b.Name, 0, null, default)).Items);
        Assert.Equal(2, (await _domain.Keys.GetKeyAsync(Dev, a.Name, default)).Primary.Name.Version);

        // Moved back, the retry is the first attempt's again: replayed, nothing rotated.
        await _domain.Aliases.UpdateAliasAsync(Dev, alias.Name, a.Name, default);
        Assert.Equal(2, (await _domain.Keys.RotateKeyAsync(Dev, viaAlias, "rotate-1", default)).Primary.Name.Version);
        Assert.Equal(2, (await _domain.Keys.ListKeyVersionsAsync(Dev, a.Name, 0, null, default)).Items.Count);
    }

    [Fact]
    public async Task RotateKey_RequestIdReusedForAnotherRequest_StillInvalidArgument()
    {
        // Used for a CreateKey, or for a RotateKey through an alias that never named the key it
        // rotated: a request id reused for another request, as before.
        var a = await _domain.CreateKeyAsync("a");
        var b = await _domain.CreateKeyAsync("b");
        var alias = await _domain.Aliases.CreateAliasAsync(Dev, Dev.Tenant, "current", b.Name, null, default);
        await _domain.Keys.CreateKeyAsync(Dev, new CreateKeyCommand(Dev.Tenant, "c", KeyPurpose.EncryptDecrypt, KeyLabels.Empty, "create-1"), default);

        var e = await Assert.ThrowsAsync<KmsException>(() => _domain.Keys.RotateKeyAsync(Dev, KeyReference.Parse(alias.Name.ToString(), "name"), "create-1", default));
        Assert.Equal((KmsErrorCode.InvalidArgument, "request_id"), (e.Code, e.Field));
        await _domain.Keys.RotateKeyAsync(Dev, a.Name, "rotate-a", default);
        e = await Assert.ThrowsAsync<KmsException>(() => _domain.Keys.RotateKeyAsync(Dev, b.Name, "rotate-a", default));
        Assert.Equal((KmsErrorCode.InvalidArgument, "request_id"), (e.Code, e.Field));
        Assert.Equal(1, (await _domain.Keys.GetKeyAsync(Dev, b.Name, default)).Primary.Name.Version);
    }

    [Fact]
    public async Task RotateKey_Concurrent_ConsecutiveVersionsAndOnePrimary()
    {
        var key = await _domain.CreateKeyAsync("k");
        await Task.WhenAll(Enumerable.Range(0, 20).Select(_ => _domain.Keys.RotateKeyAsync(Dev, key.Name, null, default)));

        var versions = (await _domain.Keys.ListKeyVersionsAsync(Dev, key.Name, 0, null, default)).Items;
        Assert.Equal(Enumerable.Range(1, 21), versions.Select(v => v.Name.Version));
        Assert.Equal(21, (await _domain.Keys.GetKeyAsync(Dev, key.Name, default)).Primary.Name.Version);
        Assert.Equal(21, versions.Select(v => v.Id).Distinct().Count());
    }

    [Fact]
    public async Task RotateKey_StoreWriteFailsAfterTheHsmStep_NoNewVersionAndKeyUnchanged()
    {
        var store = (InMemoryStore)_domain.Store;
        var key = await _domain.CreateKeyAsync("k");
        store.FailNextWrite = KmsErrors.Unavailable("injected");

        var e = await Assert.ThrowsAsync<KmsException>(() => _domain.Keys.RotateKeyAsync(Dev, key.Name, null, default));
        Assert.Equal(KmsErrorCode.Unavailable, e.Code);
        Assert.Equal(2, _domain.FakeHsm!.Calls["generate"]);
        Assert.Single((await _domain.Keys.ListKeyVersionsAsync(Dev, key.Name, 0, null, default)).Items);
        Assert.Equal(1, (await _domain.Keys.GetKeyAsync(Dev, key.Name, default)).Primary.Name.Version);

        // And the next attempt succeeds normally.
        Assert.Equal(2, (await _domain.Keys.RotateKeyAsync(Dev, key.Name, null, default)).Primary.Name.Version);
    }

    [Fact]
    public async Task ScheduledRotation_DueOnlyAfterThePeriod_ThenMovesOn()
    {
        var key = await _domain.CreateKeyAsync("k", rotationPeriod: TimeSpan.FromDays(1));
        Assert.Equal(key.CreateTime.AddDays(1), key.NextRotationTime);

        _domain.Time.Advance(TimeSpan.FromHours(23));
        Assert.Equal(0, await _domain.Keys.RotateDueKeysAsync(_domain.Time.GetUtcNow(), default));

        _domain.Time.Advance(TimeSpan.FromHours(1));
        Assert.Equal(1, await _domain.Keys.RotateDueKeysAsync(_domain.Time.GetUtcNow(), default));
        var rotated = await _domain.Keys.GetKeyAsync(Dev, key.Name, default);
        Assert.Equal(2, rotated.Primary.Name.Version);
        Assert.Equal(key.CreateTime.AddDays(2), rotated.NextRotationTime);
        Assert.Equal(0, await _domain.Keys.RotateDueKeysAsync(_domain.Time.GetUtcNow(), default));
    }

    [Fact]
    public async Task ScheduledRotation_ClockAYearAheadOfTheLifecyclesTime_DueAndNextRotationByTheLifecyclesTime()
    {
        // The worker passes the lifecycle's time (LifecycleClock), which stays behind a clock that
        // jumped a year ahead: what is due, and the next rotation a rotated key gets, go by it. By
        // the clock, the next rotation would be a year and a period out.
        var key = await _domain.CreateKeyAsync("k", rotationPeriod: TimeSpan.FromDays(1));
        var seen = key.CreateTime.AddDays(1);
        _domain.Time.Advance(TimeSpan.FromDays(365));

        Assert.Equal(0, await _domain.Keys.RotateDueKeysAsync(seen.AddMinutes(-1), default));
        Assert.Equal(1, await _domain.Keys.RotateDueKeysAsync(seen, default));

        var rotated = await _domain.Keys.GetKeyAsync(Dev, key.Name, default);
        Assert.Equal(2, rotated.Primary.Name.Version);
        Assert.Equal(seen.AddDays(1), rotated.NextRotationTime);
    }

    [Fact]
    public async Task ScheduledRotation_AHundredKeysThatKeepFailing_DoNotHoldBackTheOthers()
    {
        // Keys the HSM can no longer rotate (their algorithm dropped from its profile) stay due,
        // at the head of the due list: they must not fill every pass's batch.
        for (var i = 0; i < 100; i++)
        {
            var command = new CreateKeyCommand(Dev.Tenant, $"mac-{i}", KeyPurpose.Mac, KeyLabels.Empty, null) { Algorithm = KeyAlgorithm.HmacSha256, RotationPeriod = TimeSpan.FromDays(1) };
            await _domain.Keys.CreateKeyAsync(Dev, command, default);
        }

        _domain.Time.Advance(TimeSpan.FromMinutes(1));
        var aes = await _domain.CreateKeyAsync("aes", rotationPeriod: TimeSpan.FromDays(1));
        _domain.FakeHsm!.Unsupported[KeyAlgorithm.HmacSha256] = "dropped from the profile";
        _domain.Time.Advance(TimeSpan.FromDays(1));

        await Assert.ThrowsAsync<AggregateException>(() => _domain.Keys.RotateDueKeysAsync(_domain.Time.GetUtcNow(), default));
        Assert.Equal(1, await _domain.Keys.RotateDueKeysAsync(_domain.Time.GetUtcNow(), default));

        Assert.Equal(2, (await _domain.Keys.GetKeyAsync(Dev, aes.Name, default)).Primary.Name.Version);
        _domain.FakeHsm.Unsupported.Remove(KeyAlgorithm.HmacSha256);
        Assert.Equal(0, await _domain.Keys.RotateDueKeysAsync(_domain.Time.GetUtcNow(), default));
        _domain.Time.Advance(KeyService.FailedRotationRetryDelay);
        Assert.Equal(100, await _domain.Keys.RotateDueKeysAsync(_domain.Time.GetUtcNow(), default));
    }

    [Fact]
    public async Task CancelAndRestore_ThatWaitedForTheWriteLockPastTheEndOfTheWaitingPeriod_Refused()
    {
        // The clock is read once the lock is held: a call that waited for it (a long group
        // commit) until the period ended must not bring the key or version back.
        var store = (InMemoryStore)_domain.Store;
        var key = await _domain.CreateKeyAsync("k");
        await _domain.Keys.RotateKeyAsync(Dev, key.Name, null, default);
        await _domain.Keys.ScheduleKeyVersionDestructionAsync(Dev, key.Name.Version(1), TimeSpan.FromDays(7), null, default);
        var deleted = await _domain.CreateKeyAsync("deleted");
        await _domain.Keys.ScheduleKeyDeletionAsync(Dev, deleted.Name, TimeSpan.FromDays(7), null, default);
        _domain.Time.Advance(TimeSpan.FromDays(7) - TimeSpan.FromMinutes(1));

        store.BeforeNextKeyUpdate = () => _domain.Time.Advance(TimeSpan.FromMinutes(2));
        var cancel = await Assert.ThrowsAsync<KmsException>(() => _domain.Keys.CancelKeyDeletionAsync(Dev, deleted.Name, null, default));
        store.BeforeNextKeyUpdate = () => _domain.Time.Advance(TimeSpan.FromMinutes(2));
        var restore = await Assert.ThrowsAsync<KmsException>(() => _domain.Keys.RestoreKeyVersionAsync(Dev, key.Name.Version(1), null, default));

        Assert.Contains("took effect", cancel.Message, StringComparison.Ordinal);
        Assert.Contains("took effect", restore.Message, StringComparison.Ordinal);
        Assert.Equal(KeyState.DestroyScheduled, (await _domain.Keys.GetKeyAsync(Dev, deleted.Name, default)).State);
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task AKeyNotEnabled_RefusesEveryOperation_ThoughItsVersionIsEnabled(bool scheduledForDeletion)
    {
        // Claim 24: the key's own state, not only its version's, for every operation.
        var key = await _domain.CreateKeyAsync("k");
        var mac = await _domain.CreateKeyAsync("mac", KeyAlgorithm.HmacSha256);
        var signing = await _domain.CreateKeyAsync("sign", KeyAlgorithm.EcSignP256Sha256);
        var rsa = await _domain.CreateKeyAsync("rsa", KeyAlgorithm.RsaDecryptOaep2048Sha256);
        var enabled = await _domain.CreateKeyAsync("enabled");
        var blob = (await _domain.Crypto.EncryptAsync(Dev, key.Name, [1, 2, 3], EncryptionContext.Empty, default)).Ciphertext;
        var enabledBlob = (await _domain.Crypto.EncryptAsync(Dev, enabled.Name, [1, 2, 3], EncryptionContext.Empty, default)).Ciphertext;
        var tag = (await _domain.Signing.GenerateMacAsync(Dev, mac.Name.ToString(), [1], default)).Mac;
        var signature = (await _domain.Signing.SignAsync(Dev, signing.Name.ToString(), new SignInput([1], null), SignatureFormat.Der, default)).Signature;
        byte[] rsaCiphertext;
        using (var publicKey = System.Security.Cryptography.RSA.Create())
        {
            publicKey.ImportSubjectPublicKeyInfo((await _domain.Signing.GetPublicKeyAsync(Dev, rsa.Name.ToString(), default)).PublicKey.Der, out _);
            rsaCiphertext = publicKey.Encrypt([1], System.Security.Cryptography.RSAEncryptionPadding.OaepSHA256);
        }

        foreach (var name in new[] { key.Name, mac.Name, signing.Name, rsa.Name })
        {
            _ = scheduledForDeletion
                ? await _domain.Keys.ScheduleKeyDeletionAsync(Dev, name, TimeSpan.FromDays(7), null, default)
                : await _domain.Keys.DisableKeyAsync(Dev, name, default);
        }

        // GenerateDataKeyWithoutPlaintext is GenerateDataKeyAsync at this layer.
        (string Operation, Func<Task> Call, KeyName Refused)[] operations =
        [
            ("Encrypt", () => _domain.Crypto.EncryptAsync(Dev, key.Name, [1], EncryptionContext.Empty, default), key.Name),
            ("Decrypt", () => _domain.Crypto.DecryptAsync(Dev, blob, EncryptionContext.Empty, default), key.Name),
            ("GenerateDataKey", () => _domain.Crypto.GenerateDataKeyAsync(Dev, key.Name, EncryptionContext.Empty, default), key.Name),
            ("ReEncrypt from it", () => _domain.Crypto.ReEncryptAsync(Dev, blob, EncryptionContext.Empty, enabled.Name, EncryptionContext.Empty, default), key.Name),
            ("ReEncrypt to it", () => _domain.Crypto.ReEncryptAsync(Dev, enabledBlob, EncryptionContext.Empty, key.Name, EncryptionContext.Empty, default), key.Name),
            ("GenerateMac", () => _domain.Signing.GenerateMacAsync(Dev, mac.Name.ToString(), [1], default), mac.Name),
            ("VerifyMac", () => _domain.Signing.VerifyMacAsync(Dev, mac.Name.ToString(), [1], tag, default), mac.Name),
            ("Sign", () => _domain.Signing.SignAsync(Dev, signing.Name.ToString(), new SignInput([1], null), SignatureFormat.Der, default), signing.Name),
            ("Verify", () => _domain.Signing.VerifyAsync(Dev, signing.Name.ToString(), new SignInput([1], null), signature, SignatureFormat.Der, default), signing.Name),
            ("GetPublicKey (signing)", () => _domain.Signing.GetPublicKeyAsync(Dev, signing.Name.ToString(), default), signing.Name),
            ("GetPublicKey (decryption)", () => _domain.Signing.GetPublicKeyAsync(Dev, rsa.Name.ToString(), default), rsa.Name),
            ("AsymmetricDecrypt", () => _domain.Signing.AsymmetricDecryptAsync(Dev, rsa.Name.ToString(), rsaCiphertext, default), rsa.Name),
        ];
        var state = scheduledForDeletion ? "DESTROY_SCHEDULED" : "DISABLED";
        foreach (var (operation, call, refused) in operations)
        {
            var e = await Record.ExceptionAsync(call);
            Assert.True(e is KmsException { Code: KmsErrorCode.FailedPrecondition } && e.Message == $"key {refused} is {state}", $"{operation}: {e?.GetType().Name ?? "no exception"} {e?.Message}");
        }

        // The batch forms: each item refused as its single call would be.
        (string Operation, KmsException? Error, KeyName Refused)[] items =
        [
            ("BatchEncrypt", Assert.Single(await _domain.Crypto.BatchEncryptAsync(Dev, [new BatchItem(key.Name.ToString(), [1], null)], default)).Error, key.Name),
            ("BatchDecrypt", Assert.Single(await _domain.Crypto.BatchDecryptAsync(Dev, [new BatchItem(null, blob, null)], default)).Error, key.Name),
            ("BatchGenerateDataKey", Assert.Single(await _domain.Crypto.BatchGenerateDataKeyAsync(Dev, [new BatchItem(key.Name.ToString(), null, null)], default)).Error, key.Name),
            ("BatchReEncrypt from it", Assert.Single(await _domain.Crypto.BatchReEncryptAsync(Dev, [new BatchReEncryptItem(blob, null, enabled.Name.ToString(), null)], default)).Error, key.Name),
            ("BatchReEncrypt to it", Assert.Single(await _domain.Crypto.BatchReEncryptAsync(Dev, [new BatchReEncryptItem(enabledBlob, null, key.Name.ToString(), null)], default)).Error, key.Name),
        ];
        foreach (var (operation, error, refused) in items)
        {
            Assert.True(error is { Code: KmsErrorCode.FailedPrecondition } && error.Message == $"key {refused} is {state}", $"{operation}: {error?.Code} {error?.Message}");
        }
    }

    [Fact]
    public async Task ScheduledRotation_DisabledKey_NotRotated()
    {
        var key = await _domain.CreateKeyAsync("k", rotationPeriod: TimeSpan.FromDays(1));
        await _domain.Keys.DisableKeyAsync(Dev, key.Name, default);
        _domain.Time.Advance(TimeSpan.FromDays(3));
        Assert.Equal(0, await _domain.Keys.RotateDueKeysAsync(_domain.Time.GetUtcNow(), default));
    }

    [Theory]
    [InlineData(0.5)]
    [InlineData(-1)]
    public async Task CreateKey_RotationPeriodUnderADay_InvalidArgument(double days)
    {
        var command = new CreateKeyCommand(Dev.Tenant, "k", KeyPurpose.EncryptDecrypt, KeyLabels.Empty, null) { RotationPeriod = TimeSpan.FromDays(days) };
        var e = await Assert.ThrowsAsync<KmsException>(() => _domain.Keys.CreateKeyAsync(Dev, command, default));
        Assert.Equal("key.rotation_period", e.Field);
    }

    [Fact]
    public async Task VersionDestruction_AfterWaitingPeriod_ErasedEvictedAndRefused()
    {
        var key = await _domain.CreateKeyAsync("k");
        var blob = (await _domain.Crypto.EncryptAsync(Dev, key.Name, [7], EncryptionContext.Empty, default)).Ciphertext;
        await _domain.Keys.RotateKeyAsync(Dev, key.Name, null, default);
        var v1 = key.Name.Version(1);

        var scheduled = await _domain.Keys.ScheduleKeyVersionDestructionAsync(Dev, v1, TimeSpan.FromDays(7), null, default);
        Assert.Equal(KeyState.DestroyScheduled, scheduled.State);
        var refused = await Assert.ThrowsAsync<KmsException>(() => _domain.Crypto.DecryptAsync(Dev, blob, EncryptionContext.Empty, default));
        Assert.Contains("DESTROY_SCHEDULED", refused.Message, StringComparison.Ordinal);

        _domain.Time.Advance(TimeSpan.FromDays(7) - TimeSpan.FromSeconds(1));
        Assert.Equal(0, await _domain.Keys.DestroyDueAsync(_domain.Time.GetUtcNow(), default));

        _domain.Time.Advance(TimeSpan.FromSeconds(1));
        Assert.Equal(1, await _domain.Keys.DestroyDueAsync(_domain.Time.GetUtcNow(), default));
        var destroyed = await _domain.Keys.GetKeyVersionAsync(Dev, v1, default);
        Assert.Equal(KeyState.Destroyed, destroyed.State);
        Assert.Equal(_domain.Time.GetUtcNow().ToUnixTimeMilliseconds(), destroyed.DestroyEventTime!.Value.ToUnixTimeMilliseconds());
        Assert.Contains(destroyed.Id, _domain.FakeHsm!.Evicted);
        Assert.Null((await _domain.Store.FindVersionMaterialAsync(Dev.Tenant, destroyed.Id, default))!.Material);

        var e = await Assert.ThrowsAsync<KmsException>(() => _domain.Crypto.DecryptAsync(Dev, blob, EncryptionContext.Empty, default));
        Assert.Equal(KmsErrorCode.FailedPrecondition, e.Code);
        Assert.Contains("DESTROYED", e.Message, StringComparison.Ordinal);
        var restore = await Assert.ThrowsAsync<KmsException>(() => _domain.Keys.RestoreKeyVersionAsync(Dev, v1, null, default));
        Assert.Equal(KmsErrorCode.FailedPrecondition, restore.Code);
    }

    [Fact]
    public async Task VersionDestruction_RestoredInTime_DisabledThenUsableAgain()
    {
        var key = await _domain.CreateKeyAsync("k");
        var blob = (await _domain.Crypto.EncryptAsync(Dev, key.Name, [7], EncryptionContext.Empty, default)).Ciphertext;
        await _domain.Keys.RotateKeyAsync(Dev, key.Name, null, default);
        var v1 = key.Name.Version(1);
        await _domain.Keys.ScheduleKeyVersionDestructionAsync(Dev, v1, null, null, default);

        Assert.Equal(KeyState.Disabled, (await _domain.Keys.RestoreKeyVersionAsync(Dev, v1, null, default)).State);
        _domain.Time.Advance(TimeSpan.FromDays(31));
        Assert.Equal(0, await _domain.Keys.DestroyDueAsync(_domain.Time.GetUtcNow(), default));
        await _domain.Keys.EnableKeyVersionAsync(Dev, v1, default);
        using var decrypted = await _domain.Crypto.DecryptAsync(Dev, blob, EncryptionContext.Empty, default);
        Assert.Equal([7], decrypted.Plaintext.Span.ToArray());
    }

    [Fact]
    public async Task KeyDeletion_CryptoRefused_CancelGivesDisabled_EnableRestores()
    {
        var key = await _domain.CreateKeyAsync("k");
        var scheduled = await _domain.Keys.ScheduleKeyDeletionAsync(Dev, key.Name, null, null, default);
        Assert.Equal(KeyState.DestroyScheduled, scheduled.State);
        Assert.Equal(_domain.Time.GetUtcNow().AddDays(30).ToUnixTimeMilliseconds(), scheduled.DestroyTime!.Value.ToUnixTimeMilliseconds());

        var e = await Assert.ThrowsAsync<KmsException>(() => _domain.Crypto.EncryptAsync(Dev, key.Name, [1], EncryptionContext.Empty, default));
        Assert.Equal(KmsErrorCode.FailedPrecondition, e.Code);
        Assert.Contains("DESTROY_SCHEDULED", e.Message, StringComparison.Ordinal);

        Assert.Equal(KeyState.Disabled, (await _domain.Keys.CancelKeyDeletionAsync(Dev, key.Name, null, default)).State);
        await Assert.ThrowsAsync<KmsException>(() => _domain.Crypto.EncryptAsync(Dev, key.Name, [1], EncryptionContext.Empty, default));
        await _domain.Keys.EnableKeyAsync(Dev, key.Name, default);
        await _domain.Crypto.EncryptAsync(Dev, key.Name, [1], EncryptionContext.Empty, default);
    }

    [Fact]
    public async Task Scheduling_OnANodeWhoseClockIsBehindTheDatabases_WaitingStartsAtTheDatabasesTime()
    {
        // A node ten days behind (a VM restored without NTP) would write a destroy time already
        // due by every other clock: the leader would destroy at its next pass, no waiting period.
        var store = (InMemoryStore)_domain.Store;
        var database = _domain.Time.GetUtcNow().AddDays(10);
        store.DatabaseTime = database;
        var key = await _domain.CreateKeyAsync("skewed");
        await _domain.Keys.RotateKeyAsync(Dev, key.Name, null, default);

        var version = await _domain.Keys.ScheduleKeyVersionDestructionAsync(Dev, key.Name.Version(1), TimeSpan.FromDays(7), null, default);
        var deleted = await _domain.Keys.ScheduleKeyDeletionAsync(Dev, key.Name, TimeSpan.FromDays(7), null, default);

        Assert.Equal(database.AddDays(7).ToUnixTimeMilliseconds(), version.DestroyTime!.Value.ToUnixTimeMilliseconds());
        Assert.Equal(database.AddDays(7).ToUnixTimeMilliseconds(), deleted.DestroyTime!.Value.ToUnixTimeMilliseconds());

        // A node ahead of the database keeps its own, later time.
        store.DatabaseTime = _domain.Time.GetUtcNow().AddDays(-10);
        var other = await _domain.CreateKeyAsync("ahead");
        Assert.Equal(_domain.Time.GetUtcNow().AddDays(7).ToUnixTimeMilliseconds(), (await _domain.Keys.ScheduleKeyDeletionAsync(Dev, other.Name, TimeSpan.FromDays(7), null, default)).DestroyTime!.Value.ToUnixTimeMilliseconds());
    }

    [Fact]
    public async Task CancelAndRestore_OnANodeWhoseClockIsBehindTheDatabases_RefusedOnceThePeriodEndedByTheDatabasesTime()
    {
        var store = (InMemoryStore)_domain.Store;
        var key = await _domain.CreateKeyAsync("skewed-end");
        await _domain.Keys.ScheduleKeyDeletionAsync(Dev, key.Name, TimeSpan.FromDays(7), null, default);
        var versioned = await _domain.CreateKeyAsync("skewed-version");
        await _domain.Keys.RotateKeyAsync(Dev, versioned.Name, null, default);
        await _domain.Keys.ScheduleKeyVersionDestructionAsync(Dev, versioned.Name.Version(1), TimeSpan.FromDays(7), null, default);

        // The database (and every other node) is 8 days on; this node's clock has not moved.
        store.DatabaseTime = _domain.Time.GetUtcNow().AddDays(8);

        var cancel = await Assert.ThrowsAsync<KmsException>(() => _domain.Keys.CancelKeyDeletionAsync(Dev, key.Name, null, default));
        Assert.Equal(KmsErrorCode.FailedPrecondition, cancel.Code);
        var restore = await Assert.ThrowsAsync<KmsException>(() => _domain.Keys.RestoreKeyVersionAsync(Dev, versioned.Name.Version(1), null, default));
        Assert.Equal(KmsErrorCode.FailedPrecondition, restore.Code);

        // While the period runs by every clock, both still work.
        store.DatabaseTime = _domain.Time.GetUtcNow().AddDays(1);
        var other = await _domain.CreateKeyAsync("skewed-running");
        await _domain.Keys.ScheduleKeyDeletionAsync(Dev, other.Name, TimeSpan.FromDays(7), null, default);
        Assert.Equal(KeyState.Disabled, (await _domain.Keys.CancelKeyDeletionAsync(Dev, other.Name, null, default)).State);
    }

    [Fact]
    public async Task Scheduling_OnANodeWhoseClockWasSetBack_WaitingStartsAtTheTimeRecordedAsSeen()
    {
        // SQLite, no second clock: the deployment recorded ten days more than this node's clock
        // now says (set back, a VM restored without NTP). Counted from the clock, the period
        // would be ten days short once the clock is put right.
        var seen = _domain.Time.GetUtcNow().AddDays(10);
        await RecordSeenAsync(seen);
        var key = await _domain.CreateKeyAsync("set-back");
        await _domain.Keys.RotateKeyAsync(Dev, key.Name, null, default);

        var version = await _domain.Keys.ScheduleKeyVersionDestructionAsync(Dev, key.Name.Version(1), TimeSpan.FromDays(7), null, default);
        var deleted = await _domain.Keys.ScheduleKeyDeletionAsync(Dev, key.Name, TimeSpan.FromDays(7), null, default);

        Assert.Equal(seen.AddDays(7).ToUnixTimeMilliseconds(), version.DestroyTime!.Value.ToUnixTimeMilliseconds());
        Assert.Equal(seen.AddDays(7).ToUnixTimeMilliseconds(), deleted.DestroyTime!.Value.ToUnixTimeMilliseconds());
    }

    [Fact]
    public async Task CancelAndRestore_OnANodeBootedWithItsClockAYearAhead_AllowedUntilTheLifecycleDestroys_ThenRefused()
    {
        // The worker runs by the time seen pass (LifecycleClock), not by a clock that jumped: the
        // operator can cancel what it has not destroyed, as long as it has not.
        var key = await _domain.CreateKeyAsync("jumped");
        await _domain.Keys.RotateKeyAsync(Dev, key.Name, null, default);
        await _domain.Keys.ScheduleKeyVersionDestructionAsync(Dev, key.Name.Version(1), TimeSpan.FromDays(7), null, default);
        var deleted = await _domain.CreateKeyAsync("jumped-deleted");
        var late = await _domain.CreateKeyAsync("jumped-late");
        await _domain.Keys.ScheduleKeyDeletionAsync(Dev, deleted.Name, TimeSpan.FromDays(7), null, default);
        await _domain.Keys.ScheduleKeyDeletionAsync(Dev, late.Name, TimeSpan.FromDays(7), null, default);
        var seen = _domain.Time.GetUtcNow();
        await new LifecycleClock(_domain.Store, _domain.Time, _domain.Lifecycle).NowAsync(default);

        // Down; boots a year ahead. Its first pass does not believe the year: nothing is destroyed.
        _domain.Time.Advance(TimeSpan.FromDays(365));
        var trusted = await new LifecycleClock(_domain.Store, _domain.Time, _domain.Lifecycle).NowAsync(default);
        Assert.Equal(seen.ToUnixTimeMilliseconds(), trusted.ToUnixTimeMilliseconds());
        Assert.Equal(0, await _domain.Keys.DestroyDueAsync(trusted, default));

        Assert.Equal(KeyState.Disabled, (await _domain.Keys.CancelKeyDeletionAsync(Dev, deleted.Name, null, default)).State);
        Assert.Equal(KeyState.Disabled, (await _domain.Keys.RestoreKeyVersionAsync(Dev, key.Name.Version(1), null, default)).State);

        // Once the time seen passes the end, the lifecycle destroys, and the cancel is refused
        // (also before that pass has run its destruction job).
        await RecordSeenAsync(seen.AddDays(7));
        var refused = await Assert.ThrowsAsync<KmsException>(() => _domain.Keys.CancelKeyDeletionAsync(Dev, late.Name, null, default));
        Assert.Contains("took effect", refused.Message, StringComparison.Ordinal);
        Assert.Equal(1, await _domain.Keys.DestroyDueAsync(seen.AddDays(7), default));
    }

    [Fact]
    public async Task CancelAndRestore_OnANodeWhoseClockWasSetBack_RefusedOnceThePeriodEndedByTheTimeRecordedAsSeen()
    {
        var key = await _domain.CreateKeyAsync("set-back-end");
        await _domain.Keys.ScheduleKeyDeletionAsync(Dev, key.Name, TimeSpan.FromDays(7), null, default);
        var versioned = await _domain.CreateKeyAsync("set-back-version");
        await _domain.Keys.RotateKeyAsync(Dev, versioned.Name, null, default);
        await _domain.Keys.ScheduleKeyVersionDestructionAsync(Dev, versioned.Name.Version(1), TimeSpan.FromDays(7), null, default);

        // The deployment saw eight days pass; this node's clock was set back to where it began.
        await RecordSeenAsync(_domain.Time.GetUtcNow().AddDays(8));

        var cancel = await Assert.ThrowsAsync<KmsException>(() => _domain.Keys.CancelKeyDeletionAsync(Dev, key.Name, null, default));
        Assert.Equal(KmsErrorCode.FailedPrecondition, cancel.Code);
        var restore = await Assert.ThrowsAsync<KmsException>(() => _domain.Keys.RestoreKeyVersionAsync(Dev, versioned.Name.Version(1), null, default));
        Assert.Equal(KmsErrorCode.FailedPrecondition, restore.Code);

        // The record a pass leaves behind a clock that is right (seconds ago) changes nothing:
        // a period over by the clock is over.
        var other = await _domain.CreateKeyAsync("set-back-running");
        await _domain.Keys.ScheduleKeyDeletionAsync(Dev, other.Name, TimeSpan.FromDays(7), null, default);
        _domain.Time.Advance(TimeSpan.FromDays(15) + TimeSpan.FromMinutes(1));
        await RecordSeenAsync(_domain.Time.GetUtcNow().AddSeconds(-30));
        Assert.Equal(KmsErrorCode.FailedPrecondition, (await Assert.ThrowsAsync<KmsException>(() => _domain.Keys.CancelKeyDeletionAsync(Dev, other.Name, null, default))).Code);
    }

    [Fact]
    public async Task KeyDeletion_AfterWaitingPeriod_EveryVersionDestroyedAndNothingWorks()
    {
        var key = await _domain.CreateKeyAsync("k");
        await _domain.Keys.RotateKeyAsync(Dev, key.Name, null, default);
        var blob = (await _domain.Crypto.EncryptAsync(Dev, key.Name, [1], EncryptionContext.Empty, default)).Ciphertext;
        await _domain.Keys.ScheduleKeyDeletionAsync(Dev, key.Name, TimeSpan.FromDays(7), null, default);

        _domain.Time.Advance(TimeSpan.FromDays(7));
        Assert.Equal(2, await _domain.Keys.DestroyDueAsync(_domain.Time.GetUtcNow(), default));

        var destroyed = await _domain.Keys.GetKeyAsync(Dev, key.Name, default);
        Assert.Equal(KeyState.Destroyed, destroyed.State);
        Assert.All((await _domain.Keys.ListKeyVersionsAsync(Dev, key.Name, 0, null, default)).Items, v => Assert.Equal(KeyState.Destroyed, v.State));
        Assert.Equal(KmsErrorCode.FailedPrecondition, (await Assert.ThrowsAsync<KmsException>(() => _domain.Crypto.DecryptAsync(Dev, blob, EncryptionContext.Empty, default))).Code);
        Assert.Equal(KmsErrorCode.FailedPrecondition, (await Assert.ThrowsAsync<KmsException>(() => _domain.Keys.CancelKeyDeletionAsync(Dev, key.Name, null, default))).Code);
        Assert.Equal(KmsErrorCode.FailedPrecondition, (await Assert.ThrowsAsync<KmsException>(() => _domain.Keys.RotateKeyAsync(Dev, key.Name, null, default))).Code);
    }

    [Theory]
    [InlineData(6.9)]
    [InlineData(30.1)]
    [InlineData(0)]
    public async Task ScheduleDeletion_WaitingPeriodOutOfRange_InvalidArgumentAndNothingChanges(double days)
    {
        var key = await _domain.CreateKeyAsync("k");
        var e = await Assert.ThrowsAsync<KmsException>(() => _domain.Keys.ScheduleKeyDeletionAsync(Dev, key.Name, TimeSpan.FromDays(days), null, default));
        Assert.Equal("waiting_period", e.Field);
        Assert.Equal(KeyState.Enabled, (await _domain.Keys.GetKeyAsync(Dev, key.Name, default)).State);
    }

    [Fact]
    public async Task ScheduleDeletion_RetriedWithSameRequestId_ReplaysInsteadOfFailing()
    {
        var key = await _domain.CreateKeyAsync("k");
        var first = await _domain.Keys.ScheduleKeyDeletionAsync(Dev, key.Name, null, "delete-1", default);
        var retry = await _domain.Keys.ScheduleKeyDeletionAsync(Dev, key.Name, null, "delete-1", default);
        Assert.Equal(first.DestroyTime, retry.DestroyTime);

        var again = await Assert.ThrowsAsync<KmsException>(() => _domain.Keys.ScheduleKeyDeletionAsync(Dev, key.Name, null, null, default));
        Assert.Contains("DESTROY_SCHEDULED already", again.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task MinDecryptionVersion_OlderVersionsRefuseToDecrypt_WithoutBeingDestroyed()
    {
        var key = await _domain.CreateKeyAsync("k");
        var v1Blob = (await _domain.Crypto.EncryptAsync(Dev, key.Name, [1], EncryptionContext.Empty, default)).Ciphertext;
        await _domain.Keys.RotateKeyAsync(Dev, key.Name, null, default);
        var v2Blob = (await _domain.Crypto.EncryptAsync(Dev, key.Name, [2], EncryptionContext.Empty, default)).Ciphertext;

        var updated = await _domain.Keys.UpdateKeyAsync(Dev, key.Name, new KeyUpdate { MinDecryptionVersion = 2 }, default);
        Assert.Equal(2, updated.MinDecryptionVersion);

        var e = await Assert.ThrowsAsync<KmsException>(() => _domain.Crypto.DecryptAsync(Dev, v1Blob, EncryptionContext.Empty, default));
        Assert.Equal(KmsErrorCode.FailedPrecondition, e.Code);
        Assert.Contains("below the minimum decryption version 2", e.Message, StringComparison.Ordinal);
        using (var ok = await _domain.Crypto.DecryptAsync(Dev, v2Blob, EncryptionContext.Empty, default))
        {
            Assert.Equal([2], ok.Plaintext.Span.ToArray());
        }

        Assert.Equal(KeyState.Enabled, (await _domain.Keys.GetKeyVersionAsync(Dev, key.Name.Version(1), default)).State);

        // Lowering it again lets version 1 decrypt again: nothing was destroyed.
        await _domain.Keys.UpdateKeyAsync(Dev, key.Name, new KeyUpdate { MinDecryptionVersion = 1 }, default);
        using var again = await _domain.Crypto.DecryptAsync(Dev, v1Blob, EncryptionContext.Empty, default);
    }

    [Fact]
    public async Task MinDecryptionVersion_AbovePrimary_RefusedWithTheNumbers()
    {
        var key = await _domain.CreateKeyAsync("k");
        var e = await Assert.ThrowsAsync<KmsException>(() => _domain.Keys.UpdateKeyAsync(Dev, key.Name, new KeyUpdate { MinDecryptionVersion = 3 }, default));
        Assert.Equal("minimum decryption version of 3 is greater than the primary version 1 of key tenants/dev/keys/k", e.Message);
    }

    [Fact]
    public async Task UpdatePrimaryVersion_BackToAnOlderVersion_EncryptsWithIt()
    {
        var key = await _domain.CreateKeyAsync("k");
        await _domain.Keys.RotateKeyAsync(Dev, key.Name, null, default);
        await _domain.Keys.UpdatePrimaryVersionAsync(Dev, key.Name, 1, default);
        Assert.Equal(1, (await _domain.Crypto.EncryptAsync(Dev, key.Name, [1], EncryptionContext.Empty, default)).KeyVersion.Version);
    }

    [Fact]
    public async Task DisabledVersion_DecryptRefusedNamingTheState_EnableRestores()
    {
        var key = await _domain.CreateKeyAsync("k");
        var blob = (await _domain.Crypto.EncryptAsync(Dev, key.Name, [1], EncryptionContext.Empty, default)).Ciphertext;
        await _domain.Keys.RotateKeyAsync(Dev, key.Name, null, default);
        await _domain.Keys.DisableKeyVersionAsync(Dev, key.Name.Version(1), default);

        var e = await Assert.ThrowsAsync<KmsException>(() => _domain.Crypto.DecryptAsync(Dev, blob, EncryptionContext.Empty, default));
        Assert.Equal("key version tenants/dev/keys/k/versions/1 is DISABLED", e.Message);
        await _domain.Keys.EnableKeyVersionAsync(Dev, key.Name.Version(1), default);
        using var decrypted = await _domain.Crypto.DecryptAsync(Dev, blob, EncryptionContext.Empty, default);
    }

    [Fact]
    public async Task UpdateKey_OnAKeyScheduledForDeletion_RotationAndMinimumRefused_NothingChanged_LabelsStillChange()
    {
        var key = await _domain.CreateKeyAsync("k", rotationPeriod: TimeSpan.FromDays(30));
        await _domain.Keys.RotateKeyAsync(Dev, key.Name, null, default);
        var scheduled = await _domain.Keys.ScheduleKeyDeletionAsync(Dev, key.Name, TimeSpan.FromDays(7), null, default);
        const string Refusal = "key tenants/dev/keys/k is DESTROY_SCHEDULED; cancel the deletion before changing its rotation schedule or minimum decryption version (its labels can still be changed)";

        foreach (var update in new[]
        {
            new KeyUpdate { RotationPeriod = new(TimeSpan.FromDays(1)) },
            new KeyUpdate { RotationPeriod = new(null) },
            new KeyUpdate { NextRotationTime = new(null) },
            new KeyUpdate { MinDecryptionVersion = 2 },
            new KeyUpdate { Labels = KeyLabels.Create([new("team", "payments")]), MinDecryptionVersion = 2 },
        })
        {
            var refused = await Assert.ThrowsAsync<KmsException>(() => _domain.Keys.UpdateKeyAsync(Dev, key.Name, update, default));
            Assert.Equal((KmsErrorCode.FailedPrecondition, Refusal), (refused.Code, refused.Message));
        }

        var unchanged = await _domain.Keys.GetKeyAsync(Dev, key.Name, default);
        Assert.Equal((scheduled.RotationPeriod, scheduled.NextRotationTime, scheduled.MinDecryptionVersion), (unchanged.RotationPeriod, unchanged.NextRotationTime, unchanged.MinDecryptionVersion));
        Assert.Empty(unchanged.Labels);

        var labelled = await _domain.Keys.UpdateKeyAsync(Dev, key.Name, new KeyUpdate { Labels = KeyLabels.Create([new("deleted-by", "ticket-42")]) }, default);
        Assert.Equal(("ticket-42", KeyState.DestroyScheduled), (labelled.Labels["deleted-by"], labelled.State));

        // Cancelled, the key is back DISABLED and takes them before it serves again.
        await _domain.Keys.CancelKeyDeletionAsync(Dev, key.Name, null, default);
        Assert.Equal(2, (await _domain.Keys.UpdateKeyAsync(Dev, key.Name, new KeyUpdate { MinDecryptionVersion = 2, RotationPeriod = new(null) }, default)).MinDecryptionVersion);
    }

    [Fact]
    public async Task UpdateKey_ScheduledForDeletionWhileItWaitedForTheWriteLock_Refused()
    {
        // The key is ENABLED when the call starts; a ScheduleKeyDeletion commits before the
        // update's write reads it: judged on the key as that write reads it.
        var key = await _domain.CreateKeyAsync("k");
        var store = (InMemoryStore)_domain.Store;
        store.BeforeNextKeyUpdate = () => store.UpdateKeyAsync(key.Name, current => new KeyChange(current.Key with { State = KeyState.DestroyScheduled, DestroyTime = _domain.Time.GetUtcNow().AddDays(7) }), default).GetAwaiter().GetResult();

        var refused = await Assert.ThrowsAsync<KmsException>(() => _domain.Keys.UpdateKeyAsync(Dev, key.Name, new KeyUpdate { RotationPeriod = new(TimeSpan.FromDays(1)) }, default));
        Assert.Equal(KmsErrorCode.FailedPrecondition, refused.Code);
        Assert.Null((await _domain.Keys.GetKeyAsync(Dev, key.Name, default)).RotationPeriod);
    }

    [Fact]
    public async Task UpdateKey_RotationPeriodSetAndCleared_NextRotationFollows()
    {
        var key = await _domain.CreateKeyAsync("k");
        var set = await _domain.Keys.UpdateKeyAsync(Dev, key.Name, new KeyUpdate { RotationPeriod = new(TimeSpan.FromDays(30)) }, default);
        Assert.Equal(TimeSpan.FromDays(30), set.RotationPeriod);
        Assert.Equal(_domain.Time.GetUtcNow().AddDays(30).ToUnixTimeMilliseconds(), set.NextRotationTime!.Value.ToUnixTimeMilliseconds());

        var cleared = await _domain.Keys.UpdateKeyAsync(Dev, key.Name, new KeyUpdate { RotationPeriod = new(null) }, default);
        Assert.Null(cleared.RotationPeriod);
        Assert.Null(cleared.NextRotationTime);
    }

    [Fact]
    public async Task UpdateKey_NextRotationTimeMaskedWithoutAValue_WhileAPeriodIsSet_StartsThePeriodAgain_KeyStillRotates()
    {
        var key = await _domain.CreateKeyAsync("k");
        var period = TimeSpan.FromDays(30);
        await _domain.Keys.UpdateKeyAsync(Dev, key.Name, new KeyUpdate { RotationPeriod = new(period) }, default);
        _domain.Time.Advance(TimeSpan.FromDays(3));

        // Both ways a client leaves the time empty: masked alone, and masked with the period.
        var cleared = await _domain.Keys.UpdateKeyAsync(Dev, key.Name, new KeyUpdate { NextRotationTime = new(null) }, default);
        Assert.Equal(_domain.Time.GetUtcNow() + period, cleared.NextRotationTime);
        var both = await _domain.Keys.UpdateKeyAsync(Dev, key.Name, new KeyUpdate { RotationPeriod = new(period), NextRotationTime = new(null) }, default);
        Assert.Equal(_domain.Time.GetUtcNow() + period, both.NextRotationTime);

        _domain.Time.Advance(period + TimeSpan.FromDays(1));
        Assert.Equal(1, await _domain.Keys.RotateDueKeysAsync(_domain.Time.GetUtcNow(), default));
    }

    [Fact]
    public async Task CancelKeyDeletion_PeriodEndedButJobNotRun_RefusedAndStaysRefusedAfterDestruction()
    {
        var key = await _domain.CreateKeyAsync("k");
        await _domain.Keys.ScheduleKeyDeletionAsync(Dev, key.Name, TimeSpan.FromDays(7), null, default);
        _domain.Time.Advance(TimeSpan.FromDays(8));

        var e = await Assert.ThrowsAsync<KmsException>(() => _domain.Keys.CancelKeyDeletionAsync(Dev, key.Name, null, default));
        Assert.Equal(KmsErrorCode.FailedPrecondition, e.Code);
        Assert.Equal(KmsErrorCode.FailedPrecondition, (await Assert.ThrowsAsync<KmsException>(() => _domain.Keys.EnableKeyAsync(Dev, key.Name, default))).Code);
        Assert.Equal(1, await _domain.Keys.DestroyDueAsync(_domain.Time.GetUtcNow(), default));
    }

    [Fact]
    public async Task ScheduleAndCancel_RetryThatLookedBeforeTheFirstCommitted_ReplaysInsteadOfFailedPrecondition()
    {
        var store = (InMemoryStore)_domain.Store;
        var key = await _domain.CreateKeyAsync("raced");
        var scheduled = await _domain.Keys.ScheduleKeyDeletionAsync(Dev, key.Name, TimeSpan.FromDays(7), "schedule-1", default);

        // The retry's lookup ran while the first attempt still waited for the write lock.
        store.MissNextRequestLookups = 1;
        var retried = await _domain.Keys.ScheduleKeyDeletionAsync(Dev, key.Name, TimeSpan.FromDays(7), "schedule-1", default);
        Assert.Equal((KeyState.DestroyScheduled, scheduled.DestroyTime), (retried.State, retried.DestroyTime));

        await _domain.Keys.CancelKeyDeletionAsync(Dev, key.Name, "cancel-1", default);
        store.MissNextRequestLookups = 1;
        Assert.Equal(KeyState.Disabled, (await _domain.Keys.CancelKeyDeletionAsync(Dev, key.Name, "cancel-1", default)).State);

        // Without a request id, or with another one, the state's refusal stands.
        Assert.Equal(KmsErrorCode.FailedPrecondition, (await Assert.ThrowsAsync<KmsException>(() => _domain.Keys.CancelKeyDeletionAsync(Dev, key.Name, "cancel-2", default))).Code);
    }

    [Fact]
    public async Task CancelAndRestore_RetriedWithSameRequestId_SucceedAgain()
    {
        var key = await _domain.CreateKeyAsync("k");
        await _domain.Keys.RotateKeyAsync(Dev, key.Name, null, default);
        await _domain.Keys.ScheduleKeyVersionDestructionAsync(Dev, key.Name.Version(1), null, null, default);
        await _domain.Keys.RestoreKeyVersionAsync(Dev, key.Name.Version(1), "restore-1", default);
        Assert.Equal(KeyState.Disabled, (await _domain.Keys.RestoreKeyVersionAsync(Dev, key.Name.Version(1), "restore-1", default)).State);

        await _domain.Keys.ScheduleKeyDeletionAsync(Dev, key.Name, null, null, default);
        await _domain.Keys.CancelKeyDeletionAsync(Dev, key.Name, "cancel-1", default);
        Assert.Equal(KeyState.Disabled, (await _domain.Keys.CancelKeyDeletionAsync(Dev, key.Name, "cancel-1", default)).State);
        Assert.Equal(KmsErrorCode.FailedPrecondition, (await Assert.ThrowsAsync<KmsException>(() => _domain.Keys.CancelKeyDeletionAsync(Dev, key.Name, null, default))).Code);
    }

    [Fact]
    public async Task NextRotationTimeWithoutPeriod_InvalidArgument_OnCreateAndUpdate()
    {
        var command = new CreateKeyCommand(Dev.Tenant, "k", KeyPurpose.EncryptDecrypt, KeyLabels.Empty, null) { NextRotationTime = _domain.Time.GetUtcNow() };
        Assert.Equal("key.next_rotation_time", (await Assert.ThrowsAsync<KmsException>(() => _domain.Keys.CreateKeyAsync(Dev, command, default))).Field);

        var key = await _domain.CreateKeyAsync("k2");
        var update = new KeyUpdate { NextRotationTime = new(_domain.Time.GetUtcNow()) };
        Assert.Equal("key.next_rotation_time", (await Assert.ThrowsAsync<KmsException>(() => _domain.Keys.UpdateKeyAsync(Dev, key.Name, update, default))).Field);
    }

    [Fact]
    public async Task ScheduledRotation_OneKeyFails_OthersStillRotated()
    {
        var store = (InMemoryStore)_domain.Store;
        var first = await _domain.CreateKeyAsync("a", rotationPeriod: TimeSpan.FromDays(1));
        var second = await _domain.CreateKeyAsync("b", rotationPeriod: TimeSpan.FromDays(1));
        _domain.Time.Advance(TimeSpan.FromDays(1));
        store.FailNextWrite = KmsErrors.Unavailable("injected");

        await Assert.ThrowsAsync<AggregateException>(() => _domain.Keys.RotateDueKeysAsync(_domain.Time.GetUtcNow(), default));
        var primaries = new[] { first, second }.Select(k => _domain.Keys.GetKeyAsync(Dev, k.Name, default).Result.Primary.Name.Version).ToList();
        Assert.Equal([1, 2], primaries.Order());
        Assert.Equal(1, await _domain.Keys.RotateDueKeysAsync(_domain.Time.GetUtcNow(), default));
    }

    [Fact]
    public async Task ListKeyVersions_Pages()
    {
        var key = await _domain.CreateKeyAsync("k");
        for (var i = 0; i < 4; i++)
        {
            await _domain.Keys.RotateKeyAsync(Dev, key.Name, null, default);
        }

        var seen = new List<int>();
        string? token = null;
        do
        {
            var page = await _domain.Keys.ListKeyVersionsAsync(Dev, key.Name, 2, token, default);
            seen.AddRange(page.Items.Select(v => v.Name.Version));
            token = page.NextPageToken;
        }
        while (token is not null);

        Assert.Equal([1, 2, 3, 4, 5], seen);
    }

    [Fact]
    public async Task GetKeyVersion_Unknown_NotFound_OtherTenant_NotFound()
    {
        var key = await _domain.CreateKeyAsync("k");
        Assert.Equal(KmsErrorCode.NotFound, (await Assert.ThrowsAsync<KmsException>(() => _domain.Keys.GetKeyVersionAsync(Dev, key.Name.Version(7), default))).Code);
        Assert.Equal(KmsErrorCode.NotFound, (await Assert.ThrowsAsync<KmsException>(() => _domain.Keys.GetKeyVersionAsync(DomainHarness.Acme, key.Name.Version(1), default))).Code);
    }

    // What a lifecycle pass records: the time this deployment has seen pass.
    private Task RecordSeenAsync(DateTimeOffset seen) =>
        _domain.Store.SetSettingAsync(LifecycleClock.Setting, seen.ToUnixTimeMilliseconds().ToString(System.Globalization.CultureInfo.InvariantCulture), default);
}
