using Kms.Core.Access;
using Kms.Core.Keys;
using Kms.Core.Names;
using Kms.Core.Ports;
using Kms.Core.Services;
using Microsoft.Extensions.Time.Testing;

namespace Kms.Testing.Fakes;

/// <summary>The domain services wired over a store (in-memory by default), the fake HSM and a fake clock.</summary>
public sealed class DomainHarness : IDisposable
{
    /// <summary>Every tenant role in tenant dev (the domain services trust the transport's authorization).</summary>
    public static readonly Caller Dev = TenantCaller("token:dev", "dev");

    /// <summary>Every tenant role in tenant acme.</summary>
    public static readonly Caller Acme = TenantCaller("token:acme", "acme");

    /// <summary>A deployment security officer (<c>token:officer</c>, no tenant), as the quorum services see one.</summary>
    public static readonly Caller SecurityOfficer = new("token:officer", null, new HashSet<Role> { Role.SecurityOfficer });

    /// <summary>The store must implement both ports (InMemoryStore, SqliteStore); tenants dev and acme are created.</summary>
    public DomainHarness(IKeyStore? store = null, UsageLimitOptions? limits = null, IHsm? hsm = null)
    {
        FakeHsm = hsm is null ? new FakeHsm() : null;
        Hsm = hsm ?? FakeHsm!;
        Store = store ?? new InMemoryStore();
        AccessStore = (IAccessStore)Store;
        Limits = limits ?? new UsageLimitOptions();
        Usage = new UsageCounter(Store, Limits, Time);
        Keys = new KeyService(Hsm, Store, AccessStore, Time, Lifecycle, Limits, Usage);
        KeyAccess = new KeyAccessService(AccessStore, Store, Time);
        Crypto = new CryptoService(Hsm, Store, Usage, KeyAccess);
        Signing = new SigningService(Hsm, Store, KeyAccess);
        Aliases = new AliasService(Store, AccessStore, Time);
        Access = new AccessService(AccessStore, Store, Time, Lifecycle);
        Trusted = new TrustedTime(Store, Time, Lifecycle);
        foreach (var tenant in new[] { "dev", "acme" })
        {
            if (AccessStore.GetTenantAsync(TenantId.Parse(tenant), default).GetAwaiter().GetResult() is null)
            {
                Access.CreateTenantAsync(TenantId.Parse(tenant), tenant, default).GetAwaiter().GetResult();
            }
        }
    }

    public IAccessStore AccessStore { get; }

    public KeyAccessService KeyAccess { get; }

    public AccessService Access { get; }

    /// <summary>The time credentials are judged by (the fake clock, held to the store's evidence once refreshed).</summary>
    public TrustedTime Trusted { get; }

    /// <summary>A caller of <paramref name="tenant"/> with the given roles (default: every tenant role).</summary>
    public static Caller TenantCaller(string principal, string tenant, params Role[] roles) =>
        new(principal, TenantId.Parse(tenant), (roles.Length == 0 ? [Role.Admin, Role.KeyManager, Role.KeyImporter, Role.KeyUser, Role.Auditor] : roles).ToHashSet());

    public FakeTimeProvider Time { get; } = new(new DateTimeOffset(2026, 11, 29, 12, 0, 0, 123, TimeSpan.Zero));

    public FakeHsm? FakeHsm { get; }

    public IHsm Hsm { get; }

    public IKeyStore Store { get; }

    public LifecycleOptions Lifecycle { get; } = new();

    public UsageLimitOptions Limits { get; }

    public UsageCounter Usage { get; }

    public KeyService Keys { get; }

    public CryptoService Crypto { get; }

    public AliasService Aliases { get; }

    public SigningService Signing { get; }

    /// <summary>Creates a key of <paramref name="algorithm"/> (its purpose follows from it).</summary>
    public async Task<Key> CreateKeyAsync(string keyId, KeyAlgorithm algorithm, Caller? caller = null)
    {
        caller ??= Dev;
        var command = new CreateKeyCommand(caller.Tenant, keyId, KeyAlgorithms.Of(algorithm).Purpose, KeyLabels.Empty, null) { Algorithm = algorithm };
        return (await Keys.CreateKeyAsync(caller, command, default)).Key;
    }

    public async Task<Key> CreateKeyAsync(string keyId, Caller? caller = null, TimeSpan? rotationPeriod = null)
    {
        caller ??= Dev;
        var command = new CreateKeyCommand(caller.Tenant, keyId, KeyPurpose.EncryptDecrypt, KeyLabels.Empty, null) { RotationPeriod = rotationPeriod };
        return (await Keys.CreateKeyAsync(caller, command, default)).Key;
    }

    /// <summary>A key created with allow_import, the only kind that takes ImportKeyVersion.</summary>
    public async Task<Key> CreateKeyForImportAsync(string keyId, KeyAlgorithm algorithm = KeyAlgorithm.Aes256Gcm, Caller? caller = null)
    {
        caller ??= Dev;
        var command = new CreateKeyCommand(caller.Tenant, keyId, KeyAlgorithms.Of(algorithm).Purpose, KeyLabels.Empty, null) { Algorithm = algorithm, AllowImport = true };
        return (await Keys.CreateKeyAsync(caller, command, default)).Key;
    }

    public void Dispose() => FakeHsm?.Dispose();
}
