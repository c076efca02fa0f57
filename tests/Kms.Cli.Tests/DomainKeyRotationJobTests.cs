using System.Security.Cryptography;
using System.Text;
using Kms.Cli.Ceremony;
using Kms.Core.Audit;
using Kms.Core.Crypto;
using Kms.Core.Errors;
using Kms.Core.Keys;
using Kms.Core.Names;
using Kms.Hsm;
using Kms.Storage.Sqlite;
using Kms.Testing;
using Microsoft.Extensions.Logging.Abstractions;

namespace Kms.Cli.Tests;

[CollectionDefinition(Name, DisableParallelization = true)]
public sealed class TokenWipeGroup
{
    // C_InitToken on a token of the in-process module can disturb a concurrent slot enumeration
    // (CKR_GENERAL_ERROR from C_GetTokenInfo, seen in Kms.Hsm.Tests): run alone.
    public const string Name = "token wipe";
}

/// <summary>
/// The database half of a domain-key rotation against SoftHSM: a deployment made under the old
/// domain key (keys, ciphertexts, audit keys) is rotated, with a simulated crash half-way, and
/// afterwards a token holding only the new domain key serves all of it while the old one is refused.
/// </summary>
[Collection(TokenWipeGroup.Name)]
public sealed class DomainKeyRotationJobTests
{
    private static readonly TenantId Tenant = TenantId.Parse("dev");

    [Fact]
    public async Task RunAsync_StoppedAfterThreeThenRerun_EverythingServesUnderTheNewKeyOnly()
    {
        var oldKey = RandomNumberGenerator.GetBytes(32);
        var newKey = RandomNumberGenerator.GetBytes(32);
        var production = TokenWithDomainKey(oldKey);
        var dataDir = Directory.CreateTempSubdirectory("kms-rotation-").FullName;
        byte[] auditPublicKey;
        await using (var record = await DeploymentRecord.OpenAsync(dataDir, production.Options(devMode: false), Encoding.UTF8.GetBytes(production.UserPin), default))
        {
            auditPublicKey = record.AuditPublicKey;
            await record.AppendAsync("before", "test", "before rotation", default);
        }

        var sealedRecords = new List<(KeyVersionId Id, byte[] Iv, byte[] Ciphertext)>();
        await using (var store = await OpenStoreAsync(dataDir))
        await using (var hsm = Pkcs11Hsm.Open(production.Options(devMode: false), NullLogger.Instance))
        {
            for (var i = 0; i < 5; i++)
            {
                var material = await hsm.GenerateAes256KeyAsync(default);
                var key = NewKey($"key-{i}");
                await store.CreateKeyAsync(key, material, null, default);
                var iv = await hsm.GenerateRandomAsync(12, default);
                var ciphertext = await hsm.EncryptAesGcmAsync(new(key.Primary.Id, material), iv, [], Encoding.UTF8.GetBytes($"record {i}"), default);
                sealedRecords.Add((key.Primary.Id, iv, ciphertext));
            }
        }

        var rotation = SoftHsm.CreateToken();
        using (var session = HsmCeremonySession.Open(rotation.Options(devMode: false), Encoding.UTF8.GetBytes(rotation.UserPin)))
        using (var rewrapper = session.LoadRotationKeys(oldKey, newKey))
        {
            await using (var store = await OpenStoreAsync(dataDir))
            {
                var first = await DomainKeyRotationJob.RunAsync(store, rewrapper, TimeProvider.System, stopAfter: 3, default);
                Assert.Equal(new DomainKeyRotationOutcome(3, 0, Completed: false), first);
            }

            // Half-rotated: nothing serves it, not even the old key's token.
            var refused = await Assert.ThrowsAsync<KmsException>(() => DeploymentRecord.OpenAsync(dataDir, production.Options(devMode: false), Encoding.UTF8.GetBytes(production.UserPin), default));
            Assert.Contains("rotation is in progress", refused.Message, StringComparison.Ordinal);

            await using (var store = await OpenStoreAsync(dataDir))
            {
                // 5 key versions + the audit context and signing keys = 7; 3 were done before the "crash".
                var second = await DomainKeyRotationJob.RunAsync(store, rewrapper, TimeProvider.System, stopAfter: null, default);
                Assert.Equal(new DomainKeyRotationOutcome(4, 3, Completed: true), second);
                Assert.Null(await store.GetDomainKeyRotationAsync(default));

                // Done is done: a third run finds the database pinned to the new key.
                var again = await Assert.ThrowsAsync<KmsException>(() => DomainKeyRotationJob.RunAsync(store, rewrapper, TimeProvider.System, null, default));
                Assert.Contains("pinned to domain key " + HsmCeremonySession.AesCheckValue(newKey), again.Message, StringComparison.Ordinal);
            }
        }

        HsmTokenSetup.WipeToken(SoftHsm.ModulePath, rotation.Label, rotation.SoPin, SoftHsm.ModuleEnvironment);

        // The old domain key (what the old shares rebuild) is refused by the database's pin.
        var old = await Assert.ThrowsAsync<KmsException>(() => DeploymentRecord.OpenAsync(dataDir, production.Options(devMode: false), Encoding.UTF8.GetBytes(production.UserPin), default));
        Assert.Contains("check value " + HsmCeremonySession.AesCheckValue(newKey), old.Message, StringComparison.Ordinal);

        // A token holding only the new key: the audit keys still work (same published public key) …
        var restored = TokenWithDomainKey(newKey);
        await using (var record = await DeploymentRecord.OpenAsync(dataDir, restored.Options(devMode: false), Encoding.UTF8.GetBytes(restored.UserPin), default))
        {
            Assert.Equal(auditPublicKey, record.AuditPublicKey);
            await record.AppendAsync("after", "test", "after rotation", default);
            var signature = await record.SignAsync("test statement", "rotated"u8.ToArray(), default);
            Assert.True(SignedStatement.Verify(auditPublicKey, "test statement", "rotated"u8, signature));
        }

        // … and every ciphertext made under the old key decrypts.
        await using (var store = await OpenStoreAsync(dataDir))
        await using (var hsm = Pkcs11Hsm.Open(restored.Options(devMode: false), NullLogger.Instance))
        {
            for (var i = 0; i < sealedRecords.Count; i++)
            {
                var (id, iv, ciphertext) = sealedRecords[i];
                var found = await store.FindVersionMaterialAsync(Tenant, id, default);
                var plaintext = await hsm.DecryptAesGcmAsync(new(id, found!.Material!), iv, [], ciphertext, default);
                Assert.Equal($"record {i}", Encoding.UTF8.GetString(plaintext));
            }
        }
    }

    [Fact]
    public async Task RunAsync_WhileAServerHoldsTheSqliteDatabase_Refused_AndNoServerStartsWhileItRuns()
    {
        var (oldKey, _, dataDir) = await NewDeploymentAsync();

        var rotation = SoftHsm.CreateToken();
        using (var session = HsmCeremonySession.Open(rotation.Options(devMode: false), Encoding.UTF8.GetBytes(rotation.UserPin)))
        using (var rewrapper = session.LoadRotationKeys(oldKey, RandomNumberGenerator.GetBytes(32)))
        {
            // A server serving the file (it holds the serving lock shared): refused, nothing recorded.
            await using (var serving = await OpenStoreAsync(dataDir))
            {
                Assert.True(await serving.TryHoldServingLockAsync(default));
                await using var ceremony = await OpenStoreAsync(dataDir);
                var e = await Assert.ThrowsAsync<KmsException>(() => DomainKeyRotationJob.RunAsync(ceremony, rewrapper, TimeProvider.System, null, default));
                Assert.Equal(KmsErrorCode.FailedPrecondition, e.Code);
                Assert.Contains("a server is serving this sqlite database", e.Message, StringComparison.Ordinal);
                Assert.Null(await ceremony.GetDomainKeyRotationAsync(default));
            }

            // The rotation running (stopped half-way, its store still open): no server can take the lock.
            await using (var ceremony = await OpenStoreAsync(dataDir))
            {
                var first = await DomainKeyRotationJob.RunAsync(ceremony, rewrapper, TimeProvider.System, stopAfter: 1, default);
                Assert.False(first.Completed);
                await using var server = await OpenStoreAsync(dataDir);
                Assert.False(await server.TryHoldServingLockAsync(default));
            }
        }

        HsmTokenSetup.WipeToken(SoftHsm.ModulePath, rotation.Label, rotation.SoPin, SoftHsm.ModuleEnvironment);
    }

    [Fact]
    public async Task RunAsync_AVersionWrittenBetweenRunsUnderTheOldKey_NewKeyNotPinned()
    {
        // Version names are random: one written meanwhile (by anything that ignored the lock)
        // sorts before the high-water mark as easily as after it. Here the mark is past every
        // key_version: name, so only a count of everything can see the new one.
        var (oldKey, production, dataDir) = await NewDeploymentAsync();

        await using (var store = await OpenStoreAsync(dataDir))
        await using (var hsm = Pkcs11Hsm.Open(production.Options(devMode: false), NullLogger.Instance))
        {
            for (var i = 0; i < 3; i++)
            {
                await store.CreateKeyAsync(NewKey($"key-{i}"), await hsm.GenerateAes256KeyAsync(default), null, default);
            }
        }

        var rotation = SoftHsm.CreateToken();
        using (var session = HsmCeremonySession.Open(rotation.Options(devMode: false), Encoding.UTF8.GetBytes(rotation.UserPin)))
        using (var rewrapper = session.LoadRotationKeys(oldKey, RandomNumberGenerator.GetBytes(32)))
        {
            await using (var store = await OpenStoreAsync(dataDir))
            {
                // 3 versions + the audit context key; the signing key (last in order) is left.
                var first = await DomainKeyRotationJob.RunAsync(store, rewrapper, TimeProvider.System, stopAfter: 4, default);
                Assert.False(first.Completed);
                Assert.StartsWith("setting:", (await store.GetDomainKeyRotationAsync(default))!.LastItem, StringComparison.Ordinal);
            }

            await using (var store = await OpenStoreAsync(dataDir))
            await using (var hsm = Pkcs11Hsm.Open(production.Options(devMode: false), NullLogger.Instance))
            {
                await store.CreateKeyAsync(NewKey("late"), await hsm.GenerateAes256KeyAsync(default), null, default);
            }

            await using (var store = await OpenStoreAsync(dataDir))
            {
                var e = await Assert.ThrowsAsync<KmsException>(() => DomainKeyRotationJob.RunAsync(store, rewrapper, TimeProvider.System, null, default));
                Assert.Contains("holds 6 wrapped items, but the rotation moved 5", e.Message, StringComparison.Ordinal);
                Assert.NotNull(await store.GetDomainKeyRotationAsync(default)); // not pinned: nothing serves it
            }
        }

        HsmTokenSetup.WipeToken(SoftHsm.ModulePath, rotation.Label, rotation.SoPin, SoftHsm.ModuleEnvironment);
    }

    [Fact]
    public async Task BeginRotation_ToAnotherKey_ReplacesOnlyOneThatMovedNothing()
    {
        // A first run records its new key before writing the shares; a crash in between leaves a
        // rotation nobody can resume, which a new first run replaces — until a blob has moved.
        var (oldKey, _, dataDir) = await NewDeploymentAsync();

        var pinned = HsmCeremonySession.AesCheckValue(oldKey);
        var newKey = RandomNumberGenerator.GetBytes(32);
        await using var store = await OpenStoreAsync(dataDir);
        await store.BeginDomainKeyRotationAsync(pinned, "AAAAAA", DateTimeOffset.UtcNow, default);
        await Assert.ThrowsAsync<KmsException>(() => store.BeginDomainKeyRotationAsync(pinned, HsmCeremonySession.AesCheckValue(newKey), DateTimeOffset.UtcNow, default));
        await store.BeginDomainKeyRotationAsync(pinned, HsmCeremonySession.AesCheckValue(newKey), DateTimeOffset.UtcNow, default, replaceUnstarted: true);
        Assert.Equal(HsmCeremonySession.AesCheckValue(newKey), (await store.GetDomainKeyRotationAsync(default))!.NewCheckValue);

        var rotation = SoftHsm.CreateToken();
        using (var session = HsmCeremonySession.Open(rotation.Options(devMode: false), Encoding.UTF8.GetBytes(rotation.UserPin)))
        using (var rewrapper = session.LoadRotationKeys(oldKey, newKey))
        {
            Assert.False((await DomainKeyRotationJob.RunAsync(store, rewrapper, TimeProvider.System, stopAfter: 1, default)).Completed);
        }

        HsmTokenSetup.WipeToken(SoftHsm.ModulePath, rotation.Label, rotation.SoPin, SoftHsm.ModuleEnvironment);
        var moved = await Assert.ThrowsAsync<KmsException>(() => store.BeginDomainKeyRotationAsync(pinned, "BBBBBB", DateTimeOffset.UtcNow, default, replaceUnstarted: true));
        Assert.Contains("is in progress; resume it", moved.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task RunAsync_RotationTokenHoldsOtherOldKey_RefusedBeforeAnyRowChanges()
    {
        var (oldKey, _, dataDir) = await NewDeploymentAsync();

        var rotation = SoftHsm.CreateToken();
        using var session = HsmCeremonySession.Open(rotation.Options(devMode: false), Encoding.UTF8.GetBytes(rotation.UserPin));
        using var rewrapper = session.LoadRotationKeys(RandomNumberGenerator.GetBytes(32), RandomNumberGenerator.GetBytes(32));
        await using var store = await OpenStoreAsync(dataDir);
        var e = await Assert.ThrowsAsync<KmsException>(() => DomainKeyRotationJob.RunAsync(store, rewrapper, TimeProvider.System, null, default));
        Assert.Contains("pinned to domain key " + HsmCeremonySession.AesCheckValue(oldKey), e.Message, StringComparison.Ordinal);
        Assert.Null(await store.GetDomainKeyRotationAsync(default));
    }

    // A deployment under a random domain key: its token, and a data directory whose database
    // holds the audit keys (and nothing else yet).
    private static async Task<(byte[] OldKey, TestToken Production, string DataDir)> NewDeploymentAsync()
    {
        var oldKey = RandomNumberGenerator.GetBytes(32);
        var production = TokenWithDomainKey(oldKey);
        var dataDir = Directory.CreateTempSubdirectory("kms-rotation-").FullName;
        await using (await DeploymentRecord.OpenAsync(dataDir, production.Options(devMode: false), Encoding.UTF8.GetBytes(production.UserPin), default))
        {
        }

        return (oldKey, production, dataDir);
    }

    private static Task<SqliteStore> OpenStoreAsync(string dataDir) =>
        SqliteStore.OpenAsync(new SqliteOptions { DatabasePath = Path.Combine(dataDir, "kms.db") }, default);

    internal static TestToken TokenWithDomainKey(byte[] value)
    {
        var token = SoftHsm.CreateToken();
        var options = token.Options(devMode: false);
        using var ceremony = HsmCeremonySession.Open(options, Encoding.UTF8.GetBytes(token.UserPin));
        ceremony.ImportDomainKey(value, options.DomainKeyLabel, options.DomainKeyId!);
        return token;
    }

    private static Key NewKey(string keyId)
    {
        var name = KeyName.Create(Tenant, keyId);
        var now = DateTimeOffset.FromUnixTimeMilliseconds(DateTimeOffset.UtcNow.ToUnixTimeMilliseconds());
        var primary = new KeyVersion(name.Version(1), KeyVersionId.NewId(), KeyState.Enabled, KeyAlgorithm.Aes256Gcm, now);
        return new Key(name, KeyPurpose.EncryptDecrypt, KeyState.Enabled, primary, now, KeyLabels.Create([]));
    }
}
