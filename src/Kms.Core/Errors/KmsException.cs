namespace Kms.Core.Errors;

/// <summary>The one exception type the domain throws. Build it with <see cref="KmsErrors"/>.</summary>
/// <remarks>
/// The message is shown to the caller: it never carries key material, plaintext, PINs or
/// tokens, and for <see cref="KmsErrorCode.DecryptionFailed"/> it never says why.
/// </remarks>
public sealed class KmsException : Exception
{
    internal KmsException(KmsErrorCode code, string message, string? field = null, Exception? inner = null)
        : base(message, inner)
    {
        Code = code;
        Field = field;
    }

    /// <summary>The kind of failure.</summary>
    public KmsErrorCode Code { get; }

    /// <summary>For <see cref="KmsErrorCode.InvalidArgument"/>: the request field at fault (proto name), if one is.</summary>
    public string? Field { get; }

    /// <summary>
    /// Set on a FailedPrecondition refusing a key whose residency region this node is not in:
    /// the region, so a client can go to a node that is (nothing was done here).
    /// </summary>
    public string? ResidencyRegion { get; init; }

    /// <summary>
    /// Set on a NotFound that is in truth a refusal, answered exactly as a missing resource is so
    /// that existence does not leak: another tenant's resource, or a key whose policy and grants
    /// name the caller for nothing. A refusal for the security alerts (a batch item probing names).
    /// </summary>
    public bool ConcealedRefusal { get; init; }

    /// <summary>
    /// Set on an Unavailable from the store when it gave up waiting — for the write lock another
    /// session held past the store's command or busy timeout, or for the database to answer —
    /// rather than being refused at once. The audit log's group commit fails the events queued
    /// behind such a write with it, instead of having them wait as long again.
    /// </summary>
    public bool GaveUpWaiting { get; init; }
}
