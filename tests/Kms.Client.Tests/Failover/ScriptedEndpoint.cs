using System.Net.Http;
using Grpc.Core;
using Grpc.Health.V1;

namespace Kms.Client.Tests.Failover;

/// <summary>One call as a fake endpoint received it.</summary>
internal sealed record ReceivedCall(string Method, object Request, CallOptions Options);

/// <summary>
/// A fake endpoint: a call invoker that records every call and answers with
/// <see cref="Respond"/> (an answer, or an <see cref="RpcException"/> thrown). Health checks
/// are answered by <see cref="Health"/>.
/// </summary>
internal sealed class ScriptedEndpoint(string name) : CallInvoker
{
    private readonly List<ReceivedCall> _received = [];

    public string Name { get; } = name;

    public Uri Address => new($"https://{Name}.test:8443");

    /// <summary>The answer to a call; default: an empty response of the right type.</summary>
    public Func<ReceivedCall, object?> Respond { get; set; } = _ => null;

    /// <summary>When set, unary calls are answered only once this completes (calls held on the wire).</summary>
    public TaskCompletionSource? Hold { get; set; }

    /// <summary>The health status a probe gets.</summary>
    public HealthCheckResponse.Types.ServingStatus Health { get; set; } = HealthCheckResponse.Types.ServingStatus.Serving;

    /// <summary>Messages a server-streaming call yields, then the error it ends with (null: it ends well).</summary>
    public (object[] Messages, RpcException? Error) Stream { get; set; } = ([], null);

    /// <summary>
    /// Runs when a server-streaming call's reader asks for the message after the last one, before
    /// the stream ends or fails: what the caller has done with the messages so far can be looked at.
    /// </summary>
    public Action? BeforeStreamEnds { get; set; }

    public IReadOnlyList<ReceivedCall> Received
    {
        get
        {
            lock (_received)
            {
                return [.. _received];
            }
        }
    }

    /// <summary>Calls received, health checks excluded.</summary>
    public int Calls => Received.Count(c => !c.Method.StartsWith("/grpc.health", StringComparison.Ordinal));

    public int HealthChecks => Received.Count(c => c.Method.StartsWith("/grpc.health", StringComparison.Ordinal));

    /// <summary>UNAVAILABLE as the transport reports a refused connection: the request was never sent.</summary>
    public static RpcException ConnectionRefused() =>
        new(new Status(StatusCode.Unavailable, "Error starting gRPC call. HttpRequestException: Connection refused", new HttpRequestException(HttpRequestError.ConnectionError, "Connection refused")));

    /// <summary>How the transport reports a connection that was not made within the connect timeout: a cancellation nobody asked for.</summary>
    public static RpcException ConnectTimedOut() =>
        new(new Status(StatusCode.Cancelled, "", new OperationCanceledException("The operation was canceled.", new TimeoutException("A connection could not be established within the configured ConnectTimeout."))));

    /// <summary>
    /// How Grpc.Net.Client reports a server certificate the client does not trust: INTERNAL, the
    /// cause under an HttpRequestException (SecureConnectionError). No request was sent.
    /// </summary>
    public static RpcException UntrustedCertificate() =>
        new(new Status(
            StatusCode.Internal,
            "Error starting gRPC call. HttpRequestException: The SSL connection could not be established, see inner exception. AuthenticationException: The remote certificate is invalid because of errors in the certificate chain: UntrustedRoot",
            new HttpRequestException(
                HttpRequestError.SecureConnectionError,
                "The SSL connection could not be established, see inner exception.",
                new System.Security.Authentication.AuthenticationException("The remote certificate is invalid because of errors in the certificate chain: UntrustedRoot"))));

    /// <summary>UNAVAILABLE with nothing saying whether the request reached a server (a connection lost mid-call, or the server's own answer).</summary>
    public static RpcException LostAnswer() => new(new Status(StatusCode.Unavailable, "connection reset"));

    /// <summary>UNAVAILABLE as a full KMS node sheds a call: nothing done, the reason and a pushback in its trailers.</summary>
    public static RpcException Shed(string reason = "capacity", string? pushbackMs = "100")
    {
        var trailers = new Metadata { { "kms-shed", reason } };
        if (pushbackMs is not null)
        {
            trailers.Add("grpc-retry-pushback-ms", pushbackMs);
        }

        return new(new Status(StatusCode.Unavailable, "the server is at capacity; retry with backoff"), trailers);
    }

    /// <summary>
    /// RESOURCE_EXHAUSTED as a KMS node answers a used-up tenant quota: a <c>google.rpc.RetryInfo</c>
    /// with <paramref name="retryAfter"/> in the rich status (null: no RetryInfo, as a message too large).
    /// </summary>
    public static RpcException QuotaUsedUp(TimeSpan? retryAfter, string message = "the crypto-operation quota of tenants/dev is used up")
    {
        var status = new Google.Rpc.Status { Code = (int)StatusCode.ResourceExhausted, Message = message };
        if (retryAfter is { } delay)
        {
            status.Details.Add(Google.Protobuf.WellKnownTypes.Any.Pack(new Google.Rpc.RetryInfo { RetryDelay = Google.Protobuf.WellKnownTypes.Duration.FromTimeSpan(delay) }));
        }

        return status.ToRpcException();
    }

    public override TResponse BlockingUnaryCall<TRequest, TResponse>(Method<TRequest, TResponse> method, string? host, CallOptions options, TRequest request) =>
        AsyncUnaryCall(method, host, options, request).ResponseAsync.GetAwaiter().GetResult();

    public override AsyncUnaryCall<TResponse> AsyncUnaryCall<TRequest, TResponse>(Method<TRequest, TResponse> method, string? host, CallOptions options, TRequest request)
    {
        var call = Record(method, options, request);
        Task<TResponse> response;
        try
        {
            response = Task.FromResult(method.FullName == "/grpc.health.v1.Health/Check"
                ? (TResponse)(object)new HealthCheckResponse { Status = Health }
                : (TResponse?)Respond(call) ?? Activator.CreateInstance<TResponse>());
        }
        catch (RpcException e)
        {
            response = Task.FromException<TResponse>(e);
        }

        if (Hold is { } hold && method.FullName != "/grpc.health.v1.Health/Check")
        {
            response = AfterAsync(hold.Task, response);
        }

        return new AsyncUnaryCall<TResponse>(response, Task.FromResult(new Metadata()), () => Status.DefaultSuccess, () => [], () => { });
    }

    public override AsyncServerStreamingCall<TResponse> AsyncServerStreamingCall<TRequest, TResponse>(Method<TRequest, TResponse> method, string? host, CallOptions options, TRequest request)
    {
        Record(method, options, request);
        var (messages, error) = Stream;
        return new AsyncServerStreamingCall<TResponse>(
            new ListReader<TResponse>([.. messages.Cast<TResponse>()], error, BeforeStreamEnds),
            Task.FromResult(new Metadata()),
            () => Status.DefaultSuccess,
            () => [],
            () => { });
    }

    public override AsyncClientStreamingCall<TRequest, TResponse> AsyncClientStreamingCall<TRequest, TResponse>(Method<TRequest, TResponse> method, string? host, CallOptions options) =>
        throw new NotSupportedException();

    public override AsyncDuplexStreamingCall<TRequest, TResponse> AsyncDuplexStreamingCall<TRequest, TResponse>(Method<TRequest, TResponse> method, string? host, CallOptions options) =>
        throw new NotSupportedException();

    private static async Task<T> AfterAsync<T>(Task hold, Task<T> response)
    {
        await hold;
        return await response;
    }

    private ReceivedCall Record(IMethod method, CallOptions options, object request)
    {
        var call = new ReceivedCall(method.FullName, request, options);
        lock (_received)
        {
            _received.Add(call);
        }

        return call;
    }

    private sealed class ListReader<T>(IReadOnlyList<T> messages, RpcException? error, Action? beforeEnd) : IAsyncStreamReader<T>
    {
        private int _index = -1;

        public T Current => messages[_index];

        public Task<bool> MoveNext(CancellationToken cancellationToken)
        {
            _index++;
            if (_index < messages.Count)
            {
                return Task.FromResult(true);
            }

            beforeEnd?.Invoke();
            return error is null ? Task.FromResult(false) : Task.FromException<bool>(error);
        }
    }
}
