using Kms.Core.Errors;

namespace Kms.Core.Quorum;

/// <summary>The operations that need a quorum of officers.</summary>
public enum QuorumOperation
{
    /// <summary>Destroy a key version's material now, skipping the 7–30 day waiting period.</summary>
    DestroyKeyVersionNow,

    /// <summary>Replace the officer set (officers and threshold); approved by the current set.</summary>
    ChangeOfficers,

    /// <summary>Export a backup: the server writes a signed snapshot once the request executes.</summary>
    ExportBackup,

    /// <summary>
    /// Restore the domain key into a token (approval only: the offline ceremony
    /// <c>kms ceremony restore-domain</c> verifies the approved request, the server executes nothing).
    /// </summary>
    RestoreDomain,

    /// <summary>
    /// Rotate the domain key (approval only: the offline ceremony <c>kms ceremony rotate-domain</c>
    /// verifies the approved request, the server executes nothing).
    /// </summary>
    RotateDomainKey,

    /// <summary>
    /// Recover deployment administration when every deployment admin's credential is lost: the
    /// executing node writes a one-time recovery credential to its bootstrap-credential file, and
    /// Bootstrap with it registers one more deployment admin although deployment admins exist.
    /// </summary>
    RecoverDeploymentAdmin,
}

/// <summary>The operations' names as the API and the canonical rendering spell them.</summary>
public static class QuorumOperations
{
    /// <summary>Every operation.</summary>
    public static IReadOnlyList<QuorumOperation> All { get; } = Enum.GetValues<QuorumOperation>();

    /// <summary>The name, e.g. <c>DESTROY_KEY_VERSION_NOW</c>.</summary>
    public static string NameOf(QuorumOperation operation) => operation switch
    {
        QuorumOperation.DestroyKeyVersionNow => "DESTROY_KEY_VERSION_NOW",
        QuorumOperation.ChangeOfficers => "CHANGE_OFFICERS",
        QuorumOperation.ExportBackup => "EXPORT_BACKUP",
        QuorumOperation.RestoreDomain => "RESTORE_DOMAIN",
        QuorumOperation.RotateDomainKey => "ROTATE_DOMAIN_KEY",
        QuorumOperation.RecoverDeploymentAdmin => "RECOVER_DEPLOYMENT_ADMIN",
        _ => throw new ArgumentOutOfRangeException(nameof(operation), operation, "unknown quorum operation"),
    };

    /// <summary>Parses a name.</summary>
    /// <exception cref="KmsException">InvalidArgument naming <paramref name="field"/>.</exception>
    public static QuorumOperation Parse(string? name, string field) =>
        All.Where(o => NameOf(o) == name).Select(o => (QuorumOperation?)o).FirstOrDefault()
        ?? throw KmsErrors.InvalidArgument(field, $"unknown quorum operation; one of {string.Join(", ", All.Select(NameOf))}");

    /// <summary>Whether the operation acts on one tenant's resources (else it is deployment-wide).</summary>
    public static bool IsTenantScoped(QuorumOperation operation) => operation == QuorumOperation.DestroyKeyVersionNow;

    /// <summary>
    /// Whether the operation is only approved by the server, never executed by it: the domain-key
    /// ceremonies run offline on the officers' host and verify the approved request there
    /// (<see cref="ApprovalBundle"/>). Such a request ends APPROVED, not EXECUTED.
    /// </summary>
    public static bool IsApprovalOnly(QuorumOperation operation) => operation is QuorumOperation.RotateDomainKey or QuorumOperation.RestoreDomain;

    /// <summary>
    /// Whether an approval without a signed time (format <see cref="QuorumRendering.FormatTag"/>,
    /// made by a kms CLI from before approvals were timed) is accepted and counted for the
    /// operation: only for DESTROY_KEY_VERSION_NOW. The one rule the server's approval, its
    /// execution and the ceremony's bundle check apply (<see cref="QuorumRequest.WithCountedApprovals"/>).
    /// </summary>
    /// <remarks>
    /// An untimed approval's only time is the server's unsigned record, so it can be kept and sent
    /// again at any time in the request's life (up to 7 days), or counted where a database writer
    /// says it was made in time. A late destruction is what the officers approved anyway; a late
    /// backup export, recovery credential, officer change, domain-key rotation or restore is not.
    /// </remarks>
    public static bool AcceptsUntimedApprovals(QuorumOperation operation) => operation == QuorumOperation.DestroyKeyVersionNow;

    /// <summary>
    /// The refusal of an approval of <paramref name="requestName"/> that carries no signed time, for an
    /// operation that does not accept one (<see cref="AcceptsUntimedApprovals"/>): FailedPrecondition.
    /// </summary>
    /// <param name="requestName">The request's resource name.</param>
    /// <param name="operation">Its operation.</param>
    /// <param name="context">What was refused, said first (e.g. "1 distinct officers … signed it in time"), or null.</param>
    public static KmsException UntimedApprovalRefused(string requestName, QuorumOperation operation, string? context = null) =>
        KmsErrors.FailedPrecondition(
            (context is null ? "" : context + ": ")
            + $"an approval of {requestName} ({NameOf(operation)}) must carry the time it was signed (sign_time, format {QuorumRendering.TimedFormatTag}): "
            + $"one without (format {QuorumRendering.FormatTag}, an older kms CLI's) can be kept and sent again at any time in the request's life, so it is accepted only for {NameOf(QuorumOperation.DestroyKeyVersionNow)}; "
            + "approve with a kms CLI or SDK that signs it");
}
