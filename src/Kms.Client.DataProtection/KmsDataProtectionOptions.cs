namespace Kms.Client.DataProtection;

/// <summary>How <c>ProtectKeysWithKms</c> binds the key ring's ciphertexts to this application.</summary>
/// <remarks>
/// Every key ring entry is encrypted with the encryption context
/// <c>{ "purpose": "aspnetcore-dataprotection", "application": name }</c> plus the Data Protection
/// key's id and creation, activation and expiration dates (<c>dataprotection-key-id</c>,
/// <c>-created</c>, <c>-activated</c>, <c>-expires</c>) and its descriptor's deserializer type and
/// settings digest (<c>dataprotection-key-deserializer</c>, <c>-descriptor</c>), where the name is
/// <see cref="ApplicationName"/>, or else Data Protection's own application discriminator as
/// set by <c>SetApplicationName(...)</c>. One of the two must be set: Data Protection's default
/// discriminator (under a host, the content root path — <c>/app</c> in every container built the
/// usual way) is refused, since applications sharing it could decrypt each other's key rings.
/// The KMS decrypts an entry only under the very same context, so a key file copied to an
/// application with another name, or a ciphertext of another use of the same KMS key, does
/// not decrypt as this application's key. Change the name and the entries written before no
/// longer decrypt.
/// </remarks>
public sealed class KmsDataProtectionOptions
{
    /// <summary>
    /// The application name bound into the encryption context (at most 1024 UTF-8 bytes, not
    /// empty); null: Data Protection's application discriminator, which must then have been set
    /// with <c>SetApplicationName(...)</c> (its default, the content root path, is refused).
    /// </summary>
    public string? ApplicationName { get; set; }

    /// <summary>
    /// Whether entries of format version 1 — written before entries were bound to their Data
    /// Protection key's id and dates — are still read (default true). Set it false once every
    /// key written before has expired (Data Protection's keys live 90 days unless configured
    /// otherwise): a version 1 entry is then refused.
    /// </summary>
    /// <remarks>
    /// A repository writer cannot turn an entry of version 2 into version 1 (its ciphertext was
    /// encrypted under the context with the id and dates, and the KMS refuses it under any other),
    /// but a version 1 entry binds no id or dates: a writer can copy it under another key id, or
    /// change its key's dates, and it still decrypts. That is what this setting ends.
    /// </remarks>
    public bool ReadUnboundEntries { get; set; } = true;

    /// <summary>
    /// Whether entries of format version 2 (and 1) — written before entries were bound to their
    /// Data Protection key's descriptor — are still read (default true). Set it false once every
    /// key written before has expired: such an entry is then refused.
    /// </summary>
    /// <remarks>
    /// A repository writer cannot turn an entry of version 3 into version 2 (the KMS refuses its
    /// ciphertext under a context without the descriptor), but a version 2 entry binds no
    /// descriptor: a writer can change its key's <c>deserializerType</c> (the type Data Protection
    /// instantiates to read the key) or its algorithm settings (a weaker validation algorithm)
    /// and it still decrypts. That is what this setting ends.
    /// </remarks>
    public bool ReadEntriesWithUnboundDescriptor { get; set; } = true;

    /// <summary>
    /// Whether keys whose secret is not KMS-encrypted — in plain text, as Data Protection writes
    /// keys without <c>ProtectKeysWithKms</c>, or read by another decryptor — are still read from
    /// the repository (default false: each is dropped from the key ring as it is read, with a
    /// warning naming its id and why, event 3008). Set it true while an application that kept its
    /// key ring unencrypted moves to <c>ProtectKeysWithKms</c>, so that what its old keys protected
    /// (cookies, tokens) still unprotects; set it false again once they have expired (90 days after
    /// their creation unless configured otherwise), or revoke them.
    /// </summary>
    /// <remarks>
    /// Someone who may write the repository (a file share, a database table, a blob container) but
    /// holds no KMS rights can add a key of its own in plain text, whose secret it then knows: read,
    /// it unprotects whatever the writer forges (auth cookies, antiforgery tokens), names any
    /// <c>deserializerType</c>, and, once it is the newest active key, protects the application's
    /// new data. That is what leaving this setting false ends.
    /// </remarks>
    public bool ReadUnencryptedKeys { get; set; }

    /// <summary>
    /// KMS keys (<c>tenants/{t}/keys/{k}</c>, not aliases) whose entries are read besides those of
    /// the configured key — or, when it is an alias, of the key the alias names now (default: none).
    /// List the key the application used before a key switch: before moving the alias to another key
    /// (or changing the key name given to <c>ProtectKeysWithKms</c>), add the key it names now, and
    /// keep it listed until the keys written under it have expired (90 days after their creation
    /// unless configured otherwise) and what they protected is no longer needed, or revoke them.
    /// </summary>
    /// <remarks>
    /// KMS Decrypt finds the key version from the ciphertext, and an entry another KMS key of the
    /// deployment encrypted under this application's context decrypts whenever the application's
    /// principal may decrypt with that key (a tenant-wide <c>key-user</c> may, with every key of
    /// the tenant): someone with ENCRYPT on such a key who may write the repository could add a key
    /// whose secret they know. So an entry decrypted by another key than these is refused (event
    /// 3009), naming both keys. Read once, by <c>ProtectKeysWithKms</c>; a name that is not a key's
    /// is refused there with an <see cref="ArgumentException"/>.
    /// </remarks>
    public IList<string> AdditionalDecryptionKeys { get; } = [];
}
