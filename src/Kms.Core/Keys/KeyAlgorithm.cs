namespace Kms.Core.Keys;

/// <summary>The algorithm of a key version's material.</summary>
public enum KeyAlgorithm
{
    /// <summary>AES-256-GCM: 96-bit IV from the HSM, 128-bit tag.</summary>
    Aes256Gcm = 1,
}
