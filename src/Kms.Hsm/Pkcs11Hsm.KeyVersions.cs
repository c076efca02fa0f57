using System.Formats.Asn1;
using System.Globalization;
using System.Security.Cryptography;
using System.Text;
using Kms.Core.Crypto;
using Kms.Core.Errors;
using Kms.Core.Keys;
using Kms.Core.Ports;
using Net.Pkcs11Interop.Common;
using Net.Pkcs11Interop.HighLevelAPI;

namespace Kms.Hsm;

// Key versions beyond AES-256-GCM: RSA, EC, Ed25519 and HMAC keys, BYOK import, and what the
// HSM reports about an unwrapped copy. Which algorithms and import methods this HSM serves is
// the profile's data (HsmProfile.UnsupportedAlgorithms / UnsupportedImportMethods), not code.
public sealed partial class Pkcs11Hsm
{
    // DER of the Ed25519 curve OID (1.3.101.112), as CKA_EC_PARAMS and in a SubjectPublicKeyInfo.
    private const string Ed25519Oid = "1.3.101.112";

    // The attributes DescribeKeyVersionAsync reports, in this order (the size attribute is added per family).
    private static readonly CKA[] DescribedAttributes =
    [
        CKA.CKA_CLASS, CKA.CKA_KEY_TYPE, CKA.CKA_TOKEN, CKA.CKA_PRIVATE, CKA.CKA_SENSITIVE, CKA.CKA_EXTRACTABLE,
        CKA.CKA_LOCAL, CKA.CKA_ALWAYS_SENSITIVE, CKA.CKA_NEVER_EXTRACTABLE, CKA.CKA_MODIFIABLE,
        CKA.CKA_ENCRYPT, CKA.CKA_DECRYPT, CKA.CKA_SIGN, CKA.CKA_VERIFY, CKA.CKA_WRAP, CKA.CKA_UNWRAP, CKA.CKA_DERIVE,
        CKA.CKA_ALLOWED_MECHANISMS,
    ];

    /// <inheritdoc />
    public string? UnsupportedReason(KeyAlgorithm algorithm) => _profile.UnsupportedReason(algorithm);

    /// <inheritdoc />
    public string? UnsupportedReason(ImportMethod method) => _profile.UnsupportedReason(method);

    /// <inheritdoc />
    /// <remarks>
    /// Private keys and secrets are generated as session objects that are extractable only so
    /// the domain key can wrap them (KWP); every object a generation creates is destroyed before
    /// it returns. RSA keys get exponent 65537 and exactly one usage (sign with one padding, or
    /// OAEP-decrypt); HMAC keys are generic secrets of the hash's length.
    /// </remarks>
    public async ValueTask<GeneratedKeyMaterial> GenerateKeyVersionAsync(KeyAlgorithm algorithm, CancellationToken cancellationToken)
    {
        var spec = KeyAlgorithms.Of(algorithm);
        RequireSupported(spec);
        switch (spec.Family)
        {
            case KeyFamily.Aes:
                return new GeneratedKeyMaterial(await GenerateAes256KeyAsync(cancellationToken).ConfigureAwait(false), null);
            case KeyFamily.Ec:
                var pair = await GenerateEcKeyPairAsync(spec.Curve!.Value, cancellationToken).ConfigureAwait(false);
                return new GeneratedKeyMaterial(pair.PrivateKey, pair.SubjectPublicKeyInfo);
            case KeyFamily.Rsa:
                return await GenerateRsaKeyPairAsync(spec.KeyBits, RsaUsageOf(spec), cancellationToken).ConfigureAwait(false);
            case KeyFamily.Hmac:
                return await GenerateHmacKeyAsync(spec, cancellationToken).ConfigureAwait(false);
            case KeyFamily.EdDsa:
                return await GenerateEd25519KeyPairAsync(cancellationToken).ConfigureAwait(false);
            default:
                throw new ArgumentOutOfRangeException(nameof(algorithm), algorithm, null);
        }
    }

    /// <inheritdoc />
    /// <remarks>
    /// A digest of the wrong length is INVALID_ARGUMENT before the HSM is asked. RSA-PSS is
    /// CKM_RSA_PKCS_PSS over the digest (MGF1 of the same hash, salt as long as the digest);
    /// PKCS#1 v1.5 is CKM_RSA_PKCS over the DER DigestInfo built here; Ed25519 is CKM_EDDSA over
    /// the message.
    /// </remarks>
    public async ValueTask<byte[]> SignAsync(KeyMaterialRef key, KeyAlgorithm algorithm, byte[] input, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(key);
        ArgumentNullException.ThrowIfNull(input);
        var spec = RequirePurpose(algorithm, KeyPurpose.SignVerify);
        if (spec.Family is KeyFamily.Ec)
        {
            return await SignEcdsaAsync(key, spec.Curve!.Value, input, cancellationToken).ConfigureAwait(false);
        }

        if (spec.Family is KeyFamily.Rsa && input.Length != spec.DigestLength)
        {
            throw KmsErrors.InvalidArgument("digest", $"a {spec.Name} digest is {spec.DigestLength} bytes, not {input.Length}");
        }

        return await WithKeyAsync("sign", key, HandleKindOf(spec), (session, handle) => Sign(session, handle, spec, input, $"key version {key.Id}"), cancellationToken)
            .ConfigureAwait(false);
    }

    /// <inheritdoc />
    /// <remarks>
    /// A ciphertext of another length than the modulus, and every return value the profile lists
    /// as an OAEP failure (<see cref="HsmProfile.OaepFailureReturnValues"/>), is the one opaque
    /// DECRYPTION_FAILED.
    /// </remarks>
    public async ValueTask<byte[]> DecryptRsaOaepAsync(KeyMaterialRef key, KeyAlgorithm algorithm, byte[] ciphertext, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(key);
        ArgumentNullException.ThrowIfNull(ciphertext);
        var spec = RequirePurpose(algorithm, KeyPurpose.AsymmetricDecrypt);
        if (ciphertext.Length != spec.KeyBits / 8)
        {
            throw KmsErrors.DecryptionFailed();
        }

        return await WithKeyAsync("decrypt", key, KeyHandleKind.RsaDecryptOaep, (session, handle) =>
        {
            try
            {
                return DecryptOaep(session, handle, spec.Digest!.Value, ciphertext);
            }
            catch (Pkcs11Exception e) when (_profile.OaepFailures.Contains(e.RV))
            {
                throw KmsErrors.DecryptionFailed();
            }
        }, cancellationToken).ConfigureAwait(false);
    }

    /// <inheritdoc />
    public async ValueTask<byte[]> ComputeMacAsync(KeyMaterialRef key, KeyAlgorithm algorithm, byte[] data, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(key);
        ArgumentNullException.ThrowIfNull(data);
        var spec = RequirePurpose(algorithm, KeyPurpose.Mac);
        return await WithKeyAsync("mac", key, HandleKindOf(spec), (session, handle) => Mac(session, handle, spec, data), cancellationToken).ConfigureAwait(false);
    }

    /// <inheritdoc />
    public async ValueTask<byte[][]> ComputeMacManyAsync(KeyMaterialRef key, KeyAlgorithm algorithm, IReadOnlyList<byte[]> inputs, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(key);
        ArgumentNullException.ThrowIfNull(inputs);
        var spec = RequirePurpose(algorithm, KeyPurpose.Mac);
        return await WithKeyAsync("mac", key, HandleKindOf(spec), (session, handle) =>
        {
            var results = new byte[inputs.Count][];
            for (var i = 0; i < inputs.Count; i++)
            {
                results[i] = Mac(session, handle, spec, inputs[i]);
            }

            return results;
        }, cancellationToken).ConfigureAwait(false);
    }

    /// <inheritdoc />
    /// <remarks>The private key can only unwrap, with CKM_RSA_PKCS_OAEP; it is a key version like any other (wrapped under the domain key).</remarks>
    public ValueTask<GeneratedKeyMaterial> GenerateImportWrappingKeyAsync(ImportMethod method, CancellationToken cancellationToken)
    {
        RequireSupported(method);
        return GenerateRsaKeyPairAsync(ImportMethods.ModulusBits(method), RsaUsage.UnwrapOaep, cancellationToken);
    }

    /// <inheritdoc />
    /// <remarks>
    /// <para>The HSM has no CKM_RSA_AES_KEY_WRAP, so its two steps are done apart: C_UnwrapKey with
    /// CKM_RSA_PKCS_OAEP under the job's key gives an ephemeral AES key (a session object,
    /// unwrap-only, KWP only, never extractable), C_UnwrapKey with CKM_AES_KEY_WRAP_PAD under it
    /// gives the material as a session object with no usage, sensitive and extractable only so the
    /// domain key can wrap it. Both are destroyed in every path before this returns.</para>
    /// <para>The material is checked in the HSM (AES: 32 bytes; HMAC: the hash's length; RSA: the
    /// modulus size; EC: the curve); a key pair is then unwrapped as the version will be used and
    /// must sign a random digest that verifies under the public key (or decrypt what .NET
    /// encrypted to it). Every failure is INVALID_ARGUMENT naming what is wrong, never a byte of
    /// the key.</para>
    /// </remarks>
    public async ValueTask<GeneratedKeyMaterial> ImportKeyVersionAsync(
        KeyMaterialRef wrappingKey,
        ImportMethod method,
        KeyAlgorithm algorithm,
        byte[] wrappedKey,
        byte[]? subjectPublicKeyInfo,
        CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(wrappingKey);
        ArgumentNullException.ThrowIfNull(wrappedKey);
        RequireSupported(method);
        var spec = KeyAlgorithms.Of(algorithm);
        RequireSupported(spec);
        if (spec.Family is KeyFamily.EdDsa)
        {
            // .NET has no Ed25519 to check the pair with, and SoftHSM cannot wrap the key anyway.
            throw KmsErrors.FailedPrecondition($"the PKCS#11 adapter cannot import {spec.Name} keys");
        }

        var modulusBytes = ImportMethods.ModulusBits(method) / 8;
        if (wrappedKey.Length < modulusBytes + 16)
        {
            throw KmsErrors.InvalidArgument("wrapped_key", $"{ImportMethods.Name(method)} material is the {modulusBytes}-byte RSA-OAEP block followed by at least 16 bytes of AES-KWP, not {wrappedKey.Length} bytes");
        }

        using var callerPublicKey = CallerPublicKey(spec, subjectPublicKeyInfo);
        var (wrapped, derivedPublicKey, secretFingerprint) = await WithKeyAsync("import", wrappingKey, KeyHandleKind.ImportUnwrap, (session, state, jobKey) =>
            UnwrapImported(session, state, jobKey, method, spec, wrappedKey, modulusBytes), cancellationToken).ConfigureAwait(false);

        if (!spec.IsAsymmetric)
        {
            return new GeneratedKeyMaterial(wrapped, null) { MaterialFingerprint = secretFingerprint };
        }

        byte[] publicKey;
        if (spec.Family is KeyFamily.Rsa)
        {
            publicKey = derivedPublicKey!;
            if (callerPublicKey is { Rsa: { } given } && !SameRsaPublicKey(given, publicKey))
            {
                throw KmsErrors.InvalidArgument("public_key", "does not match the imported RSA private key");
            }
        }
        else
        {
            // Stored, answered by GetPublicKey and verified with in one form whatever encoding of
            // the point the caller sent (CallerPublicKey took it; a BIT STRING declaring padding
            // bits is one .NET reads): the named-curve, uncompressed SPKI .NET writes.
            publicKey = CanonicalPublicKey(spec, subjectPublicKeyInfo!);
        }

        await CheckPairwiseConsistencyAsync(spec, wrapped, publicKey, cancellationToken).ConfigureAwait(false);
        return new GeneratedKeyMaterial(wrapped, publicKey) { MaterialFingerprint = GeneratedKeyMaterial.PublicKeyFingerprint(CanonicalPublicKey(spec, publicKey)) };
    }

    // A key pair's public key as .NET writes it (an EC point uncompressed, its curve named): the
    // form stored, so neither the key served nor the fingerprint of one pair depends on how the
    // caller encoded the key it gave.
    private static byte[] CanonicalPublicKey(KeyAlgorithmSpec spec, byte[] subjectPublicKeyInfo)
    {
        if (spec.Family is KeyFamily.Rsa)
        {
            using var rsa = RSA.Create();
            rsa.ImportSubjectPublicKeyInfo(subjectPublicKeyInfo, out _);
            return rsa.ExportSubjectPublicKeyInfo();
        }

        using var ec = ECDsa.Create();
        ec.ImportSubjectPublicKeyInfo(subjectPublicKeyInfo, out _);
        return ec.ExportSubjectPublicKeyInfo();
    }

    /// <inheritdoc />
    /// <remarks>
    /// The version is leased as it is used (same cache entry as its operations) and its attributes
    /// read with C_GetAttributeValue; attributes the HSM does not show are left out. Values are
    /// "true"/"false", constant names (CKO_SECRET_KEY, CKK_AES; mechanisms joined by ','), or
    /// decimal numbers.
    /// </remarks>
    public async ValueTask<KeyVersionProperties> DescribeKeyVersionAsync(KeyMaterialRef key, KeyAlgorithm algorithm, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(key);
        var spec = KeyAlgorithms.Of(algorithm);
        return await WithKeyAsync("describe", key, HandleKindOf(spec), (session, handle) =>
        {
            var attributes = ReadDescription(session, handle, spec);
            var checkValue = spec.Family switch
            {
                KeyFamily.Aes => AesCheckValue(session, handle),
                KeyFamily.Hmac => Mac(session, handle, spec, Encoding.ASCII.GetBytes(KeyVersionProperties.CheckValueText))[..8],
                _ => null,
            };
            return new KeyVersionProperties(attributes, checkValue);
        }, cancellationToken).ConfigureAwait(false);
    }

    private ValueTask<GeneratedKeyMaterial> GenerateRsaKeyPairAsync(int bits, RsaUsage usage, CancellationToken cancellationToken) =>
        RunSlowAsync("generate key pair", (session, state) =>
        {
            var factories = _module.Factories;
            using var generate = factories.MechanismFactory.Create(CKM.CKM_RSA_PKCS_KEY_PAIR_GEN);
            using var wrap = factories.MechanismFactory.Create(CKM.CKM_AES_KEY_WRAP_PAD);
            using var publicTemplate = _templates.GeneratedRsaPublicKey(bits, usage);
            using var privateTemplate = _templates.GeneratedRsaPrivateKey(usage);
            session.GenerateKeyPair(generate, publicTemplate.Attributes, privateTemplate.Attributes, out var publicKey, out var privateKey);
            try
            {
                var wrapped = new WrappedKeyMaterial(session.WrapKey(wrap, state.DomainKey, privateKey));
                var spki = RsaSubjectPublicKeyInfo(session, publicKey) is { Bits: var read, Spki: var der } && read == bits
                    ? der
                    : throw KmsErrors.Internal($"the HSM generated an RSA key of another size than {bits} bits");
                return new GeneratedKeyMaterial(wrapped, spki);
            }
            finally
            {
                try
                {
                    DestroyExtractableCopy(session, state, privateKey);
                }
                finally
                {
                    DestroyExtractableCopy(session, state, publicKey);
                }
            }
        }, cancellationToken);

    private ValueTask<GeneratedKeyMaterial> GenerateHmacKeyAsync(KeyAlgorithmSpec spec, CancellationToken cancellationToken) =>
        RunAsync("generate key", (session, state) =>
        {
            var factories = _module.Factories;
            using var generate = factories.MechanismFactory.Create(CKM.CKM_GENERIC_SECRET_KEY_GEN);
            using var wrap = factories.MechanismFactory.Create(CKM.CKM_AES_KEY_WRAP_PAD);
            using var template = _templates.GeneratedHmacKey(spec.SecretLength, HmacMechanism(spec));
            var key = session.GenerateKey(generate, template.Attributes);
            try
            {
                return new GeneratedKeyMaterial(new WrappedKeyMaterial(session.WrapKey(wrap, state.DomainKey, key)), null);
            }
            finally
            {
                DestroyExtractableCopy(session, state, key);
            }
        }, cancellationToken);

    private ValueTask<GeneratedKeyMaterial> GenerateEd25519KeyPairAsync(CancellationToken cancellationToken) =>
        RunAsync("generate key pair", (session, state) =>
        {
            var factories = _module.Factories;
            using var generate = factories.MechanismFactory.Create(EdDsa.KeyPairGen);
            using var wrap = factories.MechanismFactory.Create(CKM.CKM_AES_KEY_WRAP_PAD);
            using var publicTemplate = _templates.GeneratedEdwardsPublicKey(Ed25519EcParams());
            using var privateTemplate = _templates.GeneratedEdwardsPrivateKey();
            session.GenerateKeyPair(generate, publicTemplate.Attributes, privateTemplate.Attributes, out var publicKey, out var privateKey);
            try
            {
                var wrapped = new WrappedKeyMaterial(session.WrapKey(wrap, state.DomainKey, privateKey));
                return new GeneratedKeyMaterial(wrapped, Ed25519SubjectPublicKeyInfo(ReadEcPoint(session, publicKey)));
            }
            finally
            {
                try
                {
                    DestroyExtractableCopy(session, state, privateKey);
                }
                finally
                {
                    DestroyExtractableCopy(session, state, publicKey);
                }
            }
        }, cancellationToken);

    private byte[] Sign(ISession session, IObjectHandle handle, KeyAlgorithmSpec spec, byte[] input, string what)
    {
        var factories = _module.Factories;
        byte[] signature;
        switch (spec.Family, spec.Padding)
        {
            case (KeyFamily.Rsa, RsaPadding.Pss):
                {
                    var digest = spec.Digest!.Value;
                    using var parameters = factories.MechanismParamsFactory.CreateCkRsaPkcsPssParams(
                        (ulong)HashMechanism(digest), (ulong)Mgf1(digest), (ulong)spec.DigestLength);
                    using var mechanism = factories.MechanismFactory.Create(CKM.CKM_RSA_PKCS_PSS, parameters);
                    signature = session.Sign(mechanism, handle, input);
                    break;
                }

            case (KeyFamily.Rsa, RsaPadding.Pkcs1):
                {
                    using var mechanism = factories.MechanismFactory.Create(CKM.CKM_RSA_PKCS);
                    signature = session.Sign(mechanism, handle, DigestInfo(spec.Digest!.Value, input));
                    break;
                }

            case (KeyFamily.Ec, _):
                {
                    using var mechanism = factories.MechanismFactory.Create(CKM.CKM_ECDSA);
                    signature = session.Sign(mechanism, handle, input);
                    break;
                }

            case (KeyFamily.EdDsa, _):
                {
                    using var mechanism = factories.MechanismFactory.Create(EdDsa.Mechanism);
                    signature = session.Sign(mechanism, handle, input);
                    break;
                }

            default:
                throw new ArgumentOutOfRangeException(nameof(spec), spec.Name, "not a signing algorithm");
        }

        var expected = spec.Family switch
        {
            KeyFamily.Rsa => spec.KeyBits / 8,
            KeyFamily.Ec => 2 * EcCurveParameters.Of(spec.Curve!.Value).FieldSize,
            _ => 64,
        };
        return signature.Length == expected
            ? signature
            : throw KmsErrors.Internal($"{what} gave a {signature.Length}-byte signature, not the {expected} bytes of a {spec.Name} key");
    }

    private byte[] DecryptOaep(ISession session, IObjectHandle handle, DigestAlgorithm digest, byte[] ciphertext)
    {
        var factories = _module.Factories;
        using var parameters = OaepParameters(digest);
        using var mechanism = factories.MechanismFactory.Create(CKM.CKM_RSA_PKCS_OAEP, parameters);
        return ZeroingSession.Decrypt(session, mechanism, handle, ciphertext);
    }

    private byte[] Mac(ISession session, IObjectHandle handle, KeyAlgorithmSpec spec, byte[] data)
    {
        using var mechanism = _module.Factories.MechanismFactory.Create(HmacMechanism(spec));
        return session.Sign(mechanism, handle, data);
    }

    private Net.Pkcs11Interop.HighLevelAPI.MechanismParams.ICkRsaPkcsOaepParams OaepParameters(DigestAlgorithm digest) =>
        _module.Factories.MechanismParamsFactory.CreateCkRsaPkcsOaepParams(
            (ulong)HashMechanism(digest), (ulong)Mgf1(digest), (ulong)CKZ.CKZ_DATA_SPECIFIED, null);

    // The AES check value: the first 8 bytes of the GCM tag of the empty message under the
    // all-zero 12-byte IV with the check-value text as AAD (anyone holding the key can recompute it).
    private byte[] AesCheckValue(ISession session, IObjectHandle handle)
    {
        var factories = _module.Factories;
        using var parameters = factories.MechanismParamsFactory.CreateCkGcmParams(
            new byte[12], 96, Encoding.ASCII.GetBytes(KeyVersionProperties.CheckValueText), 128);
        using var mechanism = factories.MechanismFactory.Create(CKM.CKM_AES_GCM, parameters);
        var tag = session.Encrypt(mechanism, handle, []);
        return tag.Length == 16 ? tag[..8] : throw KmsErrors.Internal($"the HSM returned {tag.Length} bytes for the GCM tag of the empty message");
    }

    private (WrappedKeyMaterial Wrapped, byte[]? PublicKey, string? SecretFingerprint) UnwrapImported(
        ISession session, SlotState state, IObjectHandle jobKey, ImportMethod method, KeyAlgorithmSpec spec, byte[] wrappedKey, int modulusBytes)
    {
        var (jobBits, jobPublicKey) = RsaSubjectPublicKeyInfo(session, jobKey);
        if (jobBits != ImportMethods.ModulusBits(method))
        {
            throw KmsErrors.Internal($"the import job's key is {jobBits} bits, not the {ImportMethods.ModulusBits(method)} of {ImportMethods.Name(method)}");
        }

        var factories = _module.Factories;
        using var oaepParameters = OaepParameters(ImportMethods.OaepDigest(method));
        using var oaep = factories.MechanismFactory.Create(CKM.CKM_RSA_PKCS_OAEP, oaepParameters);
        using var kwp = factories.MechanismFactory.Create(CKM.CKM_AES_KEY_WRAP_PAD);
        using var ephemeralTemplate = _templates.ImportEphemeralKey();
        using var materialTemplate = _templates.ImportedMaterial(spec, spec.Family is KeyFamily.Hmac ? HmacMechanism(spec) : CKM.CKM_AES_KEY_WRAP_PAD);
        IObjectHandle ephemeral;
        try
        {
            ephemeral = session.UnwrapKey(oaep, jobKey, wrappedKey[..modulusBytes], ephemeralTemplate.Attributes);
        }
        catch (Pkcs11Exception e) when (_profile.OaepFailures.Contains(e.RV))
        {
            throw KmsErrors.InvalidArgument("wrapped_key", $"its first {modulusBytes} bytes do not RSA-OAEP-decrypt under the import job's key to an AES key");
        }

        try
        {
            // An HSM that does not report the length (SoftHSM: 0) cannot tell AES-128 from AES-256 here.
            var ephemeralLength = ReadUlong(session, ephemeral, CKA.CKA_VALUE_LEN);
            if (ephemeralLength is not (0 or 32))
            {
                throw KmsErrors.InvalidArgument("wrapped_key", $"the ephemeral key is {ephemeralLength} bytes, not a 32-byte AES-256 key");
            }

            IObjectHandle material;
            try
            {
                material = session.UnwrapKey(kwp, ephemeral, wrappedKey[modulusBytes..], materialTemplate.Attributes);
            }
            catch (Pkcs11Exception e) when (_profile.KwpUnwrapFailures.Contains(e.RV))
            {
                throw KmsErrors.InvalidArgument("wrapped_key", $"the key material does not unwrap (AES-KWP) under the ephemeral key as {MaterialName(spec)}");
            }

            try
            {
                var publicKey = CheckImportedMaterial(session, material, spec, wrappedKey.Length - modulusBytes);
                string? fingerprint = null;
                if (!spec.IsAsymmetric)
                {
                    TrySecret(session, material, spec);
                    fingerprint = SecretFingerprint(session, kwp, ephemeral, wrappedKey[modulusBytes..], GeneratedKeyMaterial.SecretFingerprintInput(spec.SecretLength, jobPublicKey));
                }

                return (new WrappedKeyMaterial(session.WrapKey(kwp, state.DomainKey, material)), publicKey, fingerprint);
            }
            finally
            {
                DestroyExtractableCopy(session, state, material);
            }
        }
        finally
        {
            DestroyExtractableCopy(session, state, ephemeral);
        }
    }

    // What the unwrap template cannot say: the size or curve. Returns an RSA key's SubjectPublicKeyInfo.
    private static byte[]? CheckImportedMaterial(ISession session, IObjectHandle material, KeyAlgorithmSpec spec, int kwpLength)
    {
        switch (spec.Family)
        {
            case KeyFamily.Aes or KeyFamily.Hmac:
                // KWP of n bytes is n rounded up to 8, plus 8; the HSM may not report the length
                // (SoftHSM says 0), so a shorter key that pads to the same length is caught when
                // the version is first used (CheckSecretInUse).
                var length = ReadUlong(session, material, CKA.CKA_VALUE_LEN);
                var paddedLength = ((spec.SecretLength + 7) / 8 * 8) + 8;
                return kwpLength == paddedLength && (length is 0 || length == (ulong)spec.SecretLength)
                    ? null
                    : throw KmsErrors.InvalidArgument("wrapped_key", length != 0
                        ? $"{spec.Name} takes a {spec.SecretLength}-byte key, not {length} bytes"
                        : $"{spec.Name} takes a {spec.SecretLength}-byte key; the AES-KWP block holds {kwpLength - 15} to {kwpLength - 8} bytes");
            case KeyFamily.Rsa:
                var (bits, spki) = RsaSubjectPublicKeyInfo(session, material);
                if (bits != spec.KeyBits)
                {
                    throw KmsErrors.InvalidArgument("wrapped_key", $"{spec.Name} takes a {spec.KeyBits}-bit RSA key, not {bits} bits");
                }

                // The exponent the HSM gives the keys it generates. A small one (3) invites the
                // forgeries of a lax PKCS#1 v1.5 verifier elsewhere; an odd other one gains nothing.
                return HasExponent65537(spki)
                    ? spki
                    : throw KmsErrors.InvalidArgument("wrapped_key", $"{spec.Name} takes an RSA key with public exponent 65537");
            case KeyFamily.Ec:
                var curve = EcCurveParameters.Of(spec.Curve!.Value);
                var read = session.GetAttributeValue(material, [CKA.CKA_EC_PARAMS]);
                try
                {
                    return !read[0].CannotBeRead && curve.IsEcParams(read[0].GetValueAsByteArray())
                        ? null
                        : throw KmsErrors.InvalidArgument("wrapped_key", $"{spec.Name} takes a {curve.Name} private key; the material is on another curve");
                }
                finally
                {
                    read.DisposeAll();
                }

            default:
                throw new ArgumentOutOfRangeException(nameof(spec), spec.Name, null);
        }
    }

    // The imported pair is unwrapped as it will be used (a copy of its own, never cached) and
    // must sign a random digest that verifies under the public key, or decrypt what .NET
    // encrypted to it: a private key that does not belong to the public key never becomes a version.
    private async ValueTask CheckPairwiseConsistencyAsync(KeyAlgorithmSpec spec, WrappedKeyMaterial wrapped, byte[] publicKey, CancellationToken cancellationToken)
    {
        var kind = HandleKindOf(spec);
        if (spec.Purpose is KeyPurpose.AsymmetricDecrypt)
        {
            var secret = RandomNumberGenerator.GetBytes(32);
            byte[] ciphertext;
            using (var rsa = RSA.Create())
            {
                rsa.ImportSubjectPublicKeyInfo(publicKey, out _);
                ciphertext = rsa.Encrypt(secret, spec.Digest == DigestAlgorithm.Sha1 ? RSAEncryptionPadding.OaepSHA1 : RSAEncryptionPadding.CreateOaep(KeyAlgorithms.HashName(spec.Digest!.Value)));
            }

            var decrypted = await RunAsync("import check", (session, state) => WithTransientCopy(session, state, wrapped, kind, handle =>
            {
                try
                {
                    return DecryptOaep(session, handle, spec.Digest!.Value, ciphertext);
                }
                catch (Pkcs11Exception e) when (_profile.OaepFailures.Contains(e.RV))
                {
                    return null;
                }
            }), cancellationToken).ConfigureAwait(false);
            var matches = decrypted is not null && CryptographicOperations.FixedTimeEquals(decrypted, secret);
            CryptographicOperations.ZeroMemory(secret);
            if (decrypted is not null)
            {
                CryptographicOperations.ZeroMemory(decrypted);
            }

            if (!matches)
            {
                throw KmsErrors.InvalidArgument("wrapped_key", "the imported RSA private key does not decrypt what its public key encrypts");
            }

            return;
        }

        var digest = RandomNumberGenerator.GetBytes(spec.DigestLength);
        var signature = await RunAsync("import check", (session, state) =>
            WithTransientCopy(session, state, wrapped, kind, handle => Sign(session, handle, spec, digest, "the imported key")), cancellationToken).ConfigureAwait(false);
        bool verified;
        if (spec.Family is KeyFamily.Rsa)
        {
            using var rsa = RSA.Create();
            rsa.ImportSubjectPublicKeyInfo(publicKey, out _);
            verified = rsa.VerifyHash(digest, signature, KeyAlgorithms.HashName(spec.Digest!.Value), spec.Padding == RsaPadding.Pss ? RSASignaturePadding.Pss : RSASignaturePadding.Pkcs1);
        }
        else
        {
            using var ec = ECDsa.Create();
            ec.ImportSubjectPublicKeyInfo(publicKey, out _);
            verified = ec.VerifyHash(digest, signature, DSASignatureFormat.IeeeP1363FixedFieldConcatenation);
        }

        if (!verified)
        {
            throw KmsErrors.InvalidArgument(spec.Family is KeyFamily.Ec ? "public_key" : "wrapped_key", $"a signature by the imported {spec.Name} private key does not verify under the public key");
        }
    }

    // An imported secret is used once, as the version will be, before it is wrapped: the HSM
    // refuses a key too short for the mechanism (SoftHSM: an HMAC key shorter than its digest, an
    // AES key of another length: CKR_KEY_SIZE_RANGE), which with the KWP length check pins the
    // exact length where the HSM does not report it.
    private void TrySecret(ISession session, IObjectHandle material, KeyAlgorithmSpec spec)
    {
        try
        {
            _ = spec.Family is KeyFamily.Aes
                ? AesCheckValue(session, material)
                : Mac(session, material, spec, Encoding.ASCII.GetBytes(KeyVersionProperties.CheckValueText));
        }
        catch (Pkcs11Exception e) when (_profile.KeySizeFailures.Contains(e.RV))
        {
            throw KmsErrors.InvalidArgument("wrapped_key", $"{spec.Name} takes a {spec.SecretLength}-byte key; the material is shorter");
        }
    }

    // An imported secret's fingerprint, the same whatever algorithm of its length it is imported
    // as: a second copy, unwrapped as a generic secret that can only HMAC-SHA256 (never
    // extractable), MACs a text naming the length (checked above: CheckImportedMaterial and
    // TrySecret) and the job, and is destroyed; only the SHA-256 of that MAC leaves (the MAC
    // itself would be a valid tag under an HMAC-SHA256 key).
    private string SecretFingerprint(ISession session, IMechanism kwp, IObjectHandle ephemeral, byte[] kwpBlock, byte[] input)
    {
        using var template = _templates.ImportFingerprintKey();
        var copy = session.UnwrapKey(kwp, ephemeral, kwpBlock, template.Attributes);
        try
        {
            var mac = Mac(session, copy, KeyAlgorithms.Of(KeyAlgorithm.HmacSha256), input);
            return GeneratedKeyMaterial.SecretFingerprint(mac);
        }
        finally
        {
            Destroy(session, copy);
        }
    }

    private T WithTransientCopy<T>(ISession session, SlotState state, WrappedKeyMaterial wrapped, KeyHandleKind kind, Func<IObjectHandle, T> use)
    {
        var handle = Unwrap(session, state, wrapped, "the imported key", kind);
        try
        {
            return use(handle);
        }
        finally
        {
            Destroy(session, handle);
        }
    }

    // The caller's public key, parsed before the HSM is asked: required for EC (a PKCS#11
    // private key does not show its point), optional for RSA (compared with the derived one).
    private static CallerKey? CallerPublicKey(KeyAlgorithmSpec spec, byte[]? subjectPublicKeyInfo)
    {
        if (spec.Family is KeyFamily.Ec && subjectPublicKeyInfo is null)
        {
            throw KmsErrors.InvalidArgument("public_key", $"importing a {spec.Name} key needs its public key (DER SubjectPublicKeyInfo)");
        }

        if (subjectPublicKeyInfo is null || spec.Family is not (KeyFamily.Ec or KeyFamily.Rsa))
        {
            return null;
        }

        try
        {
            if (spec.Family is KeyFamily.Rsa)
            {
                var rsa = RSA.Create();
                rsa.ImportSubjectPublicKeyInfo(subjectPublicKeyInfo, out var read);
                return read == subjectPublicKeyInfo.Length ? new CallerKey(rsa) : throw new CryptographicException("trailing bytes");
            }

            using var ec = ECDsa.Create();
            ec.ImportSubjectPublicKeyInfo(subjectPublicKeyInfo, out var readEc);
            // A key with explicit curve parameters has no OID: not a named curve, refused like another curve.
            var oid = ec.ExportParameters(false).Curve.Oid?.Value;
            var curve = EcCurveParameters.Of(spec.Curve!.Value);
            return readEc == subjectPublicKeyInfo.Length && oid is not null && curve.IsEcParams(DerOid(oid))
                ? null
                : throw KmsErrors.InvalidArgument("public_key", $"is not a {curve.Name} public key");
        }
        catch (Exception e) when (e is CryptographicException or PlatformNotSupportedException)
        {
            // OpenSSL refuses a well-formed EC key on a curve it does not know (an unknown OID)
            // with PlatformNotSupportedException, not CryptographicException.
            throw KmsErrors.InvalidArgument("public_key", $"is not a DER SubjectPublicKeyInfo of a {spec.Name} key");
        }
    }

    private static bool SameRsaPublicKey(RSA given, byte[] derived)
    {
        using var other = RSA.Create();
        other.ImportSubjectPublicKeyInfo(derived, out _);
        var a = given.ExportParameters(false);
        var b = other.ExportParameters(false);
        return a.Modulus.AsSpan().SequenceEqual(b.Modulus) && a.Exponent.AsSpan().SequenceEqual(b.Exponent);
    }

    private static (int Bits, byte[] Spki) RsaSubjectPublicKeyInfo(ISession session, IObjectHandle key)
    {
        var read = session.GetAttributeValue(key, [CKA.CKA_MODULUS, CKA.CKA_PUBLIC_EXPONENT]);
        try
        {
            if (read[0].CannotBeRead || read[1].CannotBeRead)
            {
                throw KmsErrors.Internal("the HSM does not show the RSA key's modulus and public exponent");
            }

            using var rsa = RSA.Create();
            rsa.ImportParameters(new RSAParameters
            {
                Modulus = TrimLeadingZeros(read[0].GetValueAsByteArray()),
                Exponent = TrimLeadingZeros(read[1].GetValueAsByteArray()),
            });
            return (rsa.KeySize, rsa.ExportSubjectPublicKeyInfo());
        }
        finally
        {
            read.DisposeAll();
        }
    }

    private static bool HasExponent65537(byte[] subjectPublicKeyInfo)
    {
        using var rsa = RSA.Create();
        rsa.ImportSubjectPublicKeyInfo(subjectPublicKeyInfo, out _);
        return rsa.ExportParameters(false).Exponent is [0x01, 0x00, 0x01];
    }

    private static byte[] TrimLeadingZeros(byte[] value)
    {
        var start = 0;
        while (start < value.Length - 1 && value[start] == 0)
        {
            start++;
        }

        return value[start..];
    }

    private static ulong ReadUlong(ISession session, IObjectHandle handle, CKA attribute)
    {
        var read = session.GetAttributeValue(handle, [attribute]);
        try
        {
            return read[0].CannotBeRead
                ? throw KmsErrors.Internal($"the HSM does not show {attribute}")
                : read[0].GetValueAsUlong();
        }
        finally
        {
            read.DisposeAll();
        }
    }

    private static Dictionary<string, string> ReadDescription(ISession session, IObjectHandle handle, KeyAlgorithmSpec spec)
    {
        List<CKA> wanted = [.. DescribedAttributes];
        if (spec.Family is KeyFamily.Aes or KeyFamily.Hmac)
        {
            wanted.Add(CKA.CKA_VALUE_LEN);
        }
        else if (spec.Family is KeyFamily.Rsa)
        {
            wanted.Add(CKA.CKA_MODULUS_BITS);
        }

        var read = session.GetAttributeValue(handle, wanted);
        try
        {
            var described = new Dictionary<string, string>(StringComparer.Ordinal);
            for (var i = 0; i < wanted.Count; i++)
            {
                if (!read[i].CannotBeRead)
                {
                    described[wanted[i].ToString()] = Describe(wanted[i], read[i]);
                }
            }

            // PKCS#11 puts CKA_MODULUS_BITS on public keys; SoftHSM does not show it on a private
            // key, whose CKA_MODULUS gives the same number.
            if (spec.Family is KeyFamily.Rsa && !described.ContainsKey(nameof(CKA.CKA_MODULUS_BITS)))
            {
                described[nameof(CKA.CKA_MODULUS_BITS)] = RsaSubjectPublicKeyInfo(session, handle).Bits.ToString(CultureInfo.InvariantCulture);
            }

            return described;
        }
        finally
        {
            read.DisposeAll();
        }
    }

    private static string Describe(CKA attribute, IObjectAttribute value) => attribute switch
    {
        CKA.CKA_CLASS => ConstantName((CKO)value.GetValueAsUlong()),
        CKA.CKA_KEY_TYPE => (CKK)value.GetValueAsUlong() == EdDsa.KeyType ? "CKK_EC_EDWARDS" : ConstantName((CKK)value.GetValueAsUlong()),
        CKA.CKA_VALUE_LEN or CKA.CKA_MODULUS_BITS => value.GetValueAsUlong().ToString(CultureInfo.InvariantCulture),
        CKA.CKA_ALLOWED_MECHANISMS => string.Join(',', (value.GetValueAsULongList() ?? []).Select(MechanismName)),
        _ => value.GetValueAsBool() ? "true" : "false",
    };

    private static string MechanismName(ulong mechanism) => mechanism switch
    {
        EdDsa.Mechanism => "CKM_EDDSA",
        EdDsa.KeyPairGen => "CKM_EC_EDWARDS_KEY_PAIR_GEN",
        _ => ConstantName((CKM)mechanism),
    };

    private static string ConstantName<T>(T value)
        where T : struct, Enum =>
        Enum.IsDefined(value) ? value.ToString() : "0x" + Convert.ToUInt64(value, CultureInfo.InvariantCulture).ToString("x", CultureInfo.InvariantCulture);

    private void RequireSupported(KeyAlgorithmSpec spec)
    {
        if (_profile.UnsupportedReason(spec.Algorithm) is { } reason)
        {
            throw KmsErrors.FailedPrecondition($"this HSM ({_profile.Name}) cannot hold {spec.Name} keys: {reason}");
        }
    }

    private void RequireSupported(ImportMethod method)
    {
        if (_profile.UnsupportedReason(method) is { } reason)
        {
            throw KmsErrors.FailedPrecondition($"this HSM ({_profile.Name}) cannot import with {ImportMethods.Name(method)}: {reason}");
        }
    }

    private KeyAlgorithmSpec RequirePurpose(KeyAlgorithm algorithm, KeyPurpose purpose)
    {
        var spec = KeyAlgorithms.Of(algorithm);
        if (spec.Purpose != purpose)
        {
            throw KmsErrors.InvalidArgument("algorithm", $"{spec.Name} is a {KeyAlgorithms.PurposeName(spec.Purpose)} algorithm, not {KeyAlgorithms.PurposeName(purpose)}");
        }

        RequireSupported(spec);
        return spec;
    }

    private static RsaUsage RsaUsageOf(KeyAlgorithmSpec spec) => spec.Padding switch
    {
        RsaPadding.Pss => RsaUsage.SignPss,
        RsaPadding.Pkcs1 => RsaUsage.SignPkcs1,
        RsaPadding.Oaep => RsaUsage.DecryptOaep,
        _ => throw new ArgumentOutOfRangeException(nameof(spec), spec.Name, "not an RSA algorithm"),
    };

    // What a version of the algorithm is unwrapped (and cached) as.
    private static KeyHandleKind HandleKindOf(KeyAlgorithmSpec spec) => spec.Family switch
    {
        KeyFamily.Aes => KeyHandleKind.Aes256Gcm,
        KeyFamily.Ec => EcCurveParameters.Of(spec.Curve!.Value).HandleKind,
        KeyFamily.Rsa => spec.Padding switch
        {
            RsaPadding.Pss => KeyHandleKind.RsaSignPss,
            RsaPadding.Pkcs1 => KeyHandleKind.RsaSignPkcs1,
            _ => KeyHandleKind.RsaDecryptOaep,
        },
        KeyFamily.Hmac => spec.Digest switch
        {
            DigestAlgorithm.Sha256 => KeyHandleKind.HmacSha256,
            DigestAlgorithm.Sha384 => KeyHandleKind.HmacSha384,
            _ => KeyHandleKind.HmacSha512,
        },
        KeyFamily.EdDsa => KeyHandleKind.Ed25519,
        _ => throw new ArgumentOutOfRangeException(nameof(spec), spec.Name, null),
    };

    private Template UnwrapTemplate(KeyHandleKind kind) => kind switch
    {
        KeyHandleKind.Aes256Gcm => _templates.UnwrappedAesKey(),
        KeyHandleKind.EcdsaP256 or KeyHandleKind.EcdsaP384 => _templates.UnwrappedEcPrivateKey(),
        KeyHandleKind.RsaSignPss => _templates.UnwrappedRsaPrivateKey(RsaUsage.SignPss),
        KeyHandleKind.RsaSignPkcs1 => _templates.UnwrappedRsaPrivateKey(RsaUsage.SignPkcs1),
        KeyHandleKind.RsaDecryptOaep => _templates.UnwrappedRsaPrivateKey(RsaUsage.DecryptOaep),
        KeyHandleKind.ImportUnwrap => _templates.UnwrappedRsaPrivateKey(RsaUsage.UnwrapOaep),
        KeyHandleKind.HmacSha256 => _templates.UnwrappedHmacKey(CKM.CKM_SHA256_HMAC),
        KeyHandleKind.HmacSha384 => _templates.UnwrappedHmacKey(CKM.CKM_SHA384_HMAC),
        KeyHandleKind.HmacSha512 => _templates.UnwrappedHmacKey(CKM.CKM_SHA512_HMAC),
        KeyHandleKind.Ed25519 => _templates.UnwrappedEdwardsPrivateKey(),
        _ => throw new ArgumentOutOfRangeException(nameof(kind), kind, null),
    };

    private static string MaterialName(KeyAlgorithmSpec spec) => spec.Family switch
    {
        KeyFamily.Aes => "an AES key",
        KeyFamily.Hmac => "an HMAC key",
        KeyFamily.Rsa => "an RSA private key (PKCS#8)",
        KeyFamily.Ec => "an EC private key (PKCS#8)",
        _ => spec.Name,
    };

    // Internal for KeyWrapAndMacVectorTests, which runs RFC 4231 through the mechanism picked here.
    internal static CKM HmacMechanism(KeyAlgorithmSpec spec) => spec.Digest switch
    {
        DigestAlgorithm.Sha256 => CKM.CKM_SHA256_HMAC,
        DigestAlgorithm.Sha384 => CKM.CKM_SHA384_HMAC,
        DigestAlgorithm.Sha512 => CKM.CKM_SHA512_HMAC,
        _ => throw new ArgumentOutOfRangeException(nameof(spec), spec.Name, "not an HMAC algorithm"),
    };

    private static CKM HashMechanism(DigestAlgorithm digest) => digest switch
    {
        DigestAlgorithm.Sha1 => CKM.CKM_SHA_1,
        DigestAlgorithm.Sha256 => CKM.CKM_SHA256,
        DigestAlgorithm.Sha384 => CKM.CKM_SHA384,
        DigestAlgorithm.Sha512 => CKM.CKM_SHA512,
        _ => throw new ArgumentOutOfRangeException(nameof(digest), digest, null),
    };

    private static CKG Mgf1(DigestAlgorithm digest) => digest switch
    {
        DigestAlgorithm.Sha1 => CKG.CKG_MGF1_SHA1,
        DigestAlgorithm.Sha256 => CKG.CKG_MGF1_SHA256,
        DigestAlgorithm.Sha384 => CKG.CKG_MGF1_SHA384,
        DigestAlgorithm.Sha512 => CKG.CKG_MGF1_SHA512,
        _ => throw new ArgumentOutOfRangeException(nameof(digest), digest, null),
    };

    /// <summary>The DER DigestInfo (RFC 8017, 9.2) that RSASSA-PKCS1-v1_5 signs: the hash's OID, NULL parameters, the digest.</summary>
    internal static byte[] DigestInfo(DigestAlgorithm digest, byte[] value)
    {
        var oid = digest switch
        {
            DigestAlgorithm.Sha256 => "2.16.840.1.101.3.4.2.1",
            DigestAlgorithm.Sha384 => "2.16.840.1.101.3.4.2.2",
            DigestAlgorithm.Sha512 => "2.16.840.1.101.3.4.2.3",
            _ => throw new ArgumentOutOfRangeException(nameof(digest), digest, "not a signature hash"),
        };
        var writer = new AsnWriter(AsnEncodingRules.DER);
        using (writer.PushSequence())
        {
            using (writer.PushSequence())
            {
                writer.WriteObjectIdentifier(oid);
                writer.WriteNull();
            }

            writer.WriteOctetString(value);
        }

        return writer.Encode();
    }

    private static byte[] DerOid(string oid)
    {
        var writer = new AsnWriter(AsnEncodingRules.DER);
        writer.WriteObjectIdentifier(oid);
        return writer.Encode();
    }

    private static byte[] Ed25519EcParams() => DerOid(Ed25519Oid);

    // RFC 8410: AlgorithmIdentifier { id-Ed25519 } (no parameters) and the 32-byte public key.
    private static byte[] Ed25519SubjectPublicKeyInfo(byte[] ecPoint)
    {
        byte[] point;
        try
        {
            point = AsnDecoder.ReadOctetString(ecPoint, AsnEncodingRules.DER, out var consumed);
            point = consumed == ecPoint.Length ? point : ecPoint;
        }
        catch (AsnContentException)
        {
            point = ecPoint;
        }

        if (point.Length != 32)
        {
            throw KmsErrors.Internal($"the HSM's Ed25519 CKA_EC_POINT is {point.Length} bytes, not 32");
        }

        var writer = new AsnWriter(AsnEncodingRules.DER);
        using (writer.PushSequence())
        {
            using (writer.PushSequence())
            {
                writer.WriteObjectIdentifier(Ed25519Oid);
            }

            writer.WriteBitString(point);
        }

        return writer.Encode();
    }

    private sealed class CallerKey(RSA rsa) : IDisposable
    {
        public RSA Rsa { get; } = rsa;

        public void Dispose() => Rsa.Dispose();
    }
}
