using System.Security.Cryptography;
using Kms.Client;
using Kms.Core.Errors;
using Kms.Core.Keys;
using Kms.Core.Names;
using Kms.Core.Ports;
using Kms.Core.Services;
using Kms.Testing.Fakes;
using ProtoImportMethod = Kms.Contracts.V1.ImportMethod;

namespace Kms.Core.Tests;

/// <summary>BYOK import jobs and ImportKeyVersion over the fake HSM (SoftHSM's path runs in the server and HSM tests).</summary>
public sealed class KeyImportTests : IDisposable
{
    private static readonly Caller Dev = DomainHarness.Dev;
    private readonly DomainHarness _domain = new();

    public void Dispose() => _domain.Dispose();

    [Fact]
    public async Task Import_AesKeyOfKnownValue_BecomesImportedPrimary_AndEncryptsUnderIt()
    {
        var key = await _domain.CreateKeyForImportAsync("byok");
        var job = await _domain.Keys.CreateImportJobAsync(Dev, Dev.Tenant, "job", ImportMethod.RsaOaep3072Sha1Aes256, default);
        var material = RandomNumberGenerator.GetBytes(32);

        var version = await ImportAsync(key.Name, job, material);

        Assert.Equal(2, version.Name.Version);
        Assert.Equal(KeyOrigin.Imported, version.Origin);
        Assert.Equal(job.Name.ToString(), version.ImportJob);
        Assert.Equal(version.Name, (await _domain.Keys.GetKeyAsync(Dev, key.Name, default)).Primary.Name);
        var sealedBlob = await _domain.Crypto.EncryptAsync(Dev, key.Name, "hello"u8.ToArray(), Kms.Core.Crypto.EncryptionContext.Empty, default);
        Assert.Equal(version.Name, sealedBlob.KeyVersion);
    }

    [Fact]
    public async Task Import_IntoAKeyNotCreatedWithAllowImport_Refused_NothingAdded()
    {
        // A key-importer may import but not decrypt: known material as the primary of a key its
        // users created as an ordinary key would let them read what is encrypted under it.
        var key = await _domain.CreateKeyAsync("production");
        Assert.False(key.AllowImport);
        var job = await _domain.Keys.CreateImportJobAsync(Dev, Dev.Tenant, "job", ImportMethod.RsaOaep3072Sha1Aes256, default);

        var refused = await Assert.ThrowsAsync<KmsException>(() => ImportAsync(key.Name, job, new byte[32]));

        Assert.Equal(KmsErrorCode.FailedPrecondition, refused.Code);
        Assert.Contains("allow_import", refused.Message, StringComparison.Ordinal);
        var versions = (await _domain.Keys.ListKeyVersionsAsync(Dev, key.Name, 10, null, default)).Items;
        Assert.Equal([KeyOrigin.Generated], versions.Select(v => v.Origin));
        Assert.True((await _domain.CreateKeyForImportAsync("byok")).AllowImport);
    }

    [Fact]
    public async Task UpdateAlias_FromAnOrdinaryKeyOntoAKeyThatTakesImports_Refused_TheAliasStays()
    {
        // The apps encrypt through the alias: moving it onto a key whose material a key-importer
        // imported would hand them a key whose material someone outside the HSM knows.
        var production = await _domain.CreateKeyAsync("production");
        var byok = await _domain.CreateKeyForImportAsync("byok");
        var alias = await _domain.Aliases.CreateAliasAsync(Dev, Dev.Tenant, "payments", production.Name, null, default);

        var refused = await Assert.ThrowsAsync<KmsException>(() => _domain.Aliases.UpdateAliasAsync(Dev, alias.Name, byok.Name, default));

        Assert.Equal(KmsErrorCode.FailedPrecondition, refused.Code);
        Assert.Equal(production.Name, (await _domain.Aliases.GetAliasAsync(Dev, alias.Name, default)).Key);

        // Between keys that both take imports, or onto an ordinary key, it moves.
        var other = await _domain.CreateKeyForImportAsync("byok-2");
        var imported = await _domain.Aliases.CreateAliasAsync(Dev, Dev.Tenant, "imported", byok.Name, null, default);
        Assert.Equal(other.Name, (await _domain.Aliases.UpdateAliasAsync(Dev, imported.Name, other.Name, default)).Key);
        Assert.Equal(production.Name, (await _domain.Aliases.UpdateAliasAsync(Dev, imported.Name, production.Name, default)).Key);
    }

    [Fact]
    public async Task Import_RetriedWithTheSameRequestIdAfterARotation_AnswersTheImportedVersion()
    {
        var key = await _domain.CreateKeyForImportAsync("byok");
        var job = await _domain.Keys.CreateImportJobAsync(Dev, Dev.Tenant, "job", ImportMethod.RsaOaep3072Sha1Aes256, default);
        var command = new ImportKeyVersionCommand(key.Name, job.Name, null, KeyImport.Wrap(job.PublicKey.Der, ProtoImportMethod.RsaOaep3072Sha1Aes256, new byte[32]), null, "import-once");

        var first = await _domain.Keys.ImportKeyVersionAsync(Dev, command, default);
        await _domain.Keys.RotateKeyAsync(Dev, key.Name, null, default);
        var again = await _domain.Keys.ImportKeyVersionAsync(Dev, command, default);

        Assert.Equal(first.Name, again.Name);
        Assert.Equal(KeyOrigin.Imported, again.Origin);
        Assert.Equal(3, (await _domain.Keys.ListKeyVersionsAsync(Dev, key.Name, 10, null, default)).Items.Count);
    }

    [Fact]
    public async Task Import_SameRequestIdWithOtherMaterial_InvalidArgument_NothingAdded()
    {
        // A reused id with other key material must not answer with the version of the first
        // material: the caller would believe the second is the key's primary.
        var key = await _domain.CreateKeyForImportAsync("byok");
        var job = await _domain.Keys.CreateImportJobAsync(Dev, Dev.Tenant, "job", ImportMethod.RsaOaep3072Sha1Aes256, default);
        ImportKeyVersionCommand Command(byte[] material) =>
            new(key.Name, job.Name, null, KeyImport.Wrap(job.PublicKey.Der, ProtoImportMethod.RsaOaep3072Sha1Aes256, material), null, "import-once");
        await _domain.Keys.ImportKeyVersionAsync(Dev, Command(RandomNumberGenerator.GetBytes(32)), default);

        var refused = await Assert.ThrowsAsync<KmsException>(() => _domain.Keys.ImportKeyVersionAsync(Dev, Command(RandomNumberGenerator.GetBytes(32)), default));

        Assert.Equal(KmsErrorCode.InvalidArgument, refused.Code);
        Assert.Equal("request_id", refused.Field);
        Assert.Equal(2, (await _domain.Keys.ListKeyVersionsAsync(Dev, key.Name, 10, null, default)).Items.Count);
    }

    [Fact]
    public async Task Import_AMaterialItsJobAlreadyImported_IntoAnyKeyAsAnyAlgorithmHoweverWrapped_FailedPrecondition_NothingAdded()
    {
        // Before, whoever held a copy of the wrapped key (and kms.keys.import) could import it again
        // within the job's life, into any key of the tenant: a key policy on the first key did not
        // follow the material.
        var aes = await _domain.CreateKeyForImportAsync("byok");
        var other = await _domain.CreateKeyForImportAsync("byok-2");
        var mac = await _domain.CreateKeyForImportAsync("byok-mac", KeyAlgorithm.HmacSha256);
        var job = await _domain.Keys.CreateImportJobAsync(Dev, Dev.Tenant, "job", ImportMethod.RsaOaep3072Sha1Aes256, default);
        var material = RandomNumberGenerator.GetBytes(32);
        var wrapped = KeyImport.Wrap(job.PublicKey.Der, ProtoImportMethod.RsaOaep3072Sha1Aes256, material);
        var first = await _domain.Keys.ImportKeyVersionAsync(Dev, new ImportKeyVersionCommand(aes.Name, job.Name, null, wrapped, null, null), default);
        Assert.NotNull(first.ImportFingerprint);

        // The same blob into the same key, another key, or as HMAC_SHA256; the same material
        // wrapped again (another OAEP seed and ephemeral key): each refused, nothing added.
        var rewrapped = KeyImport.Wrap(job.PublicKey.Der, ProtoImportMethod.RsaOaep3072Sha1Aes256, material);
        Assert.NotEqual(wrapped, rewrapped);
        foreach (var (key, blob) in new[] { (aes.Name, wrapped), (other.Name, wrapped), (mac.Name, wrapped), (aes.Name, rewrapped), (other.Name, rewrapped), (mac.Name, rewrapped) })
        {
            var refused = await Assert.ThrowsAsync<KmsException>(() =>
                _domain.Keys.ImportKeyVersionAsync(Dev, new ImportKeyVersionCommand(key, job.Name, null, blob, null, $"retry-{Guid.NewGuid():N}"), default));
            Assert.Equal(KmsErrorCode.FailedPrecondition, refused.Code);
            Assert.Contains("already imported through import job tenants/dev/importJobs/job", refused.Message, StringComparison.Ordinal);
            Assert.DoesNotContain(Convert.ToHexString(blob)[..16], refused.Message, StringComparison.OrdinalIgnoreCase);
            Assert.DoesNotContain(Convert.ToBase64String(blob)[..16], refused.Message, StringComparison.Ordinal);
        }

        Assert.Equal([1, 2], (await _domain.Keys.ListKeyVersionsAsync(Dev, aes.Name, 10, null, default)).Items.Select(v => v.Name.Version));
        Assert.Equal(first.Name, (await _domain.Keys.GetKeyAsync(Dev, aes.Name, default)).Primary.Name);
        Assert.Single((await _domain.Keys.ListKeyVersionsAsync(Dev, other.Name, 10, null, default)).Items);
        Assert.Single((await _domain.Keys.ListKeyVersionsAsync(Dev, mac.Name, 10, null, default)).Items);

        // Other material through the job, and the same material through a new job (the operator's
        // deliberate choice), are imported.
        Assert.Equal(2, (await ImportAsync(other.Name, job, RandomNumberGenerator.GetBytes(32))).Name.Version);
        var second = await _domain.Keys.CreateImportJobAsync(Dev, Dev.Tenant, "job-2", ImportMethod.RsaOaep3072Sha1Aes256, default);
        Assert.Equal(2, (await ImportAsync(mac.Name, second, material)).Name.Version);
    }

    [Fact]
    public async Task Import_TheSameKeyPairTwiceThroughItsJob_AsAnotherRsaAlgorithm_FailedPrecondition_NothingAdded()
    {
        var signing = await _domain.CreateKeyForImportAsync("rsa-sign", KeyAlgorithm.RsaSignPss2048Sha256);
        var pkcs1 = await _domain.CreateKeyForImportAsync("rsa-pkcs1", KeyAlgorithm.RsaSignPkcs2048Sha256);
        var job = await _domain.Keys.CreateImportJobAsync(Dev, Dev.Tenant, "job", ImportMethod.RsaOaep3072Sha1Aes256, default);
        using var rsa = RSA.Create(2048);
        var pkcs8 = rsa.ExportPkcs8PrivateKey();
        await ImportAsync(signing.Name, job, pkcs8);

        var refused = await Assert.ThrowsAsync<KmsException>(() => ImportAsync(pkcs1.Name, job, pkcs8));

        Assert.Equal(KmsErrorCode.FailedPrecondition, refused.Code);
        Assert.Single((await _domain.Keys.ListKeyVersionsAsync(Dev, pkcs1.Name, 10, null, default)).Items);
    }

    [Fact]
    public async Task Import_ExpiredJob_FailedPrecondition_NothingAdded()
    {
        var key = await _domain.CreateKeyForImportAsync("byok");
        var job = await _domain.Keys.CreateImportJobAsync(Dev, Dev.Tenant, "job", ImportMethod.RsaOaep3072Sha1Aes256, default);
        _domain.Time.Advance(ImportJob.Lifetime);

        var e = await Assert.ThrowsAsync<KmsException>(() => ImportAsync(key.Name, job, new byte[32]));
        Assert.Equal(KmsErrorCode.FailedPrecondition, e.Code);
        Assert.Contains("expired", e.Message, StringComparison.Ordinal);
        Assert.Single((await _domain.Keys.ListKeyVersionsAsync(Dev, key.Name, 10, null, default)).Items);
    }

    [Fact]
    public async Task Import_OnANodeWhoseClockWasSetBack_JobExpiredByTheTimeRecordedAsSeen_FailedPrecondition_NothingAdded()
    {
        // The deployment saw the job's life end; this node's clock was set back to within it.
        var key = await _domain.CreateKeyForImportAsync("byok");
        var job = await _domain.Keys.CreateImportJobAsync(Dev, Dev.Tenant, "job", ImportMethod.RsaOaep3072Sha1Aes256, default);
        var seen = job.ExpireTime + TimeSpan.FromMinutes(1);
        await _domain.Store.SetSettingAsync(LifecycleClock.Setting, seen.ToUnixTimeMilliseconds().ToString(System.Globalization.CultureInfo.InvariantCulture), default);

        var e = await Assert.ThrowsAsync<KmsException>(() => ImportAsync(key.Name, job, new byte[32]));
        Assert.Equal(KmsErrorCode.FailedPrecondition, e.Code);
        Assert.Contains("expired", e.Message, StringComparison.Ordinal);
        Assert.Single((await _domain.Keys.ListKeyVersionsAsync(Dev, key.Name, 10, null, default)).Items);
    }

    [Fact]
    public async Task CreateImportJob_OnANodeWhoseClockWasSetBack_LivesItsLifetimeFromTheTimeRecordedAsSeen_ImportAccepted()
    {
        // The deployment saw four days pass; this node's clock was then set back four days (a VM
        // restored without NTP). Counted from the node's clock, a new job would have ended a day
        // before it was made, by the time its imports are judged.
        var key = await _domain.CreateKeyForImportAsync("byok");
        var seen = _domain.Time.GetUtcNow() + TimeSpan.FromDays(4);
        await RecordSeenAsync(seen);
        var clock = new SplitClock(seen);
        clock.Step(-TimeSpan.FromDays(4));
        var keys = new KeyService(_domain.Hsm, _domain.Store, _domain.AccessStore, clock, _domain.Lifecycle, _domain.Limits, _domain.Usage);

        var job = await keys.CreateImportJobAsync(Dev, Dev.Tenant, "job", ImportMethod.RsaOaep3072Sha1Aes256, default);

        Assert.Equal((seen, seen + ImportJob.Lifetime), (job.CreateTime, job.ExpireTime));
        clock.Pass(TimeSpan.FromHours(1));
        await RecordSeenAsync(seen + TimeSpan.FromHours(1));
        var version = await keys.ImportKeyVersionAsync(
            Dev, new ImportKeyVersionCommand(key.Name, job.Name, null, KeyImport.Wrap(job.PublicKey.Der, ProtoImportMethod.RsaOaep3072Sha1Aes256, new byte[32]), null, null), default);
        Assert.Equal(KeyOrigin.Imported, version.Origin);
    }

    [Fact]
    public async Task CreateImportJob_OnANodeWhoseClockIsAheadOfTheDatabases_LivesByTheDatabasesClock()
    {
        // PostgreSQL: this node's clock is a day ahead of the database server's. Counted from it,
        // the job would live a day longer than its lifetime by every other node's clock.
        var database = _domain.Time.GetUtcNow();
        ((InMemoryStore)_domain.Store).DatabaseTime = database;
        var clock = new SplitClock(database + TimeSpan.FromDays(1));
        var keys = new KeyService(_domain.Hsm, _domain.Store, _domain.AccessStore, clock, _domain.Lifecycle, _domain.Limits, _domain.Usage);

        var job = await keys.CreateImportJobAsync(Dev, Dev.Tenant, "job", ImportMethod.RsaOaep3072Sha1Aes256, default);

        Assert.Equal((database, database + ImportJob.Lifetime), (job.CreateTime, job.ExpireTime));
    }

    [Fact]
    public async Task Import_WrongKeySize_InvalidArgument_NothingAdded()
    {
        var key = await _domain.CreateKeyForImportAsync("byok");
        var job = await _domain.Keys.CreateImportJobAsync(Dev, Dev.Tenant, "job", ImportMethod.RsaOaep3072Sha1Aes256, default);

        var e = await Assert.ThrowsAsync<KmsException>(() => ImportAsync(key.Name, job, new byte[16]));
        Assert.Equal(KmsErrorCode.InvalidArgument, e.Code);
        Assert.Single((await _domain.Keys.ListKeyVersionsAsync(Dev, key.Name, 10, null, default)).Items);
    }

    [Theory]
    [InlineData(KeyAlgorithm.Aes256Gcm, 32)]
    [InlineData(KeyAlgorithm.HmacSha256, 32)]
    public async Task Import_SecretKeyMaterialWithAPublicKey_InvalidArgumentNamingPublicKey_NothingAdded(KeyAlgorithm algorithm, int length)
    {
        // The public key was ignored: the version was added, and a caller who had mixed up keys or
        // algorithms was left to believe the key it sent had been checked against the material.
        var key = await _domain.CreateKeyForImportAsync("byok", algorithm);
        var job = await _domain.Keys.CreateImportJobAsync(Dev, Dev.Tenant, "job", ImportMethod.RsaOaep3072Sha1Aes256, default);
        var wrapped = KeyImport.Wrap(job.PublicKey.Der, ProtoImportMethod.RsaOaep3072Sha1Aes256, RandomNumberGenerator.GetBytes(length));
        using var ec = ECDsa.Create(ECCurve.NamedCurves.nistP256);

        var e = await Assert.ThrowsAsync<KmsException>(() => _domain.Keys.ImportKeyVersionAsync(
            Dev, new ImportKeyVersionCommand(key.Name, job.Name, null, wrapped, ec.ExportSubjectPublicKeyInfo(), null), default));

        Assert.Equal((KmsErrorCode.InvalidArgument, "public_key"), (e.Code, e.Field));
        Assert.Contains(KeyAlgorithms.Of(algorithm).Name, e.Message, StringComparison.Ordinal);
        Assert.Single((await _domain.Keys.ListKeyVersionsAsync(Dev, key.Name, 10, null, default)).Items);
        Assert.Equal(2, (await _domain.Keys.ImportKeyVersionAsync(Dev, new ImportKeyVersionCommand(key.Name, job.Name, null, wrapped, null, null), default)).Name.Version);
    }

    [Fact]
    public async Task Import_AlgorithmOtherThanTheKeys_FailedPrecondition()
    {
        var key = await _domain.CreateKeyForImportAsync("byok");
        var job = await _domain.Keys.CreateImportJobAsync(Dev, Dev.Tenant, "job", ImportMethod.RsaOaep3072Sha1Aes256, default);
        var wrapped = KeyImport.Wrap(job.PublicKey.Der, ProtoImportMethod.RsaOaep3072Sha1Aes256, new byte[32]);

        var e = await Assert.ThrowsAsync<KmsException>(() => _domain.Keys.ImportKeyVersionAsync(
            Dev, new ImportKeyVersionCommand(key.Name, job.Name, KeyAlgorithm.HmacSha256, wrapped, null, null), default));
        Assert.Equal(KmsErrorCode.FailedPrecondition, e.Code);
    }

    [Fact]
    public async Task Import_JobOfAnotherTenant_NotFound()
    {
        var key = await _domain.CreateKeyForImportAsync("byok");
        var job = await _domain.Keys.CreateImportJobAsync(DomainHarness.Acme, DomainHarness.Acme.Tenant, "job", ImportMethod.RsaOaep3072Sha1Aes256, default);

        var e = await Assert.ThrowsAsync<KmsException>(() => ImportAsync(key.Name, job, new byte[32]));
        Assert.Equal(KmsErrorCode.NotFound, e.Code);
    }

    [Fact]
    public async Task CreateImportJob_MethodTheHsmRefuses_FailedPrecondition()
    {
        _domain.FakeHsm!.UnsupportedImports[ImportMethod.RsaOaep3072Sha256Aes256] = "no SHA-256 OAEP here";

        var e = await Assert.ThrowsAsync<KmsException>(() => _domain.Keys.CreateImportJobAsync(Dev, Dev.Tenant, "job", ImportMethod.RsaOaep3072Sha256Aes256, default));
        Assert.Equal(KmsErrorCode.FailedPrecondition, e.Code);
        Assert.Contains("no SHA-256 OAEP here", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task ExpiredJobs_AreErasedByTheBackgroundPass_AndEvictedFromTheHsm()
    {
        var job = await _domain.Keys.CreateImportJobAsync(Dev, Dev.Tenant, "job", ImportMethod.RsaOaep3072Sha1Aes256, default);
        Assert.Equal(0, await _domain.Keys.EraseExpiredImportJobsAsync(_domain.Time.GetUtcNow(), default));
        _domain.Time.Advance(ImportJob.Lifetime);

        Assert.Equal(1, await _domain.Keys.EraseExpiredImportJobsAsync(_domain.Time.GetUtcNow(), default));
        Assert.Contains(job.MaterialId, _domain.FakeHsm!.Evicted);
        Assert.Null((await _domain.Store.GetImportJobAsync(ImportJobName.Parse("tenants/dev/importJobs/job", "name"), default))!.Material);
    }

    // What a lifecycle pass records: the time this deployment has seen pass.
    private Task RecordSeenAsync(DateTimeOffset seen) =>
        _domain.Store.SetSettingAsync(LifecycleClock.Setting, seen.ToUnixTimeMilliseconds().ToString(System.Globalization.CultureInfo.InvariantCulture), default);

    private Task<KeyVersion> ImportAsync(KeyName key, ImportJob job, byte[] material) =>
        _domain.Keys.ImportKeyVersionAsync(
            Dev,
            new ImportKeyVersionCommand(key, job.Name, null, KeyImport.Wrap(job.PublicKey.Der, ProtoImportMethod.RsaOaep3072Sha1Aes256, material), null, null),
            default);
}
