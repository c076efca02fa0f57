using Kms.Core.Access;
using Kms.Core.Crypto;
using Kms.Core.Errors;
using Kms.Core.Keys;
using Kms.Core.Names;
using Kms.Core.Services;
using Kms.Testing.Fakes;

namespace Kms.Core.Tests;

/// <summary>
/// The decision of <see cref="KeyAccessService.EnsureAllowedAsync"/> on a restricted key, one
/// case per rule: the policy entry's operations, a grant's grantee, operations and context
/// constraint (every pair, equal values), revoked grants, and the answer a refused caller gets.
/// </summary>
public sealed class KeyAccessDecisionTests : IDisposable
{
    private readonly DomainHarness _harness = new();

    public void Dispose() => _harness.Dispose();

    private static EncryptionContext Context(params (string Key, string Value)[] pairs) =>
        EncryptionContext.Create(pairs.Select(p => new KeyValuePair<string, string>(p.Key, p.Value)));

    private static Caller User(string principal) => DomainHarness.TenantCaller(principal, "dev", Role.KeyUser);

    // A key whose policy lets token:dev encrypt, with token:reader and token:other registered.
    private async Task<Key> RestrictedKeyAsync(string keyId)
    {
        var key = await _harness.CreateKeyAsync(keyId);
        foreach (var name in new[] { "dev", "reader", "other" })
        {
            await _harness.Access.CreatePrincipalAsync(PrincipalName.Token(name), DomainHarness.Dev.Tenant, null, default);
        }

        await _harness.KeyAccess.SetKeyPolicyAsync(DomainHarness.Dev, key.Name, [new("token:dev", KeyOperations.Encrypt)], default);
        var stored = await _harness.Store.GetKeyAsync(key.Name, default);
        Assert.True(stored!.Restricted);
        return stored;
    }

    private Task AllowAsync(Caller caller, Key key, KeyOperations operation, EncryptionContext context) =>
        _harness.KeyAccess.EnsureAllowedAsync(caller, key, operation, context, key.Name, default);

    private async Task<KmsException> RefuseAsync(Caller caller, Key key, KeyOperations operation, EncryptionContext context, object? namedByCaller) =>
        await Assert.ThrowsAsync<KmsException>(() => _harness.KeyAccess.EnsureAllowedAsync(caller, key, operation, context, namedByCaller, default));

    [Fact]
    public async Task PolicyEntry_AllowsItsOperationsOnly_AnyOfSeveralAsked_OtherOperationPermissionDenied()
    {
        var key = await RestrictedKeyAsync("entry");
        var dev = User("token:dev");

        await AllowAsync(dev, key, KeyOperations.Encrypt, EncryptionContext.Empty);
        await AllowAsync(dev, key, KeyOperations.Encrypt | KeyOperations.Verify, EncryptionContext.Empty);

        // Named in the policy, so it knows of the key: told which operation it lacks.
        var e = await RefuseAsync(dev, key, KeyOperations.Decrypt, EncryptionContext.Empty, key.Name);
        Assert.Equal(KmsErrorCode.PermissionDenied, e.Code);
        Assert.Contains("token:dev to decrypt", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Unnamed_NoGrant_NoKeysRead_AnsweredAsAMissingKey_OrDecryptionFailedForACiphertext_KeysReadPermissionDenied()
    {
        var key = await RestrictedKeyAsync("unnamed");
        var reader = User("token:reader");

        var byName = await RefuseAsync(reader, key, KeyOperations.Encrypt, EncryptionContext.Empty, "tenants/dev/keys/unnamed");
        Assert.Equal((KmsErrorCode.NotFound, "tenants/dev/keys/unnamed not found"), (byName.Code, byName.Message));
        var byCiphertext = await RefuseAsync(reader, key, KeyOperations.Decrypt, EncryptionContext.Empty, null);
        Assert.Equal(KmsErrorCode.DecryptionFailed, byCiphertext.Code);

        // A caller that may read the tenant's keys knows the key exists anyway.
        var both = DomainHarness.TenantCaller("token:reader", "dev", Role.KeyUser, Role.Auditor);
        var e = await RefuseAsync(both, key, KeyOperations.Encrypt, EncryptionContext.Empty, null);
        Assert.Equal(KmsErrorCode.PermissionDenied, e.Code);
        Assert.Contains("the ciphertext's key", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Grant_AppliesOnlyWithEveryConstrainedPairEqual_ExtraPairsAllowed()
    {
        var key = await RestrictedKeyAsync("constrained");
        var constraint = new Dictionary<string, string> { ["app"] = "pay", ["env"] = "prod" };
        await _harness.KeyAccess.CreateGrantAsync(DomainHarness.Dev, key.Name, PrincipalName.Token("reader"), KeyOperations.Decrypt, constraint, default);
        var reader = User("token:reader");

        await AllowAsync(reader, key, KeyOperations.Decrypt, Context(("app", "pay"), ("env", "prod")));
        await AllowAsync(reader, key, KeyOperations.Decrypt, Context(("app", "pay"), ("env", "prod"), ("extra", "x")));

        // One pair missing, one value different, a value differing only in case, no context,
        // and the values swapped between the keys: each is not the constraint. The caller holds
        // a grant on the key, so it is told PERMISSION_DENIED.
        foreach (var context in new[]
        {
            Context(("app", "pay")),
            Context(("env", "prod")),
            Context(("app", "pay"), ("env", "dev")),
            Context(("app", "Pay"), ("env", "prod")),
            Context(("app", "prod"), ("env", "pay")),
            EncryptionContext.Empty,
        })
        {
            var e = await RefuseAsync(reader, key, KeyOperations.Decrypt, context, key.Name);
            Assert.Equal(KmsErrorCode.PermissionDenied, e.Code);
        }

        // The grant is for Decrypt only: Encrypt under the matching context is refused too.
        var encrypt = await RefuseAsync(reader, key, KeyOperations.Encrypt, Context(("app", "pay"), ("env", "prod")), key.Name);
        Assert.Equal(KmsErrorCode.PermissionDenied, encrypt.Code);
    }

    [Fact]
    public async Task Grant_WithoutConstraint_AppliesUnderAnyContext()
    {
        var key = await RestrictedKeyAsync("unconstrained");
        await _harness.KeyAccess.CreateGrantAsync(DomainHarness.Dev, key.Name, PrincipalName.Token("reader"), KeyOperations.Decrypt, null, default);
        var reader = User("token:reader");

        await AllowAsync(reader, key, KeyOperations.Decrypt, EncryptionContext.Empty);
        await AllowAsync(reader, key, KeyOperations.Decrypt, Context(("anything", "at all")));
    }

    [Fact]
    public async Task Grant_OfAnotherGrantee_NeitherAppliesNorRevealsTheKey_TheCallersOwnAppliesAfterIt()
    {
        var key = await RestrictedKeyAsync("grantees");
        var now = _harness.Time.GetUtcNow();
        var none = new Dictionary<string, string>();

        // token:other's grant first (in id and in creation order), then token:reader's.
        await _harness.AccessStore.CreateGrantAsync(new Grant("0000000000000001", key.Name, PrincipalName.Token("other"), KeyOperations.Decrypt, none, now), default);
        var stranger = await RefuseAsync(User("token:reader"), key, KeyOperations.Decrypt, EncryptionContext.Empty, "tenants/dev/keys/grantees");
        Assert.Equal(KmsErrorCode.NotFound, stranger.Code);

        await _harness.AccessStore.CreateGrantAsync(new Grant("0000000000000002", key.Name, PrincipalName.Token("reader"), KeyOperations.Decrypt, none, now), default);
        await AllowAsync(User("token:reader"), key, KeyOperations.Decrypt, EncryptionContext.Empty);
        await AllowAsync(User("token:other"), key, KeyOperations.Decrypt, EncryptionContext.Empty);
    }

    [Fact]
    public async Task Grant_Revoked_NoLongerApplies_AndNoLongerRevealsTheKey()
    {
        var key = await RestrictedKeyAsync("revoked");
        var grant = await _harness.KeyAccess.CreateGrantAsync(DomainHarness.Dev, key.Name, PrincipalName.Token("reader"), KeyOperations.Decrypt, null, default);
        var reader = User("token:reader");
        await AllowAsync(reader, key, KeyOperations.Decrypt, EncryptionContext.Empty);

        await _harness.KeyAccess.RevokeGrantAsync(DomainHarness.Dev, key.Name, grant.Id, default);

        var e = await RefuseAsync(reader, key, KeyOperations.Decrypt, EncryptionContext.Empty, "tenants/dev/keys/revoked");
        Assert.Equal(KmsErrorCode.NotFound, e.Code);
    }
}
