using Google.Protobuf;
using Google.Protobuf.WellKnownTypes;
using Grpc.Core;
using Kms.Contracts.V1;
using Kms.Core.Audit;
using Kms.Core.Errors;
using Kms.Core.Names;
using Kms.Core.Quorum;
using Kms.Core.Services;

namespace Kms.Server.Grpc;

/// <summary>
/// kms.v1.QuorumService: maps proto ⇄ <see cref="Kms.Core.Services.QuorumService"/>. The
/// interceptor has authorized the call; the service checks what depends on the operation
/// (a destroy needs kms.keys.destroy in the key's tenant) and every signature.
/// </summary>
internal sealed partial class QuorumGrpcService(
    Kms.Core.Services.QuorumService quorum,
    Kms.Server.Backup.BackupExporter backups,
    Kms.Core.Services.TrustedTime time,
    Microsoft.Extensions.Options.IOptions<Kms.Server.Hosting.KmsServerOptions> options,
    ListPageTokens pageTokens,
    ILogger<QuorumGrpcService> logger) : Kms.Contracts.V1.QuorumService.QuorumServiceBase
{
    public override async Task<CreateQuorumRequestResponse> CreateQuorumRequest(CreateQuorumRequestRequest request, ServerCallContext context)
    {
        var caller = CallerResolver.Current(context);
        var tenant = request.Parent.Length == 0 ? (TenantId?)null : TenantId.ParseResourceName(request.Parent, "parent");
        var operation = ToCore(request.Operation);
        RefuseOtherOperationsParameters(request);

        // Counted before each officer's key is imported (an EC import apiece), not after.
        if (request.ChangeOfficers?.Officers.Count is > OfficerSet.MaxOfficers)
        {
            throw KmsErrors.InvalidArgument("change_officers.officers", $"an officer set has 1 to {OfficerSet.MaxOfficers} officers");
        }

        var command = new CreateQuorumRequestCommand(tenant, operation)
        {
            Ttl = ProtoMapping.FromProto(request.Ttl, "ttl"),
            KeyVersion = request.DestroyKeyVersionNow is { } destroy ? KeyVersionName.Parse(destroy.Name, "destroy_key_version_now.name") : null,
            NewOfficers = request.ChangeOfficers?.Officers.Select((o, i) => Officer.Create(o.Name, o.PublicKey.Span, $"change_officers.officers[{i}]")).ToList(),
            NewThreshold = request.ChangeOfficers?.Threshold ?? 0,
            NewCustodians = request.RotateDomainKey?.NewCustodians ?? 0,
            NewShareThreshold = request.RotateDomainKey?.NewThreshold ?? 0,
            TokenLabel = request.RestoreDomain?.TokenLabel,
        };
        var created = await quorum.CreateAsync(caller, command, context.CancellationToken);
        return new CreateQuorumRequestResponse { Request = ToProto(created) };
    }

    public override async Task<GetQuorumRequestResponse> GetQuorumRequest(GetQuorumRequestRequest request, ServerCallContext context) =>
        new() { Request = ToProto(await quorum.GetAsync(request.Name, context.CancellationToken)) };

    public override async Task<ListQuorumRequestsResponse> ListQuorumRequests(ListQuorumRequestsRequest request, ServerCallContext context)
    {
        var caller = CallerResolver.Current(context);
        var tenant = request.Parent.Length == 0 ? (TenantId?)null : TenantId.ParseResourceName(request.Parent, "parent");
        string?[] filter = [tenant?.ResourceName];
        var page = await quorum.ListAsync(tenant, request.PageSize,
            pageTokens.Open("ListQuorumRequests", caller, filter, request.PageToken, "parent"), context.CancellationToken);
        var response = new ListQuorumRequestsResponse { NextPageToken = pageTokens.Seal("ListQuorumRequests", caller, filter, page.NextPageToken) };
        response.Requests.AddRange(page.Items.Select(ToProto));
        return response;
    }

    public override async Task<ApproveQuorumRequestResponse> ApproveQuorumRequest(ApproveQuorumRequestRequest request, ServerCallContext context)
    {
        var result = await quorum.ApproveAsync(request.Name, request.OfficerFingerprint, request.Signature.ToByteArray(), ProtoMapping.FromProto(request.SignTime, "sign_time"), context.CancellationToken);
        // A repeated approval (a retry whose first answer was lost) ran nothing: the call that
        // executed the request wrote its backup, or answered why it could not.
        if (result.Executed && !result.Repeated && result.Request.Operation == Kms.Core.Quorum.QuorumOperation.ExportBackup)
        {
            // The request is EXECUTED (committed above), so its backup is owed whether or not this
            // call is still open: an approver's deadline or cancel must not leave an executed
            // request without the backup M officers approved (another would need M new approvals).
            try
            {
                await backups.ExportAsync(result.Request, CancellationToken.None);
            }
            catch (KmsException e) when (e.Code == KmsErrorCode.Unavailable)
            {
                // Not UNAVAILABLE, which says none of the call ran (the SDK would send the approval
                // again, only to be told the request executed): the request has executed, and only
                // a new one can bring a backup.
                throw KmsErrors.FailedPrecondition($"{result.Request.Name} executed, but its backup could not be written ({e.Message}); create a new EXPORT_BACKUP request");
            }
        }

        if (result.RecoveryCredential is { } credential)
        {
            // Committed with the execution: only its hash is stored, and this file is the one copy.
            if (!Kms.Server.Hosting.AccessProvisioning.TryWriteRecoveryCredential(options.Value, credential, result.Request.Name, logger))
            {
                await RevokeUnwrittenAsync(result.Request, credential);
            }
        }

        return new ApproveQuorumRequestResponse
        {
            Request = ToProto(result.Request),
            ValidApprovals = result.ValidApprovals,
            Threshold = result.Threshold,
            Executed = result.Executed,
        };
    }

    // A credential whose file could not be written is revoked (audited, with the request's record of
    // it), so that whatever part of a file was left cannot be used, on this node or another. The
    // request has executed, so this is owed whether or not the approver's call is still open. The
    // answer says where, and that only a new request brings a credential.
    private async Task RevokeUnwrittenAsync(QuorumRequest executed, Kms.Core.Services.RecoveryCredential credential)
    {
        var where = $"{executed.Name} executed on node {executed.ExecutingNode}, but its recovery credential could not be written to {executed.CredentialPath}";
        try
        {
            await quorum.RevokeRecoveryCredentialAsync(executed.Name, credential, CancellationToken.None);
        }
        catch (KmsException e) when (e.Code == KmsErrorCode.FailedPrecondition)
        {
            // No longer active: a file left in place by a write that failed after its rename (a
            // directory that could not be synced) was read and used, or the token was revoked.
            // "Nothing was recovered" would not be known to be true.
            throw KmsErrors.FailedPrecondition($"{where}, and before it could be revoked it was no longer active (used by a Bootstrap, or revoked): the audit log says which (token:bootstrap/apiTokens/{credential.TokenId}); if no admin was registered with it, create a new RECOVER_DEPLOYMENT_ADMIN request");
        }
        catch (KmsException e)
        {
            var expires = Kms.Core.Quorum.QuorumRendering.Time(executed.ExecuteTime!.Value + Kms.Core.Services.AccessService.RecoveryTokenLifetime);
            LogRecoveryNotRevoked(logger, executed.Name, e.Message, expires);
            throw KmsErrors.FailedPrecondition($"{where}, nor revoked ({e.Message}): nobody holds it, and it expires unused at {expires}; create a new RECOVER_DEPLOYMENT_ADMIN request");
        }

        throw KmsErrors.FailedPrecondition($"{where}: it was revoked, so nothing was recovered; create a new RECOVER_DEPLOYMENT_ADMIN request");
    }

    [LoggerMessage(EventId = 1016, Level = LogLevel.Error,
        Message = "Quorum request {Request} (RECOVER_DEPLOYMENT_ADMIN): its recovery credential, which could not be written, could not be revoked either ({Error}); nobody holds it, and it expires unused at {ExpireTime}")]
    private static partial void LogRecoveryNotRevoked(ILogger logger, string request, string error, string expireTime);

    public override async Task<ExportQuorumApprovalResponse> ExportQuorumApproval(ExportQuorumApprovalRequest request, ServerCallContext context)
    {
        var bundle = await quorum.ExportApprovalAsync(request.Name, context.CancellationToken);
        return new ExportQuorumApprovalResponse { Request = ToProto(bundle.Request), Bundle = bundle.Serialize() };
    }

    public override async Task DownloadBackup(DownloadBackupRequest request, IServerStreamWriter<DownloadBackupResponse> responseStream, ServerCallContext context)
    {
        AuditScope.SetResource(request.Name);
        var executed = await quorum.GetAsync(request.Name, context.CancellationToken);
        var (manifest, signature, snapshot) = backups.OpenBackup(executed);
        await using (snapshot)
        {
            await responseStream.WriteAsync(new DownloadBackupResponse
            {
                Manifest = new BackupManifestFiles
                {
                    ManifestJson = ByteString.CopyFrom(manifest),
                    ManifestSignature = ByteString.CopyFrom(signature),
                    SnapshotSize = snapshot.Length,
                },
            }, context.CancellationToken);
            var buffer = new byte[64 * 1024];
            int read;
            while ((read = await snapshot.ReadAsync(buffer, context.CancellationToken)) > 0)
            {
                await responseStream.WriteAsync(new DownloadBackupResponse { SnapshotChunk = ByteString.CopyFrom(buffer, 0, read) }, context.CancellationToken);
            }
        }
    }

    public override async Task<GetOfficerSetResponse> GetOfficerSet(GetOfficerSetRequest request, ServerCallContext context)
    {
        var (set, length) = await quorum.GetOfficerSetAsync(context.CancellationToken);
        var response = new GetOfficerSetResponse
        {
            Sequence = set.Sequence,
            Hash = set.Hash,
            PreviousHash = set.PreviousHash,
            Threshold = set.Threshold,
            ChainLength = length,
        };
        response.Officers.AddRange(set.Officers.Select(ToProto));
        return response;
    }

    // Each parameters message belongs to one operation. Set with another, it would be dropped
    // without a word, and the request created (which the officers sign) would not be the one its
    // creator described: refused, naming the field.
    private static void RefuseOtherOperationsParameters(CreateQuorumRequestRequest request)
    {
        (string Field, bool Set, Kms.Contracts.V1.QuorumOperation Of)[] parameters =
        [
            ("destroy_key_version_now", request.DestroyKeyVersionNow is not null, Kms.Contracts.V1.QuorumOperation.DestroyKeyVersionNow),
            ("change_officers", request.ChangeOfficers is not null, Kms.Contracts.V1.QuorumOperation.ChangeOfficers),
            ("rotate_domain_key", request.RotateDomainKey is not null, Kms.Contracts.V1.QuorumOperation.RotateDomainKey),
            ("restore_domain", request.RestoreDomain is not null, Kms.Contracts.V1.QuorumOperation.RestoreDomain),
        ];
        foreach (var (field, set, of) in parameters)
        {
            if (set && of != request.Operation)
            {
                throw KmsErrors.InvalidArgument(field, $"holds the parameters of {QuorumOperations.NameOf(ToCore(of))}, not of {QuorumOperations.NameOf(ToCore(request.Operation))}: leave it unset");
            }
        }
    }

    private static Kms.Core.Quorum.QuorumOperation ToCore(Kms.Contracts.V1.QuorumOperation operation) => operation switch
    {
        Kms.Contracts.V1.QuorumOperation.DestroyKeyVersionNow => Kms.Core.Quorum.QuorumOperation.DestroyKeyVersionNow,
        Kms.Contracts.V1.QuorumOperation.ChangeOfficers => Kms.Core.Quorum.QuorumOperation.ChangeOfficers,
        Kms.Contracts.V1.QuorumOperation.ExportBackup => Kms.Core.Quorum.QuorumOperation.ExportBackup,
        Kms.Contracts.V1.QuorumOperation.RestoreDomain => Kms.Core.Quorum.QuorumOperation.RestoreDomain,
        Kms.Contracts.V1.QuorumOperation.RotateDomainKey => Kms.Core.Quorum.QuorumOperation.RotateDomainKey,
        Kms.Contracts.V1.QuorumOperation.RecoverDeploymentAdmin => Kms.Core.Quorum.QuorumOperation.RecoverDeploymentAdmin,
        _ => throw KmsErrors.InvalidArgument("operation", "is required: one of the QUORUM_OPERATION_* values"),
    };

    private static Kms.Contracts.V1.QuorumOperation ToProto(Kms.Core.Quorum.QuorumOperation operation) => operation switch
    {
        Kms.Core.Quorum.QuorumOperation.DestroyKeyVersionNow => Kms.Contracts.V1.QuorumOperation.DestroyKeyVersionNow,
        Kms.Core.Quorum.QuorumOperation.ChangeOfficers => Kms.Contracts.V1.QuorumOperation.ChangeOfficers,
        Kms.Core.Quorum.QuorumOperation.ExportBackup => Kms.Contracts.V1.QuorumOperation.ExportBackup,
        Kms.Core.Quorum.QuorumOperation.RestoreDomain => Kms.Contracts.V1.QuorumOperation.RestoreDomain,
        Kms.Core.Quorum.QuorumOperation.RotateDomainKey => Kms.Contracts.V1.QuorumOperation.RotateDomainKey,
        Kms.Core.Quorum.QuorumOperation.RecoverDeploymentAdmin => Kms.Contracts.V1.QuorumOperation.RecoverDeploymentAdmin,
        _ => Kms.Contracts.V1.QuorumOperation.Unspecified,
    };

    private QuorumRequestInfo ToProto(QuorumRequest request)
    {
        var info = new QuorumRequestInfo
        {
            Name = request.Name,
            Id = request.Id.Value,
            Operation = ToProto(request.Operation),
            Tenant = request.Tenant?.Value ?? "",
            DomainKcv = request.DomainKcv,
            OfficerSetSequence = request.OfficerSetSequence,
            OfficerSetHash = request.OfficerSetHash,
            RequestedBy = request.RequestedBy,
            CreateTime = Timestamp.FromDateTimeOffset(request.CreateTime),
            ExpireTime = Timestamp.FromDateTimeOffset(request.ExpireTime),
            // EXPIRED by the trusted time, as an approval is refused: a clock set back shows no expired request PENDING.
            State = request.State == Kms.Core.Quorum.QuorumRequestState.Executed ? Kms.Contracts.V1.QuorumRequestState.Executed
                : request.State == Kms.Core.Quorum.QuorumRequestState.Approved ? Kms.Contracts.V1.QuorumRequestState.Approved
                : request.State == Kms.Core.Quorum.QuorumRequestState.Void ? Kms.Contracts.V1.QuorumRequestState.Void
                : request.IsExpiredAt(time.GetUtcNow()) ? Kms.Contracts.V1.QuorumRequestState.Expired
                : Kms.Contracts.V1.QuorumRequestState.Pending,
            ExecuteTime = ProtoMapping.ToTimestamp(request.ExecuteTime),
            ExecutingNode = request.ExecutingNode ?? "",
            CredentialPath = request.CredentialPath ?? "",
            CredentialRevokeTime = ProtoMapping.ToTimestamp(request.CredentialRevokeTime),
        };
        info.Parameters.AddRange(request.Parameters.Select(p => new QuorumParameter { Key = p.Key, Value = p.Value }));
        info.Approvals.AddRange(request.Approvals.Select(a => new QuorumApprovalInfo
        {
            OfficerFingerprint = a.OfficerFingerprint,
            ApproveTime = Timestamp.FromDateTimeOffset(a.ApproveTime),
            SignTime = ProtoMapping.ToTimestamp(a.SignTime),
        }));
        return info;
    }

    private static OfficerInfo ToProto(Officer officer) => new()
    {
        Name = officer.Name,
        PublicKey = ByteString.CopyFrom(officer.PublicKey),
        Fingerprint = officer.Fingerprint,
    };
}
