using System.Text;
using Kms.Core.Keys;
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
/// <remarks>
/// Templates are returned as <see cref="Template"/>s to be disposed after the call:
/// Pkcs11Interop frees an attribute's native memory in a finalizer, and a temporary list
/// passed to C_UnwrapKey can be collected while the HSM is still reading it (seen as
/// corrupted attributes under GC pressure).
/// </remarks>
internal sealed class Templates(IObjectAttributeFactory attributes, HsmProfile profile)
{
    /// <summary>
    /// The domain key (DESIGN.md, "Key hierarchy"): AES-256 token key, sensitive, never
    /// extractable, wrap/unwrap only, unmodifiable, KWP only, and an unwrap template that
    /// forces everything it unwraps to be sensitive and non-extractable. With
    /// <paramref name="importedCheckValue"/>: the template for creating a ceremony's domain key
    /// from its value (the caller adds <c>CKA_VALUE</c>).
    /// </summary>
    public Template DomainKey(string label, string id, byte[]? importedCheckValue = null)
    {
        var template = new Template(
        [
            attributes.Create(CKA.CKA_CLASS, CKO.CKO_SECRET_KEY),
            attributes.Create(CKA.CKA_KEY_TYPE, CKK.CKK_AES),
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
        ]);
        if (importedCheckValue is null)
        {
            template.Add(attributes.Create(CKA.CKA_VALUE_LEN, 32UL));
        }
        else
        {
            // An imported key's length comes from its value; the check value is verified by
            // SoftHSM against it (CKR_ATTRIBUTE_VALUE_INVALID on a mismatch).
            template.Add(attributes.Create(CKA.CKA_CHECK_VALUE, importedCheckValue));
        }

        template.Add(attributes.Create(CKA.CKA_ALLOWED_MECHANISMS, new List<CKM> { CKM.CKM_AES_KEY_WRAP_PAD }));

        // Private session objects too: SoftHSM writes a public token object's value to its
        // token directory unencrypted, so a PIN holder unwrapping a stored blob as one would
        // have put the key on disk in clear (HSM-NOTES).
        List<IObjectAttribute> nested =
        [
            attributes.Create(CKA.CKA_SENSITIVE, true),
            attributes.Create(CKA.CKA_EXTRACTABLE, false),
            attributes.Create(CKA.CKA_PRIVATE, true),
            attributes.Create(CKA.CKA_TOKEN, false),
        ];
        template.Own(nested);
        template.Add(attributes.Create(CKA.CKA_UNWRAP_TEMPLATE, nested));

        template.Add(attributes.Create(CKA.CKA_MODIFIABLE, false));
        return template;
    }

    /// <summary>
    /// The OLD domain key during a domain-key rotation, imported from its value into the
    /// temporary rotation token: a session object (never written to the token's store, gone
    /// with the process), sensitive, never extractable, unmodifiable, KWP only, <b>unwrap
    /// only</b>, with an unwrap template that lets what it unwraps be extractable (so the new
    /// domain key can wrap it again) but still sensitive and a session object. That unwrap
    /// template is exactly what the production domain key forbids: this key must never exist on a
    /// production token, and the rotation token is wiped when the rotation ends.
    /// </summary>
    public Template RotationOldDomainKey(byte[] checkValue)
    {
        var template = RotationDomainKey("kms-rotation-old-domain-key", wrap: false, unwrap: true, checkValue);
        List<IObjectAttribute> nested =
        [
            attributes.Create(CKA.CKA_TOKEN, false),
            attributes.Create(CKA.CKA_SENSITIVE, true),
            attributes.Create(CKA.CKA_EXTRACTABLE, true),
        ];
        template.Own(nested);
        template.Add(attributes.Create(CKA.CKA_UNWRAP_TEMPLATE, nested));
        template.Add(attributes.Create(CKA.CKA_MODIFIABLE, false));
        return template;
    }

    /// <summary>
    /// The NEW domain key during a domain-key rotation, imported from its value into the
    /// temporary rotation token: a session object, sensitive, never extractable, unmodifiable,
    /// KWP only, <b>wrap only</b>. Production tokens get it later through <c>restore-domain</c>
    /// with the production template.
    /// </summary>
    public Template RotationNewDomainKey(byte[] checkValue)
    {
        var template = RotationDomainKey("kms-rotation-new-domain-key", wrap: true, unwrap: false, checkValue);
        template.Add(attributes.Create(CKA.CKA_MODIFIABLE, false));
        return template;
    }

    /// <summary>
    /// A key version unwrapped under the old domain key only to be wrapped under the new one:
    /// a session object, sensitive, extractable (for the wrap), no usage at all.
    /// </summary>
    public Template RewrappedAesKey() => TransitSecretKey(CKK.CKK_AES);

    /// <summary>As <see cref="RewrappedAesKey"/>, for an EC private key (the curve comes from the blob).</summary>
    public Template RewrappedEcPrivateKey() => TransitPrivateKey(CKK.CKK_EC);

    /// <summary>As <see cref="RewrappedAesKey"/>, for an RSA private key (the modulus comes from the blob).</summary>
    public Template RewrappedRsaPrivateKey() => TransitPrivateKey(CKK.CKK_RSA);

    /// <summary>As <see cref="RewrappedAesKey"/>, for an HMAC key (a generic secret; its length comes from the blob).</summary>
    public Template RewrappedGenericSecret() => TransitSecretKey(CKK.CKK_GENERIC_SECRET);

    /// <summary>
    /// A new HMAC key version of <paramref name="length"/> bytes: a generic secret generated as
    /// a session object, sign/verify with <paramref name="mechanism"/> only, extractable only so
    /// the domain key can wrap it; destroyed right after the wrap.
    /// </summary>
    public Template GeneratedHmacKey(int length, CKM mechanism)
    {
        var template = HmacKey(extractable: true, mechanism);
        template.Insert(2, attributes.Create(CKA.CKA_VALUE_LEN, (ulong)length));
        return template;
    }

    /// <summary>An unwrapped HMAC key version in use: sensitive, not extractable, sign/verify with <paramref name="mechanism"/> only.</summary>
    public Template UnwrappedHmacKey(CKM mechanism) => HmacKey(extractable: false, mechanism);

    /// <summary>
    /// The public half of a new RSA key pair of <paramref name="bits"/> bits, exponent 65537: a
    /// session object that can only <paramref name="usage"/>-verify or -encrypt; destroyed once
    /// its modulus and exponent are read.
    /// </summary>
    public Template GeneratedRsaPublicKey(int bits, RsaUsage usage) => new(
    [
        attributes.Create(CKA.CKA_CLASS, CKO.CKO_PUBLIC_KEY),
        attributes.Create(CKA.CKA_KEY_TYPE, CKK.CKK_RSA),
        attributes.Create(CKA.CKA_MODULUS_BITS, (ulong)bits),
        attributes.Create(CKA.CKA_PUBLIC_EXPONENT, new byte[] { 0x01, 0x00, 0x01 }),
        attributes.Create(CKA.CKA_TOKEN, false),
        attributes.Create(CKA.CKA_PRIVATE, true),
        attributes.Create(CKA.CKA_VERIFY, usage is RsaUsage.SignPss or RsaUsage.SignPkcs1),
        attributes.Create(CKA.CKA_VERIFY_RECOVER, false),
        attributes.Create(CKA.CKA_ENCRYPT, usage == RsaUsage.DecryptOaep),
        attributes.Create(CKA.CKA_WRAP, usage == RsaUsage.UnwrapOaep),
        attributes.Create(CKA.CKA_DERIVE, false),
        attributes.Create(CKA.CKA_COPYABLE, false),
        attributes.Create(CKA.CKA_MODIFIABLE, false),
    ]);

    /// <summary>
    /// The private half of a new RSA key pair: a session object, sensitive, for
    /// <paramref name="usage"/> only (one usage flag, one mechanism), extractable only so the
    /// domain key can wrap it; destroyed right after the wrap.
    /// </summary>
    public Template GeneratedRsaPrivateKey(RsaUsage usage) => RsaPrivateKey(extractable: true, usage);

    /// <summary>An unwrapped RSA private key in use: sensitive, not extractable, <paramref name="usage"/> only. The modulus comes from the blob.</summary>
    public Template UnwrappedRsaPrivateKey(RsaUsage usage) => RsaPrivateKey(extractable: false, usage);

    /// <summary>The public half of a new Ed25519 key pair (<paramref name="ecParams"/> names the curve): verify only; destroyed once its CKA_EC_POINT is read.</summary>
    public Template GeneratedEdwardsPublicKey(byte[] ecParams) => new(
    [
        attributes.Create(CKA.CKA_CLASS, CKO.CKO_PUBLIC_KEY),
        attributes.Create(CKA.CKA_KEY_TYPE, EdDsa.KeyType),
        attributes.Create(CKA.CKA_EC_PARAMS, ecParams),
        attributes.Create(CKA.CKA_TOKEN, false),
        attributes.Create(CKA.CKA_PRIVATE, true),
        attributes.Create(CKA.CKA_VERIFY, true),
        attributes.Create(CKA.CKA_ENCRYPT, false),
        attributes.Create(CKA.CKA_WRAP, false),
        attributes.Create(CKA.CKA_DERIVE, false),
        attributes.Create(CKA.CKA_COPYABLE, false),
        attributes.Create(CKA.CKA_MODIFIABLE, false),
    ]);

    /// <summary>The private half of a new Ed25519 key pair: sensitive, EdDSA signing only, extractable only for the wrap.</summary>
    public Template GeneratedEdwardsPrivateKey() => EdwardsPrivateKey(extractable: true);

    /// <summary>An unwrapped Ed25519 private key in use: sensitive, not extractable, EdDSA signing only.</summary>
    public Template UnwrappedEdwardsPrivateKey() => EdwardsPrivateKey(extractable: false);

    /// <summary>
    /// The ephemeral AES key of a BYOK import, unwrapped (RSA-OAEP) under the import job's key:
    /// a session object, sensitive, never extractable, able only to unwrap with KWP; destroyed
    /// in the same call. Its length comes from the caller's blob (CKA_VALUE_LEN is refused in
    /// unwrap templates) and is checked after the unwrap.
    /// </summary>
    public Template ImportEphemeralKey()
    {
        var template = new Template(
        [
            attributes.Create(CKA.CKA_CLASS, CKO.CKO_SECRET_KEY),
            attributes.Create(CKA.CKA_KEY_TYPE, CKK.CKK_AES),
            attributes.Create(CKA.CKA_TOKEN, false),
            attributes.Create(CKA.CKA_PRIVATE, true),
            attributes.Create(CKA.CKA_SENSITIVE, true),
            attributes.Create(CKA.CKA_EXTRACTABLE, false),
            attributes.Create(CKA.CKA_ENCRYPT, false),
            attributes.Create(CKA.CKA_DECRYPT, false),
            attributes.Create(CKA.CKA_WRAP, false),
            attributes.Create(CKA.CKA_UNWRAP, true),
            attributes.Create(CKA.CKA_SIGN, false),
            attributes.Create(CKA.CKA_VERIFY, false),
            attributes.Create(CKA.CKA_DERIVE, false),
            attributes.Create(CKA.CKA_COPYABLE, false),
        ]);
        template.Add(attributes.Create(CKA.CKA_ALLOWED_MECHANISMS, new List<CKM> { CKM.CKM_AES_KEY_WRAP_PAD }));

        // What it unwraps stays a sensitive session object, whatever template is asked for.
        List<IObjectAttribute> nested = [attributes.Create(CKA.CKA_TOKEN, false), attributes.Create(CKA.CKA_SENSITIVE, true)];
        template.Own(nested);
        template.Add(attributes.Create(CKA.CKA_UNWRAP_TEMPLATE, nested));

        template.Add(attributes.Create(CKA.CKA_MODIFIABLE, false));
        return template;
    }

    /// <summary>
    /// A BYOK import's material, unwrapped under the ephemeral key as the family of
    /// <paramref name="spec"/>: a session object, sensitive, extractable only so the domain key can
    /// wrap it. A private key has no usage at all (as a re-wrapped copy, <see cref="RewrappedAesKey"/>).
    /// </summary>
    public Template ImportedMaterial(KeyAlgorithmSpec spec, CKM hmacMechanism) => spec.Family switch
    {
        // A secret gets its version's usage (one mechanism), so it can be tried before it is
        // wrapped: the HSM may not report its length (SoftHSM: CKA_VALUE_LEN = 0) and would pad a
        // short key to 8 bytes when wrapping it, so the exact copy is the only place to catch it.
        KeyFamily.Aes => AesVersionKey(extractable: true),
        KeyFamily.Hmac => HmacKey(extractable: true, hmacMechanism),
        KeyFamily.Rsa => RewrappedRsaPrivateKey(),
        KeyFamily.Ec => RewrappedEcPrivateKey(),
        KeyFamily.EdDsa => TransitPrivateKey(EdDsa.KeyType),
        _ => throw new ArgumentOutOfRangeException(nameof(spec), spec.Name, null),
    };

    /// <summary>
    /// A second copy of an imported secret, unwrapped under the ephemeral key as a generic secret
    /// for HMAC-SHA256 alone, whatever the secret is imported as: it computes the material's
    /// fingerprint (<c>GeneratedKeyMaterial.MaterialFingerprint</c>) and is destroyed.
    /// A session object, sensitive, never extractable.
    /// </summary>
    public Template ImportFingerprintKey() => HmacKey(extractable: false, CKM.CKM_SHA256_HMAC);

    /// <summary>
    /// A new AES-256 key version, generated as a session object that is extractable only so
    /// the domain key can wrap it; it is destroyed right after the wrap.
    /// </summary>
    public Template GeneratedAesKey()
    {
        var template = AesVersionKey(extractable: true);
        template.Insert(2, attributes.Create(CKA.CKA_VALUE_LEN, 32UL));
        return template;
    }

    /// <summary>
    /// An unwrapped AES key version in use: a session object, sensitive, not extractable,
    /// encrypt/decrypt with GCM only. CKA_VALUE_LEN must not be given (it comes from the blob).
    /// </summary>
    public Template UnwrappedAesKey() => AesVersionKey(extractable: false);

    /// <summary>
    /// The private half of a new EC key pair: a session object, sensitive, ECDSA signing
    /// only, extractable only so the domain key can wrap it; destroyed right after the wrap.
    /// The curve is given in the public half's template.
    /// </summary>
    public Template GeneratedEcPrivateKey() => EcPrivateKey(extractable: true);

    /// <summary>
    /// The public half of a new EC key pair on the curve <paramref name="ecParams"/>: a
    /// session object that can only verify; destroyed once its CKA_EC_POINT is read.
    /// </summary>
    public Template GeneratedEcPublicKey(byte[] ecParams) => new(
    [
        attributes.Create(CKA.CKA_CLASS, CKO.CKO_PUBLIC_KEY),
        attributes.Create(CKA.CKA_KEY_TYPE, CKK.CKK_EC),
        attributes.Create(CKA.CKA_EC_PARAMS, ecParams),
        attributes.Create(CKA.CKA_TOKEN, false),
        attributes.Create(CKA.CKA_PRIVATE, true),
        attributes.Create(CKA.CKA_VERIFY, true),
        attributes.Create(CKA.CKA_VERIFY_RECOVER, false),
        attributes.Create(CKA.CKA_ENCRYPT, false),
        attributes.Create(CKA.CKA_WRAP, false),
        attributes.Create(CKA.CKA_DERIVE, false),
        attributes.Create(CKA.CKA_COPYABLE, false),
        attributes.Create(CKA.CKA_MODIFIABLE, false),
    ]);

    /// <summary>
    /// An unwrapped EC private key in use: a session object, sensitive, not extractable,
    /// ECDSA signing only. The curve comes from the blob (the caller checks it).
    /// </summary>
    public Template UnwrappedEcPrivateKey() => EcPrivateKey(extractable: false);

    /// <summary>The attributes a domain-key search matches on.</summary>
    public Template FindSecretKey(CKA attribute, object value) => new(
    [
        attributes.Create(CKA.CKA_CLASS, CKO.CKO_SECRET_KEY),
        value is string text ? attributes.Create(attribute, text) : attributes.Create(attribute, (byte[])value),
    ]);

    /// <summary>Every session object of this process (test and diagnostics).</summary>
    public Template SessionObjects() => new([attributes.Create(CKA.CKA_TOKEN, false)]);

    /// <summary>The secret-key session objects of this process (test and diagnostics).</summary>
    public Template SessionSecretKeys() => new(
    [
        attributes.Create(CKA.CKA_CLASS, CKO.CKO_SECRET_KEY),
        attributes.Create(CKA.CKA_TOKEN, false),
    ]);

    // CKA_MODIFIABLE is added by the caller, last (after the unwrap template).
    private Template RotationDomainKey(string label, bool wrap, bool unwrap, byte[] checkValue)
    {
        var template = new Template(
        [
            attributes.Create(CKA.CKA_CLASS, CKO.CKO_SECRET_KEY),
            attributes.Create(CKA.CKA_KEY_TYPE, CKK.CKK_AES),
            attributes.Create(CKA.CKA_TOKEN, false),
            attributes.Create(CKA.CKA_PRIVATE, true),
            attributes.Create(CKA.CKA_LABEL, label),
            attributes.Create(CKA.CKA_SENSITIVE, true),
            attributes.Create(CKA.CKA_EXTRACTABLE, false),
            attributes.Create(CKA.CKA_WRAP, wrap),
            attributes.Create(CKA.CKA_UNWRAP, unwrap),
            attributes.Create(CKA.CKA_ENCRYPT, false),
            attributes.Create(CKA.CKA_DECRYPT, false),
            attributes.Create(CKA.CKA_SIGN, false),
            attributes.Create(CKA.CKA_VERIFY, false),
            attributes.Create(CKA.CKA_DERIVE, false),
            attributes.Create(CKA.CKA_COPYABLE, false),
            attributes.Create(CKA.CKA_CHECK_VALUE, checkValue),
        ]);
        template.Add(attributes.Create(CKA.CKA_ALLOWED_MECHANISMS, new List<CKM> { CKM.CKM_AES_KEY_WRAP_PAD }));
        return template;
    }

    private Template EcPrivateKey(bool extractable) => SigningPrivateKey(CKK.CKK_EC, (ulong)CKM.CKM_ECDSA, extractable);

    // EC and Edwards private keys: sign with one mechanism, nothing else.
    private Template SigningPrivateKey(CKK keyType, ulong mechanism, bool extractable)
    {
        var template = new Template(
        [
            attributes.Create(CKA.CKA_CLASS, CKO.CKO_PRIVATE_KEY),
            attributes.Create(CKA.CKA_KEY_TYPE, keyType),
            attributes.Create(CKA.CKA_TOKEN, false),
            attributes.Create(CKA.CKA_PRIVATE, true),
            attributes.Create(CKA.CKA_SENSITIVE, true),
            attributes.Create(CKA.CKA_EXTRACTABLE, extractable),
            attributes.Create(CKA.CKA_SIGN, true),
            attributes.Create(CKA.CKA_SIGN_RECOVER, false),
            attributes.Create(CKA.CKA_DECRYPT, false),
            attributes.Create(CKA.CKA_UNWRAP, false),
            attributes.Create(CKA.CKA_DERIVE, false),
            attributes.Create(CKA.CKA_COPYABLE, false),
        ]);
        if (extractable && profile.WrapWithTrusted)
        {
            template.Add(attributes.Create(CKA.CKA_WRAP_WITH_TRUSTED, true));
        }

        template.Add(attributes.Create(CKA.CKA_ALLOWED_MECHANISMS, new List<ulong> { mechanism }));

        template.Add(attributes.Create(CKA.CKA_MODIFIABLE, false));
        return template;
    }

    // A secret key between an unwrap and a wrap: sensitive, extractable only for the wrap (only
    // under a trusted key, where the profile can), no usage.
    private Template TransitSecretKey(CKK keyType) => Transit(
    [
        attributes.Create(CKA.CKA_CLASS, CKO.CKO_SECRET_KEY),
        attributes.Create(CKA.CKA_KEY_TYPE, keyType),
        attributes.Create(CKA.CKA_TOKEN, false),
        attributes.Create(CKA.CKA_PRIVATE, true),
        attributes.Create(CKA.CKA_SENSITIVE, true),
        attributes.Create(CKA.CKA_EXTRACTABLE, true),
        attributes.Create(CKA.CKA_ENCRYPT, false),
        attributes.Create(CKA.CKA_DECRYPT, false),
        attributes.Create(CKA.CKA_WRAP, false),
        attributes.Create(CKA.CKA_UNWRAP, false),
        attributes.Create(CKA.CKA_SIGN, false),
        attributes.Create(CKA.CKA_VERIFY, false),
        attributes.Create(CKA.CKA_DERIVE, false),
        attributes.Create(CKA.CKA_COPYABLE, false),
    ]);

    // A private key between an unwrap and a wrap: as a transit secret key.
    private Template TransitPrivateKey(CKK keyType) => Transit(
    [
        attributes.Create(CKA.CKA_CLASS, CKO.CKO_PRIVATE_KEY),
        attributes.Create(CKA.CKA_KEY_TYPE, keyType),
        attributes.Create(CKA.CKA_TOKEN, false),
        attributes.Create(CKA.CKA_PRIVATE, true),
        attributes.Create(CKA.CKA_SENSITIVE, true),
        attributes.Create(CKA.CKA_EXTRACTABLE, true),
        attributes.Create(CKA.CKA_SIGN, false),
        attributes.Create(CKA.CKA_SIGN_RECOVER, false),
        attributes.Create(CKA.CKA_DECRYPT, false),
        attributes.Create(CKA.CKA_UNWRAP, false),
        attributes.Create(CKA.CKA_DERIVE, false),
        attributes.Create(CKA.CKA_COPYABLE, false),
    ]);

    // A transit object is extractable like a new version is: only under a trusted key where the
    // profile can (a BYOK import's private key and a domain rotation's copies were not).
    private Template Transit(List<IObjectAttribute> body)
    {
        var template = new Template(body);
        if (profile.WrapWithTrusted)
        {
            template.Add(attributes.Create(CKA.CKA_WRAP_WITH_TRUSTED, true));
        }

        template.Add(attributes.Create(CKA.CKA_MODIFIABLE, false));
        return template;
    }

    private Template RsaPrivateKey(bool extractable, RsaUsage usage)
    {
        var template = new Template(
        [
            attributes.Create(CKA.CKA_CLASS, CKO.CKO_PRIVATE_KEY),
            attributes.Create(CKA.CKA_KEY_TYPE, CKK.CKK_RSA),
            attributes.Create(CKA.CKA_TOKEN, false),
            attributes.Create(CKA.CKA_PRIVATE, true),
            attributes.Create(CKA.CKA_SENSITIVE, true),
            attributes.Create(CKA.CKA_EXTRACTABLE, extractable),
            attributes.Create(CKA.CKA_SIGN, usage is RsaUsage.SignPss or RsaUsage.SignPkcs1),
            attributes.Create(CKA.CKA_SIGN_RECOVER, false),
            attributes.Create(CKA.CKA_DECRYPT, usage == RsaUsage.DecryptOaep),
            attributes.Create(CKA.CKA_UNWRAP, usage == RsaUsage.UnwrapOaep),
            attributes.Create(CKA.CKA_DERIVE, false),
            attributes.Create(CKA.CKA_COPYABLE, false),
        ]);
        if (extractable && profile.WrapWithTrusted)
        {
            template.Add(attributes.Create(CKA.CKA_WRAP_WITH_TRUSTED, true));
        }

        var mechanism = usage switch
        {
            RsaUsage.SignPss => CKM.CKM_RSA_PKCS_PSS,
            RsaUsage.SignPkcs1 => CKM.CKM_RSA_PKCS,
            _ => CKM.CKM_RSA_PKCS_OAEP,
        };
        template.Add(attributes.Create(CKA.CKA_ALLOWED_MECHANISMS, new List<CKM> { mechanism }));

        template.Add(attributes.Create(CKA.CKA_MODIFIABLE, false));
        return template;
    }

    private Template EdwardsPrivateKey(bool extractable) => SigningPrivateKey(EdDsa.KeyType, EdDsa.Mechanism, extractable);

    private Template HmacKey(bool extractable, CKM mechanism)
    {
        var template = new Template(
        [
            attributes.Create(CKA.CKA_CLASS, CKO.CKO_SECRET_KEY),
            attributes.Create(CKA.CKA_KEY_TYPE, CKK.CKK_GENERIC_SECRET),
            attributes.Create(CKA.CKA_TOKEN, false),
            attributes.Create(CKA.CKA_PRIVATE, true),
            attributes.Create(CKA.CKA_SENSITIVE, true),
            attributes.Create(CKA.CKA_EXTRACTABLE, extractable),
            attributes.Create(CKA.CKA_ENCRYPT, false),
            attributes.Create(CKA.CKA_DECRYPT, false),
            attributes.Create(CKA.CKA_WRAP, false),
            attributes.Create(CKA.CKA_UNWRAP, false),
            attributes.Create(CKA.CKA_SIGN, true),
            attributes.Create(CKA.CKA_VERIFY, true),
            attributes.Create(CKA.CKA_DERIVE, false),
            attributes.Create(CKA.CKA_COPYABLE, false),
        ]);
        if (extractable && profile.WrapWithTrusted)
        {
            template.Add(attributes.Create(CKA.CKA_WRAP_WITH_TRUSTED, true));
        }

        template.Add(attributes.Create(CKA.CKA_ALLOWED_MECHANISMS, new List<CKM> { mechanism }));

        template.Add(attributes.Create(CKA.CKA_MODIFIABLE, false));
        return template;
    }

    private Template AesVersionKey(bool extractable)
    {
        var template = new Template(
        [
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
        ]);
        if (extractable && profile.WrapWithTrusted)
        {
            template.Add(attributes.Create(CKA.CKA_WRAP_WITH_TRUSTED, true));
        }

        template.Add(attributes.Create(CKA.CKA_ALLOWED_MECHANISMS, new List<CKM> { CKM.CKM_AES_GCM }));

        template.Add(attributes.Create(CKA.CKA_MODIFIABLE, false));
        return template;
    }
}

/// <summary>What an RSA private key may do: exactly one usage flag and one mechanism.</summary>
internal enum RsaUsage
{
    /// <summary>CKA_SIGN with CKM_RSA_PKCS_PSS.</summary>
    SignPss,

    /// <summary>CKA_SIGN with CKM_RSA_PKCS (over a DigestInfo).</summary>
    SignPkcs1,

    /// <summary>CKA_DECRYPT with CKM_RSA_PKCS_OAEP.</summary>
    DecryptOaep,

    /// <summary>CKA_UNWRAP with CKM_RSA_PKCS_OAEP (a BYOK import job's key).</summary>
    UnwrapOaep,
}

/// <summary>PKCS#11 3.0 EdDSA constants that Pkcs11Interop's 2.40 enums lack.</summary>
internal static class EdDsa
{
    /// <summary>CKK_EC_EDWARDS.</summary>
    public const CKK KeyType = (CKK)0x40;

    /// <summary>CKM_EC_EDWARDS_KEY_PAIR_GEN.</summary>
    public const ulong KeyPairGen = 0x1055;

    /// <summary>CKM_EDDSA.</summary>
    public const ulong Mechanism = 0x1057;
}

/// <summary>
/// An attribute template that owns the native memory of its attributes (nested ones too)
/// and frees it on dispose: keep it in a <c>using</c> across the PKCS#11 call.
/// </summary>
internal sealed class Template(List<IObjectAttribute> attributes) : IDisposable
{
    private readonly List<IObjectAttribute> _nested = [];

    /// <summary>The attributes, in order, for Pkcs11Interop.</summary>
    public List<IObjectAttribute> Attributes { get; } = attributes;

    public void Add(IObjectAttribute attribute) => Attributes.Add(attribute);

    public void Insert(int index, IObjectAttribute attribute) => Attributes.Insert(index, attribute);

    /// <summary>Takes ownership of attributes nested in another attribute (e.g. CKA_UNWRAP_TEMPLATE).</summary>
    public void Own(IEnumerable<IObjectAttribute> nested) => _nested.AddRange(nested);

    public void Dispose()
    {
        foreach (var attribute in Attributes.Concat(_nested))
        {
            attribute.Dispose();
        }
    }
}

/// <summary>Frees attributes read back with <c>C_GetAttributeValue</c> once their values are copied out.</summary>
internal static class AttributeLists
{
    public static void DisposeAll(this List<IObjectAttribute> attributes)
    {
        foreach (var attribute in attributes)
        {
            attribute.Dispose();
        }
    }
}
