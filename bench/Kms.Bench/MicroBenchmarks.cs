using System.Security.Cryptography;
using BenchmarkDotNet.Attributes;
using Kms.Core.Access;
using Kms.Core.Crypto;
using Kms.Core.Keys;
using Kms.Core.Names;
using Kms.Core.Ports;
using Kms.Core.Services;
using Kms.Hsm;
using Kms.Storage.Sqlite;
using Microsoft.Extensions.Logging.Abstractions;
using Net.Pkcs11Interop.Common;
using Net.Pkcs11Interop.HighLevelAPI;

namespace Kms.Bench;

/// <summary>
/// The cost of each layer over the floor, in one process: raw Pkcs11Interop GCM on a
/// session-object key (baseline), the adapter's GCM (session pool + leased handle cache),
/// a whole GenerateDataKey in Core (SQLite read + random + GCM), and .NET AesGcm.
/// </summary>
[MemoryDiagnoser]
public class MicroBenchmarks
{
    private static readonly byte[] Plaintext = RandomNumberGenerator.GetBytes(32);
    private static readonly byte[] Iv = RandomNumberGenerator.GetBytes(12);
    private static readonly byte[] Aad = RandomNumberGenerator.GetBytes(24);
    private static readonly Caller Caller = new("token:bench", TenantId.Parse("dev"), new HashSet<Role> { Role.KeyManager, Role.KeyUser });
    private static readonly KeyVersionId BlobVersion = KeyVersionId.NewId();
    private static readonly byte[] BlobSealed = RandomNumberGenerator.GetBytes(32 + 16);
    private static readonly Dictionary<string, string> ContextPairs = new() { ["tenant"] = "acme", ["table"] = "orders", ["row"] = "4711" };
    private static readonly Kms.Core.Audit.AuditHead AuditHead = new(41, new string('a', 64));
    private static readonly Kms.Core.Audit.AuditEntry AuditEntry = new()
    {
        Time = DateTimeOffset.UtcNow,
        RequestId = "0f4c8b1e-bench",
        Principal = "token:0123456789abcdef",
        Tenant = "dev",
        Operation = "/kms.v1.KeyManagementService/GenerateDataKey",
        Resource = "tenants/dev/keys/bench/versions/1",
        Outcome = "OK",
        Client = "127.0.0.1",
        Context = [new("table", "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08")],
    };

    private Pkcs11Hsm _hsm = null!;
    private Pkcs11Module _module = null!;
    private ISession _rawSession = null!;
    private IObjectHandle _rawKey = null!;
    private KeyMaterialRef _key = null!;
    private CryptoService _crypto = null!;
    private KeyName _keyName = null!;
    private AesGcm _aes = null!;
    private List<BatchItem> _batchItems = null!;
    private byte[] _aesOutput = null!;
    private byte[] _tag = null!;

    [GlobalSetup]
    public async Task Setup()
    {
        var (options, root) = BenchEnvironment.CreateToken();
        _hsm = Pkcs11Hsm.Open(options, NullLogger.Instance);
        _key = new KeyMaterialRef(KeyVersionId.NewId(), await _hsm.GenerateAes256KeyAsync(default));

        // Raw baseline: its own session and its own session-object key, no pool, no cache.
        _module = Pkcs11Module.Acquire(options.ModulePath, options.ModuleEnvironment);
        var slot = _module.Call(library => library.GetSlotList(SlotsType.WithTokenPresent).Single(s => s.GetTokenInfo().Label == options.TokenLabel));
        _rawSession = slot.OpenSession(SessionType.ReadWrite);
        var a = _module.Factories.ObjectAttributeFactory;
        using var generate = _module.Factories.MechanismFactory.Create(CKM.CKM_AES_KEY_GEN);
        List<IObjectAttribute> template = [
            a.Create(CKA.CKA_CLASS, CKO.CKO_SECRET_KEY), a.Create(CKA.CKA_KEY_TYPE, CKK.CKK_AES), a.Create(CKA.CKA_VALUE_LEN, 32UL),
            a.Create(CKA.CKA_TOKEN, false), a.Create(CKA.CKA_SENSITIVE, true), a.Create(CKA.CKA_EXTRACTABLE, false),
            a.Create(CKA.CKA_ENCRYPT, true), a.Create(CKA.CKA_DECRYPT, true),
        ];
        _rawKey = _rawSession.GenerateKey(generate, template);
        GC.KeepAlive(template); // Pkcs11Interop frees attribute memory in finalizers
        var store = await SqliteStore.OpenAsync(new SqliteOptions { DatabasePath = Path.Combine(root, "kms.db") }, default);
        var limits = new UsageLimitOptions();
        var usage = new UsageCounter(store, limits, TimeProvider.System);
        await store.CreateTenantAsync(new Tenant(Caller.Tenant, "bench", TenantState.Active, DateTimeOffset.UtcNow), default);
        var keys = new KeyService(_hsm, store, store, TimeProvider.System, new LifecycleOptions(), limits, usage);
        _keyName = (await keys.CreateKeyAsync(Caller, new CreateKeyCommand(Caller.Tenant, "bench", KeyPurpose.EncryptDecrypt, KeyLabels.Empty, null), default)).Key.Name;
        _crypto = new CryptoService(_hsm, store, usage, new KeyAccessService(store, store, TimeProvider.System));
        _batchItems = Enumerable.Range(0, 100).Select(_ => new BatchItem(_keyName.ToString(), null, null)).ToList();

        _aes = new AesGcm(RandomNumberGenerator.GetBytes(32), 16);
        _aesOutput = new byte[32];
        _tag = new byte[16];
    }

    [GlobalCleanup]
    public async Task Cleanup()
    {
        _aes.Dispose();
        _rawSession.Dispose();
        _module.Release();
        await _hsm.DisposeAsync();
    }

    [Benchmark(Baseline = true, Description = "raw Pkcs11Interop C_Encrypt AES-GCM 32 B")]
    public byte[] RawPkcs11Gcm32()
    {
        using var parameters = _module.Factories.MechanismParamsFactory.CreateCkGcmParams(Iv, 96, Aad, 128);
        using var mechanism = _module.Factories.MechanismFactory.Create(CKM.CKM_AES_GCM, parameters);
        return _rawSession.Encrypt(mechanism, _rawKey, Plaintext);
    }

    [Benchmark(Description = "adapter EncryptAesGcm 32 B (pool + leased handle)")]
    public ValueTask<byte[]> AdapterGcm32() => _hsm.EncryptAesGcmAsync(_key, Iv, Aad, Plaintext, default);

    [Benchmark(Description = "adapter GenerateRandom 44 B")]
    public ValueTask<byte[]> AdapterRandom44() => _hsm.GenerateRandomAsync(44, default);

    [Benchmark(Description = "Core GenerateDataKey (SQLite read + random + GCM)")]
    public async Task<int> CoreGenerateDataKey()
    {
        using var result = await _crypto.GenerateDataKeyAsync(Caller, _keyName, EncryptionContext.Empty, default);
        return result.Ciphertext.Length;
    }

    [Benchmark(OperationsPerInvoke = 100, Description = "Core BatchGenerateDataKey, 100 items (per data key)")]
    public async Task<int> CoreBatchGenerateDataKey100()
    {
        var results = await _crypto.BatchGenerateDataKeyAsync(Caller, _batchItems, default);
        foreach (var result in results)
        {
            result.Value!.Dispose();
        }

        return results.Count;
    }

    [Benchmark(Description = "ciphertext blob: format + parse (version id, IV, GCM output of a data key)")]
    public int BlobRoundTrip()
    {
        var blob = CiphertextBlob.Format(BlobVersion, Iv, BlobSealed);
        return CiphertextBlob.TryParse(blob, out var parsed) ? parsed!.CiphertextAndTag.Length : -1;
    }

    [Benchmark(Description = "encryption context: canonicalise 3 pairs + build the GCM AAD")]
    public int ContextCanonicalise()
    {
        var context = EncryptionContext.Create(ContextPairs);
        return CiphertextBlob.BuildAad(BlobVersion, Caller.Tenant, context).Length;
    }

    [Benchmark(Description = "authorization decision: rule of GenerateDataKey + role and tenant check")]
    public bool AuthorizationDecision()
    {
        var rule = Kms.Server.Security.AccessRules.ByMethod["/kms.v1.KeyManagementService/GenerateDataKey"];
        AccessControl.Demand(Caller, Permission.CryptoEncrypt, Caller.HomeTenant, "tenants/dev/keys/bench");
        return rule.Scope == Kms.Server.Security.CallScope.Permission;
    }

    [Benchmark(Description = "audit append, CPU part: link one event into the chain (canonical JSON + SHA-256)")]
    public string AuditLink() => Kms.Core.Audit.AuditChain.Link(AuditHead, AuditEntry).Hash;

    [Benchmark(Description = ".NET AesGcm encrypt 32 B (software)")]
    public byte[] DotNetAesGcm32()
    {
        _aes.Encrypt(Iv, Plaintext, _aesOutput, _tag, Aad);
        return _tag;
    }
}
