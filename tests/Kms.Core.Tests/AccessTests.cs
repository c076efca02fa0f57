using Kms.Core.Access;
using Kms.Core.Errors;
using Kms.Core.Keys;
using Kms.Core.Names;
using Kms.Core.Services;
using Kms.Testing.Fakes;

namespace Kms.Core.Tests;

/// <summary>The access model's rules, without a server: names, tokens, the authorization rule, authentication, bindings.</summary>
public sealed class AccessTests : IDisposable
{
    private readonly DomainHarness _harness = new();

    public void Dispose() => _harness.Dispose();

    [Fact]
    public async Task ListRoleBindings_TenantThatDoesNotExist_NotFound_AsEveryListOfATenant()
    {
        var e = await Assert.ThrowsAsync<KmsException>(() => _harness.Access.ListRoleBindingsAsync(TenantId.ParseResourceName("tenants/nope", "tenant"), 0, null, default));
        Assert.Equal((KmsErrorCode.NotFound, "tenants/nope not found"), (e.Code, e.Message));
        Assert.NotNull(await _harness.Access.ListRoleBindingsAsync(DomainHarness.Dev.Tenant, 0, null, default));
    }

    [Theory]
    [InlineData("Payments \u202Ensimda", "U+202E")]
    [InlineData("ops\u200Bteam", "U+200B")]
    [InlineData("ops\u2028forged: line", "U+2028")]
    [InlineData("ops\u0007", "U+0007")]
    [InlineData("ops\U000E0041\U000E0042 team", "U+E0041")] // tag characters: invisible text beyond the BMP
    [InlineData("\U000E0001ops", "U+E0001")]
    public async Task DisplayName_WithAControlFormatOrSeparatorCharacter_RefusedShowingTheCodePoint_NothingCreated(string displayName, string codePoint)
    {
        // A display name is shown to operators; U+202E would show them another one.
        var principal = await Assert.ThrowsAsync<KmsException>(() => _harness.Access.CreatePrincipalAsync(PrincipalName.Token("ops"), DomainHarness.Dev.Tenant, displayName, default));
        var tenant = await Assert.ThrowsAsync<KmsException>(() => _harness.Access.CreateTenantAsync(TenantId.Parse("ops"), displayName, default));

        Assert.Equal((KmsErrorCode.InvalidArgument, KmsErrorCode.InvalidArgument), (principal.Code, tenant.Code));
        Assert.Contains($"holds {codePoint}", principal.Message, StringComparison.Ordinal);
        Assert.DoesNotContain(principal.Message + tenant.Message, c => char.IsControl(c) || Kms.Core.DisplayText.HidesOrMovesText(c));
        Assert.Null(await _harness.AccessStore.GetPrincipalAsync(PrincipalName.Token("ops"), default));
        Assert.Null(await _harness.AccessStore.GetTenantAsync(TenantId.Parse("ops"), default));
    }

    [Theory]
    [InlineData("Zo\u00EB's team")]
    [InlineData("\u0645\u06CC\u200C\u062E\u0648\u0627\u0647\u0645")] // a zero-width non-joiner in a Persian word
    [InlineData("\u652F\u4ED8 \U0001F511")]
    public async Task DisplayName_OrdinaryText_Accepted(string displayName) =>
        Assert.Equal(displayName, (await _harness.Access.CreatePrincipalAsync(PrincipalName.Token("ops"), DomainHarness.Dev.Tenant, displayName, default)).DisplayName);

    [Theory]
    [InlineData("spiffe:spiffe://kms.test/payments", PrincipalKind.Spiffe, "spiffe://kms.test/payments")]
    [InlineData("cn:alice", PrincipalKind.CommonName, "alice")]
    [InlineData("cn:token:alice", PrincipalKind.CommonName, "token:alice")]
    [InlineData("token:ci-bot", PrincipalKind.Token, "ci-bot")]
    public void PrincipalName_ParsesItsType(string text, PrincipalKind kind, string value)
    {
        var name = PrincipalName.Parse(text, "name");
        Assert.Equal((kind, value, text), (name.Kind, name.Value, name.ToString()));
    }

    [Theory]
    [InlineData("")]
    [InlineData("alice")]
    [InlineData(":alice")]
    [InlineData("user:alice")]
    [InlineData("spiffe:https://kms.test")]
    [InlineData("token:Alice")]
    [InlineData("token:")]
    [InlineData("cn:")]
    [InlineData("cn:a\nb")]
    [InlineData("cn:Rene\u0301")] // "René" decomposed: looks like cn:Ren\u00e9, another principal
    [InlineData("cn:al\u200Bice")] // a zero-width space: looks like cn:alice
    [InlineData("cn:\u212Bngstr\u00f6m")] // U+212B ANGSTROM SIGN, which NFC makes U+00C5
    [InlineData("spiffe:spiffe://kms.test/caf\u0065\u0301")]
    [InlineData("spiffe:spiffe://kms.test/pay\u2060ments")]
    [InlineData("jwt:ci:repo:acme/caf\u0065\u0301")]
    public void PrincipalName_Malformed_InvalidArgument(string text)
    {
        var e = Assert.Throws<KmsException>(() => PrincipalName.Parse(text, "name"));
        Assert.Equal((KmsErrorCode.InvalidArgument, "name"), (e.Code, e.Field));
    }

    [Fact]
    public void PrincipalName_NotCanonical_RefusedSayingWhy_ComposedAccepted_ARegisteredOneStillParsedToBeCleanedUp()
    {
        var e = Assert.Throws<KmsException>(() => PrincipalName.Parse("cn:Rene\u0301", "name"));
        Assert.Contains("NFC", e.Message, StringComparison.Ordinal);
        Assert.Equal("Ren\u00e9", PrincipalName.Parse("cn:Ren\u00e9", "name").Value);
        Assert.Equal("\u0645\u0647\u0631\u0627\u0646", PrincipalName.Parse("cn:\u0645\u0647\u0631\u0627\u0646", "name").Value); // Arabic, no marks
        Assert.Equal("\uD55C\uAE00", PrincipalName.Parse("cn:\uD55C\uAE00", "name").Value); // precomposed Hangul syllables
        Assert.False(PrincipalName.IsValid(PrincipalKind.CommonName, "\u1112\u1161\u11AB")); // the same, conjoining jamo
        Assert.False(PrincipalName.IsValid(PrincipalKind.CommonName, "Rene\u0301"));
        Assert.Equal("Rene\u0301", PrincipalName.ParseExisting("cn:Rene\u0301", "name").Value);
        Assert.Equal("name", Assert.Throws<KmsException>(() => PrincipalName.ParseExisting("cn:a\nb", "name")).Field);
    }

    [Fact]
    public void PrincipalName_LettersOfTwoScriptsThatLookAlike_RefusedNamingTheLetter_OneScriptAccepted_ARegisteredOneStillParsed()
    {
        // cn:p\u0430yments with a Cyrillic "\u0430" prints as cn:payments: another principal, with its own roles.
        var e = Assert.Throws<KmsException>(() => PrincipalName.Parse("cn:p\u0430yments", "name"));
        Assert.Equal((KmsErrorCode.InvalidArgument, "name"), (e.Code, e.Field));
        Assert.Contains("U+0430 (Cyrillic) stands among Latin letters", e.Message, StringComparison.Ordinal);
        // The minority script is named, whichever comes first: here the Latin "p" among Cyrillic letters.
        Assert.Contains("U+0070 (Latin) stands among Cyrillic letters", Assert.Throws<KmsException>(() => PrincipalName.Parse("cn:\u0430p\u0430\u0441\u0435", "name")).Message, StringComparison.Ordinal);
        Assert.Contains("U+03BF (Greek) stands among Latin letters", Assert.Throws<KmsException>(() => PrincipalName.Parse("spiffe:spiffe://example.org/pay\u03BFuts", "name")).Message, StringComparison.Ordinal);
        Assert.Contains("U+13A0 (Cherokee)", Assert.Throws<KmsException>(() => PrincipalName.Parse("jwt:k8s:system:serviceaccount:\u13A0ev:api", "name")).Message, StringComparison.Ordinal);
        Assert.Contains("U+0585 (Armenian)", Assert.Throws<KmsException>(() => PrincipalName.Parse("cn:r\u0585ot", "name")).Message, StringComparison.Ordinal);
        Assert.False(PrincipalName.IsValid(PrincipalKind.CommonName, "p\u0430yments"));
        Assert.False(PrincipalName.IsValid(PrincipalKind.Spiffe, "spiffe://\u0435xample.org/payments"));
        Assert.False(PrincipalName.IsValid(PrincipalKind.Jwt, "k8s:p\u0430yments"));

        // One script, any of them; digits, punctuation and other scripts count as none; a jwt:
        // subject is judged without its issuer's (Latin) name.
        foreach (var name in new[] { "cn:\u041E\u043B\u044C\u0433\u0430", "cn:\u0395\u03BB\u03AD\u03BD\u03B7-2", "cn:payments-01.example", "cn:\u6771\u4EAC-tokyo", "jwt:k8s:\u041E\u043B\u044C\u0433\u0430", "cn:Ren\u00e9 Mu\u00F1oz" })
        {
            Assert.Equal(name, PrincipalName.Parse(name, "name").ToString());
        }

        // A name registered before the rule is still read, to be found and cleaned up.
        Assert.Equal("p\u0430yments", PrincipalName.ParseExisting("cn:p\u0430yments", "name").Value);
        Assert.Equal("cn:p\u0430yments", Kms.Core.Backup.AccessReplay.PrincipalOf("tenants/dev/principals/cn:p\u0430yments").ToString());
    }

    [Fact]
    public async Task CreatePrincipal_NamePrintingLikeAnotherOfTheTenant_RefusedNamingIt_NothingCreated_OtherTenantsAndKindsApart()
    {
        // cn:\u0455\u0440\u0430\u0441\u0435 is all Cyrillic, so of one script, and prints as cn:space.
        var cyrillic = PrincipalName.CommonName("\u0455\u0440\u0430\u0441\u0435");
        await _harness.Access.CreatePrincipalAsync(PrincipalName.CommonName("space"), DomainHarness.Dev.Tenant, null, default);

        var e = await Assert.ThrowsAsync<KmsException>(() => _harness.Access.CreatePrincipalAsync(cyrillic, DomainHarness.Dev.Tenant, null, default));
        Assert.Equal((KmsErrorCode.InvalidArgument, "name"), (e.Code, e.Field));
        Assert.Contains("prints like the principal cn:space of the same tenant", e.Message, StringComparison.Ordinal);
        Assert.Null(await _harness.AccessStore.GetPrincipalAsync(cyrillic, default));

        // The other way round, and a Greek name printing like a Cyrillic one; a deleted principal's name counts too.
        await _harness.Access.CreatePrincipalAsync(PrincipalName.CommonName("\u0441\u043E\u0440\u0435"), DomainHarness.Dev.Tenant, null, default);
        await _harness.Access.DeletePrincipalAsync(new Caller("token:admin", null, new HashSet<Role> { Role.DeploymentAdmin }), PrincipalName.CommonName("\u0441\u043E\u0440\u0435"), default);
        Assert.Contains("prints like the principal cn:\u0441\u043E\u0440\u0435 (deleted)",
            (await Assert.ThrowsAsync<KmsException>(() => _harness.Access.CreatePrincipalAsync(PrincipalName.CommonName("cope"), DomainHarness.Dev.Tenant, null, default))).Message, StringComparison.Ordinal);
        await _harness.Access.CreatePrincipalAsync(PrincipalName.CommonName("\u043E\u0440\u0430"), DomainHarness.Dev.Tenant, null, default);
        Assert.Contains("prints like the principal cn:\u043E\u0440\u0430 of",
            (await Assert.ThrowsAsync<KmsException>(() => _harness.Access.CreatePrincipalAsync(PrincipalName.CommonName("\u03BF\u03C1\u03B1"), DomainHarness.Dev.Tenant, null, default))).Message, StringComparison.Ordinal);

        // Another tenant's principals, deployment principals and another kind of name are apart.
        await _harness.Access.CreateTenantAsync(TenantId.Parse("other"), null, default);
        await _harness.Access.CreatePrincipalAsync(cyrillic, TenantId.Parse("other"), null, default);
        await _harness.Access.CreatePrincipalAsync(PrincipalName.Spiffe("spiffe://\u0455\u0440\u0430\u0441\u0435"), null, null, default);
        await _harness.Access.CreatePrincipalAsync(PrincipalName.Token("space"), DomainHarness.Dev.Tenant, null, default);
    }

    [Fact]
    public async Task SetKeyPolicy_OneEntryRepeatedPastTheLimit_RefusedBeforeAnyLookup()
    {
        var key = await _harness.CreateKeyAsync("repeated");
        await _harness.Access.CreatePrincipalAsync(PrincipalName.Token("dev"), DomainHarness.Dev.Tenant, null, default);
        var repeated = Enumerable.Repeat(new KeyValuePair<string, KeyOperations>("token:dev", KeyOperations.Encrypt), KeyAccessService.MaxEntries + 1);

        var e = await Assert.ThrowsAsync<KmsException>(() => _harness.KeyAccess.SetKeyPolicyAsync(DomainHarness.Dev, key.Name, repeated, default));

        Assert.Equal((KmsErrorCode.InvalidArgument, "entries"), (e.Code, e.Field));
        Assert.False((await _harness.KeyAccess.GetKeyPolicyAsync(DomainHarness.Dev, key.Name, default)).Restricts);
    }

    [Fact]
    public async Task RevokeGrant_RevokedAlready_SucceedsKeepingTheFirstTime_UnknownGrant_NotFound()
    {
        // A retry whose first answer was lost finds the grant revoked: it is told so, not NOT_FOUND.
        var key = await _harness.CreateKeyAsync("revoked-twice");
        var other = await _harness.CreateKeyAsync("revoked-twice-other");
        await _harness.Access.CreatePrincipalAsync(PrincipalName.Token("dev"), DomainHarness.Dev.Tenant, null, default);
        await _harness.Access.CreatePrincipalAsync(PrincipalName.Token("reader"), DomainHarness.Dev.Tenant, null, default);
        await _harness.KeyAccess.SetKeyPolicyAsync(DomainHarness.Dev, key.Name, [new("token:dev", KeyOperations.Encrypt)], default);
        var grant = await _harness.KeyAccess.CreateGrantAsync(DomainHarness.Dev, key.Name, PrincipalName.Token("reader"), KeyOperations.Decrypt, null, default);
        var revoked = _harness.Time.GetUtcNow();

        await _harness.KeyAccess.RevokeGrantAsync(DomainHarness.Dev, key.Name, grant.Id, default);
        _harness.Time.Advance(TimeSpan.FromMinutes(5));
        await _harness.KeyAccess.RevokeGrantAsync(DomainHarness.Dev, key.Name, grant.Id, default);

        var kept = Assert.Single(await _harness.AccessStore.ListGrantsAsync(key.Name, includeRevoked: true, default));
        Assert.Equal(revoked, kept.RevokeTime);
        foreach (var (name, id) in new[] { (key.Name, "0123456789abcdef"), (other.Name, grant.Id) })
        {
            var e = await Assert.ThrowsAsync<KmsException>(() => _harness.KeyAccess.RevokeGrantAsync(DomainHarness.Dev, name, id, default));
            Assert.Equal(KmsErrorCode.NotFound, e.Code);
        }
    }

    [Fact]
    public async Task CreateGrant_MalformedContextConstraint_OnAKeyWithoutPolicy_InvalidArgumentNamingTheField_NotTheKeysState()
    {
        // The request's own fields are judged before the key's state: a malformed constraint was
        // answered FAILED_PRECONDITION "has no policy" on a key without one, and the caller who set
        // a policy then learnt only at the second try that the grant itself was wrong.
        var key = await _harness.CreateKeyAsync("grant-no-policy");
        await _harness.Access.CreatePrincipalAsync(PrincipalName.Token("reader"), DomainHarness.Dev.Tenant, null, default);
        var tooLongKey = new Dictionary<string, string> { [new string('k', 257)] = "42" };

        var e = await Assert.ThrowsAsync<KmsException>(() => _harness.KeyAccess.CreateGrantAsync(DomainHarness.Dev, key.Name, PrincipalName.Token("reader"), KeyOperations.Decrypt, tooLongKey, default));

        Assert.Equal(KmsErrorCode.InvalidArgument, e.Code);
        Assert.StartsWith("grant.context_equals: ", e.Message, StringComparison.Ordinal);
        Assert.Empty(await _harness.AccessStore.ListGrantsAsync(key.Name, includeRevoked: true, default));
    }

    [Fact]
    public async Task CreateGrant_ForAnOperationTheKeysPurposeHasNoUseFor_OrAContextItsCallsNeverCarry_InvalidArgument_NothingStored()
    {
        // Such grants were stored and could never apply: SIGN on an AES key, ENCRYPT on a signing
        // key, DECRYPT under a context on an RSA decryption key (AsymmetricDecrypt takes none).
        var aes = await _harness.CreateKeyAsync("grant-aes");
        var signer = await _harness.CreateKeyAsync("grant-signer", KeyAlgorithm.EcSignP256Sha256);
        var mac = await _harness.CreateKeyAsync("grant-mac", KeyAlgorithm.HmacSha256);
        var rsa = await _harness.CreateKeyAsync("grant-rsa", KeyAlgorithm.RsaDecryptOaep2048Sha256);
        await _harness.Access.CreatePrincipalAsync(PrincipalName.Token("dev"), DomainHarness.Dev.Tenant, null, default);
        await _harness.Access.CreatePrincipalAsync(PrincipalName.Token("reader"), DomainHarness.Dev.Tenant, null, default);
        foreach (var key in new[] { aes, signer, mac, rsa })
        {
            await _harness.KeyAccess.SetKeyPolicyAsync(DomainHarness.Dev, key.Name, [new("token:dev", KeyOperations.Encrypt | KeyOperations.Decrypt | KeyOperations.Sign | KeyOperations.Verify)], default);
        }

        var context = new Dictionary<string, string> { ["record"] = "42" };
        var refused = new (Key Key, KeyOperations Operations, Dictionary<string, string>? Context, string Message)[]
        {
            (aes, KeyOperations.Sign, null, "grant.operations: SIGN does not apply to a key of purpose ENCRYPT_DECRYPT (it takes ENCRYPT and DECRYPT), so a grant of it could never apply"),
            (aes, KeyOperations.Encrypt | KeyOperations.Verify, null, "grant.operations: VERIFY does not apply to a key of purpose ENCRYPT_DECRYPT (it takes ENCRYPT and DECRYPT), so a grant of it could never apply"),
            (signer, KeyOperations.Encrypt | KeyOperations.Decrypt | KeyOperations.Verify, null, "grant.operations: ENCRYPT and DECRYPT do not apply to a key of purpose SIGN_VERIFY (it takes SIGN and VERIFY), so a grant of it could never apply"),
            (mac, KeyOperations.Decrypt, null, "grant.operations: DECRYPT does not apply to a key of purpose MAC (it takes SIGN and VERIFY), so a grant of it could never apply"),
            (rsa, KeyOperations.Sign, null, "grant.operations: SIGN does not apply to a key of purpose ASYMMETRIC_DECRYPT (it takes ENCRYPT, DECRYPT and VERIFY), so a grant of it could never apply"),
            (rsa, KeyOperations.Decrypt, context, "grant.context_equals: a key of purpose ASYMMETRIC_DECRYPT is used without an encryption context (only ENCRYPT_DECRYPT keys take one), so a grant constraining it could never apply"),
            (rsa, KeyOperations.Encrypt, context, "grant.context_equals: a key of purpose ASYMMETRIC_DECRYPT is used without an encryption context (only ENCRYPT_DECRYPT keys take one), so a grant constraining it could never apply"),
            (mac, KeyOperations.Verify, context, "grant.context_equals: a key of purpose MAC is used without an encryption context (only ENCRYPT_DECRYPT keys take one), so a grant constraining it could never apply"),
        };
        foreach (var (key, operations, constraint, message) in refused)
        {
            var e = await Assert.ThrowsAsync<KmsException>(() => _harness.KeyAccess.CreateGrantAsync(DomainHarness.Dev, key.Name, PrincipalName.Token("reader"), operations, constraint, default));
            Assert.Equal(KmsErrorCode.InvalidArgument, e.Code);
            Assert.Equal(message, e.Message);
            Assert.Empty(await _harness.AccessStore.ListGrantsAsync(key.Name, includeRevoked: true, default));
        }

        // What each purpose uses is granted: ENCRYPT and VERIFY on a decryption key read its public key.
        var accepted = new (Key Key, KeyOperations Operations, Dictionary<string, string>? Context)[]
        {
            (aes, KeyOperations.Encrypt | KeyOperations.Decrypt, context),
            (signer, KeyOperations.Sign | KeyOperations.Verify, null),
            (mac, KeyOperations.Sign | KeyOperations.Verify, null),
            (rsa, KeyOperations.Decrypt, null),
            (rsa, KeyOperations.Encrypt | KeyOperations.Verify, null),
        };
        foreach (var (key, operations, constraint) in accepted)
        {
            await _harness.KeyAccess.CreateGrantAsync(DomainHarness.Dev, key.Name, PrincipalName.Token("reader"), operations, constraint, default);
        }

        Assert.Equal(2, (await _harness.AccessStore.ListGrantsAsync(rsa.Name, includeRevoked: false, default)).Count);
    }

    [Fact]
    public async Task SetKeyPolicy_AnEntryAllowingNothingTheKeysPurposeUses_InvalidArgument_PolicyUnchanged_OneListingMoreAccepted()
    {
        // An entry of SIGN alone on an AES key allowed nothing, as an empty entry (refused) does,
        // and was stored. One entry listing every operation, for whatever key, still is.
        var aes = await _harness.CreateKeyAsync("policy-aes");
        var rsa = await _harness.CreateKeyAsync("policy-rsa", KeyAlgorithm.RsaDecryptOaep2048Sha256);
        await _harness.Access.CreatePrincipalAsync(PrincipalName.Token("dev"), DomainHarness.Dev.Tenant, null, default);
        await _harness.Access.CreatePrincipalAsync(PrincipalName.Token("reader"), DomainHarness.Dev.Tenant, null, default);
        var everything = KeyOperations.Encrypt | KeyOperations.Decrypt | KeyOperations.Sign | KeyOperations.Verify;
        await _harness.KeyAccess.SetKeyPolicyAsync(DomainHarness.Dev, aes.Name, [new("token:dev", everything)], default);

        var e = await Assert.ThrowsAsync<KmsException>(() => _harness.KeyAccess.SetKeyPolicyAsync(DomainHarness.Dev, aes.Name, [new("token:dev", everything), new("token:reader", KeyOperations.Sign | KeyOperations.Verify)], default));
        Assert.Equal((KmsErrorCode.InvalidArgument, "entries[1].operations: entry for token:reader: SIGN and VERIFY do not apply to a key of purpose ENCRYPT_DECRYPT (it takes ENCRYPT and DECRYPT); it would allow nothing"), (e.Code, e.Message));
        Assert.Equal(["token:dev"], (await _harness.KeyAccess.GetKeyPolicyAsync(DomainHarness.Dev, aes.Name, default)).Entries.Keys);

        var onRsa = await Assert.ThrowsAsync<KmsException>(() => _harness.KeyAccess.SetKeyPolicyAsync(DomainHarness.Dev, rsa.Name, [new("token:reader", KeyOperations.Sign)], default));
        Assert.Equal((KmsErrorCode.InvalidArgument, "entries[0].operations: entry for token:reader: SIGN does not apply to a key of purpose ASYMMETRIC_DECRYPT (it takes ENCRYPT, DECRYPT and VERIFY); it would allow nothing"), (onRsa.Code, onRsa.Message));
        await _harness.KeyAccess.SetKeyPolicyAsync(DomainHarness.Dev, rsa.Name, [new("token:dev", everything), new("token:reader", KeyOperations.Encrypt)], default);
    }

    [Fact]
    public async Task TestPermissions_ReportsOnlyOperationsTheKeysPurposeUses_NotWhatARoleEntryOrStaleGrantListsBeyondThem()
    {
        // The review reported SIGN on an AES key for a key-user (the role allows it), though Sign
        // of that key is refused for its purpose: it answers what the calls would do.
        var aes = await _harness.CreateKeyAsync("review-aes");
        var mac = await _harness.CreateKeyAsync("review-mac", KeyAlgorithm.HmacSha256);
        var rsa = await _harness.CreateKeyAsync("review-rsa", KeyAlgorithm.RsaDecryptOaep2048Sha256);
        await _harness.Access.CreatePrincipalAsync(PrincipalName.Token("dev"), DomainHarness.Dev.Tenant, null, default);
        await _harness.Access.CreatePrincipalAsync(PrincipalName.Token("reader"), DomainHarness.Dev.Tenant, null, default);
        await _harness.AccessStore.SetRoleBindingAsync(new RoleBinding(PrincipalName.Token("reader"), Role.KeyUser, DomainHarness.Dev.Tenant, _harness.Time.GetUtcNow()), default);
        async Task<KeyPermissionReport> ReaderOnAsync(Key key) =>
            (await _harness.KeyAccess.TestPermissionsAsync(DomainHarness.Dev, key.Name, default)).Single(r => r.Principal == "token:reader");

        const KeyOperations Everything = KeyOperations.Encrypt | KeyOperations.Decrypt | KeyOperations.Sign | KeyOperations.Verify;
        Assert.Equal(KeyOperations.Encrypt | KeyOperations.Decrypt, (await ReaderOnAsync(aes)).Operations);
        Assert.Equal(KeyOperations.Sign | KeyOperations.Verify, (await ReaderOnAsync(mac)).Operations);
        Assert.Equal(KeyOperations.Encrypt | KeyOperations.Decrypt | KeyOperations.Verify, (await ReaderOnAsync(rsa)).Operations);

        // A policy entry listing every operation (accepted: it lists what the key uses too).
        await _harness.KeyAccess.SetKeyPolicyAsync(DomainHarness.Dev, mac.Name, [new("token:reader", Everything)], default);
        Assert.Equal(KeyOperations.Sign | KeyOperations.Verify, (await ReaderOnAsync(mac)).Operations);

        // Grants stored before such grants were refused: one of SIGN alone on an AES key, one with a
        // context constraint on an RSA key (whose calls carry none) apply to nothing and are not
        // listed; one of SIGN and DECRYPT is listed for DECRYPT, what it can apply to.
        await _harness.KeyAccess.SetKeyPolicyAsync(DomainHarness.Dev, aes.Name, [new("token:dev", KeyOperations.Encrypt)], default);
        await _harness.KeyAccess.SetKeyPolicyAsync(DomainHarness.Dev, rsa.Name, [new("token:dev", KeyOperations.Decrypt)], default);
        var context = new Dictionary<string, string> { ["rec"] = "1" };
        var now = _harness.Time.GetUtcNow();
        await _harness.AccessStore.CreateGrantAsync(new Grant("0000000000000001", aes.Name, PrincipalName.Token("reader"), KeyOperations.Sign, new Dictionary<string, string>(), now), default);
        await _harness.AccessStore.CreateGrantAsync(new Grant("0000000000000002", aes.Name, PrincipalName.Token("reader"), KeyOperations.Sign | KeyOperations.Decrypt, context, now), default);
        await _harness.AccessStore.CreateGrantAsync(new Grant("0000000000000003", rsa.Name, PrincipalName.Token("reader"), KeyOperations.Decrypt, context, now), default);

        var onAes = await ReaderOnAsync(aes);
        Assert.Equal(KeyOperations.None, onAes.Operations);
        var listed = Assert.Single(onAes.ConditionalGrants);
        Assert.Equal(("0000000000000002", KeyOperations.Decrypt), (listed.Id, listed.Operations));
        var onRsa = await ReaderOnAsync(rsa);
        Assert.Equal(KeyOperations.None, onRsa.Operations);
        Assert.Empty(onRsa.ConditionalGrants);

        // As the calls answer: Sign of the AES key is refused for its purpose, whatever the grant.
        var reader = DomainHarness.TenantCaller("token:reader", "dev", Role.KeyUser);
        var sign = await Assert.ThrowsAsync<KmsException>(() => _harness.Signing.GenerateMacAsync(reader, aes.Name.ToString(), [1], default));
        Assert.Equal(KmsErrorCode.FailedPrecondition, sign.Code);
    }

    [Fact]
    public async Task CreateGrant_OnAKeyScheduledForDeletion_Refused_NoGrant_AfterTheCancelGrantedAgain_SetKeyPolicyStillWorks()
    {
        // AWS KMS refuses CreateGrant on a key pending deletion: the key serves nothing, and a grant
        // made now would come back with a cancelled deletion unseen. Its policy may still be
        // narrowed (PutKeyPolicy works in every state there too).
        var key = await _harness.CreateKeyAsync("going");
        await _harness.Access.CreatePrincipalAsync(PrincipalName.Token("dev"), DomainHarness.Dev.Tenant, null, default);
        await _harness.Access.CreatePrincipalAsync(PrincipalName.Token("reader"), DomainHarness.Dev.Tenant, null, default);
        await _harness.KeyAccess.SetKeyPolicyAsync(DomainHarness.Dev, key.Name, [new("token:dev", KeyOperations.Encrypt)], default);
        await _harness.Keys.ScheduleKeyDeletionAsync(DomainHarness.Dev, key.Name, TimeSpan.FromDays(7), null, default);

        var e = await Assert.ThrowsAsync<KmsException>(() => _harness.KeyAccess.CreateGrantAsync(DomainHarness.Dev, key.Name, PrincipalName.Token("reader"), KeyOperations.Decrypt, null, default));

        Assert.Equal((KmsErrorCode.FailedPrecondition, $"key {key.Name} is DESTROY_SCHEDULED; no grant is made on a key scheduled for deletion (cancel the deletion first)"), (e.Code, e.Message));
        Assert.Empty(await _harness.AccessStore.ListGrantsAsync(key.Name, includeRevoked: true, default));
        await _harness.KeyAccess.SetKeyPolicyAsync(DomainHarness.Dev, key.Name, [new("token:dev", KeyOperations.Encrypt | KeyOperations.Decrypt)], default);

        await _harness.Keys.CancelKeyDeletionAsync(DomainHarness.Dev, key.Name, null, default);
        await _harness.KeyAccess.CreateGrantAsync(DomainHarness.Dev, key.Name, PrincipalName.Token("reader"), KeyOperations.Decrypt, null, default);
        Assert.Single(await _harness.AccessStore.ListGrantsAsync(key.Name, includeRevoked: false, default));
    }

    [Fact]
    public async Task SetKeyPolicy_TwoEntriesForOnePrincipal_RefusedNamingTheSecond_NothingChanged()
    {
        // Merged, the last one won without a word: the caller may have meant either.
        var key = await _harness.CreateKeyAsync("twice");
        await _harness.Access.CreatePrincipalAsync(PrincipalName.Token("dev"), DomainHarness.Dev.Tenant, null, default);
        KeyValuePair<string, KeyOperations>[] entries = [new("token:dev", KeyOperations.Encrypt | KeyOperations.Decrypt), new("token:dev", KeyOperations.Encrypt)];

        var e = await Assert.ThrowsAsync<KmsException>(() => _harness.KeyAccess.SetKeyPolicyAsync(DomainHarness.Dev, key.Name, entries, default));

        Assert.Equal((KmsErrorCode.InvalidArgument, "entries[1].principal"), (e.Code, e.Field));
        Assert.False((await _harness.KeyAccess.GetKeyPolicyAsync(DomainHarness.Dev, key.Name, default)).Restricts);
    }

    [Fact]
    public async Task SetKeyPolicy_NamingADeletedPrincipal_FailedPreconditionNamingIt_NothingChanged_UnknownOrForeignStillInvalidArgument()
    {
        var key = await _harness.CreateKeyAsync("leaver-policy");
        var admin = new Caller("token:admin", null, new HashSet<Role> { Role.DeploymentAdmin });
        foreach (var (name, tenant) in new[] { ("dev", DomainHarness.Dev.Tenant), ("leaver", DomainHarness.Dev.Tenant), ("acme-leaver", DomainHarness.Acme.Tenant) })
        {
            await _harness.Access.CreatePrincipalAsync(PrincipalName.Token(name), tenant, null, default);
        }

        // Set while the principal was active; DeletePrincipal leaves the policy as it is.
        KeyValuePair<string, KeyOperations>[] before = [new("token:dev", KeyOperations.Encrypt), new("token:leaver", KeyOperations.Decrypt)];
        await _harness.KeyAccess.SetKeyPolicyAsync(DomainHarness.Dev, key.Name, before, default);
        await _harness.Access.DeletePrincipalAsync(admin, PrincipalName.Token("leaver"), default);
        await _harness.Access.DeletePrincipalAsync(admin, PrincipalName.Token("acme-leaver"), default);

        // Kept in a policy read and written back, or named anew: refused, naming it, nothing changed.
        KeyValuePair<string, KeyOperations>[] anew = [new("token:dev", KeyOperations.Encrypt | KeyOperations.Decrypt), new("token:leaver", KeyOperations.Encrypt)];
        foreach (var entries in new[] { before, anew })
        {
            var e = await Assert.ThrowsAsync<KmsException>(() => _harness.KeyAccess.SetKeyPolicyAsync(DomainHarness.Dev, key.Name, entries, default));
            Assert.Equal(
                (KmsErrorCode.FailedPrecondition, "entries[1].principal: principal token:leaver was deleted; a key policy may not name it (leave its entry out)"),
                (e.Code, e.Message));
            Assert.Equal(before, (await _harness.KeyAccess.GetKeyPolicyAsync(DomainHarness.Dev, key.Name, default)).Entries.OrderBy(p => p.Key, StringComparer.Ordinal));
        }

        // A name registered before names had to be canonical (claim 136) may hold a bidi override:
        // a policy naming it is refused as not canonical, and the message does not repeat it.
        var pod = PrincipalName.ParseExisting("cn:pod\u202Efdp.exe", "name");
        await _harness.Access.CreatePrincipalAsync(pod, DomainHarness.Dev.Tenant, null, default);
        await _harness.Access.DeletePrincipalAsync(admin, pod, default);
        var printable = await Assert.ThrowsAsync<KmsException>(() => _harness.KeyAccess.SetKeyPolicyAsync(DomainHarness.Dev, key.Name, [new(pod.ToString(), KeyOperations.Encrypt)], default));
        Assert.Equal((KmsErrorCode.InvalidArgument, "entries[0].principal"), (printable.Code, printable.Field));
        Assert.DoesNotContain("\u202E", printable.Message, StringComparison.Ordinal);
        Assert.DoesNotContain("fdp", printable.Message, StringComparison.Ordinal);

        // Unknown, and another tenant's (deleted or not), as before: INVALID_ARGUMENT, one answer.
        foreach (var other in new[] { "token:never-was", "token:acme-leaver" })
        {
            var e = await Assert.ThrowsAsync<KmsException>(() => _harness.KeyAccess.SetKeyPolicyAsync(DomainHarness.Dev, key.Name, [new(other, KeyOperations.Encrypt)], default));
            Assert.Equal((KmsErrorCode.InvalidArgument, "entries[0].principal", $"entries[0].principal: no principal of tenants/dev is named {other}"), (e.Code, e.Field, e.Message));
        }

        // Left out, the policy is set.
        await _harness.KeyAccess.SetKeyPolicyAsync(DomainHarness.Dev, key.Name, [new("token:dev", KeyOperations.Encrypt)], default);
        Assert.Equal(["token:dev"], (await _harness.KeyAccess.GetKeyPolicyAsync(DomainHarness.Dev, key.Name, default)).Entries.Keys);
    }

    [Fact]
    public async Task Authenticator_CredentialCacheMiss_ReadsThePrincipalAndItsTenantsStateInOneStoreRead()
    {
        // With Kms:CredentialCacheTime=0 every call is a miss: the tenant's state (a DELETING
        // tenant's principals are refused) comes with the principal, not in a query of its own.
        await _harness.Access.CreatePrincipalAsync(PrincipalName.Token("reader"), DomainHarness.Dev.Tenant, null, default);
        await _harness.AccessStore.SetRoleBindingAsync(new RoleBinding(PrincipalName.Token("reader"), Role.KeyUser, DomainHarness.Dev.Tenant, _harness.Time.GetUtcNow()), default);
        var store = Kms.Testing.Fakes.CallRecorder.Wrap(_harness.AccessStore, out var calls);
        var authenticator = new Authenticator(store, _harness.Trusted);

        var active = await authenticator.CallerForAsync(PrincipalName.Token("reader"), default);
        Assert.Equal(("token:reader", DomainHarness.Dev.Tenant, false), (active!.Principal, active.HomeTenant, active.TenantDeleting));
        Assert.Equal([Role.KeyUser], active.Roles);
        Assert.Single(calls, c => c.StartsWith("GetPrincipal", StringComparison.Ordinal) || c.StartsWith("GetTenant", StringComparison.Ordinal));

        // Still one read when the tenant is being deleted, and the caller is marked.
        var tenant = await _harness.AccessStore.GetTenantAsync(DomainHarness.Dev.Tenant, default);
        await _harness.AccessStore.UpdateTenantAsync(tenant! with { State = TenantState.Deleting, DeleteTime = _harness.Time.GetUtcNow() }, default);
        calls.Clear();
        Assert.True((await authenticator.CallerForAsync(PrincipalName.Token("reader"), default))!.TenantDeleting);
        Assert.Single(calls, c => c.StartsWith("GetPrincipal", StringComparison.Ordinal) || c.StartsWith("GetTenant", StringComparison.Ordinal));
    }

    [Fact]
    public void ApiTokenSecret_256BitSecret_RoundTrips_AndOnlyTheHashIsKept()
    {
        var (id, text, hash) = ApiTokenSecret.Create();
        Assert.Matches("^kms_[0-9a-f]{16}_[A-Za-z0-9_-]{43}$", text);
        Assert.True(ApiTokenSecret.TryParse(text, out var parsedId, out var parsedHash));
        Assert.Equal(id, parsedId);
        Assert.True(ApiTokenSecret.Matches(parsedHash, hash));
        Assert.DoesNotContain(text["kms_0123456789abcdef_".Length..], ApiTokenSecret.Describe(id), StringComparison.Ordinal);

        var (_, other, _) = ApiTokenSecret.Create();
        Assert.True(ApiTokenSecret.TryParse($"kms_{id}_{other[^43..]}", out _, out var wrongHash));
        Assert.False(ApiTokenSecret.Matches(wrongHash, hash));
    }

    [Theory]
    [InlineData(null)]
    [InlineData("")]
    [InlineData("kms_0123456789abcdef")]
    [InlineData("kms_0123456789ABCDEF_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA")]
    [InlineData("kms_0123456789abcdef_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA")]
    [InlineData("kms_0123456789abcdef_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\n")]
    [InlineData("xyz_0123456789abcdef_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA")]
    public void ApiTokenSecret_Malformed_NotParsed(string? text) => Assert.False(ApiTokenSecret.TryParse(text, out _, out _));

    [Fact]
    public void AccessControl_OwnTenantPermissionDenied_OtherTenantNotFound_DeploymentRolesEverywhere()
    {
        var auditor = DomainHarness.TenantCaller("token:aud", "dev", Role.Auditor);
        AccessControl.Demand(auditor, Permission.KeysRead, TenantId.Parse("dev"), "tenants/dev/keys/k");

        var own = Assert.Throws<KmsException>(() => AccessControl.Demand(auditor, Permission.CryptoDecrypt, TenantId.Parse("dev"), "tenants/dev/keys/k"));
        Assert.Equal(KmsErrorCode.PermissionDenied, own.Code);
        Assert.Contains("kms.crypto.decrypt", own.Message, StringComparison.Ordinal);

        // Across tenants the answer does not depend on the roles.
        var readable = Assert.Throws<KmsException>(() => AccessControl.Demand(auditor, Permission.KeysRead, TenantId.Parse("acme"), "tenants/acme/keys/k"));
        var unreadable = Assert.Throws<KmsException>(() => AccessControl.Demand(auditor, Permission.CryptoDecrypt, TenantId.Parse("acme"), "tenants/acme/keys/k"));
        Assert.Equal((KmsErrorCode.NotFound, KmsErrorCode.NotFound), (readable.Code, unreadable.Code));
        Assert.Equal(readable.Message, unreadable.Message);

        var admin = new Caller("token:root", null, new HashSet<Role> { Role.DeploymentAdmin });
        AccessControl.Demand(admin, Permission.BindingsManage, TenantId.Parse("acme"), "tenants/acme");
        AccessControl.Demand(admin, Permission.TenantsManage, null, "the deployment");
        var noKeys = Assert.Throws<KmsException>(() => AccessControl.Demand(admin, Permission.KeysRead, TenantId.Parse("acme"), "tenants/acme/keys/k"));
        Assert.Equal(KmsErrorCode.PermissionDenied, noKeys.Code);

        // A tenant role never reaches deployment-wide resources.
        var tenantAdmin = DomainHarness.TenantCaller("token:ta", "dev", Role.Admin);
        Assert.False(AccessControl.Allows(tenantAdmin, Permission.BindingsManage, null));
        Assert.False(AccessControl.Allows(tenantAdmin, Permission.TenantsRead, null));
    }

    [Fact]
    public void Roles_LeastPrivilege_NoRoleHoldsBothKeyAdministrationAndCrypto()
    {
        foreach (var role in Roles.All)
        {
            var permissions = Roles.PermissionsOf(role);
            Assert.False(permissions.Contains(Permission.KeysCreate) && permissions.Contains(Permission.CryptoDecrypt), Roles.NameOf(role));
            Assert.False(permissions.Contains(Permission.BindingsManage) && permissions.Contains(Permission.CryptoDecrypt), Roles.NameOf(role));
            Assert.Equal(role, Roles.Parse(Roles.NameOf(role), "role"));
        }

        Assert.DoesNotContain(Roles.PermissionsOf(Role.Auditor), p => p.ToString().Contains("Manage", StringComparison.Ordinal) || p.ToString().StartsWith("Crypto", StringComparison.Ordinal));
        Assert.Equal(KmsErrorCode.InvalidArgument, Assert.Throws<KmsException>(() => Roles.Parse("root", "role")).Code);
    }

    [Fact]
    public async Task Authenticator_ServiceTokenDropsAdministrativeRoles_SessionKeepsThem()
    {
        var name = PrincipalName.Token("ops");
        var service = await _harness.Access.ProvisionAsync(name, TenantId.Parse("dev"), [Role.Admin, Role.KeyUser], ApiTokenKind.Service, TimeSpan.FromDays(1), default);
        var session = await _harness.Access.ProvisionAsync(name, TenantId.Parse("dev"), [], ApiTokenKind.Session, TimeSpan.FromMinutes(15), default);
        var authenticator = new Authenticator(_harness.AccessStore, _harness.Trusted);

        Assert.Equal([Role.KeyUser], (await authenticator.AuthenticateTokenAsync(service, default))!.Roles);
        Assert.Equal([Role.Admin, Role.KeyUser], (await authenticator.AuthenticateTokenAsync(session, default))!.Roles.Order());
        Assert.Equal(_harness.Time.GetUtcNow().AddMinutes(15), (await authenticator.AuthenticateTokenAsync(session, default))!.ValidUntil);
    }

    [Fact]
    public async Task Authenticator_WorkloadIdentityDropsAdministrativeRoles_AsAServiceTokenDoes_UntilTheTokensExpiry()
    {
        var name = PrincipalName.Jwt("k8s", "system:serviceaccount:kms:operator");
        await _harness.Access.CreatePrincipalAsync(name, TenantId.Parse("dev"), null, default);
        foreach (var role in new[] { Role.Admin, Role.KeyManager })
        {
            await _harness.AccessStore.SetRoleBindingAsync(new RoleBinding(name, role, TenantId.Parse("dev"), _harness.Time.GetUtcNow()), default);
        }

        var authenticator = new Authenticator(_harness.AccessStore, _harness.Trusted);
        var expires = _harness.Time.GetUtcNow().AddMinutes(10);
        var caller = await authenticator.AuthenticateWorkloadAsync(name, expires, default);
        Assert.Equal([Role.KeyManager], caller!.Roles);
        Assert.Equal(expires, caller.ValidUntil);
        Assert.Equal("jwt:k8s:system:serviceaccount:kms:operator", caller.Principal);

        // Only a jwt: principal is one: a certificate's name never reaches this path as a workload.
        Assert.Null(await authenticator.AuthenticateWorkloadAsync(PrincipalName.CommonName("k8s:system:serviceaccount:kms:operator"), expires, default));
    }

    [Fact]
    public async Task Authenticator_DeploymentRoleBoundInATenant_OrTenantRoleOfAnotherTenant_Ignored()
    {
        var name = PrincipalName.CommonName("mallory");
        await _harness.Access.CreatePrincipalAsync(name, TenantId.Parse("dev"), null, default);

        // Bindings that the API refuses, written straight to the store: authentication ignores them.
        await _harness.AccessStore.SetRoleBindingAsync(new RoleBinding(name, Role.DeploymentAdmin, TenantId.Parse("dev"), _harness.Time.GetUtcNow()), default);
        await _harness.AccessStore.SetRoleBindingAsync(new RoleBinding(name, Role.KeyUser, TenantId.Parse("acme"), _harness.Time.GetUtcNow()), default);
        await _harness.AccessStore.SetRoleBindingAsync(new RoleBinding(name, Role.Auditor, TenantId.Parse("dev"), _harness.Time.GetUtcNow()), default);

        var caller = await new Authenticator(_harness.AccessStore, _harness.Trusted).CallerForAsync(name, default);
        Assert.Equal([Role.Auditor], caller!.Roles);
    }

    [Fact]
    public async Task SetRoleBinding_TenantRoleOnlyInThePrincipalsTenant_DeploymentRoleOnlyWithoutTenant()
    {
        var admin = new Caller("token:root", null, new HashSet<Role> { Role.DeploymentAdmin });
        var name = PrincipalName.Token("svc");
        await _harness.Access.CreatePrincipalAsync(name, TenantId.Parse("dev"), null, default);

        await _harness.Access.SetRoleBindingAsync(admin, name, Role.KeyUser, TenantId.Parse("dev"), default);
        Assert.Equal("tenant", (await Assert.ThrowsAsync<KmsException>(() => _harness.Access.SetRoleBindingAsync(admin, name, Role.KeyUser, null, default))).Field);
        Assert.Equal("tenant", (await Assert.ThrowsAsync<KmsException>(() => _harness.Access.SetRoleBindingAsync(admin, name, Role.DeploymentAdmin, TenantId.Parse("dev"), default))).Field);
        Assert.Equal("principal", (await Assert.ThrowsAsync<KmsException>(() => _harness.Access.SetRoleBindingAsync(admin, name, Role.SecurityOfficer, null, default))).Field);
    }

    [Fact]
    public async Task SetRoleBinding_PrincipalOfAnotherTenant_AnsweredLikeAMissingOne()
    {
        var tenantAdmin = DomainHarness.TenantCaller("token:dev-admin", "dev", Role.Admin);
        await _harness.Access.CreatePrincipalAsync(PrincipalName.Token("acme-svc"), TenantId.Parse("acme"), null, default);

        var foreign = await Assert.ThrowsAsync<KmsException>(() => _harness.Access.SetRoleBindingAsync(tenantAdmin, PrincipalName.Token("acme-svc"), Role.KeyUser, TenantId.Parse("dev"), default));
        var missing = await Assert.ThrowsAsync<KmsException>(() => _harness.Access.SetRoleBindingAsync(tenantAdmin, PrincipalName.Token("ghost"), Role.KeyUser, TenantId.Parse("dev"), default));
        Assert.Equal((KmsErrorCode.NotFound, KmsErrorCode.NotFound), (foreign.Code, missing.Code));
        Assert.Equal(missing.Message.Replace("ghost", "acme-svc", StringComparison.Ordinal), foreign.Message);

        // Asked with a deployment role too: the answer must not tell the two apart either.
        foreach (var role in new[] { Role.SecurityOfficer, Role.DeploymentAdmin })
        {
            var foreignRole = await Assert.ThrowsAsync<KmsException>(() => _harness.Access.SetRoleBindingAsync(tenantAdmin, PrincipalName.Token("acme-svc"), role, TenantId.Parse("dev"), default));
            var missingRole = await Assert.ThrowsAsync<KmsException>(() => _harness.Access.SetRoleBindingAsync(tenantAdmin, PrincipalName.Token("ghost"), role, TenantId.Parse("dev"), default));
            Assert.Equal((KmsErrorCode.NotFound, KmsErrorCode.NotFound), (foreignRole.Code, missingRole.Code));
            Assert.Equal(missingRole.Message.Replace("ghost", "acme-svc", StringComparison.Ordinal), foreignRole.Message);
        }
    }

    [Fact]
    public async Task DeleteRoleBinding_Repeated_Succeeds_ButAPrincipalOutsideTheTenantIsNotFoundLikeAMissingOne()
    {
        // The SDK sends a DeleteRoleBinding again when its first answer was lost (RetrySafety): the
        // binding is gone, as asked, and the retry must say so rather than NOT_FOUND.
        var tenantAdmin = DomainHarness.TenantCaller("token:dev-admin", "dev", Role.Admin);
        var dev = TenantId.Parse("dev");
        var svc = PrincipalName.Token("dev-svc");
        await _harness.Access.CreatePrincipalAsync(svc, dev, null, default);
        await _harness.Access.SetRoleBindingAsync(tenantAdmin, svc, Role.KeyUser, dev, default);

        await _harness.Access.DeleteRoleBindingAsync(svc, Role.KeyUser, dev, default);
        await _harness.Access.DeleteRoleBindingAsync(svc, Role.KeyUser, dev, default);
        Assert.Empty(await _harness.AccessStore.GetRoleBindingsAsync(svc, default));

        // A deployment binding likewise.
        var officer = PrincipalName.Token("officer");
        await _harness.Access.CreatePrincipalAsync(officer, null, null, default);
        await _harness.Access.SetRoleBindingAsync(tenantAdmin, officer, Role.SecurityOfficer, null, default);
        await _harness.Access.DeleteRoleBindingAsync(officer, Role.SecurityOfficer, null, default);
        await _harness.Access.DeleteRoleBindingAsync(officer, Role.SecurityOfficer, null, default);

        // Named in a tenant, a principal of another tenant is answered exactly like a missing one.
        await _harness.Access.CreatePrincipalAsync(PrincipalName.Token("acme-svc"), TenantId.Parse("acme"), null, default);
        var foreign = await Assert.ThrowsAsync<KmsException>(() => _harness.Access.DeleteRoleBindingAsync(PrincipalName.Token("acme-svc"), Role.KeyUser, dev, default));
        var missing = await Assert.ThrowsAsync<KmsException>(() => _harness.Access.DeleteRoleBindingAsync(PrincipalName.Token("ghost"), Role.KeyUser, dev, default));
        Assert.Equal((KmsErrorCode.NotFound, KmsErrorCode.NotFound), (foreign.Code, missing.Code));
        Assert.Equal(missing.Message.Replace("ghost", "acme-svc", StringComparison.Ordinal), foreign.Message);

        // A role that can never be bound where it is asked is a mistake, not a success.
        Assert.Equal("tenant", (await Assert.ThrowsAsync<KmsException>(() => _harness.Access.DeleteRoleBindingAsync(svc, Role.SecurityOfficer, dev, default))).Field);
        Assert.Equal("tenant", (await Assert.ThrowsAsync<KmsException>(() => _harness.Access.DeleteRoleBindingAsync(officer, Role.KeyUser, null, default))).Field);
    }

    [Fact]
    public async Task SetRoleBinding_NobodyChangesTheirOwnRoles()
    {
        var name = PrincipalName.Token("dev-admin");
        await _harness.Access.CreatePrincipalAsync(name, TenantId.Parse("dev"), null, default);
        var self = DomainHarness.TenantCaller(name.ToString(), "dev", Role.Admin);

        var e = await Assert.ThrowsAsync<KmsException>(() => _harness.Access.SetRoleBindingAsync(self, name, Role.KeyUser, TenantId.Parse("dev"), default));
        Assert.Equal(KmsErrorCode.PermissionDenied, e.Code);
        Assert.Empty(await _harness.AccessStore.GetRoleBindingsAsync(name, default));
    }

    [Fact]
    public async Task BootstrapPrincipalName_IsReserved()
    {
        var e = await Assert.ThrowsAsync<KmsException>(() => _harness.Access.CreatePrincipalAsync(Authenticator.BootstrapPrincipal, null, null, default));
        Assert.Equal("name", e.Field);
    }

    [Fact]
    public async Task CreateApiToken_OnlyForTokenPrincipals_WithBoundedLifetimes()
    {
        await _harness.Access.CreatePrincipalAsync(PrincipalName.Token("svc"), TenantId.Parse("dev"), null, default);
        await _harness.Access.CreatePrincipalAsync(PrincipalName.CommonName("svc"), TenantId.Parse("dev"), null, default);

        var (token, _) = await _harness.Access.CreateApiTokenAsync(PrincipalName.Token("svc"), ApiTokenKind.Service, null, default);
        Assert.Equal(TimeSpan.FromDays(90), token.ExpireTime - token.CreateTime);
        Assert.Equal("principal", (await Assert.ThrowsAsync<KmsException>(() => _harness.Access.CreateApiTokenAsync(PrincipalName.CommonName("svc"), ApiTokenKind.Service, null, default))).Field);
        Assert.Equal("lifetime", (await Assert.ThrowsAsync<KmsException>(() => _harness.Access.CreateApiTokenAsync(PrincipalName.Token("svc"), ApiTokenKind.Service, TimeSpan.FromDays(366), default))).Field);
        Assert.Equal("lifetime", (await Assert.ThrowsAsync<KmsException>(() => _harness.Access.CreateApiTokenAsync(PrincipalName.Token("svc"), ApiTokenKind.Session, TimeSpan.Zero, default))).Field);
        Assert.Equal("kind", (await Assert.ThrowsAsync<KmsException>(() => _harness.Access.CreateApiTokenAsync(PrincipalName.Token("svc"), ApiTokenKind.Bootstrap, null, default))).Field);
    }

    [Fact]
    public async Task CreatePrincipal_InATenantBeingDeleted_Refused_AndSoAreKeys()
    {
        await _harness.Access.DeleteTenantAsync(TenantId.Parse("acme"), null, default);
        var principal = await Assert.ThrowsAsync<KmsException>(() => _harness.Access.CreatePrincipalAsync(PrincipalName.Token("late"), TenantId.Parse("acme"), null, default));
        var key = await Assert.ThrowsAsync<KmsException>(() => _harness.CreateKeyAsync("late", DomainHarness.Acme));
        Assert.Equal((KmsErrorCode.FailedPrecondition, KmsErrorCode.FailedPrecondition), (principal.Code, key.Code));
        var missing = await Assert.ThrowsAsync<KmsException>(() => _harness.Access.CreatePrincipalAsync(PrincipalName.Token("x"), TenantId.Parse("nowhere"), null, default));
        Assert.Equal(KmsErrorCode.NotFound, missing.Code);
    }

    [Fact]
    public async Task CreateKey_DeleteTenantCommitsWhileTheHsmGenerates_RefusedInTheWrite_NoKeyCreated()
    {
        // The tenant check passes; DeleteTenant commits while the HSM generates the material (the
        // long step: seconds for an RSA pair); the key's write sees the tenant DELETING. Before,
        // the key was stored ENABLED and the call answered OK, the key left so until the
        // lifecycle worker's next sweep — for good, had the deletion been cancelled before that.
        var acme = TenantId.Parse("acme");
        _harness.FakeHsm!.BeforeGenerate = () =>
        {
            _harness.FakeHsm.BeforeGenerate = null;
            _harness.Access.DeleteTenantAsync(acme, null, default).GetAwaiter().GetResult();
        };

        var refused = await Assert.ThrowsAsync<KmsException>(() => _harness.CreateKeyAsync("racing", DomainHarness.Acme));

        Assert.Equal((KmsErrorCode.FailedPrecondition, "tenants/acme is being deleted; nothing new can be created in it"), (refused.Code, refused.Message));
        Assert.Empty(await _harness.Store.ListKeysAsync(acme, null, 10, default));
        await _harness.Access.CancelTenantDeletionAsync(acme, default);
        Assert.Empty(await _harness.Store.ListKeysAsync(acme, null, 10, default));
    }

    [Fact]
    public async Task CancelKeyDeletion_DeleteTenantCommitsBeforeItsWrite_RefusedInTheWrite_KeyStaysScheduled()
    {
        // The tenant check passes; DeleteTenant commits while the cancel waits for the write lock.
        // Before, the cancel brought the key back DISABLED in the tenant being offboarded, until
        // the next sweep scheduled it again — with a new waiting period, moving its destruction later.
        var acme = TenantId.Parse("acme");
        var key = await _harness.CreateKeyAsync("going", DomainHarness.Acme);
        await _harness.Keys.DisableKeyAsync(DomainHarness.Acme, key.Name, default);
        var scheduled = await _harness.Keys.ScheduleKeyDeletionAsync(DomainHarness.Acme, key.Name, null, null, default);
        ((InMemoryStore)_harness.Store).BeforeNextKeyUpdate = () => _harness.Access.DeleteTenantAsync(acme, null, default).GetAwaiter().GetResult();

        var refused = await Assert.ThrowsAsync<KmsException>(() => _harness.Keys.CancelKeyDeletionAsync(DomainHarness.Acme, key.Name, null, default));

        Assert.Equal((KmsErrorCode.FailedPrecondition, "tenants/acme is being deleted; nothing new can be created in it"), (refused.Code, refused.Message));
        var stored = (await _harness.Store.GetKeyAsync(key.Name, default))!;
        Assert.Equal((KeyState.DestroyScheduled, scheduled.DestroyTime), (stored.State, stored.DestroyTime));
    }

    [Fact]
    public async Task DeletingTenant_KeysCannotBeRevived_AndTheSweepCatchesAKeyThatEscaped()
    {
        var early = await _harness.CreateKeyAsync("early", DomainHarness.Acme);
        await _harness.Access.DeleteTenantAsync(TenantId.Parse("acme"), null, default);
        foreach (var revive in new Func<Task>[]
        {
            () => _harness.Keys.CancelKeyDeletionAsync(DomainHarness.Acme, early.Name, null, default),
            () => _harness.Keys.EnableKeyAsync(DomainHarness.Acme, early.Name, default),
        })
        {
            var e = await Assert.ThrowsAsync<KmsException>(revive);
            Assert.Equal(KmsErrorCode.FailedPrecondition, e.Code);
        }

        // A key created while DeleteTenant ran: the tenant was marked DELETING after the key's
        // create passed its tenant check, so DeleteTenant's listing missed it.
        var tenant = (await _harness.AccessStore.GetTenantAsync(TenantId.Parse("dev"), default))!;
        var escaped = await _harness.CreateKeyAsync("escaped", DomainHarness.Dev);
        await _harness.AccessStore.UpdateTenantAsync(tenant with { State = TenantState.Deleting, DeleteTime = _harness.Time.GetUtcNow() }, default);
        Assert.Equal(KeyState.Enabled, (await _harness.Keys.GetKeyAsync(DomainHarness.Dev, escaped.Name, default)).State);

        Assert.Equal(2, await _harness.Access.SweepDeletingTenantsAsync(default));
        var swept = await _harness.Keys.GetKeyAsync(DomainHarness.Dev, escaped.Name, default);
        Assert.Equal((KeyState.DestroyScheduled, _harness.Time.GetUtcNow() + _harness.Lifecycle.DefaultWaitingPeriod), (swept.State, swept.DestroyTime));
        Assert.Equal(KeyState.DestroyScheduled, (await _harness.Keys.GetKeyAsync(DomainHarness.Acme, early.Name, default)).State);
    }

    [Fact]
    public async Task CancelTenantDeletion_TenantActiveAgain_KeysStayScheduledUntilEachIsCancelled()
    {
        var mine = await _harness.CreateKeyAsync("mine", DomainHarness.Acme);
        var other = await _harness.CreateKeyAsync("other", DomainHarness.Acme);
        await _harness.Access.DeleteTenantAsync(TenantId.Parse("acme"), TimeSpan.FromDays(10), default);
        var destroyAt = _harness.Time.GetUtcNow() + TimeSpan.FromDays(10);
        _harness.Time.Advance(TimeSpan.FromDays(2));

        var cancelled = await _harness.Access.CancelTenantDeletionAsync(TenantId.Parse("acme"), default);

        Assert.Equal((TenantState.Active, null, null), (cancelled.Tenant.State, cancelled.Tenant.DeleteTime, cancelled.Tenant.DeleteWaitingPeriod));
        Assert.Equal((2, (DateTimeOffset?)destroyAt), (cancelled.ScheduledKeys, cancelled.EarliestDestroyTime));
        var stored = (await _harness.AccessStore.GetTenantAsync(TenantId.Parse("acme"), default))!;
        Assert.Equal((TenantState.Active, null), (stored.State, stored.DeleteTime));

        // No key comes back by itself; the tenant's own cancel of a key's deletion is allowed again
        // (refused while DELETING), and it gives the key back DISABLED, as a key's cancel does.
        Assert.Equal(KeyState.DestroyScheduled, (await _harness.Keys.GetKeyAsync(DomainHarness.Acme, other.Name, default)).State);
        await _harness.Keys.CancelKeyDeletionAsync(DomainHarness.Acme, mine.Name, null, default);
        await _harness.Keys.EnableKeyAsync(DomainHarness.Acme, mine.Name, default);
        Assert.Equal(KeyState.Enabled, (await _harness.Keys.GetKeyAsync(DomainHarness.Acme, mine.Name, default)).State);

        // New work is accepted again, and the sweep leaves the tenant alone.
        var fresh = await _harness.CreateKeyAsync("fresh", DomainHarness.Acme);
        Assert.Equal(0, await _harness.Access.SweepDeletingTenantsAsync(default));
        Assert.Equal(KeyState.Enabled, (await _harness.Keys.GetKeyAsync(DomainHarness.Acme, fresh.Name, default)).State);
        Assert.Equal(1, (await _harness.Access.CancelTenantDeletionAsync(TenantId.Parse("acme"), default)).ScheduledKeys);
    }

    [Fact]
    public async Task CancelTenantDeletion_OfAnActiveTenant_AnsweredUnchanged_NothingWritten_AndAMissingOneIsNotFound()
    {
        var before = await _harness.AccessStore.GetTenantAsync(TenantId.Parse("acme"), default);
        var store = (InMemoryStore)_harness.Store;
        store.FailNextWrite = KmsErrors.Unavailable("nothing may be written");

        var answer = await _harness.Access.CancelTenantDeletionAsync(TenantId.Parse("acme"), default);

        Assert.Equal((before, 0, (DateTimeOffset?)null), (answer.Tenant, answer.ScheduledKeys, answer.EarliestDestroyTime));
        Assert.NotNull(store.FailNextWrite);
        store.FailNextWrite = null;
        var missing = await Assert.ThrowsAsync<KmsException>(() => _harness.Access.CancelTenantDeletionAsync(TenantId.Parse("nowhere"), default));
        Assert.Equal(KmsErrorCode.NotFound, missing.Code);
    }

    [Fact]
    public async Task Sweep_ThatReadTheTenantDeletingBeforeACancelCommitted_SchedulesNothingAfterIt()
    {
        // The sweep lists DELETING tenants, then writes key by key; a CancelTenantDeletion
        // commits in between. The key's write checks the tenant under the write lock.
        var tenant = (await _harness.AccessStore.GetTenantAsync(TenantId.Parse("acme"), default))!;
        var key = await _harness.CreateKeyAsync("late", DomainHarness.Acme);
        await _harness.AccessStore.UpdateTenantAsync(tenant with { State = TenantState.Deleting, DeleteTime = _harness.Time.GetUtcNow() }, default);
        var store = (InMemoryStore)_harness.Store;
        store.BeforeNextKeyUpdate = () => _harness.Access.CancelTenantDeletionAsync(TenantId.Parse("acme"), default).GetAwaiter().GetResult();

        await _harness.Access.SweepDeletingTenantsAsync(default);

        Assert.Null(store.BeforeNextKeyUpdate);
        Assert.Equal(TenantState.Active, (await _harness.AccessStore.GetTenantAsync(TenantId.Parse("acme"), default))!.State);
        Assert.Equal(KeyState.Enabled, (await _harness.Keys.GetKeyAsync(DomainHarness.Acme, key.Name, default)).State);
    }

    [Fact]
    public async Task DeleteTenant_FailingPartWay_ARetryOrTheSweepFinishesItWithTheWaitingPeriodAsked()
    {
        var keys = new List<Key>();
        foreach (var id in new[] { "k1", "k2", "k3" })
        {
            keys.Add(await _harness.CreateKeyAsync(id, DomainHarness.Acme));
        }

        // The tenant's DELETING state commits; the first key is scheduled; the store fails on the second.
        var store = (InMemoryStore)_harness.Store;
        store.BeforeNextKeyUpdate = () => store.BeforeNextKeyUpdate = () => store.FailNextWrite = KmsErrors.Unavailable("the database is unavailable; retry shortly");
        var asked = TimeSpan.FromDays(10);
        var failed = await Assert.ThrowsAsync<KmsException>(() => _harness.Access.DeleteTenantAsync(TenantId.Parse("acme"), asked, default));
        Assert.Equal(KmsErrorCode.Unavailable, failed.Code);
        var tenant = (await _harness.AccessStore.GetTenantAsync(TenantId.Parse("acme"), default))!;
        Assert.Equal((TenantState.Deleting, asked), (tenant.State, tenant.DeleteWaitingPeriod));
        var states = new List<KeyState>();
        foreach (var key in keys)
        {
            states.Add((await _harness.Keys.GetKeyAsync(DomainHarness.Acme, key.Name, default)).State);
        }

        Assert.Equal([KeyState.DestroyScheduled, KeyState.Enabled, KeyState.Enabled], states);

        // A retry that asks for another waiting period is refused (k1 already has the first);
        // the sweep schedules the rest with the one asked for, not the default (30 days).
        var other = await Assert.ThrowsAsync<KmsException>(() => _harness.Access.DeleteTenantAsync(TenantId.Parse("acme"), TimeSpan.FromDays(20), default));
        Assert.Equal(KmsErrorCode.FailedPrecondition, other.Code);
        Assert.Contains("10 days", other.Message, StringComparison.Ordinal);
        _harness.Time.Advance(TimeSpan.FromHours(1));
        await _harness.Access.SweepDeletingTenantsAsync(default);
        foreach (var name in keys.Skip(1).Select(k => k.Name))
        {
            var key = await _harness.Keys.GetKeyAsync(DomainHarness.Acme, name, default);
            Assert.Equal((KeyState.DestroyScheduled, _harness.Time.GetUtcNow() + asked), (key.State, key.DestroyTime));
        }

        // A retry without a waiting period (or with the same) resumes the deletion.
        await _harness.Access.DeleteTenantAsync(TenantId.Parse("acme"), null, default);
        await _harness.Access.DeleteTenantAsync(TenantId.Parse("acme"), asked, default);
        Assert.Equal(asked, (await _harness.AccessStore.GetTenantAsync(TenantId.Parse("acme"), default))!.DeleteWaitingPeriod);
    }

    [Fact]
    public async Task SweepDeletingTenants_KeysAlreadyGoing_WritesNothing()
    {
        // Every pass visits every DELETING tenant, for ever: one offboarded long ago must not
        // take the store's write lock once per key each time.
        await _harness.CreateKeyAsync("k1", DomainHarness.Acme);
        await _harness.CreateKeyAsync("k2", DomainHarness.Acme);
        await _harness.Access.DeleteTenantAsync(TenantId.Parse("acme"), null, default);
        var store = (InMemoryStore)_harness.Store;
        store.BeforeNextKeyUpdate = () => throw new InvalidOperationException("the sweep wrote to a key already scheduled for deletion");

        Assert.Equal(1, await _harness.Access.SweepDeletingTenantsAsync(default));
        Assert.NotNull(store.BeforeNextKeyUpdate);
    }
}
