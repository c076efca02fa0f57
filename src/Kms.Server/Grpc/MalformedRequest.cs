using Grpc.Core;

namespace Kms.Server.Grpc;

/// <summary>
/// What a unary or server-streaming method's deserializer (<see cref="ParseCheckedMethodProvider{TService}"/>)
/// returns for a body that is not a valid message of its type: one empty instance per request
/// type, in place of the request, so that the call goes through the interceptors as any other
/// and is refused after authentication (<see cref="Security.AuthorizationInterceptor"/>).
/// </summary>
/// <remarks>
/// Recognised by reference only (<see cref="object.ReferenceEquals"/>): one comparison per call.
/// It holds nothing of the body, so the audit event and the metrics see an empty request. Never
/// mutated and never given to a handler: the authorization interceptor, which every service's
/// calls pass (health and reflection too), refuses it before anything reads its fields. Null for
/// a type without a public parameterless constructor (every protobuf message has one); its
/// deserializer then throws <see cref="MalformedRequestException"/> as the streaming ones do.
/// </remarks>
/// <typeparam name="TRequest">The method's request type.</typeparam>
internal static class MalformedRequest<TRequest>
    where TRequest : class
{
    /// <summary>The sentinel; compare by reference.</summary>
    public static readonly TRequest? Instance = typeof(TRequest).GetConstructor(Type.EmptyTypes)?.Invoke(null) as TRequest;
}

/// <summary>
/// A request body that is not a valid message of its method's type: <c>INVALID_ARGUMENT</c>,
/// the caller's error, never a stack trace. Thrown by the authorization interceptor for
/// <see cref="MalformedRequest{TRequest}"/>, and by the deserializer of a client-streaming or
/// bidirectional method's messages, which are read by the handler, after authentication.
/// </summary>
internal sealed class MalformedRequestException : RpcException
{
    /// <summary>What the caller is told. Nothing of the body.</summary>
    public const string Detail = "the request is not a valid protobuf message of its method's type";

    /// <summary>The message's own form: <c>INVALID_ARGUMENT</c> with <see cref="Detail"/>.</summary>
    public MalformedRequestException()
        : base(new Status(StatusCode.InvalidArgument, Detail))
    {
    }

    private MalformedRequestException(Status status)
        : base(status)
    {
    }

    /// <summary>
    /// The refusal of a malformed request of this call: its framing's problem where
    /// <see cref="GrpcFramingCheck"/> found one (INVALID_ARGUMENT, or RESOURCE_EXHAUSTED for a
    /// message over the size limit), else the message's own form.
    /// </summary>
    public static MalformedRequestException For(ServerCallContext context) =>
        context.GetHttpContext().Features.Get<GrpcFramingProblem>() is { } framing ? new(framing.Status) : new();
}
