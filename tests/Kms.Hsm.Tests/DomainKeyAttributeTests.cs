using System.Text;
using Kms.Testing;
using Net.Pkcs11Interop.Common;
using Net.Pkcs11Interop.HighLevelAPI;

namespace Kms.Hsm.Tests;

/// <summary>
/// The domain key's attribute check (DESIGN's MUSTs), one deviation at a time, on SoftHSM: a
/// key differing from the ceremony's in any single attribute is named for that attribute.
/// </summary>
public sealed class DomainKeyAttributeTests
{
    private const string Label = "kms-domain-key";
    private static readonly byte[] Id = Encoding.UTF8.GetBytes("dk-attributes");

    [Fact]
    public void TheCeremonysKey_NoViolation()
    {
        Assert.Empty(VerifyPlanted(null, null));
    }

    [Theory]
    [InlineData("CKA_SENSITIVE", false, "CKA_SENSITIVE must be True")]
    [InlineData("CKA_EXTRACTABLE", true, "CKA_EXTRACTABLE must be False")]
    [InlineData("CKA_ENCRYPT", true, "CKA_ENCRYPT must be False")]
    [InlineData("CKA_DECRYPT", true, "CKA_DECRYPT must be False")]
    [InlineData("CKA_SIGN", true, "CKA_SIGN must be False")]
    [InlineData("CKA_VERIFY", true, "CKA_VERIFY must be False")]
    [InlineData("CKA_DERIVE", true, "CKA_DERIVE must be False")]
    [InlineData("CKA_MODIFIABLE", true, "CKA_MODIFIABLE must be False")]
    [InlineData("CKA_WRAP", false, "CKA_WRAP must be True")]
    [InlineData("CKA_UNWRAP", false, "CKA_UNWRAP must be True")]
    [InlineData("CKA_PRIVATE", false, "CKA_PRIVATE must be True")]
    public void OneFlagDeviating_NamedAlone(string attribute, bool value, string violation)
    {
        Assert.Equal([violation], VerifyPlanted(Enum.Parse<CKA>(attribute), value));
    }

    [Fact]
    public void AnotherWrapMechanismAllowed_Named()
    {
        Assert.Equal(["CKA_ALLOWED_MECHANISMS must be exactly {CKM_AES_KEY_WRAP_PAD}"], VerifyPlanted(CKA.CKA_ALLOWED_MECHANISMS, null));
    }

    [Fact]
    public void Aes128Key_Named()
    {
        // A domain key of 16 bytes has every flag right; only its length is wrong.
        Assert.Equal(["it must be an AES-256 key"], VerifyPlanted(null, null, valueLength: 16));
    }

    [Fact]
    public void LabelRightButAnotherCkaId_Named()
    {
        // The configuration names the key by label AND CKA_ID: a key with the label alone is not it.
        Assert.Equal(["its label and CKA_ID must both match the configuration"], VerifyPlanted(null, null, expectedId: Encoding.UTF8.GetBytes("dk-other")));
    }

    // Plants the ceremony's key with one attribute changed (null: none), then verifies it.
    private static List<string> VerifyPlanted(CKA? deviating, bool? value, byte[]? expectedId = null, ulong valueLength = 32)
    {
        var token = SoftHsm.CreateToken();
        List<string> violations = [];
        RawToken.WithSession(token, (session, factories) =>
        {
            var a = factories.ObjectAttributeFactory;
            List<IObjectAttribute> nested =
            [
                a.Create(CKA.CKA_SENSITIVE, true), a.Create(CKA.CKA_EXTRACTABLE, false), a.Create(CKA.CKA_PRIVATE, true), a.Create(CKA.CKA_TOKEN, false),
            ];
            var flags = new Dictionary<CKA, bool>
            {
                [CKA.CKA_PRIVATE] = true,
                [CKA.CKA_SENSITIVE] = true,
                [CKA.CKA_EXTRACTABLE] = false,
                [CKA.CKA_WRAP] = true,
                [CKA.CKA_UNWRAP] = true,
                [CKA.CKA_ENCRYPT] = false,
                [CKA.CKA_DECRYPT] = false,
                [CKA.CKA_SIGN] = false,
                [CKA.CKA_VERIFY] = false,
                [CKA.CKA_DERIVE] = false,
                [CKA.CKA_COPYABLE] = false,
                [CKA.CKA_MODIFIABLE] = false,
            };
            if (deviating is { } changed && value is { } changedTo)
            {
                flags[changed] = changedTo;
            }

            var mechanisms = deviating == CKA.CKA_ALLOWED_MECHANISMS ? new List<CKM> { CKM.CKM_AES_KEY_WRAP_PAD, CKM.CKM_AES_KEY_WRAP } : new List<CKM> { CKM.CKM_AES_KEY_WRAP_PAD };
            using var generate = factories.MechanismFactory.Create(CKM.CKM_AES_KEY_GEN);
            try
            {
                using var handle = Native.With(
                [
                    a.Create(CKA.CKA_CLASS, CKO.CKO_SECRET_KEY), a.Create(CKA.CKA_KEY_TYPE, CKK.CKK_AES), a.Create(CKA.CKA_VALUE_LEN, valueLength),
                    a.Create(CKA.CKA_TOKEN, true), a.Create(CKA.CKA_LABEL, Label), a.Create(CKA.CKA_ID, Id),
                    .. flags.Select(f => a.Create(f.Key, f.Value)),
                    a.Create(CKA.CKA_ALLOWED_MECHANISMS, mechanisms), a.Create(CKA.CKA_UNWRAP_TEMPLATE, nested),
                ], t => new DisposableHandle(session, session.GenerateKey(generate, t)));
                violations = DomainKeyLocator.Verify(session, handle.Handle, Label, expectedId ?? Id, HsmProfile.Load("softhsm2"));
            }
            finally
            {
                foreach (var attribute in nested)
                {
                    attribute.Dispose();
                }
            }
        });
        return violations;
    }

    // The planted token object is destroyed with the test's token; this only keeps the handle.
    private sealed class DisposableHandle(ISession session, IObjectHandle handle) : IDisposable
    {
        public IObjectHandle Handle { get; } = handle;

        public void Dispose() => session.DestroyObject(Handle);
    }
}
