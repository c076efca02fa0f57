namespace Kms.Client.DataProtection;

/// <summary>How <c>ProtectKeysWithKms</c> binds the key ring's ciphertexts to this application.</summary>
/// <remarks>
/// Every key ring entry is encrypted with the encryption context
/// <c>{ "purpose": "aspnetcore-dataprotection", "application": name }</c>, where the name is
/// <see cref="ApplicationName"/>, or else Data Protection's own application discriminator
/// (<c>SetApplicationName(...)</c>; under an ASP.NET Core host without it, the content root
/// path). The KMS decrypts an entry only under the very same context, so a key file copied to
/// an application with another name, or a ciphertext of another use of the same KMS key,
/// does not decrypt as this application's key. Change the name and the entries written before
/// no longer decrypt: name applications explicitly.
/// </remarks>
public sealed class KmsDataProtectionOptions
{
    /// <summary>
    /// The application name bound into the encryption context (at most 1024 UTF-8 bytes);
    /// null: Data Protection's application discriminator. When both are null, the context holds
    /// only the purpose, and every such application can decrypt the others' key rings (as far
    /// as the KMS key's policy lets it).
    /// </summary>
    public string? ApplicationName { get; set; }
}
