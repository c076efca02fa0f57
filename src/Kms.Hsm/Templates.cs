using System.Text;
using Net.Pkcs11Interop.Common;
using Net.Pkcs11Interop.HighLevelAPI;
using Net.Pkcs11Interop.HighLevelAPI.Factories;

namespace Kms.Hsm;

/// <summary>
/// Every attribute template the adapter uses. Every usage attribute is set explicitly
/// (SoftHSM defaults secret keys to CKA_SIGN/CKA_VERIFY = true), every key is
/// CKA_PRIVATE (a public secret key is stored in plaintext on SoftHSM's disk), and
/// CKA_MODIFIABLE comes last (SoftHSM refuses later attributes of an unmodifiable object).
/// </summary>
internal sealed class Templates(IObjectAttributeFactory attributes, HsmProfile profile)
{
    /// <summary>
    /// The domain key (DESIGN.md, "Key hierarchy"): AES-256 token key, sensitive, never
    /// extractable, wrap/unwrap only, unmodifiable, KWP only, and an unwrap template that
    /// forces everything it unwraps to be sensitive and non-extractable.
    /// </summary>
    public List<IObjectAttribute> DomainKey(string label, string id)
    {
        var template = new List<IObjectAttribute>
        {
            attributes.Create(CKA.CKA_CLASS, CKO.CKO_SECRET_KEY),
            attributes.Create(CKA.CKA_KEY_TYPE, CKK.CKK_AES),
            attributes.Create(CKA.CKA_VALUE_LEN, 32UL),
            attributes.Create(CKA.CKA_TOKEN, true),
            attributes.Create(CKA.CKA_PRIVATE, true),
            attributes.Create(CKA.CKA_LABEL, label),
            attributes.Create(CKA.CKA_ID, Encoding.UTF8.GetBytes(id)),
            attributes.Create(CKA.CKA_SENSITIVE, true),
            attributes.Create(CKA.CKA_EXTRACTABLE, false),
            attributes.Create(CKA.CKA_WRAP, true),
            attributes.Create(CKA.CKA_UNWRAP, true),
            attributes.Create(CKA.CKA_ENCRYPT, false),
            attributes.Create(CKA.CKA_DECRYPT, false),
            attributes.Create(CKA.CKA_SIGN, false),
            attributes.Create(CKA.CKA_VERIFY, false),
            attributes.Create(CKA.CKA_DERIVE, false),
            attributes.Create(CKA.CKA_COPYABLE, false),
        };
        if (profile.AllowedMechanismsAttribute)
        {
            template.Add(attributes.Create(CKA.CKA_ALLOWED_MECHANISMS, new List<CKM> { CKM.CKM_AES_KEY_WRAP_PAD }));
        }

        if (profile.UnwrapTemplateAttribute)
        {
            template.Add(attributes.Create(CKA.CKA_UNWRAP_TEMPLATE, new List<IObjectAttribute>
            {
                attributes.Create(CKA.CKA_SENSITIVE, true),
                attributes.Create(CKA.CKA_EXTRACTABLE, false),
            }));
        }

        template.Add(attributes.Create(CKA.CKA_MODIFIABLE, false));
        return template;
    }

    /// <summary>
    /// A new AES-256 key version, generated as a session object that is extractable only so
    /// the domain key can wrap it; it is destroyed right after the wrap.
    /// </summary>
    public List<IObjectAttribute> GeneratedAesKey()
    {
        var template = AesVersionKey(extractable: true);
        template.Insert(2, attributes.Create(CKA.CKA_VALUE_LEN, 32UL));
        return template;
    }

    /// <summary>
    /// An unwrapped AES key version in use: a session object, sensitive, not extractable,
    /// encrypt/decrypt with GCM only. CKA_VALUE_LEN must not be given (it comes from the blob).
    /// </summary>
    public List<IObjectAttribute> UnwrappedAesKey() => AesVersionKey(extractable: false);

    /// <summary>The attributes a domain-key search matches on.</summary>
    public List<IObjectAttribute> FindSecretKey(CKA attribute, object value) =>
    [
        attributes.Create(CKA.CKA_CLASS, CKO.CKO_SECRET_KEY),
        value is string text ? attributes.Create(attribute, text) : attributes.Create(attribute, (byte[])value),
    ];

    private List<IObjectAttribute> AesVersionKey(bool extractable)
    {
        var template = new List<IObjectAttribute>
        {
            attributes.Create(CKA.CKA_CLASS, CKO.CKO_SECRET_KEY),
            attributes.Create(CKA.CKA_KEY_TYPE, CKK.CKK_AES),
            attributes.Create(CKA.CKA_TOKEN, false),
            attributes.Create(CKA.CKA_PRIVATE, true),
            attributes.Create(CKA.CKA_SENSITIVE, true),
            attributes.Create(CKA.CKA_EXTRACTABLE, extractable),
            attributes.Create(CKA.CKA_ENCRYPT, true),
            attributes.Create(CKA.CKA_DECRYPT, true),
            attributes.Create(CKA.CKA_WRAP, false),
            attributes.Create(CKA.CKA_UNWRAP, false),
            attributes.Create(CKA.CKA_SIGN, false),
            attributes.Create(CKA.CKA_VERIFY, false),
            attributes.Create(CKA.CKA_DERIVE, false),
            attributes.Create(CKA.CKA_COPYABLE, false),
        };
        if (extractable && profile.WrapWithTrusted)
        {
            template.Add(attributes.Create(CKA.CKA_WRAP_WITH_TRUSTED, true));
        }

        if (profile.AllowedMechanismsAttribute)
        {
            template.Add(attributes.Create(CKA.CKA_ALLOWED_MECHANISMS, new List<CKM> { CKM.CKM_AES_GCM }));
        }

        template.Add(attributes.Create(CKA.CKA_MODIFIABLE, false));
        return template;
    }
}
