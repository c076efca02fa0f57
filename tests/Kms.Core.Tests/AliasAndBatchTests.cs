using Kms.Core.Crypto;
using Kms.Core.Errors;
using Kms.Core.Keys;
using Kms.Core.Names;
using Kms.Core.Services;
using Kms.Testing.Fakes;

namespace Kms.Core.Tests;

/// <summary>Aliases, ReEncrypt and batch calls in the domain.</summary>
public sealed class AliasAndBatchTests : IDisposable
{
    private static readonly Caller Dev = DomainHarness.Dev;
    private readonly DomainHarness _domain = new();

    public void Dispose() => _domain.Dispose();

    [Fact]
    public async Task Alias_AcceptedInEveryCryptoCall_RepointedMovesTraffic()
    {
        var first = await _domain.CreateKeyAsync("first");
        var second = await _domain.CreateKeyAsync("second");
        var alias = await _domain.Aliases.CreateAliasAsync(Dev, Dev.Tenant, "current", first.Name, null, default);
        var viaAlias = KeyReference.Parse(alias.Name.ToString(), "name");

        Assert.Equal(first.Name, (await _domain.Crypto.EncryptAsync(Dev, viaAlias, [1], EncryptionContext.Empty, default)).KeyVersion.Key);
        using (var dataKey = await _domain.Crypto.GenerateDataKeyAsync(Dev, viaAlias, EncryptionContext.Empty, default))
        {
            Assert.Equal(first.Name, dataKey.KeyVersion.Key);
        }

        Assert.Equal(2, (await _domain.Keys.RotateKeyAsync(Dev, viaAlias, null, default)).Primary.Name.Version);

        await _domain.Aliases.UpdateAliasAsync(Dev, alias.Name, second.Name, default);
        var blob = (await _domain.Crypto.EncryptAsync(Dev, viaAlias, [1], EncryptionContext.Empty, default)).Ciphertext;
        var reEncrypted = await _domain.Crypto.ReEncryptAsync(Dev, blob, EncryptionContext.Empty, KeyReference.Parse("tenants/dev/aliases/current", "n"), EncryptionContext.Empty, default);
        Assert.Equal(second.Name, reEncrypted.KeyVersion.Key);

        var batch = await _domain.Crypto.BatchEncryptAsync(Dev, [new BatchItem(alias.Name.ToString(), [1], null)], default);
        Assert.Equal(second.Name, batch[0].Value!.KeyVersion.Key);
    }

    [Fact]
    public async Task Alias_OntoAKeyScheduledForDeletionOrDestroyed_FailedPrecondition_NothingWritten()
    {
        var live = await _domain.CreateKeyAsync("live");
        var going = await _domain.CreateKeyAsync("going");
        var gone = await _domain.CreateKeyAsync("gone");
        var alias = await _domain.Aliases.CreateAliasAsync(Dev, Dev.Tenant, "payments", live.Name, null, default);
        await _domain.Keys.ScheduleKeyDeletionAsync(Dev, gone.Name, TimeSpan.FromDays(7), null, default);
        _domain.Time.Advance(TimeSpan.FromDays(8));
        Assert.Equal(1, await _domain.Keys.DestroyDueAsync(_domain.Time.GetUtcNow(), default));
        await _domain.Keys.ScheduleKeyDeletionAsync(Dev, going.Name, TimeSpan.FromDays(7), null, default);

        foreach (var (key, message) in new[]
        {
            (going.Name, "key tenants/dev/keys/going is DESTROY_SCHEDULED; an alias is not pointed at a key scheduled for deletion (cancel the deletion first, or name another key)"),
            (gone.Name, "key tenants/dev/keys/gone is DESTROYED; an alias cannot name a destroyed key"),
        })
        {
            var created = await Assert.ThrowsAsync<KmsException>(() => _domain.Aliases.CreateAliasAsync(Dev, Dev.Tenant, "late", key, "late-1", default));
            Assert.Equal((KmsErrorCode.FailedPrecondition, message), (created.Code, created.Message));
            var moved = await Assert.ThrowsAsync<KmsException>(() => _domain.Aliases.UpdateAliasAsync(Dev, alias.Name, key, default));
            Assert.Equal((KmsErrorCode.FailedPrecondition, message), (moved.Code, moved.Message));
        }

        Assert.Equal(KmsErrorCode.NotFound, (await Assert.ThrowsAsync<KmsException>(() => _domain.Aliases.GetAliasAsync(Dev, AliasName.Create(Dev.Tenant, "late"), default))).Code);
        Assert.Null(await _domain.Store.FindRequestAsync(Dev.Tenant, "late-1", default));
        Assert.Equal((live.Name, alias.UpdateTime), ((await _domain.Aliases.GetAliasAsync(Dev, alias.Name, default)).Key, (await _domain.Aliases.GetAliasAsync(Dev, alias.Name, default)).UpdateTime));

        // Once the deletion is cancelled the key (DISABLED) takes an alias again.
        await _domain.Keys.CancelKeyDeletionAsync(Dev, going.Name, null, default);
        Assert.Equal(going.Name, (await _domain.Aliases.CreateAliasAsync(Dev, Dev.Tenant, "late", going.Name, "late-2", default)).Key);
    }

    [Fact]
    public async Task Alias_NamingAKeyThenScheduledForDeletion_RefusesItsCalls_StillMovedAwayOrDeleted()
    {
        // An alias created before its key's deletion was scheduled keeps naming it: calls through
        // it are refused as the key's own are; the way out (move it, delete it) stays open.
        var going = await _domain.CreateKeyAsync("going");
        var next = await _domain.CreateKeyAsync("next");
        var payments = await _domain.Aliases.CreateAliasAsync(Dev, Dev.Tenant, "payments", going.Name, null, default);
        var old = await _domain.Aliases.CreateAliasAsync(Dev, Dev.Tenant, "old", going.Name, null, default);
        await _domain.Keys.ScheduleKeyDeletionAsync(Dev, going.Name, TimeSpan.FromDays(7), null, default);
        var viaAlias = KeyReference.Parse(payments.Name.ToString(), "name");

        var encrypt = await Assert.ThrowsAsync<KmsException>(() => _domain.Crypto.EncryptAsync(Dev, viaAlias, [1], EncryptionContext.Empty, default));
        Assert.Equal(KmsErrorCode.FailedPrecondition, encrypt.Code);
        Assert.Contains("DESTROY_SCHEDULED", encrypt.Message, StringComparison.Ordinal);
        Assert.Equal(KmsErrorCode.FailedPrecondition, (await Assert.ThrowsAsync<KmsException>(() => _domain.Crypto.GenerateDataKeyAsync(Dev, viaAlias, EncryptionContext.Empty, default))).Code);
        Assert.Equal(going.Name, (await _domain.Aliases.GetAliasAsync(Dev, payments.Name, default)).Key);

        Assert.Equal(next.Name, (await _domain.Aliases.UpdateAliasAsync(Dev, payments.Name, next.Name, default)).Key);
        Assert.Equal(next.Name, (await _domain.Crypto.EncryptAsync(Dev, viaAlias, [1], EncryptionContext.Empty, default)).KeyVersion.Key);
        await _domain.Aliases.DeleteAliasAsync(Dev, old.Name, null, default);
        Assert.Equal(KmsErrorCode.NotFound, (await Assert.ThrowsAsync<KmsException>(() => _domain.Aliases.GetAliasAsync(Dev, old.Name, default))).Code);
    }

    [Fact]
    public async Task Alias_Missing_NotFound_OtherTenant_NotFound_DeletedAlias_NotFound()
    {
        var key = await _domain.CreateKeyAsync("k");
        var missing = KeyReference.Parse("tenants/dev/aliases/nope", "name");
        Assert.Equal(KmsErrorCode.NotFound, (await Assert.ThrowsAsync<KmsException>(() => _domain.Crypto.EncryptAsync(Dev, missing, [1], EncryptionContext.Empty, default))).Code);

        var alias = await _domain.Aliases.CreateAliasAsync(Dev, Dev.Tenant, "a", key.Name, null, default);
        var fromAcme = await Assert.ThrowsAsync<KmsException>(() => _domain.Crypto.EncryptAsync(DomainHarness.Acme, KeyReference.Parse(alias.Name.ToString(), "n"), [1], EncryptionContext.Empty, default));
        Assert.Equal(KmsErrorCode.NotFound, fromAcme.Code);

        await _domain.Aliases.DeleteAliasAsync(Dev, alias.Name, null, default);
        Assert.Equal(KmsErrorCode.NotFound, (await Assert.ThrowsAsync<KmsException>(() => _domain.Aliases.GetAliasAsync(Dev, alias.Name, default))).Code);
        Assert.Equal(KmsErrorCode.NotFound, (await Assert.ThrowsAsync<KmsException>(() => _domain.Aliases.DeleteAliasAsync(Dev, alias.Name, null, default))).Code);
    }

    [Fact]
    public async Task Alias_ToMissingKey_NotFound_Duplicate_AlreadyExists_RequestIdReplays()
    {
        var key = await _domain.CreateKeyAsync("k");
        Assert.Equal(KmsErrorCode.NotFound, (await Assert.ThrowsAsync<KmsException>(() =>
            _domain.Aliases.CreateAliasAsync(Dev, Dev.Tenant, "a", KeyName.Parse("tenants/dev/keys/none", "n"), null, default))).Code);

        await _domain.Aliases.CreateAliasAsync(Dev, Dev.Tenant, "a", key.Name, "req", default);
        Assert.Equal("tenants/dev/aliases/a", (await _domain.Aliases.CreateAliasAsync(Dev, Dev.Tenant, "a", key.Name, "req", default)).Name.ToString());
        Assert.Equal(KmsErrorCode.AlreadyExists, (await Assert.ThrowsAsync<KmsException>(() => _domain.Aliases.CreateAliasAsync(Dev, Dev.Tenant, "a", key.Name, null, default))).Code);
    }

    [Fact]
    public async Task DeleteAlias_RetriedWithSameRequestId_Succeeds()
    {
        var key = await _domain.CreateKeyAsync("k");
        var alias = await _domain.Aliases.CreateAliasAsync(Dev, Dev.Tenant, "a", key.Name, null, default);
        await _domain.Aliases.DeleteAliasAsync(Dev, alias.Name, "delete-1", default);
        await _domain.Aliases.DeleteAliasAsync(Dev, alias.Name, "delete-1", default);
        Assert.Equal(KmsErrorCode.NotFound, (await Assert.ThrowsAsync<KmsException>(() => _domain.Aliases.DeleteAliasAsync(Dev, alias.Name, null, default))).Code);
    }

    [Fact]
    public async Task ListAliases_Pages()
    {
        var key = await _domain.CreateKeyAsync("k");
        foreach (var id in new[] { "c", "a", "b" })
        {
            await _domain.Aliases.CreateAliasAsync(Dev, Dev.Tenant, id, key.Name, null, default);
        }

        var first = await _domain.Aliases.ListAliasesAsync(Dev, Dev.Tenant, 2, null, default);
        var second = await _domain.Aliases.ListAliasesAsync(Dev, Dev.Tenant, 2, first.NextPageToken, default);
        Assert.Equal(["a", "b", "c"], first.Items.Concat(second.Items).Select(a => a.Name.AliasId));
        Assert.Null(second.NextPageToken);
    }

    [Fact]
    public async Task ReEncrypt_AcrossKeysAndContexts_PlaintextPreserved()
    {
        var source = await _domain.CreateKeyAsync("source");
        var destination = await _domain.CreateKeyAsync("destination");
        var blob = (await _domain.Crypto.EncryptAsync(Dev, source.Name, [9, 8, 7], Context("a", "1"), default)).Ciphertext;

        var moved = await _domain.Crypto.ReEncryptAsync(Dev, blob, Context("a", "1"), destination.Name, Context("b", "2"), default);
        Assert.Equal(source.Name.Version(1), moved.SourceKeyVersion);
        Assert.Equal(destination.Name.Version(1), moved.KeyVersion);

        using var decrypted = await _domain.Crypto.DecryptAsync(Dev, moved.Ciphertext, Context("b", "2"), default);
        Assert.Equal([9, 8, 7], decrypted.Plaintext.Span.ToArray());
        Assert.Equal(KmsErrorCode.DecryptionFailed, (await Assert.ThrowsAsync<KmsException>(() => _domain.Crypto.DecryptAsync(Dev, moved.Ciphertext, Context("a", "1"), default))).Code);
    }

    [Fact]
    public async Task ReEncrypt_WrongSourceContext_DecryptionFailed_MissingDestination_NotFound()
    {
        var key = await _domain.CreateKeyAsync("k");
        var blob = (await _domain.Crypto.EncryptAsync(Dev, key.Name, [1], Context("a", "1"), default)).Ciphertext;
        Assert.Equal(KmsErrorCode.DecryptionFailed, (await Assert.ThrowsAsync<KmsException>(() =>
            _domain.Crypto.ReEncryptAsync(Dev, blob, Context("a", "2"), key.Name, EncryptionContext.Empty, default))).Code);
        Assert.Equal(KmsErrorCode.NotFound, (await Assert.ThrowsAsync<KmsException>(() =>
            _domain.Crypto.ReEncryptAsync(Dev, blob, Context("a", "1"), KeyName.Parse("tenants/dev/keys/none", "n"), EncryptionContext.Empty, default))).Code);
    }

    [Fact]
    public async Task ReEncrypt_OntoTheSameKeyAfterRotation_MovesToThePrimary()
    {
        var key = await _domain.CreateKeyAsync("k");
        var blob = (await _domain.Crypto.EncryptAsync(Dev, key.Name, [5], EncryptionContext.Empty, default)).Ciphertext;
        await _domain.Keys.RotateKeyAsync(Dev, key.Name, null, default);
        var moved = await _domain.Crypto.ReEncryptAsync(Dev, blob, EncryptionContext.Empty, key.Name, EncryptionContext.Empty, default);
        Assert.Equal(1, moved.SourceKeyVersion.Version);
        Assert.Equal(2, moved.KeyVersion.Version);
    }

    [Fact]
    public async Task BatchEncrypt_MixedItems_EachSucceedsOrFailsOnItsOwn()
    {
        var key = await _domain.CreateKeyAsync("k");
        _domain.FakeHsm!.Calls.Clear();
        var results = await _domain.Crypto.BatchEncryptAsync(Dev,
        [
            new BatchItem(key.Name.ToString(), [1], null),
            new BatchItem("not a name", [1], null),
            new BatchItem("tenants/dev/keys/missing", [1], null),
            new BatchItem(key.Name.ToString(), [], null),
            new BatchItem(key.Name.ToString(), [2], new Dictionary<string, string> { [""] = "v" }),
            new BatchItem(key.Name.ToString(), [3], new Dictionary<string, string> { ["c"] = "v" }),
        ], default);

        Assert.NotNull(results[0].Value);
        Assert.Equal("requests[1].name", results[1].Error!.Field);
        Assert.Equal(KmsErrorCode.NotFound, results[2].Error!.Code);
        Assert.Equal("requests[3].plaintext", results[3].Error!.Field);
        Assert.Equal("requests[4].encryption_context", results[4].Error!.Field);
        Assert.Equal((1, 1, 2), (_domain.FakeHsm.Calls["random"], _domain.FakeHsm.Calls["encrypt-many"], _domain.FakeHsm.Calls["encrypt"]));
        using var first = await _domain.Crypto.DecryptAsync(Dev, results[0].Value!.Ciphertext, EncryptionContext.Empty, default);
        using var last = await _domain.Crypto.DecryptAsync(Dev, results[5].Value!.Ciphertext, Context("c", "v"), default);
        Assert.Equal([1], first.Plaintext.Span.ToArray());
        Assert.Equal([3], last.Plaintext.Span.ToArray());
        Assert.True(CiphertextBlob.TryParse(results[0].Value!.Ciphertext, out var a));
        Assert.True(CiphertextBlob.TryParse(results[5].Value!.Ciphertext, out var b));
        Assert.NotEqual(a!.Iv.ToArray(), b!.Iv.ToArray()); // each item its own slice of the one draw
    }

    [Fact]
    public async Task BatchEncrypt_EveryItemFailsItsChecks_NoHsmCall()
    {
        var key = await _domain.CreateKeyAsync("k");
        _domain.FakeHsm!.Calls.Clear();

        var results = await _domain.Crypto.BatchEncryptAsync(Dev, [new BatchItem("not a name", [1], null), new BatchItem(key.Name.ToString(), [], null)], default);

        Assert.All(results, result => Assert.NotNull(result.Error));
        Assert.Empty(_domain.FakeHsm.Calls); // not even the random draw for IVs
    }

    [Fact]
    public async Task BatchDecrypt_MixedItems_OpaqueFailuresPerItem()
    {
        var key = await _domain.CreateKeyAsync("k");
        var good = (await _domain.Crypto.EncryptAsync(Dev, key.Name, [4], EncryptionContext.Empty, default)).Ciphertext;
        var tampered = (byte[])good.Clone();
        tampered[^1] ^= 1;

        var results = await _domain.Crypto.BatchDecryptAsync(Dev,
            [new BatchItem(null, good, null), new BatchItem(null, tampered, null), new BatchItem(null, [], null), new BatchItem(null, good, null)], default);

        Assert.Equal([4], results[0].Value!.Plaintext.Span.ToArray());
        Assert.Equal(KmsErrorCode.DecryptionFailed, results[1].Error!.Code);
        Assert.Equal("requests[2].ciphertext", results[2].Error!.Field);
        Assert.Equal([4], results[3].Value!.Plaintext.Span.ToArray());
    }

    [Fact]
    public async Task BatchDecrypt_TwoKeysAndFailures_OneHsmCallPerKeyVersion_EachItemInItsPlace()
    {
        var first = await _domain.CreateKeyAsync("first");
        var second = await _domain.CreateKeyAsync("second");
        var context = new Dictionary<string, string> { ["table"] = "orders" };
        byte[] Seal(KeyName key, byte value, IReadOnlyDictionary<string, string>? itemContext) =>
            _domain.Crypto.EncryptAsync(Dev, key, [value], EncryptionContext.Create(itemContext), default).GetAwaiter().GetResult().Ciphertext;
        var tampered = Seal(second.Name, 9, null);
        tampered[^1] ^= 1;
        _domain.FakeHsm!.Calls.Clear();

        var results = await _domain.Crypto.BatchDecryptAsync(Dev,
        [
            new BatchItem(null, Seal(first.Name, 1, null), null),
            new BatchItem(null, Seal(second.Name, 2, context), context),
            new BatchItem(null, tampered, null),
            new BatchItem(null, Seal(first.Name, 4, context), null), // the wrong context: its tag fails
            new BatchItem(null, [0x00, 0x01], null),
            new BatchItem(null, Seal(second.Name, 6, null), null),
            new BatchItem(null, Seal(first.Name, 7, context), context),
        ], default);

        Assert.Equal(2, _domain.FakeHsm.Calls["decrypt-many"]);
        Assert.False(_domain.FakeHsm.Calls.ContainsKey("encrypt-many"));
        Assert.Equal(KmsErrorCode.DecryptionFailed, results[2].Error!.Code);
        Assert.Equal(KmsErrorCode.DecryptionFailed, results[3].Error!.Code);
        Assert.Equal(KmsErrorCode.DecryptionFailed, results[4].Error!.Code);
        foreach (var (index, key, value) in new[] { (0, first, 1), (1, second, 2), (5, second, 6), (6, first, 7) })
        {
            Assert.Equal(key.Name, results[index].Value!.KeyVersion.Key);
            Assert.Equal([(byte)value], results[index].Value!.Plaintext.Span.ToArray());
        }
    }

    [Fact]
    public async Task BatchDecrypt_HsmFailsForOneKeyVersion_ItsItemsCarryTheError_TheOtherKeysItemsDecrypt()
    {
        var (a, b) = await TwoKeysOneCiphertextEachAsync();
        Assert.True(CiphertextBlob.TryParse(b, out var secondBlob));
        _domain.FakeHsm!.DecryptManyFailure = id => id == secondBlob!.KeyVersionId ? KmsErrors.Unavailable("the HSM is not answering") : null;

        var results = await _domain.Crypto.BatchDecryptAsync(Dev, [new BatchItem(null, b, null), new BatchItem(null, a, null), new BatchItem(null, b, null)], default);

        Assert.Equal(KmsErrorCode.Unavailable, results[0].Error!.Code);
        Assert.Equal(KmsErrorCode.Unavailable, results[2].Error!.Code);
        Assert.Equal([1], results[1].Value!.Plaintext.Span.ToArray());
    }

    [Fact]
    public async Task BatchEncrypt_HsmAnswersOneShort_EveryItemOfThatCallAnInternalError_NoneMisplaced()
    {
        var key = await _domain.CreateKeyAsync("k");
        _domain.FakeHsm!.ManyAnswersOneShort = true;

        var results = await _domain.Crypto.BatchEncryptAsync(Dev, Enumerable.Range(0, 3).Select(i => new BatchItem(key.Name.ToString(), [(byte)i], null)).ToList(), default);

        Assert.All(results, result => Assert.Equal(KmsErrorCode.Internal, result.Error!.Code));
    }

    [Fact]
    public async Task BatchDecrypt_HsmAnswersOneShort_EachItemAnInternalError_TheBatchStillAnswers()
    {
        var (a, b) = await TwoKeysOneCiphertextEachAsync();
        _domain.FakeHsm!.ManyAnswersOneShort = true;

        // The first key's call has one item (answered with none), the second's two (answered with one).
        var results = await _domain.Crypto.BatchDecryptAsync(Dev, [new BatchItem(null, b, null), new BatchItem(null, a, null), new BatchItem(null, b, null)], default);

        Assert.All(results, result => Assert.Equal(KmsErrorCode.Internal, result.Error!.Code));
    }

    // A plaintext [1] under a key "first" and [2] under a key "second".
    private async Task<(byte[] First, byte[] Second)> TwoKeysOneCiphertextEachAsync()
    {
        var first = await _domain.CreateKeyAsync("first");
        var second = await _domain.CreateKeyAsync("second");
        return ((await _domain.Crypto.EncryptAsync(Dev, first.Name, [1], EncryptionContext.Empty, default)).Ciphertext,
            (await _domain.Crypto.EncryptAsync(Dev, second.Name, [2], EncryptionContext.Empty, default)).Ciphertext);
    }

    [Fact]
    public async Task BatchDecrypt_250ItemsUnderOneKey_InChunksOf100()
    {
        var key = await _domain.CreateKeyAsync("k");
        var sealedItems = await _domain.Crypto.BatchEncryptAsync(Dev, Enumerable.Range(0, 250).Select(i => new BatchItem(key.Name.ToString(), [(byte)i], null)).ToList(), default);
        _domain.FakeHsm!.Calls.Clear();

        var results = await _domain.Crypto.BatchDecryptAsync(Dev, sealedItems.Select(r => new BatchItem(null, r.Value!.Ciphertext, null)).ToList(), default);

        Assert.Equal((3, 250), (_domain.FakeHsm.Calls["decrypt-many"], _domain.FakeHsm.Calls["decrypt"]));
        Assert.Equal(Enumerable.Range(0, 250).Select(i => (byte)i), results.Select(r => r.Value!.Plaintext.Span[0]));
    }

    [Fact]
    public async Task BatchGenerateDataKey_OneRandomDrawForTheBatch_AllDecrypt()
    {
        var key = await _domain.CreateKeyAsync("k");
        _domain.FakeHsm!.Calls.Clear();
        var results = await _domain.Crypto.BatchGenerateDataKeyAsync(Dev, Enumerable.Range(0, 100).Select(_ => new BatchItem(key.Name.ToString(), null, null)).ToList(), default);

        Assert.Equal(1, _domain.FakeHsm.Calls["random"]);
        Assert.Equal(1, _domain.FakeHsm.Calls["encrypt-many"]);
        Assert.Equal(100, _domain.FakeHsm.Calls["encrypt"]);
        Assert.Equal(100, results.Select(r => Convert.ToHexString(r.Value!.Plaintext.Span)).Distinct().Count());
        using var decrypted = await _domain.Crypto.DecryptAsync(Dev, results[42].Value!.Ciphertext, EncryptionContext.Empty, default);
        Assert.Equal(results[42].Value!.Plaintext.Span.ToArray(), decrypted.Plaintext.Span.ToArray());
    }

    // A single GenerateDataKey draws from the HSM of the key's residency region; so does a batch,
    // one draw per region, never from the home HSM for a key that lives elsewhere.
    [Fact]
    public async Task BatchGenerateDataKey_KeyOfRegionB_DrawsFromBsHsm_NotHome()
    {
        var b = RegionHsm("b");
        var key = await CreateResidentKeyAsync("in-b", "b");
        ClearCalls();

        var results = await _domain.Crypto.BatchGenerateDataKeyAsync(Dev, Enumerable.Range(0, 5).Select(_ => new BatchItem(key.Name.ToString(), null, null)).ToList(), default);

        Assert.Equal((1, 1), (b.Calls.GetValueOrDefault("random"), b.Calls.GetValueOrDefault("encrypt-many")));
        Assert.Empty(_domain.FakeHsm!.Calls);
        using var decrypted = await _domain.Crypto.DecryptAsync(Dev, results[3].Value!.Ciphertext, EncryptionContext.Empty, default);
        Assert.Equal(results[3].Value!.Plaintext.Span.ToArray(), decrypted.Plaintext.Span.ToArray());
    }

    [Fact]
    public async Task BatchGenerateDataKey_KeysOfThreeRegions_OneDrawFromEachRegionsHsm_EachItemInItsPlace()
    {
        var (b, c) = (RegionHsm("b"), RegionHsm("c"));
        var (home, inB, inC) = (await _domain.CreateKeyAsync("home"), await CreateResidentKeyAsync("in-b", "b"), await CreateResidentKeyAsync("in-c", "c"));
        var keys = new[] { inB, home, inC, inB, home, inC, inC };
        ClearCalls();

        var results = await _domain.Crypto.BatchGenerateDataKeyAsync(Dev, keys.Select(k => new BatchItem(k.Name.ToString(), null, null)).ToList(), default);

        Assert.Equal((1, 1, 1), (_domain.FakeHsm!.Calls.GetValueOrDefault("random"), b.Calls.GetValueOrDefault("random"), c.Calls.GetValueOrDefault("random")));
        for (var i = 0; i < keys.Length; i++)
        {
            Assert.Equal(keys[i].Name, results[i].Value!.KeyVersion.Key);
            using var decrypted = await _domain.Crypto.DecryptAsync(Dev, results[i].Value!.Ciphertext, EncryptionContext.Empty, default);
            Assert.Equal(results[i].Value!.Plaintext.Span.ToArray(), decrypted.Plaintext.Span.ToArray());
        }

        Assert.Equal(keys.Length, results.Select(r => Convert.ToHexString(r.Value!.Plaintext.Span)).Distinct().Count());
    }

    // The IVs of BatchEncrypt and BatchReEncrypt come from the sealing key's region as well.
    [Fact]
    public async Task BatchEncryptAndReEncrypt_IvsDrawnFromTheRegionOfTheKeyTheySealUnder()
    {
        var (b, c) = (RegionHsm("b"), RegionHsm("c"));
        var (home, inB, inC) = (await _domain.CreateKeyAsync("home"), await CreateResidentKeyAsync("in-b", "b"), await CreateResidentKeyAsync("in-c", "c"));
        ClearCalls();

        var encrypted = await _domain.Crypto.BatchEncryptAsync(Dev, [new BatchItem(inB.Name.ToString(), [1], null), new BatchItem(inC.Name.ToString(), [2], null), new BatchItem(inB.Name.ToString(), [3], null)], default);

        Assert.Equal((0, 1, 1), (_domain.FakeHsm!.Calls.GetValueOrDefault("random"), b.Calls.GetValueOrDefault("random"), c.Calls.GetValueOrDefault("random")));
        ClearCalls();

        // Opened in B and C, sealed under the home key: the IVs are home's.
        var reEncrypted = await _domain.Crypto.BatchReEncryptAsync(Dev, encrypted.Select(r => new BatchReEncryptItem(r.Value!.Ciphertext, null, home.Name.ToString(), null)).ToList(), default);

        Assert.Equal((1, 0, 0), (_domain.FakeHsm.Calls.GetValueOrDefault("random"), b.Calls.GetValueOrDefault("random"), c.Calls.GetValueOrDefault("random")));
        var opened = await _domain.Crypto.BatchDecryptAsync(Dev, reEncrypted.Select(r => new BatchItem(null, r.Value!.Ciphertext, null)).ToList(), default);
        Assert.Equal(new byte[] { 1, 2, 3 }, opened.Select(r => r.Value!.Plaintext.Span[0]));
    }

    // A region whose HSM fails its draw fails its own items only, as a failed sealing call does:
    // the items of the other regions are served.
    [Fact]
    public async Task Batches_ARegionsHsmFailsItsDraw_OnlyThatRegionsItemsFail()
    {
        var b = RegionHsm("b");
        var (home, inB) = (await _domain.CreateKeyAsync("home"), await CreateResidentKeyAsync("in-b", "b"));
        b.RandomFailure = KmsErrors.Unavailable("region b's HSM is down");

        var keys = await _domain.Crypto.BatchGenerateDataKeyAsync(Dev, [new BatchItem(home.Name.ToString(), null, null), new BatchItem(inB.Name.ToString(), null, null), new BatchItem(home.Name.ToString(), null, null)], default);
        var encrypted = await _domain.Crypto.BatchEncryptAsync(Dev, [new BatchItem(inB.Name.ToString(), [1], null), new BatchItem(home.Name.ToString(), [2], null)], default);

        Assert.Equal((KmsErrorCode.Unavailable, KmsErrorCode.Unavailable), (keys[1].Error?.Code, encrypted[0].Error?.Code));
        using var decrypted = await _domain.Crypto.DecryptAsync(Dev, keys[2].Value!.Ciphertext, EncryptionContext.Empty, default);
        Assert.Equal(keys[2].Value!.Plaintext.Span.ToArray(), decrypted.Plaintext.Span.ToArray());
        using var opened = await _domain.Crypto.DecryptAsync(Dev, encrypted[1].Value!.Ciphertext, EncryptionContext.Empty, default);
        Assert.Equal(new byte[] { 2 }, opened.Plaintext.Span.ToArray());
        Assert.NotNull(keys[0].Value);
    }

    // A node outside a key's region refuses it before the usage bound is consulted: the version's
    // GCM encryption count is one budget for every node (reserved in the database in blocks),
    // and a call the node refuses must not spend it.
    [Fact]
    public async Task ResidentKey_NodeOutsideItsRegion_RefusesEveryEncryption_VersionsUsageUntouched()
    {
        RegionHsm("b");
        var (home, inB) = (await _domain.CreateKeyAsync("home"), await CreateResidentKeyAsync("in-b", "b"));
        var homeBlob = (await _domain.Crypto.EncryptAsync(Dev, home.Name, [1], EncryptionContext.Empty, default)).Ciphertext;

        // The same database, served by a node that holds no domain key of region b.
        _domain.FakeHsm!.RegionHsms.Remove("b");
        List<KmsException> refusals =
        [
            await Assert.ThrowsAsync<KmsException>(() => _domain.Crypto.EncryptAsync(Dev, inB.Name, [1], EncryptionContext.Empty, default)),
            await Assert.ThrowsAsync<KmsException>(() => _domain.Crypto.GenerateDataKeyAsync(Dev, inB.Name, EncryptionContext.Empty, default)),
            await Assert.ThrowsAsync<KmsException>(() => _domain.Crypto.ReEncryptAsync(Dev, homeBlob, EncryptionContext.Empty, inB.Name, EncryptionContext.Empty, default)),
            (await _domain.Crypto.BatchEncryptAsync(Dev, [new BatchItem(inB.Name.ToString(), [1], null)], default))[0].Error!,
            (await _domain.Crypto.BatchGenerateDataKeyAsync(Dev, [new BatchItem(inB.Name.ToString(), null, null)], default))[0].Error!,
        ];

        Assert.All(refusals, e => Assert.Equal((KmsErrorCode.FailedPrecondition, "b"), (e.Code, e.ResidencyRegion)));
        var version = (await _domain.Store.GetVersionAsync(inB.Primary.Name, default))!;
        Assert.Equal(0, version.Usage.EncryptCount); // nothing reserved from the shared count
        Assert.Equal(0, _domain.Usage.Observe(version).EncryptCount);
    }

    [Fact]
    public async Task BatchGenerateDataKey_EveryItemFailsItsChecks_NoHsmCall()
    {
        var key = await _domain.CreateKeyAsync("k");
        _domain.FakeHsm!.Calls.Clear();

        var results = await _domain.Crypto.BatchGenerateDataKeyAsync(Dev,
            [new BatchItem("not a name", null, null), new BatchItem(key.Name.ToString(), null, new Dictionary<string, string> { [""] = "x" })], default);

        Assert.Equal(KmsErrorCode.InvalidArgument, results[0].Error!.Code);
        Assert.Equal("requests[1].encryption_context", results[1].Error!.Field);
        Assert.Empty(_domain.FakeHsm.Calls); // not even the random draw for data keys and IVs
    }

    [Fact]
    public async Task BatchGenerateDataKey_250ItemsUnderOneKey_SealedInChunksOf100()
    {
        var key = await _domain.CreateKeyAsync("k");
        _domain.FakeHsm!.Calls.Clear();
        var results = await _domain.Crypto.BatchGenerateDataKeyAsync(Dev, Enumerable.Range(0, 250).Select(_ => new BatchItem(key.Name.ToString(), null, null)).ToList(), default);

        Assert.Equal((3, 250), (_domain.FakeHsm.Calls["encrypt-many"], _domain.FakeHsm.Calls["encrypt"]));
        using var decrypted = await _domain.Crypto.DecryptAsync(Dev, results[249].Value!.Ciphertext, EncryptionContext.Empty, default);
        Assert.Equal(results[249].Value!.Plaintext.Span.ToArray(), decrypted.Plaintext.Span.ToArray());
    }

    [Fact]
    public async Task BatchGenerateDataKey_TwoKeysAndFailures_OneHsmCallPerKey_EachItemInItsPlace()
    {
        var first = await _domain.CreateKeyAsync("first");
        var second = await _domain.CreateKeyAsync("second");
        var context = new Dictionary<string, string> { ["table"] = "orders" };
        _domain.FakeHsm!.Calls.Clear();
        var results = await _domain.Crypto.BatchGenerateDataKeyAsync(Dev,
        [
            new BatchItem(first.Name.ToString(), null, null),
            new BatchItem(second.Name.ToString(), null, context),
            new BatchItem("tenants/dev/keys/missing", null, null),
            new BatchItem(first.Name.ToString(), null, context),
            new BatchItem(second.Name.ToString(), null, new Dictionary<string, string> { [""] = "x" }),
            new BatchItem(second.Name.ToString(), null, null),
        ], default);

        Assert.Equal(2, _domain.FakeHsm.Calls["encrypt-many"]);
        Assert.Equal(KmsErrorCode.NotFound, results[2].Error!.Code);
        Assert.Equal("requests[4].encryption_context", results[4].Error!.Field);
        foreach (var (index, key, itemContext) in new[] { (0, first, (IReadOnlyDictionary<string, string>?)null), (1, second, context), (3, first, context), (5, second, null) })
        {
            var dataKey = results[index].Value!;
            Assert.Equal(key.Name, dataKey.KeyVersion.Key);
            using var decrypted = await _domain.Crypto.DecryptAsync(Dev, dataKey.Ciphertext, EncryptionContext.Create(itemContext), default);
            Assert.Equal(dataKey.Plaintext.Span.ToArray(), decrypted.Plaintext.Span.ToArray());
        }
    }

    [Fact]
    public async Task BatchReEncrypt_MixedItems()
    {
        var key = await _domain.CreateKeyAsync("k");
        var blob = (await _domain.Crypto.EncryptAsync(Dev, key.Name, [1], EncryptionContext.Empty, default)).Ciphertext;
        var results = await _domain.Crypto.BatchReEncryptAsync(Dev,
        [
            new BatchReEncryptItem(blob, null, key.Name.ToString(), null),
            new BatchReEncryptItem(blob, null, "tenants/dev/keys/missing", null),
            new BatchReEncryptItem([1, 2, 3], null, key.Name.ToString(), null),
        ], default);

        Assert.NotNull(results[0].Value);
        Assert.Equal(KmsErrorCode.NotFound, results[1].Error!.Code);
        Assert.Equal(KmsErrorCode.DecryptionFailed, results[2].Error!.Code);
    }

    [Fact]
    public async Task BatchReEncrypt_TwoSourceKeysToTwoDestinations_OpenedAndSealedPerKeyVersion_OneRandomDraw_EachItemInItsPlace()
    {
        var (a, b, c, d) = (await _domain.CreateKeyAsync("a"), await _domain.CreateKeyAsync("b"), await _domain.CreateKeyAsync("c"), await _domain.CreateKeyAsync("d"));
        var source = new Dictionary<string, string> { ["table"] = "old" };
        var destination = new Dictionary<string, string> { ["table"] = "new" };
        byte[] Seal(KeyName key, byte value) =>
            _domain.Crypto.EncryptAsync(Dev, key, [value], EncryptionContext.Create(source), default).GetAwaiter().GetResult().Ciphertext;
        var tampered = Seal(b.Name, 9);
        tampered[^1] ^= 1;
        BatchReEncryptItem[] items =
        [
            new BatchReEncryptItem(Seal(a.Name, 1), source, c.Name.ToString(), destination),
            new BatchReEncryptItem(Seal(b.Name, 2), source, d.Name.ToString(), null),
            new BatchReEncryptItem(tampered, source, c.Name.ToString(), destination),
            new BatchReEncryptItem(Seal(a.Name, 4), null, c.Name.ToString(), destination), // the wrong source context
            new BatchReEncryptItem(Seal(b.Name, 5), source, "tenants/dev/keys/missing", null),
            new BatchReEncryptItem(Seal(b.Name, 6), source, c.Name.ToString(), destination),
        ];
        _domain.FakeHsm!.Calls.Clear();

        var results = await _domain.Crypto.BatchReEncryptAsync(Dev, items, default);

        // Opened per source key (a, b), sealed per destination key (c, d), IVs from one draw.
        Assert.Equal((2, 2, 1), (_domain.FakeHsm.Calls["decrypt-many"], _domain.FakeHsm.Calls["encrypt-many"], _domain.FakeHsm.Calls["random"]));
        Assert.Equal(KmsErrorCode.DecryptionFailed, results[2].Error!.Code);
        Assert.Equal(KmsErrorCode.DecryptionFailed, results[3].Error!.Code);
        Assert.Equal(KmsErrorCode.NotFound, results[4].Error!.Code);
        var ivs = new HashSet<string>();
        foreach (var (index, from, to, value, context) in new[] { (0, a, c, 1, destination), (1, b, d, 2, null), (5, b, c, 6, destination) })
        {
            var reEncrypted = results[index].Value!;
            Assert.Equal((from.Name, to.Name), (reEncrypted.SourceKeyVersion.Key, reEncrypted.KeyVersion.Key));
            using var decrypted = await _domain.Crypto.DecryptAsync(Dev, reEncrypted.Ciphertext, EncryptionContext.Create(context), default);
            Assert.Equal([(byte)value], decrypted.Plaintext.Span.ToArray());
            Assert.True(CiphertextBlob.TryParse(reEncrypted.Ciphertext, out var blob));
            Assert.True(ivs.Add(Convert.ToHexString(blob!.Iv)));
        }
    }

    [Fact]
    public async Task Batch_OverItemLimit_InvalidArgumentForTheWholeCall()
    {
        var key = await _domain.CreateKeyAsync("k");
        var items = Enumerable.Range(0, Limits.MaxBatchItems + 1).Select(_ => new BatchItem(key.Name.ToString(), [1], null)).ToList();
        Assert.Equal("requests", (await Assert.ThrowsAsync<KmsException>(() => _domain.Crypto.BatchEncryptAsync(Dev, items, default))).Field);
        Assert.Equal("requests", (await Assert.ThrowsAsync<KmsException>(() => _domain.Crypto.BatchEncryptAsync(Dev, [], default))).Field);
    }

    [Fact]
    public async Task Batch_OverByteLimit_InvalidArgumentForTheWholeCall()
    {
        var key = await _domain.CreateKeyAsync("k");
        var items = Enumerable.Range(0, 65).Select(_ => new BatchItem(key.Name.ToString(), new byte[64 * 1024], null)).ToList();
        var e = await Assert.ThrowsAsync<KmsException>(() => _domain.Crypto.BatchEncryptAsync(Dev, items, default));
        Assert.Contains("at most 4194304 bytes", e.Message, StringComparison.Ordinal);
    }

    private static EncryptionContext Context(string key, string value) => EncryptionContext.Create(new Dictionary<string, string> { [key] = value });

    private FakeHsm RegionHsm(string region)
    {
        var regional = new FakeHsm();
        _domain.FakeHsm!.RegionHsms.Add(region, regional);
        return regional;
    }

    private void ClearCalls()
    {
        _domain.FakeHsm!.Calls.Clear();
        foreach (var regional in _domain.FakeHsm.RegionHsms.Values)
        {
            regional.Calls.Clear();
        }
    }

    private async Task<Key> CreateResidentKeyAsync(string keyId, string region) =>
        (await _domain.Keys.CreateKeyAsync(Dev, new CreateKeyCommand(Dev.Tenant, keyId, KeyPurpose.EncryptDecrypt, KeyLabels.Empty, null) { Residency = region }, default)).Key;
}
