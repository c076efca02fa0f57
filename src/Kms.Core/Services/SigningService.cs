using System.Security.Cryptography;
using Kms.Core.Access;
using Kms.Core.Crypto;
using Kms.Core.Errors;
using Kms.Core.Keys;
using Kms.Core.Names;
using Kms.Core.Ports;

namespace Kms.Core.Services;

/// <summary>
/// Sign, Verify, GetPublicKey, AsymmetricDecrypt, GenerateMac (and its batch) and VerifyMac: crypto with
/// SIGN_VERIFY, ASYMMETRIC_DECRYPT and MAC keys. Private and secret halves are used only in
/// the HSM; verification uses the stored public key (.NET crypto), MAC verification recomputes
/// the MAC in the HSM and compares in constant time.
/// </summary>
/// <remarks>
/// A <c>name</c> is a key, an alias (both: the primary version) or a key version. A key of
/// another purpose is FAILED_PRECONDITION naming both purposes; a digest of the wrong length is
/// INVALID_ARGUMENT. A signature or MAC that does not verify is an answer (<c>valid = false</c>),
/// not an error. A ciphertext that does not decrypt is the one opaque "decryption failed".
/// </remarks>
public sealed class SigningService(IHsm hsm, IKeyStore store, KeyAccessService keyAccess)
{
    /// <summary>Most bytes Sign, Verify and the MAC calls take as a message.</summary>
    public const int MaxMessageBytes = Limits.MaxEncryptPlaintextBytes;

    private readonly KeyResolver _resolver = new(store);

    /// <summary>
    /// Signs a message (hashed here with the algorithm's hash) or a digest the caller computed,
    /// with the named version or the key's primary.
    /// </summary>
    public async Task<SignResult> SignAsync(Caller caller, string name, SignInput input, SignatureFormat format, CancellationToken cancellationToken)
    {
        var found = await FindAsync(caller, name, KeyPurpose.SignVerify, KeyOperations.Sign, cancellationToken);
        var spec = KeyAlgorithms.Of(found.Version.Algorithm);
        EnsureFormatApplies(spec, format);
        var hsmInput = SigningInput(spec, input);
        var signature = await hsm.For(found.Key.Residency).SignAsync(Ref(found), spec.Algorithm, hsmInput, cancellationToken);
        if (spec.Family == KeyFamily.Ec && format != SignatureFormat.P1363)
        {
            signature = EcdsaSignature.P1363ToDer(signature);
        }

        return new SignResult(signature, found.Version.Name, spec.Algorithm);
    }

    /// <summary>Whether <paramref name="signature"/> is the version's signature of the input (checked with its public key).</summary>
    public async Task<VerifyResult> VerifyAsync(Caller caller, string name, SignInput input, byte[] signature, SignatureFormat format, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(signature);
        var found = await FindAsync(caller, name, KeyPurpose.SignVerify, KeyOperations.Verify, cancellationToken);
        var spec = KeyAlgorithms.Of(found.Version.Algorithm);
        EnsureFormatApplies(spec, format);
        var digest = SigningInput(spec, input);
        if (signature.Length == 0)
        {
            throw KmsErrors.InvalidArgument("signature", "is required");
        }

        if (spec.Family == KeyFamily.EdDsa)
        {
            throw KmsErrors.FailedPrecondition($"{spec.Name} signatures are verified by the caller with the public key (GetPublicKey)");
        }

        var valid = SignatureVerifier.Verify(PublicKeyOf(found), spec, digest, signature, p1363: format == SignatureFormat.P1363);
        return new VerifyResult(valid, found.Version.Name);
    }

    /// <summary>The public key of a SIGN_VERIFY or ASYMMETRIC_DECRYPT version.</summary>
    /// <remarks>
    /// Key policies and grants govern it by the key's purpose (<see cref="PublicKeyOperations"/>):
    /// VERIFY on a signing key; on a decryption key ENCRYPT (whoever encrypts to it), DECRYPT (its
    /// holder) or VERIFY (what it took before, still accepted).
    /// </remarks>
    public async Task<PublicKeyResult> GetPublicKeyAsync(Caller caller, string name, CancellationToken cancellationToken)
    {
        var found = await FindAsync(caller, name, null, null, cancellationToken);
        return new PublicKeyResult(PublicKeyOf(found), found.Version.Name, found.Version.Algorithm);
    }

    /// <summary>
    /// The operations of a key policy entry or grant any one of which lets its principal read the
    /// public key of a key of <paramref name="purpose"/>: VERIFY for SIGN_VERIFY (the verifier
    /// needs it); ENCRYPT, DECRYPT or VERIFY for ASYMMETRIC_DECRYPT (the party that encrypts to
    /// the key needs it, its holder may; VERIFY is what GetPublicKey took before whatever the
    /// purpose, so a policy written then keeps working). Other purposes have no public key:
    /// VERIFY, then refused for the purpose.
    /// </summary>
    public static KeyOperations PublicKeyOperations(KeyPurpose purpose) => purpose == KeyPurpose.AsymmetricDecrypt
        ? KeyOperations.Encrypt | KeyOperations.Decrypt | KeyOperations.Verify
        : KeyOperations.Verify;

    /// <summary>RSA-OAEP decryption of a ciphertext made with the version's public key.</summary>
    /// <returns>The plaintext; the caller disposes it (zeroing it).</returns>
    public async Task<DecryptResult> AsymmetricDecryptAsync(Caller caller, string name, byte[] ciphertext, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(ciphertext);
        if (ciphertext.Length == 0)
        {
            throw KmsErrors.InvalidArgument("ciphertext", "is required");
        }

        var found = await FindAsync(caller, name, KeyPurpose.AsymmetricDecrypt, KeyOperations.Decrypt, cancellationToken);
        if (found.Version.Name.Version < found.Key.MinDecryptionVersion)
        {
            throw KmsErrors.FailedPrecondition($"key version {found.Version.Name} is below the minimum decryption version {found.Key.MinDecryptionVersion} of key {found.Key.Name}");
        }

        // A ciphertext longer than the modulus cannot be RSA output: the same opaque answer as a bad one.
        if (ciphertext.Length != KeyAlgorithms.Of(found.Version.Algorithm).KeyBits / 8)
        {
            throw KmsErrors.DecryptionFailed();
        }

        var plaintext = await hsm.For(found.Key.Residency).DecryptRsaOaepAsync(Ref(found), found.Version.Algorithm, ciphertext, cancellationToken);
        return new DecryptResult(new SecretBytes(plaintext), found.Version.Name);
    }

    /// <summary>HMAC of <paramref name="data"/> with a MAC version.</summary>
    public async Task<MacResult> GenerateMacAsync(Caller caller, string name, byte[] data, CancellationToken cancellationToken)
    {
        ValidateData(data);
        var found = await FindAsync(caller, name, KeyPurpose.Mac, KeyOperations.Sign, cancellationToken);
        var mac = await hsm.For(found.Key.Residency).ComputeMacAsync(Ref(found), found.Version.Algorithm, data, cancellationToken);
        return new MacResult(mac, found.Version.Name);
    }

    /// <summary>
    /// GenerateMac for each item; an item's failure is its own, with the status its single call
    /// would have had. Each item's checks come first, in order (its data's length; its name,
    /// each distinct name resolved once; the key's policy, purpose and states); then the items
    /// under one key version go to the HSM together, one call per <see cref="CryptoService.HsmChunk"/>
    /// items (one session, one key handle); a call's failure is each of its items' failure.
    /// </summary>
    /// <exception cref="KmsException">InvalidArgument: no items, more than <see cref="Limits.MaxBatchItems"/>, or more than <see cref="Limits.MaxBatchBytes"/> of data in all.</exception>
    public async Task<IReadOnlyList<ItemResult<MacResult>>> BatchGenerateMacAsync(Caller caller, IReadOnlyList<BatchMacItem> items, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(items);
        CryptoService.ValidateBatch(items, items.Sum(i => (long)(i.Data?.Length ?? 0)), "data");
        var resolved = new Dictionary<string, KeyVersionMaterial>(StringComparer.Ordinal);
        var results = new ItemResult<MacResult>[items.Count];
        var admitted = new List<AdmittedMac>(items.Count);
        await CryptoService.AdmitEachAsync(items, results, admitted, async (item, index) =>
        {
            var data = item.Data ?? [];
            ValidateData(data, CryptoService.Field(index, "data"));
            var name = item.Name ?? "";
            if (!resolved.TryGetValue(name, out var found))
            {
                found = await _resolver.ResolveVersionAsync(caller, name, cancellationToken, CryptoService.Field(index, "name"));
                resolved[name] = found;
            }

            // The batch's one audit event names every version its items resolved to, allowed or refused.
            Audit.AuditScope.AddKeyVersion(found.Version.Name.ToString());
            await CheckAsync(caller, found, name, KeyPurpose.Mac, KeyOperations.Sign, cancellationToken);
            _ = hsm.For(found.Key.Residency);
            return new AdmittedMac(index, found, data);
        });

        foreach (var group in admitted.GroupBy(item => item.Found.Version.Id).SelectMany(group => group.Chunk(CryptoService.HsmChunk)))
        {
            var found = group[0].Found;
            var macs = await ItemResult.RunAsync(async () => await hsm.For(found.Key.Residency).ComputeMacManyAsync(
                Ref(found), found.Version.Algorithm, [.. group.Select(item => item.Data)], cancellationToken));
            var error = macs.Error ?? (macs.Value!.Length != group.Length || macs.Value.Any(mac => mac is null)
                ? KmsErrors.Internal($"the HSM answered {macs.Value.Count(mac => mac is not null)} MACs for {group.Length}")
                : null);
            for (var j = 0; j < group.Length; j++)
            {
                results[group[j].Index] = error is null
                    ? new ItemResult<MacResult>(new MacResult(macs.Value![j], found.Version.Name), null)
                    : new ItemResult<MacResult>(null, error);
            }
        }

        return results;
    }

    // A BatchGenerateMac item that passed its checks, waiting for the HSM.
    private sealed record AdmittedMac(int Index, KeyVersionMaterial Found, byte[] Data);

    /// <summary>Whether <paramref name="mac"/> is the version's MAC of <paramref name="data"/>; compared in constant time.</summary>
    public async Task<VerifyResult> VerifyMacAsync(Caller caller, string name, byte[] data, byte[] mac, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(mac);
        ValidateData(data);
        if (mac.Length == 0)
        {
            throw KmsErrors.InvalidArgument("mac", "is required");
        }

        var found = await FindAsync(caller, name, KeyPurpose.Mac, KeyOperations.Verify, cancellationToken);
        var expected = await hsm.For(found.Key.Residency).ComputeMacAsync(Ref(found), found.Version.Algorithm, data, cancellationToken);

        // FixedTimeEquals answers false at once for another length; the length is public.
        return new VerifyResult(CryptographicOperations.FixedTimeEquals(expected, mac), found.Version.Name);
    }

    private static byte[] SigningInput(KeyAlgorithmSpec spec, SignInput input)
    {
        ArgumentNullException.ThrowIfNull(input);
        if (input.Message is { } message)
        {
            ValidateData(message, "message");
            return spec.Digest is { } digest ? KeyAlgorithms.Hash(digest, message) : message;
        }

        if (input.Digest is not { } given)
        {
            throw KmsErrors.InvalidArgument("message", "give the message or its digest");
        }

        if (spec.Digest is null)
        {
            throw KmsErrors.InvalidArgument("digest", $"{spec.Name} signs the message itself, not a digest");
        }

        return given.Length == spec.DigestLength
            ? given
            : throw KmsErrors.InvalidArgument("digest", $"{spec.Name} signs a {spec.DigestLength}-byte {spec.Digest.Value.ToString().ToUpperInvariant()} digest, not {given.Length} bytes");
    }

    // P1363 is an encoding of ECDSA's (r, s); an RSA or Ed25519 signature has one encoding, so
    // asking for it there is refused rather than ignored (before, the caller got the algorithm's
    // one form and no word). DER is the default (an unset field means it, and the SDK and CLI send
    // it explicitly), so it stands for "the algorithm's encoding" and is accepted for every key.
    // Checked after the key's policy: a caller it excludes learns nothing of the algorithm.
    private static void EnsureFormatApplies(KeyAlgorithmSpec spec, SignatureFormat format)
    {
        if (format == SignatureFormat.P1363 && spec.Family != KeyFamily.Ec)
        {
            throw KmsErrors.InvalidArgument("signature_format", $"SIGNATURE_FORMAT_P1363 is an ECDSA encoding; a {spec.Name} signature has one encoding: leave signature_format unset (or DER)");
        }
    }

    private static void ValidateData(byte[] data, string field = "data")
    {
        ArgumentNullException.ThrowIfNull(data);
        if (data.Length > MaxMessageBytes)
        {
            throw KmsErrors.InvalidArgument(field, $"must be at most {MaxMessageBytes} bytes; sign or MAC a digest of larger data");
        }
    }

    private static SubjectPublicKey PublicKeyOf(KeyVersionMaterial found) =>
        found.Version.PublicKey ?? throw KmsErrors.Internal($"key version {found.Version.Name} of an asymmetric algorithm has no stored public key");

    private static KeyMaterialRef Ref(KeyVersionMaterial found) =>
        new(found.Version.Id, found.Material ?? throw KmsErrors.Internal($"key version {found.Version.Name} is {KeyTransitions.StateName(found.Version.State)} but has no material"));

    // The key's policy first (a caller it excludes learns nothing about the key; one it names for
    // nothing, not even that it exists: NOT_FOUND of the name it gave), then the purpose, then the
    // states.
    // No operation: GetPublicKey's, which depends on the key's purpose.
    private async Task<KeyVersionMaterial> FindAsync(Caller caller, string name, KeyPurpose? purpose, KeyOperations? operation, CancellationToken cancellationToken)
    {
        var found = await _resolver.ResolveVersionAsync(caller, name, cancellationToken);
        Audit.AuditScope.SetResource(found.Version.Name.ToString());
        return await CheckAsync(caller, found, name, purpose, operation, cancellationToken);
    }

    // FindAsync's checks of a resolved name (also a batch item's, whose audit event is the batch's: it names no resource, its items' versions among its key versions).
    private async Task<KeyVersionMaterial> CheckAsync(Caller caller, KeyVersionMaterial found, string name, KeyPurpose? purpose, KeyOperations? operation, CancellationToken cancellationToken)
    {
        await keyAccess.EnsureAllowedAsync(caller, found.Key, operation ?? PublicKeyOperations(found.Key.Purpose), EncryptionContext.Empty, name, cancellationToken);
        var key = found.Key;
        if (purpose is { } wanted ? key.Purpose != wanted : key.Purpose is not (KeyPurpose.SignVerify or KeyPurpose.AsymmetricDecrypt))
        {
            var expected = purpose is { } p ? KeyAlgorithms.PurposeName(p) : "SIGN_VERIFY or ASYMMETRIC_DECRYPT";
            throw KmsErrors.FailedPrecondition($"key {key.Name} has purpose {KeyAlgorithms.PurposeName(key.Purpose)}, not {expected}");
        }

        if (key.State != KeyState.Enabled)
        {
            throw KmsErrors.FailedPrecondition($"key {key.Name} is {KeyTransitions.StateName(key.State)}");
        }

        return found.Version.State == KeyState.Enabled
            ? found
            : throw KmsErrors.FailedPrecondition($"key version {found.Version.Name} is {KeyTransitions.StateName(found.Version.State)}");
    }
}

/// <summary>What Sign and Verify sign: the message, or its digest (exactly one is set).</summary>
public sealed record SignInput(byte[]? Message, byte[]? Digest);

/// <summary>How an ECDSA signature is encoded. RSA and Ed25519 signatures have one encoding: P1363 asked of them is INVALID_ARGUMENT, DER (the default) stands for it.</summary>
public enum SignatureFormat
{
    /// <summary>DER SEQUENCE { r, s } (RFC 3279): the default.</summary>
    Der,

    /// <summary>IEEE P1363 r‖s, fixed width.</summary>
    P1363,
}

/// <summary>A signature and the version that made it.</summary>
public sealed record SignResult(byte[] Signature, KeyVersionName KeyVersion, KeyAlgorithm Algorithm);

/// <summary>Whether a signature or MAC verified, and against which version.</summary>
public sealed record VerifyResult(bool Valid, KeyVersionName KeyVersion);

/// <summary>A version's public key.</summary>
public sealed record PublicKeyResult(SubjectPublicKey PublicKey, KeyVersionName KeyVersion, KeyAlgorithm Algorithm);

/// <summary>A MAC and the version that made it.</summary>
public sealed record MacResult(byte[] Mac, KeyVersionName KeyVersion);

/// <summary>One item of BatchGenerateMac, as the caller sent it (validated per item).</summary>
/// <param name="Name">A key version, or a key or alias (its primary version).</param>
/// <param name="Data">The data to MAC (at most <see cref="SigningService.MaxMessageBytes"/>).</param>
public sealed record BatchMacItem(string? Name, byte[]? Data);
