using System.Security.Cryptography;
using Kms.Core.Crypto;
using Kms.Core.Errors;
using Kms.Core.Keys;
using Kms.Core.Ports;

namespace Kms.Testing.Fakes;

/// <summary>
/// An <see cref="IHsm"/> in .NET crypto, for domain tests only: keys are "wrapped" with
/// AES-GCM under an in-memory domain key. Every real crypto path is also tested against
/// SoftHSM through Kms.Hsm.
/// </summary>
public sealed class FakeHsm : IHsm, IDisposable
{
    private readonly byte[] _domainKey = RandomNumberGenerator.GetBytes(32);

    public string DomainKeyCheckValue { get; init; } = "FA4E00";

    /// <summary>Calls made, by operation name (tests assert the hot path's call count).</summary>
    public Dictionary<string, int> Calls { get; } = [];

    /// <summary>
    /// The residency regions this fake node holds, each with a fake HSM of its own (its own domain
    /// key and call counts): <see cref="ForRegion"/> answers with it, and refuses any other region
    /// as a node outside it does.
    /// </summary>
    public Dictionary<string, FakeHsm> RegionHsms { get; } = new(StringComparer.Ordinal);

    IReadOnlyCollection<string> IHsm.Regions => RegionHsms.Keys;

    public IHsm ForRegion(string region) =>
        RegionHsms.TryGetValue(region, out var regional) ? regional : throw KmsErrors.ResidencyElsewhere(region);

    /// <summary>When set, GenerateRandomAsync throws it (an HSM that refuses or is down).</summary>
    public KmsException? RandomFailure { get; set; }

    public ValueTask<byte[]> GenerateRandomAsync(int length, CancellationToken cancellationToken)
    {
        Count("random");
        if (RandomFailure is { } failure)
        {
            throw failure;
        }

        return ValueTask.FromResult(RandomNumberGenerator.GetBytes(length));
    }

    public ValueTask<WrappedKeyMaterial> GenerateAes256KeyAsync(CancellationToken cancellationToken)
    {
        Count("generate");
        var key = RandomNumberGenerator.GetBytes(32);
        try
        {
            var nonce = RandomNumberGenerator.GetBytes(12);
            var wrapped = new byte[12 + 32 + 16];
            nonce.CopyTo(wrapped, 0);
            using var aes = new AesGcm(_domainKey, 16);
            aes.Encrypt(nonce, key, wrapped.AsSpan(12, 32), wrapped.AsSpan(44, 16));
            return ValueTask.FromResult(new WrappedKeyMaterial(wrapped));
        }
        finally
        {
            CryptographicOperations.ZeroMemory(key);
        }
    }

    public ValueTask<byte[]> EncryptAesGcmAsync(KeyMaterialRef key, byte[] iv, byte[] aad, byte[] plaintext, CancellationToken cancellationToken)
    {
        Count("encrypt");
        LastEncryptPlaintext = plaintext;
        if (EncryptAnswersWithoutTag)
        {
            return ValueTask.FromResult(new byte[8]);
        }

        using var aes = new AesGcm(Unwrap(key), 16);
        var output = new byte[plaintext.Length + 16];
        aes.Encrypt(iv, plaintext, output.AsSpan(0, plaintext.Length), output.AsSpan(plaintext.Length), aad);
        return ValueTask.FromResult(output);
    }

    /// <summary>A test's broken HSM: a single encryption answers 8 bytes (no room for the 16-byte tag).</summary>
    public bool EncryptAnswersWithoutTag { get; set; }

    /// <summary>The array the last single encryption was given (not a copy): tests check it was zeroed.</summary>
    public byte[]? LastEncryptPlaintext { get; private set; }

    /// <summary>A test's broken HSM: batched encryptions, decryptions and MACs answer one result fewer than they were given.</summary>
    public bool ManyAnswersOneShort { get; set; }

    public async ValueTask<byte[][]> EncryptAesGcmManyAsync(KeyMaterialRef key, IReadOnlyList<AesGcmInput> inputs, CancellationToken cancellationToken)
    {
        Count("encrypt-many");
        var results = new byte[ManyAnswersOneShort ? inputs.Count - 1 : inputs.Count][];
        for (var i = 0; i < results.Length; i++)
        {
            results[i] = await EncryptAesGcmAsync(key, inputs[i].Iv, inputs[i].Aad, inputs[i].Data, cancellationToken);
        }

        return results;
    }

    public ValueTask<byte[]> DecryptAesGcmAsync(KeyMaterialRef key, byte[] iv, byte[] aad, byte[] ciphertextAndTag, CancellationToken cancellationToken)
    {
        Count("decrypt");
        using var aes = new AesGcm(Unwrap(key), 16);
        var plaintext = new byte[ciphertextAndTag.Length - 16];
        try
        {
            aes.Decrypt(iv, ciphertextAndTag.AsSpan(0, plaintext.Length), ciphertextAndTag.AsSpan(plaintext.Length), plaintext, aad);
        }
        catch (AuthenticationTagMismatchException)
        {
            throw KmsErrors.DecryptionFailed();
        }

        return ValueTask.FromResult(plaintext);
    }

    /// <summary>A test's failure for a batched decryption under the key version it names (null: none).</summary>
    public Func<KeyVersionId, KmsException?>? DecryptManyFailure { get; set; }

    public async ValueTask<byte[]?[]> DecryptAesGcmManyAsync(KeyMaterialRef key, IReadOnlyList<AesGcmInput> inputs, CancellationToken cancellationToken)
    {
        Count("decrypt-many");
        if (DecryptManyFailure?.Invoke(key.Id) is { } failure)
        {
            throw failure;
        }

        var results = new byte[]?[ManyAnswersOneShort ? inputs.Count - 1 : inputs.Count];
        for (var i = 0; i < results.Length; i++)
        {
            try
            {
                results[i] = await DecryptAesGcmAsync(key, inputs[i].Iv, inputs[i].Aad, inputs[i].Data, cancellationToken);
            }
            catch (KmsException e) when (e.Code == KmsErrorCode.DecryptionFailed)
            {
                results[i] = null;
            }
        }

        return results;
    }

    public ValueTask<GeneratedKeyPair> GenerateEcKeyPairAsync(EcCurve curve, CancellationToken cancellationToken)
    {
        Count("generate-ec");
        using var key = ECDsa.Create(curve == EcCurve.P256 ? ECCurve.NamedCurves.nistP256 : ECCurve.NamedCurves.nistP384);
        var pkcs8 = key.ExportPkcs8PrivateKey();
        try
        {
            var nonce = RandomNumberGenerator.GetBytes(12);
            var wrapped = new byte[12 + pkcs8.Length + 16];
            nonce.CopyTo(wrapped, 0);
            using var aes = new AesGcm(_domainKey, 16);
            aes.Encrypt(nonce, pkcs8, wrapped.AsSpan(12, pkcs8.Length), wrapped.AsSpan(12 + pkcs8.Length, 16));
            return ValueTask.FromResult(new GeneratedKeyPair(new WrappedKeyMaterial(wrapped), key.ExportSubjectPublicKeyInfo()));
        }
        finally
        {
            CryptographicOperations.ZeroMemory(pkcs8);
        }
    }

    /// <summary>Runs before each ECDSA signature (audit checkpoints, signed statements): a test looks at the disk there, or throws to fail it.</summary>
    public Action? BeforeSignEcdsa { get; set; }

    public ValueTask<byte[]> SignEcdsaAsync(KeyMaterialRef key, EcCurve curve, byte[] digest, CancellationToken cancellationToken)
    {
        Count("sign");
        BeforeSignEcdsa?.Invoke();
        var wrapped = key.Wrapped.Bytes.Span;
        var pkcs8 = new byte[wrapped.Length - 28];
        try
        {
            using (var aes = new AesGcm(_domainKey, 16))
            {
                aes.Decrypt(wrapped[..12], wrapped.Slice(12, pkcs8.Length), wrapped[^16..], pkcs8);
            }

            using var ec = ECDsa.Create();
            ec.ImportPkcs8PrivateKey(pkcs8, out _);
            return ValueTask.FromResult(ec.SignHash(digest));
        }
        finally
        {
            CryptographicOperations.ZeroMemory(pkcs8);
        }
    }

    /// <summary>Algorithms this fake refuses, with the reason (as a profile would).</summary>
    public Dictionary<KeyAlgorithm, string> Unsupported { get; } = new() { [KeyAlgorithm.Ed25519] = "the fake HSM cannot wrap Ed25519 private keys" };

    /// <summary>Import methods this fake refuses, with the reason.</summary>
    public Dictionary<ImportMethod, string> UnsupportedImports { get; } = [];

    public string? UnsupportedReason(KeyAlgorithm algorithm) => Unsupported.GetValueOrDefault(algorithm);

    public string? UnsupportedReason(ImportMethod method) => UnsupportedImports.GetValueOrDefault(method);

    /// <summary>Runs as each key version's generation starts: a test commits a concurrent write there (the generation is the long step between a call's checks and its write).</summary>
    public Action? BeforeGenerate { get; set; }

    public ValueTask<GeneratedKeyMaterial> GenerateKeyVersionAsync(KeyAlgorithm algorithm, CancellationToken cancellationToken)
    {
        Count("generate");
        BeforeGenerate?.Invoke();
        if (UnsupportedReason(algorithm) is { } reason)
        {
            throw KmsErrors.FailedPrecondition(reason);
        }

        var spec = KeyAlgorithms.Of(algorithm);
        switch (spec.Family)
        {
            case KeyFamily.Aes or KeyFamily.Hmac:
                var secret = RandomNumberGenerator.GetBytes(spec.SecretLength);
                try
                {
                    return ValueTask.FromResult(new GeneratedKeyMaterial(Seal(secret), null));
                }
                finally
                {
                    CryptographicOperations.ZeroMemory(secret);
                }

            case KeyFamily.Ec:
                using (var ec = ECDsa.Create(spec.Curve == EcCurve.P256 ? ECCurve.NamedCurves.nistP256 : ECCurve.NamedCurves.nistP384))
                {
                    return ValueTask.FromResult(SealPair(ec.ExportPkcs8PrivateKey(), ec.ExportSubjectPublicKeyInfo()));
                }

            case KeyFamily.Rsa:
                using (var rsa = RSA.Create(spec.KeyBits))
                {
                    return ValueTask.FromResult(SealPair(rsa.ExportPkcs8PrivateKey(), rsa.ExportSubjectPublicKeyInfo()));
                }

            default:
                throw KmsErrors.FailedPrecondition($"the fake HSM cannot generate {spec.Name}");
        }
    }

    public ValueTask<byte[]> SignAsync(KeyMaterialRef key, KeyAlgorithm algorithm, byte[] input, CancellationToken cancellationToken)
    {
        Count("sign-" + algorithm);
        var spec = KeyAlgorithms.Of(algorithm);
        if (input.Length != spec.DigestLength)
        {
            throw KmsErrors.InvalidArgument("digest", $"a {spec.Name} digest is {spec.DigestLength} bytes, not {input.Length}");
        }

        var pkcs8 = Open(key);
        try
        {
            if (spec.Family == KeyFamily.Ec)
            {
                using var ec = ECDsa.Create();
                ec.ImportPkcs8PrivateKey(pkcs8, out _);
                return ValueTask.FromResult(ec.SignHash(input));
            }

            using var rsa = RSA.Create();
            rsa.ImportPkcs8PrivateKey(pkcs8, out _);
            var padding = spec.Padding == RsaPadding.Pss ? RSASignaturePadding.Pss : RSASignaturePadding.Pkcs1;
            return ValueTask.FromResult(rsa.SignHash(input, KeyAlgorithms.HashName(spec.Digest!.Value), padding));
        }
        finally
        {
            CryptographicOperations.ZeroMemory(pkcs8);
        }
    }

    public ValueTask<byte[]> DecryptRsaOaepAsync(KeyMaterialRef key, KeyAlgorithm algorithm, byte[] ciphertext, CancellationToken cancellationToken)
    {
        Count("asymmetric-decrypt");
        var spec = KeyAlgorithms.Of(algorithm);
        var pkcs8 = Open(key);
        try
        {
            using var rsa = RSA.Create();
            rsa.ImportPkcs8PrivateKey(pkcs8, out _);
            var padding = spec.Digest == DigestAlgorithm.Sha1 ? RSAEncryptionPadding.OaepSHA1 : RSAEncryptionPadding.OaepSHA256;
            return ValueTask.FromResult(rsa.Decrypt(ciphertext, padding));
        }
        catch (CryptographicException)
        {
            throw KmsErrors.DecryptionFailed();
        }
        finally
        {
            CryptographicOperations.ZeroMemory(pkcs8);
        }
    }

    public async ValueTask<byte[][]> ComputeMacManyAsync(KeyMaterialRef key, KeyAlgorithm algorithm, IReadOnlyList<byte[]> inputs, CancellationToken cancellationToken)
    {
        Count("mac-many");
        var results = new byte[ManyAnswersOneShort ? inputs.Count - 1 : inputs.Count][];
        for (var i = 0; i < results.Length; i++)
        {
            results[i] = await ComputeMacAsync(key, algorithm, inputs[i], cancellationToken);
        }

        return results;
    }

    public ValueTask<byte[]> ComputeMacAsync(KeyMaterialRef key, KeyAlgorithm algorithm, byte[] data, CancellationToken cancellationToken)
    {
        Count("mac");
        var secret = Open(key);
        try
        {
            return ValueTask.FromResult(KeyAlgorithms.Of(algorithm).Digest switch
            {
                DigestAlgorithm.Sha256 => HMACSHA256.HashData(secret, data),
                DigestAlgorithm.Sha384 => HMACSHA384.HashData(secret, data),
                _ => HMACSHA512.HashData(secret, data),
            });
        }
        finally
        {
            CryptographicOperations.ZeroMemory(secret);
        }
    }

    public ValueTask<GeneratedKeyMaterial> GenerateImportWrappingKeyAsync(ImportMethod method, CancellationToken cancellationToken)
    {
        Count("generate-import-key");
        if (UnsupportedReason(method) is { } reason)
        {
            throw KmsErrors.FailedPrecondition(reason);
        }

        using var rsa = RSA.Create(method is ImportMethod.RsaOaep3072Sha1Aes256 or ImportMethod.RsaOaep3072Sha256Aes256 ? 3072 : 4096);
        return ValueTask.FromResult(SealPair(rsa.ExportPkcs8PrivateKey(), rsa.ExportSubjectPublicKeyInfo()));
    }

    public ValueTask<GeneratedKeyMaterial> ImportKeyVersionAsync(
        KeyMaterialRef wrappingKey,
        ImportMethod method,
        KeyAlgorithm algorithm,
        byte[] wrappedKey,
        byte[]? subjectPublicKeyInfo,
        CancellationToken cancellationToken)
    {
        Count("import");
        var spec = KeyAlgorithms.Of(algorithm);
        var callerPublicKey = CallerPublicKey(spec, subjectPublicKeyInfo);
        var jobKey = Open(wrappingKey);
        byte[] material;
        byte[] jobPublicKey;
        try
        {
            using var rsa = RSA.Create();
            rsa.ImportPkcs8PrivateKey(jobKey, out _);
            jobPublicKey = rsa.ExportSubjectPublicKeyInfo();
            var modulusBytes = rsa.KeySize / 8;
            if (wrappedKey.Length <= modulusBytes)
            {
                throw KmsErrors.InvalidArgument("wrapped_key", "too short for the import method");
            }

            var padding = method is ImportMethod.RsaOaep3072Sha1Aes256 or ImportMethod.RsaOaep4096Sha1Aes256 ? RSAEncryptionPadding.OaepSHA1 : RSAEncryptionPadding.OaepSHA256;
            var ephemeral = rsa.Decrypt(wrappedKey.AsSpan(0, modulusBytes).ToArray(), padding);
            try
            {
                var kwp = new Org.BouncyCastle.Crypto.Engines.AesWrapPadEngine();
                kwp.Init(false, new Org.BouncyCastle.Crypto.Parameters.KeyParameter(ephemeral));
                material = kwp.Unwrap(wrappedKey, modulusBytes, wrappedKey.Length - modulusBytes);
            }
            finally
            {
                CryptographicOperations.ZeroMemory(ephemeral);
            }
        }
        catch (Exception e) when (e is CryptographicException or Org.BouncyCastle.Crypto.InvalidCipherTextException)
        {
            throw KmsErrors.InvalidArgument("wrapped_key", "the wrapped key does not unwrap under the import job's key");
        }
        finally
        {
            CryptographicOperations.ZeroMemory(jobKey);
        }

        try
        {
            if (spec.Family is KeyFamily.Aes or KeyFamily.Hmac)
            {
                return material.Length == spec.SecretLength
                    ? ValueTask.FromResult(new GeneratedKeyMaterial(Seal(material), null)
                    {
                        MaterialFingerprint = GeneratedKeyMaterial.SecretFingerprint(HMACSHA256.HashData(material, GeneratedKeyMaterial.SecretFingerprintInput(material.Length, jobPublicKey))),
                    })
                    : throw KmsErrors.InvalidArgument("wrapped_key", $"{spec.Name} takes a {spec.SecretLength}-byte key, not {material.Length} bytes");
            }

            byte[] publicKey;
            try
            {
                if (spec.Family == KeyFamily.Rsa)
                {
                    using var rsa = RSA.Create();
                    rsa.ImportPkcs8PrivateKey(material, out _);
                    publicKey = rsa.KeySize == spec.KeyBits ? rsa.ExportSubjectPublicKeyInfo() : throw KmsErrors.InvalidArgument("wrapped_key", $"{spec.Name} takes a {spec.KeyBits}-bit RSA key, not {rsa.KeySize} bits");
                    if (rsa.ExportParameters(false).Exponent is not [0x01, 0x00, 0x01])
                    {
                        throw KmsErrors.InvalidArgument("wrapped_key", $"{spec.Name} takes an RSA key with public exponent 65537");
                    }
                }
                else
                {
                    using var ec = ECDsa.Create();
                    ec.ImportPkcs8PrivateKey(material, out _);
                    publicKey = ec.KeySize == spec.KeyBits ? ec.ExportSubjectPublicKeyInfo() : throw KmsErrors.InvalidArgument("wrapped_key", $"{spec.Name} takes a key on its curve");
                }
            }
            catch (CryptographicException)
            {
                throw KmsErrors.InvalidArgument("wrapped_key", $"the material is not a {spec.Name} private key");
            }

            // Compared, and stored, in the one form .NET writes (as Pkcs11Hsm does: claim 121).
            if (callerPublicKey is not null && !callerPublicKey.AsSpan().SequenceEqual(publicKey))
            {
                throw KmsErrors.InvalidArgument("public_key", "does not match the imported private key");
            }

            return ValueTask.FromResult(SealPair((byte[])material.Clone(), publicKey) with { MaterialFingerprint = GeneratedKeyMaterial.PublicKeyFingerprint(publicKey) });
        }
        finally
        {
            CryptographicOperations.ZeroMemory(material);
        }
    }

    // What Pkcs11Hsm takes as an imported key pair's public key, in the form it stores: the SPKI as
    // .NET re-exports it (an EC point uncompressed, its curve named), so a BIT STRING declaring
    // zero padding bits is the same key; trailing bytes, BER, a compressed or hybrid point, explicit
    // parameters, another algorithm or curve are INVALID_ARGUMENT naming public_key. An EC import needs it.
    private static byte[]? CallerPublicKey(KeyAlgorithmSpec spec, byte[]? subjectPublicKeyInfo)
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
            int read;
            byte[] canonical;
            if (spec.Family is KeyFamily.Rsa)
            {
                using var rsa = RSA.Create();
                rsa.ImportSubjectPublicKeyInfo(subjectPublicKeyInfo, out read);
                canonical = rsa.ExportSubjectPublicKeyInfo();
            }
            else
            {
                using var ec = ECDsa.Create();
                ec.ImportSubjectPublicKeyInfo(subjectPublicKeyInfo, out read);
                var curve = spec.KeyBits == 384 ? "1.3.132.0.34" : "1.2.840.10045.3.1.7";
                if (ec.ExportParameters(false).Curve.Oid?.Value != curve)
                {
                    throw KmsErrors.InvalidArgument("public_key", $"is not a {spec.Name} public key");
                }

                canonical = ec.ExportSubjectPublicKeyInfo();
            }

            return read == subjectPublicKeyInfo.Length
                ? canonical
                : throw KmsErrors.InvalidArgument("public_key", $"is not a DER SubjectPublicKeyInfo of a {spec.Name} key");
        }
        catch (Exception e) when (e is CryptographicException or PlatformNotSupportedException)
        {
            throw KmsErrors.InvalidArgument("public_key", $"is not a DER SubjectPublicKeyInfo of a {spec.Name} key");
        }
    }

    public ValueTask<KeyVersionProperties> DescribeKeyVersionAsync(KeyMaterialRef key, KeyAlgorithm algorithm, CancellationToken cancellationToken)
    {
        Count("describe");
        var spec = KeyAlgorithms.Of(algorithm);
        var attributes = new Dictionary<string, string>
        {
            ["CKA_SENSITIVE"] = "true",
            ["CKA_EXTRACTABLE"] = "false",
            ["CKA_LOCAL"] = "false",
            ["CKA_NEVER_EXTRACTABLE"] = "false",
        };
        byte[]? checkValue = null;
        if (spec.Family is KeyFamily.Aes or KeyFamily.Hmac)
        {
            var secret = Open(key);
            try
            {
                var text = System.Text.Encoding.ASCII.GetBytes(KeyVersionProperties.CheckValueText);
                if (spec.Family == KeyFamily.Aes)
                {
                    using var aes = new AesGcm(secret, 16);
                    var tag = new byte[16];
                    aes.Encrypt(new byte[12], ReadOnlySpan<byte>.Empty, Span<byte>.Empty, tag, text);
                    checkValue = tag[..8];
                }
                else
                {
                    var mac = spec.Digest switch
                    {
                        DigestAlgorithm.Sha256 => HMACSHA256.HashData(secret, text),
                        DigestAlgorithm.Sha384 => HMACSHA384.HashData(secret, text),
                        _ => HMACSHA512.HashData(secret, text),
                    };
                    checkValue = mac[..8];
                }
            }
            finally
            {
                CryptographicOperations.ZeroMemory(secret);
            }
        }

        return ValueTask.FromResult(new KeyVersionProperties(attributes, checkValue));
    }

    private GeneratedKeyMaterial SealPair(byte[] pkcs8, byte[] publicKey)
    {
        try
        {
            return new GeneratedKeyMaterial(Seal(pkcs8), publicKey);
        }
        finally
        {
            CryptographicOperations.ZeroMemory(pkcs8);
        }
    }

    private WrappedKeyMaterial Seal(byte[] material)
    {
        var nonce = RandomNumberGenerator.GetBytes(12);
        var wrapped = new byte[12 + material.Length + 16];
        nonce.CopyTo(wrapped, 0);
        using var aes = new AesGcm(_domainKey, 16);
        aes.Encrypt(nonce, material, wrapped.AsSpan(12, material.Length), wrapped.AsSpan(12 + material.Length, 16));
        return new WrappedKeyMaterial(wrapped);
    }

    private byte[] Open(KeyMaterialRef key)
    {
        var wrapped = key.Wrapped.Bytes.Span;
        var material = new byte[wrapped.Length - 28];
        using var aes = new AesGcm(_domainKey, 16);
        aes.Decrypt(wrapped[..12], wrapped.Slice(12, material.Length), wrapped[^16..], material);
        return material;
    }

    /// <summary>Key versions evicted (destroyed) so far.</summary>
    public List<Kms.Core.Keys.KeyVersionId> Evicted { get; } = [];

    /// <summary>When set, EvictKey throws it (a device refusing the destroy).</summary>
    public Exception? EvictFault { get; set; }

    /// <summary>How many times every copy was evicted at once.</summary>
    public int EvictedAll { get; private set; }

    public void EvictAllKeys() => EvictedAll++;

    /// <summary>Called at each EvictKey, before it acts (what its caller did before evicting).</summary>
    public Action? BeforeEvict { get; set; }

    public void EvictKey(Kms.Core.Keys.KeyVersionId id)
    {
        BeforeEvict?.Invoke();
        if (EvictFault is { } fault)
        {
            throw fault;
        }

        lock (Evicted)
        {
            Evicted.Add(id);
        }
    }

    public void Dispose()
    {
        CryptographicOperations.ZeroMemory(_domainKey);
        foreach (var regional in RegionHsms.Values)
        {
            regional.Dispose();
        }
    }

    private byte[] Unwrap(KeyMaterialRef key)
    {
        var wrapped = key.Wrapped.Bytes.Span;
        var material = new byte[32];
        using var aes = new AesGcm(_domainKey, 16);
        aes.Decrypt(wrapped[..12], wrapped.Slice(12, 32), wrapped.Slice(44, 16), material);
        return material;
    }

    private void Count(string operation)
    {
        lock (Calls)
        {
            Calls[operation] = Calls.GetValueOrDefault(operation) + 1;
        }
    }
}
