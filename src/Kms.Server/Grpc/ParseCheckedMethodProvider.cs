using System.Diagnostics.CodeAnalysis;
using System.Reflection;
using Google.Protobuf;
using Grpc.AspNetCore.Server.Model;
using Grpc.Core;
using Microsoft.AspNetCore.Routing;

namespace Kms.Server.Grpc;

/// <summary>
/// Binds every gRPC service's methods as grpc-dotnet's own binder does (the generated
/// <c>BindService</c> named by <see cref="BindServiceMethodAttribute"/>, one invoker per
/// overridden method), except that each request is read with a deserializer that does not throw
/// <see cref="InvalidProtocolBufferException"/> for a body that is not a valid message.
/// </summary>
/// <remarks>
/// A unary or server-streaming request is parsed before any interceptor runs. With the generated
/// deserializer a malformed body (a truncated field, a bad length, a string that is not UTF-8)
/// threw <see cref="InvalidProtocolBufferException"/>, which grpc-dotnet answers <c>UNKNOWN</c> and
/// logs at Error with its stack trace — per request, before authentication: a log an anonymous
/// caller could fill. Here such a body becomes <see cref="MalformedRequest{TRequest}.Instance"/>,
/// and the call goes through the interceptors like any other: counted, audited, authenticated
/// (an anonymous caller is refused <c>UNAUTHENTICATED</c> as for a valid body), then refused
/// <c>INVALID_ARGUMENT</c> by <see cref="Security.AuthorizationInterceptor"/> as a refusal. The
/// messages of client-streaming and bidirectional methods are read by the handler, after the
/// interceptors have authenticated the caller: there a malformed one throws
/// <see cref="MalformedRequestException"/>, the same answer. Registered in place of grpc-dotnet's
/// provider.
/// </remarks>
internal sealed class ParseCheckedMethodProvider<[DynamicallyAccessedMembers(DynamicallyAccessedMemberTypes.All)] TService> : IServiceMethodProvider<TService>
    where TService : class
{
    /// <summary>What the caller is told (<see cref="MalformedRequestException.Detail"/>).</summary>
    public const string Detail = MalformedRequestException.Detail;

    /// <inheritdoc />
    public void OnServiceMethodDiscovery(ServiceMethodProviderContext<TService> context)
    {
        var bind = FindBindMethod(typeof(TService));
        if (bind is null)
        {
            return;
        }

        // BindService(ServiceBinderBase binder, TServiceBase serviceImpl): the second parameter names
        // the generated base whose virtual methods the service overrides.
        var declaring = bind.GetParameters()[1].ParameterType;
        bind.Invoke(null, [new Binder(context, declaring), null]);
    }

    private static MethodInfo? FindBindMethod(Type service)
    {
        for (var type = service; type is not null; type = type.BaseType)
        {
            if (type.GetCustomAttribute<BindServiceMethodAttribute>(inherit: false) is { } attribute)
            {
                return attribute.BindType.GetMethod(attribute.BindMethodName, BindingFlags.Public | BindingFlags.NonPublic | BindingFlags.Static, null,
                    [typeof(ServiceBinderBase), type], null);
            }
        }

        return null;
    }

    // A unary or server-streaming request is parsed before the interceptors: a malformed one is the
    // sentinel, for them to refuse. A streamed message is read by the handler: it throws.
    internal static Marshaller<TRequest> Checked<TRequest>(Marshaller<TRequest> inner, MethodType type)
        where TRequest : class
    {
        var malformed = type is MethodType.Unary or MethodType.ServerStreaming ? MalformedRequest<TRequest>.Instance : null;
        return new(inner.ContextualSerializer, context =>
        {
            try
            {
                return inner.ContextualDeserializer(context);
            }
            catch (InvalidProtocolBufferException)
            {
                return malformed ?? throw new MalformedRequestException();
            }
        });
    }

    private sealed class Binder(ServiceMethodProviderContext<TService> context, Type declaring) : ServiceBinderBase
    {
        public override void AddMethod<TRequest, TResponse>(Method<TRequest, TResponse> method, UnaryServerMethod<TRequest, TResponse>? handler) =>
            context.AddUnaryMethod(CheckedMethod(method), Metadata(method.Name, [typeof(TRequest), typeof(ServerCallContext)], out var found),
                found.CreateDelegate<UnaryServerMethod<TService, TRequest, TResponse>>());

        public override void AddMethod<TRequest, TResponse>(Method<TRequest, TResponse> method, ServerStreamingServerMethod<TRequest, TResponse>? handler) =>
            context.AddServerStreamingMethod(CheckedMethod(method), Metadata(method.Name, [typeof(TRequest), typeof(IServerStreamWriter<TResponse>), typeof(ServerCallContext)], out var found),
                found.CreateDelegate<ServerStreamingServerMethod<TService, TRequest, TResponse>>());

        public override void AddMethod<TRequest, TResponse>(Method<TRequest, TResponse> method, ClientStreamingServerMethod<TRequest, TResponse>? handler) =>
            context.AddClientStreamingMethod(CheckedMethod(method), Metadata(method.Name, [typeof(IAsyncStreamReader<TRequest>), typeof(ServerCallContext)], out var found),
                found.CreateDelegate<ClientStreamingServerMethod<TService, TRequest, TResponse>>());

        public override void AddMethod<TRequest, TResponse>(Method<TRequest, TResponse> method, DuplexStreamingServerMethod<TRequest, TResponse>? handler) =>
            context.AddDuplexStreamingMethod(CheckedMethod(method), Metadata(method.Name, [typeof(IAsyncStreamReader<TRequest>), typeof(IServerStreamWriter<TResponse>), typeof(ServerCallContext)], out var found),
                found.CreateDelegate<DuplexStreamingServerMethod<TService, TRequest, TResponse>>());

        private static Method<TRequest, TResponse> CheckedMethod<TRequest, TResponse>(Method<TRequest, TResponse> method)
            where TRequest : class
            where TResponse : class =>
            new(method.Type, method.ServiceName, method.Name, Checked(method.RequestMarshaller, method.Type), method.ResponseMarshaller);

        // The service's override of the generated virtual method (or the generated one, which
        // answers UNIMPLEMENTED); the endpoint's metadata as grpc-dotnet gives it: the type's
        // attributes, then the method's, then POST.
        private List<object> Metadata(string name, Type[] parameters, out MethodInfo found)
        {
            found = Override(name, parameters) ?? throw new InvalidOperationException($"{typeof(TService).Name} has no method {name} to bind");
            List<object> metadata = [.. typeof(TService).GetCustomAttributes(inherit: true), .. found.GetCustomAttributes(inherit: true)];
            metadata.Add(new HttpMethodMetadata(["POST"], acceptCorsPreflight: true));
            return metadata;
        }

        private MethodInfo? Override(string name, Type[] parameters)
        {
            for (var type = typeof(TService); type is not null; type = type.BaseType)
            {
                var method = type.GetMethod(name, BindingFlags.Public | BindingFlags.Instance, null, parameters, null);
                if (method is null)
                {
                    return null;
                }

                // A method of the same name that hides the generated one is not it: look further down.
                if (method.IsVirtual && method.GetBaseDefinition().DeclaringType == declaring)
                {
                    return method;
                }
            }

            return null;
        }
    }
}
