using System.Security.Cryptography;
using Kms.Core.Crypto;
using Kms.Core.Errors;
using Kms.Core.Keys;
using Kms.Core.Names;
using Kms.Core.Ports;

namespace Kms.Storage.Tests;

/// <summary>The lifecycle half of the store contract: transactional updates, versions, aliases, due work, usage.</summary>
public abstract class KeyStoreLifecycleContract : KeyStoreContract
{
    [Fact]
    public async Task UpdateKey_AddVersion_StoredWithMaterialAndPrimaryMoves()
    {
        var store = await CreateStoreAsync();
        var key = NewKey(Dev, "k");
        await store.CreateKeyAsync(key, Material(), null, default);
        var material = Material();

        var after = await store.UpdateKeyAsync(key.Name, current => Rotation(current, material), default);

        Assert.Equal(2, after!.Key.Primary.Name.Version);
        Assert.Equal([1, 2], after.Versions.Select(v => v.Name.Version));
        var primary = await store.GetPrimaryMaterialAsync(key.Name, default);
        Assert.Equal(material.Bytes.ToArray(), primary!.Material!.Bytes.ToArray());
        Assert.Equal(2, (await store.ListVersionsAsync(key.Name, 0, 10, default)).Count);
        Assert.Equal(after.Versions[1], await store.GetVersionAsync(key.Name.Version(2), default));
        Assert.Null(await store.GetVersionAsync(key.Name.Version(3), default));
    }

    [Fact]
    public async Task UpdateKey_AVersionOfAMaterialItsImportJobAlreadyImported_FailedPrecondition_NothingWritten()
    {
        var store = await CreateStoreAsync();
        var first = NewKey(Dev, "byok") with { AllowImport = true };
        var second = NewKey(Dev, "byok-2") with { AllowImport = true };
        await store.CreateKeyAsync(first, Material(), null, default);
        await store.CreateKeyAsync(second, Material(), null, default);
        const string job = "tenants/dev/importJobs/job";
        var fingerprint = Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(32));
        var imported = await store.UpdateKeyAsync(first.Name, current => Imported(current, job, fingerprint), default);
        Assert.Equal(fingerprint, imported!.Key.Primary.ImportFingerprint);
        Assert.Equal(fingerprint, (await store.GetVersionAsync(first.Name.Version(2), default))!.ImportFingerprint);

        foreach (var key in new[] { first.Name, second.Name })
        {
            var before = await store.ListVersionsAsync(key, 0, 10, default);
            var refused = await Assert.ThrowsAsync<KmsException>(() => store.UpdateKeyAsync(key, current => Imported(current, job, fingerprint), default));
            Assert.Equal(KmsErrorCode.FailedPrecondition, refused.Code);
            Assert.Contains($"already imported through import job {job}", refused.Message, StringComparison.Ordinal);
            Assert.Equal(before, await store.ListVersionsAsync(key, 0, 10, default));
            Assert.Equal(before[^1].Name, (await store.GetKeyAsync(key, default))!.Primary.Name);
        }

        // Another material through the job, the material through another job: stored.
        Assert.NotNull(await store.UpdateKeyAsync(second.Name, current => Imported(current, job, Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(32))), default));
        Assert.NotNull(await store.UpdateKeyAsync(second.Name, current => Imported(current, "tenants/dev/importJobs/job-2", fingerprint), default));
        Assert.Equal(3, (await store.ListVersionsAsync(second.Name, 0, 10, default)).Count);
    }

    [Fact]
    public async Task UpdateKey_TwoConcurrentImportsOfOneMaterialThroughOneJob_OnlyOneStored()
    {
        var store = await CreateStoreAsync();
        var keys = new[] { NewKey(Dev, "byok-a") with { AllowImport = true }, NewKey(Dev, "byok-b") with { AllowImport = true } };
        foreach (var key in keys)
        {
            await store.CreateKeyAsync(key, Material(), null, default);
        }

        var fingerprint = Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(32));
        var outcomes = await Task.WhenAll(keys.Select(key => Task.Run(async () =>
        {
            try
            {
                await store.UpdateKeyAsync(key.Name, current => Imported(current, "tenants/dev/importJobs/job", fingerprint), default);
                return "stored";
            }
            catch (KmsException e)
            {
                return e.Code.ToString();
            }
        })));

        Assert.Equal(["FailedPrecondition", "stored"], outcomes.Order(StringComparer.Ordinal));
        var counts = await Task.WhenAll(keys.Select(key => store.ListVersionsAsync(key.Name, 0, 10, default)));
        Assert.Equal([1, 2], counts.Select(c => c.Count).Order());
    }

    // A version imported through `job` with material of `fingerprint`, made the primary.
    public static KeyChange Imported(KeyWithVersions current, string job, string fingerprint)
    {
        var rotation = Rotation(current, Material());
        var version = rotation.AddedVersion!.Version with { Origin = KeyOrigin.Imported, ImportJob = job, ImportFingerprint = fingerprint };
        return new KeyChange(current.Key with { Primary = version }) { AddedVersion = new NewKeyVersion(version, rotation.AddedVersion.Material) };
    }

    [Fact]
    public async Task UpdateKey_DecisionThrows_NothingChanges()
    {
        var store = await CreateStoreAsync();
        var key = NewKey(Dev, "k");
        await store.CreateKeyAsync(key, Material(), null, default);

        await Assert.ThrowsAsync<KmsException>(() => store.UpdateKeyAsync(key.Name, _ => throw KmsErrors.FailedPrecondition("no"), default));
        Assert.Equal(key.Primary, (await store.GetKeyAsync(key.Name, default))!.Primary);
        Assert.Single(await store.ListVersionsAsync(key.Name, 0, 10, default));
    }

    [Fact]
    public async Task UpdateKey_MissingKey_NullWithoutCallingTheDecision()
    {
        var store = await CreateStoreAsync();
        Assert.Null(await store.UpdateKeyAsync(KeyName.Create(Dev, "none"), _ => throw new InvalidOperationException("not called"), default));
    }

    [Fact]
    public async Task UpdateKey_OtherTenantsKeyOfSameId_Untouched()
    {
        var store = await CreateStoreAsync();
        var dev = NewKey(Dev, "k");
        var acme = NewKey(Acme, "k");
        await store.CreateKeyAsync(dev, Material(), null, default);
        await store.CreateKeyAsync(acme, Material(), null, default);

        await store.UpdateKeyAsync(dev.Name, current => new KeyChange(current.Key with { State = KeyState.Disabled }), default);
        Assert.Equal(KeyState.Enabled, (await store.GetKeyAsync(acme.Name, default))!.State);
    }

    [Fact]
    public async Task UpdateKey_VersionDestroyed_MaterialErasedMetadataKept()
    {
        var store = await CreateStoreAsync();
        var key = NewKey(Dev, "k");
        await store.CreateKeyAsync(key, Material(), null, default);
        await store.UpdateKeyAsync(key.Name, current => Rotation(current, Material()), default);
        var now = DateTimeOffset.FromUnixTimeMilliseconds(DateTimeOffset.UtcNow.ToUnixTimeMilliseconds());

        await store.UpdateKeyAsync(key.Name, current => new KeyChange(current.Key)
        {
            UpdatedVersions = [current.Versions[0] with { State = KeyState.Destroyed, DestroyEventTime = now }],
        }, default);

        var found = await store.FindVersionMaterialAsync(Dev, key.Primary.Id, default);
        Assert.Equal(KeyState.Destroyed, found!.Version.State);
        Assert.Equal(now, found.Version.DestroyEventTime);
        Assert.Null(found.Material);
    }

    [Fact]
    public async Task UpdateKey_WithRequest_Recorded_ReusedRequestId_AlreadyExistsAndNotApplied()
    {
        var store = await CreateStoreAsync();
        var key = NewKey(Dev, "k");
        await store.CreateKeyAsync(key, Material(), null, default);
        var request = new RequestRecord(Dev, "r1", "RotateKey", [1], "x", key.CreateTime);
        await store.UpdateKeyAsync(key.Name, current => Rotation(current, Material()) with { Request = request }, default);
        Assert.NotNull(await store.FindRequestAsync(Dev, "r1", default));

        await Assert.ThrowsAsync<KmsException>(() => store.UpdateKeyAsync(key.Name, current => Rotation(current, Material()) with { Request = request }, default));
        Assert.Equal(2, (await store.ListVersionsAsync(key.Name, 0, 10, default)).Count);
    }

    [Fact]
    public async Task UpdateKey_ConcurrentRotations_SerialisedIntoConsecutiveVersions()
    {
        var store = await CreateStoreAsync();
        var key = NewKey(Dev, "k");
        await store.CreateKeyAsync(key, Material(), null, default);

        await Task.WhenAll(Enumerable.Range(0, 25).Select(_ => store.UpdateKeyAsync(key.Name, current => Rotation(current, Material()), default)));

        var versions = await store.ListVersionsAsync(key.Name, 0, 100, default);
        Assert.Equal(Enumerable.Range(1, 26), versions.Select(v => v.Name.Version));
        Assert.Equal(26, (await store.GetKeyAsync(key.Name, default))!.Primary.Name.Version);
    }

    [Fact]
    public async Task Aliases_CreateGetUpdateDeleteList_TenantScoped()
    {
        var store = await CreateStoreAsync();
        var one = NewKey(Dev, "one");
        var two = NewKey(Dev, "two");
        await store.CreateKeyAsync(one, Material(), null, default);
        await store.CreateKeyAsync(two, Material(), null, default);
        var name = AliasName.Create(Dev, "a");
        var time = one.CreateTime;

        await store.CreateAliasAsync(new KeyAlias(name, one.Name, time, time), null, default);
        Assert.Equal(one.Name, (await store.GetAliasAsync(name, default))!.Key);
        Assert.Null(await store.GetAliasAsync(AliasName.Create(Acme, "a"), default));
        Assert.Equal(KmsErrorCode.AlreadyExists, (await Assert.ThrowsAsync<KmsException>(() => store.CreateAliasAsync(new KeyAlias(name, two.Name, time, time), null, default))).Code);

        var updated = await store.UpdateAliasAsync(name, two.Name, time.AddSeconds(1), null, default);
        Assert.Equal(two.Name, updated!.Key);
        Assert.Equal(time, updated.CreateTime);
        Assert.Null(await store.UpdateAliasAsync(AliasName.Create(Dev, "none"), two.Name, time, null, default));
        Assert.Equal(KmsErrorCode.NotFound, (await Assert.ThrowsAsync<KmsException>(() => store.UpdateAliasAsync(name, KeyName.Create(Dev, "none"), time, null, default))).Code);
        Assert.Equal(two.Name, (await store.GetAliasAsync(name, default))!.Key);

        // The check is asked inside the write with the key the alias names and the new one; a refusal writes nothing.
        (Key? Current, Key Target)? asked = null;
        Assert.Equal(KmsErrorCode.FailedPrecondition, (await Assert.ThrowsAsync<KmsException>(() => store.UpdateAliasAsync(name, one.Name, time.AddSeconds(2), (current, target) =>
        {
            asked = (current, target);
            throw KmsErrors.FailedPrecondition("refused");
        }, default))).Code);
        Assert.Equal((two.Name, one.Name), (asked!.Value.Current!.Name, asked.Value.Target.Name));
        Assert.Equal((two.Name, time.AddSeconds(1)), ((await store.GetAliasAsync(name, default))!.Key, (await store.GetAliasAsync(name, default))!.UpdateTime));

        Assert.Single(await store.ListAliasesAsync(Dev, null, 10, default));
        Assert.Empty(await store.ListAliasesAsync(Acme, null, 10, default));
        Assert.True(await store.DeleteAliasAsync(name, null, default));
        Assert.False(await store.DeleteAliasAsync(name, null, default));

        // A retry whose first attempt deleted the alias meanwhile: the request was recorded, not "no such alias".
        await store.CreateAliasAsync(new KeyAlias(name, one.Name, time, time), null, default);
        var request = new RequestRecord(Dev, "delete-1", "DeleteAlias", [1], name.ToString(), time);
        Assert.True(await store.DeleteAliasAsync(name, request, default));
        Assert.Equal(KmsErrorCode.AlreadyExists, (await Assert.ThrowsAsync<KmsException>(() => store.DeleteAliasAsync(name, request, default))).Code);
    }

    [Fact]
    public async Task Aliases_OntoAKeyScheduledForDeletionOrDestroyed_RefusedInTheWrite_NothingWritten_MovingAwayAndDeletingStillWork()
    {
        var store = await CreateStoreAsync();
        var live = NewKey(Dev, "live");
        var off = NewKey(Dev, "off") with { State = KeyState.Disabled };
        var going = NewKey(Dev, "going");
        var gone = NewKey(Dev, "gone");
        foreach (var key in new[] { live, off, going, gone })
        {
            await store.CreateKeyAsync(key, Material(), null, default);
        }

        var time = live.CreateTime;
        var payments = AliasName.Create(Dev, "payments");
        var held = AliasName.Create(Dev, "held");
        await store.CreateAliasAsync(new KeyAlias(payments, live.Name, time, time), null, default);
        await store.CreateAliasAsync(new KeyAlias(held, going.Name, time, time), null, default);
        await store.UpdateKeyAsync(going.Name, current => new KeyChange(current.Key with { State = KeyState.DestroyScheduled, DestroyTime = time.AddDays(30) }), default);
        await store.UpdateKeyAsync(gone.Name, current => new KeyChange(current.Key with { State = KeyState.Destroyed, DestroyTime = time }), default);

        // Created onto them: refused, no alias and no request id recorded.
        var late = AliasName.Create(Dev, "late");
        var request = new RequestRecord(Dev, "create-1", "CreateAlias", [1], late.ToString(), time);
        await AssertRefusedAsync("key tenants/dev/keys/going is DESTROY_SCHEDULED", () => store.CreateAliasAsync(new KeyAlias(late, going.Name, time, time), request, default));
        await AssertRefusedAsync("key tenants/dev/keys/gone is DESTROYED", () => store.CreateAliasAsync(new KeyAlias(late, gone.Name, time, time), request, default));
        Assert.Null(await store.GetAliasAsync(late, default));
        Assert.Null(await store.FindRequestAsync(Dev, "create-1", default));

        // Moved onto them: refused before the check is asked, the alias stays where it was.
        var asked = false;
        await AssertRefusedAsync("key tenants/dev/keys/going is DESTROY_SCHEDULED", () => store.UpdateAliasAsync(payments, going.Name, time.AddSeconds(1), (_, _) => asked = true, default));
        await AssertRefusedAsync("key tenants/dev/keys/gone is DESTROYED", () => store.UpdateAliasAsync(payments, gone.Name, time.AddSeconds(1), null, default));
        Assert.False(asked);
        Assert.Equal((live.Name, time), ((await store.GetAliasAsync(payments, default))!.Key, (await store.GetAliasAsync(payments, default))!.UpdateTime));

        // A DISABLED key still takes an alias (it can be enabled again; AWS KMS allows it too).
        await store.CreateAliasAsync(new KeyAlias(late, off.Name, time, time), null, default);
        Assert.Equal(off.Name, (await store.UpdateAliasAsync(payments, off.Name, time.AddSeconds(2), null, default))!.Key);

        // An alias that named the key before its deletion was scheduled: moved away, or deleted.
        Assert.Equal(live.Name, (await store.UpdateAliasAsync(held, live.Name, time.AddSeconds(3), null, default))!.Key);
        await store.UpdateAliasAsync(held, off.Name, time.AddSeconds(4), null, default);
        Assert.True(await store.DeleteAliasAsync(held, null, default));

        static async Task AssertRefusedAsync(string message, Func<Task> write)
        {
            var refused = await Assert.ThrowsAsync<KmsException>(write);
            Assert.Equal(KmsErrorCode.FailedPrecondition, refused.Code);
            Assert.StartsWith(message + ";", refused.Message, StringComparison.Ordinal);
        }
    }

    [Fact]
    public async Task Aliases_UpdatedOntoTheKeyTheyNameAlready_AnsweredAsTheyAre_NothingWritten_WhateverTheKeysState()
    {
        // UpdateAlias is safe to repeat (RetrySafety): a retry whose first attempt moved the alias,
        // its answer lost, and the key's deletion scheduled (or the key destroyed) in between.
        var store = await CreateStoreAsync();
        var going = NewKey(Dev, "going");
        var gone = NewKey(Dev, "gone");
        var live = NewKey(Dev, "live");
        foreach (var key in new[] { going, gone, live })
        {
            await store.CreateKeyAsync(key, Material(), null, default);
        }

        var time = going.CreateTime;
        var payments = AliasName.Create(Dev, "payments");
        var archive = AliasName.Create(Dev, "archive");
        await store.CreateAliasAsync(new KeyAlias(payments, live.Name, time, time), null, default);
        await store.CreateAliasAsync(new KeyAlias(archive, live.Name, time, time), null, default);
        Assert.Equal(going.Name, (await store.UpdateAliasAsync(payments, going.Name, time.AddSeconds(1), null, default))!.Key);
        Assert.Equal(gone.Name, (await store.UpdateAliasAsync(archive, gone.Name, time.AddSeconds(1), null, default))!.Key);
        await store.UpdateKeyAsync(going.Name, current => new KeyChange(current.Key with { State = KeyState.DestroyScheduled, DestroyTime = time.AddDays(30) }), default);
        await store.UpdateKeyAsync(gone.Name, current => new KeyChange(current.Key with { State = KeyState.Destroyed, DestroyTime = time }), default);

        // The retries: the alias as it is (its update time that of the move), the check not asked.
        var asked = false;
        var retried = await store.UpdateAliasAsync(payments, going.Name, time.AddSeconds(2), (_, _) => asked = true, default);
        Assert.Equal((going.Name, time, time.AddSeconds(1)), (retried!.Key, retried.CreateTime, retried.UpdateTime));
        Assert.Equal((gone.Name, time.AddSeconds(1)), ((await store.UpdateAliasAsync(archive, gone.Name, time.AddSeconds(2), null, default))!.Key, (await store.GetAliasAsync(archive, default))!.UpdateTime));
        Assert.False(asked);
        Assert.Equal(time.AddSeconds(1), (await store.GetAliasAsync(payments, default))!.UpdateTime);

        // A move onto the key is still refused from anywhere else, and a missing alias is still none.
        await store.CreateAliasAsync(new KeyAlias(AliasName.Create(Dev, "other"), live.Name, time, time), null, default);
        var refused = await Assert.ThrowsAsync<KmsException>(() => store.UpdateAliasAsync(AliasName.Create(Dev, "other"), going.Name, time.AddSeconds(3), null, default));
        Assert.Equal(KmsErrorCode.FailedPrecondition, refused.Code);
        Assert.Null(await store.UpdateAliasAsync(AliasName.Create(Dev, "none"), going.Name, time.AddSeconds(3), null, default));
    }

    [Fact]
    public async Task Aliases_ToMissingKey_NotFound()
    {
        var store = await CreateStoreAsync();
        var time = DateTimeOffset.FromUnixTimeMilliseconds(0);
        var e = await Assert.ThrowsAsync<KmsException>(() => store.CreateAliasAsync(new KeyAlias(AliasName.Create(Dev, "a"), KeyName.Create(Dev, "none"), time, time), null, default));
        Assert.Equal(KmsErrorCode.NotFound, e.Code);
    }

    [Fact]
    public async Task DueForRotation_OnlyEnabledAndDue()
    {
        var store = await CreateStoreAsync();
        var now = DateTimeOffset.FromUnixTimeMilliseconds(DateTimeOffset.UtcNow.ToUnixTimeMilliseconds());
        var due = NewKey(Dev, "due") with { RotationPeriod = TimeSpan.FromDays(1), NextRotationTime = now };
        var later = NewKey(Dev, "later") with { RotationPeriod = TimeSpan.FromDays(1), NextRotationTime = now.AddSeconds(1) };
        var disabled = NewKey(Acme, "disabled") with { State = KeyState.Disabled, RotationPeriod = TimeSpan.FromDays(1), NextRotationTime = now };
        var resident = NewKey(Dev, "resident") with { RotationPeriod = TimeSpan.FromDays(1), NextRotationTime = now.AddSeconds(-1), Residency = "eu" };
        foreach (var key in new[] { due, later, disabled, resident })
        {
            await store.CreateKeyAsync(key, Material(), null, default);
        }

        // A resident key is due only for a node of its region (one elsewhere could not rotate it).
        Assert.Equal([due.Name], await store.ListKeysDueForRotationAsync(now, 10, [], default));
        Assert.Equal([due.Name], await store.ListKeysDueForRotationAsync(now, 10, ["us"], default));
        Assert.Equal([resident.Name, due.Name], await store.ListKeysDueForRotationAsync(now, 10, ["us", "eu"], default));
        Assert.Equal("eu", (await store.GetKeyAsync(resident.Name, default))!.Residency);
    }

    [Fact]
    public async Task DueForDestruction_KeysAndVersionsWhoseTimeCame()
    {
        var store = await CreateStoreAsync();
        var now = DateTimeOffset.FromUnixTimeMilliseconds(DateTimeOffset.UtcNow.ToUnixTimeMilliseconds());
        var deleted = NewKey(Dev, "deleted") with { State = KeyState.DestroyScheduled, DestroyTime = now };
        var notYet = NewKey(Dev, "not-yet") with { State = KeyState.DestroyScheduled, DestroyTime = now.AddSeconds(1) };
        var versioned = NewKey(Dev, "versioned");
        foreach (var key in new[] { deleted, notYet, versioned })
        {
            await store.CreateKeyAsync(key, Material(), null, default);
        }

        await store.UpdateKeyAsync(versioned.Name, current => Rotation(current, Material()), default);
        await store.UpdateKeyAsync(versioned.Name, current => new KeyChange(current.Key)
        {
            UpdatedVersions = [current.Versions[0] with { State = KeyState.DestroyScheduled, DestroyTime = now }],
        }, default);

        var due = await store.ListKeysDueForDestructionAsync(now, 10, default);
        Assert.Equal(new[] { "deleted", "versioned" }, due.Select(n => n.KeyId).Order(StringComparer.Ordinal));
    }

    [Fact]
    public async Task DestructionFailure_Recorded_ListedAndLeftOutOfTheDueListUntilItsRetryTime_ClearedByTheNextChange_CarriesNoAuditEvent()
    {
        var store = await CreateStoreAsync();
        var now = DateTimeOffset.FromUnixTimeMilliseconds(DateTimeOffset.UtcNow.ToUnixTimeMilliseconds());
        var deleted = NewKey(Dev, "deleted") with { State = KeyState.DestroyScheduled, DestroyTime = now };
        var versioned = NewKey(Dev, "versioned");
        await store.CreateKeyAsync(deleted, Material(), null, default);
        await store.CreateKeyAsync(versioned, Material(), null, default);
        await store.UpdateKeyAsync(versioned.Name, current => Rotation(current, Material()), default);
        await store.UpdateKeyAsync(versioned.Name, current => new KeyChange(current.Key)
        {
            UpdatedVersions = [current.Versions[0] with { State = KeyState.DestroyScheduled, DestroyTime = now }],
        }, default);
        var head = store is IAuditStore audit ? (await audit.GetAuditHeadAsync(default)).Sequence : 0;

        // Recorded under a destruction's audit scope, as a careless caller would: the record is no
        // destruction, and no "destroyed" event may commit with it.
        var keyFailure = new DestructionFailure(deleted.Name, null, 3, now.AddMinutes(-7), now.AddMinutes(4));
        var versionFailure = new DestructionFailure(versioned.Name, 1, 1, now, now.AddMinutes(1));
        using (Kms.Core.Audit.AuditScope.EnterSystem("lifecycle/KeyDestruction", deleted.Name.ToString(), TimeProvider.System))
        {
            await store.RecordDestructionFailureAsync(keyFailure, default);
            await store.RecordDestructionFailureAsync(versionFailure, default);
        }

        // A record for what is not DESTROY_SCHEDULED (version 2) is not kept.
        await store.RecordDestructionFailureAsync(new DestructionFailure(versioned.Name, 2, 1, now, now.AddMinutes(1)), default);
        if (store is IAuditStore written)
        {
            Assert.Equal(head, (await written.GetAuditHeadAsync(default)).Sequence);
        }

        Assert.Equal([keyFailure, versionFailure], (await store.ListDestructionFailuresAsync(default)).OrderBy(f => f.Resource, StringComparer.Ordinal));
        Assert.Empty(await store.ListKeysDueForDestructionAsync(now, 10, default));
        Assert.Equal(["versioned"], (await store.ListKeysDueForDestructionAsync(now.AddMinutes(1), 10, default)).Select(n => n.KeyId));
        Assert.Equal(["deleted", "versioned"], (await store.ListKeysDueForDestructionAsync(now.AddMinutes(4), 10, default)).Select(n => n.KeyId).Order(StringComparer.Ordinal));

        // The destruction's own write (or any change of the key or version) clears its record.
        await store.UpdateKeyAsync(versioned.Name, current => new KeyChange(current.Key)
        {
            UpdatedVersions = [current.Versions[0] with { State = KeyState.Destroyed, DestroyEventTime = now }],
        }, default);
        await store.UpdateKeyAsync(deleted.Name, current => new KeyChange(current.Key with { State = KeyState.Enabled, DestroyTime = null }), default);
        Assert.Empty(await store.ListDestructionFailuresAsync(default));
        await store.UpdateKeyAsync(deleted.Name, current => new KeyChange(current.Key with { State = KeyState.DestroyScheduled, DestroyTime = now }), default);
        Assert.Empty(await store.ListDestructionFailuresAsync(default));
        Assert.Equal(["deleted"], (await store.ListKeysDueForDestructionAsync(now, 10, default)).Select(n => n.KeyId));
    }

    [Fact]
    public async Task ReserveEncryptions_ConcurrentReservations_AddUpExactly()
    {
        var store = await CreateStoreAsync();
        var key = NewKey(Dev, "k");
        await store.CreateKeyAsync(key, Material(), null, default);

        var totals = await Task.WhenAll(Enumerable.Range(0, 30).Select(_ => store.ReserveEncryptionsAsync(key.Primary.Id, 7, default)));
        Assert.Equal(Enumerable.Range(1, 30).Select(i => 7L * i), totals.Order());
        Assert.Equal(210, (await store.GetVersionAsync(key.Primary.Name, default))!.Usage.EncryptCount);
    }

    [Fact]
    public async Task RecordUsage_AddsCounts_LastUseNeverMovesBack()
    {
        var store = await CreateStoreAsync();
        var key = NewKey(Dev, "k");
        await store.CreateKeyAsync(key, Material(), null, default);
        var t = key.CreateTime;

        var node = Guid.NewGuid();
        await store.RecordUsageAsync(new UsageFlush(node, 1, t, [new UsageDelta(key.Primary.Id, 3, t.AddMinutes(2), t.AddMinutes(2))]), default);
        await store.RecordUsageAsync(new UsageFlush(node, 2, t, [new UsageDelta(key.Primary.Id, 2, t.AddMinutes(1), null)]), default);

        var usage = (await store.GetVersionAsync(key.Primary.Name, default))!.Usage;
        Assert.Equal(5, usage.DecryptCount);
        Assert.Equal(t.AddMinutes(2), usage.LastEncryptTime);
        Assert.Equal(t.AddMinutes(2), usage.LastDecryptTime);
    }

    [Fact]
    public async Task RecordUsage_ManyVersionsInOneFlush_EachGetsItsOwnDelta()
    {
        // One flush writes every version with the same statement, bound again per row: a value or a
        // NULL left from the row before must not leak into the next.
        var store = await CreateStoreAsync();
        var keys = new[] { NewKey(Dev, "a"), NewKey(Dev, "b"), NewKey(Dev, "c") };
        foreach (var key in keys)
        {
            await store.CreateKeyAsync(key, Material(), null, default);
        }

        var t = keys[0].CreateTime;
        await store.RecordUsageAsync(
            new UsageFlush(Guid.NewGuid(), 1, t,
            [
                new UsageDelta(keys[0].Primary.Id, 5, t.AddMinutes(1), null),
                new UsageDelta(keys[1].Primary.Id, 0, null, t.AddMinutes(2)),
                new UsageDelta(keys[2].Primary.Id, 7, t.AddMinutes(3), t.AddMinutes(4)),
            ]),
            default);

        var usage = await Task.WhenAll(keys.Select(async k => (await store.GetVersionAsync(k.Primary.Name, default))!.Usage));
        Assert.Equal((5L, (DateTimeOffset?)t.AddMinutes(1), (DateTimeOffset?)null), (usage[0].DecryptCount, usage[0].LastEncryptTime, usage[0].LastDecryptTime));
        Assert.Equal((0L, (DateTimeOffset?)null, (DateTimeOffset?)t.AddMinutes(2)), (usage[1].DecryptCount, usage[1].LastEncryptTime, usage[1].LastDecryptTime));
        Assert.Equal((7L, (DateTimeOffset?)t.AddMinutes(3), (DateTimeOffset?)t.AddMinutes(4)), (usage[2].DecryptCount, usage[2].LastEncryptTime, usage[2].LastDecryptTime));
    }

    [Fact]
    public async Task RecordUsage_TheSameFlushAgain_AppliedOnce_ALaterOneAndAnotherNodesApplied()
    {
        // A flush sent again because its write's outcome was unknown (PostgreSQL's COMMIT answer
        // lost) must add nothing if the first write committed.
        var store = await CreateStoreAsync();
        var key = NewKey(Dev, "k");
        await store.CreateKeyAsync(key, Material(), null, default);
        var t = key.CreateTime;
        var (a, b) = (Guid.NewGuid(), Guid.NewGuid());
        var first = new UsageFlush(a, 1, t, [new UsageDelta(key.Primary.Id, 3, null, t.AddMinutes(1))]);

        Assert.True(await store.RecordUsageAsync(first, default));
        Assert.False(await store.RecordUsageAsync(first, default));
        Assert.True(await store.RecordUsageAsync(new UsageFlush(b, 1, t, [new UsageDelta(key.Primary.Id, 5, null, null)]), default));
        Assert.True(await store.RecordUsageAsync(new UsageFlush(a, 2, t, [new UsageDelta(key.Primary.Id, 7, null, null)]), default));
        Assert.False(await store.RecordUsageAsync(first, default));

        Assert.Equal(15, (await store.GetVersionAsync(key.Primary.Name, default))!.Usage.DecryptCount);
    }

    [Fact]
    public async Task RecordUsage_ANodeSilentLongerThanTheRetention_Forgotten_ItsFlushAppliedAgain()
    {
        // One row per process that ever flushed would grow for ever: a node not heard of for
        // UsageFlush.Retention is forgotten by the next flush of any node.
        var store = await CreateStoreAsync();
        var key = NewKey(Dev, "k");
        await store.CreateKeyAsync(key, Material(), null, default);
        var t = key.CreateTime;
        var old = new UsageFlush(Guid.NewGuid(), 1, t, [new UsageDelta(key.Primary.Id, 1, null, null)]);
        await store.RecordUsageAsync(old, default);

        await store.RecordUsageAsync(new UsageFlush(Guid.NewGuid(), 1, t + UsageFlush.Retention - TimeSpan.FromMinutes(1), [new UsageDelta(key.Primary.Id, 1, null, null)]), default);
        Assert.False(await store.RecordUsageAsync(old, default));
        await store.RecordUsageAsync(new UsageFlush(Guid.NewGuid(), 1, t + UsageFlush.Retention + TimeSpan.FromMinutes(1), [new UsageDelta(key.Primary.Id, 1, null, null)]), default);
        Assert.True(await store.RecordUsageAsync(old, default));
    }

    [Fact]
    public async Task KeySettings_RoundTrip()
    {
        var store = await CreateStoreAsync();
        var now = DateTimeOffset.FromUnixTimeMilliseconds(DateTimeOffset.UtcNow.ToUnixTimeMilliseconds());
        var key = NewKey(Dev, "k") with { RotationPeriod = TimeSpan.FromDays(90), NextRotationTime = now.AddDays(90), MinDecryptionVersion = 1 };
        await store.CreateKeyAsync(key, Material(), null, default);
        await store.UpdateKeyAsync(key.Name, current => Rotation(current, Material()), default);
        await store.UpdateKeyAsync(key.Name, current => new KeyChange(current.Key with { MinDecryptionVersion = 2, State = KeyState.DestroyScheduled, DestroyTime = now }), default);

        var read = await store.GetKeyAsync(key.Name, default);
        Assert.Equal(TimeSpan.FromDays(90), read!.RotationPeriod);
        Assert.Equal(now.AddDays(90), read.NextRotationTime);
        Assert.Equal(2, read.MinDecryptionVersion);
        Assert.Equal(now, read.DestroyTime);
        Assert.Equal(KeyState.DestroyScheduled, read.State);
    }

    public static KeyChange Rotation(KeyWithVersions current, WrappedKeyMaterial material)
    {
        var number = current.Versions.Max(v => v.Name.Version) + 1;
        var version = new KeyVersion(current.Key.Name.Version(number), KeyVersionId.NewId(), KeyState.Enabled, KeyAlgorithm.Aes256Gcm, current.Key.CreateTime);
        return new KeyChange(current.Key with { Primary = version }) { AddedVersion = new NewKeyVersion(version, material) };
    }
}
