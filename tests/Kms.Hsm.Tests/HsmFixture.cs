using Kms.Core.Crypto;
using Kms.Core.Keys;
using Kms.Core.Ports;
using Kms.Testing;
using Microsoft.Extensions.Logging.Abstractions;
using Net.Pkcs11Interop.Common;
using Net.Pkcs11Interop.HighLevelAPI;

namespace Kms.Hsm.Tests;

/// <summary>
/// A fresh SoftHSM token with the adapter open on it (dev mode: the domain key is created),
/// plus raw Pkcs11Interop sessions on the same token to inspect and attack it independently.
/// </summary>
public sealed class HsmFixture : IAsyncLifetime
{
    public TestToken Token { get; private set; } = null!;

    public Pkcs11Hsm Hsm { get; private set; } = null!;

    internal Pkcs11Module Module => Hsm.Module;

    public Pkcs11InteropFactories Factories => Module.Factories;

    public Task InitializeAsync()
    {
        Token = SoftHsm.CreateToken();
        Hsm = Pkcs11Hsm.Open(Token.Options(cacheCapacity: 1000), NullLogger.Instance);
        return Task.CompletedTask;
    }

    public async Task DisposeAsync() => await Hsm.DisposeAsync();

    /// <summary>A session of its own on the fixture's token (logged in: login is per process).</summary>
    public ISession OpenRawSession() => OpenRawSession(Token.Label);

    internal ISession OpenRawSession(string label)
    {
        return Module.Call(library => SlotList.FindToken(library, label, SoftHsm.ModulePath).Slot.OpenSession(SessionType.ReadWrite));
    }

    public IObjectHandle FindDomainKey(ISession session) =>
        Native.With(
        [
            Factories.ObjectAttributeFactory.Create(CKA.CKA_CLASS, CKO.CKO_SECRET_KEY),
            Factories.ObjectAttributeFactory.Create(CKA.CKA_LABEL, "kms-domain-key"),
        ], session.FindAllObjects).Single();

    /// <summary>
    /// Test-only import: wraps a known AES key under the domain key, so the adapter's real
    /// path (unwrap, GCM) can be compared with an independent implementation.
    /// </summary>
    public KeyMaterialRef ImportKnownKey(byte[] key) => ImportKnown(key, CKK.CKK_AES);

    /// <summary>Test-only import of a generic secret (an HMAC key) of any length, like <see cref="ImportKnownKey"/>.</summary>
    public KeyMaterialRef ImportKnownSecret(byte[] key) => ImportKnown(key, CKK.CKK_GENERIC_SECRET);

    private KeyMaterialRef ImportKnown(byte[] key, CKK keyType)
    {
        using var session = OpenRawSession();
        var a = Factories.ObjectAttributeFactory;
        var handle = Native.With(
        [
            a.Create(CKA.CKA_CLASS, CKO.CKO_SECRET_KEY), a.Create(CKA.CKA_KEY_TYPE, keyType), a.Create(CKA.CKA_TOKEN, false),
            a.Create(CKA.CKA_PRIVATE, true), a.Create(CKA.CKA_SENSITIVE, true), a.Create(CKA.CKA_EXTRACTABLE, true),
            a.Create(CKA.CKA_ENCRYPT, false), a.Create(CKA.CKA_DECRYPT, false), a.Create(CKA.CKA_VALUE, key),
        ], session.CreateObject);
        try
        {
            using var kwp = Factories.MechanismFactory.Create(CKM.CKM_AES_KEY_WRAP_PAD);
            return new KeyMaterialRef(KeyVersionId.NewId(), new WrappedKeyMaterial(session.WrapKey(kwp, FindDomainKey(session), handle)));
        }
        finally
        {
            session.DestroyObject(handle);
        }
    }
}
