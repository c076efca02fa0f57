using Google.Rpc;
using Grpc.Core;
using Grpc.Core.Interceptors;
using Kms.Core;
using Kms.Core.Errors;

namespace Kms.Server.Grpc;

/// <summary>
/// The one place where domain errors become gRPC statuses. INVALID_ARGUMENT carries a
/// <c>google.rpc.BadRequest</c> naming the field; a decryption failure is one opaque
/// answer; an unexpected exception is INTERNAL with an error id — never a stack trace.
/// </summary>
internal sealed partial class ErrorInterceptor(ILogger<ErrorInterceptor> logger) : Interceptor
{
    // A singleton (KmsServerApp): the throttle is the server's.
    private readonly LogThrottle _refusalLog = new();

    // During an outage every call fails this way, and anyone can make calls that reach the
    // database (a well-formed made-up token is looked up): once a second per cause, with the
    // count, so a second cause (a region's HSM during a database outage) is not drowned out.
    // The causes are the server's own messages, a handful; past 64 they share one throttle.
    private readonly System.Collections.Concurrent.ConcurrentDictionary<string, LogThrottle> _unavailableLogs = new(StringComparer.Ordinal);
    private readonly LogThrottle _otherUnavailableLog = new();

    public override async Task<TResponse> UnaryServerHandler<TRequest, TResponse>(
        TRequest request,
        ServerCallContext context,
        UnaryServerMethod<TRequest, TResponse> continuation)
    {
        try
        {
            return await continuation(request, context);
        }
        catch (Exception e) when (e is not RpcException)
        {
            // The authorization step's Principal property ended with its scope: logged here again.
            using (PrincipalProperty(context))
            {
                throw Map(e, context);
            }
        }
    }

    // Server streams (ExportAudit, DownloadBackup): the same mapping, also after messages were sent.
    public override async Task ServerStreamingServerHandler<TRequest, TResponse>(
        TRequest request,
        IServerStreamWriter<TResponse> responseStream,
        ServerCallContext context,
        ServerStreamingServerMethod<TRequest, TResponse> continuation)
    {
        try
        {
            await continuation(request, responseStream, context);
        }
        catch (Exception e) when (e is not RpcException)
        {
            // The authorization step's Principal property ended with its scope: logged here again.
            using (PrincipalProperty(context))
            {
                throw Map(e, context);
            }
        }
    }

    private static IDisposable? PrincipalProperty(ServerCallContext context) =>
        context.UserState.TryGetValue(Kms.Server.Security.AuthorizationInterceptor.CallerKey, out var value) && value is Kms.Core.Services.Caller caller
            ? Serilog.Context.LogContext.PushProperty("Principal", caller.Principal)
            : null;

    private RpcException Map(Exception e, ServerCallContext context) => e switch
    {
        KmsException domain => ToRpcException(MarkConcealedRefusal(domain, context), context.Method),
        OperationCanceledException when context.CancellationToken.IsCancellationRequested =>
            new RpcException(new global::Grpc.Core.Status(StatusCode.Cancelled, "the call was cancelled")),
        _ => Internal(e, context.Method),
    };

    // A NOT_FOUND that is a refusal (a key whose policy names the caller for nothing) is answered as
    // a missing key's, and audited with that outcome, but counts towards the refusals alert.
    private static KmsException MarkConcealedRefusal(KmsException e, ServerCallContext context)
    {
        if (e.ConcealedRefusal)
        {
            context.UserState[Kms.Server.Audit.AuditInterceptor.ConcealedRefusalKey] = true;
        }

        return e;
    }

    private RpcException ToRpcException(KmsException e, string method)
    {
        switch (e.Code)
        {
            case KmsErrorCode.InvalidArgument:
                LogRejected(logger, method, e.Code, e.Message);
                var status = new Google.Rpc.Status { Code = (int)Code.InvalidArgument, Message = e.Message };
                if (e.Field is not null)
                {
                    status.Details.Add(Google.Protobuf.WellKnownTypes.Any.Pack(new BadRequest
                    {
                        FieldViolations = { new BadRequest.Types.FieldViolation { Field = e.Field, Description = e.Message } },
                    }));
                }

                return status.ToRpcException();
            case KmsErrorCode.DecryptionFailed:
                LogRejected(logger, method, e.Code, e.Message);
                return new RpcException(new global::Grpc.Core.Status(StatusCode.InvalidArgument, KmsErrors.DecryptionFailedMessage));
            case KmsErrorCode.NotFound or KmsErrorCode.AlreadyExists or KmsErrorCode.FailedPrecondition or KmsErrorCode.ResourceExhausted
                or KmsErrorCode.Unauthenticated or KmsErrorCode.PermissionDenied:
                return Plain(ProtoMapping.StatusCodeOf(e.Code), e, method);
            case KmsErrorCode.Unavailable:
                var throttle = _unavailableLogs.TryGetValue(e.Message, out var known) ? known
                    : _unavailableLogs.Count < 64 ? _unavailableLogs.GetOrAdd(e.Message, _ => new LogThrottle())
                    : _otherUnavailableLog;
                if (throttle.Count() is > 0 and var unavailable)
                {
                    LogUnavailable(logger, method, e.Message, unavailable, e.InnerException);
                }

                return new RpcException(new global::Grpc.Core.Status(StatusCode.Unavailable, e.Message));
            default:
                return Internal(e, method);
        }
    }

    private RpcException Plain(StatusCode code, KmsException e, string method)
    {
        // Refusals a caller can repeat at will (authenticated or not) are logged at most once a
        // second, with their count; the audit log has each one (aggregated).
        if (e.Code is not (KmsErrorCode.PermissionDenied or KmsErrorCode.Unauthenticated))
        {
            LogRejected(logger, method, e.Code, e.Message);
        }
        else if (_refusalLog.Count() is > 0 and var refused)
        {
            LogRefused(logger, method, e.Code, e.Message, refused);
        }

        // The client SDK sends a call refused for residency to another node (docs/deployment.md).
        return e.ResidencyRegion is { } region
            ? new RpcException(new global::Grpc.Core.Status(code, e.Message), new Metadata { { KmsTrailers.Residency, region } })
            : new RpcException(new global::Grpc.Core.Status(code, e.Message));
    }

    private RpcException Internal(Exception e, string method)
    {
        var errorId = Guid.NewGuid().ToString("N")[..12];
        LogInternal(logger, method, errorId, e);
        return new RpcException(new global::Grpc.Core.Status(StatusCode.Internal, $"internal error (error id {errorId}); the server log has the details"));
    }

    [LoggerMessage(EventId = 1001, Level = LogLevel.Information, Message = "{Method} rejected: {Code}: {Reason}")]
    private static partial void LogRejected(ILogger logger, string method, KmsErrorCode code, string reason);

    [LoggerMessage(EventId = 1005, Level = LogLevel.Information, Message = "{Method} refused: {Code}: {Reason}; {Count} refusals since the last such message")]
    private static partial void LogRefused(ILogger logger, string method, KmsErrorCode code, string reason, long count);

    [LoggerMessage(EventId = 1002, Level = LogLevel.Warning, Message = "{Method} unavailable: {Reason}; {Count} calls answered UNAVAILABLE since the last such message")]
    private static partial void LogUnavailable(ILogger logger, string method, string reason, long count, Exception? exception);

    [LoggerMessage(EventId = 1003, Level = LogLevel.Error, Message = "{Method} failed with internal error {ErrorId}")]
    private static partial void LogInternal(ILogger logger, string method, string errorId, Exception exception);
}
