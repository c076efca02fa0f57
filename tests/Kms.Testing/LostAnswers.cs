using System.Collections.Concurrent;
using Grpc.Core;
using Grpc.Core.Interceptors;

namespace Kms.Testing;

/// <summary>
/// A client interceptor (add it to <c>KmsClientOptions.Interceptors</c>, which run on every attempt)
/// that lets the first attempt of each named method reach the server and be answered, then reports
/// the answer lost as a broken connection does (UNAVAILABLE "connection reset"): the server has
/// applied the call, and the SDK decides whether to send it again.
/// </summary>
public sealed class LostAnswers(params string[] methods) : Interceptor
{
    private readonly ConcurrentDictionary<string, bool> _lost = new();

    /// <summary>Whether the answer to <paramref name="method"/> (a method's short name) was lost.</summary>
    public bool Lost(string method) => _lost.ContainsKey(method);

    /// <inheritdoc />
    public override AsyncUnaryCall<TResponse> AsyncUnaryCall<TRequest, TResponse>(TRequest request, ClientInterceptorContext<TRequest, TResponse> context, AsyncUnaryCallContinuation<TRequest, TResponse> continuation)
    {
        ArgumentNullException.ThrowIfNull(continuation);
        var call = continuation(request, context);
        if (!methods.Contains(context.Method.Name) || !_lost.TryAdd(context.Method.Name, true))
        {
            return call;
        }

        return new AsyncUnaryCall<TResponse>(LoseAsync(call.ResponseAsync), call.ResponseHeadersAsync, call.GetStatus, call.GetTrailers, call.Dispose);
    }

    private static async Task<TResponse> LoseAsync<TResponse>(Task<TResponse> answer)
    {
        await answer;
        throw new RpcException(new Status(StatusCode.Unavailable, "connection reset"));
    }
}
