namespace Kms.Core.Keys;

/// <summary>What a key may be used for; fixed at creation.</summary>
public enum KeyPurpose
{
    /// <summary>Symmetric authenticated encryption: Encrypt, Decrypt, GenerateDataKey.</summary>
    EncryptDecrypt = 1,
}
