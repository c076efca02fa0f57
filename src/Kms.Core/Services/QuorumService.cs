using Kms.Core.Access;
using Kms.Core.Audit;
using Kms.Core.Errors;
using Kms.Core.Names;
using Kms.Core.Ports;
using Kms.Core.Quorum;

namespace Kms.Core.Services;

/// <summary>Quorum settings: the pinned genesis and how long requests live.</summary>
public sealed record QuorumOptions
{
    /// <summary>The genesis officer set from the ceremony's genesis file; null: quorum operations are refused.</summary>
    public OfficerSet? Genesis { get; init; }

    /// <summary>Lifetime of a request when the caller names none (24 hours).</summary>
    public TimeSpan DefaultTtl { get; init; } = TimeSpan.FromHours(24);

    /// <summary>Shortest lifetime a caller may ask for (1 minute).</summary>
    public TimeSpan MinTtl { get; init; } = TimeSpan.FromMinutes(1);

    /// <summary>Longest lifetime a caller may ask for (7 days).</summary>
    public TimeSpan MaxTtl { get; init; } = TimeSpan.FromDays(7);

    /// <summary>
    /// How far an approval's signed time (the officer's clock) may be from this server's trusted
    /// time when it arrives (5 minutes by default; <c>Kms:Quorum:MaxSignTimeSkew</c>): further, and
    /// it is refused, so that a signed time says when the approval was made to within this margin.
    /// </summary>
    public TimeSpan MaxSignTimeSkew { get; init; } = TimeSpan.FromMinutes(5);

    /// <summary>
    /// This node's record of the newest officer set it has verified; null: none is kept (a chain
    /// rolled back in the database then goes unnoticed).
    /// </summary>
    public IOfficerHeadRecord? HeadRecord { get; init; }

    /// <summary>
    /// Why this deployment's store cannot export a backup (a PostgreSQL database is backed up with
    /// its own tools), or null when it can: EXPORT_BACKUP is then refused before officers sign.
    /// </summary>
    public string? BackupExportUnsupported { get; init; }

    /// <summary>
    /// This node's name (<c>Kms:NodeName</c>), recorded in each request it executes so officers
    /// learn where the execution's output is; null: not recorded.
    /// </summary>
    public string? NodeName { get; init; }

    /// <summary>
    /// The full path this node writes an executed RECOVER_DEPLOYMENT_ADMIN's credential to
    /// (<c>Kms:BootstrapTokenPath</c>), recorded in the request; null: not recorded.
    /// </summary>
    public string? CredentialPath { get; init; }
}

/// <summary>What CreateQuorumRequest asks for.</summary>
/// <param name="Tenant">The tenant a tenant-scoped operation acts in; null for a deployment-wide one.</param>
/// <param name="Operation">The operation.</param>
public sealed record CreateQuorumRequestCommand(TenantId? Tenant, QuorumOperation Operation)
{
    /// <summary>DESTROY_KEY_VERSION_NOW: the version.</summary>
    public KeyVersionName? KeyVersion { get; init; }

    /// <summary>CHANGE_OFFICERS: the new officers.</summary>
    public IReadOnlyList<Officer>? NewOfficers { get; init; }

    /// <summary>CHANGE_OFFICERS: the new threshold.</summary>
    public int NewThreshold { get; init; }

    /// <summary>ROTATE_DOMAIN_KEY: how many custodians receive a share of the new domain key (N).</summary>
    public int NewCustodians { get; init; }

    /// <summary>ROTATE_DOMAIN_KEY: how many new shares rebuild the new domain key (M).</summary>
    public int NewShareThreshold { get; init; }

    /// <summary>RESTORE_DOMAIN: the label of the token the domain key is restored into.</summary>
    public string? TokenLabel { get; init; }

    /// <summary>How long the request may collect approvals; null: the default.</summary>
    public TimeSpan? Ttl { get; init; }
}

/// <summary>An approval's outcome: the request after it, how many distinct officers' approvals verify, and whether it executed.</summary>
public sealed record QuorumApprovalResult(QuorumRequest Request, int ValidApprovals, int Threshold, bool Executed)
{
    /// <summary>
    /// RECOVER_DEPLOYMENT_ADMIN, executed by this call (not by a repeat): the one-time recovery
    /// credential, for the server to write to its bootstrap-credential file (mode 0600) and nowhere else.
    /// </summary>
    public RecoveryCredential? RecoveryCredential { get; init; }

    /// <summary>
    /// The call repeated an approval the request holds already, byte for byte: nothing was written
    /// or run by it; <see cref="Executed"/> says whether that approval executed the request.
    /// </summary>
    public bool Repeated { get; init; }
}

/// <summary>The one-time credential an executed RECOVER_DEPLOYMENT_ADMIN request issued; printed as <c>***</c>.</summary>
/// <param name="TokenId">The API token's id (not secret: audit events name it).</param>
/// <param name="Text">The credential itself (<c>kms_…</c>): shown to nobody, written to one 0600 file.</param>
public sealed record RecoveryCredential(string TokenId, string Text)
{
    /// <summary>Never the credential.</summary>
    public override string ToString() => $"RecoveryCredential({TokenId}, ***)";
}

/// <summary>
/// Quorum approvals: sensitive operations are requests that execute once M distinct officers
/// of the current officer set have signed their canonical rendering (<see cref="QuorumRendering"/>).
/// </summary>
/// <remarks>
/// The officer chain is verified back to the genesis pinned in configuration before every
/// quorum operation; a chain that does not verify, or no configured genesis, refuses them all
/// (FAILED_PRECONDITION). A request executes at most once: the approval that reaches the
/// threshold, the state change to EXECUTED, the operation and its audit event commit in one
/// transaction; if the operation fails, none of it happens.
/// </remarks>
public sealed class QuorumService(IQuorumStore store, IKeyStore keys, IHsm hsm, TimeProvider time, QuorumOptions options)
{
    /// <summary>The principal of the audit event of an execution.</summary>
    public const string ExecutorPrincipal = "system:quorum";

    /// <summary>The audit operation of <see cref="RevokeRecoveryCredentialAsync"/>.</summary>
    public const string RevokeCredentialOperation = "quorum/RevokeRecoveryCredential";

    /// <summary>The longest DER ECDSA P-256 signature (72 bytes), with room to spare.</summary>
    private const int MaxSignatureBytes = 80;

    /// <summary>Most custodian shares a domain key is split into (Shamir over GF(2^8)).</summary>
    private const int MaxCustodians = 255;

    /// <summary>A PKCS#11 token label is at most 32 bytes.</summary>
    private const int MaxTokenLabelLength = 32;

    /// <summary>
    /// At start: stores the configured genesis if the database has no officer chain yet, then
    /// verifies the chain. Returns the head, or null when no genesis is configured.
    /// </summary>
    /// <exception cref="KmsException">FailedPrecondition when the stored chain does not lead back to the configured genesis.</exception>
    public async Task<OfficerSet?> InitializeAsync(CancellationToken cancellationToken)
    {
        if (options.Genesis is not { } genesis)
        {
            return null;
        }

        await store.AddGenesisOfficerSetAsync(genesis, cancellationToken);
        return (await GetOfficerSetAsync(cancellationToken)).Set;
    }

    /// <summary>The current (verified) officer set and the chain's length.</summary>
    /// <exception cref="KmsException">FailedPrecondition: no genesis configured, or a chain that does not verify.</exception>
    public async Task<(OfficerSet Set, int ChainLength)> GetOfficerSetAsync(CancellationToken cancellationToken)
    {
        var (head, chain) = await VerifiedChainAsync(cancellationToken);
        return (head, chain.Count);
    }

    private async Task<(OfficerSet Head, IReadOnlyList<OfficerSet> Chain)> VerifiedChainAsync(CancellationToken cancellationToken)
    {
        // The record is read before the chain: a CHANGE_OFFICERS committed in between then only
        // makes the chain longer than the record, never the record newer than the chain read.
        var seen = options.HeadRecord?.Read();
        var chain = await store.ListOfficerSetsAsync(cancellationToken);
        return (VerifyChain(chain, seen), chain);
    }

    // The chain back to the pinned genesis, and no shorter than the newest set this node has seen.
    private OfficerSet VerifyChain(IReadOnlyList<OfficerSet> chain, OfficerHead? seen)
    {
        // Approvals without a signed time count only in sets this node recorded as verified
        // (before approvals were timed); the check below makes sure the chain still holds them.
        var head = OfficerChain.Verify(chain, Genesis(), seen?.Sequence ?? 0);
        if (options.HeadRecord is not { } record)
        {
            return head;
        }

        if (seen is not null)
        {
            if (seen.Sequence > head.Sequence || chain[(int)seen.Sequence].Hash != seen.Hash)
            {
                throw KmsErrors.FailedPrecondition(
                    $"quorum operations are refused: this node has verified officer set {seen.Sequence} ({seen.Hash}, recorded in {record.Location}), " +
                    $"but the database's officer chain {(seen.Sequence > head.Sequence ? $"ends at set {head.Sequence}" : "holds another set there")}: it was rolled back " +
                    "(rows deleted, or a backup from before an officer change restored), which would bring back officers the quorum removed. " +
                    "Restore the officer sets, or, if the rollback is intended, remove that file on every node (docs/quorum.md)");
            }
        }

        if (seen is null || head.Sequence > seen.Sequence)
        {
            record.Advance(new OfficerHead(head.Sequence, head.Hash));
        }

        return head;
    }

    /// <summary>Creates a request. The caller needs a permission that the operation itself would need (kms.keys.destroy for a destroy).</summary>
    /// <exception cref="KmsException">
    /// InvalidArgument (parameters), NotFound / PermissionDenied (the target), FailedPrecondition
    /// (no verified officer chain, an operation not yet supported, a target in the wrong state).
    /// </exception>
    public async Task<QuorumRequest> CreateAsync(Caller caller, CreateQuorumRequestCommand command, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(caller);
        ArgumentNullException.ThrowIfNull(command);
        var operation = QuorumOperations.NameOf(command.Operation);
        if (QuorumOperations.IsTenantScoped(command.Operation) != command.Tenant is not null)
        {
            throw KmsErrors.InvalidArgument("parent", command.Tenant is null
                ? $"{operation} acts in a tenant: parent must be tenants/{{tenant}}"
                : $"{operation} is deployment-wide: leave parent empty");
        }

        var ttl = command.Ttl ?? options.DefaultTtl;
        if (ttl < options.MinTtl || ttl > options.MaxTtl)
        {
            throw KmsErrors.InvalidArgument("ttl", $"must be from {Count(options.MinTtl.TotalMinutes, "minute")} to {Count(options.MaxTtl.TotalDays, "day")}");
        }

        var id = QuorumRequestId.NewId();
        AuditScope.SetResource(QuorumRequest.NameOf(command.Tenant, id));
        IReadOnlyList<KeyValuePair<string, string>> parameters;
        OfficerSet? proposed = null;
        var (head, _) = await GetOfficerSetAsync(cancellationToken);

        // A request's life is counted by the database's clock where there is one (PostgreSQL),
        // never from before the observed time the lifecycle recorded, and an approval is judged by
        // the later of it, the approving node's and the record (ApproveAsync): a node whose clock
        // is off can neither stretch nor shorten a request's life on PostgreSQL, nor approve it
        // after it ended by the database's clock or the record, nor (set back on SQLite) create a
        // request that is expired from the start.
        var now = await Clock.StartOfLifeAsync(time, keys, cancellationToken);

        if (command.Operation == QuorumOperation.DestroyKeyVersionNow)
        {
            var version = command.KeyVersion ?? throw KmsErrors.InvalidArgument("destroy_key_version_now.name", "is required");
            if (version.Key.Tenant != command.Tenant)
            {
                throw KmsErrors.InvalidArgument("destroy_key_version_now.name", $"must be a key version of {command.Tenant!.Value.ResourceName}");
            }

            AccessControl.Demand(caller, Permission.KeysDestroy, version.Key.Tenant, version.ToString());

            // Refused now rather than after the officers have signed: the same rule runs again at execution.
            var current = await ReadKeyAsync(version.Key, cancellationToken);
            _ = KeyTransitions.DestroyVersionNow(current, version.Version, now);
            parameters = [KeyValuePair.Create("name", version.ToString())];
        }
        else if (command.Operation == QuorumOperation.ExportBackup)
        {
            if (options.BackupExportUnsupported is { } why)
            {
                throw KmsErrors.FailedPrecondition(why);
            }

            // Nothing to choose: the backup is of the whole store, taken when the request executes.
            parameters = [];
        }
        else if (command.Operation == QuorumOperation.RecoverDeploymentAdmin)
        {
            // Nothing to name: whoever reads the executing node's credential file chooses the new
            // admin. The fixed parameters say in the rendering what the officers authorise.
            parameters = RecoveryParameters;
        }
        else if (command.Operation == QuorumOperation.RotateDomainKey)
        {
            // The old key is the one named by domain-kcv; the officers also approve the new share set's shape.
            parameters = RotationParameters(command.NewCustodians, command.NewShareThreshold);
        }
        else if (command.Operation == QuorumOperation.RestoreDomain)
        {
            parameters = [KeyValuePair.Create("token-label", TokenLabel(command.TokenLabel))];
        }
        else if (command.Operation == QuorumOperation.ChangeOfficers)
        {
            var officers = command.NewOfficers is { Count: > 0 } list ? list : throw KmsErrors.InvalidArgument("change_officers.officers", "is required");
            proposed = head.Successor(officers, command.NewThreshold, "change_officers.");
            OfficerSet.CheckNewNames(officers, head, "change_officers.");
            parameters = proposed.ChangeParameters();
        }
        else
        {
            throw KmsErrors.FailedPrecondition($"quorum operation {operation} is not supported");
        }

        var request = new QuorumRequest
        {
            Id = id,
            Operation = command.Operation,
            Parameters = parameters,
            Tenant = command.Tenant,
            DomainKcv = hsm.DomainKeyCheckValue,
            OfficerSetSequence = head.Sequence,
            OfficerSetHash = head.Hash,
            RequestedBy = caller.Principal,
            CreateTime = now,
            ExpireTime = now + ttl,
            ProposedOfficers = proposed,
        };
        await store.CreateQuorumRequestAsync(request, cancellationToken);
        return request;
    }

    /// <summary>A request by name, with its approvals.</summary>
    /// <exception cref="KmsException">InvalidArgument (name), NotFound (also for a request of another tenant than the name says).</exception>
    public async Task<QuorumRequest> GetAsync(string name, CancellationToken cancellationToken)
    {
        var (tenant, id) = QuorumRequest.ParseName(name, "name");
        var request = await store.GetQuorumRequestAsync(id, cancellationToken);
        return request is not null && request.Tenant == tenant ? request : throw KmsErrors.NotFound(name);
    }

    /// <summary>
    /// An approved request of an approval-only operation, with every approval's signature and the
    /// verified officer chain: what the offline ceremony verifies (<see cref="ApprovalBundle"/>).
    /// </summary>
    /// <exception cref="KmsException">
    /// InvalidArgument (name), NotFound, FailedPrecondition (not an approval-only operation, not
    /// approved yet, no verified officer chain).
    /// </exception>
    public async Task<ApprovalBundle> ExportApprovalAsync(string name, CancellationToken cancellationToken)
    {
        AuditScope.SetResource(name);
        var request = await GetAsync(name, cancellationToken);
        if (!QuorumOperations.IsApprovalOnly(request.Operation))
        {
            throw KmsErrors.FailedPrecondition(
                $"quorum request {name} is {QuorumOperations.NameOf(request.Operation)}, which the server executes itself; only approvals of ROTATE_DOMAIN_KEY and RESTORE_DOMAIN are exported");
        }

        if (request.State != QuorumRequestState.Approved)
        {
            throw KmsErrors.FailedPrecondition(
                $"quorum request {name} is not approved yet ({request.Approvals.Count} approvals recorded); it can be exported once M officers have approved it");
        }

        var seen = options.HeadRecord?.Read();
        var chain = await store.ListOfficerSetsAsync(cancellationToken);
        VerifyChain(chain, seen);
        return new ApprovalBundle(request, chain);
    }

    /// <summary>One page of requests, in id order: a tenant's, or (no tenant) all of them.</summary>
    public async Task<Page<QuorumRequest>> ListAsync(TenantId? tenant, int pageSize, string? pageToken, CancellationToken cancellationToken)
    {
        var size = PageToken.Size(pageSize);
        var scope = tenant?.ResourceName + "/quorumRequests";
        var rows = await store.ListQuorumRequestsAsync(tenant, PageToken.Decode(scope, pageToken), size + 1, cancellationToken);
        var page = rows.Take(size).ToList();
        return new Page<QuorumRequest>(page, rows.Count > size ? PageToken.Encode(scope, page[^1].Id.Value) : null);
    }

    /// <summary>
    /// Records an officer's approval without a signed time (over <see cref="QuorumRendering.Render"/>,
    /// as before approvals were timed; accepted only for DESTROY_KEY_VERSION_NOW,
    /// <see cref="QuorumOperations.AcceptsUntimedApprovals"/>) and, when it brings the distinct valid
    /// approvals to the threshold, executes the request in the same transaction.
    /// </summary>
    /// <exception cref="KmsException">
    /// InvalidArgument (name, fingerprint, signature), NotFound, FailedPrecondition (expired,
    /// executed already, officer set or domain key changed, no verified officer chain, the
    /// operation's own precondition at execution), PermissionDenied (an unknown officer key,
    /// a signature that does not verify), AlreadyExists (this officer approved already with another
    /// signature: it counts once).
    /// </exception>
    /// <remarks>
    /// A repeat of an approval the request holds, with the same officer key and the same signature
    /// bytes (a retry whose first answer was lost), writes nothing and answers as the first call
    /// did, with the request as it is now: still PENDING, or EXECUTED or APPROVED by it or a later
    /// approval. It is checked as a new approval would be: while the request is pending it is
    /// refused when expired or made for another officer set or domain key, and the signature must
    /// verify under the officer's key in the set the request was made for. A repeat of an approval a
    /// pending request holds without a signed time, of an operation that does not accept one
    /// (recorded before such approvals were refused), is refused as a new one is: it does not count.
    /// </remarks>
    public Task<QuorumApprovalResult> ApproveAsync(string name, string officerFingerprint, byte[] signature, CancellationToken cancellationToken) =>
        ApproveAsync(name, officerFingerprint, signature, null, cancellationToken);

    /// <summary>
    /// Records an officer's approval signed at <paramref name="signTime"/> (the officer's clock, which
    /// the signature covers: <see cref="QuorumRendering.Statement"/>), or without a signed time (null:
    /// the signature covers <see cref="QuorumRendering.Render"/>, as before approvals were timed;
    /// accepted only for DESTROY_KEY_VERSION_NOW, <see cref="QuorumOperations.AcceptsUntimedApprovals"/>).
    /// </summary>
    /// <exception cref="KmsException">
    /// As the overload without a time; also FailedPrecondition when the signed time is at or after
    /// the request's expiry, or further than <see cref="QuorumOptions.MaxSignTimeSkew"/> from the
    /// trusted time, or an approval of another operation than DESTROY_KEY_VERSION_NOW carries none
    /// (nothing is recorded).
    /// </exception>
    public async Task<QuorumApprovalResult> ApproveAsync(string name, string officerFingerprint, byte[] signature, DateTimeOffset? signTime, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(signature);
        signTime = signTime is { } given ? QuorumRendering.ToMilliseconds(given) : null;
        var (tenant, id) = QuorumRequest.ParseName(name, "name");
        if (!Officer.IsFingerprint(officerFingerprint))
        {
            throw KmsErrors.InvalidArgument("officer_fingerprint", "must be the officer key's SHA-256 fingerprint: 64 lower-case hex digits");
        }

        AuditScope.SetResource($"{name}/approvals/{officerFingerprint}");
        if (signature.Length is 0 or > MaxSignatureBytes)
        {
            throw KmsErrors.InvalidArgument("signature", "must be a DER-encoded ECDSA P-256 signature");
        }

        var (head, chain) = await VerifiedChainAsync(cancellationToken);
        var lead = await Clock.LeadAsync(time, keys, cancellationToken);
        var valid = 0;
        var threshold = head.Threshold;
        var executed = false;
        var repeated = false;
        var repeatExecuted = false;
        RecoveryCredential? credential = null;
        OfficerSet? appended = null;
        IReadOnlyList<Keys.KeyVersion> destroyed = [];
        var result = await store.UpdateQuorumRequestAsync(id, (request, storedHead) =>
        {
            // Read under the store's write lock, not before waiting for it: an approval that waited
            // past the request's expiry is refused as expired. By the later of this node's clock,
            // the database's and the observed time the lifecycle recorded (their lead measured
            // before): a node behind, or whose clock was set back, cannot approve late.
            var now = Clock.Now(time) + lead;
            if (request.Tenant != tenant)
            {
                throw KmsErrors.NotFound(name);
            }

            if (request.Approvals.FirstOrDefault(a => a.OfficerFingerprint == officerFingerprint && a.Signature.AsSpan().SequenceEqual(signature)) is { } recorded)
            {
                var set = SetOfRepeat(request, head, storedHead, chain, now);
                var pending = request.State == QuorumRequestState.Pending;
                if (pending && recorded.SignTime is null && !QuorumOperations.AcceptsUntimedApprovals(request.Operation))
                {
                    // Recorded without a signed time before such approvals were refused: it counts for nothing.
                    throw QuorumOperations.UntimedApprovalRefused(request.Name, request.Operation, $"the approval of officer {officerFingerprint} was recorded without a signed time and does not count");
                }

                // A pending request's approvals count as a new approval's would; an executed or
                // approved one's as they did when it executed (its history).
                var approvers = OfficerChain.ValidApprovers(pending ? request.WithCountedApprovals() : request, set);
                if (!approvers.Any(o => o.Fingerprint == officerFingerprint))
                {
                    throw KmsErrors.PermissionDenied($"the approval of officer {officerFingerprint} does not verify over the canonical rendering of quorum request {name} in officer set {set.Sequence}");
                }

                // After the execution no approval is added: the last one is the one that executed the request.
                (repeated, valid, threshold) = (true, approvers.Count, set.Threshold);
                repeatExecuted = request.State == QuorumRequestState.Executed && request.Approvals[^1].OfficerFingerprint == officerFingerprint;
                return new QuorumChange(request) { IsNoOp = true };
            }

            EnsureApprovable(request, head, storedHead, now);
            var officer = head.Find(officerFingerprint)
                ?? throw KmsErrors.PermissionDenied($"officer key {officerFingerprint} is not in the current officer set (sequence {head.Sequence})");
            EnsureSignTime(request, signTime, now);
            var approval = new QuorumApproval(officerFingerprint, signature, now) { SignTime = signTime };
            if (!officer.Verifies(approval.SignedBytes(request), signature))
            {
                throw KmsErrors.PermissionDenied($"the signature of officer {officer.Name} does not verify over the canonical rendering of quorum request {name}");
            }

            if (request.Approvals.FirstOrDefault(a => a.OfficerFingerprint == officerFingerprint) is { } earlier)
            {
                throw KmsErrors.AlreadyExists(earlier.SignTime is null && !QuorumOperations.AcceptsUntimedApprovals(request.Operation)
                    ? $"an approval of {name} by officer {officer.Name} ({officerFingerprint}), recorded without a signed time before {QuorumOperations.NameOf(request.Operation)} required one: it does not count, and an officer approves a request once; create a new request"
                    : $"an approval of {name} by officer {officer.Name} ({officerFingerprint}): an officer's approval counts once");
            }

            var approved = request with { Approvals = [.. request.Approvals, approval] };
            // Counted as the ceremony's bundle check and (for an officer change) the chain will count
            // them: approvals signed before the request's expiry, untimed ones only for an operation
            // that accepts them. A late or untimed approval a database writer put beside honest ones,
            // or one recorded untimed before the upgrade, does not make up the threshold.
            valid = OfficerChain.ValidApprovers(approved.WithCountedApprovals(), head).Count;
            if (valid < head.Threshold)
            {
                return new QuorumChange(approved) { AddedApproval = approval };
            }

            if (QuorumOperations.IsApprovalOnly(approved.Operation))
            {
                // Nothing runs here: the offline ceremony verifies the exported approvals (ApprovalBundle).
                var approvedOnly = approved with { State = QuorumRequestState.Approved, ExecuteTime = now };
                return new QuorumChange(approvedOnly) { AddedApproval = approval, ExecutionEvent = ExecutionEvent(approvedOnly, now) };
            }

            executed = true;

            var done = approved with { State = QuorumRequestState.Executed, ExecuteTime = now, ExecutingNode = options.NodeName };
            var change = new QuorumChange(done) { AddedApproval = approval, ExecutionEvent = ExecutionEvent(done, now) };
            return done.Operation switch
            {
                QuorumOperation.DestroyKeyVersionNow => change with
                {
                    KeyEffect = DestroyNow(done, now, versions => destroyed = versions),
                },
                QuorumOperation.ChangeOfficers => change with { AppendedOfficerSet = appended = NewOfficerSet(done, head) },

                // The snapshot is taken after this commit (Kms.Server's BackupExporter), so it holds the execution.
                QuorumOperation.ExportBackup => change,

                // The credential's hash is stored with the execution; the server writes its text to a file after the commit.
                QuorumOperation.RecoverDeploymentAdmin => Recover(change with { Request = done with { CredentialPath = options.CredentialPath } }, now, issued => credential = issued),
                _ => throw KmsErrors.FailedPrecondition($"quorum operation {QuorumOperations.NameOf(done.Operation)} is not yet supported"),
            };
        }, cancellationToken) ?? throw KmsErrors.NotFound(name);

        // As after a due destruction: the unwrapped copy goes from the HSM's session cache.
        foreach (var version in destroyed)
        {
            hsm.EvictKey(version.Id);
        }

        if (executed && appended is not null && options.HeadRecord is { } record)
        {
            // The node records the new head at once: a rollback right after is then seen too. The
            // change has committed whatever happens here: a record that cannot be written now is
            // written by the next quorum call's verification, and this answer stays "executed".
            // The set recorded is the one this execution appended, not the database's last: the
            // record vouches for its sets' approvals without a signed time (OfficerChain.Verify),
            // so a set someone else wrote after it (a trigger, a write between the commit and a
            // read) must be verified, never recorded unread.
            try
            {
                record.Advance(new OfficerHead(appended.Sequence, appended.Hash));
            }
            catch (Exception e) when (e is KmsException or IOException or UnauthorizedAccessException)
            {
            }
        }

        return new QuorumApprovalResult(result, valid, threshold, executed || repeatExecuted) { Repeated = repeated, RecoveryCredential = executed ? credential : null };
    }

    /// <summary>
    /// Revokes the recovery credential an executed RECOVER_DEPLOYMENT_ADMIN request issued, when the
    /// executing node could not write it to its file: whatever part of a file was left cannot be used,
    /// and the request records the revocation (a new request is needed). One transaction: the token's
    /// revocation, the request's <see cref="QuorumRequest.CredentialRevokeTime"/> and an audit event
    /// (principal <see cref="ExecutorPrincipal"/>, operation <see cref="RevokeCredentialOperation"/>,
    /// resource the token). Revoking it again keeps the first time.
    /// </summary>
    /// <returns>The request after the revocation.</returns>
    /// <exception cref="KmsException">NotFound if the request does not exist; FailedPrecondition if it is not an executed RECOVER_DEPLOYMENT_ADMIN request.</exception>
    public async Task<QuorumRequest> RevokeRecoveryCredentialAsync(string name, RecoveryCredential credential, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(credential);
        var (_, id) = QuorumRequest.ParseName(name, "name");
        return await store.UpdateQuorumRequestAsync(id, (request, _) =>
        {
            if (request.Operation != QuorumOperation.RecoverDeploymentAdmin || request.State != QuorumRequestState.Executed)
            {
                throw KmsErrors.FailedPrecondition($"quorum request {request.Name} is not an executed RECOVER_DEPLOYMENT_ADMIN request");
            }

            if (request.CredentialRevokeTime is not null)
            {
                return new QuorumChange(request) { IsNoOp = true };
            }

            var now = Clock.Now(time);
            return new QuorumChange(request with { CredentialRevokeTime = now })
            {
                RevokedTokenId = credential.TokenId,
                ExecutionEvent = new AuditEntry
                {
                    Time = now,
                    RequestId = request.Id.Value,
                    Principal = ExecutorPrincipal,
                    Operation = RevokeCredentialOperation,
                    Resource = $"{AccessService.AuditResourceOf(Authenticator.BootstrapPrincipal, null)}/apiTokens/{credential.TokenId}",
                    Outcome = "OK",
                },
            };
        }, cancellationToken) ?? throw KmsErrors.NotFound(name);
    }

    // The officer set a repeated approval is checked in. A pending request: the head, after the
    // checks a new approval gets (an expired request, or one made for another officer set or
    // domain key, is refused). An executed or approved one: the set it was made for, from the
    // verified chain (a CHANGE_OFFICERS it executed has moved the head on since).
    private OfficerSet SetOfRepeat(QuorumRequest request, OfficerSet head, OfficerSet? storedHead, IReadOnlyList<OfficerSet> chain, DateTimeOffset now)
    {
        if (request.State is not (QuorumRequestState.Executed or QuorumRequestState.Approved))
        {
            EnsureApprovable(request, head, storedHead, now);
            return head;
        }

        return chain.FirstOrDefault(s => s.Sequence == request.OfficerSetSequence && s.Hash == request.OfficerSetHash)
            ?? throw KmsErrors.FailedPrecondition(
                $"quorum request {request.Name} was made for officer set {request.OfficerSetSequence}, which is not in the verified officer chain");
    }

    private void EnsureApprovable(QuorumRequest request, OfficerSet head, OfficerSet? storedHead, DateTimeOffset now)
    {
        if (request.State == QuorumRequestState.Approved)
        {
            throw KmsErrors.FailedPrecondition(
                $"quorum request {request.Name} was approved at {QuorumRendering.Time(request.ExecuteTime ?? now)}; a request is approved once, so approvals of it are refused (export it with kms quorum export, or create a new request)");
        }

        if (request.State == QuorumRequestState.Executed)
        {
            throw KmsErrors.FailedPrecondition(
                $"quorum request {request.Name} was executed at {QuorumRendering.Time(request.ExecuteTime ?? now)}; a request executes once, so approvals of it are refused (create a new request)");
        }

        if (request.State == QuorumRequestState.Void)
        {
            throw KmsErrors.FailedPrecondition(
                $"quorum request {request.Name} was pending in a backup and voided when that backup was restored: approvals made after the backup may have executed it already, so approvals of it are refused (create a new request)");
        }

        if (request.IsExpiredAt(now))
        {
            throw KmsErrors.FailedPrecondition(
                $"quorum request {request.Name} expired at {QuorumRendering.Time(request.ExpireTime)} (now {QuorumRendering.Time(now)}, the latest of this node's clock, the database's and the time this deployment recorded as seen); create a new request");
        }

        if (storedHead?.Hash != head.Hash)
        {
            throw KmsErrors.FailedPrecondition("the officer set changed while this approval was checked; retry");
        }

        if (request.OfficerSetHash != head.Hash)
        {
            throw KmsErrors.FailedPrecondition(
                $"quorum request {request.Name} was made for officer set {request.OfficerSetSequence}, but the current officer set is {head.Sequence}; create a new request");
        }

        if (!string.Equals(request.DomainKcv, hsm.DomainKeyCheckValue, StringComparison.OrdinalIgnoreCase))
        {
            throw KmsErrors.FailedPrecondition(
                $"quorum request {request.Name} was made under the domain key with check value {request.DomainKcv}, not this server's {hsm.DomainKeyCheckValue}");
        }
    }

    // The signed time must say when the approval was made: near the trusted time, and before the
    // expiry. Every operation but DESTROY_KEY_VERSION_NOW requires one (QuorumOperations.AcceptsUntimedApprovals):
    // an untimed approval can be kept and sent again at any time in the request's life.
    private void EnsureSignTime(QuorumRequest request, DateTimeOffset? signTime, DateTimeOffset now)
    {
        if (signTime is not { } signed)
        {
            if (!QuorumOperations.AcceptsUntimedApprovals(request.Operation))
            {
                throw QuorumOperations.UntimedApprovalRefused(request.Name, request.Operation);
            }

            return;
        }

        if (signed >= request.ExpireTime)
        {
            throw KmsErrors.FailedPrecondition(
                $"quorum request {request.Name} expired at {QuorumRendering.Time(request.ExpireTime)}; this approval was signed at {QuorumRendering.Time(signed)}; create a new request");
        }

        if ((signed - now).Duration() > options.MaxSignTimeSkew)
        {
            throw KmsErrors.FailedPrecondition(
                $"this approval of {request.Name} was signed at {QuorumRendering.Time(signed)} by the officer's clock, but the server's time is {QuorumRendering.Time(now)}: "
                + $"more than {options.MaxSignTimeSkew.TotalMinutes.ToString("0.##", System.Globalization.CultureInfo.InvariantCulture)} minutes apart. Set the officer machine's clock right and approve again");
        }
    }

    private static QuorumKeyEffect DestroyNow(QuorumRequest request, DateTimeOffset now, Action<IReadOnlyList<Keys.KeyVersion>> destroyed)
    {
        var version = KeyVersionName.Parse(request.Parameter("name"), "name");
        return new QuorumKeyEffect(version.Key, current =>
        {
            var change = KeyTransitions.DestroyVersionNow(current, version.Version, now);
            destroyed(change.UpdatedVersions);
            return change;
        });
    }

    // The proposed set must be the one the signed parameters name: its hash is among them.
    private static OfficerSet NewOfficerSet(QuorumRequest request, OfficerSet head)
    {
        var proposed = request.ProposedOfficers
            ?? throw KmsErrors.Internal($"quorum request {request.Name} (CHANGE_OFFICERS) has no proposed officer set");
        var set = head.Successor(proposed.Officers, proposed.Threshold).WithChange(request);
        if (!request.Parameters.SequenceEqual(set.ChangeParameters()))
        {
            throw KmsErrors.Internal($"quorum request {request.Name} (CHANGE_OFFICERS): the stored proposed set is not the one its parameters name");
        }

        return set;
    }

    /// <summary>
    /// RECOVER_DEPLOYMENT_ADMIN's parameters, fixed: the officers sign what it does, in words. An
    /// execution checks that the stored request still says exactly this.
    /// </summary>
    public static readonly IReadOnlyList<KeyValuePair<string, string>> RecoveryParameters =
    [
        KeyValuePair.Create("credential", "one-time, valid 15 minutes, written to the executing node's bootstrap-credential file (Kms:BootstrapTokenPath)"),
        KeyValuePair.Create("grants", "one Bootstrap call, registering one new deployment-admin; the existing deployment admins stay"),
    ];

    // The recovery credential: a one-time token of the bootstrap principal, of its own kind, that
    // Bootstrap accepts while deployment admins exist. Its life starts at the approval's time (the
    // latest of this node's clock, the database's and the recorded observed time), and the
    // Authenticator judges its expiry by the trusted time.
    private static QuorumChange Recover(QuorumChange change, DateTimeOffset now, Action<RecoveryCredential> issued)
    {
        var request = change.Request;
        if (!request.Parameters.SequenceEqual(RecoveryParameters))
        {
            throw KmsErrors.Internal($"quorum request {request.Name} (RECOVER_DEPLOYMENT_ADMIN) does not carry the fixed parameters of its operation");
        }

        var (id, text, hash) = ApiTokenSecret.Create();
        issued(new RecoveryCredential(id, text));
        var token = new ApiToken(id, Authenticator.BootstrapPrincipal, ApiTokenKind.Recovery, hash, now, now + AccessService.RecoveryTokenLifetime);
        return change with
        {
            IssuedToken = token,
            ExecutionEvent = change.ExecutionEvent! with { Resource = $"{AccessService.AuditResourceOf(Authenticator.BootstrapPrincipal, null)}/apiTokens/{id}" },
        };
    }

    private static AuditEntry ExecutionEvent(QuorumRequest request, DateTimeOffset now) => new()
    {
        Time = now,
        RequestId = request.Id.Value,
        Principal = ExecutorPrincipal,
        Operation = "quorum/" + QuorumOperations.NameOf(request.Operation),
        Resource = request.Operation switch
        {
            QuorumOperation.DestroyKeyVersionNow => request.Parameter("name"),
            QuorumOperation.ExportBackup => "backups/" + request.Id.Value,
            QuorumOperation.RotateDomainKey or QuorumOperation.RestoreDomain or QuorumOperation.RecoverDeploymentAdmin => request.Name,
            _ => "officerSets/" + request.Parameter("new-sequence"),
        },
        Outcome = "OK",
    };

    private static IReadOnlyList<KeyValuePair<string, string>> RotationParameters(int custodians, int threshold)
    {
        if (custodians is < 2 or > MaxCustodians)
        {
            throw KmsErrors.InvalidArgument("rotate_domain_key.new_custodians", $"must be from 2 to {MaxCustodians}, got {custodians}");
        }

        if (threshold < 2 || threshold > custodians)
        {
            throw KmsErrors.InvalidArgument("rotate_domain_key.new_threshold", $"must be from 2 to new_custodians ({custodians}), got {threshold}");
        }

        return
        [
            KeyValuePair.Create("new-custodians", custodians.ToString(System.Globalization.CultureInfo.InvariantCulture)),
            KeyValuePair.Create("new-threshold", threshold.ToString(System.Globalization.CultureInfo.InvariantCulture)),
        ];
    }

    private static string TokenLabel(string? label) =>
        label is { Length: > 0 and <= MaxTokenLabelLength } && label.All(c => c is > ' ' and <= '~' or ' ') && label.Trim() == label
            ? label
            : throw KmsErrors.InvalidArgument("restore_domain.token_label", $"is required: the target token's label, 1 to {MaxTokenLabelLength} printable ASCII characters without leading or trailing spaces");

    private async Task<KeyWithVersions> ReadKeyAsync(KeyName name, CancellationToken cancellationToken)
    {
        var key = await keys.GetKeyAsync(name, cancellationToken) ?? throw KmsErrors.NotFound(name.ToString());
        return new KeyWithVersions(key, await keys.ListVersionsAsync(name, 0, int.MaxValue, cancellationToken));
    }

    private OfficerSet Genesis() => options.Genesis ?? throw KmsErrors.FailedPrecondition(
        "quorum operations are refused: no officer genesis is configured (set Kms:Quorum:GenesisFile to the genesis file the key ceremony wrote)");

    private static string Count(double value, string unit) =>
        string.Create(System.Globalization.CultureInfo.InvariantCulture, $"{value:0.##} {unit}{(value == 1 ? "" : "s")}");
}
