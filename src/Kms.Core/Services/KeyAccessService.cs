using System.Security.Cryptography;
using Kms.Core.Access;
using Kms.Core.Crypto;
using Kms.Core.Errors;
using Kms.Core.Keys;
using Kms.Core.Names;
using Kms.Core.Ports;

namespace Kms.Core.Services;

/// <summary>
/// Per-key policies and grants: a key may narrow who uses it beyond the tenant's roles. A
/// policy lists principals and the operations each may perform; a grant lets a principal
/// use the key for some operations only when the request's encryption context contains
/// given pairs. Roles are still required: policies and grants only narrow. Grants apply to
/// keys with a policy (on an unrestricted key a grant would narrow nothing, so creating one
/// is refused); an empty policy lifts the restriction and revokes the key's grants with it.
/// </summary>
public sealed class KeyAccessService(IAccessStore access, IKeyStore keys, TimeProvider time)
{
    /// <summary>Most entries in a key policy; most grants per key.</summary>
    public const int MaxEntries = 100;

    /// <summary>Replaces a key's policy (no entries: the key is unrestricted again, and its grants are revoked).</summary>
    /// <remarks>
    /// An entry names a principal of the key's tenant: a missing one, or one of another tenant, is
    /// INVALID_ARGUMENT (the same answer); a deleted one is FAILED_PRECONDITION naming it, nothing
    /// changed — also when the policy being replaced names it (DeletePrincipal leaves policies as
    /// they are, since taking an entry out could lift a restriction; the next policy set drops it).
    /// A principal deleted while the call runs may still be written: the state DeletePrincipal
    /// leaves anyway, and harmless, since the name is never registered again.
    /// </remarks>
    public async Task<KeyPolicy> SetKeyPolicyAsync(Caller caller, KeyName key, IEnumerable<KeyValuePair<string, KeyOperations>> entries, CancellationToken cancellationToken)
    {
        var purpose = (await GetKeyAsync(caller, key, cancellationToken)).Purpose;
        var given = entries.ToList();

        // Before any lookup: each entry costs a read, and a request may repeat one entry by the
        // hundred thousand.
        if (given.Count > MaxEntries)
        {
            throw KmsErrors.InvalidArgument("entries", $"at most {MaxEntries} entries (got {given.Count})");
        }

        // Fields named as the request has them (entries[i].…), so a caller can find the entry.
        var policy = new Dictionary<string, KeyOperations>(StringComparer.Ordinal);
        for (var i = 0; i < given.Count; i++)
        {
            var (principal, operations) = given[i];
            var name = PrincipalName.Parse(principal, $"entries[{i}].principal");
            if (policy.ContainsKey(name.ToString()))
            {
                // Merged, the last entry won silently: what the caller meant is not knowable.
                throw KmsErrors.InvalidArgument($"entries[{i}].principal", $"names {name} again: one entry per principal");
            }

            // A deleted principal cannot authenticate, and its name is never registered again: an
            // entry for it would be dead weight that the access review no longer explains. Checked
            // after the tenant, so another tenant's deleted principal reads as a missing one.
            if ((await EnsureTenantPrincipalAsync(name, key.Tenant, $"entries[{i}].principal", cancellationToken)).Deleted)
            {
                throw KmsErrors.PrincipalDeletedInPolicy(name.ToString(), $"entries[{i}].principal");
            }

            if (operations == KeyOperations.None)
            {
                throw KmsErrors.InvalidArgument($"entries[{i}].operations", $"entry for {name} allows nothing; leave it out");
            }

            // An entry may list more than the key's purpose uses (one entry for every key of an
            // application); one that lists nothing it uses allows nothing, as an empty one.
            if ((operations & ApplicableOperations(purpose)) == KeyOperations.None)
            {
                throw KmsErrors.InvalidArgument($"entries[{i}].operations", $"entry for {name}: {NotApplicable(operations, purpose)}; it would allow nothing");
            }

            policy[name.ToString()] = operations;
        }

        var result = new KeyPolicy(key, policy);
        await access.SetKeyPolicyAsync(result, Clock.Now(time), cancellationToken);
        return result;
    }

    /// <summary>A key's policy (no entries when it has none).</summary>
    public async Task<KeyPolicy> GetKeyPolicyAsync(Caller caller, KeyName key, CancellationToken cancellationToken)
    {
        await GetKeyAsync(caller, key, cancellationToken);
        return await access.GetKeyPolicyAsync(key, cancellationToken);
    }

    /// <summary>Creates a grant on a key.</summary>
    public async Task<Grant> CreateGrantAsync(
        Caller caller,
        KeyName key,
        PrincipalName grantee,
        KeyOperations operations,
        IReadOnlyDictionary<string, string>? contextEquals,
        CancellationToken cancellationToken)
    {
        var stored = await GetKeyAsync(caller, key, cancellationToken);
        if (operations == KeyOperations.None)
        {
            throw KmsErrors.InvalidArgument("grant.operations", "must allow at least one operation");
        }

        // A grant is made for what the key is used for: one for an operation the key's purpose
        // has no use of, or constraining a context its calls never carry, could never apply.
        if ((operations & ~ApplicableOperations(stored.Purpose)) is var unused && unused != KeyOperations.None)
        {
            throw KmsErrors.InvalidArgument("grant.operations", $"{NotApplicable(unused, stored.Purpose)}, so a grant of it could never apply");
        }

        if (contextEquals is { Count: > 0 } && stored.Purpose != KeyPurpose.EncryptDecrypt)
        {
            throw KmsErrors.InvalidArgument("grant.context_equals", $"a key of purpose {KeyAlgorithms.PurposeName(stored.Purpose)} is used without an encryption context (only ENCRYPT_DECRYPT keys take one), so a grant constraining it could never apply");
        }

        // The request's own fields before the key's and tenant's state (FAILED_PRECONDITION below).
        var constraint = EncryptionContext.Create(contextEquals, "grant.context_equals").Entries;

        // Judged again by the store, in the grant's write: a deletion scheduled after this read is seen there.
        KeyTransitions.EnsureGrantable(stored.Name, stored.State);

        // An offboarded tenant gets nothing new: no grant a later restore could bring back.
        await TenantGate.EnsureActiveAsync(access, key.Tenant, cancellationToken);

        if ((await EnsureTenantPrincipalAsync(grantee, key.Tenant, "grant.grantee", cancellationToken)).Deleted)
        {
            // DeletePrincipal revoked its grants; a new one would never be used (it cannot authenticate).
            throw KmsErrors.PrincipalDeleted(grantee.ToString());
        }

        if (!stored.Restricted)
        {
            throw KmsErrors.FailedPrecondition($"key {key} has no policy, so every key-user of its tenant may use it and a grant would narrow nothing; set a key policy first");
        }

        if ((await access.ListGrantsAsync(key, includeRevoked: false, cancellationToken)).Count >= MaxEntries)
        {
            throw KmsErrors.FailedPrecondition($"key {key} has {MaxEntries} active grants already; revoke some first");
        }

        var grant = new Grant(Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(8)), key, grantee, operations, constraint, Clock.Now(time));
        await access.CreateGrantAsync(grant, cancellationToken);
        return grant;
    }

    /// <summary>
    /// One page of a key's active grants, oldest first; <see cref="Limits.FormerlyUnpagedDefaultPageSize"/>
    /// of them when no size is asked (every one: a key has at most <see cref="MaxEntries"/>).
    /// </summary>
    /// <exception cref="KmsException">InvalidArgument naming page_token for a token not issued for this key's listing.</exception>
    public async Task<Page<Grant>> ListGrantsAsync(Caller caller, KeyName key, int pageSize, string? pageToken, CancellationToken cancellationToken)
    {
        var size = PageToken.Size(pageSize, Limits.FormerlyUnpagedDefaultPageSize);
        await GetKeyAsync(caller, key, cancellationToken);
        var scope = key + "/grants";
        var rows = await access.ListGrantsAsync(key, PageToken.DecodeTimeAndId(scope, pageToken), size + 1, cancellationToken);
        var page = rows.Take(size).ToList();
        return new Page<Grant>(page, rows.Count > size ? PageToken.EncodeTimeAndId(scope, page[^1].CreateTime, page[^1].Id) : null);
    }

    /// <summary>Revokes a grant at once.</summary>
    /// <remarks>
    /// Revoking a grant of the key that is revoked already succeeds and keeps the first revocation's
    /// time: a retry whose first answer was lost is told what happened, not NOT_FOUND. A grant id
    /// the key never had is NOT_FOUND.
    /// </remarks>
    public async Task RevokeGrantAsync(Caller caller, KeyName key, string grantId, CancellationToken cancellationToken)
    {
        await GetKeyAsync(caller, key, cancellationToken);
        if (!await access.RevokeGrantAsync(key, grantId, Clock.Now(time), cancellationToken)
            && !(await access.ListGrantsAsync(key, includeRevoked: true, cancellationToken)).Any(g => g.Id == grantId && g.RevokeTime is not null))
        {
            throw KmsErrors.NotFound($"{key}/grants/{grantId}");
        }
    }

    /// <summary>
    /// Refuses a crypto operation the key's policy (and grants) do not allow the caller. A key
    /// without a policy allows every caller whose role allows the operation.
    /// </summary>
    /// <remarks>
    /// The refusal must not tell a caller that may not use the key that the key exists. A caller
    /// that knows of the key anyway — named in its policy (for another operation), holding an
    /// active grant on it (whose context did not match), or allowed to read the tenant's keys
    /// (<see cref="Permission.KeysRead"/>) — is told PERMISSION_DENIED naming the operation. Any
    /// other caller gets exactly the answer a missing key gets: NOT_FOUND of the name it gave,
    /// or, for a ciphertext (which names a key version nobody typed), the one opaque
    /// "decryption failed" a blob of an unknown key version gets. Either message repeats only
    /// what the caller supplied: never the key an alias resolved to, nor a version.
    /// </remarks>
    /// <param name="caller">Who asks.</param>
    /// <param name="key">The key, as resolved.</param>
    /// <param name="operation">The operation asked for; several flags: any one of them allows (GetPublicKey of a decryption key).</param>
    /// <param name="context">The request's encryption context (grants may constrain it).</param>
    /// <param name="namedByCaller">The key, alias or key version as the caller named it (its name, or the
    /// <see cref="KeyReference"/> parsed from it, which prints the same), formatted only when refused —
    /// every call of an unrestricted key passes here; null when a ciphertext named it.</param>
    /// <param name="cancellationToken">Cancels the reads.</param>
    /// <exception cref="KmsException">PermissionDenied, NotFound or DecryptionFailed, as above.</exception>
    public async Task EnsureAllowedAsync(Caller caller, Key key, KeyOperations operation, EncryptionContext context, object? namedByCaller, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(caller);
        ArgumentNullException.ThrowIfNull(key);
        if (!key.Restricted)
        {
            return;
        }

        // No entries: the policy was lifted after the key was read (SetKeyPolicy writes an empty
        // policy and an unrestricted key in one write, and no key is stored restricted without
        // entries). Judged as the key is now, by roles alone: judged on the restricted key read
        // before and the lifted policy read after, which allow nobody, a caller allowed by either
        // state was refused NOT_FOUND or "decryption failed" for a key it may use.
        var policy = await access.GetKeyPolicyAsync(key.Name, cancellationToken);
        if (!policy.Restricts)
        {
            return;
        }

        if (policy.Entries.TryGetValue(caller.Principal, out var allowed) && (allowed & operation) != KeyOperations.None)
        {
            return;
        }

        // Every allowed call of a restricted key that its policy entry does not cover comes here:
        // one pass, no list of the caller's grants.
        var holdsAGrant = false;
        foreach (var grant in await access.ListGrantsAsync(key.Name, includeRevoked: false, cancellationToken))
        {
            if (grant.Grantee.ToString() != caller.Principal)
            {
                continue;
            }

            if ((grant.Operations & operation) != KeyOperations.None && Satisfies(context, grant.ContextEquals))
            {
                return;
            }

            holdsAGrant = true;
        }

        if (holdsAGrant || policy.Entries.ContainsKey(caller.Principal) || AccessControl.Allows(caller, Permission.KeysRead, key.Name.Tenant))
        {
            var what = namedByCaller is null ? "the ciphertext's key" : KmsErrors.Printable(namedByCaller.ToString()!);
            throw KmsErrors.PermissionDenied($"the policy of {what} does not allow {caller.Principal} to {AnyOf(operation)} (no policy entry or matching grant)");
        }

        throw namedByCaller is null ? KmsErrors.DecryptionFailed() : KmsErrors.NotFoundByKeyPolicy(namedByCaller.ToString()!);
    }

    /// <summary>
    /// Access review: for every principal bound in the key's tenant, what it may do with the
    /// key — unconditionally, or under a grant's context constraint.
    /// </summary>
    /// <remarks>
    /// It answers what the calls would: an operation the key's purpose has no use for
    /// (<see cref="ApplicableOperations"/>: SIGN of an ENCRYPT_DECRYPT key) is not reported, though
    /// a role or a policy entry allows it, and a grant is listed only for the operations it can
    /// apply to (one stored before such grants were refused: with those left out; one that can
    /// never apply, also for its context constraint on a key whose calls carry none: not listed).
    /// </remarks>
    public async Task<IReadOnlyList<KeyPermissionReport>> TestPermissionsAsync(Caller caller, KeyName key, CancellationToken cancellationToken)
    {
        var stored = await GetKeyAsync(caller, key, cancellationToken);
        var policy = await access.GetKeyPolicyAsync(key, cancellationToken);
        var grants = await access.ListGrantsAsync(key, includeRevoked: false, cancellationToken);
        var reports = new List<KeyPermissionReport>();
        foreach (var principal in (await access.ListRoleBindingsAsync(key.Tenant, cancellationToken)).GroupBy(b => b.Principal.ToString()))
        {
            var roles = principal.Select(b => b.Role).ToHashSet();
            var byRole = (roles.Any(r => Roles.Allows(r, Permission.CryptoEncrypt)) ? KeyOperations.Encrypt : KeyOperations.None)
                | (roles.Any(r => Roles.Allows(r, Permission.CryptoDecrypt)) ? KeyOperations.Decrypt : KeyOperations.None)
                | (roles.Any(r => Roles.Allows(r, Permission.CryptoSign)) ? KeyOperations.Sign : KeyOperations.None)
                | (roles.Any(r => Roles.Allows(r, Permission.CryptoVerify)) ? KeyOperations.Verify : KeyOperations.None);
            byRole &= ApplicableOperations(stored.Purpose);
            var unconditional = stored.Restricted ? byRole & policy.Entries.GetValueOrDefault(principal.Key) : byRole;
            var conditional = stored.Restricted
                ? grants
                    .Where(g => g.Grantee.ToString() == principal.Key && (g.Operations & byRole) != KeyOperations.None && CanApply(g, stored.Purpose))
                    .Select(g => g with { Operations = g.Operations & ApplicableOperations(stored.Purpose) })
                    .ToList()
                : [];
            reports.Add(new KeyPermissionReport(principal.Key, roles, unconditional, conditional));
        }

        return reports.OrderBy(r => r.Principal, StringComparer.Ordinal).ToList();
    }

    private async Task<Key> GetKeyAsync(Caller caller, KeyName key, CancellationToken cancellationToken)
    {
        caller.EnsureSameTenant(key.Tenant, key.ToString());
        return await keys.GetKeyAsync(key, cancellationToken) ?? throw KmsErrors.NotFound(key.ToString());
    }

    // Policies and grants name principals of the key's own tenant that exist now, so a name
    // registered later (or in another tenant) inherits nothing. Missing and foreign read the same.
    // A deleted principal is returned (a tombstone of the tenant): the callers refuse it, saying so.
    private async Task<Principal> EnsureTenantPrincipalAsync(PrincipalName name, TenantId tenant, string field, CancellationToken cancellationToken)
    {
        var principal = await access.GetPrincipalAsync(name, cancellationToken);
        if (principal is null || principal.Tenant != tenant)
        {
            throw KmsErrors.InvalidArgument(field, $"no principal of {tenant.ResourceName} is named {name}");
        }

        return principal;
    }

    /// <summary>
    /// The operations of a key policy or grant that a key of <paramref name="purpose"/> has a use
    /// for: ENCRYPT and DECRYPT for ENCRYPT_DECRYPT; SIGN and VERIFY for SIGN_VERIFY and MAC;
    /// for ASYMMETRIC_DECRYPT, DECRYPT (AsymmetricDecrypt) and, as they read its public key,
    /// ENCRYPT and VERIFY (<see cref="SigningService.PublicKeyOperations"/>).
    /// </summary>
    public static KeyOperations ApplicableOperations(KeyPurpose purpose) => purpose switch
    {
        KeyPurpose.EncryptDecrypt => KeyOperations.Encrypt | KeyOperations.Decrypt,
        KeyPurpose.AsymmetricDecrypt => KeyOperations.Decrypt | SigningService.PublicKeyOperations(purpose),
        _ => KeyOperations.Sign | KeyOperations.Verify,
    };

    // A grant's context constraint is met only by a call that carries a context: ENCRYPT_DECRYPT's.
    private static bool CanApply(Grant grant, KeyPurpose purpose) =>
        grant.ContextEquals.Count == 0 || purpose == KeyPurpose.EncryptDecrypt;

    // "SIGN does not apply to a key of purpose ENCRYPT_DECRYPT (it takes ENCRYPT and DECRYPT)".
    private static string NotApplicable(KeyOperations operations, KeyPurpose purpose)
    {
        var verb = (operations & (operations - 1)) == KeyOperations.None ? "does" : "do";
        return $"{Upper(operations)} {verb} not apply to a key of purpose {KeyAlgorithms.PurposeName(purpose)} (it takes {Upper(ApplicableOperations(purpose))})";
    }

    private static string Upper(KeyOperations operations) => Names(operations, " and ", upper: true);

    // "verify"; "encrypt, decrypt or verify".
    private static string AnyOf(KeyOperations operations) => Names(operations, " or ", upper: false);

    private static string Names(KeyOperations operations, string last, bool upper)
    {
        var names = Enum.GetValues<KeyOperations>()
            .Where(o => o != KeyOperations.None && operations.HasFlag(o))
            .Select(o => upper ? o.ToString().ToUpperInvariant() : o.ToString().ToLowerInvariant())
            .ToList();
        return names.Count == 1 ? names[0] : string.Join(", ", names[..^1]) + last + names[^1];
    }

    private static bool Satisfies(EncryptionContext context, IReadOnlyDictionary<string, string> required) =>
        required.All(pair => context.Entries.TryGetValue(pair.Key, out var value) && value == pair.Value);
}

/// <summary>What one principal may do with a key: its roles, the operations it may always perform, and grants that allow more under a context constraint.</summary>
public sealed record KeyPermissionReport(string Principal, IReadOnlySet<Role> Roles, KeyOperations Operations, IReadOnlyList<Grant> ConditionalGrants);
