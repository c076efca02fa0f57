using System.Globalization;
using System.Text;

namespace Kms.Core.Errors;

/// <summary>Factory for <see cref="KmsException"/>: one place decides the wording of each kind of error.</summary>
public static class KmsErrors
{
    /// <summary>The opaque message of every decryption failure, whatever the cause.</summary>
    public const string DecryptionFailedMessage = "decryption failed";

    /// <summary>A malformed request field.</summary>
    public static KmsException InvalidArgument(string field, string message) =>
        new(KmsErrorCode.InvalidArgument, $"{field}: {message}", field);

    /// <summary>A resource that does not exist (or that the caller may not see: same answer).</summary>
    public static KmsException NotFound(string resourceName) =>
        new(KmsErrorCode.NotFound, $"{Printable(resourceName)} not found");

    /// <summary>Another tenant's resource: answered exactly as <see cref="NotFound"/>, marked <see cref="KmsException.ConcealedRefusal"/>.</summary>
    public static KmsException NotFoundInAnotherTenant(string resourceName) =>
        new(KmsErrorCode.NotFound, $"{Printable(resourceName)} not found") { ConcealedRefusal = true };

    /// <summary>
    /// A key the caller named that exists but that its policy and grants let the caller do nothing
    /// with: answered exactly as <see cref="NotFound"/> of the name as the caller gave it (an alias,
    /// a key, a version — never what it resolved to), marked <see cref="KmsException.ConcealedRefusal"/>.
    /// </summary>
    public static KmsException NotFoundByKeyPolicy(string namedByCaller) =>
        new(KmsErrorCode.NotFound, $"{Printable(namedByCaller)} not found") { ConcealedRefusal = true };

    /// <summary>A resource to create that exists already.</summary>
    public static KmsException AlreadyExists(string resourceName) =>
        new(KmsErrorCode.AlreadyExists, $"{Printable(resourceName)} already exists");

    /// <summary>Longest request-supplied name an error message repeats.</summary>
    public const int MaxEchoedName = 256;

    /// <summary>
    /// A name as the caller sent it, made safe to repeat in a status message and a log line: at
    /// most <see cref="MaxEchoedName"/> characters (a request may carry megabytes), cut before a
    /// surrogate pair rather than between its halves, control characters replaced by <c>?</c>
    /// (no forged log lines), and the characters that hide or move text
    /// (<see cref="DisplayText.HidesOrMovesText(Rune)"/>: U+202E would show an operator another name)
    /// written as <c>\uXXXX</c> (<c>\UXXXXXXXX</c> beyond the BMP: the tag characters), as the CLI writes them.
    /// </summary>
    public static string Printable(string? name)
    {
        if (string.IsNullOrEmpty(name))
        {
            return name ?? "";
        }

        // Cut before a surrogate pair the limit would split: a lone high surrogate is no
        // character (a UTF-8 encoder writes U+FFFD for it, or throws).
        var cut = name.Length <= MaxEchoedName ? name
            : char.IsHighSurrogate(name[MaxEchoedName - 1]) ? name[..(MaxEchoedName - 1)]
            : name[..MaxEchoedName];
        // By code point: the format characters beyond the BMP (the invisible tag characters
        // U+E0001, U+E0020–U+E007F) are two surrogates, neither of them a format character.
        var safe = new StringBuilder(cut.Length);
        for (var i = 0; i < cut.Length;)
        {
            if (Rune.DecodeFromUtf16(cut.AsSpan(i), out var rune, out var length) != System.Buffers.OperationStatus.Done || Rune.IsControl(rune))
            {
                safe.Append('?'); // a control character, or a lone surrogate
            }
            else if (DisplayText.HidesOrMovesText(rune))
            {
                _ = rune.IsBmp ? safe.Append(CultureInfo.InvariantCulture, $"\\u{rune.Value:X4}") : safe.Append(CultureInfo.InvariantCulture, $"\\U{rune.Value:X8}");
            }
            else
            {
                safe.Append(cut, i, length);
            }

            i += length;
        }

        return name.Length > MaxEchoedName ? $"{safe}… ({name.Length} characters)" : safe.ToString();
    }

    /// <summary>A state or purpose that forbids the operation; the message names the state.</summary>
    public static KmsException FailedPrecondition(string message) =>
        new(KmsErrorCode.FailedPrecondition, message);

    /// <summary>
    /// ImportKeyVersion of material its import job already imported (into this key or another,
    /// as whatever algorithm): a job imports a material once. FAILED_PRECONDITION, as for an
    /// expired job — the job's state refuses it; nothing of the material or the wrapped key is named.
    /// </summary>
    public static KmsException MaterialAlreadyImported(string importJob) =>
        new(KmsErrorCode.FailedPrecondition, $"this key material was already imported through import job {importJob}; a job imports a material once (to import it again, wrap it for a new import job)");

    /// <summary>A tenant being offboarded: nothing new is created in it (checked by the services, and again by the store under its write lock).</summary>
    public static KmsException TenantDeleting(string tenantResourceName) =>
        new(KmsErrorCode.FailedPrecondition, $"{tenantResourceName} is being deleted; nothing new can be created in it");

    /// <summary>
    /// A call by a principal of a tenant being offboarded: refused whatever it asks (checked once,
    /// where every call is authorized). The credential is valid, so this is not the one
    /// UNAUTHENTICATED answer: it tells the tenant's own principals why, and what will not change.
    /// </summary>
    public static KmsException CallerTenantDeleting(string tenantResourceName) =>
        new(KmsErrorCode.FailedPrecondition, $"{tenantResourceName} is being deleted; its principals' calls are refused");

    /// <summary>
    /// A removal that would leave the deployment without a deployment admin (nobody could manage
    /// tenants, principals or role bindings again, short of an edit of the database).
    /// </summary>
    public static KmsException LastDeploymentAdmin(string principal) =>
        new(KmsErrorCode.FailedPrecondition,
            $"{principal} is the last principal holding deployment-admin; bind deployment-admin to another principal first, then remove it");

    /// <summary>A deleted principal named where a live one is needed (a new token, role binding or grant); checked by the services, and again by the store under its write lock.</summary>
    public static KmsException PrincipalDeleted(string principal) =>
        new(KmsErrorCode.FailedPrecondition, $"principal {Printable(principal)} was deleted; it gets no new token, role or grant");

    /// <summary>
    /// A key policy entry naming a deleted principal: a policy gains no entry for one (those it had
    /// when the principal was deleted stay until the policy is next set, which must leave them out).
    /// </summary>
    public static KmsException PrincipalDeletedInPolicy(string principal, string field) =>
        new(KmsErrorCode.FailedPrecondition, $"{field}: principal {Printable(principal)} was deleted; a key policy may not name it (leave its entry out)");

    /// <summary>CreatePrincipal of a deleted principal's name: the name stays taken, so no newcomer inherits what still names it.</summary>
    public static KmsException PrincipalNameRetired(string principal) =>
        new(KmsErrorCode.AlreadyExists,
            $"principal {Printable(principal)} already exists, deleted: a deleted principal's name is never registered again (key policies may still name it); choose another name");

    /// <summary>A key of residency <paramref name="region"/> reached a node outside the region; refused before the HSM is asked.</summary>
    public static KmsException ResidencyElsewhere(string region) =>
        new(KmsErrorCode.FailedPrecondition, $"the key's residency is {region}, and this node's HSM holds no domain key of that region; call a node in {region}")
        {
            ResidencyRegion = region,
        };

    /// <summary>The one answer for a missing, malformed, expired or revoked credential.</summary>
    public static KmsException Unauthenticated() =>
        new(KmsErrorCode.Unauthenticated, "a valid client certificate or API token is required");

    /// <summary>An authenticated caller without the permission; the message names it.</summary>
    public static KmsException PermissionDenied(string message) =>
        new(KmsErrorCode.PermissionDenied, message);

    /// <summary>The one opaque answer for a ciphertext that cannot be decrypted.</summary>
    public static KmsException DecryptionFailed() =>
        new(KmsErrorCode.DecryptionFailed, DecryptionFailedMessage);

    /// <summary>A dependency is down; retryable. <paramref name="inner"/> stays server-side.</summary>
    public static KmsException Unavailable(string message, Exception? inner = null) =>
        new(KmsErrorCode.Unavailable, message, inner: inner);

    /// <summary>
    /// The database did not answer in time, or another session held its write lock past the
    /// store's timeout (<see cref="KmsException.GaveUpWaiting"/>); retryable. <paramref name="inner"/> stays server-side.
    /// </summary>
    public static KmsException DatabaseGaveUpWaiting(Exception? inner = null) =>
        new(KmsErrorCode.Unavailable, "the database is unavailable; retry shortly", inner: inner) { GaveUpWaiting = true };

    /// <summary>
    /// An append refused because no audit event is stored and the chain's head would be a
    /// checkpoint row the audit key did not sign as a checkpoint of it (a database writer's row):
    /// no audit, no answer. The row's details go to the server log (event 1340), not to the caller.
    /// </summary>
    public static KmsException AuditHeadNotSigned() =>
        new(KmsErrorCode.Unavailable, "the audit log cannot be written (its head is not one the audit key signed; the server log says more); the request was not answered");

    /// <summary>
    /// A request string the database cannot store (PostgreSQL's SQLSTATE 22021 and 22P05: a NUL,
    /// a character the encoding lacks): the caller's input, not an outage, so not retryable. The
    /// value is not repeated; <paramref name="inner"/> stays server-side.
    /// </summary>
    public static KmsException RefusedByDatabase(Exception inner) =>
        new(KmsErrorCode.InvalidArgument, "the request holds a value the database cannot take (such as a NUL character)", inner: inner);

    /// <summary>A server-side fault. The message is for operators' logs; callers see a generic text.</summary>
    public static KmsException Internal(string message, Exception? inner = null) =>
        new(KmsErrorCode.Internal, message, inner: inner);
}
