using System.Security.Cryptography;
using Kms.Core.Crypto;
using Kms.Core.Errors;
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

    public ValueTask<byte[]> GenerateRandomAsync(int length, CancellationToken cancellationToken)
    {
        Count("random");
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
        using var aes = new AesGcm(Unwrap(key), 16);
        var output = new byte[plaintext.Length + 16];
        aes.Encrypt(iv, plaintext, output.AsSpan(0, plaintext.Length), output.AsSpan(plaintext.Length), aad);
        return ValueTask.FromResult(output);
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

    public ValueTask<byte[]> SignEcdsaAsync(KeyMaterialRef key, EcCurve curve, byte[] digest, CancellationToken cancellationToken)
    {
        Count("sign");
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

    /// <summary>Key versions evicted (destroyed) so far.</summary>
    public List<Kms.Core.Keys.KeyVersionId> Evicted { get; } = [];

    public void EvictKey(Kms.Core.Keys.KeyVersionId id)
    {
        lock (Evicted)
        {
            Evicted.Add(id);
        }
    }

    public void Dispose() => CryptographicOperations.ZeroMemory(_domainKey);

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
