using System.Security.Cryptography;
using Kms.Core.Crypto;
using Kms.Core.Errors;
using Kms.Core.Keys;
using Kms.Core.Names;
using Kms.Core.Ports;

namespace Kms.Core.Services;

/// <summary>Encrypt, Decrypt, data keys and random bytes: the hot path, all crypto in the HSM.</summary>
/// <remarks>
/// A blob that cannot be decrypted — malformed, of an unknown or another tenant's key
/// version, tampered, or under another context — is one opaque
/// <see cref="KmsErrorCode.DecryptionFailed"/>, so blobs cannot probe other tenants.
/// </remarks>
public sealed class CryptoService(IHsm hsm, IKeyStore store)
{
    /// <summary>Encrypts up to <see cref="Limits.MaxEncryptPlaintextBytes"/> with the key's primary version.</summary>
    public async Task<EncryptResult> EncryptAsync(Caller caller, KeyName name, byte[] plaintext, EncryptionContext context, CancellationToken cancellationToken)
    {
        if (plaintext.Length == 0)
        {
            throw KmsErrors.InvalidArgument("plaintext", "is required (1 byte or more)");
        }

        if (plaintext.Length > Limits.MaxEncryptPlaintextBytes)
        {
            throw KmsErrors.InvalidArgument("plaintext", $"must be at most {Limits.MaxEncryptPlaintextBytes} bytes; encrypt larger data with a data key (GenerateDataKey)");
        }

        var primary = await GetPrimaryForEncryptionAsync(caller, name, cancellationToken);
        var iv = await hsm.GenerateRandomAsync(CiphertextBlob.IvLength, cancellationToken);
        var blob = await SealAsync(caller, primary, iv, plaintext, context, cancellationToken);
        return new EncryptResult(blob, primary.Version.Name);
    }

    /// <summary>Decrypts a blob made by Encrypt or GenerateDataKey in the caller's tenant.</summary>
    /// <returns>The plaintext; the caller disposes it (zeroing it) when done.</returns>
    public async Task<DecryptResult> DecryptAsync(Caller caller, byte[] ciphertext, EncryptionContext context, CancellationToken cancellationToken)
    {
        if (ciphertext.Length == 0)
        {
            throw KmsErrors.InvalidArgument("ciphertext", "is required");
        }

        if (ciphertext.Length > Limits.MaxCiphertextBytes)
        {
            throw KmsErrors.InvalidArgument("ciphertext", $"must be at most {Limits.MaxCiphertextBytes} bytes");
        }

        if (!CiphertextBlob.TryParse(ciphertext, out var blob))
        {
            throw KmsErrors.DecryptionFailed();
        }

        // Tenant-scoped lookup: another tenant's version is not found, and "not found" is
        // answered exactly like a bad tag.
        var found = await store.FindVersionMaterialAsync(caller.Tenant, blob!.KeyVersionId, cancellationToken)
            ?? throw KmsErrors.DecryptionFailed();
        EnsureUsable(found, forEncryption: false);

        var aad = CiphertextBlob.BuildAad(blob.KeyVersionId, caller.Tenant, context);
        var plaintext = await hsm.DecryptAesGcmAsync(
            new KeyMaterialRef(found.Version.Id, found.Material), blob.Iv.ToArray(), aad, blob.CiphertextAndTag.ToArray(), cancellationToken);
        return new DecryptResult(new SecretBytes(plaintext), found.Version.Name);
    }

    /// <summary>
    /// A fresh 256-bit data key from the HSM's RNG, encrypted under the key's primary
    /// version. Two HSM calls: one random draw (key and IV together) and one encryption.
    /// </summary>
    /// <returns>The data key; the caller disposes it (zeroing the plaintext) when done.</returns>
    public async Task<DataKeyResult> GenerateDataKeyAsync(Caller caller, KeyName name, EncryptionContext context, CancellationToken cancellationToken)
    {
        var primary = await GetPrimaryForEncryptionAsync(caller, name, cancellationToken);
        var random = await hsm.GenerateRandomAsync(Limits.DataKeyBytes + CiphertextBlob.IvLength, cancellationToken);
        var dataKey = random[..Limits.DataKeyBytes];
        var iv = random[Limits.DataKeyBytes..];
        CryptographicOperations.ZeroMemory(random);
        try
        {
            var blob = await SealAsync(caller, primary, iv, dataKey, context, cancellationToken);
            return new DataKeyResult(new SecretBytes(dataKey), blob, primary.Version.Name);
        }
        catch
        {
            CryptographicOperations.ZeroMemory(dataKey);
            throw;
        }
    }

    /// <summary>Random bytes from the HSM: 1 to <see cref="Limits.MaxRandomBytes"/>.</summary>
    public async Task<byte[]> GenerateRandomAsync(int length, CancellationToken cancellationToken)
    {
        if (length is < 1 or > Limits.MaxRandomBytes)
        {
            throw KmsErrors.InvalidArgument("length_bytes", $"must be 1 to {Limits.MaxRandomBytes}");
        }

        return await hsm.GenerateRandomAsync(length, cancellationToken);
    }

    private async Task<KeyVersionMaterial> GetPrimaryForEncryptionAsync(Caller caller, KeyName name, CancellationToken cancellationToken)
    {
        caller.EnsureSameTenant(name.Tenant, name.ToString());
        var primary = await store.GetPrimaryMaterialAsync(name, cancellationToken) ?? throw KmsErrors.NotFound(name.ToString());
        EnsureUsable(primary, forEncryption: true);
        return primary;
    }

    private async Task<byte[]> SealAsync(Caller caller, KeyVersionMaterial primary, byte[] iv, byte[] plaintext, EncryptionContext context, CancellationToken cancellationToken)
    {
        var aad = CiphertextBlob.BuildAad(primary.Version.Id, caller.Tenant, context);
        var sealedBytes = await hsm.EncryptAesGcmAsync(new KeyMaterialRef(primary.Version.Id, primary.Material), iv, aad, plaintext, cancellationToken);
        return CiphertextBlob.Format(primary.Version.Id, iv, sealedBytes);
    }

    private static void EnsureUsable(KeyVersionMaterial found, bool forEncryption)
    {
        var key = found.Key;
        if (key.Purpose != KeyPurpose.EncryptDecrypt)
        {
            throw KmsErrors.FailedPrecondition($"key {key.Name} has purpose {key.Purpose}, not ENCRYPT_DECRYPT");
        }

        if (key.State != KeyState.Enabled)
        {
            throw KmsErrors.FailedPrecondition($"key {key.Name} is {StateName(key.State)}");
        }

        if (found.Version.State != KeyState.Enabled)
        {
            throw KmsErrors.FailedPrecondition(forEncryption
                ? $"the primary version of key {key.Name} ({found.Version.Name.Version}) is {StateName(found.Version.State)}"
                : $"key version {found.Version.Name} is {StateName(found.Version.State)}");
        }
    }

    /// <summary>The state's name as the API spells it.</summary>
    public static string StateName(KeyState state) => state switch
    {
        KeyState.Enabled => "ENABLED",
        KeyState.Disabled => "DISABLED",
        KeyState.DestroyScheduled => "DESTROY_SCHEDULED",
        KeyState.Destroyed => "DESTROYED",
        _ => state.ToString(),
    };
}

/// <summary>A ciphertext blob and the key version that made it.</summary>
public sealed record EncryptResult(byte[] Ciphertext, KeyVersionName KeyVersion);

/// <summary>A plaintext (zeroed on dispose) and the key version that decrypted it.</summary>
public sealed record DecryptResult(SecretBytes Plaintext, KeyVersionName KeyVersion) : IDisposable
{
    /// <summary>Zeroes the plaintext.</summary>
    public void Dispose() => Plaintext.Dispose();
}

/// <summary>A data key (plaintext zeroed on dispose), its blob and the key version that encrypted it.</summary>
public sealed record DataKeyResult(SecretBytes Plaintext, byte[] Ciphertext, KeyVersionName KeyVersion) : IDisposable
{
    /// <summary>Zeroes the plaintext data key.</summary>
    public void Dispose() => Plaintext.Dispose();
}
