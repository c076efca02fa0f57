using System.Buffers.Binary;
using System.Security.Cryptography;
using Kms.Contracts.V1;

namespace Kms.Client;

/// <summary>
/// BYOK on the caller's side: wraps key material for an import job's public key, as
/// ImportKeyVersion expects it — RSA-OAEP of a fresh AES-256 key under the job's key, followed
/// by AES-KWP (RFC 5649) of the material under that AES key (the layout of PKCS#11
/// <c>CKM_RSA_AES_KEY_WRAP</c>). Material is raw bytes for AES and HMAC keys, PKCS#8 DER for
/// RSA and EC private keys.
/// </summary>
public static class KeyImport
{
    /// <summary>Wraps <paramref name="material"/> for the import job whose public key (DER SubjectPublicKeyInfo) is <paramref name="importJobPublicKey"/>.</summary>
    /// <exception cref="ArgumentException">A method this SDK does not know, or a public key of the wrong size for it.</exception>
    public static byte[] Wrap(ReadOnlySpan<byte> importJobPublicKey, ImportMethod method, ReadOnlySpan<byte> material)
    {
        var (bits, padding) = method switch
        {
            ImportMethod.RsaOaep3072Sha1Aes256 => (3072, RSAEncryptionPadding.OaepSHA1),
            ImportMethod.RsaOaep4096Sha1Aes256 => (4096, RSAEncryptionPadding.OaepSHA1),
            ImportMethod.RsaOaep3072Sha256Aes256 => (3072, RSAEncryptionPadding.OaepSHA256),
            ImportMethod.RsaOaep4096Sha256Aes256 => (4096, RSAEncryptionPadding.OaepSHA256),
            _ => throw new ArgumentException($"unknown import method {method}", nameof(method)),
        };
        if (material.IsEmpty)
        {
            throw new ArgumentException("no key material", nameof(material));
        }

        using var rsa = RSA.Create();
        rsa.ImportSubjectPublicKeyInfo(importJobPublicKey, out _);
        if (rsa.KeySize != bits)
        {
            throw new ArgumentException($"the import job's key is {rsa.KeySize} bits, not the {bits} of {method}", nameof(importJobPublicKey));
        }

        var ephemeral = RandomNumberGenerator.GetBytes(32);
        try
        {
            var encrypted = rsa.Encrypt(ephemeral, padding);
            var wrapped = AesKeyWrapPad.Wrap(ephemeral, material);
            return [.. encrypted, .. wrapped];
        }
        finally
        {
            CryptographicOperations.ZeroMemory(ephemeral);
        }
    }
}

/// <summary>AES Key Wrap with Padding (RFC 5649), wrap direction only, over .NET's AES-ECB.</summary>
internal static class AesKeyWrapPad
{
    private const uint AlternativeIvPrefix = 0xA65959A6;

    /// <summary>Wraps <paramref name="plaintext"/> (1 byte or more) under <paramref name="kek"/>.</summary>
    public static byte[] Wrap(ReadOnlySpan<byte> kek, ReadOnlySpan<byte> plaintext)
    {
        if (plaintext.IsEmpty)
        {
            throw new ArgumentException("nothing to wrap", nameof(plaintext));
        }

        using var aes = Aes.Create();
        var key = kek.ToArray();
        try
        {
            aes.Key = key;
        }
        finally
        {
            CryptographicOperations.ZeroMemory(key);
        }

        var padded = (plaintext.Length + 7) / 8 * 8;
        var n = padded / 8;
        var output = new byte[8 + padded];
        BinaryPrimitives.WriteUInt32BigEndian(output, AlternativeIvPrefix);
        BinaryPrimitives.WriteUInt32BigEndian(output.AsSpan(4), (uint)plaintext.Length);
        plaintext.CopyTo(output.AsSpan(8));
        var block = new byte[16];
        try
        {
            if (n == 1)
            {
                // One 64-bit block: a single AES encryption of AIV || P (RFC 5649 §4.1).
                aes.EncryptEcb(output, block, PaddingMode.None);
                block.CopyTo(output, 0);
                return output;
            }

            // RFC 3394 wrapping with the alternative IV: A in output[0..8], R[i] in output[8i..8i+8].
            for (var j = 0; j < 6; j++)
            {
                for (var i = 1; i <= n; i++)
                {
                    output.AsSpan(0, 8).CopyTo(block);
                    output.AsSpan(8 * i, 8).CopyTo(block.AsSpan(8));
                    aes.EncryptEcb(block, block, PaddingMode.None);
                    var t = (ulong)((n * j) + i);
                    BinaryPrimitives.WriteUInt64BigEndian(output, BinaryPrimitives.ReadUInt64BigEndian(block) ^ t);
                    block.AsSpan(8, 8).CopyTo(output.AsSpan(8 * i));
                }
            }

            return output;
        }
        finally
        {
            CryptographicOperations.ZeroMemory(block);
        }
    }
}
