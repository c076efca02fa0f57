using Google.Protobuf;
using Google.Protobuf.WellKnownTypes;
using Grpc.Core;
using Kms.Contracts.V1;
using Kms.Testing;

namespace Kms.Server.Tests;

/// <summary>
/// No existence oracle: for every RPC that addresses a key, a key version or an alias, a caller
/// that may not use the key — a key-user of the tenant whose key policy names it for nothing, or
/// a principal of another tenant holding every tenant role — gets for an existing key exactly the
/// answer a missing one gets: the same status, the same message but for the name it gave, the
/// same audit outcome. Messages repeat only what the caller supplied (never an alias's key, nor a
/// version). Real server on SoftHSM.
/// </summary>
public sealed class KeyExistenceTests(KeyExistenceFixture fixture) : IClassFixture<KeyExistenceFixture>
{
    private static readonly ByteString Bytes = ByteString.CopyFromUtf8("probe");
    private static readonly ByteString RsaSized = ByteString.CopyFrom(new byte[256]);

    /// <summary>Which of the restricted keys a row addresses (by purpose).</summary>
    public enum Hidden
    {
        /// <summary>ENCRYPT_DECRYPT.</summary>
        Symmetric,

        /// <summary>SIGN_VERIFY.</summary>
        Signing,

        /// <summary>MAC.</summary>
        Mac,

        /// <summary>ASYMMETRIC_DECRYPT.</summary>
        Rsa,
    }

    /// <summary>What a row's name may be.</summary>
    [Flags]
    public enum Names
    {
        /// <summary>A key.</summary>
        Key = 1,

        /// <summary>An alias.</summary>
        Alias = 2,

        /// <summary>A key version.</summary>
        Version = 4,
    }

    /// <summary>An RPC, the key it addresses, the names it takes, and a call with that name returning the status (a batch: its item's).</summary>
    public sealed record Row(string Method, Hidden Key, Names Takes, Func<Clients, Metadata, string, Task<Answer>> Call)
    {
        /// <summary>A batch call: answered OK (and audited so), its item carries the status.</summary>
        public bool Batch => Method.StartsWith("Batch", StringComparison.Ordinal);
    }

    /// <summary>The stubs a row calls, and a blob of an unrestricted key (every key-user of dev may decrypt it).</summary>
    public sealed record Clients(KeyManagementService.KeyManagementServiceClient Keys, QuorumService.QuorumServiceClient Quorum, ByteString OpenBlob);

    /// <summary>What a caller saw, and the request id its audit event carries.</summary>
    public sealed record Answer(StatusCode Code, string Detail)
    {
        /// <summary>The call's request id.</summary>
        public string RequestId { get; set; } = "";
    }

    /// <summary>Every key-addressed RPC.</summary>
    public static readonly IReadOnlyList<Row> Rows =
    [
        // Crypto: the key's policy decides.
        new("Encrypt", Hidden.Symmetric, Names.Key | Names.Alias, (c, h, n) => Unary(c.Keys.EncryptAsync(new EncryptRequest { Name = n, Plaintext = Bytes }, h))),
        new("GenerateDataKey", Hidden.Symmetric, Names.Key | Names.Alias, (c, h, n) => Unary(c.Keys.GenerateDataKeyAsync(new GenerateDataKeyRequest { Name = n }, h))),
        new("GenerateDataKeyWithoutPlaintext", Hidden.Symmetric, Names.Key | Names.Alias, (c, h, n) => Unary(c.Keys.GenerateDataKeyWithoutPlaintextAsync(new GenerateDataKeyWithoutPlaintextRequest { Name = n }, h))),
        new("ReEncrypt", Hidden.Symmetric, Names.Key | Names.Alias, (c, h, n) => Unary(c.Keys.ReEncryptAsync(new ReEncryptRequest { Ciphertext = c.OpenBlob, DestinationName = n }, h))),
        new("BatchEncrypt", Hidden.Symmetric, Names.Key | Names.Alias, async (c, h, n) => Item((await c.Keys.BatchEncryptAsync(new BatchEncryptRequest { Requests = { new EncryptRequest { Name = n, Plaintext = Bytes } } }, h)).Results[0].Status)),
        new("BatchGenerateDataKey", Hidden.Symmetric, Names.Key | Names.Alias, async (c, h, n) => Item((await c.Keys.BatchGenerateDataKeyAsync(new BatchGenerateDataKeyRequest { Requests = { new GenerateDataKeyRequest { Name = n } } }, h)).Results[0].Status)),
        new("BatchReEncrypt", Hidden.Symmetric, Names.Key | Names.Alias, async (c, h, n) => Item((await c.Keys.BatchReEncryptAsync(new BatchReEncryptRequest { Requests = { new ReEncryptRequest { Ciphertext = c.OpenBlob, DestinationName = n } } }, h)).Results[0].Status)),
        new("Sign", Hidden.Signing, Names.Key | Names.Alias | Names.Version, (c, h, n) => Unary(c.Keys.SignAsync(new SignRequest { Name = n, Message = Bytes }, h))),
        new("Verify", Hidden.Signing, Names.Key | Names.Alias | Names.Version, (c, h, n) => Unary(c.Keys.VerifyAsync(new VerifyRequest { Name = n, Message = Bytes, Signature = Bytes }, h))),
        new("GetPublicKey", Hidden.Signing, Names.Key | Names.Alias | Names.Version, (c, h, n) => Unary(c.Keys.GetPublicKeyAsync(new GetPublicKeyRequest { Name = n }, h))),
        new("AsymmetricDecrypt", Hidden.Rsa, Names.Key | Names.Alias | Names.Version, (c, h, n) => Unary(c.Keys.AsymmetricDecryptAsync(new AsymmetricDecryptRequest { Name = n, Ciphertext = RsaSized }, h))),
        new("GenerateMac", Hidden.Mac, Names.Key | Names.Alias | Names.Version, (c, h, n) => Unary(c.Keys.GenerateMacAsync(new GenerateMacRequest { Name = n, Data = Bytes }, h))),
        new("VerifyMac", Hidden.Mac, Names.Key | Names.Alias | Names.Version, (c, h, n) => Unary(c.Keys.VerifyMacAsync(new VerifyMacRequest { Name = n, Data = Bytes, Mac = Bytes }, h))),

        // Key reads and management, aliases, policies, imports, quorum: roles decide, before anything is read.
        new("GetKey", Hidden.Symmetric, Names.Key, (c, h, n) => Unary(c.Keys.GetKeyAsync(new GetKeyRequest { Name = n }, h))),
        new("UpdateKey", Hidden.Symmetric, Names.Key, (c, h, n) => Unary(c.Keys.UpdateKeyAsync(new UpdateKeyRequest { Key = new Key { Name = n, Labels = { ["probe"] = "1" } }, UpdateMask = new FieldMask { Paths = { "labels" } } }, h))),
        new("RotateKey", Hidden.Symmetric, Names.Key | Names.Alias, (c, h, n) => Unary(c.Keys.RotateKeyAsync(new RotateKeyRequest { Name = n }, h))),
        new("ListKeyVersions", Hidden.Symmetric, Names.Key, (c, h, n) => Unary(c.Keys.ListKeyVersionsAsync(new ListKeyVersionsRequest { Parent = n }, h))),
        new("GetKeyVersion", Hidden.Symmetric, Names.Version, (c, h, n) => Unary(c.Keys.GetKeyVersionAsync(new GetKeyVersionRequest { Name = n }, h))),
        new("UpdatePrimaryVersion", Hidden.Symmetric, Names.Key, (c, h, n) => Unary(c.Keys.UpdatePrimaryVersionAsync(new UpdatePrimaryVersionRequest { Name = n, Version = 1 }, h))),
        new("EnableKey", Hidden.Symmetric, Names.Key, (c, h, n) => Unary(c.Keys.EnableKeyAsync(new EnableKeyRequest { Name = n }, h))),
        new("DisableKey", Hidden.Symmetric, Names.Key, (c, h, n) => Unary(c.Keys.DisableKeyAsync(new DisableKeyRequest { Name = n }, h))),
        new("EnableKeyVersion", Hidden.Symmetric, Names.Version, (c, h, n) => Unary(c.Keys.EnableKeyVersionAsync(new EnableKeyVersionRequest { Name = n }, h))),
        new("DisableKeyVersion", Hidden.Symmetric, Names.Version, (c, h, n) => Unary(c.Keys.DisableKeyVersionAsync(new DisableKeyVersionRequest { Name = n }, h))),
        new("ScheduleKeyDeletion", Hidden.Symmetric, Names.Key, (c, h, n) => Unary(c.Keys.ScheduleKeyDeletionAsync(new ScheduleKeyDeletionRequest { Name = n }, h))),
        new("CancelKeyDeletion", Hidden.Symmetric, Names.Key, (c, h, n) => Unary(c.Keys.CancelKeyDeletionAsync(new CancelKeyDeletionRequest { Name = n }, h))),
        new("ScheduleKeyVersionDestruction", Hidden.Symmetric, Names.Version, (c, h, n) => Unary(c.Keys.ScheduleKeyVersionDestructionAsync(new ScheduleKeyVersionDestructionRequest { Name = n }, h))),
        new("RestoreKeyVersion", Hidden.Symmetric, Names.Version, (c, h, n) => Unary(c.Keys.RestoreKeyVersionAsync(new RestoreKeyVersionRequest { Name = n }, h))),
        new("GetAlias", Hidden.Symmetric, Names.Alias, (c, h, n) => Unary(c.Keys.GetAliasAsync(new GetAliasRequest { Name = n }, h))),
        new("UpdateAlias", Hidden.Symmetric, Names.Alias, (c, h, n) => Unary(c.Keys.UpdateAliasAsync(new UpdateAliasRequest { Name = n, Key = "tenants/dev/keys/open" }, h))),
        new("DeleteAlias", Hidden.Symmetric, Names.Alias, (c, h, n) => Unary(c.Keys.DeleteAliasAsync(new DeleteAliasRequest { Name = n }, h))),
        new("ImportKeyVersion", Hidden.Symmetric, Names.Key | Names.Alias, (c, h, n) => Unary(c.Keys.ImportKeyVersionAsync(new ImportKeyVersionRequest { Parent = n, ImportJob = "tenants/dev/importJobs/probe", WrappedKey = Bytes }, h))),
        new("GetKeyAttestation", Hidden.Signing, Names.Key | Names.Alias | Names.Version, (c, h, n) => Unary(c.Keys.GetKeyAttestationAsync(new GetKeyAttestationRequest { Name = n }, h))),
        new("SetKeyPolicy", Hidden.Symmetric, Names.Key, (c, h, n) => Unary(c.Keys.SetKeyPolicyAsync(new SetKeyPolicyRequest { Name = n }, h))),
        new("GetKeyPolicy", Hidden.Symmetric, Names.Key, (c, h, n) => Unary(c.Keys.GetKeyPolicyAsync(new GetKeyPolicyRequest { Name = n }, h))),
        new("CreateGrant", Hidden.Symmetric, Names.Key, (c, h, n) => Unary(c.Keys.CreateGrantAsync(new CreateGrantRequest { Parent = n, Grant = new KeyGrant { Grantee = "token:outsider", Operations = { "ENCRYPT" } } }, h))),
        new("ListGrants", Hidden.Symmetric, Names.Key, (c, h, n) => Unary(c.Keys.ListGrantsAsync(new ListGrantsRequest { Parent = n }, h))),
        new("RevokeGrant", Hidden.Symmetric, Names.Key, (c, h, n) => Unary(c.Keys.RevokeGrantAsync(new RevokeGrantRequest { Name = n + "/grants/0123456789abcdef" }, h))),
        new("TestPermissions", Hidden.Symmetric, Names.Key, (c, h, n) => Unary(c.Keys.TestPermissionsAsync(new TestPermissionsRequest { Name = n }, h))),
        new("CreateQuorumRequest", Hidden.Symmetric, Names.Version, (c, h, n) => Unary(c.Quorum.CreateQuorumRequestAsync(new CreateQuorumRequestRequest
        {
            Parent = "tenants/dev",
            Operation = QuorumOperation.DestroyKeyVersionNow,
            DestroyKeyVersionNow = new DestroyKeyVersionNowParameters { Name = n },
        }, h))),
    ];

    /// <summary>Callers that may not use the restricted keys.</summary>
    public static TheoryData<string> Callers => new(KeyExistenceFixture.Outsider, KeyExistenceFixture.Prober);

    [Theory]
    [MemberData(nameof(Callers))]
    public async Task EveryKeyAddressedRpc_ExistingKeyTheCallerMayNotUse_AnsweredExactlyLikeAMissingOne(string caller)
    {
        var failures = new List<string>();
        var answers = new List<(string Case, bool Batch, Answer Existing, Answer Missing)>();
        foreach (var row in Rows)
        {
            foreach (var (existing, missing) in KeyExistenceFixture.Pairs(row.Key, row.Takes))
            {
                var seen = await CallAsync(row, caller, existing);
                var absent = await CallAsync(row, caller, missing);
                var label = $"{row.Method} as {caller}: {existing} / {missing}";
                answers.Add((label, row.Batch, seen, absent));
                if (seen.Code != absent.Code || seen.Detail != absent.Detail.Replace(missing, existing, StringComparison.Ordinal))
                {
                    failures.Add($"{label}: existing answered {seen.Code} \"{seen.Detail}\", missing {absent.Code} \"{absent.Detail}\"");
                }

                // Nothing beyond what the caller gave: not the key an alias names, not a version.
                foreach (var leak in KeyExistenceFixture.NotSupplied(row.Key, existing))
                {
                    if (seen.Detail.Contains(leak, StringComparison.Ordinal))
                    {
                        failures.Add($"{label}: the answer \"{seen.Detail}\" names {leak}, which the caller did not give");
                    }
                }

                if (seen.Code == StatusCode.OK)
                {
                    failures.Add($"{label}: the call succeeded");
                }
            }
        }

        // The same audit outcome: each call's event (those not folded into a refusal window)
        // records the status its caller saw (a batch call's, OK).
        var outcomes = await fixture.OutcomesByRequestIdAsync(caller);
        foreach (var (label, batch, existing, missing) in answers)
        {
            foreach (var answer in new[] { existing, missing })
            {
                if (outcomes.TryGetValue(answer.RequestId, out var outcome) && outcome != (batch ? "OK" : Outcome(answer.Code)))
                {
                    failures.Add($"{label}: audited {outcome}, answered {answer.Code}");
                }
            }

            // Answered by a handler (past the authorization step): never aggregated, so both are there.
            if (existing.Code == StatusCode.NotFound && caller == KeyExistenceFixture.Outsider
                && outcomes.ContainsKey(existing.RequestId) != outcomes.ContainsKey(missing.RequestId))
            {
                failures.Add($"{label}: one call audited on its own, the other not");
            }
        }

        Assert.True(failures.Count == 0, string.Join("\n", failures));
    }

    [Fact]
    public async Task Decrypt_BlobOfAKeyThePolicyNamesTheCallerForNothing_TheOpaqueAnswerOfAnUnknownKeyVersion()
    {
        var blob = fixture.HiddenBlob;
        var unknown = blob.ToByteArray();
        unknown[1] ^= 0xff; // the key version id: no such version in any tenant
        foreach (var caller in new[] { KeyExistenceFixture.Outsider, KeyExistenceFixture.Prober })
        {
            var hidden = await Unary(fixture.Clients.Keys.DecryptAsync(new DecryptRequest { Ciphertext = blob }, fixture.Headers(caller)));
            var missing = await Unary(fixture.Clients.Keys.DecryptAsync(new DecryptRequest { Ciphertext = ByteString.CopyFrom(unknown) }, fixture.Headers(caller)));
            Assert.Equal((StatusCode.InvalidArgument, "decryption failed"), (hidden.Code, hidden.Detail));
            Assert.Equal((missing.Code, missing.Detail), (hidden.Code, hidden.Detail));

            var batch = await fixture.Clients.Keys.BatchDecryptAsync(
                new BatchDecryptRequest { Requests = { new DecryptRequest { Ciphertext = blob }, new DecryptRequest { Ciphertext = ByteString.CopyFrom(unknown) } } },
                fixture.Headers(caller));
            Assert.All(batch.Results, r => Assert.Equal(((int)StatusCode.InvalidArgument, "decryption failed"), (r.Status.Code, r.Status.Message)));
        }

        // ReEncrypt's source, to a destination the outsider may use (the prober may use none of dev's).
        var reEncrypt = await Unary(fixture.Clients.Keys.ReEncryptAsync(new ReEncryptRequest { Ciphertext = blob, DestinationName = "tenants/dev/keys/open" }, fixture.Headers(KeyExistenceFixture.Outsider)));
        Assert.Equal((StatusCode.InvalidArgument, "decryption failed"), (reEncrypt.Code, reEncrypt.Detail));
    }

    [Fact]
    public async Task CallerThePolicyNamesForAnotherOperation_PermissionDenied_NamingOnlyWhatItGave()
    {
        // It may encrypt with the key, so the key's existence is no secret to it: it is told why.
        var headers = fixture.Headers(KeyExistenceFixture.Encryptor);
        var decrypt = await Unary(fixture.Clients.Keys.DecryptAsync(new DecryptRequest { Ciphertext = fixture.HiddenBlob }, headers));
        Assert.Equal(StatusCode.PermissionDenied, decrypt.Code);
        Assert.Equal("the policy of the ciphertext's key does not allow token:encryptor to decrypt (no policy entry or matching grant)", decrypt.Detail);

        var viaAlias = await Unary(fixture.Clients.Keys.GenerateMacAsync(new GenerateMacRequest { Name = "tenants/dev/aliases/mac-alias", Data = Bytes }, headers));
        Assert.Equal(StatusCode.PermissionDenied, viaAlias.Code);
        Assert.Equal("the policy of tenants/dev/aliases/mac-alias does not allow token:encryptor to sign (no policy entry or matching grant)", viaAlias.Detail);
    }

    private async Task<Answer> CallAsync(Row row, string caller, string name)
    {
        var headers = fixture.Headers(caller);
        var answer = await row.Call(fixture.Clients, headers, name);
        answer.RequestId = headers.GetValue("x-request-id")!;
        return answer;
    }

    private static async Task<Answer> Unary<T>(AsyncUnaryCall<T> call)
    {
        try
        {
            await call;
            return new Answer(StatusCode.OK, "");
        }
        catch (RpcException e)
        {
            return new Answer(e.StatusCode, e.Status.Detail);
        }
    }

    private static Answer Item(ItemStatus status) => new((StatusCode)status.Code, status.Message);

    private static string Outcome(StatusCode code) => code switch
    {
        StatusCode.NotFound => "NOT_FOUND",
        StatusCode.PermissionDenied => "PERMISSION_DENIED",
        StatusCode.InvalidArgument => "INVALID_ARGUMENT",
        StatusCode.FailedPrecondition => "FAILED_PRECONDITION",
        StatusCode.OK => "OK",
        _ => code.ToString(),
    };
}

/// <summary>
/// Tenant dev with four keys (one per purpose) whose policies name only the developer, an alias of
/// each, and an unrestricted key; a key-user of dev the policies name for nothing; a key-user the
/// symmetric and MAC keys' policies name for ENCRYPT; a principal of acme with every tenant role;
/// a security officer who reads the audit.
/// </summary>
public sealed class KeyExistenceFixture : IAsyncLifetime
{
    /// <summary>A key-user of dev that no key policy names.</summary>
    public const string Outsider = "outsider";

    /// <summary>A principal of acme with every tenant role.</summary>
    public const string Prober = "prober";

    /// <summary>A key-user of dev the policies name for ENCRYPT only (VERIFY only on the MAC key).</summary>
    public const string Encryptor = "encryptor";

    private static readonly Dictionary<KeyExistenceTests.Hidden, (string Key, string Alias)> Keys = new()
    {
        [KeyExistenceTests.Hidden.Symmetric] = ("secret-ledger", "ledger-alias"),
        [KeyExistenceTests.Hidden.Signing] = ("secret-signer", "signer-alias"),
        [KeyExistenceTests.Hidden.Mac] = ("secret-mac", "mac-alias"),
        [KeyExistenceTests.Hidden.Rsa] = ("secret-rsa", "rsa-alias"),
    };

    private readonly Dictionary<string, string> _tokens = [];
    private KmsTestServer _server = null!;
    private global::Grpc.Net.Client.GrpcChannel _channel = null!;
    private string _officer = "";

    /// <summary>Stubs over one channel.</summary>
    public KeyExistenceTests.Clients Clients { get; private set; } = null!;

    /// <summary>A blob of the restricted symmetric key.</summary>
    public ByteString HiddenBlob { get; private set; } = ByteString.Empty;

    /// <summary>Headers with the caller's token and a fresh request id.</summary>
    public Metadata Headers(string caller) => new()
    {
        { "authorization", "Bearer " + _tokens[caller] },
        { "x-request-id", "existence-" + Guid.NewGuid().ToString("N") },
    };

    /// <summary>(existing, missing) name pairs of the kinds a row takes.</summary>
    public static IEnumerable<(string Existing, string Missing)> Pairs(KeyExistenceTests.Hidden hidden, KeyExistenceTests.Names takes)
    {
        var (key, alias) = Keys[hidden];
        if (takes.HasFlag(KeyExistenceTests.Names.Key))
        {
            yield return ($"tenants/dev/keys/{key}", "tenants/dev/keys/never-was");
        }

        if (takes.HasFlag(KeyExistenceTests.Names.Alias))
        {
            yield return ($"tenants/dev/aliases/{alias}", "tenants/dev/aliases/never-was");
        }

        if (takes.HasFlag(KeyExistenceTests.Names.Version))
        {
            yield return ($"tenants/dev/keys/{key}/versions/1", $"tenants/dev/keys/{key}/versions/9");
            yield return ($"tenants/dev/keys/{key}/versions/1", "tenants/dev/keys/never-was/versions/1");
        }
    }

    /// <summary>What an answer about <paramref name="named"/> must not repeat.</summary>
    public static IEnumerable<string> NotSupplied(KeyExistenceTests.Hidden hidden, string named)
    {
        var (key, _) = Keys[hidden];
        if (!named.Contains("/keys/", StringComparison.Ordinal))
        {
            yield return key;
        }

        if (!named.Contains("/versions/", StringComparison.Ordinal))
        {
            yield return "/versions/";
        }
    }

    /// <summary>The outcome of each of the caller's audited events, by request id.</summary>
    public async Task<Dictionary<string, string>> OutcomesByRequestIdAsync(string caller)
    {
        var audit = new AuditService.AuditServiceClient(_channel);
        var outcomes = new Dictionary<string, string>(StringComparer.Ordinal);
        var request = new ListAuditEventsRequest { Principal = $"token:{caller}", PageSize = 1000 };
        do
        {
            var page = await audit.ListAuditEventsAsync(request, KmsTestServer.Bearer(_officer));
            foreach (var e in page.Events)
            {
                outcomes[e.RequestId] = e.Outcome;
            }

            request.PageToken = page.NextPageToken;
        }
        while (request.PageToken.Length > 0);
        return outcomes;
    }

    public async Task InitializeAsync()
    {
        _server = await KmsTestServer.StartAsync();
        _channel = _server.CreateChannel();
        await _server.EnsureTenantAsync("acme");
        _tokens[Outsider] = await _server.CreatePrincipalWithTokenAsync(Outsider, "dev", "key-user");
        _tokens[Encryptor] = await _server.CreatePrincipalWithTokenAsync(Encryptor, "dev", "key-user");
        _tokens[Prober] = await _server.CreatePrincipalWithTokenAsync(Prober, "acme", "admin", "key-manager", "key-importer", "key-user", "auditor");
        _officer = await _server.CreatePrincipalWithTokenAsync("existence-officer", null, "security-officer");

        using var developer = _server.CreateClient();
        var open = await developer.CreateKeyAsync("tenants/dev", "open");
        var openBlob = ByteString.CopyFrom((await developer.EncryptAsync(open.Name, "open"u8.ToArray())).Ciphertext);
        Clients = new(new KeyManagementService.KeyManagementServiceClient(_channel), new QuorumService.QuorumServiceClient(_channel), openBlob);
        foreach (var (hidden, (key, alias)) in Keys)
        {
            var created = hidden switch
            {
                KeyExistenceTests.Hidden.Signing => await developer.CreateKeyAsync("tenants/dev", key, KeyPurpose.SignVerify),
                KeyExistenceTests.Hidden.Mac => await developer.CreateKeyAsync("tenants/dev", key, KeyPurpose.Mac),
                KeyExistenceTests.Hidden.Rsa => await developer.CreateKeyAsync("tenants/dev", key, KeyPurpose.AsymmetricDecrypt, KeyAlgorithm.RsaDecryptOaep2048Sha1),
                _ => await developer.CreateKeyAsync("tenants/dev", key),
            };
            if (hidden == KeyExistenceTests.Hidden.Symmetric)
            {
                HiddenBlob = ByteString.CopyFrom((await developer.EncryptAsync(created.Name, "hidden"u8.ToArray())).Ciphertext);
            }

            await developer.Raw.CreateAliasAsync(new CreateAliasRequest { Parent = "tenants/dev", AliasId = alias, Alias = new Alias { Key = created.Name } });
            var policy = new SetKeyPolicyRequest { Name = created.Name, Entries = { new KeyPolicyEntry { Principal = "token:developer", Operations = { "ENCRYPT", "DECRYPT", "SIGN", "VERIFY" } } } };
            if (hidden is KeyExistenceTests.Hidden.Symmetric or KeyExistenceTests.Hidden.Mac)
            {
                // Another operation the key has a use for: an entry allowing only what the key's
                // purpose never uses (ENCRYPT on a MAC key) is refused.
                policy.Entries.Add(new KeyPolicyEntry { Principal = "token:encryptor", Operations = { hidden == KeyExistenceTests.Hidden.Mac ? "VERIFY" : "ENCRYPT" } });
            }

            await developer.Raw.SetKeyPolicyAsync(policy);
        }
    }

    public async Task DisposeAsync()
    {
        _channel.Dispose();
        await _server.DisposeAsync();
    }
}
