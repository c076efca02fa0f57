namespace Kms.Core.Keys;

/// <summary>What a key may be used for; fixed at creation.</summary>
public enum KeyPurpose
{
    /// <summary>Symmetric authenticated encryption: Encrypt, Decrypt, GenerateDataKey.</summary>
    EncryptDecrypt = 1,

    /// <summary>Asymmetric signing: Sign, Verify, GetPublicKey.</summary>
    SignVerify = 2,

    /// <summary>Asymmetric decryption (RSA-OAEP): AsymmetricDecrypt, GetPublicKey.</summary>
    AsymmetricDecrypt = 3,

    /// <summary>Message authentication codes (HMAC): GenerateMac, VerifyMac.</summary>
    Mac = 4,
}
