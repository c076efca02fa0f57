using System.Security.Cryptography;
using Grpc.Core;
using Kms.Core.Errors;
using Kms.Core.Names;

namespace Kms.Client.DataProtection;

/// <summary>
/// The KMS keys whose entries this application's key ring reads: the configured key — or, when it
/// is an alias, the key the alias names now — and <see cref="KmsDataProtectionOptions.AdditionalDecryptionKeys"/>.
/// KMS Decrypt finds the key version from the ciphertext and names it in its answer; an entry that
/// another KMS key of the deployment encrypted, under this application's context, decrypts whenever
/// the application's principal may decrypt with that key, so the decryptor asks this which keys it takes.
/// </summary>
/// <remarks>
/// An alias is resolved through the KMS — GetAlias, or, for a principal without
/// <c>kms.aliases.read</c> (a <c>key-user</c>), Encrypt of one byte under the alias with the context
/// <c>{purpose: aspnetcore-dataprotection-alias-resolution, application: name}</c>, whose answer
/// names the key version the alias encrypts with (the ciphertext is dropped) — and the answer is
/// kept for <see cref="AliasResolutionLifetime"/>. An entry of another key than the one kept is
/// checked again against a fresh resolution before it is refused, so a moved alias is followed at
/// once; entries of the key it named before are read only if that key is listed in
/// <see cref="KmsDataProtectionOptions.AdditionalDecryptionKeys"/>.
/// </remarks>
internal sealed class KmsDecryptionKeys
{
    /// <summary>How long an alias's resolution is used without asking the KMS again.</summary>
    public static readonly TimeSpan AliasResolutionLifetime = TimeSpan.FromMinutes(1);

    /// <summary>The purpose in the context of the one-byte Encrypt that resolves an alias for a principal that may not read aliases.</summary>
    internal const string AliasResolutionPurpose = "aspnetcore-dataprotection-alias-resolution";

    private readonly Lock _gate = new();
    private (KeyName Key, DateTimeOffset At)? _resolved;

    private KmsDecryptionKeys(KeyReference configured, IReadOnlyList<KeyName> additional)
    {
        Configured = configured;
        Additional = additional;
    }

    /// <summary>The key (or alias) new entries are encrypted under.</summary>
    public KeyReference Configured { get; }

    /// <summary>The keys <see cref="KmsDataProtectionOptions.AdditionalDecryptionKeys"/> lists.</summary>
    public IReadOnlyList<KeyName> Additional { get; }

    /// <summary>Parses the configured key name and the additional keys.</summary>
    /// <exception cref="ArgumentException">A name is not a key's (or, for <paramref name="keyName"/>, an alias's) resource name.</exception>
    public static KmsDecryptionKeys Of(string keyName, IEnumerable<string>? additional)
    {
        KeyReference configured;
        try
        {
            configured = KeyReference.Parse(keyName, "keyName");
        }
        catch (KmsException e)
        {
            throw new ArgumentException($"ProtectKeysWithKms: '{KmsErrors.Printable(keyName)}' is not a KMS key or alias name: {e.Message}", nameof(keyName), e);
        }

        var keys = new List<KeyName>();
        foreach (var name in additional ?? [])
        {
            try
            {
                keys.Add(KeyName.Parse(name, "AdditionalDecryptionKeys"));
            }
            catch (KmsException e)
            {
                throw new ArgumentException($"KmsDataProtectionOptions.AdditionalDecryptionKeys: '{KmsErrors.Printable(name)}' is not a KMS key name (tenants/{{tenant}}/keys/{{key}}; an alias is not taken there, list the key it named): {e.Message}", nameof(additional), e);
            }
        }

        return new KmsDecryptionKeys(configured, keys);
    }

    /// <summary>Whether <paramref name="key"/> is taken without asking the KMS: the configured key itself, or one of the additional keys.</summary>
    public bool TakenAsConfigured(KeyName key) =>
        (Configured is KeyReference.ToKey direct && direct.Name == key) || Additional.Contains(key);

    /// <summary>
    /// The key the configured alias names: kept from a resolution less than
    /// <see cref="AliasResolutionLifetime"/> old unless <paramref name="fresh"/>, else asked of the KMS.
    /// </summary>
    /// <returns>The key, and whether it was kept (rather than asked just now).</returns>
    /// <exception cref="RpcException">The KMS did not resolve it.</exception>
    /// <exception cref="CryptographicException">The KMS answered with something that is not a key name.</exception>
    /// <exception cref="InvalidOperationException">The configured key is not an alias.</exception>
    public async Task<(KeyName Key, bool Kept)> AliasTargetAsync(KmsClient client, TimeProvider time, string application, bool fresh)
    {
        if (Configured is not KeyReference.ToAlias alias)
        {
            throw new InvalidOperationException("the configured key is not an alias");
        }

        var now = time.GetUtcNow();
        lock (_gate)
        {
            if (!fresh && _resolved is { } kept && now - kept.At < AliasResolutionLifetime && now >= kept.At)
            {
                return (kept.Key, true);
            }
        }

        var target = await ResolveAsync(client, alias.Name, application).ConfigureAwait(false);
        lock (_gate)
        {
            _resolved = (target, now);
        }

        return (target, false);
    }

    private static async Task<KeyName> ResolveAsync(KmsClient client, AliasName alias, string application)
    {
        string named;
        try
        {
            named = (await client.GetAliasAsync(alias.ToString()).ConfigureAwait(false)).Key;
        }
        catch (RpcException e) when (e.StatusCode == StatusCode.PermissionDenied)
        {
            // A key-user may not read aliases, but may encrypt under this one (the encryptor does):
            // the answer names the key version the alias encrypts with now.
            var context = new Dictionary<string, string>(StringComparer.Ordinal) { ["purpose"] = AliasResolutionPurpose, ["application"] = application };
            named = (await client.EncryptAsync(alias.ToString(), new byte[1], context).ConfigureAwait(false)).KeyVersion;
            named = KeyVersionOrKey(named);
        }

        try
        {
            return KeyName.Parse(named, "key");
        }
        catch (KmsException e)
        {
            throw new CryptographicException($"the KMS resolved alias {alias} to '{KmsErrors.Printable(named)}', not a key name: {e.Message}", e);
        }
    }

    // A key version's name cut to its key's; anything else as it is (KeyName.Parse then refuses it).
    private static string KeyVersionOrKey(string name)
    {
        var at = name.LastIndexOf("/versions/", StringComparison.Ordinal);
        return at < 0 ? name : name[..at];
    }

    /// <summary>The keys taken, for messages: the configured one (with what the alias names, when known) and the additional ones.</summary>
    public string Describe(KeyName? aliasTarget)
    {
        var configured = Configured is KeyReference.ToAlias && aliasTarget is not null ? $"{Configured} (which names {aliasTarget})" : Configured.ToString();
        return Additional.Count == 0
            ? $"the configured key {configured}"
            : $"the configured key {configured} or KmsDataProtectionOptions.AdditionalDecryptionKeys ({string.Join(", ", Additional)})";
    }

    /// <summary>A key version name as the KMS answered it, parsed.</summary>
    /// <exception cref="KmsException">It is not one.</exception>
    public static KeyVersionName ParseVersion(string keyVersion) => KeyVersionName.Parse(keyVersion, "key_version");
}
