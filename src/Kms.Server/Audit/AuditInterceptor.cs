using System.Collections;
using System.Text.RegularExpressions;
using Google.Protobuf;
using Grpc.Core;
using Grpc.Core.Interceptors;
using Kms.Core.Audit;
using Kms.Core.Errors;
using Kms.Core.Services;
using Kms.Server.Grpc;
using Kms.Server.Security;

namespace Kms.Server.Audit;

/// <summary>
/// Every call except health leaves one audit event, durable before the caller gets its
/// answer. A call that changes state commits its event with its first write (one
/// transaction, <see cref="AuditScope"/>); every other call — reads, crypto, failures — is
/// group-committed by <see cref="AuditLog"/> before the answer is released. Refusals by the
/// <see cref="AuthorizationInterceptor"/> are aggregated per principal, operation and
/// outcome. If the event cannot be written the answer is UNAVAILABLE, whatever the handler
/// did: no audit, no answer. One answer does not wait for its event: UNAVAILABLE after the
/// store gave up waiting for the call (<see cref="AuditScope.StoreTimedOut"/>), whose event is
/// queued instead — it would wait as long again for the same lock.
/// </summary>
internal sealed partial class AuditInterceptor(AuditLog audit, SecurityAlerts alerts, TimeProvider time, ILogger<AuditInterceptor> logger) : Interceptor
{
    /// <summary>Set in <see cref="ServerCallContext.UserState"/> by the authorization interceptor when it refuses a call.</summary>
    public const string RefusedKey = "kms.refused";

    /// <summary>
    /// Set in <see cref="ServerCallContext.UserState"/> by the error mapping when a handler answered a
    /// refusal exactly as a missing resource (<see cref="KmsException.ConcealedRefusal"/>): audited as
    /// that answer (not aggregated), counted as a refusal by the alerts.
    /// </summary>
    public const string ConcealedRefusalKey = "kms.concealed-refusal";

    /// <summary>Set in <see cref="ServerCallContext.UserState"/> by BatchDecrypt and BatchReEncrypt: how many items failed to decrypt (an int).</summary>
    public const string ItemDecryptFailuresKey = "kms.item-decrypt-failures";

    /// <summary>Set in <see cref="ServerCallContext.UserState"/> by the batch calls: how many items were refused PERMISSION_DENIED (an int).</summary>
    public const string ItemRefusalsKey = "kms.item-refusals";

    /// <summary>Set in <see cref="ServerCallContext.UserState"/> by the batch calls: how many items the request carried (an int), for the volume alert.</summary>
    public const string BatchItemsKey = "kms.batch-items";

    private const string RequestIdHeader = "x-request-id";

    public override async Task<TResponse> UnaryServerHandler<TRequest, TResponse>(TRequest request, ServerCallContext context, UnaryServerMethod<TRequest, TResponse> continuation)
    {
        if (!Audited(context, out var rule))
        {
            return await continuation(request, context);
        }

        var scope = Begin(context, rule, request);
        TResponse response;

        // The request id is on every log event of the call, the success path's alert (1401) and
        // audit (13xx) events too, which are written after the handler's scope has closed.
        using var requestId = Serilog.Context.LogContext.PushProperty("RequestId", scope.Entry.RequestId);
        using (AuditScope.Enter(scope))
        {
            try
            {
                response = await continuation(request, context);
            }
            catch (RpcException e)
            {
                await RecordAsync(context, scope, e.StatusCode);
                throw;
            }
        }

        await RecordAsync(context, scope, StatusCode.OK);
        return response;
    }

    public override async Task ServerStreamingServerHandler<TRequest, TResponse>(TRequest request, IServerStreamWriter<TResponse> responseStream, ServerCallContext context, ServerStreamingServerMethod<TRequest, TResponse> continuation)
    {
        if (!Audited(context, out var rule))
        {
            await continuation(request, responseStream, context);
            return;
        }

        await StreamAsync(context, Begin(context, rule, request), () => continuation(request, responseStream, context));
    }

    public override async Task<TResponse> ClientStreamingServerHandler<TRequest, TResponse>(IAsyncStreamReader<TRequest> requestStream, ServerCallContext context, ClientStreamingServerMethod<TRequest, TResponse> continuation)
    {
        if (!Audited(context, out var rule))
        {
            return await continuation(requestStream, context);
        }

        TResponse response = default!;
        await StreamAsync(context, Begin(context, rule, null), async () => response = await continuation(requestStream, context));
        return response;
    }

    public override async Task DuplexStreamingServerHandler<TRequest, TResponse>(IAsyncStreamReader<TRequest> requestStream, IServerStreamWriter<TResponse> responseStream, ServerCallContext context, DuplexStreamingServerMethod<TRequest, TResponse> continuation)
    {
        if (!Audited(context, out var rule))
        {
            await continuation(requestStream, responseStream, context);
            return;
        }

        await StreamAsync(context, Begin(context, rule, null), () => continuation(requestStream, responseStream, context));
    }

    // Health is not audited: probes every few seconds would drown the log, and it reveals nothing.
    private static bool Audited(ServerCallContext context, out AccessRule? rule) =>
        !AccessRules.ByMethod.TryGetValue(context.Method, out rule) || rule.Scope != CallScope.Public;

    private async Task StreamAsync(ServerCallContext context, AuditScope scope, Func<Task> call)
    {
        using var requestId = Serilog.Context.LogContext.PushProperty("RequestId", scope.Entry.RequestId);
        using (AuditScope.Enter(scope))
        {
            try
            {
                await call();
            }
            catch (RpcException e)
            {
                await RecordAsync(context, scope, e.StatusCode);
                throw;
            }
            catch (KmsException e)
            {
                await RecordAsync(context, scope, ProtoMapping.StatusCodeOf(e.Code));
                throw;
            }
            catch (Exception)
            {
                // A stream the client abandoned, or a fault: still one event.
                await RecordAsync(context, scope, context.CancellationToken.IsCancellationRequested ? StatusCode.Cancelled : StatusCode.Internal);
                throw;
            }
        }

        await RecordAsync(context, scope, StatusCode.OK);
    }

    private AuditScope Begin(ServerCallContext context, AccessRule? rule, object? request)
    {
        var requestId = RequestId(context);
        context.ResponseTrailers.Add(RequestIdHeader, requestId);
        var entry = new AuditEntry
        {
            Time = DateTimeOffset.FromUnixTimeMilliseconds(time.GetUtcNow().ToUnixTimeMilliseconds()),
            RequestId = requestId,
            Principal = "anonymous",
            Operation = context.Method,
            Resource = AuditText.FromRequest(rule is null ? null : AccessRules.ResourceOf(rule, request)),
            Outcome = "UNKNOWN",
            Client = context.Peer,
            Context = ContextHashes(request),
        };
        return new AuditScope(entry, rule is not null && AccessRules.IsMutating(rule));
    }

    private async Task RecordAsync(ServerCallContext context, AuditScope scope, StatusCode status)
    {
        var caller = context.UserState.TryGetValue(AuthorizationInterceptor.CallerKey, out var value) ? value as Caller : null;
        var entry = scope.Entry with
        {
            Principal = caller?.Principal ?? "anonymous",
            Tenant = caller?.HomeTenant?.Value,
            Outcome = OutcomeOf(status),
        };
        var refused = AggregatedAsRefusal(context.UserState.ContainsKey(RefusedKey), caller, status);
        alerts.Observe(entry, refused || context.UserState.ContainsKey(ConcealedRefusalKey),
            context.UserState.TryGetValue(ItemDecryptFailuresKey, out var failures) && failures is int count ? count : 0,
            context.UserState.TryGetValue(ItemRefusalsKey, out var itemRefusals) && itemRefusals is int refusals ? refusals : 0,
            context.UserState.TryGetValue(BatchItemsKey, out var batchItems) && batchItems is int items ? items : 0);
        if (status == StatusCode.OK && scope.Written)
        {
            return;
        }

        if (status == StatusCode.Unavailable && scope.StoreTimedOut)
        {
            // The store gave up waiting for this call — for the write lock another session holds, or
            // for the database — after its command (busy) timeout. Its event would wait as long again
            // for the same lock, and the call would answer after two timeouts (past a client's
            // deadline of 30 s with PostgreSQL's 15 s: DEADLINE_EXCEEDED, not a retryable UNAVAILABLE).
            // The answer is already a refusal that released and changed nothing, so the event is
            // queued, written with the next group commit that gets the lock, and not waited for;
            // if that commit fails too, the answer was UNAVAILABLE all the same.
            NotWaitedFor(refused ? audit.RefusedAsync(entry, CancellationToken.None) : audit.AppendAsync(entry, CancellationToken.None), entry);
            return;
        }

        try
        {
            if (refused)
            {
                await audit.RefusedAsync(entry, CancellationToken.None);
            }
            else
            {
                await audit.AppendAsync(entry, CancellationToken.None);
            }
        }
        catch (KmsException e) when (e.Code == KmsErrorCode.Unavailable)
        {
            LogAuditUnavailable(logger, context.Method, e.InnerException?.GetType().Name ?? e.GetType().Name);
            throw new RpcException(new global::Grpc.Core.Status(StatusCode.Unavailable, "the audit log cannot be written, so the request is not answered; retry shortly"));
        }
    }

    // The event's commit may still fail (the group commit's own UNAVAILABLE, the server stopping):
    // not thrown, but logged, naming the call — the one trace left of a call the chain lacks.
    private void NotWaitedFor(Task append, AuditEntry entry) =>
        append.ContinueWith(
            t => LogQueuedEventLost(logger, entry.Operation, entry.RequestId, entry.Principal, t.Exception?.InnerException?.GetType().Name ?? "unknown"),
            CancellationToken.None,
            TaskContinuationOptions.OnlyOnFaulted | TaskContinuationOptions.ExecuteSynchronously,
            TaskScheduler.Default);

    /// <summary>
    /// Whether a call's event goes through the refusal windows: a refusal, and a call that ended
    /// before anyone was authenticated (a client that cancels while its unknown token is looked
    /// up) — otherwise each such call would be one durable event, and anonymous callers could
    /// fill the disk after all.
    /// </summary>
    internal static bool AggregatedAsRefusal(bool refusedByAuthorization, Caller? caller, StatusCode status) =>
        refusedByAuthorization || (caller is null && status != StatusCode.OK);

    // The caller's request id when it is a sane token (it is echoed into the log), else ours.
    private static string RequestId(ServerCallContext context)
    {
        // Straight from the request's headers: ServerCallContext.RequestHeaders would copy them all.
        var headers = context.GetHttpContext().Request.Headers[RequestIdHeader];
        var given = headers.Count == 1 ? headers[0] : null;
        return given is { Length: > 0 and <= 64 } && RequestIdPattern().IsMatch(given) ? given : CallIds.New();
    }

    // Context keys with a keyed hash of each value; the values themselves never reach the log.
    private List<KeyValuePair<string, string>> ContextHashes(object? request)
    {
        if (request is not IMessage message
            || ContextFields.GetOrAdd(message.Descriptor, static d => d.FindFieldByName("encryption_context") is { IsMap: true } f ? f : null) is not { } field
            || field.Accessor.GetValue(message) is not IDictionary map
            || map.Count == 0)
        {
            return [];
        }

        // Bounded: a caller (even an unauthenticated one) must not be able to write megabytes per event.
        var hashes = new List<KeyValuePair<string, string>>(Math.Min(map.Count, MaxContextKeys));
        foreach (DictionaryEntry pair in map)
        {
            if (hashes.Count == MaxContextKeys)
            {
                hashes.Add(KeyValuePair.Create("…", $"{map.Count - MaxContextKeys} more keys"));
                break;
            }

            hashes.Add(KeyValuePair.Create(AuditText.FromRequest((string)pair.Key)!, audit.HashContextValue((string)pair.Value!)));
        }

        return hashes;
    }

    // Remembered per message type: FindFieldByName builds the field's full name on every call.
    private static readonly System.Collections.Concurrent.ConcurrentDictionary<Google.Protobuf.Reflection.MessageDescriptor, Google.Protobuf.Reflection.FieldDescriptor?> ContextFields = new();

    private const int MaxContextKeys = 32;

    private static string OutcomeOf(StatusCode status) => status switch
    {
        StatusCode.OK => "OK",
        StatusCode.Cancelled => "CANCELLED",
        StatusCode.InvalidArgument => "INVALID_ARGUMENT",
        StatusCode.DeadlineExceeded => "DEADLINE_EXCEEDED",
        StatusCode.NotFound => "NOT_FOUND",
        StatusCode.AlreadyExists => "ALREADY_EXISTS",
        StatusCode.PermissionDenied => "PERMISSION_DENIED",
        StatusCode.ResourceExhausted => "RESOURCE_EXHAUSTED",
        StatusCode.FailedPrecondition => "FAILED_PRECONDITION",
        StatusCode.Aborted => "ABORTED",
        StatusCode.OutOfRange => "OUT_OF_RANGE",
        StatusCode.Unimplemented => "UNIMPLEMENTED",
        StatusCode.Internal => "INTERNAL",
        StatusCode.Unavailable => "UNAVAILABLE",
        StatusCode.DataLoss => "DATA_LOSS",
        StatusCode.Unauthenticated => "UNAUTHENTICATED",
        _ => "UNKNOWN",
    };

    [GeneratedRegex("^[A-Za-z0-9._:-]+$")]
    private static partial Regex RequestIdPattern();

    [LoggerMessage(EventId = 1310, Level = LogLevel.Error, Message = "{Method}: the audit event of request {AuditRequestId} by {Principal}, answered UNAVAILABLE after a database timeout without waiting for it, could not be written either ({Reason}); the call is not in the audit log")]
    private static partial void LogQueuedEventLost(ILogger logger, string method, string auditRequestId, string principal, string reason);

    [LoggerMessage(EventId = 1301, Level = LogLevel.Error, Message = "{Method}: the audit event could not be written ({Reason}); answered UNAVAILABLE")]
    private static partial void LogAuditUnavailable(ILogger logger, string method, string reason);
}
