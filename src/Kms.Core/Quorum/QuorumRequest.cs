using System.Security.Cryptography;
using Kms.Core.Errors;
using Kms.Core.Names;

namespace Kms.Core.Quorum;

/// <summary>A quorum request's id: 128 random bits, written as 32 lower-case hex digits. Single-use.</summary>
public readonly record struct QuorumRequestId
{
    private QuorumRequestId(string value) => Value = value;

    /// <summary>The 32 hex digits.</summary>
    public string Value { get; }

    /// <summary>A fresh random id.</summary>
    public static QuorumRequestId NewId() => new(Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(16)));

    /// <summary>Parses 32 lower-case hex digits.</summary>
    /// <exception cref="KmsException">InvalidArgument naming <paramref name="field"/>.</exception>
    public static QuorumRequestId Parse(string? text, string field) =>
        text is { Length: 32 } && text.All(c => char.IsAsciiDigit(c) || c is >= 'a' and <= 'f')
            ? new QuorumRequestId(text)
            : throw KmsErrors.InvalidArgument(field, "a quorum request id is 32 lower-case hex digits");

    /// <inheritdoc />
    public override string ToString() => Value;
}

/// <summary>Where a quorum request is in its life. Expiry is not a stored state: a PENDING request past its expiry is expired.</summary>
public enum QuorumRequestState
{
    /// <summary>Collecting approvals.</summary>
    Pending,

    /// <summary>Executed once, when the threshold was reached; it can never be approved or executed again.</summary>
    Executed,

    /// <summary>
    /// An approval-only request (<see cref="QuorumOperations.IsApprovalOnly"/>) that reached the
    /// threshold: terminal, like <see cref="Executed"/>, but the server did nothing — the offline
    /// ceremony verifies the exported approvals and acts. Approvals of it are refused.
    /// </summary>
    Approved,

    /// <summary>
    /// PENDING in a backup and voided when that backup was restored (<c>kms backup restore</c>,
    /// <c>kms backup reapply-destructions</c>): the approvals it collected after the backup may have
    /// executed it on the replaced database, and sent again they would execute it a second time
    /// (a second recovery credential, a second export). Terminal: approvals of it are refused; the
    /// request is made again. The restore records a <c>backup/VoidQuorumRequest</c> event with it.
    /// </summary>
    Void,
}

/// <summary>One officer's approval: the officer's key fingerprint and its signature over the request's approval statement.</summary>
/// <param name="OfficerFingerprint">The approving officer's key fingerprint.</param>
/// <param name="Signature">
/// ECDSA P-256 with SHA-256, DER-encoded, over the UTF-8 bytes of
/// <see cref="QuorumRendering.Statement"/> (with <see cref="SignTime"/>) or, for an approval
/// without a signed time, of <see cref="QuorumRendering.Render"/>.
/// </param>
/// <param name="ApproveTime">When the server accepted it (recorded by the server, not signed).</param>
public sealed record QuorumApproval(string OfficerFingerprint, byte[] Signature, DateTimeOffset ApproveTime)
{
    /// <summary>
    /// When the officer signed it, by the officer's machine (milliseconds), as the signed statement
    /// says (<c>signed:</c> line, format <see cref="QuorumRendering.TimedFormatTag"/>); null for an
    /// approval made before approvals carried a signed time (format <see cref="QuorumRendering.FormatTag"/>).
    /// </summary>
    /// <remarks>
    /// Unlike <see cref="ApproveTime"/> it cannot be edited without breaking the signature, so the
    /// chain verifier judges an approval by it: one signed at or after its request's expiry never counts.
    /// </remarks>
    public DateTimeOffset? SignTime { get; init; }

    /// <summary>The bytes the signature covers: the timed statement, or the plain rendering for an untimed approval.</summary>
    public byte[] SignedBytes(QuorumRequest request) => SignTime is { } signed ? QuorumRendering.StatementBytes(request, signed) : QuorumRendering.Bytes(request);

    /// <summary>
    /// Whether it was made in the request's life by a time that cannot be edited: it carries a
    /// signed time before the request's expiry.
    /// </summary>
    public bool SignedBefore(DateTimeOffset expiry) => SignTime is { } signed && signed < expiry;
}

/// <summary>
/// A sensitive operation waiting for M officers. Everything an officer signs is here, and
/// <see cref="QuorumRendering.Render"/> turns it into the text they read and sign.
/// </summary>
public sealed record QuorumRequest
{
    /// <summary>Most approvals a request keeps (more than any officer set can have).</summary>
    public const int MaxApprovals = OfficerSet.MaxOfficers;

    /// <summary>The single-use id.</summary>
    public required QuorumRequestId Id { get; init; }

    /// <summary>What it does.</summary>
    public required QuorumOperation Operation { get; init; }

    /// <summary>The operation's parameters, sorted by key (ordinal); keys are <c>[a-z0-9._:-]</c>.</summary>
    public required IReadOnlyList<KeyValuePair<string, string>> Parameters { get; init; }

    /// <summary>The tenant it acts in; null for a deployment-wide operation.</summary>
    public TenantId? Tenant { get; init; }

    /// <summary>The check value of the domain key it was created under.</summary>
    public required string DomainKcv { get; init; }

    /// <summary>The officer set that must approve it: its sequence number.</summary>
    public required long OfficerSetSequence { get; init; }

    /// <summary>The officer set that must approve it: its hash.</summary>
    public required string OfficerSetHash { get; init; }

    /// <summary>The principal that created it.</summary>
    public required string RequestedBy { get; init; }

    /// <summary>When it was created (milliseconds).</summary>
    public required DateTimeOffset CreateTime { get; init; }

    /// <summary>After this instant it can no longer be approved or executed.</summary>
    public required DateTimeOffset ExpireTime { get; init; }

    /// <summary>PENDING, EXECUTED, APPROVED or VOID.</summary>
    public QuorumRequestState State { get; init; }

    /// <summary>When it was executed (or, for an approval-only operation, when it reached the threshold).</summary>
    public DateTimeOffset? ExecuteTime { get; init; }

    /// <summary>The approvals accepted so far, one per officer key, in the order they arrived.</summary>
    public IReadOnlyList<QuorumApproval> Approvals { get; init; } = [];

    /// <summary>
    /// This request with only the approvals made before it expired, by the time they signed; an
    /// approval without a signed time only where <paramref name="untimedCounts"/> says so (null:
    /// never). The one rule the server's execution, the officer chain and the ceremony's bundle
    /// check count approvals by.
    /// </summary>
    public QuorumRequest WithApprovalsSignedInTime(Func<QuorumApproval, bool>? untimedCounts = null) => this with
    {
        Approvals = [.. Approvals.Where(a => a.SignedBefore(ExpireTime) || (a.SignTime is null && untimedCounts?.Invoke(a) == true))],
    };

    /// <summary>
    /// This request with only the approvals that count towards its threshold, by the rule the
    /// server's execution and the ceremony's bundle check share: signed before the expiry by their
    /// signed time; one without a signed time only for an operation that accepts it
    /// (<see cref="QuorumOperations.AcceptsUntimedApprovals"/>). An untimed approval recorded before
    /// that rule (on a request pending at the upgrade) stays recorded and shown, and counts for nothing.
    /// </summary>
    public QuorumRequest WithCountedApprovals() => WithApprovalsSignedInTime(_ => QuorumOperations.AcceptsUntimedApprovals(Operation));

    /// <summary>For <see cref="QuorumOperation.ChangeOfficers"/>: the proposed set (its hash is a parameter, so it is signed).</summary>
    public OfficerSet? ProposedOfficers { get; init; }

    /// <summary>
    /// EXECUTED: the name of the node that executed it (<c>Kms:NodeName</c>), where what the execution
    /// wrote is (a backup, a recovery credential); null for requests executed before nodes were recorded.
    /// Not signed: the server records it when it executes the request.
    /// </summary>
    public string? ExecutingNode { get; init; }

    /// <summary>
    /// RECOVER_DEPLOYMENT_ADMIN, EXECUTED: the file on <see cref="ExecutingNode"/> its one-time
    /// recovery credential is written to (the path, never the credential).
    /// </summary>
    public string? CredentialPath { get; init; }

    /// <summary>
    /// RECOVER_DEPLOYMENT_ADMIN, EXECUTED: when the executing node revoked the recovery credential
    /// because it could not write <see cref="CredentialPath"/>; a new request is then needed. Null: not revoked.
    /// </summary>
    public DateTimeOffset? CredentialRevokeTime { get; init; }

    /// <summary>The resource name: <c>tenants/{t}/quorumRequests/{id}</c>, or <c>quorumRequests/{id}</c> for a deployment-wide one.</summary>
    public string Name => NameOf(Tenant, Id);

    /// <summary>The parameter's value, or null.</summary>
    public string? Parameter(string key) => Parameters.FirstOrDefault(p => p.Key == key).Value;

    /// <summary>Whether it can no longer be approved at <paramref name="now"/>.</summary>
    public bool IsExpiredAt(DateTimeOffset now) => now >= ExpireTime;

    /// <summary>The resource name of a request.</summary>
    public static string NameOf(TenantId? tenant, QuorumRequestId id) =>
        tenant is { } t ? $"{t.ResourceName}/quorumRequests/{id}" : $"quorumRequests/{id}";

    /// <summary>Parses <c>tenants/{t}/quorumRequests/{id}</c> or <c>quorumRequests/{id}</c>.</summary>
    /// <exception cref="KmsException">InvalidArgument naming <paramref name="field"/>.</exception>
    public static (TenantId? Tenant, QuorumRequestId Id) ParseName(string? name, string field)
    {
        const string Marker = "quorumRequests/";
        if (string.IsNullOrEmpty(name))
        {
            throw KmsErrors.InvalidArgument(field, "is required (tenants/{tenant}/quorumRequests/{id} or quorumRequests/{id})");
        }

        if (name.StartsWith(Marker, StringComparison.Ordinal))
        {
            return (null, QuorumRequestId.Parse(name[Marker.Length..], field));
        }

        var at = name.IndexOf("/" + Marker, StringComparison.Ordinal);
        if (at < 0)
        {
            throw KmsErrors.InvalidArgument(field, "must have the form tenants/{tenant}/quorumRequests/{id} or quorumRequests/{id}");
        }

        return (TenantId.ParseResourceName(name[..at], field), QuorumRequestId.Parse(name[(at + 1 + Marker.Length)..], field));
    }
}
