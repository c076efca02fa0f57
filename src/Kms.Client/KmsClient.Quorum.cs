using Google.Protobuf;
using Google.Protobuf.WellKnownTypes;
using Kms.Contracts.V1;
using Kms.Core.Files;

namespace Kms.Client;

// Quorum requests and officers' approvals (docs/quorum.md). To approve, use Quorum.QuorumApprover:
// it renders the request on this machine and signs that rendering.
public sealed partial class KmsClient
{
    /// <summary>Asks a quorum of officers to destroy a key version now (the caller needs kms.keys.destroy in its tenant).</summary>
    /// <param name="keyVersionName"><c>tenants/{tenant}/keys/{key}/versions/{n}</c>, not the primary.</param>
    /// <param name="ttl">How long officers may approve (default 24 hours; 1 minute to 7 days).</param>
    public async Task<QuorumRequestInfo> RequestDestroyKeyVersionNowAsync(string keyVersionName, TimeSpan? ttl = null, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(keyVersionName);
        var tenant = keyVersionName.Split('/') is ["tenants", var id, ..] ? $"tenants/{id}" : "";
        return await CreateQuorumRequestAsync(new CreateQuorumRequestRequest
        {
            Parent = tenant,
            Operation = QuorumOperation.DestroyKeyVersionNow,
            Ttl = ttl is { } t ? Duration.FromTimeSpan(t) : null,
            DestroyKeyVersionNow = new DestroyKeyVersionNowParameters { Name = keyVersionName },
        }, cancellationToken).ConfigureAwait(false);
    }

    /// <summary>Asks the current officers to replace themselves with <paramref name="officers"/> and <paramref name="threshold"/> (security officers).</summary>
    /// <param name="officers">Each officer's name and DER SubjectPublicKeyInfo (P-256).</param>
    /// <param name="threshold">The new M.</param>
    /// <param name="ttl">How long officers may approve (default 24 hours).</param>
    public async Task<QuorumRequestInfo> RequestOfficerChangeAsync(IEnumerable<(string Name, byte[] PublicKey)> officers, int threshold, TimeSpan? ttl = null, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(officers);
        var parameters = new ChangeOfficersParameters { Threshold = threshold };
        parameters.Officers.AddRange(officers.Select(o => new OfficerInfo { Name = o.Name, PublicKey = ByteString.CopyFrom(o.PublicKey) }));
        return await CreateQuorumRequestAsync(new CreateQuorumRequestRequest
        {
            Operation = QuorumOperation.ChangeOfficers,
            Ttl = ttl is { } t ? Duration.FromTimeSpan(t) : null,
            ChangeOfficers = parameters,
        }, cancellationToken).ConfigureAwait(false);
    }

    /// <summary>
    /// Asks the officers to approve a domain-key rotation (security officers). The server only
    /// approves it: the offline <c>kms ceremony rotate-domain</c> verifies the exported approval.
    /// </summary>
    /// <param name="newCustodians">N: custodians of the new domain key's shares.</param>
    /// <param name="newThreshold">M: new shares that rebuild it.</param>
    /// <param name="ttl">How long officers may approve, and the ceremony may use the approval (default 24 hours).</param>
    public async Task<QuorumRequestInfo> RequestDomainKeyRotationAsync(int newCustodians, int newThreshold, TimeSpan? ttl = null, CancellationToken cancellationToken = default) =>
        await CreateQuorumRequestAsync(new CreateQuorumRequestRequest
        {
            Operation = QuorumOperation.RotateDomainKey,
            Ttl = ttl is { } t ? Duration.FromTimeSpan(t) : null,
            RotateDomainKey = new RotateDomainKeyParameters { NewCustodians = newCustodians, NewThreshold = newThreshold },
        }, cancellationToken).ConfigureAwait(false);

    /// <summary>
    /// Asks the officers to approve restoring the domain key into the token labelled
    /// <paramref name="tokenLabel"/> (security officers); verified offline by <c>kms ceremony restore-domain</c>.
    /// </summary>
    public async Task<QuorumRequestInfo> RequestDomainRestoreAsync(string tokenLabel, TimeSpan? ttl = null, CancellationToken cancellationToken = default) =>
        await CreateQuorumRequestAsync(new CreateQuorumRequestRequest
        {
            Operation = QuorumOperation.RestoreDomain,
            Ttl = ttl is { } t ? Duration.FromTimeSpan(t) : null,
            RestoreDomain = new RestoreDomainParameters { TokenLabel = tokenLabel ?? throw new ArgumentNullException(nameof(tokenLabel)) },
        }, cancellationToken).ConfigureAwait(false);

    /// <summary>
    /// Asks the officers to authorise one deployment-admin recovery (security officers): once M have
    /// approved, the node that executed it writes a one-time credential (valid 15 minutes) to its
    /// bootstrap-credential file, with which <see cref="BootstrapAsync"/> registers a new deployment
    /// admin although deployment admins exist.
    /// </summary>
    public async Task<QuorumRequestInfo> RequestDeploymentAdminRecoveryAsync(TimeSpan? ttl = null, CancellationToken cancellationToken = default) =>
        await CreateQuorumRequestAsync(new CreateQuorumRequestRequest
        {
            Operation = QuorumOperation.RecoverDeploymentAdmin,
            Ttl = ttl is { } t ? Duration.FromTimeSpan(t) : null,
        }, cancellationToken).ConfigureAwait(false);

    /// <summary>An APPROVED rotation or restore request as an approval bundle (JSON) for the offline ceremony, with the request.</summary>
    public async Task<ExportQuorumApprovalResponse> ExportQuorumApprovalAsync(string name, CancellationToken cancellationToken = default) =>
        await Quorum.ExportQuorumApprovalAsync(new ExportQuorumApprovalRequest { Name = name }, Options(cancellationToken)).ConfigureAwait(false);

    /// <summary>
    /// Downloads the backup an executed EXPORT_BACKUP request wrote into a new directory
    /// <paramref name="directory"/> (<c>manifest.json</c>, <c>manifest.json.sig</c>, <c>kms.db</c>,
    /// each readable by the owner only), as <c>kms backup verify</c> and <c>restore</c> read it.
    /// Nothing is verified here beyond the snapshot's length: verify the directory against the
    /// pinned audit key before trusting it.
    /// </summary>
    /// <remarks>
    /// The files are written into a temporary directory beside <paramref name="directory"/>
    /// (mode 0700; each file 0600 from its creation and flushed to disk), which is renamed into
    /// place, and its parent synced, only once the whole snapshot is there (<see cref="DurableDirectory"/>):
    /// a failed or interrupted download leaves nothing under <paramref name="directory"/>.
    /// </remarks>
    /// <returns>The snapshot's size in bytes.</returns>
    /// <exception cref="IOException"><paramref name="directory"/> exists, or the stream ended early or ran long.</exception>
    public async Task<long> DownloadBackupAsync(string name, string directory, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(name);
        ArgumentNullException.ThrowIfNull(directory);
        if (Directory.Exists(directory) || File.Exists(directory))
        {
            throw new IOException($"{directory} exists: a backup is downloaded into a new directory");
        }

        using var call = Quorum.DownloadBackup(new DownloadBackupRequest { Name = name }, cancellationToken: cancellationToken);
        if (!await call.ResponseStream.MoveNext(cancellationToken).ConfigureAwait(false) || call.ResponseStream.Current.Manifest is not { } manifest)
        {
            throw new IOException($"the server sent no manifest for {name}");
        }

        using var staged = DurableDirectory.Create(directory, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute);
        await DurableFile.WriteAsync(Path.Combine(staged.Staging, Kms.Core.Backup.BackupManifest.ManifestFile), manifest.ManifestJson.Memory, DurableFile.OwnerOnly, overwrite: false, cancellationToken).ConfigureAwait(false);
        await DurableFile.WriteAsync(Path.Combine(staged.Staging, Kms.Core.Backup.BackupManifest.SignatureFile), manifest.ManifestSignature.Memory, DurableFile.OwnerOnly, overwrite: false, cancellationToken).ConfigureAwait(false);
        long written = 0;
        var snapshot = DurableFile.Create(Path.Combine(staged.Staging, Kms.Core.Backup.BackupManifest.SnapshotFile), DurableFile.OwnerOnly, overwrite: false);
        await using (snapshot.ConfigureAwait(false))
        {
            while (await call.ResponseStream.MoveNext(cancellationToken).ConfigureAwait(false))
            {
                var chunk = call.ResponseStream.Current.SnapshotChunk;
                written += chunk.Length;
                if (call.ResponseStream.Current.PartCase != DownloadBackupResponse.PartOneofCase.SnapshotChunk || written > manifest.SnapshotSize)
                {
                    throw new IOException($"the server sent more than the {manifest.SnapshotSize}-byte snapshot of {name}");
                }

                await snapshot.Stream.WriteAsync(chunk.Memory, cancellationToken).ConfigureAwait(false);
            }

            if (written != manifest.SnapshotSize)
            {
                throw new IOException($"the snapshot of {name} ended after {written} of {manifest.SnapshotSize} bytes");
            }

            await snapshot.CommitAsync(cancellationToken).ConfigureAwait(false);
        }

        staged.Commit();
        return written;
    }

    /// <summary>Creates a quorum request as given (any operation).</summary>
    public async Task<QuorumRequestInfo> CreateQuorumRequestAsync(CreateQuorumRequestRequest request, CancellationToken cancellationToken = default) =>
        (await Quorum.CreateQuorumRequestAsync(request, Options(cancellationToken)).ConfigureAwait(false)).Request;

    /// <summary>A quorum request's structured fields (render them with <see cref="Quorum.QuorumApprover"/>; never sign anything the server renders).</summary>
    public async Task<QuorumRequestInfo> GetQuorumRequestAsync(string name, CancellationToken cancellationToken = default) =>
        (await Quorum.GetQuorumRequestAsync(new GetQuorumRequestRequest { Name = name }, Options(cancellationToken)).ConfigureAwait(false)).Request;

    /// <summary>Quorum requests of a tenant (<c>tenants/{tenant}</c>) or, with an empty parent, all of them, page by page.</summary>
    public IAsyncEnumerable<QuorumRequestInfo> ListQuorumRequestsAsync(string parent = "", CancellationToken cancellationToken = default) =>
        PagesAsync<QuorumRequestInfo>(
            async (token, ct) =>
            {
                var page = await Quorum.ListQuorumRequestsAsync(new ListQuorumRequestsRequest { Parent = parent, PageToken = token }, Options(ct)).ConfigureAwait(false);
                return (page.Requests, page.NextPageToken);
            },
            cancellationToken);

    /// <summary>
    /// Submits an officer's signature over the request's canonical rendering, without a signed time
    /// (accepted only for DESTROY_KEY_VERSION_NOW: the server refuses it for every other operation
    /// with FailedPrecondition); the approval that reaches the threshold executes it.
    /// </summary>
    public Task<ApproveQuorumRequestResponse> ApproveQuorumRequestAsync(string name, string officerFingerprint, byte[] signature, CancellationToken cancellationToken = default) =>
        ApproveQuorumRequestAsync(name, officerFingerprint, signature, null, cancellationToken);

    /// <summary>
    /// Submits an officer's signature over the request's approval statement signed at
    /// <paramref name="signTime"/> (<see cref="Kms.Core.Quorum.QuorumRendering.Statement"/>; null: over
    /// the plain rendering); the approval that reaches the threshold executes it.
    /// <see cref="Quorum.QuorumApprover"/> signs and calls this.
    /// </summary>
    public async Task<ApproveQuorumRequestResponse> ApproveQuorumRequestAsync(string name, string officerFingerprint, byte[] signature, DateTimeOffset? signTime, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(signature);
        var request = new ApproveQuorumRequestRequest { Name = name, OfficerFingerprint = officerFingerprint, Signature = ByteString.CopyFrom(signature) };
        if (signTime is { } signed)
        {
            request.SignTime = Google.Protobuf.WellKnownTypes.Timestamp.FromDateTimeOffset(signed);
        }

        return await Quorum.ApproveQuorumRequestAsync(request, Options(cancellationToken)).ConfigureAwait(false);
    }

    /// <summary>The current officer set (verified by the server back to its configured genesis) and the chain's length.</summary>
    public async Task<GetOfficerSetResponse> GetOfficerSetAsync(CancellationToken cancellationToken = default) =>
        await Quorum.GetOfficerSetAsync(new GetOfficerSetRequest(), Options(cancellationToken)).ConfigureAwait(false);
}
