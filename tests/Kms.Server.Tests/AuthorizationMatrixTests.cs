using Google.Protobuf;
using Google.Protobuf.Reflection;
using Google.Protobuf.WellKnownTypes;
using Grpc.Core;
using Grpc.Health.V1;
using Grpc.Reflection.V1Alpha;
using Kms.Contracts.V1;
using Kms.Core.Errors;
using Kms.Server.Grpc;
using Kms.Server.Security;
using Kms.Testing;
using Microsoft.Extensions.DependencyInjection;

namespace Kms.Server.Tests;

/// <summary>Where an RPC's resource lives, for the matrix's expectations.</summary>
public enum MatrixTarget
{
    /// <summary>A resource of tenant dev, named in the request.</summary>
    Tenant,

    /// <summary>The caller's own tenant (Decrypt, batches, GenerateRandom).</summary>
    Own,

    /// <summary>Deployment-wide.</summary>
    Deployment,

    /// <summary>Anyone, without credentials (health).</summary>
    Public,

    /// <summary>Any authenticated caller (reflection).</summary>
    Authenticated,
}

/// <summary>
/// One RPC of the authorization matrix: which roles may call it, where its resource is, how
/// to build a request that succeeds for an allowed caller, and what an allowed caller of
/// another tenant gets for an RPC on its own tenant.
/// </summary>
/// <remarks>
/// <c>DeniedByHandler</c>: roles the rule lets through but the handler refuses with PERMISSION_DENIED
/// naming the operation's own permission (a security officer may create quorum requests, but a
/// destroy request needs kms.keys.destroy in the key's tenant).
/// </remarks>
public sealed record MatrixRow(string Method, MatrixTarget Target, string[] Allowed, Func<MatrixContext, Task<IMessage>> Build, StatusCode OtherTenantAllowed = StatusCode.NotFound, string[]? DeniedByHandler = null);

/// <summary>What a request builder gets: whether the call is expected to run, and a client with every dev role for set-up.</summary>
public sealed record MatrixContext(bool WillRun, Kms.Client.KmsClient Setup, Kms.Client.KmsClient Admin, MatrixFixture Fixture);

/// <summary>
/// The generated authorization matrix: every RPC the server serves × every role × the same
/// tenant / another tenant / no credentials, each cell asserting the exact status. The
/// expectations are data in one place (<see cref="Rows"/>), written independently of the
/// server's AccessRules; an RPC without a row fails <see cref="EveryServedMethod_HasARowAndARule"/>.
/// </summary>
public sealed class AuthorizationMatrixTests(MatrixFixture fixture) : IClassFixture<MatrixFixture>
{
    private const string Admin = "admin";
    private const string KeyManager = "key-manager";
    private const string KeyImporter = "key-importer";
    private const string KeyUser = "key-user";
    private const string Auditor = "auditor";
    private const string DeploymentAdmin = "deployment-admin";
    private const string SecurityOfficer = "security-officer";
    private const string Keys = "kms.v1.KeyManagementService/";
    private const string Access = "kms.v1.AccessManagementService/";
    private const string Audit = "kms.v1.AuditService/";
    private const string Quorum = "kms.v1.QuorumService/";

    private static readonly string[] Readers = [Admin, KeyManager, Auditor];

    /// <summary>kms.keys.read: the readers, and whoever imports (to see which keys take imports).</summary>
    private static readonly string[] KeyReaders = [Admin, KeyManager, KeyImporter, Auditor];

    /// <summary>The matrix's expectations.</summary>
    public static readonly IReadOnlyList<MatrixRow> Rows =
    [
        // Keys and versions.
        new(Keys + "CreateKey", MatrixTarget.Tenant, [KeyManager], c => Task.FromResult<IMessage>(new CreateKeyRequest { Parent = "tenants/dev", KeyId = MatrixFixture.NewId(), Key = new Key { Purpose = KeyPurpose.EncryptDecrypt } })),
        new(Keys + "GetKey", MatrixTarget.Tenant, KeyReaders, c => Msg(new GetKeyRequest { Name = c.Fixture.KeyName })),
        new(Keys + "ListKeys", MatrixTarget.Tenant, KeyReaders, c => Msg(new ListKeysRequest { Parent = "tenants/dev" })),
        new(Keys + "UpdateKey", MatrixTarget.Tenant, [KeyManager], c => Msg(new UpdateKeyRequest { Key = new Key { Name = c.Fixture.KeyName, Labels = { ["team"] = "matrix" } }, UpdateMask = new FieldMask { Paths = { "labels" } } })),
        new(Keys + "RotateKey", MatrixTarget.Tenant, [KeyManager], async c => new RotateKeyRequest { Name = await FreshKeyAsync(c) }),
        new(Keys + "ListKeyVersions", MatrixTarget.Tenant, KeyReaders, c => Msg(new ListKeyVersionsRequest { Parent = c.Fixture.KeyName })),
        new(Keys + "GetKeyVersion", MatrixTarget.Tenant, KeyReaders, c => Msg(new GetKeyVersionRequest { Name = c.Fixture.KeyName + "/versions/1" })),
        new(Keys + "UpdatePrimaryVersion", MatrixTarget.Tenant, [KeyManager], c => Msg(new UpdatePrimaryVersionRequest { Name = c.Fixture.KeyName, Version = 1 })),
        new(Keys + "EnableKey", MatrixTarget.Tenant, [KeyManager], async c => new EnableKeyRequest { Name = await FreshKeyAsync(c) }),
        new(Keys + "DisableKey", MatrixTarget.Tenant, [KeyManager], async c => new DisableKeyRequest { Name = await FreshKeyAsync(c) }),
        new(Keys + "EnableKeyVersion", MatrixTarget.Tenant, [KeyManager], async c => new EnableKeyVersionRequest { Name = await FreshKeyAsync(c) + "/versions/1" }),
        new(Keys + "DisableKeyVersion", MatrixTarget.Tenant, [KeyManager], async c => new DisableKeyVersionRequest { Name = await FreshRotatedKeyAsync(c) + "/versions/1" }),
        new(Keys + "ScheduleKeyDeletion", MatrixTarget.Tenant, [KeyManager], async c => new ScheduleKeyDeletionRequest { Name = await FreshKeyAsync(c) }),
        new(Keys + "CancelKeyDeletion", MatrixTarget.Tenant, [KeyManager], async c =>
        {
            var name = await FreshKeyAsync(c);
            await c.Setup.Raw.ScheduleKeyDeletionAsync(new ScheduleKeyDeletionRequest { Name = name });
            return new CancelKeyDeletionRequest { Name = name };
        }),
        new(Keys + "ScheduleKeyVersionDestruction", MatrixTarget.Tenant, [KeyManager], async c => new ScheduleKeyVersionDestructionRequest { Name = await FreshRotatedKeyAsync(c) + "/versions/1" }),
        new(Keys + "RestoreKeyVersion", MatrixTarget.Tenant, [KeyManager], async c =>
        {
            var version = await FreshRotatedKeyAsync(c) + "/versions/1";
            await c.Setup.Raw.ScheduleKeyVersionDestructionAsync(new ScheduleKeyVersionDestructionRequest { Name = version });
            return new RestoreKeyVersionRequest { Name = version };
        }),

        // Aliases.
        new(Keys + "CreateAlias", MatrixTarget.Tenant, [KeyManager], c => Msg(new CreateAliasRequest { Parent = "tenants/dev", AliasId = MatrixFixture.NewId(), Alias = new Alias { Key = c.Fixture.KeyName } })),
        new(Keys + "GetAlias", MatrixTarget.Tenant, Readers, c => Msg(new GetAliasRequest { Name = c.Fixture.AliasName })),
        new(Keys + "UpdateAlias", MatrixTarget.Tenant, [KeyManager], c => Msg(new UpdateAliasRequest { Name = c.Fixture.AliasName, Key = c.Fixture.KeyName })),
        new(Keys + "DeleteAlias", MatrixTarget.Tenant, [KeyManager], async c =>
        {
            var id = MatrixFixture.NewId();
            await c.Setup.Raw.CreateAliasAsync(new CreateAliasRequest { Parent = "tenants/dev", AliasId = id, Alias = new Alias { Key = c.Fixture.KeyName } });
            return new DeleteAliasRequest { Name = $"tenants/dev/aliases/{id}" };
        }),
        new(Keys + "ListAliases", MatrixTarget.Tenant, Readers, c => Msg(new ListAliasesRequest { Parent = "tenants/dev" })),

        // Crypto.
        new(Keys + "Encrypt", MatrixTarget.Tenant, [KeyUser], c => Msg(new EncryptRequest { Name = c.Fixture.KeyName, Plaintext = ByteString.CopyFromUtf8("matrix") })),
        new(Keys + "Decrypt", MatrixTarget.Own, [KeyUser], c => Msg(new DecryptRequest { Ciphertext = c.Fixture.Blob }), OtherTenantAllowed: StatusCode.InvalidArgument),
        new(Keys + "GenerateDataKey", MatrixTarget.Tenant, [KeyUser], c => Msg(new GenerateDataKeyRequest { Name = c.Fixture.KeyName })),
        new(Keys + "GenerateDataKeyWithoutPlaintext", MatrixTarget.Tenant, [KeyUser], c => Msg(new GenerateDataKeyWithoutPlaintextRequest { Name = c.Fixture.KeyName })),
        new(Keys + "GenerateRandom", MatrixTarget.Own, [KeyUser], c => Msg(new GenerateRandomRequest { LengthBytes = 16 }), OtherTenantAllowed: StatusCode.OK),
        new(Keys + "ReEncrypt", MatrixTarget.Tenant, [KeyUser], c => Msg(new ReEncryptRequest { Ciphertext = c.Fixture.Blob, DestinationName = c.Fixture.KeyName })),
        new(Keys + "BatchEncrypt", MatrixTarget.Own, [KeyUser], c => Msg(new BatchEncryptRequest { Requests = { new EncryptRequest { Name = c.Fixture.KeyName } } }), OtherTenantAllowed: StatusCode.OK),
        new(Keys + "BatchDecrypt", MatrixTarget.Own, [KeyUser], c => Msg(new BatchDecryptRequest { Requests = { new DecryptRequest { Ciphertext = c.Fixture.Blob } } }), OtherTenantAllowed: StatusCode.OK),
        new(Keys + "BatchReEncrypt", MatrixTarget.Own, [KeyUser], c => Msg(new BatchReEncryptRequest { Requests = { new ReEncryptRequest { Ciphertext = c.Fixture.Blob, DestinationName = c.Fixture.KeyName } } }), OtherTenantAllowed: StatusCode.OK),
        new(Keys + "BatchGenerateDataKey", MatrixTarget.Own, [KeyUser], c => Msg(new BatchGenerateDataKeyRequest { Requests = { new GenerateDataKeyRequest { Name = c.Fixture.KeyName } } }), OtherTenantAllowed: StatusCode.OK),

        // Signing, asymmetric decryption, MACs.
        new(Keys + "Sign", MatrixTarget.Tenant, [KeyUser], c => Msg(new SignRequest { Name = c.Fixture.SignKeyName, Message = ByteString.CopyFromUtf8("matrix") })),
        new(Keys + "Verify", MatrixTarget.Tenant, [KeyUser], c => Msg(new VerifyRequest { Name = c.Fixture.SignKeyName, Message = ByteString.CopyFromUtf8("matrix"), Signature = c.Fixture.Signature })),
        new(Keys + "GetPublicKey", MatrixTarget.Tenant, [KeyUser], c => Msg(new GetPublicKeyRequest { Name = c.Fixture.SignKeyName })),
        new(Keys + "AsymmetricDecrypt", MatrixTarget.Tenant, [KeyUser], c => Msg(new AsymmetricDecryptRequest { Name = c.Fixture.DecryptKeyName, Ciphertext = c.Fixture.RsaCiphertext })),
        new(Keys + "GenerateMac", MatrixTarget.Tenant, [KeyUser], c => Msg(new GenerateMacRequest { Name = c.Fixture.MacKeyName, Data = ByteString.CopyFromUtf8("matrix") })),
        new(Keys + "VerifyMac", MatrixTarget.Tenant, [KeyUser], c => Msg(new VerifyMacRequest { Name = c.Fixture.MacKeyName, Data = ByteString.CopyFromUtf8("matrix"), Mac = c.Fixture.Mac })),
        new(Keys + "BatchGenerateMac", MatrixTarget.Own, [KeyUser], c => Msg(new BatchGenerateMacRequest { Requests = { new GenerateMacRequest { Name = c.Fixture.MacKeyName, Data = ByteString.CopyFromUtf8("matrix") } } }), OtherTenantAllowed: StatusCode.OK),

        // BYOK and provenance statements.
        new(Keys + "CreateImportJob", MatrixTarget.Tenant, [KeyImporter], c => Msg(new CreateImportJobRequest
        {
            Parent = "tenants/dev",
            ImportJobId = MatrixFixture.NewId(),
            ImportJob = new ImportJob { ImportMethod = ImportMethod.RsaOaep3072Sha1Aes256 },
        })),
        new(Keys + "GetImportJob", MatrixTarget.Tenant, KeyReaders, c => Msg(new GetImportJobRequest { Name = c.Fixture.ImportJob.Name })),
        new(Keys + "ImportKeyVersion", MatrixTarget.Tenant, [KeyImporter], async c => new ImportKeyVersionRequest
        {
            Parent = c.WillRun ? (await c.Setup.CreateKeyAsync("tenants/dev", MatrixFixture.NewId(), new Key { Purpose = KeyPurpose.EncryptDecrypt, AllowImport = true })).Name : c.Fixture.KeyName,
            ImportJob = c.Fixture.ImportJob.Name,
            WrappedKey = ByteString.CopyFrom(Kms.Client.KeyImport.Wrap(c.Fixture.ImportJob.PublicKeyDer.Span, ImportMethod.RsaOaep3072Sha1Aes256, new byte[32])),
        }),
        new(Keys + "GetKeyAttestation", MatrixTarget.Tenant, KeyReaders, c => Msg(new GetKeyAttestationRequest { Name = c.Fixture.SignKeyName })),

        // Key policies and grants.
        new(Keys + "SetKeyPolicy", MatrixTarget.Tenant, [KeyManager], async c => new SetKeyPolicyRequest { Name = await FreshKeyAsync(c) }),
        new(Keys + "GetKeyPolicy", MatrixTarget.Tenant, Readers, c => Msg(new GetKeyPolicyRequest { Name = c.Fixture.KeyName })),
        new(Keys + "CreateGrant", MatrixTarget.Tenant, [KeyManager], async c => new CreateGrantRequest
        {
            Parent = await FreshRestrictedKeyAsync(c),
            Grant = new KeyGrant { Grantee = "token:matrix-svc", Operations = { "ENCRYPT" }, ContextEquals = { ["order"] = "1" } },
        }),
        new(Keys + "ListGrants", MatrixTarget.Tenant, Readers, c => Msg(new ListGrantsRequest { Parent = c.Fixture.KeyName })),
        new(Keys + "RevokeGrant", MatrixTarget.Tenant, [KeyManager], async c =>
        {
            var grant = await c.Setup.Raw.CreateGrantAsync(new CreateGrantRequest
            {
                Parent = await FreshRestrictedKeyAsync(c),
                Grant = new KeyGrant { Grantee = "token:matrix-svc", Operations = { "DECRYPT" } },
            });
            return new RevokeGrantRequest { Name = grant.Grant.Name };
        }),
        new(Keys + "TestPermissions", MatrixTarget.Tenant, [Admin, Auditor], c => Msg(new TestPermissionsRequest { Name = c.Fixture.KeyName })),

        // Tenants, principals, tokens, bindings.
        new(Access + "CreateTenant", MatrixTarget.Deployment, [DeploymentAdmin], c => Msg(new CreateTenantRequest { TenantId = MatrixFixture.NewId() })),
        new(Access + "GetTenant", MatrixTarget.Tenant, [Admin, Auditor, DeploymentAdmin, SecurityOfficer], c => Msg(new GetTenantRequest { Name = "tenants/dev" })),
        new(Access + "ListTenants", MatrixTarget.Deployment, [DeploymentAdmin, SecurityOfficer], c => Msg(new ListTenantsRequest())),
        new(Access + "DeleteTenant", MatrixTarget.Tenant, [DeploymentAdmin], async c =>
        {
            // Only a call expected to run deletes anything: a fresh tenant, never dev.
            if (!c.WillRun)
            {
                return new DeleteTenantRequest { Name = "tenants/dev" };
            }

            var id = MatrixFixture.NewId();
            await c.Admin.Access.CreateTenantAsync(new CreateTenantRequest { TenantId = id });
            return new DeleteTenantRequest { Name = $"tenants/{id}" };
        }),
        // An ACTIVE tenant is answered unchanged: harmless on dev.
        new(Access + "CancelTenantDeletion", MatrixTarget.Tenant, [DeploymentAdmin], c => Msg(new CancelTenantDeletionRequest { Name = "tenants/dev" })),
        new(Access + "CreatePrincipal", MatrixTarget.Deployment, [DeploymentAdmin], c => Msg(new CreatePrincipalRequest { Name = $"token:{MatrixFixture.NewId()}", Tenant = "tenants/dev" })),
        new(Access + "GetPrincipal", MatrixTarget.Deployment, [DeploymentAdmin], c => Msg(new GetPrincipalRequest { Name = "token:matrix-svc" })),
        new(Access + "ListPrincipals", MatrixTarget.Tenant, [DeploymentAdmin], c => Msg(new ListPrincipalsRequest { Tenant = "tenants/dev" })),
        new(Access + "DeletePrincipal", MatrixTarget.Deployment, [DeploymentAdmin], async c =>
        {
            // A fresh principal each time: a deleted name is never registered again.
            var name = $"token:{MatrixFixture.NewId()}";
            await c.Admin.Access.CreatePrincipalAsync(new CreatePrincipalRequest { Name = name, Tenant = "tenants/dev" });
            return new DeletePrincipalRequest { Name = name };
        }),
        new(Access + "CreateApiToken", MatrixTarget.Deployment, [DeploymentAdmin], c => Msg(new CreateApiTokenRequest { Principal = "token:matrix-svc", Kind = "SERVICE" })),
        new(Access + "ListApiTokens", MatrixTarget.Deployment, [DeploymentAdmin], c => Msg(new ListApiTokensRequest { Principal = "token:matrix-svc" })),
        new(Access + "RevokeApiToken", MatrixTarget.Deployment, [DeploymentAdmin], async c =>
        {
            var token = await c.Admin.Access.CreateApiTokenAsync(new CreateApiTokenRequest { Principal = "token:matrix-svc", Kind = "SERVICE" });
            return new RevokeApiTokenRequest { Id = token.Token.Id };
        }),
        new(Access + "SetRoleBinding", MatrixTarget.Tenant, [Admin, DeploymentAdmin], c => Msg(new SetRoleBindingRequest { Principal = "token:matrix-svc", Role = Auditor, Tenant = "tenants/dev" })),
        new(Access + "DeleteRoleBinding", MatrixTarget.Tenant, [Admin, DeploymentAdmin], async c =>
        {
            await c.Admin.Access.SetRoleBindingAsync(new SetRoleBindingRequest { Principal = "token:matrix-svc", Role = Auditor, Tenant = "tenants/dev" });
            return new DeleteRoleBindingRequest { Principal = "token:matrix-svc", Role = Auditor, Tenant = "tenants/dev" };
        }),
        new(Access + "ListRoleBindings", MatrixTarget.Tenant, [Admin, Auditor, DeploymentAdmin], c => Msg(new ListRoleBindingsRequest { Tenant = "tenants/dev" })),
        new(Access + "Bootstrap", MatrixTarget.Deployment, [], c => Msg(new BootstrapRequest { Admin = "token:matrix-intruder" })),

        // Infrastructure.
        // Audit.
        new(Audit + "ListAuditEvents", MatrixTarget.Tenant, [Auditor, SecurityOfficer], c => Msg(new ListAuditEventsRequest { Tenant = "tenants/dev", PageSize = 5 })),
        new(Audit + "GetAuditCheckpoint", MatrixTarget.Deployment, [SecurityOfficer], c => Msg(new GetAuditCheckpointRequest())),
        new(Audit + "ExportAudit", MatrixTarget.Deployment, [SecurityOfficer], c => Msg(new ExportAuditRequest())),
        new(Audit + "GetAuditSigningKey", MatrixTarget.Authenticated, [], c => Msg(new GetAuditSigningKeyRequest())),

        // Quorum.
        new(Quorum + "CreateQuorumRequest", MatrixTarget.Tenant, [KeyManager, SecurityOfficer], async c => new CreateQuorumRequestRequest
        {
            Parent = "tenants/dev",
            Operation = QuorumOperation.DestroyKeyVersionNow,
            DestroyKeyVersionNow = new DestroyKeyVersionNowParameters { Name = await FreshRotatedKeyAsync(c) + "/versions/1" },
        }, DeniedByHandler: [SecurityOfficer]),
        new(Quorum + "GetQuorumRequest", MatrixTarget.Tenant, [KeyManager, Auditor, SecurityOfficer], async c => new GetQuorumRequestRequest { Name = (await FreshQuorumRequestAsync(c)).Name }),
        new(Quorum + "ListQuorumRequests", MatrixTarget.Tenant, [KeyManager, Auditor, SecurityOfficer], c => Msg(new ListQuorumRequestsRequest { Parent = "tenants/dev" })),
        new(Quorum + "ApproveQuorumRequest", MatrixTarget.Deployment, [SecurityOfficer], async c =>
        {
            var request = await FreshQuorumRequestAsync(c);
            var signature = c.Fixture.Officers.Sign("alice", System.Text.Encoding.UTF8.GetBytes(Kms.Client.Quorum.QuorumApprover.Render(request)));
            return new ApproveQuorumRequestRequest { Name = request.Name, OfficerFingerprint = c.Fixture.Officers["alice"].Fingerprint, Signature = ByteString.CopyFrom(signature) };
        }),
        new(Quorum + "GetOfficerSet", MatrixTarget.Deployment, [SecurityOfficer], c => Msg(new GetOfficerSetRequest())),
        new(Quorum + "ExportQuorumApproval", MatrixTarget.Deployment, [SecurityOfficer], async c =>
            new ExportQuorumApprovalRequest { Name = c.WillRun ? await ApprovedRotationAsync(c) : "quorumRequests/" + new string('0', 32) }),
        new(Quorum + "DownloadBackup", MatrixTarget.Deployment, [SecurityOfficer], async c =>
            new DownloadBackupRequest { Name = c.WillRun ? await ExecutedBackupAsync(c) : "quorumRequests/" + new string('0', 32) }),

        new("grpc.health.v1.Health/Check", MatrixTarget.Public, [], c => Msg(new HealthCheckRequest())),
        new("grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo", MatrixTarget.Authenticated, [], c => Msg(new ServerReflectionRequest { ListServices = "" })),
    ];

    /// <summary>Callers: none, each tenant role in dev (same tenant) and in acme (another tenant), each deployment role.</summary>
    public static TheoryData<string> Callers => new(MatrixFixture.CallerNames);

    [Theory]
    [MemberData(nameof(Callers))]
    public async Task EveryRpc_AnswersThisCallerWithTheExactStatus(string callerName)
    {
        var failures = new List<string>();
        foreach (var row in Rows.Where(r => r.Target is not MatrixTarget.Public && !r.Method.Contains("ServerReflection", StringComparison.Ordinal)))
        {
            var expected = Expected(row, callerName);
            var request = await row.Build(new MatrixContext(expected == StatusCode.OK, fixture.Setup, fixture.Admin, fixture));
            var actual = await fixture.CallAsync(row.Method, request, fixture.TokenOf(callerName));
            if (actual.StatusCode != expected)
            {
                failures.Add($"{row.Method} as {callerName}: expected {expected}, got {actual.StatusCode} ({actual.Detail})");
            }
            else if (actual.StatusCode == StatusCode.PermissionDenied && row.Allowed.Length > 0 && !actual.Detail.Contains("permission kms.", StringComparison.Ordinal))
            {
                failures.Add($"{row.Method} as {callerName}: PERMISSION_DENIED should name the missing permission: {actual.Detail}");
            }
        }

        Assert.True(failures.Count == 0, string.Join("\n", failures));
    }

    [Theory]
    [MemberData(nameof(Callers))]
    public async Task Health_AnswersEveryone_ReflectionOnlyAuthenticatedCallers(string callerName)
    {
        var token = fixture.TokenOf(callerName);
        var headers = token is null ? null : KmsTestServer.Bearer(token);
        using var channel = fixture.Server.CreateChannel();

        var health = await new global::Grpc.Health.V1.Health.HealthClient(channel).CheckAsync(new HealthCheckRequest(), headers);
        Assert.Equal(HealthCheckResponse.Types.ServingStatus.Serving, health.Status);

        using var call = new ServerReflection.ServerReflectionClient(channel).ServerReflectionInfo(headers);
        try
        {
            await call.RequestStream.WriteAsync(new ServerReflectionRequest { ListServices = "" });
            await call.RequestStream.CompleteAsync();
            Assert.True(await call.ResponseStream.MoveNext(default));
            Assert.NotNull(token);
            Assert.Contains(call.ResponseStream.Current.ListServicesResponse.Service, s => s.Name == "kms.v1.AccessManagementService");
        }
        catch (RpcException e)
        {
            Assert.Null(token);
            Assert.Equal(StatusCode.Unauthenticated, e.StatusCode);
        }
    }

    [Fact]
    public void EveryServedMethod_HasARowAndARule()
    {
        var served = new[] { KeyManagementService.Descriptor, AccessManagementService.Descriptor, AuditService.Descriptor, QuorumService.Descriptor, global::Grpc.Health.V1.Health.Descriptor, ServerReflection.Descriptor }
            .SelectMany(s => s.Methods.Select(m => $"{s.FullName}/{m.Name}"))
            .ToHashSet();
        var rows = Rows.Select(r => r.Method).ToHashSet();
        Assert.Equal(Rows.Count, rows.Count);

        // Health.Watch and List stream the same public answer as Check; every other method has a row.
        Assert.Empty(served.Except(rows).Except(["grpc.health.v1.Health/Watch", "grpc.health.v1.Health/List"]));
        Assert.Empty(rows.Except(served));
        Assert.DoesNotContain(served, m => !AccessRules.ByMethod.ContainsKey("/" + m));
    }

    [Fact]
    public async Task MethodWithoutRule_IsRefused_DefaultDeny()
    {
        // The server maps only methods with rules; an unknown method never reaches a handler.
        var unknown = await fixture.CallAsync("kms.v1.KeyManagementService/DestroyEverything", new GetKeyRequest { Name = fixture.KeyName }, fixture.TokenOf("dev/key-manager"));
        Assert.Equal(StatusCode.Unimplemented, unknown.StatusCode);

        // Were one mapped without a rule, the interceptor refuses it before its handler runs,
        // even for a caller whose credential is valid and holds every key permission in dev.
        const string method = "/kms.v1.KeyManagementService/DestroyEverything";
        Assert.False(AccessRules.ByMethod.ContainsKey(method));
        var interceptor = fixture.Server.Services.GetRequiredService<AuthorizationInterceptor>();
        var ran = false;
        var refused = await Assert.ThrowsAsync<KmsException>(() => interceptor.UnaryServerHandler<GetKeyRequest, Key>(
            new GetKeyRequest { Name = fixture.KeyName },
            new UnroutedCallContext(method, fixture.TokenOf("dev/key-manager")!),
            (_, _) =>
            {
                ran = true;
                return Task.FromResult(new Key());
            }));
        Assert.Equal(StatusCode.PermissionDenied, ProtoMapping.StatusCodeOf(refused.Code));
        Assert.Equal($"{method} has no access rule; it is refused (default deny)", refused.Message);
        Assert.False(ran);
    }

    /// <summary>The expected status of one cell, from the row's data.</summary>
    public static StatusCode Expected(MatrixRow row, string callerName)
    {
        if (callerName == "none")
        {
            return row.Target == MatrixTarget.Public ? StatusCode.OK : StatusCode.Unauthenticated;
        }

        if (row.Target is MatrixTarget.Public or MatrixTarget.Authenticated)
        {
            return StatusCode.OK;
        }

        var (scope, role) = MatrixFixture.Split(callerName);
        var allowed = row.Allowed.Contains(role);
        return scope switch
        {
            "deployment" or "dev" => allowed && !(row.DeniedByHandler?.Contains(role) ?? false) ? StatusCode.OK : StatusCode.PermissionDenied,
            _ => row.Target switch
            {
                MatrixTarget.Tenant => StatusCode.NotFound,
                MatrixTarget.Own when allowed => row.OtherTenantAllowed,
                _ => StatusCode.PermissionDenied,
            },
        };
    }

    private static Task<IMessage> Msg(IMessage message) => Task.FromResult(message);

    private static async Task<string> FreshKeyAsync(MatrixContext c) =>
        (await c.Setup.CreateKeyAsync("tenants/dev", MatrixFixture.NewId())).Name;

    private static async Task<string> FreshRestrictedKeyAsync(MatrixContext c)
    {
        var name = await FreshKeyAsync(c);
        await c.Setup.Raw.SetKeyPolicyAsync(new SetKeyPolicyRequest { Name = name, Entries = { new KeyPolicyEntry { Principal = "token:developer", Operations = { "ENCRYPT" } } } });
        return name;
    }

    private static async Task<QuorumRequestInfo> FreshQuorumRequestAsync(MatrixContext c) =>
        await c.Setup.RequestDestroyKeyVersionNowAsync(await FreshRotatedKeyAsync(c) + "/versions/1");

    private static async Task<string> ApprovedRotationAsync(MatrixContext c)
    {
        using var officer = c.Fixture.Server.CreateClient(c.Fixture.TokenOf("deployment/security-officer"));
        var request = await officer.RequestDomainKeyRotationAsync(3, 2);
        foreach (var name in new[] { "alice", "bob" })
        {
            await c.Fixture.Officers.ApproveAsync(officer, name, request, DateTimeOffset.UtcNow);
        }

        return request.Name;
    }

    private static async Task<string> ExecutedBackupAsync(MatrixContext c)
    {
        using var officer = c.Fixture.Server.CreateClient(c.Fixture.TokenOf("deployment/security-officer"));
        var request = await officer.CreateQuorumRequestAsync(new CreateQuorumRequestRequest { Operation = QuorumOperation.ExportBackup });
        foreach (var name in new[] { "alice", "bob" })
        {
            await c.Fixture.Officers.ApproveAsync(officer, name, request, DateTimeOffset.UtcNow);
        }

        return request.Name;
    }

    private static async Task<string> FreshRotatedKeyAsync(MatrixContext c)
    {
        var name = await FreshKeyAsync(c);
        await c.Setup.Raw.RotateKeyAsync(new RotateKeyRequest { Name = name });
        return name;
    }
}

/// <summary>
/// The matrix's server: tenants dev and acme, a principal per role in each (session tokens,
/// so administrative roles count), one per deployment role, and shared resources.
/// </summary>
public sealed class MatrixFixture : IAsyncLifetime, IDisposable
{
    private readonly string _genesisPath = Path.Combine(Path.GetTempPath(), "kms-matrix-genesis-" + Guid.NewGuid().ToString("N") + ".json");

    private static readonly string[] TenantRoles = ["admin", "key-manager", "key-importer", "key-user", "auditor"];
    private static readonly string[] DeploymentRoles = ["deployment-admin", "security-officer"];
    private readonly Dictionary<string, string> _tokens = [];
    private global::Grpc.Net.Client.GrpcChannel _channel = null!;

    /// <summary>Callers by name: <c>none</c>, <c>dev/{role}</c>, <c>acme/{role}</c>, <c>deployment/{role}</c>.</summary>
    public static IEnumerable<string> CallerNames =>
        ["none", .. TenantRoles.Select(r => $"dev/{r}"), .. TenantRoles.Select(r => $"acme/{r}"), .. DeploymentRoles.Select(r => $"deployment/{r}")];

    public KmsTestServer Server { get; private set; } = null!;

    /// <summary>The officers of the quorum genesis (alice, bob, carol; 2 of 3).</summary>
    public TestOfficers Officers { get; } = new("alice", "bob", "carol");

    /// <summary>Every tenant role in dev: creates what requests need.</summary>
    public Kms.Client.KmsClient Setup { get; private set; } = null!;

    /// <summary>The deployment admin.</summary>
    public Kms.Client.KmsClient Admin { get; private set; } = null!;

    public string KeyName { get; private set; } = "";

    public string AliasName { get; private set; } = "";

    public ByteString Blob { get; private set; } = ByteString.Empty;

    public string SignKeyName { get; private set; } = "";

    public ByteString Signature { get; private set; } = ByteString.Empty;

    public string MacKeyName { get; private set; } = "";

    public ByteString Mac { get; private set; } = ByteString.Empty;

    public string DecryptKeyName { get; private set; } = "";

    public ByteString RsaCiphertext { get; private set; } = ByteString.Empty;

    public ImportJob ImportJob { get; private set; } = null!;

    public static string NewId() => "m-" + Guid.NewGuid().ToString("N")[..12];

    public static (string Scope, string Role) Split(string callerName) =>
        (callerName[..callerName.IndexOf('/', StringComparison.Ordinal)], callerName[(callerName.IndexOf('/', StringComparison.Ordinal) + 1)..]);

    public string? TokenOf(string callerName) => callerName == "none" ? null : _tokens[callerName];

    public async Task InitializeAsync()
    {
        Kms.Core.Quorum.GenesisFile.Write(_genesisPath, Kms.Core.Quorum.OfficerSet.CreateGenesis(Officers.Select("alice", "bob", "carol"), 2));
        Server = await KmsTestServer.StartAsync(null, null, "dev", $"--Kms:Quorum:GenesisFile={_genesisPath}");
        _channel = Server.CreateChannel();
        Setup = Server.CreateClient();
        Admin = Server.DeploymentAdmin();
        await Server.EnsureTenantAsync("acme");
        foreach (var caller in CallerNames.Skip(1))
        {
            var (scope, role) = Split(caller);
            _tokens[caller] = await Server.CreatePrincipalWithTokenAsync($"matrix-{scope}-{role}", scope == "deployment" ? null : scope, role);
        }

        await Admin.Access.CreatePrincipalAsync(new CreatePrincipalRequest { Name = "token:matrix-svc", Tenant = "tenants/dev" });
        KeyName = (await Setup.CreateKeyAsync("tenants/dev", "matrix")).Name;
        AliasName = (await Setup.Raw.CreateAliasAsync(new CreateAliasRequest { Parent = "tenants/dev", AliasId = "matrix", Alias = new Alias { Key = KeyName } })).Alias.Name;
        Blob = ByteString.CopyFrom((await Setup.EncryptAsync(KeyName, "matrix"u8.ToArray())).Ciphertext);
        SignKeyName = (await Setup.CreateKeyAsync("tenants/dev", "matrix-sign", KeyPurpose.SignVerify)).Name;
        Signature = (await Setup.SignAsync(SignKeyName, "matrix"u8.ToArray())).Signature;
        MacKeyName = (await Setup.CreateKeyAsync("tenants/dev", "matrix-mac", KeyPurpose.Mac)).Name;
        Mac = ByteString.CopyFrom(await Setup.GenerateMacAsync(MacKeyName, "matrix"u8.ToArray()));
        DecryptKeyName = (await Setup.CreateKeyAsync("tenants/dev", "matrix-decrypt", KeyPurpose.AsymmetricDecrypt, KeyAlgorithm.RsaDecryptOaep2048Sha1)).Name;
        using (var rsa = System.Security.Cryptography.RSA.Create())
        {
            rsa.ImportSubjectPublicKeyInfo((await Setup.GetPublicKeyAsync(DecryptKeyName)).Der.Span, out _);
            RsaCiphertext = ByteString.CopyFrom(rsa.Encrypt("matrix"u8.ToArray(), System.Security.Cryptography.RSAEncryptionPadding.OaepSHA1));
        }

        ImportJob = await Setup.CreateImportJobAsync("tenants/dev", "matrix", ImportMethod.RsaOaep3072Sha1Aes256);
    }

    /// <summary>Calls any unary method by name with a bearer token (or none), returning the status.</summary>
    public async Task<Status> CallAsync(string fullMethod, IMessage request, string? token)
    {
        var slash = fullMethod.IndexOf('/', StringComparison.Ordinal);
        var descriptor = request.Descriptor;
        var streaming = fullMethod is "kms.v1.AuditService/ExportAudit" or "kms.v1.QuorumService/DownloadBackup";
        var method = new Method<IMessage, IMessage>(
            streaming ? MethodType.ServerStreaming : MethodType.Unary,
            fullMethod[..slash],
            fullMethod[(slash + 1)..],
            Marshallers.Create<IMessage>(m => m.ToByteArray(), bytes => descriptor.Parser.ParseFrom(bytes)),
            Marshallers.Create<IMessage>(m => m.ToByteArray(), bytes => new Empty()));
        var options = new CallOptions(token is null ? null : KmsTestServer.Bearer(token));
        try
        {
            if (streaming)
            {
                using var call = _channel.CreateCallInvoker().AsyncServerStreamingCall(method, null, options, request);
                while (await call.ResponseStream.MoveNext(default))
                {
                }

                return Status.DefaultSuccess;
            }

            await _channel.CreateCallInvoker().AsyncUnaryCall(method, null, options, request);
            return Status.DefaultSuccess;
        }
        catch (RpcException e)
        {
            return e.Status;
        }
    }

    public async Task DisposeAsync()
    {
        Setup.Dispose();
        Admin.Dispose();
        _channel.Dispose();
        await Server.DisposeAsync();
        File.Delete(_genesisPath);
    }

    public void Dispose() => Officers.Dispose();
}
