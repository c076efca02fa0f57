using Kms.Core.Keys;
using Kms.Core.Names;
using Kms.Core.Ports;
using Kms.Core.Services;
using Microsoft.Extensions.Time.Testing;

namespace Kms.Testing.Fakes;

/// <summary>The domain services wired over a store (in-memory by default), the fake HSM and a fake clock.</summary>
public sealed class DomainHarness : IDisposable
{
    public static readonly Caller Dev = new("test:dev", TenantId.Parse("dev"));
    public static readonly Caller Acme = new("test:acme", TenantId.Parse("acme"));

    public DomainHarness(IKeyStore? store = null, UsageLimitOptions? limits = null, IHsm? hsm = null)
    {
        FakeHsm = hsm is null ? new FakeHsm() : null;
        Hsm = hsm ?? FakeHsm!;
        Store = store ?? new InMemoryKeyStore();
        Limits = limits ?? new UsageLimitOptions();
        Usage = new UsageCounter(Store, Limits, Time);
        Keys = new KeyService(Hsm, Store, Time, Lifecycle, Limits, Usage);
        Crypto = new CryptoService(Hsm, Store, Usage);
        Aliases = new AliasService(Store, Time);
    }

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

    public async Task<Key> CreateKeyAsync(string keyId, Caller? caller = null, TimeSpan? rotationPeriod = null)
    {
        caller ??= Dev;
        var command = new CreateKeyCommand(caller.Tenant, keyId, KeyPurpose.EncryptDecrypt, KeyLabels.Empty, null) { RotationPeriod = rotationPeriod };
        return (await Keys.CreateKeyAsync(caller, command, default)).Key;
    }

    public void Dispose() => FakeHsm?.Dispose();
}
