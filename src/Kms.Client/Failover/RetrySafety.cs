using System.Net.Http;
using System.Security.Authentication;
using Google.Protobuf;
using Google.Protobuf.Reflection;
using Grpc.Core;
using Kms.Core;

namespace Kms.Client.Failover;

/// <summary>
/// Which failed calls may be sent again. UNAVAILABLE is retried (and RESOURCE_EXHAUSTED with a
/// RetryInfo delay, <see cref="MayWaitOutRetryInfo"/>: any unary call, a stream only if
/// <see cref="IsRepeatable"/>): the server
/// answers it when it did nothing (HSM or database down, shedding load — "a failed request
/// changes nothing"), and the transport answers it when a connection could not be made or
/// broke (a connect timeout, which the HTTP stack reports as a cancellation, and a TLS
/// handshake that failed, which Grpc.Net.Client reports as INTERNAL, are taken as
/// UNAVAILABLE too). In the last case the server may have applied the call before the answer was lost,
/// so a call is sent again after such a failure only if repeating it is harmless:
/// <list type="bullet">
/// <item>reads and cryptographic operations (a repeat changes no state);</item>
/// <item>mutations that set a state and cannot give access back (disable, revoke, delete a binding or
/// a principal): a repeat leaves the same state, and a repeated
/// revocation of a grant or an API token, removal of a role binding, or deletion of a principal, succeeds;</item>
/// <item>an officer's approval: sent again with the same signature it counts once and is
/// answered with the request as it is now (EXECUTED if it executed it);</item>
/// <item>mutations whose request carries <c>request_id</c>: the server applies one id once
/// and replays its answer, and the client fills an empty id once per logical call (on a
/// copy: the caller's message is not changed, so sending it again is a new operation).</item>
/// </list>
/// Every other call — creations without a request id (a repeated CreateGrant would leave a
/// second grant; a repeated CreateApiToken, a live token whose secret nobody has), Bootstrap,
/// calls that can give access back (enable, bind a role, replace a policy, update a key, move a
/// primary version or an alias: a late repeat could undo another admin's restriction made in between), and any method this table does not know — is sent again only when the first attempt
/// provably never left the client (the connection or its TLS handshake failed), or when the
/// server said it did nothing: a node that is full sheds a call with UNAVAILABLE and a
/// <c>kms-shed</c> trailer before any of it runs, and refuses a unary call RESOURCE_EXHAUSTED with
/// RetryInfo before any of it runs.
/// </summary>
internal static class RetrySafety
{
    /// <summary>The request field that makes a mutation idempotent server-side.</summary>
    public const string RequestIdField = "request_id";

    /// <summary>Methods a repeat of which is harmless without a request id.</summary>
    internal static readonly HashSet<string> Repeatable =
    [
        .. Methods("kms.v1.KeyManagementService",
            "GetKey", "ListKeys", "Encrypt", "Decrypt", "GenerateDataKey", "GenerateDataKeyWithoutPlaintext",
            "GenerateRandom", "ListKeyVersions", "GetKeyVersion",
            "DisableKey", "DisableKeyVersion", "GetAlias",
            "ListAliases", "ReEncrypt", "BatchEncrypt", "BatchDecrypt", "BatchReEncrypt", "BatchGenerateDataKey", "BatchGenerateMac",
            "GetKeyPolicy", "ListGrants", "RevokeGrant", "TestPermissions",
            "Sign", "Verify", "GetPublicKey", "AsymmetricDecrypt", "GenerateMac", "VerifyMac", "GetImportJob", "GetKeyAttestation"),
        .. Methods("kms.v1.AccessManagementService",
            "GetTenant", "ListTenants", "DeleteTenant", "GetPrincipal", "ListPrincipals", "DeletePrincipal", "ListApiTokens",
            "RevokeApiToken", "DeleteRoleBinding", "ListRoleBindings"),
        .. Methods("kms.v1.AuditService",
            "ListAuditEvents", "GetAuditCheckpoint", "GetAuditSigningKey", "ExportAudit"),

        // An approval is recorded once per officer key and a request executes (or is approved)
        // once: the same approval sent again changes nothing and is answered with the request as
        // it is now, also when the first attempt executed it.
        // Exporting an approval and downloading a backup are reads.
        .. Methods("kms.v1.QuorumService", "GetQuorumRequest", "ListQuorumRequests", "GetOfficerSet", "ApproveQuorumRequest", "ExportQuorumApproval", "DownloadBackup"),
    ];

    /// <summary>Known methods that must not be repeated once they may have reached a server.</summary>
    internal static readonly HashSet<string> OnceOnly =
    [
        // A repeated CreateImportJob answers ALREADY_EXISTS for the job the first one made.
        .. Methods("kms.v1.KeyManagementService", "CreateGrant", "CreateImportJob"),
        // Calls that give access back or widen it: a repeat whose first attempt was applied and its
        // answer lost, landing after another admin's later restriction (a key disabled in an
        // incident, a policy narrowed, a lowered min_decryption_version raised again), would undo
        // that restriction, which it never saw. A repeat of a restriction (disable, revoke, delete)
        // errs the safe way and stays repeatable.
        .. Methods("kms.v1.KeyManagementService", "EnableKey", "EnableKeyVersion", "SetKeyPolicy", "UpdateKey"),
        // Moving a primary version or an alias points new encryptions somewhere: a repeat landing
        // after another admin moved it away again in an incident (off a version or key thought
        // compromised) would point them back there, undoing that move, which it never saw.
        .. Methods("kms.v1.KeyManagementService", "UpdatePrimaryVersion", "UpdateAlias"),
        // A cancel of a tenant's deletion whose answer was lost, sent again after another admin's
        // DeleteTenant of it, would make the tenant ACTIVE again: it would undo that later
        // deletion, which it never saw. (A repeated DeleteTenant after a cancel errs the safe way:
        // the tenant is offboarded again, and a cancel stops it while the waiting period runs.)
        .. Methods("kms.v1.AccessManagementService", "CreateTenant", "CreatePrincipal", "CreateApiToken", "Bootstrap", "CancelTenantDeletion", "SetRoleBinding"),
        .. Methods("kms.v1.QuorumService", "CreateQuorumRequest"),
    ];

    /// <summary>Whether a failed attempt of <paramref name="method"/> with <paramref name="request"/> may be sent again.</summary>
    public static bool MayRetry(IMethod method, object request, RpcException failure) =>
        failure.StatusCode == StatusCode.Unavailable && (IsRepeatable(method, request) || NeverSent(failure) || ShedByServer(failure));

    /// <summary>
    /// True when a server shed the call: UNAVAILABLE with the <c>kms-shed</c> trailer, answered before
    /// anything of the call ran. The node is up, only full: it is not taken out of the rotation.
    /// </summary>
    public static bool ShedByServer(RpcException failure) =>
        failure.StatusCode == StatusCode.Unavailable && failure.Trailers.Get(KmsTrailers.Shed) is not null;

    /// <summary>
    /// The server's <c>grpc-retry-pushback-ms</c>, at most <paramref name="most"/>; zero when it sent none
    /// or one that is not a non-negative number of milliseconds.
    /// </summary>
    /// <remarks>
    /// gRFC A6 reads a negative pushback as "do not retry"; here whether a call is sent again is
    /// <see cref="MayRetry"/>'s decision, so a negative or malformed value is ignored, and the SDK's own
    /// backoff applies. A number too large for any type is the cap.
    /// </remarks>
    public static TimeSpan Pushback(RpcException failure, TimeSpan most)
    {
        var value = failure.Trailers.GetValue(KmsTrailers.RetryPushback);
        if (value is null or "" || !value.All(char.IsAsciiDigit))
        {
            return TimeSpan.Zero;
        }

        return long.TryParse(value, System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out var ms) && ms < most.TotalMilliseconds
            ? TimeSpan.FromMilliseconds(ms)
            : most;
    }

    /// <summary>
    /// The delay a RESOURCE_EXHAUSTED asks for in its <c>google.rpc.RetryInfo</c> detail (the server's
    /// answer to a used-up quota or call rate, or to a client address past its failed authentications:
    /// refused before any of the call ran); null for any other failure, and for one without RetryInfo,
    /// with a rich status of another code, or with a malformed or negative delay. A delay longer than
    /// <paramref name="most"/> is returned as <see cref="TimeSpan.MaxValue"/>: more than the caller will wait.
    /// </summary>
    /// <remarks>
    /// Without RetryInfo a RESOURCE_EXHAUSTED says nothing of when to come back (a message too large, a
    /// tenant's requests in flight too many): it is not retried.
    /// </remarks>
    public static TimeSpan? RetryInfoDelay(RpcException failure, TimeSpan most)
    {
        if (failure.StatusCode != StatusCode.ResourceExhausted)
        {
            return null;
        }

        Google.Rpc.RetryInfo? retry;
        try
        {
            var status = failure.GetRpcStatus();
            if (status is null || status.Code != (int)StatusCode.ResourceExhausted)
            {
                return null;
            }

            retry = status.GetDetail<Google.Rpc.RetryInfo>();
        }
        catch (InvalidProtocolBufferException)
        {
            return null;
        }

        if (retry?.RetryDelay is not { } delay || delay.Seconds < 0 || delay.Nanos is < 0 or >= 1_000_000_000)
        {
            return null;
        }

        // Compared in seconds first: a delay of any size is read without overflow.
        if (delay.Seconds > (long)most.TotalSeconds)
        {
            return TimeSpan.MaxValue;
        }

        var asked = TimeSpan.FromSeconds(delay.Seconds) + TimeSpan.FromTicks(delay.Nanos / 100);
        return asked <= most ? asked : TimeSpan.MaxValue;
    }

    /// <summary>
    /// Whether a call refused RESOURCE_EXHAUSTED with a RetryInfo delay may be sent again once the delay
    /// is over: every unary call, a once-only one (CreateGrant, CreateApiToken, …) and one this table does
    /// not know included; a streaming call only if <see cref="IsRepeatable"/>.
    /// </summary>
    /// <remarks>
    /// A KMS node attaches RetryInfo to two refusals only, and makes both before a unary call's handler
    /// runs: the quota or call rate (the authorization interceptor, the innermost, before it hands the
    /// call on) and a client address past its failed authentications (before the credential is looked
    /// up) — so nothing of the call happened, and a server-side test fails if RetryInfo is attached
    /// anywhere else (Kms.Server.Tests RetryInfoSitesTests). A stream's caller, though, is authenticated
    /// again before every message the stream sends, after its handler began (ExportAudit has recorded
    /// its start and signed a checkpoint by then): such a refusal, even before the first message, may
    /// follow work.
    /// </remarks>
    public static bool MayWaitOutRetryInfo(IMethod method, object request) =>
        method.Type == MethodType.Unary || IsRepeatable(method, request);

    /// <summary>Whether sending the call twice is harmless (see the class remarks).</summary>
    public static bool IsRepeatable(IMethod method, object request) =>
        Repeatable.Contains(method.FullName)
        || (request is IMessage message && RequestId(message.Descriptor) is { } field && !string.IsNullOrEmpty((string)field.Accessor.GetValue(message)));

    /// <summary>
    /// The failure as UNAVAILABLE when it is one: UNAVAILABLE itself; a TLS handshake that
    /// failed (the server's certificate not trusted, expired, for another name), which
    /// Grpc.Net.Client reports as INTERNAL; or a connection attempt that timed out, which the
    /// HTTP stack reports as a cancellation nobody asked for. Null for any other failure, and
    /// whenever <paramref name="callToken"/> is cancelled.
    /// </summary>
    /// <remarks>
    /// A status the server sent carries no <see cref="Status.DebugException"/>: only failures of
    /// the client's own transport are read here, so a server's INTERNAL stays INTERNAL.
    /// </remarks>
    public static RpcException? AsUnavailable(RpcException failure, CancellationToken callToken)
    {
        if (failure.StatusCode == StatusCode.Unavailable)
        {
            return failure;
        }

        if (callToken.IsCancellationRequested)
        {
            return null;
        }

        if (TlsHandshakeFailed(failure))
        {
            return new RpcException(new Status(StatusCode.Unavailable, "TLS handshake failed: " + failure.Status.Detail, failure.Status.DebugException));
        }

        if (failure.StatusCode != StatusCode.Cancelled)
        {
            return null;
        }

        for (var e = failure.Status.DebugException; e is not null; e = e.InnerException)
        {
            if (e is TimeoutException)
            {
                var connectTimeout = new HttpRequestException(HttpRequestError.ConnectionError, e.Message, failure.Status.DebugException);
                return new RpcException(new Status(StatusCode.Unavailable, "no connection: " + e.Message, connectTimeout));
            }
        }

        return null;
    }

    /// <summary>
    /// True when the transport says the request was never sent: the connection, the name
    /// lookup or the TLS handshake failed. The HTTP stack reports these before it writes
    /// any part of the request.
    /// </summary>
    public static bool NeverSent(RpcException failure)
    {
        for (var e = failure.Status.DebugException; e is not null; e = e.InnerException)
        {
            if (e is HttpRequestException
                {
                    HttpRequestError: HttpRequestError.ConnectionError or HttpRequestError.NameResolutionError or HttpRequestError.ProxyTunnelError,
                })
            {
                return true;
            }
        }

        return TlsHandshakeFailed(failure);
    }

    /// <summary>
    /// True when the transport failed the TLS handshake: an <see cref="HttpRequestException"/>
    /// with <see cref="HttpRequestError.SecureConnectionError"/>, or an
    /// <see cref="AuthenticationException"/>, in the <see cref="Status.DebugException"/> chain.
    /// HTTP/2 sends a request only over an established TLS connection, so none was sent.
    /// </summary>
    public static bool TlsHandshakeFailed(RpcException failure)
    {
        for (var e = failure.Status.DebugException; e is not null; e = e.InnerException)
        {
            if (e is HttpRequestException { HttpRequestError: HttpRequestError.SecureConnectionError } or AuthenticationException)
            {
                return true;
            }
        }

        return false;
    }

    /// <summary>
    /// The request with a fresh request id when it has an empty <c>request_id</c> field: a
    /// copy, so the caller's message is untouched and every attempt of this call carries the
    /// same id. Other requests are returned as they are.
    /// </summary>
    public static TRequest WithRequestId<TRequest>(TRequest request)
        where TRequest : class
    {
        if (request is not IMessage message || RequestId(message.Descriptor) is not { } field
            || !string.IsNullOrEmpty((string)field.Accessor.GetValue(message))
            || request is not IDeepCloneable<TRequest> cloneable)
        {
            return request;
        }

        var copy = cloneable.Clone();
        field.Accessor.SetValue((IMessage)copy, NewRequestId());
        return copy;
    }

    /// <summary>A new request id (a UUID, as the protos recommend).</summary>
    public static string NewRequestId() => Guid.NewGuid().ToString();

    // Remembered per message type: FindFieldByName builds the field's full name on every call.
    private static readonly System.Collections.Concurrent.ConcurrentDictionary<MessageDescriptor, FieldDescriptor?> RequestIdFields = new();

    private static FieldDescriptor? RequestId(MessageDescriptor descriptor) =>
        RequestIdFields.GetOrAdd(descriptor, static d => d.FindFieldByName(RequestIdField) is { FieldType: FieldType.String, IsRepeated: false } field ? field : null);

    private static IEnumerable<string> Methods(string service, params string[] names) => names.Select(n => $"/{service}/{n}");
}
