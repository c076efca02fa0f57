using System.Collections.Concurrent;
using Grpc.Core;
using Grpc.Core.Interceptors;

namespace Kms.Client.Tests.Failover;

/// <summary>Counts the attempts that pass it, by method name (e.g. <c>GetKey</c>).</summary>
internal sealed class AttemptCounter : Interceptor
{
    private readonly ConcurrentDictionary<string, int> _attempts = new();

    public int this[string method] => _attempts.GetValueOrDefault(method);

    public int Total => _attempts.Values.Sum();

    public override AsyncUnaryCall<TResponse> AsyncUnaryCall<TRequest, TResponse>(TRequest request, ClientInterceptorContext<TRequest, TResponse> context, AsyncUnaryCallContinuation<TRequest, TResponse> continuation)
    {
        Count(context.Method);
        return continuation(request, context);
    }

    public override AsyncServerStreamingCall<TResponse> AsyncServerStreamingCall<TRequest, TResponse>(TRequest request, ClientInterceptorContext<TRequest, TResponse> context, AsyncServerStreamingCallContinuation<TRequest, TResponse> continuation)
    {
        Count(context.Method);
        return continuation(request, context);
    }

    private void Count(IMethod method) => _attempts.AddOrUpdate(method.Name, 1, (_, n) => n + 1);
}
