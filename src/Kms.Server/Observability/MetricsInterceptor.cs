using Grpc.Core;
using Grpc.Core.Interceptors;
using Kms.Server.Security;

namespace Kms.Server.Observability;

/// <summary>
/// Counts every call and times it (<see cref="KmsMetrics.GrpcRequests"/>,
/// <see cref="KmsMetrics.GrpcRequestDuration"/>). Registered outermost, so what it sees is
/// what the caller gets: a refusal by authentication, authorization, quota or load shedding
/// counts with its final status, after the error interceptor has mapped it.
/// </summary>
/// <remarks>
/// The method tag is the method's full name only when it is one of the fixed set the server
/// serves (every served method has an access rule, <see cref="AccessRules.ByMethod"/>);
/// anything else is <see cref="KmsMetrics.UnknownMethod"/>, so no caller can add series.
/// Nothing from the request or the caller is ever a tag.
/// </remarks>
internal sealed class MetricsInterceptor(TimeProvider time) : Interceptor
{
    // Status codes by number, named as gRPC's other Prometheus exporters name them ("OK",
    // "PermissionDenied"); built once, so recording allocates no string.
    private static readonly string[] CodeNames = Enumerable.Range(0, 17).Select(c => ((StatusCode)c).ToString()).ToArray();

    public override async Task<TResponse> UnaryServerHandler<TRequest, TResponse>(TRequest request, ServerCallContext context, UnaryServerMethod<TRequest, TResponse> continuation)
    {
        var start = time.GetTimestamp();
        try
        {
            var response = await continuation(request, context);
            Record(context, context.Status.StatusCode, start);
            return response;
        }
        catch (Exception e)
        {
            Record(context, CodeOf(e, context), start);
            throw;
        }
    }

    public override async Task<TResponse> ClientStreamingServerHandler<TRequest, TResponse>(IAsyncStreamReader<TRequest> requestStream, ServerCallContext context, ClientStreamingServerMethod<TRequest, TResponse> continuation)
    {
        var start = time.GetTimestamp();
        try
        {
            var response = await continuation(requestStream, context);
            Record(context, context.Status.StatusCode, start);
            return response;
        }
        catch (Exception e)
        {
            Record(context, CodeOf(e, context), start);
            throw;
        }
    }

    public override async Task ServerStreamingServerHandler<TRequest, TResponse>(TRequest request, IServerStreamWriter<TResponse> responseStream, ServerCallContext context, ServerStreamingServerMethod<TRequest, TResponse> continuation)
    {
        var start = time.GetTimestamp();
        try
        {
            await continuation(request, responseStream, context);
            Record(context, context.Status.StatusCode, start);
        }
        catch (Exception e)
        {
            Record(context, CodeOf(e, context), start);
            throw;
        }
    }

    public override async Task DuplexStreamingServerHandler<TRequest, TResponse>(IAsyncStreamReader<TRequest> requestStream, IServerStreamWriter<TResponse> responseStream, ServerCallContext context, DuplexStreamingServerMethod<TRequest, TResponse> continuation)
    {
        var start = time.GetTimestamp();
        try
        {
            await continuation(requestStream, responseStream, context);
            Record(context, context.Status.StatusCode, start);
        }
        catch (Exception e)
        {
            Record(context, CodeOf(e, context), start);
            throw;
        }
    }

    /// <summary>The method tag: a served method's full name, or <see cref="KmsMetrics.UnknownMethod"/>.</summary>
    internal static string MethodLabel(string method) =>
        AccessRules.ByMethod.ContainsKey(method) ? method : KmsMetrics.UnknownMethod;

    /// <summary>The code tag: the status code's name (<c>OK</c>, <c>PermissionDenied</c>, …).</summary>
    internal static string CodeLabel(StatusCode code) =>
        (int)code >= 0 && (int)code < CodeNames.Length ? CodeNames[(int)code] : nameof(StatusCode.Unknown);

    // What grpc-dotnet answers for each kind of exception that leaves the interceptors: a
    // status exception's own code; a cancelled call CANCELLED; anything else UNKNOWN (the
    // unary path never gets here with one: the error interceptor maps it to INTERNAL).
    private static StatusCode CodeOf(Exception e, ServerCallContext context) => e switch
    {
        RpcException rpc => rpc.StatusCode,
        OperationCanceledException when context.CancellationToken.IsCancellationRequested => StatusCode.Cancelled,
        _ => StatusCode.Unknown,
    };

    /// <summary>Counts and times one finished call under a method tag from <see cref="MethodLabel"/>.</summary>
    internal static void Record(string methodLabel, StatusCode code, TimeSpan elapsed)
    {
        var method = new KeyValuePair<string, object?>("method", methodLabel);
        KmsMetrics.GrpcRequests.Add(1, method, new KeyValuePair<string, object?>("code", CodeLabel(code)));
        KmsMetrics.GrpcRequestDuration.Record(elapsed.TotalSeconds, method);
    }

    private void Record(ServerCallContext context, StatusCode code, long start) =>
        Record(MethodLabel(context.Method), code, time.GetElapsedTime(start));
}
