using Kms.Testing;
using Net.Pkcs11Interop.Common;
using Net.Pkcs11Interop.HighLevelAPI;

namespace Kms.Hsm.Tests;

/// <summary>The domain key's template, read back and attacked through a session of our own.</summary>
public sealed class DomainKeyTests(HsmFixture fixture) : IClassFixture<HsmFixture>
{
    [Fact]
    public void DomainKey_AttributesReadBack_AsDesignRequires()
    {
        using var session = fixture.OpenRawSession();
        var dk = fixture.FindDomainKey(session);
        var flags = new[]
        {
            (CKA.CKA_TOKEN, true), (CKA.CKA_PRIVATE, true), (CKA.CKA_SENSITIVE, true), (CKA.CKA_EXTRACTABLE, false),
            (CKA.CKA_WRAP, true), (CKA.CKA_UNWRAP, true), (CKA.CKA_ENCRYPT, false), (CKA.CKA_DECRYPT, false),
            (CKA.CKA_SIGN, false), (CKA.CKA_VERIFY, false), (CKA.CKA_DERIVE, false), (CKA.CKA_MODIFIABLE, false),
            (CKA.CKA_NEVER_EXTRACTABLE, true), (CKA.CKA_ALWAYS_SENSITIVE, true),
        };
        var read = session.GetAttributeValue(dk, [.. flags.Select(f => f.Item1)]);
        for (var i = 0; i < flags.Length; i++)
        {
            Assert.True(flags[i].Item2 == read[i].GetValueAsBool(), $"{flags[i].Item1} should be {flags[i].Item2}");
        }

        var more = session.GetAttributeValue(dk, [CKA.CKA_ALLOWED_MECHANISMS, CKA.CKA_UNWRAP_TEMPLATE, CKA.CKA_CHECK_VALUE, CKA.CKA_VALUE, CKA.CKA_ID]);
        Assert.Equal([CKM.CKM_AES_KEY_WRAP_PAD], more[0].GetValueAsCkmList());
        var unwrapTemplate = more[1].GetValueAsObjectAttributeList();
        Assert.Contains(unwrapTemplate, a => a.Type == (ulong)CKA.CKA_SENSITIVE && a.GetValueAsBool());
        Assert.Contains(unwrapTemplate, a => a.Type == (ulong)CKA.CKA_EXTRACTABLE && !a.GetValueAsBool());
        Assert.Contains(unwrapTemplate, a => a.Type == (ulong)CKA.CKA_PRIVATE && a.GetValueAsBool());
        Assert.Contains(unwrapTemplate, a => a.Type == (ulong)CKA.CKA_TOKEN && !a.GetValueAsBool());
        Assert.Equal(fixture.Hsm.DomainKeyCheckValue, Convert.ToHexString(more[2].GetValueAsByteArray()));
        Assert.True(more[3].CannotBeRead);
        Assert.Equal(HsmOptions.DevDomainKeyId, more[4].GetValueAsString());
    }

    [Fact]
    public void DomainKey_PkcsTool_IndependentlyShowsSensitiveNeverExtractableWrapOnly()
    {
        var output = SoftHsm.Run("pkcs11-tool", "--module", SoftHsm.ModulePath, "--token-label", fixture.Token.Label,
            "--login", "--pin", fixture.Token.UserPin, "--list-objects", "--type", "secrkey");
        var entry = output.Split("Secret Key Object").Single(o => o.Contains("kms-domain-key", StringComparison.Ordinal));

        Assert.Matches(@"Access:\s+.*\bsensitive\b.*never extractable", entry);
        Assert.Matches(@"Usage:\s+wrap, unwrap\s*$", entry.Split('\n').Single(l => l.Contains("Usage:", StringComparison.Ordinal)));
    }

    [Fact]
    public async Task Attack_UnwrapStoredBlobAsReadableKey_RefusedByUnwrapTemplate()
    {
        var wrapped = await fixture.Hsm.GenerateAes256KeyAsync(default);
        using var session = fixture.OpenRawSession();
        var a = fixture.Factories.ObjectAttributeFactory;
        using var kwp = fixture.Factories.MechanismFactory.Create(CKM.CKM_AES_KEY_WRAP_PAD);

        var readable = new List<IObjectAttribute>
        {
            a.Create(CKA.CKA_CLASS, CKO.CKO_SECRET_KEY), a.Create(CKA.CKA_KEY_TYPE, CKK.CKK_AES), a.Create(CKA.CKA_TOKEN, false),
            a.Create(CKA.CKA_SENSITIVE, false), a.Create(CKA.CKA_EXTRACTABLE, true),
        };
        var e = Assert.Throws<Pkcs11Exception>(() => Native.With(readable, t => session.UnwrapKey(kwp, fixture.FindDomainKey(session), wrapped.UnsafeArray, t)));
        Assert.Equal(CKR.CKR_TEMPLATE_INCONSISTENT, e.RV);

        // Nor as a sensitive-but-extractable key that the attacker could re-wrap under a key of their own.
        var extractable = new List<IObjectAttribute>
        {
            a.Create(CKA.CKA_CLASS, CKO.CKO_SECRET_KEY), a.Create(CKA.CKA_KEY_TYPE, CKK.CKK_AES), a.Create(CKA.CKA_TOKEN, false),
            a.Create(CKA.CKA_EXTRACTABLE, true),
        };
        Assert.Throws<Pkcs11Exception>(() => Native.With(extractable, t => session.UnwrapKey(kwp, fixture.FindDomainKey(session), wrapped.UnsafeArray, t)));
    }

    [Fact]
    public async Task Attack_UnwrapStoredEcBlobAsReadableKey_RefusedByUnwrapTemplate()
    {
        var wrapped = (await fixture.Hsm.GenerateEcKeyPairAsync(Kms.Core.Ports.EcCurve.P256, default)).PrivateKey;
        using var session = fixture.OpenRawSession();
        var a = fixture.Factories.ObjectAttributeFactory;
        using var kwp = fixture.Factories.MechanismFactory.Create(CKM.CKM_AES_KEY_WRAP_PAD);

        var readable = new List<IObjectAttribute>
        {
            a.Create(CKA.CKA_CLASS, CKO.CKO_PRIVATE_KEY), a.Create(CKA.CKA_KEY_TYPE, CKK.CKK_EC), a.Create(CKA.CKA_TOKEN, false),
            a.Create(CKA.CKA_SIGN, true), a.Create(CKA.CKA_SENSITIVE, false), a.Create(CKA.CKA_EXTRACTABLE, true),
        };
        var e = Assert.Throws<Pkcs11Exception>(() => Native.With(readable, t => session.UnwrapKey(kwp, fixture.FindDomainKey(session), wrapped.UnsafeArray, t)));
        Assert.Equal(CKR.CKR_TEMPLATE_INCONSISTENT, e.RV);

        // Nor as a sensitive-but-extractable key that the attacker could re-wrap under a key of their own.
        var extractable = new List<IObjectAttribute>
        {
            a.Create(CKA.CKA_CLASS, CKO.CKO_PRIVATE_KEY), a.Create(CKA.CKA_KEY_TYPE, CKK.CKK_EC), a.Create(CKA.CKA_TOKEN, false),
            a.Create(CKA.CKA_SIGN, true), a.Create(CKA.CKA_EXTRACTABLE, true),
        };
        e = Assert.Throws<Pkcs11Exception>(() => Native.With(extractable, t => session.UnwrapKey(kwp, fixture.FindDomainKey(session), wrapped.UnsafeArray, t)));
        Assert.Equal(CKR.CKR_TEMPLATE_INCONSISTENT, e.RV);

        // Control: the blob itself unwraps under the domain key's terms, so the refusals above are the template's doing.
        var conforming = new List<IObjectAttribute>
        {
            a.Create(CKA.CKA_CLASS, CKO.CKO_PRIVATE_KEY), a.Create(CKA.CKA_KEY_TYPE, CKK.CKK_EC), a.Create(CKA.CKA_TOKEN, false),
            a.Create(CKA.CKA_SIGN, true), a.Create(CKA.CKA_SENSITIVE, true), a.Create(CKA.CKA_EXTRACTABLE, false),
        };
        var copy = Native.With(conforming, t => session.UnwrapKey(kwp, fixture.FindDomainKey(session), wrapped.UnsafeArray, t));
        session.DestroyObject(copy);
    }

    [Fact]
    public async Task Attack_FlipDecryptOnDomainKey_RefusedAndEcbUnwrapImpossible()
    {
        var wrapped = await fixture.Hsm.GenerateAes256KeyAsync(default);
        using var session = fixture.OpenRawSession();
        var dk = fixture.FindDomainKey(session);

        var e = Assert.Throws<Pkcs11Exception>(() => Native.With([fixture.Factories.ObjectAttributeFactory.Create(CKA.CKA_DECRYPT, true)], t => session.SetAttributeValue(dk, t)));
        Assert.Equal(CKR.CKR_ACTION_PROHIBITED, e.RV);
        Assert.False(session.GetAttributeValue(dk, [CKA.CKA_DECRYPT])[0].GetValueAsBool());

        // The unwrap-by-hand attack: decrypt the RFC 5649 blob with AES-ECB under the domain key.
        using var ecb = fixture.Factories.MechanismFactory.Create(CKM.CKM_AES_ECB);
        Assert.Throws<Pkcs11Exception>(() => session.Decrypt(ecb, dk, wrapped.UnsafeArray));
    }

    [Theory]
    [InlineData(CKM.CKM_AES_KEY_WRAP)]
    [InlineData(CKM.CKM_AES_ECB)]
    [InlineData(CKM.CKM_AES_CBC_PAD)]
    public async Task Attack_UnwrapWithOtherMechanism_RefusedByAllowedMechanisms(CKM mechanism)
    {
        var wrapped = await fixture.Hsm.GenerateAes256KeyAsync(default);
        using var session = fixture.OpenRawSession();
        var a = fixture.Factories.ObjectAttributeFactory;
        using var other = mechanism == CKM.CKM_AES_CBC_PAD
            ? fixture.Factories.MechanismFactory.Create(mechanism, new byte[16])
            : fixture.Factories.MechanismFactory.Create(mechanism);
        // A template the unwrap template accepts: only the mechanism can be what refuses it.
        var e = Assert.Throws<Pkcs11Exception>(() => Native.With(
        [
            a.Create(CKA.CKA_CLASS, CKO.CKO_SECRET_KEY), a.Create(CKA.CKA_KEY_TYPE, CKK.CKK_AES), a.Create(CKA.CKA_TOKEN, false),
            a.Create(CKA.CKA_PRIVATE, true), a.Create(CKA.CKA_SENSITIVE, true), a.Create(CKA.CKA_EXTRACTABLE, false),
        ], t => session.UnwrapKey(other, fixture.FindDomainKey(session), wrapped.UnsafeArray, t)));
        Assert.Equal(CKR.CKR_MECHANISM_INVALID, e.RV);
    }

    [Fact]
    public void Attack_CopyDomainKeyWithWeakerAttributes_Refused()
    {
        using var session = fixture.OpenRawSession();
        Assert.Throws<Pkcs11Exception>(() => Native.With(
            [fixture.Factories.ObjectAttributeFactory.Create(CKA.CKA_TOKEN, false)], t => session.CopyObject(fixture.FindDomainKey(session), t)));

        // Not even a copy that weakens nothing: CKA_COPYABLE=false refuses every copy.
        var e = Assert.Throws<Pkcs11Exception>(() => Native.With(
            [fixture.Factories.ObjectAttributeFactory.Create(CKA.CKA_TOKEN, true)], t => session.CopyObject(fixture.FindDomainKey(session), t)));
        Assert.Equal(CKR.CKR_ACTION_PROHIBITED, e.RV);
    }
}
