using System.Security.Cryptography;
using System.Text;
using Kms.Hsm;
using Kms.Testing;

namespace Kms.Server.Tests;

/// <summary>
/// A production-mode server on a domain key imported by the ceremony: it serves, and a second
/// HSM given the same value (restored from shares) serves the same database — disaster recovery.
/// </summary>
public sealed class CeremonyDomainKeyTests
{
    private const string DomainKeyId = "dk-ceremony-test";

    [Fact]
    public async Task ProductionServer_CeremonyDomainKey_SecondTokenWithSameValue_DecryptsOldCiphertexts()
    {
        var domainKey = RandomNumberGenerator.GetBytes(32);
        var first = SoftHsm.CreateToken();
        var second = SoftHsm.CreateToken();
        Import(first, domainKey);
        var dataDir = Path.Combine(Path.GetTempPath(), "kms-ceremony-" + Guid.NewGuid().ToString("N")[..8]);

        byte[] ciphertext;
        await using (var server = await KmsTestServer.StartProductionAsync(first, dataDir, DomainKeyId))
        {
            using var client = server.CreateClient();
            var key = await client.CreateKeyAsync("tenants/dev", "orders");
            ciphertext = (await client.EncryptAsync(key.Name, "before the fire"u8.ToArray())).Ciphertext;
        }

        Import(second, domainKey);
        CryptographicOperations.ZeroMemory(domainKey);
        await using (var restored = await KmsTestServer.StartProductionAsync(second, dataDir, DomainKeyId))
        {
            using var client = restored.CreateClient();
            using var plaintext = await client.DecryptAsync(ciphertext);
            Assert.Equal("before the fire", Encoding.UTF8.GetString(plaintext.Plaintext));
        }

        // A token with another domain key is refused against the same database, naming both check values.
        var stranger = SoftHsm.CreateToken();
        Import(stranger, RandomNumberGenerator.GetBytes(32));
        var e = await Assert.ThrowsAnyAsync<Exception>(() => KmsTestServer.StartProductionAsync(stranger, dataDir, DomainKeyId));
        Assert.Contains("refusing to serve", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task ProductionServer_GenesisFileWithoutItsHash_RefusedBeforeAnythingIsWritten_WithTheTranscriptsHashItServesQuorum()
    {
        // The ceremony writes the genesis into the data directory, beside the SQLite database and
        // the officer-head record: whoever can write there could swap in officers of their own.
        // Only the hash in the configuration pins it, so production needs it (dev mode does not).
        using var officers = new TestOfficers("alice", "bob");
        var token = SoftHsm.CreateToken();
        Import(token, RandomNumberGenerator.GetBytes(32));
        var dataDir = Path.Combine(Path.GetTempPath(), "kms-ceremony-" + Guid.NewGuid().ToString("N")[..8]);
        var genesisPath = Path.Combine(dataDir, "quorum", "genesis.json");
        Directory.CreateDirectory(Path.GetDirectoryName(genesisPath)!);
        var genesis = Kms.Core.Quorum.OfficerSet.CreateDeploymentGenesis(officers.Select("alice", "bob"), 2);
        Kms.Core.Quorum.GenesisFile.Write(genesisPath, genesis);

        var refused = await Assert.ThrowsAsync<InvalidOperationException>(() => KmsTestServer.StartProductionAsync(token, dataDir, DomainKeyId, "dev", $"--Kms:Quorum:GenesisFile={genesisPath}"));
        Assert.Contains($"Kms:Quorum:GenesisFile is set ({genesisPath}) but Kms:Quorum:GenesisSha256 is not", refused.Message, StringComparison.Ordinal);
        Assert.False(File.Exists(Path.Combine(dataDir, "kms.db")));

        var other = await Assert.ThrowsAsync<InvalidOperationException>(() => KmsTestServer.StartProductionAsync(token, dataDir, DomainKeyId, "dev",
            $"--Kms:Quorum:GenesisFile={genesisPath}", $"--Kms:Quorum:GenesisSha256={new string('0', 64)}"));
        Assert.Contains($"holds the officer set {genesis.Hash}, not the pinned Kms:Quorum:GenesisSha256", other.Message, StringComparison.Ordinal);

        await using var server = await KmsTestServer.StartProductionAsync(token, dataDir, DomainKeyId, "dev",
            $"--Kms:Quorum:GenesisFile={genesisPath}", $"--Kms:Quorum:GenesisSha256={genesis.Hash}");
        using var officer = server.CreateClient(await server.CreatePrincipalWithTokenAsync("officer", null, "security-officer"));
        Assert.Equal(genesis.Hash, (await officer.GetOfficerSetAsync()).Hash);
    }

    [Fact]
    public async Task GenesisHashWithoutTheFile_RefusedAtStart_InDevModeAndInProduction_BeforeAnythingIsWritten()
    {
        // A hash pinned with the file forgotten pins nothing: without the file no genesis is
        // loaded, and the server would start as if none were configured.
        const string Refusal = "Kms:Quorum:GenesisSha256 is set but Kms:Quorum:GenesisFile is not";
        var pinned = $"--Kms:Quorum:GenesisSha256={new string('a', 64)}";
        var devDir = Path.Combine(Path.GetTempPath(), "kms-ceremony-" + Guid.NewGuid().ToString("N")[..8]);
        var dev = await Assert.ThrowsAsync<InvalidOperationException>(() => KmsTestServer.StartAsync(null, devDir, "dev", pinned));
        Assert.Contains(Refusal, dev.Message, StringComparison.Ordinal);
        Assert.False(File.Exists(Path.Combine(devDir, "kms.db")));

        var token = SoftHsm.CreateToken();
        Import(token, RandomNumberGenerator.GetBytes(32));
        var dataDir = Path.Combine(Path.GetTempPath(), "kms-ceremony-" + Guid.NewGuid().ToString("N")[..8]);
        var production = await Assert.ThrowsAsync<InvalidOperationException>(() => KmsTestServer.StartProductionAsync(token, dataDir, DomainKeyId, "dev", pinned));
        Assert.Contains(Refusal, production.Message, StringComparison.Ordinal);
        Assert.False(File.Exists(Path.Combine(dataDir, "kms.db")));

        // An empty value is no hash (deploy/compose.yaml passes one when .env lacks it).
        await using var server = await KmsTestServer.StartProductionAsync(token, dataDir, DomainKeyId, "dev", "--Kms:Quorum:GenesisSha256=");
    }

    [Fact]
    public async Task SqliteServer_HoldsTheServingLock_NoRotationWhileItServes_NoStartWhileARotationHoldsIt()
    {
        var domainKey = RandomNumberGenerator.GetBytes(32);
        var token = SoftHsm.CreateToken();
        Import(token, domainKey);
        var dataDir = Path.Combine(Path.GetTempPath(), "kms-ceremony-" + Guid.NewGuid().ToString("N")[..8]);
        await using (var server = await KmsTestServer.StartProductionAsync(token, dataDir, DomainKeyId))
        {
            await using var ceremony = await Kms.Storage.Sqlite.SqliteStore.OpenAsync(new() { DatabasePath = server.DatabasePath }, default);
            Assert.False(await ceremony.TryHoldMaintenanceLockAsync(default));

            // Readable by all: a server running as another user than whoever created it (a ceremony run as root) opens it.
            Assert.Equal(UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.GroupRead | UnixFileMode.OtherRead, File.GetUnixFileMode(server.DatabasePath + ".serving"));
        }

        await using (var ceremony = await Kms.Storage.Sqlite.SqliteStore.OpenAsync(new() { DatabasePath = Path.Combine(dataDir, "kms.db") }, default))
        {
            Assert.True(await ceremony.TryHoldMaintenanceLockAsync(default));
            var refused = await Assert.ThrowsAsync<InvalidOperationException>(() => KmsTestServer.StartProductionAsync(token, dataDir, DomainKeyId));
            Assert.Contains("an offline maintenance (kms ceremony rotate-domain) holds this SQLite database", refused.Message, StringComparison.Ordinal);
        }

        await using (await KmsTestServer.StartProductionAsync(token, dataDir, DomainKeyId))
        {
        }
    }

    [Fact]
    public async Task ProductionServer_RestartedOnAForgedDomainKeyWithTheSameCheckValue_RefusesToServe()
    {
        // The check value pins the domain key by 3 bytes; this pair was found in 1 s (2^24 AES
        // operations). The pin alone would accept the forgery: what the database holds wrapped
        // under the real key must also open, or the server does not serve.
        var (real, forged) = (ForgedCheckValue.Real, ForgedCheckValue.Forged);
        Assert.Equal(HsmCeremonySession.AesCheckValue(real), HsmCeremonySession.AesCheckValue(forged));
        var first = SoftHsm.CreateToken();
        Import(first, real);
        var dataDir = Path.Combine(Path.GetTempPath(), "kms-ceremony-" + Guid.NewGuid().ToString("N")[..8]);
        await using (var server = await KmsTestServer.StartProductionAsync(first, dataDir, DomainKeyId))
        {
            using var client = server.CreateClient();
            await client.CreateKeyAsync("tenants/dev", "orders");
        }

        var impostor = SoftHsm.CreateToken();
        Import(impostor, forged);
        var e = await Assert.ThrowsAnyAsync<Exception>(() => KmsTestServer.StartProductionAsync(impostor, dataDir, DomainKeyId));
        Assert.Contains("is not the one this database was created under", e.Message, StringComparison.Ordinal);
    }

    private static void Import(TestToken token, byte[] domainKey)
    {
        using var session = HsmCeremonySession.Open(token.Options(devMode: false), Encoding.UTF8.GetBytes(token.UserPin));
        session.ImportDomainKey(domainKey, "kms-domain-key", DomainKeyId);
    }
}
